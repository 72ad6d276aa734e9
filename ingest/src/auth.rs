//! Authentication of API clients: the OAuth2 client-credentials grant
//! (`POST /v1/oauth/token`) issues short-lived HS256 JWTs carrying scopes,
//! and the [`Principal`] extractor checks them on every other route.
//!
//! Client secrets are stored as argon2id hashes. Verifying one is slow on
//! purpose, so it runs on the blocking pool, and an unknown client id is
//! checked against a dummy hash so the answer takes as long either way.

use std::fmt;
use std::net::SocketAddr;

use anyhow::Context as _;
use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::{Form, Json};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::passwords::SecretHasher;

/// What a token allows. The string forms are the OAuth2 scope values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Open accounts.
    AccountsWrite,
    /// Read the client's own accounts and their entries.
    AccountsRead,
    /// Submit transfers from the client's own accounts.
    TransfersWrite,
    /// Read the status of the client's own transfers.
    TransfersRead,
    /// Fund any account from the system cash-in account. Admin and ops only.
    DepositsWrite,
    /// Register, list and remove the client's webhook endpoints.
    WebhooksManage,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::AccountsWrite,
        Scope::AccountsRead,
        Scope::TransfersWrite,
        Scope::TransfersRead,
        Scope::DepositsWrite,
        Scope::WebhooksManage,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AccountsWrite => "accounts:write",
            Scope::AccountsRead => "accounts:read",
            Scope::TransfersWrite => "transfers:write",
            Scope::TransfersRead => "transfers:read",
            Scope::DepositsWrite => "deposits:write",
            Scope::WebhooksManage => "webhooks:manage",
        }
    }

    /// # Errors
    /// When the text names no scope.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|scope| scope.as_str() == text).ok_or_else(|| {
            format!(
                "unknown scope {text:?}; known: {}",
                Self::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            )
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// JWT settings.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub token_ttl_s: u64,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwtKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// The shortest signing secret accepted, in bytes (HS256 wants ≥ 256 bits).
    pub const SECRET_LENGTH_MIN: usize = 32;

    /// # Errors
    /// When the secret is shorter than [`JwtKeys::SECRET_LENGTH_MIN`].
    pub fn new(secret: &SecretString, issuer: &str, audience: &str, token_ttl_s: u64) -> anyhow::Result<Self> {
        let bytes = secret.expose_secret().as_bytes();
        anyhow::ensure!(
            bytes.len() >= Self::SECRET_LENGTH_MIN,
            "the JWT signing secret must be at least {} bytes",
            Self::SECRET_LENGTH_MIN
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            token_ttl_s,
        })
    }

    fn issue(&self, client_id: Uuid, scopes: &[Scope]) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client_id.to_string(),
            iat: now,
            exp: now + i64::try_from(self.token_ttl_s).unwrap_or(i64::MAX),
            jti: Uuid::new_v4().to_string(),
            scope: scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>().join(" "),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).context("signing a token")
    }
}

/// What a customer's access token says. `token_use` keeps it apart from an
/// API client's token (which has `scope` instead) whatever the decoder.
#[derive(Debug, Serialize, Deserialize)]
pub struct CustomerClaims {
    iss: String,
    aud: String,
    pub sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    pub role: String,
    token_use: String,
    /// The user's session epoch when the token was issued; a token of an
    /// earlier epoch is dead (see `users.session_epoch`).
    #[serde(default)]
    pub epoch: i32,
}

impl JwtKeys {
    const CUSTOMER_ACCESS: &'static str = "customer_access";
    const STEP_UP: &'static str = "step_up";
    /// A step-up token's lifetime: the issue allows at most 5 minutes.
    pub const STEP_UP_TTL_S: u64 = 300;

    fn issue_user_token(
        &self,
        user_id: Uuid,
        role: &str,
        epoch: i32,
        token_use: &str,
        ttl_s: u64,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = CustomerClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            iat: now,
            exp: now + i64::try_from(ttl_s).unwrap_or(i64::MAX),
            jti: Uuid::new_v4().to_string(),
            role: role.to_owned(),
            token_use: token_use.to_owned(),
            epoch,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).context("signing a token")
    }

    fn decode_user_token(&self, token: &str, token_use: &str) -> Result<CustomerClaims, String> {
        let data = jsonwebtoken::decode::<CustomerClaims>(token, &self.decoding, &self.validation)
            .map_err(|error| format!("the token is not valid: {error}"))?;
        if data.claims.token_use != token_use {
            return Err(format!("not a {token_use} token"));
        }
        Ok(data.claims)
    }

    /// An access token for a user, valid `token_ttl_s` (at most 15 minutes).
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue_customer(&self, user_id: Uuid, role: &str, epoch: i32) -> anyhow::Result<String> {
        self.issue_user_token(user_id, role, epoch, Self::CUSTOMER_ACCESS, self.token_ttl_s)
    }

    /// Checks a customer's access token: signature (HS256 only: `alg: none`
    /// or another algorithm is refused), issuer, audience, expiry, and that
    /// it is a customer access token.
    ///
    /// # Errors
    /// 401 `invalid_token` on any failure.
    pub fn decode_customer(&self, token: &str) -> Result<CustomerClaims, ApiError> {
        self.decode_user_token(token, Self::CUSTOMER_ACCESS).map_err(ApiError::invalid_token)
    }

    /// A step-up token, proof that `user_id` entered the PIN in the last
    /// [`JwtKeys::STEP_UP_TTL_S`] seconds.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue_step_up(&self, user_id: Uuid, role: &str) -> anyhow::Result<String> {
        // A step-up proves the PIN, not a session: it is used only together
        // with a valid access token, which carries the epoch.
        self.issue_user_token(user_id, role, 0, Self::STEP_UP, Self::STEP_UP_TTL_S)
    }

    /// Checks that `token` is a valid step-up token of `user_id`; what it
    /// pays for is settled by [`spend_step_up`].
    ///
    /// # Errors
    /// 401 `step_up_invalid` otherwise.
    pub fn check_step_up(&self, token: &str, user_id: Uuid) -> Result<StepUp, ApiError> {
        let invalid = |detail: String| ApiError::unauthorized("step_up_invalid", detail);
        let claims = self.decode_user_token(token, Self::STEP_UP).map_err(invalid)?;
        if claims.sub != user_id.to_string() {
            return Err(invalid("the step-up token is another user's".into()));
        }
        let id = Uuid::parse_str(&claims.jti).map_err(|_| invalid("the step-up token has no valid id".into()))?;
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| invalid("the step-up token has no valid expiry".into()))?;
        Ok(StepUp { id, user_id, expires_at })
    }
}

/// A checked step-up token: one PIN entry, good for one transfer.
#[derive(Debug, Clone)]
pub struct StepUp {
    /// The token's `jti`.
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Spends `step_up` on `transfer_id`: a step-up pays for one transfer, not
/// for every transfer in its five minutes. Presenting it again for the same
/// transfer (a retry with the same `Idempotency-Key`, whose body is bound
/// to that id) passes, so a lost answer can be retried safely; for any
/// other transfer it is refused. Spent before the transfer is published, in
/// one statement, so two requests racing with one token cannot both pass.
/// Spent rows of the user that have expired are pruned on the way.
///
/// # Errors
/// 401 `step_up_used` when it paid for another transfer; database failures.
pub async fn spend_step_up(pool: &PgPool, step_up: &StepUp, transfer_id: Uuid) -> Result<(), ApiError> {
    let spent = sqlx::query_scalar!(
        r#"with pruned as (delete from step_up_uses where user_id = $2 and expires_at < now() - interval '1 minute')
          insert into step_up_uses (id, user_id, transfer_id, expires_at) values ($1, $2, $3, $4)
          on conflict (id) do update set transfer_id = excluded.transfer_id
              where step_up_uses.transfer_id = excluded.transfer_id
          returning 1 as "spent!""#,
        step_up.id,
        step_up.user_id,
        transfer_id,
        step_up.expires_at,
    )
    .fetch_optional(pool)
    .await?;
    if spent.is_none() {
        return Err(ApiError::unauthorized(
            "step_up_used",
            "this step-up token paid for another transfer; enter the PIN again (POST /v1/auth/pin)",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    scope: String,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: Uuid,
    scopes: Vec<Scope>,
}

impl Principal {
    /// # Errors
    /// 403 `insufficient_scope` when the token lacks `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) { Ok(()) } else { Err(ApiError::InsufficientScope(scope.as_str())) }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let data = jsonwebtoken::decode::<Claims>(token, &state.jwt.decoding, &state.jwt.validation)
            .map_err(|error| ApiError::invalid_token(format!("the access token is not valid: {error}")))?;
        let client_id = Uuid::parse_str(&data.claims.sub)
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
        let scopes = data
            .claims
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
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
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

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(issue_token))
}

/// The client-credentials grant of RFC 6749 §4.4. The client's credentials
/// come here or in HTTP Basic, not both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct TokenRequest {
    /// Only `client_credentials`.
    #[schema(example = "client_credentials")]
    grant_type: String,
    client_id: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    client_secret: Option<SecretString>,
    /// Space-separated scopes, a subset of the client's; all of them when absent.
    #[schema(example = "accounts:read transfers:write")]
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
        (None, _, _) => return Err(ApiError::bad_request("invalid_request", "send client_id and client_secret")),
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
    let malformed = || ApiError::bad_request("invalid_request", "malformed Basic credentials");
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

/// An API client as stored.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub id: Uuid,
    pub scopes: Vec<Scope>,
}

/// Checks a client's secret; `None` when the client is unknown, disabled, or
/// the secret is wrong.
///
/// # Errors
/// Database or hashing failures.
pub async fn verify_client(
    pool: &PgPool,
    hasher: &SecretHasher,
    client_id: &str,
    secret: SecretString,
) -> Result<Option<ApiClient>, ApiError> {
    let stored: Option<(Uuid, String, Vec<String>)> = match Uuid::parse_str(client_id) {
        Ok(id) => {
            sqlx::query!("select id, secret_hash, scopes from api_clients where id = $1 and disabled_at is null", id)
                .fetch_optional(pool)
                .await?
                .map(|row| (row.id, row.secret_hash, row.scopes))
        }
        Err(_) => None,
    };
    let hash = stored.as_ref().map(|(_, hash, _)| hash.clone());
    // The row is read every time, so a disabled client or a new secret is
    // refused at once; only the argon2 check may be answered from memory.
    let id = stored.as_ref().map_or_else(Uuid::nil, |(id, _, _)| *id);
    let matches = hasher.verify_client_secret(id, hash, secret).await?;
    Ok(match stored {
        Some((id, _, scopes)) if matches => {
            Some(ApiClient { id, scopes: scopes.iter().filter_map(|text| Scope::parse(text).ok()).collect() })
        }
        _ => None,
    })
}

/// A new client's credentials; the secret is shown once and never stored.
#[derive(Debug)]
pub struct NewClient {
    pub id: Uuid,
    pub secret: SecretString,
}

/// Creates an API client with a random id and secret.
///
/// # Errors
/// Database failures.
pub async fn create_client(
    pool: &PgPool,
    hasher: &SecretHasher,
    name: &str,
    scopes: &[Scope],
) -> anyhow::Result<NewClient> {
    let client = NewClient::generate();
    upsert_client(pool, hasher, client.id, name, &client.secret, scopes).await?;
    Ok(client)
}

impl NewClient {
    /// A random id and a random 256-bit secret (`llsk_…`).
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let secret =
            SecretString::from(format!("llsk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)));
        Self { id: Uuid::new_v4(), secret }
    }
}

/// Creates or replaces the client `id` with the given secret and scopes.
/// `ledgerctl dev` uses it for its well-known development client.
///
/// # Errors
/// Database failures.
pub async fn upsert_client(
    pool: &PgPool,
    hasher: &SecretHasher,
    id: Uuid,
    name: &str,
    secret: &SecretString,
    scopes: &[Scope],
) -> anyhow::Result<()> {
    let hash = hasher.hash_blocking(secret.clone()).await?;
    let scopes: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
    sqlx::query!(
        r"insert into api_clients (id, name, secret_hash, scopes) values ($1, $2, $3, $4)
          on conflict (id) do update set name = excluded.name, secret_hash = excluded.secret_hash,
                                         scopes = excluded.scopes, disabled_at = null",
        id,
        name,
        hash,
        &scopes as &[&str],
    )
    .execute(pool)
    .await
    .context("storing the API client")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_parses_from_its_own_name() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Ok(*scope));
        }
        assert!(Scope::parse("admin:everything").is_err());
    }

    #[test]
    fn a_short_signing_secret_is_refused() {
        let short = SecretString::from("too-short".to_owned());
        assert!(JwtKeys::new(&short, "issuer", "audience", 900).is_err());
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let ours =
            JwtKeys::new(&SecretString::from("a".repeat(32)), "ledgerline", "ledgerline-api", 900).expect("keys");
        let theirs =
            JwtKeys::new(&SecretString::from("b".repeat(32)), "ledgerline", "ledgerline-api", 900).expect("keys");
        let token = theirs.issue(Uuid::new_v4(), &[Scope::AccountsRead]).expect("token");
        assert!(jsonwebtoken::decode::<Claims>(&token, &ours.decoding, &ours.validation).is_err());
        let own = ours.issue(Uuid::new_v4(), &[Scope::AccountsRead]).expect("token");
        assert!(jsonwebtoken::decode::<Claims>(&own, &ours.decoding, &ours.validation).is_ok());
    }
}
