//! Stopping the processor mid-stream loses nothing and applies nothing twice.

use std::time::Duration;

use chrono::Utc;
use ledgerline_tests::{TestApp, WAIT_MAX, dec};
use schemas::messages::{TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, TransferId};

const TRANSFERS: i64 = 400;

async fn wait_until_decided(app: &TestApp, at_least: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let decided = app.count("select count(*) from transfers where kind = 'transfer'").await;
        if decided >= at_least {
            return decided;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {decided} of {at_least} transfers decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_stopped_mid_stream_and_restarted_applies_every_command_exactly_once() {
    let mut app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "1000.00", "EUR").await;

    let commands: Vec<Command> = (0..TRANSFERS)
        .map(|_| {
            Command::TransferRequested(TransferRequested {
                version: V1,
                transfer_id: TransferId::from_uuid(uuid::Uuid::new_v4()),
                source_account_id: AccountId::from_uuid(alice),
                destination_account_id: AccountId::from_uuid(bob),
                money: Money::parse("1.00", Currency::EUR).expect("money"),
                metadata: None,
                reference: None,
                requested_at: Utc::now(),
            })
        })
        .collect();
    let (first_half, second_half) = commands.split_at(commands.len() / 2);
    for command in first_half {
        app.publish_command(command).await;
    }
    let decided_before_stop = wait_until_decided(&app, 20).await;
    app.stop_processor().await;
    let decided_at_stop = app.count("select count(*) from transfers where kind = 'transfer'").await;
    assert!(decided_at_stop >= decided_before_stop);
    // The stream goes on while the processor is down.
    for command in second_half {
        app.publish_command(command).await;
    }

    // Redeliveries of commands already applied, as a producer retry would cause.
    for command in commands.iter().take(10) {
        app.publish_command(command).await;
    }

    app.start_processor();
    wait_until_decided(&app, TRANSFERS).await;
    // Let the redelivered duplicates pass through too.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(app.count("select count(*) from transfers where kind = 'transfer'").await, TRANSFERS);
    assert_eq!(
        app.count(
            "select count(*) from (select transfer_id from entries group by transfer_id having count(*) <> 2) odd"
        )
        .await,
        0,
        "every transfer has exactly one debit and one credit"
    );
    assert_eq!(app.balance(alice).await, dec("600.00"));
    assert_eq!(app.balance(bob).await, dec("400.00"));
    assert!(app.ledger_problems().await.is_empty(), "{:?}", app.ledger_problems().await);
}

/// Defect #9 of issue 10. Before the fix nothing bounded a statement: a
/// stray lock on an account row (an operator's open transaction, say) hung
/// the batch, and `stop()` with it, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_lock_on_an_account_fails_the_batch_for_a_retry_and_never_hangs_the_processor() {
    let mut app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;
    let short_timeouts = |config: &mut processor::ProcessorConfig| {
        config.lock_timeout_ms = 200;
        config.retry_backoff_max_ms = 200;
    };
    app.stop_processor().await;
    app.start_processor_configured(short_timeouts);

    // Someone locks Alice's row and leaves the transaction open.
    let mut stray = app.pool.begin().await.expect("transaction");
    sqlx::query("select 1 from accounts where id = $1 for update")
        .bind(alice)
        .execute(&mut *stray)
        .await
        .expect("lock");
    let response = app.transfer(alice, bob, "10.00", "EUR", &ledgerline_tests::unique_key("locked")).await;
    assert_eq!(response.status(), 202);
    let transfer_id: uuid::Uuid = response.json::<serde_json::Value>().await.expect("JSON")["transfer_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    // Until the processor's batch is seen waiting on the lock.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while app
        .count("select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")
        .await
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the processor never reached the locked row");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let decided = |id| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from transfers where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    assert_eq!(decided(transfer_id).await, 0, "nothing can be applied under the lock");
    // The batch fails on the lock timeout and waits for its retry, so a
    // stop is noticed at once instead of waiting on the lock.
    tokio::time::timeout(Duration::from_secs(10), app.stop_processor())
        .await
        .expect("the processor stops while the lock is held");

    app.start_processor_configured(short_timeouts);
    stray.rollback().await.expect("rollback");
    let decision = app.wait_for_decision(&transfer_id.to_string()).await;
    assert_eq!(decision["status"], "completed", "{decision}");
    assert_eq!(app.balance(bob).await, dec("10.00"));
    assert!(app.ledger_problems().await.is_empty());
}
