//! Users' roles, freezes and sessions, changed the same way from the API
//! and from the operator's shell (`ledgerctl users`): one at a time, never
//! leaving no active admin, audited in the same transaction as the change.

use std::net::SocketAddr;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::audit;
use crate::error::ApiError;

/// The roles a user may have.
pub const ROLES: &[&str] = &["customer", "support", "admin", "ops"];

/// A user as admins see them.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UserView {
    pub(crate) id: Uuid,
    pub(crate) email: String,
    /// `customer`, `support`, `admin` or `ops`.
    pub(crate) role: String,
    pub(crate) created_at: DateTime<Utc>,
    /// Set while the user is frozen: no login, no request.
    pub(crate) frozen_at: Option<DateTime<Utc>>,
}

/// Locks the acting admin's and the target user's rows (in id order, so
/// two admins acting on each other queue instead of deadlocking), then
/// checks the actor is still an active admin: the token's request was
/// authorized before the lock, and another admin may have demoted or frozen
/// this one meanwhile.
pub(crate) async fn lock_actor_and_target(
    connection: &mut PgConnection,
    actor: Uuid,
    target: Uuid,
) -> Result<(), ApiError> {
    serialize_user_changes(connection).await?;
    // `frozen!`: an `is not null` is never null, though Postgres cannot tell.
    let rows = sqlx::query!(
        r#"select id, role, disabled_at is not null as "frozen!" from users where id = any($1) order by id for update"#,
        &[actor, target][..],
    )
    .fetch_all(&mut *connection)
    .await?;
    if !rows.iter().any(|row| row.id == actor && row.role == "admin" && !row.frozen) {
        return Err(ApiError::Client {
            status: StatusCode::FORBIDDEN,
            code: "forbidden_role",
            title: "Forbidden",
            detail: "you are no longer an active admin".into(),
        });
    }
    if !rows.iter().any(|row| row.id == target) {
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    Ok(())
}

/// Role changes and freezes run one at a time (a transaction advisory
/// lock): the "an admin remains" check below then sees every change made
/// before it, from the API or from `ledgerctl`.
async fn serialize_user_changes(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("select pg_advisory_xact_lock(hashtext('ledgerline:user-roles'))").execute(&mut *connection).await?;
    Ok(())
}

/// Refuses a change that would leave no active admin: nobody could manage
/// users any more without going around the API.
async fn keep_an_admin(connection: &mut PgConnection) -> Result<(), ApiError> {
    let admins =
        sqlx::query_scalar!(r#"select count(*) as "admins!" from users where role = 'admin' and disabled_at is null"#)
            .fetch_one(&mut *connection)
            .await?;
    if admins == 0 {
        return Err(ApiError::Client {
            status: StatusCode::CONFLICT,
            code: "last_admin",
            title: "Conflict",
            detail: "this would leave no active admin".into(),
        });
    }
    Ok(())
}

/// Gives the user `role` and audits the change (when it is one) on the same
/// connection: the role before and the user after. Run it in a transaction
/// with the user's row locked.
pub(crate) async fn apply_role(
    connection: &mut PgConnection,
    user_id: Uuid,
    role: &str,
    actor: Option<Uuid>,
    peer: Option<SocketAddr>,
    request_id: &str,
) -> Result<(String, UserView), ApiError> {
    let before = sqlx::query_scalar!("select role from users where id = $1 for update", user_id)
        .fetch_optional(&mut *connection)
        .await?;
    let before = before.ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    let user = sqlx::query_as!(
        UserView,
        r"update users set role = $2 where id = $1
          returning id, email, role, created_at, disabled_at as frozen_at",
        user_id,
        role,
    )
    .fetch_one(&mut *connection)
    .await?;
    if before == "admin" && role != "admin" {
        keep_an_admin(connection).await?;
    }
    if before != role {
        audit::record_in(
            connection,
            audit::Event {
                action: "user.role_changed",
                actor_user_id: actor,
                subject_user_id: Some(user_id),
                peer,
                request_id,
                detail: serde_json::json!({ "from": before, "to": role }),
            },
        )
        .await?;
    }
    Ok((before, user))
}

/// Gives the user with `email` a role from the operator's shell (`ledgerctl
/// users set-role`): how the first admin is made. Audited with no actor and
/// the request id `ledgerctl`.
///
/// # Errors
/// An unknown role or email, the last admin's demotion, or a database failure.
pub async fn set_role_by_email(pool: &sqlx::PgPool, email: &str, role: &str) -> anyhow::Result<String> {
    anyhow::ensure!(ROLES.contains(&role), "a role is one of {}", ROLES.join(", "));
    let mut transaction = pool.begin().await?;
    serialize_user_changes(&mut transaction).await?;
    let user_id = user_by_email(&mut transaction, email).await?;
    let (before, _) = apply_role(&mut transaction, user_id, role, None, None, "ledgerctl")
        .await
        .map_err(|error| anyhow::anyhow!("{error:?}"))?;
    transaction.commit().await?;
    Ok(before)
}

/// Unfreezes the user with `email` from the operator's shell (`ledgerctl
/// users unfreeze`): the way back when the only admins are frozen.
///
/// # Errors
/// An unknown email or a database failure.
pub async fn unfreeze_by_email(pool: &sqlx::PgPool, email: &str) -> anyhow::Result<()> {
    let mut transaction = pool.begin().await?;
    serialize_user_changes(&mut transaction).await?;
    let user_id = user_by_email(&mut transaction, email).await?;
    apply_freeze(&mut transaction, user_id, false, None, None, "ledgerctl")
        .await
        .map_err(|error| anyhow::anyhow!("{error:?}"))?;
    transaction.commit().await?;
    Ok(())
}

async fn user_by_email(connection: &mut PgConnection, email: &str) -> anyhow::Result<Uuid> {
    let user_id = sqlx::query_scalar!("select id from users where email = $1", email.trim().to_lowercase())
        .fetch_optional(&mut *connection)
        .await?;
    user_id.ok_or_else(|| anyhow::anyhow!("no user has the email {email:?}; register first"))
}

/// Freezes (ending every session) or unfreezes the user and audits it, on
/// the caller's transaction.
pub(crate) async fn apply_freeze(
    connection: &mut PgConnection,
    user_id: Uuid,
    frozen: bool,
    actor: Option<Uuid>,
    peer: Option<SocketAddr>,
    request_id: &str,
) -> Result<UserView, ApiError> {
    // `coalesce` keeps the first freeze's time when frozen twice.
    let user = sqlx::query_as!(
        UserView,
        r"update users set disabled_at = case when $2 then coalesce(disabled_at, now()) end where id = $1
          returning id, email, role, created_at, disabled_at as frozen_at",
        user_id,
        frozen,
    )
    .fetch_optional(&mut *connection)
    .await?;
    let user = user.ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    if frozen {
        if user.role == "admin" {
            keep_an_admin(connection).await?;
        }
        end_sessions(connection, user_id).await?;
    }
    audit::record_in(
        connection,
        audit::Event {
            action: if frozen { "user.frozen" } else { "user.unfrozen" },
            actor_user_id: actor,
            subject_user_id: Some(user_id),
            peer,
            request_id,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    Ok(user)
}

pub(crate) const PASSWORD_LENGTH_MIN: usize = 12;

pub(crate) const PASSWORD_LENGTH_MAX: usize = 128;

/// Ends every session of a user: every refresh-token family is revoked and
/// the session epoch moves on, so every access token already issued is
/// refused on its next use (not when it expires).
pub(crate) async fn end_sessions(connection: &mut sqlx::PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null", user_id)
        .execute(&mut *connection)
        .await?;
    sqlx::query!("update users set session_epoch = session_epoch + 1 where id = $1", user_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Checks a logged-in user's current password, for changes an access token
/// alone must not make (a new password, a first PIN).
///
/// # Errors
/// 401 `invalid_credentials` when it is wrong.
pub(crate) async fn check_current_password(
    state: &AppState,
    user_id: Uuid,
    password: SecretString,
) -> Result<(), ApiError> {
    let hash = sqlx::query_scalar!("select password_hash from users where id = $1 and disabled_at is null", user_id)
        .fetch_optional(&state.pool)
        .await?;
    if !state.hasher.verify(hash, password).await? {
        return Err(ApiError::unauthorized("invalid_credentials", "the current password is wrong"));
    }
    Ok(())
}

/// A user who proved their password.
#[derive(Debug)]
pub(crate) struct VerifiedUser {
    pub id: Uuid,
    /// The hash checked, to rehash at a new cost.
    pub password_hash: String,
    pub role: String,
    pub session_epoch: i32,
}

/// The outcome of checking a password for an email.
#[derive(Debug)]
pub(crate) struct PasswordCheck {
    /// The active user the email names, right password or not (for the
    /// audit log).
    pub known_user: Option<Uuid>,
    /// That user, when the password is theirs.
    pub verified: Option<VerifiedUser>,
}

/// Checks `password` for the active user with `email` (lower-cased by the
/// caller), as the API's login and the dashboard's sign-in do. An unknown
/// or frozen email costs a hash check too, so it takes as long as a wrong
/// password.
///
/// # Errors
/// Database or hashing failures.
pub(crate) async fn check_password_of(
    state: &AppState,
    email: &str,
    password: SecretString,
) -> Result<PasswordCheck, ApiError> {
    let stored = sqlx::query_as!(
        VerifiedUser,
        "select id, password_hash, role, session_epoch from users where email = $1 and disabled_at is null",
        email,
    )
    .fetch_optional(&state.pool)
    .await?;
    let matches = state.hasher.verify(stored.as_ref().map(|user| user.password_hash.clone()), password).await?;
    Ok(PasswordCheck { known_user: stored.as_ref().map(|user| user.id), verified: stored.filter(|_| matches) })
}
