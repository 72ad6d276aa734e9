//! The [`Principal`] extractor: the API client a request's bearer token
//! names, with the scopes it still has (read on every request, so a
//! disabled client or a scope taken away takes effect at once).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use uuid::Uuid;

use crate::AppState;
use crate::domain::clients::Scope;
use crate::error::ApiError;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub client_id: Uuid,
    scopes: Vec<Scope>,
}

impl Principal {
    /// # Errors
    /// 403 `insufficient_scope` when the token lacks `scope`.
    pub(crate) fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) { Ok(()) } else { Err(ApiError::InsufficientScope(scope.as_str())) }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let claims = state
            .jwt
            .decode_client(token)
            .map_err(|error| ApiError::invalid_token(format!("the access token is not valid: {error}")))?;
        let client_id = Uuid::parse_str(&claims.sub)
            .map_err(|_| ApiError::invalid_token("the access token has no valid subject"))?;
        state.limits.clients.admit(&client_id)?;
        // The client as it is now, not as it was when the token was issued:
        // disabling a client or taking a scope away takes effect on its next
        // request, not when its tokens expire. One primary-key read.
        let granted: Option<Vec<String>> =
            sqlx::query_scalar!("select scopes from api_clients where id = $1 and disabled_at is null", client_id)
                .fetch_optional(&state.pool)
                .await?;
        let granted = granted.ok_or_else(|| ApiError::invalid_token("this API client is disabled"))?;
        // Unknown scope names (from a newer version) are ignored, not fatal.
        let scopes = claims
            .scope
            .split_whitespace()
            .filter(|text| granted.iter().any(|scope| scope == text))
            .filter_map(|text| Scope::parse(text).ok())
            .collect();
        Ok(Self { client_id, scopes })
    }
}

/// # Errors
/// 401 when the header is missing or not a bearer token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthenticated {
        code: "unauthenticated",
        detail: "send an access token: Authorization: Bearer <token>".into(),
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| ApiError::invalid_token("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}
