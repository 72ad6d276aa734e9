//! The middleware stack every route sits in, built in one place: what a
//! request meets on its way in, outermost first, is listed in [`stack`].
//!
//! From tower-http where it fits: CORS and the security headers. The
//! request context ([`crate::middleware::context`]: the request id, problem bodies, the
//! log line) stays our own, because it validates incoming request ids
//! (tower-http's `SetRequestIdLayer` keeps any) and writes the id into
//! problem bodies; the timeout stays our own because it answers with a
//! problem (tower-http's answers an empty 408).

pub(crate) mod context;
pub(crate) mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::AppState;
use crate::config::IngestConfig;
use crate::error::problem_response;

/// Wraps `routes` in the stack. Outermost first, a request meets: the HTTP
/// metrics, CORS, the security headers (HSTS over HTTPS), the request
/// context, the timeout, the body limit, then the route.
pub(crate) fn stack(
    routes: Router<AppState>,
    config: &IngestConfig,
    http_metrics: Arc<crate::middleware::metrics::HttpMetrics>,
) -> anyhow::Result<Router<AppState>> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let routes = routes
        .layer(DefaultBodyLimit::max(config.body_size_max_bytes))
        .layer(axum::middleware::from_fn(move |request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    "The request took too long",
                    Some("retry it with the same Idempotency-Key".into()),
                    None,
                ),
            }
        }))
        .layer(axum::middleware::from_fn(crate::middleware::context::middleware));
    Ok(security_headers(routes, config.tls.is_some())
        .layer(cors(&config.cors_origins)?)
        .layer(axum::middleware::from_fn_with_state(http_metrics, crate::middleware::metrics::count)))
}

/// Headers on every answer, errors included, each set once. The API serves
/// JSON to programs: nothing may be sniffed, framed or sent as a referrer;
/// answers hold balances and tokens, so nothing is cached unless its route
/// says otherwise (the OpenAPI document may be). Over HTTPS, browsers are
/// told never to try plain HTTP for a year.
fn security_headers(routes: Router<AppState>, https: bool) -> Router<AppState> {
    let always = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    let routes = always.into_iter().fold(routes, |routes, (name, value)| {
        routes.layer(SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value)))
    });
    // The API's answers render nothing; the dashboard's pages set their own
    // (strict) policy, which this keeps.
    let routes = routes.layer(SetResponseHeaderLayer::if_not_present(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ));
    let routes = routes
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    if https {
        routes.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
    } else {
        routes
    }
}

/// CORS for the configured origins only; none configured, no CORS headers
/// at all (the layer is a no-op), so browsers keep other origins out.
/// Bearer tokens travel in a header, never in cookies, so credentials are
/// not allowed.
fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    if origins.is_empty() {
        return Ok(CorsLayer::new());
    }
    let origins = origins
        .iter()
        .map(|origin| HeaderValue::from_str(origin).with_context(|| format!("CORS origin {origin:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static(crate::middleware::context::REQUEST_ID_HEADER),
            HeaderName::from_static(crate::extract::headers::STEP_UP_HEADER),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static(crate::middleware::context::REQUEST_ID_HEADER),
        ])
        .max_age(Duration::from_secs(600)))
}
