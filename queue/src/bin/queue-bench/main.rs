//! `queue-bench`: throughput, latency and memory figures of the embedded queue engine, with
//! a raw `write` + `fdatasync` baseline measured in the same run on the same filesystem.
//!
//! Progress goes to stderr; the last line on stdout is one JSON object with every figure,
//! the durability policy and the ratios to the baseline. Exits non-zero on any engine error.
//!
//! ```text
//! cargo run --release -p queue --bin queue-bench -- [--quick] [--dir PATH] [--keep] [--ids]
//! ```
//!
//! Phases (each on a fresh engine in its own directory, all with `Config::default()`):
//! 1. memory per pending delayed message (first, so that the allocator state of the other
//!    phases does not blur the RSS delta; with `--ids` every message has its own producer
//!    id, so the figure includes the de-duplication window);
//! 2. baseline: raw append of the same bytes with `fdatasync` per 1000-message chunk and
//!    per single message;
//! 3. batched publish (`publish_batch`, several concurrent tasks);
//! 4. single-message publish from 64 concurrent tasks, with confirm latency;
//! 5. consume + ack throughput;
//! 6. delayed-delivery lateness;
//! 7. our broker over loopback TCP (`broker.rs`);
//! 8. raw Redis Streams (`redis_streams.rs`) and our queue on Redis Streams
//!    (`redis_queue.rs`) on scratch servers with the same settings (`scratch_redis.rs`),
//!    driven like the broker: the same producers, messages per round trip and consumers;
//! 9. the baseline again, to show how much the machine drifted during the run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use queue::{
    AckOutcome, Config, Delivery, Due, Engine, FetchOptions, Message, Queue, Receipt, StartAt,
};
use serde_json::{Value, json};

/// Payload size of every message in the benchmark.
const MESSAGE_BYTES: usize = 256;
/// Largest latency a histogram holds, in µs (larger values are clamped).
const HIST_MAX_US: u64 = 120_000_000;
/// Targets from the issue (on a 2-core machine).
const TARGET_BATCHED_MSGS_S: f64 = 1_000_000.0;
const TARGET_SINGLE_MSGS_S: f64 = 300_000.0;
const TARGET_CONFIRM_P99_US: u64 = 2_000;
const TARGET_DELAYED_BYTES_PER_MSG: f64 = 64.0;
const TARGET_LATENESS_P99_US: u64 = 100_000;
/// Delay of the "far in the future" messages of the memory phase: 30 days.
const FAR_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;
/// A phase that has not finished after this long has failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Progress line on stderr; a closed stderr is ignored rather than a panic (as `eprintln!`).
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

// After `note!` and the error helpers, which these use.
mod broker;
mod redis_queue;
mod redis_streams;
mod scratch_redis;

/// Phase names for `--only`.
const PHASES: [&str; 9] = [
    "memory", "baseline", "batched", "single", "consume", "lateness", "broker", "redis", "redisq",
];

/// The command line. Sizes whose default depends on `--quick` are `Option`s here and get
/// their default in [`Args::from_cli`].
#[derive(Parser, Debug)]
#[command(
    name = "queue-bench",
    about = "queue-bench: throughput, latency and memory of the queue engine (release build)",
    after_help = "Progress goes to stderr; the last stdout line is a JSON summary."
)]
struct Cli {
    /// Small sizes: a run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Directory to create the temporary bench directory in (default: the system temp
    /// dir; must be a real disk, not tmpfs).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Keep the bench directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Turn off group-commit gathering (`Config::commit_gather`), to compare.
    #[arg(long)]
    no_gather: bool,
    /// Measured seconds of each timed phase (default 8, quick 1.5).
    #[arg(long, value_name = "S")]
    secs: Option<f64>,
    /// Messages per publish_batch / fetch / ack.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    batch: usize,
    /// Concurrent publish_batch tasks.
    #[arg(long, value_name = "N", default_value_t = 4)]
    batch_tasks: usize,
    /// Concurrent single-publish tasks.
    #[arg(long, value_name = "N", default_value_t = 64)]
    tasks: usize,
    /// Concurrent consumers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    consumers: usize,
    /// Pending delayed messages for the memory figure (also in a quick run: fixed costs
    /// blur smaller counts).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    delayed: u64,
    /// Give every message of the memory phase its own producer id, so the figure includes
    /// the de-duplication window (default: no ids).
    #[arg(long)]
    ids: bool,
    /// Messages to consume + ack (default 1000000, quick 100000).
    #[arg(long, value_name = "N")]
    consume: Option<u64>,
    /// Delayed messages for the lateness figure (default 5000, quick 1000).
    #[arg(long, value_name = "N")]
    lateness: Option<usize>,
    /// Broker and Redis phases: producer tasks, one connection each.
    #[arg(long, value_name = "N", default_value_t = 16)]
    producers: usize,
    /// Broker and Redis phases: messages per round trip.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pipeline: usize,
    /// Broker and Redis phases: messages to consume + ack (default 500000, quick 100000).
    #[arg(long, value_name = "N")]
    tcp_consume: Option<u64>,
    /// Run only these phases (comma-separated: memory, baseline, batched, single, consume,
    /// lateness, broker, redis, redisq); the JSON then lacks ratios and targets of the
    /// phases left out (for profiling). `redis` is raw Redis Streams, `redisq` our queue on
    /// Redis Streams (with `redis` too, raw Redis runs again after it and our ratio is to
    /// the mean of the two).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = phase)]
    only: Option<Vec<String>>,
}

/// One `--only` entry: a known phase name (spaces around it allowed).
fn phase(s: &str) -> Result<String, String> {
    let p = s.trim();
    if PHASES.contains(&p) {
        Ok(p.to_string())
    } else {
        Err(format!(
            "unknown phase {p:?} (one of {})",
            PHASES.join(", ")
        ))
    }
}

/// Settings of a run: the command line with every default filled in.
#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    dir: Option<PathBuf>,
    keep: bool,
    secs: f64,
    warmup_secs: f64,
    baseline_secs: f64,
    batch: usize,
    batch_tasks: usize,
    tasks: usize,
    consumers: usize,
    delayed: u64,
    /// `--ids`: memory-phase messages carry unique producer ids.
    ids: bool,
    consume: u64,
    lateness: usize,
    producers: usize,
    pipeline: usize,
    tcp_consume: u64,
    only: Option<Vec<String>>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == phase))
    }

    /// Fills in the defaults that depend on `--quick` and checks the values that clap's
    /// types do not.
    fn from_cli(cli: Cli) -> Res<Args> {
        let quick = cli.quick;
        let (secs, warmup_secs, baseline_secs) = if quick {
            (1.5, 0.3, 1.0)
        } else {
            (8.0, 1.0, 3.0)
        };
        let a = Args {
            quick,
            dir: cli.dir,
            keep: cli.keep,
            secs: cli.secs.unwrap_or(secs),
            warmup_secs,
            baseline_secs,
            batch: cli.batch,
            batch_tasks: cli.batch_tasks,
            tasks: cli.tasks,
            consumers: cli.consumers,
            delayed: cli.delayed,
            ids: cli.ids,
            consume: cli
                .consume
                .unwrap_or(if quick { 100_000 } else { 1_000_000 }),
            lateness: cli.lateness.unwrap_or(if quick { 1000 } else { 5000 }),
            producers: cli.producers,
            pipeline: cli.pipeline,
            tcp_consume: cli
                .tcp_consume
                .unwrap_or(if quick { 100_000 } else { 500_000 }),
            only: cli.only,
        };
        if cli.no_gather {
            NO_GATHER.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        a.check()?;
        Ok(a)
    }

    fn check(&self) -> Res<()> {
        let a = self;
        if !(a.secs.is_finite() && a.secs > 0.0) {
            return Err(err("--secs must be positive"));
        }
        if a.batch == 0 || a.batch > queue::limits::BATCH_MESSAGES_MAX {
            return Err(err(format!(
                "--batch must be 1..={}",
                queue::limits::BATCH_MESSAGES_MAX
            )));
        }
        if a.producers == 0 || a.pipeline == 0 || a.pipeline > queue::limits::BATCH_MESSAGES_MAX {
            return Err(err(format!(
                "--producers must be at least 1 and --pipeline 1..={}",
                queue::limits::BATCH_MESSAGES_MAX
            )));
        }
        if a.batch_tasks == 0 || a.tasks == 0 || a.consumers == 0 {
            return Err(err(
                "--batch-tasks, --tasks and --consumers must be at least 1",
            ));
        }
        if a.delayed < 2 * a.batch as u64 || a.consume == 0 || a.lateness == 0 {
            return Err(err(
                "--delayed must be at least two batches; --consume and --lateness at least 1",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers: time windows, histograms, /proc readers, the temporary directory.

/// A warm-up followed by a measured window; operations count only if they start and end
/// inside the measured window.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn new(warmup_secs: f64, secs: f64) -> Window {
        let from = Instant::now() + Duration::from_secs_f64(warmup_secs);
        Window {
            from,
            until: from + Duration::from_secs_f64(secs),
        }
    }

    fn secs(&self) -> f64 {
        (self.until - self.from).as_secs_f64()
    }

    fn counts(&self, t0: Instant, t1: Instant) -> bool {
        t0 >= self.from && t1 <= self.until
    }
}

fn hist() -> Res<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| err(format!("histogram: {e}")))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn merge(hists: impl IntoIterator<Item = Histogram<u64>>) -> Res<Histogram<u64>> {
    let mut all = hist()?;
    for h in hists {
        all.add(&h)
            .map_err(|e| err(format!("histogram merge: {e}")))?;
    }
    Ok(all)
}

fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": round1(h.mean()),
    })
}

/// Operations counted inside a measured [`Window`]: their messages and their latency.
#[derive(Debug)]
struct Timed {
    msgs: u64,
    latency: Histogram<u64>,
}

impl Timed {
    fn new() -> Res<Timed> {
        Ok(Timed {
            msgs: 0,
            latency: hist()?,
        })
    }

    /// Counts an operation of `msgs` messages that ran from `t0` to `t1`, if inside `w`.
    fn record(&mut self, w: &Window, t0: Instant, t1: Instant, msgs: u64) {
        if w.counts(t0, t1) {
            self.msgs += msgs;
            self.latency.saturating_record(micros(t1 - t0));
        }
    }

    fn merge(parts: Vec<Timed>) -> Res<Timed> {
        let msgs = parts.iter().map(|t| t.msgs).sum();
        let latency = merge(parts.into_iter().map(|t| t.latency))?;
        Ok(Timed { msgs, latency })
    }
}

/// `fields` with the keys of `more` added (both JSON objects).
fn merged(mut fields: Value, more: Value) -> Value {
    if let (Some(f), Value::Object(m)) = (fields.as_object_mut(), more) {
        f.extend(m);
    }
    fields
}

/// `msgs_per_s` (rounded) and `mb_per_s` of `msgs` messages in `secs` seconds.
fn rates_json(msgs: u64, secs: f64) -> Value {
    let msgs_s = msgs as f64 / secs;
    json!({
        "msgs_per_s": msgs_s.round(),
        "mb_per_s": round1(mb_per_s(msgs_s)),
    })
}

/// A phase's figures with the engine settings they were taken under.
fn with_policy(fields: Value) -> Value {
    merged(
        fields,
        json!({
            "durability": Config::default().durability.to_string(),
            "commit_gather": bench_config().commit_gather,
        }),
    )
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// [`ms`] of a JSON figure in µs (0 when missing), for progress lines.
fn ms_of(us: &Value) -> String {
    ms(us.as_u64().unwrap_or(0))
}

/// [`rate`] of a JSON figure (0 when missing), for progress lines.
fn rate_of(x: &Value) -> String {
    rate(x.as_f64().unwrap_or(0.0))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mb_per_s(msgs_per_s: f64) -> f64 {
    msgs_per_s * MESSAGE_BYTES as f64 / 1e6
}

/// Formats a rate with thousands separators.
fn rate(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`).
fn rss_bytes() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| err("no VmRSS in /proc/self/status"))
}

/// Write syscalls and bytes sent to storage by this process so far (`/proc/self/io`).
fn io_counters() -> (u64, u64) {
    let get = |key| {
        proc_field("/proc/self/io", key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("syscw"), get("write_bytes"))
}

/// Load average and I/O pressure: how busy the (shared) machine was.
fn environment_json() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().replace('\n', "; "))
            .unwrap_or_default()
    };
    json!({
        "loadavg": read("/proc/loadavg"),
        "io_pressure": read("/proc/pressure/io"),
    })
}

/// [`io_counters`] at the start and at the end of a window.
/// [`io_counters`] and [`thread_counters`] at the start and at the end of a window.
type IoSample = (((u64, u64), ThreadCounters), ((u64, u64), ThreadCounters));

/// Samples [`io_counters`] and [`thread_counters`] at the start and end of a measured
/// window: the writer thread makes one `pwrite` per file per group-commit round, so write
/// syscalls in the window count the rounds (and the fdatasyncs); the threads' context
/// switches and CPU time say what each message cost the process.
fn spawn_io_sampler(w: Window) -> tokio::task::JoinHandle<IoSample> {
    tokio::spawn(async move {
        tokio::time::sleep_until(w.from.into()).await;
        let start = (io_counters(), thread_counters());
        tokio::time::sleep_until(w.until.into()).await;
        (start, (io_counters(), thread_counters()))
    })
}

/// Per thread name (tokio's workers share one): context switches (voluntary, involuntary)
/// and nanoseconds on a CPU, summed over the process's threads.
type ThreadCounters = std::collections::BTreeMap<String, (u64, u64, u64)>;

/// Reads `/proc/self/task/*/{comm,status,schedstat}`. Threads that end between two samples
/// drop out of the later one; the phases' threads (tokio workers, the engine's writer and
/// notifier) live through the window.
fn thread_counters() -> ThreadCounters {
    let mut out = ThreadCounters::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let status = |key: &str| {
            proc_field(&dir.join("status").to_string_lossy(), key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let on_cpu_ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let e = out.entry(name).or_default();
        e.0 += status("voluntary_ctxt_switches");
        e.1 += status("nonvoluntary_ctxt_switches");
        e.2 += on_cpu_ns;
    }
    out
}

/// Context switches and CPU time per message in the window, per thread name and in total.
fn threads_json(start: &ThreadCounters, end: &ThreadCounters, msgs: u64) -> Value {
    let per = |x: u64| {
        if msgs > 0 {
            round3(x as f64 / msgs as f64)
        } else {
            0.0
        }
    };
    let mut by_name = serde_json::Map::new();
    let (mut cs, mut ns) = (0u64, 0u64);
    for (name, &(v1, n1, t1)) in end {
        let (v0, n0, t0) = start.get(name).copied().unwrap_or_default();
        let (v, n, t) = (
            v1.saturating_sub(v0),
            n1.saturating_sub(n0),
            t1.saturating_sub(t0),
        );
        cs += v + n;
        ns += t;
        by_name.insert(
            name.clone(),
            json!({
                "voluntary_cs_per_msg": per(v),
                "involuntary_cs_per_msg": per(n),
                "cpu_ns_per_msg": per(t),
            }),
        );
    }
    json!({
        "context_switches_per_msg": per(cs),
        "cpu_ns_per_msg": per(ns),
        "by_thread": by_name,
        "note": "from /proc/self/task/*/status and schedstat over the measured window, divided by the messages confirmed in it",
    })
}

fn group_commit_json(
    sampled: std::result::Result<IoSample, tokio::task::JoinError>,
    msgs: u64,
    secs: f64,
) -> Value {
    let Ok((((w0, b0), threads0), ((w1, b1), threads1))) = sampled else {
        return Value::Null;
    };
    let writes = w1.saturating_sub(w0);
    json!({
        "write_syscalls": writes,
        "rounds_per_s": round1(writes as f64 / secs),
        "msgs_per_round": if writes > 0 { round1(msgs as f64 / writes as f64) } else { 0.0 },
        "mean_round_us": if writes > 0 { round1(secs * 1e6 / writes as f64) } else { 0.0 },
        "disk_write_mb_per_s": round1(b1.saturating_sub(b0) as f64 / secs / 1e6),
        "threads": threads_json(&threads0, &threads1, msgs),
        "note": "write syscalls of the process in the measured window (/proc/self/io syscw): one pwrite + one fdatasync per group-commit round",
    })
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

/// The bench's own directory; removed on drop unless kept.
#[derive(Debug)]
struct BenchDir {
    path: PathBuf,
    keep: bool,
}

impl BenchDir {
    fn create(base: &Path, keep: bool) -> Res<BenchDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!("queue-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| err(format!("create {}: {e}", path.display())))?;
        Ok(BenchDir { path, keep })
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Closes an engine. Its directory is deleted with the bench directory at the end of the
/// run, not now: deleting gigabytes between phases makes ext4 free extents and commit its
/// journal while the next phase runs, which shows up as 100+ ms fsync outliers there.
fn finish_engine(engine: Engine) -> Res<()> {
    engine.close()?;
    drop(engine);
    Ok(())
}

/// Awaits every task; the first error (of a task or of joining it) wins.
async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<Res<T>>>) -> Res<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(err(format!("task failed: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// `n` messages due at `due`; with `ids`, each takes the next producer id from that counter.
fn batch_of(payload: &Bytes, n: usize, due: Due, ids: Option<&AtomicU64>) -> Vec<Message> {
    let first = ids.map(|next| next.fetch_add(n as u64, Ordering::Relaxed));
    (0..n as u64)
        .map(|i| {
            let m = Message::new(payload.clone()).with_due(due);
            match first {
                Some(first) => m.with_id(u128::from(first + i)),
                None => m,
            }
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*), enough to spread delays.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

// ---------------------------------------------------------------------------------------
// Baseline: raw appends with fdatasync.

/// Appends `chunk_msgs` messages' bytes per write and fdatasyncs after each write, for the
/// measured window, from one thread.
fn baseline_append(dir: &Path, a: &Args, chunk_msgs: usize, payload: &[u8]) -> Res<Value> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!("baseline-{chunk_msgs}-{nanos}.dat"));
    let mut f: File = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| err(format!("create {}: {e}", path.display())))?;
    let mut buf = Vec::with_capacity(chunk_msgs * payload.len());
    for _ in 0..chunk_msgs {
        buf.extend_from_slice(payload);
    }
    let mut timed = Timed::new()?;
    let w = Window::new(a.warmup_secs.min(0.5), a.baseline_secs);
    loop {
        let t0 = Instant::now();
        if t0 >= w.until {
            break;
        }
        f.write_all(&buf)
            .map_err(|e| err(format!("write {}: {e}", path.display())))?;
        f.sync_data()
            .map_err(|e| err(format!("fdatasync {}: {e}", path.display())))?;
        timed.record(&w, t0, Instant::now(), chunk_msgs as u64);
    }
    // The file goes with the bench directory at the end (see `finish_engine`).
    drop(f);
    Ok(merged(
        json!({
            "messages_per_write": chunk_msgs,
            "fdatasyncs_per_s": round1(timed.latency.len() as f64 / w.secs()),
            "write_fdatasync_latency": latency_json(&timed.latency),
        }),
        rates_json(timed.msgs, w.secs()),
    ))
}

fn baseline(dir: &Path, a: &Args, payload: &[u8], label: &str) -> Res<Value> {
    let chunk = a.batch;
    let chunked = baseline_append(dir, a, chunk, payload)?;
    note!(
        "  baseline ({label}) write {chunk} msgs + fdatasync: {} msgs/s, {} MB/s, {} syncs/s, p50 {}",
        rate_of(&chunked["msgs_per_s"]),
        chunked["mb_per_s"],
        chunked["fdatasyncs_per_s"],
        ms_of(&chunked["write_fdatasync_latency"]["p50_us"]),
    );
    let single = baseline_append(dir, a, 1, payload)?;
    let sl = &single["write_fdatasync_latency"];
    note!(
        "  baseline ({label}) write 1 msg + fdatasync: {} msgs/s, latency p50 {} p99 {} p999 {}",
        rate_of(&single["msgs_per_s"]),
        ms_of(&sl["p50_us"]),
        ms_of(&sl["p99_us"]),
        ms_of(&sl["p999_us"]),
    );
    // About what one group-commit round of the single-publish phase writes (half the
    // publishers' messages, see BENCHMARKS.md), so its round time can be compared.
    let round = (a.tasks / 2).max(1);
    let round_sized = baseline_append(dir, a, round, payload)?;
    let rl = &round_sized["write_fdatasync_latency"];
    note!(
        "  baseline ({label}) write {round} msgs + fdatasync: {} syncs/s, latency p50 {} p99 {}",
        round_sized["fdatasyncs_per_s"],
        ms_of(&rl["p50_us"]),
        ms_of(&rl["p99_us"]),
    );
    Ok(json!({ "chunked": chunked, "single": single, "round_sized": round_sized }))
}

// ---------------------------------------------------------------------------------------
// Engine phases.

/// A fresh engine in `root/name`.
fn open_phase_engine(root: &Path, name: &str) -> Res<Engine> {
    Ok(Engine::open(root.join(name), bench_config())?)
}

/// Publishes `n` messages due at `due` to `topic`, in batches of up to `a.batch` from
/// `a.batch_tasks` concurrent tasks; with `ids`, with producer ids from that counter.
async fn publish_all(
    engine: &Engine,
    topic: &'static str,
    payload: &Bytes,
    a: &Args,
    n: u64,
    due: Due,
    ids: Option<Arc<AtomicU64>>,
) -> Res<()> {
    let batch = a.batch as u64;
    let left = Arc::new(AtomicU64::new(n));
    let mut handles = Vec::new();
    for _ in 0..a.batch_tasks {
        let engine = engine.clone();
        let payload = payload.clone();
        let left = left.clone();
        let ids = ids.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let mut take = 0;
                let r = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                    take = l.min(batch);
                    (take > 0).then_some(l - take)
                });
                if r.is_err() {
                    break;
                }
                engine
                    .publish_batch(
                        topic,
                        batch_of(&payload, take as usize, due, ids.as_deref()),
                    )
                    .await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    join_all(handles).await?;
    Ok(())
}

/// Runs `tasks` tasks that each repeat a publish until the measured window closes.
/// `publish()` prepares one operation (not timed) and returns the future that performs it,
/// which resolves to the number of messages confirmed. Returns the latency of the operations
/// inside the window and the figures every timed publish phase reports: seconds, messages,
/// rates and group-commit rounds.
async fn timed_publishing<P, F>(a: &Args, tasks: usize, publish: P) -> Res<(Histogram<u64>, Value)>
where
    P: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = Res<u64>> + Send + 'static,
{
    let w = Window::new(a.warmup_secs, a.secs);
    let sampler = spawn_io_sampler(w);
    // Every message confirmed, warm-up and stragglers included: what a whole-process
    // `perf stat` or callgrind run divides by.
    let all = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let publish = publish.clone();
        let all = all.clone();
        handles.push(tokio::spawn(async move {
            let mut timed = Timed::new()?;
            loop {
                let operation = publish();
                let t0 = Instant::now();
                if t0 >= w.until {
                    break;
                }
                let msgs = operation.await?;
                timed.record(&w, t0, Instant::now(), msgs);
                all.fetch_add(msgs, Ordering::Relaxed);
            }
            Ok(timed)
        }));
    }
    let timed = Timed::merge(join_all(handles).await?)?;
    let group_commit = group_commit_json(sampler.await, timed.msgs, w.secs());
    let figures = merged(
        json!({
            "seconds": w.secs(),
            "messages": timed.msgs,
            "messages_all": all.load(Ordering::Relaxed),
            "group_commit": group_commit,
        }),
        rates_json(timed.msgs, w.secs()),
    );
    Ok((timed.latency, figures))
}

/// Fetch options of the consuming phases: leases long enough never to expire mid-phase.
fn lease_opts(max_messages: usize, wait_ms: u64) -> FetchOptions {
    FetchOptions {
        max_messages,
        lease_ms: Some(600_000),
        wait_ms,
    }
}

/// Fails a phase that started at `start` once it has run longer than [`PHASE_TIMEOUT`].
fn check_timeout(start: Instant, phase: &str) -> Res<()> {
    if start.elapsed() > PHASE_TIMEOUT {
        return Err(err(format!("{phase} phase timed out")));
    }
    Ok(())
}

/// 1,000,000 (by default) delayed messages due in 30 days: RSS delta and index heap bytes.
/// With `--ids`, each message has its own producer id (so the de-dup window is counted).
async fn bench_delayed_memory(root: &Path, a: &Args, payload: &Bytes) -> Res<Value> {
    let engine = open_phase_engine(root, "delayed-memory")?;
    let topic = "bench-delayed";
    let due = Due::After(FAR_DELAY_MS);
    let ids = a.ids.then(|| Arc::new(AtomicU64::new(1)));
    // One batch first, so that the topic, its files and the engine's threads exist before
    // the "before" figures are taken.
    engine
        .publish_batch(topic, batch_of(payload, a.batch, due, ids.as_deref()))
        .await?;
    let rss0 = rss_bytes()?;
    let heap0 = engine.index_heap_bytes(topic)?;
    let t0 = Instant::now();
    // Whole batches only.
    let batches = (a.delayed - a.batch as u64) / a.batch as u64;
    let n = batches * a.batch as u64;
    publish_all(&engine, topic, payload, a, n, due, ids).await?;
    let publish_secs = t0.elapsed().as_secs_f64();
    let rss1 = rss_bytes()?;
    let heap1 = engine.index_heap_bytes(topic)?;
    let stats = engine.stats(topic).await?;
    let pending = stats.delayed_pending;
    let measured = pending.saturating_sub(a.batch as u64);
    if measured == 0 {
        return Err(err("no delayed messages pending"));
    }
    let rss_per = rss1.saturating_sub(rss0) as f64 / measured as f64;
    let heap_per = heap1.saturating_sub(heap0) as f64 / measured as f64;
    let heap_total_per = heap1 as f64 / pending as f64;
    finish_engine(engine)?;
    Ok(with_policy(json!({
        "pending": pending,
        "delay_ms": FAR_DELAY_MS,
        "measured_messages": measured,
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "rss_bytes_per_message": round1(rss_per),
        "index_heap_bytes": heap1,
        "index_heap_bytes_per_message": round1(heap_per),
        "index_heap_total_bytes_per_message": round1(heap_total_per),
        "publish_msgs_per_s": (pending as f64 / publish_secs).round(),
        "budget_bytes_per_message": TARGET_DELAYED_BYTES_PER_MSG,
        "with_producer_ids": a.ids,
    })))
}

/// `publish_batch` of `a.batch` messages from `a.batch_tasks` tasks.
async fn bench_batched(root: &Path, a: &Args, payload: &Bytes) -> Res<Value> {
    let engine = open_phase_engine(root, "batched")?;
    let topic = "bench-batched";
    let (publisher, payload, batch) = (engine.clone(), payload.clone(), a.batch);
    let publish = move || {
        let engine = publisher.clone();
        let messages = batch_of(&payload, batch, Due::Now, None);
        async move {
            let confirms = engine.publish_batch(topic, messages).await?;
            if confirms.len() != batch {
                return Err(err(format!(
                    "{} confirms for {batch} messages",
                    confirms.len()
                )));
            }
            Ok(batch as u64)
        }
    };
    let (latency, figures) = timed_publishing(a, a.batch_tasks, publish).await?;
    let stats = engine.stats(topic).await?;
    finish_engine(engine)?;
    Ok(with_policy(merged(
        figures,
        json!({
            "batch": a.batch,
            "tasks": a.batch_tasks,
            "batch_confirm_latency": latency_json(&latency),
            "published_total": stats.published,
        }),
    )))
}

/// `publish` of one message from each of `a.tasks` tasks, each awaiting its confirm.
async fn bench_single(root: &Path, a: &Args, payload: &Bytes) -> Res<Value> {
    let engine = open_phase_engine(root, "single")?;
    let topic = "bench-single";
    let (publisher, payload) = (engine.clone(), payload.clone());
    let publish = move || {
        let engine = publisher.clone();
        let message = Message::new(payload.clone());
        async move {
            engine.publish(topic, message).await?;
            Ok(1)
        }
    };
    let (latency, figures) = timed_publishing(a, a.tasks, publish).await?;
    finish_engine(engine)?;
    Ok(with_policy(merged(
        figures,
        json!({
            "tasks": a.tasks,
            "confirm_latency": latency_json(&latency),
        }),
    )))
}

/// Fills a topic with `a.consume` messages, then `a.consumers` consumers of one group fetch
/// batches and ack them until every message is acked.
async fn bench_consume(root: &Path, a: &Args, payload: &Bytes) -> Res<Value> {
    let engine = open_phase_engine(root, "consume")?;
    let topic = "bench-consume";
    let group = "bench-workers";
    engine.create_group(topic, group, StartAt::Earliest).await?;
    let n = a.consume;
    let t_fill = Instant::now();
    publish_all(&engine, topic, payload, a, n, Due::Now, None).await?;
    let fill_secs = t_fill.elapsed().as_secs_f64();

    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..a.consumers {
        let engine = engine.clone();
        let acked = acked.clone();
        let opts = lease_opts(a.batch, 0);
        handles.push(tokio::spawn(async move {
            let mut fetch_h = hist()?;
            let mut ack_h = hist()?;
            let mut bytes = 0u64;
            while acked.load(Ordering::SeqCst) < n {
                check_timeout(start, "consume")?;
                let t0 = Instant::now();
                let deliveries = engine.fetch(topic, group, opts).await?;
                let t1 = Instant::now();
                if deliveries.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                fetch_h.saturating_record(micros(t1 - t0));
                bytes += deliveries
                    .iter()
                    .map(|d| d.payload.len() as u64)
                    .sum::<u64>();
                let receipts: Vec<Receipt> = deliveries.iter().map(Delivery::receipt).collect();
                let outcomes = engine.ack(topic, group, &receipts).await?;
                ack_h.saturating_record(micros(t1.elapsed()));
                if let Some(o) = outcomes.iter().find(|o| **o != AckOutcome::Acked) {
                    return Err(err(format!("ack outcome {o:?}, expected Acked")));
                }
                acked.fetch_add(receipts.len() as u64, Ordering::SeqCst);
            }
            Ok((bytes, fetch_h, ack_h))
        }));
    }
    let results = join_all(handles).await?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let fetch_h = merge(results.iter().map(|r| r.1.clone()))?;
    let ack_h = merge(results.iter().map(|r| r.2.clone()))?;
    let stats = engine.stats(topic).await?;
    let lag = stats
        .groups
        .iter()
        .find(|g| g.name == group)
        .map_or(u64::MAX, |g| g.lag);
    if lag != 0 {
        return Err(err(format!("group lag {lag} after consuming everything")));
    }
    if bytes != n * MESSAGE_BYTES as u64 {
        return Err(err(format!(
            "consumed {bytes} payload bytes, expected {}",
            n * MESSAGE_BYTES as u64
        )));
    }
    finish_engine(engine)?;
    Ok(with_policy(merged(
        json!({
            "messages": n,
            "consumers": a.consumers,
            "fetch_max": a.batch,
            "ack_batch": a.batch,
            "seconds": round3(secs),
            "fetch_latency": latency_json(&fetch_h),
            "ack_latency": latency_json(&ack_h),
            "prefill_msgs_per_s": (n as f64 / fill_secs).round(),
        }),
        rates_json(n, secs),
    )))
}

/// `a.lateness` messages with delays of 50..=500 ms, consumed by long-polling consumers;
/// lateness = delivery time - due time.
async fn bench_lateness(root: &Path, a: &Args, payload: &Bytes) -> Res<Value> {
    let engine = open_phase_engine(root, "lateness")?;
    let topic = "bench-late";
    let group = "bench-late-workers";
    engine.create_group(topic, group, StartAt::Earliest).await?;
    let n = a.lateness as u64;
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..a.consumers {
        let engine = engine.clone();
        let received = received.clone();
        handles.push(tokio::spawn(async move {
            let mut h = hist()?;
            let mut early = 0u64;
            let mut worst_early_us = 0u64;
            let opts = lease_opts(1000, 200);
            while received.load(Ordering::SeqCst) < n {
                check_timeout(start, "lateness")?;
                let deliveries = engine.fetch(topic, group, opts).await?;
                let now_us = now_unix_us();
                for d in &deliveries {
                    let due_us = d
                        .due_ms
                        .ok_or_else(|| err("delayed message delivered without a due time"))?
                        .saturating_mul(1000);
                    if now_us >= due_us {
                        h.saturating_record((now_us - due_us).max(1));
                    } else {
                        early += 1;
                        worst_early_us = worst_early_us.max(due_us - now_us);
                    }
                }
                if deliveries.is_empty() {
                    continue;
                }
                let receipts: Vec<Receipt> = deliveries.iter().map(Delivery::receipt).collect();
                engine.ack(topic, group, &receipts).await?;
                received.fetch_add(receipts.len() as u64, Ordering::SeqCst);
            }
            Ok((h, early, worst_early_us))
        }));
    }
    // Publish in batches of 50 a few ms apart, each message with its own delay.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sent = 0u64;
    while sent < n {
        let take = (n - sent).min(50);
        let messages: Vec<Message> = (0..take)
            .map(|_| Message::new(payload.clone()).with_due(Due::After(50 + rng.next() % 451)))
            .collect();
        engine.publish_batch(topic, messages).await?;
        sent += take;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let results = join_all(handles).await?;
    let h = merge(results.iter().map(|r| r.0.clone()))?;
    let early: u64 = results.iter().map(|r| r.1).sum();
    let worst_early = results.iter().map(|r| r.2).max().unwrap_or(0);
    finish_engine(engine)?;
    if early > 0 {
        return Err(err(format!(
            "{early} delayed messages delivered before their due time (worst {worst_early} µs early)"
        )));
    }
    Ok(with_policy(json!({
        "messages": n,
        "delay_ms_range": [50, 500],
        "consumers": a.consumers,
        "fetch_wait_ms": 200,
        "lateness": latency_json(&h),
        "early": early,
    })))
}

// ---------------------------------------------------------------------------------------

/// Runs the engine phase `name` on `rt` if it was asked for: its progress `heading`, the
/// phase itself, then `report` of its figures. `Null` for a phase left out.
fn engine_phase(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    name: &str,
    heading: String,
    bench: impl Future<Output = Res<Value>>,
    report: impl FnOnce(&Value),
) -> Res<Value> {
    if !a.runs(name) {
        return Ok(Value::Null);
    }
    note!("{heading}");
    let figures = rt.block_on(bench)?;
    report(&figures);
    Ok(figures)
}

/// Progress line of a throughput phase: its rate, MB/s and the p50 and p99 of `latency`.
fn note_throughput(figures: &Value, latency: &str, label: &str, policy: impl std::fmt::Display) {
    let l = &figures[latency];
    note!(
        "  {} msgs/s, {} MB/s, {label} p50 {} p99 {} [{policy}]",
        rate_of(&figures["msgs_per_s"]),
        figures["mb_per_s"],
        ms_of(&l["p50_us"]),
        ms_of(&l["p99_us"]),
    );
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 {
        json!(round3(a / b))
    } else {
        Value::Null
    }
}

/// The figures of every phase, in the order they run (see the module docs); a phase left
/// out by `--only` is `null`.
struct Figures {
    memory: Value,
    baseline_before: Value,
    batched: Value,
    single: Value,
    consume: Value,
    lateness: Value,
    /// Fields of the broker and Redis phases, merged into the summary as they are.
    side_by_side: Value,
    baseline_after: Value,
}

/// Runs the phases one after the other, each on a fresh engine under `root`.
fn run_phases(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    root: &Path,
    payload: &Bytes,
) -> Res<Figures> {
    let policy = Config::default().durability;
    let memory = engine_phase(
        rt,
        a,
        "memory",
        format!(
            "[1/9] memory of {} pending delayed messages{} [{policy}]",
            rate(a.delayed as f64),
            if a.ids { " with producer ids" } else { "" }
        ),
        bench_delayed_memory(root, a, payload),
        |memory| {
            note!(
                "  RSS delta {} B/msg, index heap {} B/msg (budget {TARGET_DELAYED_BYTES_PER_MSG} B) [{policy}]",
                memory["rss_bytes_per_message"],
                memory["index_heap_bytes_per_message"]
            )
        },
    )?;

    let baseline_before = if a.runs("baseline") {
        note!("[2/9] baseline: raw append + fdatasync, one thread");
        baseline(root, a, payload, "before")?
    } else {
        Value::Null
    };

    let batched = engine_phase(
        rt,
        a,
        "batched",
        format!(
            "[3/9] batched publish: {} tasks x publish_batch({}) for {}s [{policy}]",
            a.batch_tasks, a.batch, a.secs
        ),
        bench_batched(root, a, payload),
        |batched| note_throughput(batched, "batch_confirm_latency", "batch confirm", policy),
    )?;

    let single = engine_phase(
        rt,
        a,
        "single",
        format!(
            "[4/9] single publish: {} tasks x publish() for {}s [{policy}]",
            a.tasks, a.secs
        ),
        bench_single(root, a, payload),
        |single| {
            let cl = &single["confirm_latency"];
            note!(
                "  {} msgs/s, confirm p50 {} p99 {} p999 {} max {} [{policy}]",
                rate_of(&single["msgs_per_s"]),
                ms_of(&cl["p50_us"]),
                ms_of(&cl["p99_us"]),
                ms_of(&cl["p999_us"]),
                ms_of(&cl["max_us"]),
            );
        },
    )?;

    let consume = engine_phase(
        rt,
        a,
        "consume",
        format!(
            "[5/9] consume + ack: {} messages, {} consumers, batches of {} [{policy}]",
            rate(a.consume as f64),
            a.consumers,
            a.batch
        ),
        bench_consume(root, a, payload),
        |consume| note_throughput(consume, "ack_latency", "ack", policy),
    )?;

    let lateness = engine_phase(
        rt,
        a,
        "lateness",
        format!(
            "[6/9] delayed delivery lateness: {} messages due in 50..500 ms [{policy}]",
            a.lateness
        ),
        bench_lateness(root, a, payload),
        |lateness| {
            let lt = &lateness["lateness"];
            note!(
                "  lateness p50 {} p99 {} max {}, none early [{policy}]",
                ms_of(&lt["p50_us"]),
                ms_of(&lt["p99_us"]),
                ms_of(&lt["max_us"]),
            );
        },
    )?;

    let side_by_side = rt.block_on(side_by_side(root, a))?;

    let baseline_after = if a.runs("baseline") {
        note!("[9/9] baseline again (drift check)");
        baseline(root, a, payload, "after")?
    } else {
        Value::Null
    };
    Ok(Figures {
        memory,
        baseline_before,
        batched,
        single,
        consume,
        lateness,
        side_by_side,
        baseline_after,
    })
}

/// The figures against the baseline (ratios) and against the issue's targets.
struct Verdict {
    ratios: Value,
    targets: Value,
    /// Batched publish over raw chunked append (0 without a baseline).
    batched_vs_chunked: f64,
    /// Single publish over raw fsync-per-message (0 without a baseline).
    single_vs_fsync: f64,
}

/// Compares the engine's figures with the mean of the two baseline runs and the targets.
fn judge(a: &Args, figures: &Figures) -> Verdict {
    // Ratios use the mean of the two baseline runs.
    let Figures {
        memory,
        baseline_before,
        batched,
        single,
        consume,
        lateness,
        baseline_after,
        ..
    } = figures;
    let mean = |path: &[&str]| {
        let get = |b: &Value| path.iter().fold(b, |v, k| &v[*k]).as_f64().unwrap_or(0.0);
        (get(baseline_before) + get(baseline_after)) / 2.0
    };
    let base_chunked = mean(&["chunked", "msgs_per_s"]);
    let base_single = mean(&["single", "msgs_per_s"]);
    let base_single_p99 = mean(&["single", "write_fdatasync_latency", "p99_us"]);
    let base_single_mean_us = mean(&["single", "write_fdatasync_latency", "mean_us"]);
    let base_round_mean_us = mean(&["round_sized", "write_fdatasync_latency", "mean_us"]);
    let engine_round_us = single["group_commit"]["mean_round_us"]
        .as_f64()
        .unwrap_or(0.0);
    let batched_s = batched["msgs_per_s"].as_f64().unwrap_or(0.0);
    let single_s = single["msgs_per_s"].as_f64().unwrap_or(0.0);
    let confirm_p99 = single["confirm_latency"]["p99_us"].as_u64().unwrap_or(0);
    let fsync_bound = if base_single_mean_us > 0.0 {
        a.tasks as f64 / (base_single_mean_us / 1e6)
    } else {
        0.0
    };
    let ratios = json!({
        "batched_publish_vs_raw_chunked_append": ratio(batched_s, base_chunked),
        "single_publish_vs_raw_fsync_per_message": ratio(single_s, base_single),
        "consume_ack_vs_raw_chunked_append": ratio(consume["msgs_per_s"].as_f64().unwrap_or(0.0), base_chunked),
        "confirm_p99_vs_raw_fsync_p99": ratio(confirm_p99 as f64, base_single_p99),
        "single_publish_vs_fsync_bound": ratio(single_s, fsync_bound),
        "baseline_chunked_msgs_per_s_mean": base_chunked.round(),
        "baseline_single_msgs_per_s_mean": base_single.round(),
        "fsync_bound_msgs_per_s": fsync_bound.round(),
        "single_publish_round_vs_raw_round_sized_write_fdatasync": ratio(engine_round_us, base_round_mean_us),
        "fsync_bound_note": "tasks / mean(write+fdatasync) of the single-message baseline: the most confirms per second if every publisher waits one full fsync",
    });
    let targets = json!({
        "batched_publish_msgs_per_s": {"target": TARGET_BATCHED_MSGS_S, "actual": batched_s, "met": batched_s >= TARGET_BATCHED_MSGS_S},
        "single_publish_msgs_per_s": {"target": TARGET_SINGLE_MSGS_S, "actual": single_s, "met": single_s >= TARGET_SINGLE_MSGS_S},
        "confirm_p99_us": {"target": TARGET_CONFIRM_P99_US, "actual": confirm_p99, "met": confirm_p99 <= TARGET_CONFIRM_P99_US},
        "delayed_bytes_per_message": {
            "target": TARGET_DELAYED_BYTES_PER_MSG,
            "actual_rss": memory["rss_bytes_per_message"],
            "actual_index_heap": memory["index_heap_bytes_per_message"],
            "met": memory["rss_bytes_per_message"].as_f64().unwrap_or(f64::MAX) <= TARGET_DELAYED_BYTES_PER_MSG
                && memory["index_heap_bytes_per_message"].as_f64().unwrap_or(f64::MAX) <= TARGET_DELAYED_BYTES_PER_MSG,
        },
        "lateness_p99_us": {
            "target": TARGET_LATENESS_P99_US,
            "actual": lateness["lateness"]["p99_us"],
            "met": lateness["lateness"]["p99_us"].as_u64().unwrap_or(u64::MAX) <= TARGET_LATENESS_P99_US,
        },
    });
    Verdict {
        ratios,
        targets,
        batched_vs_chunked: if base_chunked > 0.0 {
            batched_s / base_chunked
        } else {
            0.0
        },
        single_vs_fsync: if base_single > 0.0 {
            single_s / base_single
        } else {
            0.0
        },
    }
}

fn run(a: &Args, command: String) -> Res<Value> {
    let policy = Config::default().durability;
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let bench = BenchDir::create(&base, a.keep)?;
    let root = bench.path.clone();
    let (device, mount, fstype) = filesystem_of(&root).unwrap_or_default();
    let volatile = matches!(fstype.as_str(), "tmpfs" | "ramfs");
    note!("queue-bench: directory {}", root.display());
    note!("queue-bench: filesystem {fstype} on {device} (mounted at {mount})");
    if volatile {
        note!(
            "queue-bench: WARNING: {fstype} is memory-backed: fsync is free, figures are not durable-disk figures"
        );
    }
    note!(
        "queue-bench: durability policy {policy}; {MESSAGE_BYTES}-byte messages; {}",
        if a.quick { "quick run" } else { "full run" }
    );
    let payload = Bytes::from(
        (0..MESSAGE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("tokio runtime: {e}")))?;
    let started = Instant::now();
    let env_start = environment_json();

    let figures = run_phases(&rt, a, &root, &payload)?;
    rt.shutdown_timeout(Duration::from_secs(5));

    let verdict = judge(a, &figures);
    note!(
        "queue-bench: done in {:.1}s; batched {:.2}x raw chunked append, single {:.2}x raw fsync-per-message [{policy}]",
        started.elapsed().as_secs_f64(),
        verdict.batched_vs_chunked,
        verdict.single_vs_fsync,
    );
    let Figures {
        memory,
        baseline_before,
        batched,
        single,
        consume,
        lateness,
        side_by_side,
        baseline_after,
    } = figures;
    let mut summary = json!({
        "bench": "queue-bench",
        "command": command,
        "unix_time_s": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "quick": a.quick,
        "durability": policy.to_string(),
        "message_bytes": MESSAGE_BYTES,
        "machine": machine_json(),
        "environment": {"start": env_start, "end": environment_json()},
        "filesystem": {"type": fstype, "device": device, "mount": mount, "dir": root.display().to_string(), "memory_backed": volatile},
        "baseline": {"before": baseline_before, "after": baseline_after},
        "batched_publish": batched,
        "single_publish": single,
        "consume_ack": consume,
        "delayed_memory": memory,
        "delayed_lateness": lateness,
        "ratios": verdict.ratios,
        "targets": verdict.targets,
        "elapsed_s": round1(started.elapsed().as_secs_f64()),
    });
    if let (Some(sum), Value::Object(sbs)) = (summary.as_object_mut(), side_by_side) {
        sum.extend(sbs);
    }
    Ok(summary)
}

/// Whether `redis-server` can be started; if not, says so (progress and JSON) and the Redis
/// phase is skipped rather than failing the whole run.
fn redis_available(out: &mut serde_json::Map<String, Value>) -> bool {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = "redis-server not found on PATH: the Redis Streams comparison is skipped";
        note!("[8/9] {why}");
        out.insert("redis".into(), json!({"skipped": why}));
    }
    found
}

/// Targets of the side-by-side phase (from the issue, on a 2-core machine).
const TARGET_TCP_PUBLISH_MSGS_S: f64 = 300_000.0;
const TARGET_RATIO_VS_REDIS: f64 = 2.0;

/// Our queue on Redis is held to this: its throughput at least raw Redis Streams' ÷ 1.5
/// (issue 15, "within 1.5× of raw Redis Streams' throughput").
const TARGET_REDIS_QUEUE_SLOWDOWN_MAX: f64 = 1.5;

/// Phases 7 and 8: our broker over loopback TCP, raw Redis Streams and our queue on Redis
/// Streams (scratch `redis-server`s with `appendonly yes`, `appendfsync always`), driven the
/// same way: the same producer tasks with one connection each, the same messages per round
/// trip, the same consumers and batch sizes. The JSON fields are merged into the summary.
async fn side_by_side(root: &Path, a: &Args) -> Res<Value> {
    let mut out = serde_json::Map::new();
    let ours = if a.runs("broker") {
        Some(broker_side(root, a, &mut out).await?)
    } else {
        None
    };
    let redis_ok = (a.runs("redis") || a.runs("redisq")) && redis_available(&mut out);
    let theirs = if redis_ok && a.runs("redis") {
        let r = redis_side(root, a, "[8/9]").await?;
        insert_redis(&r, &mut out);
        Some(r)
    } else {
        None
    };
    if let (Some((f, single)), Some(r)) = (&ours, &theirs) {
        compare_with_redis(f, single, r, &mut out);
    }
    if redis_ok && a.runs("redisq") {
        let variants = redis_queue_side(root, a).await?;
        // Raw Redis again after ours, so that drift of the machine shows and the ratio is
        // to the mean of a run before and a run after.
        let after = match &theirs {
            Some(_) => Some(redis_side(root, a, "[8e/9]").await?),
            None => None,
        };
        compare_redis_queue(&variants, theirs.as_ref(), after.as_ref(), &mut out);
    }
    if !out.is_empty() {
        out.insert(
            "side_by_side".into(),
            json!({
                "producers": a.producers,
                "messages_per_round_trip": a.pipeline,
                "consumers": a.consumers,
                "fetch_batch": a.batch,
                "note": "one connection per producer and consumer on every side; our broker: one publish_batch frame per round trip (publish_tcp_*) or that many publish frames written together (*_single_frames_*); raw Redis: that many XADDs in one pipeline; our queue on Redis: one publish_batch or publish_each call of that many messages (one EVALSHA); consume: fetch(max fetch_batch) + one ack vs XREADGROUP COUNT fetch_batch + one XACK",
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Phase 7: our broker in its own process, with publish_batch frames and then with single
/// publish frames; returns both runs' figures.
async fn broker_side(
    root: &Path,
    a: &Args,
    out: &mut serde_json::Map<String, Value>,
) -> Res<(broker::BrokerFigures, broker::BrokerFigures)> {
    let policy = Config::default().durability;
    note!(
        "[7/9] broker over loopback TCP: {} producers x {} msgs per round trip (one publish_batch frame) for {}s, then consume + ack {} [{policy}]",
        a.producers,
        a.pipeline,
        a.secs,
        rate(a.tcp_consume as f64)
    );
    let params = broker::BrokerParams {
        message_bytes: MESSAGE_BYTES,
        producers: a.producers,
        pipeline: a.pipeline,
        publish_secs: a.secs,
        warmup_secs: a.warmup_secs,
        single_frames: false,
        consumers: a.consumers,
        fetch_batch: a.batch,
        consume_messages: a.tcp_consume,
        dir: root.join("broker-batch"),
    };
    let f = broker::run(&params).await?;
    note!(
        "  publish {} msgs/s, confirm p50 {} p99 {}; consume + ack {} msgs/s",
        rate(f.publish_msgs_per_s),
        ms(f.confirm.value_at_quantile(0.5)),
        ms(f.confirm.value_at_quantile(0.99)),
        rate(f.consume_ack_msgs_per_s)
    );
    note!(
        "[7b/9] broker, the same with {} single-message publish frames per round trip [{policy}]",
        a.pipeline
    );
    let single = broker::run(&broker::BrokerParams {
        single_frames: true,
        consume_messages: 0,
        dir: root.join("broker-frames"),
        ..params
    })
    .await?;
    note!(
        "  publish {} msgs/s, confirm p50 {} p99 {}",
        rate(single.publish_msgs_per_s),
        ms(single.confirm.value_at_quantile(0.5)),
        ms(single.confirm.value_at_quantile(0.99)),
    );
    out.insert(
        "publish_tcp_msgs_per_s".into(),
        json!(f.publish_msgs_per_s.round()),
    );
    out.insert(
        "confirm_p50_us".into(),
        json!(f.confirm.value_at_quantile(0.5)),
    );
    out.insert(
        "confirm_p99_us".into(),
        json!(f.confirm.value_at_quantile(0.99)),
    );
    out.insert(
        "consume_ack_tcp_msgs_per_s".into(),
        json!(f.consume_ack_msgs_per_s.round()),
    );
    out.insert(
        "publish_tcp_single_frames_msgs_per_s".into(),
        json!(single.publish_msgs_per_s.round()),
    );
    out.insert(
        "tcp_single_frames_confirm_latency".into(),
        latency_json(&single.confirm),
    );
    out.insert("tcp_confirm_latency".into(), latency_json(&f.confirm));
    out.insert(
            "tcp_counts".into(),
            json!({"published": f.published, "consumed": f.consumed, "published_single_frames": single.published}),
        );
    Ok((f, single))
}

/// Phase 8: raw Redis Streams with `appendfsync always`, the same producers and batch
/// sizes.
async fn redis_side(root: &Path, a: &Args, step: &str) -> Res<redis_streams::RedisFigures> {
    note!(
        "{step} raw Redis Streams, appendonly yes + appendfsync always: {} producers x {} pipelined XADDs for {}s, then XREADGROUP + XACK {}",
        a.producers,
        a.pipeline,
        a.secs,
        rate(a.tcp_consume as f64)
    );
    let r = redis_streams::run(&redis_streams::RedisParams {
        message_bytes: MESSAGE_BYTES,
        producers: a.producers,
        pipeline: a.pipeline,
        in_flight: 1,
        publish_secs: a.secs,
        consumers: a.consumers,
        fetch_batch: a.batch,
        consume_messages: a.tcp_consume,
        dir: Some(root.to_path_buf()),
    })
    .await?;
    note!(
        "  publish {} msgs/s, confirm p50 {} p99 {}; consume + ack {} msgs/s (redis {}, appendfsync {})",
        rate(r.publish_msgs_per_s),
        ms(r.confirm_p50_us),
        ms(r.confirm_p99_us),
        rate(r.consume_ack_msgs_per_s),
        r.redis_version,
        r.appendfsync
    );
    Ok(r)
}

/// The raw Redis figures as summary fields.
fn insert_redis(r: &redis_streams::RedisFigures, out: &mut serde_json::Map<String, Value>) {
    out.insert(
        "redis_streams_publish_msgs_per_s".into(),
        json!(r.publish_msgs_per_s.round()),
    );
    out.insert(
        "redis_streams_consume_ack_msgs_per_s".into(),
        json!(r.consume_ack_msgs_per_s.round()),
    );
    out.insert("redis_confirm_p50_us".into(), json!(r.confirm_p50_us));
    out.insert("redis_confirm_p99_us".into(), json!(r.confirm_p99_us));
    out.insert("redis".into(), redis_json(r));
}

fn redis_json(r: &redis_streams::RedisFigures) -> Value {
    json!({
        "version": r.redis_version,
        "appendfsync": r.appendfsync,
        "settings": r.settings,
        "publish_msgs_per_s": r.publish_msgs_per_s.round(),
        "consume_ack_msgs_per_s": r.consume_ack_msgs_per_s.round(),
        "confirm_p50_us": r.confirm_p50_us,
        "confirm_p99_us": r.confirm_p99_us,
        "published": r.published,
        "consumed": r.consumed,
        "publish_server": r.publish_server,
        "consume_server": r.consume_server,
    })
}

/// Phase 8b–d: our queue on Redis Streams, on a fresh scratch server each: publish_batch
/// without and with producer ids (each followed by consume + ack), then publish_each with
/// ids (publish only: the gateway's way, every purchase confirmed on its own).
async fn redis_queue_side(
    root: &Path,
    a: &Args,
) -> Res<Vec<(redis_queue::QueueParams, redis_queue::QueueFigures)>> {
    let base = redis_queue::QueueParams {
        message_bytes: MESSAGE_BYTES,
        producers: a.producers,
        pipeline: a.pipeline,
        publish_secs: a.secs,
        each: false,
        ids: false,
        consumers: a.consumers,
        fetch_batch: a.batch,
        consume_messages: a.tcp_consume,
        dir: Some(root.to_path_buf()),
    };
    let variants = [
        ("[8b/9]", base.clone()),
        (
            "[8c/9]",
            redis_queue::QueueParams {
                ids: true,
                ..base.clone()
            },
        ),
        (
            "[8d/9]",
            redis_queue::QueueParams {
                ids: true,
                each: true,
                consume_messages: 0,
                ..base
            },
        ),
    ];
    let mut out = Vec::new();
    for (step, p) in variants {
        note!(
            "{step} our queue on Redis Streams (queue::streams::RedisQueue), same server settings: {} producers x {} for {}s{}",
            p.producers,
            p.label(),
            p.publish_secs,
            if p.consume_messages > 0 {
                format!(", then fetch + ack {}", rate(p.consume_messages as f64))
            } else {
                String::new()
            }
        );
        let f = redis_queue::run(&p).await?;
        note!(
            "  publish {} msgs/s, confirm p50 {} p99 {}{}",
            rate(f.publish_msgs_per_s),
            ms(f.confirm_p50_us),
            ms(f.confirm_p99_us),
            f.consume_ack_msgs_per_s
                .map(|c| format!("; consume + ack {} msgs/s", rate(c)))
                .unwrap_or_default()
        );
        out.push((p, f));
    }
    Ok(out)
}

/// Our queue on Redis against raw Redis Streams (the mean of the runs before and after
/// ours when both ran): ratios ours ÷ raw and the 1.5× target, hit or miss.
fn compare_redis_queue(
    variants: &[(redis_queue::QueueParams, redis_queue::QueueFigures)],
    before: Option<&redis_streams::RedisFigures>,
    after: Option<&redis_streams::RedisFigures>,
    out: &mut serde_json::Map<String, Value>,
) {
    let raw = |f: fn(&redis_streams::RedisFigures) -> f64| -> Option<f64> {
        let xs: Vec<f64> = [before, after].into_iter().flatten().map(f).collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let raw_publish = raw(|r| r.publish_msgs_per_s);
    let raw_consume = raw(|r| r.consume_ack_msgs_per_s);
    let min_ratio = 1.0 / TARGET_REDIS_QUEUE_SLOWDOWN_MAX;
    let judged = |ours: f64, raw: Option<f64>| -> Value {
        match raw {
            Some(r) if r > 0.0 => {
                let ratio = ours / r;
                json!({
                    "ours_msgs_per_s": ours.round(),
                    "raw_msgs_per_s": r.round(),
                    "ratio": round3(ratio),
                    "result": if ratio >= min_ratio { "hit" } else { "miss" },
                })
            }
            _ => Value::Null,
        }
    };
    let mut list = Vec::new();
    let mut targets = serde_json::Map::new();
    let mut all_hit = true;
    let mut any_judged = false;
    for (p, f) in variants {
        let key = p.key();
        let publish = judged(f.publish_msgs_per_s, raw_publish);
        let consume = f
            .consume_ack_msgs_per_s
            .map_or(Value::Null, |c| judged(c, raw_consume));
        for v in [&publish, &consume] {
            if let Some(r) = v["result"].as_str() {
                any_judged = true;
                all_hit &= r == "hit";
            }
        }
        targets.insert(
            key.into(),
            json!({"publish": publish, "consume_ack": consume}),
        );
        list.push(json!({
            "variant": key,
            "call": p.label(),
            "each": p.each,
            "ids": p.ids,
            "publish_msgs_per_s": f.publish_msgs_per_s.round(),
            "confirm_p50_us": f.confirm_p50_us,
            "confirm_p99_us": f.confirm_p99_us,
            "consume_ack_msgs_per_s": f.consume_ack_msgs_per_s.map(f64::round),
            "published": f.published,
            "consumed": f.consumed,
            "settings": f.settings,
            "publish_server": f.publish_server,
            "consume_server": f.consume_server,
        }));
        note!(
            "  ours on Redis / raw Redis, {}: publish {}, consume + ack {} (target: ≥ {:.3})",
            p.label(),
            publish["ratio"],
            consume["ratio"],
            min_ratio
        );
    }
    if let Some(r) = after {
        out.insert("redis_after".into(), redis_json(r));
    }
    out.insert("redis_queue".into(), Value::Array(list));
    let verdict = if any_judged {
        if all_hit { "hit" } else { "miss" }
    } else {
        "not judged (raw Redis Streams not run)"
    };
    out.insert(
        "redis_queue_target".into(),
        json!({
            "target": format!("our queue on Redis Streams within {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}x of raw Redis Streams' throughput: ours >= raw / {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}"),
            "min_ratio": round3(min_ratio),
            "raw_is": if after.is_some() { "the mean of raw Redis Streams run before and after ours, same run" } else { "raw Redis Streams run before ours, same run" },
            "variants": targets,
            "result": verdict,
        }),
    );
    // The headline figures as flat keys: publish_batch without ids (and with), consume.
    let flat = |key: &str| variants.iter().find(|(p, _)| p.key() == key);
    if let Some((_, f)) = flat("batch_no_ids") {
        out.insert(
            "redis_queue_publish_msgs_per_s".into(),
            json!(f.publish_msgs_per_s.round()),
        );
        out.insert("redis_queue_confirm_p50_us".into(), json!(f.confirm_p50_us));
        out.insert("redis_queue_confirm_p99_us".into(), json!(f.confirm_p99_us));
        out.insert(
            "redis_queue_consume_ack_msgs_per_s".into(),
            json!(f.consume_ack_msgs_per_s.map(f64::round)),
        );
    }
    if let Some((_, f)) = flat("batch_ids") {
        out.insert(
            "redis_queue_publish_ids_msgs_per_s".into(),
            json!(f.publish_msgs_per_s.round()),
        );
    }
    for (key, name) in [
        ("batch_no_ids", "redis_queue_publish_ratio_vs_redis"),
        ("batch_ids", "redis_queue_publish_ids_ratio_vs_redis"),
    ] {
        out.insert(
            name.into(),
            targets
                .get(key)
                .map_or(Value::Null, |t| t["publish"]["ratio"].clone()),
        );
    }
    out.insert(
        "redis_queue_consume_ratio_vs_redis".into(),
        targets
            .get("batch_no_ids")
            .map_or(Value::Null, |t| t["consume_ack"]["ratio"].clone()),
    );
    out.insert("redis_queue_target_result".into(), json!(verdict));
    note!("  target (ours on Redis >= raw / {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}): {verdict}");
}

/// Ratios of ours to Redis, and the targets they are held to.
fn compare_with_redis(
    f: &broker::BrokerFigures,
    single: &broker::BrokerFigures,
    r: &redis_streams::RedisFigures,
    out: &mut serde_json::Map<String, Value>,
) {
    let pub_ratio = f.publish_msgs_per_s / r.publish_msgs_per_s.max(1.0);
    let frames_ratio = single.publish_msgs_per_s / r.publish_msgs_per_s.max(1.0);
    let consume_ratio = f.consume_ack_msgs_per_s / r.consume_ack_msgs_per_s.max(1.0);
    note!(
        "  ours / Redis: publish {pub_ratio:.2}x (single frames {frames_ratio:.2}x), consume + ack {consume_ratio:.2}x"
    );
    out.insert("publish_ratio_vs_redis".into(), json!(round3(pub_ratio)));
    out.insert(
        "publish_single_frames_ratio_vs_redis".into(),
        json!(round3(frames_ratio)),
    );
    out.insert(
        "consume_ratio_vs_redis".into(),
        json!(round3(consume_ratio)),
    );
    out.insert(
            "tcp_targets".into(),
            json!({
                "publish_tcp_msgs_per_s": {"target": TARGET_TCP_PUBLISH_MSGS_S, "actual": f.publish_msgs_per_s.round(), "met": f.publish_msgs_per_s >= TARGET_TCP_PUBLISH_MSGS_S},
                "publish_ratio_vs_redis": {"target": TARGET_RATIO_VS_REDIS, "actual": round3(pub_ratio), "met": pub_ratio >= TARGET_RATIO_VS_REDIS},
                "consume_ratio_vs_redis": {"target": TARGET_RATIO_VS_REDIS, "actual": round3(consume_ratio), "met": consume_ratio >= TARGET_RATIO_VS_REDIS},
            }),
        );
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // The broker phase runs our broker in its own process: this binary, re-executed.
    if raw.first().map(String::as_str) == Some("--serve-broker") {
        let Some(dir) = raw.get(1) else {
            note!("queue-bench: --serve-broker needs a directory");
            return ExitCode::from(2);
        };
        return match broker::serve_broker(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                note!("queue-bench: broker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let command = std::iter::once("queue-bench".to_string())
        .chain(raw.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let cli = Cli::parse();
    let args = match Args::from_cli(cli) {
        Ok(a) => a,
        Err(e) => {
            note!("queue-bench: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(&args, command) {
        Ok(summary) => match writeln!(std::io::stdout(), "{summary}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                note!("queue-bench: cannot write the summary: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            note!("queue-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Set by `--no-gather`: measure without group-commit gathering, for comparison.
static NO_GATHER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The engine configuration of every phase: the defaults, except `--no-gather`.
fn bench_config() -> Config {
    Config {
        commit_gather: !NO_GATHER.load(std::sync::atomic::Ordering::Relaxed),
        ..Config::default()
    }
}
