//! What every dashboard page shares: the shell (navigation by permission,
//! the signed-in user, the footer saying how the session cookie is set),
//! error pages, and the formatting of money and time.
//!
//! Pages are server-rendered with maud (escaped by default); the only
//! script and style are the embedded assets, so the Content-Security-Policy
//! allows no inline script or style at all.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use rust_decimal::Decimal;
use schemas::Currency;
use uuid::Uuid;

use super::session::Staff;
use crate::domain::permissions::Permission;
use crate::error::{ApiError, Problem};

/// The sections of the navigation, each shown to whoever may read it.
const SECTIONS: [(&str, &str, Permission); 5] = [
    ("/admin", "Overview", Permission::ReadLedger),
    ("/admin/transfers", "Transfers", Permission::ReadLedger),
    ("/admin/accounts", "Accounts", Permission::ReadLedger),
    ("/admin/operations", "Dead letters & outbox", Permission::Operate),
    ("/admin/audit", "Audit log", Permission::ReadAudit),
];

/// A whole page for a signed-in staff member: `title`, the section it
/// belongs to (highlighted), and its body.
pub(crate) fn shell(staff: &Staff, current: &str, title: &str, body: &Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/admin" { "Ledgerline" span.muted { " staff" } }
                    nav {
                        @for (href, label, permission) in SECTIONS {
                            @if permission.granted_to(&staff.user.role) {
                                a href=(href) class=[(href == current).then_some("current")] { (label) }
                            }
                        }
                    }
                    form.signout method="post" action="/admin/logout" {
                        span.muted { (staff.email) " · " (staff.user.role) }
                        input type="hidden" name="csrf" value=(staff.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { h1 { (title) } (body) }
                (footer(staff.cookie_secure))
            }
        }
    };
    Html(page.into_string()).into_response()
}

/// A page without the navigation (sign-in, errors before sign-in).
pub(crate) fn bare(title: &str, body: &Markup, cookie_secure: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow { h1 { (title) } (body) }
                (footer(cookie_secure))
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Ledgerline staff" }
            link rel="stylesheet" href="/admin/assets/app.css";
            script src="/admin/assets/app.js" defer {}
        }
    }
}

fn footer(cookie_secure: bool) -> Markup {
    html! {
        footer {
            "All times are UTC. "
            @if cookie_secure {
                "Session cookie: HttpOnly; Secure; SameSite=Strict."
            } @else {
                strong { "Development mode: " }
                "the session cookie is sent over plain HTTP (HttpOnly; SameSite=Strict, not Secure). Never run it like this in production."
            }
        }
    }
}

/// An error as a page: the problem's title, detail and code, with its
/// status. Used for every refusal a signed-in staff member meets.
pub(crate) fn error_page(staff: Option<&Staff>, error: ApiError) -> Response {
    let mut response = error.into_response();
    let status = response.status();
    let problem = response.extensions_mut().remove::<Problem>();
    let (title, detail, code) = match &problem {
        Some(problem) => (problem.title, problem.detail.clone().unwrap_or_default(), problem.code),
        None => ("Error", String::new(), "error"),
    };
    let body = html! {
        div.notice.error role="alert" {
            p { (detail) }
            p.muted { "Status " (status.as_u16()) ", code " code { (code) } }
        }
        p { a href="/admin" { "Back to the overview" } }
    };
    let mut page = match staff {
        Some(staff) => shell(staff, "", title, &body),
        None => Html(bare(title, &body, true).into_string()).into_response(),
    };
    *page.status_mut() = status;
    for name in [axum::http::header::RETRY_AFTER, axum::http::header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            page.headers_mut().insert(name, value.clone());
        }
    }
    page
}

/// A 403 for a staff member whose role lacks `permission`.
pub(crate) fn forbidden(permission: Permission) -> ApiError {
    ApiError::Client {
        status: StatusCode::FORBIDDEN,
        code: "forbidden_role",
        title: "Forbidden",
        detail: format!("this needs one of the roles {}", permission.roles().join(", ")),
    }
}

/// An amount with the currency's decimals and its code (`1,234.50 EUR`
/// without grouping: `1234.50 EUR`), for a right-aligned cell.
pub(crate) fn money(value: Decimal, currency: &str) -> String {
    match currency.parse::<Currency>() {
        Ok(currency) => format!("{} {}", crate::domain::accounts::format_amount(value, currency), currency.code()),
        Err(_) => format!("{value} {currency}"),
    }
}

/// A time in UTC to the second, as the footer says.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A short form of an id for tables; the full id is in the link and title.
pub(crate) fn short(id: uuid::Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// A link to an account's page, its id shortened.
pub(crate) fn account_link(account: Option<Uuid>) -> Markup {
    html! {
        @match account {
            Some(account) => a href={ "/admin/accounts/" (account) } title=(account) { code { (short(account)) } },
            None => span.muted { "—" },
        }
    }
}

/// An amount that a rejected transfer may lack.
pub(crate) fn optional_money(value: Option<Decimal>, currency: Option<&str>) -> String {
    match (value, currency) {
        (Some(value), Some(currency)) => money(value, currency),
        _ => "—".to_owned(),
    }
}

/// A form field's text, trimmed; `None` when empty or absent.
pub(crate) fn given(text: Option<&String>) -> Option<&str> {
    text.map(|text| text.trim()).filter(|text| !text.is_empty())
}

/// A time field (`YYYY-MM-DDTHH:MM`, as a `datetime-local` input sends it,
/// seconds allowed), read as UTC like every time on the pages.
///
/// # Errors
/// 400 `invalid_query` naming the field `what`.
pub(crate) fn utc_time(text: Option<&String>, what: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    given(text)
        .map(|text| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
                .map(|naive| naive.and_utc())
                .map_err(|_| {
                    ApiError::bad_request("invalid_query", format!("{what} is not a time (YYYY-MM-DDTHH:MM, UTC)"))
                })
        })
        .transpose()
}

/// Percent-encodes a query value (unreserved characters stay).
pub(crate) fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
