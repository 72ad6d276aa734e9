//! The outbox relay binary: configuration from the environment, then
//! [`outbox_relay::run`] until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let config = outbox_relay::RelayConfig::from_env(kafka)?;
    let pool = DatabaseConfig::from_env()?.connect().await?;
    outbox_relay::run(config, pool, platform::shutdown::token_on_signal()).await
}
