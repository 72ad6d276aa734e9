//! The processor binary: configuration from the environment, then the
//! library's [`processor::Processor`] until SIGTERM or Ctrl-C, with the
//! partition monitor ([`processor::health`]) beside it and, on
//! `LEDGERLINE_METRICS_ADDR`, `/metrics`, `/health/live` and `/health/ready`.

use std::sync::Arc;

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let mut config = processor::ProcessorConfig::from_env(kafka)?;
    let health_interval = processor::health::interval_from_env()?;
    let metrics_address = platform::metrics::addr_from_env()?;
    let database = DatabaseConfig::from_env()?;
    config.statement_timeout_ms = database.statement_timeout_ms;
    config.lock_timeout_ms = database.lock_timeout_ms;
    let pool = database.connect().await?;
    let (kafka, group) = (config.kafka.clone(), config.consumer_group.clone());
    let mut processor = processor::Processor::start(config, pool.clone())?;
    let shutdown = platform::shutdown::token_on_signal();
    let metrics = processor.metrics();
    processor::health::spawn_monitor(
        &kafka,
        group,
        pool.clone(),
        Arc::clone(&metrics),
        health_interval,
        shutdown.clone(),
    )?;
    if let Some(address) = metrics_address {
        let render = {
            let metrics = Arc::clone(&metrics);
            platform::metrics::render_with(move || metrics.render())
        };
        let ready: platform::metrics::Ready = Arc::new(move || {
            let (metrics, pool) = (Arc::clone(&metrics), pool.clone());
            Box::pin(async move { processor::health::readiness(&metrics, &pool, health_interval).await })
        });
        platform::metrics::spawn_with_health(address, render, ready, shutdown.clone()).await?;
    }
    tokio::select! {
        () = shutdown.cancelled() => processor.stop().await,
        result = processor.wait() => result.context("the processor stopped on its own"),
    }
}
