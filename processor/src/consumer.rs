//! The Kafka side of the processor: a consumer-group member on a thread of
//! its own.
//!
//! Why a thread of its own (from the blocking pool): librdkafka calls the rebalance callback from
//! inside `poll`, and on an assignment we must read the stored offsets from
//! Postgres before the first message is fetched. On a plain thread the
//! callback can block on that query (through the runtime handle) without
//! stalling an async executor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use platform::CancellationToken;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::runtime::Handle;

use crate::config::ProcessorConfig;
use crate::decode::{self, DeadLetterReason};
use crate::ledger::{self, Outcome, Position};
use crate::metrics::ProcessorMetrics;

/// A running processor. Stop it with [`Processor::stop`]; dropping it stops
/// it too, without waiting.
#[derive(Debug)]
pub struct Processor {
    stop: CancellationToken,
    assigned_partitions: tokio::sync::watch::Receiver<usize>,
    metrics: Arc<ProcessorMetrics>,
    worker: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Processor {
    /// Joins the consumer group and starts applying commands. Must be called
    /// from within a multi-threaded Tokio runtime, whose handle the consumer
    /// thread uses for its database work.
    ///
    /// # Errors
    /// When the Kafka clients cannot be created.
    pub fn start(config: ProcessorConfig, pool: PgPool) -> anyhow::Result<Self> {
        let runtime = Handle::current();
        let stop = CancellationToken::new();
        let producer: FutureProducer = config.kafka.producer().create().context("creating the dead-letter producer")?;
        let (assigned_sender, assigned_partitions) = tokio::sync::watch::channel(0);
        let context = OffsetsInPostgres {
            assigned_partitions: assigned_sender,
            runtime: runtime.clone(),
            pool: pool.clone(),
            consumer_group: config.consumer_group.clone(),
            cluster_id: Mutex::new(None),
            failure: Mutex::new(None),
        };
        let consumer: BaseConsumer<OffsetsInPostgres> = config
            .kafka
            .consumer(&config.consumer_group)
            .create_with_context(context)
            .context("creating the command consumer")?;
        let metrics = Arc::new(ProcessorMetrics::default());
        let worker = Worker {
            metrics: metrics.clone(),
            config,
            pool,
            runtime,
            producer,
            consumer: Arc::new(consumer),
            stop: stop.clone(),
        };
        // A blocking-pool thread: outside any async context, so the consumer
        // may block in `poll` and in its rebalance callback.
        let worker = tokio::task::spawn_blocking(move || worker.run());
        Ok(Self { stop, assigned_partitions, metrics, worker: Some(worker) })
    }

    /// Asks the loop to stop after the command in flight, and waits for it to
    /// leave the group.
    ///
    /// # Errors
    /// The error that ended the loop, if it ended on one.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the loop ends (after [`Processor::stop`], or on a fatal
    /// error). Cancel-safe: dropping the future and waiting again is fine.
    ///
    /// # Errors
    /// The error that ended the loop, or a panic of the consumer thread.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let Some(worker) = self.worker.as_mut() else { return Ok(()) };
        let result = worker.await;
        self.worker = None;
        result.context("the processor thread panicked")?
    }

    /// Waits until the group has given this processor at least one
    /// partition (the first join takes a few seconds), or `timeout` passes.
    /// Returns whether it has partitions.
    pub async fn wait_until_assigned(&self, timeout: Duration) -> bool {
        let mut assigned = self.assigned_partitions.clone();
        tokio::time::timeout(timeout, assigned.wait_for(|count| *count > 0)).await.is_ok_and(|result| result.is_ok())
    }

    /// The processor's counters and commit latencies.
    #[must_use]
    pub fn metrics(&self) -> Arc<ProcessorMetrics> {
        self.metrics.clone()
    }

    /// A token that stops the processor when cancelled.
    #[must_use]
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The consumer context that makes Postgres, not the broker, the source of
/// truth for where each partition resumes.
struct OffsetsInPostgres {
    runtime: Handle,
    pool: PgPool,
    consumer_group: String,
    cluster_id: Mutex<Option<String>>,
    /// An assignment that could not be honoured; the loop stops on it.
    failure: Mutex<Option<anyhow::Error>>,
    /// How many partitions this member holds, for readiness.
    assigned_partitions: tokio::sync::watch::Sender<usize>,
}

impl ClientContext for OffsetsInPostgres {}

impl OffsetsInPostgres {
    /// Sets each assigned partition's start to its stored offset, or to the
    /// beginning of the log when none is stored.
    fn position_assignment(&self, assignment: &mut TopicPartitionList) -> anyhow::Result<()> {
        let cluster_id = self
            .cluster_id
            .lock()
            .map_err(|_| anyhow::anyhow!("cluster id lock poisoned"))?
            .clone()
            .context("the cluster id is not known yet")?;
        let mut topics: Vec<String> = assignment.elements().iter().map(|element| element.topic().to_owned()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let stored = self
                .runtime
                .block_on(ledger::load_offsets(&self.pool, &cluster_id, &self.consumer_group, &topic))
                .context("loading stored offsets")?;
            if stored.is_empty() {
                let others = self
                    .runtime
                    .block_on(ledger::offsets_of_other_clusters(&self.pool, &cluster_id, &self.consumer_group, &topic))
                    .context("counting offsets of other clusters")?;
                if others > 0 {
                    tracing::warn!(
                        %topic, %cluster_id, partitions = others,
                        "offsets are stored for another Kafka cluster only: this cluster is new, so its partitions are read \
                         from the beginning. Commands already applied are recognised by transfer id and not applied twice."
                    );
                }
            }
            let partitions: Vec<i32> =
                assignment.elements_for_topic(&topic).iter().map(|element| element.partition()).collect();
            for partition in partitions {
                let offset = stored
                    .iter()
                    .find(|(stored_partition, _)| *stored_partition == partition)
                    .map_or(Offset::Beginning, |(_, next)| Offset::Offset(*next));
                tracing::info!(%topic, partition, ?offset, "assigned");
                assignment.set_partition_offset(&topic, partition, offset).context("positioning a partition")?;
            }
        }
        Ok(())
    }
}

impl ConsumerContext for OffsetsInPostgres {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(failure) = self.position_assignment(partitions) {
                    // Starting anywhere else could skip commands; better to stop loudly.
                    tracing::error!(error = ?failure, "cannot position the assigned partitions");
                    if let Ok(mut slot) = self.failure.lock() {
                        *slot = Some(failure);
                    }
                    let _ = consumer.unassign();
                    return;
                }
                match consumer.assign(partitions) {
                    Ok(()) => self.assigned_partitions.send_replace(partitions.count()),
                    Err(error) => {
                        tracing::error!(%error, "assign failed");
                        0
                    }
                };
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commands are applied one at a time on the polling thread, so
                // nothing is in flight here: the revoked partitions are clean.
                tracing::info!(partitions = partitions.count(), "revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassign failed");
                }
                self.assigned_partitions.send_replace(0);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

struct Worker {
    config: ProcessorConfig,
    metrics: Arc<ProcessorMetrics>,
    pool: PgPool,
    runtime: Handle,
    producer: FutureProducer,
    consumer: Arc<BaseConsumer<OffsetsInPostgres>>,
    stop: CancellationToken,
}

impl Worker {
    fn run(self) -> anyhow::Result<()> {
        let topic = self.config.kafka.topics.commands.clone();
        let cluster_id = self.fetch_cluster_id()?;
        *self.consumer.context().cluster_id.lock().map_err(|_| anyhow::anyhow!("cluster id lock poisoned"))? =
            Some(cluster_id.clone());
        self.consumer.subscribe(&[&topic]).context("subscribing to the command topic")?;
        tracing::info!(%topic, %cluster_id, group = %self.config.consumer_group, "processor started");

        let poll_timeout = Duration::from_millis(self.config.poll_timeout_ms);
        while !self.stop.is_cancelled() {
            if let Some(failure) = self.consumer.context().failure.lock().ok().and_then(|mut slot| slot.take()) {
                return Err(failure);
            }
            match self.consumer.poll(poll_timeout) {
                None => {}
                Some(Ok(message)) => {
                    let position = Position {
                        cluster_id: cluster_id.clone(),
                        consumer_group: self.config.consumer_group.clone(),
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    if !self.handle(&message, &position) {
                        // Stopped while retrying: the command stays unapplied
                        // and its offset unstored, so it is delivered again.
                        break;
                    }
                    let mut done = TopicPartitionList::new();
                    if done
                        .add_partition_offset(&position.topic, position.partition, Offset::Offset(position.offset + 1))
                        .is_ok()
                    {
                        // For visibility in Kafka tooling only (consumer lag);
                        // Postgres holds the offsets the processor trusts.
                        let _ = self.consumer.commit(&done, rdkafka::consumer::CommitMode::Async);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            }
        }
        tracing::info!("processor stopping");
        self.consumer.unsubscribe();
        Ok(())
    }

    fn fetch_cluster_id(&self) -> anyhow::Result<String> {
        let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
        loop {
            if let Some(id) = self.consumer.client().fetch_cluster_id(Duration::from_secs(5)) {
                return Ok(id);
            }
            anyhow::ensure!(!self.stop.is_cancelled(), "stopped before the Kafka cluster answered");
            tracing::warn!(brokers = %self.config.kafka.brokers, "waiting for the Kafka cluster id");
            backoff.sleep();
        }
    }

    /// Applies or dead-letters one message. Returns false when a stop
    /// interrupted it before it was done.
    fn handle(&self, message: &BorrowedMessage<'_>, position: &Position) -> bool {
        match decode::decode(message.payload()) {
            Ok(command) => match self.apply_with_retries(&command, position) {
                Some(Ok(outcome)) => {
                    match outcome {
                        Outcome::Completed | Outcome::AlreadyDecided => {
                            tracing::debug!(transfer_id = %command.transfer_id(), ?outcome, "applied");
                        }
                        Outcome::Rejected(reason) => {
                            tracing::info!(transfer_id = %command.transfer_id(), reason = reason.code(), "rejected");
                        }
                        Outcome::IdempotencyKeyReused => tracing::warn!(
                            transfer_id = %command.transfer_id(),
                            "transfer id reused for a different request; refused"
                        ),
                    }
                    true
                }
                Some(Err(reason)) => self.dead_letter(message, position, &reason),
                None => false,
            },
            Err(reason) => self.dead_letter(message, position, &reason),
        }
    }

    /// Retries an operating failure (database down) until it succeeds or the
    /// processor stops (`None`); gives up on a data failure after
    /// `apply_attempts_max` attempts with a dead-letter reason.
    fn apply_with_retries(
        &self,
        command: &schemas::Command,
        position: &Position,
    ) -> Option<Result<Outcome, DeadLetterReason>> {
        let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
        let mut data_failures = 0;
        loop {
            let started = std::time::Instant::now();
            match self.runtime.block_on(ledger::apply(&self.pool, command, position)) {
                Ok(outcome) => {
                    self.metrics.record_batch(1, started.elapsed());
                    return Some(Ok(outcome));
                }
                Err(error) if is_data_failure(&error) => {
                    data_failures += 1;
                    tracing::error!(%error, attempt = data_failures, "the database refused the command");
                    if data_failures >= self.config.apply_attempts_max {
                        return Some(Err(DeadLetterReason { code: "apply_failed", detail: error.to_string() }));
                    }
                }
                Err(error) => tracing::warn!(%error, "applying failed; retrying"),
            }
            if self.stop.is_cancelled() {
                return None;
            }
            backoff.sleep();
        }
    }

    /// Publishes the message to the dead-letter topic with its reason, then
    /// stores its offset so the partition moves on. Returns false when a
    /// stop interrupted it.
    fn dead_letter(&self, message: &BorrowedMessage<'_>, position: &Position, reason: &DeadLetterReason) -> bool {
        tracing::warn!(code = reason.code, detail = %reason.detail, partition = position.partition, offset = position.offset, "dead-lettering a command");
        let partition = position.partition.to_string();
        let offset = position.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "ledgerline-dlq-reason", value: Some(reason.code) })
            .insert(Header { key: "ledgerline-dlq-detail", value: Some(reason.detail.as_str()) })
            .insert(Header { key: "ledgerline-source-topic", value: Some(position.topic.as_str()) })
            .insert(Header { key: "ledgerline-source-partition", value: Some(partition.as_str()) })
            .insert(Header { key: "ledgerline-source-offset", value: Some(offset.as_str()) });
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.config.kafka.topics.commands_dlq).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let produced = self
                .runtime
                .block_on(self.producer.send(record, Duration::from_millis(self.config.kafka.produce_timeout_ms)));
            let stored = produced.map_err(|(error, _)| anyhow::Error::new(error)).and_then(|_| {
                self.runtime
                    .block_on(async {
                        let mut connection = self.pool.acquire().await?;
                        ledger::store_offset(&mut connection, position).await
                    })
                    .map_err(anyhow::Error::new)
            });
            match stored {
                Ok(()) => {
                    self.metrics.record_dead_letter();
                    return true;
                }
                Err(error) => tracing::warn!(error = ?error, "dead-lettering failed; retrying"),
            }
            if self.stop.is_cancelled() {
                return false;
            }
            backoff.sleep();
        }
    }
}

/// A failure the database will repeat for the same input (a violated check
/// or foreign key, a value out of range), as opposed to an operating failure
/// (connection lost, serialization conflict) that a retry can fix. A unique
/// violation is a race between two processors, resolved by a retry.
fn is_data_failure(error: &sqlx::Error) -> bool {
    let Some(database_error) = error.as_database_error() else {
        return matches!(error, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Encode(_));
    };
    let code = database_error.code().unwrap_or_default();
    (code.starts_with("22") || code.starts_with("23")) && code != "23505"
}

/// Exponential backoff from 50 ms up to a cap.
struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    fn new(max_ms: u64) -> Self {
        Self { next_ms: 50, max_ms }
    }

    fn sleep(&mut self) {
        std::thread::sleep(Duration::from_millis(self.next_ms));
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
    }
}
