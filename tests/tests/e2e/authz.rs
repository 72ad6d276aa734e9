//! The authorization matrix: each family of routes against each kind of
//! caller — a customer, the staff roles, an API client, nobody. Customers
//! never learn of others' accounts (404); staff routes refuse other roles
//! (403); a token of the wrong kind is no token (401).

use ledgerline_tests::{TestApp, unique_key};
use reqwest::Method;
use serde_json::{Value, json};

async fn user_token(app: &TestApp, email: &str, role: &str) -> String {
    app.user_token(email, role).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_family_answers_each_caller_as_the_matrix_says() {
    let app = TestApp::spawn().await;
    let customer = user_token(&app, "jane@example.com", "customer").await;
    let support = user_token(&app, "sam@example.com", "support").await;
    let admin = user_token(&app, "ada@example.com", "admin").await;
    let ops = user_token(&app, "oz@example.com", "ops").await;
    let client = app.token().await;

    let opened: Value = app
        .http()
        .post(app.url("/v1/me/accounts"))
        .bearer_auth(&customer)
        .json(&json!({ "currency": "EUR" }))
        .send()
        .await
        .expect("open")
        .json()
        .await
        .expect("JSON");
    let jane_account = opened["id"].as_str().expect("id").to_owned();
    let client_account = app.open_account("EUR").await;

    // (method, path, body, [customer, support, admin, ops, client, nobody])
    let matrix: Vec<(Method, String, Value, [u16; 6])> = vec![
        (Method::GET, "/v1/me".into(), Value::Null, [200, 200, 200, 200, 401, 401]),
        (Method::GET, format!("/v1/me/accounts/{jane_account}"), Value::Null, [200, 404, 404, 404, 401, 401]),
        (Method::GET, format!("/v1/me/accounts/{jane_account}/history"), Value::Null, [200, 404, 404, 404, 401, 401]),
        (Method::GET, format!("/v1/accounts/{client_account}"), Value::Null, [401, 401, 401, 401, 200, 401]),
        (Method::GET, format!("/v1/accounts/{jane_account}"), Value::Null, [401, 401, 401, 401, 404, 401]),
        (Method::GET, format!("/v1/staff/accounts/{jane_account}"), Value::Null, [403, 200, 200, 200, 401, 401]),
        (
            Method::POST,
            format!("/v1/staff/accounts/{jane_account}/deposits"),
            json!({ "amount": "1.00", "currency": "EUR" }),
            [403, 403, 202, 202, 401, 401],
        ),
        (
            Method::POST,
            format!("/v1/staff/accounts/{client_account}/freeze"),
            Value::Null,
            [403, 403, 202, 403, 401, 401],
        ),
        (Method::GET, "/v1/admin/audit".into(), Value::Null, [403, 403, 200, 403, 401, 401]),
        (Method::GET, "/v1/webhooks".into(), Value::Null, [401, 401, 401, 401, 200, 401]),
        (
            Method::POST,
            "/v1/transfers".into(),
            json!({ "source_account_id": client_account, "destination_account_id": jane_account, "amount": "1.00", "currency": "EUR" }),
            [401, 401, 401, 401, 202, 401],
        ),
        (
            Method::POST,
            format!("/v1/accounts/{jane_account}/deposits"),
            json!({ "amount": "1.00", "currency": "EUR" }),
            [401, 401, 401, 401, 202, 401],
        ),
    ];
    let callers = [Some(&customer), Some(&support), Some(&admin), Some(&ops), Some(&client), None];
    let names = ["customer", "support", "admin", "ops", "API client", "nobody"];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &matrix {
        for ((caller, name), want) in callers.iter().zip(names).zip(expected) {
            let mut request =
                app.http().request(method.clone(), app.url(path)).header("Idempotency-Key", unique_key("authz"));
            if let Some(token) = caller {
                request = request.bearer_auth(token);
            }
            if !body.is_null() {
                request = request.json(body);
            }
            let got = request.send().await.expect("request").status().as_u16();
            if got != *want {
                wrong.push(format!("{method} {path} as {name}: {got}, expected {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
