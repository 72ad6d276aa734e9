//! Authentication and authorization at the HTTP edge.

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use ledgerline_tests::{JWT_SECRET, TestApp};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

async fn get_accounts_status(app: &TestApp, authorization: Option<&str>) -> (u16, Value, String) {
    let mut request = app.http().get(app.url(&format!("/v1/accounts/{}", uuid::Uuid::new_v4())));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (status, response.json().await.unwrap_or(Value::Null), content_type)
}

fn forge(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("signs")
}

fn valid_claims(app: &TestApp) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": "ledgerline", "aud": "ledgerline-api", "sub": app.client_id.to_string(),
        "iat": now, "exp": now + 600, "jti": "x", "scope": "accounts:read"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_problem_details() {
    let app = TestApp::spawn().await;

    let (status, body, content_type) = get_accounts_status(&app, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(content_type, "application/problem+json");
    assert!(body["request_id"].as_str().is_some());

    let token = app.token().await;
    let mut tampered = token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, body, _) = get_accounts_status(&app, Some(&format!("Bearer {tampered}"))).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")));

    // A payload changed under the original signature.
    let parts: Vec<&str> = token.split('.').collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&engine.decode(parts[1]).expect("base64")).expect("JSON");
    payload["scope"] = json!("deposits:write accounts:read");
    let forged = format!("{}.{}.{}", parts[0], engine.encode(payload.to_string()), parts[2]);
    let (status, _, _) = get_accounts_status(&app, Some(&format!("Bearer {forged}"))).await;
    assert_eq!(status, 401);

    let unsigned = format!(
        "{}.{}.",
        engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(valid_claims(&app).to_string())
    );
    let (status, _, _) = get_accounts_status(&app, Some(&format!("Bearer {unsigned}"))).await;
    assert_eq!(status, 401, "alg none is refused");

    let mut expired = valid_claims(&app);
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let (status, _, _) = get_accounts_status(&app, Some(&format!("Bearer {}", forge(&expired, JWT_SECRET)))).await;
    assert_eq!(status, 401, "expired");

    let mut foreign = valid_claims(&app);
    foreign["aud"] = json!("another-api");
    let (status, _, _) = get_accounts_status(&app, Some(&format!("Bearer {}", forge(&foreign, JWT_SECRET)))).await;
    assert_eq!(status, 401, "wrong audience");

    let other_key = forge(&valid_claims(&app), "another-secret-of-at-least-32-bytes-long");
    let (status, _, _) = get_accounts_status(&app, Some(&format!("Bearer {other_key}"))).await;
    assert_eq!(status, 401, "signed with another key");

    // The control: the same claims signed with the right key pass
    // authentication (and then find no such account).
    let (status, body, _) =
        get_accounts_status(&app, Some(&format!("Bearer {}", forge(&valid_claims(&app), JWT_SECRET)))).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("account_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_needed_scope_gets_403() {
    let app = TestApp::spawn().await;
    let account = app.open_account("EUR").await;
    let read_only = app.token_with(Some("accounts:read")).await;

    let response = app
        .http()
        .post(app.url(&format!("/v1/accounts/{account}/deposits")))
        .bearer_auth(&read_only)
        .header("Idempotency-Key", "k1")
        .json(&json!({"amount": "1000.00", "currency": "EUR"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["code"], "insufficient_scope");

    let allowed = app
        .http()
        .get(app.url(&format!("/v1/accounts/{account}")))
        .bearer_auth(&read_only)
        .send()
        .await
        .expect("request");
    assert_eq!(allowed.status(), 200);
    assert_eq!(app.count("select count(*) from accepted_requests").await, 0, "nothing was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_refuses_wrong_credentials_and_scopes_the_client_lacks() {
    let app = TestApp::spawn().await;
    let wrong_secret = app.request_token(&app.client_id.to_string(), "llsk_wrong", None).await;
    assert_eq!(wrong_secret.status(), 401);
    assert_eq!(wrong_secret.json::<Value>().await.expect("JSON")["code"], "invalid_client");

    let unknown_client = app.request_token(&uuid::Uuid::new_v4().to_string(), "llsk_wrong", None).await;
    assert_eq!(unknown_client.status(), 401);
    assert_eq!(unknown_client.json::<Value>().await.expect("JSON")["code"], "invalid_client");

    let unknown_scope =
        app.request_token(&app.client_id.to_string(), app.client_secret.expose_secret(), Some("root")).await;
    assert_eq!(unknown_scope.status(), 400);
    assert_eq!(unknown_scope.json::<Value>().await.expect("JSON")["code"], "invalid_scope");

    let limited = ingest::domain::clients::create_client(
        &app.pool,
        &ledgerline_tests::hasher(),
        "reader",
        &[ingest::domain::clients::Scope::AccountsRead],
    )
    .await
    .expect("client");
    let escalation =
        app.request_token(&limited.id.to_string(), limited.secret.expose_secret(), Some("deposits:write")).await;
    assert_eq!(escalation.status(), 400);
    assert_eq!(escalation.json::<Value>().await.expect("JSON")["code"], "invalid_scope");

    let granted = app.request_token(&limited.id.to_string(), limited.secret.expose_secret(), None).await;
    assert_eq!(granted.status(), 200);
    let body: Value = granted.json().await.expect("JSON");
    assert_eq!(body["scope"], "accounts:read");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
}

/// An argon2id hash whose check takes seconds (64 MiB, 40 passes): a login
/// against it holds a hashing permit that long. Its digest matches no
/// password; the check costs the same either way.
const SLOW_HASH: &str =
    "$argon2id$v=19$m=65536,t=40,p=1$c2xvdy1oYXNoLXNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_holding_every_customer_hashing_permit_do_not_hold_back_an_api_clients_token() {
    // One permit for customers' hashing, so one slow login holds them all.
    let app = TestApp::spawn_configured(|config| config.argon2.concurrency_max = 1).await;
    let credentials = json!({ "email": "jane@example.com", "password": ledgerline_tests::USER_PASSWORD });
    let response = app.http().post(app.url("/v1/auth/register")).json(&credentials).send().await.expect("register");
    assert_eq!(response.status(), 201);
    sqlx::query("update users set password_hash = $1").bind(SLOW_HASH).execute(&app.pool).await.expect("hash");

    let login = {
        let request = app.http().post(app.url("/v1/auth/login")).json(&credentials);
        tokio::spawn(async move { request.send().await.expect("login").status().as_u16() })
    };
    // The login reads the user, then checks the hash for seconds; give it
    // the moment it needs to take the permit.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!login.is_finished(), "the slow login is still being checked");
    let token = app.request_token(&app.client_id.to_string(), app.client_secret.expose_secret(), None).await;
    assert_eq!(token.status(), 200);
    assert!(!login.is_finished(), "the client got its token while every customer permit was taken");
    // A wrong password (or the request timeout on a slow machine).
    assert_ne!(login.await.expect("login task"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_pin_step_ups_are_bounded_per_user() {
    let app = TestApp::spawn().await;
    let jane = app.user_token("jane@example.com", "customer").await;
    let john = app.user_token("john@example.com", "customer").await;
    let hash = ledgerline_tests::hasher().hash(&secrecy::SecretString::from("4821".to_owned())).expect("hash");
    sqlx::query("update users set pin_hash = $1").bind(hash).execute(&app.pool).await.expect("PIN");
    let step_up = |token: &str| {
        let request = app.http().post(app.url("/v1/auth/pin")).bearer_auth(token).json(&json!({ "pin": "4821" }));
        async move {
            let response = request.send().await.expect("step-up");
            (response.status().as_u16(), response.headers().contains_key("retry-after"))
        }
    };
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(step_up(&jane).await);
    }
    let first_refusal = answers.iter().position(|(status, _)| *status == 429).expect("a step-up is refused");
    assert!(first_refusal > 0, "the first ones pass");
    assert!(answers[..first_refusal].iter().all(|(status, _)| *status == 200), "{answers:?}");
    assert!(answers[first_refusal].1, "429 with Retry-After");
    // Another customer is not held back by Jane's step-ups.
    assert_eq!(step_up(&john).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_client_secret_is_forgotten_when_the_secret_changes_or_the_client_is_disabled() {
    let app = TestApp::spawn().await;
    let id = app.client_id.to_string();
    let old_secret = app.client_secret.expose_secret().to_owned();
    for _ in 0..2 {
        assert_eq!(app.request_token(&id, &old_secret, None).await.status(), 200);
    }
    assert_eq!(app.request_token(&id, "llsk_wrong", None).await.status(), 401, "only the secret itself");

    let new_secret = secrecy::SecretString::from("llsk_the-new-secret-of-this-client".to_owned());
    ingest::domain::clients::upsert_client(
        &app.pool,
        &ledgerline_tests::hasher(),
        app.client_id,
        "test-client",
        &new_secret,
        ingest::domain::clients::Scope::ALL,
    )
    .await
    .expect("new secret");
    assert_eq!(app.request_token(&id, &old_secret, None).await.status(), 401, "the old secret is dead at once");
    assert_eq!(app.request_token(&id, new_secret.expose_secret(), None).await.status(), 200);
    assert_eq!(app.request_token(&id, new_secret.expose_secret(), None).await.status(), 200);

    sqlx::query("update api_clients set disabled_at = now()").execute(&app.pool).await.expect("disable");
    assert_eq!(app.request_token(&id, new_secret.expose_secret(), None).await.status(), 401, "disabled at once");
}
