//! What operators do to the flow, from the API (`/v1/ops`) and the
//! dashboard alike: read and replay dead-lettered commands, put dead outbox
//! rows back. Every replay and retry is in the audit log.
//!
//! Dead letters live in Kafka (`ledger.commands.dlq`, one partition), so
//! reading them is a bounded read of that topic: at most
//! [`DEAD_LETTERS_PAGE_MAX`] messages, for at most [`KAFKA_READ_TIMEOUT_MS`].
//! A replay publishes the original bytes and key to the commands topic; the
//! processor decides again, and a command it applied before is a no-op
//! (transfer ids are unique), so replaying twice is safe.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use platform::kafka::{ReadError, ReadMessage, ReadRange};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::audit;
use crate::error::ApiError;

/// Dead letters one read returns at most, and one replay republishes at most.
pub(crate) const DEAD_LETTERS_PAGE_MAX: i64 = 500;

/// How long one read of the dead-letter topic may take.
pub(crate) const KAFKA_READ_TIMEOUT_MS: u64 = 5_000;

/// Payload bytes shown per dead letter; the rest is cut (the replay sends all).
pub(crate) const PAYLOAD_SHOWN_MAX_BYTES: usize = 8 * 1024;

/// One dead-lettered command.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetter {
    /// Its offset in the dead-letter topic: what a replay names.
    offset: i64,
    key: Option<String>,
    /// Why it was refused (`undecodable`, `invalid_command`, …).
    reason: Option<String>,
    detail: Option<String>,
    /// Where it was read from before it was dead-lettered.
    source_partition: Option<String>,
    source_offset: Option<String>,
    /// When it was dead-lettered (broker time, ms since the epoch).
    timestamp_ms: Option<i64>,
    /// The command's bytes as text (lossy), cut at 8 KiB.
    payload: String,
    payload_truncated: bool,
}

impl DeadLetter {
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub(crate) fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// A dead letter as shown: its headers, and its payload cut at
/// [`PAYLOAD_SHOWN_MAX_BYTES`].
#[must_use]
pub(crate) fn dead_letter(message: ReadMessage) -> DeadLetter {
    let truncated = message.payload.len() > PAYLOAD_SHOWN_MAX_BYTES;
    let shown = &message.payload[..message.payload.len().min(PAYLOAD_SHOWN_MAX_BYTES)];
    DeadLetter {
        offset: message.offset,
        key: message.key.as_deref().map(|key| String::from_utf8_lossy(key).into_owned()),
        reason: message.header("ledgerline-dlq-reason"),
        detail: message.header("ledgerline-dlq-detail"),
        source_partition: message.header("ledgerline-source-partition"),
        source_offset: message.header("ledgerline-source-offset"),
        timestamp_ms: message.timestamp_ms,
        payload: String::from_utf8_lossy(shown).into_owned(),
        payload_truncated: truncated,
    }
}

/// Reads a partition of the dead-letter topic on the blocking pool
/// (librdkafka's consumer calls block).
pub(crate) async fn read_dead_letters(
    state: &AppState,
    partition: i32,
    from_offset: Option<i64>,
    limit: i64,
) -> Result<ReadRange, ApiError> {
    let kafka = state.kafka.clone();
    let read = tokio::task::spawn_blocking(move || {
        let topic = kafka.topics.commands_dlq.clone();
        kafka.read_range(&topic, partition, from_offset, limit, Duration::from_millis(KAFKA_READ_TIMEOUT_MS))
    })
    .await
    .context("reading dead letters")?;
    match read {
        Ok(read) => Ok(read),
        Err(ReadError::NoSuchPartition { partitions }) => Err(ApiError::not_found(
            "no_such_partition",
            format!("the dead-letter topic has {partitions} partition(s); ask for 0..{partitions}"),
        )),
        Err(ReadError::Kafka(error)) => Err(ApiError::BrokerUnavailable(error)),
    }
}

/// Publishes the dead letters `from_offset..to_offset` of `partition` again
/// to the commands topic, as they were, for staff member `staff_id` (whose
/// permission the caller checked), and audits it. The offsets published.
///
/// # Errors
/// 404 when there is no dead letter at `from_offset`; 503 when publishing
/// fails part way (the audit row says what went out).
pub(crate) async fn replay(
    state: &AppState,
    staff_id: Uuid,
    peer: SocketAddr,
    request_id: &str,
    partition: i32,
    from_offset: i64,
    to_offset: i64,
) -> Result<Vec<i64>, ApiError> {
    let count = to_offset.saturating_sub(from_offset);
    let read = read_dead_letters(state, partition, Some(from_offset), count).await?;
    let messages: Vec<ReadMessage> = read.messages.into_iter().filter(|message| message.offset < to_offset).collect();
    if messages.first().is_none_or(|message| message.offset != from_offset) {
        return Err(ApiError::not_found(
            "dead_letter_not_found",
            format!("no dead letter at offset {} (kept: {}..{})", from_offset, read.start, read.end),
        ));
    }
    // Sent together (the producer keeps their order per partition); the
    // audit row says what went out even when a send fails part way.
    let (replayed, error) = platform::kafka::republish(
        state.publisher.producer(),
        &state.kafka.topics.commands,
        &state.kafka.topics.commands_dlq,
        partition,
        &messages,
        request_id,
        Duration::from_millis(state.kafka.produce_timeout_ms),
    )
    .await;
    let failed = messages.len() - replayed.len();
    tracing::info!(user_id = %staff_id, partition, from = from_offset, count = replayed.len(), failed, "dead letters replayed");
    audit::record(
        state,
        audit::Event::by_staff(
            "dead_letters.replayed",
            staff_id,
            peer,
            request_id,
            serde_json::json!({ "partition": partition, "offsets": replayed, "failed": failed }),
        ),
    )
    .await;
    if let Some(error) = error {
        return Err(ApiError::BrokerUnavailable(error));
    }
    Ok(replayed)
}

/// Puts dead outbox rows back with a fresh attempt budget, for staff member
/// `staff_id`, and audits it. How many were put back.
///
/// # Errors
/// Database failures.
pub(crate) async fn retry_outbox(
    state: &AppState,
    staff_id: Uuid,
    peer: SocketAddr,
    request_id: &str,
    which: &platform::outbox::Retry,
) -> Result<u64, ApiError> {
    let retried = platform::outbox::retry(&state.pool, which).await?;
    audit::record(
        state,
        audit::Event::by_staff(
            "outbox.retried",
            staff_id,
            peer,
            request_id,
            match which {
                platform::outbox::Retry::Ids(ids) => serde_json::json!({ "ids": ids, "retried": retried }),
                platform::outbox::Retry::AllDead => serde_json::json!({ "all": true, "retried": retried }),
            },
        ),
    )
    .await;
    Ok(retried)
}
