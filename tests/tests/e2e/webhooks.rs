//! Webhooks end to end: a client registers an endpoint, the ledger's events
//! about its accounts arrive signed (Standard Webhooks), in order, retried
//! after a failure under the same id, verifiable with the documented
//! algorithm, and a replayed one is detectably stale.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ledgerline_tests::{TestApp, WAIT_MAX, unique_key};
use platform::signature::{self, SignatureError};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    body: String,
    answered: u16,
}

#[derive(Debug, Default)]
struct Receiver {
    received: Vec<Received>,
    /// Answer 503 to this many requests first.
    failures_left: u32,
}

type Shared = Arc<Mutex<Receiver>>;

async fn receive(State(state): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let mut receiver = state.lock().expect("receiver");
    let status = if receiver.failures_left > 0 {
        receiver.failures_left -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    receiver.received.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
        signature: header("webhook-signature"),
        body,
        answered: status.as_u16(),
    });
    status
}

async fn start_receiver(failures_first: u32) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Receiver { received: Vec::new(), failures_left: failures_first }));
    let app = axum::Router::new().route("/hook", post(receive)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

async fn register(app: &TestApp, url: &str, event_types: &[&str]) -> Value {
    let response = app
        .http()
        .post(app.url("/v1/webhooks"))
        .bearer_auth(app.token().await)
        .json(&json!({ "url": url, "event_types": event_types }))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 201);
    response.json().await.expect("JSON")
}

/// Checks a received webhook's signature over `body` at time `now`, as a
/// receiver would (five minutes of tolerance).
fn verify(key: &[u8], webhook: &Received, body: &[u8], now: i64) -> Result<(), SignatureError> {
    signature::verify_webhook(key, &webhook.id, webhook.timestamp, &webhook.signature, body, now, 300)
}

/// An event id (`<outbox id>` or `<outbox id>.<index>`) as what orders it.
fn event_order(id: &str) -> (i64, u64) {
    let (row, index) = id.split_once('.').unwrap_or((id, "0"));
    (row.parse().expect("evt_<outbox id>[.<index>]"), index.parse().expect("evt_<outbox id>.<index>"))
}

fn accepted(state: &Shared) -> Vec<Received> {
    state.lock().expect("receiver").received.iter().filter(|r| r.answered < 300).cloned().collect()
}

async fn wait_for_accepted(state: &Shared, count: usize) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let received = accepted(state);
        if received.len() >= count {
            return received;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} webhooks arrived", received.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_in_order_retried_under_the_same_id_and_a_replay_is_stale() {
    let app = TestApp::spawn().await;
    let (url, state) = start_receiver(1).await;
    let endpoint = register(&app, &url, &["transfer.completed", "transfer.rejected"]).await;
    let secret = endpoint["secret"].as_str().expect("secret shown once");
    assert!(secret.starts_with("whsec_"));

    let (alice, bob) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(alice, "10.00", "EUR").await;
    let ok: Value = app.transfer(alice, bob, "4.00", "EUR", &unique_key("ok")).await.json().await.expect("JSON");
    let no: Value = app.transfer(alice, bob, "400.00", "EUR", &unique_key("no")).await.json().await.expect("JSON");
    app.wait_for_decision(ok["transfer_id"].as_str().expect("id")).await;
    app.wait_for_decision(no["transfer_id"].as_str().expect("id")).await;

    // The deposit's completion, the transfer's, the rejection.
    let received = wait_for_accepted(&state, 3).await;
    assert_eq!(received.len(), 3);
    let all = state.lock().expect("receiver").received.clone();
    assert_eq!(all[0].answered, 503);
    assert_eq!(all[0].id, received[0].id, "the retry carries the same webhook-id");

    let key = signature::webhook_key(secret).expect("key");
    let now = chrono::Utc::now().timestamp();
    let mut ids = Vec::new();
    for webhook in &received {
        assert_eq!(verify(&key, webhook, webhook.body.as_bytes(), now), Ok(()), "{webhook:?}");
        // The same request captured and replayed an hour later.
        assert_eq!(verify(&key, webhook, webhook.body.as_bytes(), now + 3_600), Err(SignatureError::Stale));
        let tampered = webhook.body.replace("4.00", "9.00");
        if tampered != webhook.body {
            assert_eq!(verify(&key, webhook, tampered.as_bytes(), now), Err(SignatureError::Mismatch));
        }
        serde_json::from_str::<schemas::Event>(&webhook.body).expect("the body is a ledger event");
        ids.push(event_order(webhook.id.trim_start_matches("evt_")));
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in order: {ids:?}");
    let types: Vec<String> = received
        .iter()
        .map(|webhook| {
            serde_json::from_str::<Value>(&webhook.body).expect("JSON")["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(types, ["transfer.completed", "transfer.completed", "transfer.rejected"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_validated_scoped_listed_and_removed() {
    let app = TestApp::spawn().await;
    let (url, state) = start_receiver(0).await;
    for (body, code) in [
        (json!({ "url": "ftp://example.com/hook", "event_types": ["transfer.completed"] }), "invalid_webhook_url"),
        (json!({ "url": url, "event_types": [] }), "invalid_event_types"),
        (json!({ "url": url, "event_types": ["transfer.teleported"] }), "invalid_event_types"),
    ] {
        let response = app
            .http()
            .post(app.url("/v1/webhooks"))
            .bearer_auth(app.token().await)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 422);
        assert_eq!(response.json::<Value>().await.expect("problem")["code"], code);
    }
    let narrow = app.token_with(Some("accounts:read")).await;
    let response = app.http().get(app.url("/v1/webhooks")).bearer_auth(narrow).send().await.expect("request");
    assert_eq!(response.status(), 403);

    let endpoint = register(&app, &url, &["transfer.completed"]).await;
    let (_, listed) = app.call(reqwest::Method::GET, "/v1/webhooks", Some(&app.token().await), None).await;
    assert_eq!(listed["endpoints"].as_array().expect("endpoints").len(), 1);
    assert!(listed["endpoints"][0].get("secret").is_none(), "the secret is shown only once");

    let alice = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    wait_for_accepted(&state, 1).await;

    let id = endpoint["id"].as_str().expect("id");
    let remove = || async {
        let request = app.http().delete(app.url(&format!("/v1/webhooks/{id}"))).bearer_auth(app.token().await);
        request.send().await.expect("delete").status()
    };
    assert_eq!(remove().await, 204);
    assert_eq!(remove().await, 404, "already removed");
    app.fund(alice, "5.00", "EUR").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(accepted(&state).len(), 1, "nothing after removal");
}

/// A client cannot make the relay call inside the bank: URLs naming
/// internal hosts are refused at registration, and the relay refuses to
/// connect to a non-public address whatever the URL says (a name that
/// resolves to 127.0.0.1 here), so the receiver hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_never_reach_internal_addresses_unless_allowed() {
    let app = TestApp::spawn_configured(|config| config.webhook_private_networks_allowed = false).await;
    for url in ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest/meta-data"] {
        let response = app
            .http()
            .post(app.url("/v1/webhooks"))
            .bearer_auth(app.token().await)
            .json(&json!({ "url": url, "event_types": ["transfer.completed"] }))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 422, "{url}");
        let problem: Value = response.json().await.expect("JSON");
        assert_eq!(problem["code"], "webhook_url_not_public", "{url}");
    }
    drop(app);

    // Registered while allowed (as through another ingest), delivered by a
    // relay that does not allow it.
    let app = TestApp::spawn_without_relay().await;
    let (url, state) = start_receiver(0).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    register(&app, &by_name, &["transfer.completed"]).await;
    register(&app, &url, &["transfer.completed"]).await;
    let stop = platform::CancellationToken::new();
    let mut config = outbox_relay::RelayConfig::new(app.kafka.clone());
    config.poll_interval_ms = 50;
    config.attempts_max = 2;
    config.backoff_base_ms = 50;
    assert!(!config.webhooks.private_networks_allowed, "refused unless allowed");
    config.webhooks.secret_keys = Some(ledgerline_tests::webhook_secret_keys());
    tokio::spawn(outbox_relay::run(config, app.pool.clone(), stop.clone()));

    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    let body: Value = app.transfer(alice, bob, "1.00", "EUR", &unique_key("ssrf")).await.json().await.expect("JSON");
    app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let dead = app
            .count(
                "select count(*) from outbox where destination = 'webhooks'
                   and dead_at is not null and last_error_code = 'destination_not_public'",
            )
            .await;
        if dead == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the deliveries were not refused as not public");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    assert!(state.lock().expect("receiver").received.is_empty(), "the internal receiver was called");
}

/// A failing row holds back its lane. Lanes used to be shared by every
/// destination, so a customer's endpoint that was down held back the Kafka
/// events of the accounts hashed to its lane for as long as it kept
/// failing. Here an account is chosen whose events shared the endpoint's
/// lane under that scheme: its events must still go out while the endpoint
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_does_not_hold_back_kafka_events() {
    let app = TestApp::spawn().await;
    let (url, state) = start_receiver(u32::MAX).await;
    let endpoint = register(&app, &url, &["transfer.completed"]).await;
    let endpoint_id = endpoint["id"].as_str().expect("id").to_owned();
    let old_lane = "((hashtext($1) % 64) + 64) % 64";
    let shared: uuid::Uuid = sqlx::query_scalar(&format!(
        "select id from (select gen_random_uuid() as id from generate_series(1, 20000)) as candidates
         where {} = {} limit 1",
        old_lane.replace("$1", "'events:' || id::text"),
        old_lane.replace("$1", "'webhooks:' || $1"),
    ))
    .bind(&endpoint_id)
    .fetch_one(&app.pool)
    .await
    .expect("an account in the endpoint's old lane");
    sqlx::query("insert into accounts (id, currency, kind, owner_client_id) values ($1, 'EUR', 'customer', $2)")
        .bind(shared)
        .bind(app.client_id)
        .execute(&app.pool)
        .await
        .expect("account");
    let bob = app.open_account("EUR").await;
    app.fund(shared, "10.00", "EUR").await;

    // The first transfer's webhook fails and backs off.
    let first: Value = app.transfer(shared, bob, "1.00", "EUR", &unique_key("first")).await.json().await.expect("JSON");
    app.wait_for_decision(first["transfer_id"].as_str().expect("id")).await;
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while app.count("select count(*) from outbox where destination = 'webhooks' and attempts > 0").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the webhook was never attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The second transfer's event is published while the endpoint still fails.
    let second: Value =
        app.transfer(shared, bob, "2.00", "EUR", &unique_key("second")).await.json().await.expect("JSON");
    let transfer_id = second["transfer_id"].as_str().expect("id").to_owned();
    app.wait_for_decision(&transfer_id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let published = app
            .count(&format!(
                "select count(*) from outbox_events where delivered_at is not null
                   and payload::text like '%{transfer_id}%'"
            ))
            .await;
        if published > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the event waited behind the failing endpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.count("select count(*) from outbox where destination = 'webhooks' and delivered_at is null").await >= 1,
        "the endpoint was still failing"
    );
    assert!(accepted(&state).is_empty());
}

/// Webhook rows wait per endpoint: an endpoint that is down holds back its
/// own later rows, never those of another endpoint in the same lane, which
/// get theirs at once and in order; once the first endpoint is back, it
/// gets every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_does_not_hold_back_another_in_its_lane() {
    let app = TestApp::spawn().await;
    let (down_url, down) = start_receiver(u32::MAX).await;
    let down_endpoint = register(&app, &down_url, &["transfer.completed"]).await;
    let (up_url, up) = start_receiver(0).await;
    // Another endpoint of the same client, with an id in the same lane.
    let lane = "88 + ((hashtext('webhooks:' || $1) % 40) + 40) % 40";
    let up_id: uuid::Uuid = sqlx::query_scalar(&format!(
        "select id from (select gen_random_uuid() as id from generate_series(1, 20000)) as candidates
         where {} = {} limit 1",
        lane.replace("$1", "id::text"),
        lane,
    ))
    .bind(down_endpoint["id"].as_str().expect("id"))
    .fetch_one(&app.pool)
    .await
    .expect("an id in the same lane");
    sqlx::query(
        r"insert into webhook_endpoints (id, api_client_id, url, event_types, secret)
          values ($1, $2, $3, '{transfer.completed}', $4)",
    )
    .bind(up_id)
    .bind(app.client_id)
    .bind(&up_url)
    .bind(down_endpoint["secret"].as_str().expect("secret"))
    .execute(&app.pool)
    .await
    .expect("endpoint");

    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    let mut transfers = Vec::new();
    for amount in ["1.00", "2.00", "3.00"] {
        let body: Value =
            app.transfer(alice, bob, amount, "EUR", &unique_key("lane")).await.json().await.expect("JSON");
        let transfer_id = body["transfer_id"].as_str().expect("id").to_owned();
        app.wait_for_decision(&transfer_id).await;
        transfers.push(transfer_id);
    }
    // The healthy endpoint gets all three, in order, while the other fails.
    assert_eq!(transfers_received(&up, &transfers).await, transfers);
    let down_attempts = down.lock().expect("receiver").received.len();
    assert!(down_attempts >= 1, "the failing endpoint was tried");
    assert!(accepted(&down).is_empty());

    // Back up: it gets every event, in order.
    down.lock().expect("receiver").failures_left = 0;
    assert_eq!(
        transfers_received(&down, &transfers).await,
        transfers,
        "the failing endpoint's rows waited behind its first and kept their order"
    );
}

/// The ids of `transfers` in the order their webhooks were accepted, once
/// all have been (other events, such as the deposit's, are left out).
async fn transfers_received(state: &Shared, transfers: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let order: Vec<String> = accepted(state)
            .iter()
            .filter_map(|webhook| {
                let body: Value = serde_json::from_str(&webhook.body).ok()?;
                let id = body["transfer_id"].as_str()?.to_owned();
                transfers.contains(&id).then_some(id)
            })
            .collect();
        if order.len() >= transfers.len() {
            return order;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {} webhooks arrived", order.len(), transfers.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With the key ring, the database never holds a webhook secret: only a
/// nonce and the key's id. The relay derives the secret (the delivery
/// verifies with the one shown at registration), and an endpoint made under
/// an older key still in the ring still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_derived_never_stored_and_keys_rotate() {
    let app = TestApp::spawn().await;
    let (url, state) = start_receiver(0).await;
    let registered = register(&app, &url, &["transfer.completed"]).await;
    let (stored, key_id): (Option<String>, Option<String>) =
        sqlx::query_as("select secret, secret_key_id from webhook_endpoints where id = $1::uuid")
            .bind(registered["id"].as_str().expect("id"))
            .fetch_one(&app.pool)
            .await
            .expect("endpoint");
    assert_eq!((stored, key_id.as_deref()), (None, Some("k2")));

    // An endpoint made under the older key k1 (as before a rotation).
    let (old_url, old_state) = start_receiver(0).await;
    let old_id = uuid::Uuid::new_v4();
    let nonce = [7_u8; 32];
    let old_secret = ledgerline_tests::webhook_secret_keys().derive("k1", &old_id.to_string(), &nonce).expect("k1");
    sqlx::query(
        r"insert into webhook_endpoints (id, api_client_id, url, event_types, secret_nonce, secret_key_id)
          values ($1, $2, $3, '{transfer.completed}', $4, 'k1')",
    )
    .bind(old_id)
    .bind(app.client_id)
    .bind(&old_url)
    .bind(nonce.to_vec())
    .execute(&app.pool)
    .await
    .expect("endpoint");

    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    let body: Value = app.transfer(alice, bob, "1.00", "EUR", &unique_key("derived")).await.json().await.expect("JSON");
    let transfer_id = body["transfer_id"].as_str().expect("id").to_owned();
    app.wait_for_decision(&transfer_id).await;
    let now = chrono::Utc::now().timestamp();
    for (state, secret) in [(&state, registered["secret"].as_str().expect("secret")), (&old_state, old_secret.as_str())]
    {
        let received = transfers_received(state, std::slice::from_ref(&transfer_id)).await;
        assert_eq!(received, vec![transfer_id.clone()]);
        let webhook = accepted(state).into_iter().last().expect("webhook");
        let key = signature::webhook_key(secret).expect("key");
        assert_eq!(verify(&key, &webhook, webhook.body.as_bytes(), now), Ok(()), "signed with the derived secret");
    }
    assert_eq!(app.count("select count(*) from webhook_endpoints where secret is not null").await, 0);
}

/// An endpoint failing without a success for longer than the configured
/// time is disabled when one of its webhooks dies; its waiting webhooks are
/// dropped rather than each waiting out its retries, and the client sees it
/// disabled. One that only just started failing is not, whatever dies now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_too_long_is_disabled_and_its_backlog_dropped() {
    let app = TestApp::spawn_without_relay().await;
    let (url, state) = start_receiver(u32::MAX).await;
    let failing = register(&app, &url, &["transfer.completed"]).await;
    let (recent_url, recent_state) = start_receiver(u32::MAX).await;
    let recent = register(&app, &recent_url, &["transfer.completed"]).await;
    // `failing` has been failing for an hour already; `recent` starts failing now.
    sqlx::query("update webhook_endpoints set failing_since = now() - interval '1 hour' where id = $1::uuid")
        .bind(failing["id"].as_str().expect("id"))
        .execute(&app.pool)
        .await
        .expect("failing");

    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    for amount in ["1.00", "2.00"] {
        let body: Value =
            app.transfer(alice, bob, amount, "EUR", &unique_key("dead")).await.json().await.expect("JSON");
        app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    }
    let stop = platform::CancellationToken::new();
    let mut config = outbox_relay::RelayConfig::new(app.kafka.clone());
    config.poll_interval_ms = 50;
    config.attempts_max = 2;
    config.backoff_base_ms = 20;
    config.backoff_max_ms = 40;
    config.webhooks.private_networks_allowed = true;
    config.webhooks.secret_keys = Some(ledgerline_tests::webhook_secret_keys());
    config.webhooks.disable_after_s = 600;
    tokio::spawn(outbox_relay::run(config, app.pool.clone(), stop.clone()));

    let failing_id = failing["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let pending = app
            .count(&format!(
                "select count(*) from outbox where destination = 'webhooks' and message_key = '{failing_id}'
                   and delivered_at is null and dead_at is null"
            ))
            .await;
        let disabled = app
            .count(&format!(
                "select count(*) from webhook_endpoints where id = '{failing_id}' and disabled_reason = 'failing'"
            ))
            .await;
        if pending == 0 && disabled == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled: pending {pending}, disabled {disabled}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only its first webhook was ever tried (twice); the rest were dropped.
    let ids: std::collections::BTreeSet<String> =
        state.lock().expect("receiver").received.iter().map(|webhook| webhook.id.clone()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // The one that only just started failing is not disabled.
    let recent_id = recent["id"].as_str().expect("id");
    let (status, disabled_at): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "select coalesce(disabled_reason, 'active'), disabled_at from webhook_endpoints where id = $1::uuid",
    )
    .bind(recent_id)
    .fetch_one(&app.pool)
    .await
    .expect("recent endpoint");
    assert_eq!((status.as_str(), disabled_at), ("active", None));
    assert!(!recent_state.lock().expect("receiver").received.is_empty());
    stop.cancel();

    let (_, listed) = app.call(reqwest::Method::GET, "/v1/webhooks", Some(&app.token().await), None).await;
    let statuses: Vec<(&str, &str)> = listed["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|endpoint| (endpoint["id"].as_str().unwrap_or_default(), endpoint["status"].as_str().unwrap_or_default()))
        .collect();
    assert!(statuses.contains(&(failing_id.as_str(), "disabled_failing")), "{statuses:?}");
    assert!(statuses.contains(&(recent_id, "active")), "{statuses:?}");
}
