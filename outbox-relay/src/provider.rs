//! The client of an external payment provider: pays out to other banks.
//!
//! It authenticates with the OAuth2 client-credentials grant. The token is
//! cached, refreshed `token_refresh_margin_s` before it expires, and
//! refreshed once more if the provider answers 401 anyway (a revoked or
//! rotated key); a second 401 is an error, never a loop. Every payment
//! carries an `Idempotency-Key`: the payout's own id, the same whatever
//! outbox row or relay sends it, so a retry after a lost answer or a relay
//! crash asks for the same payment, and the provider pays once while it
//! keeps the key.
//!
//! Providers keep idempotency keys for a limited time (a day at many), so a
//! retry after that would be a second payment. Before ordering a payment
//! again the relay asks the provider about it ([`ProviderClient::status`],
//! `GET /v1/payments/{payment_id}`, as real providers look payments up by
//! the client's reference) and relays what it learns; only a 404 lets the
//! order go again.
//!
//! Answers are sorted into what the relay can act on: settled (post the
//! hold), rejected (void it: a refusal of this one payment, with the
//! provider's reason), accepted for later (wait for the callback), or a
//! failure to retry, with the provider's `Retry-After` when it gave one.
//! Only failures that are the provider's (it is down, slow, refuses our
//! credentials or our integration) count toward the circuit breaker.

use std::time::{Duration, Instant};

use platform::config::{self, ConfigError};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

/// Where and how to reach one provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// A short name, used in callback URLs and metrics.
    pub name: String,
    /// The provider's API base, e.g. `https://api.provider.example`.
    pub base_url: String,
    /// Its OAuth2 token endpoint.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Deadline of one HTTP call, connection included.
    pub timeout_ms: u64,
    /// How long before its expiry a token is replaced.
    pub token_refresh_margin_s: u64,
}

/// A payment order, as sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOrder {
    /// Our id of the payment (the hold's transfer id).
    pub payment_id: String,
    /// A decimal string, never a float.
    pub amount: String,
    pub currency: String,
    pub creditor_name: String,
    pub creditor_iban: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remittance_information: Option<String>,
}

/// What the provider did with a payment order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentAnswer {
    /// Paid out: the hold is posted.
    Settled { provider_reference: String },
    /// Refused for good (closed account, invalid IBAN, sanctions…): the hold
    /// is voided and the money is available again.
    Rejected { code: String },
    /// Taken, with the outcome to come by callback.
    Pending { provider_reference: String },
}

/// A call that did not produce an answer; worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderFailure {
    /// Stable, for metrics: `timeout`, `connect`, `http_503`, `unauthorized`, …
    pub code: String,
    pub message: String,
    /// The provider's `Retry-After`, when it sent one.
    pub retry_after_ms: Option<u64>,
    /// Whether it is the provider's failure (down, slow, refusing every
    /// request alike), which counts toward the circuit breaker; a conflict
    /// on one payment's key does not.
    pub counts_against_provider: bool,
}

impl ProviderConfig {
    /// The provider named by `LEDGERLINE_PROVIDER_*`, if
    /// `LEDGERLINE_PROVIDER_BASE_URL` is set.
    ///
    /// # Errors
    /// When a variable is malformed, out of range, or missing while the
    /// base URL is set.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(base_url) = config::var_optional::<String>("LEDGERLINE_PROVIDER_BASE_URL")? else {
            return Ok(None);
        };
        let required = |name: &str| {
            config::var_optional::<String>(name)?
                .ok_or_else(|| ConfigError::new(name, "is required with LEDGERLINE_PROVIDER_BASE_URL"))
        };
        let token_url = config::var_optional::<String>("LEDGERLINE_PROVIDER_TOKEN_URL")?
            .unwrap_or_else(|| format!("{}/oauth/token", base_url.trim_end_matches('/')));
        Ok(Some(Self {
            name: config::var_or("LEDGERLINE_PROVIDER_NAME", "provider".to_owned())?,
            token_url,
            client_id: required("LEDGERLINE_PROVIDER_CLIENT_ID")?,
            client_secret: config::secret_optional("LEDGERLINE_PROVIDER_CLIENT_SECRET")?.ok_or_else(|| {
                ConfigError::new("LEDGERLINE_PROVIDER_CLIENT_SECRET", "is required with LEDGERLINE_PROVIDER_BASE_URL")
            })?,
            timeout_ms: config::limit("LEDGERLINE_PROVIDER_TIMEOUT_MS", 10_000, 100..=120_000)?,
            token_refresh_margin_s: config::limit("LEDGERLINE_PROVIDER_TOKEN_REFRESH_MARGIN_S", 60, 0..=3_600)?,
            base_url,
        }))
    }
}

impl ProviderFailure {
    fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retry_after_ms: None, counts_against_provider: true }
    }

    /// A failure about one payment, not the provider's.
    fn of_this_payment(mut self) -> Self {
        self.counts_against_provider = false;
        self
    }

    fn from_reqwest(error: &reqwest::Error) -> Self {
        Self::new(reqwest_error_code(error), error.to_string())
    }
}

#[derive(Debug)]
struct CachedToken {
    secret: SecretString,
    refresh_at: Instant,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// Seconds; absent means the provider does not say: assume five minutes.
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct PaymentAnswerBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// 4xx answers that refuse this one order for good: it is invalid (400),
/// declined (402) or unprocessable (422). Any other 4xx is about our
/// integration (403 forbidden, 404 wrong URL, 415…), the same for every
/// payment: voiding them all would be wrong, so those are the provider's
/// failures, retried, and they count toward the breaker.
const REFUSALS: [StatusCode; 3] =
    [StatusCode::BAD_REQUEST, StatusCode::PAYMENT_REQUIRED, StatusCode::UNPROCESSABLE_ENTITY];

/// The longest part of a provider's error body kept in a failure message.
const ERROR_DETAIL_MAX_CHARS: usize = 500;

/// A provider's client; share one per provider (it caches the token).
#[derive(Debug)]
pub struct ProviderClient {
    config: ProviderConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl ProviderClient {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: ProviderConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .build()?;
        Ok(Self { config, http, token: tokio::sync::Mutex::new(None) })
    }

    /// Orders a payment under `idempotency_key` (the payout's id).
    ///
    /// # Errors
    /// A [`ProviderFailure`] when no answer came back that settles the order
    /// one way or the other.
    pub async fn pay(&self, idempotency_key: &str, order: &PaymentOrder) -> Result<PaymentAnswer, ProviderFailure> {
        let url = format!("{}/v1/payments", self.config.base_url.trim_end_matches('/'));
        let response = self
            .send(|http, token| {
                http.post(&url).bearer_auth(token).header("Idempotency-Key", idempotency_key).json(order)
            })
            .await?;
        answer(response).await
    }

    /// Asks the provider what became of the payment it was ordered under
    /// `payment_id` (our reference, which is also its idempotency key):
    /// `None` when the provider never took it (404), so it may be ordered.
    ///
    /// # Errors
    /// A [`ProviderFailure`] when the provider could not tell.
    pub async fn status(&self, payment_id: &str) -> Result<Option<PaymentAnswer>, ProviderFailure> {
        let url = format!("{}/v1/payments/{payment_id}", self.config.base_url.trim_end_matches('/'));
        let response = self.send(|http, token| http.get(&url).bearer_auth(token)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if response.status() != StatusCode::OK {
            return Err(failure_of(response).await);
        }
        answer(response).await.map(Some)
    }

    /// Sends the request `build` makes with a token; on a 401, once more
    /// with a fresh token (the cached one was revoked or the key rotated),
    /// and a second 401 is a failure, never a loop.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderFailure> {
        let mut refreshed = false;
        loop {
            let token = self.token(refreshed).await?;
            let response = build(&self.http, token.expose_secret())
                .send()
                .await
                .map_err(|error| ProviderFailure::from_reqwest(&error))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if refreshed {
                return Err(ProviderFailure::new("unauthorized", "the provider refused a freshly issued token"));
            }
            refreshed = true;
        }
    }

    /// The cached token, or a new one when it is due for refresh or `renew`.
    async fn token(&self, renew: bool) -> Result<SecretString, ProviderFailure> {
        let mut cached = self.token.lock().await;
        if !renew
            && let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.secret.clone());
        }
        let response = self
            .http
            .post(&self.config.token_url)
            .basic_auth(&self.config.client_id, Some(self.config.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|error| ProviderFailure::from_reqwest(&error))?;
        if !response.status().is_success() {
            let mut failure =
                ProviderFailure::new("token_refused", format!("the token endpoint answered {}", response.status()));
            failure.retry_after_ms = retry_after_ms(response.headers());
            return Err(failure);
        }
        let answer: TokenAnswer = response.json().await.map_err(|error| ProviderFailure::from_reqwest(&error))?;
        if answer.token_type.as_deref().is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer")) {
            return Err(ProviderFailure::new("token_refused", "the token endpoint issued a non-bearer token"));
        }
        let lifetime_s = answer.expires_in.unwrap_or(300);
        let refresh_at =
            Instant::now() + Duration::from_secs(lifetime_s.saturating_sub(self.config.token_refresh_margin_s));
        let secret = SecretString::from(answer.access_token);
        *cached = Some(CachedToken { secret: secret.clone(), refresh_at });
        tracing::debug!(provider = %self.config.name, lifetime_s, "fetched a provider token");
        Ok(secret)
    }
}

/// Sorts a provider's answer to an order or a lookup.
async fn answer(response: reqwest::Response) -> Result<PaymentAnswer, ProviderFailure> {
    let status = response.status();
    if !status.is_success() && !REFUSALS.contains(&status) {
        return Err(failure_of(response).await);
    }
    let text = response.text().await.map_err(|error| ProviderFailure::from_reqwest(&error))?;
    let body: PaymentAnswerBody = serde_json::from_str(&text).unwrap_or_default();
    if !status.is_success() {
        let code = body.code.or(body.error).unwrap_or_else(|| format!("http_{}", status.as_u16()));
        if code.contains("idempotency") {
            // A conflict on the key (another order under it): the provider
            // may have paid under it, so this is not a refusal to void.
            // Retried until dead, for an operator; not the provider's fault.
            return Err(ProviderFailure::new(
                "idempotency_conflict",
                format!("provider answered {status} {code}: {}", truncate(&text)),
            )
            .of_this_payment());
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY && !body.status.is_empty() && body.status != "rejected" {
            return Err(ProviderFailure::new("http_422", format!("unexpected answer {status}: {}", truncate(&text))));
        }
        return Ok(PaymentAnswer::Rejected { code });
    }
    match (status.as_u16(), body.status.as_str()) {
        (200 | 201, "settled") => Ok(PaymentAnswer::Settled { provider_reference: body.reference.unwrap_or_default() }),
        (200..=202, "pending") => Ok(PaymentAnswer::Pending { provider_reference: body.reference.unwrap_or_default() }),
        (200 | 201, "rejected") => {
            Ok(PaymentAnswer::Rejected { code: body.code.unwrap_or_else(|| "rejected".to_owned()) })
        }
        _ => Err(ProviderFailure::new(
            format!("http_{}", status.as_u16()),
            format!("unexpected answer {status} with status {:?}", body.status),
        )),
    }
}

/// A non-answer: 5xx, 429, 408 (try later, with its `Retry-After`); 409
/// (the same key is still being processed: later, and not the provider's
/// failure); any other (our integration is wrong, for every payment alike).
async fn failure_of(response: reqwest::Response) -> ProviderFailure {
    let status = response.status();
    let retry_after_ms = retry_after_ms(response.headers());
    let detail = response.text().await.unwrap_or_default();
    let mut failure = ProviderFailure::new(
        format!("http_{}", status.as_u16()),
        format!("provider answered {status}: {}", truncate(&detail)),
    );
    failure.retry_after_ms = retry_after_ms;
    if status == StatusCode::CONFLICT {
        failure = failure.of_this_payment();
    }
    failure
}

fn truncate(text: &str) -> String {
    text.chars().take(ERROR_DETAIL_MAX_CHARS).collect()
}

/// A stable reason for an HTTP call that got no answer, for metrics.
pub(crate) fn reqwest_error_code(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_decode() {
        "bad_answer"
    } else {
        "http_error"
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and is
/// ignored: the relay's own backoff applies), capped at an hour.
pub(crate) fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(seconds.min(3_600) * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_ms(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after_ms(&headers), Some(7_000));
        headers.insert(RETRY_AFTER, "999999".parse().expect("header"));
        assert_eq!(retry_after_ms(&headers), Some(3_600_000));
        headers.insert(RETRY_AFTER, "Wed, 21 Oct 2026 07:28:00 GMT".parse().expect("header"));
        assert_eq!(retry_after_ms(&headers), None);
    }
}
