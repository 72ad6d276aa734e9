//! Transfers as every audience sees them: the command built from a request,
//! the money parsed from it, and the status view.
//!
//! The status view answers from what the ledger decided, never from
//! ingest's own `published_at` marker alone: a request can reach the broker
//! and be applied while its marker is lost (the update fails, the handler is
//! cancelled, librdkafka times out a message the broker wrote). A recorded
//! request with neither a marker nor a decision is `unconfirmed`, not
//! unknown: a client that checks before retrying must not conclude that it
//! was never sent.

use chrono::{DateTime, Utc};
use schemas::messages::{TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Metadata, Money, Reference, TransferId};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::Requester;
use crate::domain::accounts::{format_amount, parse_currency};
use crate::error::ApiError;

/// What a requester attaches to a transfer, a hold or a batch: a bank
/// reference and metadata (see [`schemas::annotations`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Annotations {
    pub(crate) reference: Option<Reference>,
    pub(crate) metadata: Option<Metadata>,
}

impl Annotations {
    /// Adds them to a request's canonical form, only when given: a request
    /// without them keeps the canonical form it always had, so a retry
    /// across an upgrade still matches.
    pub(crate) fn into_canonical(self, mut canonical: serde_json::Value) -> serde_json::Value {
        if let Some(object) = canonical.as_object_mut() {
            if let Some(reference) = self.reference {
                object.insert("reference".to_owned(), serde_json::json!(reference));
            }
            if let Some(metadata) = self.metadata {
                object.insert("metadata".to_owned(), serde_json::json!(metadata));
            }
        }
        canonical
    }
}

/// The OpenAPI schema of a [`Reference`] (the `schemas` crate describes its
/// types with schemars, not utoipa).
pub(crate) fn reference_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .description(Some(
            "A bank reference: 1 to 140 SEPA characters (a-z A-Z 0-9 / - ? : ( ) . , ' + and space), \
             not starting or ending with '/', no '//'. Searchable (`GET /v1/transfers?reference=`).",
        ))
        .min_length(Some(1))
        .max_length(Some(Reference::LENGTH_MAX))
        .pattern(Some(Reference::PATTERN))
        .examples(["INV-2026/0042"])
        .build()
}

/// The OpenAPI schema of [`Metadata`].
pub(crate) fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::AdditionalProperties;
    use utoipa::openapi::{ObjectBuilder, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(Metadata::VALUE_LENGTH_MAX))
        .pattern(Some(r"^[^\u0000-\u001f\u007f]*$"));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Up to 32 keys (1 to 64 characters) with string values (up to 512 characters), at most 4 KiB as \
             JSON, no control characters. Stored, returned and carried in events and webhooks.",
        ))
        .max_properties(Some(Metadata::KEYS_MAX))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(Metadata::KEY_LENGTH_MAX))
                .pattern(Some(r"^[^\u0000-\u001f\u007f]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(value.build().into())))
        .examples([serde_json::json!({"order_id": "A-1042", "channel": "web"})])
        .build()
}

/// A `transfer.requested` command, and the canonical form of its request
/// that a retry with the same key must match.
#[must_use]
pub(crate) fn transfer_command(
    transfer_id: TransferId,
    source_account_id: Uuid,
    destination_account_id: Uuid,
    money: Money,
    annotations: Annotations,
) -> (Command, serde_json::Value) {
    let command = Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id,
        source_account_id: AccountId::from_uuid(source_account_id),
        destination_account_id: AccountId::from_uuid(destination_account_id),
        money,
        reference: annotations.reference.clone(),
        metadata: annotations.metadata.clone(),
        requested_at: Utc::now(),
    });
    let canonical = annotations.into_canonical(serde_json::json!({
        "kind": "transfer",
        "source_account_id": source_account_id,
        "destination_account_id": destination_account_id,
        "amount": money.amount().to_string(),
        "currency": money.currency(),
    }));
    (command, canonical)
}

/// An amount in a currency, or 422 `invalid_amount`.
///
/// # Errors
/// When the amount is not a positive decimal within the currency's scale.
pub(crate) fn parse_money(amount: &str, currency: Currency) -> Result<Money, ApiError> {
    Money::parse(amount, currency).map_err(|error| ApiError::unprocessable("invalid_amount", error.to_string()))
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
    /// What the ledger recorded it as, once decided: `transfer`,
    /// `deposit`, `hold`, `post`, `void`, `reversal`, `payout` or `batch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "transfer")]
    kind: Option<String>,
    /// For a refused batch: the leg (from 0) whose refusal refused it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    rejected_leg: Option<i16>,
    /// For `limit_exceeded`: `per_transfer` or `rolling_24h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "rolling_24h")]
    exceeded_limit: Option<String>,
    /// For a hold or payout: when the processor releases it by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    expires_at: Option<DateTime<Utc>>,
    /// For a posted hold: how much was captured (the rest was released).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "12.50")]
    captured_amount: Option<String>,
    /// The completed reversal that corrected it, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reversed_by: Option<Uuid>,
    /// Why it was reversed (with `reversed_by`), or, for a reversal, why it
    /// corrects its original.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reversal_reason: Option<String>,
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
    // `!`: the expressions are never null (`created_at` is not), though
    // Postgres cannot tell of an expression.
    let row = sqlx::query!(
        r#"select request.request, coalesce(request.published_at, request.created_at) as "accepted_at!",
                 request.published_at is not null as "marked!",
                 coalesce(transfer.status, command.status, case when dead.command_id is not null then $4 end)
                     as status,
                 coalesce(transfer.rejection_reason, command.rejection_reason, dead.reason) as reason,
                 coalesce(transfer.decided_at, command.decided_at, dead.dead_lettered_at) as decided_at,
                 transfer.kind as "kind?", transfer.rejected_leg as "rejected_leg?",
                 transfer.exceeded_limit as "exceeded_limit?", transfer.expires_at as "expires_at?",
                 transfer.settled_amount as "captured_amount?", transfer.currency as "currency?", reversal.id as "reversed_by?",
                 coalesce(reversal.reversal_reason, transfer.reversal_reason) as reversal_reason
          from accepted_requests request
          left join transfers transfer on transfer.id = request.transfer_id
          left join transfers reversal on reversal.related_transfer_id = transfer.id
              and reversal.kind = 'reversal' and reversal.status = 'completed' 
          left join account_commands command on command.id = request.transfer_id
          left join dead_lettered_commands dead on dead.command_id = request.transfer_id
          where request.transfer_id = $1 and (request.api_client_id = $2 or request.user_id = $3)"#,
        transfer_id,
        client_id,
        user_id,
        STATUS_DEAD_LETTERED,
    )
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found("transfer_not_found", "no such transfer"))?;
    // A decision proves the command reached the broker, marker or not.
    let publish_confirmed = row.marked || row.status.is_some();
    let captured_amount = match (row.captured_amount, row.currency) {
        (Some(amount), Some(currency)) => Some(format_amount(amount, parse_currency(&currency)?)),
        _ => None,
    };
    let status =
        row.status.unwrap_or_else(|| if publish_confirmed { STATUS_ACCEPTED } else { STATUS_UNCONFIRMED }.to_owned());
    Ok(TransferView {
        transfer_id,
        status,
        reason: row.reason,
        publish_confirmed,
        request: row.request,
        accepted_at: row.accepted_at,
        decided_at: row.decided_at,
        kind: row.kind,
        rejected_leg: row.rejected_leg,
        exceeded_limit: row.exceeded_limit,
        expires_at: row.expires_at,
        captured_amount,
        reversed_by: row.reversed_by,
        reversal_reason: row.reversal_reason,
    })
}
