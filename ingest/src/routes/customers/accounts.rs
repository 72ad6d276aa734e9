//! A customer's own accounts: open one, list them, read one, its history
//! with cursor pagination and filters, its balance as of an instant and
//! its statements. Another customer's account, or an API client's, answers
//! 404 like one that does not exist.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use schemas::{AccountId, Currency};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::Requester;
use crate::domain::accounts::{AccountRow, AccountView, find_account, format_amount, parse_currency};
use crate::domain::statements::{self, BalanceAsOf, BalanceQuery, Statement, StatementQuery};
use crate::error::ApiError;
use crate::extract::user::User;

/// Accounts one customer may open.
pub(crate) const ACCOUNTS_PER_USER_MAX: i64 = 20;

/// The most history items one page returns.
pub(crate) const HISTORY_LIMIT_MAX: i64 = 200;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, open))
        .routes(routes!(read))
        .routes(routes!(history))
        .routes(routes!(balance))
        .routes(routes!(statement))
}

/// The account's balance and held amount now, or as of an instant, from
/// the ledger's own lines.
#[utoipa::path(
    get,
    path = "/v1/me/accounts/{account_id}/balance",
    operation_id = "customer_get_balance",
    tag = "customer accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), BalanceQuery),
    responses((status = 200, description = "The balances at the instant", body = BalanceAsOf)),
)]
async fn balance(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<BalanceQuery>, QueryRejection>,
) -> Result<Json<BalanceAsOf>, ApiError> {
    let Path(account_id) = path?;
    let Query(query) = query?;
    let account = find_account(&state, account_id, Some(Requester::User(user.id))).await?;
    Ok(Json(statements::balance_as_of(&state, &account, &query).await?))
}

/// The account's statement of a period: opening balance, lines, closing
/// balance; JSON, or CSV with `Accept: text/csv`.
#[utoipa::path(
    get,
    path = "/v1/me/accounts/{account_id}/statement",
    operation_id = "customer_get_statement",
    tag = "customer accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), StatementQuery),
    responses((
        status = 200,
        description = "The statement",
        content((Statement = "application/json"), (String = "text/csv")),
    )),
)]
async fn statement(
    State(state): State<AppState>,
    user: User,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(account_id) = path?;
    let Query(query) = query?;
    let account = find_account(&state, account_id, Some(Requester::User(user.id))).await?;
    Ok(statements::statement(&state, &account, &query).await?.into_response_for(&headers))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CustomerOpenAccountRequest)]
#[serde(deny_unknown_fields)]
struct OpenRequest {
    /// An ISO 4217 code that Ledgerline supports.
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
}

/// Opens an account for the customer.
///
/// With an `Idempotency-Key`, a retry returns the same account. A customer
/// has at most 20 accounts.
#[utoipa::path(
    post,
    path = "/v1/me/accounts",
    operation_id = "customer_open_account",
    tag = "customer accounts",
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "Optional: a retry with the same key returns the same account"
    )),
    request_body = OpenRequest,
    responses(
        (
            status = 201,
            description = "Opened",
            body = AccountView,
            headers(("Location" = String, description = "The account's URL")),
        ),
        (
            status = 200,
            description = "Already opened by an earlier request with this Idempotency-Key",
            body = AccountView,
            headers(("Location" = String, description = "The account's URL")),
        ),
    ),
)]
async fn open(
    State(state): State<AppState>,
    user: User,
    headers: HeaderMap,
    body: Result<Json<OpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let account_id = match crate::extract::headers::optional_idempotency_key(&headers)? {
        Some(key) => AccountId::derive(user.id, &key),
        None => AccountId::new_random(),
    };
    let count = sqlx::query_scalar!(r#"select count(*) as "count!" from accounts where owner_user_id = $1"#, user.id)
        .fetch_one(&state.pool)
        .await?;
    if count >= ACCOUNTS_PER_USER_MAX {
        return Err(ApiError::unprocessable("too_many_accounts", "close an account before opening another"));
    }
    let inserted = sqlx::query!(
        r"insert into accounts (id, currency, kind, owner_user_id) values ($1, $2, 'customer', $3)
          on conflict (id) do nothing",
        account_id.as_uuid(),
        request.currency.code(),
        user.id,
    )
    .execute(&state.pool)
    .await?
    .rows_affected();
    let account = find_account(&state, account_id.as_uuid(), Some(Requester::User(user.id))).await?;
    if account.currency.trim() != request.currency.code() {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key opened an account in another currency",
        ));
    }
    let status = if inserted == 1 { StatusCode::CREATED } else { StatusCode::OK };
    let location = format!("/v1/me/accounts/{account_id}");
    Ok((status, [(header::LOCATION, location)], Json(account.view()?)).into_response())
}

/// The customer's accounts, oldest first.
#[utoipa::path(
    get,
    path = "/v1/me/accounts",
    operation_id = "customer_list_accounts",
    tag = "customer accounts",
    responses((
        status = 200,
        description = "`{\"accounts\": [AccountView]}`",
        body = serde_json::Value,
        example = json!({ "accounts": [{
            "available": "100.00",
            "balance": "100.00",
            "created_at": "2025-01-01T12:00:00Z",
            "currency": "EUR",
            "held": "0.00",
            "id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
            "overdraft_limit": "0.00",
            "status": "active",
        }] }),
    )),
)]
async fn list(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    let rows = sqlx::query_as!(
        AccountRow,
        r"select id, currency, status, balance, held, overdraft_limit, per_transfer_max, rolling_24h_max, created_at
          from accounts where owner_user_id = $1 order by created_at, id",
        user.id,
    )
    .fetch_all(&state.pool)
    .await?;
    let accounts = rows.into_iter().map(AccountRow::view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({ "accounts": accounts })))
}

/// One of the customer's accounts, with its balances.
#[utoipa::path(
    get,
    path = "/v1/me/accounts/{account_id}",
    operation_id = "customer_get_account",
    tag = "customer accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01")),
    responses((status = 200, description = "The account and its balances", body = AccountView)),
)]
async fn read(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(account_id) = path?;
    Ok(Json(find_account(&state, account_id, Some(Requester::User(user.id))).await?.view()?))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum Direction {
    Debit,
    Credit,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Items per page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    cursor: Option<String>,
    /// Only money out (`debit`) or only money in (`credit`).
    #[param(inline)]
    direction: Option<Direction>,
    /// Inclusive lower bound of `created_at`.
    from: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `created_at`.
    to: Option<DateTime<Utc>>,
    /// Only transfers with this other account.
    counterparty: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct HistoryItem {
    transfer_id: Uuid,
    kind: String,
    /// Negative for money out, positive for money in.
    amount: String,
    balance_after: String,
    /// The other account of the transfer.
    counterparty_account_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

/// Cursors are opaque to clients: the last entry id of the page, encoded.
fn encode_cursor(entry_id: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("e{entry_id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix('e').and_then(|id| id.parse().ok()))
        .ok_or_else(|| ApiError::unprocessable("invalid_cursor", "the cursor is not one this API gave"))
}

/// The account's movements, newest first.
///
/// `limit` per page (≤ 200); the answer's `next_cursor` fetches the next
/// page, null on the last.
#[utoipa::path(
    get,
    path = "/v1/me/accounts/{account_id}/history",
    operation_id = "customer_account_history",
    tag = "customer accounts",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"), HistoryQuery),
    responses((
        status = 200,
        description = "`{\"account_id\", \"items\": [...], \"next_cursor\"}`; an item's `amount` is negative \
                       for money out",
        body = serde_json::Value,
        example = json!({
            "account_id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
            "items": [{
                "amount": "-12.50",
                "balance_after": "87.50",
                "counterparty_account_id": "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d",
                "created_at": "2025-01-01T12:00:00Z",
                "kind": "transfer",
                "transfer_id": "7d6e5f4a-3b2c-4d1e-8f9a-0b1c2d3e4f5a",
            }],
            "next_cursor": null,
        }),
    )),
)]
async fn history(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(account_id) = path?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={HISTORY_LIMIT_MAX}")));
    }
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let account = find_account(&state, account_id, Some(Requester::User(user.id))).await?;
    let currency = parse_currency(&account.currency)?;
    // One more than the page, to know whether another page follows.
    // `?`: the other leg is left-joined, which the inference misses here.
    let rows = sqlx::query!(
        r#"select entry.id as entry_id, entry.transfer_id, transfer.kind, entry.amount, entry.balance_after,
                 other.account_id as "counterparty_account_id?", entry.created_at
          from entries entry
          join transfers transfer on transfer.id = entry.transfer_id
          left join entries other on other.transfer_id = entry.transfer_id and other.account_id <> entry.account_id
          where entry.account_id = $1
            and ($2::bigint is null or entry.id < $2)
            and ($3::text is null or ($3 = 'debit') = (entry.amount < 0))
            and ($4::timestamptz is null or entry.created_at >= $4)
            and ($5::timestamptz is null or entry.created_at < $5)
            and ($6::uuid is null or other.account_id = $6)
          order by entry.id desc
          limit $7"#,
        account_id,
        before,
        query.direction.map(|direction| if direction == Direction::Debit { "debit" } else { "credit" }),
        query.from,
        query.to,
        query.counterparty,
        limit + 1,
    )
    .fetch_all(&state.pool)
    .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    let page: Vec<_> = rows.into_iter().take(usize::try_from(limit).unwrap_or(0)).collect();
    let next_cursor = if more { page.last().map(|row| encode_cursor(row.entry_id)) } else { None };
    let items: Vec<HistoryItem> = page
        .into_iter()
        .map(|row| HistoryItem {
            transfer_id: row.transfer_id,
            kind: row.kind,
            amount: format_amount(row.amount, currency),
            balance_after: format_amount(row.balance_after, currency),
            counterparty_account_id: row.counterparty_account_id,
            created_at: row.created_at,
        })
        .collect();
    Ok(Json(serde_json::json!({ "account_id": account_id, "items": items, "next_cursor": next_cursor })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_forged_ones_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x42")).is_err());
    }
}
