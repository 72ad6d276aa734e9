//! The load's report: a terminal table, one JSON object (`--json`), and a
//! self-contained HTML page (`--report`) whose charts are SVG drawn here, so
//! the file opens anywhere without a network or a script.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

use super::LoadConfig;

/// A run's figures. Latencies are milliseconds, `None` without samples;
/// end to end runs from when a request was due to when its decision was
/// read from `ledger.events`, HTTP from when it was due to its answer (with
/// `--direct`, to the broker's acknowledgement), and
/// `decision_*` to the processor's own decision time in the event.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub parameters: LoadConfig,
    pub offered: u64,
    pub offered_per_s: f64,
    /// Sent (offered less those refused for the in-flight limit).
    pub sent: u64,
    /// Answered 202.
    pub accepted: u64,
    /// Accepted per second of the sending window.
    pub achieved_per_s: f64,
    pub sending_s: f64,
    /// Accepted whose decision was read.
    pub decided: u64,
    /// Accepted whose decision was not read within the drain timeout.
    pub undecided: u64,
    /// From the end of sending to the last decision read; `None` when some
    /// were never read.
    pub backlog_drained_ms: Option<f64>,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// `completed`, `rejected: <reason>`.
    pub decisions: BTreeMap<String, u64>,
    /// Decision events read again (the relay delivers at least once).
    pub duplicate_events: u64,
    pub http_p50_ms: Option<f64>,
    pub http_p90_ms: Option<f64>,
    pub http_p99_ms: Option<f64>,
    pub http_p999_ms: Option<f64>,
    pub http_max_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p90_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub e2e_p999_ms: Option<f64>,
    pub e2e_max_ms: Option<f64>,
    pub decision_p50_ms: Option<f64>,
    pub decision_p99_ms: Option<f64>,
    pub decision_max_ms: Option<f64>,
    /// The audit (see [`super::Audit`]).
    pub applied: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unanswered_applied: u64,
    pub applied_unaccepted: u64,
    pub invariants_ok: bool,
    pub problems: Vec<String>,
    pub audit_ok: bool,
    pub timeline: Vec<SecondReport>,
}

/// One second of the run: offered, errors and latencies by when requests
/// were due; accepted by when answered; decided by when read.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    pub second: u64,
    pub offered: u64,
    pub accepted: u64,
    pub decided: u64,
    pub errors: u64,
    pub http_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub e2e_max_ms: Option<f64>,
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"))
}

impl LoadReport {
    /// The summary rows shared by the terminal and the HTML table.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("offered".to_owned(), format!("{} ({:.1}/s)", self.offered, self.offered_per_s)),
            ("accepted (202)".to_owned(), format!("{} ({:.1}/s achieved)", self.accepted, self.achieved_per_s)),
            ("decided / undecided".to_owned(), format!("{} / {}", self.decided, self.undecided)),
            (
                "backlog drained".to_owned(),
                self.backlog_drained_ms
                    .map_or_else(|| "not drained".to_owned(), |ms| format!("{ms:.0} ms after sending")),
            ),
            ("errors".to_owned(), self.errors.to_string()),
        ];
        for (kind, count) in &self.errors_by_kind {
            rows.push((format!("  error {kind}"), count.to_string()));
        }
        for (outcome, count) in &self.decisions {
            rows.push((format!("  decision {outcome}"), count.to_string()));
        }
        rows.extend([
            ("audit: applied".to_owned(), self.applied.to_string()),
            ("audit: lost".to_owned(), self.lost.to_string()),
            ("audit: duplicated".to_owned(), self.duplicated.to_string()),
            ("audit: applied, not accepted".to_owned(), self.applied_unaccepted.to_string()),
            ("audit: unanswered, applied".to_owned(), self.unanswered_applied.to_string()),
            ("audit: ledger invariants".to_owned(), if self.invariants_ok { "ok" } else { "VIOLATED" }.to_owned()),
            ("audit".to_owned(), if self.audit_ok { "PASSED" } else { "FAILED" }.to_owned()),
        ]);
        rows
    }

    fn latency_rows(&self) -> [(&'static str, [Option<f64>; 5]); 3] {
        [
            ("end to end", [self.e2e_p50_ms, self.e2e_p90_ms, self.e2e_p99_ms, self.e2e_p999_ms, self.e2e_max_ms]),
            (
                if self.parameters.direct { "Kafka ack (http_*)" } else { "HTTP answer" },
                [self.http_p50_ms, self.http_p90_ms, self.http_p99_ms, self.http_p999_ms, self.http_max_ms],
            ),
            ("processor decision", [self.decision_p50_ms, None, self.decision_p99_ms, None, self.decision_max_ms]),
        ]
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parameters = &self.parameters;
        writeln!(
            formatter,
            "load: {} req/s for {} s against {}, {} accounts, hot share {}, seed {}",
            parameters.rate_per_s,
            parameters.duration_s,
            parameters.base_url,
            parameters.accounts,
            parameters.hot_share,
            parameters.seed
        )?;
        for (name, value) in self.rows() {
            writeln!(formatter, "  {name:<32} {value}")?;
        }
        writeln!(formatter, "  latency (ms, from when due)        p50      p90      p99    p99.9      max")?;
        for (name, values) in self.latency_rows() {
            write!(formatter, "  {name:<32}")?;
            for value in values {
                write!(formatter, " {:>8}", millis(value))?;
            }
            writeln!(formatter)?;
        }
        for problem in &self.problems {
            writeln!(formatter, "  VIOLATION {problem}")?;
        }
        Ok(())
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line chart: one polyline per series over the seconds of the run.
fn line_chart(title: &str, unit: &str, series: &[(&str, &str, Vec<Option<f64>>)]) -> String {
    const WIDTH: f64 = 760.0;
    const HEIGHT: f64 = 260.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 40.0;
    let points = series.iter().map(|(_, _, values)| values.len()).max().unwrap_or(0).max(2);
    let highest = series.iter().flat_map(|(_, _, values)| values.iter().flatten().copied()).fold(0.0_f64, f64::max);
    let top = nice_ceiling(highest);
    let x = |index: usize| LEFT + (WIDTH - LEFT - RIGHT) * index as f64 / (points - 1) as f64;
    let y = |value: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - value / top);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><title>{}</title><text x="{LEFT}" y="18" class="title">{}</text>"#,
        escape(title),
        escape(title)
    );
    for step in 0..=4 {
        let value = top * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="axis" text-anchor="end">{value:.0}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(value) + 4.0,
            y = y(value),
        );
    }
    let ticks = (points / 10).max(1);
    for index in (0..points).step_by(ticks) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" class="axis" text-anchor="middle">{index}</text>"#,
            x(index),
            HEIGHT - BOTTOM + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="middle">seconds since start</text><text x="14" y="{}" class="axis" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        (WIDTH + LEFT) / 2.0,
        HEIGHT - 6.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        escape(unit)
    );
    for (position, (name, color, values)) in series.iter().enumerate() {
        let path: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(index, value)| value.map(|value| format!("{:.1},{:.1}", x(index), y(value))))
            .collect();
        // A max often sits on the p99 at low rates: dashed, so both show.
        let dash = if name.contains("max") { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        let legend_x = LEFT + 10.0 + 150.0 * position as f64;
        let _ = write!(
            svg,
            r#"<rect x="{legend_x}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}" class="axis">{}</text>"#,
            TOP + 2.0,
            legend_x + 16.0,
            TOP + 6.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The next round number at or above `value`, for an axis.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

/// The report as one self-contained HTML page.
#[must_use]
pub fn html_report(report: &LoadReport) -> String {
    let count = |pick: fn(&super::SecondReport) -> u64| -> Vec<Option<f64>> {
        report.timeline.iter().map(|second| Some(pick(second) as f64)).collect()
    };
    let latency = |pick: fn(&super::SecondReport) -> Option<f64>| -> Vec<Option<f64>> {
        report.timeline.iter().map(pick).collect()
    };
    let throughput = line_chart(
        "Throughput per second",
        "requests / s",
        &[
            ("offered", "#1f77b4", count(|second| second.offered)),
            ("accepted (202)", "#2ca02c", count(|second| second.accepted)),
            ("decided", "#9467bd", count(|second| second.decided)),
            ("errors", "#d62728", count(|second| second.errors)),
        ],
    );
    let latencies = line_chart(
        "Latency by second due",
        "milliseconds",
        &[
            ("e2e p50", "#2ca02c", latency(|second| second.e2e_p50_ms)),
            ("e2e p99", "#ff7f0e", latency(|second| second.e2e_p99_ms)),
            ("e2e max", "#d62728", latency(|second| second.e2e_max_ms)),
            ("HTTP p99", "#1f77b4", latency(|second| second.http_p99_ms)),
        ],
    );
    let parameters = &report.parameters;
    let parameter_rows = [
        ("base URL", parameters.base_url.clone()),
        ("rate", format!("{} / s", parameters.rate_per_s)),
        ("duration", format!("{} s", parameters.duration_s)),
        ("connections", parameters.connections.to_string()),
        ("accounts", parameters.accounts.to_string()),
        ("hot share", parameters.hot_share.to_string()),
        ("currency", parameters.currency.clone()),
        ("seed", parameters.seed.to_string()),
        ("in-flight limit", parameters.in_flight_max.to_string()),
        ("request timeout", format!("{} ms", parameters.request_timeout_ms)),
        ("drain timeout", format!("{} ms", parameters.drain_timeout_ms)),
    ];
    let mut html = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ledgerctl load report</title><style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1600px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:14px;margin-right:24px;vertical-align:top}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{border:1px solid #ddd;background:#fff}.grid{stroke:#eee}.axis{font-size:11px;fill:#555}.title{font-size:14px;font-weight:600}
.ok{color:#2ca02c;font-weight:600}.bad{color:#d62728;font-weight:600}
</style></head><body><h1>ledgerctl load</h1>"#,
    );
    let _ = write!(
        html,
        r#"<p>Audit: <span class="{}">{}</span> · offered {:.1}/s · achieved {:.1}/s · e2e p99 {} ms · HTTP p99 {} ms</p>"#,
        if report.audit_ok { "ok" } else { "bad" },
        if report.audit_ok { "PASSED" } else { "FAILED" },
        report.offered_per_s,
        report.achieved_per_s,
        millis(report.e2e_p99_ms),
        millis(report.http_p99_ms),
    );
    let _ = write!(html, r#"<div class="charts">{throughput}{latencies}</div><div class="tables">"#);
    html.push_str("<div><h2>Parameters</h2><table>");
    for (name, value) in parameter_rows {
        let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(&value));
    }
    html.push_str("</table></div><div><h2>Results</h2><table>");
    for (name, value) in report.rows() {
        let _ = write!(html, r#"<tr><th>{}</th><td class="n">{}</td></tr>"#, escape(name.trim()), escape(&value));
    }
    html.push_str("</table></div><div><h2>Latency (ms, from when due)</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, values) in report.latency_rows() {
        let _ = write!(html, "<tr><th>{name}</th>");
        for value in values {
            let _ = write!(html, r#"<td class="n">{}</td>"#, millis(value));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    for problem in &report.problems {
        let _ = write!(html, r#"<p class="bad">VIOLATION {}</p>"#, escape(problem));
    }
    html.push_str("</div></div></body></html>\n");
    html
}
