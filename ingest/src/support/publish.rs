//! Publishing commands to `ledger.commands` through the idempotent producer.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Command;

use crate::error::ApiError;

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Publisher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Publisher {
    /// # Errors
    /// When the producer cannot be created.
    pub fn new(kafka: &platform::kafka::KafkaConfig) -> anyhow::Result<Self> {
        Ok(Self {
            producer: kafka.producer().create().context("creating the Kafka producer")?,
            topic: kafka.topics.commands.clone(),
            timeout: Duration::from_millis(kafka.produce_timeout_ms),
        })
    }

    /// Publishes `command` keyed by its partition key and waits until the
    /// broker has it: only then may the request be answered `202 Accepted`.
    ///
    /// # Errors
    /// 503 `broker_unavailable` when the broker does not take it in time.
    #[tracing::instrument(skip_all, fields(command_id = %command.id(), command = command.type_name()), err)]
    pub async fn publish(&self, command: &Command, request_id: &str) -> Result<(), ApiError> {
        let payload = serde_json::to_vec(command).context("serializing a command")?;
        let key = command.partition_key().to_string();
        let transfer_id = command.id().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ledgerline-transfer-id", value: Some(transfer_id.as_str()) })
            .insert(Header { key: "x-request-id", value: Some(request_id) });
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload).headers(headers);
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(error, _)| ApiError::BrokerUnavailable(anyhow::Error::new(error)))
    }

    /// The producer, for republishing what an operator replays.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}
