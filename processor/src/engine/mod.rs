//! The in-memory ledger engine of one batch: it takes the locked accounts and
//! the known transfers, applies the batch's commands one after another in
//! partition order, and collects every change to write back with set-based
//! statements. No I/O here, so the rules are tested without a database and
//! against a simple model.
//!
//! - `records`: the rows the engine reads and writes, and the batch's
//!   [`Changes`];
//! - `plan`: what a command needs before it is decided (its accounts, the
//!   transfers it refers to, whether an unlocked read will do) and how its
//!   redelivery is recognised ([`canonical_form`], [`fingerprint`]);
//! - `holds`: holds made, posted, voided and expired;
//! - `movements`: transfers, deposits, reversals, payouts, batches;
//! - `accounts`: account commands.
//!
//! This module holds the [`Engine`] and [`Engine::apply`], which sends each
//! command to the rules that decide it and keeps what they decided.

mod accounts;
mod holds;
mod movements;
mod plan;
mod records;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use schemas::messages::{CommandIdReused, PayoutResult, SpendingLimit, TransferKind, TransferRejected, V1};
use schemas::{AccountId, Command, Event, RejectionReason, TransferId};
use uuid::Uuid;

pub(crate) use plan::is_account_command;
pub use plan::{canonical_form, fingerprint};
pub use records::{AccountCommandRecord, Changes, Position, TransferRecord, TransferStatus};

use crate::decide::AccountState;

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected(RejectionReason),
    /// The same command was decided before (a redelivery); nothing changed.
    AlreadyDecided,
}

/// Why a command is refused: its stable reason, and for a batch the leg
/// that caused it, for `limit_exceeded` the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: RejectionReason,
    pub(crate) leg: Option<u16>,
    pub(crate) limit: Option<SpendingLimit>,
}

impl From<RejectionReason> for Refusal {
    fn from(reason: RejectionReason) -> Self {
        Self { reason, leg: None, limit: None }
    }
}

impl From<SpendingLimit> for Refusal {
    fn from(limit: SpendingLimit) -> Self {
        Self { reason: RejectionReason::LimitExceeded, leg: None, limit: Some(limit) }
    }
}

/// The batch's view of the ledger.
#[derive(Debug)]
pub struct Engine {
    now: DateTime<Utc>,
    /// The time of the command being applied, in the log's terms: the
    /// broker's append time when the topic records it (else `now`), never
    /// later than `now`.
    log_time: DateTime<Utc>,
    /// The payout outcomes the relay or a provider callback recorded, for
    /// the payouts the batch settles.
    recorded_outcomes: HashSet<(TransferId, PayoutResult)>,
    accounts: HashMap<AccountId, AccountState>,
    initial_accounts: HashMap<AccountId, AccountState>,
    transfers: HashMap<TransferId, TransferRecord>,
    new_transfer_order: Vec<TransferId>,
    settled_holds: Vec<TransferId>,
    account_commands: HashMap<Uuid, Vec<u8>>,
    changes: Changes,
}

/// What a payout's settlement is in the ledger: the post of its hold, or
/// its release.
fn settlement_kind(result: PayoutResult) -> TransferKind {
    match result {
        PayoutResult::Settled => TransferKind::Post,
        PayoutResult::Rejected => TransferKind::Void,
    }
}

/// Whether a refusal is stored under the command's id, deciding it for
/// good. Refusals that say "not from the payment provider" are told by
/// their event only: a payout's settlement ids are derived from the payout
/// (anyone can compute them), so a forged or premature `payout.outcome`, or
/// a `transfer.post`/`transfer.void` of a payout under such an id (a relay
/// of a version before `payout.outcome`), must not take the id the
/// provider's real outcome will come under.
fn refusal_is_kept(command: &Command, reason: RejectionReason) -> bool {
    !matches!(
        (command, reason),
        (Command::PayoutOutcome(_), RejectionReason::PayoutOutcomeNotRecorded | RejectionReason::HoldNotFound)
            | (Command::TransferPost(_) | Command::TransferVoid(_), RejectionReason::PayoutSettledByProviderOnly)
    )
}

impl Engine {
    /// An engine over the locked `accounts` and the `transfers` the batch
    /// refers to (its own ids, holds, originals), with `account_commands`
    /// the fingerprints of account commands already decided.
    #[must_use]
    pub fn new(
        now: DateTime<Utc>,
        accounts: Vec<AccountState>,
        transfers: Vec<TransferRecord>,
        account_commands: HashMap<Uuid, Vec<u8>>,
    ) -> Self {
        let accounts: HashMap<AccountId, AccountState> =
            accounts.into_iter().map(|account| (account.id, account)).collect();
        Self {
            now,
            log_time: now,
            recorded_outcomes: HashSet::new(),
            initial_accounts: accounts.clone(),
            accounts,
            transfers: transfers.into_iter().map(|transfer| (transfer.id, transfer)).collect(),
            new_transfer_order: Vec::new(),
            settled_holds: Vec::new(),
            account_commands,
            changes: Changes::default(),
        }
    }

    /// The payout outcomes recorded in `payout_outcomes` for the payouts
    /// the batch's `payout.outcome` commands name.
    #[must_use]
    pub fn with_recorded_outcomes(mut self, outcomes: impl IntoIterator<Item = (TransferId, PayoutResult)>) -> Self {
        self.recorded_outcomes.extend(outcomes);
        self
    }

    /// Applies one command.
    ///
    /// Whether a hold has expired is decided against the command's own time
    /// in the log (the broker's `LogAppendTime`), not the time the processor
    /// gets to it: a post accepted before the hold's expiry is applied even
    /// when a backlog is applied an hour later. A producer's own timestamp
    /// (`CreateTime`) or `requested_at` is never trusted for it: a producer
    /// could backdate a post past an expiry.
    pub fn apply(&mut self, command: &Command, position: &Position) -> Outcome {
        self.log_time = position.timestamp.unwrap_or(self.now).min(self.now);
        let canonical = canonical_form(command);
        let fingerprint = fingerprint(&canonical);
        if is_account_command(command) {
            return self.apply_account_command(command, &canonical, fingerprint, position);
        }
        if let Some(previous) = self.transfers.get(&TransferId::from_uuid(command.id())) {
            if previous.fingerprint == fingerprint {
                return Outcome::AlreadyDecided;
            }
            // The row belongs to the first request; the refusal of this one
            // is told through the outbox only, under an id of its own.
            let event = self.id_reused_event(command, &canonical, previous.source_account_id);
            self.changes.events.push(event);
            return Outcome::Rejected(RejectionReason::IdempotencyKeyReused);
        }
        let mut record = TransferRecord::of_command(command, self.now, fingerprint, position);
        let outcome = match self.decide_transfer(&mut record, command) {
            Ok(()) => Outcome::Applied,
            Err(refusal) => {
                let reason = refusal.reason;
                record.status = TransferStatus::Rejected;
                record.rejection_reason = Some(reason);
                record.rejected_leg = refusal.leg;
                record.exceeded_limit = refusal.limit;
                let event = self.rejected_event(command, refusal);
                self.changes.events.push(event);
                if !refusal_is_kept(command, reason) {
                    // Told, not stored (see `refusal_is_kept`).
                    return Outcome::Rejected(reason);
                }
                Outcome::Rejected(reason)
            }
        };
        self.new_transfer_order.push(record.id);
        self.transfers.insert(record.id, record);
        outcome
    }

    /// Decides a transfer-like command by the rules of its kind, filling in
    /// `record` with what it settles or corrects.
    fn decide_transfer(&mut self, record: &mut TransferRecord, command: &Command) -> Result<(), Refusal> {
        match command {
            Command::TransferRequested(_) | Command::AccountDeposited(_) => self.movement(record),
            Command::TransferHold(_) => self.hold(record),
            Command::TransferPost(post) => Ok(self.post(record, post.source_account_id, post.money)?),
            Command::TransferVoid(void) => Ok(self.void(record, void.source_account_id)?),
            Command::PayoutOutcome(outcome) => Ok(self.settle_payout(record, outcome)?),
            Command::TransferReverse(_) => self.reverse(record),
            Command::TransferExternal(payout) => self.payout(record, payout),
            Command::TransferBatch(batch) => self.batch(record, batch),
            Command::AccountFrozen(_)
            | Command::AccountUnfrozen(_)
            | Command::AccountClosed(_)
            | Command::AccountOverdraftLimitSet(_)
            | Command::AccountSpendingLimitsSet(_) => unreachable!("account commands are applied on their own"),
        }
    }

    /// The refusal of a command that reused an earlier command's id. It is
    /// not told as that id's rejection (consumers would take the earlier,
    /// decided command for rejected) but under an id derived from the reused
    /// id and this command's content.
    /// `canonical` is the reusing command's [`canonical_form`]: the
    /// conflict id is derived from it, as it always was.
    fn id_reused_event(&self, command: &Command, canonical: &str, account_id: Option<AccountId>) -> Event {
        let reused_id = command.id();
        Event::CommandIdReused(CommandIdReused {
            version: V1,
            conflict_id: Uuid::new_v5(&reused_id, canonical.as_bytes()),
            reused_id,
            command_type: command.type_name().to_owned(),
            account_id,
            reason: RejectionReason::IdempotencyKeyReused,
            rejected_at: self.now,
        })
    }

    fn rejected_event(&self, command: &Command, refusal: Refusal) -> Event {
        let (kind, source, destination, money) = match command {
            Command::TransferRequested(c) => {
                (TransferKind::Transfer, Some(c.source_account_id), Some(c.destination_account_id), Some(c.money))
            }
            Command::AccountDeposited(c) => {
                (TransferKind::Deposit, Some(AccountId::cash_in(c.money.currency())), Some(c.account_id), Some(c.money))
            }
            Command::TransferHold(c) => {
                (TransferKind::Hold, Some(c.source_account_id), Some(c.destination_account_id), Some(c.money))
            }
            Command::TransferPost(c) => (TransferKind::Post, Some(c.source_account_id), None, c.money),
            Command::TransferVoid(c) => (TransferKind::Void, Some(c.source_account_id), None, None),
            Command::TransferReverse(_) => (TransferKind::Reversal, None, None, None),
            Command::PayoutOutcome(c) => (settlement_kind(c.result), Some(c.source_account_id), None, None),
            Command::TransferExternal(c) => (
                TransferKind::Payout,
                Some(c.source_account_id),
                Some(AccountId::external_clearing(c.money.currency())),
                Some(c.money),
            ),
            // The leg that caused the refusal, when one did.
            Command::TransferBatch(c) => match refusal.leg.and_then(|leg| c.legs.get(usize::from(leg))) {
                Some(leg) => (
                    TransferKind::Batch,
                    Some(leg.source_account_id),
                    Some(leg.destination_account_id),
                    Some(leg.money),
                ),
                None => (TransferKind::Batch, None, None, None),
            },
            _ => (TransferKind::Transfer, None, None, None),
        };
        Event::TransferRejected(TransferRejected {
            version: V1,
            transfer_id: TransferId::from_uuid(command.id()),
            kind,
            reason: refusal.reason,
            source_account_id: source,
            destination_account_id: destination,
            money,
            leg: refusal.leg,
            limit: refusal.limit,
            rejected_at: self.now,
        })
    }

    /// The accounts as they stand now (for tests and the model).
    #[must_use]
    pub fn account(&self, id: AccountId) -> Option<&AccountState> {
        self.accounts.get(&id)
    }

    /// Ends the batch: everything to write.
    #[must_use]
    pub fn finish(mut self) -> Changes {
        let mut changed: Vec<AccountState> = self
            .accounts
            .values()
            .filter(|account| self.initial_accounts.get(&account.id) != Some(*account))
            .cloned()
            .collect();
        changed.sort_by_key(|account| account.id);
        self.changes.accounts = changed;
        let mut seen = HashSet::new();
        self.changes.new_transfers = self
            .new_transfer_order
            .iter()
            .filter(|id| seen.insert(**id))
            .filter_map(|id| self.transfers.get(id).cloned())
            .collect();
        self.changes.settled_holds = self
            .settled_holds
            .iter()
            .filter_map(|id| self.transfers.get(id))
            .map(|hold| (hold.id, hold.status, hold.settled_amount))
            .collect();
        self.changes
    }
}
