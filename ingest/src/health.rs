//! Liveness and readiness probes for orchestrators.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health/live", get(|| async { StatusCode::NO_CONTENT })).route("/health/ready", get(ready))
}

/// Ready when Postgres answers; Kafka is checked by every publish.
async fn ready(State(state): State<AppState>) -> StatusCode {
    match sqlx::query("select 1").execute(&state.pool).await {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(error) => {
            tracing::warn!(%error, "not ready: Postgres does not answer");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
