//! The outbox relay on its own: several relays side by side, ordering per
//! account, retries, dead rows and operator retries, and the wake-up on
//! `NOTIFY`. Rows are written straight into the outbox, as the processor
//! writes them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ledgerline_tests::{TestApp, WAIT_MAX};
use outbox_relay::admin::{self, Retry};
use outbox_relay::{RelayConfig, RelayMetrics};
use platform::CancellationToken;
use uuid::Uuid;

/// Writes one `events` row and returns its id.
async fn insert_row(app: &TestApp, key: &str, payload: &serde_json::Value) -> i64 {
    sqlx::query_scalar(
        "insert into outbox (destination, event_type, message_key, payload) values ('events', 'test.event', $1, $2) returning id",
    )
    .bind(key)
    .bind(payload)
    .fetch_one(&app.pool)
    .await
    .expect("outbox row")
}

/// Starts a relay; it stops when the returned token is cancelled.
fn start_relay(app: &TestApp, config: RelayConfig) -> (CancellationToken, Arc<RelayMetrics>) {
    let (stop, metrics) = (CancellationToken::new(), Arc::new(RelayMetrics::default()));
    tokio::spawn(outbox_relay::run_with_metrics(config, app.pool.clone(), stop.clone(), metrics.clone()));
    (stop, metrics)
}

async fn wait_until(app: &TestApp, what: &str, sql: &str) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while app.count(sql).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_deliver_every_row_exactly_once_and_in_order_per_account() {
    const ROWS: usize = 3_000;
    const ACCOUNTS: usize = 100;
    let app = TestApp::spawn_without_relay().await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|_| Uuid::new_v4().to_string()).collect();
    // Written in one statement, as the processor writes a batch.
    sqlx::query(
        r"insert into outbox (destination, event_type, message_key, payload)
          select 'events', 'test.event', ($1::text[])[1 + n % $2], json_build_object('seq', n)
          from generate_series(0, $3 - 1) as n",
    )
    .bind(&accounts)
    .bind(i32::try_from(ACCOUNTS).expect("small"))
    .bind(i32::try_from(ROWS).expect("small"))
    .execute(&app.pool)
    .await
    .expect("outbox rows");

    // Small claims, so the two relays take turns and share the lanes.
    let config = || {
        let mut config = RelayConfig::new(app.kafka.clone());
        config.batch_size_max = 100;
        config.lanes_per_claim_max = 8;
        config
    };
    let (stop_first, first) = start_relay(&app, config());
    let (stop_second, second) = start_relay(&app, config());
    let messages = app.read_topic(&app.kafka.topics.events, ROWS).await;
    wait_until(
        &app,
        "every row marked delivered",
        "select (count(*) = 0)::int::bigint from outbox where delivered_at is null",
    )
    .await;
    stop_first.cancel();
    stop_second.cancel();

    let ids: Vec<i64> = messages
        .iter()
        .map(|message| message.header("ledgerline-outbox-id").expect("outbox id header").parse().expect("an id"))
        .collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ROWS, "each of the {ROWS} rows published once, no duplicate among the first {ROWS}");
    // Within a partition messages arrive in offset order, and one account
    // maps to one partition: its sequence numbers must only grow.
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for message in &messages {
        let key = message.key.clone().expect("keyed by account");
        let seq = message.json()["seq"].as_i64().expect("seq");
        if let Some(previous) = last_seq.insert(key.clone(), seq) {
            assert!(previous < seq, "account {key}: event {seq} published after {previous}");
        }
    }
    let (by_first, by_second) = (first.delivered_total.get(), second.delivered_total.get());
    assert_eq!(by_first + by_second, u64::try_from(ROWS).expect("small"), "every row delivered by exactly one relay");
    assert!(by_first > 0 && by_second > 0, "both relays took part: {by_first} and {by_second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_row_holds_back_its_account_goes_dead_and_an_operator_can_retry_it() {
    let app = TestApp::spawn_without_relay().await;
    let account = Uuid::new_v4().to_string();
    // Larger than the producer's message.max.bytes: it can never be sent.
    let poison = insert_row(&app, &account, &serde_json::json!({ "blob": "x".repeat(1_500_000) })).await;
    let behind = insert_row(&app, &account, &serde_json::json!({ "seq": 2 })).await;
    // Another account, in another lane, is not held back.
    let mut other_account = Uuid::new_v4().to_string();
    let lane_of = |key: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("select ((hashtext('events:' || $1) % 64) + 64) % 64")
                .bind(key)
                .fetch_one(&pool)
                .await
        }
    };
    while lane_of(other_account.clone()).await.expect("lane") == lane_of(account.clone()).await.expect("lane") {
        other_account = Uuid::new_v4().to_string();
    }
    let other = insert_row(&app, &other_account, &serde_json::json!({ "seq": 1 })).await;
    let lanes: Vec<i16> = sqlx::query_scalar("select lane from outbox where id = any($1) order by id")
        .bind(vec![poison, behind, other])
        .fetch_all(&app.pool)
        .await
        .expect("lanes");
    assert_eq!(lanes[0], lanes[1], "one account, one lane");
    assert_ne!(lanes[0], lanes[2]);

    let mut config = RelayConfig::new(app.kafka.clone());
    config.attempts_max = 3;
    config.backoff_base_ms = 300;
    config.backoff_max_ms = 600;
    config.poll_interval_ms = 50;
    let (stop, metrics) = start_relay(&app, config);

    wait_until(
        &app,
        "the other account's row delivered",
        &format!("select count(*) from outbox where id = {other} and delivered_at is not null"),
    )
    .await;
    // Until the poison row is dead, the row behind it waits.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let (dead, behind_delivered): (bool, bool) = sqlx::query_as(
            "select (select dead_at is not null from outbox where id = $1), (select delivered_at is not null from outbox where id = $2)",
        )
        .bind(poison)
        .bind(behind)
        .fetch_one(&app.pool)
        .await
        .expect("state");
        if dead {
            break;
        }
        assert!(!behind_delivered, "a later event of the account was delivered before an earlier one");
        assert!(tokio::time::Instant::now() < deadline, "the poison row never went dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(
        &app,
        "the row behind the dead one delivered",
        &format!("select count(*) from outbox where id = {behind} and delivered_at is not null"),
    )
    .await;

    let (attempts, code): (i32, String) = sqlx::query_as("select attempts, last_error_code from outbox where id = $1")
        .bind(poison)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(attempts, 3);
    assert_eq!(code, "kafka:MessageSizeTooLarge");
    let status = admin::status(&app.pool).await.expect("status");
    assert_eq!((status.pending, status.dead), (0, 1));
    assert!(
        status
            .failing
            .iter()
            .any(|failing| failing.destination == "events" && failing.code == code && failing.dead == 1)
    );
    assert_eq!(
        admin::dead_rows(&app.pool, 10).await.expect("dead rows").iter().map(|row| row.id).collect::<Vec<_>>(),
        vec![poison]
    );
    assert!(metrics.failed_total.get() >= 2);
    assert_eq!(metrics.dead_total.get(), 1);

    // An operator puts it back: it gets a fresh budget, fails again, dies again.
    assert_eq!(admin::retry(&app.pool, &Retry::Ids(vec![poison])).await.expect("retry"), 1);
    assert_eq!(
        admin::retry(&app.pool, &Retry::Ids(vec![other])).await.expect("retry"),
        0,
        "only dead rows are retried"
    );
    wait_until(
        &app,
        "the retried row dead again",
        &format!("select count(*) from outbox where id = {poison} and dead_at is not null"),
    )
    .await;
    assert_eq!(metrics.dead_total.get(), 2);
    stop.cancel();

    // The row behind the poison one was sent only after the poison row left
    // its key (dead), and once: a key's rows go one after the other, and
    // what was delivered is recorded, never sent again.
    let published = app.read_topic(&app.kafka.topics.events, 2).await;
    let ids: HashSet<String> =
        published.iter().filter_map(|message| message.header("ledgerline-outbox-id")).map(str::to_owned).collect();
    assert_eq!(ids, HashSet::from([behind.to_string(), other.to_string()]), "the poison row never published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_an_idle_relay_long_before_its_poll_interval() {
    let app = TestApp::spawn_without_relay().await;
    let mut config = RelayConfig::new(app.kafka.clone());
    config.poll_interval_ms = 60_000;
    let (stop, metrics) = start_relay(&app, config);
    // Let it finish its first rounds and settle into waiting.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let id = insert_row(&app, &Uuid::new_v4().to_string(), &serde_json::json!({ "seq": 1 })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.count(&format!("select count(*) from outbox where id = {id} and delivered_at is not null")).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered within 20 s: the relay waited for its 60 s poll"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.notifications_total.get() >= 1);
    stop.cancel();
}

/// Delivered rows leave the outbox after the retention period, oldest first
/// and a batch at a time; pending and dead rows stay whatever their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rows_are_pruned_after_the_retention_period_and_nothing_else_is() {
    let app = TestApp::spawn_without_relay().await;
    let row = |delivered: &str, dead: &str| {
        format!(
            "insert into outbox (destination, event_type, message_key, payload, created_at, delivered_at, dead_at)
             values ('events', 'test.event', 'k', '{{}}', now() - interval '3 hours', {delivered}, {dead}) returning id"
        )
    };
    let mut old_delivered = Vec::new();
    for _ in 0..5 {
        let id: i64 =
            sqlx::query_scalar(&row("now() - interval '2 hours'", "null")).fetch_one(&app.pool).await.expect("row");
        old_delivered.push(id);
    }
    let recent: i64 =
        sqlx::query_scalar(&row("now() - interval '10 minutes'", "null")).fetch_one(&app.pool).await.expect("row");
    let dead: i64 =
        sqlx::query_scalar(&row("null", "now() - interval '2 hours'")).fetch_one(&app.pool).await.expect("row");
    let pending: i64 = sqlx::query_scalar(&row("null", "null")).fetch_one(&app.pool).await.expect("row");

    // A batch at a time, oldest first.
    assert_eq!(outbox_relay::outbox::prune(&app.pool, 3_600, 2).await.expect("prune"), 2);
    let left: Vec<i64> = sqlx::query_scalar("select id from outbox where id = any($1) order by id")
        .bind(&old_delivered)
        .fetch_all(&app.pool)
        .await
        .expect("left");
    assert_eq!(left, old_delivered[2..].to_vec());

    // The relay prunes the rest on its own.
    let mut config = RelayConfig::new(app.kafka.clone());
    config.retention_s = 3_600;
    config.prune_interval_ms = 50;
    config.prune_batch_max = 2;
    let (stop, _) = start_relay(&app, config);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while app.count("select count(*) from outbox where delivered_at < now() - interval '1 hour'").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "old delivered rows were never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let kept: Vec<i64> = sqlx::query_scalar("select id from outbox where id = any($1) order by id")
        .bind(vec![recent, dead, pending])
        .fetch_all(&app.pool)
        .await
        .expect("kept");
    assert_eq!(kept, vec![recent, dead, pending], "recent, dead and pending rows stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_row_is_published_event_by_event_in_order_under_ids_of_their_own() {
    const BATCHES: usize = 20;
    const EVENTS_PER_BATCH: usize = 50;
    const ACCOUNTS: usize = 7;
    let app = TestApp::spawn_without_relay().await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|_| Uuid::new_v4().to_string()).collect();
    // Rows as the processor writes them: each a JSON array of
    // {key, type, event}; sequence numbers grow across batches.
    let mut rows = Vec::new();
    for batch in 0..BATCHES {
        let events: Vec<serde_json::Value> = (0..EVENTS_PER_BATCH)
            .map(|index| {
                let seq = batch * EVENTS_PER_BATCH + index;
                serde_json::json!({
                    "key": accounts[seq % ACCOUNTS],
                    "type": "test.event",
                    "event": { "type": "test.event", "seq": seq },
                })
            })
            .collect();
        let id: i64 = sqlx::query_scalar(
            "insert into outbox (destination, event_type, message_key, payload) values ('events', $1, $2, $3) returning id",
        )
        .bind(admin::EVENT_BATCH_TYPE)
        .bind(admin::EVENT_BATCH_KEY)
        .bind(serde_json::Value::Array(events))
        .fetch_one(&app.pool)
        .await
        .expect("batch row");
        rows.push(id);
    }
    let (stop, metrics) = start_relay(&app, RelayConfig::new(app.kafka.clone()));
    let messages = app.read_topic(&app.kafka.topics.events, BATCHES * EVENTS_PER_BATCH).await;
    wait_until(
        &app,
        "every batch row marked delivered",
        "select (count(*) = 0)::int::bigint from outbox where delivered_at is null",
    )
    .await;
    stop.cancel();

    let mut last_seq: HashMap<String, usize> = HashMap::new();
    let mut event_ids = HashSet::new();
    for message in &messages {
        let seq = usize::try_from(message.json()["seq"].as_u64().expect("the event, not the batch")).expect("small");
        let (batch, index) = (seq / EVENTS_PER_BATCH, seq % EVENTS_PER_BATCH);
        assert_eq!(message.header("ledgerline-outbox-row"), Some(rows[batch].to_string().as_str()));
        let event_id = format!("{}.{index}", rows[batch]);
        assert_eq!(message.header("ledgerline-event-id"), Some(event_id.as_str()));
        // Unique per message under the older name too: a consumer that
        // deduplicates by it keeps every event of a batch.
        assert_eq!(message.header("ledgerline-outbox-id"), Some(event_id.as_str()));
        assert_eq!(message.header("ledgerline-event-type"), Some("test.event"));
        let key = message.key.clone().expect("keyed by the event's own key");
        assert_eq!(key, accounts[seq % ACCOUNTS]);
        if let Some(previous) = last_seq.insert(key.clone(), seq) {
            assert!(previous < seq, "account {key}: event {seq} published after {previous}");
        }
        event_ids.insert(message.header("ledgerline-event-id").expect("id").to_owned());
    }
    assert_eq!(event_ids.len(), BATCHES * EVENTS_PER_BATCH, "every event once among the first read");
    assert_eq!(metrics.delivered_total.get(), u64::try_from(BATCHES).expect("small"));
    // The view operators and the webhook fan-out read has every event.
    assert_eq!(
        app.count("select count(*) from outbox_events where delivered_at is not null").await,
        i64::try_from(BATCHES * EVENTS_PER_BATCH).expect("small")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_row_that_is_not_an_array_of_events_fails_with_its_reason_and_stays_undelivered() {
    let app = TestApp::spawn_without_relay().await;
    let poison: i64 = sqlx::query_scalar(
        "insert into outbox (destination, event_type, message_key, payload) values ('events', $1, $2, $3) returning id",
    )
    .bind(admin::EVENT_BATCH_TYPE)
    .bind(admin::EVENT_BATCH_KEY)
    .bind(serde_json::json!({ "not": "an array" }))
    .fetch_one(&app.pool)
    .await
    .expect("batch row");
    let (stop, _metrics) = start_relay(&app, RelayConfig::new(app.kafka.clone()));
    wait_until(
        &app,
        "the malformed batch failed with its reason",
        &format!("select count(*) from outbox where id = {poison} and last_error_code = 'malformed_event_batch'"),
    )
    .await;
    stop.cancel();
    assert_eq!(
        app.count(&format!("select count(*) from outbox where id = {poison} and delivered_at is not null")).await,
        0
    );
}
