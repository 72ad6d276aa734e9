//! Binding and running ingest: the listeners (HTTP or HTTPS, the
//! redirect, metrics), the state, and what runs beside the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use platform::CancellationToken;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::IngestConfig;
use crate::state::{AppState, Limits, RATE_LIMIT_KEYS_MAX};
use crate::support::jwt::JwtKeys;
use crate::support::limits::RateLimiter;
use crate::support::passwords::SecretHasher;
use crate::support::publish::Publisher;

/// The server, bound and ready to run. Binding first lets a test ask for
/// port 0 and learn the real port before any request is sent.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// Set when serving HTTPS.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The plain-HTTP listener that redirects to HTTPS, when configured.
    redirect: Option<TcpListener>,
    /// Where `/metrics` is served, when configured.
    metrics: Option<TcpListener>,
    /// This instance's metrics (its requests, its long polls).
    registry: platform::metrics::Registry,
    limits: crate::server::serve::ConnectionLimits,
    /// Background work beside the server: the decision watcher and pruning.
    background: Background,
}

/// What runs beside the server, started by [`Application::run_until`].
#[derive(Debug)]
struct Background {
    pool: PgPool,
    decisions: Arc<crate::support::decisions::Decisions>,
    retention: crate::support::retention::RetentionConfig,
}

impl Application {
    /// # Errors
    /// When the address cannot be bound or a client cannot be created.
    pub async fn build(config: &IngestConfig, pool: PgPool) -> anyhow::Result<Self> {
        let registry = platform::metrics::Registry::new();
        let decisions = crate::support::decisions::Decisions::new(config.decision_wait, &registry);
        let background =
            Background { pool: pool.clone(), decisions: Arc::clone(&decisions), retention: config.retention };
        let state = AppState {
            acceptances: crate::domain::acceptance::Acceptances::spawn(&pool),
            dashboard: config.dashboard,
            dashboard_overview: Arc::default(),
            pool,
            decisions,
            publisher: Publisher::new(&config.kafka)?,
            jwt: Arc::new(JwtKeys::new(
                &config.jwt_secret,
                &config.jwt_issuer,
                &config.jwt_audience,
                config.token_ttl_s,
            )?),
            provider_callback: config.provider_callback.clone().map(Arc::new),
            hasher: SecretHasher::new(config.argon2)?,
            kafka: config.kafka.clone(),
            webhook_private_networks_allowed: config.webhook_private_networks_allowed,
            webhook_secret_keys: config.webhook_secret_keys.clone().map(Arc::new),
            refresh_token_ttl_s: config.refresh_token_ttl_s,
            limits: Arc::new(Limits {
                clients: RateLimiter::new(config.client_rate_limit, RATE_LIMIT_KEYS_MAX),
                token_ips: RateLimiter::new(config.token_ip_rate_limit, RATE_LIMIT_KEYS_MAX),
                login_accounts: RateLimiter::new(config.login_account_rate_limit, RATE_LIMIT_KEYS_MAX),
                pin_users: RateLimiter::new(config.pin_user_rate_limit, RATE_LIMIT_KEYS_MAX),
            }),
        };
        let tls = config.tls.as_ref().map(crate::server::tls::TlsConfig::server_config).transpose()?;
        let listener =
            TcpListener::bind(config.http_addr).await.with_context(|| format!("binding {}", config.http_addr))?;
        let redirect = bind_optional(config.redirect_http_addr, "the redirect").await?;
        let metrics = bind_optional(config.metrics_addr, "the metrics").await?;
        let http_metrics = Arc::new(crate::middleware::metrics::HttpMetrics::new(&registry));
        let router = crate::router::app(state, config, Arc::clone(&http_metrics))?;
        let limits = crate::server::serve::ConnectionLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            connections_max: config.connections_max,
        };
        Ok(Self { listener, router, tls, redirect, metrics, registry, limits, background })
    }

    /// The metrics listener's address, when there is one.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.metrics.as_ref().map(|listener| listener.local_addr().context("reading the bound address")).transpose()
    }

    /// The plain-HTTP redirect listener's address, when there is one.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn redirect_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.redirect.as_ref().map(|listener| listener.local_addr().context("reading the bound address")).transpose()
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener.local_addr().context("reading the bound address")
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let address = self.local_addr()?;
        let Background { pool, decisions, retention } = self.background;
        tokio::spawn(Arc::clone(&decisions).watch(pool.clone(), shutdown.clone()));
        tokio::spawn(crate::support::retention::run(retention, pool, shutdown.clone()));
        if let Some(listener) = self.metrics {
            let registry = self.registry;
            platform::metrics::spawn_on(
                listener,
                platform::metrics::render_with(move || platform::metrics::encode(&registry)),
                shutdown.clone(),
            );
        }
        // Every request carries the peer address (`ConnectInfo`): the per-IP
        // limits and the audit log use it.
        let Some(tls) = self.tls else {
            tracing::info!(%address, "ingest listening (HTTP)");
            crate::server::serve::serve(self.listener, self.router, self.limits, shutdown).await;
            return Ok(());
        };
        if let Some(redirect) = self.redirect {
            tracing::info!(address = %redirect.local_addr()?, "redirecting HTTP to HTTPS");
            let router = crate::server::tls::redirect_router(address.port());
            tokio::spawn(crate::server::serve::serve(redirect, router, self.limits, shutdown.clone()));
        }
        tracing::info!(%address, "ingest listening (HTTPS)");
        let listener = crate::server::tls::TlsListener::new(self.listener, tls, shutdown.clone())?;
        crate::server::serve::serve(listener, self.router, self.limits, shutdown).await;
        Ok(())
    }
}

/// Binds `address` when there is one (a listener of `what`, for the error).
async fn bind_optional(address: Option<SocketAddr>, what: &str) -> anyhow::Result<Option<TcpListener>> {
    match address {
        Some(address) => {
            Ok(Some(TcpListener::bind(address).await.with_context(|| format!("binding {what} {address}"))?))
        }
        None => Ok(None),
    }
}
