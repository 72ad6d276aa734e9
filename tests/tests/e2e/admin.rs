//! Admins manage roles, freezes, API clients and system accounts; each
//! change is audited and takes effect on the next request, whatever tokens
//! are already out.

use ledgerline_tests::{TestApp, USER_PASSWORD, unique_key};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    app.call(method, path, Some(token), body).await
}

async fn user_id(app: &TestApp, email: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar("select id from users where email = $1")
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .expect("user");
    id.to_string()
}

async fn audit_actions(app: &TestApp, admin: &str) -> Vec<Value> {
    let (status, body) = call(app, Method::GET, "/v1/admin/audit", admin, None).await;
    assert_eq!(status, 200);
    body["events"].as_array().expect("events").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_freezes_take_effect_on_the_next_request_and_are_audited() {
    let app = TestApp::spawn().await;
    let admin = app.user_token("ada@example.com", "admin").await;
    let sam = app.user_token("sam@example.com", "customer").await;
    let sam_id = user_id(&app, "sam@example.com").await;
    let account = app.open_account("EUR").await;
    let staff_read = format!("/v1/staff/accounts/{account}");

    // Sam's token says customer; the staff route asks the database.
    assert_eq!(call(&app, Method::GET, &staff_read, &sam, None).await.0, 403);
    let (status, body) =
        call(&app, Method::POST, &format!("/v1/admin/users/{sam_id}/role"), &admin, Some(json!({ "role": "support" })))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "support");
    assert_eq!(call(&app, Method::GET, &staff_read, &sam, None).await.0, 200, "same token, new role");

    let (status, body) = call(&app, Method::GET, "/v1/admin/users?role=support", &admin, None).await;
    assert_eq!(status, 200);
    let emails: Vec<&str> =
        body["users"].as_array().expect("users").iter().filter_map(|u| u["email"].as_str()).collect();
    assert_eq!(emails, ["sam@example.com"]);

    // Freezing ends the session at once, and login, until unfrozen.
    let (status, body) = call(&app, Method::POST, &format!("/v1/admin/users/{sam_id}/freeze"), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["frozen_at"].is_string());
    assert_eq!(call(&app, Method::GET, "/v1/me", &sam, None).await.0, 401);
    assert_eq!(app.login("sam@example.com", USER_PASSWORD).await, Err(401));
    let (status, _) = call(&app, Method::POST, &format!("/v1/admin/users/{sam_id}/unfreeze"), &admin, None).await;
    assert_eq!(status, 200);
    let sam_again = app.login("sam@example.com", USER_PASSWORD).await.expect("login after unfreeze");
    assert_eq!(call(&app, Method::GET, "/v1/me", &sam, None).await.0, 401, "a token from before the freeze stays dead");
    assert_eq!(call(&app, Method::GET, &staff_read, &sam_again, None).await.0, 200);

    // Demoted: the new token is a customer's again.
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/admin/users/{sam_id}/role"),
        &admin,
        Some(json!({ "role": "customer" })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(call(&app, Method::GET, &staff_read, &sam_again, None).await.0, 403);

    // No one changes their own role or freezes themselves; no made-up roles.
    let ada_id = user_id(&app, "ada@example.com").await;
    let (status, body) =
        call(&app, Method::POST, &format!("/v1/admin/users/{ada_id}/role"), &admin, Some(json!({ "role": "ops" })))
            .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("not_oneself")));
    let (status, body) = call(&app, Method::POST, &format!("/v1/admin/users/{ada_id}/freeze"), &admin, None).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("not_oneself")));
    let (status, body) =
        call(&app, Method::POST, &format!("/v1/admin/users/{sam_id}/role"), &admin, Some(json!({ "role": "root" })))
            .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_role")));
    // Only admins manage users.
    assert_eq!(call(&app, Method::POST, &format!("/v1/admin/users/{ada_id}/freeze"), &sam_again, None).await.0, 403);

    let events = audit_actions(&app, &admin).await;
    let about_sam: Vec<(&str, &Value)> = events
        .iter()
        .filter(|event| event["subject_user_id"] == sam_id.as_str() && event["actor_user_id"] == ada_id.as_str())
        .map(|event| (event["action"].as_str().expect("action"), &event["detail"]))
        .collect();
    assert_eq!(
        about_sam,
        [
            ("user.role_changed", &json!({ "from": "support", "to": "customer" })),
            ("user.unfrozen", &json!({})),
            ("user.frozen", &json!({})),
            ("user.role_changed", &json!({ "from": "customer", "to": "support" })),
        ],
        "newest first"
    );
    assert!(events.iter().all(|event| event["ip"] == "127.0.0.1" || event["ip"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_and_disable_api_clients_and_a_disabled_clients_tokens_stop_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.user_token("ada@example.com", "admin").await;
    let (status, created) = call(
        &app,
        Method::POST,
        "/v1/admin/clients",
        &admin,
        Some(json!({ "name": "payroll", "scopes": ["accounts:write", "accounts:read"] })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let client_id = created["client_id"].as_str().expect("id").to_owned();
    let secret = created["client_secret"].as_str().expect("secret").to_owned();

    let response = app.request_token(&client_id, &secret, None).await;
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.expect("token")["access_token"].as_str().expect("token").to_owned();
    let open = |token: String| {
        let app = &app;
        async move {
            app.http()
                .post(app.url("/v1/accounts"))
                .bearer_auth(token)
                .json(&json!({ "currency": "EUR" }))
                .send()
                .await
                .expect("open")
                .status()
                .as_u16()
        }
    };
    assert_eq!(open(token.clone()).await, 201);

    let (status, listed) = call(&app, Method::GET, "/v1/admin/clients", &admin, None).await;
    assert_eq!(status, 200);
    let payroll =
        listed["clients"].as_array().expect("clients").iter().find(|c| c["id"] == client_id.as_str()).cloned();
    let payroll = payroll.expect("listed");
    assert_eq!(payroll["scopes"], json!(["accounts:write", "accounts:read"]));
    assert!(payroll.get("secret_hash").is_none() && payroll.get("client_secret").is_none(), "{payroll}");

    let (status, disabled) =
        call(&app, Method::POST, &format!("/v1/admin/clients/{client_id}/disable"), &admin, None).await;
    assert_eq!(status, 200);
    assert!(disabled["disabled_at"].is_string());
    assert_eq!(open(token).await, 401, "an issued token stops working at once");
    assert_eq!(app.request_token(&client_id, &secret, None).await.status(), 401);

    // Bad input is refused with stable codes; nothing is created.
    for (body, code) in [
        (json!({ "name": "x", "scopes": ["admin:everything"] }), "invalid_scope"),
        (json!({ "name": "x", "scopes": [] }), "invalid_scope"),
        (json!({ "name": "", "scopes": ["accounts:read"] }), "invalid_name"),
        (json!({ "name": "bell\u{7}", "scopes": ["accounts:read"] }), "invalid_name"),
    ] {
        let (status, problem) = call(&app, Method::POST, "/v1/admin/clients", &admin, Some(body)).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some(code)));
    }
    assert_eq!(app.count("select count(*) from api_clients").await, 2, "the test client and payroll");

    let actions: Vec<String> = audit_actions(&app, &admin)
        .await
        .iter()
        .filter_map(|event| event["action"].as_str().map(str::to_owned))
        .filter(|action| action.starts_with("api_client."))
        .collect();
    assert_eq!(actions, ["api_client.disabled", "api_client.created"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_open_system_accounts_once_per_role_and_currency() {
    let app = TestApp::spawn().await;
    let admin = app.user_token("ada@example.com", "admin").await;
    let ops = app.user_token("oz@example.com", "ops").await;
    let body = json!({ "currency": "EUR", "system_role": "fees" });
    let (status, opened) = call(&app, Method::POST, "/v1/admin/system-accounts", &admin, Some(body.clone())).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["system_role"], "fees");
    assert_eq!(opened["currency"], "EUR");
    assert_eq!(opened["balance"], "0.00");
    let (status, again) = call(&app, Method::POST, "/v1/admin/system-accounts", &admin, Some(body.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], opened["id"]);
    assert_eq!(call(&app, Method::POST, "/v1/admin/system-accounts", &ops, Some(body)).await.0, 403);
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/admin/system-accounts",
        &admin,
        Some(json!({ "currency": "EUR", "system_role": "Fees; drop table accounts" })),
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_system_role")));

    let (status, listed) = call(&app, Method::GET, "/v1/admin/system-accounts", &admin, None).await;
    assert_eq!(status, 200);
    let eur: Vec<&str> = listed["system_accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .filter(|account| account["currency"] == "EUR")
        .filter_map(|account| account["system_role"].as_str())
        .collect();
    assert_eq!(eur, ["cash_in", "external_clearing", "fees"]);

    // A staff freeze is audited with the account it names.
    let customer_account = app.open_account("EUR").await;
    let response = app
        .http()
        .post(app.url(&format!("/v1/staff/accounts/{customer_account}/freeze")))
        .bearer_auth(&admin)
        .header("Idempotency-Key", unique_key("freeze"))
        .send()
        .await
        .expect("freeze");
    assert_eq!(response.status(), 202);
    let events = audit_actions(&app, &admin).await;
    let freeze = events.iter().find(|event| event["action"] == "account.freeze_requested").expect("audited");
    assert_eq!(freeze["detail"]["account_id"], customer_account.to_string());
    assert!(
        events
            .iter()
            .any(|event| event["action"] == "system_account.opened" && event["detail"]["system_role"] == "fees")
    );

    // Money made from cash-in by a person is audited with who and how much.
    let response = app
        .http()
        .post(app.url(&format!("/v1/staff/accounts/{customer_account}/deposits")))
        .bearer_auth(&ops)
        .header("Idempotency-Key", unique_key("deposit"))
        .json(&json!({ "amount": "25.00", "currency": "EUR" }))
        .send()
        .await
        .expect("deposit");
    assert_eq!(response.status(), 202);
    let events = audit_actions(&app, &admin).await;
    let deposit = events.iter().find(|event| event["action"] == "account.deposit_requested").expect("audited");
    assert_eq!(deposit["detail"]["amount"], "25.00");
    assert_eq!(deposit["detail"]["account_id"], customer_account.to_string());
    assert_eq!(deposit["actor_user_id"], user_id(&app, "oz@example.com").await.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_freezing_each_other_at_once_leave_one_and_the_last_admin_stays() {
    let app = TestApp::spawn().await;
    let ada = app.user_token("ada@example.com", "admin").await;
    let bea = app.user_token("bea@example.com", "admin").await;
    let (ada_id, bea_id) = (user_id(&app, "ada@example.com").await, user_id(&app, "bea@example.com").await);
    let (bea_path, ada_path) = (format!("/v1/admin/users/{bea_id}/freeze"), format!("/v1/admin/users/{ada_id}/freeze"));
    let freeze_bea = call(&app, Method::POST, &bea_path, &ada, None);
    let freeze_ada = call(&app, Method::POST, &ada_path, &bea, None);
    let ((by_ada, _), (by_bea, _)) = tokio::join!(freeze_bea, freeze_ada);
    let mut statuses = [by_ada, by_bea];
    statuses.sort_unstable();
    assert!(
        statuses == [200, 401] || statuses == [200, 403],
        "one freeze wins, the other admin is no longer one: {statuses:?}"
    );
    assert_eq!(app.count("select count(*) from users where role = 'admin' and disabled_at is null").await, 1);

    // From the shell, the last active admin cannot be demoted either.
    let survivor = if by_ada == 200 { "ada@example.com" } else { "bea@example.com" };
    let error = ingest::domain::users::set_role_by_email(&app.pool, survivor, "customer").await.expect_err("refused");
    assert!(format!("{error:?}").contains("last_admin"), "{error:?}");
    // And the way back for the frozen one is the shell too.
    let frozen = if by_ada == 200 { "bea@example.com" } else { "ada@example.com" };
    ingest::domain::users::unfreeze_by_email(&app.pool, frozen).await.expect("unfrozen");
    assert!(app.login(frozen, USER_PASSWORD).await.is_ok());
}

/// A refresh token issued in an earlier session epoch refreshes nothing,
/// even if nothing revoked it (a refresh that raced a password change or a
/// freeze, and inserted its token after the revocation's snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_of_an_earlier_session_epoch_is_refused() {
    let app = TestApp::spawn().await;
    app.user_token("jane@example.com", "customer").await;
    let credentials = json!({ "email": "jane@example.com", "password": USER_PASSWORD });
    let (_, session) = app.call(Method::POST, "/v1/auth/login", None, Some(credentials)).await;
    let refresh = json!({ "refresh_token": session["refresh_token"] });
    // The epoch moves on, as a password change does, but this token is not revoked.
    sqlx::query("update users set session_epoch = session_epoch + 1 where email = 'jane@example.com'")
        .execute(&app.pool)
        .await
        .expect("epoch");
    let (status, problem) = app.call(Method::POST, "/v1/auth/refresh", None, Some(refresh)).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("invalid_refresh_token")));
    let access = session["access_token"].as_str().expect("token");
    assert_eq!(app.call(Method::GET, "/v1/me", Some(access), None).await.0, 401);
}
