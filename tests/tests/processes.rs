//! Crash safety across processes.
//!
//! The e2e suite stops services in-process, where a "crash" still runs
//! destructors and shares one runtime. Here ingest, processor and outbox
//! relay run as separate OS processes (the debug binaries, which
//! `cargo test --workspace --all-targets` builds next to this test) against
//! a standalone broker (`ledgerctl kafka-mock` in a child process, or
//! `KAFKA_BROKERS`) and a fresh database. Concurrent HTTP clients send
//! transfers and retry each one with the same `Idempotency-Key` until they
//! get `202`, while every service is SIGKILLed and restarted more than once:
//! the processor twice (once restarted at once, once after a pause longer
//! than its session timeout), ingest and the relay twice each. Then:
//!
//! - every transfer that got a `202` was applied exactly once (one row, two
//!   entries summing to zero, balances as the clients expect);
//! - nothing was applied that no client asked for, and nothing that was
//!   never accepted unless its client saw an error and retried it;
//! - `ledgerctl verify`, run as a process, finds no violation;
//! - every outbox event, and so every decision, reached `ledger.events` at
//!   least once (deduplicated by the `ledgerline-event-id` header).
//!
//! A second test runs the processor binary with its metrics listener: a
//! partition whose stored offset is outside the log makes `/health/ready`
//! answer 503 naming it and `ledgerline_processor_partition_stopped` 1,
//! until a restarted processor applies from it again; consumer lag per
//! partition counts commands waiting while offsets cannot be stored.
//!
//! Run alone, the binaries must be built first (`cargo test -p
//! ledgerline-tests --test processes` does not build other crates' binaries):
//! `cargo build -p ingest -p processor -p outbox-relay -p ledgerctl`.
//! Each service's output goes to a log file in a temporary directory (its
//! path is printed; the end of a log is in the failure message); the
//! directory is removed after a passing run unless
//! `LEDGERLINE_TEST_KEEP_LOGS` is set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledgerline_tests::{JWT_SECRET, TestDatabase, hasher};
use platform::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use schemas::{IdempotencyKey, Operation, Topics, TransferId};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

/// Concurrent HTTP clients.
const CLIENTS: usize = 4;
/// Each client sends at least this many transfers, and goes on until the
/// fault schedule is over, up to [`TRANSFERS_PER_CLIENT_MAX`]. At a
/// client's pace (~20 a second) the maximum lasts about a minute, well past
/// the schedule's usual 20–30 s: with 400, a CI run whose group rebalances
/// were slow (10.7 s for the first restart instead of 6) ran out of
/// transfers before the last restart, and its wait for progress failed.
const TRANSFERS_PER_CLIENT_MIN: usize = 10;
const TRANSFERS_PER_CLIENT_MAX: usize = 1_500;
/// A client's pause between two transfers: short, so requests are in flight
/// (some between the publish and the answer) when ingest dies, without
/// flooding a 2-core machine.
const CLIENT_PAUSE: Duration = Duration::from_millis(40);
/// A client's pause before retrying a failed request, its attempts per
/// transfer, and the longest it tries one transfer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const ATTEMPTS_MAX: u32 = 300;
const TRANSFER_DEADLINE: Duration = Duration::from_secs(40);
/// One HTTP request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Accounts the clients move money between, and what each starts with.
const ACCOUNTS: usize = 8;
const FUNDING: &str = "1000.00";
const AMOUNT: &str = "1.00";
/// The processor's consumer-group session: a SIGKILLed member holds its
/// partitions this long. Short so the test is quick, but twice librdkafka's
/// 3 s heartbeat interval, so a live member is never timed out.
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// The longest any one step waits (a join, a restart, the ledger catching
/// up, the relay draining the outbox). Generous: the machine is shared.
const STEP_MAX: Duration = Duration::from_secs(60);
/// Transfers the ledger must apply between two kills, so every kill lands in
/// a flowing stream (and a restarted processor is seen working).
const PROGRESS_BETWEEN_KILLS: i64 = 8;

/// A binary of the workspace, from the target directory this test runs in
/// (`target/debug/deps/processes-…` → `target/debug/<name>`).
fn binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let profile = test.parent().and_then(Path::parent).expect("the target directory");
    let path = profile.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: `cargo test --workspace --all-targets` builds it; to run this test alone, first run \
         `cargo build -p ingest -p processor -p outbox-relay -p ledgerctl`",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; the service binds it
/// again, with `SO_REUSEADDR`, on every restart).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port").port()
}

/// A child process of the test, with its output in a log file. Killed when
/// dropped, so a failing or panicking test leaves no process behind.
struct Service {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn new(name: &'static str, program: PathBuf, args: &[&str], env: &[(&str, String)], logs: &Path) -> Self {
        Self {
            name,
            program,
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            env: env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect(),
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("the service's log file");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().unwrap_or_else(|error| panic!("starting {}: {error}", self.name)));
    }

    /// SIGKILL: no destructor, no flush, no goodbye to the broker or the
    /// database; whatever was in flight is cut off.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as an orchestrator stops a container, then waits at most
    /// `deadline` for the process to exit: its exit status.
    fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("running kill");
        assert!(sent.success(), "kill -TERM {}", child.id());
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("polling a child") {
                return status;
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                panic!("{} did not exit within {deadline:?} of SIGTERM:\n{}", self.name, tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the log's end when the process has exited on its own.
    fn assert_running(&mut self) {
        let exited = self.child.as_mut().map(|child| child.try_wait().expect("polling a child"));
        if let Some(Some(status)) = exited {
            self.child = None;
            panic!("{} exited on its own ({status}):\n{}", self.name, tail(&self.log));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The broker: `ledgerctl kafka-mock` in a child process (it creates the
/// topics of its namespace), or `KAFKA_BROKERS` with topics of a namespace
/// unique to this run.
struct Broker {
    kafka: KafkaConfig,
    namespace: String,
    _mock: Option<Service>,
}

async fn start_broker(logs: &Path) -> Broker {
    let namespace = format!("processes-{}", Uuid::new_v4().simple());
    let topics = Topics::namespaced(&namespace);
    if let Some(brokers) = std::env::var("KAFKA_BROKERS").ok().filter(|brokers| !brokers.is_empty()) {
        let kafka = KafkaConfig::new(brokers, topics);
        if std::env::var_os("LEDGERLINE_TEST_KAFKA_AUTO_CREATE").is_some() {
            auto_create_topics(&kafka);
        } else {
            kafka.create_topics(4, 1).await.expect("creating the topics");
        }
        return Broker { kafka, namespace, _mock: None };
    }
    let mut mock = Service::new(
        "kafka-mock",
        binary("ledgerctl"),
        &["kafka-mock"],
        &[("LEDGERLINE_TOPIC_NAMESPACE", namespace.clone())],
        logs,
    );
    mock.start();
    let deadline = Instant::now() + STEP_MAX;
    let brokers = loop {
        mock.assert_running();
        let mut text = String::new();
        if let Ok(mut file) = File::open(&mock.log) {
            let _ = file.read_to_string(&mut text);
        }
        if let Some(line) = text.lines().find_map(|line| line.strip_prefix("KAFKA_BROKERS=")) {
            break line.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "ledgerctl kafka-mock printed no address:\n{}", tail(&mock.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Broker { kafka: KafkaConfig::new(brokers, topics), namespace, _mock: Some(mock) }
}

/// A broker without CreateTopics support auto-creates a topic when a
/// producer asks for its metadata.
fn auto_create_topics(kafka: &KafkaConfig) {
    use rdkafka::producer::{FutureProducer, Producer as _};
    let producer: FutureProducer = kafka.producer().create().expect("producer");
    for (topic, _) in kafka.topics.with_partition_counts(4) {
        let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        assert!(metadata.topics().first().is_some_and(|topic| !topic.partitions().is_empty()), "{topic} not created");
    }
}

/// `DATABASE_URL` (the kit's default server) with the test database's name
/// in place of its own.
fn database_url(pool: &PgPool) -> String {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, query) = server.split_once('?').map_or((server.as_str(), ""), |(base, query)| (base, query));
    let scheme_end = base.find("://").map_or(0, |at| at + 3);
    let authority = base[scheme_end..].find('/').map_or(base, |at| &base[..scheme_end + at]);
    let database = pool.connect_options().get_database().expect("the test database's name").to_owned();
    if query.is_empty() { format!("{authority}/{database}") } else { format!("{authority}/{database}?{query}") }
}

/// What one client saw of one transfer.
#[derive(Debug, Clone)]
struct Sent {
    transfer_id: Uuid,
    source: Uuid,
    destination: Uuid,
    /// It got a 202 (on some attempt).
    accepted: bool,
    /// Some attempt failed (an error status, a refused or cut connection, a
    /// timeout), so the client retried.
    saw_error: bool,
    attempts: u32,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    client_id: Uuid,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request with the same idempotency key until it answers
    /// `expected`, within the attempt and time bounds: what was seen.
    async fn until_status(
        &self,
        expected: u16,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> (Option<Value>, bool, u32) {
        let deadline = Instant::now() + TRANSFER_DEADLINE;
        let mut saw_error = false;
        for attempt in 1..=ATTEMPTS_MAX {
            match build().bearer_auth(&self.token).send().await {
                Ok(response) if response.status().as_u16() == expected => {
                    let body = response.json().await.unwrap_or(Value::Null);
                    return (Some(body), saw_error, attempt);
                }
                Ok(_) | Err(_) => saw_error = true,
            }
            if Instant::now() >= deadline {
                return (None, saw_error, attempt);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        (None, saw_error, ATTEMPTS_MAX)
    }

    async fn transfer(&self, source: Uuid, destination: Uuid, key: &str) -> Sent {
        let body = json!({
            "source_account_id": source,
            "destination_account_id": destination,
            "amount": AMOUNT,
            "currency": "EUR",
        });
        let (answer, saw_error, attempts) = self
            .until_status(202, || self.http.post(self.url("/v1/transfers")).header("Idempotency-Key", key).json(&body))
            .await;
        let derived =
            TransferId::derive(Operation::Transfer, self.client_id, &IdempotencyKey::parse(key).expect("key"));
        if let Some(answer) = &answer {
            assert_eq!(answer["transfer_id"], derived.as_uuid().to_string(), "the transfer id derives from the key");
        }
        Sent { transfer_id: derived.as_uuid(), source, destination, accepted: answer.is_some(), saw_error, attempts }
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, ingest: &mut Service) {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        ingest.assert_running();
        if let Ok(response) = http.get(format!("{base}/health/ready")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "ingest not ready:\n{}", tail(&ingest.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn applied_transfers(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from transfers where kind = 'transfer'")
        .fetch_one(pool)
        .await
        .expect("counting transfers")
}

/// Waits until the ledger has applied `count` transfers, every service
/// staying alive meanwhile.
async fn wait_applied(pool: &PgPool, count: i64, services: &mut [&mut Service], what: &str) {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        for service in services.iter_mut() {
            service.assert_running();
        }
        let applied = applied_transfers(pool).await;
        if applied >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: only {applied} of {count} transfers applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message of `topic` up to its end as it is now: (outbox id header,
/// payload). Blocking.
fn read_to_end(kafka: &KafkaConfig, topic: &str) -> Vec<(Option<String>, Value)> {
    let consumer: BaseConsumer = kafka.consumer(&format!("reader-{}", Uuid::new_v4())).create().expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10)).expect("watermarks");
        if high > low {
            remaining.insert(partition.id(), high);
        }
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + STEP_MAX;
    let mut messages = Vec::new();
    while !remaining.is_empty() {
        assert!(std::time::Instant::now() < deadline, "{topic} not read to its end: {remaining:?} left");
        let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = result.expect("reading the events topic");
        let event_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == "ledgerline-event-id")
                .and_then(|header| header.value.map(|value| String::from_utf8_lossy(value).into_owned()))
        });
        let payload = serde_json::from_slice(message.payload().unwrap_or_default()).expect("event JSON");
        messages.push((event_id, payload));
        if remaining.get(&message.partition()).is_some_and(|high| message.offset() + 1 >= *high) {
            remaining.remove(&message.partition());
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_killed_and_restarted_as_processes_lose_nothing_and_apply_nothing_twice() {
    let logs = std::env::temp_dir().join(format!("ledgerline-processes-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).expect("log directory");
    eprintln!("service logs in {}", logs.display());
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{:>6} ms  {what}", started.elapsed().as_millis());
    let database = TestDatabase::create().await.expect("test database");
    let pool = database.pool.clone();
    let broker = start_broker(&logs).await;
    let client =
        ingest::domain::clients::create_client(&pool, &hasher(), "fault-test", ingest::domain::clients::Scope::ALL)
            .await
            .expect("API client");

    let http_addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{http_addr}");
    let common = [
        ("DATABASE_URL", database_url(&pool)),
        ("KAFKA_BROKERS", broker.kafka.brokers.clone()),
        ("LEDGERLINE_TOPIC_NAMESPACE", broker.namespace.clone()),
    ];
    let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        common.iter().cloned().chain(extra.iter().cloned()).collect()
    };
    let mut ingest = Service::new(
        "ingest",
        binary("ingest"),
        &[],
        &with(&[("LEDGERLINE_HTTP_ADDR", http_addr.clone()), ("LEDGERLINE_JWT_SECRET", JWT_SECRET.to_owned())]),
        &logs,
    );
    let mut processor = Service::new(
        "processor",
        binary("processor"),
        &[],
        &with(&[
            ("LEDGERLINE_PROCESSOR_GROUP", format!("{}-processor", broker.namespace)),
            ("LEDGERLINE_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string()),
            ("LEDGERLINE_PROCESSOR_RETRY_BACKOFF_MAX_MS", "500".to_owned()),
        ]),
        &logs,
    );
    let mut relay = Service::new(
        "outbox-relay",
        binary("outbox-relay"),
        &[],
        &with(&[
            ("LEDGERLINE_RELAY_POLL_INTERVAL_MS", "200".to_owned()),
            // A killed relay's leased rows go to its successor after the
            // lease, which is four produce timeouts plus a margin: 18 s, not
            // the default 50.
            ("LEDGERLINE_KAFKA_PRODUCE_TIMEOUT_MS", "2000".to_owned()),
        ]),
        &logs,
    );
    ingest.start();
    processor.start();
    relay.start();

    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("HTTP client");
    wait_ready(&http, &base, &mut ingest).await;
    let token = {
        let response = http
            .post(format!("{base}/v1/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &client.id.to_string()),
                ("client_secret", secrecy::ExposeSecret::expose_secret(&client.secret)),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), 200, "token");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_owned()
    };
    let api = Arc::new(Api { http: http.clone(), base: base.clone(), token, client_id: client.id });

    // Accounts, funded through the whole pipeline: the first deposit's
    // decision also says the processor has joined the group.
    let mut accounts = Vec::new();
    for index in 0..ACCOUNTS {
        let key = format!("open-{index}");
        let (answer, _, _) = api
            .until_status(201, || {
                api.http.post(api.url("/v1/accounts")).header("Idempotency-Key", &key).json(&json!({"currency": "EUR"}))
            })
            .await;
        let answer = answer.expect("account opened");
        accounts.push(answer["id"].as_str().expect("id").parse::<Uuid>().expect("uuid"));
    }
    let mut deposits = Vec::new();
    for account in &accounts {
        let key = format!("fund-{account}");
        let (answer, _, _) = api
            .until_status(202, || {
                api.http
                    .post(api.url(&format!("/v1/accounts/{account}/deposits")))
                    .header("Idempotency-Key", &key)
                    .json(&json!({"amount": FUNDING, "currency": "EUR"}))
            })
            .await;
        let answer = answer.expect("deposit accepted");
        deposits.push(answer["transfer_id"].as_str().expect("transfer_id").parse::<Uuid>().expect("uuid"));
    }
    let deadline = Instant::now() + STEP_MAX;
    loop {
        processor.assert_running();
        let funded: i64 =
            sqlx::query_scalar("select count(*) from transfers where id = any($1) and status = 'completed'")
                .bind(&deposits)
                .fetch_one(&pool)
                .await
                .expect("deposits");
        if funded == i64::try_from(ACCOUNTS).expect("count") {
            break;
        }
        assert!(Instant::now() < deadline, "only {funded} deposits applied:\n{}", tail(&processor.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    phase("accounts funded");
    // The clients: each sends transfers one after another, retrying each
    // with its key until it is accepted, until the fault schedule is over.
    let schedule_over = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (api, accounts, schedule_over) = (Arc::clone(&api), accounts.clone(), Arc::clone(&schedule_over));
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for index in 0..TRANSFERS_PER_CLIENT_MAX {
                    if index >= TRANSFERS_PER_CLIENT_MIN && schedule_over.load(Ordering::Acquire) {
                        break;
                    }
                    let source = accounts[(client * 2 + index) % ACCOUNTS];
                    let destination = accounts[(client * 2 + index * 3 + 1) % ACCOUNTS];
                    let destination =
                        if destination == source { accounts[(client * 2 + index + 1) % ACCOUNTS] } else { destination };
                    sent.push(api.transfer(source, destination, &format!("client-{client}-transfer-{index}")).await);
                    tokio::time::sleep(CLIENT_PAUSE).await;
                }
                sent
            })
        })
        .collect();

    // The fault schedule. Each kill waits for the ledger to have moved on
    // since the last one, so every service dies in a flowing stream.
    let mut mark = applied_transfers(&pool).await + PROGRESS_BETWEEN_KILLS;
    wait_applied(&pool, mark, &mut [&mut ingest, &mut processor, &mut relay], "before the first kill").await;

    phase("first kill");
    // 1. The processor, restarted at once: its old member still holds the
    //    partitions until the session times out.
    processor.kill();
    processor.start();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // 2. Ingest, mid-request for some clients; restarted after a moment.
    ingest.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest.start();
    wait_ready(&http, &base, &mut ingest).await;
    mark = applied_transfers(&pool).await + PROGRESS_BETWEEN_KILLS;
    wait_applied(&pool, mark, &mut [&mut ingest, &mut processor, &mut relay], "after the first processor restart")
        .await;

    phase("processor back");
    // 3. The relay, restarted at once.
    relay.kill();
    relay.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 4. The processor again, down for longer than its session: commands
    //    pile up in Kafka and are applied when it is back.
    processor.kill();
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1_000)).await;
    processor.start();
    mark = applied_transfers(&pool).await + PROGRESS_BETWEEN_KILLS;
    wait_applied(&pool, mark, &mut [&mut ingest, &mut processor, &mut relay], "after the second processor restart")
        .await;

    phase("processor back again");
    // 5. Ingest and the relay once more.
    ingest.kill();
    relay.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.start();
    ingest.start();
    wait_ready(&http, &base, &mut ingest).await;
    mark = applied_transfers(&pool).await + PROGRESS_BETWEEN_KILLS;
    wait_applied(&pool, mark, &mut [&mut ingest, &mut processor, &mut relay], "after the last restarts").await;
    schedule_over.store(true, Ordering::Release);
    phase("fault schedule over");

    let mut sent: Vec<Sent> = Vec::new();
    for client in clients {
        sent.extend(client.await.expect("a client panicked"));
    }
    let not_accepted: Vec<&Sent> = sent.iter().filter(|sent| !sent.accepted).collect();
    assert!(not_accepted.is_empty(), "transfers never accepted within their bounds: {not_accepted:?}");
    let retried = sent.iter().filter(|sent| sent.saw_error).count();
    let attempts: u32 = sent.iter().map(|sent| sent.attempts).sum();
    eprintln!("{} transfers sent in {attempts} attempts; {retried} retried after an error", sent.len());

    // Every accepted transfer is decided.
    let accepted: Vec<Uuid> = sent.iter().filter(|sent| sent.accepted).map(|sent| sent.transfer_id).collect();
    let deadline = Instant::now() + STEP_MAX;
    loop {
        processor.assert_running();
        let decided: i64 = sqlx::query_scalar("select count(*) from transfers where id = any($1)")
            .bind(&accepted)
            .fetch_one(&pool)
            .await
            .expect("decided");
        if decided == i64::try_from(accepted.len()).expect("count") {
            break;
        }
        assert!(Instant::now() < deadline, "only {decided} of {} accepted transfers decided", accepted.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    phase("every accepted transfer decided");
    // Exactly once: what the ledger applied is what the clients asked for.
    let by_id: HashMap<Uuid, &Sent> = sent.iter().map(|sent| (sent.transfer_id, sent)).collect();
    assert_eq!(by_id.len(), sent.len(), "every key derives its own transfer id");
    let rows: Vec<(Uuid, String, Uuid, Uuid, Decimal)> = sqlx::query_as(
        "select id, status, source_account_id, destination_account_id, amount from transfers where kind = 'transfer'",
    )
    .fetch_all(&pool)
    .await
    .expect("transfers");
    let amount: Decimal = AMOUNT.parse().expect("amount");
    for (id, status, source, destination, row_amount) in &rows {
        let asked = by_id.get(id).unwrap_or_else(|| panic!("transfer {id} applied, but no client asked for it"));
        assert!(asked.accepted || asked.saw_error, "transfer {id} applied, never accepted and never retried");
        assert_eq!(status, "completed", "transfer {id} between funded accounts");
        assert_eq!((*source, *destination, *row_amount), (asked.source, asked.destination, amount), "transfer {id}");
    }
    let applied: HashSet<Uuid> = rows.iter().map(|(id, ..)| *id).collect();
    for id in &accepted {
        assert!(applied.contains(id), "accepted transfer {id} was never applied");
    }
    let entries: Vec<(Uuid, i64, Decimal)> = sqlx::query_as(
        "select transfer_id, count(*), sum(amount) from entries where transfer_id = any($1) group by transfer_id",
    )
    .bind(&accepted)
    .fetch_all(&pool)
    .await
    .expect("entries");
    assert_eq!(entries.len(), accepted.len(), "every accepted transfer has entries");
    for (id, count, sum) in &entries {
        assert_eq!((*count, *sum), (2, Decimal::ZERO), "transfer {id}: one debit and one credit, applied once");
    }
    let mut expected: BTreeMap<Uuid, Decimal> =
        accounts.iter().map(|account| (*account, FUNDING.parse().expect("funding"))).collect();
    for id in &applied {
        let asked = by_id[id];
        *expected.get_mut(&asked.source).expect("source") -= amount;
        *expected.get_mut(&asked.destination).expect("destination") += amount;
    }
    let balances: Vec<(Uuid, Decimal)> = sqlx::query_as("select id, balance from accounts where id = any($1)")
        .bind(&accounts)
        .fetch_all(&pool)
        .await
        .expect("balances");
    let balances: BTreeMap<Uuid, Decimal> = balances.into_iter().collect();
    assert_eq!(balances, expected, "each account's balance is its funding plus what the clients moved, once");

    // The ledger verifies, checked by the operator's tool as a process.
    let verify = Command::new(binary("ledgerctl"))
        .arg("verify")
        .env("DATABASE_URL", database_url(&pool))
        .env("NO_COLOR", "1")
        .output()
        .expect("running ledgerctl verify");
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("ledger verified"),
        "ledgerctl verify: {}\n{stdout}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );

    // Every event reached ledger.events at least once: the relay drains the
    // outbox, then every event of every outbox row is on the topic, and with
    // it every decision.
    let deadline = Instant::now() + STEP_MAX;
    loop {
        relay.assert_running();
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where destination = 'events' and delivered_at is null")
                .fetch_one(&pool)
                .await
                .expect("pending events");
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} events still pending:\n{}", tail(&relay.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phase("outbox drained");
    let event_ids: Vec<String> =
        sqlx::query_scalar("select event_id from outbox_events").fetch_all(&pool).await.expect("event ids");
    let (kafka, topic) = (broker.kafka.clone(), broker.kafka.topics.events.clone());
    let messages = tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic)).await.expect("reader");
    let mut seen_event_ids = HashSet::new();
    let mut seen_transfers = HashSet::new();
    for (event_id, payload) in &messages {
        let event_id = event_id.as_deref().expect("every event carries its event id");
        if seen_event_ids.insert(event_id.to_owned())
            && let Some(id) = payload["transfer_id"].as_str()
        {
            seen_transfers.insert(id.parse::<Uuid>().expect("transfer id"));
        }
    }
    eprintln!(
        "{} events on the topic for {} events in the outbox ({} duplicates)",
        messages.len(),
        event_ids.len(),
        messages.len() - seen_event_ids.len()
    );
    let missing: Vec<&String> = event_ids.iter().filter(|id| !seen_event_ids.contains(*id)).collect();
    assert!(missing.is_empty(), "events delivered but not on {}: {missing:?}", broker.kafka.topics.events);
    for id in applied.iter().chain(&deposits) {
        assert!(seen_transfers.contains(id), "no event for transfer {id}");
    }

    phase("events read");
    drop((ingest, processor, relay));
    if std::env::var_os("LEDGERLINE_TEST_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}

/// A metric's value on a Prometheus page: the sample `series` (name and
/// labels exactly as written).
fn sample(page: &str, series: &str) -> Option<i64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes until `check` holds for the page, within [`STEP_MAX`].
async fn wait_page(http: &reqwest::Client, url: &str, service: &mut Service, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + STEP_MAX;
    let mut page = String::new();
    loop {
        service.assert_running();
        if let Ok(response) = http.get(url).send().await {
            page = response.text().await.unwrap_or_default();
            if check(&page) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: not seen on {url}:\n{page}\n{}", tail(&service.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Probes until it answers `status` with a body containing `needle`: the
/// body.
async fn wait_probe(
    http: &reqwest::Client,
    url: &str,
    (status, needle): (u16, &str),
    service: &mut Service,
    what: &str,
) -> String {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        service.assert_running();
        let seen = match http.get(url).send().await {
            Ok(response) => {
                let answered = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                if answered == status && body.contains(needle) {
                    return body;
                }
                format!("{answered} {body}")
            }
            Err(error) => error.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: {url} never answered {status} with {needle:?} (last: {seen})\n{}",
            tail(&service.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `count` commands to one partition of the command topic: each
/// a transfer between accounts that do not exist, rejected when applied.
async fn publish_to_partition(kafka: &KafkaConfig, partition: i32, count: usize) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka.producer().create().expect("producer");
    for _ in 0..count {
        let command = schemas::Command::TransferRequested(schemas::messages::TransferRequested {
            version: schemas::messages::V1,
            transfer_id: TransferId::from_uuid(Uuid::new_v4()),
            source_account_id: schemas::AccountId::from_uuid(Uuid::new_v4()),
            destination_account_id: schemas::AccountId::from_uuid(Uuid::new_v4()),
            money: schemas::Money::parse(AMOUNT, schemas::Currency::EUR).expect("money"),
            metadata: None,
            reference: None,
            requested_at: chrono::Utc::now(),
        });
        let payload = serde_json::to_vec(&command).expect("command JSON");
        let key = command.partition_key();
        let record = FutureRecord::to(&kafka.topics.commands).partition(partition).key(&key).payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.expect("publishing a command");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_partition_makes_the_processor_not_ready_and_shows_in_its_metrics_until_it_moves_again() {
    let logs = std::env::temp_dir().join(format!("ledgerline-processes-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).expect("log directory");
    eprintln!("service logs in {}", logs.display());
    let database = TestDatabase::create().await.expect("test database");
    let pool = database.pool.clone();
    let broker = start_broker(&logs).await;
    let group = format!("{}-processor", broker.namespace);
    let (processor_metrics, relay_metrics) =
        (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let common = [
        ("DATABASE_URL", database_url(&pool)),
        ("KAFKA_BROKERS", broker.kafka.brokers.clone()),
        ("LEDGERLINE_TOPIC_NAMESPACE", broker.namespace.clone()),
    ];
    let mut processor = Service::new(
        "processor",
        binary("processor"),
        &[],
        &common
            .iter()
            .cloned()
            .chain([
                ("LEDGERLINE_METRICS_ADDR", processor_metrics.clone()),
                ("LEDGERLINE_PROCESSOR_GROUP", group.clone()),
                ("LEDGERLINE_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string()),
                ("LEDGERLINE_PROCESSOR_HEALTH_INTERVAL_MS", "200".to_owned()),
            ])
            .collect::<Vec<_>>(),
        &logs,
    );
    let mut relay = Service::new(
        "outbox-relay",
        binary("outbox-relay"),
        &[],
        &common.iter().cloned().chain([("LEDGERLINE_METRICS_ADDR", relay_metrics.clone())]).collect::<Vec<_>>(),
        &logs,
    );
    processor.start();
    relay.start();
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("HTTP client");
    let (ready, live) =
        (format!("http://{processor_metrics}/health/ready"), format!("http://{processor_metrics}/health/live"));
    let metrics = format!("http://{processor_metrics}/metrics");

    // Both services answer their probes, apart from any API.
    wait_probe(&http, &live, (204, ""), &mut processor, "processor live").await;
    wait_probe(&http, &ready, (204, ""), &mut processor, "processor ready").await;
    wait_probe(&http, &format!("http://{relay_metrics}/health/live"), (204, ""), &mut relay, "relay live").await;
    wait_probe(&http, &format!("http://{relay_metrics}/health/ready"), (204, ""), &mut relay, "relay ready").await;

    // Lag per partition: while the ledger cannot store offsets (a lock held
    // on them), commands pile up in partition 1 and the gauge counts them.
    let mut blocker = pool.begin().await.expect("transaction");
    sqlx::query("lock table consumer_offsets in share mode").execute(&mut *blocker).await.expect("lock");
    publish_to_partition(&broker.kafka, 1, 5).await;
    wait_page(&http, &metrics, &mut processor, "lag of 5 on partition 1", |page| {
        sample(page, r#"ledgerline_processor_consumer_lag{partition="1"}"#) == Some(5)
    })
    .await;
    blocker.rollback().await.expect("release");
    wait_page(&http, &metrics, &mut processor, "partition 1 caught up", |page| {
        sample(page, r#"ledgerline_processor_consumer_lag{partition="1"}"#) == Some(0)
            && sample(page, r#"ledgerline_processor_partition_stopped{partition="1"}"#) == Some(0)
    })
    .await;

    // Partition 2's stored offset is past the end of its log (the topic was
    // recreated, say): the consumer cannot fetch it and will not skip.
    processor.kill();
    let cluster_id = {
        let kafka = broker.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = kafka.consumer("cluster-id-reader").create().expect("client");
            client.client().fetch_cluster_id(Duration::from_secs(10)).expect("cluster id")
        })
        .await
        .expect("cluster id")
    };
    sqlx::query(
        "insert into consumer_offsets (cluster_id, consumer_group, topic, partition, next_offset)
         values ($1, $2, $3, 2, 100)
         on conflict (cluster_id, consumer_group, topic, partition) do update set next_offset = 100",
    )
    .bind(&cluster_id)
    .bind(&group)
    .bind(&broker.kafka.topics.commands)
    .execute(&pool)
    .await
    .expect("moving partition 2's offset");
    processor.start();
    let body =
        wait_probe(&http, &ready, (503, "partition 2:"), &mut processor, "not ready with a stopped partition").await;
    let problem: Value = serde_json::from_str(&body).expect("problem JSON");
    assert_eq!(problem["code"], "not_ready", "{problem}");
    assert!(
        problem["problems"].as_array().expect("problems").iter().any(|text| {
            text.as_str().is_some_and(|text| text.starts_with("partition 2:") && text.contains("past the end"))
        }),
        "{problem}"
    );
    wait_page(&http, &metrics, &mut processor, "partition 2 stopped and the fetch refused", |page| {
        sample(page, r#"ledgerline_processor_partition_stopped{partition="2"}"#) == Some(1)
            && sample(page, r#"ledgerline_processor_partition_stopped{partition="1"}"#) == Some(0)
            && sample(page, "ledgerline_processor_offset_out_of_range_total").is_some_and(|count| count >= 1)
    })
    .await;

    // The operator moves the offset back. A command that arrives then is
    // not fetched by the consumer that stopped: still not ready.
    sqlx::query("update consumer_offsets set next_offset = 0 where consumer_group = $1 and partition = 2")
        .bind(&group)
        .execute(&pool)
        .await
        .expect("moving the offset back");
    publish_to_partition(&broker.kafka, 2, 1).await;
    wait_page(&http, &metrics, &mut processor, "a command waiting on partition 2", |page| {
        sample(page, r#"ledgerline_processor_consumer_lag{partition="2"}"#) == Some(1)
    })
    .await;
    wait_probe(&http, &ready, (503, "restart the processors"), &mut processor, "still not ready").await;

    // Restarted, the processor fetches the partition again: ready.
    processor.kill();
    processor.start();
    wait_probe(&http, &ready, (204, ""), &mut processor, "ready once partition 2 moves").await;
    wait_page(&http, &metrics, &mut processor, "partition 2 moving", |page| {
        sample(page, r#"ledgerline_processor_partition_stopped{partition="2"}"#) == Some(0)
            && sample(page, r#"ledgerline_processor_consumer_lag{partition="2"}"#) == Some(0)
    })
    .await;

    drop((processor, relay));
    if std::env::var_os("LEDGERLINE_TEST_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}

/// How many commands the SIGTERM test sends, and how long the processor has
/// to exit once told to.
const TERMINATE_COMMANDS: usize = 3_000;
const TERMINATE_DEADLINE: Duration = Duration::from_secs(30);

async fn decided(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from transfers").fetch_one(pool).await.expect("counting decisions")
}

/// A processor stopped with SIGTERM in the middle of a stream of commands
/// finishes the batch in flight and exits cleanly (status 0); the next
/// instance continues from the offsets it stored: every command decided
/// once, none lost, none twice, and the stored offsets cover exactly what
/// was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_stopped_with_sigterm_under_load_finishes_its_batch_and_the_next_continues() {
    let logs = std::env::temp_dir().join(format!("ledgerline-processes-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).expect("log directory");
    eprintln!("service logs in {}", logs.display());
    let database = TestDatabase::create().await.expect("test database");
    let pool = database.pool.clone();
    let broker = start_broker(&logs).await;
    let group = format!("{}-processor", broker.namespace);
    let env = [
        ("DATABASE_URL", database_url(&pool)),
        ("KAFKA_BROKERS", broker.kafka.brokers.clone()),
        ("LEDGERLINE_TOPIC_NAMESPACE", broker.namespace.clone()),
        ("LEDGERLINE_PROCESSOR_GROUP", group.clone()),
        ("LEDGERLINE_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string()),
    ];
    let mut processor = Service::new("processor", binary("processor"), &[], &env, &logs);
    processor.start();

    // Commands keep coming while the processor is told to stop: each a
    // transfer between accounts that do not exist (decided as a rejection,
    // a row in `transfers` all the same), keyed at random over the
    // partitions.
    let kafka = broker.kafka.clone();
    let sender = tokio::spawn(async move {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = kafka.producer().create().expect("producer");
        for _ in 0..TERMINATE_COMMANDS {
            let command = schemas::Command::TransferRequested(schemas::messages::TransferRequested {
                version: schemas::messages::V1,
                transfer_id: TransferId::from_uuid(Uuid::new_v4()),
                source_account_id: schemas::AccountId::from_uuid(Uuid::new_v4()),
                destination_account_id: schemas::AccountId::from_uuid(Uuid::new_v4()),
                money: schemas::Money::parse(AMOUNT, schemas::Currency::EUR).expect("money"),
                metadata: None,
                reference: None,
                requested_at: chrono::Utc::now(),
            });
            let payload = serde_json::to_vec(&command).expect("command JSON");
            let key = command.partition_key();
            let record = FutureRecord::to(&kafka.topics.commands).key(&key).payload(&payload);
            producer.send(record, Duration::from_secs(10)).await.expect("publishing a command");
        }
    });
    let deadline = Instant::now() + STEP_MAX;
    while decided(&pool).await < 200 {
        processor.assert_running();
        assert!(Instant::now() < deadline, "the processor decided too little before the stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = processor.terminate(TERMINATE_DEADLINE);
    assert!(status.success(), "the processor's exit after SIGTERM: {status}\n{}", tail(&processor.log));
    let at_stop = decided(&pool).await;
    let log = std::fs::read_to_string(&processor.log).unwrap_or_default();
    assert!(log.contains("processor stopping"), "no graceful stop in the log:\n{}", tail(&processor.log));

    // The next instance picks up where the stored offsets say.
    processor.start();
    sender.await.expect("the sender");
    let sent = i64::try_from(TERMINATE_COMMANDS).expect("small");
    let deadline = Instant::now() + STEP_MAX;
    loop {
        processor.assert_running();
        let now = decided(&pool).await;
        if now >= sent {
            break;
        }
        assert!(Instant::now() < deadline, "only {now} of {sent} commands decided after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    processor.kill();
    assert!(at_stop < sent, "the stop came after the load ({at_stop} of {sent} decided): not under load");
    assert_eq!(decided(&pool).await, sent, "every command decided exactly once");
    let stored: i64 = sqlx::query_scalar(
        "select coalesce(sum(next_offset), 0)::int8 from consumer_offsets where consumer_group = $1",
    )
    .bind(&group)
    .fetch_one(&pool)
    .await
    .expect("stored offsets");
    assert_eq!(stored, sent, "the stored offsets cover exactly what was sent");
    if std::env::var_os("LEDGERLINE_TEST_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}

/// The environment docker-compose.yml gives each Ledgerline service: its
/// own `environment:` entries over the shared `&environment` anchor's,
/// `${NAME:-default}` / `${NAME:?message}` left for the caller to fill. A
/// reader of exactly the shapes the file uses (a test checks it finds
/// every service), not of YAML at large.
fn compose_environments() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml"))
        .expect("docker-compose.yml");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let (mut anchor, mut services) = (BTreeMap::new(), BTreeMap::new());
    let (mut section, mut service, mut in_environment) = (String::new(), String::new(), false);
    for line in text.lines() {
        let code = line.split(" #").next().unwrap_or_default().trim_end();
        if code.trim().is_empty() || code.trim_start().starts_with('#') {
            continue;
        }
        match indent(code) {
            0 => {
                (section, service, in_environment) =
                    (code.split(':').next().unwrap_or_default().to_owned(), String::new(), false);
            }
            2 => (service, in_environment) = (code.trim().split(':').next().unwrap_or_default().to_owned(), false),
            4 if section == "x-ledgerline" => {
                in_environment = false;
                if let Some((key, value)) = code.trim().split_once(": ").filter(|_| service == "environment") {
                    anchor.insert(key.to_owned(), value.trim_matches('"').to_owned());
                }
            }
            4 => {
                in_environment = code.trim().starts_with("environment:");
                // A service's own `environment:` replaces the merged one
                // (YAML's merge key is shallow): only `<<: *environment`
                // inside it brings the shared entries back.
                if in_environment {
                    services.insert(service.clone(), BTreeMap::new());
                }
                // The service is of Ledgerline's image: the anchor's
                // environment unless its own says otherwise.
                if code.trim() == "<<: *ledgerline" {
                    let entries: &mut BTreeMap<String, String> = services.entry(service.clone()).or_default();
                    for (key, value) in &anchor {
                        entries.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
            6 if in_environment && section == "services" => {
                let entries: &mut BTreeMap<String, String> = services.entry(service.clone()).or_default();
                if code.trim() == "<<: *environment" {
                    for (key, value) in &anchor {
                        entries.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                } else if let Some((key, value)) = code.trim().split_once(": ") {
                    entries.insert(key.to_owned(), value.trim_matches('"').to_owned());
                }
            }
            _ => {}
        }
    }
    services
}

/// Fills `${NAME:-default}` and `${NAME:?message}` from `values` (a default
/// otherwise).
fn interpolate(value: &str, values: &HashMap<&str, String>) -> String {
    let Some(start) = value.find("${") else { return value.to_owned() };
    let end = start + value[start..].find('}').expect("a closing brace");
    let inner = &value[start + 2..end];
    let name = inner.split([':', '-', '?']).next().unwrap_or_default();
    let default = inner.split_once(":-").map(|(_, default)| default.to_owned()).unwrap_or_default();
    let filled = values.get(name).cloned().unwrap_or(default);
    format!("{}{filled}{}", &value[..start], interpolate(&value[end + 1..], values))
}

/// Each service binary, started with exactly the environment
/// docker-compose.yml gives it — hosts replaced by this machine's
/// (`postgres` by the test database on the local server, `kafka` by a
/// mock cluster, `0.0.0.0` listeners by free local ports) and the `.env`
/// secrets by test values — becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_becomes_ready_with_the_environment_the_compose_file_gives_it() {
    let logs = std::env::temp_dir().join(format!("ledgerline-processes-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).expect("log directory");
    let database = TestDatabase::create().await.expect("test database");
    let broker = start_broker(&logs).await;
    let environments = compose_environments();
    let secrets: HashMap<&str, String> =
        [("POSTGRES_PASSWORD", "unused".to_owned()), ("LEDGERLINE_JWT_SECRET", JWT_SECRET.to_owned())].into();
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("HTTP client");
    for (service, binary_name) in [("ingest", "ingest"), ("processor", "processor"), ("outbox-relay", "outbox-relay")] {
        let environment = environments.get(service).unwrap_or_else(|| panic!("{service} in docker-compose.yml"));
        let mut probe = String::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for (key, value) in environment {
            let value = interpolate(value, &secrets);
            let value = match key.as_str() {
                // The compose file's URL names the `postgres` host and the
                // `ledgerline` role; here the test database on this server.
                "DATABASE_URL" => {
                    assert!(value.contains("@postgres:5432/"), "{value}");
                    database_url(&database.pool)
                }
                "KAFKA_BROKERS" => {
                    assert_eq!(value, "kafka:9092");
                    broker.kafka.brokers.clone()
                }
                "LEDGERLINE_HTTP_ADDR" | "LEDGERLINE_METRICS_ADDR" if value.starts_with("0.0.0.0:") => {
                    let address = format!("127.0.0.1:{}", free_port());
                    if key == "LEDGERLINE_METRICS_ADDR" && probe.is_empty() || key == "LEDGERLINE_HTTP_ADDR" {
                        probe = format!("http://{address}/health/ready");
                    }
                    address
                }
                _ => value,
            };
            env.push((key.clone(), value));
        }
        // The topics of this test's broker (the compose file's are unnamespaced).
        env.push(("LEDGERLINE_TOPIC_NAMESPACE".to_owned(), broker.namespace.clone()));
        let borrowed: Vec<(&str, String)> = env.iter().map(|(key, value)| (key.as_str(), value.clone())).collect();
        let mut process = Service::new(binary_name_static(binary_name), binary(binary_name), &[], &borrowed, &logs);
        process.start();
        assert!(!probe.is_empty(), "{service}: no listener to probe in {env:?}");
        wait_probe(&http, &probe, (204, ""), &mut process, &format!("{service} ready")).await;
        process.kill();
    }
    let _ = std::fs::remove_dir_all(&logs);
}

fn binary_name_static(name: &str) -> &'static str {
    match name {
        "ingest" => "ingest",
        "processor" => "processor",
        _ => "outbox-relay",
    }
}

#[test]
fn the_compose_reader_finds_every_service_and_its_shared_environment() {
    let environments = compose_environments();
    for service in ["init", "ingest", "processor", "outbox-relay"] {
        let environment = environments.get(service).unwrap_or_else(|| panic!("{service}: {environments:?}"));
        assert!(environment.contains_key("DATABASE_URL") && environment.contains_key("KAFKA_BROKERS"), "{service}");
    }
    assert_eq!(environments["ingest"]["LEDGERLINE_HTTP_ADDR"], "0.0.0.0:8080");
    assert_eq!(environments["init"]["LEDGERLINE_METRICS_ADDR"], "", "the service's own entry wins");
    assert!(!environments["fake-provider"].contains_key("DATABASE_URL"), "an own environment replaces the shared one");
    assert_eq!(interpolate("a${X:?set it}b${Y:-d}", &[("X", "1".to_owned())].into()), "a1bd");
}
