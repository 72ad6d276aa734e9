//! Metrics for Prometheus, from the `prometheus` crate (its text exposition
//! format, 0.0.4), and a listener serving `GET /metrics` on its own address
//! (`LEDGERLINE_METRICS_ADDR`), apart from the API, so that scraping needs no
//! token and the API port exposes nothing.
//!
//! Every service instance has its own [`Registry`]: never the crate's
//! global one, because `ledgerctl dev` and the tests run the three services
//! (and several instances of one) in one process, and each must count only
//! what it did. The constructors here register a metric in the instance's
//! registry and hand it back.
//!
//! Services without an API of their own (processor, relay) also serve their
//! probes there: `GET /health/live` (the process answers) and
//! `GET /health/ready` (204, or 503 with a problem+json body listing why).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
pub use prometheus::{Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use prometheus::{HistogramOpts, Opts};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};

/// `LEDGERLINE_METRICS_ADDR`: where to serve `/metrics`; unset, nowhere.
///
/// # Errors
/// When the variable is not a socket address.
pub fn addr_from_env() -> Result<Option<SocketAddr>, ConfigError> {
    config::var_optional("LEDGERLINE_METRICS_ADDR")
}

/// Upper bounds of the latency buckets, in seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS_S: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Registers `metric` in `registry` and hands it back.
///
/// # Panics
/// When the name is taken in this registry or not a valid metric name: the
/// names are constants and each registry is new, so this is a programming
/// error that every test that builds the service shows.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("a metric name that is valid and unique in its registry");
    metric
}

/// A counter.
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help).expect("a valid counter definition"))
}

/// A counter per value of `labels`.
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter definition"))
}

/// A gauge.
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("a valid gauge definition"))
}

/// A gauge of a measured quantity that is not a count (an age in seconds).
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn measure(registry: &Registry, name: &str, help: &str) -> Gauge {
    registered(registry, Gauge::new(name, help).expect("a valid gauge definition"))
}

/// A gauge per value of `labels`.
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge definition"))
}

/// A latency histogram with the buckets of [`LATENCY_BUCKETS_S`].
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn latency_histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let options = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_S.to_vec());
    registered(registry, Histogram::with_opts(options).expect("a valid histogram definition"))
}

/// A latency histogram per value of `labels`.
///
/// # Panics
/// When the name is taken in this registry or invalid (see `registered`).
#[must_use]
pub fn latency_histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let options = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_S.to_vec());
    registered(registry, HistogramVec::new(options, labels).expect("a valid histogram definition"))
}

/// The page of `registry` in the text exposition format. A failure to
/// encode (which the text encoder only has on a broken writer) is logged
/// and gives an empty page.
#[must_use]
pub fn encode(registry: &Registry) -> String {
    let mut page = String::new();
    if let Err(error) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut page) {
        tracing::error!(%error, "encoding the metrics page failed");
    }
    page
}

/// What renders the page on each scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A [`Render`] for a page that is ready at once (counters in memory).
pub fn render_with(page: impl Fn() -> String + Send + Sync + 'static) -> Render {
    Arc::new(move || {
        let page = page();
        Box::pin(async move { page })
    })
}

/// What decides readiness on each probe: the reasons the service is not
/// ready, none when it is.
pub type Ready = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<String>> + Send>> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// When the server fails.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) -> anyhow::Result<()> {
    serve_with_health(listener, render, None, shutdown).await
}

/// Serves `GET /metrics` and, with `ready`, the probes `/health/live` and
/// `/health/ready` on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// When the server fails.
pub async fn serve_with_health(
    listener: TcpListener,
    render: Render,
    ready: Option<Ready>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let mut router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = Arc::clone(&render);
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render().await) }
        }),
    );
    if let Some(ready) = ready {
        router =
            router.route("/health/live", axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT })).route(
                "/health/ready",
                axum::routing::get(move || {
                    let ready = Arc::clone(&ready);
                    async move { ready_answer(&ready().await) }
                }),
            );
    }
    tracing::info!(address = %listener.local_addr()?, "serving /metrics");
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("serving /metrics")
}

/// 204 when there is no problem; otherwise 503 with the problems in a
/// problem+json body (`code` `not_ready`), so an operator reading the probe
/// sees why. Logged at debug only: probes come every few seconds, and the
/// service logs the cause itself when it arises.
fn ready_answer(problems: &[String]) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    use axum::response::IntoResponse as _;
    if problems.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    tracing::debug!(?problems, "not ready");
    let body = NotReady {
        kind: "urn:ledgerline:problem:not_ready",
        title: "The service is not ready",
        status: 503,
        code: "not_ready",
        detail: problems.join("; "),
        problems,
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(CONTENT_TYPE, "application/problem+json"), (CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// The body of a 503 from `/health/ready`.
#[derive(Debug, serde::Serialize)]
struct NotReady<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: String,
    problems: &'a [String],
}

/// Binds `address` and serves the metrics there in the background.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn(address: SocketAddr, render: Render, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("binding the metrics address {address}"))?;
    let bound = listener.local_addr()?;
    spawn_on(listener, render, shutdown);
    Ok(bound)
}

/// Serves the metrics on an already bound `listener` in the background.
pub fn spawn_on(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    tokio::spawn(async move {
        if let Err(error) = serve(listener, render, shutdown).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
}

/// Binds `address` and serves the metrics and the probes there in the
/// background.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn_with_health(
    address: SocketAddr,
    render: Render,
    ready: Ready,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("binding the metrics address {address}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve_with_health(listener, render, Some(ready), shutdown).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_page_is_prometheus_text_with_escaped_labels() {
        let registry = Registry::new();
        counter(&registry, "ledgerline_things_total", "Things.\nDone").inc_by(3);
        counter_vec(&registry, "ledgerline_by_route_total", "By route", &["route", "status"])
            .with_label_values(&["/v1/\"x\"\\", "200"])
            .inc_by(7);
        assert_eq!(
            encode(&registry),
            "# HELP ledgerline_by_route_total By route\n# TYPE ledgerline_by_route_total counter\n\
             ledgerline_by_route_total{route=\"/v1/\\\"x\\\"\\\\\",status=\"200\"} 7\n\
             # HELP ledgerline_things_total Things.\\nDone\n# TYPE ledgerline_things_total counter\n\
             ledgerline_things_total 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_from_1_ms_to_10_s() {
        let registry = Registry::new();
        let histogram = latency_histogram_vec(&registry, "latency_seconds", "Latency", &["route"]);
        for elapsed in [Duration::from_micros(800), Duration::from_millis(30), Duration::from_secs(20)] {
            histogram.with_label_values(&["/x"]).observe(elapsed.as_secs_f64());
        }
        let text = encode(&registry);
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_sum{route=\"/x\"} 20.0308\n"), "{text}");
        assert!(text.contains("latency_seconds_count{route=\"/x\"} 3\n"), "{text}");
    }

    #[test]
    fn each_registry_counts_only_its_own() {
        let (one, two) = (Registry::new(), Registry::new());
        counter(&one, "ledgerline_things_total", "Things").inc();
        let _ = counter(&two, "ledgerline_things_total", "Things");
        assert!(encode(&one).contains("ledgerline_things_total 1\n"));
        assert!(encode(&two).contains("ledgerline_things_total 0\n"));
    }
}
