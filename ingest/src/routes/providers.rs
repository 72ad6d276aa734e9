//! Callbacks of the payment provider: `POST /v1/providers/{name}/callbacks`.
//!
//! A provider that answered a payout with "pending" tells its outcome here
//! later. The request carries no bearer token; it is authenticated by an
//! HMAC-SHA256 signature of the exact body with a timestamp
//! (`Provider-Signature: t=…,v1=…`, see [`platform::signature`]), and a
//! timestamp outside the tolerance is refused as a replay. The outcome is
//! recorded in `payout_outcomes` (which is what lets the processor trust it:
//! see `platform::payouts`) and becomes the same `payout.outcome` command
//! the relay publishes for a synchronous answer, with the same derived id: a
//! duplicate callback, or a callback after a synchronous answer, is applied
//! once. A callback contradicting the payout's settlement is recorded too,
//! and the processor raises it as a conflict for an operator.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::Utc;
use schemas::messages::{PayoutResult, payout_outcome};
use schemas::{AccountId, TransferId};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::middleware::context::RequestId;

pub(crate) const SIGNATURE_HEADER: &str = "provider-signature";

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(callback))
}

/// A payment provider's report of a payout's outcome.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ProviderCallback)]
#[serde(deny_unknown_fields)]
struct Callback {
    /// Our payout id, as sent in the payment order.
    payment_id: Uuid,
    /// `settled` or `rejected`.
    #[schema(example = "settled")]
    status: String,
    /// The provider's reference of the payment.
    #[serde(default)]
    reference: Option<String>,
    /// The provider's reason code, for a rejection.
    #[serde(default)]
    code: Option<String>,
}

/// A payment provider reports a pending payout's outcome.
///
/// No bearer token: the exact body is signed with HMAC-SHA256 and a
/// timestamp in `Provider-Signature`; a timestamp outside the tolerance is
/// refused as a replay. A duplicate callback is applied once.
#[utoipa::path(
    post,
    path = "/v1/providers/{name}/callbacks",
    operation_id = "provider_callback",
    tag = "providers",
    params(
        ("name" = String, Path, description = "The payment provider, as configured", example = "acme"),
        (
            "Provider-Signature" = String,
            Header,
            description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>` of the timestamp and the exact body"
        ),
    ),
    request_body = Callback,
    responses((
        status = 202,
        description = "Accepted: the payout is posted or voided. Body: `{\"status\": \"accepted\"}`",
        body = serde_json::Value,
        example = json!({ "status": "accepted" }),
    )),
    security(()),
)]
async fn callback(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Path(name) = path?;
    // An unknown provider and an unconfigured one look the same.
    let provider = state
        .provider_callback
        .as_ref()
        .filter(|provider| provider.name == name)
        .ok_or_else(|| ApiError::not_found("provider_not_found", "no such payment provider"))?;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    platform::signature::verify_callback(
        provider.secret.expose_secret().as_bytes(),
        signature,
        &body,
        Utc::now().timestamp(),
        provider.tolerance_s,
    )
    .map_err(|error| {
        tracing::warn!(provider = %name, code = error.code(), "refused a provider callback");
        ApiError::unauthorized(error.code(), error.to_string())
    })?;
    let callback: Callback = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("invalid_callback", format!("not a payment callback: {error}")))?;
    let result = match callback.status.as_str() {
        "settled" => PayoutResult::Settled,
        "rejected" => PayoutResult::Rejected,
        other => {
            return Err(ApiError::unprocessable(
                "invalid_callback_status",
                format!("status {other:?} is neither settled nor rejected"),
            ));
        }
    };
    // The payout must be applied before its outcome can be: a callback that
    // overtakes it gets 404 and the provider calls again.
    // A callback contradicting the payout's settlement is recorded and
    // published like any other: the processor finds the conflict and raises
    // it (one place for that rule).
    let source: Option<Uuid> = sqlx::query_scalar!(
        r#"select source_account_id as "source_account_id!" from transfers where id = $1 and kind = 'payout'"#,
        callback.payment_id
    )
    .fetch_optional(&state.pool)
    .await?;
    let source = source.ok_or_else(|| ApiError::not_found("payment_not_found", "no such payout"))?;
    let payment_id = TransferId::from_uuid(callback.payment_id);
    platform::payouts::record_outcome(
        &state.pool,
        payment_id,
        result,
        platform::payouts::Origin::Callback,
        callback.reference.as_deref(),
        callback.code.as_deref(),
    )
    .await?;
    let command = payout_outcome(payment_id, AccountId::from_uuid(source), result, Utc::now());
    state.publisher.publish(&command, &request_id.0).await?;
    tracing::info!(
        provider = %name,
        payment_id = %callback.payment_id,
        result = result.code(),
        reference = callback.reference.as_deref().unwrap_or_default(),
        code = callback.code.as_deref().unwrap_or_default(),
        "provider callback accepted"
    );
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "accepted" }))))
}
