//! Accounts: open one, read its balance (now or as of an instant), list its
//! entries, read a statement, fund it, set its spending limits.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use schemas::{AccountId, Currency, Operation, TransferId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance;
use crate::domain::acceptance::{Accepted, Requester};
use crate::domain::accounts::{
    AccountView, DepositRequest, LimitSetter, SpendingLimitsRequest, deposit_command, find_account, format_amount,
    parse_currency, request_spending_limits,
};
use crate::domain::clients::Scope;
use crate::domain::statements::{self, BalanceAsOf, BalanceQuery, Statement, StatementQuery};
use crate::error::ApiError;
use crate::extract::principal::Principal;
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open_account))
        .routes(routes!(get_account))
        .routes(routes!(list_entries))
        .routes(routes!(deposit))
        .routes(routes!(get_balance))
        .routes(routes!(get_statement))
        .routes(routes!(set_spending_limits))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OpenAccountRequest {
    /// An ISO 4217 code that Ledgerline supports.
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
}

/// Opens an account.
///
/// With an `Idempotency-Key`, a retry returns the account the first request
/// opened instead of opening another. Needs the `accounts:write` scope.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    operation_id = "open_account",
    tag = "accounts",
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "Optional: a retry with the same key returns the same account"
    )),
    request_body = OpenAccountRequest,
    responses(
        (
            status = 201,
            description = "Opened",
            body = AccountView,
            headers(("Location" = String, description = "The account's URL")),
            links(
                ("GetAccount" = (operation_id = "get_account", parameters(("account_id" = "$response.body#/id")))),
                ("GetBalance" = (operation_id = "get_balance", parameters(("account_id" = "$response.body#/id")))),
                ("ListEntries" = (operation_id = "list_entries", parameters(("account_id" = "$response.body#/id")))),
            ),
        ),
        (
            status = 200,
            description = "Already opened by an earlier request with this Idempotency-Key",
            body = AccountView,
            headers(("Location" = String, description = "The account's URL")),
        ),
    ),
)]
async fn open_account(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Json<OpenAccountRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::AccountsWrite)?;
    let Json(request) = body?;
    let account_id = match crate::extract::headers::optional_idempotency_key(&headers)? {
        Some(key) => AccountId::derive(principal.client_id, &key),
        None => AccountId::new_random(),
    };
    let inserted = sqlx::query!(
        r"insert into accounts (id, currency, kind, owner_client_id) values ($1, $2, 'customer', $3)
          on conflict (id) do nothing",
        account_id.as_uuid(),
        request.currency.code(),
        principal.client_id,
    )
    .execute(&state.pool)
    .await?
    .rows_affected();
    let account = find_account(&state, account_id.as_uuid(), Some(Requester::Client(principal.client_id))).await?;
    if account.currency.trim() != request.currency.code() {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key opened an account in another currency",
        ));
    }
    let status = if inserted == 1 { StatusCode::CREATED } else { StatusCode::OK };
    if inserted == 1 {
        tracing::info!(account_id = %account_id, currency = %request.currency, "opened an account");
    }
    let location = format!("/v1/accounts/{account_id}");
    Ok((status, [(header::LOCATION, location)], Json(account.view()?)).into_response())
}

/// One of the client's accounts, with its balances.
///
/// Needs the `accounts:read` scope.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}",
    operation_id = "get_account",
    tag = "accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01")),
    responses((status = 200, description = "The account and its balances", body = AccountView)),
)]
async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<AccountView>, ApiError> {
    principal.require(Scope::AccountsRead)?;
    let Path(account_id) = path?;
    Ok(Json(find_account(&state, account_id, Some(Requester::Client(principal.client_id))).await?.view()?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    /// Entries per page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// One ledger entry of an account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EntryView {
    transfer_id: Uuid,
    /// Negative for a debit, positive for a credit.
    amount: String,
    balance_after: String,
    created_at: DateTime<Utc>,
}

/// An account's entries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EntriesView {
    account_id: Uuid,
    entries: Vec<EntryView>,
}

/// The most entries one page returns.
const ENTRIES_LIMIT_MAX: i64 = 200;

/// The account's ledger entries, newest first.
///
/// Needs the `accounts:read` scope.
// (Cursor pagination and filters come with the customer history, issue #4.)
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/entries",
    operation_id = "list_entries",
    tag = "accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), EntriesQuery),
    responses((status = 200, description = "The newest entries", body = EntriesView)),
)]
async fn list_entries(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntriesView>, ApiError> {
    principal.require(Scope::AccountsRead)?;
    let Path(account_id) = path?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=ENTRIES_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={ENTRIES_LIMIT_MAX}")));
    }
    let account = find_account(&state, account_id, Some(Requester::Client(principal.client_id))).await?;
    let currency = parse_currency(&account.currency)?;
    let rows = sqlx::query!(
        r"select transfer_id, amount, balance_after, created_at from entries
          where account_id = $1 order by id desc limit $2",
        account_id,
        limit,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(EntriesView {
        account_id,
        entries: rows
            .into_iter()
            .map(|row| EntryView {
                transfer_id: row.transfer_id,
                amount: format_amount(row.amount, currency),
                balance_after: format_amount(row.balance_after, currency),
                created_at: row.created_at,
            })
            .collect(),
    }))
}

/// Funds any account from the system cash-in account of its currency.
///
/// Needs the `deposits:write` scope. Applied by the processor: follow the
/// transfer at the `Location`.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account_id}/deposits",
    operation_id = "client_deposit",
    tag = "accounts",
    params(
        ("account_id" = Uuid, Path, description = "The account to fund", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = DepositRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The transfer's status URL")),
    )),
)]
async fn deposit(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<DepositRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::DepositsWrite)?;
    let Path(account_id) = path?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = request.money()?;
    let transfer_id = TransferId::derive(Operation::Deposit, principal.client_id, &key);
    let (command, canonical) = deposit_command(transfer_id, account_id, money);
    let accepted: Accepted = acceptance::accept(
        &state,
        acceptance::Requester::Client(principal.client_id),
        &key,
        &command,
        canonical,
        &request_id.0,
    )
    .await?;
    Ok(accepted.into_response())
}

/// The account's balance and held amount now, or as of an instant.
///
/// From the ledger's own lines: the balance after the last entry written by
/// `as_of`, and the holds pending then. Needs the `accounts:read` scope.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/balance",
    operation_id = "get_balance",
    tag = "accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), BalanceQuery),
    responses((status = 200, description = "The balances at the instant", body = BalanceAsOf)),
)]
async fn get_balance(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<BalanceQuery>, QueryRejection>,
) -> Result<Json<BalanceAsOf>, ApiError> {
    principal.require(Scope::AccountsRead)?;
    let Path(account_id) = path?;
    let Query(query) = query?;
    let account = find_account(&state, account_id, Some(Requester::Client(principal.client_id))).await?;
    Ok(Json(statements::balance_as_of(&state, &account, &query).await?))
}

/// The account's statement of a period: opening balance, lines, closing
/// balance (the opening plus the lines, checked).
///
/// JSON, or CSV with `Accept: text/csv`. At most 10,000 lines and 366 days:
/// ask for shorter periods beyond. Needs the `accounts:read` scope.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/statement",
    operation_id = "get_statement",
    tag = "accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), StatementQuery),
    responses((
        status = 200,
        description = "The statement",
        content((Statement = "application/json"), (String = "text/csv")),
    )),
)]
async fn get_statement(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::AccountsRead)?;
    let Path(account_id) = path?;
    let Query(query) = query?;
    let account = find_account(&state, account_id, Some(Requester::Client(principal.client_id))).await?;
    Ok(statements::statement(&state, &account, &query).await?.into_response_for(&headers))
}

/// Sets the account's spending limits (replacing its own; an absent limit
/// is removed).
///
/// The processor checks them inside every debit's transaction, under the
/// account's lock: a transfer, hold, payout or batch that would exceed one
/// is rejected as `limit_exceeded`, with which limit. Applied like a
/// transfer: follow it at the `Location`. Needs the `accounts:write` scope.
#[utoipa::path(
    put,
    path = "/v1/accounts/{account_id}/spending-limits",
    operation_id = "set_spending_limits",
    tag = "accounts",
    params(
        ("account_id" = Uuid, Path, description = "One of the client's accounts", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = SpendingLimitsRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The command's status URL")),
    )),
)]
async fn set_spending_limits(
    State(state): State<AppState>,
    principal: Principal,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<SpendingLimitsRequest>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    principal.require(Scope::AccountsWrite)?;
    let Path(account_id) = path?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    request_spending_limits(&state, LimitSetter::Client(principal.client_id), &request_id.0, &key, account_id, &request)
        .await
}
