//! The outbox table as the relay works it: claiming rows by lane, and
//! recording what became of each attempt.
//!
//! Ordering: the rows of one message key (one account) share a lane (a
//! generated column, see the migration). A relay claims whole lanes with a
//! transaction advisory lock, the `SKIP LOCKED` of lanes, and sends a lane's
//! rows in id order. The first failure in a lane stops it: the failed row
//! waits out its backoff at the head of the lane and the rows behind it
//! wait too, so no consumer sees an account's later event before an earlier
//! one. A row that keeps failing is declared dead after `attempts_max`
//! attempts and leaves the lane for an operator (see [`crate::admin`]).
//! Destinations have lanes of their own ([`LANES`]): a webhook endpoint that
//! is down never holds back Kafka events, payouts or notifications.
//!
//! Webhook lanes are ordered per endpoint instead ([`WEBHOOK_LANES`]): a
//! failure holds back the endpoint's own later rows only. It pushes their
//! next attempt to its own (and rows fanned out meanwhile inherit it), so
//! they are simply not due; a claim takes an endpoint's row only when it is
//! due and no earlier row of the endpoint is still waiting.

use std::collections::HashSet;

use rand::Rng as _;
use rand::seq::SliceRandom as _;
use sqlx::PgConnection;

/// Lanes in the outbox; the generated `lane` column uses the same count.
/// Each destination has lanes of its own (events 0-63, payments 64-79,
/// notifications 80-87, webhooks 88-127), so a failure holds back rows of
/// its own destination only.
pub const LANES: i32 = 128;

/// The webhook lanes: ordered per endpoint, not per lane.
pub const WEBHOOK_LANES: std::ops::Range<i32> = 88..128;

/// The Kafka events' lanes, and the lanes of the destinations reached over
/// HTTP (payments, notifications, webhooks). A relay works them in two
/// loops of rounds, so a slow HTTP endpoint never keeps events' lanes
/// locked while its round waits for it.
pub const EVENT_LANES: std::ops::Range<i32> = 0..64;
pub const HTTP_LANES: std::ops::Range<i32> = 64..LANES;

/// The rows that wait per endpoint.
const WEBHOOKS: &str = "webhooks";

/// The first key of the two-key advisory locks on lanes ("LLOB"), so they
/// cannot collide with another application's advisory locks on the database.
const LANE_LOCK_CLASS: i32 = 0x4c4c_4f42;

/// One claimed row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub lane: i16,
    pub destination: String,
    pub event_type: String,
    pub message_key: String,
    pub payload: String,
    pub attempts: i32,
    /// False when the row is still backing off from a failure.
    pub due: bool,
}

/// What a claim holds: rows in id order, from lanes this transaction locked.
#[derive(Debug, Default)]
pub struct Claim {
    pub rows: Vec<Row>,
    /// How many lanes were locked; when it reaches the limit there may be
    /// more due lanes than one claim takes.
    pub lanes_locked: usize,
}

/// Locks up to `lanes_max` of `lanes` whose oldest pending row is due (in random
/// order, so relays side by side spread over the lanes) and claims up to
/// `rows_max` of their pending rows, stopping each lane at its first row
/// that is not due. The locks last until the transaction ends.
///
/// # Errors
/// Database failures.
pub async fn claim(
    connection: &mut PgConnection,
    lanes: std::ops::Range<i32>,
    lanes_max: usize,
    rows_max: i64,
) -> sqlx::Result<Claim> {
    // One index probe per lane. Ordered lanes: the head of the lane, and
    // whether it is due. Webhook lanes: whether some row is due whose
    // endpoint's first pending row is not waiting (see `WEBHOOK_READY`).
    let mut due_lanes: Vec<i32> = sqlx::query_scalar(&format!(
        r"select lanes.lane from generate_series($1, $3 - 1) as lanes (lane)
          where case when lanes.lane >= $2 then exists (
                    select 1 from outbox o
                    where o.lane = lanes.lane and {WEBHOOK_READY})
                else exists (
                    select 1 from (
                        select next_attempt_at from outbox
                        where lane = lanes.lane and delivered_at is null and dead_at is null
                        order by id limit 1
                    ) as head
                    where head.next_attempt_at is null or head.next_attempt_at <= now())
                end"
    ))
    .bind(lanes.start)
    .bind(WEBHOOK_LANES.start)
    .bind(lanes.end)
    .fetch_all(&mut *connection)
    .await?;
    due_lanes.shuffle(&mut rand::thread_rng());

    let mut locked: Vec<i16> = Vec::new();
    for lane in due_lanes {
        if locked.len() >= lanes_max {
            break;
        }
        let got: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1, $2)")
            .bind(LANE_LOCK_CLASS)
            .bind(lane)
            .fetch_one(&mut *connection)
            .await?;
        if got {
            locked.push(i16::try_from(lane).unwrap_or_default());
        }
    }
    if locked.is_empty() {
        return Ok(Claim::default());
    }
    let (webhook_lanes, ordered_lanes): (Vec<i16>, Vec<i16>) =
        locked.iter().partition(|lane| WEBHOOK_LANES.contains(&i32::from(**lane)));
    // Within a locked lane no other relay holds rows; SKIP LOCKED only keeps
    // a claim from queueing behind an operator's statement on the table.
    let mut rows: Vec<Row> = Vec::new();
    if !ordered_lanes.is_empty() {
        rows = sqlx::query_as(
            r"select id, lane, destination, event_type, message_key, payload::text as payload, attempts,
                     coalesce(next_attempt_at <= now(), true) as due
              from outbox
              where lane = any($1) and delivered_at is null and dead_at is null
              order by id limit $2
              for update skip locked",
        )
        .bind(&ordered_lanes)
        .bind(rows_max)
        .fetch_all(&mut *connection)
        .await?;
        rows = heads_of_lanes(rows);
    }
    if !webhook_lanes.is_empty() {
        // Driven by the due rows (an index range), so an endpoint's backlog
        // that waits behind its failed row is never read.
        let ready: Vec<Row> = sqlx::query_as(&format!(
            r"select id, lane, destination, event_type, message_key, payload::text as payload, attempts,
                     true as due
              from outbox o
              where o.lane = any($1) and {WEBHOOK_READY}
              order by id limit $2
              for update skip locked"
        ))
        .bind(&webhook_lanes)
        .bind(rows_max)
        .fetch_all(&mut *connection)
        .await?;
        rows.extend(ready);
        rows.sort_by_key(|row| row.id);
        rows.truncate(usize::try_from(rows_max).unwrap_or(usize::MAX));
    }
    Ok(Claim { rows, lanes_locked: locked.len() })
}

/// A webhook row `o` that may go now: pending, due, and its endpoint's first
/// pending row is not waiting out a backoff (unless it is that row). A
/// failure makes the endpoint's later rows wait as long (see [`record`]),
/// so whenever an earlier row of the endpoint waits, its first one does:
/// one index probe decides.
const WEBHOOK_READY: &str = r"o.destination = 'webhooks' and o.delivered_at is null and o.dead_at is null
    and coalesce(o.next_attempt_at, '-infinity'::timestamptz) <= now()
    and not exists (
        select 1 from (
            select first.id, first.next_attempt_at from outbox first
            where first.destination = 'webhooks' and first.message_key = o.message_key
              and first.delivered_at is null and first.dead_at is null
            order by first.id limit 1
        ) as first
        where first.id < o.id and first.next_attempt_at > now())";

/// What a row's order is kept within: its lane, or for a webhook row its
/// endpoint (the message key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OrderKey<'a> {
    Lane(i16),
    Endpoint(&'a str),
}

impl Row {
    fn order_key(&self) -> OrderKey<'_> {
        if self.destination == WEBHOOKS { OrderKey::Endpoint(&self.message_key) } else { OrderKey::Lane(self.lane) }
    }
}

/// Keeps, for each ordered lane, the rows before its first row that is not
/// due: a row backing off holds back the rest of its lane. (Webhook lanes
/// never come here: their claim takes only rows that may go.)
fn heads_of_lanes(rows: Vec<Row>) -> Vec<Row> {
    let mut blocked: HashSet<i16> = HashSet::new();
    rows.into_iter()
        .filter(|row| {
            if !row.due {
                blocked.insert(row.lane);
            }
            !blocked.contains(&row.lane)
        })
        .collect()
}

/// What one attempt at a row came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// `retry_after_ms`: the destination asked to wait at least this long.
    Failed {
        code: String,
        error: String,
        retry_after_ms: Option<u64>,
    },
    /// Not attempted, or attempted after a failure earlier in its lane:
    /// left pending, to be sent again in order.
    HeldBack,
}

/// Delivers a claim's rows with `deliver`, keeping each lane's order.
///
/// Kafka rows are all started at once, in id order: the producer enqueues
/// them in that order and keeps it per partition. An HTTP call gives no
/// such guarantee (concurrent requests arrive in any order), so the rows of
/// other destinations go one after the other within a lane (within an
/// endpoint for webhooks), lanes side by side, and a lane stops at its first
/// failure (the rest is held back).
pub async fn deliver_in_lane_order<'a, F, Fut>(rows: &'a [Row], deliver: F) -> Vec<Attempt>
where
    F: Fn(&'a Row) -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut lanes: Vec<(OrderKey<'a>, Vec<usize>)> = Vec::new();
    let mut kafka: Vec<usize> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let key = row.order_key();
        if row.destination == "events" {
            kafka.push(index);
        } else if let Some((_, indexes)) = lanes.iter_mut().find(|(lane, _)| *lane == key) {
            indexes.push(index);
        } else {
            lanes.push((key, vec![index]));
        }
    }
    let deliver = &deliver;
    let kafka = async move {
        let sent = futures::future::join_all(kafka.iter().map(|index| deliver(&rows[*index]))).await;
        kafka.into_iter().zip(sent).collect::<Vec<_>>()
    };
    let http = lanes.into_iter().map(|(_, indexes)| async move {
        let mut done = Vec::with_capacity(indexes.len());
        for index in indexes {
            let attempt = deliver(&rows[index]).await;
            let failed = matches!(attempt, Attempt::Failed { .. });
            done.push((index, attempt));
            if failed {
                break;
            }
        }
        done
    });
    let (kafka, http) = futures::future::join(kafka, futures::future::join_all(http)).await;
    let mut results = vec![Attempt::HeldBack; rows.len()];
    for (index, attempt) in kafka.into_iter().chain(http.into_iter().flatten()) {
        results[index] = attempt;
    }
    results
}

/// Orders the results of a claim by lane (by endpoint for webhooks): after
/// a lane's first failure, every later row of that lane is held back,
/// whatever its own result.
#[must_use]
pub fn settle_lanes(rows: &[Row], results: Vec<Attempt>) -> Vec<Attempt> {
    let mut failed: HashSet<OrderKey<'_>> = HashSet::new();
    rows.iter()
        .zip(results)
        .map(|(row, result)| {
            let key = row.order_key();
            if failed.contains(&key) {
                return Attempt::HeldBack;
            }
            if matches!(result, Attempt::Failed { .. }) {
                failed.insert(key);
            }
            result
        })
        .collect()
}

/// Retry policy for failed rows.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts_max: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A webhook endpoint that has delivered nothing for this long is
    /// disabled when one of its rows dies.
    pub webhook_disable_after_s: u64,
}

impl RetryPolicy {
    /// The pause before the next attempt after `attempts` failed ones:
    /// exponential, capped, with jitter over its upper half so relays that
    /// failed together do not retry together.
    #[must_use]
    pub fn backoff_ms(&self, attempts: i32) -> u64 {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let ceiling = self.backoff_base_ms.saturating_mul(1_u64 << exponent).min(self.backoff_max_ms).max(1);
        rand::thread_rng().gen_range(ceiling.div_ceil(2)..=ceiling)
    }
}

/// Records the attempts of a claim in its transaction.
///
/// # Errors
/// Database failures.
pub async fn record(
    connection: &mut PgConnection,
    rows: &[Row],
    attempts: &[Attempt],
    policy: &RetryPolicy,
) -> sqlx::Result<Counts> {
    let mut counts = Counts::default();
    // Endpoints reached first: a delivery and a death of the same endpoint in
    // one claim must not leave it disabled.
    let reached: Vec<uuid::Uuid> = rows
        .iter()
        .zip(attempts)
        .filter(|(row, attempt)| row.destination == WEBHOOKS && **attempt == Attempt::Delivered)
        .filter_map(|(row, _)| row.message_key.parse().ok())
        .collect();
    if !reached.is_empty() {
        // Only live endpoints: rows of a removed or disabled one are dropped,
        // not delivered.
        sqlx::query(
            r"update webhook_endpoints set last_delivered_at = now(), failing_since = null
              where id = any($1) and disabled_at is null",
        )
        .bind(&reached)
        .execute(&mut *connection)
        .await?;
    }
    let mut delivered: Vec<i64> = Vec::new();
    for (row, attempt) in rows.iter().zip(attempts) {
        match attempt {
            Attempt::Delivered => delivered.push(row.id),
            Attempt::HeldBack => counts.held_back += 1,
            Attempt::Failed { code, error, retry_after_ms } => {
                let attempts = row.attempts.saturating_add(1);
                let dead = attempts >= policy.attempts_max;
                let backoff_ms =
                    i64::try_from(policy.backoff_ms(attempts).max(retry_after_ms.unwrap_or(0))).unwrap_or(i64::MAX);
                if dead {
                    counts.dead += 1;
                    tracing::error!(
                        outbox_id = row.id,
                        attempts,
                        code,
                        error,
                        "outbox row is dead; an operator must retry it"
                    );
                } else {
                    counts.failed += 1;
                    tracing::warn!(
                        outbox_id = row.id,
                        attempts,
                        code,
                        error,
                        backoff_ms,
                        "delivering an outbox row failed"
                    );
                }
                sqlx::query(
                    r"update outbox set attempts = $2, last_error = $3, last_error_code = $4,
                          next_attempt_at = now() + make_interval(secs => $5::double precision / 1000),
                          dead_at = case when $6 then now() end
                      where id = $1",
                )
                .bind(row.id)
                .bind(attempts)
                .bind(error)
                .bind(code)
                .bind(backoff_ms)
                .bind(dead)
                .execute(&mut *connection)
                .await?;
                if row.destination == WEBHOOKS && !RELAY_SIDE_CODES.contains(&code.as_str()) {
                    endpoint_failed(connection, row, dead, policy.webhook_disable_after_s).await?;
                }
                if row.destination == WEBHOOKS && !dead {
                    // The endpoint's later rows wait as long: not due, they
                    // cost a claim nothing and leave the lane to the others.
                    sqlx::query(
                        r"update outbox later set next_attempt_at = failed.next_attempt_at
                          from outbox failed
                          where failed.id = $1 and later.destination = 'webhooks'
                            and later.message_key = failed.message_key and later.id > failed.id
                            and later.delivered_at is null and later.dead_at is null
                            and (later.next_attempt_at is null or later.next_attempt_at < failed.next_attempt_at)",
                    )
                    .bind(row.id)
                    .execute(&mut *connection)
                    .await?;
                }
            }
        }
    }
    if !delivered.is_empty() {
        // A delivered notification's payload is blanked: it holds a person's
        // address and a single-use secret (a reset token) that must not
        // outlive its delivery in a table many can read.
        sqlx::query(
            r#"update outbox set delivered_at = now(), attempts = attempts + 1, next_attempt_at = null,
                                 payload = case when destination = 'notifications'
                                                then '{"redacted": true}'::json else payload end
               where id = any($1)"#,
        )
        .bind(&delivered)
        .execute(&mut *connection)
        .await?;
    }
    counts.delivered = delivered.len();
    Ok(counts)
}

/// Failures that are the relay's, not the endpoint's: they never count
/// against an endpoint.
const RELAY_SIDE_CODES: &[&str] = &["secret_key_unknown", "no_secret", "bad_secret", "bad_payload"];

/// A webhook row failed at its endpoint: the endpoint is failing since now,
/// unless it already was. If the row died and the endpoint has been failing
/// without a success for `after_s`, the endpoint is disabled: its waiting
/// rows are then dropped as for a removed endpoint, instead of each waiting
/// out its retries behind the previous one, without end.
async fn endpoint_failed(connection: &mut PgConnection, row: &Row, dead: bool, after_s: u64) -> sqlx::Result<()> {
    let Ok(endpoint_id) = row.message_key.parse::<uuid::Uuid>() else { return Ok(()) };
    sqlx::query(
        "update webhook_endpoints set failing_since = coalesce(failing_since, now()) where id = $1 and disabled_at is null",
    )
    .bind(endpoint_id)
    .execute(&mut *connection)
    .await?;
    if !dead {
        return Ok(());
    }
    let disabled = sqlx::query(
        r"update webhook_endpoints set disabled_at = now(), disabled_reason = 'failing'
          where id = $1 and disabled_at is null
            and failing_since < now() - make_interval(secs => $2::double precision)",
    )
    .bind(endpoint_id)
    .bind(i64::try_from(after_s).unwrap_or(i64::MAX))
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if disabled > 0 {
        tracing::warn!(%endpoint_id, after_s, "webhook endpoint disabled: failing without a success for too long");
    }
    Ok(())
}

/// Deletes up to `batch_max` delivered rows older than `retention_s`,
/// oldest delivery first (through the `outbox_delivered` index); how many. Pending and dead rows are never deleted. Relays
/// side by side skip each other's rows.
///
/// # Errors
/// Database failures.
pub async fn prune(pool: &sqlx::PgPool, retention_s: u64, batch_max: i64) -> sqlx::Result<u64> {
    let retention_s = i64::try_from(retention_s).unwrap_or(i64::MAX);
    let deleted = sqlx::query(
        r"delete from outbox where id in (
              select id from outbox
              where delivered_at is not null and delivered_at < now() - make_interval(secs => $1::double precision)
              order by delivered_at limit $2
              for update skip locked)",
    )
    .bind(retention_s)
    .bind(batch_max)
    .execute(pool)
    .await?
    .rows_affected();
    if deleted > 0 {
        tracing::info!(deleted, retention_s, "pruned delivered outbox rows");
    }
    Ok(deleted)
}

/// What a round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub delivered: usize,
    pub failed: usize,
    pub dead: usize,
    pub held_back: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, lane: i16, due: bool) -> Row {
        Row {
            id,
            lane,
            destination: "events".into(),
            event_type: "transfer.completed".into(),
            message_key: format!("key-{lane}"),
            payload: "{}".into(),
            attempts: 0,
            due,
        }
    }

    fn failed() -> Attempt {
        Attempt::Failed { code: "kafka:MessageSizeTooLarge".into(), error: "too large".into(), retry_after_ms: None }
    }

    #[test]
    fn a_row_backing_off_holds_back_its_lane_only() {
        let rows = vec![row(1, 3, true), row(2, 5, false), row(3, 3, true), row(4, 5, true), row(5, 7, true)];
        let kept: Vec<i64> = heads_of_lanes(rows).iter().map(|row| row.id).collect();
        assert_eq!(kept, vec![1, 3, 5]);
    }

    #[test]
    fn after_a_failure_the_rest_of_its_lane_is_held_back_even_if_sent() {
        let rows = vec![row(1, 3, true), row(2, 3, true), row(3, 4, true), row(4, 3, true)];
        let results = vec![failed(), Attempt::Delivered, Attempt::Delivered, Attempt::Delivered];
        assert_eq!(
            settle_lanes(&rows, results),
            vec![failed(), Attempt::HeldBack, Attempt::Delivered, Attempt::HeldBack]
        );
    }

    #[tokio::test]
    async fn http_rows_of_a_lane_go_one_at_a_time_and_stop_at_a_failure() {
        let mut rows = vec![row(1, 3, true), row(2, 3, true), row(3, 3, true), row(4, 5, true)];
        for row in &mut rows {
            row.destination = "webhooks".into();
        }
        let in_flight = std::sync::atomic::AtomicUsize::new(0);
        let calls = std::sync::Mutex::new(Vec::new());
        let results = deliver_in_lane_order(&rows, |row| {
            let (in_flight, calls) = (&in_flight, &calls);
            async move {
                let concurrent = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                calls.lock().expect("calls").push((row.id, concurrent));
                if row.id == 2 { failed() } else { Attempt::Delivered }
            }
        })
        .await;
        assert_eq!(results, vec![Attempt::Delivered, failed(), Attempt::HeldBack, Attempt::Delivered]);
        let calls = calls.into_inner().expect("calls");
        let lane_3: Vec<i64> = calls.iter().map(|(id, _)| *id).filter(|id| *id != 4).collect();
        assert_eq!(lane_3, vec![1, 2], "in order, and row 3 never sent after row 2 failed");
    }

    #[test]
    fn a_failing_webhook_endpoint_holds_back_its_own_rows_only() {
        let mut rows = vec![row(1, 90, true), row(2, 90, true), row(3, 90, true), row(4, 90, true)];
        for (row, endpoint) in rows.iter_mut().zip(["a", "b", "a", "b"]) {
            row.destination = "webhooks".into();
            row.message_key = endpoint.into();
        }
        let results = vec![failed(), Attempt::Delivered, Attempt::Delivered, Attempt::Delivered];
        assert_eq!(
            settle_lanes(&rows, results),
            vec![failed(), Attempt::Delivered, Attempt::HeldBack, Attempt::Delivered],
            "endpoint a's later row waits; endpoint b, in the same lane, does not"
        );
    }

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered_in_its_upper_half() {
        let policy =
            RetryPolicy { attempts_max: 10, backoff_base_ms: 100, backoff_max_ms: 5_000, webhook_disable_after_s: 60 };
        for _ in 0..200 {
            assert!((50..=100).contains(&policy.backoff_ms(1)));
            assert!((200..=400).contains(&policy.backoff_ms(3)));
            assert!((2_500..=5_000).contains(&policy.backoff_ms(9)));
            assert!((2_500..=5_000).contains(&policy.backoff_ms(i32::MAX)));
        }
    }
}
