//! The overview: money moving now, live. The page is rendered with a first
//! snapshot, then `/admin/overview/stream` (Server-Sent Events) sends a new
//! one every second and the page's script updates the numbers and the chart.
//!
//! Everything comes from Postgres: rates and decision latency from the
//! transfers decided lately (a BRIN index on `decided_at`), lag and commit
//! latency from what the processors' partition monitors store
//! (`processor_partitions`, `processor_instances`), the outbox and payouts
//! from their tables. One snapshot is computed at most every
//! [`SNAPSHOT_TTL_MS`] for every viewer together, so viewers add no load
//! per head; the 15-minute chart is kept between snapshots and only its
//! newest [`SERIES_REREAD_S`] are read again each time.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Serialize;

use super::page;
use super::session::{Staff, Watching};
use crate::AppState;
use crate::domain::permissions::Permission;
use crate::error::ApiError;

/// A snapshot is shared by every viewer for this long.
pub(crate) const SNAPSHOT_TTL_MS: u64 = 900;
/// The chart's newest buckets read again with each snapshot: a batch's
/// transfers carry its start time, so a bucket can still grow for as long
/// as a batch transaction may take.
pub(crate) const SERIES_REREAD_S: i64 = 30;
/// The chart's span and bucket.
const SERIES_SPAN_S: i64 = 15 * 60;
const BUCKET_S: i64 = 10;
/// The stream sends a snapshot this often.
const STREAM_INTERVAL_MS: u64 = 1_000;
/// A stream ends after this long and the browser reconnects, so the session
/// is checked again (a signed-out or frozen user stops receiving).
const STREAM_DURATION_MAX_S: u64 = 300;
/// Rates and latency percentiles are over the transfers decided in this
/// last window.
const RATE_WINDOW_S: i64 = 10;
/// Processor instances that stored nothing for this long are not listed.
const INSTANCE_STALE_S: i64 = 30;

/// What the overview shows at one instant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    at: DateTime<Utc>,
    /// Per second over the last [`RATE_WINDOW_S`], in tenths.
    applied_per_s_tenths: i64,
    rejected_per_s_tenths: i64,
    /// Requested → decided, over the same window; `None` when none.
    decision_p50_ms: Option<i64>,
    decision_p99_ms: Option<i64>,
    /// Each live processor instance's recent batch commit latency.
    processors: Vec<ProcessorView>,
    partitions: Vec<PartitionView>,
    outbox: Vec<OutboxView>,
    payouts_in_flight: i64,
    payout_conflicts: i64,
    /// The last 15 minutes in 10-second buckets.
    series: Arc<Vec<Bucket>>,
}

#[derive(Debug, Clone, Serialize)]
struct ProcessorView {
    id: String,
    commit_p50_ms: Option<String>,
    commit_p99_ms: Option<String>,
    commands_total: i64,
    observed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
struct PartitionView {
    partition: i32,
    lag: i64,
    stopped: bool,
    observed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
struct OutboxView {
    destination: String,
    pending: i64,
    dead: i64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Bucket {
    at: DateTime<Utc>,
    applied: i64,
    rejected: i64,
    p99_ms: Option<i64>,
}

/// The snapshot shared by every viewer of one ingest instance.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    snapshot: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    series: Mutex<Arc<Vec<Bucket>>>,
}

impl Cache {
    async fn snapshot(&self, state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(fresh) = fresh(&self.snapshot, SNAPSHOT_TTL_MS) {
            return Ok(fresh);
        }
        let series = self.refresh_series(state).await?;
        let snapshot = Arc::new(read(state, series).await?);
        store(&self.snapshot, &snapshot);
        Ok(snapshot)
    }
}

impl Cache {
    /// The chart's buckets: the whole span the first time, then only the
    /// newest [`SERIES_REREAD_S`] merged into what was kept.
    async fn refresh_series(&self, state: &AppState) -> Result<Arc<Vec<Bucket>>, ApiError> {
        let kept = self.series.lock().map(|series| Arc::clone(&series)).unwrap_or_default();
        let now = Utc::now();
        let horizon = now - chrono::Duration::seconds(SERIES_SPAN_S);
        let since = match kept.last() {
            Some(last) => (last.at - chrono::Duration::seconds(SERIES_REREAD_S)).max(horizon),
            None => horizon,
        };
        // Buckets start on multiples of BUCKET_S since the epoch (the SQL's
        // origin, 2000-01-01, is one): the one holding `since` is read whole.
        let reread_from = since.timestamp() - since.timestamp().rem_euclid(BUCKET_S);
        let fresh = series_since(state, since).await?;
        let mut merged: Vec<Bucket> =
            kept.iter().filter(|bucket| bucket.at.timestamp() < reread_from && bucket.at >= horizon).cloned().collect();
        merged.extend(fresh);
        let merged = Arc::new(merged);
        if let Ok(mut series) = self.series.lock() {
            *series = Arc::clone(&merged);
        }
        Ok(merged)
    }
}

fn fresh<T>(slot: &Mutex<Option<(Instant, Arc<T>)>>, ttl_ms: u64) -> Option<Arc<T>> {
    let slot = slot.lock().ok()?;
    let (taken, value) = slot.as_ref()?;
    (taken.elapsed() < Duration::from_millis(ttl_ms)).then(|| Arc::clone(value))
}

fn store<T>(slot: &Mutex<Option<(Instant, Arc<T>)>>, value: &Arc<T>) {
    if let Ok(mut slot) = slot.lock() {
        *slot = Some((Instant::now(), Arc::clone(value)));
    }
}

async fn read(state: &AppState, series: Arc<Vec<Bucket>>) -> Result<Snapshot, ApiError> {
    let pool = &state.pool;
    let recent = sqlx::query!(
        r#"select count(*) filter (where status <> 'rejected') as "applied!",
                  count(*) filter (where status = 'rejected') as "rejected!",
                  (extract(epoch from percentile_disc(0.5) within group (order by decided_at - requested_at))
                      * 1000)::bigint as p50_ms,
                  (extract(epoch from percentile_disc(0.99) within group (order by decided_at - requested_at))
                      * 1000)::bigint as p99_ms
           from transfers where decided_at > now() - make_interval(secs => $1::bigint::double precision)"#,
        RATE_WINDOW_S,
    )
    .fetch_one(pool)
    .await?;
    let processors = sqlx::query!(
        r"select id, commit_p50_us, commit_p99_us, commands_total, observed_at from processor_instances
          where observed_at > now() - make_interval(secs => $1::bigint::double precision) order by started_at",
        INSTANCE_STALE_S,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| ProcessorView {
        id: page::short(row.id),
        commit_p50_ms: row.commit_p50_us.map(millis),
        commit_p99_ms: row.commit_p99_us.map(millis),
        commands_total: row.commands_total,
        observed_at: row.observed_at,
    })
    .collect();
    let partitions = sqlx::query_as!(
        PartitionView,
        "select partition, lag, stopped, observed_at from processor_partitions where topic = $1 order by partition",
        state.kafka.topics.commands,
    )
    .fetch_all(pool)
    .await?;
    // Only undelivered rows: the partial index the relay claims through.
    let outbox = sqlx::query_as!(
        OutboxView,
        r#"select destination as "destination!",
                  count(*) filter (where dead_at is null) as "pending!",
                  count(*) filter (where dead_at is not null) as "dead!"
           from outbox where delivered_at is null group by destination order by destination"#,
    )
    .fetch_all(pool)
    .await?;
    let payouts_in_flight =
        sqlx::query_scalar!(r#"select count(*) as "count!" from transfers where kind = 'payout' and status = 'held'"#)
            .fetch_one(pool)
            .await?;
    // From the refusals (a partial index), each checked for a settlement.
    let payout_conflicts = sqlx::query_scalar!(
        r#"select count(*) as "count!" from payout_outcomes rejected
           where rejected.result = 'rejected'
             and exists (select 1 from payout_outcomes settled
                         where settled.payment_id = rejected.payment_id and settled.result = 'settled')"#
    )
    .fetch_one(pool)
    .await?;
    Ok(Snapshot {
        at: Utc::now(),
        applied_per_s_tenths: recent.applied * 10 / RATE_WINDOW_S,
        rejected_per_s_tenths: recent.rejected * 10 / RATE_WINDOW_S,
        decision_p50_ms: recent.p50_ms,
        decision_p99_ms: recent.p99_ms,
        processors,
        partitions,
        outbox,
        payouts_in_flight,
        payout_conflicts,
        series,
    })
}

/// The buckets from the one holding `since` on (whole buckets: the lower
/// bound is rounded down to a bucket's start).
async fn series_since(state: &AppState, since: DateTime<Utc>) -> Result<Vec<Bucket>, ApiError> {
    Ok(sqlx::query_as!(
        Bucket,
        r#"select date_bin(make_interval(secs => $2::bigint::double precision), decided_at, timestamptz '2000-01-01')
                      as "at!",
                  count(*) filter (where status <> 'rejected') as "applied!",
                  count(*) filter (where status = 'rejected') as "rejected!",
                  (extract(epoch from percentile_disc(0.99) within group (order by decided_at - requested_at))
                      * 1000)::bigint as p99_ms
           from transfers
           where decided_at >= date_bin(make_interval(secs => $2::bigint::double precision), $1, timestamptz '2000-01-01')
           group by 1 order by 1"#,
        since,
        BUCKET_S,
    )
    .fetch_all(&state.pool)
    .await?)
}

/// Microseconds as milliseconds with one decimal, exactly.
fn millis(micros: i64) -> String {
    format!("{}.{}", micros / 1000, (micros % 1000) / 100)
}

/// Tenths as a decimal with one place.
fn tenths(value: i64) -> String {
    format!("{}.{}", value / 10, value % 10)
}

/// The overview page (anyone who may read the ledger).
pub(crate) async fn page(State(state): State<AppState>, staff: Staff) -> Response {
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    let snapshot = match state.dashboard_overview.snapshot(&state).await {
        Ok(snapshot) => snapshot,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    page::shell(&staff, "/admin", "Overview", &body(&snapshot))
}

fn body(snapshot: &Snapshot) -> Markup {
    let dash = || "—".to_owned();
    html! {
        p.muted { "Live: updated every second. " span #updated data-live="off" { "As of " (page::time(snapshot.at)) " UTC" } }
        section.cards {
            div.card { h2 { "Applied / s" } p.figure #applied { (tenths(snapshot.applied_per_s_tenths)) } p.muted { "last 10 s" } }
            div.card { h2 { "Rejected / s" } p.figure #rejected { (tenths(snapshot.rejected_per_s_tenths)) } p.muted { "last 10 s" } }
            div.card {
                h2 { "Decision latency" }
                p.figure { span #p50 { (snapshot.decision_p50_ms.map_or_else(dash, |ms| ms.to_string())) } " / " span #p99 { (snapshot.decision_p99_ms.map_or_else(dash, |ms| ms.to_string())) } " ms" }
                p.muted { "p50 / p99, requested → decided, last 10 s" }
            }
            div.card { h2 { "Payouts in flight" } p.figure #payouts { (snapshot.payouts_in_flight) } p.muted { "held, waiting for the provider" } }
            div #conflicts-card class=(if snapshot.payout_conflicts > 0 { "card alert" } else { "card" }) {
                h2 { "Payout conflicts" } p.figure #conflicts { (snapshot.payout_conflicts) } p.muted { "provider outcomes against the ledger; each needs a person" }
            }
        }
        section {
            h2 { "Throughput and latency, last 15 minutes" }
            figure.chart {
                svg #chart viewBox="0 0 900 200" preserveAspectRatio="none" role="img" aria-label="Transfers decided per 10 seconds and their p99 decision latency" {}
                figcaption { span.key.applied { "applied / 10 s" } " " span.key.rejected { "rejected / 10 s" } " " span.key.latency { "p99 latency (right scale)" } " " span #chart-scale.muted {} }
            }
            @if snapshot.series.is_empty() { p.empty #chart-empty { "Nothing decided in the last 15 minutes." } }
        }
        div.columns {
            section {
                h2 { "Processors" }
                table #processors {
                    thead { tr { th { "Instance" } th.num { "Commit p50 (ms)" } th.num { "Commit p99 (ms)" } th.num { "Commands" } th { "Seen" } } }
                    tbody {
                        @for processor in &snapshot.processors {
                            tr { td { code { (processor.id) } } td.num { (processor.commit_p50_ms.clone().unwrap_or_else(dash)) } td.num { (processor.commit_p99_ms.clone().unwrap_or_else(dash)) } td.num { (processor.commands_total) } td { (page::time(processor.observed_at)) } }
                        }
                        @if snapshot.processors.is_empty() { tr.empty { td colspan="5" { "No processor reported in the last 30 s." } } }
                    }
                }
                h2 { "Consumer lag" }
                table #partitions {
                    thead { tr { th.num { "Partition" } th.num { "Lag (commands)" } th { "State" } } }
                    tbody {
                        @for partition in &snapshot.partitions {
                            tr class=[partition.stopped.then_some("alert")] { td.num { (partition.partition) } td.num { (partition.lag) } td { @if partition.stopped { "stopped" } @else { "consuming" } } }
                        }
                        @if snapshot.partitions.is_empty() { tr.empty { td colspan="3" { "No partition seen yet." } } }
                    }
                }
            }
            section {
                h2 { "Outbox" }
                table #outbox {
                    thead { tr { th { "Destination" } th.num { "Backlog" } th.num { "Dead" } } }
                    tbody {
                        @for row in &snapshot.outbox {
                            tr class=[(row.dead > 0).then_some("alert")] { td { (row.destination) } td.num { (row.pending) } td.num { (row.dead) } }
                        }
                        @if snapshot.outbox.is_empty() { tr.empty { td colspan="3" { "Nothing waiting: every row is delivered." } } }
                    }
                }
            }
        }
        div #snapshot hidden data-snapshot=(serde_json::to_string(snapshot).unwrap_or_default()) {}
    }
}

/// The live stream: a snapshot every second, for [`STREAM_DURATION_MAX_S`]
/// or until the session would go idle, whichever comes first; then it ends
/// and the browser reconnects (and the session is checked again, without
/// counting as use).
pub(crate) async fn stream(State(state): State<AppState>, watching: Watching) -> Response {
    let staff = watching.staff;
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    // Watching is not use: the stream ends when the session would go idle,
    // so an unattended tab signs itself out.
    let until_idle = (watching.idle_deadline - Utc::now()).to_std().unwrap_or_default();
    let ends = Instant::now() + Duration::from_secs(STREAM_DURATION_MAX_S).min(until_idle);
    let ticks = tokio::time::interval(Duration::from_millis(STREAM_INTERVAL_MS));
    let events = futures::stream::unfold((state, ticks), move |(state, mut ticks)| async move {
        ticks.tick().await;
        if Instant::now() >= ends {
            return None;
        }
        let event = match state.dashboard_overview.snapshot(&state).await {
            Ok(snapshot) => Event::default().event("snapshot").json_data(&*snapshot).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(error = %error, "the overview snapshot failed");
                Event::default().event("unavailable").data("the overview could not be read; retrying")
            }
        };
        Some((Ok::<_, Infallible>(event), (state, ticks)))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_exact_decimals() {
        assert_eq!(millis(12_345), "12.3");
        assert_eq!(millis(999), "0.9");
        assert_eq!(tenths(125), "12.5");
        assert_eq!(tenths(3), "0.3");
    }
}
