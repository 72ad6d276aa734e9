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

use crate::auth::JwtKeys;
use crate::config::IngestConfig;
use crate::error::{ApiError, problem_response};
use crate::publish::Publisher;

/// What every handler may use.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub jwt: Arc<JwtKeys>,
    pub provider_callback: Option<Arc<crate::config::ProviderCallback>>,
    pub limits: Arc<Limits>,
    /// Lifetime of a customer's refresh token.
    pub refresh_token_ttl_s: u64,
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
}

/// The server, bound and ready to run. Binding first lets a test ask for
/// port 0 and learn the real port before any request is sent.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// # Errors
    /// When the address cannot be bound or a client cannot be created.
    pub async fn build(config: &IngestConfig, pool: PgPool) -> anyhow::Result<Self> {
        let state = AppState {
            pool,
            publisher: Publisher::new(&config.kafka)?,
            jwt: Arc::new(JwtKeys::new(
                &config.jwt_secret,
                &config.jwt_issuer,
                &config.jwt_audience,
                config.token_ttl_s,
            )?),
            provider_callback: config.provider_callback.clone().map(Arc::new),
            refresh_token_ttl_s: config.refresh_token_ttl_s,
            limits: Arc::new(Limits {
                clients: RateLimiter::new(config.client_rate_limit, RATE_LIMIT_KEYS_MAX),
                token_ips: RateLimiter::new(config.token_ip_rate_limit, RATE_LIMIT_KEYS_MAX),
                login_accounts: RateLimiter::new(config.login_account_rate_limit, RATE_LIMIT_KEYS_MAX),
            }),
        };
        let listener =
            TcpListener::bind(config.http_addr).await.with_context(|| format!("binding {}", config.http_addr))?;
        Ok(Self { listener, router: router(state, config) })
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
        tracing::info!(address = %self.local_addr()?, "ingest listening");
        // The peer address feeds the per-IP limit of the token endpoint.
        axum::serve(self.listener, self.router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")
    }
}

fn router(state: AppState, config: &IngestConfig) -> Router {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    Router::new()
        .merge(crate::auth::router())
        .merge(crate::accounts::router())
        .merge(crate::transfers::router())
        .merge(crate::callbacks::router())
        .merge(crate::webhooks::router())
        .merge(crate::customers::router())
        .merge(crate::customer_accounts::router())
        .merge(crate::customer_transfers::router())
        .merge(crate::audit::router())
        .merge(crate::staff::router())
        .merge(crate::health::router())
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
        .with_state(state)
}

/// Headers on every answer, errors included. The API serves JSON to
/// programs: nothing may be sniffed, framed, cached or sent as a referrer.
/// No CORS headers are ever sent, so browsers on other origins cannot call
/// the API (there is no browser front end to allow yet).
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
