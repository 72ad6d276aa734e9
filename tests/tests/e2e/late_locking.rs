//! Batches decided before their accounts are locked (`processor::ledger`):
//! a concurrent change to an account between the unlocked read and the lock
//! is caught by the locked read, and what commits is what a batch that
//! locked first would have committed. Each test holds a real Postgres lock
//! in a second transaction to put the change exactly in that window.

use std::time::Duration;

use chrono::Utc;
use ledgerline_tests::{TestDatabase, dec};
use processor::Locking;
use processor::engine::Outcome;
use processor::ledger::{AccountCache, BatchResult, OffsetScope, Position, Timeouts, apply_batch};
use rust_decimal::Decimal;
use schemas::messages::{AccountDeposited, TransferPost, TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, TransferId};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// How long a test waits for the batch to queue behind its lock.
const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(20);

fn eur(amount: &str) -> Money {
    Money::parse(amount, Currency::EUR).expect("valid money")
}

async fn open(pool: &PgPool) -> AccountId {
    let id = AccountId::new_random();
    sqlx::query("insert into accounts (id, currency, kind) values ($1, 'EUR', 'customer')")
        .bind(id.as_uuid())
        .execute(pool)
        .await
        .expect("account");
    id
}

fn transfer(source: AccountId, destination: AccountId, amount: &str) -> Command {
    Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id: TransferId::from_uuid(Uuid::new_v4()),
        source_account_id: source,
        destination_account_id: destination,
        money: eur(amount),
        metadata: None,
        reference: None,
        requested_at: Utc::now(),
    })
}

fn deposit(account: AccountId, amount: &str) -> Command {
    Command::AccountDeposited(AccountDeposited {
        version: V1,
        transfer_id: TransferId::from_uuid(Uuid::new_v4()),
        account_id: account,
        money: eur(amount),
        requested_at: Utc::now(),
    })
}

/// Applies a batch as a processor with no memory of accounts: it reads them.
async fn apply(pool: &PgPool, commands: Vec<Command>, first_offset: i64) -> BatchResult {
    apply_remembering(pool, commands, first_offset, &AccountCache::new(0)).await
}

async fn apply_remembering(
    pool: &PgPool,
    commands: Vec<Command>,
    first_offset: i64,
    cache: &AccountCache,
) -> BatchResult {
    let scope = OffsetScope { cluster_id: "late".into(), consumer_group: "late".into() };
    let with_positions: Vec<(Command, Position)> = commands
        .into_iter()
        .zip(first_offset..)
        .map(|(command, offset)| (command, Position { topic: "late".into(), partition: 0, offset, timestamp: None }))
        .collect();
    let positions: Vec<Position> = with_positions.iter().map(|(_, position)| position.clone()).collect();
    apply_batch(pool, &scope, &with_positions, &positions, None, Timeouts::DEFAULT, cache).await.expect("batch applies")
}

/// Another processor's deposit into `account`, left uncommitted so that it
/// holds the account's lock: the same rows the processor writes for a
/// deposit, so the ledger stays sound once it commits.
async fn uncommitted_deposit(connection: &mut PgConnection, account: AccountId, amount: Decimal) {
    let cash_in = AccountId::cash_in(Currency::EUR);
    sqlx::query("begin").execute(&mut *connection).await.expect("begin");
    let balances: Vec<(Uuid, Decimal)> =
        sqlx::query_as("select id, balance from accounts where id = any($1) order by id for update")
            .bind([cash_in.as_uuid(), account.as_uuid()])
            .fetch_all(&mut *connection)
            .await
            .expect("lock");
    let balance = |id: AccountId| balances.iter().find(|(found, _)| *found == id.as_uuid()).expect("locked").1;
    let deposit = Uuid::new_v4();
    sqlx::query(
        r"insert into transfers (id, kind, source_account_id, destination_account_id, amount, currency, status,
                                 requested_at, kafka_topic, kafka_partition, kafka_offset)
          values ($1, 'deposit', $2, $3, $4, 'EUR', 'completed', now(), 'other', 0, 0)",
    )
    .bind(deposit)
    .bind(cash_in.as_uuid())
    .bind(account.as_uuid())
    .bind(amount)
    .execute(&mut *connection)
    .await
    .expect("deposit row");
    sqlx::query(
        r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
          values ($1, $2, $3, 'EUR', $4), ($1, $5, $6, 'EUR', $7)",
    )
    .bind(deposit)
    .bind(cash_in.as_uuid())
    .bind(-amount)
    .bind(balance(cash_in) - amount)
    .bind(account.as_uuid())
    .bind(amount)
    .bind(balance(account) + amount)
    .execute(&mut *connection)
    .await
    .expect("deposit entries");
    sqlx::query("update accounts set balance = balance + case when id = $1 then $3 else -$3 end where id in ($1, $2)")
        .bind(account.as_uuid())
        .bind(cash_in.as_uuid())
        .bind(amount)
        .execute(&mut *connection)
        .await
        .expect("deposit balances");
}

/// Waits until some session waits for a row lock: the batch has read its
/// accounts, written its rows, and queued behind the uncommitted deposit.
async fn wait_for_a_lock_waiter(pool: &PgPool) {
    wait_for_lock_waiters(pool, 1).await;
}

async fn wait_for_lock_waiters(pool: &PgPool, waiters: i64) {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT_TIMEOUT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting >= waiters {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the batch never waited for the account lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies `commands` while another transaction's deposit into `account`
/// holds the account's lock: the batch reads the balance before the
/// deposit, queues behind it, and the deposit commits before the batch
/// gets the lock.
async fn apply_behind_a_deposit(
    pool: &PgPool,
    account: AccountId,
    amount: &str,
    commands: Vec<Command>,
    first_offset: i64,
) -> BatchResult {
    let mut other = pool.acquire().await.expect("connection");
    uncommitted_deposit(&mut other, account, dec(amount)).await;
    let batch = tokio::spawn({
        let pool = pool.clone();
        async move { apply(&pool, commands, first_offset).await }
    });
    wait_for_a_lock_waiter(pool).await;
    sqlx::query("commit").execute(&mut *other).await.expect("commit");
    batch.await.expect("batch task")
}

async fn balance(pool: &PgPool, account: AccountId) -> Decimal {
    sqlx::query_scalar("select balance from accounts where id = $1")
        .bind(account.as_uuid())
        .fetch_one(pool)
        .await
        .expect("balance")
}

async fn assert_sound(pool: &PgPool) {
    let problems = processor::verify::problems(pool).await.expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
}

async fn transfer_status(pool: &PgPool, command: &Command) -> (String, Option<String>) {
    sqlx::query_as("select status, rejection_reason from transfers where id = $1")
        .bind(command.id())
        .fetch_one(pool)
        .await
        .expect("decided")
}

async fn outbox_types(pool: &PgPool, command: &Command) -> Vec<String> {
    sqlx::query_scalar(
        "select event_type from outbox_events where payload->>'transfer_id' = $1 order by outbox_id, event_index",
    )
    .bind(command.id().to_string())
    .fetch_all(pool)
    .await
    .expect("outbox")
}

#[tokio::test]
async fn a_batch_of_transfers_locks_its_accounts_last_and_one_that_reads_a_hold_locks_them_first() {
    let database = TestDatabase::create().await.expect("database");
    let pool = &database.pool;
    let (a, b) = (open(pool).await, open(pool).await);
    let funded = apply(pool, vec![deposit(a, "100.00")], 1).await;
    assert_eq!(funded.locking, Locking::Late);
    let paid = apply(pool, vec![transfer(a, b, "10.00")], 2).await;
    assert_eq!(paid.locking, Locking::Late);
    let post = Command::TransferPost(TransferPost {
        version: V1,
        transfer_id: TransferId::from_uuid(Uuid::new_v4()),
        hold_id: TransferId::from_uuid(Uuid::new_v4()),
        source_account_id: a,
        money: None,
        requested_at: Utc::now(),
    });
    let settled = apply(pool, vec![transfer(a, b, "1.00"), post], 3).await;
    assert_eq!(settled.locking, Locking::First);
    assert_sound(&database.pool).await;
}

#[tokio::test]
async fn a_credit_committed_between_the_read_and_the_lock_is_in_the_balances_after() {
    let database = TestDatabase::create().await.expect("database");
    let pool = database.pool.clone();
    let (a, b) = (open(&pool).await, open(&pool).await);
    apply(&pool, vec![deposit(a, "100.00"), deposit(b, "5.00")], 1).await;

    let command = transfer(a, b, "10.00");
    let result = apply_behind_a_deposit(&pool, b, "50.00", vec![command.clone()], 3).await;

    assert_eq!(result.locking, Locking::LateRebalanced);
    assert_eq!(transfer_status(&pool, &command).await, ("completed".to_owned(), None));
    // 5 + 50 (the other deposit, committed first) + 10.
    let (balance, last_after): (Decimal, Decimal) = sqlx::query_as(
        "select balance, (select balance_after from entries where account_id = $1 order by id desc limit 1) \
         from accounts where id = $1",
    )
    .bind(b.as_uuid())
    .fetch_one(&pool)
    .await
    .expect("balance");
    assert_eq!((balance, last_after), (dec("65.00"), dec("65.00")));
    assert_eq!(outbox_types(&pool, &command).await, ["transfer.completed"]);
    assert_sound(&database.pool).await;
}

#[tokio::test]
async fn a_debit_refused_on_the_unlocked_read_is_applied_when_the_locked_read_finds_the_funds() {
    let database = TestDatabase::create().await.expect("database");
    let pool = database.pool.clone();
    let (a, b) = (open(&pool).await, open(&pool).await);
    apply(&pool, vec![deposit(a, "5.00")], 1).await;

    let command = transfer(a, b, "10.00");
    let result = apply_behind_a_deposit(&pool, a, "100.00", vec![command.clone()], 2).await;

    // Decided on the unlocked read (5.00) it was insufficient funds; under
    // the lock (105.00) it is not, and only that decision is kept.
    assert_eq!(result.locking, Locking::LateRedecided);
    assert_eq!(transfer_status(&pool, &command).await, ("completed".to_owned(), None));
    assert_eq!(outbox_types(&pool, &command).await, ["transfer.completed"]);
    assert_eq!(balance(&pool, a).await, dec("95.00"));
    assert_sound(&database.pool).await;
}

#[tokio::test]
async fn verify_reports_an_entry_whose_balance_after_breaks_its_accounts_running_sum() {
    let database = TestDatabase::create().await.expect("database");
    let pool = &database.pool;
    let (a, b) = (open(pool).await, open(pool).await);
    apply(pool, vec![deposit(a, "100.00"), transfer(a, b, "10.00"), transfer(a, b, "20.00")], 1).await;
    assert_sound(pool).await;
    // Every total still right; only the first transfer's line on `b` claims
    // the balance it had after the second.
    sqlx::query(
        "update entries set balance_after = 30.00 where account_id = $1 \
         and id = (select min(id) from entries where account_id = $1)",
    )
    .bind(b.as_uuid())
    .execute(pool)
    .await
    .expect("plant");
    let problems = processor::verify::problems(pool).await.expect("verify");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("entries up to it sum to 10"), "{problems:?}");
}

#[tokio::test]
async fn a_processor_that_remembers_a_balance_another_processor_moved_since_books_the_current_one() {
    let database = TestDatabase::create().await.expect("database");
    let pool = &database.pool;
    let (a, b, c) = (open(pool).await, open(pool).await, open(pool).await);
    let (first, second) = (AccountCache::new(16), AccountCache::new(16));
    let funded = apply_remembering(pool, vec![deposit(a, "100.00"), deposit(c, "100.00")], 1, &first).await;
    assert_eq!(funded.locking, Locking::Late);
    assert!(!first.is_empty());
    // The first processor remembers a at 100.00 and b at 0; the second one
    // pays 30.00 into b and takes 20.00 from a.
    apply_remembering(pool, vec![transfer(c, b, "30.00"), transfer(a, c, "20.00")], 3, &second).await;
    // The first one pays 70.00 from a to b, deciding on 100.00 and 0.
    let command = transfer(a, b, "70.00");
    let stale = apply_remembering(pool, vec![command.clone()], 5, &first).await;
    assert_eq!(stale.locking, Locking::LateRebalanced);
    assert_eq!(transfer_status(pool, &command).await, ("completed".to_owned(), None));
    // And from 10.00 left, 20.00 is refused: its memory is current again.
    let refused = transfer(a, b, "20.00");
    let current = apply_remembering(pool, vec![refused.clone()], 6, &first).await;
    assert_eq!(current.locking, Locking::Late);
    assert_eq!(transfer_status(pool, &refused).await, ("rejected".to_owned(), Some("insufficient_funds".to_owned())));
    assert_eq!(balance(pool, a).await, dec("10.00"));
    assert_sound(pool).await;
}

#[tokio::test]
async fn a_batch_decided_again_keeps_no_stale_balance_when_another_deposit_takes_the_lock_it_gave_up() {
    let database = TestDatabase::create().await.expect("database");
    let pool = database.pool.clone();
    let (a, b) = (open(&pool).await, open(&pool).await);
    apply(&pool, vec![deposit(a, "5.00")], 1).await;

    // One deposit holds a's lock; the batch queues behind it; a second
    // deposit queues too.
    let mut first = pool.acquire().await.expect("connection");
    uncommitted_deposit(&mut first, a, dec("100.00")).await;
    let command = transfer(a, b, "10.00");
    let batch = tokio::spawn({
        let (pool, command) = (pool.clone(), command.clone());
        async move { apply(&pool, vec![command], 2).await }
    });
    wait_for_lock_waiters(&pool, 1).await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut connection = pool.acquire().await.expect("connection");
            uncommitted_deposit(&mut connection, a, dec("7.00")).await;
            sqlx::query("commit").execute(&mut *connection).await.expect("commit");
        }
    });
    wait_for_lock_waiters(&pool, 2).await;
    // The batch decided on 5.00 (refused) and finds 105.00 under the lock:
    // it decides again. Whether the second deposit gets in before or after
    // it, every balance must be the sum of its entries.
    sqlx::query("commit").execute(&mut *first).await.expect("commit");
    let result = batch.await.expect("batch task");
    second.await.expect("second deposit");

    assert_eq!(result.locking, Locking::LateRedecided);
    assert_eq!(transfer_status(&pool, &command).await, ("completed".to_owned(), None));
    assert_eq!(balance(&pool, a).await, dec("102.00"), "5 + 100 + 7 - 10");
    assert_sound(&pool).await;
}

#[tokio::test]
async fn a_redelivered_transfer_in_a_batch_decided_again_under_the_lock_stays_applied_once() {
    let database = TestDatabase::create().await.expect("database");
    let pool = database.pool.clone();
    let (a, b) = (open(&pool).await, open(&pool).await);
    apply(&pool, vec![deposit(a, "5.00")], 1).await;
    let earlier = transfer(a, b, "2.00");
    apply(&pool, vec![earlier.clone()], 2).await;

    // a has 3.00. The batch carries the earlier transfer again (a
    // redelivery) and a new one of 10.00, refused on 3.00 but affordable
    // once the deposit holding a's lock commits.
    let new = transfer(a, b, "10.00");
    let result = apply_behind_a_deposit(&pool, a, "100.00", vec![earlier.clone(), new.clone()], 2).await;

    assert_eq!(result.locking, Locking::LateRedecided);
    assert_eq!(result.outcomes, [Outcome::AlreadyDecided, Outcome::Applied]);
    assert_eq!(transfer_status(&pool, &new).await, ("completed".to_owned(), None));
    assert_eq!(outbox_types(&pool, &earlier).await, ["transfer.completed"], "told once, by its first application");
    assert_eq!(outbox_types(&pool, &new).await, ["transfer.completed"]);
    assert_eq!(balance(&pool, a).await, dec("93.00"), "5 - 2 + 100 - 10");
    assert_sound(&pool).await;
}

/// Applies a batch as a processor of its own (its own partition), with no
/// memory of accounts.
async fn apply_on_partition(pool: PgPool, commands: Vec<Command>, partition: i32) -> BatchResult {
    let scope = OffsetScope { cluster_id: "limits".into(), consumer_group: "limits".into() };
    let with_positions: Vec<(Command, Position)> = commands
        .into_iter()
        .zip(0..)
        .map(|(command, offset)| (command, Position { topic: "limits".into(), partition, offset, timestamp: None }))
        .collect();
    let positions: Vec<Position> = with_positions.iter().map(|(_, position)| position.clone()).collect();
    apply_batch(&pool, &scope, &with_positions, &positions, None, Timeouts::DEFAULT, &AccountCache::new(0))
        .await
        .expect("batch applies")
}

/// A rolling spending limit holds against debits decided at the same time
/// by different processors: each decides on an unlocked read that shows
/// nothing debited yet, and only the locked read (with what the others
/// committed meanwhile) can refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_from_several_processors_cannot_pass_a_rolling_limit_together() {
    let database = TestDatabase::create().await.expect("database");
    let pool = database.pool.clone();
    let (limited, payee) = (open(&pool).await, open(&pool).await);
    apply(&pool, vec![deposit(limited, "1000.00")], 0).await;
    sqlx::query("update accounts set rolling_24h_max = 100 where id = $1")
        .bind(limited.as_uuid())
        .execute(&pool)
        .await
        .expect("limit");
    let batches: Vec<_> = (0..8)
        .map(|partition| {
            tokio::spawn(apply_on_partition(pool.clone(), vec![transfer(limited, payee, "30.00")], partition))
        })
        .collect();
    let mut applied = 0;
    for batch in batches {
        let result = batch.await.expect("task");
        match result.outcomes[0] {
            Outcome::Applied => applied += 1,
            Outcome::Rejected(reason) => assert_eq!(reason, schemas::RejectionReason::LimitExceeded),
            Outcome::AlreadyDecided => panic!("a fresh command was taken for decided"),
        }
    }
    assert_eq!(applied, 3, "three debits of 30 fit under 100");
    let debited: Decimal = sqlx::query_scalar("select -sum(amount) from entries where account_id = $1 and amount < 0")
        .bind(limited.as_uuid())
        .fetch_one(&pool)
        .await
        .expect("debits");
    assert_eq!(debited, dec("90.00"));
    assert_sound(&pool).await;
}
