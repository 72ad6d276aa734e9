//! The audit log for admins: every security event and staff action, newest
//! first, filtered by actor, action and time.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

use super::page;
use super::session::Staff;
use crate::AppState;
use crate::domain::permissions::Permission;
use crate::error::ApiError;

/// Events on one page.
const PAGE_SIZE: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filter {
    /// The acting user's id, or their email.
    actor: Option<String>,
    /// An action, or its start (`dashboard.` matches every dashboard event).
    action: Option<String>,
    /// `YYYY-MM-DDTHH:MM`, UTC.
    from: Option<String>,
    to: Option<String>,
    /// Events with an id below this one.
    before: Option<i64>,
}

#[derive(Debug)]
struct Row {
    id: i64,
    at: DateTime<Utc>,
    action: String,
    actor: Option<String>,
    subject: Option<String>,
    ip: Option<String>,
    request_id: Option<String>,
    detail: serde_json::Value,
}

/// The audit log page (admin).
pub(crate) async fn page(
    State(state): State<AppState>,
    staff: Staff,
    query: Result<Query<Filter>, QueryRejection>,
) -> Response {
    if !Permission::ReadAudit.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadAudit));
    }
    let filter = match query {
        Ok(Query(filter)) => filter,
        Err(rejection) => return page::error_page(Some(&staff), rejection.into()),
    };
    let read = async {
        let (from, to) = (page::utc_time(filter.from.as_ref(), "from")?, page::utc_time(filter.to.as_ref(), "to")?);
        let actor = page::given(filter.actor.as_ref());
        let (actor_id, actor_email) = match actor.map(Uuid::parse_str) {
            Some(Ok(id)) => (Some(id), None),
            Some(Err(_)) => (None, actor.map(str::to_lowercase)),
            None => (None, None),
        };
        // A prefix match: the text itself is escaped, so `_` and `%` in an
        // action name are themselves (LIKE's escape is the backslash).
        let action = page::given(filter.action.as_ref()).map(|action| format!("{}%", like_escaped(action)));
        Ok::<_, ApiError>(
            sqlx::query_as!(
                Row,
                r#"select log.id, log.at, log.action, actor.email as "actor?", subject.email as "subject?",
                          log.ip, log.request_id, log.detail
                   from audit_log log
                   left join users actor on actor.id = log.actor_user_id
                   left join users subject on subject.id = log.subject_user_id
                   where ($1::uuid is null or log.actor_user_id = $1)
                     and ($2::text is null or actor.email = $2)
                     and ($3::text is null or log.action like $3)
                     and ($4::timestamptz is null or log.at >= $4)
                     and ($5::timestamptz is null or log.at < $5)
                     and ($6::bigint is null or log.id < $6)
                   order by log.id desc limit $7"#,
                actor_id,
                actor_email,
                action,
                from,
                to,
                filter.before,
                PAGE_SIZE,
            )
            .fetch_all(&state.pool)
            .await?,
        )
    }
    .await;
    let rows = match read {
        Ok(rows) => rows,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    let value = |text: Option<&String>| text.cloned().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/admin/audit" {
            label { "Actor (email or id)" input type="text" name="actor" value=(value(filter.actor.as_ref())); }
            label { "Action (or its start)" input type="text" name="action" value=(value(filter.action.as_ref())) placeholder="dashboard."; }
            label { "From (UTC)" input type="datetime-local" name="from" value=(value(filter.from.as_ref())); }
            label { "To (UTC)" input type="datetime-local" name="to" value=(value(filter.to.as_ref())); }
            button.primary type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p.empty { "No event matches." }
        } @else {
            table #audit {
                thead { tr { th { "When (UTC)" } th { "Action" } th { "Actor" } th { "Subject" } th { "IP" } th { "Detail" } } }
                tbody {
                    @for row in &rows {
                        tr {
                            td { (page::time(row.at)) }
                            td { code { (row.action) } }
                            td { (row.actor.clone().unwrap_or_else(|| "—".into())) }
                            td { (row.subject.clone().unwrap_or_else(|| "—".into())) }
                            td { (row.ip.clone().unwrap_or_default()) }
                            td.wrap { code { (row.detail.to_string()) } @if let Some(request_id) = &row.request_id { div.muted { "request " (request_id) } } }
                        }
                    }
                }
            }
            @if let Some(last) = rows.last().filter(|_| i64::try_from(rows.len()).unwrap_or(0) == PAGE_SIZE) {
                p { a.next href=(older(&filter, last.id)) { "Older events →" } }
            }
        }
    };
    page::shell(&staff, "/admin/audit", "Audit log", &body)
}

/// The next page's address: the same filters, events before `id`.
fn older(filter: &Filter, id: i64) -> String {
    let mut url = String::from("/admin/audit?");
    for (name, value) in
        [("actor", &filter.actor), ("action", &filter.action), ("from", &filter.from), ("to", &filter.to)]
    {
        if let Some(value) = page::given(value.as_ref()) {
            url.push_str(&format!("{name}={}&", page::query_value(value)));
        }
    }
    url.push_str(&format!("before={id}"));
    url
}

/// `text` for a LIKE pattern, matching itself only.
fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_prefix_matches_itself_underscores_included() {
        assert_eq!(like_escaped("dashboard.login_failed"), "dashboard.login\\_failed");
        assert_eq!(like_escaped("100%"), "100\\%");
        assert_eq!(like_escaped("a\\b"), "a\\\\b");
    }
}
