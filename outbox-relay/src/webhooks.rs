//! Webhooks: fanning events out to the endpoints that asked for them, and
//! delivering them signed, following Standard Webhooks.
//!
//! When the relay publishes an event to Kafka it also writes, in the same
//! transaction, one `webhooks` row per matching endpoint (the endpoint's
//! client owns the event's account and subscribed to its type). Those rows
//! are keyed by endpoint, so each endpoint receives its events in order.
//! A delivery POSTs the event JSON with `webhook-id: evt_<event id>` (its
//! `ledgerline-event-id`, the same on every retry, so a receiver drops
//! duplicates),
//! `webhook-timestamp` (seconds, for replay protection) and
//! `webhook-signature: v1,<base64 HMAC-SHA256>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use platform::config::{self, ConfigError};
use platform::signature::WebhookSecretKeys;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sqlx::PgConnection;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::outbox::{Attempt, Row};

/// Limits of webhook deliveries.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// `LEDGERLINE_WEBHOOK_TIMEOUT_MS`: deadline of one delivery.
    pub timeout_ms: u64,
    /// `LEDGERLINE_WEBHOOK_CONCURRENCY_MAX`: deliveries in flight at once.
    pub concurrency_max: usize,
    /// `LEDGERLINE_WEBHOOK_DISABLE_AFTER_S`: an endpoint that has delivered
    /// nothing for this long is disabled when one of its webhooks dies.
    pub disable_after_s: u64,
    /// `LEDGERLINE_WEBHOOK_SECRETS_KEYS`: the keys endpoints' secrets are
    /// derived from (ingest's too); without, secrets are stored.
    pub secret_keys: Option<WebhookSecretKeys>,
    /// `LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED`: deliver to loopback,
    /// private and link-local addresses too. Off in production: a client
    /// could otherwise register a URL that makes the relay call the bank's
    /// internal services or the cloud's metadata endpoint. On for
    /// `ledgerctl dev` and the tests, whose receivers are on 127.0.0.1.
    pub private_networks_allowed: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            concurrency_max: 16,
            disable_after_s: 3 * 24 * 3600,
            secret_keys: None,
            private_networks_allowed: false,
        }
    }
}

impl WebhooksConfig {
    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            timeout_ms: config::limit("LEDGERLINE_WEBHOOK_TIMEOUT_MS", defaults.timeout_ms, 100..=60_000)?,
            concurrency_max: config::limit("LEDGERLINE_WEBHOOK_CONCURRENCY_MAX", defaults.concurrency_max, 1..=256)?,
            disable_after_s: config::limit(
                "LEDGERLINE_WEBHOOK_DISABLE_AFTER_S",
                defaults.disable_after_s,
                3_600..=30 * 24 * 3600,
            )?,
            secret_keys: WebhookSecretKeys::from_env()?,
            private_networks_allowed: config::var_or(
                "LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED",
                defaults.private_networks_allowed,
            )?,
        })
    }
}

/// Writes the webhook rows of the events just published (by outbox id).
///
/// # Errors
/// Database failures.
pub async fn fan_out(connection: &mut PgConnection, event_ids: &[i64]) -> sqlx::Result<u64> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query!(
        r"insert into outbox (destination, event_type, message_key, payload, next_attempt_at)
          select 'webhooks', event.event_type, endpoint.id::text,
                 json_build_object('endpoint_id', endpoint.id, 'event_id', event.event_id, 'event', event.payload),
                 -- Behind an endpoint's failing row, a new row waits as long
                 -- as the endpoint's last pending one (a failure pushed them all).
                 (select last.next_attempt_at from outbox last
                  where last.destination = 'webhooks' and last.message_key = endpoint.id::text
                    and last.delivered_at is null and last.dead_at is null
                  order by last.id desc limit 1)
          -- One row per event, inside batch rows too.
          from outbox_events event
          -- Keys are account ids, except for a few events about no account;
          -- CASE keeps the cast from seeing those, and the join on the
          -- primary key from scanning accounts.
          join accounts account on account.id = case
              when event.message_key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
              then event.message_key::uuid end
          join webhook_endpoints endpoint
            on endpoint.api_client_id = account.owner_client_id
           and endpoint.disabled_at is null
           and event.event_type = any(endpoint.event_types)
          where event.outbox_id = any($1)
          order by event.outbox_id, event.event_index, endpoint.id",
        event_ids,
    )
    .execute(&mut *connection)
    .await?;
    Ok(inserted.rows_affected())
}

/// An endpoint as the relay needs it.
#[derive(Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// Stored (endpoints registered without the key ring), or…
    pub secret: Option<String>,
    /// …derived from a key of the ring with this nonce.
    pub secret_nonce: Option<Vec<u8>>,
    pub secret_key_id: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Endpoint").field("id", &self.id).field("url", &self.url).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The signing secret: stored, or derived with the key it was made with.
    ///
    /// # Errors
    /// A failed attempt when the key is not configured (anymore).
    fn secret(&self, keys: Option<&WebhookSecretKeys>) -> Result<String, Attempt> {
        if let Some(secret) = &self.secret {
            return Ok(secret.clone());
        }
        let (Some(nonce), Some(key_id)) = (&self.secret_nonce, &self.secret_key_id) else {
            return Err(Attempt::failed("no_secret", "the endpoint has no secret", None));
        };
        keys.and_then(|keys| keys.derive(key_id, &self.id.to_string(), nonce)).ok_or_else(|| {
            Attempt::failed(
                "secret_key_unknown",
                &format!("the webhook secrets key {key_id:?} is not in LEDGERLINE_WEBHOOK_SECRETS_KEYS"),
                None,
            )
        })
    }
}

/// The live endpoints the claimed `webhooks` rows go to.
///
/// # Errors
/// Database failures.
pub async fn endpoints_of(connection: &mut PgConnection, rows: &[Row]) -> sqlx::Result<HashMap<Uuid, Endpoint>> {
    let ids: Vec<Uuid> = rows
        .iter()
        .filter(|row| row.destination == "webhooks")
        .filter_map(|row| row.message_key.parse().ok())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let endpoints: Vec<Endpoint> = sqlx::query_as!(
        Endpoint,
        r"select id, url, secret, secret_nonce, secret_key_id from webhook_endpoints
              where id = any($1) and disabled_at is null",
        &ids,
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(endpoints.into_iter().map(|endpoint| (endpoint.id, endpoint)).collect())
}

#[derive(Debug, Deserialize)]
struct WebhookRow {
    endpoint_id: Uuid,
    event_id: EventId,
    event: serde_json::Value,
}

/// An event's `ledgerline-event-id`: `<outbox id>` or `<outbox id>.<index>`
/// (in a batch row). Rows fanned out before batches carry the number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventId {
    Number(i64),
    Text(String),
}

impl std::fmt::Display for EventId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(id) => write!(formatter, "{id}"),
            Self::Text(id) => formatter.write_str(id),
        }
    }
}

/// The relay's webhook sender.
#[derive(Debug)]
pub struct Webhooks {
    /// For clients' endpoints: reaches public addresses only, unless
    /// private networks are allowed.
    http: reqwest::Client,
    /// For the bank's own notification service, which may well be internal.
    internal_http: reqwest::Client,
    private_networks_allowed: bool,
    secret_keys: Option<WebhookSecretKeys>,
    permits: Semaphore,
}

impl Webhooks {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: WebhooksConfig) -> anyhow::Result<Self> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(Duration::from_millis(config.timeout_ms))
                .connect_timeout(Duration::from_millis(config.timeout_ms))
                // A receiver's redirect is not followed: the signature was made
                // for the URL it registered (and a redirect could point inside).
                .redirect(reqwest::redirect::Policy::none())
        };
        let http = if config.private_networks_allowed {
            builder().build()?
        } else {
            // The check is on the addresses actually connected to, after
            // resolution: a name that resolves inside (or is re-pointed there
            // after registration) is refused as well as a literal address.
            // The system proxy is not used: it would resolve names itself.
            builder().dns_resolver(Arc::new(PublicOnly)).no_proxy().build()?
        };
        Ok(Self {
            http,
            internal_http: builder().build()?,
            private_networks_allowed: config.private_networks_allowed,
            secret_keys: config.secret_keys.clone(),
            permits: Semaphore::new(config.concurrency_max),
        })
    }

    /// Delivers one row to its endpoint.
    pub async fn deliver(&self, row: &Row, endpoints: &HashMap<Uuid, Endpoint>) -> Attempt {
        let webhook: WebhookRow = match serde_json::from_str(&row.payload) {
            Ok(webhook) => webhook,
            Err(error) => return Attempt::failed("bad_payload", &format!("not a webhook row: {error}"), None),
        };
        let Some(endpoint) = endpoints.get(&webhook.endpoint_id) else {
            // Removed since the event: nobody wants it any more.
            tracing::info!(outbox_id = row.id, endpoint_id = %webhook.endpoint_id, "webhook endpoint removed; dropping");
            return Attempt::Delivered;
        };
        if !self.private_networks_allowed
            && let Some(address) = literal_address(&endpoint.url)
            && !platform::net::is_public(address)
        {
            return Attempt::failed(NOT_PUBLIC_CODE, &format!("{address} is not a public address"), None);
        }
        let secret = match endpoint.secret(self.secret_keys.as_ref()) {
            Ok(secret) => secret,
            Err(attempt) => return attempt,
        };
        self.post_signed(
            &self.http,
            &endpoint.url,
            &secret,
            &format!("evt_{}", webhook.event_id),
            webhook.event.to_string(),
        )
        .await
    }

    /// Delivers a `notifications` row (a message to a person, such as a
    /// password-reset link) to the bank's notification service, signed the
    /// same way. Without one configured the row fails until dead.
    pub async fn deliver_notification(&self, row: &Row, notifier: Option<&Notifier>) -> Attempt {
        let Some(notifier) = notifier else {
            return Attempt::failed(
                "no_notifier",
                "no notification service is configured (LEDGERLINE_NOTIFY_URL)",
                None,
            );
        };
        self.post_signed(
            &self.internal_http,
            &notifier.url,
            notifier.secret.expose_secret(),
            &format!("ntf_{}", row.id),
            row.payload.clone(),
        )
        .await
    }

    /// POSTs `body` with the Standard Webhooks headers, signed with `secret`.
    async fn post_signed(
        &self,
        http: &reqwest::Client,
        url: &str,
        secret: &str,
        message_id: &str,
        body: String,
    ) -> Attempt {
        let key = match platform::signature::webhook_key(secret) {
            Ok(key) => key,
            Err(error) => return Attempt::failed("bad_secret", &error.to_string(), None),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = platform::signature::sign_webhook(&key, message_id, timestamp, body.as_bytes());
        let Ok(_permit) = self.permits.acquire().await else { return Attempt::HeldBack };
        let sent = http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => {
                let status = response.status();
                Attempt::failed(
                    &format!("http_{}", status.as_u16()),
                    &format!("the endpoint answered {status}"),
                    crate::provider::retry_after_ms(response.headers()),
                )
            }
            Err(error) if caused_by_not_public(&error) => Attempt::failed(NOT_PUBLIC_CODE, &error.to_string(), None),
            Err(error) => Attempt::failed(crate::provider::reqwest_error_code(&error), &error.to_string(), None),
        }
    }
}

/// Logs an error for every key live endpoints' secrets were derived with
/// that the ring lacks: their webhooks cannot be signed (they fail with
/// `secret_key_unknown`, which never counts against the endpoint).
pub async fn check_secret_keys(pool: &sqlx::PgPool, keys: Option<&WebhookSecretKeys>) {
    // The column is nullable; the `is not null` filter makes every row's key present.
    let used: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar!(
        r#"select distinct secret_key_id as "secret_key_id!" from webhook_endpoints
           where disabled_at is null and secret_key_id is not null"#,
    )
    .fetch_all(pool)
    .await;
    match used {
        Ok(used) => {
            let missing: Vec<&String> =
                used.iter().filter(|id| keys.is_none_or(|keys| keys.derive(id, "", &[]).is_none())).collect();
            if !missing.is_empty() {
                tracing::error!(?missing, "webhook endpoints use keys not in LEDGERLINE_WEBHOOK_SECRETS_KEYS");
            }
        }
        Err(error) => tracing::warn!(%error, "checking the webhook secret keys failed"),
    }
}

/// The failure code of a delivery refused because its endpoint is not on
/// the public internet.
pub const NOT_PUBLIC_CODE: &str = "destination_not_public";

/// Resolves names like the system does, then keeps only public addresses;
/// none left is an error.
#[derive(Debug)]
struct PublicOnly;

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public address")]
struct NotPublic(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> =
                resolved.into_iter().filter(|address| platform::net::is_public(address.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn caused_by_not_public(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<NotPublic>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The address of a URL whose host is an IP literal (no resolution happens
/// for those, so the resolver cannot check them).
/// The URL parser normalizes the other spellings of an address
/// (`http://2130706433/`, `http://0x7f.1/`) to the dotted form first.
fn literal_address(url: &str) -> Option<std::net::IpAddr> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_secret_needs_its_key_and_a_stored_one_needs_none() {
        let derived = Endpoint {
            id: Uuid::nil(),
            url: "https://hooks.example.com/x".into(),
            secret: None,
            secret_nonce: Some(vec![1; 32]),
            secret_key_id: Some("k1".into()),
        };
        let keys = WebhookSecretKeys::parse(&format!(
            "k1:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9_u8; 32])
        ))
        .expect("keys");
        assert!(derived.secret(Some(&keys)).is_ok_and(|secret| secret.starts_with("whsec_")));
        for missing in [
            None,
            Some(
                &WebhookSecretKeys::parse(&format!(
                    "k2:{}",
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9_u8; 32])
                ))
                .expect("keys"),
            ),
        ] {
            match derived.secret(missing) {
                Err(Attempt::Failed { code, .. }) => assert_eq!(code, "secret_key_unknown"),
                other => panic!("signed without its key: {:?}", other.map(|_| "a secret")),
            }
        }
        let stored =
            Endpoint { secret: Some("whsec_stored".into()), secret_nonce: None, secret_key_id: None, ..derived };
        assert_eq!(stored.secret(None).ok().as_deref(), Some("whsec_stored"));
    }

    #[test]
    fn literal_addresses_are_found_in_every_spelling() {
        for (url, address) in [
            ("http://127.0.0.1:8080/hook", Some("127.0.0.1")),
            ("http://2130706433/", Some("127.0.0.1")),
            ("http://0x7f.1/", Some("127.0.0.1")),
            ("https://[::1]:443/x", Some("::1")),
            ("https://[::ffff:169.254.169.254]/", Some("::ffff:a9fe:a9fe")),
            ("https://hooks.example.com/x", None),
        ] {
            let expected = address.map(|text| text.parse::<std::net::IpAddr>().expect("address"));
            assert_eq!(literal_address(url), expected, "{url}");
        }
    }
}

/// The bank's notification service (mail, SMS): `LEDGERLINE_NOTIFY_URL`
/// and its Standard Webhooks secret `LEDGERLINE_NOTIFY_SECRET` (`whsec_…`).
#[derive(Debug, Clone)]
pub struct Notifier {
    pub url: String,
    pub secret: SecretString,
}

impl Notifier {
    /// # Errors
    /// When the URL is set without a well-formed secret.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(url) = config::var_optional::<String>("LEDGERLINE_NOTIFY_URL")? else { return Ok(None) };
        let secret = config::secret_optional("LEDGERLINE_NOTIFY_SECRET")?
            .ok_or_else(|| ConfigError::new("LEDGERLINE_NOTIFY_SECRET", "is required with LEDGERLINE_NOTIFY_URL"))?;
        if platform::signature::webhook_key(secret.expose_secret()).is_err() {
            return Err(ConfigError::new("LEDGERLINE_NOTIFY_SECRET", "must be whsec_ followed by base64"));
        }
        Ok(Some(Self { url, secret }))
    }
}
