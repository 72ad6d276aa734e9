//! API clients' transfers: submit one (idempotently), or a payout to
//! another bank, read its status (see [`crate::domain::acceptance`]), find
//! them by reference, and reverse one paid into the client's accounts.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use chrono::DateTime;
use chrono::Utc;
use schemas::messages::{TransferExternal, TransferReverse, V1};
use schemas::{
    AccountId, Command, Creditor, Currency, Metadata, Operation, Reference, Remittance, ReversalReason, TransferId,
};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{Accepted, Requester, accept};
use crate::domain::accounts::{format_amount, parse_currency, require_client_source};
use crate::domain::clients::Scope;
use crate::domain::transfers::{
    Annotations, TransferView, metadata_schema, parse_money, reference_schema, transfer_command, transfer_view,
};
use crate::error::ApiError;
use crate::extract::headers::required_idempotency_key;
use crate::extract::principal::Principal;
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_transfer, list_transfers))
        .routes(routes!(get_transfer))
        .routes(routes!(submit_payout))
        .routes(routes!(reverse_transfer))
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
    #[serde(default)]
    #[schema(schema_with = reference_schema)]
    reference: Option<Reference>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    metadata: Option<Metadata>,
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
        links(
            ("GetTransfer" = (operation_id = "get_transfer", parameters(("transfer_id" = "$response.body#/transfer_id")))),
            ("ReverseTransfer" = (operation_id = "reverse_transfer", parameters(("transfer_id" = "$response.body#/transfer_id")))),
        ),
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

    require_client_source(&state, principal.client_id, request.source_account_id).await?;
    let transfer_id = TransferId::derive(Operation::Transfer, principal.client_id, &key);
    let annotations = Annotations { reference: request.reference, metadata: request.metadata };
    let (command, canonical) =
        transfer_command(transfer_id, request.source_account_id, request.destination_account_id, money, annotations);
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
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
    require_client_source(&state, principal.client_id, request.source_account_id).await?;
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
    params(("transfer_id" = Uuid, Path, description = "The transfer, deposit or payout", example = "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60")),
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TransfersQuery {
    /// The bank reference to look for (exact).
    #[param(value_type = String, min_length = 1, max_length = 140, pattern = r"^[A-Za-z0-9?:().,'+ -]+(/[A-Za-z0-9?:().,'+ -]+)*$", example = "INV-2026/0042")]
    reference: Reference,
    /// Transfers per page, 1 to 100; 50 when absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A decided transfer found by its reference.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TransferSummary {
    transfer_id: Uuid,
    #[schema(example = "transfer")]
    kind: String,
    #[schema(example = "completed")]
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    source_account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    destination_account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "12.50")]
    amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "EUR")]
    currency: Option<String>,
    #[schema(example = "INV-2026/0042")]
    reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    metadata: Option<serde_json::Value>,
    decided_at: DateTime<chrono::Utc>,
}

/// The transfers found, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TransfersPage {
    transfers: Vec<TransferSummary>,
}

/// The most transfers one page returns.
const TRANSFERS_LIMIT_MAX: i64 = 100;

/// The client's transfers, holds and batches with a bank reference, newest
/// first.
///
/// Only what the client submitted and the ledger decided. Needs the
/// `transfers:read` scope.
#[utoipa::path(
    get,
    path = "/v1/transfers",
    operation_id = "list_transfers",
    tag = "transfers",
    params(TransfersQuery),
    responses((status = 200, description = "The transfers with that reference", body = TransfersPage)),
)]
async fn list_transfers(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<TransfersQuery>, QueryRejection>,
) -> Result<Json<TransfersPage>, ApiError> {
    principal.require(Scope::TransfersRead)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=TRANSFERS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={TRANSFERS_LIMIT_MAX}")));
    }
    // By the reference index, then each row's request (primary key).
    let rows = sqlx::query!(
        r#"select transfer.id, transfer.kind, transfer.status, transfer.rejection_reason, transfer.source_account_id,
                  transfer.destination_account_id, transfer.amount, transfer.currency, transfer.reference as "reference!",
                  transfer.metadata, transfer.decided_at
           from transfers transfer
           join accepted_requests request on request.transfer_id = transfer.id and request.api_client_id = $2
           where transfer.reference = $1
           order by transfer.decided_at desc, transfer.id
           limit $3"#,
        query.reference.as_str(),
        principal.client_id,
        limit,
    )
    .fetch_all(&state.pool)
    .await?;
    let transfers = rows
        .into_iter()
        .map(|row| {
            let amount = match (row.amount, row.currency.as_deref()) {
                (Some(amount), Some(currency)) => Some(format_amount(amount, parse_currency(currency)?)),
                _ => None,
            };
            Ok(TransferSummary {
                transfer_id: row.id,
                kind: row.kind,
                status: row.status,
                reason: row.rejection_reason,
                source_account_id: row.source_account_id,
                destination_account_id: row.destination_account_id,
                amount,
                currency: row.currency.map(|code| code.trim().to_owned()),
                reference: row.reference,
                metadata: row.metadata,
                decided_at: row.decided_at,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(TransfersPage { transfers }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReversalRequest {
    /// Why the transfer is corrected: 1 to 140 characters, no control
    /// characters.
    #[schema(value_type = String, min_length = 1, max_length = 140, pattern = r"^[^\u0000-\u001f\u007f]*[^\u0000-\u001f\u007f\s][^\u0000-\u001f\u007f]*$", example = "Duplicate charge")]
    reason: ReversalReason,
}

/// Reverses a completed transfer paid into one of the client's accounts:
/// the same money goes back from that account to the source, at most once.
///
/// Only the receiving side may reverse (a payee's refund): a payer cannot
/// pull money back out of someone else's account. Transfers, deposits and
/// captured holds can be reversed; a payout that left the bank cannot. The
/// original's view shows `reversed_by` once applied. Needs the
/// `transfers:write` scope.
#[utoipa::path(
    post,
    path = "/v1/transfers/{transfer_id}/reversal",
    operation_id = "reverse_transfer",
    tag = "transfers",
    params(
        ("transfer_id" = Uuid, Path, description = "The decided transfer to reverse", example = "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = ReversalRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The reversal's status URL")),
    )),
)]
async fn reverse_transfer(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<ReversalRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::TransfersWrite)?;
    let Path(original_id) = path?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let payee_is_client = sqlx::query_scalar!(
        r#"select exists (
               select 1 from transfers transfer
               join accounts destination on destination.id = transfer.destination_account_id
               where transfer.id = $1 and destination.owner_client_id = $2
           ) as "payee_is_client!""#,
        original_id,
        principal.client_id,
    )
    .fetch_one(&state.pool)
    .await?;
    if !payee_is_client {
        return Err(ApiError::not_found(
            "transfer_not_found",
            "no decided transfer into one of the client's accounts has this id",
        ));
    }
    let transfer_id = TransferId::derive(Operation::Reversal, principal.client_id, &key);
    let canonical = serde_json::json!({
        "kind": "reversal",
        "original_transfer_id": original_id,
        "reason": request.reason,
    });
    let command = Command::TransferReverse(TransferReverse {
        version: V1,
        transfer_id,
        original_transfer_id: TransferId::from_uuid(original_id),
        reason: Some(request.reason),
        requested_at: Utc::now(),
    });
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}
