//! The in-memory ledger engine of one batch: it takes the locked accounts and
//! the known transfers, applies the batch's commands one after another in
//! partition order, and collects every change to write back with set-based
//! statements. No I/O here, so the rules are tested without a database and
//! against a simple model.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{
    AccountCommandRejected, AccountOverdraftLimitChanged, AccountStatus, AccountStatusChanged, CommandIdReused,
    PaymentRequested, PayoutOutcome, PayoutOutcomeConflicted, PayoutResult, TransferCompleted, TransferHeld,
    TransferKind, TransferRejected, TransferVoided, V1, VoidReason,
};
use schemas::{AccountId, Command, Event, Money, RejectionReason, TransferId};
use uuid::Uuid;

use crate::decide::{self, AccountState, Entry};

/// Where a message sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The broker's append time of the message, when the topic records it
    /// (`message.timestamp.type=LogAppendTime`): the time of the log that
    /// hold expiry is decided against (see [`Engine::apply`]).
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
    /// See [`fingerprint`].
    pub fingerprint: Vec<u8>,
    /// Where the command came from; `None` for rows loaded from the database.
    pub position: Option<Position>,
    /// Whether a completed reversal of this transfer exists.
    pub reversed: bool,
}

impl TransferRecord {
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
}

/// A row of `account_commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCommandRecord {
    pub id: Uuid,
    pub account_id: AccountId,
    pub command_type: &'static str,
    pub rejection_reason: Option<RejectionReason>,
    /// See [`fingerprint`].
    pub fingerprint: Vec<u8>,
    pub requested_at: DateTime<Utc>,
    pub position: Position,
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected(RejectionReason),
    /// The same command was decided before (a redelivery); nothing changed.
    AlreadyDecided,
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

/// The canonical form of a command for duplicate detection: its JSON
/// without `version` and `requested_at` (a retried HTTP request gets a new
/// timestamp), keys sorted.
#[must_use]
pub fn canonical_form(command: &Command) -> String {
    let mut value = serde_json::to_value(command).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("version");
        object.remove("requested_at");
    }
    value.to_string()
}

/// What a decided command's row keeps to recognise its redelivery: the
/// SHA-256 of its [`canonical_form`]. 32 bytes, whatever the command says
/// (a payout's creditor name and IBAN stay out of the ledger's rows), and
/// the same for the same command in any process or version that keeps the
/// canonical form.
#[must_use]
pub fn fingerprint(canonical: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(canonical.as_bytes()).to_vec()
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

    /// The account ids a command may touch, given the transfers it refers
    /// to (so they can be locked before the engine runs).
    #[must_use]
    pub fn accounts_of(command: &Command, referenced: &HashMap<TransferId, TransferRecord>) -> Vec<AccountId> {
        let from_record = |id: &TransferId| {
            referenced
                .get(id)
                .map(|record| [record.source_account_id, record.destination_account_id])
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        };
        match command {
            Command::TransferRequested(request) => vec![request.source_account_id, request.destination_account_id],
            Command::AccountDeposited(deposit) => {
                vec![AccountId::cash_in(deposit.money.currency()), deposit.account_id]
            }
            Command::TransferHold(hold) => vec![hold.source_account_id, hold.destination_account_id],
            Command::TransferPost(post) => {
                let mut ids = from_record(&post.hold_id);
                ids.push(post.source_account_id);
                ids
            }
            Command::TransferVoid(void) => {
                let mut ids = from_record(&void.hold_id);
                ids.push(void.source_account_id);
                ids
            }
            Command::TransferReverse(reverse) => from_record(&reverse.original_transfer_id),
            Command::AccountFrozen(command) | Command::AccountUnfrozen(command) | Command::AccountClosed(command) => {
                vec![command.account_id]
            }
            Command::AccountOverdraftLimitSet(command) => vec![command.account_id],
            Command::TransferExternal(payout) => {
                vec![payout.source_account_id, AccountId::external_clearing(payout.money.currency())]
            }
            Command::PayoutOutcome(outcome) => {
                let mut ids = from_record(&outcome.payment_id);
                ids.push(outcome.source_account_id);
                ids
            }
        }
    }

    /// Whether a command can be decided on an unlocked read of its
    /// accounts, checked against the locked read before its batch commits
    /// (`crate::ledger::apply_batch`). It must depend on nothing but those
    /// accounts and its own id: no hold, original transfer, account command
    /// or recorded payout outcome, whose rows an unlocked read could see
    /// before another batch changes them.
    #[must_use]
    pub fn decidable_before_locking(command: &Command) -> bool {
        matches!(
            command,
            Command::TransferRequested(_)
                | Command::AccountDeposited(_)
                | Command::TransferHold(_)
                | Command::TransferExternal(_)
        )
    }

    /// The transfer ids a command refers to besides its own.
    #[must_use]
    pub fn referenced_transfers(command: &Command) -> Vec<TransferId> {
        match command {
            Command::TransferPost(post) => vec![post.hold_id],
            Command::TransferVoid(void) => vec![void.hold_id],
            Command::TransferReverse(reverse) => vec![reverse.original_transfer_id],
            Command::PayoutOutcome(outcome) => vec![outcome.payment_id],
            _ => Vec::new(),
        }
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
        match command {
            Command::AccountFrozen(_)
            | Command::AccountUnfrozen(_)
            | Command::AccountClosed(_)
            | Command::AccountOverdraftLimitSet(_) => {
                return self.apply_account_command(command, &canonical, fingerprint, position);
            }
            _ => {}
        }
        let transfer_id = TransferId::from_uuid(command.id());
        if let Some(previous) = self.transfers.get(&transfer_id) {
            if previous.fingerprint == fingerprint {
                return Outcome::AlreadyDecided;
            }
            // The row belongs to the first request; the refusal of this one
            // is told through the outbox only, under an id of its own.
            let account_id = previous.source_account_id;
            let event = self.id_reused_event(command, &canonical, account_id);
            self.changes.events.push(event);
            return Outcome::Rejected(RejectionReason::IdempotencyKeyReused);
        }
        let mut record = TransferRecord {
            id: transfer_id,
            kind: TransferKind::Transfer,
            status: TransferStatus::Completed,
            rejection_reason: None,
            source_account_id: None,
            destination_account_id: None,
            money: None,
            related_transfer_id: None,
            expires_at: None,
            settled_amount: None,
            requested_at: self.now,
            fingerprint,
            position: Some(position.clone()),
            reversed: false,
        };
        let result = match command {
            Command::TransferRequested(request) => {
                record.describe(
                    TransferKind::Transfer,
                    request.requested_at,
                    request.source_account_id,
                    request.destination_account_id,
                    request.money,
                );
                self.movement(&record)
            }
            Command::AccountDeposited(deposit) => {
                record.describe(
                    TransferKind::Deposit,
                    deposit.requested_at,
                    AccountId::cash_in(deposit.money.currency()),
                    deposit.account_id,
                    deposit.money,
                );
                self.movement(&record)
            }
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
                self.hold(&record)
            }
            Command::TransferPost(post) => {
                record.kind = TransferKind::Post;
                record.requested_at = post.requested_at;
                record.related_transfer_id = Some(post.hold_id);
                self.post(&mut record, post.source_account_id, post.money)
            }
            Command::TransferVoid(void) => {
                record.kind = TransferKind::Void;
                record.requested_at = void.requested_at;
                record.related_transfer_id = Some(void.hold_id);
                self.void(&mut record, void.source_account_id)
            }
            Command::PayoutOutcome(outcome) => {
                record.kind = settlement_kind(outcome.result);
                record.requested_at = outcome.requested_at;
                record.related_transfer_id = Some(outcome.payment_id);
                self.settle_payout(&mut record, outcome)
            }
            Command::TransferReverse(reverse) => {
                record.kind = TransferKind::Reversal;
                record.requested_at = reverse.requested_at;
                record.related_transfer_id = Some(reverse.original_transfer_id);
                self.reverse(&mut record)
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
                let held = self.hold(&record);
                if held.is_ok() {
                    // Asked of the provider only once the funds are safe.
                    self.changes.payments.push(PaymentRequested {
                        version: V1,
                        payment_id: record.id,
                        source_account_id: payout.source_account_id,
                        money: payout.money,
                        creditor: payout.creditor.clone(),
                        remittance_information: payout.remittance_information.clone(),
                        requested_at: payout.requested_at,
                    });
                }
                held
            }
            Command::AccountFrozen(_)
            | Command::AccountUnfrozen(_)
            | Command::AccountClosed(_)
            | Command::AccountOverdraftLimitSet(_) => unreachable!("handled above"),
        };
        let outcome = match result {
            Ok(()) => Outcome::Applied,
            Err(reason) => {
                record.status = TransferStatus::Rejected;
                record.rejection_reason = Some(reason);
                let event = self.rejected_event(command, reason);
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

    fn movement(&mut self, record: &TransferRecord) -> Result<(), RejectionReason> {
        let (Some(source_id), Some(destination_id), Some(money)) =
            (record.source_account_id, record.destination_account_id, record.money)
        else {
            return Err(RejectionReason::UnknownAccount);
        };
        let entries = decide::decide_movement(
            money,
            source_id,
            destination_id,
            self.accounts.get(&source_id),
            self.accounts.get(&destination_id),
        )?;
        self.book(record.id, entries);
        self.changes.events.push(Event::TransferCompleted(TransferCompleted {
            version: V1,
            transfer_id: record.id,
            kind: record.kind,
            source_account_id: source_id,
            destination_account_id: destination_id,
            money,
            related_transfer_id: record.related_transfer_id,
            completed_at: self.now,
        }));
        Ok(())
    }

    /// Writes entries and moves the balances they describe.
    fn book(&mut self, transfer_id: TransferId, entries: [Entry; 2]) {
        decide::assert_balanced(&entries);
        for entry in entries {
            if let Some(account) = self.accounts.get_mut(&entry.account_id) {
                account.balance += entry.amount;
                debug_assert_eq!(account.balance, entry.balance_after);
            }
            self.changes.entries.push((transfer_id, entry));
        }
    }

    /// Reserves a hold's or a payout's funds on the source. A payout has no
    /// expiry.
    fn hold(&mut self, record: &TransferRecord) -> Result<(), RejectionReason> {
        let (Some(source_id), Some(destination_id), Some(money)) =
            (record.source_account_id, record.destination_account_id, record.money)
        else {
            return Err(RejectionReason::UnknownAccount);
        };
        let expires_at = record.expires_at;
        let (source, _) = decide::check_pair(
            money,
            source_id,
            destination_id,
            self.accounts.get(&source_id),
            self.accounts.get(&destination_id),
        )?;
        decide::check_funds(source, money.amount().value())?;
        if expires_at.is_some_and(|expires_at| expires_at <= self.log_time) {
            return Err(RejectionReason::HoldExpired);
        }
        if let Some(source) = self.accounts.get_mut(&source_id) {
            source.held += money.amount().value();
        }
        self.changes.events.push(Event::TransferHeld(TransferHeld {
            version: V1,
            transfer_id: record.id,
            kind: record.kind,
            source_account_id: source_id,
            destination_account_id: destination_id,
            money,
            expires_at,
            held_at: self.now,
        }));
        Ok(())
    }

    /// The pending hold `hold_id` of `source_account_id` that a
    /// `transfer.post` or `transfer.void` may settle, or why there is none.
    /// A payout's hold is settled by the provider's outcome only.
    fn pending_hold(
        &mut self,
        hold_id: TransferId,
        source_account_id: AccountId,
    ) -> Result<TransferRecord, RejectionReason> {
        let hold = self
            .transfers
            .get(&hold_id)
            .filter(|hold| {
                matches!(hold.kind, TransferKind::Hold | TransferKind::Payout)
                    && hold.source_account_id == Some(source_account_id)
            })
            .cloned()
            .ok_or(RejectionReason::HoldNotFound)?;
        if hold.kind == TransferKind::Payout {
            return Err(RejectionReason::PayoutSettledByProviderOnly);
        }
        match hold.status {
            TransferStatus::Held => {}
            TransferStatus::Rejected => return Err(RejectionReason::HoldNotFound),
            _ => return Err(RejectionReason::HoldAlreadySettled),
        }
        if hold.expires_at.is_some_and(|expires_at| expires_at <= self.log_time) {
            self.release(hold_id, TransferStatus::Expired, None);
            return Err(RejectionReason::HoldExpired);
        }
        Ok(hold)
    }

    /// Releases a pending hold's reservation and settles its row.
    fn release(&mut self, hold_id: TransferId, status: TransferStatus, void_id: Option<TransferId>) {
        let Some(hold) = self.transfers.get_mut(&hold_id) else { return };
        debug_assert_eq!(hold.status, TransferStatus::Held);
        hold.status = status;
        let (Some(source_id), Some(money)) = (hold.source_account_id, hold.money) else { return };
        if !self.new_transfer_order.contains(&hold_id) {
            self.settled_holds.push(hold_id);
        }
        if let Some(source) = self.accounts.get_mut(&source_id) {
            source.held -= money.amount().value();
            assert!(source.held >= Decimal::ZERO, "held below zero on {source_id}");
        }
        if status != TransferStatus::Posted {
            self.changes.events.push(Event::TransferVoided(TransferVoided {
                version: V1,
                hold_id,
                transfer_id: void_id,
                reason: if status == TransferStatus::Expired { VoidReason::Expired } else { VoidReason::Requested },
                source_account_id: source_id,
                money,
                voided_at: self.now,
            }));
        }
    }

    fn post(
        &mut self,
        record: &mut TransferRecord,
        source_account_id: AccountId,
        requested: Option<Money>,
    ) -> Result<(), RejectionReason> {
        let hold_id = record.related_transfer_id.ok_or(RejectionReason::HoldNotFound)?;
        let hold = self.pending_hold(hold_id, source_account_id)?;
        self.capture(record, &hold, requested)
    }

    /// Posts `requested` (the whole hold when `None`) of the pending `hold`
    /// to its destination and releases the rest.
    ///
    /// The source's status does not matter: the hold reserved the funds
    /// when it was made, so a freeze since (a fraud review, say) cannot
    /// stop money the provider already paid out from being debited. A
    /// closed source cannot have a pending hold (closing one with holds is
    /// refused). The destination must still be open to receive.
    fn capture(
        &mut self,
        record: &mut TransferRecord,
        hold: &TransferRecord,
        requested: Option<Money>,
    ) -> Result<(), RejectionReason> {
        let (Some(source_account_id), Some(destination_id), Some(hold_money)) =
            (hold.source_account_id, hold.destination_account_id, hold.money)
        else {
            return Err(RejectionReason::HoldNotFound);
        };
        let money = requested.unwrap_or(hold_money);
        record.source_account_id = Some(source_account_id);
        record.destination_account_id = Some(destination_id);
        record.money = Some(money);
        if money.currency() != hold_money.currency() {
            return Err(RejectionReason::CurrencyMismatch);
        }
        if money.amount() > hold_money.amount() {
            return Err(RejectionReason::AmountExceedsHold);
        }
        let destination = self.accounts.get(&destination_id).ok_or(RejectionReason::UnknownAccount)?;
        if destination.status == AccountStatus::Closed {
            return Err(RejectionReason::AccountClosed);
        }
        // Funds are not checked again: the hold reserved more than the post
        // takes, so releasing it first always covers the debit.
        self.release(hold.id, TransferStatus::Posted, None);
        if let Some(hold) = self.transfers.get_mut(&hold.id) {
            hold.settled_amount = Some(money.amount().value());
        }
        let (Some(source), Some(destination)) =
            (self.accounts.get(&source_account_id), self.accounts.get(&destination_id))
        else {
            return Err(RejectionReason::UnknownAccount);
        };
        let entries = decide::movement_entries(source, destination, money);
        self.book(record.id, entries);
        self.changes.events.push(Event::TransferCompleted(TransferCompleted {
            version: V1,
            transfer_id: record.id,
            kind: TransferKind::Post,
            source_account_id,
            destination_account_id: destination_id,
            money,
            related_transfer_id: Some(hold.id),
            completed_at: self.now,
        }));
        Ok(())
    }

    /// Settles a payout's hold with the provider's outcome: posted to
    /// external clearing when paid, released when refused. Only an outcome
    /// the relay or a provider callback recorded counts; an outcome that
    /// contradicts the payout's settlement is refused and raised as a
    /// conflict, the ledger left as it is.
    fn settle_payout(&mut self, record: &mut TransferRecord, outcome: &PayoutOutcome) -> Result<(), RejectionReason> {
        if !self.recorded_outcomes.contains(&(outcome.payment_id, outcome.result)) {
            return Err(RejectionReason::PayoutOutcomeNotRecorded);
        }
        let payout = self
            .transfers
            .get(&outcome.payment_id)
            .filter(|payout| {
                payout.kind == TransferKind::Payout && payout.source_account_id == Some(outcome.source_account_id)
            })
            .cloned()
            .ok_or(RejectionReason::HoldNotFound)?;
        record.source_account_id = payout.source_account_id;
        record.destination_account_id = payout.destination_account_id;
        record.money = payout.money;
        match (payout.status, outcome.result) {
            (TransferStatus::Held, PayoutResult::Settled) => self.capture(record, &payout, None),
            (TransferStatus::Held, PayoutResult::Rejected) => {
                self.release(payout.id, TransferStatus::Voided, Some(record.id));
                Ok(())
            }
            (TransferStatus::Posted, PayoutResult::Rejected) | (TransferStatus::Voided, PayoutResult::Settled) => {
                if let (Some(source_account_id), Some(money)) = (payout.source_account_id, payout.money) {
                    self.changes.events.push(Event::PayoutOutcomeConflicted(PayoutOutcomeConflicted {
                        version: V1,
                        payment_id: payout.id,
                        source_account_id,
                        money,
                        settled_as: if payout.status == TransferStatus::Posted {
                            PayoutResult::Settled
                        } else {
                            PayoutResult::Rejected
                        },
                        reported: outcome.result,
                        detected_at: self.now,
                    }));
                }
                Err(RejectionReason::PayoutOutcomeConflict)
            }
            (TransferStatus::Rejected, _) => Err(RejectionReason::HoldNotFound),
            _ => Err(RejectionReason::HoldAlreadySettled),
        }
    }

    fn void(&mut self, record: &mut TransferRecord, source_account_id: AccountId) -> Result<(), RejectionReason> {
        let hold_id = record.related_transfer_id.ok_or(RejectionReason::HoldNotFound)?;
        let hold = self.pending_hold(hold_id, source_account_id)?;
        record.source_account_id = hold.source_account_id;
        record.destination_account_id = hold.destination_account_id;
        record.money = hold.money;
        self.release(hold_id, TransferStatus::Voided, Some(record.id));
        Ok(())
    }

    fn reverse(&mut self, record: &mut TransferRecord) -> Result<(), RejectionReason> {
        let original_id = record.related_transfer_id.ok_or(RejectionReason::TransferNotFound)?;
        let original = self.transfers.get(&original_id).cloned().ok_or(RejectionReason::TransferNotFound)?;
        let reversible = matches!(original.kind, TransferKind::Transfer | TransferKind::Deposit | TransferKind::Post)
            && original.status == TransferStatus::Completed;
        if !reversible {
            return Err(RejectionReason::TransferNotReversible);
        }
        if original.reversed {
            return Err(RejectionReason::AlreadyReversed);
        }
        // Money posted to external clearing has left the bank: the provider
        // paid it out. Giving it back is a new payment the other way, not a
        // debit of the clearing account (which has no funds check).
        if original
            .money
            .zip(original.destination_account_id)
            .is_some_and(|(money, destination)| destination == AccountId::external_clearing(money.currency()))
        {
            return Err(RejectionReason::ReversalOfPayout);
        }
        // The correction runs the other way: the original's destination pays back.
        record.source_account_id = original.destination_account_id;
        record.destination_account_id = original.source_account_id;
        record.money = original.money;
        self.movement(record)?;
        if let Some(original) = self.transfers.get_mut(&original_id) {
            original.reversed = true;
        }
        Ok(())
    }

    fn apply_account_command(
        &mut self,
        command: &Command,
        canonical: &str,
        fingerprint: Vec<u8>,
        position: &Position,
    ) -> Outcome {
        let command_id = command.id();
        let (account_id, requested_at) = match command {
            Command::AccountFrozen(c) | Command::AccountUnfrozen(c) | Command::AccountClosed(c) => {
                (c.account_id, c.requested_at)
            }
            Command::AccountOverdraftLimitSet(c) => (c.account_id, c.requested_at),
            _ => unreachable!("only account commands come here"),
        };
        if let Some(previous) = self.account_commands.get(&command_id) {
            if *previous == fingerprint {
                return Outcome::AlreadyDecided;
            }
            // The row belongs to the first command; this one is refused
            // through the outbox only, under an id of its own.
            let event = self.id_reused_event(command, canonical, Some(account_id));
            self.changes.events.push(event);
            return Outcome::Rejected(RejectionReason::IdempotencyKeyReused);
        }
        let result = self.account_change(command, account_id);
        let outcome = match result {
            Ok(event) => {
                self.changes.events.push(event);
                Outcome::Applied
            }
            Err(reason) => {
                self.changes.events.push(Event::AccountCommandRejected(AccountCommandRejected {
                    version: V1,
                    command_id,
                    account_id,
                    command_type: command.type_name().to_owned(),
                    reason,
                    rejected_at: self.now,
                }));
                Outcome::Rejected(reason)
            }
        };
        self.account_commands.insert(command_id, fingerprint.clone());
        self.changes.account_commands.push(AccountCommandRecord {
            id: command_id,
            account_id,
            command_type: command.type_name(),
            rejection_reason: match outcome {
                Outcome::Rejected(reason) => Some(reason),
                _ => None,
            },
            fingerprint,
            requested_at,
            position: position.clone(),
        });
        outcome
    }

    fn account_change(&mut self, command: &Command, account_id: AccountId) -> Result<Event, RejectionReason> {
        let now = self.now;
        let account = self.accounts.get_mut(&account_id).ok_or(RejectionReason::UnknownAccount)?;
        if account.status == AccountStatus::Closed {
            return Err(RejectionReason::AccountClosed);
        }
        let status_changed = |command_id: Uuid, status: AccountStatus| {
            Event::AccountStatusChanged(AccountStatusChanged {
                version: V1,
                command_id,
                account_id,
                status,
                changed_at: now,
            })
        };
        match command {
            Command::AccountFrozen(c) => {
                if account.status == AccountStatus::Frozen {
                    return Err(RejectionReason::AccountFrozen);
                }
                account.status = AccountStatus::Frozen;
                Ok(status_changed(c.command_id, AccountStatus::Frozen))
            }
            Command::AccountUnfrozen(c) => {
                if account.status != AccountStatus::Frozen {
                    return Err(RejectionReason::AccountNotFrozen);
                }
                account.status = AccountStatus::Active;
                Ok(status_changed(c.command_id, AccountStatus::Active))
            }
            Command::AccountClosed(c) => {
                if !account.balance.is_zero() || !account.held.is_zero() {
                    return Err(RejectionReason::AccountNotEmpty);
                }
                account.status = AccountStatus::Closed;
                Ok(status_changed(c.command_id, AccountStatus::Closed))
            }
            Command::AccountOverdraftLimitSet(c) => {
                let limit = match c.overdraft_limit {
                    Some(money) if money.currency() != account.currency => {
                        return Err(RejectionReason::CurrencyMismatch);
                    }
                    Some(money) => money.amount().value(),
                    None => Decimal::ZERO,
                };
                // A limit below what the account already uses would leave it
                // overdrawn beyond its limit.
                if account.balance - account.held + limit < Decimal::ZERO {
                    return Err(RejectionReason::InsufficientFunds);
                }
                account.overdraft_limit = limit;
                Ok(Event::AccountOverdraftLimitChanged(AccountOverdraftLimitChanged {
                    version: V1,
                    command_id: c.command_id,
                    account_id,
                    overdraft_limit: c.overdraft_limit,
                    changed_at: now,
                }))
            }
            _ => unreachable!("only account commands come here"),
        }
    }

    /// Releases pending holds whose expiry has passed (found by the sweep).
    pub fn expire_holds(&mut self, hold_ids: &[TransferId]) -> usize {
        let mut expired = 0;
        for hold_id in hold_ids {
            let due = self.transfers.get(hold_id).is_some_and(|hold| {
                hold.kind == TransferKind::Hold
                    && hold.status == TransferStatus::Held
                    && hold.expires_at.is_some_and(|expires_at| expires_at <= self.now)
            });
            if due {
                self.release(*hold_id, TransferStatus::Expired, None);
                expired += 1;
            }
        }
        expired
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

    fn rejected_event(&self, command: &Command, reason: RejectionReason) -> Event {
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
            _ => (TransferKind::Transfer, None, None, None),
        };
        Event::TransferRejected(TransferRejected {
            version: V1,
            transfer_id: TransferId::from_uuid(command.id()),
            kind,
            reason,
            source_account_id: source,
            destination_account_id: destination,
            money,
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

#[cfg(test)]
mod tests {
    use schemas::Currency;
    use schemas::messages::{
        AccountOverdraftLimitSet, AccountStatusCommand, TransferHold, TransferPost, TransferRequested, TransferReverse,
        TransferVoid,
    };

    use super::*;
    use crate::decide::AccountKind;

    fn eur(amount: &str) -> Money {
        Money::parse(amount, Currency::EUR).expect("valid money")
    }

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    fn account(balance: &str) -> AccountState {
        AccountState {
            id: AccountId::new_random(),
            currency: Currency::EUR,
            kind: AccountKind::Customer,
            status: AccountStatus::Active,
            balance: dec(balance),
            held: Decimal::ZERO,
            overdraft_limit: Decimal::ZERO,
        }
    }

    fn position() -> Position {
        Position { topic: "ledger.commands".into(), partition: 0, offset: 0, timestamp: None }
    }

    struct Ledger {
        engine: Engine,
        alice: AccountId,
        bob: AccountId,
    }

    impl Ledger {
        fn new(alice_balance: &str) -> Self {
            let (alice, bob) = (account(alice_balance), account("0"));
            let (alice_id, bob_id) = (alice.id, bob.id);
            Self {
                engine: Engine::new(Utc::now(), vec![alice, bob], Vec::new(), HashMap::new()),
                alice: alice_id,
                bob: bob_id,
            }
        }

        fn apply(&mut self, command: &Command) -> Outcome {
            self.engine.apply(command, &position())
        }

        fn balance_and_held(&self, id: AccountId) -> (Decimal, Decimal) {
            let account = self.engine.account(id).expect("known account");
            (account.balance, account.held)
        }

        fn transfer(&self, amount: &str) -> Command {
            Command::TransferRequested(TransferRequested {
                version: V1,
                transfer_id: TransferId::from_uuid(Uuid::new_v4()),
                source_account_id: self.alice,
                destination_account_id: self.bob,
                money: eur(amount),
                requested_at: Utc::now(),
            })
        }

        fn hold(&self, amount: &str, expires_in: chrono::Duration) -> (TransferId, Command) {
            let id = TransferId::from_uuid(Uuid::new_v4());
            let command = Command::TransferHold(TransferHold {
                version: V1,
                transfer_id: id,
                source_account_id: self.alice,
                destination_account_id: self.bob,
                money: eur(amount),
                expires_at: Utc::now() + expires_in,
                requested_at: Utc::now(),
            });
            (id, command)
        }

        fn post(&self, hold_id: TransferId, amount: Option<&str>) -> Command {
            Command::TransferPost(TransferPost {
                version: V1,
                transfer_id: TransferId::from_uuid(Uuid::new_v4()),
                hold_id,
                source_account_id: self.alice,
                money: amount.map(eur),
                requested_at: Utc::now(),
            })
        }

        fn void(&self, hold_id: TransferId) -> Command {
            Command::TransferVoid(TransferVoid {
                version: V1,
                transfer_id: TransferId::from_uuid(Uuid::new_v4()),
                hold_id,
                source_account_id: self.alice,
                requested_at: Utc::now(),
            })
        }

        fn status(&self, account_id: AccountId, make: fn(AccountStatusCommand) -> Command) -> Command {
            make(AccountStatusCommand { version: V1, command_id: Uuid::new_v4(), account_id, requested_at: Utc::now() })
        }
    }

    fn reverse(original: TransferId) -> Command {
        Command::TransferReverse(TransferReverse {
            version: V1,
            transfer_id: TransferId::from_uuid(Uuid::new_v4()),
            original_transfer_id: original,
            requested_at: Utc::now(),
        })
    }

    /// The same commands decided on two reads of the same accounts.
    fn decided_on(accounts: &[AccountState], commands: &[Command], now: DateTime<Utc>) -> Changes {
        let mut engine = Engine::new(now, accounts.to_vec(), Vec::new(), HashMap::new());
        for command in commands {
            engine.apply(command, &position());
        }
        engine.finish()
    }

    #[test]
    fn decisions_on_reads_that_differ_in_balances_only_decide_alike_and_a_changed_outcome_does_not() {
        let now = Utc::now();
        let ledger = Ledger::new("50.00");
        let commands = [ledger.transfer("30.00"), ledger.transfer("15.00")];
        let read = [account("50.00"), account("0")];
        let (mut alice, mut bob) = (read[0].clone(), read[1].clone());
        let commands: Vec<Command> = commands
            .iter()
            .map(|command| match command {
                Command::TransferRequested(request) => Command::TransferRequested(TransferRequested {
                    source_account_id: alice.id,
                    destination_account_id: bob.id,
                    ..request.clone()
                }),
                other => other.clone(),
            })
            .collect();
        let first = decided_on(&read, &commands, now);

        // A credit to either account meanwhile: same decisions, other balances.
        bob.balance = dec("7.00");
        alice.balance = dec("60.00");
        let credited = decided_on(&[alice.clone(), bob.clone()], &commands, now);
        assert!(first.decides_as(&credited));
        assert_ne!(first.entries, credited.entries, "the balances after differ");

        // Less on the source: the second transfer is refused now.
        alice.balance = dec("40.00");
        let debited = decided_on(&[alice.clone(), bob.clone()], &commands, now);
        assert!(!first.decides_as(&debited));

        // Frozen meanwhile: nothing moves.
        alice.balance = dec("50.00");
        alice.status = AccountStatus::Frozen;
        assert!(!first.decides_as(&decided_on(&[alice, bob], &commands, now)));
    }

    #[test]
    fn a_redelivered_command_is_recognised_and_changes_nothing() {
        let mut ledger = Ledger::new("100.00");
        let transfer = ledger.transfer("10.00");
        assert_eq!(ledger.apply(&transfer), Outcome::Applied);
        assert_eq!(ledger.apply(&transfer), Outcome::AlreadyDecided);
        assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("90.00"));
    }

    #[test]
    fn a_hold_reserves_funds_that_are_then_not_available() {
        let mut ledger = Ledger::new("100.00");
        let (_, hold) = ledger.hold("80.00", chrono::Duration::minutes(5));
        assert_eq!(ledger.apply(&hold), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("80.00")));
        let too_much = ledger.transfer("30.00");
        assert_eq!(ledger.apply(&too_much), Outcome::Rejected(RejectionReason::InsufficientFunds));
    }

    #[test]
    fn a_partial_post_captures_part_and_releases_the_rest() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("80.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        assert_eq!(ledger.apply(&ledger.post(hold_id, Some("30.00"))), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("70.00"), dec("0")));
        assert_eq!(ledger.balance_and_held(ledger.bob).0, dec("30.00"));
        // A second post of the same hold is refused.
        assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
    }

    #[test]
    fn a_post_above_the_hold_is_refused_and_the_hold_stays() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("20.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        assert_eq!(
            ledger.apply(&ledger.post(hold_id, Some("20.01"))),
            Outcome::Rejected(RejectionReason::AmountExceedsHold)
        );
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("20.00")));
        assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("80.00"), dec("0")));
    }

    #[test]
    fn a_void_releases_the_hold_and_moves_nothing() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        assert_eq!(ledger.apply(&ledger.void(hold_id)), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("0")));
        assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
    }

    #[test]
    fn an_expired_hold_is_released_by_the_sweep_and_cannot_be_posted() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        // Later: the same hold, now past its expiry.
        let mut record = ledger.engine.transfers[&hold_id].clone();
        record.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        let alice = ledger.engine.account(ledger.alice).expect("alice").clone();
        let bob = ledger.engine.account(ledger.bob).expect("bob").clone();
        let mut later = Engine::new(Utc::now(), vec![alice, bob], vec![record], HashMap::new());
        assert_eq!(later.expire_holds(&[hold_id]), 1);
        assert_eq!(later.account(ledger.alice).expect("alice").held, Decimal::ZERO);
        let post = ledger.post(hold_id, None);
        assert_eq!(later.apply(&post, &position()), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
        let changes = later.finish();
        assert_eq!(changes.settled_holds, vec![(hold_id, TransferStatus::Expired, None)]);
    }

    #[test]
    fn a_hold_that_expires_before_the_post_is_released_by_the_post() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        ledger.engine.transfers.get_mut(&hold_id).expect("hold").expires_at =
            Some(Utc::now() - chrono::Duration::seconds(1));
        assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldExpired));
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("0")));
    }

    #[test]
    fn a_post_of_another_accounts_hold_is_not_found() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("10.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        let mut post = ledger.post(hold_id, None);
        if let Command::TransferPost(post) = &mut post {
            post.source_account_id = ledger.bob;
        }
        assert_eq!(ledger.apply(&post), Outcome::Rejected(RejectionReason::HoldNotFound));
    }

    #[test]
    fn a_reversal_pays_back_once_and_the_second_is_refused() {
        let mut ledger = Ledger::new("100.00");
        let transfer = ledger.transfer("25.00");
        ledger.apply(&transfer);
        let original = TransferId::from_uuid(transfer.id());
        assert_eq!(ledger.apply(&reverse(original)), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("100.00"));
        assert_eq!(ledger.balance_and_held(ledger.bob).0, dec("0.00"));
        assert_eq!(ledger.apply(&reverse(original)), Outcome::Rejected(RejectionReason::AlreadyReversed));
        assert_eq!(
            ledger.apply(&reverse(TransferId::from_uuid(Uuid::new_v4()))),
            Outcome::Rejected(RejectionReason::TransferNotFound)
        );
    }

    #[test]
    fn an_account_command_id_reused_for_another_command_is_refused_with_an_event() {
        let mut ledger = Ledger::new("100.00");
        let freeze = ledger.status(ledger.alice, Command::AccountFrozen);
        let Command::AccountFrozen(body) = &freeze else { unreachable!("built as a freeze") };
        let close = Command::AccountClosed(body.clone());
        assert_eq!(ledger.apply(&freeze), Outcome::Applied);
        assert_eq!(ledger.apply(&freeze), Outcome::AlreadyDecided);
        assert_eq!(ledger.apply(&close), Outcome::Rejected(RejectionReason::IdempotencyKeyReused));
        let changes = ledger.engine.finish();
        assert_eq!(changes.account_commands.len(), 1);
        // Told under an id of its own: the freeze under that id stands.
        assert!(changes.events.iter().any(|event| matches!(
            event,
            Event::CommandIdReused(CommandIdReused { reason: RejectionReason::IdempotencyKeyReused, reused_id, .. })
                if *reused_id == freeze.id()
        )));
        assert!(!changes.events.iter().any(|event| matches!(event, Event::AccountCommandRejected(_))));
    }

    #[test]
    fn a_frozen_account_cannot_send_and_a_closed_one_nothing_at_all() {
        let mut ledger = Ledger::new("100.00");
        assert_eq!(ledger.apply(&ledger.status(ledger.alice, Command::AccountFrozen)), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountFrozen));
        assert_eq!(
            ledger.apply(&ledger.status(ledger.alice, Command::AccountFrozen)),
            Outcome::Rejected(RejectionReason::AccountFrozen)
        );
        assert_eq!(ledger.apply(&ledger.status(ledger.alice, Command::AccountUnfrozen)), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Applied);
        assert_eq!(
            ledger.apply(&ledger.status(ledger.alice, Command::AccountClosed)),
            Outcome::Rejected(RejectionReason::AccountNotEmpty)
        );
        // Bob has 1.00; send it back, then close Bob's account.
        let mut back = ledger.transfer("1.00");
        if let Command::TransferRequested(request) = &mut back {
            std::mem::swap(&mut request.source_account_id, &mut request.destination_account_id);
        }
        assert_eq!(ledger.apply(&back), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.status(ledger.bob, Command::AccountClosed)), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountClosed));
    }

    #[test]
    fn an_overdraft_limit_lets_an_account_go_below_zero_down_to_the_limit() {
        let mut ledger = Ledger::new("10.00");
        let limit = Command::AccountOverdraftLimitSet(AccountOverdraftLimitSet {
            version: V1,
            command_id: Uuid::new_v4(),
            account_id: ledger.alice,
            overdraft_limit: Some(eur("50.00")),
            requested_at: Utc::now(),
        });
        assert_eq!(ledger.apply(&limit), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.transfer("60.00")), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("-50.00"));
        assert_eq!(ledger.apply(&ledger.transfer("0.01")), Outcome::Rejected(RejectionReason::InsufficientFunds));
        // Removing the limit while overdrawn is refused.
        let remove = Command::AccountOverdraftLimitSet(AccountOverdraftLimitSet {
            version: V1,
            command_id: Uuid::new_v4(),
            account_id: ledger.alice,
            overdraft_limit: None,
            requested_at: Utc::now(),
        });
        assert_eq!(ledger.apply(&remove), Outcome::Rejected(RejectionReason::InsufficientFunds));
    }

    #[test]
    fn the_changes_hold_one_update_per_touched_account_and_balanced_entries() {
        let mut ledger = Ledger::new("100.00");
        for _ in 0..10 {
            ledger.apply(&ledger.transfer("1.00"));
        }
        let changes = ledger.engine.finish();
        assert_eq!(changes.accounts.len(), 2);
        assert_eq!(changes.new_transfers.len(), 10);
        assert_eq!(changes.entries.len(), 20);
        let sum: Decimal = changes.entries.iter().map(|(_, entry)| entry.amount).sum();
        assert_eq!(sum, Decimal::ZERO);
    }

    /// Alice, Bob, and the euro external-clearing account, with the payout
    /// outcomes in `recorded` as if the relay had written them.
    struct Payouts {
        ledger: Ledger,
        clearing: AccountId,
    }

    impl Payouts {
        fn new(alice_balance: &str) -> Self {
            let (alice, bob) = (account(alice_balance), account("0"));
            let clearing = AccountState {
                id: AccountId::external_clearing(Currency::EUR),
                kind: AccountKind::System,
                ..account("0")
            };
            let (alice_id, bob_id, clearing_id) = (alice.id, bob.id, clearing.id);
            Self {
                ledger: Ledger {
                    engine: Engine::new(Utc::now(), vec![alice, bob, clearing], Vec::new(), HashMap::new()),
                    alice: alice_id,
                    bob: bob_id,
                },
                clearing: clearing_id,
            }
        }

        fn payout(&mut self, amount: &str) -> TransferId {
            let id = TransferId::from_uuid(Uuid::new_v4());
            let command = Command::TransferExternal(schemas::messages::TransferExternal {
                version: V1,
                transfer_id: id,
                source_account_id: self.ledger.alice,
                money: eur(amount),
                creditor: schemas::Creditor {
                    name: "Jane Doe".into(),
                    iban: schemas::Iban::parse("DE89370400440532013000").expect("IBAN"),
                },
                remittance_information: None,
                requested_at: Utc::now(),
            });
            assert_eq!(self.ledger.apply(&command), Outcome::Applied);
            id
        }

        /// The provider's outcome, recorded (as the relay does) or not.
        fn outcome(&mut self, payment_id: TransferId, result: PayoutResult, recorded: bool) -> Outcome {
            if recorded {
                self.ledger.engine.recorded_outcomes.insert((payment_id, result));
            }
            let command = schemas::messages::payout_outcome(payment_id, self.ledger.alice, result, Utc::now());
            self.ledger.apply(&command)
        }

        fn freeze_alice(&mut self) {
            let freeze = self.ledger.status(self.ledger.alice, Command::AccountFrozen);
            assert_eq!(self.ledger.apply(&freeze), Outcome::Applied);
        }
    }

    #[test]
    fn a_payout_the_provider_paid_is_debited_even_when_the_account_was_frozen_meanwhile() {
        let mut payouts = Payouts::new("100.00");
        let payment_id = payouts.payout("30.00");
        payouts.freeze_alice();
        assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
        assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("70.00"), dec("0")));
        assert_eq!(payouts.ledger.balance_and_held(payouts.clearing).0, dec("30.00"));
    }

    #[test]
    fn a_hold_of_a_frozen_account_can_still_be_posted_and_voided() {
        let mut ledger = Ledger::new("100.00");
        let (first, hold) = ledger.hold("30.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        let (second, hold) = ledger.hold("20.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        let freeze = ledger.status(ledger.alice, Command::AccountFrozen);
        assert_eq!(ledger.apply(&freeze), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.post(first, None)), Outcome::Applied);
        assert_eq!(ledger.apply(&ledger.void(second)), Outcome::Applied);
        assert_eq!(ledger.balance_and_held(ledger.alice), (dec("70.00"), dec("0")));
        // New debits stay refused.
        assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountFrozen));
    }

    #[test]
    fn a_post_or_void_of_a_payout_is_refused_only_the_providers_outcome_settles_it() {
        let mut payouts = Payouts::new("100.00");
        let payment_id = payouts.payout("30.00");
        let void = payouts.ledger.void(payment_id);
        assert_eq!(payouts.ledger.apply(&void), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
        let post = payouts.ledger.post(payment_id, None);
        assert_eq!(payouts.ledger.apply(&post), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
        assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("30.00")));
    }

    #[test]
    fn an_outcome_nobody_recorded_settles_nothing() {
        let mut payouts = Payouts::new("100.00");
        let payment_id = payouts.payout("30.00");
        assert_eq!(
            payouts.outcome(payment_id, PayoutResult::Rejected, false),
            Outcome::Rejected(RejectionReason::PayoutOutcomeNotRecorded)
        );
        assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("30.00")));
        // A relay of an older version posts under the settlement's derived id.
        let Command::PayoutOutcome(settled) =
            schemas::messages::payout_outcome(payment_id, payouts.ledger.alice, PayoutResult::Settled, Utc::now())
        else {
            unreachable!("an outcome")
        };
        let old_post = Command::TransferPost(TransferPost {
            version: V1,
            transfer_id: settled.transfer_id,
            hold_id: payment_id,
            source_account_id: payouts.ledger.alice,
            money: None,
            requested_at: Utc::now(),
        });
        assert_eq!(payouts.ledger.apply(&old_post), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
        // Neither refusal took the ids: the provider's recorded outcome,
        // under the same ids, still settles the payout.
        assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
        assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("70.00"), dec("0")));
    }

    #[test]
    fn a_settled_payout_cannot_be_reversed() {
        let mut payouts = Payouts::new("100.00");
        let payment_id = payouts.payout("30.00");
        assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
        let settlement = payouts.ledger.engine.changes.entries.last().map(|(id, _)| *id).expect("posted");
        assert_eq!(payouts.ledger.apply(&reverse(settlement)), Outcome::Rejected(RejectionReason::ReversalOfPayout));
        assert_eq!(payouts.ledger.balance_and_held(payouts.clearing).0, dec("30.00"));
    }

    #[test]
    fn a_contradicting_outcome_is_refused_and_raised_as_a_conflict() {
        let mut payouts = Payouts::new("100.00");
        let payment_id = payouts.payout("30.00");
        assert_eq!(payouts.outcome(payment_id, PayoutResult::Rejected, true), Outcome::Applied);
        assert_eq!(
            payouts.outcome(payment_id, PayoutResult::Settled, true),
            Outcome::Rejected(RejectionReason::PayoutOutcomeConflict)
        );
        // The same outcome told twice is one decision.
        assert_eq!(payouts.outcome(payment_id, PayoutResult::Rejected, true), Outcome::AlreadyDecided);
        assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("0")));
        let conflicts: Vec<_> = payouts
            .ledger
            .engine
            .changes
            .events
            .iter()
            .filter_map(|event| match event {
                Event::PayoutOutcomeConflicted(conflict) => Some(conflict),
                _ => None,
            })
            .collect();
        assert_eq!(conflicts.len(), 1);
        assert_eq!((conflicts[0].settled_as, conflicts[0].reported), (PayoutResult::Rejected, PayoutResult::Settled));
    }

    #[test]
    fn a_reused_id_is_refused_under_an_id_of_its_own_not_as_the_first_commands_rejection() {
        let mut ledger = Ledger::new("100.00");
        let first = ledger.transfer("10.00");
        assert_eq!(ledger.apply(&first), Outcome::Applied);
        let Command::TransferRequested(mut second) = ledger.transfer("99.00") else { unreachable!() };
        second.transfer_id = TransferId::from_uuid(first.id());
        assert_eq!(
            ledger.apply(&Command::TransferRequested(second)),
            Outcome::Rejected(RejectionReason::IdempotencyKeyReused)
        );
        let told_as_rejected = ledger.engine.changes.events.iter().any(
            |event| matches!(event, Event::TransferRejected(rejected) if rejected.transfer_id.as_uuid() == first.id()),
        );
        assert!(!told_as_rejected, "the completed transfer must not be announced as rejected");
        let reused = ledger.engine.changes.events.iter().find_map(|event| match event {
            Event::CommandIdReused(reused) => Some(reused),
            _ => None,
        });
        let reused = reused.expect("a command.id_reused event");
        assert_eq!(reused.reused_id, first.id());
        assert_ne!(reused.conflict_id, first.id());
    }

    #[test]
    fn a_post_is_decided_against_its_time_in_the_log_not_the_time_it_is_applied() {
        let mut ledger = Ledger::new("100.00");
        let (hold_id, hold) = ledger.hold("30.00", chrono::Duration::minutes(5));
        ledger.apply(&hold);
        // The processor gets to the post an hour after the hold expired, but
        // the post entered the log before the expiry.
        ledger.engine.now = Utc::now() + chrono::Duration::hours(1);
        let in_time = Position { timestamp: Some(Utc::now() + chrono::Duration::minutes(4)), ..position() };
        assert_eq!(ledger.engine.apply(&ledger.post(hold_id, None), &in_time), Outcome::Applied);
        let (late_hold_id, late_hold) = ledger.hold("10.00", chrono::Duration::minutes(5));
        let made_now = Position { timestamp: Some(Utc::now()), ..position() };
        assert_eq!(ledger.engine.apply(&late_hold, &made_now), Outcome::Applied);
        let too_late = Position { timestamp: Some(Utc::now() + chrono::Duration::minutes(6)), ..position() };
        assert_eq!(
            ledger.engine.apply(&ledger.post(late_hold_id, None), &too_late),
            Outcome::Rejected(RejectionReason::HoldExpired)
        );
    }
}
