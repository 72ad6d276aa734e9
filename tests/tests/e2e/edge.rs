//! The HTTP edge: rate limits per API client and per IP on the token
//! endpoint (429 with `Retry-After`, problem+json), and the security
//! headers on every answer.

use std::time::Duration;

use ingest::support::limits::RateLimit;
use ledgerline_tests::TestApp;
use secrecy::ExposeSecret as _;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_client_has_its_own_token_bucket() {
    let app = TestApp::spawn_configured(|config| config.client_rate_limit = RateLimit::per_second(1, 3)).await;
    let account = app.open_account("EUR").await; // the first token of three
    let get = |token: String| {
        let request = app.http().get(app.url(&format!("/v1/accounts/{account}"))).bearer_auth(token);
        async move { request.send().await.expect("request") }
    };
    let token = app.token().await;
    assert_eq!(get(token.clone()).await.status(), 200);
    assert_eq!(get(token.clone()).await.status(), 200);
    let limited = get(token.clone()).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("1"));
    assert_eq!(
        limited.headers().get("content-type").and_then(|value| value.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: Value = limited.json().await.expect("problem");
    assert_eq!(problem["code"], "rate_limited");
    assert!(problem["request_id"].is_string());

    // Another client is not slowed down by the first.
    let other = ingest::domain::clients::create_client(
        &app.pool,
        &ledgerline_tests::hasher(),
        "other",
        &[ingest::domain::clients::Scope::AccountsRead],
    )
    .await
    .expect("client");
    let response = app.request_token(&other.id.to_string(), other.secret.expose_secret(), None).await;
    let other_token =
        response.json::<Value>().await.expect("token")["access_token"].as_str().expect("token").to_owned();
    assert_eq!(get(other_token).await.status(), 404, "served (and not its account), not limited");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(get(token).await.status(), 200, "a token came back after a second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_is_throttled_per_address_before_any_secret_is_checked() {
    let app = TestApp::spawn_configured(|config| config.token_ip_rate_limit = RateLimit::per_second(1, 2)).await;
    let client_id = app.client_id.to_string();
    // Cheap refusals (no password hash to check), so the bucket has no
    // time to refill between them.
    for _ in 0..2 {
        let response = app
            .http()
            .post(app.url("/v1/oauth/token"))
            .form(&[("grant_type", "password"), ("username", "a"), ("password", "b")])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400);
    }
    let limited = app.request_token(&client_id, app.client_secret.expose_secret(), None).await;
    assert_eq!(limited.status(), 429, "even the right secret waits");
    assert!(limited.headers().get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers_and_no_cors_grant() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let ok =
        app.http().get(app.url("/health/live")).header("origin", "https://evil.example").send().await.expect("live");
    let problem = app
        .http()
        .get(app.url("/v1/accounts/not-a-uuid"))
        .bearer_auth(token)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("problem");
    assert_eq!(problem.status(), 404);
    for response in [&ok, &problem] {
        let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
        assert!(header("content-security-policy").is_some_and(|policy| policy.contains("default-src 'none'")));
        assert_eq!(header("access-control-allow-origin"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_may_be_cached_and_every_security_header_is_sent_once() {
    let app = TestApp::spawn().await;
    let document = app.http().get(app.url("/openapi.json")).send().await.expect("document");
    let live = app.http().get(app.url("/health/live")).send().await.expect("live");
    assert_eq!(document.status(), 200);
    let values = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    };
    // The document holds no balance and no token: shared caches may keep it
    // a minute; everything else stays uncached.
    assert_eq!(values(&document, "cache-control"), ["public, max-age=60"]);
    assert_eq!(values(&live, "cache-control"), ["no-store"]);
    for response in [&document, &live] {
        for name in
            ["x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy", "x-request-id"]
        {
            assert_eq!(values(response, name).len(), 1, "{name} once on {}", response.url());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_throttled_per_account_whatever_the_address() {
    let app = TestApp::spawn_configured(|config| {
        config.login_account_rate_limit = RateLimit { per_minute: 1, burst: 3 };
        config.token_ip_rate_limit = RateLimit::per_second(1_000, 1_000);
    })
    .await;
    let login = |email: &'static str| {
        let request = app
            .http()
            .post(app.url("/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": "not the password" }));
        async move { request.send().await.expect("login").status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(login("jane@example.com").await, 401);
    }
    assert_eq!(login("JANE@example.com").await, 429, "the same account, however spelled");
    assert_eq!(login("john@example.com").await, 401, "another account has its own bucket");
}
