// Flash sale admin dashboard: polls /admin/api/live every second and redraws the figures
// and the workers' heartbeats; the chart (chart.js) draws from the same figures, passed on
// as a "live-figures" event on section#live. Plain JavaScript, no dependencies.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const live = $("live");
  // The create-sale form sends the browser's zone so "starts at" means local time.
  // The create-sale form: the browser turns "starts at" (local time) into ms itself, so a
  // date across a daylight-saving change is right; the zone offset is the fallback.
  const tz = $("tz-offset");
  if (tz) tz.value = String(new Date().getTimezoneOffset());
  const form = $("create-sale");
  if (form) form.addEventListener("submit", () => {
    const local = form.elements["starts_at"].value;
    const ms = local ? new Date(local).getTime() : NaN;
    $("starts-at-ms").value = Number.isFinite(ms) ? String(ms) : "";
  });
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
  // The sales table's figures, every five seconds.
  async function refreshSales() {
    let r;
    try { r = await fetch("/admin/api/sales", { credentials: "same-origin", headers: { "Accept": "application/json" } }); }
    catch (e) { return; }
    if (!r.ok) return;
    const d = await r.json();
    for (const row of d.sales || []) {
      const tr = document.querySelector(`#sales-table tr[data-sale-id="${row.sale.id}"]`);
      if (!tr) continue;
      const store = row.stock ? fmt(row.stock.left) : "?";
      tr.querySelector(".left").textContent = `${fmt(row.sale.units_left)} / ${store}`;
      tr.querySelector(".pending").textContent = fmt(row.orders.pending);
      tr.querySelector(".paid").textContent = fmt(row.orders.paid);
      tr.querySelector(".cancelled").textContent = fmt(row.orders.cancelled);
    }
  }
  poll();
  setInterval(poll, 1000);
  setInterval(refreshSales, 5000);
})();
