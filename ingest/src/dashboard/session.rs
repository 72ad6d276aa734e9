//! Staff sign-in for the dashboard: a session cookie, its timeouts, and the
//! CSRF token every state-changing form carries.
//!
//! Staff sign in with their email and password (the same users, password
//! hashes and rate limits as the API's login). The cookie (`ll_staff`) holds
//! a random token; only its SHA-256 is stored, in `staff_sessions`, with the
//! user's session epoch. It is `HttpOnly; SameSite=Strict; Path=/admin` and
//! `Secure` unless the service is told it runs on plain HTTP for
//! development. A session ends on sign-out, after `idle_timeout_s` without a
//! request, `absolute_timeout_s` after sign-in, or when the user is frozen,
//! changes password, or no longer has a staff role: the [`Staff`] extractor
//! reads the session and the user on every request.
//!
//! Customers cannot sign in here, and a bearer token (a customer's or an API
//! client's) is no session: `/admin` only knows its cookie.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Extension, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use maud::html;
use rand::RngCore as _;
use secrecy::SecretString;
use serde::Deserialize;
use sha2::Digest as _;
use uuid::Uuid;

use super::page;
use crate::AppState;
use crate::domain::audit;
use crate::error::ApiError;
use crate::extract::user::User;
use crate::middleware::context::RequestId;

/// The session cookie.
const SESSION_COOKIE: &str = "ll_staff";
/// The sign-in form's CSRF cookie (before a session exists).
const LOGIN_COOKIE: &str = "ll_login";
/// The roles that may sign in here.
const STAFF_ROLES: [&str; 3] = ["support", "admin", "ops"];
/// Email addresses longer than this are refused before any lookup.
const EMAIL_LENGTH_MAX: usize = 254;
/// Passwords longer than this are refused before any hashing.
const PASSWORD_LENGTH_MAX: usize = 128;

/// A signed-in staff member, as they are now.
#[derive(Debug, Clone)]
pub(crate) struct Staff {
    pub user: User,
    pub email: String,
    pub session_id: Uuid,
    /// The session's CSRF token, to put in forms.
    pub csrf: String,
    pub cookie_secure: bool,
}

impl Staff {
    /// # Errors
    /// 403 `csrf_failed` unless `provided` is this session's token.
    pub(crate) fn check_csrf(&self, provided: Option<&str>) -> Result<(), ApiError> {
        if provided.is_some_and(|provided| same(provided.as_bytes(), self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(csrf_failed())
        }
    }
}

fn csrf_failed() -> ApiError {
    ApiError::Client {
        status: StatusCode::FORBIDDEN,
        code: "csrf_failed",
        title: "Forbidden",
        detail: "this form is not from this session; reload the page and try again".into(),
    }
}

/// Compares without stopping at the first difference.
fn same(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0_u8, |differ, (a, b)| differ | (a ^ b)) == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn token_hash(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn set_cookie(name: &str, value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("ll_invalid=; Path=/admin; Max-Age=0"))
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = Response;

    /// A request of the staff member: it counts as use, so the idle timeout
    /// starts again.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Watching::from_parts(parts, state, true).await?.staff)
    }
}

/// A signed-in staff member whose request does not count as use: the
/// overview's live stream, which the browser reconnects on its own (were
/// it use, an unattended open tab would never reach the idle timeout).
#[derive(Debug, Clone)]
pub(crate) struct Watching {
    pub staff: Staff,
    /// When the session ends unless the staff member does something.
    pub idle_deadline: chrono::DateTime<chrono::Utc>,
}

impl FromRequestParts<AppState> for Watching {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts, state, false).await
    }
}

impl Watching {
    async fn from_parts(parts: &Parts, state: &AppState, used: bool) -> Result<Self, Response> {
        let to_login = || Redirect::to("/admin/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(to_login()) };
        let config = state.dashboard;
        let session = live_session(state, &token_hash(token), used)
            .await
            .map_err(|error| page::error_page(None, error.into()))?;
        let Some(session) = session else { return Err(to_login()) };
        state.limits.clients.admit(&session.user_id).map_err(|error| page::error_page(None, error))?;
        let idle_s = i64::try_from(config.idle_timeout_s).unwrap_or(i64::MAX);
        Ok(Self {
            idle_deadline: session.last_seen_at + chrono::Duration::seconds(idle_s),
            staff: Staff {
                user: User { id: session.user_id, role: session.role },
                email: session.email,
                session_id: session.id,
                csrf: session.csrf_token,
                cookie_secure: config.cookie_secure,
            },
        })
    }
}

/// A session as the extractors read it.
#[derive(Debug)]
struct LiveSession {
    id: Uuid,
    csrf_token: String,
    user_id: Uuid,
    role: String,
    email: String,
    last_seen_at: chrono::DateTime<chrono::Utc>,
}

/// The session with `hash` if it is live: not ended, used within the idle
/// timeout, younger than the absolute one, its user active, on the
/// session's epoch and still staff. One statement; with `used`, it also
/// marks the session used now (the idle deadline returned is the one before
/// this request, which only [`Watching`] reads, and it never marks use).
async fn live_session(state: &AppState, hash: &[u8], used: bool) -> Result<Option<LiveSession>, sqlx::Error> {
    let config = state.dashboard;
    let idle_s = i64::try_from(config.idle_timeout_s).unwrap_or(i64::MAX);
    let absolute_s = i64::try_from(config.absolute_timeout_s).unwrap_or(i64::MAX);
    let roles = STAFF_ROLES.map(str::to_owned);
    // The live session (if any), and with `used` its use marked in the same
    // statement; `last_seen_at` is the one before this request.
    sqlx::query_as!(
        LiveSession,
        r#"with live as (
               select session.id, session.csrf_token, users.id as user_id, users.role, users.email,
                      session.last_seen_at
               from staff_sessions session join users on users.id = session.user_id
               where session.token_hash = $1 and session.ended_at is null
                 and session.last_seen_at > now() - make_interval(secs => $2::bigint::double precision)
                 and session.created_at > now() - make_interval(secs => $3::bigint::double precision)
                 and users.disabled_at is null and users.session_epoch = session.session_epoch
                 and users.role = any($4)
           ), used as (
               update staff_sessions set last_seen_at = now() where $5 and id in (select id from live)
           )
           select id as "id!", csrf_token as "csrf_token!", user_id as "user_id!", role as "role!",
                  email as "email!", last_seen_at as "last_seen_at!"
           from live"#,
        hash,
        idle_s,
        absolute_s,
        &roles[..],
        used,
    )
    .fetch_optional(&state.pool)
    .await
}

/// The sign-in page. It sets the form's CSRF cookie; its hidden field must
/// come back with the same value.
pub(crate) async fn login_page(State(state): State<AppState>) -> Response {
    let token = random_token();
    let mut response = Html(login_form(&token, None, state.dashboard.cookie_secure).into_string()).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 3600, state.dashboard.cookie_secure));
    response
}

fn login_form(csrf: &str, problem: Option<&str>, cookie_secure: bool) -> maud::Markup {
    let body = html! {
        @if let Some(problem) = problem {
            div.notice.error role="alert" { (problem) }
        }
        form.stacked method="post" action="/admin/login" {
            input type="hidden" name="csrf" value=(csrf);
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="username" required maxlength="254" autofocus;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required maxlength="128";
            button.primary type="submit" { "Sign in" }
        }
        p.muted { "For the bank's staff (support, admin, ops). Customers sign in in the app." }
    };
    page::bare("Sign in", &body, cookie_secure)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Credentials {
    email: String,
    password: SecretString,
    csrf: Option<String>,
}

/// Signs a staff member in: the form's CSRF cookie, the rate limits (per
/// address and per email, as the API's login), the password, the role;
/// every failure audited, like the API's.
pub(crate) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    form: Result<Form<Credentials>, axum::extract::rejection::FormRejection>,
) -> Response {
    let secure = state.dashboard.cookie_secure;
    let retry = |status: StatusCode, problem: &str| {
        let token = random_token();
        let mut response = Html(login_form(&token, Some(problem), secure).into_string()).into_response();
        *response.status_mut() = status;
        response.headers_mut().insert(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 3600, secure));
        response
    };
    let Ok(Form(credentials)) = form else {
        return retry(StatusCode::BAD_REQUEST, "Enter your email and password.");
    };
    // The address's limit first: nothing below, not even a log line, is
    // free for a client that floods the form.
    if let Err(error) = state.limits.token_ips.admit(&peer.ip()) {
        return page::error_page(None, error);
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty()
        || !credentials.csrf.as_deref().is_some_and(|csrf| same(csrf.as_bytes(), expected.as_bytes()))
    {
        // Logged, not audited: no one is signed in, and anyone can send it.
        tracing::info!(%peer, "a staff sign-in without its form's token");
        return retry(StatusCode::FORBIDDEN, "This form expired. Sign in again.");
    }
    let email = credentials.email.trim().to_lowercase();
    if email.is_empty()
        || email.len() > EMAIL_LENGTH_MAX
        || secrecy::ExposeSecret::expose_secret(&credentials.password).len() > PASSWORD_LENGTH_MAX
    {
        return retry(StatusCode::UNAUTHORIZED, "Wrong email or password.");
    }
    if let Err(error) = state.limits.login_accounts.admit(&email) {
        return page::error_page(None, error);
    }
    match sign_in(&state, &email, credentials.password, peer, &request_id.0).await {
        Ok(Some(token)) => {
            let mut response = Redirect::to("/admin").into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, state.dashboard.absolute_timeout_s, secure),
            );
            headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
            response
        }
        Ok(None) => retry(StatusCode::UNAUTHORIZED, "Wrong email or password, or this account is not staff."),
        Err(error) => page::error_page(None, error),
    }
}

/// Checks the password and the role and opens a session: its cookie token,
/// or `None` (audited) when the email, the password or the role is wrong.
async fn sign_in(
    state: &AppState,
    email: &str,
    password: SecretString,
    peer: SocketAddr,
    request_id: &str,
) -> Result<Option<String>, ApiError> {
    let check = crate::domain::users::check_password_of(state, email, password).await?;
    let Some(user) = check.verified else {
        tracing::info!(%peer, "failed staff sign-in");
        // As the API's `login.failed`: whose account was tried, if anyone's.
        let mut event = refused("dashboard.login_failed", check.known_user, peer, request_id);
        event.detail = serde_json::json!({ "known_user": check.known_user.is_some() });
        audit::record(state, event).await;
        return Ok(None);
    };
    if !STAFF_ROLES.contains(&user.role.as_str()) {
        tracing::info!(%peer, user_id = %user.id, "a non-staff user tried the staff sign-in");
        audit::record(state, refused("dashboard.login_refused", Some(user.id), peer, request_id)).await;
        return Ok(None);
    }
    let token = random_token();
    sqlx::query!(
        r"insert into staff_sessions (id, token_hash, user_id, csrf_token, session_epoch)
          values ($1, $2, $3, $4, $5)",
        Uuid::new_v4(),
        token_hash(&token),
        user.id,
        random_token(),
        user.session_epoch,
    )
    .execute(&state.pool)
    .await?;
    tracing::info!(user_id = %user.id, role = user.role, "staff signed in");
    audit::record(state, audit::Event::by_user("dashboard.login", user.id, peer, request_id)).await;
    Ok(Some(token))
}

fn refused<'a>(action: &'a str, subject: Option<Uuid>, peer: SocketAddr, request_id: &'a str) -> audit::Event<'a> {
    audit::Event {
        action,
        actor_user_id: None,
        subject_user_id: subject,
        peer: Some(peer),
        request_id,
        detail: serde_json::json!({}),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

/// Signs out: the session ends at once, whatever the cookie's age.
pub(crate) async fn logout(
    State(state): State<AppState>,
    staff: Staff,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    form: Result<Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.ok().and_then(|Form(form)| form.csrf);
    if let Err(error) = staff.check_csrf(csrf.as_deref()) {
        return page::error_page(Some(&staff), error);
    }
    if let Err(error) = sqlx::query!("update staff_sessions set ended_at = now() where id = $1", staff.session_id)
        .execute(&state.pool)
        .await
    {
        return page::error_page(Some(&staff), error.into());
    }
    audit::record(&state, audit::Event::by_user("dashboard.logout", staff.user.id, peer, &request_id.0)).await;
    let mut response = Redirect::to("/admin/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, staff.cookie_secure));
    response
}

/// Refuses a staff member a form their role may not send, audited: the
/// button was not on their page, so the request was made by hand.
pub(crate) async fn refuse_forged(
    state: &AppState,
    staff: &Staff,
    permission: crate::domain::permissions::Permission,
    peer: SocketAddr,
    request_id: &str,
    what: &str,
) -> Response {
    tracing::warn!(user_id = %staff.user.id, role = staff.user.role, what, "a dashboard action the role may not take");
    audit::record(
        state,
        audit::Event::by_staff(
            "dashboard.forbidden",
            staff.user.id,
            peer,
            request_id,
            serde_json::json!({ "action": what }),
        ),
    )
    .await;
    page::error_page(Some(staff), page::forbidden(permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_compared_in_full() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; ll_staff=abc; ll_login=xyz"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "ll_sta"), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_unless_told_otherwise() {
        let secure = set_cookie(SESSION_COOKIE, "t", 60, true);
        assert_eq!(secure, "ll_staff=t; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=60; Secure");
        let plain = set_cookie(SESSION_COOKIE, "t", 60, false);
        assert_eq!(plain, "ll_staff=t; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=60");
    }
}
