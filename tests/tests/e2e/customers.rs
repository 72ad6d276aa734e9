//! Customers' sessions: register, login, rotating refresh tokens with reuse
//! detection, logout, and access tokens that resist tampering.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ledgerline_tests::{JWT_SECRET, TestApp};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app.http().post(app.url(path)).json(body).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn me(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app.http().get(app.url("/v1/me")).bearer_auth(token).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register_and_login(app: &TestApp, email: &str) -> Value {
    let (status, _) = post(app, "/v1/auth/register", &json!({ "email": email, "password": PASSWORD })).await;
    assert_eq!(status, 201);
    let (status, session) = post(app, "/v1/auth/login", &json!({ "email": email, "password": PASSWORD })).await;
    assert_eq!(status, 200, "{session}");
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_registers_logs_in_and_refresh_tokens_rotate_with_reuse_detection() {
    let app = TestApp::spawn().await;
    let session = register_and_login(&app, "Jane.Doe@Example.com").await;
    assert!(session["expires_in"].as_u64().is_some_and(|seconds| seconds <= 900));
    let (status, who) = me(&app, session["access_token"].as_str().expect("token")).await;
    assert_eq!(status, 200);
    assert_eq!((who["email"].as_str(), who["role"].as_str()), (Some("jane.doe@example.com"), Some("customer")));

    let first = session["refresh_token"].clone();
    let (status, rotated) = post(&app, "/v1/auth/refresh", &json!({ "refresh_token": first })).await;
    assert_eq!(status, 200);
    assert_ne!(rotated["refresh_token"], first, "a new refresh token each time");
    assert_eq!(me(&app, rotated["access_token"].as_str().expect("token")).await.0, 200);

    // The retired token comes back: the family is revoked, the newest too.
    let (status, problem) = post(&app, "/v1/auth/refresh", &json!({ "refresh_token": first })).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("refresh_token_reused")));
    let (status, problem) = post(&app, "/v1/auth/refresh", &json!({ "refresh_token": rotated["refresh_token"] })).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_refresh_token")));

    // Logging in again starts a new family; logout ends it.
    let (_, again) =
        post(&app, "/v1/auth/login", &json!({ "email": "jane.doe@example.com", "password": PASSWORD })).await;
    let (status, _) = post(&app, "/v1/auth/logout", &json!({ "refresh_token": again["refresh_token"] })).await;
    assert_eq!(status, 204);
    let (status, _) = post(&app, "/v1/auth/refresh", &json!({ "refresh_token": again["refresh_token"] })).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_validated_and_a_failed_login_does_not_say_why() {
    let app = TestApp::spawn().await;
    for (body, status, code) in [
        (json!({ "email": "jane@example.com", "password": "too-short" }), 422, "weak_password"),
        (json!({ "email": "not-an-email", "password": PASSWORD }), 422, "invalid_email"),
        (json!({ "email": "jane@example.com", "password": PASSWORD, "role": "admin" }), 422, "invalid_body"),
    ] {
        let (got, problem) = post(&app, "/v1/auth/register", &body).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)), "{body}");
    }
    register_and_login(&app, "jane@example.com").await;
    let (status, problem) =
        post(&app, "/v1/auth/register", &json!({ "email": "JANE@example.com", "password": PASSWORD })).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("email_taken")));

    let (wrong_status, wrong) =
        post(&app, "/v1/auth/login", &json!({ "email": "jane@example.com", "password": "wrong password!" })).await;
    let (unknown_status, unknown) =
        post(&app, "/v1/auth/login", &json!({ "email": "nobody@example.com", "password": PASSWORD })).await;
    assert_eq!((wrong_status, unknown_status), (401, 401));
    assert_eq!(wrong["code"], unknown["code"]);
    assert_eq!(wrong["detail"], unknown["detail"]);
}

fn sign(claims: &Value, secret: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_foreign_and_misused_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let session = register_and_login(&app, "jane@example.com").await;
    let access = session["access_token"].as_str().expect("token").to_owned();
    let (_, who) = me(&app, &access).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |overrides: Value| {
        let mut claims = json!({
            "iss": "ledgerline", "aud": "ledgerline-api", "sub": who["user_id"], "iat": now, "exp": now + 600,
            "jti": "x", "role": "customer", "token_use": "customer_access",
        });
        for (key, value) in overrides.as_object().expect("object") {
            claims[key] = value.clone();
        }
        claims
    };
    // The same claims, properly signed, pass: the cases below fail for their
    // one defect only.
    assert_eq!(me(&app, &sign(&claims(json!({})), JWT_SECRET, Algorithm::HS256)).await.0, 200);

    let (header, rest) = access.split_once('.').expect("a JWT");
    let (payload, signature) = rest.split_once('.').expect("a JWT");
    let flipped =
        format!("{header}.{payload}.{}{}", if signature.starts_with('A') { "B" } else { "A" }, &signature[1..]);
    let encode = |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let alg_none =
        format!("{}.{}.", encode(&json!({ "alg": "none", "typ": "JWT" })), encode(&claims(json!({ "role": "admin" }))));
    let cases = [
        ("bad signature", flipped),
        ("alg none", alg_none),
        ("another key", sign(&claims(json!({})), "another-secret-that-is-also-32-bytes-long", Algorithm::HS256)),
        ("expired", sign(&claims(json!({ "exp": now - 120, "iat": now - 1_000 })), JWT_SECRET, Algorithm::HS256)),
        ("wrong audience", sign(&claims(json!({ "aud": "another-api" })), JWT_SECRET, Algorithm::HS256)),
        ("wrong issuer", sign(&claims(json!({ "iss": "someone-else" })), JWT_SECRET, Algorithm::HS256)),
        ("HS512", sign(&claims(json!({})), JWT_SECRET, Algorithm::HS512)),
        ("not an access token", sign(&claims(json!({ "token_use": "refresh" })), JWT_SECRET, Algorithm::HS256)),
        ("a refresh token", session["refresh_token"].as_str().expect("refresh").to_owned()),
        ("an API client's token", app.token().await),
    ];
    for (what, token) in cases {
        let (status, problem) = me(&app, &token).await;
        assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_token")), "{what}");
    }
    // And a customer's token opens no API client route.
    let response = app
        .http()
        .get(app.url(&format!("/v1/accounts/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&access)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let response = app.http().get(app.url(path)).bearer_auth(token).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_only_their_accounts_and_pages_through_their_history() {
    let app = TestApp::spawn().await;
    let jane = register_and_login(&app, "jane@example.com").await["access_token"].as_str().expect("token").to_owned();
    let john = register_and_login(&app, "john@example.com").await["access_token"].as_str().expect("token").to_owned();

    let open = |key: &'static str| {
        let request = app
            .http()
            .post(app.url("/v1/me/accounts"))
            .bearer_auth(&jane)
            .header("Idempotency-Key", key)
            .json(&json!({ "currency": "EUR" }));
        async move {
            let response = request.send().await.expect("open");
            (response.status().as_u16(), response.json::<Value>().await.expect("JSON"))
        }
    };
    let (status, account) = open("first").await;
    assert_eq!(status, 201);
    let (status, again) = open("first").await;
    assert_eq!((status, &again["id"]), (200, &account["id"]), "a retry opens nothing new");
    let account_id = account["id"].as_str().expect("id").to_owned();
    let (_, listed) = get(&app, "/v1/me/accounts", &jane).await;
    assert_eq!(listed["accounts"].as_array().expect("accounts").len(), 1);

    // Nobody else sees it: not another customer, not an API client.
    assert_eq!(get(&app, &format!("/v1/me/accounts/{account_id}"), &john).await.0, 404);
    assert_eq!(get(&app, &format!("/v1/me/accounts/{account_id}/history"), &john).await.0, 404);
    assert_eq!(get(&app, &format!("/v1/accounts/{account_id}"), &app.token().await).await.0, 404);
    assert_eq!(get(&app, "/v1/me/accounts", &john).await.1["accounts"], json!([]));

    // Two deposits, then five payments in from a business account.
    let jane_account: uuid::Uuid = account_id.parse().expect("uuid");
    app.fund(jane_account, "10.00", "EUR").await;
    app.fund(jane_account, "20.00", "EUR").await;
    let business = app.open_account("EUR").await;
    app.fund(business, "100.00", "EUR").await;
    for n in 0..5 {
        let response = app.transfer(business, jane_account, "1.00", "EUR", &format!("pay-{n}-{business}")).await;
        let body: Value = response.json().await.expect("JSON");
        app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    }
    let (_, read) = get(&app, &format!("/v1/me/accounts/{account_id}"), &jane).await;
    assert_eq!(read["balance"], "35.00");

    let history = |query: String| {
        let path = format!("/v1/me/accounts/{account_id}/history?{query}");
        let token = jane.clone();
        let app = &app;
        async move { get(app, &path, &token).await }
    };
    let (status, first) = history("limit=3".into()).await;
    assert_eq!(status, 200);
    let cursor = first["next_cursor"].as_str().expect("more pages").to_owned();
    let (_, second) = history(format!("limit=3&cursor={cursor}")).await;
    let cursor = second["next_cursor"].as_str().expect("a third page").to_owned();
    let (_, third) = history(format!("limit=3&cursor={cursor}")).await;
    assert!(third["next_cursor"].is_null(), "the last page says so");
    let items: Vec<Value> =
        [first, second, third].iter().flat_map(|page| page["items"].as_array().expect("items").clone()).collect();
    assert_eq!(items.len(), 7, "every movement once across the pages");
    let balances: Vec<&str> = items.iter().map(|item| item["balance_after"].as_str().expect("balance")).collect();
    assert_eq!(balances, ["35.00", "34.00", "33.00", "32.00", "31.00", "30.00", "10.00"], "newest first");
    assert_eq!(items[0]["counterparty_account_id"], json!(business));

    let count = |page: &Value| page["items"].as_array().expect("items").len();
    assert_eq!(count(&history("direction=debit".into()).await.1), 0);
    assert_eq!(count(&history("direction=credit".into()).await.1), 7);
    assert_eq!(count(&history(format!("counterparty={business}")).await.1), 5);
    assert_eq!(count(&history("from=2100-01-01T00:00:00Z".into()).await.1), 0);
    let (status, problem) = history("cursor=forged".into()).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_cursor")));
    assert_eq!(history("limit=1000".into()).await.0, 400);

    // Her balance now and her statement of the last hour, hers only.
    let (status, balance) = get(&app, &format!("/v1/me/accounts/{account_id}/balance"), &jane).await;
    assert_eq!((status, balance["balance"].as_str()), (200, Some("35.00")), "{balance}");
    let from = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).format("%FT%TZ");
    let to = (chrono::Utc::now() + chrono::TimeDelta::minutes(1)).format("%FT%TZ");
    let statement_path = format!("/v1/me/accounts/{account_id}/statement?from={from}&to={to}");
    let (status, statement) = get(&app, &statement_path, &jane).await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(
        (statement["opening_balance"].as_str(), statement["closing_balance"].as_str()),
        (Some("0.00"), Some("35.00"))
    );
    assert_eq!(statement["lines"].as_array().expect("lines").len(), 7);
    assert_eq!(get(&app, &statement_path, &john).await.0, 404);
    assert_eq!(get(&app, &format!("/v1/me/accounts/{account_id}/balance"), &john).await.0, 404);
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response =
        app.http().request(method, app.url(path)).bearer_auth(token).json(body).send().await.expect("request");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let mut body: Value = serde_json::from_str(&response.text().await.expect("body")).unwrap_or(Value::Null);
    if let (Some(retry_after), Some(object)) = (retry_after, body.as_object_mut()) {
        object.insert("retry_after".into(), json!(retry_after));
    }
    (status, body)
}

async fn customer_with_account(app: &TestApp, email: &str) -> (String, String) {
    let token = register_and_login(app, email).await["access_token"].as_str().expect("token").to_owned();
    let (status, account) =
        send(app, reqwest::Method::POST, "/v1/me/accounts", &token, &json!({ "currency": "EUR" })).await;
    assert_eq!(status, 201);
    (token, account["id"].as_str().expect("id").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_transfer_needs_a_fresh_pin_step_up_of_the_same_user() {
    let app = TestApp::spawn().await;
    let (jane, jane_account) = customer_with_account(&app, "jane@example.com").await;
    let (john, john_account) = customer_with_account(&app, "john@example.com").await;
    app.fund(jane_account.parse().expect("uuid"), "50.00", "EUR").await;
    let transfer = json!({
        "source_account_id": jane_account, "destination_account_id": john_account, "amount": "5.00", "currency": "EUR",
    });
    let submit = |step_up: Option<String>, key: &'static str| {
        let mut request = app
            .http()
            .post(app.url("/v1/me/transfers"))
            .bearer_auth(&jane)
            .header("Idempotency-Key", key)
            .json(&transfer);
        if let Some(step_up) = step_up {
            request = request.header("x-step-up-token", step_up);
        }
        async move {
            let response = request.send().await.expect("transfer");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, problem) = submit(None, "t1").await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("step_up_required")));

    // A PIN first (with the password); changing it needs the current PIN.
    let pin = |pin: &str| json!({ "pin": pin });
    let first_pin = |pin: &str| json!({ "pin": pin, "current_password": PASSWORD });
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &first_pin("12")).await.0, 422);
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &first_pin("4821")).await.0, 204);
    let (status, problem) = send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &pin("9999")).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("current_pin_required")));
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &john, &first_pin("7777")).await.0, 204);

    let (status, step_up) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &pin("4821")).await;
    assert_eq!(status, 200);
    assert!(step_up["expires_in"].as_u64().is_some_and(|seconds| seconds <= 300));
    let (_, johns) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &john, &pin("7777")).await;
    for (what, token) in [("john's step-up", johns["step_up_token"].clone()), ("an access token", json!(jane))] {
        let (status, problem) = submit(token.as_str().map(str::to_owned), "t1").await;
        assert_eq!((status, problem["code"].as_str()), (401, Some("step_up_invalid")), "{what}");
    }
    let (status, accepted) = submit(step_up["step_up_token"].as_str().map(str::to_owned), "t1").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["transfer_id"].as_str().expect("id");
    let (status, decided) =
        send(&app, reqwest::Method::GET, &format!("/v1/me/transfers/{id}?wait_ms=10000"), &jane, &Value::Null).await;
    assert_eq!((status, decided["status"].as_str()), (200, Some("completed")), "the long poll waited for it");
    assert_eq!(send(&app, reqwest::Method::GET, &format!("/v1/me/transfers/{id}"), &john, &Value::Null).await.0, 404);
    let (_, account) =
        send(&app, reqwest::Method::GET, &format!("/v1/me/accounts/{john_account}"), &john, &Value::Null).await;
    assert_eq!(account["balance"], "5.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_pins_lock_pin_use_for_fifteen_minutes() {
    let app = TestApp::spawn().await;
    let (jane, _) = customer_with_account(&app, "jane@example.com").await;
    let first_pin = json!({ "pin": "4821", "current_password": PASSWORD });
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &first_pin).await.0, 204);
    for attempt in 1..=4 {
        let (status, problem) =
            send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "0000" })).await;
        assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_pin")), "attempt {attempt}");
    }
    let (status, problem) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "0000" })).await;
    assert_eq!((status, problem["code"].as_str()), (423, Some("pin_locked")));
    let retry_after: u64 = problem["retry_after"].as_str().expect("Retry-After").parse().expect("seconds");
    assert!((890..=900).contains(&retry_after), "{retry_after}");
    // Locked: even the right PIN, and a PIN change, wait.
    let (status, _) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!(status, 423);
    let change = json!({ "pin": "1111", "current_pin": "4821" });
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &change).await.0, 423);
}

/// Stores `pin` as the user's PIN straight in the database, the way
/// `PUT /v1/me/pin` would, for tests about what a PIN buys.
async fn store_pin(app: &TestApp, email: &str, pin: &str) {
    let hash = ledgerline_tests::hasher().hash(&secrecy::SecretString::from(pin.to_owned())).expect("hash");
    sqlx::query("update users set pin_hash = $2 where email = $1")
        .bind(email)
        .bind(hash)
        .execute(&app.pool)
        .await
        .expect("PIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_wrong_pins_get_five_guesses_at_most_and_the_lock_holds() {
    // The per-user bucket of PIN checks would turn most of the burst away
    // before any reservation; this is about the reservation.
    let app = TestApp::spawn_configured(|config| {
        config.pin_user_rate_limit = ingest::support::limits::RateLimit::per_second(1_000, 1_000);
    })
    .await;
    let (jane, _) = customer_with_account(&app, "jane@example.com").await;
    store_pin(&app, "jane@example.com", "4821").await;

    // Fifty guesses at once, none of them the PIN.
    let guesses =
        (0..50).map(|n| {
            let jane = jane.clone();
            let app = &app;
            async move {
                send(app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": format!("{n:04}") })).await
            }
        });
    let answers = futures::future::join_all(guesses).await;
    for (status, problem) in &answers {
        assert!(
            matches!((status, problem["code"].as_str()), (401, Some("invalid_pin")) | (423 | 429, _)),
            "{status} {problem}"
        );
    }
    // Every guess that was checked against the hash left an audit row.
    let checked = app.count("select count(*) from audit_log where action in ('pin.failed', 'pin.locked')").await;
    assert!(checked <= 5, "{checked} guesses were checked; the lockout allows 5");
    let wrong = answers.iter().filter(|(status, _)| *status == 401).count();
    assert!(wrong <= 4, "{wrong} answers said 'wrong PIN, try again'");
    assert_eq!(app.count("select count(*) from users where pin_locked_until > now()").await, 1, "locked");

    // Locked: the right PIN is refused too.
    let (status, problem) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!((status, problem["code"].as_str()), (423, Some("pin_locked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_token_pays_for_one_transfer_only() {
    let app = TestApp::spawn().await;
    let (jane, jane_account) = customer_with_account(&app, "jane@example.com").await;
    let (_, john_account) = customer_with_account(&app, "john@example.com").await;
    app.fund(jane_account.parse().expect("uuid"), "50.00", "EUR").await;
    store_pin(&app, "jane@example.com", "4821").await;
    let submit = |step_up: String, key: &'static str, amount: &'static str| {
        let request = app
            .http()
            .post(app.url("/v1/me/transfers"))
            .bearer_auth(&jane)
            .header("Idempotency-Key", key)
            .header("x-step-up-token", step_up)
            .json(&json!({
                "source_account_id": jane_account, "destination_account_id": john_account,
                "amount": amount, "currency": "EUR",
            }));
        async move {
            let response = request.send().await.expect("transfer");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let step_up = || async {
        let (status, body) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
        assert_eq!(status, 200, "{body}");
        body["step_up_token"].as_str().expect("step-up token").to_owned()
    };

    let token = step_up().await;
    let (status, first) = submit(token.clone(), "rent", "5.00").await;
    assert_eq!(status, 202, "{first}");
    // A retry of the same request (its answer was lost) is the same transfer.
    let (status, again) = submit(token.clone(), "rent", "5.00").await;
    assert!(status == 200 || status == 202, "{status} {again}");
    assert_eq!(again["transfer_id"], first["transfer_id"]);
    // Another transfer with the same step-up: refused, whatever it pays.
    for (key, amount) in [("more-rent", "5.00"), ("a-bigger-one", "40.00")] {
        let (status, problem) = submit(token.clone(), key, amount).await;
        assert_eq!((status, problem["code"].as_str()), (401, Some("step_up_used")), "{key}");
    }
    // A fresh PIN entry pays for the next one.
    let (status, second) = submit(step_up().await, "more-rent", "5.00").await;
    assert_eq!(status, 202, "{second}");
    assert_ne!(second["transfer_id"], first["transfer_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pin_needs_the_current_password() {
    let app = TestApp::spawn().await;
    let (jane, _) = customer_with_account(&app, "jane@example.com").await;
    // A stolen access token alone cannot give its thief a PIN.
    let (status, problem) = send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("current_password_required")), "{problem}");
    let wrong = json!({ "pin": "4821", "current_password": "not the password" });
    let (status, problem) = send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &wrong).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_credentials")));
    assert_eq!(app.count("select count(*) from users where pin_hash is not null").await, 0);
    let right = json!({ "pin": "4821", "current_password": PASSWORD });
    assert_eq!(send(&app, reqwest::Method::PUT, "/v1/me/pin", &jane, &right).await.0, 204);
    let (status, _) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!(status, 200);
}

/// Waits until `count` statements of this test's database wait for a lock.
async fn wait_for_lock_waiters(app: &TestApp, count: i64) {
    let deadline = tokio::time::Instant::now() + ledgerline_tests::WAIT_MAX;
    loop {
        let waiting = app
            .count(
                "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
            )
            .await;
        if waiting >= count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting} of {count} statements wait for a lock");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Neither the refresh token nor the one its refresh returned (if any)
/// renews anything after the logout.
async fn assert_family_dead(app: &TestApp, tokens: &[&Value], what: &str) {
    for token in tokens.iter().filter(|token| token.is_string()) {
        let (status, _) = post(app, "/v1/auth/refresh", &json!({ "refresh_token": token })).await;
        assert_eq!(status, 401, "{what}: a refresh token of the logged-out family still works");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_racing_a_refresh_leaves_no_live_refresh_token() {
    let app = TestApp::spawn_configured(|config| {
        config.token_ip_rate_limit = ingest::support::limits::RateLimit::per_second(1_000, 1_000);
        config.login_account_rate_limit = ingest::support::limits::RateLimit { per_minute: 600, burst: 100 };
    })
    .await;
    let session = register_and_login(&app, "jane@example.com").await;

    // The interleaving that lost the logout: the refresh holds the token's
    // row, the logout queues behind it and then misses the token the
    // refresh issued. The test holds the row so both queue, refresh first.
    let mut blocker = app.pool.begin().await.expect("transaction");
    sqlx::query("select 1 from refresh_tokens for update").execute(&mut *blocker).await.expect("row lock");
    let refresh = {
        let (http, url, token) = (app.http().clone(), app.url("/v1/auth/refresh"), session["refresh_token"].clone());
        tokio::spawn(async move {
            let response = http.post(url).json(&json!({ "refresh_token": token })).send().await.expect("refresh");
            response.json::<Value>().await.unwrap_or(Value::Null)
        })
    };
    wait_for_lock_waiters(&app, 1).await;
    let logout = {
        let (http, url, token) = (app.http().clone(), app.url("/v1/auth/logout"), session["refresh_token"].clone());
        tokio::spawn(async move {
            http.post(url).json(&json!({ "refresh_token": token })).send().await.expect("logout").status().as_u16()
        })
    };
    wait_for_lock_waiters(&app, 2).await;
    blocker.commit().await.expect("release");
    let refreshed = refresh.await.expect("refresh task");
    assert_eq!(logout.await.expect("logout task"), 204);
    assert_family_dead(&app, &[&session["refresh_token"], &refreshed["refresh_token"]], "refresh first").await;

    // And free races, as they come.
    for round in 0..10 {
        let (_, session) =
            post(&app, "/v1/auth/login", &json!({ "email": "jane@example.com", "password": PASSWORD })).await;
        let token = session["refresh_token"].clone();
        let body = json!({ "refresh_token": token });
        let ((_, refreshed), (status, _)) =
            tokio::join!(post(&app, "/v1/auth/refresh", &body), post(&app, "/v1/auth/logout", &body));
        assert_eq!(status, 204);
        assert_family_dead(&app, &[&token, &refreshed["refresh_token"]], &format!("round {round}")).await;
    }
}

/// Found in review of the #2 fix (issue 10): a reservation lost with its
/// process, on top of four wrong PINs, locked PIN use — and after the lock,
/// the same stale counts refused every attempt and locked again, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_lost_with_its_process_costs_a_lock_window_not_pin_use_for_good() {
    let app = TestApp::spawn().await;
    let (jane, _) = customer_with_account(&app, "jane@example.com").await;
    store_pin(&app, "jane@example.com", "4821").await;
    let set = |sql: &'static str| {
        let pool = app.pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.expect("update") }
    };
    // Four wrong PINs, and a check whose ingest died ten minutes ago.
    set("update users set pin_failed_attempts = 4, pin_attempts_in_flight = 1, \
         pin_attempt_reserved_at = now() - interval '10 minutes' where email = 'jane@example.com'")
    .await;
    let (status, problem) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!((status, problem["code"].as_str()), (423, Some("pin_locked")), "{problem}");

    // The lock window passes: the right PIN works again.
    set("update users set pin_locked_until = now() - interval '1 second' where email = 'jane@example.com'").await;
    let (status, body) = send(&app, reqwest::Method::POST, "/v1/auth/pin", &jane, &json!({ "pin": "4821" })).await;
    assert_eq!(status, 200, "{body}");
}
