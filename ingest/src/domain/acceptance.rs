//! Accepting a command: the request is recorded in `accepted_requests`
//! (group-committed, see [`crate::support::group_commit`]) before it is
//! published, and marked published after; the answer is the 202.
//!
//! The transfer id is derived from (client, `Idempotency-Key`), so a retried
//! request is the same transfer: a retry with the same body is answered the
//! same way (and published again if the first publish failed), a retry with
//! another body is refused with `idempotency_key_reused`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemas::{Command, IdempotencyKey, TransferId};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::support::group_commit::{GroupCommit, GroupCommitLimits};

/// The answer to an accepted command: 202 with where to follow it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    /// Derived from the requester and the `Idempotency-Key`: a retry gets the same id.
    #[schema(value_type = Uuid)]
    transfer_id: TransferId,
    #[schema(example = "accepted")]
    status: &'static str,
}

impl Accepted {
    /// The 202 answer with its status URL at `location` (staff and
    /// customers follow their commands under their own routes).
    pub(crate) fn into_response_at(self, location: &str) -> Response {
        let mut response = self.into_response();
        if let Ok(location) = location.parse() {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let location = format!("/v1/transfers/{}", self.transfer_id);
        (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(self)).into_response()
    }
}

/// Who submitted a request: an API client or a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requester {
    Client(Uuid),
    User(Uuid),
}

impl Requester {
    /// As `accepted_requests` keeps it: `(api_client_id, user_id)`, one set.
    pub(crate) fn ids(self) -> (Option<Uuid>, Option<Uuid>) {
        match self {
            Requester::Client(id) => (Some(id), None),
            Requester::User(id) => (None, Some(id)),
        }
    }
}

/// Records the request under its transfer id and publishes the command,
/// unless an earlier identical request already did.
///
/// # Errors
/// 422 `idempotency_key_reused` when the key was used for another request;
/// 503 when the broker does not take the command.
pub(crate) async fn accept(
    state: &AppState,
    requester: Requester,
    key: &IdempotencyKey,
    command: &Command,
    canonical: serde_json::Value,
    request_id: &str,
) -> Result<Accepted, ApiError> {
    let transfer_id = TransferId::from_uuid(command.id());
    let (api_client_id, user_id) = requester.ids();
    let record = Record {
        transfer_id: transfer_id.as_uuid(),
        api_client_id,
        user_id,
        idempotency_key: key.as_str().to_owned(),
        request: canonical,
    };
    // The new record, or the one an earlier request with this key left
    // (whose body a retry must match): committed durably, with the records
    // of the requests that arrived meanwhile, before the command is sent.
    let (canonical, recorded) = state.acceptances.records.submit(record).await?;
    if recorded.request != canonical {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        ));
    }
    if recorded.published_at.is_none() {
        // Its own task: the request timeout cancels the handler, not the
        // publish in flight nor the marker after it.
        let publish =
            tokio::spawn(publish_and_mark(state.clone(), command.clone(), transfer_id, request_id.to_owned()));
        publish.await.map_err(|error| ApiError::Internal(anyhow::Error::new(error).context("publishing")))??;
    }
    Ok(Accepted { transfer_id, status: "accepted" })
}

/// Publishes the command, then marks the request published. The marker is
/// bookkeeping, not the truth: the status routes read the ledger's decision
/// whatever the marker says, and show a recorded request without one as
/// `unconfirmed`. So a marker that cannot be written after the broker took
/// the command is logged, and the request is still accepted.
async fn publish_and_mark(
    state: AppState,
    command: Command,
    transfer_id: TransferId,
    request_id: String,
) -> Result<(), ApiError> {
    state.publisher.publish(&command, &request_id).await?;
    if let Err(error) = state.acceptances.markers.submit(transfer_id.as_uuid()).await {
        tracing::warn!(%transfer_id, %error, "published, but the marker was not written; the status shows the decision");
    }
    tracing::debug!(%transfer_id, command = command.type_name(), "accepted");
    Ok(())
}

/// What `accepted_requests` keeps of a request.
#[derive(Debug)]
struct Record {
    transfer_id: Uuid,
    api_client_id: Option<Uuid>,
    user_id: Option<Uuid>,
    idempotency_key: String,
    /// The canonical form of the request.
    request: serde_json::Value,
}

/// The record kept under a transfer id: this request's, or the earlier one
/// with the same key.
#[derive(Debug)]
struct Recorded {
    request: serde_json::Value,
    published_at: Option<DateTime<Utc>>,
}

/// Group commits of `accepted_requests` (see [`crate::support::group_commit`]):
/// the records, durably, before a command is sent; the published markers
/// after.
#[derive(Debug, Clone)]
pub struct Acceptances {
    /// Each waiter gets its own canonical request back beside what is
    /// recorded, to compare them.
    records: GroupCommit<Record, (serde_json::Value, Recorded)>,
    markers: GroupCommit<Uuid, ()>,
    /// The source accounts' owners already checked.
    pub(crate) owners: std::sync::Arc<KnownOwners>,
}

/// Flushes of records at once: each holds a pooled connection while it
/// commits, and the rest of the pool serves the other routes.
const RECORD_WORKERS: usize = 3;

/// Flushes of markers at once (and the markers' connections).
const MARKER_WORKERS: usize = 2;

/// Requests written by one flush at most: a statement of this many rows
/// still takes a millisecond or two, far from the statement timeout.
const ACCEPTANCE_BATCH_SIZE_MAX: usize = 512;

/// Requests queued at most for a flush; more wait for room (backpressure
/// on the request, bounded by the request timeout).
const ACCEPTANCE_QUEUE_MAX: usize = 8_192;

impl Acceptances {
    /// Starts the group commits' workers on `pool`. The markers get a
    /// connection of their own whose commits do not wait for the WAL flush
    /// (`synchronous_commit = off`): a marker is one statement then, not a
    /// transaction of four.
    #[must_use]
    pub fn spawn(pool: &sqlx::PgPool) -> Self {
        let limits = |workers| GroupCommitLimits {
            workers,
            batch_size_max: ACCEPTANCE_BATCH_SIZE_MAX,
            queue_max: ACCEPTANCE_QUEUE_MAX,
        };
        let records_pool = pool.clone();
        let markers_options = (*pool.connect_options()).clone().options([("synchronous_commit", "off")]);
        let markers_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(MARKER_WORKERS).unwrap_or(1))
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(markers_options);
        Self {
            records: GroupCommit::spawn("recording accepted requests", limits(RECORD_WORKERS), move |batch| {
                let pool = records_pool.clone();
                async move { record_requests(&pool, batch).await }
            }),
            markers: GroupCommit::spawn("marking requests published", limits(MARKER_WORKERS), move |batch| {
                let pool = markers_pool.clone();
                async move { mark_published(&pool, &batch).await.map(|()| vec![(); batch.len()]) }
            }),
            owners: std::sync::Arc::default(),
        }
    }
}

/// Records a batch of requests in one statement (a durable commit), and
/// returns, for each, its own canonical request and what is recorded under
/// its transfer id.
///
/// Inserted in transfer id order, so two batches that share ids (retries
/// racing each other) lock them in the same order and cannot deadlock. An
/// earlier record is looked up only for a request not inserted now, by one
/// primary-key probe each (the lateral subquery's `offset 0` keeps the
/// planner from turning it into a scan of the whole table). A
/// request whose id another transaction recorded while this statement ran
/// is read again afterwards: the statement's snapshot does not show it.
async fn record_requests(
    pool: &sqlx::PgPool,
    batch: Vec<Record>,
) -> Result<Vec<(serde_json::Value, Recorded)>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|record| record.transfer_id).collect();
    let clients: Vec<Option<Uuid>> = batch.iter().map(|record| record.api_client_id).collect();
    let users: Vec<Option<Uuid>> = batch.iter().map(|record| record.user_id).collect();
    let keys: Vec<&str> = batch.iter().map(|record| record.idempotency_key.as_str()).collect();
    let requests: Vec<&serde_json::Value> = batch.iter().map(|record| &record.request).collect();
    // A dynamic batch (UNNEST of arrays): one statement for any batch size.
    let rows = sqlx::query!(
        r"with input as (
              select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[]) with ordinality
                  as input (transfer_id, api_client_id, user_id, idempotency_key, request, position)
          ),
          inserted as (
              insert into accepted_requests (transfer_id, api_client_id, user_id, idempotency_key, request)
              select distinct on (transfer_id) transfer_id, api_client_id, user_id, idempotency_key, request
              from input order by transfer_id, position
              on conflict (transfer_id) do nothing
              returning transfer_id, request
          )
          select input.position, coalesce(inserted.request, earlier.request) as request, earlier.published_at
          from input
          left join inserted on inserted.transfer_id = input.transfer_id
          left join lateral (
              select request, published_at from accepted_requests
              where transfer_id = input.transfer_id and inserted.transfer_id is null
              offset 0
          ) earlier on true
          order by input.position",
        &ids,
        // Arrays with nulls: the macro's check knows only `uuid[]` as `Vec<Uuid>`.
        &clients as &[Option<Uuid>],
        &users as &[Option<Uuid>],
        &keys as &[&str],
        &requests as &[&serde_json::Value],
    )
    .fetch_all(pool)
    .await?;
    let mut found: Vec<Option<Recorded>> = rows
        .into_iter()
        .map(|row| row.request.map(|request| Recorded { request, published_at: row.published_at }))
        .collect();
    let missing: Vec<Uuid> =
        found.iter().zip(&ids).filter(|(recorded, _)| recorded.is_none()).map(|(_, id)| *id).collect();
    if !missing.is_empty() {
        let rows = sqlx::query!(
            "select transfer_id, request, published_at from accepted_requests where transfer_id = any($1)",
            &missing,
        )
        .fetch_all(pool)
        .await?;
        let again: std::collections::HashMap<Uuid, (serde_json::Value, Option<DateTime<Utc>>)> =
            rows.into_iter().map(|row| (row.transfer_id, (row.request, row.published_at))).collect();
        for (recorded, id) in found.iter_mut().zip(&ids) {
            if recorded.is_none() {
                *recorded = again
                    .get(id)
                    .map(|(request, published_at)| Recorded { request: request.clone(), published_at: *published_at });
            }
        }
    }
    batch
        .into_iter()
        .zip(found)
        .map(|(record, recorded)| {
            let recorded = recorded.ok_or_else(|| {
                sqlx::Error::Protocol(format!("the request {} is neither recorded nor found", record.transfer_id))
            })?;
            Ok((record.request, recorded))
        })
        .collect()
}

/// Marks published requests, on the markers' connection, whose commits do
/// not wait for the WAL flush: the marker is a hint, and a marker lost in a
/// database crash only shows the request `unconfirmed` until the ledger
/// decides it. The record itself is committed durably.
async fn mark_published(pool: &sqlx::PgPool, transfer_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update accepted_requests set published_at = now() where transfer_id = any($1) and published_at is null",
        transfer_ids,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Accounts known to be an API client's. An account's owner is set once,
/// when it is opened, and never changes, so a yes can be kept for good and
/// never goes stale (a no cannot: the account may be opened next).
#[derive(Debug, Default)]
pub(crate) struct KnownOwners(std::sync::RwLock<std::collections::HashMap<Uuid, Uuid>>);

/// Accounts [`KnownOwners`] remembers at most (~50 bytes each); when full it
/// forgets them all and learns again, one read per account.
const KNOWN_OWNERS_MAX: usize = 200_000;

impl KnownOwners {
    pub(crate) fn is_owner(&self, account_id: Uuid, client_id: Uuid) -> bool {
        let owners = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        owners.get(&account_id) == Some(&client_id)
    }

    pub(crate) fn remember(&self, account_id: Uuid, client_id: Uuid) {
        let mut owners = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if owners.len() >= KNOWN_OWNERS_MAX {
            owners.clear();
        }
        owners.insert(account_id, client_id);
    }
}
