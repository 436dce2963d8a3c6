// Flash sale admin dashboard: polls /admin/api/live every second and redraws the figures
// and the workers' heartbeats; the chart (chart.js) draws from the same figures, passed on
// as a "live-figures" event on section#live. Polls /admin/api/sales every two seconds and
// rebuilds the sales table with each sale's actions (pause, resume, end, edit, reconcile).
// Also turns the create and edit forms' local start time into ms. Plain JavaScript, no
// dependencies.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const live = $("live");
  // The create-sale form sends the browser's zone so "starts at" means local time.
  // The create-sale form: the browser turns "starts at" (local time) into ms itself, so a
  // date across a daylight-saving change is right; the zone offset is the fallback.
  const tz = $("tz-offset");
  if (tz) tz.value = String(new Date().getTimezoneOffset());
  // The create and edit forms: "starts at" typed in local time becomes ms on submit; the
  // edit form's start (sent in UTC, data-ms) is shown in local time first.
  const pad = (n) => String(n).padStart(2, "0");
  const localValue = (ms) => {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  for (const form of [$("create-sale"), $("edit-sale")]) {
    if (!form) continue;
    const start = form.elements["starts_at"];
    if (start && start.dataset.ms) start.value = localValue(Number(start.dataset.ms));
    form.addEventListener("submit", () => {
      const local = form.elements["starts_at"].value;
      const ms = local ? new Date(local).getTime() : NaN;
      $("starts-at-ms").value = Number.isFinite(ms) ? String(ms) : "";
    });
  }
  for (const t of document.querySelectorAll("time[data-ms]")) {
    const ms = Number(t.dataset.ms);
    if (ms) { t.title = t.textContent; t.textContent = new Date(ms).toLocaleString(); }
  }
  if (!live) return;

  const fmt = (n) => (n === null || n === undefined) ? "–" : Math.round(Number(n)).toLocaleString("en-US");
  const ago = (ms) => ms < 1000 ? "now" : ms < 60000 ? `${Math.round(ms / 1000)} s ago` : `${Math.round(ms / 60000)} min ago`;
  let lastT = 0;

  function workers(list, now) {
    const tbody = $("workers").tBodies[0];
    tbody.textContent = "";
    for (const w of list) {
      const tr = document.createElement("tr");
      tr.className = "worker " + (w.alive ? "alive" : "stale");
      tr.dataset.workerId = w.id;
      const cells = [w.id, w.kind, ago(w.beat_age_ms), ago(w.progress_age_ms), fmt(w.handled),
                     w.stopped ? "stopped" : w.alive ? "alive" : "no heartbeat"];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
      tbody.append(tr);
    }
  }

  async function poll() {
    let r;
    try {
      r = await fetch(`${live.dataset.liveUrl}?since_ms=${lastT}`, { credentials: "same-origin", headers: { "Accept": "application/json" } });
    } catch (e) { $("live-age").textContent = "connection lost; retrying"; return; }
    if (r.status === 401) { location.href = "/admin/login"; return; }
    if (!r.ok) { $("live-age").textContent = `figures unavailable (${r.status})`; return; }
    const d = await r.json();
    const c = d.current;
    $("fig-requests").textContent = fmt(c.requests_per_s);
    $("fig-accepted").textContent = fmt(c.accepted);
    $("fig-refused").textContent = fmt(c.refused);
    $("fig-enqueue-rate").textContent = fmt(c.enqueue_rate);
    $("fig-drain-rate").textContent = fmt(c.drain_rate);
    $("fig-depth").textContent = fmt(c.depth);
    $("fig-lag").textContent = fmt(c.lag);
    $("fig-orders-rate").textContent = fmt(c.orders_rate);
    $("fig-cancellations").textContent = fmt(c.cancelled);
    $("fig-dead-letters").textContent = fmt(c.dead_letters);
    const rates = c.outcome_rates || {};
    $("fig-outcomes").textContent = Object.entries(c.outcomes || {})
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k.replace(/_/g, " ")} ${fmt(rates[k] || 0)}/s (${fmt(v)} in all)`)
      .join(" · ") || "none yet";
    for (const p of d.history) lastT = Math.max(lastT, p.t_ms);
    live.dispatchEvent(new CustomEvent("live-figures", { detail: d }));
    workers(d.workers || [], d.now_ms);
    live.dataset.ticks = String(Number(live.dataset.ticks) + 1);
    $("live-age").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  // The live sales table (owned by the operator's part, not the chart): rebuilt from
  // /admin/api/sales every SALES_REFRESH_MS, with each row's actions for its state.
  const SALES_REFRESH_MS = 2000, SALES_SHOWN_MAX = 50;
  const salesBox = $("sales");
  let lastSales = "";
  const cents = (c) => (Number(c) / 100).toFixed(2);
  function actionForm(id, action, label) {
    const f = document.createElement("form");
    f.className = "inline"; f.method = "post"; f.action = `/admin/sales/${id}/${action}`;
    const csrf = document.createElement("input");
    csrf.type = "hidden"; csrf.name = "csrf"; csrf.value = salesBox.dataset.csrf;
    const b = document.createElement("button");
    b.type = "submit"; b.className = `secondary act-${action}`; b.textContent = label;
    f.append(csrf, b);
    return f;
  }
  function actionLink(id, action, label) {
    const a = document.createElement("a");
    a.className = `act-${action}`; a.href = `/admin/sales/${id}/${action}`; a.textContent = label;
    return a;
  }
  function saleRow(row, now) {
    const s = row.sale, st = row.state;
    const tr = document.createElement("tr");
    tr.dataset.saleId = s.id;
    const td = (text, cls) => { const c = document.createElement("td"); if (cls) c.className = cls; c.textContent = text; tr.append(c); return c; };
    td(String(s.id));
    const name = td(""); const a = document.createElement("a"); a.href = `/sales/${s.id}`; a.textContent = s.name; name.append(a);
    const state = td(st.replace(/_/g, " "), `sale-state state-${st}`); state.dataset.state = st;
    td(cents(s.price_cents), "price-cell"); td(String(s.units), "units");
    td(`${fmt(s.units_left)} / ${row.stock ? fmt(row.stock.left) : "?"}`, "left");
    td(fmt(row.orders.pending), "pending"); td(fmt(row.orders.paid), "paid"); td(fmt(row.orders.cancelled), "cancelled");
    td(String(s.token_factor ?? salesBox.dataset.defaultTokenFactor ?? ""));
    const starts = td(""); const t = document.createElement("time");
    t.dataset.ms = s.starts_at_ms; t.textContent = new Date(s.starts_at_ms).toLocaleString(); starts.append(t);
    const acts = td("", "actions");
    if (st !== "ended" && st !== "paused") acts.append(actionForm(s.id, "pause", "Pause"), " ");
    if (st === "paused") acts.append(actionForm(s.id, "resume", "Resume"), " ");
    if (st !== "ended") acts.append(actionLink(s.id, "end", "End…"), " ");
    if (st !== "ended" && now < s.starts_at_ms) acts.append(actionLink(s.id, "edit", "Edit…"), " ");
    acts.append(actionLink(s.id, "reconcile", "Reconcile…"));
    return tr;
  }
  async function refreshSales() {
    let r;
    try { r = await fetch(`${salesBox.dataset.salesUrl}?newest=${SALES_SHOWN_MAX}`, { credentials: "same-origin", headers: { "Accept": "application/json" } }); }
    catch (e) { $("sales-age").textContent = "connection lost; retrying"; return; }
    if (!r.ok) { $("sales-age").textContent = `sales unavailable (${r.status})`; return; }
    const d = await r.json();
    const rows = (d.sales || []).slice().sort((x, y) => y.sale.id - x.sale.id).slice(0, SALES_SHOWN_MAX);
    const tbody = $("sales-table").tBodies[0];
    // Rebuilt only when something changed (an unchanged row keeps its buttons under the
    // pointer), and never while a control in the table has focus. A sale that becomes
    // editable or not as its start passes changes its state, hence the table, too.
    const sig = JSON.stringify(rows.map((r) => [r.sale, r.state, r.orders, r.stock]));
    if (sig !== lastSales && !tbody.contains(document.activeElement)) {
      tbody.replaceChildren(...rows.map((row) => saleRow(row, d.server_time_ms)));
      lastSales = sig;
    }
    salesBox.dataset.refreshes = String(Number(salesBox.dataset.refreshes || 0) + 1);
    $("sales-age").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  poll();
  setInterval(poll, 1000);
  if (salesBox) { refreshSales(); setInterval(refreshSales, SALES_REFRESH_MS); }
})();
