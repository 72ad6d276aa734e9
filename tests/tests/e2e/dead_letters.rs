//! Poison messages go to the dead-letter topic and the partition moves on.

use ledgerline_tests::{TestApp, dec, unique_key};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_command_is_dead_lettered_with_its_reason_and_the_next_one_is_applied() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;

    // Same key as Alice's transfers, so it sits in the same partition, ahead of them.
    app.publish_raw(&alice.to_string(), b"{ this is not json").await;
    app.publish_raw(
        &alice.to_string(),
        br#"{"type": "transfer.requested", "version": 1, "transfer_id": "not-a-uuid"}"#,
    )
    .await;
    let body: Value = app.transfer(alice, bob, "40.00", "EUR", &unique_key("after")).await.json().await.expect("JSON");
    let decided = app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    assert_eq!(decided["status"], "completed");
    assert_eq!(app.balance(bob).await, dec("40.00"));

    let dead = app.read_topic(&app.kafka.topics.commands_dlq, 2).await;
    assert_eq!(dead[0].payload, b"{ this is not json");
    assert_eq!(dead[0].header("ledgerline-dlq-reason"), Some("undecodable"));
    assert_eq!(dead[0].key.as_deref(), Some(alice.to_string().as_str()));
    assert_eq!(dead[0].header("ledgerline-source-topic"), Some(app.kafka.topics.commands.as_str()));
    assert_eq!(dead[1].header("ledgerline-dlq-reason"), Some("invalid_command"));
    let detail = dead[1].header("ledgerline-dlq-detail").unwrap_or_default();
    assert!(detail.contains("not a valid command"), "{detail}");
}

/// Defect #13 of issue 10. Before the fix a command with an unknown field
/// or version was dead-lettered and nothing more: its sender saw it
/// accepted for ever and no event ever told of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_that_names_its_id_is_recorded_and_told_as_an_event() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let transfer_id = uuid::Uuid::new_v4();
    let from_the_future = serde_json::json!({
        "type": "transfer.requested", "version": 2, "transfer_id": transfer_id,
        "source_account_id": alice, "destination_account_id": uuid::Uuid::new_v4(),
        "money": {"amount": "1.00", "currency": "EUR"}, "requested_at": chrono::Utc::now(),
    });
    app.publish_raw(&alice.to_string(), from_the_future.to_string().as_bytes()).await;

    let events = app.read_topic(&app.kafka.topics.events, 1).await;
    let told = events
        .iter()
        .map(ledgerline_tests::ReadMessage::json)
        .find(|event| event["type"] == "command.dead_lettered")
        .expect("a command.dead_lettered event");
    assert_eq!(told["command_id"], transfer_id.to_string());
    assert_eq!(told["reason"], "invalid_command");
    assert_eq!(told["account_id"], alice.to_string());
    let recorded: (String, String) =
        sqlx::query_as("select command_type, reason from dead_lettered_commands where command_id = $1")
            .bind(transfer_id)
            .fetch_one(&app.pool)
            .await
            .expect("recorded");
    assert_eq!(recorded, ("transfer.requested".to_owned(), "invalid_command".to_owned()));
}
