//! The admins' read of the audit log (written by [`crate::domain::audit`]).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::user::User;

pub(crate) const PAGE_LIMIT_MAX: i64 = 500;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Events per page, 1 to 500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Events with an id below this one (the previous page's last id).
    before: Option<i64>,
    /// Only events about this user.
    subject_user_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct Row {
    id: i64,
    at: DateTime<Utc>,
    action: String,
    actor_user_id: Option<Uuid>,
    subject_user_id: Option<Uuid>,
    ip: Option<String>,
    request_id: Option<String>,
    detail: serde_json::Value,
}

/// The audit log, newest first (admin).
///
/// Admins only: anyone else gets 403 (the route is no secret).
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    operation_id = "admin_audit",
    tag = "admin",
    params(AuditQuery),
    responses((
        status = 200,
        description = "`{\"events\": [...]}`, newest first; the next page: `before` = the last `id`",
        body = serde_json::Value,
        example = json!({ "events": [{
            "action": "login.succeeded",
            "actor_user_id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
            "at": "2025-01-01T12:00:00Z",
            "detail": {},
            "id": 42,
            "ip": "203.0.113.7",
            "request_id": "d2c1b0a9-8f7e-4d6c-9b5a-4e3f2a1b0c9d",
            "subject_user_id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
        }] }),
    )),
)]
async fn read(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    crate::extract::user::require(&user, crate::domain::permissions::Permission::ReadAudit)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={PAGE_LIMIT_MAX}")));
    }
    let rows = sqlx::query_as!(
        Row,
        r"select id, at, action, actor_user_id, subject_user_id, ip, request_id, detail from audit_log
          where ($1::bigint is null or id < $1) and ($2::uuid is null or subject_user_id = $2)
          order by id desc limit $3",
        query.before,
        query.subject_user_id,
        limit,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(serde_json::json!({ "events": rows })))
}
