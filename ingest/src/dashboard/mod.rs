//! The staff dashboard at `/admin`: server-rendered pages for the bank's
//! support, admin and ops staff, served by ingest with its assets embedded
//! in the binary (no front-end build).
//!
//! - [`overview`]: money moving now, live over Server-Sent Events;
//! - [`transfers`]: search and a transfer's whole life;
//! - [`accounts`]: balances, holds, history, freeze / unfreeze / close;
//! - [`operations`]: dead letters and the outbox, replay and retry;
//! - [`audit`]: the audit log;
//! - [`session`]: sign-in, the session cookie and CSRF; [`page`]: the shell.
//!
//! Who may see and do what comes from the same table as the API's staff
//! routes ([`crate::domain::permissions`]), and every action goes through
//! the same domain code as the API's. Pages import only [`page`] and
//! [`session`], never one another (a test scans the sources).
//!
//! The pages are not part of the API: they are not in the OpenAPI document,
//! and this router, built here with axum's `route`, is the one exception to
//! "every route through `routes!`". Their Content-Security-Policy allows
//! scripts, styles and connections from the dashboard's own origin only,
//! and nothing inline.

pub(crate) mod accounts;
pub(crate) mod audit;
pub(crate) mod operations;
pub(crate) mod overview;
pub(crate) mod page;
pub(crate) mod session;
pub(crate) mod transfers;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::AppState;

/// The pages' Content-Security-Policy: own origin only, nothing inline, no
/// framing, forms only to the dashboard.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, with their security policy.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview::page))
        .route("/admin/overview/stream", get(overview::stream))
        .route("/admin/login", get(session::login_page).post(session::login))
        .route("/admin/logout", post(session::logout))
        .route("/admin/transfers", get(transfers::search))
        .route("/admin/transfers/{transfer_id}", get(transfers::detail))
        .route("/admin/accounts", get(accounts::find))
        .route("/admin/accounts/{account_id}", get(accounts::detail))
        .route("/admin/accounts/{account_id}/status", get(accounts::confirm).post(accounts::change_status))
        .route("/admin/operations", get(operations::page))
        .route("/admin/operations/replay", post(operations::replay))
        .route("/admin/operations/retry", post(operations::retry))
        .route("/admin/audit", get(audit::page))
        .route("/admin/assets/{name}", get(asset))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
}

/// The embedded assets: the stylesheet and the overview's script.
async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("assets/app.js"), "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
