//! Transfers: submit one (idempotently), or a payout to another bank, and
//! read its status.
//!
//! The transfer id is derived from (client, `Idempotency-Key`), so a retried
//! request is the same transfer. The request is recorded in
//! `accepted_requests` before it is published: a retry with the same body is
//! answered the same way (and published again if the first publish failed),
//! a retry with another body is refused with `idempotency_key_reused`.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use schemas::messages::{TransferExternal, TransferRequested, V1};
use schemas::{AccountId, Command, Creditor, Currency, IdempotencyKey, Money, Operation, Remittance, TransferId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Scope};
use crate::context::RequestId;
use crate::error::ApiError;
use crate::startup::AppState;

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/transfers", post(submit_transfer))
        .route("/v1/transfers/{transfer_id}", get(get_transfer))
        .route("/v1/payouts", post(submit_payout))
}

/// # Errors
/// 400 when the header is missing or malformed.
pub fn required_idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    optional_idempotency_key(headers)?
        .ok_or_else(|| ApiError::bad_request("idempotency_key_missing", "this request needs an Idempotency-Key header"))
}

/// # Errors
/// 400 when the header is present but malformed.
pub fn optional_idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("idempotency_key_invalid", "the Idempotency-Key must be printable ASCII"))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|error| ApiError::bad_request("idempotency_key_invalid", error.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    source_account_id: Uuid,
    destination_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    amount: String,
    currency: Currency,
}

/// The answer to an accepted command: 202 with where to follow it.
#[derive(Debug, Serialize)]
pub struct Accepted {
    transfer_id: TransferId,
    status: &'static str,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let location = format!("/v1/transfers/{}", self.transfer_id);
        (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(self)).into_response()
    }
}

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
pub fn transfer_command(
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
pub fn parse_money(amount: &str, currency: Currency) -> Result<Money, ApiError> {
    Money::parse(amount, currency).map_err(|error| ApiError::unprocessable("invalid_amount", error.to_string()))
}

/// A client moves money only out of its own accounts. The processor checks
/// everything else (existence of the destination, currency, funds).
async fn owned_source(state: &AppState, principal: &Principal, source_account_id: Uuid) -> Result<(), ApiError> {
    let owns_source: bool =
        sqlx::query_scalar("select exists (select 1 from accounts where id = $1 and owner_client_id = $2)")
            .bind(source_account_id)
            .bind(principal.client_id)
            .fetch_one(&state.pool)
            .await?;
    if owns_source { Ok(()) } else { Err(ApiError::not_found("account_not_found", "no such source account")) }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayoutRequest {
    source_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    amount: String,
    currency: Currency,
    /// `{"name": "...", "iban": "..."}`; the IBAN's check digits are verified.
    creditor: Creditor,
    remittance_information: Option<Remittance>,
}

/// A payout to an account at another bank: the processor holds the funds,
/// the relay orders the payment from the provider, and the provider's
/// answer posts or voids the hold. Follow it at the `Location`.
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
pub enum Requester {
    Client(Uuid),
    User(Uuid),
}

/// Records the request under its transfer id and publishes the command,
/// unless an earlier identical request already did.
///
/// # Errors
/// 422 `idempotency_key_reused` when the key was used for another request;
/// 503 when the broker does not take the command.
pub async fn accept(
    state: &AppState,
    requester: Requester,
    key: &IdempotencyKey,
    command: &Command,
    canonical: serde_json::Value,
    request_id: &str,
) -> Result<Accepted, ApiError> {
    let transfer_id = TransferId::from_uuid(command.id());
    sqlx::query(
        r"insert into accepted_requests (transfer_id, api_client_id, user_id, idempotency_key, request)
          values ($1, $2, $5, $3, $4) on conflict (transfer_id) do nothing",
    )
    .bind(transfer_id.as_uuid())
    .bind(match requester {
        Requester::Client(id) => Some(id),
        Requester::User(_) => None,
    })
    .bind(key.as_str())
    .bind(&canonical)
    .bind(match requester {
        Requester::User(id) => Some(id),
        Requester::Client(_) => None,
    })
    .execute(&state.pool)
    .await?;
    let (recorded, published_at): (serde_json::Value, Option<DateTime<Utc>>) =
        sqlx::query_as("select request, published_at from accepted_requests where transfer_id = $1")
            .bind(transfer_id.as_uuid())
            .fetch_one(&state.pool)
            .await?;
    if recorded != canonical {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        ));
    }
    if published_at.is_none() {
        state.publisher.publish(command, request_id).await?;
        sqlx::query(
            "update accepted_requests set published_at = now() where transfer_id = $1 and published_at is null",
        )
        .bind(transfer_id.as_uuid())
        .execute(&state.pool)
        .await?;
        tracing::info!(%transfer_id, command = command.type_name(), "accepted");
    }
    Ok(Accepted { transfer_id, status: "accepted" })
}

#[derive(Debug, Serialize)]
pub struct TransferView {
    transfer_id: Uuid,
    /// `accepted` until the processor decides, then `completed` or `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    request: serde_json::Value,
    accepted_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at: Option<DateTime<Utc>>,
}

/// A transfer as the requester who submitted it sees it.
///
/// # Errors
/// 404 `transfer_not_found` when it is unknown, another requester's, or
/// not yet accepted.
pub async fn transfer_view(
    state: &AppState,
    transfer_id: Uuid,
    requester: Requester,
) -> Result<TransferView, ApiError> {
    let (client_id, user_id) = match requester {
        Requester::Client(id) => (Some(id), None),
        Requester::User(id) => (None, Some(id)),
    };
    type Row = (serde_json::Value, DateTime<Utc>, Option<String>, Option<String>, Option<DateTime<Utc>>);
    let row: Option<Row> = sqlx::query_as(
        r"select request.request, request.published_at, transfer.status, transfer.rejection_reason, transfer.decided_at
          from accepted_requests request
          left join transfers transfer on transfer.id = request.transfer_id
          where request.transfer_id = $1 and (request.api_client_id = $2 or request.user_id = $3)
            and request.published_at is not null",
    )
    .bind(transfer_id)
    .bind(client_id)
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    let (request, accepted_at, status, reason, decided_at) =
        row.ok_or_else(|| ApiError::not_found("transfer_not_found", "no such transfer"))?;
    Ok(TransferView {
        transfer_id,
        status: status.unwrap_or_else(|| "accepted".into()),
        reason,
        request,
        accepted_at,
        decided_at,
    })
}

async fn get_transfer(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    principal.require(Scope::TransfersRead)?;
    let Path(transfer_id) = path?;
    Ok(Json(transfer_view(&state, transfer_id, Requester::Client(principal.client_id)).await?))
}
