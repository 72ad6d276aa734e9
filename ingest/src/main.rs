//! The ingest service binary: configuration from the environment, then the
//! library's [`ingest::Application`] until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let config = ingest::IngestConfig::from_env(kafka, None)?;
    let pool = DatabaseConfig::from_env()?.connect().await?;
    let application = ingest::Application::build(&config, pool).await?;
    application.run_until(platform::shutdown::token_on_signal()).await
}
