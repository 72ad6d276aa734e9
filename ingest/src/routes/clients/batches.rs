//! Multi-leg transfers: up to 16 movements from the client's accounts
//! applied all or nothing, in one ledger transaction (`transfer.batch`): a
//! payment and its fee, a split payment, the two sides of an exchange
//! through the client's accounts of each currency.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use chrono::Utc;
use schemas::messages::{BatchLeg, TransferBatch, V1};
use schemas::{AccountId, Command, Currency, Metadata, Operation, Reference, TransferId};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{Accepted, Requester, accept};
use crate::domain::accounts::require_client_source;
use crate::domain::clients::Scope;
use crate::domain::transfers::{Annotations, metadata_schema, parse_money, reference_schema};
use crate::error::ApiError;
use crate::extract::headers::required_idempotency_key;
use crate::extract::principal::Principal;
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_batch))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LegRequest {
    /// One of the client's own accounts.
    source_account_id: Uuid,
    destination_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    #[schema(example = "100.00")]
    amount: String,
    /// This leg's currency: both its accounts hold it.
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    /// 1 to 16 legs, applied in order: a later leg may spend what an
    /// earlier one credited.
    #[schema(min_items = 1, max_items = 16)]
    legs: Vec<LegRequest>,
    #[serde(default)]
    #[schema(schema_with = reference_schema)]
    reference: Option<Reference>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    metadata: Option<Metadata>,
}

/// Submits up to 16 transfers applied all or nothing.
///
/// One ledger transaction: either every leg is applied, or none is and the
/// batch is `rejected` with one reason and `rejected_leg`, the leg that
/// caused it (every balance untouched). Each leg is single-currency; a
/// batch may span currencies. Every leg's source must be one of the
/// client's accounts. Follow it at the `Location`; a retry with the same
/// `Idempotency-Key` and body is the same batch. Needs the
/// `transfers:write` scope.
#[utoipa::path(
    post,
    path = "/v1/transfer-batches",
    operation_id = "create_transfer_batch",
    tag = "transfers",
    params(("Idempotency-Key" = String, Header, description = "Makes a retry safe")),
    request_body(
        content = BatchRequest,
        example = json!({
            "legs": [
                {"source_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01",
                 "destination_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d02",
                 "amount": "100.00", "currency": "EUR"},
                {"source_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01",
                 "destination_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d03",
                 "amount": "1.50", "currency": "EUR"}
            ],
            "reference": "ORDER-1042"
        }),
    ),
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The batch's status URL")),
        links(("GetBatch" = (operation_id = "get_transfer", parameters(("transfer_id" = "$response.body#/transfer_id"))))),
    )),
)]
async fn submit_batch(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::TransfersWrite)?;
    let key = required_idempotency_key(&headers)?;
    let Json(request) = body?;
    if request.legs.is_empty() || request.legs.len() > TransferBatch::LEGS_MAX {
        return Err(ApiError::unprocessable(
            "invalid_batch",
            format!("a batch has 1 to {} legs", TransferBatch::LEGS_MAX),
        ));
    }
    let mut legs = Vec::with_capacity(request.legs.len());
    for leg in &request.legs {
        let money = parse_money(&leg.amount, leg.currency)?;
        require_client_source(&state, principal.client_id, leg.source_account_id).await?;
        legs.push(BatchLeg {
            source_account_id: AccountId::from_uuid(leg.source_account_id),
            destination_account_id: AccountId::from_uuid(leg.destination_account_id),
            money,
        });
    }
    let batch_id = TransferId::derive(Operation::Batch, principal.client_id, &key);
    let canonical_legs: Vec<serde_json::Value> = legs
        .iter()
        .map(|leg| {
            serde_json::json!({
                "source_account_id": leg.source_account_id,
                "destination_account_id": leg.destination_account_id,
                "amount": leg.money.amount().to_string(),
                "currency": leg.money.currency(),
            })
        })
        .collect();
    let annotations = Annotations { reference: request.reference, metadata: request.metadata };
    let command = Command::TransferBatch(TransferBatch {
        version: V1,
        transfer_id: batch_id,
        legs,
        reference: annotations.reference.clone(),
        metadata: annotations.metadata.clone(),
        requested_at: Utc::now(),
    });
    let canonical = annotations.into_canonical(serde_json::json!({ "kind": "batch", "legs": canonical_legs }));
    accept(&state, Requester::Client(principal.client_id), &key, &command, canonical, &request_id.0).await
}
