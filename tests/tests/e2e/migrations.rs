//! Migrations over a ledger an earlier release filled: no row is lost, and
//! what the rows mean to the processor stays the same.

use chrono::Utc;
use ledgerline_tests::TestDatabase;
use processor::engine::Outcome;
use processor::engine::canonical_form;
use processor::ledger::{AccountCache, OffsetScope, Position, Timeouts, apply_batch};
use schemas::messages::{AccountStatusCommand, TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, RejectionReason, TransferId};
use uuid::Uuid;

/// The migration that replaced the stored canonical JSON by its SHA-256.
const FINGERPRINT_DIGESTS: i64 = 20_261_202_000_001;

async fn count(database: &TestDatabase, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(&database.pool).await.expect("count")
}

#[tokio::test]
async fn fingerprints_stored_as_json_by_the_earlier_release_still_recognise_their_commands_once_digested() {
    let database = TestDatabase::create_migrated_before(FINGERPRINT_DIGESTS).await.expect("database");
    let pool = &database.pool;
    let (alice, bob) = (AccountId::new_random(), AccountId::new_random());
    sqlx::query(
        "insert into accounts (id, currency, kind, balance) values ($1, 'EUR', 'customer', 90), ($2, 'EUR', 'customer', 10)",
    )
    .bind(alice.as_uuid())
    .bind(bob.as_uuid())
    .execute(pool)
    .await
    .expect("accounts");

    // What the earlier release wrote for a deposit of 100 to alice (as the
    // bench's set-up wrote it: no fingerprint), a transfer of 10 to bob
    // (its canonical JSON as the fingerprint), and a freeze of bob.
    let cash_in = AccountId::cash_in(Currency::EUR);
    let deposit = Uuid::new_v4();
    let paid = TransferRequested {
        version: V1,
        transfer_id: TransferId::from_uuid(Uuid::new_v4()),
        source_account_id: alice,
        destination_account_id: bob,
        money: Money::parse("10.00", Currency::EUR).expect("money"),
        metadata: None,
        reference: None,
        requested_at: Utc::now(),
    };
    let freeze =
        AccountStatusCommand { version: V1, command_id: Uuid::new_v4(), account_id: bob, requested_at: Utc::now() };
    let paid_command = Command::TransferRequested(paid.clone());
    let freeze_command = Command::AccountFrozen(freeze.clone());
    sqlx::query(
        r"insert into transfers (id, kind, source_account_id, destination_account_id, amount, currency, status,
                                 requested_at, request_fingerprint, kafka_topic, kafka_partition, kafka_offset)
          values ($1, 'deposit', $2, $3, 100, 'EUR', 'completed', now(), default, 'old', 0, 0),
                 ($4, 'transfer', $3, $5, 10, 'EUR', 'completed', now(), $6, 'old', 0, 1)",
    )
    .bind(deposit)
    .bind(cash_in.as_uuid())
    .bind(alice.as_uuid())
    .bind(paid.transfer_id.as_uuid())
    .bind(bob.as_uuid())
    .bind(canonical_form(&paid_command))
    .execute(pool)
    .await
    .expect("old transfers");
    sqlx::query(
        r"insert into entries (transfer_id, account_id, amount, currency, balance_after)
          values ($1, $2, -100, 'EUR', -100), ($1, $3, 100, 'EUR', 100),
                 ($4, $3, -10, 'EUR', 90), ($4, $5, 10, 'EUR', 10)",
    )
    .bind(deposit)
    .bind(cash_in.as_uuid())
    .bind(alice.as_uuid())
    .bind(paid.transfer_id.as_uuid())
    .bind(bob.as_uuid())
    .execute(pool)
    .await
    .expect("old entries");
    sqlx::query("update accounts set balance = -100 where id = $1")
        .bind(cash_in.as_uuid())
        .execute(pool)
        .await
        .expect("cash-in");
    sqlx::query(
        r"insert into account_commands (id, account_id, command_type, status, request_fingerprint, requested_at,
                                        kafka_topic, kafka_partition, kafka_offset)
          values ($1, $2, 'account.frozen', 'completed', $3, now(), 'old', 0, 2)",
    )
    .bind(freeze.command_id)
    .bind(bob.as_uuid())
    .bind(canonical_form(&freeze_command))
    .execute(pool)
    .await
    .expect("old account command");
    sqlx::query("update accounts set status = 'frozen' where id = $1")
        .bind(bob.as_uuid())
        .execute(pool)
        .await
        .expect("frozen");
    let before: Vec<i64> = futures::future::join_all(
        ["transfers", "entries", "account_commands", "accounts"].map(|table| count(&database, table)),
    )
    .await;

    schemas::MIGRATOR.run(pool).await.expect("the new migrations");

    let after: Vec<i64> = futures::future::join_all(
        ["transfers", "entries", "account_commands", "accounts"].map(|table| count(&database, table)),
    )
    .await;
    assert_eq!(before, after, "every row is still there");
    assert!(processor::verify::problems(pool).await.expect("verify").is_empty());

    // Redelivered after the upgrade: the same transfer and freeze are known
    // as decided; the transfer's id with another amount is a reused id.
    let mut reused = paid.clone();
    reused.money = Money::parse("99.00", Currency::EUR).expect("money");
    let commands = [paid_command, freeze_command, Command::TransferRequested(reused)];
    let with_positions: Vec<(Command, Position)> = commands
        .into_iter()
        .zip(3..)
        .map(|(command, offset)| (command, Position { topic: "old".into(), partition: 0, offset, timestamp: None }))
        .collect();
    let positions: Vec<Position> = with_positions.iter().map(|(_, position)| position.clone()).collect();
    let scope = OffsetScope { cluster_id: "old".into(), consumer_group: "old".into() };
    let result = apply_batch(pool, &scope, &with_positions, &positions, None, Timeouts::DEFAULT, &AccountCache::new(0))
        .await
        .expect("batch");
    assert_eq!(
        result.outcomes,
        [Outcome::AlreadyDecided, Outcome::AlreadyDecided, Outcome::Rejected(RejectionReason::IdempotencyKeyReused)]
    );
    assert_eq!(count(&database, "transfers").await, after[0]);
    assert!(processor::verify::problems(pool).await.expect("verify").is_empty());
}
