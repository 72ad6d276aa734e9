//! The Kafka messages: [`Command`]s that ask the processor to move money, and
//! [`Event`]s that tell the world what happened.
//!
//! Both are JSON objects tagged by `type` and carrying a `version`. A reader
//! refuses an unknown type, an unknown version and unknown fields: a message
//! it does not fully understand goes to the dead-letter topic instead of
//! being half-applied.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::annotations::{Metadata, Reference, ReversalReason};
use crate::payee::{Creditor, Remittance};
use crate::{AccountId, Money, TransferId};

/// Version 1 of a message's shape: serializes as `1` and refuses anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V1;

impl Serialize for V1 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(1)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u16::deserialize(deserializer)? {
            1 => Ok(V1),
            other => Err(serde::de::Error::custom(format!(
                "unsupported message version {other}; this reader understands version 1"
            ))),
        }
    }
}

impl JsonSchema for V1 {
    fn schema_name() -> Cow<'static, str> {
        "Version1".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "const": 1 })
    }
}

/// A request to change the ledger, published to `ledger.commands` keyed by
/// the account whose balance it lowers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum Command {
    /// Move money between two accounts of the same currency.
    #[serde(rename = "transfer.requested")]
    TransferRequested(TransferRequested),
    /// Fund an account from the system cash-in account of its currency.
    /// Only admin and ops principals may publish it.
    #[serde(rename = "account.deposited")]
    AccountDeposited(AccountDeposited),
    /// Reserve funds on the source for a later post or void (two-phase).
    #[serde(rename = "transfer.hold")]
    TransferHold(TransferHold),
    /// Capture all or part of a pending hold.
    #[serde(rename = "transfer.post")]
    TransferPost(TransferPost),
    /// Release a pending hold.
    #[serde(rename = "transfer.void")]
    TransferVoid(TransferVoid),
    /// Correct a completed transfer with a new one in the other direction,
    /// at most once.
    #[serde(rename = "transfer.reverse")]
    TransferReverse(TransferReverse),
    /// Block debits from an account; credits still arrive.
    #[serde(rename = "account.frozen")]
    AccountFrozen(AccountStatusCommand),
    /// Lift a freeze.
    #[serde(rename = "account.unfrozen")]
    AccountUnfrozen(AccountStatusCommand),
    /// Close an account for good; it must be empty.
    #[serde(rename = "account.closed")]
    AccountClosed(AccountStatusCommand),
    /// Set or remove an account's overdraft limit.
    #[serde(rename = "account.overdraft_limit_set")]
    AccountOverdraftLimitSet(AccountOverdraftLimitSet),
    /// Pay out to an account at another bank through the payment provider:
    /// the funds are held at once and settled (posted or voided) by the
    /// provider's answer, never by expiry.
    #[serde(rename = "transfer.external")]
    TransferExternal(TransferExternal),
    /// The payment provider's outcome of a payout, relayed by the outbox
    /// relay or a signed provider callback: it posts or voids the payout's
    /// hold. `transfer.post` and `transfer.void` cannot settle a payout.
    /// The processor acts on it only when the same outcome is recorded in
    /// the `payout_outcomes` table, which the relay and ingest write before
    /// publishing and upstream apps cannot: a `payout.outcome` published by
    /// anyone else settles nothing.
    #[serde(rename = "payout.outcome")]
    PayoutOutcome(PayoutOutcome),
    /// Up to 16 movements applied all or nothing, in one ledger
    /// transaction: a payment and its fee, a split payment, the two sides
    /// of an FX exchange through the bank's own accounts of each currency.
    #[serde(rename = "transfer.batch")]
    TransferBatch(TransferBatch),
    /// Set or remove an account's spending limits, checked by the
    /// processor in the same transaction as every debit they cover.
    #[serde(rename = "account.spending_limits_set")]
    AccountSpendingLimitsSet(AccountSpendingLimitsSet),
}

impl Command {
    /// The id under which the processor applies the command at most once:
    /// the transfer id of a money movement, the command id of an account
    /// command.
    #[must_use]
    pub fn id(&self) -> uuid::Uuid {
        match self {
            Command::TransferRequested(command) => command.transfer_id.as_uuid(),
            Command::AccountDeposited(command) => command.transfer_id.as_uuid(),
            Command::TransferHold(command) => command.transfer_id.as_uuid(),
            Command::TransferPost(command) => command.transfer_id.as_uuid(),
            Command::TransferVoid(command) => command.transfer_id.as_uuid(),
            Command::TransferReverse(command) => command.transfer_id.as_uuid(),
            Command::AccountFrozen(command) | Command::AccountUnfrozen(command) | Command::AccountClosed(command) => {
                command.command_id
            }
            Command::AccountOverdraftLimitSet(command) => command.command_id,
            Command::TransferExternal(command) => command.transfer_id.as_uuid(),
            Command::PayoutOutcome(command) => command.transfer_id.as_uuid(),
            Command::TransferBatch(command) => command.transfer_id.as_uuid(),
            Command::AccountSpendingLimitsSet(command) => command.command_id,
        }
    }

    /// The Kafka key: the account whose balance the command lowers, so all
    /// debits of one account are ordered in one partition. A deposit lowers
    /// only the system account, so it is keyed by the funded account instead
    /// (one hot system key would crowd a single partition).
    #[must_use]
    ///
    /// A post or void names the hold's source account so that it lands in
    /// the hold's partition, after the hold. A reversal debits the original
    /// transfer's destination, which the command does not name; it is keyed
    /// by the original transfer id instead (the row locks keep balances
    /// right whatever the order). A batch is keyed by its first leg's
    /// source.
    pub fn partition_key(&self) -> String {
        match self {
            Command::TransferRequested(command) => command.source_account_id.to_string(),
            Command::AccountDeposited(command) => command.account_id.to_string(),
            Command::TransferHold(command) => command.source_account_id.to_string(),
            Command::TransferPost(command) => command.source_account_id.to_string(),
            Command::TransferVoid(command) => command.source_account_id.to_string(),
            Command::TransferReverse(command) => command.original_transfer_id.to_string(),
            Command::AccountFrozen(command) | Command::AccountUnfrozen(command) | Command::AccountClosed(command) => {
                command.account_id.to_string()
            }
            Command::AccountOverdraftLimitSet(command) => command.account_id.to_string(),
            Command::TransferExternal(command) => command.source_account_id.to_string(),
            Command::PayoutOutcome(command) => command.source_account_id.to_string(),
            Command::TransferBatch(command) => command.legs[0].source_account_id.to_string(),
            Command::AccountSpendingLimitsSet(command) => command.account_id.to_string(),
        }
    }

    /// The message `type`, as in the JSON.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::TransferRequested(_) => "transfer.requested",
            Command::AccountDeposited(_) => "account.deposited",
            Command::TransferHold(_) => "transfer.hold",
            Command::TransferPost(_) => "transfer.post",
            Command::TransferVoid(_) => "transfer.void",
            Command::TransferReverse(_) => "transfer.reverse",
            Command::AccountFrozen(_) => "account.frozen",
            Command::AccountUnfrozen(_) => "account.unfrozen",
            Command::AccountClosed(_) => "account.closed",
            Command::AccountOverdraftLimitSet(_) => "account.overdraft_limit_set",
            Command::TransferExternal(_) => "transfer.external",
            Command::PayoutOutcome(_) => "payout.outcome",
            Command::TransferBatch(_) => "transfer.batch",
            Command::AccountSpendingLimitsSet(_) => "account.spending_limits_set",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequested {
    pub version: V1,
    pub transfer_id: TransferId,
    pub source_account_id: AccountId,
    pub destination_account_id: AccountId,
    pub money: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountDeposited {
    pub version: V1,
    pub transfer_id: TransferId,
    pub account_id: AccountId,
    pub money: Money,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferHold {
    pub version: V1,
    pub transfer_id: TransferId,
    pub source_account_id: AccountId,
    pub destination_account_id: AccountId,
    pub money: Money,
    /// After this instant the processor releases the hold by itself.
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub requested_at: DateTime<Utc>,
}

/// `transfer.batch`: movements applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBatch {
    pub version: V1,
    /// The batch's id; each leg is a transfer of its own, under
    /// [`TransferBatch::leg_id`].
    pub transfer_id: TransferId,
    /// 1 to 16 legs, applied in order: a later leg may spend what an
    /// earlier one credited.
    #[serde(deserialize_with = "bounded_legs")]
    #[schemars(length(min = 1, max = 16))]
    pub legs: Vec<BatchLeg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub requested_at: DateTime<Utc>,
}

/// One movement of a batch, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchLeg {
    pub source_account_id: AccountId,
    pub destination_account_id: AccountId,
    pub money: Money,
}

impl TransferBatch {
    /// Legs in one batch at most: enough for a payment with its fees and
    /// taxes, or an exchange with its spread, and a bound on what one
    /// command locks.
    pub const LEGS_MAX: usize = 16;

    /// The transfer id of leg `index` (from 0) of the batch `batch_id`.
    #[must_use]
    pub fn leg_id(batch_id: TransferId, index: usize) -> TransferId {
        TransferId::from_uuid(uuid::Uuid::new_v5(
            &batch_id.as_uuid(),
            format!("ledgerline.batch.leg/{index}").as_bytes(),
        ))
    }
}

fn bounded_legs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<BatchLeg>, D::Error> {
    let legs = Vec::<BatchLeg>::deserialize(deserializer)?;
    if legs.is_empty() || legs.len() > TransferBatch::LEGS_MAX {
        return Err(serde::de::Error::custom(format!(
            "a batch has 1 to {} legs, not {}",
            TransferBatch::LEGS_MAX,
            legs.len()
        )));
    }
    Ok(legs)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferExternal {
    pub version: V1,
    /// The payout's id; also the id of its hold, which the provider's
    /// answer posts or voids.
    pub transfer_id: TransferId,
    pub source_account_id: AccountId,
    pub money: Money,
    pub creditor: Creditor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remittance_information: Option<Remittance>,
    pub requested_at: DateTime<Utc>,
}

/// What the processor asks the outbox relay to pay out, once the funds of a
/// `transfer.external` are held: the payload of a `payment.requested` row of
/// the outbox's `payments` destination. The relay orders the payment from
/// the provider with the outbox id as the idempotency key, and turns the
/// answer into a `transfer.post` or `transfer.void` of the hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequested {
    pub version: V1,
    /// The payout's transfer id, which is its hold's id.
    pub payment_id: TransferId,
    pub source_account_id: AccountId,
    pub money: Money,
    pub creditor: Creditor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remittance_information: Option<Remittance>,
    pub requested_at: DateTime<Utc>,
}

impl PaymentRequested {
    pub const TYPE: &'static str = "payment.requested";
}

/// How the payment provider decided a payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayoutResult {
    /// The provider paid: the hold is posted to external clearing.
    Settled,
    /// The provider refused: the hold is released.
    Rejected,
}

impl PayoutResult {
    /// The stable code, as in the JSON and the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            PayoutResult::Settled => "settled",
            PayoutResult::Rejected => "rejected",
        }
    }

    /// Parses a stored code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Settled, Self::Rejected].into_iter().find(|result| result.code() == code)
    }
}

/// `payout.outcome`: the provider's decision on a payout, as relayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutOutcome {
    pub version: V1,
    /// The settlement's own id, derived from the payout and the result
    /// (see [`payout_outcome`]).
    pub transfer_id: TransferId,
    /// The payout, which is its hold.
    pub payment_id: TransferId,
    /// The payout's source account (the partition key).
    pub source_account_id: AccountId,
    pub result: PayoutResult,
    pub requested_at: DateTime<Utc>,
}

/// The command that settles a payout's hold once the provider has decided.
/// Its id is derived from the payout and the result, so the same outcome
/// told twice (the provider's synchronous answer and its callback, a retried
/// delivery, a duplicate callback) is applied once, and a contradicting one
/// has an id of its own: the processor records it as a conflict.
#[must_use]
pub fn payout_outcome(
    payment_id: TransferId,
    source_account_id: AccountId,
    result: PayoutResult,
    requested_at: DateTime<Utc>,
) -> Command {
    // The same derivations as before `payout.outcome` existed, so a
    // settlement told once by the old `transfer.post`/`transfer.void` and
    // again by the new command is still decided once.
    let what: &[u8] = match result {
        PayoutResult::Settled => b"ledgerline.payout.settled",
        PayoutResult::Rejected => b"ledgerline.payout.rejected",
    };
    Command::PayoutOutcome(PayoutOutcome {
        version: V1,
        transfer_id: TransferId::from_uuid(uuid::Uuid::new_v5(&payment_id.as_uuid(), what)),
        payment_id,
        source_account_id,
        result,
        requested_at,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferPost {
    pub version: V1,
    /// The id of the capture itself.
    pub transfer_id: TransferId,
    pub hold_id: TransferId,
    /// The hold's source account (the partition key).
    pub source_account_id: AccountId,
    /// How much to capture; the whole hold when absent. The rest is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub money: Option<Money>,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferVoid {
    pub version: V1,
    /// The id of the release itself.
    pub transfer_id: TransferId,
    pub hold_id: TransferId,
    /// The hold's source account (the partition key).
    pub source_account_id: AccountId,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferReverse {
    pub version: V1,
    /// The id of the correcting transfer.
    pub transfer_id: TransferId,
    pub original_transfer_id: TransferId,
    /// Why the transfer is corrected, for the books.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReversalReason>,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountStatusCommand {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountOverdraftLimitSet {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    /// How far below zero the account may go; absent removes the overdraft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft_limit: Option<Money>,
    pub requested_at: DateTime<Utc>,
}

/// `account.spending_limits_set`: the limits replace the account's own;
/// an absent limit is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSpendingLimitsSet {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    pub limits: SpendingLimits,
    pub requested_at: DateTime<Utc>,
}

/// An account's spending limits, in its currency. Every debit the account
/// asks for counts: transfers, batch legs, holds and payouts (a pending
/// hold counts until it is released). Deposits, posts of a hold already
/// counted and reversals are not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendingLimits {
    /// The most one transfer, hold or payout may debit (for a batch, what
    /// all its legs debit from the account together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_transfer_max: Option<Money>,
    /// The most the account may debit in any 24 hours, pending holds
    /// included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_24h_max: Option<Money>,
}

/// Which spending limit a debit would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpendingLimit {
    PerTransfer,
    Rolling24h,
}

impl SpendingLimit {
    /// The stable code, as in the JSON and the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            SpendingLimit::PerTransfer => "per_transfer",
            SpendingLimit::Rolling24h => "rolling_24h",
        }
    }

    /// Parses a stored code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::PerTransfer, Self::Rolling24h].into_iter().find(|limit| limit.code() == code)
    }
}

/// Why the processor refused a command. The codes are stable: clients match
/// on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionReason {
    /// The source account's available balance is below the amount.
    InsufficientFunds,
    /// The source or destination account does not exist.
    UnknownAccount,
    /// An account's currency differs from the transfer's.
    CurrencyMismatch,
    /// Source and destination are the same account.
    SameAccount,
    /// An account involved is frozen.
    AccountFrozen,
    /// An account involved is closed.
    AccountClosed,
    /// The transfer id was already used for a different request.
    IdempotencyKeyReused,
    /// A post or void names no hold of that source account.
    HoldNotFound,
    /// The hold expired before the post (or the hold was asked to expire in
    /// the past).
    HoldExpired,
    /// The hold was already posted, voided or expired.
    HoldAlreadySettled,
    /// A post asks for more than the hold reserved.
    AmountExceedsHold,
    /// A reversal names no known transfer.
    TransferNotFound,
    /// Only completed transfers, deposits, posts can be reversed.
    TransferNotReversible,
    /// The transfer was already reversed.
    AlreadyReversed,
    /// An account with money or holds on it cannot be closed.
    AccountNotEmpty,
    /// Only a frozen account can be unfrozen.
    AccountNotFrozen,
    /// A `transfer.post` or `transfer.void` named a payout: only the
    /// provider's outcome (`payout.outcome`) settles a payout.
    PayoutSettledByProviderOnly,
    /// A `payout.outcome` whose outcome the relay or a provider callback
    /// never recorded: not from the payment provider, so nothing is settled.
    PayoutOutcomeNotRecorded,
    /// The provider's outcome contradicts the one the payout was already
    /// settled with (voided, then reported paid, or the other way round).
    /// The ledger is left as it is and the conflict is raised to operators.
    PayoutOutcomeConflict,
    /// A reversal of money that left the bank (a settled payout): that is a
    /// new payout, not a reversal.
    ReversalOfPayout,
    /// The debit would exceed a spending limit of its source (which one is
    /// told beside the reason).
    LimitExceeded,
}

impl RejectionReason {
    /// The stable code, as in the JSON and the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            RejectionReason::InsufficientFunds => "insufficient_funds",
            RejectionReason::UnknownAccount => "unknown_account",
            RejectionReason::CurrencyMismatch => "currency_mismatch",
            RejectionReason::SameAccount => "same_account",
            RejectionReason::AccountFrozen => "account_frozen",
            RejectionReason::AccountClosed => "account_closed",
            RejectionReason::IdempotencyKeyReused => "idempotency_key_reused",
            RejectionReason::HoldNotFound => "hold_not_found",
            RejectionReason::HoldExpired => "hold_expired",
            RejectionReason::HoldAlreadySettled => "hold_already_settled",
            RejectionReason::AmountExceedsHold => "amount_exceeds_hold",
            RejectionReason::TransferNotFound => "transfer_not_found",
            RejectionReason::TransferNotReversible => "transfer_not_reversible",
            RejectionReason::AlreadyReversed => "already_reversed",
            RejectionReason::AccountNotEmpty => "account_not_empty",
            RejectionReason::AccountNotFrozen => "account_not_frozen",
            RejectionReason::PayoutSettledByProviderOnly => "payout_settled_by_provider_only",
            RejectionReason::PayoutOutcomeNotRecorded => "payout_outcome_not_recorded",
            RejectionReason::PayoutOutcomeConflict => "payout_outcome_conflict",
            RejectionReason::ReversalOfPayout => "reversal_of_payout",
            RejectionReason::LimitExceeded => "limit_exceeded",
        }
    }

    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: &'static [RejectionReason] = &[
        RejectionReason::InsufficientFunds,
        RejectionReason::UnknownAccount,
        RejectionReason::CurrencyMismatch,
        RejectionReason::SameAccount,
        RejectionReason::AccountFrozen,
        RejectionReason::AccountClosed,
        RejectionReason::IdempotencyKeyReused,
        RejectionReason::HoldNotFound,
        RejectionReason::HoldExpired,
        RejectionReason::HoldAlreadySettled,
        RejectionReason::AmountExceedsHold,
        RejectionReason::TransferNotFound,
        RejectionReason::TransferNotReversible,
        RejectionReason::AlreadyReversed,
        RejectionReason::AccountNotEmpty,
        RejectionReason::AccountNotFrozen,
        RejectionReason::PayoutSettledByProviderOnly,
        RejectionReason::PayoutOutcomeNotRecorded,
        RejectionReason::PayoutOutcomeConflict,
        RejectionReason::ReversalOfPayout,
        RejectionReason::LimitExceeded,
    ];

    /// Parses a stored code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|reason| reason.code() == code)
    }
}

/// What a transfer was, in events and read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Between two accounts, requested by a client.
    Transfer,
    /// From the system cash-in account into an account.
    Deposit,
    /// A reservation of funds (two-phase, first phase).
    Hold,
    /// The capture of a hold (second phase).
    Post,
    /// The release of a hold.
    Void,
    /// The correction of a completed transfer.
    Reversal,
    /// Funds held for a payment to another bank (`transfer.external`),
    /// settled by the provider's answer; it has no expiry.
    Payout,
    /// Movements applied together (`transfer.batch`); each leg is a
    /// `transfer` of its own whose related transfer is the batch.
    Batch,
}

impl TransferKind {
    /// The stable code, as in the JSON and the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            TransferKind::Transfer => "transfer",
            TransferKind::Deposit => "deposit",
            TransferKind::Hold => "hold",
            TransferKind::Post => "post",
            TransferKind::Void => "void",
            TransferKind::Reversal => "reversal",
            TransferKind::Payout => "payout",
            TransferKind::Batch => "batch",
        }
    }

    /// Parses a stored code.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Transfer, Self::Deposit, Self::Hold, Self::Post, Self::Void, Self::Reversal, Self::Payout, Self::Batch]
            .into_iter()
            .find(|kind| kind.code() == code)
    }
}

/// Why a hold was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VoidReason {
    /// A `transfer.void` asked for it.
    Requested,
    /// Its expiry passed; the processor released it.
    Expired,
}

/// An account's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    /// Debits are refused; credits arrive.
    Frozen,
    /// Everything is refused.
    Closed,
}

impl AccountStatus {
    /// The stable code, as in the JSON and the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }

    /// Parses a stored code; `None` for a code this version does not know.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Active, Self::Frozen, Self::Closed].into_iter().find(|status| status.code() == code)
    }
}

/// Something that happened to the ledger, published to `ledger.events` by the
/// outbox relay, keyed by account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "transfer.completed")]
    TransferCompleted(TransferCompleted),
    #[serde(rename = "transfer.rejected")]
    TransferRejected(TransferRejected),
    #[serde(rename = "transfer.held")]
    TransferHeld(TransferHeld),
    #[serde(rename = "transfer.voided")]
    TransferVoided(TransferVoided),
    #[serde(rename = "account.status_changed")]
    AccountStatusChanged(AccountStatusChanged),
    #[serde(rename = "account.overdraft_limit_changed")]
    AccountOverdraftLimitChanged(AccountOverdraftLimitChanged),
    #[serde(rename = "account.spending_limits_changed")]
    AccountSpendingLimitsChanged(AccountSpendingLimitsChanged),
    #[serde(rename = "account.command_rejected")]
    AccountCommandRejected(AccountCommandRejected),
    /// A command reused the id of an earlier, different command. The earlier
    /// command's decision stands; this event has an id of its own
    /// (`conflict_id`) so that no consumer takes it for the earlier one's.
    #[serde(rename = "command.id_reused")]
    CommandIdReused(CommandIdReused),
    /// The payment provider told two different outcomes of one payout. The
    /// ledger keeps the first; an operator must reconcile with the provider.
    #[serde(rename = "payout.outcome_conflicted")]
    PayoutOutcomeConflicted(PayoutOutcomeConflicted),
    /// A command the processor could not apply went to the dead-letter
    /// topic (an unknown field or version, a database refusal). It is not
    /// decided: a replay after a fix may still apply it.
    #[serde(rename = "command.dead_lettered")]
    CommandDeadLettered(CommandDeadLettered),
}

impl Event {
    /// The message `type`, as in the JSON.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::TransferCompleted(_) => "transfer.completed",
            Event::TransferRejected(_) => "transfer.rejected",
            Event::TransferHeld(_) => "transfer.held",
            Event::TransferVoided(_) => "transfer.voided",
            Event::AccountStatusChanged(_) => "account.status_changed",
            Event::AccountOverdraftLimitChanged(_) => "account.overdraft_limit_changed",
            Event::AccountSpendingLimitsChanged(_) => "account.spending_limits_changed",
            Event::AccountCommandRejected(_) => "account.command_rejected",
            Event::CommandIdReused(_) => "command.id_reused",
            Event::PayoutOutcomeConflicted(_) => "payout.outcome_conflicted",
            Event::CommandDeadLettered(_) => "command.dead_lettered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferCompleted {
    pub version: V1,
    pub transfer_id: TransferId,
    pub kind: TransferKind,
    pub source_account_id: AccountId,
    pub destination_account_id: AccountId,
    pub money: Money,
    /// The hold a post captured, the transfer a reversal corrected, or the
    /// batch of a leg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_transfer_id: Option<TransferId>,
    /// The transfer's (or its batch's, or its hold's) reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub completed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRejected {
    pub version: V1,
    pub transfer_id: TransferId,
    pub kind: TransferKind,
    pub reason: RejectionReason,
    /// Absent when the command did not say (a post or void of an unknown
    /// hold, a reversal of an unknown transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_account_id: Option<AccountId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_account_id: Option<AccountId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub money: Option<Money>,
    /// For a batch: the leg (from 0) that caused the refusal of the whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<u16>,
    /// For `limit_exceeded`: which limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<SpendingLimit>,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferHeld {
    pub version: V1,
    pub transfer_id: TransferId,
    /// `hold`, or `payout` for the funds of a payment to another bank.
    pub kind: TransferKind,
    pub source_account_id: AccountId,
    pub destination_account_id: AccountId,
    pub money: Money,
    /// When the processor releases it by itself; a payout has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    pub held_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferVoided {
    pub version: V1,
    /// The released hold.
    pub hold_id: TransferId,
    /// The `transfer.void` command that asked for it; absent on expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<TransferId>,
    pub reason: VoidReason,
    pub source_account_id: AccountId,
    pub money: Money,
    pub voided_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountStatusChanged {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    pub status: AccountStatus,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountOverdraftLimitChanged {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft_limit: Option<Money>,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSpendingLimitsChanged {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    pub limits: SpendingLimits,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountCommandRejected {
    pub version: V1,
    pub command_id: uuid::Uuid,
    pub account_id: AccountId,
    /// The command's `type`, e.g. `account.closed`.
    pub command_type: String,
    pub reason: RejectionReason,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandIdReused {
    pub version: V1,
    /// This refusal's own id: derived from the reused id and the refused
    /// command's content, so a redelivery of it is told under the same id.
    pub conflict_id: uuid::Uuid,
    /// The id both commands carry; the earlier command's decision stands.
    pub reused_id: uuid::Uuid,
    /// The refused command's `type`.
    pub command_type: String,
    /// The account the refused command concerned, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    pub reason: RejectionReason,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandDeadLettered {
    pub version: V1,
    /// The command's `transfer_id` or `command_id`, as far as it could be read.
    pub command_id: uuid::Uuid,
    /// Its `type`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_type: Option<String>,
    /// The account it debits or concerns, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    /// The dead-letter reason: `invalid_command`, `apply_failed`, …
    pub reason: String,
    pub detail: String,
    pub dead_lettered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutOutcomeConflicted {
    pub version: V1,
    pub payment_id: TransferId,
    pub source_account_id: AccountId,
    pub money: Money,
    /// What the ledger did: `posted` (the money left) or `voided` (it was
    /// given back).
    pub settled_as: PayoutResult,
    /// What the provider reported since.
    pub reported: PayoutResult,
    pub detected_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transfer_json() -> serde_json::Value {
        json!({
            "type": "transfer.requested",
            "version": 1,
            "transfer_id": "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60",
            "source_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01",
            "destination_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d02",
            "money": {"amount": "25.00", "currency": "EUR"},
            "requested_at": "2026-11-27T10:00:00Z"
        })
    }

    #[test]
    fn a_transfer_command_round_trips_through_json() {
        let command: Command = serde_json::from_value(transfer_json()).expect("valid command");
        assert_eq!(command.type_name(), "transfer.requested");
        assert_eq!(serde_json::to_value(&command).expect("serializes"), transfer_json());
    }

    #[test]
    fn a_command_is_keyed_by_the_account_it_debits() {
        let command: Command = serde_json::from_value(transfer_json()).expect("valid command");
        assert_eq!(command.partition_key().to_string(), "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01");
    }

    #[test]
    fn an_unknown_command_type_is_refused() {
        let mut value = transfer_json();
        value["type"] = json!("transfer.teleported");
        assert!(serde_json::from_value::<Command>(value).is_err());
    }

    #[test]
    fn an_unknown_version_is_refused_with_a_clear_reason() {
        let mut value = transfer_json();
        value["version"] = json!(2);
        let error = serde_json::from_value::<Command>(value).expect_err("version 2").to_string();
        assert!(error.contains("unsupported message version 2"), "{error}");
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let mut value = transfer_json();
        value["note"] = json!("hello");
        assert!(serde_json::from_value::<Command>(value).is_err());
    }

    #[test]
    fn a_command_with_invalid_money_is_refused() {
        let mut value = transfer_json();
        value["money"] = json!({"amount": "-5.00", "currency": "EUR"});
        assert!(serde_json::from_value::<Command>(value).is_err());
    }

    #[test]
    fn every_rejection_reason_serializes_as_its_code() {
        for reason in RejectionReason::ALL {
            let json = serde_json::to_value(reason).expect("serializes");
            assert_eq!(json, json!(reason.code()));
            assert_eq!(RejectionReason::from_code(reason.code()), Some(*reason));
        }
    }
}
