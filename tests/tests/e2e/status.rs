//! What the status routes answer: the ledger's decision (the `transfers`
//! and `account_commands` tables), whatever happened to ingest's
//! `published_at` marker; a request recorded but whose publish was never
//! confirmed is shown as such, not as unknown; and a customer's long poll
//! waits on the decision, not on a query every few milliseconds.

use std::time::Duration;

use ledgerline_tests::{TestApp, WAIT_MAX, unique_key};
use reqwest::Method;
use schemas::messages::{TransferRequested, V1};
use schemas::{AccountId, Command, Currency, Money, TransferId};
use serde_json::{Value, json};
use uuid::Uuid;

/// GETs `path` until its `status` is one of `wanted`; the last answer.
async fn wait_for_status(app: &TestApp, path: &str, token: &str, wanted: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let (status, body) = app.call(Method::GET, path, Some(token), None).await;
        if status == 200 && body["status"].as_str().is_some_and(|status| wanted.contains(&status)) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never reached {wanted:?}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records a request as ingest does before publishing, and leaves it
/// unmarked, as if the handler was cancelled after the broker took it.
async fn record_unmarked(app: &TestApp, transfer_id: Uuid, client_id: Option<Uuid>, user_id: Option<Uuid>) {
    record(app, transfer_id, client_id, user_id, false).await;
}

async fn record(app: &TestApp, transfer_id: Uuid, client_id: Option<Uuid>, user_id: Option<Uuid>, published: bool) {
    sqlx::query(
        r"insert into accepted_requests (transfer_id, api_client_id, user_id, idempotency_key, request, published_at)
          values ($1, $2, $3, $4, $5, case when $6 then now() end)",
    )
    .bind(transfer_id)
    .bind(client_id)
    .bind(user_id)
    .bind(unique_key("unmarked"))
    .bind(json!({ "kind": "transfer" }))
    .bind(published)
    .execute(&app.pool)
    .await
    .expect("recorded");
}

/// A transfer the processor will reject (`unknown_account`), published
/// straight to the command topic with the id ingest recorded.
fn unknown_accounts_transfer(transfer_id: Uuid) -> Command {
    Command::TransferRequested(TransferRequested {
        version: V1,
        transfer_id: TransferId::from_uuid(transfer_id),
        source_account_id: AccountId::new_random(),
        destination_account_id: AccountId::new_random(),
        money: Money::parse("1.00", Currency::EUR).expect("money"),
        metadata: None,
        reference: None,
        requested_at: chrono::Utc::now(),
    })
}

async fn user_id(app: &TestApp, email: &str) -> Uuid {
    sqlx::query_scalar("select id from users where email = $1").bind(email).fetch_one(&app.pool).await.expect("user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_requests_answer_the_ledgers_decision_even_when_their_published_marker_was_never_set() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let (alice, bob) = (app.open_account("EUR").await, app.open_account("EUR").await);
    let deposit: Value = app.deposit(alice, "100.00", "EUR", &unique_key("d")).await.json().await.expect("JSON");
    let deposit_id = deposit["transfer_id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_for_decision(&deposit_id).await["status"], "completed");
    let transfer: Value = app.transfer(alice, bob, "10.00", "EUR", &unique_key("t")).await.json().await.expect("JSON");
    let transfer_id = transfer["transfer_id"].as_str().expect("id").to_owned();
    let rejected: Value =
        app.transfer(alice, bob, "1000.00", "EUR", &unique_key("t")).await.json().await.expect("JSON");
    let rejected_id = rejected["transfer_id"].as_str().expect("id").to_owned();
    let (status, payout) = app
        .call(
            Method::POST,
            "/v1/payouts",
            Some(&token),
            Some(json!({
                "source_account_id": alice, "amount": "5.00", "currency": "EUR",
                "creditor": { "name": "Jane Doe", "iban": "DE89 3704 0044 0532 0130 00" },
            })),
        )
        .await;
    assert_eq!(status, 202, "{payout}");
    let payout_id = payout["transfer_id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_for_decision(&transfer_id).await["status"], "completed");
    assert_eq!(app.wait_for_decision(&rejected_id).await["status"], "rejected");
    let held = app.wait_for_decision(&payout_id).await;

    // The marker is lost: the update failed, the handler was cancelled, or
    // librdkafka timed out a message the broker had written.
    sqlx::query("update accepted_requests set published_at = null").execute(&app.pool).await.expect("cleared");

    for (id, wanted, reason) in [
        (&deposit_id, "completed", None),
        (&transfer_id, "completed", None),
        (&rejected_id, "rejected", Some("insufficient_funds")),
        (&payout_id, held["status"].as_str().expect("status"), None),
    ] {
        let (status, view) = app.call(Method::GET, &format!("/v1/transfers/{id}"), Some(&token), None).await;
        assert_eq!(status, 200, "{id} is known: {view}");
        assert_eq!(view["status"], wanted, "{view}");
        assert_eq!(view["reason"].as_str(), reason, "{view}");
        assert_eq!(view["publish_confirmed"], true, "a decision proves the publish: {view}");
        assert!(view["decided_at"].is_string(), "{view}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_request_whose_publish_was_not_confirmed_is_unconfirmed_until_the_ledger_decides() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let transfer_id = Uuid::new_v4();
    record_unmarked(&app, transfer_id, Some(app.client_id), None).await;

    let path = format!("/v1/transfers/{transfer_id}");
    let (status, view) = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, 200, "not 404: the client must not conclude it was never sent: {view}");
    assert_eq!((view["status"].as_str(), view["publish_confirmed"].as_bool()), (Some("unconfirmed"), Some(false)));

    // The broker had it after all: the processor decides, and that is the answer.
    app.publish_command(&unknown_accounts_transfer(transfer_id)).await;
    let decided = wait_for_status(&app, &path, &token, &["rejected"]).await;
    assert_eq!(decided["reason"], "unknown_account");
    assert_eq!(decided["publish_confirmed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_unmarked_transfer_is_unconfirmed_and_then_shows_the_decision() {
    let app = TestApp::spawn().await;
    let jane = app.user_token("jane@example.com", "customer").await;
    let transfer_id = Uuid::new_v4();
    record_unmarked(&app, transfer_id, None, Some(user_id(&app, "jane@example.com").await)).await;

    let path = format!("/v1/me/transfers/{transfer_id}");
    let (status, view) = app.call(Method::GET, &path, Some(&jane), None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!((view["status"].as_str(), view["publish_confirmed"].as_bool()), (Some("unconfirmed"), Some(false)));

    app.publish_command(&unknown_accounts_transfer(transfer_id)).await;
    let decided = wait_for_status(&app, &format!("{path}?wait_ms=2000"), &jane, &["rejected"]).await;
    assert_eq!(decided["reason"], "unknown_account");
}

/// Posts a staff account command: its `Location` and id.
async fn staff_command(app: &TestApp, admin: &str, account: Uuid, action: &str) -> (String, String) {
    let response = app
        .http()
        .post(app.url(&format!("/v1/staff/accounts/{account}/{action}")))
        .bearer_auth(admin)
        .header("Idempotency-Key", unique_key(action))
        .send()
        .await
        .expect("command");
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().expect("ASCII").to_owned();
    let body: Value = response.json().await.expect("JSON");
    (location, body["transfer_id"].as_str().expect("id").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_account_commands_show_the_processors_decision_with_the_reason() {
    let app = TestApp::spawn().await;
    let admin = app.user_token("ada@example.com", "admin").await;
    let (empty, funded) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(funded, "5.00", "EUR").await;

    let (freeze_location, freeze_id) = staff_command(&app, &admin, empty, "freeze").await;
    assert_eq!(freeze_location, format!("/v1/staff/commands/{freeze_id}"));
    let frozen = wait_for_status(&app, &freeze_location, &admin, &["completed", "rejected"]).await;
    assert_eq!(frozen["status"], "completed", "{frozen}");
    assert!(frozen["decided_at"].is_string());

    // Closing an account with money in it is refused, and the reason shown.
    let (close_location, close_id) = staff_command(&app, &admin, funded, "close").await;
    let refused = wait_for_status(&app, &close_location, &admin, &["completed", "rejected"]).await;
    assert_eq!((refused["status"].as_str(), refused["reason"].as_str()), (Some("rejected"), Some("account_not_empty")));

    // The same decisions through the requester's own status route.
    let (_, view) = app.call(Method::GET, &format!("/v1/me/transfers/{close_id}"), Some(&admin), None).await;
    assert_eq!(view["status"], "rejected", "{view}");
    let (_, view) = app.call(Method::GET, &format!("/v1/me/transfers/{freeze_id}"), Some(&admin), None).await;
    assert_eq!(view["status"], "completed", "{view}");

    // Another admin's command is not this one's to read; support staff cannot read commands.
    let bea = app.user_token("bea@example.com", "admin").await;
    assert_eq!(app.call(Method::GET, &freeze_location, Some(&bea), None).await.0, 404);
    let sam = app.user_token("sam@example.com", "support").await;
    assert_eq!(app.call(Method::GET, &freeze_location, Some(&sam), None).await.0, 403);
}

/// A counter on ingest's metrics page.
async fn metric(app: &TestApp, series: &str) -> u64 {
    let address = app.metrics_address.as_deref().expect("metrics are served");
    let page = app.http().get(address).send().await.expect("scrape").text().await.expect("page");
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not on the page:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_long_poll_is_woken_by_the_decision_after_a_handful_of_status_reads() {
    let app =
        TestApp::spawn_configured(|config| config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"))).await;
    let jane = app.user_token("jane@example.com", "customer").await;
    let transfer_id = Uuid::new_v4();
    record(&app, transfer_id, None, Some(user_id(&app, "jane@example.com").await), true).await;
    let reads = "ledgerline_long_poll_status_reads_total";
    let before = metric(&app, reads).await;

    let path = format!("/v1/me/transfers/{transfer_id}?wait_ms=10000");
    let poll = app.call(Method::GET, &path, Some(&jane), None);
    let decide = async {
        // While the poll waits (if it has not started yet, it finds the
        // decision at once: fewer reads still).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        app.publish_command(&unknown_accounts_transfer(transfer_id)).await;
    };
    let ((status, view), ()) = tokio::join!(poll, decide);
    assert_eq!((status, view["status"].as_str()), (200, Some("rejected")), "the poll answered the decision: {view}");
    let spent = metric(&app, reads).await - before;
    assert!(spent <= 3, "one long poll read the status {spent} times");
}

/// Defect #13 of issue 10: a command the processor dead-letters (here one
/// of a version it does not know) answered `accepted` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_request_answers_dead_lettered_with_the_reason() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let transfer_id = Uuid::new_v4();
    record(&app, transfer_id, Some(app.client_id), None, true).await;
    let path = format!("/v1/transfers/{transfer_id}");
    let (_, view) = app.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(view["status"], "accepted");

    let mut from_the_future = serde_json::to_value(unknown_accounts_transfer(transfer_id)).expect("JSON");
    from_the_future["version"] = json!(2);
    app.publish_raw(&transfer_id.to_string(), from_the_future.to_string().as_bytes()).await;
    let dead = wait_for_status(&app, &path, &token, &["dead_lettered"]).await;
    assert_eq!(dead["reason"], "invalid_command");
}
