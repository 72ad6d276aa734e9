//! Transfers: submit one (idempotently), or a payout to another bank, and
//! read its status.
//!
//! The transfer id is derived from (client, `Idempotency-Key`), so a retried
//! request is the same transfer. The request is recorded in
//! `accepted_requests` before it is published: a retry with the same body is
//! answered the same way (and published again if the first publish failed),
//! a retry with another body is refused with `idempotency_key_reused`.
//!
//! The status routes answer from what the ledger decided, never from
//! ingest's own `published_at` marker alone: a request can reach the broker
//! and be applied while its marker is lost (the update fails, the handler is
//! cancelled, librdkafka times out a message the broker wrote). A recorded
//! request with neither a marker nor a decision is `unconfirmed`, not
//! unknown: a client that checks before retrying must not conclude that it
//! was never sent.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use schemas::messages::{TransferExternal, TransferRequested, V1};
use schemas::{AccountId, Command, Creditor, Currency, IdempotencyKey, Money, Operation, Remittance, TransferId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::context::RequestId;
use crate::error::ApiError;
use crate::group_commit::{GroupCommit, GroupCommitLimits};

pub(crate) const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_transfer)).routes(routes!(get_transfer)).routes(routes!(submit_payout))
}

/// # Errors
/// 400 when the header is missing or malformed.
pub(crate) fn required_idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    optional_idempotency_key(headers)?
        .ok_or_else(|| ApiError::bad_request("idempotency_key_missing", "this request needs an Idempotency-Key header"))
}

/// # Errors
/// 400 when the header is present but malformed.
pub(crate) fn optional_idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("idempotency_key_invalid", "the Idempotency-Key must be printable ASCII"))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|error| ApiError::bad_request("idempotency_key_invalid", error.to_string()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// One of the client's own accounts.
    source_account_id: Uuid,
    destination_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    #[schema(example = "12.50")]
    amount: String,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
}

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

/// Submits a transfer from one of the client's accounts.
///
/// Applied by the processor: follow it at the `Location`. A retry with the
/// same `Idempotency-Key` and body is the same transfer. Needs the
/// `transfers:write` scope.
#[utoipa::path(
    post,
    path = "/v1/transfers",
    operation_id = "create_transfer",
    tag = "transfers",
    params(("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    request_body = TransferRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The transfer's status URL")),
    )),
)]
async fn submit_transfer(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::TransfersWrite)?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = parse_money(&request.amount, request.currency)?;

    owned_source(&state, &principal, request.source_account_id).await?;
    let transfer_id = TransferId::derive(Operation::Transfer, principal.client_id, &key);
    let (command, canonical) =
        transfer_command(transfer_id, request.source_account_id, request.destination_account_id, money);
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}

/// A `transfer.requested` command, and the canonical form of its request
/// that a retry with the same key must match.
#[must_use]
pub(crate) fn transfer_command(
    transfer_id: TransferId,
    source_account_id: Uuid,
    destination_account_id: Uuid,
    money: Money,
) -> (Command, serde_json::Value) {
    let command = Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id,
        source_account_id: AccountId::from_uuid(source_account_id),
        destination_account_id: AccountId::from_uuid(destination_account_id),
        money,
        requested_at: Utc::now(),
    });
    let canonical = serde_json::json!({
        "kind": "transfer",
        "source_account_id": source_account_id,
        "destination_account_id": destination_account_id,
        "amount": money.amount().to_string(),
        "currency": money.currency(),
    });
    (command, canonical)
}

/// An amount in a currency, or 422 `invalid_amount`.
///
/// # Errors
/// When the amount is not a positive decimal within the currency's scale.
pub(crate) fn parse_money(amount: &str, currency: Currency) -> Result<Money, ApiError> {
    Money::parse(amount, currency).map_err(|error| ApiError::unprocessable("invalid_amount", error.to_string()))
}

/// A client moves money only out of its own accounts. The processor checks
/// everything else (existence of the destination, currency, funds).
async fn owned_source(state: &AppState, principal: &Principal, source_account_id: Uuid) -> Result<(), ApiError> {
    let owners = &state.acceptances.owners;
    if owners.is_owner(source_account_id, principal.client_id) {
        return Ok(());
    }
    let owns_source: bool =
        sqlx::query_scalar("select exists (select 1 from accounts where id = $1 and owner_client_id = $2)")
            .bind(source_account_id)
            .bind(principal.client_id)
            .fetch_one(&state.pool)
            .await?;
    if !owns_source {
        return Err(ApiError::not_found("account_not_found", "no such source account"));
    }
    owners.remember(source_account_id, principal.client_id);
    Ok(())
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
    fn is_owner(&self, account_id: Uuid, client_id: Uuid) -> bool {
        let owners = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        owners.get(&account_id) == Some(&client_id)
    }

    fn remember(&self, account_id: Uuid, client_id: Uuid) {
        let mut owners = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if owners.len() >= KNOWN_OWNERS_MAX {
            owners.clear();
        }
        owners.insert(account_id, client_id);
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PayoutRequest {
    /// One of the client's own accounts.
    source_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    #[schema(example = "12.50")]
    amount: String,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    /// `{"name": "...", "iban": "..."}`; the IBAN's check digits are verified.
    #[schema(schema_with = creditor_schema)]
    creditor: Creditor,
    /// Text for the creditor: 1 to 140 characters, no control characters.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 140)]
    remittance_information: Option<Remittance>,
}

/// The schema of a [`Creditor`], written out here: the `schemas` crate
/// describes its types with schemars, not utoipa.
fn creditor_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::AdditionalProperties;
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .description(Some("The receiver of the payout"))
        .property(
            "name",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("1 to 140 characters (the SEPA limit), no control characters"))
                .min_length(Some(1))
                .max_length(Some(Creditor::NAME_LENGTH_MAX))
                .examples(["Jane Doe"]),
        )
        .required("name")
        .property(
            "iban",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("An IBAN, electronic or printed form (spaces allowed); its check digits must verify"))
                .examples(["DE89370400440532013000"]),
        )
        .required("iban")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build()
}

/// A payout to an account at another bank.
///
/// The processor holds the funds, the relay orders the payment from the
/// provider, and the provider's answer posts or voids the hold. Follow it at
/// the `Location`. Needs the `transfers:write` scope.
#[utoipa::path(
    post,
    path = "/v1/payouts",
    operation_id = "create_payout",
    tag = "transfers",
    params(("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    request_body = PayoutRequest,
    responses((
        status = 202,
        description = "Accepted; the processor holds the funds and orders the payment",
        body = Accepted,
        headers(("Location" = String, description = "The payout's status URL")),
    )),
)]
async fn submit_payout(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<PayoutRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::TransfersWrite)?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = parse_money(&request.amount, request.currency)?;
    owned_source(&state, &principal, request.source_account_id).await?;
    let transfer_id = TransferId::derive(Operation::Payout, principal.client_id, &key);
    let canonical = serde_json::json!({
        "kind": "payout",
        "source_account_id": request.source_account_id,
        "amount": money.amount().to_string(),
        "currency": money.currency(),
        "creditor": &request.creditor,
        "remittance_information": &request.remittance_information,
    });
    let command = Command::TransferExternal(TransferExternal {
        version: V1,
        transfer_id,
        source_account_id: AccountId::from_uuid(request.source_account_id),
        money,
        creditor: request.creditor,
        remittance_information: request.remittance_information,
        requested_at: Utc::now(),
    });
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}

/// Who submitted a request: an API client or a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requester {
    Client(Uuid),
    User(Uuid),
}

impl Requester {
    /// As `accepted_requests` keeps it: `(api_client_id, user_id)`, one set.
    fn ids(self) -> (Option<Uuid>, Option<Uuid>) {
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

/// Group commits of `accepted_requests` (see [`crate::group_commit`]):
/// the records, durably, before a command is sent; the published markers
/// after.
#[derive(Debug, Clone)]
pub struct Acceptances {
    /// Each waiter gets its own canonical request back beside what is
    /// recorded, to compare them.
    records: GroupCommit<Record, (serde_json::Value, Recorded)>,
    markers: GroupCommit<Uuid, ()>,
    /// The source accounts' owners already checked.
    owners: std::sync::Arc<KnownOwners>,
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
    let rows: Vec<(i64, Option<serde_json::Value>, Option<DateTime<Utc>>)> = sqlx::query_as(
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
          select input.position, coalesce(inserted.request, earlier.request), earlier.published_at
          from input
          left join inserted on inserted.transfer_id = input.transfer_id
          left join lateral (
              select request, published_at from accepted_requests
              where transfer_id = input.transfer_id and inserted.transfer_id is null
              offset 0
          ) earlier on true
          order by input.position",
    )
    .bind(&ids)
    .bind(&clients)
    .bind(&users)
    .bind(&keys)
    .bind(&requests)
    .fetch_all(pool)
    .await?;
    let mut found: Vec<Option<Recorded>> = rows
        .into_iter()
        .map(|(_, request, published_at)| request.map(|request| Recorded { request, published_at }))
        .collect();
    let missing: Vec<Uuid> =
        found.iter().zip(&ids).filter(|(recorded, _)| recorded.is_none()).map(|(_, id)| *id).collect();
    if !missing.is_empty() {
        let rows: Vec<(Uuid, serde_json::Value, Option<DateTime<Utc>>)> = sqlx::query_as(
            "select transfer_id, request, published_at from accepted_requests where transfer_id = any($1)",
        )
        .bind(&missing)
        .fetch_all(pool)
        .await?;
        let again: std::collections::HashMap<Uuid, (serde_json::Value, Option<DateTime<Utc>>)> =
            rows.into_iter().map(|(id, request, published_at)| (id, (request, published_at))).collect();
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
    sqlx::query(
        "update accepted_requests set published_at = now() where transfer_id = any($1) and published_at is null",
    )
    .bind(transfer_ids)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The status of a request the broker has acknowledged, before the
/// processor decides.
pub(crate) const STATUS_ACCEPTED: &str = "accepted";
/// The status of a request recorded, but whose publish was never confirmed
/// (the broker's answer was lost, the handler was cancelled, or the marker
/// could not be written), and that the ledger has not decided.
pub(crate) const STATUS_UNCONFIRMED: &str = "unconfirmed";
/// The processor could not apply the command and sent it to the
/// dead-letter topic (the reason says why); an operator's replay after a
/// fix may still apply it, and the status then shows the decision.
pub(crate) const STATUS_DEAD_LETTERED: &str = "dead_lettered";

/// A transfer (or deposit, payout, account command) and its status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TransferView {
    transfer_id: Uuid,
    /// The ledger's decision: `completed` or `rejected` (a hold or payout:
    /// `held`, then `posted`, `voided` or `expired`). Before it:
    /// `accepted` (the broker has the command), or `unconfirmed` (the
    /// request was recorded but its publish never confirmed: it may or may
    /// not reach the ledger; submitting it again with the same
    /// `Idempotency-Key` is safe and settles that). `dead_lettered` when
    /// the processor could not apply it (the reason says why; an operator's
    /// replay after a fix may still apply it).
    #[schema(example = "completed")]
    pub status: String,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<String>,
    /// Whether the command is known to have reached the broker: false only
    /// while `unconfirmed`.
    publish_confirmed: bool,
    /// The request as accepted, in its canonical form.
    request: serde_json::Value,
    /// When the broker acknowledged it (when it was recorded, while unconfirmed).
    accepted_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    decided_at: Option<DateTime<Utc>>,
}

impl TransferView {
    /// Whether the ledger has decided (a hold counts: it is the decision
    /// the requester waits for).
    #[must_use]
    pub(crate) fn is_decided(&self) -> bool {
        self.decided_at.is_some()
    }
}

/// A transfer or account command as the requester who submitted it sees
/// it: the ledger's decision when there is one (`transfers`, or
/// `account_commands` for a staff freeze, unfreeze or close), whether or
/// not ingest managed to mark the request published.
///
/// # Errors
/// 404 `transfer_not_found` when it is unknown or another requester's.
pub(crate) async fn transfer_view(
    state: &AppState,
    transfer_id: Uuid,
    requester: Requester,
) -> Result<TransferView, ApiError> {
    let (client_id, user_id) = requester.ids();
    type Row = (serde_json::Value, DateTime<Utc>, bool, Option<String>, Option<String>, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        r"select request.request, coalesce(request.published_at, request.created_at), request.published_at is not null,
                 coalesce(transfer.status, command.status, case when dead.command_id is not null then $4 end),
                 coalesce(transfer.rejection_reason, command.rejection_reason, dead.reason),
                 coalesce(transfer.decided_at, command.decided_at, dead.dead_lettered_at)
          from accepted_requests request
          left join transfers transfer on transfer.id = request.transfer_id
          left join account_commands command on command.id = request.transfer_id
          left join dead_lettered_commands dead on dead.command_id = request.transfer_id
          where request.transfer_id = $1 and (request.api_client_id = $2 or request.user_id = $3)",
    )
    .bind(transfer_id)
    .bind(client_id)
    .bind(user_id)
    .bind(STATUS_DEAD_LETTERED)
    .fetch_optional(&state.pool)
    .await?;
    let (request, accepted_at, marked, status, reason, decided_at) =
        row.ok_or_else(|| ApiError::not_found("transfer_not_found", "no such transfer"))?;
    // A decision proves the command reached the broker, marker or not.
    let publish_confirmed = marked || status.is_some();
    let status =
        status.unwrap_or_else(|| if publish_confirmed { STATUS_ACCEPTED } else { STATUS_UNCONFIRMED }.to_owned());
    Ok(TransferView { transfer_id, status, reason, publish_confirmed, request, accepted_at, decided_at })
}

/// A transfer or payout the client submitted, and its status.
///
/// Needs the `transfers:read` scope.
#[utoipa::path(
    get,
    path = "/v1/transfers/{transfer_id}",
    operation_id = "get_transfer",
    tag = "transfers",
    params(("transfer_id" = Uuid, Path, description = "The transfer, deposit or payout")),
    responses((status = 200, description = "The transfer and its status", body = TransferView)),
)]
async fn get_transfer(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    principal.require(Scope::TransfersRead)?;
    let Path(transfer_id) = path?;
    Ok(Json(transfer_view(&state, transfer_id, Requester::Client(principal.client_id)).await?))
}
