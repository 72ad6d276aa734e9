//! The outbox relay: delivers rows of the transactional outbox to Kafka
//! (`ledger.events`), at least once, through an idempotent producer, keyed
//! by account, with the event's id in a header (`ledgerline-event-id`) so
//! consumers can drop duplicates. A processor batch's events come as one
//! row ([`admin::EVENT_BATCH_TYPE`]) that the relay publishes event by
//! event.
//!
//! Several relays can run side by side. Each destination (Kafka events,
//! payments, notifications, webhooks) is worked by a loop of its own, so a
//! slow webhook endpoint never holds back payouts or password-reset mail.
//! A round leases rows in a short transaction, delivers them with no
//! transaction open, and records the outcomes in another short one (see
//! [`outbox`]): rows of one key stay in order, a failing row backs off with
//! jitter and holds back the later rows of its key, and after
//! `attempts_max` failures it is dead and visible to operators ([`admin`]).
//! Relays wake on Postgres `NOTIFY` when rows are written, and poll as a
//! fallback.
//!
//! Rows of the `payments` destination are payment orders (a
//! `transfer.external` whose funds the processor holds). The relay orders
//! each from the payment provider ([`provider`]) with the payout's id as
//! the idempotency key, looks up first a payment an earlier attempt may
//! have sent, and turns the answer into a `payout.outcome` command of the
//! hold ([`payments`]), with ids derived from the payout, so a repeated
//! answer is applied once. A circuit breaker stops calling a provider that
//! keeps failing; one payment's refusal is that payment's outcome.
//!
//! Publishing an event also fans it out into `webhooks` rows, one per
//! endpoint that subscribed to it, delivered signed ([`webhooks`]).

pub use platform::outbox as admin;
pub mod fake_provider;
pub mod outbox;
pub mod payments;
pub mod provider;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use platform::CancellationToken;
use platform::config::{self, ConfigError};
use platform::kafka::KafkaConfig;
use platform::metrics::IntCounter;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::outbox::{Attempt, Counts, RetryPolicy, Row};

/// The channel the outbox trigger notifies on insert.
pub use platform::outbox::NOTIFY_CHANNEL;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub kafka: KafkaConfig,
    /// `LEDGERLINE_RELAY_BATCH_SIZE_MAX`: rows claimed per transaction.
    pub batch_size_max: i64,
    /// `LEDGERLINE_RELAY_LANES_PER_CLAIM_MAX`: lanes one claim takes, out of
    /// 128; fewer leave lanes for other relays.
    pub lanes_per_claim_max: usize,
    /// `LEDGERLINE_RELAY_POLL_INTERVAL_MS`: the longest pause between rounds
    /// when no notification arrives (a fallback, and the clock for retries).
    pub poll_interval_ms: u64,
    /// `LEDGERLINE_RELAY_ATTEMPTS_MAX`: failed attempts before a row is dead.
    pub attempts_max: i32,
    /// `LEDGERLINE_RELAY_BACKOFF_BASE_MS`: the pause after a first failure,
    /// doubled at each further one.
    pub backoff_base_ms: u64,
    /// `LEDGERLINE_RELAY_BACKOFF_MAX_MS`: the longest pause between attempts.
    pub backoff_max_ms: u64,
    /// The payment provider, when `LEDGERLINE_PROVIDER_BASE_URL` is set;
    /// without one, payment rows fail until dead.
    pub provider: Option<provider::ProviderConfig>,
    /// Breaker and concurrency of provider calls.
    pub payments: payments::PaymentsConfig,
    /// Timeouts and concurrency of webhook deliveries.
    pub webhooks: webhooks::WebhooksConfig,
    /// Where notifications to people go (the reset link), if anywhere.
    pub notifier: Option<webhooks::Notifier>,
    /// `LEDGERLINE_RELAY_REPORT_INTERVAL_MS`: how often the relay logs its
    /// rates and the outbox's backlog (`outbox relay report`).
    pub report_interval_ms: u64,
    /// `LEDGERLINE_OUTBOX_RETENTION_S`: delivered rows older than this are
    /// deleted (dead and pending rows never are); Kafka and the ledger keep
    /// what was said.
    pub retention_s: u64,
    /// `LEDGERLINE_OUTBOX_PRUNE_INTERVAL_MS` and `_PRUNE_BATCH_MAX`: how often
    /// a relay prunes, and how many rows one statement deletes at most.
    pub prune_interval_ms: u64,
    pub prune_batch_max: i64,
}

impl RelayConfig {
    #[must_use]
    pub fn new(kafka: KafkaConfig) -> Self {
        Self {
            kafka,
            batch_size_max: 500,
            lanes_per_claim_max: 64,
            poll_interval_ms: 1_000,
            attempts_max: 12,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            provider: None,
            payments: payments::PaymentsConfig::default(),
            webhooks: webhooks::WebhooksConfig::default(),
            report_interval_ms: 60_000,
            notifier: None,
            retention_s: 7 * 24 * 3600,
            prune_interval_ms: 60_000,
            prune_batch_max: 10_000,
        }
    }

    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env(kafka: KafkaConfig) -> Result<Self, ConfigError> {
        let defaults = Self::new(kafka);
        Ok(Self {
            batch_size_max: config::limit("LEDGERLINE_RELAY_BATCH_SIZE_MAX", defaults.batch_size_max, 1..=10_000)?,
            lanes_per_claim_max: config::limit(
                "LEDGERLINE_RELAY_LANES_PER_CLAIM_MAX",
                defaults.lanes_per_claim_max,
                1..=128,
            )?,
            poll_interval_ms: config::limit(
                "LEDGERLINE_RELAY_POLL_INTERVAL_MS",
                defaults.poll_interval_ms,
                10..=60_000,
            )?,
            attempts_max: config::limit("LEDGERLINE_RELAY_ATTEMPTS_MAX", defaults.attempts_max, 1..=1_000)?,
            backoff_base_ms: config::limit("LEDGERLINE_RELAY_BACKOFF_BASE_MS", defaults.backoff_base_ms, 1..=60_000)?,
            backoff_max_ms: config::limit("LEDGERLINE_RELAY_BACKOFF_MAX_MS", defaults.backoff_max_ms, 1..=86_400_000)?,
            provider: provider::ProviderConfig::from_env()?,
            payments: payments::PaymentsConfig::from_env()?,
            webhooks: webhooks::WebhooksConfig::from_env()?,
            notifier: webhooks::Notifier::from_env()?,
            report_interval_ms: config::limit(
                "LEDGERLINE_RELAY_REPORT_INTERVAL_MS",
                defaults.report_interval_ms,
                1_000..=3_600_000,
            )?,
            retention_s: config::limit("LEDGERLINE_OUTBOX_RETENTION_S", defaults.retention_s, 3_600..=366 * 24 * 3600)?,
            prune_interval_ms: config::limit(
                "LEDGERLINE_OUTBOX_PRUNE_INTERVAL_MS",
                defaults.prune_interval_ms,
                1_000..=3_600_000,
            )?,
            prune_batch_max: config::limit("LEDGERLINE_OUTBOX_PRUNE_BATCH_MAX", defaults.prune_batch_max, 1..=100_000)?,
            kafka: defaults.kafka,
        })
    }

    /// How long a claim leases the rows of `lanes`: twice the longest one
    /// delivery there may take, plus [`LEASE_MARGIN_MS`]. A round starts no
    /// delivery after the first half of the lease, so every delivery it
    /// starts ends while the lease holds; a relay that dies leaves its rows
    /// to the others after that long.
    #[must_use]
    pub fn lease_ms(&self, lanes: &std::ops::Range<i32>) -> u64 {
        // A send waits for room in the producer's queue, then for the ack.
        let kafka_ms = self.kafka.produce_timeout_ms.saturating_mul(2);
        let longest_ms = if *lanes == outbox::PAYMENT_LANES {
            // A lookup and an order, each with a token fetch and one retry
            // on a 401; then the outcome's command.
            let call_ms = self.provider.as_ref().map_or(0, |provider| provider.timeout_ms);
            call_ms.saturating_mul(6).saturating_add(kafka_ms)
        } else if *lanes == outbox::EVENT_LANES {
            kafka_ms
        } else {
            self.webhooks.timeout_ms
        };
        longest_ms.saturating_mul(2).saturating_add(LEASE_MARGIN_MS)
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: self.attempts_max,
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms.max(self.backoff_base_ms),
            webhook_disable_after_s: self.webhooks.disable_after_s,
        }
    }
}

/// Added to a lease beyond twice the longest delivery: room for the
/// recording transaction and a busy machine.
pub const LEASE_MARGIN_MS: u64 = 10_000;

/// One relay's counters since it started, in its own registry.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: platform::metrics::Registry,
    pub delivered_total: IntCounter,
    pub failed_total: IntCounter,
    pub dead_total: IntCounter,
    pub rounds_total: IntCounter,
    pub notifications_total: IntCounter,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        use platform::metrics::counter;
        let registry = platform::metrics::Registry::new();
        Self {
            delivered_total: counter(
                &registry,
                "ledgerline_relay_delivered_total",
                "Outbox rows delivered by this relay",
            ),
            failed_total: counter(
                &registry,
                "ledgerline_relay_failed_total",
                "Failed delivery attempts (the row is retried later)",
            ),
            dead_total: counter(
                &registry,
                "ledgerline_relay_dead_total",
                "Rows this relay declared dead after their last attempt",
            ),
            rounds_total: counter(&registry, "ledgerline_relay_rounds_total", "Claim rounds"),
            notifications_total: counter(
                &registry,
                "ledgerline_relay_notifications_total",
                "Outbox notifications that woke this relay before its poll interval",
            ),
            registry,
        }
    }
}

impl RelayMetrics {
    fn add(&self, counts: Counts) {
        let add = |counter: &IntCounter, value: usize| counter.inc_by(u64::try_from(value).unwrap_or(u64::MAX));
        add(&self.delivered_total, counts.delivered);
        add(&self.failed_total, counts.failed);
        add(&self.dead_total, counts.dead);
        self.rounds_total.inc();
    }
}

/// The Prometheus page of one relay: its deliveries, failures, dead rows and
/// rounds, and the outbox's backlog as the database has it (the same for
/// every relay; `ledgerline_outbox_status_up` is 0 when it could not be read).
///
/// The backlog is read at scrape time into a registry of its own for this
/// page, so a failed read shows no value left over from an earlier one.
pub async fn render_metrics(metrics: &RelayMetrics, pool: &PgPool) -> String {
    use platform::metrics::{gauge, gauge_vec, measure};
    let backlog = platform::metrics::Registry::new();
    let up = gauge(&backlog, "ledgerline_outbox_status_up", "Whether the backlog below could be read");
    match admin::status(pool).await {
        Ok(status) => {
            up.set(1);
            gauge(&backlog, "ledgerline_outbox_pending", "Rows not yet delivered and not dead").set(status.pending);
            gauge(&backlog, "ledgerline_outbox_retrying", "Pending rows backing off after a failure")
                .set(status.retrying);
            gauge(&backlog, "ledgerline_outbox_dead", "Rows waiting for an operator").set(status.dead);
            measure(&backlog, "ledgerline_outbox_oldest_pending_age_seconds", "Age of the oldest pending row")
                .set(status.oldest_pending_age_s);
            let failing = gauge_vec(
                &backlog,
                "ledgerline_outbox_failing_rows",
                "Undelivered rows whose last attempt failed, by destination and reason",
                &["destination", "code"],
            );
            for row in &status.failing {
                failing.with_label_values(&[row.destination.as_str(), row.code.as_str()]).set(row.rows);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "reading the outbox status for /metrics failed");
            up.set(0);
        }
    }
    platform::metrics::encode(&metrics.registry) + &platform::metrics::encode(&backlog)
}

/// How long the readiness probe waits for the broker's metadata.
const BROKER_PROBE_TIMEOUT_MS: u64 = 2_000;

/// What the relay's `/health/ready` looks at: Postgres (the outbox) and the
/// broker (where events go). One Kafka client for every probe.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    client: Arc<rdkafka::consumer::BaseConsumer>,
    topic: String,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Readiness").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Readiness {
    /// # Errors
    /// When the Kafka client cannot be created.
    pub fn new(pool: PgPool, kafka: &KafkaConfig) -> anyhow::Result<Self> {
        // A plain client for metadata: it never subscribes or joins a group.
        let client =
            kafka.consumer("ledgerline-relay-readiness").create().context("creating the probe's Kafka client")?;
        Ok(Self { pool, client: Arc::new(client), topic: kafka.topics.events.clone() })
    }

    /// Why the relay is not ready; nothing when it is: Postgres must answer,
    /// and the broker must know the events topic.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = platform::postgres::probe(&self.pool).await.into_iter().collect();
        let (client, topic) = (Arc::clone(&self.client), self.topic.clone());
        let broker = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer as _;
            client.fetch_metadata(Some(&topic), Duration::from_millis(BROKER_PROBE_TIMEOUT_MS)).map(|_| ())
        })
        .await;
        match broker {
            Ok(Ok(())) => {}
            Ok(Err(error)) => problems.push(format!("the broker does not answer: {error}")),
            Err(error) => problems.push(format!("the broker probe failed: {error}")),
        }
        problems
    }
}

/// The pause between two full pruning batches.
const PRUNE_PAUSE_MS: u64 = 200;

/// Relays until `shutdown` is cancelled.
///
/// # Errors
/// When the producer cannot be created.
pub async fn run(config: RelayConfig, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(config, pool, shutdown, Arc::new(RelayMetrics::default())).await
}

/// [`run`], counting into `metrics`. A failed round is logged and retried
/// after the poll interval; nothing is lost, since undelivered rows stay
/// pending.
///
/// # Errors
/// When the producer cannot be created.
pub async fn run_with_metrics(
    config: RelayConfig,
    pool: PgPool,
    shutdown: CancellationToken,
    metrics: Arc<RelayMetrics>,
) -> anyhow::Result<()> {
    let producer: FutureProducer = config.kafka.producer().create().context("creating the relay producer")?;
    let payments = payments::Payments::new(&config, producer.clone(), pool.clone())?;
    let webhooks = webhooks::Webhooks::new(config.webhooks.clone())?;
    webhooks::check_secret_keys(&pool, config.webhooks.secret_keys.as_ref()).await;
    tracing::info!(topic = %config.kafka.topics.events, provider = ?config.provider.as_ref().map(|provider| &provider.name), "outbox relay started");
    let destinations = Destinations { config: &config, producer: &producer, payments: &payments, webhooks: &webhooks };
    // One loop of rounds per destination, side by side: a slow or failing
    // destination never holds back another's rows.
    let relay_lanes = |lanes: std::ops::Range<i32>, mut report: Option<Report>| {
        let (config, pool, shutdown, metrics, destinations) = (&config, &pool, &shutdown, &metrics, &destinations);
        async move {
            let mut wake = Wake::new(pool.clone(), Duration::from_millis(config.poll_interval_ms));
            while !shutdown.is_cancelled() {
                if let Some(report) = report.as_mut() {
                    report.maybe_log(pool, metrics).await;
                }
                let busy = match relay_round(config, pool, lanes.clone(), destinations).await {
                    Ok(round) => {
                        metrics.add(round.counts);
                        round.busy
                    }
                    Err(error) => {
                        tracing::warn!(error = ?error, ?lanes, "relaying the outbox failed; retrying");
                        false
                    }
                };
                if !busy && wake.wait(shutdown).await {
                    metrics.notifications_total.inc();
                }
            }
        }
    };
    let report = Report::new(Duration::from_millis(config.report_interval_ms));
    let prune = async {
        let interval = Duration::from_millis(config.prune_interval_ms);
        while !shutdown.is_cancelled() {
            match outbox::prune(&pool, config.retention_s, config.prune_batch_max).await {
                // A full batch: more may be due; go on after a breath, so a
                // first run over months of rows does not flood the WAL.
                Ok(deleted) if deleted >= u64::try_from(config.prune_batch_max).unwrap_or(u64::MAX) => {
                    tokio::time::sleep(Duration::from_millis(PRUNE_PAUSE_MS)).await;
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pruning the outbox failed; trying again later"),
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    };
    futures::future::join5(
        relay_lanes(outbox::EVENT_LANES, Some(report)),
        relay_lanes(outbox::PAYMENT_LANES, None),
        relay_lanes(outbox::NOTIFICATION_LANES, None),
        relay_lanes(outbox::WEBHOOK_LANES, None),
        prune,
    )
    .await;
    tracing::info!("outbox relay stopped");
    Ok(())
}

/// The periodic report: this relay's deliveries and failures per minute
/// since the last one, and the outbox's backlog, its age, and failures by
/// destination and reason (see [`admin::status`]).
struct Report {
    interval: Duration,
    last: std::time::Instant,
    delivered: u64,
    failed: u64,
}

impl Report {
    fn new(interval: Duration) -> Self {
        Self { interval, last: std::time::Instant::now(), delivered: 0, failed: 0 }
    }

    async fn maybe_log(&mut self, pool: &PgPool, metrics: &RelayMetrics) {
        let elapsed = self.last.elapsed();
        if elapsed < self.interval {
            return;
        }
        let (delivered, failed) = (metrics.delivered_total.get(), metrics.failed_total.get());
        // Per minute, in integers: the workspace keeps floats out of the code.
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX).max(1);
        let per_minute = |count: u64| count.saturating_mul(60_000) / elapsed_ms;
        let (delivered_per_min, failed_per_min) =
            (per_minute(delivered - self.delivered), per_minute(failed - self.failed));
        (self.last, self.delivered, self.failed) = (std::time::Instant::now(), delivered, failed);
        match admin::status(pool).await {
            Ok(status) => tracing::info!(
                delivered_per_min,
                failed_per_min,
                pending = status.pending,
                retrying = status.retrying,
                dead = status.dead,
                oldest_pending_age_s = status.oldest_pending_age_s,
                failing = ?status.failing.iter().map(|f| format!("{}/{}={}", f.destination, f.code, f.rows)).collect::<Vec<_>>(),
                "outbox relay report"
            ),
            Err(error) => {
                tracing::warn!(%error, delivered_per_min, failed_per_min, "outbox relay report without the backlog")
            }
        }
    }
}

/// Waits for the next round: a notification, the poll interval, or the stop.
struct Wake {
    pool: PgPool,
    listener: Option<PgListener>,
    poll: Duration,
}

impl Wake {
    fn new(pool: PgPool, poll: Duration) -> Self {
        Self { pool, listener: None, poll }
    }

    /// Returns whether a notification woke it. Right after (re)connecting
    /// the listener it returns at once: rows written before `LISTEN` took
    /// effect sent no notification this relay heard, so a round must look.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        if self.listener.is_none() {
            match listen(&self.pool).await {
                Ok(listener) => {
                    self.listener = Some(listener);
                    return false;
                }
                Err(error) => tracing::warn!(%error, "LISTEN failed; polling until it works"),
            }
        }
        let Some(listener) = self.listener.as_mut() else {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
            return false;
        };
        let notified = tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.poll) => false,
            received = listener.recv() => match received {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(%error, "the LISTEN connection failed; reconnecting");
                    self.listener = None;
                    false
                }
            },
        };
        // One round serves every notification that arrived meanwhile.
        if let Some(listener) = self.listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
        notified
    }
}

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    pub counts: Counts,
    /// The claim was full: go again without waiting.
    pub busy: bool,
}

/// Claims, delivers and records one round of one destination's lanes. No
/// transaction is open while rows are delivered: the claim leases them in
/// one short transaction, the outcomes are recorded in another.
///
/// # Errors
/// Database failures (delivery failures are recorded on the rows instead).
async fn relay_round(
    config: &RelayConfig,
    pool: &PgPool,
    lanes: std::ops::Range<i32>,
    destinations: &Destinations<'_>,
) -> anyhow::Result<Round> {
    let lease_ms = config.lease_ms(&lanes);
    let claimed_at = std::time::Instant::now();
    let claim = outbox::claim(pool, lanes, config.lanes_per_claim_max, config.batch_size_max, lease_ms)
        .await
        .context("claiming outbox rows")?;
    if claim.rows.is_empty() {
        return Ok(Round::default());
    }
    let endpoints = {
        let mut connection = pool.acquire().await.context("reading webhook endpoints")?;
        webhooks::endpoints_of(&mut connection, &claim.rows).await.context("reading webhook endpoints")?
    };
    let start_deadline = claimed_at + Duration::from_millis(lease_ms / 2);
    let attempts = outbox::deliver_in_order(&claim.rows, start_deadline, |row| {
        destinations.deliver(row, &endpoints, start_deadline)
    })
    .await;
    let mut transaction = pool.begin().await.context("starting the recording transaction")?;
    let recorded = outbox::record(&mut transaction, &claim, &attempts, &config.retry_policy())
        .await
        .context("recording deliveries")?;
    webhooks::fan_out(&mut transaction, &recorded.published).await.context("fanning events out to webhooks")?;
    transaction.commit().await.context("committing the recorded deliveries")?;
    let busy = i64::try_from(claim.rows.len()).unwrap_or(i64::MAX) >= config.batch_size_max
        || claim.lanes_locked >= config.lanes_per_claim_max;
    Ok(Round { counts: recorded.counts, busy })
}

/// Where rows go.
struct Destinations<'a> {
    config: &'a RelayConfig,
    producer: &'a FutureProducer,
    payments: &'a payments::Payments,
    webhooks: &'a webhooks::Webhooks,
}

impl Destinations<'_> {
    async fn deliver(
        &self,
        row: &Row,
        endpoints: &std::collections::HashMap<uuid::Uuid, webhooks::Endpoint>,
        start_deadline: std::time::Instant,
    ) -> Attempt {
        match row.destination.as_str() {
            "events" => publish(self.config, self.producer, row).await,
            "payments" => self.payments.deliver(row, start_deadline).await,
            "webhooks" => self.webhooks.deliver(row, endpoints).await,
            "notifications" => self.webhooks.deliver_notification(row, self.config.notifier.as_ref()).await,
            other => Attempt::failed("unknown_destination", &format!("no delivery for destination {other:?}"), None),
        }
    }
}

/// Sends one row (an event, or a batch of them) and waits for the broker's
/// acknowledgement (the next row of its key goes only then, see
/// [`outbox::deliver_in_order`]).
async fn publish(config: &RelayConfig, producer: &FutureProducer, row: &Row) -> Attempt {
    if row.event_type == admin::EVENT_BATCH_TYPE {
        return publish_batch(config, producer, row).await;
    }
    let outbox_id = row.id.to_string();
    let record = FutureRecord::to(&config.kafka.topics.events)
        .key(row.message_key.as_str())
        .payload(row.payload.as_str())
        .headers(event_headers(&outbox_id, &outbox_id, &row.event_type));
    match producer.send(record, Duration::from_millis(config.kafka.produce_timeout_ms)).await {
        Ok(_) => Attempt::Delivered,
        Err((error, _)) => kafka_failed(&error),
    }
}

/// Publishes every event of a batch row, each under its own key, and
/// waits for all the acknowledgements. They are queued in the batch's
/// order, and the idempotent producer keeps that order within a partition,
/// so one account's events stay in order. If one fails the whole row is
/// tried again later: consumers drop what they had already by
/// `ledgerline-event-id`.
async fn publish_batch(config: &RelayConfig, producer: &FutureProducer, row: &Row) -> Attempt {
    let events: Vec<admin::BatchedEvent<'_>> = match serde_json::from_str(&row.payload) {
        Ok(events) => events,
        Err(error) => {
            return Attempt::failed(
                "malformed_event_batch",
                &format!("the batch row is not an array of events: {error}"),
                None,
            );
        }
    };
    let outbox_row = row.id.to_string();
    // The whole row within one produce timeout, as a row of one event: the
    // claim's lease is sized on it, and a row still being sent when its
    // lease ends would be claimed and sent by another relay at once.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.kafka.produce_timeout_ms);
    let mut acknowledgements = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let event_id = admin::batched_event_id(row.id, index);
        let mut record = FutureRecord::to(&config.kafka.topics.events)
            .key(event.key.as_ref())
            .payload(event.event.get())
            .headers(event_headers(&outbox_row, &event_id, &event.event_type));
        // Queued without waiting; a full queue (librdkafka's bound on what
        // waits for the broker) is waited out here, up to the deadline.
        loop {
            match producer.send_result(record) {
                Ok(acknowledgement) => break acknowledgements.push(acknowledgement),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return kafka_failed(&error),
            }
        }
    }
    let acknowledged = tokio::time::timeout_at(deadline, futures::future::join_all(acknowledgements)).await;
    let Ok(acknowledged) = acknowledged else {
        let error = format!(
            "not every one of the batch's {} events acknowledged within {} ms",
            events.len(),
            config.kafka.produce_timeout_ms
        );
        return Attempt::failed("kafka_timeout", &error, None);
    };
    for acknowledgement in acknowledged {
        match acknowledgement {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return kafka_failed(&error),
            Err(_canceled) => {
                return Attempt::failed(
                    "kafka_error",
                    "the producer dropped a message before it was acknowledged",
                    None,
                );
            }
        }
    }
    Attempt::Delivered
}

/// The headers of a published event: its own id, what consumers
/// deduplicate by, under both `ledgerline-event-id` and (the name
/// consumers were first told to deduplicate by, so that one written for
/// one event per row never drops a batch's later events as duplicates)
/// `ledgerline-outbox-id`; the outbox row it came from; its type.
fn event_headers(outbox_row: &str, event_id: &str, event_type: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header { key: "ledgerline-event-id", value: Some(event_id) })
        .insert(Header { key: "ledgerline-outbox-id", value: Some(event_id) })
        .insert(Header { key: "ledgerline-outbox-row", value: Some(outbox_row) })
        .insert(Header { key: "ledgerline-event-type", value: Some(event_type) })
}

fn kafka_failed(error: &KafkaError) -> Attempt {
    Attempt::failed(&kafka_error_code(error), &error.to_string(), None)
}

/// A stable reason for a Kafka failure: librdkafka's error code name.
pub(crate) fn kafka_error_code(error: &KafkaError) -> String {
    error.rdkafka_error_code().map_or_else(|| "kafka_error".to_owned(), |code| format!("kafka:{code:?}"))
}
