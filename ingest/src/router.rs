//! The router: the only module that calls the route modules' `router()`,
//! and so the only place a route is added (a test scans the sources: no
//! module but the server imports this one, and no route is added outside
//! `routes!`). The OpenAPI
//! document is built from the same calls, so it lists every route.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::config::IngestConfig;
use crate::error::{ApiError, problem_response};

/// The whole application: every route, the fallbacks, the document, inside
/// the middleware stack ([`crate::middleware::stack`]).
pub(crate) fn app(
    state: AppState,
    config: &IngestConfig,
    http_metrics: Arc<crate::middleware::metrics::HttpMetrics>,
) -> anyhow::Result<Router> {
    let (api, document) = api_router().split_for_parts();
    let document = crate::openapi::Document::new(crate::openapi::complete(document))?;
    let routes = Router::new()
        .merge(api.route_layer(axum::middleware::from_fn(crate::middleware::metrics::note_route)))
        .merge(
            crate::dashboard::router().route_layer(axum::middleware::from_fn(crate::middleware::metrics::note_route)),
        )
        .layer(axum::Extension(document))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", None, None)
        });
    Ok(crate::middleware::stack(routes, config, http_metrics)?.with_state(state))
}

/// The OpenAPI 3.1 document served at `/openapi.json`, without a server
/// (`ledgerctl openapi`, the committed copy's staleness test).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(api_router().into_openapi())
}

/// Every route of the API with its OpenAPI operation. Routes are added only
/// here and only through `routes!` in the modules (a unit test checks the
/// sources), so the document lists every route.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(documented(crate::routes::clients::token::router()))
        .merge(documented(crate::routes::clients::accounts::router()))
        .merge(documented(crate::routes::clients::transfers::router()))
        .merge(documented(crate::routes::clients::holds::router()))
        .merge(documented(crate::routes::clients::batches::router()))
        .merge(documented(crate::routes::providers::router()))
        .merge(documented(crate::routes::clients::webhooks::router()))
        .merge(documented(crate::routes::customers::sessions::router()))
        .merge(documented(crate::routes::customers::accounts::router()))
        .merge(documented(crate::routes::customers::transfers::router()))
        .merge(documented(crate::routes::staff::audit::router()))
        .merge(documented(crate::routes::staff::desk::router()))
        .merge(documented(crate::routes::staff::admin::router()))
        .merge(documented(crate::routes::ops::router()))
        .merge(documented(crate::routes::health::router()))
        .routes(routes!(crate::openapi::serve))
}

/// A module's routes, with their OpenAPI operations. Every module's
/// `router()` goes through here.
fn documented(router: impl Into<OpenApiRouter<AppState>>) -> OpenApiRouter<AppState> {
    router.into()
}
