//! What every handler may use: the state the router hands to each route,
//! built once per ingest instance by [`crate::app::Application::build`].

use std::sync::Arc;

use sqlx::PgPool;

use crate::support::jwt::JwtKeys;
use crate::support::limits::RateLimiter;
use crate::support::passwords::SecretHasher;
use crate::support::publish::Publisher;

/// What every handler may use.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub jwt: Arc<JwtKeys>,
    pub provider_callback: Option<Arc<crate::config::ProviderCallback>>,
    pub limits: Arc<Limits>,
    pub hasher: SecretHasher,
    /// Derives webhook secrets, when configured (else they are stored).
    pub webhook_secret_keys: Option<Arc<platform::signature::WebhookSecretKeys>>,
    /// Whether webhook URLs may name private hosts (`ledgerctl dev`, tests).
    pub webhook_private_networks_allowed: bool,
    /// For the ops routes that read the dead-letter topic.
    pub kafka: platform::kafka::KafkaConfig,
    /// Lifetime of a customer's refresh token.
    pub refresh_token_ttl_s: u64,
    /// The customers' long polls waiting for decisions.
    pub decisions: Arc<crate::support::decisions::Decisions>,
    /// Group commits of accepted requests and their published markers.
    pub acceptances: crate::domain::acceptance::Acceptances,
    /// The staff dashboard's session settings.
    pub dashboard: crate::config::DashboardConfig,
    /// The dashboard overview's snapshot, shared by every viewer.
    pub(crate) dashboard_overview: Arc<crate::dashboard::overview::Cache>,
}

/// Keys one limiter remembers at most (a bound on its memory).
pub(crate) const RATE_LIMIT_KEYS_MAX: usize = 100_000;

/// The rate limiters of this ingest instance.
#[derive(Debug)]
pub struct Limits {
    /// Per API client, on every authenticated route.
    pub clients: RateLimiter<uuid::Uuid>,
    /// Per client IP, on the token endpoint, register and login.
    pub token_ips: RateLimiter<std::net::IpAddr>,
    /// Per account (email), on login: guessing from many addresses.
    pub login_accounts: RateLimiter<String>,
    /// Per user, on PIN checks and first-PIN password checks.
    pub pin_users: RateLimiter<uuid::Uuid>,
}
