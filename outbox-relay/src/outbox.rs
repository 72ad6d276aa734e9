//! The outbox table as the relay works it: claiming rows, and recording
//! what became of each attempt.
//!
//! No transaction stays open across a delivery. A relay claims rows in a
//! short transaction that leases them (`claimed_until`, under the claim's
//! `claim_token`) and commits; it delivers them with no transaction open;
//! then it records the outcomes in another short transaction, for the rows
//! its claim still holds. A relay that dies mid-round leaves its rows to
//! the others once the lease ends. Lanes serialize claims only: a claim
//! locks the lanes it takes from with a transaction advisory lock (the
//! `SKIP LOCKED` of lanes), so two relays never claim from one lane at once,
//! and the lock ends with the claim's short transaction.
//!
//! Ordering is per message key, within a destination: the rows of one
//! account (events), one person (notifications) or one endpoint (webhooks)
//! go one after the other in id order, and the first failure stops its key:
//! the failed row waits out its backoff and the later rows of its key wait
//! too, so no consumer sees a key's later row before an earlier one. A
//! failure holds back nothing else, and rows delivered before it are
//! recorded as delivered (never sent again). Payments keep no order at all:
//! each is its own payout, and one failing holds back no other. A row that
//! keeps failing is declared dead after `attempts_max` attempts and leaves
//! its key for an operator (see [`crate::admin`]).
//!
//! Destinations have lanes of their own ([`LANES`]), and the relay works
//! each destination's lanes in a loop of its own: a webhook endpoint that
//! is slow or down never holds back Kafka events, payouts or notifications.
//! Webhook rows that wait behind a failed one are pushed to its next
//! attempt (see [`record`]), so a claim reads only rows that may go.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rand::Rng as _;
use rand::seq::SliceRandom as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Lanes in the outbox; the generated `lane` column uses the same count.
/// Each destination has lanes of its own (events 0-63, payments 64-79,
/// notifications 80-87, webhooks 88-127).
pub const LANES: i32 = 128;

/// Each destination's lanes, worked by a loop of its own.
pub const EVENT_LANES: std::ops::Range<i32> = 0..64;
pub const PAYMENT_LANES: std::ops::Range<i32> = 64..80;
pub const NOTIFICATION_LANES: std::ops::Range<i32> = 80..88;
pub const WEBHOOK_LANES: std::ops::Range<i32> = 88..LANES;

/// The rows that wait per endpoint.
const WEBHOOKS: &str = "webhooks";
/// The rows that keep no order.
const PAYMENTS: &str = "payments";

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
    /// Earlier claims that may have delivered the row (before this one).
    pub claims_before: i32,
}

impl Row {
    /// Whether an earlier attempt may have reached the destination: one
    /// failed, or a claim took the row and recorded nothing (its relay
    /// died), or it was delivered before and reopened. Counted apart from
    /// `attempts`, which an operator's retry of a dead row resets.
    #[must_use]
    pub fn may_have_been_sent(&self) -> bool {
        self.attempts > 0 || self.claims_before > 0
    }

    fn order_key(&self) -> OrderKey<'_> {
        if self.destination == PAYMENTS {
            OrderKey::Alone(self.id)
        } else {
            OrderKey::Key(&self.destination, &self.message_key)
        }
    }
}

/// What a row's order is kept within: its message key in its destination,
/// or nothing (payments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OrderKey<'a> {
    Key(&'a str, &'a str),
    Alone(i64),
}

/// What a claim holds: rows in id order, leased to `token` until the lease
/// ends.
#[derive(Debug, Default)]
pub struct Claim {
    pub rows: Vec<Row>,
    /// How many lanes were locked; when it reaches the limit there may be
    /// more due lanes than one claim takes.
    pub lanes_locked: usize,
    pub token: Uuid,
}

/// A row `o` that may go now: pending, due, not leased, and (unless it is a
/// payment) its key's first pending row is neither waiting out a backoff
/// nor leased, unless it is that row. Rows are claimed in id order from
/// there, so a claim takes a prefix of each key's pending rows and an
/// earlier row of a key that waits or is in flight is its first one: one
/// index probe (`outbox_key_order`) decides.
const READY: &str = r"o.delivered_at is null and o.dead_at is null
    and coalesce(o.next_attempt_at, '-infinity'::timestamptz) <= now()
    and coalesce(o.claimed_until, '-infinity'::timestamptz) <= now()
    and (o.destination = 'payments' or not exists (
        select 1 from (
            select first.id, first.next_attempt_at, first.claimed_until from outbox first
            where first.destination = o.destination and first.message_key = o.message_key
              and first.delivered_at is null and first.dead_at is null
            order by first.id limit 1
        ) as first
        where first.id < o.id and (first.next_attempt_at > now() or first.claimed_until > now())))";

/// Claims up to `rows_max` rows that may go from up to `lanes_max` of
/// `lanes` (locked in random order, so relays side by side spread over the
/// lanes), leasing them for `lease_ms`, in a short transaction of its own.
///
/// # Errors
/// Database failures.
pub async fn claim(
    pool: &PgPool,
    lanes: std::ops::Range<i32>,
    lanes_max: usize,
    rows_max: i64,
    lease_ms: u64,
) -> sqlx::Result<Claim> {
    // Webhook rows: through the index of due webhook rows, whose predicate
    // needs the destination spelled out.
    let ready = if lanes.start >= WEBHOOK_LANES.start {
        format!("o.destination = 'webhooks' and {READY}")
    } else {
        READY.to_owned()
    };
    let mut transaction = pool.begin().await?;
    // Runtime, not a macro: the SQL is built with format! (READY, and the
    // webhook index's destination predicate for webhook lanes).
    let mut due_lanes: Vec<i32> = sqlx::query_scalar(&format!(
        r"select lanes.lane from generate_series($1, $2 - 1) as lanes (lane)
          where exists (select 1 from outbox o where o.lane = lanes.lane and {ready})"
    ))
    .bind(lanes.start)
    .bind(lanes.end)
    .fetch_all(&mut *transaction)
    .await?;
    due_lanes.shuffle(&mut rand::thread_rng());
    // One statement for every lane lock, not a round trip per lane: the
    // lanes are tried in the shuffled order and the tries stop at
    // `lanes_max` locks (the limit stops the scan; the volatile lock call
    // is evaluated row by row, never for rows past it).
    let locked: Vec<i16> = sqlx::query_scalar!(
        r#"select due.lane::int2 as "lane!" from unnest($2::int4[]) as due (lane)
          where pg_try_advisory_xact_lock($1, due.lane) limit $3"#,
        LANE_LOCK_CLASS,
        &due_lanes,
        i64::try_from(lanes_max).unwrap_or(i64::MAX),
    )
    .fetch_all(&mut *transaction)
    .await?;
    let token = Uuid::new_v4();
    if locked.is_empty() {
        return Ok(Claim { token, ..Claim::default() });
    }
    // Within a locked lane no other relay claims; SKIP LOCKED only keeps a
    // claim from queueing behind an operator's statement on the table.
    // Runtime, not a macro: the SQL is built with format! (see `due_lanes`).
    let rows: Vec<Row> = sqlx::query_as(&format!(
        r"select id, lane, destination, event_type, message_key, payload::text as payload, attempts,
                 claims as claims_before
          from outbox o
          where o.lane = any($1) and {ready}
          order by o.id limit $2
          for update skip locked"
    ))
    .bind(&locked)
    .bind(rows_max)
    .fetch_all(&mut *transaction)
    .await?;
    if !rows.is_empty() {
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        // `$2::bigint` first: bound as an integer (a bare `::double precision`
        // cast would make the macro type the parameter `f64`).
        sqlx::query!(
            r"update outbox set claimed_until = now() + make_interval(secs => $2::bigint::double precision / 1000),
                                claim_token = $3, claims = claims + 1
              where id = any($1)",
            &ids,
            i64::try_from(lease_ms).unwrap_or(i64::MAX),
            token,
        )
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(Claim { rows, lanes_locked: locked.len(), token })
}

/// What one attempt at a row came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Delivered, with the destination's answer to keep on the row (a
    /// payment's outcome).
    Answered {
        outcome: String,
    },
    /// `retry_after_ms`: the destination asked to wait at least this long.
    Failed {
        code: String,
        error: String,
        retry_after_ms: Option<u64>,
    },
    /// Not attempted (behind a failure of its key, out of time for the
    /// lease, or the destination's breaker is open): left pending, to be
    /// sent again in order.
    HeldBack,
}

impl Attempt {
    /// A failed attempt, with its stable `code`, what went wrong, and how
    /// long the destination asked to wait, if it did.
    #[must_use]
    pub fn failed(code: &str, error: &str, retry_after_ms: Option<u64>) -> Self {
        Self::Failed { code: code.to_owned(), error: error.to_owned(), retry_after_ms }
    }

    fn delivered(&self) -> bool {
        matches!(self, Attempt::Delivered | Attempt::Answered { .. })
    }
}

/// Delivers a claim's rows with `deliver`, keeping each key's order.
///
/// The rows of one key go one after the other (a Kafka send too: the next
/// is handed to the producer only once the previous is acknowledged, so a
/// failure, local or remote, can never let a later row of the key reach
/// Kafka ahead of it), keys side by side; a key stops at its first row that
/// fails or is held back, and the rest of it is held back. Payments all go
/// side by side. No row is started after `start_deadline`, so every
/// delivery ends while the claim's lease holds.
pub async fn deliver_in_order<'a, F, Fut>(rows: &'a [Row], start_deadline: Instant, deliver: F) -> Vec<Attempt>
where
    F: Fn(&'a Row) -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut keys: Vec<Vec<usize>> = Vec::new();
    let mut key_of: HashMap<OrderKey<'a>, usize> = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        let slot = *key_of.entry(row.order_key()).or_insert_with(|| {
            keys.push(Vec::new());
            keys.len() - 1
        });
        keys[slot].push(index);
    }
    let deliver = &deliver;
    let per_key = keys.into_iter().map(|indexes| async move {
        let mut done = Vec::with_capacity(indexes.len());
        for index in indexes {
            if Instant::now() >= start_deadline {
                break;
            }
            let attempt = deliver(&rows[index]).await;
            let stop = !attempt.delivered();
            done.push((index, attempt));
            if stop {
                break;
            }
        }
        done
    });
    let mut results = vec![Attempt::HeldBack; rows.len()];
    for (index, attempt) in futures::future::join_all(per_key).await.into_iter().flatten() {
        results[index] = attempt;
    }
    results
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

/// Records the attempts of a claim, in the caller's (short) transaction,
/// for the rows the claim still holds, and ends their lease. A row whose
/// lease ran out and that another relay claimed since is left to it. Rows
/// held back are handed back as they were, their claim not counted.
///
/// # Errors
/// Database failures.
pub async fn record(
    connection: &mut PgConnection,
    claim: &Claim,
    attempts: &[Attempt],
    policy: &RetryPolicy,
) -> sqlx::Result<Recorded> {
    let mut counts = Counts::default();
    let (rows, attempts) = still_held(connection, claim, attempts).await?;
    // Endpoints reached first: a delivery and a death of the same endpoint in
    // one claim must not leave it disabled.
    mark_endpoints_reached(connection, &rows, &attempts).await?;
    let (mut delivered, mut outcomes, mut held_back): (Vec<i64>, Vec<Option<String>>, Vec<i64>) =
        (Vec::new(), Vec::new(), Vec::new());
    for (row, attempt) in rows.iter().zip(attempts.iter().copied()) {
        match attempt {
            Attempt::Delivered => {
                delivered.push(row.id);
                outcomes.push(None);
            }
            Attempt::Answered { outcome } => {
                delivered.push(row.id);
                outcomes.push(Some(outcome.clone()));
            }
            Attempt::HeldBack => {
                counts.held_back += 1;
                held_back.push(row.id);
            }
            Attempt::Failed { code, error, retry_after_ms } => {
                let dead = record_failure(connection, row, code, error, *retry_after_ms, policy).await?;
                if dead {
                    counts.dead += 1;
                } else {
                    counts.failed += 1;
                }
            }
        }
    }
    mark_delivered(connection, &delivered, &outcomes).await?;
    hand_back(connection, &held_back).await?;
    counts.delivered = delivered.len();
    let published = rows
        .iter()
        .zip(&attempts)
        .filter(|(row, attempt)| row.destination == "events" && attempt.delivered())
        .map(|(row, _)| row.id)
        .collect();
    Ok(Recorded { counts, published })
}

/// The rows of `claim` (with their attempts) that the claim still holds,
/// locked until the caller's transaction ends.
async fn still_held<'a>(
    connection: &mut PgConnection,
    claim: &'a Claim,
    attempts: &'a [Attempt],
) -> sqlx::Result<(Vec<&'a Row>, Vec<&'a Attempt>)> {
    let ids: Vec<i64> = claim.rows.iter().map(|row| row.id).collect();
    let held: HashSet<i64> = sqlx::query_scalar!(
        "select id from outbox where id = any($1) and claim_token = $2 for update",
        &ids,
        claim.token
    )
    .fetch_all(&mut *connection)
    .await?
    .into_iter()
    .collect();
    let (rows, attempts): (Vec<&Row>, Vec<&Attempt>) =
        claim.rows.iter().zip(attempts).filter(|(row, _)| held.contains(&row.id)).unzip();
    if rows.len() < claim.rows.len() {
        tracing::warn!(
            lost = claim.rows.len() - rows.len(),
            "the lease on some claimed rows ran out before their outcome was recorded; another relay has them"
        );
    }
    Ok((rows, attempts))
}

/// Marks the webhook endpoints that took a delivery as delivered to (and no
/// longer failing).
async fn mark_endpoints_reached(
    connection: &mut PgConnection,
    rows: &[&Row],
    attempts: &[&Attempt],
) -> sqlx::Result<()> {
    let reached: Vec<uuid::Uuid> = rows
        .iter()
        .zip(attempts)
        .filter(|(row, attempt)| row.destination == WEBHOOKS && attempt.delivered())
        .filter_map(|(row, _)| row.message_key.parse().ok())
        .collect();
    if !reached.is_empty() {
        // Only live endpoints: rows of a removed or disabled one are dropped,
        // not delivered.
        sqlx::query!(
            r"update webhook_endpoints set last_delivered_at = now(), failing_since = null
              where id = any($1) and disabled_at is null",
            &reached,
        )
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Records a failed attempt of `row`: its next attempt after the backoff
/// (or the answer's `Retry-After`, if longer), or its death after
/// `attempts_max`; for a webhook, the endpoint's failure and the wait of its
/// later rows. Whether the row died.
async fn record_failure(
    connection: &mut PgConnection,
    row: &Row,
    code: &str,
    error: &str,
    retry_after_ms: Option<u64>,
    policy: &RetryPolicy,
) -> sqlx::Result<bool> {
    let attempts = row.attempts.saturating_add(1);
    let dead = attempts >= policy.attempts_max;
    let backoff_ms = i64::try_from(policy.backoff_ms(attempts).max(retry_after_ms.unwrap_or(0))).unwrap_or(i64::MAX);
    if dead {
        tracing::error!(outbox_id = row.id, attempts, code, error, "outbox row is dead; an operator must retry it");
    } else {
        tracing::warn!(outbox_id = row.id, attempts, code, error, backoff_ms, "delivering an outbox row failed");
    }
    sqlx::query!(
        r"update outbox set attempts = $2, last_error = $3, last_error_code = $4,
              next_attempt_at = now() + make_interval(secs => $5::bigint::double precision / 1000),
              dead_at = case when $6 then now() end,
              claimed_until = null, claim_token = null
          where id = $1",
        row.id,
        attempts,
        error,
        code,
        backoff_ms,
        dead,
    )
    .execute(&mut *connection)
    .await?;
    if row.destination == WEBHOOKS && !RELAY_SIDE_CODES.contains(&code) {
        endpoint_failed(connection, row, dead, policy.webhook_disable_after_s).await?;
    }
    if row.destination == WEBHOOKS && !dead {
        // The endpoint's later rows wait as long: not due, they
        // cost a claim nothing and leave the lane to the others.
        sqlx::query!(
            r"update outbox later set next_attempt_at = failed.next_attempt_at
              from outbox failed
              where failed.id = $1 and later.destination = 'webhooks'
                and later.message_key = failed.message_key and later.id > failed.id
                and later.delivered_at is null and later.dead_at is null
                and (later.next_attempt_at is null or later.next_attempt_at < failed.next_attempt_at)",
            row.id,
        )
        .execute(&mut *connection)
        .await?;
    }
    Ok(dead)
}

/// Marks the rows `delivered`, each with its provider's outcome (if any).
async fn mark_delivered(
    connection: &mut PgConnection,
    delivered: &[i64],
    outcomes: &[Option<String>],
) -> sqlx::Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    // A delivered notification's payload is blanked: it holds a person's
    // address and a single-use secret (a reset token) that must not
    // outlive its delivery in a table many can read.
    sqlx::query!(
        r#"update outbox o set delivered_at = now(), attempts = attempts + 1, next_attempt_at = null,
                               claimed_until = null, claim_token = null, outcome = done.outcome,
                               payload = case when destination = 'notifications'
                                              then '{"redacted": true}'::json else payload end
           from unnest($1::bigint[], $2::text[]) as done (id, outcome)
           where o.id = done.id"#,
        delivered,
        // The macros type a `text[]` parameter as `&[String]`; its
        // elements may be null here (rows delivered with no outcome).
        outcomes as &[Option<String>],
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Hands rows held back to the next claim as they were: not attempted, so
/// their claim is not counted.
async fn hand_back(connection: &mut PgConnection, held_back: &[i64]) -> sqlx::Result<()> {
    if held_back.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r"update outbox set claimed_until = null, claim_token = null, claims = greatest(claims - 1, 0)
          where id = any($1)",
        held_back,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// What [`record`] recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub counts: Counts,
    /// The events recorded as published (by outbox id), to fan out to
    /// webhooks in the same transaction: only rows the claim still held,
    /// so a relay whose lease ran out fans nothing out twice.
    pub published: Vec<i64>,
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
    sqlx::query!(
        "update webhook_endpoints set failing_since = coalesce(failing_since, now()) where id = $1 and disabled_at is null",
        endpoint_id,
    )
    .execute(&mut *connection)
    .await?;
    if !dead {
        return Ok(());
    }
    let disabled = sqlx::query!(
        r"update webhook_endpoints set disabled_at = now(), disabled_reason = 'failing'
          where id = $1 and disabled_at is null
            and failing_since < now() - make_interval(secs => $2::bigint::double precision)",
        endpoint_id,
        i64::try_from(after_s).unwrap_or(i64::MAX),
    )
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
    let deleted = sqlx::query!(
        r"delete from outbox where id in (
              select id from outbox
              where delivered_at is not null and delivered_at < now() - make_interval(secs => $1::bigint::double precision)
              order by delivered_at limit $2
              for update skip locked)",
        retention_s,
        batch_max,
    )
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

    fn row(id: i64, destination: &str, key: &str) -> Row {
        Row {
            id,
            lane: 3,
            destination: destination.into(),
            event_type: "transfer.completed".into(),
            message_key: key.into(),
            payload: "{}".into(),
            attempts: 0,
            claims_before: 0,
        }
    }

    fn failed() -> Attempt {
        Attempt::Failed { code: "kafka:MessageSizeTooLarge".into(), error: "too large".into(), retry_after_ms: None }
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3_600)
    }

    /// Delivers `rows`, failing the ids in `failing`; the results and the
    /// ids in the order they were sent.
    async fn run(rows: &[Row], failing: &[i64], deadline: Instant) -> (Vec<Attempt>, Vec<i64>) {
        let calls = std::sync::Mutex::new(Vec::new());
        let results = deliver_in_order(rows, deadline, |row| {
            let calls = &calls;
            async move {
                tokio::task::yield_now().await;
                calls.lock().expect("calls").push(row.id);
                if failing.contains(&row.id) { failed() } else { Attempt::Delivered }
            }
        })
        .await;
        (results, calls.into_inner().expect("calls"))
    }

    #[tokio::test]
    async fn a_failure_stops_its_own_key_and_what_went_before_it_stays_delivered() {
        let rows = vec![
            row(1, "events", "a"),
            row(2, "events", "b"),
            row(3, "events", "a"),
            row(4, "events", "a"),
            row(5, "events", "b"),
        ];
        let (results, sent) = run(&rows, &[3], later()).await;
        assert_eq!(
            results,
            vec![Attempt::Delivered, Attempt::Delivered, failed(), Attempt::HeldBack, Attempt::Delivered],
            "key a stops at row 3; key b, in the same lane, does not"
        );
        assert!(!sent.contains(&4), "row 4 was never sent after row 3 failed");
        let key_a: Vec<i64> = sent.iter().copied().filter(|id| [1, 3, 4].contains(id)).collect();
        assert_eq!(key_a, vec![1, 3], "in order");
    }

    #[tokio::test]
    async fn payments_keep_no_order_one_failing_holds_back_none() {
        let rows = vec![row(1, "payments", "acct"), row(2, "payments", "acct"), row(3, "payments", "acct")];
        let (results, _) = run(&rows, &[1], later()).await;
        assert_eq!(results, vec![failed(), Attempt::Delivered, Attempt::Delivered]);
    }

    #[tokio::test]
    async fn nothing_starts_after_the_deadline() {
        let rows = vec![row(1, "webhooks", "endpoint"), row(2, "payments", "acct")];
        let (results, sent) = run(&rows, &[], Instant::now()).await;
        assert_eq!(results, vec![Attempt::HeldBack, Attempt::HeldBack]);
        assert!(sent.is_empty());
    }

    #[test]
    fn a_row_may_have_been_sent_after_a_failure_or_an_earlier_claim() {
        let fresh = row(1, "payments", "acct");
        assert!(!fresh.may_have_been_sent());
        assert!(Row { attempts: 1, ..fresh.clone() }.may_have_been_sent());
        assert!(Row { claims_before: 1, ..fresh }.may_have_been_sent(), "e.g. retried by an operator after dying");
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
