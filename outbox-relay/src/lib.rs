//! The outbox relay: delivers rows of the transactional outbox to Kafka
//! (`ledger.events`), at least once, with the outbox id in a header so
//! consumers can drop duplicates.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays can run
//! side by side without delivering a row twice in the normal case. This is
//! the skeleton's relay: events to Kafka only, polling. External payments,
//! webhooks, retries with backoff, dead rows and `LISTEN/NOTIFY` are issue #5.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use platform::CancellationToken;
use platform::config::{self, ConfigError};
use platform::kafka::KafkaConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub kafka: KafkaConfig,
    /// `LEDGERLINE_RELAY_BATCH_SIZE_MAX`: rows claimed per transaction.
    pub batch_size_max: i64,
    /// `LEDGERLINE_RELAY_POLL_INTERVAL_MS`: the pause when the outbox is empty.
    pub poll_interval_ms: u64,
}

impl RelayConfig {
    #[must_use]
    pub fn new(kafka: KafkaConfig) -> Self {
        Self { kafka, batch_size_max: 500, poll_interval_ms: 200 }
    }

    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env(kafka: KafkaConfig) -> Result<Self, ConfigError> {
        let defaults = Self::new(kafka);
        Ok(Self {
            batch_size_max: config::limit("LEDGERLINE_RELAY_BATCH_SIZE_MAX", defaults.batch_size_max, 1..=10_000)?,
            poll_interval_ms: config::limit(
                "LEDGERLINE_RELAY_POLL_INTERVAL_MS",
                defaults.poll_interval_ms,
                10..=60_000,
            )?,
            kafka: defaults.kafka,
        })
    }
}

/// Relays until `shutdown` is cancelled. A failed round is logged and
/// retried after the poll interval; nothing is lost, since undelivered rows
/// stay pending.
///
/// # Errors
/// When the producer cannot be created.
pub async fn run(config: RelayConfig, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let producer: FutureProducer = config.kafka.producer().create().context("creating the relay producer")?;
    tracing::info!(topic = %config.kafka.topics.events, "outbox relay started");
    let idle = Duration::from_millis(config.poll_interval_ms);
    while !shutdown.is_cancelled() {
        let delivered = match relay_batch(&config, &pool, &producer).await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(error = ?error, "relaying the outbox failed; retrying");
                0
            }
        };
        if delivered == 0 {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }
    tracing::info!("outbox relay stopped");
    Ok(())
}

/// Claims, publishes and marks one batch; returns how many rows were delivered.
///
/// # Errors
/// Database failures (publishing failures are recorded on the rows instead).
pub async fn relay_batch(config: &RelayConfig, pool: &PgPool, producer: &FutureProducer) -> anyhow::Result<usize> {
    let mut transaction = pool.begin().await.context("starting a relay transaction")?;
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        r"select id, event_type, message_key, payload::text from outbox
          where delivered_at is null and destination = 'events'
          order by id limit $1 for update skip locked",
    )
    .bind(config.batch_size_max)
    .fetch_all(&mut *transaction)
    .await
    .context("claiming outbox rows")?;
    if rows.is_empty() {
        return Ok(0);
    }
    let timeout = Duration::from_millis(config.kafka.produce_timeout_ms);
    let sends = rows.iter().map(|(id, event_type, key, payload)| {
        let outbox_id = id.to_string();
        let body = payload.as_str();
        async move {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ledgerline-outbox-id", value: Some(outbox_id.as_str()) })
                .insert(Header { key: "ledgerline-event-type", value: Some(event_type.as_str()) });
            let record = FutureRecord::to(&config.kafka.topics.events).key(key.as_str()).payload(body).headers(headers);
            producer.send(record, timeout).await.map(|_| ()).map_err(|(error, _)| error.to_string())
        }
    });
    let results = join_all(sends).await;
    let mut delivered = Vec::new();
    for ((id, ..), result) in rows.iter().zip(results) {
        match result {
            Ok(()) => delivered.push(*id),
            Err(error) => {
                tracing::warn!(outbox_id = id, %error, "delivering an outbox row failed");
                sqlx::query("update outbox set attempts = attempts + 1, last_error = $2 where id = $1")
                    .bind(id)
                    .bind(error)
                    .execute(&mut *transaction)
                    .await
                    .context("recording a delivery failure")?;
            }
        }
    }
    sqlx::query("update outbox set delivered_at = now(), attempts = attempts + 1 where id = any($1)")
        .bind(&delivered)
        .execute(&mut *transaction)
        .await
        .context("marking outbox rows delivered")?;
    transaction.commit().await.context("committing the relay transaction")?;
    Ok(delivered.len())
}
