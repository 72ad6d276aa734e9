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
use schemas::messages::{PayoutResult, TransferKind};
use schemas::{AccountId, Command, Currency, Event, Money, RejectionReason, TransferId};
use sqlx::{PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::decide::{AccountKind, AccountState, AccountStatus};
pub use crate::engine::Position;
use crate::engine::{Changes, Engine, Outcome, TransferRecord, TransferStatus};

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
    sqlx::query_scalar(
        r"select distinct kafka_partition from transfers
          where kind = 'hold' and status = 'held' and expires_at <= $1 and kafka_topic = $2",
    )
    .bind(Utc::now() - grace)
    .bind(topic)
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
    // For this transaction only: a stray lock on an account row, or a stuck
    // statement, fails the batch (which is retried) instead of hanging it.
    sqlx::query("select set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)")
        .bind(format!("{}ms", timeouts.statement_timeout_ms))
        .bind(format!("{}ms", timeouts.lock_timeout_ms))
        .execute(&mut *transaction)
        .await?;

    let expired: Vec<Uuid> = match sweep {
        Some(sweep) if !sweep.partitions.is_empty() => {
            sqlx::query_scalar(
                r"select id from transfers
                  where kind = 'hold' and status = 'held' and expires_at <= $1
                    and kafka_topic = $2 and kafka_partition = any($3)
                  order by expires_at limit $4",
            )
            .bind(now - sweep.grace)
            .bind(&sweep.topic)
            .bind(&sweep.partitions)
            .bind(EXPIRED_HOLDS_PER_BATCH_MAX)
            .fetch_all(&mut *transaction)
            .await?
        }
        _ => Vec::new(),
    };

    let late = expired.is_empty() && commands.iter().all(|(command, _)| Engine::decidable_before_locking(command));
    let decided = if late {
        let mut account_ids: Vec<AccountId> =
            commands.iter().flat_map(|(command, _)| Engine::accounts_of(command, &HashMap::new())).collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        decide_then_lock(&mut transaction, now, commands, &account_ids, cache).await?
    } else {
        let mut transfer_ids: Vec<Uuid> = commands.iter().map(|(command, _)| command.id()).collect();
        transfer_ids.extend(
            commands.iter().flat_map(|(command, _)| Engine::referenced_transfers(command)).map(|id| id.as_uuid()),
        );
        transfer_ids.extend(&expired);
        transfer_ids.sort_unstable();
        transfer_ids.dedup();
        let unlocked = load_transfers(&mut transaction, &transfer_ids).await?;
        let mut account_ids: Vec<AccountId> =
            commands.iter().flat_map(|(command, _)| Engine::accounts_of(command, &unlocked)).collect();
        account_ids.extend(
            expired
                .iter()
                .filter_map(|id| unlocked.get(&TransferId::from_uuid(*id)))
                .filter_map(|hold| hold.source_account_id),
        );
        account_ids.sort_unstable();
        account_ids.dedup();
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
    let accounts = read_accounts(connection, account_ids, true).await?;
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
    let (mut read, unremembered) = cache.recall(account_ids);
    if !unremembered.is_empty() {
        read.extend(read_accounts(connection, &unremembered, false).await?);
        read.sort_unstable_by_key(|account| account.id);
    }
    let read_ms = started.elapsed().as_millis();
    // Decided as if no command of the batch had been decided before, which
    // is nearly always so; the insert of the transfer rows tells (below).
    let mut known: Vec<TransferRecord> = Vec::new();
    let (mut outcomes, _, mut changes) =
        decide(now, commands, read.clone(), known.clone(), HashMap::new(), Vec::new(), &[]);
    let decided_ms = started.elapsed().as_millis();
    sqlx::query("savepoint decided_unlocked").execute(&mut *connection).await?;
    if !write_records(connection, &changes, DecidedBefore::Skip).await? {
        // Some command of the batch has a row already: a redelivery (after
        // a crash or a rebalance), or another processor's meanwhile. Decide
        // again knowing those rows. Should one appear even now, the primary
        // key refuses the insert and the batch is retried.
        sqlx::query("rollback to savepoint decided_unlocked").execute(&mut *connection).await?;
        let mut ids: Vec<Uuid> = commands.iter().map(|(command, _)| command.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        known = load_transfers(connection, &ids).await?.into_values().collect();
        (outcomes, _, changes) = decide(now, commands, read.clone(), known.clone(), HashMap::new(), Vec::new(), &[]);
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
    let (relocked_outcomes, _, relocked) =
        decide(now, commands, locked.clone(), known.clone(), HashMap::new(), Vec::new(), &[]);
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
    sqlx::query("rollback to savepoint decided_unlocked").execute(&mut *connection).await?;
    let known: HashMap<TransferId, TransferRecord> = known.into_iter().map(|record| (record.id, record)).collect();
    let decided = lock_then_decide(connection, now, commands, known, account_ids, &[]).await?;
    Ok(Decided { locking: Locking::LateRedecided, ..decided })
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
    let rows = sqlx::query(
        r"select t.id, t.kind, t.status, t.rejection_reason, t.source_account_id, t.destination_account_id,
                 t.amount, t.currency, t.related_transfer_id, t.expires_at, t.settled_amount, t.requested_at,
                 t.request_fingerprint,
                 exists (select 1 from transfers r
                         where r.related_transfer_id = t.id and r.kind = 'reversal' and r.status = 'completed') as reversed
          from unnest($1::uuid[]) as wanted (id)
          cross join lateral (select * from transfers where id = wanted.id offset 0) t",
    )
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut transfers = HashMap::with_capacity(rows.len());
    for row in rows {
        let currency: Option<String> = row.try_get("currency")?;
        let currency = currency.map(|code| parse_currency(&code)).transpose()?;
        let amount: Option<Decimal> = row.try_get("amount")?;
        let money = match (amount, currency) {
            (Some(amount), Some(currency)) => {
                Some(Money::new(amount, currency).map_err(|error| decode_error("amount", error))?)
            }
            _ => None,
        };
        let kind: String = row.try_get("kind")?;
        let status: String = row.try_get("status")?;
        let reason: Option<String> = row.try_get("rejection_reason")?;
        let record = TransferRecord {
            id: TransferId::from_uuid(row.try_get("id")?),
            kind: TransferKind::from_code(&kind).ok_or_else(|| decode_error("kind", UnknownCode(kind)))?,
            status: TransferStatus::from_code(&status).ok_or_else(|| decode_error("status", UnknownCode(status)))?,
            rejection_reason: reason.as_deref().and_then(RejectionReason::from_code),
            source_account_id: row.try_get::<Option<Uuid>, _>("source_account_id")?.map(AccountId::from_uuid),
            destination_account_id: row.try_get::<Option<Uuid>, _>("destination_account_id")?.map(AccountId::from_uuid),
            money,
            related_transfer_id: row.try_get::<Option<Uuid>, _>("related_transfer_id")?.map(TransferId::from_uuid),
            expires_at: row.try_get("expires_at")?,
            settled_amount: row.try_get("settled_amount")?,
            requested_at: row.try_get("requested_at")?,
            fingerprint: row.try_get("request_fingerprint")?,
            position: None,
            reversed: row.try_get("reversed")?,
        };
        transfers.insert(record.id, record);
    }
    Ok(transfers)
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
    let sql = if lock {
        r"select id, currency, kind, status, balance, held, overdraft_limit
          from accounts where id = any($1) order by id for update"
    } else {
        r"select id, currency, kind, status, balance, held, overdraft_limit
          from accounts where id = any($1) order by id"
    };
    let rows = sqlx::query(sql).bind(&ids).fetch_all(&mut *connection).await?;
    rows.iter()
        .map(|row| {
            Ok(AccountState {
                id: AccountId::from_uuid(row.try_get("id")?),
                currency: parse_currency(row.try_get("currency")?)?,
                kind: match row.try_get::<&str, _>("kind")? {
                    "system" => AccountKind::System,
                    _ => AccountKind::Customer,
                },
                status: match row.try_get::<&str, _>("status")? {
                    "active" => AccountStatus::Active,
                    "frozen" => AccountStatus::Frozen,
                    _ => AccountStatus::Closed,
                },
                balance: row.try_get("balance")?,
                held: row.try_get("held")?,
                overdraft_limit: row.try_get("overdraft_limit")?,
            })
        })
        .collect()
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
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select payment_id, result from payout_outcomes where payment_id = any($1)")
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, result)| PayoutResult::from_code(&result).map(|result| (TransferId::from_uuid(id), result)))
        .collect())
}

async fn load_account_commands(
    connection: &mut PgConnection,
    commands: &[(Command, Position)],
) -> Result<HashMap<Uuid, Vec<u8>>, sqlx::Error> {
    let ids: Vec<Uuid> = commands
        .iter()
        .filter(|(command, _)| {
            matches!(
                command,
                Command::AccountFrozen(_)
                    | Command::AccountUnfrozen(_)
                    | Command::AccountClosed(_)
                    | Command::AccountOverdraftLimitSet(_)
            )
        })
        .map(|(command, _)| command.id())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("select id, request_fingerprint from account_commands where id = any($1)")
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
    Ok(rows.into_iter().collect())
}

fn status_code(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Frozen => "frozen",
        AccountStatus::Closed => "closed",
    }
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
    if !changes.new_transfers.is_empty() {
        // Inserted in key order: neighbouring keys land on neighbouring
        // index pages, which measurably beats random order.
        let mut transfers: Vec<&TransferRecord> = changes.new_transfers.iter().collect();
        transfers.sort_unstable_by_key(|transfer| transfer.id);
        let position = |record: &TransferRecord| {
            record.position.clone().unwrap_or(Position {
                topic: String::new(),
                partition: 0,
                offset: 0,
                timestamp: None,
            })
        };
        let insert = match decided_before {
            DecidedBefore::Fail => TRANSFERS_INSERT_SQL.to_owned(),
            DecidedBefore::Skip => format!("{TRANSFERS_INSERT_SQL} on conflict (id) do nothing"),
        };
        let inserted = sqlx::query(&insert)
            .bind(transfers.iter().map(|t| t.id.as_uuid()).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.kind.code()).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.status.code()).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.rejection_reason.map(RejectionReason::code)).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.source_account_id.map(|id| id.as_uuid())).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.destination_account_id.map(|id| id.as_uuid())).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.money.map(|money| money.amount().value())).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.money.map(|money| money.currency().code())).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.related_transfer_id.map(|id| id.as_uuid())).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.expires_at).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.settled_amount).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.requested_at).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| t.fingerprint.as_slice()).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| position(t).topic).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| position(t).partition).collect::<Vec<_>>())
            .bind(transfers.iter().map(|t| position(t).offset).collect::<Vec<_>>())
            .execute(&mut *connection)
            .await?
            .rows_affected();
        if usize::try_from(inserted).ok() != Some(transfers.len()) {
            return Ok(false);
        }
    }

    let transfers_ms = started.elapsed().as_millis();
    if !changes.settled_holds.is_empty() {
        let holds = &changes.settled_holds;
        sqlx::query(
            r"update transfers set status = settled.status, settled_amount = settled.amount
              from unnest($1::uuid[], $2::text[], $3::numeric[]) as settled (id, status, amount)
              where transfers.id = settled.id and transfers.status = 'held'",
        )
        .bind(holds.iter().map(|(id, _, _)| id.as_uuid()).collect::<Vec<_>>())
        .bind(holds.iter().map(|(_, status, _)| status.code()).collect::<Vec<_>>())
        .bind(holds.iter().map(|(_, _, amount)| *amount).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }

    if !changes.account_commands.is_empty() {
        let commands = &changes.account_commands;
        sqlx::query(
            r"insert into account_commands (id, account_id, command_type, status, rejection_reason,
                                            request_fingerprint, requested_at, kafka_topic, kafka_partition, kafka_offset)
              select id, account_id, command_type, case when reason is null then 'completed' else 'rejected' end,
                     reason, fingerprint, requested_at, topic, partition, kafka_offset
              from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[],
                          $7::text[], $8::int[], $9::bigint[])
                   as c (id, account_id, command_type, reason, fingerprint, requested_at, topic, partition, kafka_offset)",
        )
        .bind(commands.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.account_id.as_uuid()).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.command_type).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.rejection_reason.map(RejectionReason::code)).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.fingerprint.as_slice()).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.requested_at).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.position.topic.as_str()).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.position.partition).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.position.offset).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }

    // Payment orders for the provider, one row each: each is its own
    // payout, claimed and retried on its own.
    if !changes.payments.is_empty() {
        let payloads = changes
            .payments
            .iter()
            .map(|payment| serde_json::to_string(payment).map_err(encode_error))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            r"insert into outbox (destination, event_type, message_key, payload)
              select 'payments', $1, key, payload::json from unnest($2::text[], $3::text[]) as row (key, payload)",
        )
        .bind(schemas::messages::PaymentRequested::TYPE)
        .bind(changes.payments.iter().map(|payment| payment.source_account_id.to_string()).collect::<Vec<_>>())
        .bind(payloads)
        .execute(&mut *connection)
        .await?;
    }
    // The batch's events, one row, before the locks (as the rows above):
    // written under them, the few milliseconds of this insert made the
    // locked tail longer, and a second processor then added nothing
    // (measured: two processors 0.86x one, against 1.4x with the events
    // written before the locks).
    write_events(connection, &changes.events).await?;
    tracing::debug!(transfers_ms, outbox_ms = started.elapsed().as_millis(), "write timings (cumulative)");
    Ok(true)
}

const TRANSFERS_INSERT_SQL: &str = r"
    insert into transfers (id, kind, status, rejection_reason, source_account_id, destination_account_id,
                           amount, currency, related_transfer_id, expires_at, settled_amount,
                           requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset)
    select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                         $7::numeric[], $8::text[], $9::uuid[], $10::timestamptz[], $11::numeric[],
                         $12::timestamptz[], $13::bytea[], $14::text[], $15::int[], $16::bigint[])";

/// Writes the entries and the final state of every account the batch
/// changed, under the locks the batch holds on those accounts. Entries are
/// written under the locks, never before: an account's entries are then
/// numbered (`entries.id`) in the order they were applied, which is the
/// order its history shows them and their balances after follow.
async fn write_balances(connection: &mut PgConnection, changes: &Changes) -> Result<(), sqlx::Error> {
    if !changes.entries.is_empty() {
        // In account order, for the locality of the entries_account index.
        let mut entries: Vec<&(TransferId, crate::decide::Entry)> = changes.entries.iter().collect();
        entries.sort_by_key(|(_, entry)| entry.account_id);
        sqlx::query(
            r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
              select * from unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::numeric[])",
        )
        .bind(entries.iter().map(|(id, _)| id.as_uuid()).collect::<Vec<_>>())
        .bind(entries.iter().map(|(_, entry)| entry.account_id.as_uuid()).collect::<Vec<_>>())
        .bind(entries.iter().map(|(_, entry)| entry.amount).collect::<Vec<_>>())
        .bind(entries.iter().map(|(_, entry)| entry.currency.code()).collect::<Vec<_>>())
        .bind(entries.iter().map(|(_, entry)| entry.balance_after).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }

    let accounts = &changes.accounts;
    if accounts.is_empty() {
        return Ok(());
    }
    // One row update per touched account, however many transfers of the
    // batch moved it: a hot merchant account costs one update per batch.
    sqlx::query(
        r"update accounts set balance = changed.balance, held = changed.held, status = changed.status,
                              overdraft_limit = changed.overdraft_limit, updated_at = now()
          from unnest($1::uuid[], $2::numeric[], $3::numeric[], $4::text[], $5::numeric[])
               as changed (id, balance, held, status, overdraft_limit)
          where accounts.id = changed.id",
    )
    .bind(accounts.iter().map(|a| a.id.as_uuid()).collect::<Vec<_>>())
    .bind(accounts.iter().map(|a| a.balance).collect::<Vec<_>>())
    .bind(accounts.iter().map(|a| a.held).collect::<Vec<_>>())
    .bind(accounts.iter().map(|a| status_code(a.status)).collect::<Vec<_>>())
    .bind(accounts.iter().map(|a| a.overdraft_limit).collect::<Vec<_>>())
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
    sqlx::query(
        r"insert into outbox (destination, event_type, message_key, payload)
          values ('events', $1, $2, $3::json)",
    )
    .bind(platform::outbox::EVENT_BATCH_TYPE)
    .bind(platform::outbox::EVENT_BATCH_KEY)
    .bind(serde_json::to_string(&batch).map_err(encode_error)?)
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
    let inserted = sqlx::query(
        r"insert into dead_lettered_commands
              (command_id, command_type, account_id, reason, detail, kafka_topic, kafka_partition, kafka_offset)
          values ($1, $2, $3, $4, $5, $6, $7, $8)
          on conflict (command_id) do nothing",
    )
    .bind(identity.command_id)
    .bind(identity.command_type.as_deref())
    .bind(identity.account_id)
    .bind(reason.code)
    .bind(&reason.detail)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
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
    sqlx::query(
        r"insert into consumer_offsets (cluster_id, consumer_group, topic, partition, next_offset)
          select $1, $2, topic, partition, next_offset
          from unnest($3::text[], $4::int[], $5::bigint[]) as offsets (topic, partition, next_offset)
          on conflict (cluster_id, consumer_group, topic, partition) do update
          set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset), updated_at = now()",
    )
    .bind(&scope.cluster_id)
    .bind(&scope.consumer_group)
    .bind(next.keys().map(|(topic, _)| *topic).collect::<Vec<_>>())
    .bind(next.keys().map(|(_, partition)| *partition).collect::<Vec<_>>())
    .bind(next.values().copied().collect::<Vec<_>>())
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
    sqlx::query_as(
        r"select partition, next_offset from consumer_offsets
          where cluster_id = $1 and consumer_group = $2 and topic = $3",
    )
    .bind(cluster_id)
    .bind(consumer_group)
    .bind(topic)
    .fetch_all(pool)
    .await
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
    sqlx::query_scalar(
        r"select count(*) from consumer_offsets
          where cluster_id <> $1 and consumer_group = $2 and topic = $3",
    )
    .bind(cluster_id)
    .bind(consumer_group)
    .bind(topic)
    .fetch_one(pool)
    .await
}
