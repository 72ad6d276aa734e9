//! Ingest's metrics: requests by method, route template and status, and
//! their latency by route, served on `LEDGERLINE_METRICS_ADDR` (see
//! [`platform::metrics`]). Routes are the templates (`/v1/accounts/{account_id}`),
//! never the paths, so the label set is bounded by the API, not by callers;
//! a request that matches no route counts as `unmatched`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use platform::metrics::{HistogramVec, IntCounterVec, Registry};

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

/// What one ingest instance counted, in the instance's registry.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        Self {
            requests: platform::metrics::counter_vec(
                registry,
                "ledgerline_http_requests_total",
                "Requests answered, by method, route and status",
                &["method", "route", "status"],
            ),
            latency: platform::metrics::latency_histogram_vec(
                registry,
                "ledgerline_http_request_duration_seconds",
                "Time to answer, by route",
                &["route"],
            ),
        }
    }

    fn record(&self, method: &str, route: &str, status: u16, started: Instant) {
        let elapsed = started.elapsed();
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.latency.with_label_values(&[route]).observe(elapsed.as_secs_f64());
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
