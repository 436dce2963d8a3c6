// The admin dashboard's live chart: three panels over the last five minutes on one time
// axis, drawn as inline SVG into svg#chart from the figures admin.js fetches from
// /admin/api/live (it dispatches them as a "live-figures" event on section#live).
//  1. purchase and token requests per second, stacked by outcome (accepted, sold out,
//     throttled, refused, errors);
//  2. the queue: enqueued/s and drained/s (left axis) and the backlog (right axis);
//  3. the purchase route's p50 and p99 latency, ms.
// Every panel has its axes, nice ticks, gridlines and a legend; times are the browser's
// local clock. The window is the history there is, from one minute up to five. What is plotted is kept in window.liveChart (and each series' path carries
// data-series and data-points) so that tests and curious operators can read it.
// Plain JavaScript, no dependencies.
"use strict";
(function () {
  const live = document.getElementById("live");
  const svg = document.getElementById("chart");
  if (!live || !svg) return;

  const NS = "http://www.w3.org/2000/svg";
  const SPAN_MS = 300 * 1000;           // five minutes, as the server keeps
  const SPAN_MIN_MS = 60 * 1000;        // the narrowest window: a fresh gateway's minute
  const POINTS_MAX = 600;               // a bound on what is kept here
  const W = 960, LEFT = 64, RIGHT = 72, TOP = 28, PANEL_H = 150, GAP = 58, AXIS_H = 24;
  const PLOT_W = W - LEFT - RIGHT;
  const OUTCOMES = [
    ["accepted", "accepted", "#1f9d55"],
    ["sold_out", "sold out", "#8a8f98"],
    ["throttled", "throttled", "#e0a100"],
    ["refused", "refused", "#d9480f"],
    ["errors", "errors", "#b00020"],
  ];
  const PANELS = [
    { id: "requests", title: "Purchase requests/s by outcome (this gateway)", unit: "requests/s" },
    { id: "queue", title: "Queue: enqueued vs drained (all gateways), backlog", unit: "per second", right: "backlog (messages)" },
    { id: "latency", title: "Purchase latency (this gateway)", unit: "ms" },
  ];
  const H = TOP + PANELS.length * (PANEL_H + GAP);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  svg.style.height = "auto";

  let points = [];
  const chart = { points, series: {}, axes: {}, span_ms: SPAN_MS, draws: 0 };
  window.liveChart = chart;

  function el(name, attrs, parent, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    if (parent) parent.append(e);
    return e;
  }

  // Ticks at 1, 2 or 5 × 10^k covering 0..max with about `count` steps. A count (integer)
  // axis steps by whole numbers and spans at least 0..5, so a small backlog reads 0, 1, 2…
  function niceTicks(max, count, integer) {
    if (!(max > 0)) max = 0;
    max *= 1.05;                        // a little headroom above the highest point
    if (integer) max = Math.max(max, 5);
    else if (max === 0) max = 1;
    let raw = max / count;
    if (integer) raw = Math.max(raw, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const top = Math.ceil(max / step - 1e-9) * step;
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
    return { top, ticks, step };
  }

  function label(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    if (a >= 10 || v === 0) return String(Math.round(v));
    return String(+v.toPrecision(2));
  }

  const pad = (n) => String(n).padStart(2, "0");
  const clock = (ms) => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };

  function draw(now) {
    svg.textContent = "";
    el("rect", { x: 0, y: 0, width: W, height: H, fill: "#fff" }, svg);
    // The window: the history there is, from one minute up to five, so a fresh gateway's
    // first seconds are not a sliver at the right edge.
    const first = points.length ? points[0].t_ms : now;
    const span = Math.min(SPAN_MS, Math.max(SPAN_MIN_MS, now - first));
    const t0 = now - span;
    const x = (t) => LEFT + ((t - t0) / span) * PLOT_W;
    const shown = points.filter((p) => p.t_ms >= t0);
    chart.series = {};
    chart.axes = {};
    PANELS.forEach((panel, i) => {
      const top = TOP + i * (PANEL_H + GAP);
      const g = el("g", { class: `panel panel-${panel.id}`, id: `chart-${panel.id}` }, svg);
      el("text", { x: LEFT, y: top - 10, "font-size": 14, "font-weight": 600, fill: "#222" }, g, panel.title);
      const series = seriesOf(panel.id, shown);
      const leftMax = Math.max(0, ...series.filter((s) => !s.right).map((s) => s.max));
      const yl = niceTicks(leftMax, 4);
      const y = (v) => top + PANEL_H - (v / yl.top) * PANEL_H;
      let yr = null, yR = null;
      if (panel.right) {
        yr = niceTicks(Math.max(0, ...series.filter((s) => s.right).map((s) => s.max)), 4, true);
        yR = (v) => top + PANEL_H - (v / yr.top) * PANEL_H;
      }
      // Gridlines and the value axes.
      const grid = el("g", { class: "grid", stroke: "#e6e6e6", "stroke-width": 1 }, g);
      const ylab = el("g", { class: "y-axis", "font-size": 11, fill: "#555", "text-anchor": "end" }, g);
      for (const v of yl.ticks) {
        el("line", { x1: LEFT, x2: LEFT + PLOT_W, y1: y(v), y2: y(v) }, grid);
        el("text", { x: LEFT - 6, y: y(v) + 4, class: "tick" }, ylab, label(v));
      }
      el("text", { x: 14, y: top + PANEL_H / 2, "font-size": 11, fill: "#555", "text-anchor": "middle",
                   transform: `rotate(-90 14 ${top + PANEL_H / 2})`, class: "axis-label" }, g, panel.unit);
      if (yr) {
        const rlab = el("g", { class: "y-axis-right", "font-size": 11, fill: "#4065d6", "text-anchor": "start" }, g);
        for (const v of yr.ticks) el("text", { x: LEFT + PLOT_W + 6, y: yR(v) + 4, class: "tick" }, rlab, label(v));
        const xr = W - 10;
        el("text", { x: xr, y: top + PANEL_H / 2, "font-size": 11, fill: "#4065d6", "text-anchor": "middle",
                     transform: `rotate(-90 ${xr} ${top + PANEL_H / 2})`, class: "axis-label axis-label-right" }, g, panel.right);
      }
      // The time axis: a tick and a gridline every 10 s, 30 s or minute (by the window),
      // labelled with the time.
      const xlab = el("g", { class: "x-axis", "font-size": 11, fill: "#555", "text-anchor": "middle" }, g);
      const step = span <= 90 * 1000 ? 10 * 1000 : span <= 180 * 1000 ? 30 * 1000 : 60 * 1000;
      for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
        el("line", { x1: x(t), x2: x(t), y1: top, y2: top + PANEL_H }, grid);
        el("text", { x: x(t), y: top + PANEL_H + 16, class: "tick" }, xlab, clock(t));
      }
      el("rect", { x: LEFT, y: top, width: PLOT_W, height: PANEL_H, fill: "none", stroke: "#bbb" }, g);
      chart.axes[panel.id] = { y_max: yl.top, y_ticks: yl.ticks, right_max: yr ? yr.top : null,
                               right_ticks: yr ? yr.ticks : null, x_from_ms: t0, x_to_ms: now, x_step_ms: step };
      // The series.
      const plot = el("g", { class: "series" }, g);
      for (const s of series) {
        const ys = s.right ? yR : y;
        const d = pathOf(s, x, ys);
        const attrs = { d, "data-series": s.key, "data-points": s.values.filter((v) => v[1] !== null).length,
                        class: `series-${s.key}` };
        if (s.fill) Object.assign(attrs, { fill: s.color, "fill-opacity": 0.85, stroke: "none" });
        else Object.assign(attrs, { fill: "none", stroke: s.color, "stroke-width": s.width || 2, "stroke-dasharray": s.dash || "none",
                                    "stroke-linejoin": "round", "stroke-opacity": s.width ? 0.6 : 1 });
        el("path", attrs, plot);
        // Markers, so that a lone reading (a gap either side) shows too.
        if (s.markers) {
          for (const [t, v] of s.values) {
            if (v === null || v === undefined || !Number.isFinite(Number(v))) continue;
            el("circle", { cx: x(t).toFixed(1), cy: ys(Number(v)).toFixed(1), r: 2.5, fill: s.color,
                           class: `marker marker-${s.key}` }, plot);
          }
        }
        chart.series[s.key] = s.values.map(([t, v]) => [t, v]);
      }
      // The legend, above the panel on the right, laid out by the texts' real widths.
      const legend = el("g", { class: "legend", "font-size": 12, fill: "#333" }, g);
      let lx = LEFT + PLOT_W;
      for (const s of [...series].reverse()) {
        const text = el("text", { x: 0, y: top - 11 }, legend, s.name);
        let w = 0;
        try { w = text.getComputedTextLength(); } catch (e) { w = 0; }
        if (!(w > 0)) w = s.name.length * 7;
        lx -= w + 30;
        text.setAttribute("x", String(lx + 18));
        el("rect", { x: lx, y: s.fill ? top - 20 : top - 16, width: 14, height: s.fill ? 10 : 3, fill: s.color }, legend);
      }
      if (shown.length < 2) {
        el("text", { x: LEFT + PLOT_W / 2, y: top + PANEL_H / 2, "text-anchor": "middle", "font-size": 13, fill: "#888" },
           g, "collecting figures…");
      }
    });
    chart.points = points;
    chart.draws += 1;
    svg.dataset.points = String(shown.length);
    svg.dataset.draws = String(chart.draws);
  }

  // The series of one panel: key, name, colour, [[t_ms, value|null]], and how to draw it.
  function seriesOf(panel, ps) {
    const out = [];
    const max = (vals) => vals.reduce((m, [, v]) => (v !== null && v > m ? v : m), 0);
    if (panel === "requests") {
      // Stacked: each outcome's band sits on the ones before it.
      const base = ps.map(() => 0);
      for (const [key, name, color] of OUTCOMES) {
        const values = ps.map((p) => [p.t_ms, Number((p.outcomes || {})[key] || 0)]);
        const lower = base.slice();
        values.forEach(([, v], i) => { base[i] += v; });
        out.push({ key, name, color, fill: true, values, lower, upper: base.slice(), max: Math.max(0, ...base) });
      }
    } else if (panel === "queue") {
      const enq = ps.map((p) => [p.t_ms, p.incoming]);
      const drn = ps.map((p) => [p.t_ms, p.drained]);
      const blg = ps.map((p) => [p.t_ms, p.backlog]);
      out.push({ key: "enqueued", name: "enqueued/s", color: "#7048e8", width: 4, values: enq, max: max(enq) });
      out.push({ key: "drained", name: "drained/s", color: "#1f9d55", values: drn, max: max(drn) });
      out.push({ key: "backlog", name: "backlog (right axis)", color: "#4065d6", dash: "5 3", right: true, values: blg, max: max(blg) });
    } else {
      const p50 = ps.map((p) => [p.t_ms, p.purchase_p50_ms ?? null]);
      const p99 = ps.map((p) => [p.t_ms, p.purchase_p99_ms ?? null]);
      out.push({ key: "p50", name: "p50", color: "#1971c2", markers: true, values: p50, max: max(p50) });
      out.push({ key: "p99", name: "p99", color: "#c2255c", markers: true, values: p99, max: max(p99) });
    }
    return out;
  }

  // A line through the points (a gap where a value is null), or a stacked band.
  function pathOf(s, x, y) {
    if (s.fill) {
      if (s.values.length === 0) return "";
      const upper = s.values.map(([t], i) => `${x(t).toFixed(1)},${y(s.upper[i]).toFixed(1)}`);
      const lower = s.values.map(([t], i) => `${x(t).toFixed(1)},${y(s.lower[i]).toFixed(1)}`).reverse();
      return `M${upper.join(" L")} L${lower.join(" L")} Z`;
    }
    let d = "", pen = false;
    for (const [t, v] of s.values) {
      if (v === null || v === undefined || !Number.isFinite(Number(v))) { pen = false; continue; }
      d += `${pen ? " L" : " M"}${x(t).toFixed(1)},${y(Number(v)).toFixed(1)}`;
      pen = true;
    }
    return d.trim();
  }

  live.addEventListener("live-figures", (e) => {
    const d = e.detail || {};
    const last = points.length ? points[points.length - 1].t_ms : 0;
    for (const p of d.history || []) if (p.t_ms > last) points.push(p);
    const cutoff = (d.now_ms || Date.now()) - SPAN_MS;
    points = points.filter((p) => p.t_ms >= cutoff).slice(-POINTS_MAX);
    draw(d.now_ms || Date.now());
  });
  draw(Date.now());
})();
