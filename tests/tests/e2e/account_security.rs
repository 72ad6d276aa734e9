//! Password change and reset (the reset link travels as a signed
//! notification through the outbox), and the audit log admins read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use base64::Engine as _;
use ledgerline_tests::{TestApp, WAIT_MAX};
use outbox_relay::RelayConfig;
use outbox_relay::webhooks::Notifier;
use platform::CancellationToken;
use secrecy::SecretString;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "staple battery horse correct";

type Inbox = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: String) -> StatusCode {
    inbox.lock().expect("inbox").push((headers, body));
    StatusCode::ACCEPTED
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app.http().post(app.url(path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().await.expect("body")).unwrap_or(Value::Null))
}

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    post(app, "/v1/auth/login", None, &json!({ "email": email, "password": password })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_link_arrives_signed_works_once_ends_every_session_and_says_nothing_about_unknown_emails() {
    let app = TestApp::spawn_without_relay().await;
    let inbox: Inbox = Arc::default();
    let router = axum::Router::new().route("/notify", axum::routing::post(receive)).with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/notify", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7_u8; 32]));
    let mut config = RelayConfig::new(app.kafka.clone());
    config.notifier = Some(Notifier { url, secret: SecretString::from(secret.clone()) });
    config.poll_interval_ms = 50;
    let stop = CancellationToken::new();
    tokio::spawn(outbox_relay::run(config, app.pool.clone(), stop.clone()));

    assert_eq!(
        post(&app, "/v1/auth/register", None, &json!({ "email": "jane@example.com", "password": PASSWORD })).await.0,
        201
    );
    let (_, session) = login(&app, "jane@example.com", PASSWORD).await;

    let known = post(&app, "/v1/auth/password-reset", None, &json!({ "email": "Jane@Example.com" })).await;
    let unknown = post(&app, "/v1/auth/password-reset", None, &json!({ "email": "nobody@example.com" })).await;
    assert_eq!(known, unknown, "the same answer whether or not the email exists");
    assert_eq!(known.0, 202);
    // Not an address: refused as such. A NUL byte in it once reached the
    // database and failed the statement (500; found by the contract test).
    let malformed = post(&app, "/v1/auth/password-reset", None, &json!({ "email": "ja\u{0}ne@example.com" })).await;
    assert_eq!((malformed.0, malformed.1["code"].as_str()), (422, Some("invalid_email")), "{malformed:?}");
    // The same text at the login: refused, not a 500 (found by the
    // contract test in a CI run).
    let nul_login =
        post(&app, "/v1/auth/login", None, &json!({ "email": "ja\u{0}ne@example.com", "password": PASSWORD })).await;
    assert_eq!((nul_login.0, nul_login.1["code"].as_str()), (422, Some("invalid_text")), "{nul_login:?}");

    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while inbox.lock().expect("inbox").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no reset notification arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = inbox.lock().expect("inbox").clone();
    assert_eq!(received.len(), 1, "only the known email gets a message");
    let (headers, body) = &received[0];
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).expect(name).to_owned();
    let key = platform::signature::webhook_key(&secret).expect("key");
    let timestamp: i64 = header("webhook-timestamp").parse().expect("timestamp");
    platform::signature::verify_webhook(
        &key,
        &header("webhook-id"),
        timestamp,
        &header("webhook-signature"),
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
        300,
    )
    .expect("signed by the relay");
    let message: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(message["type"], "password_reset.requested");
    assert_eq!(message["email"], "jane@example.com");
    let token = message["token"].as_str().expect("token").to_owned();
    // Once delivered, the token and the address leave the outbox.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let blanked = app
            .count(&format!(
                "select count(*) from outbox where destination = 'notifications' and delivered_at is not null
                   and payload::text not like '%{token}%' and payload::text not like '%jane@example.com%'"
            ))
            .await;
        if blanked == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the delivered notification still holds the token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let confirm = json!({ "token": token, "new_password": NEW_PASSWORD });
    assert_eq!(post(&app, "/v1/auth/password-reset/confirm", None, &confirm).await.0, 204);
    let (status, problem) = post(&app, "/v1/auth/password-reset/confirm", None, &confirm).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_reset_token")), "single use");
    let (status, _) = post(&app, "/v1/auth/refresh", None, &json!({ "refresh_token": session["refresh_token"] })).await;
    assert_eq!(status, 401, "every session ended");
    assert_eq!(login(&app, "jane@example.com", PASSWORD).await.0, 401);
    assert_eq!(login(&app, "jane@example.com", NEW_PASSWORD).await.0, 200);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_one_and_admins_read_the_audit_log() {
    let app = TestApp::spawn().await;
    assert_eq!(
        post(&app, "/v1/auth/register", None, &json!({ "email": "jane@example.com", "password": PASSWORD })).await.0,
        201
    );
    assert_eq!(
        post(&app, "/v1/auth/register", None, &json!({ "email": "ada@example.com", "password": PASSWORD })).await.0,
        201
    );
    assert_eq!(login(&app, "jane@example.com", "not the password").await.0, 401);
    let (_, jane) = login(&app, "jane@example.com", PASSWORD).await;
    let access = jane["access_token"].as_str().expect("token").to_owned();

    let change = |current: &str| json!({ "current_password": current, "new_password": NEW_PASSWORD });
    let (status, problem) = post(&app, "/v1/me/password", Some(&access), &change("wrong password!")).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_credentials")));
    assert_eq!(post(&app, "/v1/me/password", Some(&access), &change(PASSWORD)).await.0, 204);
    let (status, _) = post(&app, "/v1/auth/refresh", None, &json!({ "refresh_token": jane["refresh_token"] })).await;
    assert_eq!(status, 401, "sessions end with a password change");
    let response = app.http().get(app.url("/v1/me")).bearer_auth(&access).send().await.expect("me");
    assert_eq!(response.status(), 401, "the access token too, not only when it expires");
    let (_, jane) = login(&app, "jane@example.com", NEW_PASSWORD).await;
    let access = jane["access_token"].as_str().expect("token").to_owned();

    // The audit log is for admins.
    let response = app.http().get(app.url("/v1/admin/audit")).bearer_auth(&access).send().await.expect("audit");
    assert_eq!(response.status(), 403);
    sqlx::query("update users set role = 'admin' where email = 'ada@example.com'")
        .execute(&app.pool)
        .await
        .expect("role");
    let (_, ada) = login(&app, "ada@example.com", PASSWORD).await;
    let response = app
        .http()
        .get(app.url("/v1/admin/audit?limit=50"))
        .bearer_auth(ada["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("audit");
    assert_eq!(response.status(), 200);
    let log: Value = response.json().await.expect("JSON");
    let actions: Vec<&str> =
        log["events"].as_array().expect("events").iter().filter_map(|event| event["action"].as_str()).collect();
    for expected in ["user.registered", "login.failed", "login.succeeded", "password.changed"] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let failed = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|event| event["action"] == "login.failed")
        .expect("failed login");
    assert!(failed["ip"].as_str().is_some_and(|ip| ip == "127.0.0.1"));
    assert!(failed["request_id"].is_string());
    assert!(failed["subject_user_id"].is_string(), "the targeted user is named");
}
