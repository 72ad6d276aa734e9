//! Accounts as every audience sees them: the view (balance, held,
//! available, formatted in the currency's decimals), the lookup that answers
//! 404 for an account the caller may not see, the deposit command, the
//! staff's status changes (freeze, unfreeze, close) the API and the
//! dashboard request the same way, and spending limits, which API clients
//! and staff set the same way.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::messages::{AccountDeposited, AccountSpendingLimitsSet, AccountStatusCommand, SpendingLimits, V1};
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
    /// The most one transfer, hold or payout may debit; absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "500.00")]
    per_transfer_max: Option<String>,
    /// The most the account may debit in any 24 hours, pending holds
    /// included; absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "2000.00")]
    rolling_24h_max: Option<String>,
    created_at: DateTime<Utc>,
}

pub(crate) struct AccountRow {
    pub(crate) id: Uuid,
    pub(crate) currency: String,
    pub(crate) status: String,
    pub(crate) balance: Decimal,
    pub(crate) held: Decimal,
    pub(crate) overdraft_limit: Decimal,
    pub(crate) per_transfer_max: Option<Decimal>,
    pub(crate) rolling_24h_max: Option<Decimal>,
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
            per_transfer_max: self.per_transfer_max.map(|max| format_amount(max, currency)),
            rolling_24h_max: self.rolling_24h_max.map(|max| format_amount(max, currency)),
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
        r"select id, currency, status, balance, held, overdraft_limit, per_transfer_max, rolling_24h_max, created_at
          from accounts
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

// Spending limits as API clients and staff send them (a plain comment: a
// doc comment would become the schema's description).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpendingLimitsRequest {
    /// The most one transfer, hold or payout may debit, in the account's
    /// currency; absent removes the limit.
    #[serde(default)]
    #[schema(nullable = false, example = "500.00", pattern = r"^[0-9]{1,20}(\.[0-9]{1,4})?$")]
    per_transfer_max: Option<String>,
    /// The most the account may debit in any 24 hours, pending holds
    /// included; absent removes the limit.
    #[serde(default)]
    #[schema(nullable = false, example = "2000.00", pattern = r"^[0-9]{1,20}(\.[0-9]{1,4})?$")]
    rolling_24h_max: Option<String>,
}

/// Who sets an account's spending limits: an API client on its own
/// account, or a staff member (audited) on any.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LimitSetter {
    Client(Uuid),
    Staff { staff_id: Uuid, peer: SocketAddr },
}

/// Requests new spending limits for `account_id` (replacing its own): an
/// `account.spending_limits_set` command derived from the setter and `key`,
/// accepted like a transfer. The processor applies it under the account's
/// lock, so no debit decided after it escapes it.
///
/// # Errors
/// 404 for an account the setter may not see; 422 for a malformed amount;
/// the acceptance's errors.
pub(crate) async fn request_spending_limits(
    state: &AppState,
    setter: LimitSetter,
    request_id: &str,
    key: &IdempotencyKey,
    account_id: Uuid,
    request: &SpendingLimitsRequest,
) -> Result<Accepted, ApiError> {
    let (requester, owner) = match setter {
        LimitSetter::Client(client_id) => (Requester::Client(client_id), Some(Requester::Client(client_id))),
        LimitSetter::Staff { staff_id, .. } => (Requester::User(staff_id), None),
    };
    let account = find_account(state, account_id, owner).await?;
    let currency = parse_currency(&account.currency)?;
    let limit = |amount: &Option<String>| {
        amount.as_deref().map(|amount| crate::domain::transfers::parse_money(amount, currency)).transpose()
    };
    let limits = SpendingLimits {
        per_transfer_max: limit(&request.per_transfer_max)?,
        rolling_24h_max: limit(&request.rolling_24h_max)?,
    };
    let setter_id = match requester {
        Requester::Client(id) | Requester::User(id) => id,
    };
    let command_id = TransferId::derive(Operation::SpendingLimits, setter_id, key).as_uuid();
    let command = Command::AccountSpendingLimitsSet(AccountSpendingLimitsSet {
        version: V1,
        command_id,
        account_id: AccountId::from_uuid(account_id),
        limits,
        requested_at: Utc::now(),
    });
    let canonical = serde_json::json!({
        "kind": "spending_limits",
        "account_id": account_id,
        "currency": currency,
        "per_transfer_max": limits.per_transfer_max.map(|money| money.amount().to_string()),
        "rolling_24h_max": limits.rolling_24h_max.map(|money| money.amount().to_string()),
    });
    let accepted = acceptance::accept(state, requester, key, &command, canonical.clone(), request_id).await?;
    tracing::info!(%account_id, %command_id, "spending limits requested");
    if let LimitSetter::Staff { staff_id, peer } = setter {
        audit::record(
            state,
            audit::Event::by_staff(
                "account.spending_limits_requested",
                staff_id,
                peer,
                request_id,
                serde_json::json!({ "account_id": account_id, "command_id": command_id, "limits": canonical }),
            ),
        )
        .await;
    }
    Ok(accepted)
}

/// A client moves money only out of its own accounts; the processor checks
/// everything else (existence of the destination, currency, funds). An
/// account's owner never changes, so a yes is remembered.
///
/// # Errors
/// 404 `account_not_found` when the account is not the client's.
pub(crate) async fn require_client_source(state: &AppState, client_id: Uuid, account_id: Uuid) -> Result<(), ApiError> {
    let owners = &state.acceptances.owners;
    if owners.is_owner(account_id, client_id) {
        return Ok(());
    }
    let owns_source = sqlx::query_scalar!(
        r#"select exists (select 1 from accounts where id = $1 and owner_client_id = $2) as "owns_source!""#,
        account_id,
        client_id,
    )
    .fetch_one(&state.pool)
    .await?;
    if !owns_source {
        return Err(ApiError::not_found("account_not_found", "no such source account"));
    }
    owners.remember(account_id, client_id);
    Ok(())
}
