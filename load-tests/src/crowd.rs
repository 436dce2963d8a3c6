//! The flash crowd: simulated people against a running system, over HTTP on loopback.
//!
//! A run goes through five phases, each bounded in count and by the scenario's deadline:
//! 1. **Sign-in**: every person logs in (`POST /api/login`).
//! 2. **Ramp**: the sale is created to open `opens_in_ms` later; meanwhile humans view the
//!    sale page and poll its countdown (`GET /sales/{id}`, `GET /api/sales/{id}`).
//! 3. **Spike**: from the opening, `attempts` purchase attempts: humans ask for a token
//!    (captcha skipped with the load-test secret) and buy with it, click again after some
//!    accepted purchases, honour `Retry-After` after 429/503 and come back after a refusal;
//!    bots fire forged tokens, reused tokens and token requests without a captcha, without
//!    pause. Every bot request must be refused.
//! 4. **Decisions**: every accepted ticket is polled until a worker decided it.
//! 5. **Payment**: a share of the orders is paid; the rest are left to be cancelled.
//!
//! A sampler reads the system's live figures (`/admin/api/live`) every second for the
//! backlog, enqueue and drain rates and orders. Latency is recorded per route and outcome
//! in HDR histograms; counts per second per outcome.
//!
//! Every random choice (who acts, bots' tricks, think times, repeat clicks, who pays, the
//! run id) comes from the run's seed ([`seed_of`]: the scenario's, [`SEED_ENV`]'s or a
//! random one, printed at start and recorded with the settings): one RNG for the run and
//! one per spike connection, so the connections share no RNG lock.
//!
//! The generator shares the machine's cores with the system under test, so what it spends
//! per request is taken from the system: every answer is still read whole, checked and
//! counted with its latency, but
//! - parsed as JSON into a small struct of the fields the crowd acts on (`Reply`) rather
//!   than a tree of every field, and the gateway's constant sold-out refusal (nine answers
//!   in ten of a large crowd) compared whole with that constant instead of parsed;
//! - its outcome is an index into [`KNOWN_OUTCOMES`] ([`Outcome`]) and its route a
//!   `Route`, so that counting it (per 100 ms slot, per route and outcome) is an array
//!   index, with no hashing, string comparison or allocation;
//! - each task keeps its answers and adds them to the run's one recording `RECORD_BATCH`
//!   at a time, so the shared lock is taken once per batch rather than once per answer;
//! - requests are built from parts made once (paths, the `Host` and secret headers, each
//!   person's cookie, the purchase body of each token);
//! - each connection ([`loadgen::Conn`]) writes and reads HTTP/1.1 in its own task, with no
//!   driver task or channel beside it.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::error::SOLD_OUT_BODY;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, COOKIE, HOST, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use loadgen::{Answer, Conn, request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::outcome::{KNOWN, Outcome};
use crate::record::{Latency, RunRecord};
use crate::scenario::{Scenario, ScenarioError};
use crate::timeline::{SystemSample, Timeline};

/// Header of the load-test secret (the gateway's).
pub const LOAD_TEST_HEADER: &str = gateway::config::LOAD_TEST_HEADER;
/// Reused tokens the bots keep at most.
const SPENT_TOKENS_MAX: usize = 64;
/// Tries at picking a person ready to act before a connection pauses.
const PICK_TRIES: usize = 16;
/// A connection with nobody ready to act waits this long before looking again.
const IDLE_PAUSE: Duration = Duration::from_millis(2);
/// A bot's pause between requests: rapid, and blind to `Retry-After`.
const BOT_PAUSE: Duration = Duration::from_millis(20);
/// How long a human thinks before trying again after a refusal without `Retry-After`.
const THINK_MS: std::ops::Range<u64> = 100..600;
/// Highest latency recorded, µs (a minute).
const LATENCY_MAX_US: u64 = 60_000_000;
/// Answers a task keeps before it adds them to the run's recording under its lock (so
/// the lock is taken once per this many answers rather than once per answer); what a task
/// holds at its end is added when the run's figures are put together.
const RECORD_BATCH: usize = 256;
/// How often the system's live figures are read.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How often the progress bar is redrawn.
const PROGRESS_PERIOD: Duration = Duration::from_millis(100);
/// Without a terminal, a progress line at least this often.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);
/// Tickets polled at once per connection before it moves on.
const TICKET_POLL_PAUSE: Duration = Duration::from_millis(100);
/// The environment variable a run's seed is read from when the scenario names none (the
/// `load-tests` binary's `--seed` reads it too), so that a test's crowd can be replayed.
pub const SEED_ENV: &str = "LOAD_TESTS_SEED";
/// Spreads the stream numbers of one seed apart (the 64-bit golden ratio), so that the
/// streams of nearby seeds do not coincide.
const STREAM_SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;
/// The stream of the run itself (its id, who pays); spike connection `i` has stream
/// `1 + i`.
const RUN_STREAM: u64 = 0;

/// The codes the crowd counts answers under with an index of their own (no allocation).
pub use crate::outcome::KNOWN_OUTCOMES;

/// The routes the crowd's answers are counted under, by the names the report gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    Login,
    Page,
    Sales,
    Token,
    Purchase,
    Ticket,
    Pay,
    /// The sampler's reads of the system's live figures (timeline only).
    Live,
}

impl Route {
    /// Every route, in the order of their indices.
    const ALL: [Route; 8] = [
        Route::Login,
        Route::Page,
        Route::Sales,
        Route::Token,
        Route::Purchase,
        Route::Ticket,
        Route::Pay,
        Route::Live,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Login => "login",
            Route::Page => "page",
            Route::Sales => "sales",
            Route::Token => "token",
            Route::Purchase => "purchase",
            Route::Ticket => "ticket",
            Route::Pay => "pay",
            Route::Live => "live",
        }
    }

    /// Its index in [`Route::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// The fields of an answer's JSON body the crowd acts on (the rest are read past, still
/// checked to be JSON): an error's code, a token, a ticket, a ticket's state with its
/// order id or reason. A body that is not a JSON object reads as no fields.
#[derive(Debug, Default, Deserialize)]
struct ReplyFields<'a> {
    /// Borrowed from the body when it has no escapes (every gateway code).
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// What the crowd keeps of an answer's body.
#[derive(Debug, Default, PartialEq)]
struct Reply {
    token: Option<String>,
    ticket: Option<String>,
    state: Option<String>,
    order_id: Option<String>,
    reason: Option<String>,
}

/// The body of a purchase with `token`: `{"token":"…"}`, the token JSON-escaped.
fn purchase_body(token: &str) -> Bytes {
    let mut b = Vec::with_capacity(token.len() + 16);
    b.extend_from_slice(br#"{"token":"#);
    // Writing a string into a Vec cannot fail; on the impossible error the body is
    // refused by the gateway, visibly.
    let _ = serde_json::to_writer(&mut b, token);
    b.push(b'}');
    Bytes::from(b)
}

/// The body of a purchase with the forged token `forged.{n:032x}` (what
/// `purchase_body(&format!("forged.{n:032x}"))` gives, without the two allocations and
/// the formatting: a bot sends one with every third attempt).
fn forged_body(n: u128) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const HEAD: &[u8] = br#"{"token":"forged."#;
    let mut b = Vec::with_capacity(HEAD.len() + 32 + 2);
    b.extend_from_slice(HEAD);
    for shift in (0..32).rev() {
        b.push(HEX[((n >> (4 * shift)) & 0xf) as usize]);
    }
    b.extend_from_slice(br#""}"#);
    Bytes::from(b)
}

/// Parts of the requests made once per run: the `Host` header, the load-test secret's and
/// the JSON content type.
#[derive(Debug, Clone)]
struct Wire {
    host: HeaderValue,
    /// The secret header's name, parsed once, and its value.
    load_test: Option<(HeaderName, HeaderValue)>,
    json: HeaderValue,
}

impl Wire {
    fn of(target: &Target) -> Wire {
        Wire {
            host: HeaderValue::from_str(&target.addr.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            // A static name: cloning it per request copies no bytes and counts no
            // references (the gateway's constant is a valid lower-case header name).
            load_test: HeaderValue::from_str(&target.load_test_secret)
                .ok()
                .map(|v| (HeaderName::from_static(LOAD_TEST_HEADER), v)),
            json: HeaderValue::from_static("application/json"),
        }
    }

    /// A JSON `POST` to `uri` as the person with `cookie`, with the load-test secret when
    /// `secret`.
    fn post(
        &self,
        uri: &Uri,
        cookie: &HeaderValue,
        secret: bool,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(COOKIE, cookie.clone());
        h.insert(CONTENT_TYPE, self.json.clone());
        if secret && let Some((name, value)) = &self.load_test {
            h.insert(name.clone(), value.clone());
        }
        req
    }
}

/// The system under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address (loopback only).
    pub addr: SocketAddr,
    /// The admin secret (to create the sale and read the live figures).
    pub admin_secret: String,
    /// The load-test secret (humans skip the captcha with it).
    pub load_test_secret: String,
    /// For the report.
    pub label: String,
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum CrowdError {
    /// The target is not a loopback address.
    #[error("load tests only talk to loopback addresses, not {0}")]
    NotLoopback(SocketAddr),
    /// A bad scenario.
    #[error("scenario: {0}")]
    Scenario(#[from] ScenarioError),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(String),
    /// A set-up step (sign-in, creating the sale) failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The seed in the environment is not a number.
    #[error("{SEED_ENV}={0:?} is not a seed (an unsigned 64-bit number)")]
    Seed(String),
    /// One of the crowd's own tasks panicked (a bug in the generator): the run stops
    /// rather than report figures without that task's answers.
    #[error("a crowd task failed, so the figures would miss its answers: {0}")]
    TaskFailed(String),
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct CrowdOutcome {
    /// The figures.
    pub record: RunRecord,
    /// Every ticket the system accepted (202), for the auditor.
    pub tickets: Vec<String>,
    /// The seed of the run's random choices (also in `record.settings`).
    pub seed: u64,
}

/// The seed of a run: the scenario's, else [`SEED_ENV`]'s, else a random one.
pub fn seed_of(scenario: &Scenario) -> Result<u64, CrowdError> {
    if let Some(seed) = scenario.seed {
        return Ok(seed);
    }
    match std::env::var(SEED_ENV) {
        Ok(v) => v.trim().parse().map_err(|_| CrowdError::Seed(v)),
        Err(_) => Ok(rand::random()),
    }
}

/// The random stream `stream` of a run seeded with `seed`. Each concurrent task has its
/// own, so tasks share no RNG (and no lock on one), and each task's choices replay from the
/// seed; which task meets which person still depends on timing.
fn rng_of(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(STREAM_SPREAD))
}

#[derive(Debug)]
struct Person {
    name: String,
    /// Every cookie of the sign-in as one `Cookie` value (empty until signed in).
    cookie: HeaderValue,
    bot: bool,
    /// The purchase body with the token held ([`purchase_body`]), made once per token.
    token: Option<Bytes>,
    not_before: Instant,
    /// A purchase of theirs was accepted.
    accepted: bool,
    done: bool,
}

/// One answer as a task saw it, until it is added to the run's [`Recording`].
#[derive(Debug, Clone)]
struct Sample {
    /// Ms after the run started.
    at_ms: u64,
    /// How long it took, µs (within the histograms' bounds).
    took_us: u64,
    route: Route,
    outcome: Outcome,
    attempt: bool,
}

/// Per-task counts, added up at the end, and the task's answers not yet in the run's
/// recording (at most [`RECORD_BATCH`]).
#[derive(Debug, Default)]
struct Tally {
    errors: u64,
    requests: u64,
    attempts: u64,
    pending: Vec<Sample>,
}

impl Tally {
    /// Counts one answer; every [`RECORD_BATCH`] answers, adds them to `run`'s recording.
    fn record(&mut self, run: &Run, sample: Sample) {
        // The sampler's own reads of the live figures are the harness watching, not the
        // crowd: they are in the timeline, not in the request counts.
        if sample.route != Route::Live {
            self.requests += 1;
            if sample.attempt {
                self.attempts += 1;
            }
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(RECORD_BATCH);
        }
        self.pending.push(sample);
        if self.pending.len() >= RECORD_BATCH {
            self.flush(run);
        }
    }

    /// Adds the answers held to `run`'s recording.
    fn flush(&mut self, run: &Run) {
        if !self.pending.is_empty() {
            run.lock(&run.timeline).add(self.pending.drain(..));
        }
    }
}

/// Every answer of the run: the timeline and the latency per route and outcome. One set of
/// latency histograms for the run rather than one per connection: an HDR histogram from
/// 1 µs to a minute at 3 significant figures is about 130 KiB, and 256 connections × a
/// dozen (route, outcome) pairs made hundreds of MiB, zeroed as each pair first appeared
/// (in the middle of the spike, when `sold_out` does). The tasks add their answers under
/// its lock [`RECORD_BATCH`] at a time ([`Tally::record`]), and what they hold at their end
/// when the run's figures are put together ([`Tally::merged`]).
#[derive(Debug)]
struct Recording {
    timeline: Timeline,
    /// Latency by route and known outcome: `known[route.index() * KNOWN + outcome index]`.
    known: Vec<Option<Histogram<u64>>>,
    /// Latency by route and any other outcome.
    others: BTreeMap<(Route, Box<str>), Histogram<u64>>,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            timeline: Timeline::default(),
            known: vec![None; Route::ALL.len() * KNOWN],
            others: BTreeMap::new(),
        }
    }
}

impl Recording {
    /// Counts answers (each as [`Recording::record`] does).
    fn add(&mut self, samples: impl IntoIterator<Item = Sample>) {
        for s in samples {
            self.record(s.at_ms, s.route, &s.outcome, s.took_us, s.attempt);
        }
    }

    /// Counts one answer `at_ms` after the run started that took `us` µs (clamped to the
    /// histograms' bounds).
    fn record(&mut self, at_ms: u64, route: Route, outcome: &Outcome, us: u64, attempt: bool) {
        self.timeline
            .record(at_ms, route.name(), outcome, us, attempt);
        // The sampler's own reads of the live figures are the harness watching, not the
        // crowd: they are not in the request counts, so not in the latency report either.
        if route == Route::Live {
            return;
        }
        // A known outcome's histogram is found by index: no hashing, no allocation.
        let h = match outcome {
            Outcome::Known(i) => self.known[route.index() * KNOWN + usize::from(*i)]
                .get_or_insert_with(new_histogram),
            Outcome::Other(code) => self
                .others
                .entry((route, code.clone()))
                .or_insert_with(new_histogram),
        };
        let _ = h.record(us.clamp(1, LATENCY_MAX_US));
    }

    /// Every (route, outcome) with answers, and their latency histogram.
    fn latencies(&self) -> impl Iterator<Item = (Route, &str, &Histogram<u64>)> {
        let known = self.known.iter().enumerate().filter_map(|(i, h)| {
            let h = h.as_ref()?;
            Some((Route::ALL[i / KNOWN], KNOWN_OUTCOMES[i % KNOWN], h))
        });
        let others = self
            .others
            .iter()
            .map(|((route, code), h)| (*route, &**code, h));
        known.chain(others)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .expect("1 µs to a minute at 3 significant figures are valid bounds")
}

/// The outcome of an answer: `ok`/`accepted` for successes, else the JSON error code
/// (`error`), else `http_STATUS`.
fn outcome_of(a: &Answer, error: Option<&str>) -> Outcome {
    if a.status.as_u16() == 202 {
        return Outcome::ACCEPTED;
    }
    if a.status.is_success() {
        return Outcome::OK;
    }
    match error {
        Some(code) => Outcome::of(code),
        None => Outcome::of_status(a.status.as_u16()),
    }
}

/// Reads an answer's body: its outcome and the fields the crowd acts on.
fn read_reply(a: &Answer) -> (Outcome, Reply) {
    // Nine answers in ten of a large crowd: the gateway's constant sold-out refusal, read
    // whole by comparing it with that constant rather than parsing it ([`parse_reply`]
    // reads it the same).
    if a.status == hyper::StatusCode::GONE && a.body == SOLD_OUT_BODY.as_bytes() {
        return (Outcome::SOLD_OUT, Reply::default());
    }
    parse_reply(a)
}

/// Reads an answer's body as JSON: its outcome and the fields the crowd acts on.
fn parse_reply(a: &Answer) -> (Outcome, Reply) {
    let fields: ReplyFields<'_> = if a.body.is_empty() {
        ReplyFields::default()
    } else {
        serde_json::from_slice(&a.body).unwrap_or_default()
    };
    let outcome = outcome_of(a, fields.error.as_deref());
    let reply = Reply {
        token: fields.token,
        ticket: fields.ticket,
        state: fields.state,
        order_id: fields.order_id,
        reason: fields.reason,
    };
    (outcome, reply)
}

fn retry_after(a: &Answer) -> Option<Duration> {
    a.headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(60)))
}

/// Shared state of a run.
struct Run {
    scenario: Scenario,
    target: Target,
    /// The seed every random choice of the run derives from.
    seed: u64,
    sale: AtomicU64,
    people: Vec<Mutex<Person>>,
    /// Request parts made once.
    wire: Wire,
    start: Instant,
    deadline: Instant,
    opened: Mutex<Option<Instant>>,
    attempts_left: AtomicU64,
    accepted: Mutex<Vec<(String, usize)>>,
    /// Purchase bodies of spent tokens, for the bots to reuse.
    spent_tokens: Mutex<Vec<Bytes>>,
    /// When the earliest `sold_out` answer arrived, ns after [`Run::start`] (`u64::MAX`:
    /// none yet). Lowered without a lock and only when an answer is earlier (nine answers
    /// in ten of a large crowd are `sold_out`, and most are later): the tasks learn of the
    /// sell-out in any order, so the first to note it is not always the earliest.
    first_sold_out_ns: AtomicU64,
    /// When the last accepted purchase attempt began, ns after [`Run::start`], plus one
    /// (0: none yet); raised with `fetch_max`.
    last_accepted_began_ns: AtomicU64,
    bots_refused: AtomicU64,
    bots_accepted: AtomicU64,
    /// People done (accepted, or told they already bought).
    done: AtomicUsize,
    stop: AtomicBool,
    /// Every answer by 100 ms slot and by route and outcome, and the system's figures (one
    /// for the run, which the tasks add to [`RECORD_BATCH`] answers at a time).
    timeline: Mutex<Recording>,
    /// What the run is doing now, for the progress display.
    phase: Mutex<&'static str>,
    /// The system's latest figures, one line, for the progress display.
    figures: Mutex<String>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("scenario", &self.scenario.name)
            .finish_non_exhaustive()
    }
}

impl Run {
    fn sale(&self) -> u64 {
        self.sale.load(Ordering::Relaxed)
    }

    fn past_deadline(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ms since the run started.
    fn elapsed_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts an answer to a request sent at `began` in `tally` (and so, soon, in the
    /// run's recording).
    fn record(
        &self,
        tally: &mut Tally,
        began: Instant,
        route: Route,
        outcome: Outcome,
        attempt: bool,
    ) {
        let now = Instant::now();
        let took_us = u64::try_from(now.saturating_duration_since(began).as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_US);
        let sample = Sample {
            at_ms: self.elapsed_ms(now),
            took_us,
            route,
            outcome,
            attempt,
        };
        tally.record(self, sample);
    }

    /// Attempts sent so far.
    fn attempts_sent(&self) -> u64 {
        self.scenario
            .attempts
            .saturating_sub(self.attempts_left.load(Ordering::Relaxed))
    }
}

/// Sends one request and records it; `None` when the connection failed (it is replaced).
async fn send(
    run: &Run,
    conn: &mut Option<Conn>,
    tally: &mut Tally,
    route: Route,
    attempt: bool,
    req: Request<Full<Bytes>>,
) -> Option<(Answer, Reply, Outcome)> {
    if conn.is_none() {
        match Conn::connect(run.target.addr).await {
            Ok(c) => *conn = Some(c),
            Err(_) => {
                tally.errors += 1;
                return None;
            }
        }
    }
    let c = conn.as_mut()?;
    let began = Instant::now();
    match c.send(req).await {
        Ok(a) => {
            let (outcome, reply) = read_reply(&a);
            run.record(tally, began, route, outcome.clone(), attempt);
            Some((a, reply, outcome))
        }
        Err(_) => {
            *conn = None;
            tally.errors += 1;
            run.record(tally, began, route, Outcome::CONNECTION_ERROR, attempt);
            None
        }
    }
}

fn admin_auth(run: &Run) -> String {
    format!("Bearer {}", run.target.admin_secret)
}

/// Phase 1: every person signs in.
async fn sign_in(run: Arc<Run>, next: Arc<AtomicUsize>) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= run.people.len() || run.past_deadline() {
            return tally;
        }
        let name = run.lock(&run.people[i]).name.clone();
        let req = request("POST", "/api/login", &[], Some(&json!({ "user": name })));
        if let Some((a, _, _)) = send(&run, &mut conn, &mut tally, Route::Login, false, req).await {
            // Every cookie of the sign-in (the session and the route cookie nginx hashes
            // on, which a gateway under `--route-cookie` asks for), as one `Cookie` value.
            let cookie = a
                .headers
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split(';').next())
                .collect::<Vec<_>>()
                .join("; ");
            if let Ok(cookie) = HeaderValue::from_str(&cookie)
                && !cookie.is_empty()
            {
                run.lock(&run.people[i]).cookie = cookie;
            }
        }
    }
}

/// Phase 2: page views and countdown polls until the sale opens.
async fn ramp(run: Arc<Run>, next: Arc<AtomicUsize>, opens_at: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    let humans = run.people.len();
    let total = humans * run.scenario.polls_per_user as usize;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total || Instant::now() >= opens_at || run.past_deadline() {
            break;
        }
        let person = &run.people[i % humans];
        let (bot, cookie) = {
            let p = run.lock(person);
            (p.bot, p.cookie.clone())
        };
        if bot {
            continue;
        }
        let sale = run.sale();
        let (route, path) = if i / humans == 0 {
            (Route::Page, format!("/sales/{sale}"))
        } else {
            (Route::Sales, format!("/api/sales/{sale}"))
        };
        let mut req = request("GET", &path, &[], None);
        req.headers_mut().insert(COOKIE, cookie);
        send(&run, &mut conn, &mut tally, route, false, req).await;
    }
    tokio::time::sleep_until(opens_at.into()).await;
    tally
}

/// Phase 3: the spike, on connection `index`.
async fn spike(run: Arc<Run>, index: usize) -> Tally {
    let mut task = SpikeTask {
        paths: SalePaths::of(run.sale()),
        rng: rng_of(run.seed, 1 + index as u64),
        run,
        conn: None,
        tally: Tally::default(),
    };
    while !task.run.past_deadline() {
        let Some(Ready {
            i,
            bot,
            cookie,
            token,
        }) = task.pick_ready()
        else {
            if task.run.done.load(Ordering::Relaxed) >= task.run.people.len() {
                break;
            }
            tokio::time::sleep(IDLE_PAUSE).await;
            continue;
        };
        // One attempt from the budget.
        if !take_attempt(&task.run) {
            break;
        }
        if bot {
            task.bot(i, &cookie).await;
        } else {
            task.human(i, &cookie, token).await;
        }
    }
    task.tally
}

/// The purchase routes of the sale under test.
#[derive(Debug)]
struct SalePaths {
    token: Uri,
    purchase: Uri,
}

impl SalePaths {
    fn of(sale: u64) -> SalePaths {
        // A number in a fixed path is always a valid URI; the fallback keeps this total.
        let uri = |p: String| p.parse().unwrap_or_else(|_| Uri::from_static("/"));
        SalePaths {
            token: uri(format!("/api/sales/{sale}/token")),
            purchase: uri(format!("/api/sales/{sale}/purchase")),
        }
    }
}

/// The body of a human's token request (the captcha skipped with the load-test secret).
const HUMAN_TOKEN_BODY: &[u8] = b"{}";
/// The body of a bot's token request: no captcha solved.
const BOT_TOKEN_BODY: &[u8] = br#"{"captcha_id":"","answer":""}"#;

/// One connection of the spike: it acts for whoever is ready, one attempt at a time.
#[derive(Debug)]
struct SpikeTask {
    run: Arc<Run>,
    paths: SalePaths,
    conn: Option<Conn>,
    tally: Tally,
    /// This connection's random choices: who acts, bots' tricks, think times, repeats.
    rng: StdRng,
}

/// A person ready to act, and what the attempt needs of them (read under the one lock
/// that found them ready).
struct Ready {
    i: usize,
    bot: bool,
    cookie: HeaderValue,
    token: Option<Bytes>,
}

impl SpikeTask {
    /// Someone ready to act (not done, not waiting), after at most [`PICK_TRIES`] draws.
    fn pick_ready(&mut self) -> Option<Ready> {
        let now = Instant::now();
        for _ in 0..PICK_TRIES {
            let i = self.rng.random_range(0..self.run.people.len());
            let p = self.run.lock(&self.run.people[i]);
            if !p.done && p.not_before <= now {
                return Some(Ready {
                    i,
                    bot: p.bot,
                    cookie: p.cookie.clone(),
                    token: p.token.clone(),
                });
            }
        }
        None
    }

    /// A bot's attempt: one of three tricks, each of which must be refused.
    async fn bot(&mut self, i: usize, cookie: &HeaderValue) {
        let run = &self.run;
        run.lock(&run.people[i]).not_before = Instant::now() + BOT_PAUSE;
        // Rapid repeats of the three tricks; each must be refused.
        let trick = self.rng.random_range(0..3);
        let reused = run.lock(&run.spent_tokens).first().cloned();
        let route = if trick == 0 || (trick == 1 && reused.is_some()) {
            Route::Purchase
        } else {
            Route::Token
        };
        let req = match (trick, reused) {
            (0, _) => run.wire.post(
                &self.paths.purchase,
                cookie,
                false,
                forged_body(self.rng.random::<u128>()),
            ),
            (1, Some(spent)) => run.wire.post(&self.paths.purchase, cookie, false, spent),
            _ => run.wire.post(
                &self.paths.token,
                cookie,
                false,
                Bytes::from_static(BOT_TOKEN_BODY),
            ),
        };
        if let Some((a, reply, _)) =
            send(run, &mut self.conn, &mut self.tally, route, true, req).await
        {
            if a.status.as_u16() == 202 || a.status.is_success() && route == Route::Token {
                run.bots_accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = reply.ticket {
                    run.lock(&run.accepted).push((t, i));
                }
            } else {
                run.bots_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A human's attempt: a token if they hold none, then at once the purchase with it (as
    /// a person clicks Buy right after solving the captcha).
    async fn human(&mut self, i: usize, cookie: &HeaderValue, mut token: Option<Bytes>) {
        loop {
            let now = Instant::now();
            let think = Duration::from_millis(self.rng.random_range(THINK_MS));
            let Some(held) = token.take() else {
                match self.ask_token(i, cookie, now, think).await {
                    // The purchase right after takes one more attempt from the budget.
                    Some(t) if take_attempt(&self.run) => {
                        token = Some(t);
                        continue;
                    }
                    _ => break,
                }
            };
            self.buy(i, cookie, held, now, think).await;
            break;
        }
    }

    /// Asks for a token with the load-test secret; the token, or `None` after a refusal
    /// (the person then waits for `Retry-After` or thinks for `think`).
    async fn ask_token(
        &mut self,
        i: usize,
        cookie: &HeaderValue,
        now: Instant,
        think: Duration,
    ) -> Option<Bytes> {
        let run = &self.run;
        let req = run.wire.post(
            &self.paths.token,
            cookie,
            true,
            Bytes::from_static(HUMAN_TOKEN_BODY),
        );
        let (a, reply, outcome) = send(
            run,
            &mut self.conn,
            &mut self.tally,
            Route::Token,
            true,
            req,
        )
        .await?;
        let mut p = run.lock(&run.people[i]);
        if a.status.is_success() {
            p.token = reply.token.as_deref().map(purchase_body);
            return p.token.clone();
        }
        if outcome == Outcome::SOLD_OUT {
            note_sold_out(run, Instant::now());
        }
        p.not_before = now + retry_after(&a).unwrap_or(think);
        None
    }

    /// Buys with the token `held` and acts on the answer: accepted (maybe a double click
    /// follows), already bought, a spent token, sold out, or come back later.
    async fn buy(
        &mut self,
        i: usize,
        cookie: &HeaderValue,
        held: Bytes,
        now: Instant,
        think: Duration,
    ) {
        let run = &self.run;
        let req = run
            .wire
            .post(&self.paths.purchase, cookie, false, held.clone());
        let Some((a, reply, outcome)) = send(
            run,
            &mut self.conn,
            &mut self.tally,
            Route::Purchase,
            true,
            req,
        )
        .await
        else {
            return;
        };
        let ticket = reply.ticket;
        let mut p = run.lock(&run.people[i]);
        match (a.status.as_u16(), outcome.as_str()) {
            (202, _) | (503, "outcome_unknown") if ticket.is_some() => {
                note_accepted(run, now);
                if let Some(t) = ticket {
                    run.lock(&run.accepted).push((t, i));
                }
                {
                    let mut spent = run.lock(&run.spent_tokens);
                    if spent.len() < SPENT_TOKENS_MAX {
                        spent.push(held);
                    }
                }
                p.accepted = true;
                // Some people click again with the same token (a double click), which
                // must be refused; the rest are done.
                if self.rng.random_bool(run.scenario.repeat_share) {
                    p.not_before = now;
                } else {
                    finish(run, &mut p);
                }
            }
            (409, _) => finish(run, &mut p), // already bought
            (_, "bad_token") => {
                p.token = None;
                if p.accepted {
                    finish(run, &mut p); // the refused repeat of an accepted purchase
                }
            }
            (_, "sold_out") => {
                note_sold_out(run, Instant::now());
                p.not_before = now + retry_after(&a).unwrap_or(think);
            }
            _ => {
                // Throttled, busy, unavailable: the token is kept; come back later.
                p.not_before = now + retry_after(&a).unwrap_or(think);
            }
        }
    }
}

/// Takes one attempt from the run's budget; false when it is spent.
fn take_attempt(run: &Run) -> bool {
    run.attempts_left
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

fn finish(run: &Run, p: &mut Person) {
    if !p.done {
        p.done = true;
        p.token = None;
        run.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Notes a `sold_out` answer that arrived `at` (when it was read, not when its attempt
/// began: an attempt begun early can be answered late, after a connect that waited out a
/// dropped handshake, say, and its start would date the sale's end before it happened).
/// The earliest arrival bounds the sale's end from above, within one answer's latency.
fn note_sold_out(run: &Run, at: Instant) {
    let ns = ns_since_start(run, at); // never u64::MAX, which means none
    // A load first: the read-modify-write only when this answer is the earliest so far.
    if ns < run.first_sold_out_ns.load(Ordering::Relaxed) {
        run.first_sold_out_ns.fetch_min(ns, Ordering::Relaxed);
    }
}

/// Notes that a purchase attempt begun `began` was accepted.
fn note_accepted(run: &Run, began: Instant) {
    let ns = ns_since_start(run, began) + 1; // never 0, which means none
    if ns > run.last_accepted_began_ns.load(Ordering::Relaxed) {
        run.last_accepted_began_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// `at` in ns after [`Run::start`], at most `u64::MAX - 1` (each note keeps one value of
/// its atomic for "none").
fn ns_since_start(run: &Run, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(run.start).as_nanos())
        .unwrap_or(u64::MAX)
        .min(u64::MAX - 1)
}

/// When the last accepted purchase attempt began, if one was accepted.
fn last_accepted_began(run: &Run) -> Option<Instant> {
    let ns = run.last_accepted_began_ns.load(Ordering::Relaxed);
    (ns != 0).then(|| run.start + Duration::from_nanos(ns - 1))
}

/// When the earliest `sold_out` answer arrived, if one did.
fn first_sold_out(run: &Run) -> Option<Instant> {
    let ns = run.first_sold_out_ns.load(Ordering::Relaxed);
    (ns != u64::MAX).then(|| run.start + Duration::from_nanos(ns))
}

/// Phase 4: polls every accepted ticket until decided; returns (ticket → (state, order id,
/// reason, when decided)).
async fn decisions(
    run: Arc<Run>,
    work: Arc<Mutex<VecDeque<(String, usize)>>>,
    results: Arc<Mutex<Vec<Decision>>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    loop {
        if run.past_deadline() {
            return tally;
        }
        let item = run.lock(&work).pop_back();
        let Some((ticket, who)) = item else {
            return tally;
        };
        let req = request("GET", &format!("/api/tickets/{ticket}"), &[], None);
        let answer = send(&run, &mut conn, &mut tally, Route::Ticket, false, req).await;
        let decided = answer.and_then(|(a, reply, _)| {
            if !a.status.is_success() {
                return None;
            }
            match reply.state.as_deref() {
                Some("ordered") => Some(Decision {
                    who,
                    order_id: reply.order_id,
                    reason: None,
                    at: Instant::now(),
                }),
                Some("rejected") => Some(Decision {
                    who,
                    order_id: None,
                    reason: Some(reply.reason.unwrap_or_else(|| "unknown".to_string())),
                    at: Instant::now(),
                }),
                _ => None,
            }
        });
        match decided {
            Some(d) => run.lock(&results).push(d),
            None => {
                // Still in line: to the far end of the work list (taken last), and a short
                // pause.
                run.lock(&work).push_front((ticket, who));
                tokio::time::sleep(TICKET_POLL_PAUSE).await;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Decision {
    who: usize,
    order_id: Option<String>,
    reason: Option<String>,
    at: Instant,
}

/// Phase 5: pays the given orders; returns how many were paid.
async fn pay(
    run: Arc<Run>,
    work: Arc<Mutex<Vec<(String, HeaderValue)>>>,
    paid: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = None;
    loop {
        if run.past_deadline() {
            return tally;
        }
        let item = run.lock(&work).pop();
        let Some((order, cookie)) = item else {
            return tally;
        };
        let mut req = request("POST", &format!("/api/orders/{order}/pay"), &[], None);
        req.headers_mut().insert(COOKIE, cookie);
        if let Some((a, _, _)) = send(&run, &mut conn, &mut tally, Route::Pay, false, req).await
            && a.status.is_success()
        {
            paid.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The sampler: the system's live figures (`/admin/api/live`) about every second until
/// stopped, into the run's timeline and the progress display's line.
async fn sampler(run: Arc<Run>, done: Arc<AtomicBool>) {
    let mut conn: Option<Conn> = None;
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) && !run.past_deadline() {
        tick.tick().await;
        let auth = admin_auth(&run);
        let req = request("GET", "/admin/api/live", &[("authorization", &auth)], None);
        let answer = send(&run, &mut conn, &mut tally, Route::Live, false, req).await;
        // Its answer in the timeline now (its tally is not kept).
        tally.flush(&run);
        if let Some((a, _, _)) = answer
            && a.status.is_success()
        {
            // Once a second: the whole tree is fine here.
            let body = a.json();
            let c = &body["current"];
            let sample = SystemSample {
                backlog: c["lag"].as_u64(),
                enqueued_per_s: c["enqueue_rate"].as_f64(),
                drained_per_s: c["drain_rate"].as_f64(),
                orders: c["orders"].as_u64(),
            };
            let at_ms = run.elapsed_ms(Instant::now());
            run.lock(&run.timeline).timeline.sample(at_ms, sample);
            *run.lock(&run.figures) = format!(
                "{:.0} req/s | accepted {} | backlog {} | enqueued/s {:.0} | drained/s {:.0} | orders {}",
                c["requests_per_s"].as_f64().unwrap_or(0.0),
                c["accepted"].as_u64().unwrap_or(0),
                c["lag"].as_u64().unwrap_or(0),
                c["enqueue_rate"].as_f64().unwrap_or(0.0),
                c["drain_rate"].as_f64().unwrap_or(0.0),
                c["orders"]
                    .as_u64()
                    .map_or_else(|| "?".to_string(), |o| o.to_string()),
            );
        }
    }
}

/// The progress display from the first phase to the last: on a terminal an indicatif bar
/// (phase, elapsed time, attempts sent, the system's figures) redrawn every
/// [`PROGRESS_PERIOD`], so that a run of a second still shows it move; otherwise a line at
/// each phase and every [`PROGRESS_LINE_EVERY`], and one at the end.
async fn progress(run: Arc<Run>, done: Arc<AtomicBool>) {
    let bar = indicatif::ProgressBar::new(run.scenario.attempts);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>9} {spinner} {elapsed:>4} [{bar:30}] {pos}/{len} attempts  {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let terminal = !bar.is_hidden();
    let mut last_phase = "";
    let mut last_line = Instant::now();
    loop {
        let finished = done.load(Ordering::Relaxed);
        let phase = *run.lock(&run.phase);
        let sent = run.attempts_sent();
        let mut figures = run.lock(&run.figures).clone();
        if figures.is_empty() {
            figures = "no figures from the system yet".into();
        }
        if terminal {
            bar.set_prefix(phase);
            bar.set_position(sent);
            bar.set_message(figures);
            bar.tick();
        } else if phase != last_phase || last_line.elapsed() >= PROGRESS_LINE_EVERY || finished {
            eprintln!(
                "load-tests: {:>6.1} s {phase:<9} {sent}/{} attempts | {figures}",
                run.start.elapsed().as_secs_f64(),
                run.scenario.attempts
            );
            last_line = Instant::now();
        }
        last_phase = phase;
        if finished {
            break;
        }
        tokio::time::sleep(PROGRESS_PERIOD).await;
    }
    bar.finish();
    if terminal {
        // The bar's last state stays; what follows starts on a line of its own.
        eprintln!();
    }
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut buckets = Vec::new();
    // Log-scale buckets: 0.1 ms × 2^k.
    let mut upper_us = 100u64;
    let mut below = 0u64;
    while upper_us < LATENCY_MAX_US * 2 {
        let up_to = h.count_between(0, upper_us.min(h.max()).max(1));
        let in_bucket = up_to.saturating_sub(below);
        if in_bucket > 0 {
            buckets.push((ms(upper_us), in_bucket));
        }
        below = up_to;
        if upper_us >= h.max() {
            break;
        }
        upper_us *= 2;
    }
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        buckets,
    }
}

/// Runs `make(i)` for `i` in `0..n` as `n` tasks and collects their figures, once every
/// task has ended. A task that panicked is an error ([`CrowdError::TaskFailed`]): its
/// counts and answers would otherwise be missing from the figures without a word.
async fn in_parallel<F, Fut>(n: usize, make: F) -> Result<Vec<Tally>, CrowdError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(make(i))).collect();
    let mut out = Vec::with_capacity(n);
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(tally) => out.push(tally),
            Err(e) => {
                failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
    match failed {
        None => Ok(out),
        Some(why) => Err(CrowdError::TaskFailed(why)),
    }
}

/// Runs the scenario's flash crowd against `target`.
pub async fn run(
    mut scenario: Scenario,
    target: Target,
    progress: bool,
) -> Result<CrowdOutcome, CrowdError> {
    scenario.validate()?;
    if !target.addr.ip().is_loopback() {
        return Err(CrowdError::NotLoopback(target.addr));
    }
    let seed = seed_of(&scenario)?;
    // Recorded with the scenario's settings (run.json, report.md).
    scenario.seed = Some(seed);
    eprintln!(
        "load-tests: seed {seed} (replay the crowd's choices with --seed {seed} or {SEED_ENV}={seed})"
    );
    let mut rng = rng_of(seed, RUN_STREAM);
    let started_at_ms = queue::Clock::now_ms(&queue::SystemClock);
    let start = Instant::now();
    let run_id = format!("{:08x}", rng.random::<u32>());
    let run = Arc::new(Run::new(scenario, target, seed, &run_id, start));
    let connections = run.scenario.connections;
    let mut tallies = Vec::new();
    let mut admin = Conn::connect(run.target.addr)
        .await
        .map_err(|e| CrowdError::Connect(e.to_string()))?;
    let sale_id = next_sale_id(&run, &mut admin).await?;
    run.sale.store(sale_id, Ordering::Relaxed);
    let sampling_done = Arc::new(AtomicBool::new(false));
    let progress_task =
        progress.then(|| tokio::spawn(self::progress(run.clone(), sampling_done.clone())));
    let phase = |name: &'static str| *run.lock(&run.phase) = name;

    // 1. Sign-in.
    let signed_in = sign_in_everyone(&run).await;
    let signed_in = match signed_in {
        Ok(t) => t,
        Err(e) => {
            sampling_done.store(true, Ordering::Relaxed);
            if let Some(task) = progress_task {
                let _ = task.await;
            }
            return Err(e);
        }
    };
    tallies.extend(signed_in);

    // 2. The sale, opening soon; the ramp meanwhile.
    phase("ramp");
    // A connection of its own: the first one sat idle through the sign-in, longer than
    // the gateway keeps an idle connection waiting for a request's header (its
    // `header_read_timeout_ms`, 10 s), and a 300,000-person sign-in takes longer.
    drop(admin);
    let mut admin = Conn::connect(run.target.addr)
        .await
        .map_err(|e| CrowdError::Connect(e.to_string()))?;
    let opens_at = create_sale(&run, &mut admin, &run_id).await?;
    *run.lock(&run.opened) = Some(opens_at);
    let sampler_task = tokio::spawn(sampler(run.clone(), sampling_done.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    // A failed phase stops the sampler before the error is returned.
    let stopped = |r: Result<Vec<Tally>, CrowdError>| {
        if r.is_err() {
            sampling_done.store(true, Ordering::Relaxed);
        }
        r
    };
    tallies.extend(stopped(
        in_parallel(connections, |_| ramp(run.clone(), next.clone(), opens_at)).await,
    )?);

    // 3. The spike.
    phase("spike");
    tallies.extend(stopped(
        in_parallel(connections, |i| spike(run.clone(), i)).await,
    )?);
    let attempt_phase = opens_at.elapsed();

    // 4. Decisions.
    phase("decisions");
    let work = Arc::new(Mutex::new(VecDeque::from(run.lock(&run.accepted).clone())));
    let results = Arc::new(Mutex::new(Vec::new()));
    tallies.extend(stopped(
        in_parallel(connections.min(64), |_| {
            decisions(run.clone(), work.clone(), results.clone())
        })
        .await,
    )?);
    let decided = run.lock(&results).clone();

    // 5. Payment of a share of the orders.
    phase("payment");
    let paid = Arc::new(AtomicU64::new(0));
    let pay_work = Arc::new(Mutex::new(choose_payments(&run, &decided, &mut rng)));
    tallies.extend(stopped(
        in_parallel(connections.min(64), |_| {
            pay(run.clone(), pay_work.clone(), paid.clone())
        })
        .await,
    )?);
    phase("done");
    sampling_done.store(true, Ordering::Relaxed);
    let _ = sampler_task.await;
    if let Some(task) = progress_task {
        let _ = task.await;
    }

    let accepted = run.lock(&run.accepted).clone();
    let record = record_of(
        &run,
        Finished {
            started_at_ms,
            sale_id,
            opens_at,
            attempt_phase,
            accepted: accepted.len() as u64,
            decided,
            paid: paid.load(Ordering::Relaxed),
            tallies,
        },
    );
    Ok(CrowdOutcome {
        record,
        tickets: accepted.into_iter().map(|(t, _)| t).collect(),
        seed,
    })
}

impl Run {
    /// A run's shared state before sign-in: `scenario.users` people (the first
    /// `scenario.bots()` of them bots) named after `run_id`.
    fn new(scenario: Scenario, target: Target, seed: u64, run_id: &str, start: Instant) -> Run {
        let bots = scenario.bots();
        let people = (0..scenario.users)
            .map(|i| {
                Mutex::new(Person {
                    name: format!("lt{run_id}-{i}"),
                    cookie: HeaderValue::from_static(""),
                    bot: i < bots,
                    token: None,
                    not_before: start,
                    accepted: false,
                    done: false,
                })
            })
            .collect();
        Run {
            wire: Wire::of(&target),
            deadline: start + Duration::from_millis(scenario.deadline_ms),
            attempts_left: AtomicU64::new(scenario.attempts),
            scenario,
            target,
            seed,
            sale: AtomicU64::new(0),
            people,
            start,
            opened: Mutex::new(None),
            accepted: Mutex::new(Vec::new()),
            spent_tokens: Mutex::new(Vec::new()),
            first_sold_out_ns: AtomicU64::new(u64::MAX),
            last_accepted_began_ns: AtomicU64::new(0),
            bots_refused: AtomicU64::new(0),
            bots_accepted: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            timeline: Mutex::new(Recording::default()),
            phase: Mutex::new("sign-in"),
            figures: Mutex::new(String::new()),
        }
    }
}

/// The sale id of the run: one above every existing sale.
async fn next_sale_id(run: &Run, admin: &mut Conn) -> Result<u64, CrowdError> {
    let auth = admin_auth(run);
    let listed = admin
        .send(request(
            "GET",
            "/admin/api/sales",
            &[("authorization", &auth)],
            None,
        ))
        .await
        .map_err(|e| CrowdError::Setup(e.to_string()))?;
    if !listed.status.is_success() {
        return Err(CrowdError::Setup(format!(
            "listing sales: {} (is the admin secret right?)",
            listed.status
        )));
    }
    Ok(listed.json()["sales"].as_array().map_or(0, |s| {
        s.iter()
            .filter_map(|x| x["sale"]["id"].as_u64())
            .max()
            .unwrap_or(0)
    }) + 1)
}

/// Phase 1 on every connection; an error unless everyone signed in.
async fn sign_in_everyone(run: &Arc<Run>) -> Result<Vec<Tally>, CrowdError> {
    let next = Arc::new(AtomicUsize::new(0));
    let tallies = in_parallel(run.scenario.connections, |_| {
        sign_in(run.clone(), next.clone())
    })
    .await?;
    let signed_in = run
        .people
        .iter()
        .filter(|p| !run.lock(p).cookie.is_empty())
        .count();
    if signed_in < run.people.len() {
        return Err(CrowdError::Setup(format!(
            "only {signed_in} of {} people could sign in",
            run.people.len()
        )));
    }
    Ok(tallies)
}

/// Creates the run's sale, opening `opens_in_ms` from now; returns when it opens.
async fn create_sale(run: &Run, admin: &mut Conn, run_id: &str) -> Result<Instant, CrowdError> {
    let auth = admin_auth(run);
    let opens_at_ms = queue::Clock::now_ms(&queue::SystemClock) + run.scenario.opens_in_ms;
    let created = admin
        .send(request(
            "POST",
            "/admin/api/sales",
            &[("authorization", &auth)],
            Some(&json!({
                "id": run.sale(),
                "name": format!("load test {run_id}"),
                "price_cents": 1999,
                "units": run.scenario.units,
                "starts_at_ms": opens_at_ms,
                "pay_window_ms": run.scenario.pay_window_ms,
                "stock_buckets": run.scenario.stock_buckets,
            })),
        ))
        .await
        .map_err(|e| CrowdError::Setup(e.to_string()))?;
    if created.status.as_u16() != 201 {
        return Err(CrowdError::Setup(format!(
            "creating the sale: {} {}",
            created.status,
            String::from_utf8_lossy(&created.body)
        )));
    }
    Ok(Instant::now() + Duration::from_millis(run.scenario.opens_in_ms))
}

/// The orders the buyers pay (a `pay_share` of them), with their buyers' cookies.
fn choose_payments(
    run: &Run,
    decided: &[Decision],
    rng: &mut StdRng,
) -> Vec<(String, HeaderValue)> {
    let mut to_pay = Vec::new();
    for d in decided {
        if let Some(order) = &d.order_id
            && rng.random_bool(run.scenario.pay_share)
        {
            to_pay.push((order.clone(), run.lock(&run.people[d.who]).cookie.clone()));
        }
    }
    to_pay
}

/// What the phases left for the record.
#[derive(Debug)]
struct Finished {
    started_at_ms: u64,
    sale_id: u64,
    opens_at: Instant,
    attempt_phase: Duration,
    /// Purchases accepted (202 with a ticket).
    accepted: u64,
    decided: Vec<Decision>,
    paid: u64,
    tallies: Vec<Tally>,
}

/// Every task's counts added up: one [`Tally`] of them all, with the answers each task
/// still held added to `recording`.
impl Tally {
    fn merged(tallies: Vec<Tally>, recording: &mut Recording) -> Tally {
        let mut m = Tally::default();
        for t in tallies {
            m.errors += t.errors;
            m.requests += t.requests;
            m.attempts += t.attempts;
            recording.add(t.pending);
        }
        m
    }
}

impl Recording {
    /// Latency by route, then outcome (`all` for each route's outcomes together), and the
    /// answers to purchase attempts (token and purchase routes) by outcome.
    fn by_route(
        &self,
    ) -> (
        BTreeMap<String, BTreeMap<String, Latency>>,
        BTreeMap<String, u64>,
    ) {
        let mut by_route: BTreeMap<String, BTreeMap<String, Latency>> = BTreeMap::new();
        let mut route_all: BTreeMap<Route, Histogram<u64>> = BTreeMap::new();
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        for (route, outcome, h) in self.latencies() {
            by_route
                .entry(route.name().to_string())
                .or_default()
                .insert(outcome.to_string(), latency_of(h));
            let _ = route_all.entry(route).or_insert_with(new_histogram).add(h);
            if matches!(route, Route::Token | Route::Purchase) {
                *outcomes.entry(outcome.to_string()).or_default() += h.len();
            }
        }
        for (route, h) in &route_all {
            by_route
                .entry(route.name().to_string())
                .or_default()
                .insert("all".into(), latency_of(h));
        }
        (by_route, outcomes)
    }
}

/// The run's record from what its phases left.
fn record_of(run: &Run, f: Finished) -> RunRecord {
    let (merged, latency, outcomes, bin_ms, timeline, peak_backlog) = {
        let mut recording = run.lock(&run.timeline);
        let merged = Tally::merged(f.tallies, &mut recording);
        let (latency, outcomes) = recording.by_route();
        let t = &recording.timeline;
        let bin_ms = crate::timeline::bin_width_ms(t.span_ms());
        (
            merged,
            latency,
            outcomes,
            bin_ms,
            t.bins(bin_ms),
            t.peak_backlog(),
        )
    };
    let ordered = f.decided.iter().filter(|d| d.order_id.is_some()).count() as u64;
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    for d in &f.decided {
        if let Some(r) = &d.reason {
            *rejected.entry(r.clone()).or_default() += 1;
        }
    }
    let opens_at = f.opens_at;
    let since_open = |at: Instant| {
        u64::try_from(at.saturating_duration_since(opens_at).as_millis()).unwrap_or(u64::MAX)
    };
    RunRecord {
        scenario: run.scenario.name.clone(),
        settings: serde_json::to_value(&run.scenario).unwrap_or(Value::Null),
        target: run.target.label.clone(),
        started_at_ms: f.started_at_ms,
        sale_opened_after_ms: u64::try_from(
            opens_at.saturating_duration_since(run.start).as_millis(),
        )
        .unwrap_or(0),
        sale_id: f.sale_id,
        units: run.scenario.units,
        users: run.scenario.users,
        attempts: merged.attempts,
        requests: merged.requests,
        attempt_phase_ms: u64::try_from(f.attempt_phase.as_millis()).unwrap_or(u64::MAX),
        attempts_per_s: merged.attempts as f64 / f.attempt_phase.as_secs_f64().max(1e-9),
        outcomes,
        accepted: f.accepted,
        ordered,
        rejected,
        unresolved: f.accepted - f.decided.len() as u64,
        paid: f.paid,
        bots_refused: run.bots_refused.load(Ordering::Relaxed),
        bots_accepted: run.bots_accepted.load(Ordering::Relaxed),
        sold_out_after_ms: first_sold_out(run).map(since_open),
        last_accepted_began_after_ms: last_accepted_began(run).map(since_open),
        last_decision_after_ms: f.decided.iter().map(|d| d.at).max().map(since_open),
        peak_backlog,
        errors: merged.errors,
        latency,
        bin_ms,
        timeline,
        thresholds: Vec::new(),
        audit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: hyper::StatusCode::from_u16(status).expect("a status"),
            headers: hyper::HeaderMap::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn an_answer_reads_as_its_outcome_and_the_fields_the_crowd_acts_on() {
        let (o, r) = read_reply(&answer(202, r#"{"ticket":"t-1","receipt":"x"}"#));
        assert_eq!((o.as_str(), r.ticket.as_deref()), ("accepted", Some("t-1")));
        let (o, r) = read_reply(&answer(200, r#"{"token":"a.b","expires_at_ms":5}"#));
        assert_eq!((o.as_str(), r.token.as_deref()), ("ok", Some("a.b")));
        // A known code is its index (counted without an allocation) ...
        let (o, _) = read_reply(&answer(410, r#"{"error":"sold_out","message":"gone"}"#));
        assert_eq!(o, Outcome::SOLD_OUT);
        let (o, _) = read_reply(&answer(429, r#"{"error":"throttled","message":"x"}"#));
        assert!(
            matches!(o, Outcome::Known(_)) && o.as_str() == "throttled",
            "{o:?}"
        );
        // ... any other is counted under its own name, escapes and all.
        let (o, _) = read_reply(&answer(418, r#"{"error":"tea\u0070ot"}"#));
        assert!(matches!(&o, Outcome::Other(s) if &**s == "teapot"), "{o:?}");
        // Not JSON, or no code: the status.
        let (o, r) = read_reply(&answer(503, "<html>Very busy</html>"));
        assert_eq!(o.as_str(), "http_503");
        assert!(r.ticket.is_none() && r.token.is_none());
        let (o, _) = read_reply(&answer(500, ""));
        assert!(
            matches!(&o, Outcome::Other(s) if &**s == "http_500"),
            "{o:?}"
        );
        let (o, r) = read_reply(&answer(
            200,
            r#"{"state":"rejected","reason":"sold_out","sale":1}"#,
        ));
        assert_eq!(o.as_str(), "ok");
        assert_eq!(
            (r.state.as_deref(), r.reason.as_deref(), r.order_id),
            (Some("rejected"), Some("sold_out"), None)
        );
    }

    #[test]
    fn a_purchase_body_carries_the_token_as_json() {
        for token in ["v1.abc_DEF-123.sig", r#"odd"token\with"#, ""] {
            let body = purchase_body(token);
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(v, json!({ "token": token }));
        }
    }

    #[test]
    fn every_route_is_at_its_index_under_its_own_name() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(route.index(), i, "{route:?}");
        }
        let mut names: Vec<&str> = Route::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Route::ALL.len());
    }

    #[test]
    fn a_forged_body_is_the_purchase_body_of_the_forged_token() {
        let mut rng = rng_of(3, 0);
        let draws: Vec<u128> = (0..100).map(|_| rng.random()).collect();
        for n in [0, 1, 0xabc, u128::MAX].into_iter().chain(draws) {
            assert_eq!(forged_body(n), purchase_body(&format!("forged.{n:032x}")));
        }
    }

    #[test]
    fn the_constant_sold_out_answer_reads_as_parsing_it_would() {
        let a = answer(410, SOLD_OUT_BODY);
        assert_eq!(read_reply(&a), parse_reply(&a));
        assert_eq!(read_reply(&a), (Outcome::SOLD_OUT, Reply::default()));
        // Another body or another status is parsed.
        let (o, _) = read_reply(&answer(409, SOLD_OUT_BODY));
        assert_eq!(o, Outcome::SOLD_OUT);
        let (o, _) = read_reply(&answer(410, r#"{"error":"ended","message":"sold out"}"#));
        assert_eq!(o.as_str(), "ended");
    }

    #[test]
    fn one_set_of_latency_histograms_counts_every_connections_answers() {
        let mut rec = Recording::default();
        for (i, outcome) in ["accepted", "sold_out", "sold_out", "teapot"]
            .iter()
            .enumerate()
        {
            rec.record(
                10 * i as u64,
                Route::Purchase,
                &Outcome::of(outcome),
                1_000,
                true,
            );
        }
        rec.record(5, Route::Page, &Outcome::OK, 300, false);
        rec.record(7, Route::Live, &Outcome::OK, 200, false);
        let (latency, outcomes) = rec.by_route();
        assert!(
            !latency.contains_key("live"),
            "the sampler is not the crowd"
        );
        assert_eq!(latency["purchase"]["sold_out"].count, 2);
        assert_eq!(latency["purchase"]["teapot"].count, 1);
        assert_eq!(latency["purchase"]["all"].count, 4);
        assert_eq!(latency["page"]["ok"].count, 1);
        assert_eq!(latency["page"]["all"].count, 1);
        assert_eq!(outcomes["sold_out"], 2);
        assert_eq!(outcomes["teapot"], 1);
        assert!(!outcomes.contains_key("ok"), "page views are not attempts");
    }

    fn test_run() -> Run {
        let target = Target {
            addr: "127.0.0.1:9".parse().expect("an address"),
            admin_secret: "a".into(),
            load_test_secret: "l".into(),
            label: "test".into(),
        };
        let scenario = Scenario::preset("ci").expect("ci");
        Run::new(scenario, target, 7, "test", Instant::now())
    }

    /// Answers recorded by many tasks, each holding a different number past the last full
    /// batch (none, one, a batch less one, several batches and some), come out in the
    /// run's figures exactly once each: the counts per outcome add up to the attempts, the
    /// timeline to the requests, the latency counts to the answers of each route.
    #[test]
    fn answers_held_by_tasks_and_added_in_batches_are_each_counted_once() {
        let run = test_run();
        let routes = [Route::Token, Route::Purchase, Route::Page, Route::Ticket];
        let outcomes = [
            Outcome::SOLD_OUT,
            Outcome::ACCEPTED,
            Outcome::OK,
            Outcome::of("throttled"),
            Outcome::of("teapot"),
            Outcome::CONNECTION_ERROR,
        ];
        let per_task = [
            0,
            1,
            RECORD_BATCH - 1,
            RECORD_BATCH,
            RECORD_BATCH + 1,
            3 * RECORD_BATCH + 17,
        ];
        let mut rng = rng_of(11, 0);
        let mut tallies = Vec::new();
        let mut expected_attempts: BTreeMap<String, u64> = BTreeMap::new();
        let mut expected_by_route: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut requests, mut attempts) = (0u64, 0u64);
        for n in per_task {
            let mut tally = Tally::default();
            for _ in 0..n {
                let route = routes[rng.random_range(0..routes.len())];
                let outcome = outcomes[rng.random_range(0..outcomes.len())].clone();
                let attempt = matches!(route, Route::Token | Route::Purchase);
                requests += 1;
                *expected_by_route.entry(route.name()).or_default() += 1;
                if attempt {
                    attempts += 1;
                    *expected_attempts
                        .entry(outcome.as_str().to_string())
                        .or_default() += 1;
                }
                let sample = Sample {
                    at_ms: rng.random_range(0..5_000),
                    took_us: rng.random_range(1..100_000),
                    route,
                    outcome,
                    attempt,
                };
                tally.record(&run, sample);
                assert!(tally.pending.len() < RECORD_BATCH, "a full batch is added");
            }
            tallies.push(tally);
        }
        // The sampler's reads: in the timeline's requests only.
        let mut sampler = Tally::default();
        run.record(&mut sampler, run.start, Route::Live, Outcome::OK, false);
        sampler.flush(&run);
        assert!(sampler.pending.is_empty());
        assert_eq!((sampler.requests, sampler.attempts), (0, 0));

        let record = record_of(
            &run,
            Finished {
                started_at_ms: 0,
                sale_id: 1,
                opens_at: run.start,
                attempt_phase: Duration::from_secs(1),
                accepted: 0,
                decided: Vec::new(),
                paid: 0,
                tallies,
            },
        );
        assert_eq!((record.requests, record.attempts), (requests, attempts));
        assert_eq!(record.outcomes, expected_attempts);
        assert_eq!(record.outcomes.values().sum::<u64>(), record.attempts);
        for (route, n) in &expected_by_route {
            assert_eq!(record.latency[*route]["all"].count, *n, "{route}");
            let by_outcome: u64 = record.latency[*route]
                .iter()
                .filter(|(o, _)| *o != "all")
                .map(|(_, l)| l.count)
                .sum();
            assert_eq!(by_outcome, *n, "{route}");
        }
        assert!(!record.latency.contains_key("live"));
        let bins_requests: u64 = record.timeline.iter().map(|b| b.requests).sum();
        assert_eq!(
            bins_requests,
            requests + 1,
            "the crowd's answers and the sampler's"
        );
        let bins_attempts: u64 = record.timeline.iter().map(|b| b.attempts).sum();
        assert_eq!(bins_attempts, attempts);
        let mut bins_outcomes: BTreeMap<String, u64> = BTreeMap::new();
        for b in &record.timeline {
            assert_eq!(b.outcomes.values().sum::<u64>(), b.attempts);
            for (o, n) in &b.outcomes {
                *bins_outcomes.entry(o.clone()).or_default() += n;
            }
        }
        assert_eq!(bins_outcomes, expected_attempts);
    }

    #[tokio::test]
    async fn a_task_that_panics_fails_the_phase_instead_of_vanishing_from_it() {
        let all = in_parallel(3, |_| async { Tally::default() }).await;
        assert_eq!(all.expect("no task failed").len(), 3);
        let one_failed = in_parallel(3, |i| async move {
            assert!(i != 1, "task {i} broke");
            Tally::default()
        })
        .await;
        match one_failed {
            Err(CrowdError::TaskFailed(why)) => assert!(why.contains("task 1 broke"), "{why}"),
            other => panic!("expected TaskFailed, got {:?}", other.map(|t| t.len())),
        }
    }

    #[test]
    fn the_earliest_sold_out_is_kept_whatever_the_order_noted() {
        let run = test_run();
        assert_eq!(first_sold_out(&run), None);
        let earliest = run.start + Duration::from_millis(5);
        note_sold_out(&run, run.start + Duration::from_millis(7));
        note_sold_out(&run, earliest);
        note_sold_out(&run, run.start + Duration::from_millis(9));
        assert_eq!(first_sold_out(&run), Some(earliest));
    }

    #[test]
    fn the_latest_accepted_start_is_kept_whatever_the_order_noted() {
        let run = test_run();
        assert_eq!(last_accepted_began(&run), None);
        // The run's very start is a start like any other (the encoding's 0 means none).
        note_accepted(&run, run.start);
        assert_eq!(last_accepted_began(&run), Some(run.start));
        let latest = run.start + Duration::from_millis(9);
        note_accepted(&run, run.start + Duration::from_millis(7));
        note_accepted(&run, latest);
        note_accepted(&run, run.start + Duration::from_millis(5));
        assert_eq!(last_accepted_began(&run), Some(latest));
    }

    #[test]
    fn a_seed_gives_the_same_streams_and_each_stream_its_own() {
        let draw = |seed, stream| {
            let mut rng = rng_of(seed, stream);
            (0..8).map(|_| rng.random::<u64>()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, RUN_STREAM), draw(42, RUN_STREAM));
        assert_eq!(draw(42, 3), draw(42, 3));
        assert_ne!(draw(42, RUN_STREAM), draw(42, 1));
        assert_ne!(draw(42, 1), draw(42, 2));
        assert_ne!(draw(42, 1), draw(43, 1));
    }

    #[test]
    fn the_scenario_seed_comes_first_and_is_recorded_with_the_settings() {
        let mut s = Scenario::preset("ci").expect("ci");
        s.seed = Some(7);
        assert_eq!(seed_of(&s).expect("a seed"), 7);
        let settings = serde_json::to_value(&s).expect("settings");
        assert_eq!(settings["seed"], json!(7));
        s.seed = None;
        let settings = serde_json::to_value(&s).expect("settings");
        assert!(settings.get("seed").is_none(), "{settings}");
    }
}
