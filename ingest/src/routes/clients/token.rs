//! The OAuth2 client-credentials grant (`POST /v1/oauth/token`): an API
//! client trades its id and secret for a short-lived access token carrying
//! its scopes.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::{Form, Json};
use base64::Engine as _;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::domain::clients::{Scope, verify_client};
use crate::error::ApiError;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(issue_token))
}

/// The client-credentials grant of RFC 6749 §4.4. The client's credentials
/// come here or in HTTP Basic, not both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct TokenRequest {
    /// Only `client_credentials`.
    #[schema(example = "client_credentials", pattern = "^client_credentials$")]
    grant_type: String,
    client_id: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    client_secret: Option<SecretString>,
    /// Space-separated scopes, a subset of the client's; all of them when
    /// absent. One the client does not have is refused as `invalid_scope`
    /// (400, RFC 6749 §5.2).
    #[schema(example = "accounts:read transfers:write", pattern = "^[a-z:]*( [a-z:]+)*$")]
    scope: Option<String>,
}

/// An access token (RFC 6749 §5.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TokenResponse {
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
    /// The scopes granted, space-separated.
    scope: String,
}

fn invalid_client() -> ApiError {
    ApiError::Unauthenticated { code: "invalid_client", detail: "unknown client or wrong secret".into() }
}

/// A refused client authentication that is not a wrong secret: none, half
/// of one, or an `Authorization` header that is not HTTP Basic client
/// credentials. RFC 6749 §5.2 calls every failed client authentication
/// `invalid_client`, answered 401 when the client tried the header.
fn unauthenticated_client(detail: &str) -> ApiError {
    ApiError::Unauthenticated { code: "invalid_client", detail: detail.to_owned() }
}

/// Issues an API client's access token (OAuth2 client credentials).
///
/// The client authenticates with `client_id` and `client_secret` in the form
/// or with HTTP Basic (RFC 6749 §2.3.1), not both. Throttled per client IP.
#[utoipa::path(
    post,
    path = "/v1/oauth/token",
    operation_id = "oauth_token",
    tag = "auth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The access token", body = TokenResponse)),
    security(()),
)]
async fn issue_token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    // Before any secret is checked: guessing is throttled per address.
    state.limits.token_ips.admit(&peer.ip())?;
    let Form(request) = form?;
    if request.grant_type != "client_credentials" {
        return Err(ApiError::bad_request("unsupported_grant_type", "only grant_type=client_credentials is supported"));
    }
    // Credentials come in the body or in HTTP Basic (RFC 6749 §2.3.1).
    let (client_id, secret) = match (basic_credentials(&headers)?, request.client_id, request.client_secret) {
        (Some(basic), None, None) => basic,
        (None, Some(id), Some(secret)) => (id, secret),
        (None, _, _) => {
            return Err(unauthenticated_client("send client_id and client_secret, in the body or in HTTP Basic"));
        }
        (Some(_), _, _) => {
            return Err(ApiError::bad_request("invalid_request", "send credentials once, in the body or in Basic"));
        }
    };
    let client = verify_client(&state.pool, &state.hasher, &client_id, secret).await?.ok_or_else(invalid_client)?;

    let granted = match request.scope.as_deref().map(str::trim).filter(|scope| !scope.is_empty()) {
        None => client.scopes.clone(),
        Some(requested) => {
            let mut granted = Vec::new();
            for text in requested.split_whitespace() {
                let scope = Scope::parse(text).map_err(|detail| ApiError::bad_request("invalid_scope", detail))?;
                if !client.scopes.contains(&scope) {
                    return Err(ApiError::bad_request("invalid_scope", format!("this client may not have {scope}")));
                }
                granted.push(scope);
            }
            granted
        }
    };
    let access_token = state.jwt.issue(client.id, &granted)?;
    tracing::info!(client_id = %client.id, "issued an access token");
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: state.jwt.token_ttl_s,
        scope: granted.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" "),
    }))
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, SecretString)>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let malformed = || unauthenticated_client("the Authorization header must carry HTTP Basic client credentials");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else { return Err(malformed()) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((id.to_owned(), SecretString::from(secret.to_owned()))))
}
