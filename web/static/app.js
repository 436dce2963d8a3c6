// Flash sale storefront: countdowns on the server's clock, sign-in and sign-out, captcha (an
// image, or a proof of work for assistive browsers), token, purchase, the ticket's progress
// (kept across a reload), the shopper's own order, my orders, and payment. Plain JavaScript,
// no dependencies. The element ids are listed in docs/WEB.md.
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
  // A countdown as a clock: `9:12`, `1:02:03` (rounded down: never more time than is left).
  const fmtClock = (ms) => {
    let s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const p = (x) => String(x).padStart(2, "0");
    return h ? `${h}:${p(m)}:${p(s)}` : `${m}:${p(s)}`;
  };
  // Times in the reader's zone; `showTime` also re-points one at a new time.
  const showTime = (t, ms) => {
    if (!t || !ms) return;
    if (!t.title) t.title = t.textContent;
    t.dataset.ms = String(ms);
    t.textContent = new Date(ms).toLocaleString();
  };
  for (const t of document.querySelectorAll("time[data-ms]")) showTime(t, Number(t.dataset.ms));

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

  // What a refusal means to a shopper: every error code the gateway sends a shopper, in
  // plain words. The server's own `message` is never shown (it is written for developers);
  // an unknown code gets a general sentence naming it.
  const TEXTS = {
    sold_out: "Sold out: every unit is taken.",
    already_bought: "You already have as many orders for this sale as one person may have.",
    limit_reached: "You already have as many orders for this sale as one person may.",
    throttled: "Too many tries in a short time.",
    tokens_exhausted: "So many people are buying right now that every turn to buy is taken.",
    busy: "The shop is very busy right now.",
    overloaded: "The shop is very busy right now.",
    timeout: "The shop is very busy right now.",
    unavailable: "The shop is very busy right now.",
    not_ready: "The shop is starting up.",
    not_started: "The sale has not started yet.",
    ended: "This sale has ended.",
    paused: "The sale is paused for a moment.",
    sale_paused: "The sale is paused for a moment.",
    sale_ended: "This sale has ended.",
    csrf: "Refused for your safety: reload the page and try again.",
    cross_site: "Refused for your safety: reload the page and try again.",
    misdirected: "Reload the page and try again.",
    bad_captcha: "Those characters were not right. Here is a new image.",
    captcha_expired: "That check expired (each one lasts 2 minutes). Here is a new one.",
    bad_token: "The time to press Buy ran out. Solve a new check to try again.",
    unauthorized: "You are signed out. Sign in again to buy.",
    bad_name: "Your name must be 1 to 40 characters, without control characters or \"|\".",
    bad_request: "The shop did not understand that. Reload the page and try again.",
    unsupported_media_type: "The shop did not understand that. Reload the page and try again.",
    method_not_allowed: "The shop did not understand that. Reload the page and try again.",
    too_large: "That was too long.",
    not_found: "Not found. Reload the page.",
    no_such_sale: "This sale no longer exists.",
    conflict: "That could not be done just now. Reload the page.",
    order_cancelled: "This order was cancelled because it was not paid in time, and its unit went back on sale. Nothing was charged.",
    payment_window_closed: "The time to pay has passed, so the order is being cancelled. Nothing was charged.",
    outcome_unknown: "Your purchase may have gone through; the shop is checking. Keep this page open.",
    internal: "Something went wrong on our side.",
    network: "Your connection failed. Check it and try again.",
  };
  // Codes after which waiting helps: "Try again in N s." (or "in a moment").
  const WAITS = ["throttled", "tokens_exhausted", "busy", "overloaded", "timeout", "unavailable",
                 "not_ready", "not_started", "paused", "sale_paused", "internal"];
  function refusal(r) {
    const code = (r.data && r.data.error) || (r.status ? "internal" : "network");
    let text = TEXTS[code] || `Something went wrong (${code}). Reload the page and try again.`;
    if (WAITS.includes(code)) text += r.retry ? ` Try again in ${r.retry} s.` : " Try again in a moment.";
    return { code, text };
  }

  function saleStateLabel(code) {
    return { upcoming: "upcoming", live: "live", sold_out: "sold out", ended: "ended" }[code] || code;
  }

  // ---- Proof of work (the check without an image) -----------------------------------
  // SHA-256 of one short ASCII message (at most 55 bytes: one block), as eight words: the
  // challenge (32 hex characters) followed by a decimal nonce. The gateway checks the same
  // (gateway/src/captcha.rs, `work_solves`).
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
  const W = new Int32Array(64);
  function sha256Short(str) {
    const n = str.length;
    W.fill(0, 0, 16);
    for (let i = 0; i < n; i++) W[i >> 2] |= (str.charCodeAt(i) & 0xff) << (24 - (i & 3) * 8);
    W[n >> 2] |= 0x80 << (24 - (n & 3) * 8);
    W[15] = n * 8;
    for (let i = 16; i < 64; i++) {
      const x = W[i - 15], y = W[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    const H = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    return [a, b, c, d, e, f, g, h].map((v, i) => (v + H[i]) >>> 0);
  }
  function zeroBits(words, bits) {
    let z = 0;
    for (const w of words) { const c = Math.clz32(w); z += c; if (c < 32 || z >= bits) break; }
    return z >= bits;
  }
  // Finds a nonce in slices, yielding between them so the page stays responsive; resolves
  // with the nonce as text, or null if `cancelled()` says stop.
  function solveWork(challenge, bits, cancelled) {
    return new Promise((resolve) => {
      let n = 0;
      const slice = () => {
        if (cancelled()) { resolve(null); return; }
        const end = n + 20000;
        for (; n < end; n++) {
          if (zeroBits(sha256Short(challenge + n), bits)) { resolve(String(n)); return; }
        }
        setTimeout(slice, 0);
      };
      slice();
    });
  }

  // ---- Sign-out (every storefront page) ----------------------------------------------
  const signOut = $("sign-out");
  if (signOut) signOut.addEventListener("click", async () => {
    signOut.disabled = true;
    const r = await api("POST", "/api/logout");
    if (!r.ok) { signOut.disabled = false; const f = refusal(r); setStatus("refused", f.code, f.text); return; }
    location.reload();
  });
  function showSignedIn(user) {
    const who = $("signed-in");
    if (!who) return;
    who.dataset.user = user || "";
    who.textContent = "";
    if (user) {
      who.append("signed in as ");
      const b = document.createElement("b"); b.textContent = user; who.append(b);
    }
    if (signOut) signOut.hidden = !user;
  }

  // ---- Sale page --------------------------------------------------------------------
  function salePage() {
    const saleId = body.dataset.saleId;
    // The start and end as the page was rendered; refreshSale follows an operator's edit.
    let startsAt = Number(body.dataset.startsAtMs);
    let endsAt = Number(body.dataset.endsAtMs || 0);
    const stateEl = $("sale-state");
    let user = $("signed-in").dataset.user || "";
    let token = null;
    let tokenExpiresAt = 0;    // server ms
    let captchaShown = false;  // a captcha is shown or being fetched
    let captchaRetryAt = 0;    // after a failed fetch: not before this (Date.now() ms)
    let captchaBackoff = 1000; // grows on repeated failures, up to 30 s
    let busy = false;          // a token or purchase request is in flight
    let working = false;       // a proof of work is being computed
    let buyAfter = 0;          // Retry-After of the last refusal (Date.now() ms)
    let accepted = false;      // a purchase was accepted: this page follows its ticket
    let refusedFor = "";       // sold_out / already_bought / mine: no more tries unless it changes
    let mine = null;           // the shopper's newest active order of this sale, if known
    let mineCount = 0;         // their active orders of this sale, as far as known
    let perUserLimit = 1;      // units one person may hold (the sale's per_user_limit)

    // The ticket of an accepted purchase survives a reload: kept in this browser per sale
    // and user, until a worker decides it.
    const ticketKey = () => `seckill.ticket.${saleId}.${user}`;
    const TICKET_KEEP_MS = 24 * 3600 * 1000;
    function storeTicket(ticket, receipt) {
      try { localStorage.setItem(ticketKey(), JSON.stringify({ ticket, receipt: receipt || "", at: Date.now() })); } catch (e) { /* private mode: no resume */ }
    }
    function storedTicket() {
      try {
        const t = JSON.parse(localStorage.getItem(ticketKey()) || "null");
        if (t && typeof t.ticket === "string" && Date.now() - Number(t.at) < TICKET_KEEP_MS) return t;
      } catch (e) { /* ignore */ }
      return null;
    }
    function forgetTicket() { try { localStorage.removeItem(ticketKey()); } catch (e) { /* ignore */ } }
    // Whether this browser saw an order of this sale for this user: then a reload asks for
    // the shopper's orders. Otherwise it asks only once the sale is over (sold out, ended)
    // or the gateway says "already bought", so a crowd reloading a live sale costs the
    // orders database nothing.
    const orderKey = () => `seckill.order.${saleId}.${user}`;
    function markOrdered(id) { try { localStorage.setItem(orderKey(), String(id)); } catch (e) { /* ignore */ } }
    function sawOrder() { try { return !!localStorage.getItem(orderKey()); } catch (e) { return false; } }

    const state = () => stateEl.dataset.state;
    function setSaleState(code) {
      if (state() === code) return;
      stateEl.dataset.state = code;
      stateEl.textContent = saleStateLabel(code);
      stateEl.className = "sale-state state-" + code;
    }

    // "You have order X — pay within 9:12", with a link to pay.
    function renderMine() {
      const box = $("mine");
      if (!mine) { box.hidden = true; return; }
      box.hidden = false;
      box.dataset.orderId = mine.id;
      box.dataset.status = mine.status;
      const p = $("mine-text");
      const left = mine.pay_by_ms - serverNow();
      const want = mine.status === "pending" && left > 0
        ? `pay within ${fmtClock(left)}`
        : mine.status === "paid" ? "paid, thank you" : "the time to pay has passed";
      if (p.dataset.want === want) return;
      p.dataset.want = want;
      p.textContent = "You have order ";
      const a = document.createElement("a");
      a.id = "mine-link"; a.href = `/orders/${mine.id}`; a.textContent = mine.id.slice(-8);
      p.append(a, ` — ${want}.`);
      if (mine.status === "pending" && left > 0) {
        const pay = document.createElement("a");
        pay.href = `/orders/${mine.id}`; pay.className = "button-link"; pay.textContent = "Pay now";
        p.append(" ", pay);
      }
    }
    // Shows the order; with as many orders as one person may hold, nothing more to buy.
    function haveOrder(o, count) {
      markOrdered(o.id);
      mine = o;
      mineCount = Math.max(mineCount, count || 1);
      if (mineCount >= perUserLimit) { refusedFor = "mine"; token = null; }
      renderMine();
      render();
    }
    // The shopper's active order of this sale, from their orders (after a reload, an
    // "already bought" or a sell-out).
    async function lookUpMine() {
      if (!user) return;
      const r = await api("GET", "/api/orders");
      if (!r.ok || !r.data || !Array.isArray(r.data.orders)) return;
      const active = r.data.orders.filter((x) => String(x.sale) === String(saleId) && x.status !== "cancelled");
      mineCount = active.length;
      if (active.length) haveOrder(active[0], active.length);
    }

    function render() {
      const now = serverNow();
      if (state() === "upcoming" && now >= startsAt) { setSaleState("live"); $("start-verb").textContent = "Started"; }
      if (endsAt && now >= endsAt && state() !== "ended") setSaleState("ended");
      // One countdown, only while it says something the state does not: the start, or the
      // end of a live sale.
      const label = $("countdown-label"), cd = $("countdown"), box = $("countdown-box");
      if (state() === "upcoming") { box.hidden = false; label.textContent = "Starts in"; cd.textContent = fmtLeft(startsAt - now); }
      else if (state() === "live" && endsAt) { box.hidden = false; label.textContent = "Ends in"; cd.textContent = fmtLeft(endsAt - now); }
      else box.hidden = true;
      $("login-section").hidden = !!user;
      // The 60 s of a purchase token, counted down; when they run out, a new check.
      if (token && now >= tokenExpiresAt) {
        token = null;
        captchaShown = false;
        setStatus("refused", "bad_token", "The 60 seconds to press Buy ran out. Solve a new check to try again.");
      }
      const tokenBox = $("token-box");
      tokenBox.hidden = !token;
      if (token) $("token-countdown").textContent = fmtClock(tokenExpiresAt - now);
      const open = state() === "live" && !!user && !accepted && !refusedFor;
      const wantCaptcha = open && !token;
      $("captcha-section").hidden = !wantCaptcha;
      if (wantCaptcha && !captchaShown && !working && Date.now() >= captchaRetryAt) { captchaShown = true; newCaptcha(); }
      $("get-token").disabled = busy || working;
      if ($("use-work")) $("use-work").disabled = busy || working;
      $("buy").disabled = !(open && token && !busy && Date.now() >= buyAfter);
      // With an order of this sale in hand there is nothing to buy here.
      $("buy-section").hidden = refusedFor === "mine" || accepted;
      if (mine) renderMine();
    }

    async function refreshSale() {
      const sent = Date.now();
      const r = await api("GET", `/api/sales/${saleId}`);
      if (!r.ok) return;
      resync(r.data.server_time_ms, sent, Date.now());
      // An operator may move the start or the end of a sale that has not started.
      const [startEl, endEl] = document.querySelectorAll(".when time");
      const starts = Number(r.data.starts_at_ms);
      if (starts && starts !== startsAt) { startsAt = starts; showTime(startEl, starts); }
      const ends = Number(r.data.ends_at_ms || 0);
      if (r.data.ends_at_ms !== undefined && ends !== endsAt) { endsAt = ends; showTime(endEl, ends); }
      if (r.data.units_left !== null && r.data.units_left !== undefined) $("units-left").textContent = fmtCount(r.data.units_left);
      if (r.data.per_user_limit) {
        perUserLimit = Number(r.data.per_user_limit) || 1;
        if (refusedFor === "mine" && mineCount < perUserLimit) refusedFor = "";
      }
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
        if (f.code === "unauthorized") { user = ""; showSignedIn(""); }
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
      showSignedIn(user);
      setStatus("", "", "");
      render();
      resume();
    });

    // Refusals after which the shopper stops until something changes.
    function settle(f) {
      if (f.code === "sold_out") { setSaleState("sold_out"); refusedFor = "sold_out"; lookUpMine(); }
      if (f.code === "already_bought" || f.code === "limit_reached") { refusedFor = "already_bought"; lookUpMine(); }
      if (f.code === "ended" || f.code === "sale_ended") setSaleState("ended");
      if (f.code === "unauthorized") { user = ""; showSignedIn(""); token = null; }
    }

    function tokenGranted(data) {
      token = data.token;
      tokenExpiresAt = Number(data.expires_at_ms) || (serverNow() + 60000);
      setStatus("ready", "", "Ready. Press Buy before the time runs out.");
      render();
      $("buy").focus();
    }

    async function getToken(captchaId, answer) {
      if (busy) return;
      busy = true;
      render();
      const r = await api("POST", `/api/sales/${saleId}/token`, { captcha_id: captchaId, answer });
      busy = false;
      if (r.ok) { tokenGranted(r.data); return; }
      const f = refusal(r);
      setStatus("refused", f.code, f.text);
      settle(f);
      if (f.code === "bad_captcha" || f.code === "captcha_expired") newCaptcha();
      render();
    }
    const checkImage = () => getToken($("captcha-image").dataset.captchaId || "", $("captcha-answer").value);
    $("get-token").addEventListener("click", checkImage);
    $("captcha-answer").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); checkImage(); } });
    $("new-captcha").addEventListener("click", () => { if (!captchaShown || Date.now() >= captchaRetryAt) newCaptcha(); });

    // The check without an image: a proof-of-work challenge, solved here, then sent like an
    // answer (offered unless the shop runs with --captcha-work off).
    const useWork = $("use-work");
    if (useWork) useWork.addEventListener("click", async () => {
      if (working || busy) return;
      working = true;
      const ws = $("work-status");
      ws.textContent = "Working… this takes a few seconds.";
      render();
      const r = await api("GET", `/api/sales/${saleId}/captcha?kind=work`);
      if (!r.ok) {
        working = false;
        ws.textContent = "";
        const f = refusal(r); setStatus("refused", f.code, f.text); settle(f); render();
        return;
      }
      const answer = await solveWork(String(r.data.challenge), Number(r.data.bits), () => !user || accepted);
      working = false;
      ws.textContent = answer === null ? "" : "Done.";
      if (answer !== null) await getToken(r.data.captcha_id, answer);
      render();
    });

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
            markOrdered(t.order_id);
            forgetTicket();
            const s = $("status");
            setStatus("ordered", "", "Ordered! ");
            const a = document.createElement("a");
            a.id = "order-link"; a.href = `/orders/${t.order_id}`; a.textContent = "Pay for your order";
            s.append(a);
            const o = await api("GET", `/api/orders/${t.order_id}`);
            if (o.ok) haveOrder(o.data, 1);
            // A sale that lets a person buy more: count the orders held, and offer another
            // purchase while below the limit.
            if (perUserLimit > 1) {
              await lookUpMine();
              if (mineCount < perUserLimit) { accepted = false; captchaShown = false; render(); }
            }
            return;
          }
          if (t.state === "rejected") {
            forgetTicket();
            accepted = false;
            const why = { sold_out: "Sold out: every unit went to buyers ahead of you.",
                          already_bought: "You already hold an order for this sale.",
                          no_such_sale: "This sale no longer exists.",
                          discarded: "Your purchase could not be processed and was cancelled; nothing was charged." }[t.reason]
                        || `Your purchase was refused (${t.reason}).`;
            setStatus("rejected", t.reason, why);
            if (t.reason === "sold_out") { setSaleState("sold_out"); refusedFor = "sold_out"; }
            if (t.reason === "already_bought") { refusedFor = "already_bought"; lookUpMine(); }
            render();
            return;
          }
          if (t.state === "queued") setStatus("queued", "", t.position ? `In line: number ${fmtCount(t.position)}. Keep this page open or come back to it.` : "In line. Keep this page open or come back to it.");
          if (t.state === "held") setStatus("queued", "held", "Your purchase is being checked by the shop; keep this page open.");
        } else if (r.status === 404) {
          unknown += 1;
          setStatus("queued", "unknown", "In line (waiting for your purchase to be decided)");
        } else if (r.status === 401) {
          setStatus("refused", "unauthorized", TEXTS.unauthorized);
          return;
        }
        await new Promise((res) => setTimeout(res, delay + (r.retry || 0) * 1000));
        delay = Math.min(delay * 1.3, unknown > 10 ? 10000 : 2000);
      }
    }

    function following(ticket, receipt, position) {
      token = null;
      accepted = true;
      render();
      setStatus("queued", "", position ? `In line: number ${fmtCount(position)}. Keep this page open or come back to it.` : "In line. Keep this page open or come back to it.");
      followTicket(ticket, receipt);
    }

    $("buy").addEventListener("click", async () => {
      if (!token || busy) return;
      busy = true;
      const spent = token;
      render();
      const r = await api("POST", `/api/sales/${saleId}/purchase`, { token: spent });
      busy = false;
      if (r.status === 202 || (r.data && r.data.error === "outcome_unknown" && r.data.ticket)) {
        storeTicket(r.data.ticket, r.data.receipt);
        following(r.data.ticket, r.data.receipt, r.data.position);
        return;
      }
      const f = refusal(r);
      setStatus("refused", f.code, f.text);
      settle(f);
      // The gateway keeps the token valid for these (it refused before spending it, or
      // gave it back): wait for Retry-After and press Buy again. Otherwise it is gone.
      const kept = ["throttled", "busy", "overloaded", "unavailable", "not_started", "network", "paused", "sale_paused"];
      if (kept.includes(f.code)) {
        buyAfter = Date.now() + (r.retry || 1) * 1000;
        setTimeout(render, (r.retry || 1) * 1000 + 50);
      } else {
        token = null;
        captchaShown = false; // a new captcha for the next try, if there is one
      }
      render();
    });

    // After a reload (or a sign-in): a ticket still waiting is followed again, else the
    // shopper's own order of this sale is shown (looked up when this browser saw one, or
    // the sale is over).
    function resume() {
      if (!user) return;
      const t = storedTicket();
      if (t) { following(t.ticket, t.receipt, 0); return; }
      if (sawOrder() || ["sold_out", "ended"].includes(state())) lookUpMine();
    }

    render();
    resume();
    refreshSale();
    setInterval(render, 250);
    setInterval(refreshSale, 3000);
  }

  // ---- My orders page ---------------------------------------------------------------
  function myOrdersPage() {
    // Each payable order's time left, counted down.
    function tick() {
      for (const row of document.querySelectorAll("tr.order-row[data-status=pending]")) {
        const cell = row.querySelector(".pay-left");
        const left = Number(row.dataset.payByMs) - serverNow();
        if (cell) cell.textContent = left > 0 ? fmtClock(left) : "time is up";
      }
    }
    tick();
    setInterval(tick, 500);
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
      setStatus("refused", f.code, f.text);
      if (r.status === 409) { nextCheck = 0; check(); }
      else pay.disabled = false; // a passing failure: try again
    });
    tick();
    setInterval(tick, 250);
  }

  if (body.dataset.page === "sale") salePage();
  if (body.dataset.page === "order") orderPage();
  if (body.dataset.page === "my-orders") myOrdersPage();
})();
