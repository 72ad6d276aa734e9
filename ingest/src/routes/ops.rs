//! The ops role's routes: dead-lettered commands (read them, replay them
//! after the cause is fixed) and the outbox (its backlog, dead rows, and
//! putting dead rows back). `ops` and `admin` may use them; every replay and
//! retry is in the audit log.
//!
//! What reading and replaying does is in [`crate::domain::operations`],
//! shared with the dashboard.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::domain::operations::{self, DEAD_LETTERS_PAGE_MAX, DeadLetter};
use crate::domain::permissions::Permission;
use crate::error::ApiError;
use crate::extract::user::{User, require};
use crate::middleware::context::RequestId;

/// Dead outbox rows one read returns at most.
pub(crate) const OUTBOX_DEAD_PAGE_MAX: i64 = 1_000;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dead_letters))
        .routes(routes!(replay_dead_letters))
        .routes(routes!(outbox_status))
        .routes(routes!(outbox_dead))
        .routes(routes!(outbox_retry))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeadLetterQuery {
    /// The dead-letter topic's partition (default 0; it is created with one).
    partition: Option<i32>,
    /// The first offset to read (default: the oldest kept).
    from_offset: Option<i64>,
    /// At most this many (1..=500, default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterPage {
    /// The partition read, and how many the topic has: read each.
    partition: i32,
    partitions: i32,
    dead_letters: Vec<DeadLetter>,
    /// Where the next page starts; equal to `end_offset` when all are read.
    next_offset: i64,
    /// The offset after the newest dead letter.
    end_offset: i64,
}

/// Reads dead-lettered commands, oldest first (ops, admin).
#[utoipa::path(
    get,
    path = "/v1/ops/dead-letters",
    operation_id = "ops_dead_letters",
    tag = "ops",
    params(DeadLetterQuery),
    responses((status = 200, description = "A page of dead letters", body = DeadLetterPage)),
)]
async fn dead_letters(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Operate)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=DEAD_LETTERS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be within 1..={DEAD_LETTERS_PAGE_MAX}"),
        ));
    }
    let partition = query.partition.unwrap_or(0);
    let read = operations::read_dead_letters(&state, partition, query.from_offset, limit).await?;
    let next_offset = read.messages.last().map_or(read.start, |message| message.offset + 1);
    let dead_letters = read.messages.into_iter().map(operations::dead_letter).collect();
    Ok(Json(DeadLetterPage { partition, partitions: read.partitions, dead_letters, next_offset, end_offset: read.end }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// The dead-letter topic's partition (default 0).
    partition: Option<i32>,
    /// The first dead letter to replay.
    from_offset: i64,
    /// The offset after the last one to replay (default: `from_offset + 1`,
    /// that one dead letter). At most 500 at a time.
    to_offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayReport {
    /// The dead letters' offsets published again to the commands topic.
    replayed: Vec<i64>,
}

/// Publishes dead letters again to the commands topic, as they were (ops,
/// admin). Fix the cause first (open the missing account, say): the
/// processor decides each command again, and one it applied before is a
/// no-op, so a replay is safe to repeat.
#[utoipa::path(
    post,
    path = "/v1/ops/dead-letters/replay",
    operation_id = "ops_replay_dead_letters",
    tag = "ops",
    request_body = ReplayRequest,
    responses((status = 200, description = "What was published again", body = ReplayReport)),
)]
async fn replay_dead_letters(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Operate)?;
    let Json(request) = body?;
    let to_offset = request.to_offset.unwrap_or(request.from_offset.saturating_add(1));
    let count = to_offset.saturating_sub(request.from_offset);
    if request.from_offset < 0 || !(1..=DEAD_LETTERS_PAGE_MAX).contains(&count) {
        return Err(ApiError::unprocessable(
            "invalid_range",
            format!("give 0 <= from_offset < to_offset, at most {DEAD_LETTERS_PAGE_MAX} apart"),
        ));
    }
    let partition = request.partition.unwrap_or(0);
    let replayed =
        operations::replay(&state, user.id, peer, &request_id.0, partition, request.from_offset, to_offset).await?;
    Ok(Json(ReplayReport { replayed }))
}

/// The outbox's backlog: pending, retrying and dead rows, the oldest
/// pending row's age, failures by destination and reason (ops, admin).
#[utoipa::path(
    get,
    path = "/v1/ops/outbox",
    operation_id = "ops_outbox_status",
    tag = "ops",
    responses((status = 200, description = "The outbox's state", body = serde_json::Value)),
)]
async fn outbox_status(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Operate)?;
    Ok(Json(platform::outbox::status(&state.pool).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OutboxDeadQuery {
    /// At most this many (1..=1000, default 100), oldest first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Outbox rows that failed every attempt and wait for an operator (ops, admin).
#[utoipa::path(
    get,
    path = "/v1/ops/outbox/dead",
    operation_id = "ops_outbox_dead",
    tag = "ops",
    params(OutboxDeadQuery),
    responses((status = 200, description = "Dead rows with their last error", body = serde_json::Value)),
)]
async fn outbox_dead(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<OutboxDeadQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Operate)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=OUTBOX_DEAD_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={OUTBOX_DEAD_PAGE_MAX}")));
    }
    let rows = platform::outbox::dead_rows(&state.pool, limit).await?;
    Ok(Json(serde_json::json!({ "dead": rows })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboxRetryRequest {
    /// The dead rows to retry (at most 1000), or…
    ids: Option<Vec<i64>>,
    /// …`true` for every dead row.
    all: Option<bool>,
}

/// Puts dead outbox rows back in their lanes with a fresh attempt budget
/// (ops, admin). Fix the cause first (the endpoint, the provider).
#[utoipa::path(
    post,
    path = "/v1/ops/outbox/retry",
    operation_id = "ops_outbox_retry",
    tag = "ops",
    request_body = OutboxRetryRequest,
    responses((status = 200, description = "How many rows were put back: `{\"retried\": n}`", body = serde_json::Value)),
)]
async fn outbox_retry(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<OutboxRetryRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Operate)?;
    let Json(request) = body?;
    let which = match (request.ids, request.all) {
        (Some(ids), None | Some(false)) if !ids.is_empty() && ids.len() <= 1_000 => platform::outbox::Retry::Ids(ids),
        (None, Some(true)) => platform::outbox::Retry::AllDead,
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_retry",
                "give either `ids` (1 to 1000 dead rows) or `all: true`",
            ));
        }
    };
    let retried = operations::retry_outbox(&state, user.id, peer, &request_id.0, &which).await?;
    Ok(Json(serde_json::json!({ "retried": retried })))
}
