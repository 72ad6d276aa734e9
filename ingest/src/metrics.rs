//! Ingest's metrics: requests by method, route template and status, and
//! their latency by route, served on `LEDGERLINE_METRICS_ADDR` (see
//! [`platform::metrics`]). Routes are the templates (`/v1/accounts/{account_id}`),
//! never the paths, so the label set is bounded by the API, not by callers;
//! a request that matches no route counts as `unmatched`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use platform::metrics::{Exposition, Histogram, Kind};

/// The route template a response was served by, for the outer middleware.
#[derive(Debug, Clone)]
struct Route(String);

/// What one ingest instance counted.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    latency: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl HttpMetrics {
    fn record(&self, method: &str, route: &str, status: u16, started: Instant) {
        let elapsed = started.elapsed();
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((method.to_owned(), route.to_owned(), status)).or_default() += 1;
        }
        let histogram =
            self.latency.lock().ok().map(|mut latency| Arc::clone(latency.entry(route.to_owned()).or_default()));
        if let Some(histogram) = histogram {
            histogram.observe(elapsed);
        }
    }

    /// The Prometheus page.
    #[must_use]
    pub fn render(&self) -> String {
        let mut page = Exposition::new();
        page.family("ledgerline_http_requests_total", Kind::Counter, "Requests answered, by method, route and status");
        let mut requests: Vec<((String, String, u16), u64)> = self
            .requests
            .lock()
            .map(|requests| requests.iter().map(|(key, count)| (key.clone(), *count)).collect())
            .unwrap_or_default();
        requests.sort();
        for ((method, route, status), count) in &requests {
            page.sample(
                "ledgerline_http_requests_total",
                &[("method", method), ("route", route), ("status", &status.to_string())],
                count,
            );
        }
        page.family("ledgerline_http_request_duration_seconds", Kind::Histogram, "Time to answer, by route");
        let mut latency: Vec<(String, Arc<Histogram>)> = self
            .latency
            .lock()
            .map(|latency| latency.iter().map(|(route, histogram)| (route.clone(), Arc::clone(histogram))).collect())
            .unwrap_or_default();
        latency.sort_by(|left, right| left.0.cmp(&right.0));
        for (route, histogram) in &latency {
            histogram.write(&mut page, "ledgerline_http_request_duration_seconds", &[("route", route)]);
        }
        page.finish()
    }
}

/// Inside the router (a route layer): notes the matched route's template on
/// the response.
pub async fn note_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| Route(path.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Outside everything: counts the request once it is answered, whatever
/// answered it (a handler, a rejection, the timeout, the fallback).
pub async fn count(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let route = response.extensions().get::<Route>().map_or("unmatched", |route| route.0.as_str());
    metrics.record(&method, route, response.status().as_u16(), started);
    response
}
