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

/// Where the inner middleware leaves the matched route's template for the
/// outer one: a slot in the request, so it survives a response replaced on
/// the way out (the request timeout's 503, for one).
#[derive(Debug, Clone, Default)]
struct RouteSlot(Arc<std::sync::OnceLock<String>>);

/// The method as a label: the standard ones by name, anything else as
/// `other` (a client may send any token as a method; labels must stay few).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// What one ingest instance counted.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
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
    pub(crate) fn render(&self) -> String {
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
pub(crate) async fn note_route(request: Request, next: Next) -> Response {
    if let (Some(path), Some(slot)) =
        (request.extensions().get::<MatchedPath>(), request.extensions().get::<RouteSlot>())
    {
        let _ = slot.0.set(path.as_str().to_owned());
    }
    next.run(request).await
}

/// Outside everything: counts the request once it is answered, whatever
/// answered it (a handler, a rejection, the timeout, the fallback).
pub(crate) async fn count(State(metrics): State<Arc<HttpMetrics>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let route = slot.0.get().map_or("unmatched", String::as_str);
    metrics.record(method, route, response.status().as_u16(), started);
    response
}
