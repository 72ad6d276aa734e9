//! The test kit: a fresh database per test, a broker per test, and the three
//! services started in-process on port 0, behind a [`TestApp`] with one typed
//! method per request.
//!
//! - Postgres: the server of `DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`); each test gets its own
//!   database, dropped when the test ends.
//! - Kafka: librdkafka's mock cluster, one per test; or, when
//!   `KAFKA_BROKERS` is set, that broker with topic names unique to the test.

pub mod browser;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use platform::CancellationToken;
use platform::kafka::{KafkaConfig, MockKafka};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use schemas::Topics;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use uuid::Uuid;

/// The longest a test waits for an asynchronous outcome. Generous because
/// the machine is shared; a correct run takes a fraction of it.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Partitions of the command topic in tests: more than one, so ordering and
/// assignment across partitions are exercised.
pub const COMMAND_PARTITIONS: i32 = 4;

/// The JWT signing secret of test apps, so tests can forge tokens.
pub const JWT_SECRET: &str = "test-signing-secret-that-is-at-least-32-bytes";
/// Ingest accepts payment-provider callbacks at
/// `/v1/providers/fake/callbacks` signed with this secret.
pub const PROVIDER_CALLBACK_SECRET: &str = "test-provider-callback-secret";

/// A database of its own for one test, dropped afterwards.
#[derive(Debug)]
pub struct TestDatabase {
    pub pool: PgPool,
    name: String,
    server: PgConnectOptions,
}

impl TestDatabase {
    /// # Errors
    /// When the server is unreachable or the migrations fail.
    pub async fn create() -> anyhow::Result<Self> {
        let database = Self::create_migrated_before(i64::MAX).await?;
        Ok(database)
    }

    /// A database with only the migrations older than `version`, as a
    /// ledger that an earlier release filled looks: a test fills it the
    /// way that release did, then runs [`schemas::MIGRATOR`] to the end.
    ///
    /// # Errors
    /// When the server is unreachable or the migrations fail.
    pub async fn create_migrated_before(version: i64) -> anyhow::Result<Self> {
        let url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let server = PgConnectOptions::from_str(&url).context("DATABASE_URL")?.database("postgres");
        let name = format!("ledgerline_test_{}", Uuid::new_v4().simple());
        let mut admin = server.connect().await.context("connecting to the Postgres server")?;
        sqlx::raw_sql(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .context("creating the test database")?;
        admin.close().await.ok();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_with(server.clone().database(&name))
            .await
            .context("connecting to the test database")?;
        let older = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                schemas::MIGRATOR.migrations.iter().filter(|migration| migration.version < version).cloned().collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        older.run(&pool).await.context("migrating the test database")?;
        Ok(Self { pool, name, server })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        // Drop runs outside async; a short-lived runtime on its own thread
        // does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(mut admin) = server.connect().await {
                    let _ = sqlx::raw_sql(&format!("drop database if exists {name} with (force)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A broker for one test.
#[derive(Debug)]
pub struct TestBroker {
    pub kafka: KafkaConfig,
    _mock: Option<MockKafka>,
}

impl TestBroker {
    /// # Errors
    /// When the mock cluster cannot start or the external broker is unreachable.
    pub async fn start() -> anyhow::Result<Self> {
        let namespace = format!("test-{}", Uuid::new_v4().simple());
        let topics = Topics::namespaced(&namespace);
        match std::env::var("KAFKA_BROKERS").ok().filter(|brokers| !brokers.is_empty()) {
            Some(brokers) => {
                let kafka = KafkaConfig::new(brokers, topics);
                if std::env::var_os("LEDGERLINE_TEST_KAFKA_AUTO_CREATE").is_some() {
                    auto_create_topics(&kafka)?;
                } else {
                    kafka.create_topics(COMMAND_PARTITIONS, 1).await?;
                }
                Ok(Self { kafka, _mock: None })
            }
            None => {
                let mock = MockKafka::start(1, &topics, COMMAND_PARTITIONS)?;
                Ok(Self { kafka: mock.kafka_config(topics), _mock: Some(mock) })
            }
        }
    }
}

/// Creates the test's topics on a broker without CreateTopics support (an
/// out-of-process mock cluster, `ledgerctl kafka-mock`) by asking for their
/// metadata as a producer, which auto-creates them with the broker's default
/// partition count.
fn auto_create_topics(kafka: &KafkaConfig) -> anyhow::Result<()> {
    use rdkafka::producer::Producer as _;
    let producer: FutureProducer = kafka.producer().create()?;
    for (topic, _) in kafka.topics.with_partition_counts(COMMAND_PARTITIONS) {
        let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().first().map_or(0, |topic| topic.partitions().len());
        anyhow::ensure!(partitions > 0, "topic {topic} was not auto-created");
    }
    Ok(())
}

/// The three services, started in-process against a fresh database and broker.
pub struct TestApp {
    /// `http://` or, with TLS configured, `https://` and the bound address.
    pub address: String,
    /// The plain-HTTP redirect listener, when configured.
    pub redirect_address: Option<String>,
    pub pool: PgPool,
    pub kafka: KafkaConfig,
    pub client_id: Uuid,
    pub client_secret: SecretString,
    pub consumer_group: String,
    http: reqwest::Client,
    token: tokio::sync::OnceCell<String>,
    processor: Option<processor::Processor>,
    /// The in-process relay's counters (zero when spawned without one).
    pub relay_metrics: std::sync::Arc<outbox_relay::RelayMetrics>,
    /// Ingest's `/metrics` listener, when configured.
    pub metrics_address: Option<String>,
    shutdown: CancellationToken,
    producer: FutureProducer,
    // Dropped last, after the services above.
    _broker: TestBroker,
    _database: TestDatabase,
}

impl TestApp {
    /// Starts everything, with an API client holding every scope.
    ///
    /// # Panics
    /// When any part fails to start: the test cannot run.
    pub async fn spawn() -> Self {
        Self::spawn_with(true, |_| {}).await
    }

    /// Starts everything, with ingest's settings changed by `configure`.
    ///
    /// # Panics
    /// When any part fails to start: the test cannot run.
    pub async fn spawn_configured(configure: impl FnOnce(&mut ingest::IngestConfig)) -> Self {
        Self::spawn_with(true, configure).await
    }

    /// Starts ingest and a processor but no outbox relay, for tests that run
    /// relays of their own.
    ///
    /// # Panics
    /// When any part fails to start: the test cannot run.
    pub async fn spawn_without_relay() -> Self {
        Self::spawn_with(false, |_| {}).await
    }

    async fn spawn_with(relay: bool, configure: impl FnOnce(&mut ingest::IngestConfig)) -> Self {
        platform::telemetry::init();
        let database = TestDatabase::create().await.expect("test database");
        let broker = TestBroker::start().await.expect("test broker");
        let kafka = broker.kafka.clone();
        let pool = database.pool.clone();

        let client = ingest::domain::clients::create_client(
            &pool,
            &hasher(),
            "test-client",
            ingest::domain::clients::Scope::ALL,
        )
        .await
        .expect("API client");
        let mut config = ingest::IngestConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            kafka.clone(),
            SecretString::from(JWT_SECRET.to_owned()),
        );
        config.provider_callback = Some(ingest::config::ProviderCallback {
            name: "fake".into(),
            secret: SecretString::from(PROVIDER_CALLBACK_SECRET.to_owned()),
            tolerance_s: 300,
        });
        // The tests' webhook receivers listen on 127.0.0.1.
        config.webhook_private_networks_allowed = true;
        config.webhook_secret_keys = Some(webhook_secret_keys());
        configure(&mut config);
        let application = ingest::Application::build(&config, pool.clone()).await.expect("ingest");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let address = format!("{scheme}://{}", application.local_addr().expect("address"));
        let redirect_address = application.redirect_addr().expect("address").map(|address| format!("http://{address}"));
        let metrics_address =
            application.metrics_addr().expect("address").map(|address| format!("http://{address}/metrics"));
        let shutdown = CancellationToken::new();
        tokio::spawn(application.run_until(shutdown.clone()));
        let relay_metrics = std::sync::Arc::new(outbox_relay::RelayMetrics::default());
        if relay {
            tokio::spawn(outbox_relay::run_with_metrics(
                {
                    let mut relay = outbox_relay::RelayConfig::new(kafka.clone());
                    // The tests' webhook receivers listen on 127.0.0.1.
                    relay.webhooks.private_networks_allowed = true;
                    relay.webhooks.secret_keys = Some(webhook_secret_keys());
                    relay
                },
                pool.clone(),
                shutdown.clone(),
                std::sync::Arc::clone(&relay_metrics),
            ));
        }

        let consumer_group = format!("{}-processor", kafka.topics.commands);
        let mut app = Self {
            address,
            redirect_address,
            relay_metrics,
            metrics_address,
            pool,
            producer: kafka.producer().create().expect("test producer"),
            kafka,
            client_id: client.id,
            client_secret: client.secret,
            consumer_group,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client"),
            token: tokio::sync::OnceCell::new(),
            processor: None,
            shutdown,
            _broker: broker,
            _database: database,
        };
        app.start_processor();
        app
    }

    /// Starts a processor in the test's consumer group.
    ///
    /// # Panics
    /// When the Kafka clients cannot be created.
    pub fn start_processor(&mut self) {
        self.start_processor_configured(|_| {});
    }

    /// Starts a processor in the test's consumer group, its settings
    /// changed by `configure`.
    ///
    /// # Panics
    /// When the Kafka clients cannot be created.
    pub fn start_processor_configured(&mut self, configure: impl FnOnce(&mut processor::ProcessorConfig)) {
        assert!(self.processor.is_none(), "a processor is already running");
        let mut config = processor::ProcessorConfig::new(self.kafka.clone());
        config.consumer_group.clone_from(&self.consumer_group);
        configure(&mut config);
        self.processor = Some(processor::Processor::start(config, self.pool.clone()).expect("processor"));
    }

    /// The running processor's counters.
    ///
    /// # Panics
    /// When no processor runs.
    #[must_use]
    pub fn processor_metrics(&self) -> std::sync::Arc<processor::metrics::ProcessorMetrics> {
        self.processor.as_ref().expect("a processor runs").metrics()
    }

    /// Another processor in the test's consumer group, owned by the caller.
    ///
    /// # Panics
    /// When the Kafka clients cannot be created.
    #[must_use]
    pub fn spawn_processor(&self) -> processor::Processor {
        let mut config = processor::ProcessorConfig::new(self.kafka.clone());
        config.consumer_group.clone_from(&self.consumer_group);
        processor::Processor::start(config, self.pool.clone()).expect("processor")
    }

    /// Stops the processor and waits until it has left the group.
    ///
    /// # Panics
    /// When none runs or it ended on an error.
    pub async fn stop_processor(&mut self) {
        let processor = self.processor.take().expect("a processor is running");
        processor.stop().await.expect("the processor stops cleanly");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Requests a token with the client-credentials grant.
    pub async fn request_token(&self, client_id: &str, secret: &str, scope: Option<&str>) -> reqwest::Response {
        let mut form = vec![("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret)];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.http.post(self.url("/v1/oauth/token")).form(&form).send().await.expect("token request")
    }

    /// A token with `scope` (space-separated) or every scope of the client.
    ///
    /// # Panics
    /// When the token endpoint refuses.
    pub async fn token_with(&self, scope: Option<&str>) -> String {
        use secrecy::ExposeSecret as _;
        let response = self.request_token(&self.client_id.to_string(), self.client_secret.expose_secret(), scope).await;
        assert_eq!(response.status(), 200, "token request refused");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    /// A cached token with every scope.
    pub async fn token(&self) -> String {
        self.token.get_or_init(|| self.token_with(None)).await.clone()
    }

    /// Opens an account in `currency` and returns its id.
    ///
    /// # Panics
    /// When the request fails.
    pub async fn open_account(&self, currency: &str) -> Uuid {
        let response = self
            .http
            .post(self.url("/v1/accounts"))
            .bearer_auth(self.token().await)
            .json(&json!({ "currency": currency }))
            .send()
            .await
            .expect("open account");
        assert_eq!(response.status(), 201, "open account");
        let body: Value = response.json().await.expect("account JSON");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    pub async fn deposit(&self, account_id: Uuid, amount: &str, currency: &str, key: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/accounts/{account_id}/deposits")))
            .bearer_auth(self.token().await)
            .header("Idempotency-Key", key)
            .json(&json!({ "amount": amount, "currency": currency }))
            .send()
            .await
            .expect("deposit request")
    }

    /// Deposits and waits until the deposit is applied.
    ///
    /// # Panics
    /// When it is not accepted or not completed.
    pub async fn fund(&self, account_id: Uuid, amount: &str, currency: &str) {
        let response = self.deposit(account_id, amount, currency, &format!("fund-{}", Uuid::new_v4())).await;
        assert_eq!(response.status(), 202, "deposit accepted");
        let body: Value = response.json().await.expect("JSON");
        let decided = self.wait_for_decision(body["transfer_id"].as_str().expect("transfer_id")).await;
        assert_eq!(decided["status"], "completed", "deposit applied: {decided}");
    }

    pub async fn transfer(
        &self,
        source: Uuid,
        destination: Uuid,
        amount: &str,
        currency: &str,
        key: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/v1/transfers"))
            .bearer_auth(self.token().await)
            .header("Idempotency-Key", key)
            .json(&json!({
                "source_account_id": source,
                "destination_account_id": destination,
                "amount": amount,
                "currency": currency,
            }))
            .send()
            .await
            .expect("transfer request")
    }

    pub async fn get_transfer(&self, transfer_id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/transfers/{transfer_id}")))
            .bearer_auth(self.token().await)
            .send()
            .await
            .expect("transfer status request")
    }

    /// Polls the transfer until it is no longer `accepted`.
    ///
    /// # Panics
    /// When it is not decided within [`WAIT_MAX`].
    pub async fn wait_for_decision(&self, transfer_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let response = self.get_transfer(transfer_id).await;
            assert_eq!(response.status(), 200, "transfer {transfer_id} is known");
            let body: Value = response.json().await.expect("JSON");
            if body["status"] != "accepted" {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "transfer {transfer_id} not decided in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The account as the API shows it.
    ///
    /// # Panics
    /// When the request fails.
    pub async fn account(&self, account_id: Uuid) -> Value {
        let response = self
            .http
            .get(self.url(&format!("/v1/accounts/{account_id}")))
            .bearer_auth(self.token().await)
            .send()
            .await
            .expect("account request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON")
    }

    /// The account's balance, from the API.
    pub async fn balance(&self, account_id: Uuid) -> Decimal {
        let account = self.account(account_id).await;
        account["balance"].as_str().expect("balance").parse().expect("decimal")
    }

    /// The account's entries, newest first, from the API.
    pub async fn entries(&self, account_id: Uuid) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(&format!("/v1/accounts/{account_id}/entries?limit=200")))
            .bearer_auth(self.token().await)
            .send()
            .await
            .expect("entries request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("JSON");
        body["entries"].as_array().expect("entries").clone()
    }

    /// Publishes raw bytes to the command topic, as an upstream app might.
    ///
    /// # Panics
    /// When the broker refuses.
    pub async fn publish_raw(&self, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(&self.kafka.topics.commands).key(key).payload(payload);
        self.producer.send(record, Duration::from_secs(10)).await.expect("publish");
    }

    /// Sends a request with an optional bearer token and JSON body, and a
    /// fresh `Idempotency-Key` (routes that do not take one ignore it): the
    /// status and the JSON answer (`Null` when there is none).
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).header("Idempotency-Key", unique_key("call"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Publishes raw bytes with headers to any topic.
    ///
    /// # Panics
    /// When the broker refuses.
    pub async fn publish_raw_to(&self, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header { key: name, value: Some(*value) });
        }
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(owned);
        self.producer.send(record, Duration::from_secs(10)).await.expect("publish");
    }

    /// Registers `email` with [`USER_PASSWORD`], gives it `role` in the
    /// database (as a bootstrap would) and logs in: an access token.
    ///
    /// # Panics
    /// When a step fails.
    pub async fn user_token(&self, email: &str, role: &str) -> String {
        let credentials = serde_json::json!({ "email": email, "password": USER_PASSWORD });
        let response = self.http.post(self.url("/v1/auth/register")).json(&credentials).send().await.expect("register");
        assert_eq!(response.status(), 201, "registering {email}");
        sqlx::query("update users set role = $2 where email = $1")
            .bind(email)
            .bind(role)
            .execute(&self.pool)
            .await
            .expect("role");
        self.login(email, USER_PASSWORD).await.expect("login")
    }

    /// Logs in; the access token, or the status when refused.
    ///
    /// # Errors
    /// The status of a refused login.
    pub async fn login(&self, email: &str, password: &str) -> Result<String, u16> {
        let credentials = serde_json::json!({ "email": email, "password": password });
        let response = self.http.post(self.url("/v1/auth/login")).json(&credentials).send().await.expect("login");
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        let session: Value = response.json().await.expect("session");
        Ok(session["access_token"].as_str().expect("access token").to_owned())
    }

    /// Publishes many commands at once (in flight together), keyed as ingest would.
    ///
    /// # Panics
    /// When the broker refuses one.
    pub async fn publish_commands(&self, commands: &[schemas::Command]) {
        let payloads: Vec<(String, Vec<u8>)> = commands
            .iter()
            .map(|command| (command.partition_key(), serde_json::to_vec(command).expect("serializes")))
            .collect();
        for chunk in payloads.chunks(1_000) {
            let sends = chunk.iter().map(|(key, payload)| {
                let record =
                    FutureRecord::to(&self.kafka.topics.commands).key(key.as_str()).payload(payload.as_slice());
                self.producer.send(record, Duration::from_secs(30))
            });
            for result in futures::future::join_all(sends).await {
                result.expect("publish");
            }
        }
    }

    /// Publishes a command to the command topic, keyed as ingest would.
    pub async fn publish_command(&self, command: &schemas::Command) {
        let payload = serde_json::to_vec(command).expect("serializes");
        self.publish_raw(&command.partition_key().to_string(), &payload).await;
    }

    /// Reads `count` messages of a topic (all partitions) from the
    /// beginning, without joining a group.
    ///
    /// # Panics
    /// When fewer arrive within [`WAIT_MAX`].
    pub async fn read_topic(&self, topic: &str, count: usize) -> Vec<ReadMessage> {
        let consumer: StreamConsumer =
            self.kafka.consumer(&format!("reader-{}", Uuid::new_v4())).create().expect("reader");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while messages.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} messages on {topic}", messages.len()))
                .expect("message");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| {
                            (
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            messages.push(ReadMessage {
                key: message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            });
        }
        messages
    }

    /// Counts rows of a query returning one bigint.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("count query")
    }

    /// The ledger's invariants, as `ledgerctl verify` checks them; empty
    /// when all hold.
    pub async fn ledger_problems(&self) -> Vec<String> {
        processor::verify::problems(&self.pool).await.expect("verify queries")
    }
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TestApp")
            .field("address", &self.address)
            .field("kafka", &self.kafka)
            .finish_non_exhaustive()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // The processor must leave the group while the broker still exists:
        // a consumer closing against a vanished broker polls forever in
        // rdkafka's `BaseConsumer::drop` (fede1024/rust-rdkafka#509), and the
        // test runtime waits for that blocking thread. So wait for it here,
        // before `_broker` is dropped, bounded so a stuck close fails loudly.
        if let Some(processor) = self.processor.take() {
            tokio::task::block_in_place(|| {
                let stopped = tokio::runtime::Handle::current()
                    .block_on(tokio::time::timeout(Duration::from_secs(60), processor.stop()));
                if stopped.is_err() {
                    tracing::error!("the processor did not stop within 60 s of the test's end");
                }
            });
        }
    }
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl ReadMessage {
    #[must_use]
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }

    /// # Panics
    /// When the payload is not JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
}

/// The key ring the tests' ingest and relays derive webhook secrets with:
/// `k2` current, `k1` an older one still honoured.
///
/// # Panics
/// Never: the text is well-formed.
#[must_use]
pub fn webhook_secret_keys() -> platform::signature::WebhookSecretKeys {
    platform::signature::WebhookSecretKeys::parse(
        "k2:a2V5LXR3by1rZXktdHdvLWtleS10d28ta2V5LXR3by0=,k1:a2V5LW9uZS1rZXktb25lLWtleS1vbmUta2V5LW9uZS0=",
    )
    .expect("test keys")
}

/// The password [`TestApp::user_token`] registers users with.
pub const USER_PASSWORD: &str = "correct horse battery";

/// A hasher with the production default cost, for tests that store secrets.
#[must_use]
pub fn hasher() -> ingest::support::passwords::SecretHasher {
    ingest::support::passwords::SecretHasher::new(ingest::support::passwords::Argon2Cost::default())
        .expect("argon2 parameters")
}

/// A fresh idempotency key.
#[must_use]
pub fn unique_key(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4())
}

/// Parses a decimal literal in tests.
///
/// # Panics
/// On a malformed literal.
#[must_use]
pub fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}
