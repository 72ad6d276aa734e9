//! The payment provider's outcomes of payouts, as recorded by the outbox
//! relay and ingest's provider callbacks, and the operator's view of the
//! payouts whose outcomes contradict each other.
//!
//! Recording an outcome is what authenticates it: the processor settles a
//! payout's hold on a `payout.outcome` command only when the same result is
//! in `payout_outcomes`, and only the relay and ingest write there (upstream
//! apps publish commands but never reach the database).

use chrono::{DateTime, Utc};
use schemas::TransferId;
use schemas::messages::PayoutResult;
use sqlx::PgPool;
use uuid::Uuid;

/// Who heard the provider's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The relay: the provider's answer to a payment order or a status lookup.
    Relay,
    /// Ingest: the provider's signed callback.
    Callback,
}

impl Origin {
    fn code(self) -> &'static str {
        match self {
            Origin::Relay => "relay",
            Origin::Callback => "callback",
        }
    }
}

/// Records the provider's `result` of a payout, before the `payout.outcome`
/// command that settles it is published. Recording the same result again is
/// a no-op (the first report is kept).
///
/// # Errors
/// Database errors: the caller must not publish the command then.
pub async fn record_outcome(
    pool: &PgPool,
    payment_id: TransferId,
    result: PayoutResult,
    origin: Origin,
    provider_reference: Option<&str>,
    provider_code: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r"insert into payout_outcomes (payment_id, result, origin, provider_reference, provider_code)
          values ($1, $2, $3, $4, $5)
          on conflict (payment_id, result) do nothing",
        payment_id.as_uuid(),
        result.code(),
        origin.code(),
        provider_reference,
        provider_code,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A payout the provider reported both paid and refused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conflict {
    pub payment_id: Uuid,
    pub source_account_id: Option<Uuid>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    /// The payout's status in the ledger: `posted` or `voided`.
    pub ledger_status: String,
    pub settled_reported_at: DateTime<Utc>,
    pub rejected_reported_at: DateTime<Utc>,
    pub rejected_code: Option<String>,
}

/// The payouts with contradicting outcomes, newest report first: each needs
/// an operator to reconcile with the provider (money paid out and given
/// back, or debited and not paid).
///
/// # Errors
/// Database errors.
pub async fn conflicts(pool: &PgPool, limit: i64) -> Result<Vec<Conflict>, sqlx::Error> {
    // A payout's transfer row exists before any outcome can be recorded
    // for it (its payment order comes from the same transaction), hence
    // the `!` on its status.
    sqlx::query_as!(
        Conflict,
        r#"select settled.payment_id, t.source_account_id as "source_account_id?", t.amount::text as "amount?",
                 t.currency as "currency?", t.status as "ledger_status!",
                 settled.reported_at as settled_reported_at, rejected.reported_at as rejected_reported_at,
                 rejected.provider_code as rejected_code
          from payout_outcomes settled
          join payout_outcomes rejected on rejected.payment_id = settled.payment_id and rejected.result = 'rejected'
          left join transfers t on t.id = settled.payment_id
          where settled.result = 'settled'
          order by greatest(settled.reported_at, rejected.reported_at) desc
          limit $1"#,
        limit,
    )
    .fetch_all(pool)
    .await
}
