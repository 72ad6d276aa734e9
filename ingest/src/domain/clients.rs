//! API clients: their scopes, checking a client's secret (argon2id, on the
//! blocking pool; an unknown client is checked against a dummy hash so the
//! answer takes as long either way), and creating one.

use std::fmt;

use anyhow::Context as _;
use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use base64::Engine as _;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::support::passwords::SecretHasher;

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
    /// Place, capture and void holds on the client's own accounts.
    HoldsWrite,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::AccountsWrite,
        Scope::AccountsRead,
        Scope::TransfersWrite,
        Scope::TransfersRead,
        Scope::DepositsWrite,
        Scope::WebhooksManage,
        Scope::HoldsWrite,
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
            Scope::HoldsWrite => "holds:write",
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
}
