//! Retention: the tables ingest writes would otherwise grow forever.
//!
//! Every `interval_s` one statement per table deletes (or, for dead
//! notifications, redacts) at most `batch_max` rows past their retention,
//! found through an index on the time column, so a round costs the same
//! whatever the table's size; a backlog drains over several rounds. Rows
//! are claimed `for update skip locked`, so several ingest instances prune
//! side by side without waiting on each other.
//!
//! - `accepted_requests` after `accepted_requests_retention_s`. The ledger
//!   keeps every decision: a client retrying with a key whose record is
//!   gone publishes the same command id again, which the processor knows
//!   (a no-op, or `idempotency_key_reused` for another body). Only the
//!   status route forgets it.
//! - `audit_log` after `audit_retention_s` (years, by bank policy).
//! - `refresh_tokens` and `password_resets` once expired for
//!   `expired_tokens_grace_s`: an expired token opens nothing, the grace
//!   keeps it for investigating a reuse. `staff_sessions` the same, counted
//!   from the longest a session can live.
//! - Dead notifications (`outbox` rows to the notification service that ran
//!   out of attempts) carry a password-reset token in clear: their token is
//!   redacted `dead_notification_redact_after_s` after they died (by then
//!   the token has expired, so a retry could only mail a dead link). The
//!   relay prunes delivered rows itself.
//!
//! Touches only those tables; never the ledger's.

use std::time::Duration;

use platform::CancellationToken;
use sqlx::PgPool;

/// How long each kind of row is kept, and how pruning paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `LEDGERLINE_ACCEPTED_REQUESTS_RETENTION_S`: recorded HTTP requests
    /// (idempotency keys and the status route), 90 days.
    pub accepted_requests_retention_s: u64,
    /// `LEDGERLINE_AUDIT_RETENTION_S`: security events, 7 years.
    pub audit_retention_s: u64,
    /// `LEDGERLINE_EXPIRED_TOKENS_GRACE_S`: refresh tokens and password
    /// resets are kept this long after they expire, 30 days.
    pub expired_tokens_grace_s: u64,
    /// `LEDGERLINE_DEAD_NOTIFICATION_REDACT_AFTER_S`: a dead notification's
    /// token is redacted this long after it died, 1 hour (above the reset
    /// token's 30-minute lifetime).
    pub dead_notification_redact_after_s: u64,
    /// `LEDGERLINE_RETENTION_INTERVAL_S`: time between pruning rounds, 5 minutes.
    pub interval_s: u64,
    /// `LEDGERLINE_RETENTION_BATCH_MAX`: rows one statement removes at most.
    pub batch_max: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            accepted_requests_retention_s: 90 * DAY_S,
            audit_retention_s: 7 * 365 * DAY_S,
            expired_tokens_grace_s: 30 * DAY_S,
            dead_notification_redact_after_s: 3_600,
            interval_s: 300,
            batch_max: 10_000,
        }
    }
}

const DAY_S: u64 = 24 * 3_600;

impl RetentionConfig {
    /// # Errors
    /// When a variable is malformed or out of its range.
    pub fn from_env() -> Result<Self, platform::config::ConfigError> {
        use platform::config::limit;
        let defaults = Self::default();
        Ok(Self {
            accepted_requests_retention_s: limit(
                "LEDGERLINE_ACCEPTED_REQUESTS_RETENTION_S",
                defaults.accepted_requests_retention_s,
                DAY_S..=10 * 365 * DAY_S,
            )?,
            audit_retention_s: limit(
                "LEDGERLINE_AUDIT_RETENTION_S",
                defaults.audit_retention_s,
                30 * DAY_S..=30 * 365 * DAY_S,
            )?,
            expired_tokens_grace_s: limit(
                "LEDGERLINE_EXPIRED_TOKENS_GRACE_S",
                defaults.expired_tokens_grace_s,
                0..=365 * DAY_S,
            )?,
            dead_notification_redact_after_s: limit(
                "LEDGERLINE_DEAD_NOTIFICATION_REDACT_AFTER_S",
                defaults.dead_notification_redact_after_s,
                60..=30 * DAY_S,
            )?,
            interval_s: limit("LEDGERLINE_RETENTION_INTERVAL_S", defaults.interval_s, 1..=DAY_S)?,
            batch_max: limit("LEDGERLINE_RETENTION_BATCH_MAX", defaults.batch_max, 1..=1_000_000)?,
        })
    }
}

/// The longest a staff session can live (the ceiling of
/// `LEDGERLINE_DASHBOARD_ABSOLUTE_TIMEOUT_S`).
const STAFF_SESSION_LIFETIME_MAX_S: u64 = 7 * DAY_S;

/// Rows one round removed or redacted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub accepted_requests: u64,
    pub audit_log: u64,
    pub refresh_tokens: u64,
    pub password_resets: u64,
    pub staff_sessions: u64,
    pub dead_notifications_redacted: u64,
}

/// Prunes every `interval_s` until `shutdown`; a failed round is logged and
/// the next one tries again.
pub(crate) async fn run(config: RetentionConfig, pool: PgPool, shutdown: CancellationToken) {
    let interval = Duration::from_secs(config.interval_s);
    loop {
        match prune_once(&pool, &config).await {
            Ok(pruned) if pruned != Pruned::default() => tracing::info!(?pruned, "pruned rows past their retention"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "pruning rows past their retention"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One round: one statement per table, each at most `batch_max` rows.
///
/// # Errors
/// When a statement fails.
pub(crate) async fn prune_once(pool: &PgPool, config: &RetentionConfig) -> anyhow::Result<Pruned> {
    let delete = |sql, retention_s, what| statement(pool, sql, retention_s, config.batch_max, what);
    Ok(Pruned {
        accepted_requests: delete(
            r"delete from accepted_requests where transfer_id in (
                  select transfer_id from accepted_requests where created_at < now() - make_interval(secs => $1)
                  order by created_at limit $2 for update skip locked)",
            config.accepted_requests_retention_s,
            "accepted requests",
        )
        .await?,
        audit_log: delete(
            r"delete from audit_log where id in (
                  select id from audit_log where at < now() - make_interval(secs => $1)
                  order by at limit $2 for update skip locked)",
            config.audit_retention_s,
            "the audit log",
        )
        .await?,
        refresh_tokens: delete(
            r"delete from refresh_tokens where id in (
                  select id from refresh_tokens where expires_at < now() - make_interval(secs => $1)
                  order by expires_at limit $2 for update skip locked)",
            config.expired_tokens_grace_s,
            "refresh tokens",
        )
        .await?,
        password_resets: delete(
            r"delete from password_resets where id in (
                  select id from password_resets where expires_at < now() - make_interval(secs => $1)
                  order by expires_at limit $2 for update skip locked)",
            config.expired_tokens_grace_s,
            "password resets",
        )
        .await?,
        // A staff session ends at most a week after sign-in (the absolute
        // timeout's ceiling); kept for the grace after that, like tokens.
        staff_sessions: delete(
            r"delete from staff_sessions where id in (
                  select id from staff_sessions where created_at < now() - make_interval(secs => $1)
                  order by created_at limit $2 for update skip locked)",
            config.expired_tokens_grace_s.saturating_add(STAFF_SESSION_LIFETIME_MAX_S),
            "staff sessions",
        )
        .await?,
        // Dead rows are few and have an index of their own (outbox_dead).
        dead_notifications_redacted: delete(
            r#"update outbox set payload = jsonb_set(payload::jsonb, '{token}', '"redacted"')::json
              where id in (
                  select id from outbox
                  where dead_at is not null and delivered_at is null and destination = 'notifications'
                    and dead_at < now() - make_interval(secs => $1)
                    and payload::jsonb ->> 'token' <> 'redacted'
                  order by id limit $2 for update skip locked)"#,
            config.dead_notification_redact_after_s,
            "dead notifications",
        )
        .await?,
    })
}

/// Runs one pruning statement: `$1` the retention in seconds, `$2` the batch.
/// A runtime query, not a macro: one function runs every table's statement
/// (each a `&'static str` above), which a macro cannot take as an argument.
async fn statement(
    pool: &PgPool,
    sql: &'static str,
    retention_s: u64,
    batch_max: i64,
    what: &str,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let retention_s = f64::from(u32::try_from(retention_s).unwrap_or(u32::MAX));
    Ok(sqlx::query(sql)
        .bind(retention_s)
        .bind(batch_max)
        .execute(pool)
        .await
        .with_context(|| format!("pruning {what}"))?
        .rows_affected())
}
