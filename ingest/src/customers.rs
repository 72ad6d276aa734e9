//! Customers' sessions: register, log in, refresh, log out, and who am I.
//!
//! A login gives a short-lived access JWT (`LEDGERLINE_TOKEN_TTL_S`, at most
//! 15 minutes) and an opaque refresh token (`LEDGERLINE_REFRESH_TOKEN_TTL_S`),
//! stored only as a SHA-256. Refresh tokens rotate: each use retires the
//! token and issues the next of its family; presenting a retired token again
//! revokes the family (someone else has a copy). Logout revokes the family.
//!
//! Password change and reset (a single-use token valid 30 minutes, sent as
//! a notification through the outbox) end every session. Customers' own
//! accounts are in [`crate::customer_accounts`], the PIN and transfers in
//! [`crate::customer_transfers`]. Not built yet (issue #4): staff roles
//! beyond the stored `role` (only the audit log reads it).

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Extension, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use uuid::Uuid;

use crate::audit;
use crate::auth::{bearer_token, hash_secret_blocking, verify_secret};
use crate::context::RequestId;
use crate::error::ApiError;
use crate::startup::AppState;

pub const PASSWORD_LENGTH_MIN: usize = 12;
pub const PASSWORD_LENGTH_MAX: usize = 128;
const EMAIL_LENGTH_MAX: usize = 254;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/v1/me/password", post(change_password))
        .route("/v1/auth/password-reset", post(request_reset))
        .route("/v1/auth/password-reset/confirm", post(confirm_reset))
}

/// A logged-in customer (or staff member), from a customer access token.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub role: String,
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let claims = state.jwt.decode_customer(bearer_token(&parts.headers)?)?;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::invalid_token("the token has no valid subject"))?;
        state.limits.clients.admit(&id)?;
        Ok(Self { id, role: claims.role })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: SecretString,
}

/// Lower-cased and trimmed; one `@` with something on both sides; no spaces
/// or control characters. Deliverability is for the reset mail to prove.
fn normalize_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let invalid = || ApiError::unprocessable("invalid_email", "give an email address like name@example.com");
    if email.len() > EMAIL_LENGTH_MAX || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
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
    let hash = hash_secret_blocking(password).await?;
    let id = Uuid::new_v4();
    let inserted =
        sqlx::query("insert into users (id, email, password_hash) values ($1, $2, $3) on conflict (email) do nothing")
            .bind(id)
            .bind(&email)
            .bind(&hash)
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

#[derive(Debug, Serialize)]
struct Session {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    refresh_expires_at: DateTime<Utc>,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Issues an access token and the next refresh token of `family_id`.
async fn open_session(
    state: &AppState,
    user_id: Uuid,
    role: &str,
    family_id: Uuid,
    connection: &mut sqlx::PgConnection,
) -> Result<Session, ApiError> {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let refresh_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let ttl_s = i64::try_from(state.refresh_token_ttl_s).unwrap_or(i64::MAX);
    let expires_at = Utc::now() + Duration::seconds(ttl_s);
    sqlx::query(
        "insert into refresh_tokens (id, family_id, user_id, token_hash, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::new_v4())
    .bind(family_id)
    .bind(user_id)
    .bind(token_hash(&refresh_token))
    .bind(expires_at)
    .execute(&mut *connection)
    .await?;
    Ok(Session {
        access_token: state.jwt.issue_customer(user_id, role)?,
        token_type: "Bearer",
        expires_in: state.jwt.token_ttl_s,
        refresh_token,
        refresh_expires_at: expires_at,
    })
}

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
    let stored: Option<(Uuid, String, String)> =
        sqlx::query_as("select id, password_hash, role from users where email = $1 and disabled_at is null")
            .bind(&email)
            .fetch_optional(&state.pool)
            .await?;
    // An unknown email costs a hash check too, and answers the same.
    let matches = verify_secret(stored.as_ref().map(|(_, hash, _)| hash.clone()), credentials.password).await?;
    let subject_user_id = stored.as_ref().map(|(id, _, _)| *id);
    let Some((user_id, _, role)) = stored.filter(|_| matches) else {
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
    let mut connection = state.pool.acquire().await?;
    let session = open_session(&state, user_id, &role, Uuid::new_v4(), &mut connection).await?;
    tracing::info!(%user_id, "customer logged in");
    audit::record(&state, audit::Event::by_user("login.succeeded", user_id, peer, &request_id.0)).await;
    Ok(Json(session))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: SecretString,
}

async fn refresh(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Json<Session>, ApiError> {
    let Json(request) = body?;
    let mut transaction = state.pool.begin().await?;
    type Row = (Uuid, Uuid, Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>, String);
    let row: Option<Row> = sqlx::query_as(
        r"select token.id, token.family_id, token.user_id, token.used_at, token.revoked_at, token.expires_at, user_.role
          from refresh_tokens token join users user_ on user_.id = token.user_id
          where token.token_hash = $1 and user_.disabled_at is null
          for update of token",
    )
    .bind(token_hash(request.refresh_token.expose_secret()))
    .fetch_optional(&mut *transaction)
    .await?;
    let invalid = || ApiError::unauthorized("invalid_refresh_token", "log in again");
    let Some((id, family_id, user_id, used_at, revoked_at, expires_at, role)) = row else { return Err(invalid()) };
    if revoked_at.is_some() || expires_at <= Utc::now() {
        return Err(invalid());
    }
    if used_at.is_some() {
        // A retired token came back: whoever holds the family now, it is not
        // only its owner. End every session of the family.
        sqlx::query("update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null")
            .bind(family_id)
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
    sqlx::query("update refresh_tokens set used_at = now() where id = $1").bind(id).execute(&mut *transaction).await?;
    let session = open_session(&state, user_id, &role, family_id, &mut transaction).await?;
    transaction.commit().await?;
    Ok(Json(session))
}

async fn logout(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(request) = body?;
    // Unknown or already revoked: nothing to do, and nothing to tell.
    sqlx::query(
        r"update refresh_tokens set revoked_at = now()
          where revoked_at is null
            and family_id = (select family_id from refresh_tokens where token_hash = $1)",
    )
    .bind(token_hash(request.refresh_token.expose_secret()))
    .execute(&state.pool)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    let email: Option<String> = sqlx::query_scalar("select email from users where id = $1 and disabled_at is null")
        .bind(user.id)
        .fetch_optional(&state.pool)
        .await?;
    let email = email.ok_or_else(|| ApiError::invalid_token("this user no longer exists"))?;
    Ok(Json(serde_json::json!({ "user_id": user.id, "email": email, "role": user.role })))
}

/// Ends every session of a user (all refresh-token families).
async fn revoke_sessions(connection: &mut sqlx::PgConnection, user_id: Uuid) -> Result<(), ApiError> {
    sqlx::query("update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null")
        .bind(user_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: SecretString,
    new_password: SecretString,
}

/// Changes the password after checking the current one; every session ends
/// (the client logs in again).
async fn change_password(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(request) = body?;
    check_password(&request.new_password)?;
    let hash: Option<String> =
        sqlx::query_scalar("select password_hash from users where id = $1 and disabled_at is null")
            .bind(user.id)
            .fetch_optional(&state.pool)
            .await?;
    if !verify_secret(hash, request.current_password).await? {
        return Err(ApiError::unauthorized("invalid_credentials", "the current password is wrong"));
    }
    set_password(&state, user.id, request.new_password).await?;
    audit::record(&state, audit::Event::by_user("password.changed", user.id, peer, &request_id.0)).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(state: &AppState, user_id: Uuid, password: SecretString) -> Result<(), ApiError> {
    let hash = hash_secret_blocking(password).await?;
    let mut transaction = state.pool.begin().await?;
    sqlx::query("update users set password_hash = $2, password_changed_at = now() where id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(&mut *transaction)
        .await?;
    revoke_sessions(&mut transaction, user_id).await?;
    transaction.commit().await?;
    Ok(())
}

/// How long a reset token is valid.
pub const RESET_TOKEN_TTL_S: i64 = 30 * 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    email: String,
}

/// Always 202 with the same body, whether or not the email is known; the
/// same work is done either way (a token is drawn, an audit row written),
/// so the answer's timing does not tell either. A known user gets the
/// token as a `password_reset.requested` notification through the outbox.
async fn request_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.token_ips.admit(&peer.ip())?;
    let Json(request) = body?;
    let email = request.email.trim().to_lowercase();
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires_at = Utc::now() + Duration::seconds(RESET_TOKEN_TTL_S);
    let mut transaction = state.pool.begin().await?;
    let user: Option<Uuid> = sqlx::query_scalar("select id from users where email = $1 and disabled_at is null")
        .bind(&email)
        .fetch_optional(&mut *transaction)
        .await?;
    if let Some(user_id) = user {
        sqlx::query("insert into password_resets (id, user_id, token_hash, expires_at) values ($1, $2, $3, $4)")
            .bind(Uuid::new_v4())
            .bind(user_id)
            .bind(token_hash(&token))
            .bind(expires_at)
            .execute(&mut *transaction)
            .await?;
        let message = serde_json::json!({
            "type": "password_reset.requested",
            "user_id": user_id,
            "email": email,
            "token": token,
            "expires_at": expires_at,
        });
        sqlx::query(
            r"insert into outbox (destination, event_type, message_key, payload)
              values ('notifications', 'password_reset.requested', $1, $2::json)",
        )
        .bind(user_id.to_string())
        .bind(message.to_string())
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    audit::record(
        &state,
        audit::Event {
            action: "password_reset.requested",
            actor_user_id: None,
            subject_user_id: user,
            peer: Some(peer),
            request_id: &request_id.0,
            detail: serde_json::json!({ "known_user": user.is_some() }),
        },
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "accepted" }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetConfirm {
    token: SecretString,
    new_password: SecretString,
}

/// Sets the new password with a valid, unused, unexpired token; every
/// session of the user ends.
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
    let user_id: Option<Uuid> = sqlx::query_scalar(
        r"update password_resets set used_at = now()
          where token_hash = $1 and used_at is null and expires_at > now()
          returning user_id",
    )
    .bind(token_hash(request.token.expose_secret()))
    .fetch_optional(&state.pool)
    .await?;
    let user_id =
        user_id.ok_or_else(|| ApiError::bad_request("invalid_reset_token", "the reset link is invalid or expired"))?;
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
