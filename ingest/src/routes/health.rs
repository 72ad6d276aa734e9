//! Liveness and readiness probes for orchestrators.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(live)).routes(routes!(ready))
}

/// Live: the process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "health_live",
    tag = "health",
    responses((status = 204, description = "Alive")),
    security(()),
)]
async fn live() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Ready when Postgres answers; Kafka is checked by every publish.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "health_ready",
    tag = "health",
    responses(
        (status = 204, description = "Ready: Postgres answers"),
        (status = 503, description = "Not ready: Postgres does not answer (no body)"),
    ),
    security(()),
)]
async fn ready(State(state): State<AppState>) -> StatusCode {
    match sqlx::query_scalar!("select 1 as probe").fetch_one(&state.pool).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(error) => {
            tracing::warn!(%error, "not ready: Postgres does not answer");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
