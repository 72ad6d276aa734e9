//! The [`User`] extractor: the customer or staff member a request's access
//! token names, with their role and status as they are now (read on every
//! request, so a role change, a freeze or a new password takes effect at
//! once, whatever tokens are out), and [`require`], the check every
//! staff route starts with.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::AppState;
use crate::domain::permissions::Permission;
use crate::error::ApiError;
use crate::extract::principal::bearer_token;

/// A logged-in customer (or staff member), from a customer access token.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub id: Uuid,
    pub role: String,
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let claims = state.jwt.decode_customer(bearer_token(&parts.headers)?)?;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::invalid_token("the token has no valid subject"))?;
        state.limits.clients.admit(&id)?;
        // The user as they are now: a frozen user, a changed role or a new
        // password takes effect on the next request, not when the access
        // token expires. One primary-key read.
        // `frozen!`: an `is not null` is never null, though Postgres cannot tell.
        let stored = sqlx::query!(
            r#"select role, disabled_at is not null as "frozen!", session_epoch from users where id = $1"#,
            id,
        )
        .fetch_optional(&state.pool)
        .await?;
        let Some(stored) = stored else {
            return Err(ApiError::invalid_token("no such user"));
        };
        if stored.frozen {
            return Err(ApiError::invalid_token("this user is frozen"));
        }
        if claims.epoch != stored.session_epoch {
            return Err(ApiError::invalid_token("the session ended (password changed, or the user was frozen)"));
        }
        Ok(Self { id, role: stored.role })
    }
}

/// # Errors
/// 403 `forbidden_role` unless the user's role has `permission` (see
/// [`Permission::roles`]).
pub(crate) fn require(user: &User, permission: Permission) -> Result<(), ApiError> {
    if permission.granted_to(&user.role) {
        Ok(())
    } else {
        Err(ApiError::Client {
            status: StatusCode::FORBIDDEN,
            code: "forbidden_role",
            title: "Forbidden",
            detail: format!("this needs one of the roles {}", permission.roles().join(", ")),
        })
    }
}
