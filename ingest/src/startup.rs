//! Building and running the HTTP server.

use crate::limits::RateLimiter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use platform::CancellationToken;
use sqlx::PgPool;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::JwtKeys;
use crate::config::IngestConfig;
use crate::error::{ApiError, problem_response};
use crate::passwords::SecretHasher;
use crate::publish::Publisher;

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
    pub decisions: Arc<crate::decisions::Decisions>,
    /// Group commits of accepted requests and their published markers.
    pub acceptances: crate::transfers::Acceptances,
}

/// Keys one limiter remembers at most (a bound on its memory).
const RATE_LIMIT_KEYS_MAX: usize = 100_000;

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
    /// Where `/metrics` is served, when configured, and what it shows.
    metrics: Option<TcpListener>,
    http_metrics: Arc<crate::metrics::HttpMetrics>,
    limits: crate::serve::ConnectionLimits,
    /// Background work beside the server: the decision watcher and pruning.
    background: Background,
}

/// What runs beside the server, started by [`Application::run_until`].
#[derive(Debug)]
struct Background {
    pool: PgPool,
    decisions: Arc<crate::decisions::Decisions>,
    retention: crate::retention::RetentionConfig,
}

impl Application {
    /// # Errors
    /// When the address cannot be bound or a client cannot be created.
    pub async fn build(config: &IngestConfig, pool: PgPool) -> anyhow::Result<Self> {
        let decisions = crate::decisions::Decisions::new(config.decision_wait);
        let background =
            Background { pool: pool.clone(), decisions: Arc::clone(&decisions), retention: config.retention };
        let state = AppState {
            acceptances: crate::transfers::Acceptances::spawn(&pool),
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
        let tls = config.tls.as_ref().map(crate::tls::TlsConfig::server_config).transpose()?;
        let listener =
            TcpListener::bind(config.http_addr).await.with_context(|| format!("binding {}", config.http_addr))?;
        let redirect = bind_optional(config.redirect_http_addr, "the redirect").await?;
        let metrics = bind_optional(config.metrics_addr, "the metrics").await?;
        let http_metrics = Arc::new(crate::metrics::HttpMetrics::default());
        let router = router(state, config, Arc::clone(&http_metrics))?;
        let limits = crate::serve::ConnectionLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            connections_max: config.connections_max,
        };
        Ok(Self { listener, router, tls, redirect, metrics, http_metrics, limits, background })
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
        tokio::spawn(crate::retention::run(retention, pool, shutdown.clone()));
        if let Some(listener) = self.metrics {
            let metrics = self.http_metrics;
            platform::metrics::spawn_on(
                listener,
                platform::metrics::render_with(move || metrics.render() + &decisions.render()),
                shutdown.clone(),
            );
        }
        // Every request carries the peer address (`ConnectInfo`): the per-IP
        // limits and the audit log use it.
        let Some(tls) = self.tls else {
            tracing::info!(%address, "ingest listening (HTTP)");
            crate::serve::serve(self.listener, self.router, self.limits, shutdown).await;
            return Ok(());
        };
        if let Some(redirect) = self.redirect {
            tracing::info!(address = %redirect.local_addr()?, "redirecting HTTP to HTTPS");
            let router = crate::tls::redirect_router(address.port());
            tokio::spawn(crate::serve::serve(redirect, router, self.limits, shutdown.clone()));
        }
        tracing::info!(%address, "ingest listening (HTTPS)");
        let listener = crate::tls::TlsListener::new(self.listener, tls, shutdown.clone())?;
        crate::serve::serve(listener, self.router, self.limits, shutdown).await;
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

fn router(
    state: AppState,
    config: &IngestConfig,
    http_metrics: Arc<crate::metrics::HttpMetrics>,
) -> anyhow::Result<Router> {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let https = config.tls.is_some();
    let (api, document) = api_router().split_for_parts();
    let document = crate::openapi::Document::new(crate::openapi::complete(document))?;
    Ok(Router::new()
        .merge(api.route_layer(axum::middleware::from_fn(crate::metrics::note_route)))
        .layer(axum::Extension(document))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", None, None)
        })
        .layer(DefaultBodyLimit::max(config.body_size_max_bytes))
        .layer(axum::middleware::from_fn(move |request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    "The request took too long",
                    Some("retry it with the same Idempotency-Key".into()),
                    None,
                ),
            }
        }))
        .layer(axum::middleware::from_fn(crate::context::middleware))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(move |request, next| strict_transport(https, request, next)))
        .layer(cors(&config.cors_origins)?)
        .layer(axum::middleware::from_fn_with_state(http_metrics, crate::metrics::count))
        .with_state(state))
}

/// CORS for the configured origins only; none configured, no CORS headers
/// at all (the layer is a no-op), so browsers keep other origins out.
/// Bearer tokens travel in a header, never in cookies, so credentials are
/// not allowed.
fn cors(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(CorsLayer::new());
    }
    let origins = origins
        .iter()
        .map(|origin| HeaderValue::from_str(origin).with_context(|| format!("CORS origin {origin:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static(crate::customer_transfers::STEP_UP_HEADER),
        ])
        .expose_headers([header::LOCATION, header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600)))
}

/// Over HTTPS, browsers are told to never try plain HTTP for a year.
async fn strict_transport(
    https: bool,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    if https {
        response.headers_mut().insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Every route of the API with its OpenAPI operation. Routes are added only
/// here and only through `routes!` in the modules (a unit test checks the
/// sources), so the document lists every route.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(documented(crate::auth::router()))
        .merge(documented(crate::accounts::router()))
        .merge(documented(crate::transfers::router()))
        .merge(documented(crate::callbacks::router()))
        .merge(documented(crate::webhooks::router()))
        .merge(documented(crate::customers::router()))
        .merge(documented(crate::customer_accounts::router()))
        .merge(documented(crate::customer_transfers::router()))
        .merge(documented(crate::audit::router()))
        .merge(documented(crate::staff::router()))
        .merge(documented(crate::admin::router()))
        .merge(documented(crate::ops::router()))
        .merge(documented(crate::health::router()))
        .routes(routes!(crate::openapi::serve))
}

/// The OpenAPI 3.1 document served at `/openapi.json`, without a server
/// (`ledgerctl openapi`, the committed copy's staleness test).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(api_router().into_openapi())
}

/// A module's routes, with their OpenAPI operations. Every module's
/// `router()` goes through here.
fn documented(router: impl Into<OpenApiRouter<AppState>>) -> OpenApiRouter<AppState> {
    router.into()
}

/// Headers on every answer, errors included. The API serves JSON to
/// programs: nothing may be sniffed, framed, cached or sent as a referrer.
/// CORS headers come only from [`cors`], for configured origins.
async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}
