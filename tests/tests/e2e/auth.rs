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

    let limited = ingest::auth::create_client(
        &app.pool,
        &ledgerline_tests::hasher(),
        "reader",
        &[ingest::auth::Scope::AccountsRead],
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
