// Flash sale storefront: countdowns on the server's clock, sign-in, captcha, token, purchase,
// the ticket's progress, and payment. Plain JavaScript, no dependencies. The element ids are
// listed in docs/WEB.md.
"use strict";
(function () {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  // The server's clock: its time at render, corrected by how long the response took to
  // arrive (responseStart), so countdowns agree across devices with wrong clocks.
  const serverAtRender = Number(body.dataset.serverTimeMs || Date.now());
  const nav = performance.getEntriesByType ? performance.getEntriesByType("navigation")[0] : null;
  const arrived = performance.timeOrigin + (nav ? nav.responseStart : 0);
  let skew = serverAtRender - arrived;
  const serverNow = () => Date.now() + skew;
  // A fresher reading of the server's clock (from an API answer that carried it), taken
  // halfway through the round trip; a page served from the browser's cache is corrected
  // this way too.
  const resync = (serverMs, sentAt, receivedAt) => {
    if (serverMs && receivedAt - sentAt < 2000) skew = serverMs - (sentAt + receivedAt) / 2;
  };

  const fmtCount = (n) => Number(n).toLocaleString("en-US");
  const fmtLeft = (ms) => {
    if (ms <= 0) return "0s";
    let s = Math.ceil(ms / 1000);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const p = (x) => String(x).padStart(2, "0");
    if (d) return `${d}d ${h}h ${p(m)}m`;
    if (h) return `${h}h ${p(m)}m ${p(s)}s`;
    if (m) return `${m}m ${p(s)}s`;
    return `${s}s`;
  };
  // Times in the reader's zone.
  for (const t of document.querySelectorAll("time[data-ms]")) {
    const ms = Number(t.dataset.ms);
    if (ms) { t.title = t.textContent; t.textContent = new Date(ms).toLocaleString(); }
  }

  // A 421 `misdirected` (a gateway behind nginx with --route-cookie: the session came
  // without its route cookie) sets the cookie in its answer: sent once more, the request
  // reaches the person's own gateway.
  async function api(method, url, payload, retried) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    let res;
    try { res = await fetch(url, opts); } catch (e) {
      return { ok: false, status: 0, data: { error: "network", message: "the network failed; try again" } };
    }
    if (res.status === 421 && !retried) return api(method, url, payload, true);
    let data = {};
    try { data = await res.json(); } catch (e) { data = {}; }
    const retry = Number(res.headers.get("Retry-After") || 0);
    return { ok: res.ok, status: res.status, data, retry };
  }

  function setStatus(state, reason, text) {
    const s = $("status");
    if (!s) return;
    s.dataset.state = state;
    s.dataset.reason = reason || "";
    s.textContent = text;
  }

  // What a refusal means to a shopper.
  function refusal(r) {
    const code = (r.data && r.data.error) || "error";
    const wait = r.retry ? ` Try again in ${r.retry} s.` : "";
    const text = {
      sold_out: "Sold out. Every unit is taken.",
      already_bought: "You already bought this one (one per person).",
      throttled: "Too many attempts." + (wait || " Slow down a little."),
      tokens_exhausted: "Every place in line is taken right now." + wait,
      busy: "Busy." + (wait || " Try again in a moment."),
      overloaded: "Busy." + (wait || " Try again in a moment."),
      unavailable: "Busy." + (wait || " Try again in a moment."),
      timeout: "Busy." + (wait || " Try again in a moment."),
      not_started: "Not started yet." + wait,
      ended: "This sale has ended.",
      csrf: "Refused: reload the page and try again.",
      bad_captcha: "Wrong characters. Here is a new image.",
      bad_token: "Your place expired. Solve a new captcha.",
      unauthorized: "Please sign in again.",
      network: "The network failed. Try again.",
    }[code] || ((r.data && r.data.message) || "Something went wrong.") + wait;
    return { code, text };
  }

  function saleStateLabel(code) {
    return { upcoming: "upcoming", live: "live", sold_out: "sold out", ended: "ended" }[code] || code;
  }

  // ---- Sale page --------------------------------------------------------------------
  function salePage() {
    const saleId = body.dataset.saleId;
    const startsAt = Number(body.dataset.startsAtMs);
    const endsAt = Number(body.dataset.endsAtMs || 0);
    const stateEl = $("sale-state");
    let user = $("signed-in").dataset.user || "";
    let token = null;
    let captchaShown = false;  // a captcha is shown or being fetched
    let captchaRetryAt = 0;    // after a failed fetch: not before this (Date.now() ms)
    let captchaBackoff = 1000; // grows on repeated failures, up to 30 s
    let busy = false;          // a token or purchase request is in flight
    let buyAfter = 0;          // Retry-After of the last refusal (Date.now() ms)
    let accepted = false;      // a purchase was accepted: this page follows its ticket
    let refusedFor = "";       // sold_out / already_bought: no more tries unless it changes

    const state = () => stateEl.dataset.state;
    function setSaleState(code) {
      if (state() === code) return;
      stateEl.dataset.state = code;
      stateEl.textContent = saleStateLabel(code);
      stateEl.className = "sale-state state-" + code;
    }

    function render() {
      const now = serverNow();
      if (state() === "upcoming" && now >= startsAt) setSaleState("live");
      if (endsAt && now >= endsAt && state() !== "ended") setSaleState("ended");
      const label = $("countdown-label"), cd = $("countdown");
      if (state() === "upcoming") { label.textContent = "Starts in"; cd.textContent = fmtLeft(startsAt - now); }
      else if (state() === "live" && endsAt) { label.textContent = "Ends in"; cd.textContent = fmtLeft(endsAt - now); }
      else if (state() === "live") { label.textContent = "Live"; cd.textContent = "now"; }
      else { label.textContent = ""; cd.textContent = saleStateLabel(state()); }
      $("login-section").hidden = !!user;
      const open = state() === "live" && !!user && !accepted && !refusedFor;
      const wantCaptcha = open && !token;
      $("captcha-section").hidden = !wantCaptcha;
      if (wantCaptcha && !captchaShown && Date.now() >= captchaRetryAt) { captchaShown = true; newCaptcha(); }
      $("get-token").disabled = busy;
      $("buy").disabled = !(open && token && !busy && Date.now() >= buyAfter);
    }

    async function refreshSale() {
      const sent = Date.now();
      const r = await api("GET", `/api/sales/${saleId}`);
      if (!r.ok) return;
      resync(r.data.server_time_ms, sent, Date.now());
      if (r.data.units_left !== null && r.data.units_left !== undefined) $("units-left").textContent = fmtCount(r.data.units_left);
      const code = r.data.state === "open" ? "live" : r.data.state;
      if (code && code !== "upcoming") setSaleState(code);
      // Units come back on sale when unpaid orders are cancelled: try again.
      if (code === "live" && refusedFor === "sold_out") { refusedFor = ""; setStatus("", "", "Units are back on sale."); }
      render();
    }

    async function newCaptcha() {
      captchaShown = true;
      const img = $("captcha-image");
      $("captcha-answer").value = "";
      const r = await api("GET", `/api/sales/${saleId}/captcha`);
      if (!r.ok) {
        const f = refusal(r);
        setStatus("refused", f.code, f.text);
        if (f.code === "unauthorized") { user = ""; $("signed-in").dataset.user = ""; }
        // Wait before the next automatic try: the server's Retry-After, and a backoff
        // that grows, so a crowd of pages never hammers a struggling server.
        captchaRetryAt = Date.now() + Math.max((r.retry || 0) * 1000, captchaBackoff);
        captchaBackoff = Math.min(captchaBackoff * 2, 30000);
        captchaShown = false;
        render();
        return;
      }
      captchaBackoff = 1000;
      img.dataset.captchaId = r.data.captcha_id;
      img.src = r.data.image;
      $("captcha-answer").focus();
    }

    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = $("login-name").value.trim();
      const r = await api("POST", "/api/login", { user: name });
      if (!r.ok) { const f = refusal(r); setStatus("refused", f.code, f.text); return; }
      user = r.data.user;
      const who = $("signed-in");
      who.dataset.user = user;
      who.textContent = "";
      who.append("signed in as ");
      const b = document.createElement("b"); b.textContent = user; who.append(b);
      setStatus("", "", "");
      render();
    });

    // Refusals after which the shopper stops until something changes.
    function settle(f) {
      if (f.code === "sold_out") { setSaleState("sold_out"); refusedFor = "sold_out"; }
      if (f.code === "already_bought") refusedFor = "already_bought";
      if (f.code === "ended") setSaleState("ended");
      if (f.code === "unauthorized") { user = ""; $("signed-in").dataset.user = ""; token = null; }
    }

    async function getToken() {
      if (busy) return;
      busy = true;
      render();
      const img = $("captcha-image");
      const r = await api("POST", `/api/sales/${saleId}/token`, {
        captcha_id: img.dataset.captchaId || "", answer: $("captcha-answer").value,
      });
      busy = false;
      if (r.ok) {
        token = r.data.token;
        setStatus("ready", "", "Ready. Press Buy.");
        render();
        $("buy").focus();
        return;
      }
      const f = refusal(r);
      setStatus("refused", f.code, f.text);
      settle(f);
      if (f.code === "bad_captcha") newCaptcha();
      render();
    }
    $("get-token").addEventListener("click", getToken);
    $("captcha-answer").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); getToken(); } });
    $("new-captcha").addEventListener("click", () => { if (!captchaShown || Date.now() >= captchaRetryAt) newCaptcha(); });

    async function followTicket(ticket, receipt) {
      // Poll the ticket until a worker decides it; back off gently while in line. The 202's
      // receipt lets any gateway answer while it waits (the one that took it may be gone).
      // A ticket no gateway knows is asked about less and less often.
      let delay = 400;
      let unknown = 0;
      const query = receipt ? `?receipt=${encodeURIComponent(receipt)}` : "";
      for (;;) {
        const r = await api("GET", `/api/tickets/${ticket}${query}`);
        if (r.ok) {
          unknown = 0;
          const t = r.data;
          if (t.state === "ordered") {
            const s = $("status");
            setStatus("ordered", "", "Ordered! ");
            const a = document.createElement("a");
            a.id = "order-link"; a.href = `/orders/${t.order_id}`; a.textContent = "Pay for your order";
            s.append(a);
            return;
          }
          if (t.state === "rejected") {
            const why = { sold_out: "Sold out: every unit went to buyers ahead of you.",
                          already_bought: "You already hold an order for this sale.",
                          no_such_sale: "This sale no longer exists.",
                          discarded: "Your purchase could not be processed and was cancelled; nothing was charged." }[t.reason] || t.reason;
            setStatus("rejected", t.reason, why);
            if (t.reason === "sold_out") setSaleState("sold_out");
            return;
          }
          if (t.state === "queued") setStatus("queued", "", t.position ? `In line: number ${fmtCount(t.position)}` : "In line");
          if (t.state === "held") setStatus("queued", "held", "Your purchase is being checked by an operator; keep this page open.");
        } else if (r.status === 404) {
          unknown += 1;
          setStatus("queued", "unknown", "In line (waiting for a worker to decide your purchase)");
        }
        await new Promise((res) => setTimeout(res, delay + (r.retry || 0) * 1000));
        delay = Math.min(delay * 1.3, unknown > 10 ? 10000 : 2000);
      }
    }

    $("buy").addEventListener("click", async () => {
      if (!token || busy) return;
      busy = true;
      const spent = token;
      render();
      const r = await api("POST", `/api/sales/${saleId}/purchase`, { token: spent });
      busy = false;
      if (r.status === 202 || (r.data && r.data.error === "outcome_unknown" && r.data.ticket)) {
        token = null;
        accepted = true;
        render();
        setStatus("queued", "", r.data.position ? `In line: number ${fmtCount(r.data.position)}` : "In line");
        followTicket(r.data.ticket, r.data.receipt);
        return;
      }
      const f = refusal(r);
      setStatus("refused", f.code, f.text);
      settle(f);
      // The gateway keeps the token valid for these (it refused before spending it, or
      // gave it back): wait for Retry-After and press Buy again. Otherwise it is gone.
      const kept = ["throttled", "busy", "overloaded", "unavailable", "not_started", "network"];
      if (kept.includes(f.code)) {
        buyAfter = Date.now() + (r.retry || 1) * 1000;
        setTimeout(render, (r.retry || 1) * 1000 + 50);
      } else {
        token = null;
        captchaShown = false; // a new captcha for the next try, if there is one
      }
      render();
    });

    render();
    refreshSale();
    setInterval(render, 250);
    setInterval(refreshSale, 3000);
  }

  // ---- Order page -------------------------------------------------------------------
  function orderPage() {
    const id = body.dataset.orderId;
    const payBy = Number(body.dataset.payByMs);
    const statusEl = $("order-status");
    const labels = { pending: "waiting for payment", paid: "paid",
                     cancelled: "cancelled: not paid in time, the unit went back on sale" };
    function show(status) {
      statusEl.dataset.status = status;
      statusEl.className = "order-" + status;
      statusEl.textContent = labels[status] || status;
      if (status !== "pending") {
        const b = $("pay"); if (b) b.remove();
        $("pay-by").hidden = true;
      }
    }
    // After the deadline the page asks how the order ended, every half second at first,
    // then less and less often; it stops when the answer is final or the session is gone.
    let checking = false;
    let nextCheck = 0;
    let checkDelay = 500;
    let stopped = false;
    async function check() {
      if (checking || stopped || Date.now() < nextCheck) return;
      checking = true;
      const r = await api("GET", `/api/orders/${id}`);
      checking = false;
      if (r.ok) show(r.data.status);
      if ((r.ok && r.data.status !== "pending") || r.status === 401 || r.status === 404) {
        stopped = true;
        if (!r.ok) { const f = refusal(r); setStatus("refused", f.code, f.text); }
        return;
      }
      nextCheck = Date.now() + Math.max(checkDelay, (r.retry || 0) * 1000);
      checkDelay = Math.min(checkDelay * 1.5, 10000);
    }
    function tick() {
      const left = payBy - serverNow();
      const cd = $("pay-countdown");
      if (cd) cd.textContent = fmtLeft(left);
      if (statusEl.dataset.status === "pending" && left <= 0) {
        const b = $("pay"); if (b) b.remove();
        check(); // the canceller runs within a second of the deadline
      }
    }
    const pay = $("pay");
    if (pay) pay.addEventListener("click", async () => {
      pay.disabled = true;
      const r = await api("POST", `/api/orders/${id}/pay`);
      if (r.ok) { show(r.data.status); setStatus("paid", "", "Paid. Thank you!"); return; }
      const f = refusal(r);
      setStatus("refused", f.code, (r.data && r.data.message) || f.text);
      if (r.status === 409) { nextCheck = 0; check(); }
      else pay.disabled = false; // a passing failure: try again
    });
    tick();
    setInterval(tick, 250);
  }

  if (body.dataset.page === "sale") salePage();
  if (body.dataset.page === "order") orderPage();
})();
