// Ledgerline staff dashboard: the overview's live updates. No inline script
// anywhere (the Content-Security-Policy forbids it); this file is all.
"use strict";

(function () {
  const holder = document.getElementById("snapshot");
  if (!holder) return;

  const text = (id, value) => {
    const element = document.getElementById(id);
    if (element) element.textContent = value;
  };
  const tenths = (value) => `${Math.trunc(value / 10)}.${Math.abs(value % 10)}`;
  const dash = (value) => (value === null || value === undefined ? "—" : String(value));
  const time = (iso) => iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", "").replace("+00:00", "");

  function rows(tableId, items, cells, empty, alert) {
    const body = document.querySelector(`#${tableId} tbody`);
    if (!body) return;
    body.replaceChildren();
    if (items.length === 0) {
      const row = body.insertRow();
      row.className = "empty";
      const cell = row.insertCell();
      cell.colSpan = body.parentElement.querySelectorAll("thead th").length;
      cell.textContent = empty;
      return;
    }
    for (const item of items) {
      const row = body.insertRow();
      if (alert && alert(item)) row.className = "alert";
      for (const [value, numeric] of cells(item)) {
        const cell = row.insertCell();
        if (numeric) cell.className = "num";
        cell.textContent = value;
      }
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function chart(all) {
    const svg = document.getElementById("chart");
    if (!svg) return;
    svg.replaceChildren();
    const width = 900, height = 200, span = 15 * 60 * 1000, end = Date.now();
    // The bucket still filling would read as a drop: only whole ones.
    const series = all.filter((b) => Date.parse(b.at) + 10000 <= end);
    for (let i = 1; i < 4; i++) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("class", "grid");
      line.setAttribute("x1", 0); line.setAttribute("x2", width);
      line.setAttribute("y1", (height * i) / 4); line.setAttribute("y2", (height * i) / 4);
      svg.appendChild(line);
    }
    const top = Math.max(1, ...series.map((b) => b.applied + b.rejected));
    const slowest = Math.max(1, ...series.map((b) => b.p99_ms || 0));
    const x = (at) => ((Date.parse(at) - (end - span)) / span) * width;
    // Ten-second buckets as bars (applied, rejected stacked on top); the
    // p99 decision latency as a line on its own scale.
    const bar = width / 90;
    for (const b of series) {
      const applied = (b.applied / top) * (height - 8), rejected = (b.rejected / top) * (height - 8);
      for (const [cls, y, h] of [["applied", height - applied, applied], ["rejected", height - applied - rejected, rejected]]) {
        if (h <= 0) continue;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("class", cls);
        rect.setAttribute("x", (x(b.at)).toFixed(1));
        rect.setAttribute("width", Math.max(1, bar - 1).toFixed(1));
        rect.setAttribute("y", y.toFixed(1));
        rect.setAttribute("height", h.toFixed(1));
        svg.appendChild(rect);
      }
    }
    // One line per run of consecutive buckets: a quiet stretch is a gap,
    // not a slope.
    let run = [], previous = null;
    const flush = () => {
      if (run.length === 0) return;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", "latency");
      line.setAttribute("points", run.length === 1 ? `${run[0]} ${run[0]}` : run.join(" "));
      svg.appendChild(line);
      run = [];
    };
    for (const b of series) {
      const at = Date.parse(b.at);
      if (previous !== null && at - previous > 10000) flush();
      run.push(`${(x(b.at) + bar / 2).toFixed(1)},${(height - ((b.p99_ms || 0) / slowest) * (height - 8)).toFixed(1)}`);
      previous = at;
    }
    flush();
    text("chart-scale", `top: ${top} per 10 s, ${slowest} ms`);
    const empty = document.getElementById("chart-empty");
    if (empty) empty.hidden = series.length > 0;
  }

  function show(snapshot) {
    text("applied", tenths(snapshot.applied_per_s_tenths));
    text("rejected", tenths(snapshot.rejected_per_s_tenths));
    text("p50", dash(snapshot.decision_p50_ms));
    text("p99", dash(snapshot.decision_p99_ms));
    text("payouts", String(snapshot.payouts_in_flight));
    text("conflicts", String(snapshot.payout_conflicts));
    const card = document.getElementById("conflicts-card");
    if (card) card.className = snapshot.payout_conflicts > 0 ? "card alert" : "card";
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = `As of ${time(snapshot.at)} UTC`;
    rows("processors", snapshot.processors,
      (p) => [[p.id], [dash(p.commit_p50_ms), true], [dash(p.commit_p99_ms), true], [String(p.commands_total), true], [time(p.observed_at)]],
      "No processor reported in the last 30 s.");
    rows("partitions", snapshot.partitions,
      (p) => [[String(p.partition), true], [String(p.lag), true], [p.stopped ? "stopped" : "consuming"]],
      "No partition seen yet.", (p) => p.stopped);
    rows("outbox", snapshot.outbox,
      (o) => [[o.destination], [String(o.pending), true], [String(o.dead), true]],
      "Nothing waiting: every row is delivered.", (o) => o.dead > 0);
    chart(snapshot.series);
  }

  try { show(JSON.parse(holder.dataset.snapshot)); } catch (error) { /* the server-rendered figures stay */ }

  const live = document.getElementById("updated");
  const source = new EventSource("/admin/overview/stream");
  source.addEventListener("snapshot", (event) => {
    show(JSON.parse(event.data));
    if (live) live.dataset.live = "on";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.addEventListener("unavailable", () => { if (live) live.dataset.live = "off"; });
  source.onerror = () => { if (live) live.dataset.live = "off"; };
})();
