//! What operators see of the outbox and what they may do to it: the backlog
//! and its age, failures by destination and reason, dead rows, and retrying
//! them (`ledgerctl outbox …` and ingest's ops routes). Delivery rates are
//! per relay, in `outbox_relay::RelayMetrics`. Here, not in the relay, so
//! that ingest's ops routes need not depend on the relay.

use serde::Serialize;
use sqlx::PgPool;

/// The channel relays `LISTEN` on; a statement trigger on `outbox` notifies it.
pub const NOTIFY_CHANNEL: &str = "ledgerline_outbox";

/// The `event_type` of an `events` row that carries a processor batch's
/// ledger events: a JSON array of [`BatchedEvent`]s, in the order they
/// were decided. The relay publishes each as a Kafka message of its own.
///
/// One row per batch instead of one per event: a batch of 1,000 transfers
/// wrote 1,000 outbox rows (about a fifth of the batch's time, measured)
/// that the relay then claimed, updated and pruned one by one.
pub const EVENT_BATCH_TYPE: &str = "events.batch";

/// The `message_key` of every event batch row. One key, hence one lane:
/// batch rows go out in id order, one after the other, which keeps each
/// processor's events in order across its batches. (Rows are numbered when
/// written, before the batch locks its accounts: two processors' batches
/// that share an account can commit in the other order than their rows'
/// ids, as with one row per event before.)
pub const EVENT_BATCH_KEY: &str = "ledger";

/// One event in an [`EVENT_BATCH_TYPE`] row: its Kafka key, its type (for
/// the `ledgerline-event-type` header and webhook subscriptions, without
/// parsing the event) and the event, byte for byte as the processor wrote
/// it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BatchedEvent<'a, E: ?Sized = serde_json::value::RawValue> {
    pub key: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    pub event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow, bound(deserialize = "&'a E: serde::Deserialize<'de>"))]
    pub event: &'a E,
}

/// The id of the `index`-th event (from 0) of the batch row `outbox_id`:
/// `<outbox id>.<index>`, the `ledgerline-event-id` header, stable across
/// retries, for consumers to drop duplicates by. An event in a row of its
/// own has the row's id. The view `outbox_events` builds the same ids in
/// SQL (migration `20261202000002_event_batches.sql`); the events test
/// finds a published event there by its header.
#[must_use]
pub fn batched_event_id(outbox_id: i64, index: usize) -> String {
    format!("{outbox_id}.{index}")
}

/// The state of the outbox, from the database (the same for every relay).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Rows not yet delivered and not dead.
    pub pending: i64,
    /// Of those, rows backing off after a failure.
    pub retrying: i64,
    /// Rows that failed `attempts_max` times, waiting for an operator.
    pub dead: i64,
    /// Age of the oldest pending row, in seconds (0 when none is pending).
    pub oldest_pending_age_s: f64,
    /// Pending or dead rows whose last attempt failed, by destination and
    /// reason.
    pub failing: Vec<Failing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failing {
    pub destination: String,
    pub code: String,
    pub rows: i64,
    pub dead: i64,
}

/// # Errors
/// Database failures.
pub async fn status(pool: &PgPool) -> sqlx::Result<Status> {
    let backlog = sqlx::query!(
        r#"select count(*) as "pending!",
                 count(*) filter (where next_attempt_at > now()) as "retrying!",
                 coalesce(extract(epoch from now() - min(created_at))::double precision, 0) as "oldest_pending_age_s!"
          from outbox where delivered_at is null and dead_at is null"#,
    )
    .fetch_one(pool)
    .await?;
    let (pending, retrying, oldest_pending_age_s) = (backlog.pending, backlog.retrying, backlog.oldest_pending_age_s);
    let dead = sqlx::query_scalar!(
        r#"select count(*) as "dead!" from outbox where dead_at is not null and delivered_at is null"#
    )
    .fetch_one(pool)
    .await?;
    let failing = sqlx::query_as!(
        Failing,
        // Pending and dead rows separately, each through its partial index:
        // delivered rows (most of the table) are never read.
        r#"select destination as "destination!", coalesce(last_error_code, 'unknown') as "code!",
                 count(*) as "rows!", count(*) filter (where dead) as "dead!"
          from (select destination, last_error_code, false as dead from outbox
                where delivered_at is null and dead_at is null and last_error is not null
                union all
                select destination, last_error_code, true from outbox
                where dead_at is not null and delivered_at is null) as failing
          group by 1, 2 order by 3 desc"#,
    )
    .fetch_all(pool)
    .await?;
    Ok(Status { pending, retrying, dead, oldest_pending_age_s, failing })
}

/// A dead row, for an operator to inspect.
#[derive(Debug, Clone, Serialize)]
pub struct DeadRow {
    pub id: i64,
    pub destination: String,
    pub event_type: String,
    pub message_key: String,
    pub attempts: i32,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub dead_at: chrono::DateTime<chrono::Utc>,
}

/// The oldest `limit` dead rows.
///
/// # Errors
/// Database failures.
pub async fn dead_rows(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<DeadRow>> {
    sqlx::query_as!(
        DeadRow,
        r#"select id, destination, event_type, message_key, attempts, last_error_code, last_error, created_at,
                  dead_at as "dead_at!"
          from outbox where dead_at is not null and delivered_at is null
          order by id limit $1"#,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Which dead rows to retry.
#[derive(Debug, Clone)]
pub enum Retry {
    Ids(Vec<i64>),
    AllDead,
}

/// Puts dead rows back with a fresh attempt budget; returns how many. A
/// retried row goes out behind the rows its key delivered meanwhile:
/// consumers that need strict order per account see it late, with its
/// original outbox id and event time. Its `claims` count stays, so a
/// retried payment is looked up at the provider before it is ordered again
/// (the provider may have paid it although no answer arrived).
///
/// # Errors
/// Database failures.
pub async fn retry(pool: &PgPool, which: &Retry) -> sqlx::Result<u64> {
    let result = match which {
        Retry::Ids(ids) => {
            sqlx::query!(
                r"update outbox set dead_at = null, attempts = 0, next_attempt_at = null
                  where id = any($1) and dead_at is not null and delivered_at is null",
                ids,
            )
            .execute(pool)
            .await?
        }
        Retry::AllDead => {
            sqlx::query!(
                r"update outbox set dead_at = null, attempts = 0, next_attempt_at = null
                  where dead_at is not null and delivered_at is null",
            )
            .execute(pool)
            .await?
        }
    };
    if result.rows_affected() > 0 {
        // Wake the relays now rather than at their next poll (`pg_notify`
        // returns void, which the query macros cannot decode: cast to text).
        sqlx::query!("select pg_notify($1, '')::text", NOTIFY_CHANNEL).fetch_one(pool).await?;
    }
    Ok(result.rows_affected())
}
