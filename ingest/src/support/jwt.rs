//! The tokens ingest signs (HS256 JWTs): API clients' access tokens with
//! their scopes, customers' access tokens, and the step-up token a PIN
//! entry buys, which pays for one transfer ([`spend_step_up`]).

use std::fmt;

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::clients::Scope;
use crate::error::ApiError;

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

    /// An API client's access token with `scopes`.
    ///
    /// # Errors
    /// Signing failures.
    pub(crate) fn issue(&self, client_id: Uuid, scopes: &[Scope]) -> anyhow::Result<String> {
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

    /// The claims of an API client's access token signed with this key,
    /// unexpired, for this issuer and audience.
    ///
    /// # Errors
    /// Any token that is not all of that.
    pub(crate) fn decode_client(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims)
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
pub(crate) async fn spend_step_up(pool: &PgPool, step_up: &StepUp, transfer_id: Uuid) -> Result<(), ApiError> {
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

/// The claims of an API client's access token.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    iss: String,
    aud: String,
    /// The client id.
    pub(crate) sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    /// The granted scopes, space-separated (RFC 6749 §3.3).
    pub(crate) scope: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(ours.decode_client(&token).is_err());
        let own = ours.issue(Uuid::new_v4(), &[Scope::AccountsRead]).expect("token");
        assert!(ours.decode_client(&own).is_ok());
    }
}
