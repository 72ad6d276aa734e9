//! `/openapi.json` is served, and every operation it lists answers each kind
//! of caller as its access rule says: the authorization matrix over every
//! route, not a sample. A new route fails this test until it is given a
//! rule below.

use std::collections::BTreeMap;

use ledgerline_tests::TestApp;
use reqwest::Method;
use serde_json::{Value, json};

/// Who may call an operation.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// No token needed (it may still check a body, a signature, a token in the body).
    Public,
    /// An API client's token.
    Client,
    /// A user's token with one of these roles.
    Roles(&'static [&'static str]),
}

const ANY_USER: Access = Access::Roles(&["customer", "support", "admin", "ops"]);
const ADMIN: Access = Access::Roles(&["admin"]);
const OPS: Access = Access::Roles(&["ops", "admin"]);

/// The rule for every operation, by operationId.
fn rules() -> BTreeMap<&'static str, Access> {
    BTreeMap::from([
        ("openapi", Access::Public),
        ("health_live", Access::Public),
        ("health_ready", Access::Public),
        ("oauth_token", Access::Public),
        ("provider_callback", Access::Public),
        ("customer_register", Access::Public),
        ("customer_login", Access::Public),
        ("customer_refresh", Access::Public),
        ("customer_logout", Access::Public),
        ("password_reset_request", Access::Public),
        ("password_reset_confirm", Access::Public),
        ("me", ANY_USER),
        ("change_password", ANY_USER),
        ("set_pin", ANY_USER),
        ("pin_step_up", ANY_USER),
        ("customer_open_account", ANY_USER),
        ("customer_list_accounts", ANY_USER),
        ("customer_get_account", ANY_USER),
        ("customer_account_history", ANY_USER),
        ("customer_get_balance", ANY_USER),
        ("customer_get_statement", ANY_USER),
        ("customer_create_transfer", ANY_USER),
        ("customer_get_transfer", ANY_USER),
        ("open_account", Access::Client),
        ("get_account", Access::Client),
        ("list_entries", Access::Client),
        ("client_deposit", Access::Client),
        ("create_transfer", Access::Client),
        ("get_transfer", Access::Client),
        ("create_payout", Access::Client),
        ("list_transfers", Access::Client),
        ("reverse_transfer", Access::Client),
        ("create_transfer_batch", Access::Client),
        ("place_hold", Access::Client),
        ("get_hold", Access::Client),
        ("capture_hold", Access::Client),
        ("void_hold", Access::Client),
        ("get_balance", Access::Client),
        ("get_statement", Access::Client),
        ("set_spending_limits", Access::Client),
        ("webhook_create", Access::Client),
        ("webhook_list", Access::Client),
        ("webhook_delete", Access::Client),
        ("staff_read_account", Access::Roles(&["support", "admin", "ops"])),
        ("staff_deposit", OPS),
        ("staff_freeze_account", ADMIN),
        ("staff_unfreeze_account", ADMIN),
        ("staff_close_account", ADMIN),
        ("staff_set_spending_limits", ADMIN),
        ("staff_command_status", OPS),
        ("admin_audit", ADMIN),
        ("admin_list_users", ADMIN),
        ("admin_change_role", ADMIN),
        ("admin_freeze_user", ADMIN),
        ("admin_unfreeze_user", ADMIN),
        ("admin_list_clients", ADMIN),
        ("admin_create_client", ADMIN),
        ("admin_disable_client", ADMIN),
        ("admin_list_system_accounts", ADMIN),
        ("admin_open_system_account", ADMIN),
        ("ops_dead_letters", OPS),
        ("ops_replay_dead_letters", OPS),
        ("ops_outbox_status", OPS),
        ("ops_outbox_dead", OPS),
        ("ops_outbox_retry", OPS),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_each_caller_as_its_rule_says() {
    // Public routes are called many times from one address.
    let app = TestApp::spawn_configured(|config| {
        config.token_ip_rate_limit = ingest::support::limits::RateLimit::per_second(1_000, 1_000);
    })
    .await;
    let served: Value =
        app.http().get(app.url("/openapi.json")).send().await.expect("document").json().await.expect("JSON");
    assert_eq!(served, serde_json::to_value(ingest::router::openapi()).expect("serializes"), "served as generated");

    let callers = [
        ("customer", Some(app.user_token("jane@example.com", "customer").await)),
        ("support", Some(app.user_token("sam@example.com", "support").await)),
        ("admin", Some(app.user_token("ada@example.com", "admin").await)),
        ("ops", Some(app.user_token("oz@example.com", "ops").await)),
        ("client", Some(app.token().await)),
        ("nobody", None),
    ];
    let rules = rules();
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let id = operation["operationId"].as_str().expect("operationId");
            seen.push(id.to_owned());
            let Some(access) = rules.get(id) else {
                wrong.push(format!("{id} ({method} {path}) has no rule in this test"));
                continue;
            };
            // Ids that name nothing: an allowed caller gets past the door
            // and is then told the thing does not exist or the body is wrong.
            let concrete = path
                .split('/')
                .map(
                    |segment| {
                        if segment.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { segment.to_owned() }
                    },
                )
                .collect::<Vec<_>>()
                .join("/");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            for (caller, token) in &callers {
                let mut request = app
                    .http()
                    .request(method.clone(), app.url(&concrete))
                    .header("Idempotency-Key", ledgerline_tests::unique_key("matrix"));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if method == Method::POST {
                    request = request.json(&json!({}));
                }
                let response = request.send().await.expect("request");
                let status = response.status().as_u16();
                let problem: Value = response.json().await.unwrap_or(Value::Null);
                // Past the door, a transfer asks for the PIN's step-up token:
                // that 401 is the next step for an allowed caller, not a refusal.
                let next_step = problem["code"] == "step_up_required";
                let allowed = match access {
                    Access::Public => true,
                    Access::Client => *caller == "client",
                    Access::Roles(roles) => roles.contains(caller),
                };
                let refused = (status == 401 && !next_step) || status == 403;
                // A refusal for want of a bearer token or a role, as opposed to
                // a public route's own checks (a signature, a token in the body).
                let bearer_refusal = matches!(
                    problem["code"].as_str(),
                    Some("unauthenticated" | "invalid_token" | "insufficient_scope" | "forbidden_role")
                );
                let fine = match access {
                    // A public route asks for no bearer token and no role.
                    Access::Public => !bearer_refusal,
                    _ if allowed => !refused,
                    // Wrong kind of token or none: 401; a user without the role: 403.
                    Access::Roles(_) if token.is_some() && *caller != "client" => status == 403,
                    _ => status == 401,
                };
                if !fine {
                    wrong.push(format!("{id}: {method} {path} as {caller}: {status}"));
                }
            }
        }
    }
    for id in rules.keys() {
        if !seen.iter().any(|seen| seen == id) {
            wrong.push(format!("the rule for {id} names no documented operation"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
