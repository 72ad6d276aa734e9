//! Processor settings.

use platform::config::{self, ConfigError};
use platform::kafka::KafkaConfig;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub kafka: KafkaConfig,
    /// `LEDGERLINE_PROCESSOR_GROUP`: the consumer group; every processor of
    /// one ledger shares it, and offsets are stored per group.
    pub consumer_group: String,
    /// `LEDGERLINE_PROCESSOR_POLL_TIMEOUT_MS`: the longest a poll waits, and
    /// so the longest a shutdown waits for the loop to notice it.
    pub poll_timeout_ms: u64,
    /// `LEDGERLINE_PROCESSOR_RETRY_BACKOFF_MAX_MS`: the longest pause between
    /// two attempts at a command that failed for an operating reason
    /// (database down). Such a command is retried until it succeeds.
    pub retry_backoff_max_ms: u64,
    /// `LEDGERLINE_PROCESSOR_APPLY_ATTEMPTS_MAX`: attempts at a command the
    /// database refuses for a data reason (a violated constraint) before it
    /// goes to the dead-letter topic instead of stalling the partition.
    pub apply_attempts_max: u32,
    /// `LEDGERLINE_PROCESSOR_BATCH_SIZE_MAX`: the most commands applied in
    /// one database transaction. 1,000 applied as many transfers a second
    /// as 2,000 in `ledgerctl bench processor` (16,159 against 15,999/s)
    /// with half the commit p99 (84 against 186 ms); 500 lost a fifth.
    pub batch_size_max: usize,
    /// `LEDGERLINE_PROCESSOR_BATCH_LINGER_MS`: how long a batch waits for
    /// more commands once its first one arrived.
    pub batch_linger_ms: u64,
    /// `LEDGERLINE_PROCESSOR_HOLD_SWEEP_INTERVAL_MS`: how often expired holds
    /// are looked for and released.
    pub hold_sweep_interval_ms: u64,
    /// `LEDGERLINE_PROCESSOR_HOLD_EXPIRY_GRACE_MS`: how long past its expiry
    /// a hold waits before the sweep releases it. A post or void decided
    /// against its own time in the log still wins until then; the grace
    /// covers a post on its way to the broker at the expiry and clock skew
    /// between the broker and the processor.
    pub hold_expiry_grace_ms: u64,
    /// `LEDGERLINE_PROCESSOR_ACCOUNT_CACHE_MAX`: the most account states
    /// the processor remembers from earlier batches, so a batch decided
    /// before locking need not read its accounts first (see
    /// [`crate::ledger::AccountCache`]). About 150 bytes each; 0 turns the
    /// memory off.
    pub account_cache_max: usize,
    /// The longest one statement of a batch may run, and the longest it may
    /// wait for a row lock (`LEDGERLINE_DB_STATEMENT_TIMEOUT_MS`,
    /// `LEDGERLINE_DB_LOCK_TIMEOUT_MS` of the processor's database
    /// settings); past either the batch fails and is retried, so a stray
    /// lock on an account row never hangs the processor. Set on each batch
    /// transaction, whatever pool the processor was given.
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
}

impl ProcessorConfig {
    pub const GROUP_DEFAULT: &'static str = "ledgerline-processor";

    #[must_use]
    pub fn new(kafka: KafkaConfig) -> Self {
        Self {
            kafka,
            consumer_group: Self::GROUP_DEFAULT.to_owned(),
            poll_timeout_ms: 100,
            retry_backoff_max_ms: 5_000,
            apply_attempts_max: 3,
            batch_size_max: 1_000,
            batch_linger_ms: 5,
            hold_sweep_interval_ms: 1_000,
            hold_expiry_grace_ms: 5_000,
            account_cache_max: 200_000,
            statement_timeout_ms: platform::postgres::DatabaseConfig::STATEMENT_TIMEOUT_MS_DEFAULT,
            lock_timeout_ms: platform::postgres::DatabaseConfig::LOCK_TIMEOUT_MS_DEFAULT,
        }
    }

    /// The batch transactions' timeouts.
    #[must_use]
    pub fn timeouts(&self) -> crate::ledger::Timeouts {
        crate::ledger::Timeouts {
            statement_timeout_ms: self.statement_timeout_ms,
            lock_timeout_ms: self.lock_timeout_ms,
        }
    }

    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env(kafka: KafkaConfig) -> Result<Self, ConfigError> {
        let defaults = Self::new(kafka);
        Ok(Self {
            consumer_group: config::var_or("LEDGERLINE_PROCESSOR_GROUP", defaults.consumer_group)?,
            poll_timeout_ms: config::limit(
                "LEDGERLINE_PROCESSOR_POLL_TIMEOUT_MS",
                defaults.poll_timeout_ms,
                1..=10_000,
            )?,
            retry_backoff_max_ms: config::limit(
                "LEDGERLINE_PROCESSOR_RETRY_BACKOFF_MAX_MS",
                defaults.retry_backoff_max_ms,
                10..=60_000,
            )?,
            apply_attempts_max: config::limit(
                "LEDGERLINE_PROCESSOR_APPLY_ATTEMPTS_MAX",
                defaults.apply_attempts_max,
                1..=100,
            )?,
            batch_size_max: config::limit("LEDGERLINE_PROCESSOR_BATCH_SIZE_MAX", defaults.batch_size_max, 1..=20_000)?,
            batch_linger_ms: config::limit(
                "LEDGERLINE_PROCESSOR_BATCH_LINGER_MS",
                defaults.batch_linger_ms,
                0..=10_000,
            )?,
            hold_sweep_interval_ms: config::limit(
                "LEDGERLINE_PROCESSOR_HOLD_SWEEP_INTERVAL_MS",
                defaults.hold_sweep_interval_ms,
                10..=3_600_000,
            )?,
            hold_expiry_grace_ms: config::limit(
                "LEDGERLINE_PROCESSOR_HOLD_EXPIRY_GRACE_MS",
                defaults.hold_expiry_grace_ms,
                0..=3_600_000,
            )?,
            account_cache_max: config::limit(
                "LEDGERLINE_PROCESSOR_ACCOUNT_CACHE_MAX",
                defaults.account_cache_max,
                0..=10_000_000,
            )?,
            // From the database settings (`DatabaseConfig`), by the binary.
            statement_timeout_ms: defaults.statement_timeout_ms,
            lock_timeout_ms: defaults.lock_timeout_ms,
            kafka: defaults.kafka,
        })
    }
}
