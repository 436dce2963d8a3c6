//! `order-worker-bench`: how fast the order workers drain a backlog of purchases into the
//! orders database, against two baselines measured in the same run.
//!
//! Every phase starts from scratch: a fresh embedded queue (`queue::Config::default()`:
//! fsync before every confirm, acks included) in a directory of its own, pre-filled with
//! `--messages` purchase messages as the gateway writes them (JSON, ticket = a UUIDv7
//! string, message id = the ticket as `u128`, a distinct user each), published with
//! `publish_batch` in chunks of [`PREFILL_CHUNK`]; and, for the database phases, a fresh
//! database (a SQLite file in the phase's directory, or a scratch PostgreSQL database
//! dropped afterwards) with one sale of exactly as many units as there are purchases, so
//! every purchase becomes an order.
//!
//! Phases:
//! - `queue_only` (baseline a, the ceiling the queue sets): `--workers` consumers of the
//!   orders group `fetch` up to `--batch` messages and `ack` them, no database;
//! - `queue_paybys` (not a baseline; where the queue's share of a drain goes): the same,
//!   plus what a worker does on the queue for each batch of orders: decode every purchase
//!   and publish one delayed pay-by message per purchase with `publish_each`, then ack;
//! - `drain` (the figure): `--workers` real `OrderWorker`s (`step()` in a loop) until the
//!   workers' `messages` counter reaches the backlog: fetch, decode, one `decide_batch`
//!   transaction per batch, one pay-by message per order published to `pay-deadlines`, ack;
//! - `naive` (baseline b, the way public seckill projects do it): one transaction per
//!   purchase, `OrdersDb::decide_batch` with a single purchase, one after another, on
//!   `--naive-messages` purchases, no queue at all (which flatters it).
//!
//! After each drain the run checks the result and fails (exit 1) if anything is off: the
//! sale has `messages` pending orders, no unit left, one `ordered` outcome per purchase and
//! no rejection, `messages` pay-by messages in the deadlines topic, and nothing left
//! unacked in the orders topic.
//!
//! Progress goes to stderr; the last line of stdout is the JSON summary (also written to
//! `--json-out`). PostgreSQL is the one at `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); if it does not answer, its phases are
//! reported skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use order_worker::db::{
    CONNECTIONS_MAX, DbOptions, Decision, NewSale, OrdersDb, PAY_WINDOW_MS_DEFAULT,
    SqliteDurability,
};
use order_worker::purchase::{
    DEADLINES_TOPIC, Deadline, ORDERS_TOPIC, PurchaseMessage, WORKERS_GROUP,
};
use order_worker::testing::{POSTGRES_URL_DEFAULT, PgScratch};
use order_worker::worker::{OrderWorker, WorkerConfig, WorkerMetrics};
use queue::{
    AckOutcome, Confirm, DeadLetter, Delivery, FetchOptions, Message, Peeked, Queue, Receipt,
    StartAt, TopicStats,
};
use serde_json::{Value, json};
use sqlx::Row;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Messages `publish_batch` takes per call while pre-filling (one record, one fsync).
const PREFILL_CHUNK: usize = 5_000;
/// Most purchases a phase may use: the sale's units must fit `inventory::UNITS_MAX`.
const MESSAGES_MAX: usize = 5_000_000;
/// Most purchases of the naive phase.
const NAIVE_MESSAGES_MAX: usize = 1_000_000;
/// Most concurrent workers (the crew's own bound).
const WORKERS_MAX: usize = order_worker::crew::WORKERS_MAX;
/// Most worker counts one run compares.
const WORKER_COUNTS_MAX: usize = 8;
/// Backlog of `--quick`.
const QUICK_MESSAGES: usize = 20_000;
/// Naive purchases of `--quick`.
const QUICK_NAIVE_MESSAGES: usize = 1_000;
/// A phase fails when no message is finished for this long.
const STALL: Duration = Duration::from_secs(120);
/// Lease of a fetched batch (as the workers' default): far longer than a batch takes.
const LEASE_MS: u64 = 120_000;
/// Longest fetch wait of the benchmark's consumers and workers.
const WAIT_MS_MAX: u64 = 1_000;
/// The one sale of every phase.
const SALE_ID: u64 = 1;
/// Its price.
const PRICE_CENTS: u64 = 100;
/// Workers per backend when `--workers` is not given (chosen by measuring 1, 2 and 4 on the
/// 2-vCPU machine of BENCHMARKS.md).
const SQLITE_WORKERS_DEFAULT: usize = 2;
/// See [`SQLITE_WORKERS_DEFAULT`].
const POSTGRES_WORKERS_DEFAULT: usize = 2;
/// The drain rate the issue asks for, orders/s, into each backend.
const TARGET_ORDERS_PER_S: f64 = 20_000.0;

#[derive(Parser, Debug)]
#[command(
    name = "order-worker-bench",
    about = "Drain rate of the order workers into SQLite and PostgreSQL, against the queue alone and one transaction per purchase"
)]
struct Args {
    /// Purchases pre-filled in the queue for each drain (and queue-only) phase.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Purchases of the naive phase (one transaction each).
    #[arg(long, default_value_t = 10_000)]
    naive_messages: usize,
    /// Most purchases per batch: one fetch, one transaction, one pay-by publish, one ack.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent workers (comma-separated to compare several counts; each runs its own
    /// phases). Default: 2 for SQLite, 2 for PostgreSQL.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Backends to measure: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// SQLite commits: `full` (fsync each commit, the default) or `normal`.
    #[arg(long, default_value = "full")]
    sqlite_sync: String,
    /// Database connections per pool.
    #[arg(long, default_value_t = order_worker::db::CONNECTIONS_DEFAULT)]
    db_connections: u32,
    /// Long-poll wait of each fetch, ms (only the tail of a drain ever waits).
    #[arg(long, default_value_t = 5)]
    wait_ms: u64,
    /// Phases to run (comma-separated: queue_only, queue_paybys, drain, naive); all by
    /// default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A smoke run: 20,000 messages, 1,000 naive.
    #[arg(long)]
    quick: bool,
    /// Where the bench's temporary directory goes (default: the system temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the JSON summary (pretty) to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn per_s(n: u64, secs: f64) -> f64 {
    round1(n as f64 / secs.max(1e-9))
}

fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn machine_json() -> Value {
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": proc_field("/proc/cpuinfo", "model name").unwrap_or_default(),
        "mem_total": proc_field("/proc/meminfo", "MemTotal").unwrap_or_default(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    })
}

/// Load average and I/O pressure: how busy the machine was.
fn environment_json() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().replace('\n', "; "))
            .unwrap_or_default()
    };
    json!({ "loadavg": read("/proc/loadavg"), "io_pressure": read("/proc/pressure/io") })
}

/// The mount (device, mount point, type) holding `path`, from `/proc/mounts`.
fn filesystem_of(path: &Path) -> Option<(String, String, String)> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<(String, String, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mnt), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|b| mnt.len() >= b.1.len()) {
            best = Some((dev.to_string(), mnt, fstype.to_string()));
        }
    }
    best
}

/// CPU time: this process's (user + system) and the whole machine's busy and total time,
/// in clock ticks, from `/proc/self/stat` and `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    process: u64,
    busy: u64,
    total: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces): utime is the 12th
                // and stime the 13th after it.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let u = f.get(11)?.parse::<u64>().ok()?;
                let k = f.get(12)?.parse::<u64>().ok()?;
                Some(u + k)
            })
            .unwrap_or(0);
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().take(8).sum();
                // idle + iowait
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((total.saturating_sub(idle), total))
            })
            .unwrap_or((0, 0));
        Cpu {
            process,
            busy,
            total,
        }
    }

    /// CPU use from `self` to `later` over `secs` of wall time: this process's cores and
    /// the machine's busy share (all processes: the PostgreSQL server included).
    fn since(&self, later: &Cpu, secs: f64) -> Value {
        // USER_HZ is 100 on Linux.
        let ticks = 100.0;
        let process = later.process.saturating_sub(self.process) as f64 / ticks;
        let total = later.total.saturating_sub(self.total);
        let busy = later.busy.saturating_sub(self.busy);
        json!({
            "process_cores": round3(process / secs.max(1e-9)),
            "machine_busy_share": if total > 0 { round3(busy as f64 / total as f64) } else { 0.0 },
        })
    }
}

/// The bench's own directory, removed when dropped.
#[derive(Debug)]
struct BenchDir {
    path: PathBuf,
}

impl BenchDir {
    fn create(base: &Path) -> Res<BenchDir> {
        let path = base.join(format!(
            "order-worker-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| err(format!("create {}: {e}", path.display())))?;
        Ok(BenchDir { path })
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A directory of its own for each phase (numbered: a phase may run more than once).
fn phase_dir(root: &Path, name: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    root.join(format!("{:02}-{name}", SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// Time spent in one kind of queue call.
#[derive(Debug, Default)]
struct OpTime {
    calls: AtomicU64,
    nanos: AtomicU64,
}

impl OpTime {
    fn add(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(ns, Ordering::Relaxed);
    }

    fn secs(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    fn json(&self) -> Value {
        let calls = self.calls.load(Ordering::Relaxed);
        json!({
            "calls": calls,
            "total_s": round3(self.secs()),
            "mean_ms": if calls > 0 { round3(self.secs() * 1e3 / calls as f64) } else { 0.0 },
        })
    }
}

/// The engine, with the time spent in the calls a worker makes (fetch, publish, ack) added
/// up: where a drain's wall time goes, without a profiler.
#[derive(Debug)]
struct TimedQueue {
    inner: queue::Engine,
    fetch: OpTime,
    publish: OpTime,
    ack: OpTime,
}

impl TimedQueue {
    fn new(inner: queue::Engine) -> TimedQueue {
        TimedQueue {
            inner,
            fetch: OpTime::default(),
            publish: OpTime::default(),
            ack: OpTime::default(),
        }
    }
}

#[async_trait::async_trait]
impl Queue for TimedQueue {
    async fn publish(&self, topic: &str, message: Message) -> queue::Result<Confirm> {
        let t = Instant::now();
        let r = self.inner.publish(topic, message).await;
        self.publish.add(t);
        r
    }
    async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> queue::Result<Vec<Confirm>> {
        let t = Instant::now();
        let r = self.inner.publish_batch(topic, messages).await;
        self.publish.add(t);
        r
    }
    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> queue::Result<Vec<queue::Result<Confirm>>> {
        let t = Instant::now();
        let r = Queue::publish_each(&self.inner, topic, messages).await;
        self.publish.add(t);
        r
    }
    async fn create_group(&self, topic: &str, group: &str, start: StartAt) -> queue::Result<()> {
        self.inner.create_group(topic, group, start).await
    }
    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> queue::Result<Vec<Delivery>> {
        let t = Instant::now();
        let r = self.inner.fetch(topic, group, options).await;
        self.fetch.add(t);
        r
    }
    async fn ack(
        &self,
        topic: &str,
        group: &str,
        receipts: &[Receipt],
    ) -> queue::Result<Vec<AckOutcome>> {
        let t = Instant::now();
        let r = self.inner.ack(topic, group, receipts).await;
        self.ack.add(t);
        r
    }
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> queue::Result<AckOutcome> {
        self.inner
            .nack(topic, group, receipt, delay_ms, reason)
            .await
    }
    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        reason: &str,
    ) -> queue::Result<AckOutcome> {
        self.inner.reject(topic, group, receipt, reason).await
    }
    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> queue::Result<Vec<DeadLetter>> {
        self.inner
            .dead_letters(topic, from_dead_offset, limit)
            .await
    }
    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> queue::Result<u64> {
        self.inner.replay_dead_letter(topic, dead_offset).await
    }
    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> queue::Result<()> {
        self.inner.discard_dead_letter(topic, dead_offset).await
    }
    async fn stats(&self, topic: &str) -> queue::Result<TopicStats> {
        self.inner.stats(topic).await
    }
    async fn peek(
        &self,
        topic: &str,
        from_offset: u64,
        limit: usize,
    ) -> queue::Result<Vec<Peeked>> {
        self.inner.peek(topic, from_offset, limit).await
    }
    async fn topics(&self) -> queue::Result<Vec<String>> {
        self.inner.topics().await
    }
}

/// The purchases of a phase: distinct users, UUIDv7 tickets, all for [`SALE_ID`].
fn purchases(n: usize) -> Vec<PurchaseMessage> {
    let at = now_ms();
    (0..n)
        .map(|i| PurchaseMessage {
            ticket: uuid::Uuid::now_v7().to_string(),
            sale: SALE_ID,
            user: format!("user-{i:08}"),
            price_cents: PRICE_CENTS,
            accepted_at_ms: at,
        })
        .collect()
}

/// A fresh engine in `dir` (the production configuration) holding `n` purchases on the
/// orders topic; returns it and the seconds the pre-fill took.
async fn prefilled_queue(dir: &Path, n: usize) -> Res<(queue::Engine, f64)> {
    let engine = queue::Engine::open(dir, queue::Config::default())?;
    let t = Instant::now();
    let all = purchases(n);
    for chunk in all.chunks(PREFILL_CHUNK) {
        let mut batch = Vec::with_capacity(chunk.len());
        for p in chunk {
            let id = uuid::Uuid::parse_str(&p.ticket)?.as_u128();
            batch.push(Message::new(serde_json::to_vec(p)?).with_id(id));
        }
        engine.publish_batch(ORDERS_TOPIC, batch).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let stats = engine.stats(ORDERS_TOPIC).await?;
    let stored = stats.next_offset - stats.log_start;
    if stored != n as u64 {
        return Err(err(format!("pre-fill stored {stored} messages, not {n}")));
    }
    Ok((engine, secs))
}

/// Fsync rounds and their mean duration between two snapshots of an engine's metrics.
fn rounds_json(before: &queue::EngineMetrics, after: &queue::EngineMetrics) -> Value {
    let rounds = after.commit_rounds.saturating_sub(before.commit_rounds);
    let fsyncs = after.fsync.count.saturating_sub(before.fsync.count);
    let sum_us = after.fsync.sum_us.saturating_sub(before.fsync.sum_us);
    json!({
        "commit_rounds": rounds,
        "fsyncs": fsyncs,
        "fsync_total_s": round3(sum_us as f64 / 1e6),
        "fsync_mean_us": if fsyncs > 0 { round1(sum_us as f64 / fsyncs as f64) } else { 0.0 },
        "bytes_written": after.bytes_written.saturating_sub(before.bytes_written),
    })
}

/// Whether the orders group has finished everything in the orders topic.
async fn orders_group_lag(q: &dyn Queue) -> Res<u64> {
    let stats = q.stats(ORDERS_TOPIC).await?;
    Ok(stats
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .map(|g| g.lag)
        .unwrap_or(stats.next_offset - stats.log_start))
}

/// One consumer of the queue-only phases: fetch, (decode and publish the pay-by messages),
/// ack, until `target` messages are acked by all consumers together.
async fn queue_consumer(
    q: Arc<queue::Engine>,
    batch: usize,
    wait_ms: u64,
    target: u64,
    acked: Arc<AtomicU64>,
    paybys: bool,
) -> Res<()> {
    let mut last_progress = Instant::now();
    while acked.load(Ordering::Relaxed) < target {
        let options = FetchOptions {
            max_messages: batch,
            lease_ms: Some(LEASE_MS),
            wait_ms,
        };
        let ds = q.fetch(ORDERS_TOPIC, WORKERS_GROUP, options).await?;
        if ds.is_empty() {
            if last_progress.elapsed() > STALL {
                return Err(err("queue consumer: no progress"));
            }
            continue;
        }
        last_progress = Instant::now();
        if paybys {
            let pay_by = now_ms() + PAY_WINDOW_MS_DEFAULT;
            let mut msgs = Vec::with_capacity(ds.len());
            for d in &ds {
                let _purchase = PurchaseMessage::decode(&d.payload)?;
                let deadline = Deadline {
                    order_id: uuid::Uuid::now_v7().to_string(),
                    pay_by_ms: pay_by,
                };
                msgs.push(deadline.message()?);
            }
            for r in Queue::publish_each(q.as_ref(), DEADLINES_TOPIC, msgs).await? {
                r?;
            }
        }
        let receipts: Vec<Receipt> = ds.iter().map(Delivery::receipt).collect();
        for chunk in receipts.chunks(queue::limits::ACK_RECEIPTS_MAX) {
            let outcomes = q.ack(ORDERS_TOPIC, WORKERS_GROUP, chunk).await?;
            if let Some(o) = outcomes.iter().find(|o| **o != AckOutcome::Acked) {
                return Err(err(format!("queue consumer: an ack answered {o:?}")));
            }
        }
        acked.fetch_add(ds.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Awaits every task; the first error (of a task or of joining it) wins.
async fn join_all(handles: Vec<tokio::task::JoinHandle<Res<()>>>) -> Res<()> {
    let mut first: Option<BoxError> = None;
    for h in handles {
        let r = match h.await {
            Ok(r) => r,
            Err(e) => Err(err(format!("task: {e}"))),
        };
        if let Err(e) = r
            && first.is_none()
        {
            first = Some(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Settings shared by the phases.
#[derive(Debug, Clone)]
struct Plan {
    messages: usize,
    naive_messages: usize,
    batch: usize,
    wait_ms: u64,
    db: DbOptions,
    phases: Vec<String>,
}

impl Plan {
    fn runs(&self, phase: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == phase)
    }
}

/// Baseline a (`paybys` false) or the queue's share of a drain (`paybys` true).
async fn queue_phase(root: &Path, plan: &Plan, workers: usize, paybys: bool) -> Res<Value> {
    let name = if paybys { "queue_paybys" } else { "queue_only" };
    let dir = phase_dir(root, &format!("{name}-w{workers}"));
    let (engine, prefill_s) = prefilled_queue(&dir, plan.messages).await?;
    let engine = Arc::new(engine);
    let before = engine.metrics();
    let acked = Arc::new(AtomicU64::new(0));
    let target = plan.messages as u64;
    let cpu0 = Cpu::now();
    let t = Instant::now();
    let tasks = (0..workers)
        .map(|_| {
            tokio::spawn(queue_consumer(
                engine.clone(),
                plan.batch,
                plan.wait_ms,
                target,
                acked.clone(),
                paybys,
            ))
        })
        .collect();
    join_all(tasks).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.since(&Cpu::now(), secs);
    let after = engine.metrics();
    let lag = orders_group_lag(engine.as_ref()).await?;
    let deadlines = if paybys {
        let s = engine.stats(DEADLINES_TOPIC).await?;
        s.next_offset - s.log_start
    } else {
        0
    };
    engine.close()?;
    let done = acked.load(Ordering::Relaxed);
    if done != target || lag != 0 || (paybys && deadlines != target) {
        return Err(err(format!(
            "{name}: acked {done} of {target}, lag {lag}, pay-by messages {deadlines}"
        )));
    }
    let rate = per_s(done, secs);
    say(format!(
        "{name:>13} workers {workers}: {rate:>10.0} msgs/s ({done} in {secs:.2} s; pre-fill {prefill_s:.2} s)"
    ));
    Ok(json!({
        "phase": name,
        "workers": workers,
        "batch": plan.batch,
        "messages": done,
        "secs": round3(secs),
        "msgs_per_s": rate,
        "prefill_s": round3(prefill_s),
        "queue_writer": rounds_json(&before, &after),
        "cpu": cpu,
    }))
}

/// An open database and what keeps it alive.
struct Opened {
    db: OrdersDb,
    _scratch: Option<PgScratch>,
}

/// How long the bench waits for PostgreSQL to answer before it skips the backend.
const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the bench skips PostgreSQL.
#[derive(Debug, thiserror::Error)]
enum PostgresUnreachable {
    /// The connection failed.
    #[error("PostgreSQL at {url} does not answer: {source}")]
    Refused {
        /// The test URL.
        url: String,
        /// What the driver said.
        source: sqlx::Error,
    },
    /// No answer in time.
    #[error("PostgreSQL at {url} does not answer within {} s", POSTGRES_PROBE_TIMEOUT.as_secs())]
    Silent {
        /// The test URL.
        url: String,
    },
}

/// Whether PostgreSQL answers at the test URL; why not if it does not.
async fn postgres_reachable() -> Result<(), PostgresUnreachable> {
    use sqlx::Connection;
    let url =
        std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL_DEFAULT.to_string());
    match tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, sqlx::PgConnection::connect(&url)).await {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Ok(())
        }
        Ok(Err(source)) => Err(PostgresUnreachable::Refused { url, source }),
        Err(_) => Err(PostgresUnreachable::Silent { url }),
    }
}

async fn open_db(backend: &str, dir: &Path, options: &DbOptions) -> Res<Opened> {
    match backend {
        "sqlite" => {
            std::fs::create_dir_all(dir)?;
            Ok(Opened {
                db: order_worker::testing::sqlite(dir, options).await,
                _scratch: None,
            })
        }
        "postgres" => match order_worker::testing::postgres(options).await {
            Some((db, scratch)) => Ok(Opened {
                db,
                _scratch: Some(scratch),
            }),
            None => Err(err("PostgreSQL does not answer")),
        },
        other => Err(err(format!("unknown backend {other}"))),
    }
}

/// The durability settings the database actually runs with.
async fn db_settings(db: &OrdersDb) -> Res<Value> {
    Ok(match db.control() {
        order_worker::db::Shard::Sqlite(p) => {
            let sync: i64 = sqlx::query("PRAGMA synchronous")
                .fetch_one(p)
                .await?
                .try_get(0)?;
            let journal: String = sqlx::query("PRAGMA journal_mode")
                .fetch_one(p)
                .await?
                .try_get(0)?;
            let version: String = sqlx::query("SELECT sqlite_version()")
                .fetch_one(p)
                .await?
                .try_get(0)?;
            json!({
                "version": version,
                "journal_mode": journal,
                "synchronous": match sync { 0 => "off", 1 => "normal", 2 => "full", 3 => "extra", _ => "?" },
            })
        }
        order_worker::db::Shard::Postgres(p) => {
            let mut out = serde_json::Map::new();
            for name in [
                "server_version",
                "synchronous_commit",
                "fsync",
                "wal_sync_method",
                "full_page_writes",
                "shared_buffers",
                "max_wal_size",
                "autovacuum",
            ] {
                let v: String = sqlx::query("SELECT current_setting($1)")
                    .bind(name)
                    .fetch_one(p)
                    .await?
                    .try_get(0)?;
                out.insert(name.into(), json!(v));
            }
            Value::Object(out)
        }
    })
}

async fn create_sale(db: &OrdersDb, units: usize) -> Res<()> {
    db.create_sale(
        &NewSale {
            id: SALE_ID,
            name: "bench sale".into(),
            price_cents: PRICE_CENTS,
            units: units as u64,
            starts_at_ms: 0,
            pay_window_ms: None,
            ends_at_ms: None,
            token_factor: None,
            per_user_limit: None,
            stock_buckets: None,
        },
        now_ms(),
    )
    .await?;
    Ok(())
}

/// What the database holds after `n` purchases were all ordered; the failures found.
async fn check_db(db: &OrdersDb, n: u64) -> Res<(Value, Vec<String>)> {
    let counts = db.order_counts(SALE_ID).await?;
    let sale = db
        .sale(SALE_ID)
        .await?
        .ok_or_else(|| err("the sale is gone"))?;
    let outcomes = db.outcome_counts(SALE_ID).await?;
    let mut failures = Vec::new();
    if counts.pending != n || counts.paid != 0 || counts.cancelled != 0 {
        failures.push(format!("orders {counts:?}, expected {n} pending"));
    }
    if sale.units_left != sale.units.saturating_sub(n) {
        failures.push(format!(
            "units left {} of {}, expected {}",
            sale.units_left,
            sale.units,
            sale.units.saturating_sub(n)
        ));
    }
    if outcomes != (n, 0) {
        failures.push(format!(
            "outcomes (ordered, rejected) {outcomes:?}, expected ({n}, 0)"
        ));
    }
    Ok((
        json!({
            "pending_orders": counts.pending,
            "units": sale.units,
            "units_left": sale.units_left,
            "outcomes_ordered": outcomes.0,
            "outcomes_rejected": outcomes.1,
        }),
        failures,
    ))
}

/// One worker task: `step()` until the workers together have finished `target` messages.
/// Returns the time spent in its steps that fetched something.
async fn drain_task(w: OrderWorker, target: u64) -> Res<f64> {
    let m = w.metrics().clone();
    let mut busy = 0.0;
    let mut last = m.messages.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while last < target {
        let t = Instant::now();
        let n = w.step().await?;
        if n > 0 {
            busy += t.elapsed().as_secs_f64();
        }
        let now = m.messages.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Err(err(format!(
                "workers stalled at {now} of {target} messages"
            )));
        }
    }
    Ok(busy)
}

/// The figure: real workers drain the pre-filled queue into a fresh database.
async fn drain_phase(
    root: &Path,
    plan: &Plan,
    backend: &str,
    workers: usize,
    failures: &mut Vec<String>,
) -> Res<Value> {
    let dir = phase_dir(root, &format!("drain-{backend}-w{workers}"));
    let (engine, prefill_s) = prefilled_queue(&dir.join("queue"), plan.messages).await?;
    let opened = open_db(backend, &dir, &plan.db).await?;
    let db = opened.db.clone();
    create_sale(&db, plan.messages).await?;
    let settings = db_settings(&db).await?;
    let before = engine.metrics();
    let timed = Arc::new(TimedQueue::new(engine.clone()));
    let metrics = Arc::new(WorkerMetrics::default());
    let config = WorkerConfig {
        batch_max: plan.batch,
        wait_ms: plan.wait_ms,
        ..WorkerConfig::default()
    };
    let target = plan.messages as u64;
    let cpu0 = Cpu::now();
    let t = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let w = OrderWorker::new(
                db.clone(),
                timed.clone(),
                None,
                config.clone(),
                metrics.clone(),
                Arc::new(queue::SystemClock),
            );
            tokio::spawn(drain_task(w, target))
        })
        .collect();
    let mut busy = Vec::with_capacity(workers);
    let mut first_err: Option<BoxError> = None;
    for h in tasks {
        match h.await {
            Ok(Ok(b)) => busy.push(round3(b)),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(err(format!("worker task: {e}")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.since(&Cpu::now(), secs);
    let after = engine.metrics();

    // Verification.
    let mut found = Vec::new();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let messages = load(&metrics.messages);
    let ordered = load(&metrics.ordered);
    if messages != target || ordered != target {
        found.push(format!(
            "workers finished {messages} and ordered {ordered} of {target}"
        ));
    }
    let (db_state, db_failures) = check_db(&db, target).await?;
    found.extend(db_failures);
    let deadlines = engine.stats(DEADLINES_TOPIC).await?;
    let deadline_msgs = deadlines.next_offset - deadlines.log_start;
    // Stored, not necessarily still delayed: a drain longer than the pay window sees its
    // first pay-by messages fall due (nothing consumes them here).
    if deadline_msgs != target || deadlines.published != target || deadlines.duplicates != 0 {
        found.push(format!(
            "pay-by messages: {deadline_msgs} stored, {} published, {} duplicates, expected {target}",
            deadlines.published, deadlines.duplicates
        ));
    }
    let lag = orders_group_lag(&engine).await?;
    if lag != 0 {
        found.push(format!("orders topic: {lag} purchases not acked"));
    }
    db.close().await;
    drop(opened);
    engine.close()?;

    let rate = per_s(messages, secs);
    let batches = load(&metrics.batches);
    let steps_s: f64 = busy.iter().sum();
    let queue_s = timed.fetch.secs() + timed.publish.secs() + timed.ack.secs();
    say(format!(
        "{:>13} {backend:>8} workers {workers}: {rate:>10.0} orders/s ({messages} in {secs:.2} s, {batches} batches; pre-fill {prefill_s:.2} s){}",
        "drain",
        if found.is_empty() {
            ""
        } else {
            "  VERIFICATION FAILED"
        }
    ));
    for f in &found {
        say(format!("  {backend} workers {workers}: {f}"));
    }
    let verified = found.is_empty();
    failures.extend(
        found
            .into_iter()
            .map(|f| format!("drain {backend} w{workers}: {f}")),
    );
    Ok(json!({
        "phase": "drain",
        "backend": backend,
        "workers": workers,
        "batch": plan.batch,
        "wait_ms": plan.wait_ms,
        "db_connections": plan.db.max_connections,
        "messages": messages,
        "secs": round3(secs),
        "orders_per_s": rate,
        "prefill_s": round3(prefill_s),
        "db_settings": settings,
        "batches": batches,
        "mean_batch": if batches > 0 { round1(messages as f64 / batches as f64) } else { 0.0 },
        "db_retries": load(&metrics.db_retries),
        "nacked": load(&metrics.nacked),
        "redelivered": load(&metrics.redelivered),
        "deadlines_published": load(&metrics.deadlines_published),
        "time": {
            "note": "summed over workers; steps_s: steps that fetched something; db_and_decode_s = steps_s - queue calls",
            "steps_s": round3(steps_s),
            "fetch": timed.fetch.json(),
            "publish_paybys": timed.publish.json(),
            "ack": timed.ack.json(),
            "db_and_decode_s": round3((steps_s - queue_s).max(0.0)),
            "per_batch_ms": {
                "step": if batches > 0 { round3(steps_s * 1e3 / batches as f64) } else { 0.0 },
                "db_and_decode": if batches > 0 { round3((steps_s - queue_s).max(0.0) * 1e3 / batches as f64) } else { 0.0 },
            },
        },
        "queue_writer": rounds_json(&before, &after),
        "cpu": cpu,
        "verified": verified,
        "check": {
            "db": db_state,
            "deadlines_stored": deadline_msgs,
            "deadlines_delayed": deadlines.delayed_pending,
            "deadlines_published": deadlines.published,
            "orders_group_lag": lag,
        },
    }))
}

/// Baseline b: one transaction per purchase, one after another, no queue.
async fn naive_phase(
    root: &Path,
    plan: &Plan,
    backend: &str,
    failures: &mut Vec<String>,
) -> Res<Value> {
    let dir = phase_dir(root, &format!("naive-{backend}"));
    let opened = open_db(backend, &dir, &plan.db).await?;
    let db = opened.db.clone();
    let n = plan.naive_messages;
    create_sale(&db, n).await?;
    let settings = db_settings(&db).await?;
    let all = purchases(n);
    let mut found = Vec::new();
    let cpu0 = Cpu::now();
    let t = Instant::now();
    let mut ordered = 0u64;
    for p in &all {
        let d = db.decide_batch(std::slice::from_ref(p), now_ms()).await?;
        match d.first() {
            Some(Decision::Ordered { fresh: true, .. }) => ordered += 1,
            other => {
                if found.len() < 10 {
                    found.push(format!("{}: {other:?}", p.ticket));
                }
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.since(&Cpu::now(), secs);
    let (db_state, db_failures) = check_db(&db, n as u64).await?;
    found.extend(db_failures);
    db.close().await;
    drop(opened);
    let rate = per_s(ordered, secs);
    say(format!(
        "{:>13} {backend:>8} workers 1: {rate:>10.0} orders/s ({ordered} in {secs:.2} s, one transaction each){}",
        "naive",
        if found.is_empty() {
            ""
        } else {
            "  VERIFICATION FAILED"
        }
    ));
    let verified = found.is_empty();
    failures.extend(found.into_iter().map(|f| format!("naive {backend}: {f}")));
    Ok(json!({
        "phase": "naive",
        "backend": backend,
        "workers": 1,
        "batch": 1,
        "messages": ordered,
        "secs": round3(secs),
        "orders_per_s": rate,
        "db_settings": settings,
        "cpu": cpu,
        "verified": verified,
        "check": db_state,
    }))
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 {
        json!(round3(a / b))
    } else {
        Value::Null
    }
}

fn rate_of(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The plan of a run from the arguments, each checked against its bound.
fn plan_of(args: &Args) -> Res<Plan> {
    let (messages, naive_messages) = if args.quick {
        (QUICK_MESSAGES, QUICK_NAIVE_MESSAGES)
    } else {
        (args.messages, args.naive_messages)
    };
    if messages == 0 || messages > MESSAGES_MAX {
        return Err(err(format!("--messages must be 1..={MESSAGES_MAX}")));
    }
    if naive_messages == 0 || naive_messages > NAIVE_MESSAGES_MAX {
        return Err(err(format!(
            "--naive-messages must be 1..={NAIVE_MESSAGES_MAX}"
        )));
    }
    let batch_max = order_worker::db::BATCH_MAX;
    if args.batch == 0 || args.batch > batch_max {
        return Err(err(format!("--batch must be 1..={batch_max}")));
    }
    if args.workers.len() > WORKER_COUNTS_MAX
        || args.workers.iter().any(|&w| w == 0 || w > WORKERS_MAX)
    {
        return Err(err(format!(
            "--workers: at most {WORKER_COUNTS_MAX} counts, each 1..={WORKERS_MAX}"
        )));
    }
    if args.db_connections == 0 || args.db_connections > CONNECTIONS_MAX {
        return Err(err(format!(
            "--db-connections must be 1..={CONNECTIONS_MAX}"
        )));
    }
    let sqlite_durability = match args.sqlite_sync.as_str() {
        "full" => SqliteDurability::Full,
        "normal" => SqliteDurability::Normal,
        other => return Err(err(format!("--sqlite-sync is full or normal, not {other}"))),
    };
    for b in &args.backends {
        if b != "sqlite" && b != "postgres" {
            return Err(err(format!("--backends: sqlite, postgres; not {b}")));
        }
    }
    for p in &args.only {
        if !["queue_only", "queue_paybys", "drain", "naive"].contains(&p.as_str()) {
            return Err(err(format!(
                "--only: queue_only, queue_paybys, drain, naive; not {p}"
            )));
        }
    }
    Ok(Plan {
        messages,
        naive_messages,
        batch: args.batch,
        wait_ms: args.wait_ms.min(WAIT_MS_MAX),
        db: DbOptions {
            max_connections: args.db_connections,
            sqlite_durability,
        },
        phases: args.only.clone(),
    })
}

/// The phases of one backend, for each worker count: the naive baseline once, then per
/// count the queue baselines right before the drain they are compared with. Returns the
/// backend's summary and its best drain rate (orders/s), if it drained.
async fn bench_backend(
    root: &Path,
    plan: &Plan,
    args: &Args,
    backend: &str,
    phases: &mut Vec<Value>,
    failures: &mut Vec<String>,
) -> Res<(Value, Option<f64>)> {
    let counts = if args.workers.is_empty() {
        vec![if backend == "sqlite" {
            SQLITE_WORKERS_DEFAULT
        } else {
            POSTGRES_WORKERS_DEFAULT
        }]
    } else {
        args.workers.clone()
    };
    let naive = if plan.runs("naive") {
        let v = naive_phase(root, plan, backend, failures).await?;
        phases.push(v.clone());
        Some(v)
    } else {
        None
    };
    let naive_rate = naive.as_ref().map(|v| rate_of(v, "orders_per_s"));
    let mut runs = Vec::new();
    for &w in &counts {
        // The baselines right before the drain they are compared with (the machine's
        // speed drifts from minute to minute).
        let queue_only = if plan.runs("queue_only") {
            let v = queue_phase(root, plan, w, false).await?;
            phases.push(v.clone());
            Some(rate_of(&v, "msgs_per_s"))
        } else {
            None
        };
        let paybys = if plan.runs("queue_paybys") {
            let v = queue_phase(root, plan, w, true).await?;
            phases.push(v.clone());
            Some(rate_of(&v, "msgs_per_s"))
        } else {
            None
        };
        if plan.runs("drain") {
            let v = drain_phase(root, plan, backend, w, failures).await?;
            let rate = rate_of(&v, "orders_per_s");
            runs.push(json!({
                "workers": w,
                "orders_per_s": rate,
                "secs": v.get("secs"),
                "verified": v.get("verified"),
                "queue_only_msgs_per_s": queue_only,
                "queue_paybys_msgs_per_s": paybys,
                "ratio_to_queue_only": queue_only.map_or(Value::Null, |q| ratio(rate, q)),
                "ratio_to_queue_paybys": paybys.map_or(Value::Null, |q| ratio(rate, q)),
                "ratio_to_naive": naive_rate.map_or(Value::Null, |n| ratio(rate, n)),
                "target_met": rate >= TARGET_ORDERS_PER_S,
            }));
            phases.push(v);
        }
    }
    let best = runs
        .iter()
        .map(|r| rate_of(r, "orders_per_s"))
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let summary = json!({
        "naive_orders_per_s": naive_rate,
        "drains": runs,
        "best_orders_per_s": best,
    });
    Ok((summary, best))
}

async fn run(args: Args) -> Res<(Value, Vec<String>)> {
    let plan = plan_of(&args)?;
    let (messages, naive_messages) = (plan.messages, plan.naive_messages);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = BenchDir::create(&base)?;
    let fs = filesystem_of(&root.path);
    if let Some((_, _, t)) = &fs
        && (t == "tmpfs" || t == "ramfs")
    {
        say(format!(
            "warning: {} is on {t}: fsyncs cost nothing there",
            root.path.display()
        ));
    }
    let env_start = environment_json();
    let started = now_ms();
    say(format!(
        "order-worker-bench: {messages} purchases per drain, {naive_messages} naive, batch {}, queue fsync-before-confirm, SQLite synchronous={}, in {}",
        plan.batch,
        args.sqlite_sync,
        root.path.display()
    ));

    let mut skipped = serde_json::Map::new();
    let mut backends: Vec<&str> = Vec::new();
    for b in ["sqlite", "postgres"] {
        if !args.backends.iter().any(|x| x == b) {
            continue;
        }
        if b == "postgres"
            && let Err(why) = postgres_reachable().await
        {
            say(format!("postgres: skipped: {why}"));
            skipped.insert(b.into(), json!(why.to_string()));
            continue;
        }
        backends.push(b);
    }

    let mut failures = Vec::new();
    let mut phases = Vec::new();
    let mut summary_backends = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    for (name, why) in &skipped {
        targets.insert(format!("{name}_ge_{TARGET_ORDERS_PER_S}"), Value::Null);
        summary_backends.insert(name.clone(), json!({ "skipped": why }));
    }
    for backend in &backends {
        let (summary, best) = bench_backend(
            &root.path,
            &plan,
            &args,
            backend,
            &mut phases,
            &mut failures,
        )
        .await?;
        if let Some(best) = best {
            targets.insert(
                format!("{backend}_ge_{TARGET_ORDERS_PER_S}"),
                json!(best >= TARGET_ORDERS_PER_S),
            );
        }
        summary_backends.insert((*backend).into(), summary);
    }

    let (fs_dev, fs_mount, fs_type) = fs.unwrap_or_default();
    let summary = json!({
        "bench": "order-worker",
        "unix_ms": started,
        "machine": machine_json(),
        "filesystem": { "device": fs_dev, "mount": fs_mount, "type": fs_type },
        "environment_start": env_start,
        "environment_end": environment_json(),
        "settings": {
            "messages": plan.messages,
            "naive_messages": plan.naive_messages,
            "batch": plan.batch,
            "wait_ms": plan.wait_ms,
            "workers": if args.workers.is_empty() {
                json!({ "sqlite": SQLITE_WORKERS_DEFAULT, "postgres": POSTGRES_WORKERS_DEFAULT })
            } else {
                json!(args.workers)
            },
            "db_connections": plan.db.max_connections,
            "sqlite_sync": args.sqlite_sync,
            "queue_durability": queue::Config::default().durability.to_string(),
            "queue_commit_gather": queue::Config::default().commit_gather,
            "sale": format!("one sale with units = the purchases (every purchase becomes an order), pay window {PAY_WINDOW_MS_DEFAULT} ms"),
            "quick": args.quick,
        },
        "backends": summary_backends,
        "targets": targets,
        "target_orders_per_s": TARGET_ORDERS_PER_S,
        "verified": failures.is_empty(),
        "failures": failures,
        "phases": phases,
    });
    Ok((summary, failures))
}

fn main() -> ExitCode {
    order_worker::allocator::configure();
    let args = Args::parse();
    let json_out = args.json_out.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(format!("order-worker-bench: runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let (summary, failures) = match rt.block_on(run(args)) {
        Ok(r) => r,
        Err(e) => {
            say(format!("order-worker-bench: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match serde_json::to_string(&summary) {
        Ok(text) => println!("{text}"),
        Err(e) => {
            say(format!("order-worker-bench: summary: {e}"));
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = json_out {
        let written = serde_json::to_string_pretty(&summary)
            .map_err(BoxError::from)
            .and_then(|t| std::fs::write(&path, t + "\n").map_err(BoxError::from));
        if let Err(e) = written {
            say(format!(
                "order-worker-bench: writing {}: {e}",
                path.display()
            ));
            return ExitCode::FAILURE;
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            say(format!("order-worker-bench: VERIFICATION FAILED: {f}"));
        }
        ExitCode::FAILURE
    }
}
