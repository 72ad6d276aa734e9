//! Holds, reversals, account states and overdraft limits, through Kafka and
//! the running processor.

use std::time::Duration;

use chrono::Utc;
use ledgerline_tests::{TestApp, WAIT_MAX, dec};
use schemas::messages::{
    AccountOverdraftLimitSet, AccountStatusCommand, TransferHold, TransferPost, TransferRequested, TransferReverse,
    TransferVoid, V1,
};
use schemas::{AccountId, Command, Currency, Money, TransferId};
use uuid::Uuid;

fn eur(amount: &str) -> Money {
    Money::parse(amount, Currency::EUR).expect("money")
}

fn new_id() -> TransferId {
    TransferId::from_uuid(Uuid::new_v4())
}

/// Waits until `sql` (returning one bool) is true.
async fn wait_until(app: &TestApp, sql: &str) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let done: bool = sqlx::query_scalar(sql).fetch_one(&app.pool).await.expect("condition query");
        if done {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(app: &TestApp, id: TransferId) -> (String, Option<String>) {
    wait_until(app, &format!("select exists (select 1 from transfers where id = '{id}')")).await;
    sqlx::query_as("select status, rejection_reason from transfers where id = $1")
        .bind(id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .expect("transfer row")
}

async fn held(app: &TestApp, account: Uuid) -> rust_decimal::Decimal {
    app.account(account).await["held"].as_str().expect("held").parse().expect("decimal")
}

fn hold(id: TransferId, source: Uuid, destination: Uuid, amount: &str, expires_in: chrono::Duration) -> Command {
    Command::TransferHold(TransferHold {
        version: V1,
        transfer_id: id,
        source_account_id: AccountId::from_uuid(source),
        destination_account_id: AccountId::from_uuid(destination),
        money: eur(amount),
        expires_at: Utc::now() + expires_in,
        metadata: None,
        reference: None,
        requested_at: Utc::now(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_posted_in_part_voided_or_released_on_expiry() {
    let app = TestApp::spawn().await;
    let (shopper, merchant) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(shopper, "100.00", "EUR").await;

    // Hold 60, post 45 of it: 45 moves, the other 15 is released.
    let first = new_id();
    app.publish_command(&hold(first, shopper, merchant, "60.00", chrono::Duration::minutes(10))).await;
    assert_eq!(status_of(&app, first).await.0, "held");
    assert_eq!(held(&app, shopper).await, dec("60.00"));
    assert_eq!(app.account(shopper).await["available"], "40.00");
    let post = new_id();
    app.publish_command(&Command::TransferPost(TransferPost {
        version: V1,
        transfer_id: post,
        hold_id: first,
        source_account_id: AccountId::from_uuid(shopper),
        money: Some(eur("45.00")),
        requested_at: Utc::now(),
    }))
    .await;
    assert_eq!(status_of(&app, post).await.0, "completed");
    assert_eq!(status_of(&app, first).await.0, "posted");
    assert_eq!(app.balance(shopper).await, dec("55.00"));
    assert_eq!(app.balance(merchant).await, dec("45.00"));
    assert_eq!(held(&app, shopper).await, dec("0.00"));

    // Hold 20 and void it: nothing moves.
    let second = new_id();
    app.publish_command(&hold(second, shopper, merchant, "20.00", chrono::Duration::minutes(10))).await;
    let void = new_id();
    app.publish_command(&Command::TransferVoid(TransferVoid {
        version: V1,
        transfer_id: void,
        hold_id: second,
        source_account_id: AccountId::from_uuid(shopper),
        requested_at: Utc::now(),
    }))
    .await;
    assert_eq!(status_of(&app, void).await.0, "completed");
    assert_eq!(status_of(&app, second).await.0, "voided");
    assert_eq!(app.balance(shopper).await, dec("55.00"));
    assert_eq!(held(&app, shopper).await, dec("0.00"));

    // Hold 30 for two seconds and let it expire: the processor releases it.
    let third = new_id();
    app.publish_command(&hold(third, shopper, merchant, "30.00", chrono::Duration::seconds(2))).await;
    assert_eq!(status_of(&app, third).await.0, "held");
    wait_until(&app, &format!("select status = 'expired' from transfers where id = '{third}'")).await;
    assert_eq!(held(&app, shopper).await, dec("0.00"));
    assert_eq!(app.balance(shopper).await, dec("55.00"));
    wait_until(
        &app,
        &format!(
            "select exists (select 1 from outbox_events where event_type = 'transfer.voided' \
             and payload->>'hold_id' = '{third}' and payload->>'reason' = 'expired')"
        ),
    )
    .await;
    // A post after the expiry is refused.
    let late = new_id();
    app.publish_command(&Command::TransferPost(TransferPost {
        version: V1,
        transfer_id: late,
        hold_id: third,
        source_account_id: AccountId::from_uuid(shopper),
        money: None,
        requested_at: Utc::now(),
    }))
    .await;
    assert_eq!(status_of(&app, late).await, ("rejected".to_owned(), Some("hold_already_settled".to_owned())));
    let problems = app.ledger_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_reversed_once_and_a_second_reversal_is_refused() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(alice, "50.00", "EUR").await;
    let original = new_id();
    app.publish_command(&Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id: original,
        source_account_id: AccountId::from_uuid(alice),
        destination_account_id: AccountId::from_uuid(bob),
        money: eur("20.00"),
        metadata: None,
        reference: None,
        requested_at: Utc::now(),
    }))
    .await;
    assert_eq!(status_of(&app, original).await.0, "completed");

    let reverse = |id: TransferId| {
        Command::TransferReverse(TransferReverse {
            version: V1,
            transfer_id: id,
            original_transfer_id: original,
            reason: None,
            requested_at: Utc::now(),
        })
    };
    let (first, second) = (new_id(), new_id());
    app.publish_command(&reverse(first)).await;
    app.publish_command(&reverse(second)).await;
    assert_eq!(status_of(&app, first).await.0, "completed");
    assert_eq!(status_of(&app, second).await, ("rejected".to_owned(), Some("already_reversed".to_owned())));
    assert_eq!(app.balance(alice).await, dec("50.00"));
    assert_eq!(app.balance(bob).await, dec("0.00"));
    let problems = app.ledger_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_and_closed_accounts_and_overdraft_limits_are_enforced() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(alice, "10.00", "EUR").await;
    let status = |account: Uuid| AccountStatusCommand {
        version: V1,
        command_id: Uuid::new_v4(),
        account_id: AccountId::from_uuid(account),
        requested_at: Utc::now(),
    };
    let transfer = |id: TransferId, source: Uuid, destination: Uuid, amount: &str| {
        Command::TransferRequested(TransferRequested {
            version: V1,
            transfer_id: id,
            source_account_id: AccountId::from_uuid(source),
            destination_account_id: AccountId::from_uuid(destination),
            money: eur(amount),
            metadata: None,
            reference: None,
            requested_at: Utc::now(),
        })
    };

    app.publish_command(&Command::AccountFrozen(status(alice))).await;
    let blocked = new_id();
    app.publish_command(&transfer(blocked, alice, bob, "1.00")).await;
    assert_eq!(status_of(&app, blocked).await.1.as_deref(), Some("account_frozen"));
    assert_eq!(app.account(alice).await["status"], "frozen");
    // A frozen account still receives.
    app.fund(alice, "5.00", "EUR").await;
    app.publish_command(&Command::AccountUnfrozen(status(alice))).await;

    // An overdraft limit of 20 lets Alice (15.00) spend 35.00 but not a cent more.
    app.publish_command(&Command::AccountOverdraftLimitSet(AccountOverdraftLimitSet {
        version: V1,
        command_id: Uuid::new_v4(),
        account_id: AccountId::from_uuid(alice),
        overdraft_limit: Some(eur("20.00")),
        requested_at: Utc::now(),
    }))
    .await;
    let overdrawn = new_id();
    app.publish_command(&transfer(overdrawn, alice, bob, "35.00")).await;
    assert_eq!(status_of(&app, overdrawn).await.0, "completed");
    assert_eq!(app.balance(alice).await, dec("-20.00"));
    let beyond = new_id();
    app.publish_command(&transfer(beyond, alice, bob, "0.01")).await;
    assert_eq!(status_of(&app, beyond).await.1.as_deref(), Some("insufficient_funds"));

    // Bob cannot close while he holds money; once empty he can, and then
    // receives nothing.
    let close_full = status(bob);
    let close_full_id = close_full.command_id;
    app.publish_command(&Command::AccountClosed(close_full)).await;
    wait_until(&app, &format!("select exists (select 1 from account_commands where id = '{close_full_id}')")).await;
    let reason: Option<String> = sqlx::query_scalar("select rejection_reason from account_commands where id = $1")
        .bind(close_full_id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(reason.as_deref(), Some("account_not_empty"));
    let back = new_id();
    app.publish_command(&transfer(back, bob, alice, "35.00")).await;
    assert_eq!(status_of(&app, back).await.0, "completed");
    app.publish_command(&Command::AccountClosed(status(bob))).await;
    wait_until(&app, &format!("select status = 'closed' from accounts where id = '{bob}'")).await;
    let to_closed = new_id();
    app.publish_command(&transfer(to_closed, alice, bob, "1.00")).await;
    assert_eq!(status_of(&app, to_closed).await.1.as_deref(), Some("account_closed"));
    let problems = app.ledger_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
}
