//! Two-phase transfers over HTTP: an API client holds funds on one of its
//! accounts (a card authorization, a marketplace escrow), then captures all
//! or part of them, or voids the hold; unclaimed, the processor releases it
//! at its expiry. The commands are the Kafka ones (`transfer.hold`,
//! `transfer.post`, `transfer.void`), decided by the same code with the
//! same reason codes.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, TimeDelta, Utc};
use schemas::messages::{TransferHold, TransferPost, TransferVoid, V1};
use schemas::{AccountId, Command, Currency, Metadata, Operation, Reference, TransferId};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{Accepted, Requester, accept};
use crate::domain::accounts::require_client_source;
use crate::domain::clients::Scope;
use crate::domain::transfers::{
    Annotations, TransferView, metadata_schema, parse_money, reference_schema, transfer_view,
};
use crate::error::ApiError;
use crate::extract::headers::required_idempotency_key;
use crate::extract::principal::Principal;
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(place_hold))
        .routes(routes!(get_hold))
        .routes(routes!(capture_hold))
        .routes(routes!(void_hold))
}

/// The longest a hold may wait for its capture: 30 days, the longest card
/// schemes keep an authorization.
const HOLD_EXPIRY_S_MAX: u32 = 30 * 24 * 3_600;

/// A hold's life when the request names none: 7 days.
const HOLD_EXPIRY_S_DEFAULT: u32 = 7 * 24 * 3_600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    /// One of the client's own accounts.
    source_account_id: Uuid,
    /// Who receives what is captured.
    destination_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    #[schema(example = "25.00")]
    amount: String,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    /// Seconds until the processor releases the hold by itself, 1 to
    /// 2,592,000 (30 days). Give this or `expires_at`, not both; 7 days
    /// when neither.
    #[serde(default)]
    #[schema(nullable = false, minimum = 1, maximum = 2_592_000, example = 3_600)]
    expires_in_s: Option<u32>,
    /// When the processor releases the hold by itself (RFC 3339), within
    /// the next 30 days. Give this or `expires_in_s`, not both.
    #[serde(default)]
    #[schema(nullable = false)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(schema_with = reference_schema)]
    reference: Option<Reference>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    metadata: Option<Metadata>,
}

impl HoldRequest {
    /// The hold's expiry, or 422 `invalid_expiry`. An expiry given as an
    /// instant is canonical as that instant; one given in seconds is
    /// canonical as the seconds (a retry a second later is the same
    /// request). Such a retry, when the first publish was never confirmed
    /// but did reach the broker, carries a later expiry: the processor
    /// keeps the first hold and tells the second as `command.id_reused`. A
    /// client that needs a retry to be the same command byte for byte
    /// gives `expires_at`.
    fn expiry(&self, now: DateTime<Utc>) -> Result<(DateTime<Utc>, serde_json::Value), ApiError> {
        let invalid = |detail: &str| ApiError::unprocessable("invalid_expiry", detail.to_owned());
        match (self.expires_in_s, self.expires_at) {
            (Some(_), Some(_)) => Err(invalid("give expires_in_s or expires_at, not both")),
            (Some(seconds), None) if (1..=HOLD_EXPIRY_S_MAX).contains(&seconds) => {
                Ok((now + TimeDelta::seconds(i64::from(seconds)), serde_json::json!({ "expires_in_s": seconds })))
            }
            (Some(_), None) => Err(invalid("expires_in_s must be within 1..=2592000 (30 days)")),
            (None, Some(at)) if at > now && at <= now + TimeDelta::seconds(i64::from(HOLD_EXPIRY_S_MAX)) => {
                Ok((at, serde_json::json!({ "expires_at": at })))
            }
            (None, Some(_)) => Err(invalid("expires_at must be in the next 30 days")),
            (None, None) => Ok((
                now + TimeDelta::seconds(i64::from(HOLD_EXPIRY_S_DEFAULT)),
                serde_json::json!({ "expires_in_s": HOLD_EXPIRY_S_DEFAULT }),
            )),
        }
    }
}

/// Holds funds on one of the client's accounts for a later capture or void.
///
/// The hold's id is derived from the `Idempotency-Key`; follow it at the
/// `Location`. Once `held`, the funds are reserved (not spendable) until
/// captured, voided or expired. Refusals are the transfer's
/// (`insufficient_funds`, `limit_exceeded`, …). Needs the `holds:write`
/// scope.
#[utoipa::path(
    post,
    path = "/v1/holds",
    operation_id = "place_hold",
    tag = "holds",
    params(("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    request_body = HoldRequest,
    responses((
        status = 202,
        description = "Accepted; the processor holds the funds",
        body = Accepted,
        headers(("Location" = String, description = "The hold's URL")),
        links(
            ("GetHold" = (operation_id = "get_hold", parameters(("hold_id" = "$response.body#/transfer_id")))),
            ("CaptureHold" = (operation_id = "capture_hold", parameters(("hold_id" = "$response.body#/transfer_id")))),
            ("VoidHold" = (operation_id = "void_hold", parameters(("hold_id" = "$response.body#/transfer_id")))),
        ),
    )),
)]
async fn place_hold(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<HoldRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::HoldsWrite)?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = parse_money(&request.amount, request.currency)?;
    let now = Utc::now();
    let (expires_at, canonical_expiry) = request.expiry(now)?;
    require_client_source(&state, principal.client_id, request.source_account_id).await?;
    let hold_id = TransferId::derive(Operation::Hold, principal.client_id, &key);
    let mut canonical = serde_json::json!({
        "kind": "hold",
        "source_account_id": request.source_account_id,
        "destination_account_id": request.destination_account_id,
        "amount": money.amount().to_string(),
        "currency": money.currency(),
    });
    if let (Some(object), Some(expiry)) = (canonical.as_object_mut(), canonical_expiry.as_object()) {
        object.extend(expiry.clone());
    }
    let annotations = Annotations { reference: request.reference, metadata: request.metadata };
    let command = Command::TransferHold(TransferHold {
        version: V1,
        transfer_id: hold_id,
        source_account_id: AccountId::from_uuid(request.source_account_id),
        destination_account_id: AccountId::from_uuid(request.destination_account_id),
        money,
        expires_at,
        reference: annotations.reference.clone(),
        metadata: annotations.metadata.clone(),
        requested_at: now,
    });
    let canonical = annotations.into_canonical(canonical);
    let accepted =
        accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await?;
    Ok(accepted.into_response_at(&format!("/v1/holds/{hold_id}")))
}

/// A hold the client placed: `accepted`, then `held` (or `rejected` with
/// the reason), then `posted` (with `captured_amount`), `voided` or
/// `expired`.
///
/// Needs the `transfers:read` scope.
#[utoipa::path(
    get,
    path = "/v1/holds/{hold_id}",
    operation_id = "get_hold",
    tag = "holds",
    params(("hold_id" = Uuid, Path, description = "The hold", example = "8c4f18ab-acef-550e-b2c3-eddf215cfd0b")),
    responses((status = 200, description = "The hold and its state", body = TransferView)),
)]
async fn get_hold(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    principal.require(Scope::TransfersRead)?;
    let Path(hold_id) = path?;
    placed_hold(&state, principal.client_id, hold_id).await?;
    Ok(Json(transfer_view(&state, hold_id, Requester::Client(principal.client_id)).await?))
}

/// What a capture or void needs of the hold it settles, from the hold's
/// own recorded request: its source account (the partition key: the
/// command lands after the hold) and currency. Only the client that placed
/// a hold may settle it.
async fn placed_hold(state: &AppState, client_id: Uuid, hold_id: Uuid) -> Result<(Uuid, Currency), ApiError> {
    let row = sqlx::query!(
        r#"select request->>'source_account_id' as "source?", request->>'currency' as "currency?"
           from accepted_requests
           where transfer_id = $1 and api_client_id = $2 and request->>'kind' = 'hold'"#,
        hold_id,
        client_id,
    )
    .fetch_optional(&state.pool)
    .await?;
    let not_found = || ApiError::not_found("hold_not_found", "the client placed no hold with this id");
    let row = row.ok_or_else(not_found)?;
    let source = row.source.and_then(|text| text.parse::<Uuid>().ok()).ok_or_else(not_found)?;
    let currency = row.currency.and_then(|text| text.parse::<Currency>().ok()).ok_or_else(not_found)?;
    Ok((source, currency))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CaptureRequest {
    /// How much to capture, in the hold's currency: at most the hold's
    /// amount; the whole hold when absent. The rest is released.
    #[serde(default)]
    #[schema(nullable = false, example = "20.00")]
    amount: Option<String>,
}

/// Captures all or part of a held hold: the amount moves to the hold's
/// destination, the rest is released.
///
/// Applied by the processor: follow it at the `Location`. Refused as
/// `hold_expired`, `hold_already_settled`, `amount_exceeds_hold`. Needs the
/// `holds:write` scope.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/capture",
    operation_id = "capture_hold",
    tag = "holds",
    params(
        ("hold_id" = Uuid, Path, description = "The hold", example = "8c4f18ab-acef-550e-b2c3-eddf215cfd0b"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = CaptureRequest,
    responses((
        status = 202,
        description = "Accepted; the processor captures it",
        body = Accepted,
        headers(("Location" = String, description = "The capture's status URL")),
    )),
)]
async fn capture_hold(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<CaptureRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::HoldsWrite)?;
    let Path(hold_id) = path?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let (source, currency) = placed_hold(&state, principal.client_id, hold_id).await?;
    let money = request.amount.as_deref().map(|amount| parse_money(amount, currency)).transpose()?;
    let capture_id = TransferId::derive(Operation::Capture, principal.client_id, &key);
    let canonical = serde_json::json!({
        "kind": "capture",
        "hold_id": hold_id,
        "amount": money.map(|money| money.amount().to_string()),
    });
    let command = Command::TransferPost(TransferPost {
        version: V1,
        transfer_id: capture_id,
        hold_id: TransferId::from_uuid(hold_id),
        source_account_id: AccountId::from_uuid(source),
        money,
        requested_at: Utc::now(),
    });
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}

/// Voids a held hold: its funds are released at once.
///
/// Applied by the processor: follow it at the `Location`. Needs the
/// `holds:write` scope.
#[utoipa::path(
    post,
    path = "/v1/holds/{hold_id}/void",
    operation_id = "void_hold",
    tag = "holds",
    params(
        ("hold_id" = Uuid, Path, description = "The hold", example = "8c4f18ab-acef-550e-b2c3-eddf215cfd0b"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    responses((
        status = 202,
        description = "Accepted; the processor releases it",
        body = Accepted,
        headers(("Location" = String, description = "The void's status URL")),
    )),
)]
async fn void_hold(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::HoldsWrite)?;
    let Path(hold_id) = path?;
    let key = required_idempotency_key(&headers)?;
    let (source, _) = placed_hold(&state, principal.client_id, hold_id).await?;
    let void_id = TransferId::derive(Operation::Void, principal.client_id, &key);
    let canonical = serde_json::json!({ "kind": "void", "hold_id": hold_id });
    let command = Command::TransferVoid(TransferVoid {
        version: V1,
        transfer_id: void_id,
        hold_id: TransferId::from_uuid(hold_id),
        source_account_id: AccountId::from_uuid(source),
        requested_at: Utc::now(),
    });
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}
