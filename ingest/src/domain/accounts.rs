//! Accounts as every audience sees them: the view (balance, held,
//! available, formatted in the currency's decimals), the lookup that answers
//! 404 for an account the caller may not see, the deposit command, and the
//! staff's status changes (freeze, unfreeze, close) the API and the
//! dashboard request the same way.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{AccountDeposited, AccountStatusCommand, V1};
use schemas::{AccountId, Command, Currency, IdempotencyKey, Money, Operation, TransferId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{self, Accepted, Requester};
use crate::domain::audit;
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

// A deposit's body, as API clients and staff send it (a plain comment: a
// doc comment would become the schema's description in openapi.json).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DepositRequest {
    /// A positive decimal string, at most the currency's minor units.
    #[schema(example = "100.00")]
    amount: String,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
}

impl DepositRequest {
    /// # Errors
    /// 422 when the amount is not a positive amount of the currency.
    pub(crate) fn money(&self) -> Result<Money, ApiError> {
        crate::domain::transfers::parse_money(&self.amount, self.currency)
    }
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

/// A change of an account's status that staff request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusChange {
    Freeze,
    Unfreeze,
    Close,
}

impl StatusChange {
    /// The name in requests, forms and the canonical request.
    #[must_use]
    pub(crate) fn name(self) -> &'static str {
        match self {
            StatusChange::Freeze => "freeze",
            StatusChange::Unfreeze => "unfreeze",
            StatusChange::Close => "close",
        }
    }

    #[must_use]
    pub(crate) fn parse(name: &str) -> Option<Self> {
        [StatusChange::Freeze, StatusChange::Unfreeze, StatusChange::Close]
            .into_iter()
            .find(|change| change.name() == name)
    }

    fn audit_action(self) -> &'static str {
        match self {
            StatusChange::Freeze => "account.freeze_requested",
            StatusChange::Unfreeze => "account.unfreeze_requested",
            StatusChange::Close => "account.close_requested",
        }
    }
}

/// Requests a status change of `account_id` by staff member `staff_id`
/// (whose permission the caller checked): the command is derived from the
/// staff member and `key` (a retry is the same command), accepted like a
/// transfer, published, and audited. The processor decides it; its id is
/// the returned one.
///
/// # Errors
/// 404 for an unknown account; the acceptance's errors.
pub(crate) async fn request_status_change(
    state: &AppState,
    staff_id: Uuid,
    peer: SocketAddr,
    request_id: &str,
    key: &IdempotencyKey,
    account_id: Uuid,
    change: StatusChange,
) -> Result<(Uuid, Accepted), ApiError> {
    let build: fn(AccountStatusCommand) -> Command = match change {
        StatusChange::Freeze => Command::AccountFrozen,
        StatusChange::Unfreeze => Command::AccountUnfrozen,
        StatusChange::Close => Command::AccountClosed,
    };
    find_account(state, account_id, None).await?;
    let command_id = TransferId::derive(Operation::AccountStatus, staff_id, key).as_uuid();
    let command = build(AccountStatusCommand {
        version: V1,
        command_id,
        account_id: AccountId::from_uuid(account_id),
        requested_at: Utc::now(),
    });
    let action = change.name();
    let canonical = serde_json::json!({ "kind": action, "account_id": account_id });
    let accepted = acceptance::accept(state, Requester::User(staff_id), key, &command, canonical, request_id).await?;
    tracing::info!(user_id = %staff_id, %account_id, action, "account status change requested");
    audit::record(
        state,
        audit::Event::by_staff(
            change.audit_action(),
            staff_id,
            peer,
            request_id,
            serde_json::json!({ "account_id": account_id, "command_id": command_id }),
        ),
    )
    .await;
    Ok((command_id, accepted))
}
