//! The Kafka side of the processor: a consumer-group member on a thread of
//! its own.
//!
//! Why a thread of its own (from the blocking pool): librdkafka calls the rebalance callback from
//! inside `poll`, and on an assignment we must read the stored offsets from
//! Postgres before the first message is fetched. On a plain thread the
//! callback can block on that query (through the runtime handle) without
//! stalling an async executor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use platform::CancellationToken;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::{Command, RejectionReason};
use sqlx::PgPool;
use tokio::runtime::Handle;

use crate::config::ProcessorConfig;
use crate::decode::{self, DeadLetterReason};
use crate::engine::Outcome;
use crate::ledger::{self, AccountCache, BatchResult, OffsetScope, Position, Sweep};
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
            generation: AtomicU64::new(0),
            in_flight: Mutex::new(None),
            in_flight_result: Mutex::new(None),
            next_offsets: Mutex::new(BTreeMap::new()),
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
            accounts: Arc::new(AccountCache::new(config.account_cache_max)),
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
    /// Bumped on every assignment change, so the loop can tell that the
    /// messages it polled before belong to an old assignment.
    generation: AtomicU64,
    /// The batch being committed while the next one is polled.
    in_flight: Mutex<Option<BatchTask>>,
    /// Its result, when a revocation had to wait for it.
    in_flight_result: Mutex<Option<Result<BatchResult, sqlx::Error>>>,
    /// The offset of the next message to read, per assigned partition of
    /// the command topic: the stored offset at assignment, then past each
    /// polled message. Against the broker's high watermark it tells which
    /// partitions are caught up (for the hold sweep).
    next_offsets: Mutex<BTreeMap<i32, i64>>,
}

/// How long a stopping processor waits to leave its consumer group.
pub const CLOSE_TIMEOUT_MS: u64 = 10_000;

/// The longest the sweep waits for one partition's high watermark.
pub const WATERMARK_TIMEOUT_MS: u64 = 1_000;

type BatchTask = tokio::task::JoinHandle<Result<BatchResult, sqlx::Error>>;

impl OffsetsInPostgres {
    /// Waits for the batch in flight, if any, keeping its result for the
    /// loop. Called before partitions are given up, so a batch never commits
    /// after its partitions moved to another processor.
    fn settle_in_flight(&self) {
        let Some(task) = self.in_flight.lock().ok().and_then(|mut slot| slot.take()) else { return };
        let result = self
            .runtime
            .block_on(task)
            .unwrap_or_else(|error| Err(sqlx::Error::Protocol(format!("the batch task failed: {error}"))));
        if let Ok(mut slot) = self.in_flight_result.lock() {
            *slot = Some(result);
        }
    }

    /// The result of the batch in flight, waiting for it if needed.
    fn take_in_flight_result(&self) -> Option<Result<BatchResult, sqlx::Error>> {
        self.settle_in_flight();
        self.in_flight_result.lock().ok().and_then(|mut slot| slot.take())
    }
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
                if let Ok(mut next_offsets) = self.next_offsets.lock() {
                    // From the beginning: offset 0, or the low watermark once
                    // the first message is read.
                    next_offsets.insert(partition, if let Offset::Offset(next) = offset { next } else { 0 });
                }
                assignment.set_partition_offset(&topic, partition, offset).context("positioning a partition")?;
            }
        }
        Ok(())
    }
}

impl ConsumerContext for OffsetsInPostgres {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        self.generation.fetch_add(1, Ordering::AcqRel);
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
                // The batch in flight finishes before the partitions go; the
                // loop drops what it polled but did not apply (see the
                // generation counter), and the next owner reads it again.
                self.settle_in_flight();
                if let Ok(mut next_offsets) = self.next_offsets.lock() {
                    next_offsets.clear();
                }
                tracing::info!(partitions = partitions.count(), "revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassign failed");
                }
                self.assigned_partitions.send_replace(0);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                self.settle_in_flight();
                let _ = consumer.unassign();
            }
        }
    }
}

struct Worker {
    config: ProcessorConfig,
    metrics: Arc<ProcessorMetrics>,
    /// Account states of earlier batches, shared by every batch of this
    /// processor (see [`AccountCache`]).
    accounts: Arc<AccountCache>,
    pool: PgPool,
    runtime: Handle,
    producer: FutureProducer,
    consumer: Arc<BaseConsumer<OffsetsInPostgres>>,
    stop: CancellationToken,
}

/// A polled message, decoded or with the reason it cannot be.
struct Item {
    position: Position,
    command: Result<Command, DeadLetterReason>,
    /// Kept only for dead letters, which republish the original bytes.
    original: Option<OwnedMessage>,
}

/// A batch whose transaction runs on the runtime.
struct Pending {
    batch: Vec<Item>,
    commands: Vec<(Command, Position)>,
    positions: Vec<Position>,
    sweep: Option<Sweep>,
}

impl Item {
    fn new(message: &BorrowedMessage<'_>) -> Self {
        let position = Position {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            // Only the broker's clock: a producer's CreateTime could be
            // backdated.
            timestamp: match message.timestamp() {
                rdkafka::Timestamp::LogAppendTime(millis) => chrono::DateTime::from_timestamp_millis(millis),
                _ => None,
            },
        };
        let command = decode::decode(message.payload());
        let original = command.is_err().then(|| message.detach());
        Self { position, command, original }
    }
}

impl Worker {
    fn run(self) -> anyhow::Result<()> {
        let topic = self.config.kafka.topics.commands.clone();
        let scope = self.join(&topic)?;
        let mut last_sweep: Option<Instant> = None;
        let mut batch: Vec<Item> = Vec::with_capacity(self.config.batch_size_max);
        let mut generation = self.consumer.context().generation.load(Ordering::Acquire);
        // The batch committing on the runtime while the next one is polled
        // and decoded on this thread.
        let mut pending: Option<Pending> = None;

        while !self.stop.is_cancelled() {
            if let Some(failure) = self.consumer.context().failure.lock().ok().and_then(|mut slot| slot.take()) {
                self.finish(&scope, pending.take());
                return Err(failure);
            }
            self.collect(&mut batch, &mut generation, &mut pending, last_sweep);
            // The previous batch must be committed before the next starts:
            // they may touch the same accounts, in partition order.
            if !self.finish(&scope, pending.take()) {
                break;
            }
            let sweep = if self.sweep_due(last_sweep) {
                last_sweep = Some(Instant::now());
                self.sweep(&topic)
            } else {
                None
            };
            if batch.is_empty() && sweep.is_none() {
                continue;
            }
            match self.start(&scope, std::mem::take(&mut batch), sweep) {
                Some(started) => pending = Some(started),
                // Stopped while dead-lettering: nothing of the batch is
                // stored, so it is delivered again.
                None => break,
            }
        }
        self.finish(&scope, pending.take());
        tracing::info!("processor stopping");
        self.consumer.unsubscribe();
        self.close_bounded();
        Ok(())
    }

    /// Joins the consumer group on `topic` once the cluster's id is known:
    /// the offsets are stored under it.
    fn join(&self, topic: &str) -> anyhow::Result<OffsetScope> {
        let cluster_id = self.fetch_cluster_id()?;
        *self.consumer.context().cluster_id.lock().map_err(|_| anyhow::anyhow!("cluster id lock poisoned"))? =
            Some(cluster_id.clone());
        self.consumer.subscribe(&[topic]).context("subscribing to the command topic")?;
        tracing::info!(%topic, %cluster_id, group = %self.config.consumer_group, "processor started");
        Ok(OffsetScope { cluster_id, consumer_group: self.config.consumer_group.clone() })
    }

    /// Collects a batch: up to batch_size_max messages, or whatever arrived
    /// within batch_linger_ms of the first one. While `batch` is empty it
    /// returns after any poll once a stop is asked, the sweep is due or a
    /// batch is in flight. A rebalance during a poll drops what `batch`
    /// holds and settles `pending`.
    fn collect(
        &self,
        batch: &mut Vec<Item>,
        generation: &mut u64,
        pending: &mut Option<Pending>,
        last_sweep: Option<Instant>,
    ) {
        let poll_timeout = Duration::from_millis(self.config.poll_timeout_ms);
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let mut deadline: Option<Instant> = None;
        loop {
            let timeout = deadline.map_or(poll_timeout, |deadline| deadline.saturating_duration_since(Instant::now()));
            let polled = self.consumer.poll(timeout);
            let current = self.consumer.context().generation.load(Ordering::Acquire);
            if current != *generation {
                *generation = current;
                deadline = None;
                self.drop_after_rebalance(batch, pending.take());
            }
            if let Some(item) = self.receive(polled) {
                batch.push(item);
                deadline.get_or_insert_with(|| Instant::now() + linger);
                if batch.len() >= self.config.batch_size_max {
                    break;
                }
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            if batch.is_empty() && (self.stop.is_cancelled() || self.sweep_due(last_sweep)) {
                break;
            }
            if batch.is_empty() && pending.is_some() {
                // Nothing new: settle the batch in flight now rather
                // than after a whole poll timeout.
                break;
            }
        }
    }

    /// The assignment changed inside a poll. Messages polled before it may
    /// belong to revoked partitions; they are not applied and their offsets
    /// are not stored, so whoever owns the partitions now reads them again.
    /// The batch in flight was finished by the revocation.
    fn drop_after_rebalance(&self, batch: &mut Vec<Item>, pending: Option<Pending>) {
        if !batch.is_empty() {
            tracing::info!(dropped = batch.len(), "rebalance: dropping the unapplied batch");
        }
        batch.clear();
        // Partitions moved: what this processor remembers of accounts
        // another one applied meanwhile is stale.
        self.accounts.clear();
        if let Some(abandoned) = pending {
            self.settle_after_rebalance(abandoned);
        }
    }

    /// The message a poll returned, decoded or with why it cannot be, and
    /// its partition's next offset noted; `None` when the poll returned no
    /// message (an error is logged and counted here).
    fn receive(&self, polled: Option<KafkaResult<BorrowedMessage<'_>>>) -> Option<Item> {
        match polled {
            Some(Ok(message)) => {
                if let Ok(mut next_offsets) = self.consumer.context().next_offsets.lock() {
                    next_offsets.insert(message.partition(), message.offset() + 1);
                }
                return Some(Item::new(&message));
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(KafkaError::MessageConsumption(
                code @ (RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange),
            ))) => {
                tracing::error!(
                    error = %code,
                    "a partition's next command is no longer in Kafka: retention deleted commands that were \
                     never applied. The partition is stopped rather than skipped; restore the commands, or \
                     move the stored offset deliberately after accounting for the lost ones"
                );
                // Readiness and metrics show it (crate::health).
                self.metrics.record_offset_out_of_range();
            }
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
        }
        None
    }

    /// Whether the hold sweep is due: never run yet, or
    /// hold_sweep_interval_ms ago.
    fn sweep_due(&self, last_sweep: Option<Instant>) -> bool {
        let sweep_interval = Duration::from_millis(self.config.hold_sweep_interval_ms);
        last_sweep.is_none_or(|at| at.elapsed() >= sweep_interval)
    }

    /// The sweep of expired holds to run with the next batch, if any
    /// partition of `topic` may have its holds released now.
    fn sweep(&self, topic: &str) -> Option<Sweep> {
        let grace = chrono::Duration::milliseconds(i64::try_from(self.config.hold_expiry_grace_ms).unwrap_or(i64::MAX));
        Some(Sweep { topic: topic.to_owned(), partitions: self.caught_up_partitions(topic, grace), grace })
            .filter(|sweep| !sweep.partitions.is_empty())
    }

    /// Leaves the group within [`CLOSE_TIMEOUT_MS`]. librdkafka's own close,
    /// run when the consumer is dropped, polls until the group is left and
    /// so never returns when the broker is gone (a test whose broker was
    /// torn down first, a broker lost at shutdown): a stop would hang for
    /// ever. Past the deadline the consumer is leaked instead; the group
    /// drops the member after its session timeout.
    fn close_bounded(&self) {
        if let Err(error) = self.consumer.close_queue() {
            tracing::warn!(%error, "closing the consumer failed");
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(CLOSE_TIMEOUT_MS);
        while !self.consumer.closed() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    timeout_ms = CLOSE_TIMEOUT_MS,
                    "the consumer did not leave its group in time (broker unreachable?); leaving it behind"
                );
                std::mem::forget(Arc::clone(&self.consumer));
                return;
            }
            self.consumer.poll(Duration::from_millis(100));
        }
    }

    /// The assigned partitions of `topic` that have holds expired more than
    /// `grace` ago and are read to the broker's high watermark, asked of the
    /// broker now (a watermark remembered from an earlier fetch could
    /// predate a post appended since): their expired holds may be released,
    /// since every post or void of them in the log is applied. None when
    /// the broker does not answer. Partitions without expired holds cost no
    /// call to the broker (the usual case: one indexed query a sweep).
    fn caught_up_partitions(&self, topic: &str, grace: chrono::Duration) -> Vec<i32> {
        let due = self.runtime.block_on(ledger::partitions_with_expired_holds(&self.pool, topic, grace));
        let due = match due {
            Ok(due) if !due.is_empty() => due,
            Ok(_) => return Vec::new(),
            Err(error) => {
                tracing::debug!(%error, "looking for expired holds failed: no hold sweep this time");
                return Vec::new();
            }
        };
        let Ok(next_offsets) = self.consumer.context().next_offsets.lock().map(|offsets| offsets.clone()) else {
            return Vec::new();
        };
        let mut caught_up = Vec::with_capacity(due.len());
        for (partition, next) in next_offsets.into_iter().filter(|(partition, _)| due.contains(partition)) {
            match self.consumer.fetch_watermarks(topic, partition, Duration::from_millis(WATERMARK_TIMEOUT_MS)) {
                Ok((_, high)) if next >= high => caught_up.push(partition),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, partition, "no high watermark: no hold sweep this time");
                    return Vec::new();
                }
            }
        }
        caught_up
    }

    /// Dead-letters what cannot be decoded, then starts committing the rest,
    /// with the offsets of all, on the runtime. `None` when a stop
    /// interrupted the dead-lettering.
    fn start(&self, scope: &OffsetScope, batch: Vec<Item>, sweep: Option<Sweep>) -> Option<Pending> {
        for item in &batch {
            if let (Err(reason), Some(original)) = (&item.command, &item.original)
                && !self.dead_letter(original, &item.position, reason)
            {
                return None;
            }
        }
        let commands: Vec<(Command, Position)> = batch
            .iter()
            .filter_map(|item| item.command.as_ref().ok().map(|command| (command.clone(), item.position.clone())))
            .collect();
        let positions: Vec<Position> = batch.iter().map(|item| item.position.clone()).collect();
        let task = {
            let (pool, scope, commands, positions, sweep, accounts) = (
                self.pool.clone(),
                scope.clone(),
                commands.clone(),
                positions.clone(),
                sweep.clone(),
                self.accounts.clone(),
            );
            let timeouts = self.config.timeouts();
            self.runtime.spawn(async move {
                ledger::apply_batch(&pool, &scope, &commands, &positions, sweep.as_ref(), timeouts, &accounts).await
            })
        };
        if let Ok(mut slot) = self.consumer.context().in_flight.lock() {
            *slot = Some(task);
        }
        Some(Pending { batch, commands, positions, sweep })
    }

    /// Waits for the batch in flight and completes it: retried on an
    /// operating failure, applied one by one on a data failure. Returns
    /// false when a stop interrupted a retry (nothing of it is stored, so it
    /// is delivered again).
    fn finish(&self, scope: &OffsetScope, pending: Option<Pending>) -> bool {
        let Some(pending) = pending else { return true };
        let result = self.consumer.context().take_in_flight_result();
        let done = match result {
            Some(Ok(result)) => {
                self.metrics.record_batch(pending.commands.len(), result.elapsed, result.locking);
                self.log_outcomes(&pending.commands, &result);
                true
            }
            Some(Err(error)) if is_data_failure(&error) => {
                tracing::error!(%error, commands = pending.commands.len(), "the database refused the batch; applying its commands one by one");
                self.apply_one_by_one(scope, &pending.commands, &pending.positions)
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "applying a batch failed; retrying");
                self.apply(scope, &pending.commands, &pending.positions, pending.sweep.as_ref())
            }
            None => self.apply(scope, &pending.commands, &pending.positions, pending.sweep.as_ref()),
        };
        if done {
            self.commit_to_kafka(&pending.batch);
        }
        done
    }

    /// After a rebalance: the revocation waited for the batch in flight. If
    /// it committed, it counts; if not, it is abandoned, not retried: its
    /// partitions are read again from the stored offsets by their owner.
    fn settle_after_rebalance(&self, pending: Pending) {
        match self.consumer.context().take_in_flight_result() {
            Some(Ok(result)) => {
                self.metrics.record_batch(pending.commands.len(), result.elapsed, result.locking);
                self.log_outcomes(&pending.commands, &result);
            }
            Some(Err(error)) => {
                tracing::warn!(%error, commands = pending.commands.len(), "rebalance: abandoning the failed batch; its commands are read again");
            }
            None => {}
        }
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

    /// Applies a batch on this thread until it commits: retries operating
    /// failures with backoff, falls back to one by one on a data failure.
    /// Returns false when a stop interrupted it.
    fn apply(
        &self,
        scope: &OffsetScope,
        commands: &[(Command, Position)],
        positions: &[Position],
        sweep: Option<&Sweep>,
    ) -> bool {
        let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            backoff.sleep();
            match self.runtime.block_on(ledger::apply_batch(
                &self.pool,
                scope,
                commands,
                positions,
                sweep,
                self.config.timeouts(),
                &self.accounts,
            )) {
                Ok(result) => {
                    self.metrics.record_batch(commands.len(), result.elapsed, result.locking);
                    self.log_outcomes(commands, &result);
                    return true;
                }
                Err(error) if is_data_failure(&error) => {
                    tracing::error!(%error, commands = commands.len(), "the database refused the batch; applying its commands one by one");
                    return self.apply_one_by_one(scope, commands, positions);
                }
                Err(error) => tracing::warn!(%error, "applying a batch failed; retrying"),
            }
        }
    }

    /// The slow path after the database refused a batch for a data reason:
    /// each command alone, so the one at fault is found and dead-lettered
    /// after `apply_attempts_max` attempts while the others are applied.
    fn apply_one_by_one(&self, scope: &OffsetScope, commands: &[(Command, Position)], positions: &[Position]) -> bool {
        for (command, position) in commands {
            let single = [(command.clone(), position.clone())];
            let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
            let mut data_failures = 0;
            loop {
                match self.runtime.block_on(ledger::apply_batch(
                    &self.pool,
                    scope,
                    &single,
                    std::slice::from_ref(position),
                    None,
                    self.config.timeouts(),
                    &self.accounts,
                )) {
                    Ok(result) => {
                        self.metrics.record_batch(1, result.elapsed, result.locking);
                        self.log_outcomes(&single, &result);
                        break;
                    }
                    Err(error) if is_data_failure(&error) => {
                        data_failures += 1;
                        tracing::error!(%error, command_id = %command.id(), attempt = data_failures, "the database refused the command");
                        if data_failures >= self.config.apply_attempts_max {
                            let reason = DeadLetterReason { code: "apply_failed", detail: error.to_string() };
                            let payload = serde_json::to_vec(command).unwrap_or_default();
                            if !self.publish_dead_letter(&command.partition_key(), &payload, None, position, &reason) {
                                return false;
                            }
                            break;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "applying a command failed; retrying"),
                }
                if self.stop.is_cancelled() {
                    return false;
                }
                backoff.sleep();
            }
        }
        // The offsets of the whole batch, dead letters included.
        self.retry_until_done("storing offsets", || {
            ledger::apply_batch(&self.pool, scope, &[], positions, None, self.config.timeouts(), &self.accounts)
        })
        .is_some()
    }

    /// Runs `attempt` on this thread until it succeeds, logging each failure
    /// as `what` failing and backing off between attempts; `None` when a stop
    /// interrupted the retries.
    fn retry_until_done<T, E, F>(&self, what: &str, mut attempt: impl FnMut() -> F) -> Option<T>
    where
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.config.retry_backoff_max_ms);
        loop {
            match self.runtime.block_on(attempt()) {
                Ok(done) => return Some(done),
                Err(error) => tracing::warn!(%error, "{what} failed; retrying"),
            }
            if self.stop.is_cancelled() {
                return None;
            }
            backoff.sleep();
        }
    }

    fn log_outcomes(&self, commands: &[(Command, Position)], result: &ledger::BatchResult) {
        for ((command, _), outcome) in commands.iter().zip(&result.outcomes) {
            match outcome {
                Outcome::Applied | Outcome::AlreadyDecided => {}
                Outcome::Rejected(RejectionReason::IdempotencyKeyReused) => {
                    tracing::warn!(command_id = %command.id(), "command id reused for a different request; refused");
                }
                Outcome::Rejected(RejectionReason::PayoutOutcomeConflict) => {
                    self.metrics.record_payout_conflict();
                    tracing::error!(
                        command_id = %command.id(),
                        "the payment provider reported an outcome contradicting the payout's settlement: reconcile \
                         it with the provider (`ledgerctl payouts conflicts`)"
                    );
                }
                Outcome::Rejected(RejectionReason::PayoutOutcomeNotRecorded) => {
                    tracing::warn!(
                        command_id = %command.id(),
                        "a payout.outcome that neither the relay nor a provider callback recorded; refused"
                    );
                }
                Outcome::Rejected(reason) => {
                    tracing::debug!(command_id = %command.id(), reason = reason.code(), "rejected");
                }
            }
        }
        if result.holds_expired > 0 {
            tracing::info!(count = result.holds_expired, "released expired holds");
        }
    }

    /// Commits the batch's offsets to Kafka, for visibility in Kafka tooling
    /// only (consumer lag); Postgres holds the offsets the processor trusts.
    fn commit_to_kafka(&self, batch: &[Item]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for item in batch {
            let entry = next.entry((item.position.topic.as_str(), item.position.partition)).or_insert(0);
            *entry = (*entry).max(item.position.offset + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if offsets.add_partition_offset(topic, partition, Offset::Offset(offset)).is_err() {
                return;
            }
        }
        if offsets.count() > 0 {
            let _ = self.consumer.commit(&offsets, rdkafka::consumer::CommitMode::Async);
        }
    }

    fn dead_letter(&self, message: &OwnedMessage, position: &Position, reason: &DeadLetterReason) -> bool {
        self.publish_dead_letter(
            &message.key().map(|key| String::from_utf8_lossy(key).into_owned()).unwrap_or_default(),
            message.payload().unwrap_or_default(),
            message.headers(),
            position,
            reason,
        )
    }

    /// Publishes a message to the dead-letter topic with its reason in
    /// headers; its offset is stored with the batch it belongs to. A crash
    /// in between dead-letters it again (at least once). Returns false when
    /// a stop interrupted it.
    fn publish_dead_letter(
        &self,
        key: &str,
        payload: &[u8],
        original_headers: Option<&OwnedHeaders>,
        position: &Position,
        reason: &DeadLetterReason,
    ) -> bool {
        tracing::warn!(code = reason.code, detail = %reason.detail, partition = position.partition, offset = position.offset, "dead-lettering a command");
        let partition = position.partition.to_string();
        let offset = position.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "ledgerline-dlq-reason", value: Some(reason.code) })
            .insert(Header { key: "ledgerline-dlq-detail", value: Some(reason.detail.as_str()) })
            .insert(Header { key: "ledgerline-source-topic", value: Some(position.topic.as_str()) })
            .insert(Header { key: "ledgerline-source-partition", value: Some(partition.as_str()) })
            .insert(Header { key: "ledgerline-source-offset", value: Some(offset.as_str()) });
        if let Some(original) = original_headers {
            for header in original.iter() {
                headers = headers.insert(header);
            }
        }
        let timeout = Duration::from_millis(self.config.kafka.produce_timeout_ms);
        let published = self.retry_until_done("dead-lettering", || {
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&self.config.kafka.topics.commands_dlq).headers(headers.clone()).payload(payload);
            if !key.is_empty() {
                record = record.key(key);
            }
            let sent = self.producer.send(record, timeout);
            async move { sent.await.map_err(|(error, _)| error) }
        });
        if published.is_none() {
            return false;
        }
        self.metrics.record_dead_letter();
        self.record_dead_letter(payload, position, reason)
    }

    /// Records a dead-lettered command that names its id, so its sender
    /// reads "dead-lettered" and why instead of "accepted" for ever, and
    /// gets a `command.dead_lettered` event. Returns false when a stop
    /// interrupted it (the message is then delivered and dead-lettered
    /// again).
    fn record_dead_letter(&self, payload: &[u8], position: &Position, reason: &DeadLetterReason) -> bool {
        let Some(identity) = decode::identity(payload) else { return true };
        self.retry_until_done("recording a dead letter", || {
            ledger::record_dead_letter(&self.pool, &identity, reason, position)
        })
        .is_some()
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
