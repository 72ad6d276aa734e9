//! The ops routes: dead letters read and replayed over HTTP, the outbox's
//! backlog and its dead rows put back.

use ledgerline_tests::{TestApp, dec, unique_key};
use reqwest::Method;
use schemas::messages::{TransferRequested, V1};
use schemas::{AccountId, Command, Currency, IdempotencyKey, Money, TransferId};
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    app.call(method, path, Some(token), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_read_dead_letters_and_replay_one_once_its_cause_is_fixed() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("oz@example.com", "ops").await;
    let support = app.user_token("sam@example.com", "support").await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;

    // A poison message goes to the dead-letter topic on its own…
    app.publish_raw(&alice.to_string(), b"{ this is not json").await;
    // …and a valid command lands there as if a bad day had put it there
    // (say, a database constraint deployed too early).
    let transfer_id = TransferId::derive(schemas::Operation::Transfer, uuid::Uuid::new_v4(), &key("replayed"));
    let command = Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id,
        source_account_id: AccountId::from_uuid(alice),
        destination_account_id: AccountId::from_uuid(bob),
        money: Money::new(dec("30.00"), Currency::EUR).expect("money"),
        metadata: None,
        reference: None,
        requested_at: chrono::Utc::now(),
    });
    let payload = serde_json::to_vec(&command).expect("serializes");
    // Wait for the poison one first so the offsets are known: 0 and 1.
    app.read_topic(&app.kafka.topics.commands_dlq, 1).await;
    app.publish_raw_to(
        &app.kafka.topics.commands_dlq,
        &alice.to_string(),
        &payload,
        &[("ledgerline-dlq-reason", "database_refused"), ("ledgerline-transfer-id", &transfer_id.to_string())],
    )
    .await;

    let (status, page) = call(&app, Method::GET, "/v1/ops/dead-letters", &ops, None).await;
    assert_eq!(status, 200, "{page}");
    let letters = page["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 2, "{page}");
    assert_eq!(letters[0]["offset"], 0);
    assert_eq!(letters[0]["reason"], "undecodable");
    assert_eq!(letters[0]["payload"], "{ this is not json");
    assert_eq!(letters[0]["key"], alice.to_string());
    assert_eq!(letters[1]["reason"], "database_refused");
    assert_eq!((page["next_offset"].as_i64(), page["end_offset"].as_i64()), (Some(2), Some(2)));
    assert_eq!((page["partition"].as_i64(), page["partitions"].as_i64()), (Some(0), Some(1)));
    let (status, problem) = call(&app, Method::GET, "/v1/ops/dead-letters?partition=3", &ops, None).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("no_such_partition")));
    let (status, page) = call(&app, Method::GET, "/v1/ops/dead-letters?from_offset=1&limit=1", &ops, None).await;
    assert_eq!(status, 200);
    assert_eq!(page["dead_letters"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["dead_letters"][0]["offset"], 1);

    // Support reads accounts, not dead letters.
    assert_eq!(call(&app, Method::GET, "/v1/ops/dead-letters", &support, None).await.0, 403);

    // Replayed twice: applied once.
    for _ in 0..2 {
        let (status, report) =
            call(&app, Method::POST, "/v1/ops/dead-letters/replay", &ops, Some(json!({ "from_offset": 1 }))).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["replayed"], json!([1]));
    }
    let decided = wait_for_transfer(&app, transfer_id).await;
    assert_eq!(decided, "completed");
    // One more transfer behind the replays in Alice's partition: once it is
    // decided, both replays have been consumed.
    let body: Value = app.transfer(alice, bob, "1.00", "EUR", &unique_key("after")).await.json().await.expect("JSON");
    app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    assert_eq!(app.balance(bob).await, dec("31.00"), "the replayed transfer applied once");
    assert!(app.ledger_problems().await.is_empty());

    // The replay carried the marker and no stale dead-letter reason.
    let commands = app.read_topic(&app.kafka.topics.commands, 5).await;
    let from = format!("{}:0:1", app.kafka.topics.commands_dlq);
    let replayed: Vec<_> =
        commands.iter().filter(|message| message.header("ledgerline-replayed-from") == Some(from.as_str())).collect();
    assert_eq!(replayed.len(), 2);
    assert!(replayed.iter().all(|message| message.header("ledgerline-dlq-reason").is_none()));
    assert_eq!(replayed[0].header("ledgerline-transfer-id"), Some(transfer_id.to_string().as_str()));

    // Nothing at an offset that does not exist; ranges are bounded.
    let (status, problem) =
        call(&app, Method::POST, "/v1/ops/dead-letters/replay", &ops, Some(json!({ "from_offset": 7 }))).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("dead_letter_not_found")));
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/ops/dead-letters/replay",
        &ops,
        Some(json!({ "from_offset": 0, "to_offset": 100_000 })),
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_range")));

    let (status, audit) =
        call(&app, Method::GET, "/v1/admin/audit", &app.user_token("ada@example.com", "admin").await, None).await;
    assert_eq!(status, 200);
    let replays =
        audit["events"].as_array().expect("events").iter().filter(|e| e["action"] == "dead_letters.replayed").count();
    assert_eq!(replays, 2);
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(&unique_key(text)).expect("key")
}

/// Polls the ledger (the transfer was not accepted over HTTP, so its
/// status route does not know it).
async fn wait_for_transfer(app: &TestApp, transfer_id: TransferId) -> String {
    for _ in 0..200 {
        let status: Option<String> = sqlx::query_scalar("select status from transfers where id = $1")
            .bind(transfer_id.as_uuid())
            .fetch_optional(&app.pool)
            .await
            .expect("query");
        if let Some(status) = status {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("transfer {transfer_id} never applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_see_the_outbox_and_put_dead_rows_back() {
    let app = TestApp::spawn_without_relay().await;
    let ops = app.user_token("oz@example.com", "ops").await;
    let dead_id: i64 = sqlx::query_scalar(
        r"insert into outbox (destination, event_type, message_key, payload, attempts, dead_at, last_error_code, last_error)
          values ('webhooks', 'transfer.completed', 'k', '{}', 8, now(), 'http_500', 'the endpoint answered 500')
          returning id",
    )
    .fetch_one(&app.pool)
    .await
    .expect("dead row");

    let (status, outbox) = call(&app, Method::GET, "/v1/ops/outbox", &ops, None).await;
    assert_eq!(status, 200, "{outbox}");
    assert_eq!(outbox["dead"], 1);
    let (status, dead) = call(&app, Method::GET, "/v1/ops/outbox/dead", &ops, None).await;
    assert_eq!(status, 200);
    assert_eq!(dead["dead"][0]["id"], dead_id);
    assert_eq!(dead["dead"][0]["last_error_code"], "http_500");

    let (status, problem) = call(&app, Method::POST, "/v1/ops/outbox/retry", &ops, Some(json!({}))).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_retry")));
    let (status, retried) =
        call(&app, Method::POST, "/v1/ops/outbox/retry", &ops, Some(json!({ "ids": [dead_id] }))).await;
    assert_eq!(status, 200);
    assert_eq!(retried["retried"], 1);
    let (_, outbox) = call(&app, Method::GET, "/v1/ops/outbox", &ops, None).await;
    assert_eq!(outbox["dead"], 0);
    assert_eq!(app.count("select count(*) from outbox where dead_at is null and attempts = 0").await, 1);
}

/// Where the commands of `transfer_ids` are in the commands topic: their
/// partition and offsets, in order.
async fn find_commands(app: &TestApp, transfer_ids: &[TransferId]) -> (i32, Vec<i64>) {
    let kafka = app.kafka.clone();
    let wanted: Vec<String> = transfer_ids.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        for partition in 0..ledgerline_tests::COMMAND_PARTITIONS {
            let read = kafka
                .read_range(&kafka.topics.commands, partition, None, 10_000, std::time::Duration::from_secs(10))
                .expect("read");
            let offsets: Vec<i64> = read
                .messages
                .iter()
                .filter(|message| wanted.iter().any(|id| String::from_utf8_lossy(&message.payload).contains(id)))
                .map(|message| message.offset)
                .collect();
            if !offsets.is_empty() {
                return (partition, offsets);
            }
        }
        panic!("the commands are in no partition");
    })
    .await
    .expect("reader")
}

/// `ledgerctl replay`: commands skipped past (here by an operator's offset
/// reset) are re-fed once, decided ones are left alone, and a second replay
/// finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refeeds_only_the_commands_the_ledger_never_decided() {
    let mut app = TestApp::spawn().await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "100.00", "EUR").await;
    app.stop_processor().await;

    let transfer = |amount: &str| {
        let transfer_id = TransferId::derive(schemas::Operation::Transfer, uuid::Uuid::new_v4(), &key("skipped"));
        let command = Command::TransferRequested(TransferRequested {
            version: V1,
            transfer_id,
            source_account_id: AccountId::from_uuid(alice),
            destination_account_id: AccountId::from_uuid(bob),
            money: Money::new(dec(amount), Currency::EUR).expect("money"),
            metadata: None,
            reference: None,
            requested_at: chrono::Utc::now(),
        });
        (transfer_id, command)
    };
    let skipped: Vec<(TransferId, Command)> = ["1.00", "2.00", "3.00"].iter().map(|amount| transfer(amount)).collect();
    app.publish_raw(&alice.to_string(), b"not a command").await;
    for (_, command) in &skipped {
        app.publish_command(command).await;
    }
    let ids: Vec<TransferId> = skipped.iter().map(|(id, _)| *id).collect();
    let (partition, offsets) = find_commands(&app, &ids).await;
    assert_eq!(offsets.len(), 3);
    let (first, last) = (offsets[0] - 1, offsets[2]);

    // An operator moves the processor past them.
    let moved = sqlx::query("update consumer_offsets set next_offset = $1 where topic = $2 and partition = $3")
        .bind(last + 1)
        .bind(&app.kafka.topics.commands)
        .bind(partition)
        .execute(&app.pool)
        .await
        .expect("offsets")
        .rows_affected();
    assert_eq!(moved, 1);
    app.start_processor();
    let body: Value = app.transfer(alice, bob, "10.00", "EUR", &unique_key("after")).await.json().await.expect("JSON");
    app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    assert_eq!(app.balance(bob).await, dec("10.00"), "the three were skipped");

    let kafka = app.kafka.clone();
    let dry = processor::replay::refeed(&kafka, &app.pool, partition, first, last + 1, true).await.expect("dry run");
    assert_eq!(
        dry,
        processor::replay::ReplayReport {
            read: 4,
            already_decided: 0,
            published: 3,
            undecodable: 1,
            first_offset_read: Some(first),
            last_offset_read: Some(last),
        },
        "the garbage, then the three"
    );
    let report = processor::replay::refeed(&kafka, &app.pool, partition, first, last + 1, false).await.expect("replay");
    assert_eq!(report.published, 3);
    for id in &ids {
        assert_eq!(wait_for_transfer(&app, *id).await, "completed");
    }
    assert_eq!(app.balance(bob).await, dec("16.00"));
    let again = processor::replay::refeed(&kafka, &app.pool, partition, first, last + 1, false).await.expect("again");
    assert_eq!((again.read, again.already_decided, again.published, again.undecodable), (4, 3, 0, 1));
    // The whole range, the funding and the later transfer included: nothing new.
    let (end_partition, _) = find_commands(&app, &ids).await;
    assert_eq!(end_partition, partition);
    let whole = processor::replay::refeed(&kafka, &app.pool, partition, 0, last + 1, false).await.expect("whole");
    assert_eq!(whole.published, 0, "{whole:?}");
    assert!(app.ledger_problems().await.is_empty());
}
