//! Applying a batch of commands to the ledger in one Postgres transaction.
//!
//! A batch takes its account locks in one of two ways ([`Locking`]):
//!
//! - **Late** (the hot path: batches of transfers, deposits, holds and
//!   payouts, which depend on nothing but their accounts and their own ids):
//!   take the accounts' last known state (the processor's [`AccountCache`],
//!   else a read without locking), run the in-memory [`Engine`], write the
//!   transfer rows, payment orders and the batch's events (one outbox row
//!   for all of them; the transfer insert is also what detects a
//!   redelivery), then lock the accounts in id order, check them against
//!   what was decided on, and write the entries and balances. Locks are held
//!   for the last statements and the commit only, so processors sharing
//!   accounts wait for a part of each other's batch, not for all of it. See
//!   `decide_then_lock` for the check.
//! - **First** (batches that read holds, original transfers, account
//!   commands or payout outcomes, or sweep expired holds): lock every
//!   account in id order first, read again what the locks make stable,
//!   decide, write.
//!
//! Either way every processor locks accounts in the same global order, so
//! none deadlocks on them. (Two concurrent batches that carry the same
//! transfer id, an id reused across partitions, can deadlock on that row
//! and an account; Postgres detects it and the batch is retried.) The
//! writes are set-based statements (`UNNEST` arrays, one round trip each),
//! and the consumer offsets commit with them.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use platform::outbox::BatchedEvent;
use rust_decimal::Decimal;
use schemas::messages::{PaymentRequested, PayoutResult, SpendingLimit, TransferKind};
use schemas::{AccountId, Command, Currency, Event, Money, RejectionReason, TransferId};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::decide::{AccountKind, AccountState, AccountStatus, Entry};
pub use crate::engine::Position;
use crate::engine::{self, AccountCommandRecord, Changes, Engine, Outcome, TransferRecord, TransferStatus};

/// The partition offsets a batch stores, with the identity they are stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetScope {
    pub cluster_id: String,
    pub consumer_group: String,
}

/// Which expired holds a batch may release: those made by commands of
/// `partitions` of `topic`, partitions whose log this processor has applied
/// to its end. A hold's post or void is keyed like the hold, so it sits in
/// the same partition: releasing only holds of caught-up partitions means a
/// post accepted before the expiry is applied before the sweep gets to its
/// hold, however long the processor was down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub topic: String,
    pub partitions: Vec<i32>,
    /// Only holds that expired longer ago than this: it covers a post that
    /// reached the broker just before the expiry but not yet its high
    /// watermark, and clock skew between the broker and the processor.
    pub grace: chrono::Duration,
}

/// The partitions of `topic` whose commands made holds that expired more
/// than `grace` ago and are still pending (through the pending-holds index).
///
/// # Errors
/// Database errors.
pub async fn partitions_with_expired_holds(
    pool: &PgPool,
    topic: &str,
    grace: chrono::Duration,
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r"select distinct kafka_partition from transfers
          where kind = 'hold' and status = 'held' and expires_at <= $1 and kafka_topic = $2",
        Utc::now() - grace,
        topic,
    )
    .fetch_all(pool)
    .await
}

/// What the processor remembers of the accounts its batches read and
/// wrote: each account's state as of the last batch that locked it here.
///
/// A batch decided before locking (`decide_then_lock`) takes its
/// accounts from here and reads only the others. Nothing here is trusted:
/// the locked read checks every account before anything commits, so a
/// state another processor changed meanwhile (or one from a batch that
/// rolled back) costs a second decision, never a wrong one. With one
/// processor the memory is always current, since no one else moves
/// balances.
///
/// Bounded by `capacity` accounts; when full it forgets everything and
/// fills again (simple, and a cold start costs one read per account).
#[derive(Debug)]
pub struct AccountCache {
    capacity: usize,
    accounts: std::sync::Mutex<HashMap<AccountId, AccountState>>,
}

impl AccountCache {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self { capacity, accounts: std::sync::Mutex::new(HashMap::new()) }
    }

    /// The remembered states of `ids` (sorted, distinct), and the ids it has none of.
    fn recall(&self, ids: &[AccountId]) -> (Vec<AccountState>, Vec<AccountId>) {
        let Ok(accounts) = self.accounts.lock() else { return (Vec::new(), ids.to_vec()) };
        let (mut known, mut unknown) = (Vec::with_capacity(ids.len()), Vec::new());
        for id in ids {
            match accounts.get(id) {
                Some(account) => known.push(account.clone()),
                None => unknown.push(*id),
            }
        }
        (known, unknown)
    }

    /// Remembers the states of a committed batch.
    fn remember(&self, states: Vec<AccountState>) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut accounts) = self.accounts.lock() else { return };
        if accounts.len() + states.len() > self.capacity {
            accounts.clear();
        }
        for state in states.into_iter().take(self.capacity) {
            accounts.insert(state.id, state);
        }
    }

    /// Forgets everything: after a rebalance, the states of partitions
    /// another processor applied meanwhile are stale.
    pub fn clear(&self) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.clear();
        }
    }

    /// How many account states are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.accounts.lock().map_or(0, |accounts| accounts.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch transaction's `statement_timeout` and `lock_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
}

impl Timeouts {
    /// The database settings' defaults.
    pub const DEFAULT: Self = Self {
        statement_timeout_ms: platform::postgres::DatabaseConfig::STATEMENT_TIMEOUT_MS_DEFAULT,
        lock_timeout_ms: platform::postgres::DatabaseConfig::LOCK_TIMEOUT_MS_DEFAULT,
    };
}

/// How many expired holds one batch releases at most.
pub const EXPIRED_HOLDS_PER_BATCH_MAX: i64 = 500;

/// What one batch did.
#[derive(Debug)]
pub struct BatchResult {
    pub outcomes: Vec<Outcome>,
    pub holds_expired: usize,
    pub locking: Locking,
    /// From BEGIN to COMMIT.
    pub elapsed: std::time::Duration,
}

/// Applies `commands` (in partition order) and stores the next offset of
/// every partition in `positions` (which include dead-lettered messages), in
/// one transaction. With a `sweep`, then releases the pending holds of its
/// partitions whose expiry has passed (after the batch's own commands, which
/// may post or void them first).
///
/// # Errors
/// Database errors; the transaction is rolled back and the caller retries.
#[tracing::instrument(skip_all, fields(commands = commands.len()), err)]
pub async fn apply_batch(
    pool: &PgPool,
    scope: &OffsetScope,
    commands: &[(Command, Position)],
    positions: &[Position],
    sweep: Option<&Sweep>,
    timeouts: Timeouts,
    cache: &AccountCache,
) -> Result<BatchResult, sqlx::Error> {
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut transaction = pool.begin().await?;
    set_timeouts(&mut transaction, timeouts).await?;
    let expired = match sweep {
        Some(sweep) if !sweep.partitions.is_empty() => expired_holds(&mut transaction, now, sweep).await?,
        _ => Vec::new(),
    };
    let late = expired.is_empty() && commands.iter().all(|(command, _)| Engine::decidable_before_locking(command));
    let decided = if late {
        let account_ids = accounts_to_lock(commands, &HashMap::new(), &[]);
        decide_then_lock(&mut transaction, now, commands, &account_ids, cache).await?
    } else {
        let unlocked = load_transfers(&mut transaction, &transfers_to_read(commands, &expired)).await?;
        let account_ids = accounts_to_lock(commands, &unlocked, &expired);
        lock_then_decide(&mut transaction, now, commands, unlocked, &account_ids, &expired).await?
    };
    let written = started.elapsed();
    store_offsets(&mut transaction, scope, positions).await?;
    transaction.commit().await?;
    cache.remember(decided.accounts_after);
    tracing::debug!(
        commands = commands.len(),
        locking = ?decided.locking,
        written_ms = written.as_millis(),
        commit_ms = (started.elapsed() - written).as_millis(),
        "batch timings"
    );
    Ok(BatchResult {
        outcomes: decided.outcomes,
        holds_expired: decided.holds_expired,
        locking: decided.locking,
        elapsed: started.elapsed(),
    })
}

/// Sets the batch transaction's timeouts, for this transaction only: a
/// stray lock on an account row, or a stuck statement, fails the batch
/// (which is retried) instead of hanging it.
async fn set_timeouts(connection: &mut PgConnection, timeouts: Timeouts) -> Result<(), sqlx::Error> {
    // The settings' new values come back as columns: the macro needs them
    // named apart, and the statement is fetched, not executed.
    sqlx::query!(
        r#"select set_config('statement_timeout', $1, true) as "statement_timeout",
                  set_config('lock_timeout', $2, true) as "lock_timeout""#,
        format!("{}ms", timeouts.statement_timeout_ms),
        format!("{}ms", timeouts.lock_timeout_ms),
    )
    .fetch_one(connection)
    .await?;
    Ok(())
}

/// The pending holds of the sweep's partitions that expired more than its
/// grace ago, the oldest first, at most [`EXPIRED_HOLDS_PER_BATCH_MAX`].
async fn expired_holds(
    connection: &mut PgConnection,
    now: chrono::DateTime<Utc>,
    sweep: &Sweep,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r"select id from transfers
          where kind = 'hold' and status = 'held' and expires_at <= $1
            and kafka_topic = $2 and kafka_partition = any($3)
          order by expires_at limit $4",
        now - sweep.grace,
        &sweep.topic,
        &sweep.partitions,
        EXPIRED_HOLDS_PER_BATCH_MAX,
    )
    .fetch_all(connection)
    .await
}

/// The transfers a batch that locks first reads before locking: its own
/// ids (redeliveries), the ones its commands refer to, and the expired
/// holds it releases; sorted, distinct.
fn transfers_to_read(commands: &[(Command, Position)], expired: &[Uuid]) -> Vec<Uuid> {
    let mut transfer_ids: Vec<Uuid> = commands.iter().map(|(command, _)| command.id()).collect();
    transfer_ids
        .extend(commands.iter().flat_map(|(command, _)| Engine::referenced_transfers(command)).map(|id| id.as_uuid()));
    transfer_ids.extend(expired);
    transfer_ids.sort_unstable();
    transfer_ids.dedup();
    transfer_ids
}

/// The accounts a batch locks, sorted and distinct: those its commands may
/// touch, given the `transfers` they refer to, and the sources of the
/// `expired` holds it releases.
fn accounts_to_lock(
    commands: &[(Command, Position)],
    transfers: &HashMap<TransferId, TransferRecord>,
    expired: &[Uuid],
) -> Vec<AccountId> {
    let mut account_ids: Vec<AccountId> =
        commands.iter().flat_map(|(command, _)| Engine::accounts_of(command, transfers)).collect();
    account_ids.extend(
        expired
            .iter()
            .filter_map(|id| transfers.get(&TransferId::from_uuid(*id)))
            .filter_map(|hold| hold.source_account_id),
    );
    account_ids.sort_unstable();
    account_ids.dedup();
    account_ids
}

/// How a batch took its account locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Locked before deciding, held for the whole batch: a batch with
    /// commands that read holds, original transfers, account commands or
    /// payout outcomes, or that sweeps expired holds.
    First,
    /// Decided on the accounts' last known state (the processor's memory,
    /// else an unlocked read), locked last; the locked read found them as
    /// decided on.
    Late,
    /// Locked last; another batch had moved some accounts meanwhile, but
    /// the decisions stood: the rows written stood, the balances were
    /// recomputed from the locked read.
    LateRebalanced,
    /// Locked last; the decisions changed under the locked read (another
    /// batch's credit made a rejected debit affordable, say), so the
    /// batch went back to its savepoint (which releases the locks too) and
    /// was applied again locking first.
    LateRedecided,
}

impl Locking {
    pub const ALL: [Locking; 4] = [Locking::First, Locking::Late, Locking::LateRebalanced, Locking::LateRedecided];

    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Locking::First => "first",
            Locking::Late => "late",
            Locking::LateRebalanced => "late_rebalanced",
            Locking::LateRedecided => "late_redecided",
        }
    }
}

/// A batch decided and written, all but its offsets.
struct Decided {
    outcomes: Vec<Outcome>,
    holds_expired: usize,
    locking: Locking,
    /// The state of every account the batch locked, once it commits.
    accounts_after: Vec<AccountState>,
}

/// The locked states with the batch's changes applied.
fn accounts_after(locked: Vec<AccountState>, changes: &Changes) -> Vec<AccountState> {
    let changed: HashMap<AccountId, &AccountState> =
        changes.accounts.iter().map(|account| (account.id, account)).collect();
    locked.into_iter().map(|account| changed.get(&account.id).map_or(account, |state| (*state).clone())).collect()
}

/// Runs the engine over the batch.
fn decide(
    now: chrono::DateTime<Utc>,
    commands: &[(Command, Position)],
    accounts: Vec<AccountState>,
    transfers: Vec<TransferRecord>,
    account_commands: HashMap<Uuid, Vec<u8>>,
    recorded_outcomes: Vec<(TransferId, PayoutResult)>,
    expired: &[Uuid],
) -> (Vec<Outcome>, usize, Changes) {
    let mut engine = Engine::new(now, accounts, transfers, account_commands).with_recorded_outcomes(recorded_outcomes);
    let outcomes = commands.iter().map(|(command, position)| engine.apply(command, position)).collect();
    // After the commands: a post of this batch settles its hold before the
    // sweep would expire it.
    let holds_expired = engine.expire_holds(&expired.iter().map(|id| TransferId::from_uuid(*id)).collect::<Vec<_>>());
    (outcomes, holds_expired, engine.finish())
}

/// The batch of commands that read more than their accounts: lock every
/// account first (in id order), read again what the locks make stable,
/// decide, write.
async fn lock_then_decide(
    connection: &mut PgConnection,
    now: chrono::DateTime<Utc>,
    commands: &[(Command, Position)],
    unlocked: HashMap<TransferId, TransferRecord>,
    account_ids: &[AccountId],
    expired: &[Uuid],
) -> Result<Decided, sqlx::Error> {
    let mut accounts = read_accounts(connection, account_ids, true).await?;
    // An account whose rolling limit the batch sets needs what it debited
    // today, which is read only for accounts limited already.
    let limits_set: Vec<AccountId> = commands
        .iter()
        .filter_map(|(command, _)| match command {
            Command::AccountSpendingLimitsSet(set) => Some(set.account_id),
            _ => None,
        })
        .collect();
    if !limits_set.is_empty() {
        derive_debits(connection, &mut accounts, &limits_set).await?;
    }
    let locked = accounts.clone();
    // Read again, under the locks, what can have changed since: the rows
    // found (a hold settles, a transfer gets reversed) and the ones referred
    // to. A command id inserted meanwhile by another processor needs no
    // reread: the primary key refuses our insert and the batch is retried.
    let mut reread: Vec<Uuid> = unlocked.keys().map(TransferId::as_uuid).collect();
    reread
        .extend(commands.iter().flat_map(|(command, _)| Engine::referenced_transfers(command)).map(|id| id.as_uuid()));
    reread.sort_unstable();
    reread.dedup();
    let transfers = if reread.is_empty() { HashMap::new() } else { load_transfers(connection, &reread).await? };
    let account_commands = load_account_commands(connection, commands).await?;
    let recorded_outcomes = load_payout_outcomes(connection, commands).await?;
    let (outcomes, holds_expired, changes) = decide(
        now,
        commands,
        accounts,
        transfers.into_values().collect(),
        account_commands,
        recorded_outcomes,
        expired,
    );
    write_records(connection, &changes, DecidedBefore::Fail).await?;
    write_balances(connection, &changes).await?;
    let accounts_after = accounts_after(locked, &changes);
    Ok(Decided { outcomes, holds_expired, locking: Locking::First, accounts_after })
}

/// The batch of commands that depend on their accounts only
/// ([`Engine::decidable_before_locking`]): decide on the accounts' last
/// known state, write the rows that do not depend on balances (transfers,
/// payment orders, events), and only then lock the accounts (in id order)
/// to write the entries and balances.
///
/// No query looks for the batch's ids among the decided commands first (at
/// 2,000 primary-key probes, about a sixth of a batch): the insert of the
/// transfer rows skips ids that have a row, and when it skipped any the
/// batch goes back to the savepoint and is decided again knowing those
/// rows.
///
/// The locks are held for the last statements and the commit, not for the
/// whole batch, so two processors whose batches share accounts (the usual
/// case: a batch of 1,000 transfers touches 2 % of 100,000 accounts) wait
/// for a part of each other's batch, not for all of it.
///
/// The locked read is the check. If it finds the accounts as they were
/// decided on, the decisions stand. If another batch moved some of them
/// meanwhile, the batch is decided again on the locked read: when it
/// writes the same rows (the usual case: a credit that arrived meanwhile
/// changes balances, not outcomes), the rows written stand and the entries
/// and balances come from the new decision; otherwise the batch goes back
/// to the savepoint and is applied again the lock-first way
/// ([`lock_then_decide`]). Either way what commits was decided on accounts
/// locked until the commit, exactly as if they had been locked first.
async fn decide_then_lock(
    connection: &mut PgConnection,
    now: chrono::DateTime<Utc>,
    commands: &[(Command, Position)],
    account_ids: &[AccountId],
    cache: &AccountCache,
) -> Result<Decided, sqlx::Error> {
    let started = std::time::Instant::now();
    let read = read_last_known(connection, account_ids, cache).await?;
    let read_ms = started.elapsed().as_millis();
    // Decided as if no command of the batch had been decided before, which
    // is nearly always so; the insert of the transfer rows tells (below).
    let mut known: Vec<TransferRecord> = Vec::new();
    let (mut outcomes, mut changes) = decide_on_accounts(now, commands, &read, &known);
    let decided_ms = started.elapsed().as_millis();
    sqlx::query!("savepoint decided_unlocked").execute(&mut *connection).await?;
    if !write_records(connection, &changes, DecidedBefore::Skip).await? {
        // Some command of the batch has a row already: a redelivery (after
        // a crash or a rebalance), or another processor's meanwhile. Decide
        // again knowing those rows. Should one appear even now, the primary
        // key refuses the insert and the batch is retried.
        sqlx::query!("rollback to savepoint decided_unlocked").execute(&mut *connection).await?;
        known = load_transfers(connection, &own_ids(commands)).await?.into_values().collect();
        (outcomes, changes) = decide_on_accounts(now, commands, &read, &known);
        write_records(connection, &changes, DecidedBefore::Fail).await?;
    }
    let records_ms = started.elapsed().as_millis();
    let locked = read_accounts(connection, account_ids, true).await?;
    let locked_ms = started.elapsed().as_millis();
    if locked == read {
        write_balances(connection, &changes).await?;
        let accounts_after = accounts_after(locked, &changes);
        tracing::debug!(
            read_ms,
            decided_ms,
            records_ms,
            locked_ms,
            balances_ms = started.elapsed().as_millis(),
            "late locking timings (cumulative)"
        );
        return Ok(Decided { outcomes, holds_expired: 0, locking: Locking::Late, accounts_after });
    }
    let (relocked_outcomes, relocked) = decide_on_accounts(now, commands, &locked, &known);
    if changes.decides_as(&relocked) {
        write_balances(connection, &relocked).await?;
        let accounts_after = accounts_after(locked, &relocked);
        return Ok(Decided {
            outcomes: relocked_outcomes,
            holds_expired: 0,
            locking: Locking::LateRebalanced,
            accounts_after,
        });
    }
    // The rows written say otherwise than the locked accounts. Going back
    // to the savepoint also releases the account locks taken after it
    // (Postgres releases row locks on a rollback to savepoint), so the
    // batch cannot keep `locked`: it starts again from the savepoint the
    // way a batch that locks first does, and decides on what it locks now.
    sqlx::query!("rollback to savepoint decided_unlocked").execute(&mut *connection).await?;
    let known: HashMap<TransferId, TransferRecord> = known.into_iter().map(|record| (record.id, record)).collect();
    let decided = lock_then_decide(connection, now, commands, known, account_ids, &[]).await?;
    Ok(Decided { locking: Locking::LateRedecided, ..decided })
}

/// The last known state of `account_ids` (sorted, distinct): what the
/// processor remembers, the others read without locking.
async fn read_last_known(
    connection: &mut PgConnection,
    account_ids: &[AccountId],
    cache: &AccountCache,
) -> Result<Vec<AccountState>, sqlx::Error> {
    let (mut read, unremembered) = cache.recall(account_ids);
    if !unremembered.is_empty() {
        read.extend(read_accounts(connection, &unremembered, false).await?);
        read.sort_unstable_by_key(|account| account.id);
    }
    Ok(read)
}

/// Runs the engine over a batch decided before locking: on `accounts` as
/// read, knowing of the batch's own ids only the rows in `known`.
fn decide_on_accounts(
    now: chrono::DateTime<Utc>,
    commands: &[(Command, Position)],
    accounts: &[AccountState],
    known: &[TransferRecord],
) -> (Vec<Outcome>, Changes) {
    let (outcomes, _, changes) =
        decide(now, commands, accounts.to_vec(), known.to_vec(), HashMap::new(), Vec::new(), &[]);
    (outcomes, changes)
}

/// The ids the batch's commands are decided under, sorted and distinct.
fn own_ids(commands: &[(Command, Position)]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = commands.iter().map(|(command, _)| command.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

async fn load_transfers(
    connection: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<TransferId, TransferRecord>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // One primary-key probe per id (the lateral subquery's `offset 0`
    // keeps the planner from flattening it into a join): with `id = any($1)`
    // it chose a sequential scan of the whole table for every batch, on a
    // plan made while the table was small, so each batch cost more than
    // the last.
    let rows = sqlx::query_as!(
        TransferRow,
        r#"select t.id, t.kind, t.status, t.rejection_reason, t.source_account_id, t.destination_account_id,
                 t.amount, t.currency, t.related_transfer_id, t.expires_at, t.settled_amount, t.requested_at,
                 t.request_fingerprint, t.reference, t.metadata, t.reversal_reason, t.rejected_leg, t.exceeded_limit,
                 exists (select 1 from transfers r
                         where r.related_transfer_id = t.id and r.kind = 'reversal' and r.status = 'completed')
                     as "reversed!"
          from unnest($1::uuid[]) as wanted (id)
          cross join lateral (select * from transfers where id = wanted.id offset 0) t"#,
        ids,
    )
    .fetch_all(&mut *connection)
    .await?;
    let mut transfers = HashMap::with_capacity(rows.len());
    for row in rows {
        let record = row.into_record()?;
        transfers.insert(record.id, record);
    }
    Ok(transfers)
}

/// A row of `transfers` as stored, with whether a completed reversal of it
/// exists.
struct TransferRow {
    id: Uuid,
    kind: String,
    status: String,
    rejection_reason: Option<String>,
    source_account_id: Option<Uuid>,
    destination_account_id: Option<Uuid>,
    amount: Option<Decimal>,
    currency: Option<String>,
    related_transfer_id: Option<Uuid>,
    expires_at: Option<chrono::DateTime<Utc>>,
    settled_amount: Option<Decimal>,
    requested_at: chrono::DateTime<Utc>,
    request_fingerprint: Vec<u8>,
    reference: Option<String>,
    metadata: Option<serde_json::Value>,
    reversal_reason: Option<String>,
    rejected_leg: Option<i16>,
    exceeded_limit: Option<String>,
    reversed: bool,
}

impl TransferRow {
    /// The row as the engine knows it. An unknown kind or status, a
    /// malformed currency or amount is a decode error.
    fn into_record(self) -> Result<TransferRecord, sqlx::Error> {
        let currency = self.currency.map(|code| parse_currency(&code)).transpose()?;
        let money = match (self.amount, currency) {
            (Some(amount), Some(currency)) => {
                Some(Money::new(amount, currency).map_err(|error| decode_error("amount", error))?)
            }
            _ => None,
        };
        let (kind, status) = (self.kind, self.status);
        Ok(TransferRecord {
            id: TransferId::from_uuid(self.id),
            kind: TransferKind::from_code(&kind).ok_or_else(|| decode_error("kind", UnknownCode(kind)))?,
            status: TransferStatus::from_code(&status).ok_or_else(|| decode_error("status", UnknownCode(status)))?,
            rejection_reason: self.rejection_reason.as_deref().and_then(RejectionReason::from_code),
            source_account_id: self.source_account_id.map(AccountId::from_uuid),
            destination_account_id: self.destination_account_id.map(AccountId::from_uuid),
            money,
            related_transfer_id: self.related_transfer_id.map(TransferId::from_uuid),
            expires_at: self.expires_at,
            settled_amount: self.settled_amount,
            requested_at: self.requested_at,
            fingerprint: self.request_fingerprint,
            position: None,
            reversed: self.reversed,
            // Parsed as they were validated when written; a stored value
            // that no longer parses is a decode error, not dropped.
            reference: self
                .reference
                .map(|text| schemas::Reference::parse(&text).map_err(|error| decode_error("reference", error)))
                .transpose()?,
            metadata: self
                .metadata
                .map(|value| serde_json::from_value(value).map_err(|error| decode_error("metadata", error)))
                .transpose()?,
            reversal_reason: self
                .reversal_reason
                .map(|text| {
                    schemas::ReversalReason::parse(&text)
                        .map_err(|error| decode_error("reversal_reason", UnknownCode(error)))
                })
                .transpose()?,
            rejected_leg: self.rejected_leg.and_then(|leg| u16::try_from(leg).ok()),
            exceeded_limit: self
                .exceeded_limit
                .map(|code| {
                    SpendingLimit::from_code(&code).ok_or_else(|| decode_error("exceeded_limit", UnknownCode(code)))
                })
                .transpose()?,
        })
    }
}

/// Reads the accounts in ascending id order; with `lock`, locks them in
/// that order (every batch does, so none deadlocks on its accounts).
async fn read_accounts(
    connection: &mut PgConnection,
    ids: &[AccountId],
    lock: bool,
) -> Result<Vec<AccountState>, sqlx::Error> {
    let mut ids: Vec<Uuid> = ids.iter().map(AccountId::as_uuid).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = if lock {
        sqlx::query_as!(
            AccountRow,
            r"select id, currency, kind, status, balance, held, overdraft_limit, per_transfer_max, rolling_24h_max
              from accounts where id = any($1) order by id for update",
            &ids,
        )
        .fetch_all(&mut *connection)
        .await?
    } else {
        sqlx::query_as!(
            AccountRow,
            r"select id, currency, kind, status, balance, held, overdraft_limit, per_transfer_max, rolling_24h_max
              from accounts where id = any($1) order by id",
            &ids,
        )
        .fetch_all(&mut *connection)
        .await?
    };
    let mut accounts = rows.into_iter().map(AccountRow::into_state).collect::<Result<Vec<_>, _>>()?;
    derive_debits(connection, &mut accounts, &[]).await?;
    Ok(accounts)
}

/// Fills in what the accounts with a rolling spending limit (and those in
/// `also`, whose limit the batch may set) debited in the last 24 hours, from
/// their entries (an index range each). A statement of its own, after the
/// accounts' locks are taken: under read committed it sees every debit
/// committed before the lock was granted, which a subquery of the locking
/// statement (whose snapshot predates the wait) would miss.
async fn derive_debits(
    connection: &mut PgConnection,
    accounts: &mut [AccountState],
    also: &[AccountId],
) -> Result<(), sqlx::Error> {
    let limited: Vec<Uuid> = accounts
        .iter()
        .filter(|account| account.rolling_24h_max.is_some() || also.contains(&account.id))
        .map(|account| account.id.as_uuid())
        .collect();
    if limited.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query!(
        r#"select account_id, sum(-amount) as "debited!"
           from entries
           where account_id = any($1) and created_at > statement_timestamp() - interval '24 hours' and amount < 0
           group by account_id"#,
        &limited,
    )
    .fetch_all(&mut *connection)
    .await?;
    let debited: HashMap<Uuid, Decimal> = rows.into_iter().map(|row| (row.account_id, row.debited)).collect();
    for account in accounts.iter_mut().filter(|account| limited.contains(&account.id.as_uuid())) {
        account.debited_24h = debited.get(&account.id.as_uuid()).copied().unwrap_or_default();
    }
    Ok(())
}

/// A row of `accounts`, the columns the engine reads.
struct AccountRow {
    id: Uuid,
    currency: String,
    kind: String,
    status: String,
    balance: Decimal,
    held: Decimal,
    overdraft_limit: Decimal,
    per_transfer_max: Option<Decimal>,
    rolling_24h_max: Option<Decimal>,
}

impl AccountRow {
    /// The account as the engine knows it.
    ///
    /// A kind or status this processor does not know is an error, never a
    /// guess. Such a value means a newer schema than this processor: taking
    /// the account for closed (as it once did) would refuse its commands as
    /// `account_closed`, a wrong decision recorded for good, while failing
    /// the batch records nothing: the consumer applies its commands one by
    /// one, the others go through, and each command of this account is
    /// dead-lettered (`apply_failed`, with this error) after its attempts,
    /// for `ledgerctl replay` once the processor is upgraded.
    fn into_state(self) -> Result<AccountState, sqlx::Error> {
        let id = AccountId::from_uuid(self.id);
        let kind = AccountKind::from_code(&self.kind).ok_or_else(|| unknown_account_code(id, "kind", self.kind))?;
        let status =
            AccountStatus::from_code(&self.status).ok_or_else(|| unknown_account_code(id, "status", self.status))?;
        Ok(AccountState {
            id,
            currency: parse_currency(&self.currency)?,
            kind,
            status,
            balance: self.balance,
            held: self.held,
            overdraft_limit: self.overdraft_limit,
            per_transfer_max: self.per_transfer_max,
            rolling_24h_max: self.rolling_24h_max,
            debited_24h: Decimal::ZERO,
        })
    }
}

/// A stored code of an account that this processor does not know.
#[derive(Debug, thiserror::Error)]
#[error("account {account_id} has {column} {code:?}, which this processor does not know (a newer schema?)")]
struct UnknownAccountCode {
    account_id: AccountId,
    column: &'static str,
    code: String,
}

fn unknown_account_code(account_id: AccountId, column: &'static str, code: String) -> sqlx::Error {
    decode_error(column, UnknownAccountCode { account_id, column, code })
}

/// The recorded provider outcomes of the payouts the batch's
/// `payout.outcome` commands name.
async fn load_payout_outcomes(
    connection: &mut PgConnection,
    commands: &[(Command, Position)],
) -> Result<Vec<(TransferId, PayoutResult)>, sqlx::Error> {
    let ids: Vec<Uuid> = commands
        .iter()
        .filter_map(|(command, _)| match command {
            Command::PayoutOutcome(outcome) => Some(outcome.payment_id.as_uuid()),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!("select payment_id, result from payout_outcomes where payment_id = any($1)", &ids)
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            PayoutResult::from_code(&row.result).map(|result| (TransferId::from_uuid(row.payment_id), result))
        })
        .collect())
}

async fn load_account_commands(
    connection: &mut PgConnection,
    commands: &[(Command, Position)],
) -> Result<HashMap<Uuid, Vec<u8>>, sqlx::Error> {
    let ids: Vec<Uuid> = commands
        .iter()
        .filter(|(command, _)| engine::is_account_command(command))
        .map(|(command, _)| command.id())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query!("select id, request_fingerprint from account_commands where id = any($1)", &ids)
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.request_fingerprint)).collect())
}

/// What [`write_records`] does with a new transfer row whose id has a row
/// already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecidedBefore {
    /// Fail the statement (a unique violation): the batch is retried.
    Fail,
    /// Skip it, write nothing more, and report `false`.
    Skip,
}

/// Writes every row a batch decided that does not depend on balances: new
/// transfers, settled holds, account commands, payment orders, the batch's
/// events (they carry no balance). None of these statements takes an
/// account lock.
///
/// Returns whether every row was written: `false` only with
/// [`DecidedBefore::Skip`] when some transfer id had a row already, in
/// which case nothing after the transfer rows was written.
async fn write_records(
    connection: &mut PgConnection,
    changes: &Changes,
    decided_before: DecidedBefore,
) -> Result<bool, sqlx::Error> {
    let started = std::time::Instant::now();
    if !insert_transfers(connection, &changes.new_transfers, decided_before).await? {
        return Ok(false);
    }
    let transfers_ms = started.elapsed().as_millis();
    settle_holds(connection, &changes.settled_holds).await?;
    insert_account_commands(connection, &changes.account_commands).await?;
    insert_payment_orders(connection, &changes.payments).await?;
    // The batch's events, one row, before the locks (as the rows above):
    // written under them, the few milliseconds of this insert made the
    // locked tail longer, and a second processor then added nothing
    // (measured: two processors 0.86x one, against 1.4x with the events
    // written before the locks).
    write_events(connection, &changes.events).await?;
    tracing::debug!(transfers_ms, outbox_ms = started.elapsed().as_millis(), "write timings (cumulative)");
    Ok(true)
}

/// The insert of `$columns` (a [`TransferColumns`]) into `transfers` by
/// `$sql`, one of two statements that differ in their conflict clause only:
/// each is checked at compile time, and the binds are written once.
macro_rules! insert_transfer_rows {
    ($sql:literal, $columns:ident) => {
        sqlx::query!(
            $sql,
            &$columns.ids,
            &$columns.kinds as &[&str],
            &$columns.statuses as &[&str],
            &$columns.rejection_reasons as &[Option<&str>],
            &$columns.source_account_ids as &[Option<Uuid>],
            &$columns.destination_account_ids as &[Option<Uuid>],
            &$columns.amounts as &[Option<Decimal>],
            &$columns.currencies as &[Option<&str>],
            &$columns.related_transfer_ids as &[Option<Uuid>],
            &$columns.expires_at as &[Option<chrono::DateTime<Utc>>],
            &$columns.settled_amounts as &[Option<Decimal>],
            &$columns.requested_at,
            &$columns.fingerprints as &[&[u8]],
            &$columns.topics as &[&str],
            &$columns.partitions,
            &$columns.offsets,
            &$columns.references as &[Option<&str>],
            &$columns.metadata as &[Option<String>],
            &$columns.reversal_reasons as &[Option<&str>],
            &$columns.rejected_legs as &[Option<i16>],
            &$columns.exceeded_limits as &[Option<&str>],
        )
    };
}

/// Inserts the new rows of `transfers`; returns whether every one was
/// inserted (`false` only with [`DecidedBefore::Skip`], when some id had a
/// row already).
async fn insert_transfers(
    connection: &mut PgConnection,
    new_transfers: &[TransferRecord],
    decided_before: DecidedBefore,
) -> Result<bool, sqlx::Error> {
    if new_transfers.is_empty() {
        return Ok(true);
    }
    let columns = TransferColumns::new(new_transfers);
    let inserted =
        match decided_before {
            DecidedBefore::Fail => insert_transfer_rows!(
                r"insert into transfers (id, kind, status, rejection_reason, source_account_id, destination_account_id,
                                         amount, currency, related_transfer_id, expires_at, settled_amount,
                                         requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                                         reference, metadata, reversal_reason, rejected_leg, exceeded_limit, settled_at)
                  select id, kind, status, rejection_reason, source_account_id, destination_account_id,
                         amount, currency, related_transfer_id, expires_at, settled_amount,
                         requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                         reference, metadata::jsonb, reversal_reason, rejected_leg, exceeded_limit,
                         case when kind in ('hold', 'payout') and status in ('posted', 'voided', 'expired')
                              then statement_timestamp() end
                  from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                              $7::numeric[], $8::text[], $9::uuid[], $10::timestamptz[], $11::numeric[],
                              $12::timestamptz[], $13::bytea[], $14::text[], $15::int[], $16::bigint[],
                              $17::text[], $18::text[], $19::text[], $20::smallint[], $21::text[])
                       as t (id, kind, status, rejection_reason, source_account_id, destination_account_id,
                             amount, currency, related_transfer_id, expires_at, settled_amount,
                             requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                             reference, metadata, reversal_reason, rejected_leg, exceeded_limit)",
                columns
            )
            .execute(connection)
            .await?,
            DecidedBefore::Skip => insert_transfer_rows!(
                r"insert into transfers (id, kind, status, rejection_reason, source_account_id, destination_account_id,
                                         amount, currency, related_transfer_id, expires_at, settled_amount,
                                         requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                                         reference, metadata, reversal_reason, rejected_leg, exceeded_limit, settled_at)
                  select id, kind, status, rejection_reason, source_account_id, destination_account_id,
                         amount, currency, related_transfer_id, expires_at, settled_amount,
                         requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                         reference, metadata::jsonb, reversal_reason, rejected_leg, exceeded_limit,
                         case when kind in ('hold', 'payout') and status in ('posted', 'voided', 'expired')
                              then statement_timestamp() end
                  from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                              $7::numeric[], $8::text[], $9::uuid[], $10::timestamptz[], $11::numeric[],
                              $12::timestamptz[], $13::bytea[], $14::text[], $15::int[], $16::bigint[],
                              $17::text[], $18::text[], $19::text[], $20::smallint[], $21::text[])
                       as t (id, kind, status, rejection_reason, source_account_id, destination_account_id,
                             amount, currency, related_transfer_id, expires_at, settled_amount,
                             requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset,
                             reference, metadata, reversal_reason, rejected_leg, exceeded_limit)
                  on conflict (id) do nothing",
                columns
            )
            .execute(connection)
            .await?,
        };
    Ok(usize::try_from(inserted.rows_affected()).ok() == Some(new_transfers.len()))
}

/// New rows of `transfers`, one array per column, in key order:
/// neighbouring keys land on neighbouring index pages, which measurably
/// beats random order.
struct TransferColumns<'a> {
    ids: Vec<Uuid>,
    kinds: Vec<&'static str>,
    statuses: Vec<&'static str>,
    rejection_reasons: Vec<Option<&'static str>>,
    source_account_ids: Vec<Option<Uuid>>,
    destination_account_ids: Vec<Option<Uuid>>,
    amounts: Vec<Option<Decimal>>,
    currencies: Vec<Option<&'static str>>,
    related_transfer_ids: Vec<Option<Uuid>>,
    expires_at: Vec<Option<chrono::DateTime<Utc>>>,
    settled_amounts: Vec<Option<Decimal>>,
    requested_at: Vec<chrono::DateTime<Utc>>,
    fingerprints: Vec<&'a [u8]>,
    /// Where each command came from; an empty topic and 0 for a row that
    /// has no position.
    topics: Vec<&'a str>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    references: Vec<Option<&'a str>>,
    /// As JSON text, cast to `jsonb` by the statement.
    metadata: Vec<Option<String>>,
    reversal_reasons: Vec<Option<&'a str>>,
    rejected_legs: Vec<Option<i16>>,
    exceeded_limits: Vec<Option<&'static str>>,
}

impl<'a> TransferColumns<'a> {
    fn new(new_transfers: &'a [TransferRecord]) -> Self {
        let mut transfers: Vec<&TransferRecord> = new_transfers.iter().collect();
        transfers.sort_unstable_by_key(|transfer| transfer.id);
        Self {
            ids: transfers.iter().map(|t| t.id.as_uuid()).collect(),
            kinds: transfers.iter().map(|t| t.kind.code()).collect(),
            statuses: transfers.iter().map(|t| t.status.code()).collect(),
            rejection_reasons: transfers.iter().map(|t| t.rejection_reason.map(RejectionReason::code)).collect(),
            source_account_ids: transfers.iter().map(|t| t.source_account_id.map(|id| id.as_uuid())).collect(),
            destination_account_ids: transfers
                .iter()
                .map(|t| t.destination_account_id.map(|id| id.as_uuid()))
                .collect(),
            amounts: transfers.iter().map(|t| t.money.map(|money| money.amount().value())).collect(),
            currencies: transfers.iter().map(|t| t.money.map(|money| money.currency().code())).collect(),
            related_transfer_ids: transfers.iter().map(|t| t.related_transfer_id.map(|id| id.as_uuid())).collect(),
            expires_at: transfers.iter().map(|t| t.expires_at).collect(),
            settled_amounts: transfers.iter().map(|t| t.settled_amount).collect(),
            requested_at: transfers.iter().map(|t| t.requested_at).collect(),
            fingerprints: transfers.iter().map(|t| t.fingerprint.as_slice()).collect(),
            topics: transfers.iter().map(|t| t.position.as_ref().map_or("", |p| p.topic.as_str())).collect(),
            partitions: transfers.iter().map(|t| t.position.as_ref().map_or(0, |p| p.partition)).collect(),
            offsets: transfers.iter().map(|t| t.position.as_ref().map_or(0, |p| p.offset)).collect(),
            references: transfers.iter().map(|t| t.reference.as_ref().map(schemas::Reference::as_str)).collect(),
            metadata: transfers
                .iter()
                .map(|t| t.metadata.as_ref().map(|metadata| serde_json::to_string(metadata).unwrap_or_default()))
                .collect(),
            reversal_reasons: transfers
                .iter()
                .map(|t| t.reversal_reason.as_ref().map(schemas::ReversalReason::as_str))
                .collect(),
            rejected_legs: transfers.iter().map(|t| t.rejected_leg.and_then(|leg| i16::try_from(leg).ok())).collect(),
            exceeded_limits: transfers.iter().map(|t| t.exceeded_limit.map(SpendingLimit::code)).collect(),
        }
    }
}

/// Moves the holds the batch settled out of `held`: posted, voided or
/// expired, with the amount posted.
async fn settle_holds(
    connection: &mut PgConnection,
    holds: &[(TransferId, TransferStatus, Option<Decimal>)],
) -> Result<(), sqlx::Error> {
    if holds.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = holds.iter().map(|(id, _, _)| id.as_uuid()).collect();
    let statuses: Vec<&str> = holds.iter().map(|(_, status, _)| status.code()).collect();
    let amounts: Vec<Option<Decimal>> = holds.iter().map(|(_, _, amount)| *amount).collect();
    sqlx::query!(
        r"update transfers set status = settled.status, settled_amount = settled.amount,
                               settled_at = statement_timestamp()
          from unnest($1::uuid[], $2::text[], $3::numeric[]) as settled (id, status, amount)
          where transfers.id = settled.id and transfers.status = 'held'",
        &ids,
        &statuses as &[&str],
        &amounts as &[Option<Decimal>],
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Inserts the rows of the account commands the batch decided.
async fn insert_account_commands(
    connection: &mut PgConnection,
    commands: &[AccountCommandRecord],
) -> Result<(), sqlx::Error> {
    if commands.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
    let account_ids: Vec<Uuid> = commands.iter().map(|c| c.account_id.as_uuid()).collect();
    let command_types: Vec<&str> = commands.iter().map(|c| c.command_type).collect();
    let reasons: Vec<Option<&str>> = commands.iter().map(|c| c.rejection_reason.map(RejectionReason::code)).collect();
    let fingerprints: Vec<&[u8]> = commands.iter().map(|c| c.fingerprint.as_slice()).collect();
    let requested_at: Vec<chrono::DateTime<Utc>> = commands.iter().map(|c| c.requested_at).collect();
    let topics: Vec<&str> = commands.iter().map(|c| c.position.topic.as_str()).collect();
    let partitions: Vec<i32> = commands.iter().map(|c| c.position.partition).collect();
    let offsets: Vec<i64> = commands.iter().map(|c| c.position.offset).collect();
    sqlx::query!(
        r"insert into account_commands (id, account_id, command_type, status, rejection_reason,
                                        request_fingerprint, requested_at, kafka_topic, kafka_partition, kafka_offset)
          select id, account_id, command_type, case when reason is null then 'completed' else 'rejected' end,
                 reason, fingerprint, requested_at, topic, partition, kafka_offset
          from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[],
                      $7::text[], $8::int[], $9::bigint[])
               as c (id, account_id, command_type, reason, fingerprint, requested_at, topic, partition, kafka_offset)",
        &ids,
        &account_ids,
        &command_types as &[&str],
        &reasons as &[Option<&str>],
        &fingerprints as &[&[u8]],
        &requested_at,
        &topics as &[&str],
        &partitions,
        &offsets,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes the payment orders for the provider, one outbox row each: each is
/// its own payout, claimed and retried on its own.
async fn insert_payment_orders(
    connection: &mut PgConnection,
    payments: &[PaymentRequested],
) -> Result<(), sqlx::Error> {
    if payments.is_empty() {
        return Ok(());
    }
    let payloads = payments
        .iter()
        .map(|payment| serde_json::to_string(payment).map_err(encode_error))
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<String> = payments.iter().map(|payment| payment.source_account_id.to_string()).collect();
    sqlx::query!(
        r"insert into outbox (destination, event_type, message_key, payload)
          select 'payments', $1, key, payload::json from unnest($2::text[], $3::text[]) as row (key, payload)",
        PaymentRequested::TYPE,
        &keys,
        &payloads,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes the entries and the final state of every account the batch
/// changed, under the locks the batch holds on those accounts. Entries are
/// written under the locks, never before: an account's entries are then
/// numbered (`entries.id`) in the order they were applied, which is the
/// order its history shows them and their balances after follow.
async fn write_balances(connection: &mut PgConnection, changes: &Changes) -> Result<(), sqlx::Error> {
    insert_entries(connection, &changes.entries).await?;
    update_accounts(connection, &changes.accounts).await
}

/// Inserts the batch's entries.
async fn insert_entries(connection: &mut PgConnection, entries: &[(TransferId, Entry)]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    // In account order, for the locality of the entries_account index.
    let mut entries: Vec<&(TransferId, Entry)> = entries.iter().collect();
    entries.sort_by_key(|(_, entry)| entry.account_id);
    let transfer_ids: Vec<Uuid> = entries.iter().map(|(id, _)| id.as_uuid()).collect();
    let account_ids: Vec<Uuid> = entries.iter().map(|(_, entry)| entry.account_id.as_uuid()).collect();
    let amounts: Vec<Decimal> = entries.iter().map(|(_, entry)| entry.amount).collect();
    let currencies: Vec<&str> = entries.iter().map(|(_, entry)| entry.currency.code()).collect();
    let balances_after: Vec<Decimal> = entries.iter().map(|(_, entry)| entry.balance_after).collect();
    sqlx::query!(
        r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
          select * from unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::numeric[])",
        &transfer_ids,
        &account_ids,
        &amounts,
        &currencies as &[&str],
        &balances_after,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes the final state of every account the batch changed: one row
/// update per touched account, however many transfers of the batch moved
/// it, so a hot merchant account costs one update per batch.
async fn update_accounts(connection: &mut PgConnection, accounts: &[AccountState]) -> Result<(), sqlx::Error> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.id.as_uuid()).collect();
    let balances: Vec<Decimal> = accounts.iter().map(|a| a.balance).collect();
    let held: Vec<Decimal> = accounts.iter().map(|a| a.held).collect();
    let statuses: Vec<&str> = accounts.iter().map(|a| a.status.code()).collect();
    let overdraft_limits: Vec<Decimal> = accounts.iter().map(|a| a.overdraft_limit).collect();
    let per_transfer_max: Vec<Option<Decimal>> = accounts.iter().map(|a| a.per_transfer_max).collect();
    let rolling_24h_max: Vec<Option<Decimal>> = accounts.iter().map(|a| a.rolling_24h_max).collect();
    sqlx::query!(
        r"update accounts set balance = changed.balance, held = changed.held, status = changed.status,
                              overdraft_limit = changed.overdraft_limit, per_transfer_max = changed.per_transfer_max,
                              rolling_24h_max = changed.rolling_24h_max, updated_at = now()
          from unnest($1::uuid[], $2::numeric[], $3::numeric[], $4::text[], $5::numeric[], $6::numeric[],
                      $7::numeric[])
               as changed (id, balance, held, status, overdraft_limit, per_transfer_max, rolling_24h_max)
          where accounts.id = changed.id",
        &ids,
        &balances,
        &held,
        &statuses as &[&str],
        &overdraft_limits,
        &per_transfer_max as &[Option<Decimal>],
        &rolling_24h_max as &[Option<Decimal>],
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Writes `events` as one outbox row (see [`platform::outbox::EVENT_BATCH_TYPE`]),
/// in the order they were decided, for the relay to publish one by one.
async fn write_events(connection: &mut PgConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let batch: Vec<BatchedEvent<'_, Event>> = events
        .iter()
        .map(|event| BatchedEvent { key: event_key(event).into(), event_type: event.type_name().into(), event })
        .collect();
    let payload = serde_json::to_string(&batch).map_err(encode_error)?;
    // Bound as text, as the statement's cast to json expects it.
    sqlx::query!(
        r"insert into outbox (destination, event_type, message_key, payload)
          values ('events', $1, $2, $3::json)",
        platform::outbox::EVENT_BATCH_TYPE,
        platform::outbox::EVENT_BATCH_KEY,
        &payload as &str,
    )
    .execute(connection)
    .await?;
    Ok(())
}

fn encode_error(error: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(error))
}

/// The Kafka key of an event: the account it is about (the one debited, or
/// the one funded by a deposit), so one account's events stay ordered.
fn event_key(event: &Event) -> String {
    let account = match event {
        Event::TransferCompleted(e) if e.kind == TransferKind::Deposit => Some(e.destination_account_id),
        Event::TransferCompleted(e) => Some(e.source_account_id),
        Event::TransferRejected(e) if e.kind == TransferKind::Deposit => e.destination_account_id,
        Event::TransferRejected(e) => e.source_account_id,
        Event::TransferHeld(e) => Some(e.source_account_id),
        Event::TransferVoided(e) => Some(e.source_account_id),
        Event::AccountStatusChanged(e) => Some(e.account_id),
        Event::AccountOverdraftLimitChanged(e) => Some(e.account_id),
        Event::AccountSpendingLimitsChanged(e) => Some(e.account_id),
        Event::AccountCommandRejected(e) => Some(e.account_id),
        Event::CommandIdReused(e) => e.account_id,
        Event::PayoutOutcomeConflicted(e) => Some(e.source_account_id),
        Event::CommandDeadLettered(e) => e.account_id,
    };
    match (account, event) {
        (Some(account), _) => account.to_string(),
        (None, Event::TransferRejected(e)) => e.transfer_id.to_string(),
        (None, Event::CommandIdReused(e)) => e.reused_id.to_string(),
        (None, Event::CommandDeadLettered(e)) => e.command_id.to_string(),
        (None, _) => String::new(),
    }
}

/// Records that the command `identity` went to the dead-letter topic, and
/// tells it through the outbox (`command.dead_lettered`), in one
/// transaction. Recording it again (a redelivery dead-lettered twice) keeps
/// the first record and tells nothing more.
///
/// # Errors
/// Database errors; the caller retries.
pub async fn record_dead_letter(
    pool: &PgPool,
    identity: &crate::decode::Identity,
    reason: &crate::decode::DeadLetterReason,
    position: &Position,
) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    let inserted = sqlx::query!(
        r"insert into dead_lettered_commands
              (command_id, command_type, account_id, reason, detail, kafka_topic, kafka_partition, kafka_offset)
          values ($1, $2, $3, $4, $5, $6, $7, $8)
          on conflict (command_id) do nothing",
        identity.command_id,
        identity.command_type.as_deref(),
        identity.account_id,
        reason.code,
        &reason.detail,
        &position.topic,
        position.partition,
        position.offset,
    )
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    if inserted > 0 {
        let event = Event::CommandDeadLettered(schemas::messages::CommandDeadLettered {
            version: schemas::messages::V1,
            command_id: identity.command_id,
            command_type: identity.command_type.clone(),
            account_id: identity.account_id.map(AccountId::from_uuid),
            reason: reason.code.to_owned(),
            detail: reason.detail.clone(),
            dead_lettered_at: Utc::now(),
        });
        // A batch of one, in the same lane as every other ledger event.
        write_events(&mut transaction, &[event]).await?;
    }
    transaction.commit().await
}

/// Stores, per partition, the offset after the last message of the batch. It
/// never moves backwards: a late, redelivered message (whose effect is a
/// no-op) must not rewind the partition.
async fn store_offsets(
    connection: &mut PgConnection,
    scope: &OffsetScope,
    positions: &[Position],
) -> Result<(), sqlx::Error> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for position in positions {
        let entry = next.entry((position.topic.as_str(), position.partition)).or_insert(0);
        *entry = (*entry).max(position.offset + 1);
    }
    if next.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = next.keys().map(|(topic, _)| *topic).collect();
    let partitions: Vec<i32> = next.keys().map(|(_, partition)| *partition).collect();
    let next_offsets: Vec<i64> = next.values().copied().collect();
    sqlx::query!(
        r"insert into consumer_offsets (cluster_id, consumer_group, topic, partition, next_offset)
          select $1, $2, topic, partition, next_offset
          from unnest($3::text[], $4::int[], $5::bigint[]) as offsets (topic, partition, next_offset)
          on conflict (cluster_id, consumer_group, topic, partition) do update
          set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset), updated_at = now()",
        &scope.cluster_id,
        &scope.consumer_group,
        &topics as &[&str],
        &partitions,
        &next_offsets,
    )
    .execute(connection)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("unknown code {0:?}")]
struct UnknownCode(String);

fn parse_currency(code: &str) -> Result<Currency, sqlx::Error> {
    code.trim().parse().map_err(|error| decode_error("currency", error))
}

fn decode_error(column: &str, error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_owned(), source: Box::new(error) }
}

/// The stored next offsets of `topic` for this cluster and group, by partition.
///
/// # Errors
/// Database errors.
pub async fn load_offsets(
    pool: &PgPool,
    cluster_id: &str,
    consumer_group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r"select partition, next_offset from consumer_offsets
          where cluster_id = $1 and consumer_group = $2 and topic = $3",
        cluster_id,
        consumer_group,
        topic,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.partition, row.next_offset)).collect())
}

/// How many partitions of `topic` have offsets stored under another cluster
/// id: a sign the broker was replaced and its topics started empty.
///
/// # Errors
/// Database errors.
pub async fn offsets_of_other_clusters(
    pool: &PgPool,
    cluster_id: &str,
    consumer_group: &str,
    topic: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from consumer_offsets
          where cluster_id <> $1 and consumer_group = $2 and topic = $3"#,
        cluster_id,
        consumer_group,
        topic,
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, status: &str) -> AccountRow {
        AccountRow {
            id: Uuid::from_u128(7),
            currency: "EUR".to_owned(),
            kind: kind.to_owned(),
            status: status.to_owned(),
            balance: Decimal::ZERO,
            held: Decimal::ZERO,
            overdraft_limit: Decimal::ZERO,
            per_transfer_max: None,
            rolling_24h_max: None,
        }
    }

    #[test]
    fn an_account_row_with_known_codes_reads_as_its_state() {
        for status in [AccountStatus::Active, AccountStatus::Frozen, AccountStatus::Closed] {
            // The stored code is the one the events carry.
            let json = serde_json::to_value(status).expect("serializes");
            assert_eq!(json.as_str(), Some(status.code()));
            for kind in [AccountKind::Customer, AccountKind::System] {
                let state = row(kind.code(), status.code()).into_state().expect("known codes");
                assert_eq!((state.kind, state.status), (kind, status));
            }
        }
    }

    #[test]
    fn an_unknown_account_status_is_an_error_naming_it_and_the_account_not_a_closed_account() {
        let error = row("customer", "dormant").into_state().expect_err("an unknown status");
        let message = error.to_string();
        assert!(matches!(error, sqlx::Error::ColumnDecode { ref index, .. } if index == "status"), "{message}");
        assert!(message.contains("\"dormant\""), "names the value: {message}");
        assert!(message.contains(&Uuid::from_u128(7).to_string()), "names the account: {message}");
    }

    #[test]
    fn an_unknown_account_kind_is_an_error_naming_it_and_the_account_not_a_customer_account() {
        let error = row("merchant", "active").into_state().expect_err("an unknown kind");
        let message = error.to_string();
        assert!(matches!(error, sqlx::Error::ColumnDecode { ref index, .. } if index == "kind"), "{message}");
        assert!(message.contains("\"merchant\""), "names the value: {message}");
        assert!(message.contains(&Uuid::from_u128(7).to_string()), "names the account: {message}");
    }
}
