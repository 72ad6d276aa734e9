//! Re-feeding a range of the commands topic (`ledgerctl replay`): the
//! commands the ledger has no decision for — skipped by an offset reset, or
//! dead-lettered after a database refusal that has since been fixed — are
//! published again, as they were; those already decided are counted and
//! left alone. Idempotency makes this safe either way: a command published
//! twice is decided once (transfer and command ids are unique).

use std::time::Duration;

use anyhow::Context as _;
use platform::kafka::KafkaConfig;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The widest range one replay reads.
pub const RANGE_MAX: i64 = 1_000_000;
/// Messages read, looked up and published at a time.
pub const CHUNK_MAX: i64 = 5_000;
/// How long reading one chunk may take.
pub const READ_TIMEOUT_MS: u64 = 30_000;

/// What a replay found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Messages read from the range.
    pub read: u64,
    /// Commands the ledger has decided (applied or rejected): left alone.
    pub already_decided: u64,
    /// Commands with no decision: published again (or, in a dry run, that
    /// would have been).
    pub published: u64,
    /// Messages that are no command; the processor dead-letters them anyway.
    pub undecodable: u64,
    /// The first and last offsets read: the first is above the range's start
    /// when retention has deleted the oldest messages, the last below its end
    /// when the partition ends sooner.
    pub first_offset_read: Option<i64>,
    pub last_offset_read: Option<i64>,
}

/// Re-feeds offsets `from_offset..to_offset` of the commands topic's
/// `partition`. With `dry_run`, only counts.
///
/// # Errors
/// A range too wide or empty, an unknown partition, a broker or database failure.
pub async fn refeed(
    kafka: &KafkaConfig,
    pool: &PgPool,
    partition: i32,
    from_offset: i64,
    to_offset: i64,
    dry_run: bool,
) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(
        0 <= from_offset && from_offset < to_offset && to_offset - from_offset <= RANGE_MAX,
        "give 0 <= from_offset < to_offset, at most {RANGE_MAX} apart"
    );
    let producer: rdkafka::producer::FutureProducer = kafka.producer().create().context("creating a producer")?;
    let replay_id = format!("replay-{}", Uuid::new_v4());
    let topic = kafka.topics.commands.clone();
    let mut report = ReplayReport::default();
    let mut next = from_offset;
    while next < to_offset {
        let limit = (to_offset - next).min(CHUNK_MAX);
        let (reader, read_topic) = (kafka.clone(), topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            reader.read_range(&read_topic, partition, Some(next), limit, Duration::from_millis(READ_TIMEOUT_MS))
        })
        .await
        .context("reading the commands topic")?
        .map_err(|error| anyhow::anyhow!("reading {topic} partition {partition}: {error}"))?;
        let messages: Vec<_> = read.messages.into_iter().filter(|message| message.offset < to_offset).collect();
        let Some(last) = messages.last() else { break };
        next = last.offset + 1;
        report.last_offset_read = Some(last.offset);
        if report.first_offset_read.is_none() {
            report.first_offset_read = messages.first().map(|first| first.offset);
        }
        report.read += messages.len() as u64;

        let mut ids = Vec::new();
        let mut decodable = Vec::new();
        for message in messages {
            match serde_json::from_slice::<schemas::Command>(&message.payload) {
                Ok(command) => {
                    ids.push(command.id());
                    decodable.push((command.id(), message));
                }
                Err(_) => report.undecodable += 1,
            }
        }
        let decided: std::collections::HashSet<Uuid> = sqlx::query_scalar!(
            r#"select id as "id!" from transfers where id = any($1)
              union select id from account_commands where id = any($1)"#,
            &ids,
        )
        .fetch_all(pool)
        .await
        .context("looking the commands up in the ledger")?
        .into_iter()
        .collect();
        let undecided: Vec<_> =
            decodable.into_iter().filter(|(id, _)| !decided.contains(id)).map(|(_, message)| message).collect();
        report.already_decided += (ids.len() - undecided.len()) as u64;
        if dry_run {
            report.published += undecided.len() as u64;
            continue;
        }
        let (published, error) = platform::kafka::republish(
            &producer,
            &topic,
            &topic,
            partition,
            &undecided,
            &replay_id,
            Duration::from_millis(kafka.produce_timeout_ms),
        )
        .await;
        report.published += published.len() as u64;
        if let Some(error) = error {
            return Err(error.context(format!("after republishing {} command(s)", report.published)));
        }
    }
    tracing::info!(partition, from_offset, to_offset, dry_run, ?report, %replay_id, "commands re-fed");
    Ok(report)
}
