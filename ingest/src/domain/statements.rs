//! An account's past, from the ledger's own lines: its balance and what it
//! had held at an instant, and a statement of a period (opening balance,
//! lines, closing balance) as JSON or CSV.
//!
//! An entry's time is when it was written under its account's lock (see the
//! migration `20261204000001`), so one account's entries are in the same
//! order by time as by id, and `entries_account_time` (account, time, id)
//! serves both: the balance as of an instant is one index seek (the last
//! entry written by then), a statement one index range.

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use schemas::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::domain::accounts::{AccountRow, format_amount, parse_currency};
use crate::error::ApiError;

/// The balances of an account at an instant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BalanceAsOf {
    account_id: Uuid,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    as_of: DateTime<Utc>,
    /// The ledger balance after the last entry written by `as_of`.
    #[schema(example = "120.00")]
    balance: String,
    /// What pending holds and payouts reserved at `as_of`.
    #[schema(example = "0.00")]
    held: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceQuery {
    /// The instant (RFC 3339), not in the future; now when absent.
    #[param(value_type = Option<String>, format = DateTime, example = "2026-12-02T00:00:00Z")]
    as_of: Option<DateTime<Utc>>,
}

/// The balance and the held amount of `account` at `query.as_of`.
///
/// # Errors
/// 422 `as_of_in_future`; database errors.
pub(crate) async fn balance_as_of(
    state: &AppState,
    account: &AccountRow,
    query: &BalanceQuery,
) -> Result<BalanceAsOf, ApiError> {
    let now = Utc::now();
    let as_of = query.as_of.unwrap_or(now);
    if as_of > now {
        return Err(ApiError::unprocessable("as_of_in_future", "as_of must not be in the future"));
    }
    let currency = parse_currency(&account.currency)?;
    // Held: the holds and payouts made by then and not yet settled then
    // (an index range of the account's holds, `transfers_holds_of_source`).
    let row = sqlx::query!(
        r#"select
             (select balance_after from entries where account_id = $1 and created_at <= $2
              order by created_at desc, id desc limit 1) as balance,
             (select coalesce(sum(amount), 0) from transfers
              where source_account_id = $1 and kind in ('hold', 'payout') and status <> 'rejected'
                and decided_at <= $2 and (settled_at is null or settled_at > $2)) as "held!""#,
        account.id,
        as_of,
    )
    .fetch_one(&state.pool)
    .await?;
    Ok(BalanceAsOf {
        account_id: account.id,
        currency,
        as_of,
        balance: format_amount(row.balance.unwrap_or_default(), currency),
        held: format_amount(row.held, currency),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatementQuery {
    /// The period's start (RFC 3339), included.
    #[param(value_type = String, format = DateTime, example = "2026-12-01T00:00:00Z")]
    from: DateTime<Utc>,
    /// The period's end (RFC 3339), excluded; after `from`, at most 366 days later.
    #[param(value_type = String, format = DateTime, example = "2026-12-02T00:00:00Z")]
    to: DateTime<Utc>,
}

/// The longest period of one statement.
const STATEMENT_PERIOD_DAYS_MAX: i64 = 366;

/// The most lines one statement holds: a longer one is asked for in
/// shorter periods (a statement is not paged: its opening and closing
/// balances frame the whole).
pub(crate) const STATEMENT_LINES_MAX: i64 = 10_000;

/// An account's statement of a period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Statement {
    account_id: Uuid,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The balance before the period's first line.
    #[schema(example = "100.00")]
    opening_balance: String,
    lines: Vec<StatementLine>,
    /// The opening balance plus the lines; checked against the last line's
    /// balance after.
    #[schema(example = "87.50")]
    closing_balance: String,
}

/// One entry of a statement.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StatementLine {
    booked_at: DateTime<Utc>,
    transfer_id: Uuid,
    /// `transfer`, `deposit`, `post`, `reversal`, …
    #[schema(example = "transfer")]
    kind: String,
    /// The transfer's (or its batch's) bank reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "INV-2026/0042")]
    reference: Option<String>,
    /// Negative for a debit, positive for a credit.
    #[schema(example = "-12.50")]
    amount: String,
    #[schema(example = "87.50")]
    balance_after: String,
}

/// The statement of `account` for `query`'s period.
///
/// # Errors
/// 422 `invalid_period` or `statement_too_large`; 500 when the lines do not
/// add up (a broken ledger, never bad input).
pub(crate) async fn statement(
    state: &AppState,
    account: &AccountRow,
    query: &StatementQuery,
) -> Result<Statement, ApiError> {
    if query.to <= query.from || query.to - query.from > TimeDelta::days(STATEMENT_PERIOD_DAYS_MAX) {
        return Err(ApiError::unprocessable(
            "invalid_period",
            format!("`to` must be after `from`, at most {STATEMENT_PERIOD_DAYS_MAX} days later"),
        ));
    }
    let currency = parse_currency(&account.currency)?;
    let opening = sqlx::query_scalar!(
        r"select balance_after from entries where account_id = $1 and created_at < $2
          order by created_at desc, id desc limit 1",
        account.id,
        query.from,
    )
    .fetch_optional(&state.pool)
    .await?
    .unwrap_or_default();
    // A leg's reference is its batch's: the leg row carries it.
    let rows = sqlx::query!(
        r#"select entry.created_at, entry.transfer_id, entry.amount, entry.balance_after,
                  transfer.kind as "kind?", transfer.reference as "reference?"
           from entries entry
           left join transfers transfer on transfer.id = entry.transfer_id
           where entry.account_id = $1 and entry.created_at >= $2 and entry.created_at < $3
           order by entry.created_at, entry.id
           limit $4"#,
        account.id,
        query.from,
        query.to,
        STATEMENT_LINES_MAX + 1,
    )
    .fetch_all(&state.pool)
    .await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) > STATEMENT_LINES_MAX {
        return Err(ApiError::unprocessable(
            "statement_too_large",
            format!("more than {STATEMENT_LINES_MAX} lines in the period; ask for shorter periods"),
        ));
    }
    let mut closing = opening;
    for row in &rows {
        closing += row.amount;
        if closing != row.balance_after {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the statement of account {} does not add up at transfer {}: {closing} computed, {} recorded",
                account.id,
                row.transfer_id,
                row.balance_after
            )));
        }
    }
    let lines = rows
        .into_iter()
        .map(|row| StatementLine {
            booked_at: row.created_at,
            transfer_id: row.transfer_id,
            kind: row.kind.unwrap_or_else(|| "unknown".to_owned()),
            reference: row.reference,
            amount: format_amount(row.amount, currency),
            balance_after: format_amount(row.balance_after, currency),
        })
        .collect();
    Ok(Statement {
        account_id: account.id,
        currency,
        from: query.from,
        to: query.to,
        opening_balance: format_amount(opening, currency),
        lines,
        closing_balance: format_amount(closing, currency),
    })
}

impl Statement {
    /// The statement as CSV: a header, an `opening` row, one `line` row per
    /// entry and a `closing` row.
    #[must_use]
    pub(crate) fn to_csv(&self) -> String {
        let mut csv = String::from("type,booked_at,transfer_id,kind,reference,amount,balance_after\r\n");
        let from = self.from.to_rfc3339();
        csv.push_str(&format!("opening,{from},,,,,{}\r\n", self.opening_balance));
        for line in &self.lines {
            csv.push_str(&format!(
                "line,{},{},{},{},{},{}\r\n",
                line.booked_at.to_rfc3339(),
                line.transfer_id,
                csv_field(&line.kind),
                csv_field(line.reference.as_deref().unwrap_or("")),
                line.amount,
                line.balance_after
            ));
        }
        csv.push_str(&format!("closing,{},,,,,{}\r\n", self.to.to_rfc3339(), self.closing_balance));
        csv
    }

    /// The statement as the request accepts it: CSV for `Accept: text/csv`,
    /// JSON otherwise.
    pub(crate) fn into_response_for(self, headers: &HeaderMap) -> Response {
        let wants_csv = headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|accept| accept.split(',').any(|kind| kind.trim().starts_with("text/csv")));
        if wants_csv {
            let filename = format!("attachment; filename=\"statement-{}.csv\"", self.account_id);
            (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, filename)],
                self.to_csv(),
            )
                .into_response()
        } else {
            axum::Json(self).into_response()
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line
/// break. A text a spreadsheet would run as a formula (starting with `=`,
/// `+`, `-` or `@`: a reference may start with `+` or `-`) is prefixed with
/// `'` (OWASP's advice against CSV injection).
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\r', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formula_starts_are_defused() {
        assert_eq!(csv_field("INV-1"), "INV-1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("O'Brien, rent"), "\"O'Brien, rent\"");
        assert_eq!(csv_field("+1 (555)"), "'+1 (555)");
        assert_eq!(csv_field("-5"), "'-5");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn a_statement_as_csv_has_its_opening_lines_and_closing() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").expect("time").with_timezone(&Utc);
        let statement = Statement {
            account_id: Uuid::nil(),
            currency: Currency::EUR,
            from: at,
            to: at + TimeDelta::days(1),
            opening_balance: "100.00".into(),
            lines: vec![StatementLine {
                booked_at: at,
                transfer_id: Uuid::nil(),
                kind: "transfer".into(),
                reference: Some("Rent, December".into()),
                amount: "-12.50".into(),
                balance_after: "87.50".into(),
            }],
            closing_balance: "87.50".into(),
        };
        let csv = statement.to_csv();
        let rows: Vec<&str> = csv.split("\r\n").filter(|row| !row.is_empty()).collect();
        assert_eq!(rows.len(), 4, "{csv}");
        assert!(rows[1].starts_with("opening,") && rows[1].ends_with(",100.00"), "{csv}");
        assert!(rows[2].contains(",\"Rent, December\",-12.50,87.50"), "{csv}");
        assert!(rows[3].starts_with("closing,") && rows[3].ends_with(",87.50"), "{csv}");
    }
}
