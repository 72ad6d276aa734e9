//! Customers' sessions: register, log in, refresh, log out, and who am I.
//!
//! A login gives a short-lived access JWT (`LEDGERLINE_TOKEN_TTL_S`, at most
//! 15 minutes) and an opaque refresh token (`LEDGERLINE_REFRESH_TOKEN_TTL_S`),
//! stored only as a SHA-256. Refresh tokens rotate: each use retires the
//! token and issues the next of its family; presenting a retired token again
//! revokes the family (someone else has a copy). Logout revokes the family.
//! Refresh and logout of one family run one at a time (a transaction lock
//! on the family), so a logout racing a refresh also ends the token that
//! refresh issued.
//!
//! Password change and reset (a single-use token valid 30 minutes, sent as
//! a notification through the outbox) end every session. Customers' own
//! accounts, their PIN and their transfers are their neighbours in
//! `routes::customers`, staff roles in `routes::staff`. The `User`
//! extractor reads the user's role and status on every request, so a role
//! change, a freeze or a new password takes effect at once, whatever
//! access tokens are out.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::users::{PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN, check_current_password, end_sessions};
use crate::domain::{audit, users};
use crate::error::ApiError;
use crate::extract::user::User;
use crate::middleware::context::RequestId;

const EMAIL_LENGTH_MAX: usize = 254;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}

/// An email and a password.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CustomerCredentials)]
#[serde(deny_unknown_fields)]
struct Credentials {
    /// One `@` with something before it and a dot after it; no spaces or
    /// control characters; at most 254 characters. Trimmed and lower-cased.
    #[schema(
        example = "jane.doe@example.com",
        max_length = 254,
        pattern = r"^\s*[^\s@\u0000-\u001f\u007f-\u009f]+@[^\s@\u0000-\u001f\u007f-\u009f]*\.[^\s@\u0000-\u001f\u007f-\u009f]*\s*$"
    )]
    email: String,
    /// 12 to 128 characters (checked on register).
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

/// Lower-cased and trimmed; one `@` with something on both sides; no spaces
/// or control characters. Deliverability is for the reset mail to prove.
fn normalize_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let invalid = || ApiError::unprocessable("invalid_email", "give an email address like name@example.com");
    if email.chars().count() > EMAIL_LENGTH_MAX || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') => Ok(email),
        _ => Err(invalid()),
    }
}

fn check_password(password: &SecretString) -> Result<(), ApiError> {
    let length = password.expose_secret().chars().count();
    if !(PASSWORD_LENGTH_MIN..=PASSWORD_LENGTH_MAX).contains(&length) {
        return Err(ApiError::unprocessable(
            "weak_password",
            format!("a password has {PASSWORD_LENGTH_MIN} to {PASSWORD_LENGTH_MAX} characters"),
        ));
    }
    Ok(())
}

/// Registers a customer.
///
/// The email is normalized (trimmed, lower case); the password has 12 to 128
/// characters. Throttled per client IP.
#[utoipa::path(
    post,
    path = "/v1/auth/register",
    operation_id = "customer_register",
    tag = "customers",
    request_body = Credentials,
    responses((
        status = 201,
        description = "Registered: `{\"user_id\", \"email\"}`; log in next",
        body = serde_json::Value,
        example = json!({ "email": "jane.doe@example.com", "user_id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f" }),
    )),
    security(()),
)]
async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.token_ips.admit(&peer.ip())?;
    let Json(credentials) = body?;
    let email = normalize_email(&credentials.email)?;
    check_password(&credentials.password)?;
    let password = credentials.password;
    let hash = state.hasher.hash_blocking(password).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query!(
        "insert into users (id, email, password_hash) values ($1, $2, $3) on conflict (email) do nothing",
        id,
        &email,
        &hash,
    )
    .execute(&state.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::Client {
            status: StatusCode::CONFLICT,
            code: "email_taken",
            title: "Conflict",
            detail: "an account with this email exists; log in or reset the password".into(),
        });
    }
    tracing::info!(user_id = %id, "customer registered");
    audit::record(&state, audit::Event::by_user("user.registered", id, peer, &request_id.0)).await;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "user_id": id, "email": email }))))
}

/// A session: a short-lived access token and the refresh token that renews it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CustomerSession)]
struct Session {
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Single use: each refresh returns the next one.
    refresh_token: String,
    refresh_expires_at: DateTime<Utc>,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Issues an access token and the next refresh token of `family_id`.
/// `epoch` is the user's session epoch as read with the credentials that
/// were checked: if it has moved on since (a password change, a freeze),
/// the tokens issued here are refused at their first use.
async fn open_session(
    state: &AppState,
    user_id: Uuid,
    role: &str,
    epoch: i32,
    family_id: Uuid,
    connection: &mut sqlx::PgConnection,
) -> Result<Session, ApiError> {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let refresh_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let ttl_s = i64::try_from(state.refresh_token_ttl_s).unwrap_or(i64::MAX);
    let expires_at = Utc::now() + Duration::seconds(ttl_s);
    sqlx::query!(
        r"insert into refresh_tokens (id, family_id, user_id, token_hash, expires_at, session_epoch)
          values ($1, $2, $3, $4, $5, $6)",
        Uuid::new_v4(),
        family_id,
        user_id,
        token_hash(&refresh_token),
        expires_at,
        epoch,
    )
    .execute(&mut *connection)
    .await?;
    Ok(Session {
        access_token: state.jwt.issue_customer(user_id, role, epoch)?,
        token_type: "Bearer",
        expires_in: state.jwt.token_ttl_s,
        refresh_token,
        refresh_expires_at: expires_at,
    })
}

/// Logs a customer (or staff member) in.
///
/// A wrong email and a wrong password answer the same. Throttled per client
/// IP and per account.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    operation_id = "customer_login",
    tag = "customers",
    request_body = Credentials,
    responses((status = 200, description = "A new session", body = Session)),
    security(()),
)]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Json<Session>, ApiError> {
    state.limits.token_ips.admit(&peer.ip())?;
    let Json(credentials) = body?;
    let email = credentials.email.trim().to_lowercase();
    // Per account too: a guesser spread over many addresses still waits.
    state.limits.login_accounts.admit(&email)?;
    let check = users::check_password_of(&state, &email, credentials.password.clone()).await?;
    let subject_user_id = check.known_user;
    let Some(stored) = check.verified else {
        tracing::info!(%peer, "failed login");
        audit::record(
            &state,
            audit::Event {
                action: "login.failed",
                actor_user_id: None,
                subject_user_id,
                peer: Some(peer),
                request_id: &request_id.0,
                detail: serde_json::json!({ "known_user": subject_user_id.is_some() }),
            },
        )
        .await;
        return Err(ApiError::unauthorized("invalid_credentials", "the email or the password is wrong"));
    };
    let user_id = stored.id;
    if state.hasher.needs_rehash(&stored.password_hash) {
        rehash_password(&state, user_id, &stored.password_hash, credentials.password).await;
    }
    let mut connection = state.pool.acquire().await?;
    let session =
        open_session(&state, user_id, &stored.role, stored.session_epoch, Uuid::new_v4(), &mut connection).await?;
    tracing::info!(%user_id, "customer logged in");
    audit::record(&state, audit::Event::by_user("login.succeeded", user_id, peer, &request_id.0)).await;
    Ok(Json(session))
}

/// A session's refresh token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    #[schema(value_type = String, format = Password)]
    refresh_token: SecretString,
}

/// Renews a session with its refresh token.
///
/// The refresh token is used up: the answer holds the next one. Presenting a
/// used refresh token again ends the whole session (`refresh_token_reused`).
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    operation_id = "customer_refresh",
    tag = "customers",
    request_body = RefreshRequest,
    responses((status = 200, description = "The renewed session", body = Session)),
    security(()),
)]
async fn refresh(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Json<Session>, ApiError> {
    let Json(request) = body?;
    let hash = token_hash(request.refresh_token.expose_secret());
    let mut transaction = state.pool.begin().await?;
    let invalid = || ApiError::unauthorized("invalid_refresh_token", "log in again");
    // The family first, then its lock, then the token as it is once the
    // lock is ours: a logout holding the lock has finished by then.
    let family_id = lock_family_of(&mut transaction, &hash).await?.ok_or_else(invalid)?;
    // `current_epoch!`: a comparison of two non-null columns is never null,
    // though Postgres cannot tell.
    let row = sqlx::query!(
        r#"select token.id, token.family_id, token.user_id, token.used_at, token.revoked_at, token.expires_at,
                 user_.role, token.session_epoch = user_.session_epoch as "current_epoch!",
                 user_.session_epoch
          from refresh_tokens token join users user_ on user_.id = token.user_id
          where token.token_hash = $1 and token.family_id = $2 and user_.disabled_at is null
          for update of token"#,
        &hash,
        family_id,
    )
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(row) = row else {
        return Err(invalid());
    };
    let (family_id, user_id) = (row.family_id, row.user_id);
    if row.revoked_at.is_some() || row.expires_at <= Utc::now() || !row.current_epoch {
        return Err(invalid());
    }
    if row.used_at.is_some() {
        // A retired token came back: whoever holds the family now, it is not
        // only its owner. End every session of the family.
        sqlx::query!(
            "update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null",
            family_id
        )
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        tracing::warn!(%user_id, %family_id, "refresh token reused; the session family is revoked");
        audit::record(
            &state,
            audit::Event {
                action: "refresh_token.reused",
                actor_user_id: None,
                subject_user_id: Some(user_id),
                peer: Some(peer),
                request_id: &request_id.0,
                detail: serde_json::json!({ "family_id": family_id }),
            },
        )
        .await;
        return Err(ApiError::unauthorized("refresh_token_reused", "this session was ended; log in again"));
    }
    sqlx::query!("update refresh_tokens set used_at = now() where id = $1", row.id).execute(&mut *transaction).await?;
    let session = open_session(&state, user_id, &row.role, row.session_epoch, family_id, &mut transaction).await?;
    transaction.commit().await?;
    Ok(Json(session))
}

/// Logs out: ends the session of the refresh token.
///
/// An unknown or already ended session answers the same.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    operation_id = "customer_logout",
    tag = "customers",
    request_body = RefreshRequest,
    responses((status = 204, description = "Logged out")),
    security(()),
)]
async fn logout(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(request) = body?;
    let mut transaction = state.pool.begin().await?;
    // Unknown: nothing to do, and nothing to tell.
    let Some(family_id) = lock_family_of(&mut transaction, &token_hash(request.refresh_token.expose_secret())).await?
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    // With the family's lock held, this statement sees every token of the
    // family, including one a refresh that held the lock just issued.
    sqlx::query!("update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null", family_id)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The first key of the two-key transaction advisory locks on refresh-token
/// families ("LLRF"), apart from every other advisory lock on the database.
const FAMILY_LOCK_CLASS: i32 = 0x4C4C_5246;

/// Finds the family of the refresh token with `hash` and takes the family's
/// lock until the end of the transaction; `None` for an unknown token.
/// Refresh and logout take it before they read or change the family's
/// tokens, so they run one after the other: without it, a logout whose
/// statement began while a refresh was inserting the next token missed
/// that token, and the session lived on. The second key is a 32-bit hash
/// of the family id: two families sharing one only wait for each other.
async fn lock_family_of(connection: &mut sqlx::PgConnection, hash: &[u8]) -> Result<Option<Uuid>, sqlx::Error> {
    let family_id = sqlx::query_scalar!("select family_id from refresh_tokens where token_hash = $1", hash)
        .fetch_optional(&mut *connection)
        .await?;
    if let Some(family_id) = family_id {
        sqlx::query!("select pg_advisory_xact_lock($1, hashtext($2::uuid::text))", FAMILY_LOCK_CLASS, family_id)
            .execute(&mut *connection)
            .await?;
    }
    Ok(family_id)
}

/// Who the access token belongs to.
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "me",
    tag = "customers",
    responses((
        status = 200,
        description = "`{\"user_id\", \"email\", \"role\"}`",
        body = serde_json::Value,
        example = json!({
            "email": "jane.doe@example.com",
            "role": "customer",
            "user_id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
        }),
    )),
)]
async fn me(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    let email = sqlx::query_scalar!("select email from users where id = $1 and disabled_at is null", user.id)
        .fetch_optional(&state.pool)
        .await?;
    let email = email.ok_or_else(|| ApiError::invalid_token("this user no longer exists"))?;
    Ok(Json(serde_json::json!({ "user_id": user.id, "email": email, "role": user.role })))
}

/// Stores a hash of the configured cost for a password just checked
/// against an older one. Best effort: the login succeeds either way, and
/// the next one tries again. Only if the hash is still the one checked
/// (a password change in between wins).
async fn rehash_password(state: &AppState, user_id: Uuid, checked_hash: &str, password: SecretString) {
    let rehashed = match state.hasher.hash_blocking(password).await {
        Ok(hash) => sqlx::query!(
            "update users set password_hash = $3 where id = $1 and password_hash = $2",
            user_id,
            checked_hash,
            hash,
        )
        .execute(&state.pool)
        .await
        .map(|_| ())
        .map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    match rehashed {
        Ok(()) => tracing::info!(%user_id, "password rehashed with the configured argon2 cost"),
        Err(error) => tracing::warn!(%user_id, %error, "rehashing a password failed"),
    }
}

/// The current password and the new one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    current_password: SecretString,
    /// 12 to 128 characters.
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

/// Changes the password after checking the current one.
///
/// Every session ends (the client logs in again).
#[utoipa::path(
    post,
    path = "/v1/me/password",
    operation_id = "change_password",
    tag = "customers",
    request_body = PasswordChange,
    responses((status = 204, description = "Changed; every session has ended")),
)]
async fn change_password(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(request) = body?;
    check_password(&request.new_password)?;
    check_current_password(&state, user.id, request.current_password).await?;
    set_password(&state, user.id, request.new_password).await?;
    audit::record(&state, audit::Event::by_user("password.changed", user.id, peer, &request_id.0)).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(state: &AppState, user_id: Uuid, password: SecretString) -> Result<(), ApiError> {
    let hash = state.hasher.hash_blocking(password).await?;
    let mut transaction = state.pool.begin().await?;
    sqlx::query!("update users set password_hash = $2, password_changed_at = now() where id = $1", user_id, hash)
        .execute(&mut *transaction)
        .await?;
    end_sessions(&mut transaction, user_id).await?;
    transaction.commit().await?;
    Ok(())
}

/// How long a reset token is valid.
pub(crate) const RESET_TOKEN_TTL_S: i64 = 30 * 60;

/// Whose password to reset.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    /// One `@` with something before it and a dot after it; no spaces or
    /// control characters; at most 254 characters. Trimmed and lower-cased.
    #[schema(
        example = "jane.doe@example.com",
        max_length = 254,
        pattern = r"^\s*[^\s@\u0000-\u001f\u007f-\u009f]+@[^\s@\u0000-\u001f\u007f-\u009f]*\.[^\s@\u0000-\u001f\u007f-\u009f]*\s*$"
    )]
    email: String,
}

/// Asks for a password reset.
///
/// A known user gets a single-use token, valid 30 minutes, as a
/// notification. Always 202 with the same body, whether or not the email is
/// known; 422 `invalid_email` for what is not an email address. Throttled
/// per client IP.
// The same work whether or not the email is known, so the timing does not
// tell either: a token is drawn, one statement looks the email up and, for
// a known user, stores the token's hash and queues the
// `password_reset.requested` notification through the outbox; the audit row
// is written in the same transaction, so both paths commit a write (a
// read-only commit would skip the WAL flush and answer measurably faster).
#[utoipa::path(
    post,
    path = "/v1/auth/password-reset",
    operation_id = "password_reset_request",
    tag = "customers",
    request_body = ResetRequest,
    responses((
        status = 202,
        description = "Accepted, whether or not the email is known: `{\"status\": \"accepted\"}`",
        body = serde_json::Value,
        example = json!({ "status": "accepted" }),
    )),
    security(()),
)]
async fn request_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.token_ips.admit(&peer.ip())?;
    let Json(request) = body?;
    // A malformed address is refused as such (422 `invalid_email`): that
    // tells nothing about who has an account. Before, it went to the
    // database as given, and a NUL byte in it failed the statement (500).
    let email = normalize_email(&request.email)?;
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires_at = Utc::now() + Duration::seconds(RESET_TOKEN_TTL_S);
    // The user id joins the message in SQL, where it is first known.
    let message = serde_json::json!({
        "type": "password_reset.requested",
        "email": email,
        "token": token,
        "expires_at": expires_at,
    });
    let mut transaction = state.pool.begin().await?;
    let user = sqlx::query_scalar!(
        r"with target as (select id from users where email = $1 and disabled_at is null),
               reset as (insert into password_resets (id, user_id, token_hash, expires_at)
                         select $2, id, $3, $4 from target returning user_id),
               notice as (insert into outbox (destination, event_type, message_key, payload)
                          select 'notifications', 'password_reset.requested', user_id::text,
                                 ($5::jsonb || jsonb_build_object('user_id', user_id))::json
                          from reset)
          select user_id from reset",
        &email,
        Uuid::new_v4(),
        token_hash(&token),
        expires_at,
        &message,
    )
    .fetch_optional(&mut *transaction)
    .await?;
    audit::record_in(
        &mut transaction,
        audit::Event {
            action: "password_reset.requested",
            actor_user_id: None,
            subject_user_id: user,
            peer: Some(peer),
            request_id: &request_id.0,
            detail: serde_json::json!({ "known_user": user.is_some() }),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "accepted" }))))
}

/// The reset token from the notification, and the new password.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetConfirm {
    #[schema(value_type = String, format = Password)]
    token: SecretString,
    /// 12 to 128 characters.
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

/// Sets a new password with a reset token.
///
/// The token must be valid, unused and unexpired; it works once. Every
/// session of the user ends. Throttled per client IP.
#[utoipa::path(
    post,
    path = "/v1/auth/password-reset/confirm",
    operation_id = "password_reset_confirm",
    tag = "customers",
    request_body = ResetConfirm,
    responses((status = 204, description = "The password is set; every session has ended")),
    security(()),
)]
async fn confirm_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<ResetConfirm>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    state.limits.token_ips.admit(&peer.ip())?;
    let Json(request) = body?;
    check_password(&request.new_password)?;
    // Used up in the same statement that checks it: a token works once.
    let user_id = sqlx::query_scalar!(
        r"update password_resets set used_at = now()
          where token_hash = $1 and used_at is null and expires_at > now()
          returning user_id",
        token_hash(request.token.expose_secret()),
    )
    .fetch_optional(&state.pool)
    .await?;
    let user_id = user_id
        .ok_or_else(|| ApiError::unprocessable("invalid_reset_token", "the reset link is invalid or expired"))?;
    set_password(&state, user_id, request.new_password).await?;
    audit::record(&state, audit::Event::by_user("password_reset.completed", user_id, peer, &request_id.0)).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(normalize_email("  Jane.Doe@Example.COM ").expect("valid"), "jane.doe@example.com");
        for bad in ["", "jane", "@example.com", "jane@", "jane@localhost", "ja ne@example.com", "a@b@c.com"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn passwords_have_12_to_128_characters() {
        let password = |text: &str| SecretString::from(text.to_owned());
        assert!(check_password(&password("short-pass1")).is_err());
        assert!(check_password(&password("long-enough-1")).is_ok());
        assert!(check_password(&password(&"x".repeat(129))).is_err());
        assert!(check_password(&password("ünïcødé-wørds")).is_ok(), "characters, not bytes");
    }
}
