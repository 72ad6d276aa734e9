//! Dead letters and the outbox, for ops and admin: what was refused and
//! why, what could not be delivered, and the replay and retry buttons, which
//! do what the API's ops routes do ([`crate::domain::operations`]), audited.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::page;
use super::session::{Staff, refuse_forged};
use crate::AppState;
use crate::domain::operations;
use crate::domain::permissions::Permission;
use crate::error::ApiError;
use crate::middleware::context::RequestId;

/// Dead letters and dead outbox rows listed at most.
const LISTED_MAX: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Listing {
    /// The first dead letter to list (default: the oldest kept).
    from_offset: Option<i64>,
}

/// The dead letters (partition 0 of the dead-letter topic) and the dead
/// outbox rows.
pub(crate) async fn page(
    State(state): State<AppState>,
    staff: Staff,
    query: Result<Query<Listing>, QueryRejection>,
) -> Response {
    if !Permission::Operate.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::Operate));
    }
    let from_offset = match query {
        Ok(Query(listing)) => listing.from_offset,
        Err(rejection) => return page::error_page(Some(&staff), rejection.into()),
    };
    let read = async {
        let letters = operations::read_dead_letters(&state, 0, from_offset, LISTED_MAX).await?;
        let dead = platform::outbox::dead_rows(&state.pool, LISTED_MAX).await?;
        Ok::<_, ApiError>((letters, dead))
    }
    .await;
    let (letters, dead) = match read {
        Ok(read) => read,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    let next = letters.messages.last().map(|message| message.offset + 1);
    let end = letters.end;
    let letters: Vec<operations::DeadLetter> = letters.messages.into_iter().map(operations::dead_letter).collect();
    let body = html! {
        h2 { "Dead letters" }
        p.muted { "Commands the processor could not apply, with the reason. Fix the cause, then replay: a command applied before is a no-op." }
        @if letters.is_empty() {
            p.empty #no-dead-letters { "No dead letters." }
        } @else {
            table #dead-letters {
                thead { tr { th.num { "Offset" } th { "Reason" } th { "Detail" } th { "Key" } th { "" } } }
                tbody {
                    @for letter in &letters {
                        tr {
                            td.num { (letter.offset()) }
                            td { code { (letter.reason().unwrap_or("—")) } }
                            td.wrap { (letter.detail().unwrap_or("")) }
                            td { code { (letter.key().unwrap_or("—")) } }
                            td {
                                form method="post" action="/admin/operations/replay" {
                                    input type="hidden" name="csrf" value=(staff.csrf);
                                    input type="hidden" name="offset" value=(letter.offset());
                                    button type="submit" { "Replay" }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next.filter(|next| *next < end) {
                p { a.next href={ "/admin/operations?from_offset=" (next) } { "Newer dead letters →" } }
            }
        }
        h2 { "Dead outbox rows" }
        p.muted { "Deliveries that failed every attempt. Fix the endpoint or the provider, then retry." }
        @if dead.is_empty() {
            p.empty #no-dead-rows { "No dead rows." }
        } @else {
            // The rows listed, not every dead row: one may have died since
            // the page was drawn, and a payment row is an order sent again.
            form method="post" action="/admin/operations/retry" {
                input type="hidden" name="csrf" value=(staff.csrf);
                input type="hidden" name="ids" value=(dead.iter().map(|row| row.id.to_string()).collect::<Vec<_>>().join(","));
                button type="submit" { "Retry the " (dead.len()) " row(s) listed" }
            }
            table #dead-rows {
                thead { tr { th.num { "Row" } th { "Destination" } th { "Type" } th.num { "Attempts" } th { "Last error" } } }
                tbody {
                    @for row in &dead {
                        tr { td.num { (row.id) } td { (row.destination) } td { code { (row.event_type) } } td.num { (row.attempts) } td.wrap { (row.last_error.clone().unwrap_or_default()) } }
                    }
                }
            }
        }
    };
    page::shell(&staff, "/admin/operations", "Dead letters & outbox", &body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Replay {
    csrf: Option<String>,
    offset: Option<i64>,
}

/// Replays one dead letter.
pub(crate) async fn replay(
    State(state): State<AppState>,
    staff: Staff,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    form: Result<Form<Replay>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.ok().map(|Form(form)| form);
    if let Err(error) = staff.check_csrf(form.as_ref().and_then(|form| form.csrf.as_deref())) {
        return page::error_page(Some(&staff), error);
    }
    if !Permission::Operate.granted_to(&staff.user.role) {
        return refuse_forged(&state, &staff, Permission::Operate, peer, &request_id.0, "replay").await;
    }
    let Some((offset, next)) = form
        .and_then(|form| form.offset)
        .filter(|offset| *offset >= 0)
        .and_then(|offset| Some((offset, offset.checked_add(1)?)))
    else {
        return page::error_page(Some(&staff), ApiError::bad_request("invalid_request", "which dead letter?"));
    };
    match operations::replay(&state, staff.user.id, peer, &request_id.0, 0, offset, next).await {
        Ok(replayed) => done(&staff, &format!("Replayed dead letter(s) {replayed:?}; the processor decides again.")),
        Err(error) => page::error_page(Some(&staff), error),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Retry {
    csrf: Option<String>,
    /// The dead rows listed, comma-separated.
    ids: Option<String>,
}

/// Puts every dead outbox row back.
pub(crate) async fn retry(
    State(state): State<AppState>,
    staff: Staff,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    form: Result<Form<Retry>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.ok().map(|Form(form)| form);
    if let Err(error) = staff.check_csrf(form.as_ref().and_then(|form| form.csrf.as_deref())) {
        return page::error_page(Some(&staff), error);
    }
    if !Permission::Operate.granted_to(&staff.user.role) {
        return refuse_forged(&state, &staff, Permission::Operate, peer, &request_id.0, "outbox retry").await;
    }
    let ids: Option<Vec<i64>> = form
        .and_then(|form| form.ids)
        .map(|ids| ids.split(',').map(|id| id.trim().parse::<i64>()).collect::<Result<_, _>>().ok())
        .unwrap_or_default();
    let Some(ids) =
        ids.filter(|ids| !ids.is_empty() && i64::try_from(ids.len()).is_ok_and(|count| count <= LISTED_MAX))
    else {
        return page::error_page(Some(&staff), ApiError::bad_request("invalid_request", "which dead rows?"));
    };
    let which = platform::outbox::Retry::Ids(ids);
    match operations::retry_outbox(&state, staff.user.id, peer, &request_id.0, &which).await {
        Ok(retried) => done(&staff, &format!("{retried} dead row(s) put back; the relay delivers them again.")),
        Err(error) => page::error_page(Some(&staff), error),
    }
}

fn done(staff: &Staff, what: &str) -> Response {
    let body = html! {
        div.notice.success role="status" { p { (what) } }
        p { a href="/admin/operations" { "Back to dead letters & outbox" } }
    };
    page::shell(staff, "/admin/operations", "Done", &body)
}
