//! `ledgerctl load`: what an upstream app sees of a running stack under a
//! sustained load, from `POST /v1/transfers` to the decision read back from
//! `ledger.events`, and an audit at the end that every accepted transfer was
//! applied exactly once.
//!
//! **Open loop.** A closed loop (send, wait for the answer, send again)
//! measures a slow server as a lower rate and hides its queue. Here the k-th
//! request is due at `start + k/R` and is sent then, whatever became of the
//! others; its latencies run from the moment it was due, not from when it
//! happened to leave (no coordinated omission). A request that cannot be sent
//! because [`LoadConfig::in_flight_max`] requests are already waiting counts
//! as an error (`in_flight_limit`): the schedule never waits.
//!
//! **Exactly once, counted.** Every request's transfer id is known before it
//! is sent (derived from the client and the `Idempotency-Key`, as ingest
//! derives it), so the audit compares what the answers said with the
//! `transfers` and `entries` tables instead of assuming.
//!
//! A library as well as a command, so the end-to-end tests drive the same
//! engine against their in-process stack.

// Rates, ratios and milliseconds of a measurement; amounts stay Decimal text.
#![allow(clippy::float_arithmetic)]

#[path = "load/report.rs"]
mod report;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use platform::CancellationToken;
use platform::kafka::KafkaConfig;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use schemas::ids::{IdempotencyKey, Operation, TransferId};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub use report::{LoadReport, SecondReport, html_report};

/// Latencies are recorded in microseconds up to this; longer ones count as
/// this long (an hour is far past any request or drain timeout).
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Setup requests (accounts, deposits, tokens) refused with 429 or 503 are
/// tried again this many times, after the server's `Retry-After` or 1 s.
const SETUP_ATTEMPTS_MAX: u32 = 20;
/// Setup requests sent at once.
const SETUP_CONCURRENCY: usize = 8;
/// How long the funding deposits may take to be applied.
const FUNDING_WAIT_MAX: Duration = Duration::from_secs(60);
/// The schedule starts this long after the tracker is made, so the first
/// request is not already late.
const START_LEAD: Duration = Duration::from_millis(100);

/// `ledgerctl load`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Ingest's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// Requests per second, sent on schedule whatever the answers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Kept-alive HTTP connections at most (more open while answers are slow).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Accounts the load opens and funds; the first is the merchant.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub accounts: u32,
    /// Share of transfers paid to the merchant (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub hot_share: f64,
    /// Currency of the accounts and transfers.
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// Seed of the traffic pattern (who pays whom, how much).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests waiting for their answer at most; one more is not sent and
    /// counts as an `in_flight_limit` error.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub in_flight_max: u64,
    /// A request unanswered this long is an error (`timeout`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub request_timeout_ms: u64,
    /// After sending, how long to wait for the decisions of accepted requests.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub drain_timeout_ms: u64,
    /// An existing API client (needs accounts:write, deposits:write,
    /// transfers:write); by default the load creates one (DATABASE_URL).
    #[arg(long, requires = "client_secret")]
    pub client_id: Option<Uuid>,
    #[arg(long, env = "LEDGERLINE_LOAD_CLIENT_SECRET", hide_env_values = true, requires = "client_id")]
    pub client_secret: Option<String>,
    /// Produce the transfers straight to the commands topic
    /// (KAFKA_BROKERS), as an upstream app on Kafka does, instead of
    /// `POST /v1/transfers`; the setup still goes through the API. The
    /// answer latency is then the broker's acknowledgement.
    #[arg(long)]
    pub direct: bool,
    /// Print the report as one JSON object (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report with charts.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<std::path::PathBuf>,
}

/// One run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct LoadConfig {
    pub base_url: String,
    pub rate_per_s: u32,
    pub duration_s: u64,
    pub connections: u32,
    pub accounts: u32,
    pub hot_share: f64,
    pub currency: String,
    pub seed: u64,
    pub in_flight_max: u64,
    pub request_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    /// Produced to Kafka instead of sent over HTTP (`--direct`).
    pub direct: bool,
    #[serde(skip)]
    pub credentials: Option<(Uuid, SecretString)>,
    /// Show the live progress bar (only on a terminal).
    #[serde(skip)]
    pub progress: bool,
}

impl LoadConfig {
    /// A short run's defaults against `base_url`.
    #[must_use]
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            rate_per_s: 100,
            duration_s: 10,
            connections: 32,
            accounts: 100,
            hot_share: 0.0,
            currency: "EUR".into(),
            seed: 1,
            in_flight_max: 10_000,
            request_timeout_ms: 10_000,
            drain_timeout_ms: 30_000,
            direct: false,
            credentials: None,
            progress: false,
        }
    }

    /// # Errors
    /// When a value is out of range.
    pub fn from_args(args: &LoadArgs) -> anyhow::Result<Self> {
        anyhow::ensure!((0.0..=1.0).contains(&args.hot_share), "--hot-share must be between 0 and 1");
        args.currency.parse::<schemas::Currency>().map_err(|error| anyhow::anyhow!("--currency: {error}"))?;
        Ok(Self {
            base_url: args.base_url.trim_end_matches('/').to_owned(),
            rate_per_s: args.rate,
            duration_s: args.duration,
            connections: args.connections,
            accounts: args.accounts,
            hot_share: args.hot_share,
            currency: args.currency.clone(),
            seed: args.seed,
            in_flight_max: args.in_flight_max,
            request_timeout_ms: args.request_timeout_ms,
            drain_timeout_ms: args.drain_timeout_ms,
            direct: args.direct,
            credentials: args.client_id.zip(args.client_secret.clone().map(SecretString::from)),
            progress: !args.json && std::io::stdout().is_terminal(),
        })
    }

    /// Requests the schedule offers.
    #[must_use]
    pub fn requests_total(&self) -> u64 {
        u64::from(self.rate_per_s) * self.duration_s
    }

    /// The HTTP client of the load: `connections` kept-alive connections.
    ///
    /// # Errors
    /// When the TLS backend cannot start.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .pool_max_idle_per_host(self.connections as usize)
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .connect_timeout(Duration::from_millis(self.request_timeout_ms))
            .build()
            .context("building the HTTP client")
    }
}

/// The current access token, replaced before it expires by
/// [`spawn_token_refresher`] while a run goes on.
#[derive(Debug, Clone)]
pub struct TokenSource(Arc<RwLock<String>>);

impl TokenSource {
    #[must_use]
    pub fn fixed(token: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(token.into())))
    }

    fn current(&self) -> String {
        self.0.read().map(|token| token.clone()).unwrap_or_default()
    }

    fn set(&self, token: String) {
        if let Ok(mut current) = self.0.write() {
            *current = token;
        }
    }
}

/// What the load sends to: accounts opened by one API client.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    /// The client the `Idempotency-Key`s are derived for.
    pub client_id: Uuid,
    pub token: TokenSource,
    /// The first is the merchant that `hot_share` of the transfers pay.
    pub accounts: Vec<Uuid>,
    pub currency: String,
    /// Makes this run's idempotency keys its own.
    pub run_id: Uuid,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 202: the command is in Kafka; it must be applied exactly once.
    Accepted,
    /// Another status: the server said no; it must not be applied.
    Refused,
    /// A timeout or a broken connection: it may or may not be applied.
    Unanswered,
    /// Not sent (too many in flight); it must not be applied.
    NotSent,
}

/// What the audit needs of a run: its accounts and every request's fate, by
/// transfer id.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub accounts: Vec<Uuid>,
    pub answers: HashMap<Uuid, Answer>,
}

/// The audit's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Answered 202.
    pub accepted: u64,
    /// Accepted and completed in the ledger, with its two entries.
    pub applied: u64,
    /// Accepted and rejected by the processor (no entries).
    pub rejected: u64,
    /// Accepted but absent from the ledger (or completed without entries).
    pub lost: u64,
    /// Accepted and applied more than once (more entries than one
    /// application writes).
    pub duplicated: u64,
    /// Unanswered requests the ledger applied: allowed (the answer was lost,
    /// not the command).
    pub unanswered_applied: u64,
    /// Transfers among the load's accounts the ledger applied although the
    /// server refused them, they were never sent, or they are not the
    /// load's at all.
    pub applied_unaccepted: u64,
    /// `ledgerctl verify`'s violations.
    pub problems: Vec<String>,
    /// `ledgerctl verify` found nothing.
    pub invariants_ok: bool,
}

impl Audit {
    /// Nothing lost, nothing twice, nothing unasked, the ledger consistent.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.applied_unaccepted == 0 && self.invariants_ok
    }
}

/// Compares the answers with the ledger.
///
/// # Errors
/// Database failures.
pub async fn audit(pool: &PgPool, record: &RunRecord) -> anyhow::Result<Audit> {
    let ids: Vec<Uuid> = record.answers.keys().copied().collect();
    // `entries!`: a count is never null, though Postgres cannot tell of a subquery.
    let rows = sqlx::query!(
        r#"select t.id, t.status, (select count(*) from entries e where e.transfer_id = t.id) as "entries!"
          from transfers t where t.id = any($1)"#,
        &ids,
    )
    .fetch_all(pool)
    .await
    .context("reading the load's transfers")?;
    let in_ledger: HashMap<Uuid, (String, i64)> =
        rows.into_iter().map(|row| (row.id, (row.status, row.entries))).collect();
    let mut audit = Audit::default();
    for (id, answer) in &record.answers {
        let found = in_ledger.get(id);
        let applied = found.is_some_and(|(status, entries)| status == "completed" || *entries > 0);
        match answer {
            Answer::Accepted => {
                audit.accepted += 1;
                match found {
                    None => audit.lost += 1,
                    Some((status, entries)) if status == "completed" => match entries {
                        2 => audit.applied += 1,
                        0 | 1 => audit.lost += 1,
                        _ => audit.duplicated += 1,
                    },
                    Some((_, 0)) => audit.rejected += 1,
                    Some(_) => audit.duplicated += 1,
                }
            }
            Answer::Unanswered => audit.unanswered_applied += u64::from(applied),
            Answer::Refused | Answer::NotSent => audit.applied_unaccepted += u64::from(applied),
        }
    }
    let strangers = sqlx::query_scalar!(
        r#"select count(*) as "strangers!" from transfers
          where kind <> 'deposit' and status = 'completed'
            and (source_account_id = any($1) or destination_account_id = any($1))
            and not (id = any($2))"#,
        &record.accounts,
        &ids,
    )
    .fetch_one(pool)
    .await
    .context("looking for transfers the load did not send")?;
    audit.applied_unaccepted += u64::try_from(strangers).unwrap_or_default();
    audit.problems = processor::verify::problems(pool).await.context("verifying the ledger")?;
    audit.invariants_ok = audit.problems.is_empty();
    Ok(audit)
}

/// A decision read from `ledger.events`.
#[derive(Debug, Clone)]
struct Decision {
    arrived: Instant,
    /// `completed`, or `rejected: <reason>`.
    outcome: String,
    /// The processor's `completed_at` / `rejected_at`.
    decided_at: Option<DateTime<Utc>>,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, sigfig).expect("valid histogram bounds")
}

/// One second of the run (by when requests were due, or for decisions, when
/// they arrived).
#[derive(Debug, Clone)]
struct Second {
    offered: u64,
    accepted: u64,
    errors: u64,
    decided: u64,
    http: Histogram<u64>,
    e2e: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self { offered: 0, accepted: 0, errors: 0, decided: 0, http: histogram(2), e2e: histogram(2) }
    }
}

#[derive(Debug)]
struct State {
    offered: u64,
    sent: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    answers: HashMap<Uuid, Answer>,
    /// Accepted, decision not read yet: when it was due.
    awaiting: HashMap<Uuid, Instant>,
    /// Decisions read before their 202 (or of other traffic).
    early: HashMap<Uuid, Decision>,
    /// Ids whose decision was counted, so a redelivered event counts once.
    decided: std::collections::HashSet<Uuid>,
    decisions: BTreeMap<String, u64>,
    duplicate_events: u64,
    last_decision: Option<Instant>,
    http: Histogram<u64>,
    e2e: Histogram<u64>,
    decision: Histogram<u64>,
    seconds: Vec<Second>,
}

/// The run's shared measurements: the senders, the event reader and the
/// progress bar write and read them.
#[derive(Debug)]
pub struct Tracker {
    start: Instant,
    start_wall: DateTime<Utc>,
    in_flight: AtomicU64,
    state: Mutex<State>,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Tracker {
    /// A tracker whose schedule starts shortly.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let start = Instant::now() + START_LEAD;
        let start_wall = Utc::now() + chrono::Duration::from_std(START_LEAD).unwrap_or_default();
        Arc::new(Self {
            start,
            start_wall,
            in_flight: AtomicU64::new(0),
            state: Mutex::new(State {
                offered: 0,
                sent: 0,
                accepted: 0,
                errors: BTreeMap::new(),
                answers: HashMap::new(),
                awaiting: HashMap::new(),
                early: HashMap::new(),
                decided: std::collections::HashSet::new(),
                decisions: BTreeMap::new(),
                duplicate_events: 0,
                last_decision: None,
                http: histogram(3),
                e2e: histogram(3),
                decision: histogram(3),
                seconds: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn second<'a>(&self, state: &'a mut State, at: Instant) -> &'a mut Second {
        let index = usize::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(usize::MAX);
        let index = index.min(1_000_000);
        if state.seconds.len() <= index {
            state.seconds.resize_with(index + 1, Second::new);
        }
        &mut state.seconds[index]
    }

    fn offer(&self, due: Instant) {
        let mut state = self.state();
        state.offered += 1;
        self.second(&mut state, due).offered += 1;
    }

    fn error(&self, state: &mut State, due: Instant, kind: &str) {
        *state.errors.entry(kind.to_owned()).or_default() += 1;
        self.second(state, due).errors += 1;
    }

    fn not_sent(&self, id: Uuid, due: Instant) {
        let mut state = self.state();
        state.answers.insert(id, Answer::NotSent);
        self.error(&mut state, due, "in_flight_limit");
    }

    fn answered(&self, id: Uuid, due: Instant, at: Instant, answer: Answer, error: Option<&str>) {
        let mut state = self.state();
        state.sent += 1;
        state.answers.insert(id, answer);
        if let Some(kind) = error {
            self.error(&mut state, due, kind);
        }
        if answer == Answer::Unanswered {
            return;
        }
        let http = micros(at.saturating_duration_since(due));
        state.http.saturating_record(http);
        self.second(&mut state, due).http.saturating_record(http);
        if answer == Answer::Accepted {
            state.accepted += 1;
            self.second(&mut state, at).accepted += 1;
            match state.early.remove(&id) {
                Some(decision) => self.record_decision(&mut state, id, due, &decision),
                None => {
                    state.awaiting.insert(id, due);
                }
            }
        }
    }

    fn record_decision(&self, state: &mut State, id: Uuid, due: Instant, decision: &Decision) {
        if !state.decided.insert(id) {
            state.duplicate_events += 1;
            return;
        }
        let e2e = micros(decision.arrived.saturating_duration_since(due));
        state.e2e.saturating_record(e2e);
        self.second(state, due).e2e.saturating_record(e2e);
        self.second(state, decision.arrived).decided += 1;
        *state.decisions.entry(decision.outcome.clone()).or_default() += 1;
        if let Some(decided_at) = decision.decided_at {
            let due_wall = self.start_wall
                + chrono::Duration::from_std(due.saturating_duration_since(self.start)).unwrap_or_default();
            let taken = (decided_at - due_wall).to_std().unwrap_or_default();
            state.decision.saturating_record(micros(taken));
        }
        state.last_decision = Some(state.last_decision.map_or(decision.arrived, |last| last.max(decision.arrived)));
    }

    /// An event from `ledger.events`.
    fn event(&self, payload: &[u8], arrived: Instant) {
        let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
        let (outcome, at_field) = match event["type"].as_str() {
            Some("transfer.completed") => ("completed".to_owned(), "completed_at"),
            Some("transfer.rejected") => {
                (format!("rejected: {}", event["reason"].as_str().unwrap_or("unknown")), "rejected_at")
            }
            _ => return,
        };
        let Some(id) = event["transfer_id"].as_str().and_then(|id| id.parse::<Uuid>().ok()) else { return };
        let decided_at = event[at_field].as_str().and_then(|at| at.parse::<DateTime<Utc>>().ok());
        let decision = Decision { arrived, outcome, decided_at };
        let mut state = self.state();
        if state.decided.contains(&id) {
            state.duplicate_events += 1;
        } else if let Some(due) = state.awaiting.remove(&id) {
            self.record_decision(&mut state, id, due, &decision);
        } else {
            state.early.insert(id, decision);
        }
    }

    fn awaiting(&self) -> usize {
        self.state().awaiting.len()
    }

    /// Requests sent and not answered yet.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Requests a token with the client-credentials grant: the token and its
/// lifetime.
async fn fetch_token(
    http: &reqwest::Client,
    base_url: &str,
    client_id: Uuid,
    secret: &SecretString,
) -> anyhow::Result<(String, Duration)> {
    let client_id = client_id.to_string();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id.as_str()),
        ("client_secret", secret.expose_secret()),
    ];
    let body = send_setup(|| http.post(format!("{base_url}/v1/oauth/token")).form(&form), 200).await?;
    let token = body["access_token"].as_str().context("the token answer has no access_token")?.to_owned();
    let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(900));
    Ok((token, lifetime))
}

/// When to replace a token of `lifetime`: at three quarters of it, so a
/// slow token endpoint still leaves a quarter.
fn refresh_after(lifetime: Duration) -> Duration {
    (lifetime * 3 / 4).max(Duration::from_secs(1))
}

/// Keeps `source` fresh until `stop`: a run longer than a token's lifetime
/// does not turn into 401s.
pub fn spawn_token_refresher(
    http: reqwest::Client,
    base_url: String,
    client_id: Uuid,
    secret: SecretString,
    source: TokenSource,
    lifetime: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut wait = refresh_after(lifetime);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match fetch_token(&http, &base_url, client_id, &secret).await {
                Ok((token, lifetime)) => {
                    source.set(token);
                    wait = refresh_after(lifetime);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "refreshing the load's token failed; trying again in 1 s");
                    wait = Duration::from_secs(1);
                }
            }
        }
    });
}

/// Sends a setup request until it gets `expected`, waiting out 429 and 503
/// answers (the per-client rate limit is a policy the load may meet).
async fn send_setup(request: impl Fn() -> reqwest::RequestBuilder, expected: u16) -> anyhow::Result<Value> {
    for _ in 0..SETUP_ATTEMPTS_MAX {
        let response = request().send().await.context("setup request")?;
        let status = response.status().as_u16();
        if status == expected {
            return response.json().await.context("setup answer");
        }
        if status == 429 || status == 503 {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("setup request answered {status}: {body}");
    }
    anyhow::bail!("setup request still refused after {SETUP_ATTEMPTS_MAX} attempts")
}

/// Opens `config.accounts` accounts and funds each with more than the
/// whole run could take out of it (every transfer is at most 1.00), so no
/// transfer is rejected for funds unless the ledger is wrong.
async fn open_and_fund(
    config: &LoadConfig,
    http: &reqwest::Client,
    pool: &PgPool,
    token: &str,
    run_id: Uuid,
) -> anyhow::Result<Vec<Uuid>> {
    let base = &config.base_url;
    let currency = config.currency.as_str();
    let accounts: Vec<Uuid> = futures::stream::iter(0..config.accounts)
        .map(|index| async move {
            let key = format!("load-{run_id}-account-{index}");
            let body = send_setup(
                || {
                    http.post(format!("{base}/v1/accounts"))
                        .bearer_auth(token)
                        .header("Idempotency-Key", &key)
                        .json(&json!({ "currency": currency }))
                },
                201,
            )
            .await?;
            body["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()).context("the account answer has no id")
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let funding = format!("{}.00", config.requests_total() + 1);
    let deposits: Vec<Uuid> = futures::stream::iter(accounts.iter().copied().enumerate())
        .map(|(index, account)| {
            let funding = funding.clone();
            async move {
                let key = format!("load-{run_id}-fund-{index}");
                let body = send_setup(
                    || {
                        http.post(format!("{base}/v1/accounts/{account}/deposits"))
                            .bearer_auth(token)
                            .header("Idempotency-Key", &key)
                            .json(&json!({ "amount": funding, "currency": currency }))
                    },
                    202,
                )
                .await?;
                body["transfer_id"]
                    .as_str()
                    .and_then(|id| id.parse::<Uuid>().ok())
                    .context("the deposit answer has no transfer_id")
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + FUNDING_WAIT_MAX;
    loop {
        let completed = sqlx::query_scalar!(
            r#"select count(*) as "completed!" from transfers where id = any($1) and status = 'completed'"#,
            &deposits,
        )
        .fetch_one(pool)
        .await
        .context("waiting for the funding deposits")?;
        if usize::try_from(completed).unwrap_or_default() == deposits.len() {
            return Ok(accounts);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {completed} of {} funding deposits applied within {} s",
            deposits.len(),
            FUNDING_WAIT_MAX.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer of `ledger.events` positioned at the current end of every
/// partition (the high watermarks, read before the run starts: an `End`
/// resolved later could skip the first decisions).
///
/// # Errors
/// When the broker cannot be reached or the topic has no partitions.
pub async fn events_consumer(kafka: &KafkaConfig) -> anyhow::Result<StreamConsumer> {
    let mut kafka = kafka.clone();
    // An instrument: a decision is timed when its event arrives, so the
    // reader's own idle fetch must not add to it (the mock cluster holds a
    // fetch for its whole wait even when a message arrives meanwhile).
    kafka.fetch_wait_max_ms = kafka.fetch_wait_max_ms.min(platform::kafka::MOCK_FETCH_WAIT_MAX_MS);
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let consumer: StreamConsumer = kafka.consumer(&format!("ledgerctl-load-{}", Uuid::new_v4())).create()?;
        let topic = kafka.topics.events.as_str();
        let metadata = consumer.fetch_metadata(Some(topic), timeout).context("reading the events topic")?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
            let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(high))?;
        }
        anyhow::ensure!(assignment.count() > 0, "the events topic {topic} has no partitions");
        consumer.assign(&assignment)?;
        Ok(consumer)
    })
    .await?
}

fn spawn_event_reader(consumer: StreamConsumer, tracker: Arc<Tracker>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        if let Some(payload) = message.payload() {
                            tracker.event(payload, Instant::now());
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "reading ledger.events");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    });
}

/// Who pays whom how much, drawn in schedule order from the seed.
fn plan(rng: &mut StdRng, accounts: &[Uuid], hot_share: f64) -> (Uuid, Uuid, String) {
    // The merchant only receives; everyone else pays.
    let source_index = rng.gen_range(1..accounts.len());
    let destination_index = if accounts.len() == 2 || rng.gen_bool(hot_share) {
        0
    } else {
        // Any other account, the merchant included.
        let index = rng.gen_range(0..accounts.len() - 1);
        if index >= source_index { index + 1 } else { index }
    };
    let cents: u32 = rng.gen_range(1..=100);
    (accounts[source_index], accounts[destination_index], format!("{}.{:02}", cents / 100, cents % 100))
}

/// How the transfers reach the stack.
#[derive(Debug, Clone)]
pub enum Via {
    /// `POST /v1/transfers` with this client.
    Http(reqwest::Client),
    /// `transfer.requested` commands produced to the commands topic, by
    /// the same publisher ingest uses.
    Kafka(ingest::support::publish::Publisher),
}

/// How the schedule went.
#[derive(Debug, Clone, Copy)]
pub struct Drive {
    /// When the last request was due (or the stop came).
    pub sending_ended: Instant,
}

/// Sends the schedule: `rate × duration` transfers, the k-th at
/// `start + k/rate`, each in a task of its own; stops early on `stop`.
/// Returns once sending is over; answers may still be on their way.
///
/// # Panics
/// When the target has fewer than two accounts.
pub async fn drive(
    config: &LoadConfig,
    via: &Via,
    target: &Arc<Target>,
    tracker: &Arc<Tracker>,
    stop: &CancellationToken,
) -> Drive {
    assert!(target.accounts.len() >= 2, "a load needs at least two accounts");
    let mut rng = StdRng::seed_from_u64(config.seed);
    let rate = u64::from(config.rate_per_s);
    let url = format!("{}/v1/transfers", target.base_url);
    for k in 0..config.requests_total() {
        let due = tracker.start + Duration::from_nanos(k.saturating_mul(1_000_000_000) / rate);
        tokio::select! {
            biased;
            () = stop.cancelled() => return Drive { sending_ended: Instant::now() },
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let (source, destination, amount) = plan(&mut rng, &target.accounts, config.hot_share);
        let key = format!("load-{}-{k}", target.run_id);
        let id = IdempotencyKey::parse(&key)
            .map(|key| TransferId::derive(Operation::Transfer, target.client_id, &key).as_uuid())
            .expect("the load's keys are valid");
        tracker.offer(due);
        if tracker.in_flight.load(Ordering::Relaxed) >= config.in_flight_max {
            tracker.not_sent(id, due);
            continue;
        }
        tracker.in_flight.fetch_add(1, Ordering::Relaxed);
        let transfer = Planned { id, key, source, destination, amount };
        let (via, url, target, tracker) = (via.clone(), url.clone(), Arc::clone(target), Arc::clone(tracker));
        tokio::spawn(async move {
            let (answer, at, error) = match &via {
                Via::Http(http) => send_http(http, &url, &target, &transfer).await,
                Via::Kafka(publisher) => produce(publisher, &target, &transfer).await,
            };
            tracker.answered(answer.0, due, at, answer.1, error.as_deref());
            tracker.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Drive { sending_ended: Instant::now() }
}

/// One transfer of the schedule.
#[derive(Debug)]
struct Planned {
    /// The transfer id derived from the client and the key.
    id: Uuid,
    key: String,
    source: Uuid,
    destination: Uuid,
    amount: String,
}

/// The id the answer names, its fate, when it came, and the error kind.
type Sent = ((Uuid, Answer), Instant, Option<String>);

async fn send_http(http: &reqwest::Client, url: &str, target: &Target, transfer: &Planned) -> Sent {
    let request =
        http.post(url).bearer_auth(target.token.current()).header("Idempotency-Key", &transfer.key).json(&json!({
            "source_account_id": transfer.source,
            "destination_account_id": transfer.destination,
            "amount": transfer.amount,
            "currency": target.currency,
        }));
    let result = request.send().await;
    let at = Instant::now();
    match result {
        Ok(response) if response.status().as_u16() == 202 => {
            // The answer names the id; it is the derived one unless
            // ingest's derivation changed, and the answer wins.
            let named =
                response.json::<Value>().await.ok().and_then(|body| body["transfer_id"].as_str()?.parse::<Uuid>().ok());
            ((named.unwrap_or(transfer.id), Answer::Accepted), at, None)
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let code = response.json::<Value>().await.ok().and_then(|body| body["code"].as_str().map(str::to_owned));
            let kind = match code {
                Some(code) => format!("http_{status}_{code}"),
                None => format!("http_{status}"),
            };
            ((transfer.id, Answer::Refused), at, Some(kind))
        }
        Err(error) => {
            let kind = if error.is_timeout() {
                "timeout"
            } else if error.is_connect() {
                "connect"
            } else {
                "transport"
            };
            ((transfer.id, Answer::Unanswered), at, Some(kind.to_owned()))
        }
    }
}

/// Produces the transfer as a `transfer.requested` command; an
/// acknowledged one is accepted (it must be applied exactly once), a failed
/// one unanswered (the broker may have it).
async fn produce(publisher: &ingest::support::publish::Publisher, target: &Target, transfer: &Planned) -> Sent {
    let money = match target.currency.parse().map(|currency| schemas::Money::parse(&transfer.amount, currency)) {
        Ok(Ok(money)) => money,
        // The plan makes amounts of 0.01 to 1.00 in a checked currency.
        _ => return ((transfer.id, Answer::NotSent), Instant::now(), Some("invalid_amount".to_owned())),
    };
    let command = schemas::Command::TransferRequested(schemas::messages::TransferRequested {
        version: schemas::messages::V1,
        transfer_id: TransferId::from_uuid(transfer.id),
        source_account_id: schemas::AccountId::from_uuid(transfer.source),
        destination_account_id: schemas::AccountId::from_uuid(transfer.destination),
        money,
        metadata: None,
        reference: None,
        requested_at: Utc::now(),
    });
    let result = publisher.publish(&command, &transfer.key).await;
    let at = Instant::now();
    match result {
        Ok(()) => ((transfer.id, Answer::Accepted), at, None),
        Err(_) => ((transfer.id, Answer::Unanswered), at, Some("produce".to_owned())),
    }
}

/// Waits until every sent request has its answer, at most the request
/// timeout and a second.
///
/// # Errors
/// Never; a `Result` for symmetry with the other steps.
pub async fn wait_for_answers(config: &LoadConfig, tracker: &Tracker) {
    let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms) + Duration::from_secs(1);
    while tracker.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn progress_bar(config: &LoadConfig) -> indicatif::ProgressBar {
    if !config.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(config.requests_total());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn spawn_progress(bar: indicatif::ProgressBar, tracker: Arc<Tracker>, stop: CancellationToken) {
    if bar.is_hidden() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stop.cancelled() => { bar.finish_and_clear(); return; }
                _ = tick.tick() => {}
            }
            let elapsed = tracker.start.elapsed().as_secs_f64().max(0.001);
            let in_flight = tracker.in_flight();
            let state = tracker.state();
            let errors: u64 = state.errors.values().sum();
            let quantile =
                |q: f64| if state.e2e.is_empty() { 0.0 } else { state.e2e.value_at_quantile(q) as f64 / 1000.0 };
            bar.set_position(state.offered);
            bar.set_message(format!(
                "offered {:.0}/s achieved {:.0}/s errors {errors} in-flight {in_flight} awaiting {} e2e p50 {:.1} ms p99 {:.1} ms",
                state.offered as f64 / elapsed,
                state.accepted as f64 / elapsed,
                state.awaiting.len(),
                quantile(0.5),
                quantile(0.99),
            ));
        }
    });
}

/// A run's report and what the audit needs of it.
#[derive(Debug)]
pub struct LoadOutcome {
    pub report: LoadReport,
    pub record: RunRecord,
}

/// A whole run against a stack: set up a client (or take the given one),
/// open and fund accounts, read `ledger.events` from its end, send the
/// schedule, wait for the answers and the decisions (at most
/// `drain_timeout_ms`), audit the ledger. `stop` ends the sending early; the
/// drain and the audit still run.
///
/// # Errors
/// When the setup fails (the stack unreachable, a refused client); the load
/// itself never fails, it counts.
pub async fn run(
    config: &LoadConfig,
    pool: &PgPool,
    kafka: &KafkaConfig,
    stop: &CancellationToken,
) -> anyhow::Result<LoadOutcome> {
    let http = config.http_client()?;
    let (client_id, secret) = match &config.credentials {
        Some((id, secret)) => (*id, secret.clone()),
        None => {
            let hasher =
                ingest::support::passwords::SecretHasher::new(ingest::support::passwords::Argon2Cost::from_env()?)?;
            let client = ingest::domain::clients::create_client(
                pool,
                &hasher,
                "ledgerctl-load",
                ingest::domain::clients::Scope::ALL,
            )
            .await
            .context("creating the load's API client (DATABASE_URL)")?;
            (client.id, client.secret)
        }
    };
    let (token, lifetime) = fetch_token(&http, &config.base_url, client_id, &secret)
        .await
        .with_context(|| format!("getting a token from {}", config.base_url))?;
    let run_id = Uuid::new_v4();
    let accounts = open_and_fund(config, &http, pool, &token, run_id).await?;
    let background = stop.child_token();
    let source = TokenSource::fixed(token);
    spawn_token_refresher(
        http.clone(),
        config.base_url.clone(),
        client_id,
        secret,
        source.clone(),
        lifetime,
        background.clone(),
    );
    let consumer = events_consumer(kafka).await?;
    let tracker = Tracker::new();
    spawn_event_reader(consumer, Arc::clone(&tracker), background.clone());
    let bar = progress_bar(config);
    spawn_progress(bar.clone(), Arc::clone(&tracker), background.clone());
    let target = Arc::new(Target {
        base_url: config.base_url.clone(),
        client_id,
        token: source,
        accounts: accounts.clone(),
        currency: config.currency.clone(),
        run_id,
    });
    let via = if config.direct {
        Via::Kafka(ingest::support::publish::Publisher::new(kafka).context("creating the producer for --direct")?)
    } else {
        Via::Http(http)
    };
    let driven = drive(config, &via, &target, &tracker, stop).await;
    let sending_ended = driven.sending_ended.max(tracker.start);
    wait_for_answers(config, &tracker).await;
    let drain_deadline = Instant::now() + Duration::from_millis(config.drain_timeout_ms);
    while tracker.awaiting() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    background.cancel();
    bar.finish_and_clear();
    let record = RunRecord { accounts, answers: tracker.state().answers.clone() };
    let audit = audit(pool, &record).await?;
    let report = LoadReport::build(config, &tracker, sending_ended, audit);
    Ok(LoadOutcome { report, record })
}

/// The schedule alone, against a target set up elsewhere: what the tests use
/// to show that a stalled server does not slow the offered rate.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn run_schedule(config: &LoadConfig, target: Target, stop: &CancellationToken) -> anyhow::Result<LoadReport> {
    let via = Via::Http(config.http_client()?);
    let tracker = Tracker::new();
    let driven = drive(config, &via, &Arc::new(target), &tracker, stop).await;
    let sending_ended = driven.sending_ended.max(tracker.start);
    wait_for_answers(config, &tracker).await;
    Ok(LoadReport::build(config, &tracker, sending_ended, Audit::default()))
}

impl LoadReport {
    fn build(config: &LoadConfig, tracker: &Tracker, sending_ended: Instant, audit: Audit) -> Self {
        let state = tracker.state();
        // The k-th request stands for the interval [k/R, (k+1)/R): the
        // window ends one interval after the last one was due.
        let sending_s = (sending_ended.saturating_duration_since(tracker.start).as_secs_f64()
            + 1.0 / f64::from(config.rate_per_s))
        .max(0.001);
        let ms = |histogram: &Histogram<u64>, quantile: f64| {
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile) as f64 / 1000.0)
        };
        let max = |histogram: &Histogram<u64>| (!histogram.is_empty()).then(|| histogram.max() as f64 / 1000.0);
        let backlog_drained_ms = (state.awaiting.is_empty() && state.accepted > 0).then(|| {
            state.last_decision.map_or(0.0, |last| last.saturating_duration_since(sending_ended).as_secs_f64() * 1000.0)
        });
        let timeline = state
            .seconds
            .iter()
            .enumerate()
            .map(|(second, stats)| SecondReport {
                second: second as u64,
                offered: stats.offered,
                accepted: stats.accepted,
                decided: stats.decided,
                errors: stats.errors,
                http_p99_ms: ms(&stats.http, 0.99),
                e2e_p50_ms: ms(&stats.e2e, 0.5),
                e2e_p99_ms: ms(&stats.e2e, 0.99),
                e2e_max_ms: max(&stats.e2e),
            })
            .collect();
        Self {
            parameters: config.clone(),
            offered: state.offered,
            offered_per_s: state.offered as f64 / sending_s,
            sent: state.sent + tracker.in_flight(),
            accepted: state.accepted,
            achieved_per_s: state.accepted as f64 / sending_s,
            sending_s,
            decided: state.decided.len() as u64,
            undecided: state.awaiting.len() as u64,
            backlog_drained_ms,
            errors: state.errors.values().sum(),
            errors_by_kind: state.errors.clone(),
            decisions: state.decisions.clone(),
            duplicate_events: state.duplicate_events,
            http_p50_ms: ms(&state.http, 0.5),
            http_p90_ms: ms(&state.http, 0.9),
            http_p99_ms: ms(&state.http, 0.99),
            http_p999_ms: ms(&state.http, 0.999),
            http_max_ms: max(&state.http),
            e2e_p50_ms: ms(&state.e2e, 0.5),
            e2e_p90_ms: ms(&state.e2e, 0.9),
            e2e_p99_ms: ms(&state.e2e, 0.99),
            e2e_p999_ms: ms(&state.e2e, 0.999),
            e2e_max_ms: max(&state.e2e),
            decision_p50_ms: ms(&state.decision, 0.5),
            decision_p99_ms: ms(&state.decision, 0.99),
            decision_max_ms: max(&state.decision),
            applied: audit.applied,
            lost: audit.lost,
            duplicated: audit.duplicated,
            unanswered_applied: audit.unanswered_applied,
            applied_unaccepted: audit.applied_unaccepted,
            invariants_ok: audit.invariants_ok,
            problems: audit.problems.clone(),
            audit_ok: audit.ok(),
            timeline,
        }
    }
}
