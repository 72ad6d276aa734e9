//! The relay's money-safety properties (issue #10): a payment whose answers
//! were lost is looked up, never ordered blindly again; a payment the
//! provider refuses is that payment's outcome, not the provider's failure;
//! a slow webhook endpoint holds back no payout or notification and no
//! relay transaction stays open across an external call; a failed Kafka row
//! holds back its own key only, and what was delivered is settled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use ledgerline_tests::{TestApp, WAIT_MAX, webhook_secret_keys};
use outbox_relay::RelayConfig;
use outbox_relay::admin::{self, Retry};
use outbox_relay::fake_provider::Mode;
use platform::CancellationToken;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rust_decimal::Decimal;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// The relay's connections carry this name, so the test can find them in
/// `pg_stat_activity`.
const RELAY_APPLICATION: &str = "ledgerline-relay-under-test";

/// The payouts' harness, with a relay of the tests' own.
type Bench = crate::payouts::Payouts;

impl Bench {
    /// The relay's settings, webhooks to the tests' local receivers allowed.
    fn safety_relay_config(&self, provider_timeout_ms: u64) -> RelayConfig {
        let mut config = self.relay_config_with_timeout(provider_timeout_ms);
        config.webhooks.private_networks_allowed = true;
        config.webhooks.secret_keys = Some(webhook_secret_keys());
        config
    }

    /// A relay on a pool of its own, whose connections are named
    /// [`RELAY_APPLICATION`].
    async fn start_named_relay(&self, config: RelayConfig) -> CancellationToken {
        let options = (*self.app.pool.connect_options()).clone().application_name(RELAY_APPLICATION);
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect_with(options).await.expect("pool");
        let stop = CancellationToken::new();
        tokio::spawn(outbox_relay::run(config, pool, stop.clone()));
        stop
    }
}

async fn wait_until(pool: &PgPool, what: &str, sql: &str) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.expect("query");
        if count > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// #4: the provider pays, every answer is lost, the row dies; an operator
/// retries it after the provider's idempotency keys expired. The relay asks
/// the provider about the payment first and relays what it learns instead
/// of ordering it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_payment_retried_after_the_providers_key_retention_is_looked_up_and_never_paid_twice() {
    let bench = Bench::start().await;
    // It pays at once and answers after 1.5 s; the relay waits 300 ms.
    bench.provider.set_mode(Mode::Slow { delay_ms: 1_500 });
    let mut config = bench.safety_relay_config(300);
    config.attempts_max = 2;
    let stop = bench.start_named_relay(config).await;
    let alice = bench.funded_account("100.00").await;
    let payout = bench.submit_to(alice, "40.00", "Jane Doe").await;

    wait_until(
        &bench.app.pool,
        "the payment row dead after its answers were lost",
        "select count(*) from outbox where destination = 'payments' and dead_at is not null",
    )
    .await;
    let stats = bench.provider.stats();
    assert_eq!(stats.payments_made, 1, "the provider paid on the first order");
    assert_eq!(stats.keys, vec![payout.clone()], "the provider's key is the payout's own id");
    assert_eq!(bench.wait_for_status(&payout, &["held"]).await["status"], "held");

    // A day later: the provider no longer remembers the key, and answers fast.
    bench.provider.forget_idempotency_keys();
    bench.provider.set_mode(Mode::Settle);
    assert_eq!(admin::retry(&bench.app.pool, &Retry::AllDead).await.expect("retry"), 1);

    let settled = bench.wait_for_status(&payout, &["posted", "voided"]).await;
    assert_eq!(settled["status"], "posted", "{settled}");
    let stats = bench.provider.stats();
    assert_eq!(stats.payments_made, 1, "the retry must not pay a second time: {stats:?}");
    assert!(stats.status_requests >= 1, "the relay asked before ordering again: {stats:?}");
    assert_eq!(bench.app.balance(alice).await, Decimal::new(6000, 2));
    assert_eq!(bench.clearing_balance().await, Decimal::new(4000, 2));
    stop.cancel();
    assert!(bench.app.ledger_problems().await.is_empty());
}

/// #10: the provider refuses one payment with a 400. That payment is voided
/// with the provider's reason; the others of the same account go through,
/// and the breaker (which one counted failure would open for an hour)
/// stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_provider_refuses_is_voided_with_its_reason_and_holds_back_nothing() {
    let bench = Bench::start().await;
    bench.provider.refuse_creditor("Refused Creditor", 400, "creditor_name_invalid");
    let mut config = bench.safety_relay_config(2_000);
    config.payments.breaker_failures_max = 1;
    config.payments.breaker_open_ms = 3_600_000;
    config.attempts_max = 5;
    let stop = bench.start_named_relay(config).await;
    let alice = bench.funded_account("100.00").await;
    // The refused one first: today it would lead its account's lane.
    let refused = bench.submit_to(alice, "20.00", "Refused Creditor").await;
    let first = bench.submit_to(alice, "10.00", "Jane Doe").await;
    let second = bench.submit_to(alice, "30.00", "Jane Doe").await;

    let voided = bench.wait_for_status(&refused, &["voided", "posted"]).await;
    assert_eq!(voided["status"], "voided", "{voided}");
    for payout in [&first, &second] {
        let settled = bench.wait_for_status(payout, &["posted", "voided"]).await;
        assert_eq!(settled["status"], "posted", "{settled}");
    }
    let (outcome, attempts, error): (Option<String>, i32, Option<String>) = sqlx::query_as(
        "select outcome, attempts, last_error_code from outbox where destination = 'payments' and payload->>'payment_id' = $1",
    )
    .bind(&refused)
    .fetch_one(&bench.app.pool)
    .await
    .expect("the refused payment's row");
    assert_eq!(outcome.as_deref(), Some("rejected:creditor_name_invalid"), "the provider's reason is kept");
    assert_eq!((attempts, error), (1, None), "one attempt, and not a failure");

    // The breaker is closed: a later payout goes straight through.
    let later = bench.submit_to(alice, "5.00", "Jane Doe").await;
    assert_eq!(bench.wait_for_status(&later, &["posted", "voided"]).await["status"], "posted");
    assert_eq!(bench.available(alice).await, Decimal::new(5500, 2));
    assert_eq!(bench.clearing_balance().await, Decimal::new(4500, 2));
    assert_eq!(bench.provider.stats().payments_made, 3);
    stop.cancel();
    assert!(bench.app.ledger_problems().await.is_empty());
}

/// A receiver that holds every request until the test releases it.
#[derive(Debug, Default)]
struct Held {
    arrived: tokio::sync::Notify,
    release: tokio::sync::Notify,
    answered: std::sync::atomic::AtomicBool,
}

async fn hold(State(held): State<Arc<Held>>) -> StatusCode {
    held.arrived.notify_one();
    let _ = tokio::time::timeout(3 * WAIT_MAX, held.release.notified()).await;
    held.answered.store(true, std::sync::atomic::Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

/// A receiver that answers at once and keeps the bodies.
async fn keep(State(kept): State<Arc<Mutex<Vec<String>>>>, body: String) -> StatusCode {
    kept.lock().expect("kept").push(body);
    StatusCode::NO_CONTENT
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Relay transactions that were open when `since` (a database time) passed
/// and still are: a transaction kept open across the call in flight then.
async fn relay_transactions_open_since(pool: &PgPool, since: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar(
        r"select count(*) from pg_stat_activity
          where datname = current_database() and application_name = $1
            and xact_start is not null and xact_start < $2",
    )
    .bind(RELAY_APPLICATION)
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// #6: a webhook endpoint that takes its time holds back no payout and no
/// notification, and while its call is in flight no relay transaction is
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_endpoint_holds_back_no_payout_or_notification_and_no_transaction_stays_open() {
    let bench = Bench::start().await;
    let held = Arc::new(Held::default());
    let hook_url = serve(axum::Router::new().route("/hook", post(hold)).with_state(Arc::clone(&held))).await;
    let notes = Arc::new(Mutex::new(Vec::new()));
    let notify_url = serve(axum::Router::new().route("/hook", post(keep)).with_state(Arc::clone(&notes))).await;
    let (status, _) = bench
        .app
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(&bench.app.token().await),
            Some(json!({ "url": hook_url, "event_types": ["transfer.completed"] })),
        )
        .await;
    assert_eq!(status, 201);
    let mut config = bench.safety_relay_config(5_000);
    // Longer than the test waits for anything: the call stays in flight
    // until the test releases it.
    config.webhooks.timeout_ms = 180_000;
    config.notifier = Some(outbox_relay::webhooks::Notifier {
        url: notify_url,
        secret: SecretString::from("whsec_a2V5LW9uZS1rZXktb25lLWtleS1vbmUta2V5LW9uZS0=".to_owned()),
    });
    let stop = bench.start_named_relay(config).await;

    // The deposit's `transfer.completed` goes to the endpoint, which holds it.
    let alice = bench.funded_account("100.00").await;
    tokio::time::timeout(WAIT_MAX, held.arrived.notified()).await.expect("the webhook reached its endpoint");
    let in_flight_since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now()").fetch_one(&bench.app.pool).await.expect("now");

    // No relay transaction waits on that call.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while relay_transactions_open_since(&bench.app.pool, in_flight_since).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "a relay transaction stays open across the webhook call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A payout and a notification go out meanwhile.
    let payout = bench.submit_to(alice, "25.00", "Jane Doe").await;
    let settled = bench.wait_for_status(&payout, &["posted", "voided"]).await;
    assert_eq!(settled["status"], "posted", "{settled}");
    sqlx::query(
        r#"insert into outbox (destination, event_type, message_key, payload)
           values ('notifications', 'password_reset.requested', $1, '{"to": "jane@example.com"}')"#,
    )
    .bind(Uuid::new_v4().to_string())
    .execute(&bench.app.pool)
    .await
    .expect("notification row");
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while notes.lock().expect("notes").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the notification waited behind the webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!held.answered.load(std::sync::atomic::Ordering::SeqCst), "the webhook is still in flight");
    assert_eq!(relay_transactions_open_since(&bench.app.pool, in_flight_since).await, 0);

    held.release.notify_one();
    wait_until(
        &bench.app.pool,
        "the webhook delivered once its endpoint answered",
        "select count(*) from outbox where destination = 'webhooks' and delivered_at is not null",
    )
    .await;
    stop.cancel();
}

/// Every message on `topic`, counted by the partitions' high watermarks (an
/// exact count, so nothing is missed by reading too early).
async fn all_messages(app: &TestApp, topic: &str) -> Vec<ledgerline_tests::ReadMessage> {
    let consumer: BaseConsumer =
        app.kafka.consumer(&format!("watermarks-{}", Uuid::new_v4())).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut total = 0;
    for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10)).expect("watermarks");
        total += usize::try_from(high - low).expect("non-negative");
    }
    app.read_topic(topic, total).await
}

/// #12: a Kafka row that cannot be sent holds back the later rows of its
/// own key (they never reach Kafka ahead of it) and nothing else: rows of
/// another key in the same lane are delivered once and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_kafka_row_holds_back_its_own_key_only_and_nothing_delivered_is_sent_again() {
    let bench = Bench::start().await;
    let app = &bench.app;
    let lane_of = |key: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("select ((hashtext('events:' || $1) % 64) + 64) % 64")
                .bind(key)
                .fetch_one(&pool)
                .await
                .expect("lane")
        }
    };
    let poisoned = Uuid::new_v4().to_string();
    let mut neighbour = Uuid::new_v4().to_string();
    while lane_of(neighbour.clone()).await != lane_of(poisoned.clone()).await {
        neighbour = Uuid::new_v4().to_string();
    }
    let insert = |key: &str, payload: Value| {
        let (pool, key) = (app.pool.clone(), key.to_owned());
        async move {
            sqlx::query_scalar::<_, i64>(
                "insert into outbox (destination, event_type, message_key, payload) values ('events', 'test.event', $1, $2) returning id",
            )
            .bind(key)
            .bind(payload)
            .fetch_one(&pool)
            .await
            .expect("outbox row")
        }
    };
    // Larger than the producer's message.max.bytes: a local failure, every time.
    let poison = insert(&poisoned, json!({ "blob": "x".repeat(1_500_000) })).await;
    let neighbour_first = insert(&neighbour, json!({ "seq": 1 })).await;
    let behind_poison = insert(&poisoned, json!({ "seq": 2 })).await;
    let neighbour_second = insert(&neighbour, json!({ "seq": 3 })).await;

    let mut config = bench.safety_relay_config(2_000);
    config.attempts_max = 1_000;
    let stop = bench.start_named_relay(config).await;
    wait_until(
        &app.pool,
        "the neighbour's rows delivered while the poison row keeps failing",
        &format!(
            "select count(*) from outbox where id = {neighbour_first} and delivered_at is not null
               and exists (select 1 from outbox where id = {neighbour_second} and delivered_at is not null)"
        ),
    )
    .await;
    wait_until(
        &app.pool,
        "the poison row tried a few times more",
        &format!("select count(*) from outbox where id = {poison} and attempts >= 4"),
    )
    .await;
    stop.cancel();

    let behind: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select delivered_at from outbox where id = $1")
            .bind(behind_poison)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(behind, None, "the row behind the poison one waits for it");
    let published = all_messages(app, &app.kafka.topics.events).await;
    let ids: Vec<String> =
        published.iter().filter_map(|message| message.header("ledgerline-outbox-id")).map(str::to_owned).collect();
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        HashSet::from([neighbour_first.to_string(), neighbour_second.to_string()]),
        "only the neighbour's rows reached Kafka: a later row of the poisoned key never goes ahead of it"
    );
    assert_eq!(ids.len(), 2, "each delivered row published once, never sent again: {ids:?}");
}
