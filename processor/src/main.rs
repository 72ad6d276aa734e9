//! The processor binary: configuration from the environment, then the
//! library's [`processor::Processor`] until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use platform::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let kafka = KafkaConfig::from_env()?.context("KAFKA_BROKERS is required")?;
    let config = processor::ProcessorConfig::from_env(kafka)?;
    let pool = DatabaseConfig::from_env()?.connect().await?;
    let mut processor = processor::Processor::start(config, pool)?;
    let shutdown = platform::shutdown::token_on_signal();
    if let Some(address) = platform::metrics::addr_from_env()? {
        let metrics = processor.metrics();
        let render = platform::metrics::render_with(move || metrics.render());
        platform::metrics::spawn(address, render, shutdown.clone()).await?;
    }
    tokio::select! {
        () = shutdown.cancelled() => processor.stop().await,
        result = processor.wait() => result.context("the processor stopped on its own"),
    }
}
