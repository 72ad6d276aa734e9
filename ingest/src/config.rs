//! Ingest settings.

use std::net::SocketAddr;

use platform::config::{self, ConfigError};
use platform::kafka::KafkaConfig;
use secrecy::SecretString;

use crate::server::tls::TlsConfig;
use crate::support::limits::RateLimit;
use crate::support::passwords::Argon2Cost;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `LEDGERLINE_HTTP_ADDR`: where to listen; port 0 picks a free port.
    pub http_addr: SocketAddr,
    pub kafka: KafkaConfig,
    /// `LEDGERLINE_JWT_SECRET` (or `_FILE`): the HS256 signing secret, at
    /// least 32 bytes.
    pub jwt_secret: SecretString,
    /// `LEDGERLINE_JWT_ISSUER` and `LEDGERLINE_JWT_AUDIENCE`: checked on every token.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// `LEDGERLINE_TOKEN_TTL_S`: lifetime of an access token, at most 15 minutes.
    pub token_ttl_s: u64,
    /// `LEDGERLINE_HTTP_BODY_SIZE_MAX_BYTES`: larger request bodies get 413.
    pub body_size_max_bytes: usize,
    /// `LEDGERLINE_HTTP_HEADER_READ_TIMEOUT_MS`: a request's headers must
    /// arrive within this; slower connections are closed. It is also how long
    /// a kept-alive connection may sit idle: keep it above the idle timeout
    /// of a load balancer in front (60 s on AWS's ALB), or the balancer may
    /// send a request down a connection just closed.
    pub header_read_timeout_ms: u64,
    /// `LEDGERLINE_HTTP_WRITE_TIMEOUT_MS`: a connection whose answer makes no
    /// progress for this long (a client that stopped reading) is closed.
    pub write_timeout_ms: u64,
    /// `LEDGERLINE_HTTP_CONNECTIONS_MAX`: connections served at once per
    /// listener; more wait in the kernel's accept queue.
    pub connections_max: usize,
    /// `LEDGERLINE_HTTP_REQUEST_TIMEOUT_MS`: a request still running after
    /// this long is answered with 503 (Kafka publishing included).
    pub request_timeout_ms: u64,
    /// `LEDGERLINE_REFRESH_TOKEN_TTL_S`: lifetime of a customer's refresh
    /// token (each use replaces it).
    pub refresh_token_ttl_s: u64,
    /// `LEDGERLINE_RATE_LIMIT_PER_S` and `LEDGERLINE_RATE_LIMIT_BURST`: each
    /// API client's token bucket on authenticated routes.
    pub client_rate_limit: RateLimit,
    /// `LEDGERLINE_TOKEN_RATE_LIMIT_PER_S` and `LEDGERLINE_TOKEN_RATE_LIMIT_BURST`:
    /// each client IP's bucket on the token endpoint.
    pub token_ip_rate_limit: RateLimit,
    /// `LEDGERLINE_LOGIN_RATE_LIMIT_PER_MIN` and `LEDGERLINE_LOGIN_RATE_LIMIT_BURST`:
    /// each account's (email's) bucket of login attempts, whatever the IP.
    pub login_account_rate_limit: RateLimit,
    /// `LEDGERLINE_PIN_RATE_LIMIT_PER_MIN` and `LEDGERLINE_PIN_RATE_LIMIT_BURST`:
    /// each user's bucket of PIN checks (step-ups and PIN changes, right or
    /// wrong) and first-PIN password checks. The lockout bounds wrong PINs;
    /// this bounds the argon2 one customer can spend with the right one.
    pub pin_user_rate_limit: RateLimit,
    /// The payment provider allowed to call back, when
    /// `LEDGERLINE_PROVIDER_CALLBACK_SECRET` is set.
    pub provider_callback: Option<ProviderCallback>,
    /// `LEDGERLINE_ARGON2_*`: the cost of hashing passwords, PINs and client secrets.
    pub argon2: Argon2Cost,
    /// `LEDGERLINE_TLS_CERT` and `LEDGERLINE_TLS_KEY`: serve HTTPS when both are set.
    pub tls: Option<TlsConfig>,
    /// `LEDGERLINE_HTTP_REDIRECT_ADDR`: with TLS, also listen here for plain
    /// HTTP and redirect it to HTTPS.
    pub redirect_http_addr: Option<SocketAddr>,
    /// `LEDGERLINE_CORS_ORIGINS`: browser origins allowed to call the API
    /// (comma-separated, exact, e.g. `https://app.bank.example`). Empty: no
    /// CORS headers at all, so no other origin's page can read an answer.
    pub cors_origins: Vec<String>,
    /// `LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED`: accept webhook URLs
    /// naming localhost or private addresses (the relay has the same switch
    /// and checks again at delivery).
    pub webhook_private_networks_allowed: bool,
    /// `LEDGERLINE_METRICS_ADDR`: serve Prometheus metrics at `/metrics` there.
    pub metrics_addr: Option<SocketAddr>,
    /// The staff dashboard's sessions (`/admin`).
    pub dashboard: DashboardConfig,
    /// `LEDGERLINE_WEBHOOK_SECRETS_KEYS` (or `_FILE`): derive webhook secrets
    /// instead of storing them; the relay needs the same keys.
    pub webhook_secret_keys: Option<platform::signature::WebhookSecretKeys>,
    /// `LEDGERLINE_LONG_POLL_WAITERS_MAX` and `LEDGERLINE_LONG_POLL_FALLBACK_POLL_MS`:
    /// customers' status requests waiting for a decision at once, and how
    /// often the decision watcher looks in case a notification was missed.
    pub decision_wait: crate::support::decisions::DecisionWaitConfig,
    /// `LEDGERLINE_*_RETENTION_S` and friends: how long recorded requests,
    /// audit events, expired tokens and dead notifications are kept.
    pub retention: crate::support::retention::RetentionConfig,
}

/// Who may call `POST /v1/providers/{name}/callbacks`, and how it signs.
#[derive(Debug, Clone)]
pub struct ProviderCallback {
    /// `LEDGERLINE_PROVIDER_NAME`: the `{name}` in the callback URL.
    pub name: String,
    /// `LEDGERLINE_PROVIDER_CALLBACK_SECRET` (or `_FILE`): the HMAC key.
    pub secret: SecretString,
    /// `LEDGERLINE_PROVIDER_CALLBACK_TOLERANCE_S`: how far a callback's
    /// timestamp may be from now before it is refused as stale.
    pub tolerance_s: i64,
}

impl IngestConfig {
    pub const HTTP_ADDR_DEFAULT: &'static str = "127.0.0.1:8080";

    /// Settings with the defaults, for `ledgerctl dev` and the tests.
    #[must_use]
    pub fn new(http_addr: SocketAddr, kafka: KafkaConfig, jwt_secret: SecretString) -> Self {
        Self {
            http_addr,
            kafka,
            jwt_secret,
            jwt_issuer: "ledgerline".into(),
            jwt_audience: "ledgerline-api".into(),
            token_ttl_s: 900,
            body_size_max_bytes: 16 * 1024,
            request_timeout_ms: 15_000,
            header_read_timeout_ms: 65_000,
            write_timeout_ms: 30_000,
            connections_max: 10_000,
            refresh_token_ttl_s: 30 * 24 * 3600,
            client_rate_limit: RateLimit::per_second(200, 400),
            token_ip_rate_limit: RateLimit::per_second(2, 20),
            login_account_rate_limit: RateLimit { per_minute: 6, burst: 10 },
            pin_user_rate_limit: RateLimit { per_minute: 10, burst: 10 },
            provider_callback: None,
            argon2: Argon2Cost::default(),
            tls: None,
            redirect_http_addr: None,
            cors_origins: Vec::new(),
            webhook_private_networks_allowed: false,
            metrics_addr: None,
            dashboard: DashboardConfig::default(),
            webhook_secret_keys: None,
            decision_wait: crate::support::decisions::DecisionWaitConfig::default(),
            retention: crate::support::retention::RetentionConfig::default(),
        }
    }

    /// # Errors
    /// When a variable is missing, malformed or out of range.
    pub fn from_env(kafka: KafkaConfig, jwt_secret_default: Option<SecretString>) -> Result<Self, ConfigError> {
        let jwt_secret = match config::secret_optional("LEDGERLINE_JWT_SECRET")? {
            Some(secret) => secret,
            None => jwt_secret_default.ok_or_else(|| ConfigError::new("LEDGERLINE_JWT_SECRET", "is required"))?,
        };
        let http_addr = config::var_or(
            "LEDGERLINE_HTTP_ADDR",
            Self::HTTP_ADDR_DEFAULT.parse().map_err(|error| ConfigError::new("LEDGERLINE_HTTP_ADDR", error))?,
        )?;
        let defaults = Self::new(http_addr, kafka, jwt_secret);
        Ok(Self {
            jwt_issuer: config::var_or("LEDGERLINE_JWT_ISSUER", defaults.jwt_issuer.clone())?,
            jwt_audience: config::var_or("LEDGERLINE_JWT_AUDIENCE", defaults.jwt_audience.clone())?,
            token_ttl_s: config::limit("LEDGERLINE_TOKEN_TTL_S", defaults.token_ttl_s, 30..=900)?,
            body_size_max_bytes: config::limit(
                "LEDGERLINE_HTTP_BODY_SIZE_MAX_BYTES",
                defaults.body_size_max_bytes,
                1024..=1024 * 1024,
            )?,
            header_read_timeout_ms: config::limit(
                "LEDGERLINE_HTTP_HEADER_READ_TIMEOUT_MS",
                defaults.header_read_timeout_ms,
                100..=900_000,
            )?,
            write_timeout_ms: config::limit(
                "LEDGERLINE_HTTP_WRITE_TIMEOUT_MS",
                defaults.write_timeout_ms,
                100..=900_000,
            )?,
            connections_max: config::limit("LEDGERLINE_HTTP_CONNECTIONS_MAX", defaults.connections_max, 1..=1_000_000)?,
            request_timeout_ms: config::limit(
                "LEDGERLINE_HTTP_REQUEST_TIMEOUT_MS",
                defaults.request_timeout_ms,
                100..=120_000,
            )?,
            refresh_token_ttl_s: config::limit(
                "LEDGERLINE_REFRESH_TOKEN_TTL_S",
                defaults.refresh_token_ttl_s,
                300..=90 * 24 * 3600,
            )?,
            client_rate_limit: RateLimit::per_second(
                config::limit("LEDGERLINE_RATE_LIMIT_PER_S", 200, 1..=1_000_000)?,
                config::limit("LEDGERLINE_RATE_LIMIT_BURST", defaults.client_rate_limit.burst, 1..=1_000_000)?,
            ),
            token_ip_rate_limit: RateLimit::per_second(
                config::limit("LEDGERLINE_TOKEN_RATE_LIMIT_PER_S", 2, 1..=10_000)?,
                config::limit("LEDGERLINE_TOKEN_RATE_LIMIT_BURST", defaults.token_ip_rate_limit.burst, 1..=10_000)?,
            ),
            login_account_rate_limit: RateLimit {
                per_minute: config::limit(
                    "LEDGERLINE_LOGIN_RATE_LIMIT_PER_MIN",
                    defaults.login_account_rate_limit.per_minute,
                    1..=600,
                )?,
                burst: config::limit(
                    "LEDGERLINE_LOGIN_RATE_LIMIT_BURST",
                    defaults.login_account_rate_limit.burst,
                    1..=1_000,
                )?,
            },
            pin_user_rate_limit: RateLimit {
                per_minute: config::limit(
                    "LEDGERLINE_PIN_RATE_LIMIT_PER_MIN",
                    defaults.pin_user_rate_limit.per_minute,
                    1..=600,
                )?,
                burst: config::limit("LEDGERLINE_PIN_RATE_LIMIT_BURST", defaults.pin_user_rate_limit.burst, 1..=1_000)?,
            },
            provider_callback: match config::secret_optional("LEDGERLINE_PROVIDER_CALLBACK_SECRET")? {
                None => None,
                Some(secret) => Some(ProviderCallback {
                    name: config::var_or("LEDGERLINE_PROVIDER_NAME", "provider".to_owned())?,
                    secret,
                    tolerance_s: config::limit("LEDGERLINE_PROVIDER_CALLBACK_TOLERANCE_S", 300, 10..=3_600)?,
                }),
            },
            argon2: Argon2Cost::from_env()?,
            tls: tls_from_env()?,
            redirect_http_addr: config::var_optional("LEDGERLINE_HTTP_REDIRECT_ADDR")?,
            cors_origins: cors_origins(&config::var_or("LEDGERLINE_CORS_ORIGINS", String::new())?)?,
            webhook_private_networks_allowed: config::var_or("LEDGERLINE_WEBHOOK_PRIVATE_NETWORKS_ALLOWED", false)?,
            metrics_addr: platform::metrics::addr_from_env()?,
            dashboard: DashboardConfig {
                idle_timeout_s: config::limit(
                    "LEDGERLINE_DASHBOARD_IDLE_TIMEOUT_S",
                    defaults.dashboard.idle_timeout_s,
                    60..=24 * 3_600,
                )?,
                // At most a week: retention prunes sessions that old.
                absolute_timeout_s: config::limit(
                    "LEDGERLINE_DASHBOARD_ABSOLUTE_TIMEOUT_S",
                    defaults.dashboard.absolute_timeout_s,
                    300..=7 * 24 * 3_600,
                )?,
                cookie_secure: !config::var_or("LEDGERLINE_DASHBOARD_INSECURE_COOKIE", false)?,
            },
            webhook_secret_keys: platform::signature::WebhookSecretKeys::from_env()?,
            decision_wait: crate::support::decisions::DecisionWaitConfig {
                waiters_max: config::limit(
                    "LEDGERLINE_LONG_POLL_WAITERS_MAX",
                    defaults.decision_wait.waiters_max,
                    1..=1_000_000,
                )?,
                fallback_poll_ms: config::limit(
                    "LEDGERLINE_LONG_POLL_FALLBACK_POLL_MS",
                    defaults.decision_wait.fallback_poll_ms,
                    100..=10_000,
                )?,
            },
            retention: crate::support::retention::RetentionConfig::from_env()?,
            ..defaults
        })
        .and_then(|config| {
            if config.redirect_http_addr.is_some() && config.tls.is_none() {
                return Err(ConfigError::new(
                    "LEDGERLINE_HTTP_REDIRECT_ADDR",
                    "redirects to HTTPS, so it needs LEDGERLINE_TLS_CERT and LEDGERLINE_TLS_KEY",
                ));
            }
            Ok(config)
        })
    }
}

fn tls_from_env() -> Result<Option<TlsConfig>, ConfigError> {
    let cert: Option<String> = config::var_optional("LEDGERLINE_TLS_CERT")?;
    let key: Option<String> = config::var_optional("LEDGERLINE_TLS_KEY")?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsConfig { cert_path: cert.into(), key_path: key.into() })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new("LEDGERLINE_TLS_KEY", "is needed with LEDGERLINE_TLS_CERT")),
        (None, Some(_)) => Err(ConfigError::new("LEDGERLINE_TLS_CERT", "is needed with LEDGERLINE_TLS_KEY")),
    }
}

/// Exact origins only: a scheme, a host, maybe a port; no path, no
/// wildcard. Allowing `*` would let any page read a customer's answers.
///
/// # Errors
/// When an origin is not of that shape.
pub fn cors_origins(text: &str) -> Result<Vec<String>, ConfigError> {
    let name = "LEDGERLINE_CORS_ORIGINS";
    let mut origins = Vec::new();
    for origin in text.split(',').map(str::trim).filter(|origin| !origin.is_empty()) {
        let uri: axum::http::Uri =
            origin.parse().map_err(|error| ConfigError::new(name, format!("{origin:?}: {error}")))?;
        let well_formed = matches!(uri.scheme_str(), Some("https" | "http"))
            && uri.host().is_some_and(|host| !host.contains('*'))
            && uri.path_and_query().is_none_or(|path| path.as_str().is_empty() || path.as_str() == "/")
            && !origin.ends_with('/');
        if !well_formed {
            return Err(ConfigError::new(name, format!("{origin:?} is not an origin like https://app.example.com")));
        }
        origins.push(origin.to_owned());
    }
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_exact_origins() {
        assert_eq!(
            cors_origins(" https://app.bank.example, http://localhost:5173 ").expect("origins"),
            vec!["https://app.bank.example".to_owned(), "http://localhost:5173".to_owned()]
        );
        assert!(cors_origins("").expect("none").is_empty());
        for bad in [
            "*",
            "https://*.bank.example",
            "app.bank.example",
            "https://app.bank.example/",
            "ftp://x.example",
            "https://app.bank.example/path",
        ] {
            assert!(cors_origins(bad).is_err(), "{bad} accepted");
        }
    }
}

/// How the dashboard's sessions behave.
#[derive(Debug, Clone, Copy)]
pub struct DashboardConfig {
    /// A session unused for this long ends (`LEDGERLINE_DASHBOARD_IDLE_TIMEOUT_S`).
    pub idle_timeout_s: u64,
    /// A session ends this long after sign-in, used or not
    /// (`LEDGERLINE_DASHBOARD_ABSOLUTE_TIMEOUT_S`).
    pub absolute_timeout_s: u64,
    /// Whether the cookie says `Secure`. Off only for plain-HTTP
    /// development (`ledgerctl dev`; `LEDGERLINE_DASHBOARD_INSECURE_COOKIE`),
    /// and the page footer says so.
    pub cookie_secure: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self { idle_timeout_s: 15 * 60, absolute_timeout_s: 8 * 60 * 60, cookie_secure: true }
    }
}
