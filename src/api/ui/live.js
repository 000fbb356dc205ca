// The live view: the RAM budget with each loaded model's share (from /api/ps), queue depth,
// request and token rates and the cache hit rate (from /api/metrics, sampled every 2 s while
// the page is open, the rates from the difference between samples); charts of the last ten
// minutes (requests and tokens from the server's own ten-second buckets, queue depth as this
// page sampled it); and, when routes exist, each route's targets with their traffic, latency,
// errors, breaker and feedback (from /api/routes).
import { $, getJson, el, bytes } from "./app.js";

const PERIOD_MS = 2000;
const KEEP = 300;
const COLORS = ["#c8552a", "#2a7fc8", "#3a9a5b", "#a34fc2", "#c89a2a", "#2ab0b0"];

/** Totals the rates are differences of: requests that named a model (not this page's own
 * polling, labelled "none"), generated tokens. */
function totals(m) {
  const requests = (m.requests || []).filter((r) => r.model && r.model !== "none").reduce((n, r) => n + r.count, 0);
  const tokens = Object.values(m.generation || {}).reduce((n, g) => n + (g.generated_tokens || 0), 0);
  return { requests, tokens };
}

/** A line over `slots` places, the newest value at the right edge. */
function chart(id, values, slots) {
  const svg = $(id);
  const max = Math.max(1, ...values);
  const step = 300 / Math.max(1, slots - 1);
  // One value is a dot's worth of line.
  if (values.length === 1) values = [values[0], values[0]];
  const offset = slots - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(78 - (v / max) * 74).toFixed(1)}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.replaceChildren(line);
  svg.dataset.max = String(max);
}

/** The server's ten-second buckets, the current (still filling) one last. */
function buckets(recent, key) {
  return recent?.[key] || [];
}

export function initLive() {
  // Queue depth as this page sampled it, oldest first.
  const queues = [];
  let last = null;

  function ram(ps) {
    const bar = $("ram-bar");
    const budget = ps.ram_budget || 0;
    bar.dataset.budget = String(budget);
    bar.dataset.used = String(ps.ram_used || 0);
    const models = ps.models || [];
    // Sizes and colours through the CSSOM: the page's policy allows no style attributes.
    const painted = (node, i, width) => {
      node.style.background = COLORS[i % COLORS.length];
      if (width !== undefined) node.style.width = width;
      return node;
    };
    bar.replaceChildren(...models.map((m, i) => painted(el("span", { "data-model": m.name, "data-bytes": String(m.size), title: `${m.name}: ${bytes(m.size)}` }),
      i, `${budget ? (100 * m.size / budget).toFixed(3) : 0}%`)));
    $("ram-legend").replaceChildren(...models.map((m, i) => el("span", {}, painted(el("i"), i), `${m.name} ${bytes(m.size)}`)));
    $("ram-text").textContent = `${bytes(ps.ram_used)} of ${bytes(budget)} (${budget ? (100 * ps.ram_used / budget).toFixed(1) : 0}%)`;
  }

  function routes(view) {
    const list = view.routes || [];
    $("routes-box").hidden = list.length === 0;
    const rows = [];
    for (const r of list) {
      for (const t of r.targets) {
        const fb = t.feedback || {};
        rows.push(el("tr", { "data-route": r.name, "data-target": t.name },
          el("td", { text: `${r.name} (${r.strategy})` }), el("td", { text: t.model }), el("td", { text: t.weight ?? "-" }),
          el("td", { class: "requests", text: t.requests }), el("td", { text: t.errors }),
          el("td", { text: t.latency_ms?.p50?.toFixed(0) ?? "-" }), el("td", { text: t.latency_ms?.p95?.toFixed(0) ?? "-" }),
          el("td", { text: t.breaker }),
          el("td", { text: fb.count ? `${fb.count} (mean ${fb.mean_score?.toFixed(2) ?? "-"})` : "-" })));
      }
    }
    $("route-table").querySelector("tbody").replaceChildren(...rows);
  }

  async function sample() {
    if (document.hidden) return;
    try {
      const [ps, metrics] = await Promise.all([getJson("/api/ps"), getJson("/api/metrics")]);
      const now = performance.now();
      ram(ps);
      const t = totals(metrics);
      const queue = (metrics.models || []).reduce((n, m) => n + (m.queue_depth || 0), 0);
      $("live-loaded").textContent = String(metrics.loaded_models ?? (ps.models || []).length);
      $("live-queue").textContent = String(queue);
      $("live-requests").textContent = String(t.requests);
      const c = metrics.cache || {};
      const looked = (c.hit || 0) + (c.miss || 0);
      $("live-cache").textContent = looked ? `${(100 * c.hit / looked).toFixed(1)}%` : "-";
      $("live-cache").dataset.hit = String(c.hit || 0);
      $("live-cache").dataset.miss = String(c.miss || 0);
      if (last) {
        const dt = (now - last.at) / 1000;
        const rate = Math.max(0, (t.requests - last.requests) / dt);
        const tps = Math.max(0, (t.tokens - last.tokens) / dt);
        $("live-rate").textContent = rate.toFixed(2);
        $("live-tps").textContent = tps.toFixed(1);
      }
      queues.push(queue);
      if (queues.length > KEEP) queues.shift();
      last = { at: now, ...t };
      chart("chart-rate", buckets(metrics.recent, "requests"), 60);
      chart("chart-tps", buckets(metrics.recent, "generated_tokens"), 60);
      chart("chart-queue", queues, KEEP);
      $("live-error").hidden = true;
      routes(await getJson("/api/routes"));
    } catch (e) {
      $("live-error").textContent = e.message;
      $("live-error").hidden = false;
    }
  }

  sample();
  setInterval(sample, PERIOD_MS);
  return { shown: sample };
}
