//! Prometheus metrics: ingest's requests by route and status, the
//! processor's commands and batch latency, the relay's deliveries and the
//! outbox backlog, each a well-formed text page.

use std::collections::BTreeSet;

use ledgerline_tests::{TestApp, unique_key};
use serde_json::Value;

/// Checks the exposition format: every sample belongs to a family declared
/// with `# HELP` and `# TYPE`, and has a name, optional labels and a number.
fn check_page(page: &str) -> Vec<String> {
    let mut declared = BTreeSet::new();
    let mut problems = Vec::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default();
            if !matches!(parts.next(), Some("counter" | "gauge" | "histogram")) {
                problems.push(format!("bad TYPE line: {line}"));
            }
            declared.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_default();
        let name = series.split('{').next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| declared.contains(*base)))
            .unwrap_or(name);
        if !declared.contains(family) {
            problems.push(format!("sample of an undeclared family: {line}"));
        }
        if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') || !name.starts_with("ledgerline_") {
            problems.push(format!("bad metric name: {line}"));
        }
        if series.contains('{') && !series.ends_with('}') {
            problems.push(format!("bad labels: {line}"));
        }
        if value.parse::<f64>().is_err() {
            problems.push(format!("not a number: {line}"));
        }
    }
    problems
}

fn value_of(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_serves_well_formed_metrics_that_count_what_happened() {
    let app =
        TestApp::spawn_configured(|config| config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"))).await;
    let alice = app.open_account("EUR").await;
    let bob = app.open_account("EUR").await;
    app.fund(alice, "10.00", "EUR").await;
    let body: Value = app.transfer(alice, bob, "4.00", "EUR", &unique_key("metrics")).await.json().await.expect("JSON");
    app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await;
    app.account(alice).await;
    let missing = app.http().get(app.url("/v1/nothing/here")).send().await.expect("request");
    assert_eq!(missing.status(), 404);
    // A made-up method is counted as `other`, so callers cannot mint labels.
    let odd = reqwest::Method::from_bytes(b"BREW").expect("method");
    app.http().request(odd, app.url("/v1/me")).send().await.expect("request");

    let scrape = app.metrics_address.clone().expect("metrics listener");
    let response = app.http().get(&scrape).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"].to_str().expect("text").starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.headers()
    );
    let page = response.text().await.expect("page");
    assert!(check_page(&page).is_empty(), "{:?}\n{page}", check_page(&page));
    assert_eq!(
        value_of(&page, r#"ledgerline_http_requests_total{method="POST",route="/v1/transfers",status="202"}"#),
        Some(1),
        "{page}"
    );
    assert_eq!(
        value_of(
            &page,
            r#"ledgerline_http_requests_total{method="GET",route="/v1/accounts/{account_id}",status="200"}"#
        ),
        Some(1),
        "templates, not paths: {page}"
    );
    assert_eq!(
        value_of(&page, r#"ledgerline_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        Some(1),
        "{page}"
    );
    assert!(!page.contains(&alice.to_string()), "no account id in a label");
    assert!(!page.contains("BREW") && page.contains(r#"method="other",route="unmatched",status="405""#), "{page}");
    assert!(
        value_of(&page, r#"ledgerline_http_request_duration_seconds_count{route="/v1/transfers"}"#) == Some(1),
        "{page}"
    );

    // The processor's page, served as its binary serves it. A batch is
    // counted when the processor collects its result, a moment after the
    // commit the test has seen: wait for it.
    let processor = app.processor_metrics();
    let deadline = tokio::time::Instant::now() + ledgerline_tests::WAIT_MAX;
    while processor.commands_total() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the processor never counted its commands");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let render = platform::metrics::render_with(move || processor.render());
    let stop = platform::CancellationToken::new();
    let address = platform::metrics::spawn("127.0.0.1:0".parse().expect("address"), render, stop.clone())
        .await
        .expect("metrics listener");
    let page =
        app.http().get(format!("http://{address}/metrics")).send().await.expect("scrape").text().await.expect("page");
    stop.cancel();
    assert!(check_page(&page).is_empty(), "{:?}\n{page}", check_page(&page));
    assert!(value_of(&page, "ledgerline_processor_commands_total").is_some_and(|count| count >= 2), "{page}");
    assert!(value_of(&page, "ledgerline_processor_batch_commit_seconds_count").is_some_and(|count| count >= 1));
    assert_eq!(value_of(&page, "ledgerline_processor_dead_letters_total"), Some(0));

    // The relay's page: its deliveries and the outbox backlog from the database.
    let deadline = tokio::time::Instant::now() + ledgerline_tests::WAIT_MAX;
    let page = loop {
        let page = outbox_relay::render_metrics(&app.relay_metrics, &app.pool).await;
        if value_of(&page, "ledgerline_outbox_pending") == Some(0) || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(check_page(&page).is_empty(), "{:?}\n{page}", check_page(&page));
    assert_eq!(value_of(&page, "ledgerline_outbox_status_up"), Some(1));
    assert_eq!(value_of(&page, "ledgerline_outbox_pending"), Some(0), "{page}");
    assert!(value_of(&page, "ledgerline_relay_delivered_total").is_some_and(|count| count >= 2), "{page}");
}
