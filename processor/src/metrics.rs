//! In-process counters of the processor, read by the benchmark and served
//! to Prometheus ([`ProcessorMetrics::render`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The most commit-latency samples kept; older ones are overwritten, so the
/// quantiles describe the recent past and memory stays bounded.
pub const LATENCY_SAMPLES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct ProcessorMetrics {
    commands: AtomicU64,
    batches: AtomicU64,
    dead_letters: AtomicU64,
    latencies_us: Mutex<LatencyRing>,
    commit_latency: platform::metrics::Histogram,
}

#[derive(Debug, Default)]
struct LatencyRing {
    samples: Vec<u64>,
    next: usize,
}

impl ProcessorMetrics {
    /// Records one committed batch of `commands` commands whose database
    /// transaction took `commit_latency` from BEGIN to COMMIT.
    pub fn record_batch(&self, commands: usize, commit_latency: Duration) {
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

    pub fn record_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
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

    /// The Prometheus page: commands, batches, dead letters, and the batch
    /// transactions' latency.
    #[must_use]
    pub fn render(&self) -> String {
        use platform::metrics::{Exposition, Kind};
        let mut page = Exposition::new();
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
        .family(
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
    fn quantiles_come_from_the_recorded_batches() {
        let metrics = ProcessorMetrics::default();
        assert_eq!(metrics.commit_latency_quantile(990), None);
        for millis in 1..=100 {
            metrics.record_batch(10, Duration::from_millis(millis));
        }
        assert_eq!(metrics.commands_total(), 1000);
        assert_eq!(metrics.batches_total(), 100);
        assert_eq!(metrics.commit_latency_quantile(500), Some(Duration::from_millis(50)));
        assert_eq!(metrics.commit_latency_quantile(990), Some(Duration::from_millis(99)));
        assert_eq!(metrics.commit_latency_quantile(1000), Some(Duration::from_millis(100)));
    }
}
