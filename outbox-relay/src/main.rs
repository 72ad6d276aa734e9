//! The outbox relay binary: configuration from the environment, then
//! [`outbox_relay::run`] until SIGTERM or Ctrl-C; on
//! `LEDGERLINE_METRICS_ADDR`, `/metrics`, `/health/live` and `/health/ready`.

use std::sync::Arc;

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let config = outbox_relay::RelayConfig::from_env(kafka)?;
    let pool = DatabaseConfig::from_env()?.connect().await?;
    let shutdown = platform::shutdown::token_on_signal();
    let metrics = Arc::new(outbox_relay::RelayMetrics::default());
    if let Some(address) = platform::metrics::addr_from_env()? {
        let ready: platform::metrics::Ready = {
            let readiness = outbox_relay::Readiness::new(pool.clone(), &config.kafka)?;
            Arc::new(move || {
                let readiness = readiness.clone();
                Box::pin(async move { readiness.problems().await })
            })
        };
        let (metrics, pool) = (Arc::clone(&metrics), pool.clone());
        let render: platform::metrics::Render = Arc::new(move || {
            let (metrics, pool) = (Arc::clone(&metrics), pool.clone());
            Box::pin(async move { outbox_relay::render_metrics(&metrics, &pool).await })
        });
        platform::metrics::spawn_with_health(address, render, ready, shutdown.clone()).await?;
    }
    outbox_relay::run_with_metrics(config, pool, shutdown, metrics).await
}
