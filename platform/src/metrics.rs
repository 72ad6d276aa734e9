//! Metrics for Prometheus: the text exposition format (0.0.4) written by
//! hand (a few counters and gauges per service do not justify a metrics
//! framework), a fixed-bucket latency histogram, and a listener serving
//! `GET /metrics` on its own address (`LEDGERLINE_METRICS_ADDR`), apart from
//! the API, so that scraping needs no token and the API port exposes nothing.
//!
//! Services without an API of their own (processor, relay) also serve their
//! probes there: `GET /health/live` (the process answers) and
//! `GET /health/ready` (204, or 503 with a problem+json body listing why).

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
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

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the current family; `value` is already formatted.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, text)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let escaped = text.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl std::fmt::Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    #[must_use]
    pub fn finish(self) -> String {
        self.text
    }
}

/// A duration in seconds, exactly, from whole microseconds (no float).
#[must_use]
pub fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Upper bounds of the latency buckets, in microseconds, and as Prometheus
/// writes them.
const BUCKETS_US: [(u64, &str); 12] = [
    (1_000, "0.001"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

/// A latency histogram with fixed buckets from 1 ms to 10 s.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKETS_US.iter().position(|(bound, _)| micros <= *bound).unwrap_or(BUCKETS_US.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` with
    /// `labels` (the family line is the caller's).
    pub fn write(&self, page: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0_u64;
        for (index, (_, le)) in BUCKETS_US.iter().enumerate() {
            cumulative = cumulative.saturating_add(self.buckets[index].load(Ordering::Relaxed));
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            page.sample(&bucket_name, &with_le, cumulative);
        }
        cumulative = cumulative.saturating_add(self.buckets[BUCKETS_US.len()].load(Ordering::Relaxed));
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        page.sample(&bucket_name, &with_le, cumulative);
        page.sample(&format!("{name}_sum"), labels, seconds(self.sum_us.load(Ordering::Relaxed)));
        page.sample(&format!("{name}_count"), labels, cumulative);
    }
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
    use super::*;

    #[test]
    fn the_page_is_prometheus_text_with_escaped_labels() {
        let mut page = Exposition::new();
        page.single("ledgerline_things_total", Kind::Counter, "Things.\nDone", 3);
        page.family("ledgerline_by_route_total", Kind::Counter, "By route").sample(
            "ledgerline_by_route_total",
            &[("route", "/v1/\"x\"\\"), ("status", "200")],
            7,
        );
        assert_eq!(
            page.finish(),
            "# HELP ledgerline_things_total Things.\\nDone\n# TYPE ledgerline_things_total counter\n\
             ledgerline_things_total 3\n\
             # HELP ledgerline_by_route_total By route\n# TYPE ledgerline_by_route_total counter\n\
             ledgerline_by_route_total{route=\"/v1/\\\"x\\\"\\\\\",status=\"200\"} 7\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_seconds_exact() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(800));
        histogram.observe(Duration::from_millis(30));
        histogram.observe(Duration::from_secs(20));
        let mut page = Exposition::new();
        histogram.write(&mut page, "latency_seconds", &[("route", "/x")]);
        let text = page.finish();
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_sum{route=\"/x\"} 20.030800\n"), "{text}");
        assert!(text.contains("latency_seconds_count{route=\"/x\"} 3\n"), "{text}");
        assert_eq!(seconds(1_500_001), "1.500001");
    }
}
