//! Accounts as every audience sees them: the view (balance, held,
//! available, formatted in the currency's decimals), the lookup that answers
//! 404 for an account the caller may not see, and the deposit command.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{AccountDeposited, V1};
use schemas::{AccountId, Command, Currency, Money, TransferId};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::Requester;
use crate::error::ApiError;

/// An amount at its currency's scale, as a string ("12.50", "1000" for JPY).
#[must_use]
pub(crate) fn format_amount(value: Decimal, currency: Currency) -> String {
    let mut value = value;
    value.rescale(currency.minor_unit_scale());
    value.to_string()
}

pub(crate) fn parse_currency(code: &str) -> Result<Currency, ApiError> {
    code.trim()
        .parse()
        .map_err(|error: schemas::MoneyError| ApiError::Internal(anyhow::anyhow!("stored currency: {error}")))
}

/// An account and its balances, as decimal strings in its currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AccountView {
    id: Uuid,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    status: String,
    /// The ledger balance: every completed entry.
    balance: String,
    /// Reserved by holds; not spendable.
    held: String,
    /// What may be spent now: balance − held + overdraft limit.
    available: String,
    overdraft_limit: String,
    created_at: DateTime<Utc>,
}

pub(crate) struct AccountRow {
    pub(crate) id: Uuid,
    pub(crate) currency: String,
    pub(crate) status: String,
    pub(crate) balance: Decimal,
    pub(crate) held: Decimal,
    pub(crate) overdraft_limit: Decimal,
    pub(crate) created_at: DateTime<Utc>,
}

impl AccountRow {
    pub(crate) fn view(self) -> Result<AccountView, ApiError> {
        let currency = parse_currency(&self.currency)?;
        Ok(AccountView {
            id: self.id,
            currency,
            status: self.status,
            balance: format_amount(self.balance, currency),
            held: format_amount(self.held, currency),
            available: format_amount(self.balance - self.held + self.overdraft_limit, currency),
            overdraft_limit: format_amount(self.overdraft_limit, currency),
            created_at: self.created_at,
        })
    }
}

/// Reads an account: one `owner` opened, or any with `None` (staff). An
/// account of someone else, or one that does not exist, is the same 404
/// (no existence leak).
pub(crate) async fn find_account(
    state: &AppState,
    account_id: Uuid,
    owner: Option<Requester>,
) -> Result<AccountRow, ApiError> {
    let (client_id, user_id) = match owner {
        Some(Requester::Client(id)) => (Some(id), None),
        Some(Requester::User(id)) => (None, Some(id)),
        None => (None, None),
    };
    sqlx::query_as!(
        AccountRow,
        r"select id, currency, status, balance, held, overdraft_limit, created_at from accounts
          where id = $1 and ($2::uuid is null or owner_client_id = $2) and ($3::uuid is null or owner_user_id = $3)",
        account_id,
        client_id,
        user_id,
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("account_not_found", "no such account"))
}

/// An `account.deposited` command, and the canonical form of its request.
#[must_use]
pub(crate) fn deposit_command(transfer_id: TransferId, account_id: Uuid, money: Money) -> (Command, serde_json::Value) {
    let command = Command::AccountDeposited(AccountDeposited {
        version: V1,
        transfer_id,
        account_id: AccountId::from_uuid(account_id),
        money,
        requested_at: Utc::now(),
    });
    let canonical = serde_json::json!({
        "kind": "deposit",
        "account_id": account_id,
        "amount": money.amount().to_string(),
        "currency": money.currency(),
    });
    (command, canonical)
}
