//! Webhooks: fanning events out to the endpoints that asked for them, and
//! delivering them signed, following Standard Webhooks.
//!
//! When the relay publishes an event to Kafka it also writes, in the same
//! transaction, one `webhooks` row per matching endpoint (the endpoint's
//! client owns the event's account and subscribed to its type). Those rows
//! are keyed by endpoint, so each endpoint receives its events in order.
//! A delivery POSTs the event JSON with `webhook-id: evt_<event outbox id>`
//! (the same on every retry, so a receiver drops duplicates),
//! `webhook-timestamp` (seconds, for replay protection) and
//! `webhook-signature: v1,<base64 HMAC-SHA256>`.

use std::collections::HashMap;
use std::time::Duration;

use platform::config::{self, ConfigError};
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sqlx::PgConnection;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::outbox::{Attempt, Row};

/// Limits of webhook deliveries.
#[derive(Debug, Clone, Copy)]
pub struct WebhooksConfig {
    /// `LEDGERLINE_WEBHOOK_TIMEOUT_MS`: deadline of one delivery.
    pub timeout_ms: u64,
    /// `LEDGERLINE_WEBHOOK_CONCURRENCY_MAX`: deliveries in flight at once.
    pub concurrency_max: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self { timeout_ms: 5_000, concurrency_max: 16 }
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
    let inserted = sqlx::query(
        r"insert into outbox (destination, event_type, message_key, payload)
          select 'webhooks', event.event_type, endpoint.id::text,
                 json_build_object('endpoint_id', endpoint.id, 'event_id', event.id, 'event', event.payload)
          from outbox event
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
          where event.id = any($1) and event.destination = 'events'
          order by event.id, endpoint.id",
    )
    .bind(event_ids)
    .execute(&mut *connection)
    .await?;
    Ok(inserted.rows_affected())
}

/// An endpoint as the relay needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub secret: String,
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
    let endpoints: Vec<Endpoint> =
        sqlx::query_as("select id, url, secret from webhook_endpoints where id = any($1) and disabled_at is null")
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
    Ok(endpoints.into_iter().map(|endpoint| (endpoint.id, endpoint)).collect())
}

#[derive(Debug, Deserialize)]
struct WebhookRow {
    endpoint_id: Uuid,
    event_id: i64,
    event: serde_json::Value,
}

/// The relay's webhook sender.
#[derive(Debug)]
pub struct Webhooks {
    http: reqwest::Client,
    permits: Semaphore,
}

impl Webhooks {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: WebhooksConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            // A receiver's redirect is not followed: the signature was made
            // for the URL it registered.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, permits: Semaphore::new(config.concurrency_max) })
    }

    /// Delivers one row to its endpoint.
    pub async fn deliver(&self, row: &Row, endpoints: &HashMap<Uuid, Endpoint>) -> Attempt {
        let webhook: WebhookRow = match serde_json::from_str(&row.payload) {
            Ok(webhook) => webhook,
            Err(error) => return failed("bad_payload", &format!("not a webhook row: {error}"), None),
        };
        let Some(endpoint) = endpoints.get(&webhook.endpoint_id) else {
            // Removed since the event: nobody wants it any more.
            tracing::info!(outbox_id = row.id, endpoint_id = %webhook.endpoint_id, "webhook endpoint removed; dropping");
            return Attempt::Delivered;
        };
        self.post_signed(
            &endpoint.url,
            &endpoint.secret,
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
            return failed("no_notifier", "no notification service is configured (LEDGERLINE_NOTIFY_URL)", None);
        };
        self.post_signed(
            &notifier.url,
            notifier.secret.expose_secret(),
            &format!("ntf_{}", row.id),
            row.payload.clone(),
        )
        .await
    }

    /// POSTs `body` with the Standard Webhooks headers, signed with `secret`.
    async fn post_signed(&self, url: &str, secret: &str, message_id: &str, body: String) -> Attempt {
        let key = match platform::signature::webhook_key(secret) {
            Ok(key) => key,
            Err(error) => return failed("bad_secret", &error.to_string(), None),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = platform::signature::sign_webhook(&key, message_id, timestamp, body.as_bytes());
        let Ok(_permit) = self.permits.acquire().await else { return Attempt::HeldBack };
        let sent = self
            .http
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
                failed(
                    &format!("http_{}", status.as_u16()),
                    &format!("the endpoint answered {status}"),
                    crate::provider::retry_after_ms(response.headers()),
                )
            }
            Err(error) => failed(crate::provider::reqwest_error_code(&error), &error.to_string(), None),
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

fn failed(code: &str, error: &str, retry_after_ms: Option<u64>) -> Attempt {
    Attempt::Failed { code: code.to_owned(), error: error.to_owned(), retry_after_ms }
}
