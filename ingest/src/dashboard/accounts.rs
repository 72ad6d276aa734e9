//! An account as staff see it: balance, held and available, its open holds,
//! its history (paged), and the status changes (freeze, unfreeze, close)
//! behind a confirmation step, requested exactly as the API's staff routes
//! request them ([`crate::domain::accounts::request_status_change`]).

use std::net::SocketAddr;

use axum::Form;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rust_decimal::Decimal;
use schemas::IdempotencyKey;
use serde::Deserialize;
use uuid::Uuid;

use super::page;
use super::session::{Staff, refuse_forged};
use crate::AppState;
use crate::domain::accounts::{AccountRow, StatusChange, find_account};
use crate::domain::permissions::Permission;
use crate::error::ApiError;
use crate::middleware::context::RequestId;

/// History lines on one page.
const HISTORY_PAGE_SIZE: i64 = 50;
/// Open holds listed at most.
const HOLDS_SHOWN_MAX: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Find {
    id: Option<String>,
}

/// Finds an account by id: straight to its page.
pub(crate) async fn find(staff: Staff, query: Result<Query<Find>, QueryRejection>) -> Response {
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return page::error_page(Some(&staff), rejection.into()),
    };
    let id = query.id.map(|id| id.trim().to_owned()).filter(|id| !id.is_empty());
    if let Some(id) = id {
        return match Uuid::parse_str(&id) {
            Ok(id) => Redirect::to(&format!("/admin/accounts/{id}")).into_response(),
            Err(_) => page::error_page(Some(&staff), ApiError::bad_request("invalid_query", "an account id is a UUID")),
        };
    }
    let body = html! {
        form.filters method="get" action="/admin/accounts" {
            label { "Account id" input type="text" name="id" placeholder="uuid" size="36" required; }
            button.primary type="submit" { "Open" }
        }
        p.muted { "Accounts are found by id; search transfers by account to find one from its activity." }
    };
    page::shell(&staff, "/admin/accounts", "Accounts", &body)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryPage {
    /// Lines older than this entry id.
    before: Option<i64>,
}

#[derive(Debug)]
struct Line {
    id: i64,
    transfer_id: Uuid,
    amount: Decimal,
    balance_after: Decimal,
    created_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Hold {
    id: Uuid,
    amount: Option<Decimal>,
    destination_account_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Facts {
    kind: String,
    system_role: Option<String>,
}

/// An account's page.
pub(crate) async fn detail(
    State(state): State<AppState>,
    staff: Staff,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HistoryPage>, QueryRejection>,
) -> Response {
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    let before = match query {
        Ok(Query(page)) => page.before,
        Err(rejection) => return page::error_page(Some(&staff), rejection.into()),
    };
    let read = async {
        let Path(id) = path?;
        let account = find_account(&state, id, None).await?;
        let facts = sqlx::query_as!(Facts, "select kind, system_role from accounts where id = $1", id)
            .fetch_one(&state.pool)
            .await?;
        let lines = sqlx::query_as!(
            Line,
            r"select id, transfer_id, amount, balance_after, created_at from entries
              where account_id = $1 and ($2::bigint is null or id < $2) order by id desc limit $3",
            id,
            before,
            HISTORY_PAGE_SIZE,
        )
        .fetch_all(&state.pool)
        .await?;
        let holds = sqlx::query_as!(
            Hold,
            r"select id, amount, destination_account_id, expires_at from transfers
              where kind = 'hold' and status = 'held' and source_account_id = $1 order by expires_at limit $2",
            id,
            HOLDS_SHOWN_MAX,
        )
        .fetch_all(&state.pool)
        .await?;
        Ok::<_, ApiError>((account, facts, lines, holds))
    }
    .await;
    match read {
        Ok((account, facts, lines, holds)) => {
            let title = format!("Account {}", page::short(account.id));
            let body = body(&staff, &account, &facts, &lines, &holds);
            page::shell(&staff, "/admin/accounts", &title, &body)
        }
        Err(error) => page::error_page(Some(&staff), error),
    }
}

fn body(staff: &Staff, account: &AccountRow, facts: &Facts, lines: &[Line], holds: &[Hold]) -> Markup {
    let currency = account.currency.as_str();
    let available = account.balance - account.held + account.overdraft_limit;
    let may_change = Permission::ChangeAccountStatus.granted_to(&staff.user.role);
    html! {
        section.cards {
            div.card { h2 { "Balance" } p.figure.num #balance { (page::money(account.balance, currency)) } }
            div.card { h2 { "Held" } p.figure.num #held { (page::money(account.held, currency)) } }
            div.card { h2 { "Available" } p.figure.num #available { (page::money(available, currency)) } p.muted { "balance − held + overdraft limit " (page::money(account.overdraft_limit, currency)) } }
            div.card { h2 { "Status" } p.figure #account-status { span class={ "status " (account.status) } { (account.status) } } p.muted { (facts.kind) @if let Some(role) = &facts.system_role { " · " (role) } " · opened " (page::time(account.created_at)) } }
        }
        dl.facts { dt { "Id" } dd { code #account-id { (account.id) } } }
        @if may_change {
            section.actions #account-actions {
                h2 { "Act on this account" }
                p.muted { "Each change is a command the processor decides; it is recorded in the audit log." }
                @if account.status == "active" { a.button href={ "/admin/accounts/" (account.id) "/status?change=freeze" } #freeze { "Freeze…" } }
                @if account.status == "frozen" { a.button href={ "/admin/accounts/" (account.id) "/status?change=unfreeze" } #unfreeze { "Unfreeze…" } }
                @if account.status != "closed" { " " a.button.danger href={ "/admin/accounts/" (account.id) "/status?change=close" } #close { "Close…" } }
            }
        }
        h2 { "Open holds" }
        @if holds.is_empty() {
            p.empty { "No open holds." }
        } @else {
            table #holds {
                thead { tr { th { "Hold" } th { "To" } th.num { "Amount" } th { "Expires (UTC)" } } }
                tbody {
                    @for hold in holds {
                        tr {
                            td { a href={ "/admin/transfers/" (hold.id) } { code { (page::short(hold.id)) } } }
                            td { (page::account_link(hold.destination_account_id)) }
                            td.num { (page::optional_money(hold.amount, Some(currency))) }
                            td { (hold.expires_at.map(page::time).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 { "History" }
        @if lines.is_empty() {
            p.empty { "No entries yet." }
        } @else {
            table #history {
                thead { tr { th { "When (UTC)" } th { "Transfer" } th.num { "Amount" } th.num { "Balance after" } } }
                tbody {
                    @for line in lines {
                        tr {
                            td { (page::time(line.created_at)) }
                            td { a href={ "/admin/transfers/" (line.transfer_id) } { code { (page::short(line.transfer_id)) } } }
                            td.num { (page::money(line.amount, currency)) }
                            td.num { (page::money(line.balance_after, currency)) }
                        }
                    }
                }
            }
            @if let Some(last) = lines.last().filter(|_| i64::try_from(lines.len()).unwrap_or(0) == HISTORY_PAGE_SIZE) {
                p { a.next href={ "/admin/accounts/" (account.id) "?before=" (last.id) } { "Older entries →" } }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Confirm {
    change: Option<String>,
}

/// The confirmation step of a status change: what will happen, and the
/// form that requests it (with its CSRF token and a fresh idempotency key,
/// so sending the form twice requests it once).
pub(crate) async fn confirm(
    State(state): State<AppState>,
    staff: Staff,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<Confirm>, QueryRejection>,
) -> Response {
    if !Permission::ChangeAccountStatus.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ChangeAccountStatus));
    }
    let change = query.ok().and_then(|Query(confirm)| confirm.change).as_deref().and_then(StatusChange::parse);
    let read = async {
        let Path(id) = path?;
        let change =
            change.ok_or_else(|| ApiError::bad_request("invalid_query", "change is freeze, unfreeze or close"))?;
        Ok::<_, ApiError>((find_account(&state, id, None).await?, change))
    }
    .await;
    let (account, change) = match read {
        Ok(read) => read,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    let consequence = match change {
        StatusChange::Freeze => "It will neither send nor receive money until it is unfrozen.",
        StatusChange::Unfreeze => "It will send and receive money again.",
        StatusChange::Close => "Closing is final. The processor refuses it unless the balance and holds are zero.",
    };
    let body = html! {
        div.notice.warning role="alert" {
            p { strong { (capitalized(change.name())) " account " code { (account.id) } "?" } }
            p { (consequence) " Balance " (page::money(account.balance, &account.currency)) ", status " (account.status) "." }
        }
        form.confirm method="post" action={ "/admin/accounts/" (account.id) "/status" } {
            input type="hidden" name="csrf" value=(staff.csrf);
            input type="hidden" name="change" value=(change.name());
            input type="hidden" name="key" value=(Uuid::new_v4());
            button.primary.danger[change != StatusChange::Unfreeze] type="submit" #confirm { "Yes, " (change.name()) " it" }
            " "
            a href={ "/admin/accounts/" (account.id) } { "Cancel" }
        }
    };
    page::shell(&staff, "/admin/accounts", &format!("Confirm: {}", change.name()), &body)
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub(crate) struct Change {
    csrf: Option<String>,
    change: Option<String>,
    key: Option<String>,
}

/// Requests the confirmed change, as the API's staff route does; then
/// back to the account with what was requested.
pub(crate) async fn change_status(
    State(state): State<AppState>,
    staff: Staff,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    form: Result<Form<Change>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.ok().map(|Form(form)| form);
    if let Err(error) = staff.check_csrf(form.as_ref().and_then(|form| form.csrf.as_deref())) {
        return page::error_page(Some(&staff), error);
    }
    if !Permission::ChangeAccountStatus.granted_to(&staff.user.role) {
        return refuse_forged(&state, &staff, Permission::ChangeAccountStatus, peer, &request_id.0, "account status")
            .await;
    }
    let requested = async {
        let Path(account_id) = path?;
        let form = form.ok_or_else(|| ApiError::bad_request("invalid_request", "the form is incomplete"))?;
        let change = form
            .change
            .as_deref()
            .and_then(StatusChange::parse)
            .ok_or_else(|| ApiError::bad_request("invalid_request", "change is freeze, unfreeze or close"))?;
        let key = form
            .key
            .as_deref()
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|error| ApiError::bad_request("invalid_request", error.to_string()))?
            .ok_or_else(|| ApiError::bad_request("invalid_request", "the form has no key; reload it"))?;
        let (command_id, _) = crate::domain::accounts::request_status_change(
            &state,
            staff.user.id,
            peer,
            &request_id.0,
            &key,
            account_id,
            change,
        )
        .await?;
        Ok::<_, ApiError>((account_id, change, command_id))
    }
    .await;
    match requested {
        Ok((account_id, change, command_id)) => {
            let body = html! {
                div.notice.success role="status" #requested {
                    p { (capitalized(change.name())) " requested (command " code { (command_id) } "). The processor decides it in a moment." }
                }
                p { a href={ "/admin/accounts/" (account_id) } #back-to-account { "Back to the account" } }
            };
            page::shell(&staff, "/admin/accounts", "Requested", &body)
        }
        Err(error) => page::error_page(Some(&staff), error),
    }
}
