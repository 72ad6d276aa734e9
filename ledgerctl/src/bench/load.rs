//! `ledgerctl bench load`: what the whole stack sustains under
//! `ledgerctl load`, beside pgbench TPC-B measured on the same server in the
//! same run.
//!
//! It runs pgbench first, then starts `ledgerctl dev` (this very binary) as
//! a child process on a fresh database (`ledgerline_bench_load`) with the
//! per-client rate limit out of the way, and runs one load per rate of
//! `--rates` against it (each with accounts of its own, on the same
//! stack). The **knee** is the highest rate *sustained* (every request
//! accepted, at least 99 % of the offered rate achieved, the audit clean)
//! with the end-to-end p99 within `--e2e-p99-max-ms`; the search stops at
//! the first rate that is not sustained. With `--curve` it then runs 25,
//! 50, 75, 100 and 125 % of the knee. Progress goes to stderr, the table
//! (or `--json`) to stdout. Only ratios compare across machines and days.

// Rates, ratios and milliseconds of a measurement; no money.
#![allow(clippy::float_arithmetic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

use super::{Server, measure_pgbench};

const LOAD_DATABASE: &str = "ledgerline_bench_load";
/// How long the child stack may take to say where it listens.
const STACK_START_TIMEOUT: Duration = Duration::from_secs(120);
/// The quiet pause between two loads, so one's backlog never counts in the
/// next.
const PAUSE_BETWEEN_LOADS: Duration = Duration::from_secs(3);
/// The share of the offered rate a sustained load achieves at least.
const SUSTAINED_SHARE_MIN: f64 = 0.99;
/// The curve's points, in percent of the knee.
const CURVE_PERCENTS: [u32; 5] = [25, 50, 75, 100, 125];

#[derive(Debug, clap::Args)]
pub(crate) struct LoadBenchArgs {
    /// Rates to search for the knee, per second, ascending.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,1500,2000,2500,3000,4000")]
    rates: Vec<u32>,
    /// Seconds of each load.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    duration: u64,
    /// Accounts each load opens and funds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    accounts: u32,
    /// HTTP connections kept alive by each load.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// The end-to-end p99 the knee must keep, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    e2e_p99_max_ms: u64,
    /// After the search, run 25, 50, 75, 100 and 125 % of the knee.
    #[arg(long)]
    curve: bool,
    /// Produce to Kafka instead of HTTP (`ledgerctl load --direct`).
    #[arg(long)]
    direct: bool,
    /// Duration of the pgbench TPC-B run, in seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pgbench_seconds: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One load of the bench.
#[derive(Debug, Clone, Serialize)]
struct Point {
    phase: &'static str,
    rate_per_s: u32,
    offered_per_s: f64,
    achieved_per_s: f64,
    errors: u64,
    http_p99_ms: Option<f64>,
    e2e_p50_ms: Option<f64>,
    e2e_p99_ms: Option<f64>,
    audit_ok: bool,
    sustained: bool,
    within_latency: bool,
    /// Achieved per second over pgbench's tps.
    vs_pgbench: f64,
}

#[derive(Debug, Serialize)]
struct LoadBenchReport {
    via: &'static str,
    duration_s: u64,
    e2e_p99_max_ms: u64,
    pgbench_tps: f64,
    /// The highest rate sustained within the latency bound.
    knee_per_s: Option<u32>,
    points: Vec<Point>,
}

pub(super) async fn run(args: LoadBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.rates.is_empty(), "give at least one rate");
    anyhow::ensure!(args.rates.windows(2).all(|pair| pair[0] < pair[1]), "--rates must ascend");
    let server = Server::from_env()?;
    let pgbench_tps = measure_pgbench(&server, args.pgbench_seconds).await?;
    server.recreate_database(LOAD_DATABASE).await?;
    let mut stack = Stack::start().await?;
    let pool = server.connect(LOAD_DATABASE).await?;
    let kafka = KafkaConfig::new(stack.brokers.clone(), KafkaConfig::topics_from_env()?);
    let mut report = LoadBenchReport {
        via: if args.direct { "kafka" } else { "http" },
        duration_s: args.duration,
        e2e_p99_max_ms: args.e2e_p99_max_ms,
        pgbench_tps,
        knee_per_s: None,
        points: Vec::new(),
    };
    for &rate in &args.rates {
        let point = measure(&args, &stack, &pool, &kafka, "search", rate, pgbench_tps).await?;
        let (sustained, within) = (point.sustained, point.within_latency);
        report.points.push(point);
        if sustained && within {
            report.knee_per_s = Some(rate);
        }
        if !sustained {
            break;
        }
    }
    if let (true, Some(knee)) = (args.curve, report.knee_per_s) {
        for percent in CURVE_PERCENTS {
            let rate = (knee * percent / 100).max(1);
            let point = measure(&args, &stack, &pool, &kafka, "curve", rate, pgbench_tps).await?;
            report.points.push(point);
        }
    }
    stack.stop().await;
    if args.json {
        println!("{}", serde_json::to_string(&report).context("serializing the report")?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(
    args: &LoadBenchArgs,
    stack: &Stack,
    pool: &sqlx::PgPool,
    kafka: &KafkaConfig,
    phase: &'static str,
    rate: u32,
    pgbench_tps: f64,
) -> anyhow::Result<Point> {
    tokio::time::sleep(PAUSE_BETWEEN_LOADS).await;
    eprintln!("load: {rate}/s for {} s ({phase})", args.duration);
    let mut config = ledgerctl_load::LoadConfig::new(stack.base_url.clone());
    config.rate_per_s = rate;
    config.duration_s = args.duration;
    config.accounts = args.accounts;
    config.connections = args.connections;
    config.direct = args.direct;
    config.seed = u64::from(rate);
    let outcome = ledgerctl_load::run(&config, pool, kafka, &platform::CancellationToken::new()).await?;
    let report = outcome.report;
    let sustained = report.errors == 0
        && report.accepted == report.offered
        && report.achieved_per_s >= SUSTAINED_SHARE_MIN * report.offered_per_s
        && report.audit_ok;
    let within_latency = report.e2e_p99_ms.is_some_and(|p99| p99 <= args.e2e_p99_max_ms as f64);
    eprintln!(
        "load: {rate}/s achieved {:.0}/s, e2e p99 {:?} ms, audit {}",
        report.achieved_per_s,
        report.e2e_p99_ms,
        if report.audit_ok { "ok" } else { "FAILED" }
    );
    Ok(Point {
        phase,
        rate_per_s: rate,
        offered_per_s: report.offered_per_s,
        achieved_per_s: report.achieved_per_s,
        errors: report.errors,
        http_p99_ms: report.http_p99_ms,
        e2e_p50_ms: report.e2e_p50_ms,
        e2e_p99_ms: report.e2e_p99_ms,
        audit_ok: report.audit_ok,
        sustained,
        within_latency,
        vs_pgbench: report.achieved_per_s / pgbench_tps.max(f64::MIN_POSITIVE),
    })
}

fn print_table(report: &LoadBenchReport) {
    let ms = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"));
    println!(
        "pgbench TPC-B: {:.0} tps   (via {}, {} s per load, knee bound e2e p99 <= {} ms)",
        report.pgbench_tps, report.via, report.duration_s, report.e2e_p99_max_ms
    );
    println!(
        "{:<7} {:>8} {:>10} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10} {:>8}",
        "phase", "rate/s", "achieved/s", "errors", "http p99", "e2e p50", "e2e p99", "audit", "sustained", "vs pgb"
    );
    for point in &report.points {
        println!(
            "{:<7} {:>8} {:>10.0} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10} {:>7.2}x",
            point.phase,
            point.rate_per_s,
            point.achieved_per_s,
            point.errors,
            ms(point.http_p99_ms),
            ms(point.e2e_p50_ms),
            ms(point.e2e_p99_ms),
            if point.audit_ok { "ok" } else { "FAIL" },
            match (point.sustained, point.within_latency) {
                (true, true) => "yes",
                (true, false) => "slow",
                (false, _) => "no",
            },
            point.vs_pgbench,
        );
    }
    match report.knee_per_s {
        Some(knee) => println!(
            "knee: {knee}/s ({:.2}x pgbench) sustained with e2e p99 <= {} ms",
            f64::from(knee) / report.pgbench_tps.max(f64::MIN_POSITIVE),
            report.e2e_p99_max_ms
        ),
        None => println!("knee: none of the rates was sustained within e2e p99 <= {} ms", report.e2e_p99_max_ms),
    }
}

/// `ledgerctl dev` as a child process on the bench's database.
struct Stack {
    child: tokio::process::Child,
    base_url: String,
    brokers: String,
}

impl Stack {
    async fn start() -> anyhow::Result<Self> {
        let database = DatabaseConfig::from_env()?;
        let url = with_database(database.url.expose_secret(), LOAD_DATABASE)
            .context("DATABASE_URL is not a postgres://host/database URL")?;
        let executable = std::env::current_exe().context("locating this executable")?;
        let mut child = tokio::process::Command::new(executable)
            .args(["dev", "--http-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", url)
            // One API client sends the whole load: its policy limit is not
            // what is measured.
            .env("LEDGERLINE_RATE_LIMIT_PER_S", "1000000")
            .env("LEDGERLINE_RATE_LIMIT_BURST", "1000000")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting ledgerctl dev")?;
        let stdout = child.stdout.take().context("no stdout of ledgerctl dev")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut base_url, mut brokers) = (None, None);
        let deadline = Instant::now() + STACK_START_TIMEOUT;
        while base_url.is_none() || brokers.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .context("ledgerctl dev did not say where it listens in time")?
                .context("reading ledgerctl dev's output")?
                .context("ledgerctl dev stopped before it was ready")?;
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("API"), Some(url)) => base_url = Some(url.to_owned()),
                (Some("Kafka"), Some(address)) => brokers = Some(address.to_owned()),
                _ => {}
            }
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (base_url, brokers) = (base_url.unwrap_or_default(), brokers.unwrap_or_default());
        eprintln!("stack: ledgerctl dev at {base_url}, Kafka {brokers}");
        Ok(Self { child, base_url, brokers })
    }

    async fn stop(&mut self) {
        // A throwaway stack on a throwaway database: no clean stop needed.
        let _ = self.child.kill().await;
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next()?;
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u:p@host:5432/ledgerline?sslmode=require", "other").as_deref(),
            Some("postgres://u:p@host:5432/other?sslmode=require")
        );
        assert_eq!(with_database("postgres://host", "other").as_deref(), Some("postgres://host/other"));
        assert_eq!(with_database("not a url", "other"), None);
    }
}
