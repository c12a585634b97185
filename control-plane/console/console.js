// lanemesh console: polls /api/overview and draws it (uPlot for the charts).
"use strict";

const REFRESH_MS = 2000;
const charts = {};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, empty)));
  }
  for (const row of rows) tbody.append(row);
}

// series: name -> array of values aligned with xs (seconds).
function chart(id, xs, series) {
  const figure = document.getElementById(id);
  const names = Object.keys(series).sort();
  const data = [xs, ...names.map((n) => series[n])];
  let max = 0;
  for (const n of names) for (const v of series[n]) if (v > max) max = v;
  figure.dataset.series = names.join(",");
  figure.dataset.points = String(xs.length);
  figure.dataset.max = String(max);
  const key = names.join("\u0000");
  const existing = charts[id];
  if (existing && existing.key === key) {
    existing.plot.setData(data);
    return;
  }
  if (existing) existing.plot.destroy();
  const palette = ["#2f6fde", "#d94a38", "#2a9d5b", "#b7791f", "#7b4bd6", "#1f9bb4", "#c2417a", "#5a6270"];
  const opts = {
    width: 460,
    height: 220,
    scales: { x: { time: true } },
    axes: [{}, { label: "per second" }],
    series: [{}, ...names.map((n, i) => ({ label: n === "" ? "base" : n.endsWith("/") ? `${n}base` : n, stroke: palette[i % palette.length], width: 1.5 }))],
  };
  charts[id] = { key, plot: new uPlot(opts, data, figure) };
}

function laneRows(overview) {
  const groups = overview.lanes.laneGroups || [];
  const rows = [];
  for (const lane of overview.lanes.lanes || []) {
    const ns = lane.metadata.namespace || "default";
    const group = groups.find((g) => (g.metadata.namespace || "default") === ns && g.metadata.name === lane.spec.group);
    const mode = group ? group.spec.routingMode || "Content" : "-";
    const status = lane.status || {};
    const accepted = (status.conditions || []).find((c) => c.type === "Accepted");
    const matched = Object.entries(status.matchedPods || {}).map(([app, n]) => `${app}=${n}`).join(", ") || "-";
    const enabled = lane.spec.enabled !== false;
    const tr = el("tr", { "data-lane": `${ns}/${lane.metadata.name}`, "data-enabled": String(enabled) },
      el("td", {}, ns), el("td", {}, lane.spec.group), el("td", {}, mode), el("td", {}, lane.metadata.name),
      el("td", {}, lane.spec.tag), el("td", { class: `enabled-${enabled}` }, String(enabled)),
      el("td", {}, mode === "Percentage" ? `${lane.spec.weight || 0}%` : "-"),
      el("td", {}, accepted ? accepted.status : "Unknown"), el("td", {}, matched));
    const action = el("td", {});
    if (overview.writes) {
      const button = el("button", { "data-action": enabled ? "disable" : "enable" }, enabled ? "Disable" : "Enable");
      button.addEventListener("click", () => switchLane(ns, lane.metadata.name, !enabled, button));
      action.append(button);
    }
    tr.append(action);
    rows.push(tr);
  }
  return rows;
}

async function switchLane(ns, name, enabled, button) {
  button.disabled = true;
  const response = await fetch(`/api/lanes/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ enabled }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    document.getElementById("status").textContent = `switching ${ns}/${name}: ${body.error || response.status}`;
  }
  await refresh();
}

function render(overview) {
  const traffic = overview.traffic || { points: [], breakers: [] };
  const points = traffic.points || [];
  document.getElementById("status").textContent = traffic.enabled
    ? `${overview.ready ? "ready" : "not ready"} · ${traffic.pods_scraped} pods scraped every ${traffic.interval_seconds}s` +
      (traffic.pods_failed ? ` · ${traffic.pods_failed} failed` : "") + (overview.writes ? " · lane switches on" : " · read-only")
    : "no traffic data: start the pilot with --scrape-interval";
  fill(document.querySelector("#lanes tbody"), laneRows(overview), 10, "no lanes");

  const xs = points.map((p) => p.at / 1000);
  const apps = new Set();
  const lanes = new Set();
  const rules = new Set();
  for (const p of points) {
    for (const [app, rates] of Object.entries(p.apps)) {
      apps.add(app);
      for (const lane of Object.keys(rates.lanes)) lanes.add(`${app}/${lane}`);
    }
    for (const r of p.rules) rules.add(`${r.rule} ${r.reason}`);
  }
  const per = (names, value) => {
    const out = {};
    for (const n of names) out[n] = points.map((p) => value(p, n));
    return out;
  };
  const app = (p, a) => p.apps[a] || { total: 0, errors: 0, gray: 0, lanes: {} };
  const lane = (p, key) => {
    const [a, ...rest] = key.split("/");
    return app(p, a).lanes[rest.join("/")] || { total: 0, errors: 0 };
  };
  chart("chart-total", xs, per(apps, (p, a) => app(p, a).total));
  chart("chart-errors", xs, per(apps, (p, a) => app(p, a).errors));
  chart("chart-gray", xs, per(apps, (p, a) => app(p, a).gray));
  chart("chart-lanes", xs, per(lanes, (p, k) => lane(p, k).total));
  chart("chart-lane-errors", xs, per(lanes, (p, k) => lane(p, k).errors));
  chart("chart-rules", xs, per(rules, (p, k) => {
    const hit = p.rules.find((r) => `${r.rule} ${r.reason}` === k);
    return hit ? hit.qps : 0;
  }));

  fill(document.querySelector("#breakers tbody"),
    (traffic.breakers || []).map((b) => el("tr", {}, el("td", {}, b.app), el("td", {}, b.rule), el("td", {}, b.state))),
    3, "no breakers");
  const transitions = {};
  for (const p of points) for (const t of p.transitions) {
    const key = `${t.app}\u0000${t.rule}\u0000${t.to}`;
    transitions[key] = (transitions[key] || 0) + t.count;
  }
  fill(document.querySelector("#transitions tbody"),
    Object.entries(transitions).map(([k, n]) => el("tr", {}, ...k.split("\u0000").map((v) => el("td", {}, v)), el("td", {}, n))),
    4, "none");
  fill(document.querySelector("#refused tbody"),
    (overview.refused || []).map((r) => el("tr", {}, el("td", {}, r.object), el("td", {}, r.message))),
    2, "none");
  document.body.dataset.loaded = "true";
}

async function refresh() {
  try {
    const response = await fetch("/api/overview", { cache: "no-store" });
    render(await response.json());
  } catch (e) {
    document.getElementById("status").textContent = `pilot unreachable: ${e}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
