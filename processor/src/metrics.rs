//! In-process counters of the processor, read by the benchmark and served
//! to Prometheus ([`ProcessorMetrics::render`]), and the partition view of
//! [`crate::health`] that readiness and the lag gauges are made of.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::health::PartitionState;
use crate::ledger::Locking;

/// Every way a batch takes its locks, in the order of the counters.
const LOCKINGS: [Locking; 4] = Locking::ALL;

/// The most commit-latency samples kept; older ones are overwritten, so the
/// quantiles describe the recent past and memory stays bounded.
pub const LATENCY_SAMPLES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct ProcessorMetrics {
    commands: AtomicU64,
    batches: AtomicU64,
    dead_letters: AtomicU64,
    payout_conflicts: AtomicU64,
    /// Batches by how they took their account locks, in the order of
    /// [`LOCKINGS`].
    lockings: [AtomicU64; 4],
    latencies_us: Mutex<LatencyRing>,
    commit_latency: platform::metrics::Histogram,
    /// Out-of-range fetches the consumer reported (a partition stopped).
    offset_out_of_range: AtomicU64,
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

impl ProcessorMetrics {
    /// Records one committed batch of `commands` commands whose database
    /// transaction took `commit_latency` from BEGIN to COMMIT and took its
    /// account locks `locking`.
    pub fn record_batch(&self, commands: usize, commit_latency: Duration, locking: Locking) {
        self.record_locking(locking);
        self.commands.fetch_add(u64::try_from(commands).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commit_latency.observe(commit_latency);
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

    fn record_locking(&self, locking: Locking) {
        if let Some(index) = LOCKINGS.iter().position(|known| *known == locking) {
            self.lockings[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Committed batches that took their locks `locking`.
    pub fn lockings_total(&self, locking: Locking) -> u64 {
        LOCKINGS
            .iter()
            .position(|known| *known == locking)
            .map_or(0, |index| self.lockings[index].load(Ordering::Relaxed))
    }

    pub fn record_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    /// The consumer could not fetch a partition at its stored offset (it
    /// is no longer, or not yet, in Kafka): counted, and the partition
    /// monitor looks at once instead of at its next round.
    pub fn record_offset_out_of_range(&self) {
        self.offset_out_of_range.fetch_add(1, Ordering::Relaxed);
        self.out_of_range_wake.notify_one();
    }

    /// Resolves after [`Self::record_offset_out_of_range`] (at once if one
    /// came since the last wait).
    pub async fn out_of_range_reported(&self) {
        self.out_of_range_wake.notified().await;
    }

    pub fn offset_out_of_range_total(&self) -> u64 {
        self.offset_out_of_range.load(Ordering::Relaxed)
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
        self.payout_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn payout_conflicts_total(&self) -> u64 {
        self.payout_conflicts.load(Ordering::Relaxed)
    }

    /// Commands decided (applied, rejected or recognised as duplicates).
    pub fn commands_total(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub fn batches_total(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// The Prometheus page: commands, batches, dead letters, the batch
    /// transactions' latency, and each partition's lag and stop.
    #[must_use]
    pub fn render(&self) -> String {
        use platform::metrics::{Exposition, Kind};
        let mut page = Exposition::new();
        let view = self.partitions();
        page.family(
            "ledgerline_processor_consumer_lag",
            Kind::Gauge,
            "Commands in Kafka not yet applied: the high watermark minus the offset stored in Postgres, per partition",
        );
        for state in &view.states {
            let partition = state.partition.to_string();
            page.sample("ledgerline_processor_consumer_lag", &[("partition", &partition)], state.lag());
        }
        page.family(
            "ledgerline_processor_partition_stopped",
            Kind::Gauge,
            "1 when the partition's stored offset is outside the log, so it cannot be consumed and makes no progress",
        );
        for state in &view.states {
            let partition = state.partition.to_string();
            page.sample(
                "ledgerline_processor_partition_stopped",
                &[("partition", &partition)],
                u8::from(state.stopped()),
            );
        }
        page.single(
            "ledgerline_processor_offset_out_of_range_total",
            Kind::Counter,
            "Fetches Kafka refused as out of range: a partition's next command is not in the log",
            self.offset_out_of_range_total(),
        );
        page.single(
            "ledgerline_processor_commands_total",
            Kind::Counter,
            "Commands decided: applied, rejected, or recognised as already applied",
            self.commands_total(),
        )
        .single(
            "ledgerline_processor_batches_total",
            Kind::Counter,
            "Batches committed (one database transaction each)",
            self.batches_total(),
        )
        .single(
            "ledgerline_processor_dead_letters_total",
            Kind::Counter,
            "Commands sent to the dead-letter topic",
            self.dead_letters_total(),
        )
        .single(
            "ledgerline_processor_payout_conflicts_total",
            Kind::Counter,
            "Provider outcomes contradicting their payout's settlement (paid after voided, refused after posted); \
             each needs an operator",
            self.payout_conflicts_total(),
        )
        .family(
            "ledgerline_processor_batch_locking_total",
            Kind::Counter,
            "Batches committed, by how they took their account locks: first (held for the whole batch), late (after \
             deciding; accounts as read), late_rebalanced (accounts moved meanwhile, decisions unchanged), \
             late_redecided (decisions changed, rows written again)",
        );
        for locking in LOCKINGS {
            page.sample(
                "ledgerline_processor_batch_locking_total",
                &[("locking", locking.code())],
                self.lockings_total(locking),
            );
        }
        page.family(
            "ledgerline_processor_batch_commit_seconds",
            Kind::Histogram,
            "A batch's database transaction, BEGIN to COMMIT",
        );
        self.commit_latency.write(&mut page, "ledgerline_processor_batch_commit_seconds", &[]);
        page.finish()
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
