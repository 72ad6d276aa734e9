//! The outbox relay publishes lifecycle events to `ledger.events`.

use ledgerline_tests::{TestApp, unique_key};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_and_rejected_transfers_are_published_as_events_with_their_event_id() {
    let app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    let ok: Value = app.transfer(alice, bob, "4.00", "EUR", &unique_key("ok")).await.json().await.expect("JSON");
    let too_much: Value =
        app.transfer(alice, bob, "400.00", "EUR", &unique_key("no")).await.json().await.expect("JSON");
    app.wait_for_decision(ok["transfer_id"].as_str().expect("id")).await;
    app.wait_for_decision(too_much["transfer_id"].as_str().expect("id")).await;

    let events = app.read_topic(&app.kafka.topics.events, 3).await;
    let find = |transfer_id: &Value| {
        events.iter().find(|event| event.json()["transfer_id"] == *transfer_id).expect("event published").clone()
    };
    let completed = find(&ok["transfer_id"]);
    assert_eq!(completed.json()["type"], "transfer.completed");
    assert_eq!(completed.key.as_deref(), Some(alice.to_string().as_str()));
    assert_eq!(completed.header("ledgerline-event-type"), Some("transfer.completed"));
    // The processor wrote its batch's events as one outbox row; each event
    // is published on its own, with an id of its own in that row.
    let event_id = completed.header("ledgerline-event-id").expect("an event id");
    let (row, index) = event_id.split_once('.').expect("<outbox id>.<index>");
    assert!(row.parse::<i64>().is_ok() && index.parse::<u32>().is_ok(), "{event_id}");
    assert_eq!(Some(row), completed.header("ledgerline-outbox-row"));
    assert_eq!(Some(event_id), completed.header("ledgerline-outbox-id"), "unique per event under the older name");
    let stored: String = sqlx::query_scalar("select payload::text from outbox_events where event_id = $1")
        .bind(event_id)
        .fetch_one(&app.pool)
        .await
        .expect("the event in the outbox");
    assert_eq!(stored.as_bytes(), completed.payload.as_slice(), "published byte for byte as written");
    let rejected = find(&too_much["transfer_id"]);
    assert_eq!(rejected.json()["type"], "transfer.rejected");
    assert_eq!(rejected.json()["reason"], "insufficient_funds");
    // Every event parses as the published contract.
    for event in &events {
        serde_json::from_slice::<schemas::Event>(&event.payload).expect("a valid event");
    }
    assert_eq!(app.count("select count(*) from outbox where delivered_at is null").await, 0);
}
