//! Where each partition of the command topic stands, for readiness and
//! Prometheus: consumer lag, and partitions that are stopped.
//!
//! A partition stops when the offset stored for it in Postgres is outside
//! what Kafka still has (retention deleted commands that were never
//! applied, or the topic was recreated): the consumer refuses to skip them
//! (`auto.offset.reset = error`) and that partition makes no progress while
//! the others go on. Logging it was not enough: readiness and metrics
//! stayed green. So a monitor compares, every
//! `LEDGERLINE_PROCESSOR_HEALTH_INTERVAL_MS` and at once when the consumer
//! reports an out-of-range fetch, the offsets stored in Postgres (what the
//! ledger has applied, the processor's truth) with each partition's
//! watermarks in Kafka:
//!
//! - lag = high watermark − stored next offset (the low watermark when none
//!   is stored: a new partition is read from the beginning);
//! - stopped = the stored next offset is below the low watermark or above
//!   the high one, exactly the fetches Kafka answers "offset out of range";
//!   and, once seen so, until the ledger applies from it again: moving the
//!   offset back does not make the consumer fetch it (only a new
//!   assignment does), so commands that arrive meanwhile keep it stopped.
//!
//! The view is the consumer group's, not this member's assignment: every
//! processor of the group reports every partition, so a stopped partition
//! makes them all not ready (the ledger is stalled for those accounts,
//! whoever owns the partition) and Prometheus should aggregate with `max`.

use std::time::Duration;

use anyhow::Context as _;
use platform::CancellationToken;
use platform::config::{self, ConfigError};
use platform::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sqlx::PgPool;

use crate::metrics::ProcessorMetrics;

/// How often the monitor looks, by default.
pub const INTERVAL_MS_DEFAULT: u64 = 5_000;
/// The longest one Kafka metadata or watermark request may take.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds the monitor may miss before the processor is not ready: its view
/// is that old, so it can no longer say no partition is stopped.
const ROUNDS_STALE: u32 = 3;

/// `LEDGERLINE_PROCESSOR_HEALTH_INTERVAL_MS`: how often the monitor compares
/// the stored offsets with Kafka's watermarks (100 ms – 10 min).
///
/// # Errors
/// When the variable is malformed or out of range.
pub fn interval_from_env() -> Result<Duration, ConfigError> {
    let millis = config::limit("LEDGERLINE_PROCESSOR_HEALTH_INTERVAL_MS", INTERVAL_MS_DEFAULT, 100..=600_000)?;
    Ok(Duration::from_millis(millis))
}

/// One partition of the command topic, as the last round saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// The next offset the ledger will apply, from Postgres; `None` before
    /// the first command of the partition was applied.
    pub stored_next: Option<i64>,
    /// The oldest offset Kafka still has.
    pub low: i64,
    /// The offset after the newest message.
    pub high: i64,
    /// It was out of range in an earlier round, and the ledger has applied
    /// nothing of it since its offset was moved back into range: the
    /// consumer stopped fetching it, and fetches again only on a new
    /// assignment (a restart of the processor).
    pub stopped_earlier: bool,
}

impl PartitionState {
    /// Commands in Kafka the ledger has not applied yet.
    #[must_use]
    pub fn lag(&self) -> i64 {
        (self.high - self.stored_next.unwrap_or(self.low)).max(0)
    }

    /// The stored offset is outside the log: the consumer cannot fetch it,
    /// and will not skip to what is there.
    #[must_use]
    pub fn out_of_range(&self) -> bool {
        self.stored_next.is_some_and(|next| next < self.low || next > self.high)
    }

    /// Commands of it wait that no consumer fetches: out of range, or moved
    /// back into range but not fetched since.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.out_of_range() || (self.stopped_earlier && self.lag() > 0)
    }

    /// Why it is stopped, for operators.
    #[must_use]
    pub fn stop_reason(&self) -> Option<String> {
        let partition = self.partition;
        let (next, low, high) = (self.stored_next.unwrap_or(self.low), self.low, self.high);
        if !self.stopped() {
            None
        } else if next < low {
            Some(format!(
                "partition {partition}: the next command to apply (offset {next}) is no longer in Kafka (it keeps \
                 {low}..{high}): commands were deleted before they were applied"
            ))
        } else if next > high {
            Some(format!(
                "partition {partition}: the stored offset {next} is past the end of the log ({high}): the topic was \
                 recreated or truncated"
            ))
        } else {
            Some(format!(
                "partition {partition}: stopped earlier and not fetched since its offset was moved to {next} ({} \
                 commands wait): restart the processors",
                self.lag()
            ))
        }
    }
}

/// What the monitor remembers of a partition it saw out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    OutOfRange,
    /// Back in range at this stored offset, not applied from since.
    MovedTo(Option<i64>),
}

/// Marks the partitions that were out of range and have not moved since
/// (`stopped_earlier`), and updates what is remembered.
fn carry_stops(states: &mut [PartitionState], stuck: &mut std::collections::BTreeMap<i32, Stuck>) {
    for state in states {
        let partition = state.partition;
        match (state.out_of_range(), stuck.get(&partition).copied()) {
            (true, _) => {
                stuck.insert(partition, Stuck::OutOfRange);
            }
            (false, Some(Stuck::OutOfRange)) => {
                stuck.insert(partition, Stuck::MovedTo(state.stored_next));
                state.stopped_earlier = true;
            }
            (false, Some(Stuck::MovedTo(at))) if at == state.stored_next => state.stopped_earlier = true,
            // The ledger applied some of it: a consumer fetches it again.
            (false, Some(Stuck::MovedTo(_))) => {
                stuck.remove(&partition);
            }
            (false, None) => {}
        }
    }
}

/// Compares the stored offsets with Kafka's watermarks once: every
/// partition of `topic`. Blocking (Kafka requests): call it from a blocking
/// thread.
fn look(
    client: &BaseConsumer,
    runtime: &tokio::runtime::Handle,
    pool: &PgPool,
    consumer_group: &str,
    topic: &str,
) -> anyhow::Result<Vec<PartitionState>> {
    let cluster_id = client.client().fetch_cluster_id(KAFKA_REQUEST_TIMEOUT).context("the Kafka cluster id")?;
    // Stored offsets first, then the watermarks: the high watermark only
    // grows, so an offset stored before it was read is never past it by a
    // race; only by a real truncation.
    let stored = runtime
        .block_on(crate::ledger::load_offsets(pool, &cluster_id, consumer_group, topic))
        .context("loading the stored offsets")?;
    let metadata = client.fetch_metadata(Some(topic), KAFKA_REQUEST_TIMEOUT).context("the topic's metadata")?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|topic| topic.partitions()).map(|partition| partition.id()).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut states = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = client
            .fetch_watermarks(topic, partition, KAFKA_REQUEST_TIMEOUT)
            .with_context(|| format!("the watermarks of partition {partition}"))?;
        let stored_next = stored.iter().find(|(stored, _)| *stored == partition).map(|(_, next)| *next);
        states.push(PartitionState { partition, stored_next, low, high, stopped_earlier: false });
    }
    states.sort_by_key(|state| state.partition);
    Ok(states)
}

/// Runs the monitor until `shutdown`: a round every `interval`, or at once
/// when the consumer reports an out-of-range fetch. Results go to
/// `metrics`; a partition that stops or resumes is logged once.
///
/// # Errors
/// When the Kafka client cannot be created.
pub fn spawn_monitor(
    kafka: &KafkaConfig,
    consumer_group: String,
    pool: PgPool,
    metrics: std::sync::Arc<ProcessorMetrics>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // A plain client for metadata and watermarks: it never subscribes, so
    // it never joins the processors' group.
    let client: BaseConsumer = kafka
        .consumer(&format!("{consumer_group}-health"))
        .create()
        .context("creating the partition monitor's Kafka client")?;
    let client = std::sync::Arc::new(client);
    let topic = kafka.topics.commands.clone();
    let runtime = tokio::runtime::Handle::current();
    let instance = Instance { id: uuid::Uuid::new_v4(), started_at: chrono::Utc::now() };
    Ok(tokio::spawn(async move {
        let mut stopped_before: Vec<i32> = Vec::new();
        let mut stuck = std::collections::BTreeMap::new();
        loop {
            let round = {
                let (client, runtime, pool, group, topic) =
                    (client.clone(), runtime.clone(), pool.clone(), consumer_group.clone(), topic.clone());
                tokio::task::spawn_blocking(move || look(&client, &runtime, &pool, &group, &topic)).await
            };
            match round {
                Ok(Ok(mut states)) => {
                    carry_stops(&mut states, &mut stuck);
                    let stopped: Vec<i32> =
                        states.iter().filter(|state| state.stopped()).map(|state| state.partition).collect();
                    for state in states.iter().filter(|state| !stopped_before.contains(&state.partition)) {
                        if let Some(reason) = state.stop_reason() {
                            tracing::error!(%reason, "a partition of the command topic is stopped; the processor is not ready");
                        }
                    }
                    for partition in stopped_before.iter().filter(|partition| !stopped.contains(partition)) {
                        tracing::info!(partition, "the partition is no longer stopped");
                    }
                    stopped_before = stopped;
                    if let Err(error) = publish_view(&pool, &topic, &consumer_group, &instance, &metrics, &states).await
                    {
                        tracing::warn!(%error, "storing the partition view for the dashboard failed");
                    }
                    metrics.record_partitions(states);
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = format!("{error:#}"), "the partition monitor could not look");
                    metrics.record_partitions_unknown(&format!("{error:#}"));
                }
                Err(error) => metrics.record_partitions_unknown(&format!("the partition monitor failed: {error}")),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                () = metrics.out_of_range_reported() => {}
            }
        }
    }))
}

/// This processor instance, as the dashboard lists it.
#[derive(Debug, Clone, Copy)]
struct Instance {
    id: uuid::Uuid,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// Stores what a round saw (each partition's lag and stop) and this
/// instance's recent commit latency, for the staff dashboard, which reads
/// only Postgres. One statement, seconds apart, off the batch path; rows of
/// instances gone for an hour are pruned on the way.
async fn publish_view(
    pool: &PgPool,
    topic: &str,
    consumer_group: &str,
    instance: &Instance,
    metrics: &ProcessorMetrics,
    states: &[PartitionState],
) -> sqlx::Result<()> {
    let partitions: Vec<i32> = states.iter().map(|state| state.partition).collect();
    let lags: Vec<i64> = states.iter().map(PartitionState::lag).collect();
    let stopped: Vec<bool> = states.iter().map(PartitionState::stopped).collect();
    let micros = |permille| {
        metrics.commit_latency_quantile(permille).map(|latency| i64::try_from(latency.as_micros()).unwrap_or(i64::MAX))
    };
    let total = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
    sqlx::query!(
        r"with partitions as (
              insert into processor_partitions (topic, partition, lag, stopped, observed_at)
              select $1, partition, lag, stopped, now() from unnest($2::int4[], $3::int8[], $4::bool[])
                  as seen (partition, lag, stopped)
              on conflict (topic, partition) do update
                  set lag = excluded.lag, stopped = excluded.stopped, observed_at = excluded.observed_at
          ), pruned as (
              delete from processor_instances where observed_at < now() - interval '1 hour'
          )
          insert into processor_instances
              (id, consumer_group, started_at, commit_p50_us, commit_p99_us, batches_total, commands_total)
          values ($5, $6, $7, $8, $9, $10, $11)
          on conflict (id) do update
              set commit_p50_us = excluded.commit_p50_us, commit_p99_us = excluded.commit_p99_us,
                  batches_total = excluded.batches_total, commands_total = excluded.commands_total,
                  observed_at = now()",
        topic,
        &partitions,
        &lags,
        &stopped,
        instance.id,
        consumer_group,
        instance.started_at,
        micros(500),
        micros(990),
        total(metrics.batches_total()),
        total(metrics.commands_total()),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the processor is ready, and if not why: Postgres must answer,
/// the monitor's view must be recent, and no partition may be stopped.
pub async fn readiness(metrics: &ProcessorMetrics, pool: &PgPool, interval: Duration) -> Vec<String> {
    let mut problems: Vec<String> = platform::postgres::probe(pool).await.into_iter().collect();
    let view = metrics.partitions();
    match view.checked_at {
        None => problems.push("the partition monitor has not looked yet".to_owned()),
        Some(at) if at.elapsed() > interval * ROUNDS_STALE + KAFKA_REQUEST_TIMEOUT * 2 => problems.push(format!(
            "the partition monitor last looked {} s ago{}",
            at.elapsed().as_secs(),
            view.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default()
        )),
        Some(_) => {}
    }
    problems.extend(view.states.iter().filter_map(PartitionState::stop_reason));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(stored_next: Option<i64>, low: i64, high: i64) -> PartitionState {
        PartitionState { partition: 3, stored_next, low, high, stopped_earlier: false }
    }

    #[test]
    fn lag_counts_what_the_ledger_has_not_applied() {
        assert_eq!(state(Some(7), 0, 10).lag(), 3);
        assert_eq!(state(Some(10), 0, 10).lag(), 0);
        // Nothing applied yet: the whole log is lag.
        assert_eq!(state(None, 4, 10).lag(), 6);
    }

    #[test]
    fn a_stored_offset_outside_the_log_is_a_stopped_partition() {
        assert!(!state(Some(4), 4, 10).stopped());
        assert!(!state(Some(10), 4, 10).stopped());
        assert!(!state(None, 4, 10).stopped());
        assert!(state(Some(3), 4, 10).stopped());
        assert!(state(Some(11), 4, 10).stopped());
        assert!(state(Some(3), 4, 10).stop_reason().expect("reason").contains("no longer in Kafka"));
        assert!(state(Some(11), 4, 10).stop_reason().expect("reason").contains("past the end"));
        assert_eq!(state(Some(5), 4, 10).stop_reason(), None);
    }

    #[test]
    fn a_stopped_partition_moved_back_into_range_stays_stopped_until_the_ledger_applies_from_it() {
        let mut stuck = std::collections::BTreeMap::new();
        let mut round = |stored: i64, high: i64| {
            let mut states = vec![state(Some(stored), 0, high)];
            carry_stops(&mut states, &mut stuck);
            states.remove(0)
        };
        assert!(round(50, 10).stopped(), "past the end");
        // The operator moved the offset back; nothing waits yet.
        let moved = round(10, 10);
        assert!(moved.stopped_earlier && !moved.stopped());
        // A command arrives that the stopped consumer does not fetch.
        let waiting = round(10, 11);
        assert!(waiting.stopped());
        assert!(waiting.stop_reason().expect("reason").contains("restart the processors"));
        // Applied after a restart: it moves again.
        let moving = round(11, 11);
        assert!(!moving.stopped_earlier && !moving.stopped());
        assert!(!round(11, 12).stopped());
    }
}
