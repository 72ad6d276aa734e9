//! The OpenAPI document as a contract a generator can trust: schemathesis
//! (PyPI) generates requests from the served document, examples first,
//! then boundary cases and random ones, follows the links between
//! operations, and checks every answer: no server error, every answer
//! documented and matching its schema, no request the schema allows
//! refused for its shape, none it forbids accepted.
//!
//! It runs once per audience, each with its own token and its own
//! operations (by tag): an API client, a customer and an admin. Bounded in
//! examples per operation and in time. `scripts/test` installs schemathesis
//! into `target/schemathesis-venv` (or `LEDGERLINE_SCHEMATHESIS` names the
//! binary); the test fails, never skips, without it.
//!
//! Deliberate exceptions, where the server refuses what the schema cannot
//! express (each is a 422 with a stable code, never a 5xx):
//! - amounts: a decimal string whose scale must fit the currency's minor
//!   units (`invalid_amount`), and the request's currency must be one the
//!   account holds (decided by the processor, after the 202);
//! - a hold's `expires_at` must lie in the next 30 days and exclude
//!   `expires_in_s` (`invalid_expiry`); a balance's `as_of` must not be in
//!   the future (`as_of_in_future`); a statement's `to` must follow `from`
//!   by at most 366 days (`invalid_period`): relations to the clock or
//!   between fields;
//! - metadata must be at most 4 KiB as JSON (`maxProperties` and the
//!   lengths bound the rest);
//! - a webhook URL must not point at a private address when
//!   `LEDGERLINE_WEBHOOK_ALLOW_PRIVATE` is off (it is on here).
//!
//! So `positive_data_acceptance` counts 422 as acceptable (with 404, 401,
//! 403, 409 and 423: unknown ids, credentials, roles, conflicts, locks); a
//! schema-valid request refused for its shape answers 400, which it does
//! not accept.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ledgerline_tests::TestApp;

/// Examples per operation and phase: enough for the boundary cases of
/// every documented constraint, bounded for CI.
const EXAMPLES_PER_OPERATION: u32 = 25;

/// The time one audience's run may take at most (examples, then boundary
/// cases, then random ones, then the links, bounded by
/// [`EXAMPLES_PER_OPERATION`] each): it fails past it.
const RUN_TIME_MAX_S: u64 = 300;

/// The schemathesis binary: `LEDGERLINE_SCHEMATHESIS`, else the venv
/// `scripts/test` makes.
fn schemathesis() -> PathBuf {
    std::env::var_os("LEDGERLINE_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/schemathesis")
    })
}

/// Runs schemathesis on the operations tagged `tags` with `token`.
async fn run(app: &TestApp, audience: &str, token: &str, tags: &[&str]) {
    let binary = schemathesis();
    assert!(
        binary.exists(),
        "{} is missing: run scripts/test (it installs schemathesis into target/schemathesis-venv), \
         or set LEDGERLINE_SCHEMATHESIS",
        binary.display()
    );
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/schemathesis/{audience}"));
    let mut command = tokio::process::Command::new(&binary);
    command
        .arg("--config-file")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", "16"])
        // No example database: every run, here or on a clean clone,
        // generates the same cases from the seed.
        .args(["--generation-database", "none"])
        // One worker: hypothesis's lambda descriptions are not thread-safe
        // on Python 3.11 ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&report)
        .args(["--warnings", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for tag in tags {
        command.args(["--include-tag", tag]);
    }
    let output = tokio::time::timeout(Duration::from_secs(RUN_TIME_MAX_S), command.output())
        .await
        .expect("schemathesis finishes in its time budget")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "schemathesis as {audience} found problems:\n{stdout}\n{stderr}");
    println!("schemathesis as {audience}:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_a_contract_the_server_keeps_for_clients_customers_and_admins() {
    let app = TestApp::spawn_configured(|config| {
        // The generator sends hundreds of requests a second from one
        // client, one address and one account: the limits would answer
        // most of them 429 and test nothing else.
        let unlimited = ingest::support::limits::RateLimit::per_second(100_000, 100_000);
        config.client_rate_limit = unlimited;
        config.token_ip_rate_limit = unlimited;
        config.login_account_rate_limit = unlimited;
        config.pin_user_rate_limit = unlimited;
    })
    .await;
    let client = app.token().await;
    run(&app, "client", &client, &["auth", "accounts", "transfers", "holds", "webhooks", "health"]).await;
    let customer = app.user_token("contract-customer@example.com", "customer").await;
    run(&app, "customer", &customer, &["customers", "customer accounts", "customer transfers"]).await;
    let admin = app.user_token("contract-admin@example.com", "admin").await;
    run(&app, "admin", &admin, &["staff", "admin", "ops"]).await;
}
