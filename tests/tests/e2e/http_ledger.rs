//! The ledger's features over HTTP, end to end (ingest → Kafka → processor
//! → Postgres): holds placed, captured and voided; reversals; multi-leg
//! batches, all or nothing; references and metadata; balances as of an
//! instant; statements; spending limits.

use std::time::Duration;

use ledgerline_tests::{TestApp, dec};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

/// Sends `body` to `path` with a fresh `Idempotency-Key` and the client's
/// token; the status and the answer.
async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let token = app.token().await;
    app.call(Method::POST, path, Some(&token), Some(body)).await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let token = app.token().await;
    app.call(Method::GET, path, Some(&token), None).await
}

/// Submits and waits for the ledger's decision.
async fn decided(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, accepted) = post(app, path, body).await;
    assert_eq!(status, 202, "{path}: {accepted}");
    app.wait_for_decision(accepted["transfer_id"].as_str().expect("transfer_id")).await
}

fn leg(source: Uuid, destination: Uuid, amount: &str, currency: &str) -> Value {
    json!({"source_account_id": source, "destination_account_id": destination, "amount": amount, "currency": currency})
}

async fn held(app: &TestApp, account: Uuid) -> Decimal {
    app.account(account).await["held"].as_str().expect("held").parse().expect("decimal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_placed_captured_in_part_and_voided_over_http() {
    let app = TestApp::spawn().await;
    let (shopper, merchant) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(shopper, "100.00", "EUR").await;

    let hold = json!({
        "source_account_id": shopper, "destination_account_id": merchant, "amount": "60.00", "currency": "EUR",
        "expires_in_s": 600, "reference": "AUTH 4711", "metadata": {"terminal": "T-9"},
    });
    let (status, placed) = post(&app, "/v1/holds", hold).await;
    assert_eq!(status, 202, "{placed}");
    let hold_id = placed["transfer_id"].as_str().expect("id").to_owned();
    let view = app.wait_for_decision(&hold_id).await;
    assert_eq!(view["status"], "held", "{view}");
    assert!(view["expires_at"].is_string(), "{view}");
    assert_eq!(held(&app, shopper).await, dec("60.00"));

    // Capture 45 of 60: 45 moves, 15 is released.
    let capture = decided(&app, &format!("/v1/holds/{hold_id}/capture"), json!({"amount": "45.00"})).await;
    assert_eq!(capture["status"], "completed", "{capture}");
    let (status, view) = get(&app, &format!("/v1/holds/{hold_id}")).await;
    assert_eq!(status, 200);
    assert_eq!((view["status"].as_str(), view["captured_amount"].as_str()), (Some("posted"), Some("45.00")), "{view}");
    assert_eq!((app.balance(shopper).await, held(&app, shopper).await), (dec("55.00"), Decimal::ZERO));
    assert_eq!(app.balance(merchant).await, dec("45.00"));
    // The same decisions and codes as the Kafka commands.
    let again = decided(&app, &format!("/v1/holds/{hold_id}/capture"), json!({})).await;
    assert_eq!((again["status"].as_str(), again["reason"].as_str()), (Some("rejected"), Some("hold_already_settled")));

    // Another hold, voided: its funds come back at once.
    let (_, second) = post(
        &app,
        "/v1/holds",
        json!({"source_account_id": shopper, "destination_account_id": merchant, "amount": "50.00", "currency": "EUR"}),
    )
    .await;
    let second_id = second["transfer_id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_for_decision(&second_id).await["status"], "held");
    let too_much = decided(&app, &format!("/v1/holds/{second_id}/capture"), json!({"amount": "50.01"})).await;
    assert_eq!(too_much["reason"], "amount_exceeds_hold", "{too_much}");
    let token = app.token().await;
    let (status, void) = app.call(Method::POST, &format!("/v1/holds/{second_id}/void"), Some(&token), None).await;
    assert_eq!(status, 202, "{void}");
    assert_eq!(app.wait_for_decision(void["transfer_id"].as_str().expect("id")).await["status"], "completed");
    assert_eq!(get(&app, &format!("/v1/holds/{second_id}")).await.1["status"], "voided");
    assert_eq!(held(&app, shopper).await, Decimal::ZERO);

    // Bounds and unknown holds.
    let (status, problem) = post(
        &app,
        "/v1/holds",
        json!({"source_account_id": shopper, "destination_account_id": merchant, "amount": "1.00",
               "currency": "EUR", "expires_in_s": 2_592_001}),
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_expiry")), "{problem}");
    let unknown = Uuid::new_v4();
    assert_eq!(post(&app, &format!("/v1/holds/{unknown}/capture"), json!({})).await.0, 404);
    assert_eq!(get(&app, &format!("/v1/holds/{unknown}")).await.0, 404);
    assert!(app.ledger_problems().await.is_empty(), "{:?}", app.ledger_problems().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payee_reverses_a_transfer_once_and_the_original_shows_it() {
    let app = TestApp::spawn().await;
    let (payer, payee) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(payer, "100.00", "EUR").await;
    let original = decided(&app, "/v1/transfers", leg(payer, payee, "30.00", "EUR")).await;
    assert_eq!(original["status"], "completed");
    let original_id = original["transfer_id"].as_str().expect("id").to_owned();

    let path = format!("/v1/transfers/{original_id}/reversal");
    let reversal = decided(&app, &path, json!({"reason": "Duplicate charge"})).await;
    assert_eq!(reversal["status"], "completed", "{reversal}");
    assert_eq!((app.balance(payer).await, app.balance(payee).await), (dec("100.00"), Decimal::ZERO));
    let view = app.wait_for_decision(&original_id).await;
    assert_eq!(view["reversed_by"], reversal["transfer_id"], "{view}");
    assert_eq!(view["reversal_reason"], "Duplicate charge", "{view}");

    // At most once: a second reversal (another key) is refused by the ledger.
    let twice = decided(&app, &path, json!({"reason": "Again"})).await;
    assert_eq!(twice["reason"], "already_reversed", "{twice}");
    // No reason, an unknown transfer: refused at the door.
    assert_eq!(post(&app, &path, json!({})).await.0, 422);
    assert_eq!(post(&app, &path, json!({"reason": ""})).await.0, 422);
    let (status, problem) =
        post(&app, &format!("/v1/transfers/{}/reversal", Uuid::new_v4()), json!({"reason": "x"})).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("transfer_not_found")));
    assert!(app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_all_its_legs_or_none_across_currencies() {
    let app = TestApp::spawn().await;
    let (shopper, merchant, fees) =
        (app.open_account("EUR").await, app.open_account("EUR").await, app.open_account("EUR").await);
    let (fx_eur, fx_usd, traveller_usd) =
        (app.open_account("EUR").await, app.open_account("USD").await, app.open_account("USD").await);
    app.fund(shopper, "200.00", "EUR").await;
    app.fund(fx_usd, "1000.00", "USD").await;

    // A payment with its fee.
    let paid = decided(
        &app,
        "/v1/transfer-batches",
        json!({"legs": [leg(shopper, merchant, "100.00", "EUR"), leg(shopper, fees, "1.50", "EUR")],
               "reference": "ORDER-1042", "metadata": {"order": "1042"}}),
    )
    .await;
    assert_eq!((paid["status"].as_str(), paid["kind"].as_str()), (Some("completed"), Some("batch")), "{paid}");
    assert_eq!(app.balance(shopper).await, dec("98.50"));
    assert_eq!((app.balance(merchant).await, app.balance(fees).await), (dec("100.00"), dec("1.50")));

    // An exchange through the client's own accounts of each currency.
    let exchanged = decided(
        &app,
        "/v1/transfer-batches",
        json!({"legs": [leg(shopper, fx_eur, "50.00", "EUR"), leg(fx_usd, traveller_usd, "54.25", "USD")]}),
    )
    .await;
    assert_eq!(exchanged["status"], "completed", "{exchanged}");
    assert_eq!(app.balance(traveller_usd).await, dec("54.25"));

    // A failing last leg leaves every balance as it was.
    let before: Vec<Decimal> = {
        let mut balances = Vec::new();
        for account in [shopper, merchant, fees, fx_eur] {
            balances.push(app.balance(account).await);
        }
        balances
    };
    let refused = decided(
        &app,
        "/v1/transfer-batches",
        json!({"legs": [leg(shopper, merchant, "40.00", "EUR"), leg(shopper, fees, "1.00", "EUR"),
                        leg(shopper, fx_eur, "10.00", "EUR")]}),
    )
    .await;
    assert_eq!(
        (refused["status"].as_str(), refused["reason"].as_str(), refused["rejected_leg"].as_i64()),
        (Some("rejected"), Some("insufficient_funds"), Some(2)),
        "{refused}"
    );
    for (account, balance) in [shopper, merchant, fees, fx_eur].into_iter().zip(before) {
        assert_eq!(app.balance(account).await, balance, "{account} untouched");
    }
    // A leg in the wrong currency refuses the whole batch with its own reason.
    let mismatched = decided(
        &app,
        "/v1/transfer-batches",
        json!({"legs": [leg(shopper, merchant, "1.00", "EUR"), leg(shopper, traveller_usd, "1.00", "EUR")]}),
    )
    .await;
    assert_eq!(
        (mismatched["reason"].as_str(), mismatched["rejected_leg"].as_i64()),
        (Some("currency_mismatch"), Some(1))
    );
    // Bounds at the door: no legs, 17 legs, a source of someone else.
    assert_eq!(post(&app, "/v1/transfer-batches", json!({"legs": []})).await.0, 422);
    let seventeen: Vec<Value> = (0..17).map(|_| leg(shopper, merchant, "0.01", "EUR")).collect();
    assert_eq!(post(&app, "/v1/transfer-batches", json!({"legs": seventeen})).await.0, 422);
    let foreign = json!({"legs": [leg(Uuid::new_v4(), merchant, "1.00", "EUR")]});
    assert_eq!(post(&app, "/v1/transfer-batches", foreign).await.0, 404);
    assert!(app.ledger_problems().await.is_empty(), "{:?}", app.ledger_problems().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_and_metadata_are_stored_searched_and_carried_in_events() {
    let app = TestApp::spawn().await;
    let (payer, payee) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(payer, "100.00", "EUR").await;
    let mut body = leg(payer, payee, "12.50", "EUR");
    body["reference"] = json!("INV-2026/0042");
    body["metadata"] = json!({"invoice": "0042", "customer": "ACME"});
    let transfer = decided(&app, "/v1/transfers", body).await;
    assert_eq!(transfer["status"], "completed");

    let (status, found) = get(&app, "/v1/transfers?reference=INV-2026/0042").await;
    assert_eq!(status, 200, "{found}");
    let found = found["transfers"].as_array().expect("transfers").clone();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["transfer_id"], transfer["transfer_id"]);
    assert_eq!(found[0]["metadata"], json!({"invoice": "0042", "customer": "ACME"}));
    assert_eq!(found[0]["amount"], "12.50");
    assert_eq!(get(&app, "/v1/transfers?reference=INV-2026/0043").await.1["transfers"], json!([]));

    // The event tells them too (so do webhooks, which forward events).
    let events = app.read_topic(&app.kafka.topics.events, 2).await;
    let completed: Vec<Value> = events
        .iter()
        .map(ledgerline_tests::ReadMessage::json)
        .filter(|event| event["type"] == "transfer.completed" && event["transfer_id"] == transfer["transfer_id"])
        .collect();
    assert_eq!(completed.len(), 1, "{events:?}");
    assert_eq!(completed[0]["reference"], "INV-2026/0042");
    assert_eq!(completed[0]["metadata"]["customer"], "ACME");

    // Not SEPA-safe, too long, too many keys: refused with a clear error.
    for (reference, metadata) in [
        (json!("Miete für Mai"), json!({})),
        (json!("x".repeat(141)), json!({})),
        (json!("/lead"), json!({})),
        (json!("ok"), json!((0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>())),
        (json!("ok"), json!({"n": 1})),
    ] {
        let mut body = leg(payer, payee, "1.00", "EUR");
        body["reference"] = reference.clone();
        body["metadata"] = metadata;
        let (status, problem) = post(&app, "/v1/transfers", body).await;
        assert_eq!(status, 422, "{reference}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_as_of_an_instant_and_a_statement_come_from_the_ledgers_lines() {
    let app = TestApp::spawn().await;
    let (account, other) = (app.open_account("EUR").await, app.open_account("EUR").await);
    let opened = chrono::Utc::now();
    app.fund(account, "100.00", "EUR").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_deposit = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut body = leg(account, other, "30.00", "EUR");
    body["reference"] = json!("+1 rent, December");
    assert_eq!(decided(&app, "/v1/transfers", body).await["status"], "completed");
    let (_, hold) = post(
        &app,
        "/v1/holds",
        json!({"source_account_id": account, "destination_account_id": other, "amount": "20.00", "currency": "EUR"}),
    )
    .await;
    assert_eq!(app.wait_for_decision(hold["transfer_id"].as_str().expect("id")).await["status"], "held");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let while_held = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let token = app.token().await;
    let hold_id = hold["transfer_id"].as_str().expect("id");
    let (_, void) = app.call(Method::POST, &format!("/v1/holds/{hold_id}/void"), Some(&token), None).await;
    app.wait_for_decision(void["transfer_id"].as_str().expect("id")).await;

    let balance_at = |at: chrono::DateTime<chrono::Utc>| {
        let path =
            format!("/v1/accounts/{account}/balance?as_of={}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let app = &app;
        async move { get(app, &path).await }
    };
    let (status, before) = balance_at(opened - chrono::TimeDelta::seconds(1)).await;
    assert_eq!((status, before["balance"].as_str(), before["held"].as_str()), (200, Some("0.00"), Some("0.00")));
    assert_eq!(balance_at(after_deposit).await.1["balance"], "100.00");
    let then = balance_at(while_held).await.1;
    assert_eq!((then["balance"].as_str(), then["held"].as_str()), (Some("70.00"), Some("20.00")), "{then}");
    let (status, now) = get(&app, &format!("/v1/accounts/{account}/balance")).await;
    assert_eq!((status, now["balance"].as_str(), now["held"].as_str()), (200, Some("70.00"), Some("0.00")));
    let future = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    assert_eq!(balance_at(future).await.0, 422);

    // The statement of the period after the deposit: opening 100, one line.
    let to = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    let period = format!(
        "from={}&to={}",
        after_deposit.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let path = format!("/v1/accounts/{account}/statement?{period}");
    let (status, statement) = get(&app, &path).await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(
        (statement["opening_balance"].as_str(), statement["closing_balance"].as_str()),
        (Some("100.00"), Some("70.00"))
    );
    let lines = statement["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 1, "{statement}");
    assert_eq!((lines[0]["amount"].as_str(), lines[0]["kind"].as_str()), (Some("-30.00"), Some("transfer")));
    let opening: Decimal = statement["opening_balance"].as_str().expect("opening").parse().expect("decimal");
    let sum: Decimal =
        lines.iter().map(|line| line["amount"].as_str().expect("amount").parse::<Decimal>().expect("decimal")).sum();
    assert_eq!((opening + sum).to_string(), "70.00");

    let csv = app
        .http()
        .get(app.url(&path))
        .bearer_auth(app.token().await)
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("statement as CSV");
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"].to_str().expect("type").starts_with("text/csv"));
    let text = csv.text().await.expect("CSV");
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "type,booked_at,transfer_id,kind,reference,amount,balance_after");
    assert!(rows[1].starts_with("opening,") && rows[1].ends_with(",100.00"), "{text}");
    // The reference starts with '+': quoted and defused for spreadsheets.
    assert!(rows[2].contains(",\"'+1 rent, December\",-30.00,70.00"), "{text}");
    assert!(rows[3].starts_with("closing,") && rows[3].ends_with(",70.00"), "{text}");
    // A period backwards is refused.
    let backwards = format!(
        "/v1/accounts/{account}/statement?from={}&to={}",
        to.format("%FT%T%.6fZ"),
        after_deposit.format("%FT%T%.6fZ")
    );
    assert_eq!(get(&app, &backwards).await.1["code"], "invalid_period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_limits_set_over_http_refuse_what_exceeds_them_with_the_limit() {
    let app = TestApp::spawn().await;
    let (account, other) = (app.open_account("EUR").await, app.open_account("EUR").await);
    app.fund(account, "1000.00", "EUR").await;
    let token = app.token().await;
    let (status, set) = app
        .call(
            Method::PUT,
            &format!("/v1/accounts/{account}/spending-limits"),
            Some(&token),
            Some(json!({"per_transfer_max": "50.00", "rolling_24h_max": "100.00"})),
        )
        .await;
    assert_eq!(status, 202, "{set}");
    assert_eq!(app.wait_for_decision(set["transfer_id"].as_str().expect("id")).await["status"], "completed");
    let view = app.account(account).await;
    assert_eq!((view["per_transfer_max"].as_str(), view["rolling_24h_max"].as_str()), (Some("50.00"), Some("100.00")));

    let big = decided(&app, "/v1/transfers", leg(account, other, "50.01", "EUR")).await;
    assert_eq!(
        (big["reason"].as_str(), big["exceeded_limit"].as_str()),
        (Some("limit_exceeded"), Some("per_transfer"))
    );
    // Concurrent debits of 30 (transfers and holds): at most 100 together.
    let mut submitted = Vec::new();
    for index in 0..8 {
        let app = &app;
        submitted.push(async move {
            if index % 2 == 0 {
                post(app, "/v1/transfers", leg(account, other, "30.00", "EUR")).await
            } else {
                let mut hold = leg(account, other, "30.00", "EUR");
                hold["expires_in_s"] = json!(600);
                post(app, "/v1/holds", hold).await
            }
        });
    }
    let mut passed = Decimal::ZERO;
    for (status, accepted) in futures::future::join_all(submitted).await {
        assert_eq!(status, 202, "{accepted}");
        let view = app.wait_for_decision(accepted["transfer_id"].as_str().expect("id")).await;
        match view["status"].as_str() {
            Some("completed" | "held") => passed += dec("30.00"),
            _ => assert_eq!(
                (view["reason"].as_str(), view["exceeded_limit"].as_str()),
                (Some("limit_exceeded"), Some("rolling_24h")),
                "{view}"
            ),
        }
    }
    assert_eq!(passed, dec("90.00"), "three of 30 fit under 100, the fourth does not");

    // Staff lift the limits (audited); the next debit passes.
    let admin = app.user_token("limits-admin@example.com", "admin").await;
    let (status, lifted) = app
        .call(Method::PUT, &format!("/v1/staff/accounts/{account}/spending-limits"), Some(&admin), Some(json!({})))
        .await;
    assert_eq!(status, 202, "{lifted}");
    let command = lifted["transfer_id"].as_str().expect("id").to_owned();
    let (_, decided_command) = {
        let deadline = tokio::time::Instant::now() + ledgerline_tests::WAIT_MAX;
        loop {
            let (status, view) =
                app.call(Method::GET, &format!("/v1/staff/commands/{command}"), Some(&admin), None).await;
            if view["status"] != "accepted" {
                break (status, view);
            }
            assert!(tokio::time::Instant::now() < deadline, "not decided: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(decided_command["status"], "completed", "{decided_command}");
    assert_eq!(app.count("select count(*) from audit_log where action = 'account.spending_limits_requested'").await, 1);
    assert!(app.account(account).await.get("rolling_24h_max").is_none());
    assert_eq!(decided(&app, "/v1/transfers", leg(account, other, "200.00", "EUR")).await["status"], "completed");
    assert!(app.ledger_problems().await.is_empty(), "{:?}", app.ledger_problems().await);
}
