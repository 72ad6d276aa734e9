//! The audit log: security events (logins and failed logins, PIN failures
//! and lockouts, password changes and resets, reused refresh tokens) with
//! actor, subject, IP, request id and time, and the admins' read endpoint.

use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::customers::User;
use crate::error::ApiError;
use crate::startup::AppState;

pub const PAGE_LIMIT_MAX: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/audit", get(read))
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub action: &'a str,
    pub actor_user_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub peer: Option<SocketAddr>,
    pub request_id: &'a str,
    pub detail: serde_json::Value,
}

impl<'a> Event<'a> {
    /// What a user did to their own account, with no more detail.
    #[must_use]
    pub fn by_user(action: &'a str, user_id: Uuid, peer: SocketAddr, request_id: &'a str) -> Self {
        Self {
            action,
            actor_user_id: Some(user_id),
            subject_user_id: Some(user_id),
            peer: Some(peer),
            request_id,
            detail: serde_json::json!({}),
        }
    }
}

/// Records an event. A failure to record is logged, not returned: the
/// request it describes has already happened.
pub async fn record(state: &AppState, event: Event<'_>) {
    let written = sqlx::query(
        r"insert into audit_log (action, actor_user_id, subject_user_id, ip, request_id, detail)
          values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.action)
    .bind(event.actor_user_id)
    .bind(event.subject_user_id)
    .bind(event.peer.map(|peer| peer.ip().to_string()))
    .bind(event.request_id)
    .bind(&event.detail)
    .execute(&state.pool)
    .await;
    if let Err(error) = written {
        tracing::error!(%error, action = event.action, "writing the audit log failed");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
    /// Events with an id below this one (the previous page's last id).
    before: Option<i64>,
    subject_user_id: Option<Uuid>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
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

/// Newest first. Admins only: anyone else gets 403 (the route is no secret).
async fn read(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    crate::staff::require_role(&user, &["admin"])?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={PAGE_LIMIT_MAX}")));
    }
    let rows: Vec<Row> = sqlx::query_as(
        r"select id, at, action, actor_user_id, subject_user_id, ip, request_id, detail from audit_log
          where ($1::bigint is null or id < $1) and ($2::uuid is null or subject_user_id = $2)
          order by id desc limit $3",
    )
    .bind(query.before)
    .bind(query.subject_user_id)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(serde_json::json!({ "events": rows })))
}
