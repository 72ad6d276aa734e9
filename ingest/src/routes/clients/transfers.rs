//! API clients' transfers: submit one (idempotently), or a payout to
//! another bank, and read its status (see [`crate::domain::acceptance`]).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use chrono::Utc;
use schemas::messages::{TransferExternal, V1};
use schemas::{AccountId, Command, Creditor, Currency, Operation, Remittance, TransferId};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{Accepted, Requester, accept};
use crate::domain::clients::Scope;
use crate::domain::transfers::{TransferView, parse_money, transfer_command, transfer_view};
use crate::error::ApiError;
use crate::extract::headers::required_idempotency_key;
use crate::extract::principal::Principal;
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_transfer)).routes(routes!(get_transfer)).routes(routes!(submit_payout))
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

/// A client moves money only out of its own accounts. The processor checks
/// everything else (existence of the destination, currency, funds).
async fn owned_source(state: &AppState, principal: &Principal, source_account_id: Uuid) -> Result<(), ApiError> {
    let owners = &state.acceptances.owners;
    if owners.is_owner(source_account_id, principal.client_id) {
        return Ok(());
    }
    let owns_source = sqlx::query_scalar!(
        r#"select exists (select 1 from accounts where id = $1 and owner_client_id = $2) as "owns_source!""#,
        source_account_id,
        principal.client_id,
    )
    .fetch_one(&state.pool)
    .await?;
    if !owns_source {
        return Err(ApiError::not_found("account_not_found", "no such source account"));
    }
    owners.remember(source_account_id, principal.client_id);
    Ok(())
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
