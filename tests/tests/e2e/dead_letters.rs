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
