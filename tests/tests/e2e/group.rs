//! Several processors in one consumer group, with members joining and
//! leaving under load: nothing is lost, nothing is applied twice, and the
//! ledger verifies.

use std::time::Duration;

use chrono::Utc;
use ledgerline_tests::{TestApp, WAIT_MAX};
use rust_decimal::Decimal;
use schemas::messages::{AccountDeposited, TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, TransferId};

const ACCOUNTS: usize = 24;
const TRANSFERS: usize = 3_000;

async fn decided(app: &TestApp) -> i64 {
    app.count("select count(*) from transfers").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processors_with_forced_rebalances_apply_every_transfer_exactly_once() {
    let app = TestApp::spawn().await;
    let accounts: Vec<AccountId> = (0..ACCOUNTS).map(|_| AccountId::new_random()).collect();
    for id in &accounts {
        sqlx::query("insert into accounts (id, currency, kind) values ($1, 'EUR', 'customer')")
            .bind(id.as_uuid())
            .execute(&app.pool)
            .await
            .expect("account");
    }
    let deposits: Vec<Command> = accounts
        .iter()
        .map(|id| {
            Command::AccountDeposited(AccountDeposited {
                version: V1,
                transfer_id: TransferId::from_uuid(uuid::Uuid::new_v4()),
                account_id: *id,
                money: Money::parse("100.00", Currency::EUR).expect("money"),
                requested_at: Utc::now(),
            })
        })
        .collect();
    // Transfers between neighbours, many of which contend for the same
    // accounts from different partitions; some will be refused for funds.
    let transfers: Vec<Command> = (0..TRANSFERS)
        .map(|index| {
            Command::TransferRequested(TransferRequested {
                version: V1,
                transfer_id: TransferId::from_uuid(uuid::Uuid::new_v4()),
                source_account_id: accounts[index % ACCOUNTS],
                destination_account_id: accounts[(index * 7 + 1) % ACCOUNTS],
                money: Money::new(Decimal::new(i64::try_from(index % 500).expect("small") + 1, 2), Currency::EUR)
                    .expect("money"),
                metadata: None,
                reference: None,
                requested_at: Utc::now(),
            })
        })
        .collect();
    let total = i64::try_from(ACCOUNTS + TRANSFERS).expect("small");

    app.publish_commands(&deposits).await;
    let second = app.spawn_processor();
    assert!(second.wait_until_assigned(WAIT_MAX).await, "the second member got partitions");
    let (first_third, rest) = transfers.split_at(TRANSFERS / 3);
    let (second_third, last_third) = rest.split_at(TRANSFERS / 3);
    app.publish_commands(first_third).await;

    // A third member joins under load, then one leaves: two rebalances.
    let third = app.spawn_processor();
    app.publish_commands(second_third).await;
    assert!(third.wait_until_assigned(WAIT_MAX).await, "the third member got partitions");
    second.stop().await.expect("the second member stops cleanly");
    app.publish_commands(last_third).await;
    // Redeliveries, as a producer retry would cause.
    app.publish_commands(&transfers[..50]).await;

    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while decided(&app).await < total {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {total} decided", decided(&app).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    third.stop().await.expect("the third member stops cleanly");

    assert_eq!(decided(&app).await, total, "each command decided exactly once");
    let completed = app.count("select count(*) from transfers where kind = 'transfer' and status = 'completed'").await;
    assert!(completed > 0, "some transfers were applied");
    assert_eq!(
        app.count("select count(*) from entries").await,
        2 * (completed + i64::try_from(ACCOUNTS).expect("small")),
        "two entries per applied transfer and deposit"
    );
    let problems = app.ledger_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
}
