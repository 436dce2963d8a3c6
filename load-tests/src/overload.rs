//! Overload (issue 16): ten times the gateway's capacity against the all-in-one system, and
//! what must still hold: refusals (429/503) answer fast, memory stays under a stated bound,
//! every answer is a 202, 429 or 503 (no other 5xx), and no purchase answered 202 is lost.
//!
//! **Capacity.** The gateway serves at most `max_in_flight` requests at once and sheds the
//! rest with `503 overloaded` at once ([`gateway::config::ServeLimits`]). A run sets that
//! cap to `capacity` and first measures a **baseline** in the same run: `capacity`
//! connections, each sending purchase attempts back to back (a closed loop), which is the
//! gateway at its capacity (on the 2-core machine of BENCHMARKS.md the throughput ceiling is
//! reached well below the `large` scenario's 256 connections). Then the **overload**:
//! `factor × capacity` connections (10× by default) of the same traffic, none of them
//! honouring `Retry-After`. Every connection of the overload would send at the baseline's
//! per-connection rate if it were served, so the demand is `factor` times what the gateway
//! can serve.
//!
//! **Traffic.** Most attempts are by fresh buyers, each with its own session and purchase
//! token minted with the gateway's keys just before sending (so the load side does not
//! have to pass the token step, and every such attempt is one the gateway may accept): a
//! `202`, or `503` when shed. The rest ([`Spec::repeat_percent`]) come from a few
//! repeaters presenting the same token again and again: the throttle's `429`. The sale has
//! more units than the run can sell, so no attempt is refused for stock.
//!
//! **Checks** ([`Report::checks`]): only 202/429/503 answers, no connection errors, the
//! process's peak RSS (system and generator together, `VmHWM`) under [`Spec::rss_max_mib`],
//! and the auditor at rest over every ticket answered 202 (no lost purchase, no oversell,
//! one order per person, conservation). The refusals' p99 (≤ [`REFUSAL_P99_MS_TARGET`]) is
//! reported, and `load-tests overload` fails on it, but the CI test never asserts speed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::config::{LOAD_TEST_HEADER, ServeLimits};
use gateway::sales::NewSale;
use gateway::session::SESSION_COOKIE_NAME;
use gateway::state::AppState;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue};
use loadgen::Conn;
use queue::Clock as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::system::{AllInOne, SystemOptions};

/// The refusals' p99 the run aims at, ms.
pub const REFUSAL_P99_MS_TARGET: f64 = 10.0;
/// Most connections of an overload phase (the load driver's own cap).
pub const CONNECTIONS_MAX: usize = loadgen::CONNECTIONS_MAX;
/// Longest phase, s.
pub const PHASE_SECS_MAX: u64 = 600;
/// Repeaters: users presenting the same token again and again.
pub const REPEATERS: usize = 4;
/// Units of the overload's sale: more than a run can sell.
pub const SALE_UNITS: u64 = inventory::UNITS_MAX;
/// How long a minted session or token stays valid, ms: longer than any phase, short enough
/// that the ledger's live tokens stay far under its limit.
const MINT_TTL_MS: u64 = 20_000;
/// Highest latency recorded, µs (a minute).
const LATENCY_MAX_US: u64 = 60_000_000;
/// How often the RSS is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(100);
/// How long the run waits for the workers to drain the queue before the audit.
const DRAIN_WAIT: Duration = Duration::from_secs(300);

/// How a run goes.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// The gateway's capacity: its `max_in_flight`, and the baseline's connections.
    pub capacity: usize,
    /// The overload's connections are `factor × capacity`.
    pub factor: usize,
    /// Each phase's length, ms.
    pub phase_ms: u64,
    /// Share of the attempts, in percent, made by the repeaters.
    pub repeat_percent: u64,
    /// The bound on the process's peak RSS (system and generator), MiB.
    pub rss_max_mib: u64,
    /// The orders database (`None`: SQLite in the run's directory).
    pub database: Option<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            capacity: 32,
            factor: 10,
            phase_ms: 10_000,
            repeat_percent: 20,
            rss_max_mib: 1024,
            database: None,
        }
    }
}

/// Why a run could not go on (a failed check is not an error: see [`Report::passed`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverloadError {
    /// A setting out of its bounds.
    #[error("{0}")]
    Spec(String),
    /// The system did not start or stop.
    #[error("system: {0}")]
    System(#[from] crate::system::SystemError),
    /// The sale could not be created, or a session not signed.
    #[error("setup: {0}")]
    Setup(String),
    /// The auditor could not read its figures.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The run's directory.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Connections.
    pub connections: usize,
    /// Length, s.
    pub seconds: f64,
    /// Answers.
    pub requests: u64,
    /// Answers per second.
    pub requests_per_s: f64,
    /// 202s per second.
    pub accepted_per_s: f64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// The repeaters' answers by status (part of `statuses`).
    pub repeaters_statuses: BTreeMap<u16, u64>,
    /// Failed connections or requests.
    pub errors: u64,
    /// Latency of the 202s, ms: p50, p99, max.
    pub accepted_ms: Quantiles,
    /// Latency of the refusals (429 and 503), ms.
    pub refused_ms: Quantiles,
}

/// Latency quantiles, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One check of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Prints a run's audit lines, then each check as `PASS name: detail` or `FAIL …`.
pub fn print_checks(audit: &[String], checks: &[Check]) {
    for line in audit {
        println!("{line}");
    }
    for c in checks {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The settings.
    pub spec: Spec,
    /// When the run started, ms since the epoch.
    pub started_at_ms: u64,
    /// The gateway at capacity.
    pub baseline: PhaseReport,
    /// `factor` times the capacity.
    pub overload: PhaseReport,
    /// Overload answers per second ÷ baseline answers per second.
    pub requests_vs_baseline: f64,
    /// Overload 202s per second ÷ baseline 202s per second.
    pub accepted_vs_baseline: f64,
    /// Peak RSS of the process (system and generator), MiB.
    pub peak_rss_mib: f64,
    /// RSS samples, (ms since start, MiB).
    pub rss_mib: Vec<(u64, f64)>,
    /// Tickets answered 202 in both phases.
    pub accepted: u64,
    /// The auditor's lines.
    pub audit: Vec<String>,
    /// The checks that never depend on speed.
    pub checks: Vec<Check>,
    /// Whether the refusals' p99 under overload met [`REFUSAL_P99_MS_TARGET`].
    pub refusal_p99_met: bool,
}

impl Report {
    /// Every check passed (speed aside).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The machine-readable summary.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("benchmark".into(), json!("overload"));
            o.insert("refusal_p99_ms_target".into(), json!(REFUSAL_P99_MS_TARGET));
            o.insert("passed".into(), json!(self.passed()));
            o.insert("machine".into(), machine());
        }
        v
    }
}

/// Per-connection figures.
struct Tally {
    statuses: BTreeMap<u16, u64>,
    repeaters: BTreeMap<u16, u64>,
    accepted: Histogram<u64>,
    refused: Histogram<u64>,
    errors: u64,
    tickets: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            statuses: BTreeMap::new(),
            repeaters: BTreeMap::new(),
            accepted: histogram(),
            refused: histogram(),
            errors: 0,
            tickets: Vec::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.repeaters {
            *self.repeaters.entry(k).or_default() += v;
        }
        let _ = self.accepted.add(&other.accepted);
        let _ = self.refused.add(&other.refused);
        self.errors += other.errors;
        self.tickets.extend(other.tickets);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .expect("1 µs to a minute at 3 significant figures are valid bounds")
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Mints the purchase requests: fresh buyers, or a repeater's same token again.
struct Mint {
    state: Arc<AppState>,
    sale: u64,
    path: hyper::Uri,
    load_test: HeaderValue,
    repeat_percent: u64,
    repeaters: Vec<(HeaderValue, Bytes)>,
    next: AtomicU64,
    phase: &'static str,
}

impl Mint {
    /// A session cookie and token body for `user`, the token recorded live in the ledger
    /// as the token step would.
    async fn fresh(&self, user: &str, ttl_ms: u64) -> Option<(HeaderValue, Bytes)> {
        let now = self.state.now_ms();
        let exp = now + ttl_ms;
        let cookie = self.state.sessions.sign(user, exp).ok()?;
        let (token, nonce) = self.state.tokens.issue(user, self.sale, exp);
        let recorded = self
            .state
            .ledger
            .issue(
                self.sale,
                gateway::ledger::Claimant::new(gateway::token::holder_of(user), None),
                nonce,
                exp,
                gateway::ledger::Caps::of_sale(u64::MAX),
                now,
            )
            .await
            .ok()?;
        if !recorded {
            return None;
        }
        Some((
            HeaderValue::from_str(&format!("{SESSION_COOKIE_NAME}={cookie}")).ok()?,
            Bytes::from(json!({ "token": token }).to_string()),
        ))
    }

    /// The next attempt, and whether a repeater makes it.
    async fn request(&self) -> Option<(Request<Full<Bytes>>, bool)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let repeater = n % 100 < self.repeat_percent && !self.repeaters.is_empty();
        let (cookie, body) = if repeater {
            let i = usize::try_from(n).unwrap_or(0) % self.repeaters.len();
            self.repeaters[i].clone()
        } else {
            self.fresh(&format!("ov-{}-{n}", self.phase), MINT_TTL_MS)
                .await?
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = self.path.clone();
        let h = req.headers_mut();
        h.insert(COOKIE, cookie);
        h.insert(LOAD_TEST_HEADER, self.load_test.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some((req, repeater))
    }
}

/// One connection of a phase: attempts back to back until `until`.
async fn connection(addr: SocketAddr, mint: Arc<Mint>, until: Instant) -> Tally {
    let mut tally = Tally::new();
    let mut conn: Option<Conn> = None;
    while Instant::now() < until {
        if conn.is_none() {
            match Conn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((req, repeater)) = mint.request().await else {
            tally.errors += 1;
            continue;
        };
        let Some(c) = conn.as_mut() else { continue };
        let began = Instant::now();
        match c.send(req).await {
            Ok(a) => {
                let us = u64::try_from(began.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, LATENCY_MAX_US);
                let status = a.status.as_u16();
                *tally.statuses.entry(status).or_default() += 1;
                if repeater {
                    *tally.repeaters.entry(status).or_default() += 1;
                }
                match status {
                    202 => {
                        let _ = tally.accepted.record(us);
                        if let Some(t) = a.json()["ticket"].as_str() {
                            tally.tickets.push(t.to_string());
                        }
                    }
                    429 | 503 => {
                        let _ = tally.refused.record(us);
                    }
                    _ => {}
                }
            }
            Err(_) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
    tally
}

async fn phase(
    addr: SocketAddr,
    mint: Arc<Mint>,
    connections: usize,
    length: Duration,
) -> (PhaseReport, Vec<String>) {
    let began = Instant::now();
    let until = began + length;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, mint.clone(), until)))
        .collect();
    let mut all = Tally::new();
    for t in tasks {
        if let Ok(tally) = t.await {
            all.merge(tally);
        } else {
            all.errors += 1;
        }
    }
    let seconds = began.elapsed().as_secs_f64().max(1e-9);
    let requests: u64 = all.statuses.values().sum();
    let accepted = all.statuses.get(&202).copied().unwrap_or(0);
    (
        PhaseReport {
            connections,
            seconds,
            requests,
            requests_per_s: requests as f64 / seconds,
            accepted_per_s: accepted as f64 / seconds,
            statuses: all.statuses,
            repeaters_statuses: all.repeaters,
            errors: all.errors,
            accepted_ms: quantiles(&all.accepted),
            refused_ms: quantiles(&all.refused),
        },
        all.tickets,
    )
}

/// The machine: CPU model, cores, memory (for the record beside the figures).
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(String::new, |m| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({"cpu": model, "cores": cores, "memory_gib": (mem_kib as f64 / 1048576.0).round()})
}

/// This process's resident set, MiB (`VmRSS`), or its peak (`VmHWM`).
pub fn rss_mib(peak: bool) -> f64 {
    let field = if peak { "VmHWM:" } else { "VmRSS:" };
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Waits, at most `wait`, until the order workers have drained the queue.
pub async fn wait_for_drain(state: &AppState, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let lag = state
            .queue
            .stats(&state.config.orders_topic)
            .await
            .ok()
            .and_then(|t| {
                t.groups
                    .iter()
                    .find(|g| g.name == state.config.workers_group)
                    .map(|g| g.lag)
            });
        if lag == Some(0) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the baseline and the overload against a fresh all-in-one system in `dir`.
pub async fn run(spec: Spec, dir: &std::path::Path) -> Result<Report, OverloadError> {
    let overload_connections = spec.capacity.saturating_mul(spec.factor);
    if spec.capacity == 0 || spec.factor == 0 || overload_connections > CONNECTIONS_MAX {
        return Err(OverloadError::Spec(format!(
            "capacity × factor must be within 1..={CONNECTIONS_MAX} connections, not {} × {}",
            spec.capacity, spec.factor
        )));
    }
    if spec.phase_ms == 0 || spec.phase_ms > PHASE_SECS_MAX * 1000 || spec.repeat_percent > 100 {
        return Err(OverloadError::Spec(format!(
            "a phase lasts 1..={PHASE_SECS_MAX} s and repeat_percent is 0..=100 (got {} ms, {}%)",
            spec.phase_ms, spec.repeat_percent
        )));
    }
    let started_at_ms = queue::SystemClock.now_ms();
    let system = AllInOne::start(
        dir,
        SystemOptions {
            database: spec.database.clone(),
            limits: ServeLimits {
                max_in_flight: spec.capacity,
                ..ServeLimits::default()
            },
            ..SystemOptions::default()
        },
    )
    .await?;
    let state = system.state.clone();
    let sale = 1;
    gateway::orders::create_sale_in(
        &state,
        &NewSale {
            id: sale,
            name: "overload".into(),
            price_cents: 100,
            units: SALE_UNITS,
            starts_at_ms: 0,
            pay_window_ms: None,
            ends_at_ms: None,
            token_factor: None,
            per_user_limit: None,
            stock_buckets: None,
        },
    )
    .await
    .map_err(|e| OverloadError::Setup(format!("creating the sale: {}", e.message)))?;

    let rss_done = Arc::new(AtomicBool::new(false));
    let run_start = Instant::now();
    let rss_task = {
        let done = rss_done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = u64::try_from(run_start.elapsed().as_millis()).unwrap_or(u64::MAX);
                samples.push((t, (rss_mib(false) * 10.0).round() / 10.0));
                tokio::time::sleep(RSS_SAMPLE).await;
            }
            samples
        })
    };

    let length = Duration::from_millis(spec.phase_ms);
    let mut tickets = Vec::new();
    let mut phases = Vec::new();
    for (name, connections) in [
        ("baseline", spec.capacity),
        ("overload", overload_connections),
    ] {
        let mut mint = Mint {
            state: state.clone(),
            sale,
            path: hyper::Uri::from_static("/api/sales/1/purchase"),
            load_test: HeaderValue::from_str(&system.load_test_secret)
                .map_err(|e| OverloadError::Setup(e.to_string()))?,
            repeat_percent: spec.repeat_percent,
            repeaters: Vec::new(),
            next: AtomicU64::new(0),
            phase: name,
        };
        // Each phase's repeaters hold one token each for the whole phase.
        let ttl_ms = spec.phase_ms + MINT_TTL_MS;
        for i in 0..REPEATERS {
            let user = format!("ov-{name}-repeater-{i}");
            let minted = mint
                .fresh(&user, ttl_ms)
                .await
                .ok_or_else(|| OverloadError::Setup(format!("minting {user}'s token")))?;
            mint.repeaters.push(minted);
        }
        let (report, t) = phase(system.addr, Arc::new(mint), connections, length).await;
        tickets.extend(t);
        phases.push(report);
    }
    rss_done.store(true, Ordering::Relaxed);
    let rss_samples = rss_task.await.unwrap_or_default();

    let drained = wait_for_drain(&state, DRAIN_WAIT).await;
    let audit = crate::audit::audit(&crate::audit::AuditInput {
        db: system.db.clone(),
        store: Some(state.inventory.store_arc()),
        sales: Some(vec![sale]),
        tickets: tickets.clone(),
        at_rest: drained,
        now_ms: queue::SystemClock.now_ms(),
    })
    .await?;
    let peak_rss_mib = rss_mib(true);
    let _ = system.stop().await?;

    let overload = phases
        .pop()
        .ok_or_else(|| OverloadError::Setup("no phase ran".into()))?;
    let baseline = phases
        .pop()
        .ok_or_else(|| OverloadError::Setup("no phase ran".into()))?;
    let mut checks = Vec::new();
    for p in [&baseline, &overload] {
        // Fresh buyers: a 202, or a refusal for load (429, 503). Repeaters also get 403
        // `bad_token` when an attempt passes the throttle with their already spent token.
        let mut fresh = p.statuses.clone();
        for (k, v) in &p.repeaters_statuses {
            if let Some(n) = fresh.get_mut(k) {
                *n -= v;
            }
        }
        let unexpected = |m: &BTreeMap<u16, u64>, allowed: &[u16]| -> Vec<String> {
            m.iter()
                .filter(|(s, n)| **n > 0 && !allowed.contains(s))
                .map(|(s, n)| format!("{n} × {s}"))
                .collect()
        };
        let fresh_other = unexpected(&fresh, &[202, 429, 503]);
        let repeat_other = unexpected(&p.repeaters_statuses, &[202, 403, 429, 503]);
        checks.push(Check {
            name: "fresh buyers: only 202, 429 or 503",
            passed: fresh_other.is_empty(),
            detail: format!(
                "{} connections: {fresh:?}; others: {fresh_other:?}",
                p.connections
            ),
        });
        checks.push(Check {
            name: "repeaters: only 202, 403 (spent token), 429 or 503",
            passed: repeat_other.is_empty(),
            detail: format!(
                "{} connections: {:?}; others: {repeat_other:?}",
                p.connections, p.repeaters_statuses
            ),
        });
        let server_errors = unexpected(&p.statuses, &(100..500).chain([503]).collect::<Vec<u16>>());
        checks.push(Check {
            name: "no 5xx but 503",
            passed: server_errors.is_empty(),
            detail: format!("{} connections: {server_errors:?}", p.connections),
        });
        checks.push(Check {
            name: "no failed connection or request",
            passed: p.errors == 0,
            detail: format!("{} connections: {} errors", p.connections, p.errors),
        });
    }
    checks.push(Check {
        name: "refusals happened under overload",
        passed: overload.refused_ms.count > 0,
        detail: format!("{} refusals", overload.refused_ms.count),
    });
    checks.push(Check {
        name: "peak RSS under the bound",
        passed: peak_rss_mib <= spec.rss_max_mib as f64,
        detail: format!("{peak_rss_mib:.1} MiB ≤ {} MiB", spec.rss_max_mib),
    });
    checks.push(Check {
        name: "the queue drained",
        passed: drained,
        detail: format!("within {} s", DRAIN_WAIT.as_secs()),
    });
    checks.push(Check {
        name: "audit at rest: no 202 lost",
        passed: audit.passed(),
        detail: format!("{} tickets answered 202", tickets.len()),
    });
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    Ok(Report {
        requests_vs_baseline: ratio(overload.requests_per_s, baseline.requests_per_s),
        accepted_vs_baseline: ratio(overload.accepted_per_s, baseline.accepted_per_s),
        refusal_p99_met: overload.refused_ms.p99 <= REFUSAL_P99_MS_TARGET,
        spec,
        started_at_ms,
        baseline,
        overload,
        peak_rss_mib,
        rss_mib: rss_samples,
        accepted: tickets.len() as u64,
        audit: audit.lines(),
        checks,
    })
}

/// `load-tests overload`'s flags.
#[derive(Debug, clap::Args)]
pub struct OverloadArgs {
    /// The gateway's capacity for the run: its in-flight cap, and the baseline's
    /// connections.
    #[arg(long, default_value_t = Spec::default().capacity)]
    capacity: usize,
    /// The overload's connections are this many times the capacity.
    #[arg(long, default_value_t = Spec::default().factor)]
    factor: usize,
    /// Each phase's length, s.
    #[arg(long, default_value_t = Spec::default().phase_ms / 1000)]
    secs: u64,
    /// Share of the attempts, in percent, from repeaters of a spent token (answered 403, or
    /// 429/503 when throttled or shed).
    #[arg(long, default_value_t = Spec::default().repeat_percent)]
    repeat_percent: u64,
    /// The bound on the process's peak RSS, MiB.
    #[arg(long, default_value_t = Spec::default().rss_max_mib)]
    rss_max_mib: u64,
    /// The orders database (default: SQLite in a temporary directory).
    #[arg(long)]
    database: Option<String>,
    /// Also write the JSON summary here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// Runs `load-tests overload`: exit 0 when every check passed and the refusals' p99 met
/// its target, 1 when not, 2 when the run could not go on.
pub async fn run_cli(args: OverloadArgs) -> std::process::ExitCode {
    let spec = Spec {
        capacity: args.capacity,
        factor: args.factor,
        phase_ms: args.secs.saturating_mul(1000),
        repeat_percent: args.repeat_percent,
        rss_max_mib: args.rss_max_mib,
        database: args.database,
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("load-tests: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let report = match run(spec, dir.path()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load-tests: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    print_checks(&report.audit, &report.checks);
    println!(
        "{} refusals' p99 under overload: {:.2} ms (target ≤ {REFUSAL_P99_MS_TARGET} ms)",
        if report.refusal_p99_met {
            "PASS"
        } else {
            "FAIL"
        },
        report.overload.refused_ms.p99
    );
    let mut summary = report.to_json();
    if let Some(o) = summary.as_object_mut() {
        // The samples go to the file only; the printed summary stays short.
        o.remove("rss_mib");
        o.remove("audit");
    }
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    println!("{text}");
    if let Some(path) = args.json_out {
        let full = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, full + "\n") {
            eprintln!("load-tests: {}: {e}", path.display());
            return std::process::ExitCode::from(2);
        }
    }
    if report.passed() && report.refusal_p99_met {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("load-tests: FAILED (see above)");
        std::process::ExitCode::FAILURE
    }
}
