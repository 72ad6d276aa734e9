//! The rows the engine reads and writes, as plain values: a transfer
//! (`transfers`), an account command (`account_commands`), where their
//! command sat in Kafka, and the [`Changes`] a batch hands to the writer.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{PaymentRequested, SpendingLimit, TransferKind};
use schemas::{AccountId, Command, Event, Metadata, Money, Reference, RejectionReason, ReversalReason, TransferId};
use uuid::Uuid;

use super::settlement_kind;
use crate::decide::{AccountState, Entry};

/// Where a message sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The broker's append time of the message, when the topic records it
    /// (`message.timestamp.type=LogAppendTime`): the time of the log that
    /// hold expiry is decided against (see [`Engine::apply`](super::Engine::apply)).
    pub timestamp: Option<DateTime<Utc>>,
}

/// The state of a transfer row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStatus {
    Completed,
    Rejected,
    /// A pending hold.
    Held,
    Posted,
    Voided,
    Expired,
}

impl TransferStatus {
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            TransferStatus::Completed => "completed",
            TransferStatus::Rejected => "rejected",
            TransferStatus::Held => "held",
            TransferStatus::Posted => "posted",
            TransferStatus::Voided => "voided",
            TransferStatus::Expired => "expired",
        }
    }

    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Completed, Self::Rejected, Self::Held, Self::Posted, Self::Voided, Self::Expired]
            .into_iter()
            .find(|status| status.code() == code)
    }
}

/// A row of `transfers`, as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: TransferId,
    pub kind: TransferKind,
    pub status: TransferStatus,
    pub rejection_reason: Option<RejectionReason>,
    pub source_account_id: Option<AccountId>,
    pub destination_account_id: Option<AccountId>,
    pub money: Option<Money>,
    pub related_transfer_id: Option<TransferId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub settled_amount: Option<Decimal>,
    pub requested_at: DateTime<Utc>,
    /// See [`fingerprint`](super::fingerprint).
    pub fingerprint: Vec<u8>,
    /// Where the command came from; `None` for rows loaded from the database.
    pub position: Option<Position>,
    /// Whether a completed reversal of this transfer exists.
    pub reversed: bool,
    /// What the requester attached: a bank reference and metadata (a
    /// batch's legs carry the batch's).
    pub reference: Option<Reference>,
    pub metadata: Option<Metadata>,
    /// Why a reversal corrects its original.
    pub reversal_reason: Option<ReversalReason>,
    /// For a refused batch, the leg that caused it.
    pub rejected_leg: Option<u16>,
    /// For `limit_exceeded`, which limit.
    pub exceeded_limit: Option<SpendingLimit>,
}

impl TransferRecord {
    /// The source, the destination and the money of a record that moves
    /// money (or holds it). A record without them names accounts the ledger
    /// could not resolve: refused as `unknown_account`.
    pub(super) fn legs(&self) -> Result<(AccountId, AccountId, Money), RejectionReason> {
        match (self.source_account_id, self.destination_account_id, self.money) {
            (Some(source), Some(destination), Some(money)) => Ok((source, destination, money)),
            _ => Err(RejectionReason::UnknownAccount),
        }
    }

    /// The row of a transfer-like `command` (any command but an account
    /// command), before it is decided: what the command says about itself.
    /// A command that settles or corrects another transfer takes its
    /// accounts and money from that transfer's row when it is decided.
    pub(super) fn of_command(command: &Command, now: DateTime<Utc>, fingerprint: Vec<u8>, position: &Position) -> Self {
        let mut record = Self::blank(TransferId::from_uuid(command.id()), now, fingerprint, position);
        match command {
            Command::TransferRequested(request) => {
                record.describe(
                    TransferKind::Transfer,
                    request.requested_at,
                    request.source_account_id,
                    request.destination_account_id,
                    request.money,
                );
                record.annotate(request.reference.as_ref(), request.metadata.as_ref());
            }
            Command::AccountDeposited(deposit) => record.describe(
                TransferKind::Deposit,
                deposit.requested_at,
                AccountId::cash_in(deposit.money.currency()),
                deposit.account_id,
                deposit.money,
            ),
            Command::TransferHold(hold) => {
                record.describe(
                    TransferKind::Hold,
                    hold.requested_at,
                    hold.source_account_id,
                    hold.destination_account_id,
                    hold.money,
                );
                record.status = TransferStatus::Held;
                record.expires_at = Some(hold.expires_at);
                record.annotate(hold.reference.as_ref(), hold.metadata.as_ref());
            }
            Command::TransferPost(post) => record.settles(TransferKind::Post, post.requested_at, post.hold_id),
            Command::TransferVoid(void) => record.settles(TransferKind::Void, void.requested_at, void.hold_id),
            Command::PayoutOutcome(outcome) => {
                record.settles(settlement_kind(outcome.result), outcome.requested_at, outcome.payment_id);
            }
            Command::TransferReverse(reverse) => {
                record.settles(TransferKind::Reversal, reverse.requested_at, reverse.original_transfer_id);
                record.reversal_reason.clone_from(&reverse.reason);
            }
            Command::TransferBatch(batch) => {
                // The batch's own row names no single movement: its legs,
                // rows of their own, do.
                record.kind = TransferKind::Batch;
                record.requested_at = batch.requested_at;
                record.annotate(batch.reference.as_ref(), batch.metadata.as_ref());
            }
            Command::TransferExternal(payout) => {
                record.describe(
                    TransferKind::Payout,
                    payout.requested_at,
                    payout.source_account_id,
                    AccountId::external_clearing(payout.money.currency()),
                    payout.money,
                );
                record.status = TransferStatus::Held;
            }
            Command::AccountFrozen(_)
            | Command::AccountUnfrozen(_)
            | Command::AccountClosed(_)
            | Command::AccountOverdraftLimitSet(_)
            | Command::AccountSpendingLimitsSet(_) => unreachable!("an account command has no transfer row"),
        }
        record
    }

    /// A completed transfer `id` that says nothing yet.
    fn blank(id: TransferId, now: DateTime<Utc>, fingerprint: Vec<u8>, position: &Position) -> Self {
        TransferRecord {
            id,
            kind: TransferKind::Transfer,
            status: TransferStatus::Completed,
            rejection_reason: None,
            source_account_id: None,
            destination_account_id: None,
            money: None,
            related_transfer_id: None,
            expires_at: None,
            settled_amount: None,
            requested_at: now,
            fingerprint,
            position: Some(position.clone()),
            reversed: false,
            reference: None,
            metadata: None,
            reversal_reason: None,
            rejected_leg: None,
            exceeded_limit: None,
        }
    }

    /// Keeps what the requester attached.
    fn annotate(&mut self, reference: Option<&Reference>, metadata: Option<&Metadata>) {
        self.reference = reference.cloned();
        self.metadata = metadata.cloned();
    }

    /// Leg `index` of the batch `batch`, moving `money` from `source` to
    /// `destination`: a transfer of its own, related to the batch, carrying
    /// the batch's annotations, fingerprint and position.
    pub(super) fn leg_of(batch: &Self, index: usize, source: AccountId, destination: AccountId, money: Money) -> Self {
        let mut leg = batch.clone();
        leg.id = schemas::messages::TransferBatch::leg_id(batch.id, index);
        leg.kind = TransferKind::Transfer;
        leg.status = TransferStatus::Completed;
        leg.source_account_id = Some(source);
        leg.destination_account_id = Some(destination);
        leg.money = Some(money);
        leg.related_transfer_id = Some(batch.id);
        leg
    }

    /// Fills in what a movement-like command says about itself.
    fn describe(
        &mut self,
        kind: TransferKind,
        requested_at: DateTime<Utc>,
        source: AccountId,
        destination: AccountId,
        money: Money,
    ) {
        self.kind = kind;
        self.requested_at = requested_at;
        self.source_account_id = Some(source);
        self.destination_account_id = Some(destination);
        self.money = Some(money);
    }

    /// Fills in what a command that settles or corrects the transfer
    /// `related` says about itself.
    fn settles(&mut self, kind: TransferKind, requested_at: DateTime<Utc>, related: TransferId) {
        self.kind = kind;
        self.requested_at = requested_at;
        self.related_transfer_id = Some(related);
    }
}

/// A row of `account_commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCommandRecord {
    pub id: Uuid,
    pub account_id: AccountId,
    pub command_type: &'static str,
    pub rejection_reason: Option<RejectionReason>,
    /// See [`fingerprint`](super::fingerprint).
    pub fingerprint: Vec<u8>,
    pub requested_at: DateTime<Utc>,
    pub position: Position,
}

/// Everything a batch changes, to be written in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// New rows of `transfers`, in their final state.
    pub new_transfers: Vec<TransferRecord>,
    /// Existing holds whose status changed: (id, status, settled amount).
    pub settled_holds: Vec<(TransferId, TransferStatus, Option<Decimal>)>,
    pub entries: Vec<(TransferId, Entry)>,
    /// Accounts whose balance, held amount, status or limit changed, final state.
    pub accounts: Vec<AccountState>,
    pub account_commands: Vec<AccountCommandRecord>,
    pub events: Vec<Event>,
    /// Payouts whose funds are held, for the relay to order from the
    /// payment provider (the outbox's `payments` destination).
    pub payments: Vec<PaymentRequested>,
}

impl Changes {
    /// Whether `other` writes the same rows as these changes before the
    /// accounts are locked: the same rows of `transfers` (statuses,
    /// reasons, amounts), settled holds, account commands, events and
    /// payment orders, in the same order. Entries and account states are
    /// not compared: they are written under the locks, from the decision on
    /// the locked read. Events carry no balance, so the same decisions mean
    /// the same outbox rows.
    ///
    /// This is what lets a batch decided before locking its accounts keep
    /// the rows it wrote when the locked read finds that another batch moved
    /// one of them meanwhile (see `crate::ledger`).
    #[must_use]
    pub fn decides_as(&self, other: &Changes) -> bool {
        self.new_transfers == other.new_transfers
            && self.settled_holds == other.settled_holds
            && self.account_commands == other.account_commands
            && self.events == other.events
            && self.payments == other.payments
    }
}
