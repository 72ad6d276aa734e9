//! `ledgerctl load`'s engine against the in-process stack: a short load is
//! applied exactly once and its audit passes; the audit counts a transfer
//! deleted behind the ledger's back as lost and one applied twice as
//! duplicated; the latencies show a delay injected in front of ingest; a
//! load produced straight to Kafka (`--direct`) passes the same audit; and
//! the schedule is an open loop: a server that never answers does not lower
//! what is offered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ledgerctl_load::{Answer, LoadConfig, Target, TokenSource};
use ledgerline_tests::TestApp;
use platform::CancellationToken;
use uuid::Uuid;

/// A short, low load: CI runs it, so it stays a few seconds.
fn short_load(app: &TestApp, rate_per_s: u32, duration_s: u64) -> LoadConfig {
    let mut config = LoadConfig::new(app.address.clone());
    config.rate_per_s = rate_per_s;
    config.duration_s = duration_s;
    config.accounts = 10;
    config.hot_share = 0.3;
    config.connections = 8;
    config.drain_timeout_ms = 20_000;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_is_applied_exactly_once_and_passes_the_audit() {
    let app = TestApp::spawn().await;
    let config = short_load(&app, 50, 3);
    let outcome = ledgerctl_load::run(&config, &app.pool, &app.kafka, &CancellationToken::new()).await.expect("load");
    let report = &outcome.report;
    assert_eq!(report.offered, 150, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.accepted, 150, "{report}");
    assert_eq!(report.decided, 150, "every decision is read from ledger.events: {report}");
    assert_eq!(report.decisions.get("completed"), Some(&150), "funded accounts: {report}");
    assert_eq!((report.applied, report.lost, report.duplicated, report.applied_unaccepted), (150, 0, 0, 0), "{report}");
    assert!(report.invariants_ok && report.audit_ok, "{report}");
    assert!(report.e2e_p99_ms.is_some() && report.http_p99_ms.is_some(), "{report}");
    assert!(report.backlog_drained_ms.is_some(), "{report}");
    // The JSON names the figures the README promises.
    let json = serde_json::to_value(report).expect("JSON");
    for field in [
        "offered_per_s",
        "achieved_per_s",
        "http_p99_ms",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "e2e_p999_ms",
        "errors",
        "accepted",
        "applied",
        "lost",
        "duplicated",
        "invariants_ok",
    ] {
        assert!(!json[field].is_null(), "{field} is in the JSON report: {json}");
    }
    let html = ledgerctl_load::html_report(report);
    assert!(html.contains("<svg") && !html.contains("<script"), "charts are inline SVG, no scripts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_counts_a_planted_loss_and_a_planted_duplicate() {
    let app = TestApp::spawn().await;
    let config = short_load(&app, 20, 1);
    let outcome = ledgerctl_load::run(&config, &app.pool, &app.kafka, &CancellationToken::new()).await.expect("load");
    assert!(outcome.report.audit_ok, "{}", outcome.report);
    let accepted: Vec<Uuid> =
        outcome.record.answers.iter().filter(|(_, answer)| **answer == Answer::Accepted).map(|(id, _)| *id).collect();
    assert!(accepted.len() >= 2, "{}", outcome.report);

    // A loss: an applied transfer's rows deleted behind the ledger's back.
    sqlx::query("delete from entries where transfer_id = $1")
        .bind(accepted[0])
        .execute(&app.pool)
        .await
        .expect("delete");
    sqlx::query("delete from transfers where id = $1").bind(accepted[0]).execute(&app.pool).await.expect("delete");
    let audit = ledgerctl_load::audit(&app.pool, &outcome.record).await.expect("audit");
    assert_eq!((audit.lost, audit.duplicated), (1, 0), "{audit:?}");
    assert!(!audit.ok(), "{audit:?}");

    // A duplicate: another transfer's entries written a second time.
    sqlx::query(
        "insert into entries (transfer_id, account_id, amount, currency, balance_after)
         select transfer_id, account_id, amount, currency, balance_after from entries where transfer_id = $1",
    )
    .bind(accepted[1])
    .execute(&app.pool)
    .await
    .expect("insert");
    let audit = ledgerctl_load::audit(&app.pool, &outcome.record).await.expect("audit");
    assert_eq!((audit.lost, audit.duplicated), (1, 1), "{audit:?}");
    assert!(!audit.invariants_ok, "the balances no longer match their entries: {audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_produced_straight_to_kafka_is_applied_exactly_once() {
    let app = TestApp::spawn().await;
    let mut config = short_load(&app, 50, 2);
    config.direct = true;
    let outcome = ledgerctl_load::run(&config, &app.pool, &app.kafka, &CancellationToken::new()).await.expect("load");
    let report = &outcome.report;
    assert_eq!((report.offered, report.accepted, report.errors), (100, 100, 0), "{report}");
    assert_eq!(report.decided, 100, "{report}");
    assert_eq!((report.applied, report.lost, report.duplicated, report.applied_unaccepted), (100, 0, 0, 0), "{report}");
    assert!(report.audit_ok, "{report}");
    // Nothing went through ingest's transfer route: no request recorded.
    let recorded: i64 = sqlx::query_scalar("select count(*) from accepted_requests where transfer_id = any($1)")
        .bind(outcome.record.answers.keys().copied().collect::<Vec<Uuid>>())
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(recorded, 0);
}

/// The delay the proxy adds in front of `POST /v1/transfers`.
const INJECTED_DELAY_MS: u64 = 200;

/// An HTTP proxy to `upstream` that holds every `POST /v1/transfers` for
/// [`INJECTED_DELAY_MS`] before forwarding it (the setup's requests pass
/// at once); its base URL.
async fn delaying_proxy(upstream: String) -> String {
    let http = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
            if parts.method == axum::http::Method::POST && parts.uri.path() == "/v1/transfers" {
                tokio::time::sleep(std::time::Duration::from_millis(INJECTED_DELAY_MS)).await;
            }
            let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
            let mut outgoing = http.request(parts.method.clone(), format!("{upstream}{path}")).body(body);
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST {
                    outgoing = outgoing.header(name, value);
                }
            }
            let answer = outgoing.send().await.expect("upstream");
            let mut response = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            response.body(axum::body::Body::from(answer.bytes().await.expect("upstream body"))).expect("response")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(forward)).await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_injected_in_front_of_ingest_shows_in_the_latencies() {
    let app = TestApp::spawn().await;
    let proxy = delaying_proxy(app.address.clone()).await;
    let mut config = short_load(&app, 20, 2);
    config.base_url = proxy;
    let outcome = ledgerctl_load::run(&config, &app.pool, &app.kafka, &CancellationToken::new()).await.expect("load");
    let report = &outcome.report;
    assert!(report.audit_ok && report.accepted == 40, "{report}");
    let delay = INJECTED_DELAY_MS as f64;
    // Every transfer waited at the proxy before ingest saw it: no
    // percentile can be under the delay, and the decision (made after
    // the command reached Kafka) comes later still.
    for (name, value) in [
        ("http_p50_ms", report.http_p50_ms),
        ("e2e_p50_ms", report.e2e_p50_ms),
        ("decision_p50_ms", report.decision_p50_ms),
    ] {
        let value = value.unwrap_or_else(|| panic!("{name} measured: {report}"));
        assert!(value >= delay, "{name} = {value} ms shows the injected {delay} ms: {report}");
    }
}

/// A TCP listener that accepts connections, keeps them open and never
/// answers; how many it accepted.
async fn stalled_server() -> (String, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(socket);
        }
    });
    (address, accepted, server)
}

fn stalled_target(address: &str) -> Target {
    Target {
        base_url: address.to_owned(),
        client_id: Uuid::new_v4(),
        token: TokenSource::fixed("not-a-real-token"),
        accounts: vec![Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()],
        currency: "EUR".into(),
        run_id: Uuid::new_v4(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_does_not_lower_the_offered_rate() {
    let (address, connections, server) = stalled_server().await;
    let mut config = LoadConfig::new(address.clone());
    config.rate_per_s = 50;
    config.duration_s = 1;
    // A closed loop over 4 connections would send 4 requests and wait.
    config.connections = 4;
    // Longer than the schedule, so no slot frees before it ends.
    config.request_timeout_ms = 2_000;
    let report =
        ledgerctl_load::run_schedule(&config, stalled_target(&address), &CancellationToken::new()).await.expect("run");
    assert_eq!(report.offered, 50, "{report}");
    assert_eq!(report.sent, 50, "every request went out on schedule: {report}");
    assert_eq!(report.errors_by_kind.get("timeout"), Some(&50), "{report}");
    assert_eq!(report.accepted, 0, "{report}");
    assert_eq!(connections.load(Ordering::Relaxed), 50, "all 50 were on the wire at once, none answered: {report}");

    // With a limit on requests in flight, the ones over it are not sent but
    // still offered, and counted as errors of their own.
    config.in_flight_max = 10;
    let report =
        ledgerctl_load::run_schedule(&config, stalled_target(&address), &CancellationToken::new()).await.expect("run");
    assert_eq!(report.offered, 50, "{report}");
    assert_eq!(report.sent, 10, "{report}");
    assert_eq!(report.errors_by_kind.get("in_flight_limit"), Some(&40), "{report}");
    assert_eq!(report.errors_by_kind.get("timeout"), Some(&10), "{report}");
    server.abort();
}
