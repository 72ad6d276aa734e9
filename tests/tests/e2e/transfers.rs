//! Transfers through the HTTP API, applied by the processor.

use ledgerline_tests::{TestApp, dec, unique_key};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_between_funded_accounts_moves_the_money_and_writes_balanced_entries() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;
    app.fund(bob, "10.00", "EUR").await;

    let response = app.transfer(alice, bob, "25.50", "EUR", &unique_key("t")).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().expect("ASCII").to_owned();
    let body: Value = response.json().await.expect("JSON");
    let transfer_id = body["transfer_id"].as_str().expect("transfer_id").to_owned();
    assert_eq!(location, format!("/v1/transfers/{transfer_id}"));

    let decided = app.wait_for_decision(&transfer_id).await;
    assert_eq!(decided["status"], "completed");

    let alice_account = app.account(alice).await;
    assert_eq!(alice_account["balance"], "74.50");
    assert_eq!(alice_account["available"], "74.50");
    assert_eq!(app.balance(bob).await, dec("35.50"));

    let alice_entries = app.entries(alice).await;
    assert_eq!(alice_entries[0]["transfer_id"], transfer_id.as_str());
    assert_eq!(alice_entries[0]["amount"], "-25.50");
    assert_eq!(alice_entries[0]["balance_after"], "74.50");
    let bob_entries = app.entries(bob).await;
    assert_eq!(bob_entries[0]["amount"], "25.50");
    assert_eq!(bob_entries[0]["balance_after"], "35.50");
    assert!(app.ledger_problems().await.is_empty(), "{:?}", app.ledger_problems().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_transfer_submitted_twice_with_one_key_is_applied_once() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;

    let key = unique_key("retry");
    let first: Value = app.transfer(alice, bob, "30.00", "EUR", &key).await.json().await.expect("JSON");
    let retry = app.transfer(alice, bob, "30.00", "EUR", &key).await;
    assert_eq!(retry.status(), 202);
    let retry: Value = retry.json().await.expect("JSON");
    assert_eq!(first["transfer_id"], retry["transfer_id"]);

    let transfer_id = first["transfer_id"].as_str().expect("transfer_id");
    assert_eq!(app.wait_for_decision(transfer_id).await["status"], "completed");
    // A third submission after it was applied changes nothing either.
    assert_eq!(app.transfer(alice, bob, "30.00", "EUR", &key).await.status(), 202);

    assert_eq!(app.balance(alice).await, dec("70.00"));
    assert_eq!(app.balance(bob).await, dec("30.00"));
    let count = app.count(&format!("select count(*) from entries where transfer_id = '{transfer_id}'")).await;
    assert_eq!(count, 2, "one debit and one credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_refused_and_nothing_is_applied() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;

    let key = unique_key("reuse");
    let first: Value = app.transfer(alice, bob, "10.00", "EUR", &key).await.json().await.expect("JSON");
    let transfer_id = first["transfer_id"].as_str().expect("transfer_id").to_owned();
    let reused = app.transfer(alice, bob, "99.00", "EUR", &key).await;
    assert_eq!(reused.status(), 422);
    assert_eq!(reused.headers()["content-type"], "application/problem+json");
    let problem: Value = reused.json().await.expect("JSON");
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert!(problem["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    assert_eq!(app.wait_for_decision(&transfer_id).await["status"], "completed");

    // An upstream app publishing straight to Kafka reuses the transfer id
    // with another amount: the processor refuses it, nothing moves.
    let command: schemas::Command = serde_json::from_value(serde_json::json!({
        "type": "transfer.requested",
        "version": 1,
        "transfer_id": transfer_id,
        "source_account_id": alice,
        "destination_account_id": bob,
        "money": {"amount": "50.00", "currency": "EUR"},
        "requested_at": "2026-11-27T10:00:00Z"
    }))
    .expect("command");
    app.publish_command(&command).await;
    let deadline = tokio::time::Instant::now() + ledgerline_tests::WAIT_MAX;
    loop {
        let refused = app
            .count(
                // Told under an id of its own, never as the completed
                // transfer's rejection.
                "select count(*) from outbox_events where event_type = 'command.id_reused' \
                 and payload->>'reason' = 'idempotency_key_reused' and payload->>'conflict_id' <> payload->>'reused_id'",
            )
            .await;
        if refused == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reuse was not refused");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.count("select count(*) from outbox_events where event_type = 'transfer.rejected'").await, 0);
    assert_eq!(app.balance(alice).await, dec("90.00"));
    assert_eq!(app.balance(bob).await, dec("10.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_above_the_balance_is_rejected_with_insufficient_funds_and_moves_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "20.00", "EUR").await;

    let body: Value = app.transfer(alice, bob, "20.01", "EUR", &unique_key("big")).await.json().await.expect("JSON");
    let decided = app.wait_for_decision(body["transfer_id"].as_str().expect("transfer_id")).await;
    assert_eq!(decided["status"], "rejected");
    assert_eq!(decided["reason"], "insufficient_funds");

    assert_eq!(app.balance(alice).await, dec("20.00"));
    assert_eq!(app.balance(bob).await, dec("0.00"));
    assert!(app.entries(bob).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_another_currency_or_an_unknown_account_is_rejected_with_its_reason() {
    let app = TestApp::spawn().await;
    let euros = app.open_account("EUR").await;
    let dollars = app.open_account("USD").await;
    app.fund(euros, "50.00", "EUR").await;

    let mismatch: Value =
        app.transfer(euros, dollars, "5.00", "EUR", &unique_key("fx")).await.json().await.expect("JSON");
    let decided = app.wait_for_decision(mismatch["transfer_id"].as_str().expect("id")).await;
    assert_eq!(decided["reason"], "currency_mismatch");

    let nowhere = uuid::Uuid::new_v4();
    let unknown: Value =
        app.transfer(euros, nowhere, "5.00", "EUR", &unique_key("void")).await.json().await.expect("JSON");
    let decided = app.wait_for_decision(unknown["transfer_id"].as_str().expect("id")).await;
    assert_eq!(decided["reason"], "unknown_account");
    assert_eq!(app.balance(euros).await, dec("50.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_problem_details_with_stable_codes() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    let token = app.token().await;

    let missing_key = app
        .http()
        .post(app.url("/v1/transfers"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"source_account_id": alice, "destination_account_id": bob, "amount": "1.00", "currency": "EUR"}))
        .send()
        .await
        .expect("request");
    assert_eq!(missing_key.status(), 400);
    assert_eq!(missing_key.json::<Value>().await.expect("JSON")["code"], "idempotency_key_missing");

    let too_fine = app.transfer(alice, bob, "1.001", "EUR", &unique_key("fine")).await;
    assert_eq!(too_fine.status(), 422);
    assert_eq!(too_fine.json::<Value>().await.expect("JSON")["code"], "invalid_amount");

    let unknown_field = app
        .http()
        .post(app.url("/v1/transfers"))
        .bearer_auth(&token)
        .header("Idempotency-Key", unique_key("field"))
        .json(&serde_json::json!({"source_account_id": alice, "destination_account_id": bob, "amount": "1.00", "currency": "EUR", "memo": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown_field.status(), 422);
    assert_eq!(unknown_field.json::<Value>().await.expect("JSON")["code"], "invalid_body");

    let oversized = app
        .http()
        .post(app.url("/v1/accounts"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        // The server answers before reading the body and then closes the
        // connection; without this the client may reuse it for the next
        // request before it notices (IncompleteMessage).
        .header("connection", "close")
        .body(format!(r#"{{"currency": "EUR", "pad": "{}"}}"#, "x".repeat(64 * 1024)))
        .send()
        .await
        .expect("request");
    assert_eq!(oversized.status(), 413);
    assert_eq!(oversized.json::<Value>().await.expect("JSON")["code"], "body_too_large");

    let someone_elses = app.transfer(uuid::Uuid::new_v4(), bob, "1.00", "EUR", &unique_key("steal")).await;
    assert_eq!(someone_elses.status(), 404);
    assert_eq!(someone_elses.json::<Value>().await.expect("JSON")["code"], "account_not_found");
}
