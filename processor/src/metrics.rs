//! In-process counters of the processor, read by the benchmark and served
//! to Prometheus ([`ProcessorMetrics::render`]) from this instance's own
//! registry, and the partition view of [`crate::health`] that readiness and
//! the lag gauges are made of.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use platform::metrics::{Histogram, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use crate::health::PartitionState;
use crate::ledger::Locking;

/// Every way a batch takes its locks, in the order of the counters.
const LOCKINGS: [Locking; 4] = Locking::ALL;

/// The most commit-latency samples kept; older ones are overwritten, so the
/// quantiles describe the recent past and memory stays bounded.
pub const LATENCY_SAMPLES_MAX: usize = 100_000;

#[derive(Debug)]
pub struct ProcessorMetrics {
    registry: Registry,
    commands: IntCounter,
    batches: IntCounter,
    dead_letters: IntCounter,
    payout_conflicts: IntCounter,
    /// Batches by how they took their account locks (`locking`).
    lockings: IntCounterVec,
    latencies_us: Mutex<LatencyRing>,
    commit_latency: Histogram,
    /// Out-of-range fetches the consumer reported (a partition stopped).
    offset_out_of_range: IntCounter,
    /// Set from the partition view on each scrape.
    consumer_lag: IntGaugeVec,
    partition_stopped: IntGaugeVec,
    /// Wakes the partition monitor when the consumer reports one.
    out_of_range_wake: tokio::sync::Notify,
    partitions: Mutex<PartitionsView>,
}

/// What the partition monitor saw last.
#[derive(Debug, Clone, Default)]
pub struct PartitionsView {
    /// Every partition of the command topic, by partition.
    pub states: Vec<PartitionState>,
    /// When the monitor last looked successfully; `None` before it did.
    pub checked_at: Option<Instant>,
    /// Why its latest attempt failed, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct LatencyRing {
    samples: Vec<u64>,
    next: usize,
}

impl Default for ProcessorMetrics {
    fn default() -> Self {
        use platform::metrics::{counter, counter_vec, gauge_vec, latency_histogram};
        let registry = Registry::new();
        let lockings = counter_vec(
            &registry,
            "ledgerline_processor_batch_locking_total",
            "Batches committed, by how they took their account locks: first (held for the whole batch), late (after \
             deciding; accounts as read), late_rebalanced (accounts moved meanwhile, decisions unchanged), \
             late_redecided (decisions changed, rows written again)",
            &["locking"],
        );
        // Every way is on the page from the start, at 0.
        for locking in LOCKINGS {
            let _ = lockings.with_label_values(&[locking.code()]);
        }
        Self {
            commands: counter(
                &registry,
                "ledgerline_processor_commands_total",
                "Commands decided: applied, rejected, or recognised as already applied",
            ),
            batches: counter(
                &registry,
                "ledgerline_processor_batches_total",
                "Batches committed (one database transaction each)",
            ),
            dead_letters: counter(
                &registry,
                "ledgerline_processor_dead_letters_total",
                "Commands sent to the dead-letter topic",
            ),
            payout_conflicts: counter(
                &registry,
                "ledgerline_processor_payout_conflicts_total",
                "Provider outcomes contradicting their payout's settlement (paid after voided, refused after posted); \
                 each needs an operator",
            ),
            lockings,
            latencies_us: Mutex::default(),
            commit_latency: latency_histogram(
                &registry,
                "ledgerline_processor_batch_commit_seconds",
                "A batch's database transaction, BEGIN to COMMIT",
            ),
            offset_out_of_range: counter(
                &registry,
                "ledgerline_processor_offset_out_of_range_total",
                "Fetches Kafka refused as out of range: a partition's next command is not in the log",
            ),
            consumer_lag: gauge_vec(
                &registry,
                "ledgerline_processor_consumer_lag",
                "Commands in Kafka not yet applied: the high watermark minus the offset stored in Postgres, per \
                 partition",
                &["partition"],
            ),
            partition_stopped: gauge_vec(
                &registry,
                "ledgerline_processor_partition_stopped",
                "1 when the partition's stored offset is outside the log, so it cannot be consumed and makes no \
                 progress",
                &["partition"],
            ),
            out_of_range_wake: tokio::sync::Notify::new(),
            partitions: Mutex::default(),
            registry,
        }
    }
}

impl ProcessorMetrics {
    /// Records one committed batch of `commands` commands whose database
    /// transaction took `commit_latency` from BEGIN to COMMIT and took its
    /// account locks `locking`.
    pub fn record_batch(&self, commands: usize, commit_latency: Duration, locking: Locking) {
        self.lockings.with_label_values(&[locking.code()]).inc();
        self.commands.inc_by(u64::try_from(commands).unwrap_or(u64::MAX));
        self.batches.inc();
        self.commit_latency.observe(commit_latency.as_secs_f64());
        let micros = u64::try_from(commit_latency.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut ring) = self.latencies_us.lock() {
            if ring.samples.len() < LATENCY_SAMPLES_MAX {
                ring.samples.push(micros);
            } else {
                let slot = ring.next;
                ring.samples[slot] = micros;
                ring.next = (slot + 1) % LATENCY_SAMPLES_MAX;
            }
        }
    }

    /// Committed batches that took their locks `locking`.
    pub fn lockings_total(&self, locking: Locking) -> u64 {
        self.lockings.with_label_values(&[locking.code()]).get()
    }

    pub fn record_dead_letter(&self) {
        self.dead_letters.inc();
    }

    /// The consumer could not fetch a partition at its stored offset (it
    /// is no longer, or not yet, in Kafka): counted, and the partition
    /// monitor looks at once instead of at its next round.
    pub fn record_offset_out_of_range(&self) {
        self.offset_out_of_range.inc();
        self.out_of_range_wake.notify_one();
    }

    /// Resolves after [`Self::record_offset_out_of_range`] (at once if one
    /// came since the last wait).
    pub async fn out_of_range_reported(&self) {
        self.out_of_range_wake.notified().await;
    }

    pub fn offset_out_of_range_total(&self) -> u64 {
        self.offset_out_of_range.get()
    }

    /// A round of the partition monitor.
    pub fn record_partitions(&self, states: Vec<PartitionState>) {
        if let Ok(mut view) = self.partitions.lock() {
            *view = PartitionsView { states, checked_at: Some(Instant::now()), error: None };
        }
    }

    /// A round of the monitor that could not look; the last view stays
    /// (and ages: readiness refuses a stale one).
    pub fn record_partitions_unknown(&self, error: &str) {
        if let Ok(mut view) = self.partitions.lock() {
            view.error = Some(error.to_owned());
        }
    }

    #[must_use]
    pub fn partitions(&self) -> PartitionsView {
        self.partitions.lock().map(|view| view.clone()).unwrap_or_default()
    }

    /// A provider outcome that contradicted its payout's settlement.
    pub fn record_payout_conflict(&self) {
        self.payout_conflicts.inc();
    }

    pub fn payout_conflicts_total(&self) -> u64 {
        self.payout_conflicts.get()
    }

    /// Commands decided (applied, rejected or recognised as duplicates).
    pub fn commands_total(&self) -> u64 {
        self.commands.get()
    }

    pub fn batches_total(&self) -> u64 {
        self.batches.get()
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.get()
    }

    /// The Prometheus page: commands, batches, dead letters, the batch
    /// transactions' latency, and each partition's lag and stop (as the
    /// partition monitor saw them last).
    #[must_use]
    pub fn render(&self) -> String {
        let view = self.partitions();
        // Only the partitions of the latest view: one revoked since is gone.
        self.consumer_lag.reset();
        self.partition_stopped.reset();
        for state in &view.states {
            let partition = state.partition.to_string();
            self.consumer_lag.with_label_values(&[&partition]).set(state.lag());
            self.partition_stopped.with_label_values(&[&partition]).set(i64::from(state.stopped()));
        }
        platform::metrics::encode(&self.registry)
    }

    /// The commit latency below which `permille`/1000 of the recorded
    /// batches fall (990 for p99), or `None` before the first batch.
    pub fn commit_latency_quantile(&self, permille: u32) -> Option<Duration> {
        let ring = self.latencies_us.lock().ok()?;
        let mut sorted = ring.samples.clone();
        drop(ring);
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let rank = (sorted.len() * permille.min(1000) as usize).div_ceil(1000).max(1) - 1;
        Some(Duration::from_micros(sorted[rank]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_has_its_lag_and_stop_on_the_page() {
        let metrics = ProcessorMetrics::default();
        let state = |partition, stored_next, high| PartitionState {
            partition,
            stored_next,
            low: 0,
            high,
            stopped_earlier: false,
        };
        metrics.record_partitions(vec![state(0, Some(7), 10), state(1, Some(50), 10)]);
        metrics.record_offset_out_of_range();
        let page = metrics.render();
        assert!(page.contains("ledgerline_processor_consumer_lag{partition=\"0\"} 3\n"), "{page}");
        assert!(page.contains("ledgerline_processor_partition_stopped{partition=\"0\"} 0\n"), "{page}");
        assert!(page.contains("ledgerline_processor_partition_stopped{partition=\"1\"} 1\n"), "{page}");
        assert!(page.contains("ledgerline_processor_offset_out_of_range_total 1\n"), "{page}");
        assert!(metrics.partitions().checked_at.is_some());
    }

    #[test]
    fn quantiles_come_from_the_recorded_batches() {
        let metrics = ProcessorMetrics::default();
        assert_eq!(metrics.commit_latency_quantile(990), None);
        for millis in 1..=100 {
            metrics.record_batch(10, Duration::from_millis(millis), Locking::First);
        }
        assert_eq!(metrics.commands_total(), 1000);
        assert_eq!(metrics.batches_total(), 100);
        assert_eq!(metrics.commit_latency_quantile(500), Some(Duration::from_millis(50)));
        assert_eq!(metrics.commit_latency_quantile(990), Some(Duration::from_millis(99)));
        assert_eq!(metrics.commit_latency_quantile(1000), Some(Duration::from_millis(100)));
    }
}
