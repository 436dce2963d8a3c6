//! `queue-shootout`: our broker against Redis Streams, NATS JetStream and RabbitMQ, and our
//! queue on Redis Streams against raw Redis Streams; one harness, the same workload, and
//! fsync before confirm for all of them.
//!
//! ```text
//! cargo build --release -p load-tests --bin queue-shootout
//! target/release/queue-shootout [--quick] [--messages N] [--json-out FILE] [...]
//! ```
//!
//! For each system in turn (`--systems`, default
//! `broker,redis,redis-queue,redis-queue-ids,nats,rabbitmq`), on this machine over loopback:
//! 1. publish: `--publishers` tasks (64), each sending one `--message-bytes` (200) message
//!    and awaiting its confirm before the next, until `--messages` (100,000; `--quick`:
//!    10,000) are confirmed. Figures: messages per second (first send to last confirm) and
//!    the per-message publish → confirm latency (hdrhistogram, µs).
//! 2. consume + ack: `--consumers` tasks (as many as publishers) fetch up to `--batch` (100)
//!    messages at a time and ack them (batched where the system can) until every message
//!    was acked; each payload carries its number and is checked byte for byte, so the run
//!    proves every message arrived at least once and counts duplicates.
//!
//! The servers: our broker (`queue::Server`, `queue::Config::default()`, in a process of its
//! own: this binary re-run with `--serve-broker DIR`), a scratch `redis-server`
//! (`appendfsync always`) and a scratch `nats-server` (`sync_interval: always`) started on
//! free ports in fresh directories and stopped by their own pids at the end, and the
//! machine's RabbitMQ (a quorum queue of a fresh name, deleted at the end). `redis-queue`
//! is our queue's Redis Streams backend (`queue::streams::RedisQueue`) on a scratch
//! `redis-server` started and checked as the raw one, driven the same way (`publish` of one
//! message vs one `XADD`; `fetch` + `ack` vs `XREADGROUP` + `XACK`); `redis-queue-ids` the
//! same with a producer id on every message (the de-duplication's cost). Each system's
//! durability settings, read back from the server where it can tell, are printed next to
//! its figures. A system that cannot be run (no server binary, server unreachable, a server
//! too old for the setting) is reported as "not measured: `<why>`" and the others go on.
//!
//! Progress and a table go to stderr; stdout gets one JSON object with the machine, the
//! date, the command, every figure and the ratios to our broker (also written to
//! `--json-out FILE`), and for our queue on Redis its ratios to raw Redis Streams and the
//! target "within 1.5× of raw Redis Streams' throughput", hit or miss. Exit status 1 when
//! our broker (the baseline) could not be measured, 2 on a bad argument.

#[path = "queue_shootout/broker.rs"]
mod broker;
#[path = "queue_shootout/common.rs"]
mod common;
#[path = "queue_shootout/jetstream.rs"]
mod jetstream;
#[path = "queue_shootout/machine.rs"]
mod machine;
#[path = "queue_shootout/rabbitmq.rs"]
mod rabbitmq;
#[path = "queue_shootout/redis_queue.rs"]
mod redis_queue;
#[path = "queue_shootout/redis_streams.rs"]
mod redis_streams;
#[path = "queue_shootout/scratch.rs"]
mod scratch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Map, Value, json};

use common::{MESSAGE_BYTES_MIN, Res, SystemRun, Workload, note};
use machine::Meter;

/// Rounds of the raw fsync probe run before each system.
const PROBE_ROUNDS: usize = 200;

/// Per system: its name, the disk probe before it, and its figures or why not.
type Results = Vec<(String, Value, Result<SystemRun, String>)>;

/// The systems, in the default order.
const SYSTEMS: [&str; 6] = [
    "broker",
    "redis",
    "redis-queue",
    "redis-queue-ids",
    "nats",
    "rabbitmq",
];
/// Our queue on Redis is held to this: its throughput at least raw Redis Streams' ÷ 1.5
/// (issue 15, "within 1.5× of raw Redis Streams' throughput").
const TARGET_REDIS_QUEUE_SLOWDOWN_MAX: f64 = 1.5;

#[derive(Debug, Parser)]
#[command(
    name = "queue-shootout",
    about = "Our broker vs Redis Streams, NATS JetStream and RabbitMQ, and our queue on Redis Streams vs raw Redis Streams: same workload, fsync before confirm for all"
)]
struct Args {
    /// Messages published and then consumed + acked per system [default: 100000, 10000
    /// with --quick].
    #[arg(long)]
    messages: Option<u64>,
    /// 10,000 messages instead of 100,000.
    #[arg(long)]
    quick: bool,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    /// Publisher tasks, each with one message in flight (awaits its confirm before the
    /// next).
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Consumer tasks [default: as many as publishers].
    #[arg(long)]
    consumers: Option<usize>,
    /// Messages per fetch (read, prefetch window) and per batched ack.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Client connections per system; publishers and consumers are spread over them.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Systems to run, in this order (comma-separated): broker, redis, redis-queue,
    /// redis-queue-ids, nats, rabbitmq.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "broker,redis,redis-queue,redis-queue-ids,nats,rabbitmq"
    )]
    systems: Vec<String>,
    /// Where the scratch servers' data directories go (a real disk, not tmpfs)
    /// [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// The nats-server binary (2.10+ for `sync_interval: always`).
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbitmq_url: String,
    /// RabbitMQ's pid file, for its CPU figures (optional).
    #[arg(long, default_value = "/var/lib/rabbitmq/mnesia/rabbit@localhost.pid")]
    rabbitmq_pid_file: String,
    /// A phase (publish or consume) of one system not done within this long fails that
    /// system.
    #[arg(long, default_value_t = 300)]
    phase_timeout_secs: u64,
    /// Pause between systems, after a `sync`, so one system's writeback does not land in
    /// the next one's figures.
    #[arg(long, default_value_t = 3)]
    pause_secs: u64,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Profiling aid: drive the broker already listening at this address (started under a
    /// profiler, e.g. with `--serve-broker DIR`) instead of starting one; its topic must be
    /// new. Its CPU is not measured.
    #[arg(long, hide = true)]
    broker_addr: Option<String>,
    /// Profiling aid: our broker's run stops after the publish phase (no consume figures).
    #[arg(long, hide = true)]
    publish_only: bool,
    /// Our broker's `queue::Config::preallocate_bytes`: how far ahead it zero-fills its
    /// segment files (0: not at all, to measure the broker without it).
    #[arg(long, default_value_t = queue::limits::PREALLOCATE_BYTES_DEFAULT)]
    broker_preallocate_bytes: u64,
    /// Our broker's `queue::Config::commit_gather`: whether a round waits briefly for the
    /// callers of the previous one (false: to measure the broker without it).
    #[arg(long, default_value_t = queue::Config::default().commit_gather, action = clap::ArgAction::Set)]
    broker_commit_gather: bool,
    /// Internal: serve our broker over this data directory (used by the harness itself).
    #[arg(long, hide = true)]
    serve_broker: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.serve_broker {
        return match broker::serve(
            dir,
            args.broker_preallocate_bytes,
            args.broker_commit_gather,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                note!("broker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = check(&args) {
        note!("queue-shootout: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note!("queue-shootout: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            note!("queue-shootout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(a: &Args) -> Result<(), String> {
    if a.publishers == 0 || a.consumers == Some(0) || a.batch == 0 || a.connections == 0 {
        return Err("publishers, consumers, batch and connections must be at least 1".into());
    }
    if a.messages == Some(0) {
        return Err("--messages must be at least 1".into());
    }
    if a.message_bytes < MESSAGE_BYTES_MIN {
        return Err(format!(
            "--message-bytes must be at least {MESSAGE_BYTES_MIN} (the message number)"
        ));
    }
    if let Some(s) = a.systems.iter().find(|s| !SYSTEMS.contains(&s.as_str())) {
        return Err(format!(
            "unknown system {s:?} (known: {})",
            SYSTEMS.join(", ")
        ));
    }
    Ok(())
}

/// Runs every system; returns whether the baseline (our broker) was measured.
async fn run(a: &Args) -> Res<bool> {
    let w = Workload {
        messages: a.messages.unwrap_or(if a.quick { 10_000 } else { 100_000 }),
        message_bytes: a.message_bytes,
        publishers: a.publishers,
        consumers: a.consumers.unwrap_or(a.publishers),
        batch: a.batch,
        connections: a.connections,
        phase_timeout: Duration::from_secs(a.phase_timeout_secs),
        publish_only: a.publish_only,
        broker_preallocate_bytes: a.broker_preallocate_bytes,
        broker_commit_gather: a.broker_commit_gather,
    };
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    if !base.is_dir() {
        return Err(common::err(format!(
            "{} is not a directory",
            base.display()
        )));
    }
    let meter = Meter {
        disk: machine::disk_name(&base),
        ticks_per_s: machine::clock_ticks(),
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = machine::utc_now();
    let load_start = machine::loadavg();
    let io_start = machine::io_pressure();
    note!(
        "queue-shootout: {} messages of {} B, {} publishers (1 in flight each), {} consumers, batch {}, {} connections; systems {}",
        w.messages,
        w.message_bytes,
        w.publishers,
        w.consumers,
        w.batch,
        w.connections,
        a.systems.join(",")
    );
    if let Some(fs) = machine::filesystem(&base) {
        note!("queue-shootout: data under {} ({fs})", base.display());
        if fs.contains(" tmpfs ") || fs.contains(" ramfs ") {
            note!("queue-shootout: WARNING: tmpfs/ramfs: fsync costs nothing there");
        }
    }

    let rabbit = rabbitmq::RabbitOptions {
        url: a.rabbitmq_url.clone(),
        pid_file: a.rabbitmq_pid_file.clone(),
    };
    let w_bytes = w.message_bytes;
    let mut results: Results = Vec::new();
    for (i, name) in a.systems.iter().enumerate() {
        if i > 0 {
            settle(a.pause_secs).await;
        }
        note!("--- {name}");
        let probe = {
            let base = base.clone();
            tokio::task::spawn_blocking(move || machine::fsync_probe(&base, PROBE_ROUNDS, w_bytes))
                .await
                .unwrap_or_else(|e| json!({ "error": e.to_string() }))
        };
        note!(
            "{name}: disk right before: fdatasync p50 {} µs, p99 {} µs after an append, p50 {} µs, p99 {} µs after an overwrite",
            probe["p50_us"],
            probe["p99_us"],
            probe["overwrite_p50_us"],
            probe["overwrite_p99_us"]
        );
        let r = match name.as_str() {
            "broker" => broker::run(&w, &base, &meter, a.broker_addr.as_deref()).await,
            "redis" => redis_streams::run(&w, &a.redis_server, &base, &meter).await,
            "redis-queue" => redis_queue::run(&w, &a.redis_server, &base, &meter, false).await,
            "redis-queue-ids" => redis_queue::run(&w, &a.redis_server, &base, &meter, true).await,
            "nats" => jetstream::run(&w, &a.nats_server, &base, &meter).await,
            _ => rabbitmq::run(&w, &rabbit, &meter).await,
        };
        match &r {
            Ok(run) => note!(
                "{name}: publish {:.0} msgs/s, confirm p50 {} µs p99 {} µs; consume + ack {:.0} msgs/s, duplicates {}",
                run.publish.msgs_per_s(),
                run.publish.confirm.value_at_quantile(0.5),
                run.publish.confirm.value_at_quantile(0.99),
                run.consume.msgs_per_s(),
                run.consume.duplicates
            ),
            Err(e) => note!("{name}: not measured: {e}"),
        }
        results.push((name.clone(), probe, r.map_err(|e| e.to_string())));
    }

    let baseline = results
        .iter()
        .find(|(n, _, _)| n == "broker")
        .and_then(|(_, _, r)| r.as_ref().ok());
    let mut systems = Vec::new();
    let mut ratios = Map::new();
    for (name, probe, r) in &results {
        match r {
            Ok(run) => {
                systems.push(system_json(name, run, probe));
                if let Some(b) = baseline.filter(|_| name != "broker") {
                    ratios.insert(name.clone(), ratio_json(run, b));
                }
            }
            Err(e) => systems.push(json!({
                "system": name,
                "status": format!("not measured: {e}"),
                "disk_fsync_probe_before": probe,
            })),
        }
    }
    let summary = json!({
        "benchmark": "queue-shootout",
        "command": command,
        "date_utc": started,
        "finished_utc": machine::utc_now(),
        "machine": machine::machine(&base),
        "load": {
            "loadavg_start": load_start,
            "loadavg_end": machine::loadavg(),
            "io_pressure_start": io_start,
            "io_pressure_end": machine::io_pressure(),
        },
        "workload": w.to_json(),
        "baseline": "broker",
        "baseline_measured": baseline.is_some(),
        "ratio_definition": "other system ÷ our broker, all measured in this run: publish and consume + ack msgs/s above 1 mean the other is faster; confirm p50/p99 above 1 mean the other is slower",
        "systems": systems,
        "ratios_vs_broker": ratios,
        "redis_queue_vs_raw_redis": redis_queue_vs_raw(&results),
    });
    print_table(&results, baseline);
    let judged = &summary["redis_queue_vs_raw_redis"];
    if let Some(systems) = judged["systems"].as_object() {
        for (name, v) in systems {
            note!(
                "{name} ÷ raw redis: publish {} ({}), consume + ack {} ({}), confirm p99 {}; target ≥ {}",
                v["ratios"]["publish_msgs_per_s"],
                v["publish_throughput"].as_str().unwrap_or_default(),
                v["ratios"]["consume_ack_msgs_per_s"],
                v["consume_ack_throughput"].as_str().unwrap_or_default(),
                v["ratios"]["confirm_p99"],
                judged["min_ratio"]
            );
        }
        note!(
            "our queue on Redis within {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}x of raw Redis Streams: {}",
            judged["result"].as_str().unwrap_or_default()
        );
    }
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &a.json_out {
        std::fs::write(path, format!("{text}\n"))
            .map_err(|e| common::err(format!("write {}: {e}", path.display())))?;
        note!("queue-shootout: JSON written to {}", path.display());
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(baseline.is_some())
}

/// `sync` (flush every dirty page, so one system's writeback does not land in the next
/// one's figures), then a pause.
async fn settle(pause_secs: u64) {
    let _ = tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_secs(pause_secs)).await;
}

fn system_json(name: &str, r: &SystemRun, probe: &Value) -> Value {
    json!({
        "system": name,
        "status": "measured",
        "version": r.version,
        "disk_fsync_probe_before": probe,
        "durability": r.durability,
        "publish": r.publish.to_json(),
        "publish_resources": r.publish_resources,
        "consume_ack": r.consume.to_json(),
        "consume_resources": r.consume_resources,
        "checks": r.checks,
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0)
}

fn ratio_json(r: &SystemRun, b: &SystemRun) -> Value {
    let q = |run: &SystemRun, x: f64| run.publish.confirm.value_at_quantile(x) as f64;
    json!({
        "publish_msgs_per_s": ratio(r.publish.msgs_per_s(), b.publish.msgs_per_s()),
        "confirm_p50": ratio(q(r, 0.5), q(b, 0.5)),
        "confirm_p99": ratio(q(r, 0.99), q(b, 0.99)),
        "consume_ack_msgs_per_s": ratio(r.consume.msgs_per_s(), b.consume.msgs_per_s()),
    })
}

/// Our queue on Redis Streams against raw Redis Streams measured in this run: ratios ours
/// ÷ raw (publish and consume + ack msgs/s, confirm p50/p99) and the 1.5× target on the
/// throughputs, hit or miss.
fn redis_queue_vs_raw(results: &Results) -> Value {
    let measured = |name: &str| {
        results
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, r)| r.as_ref().ok())
    };
    let Some(raw) = measured("redis") else {
        return json!({"status": "not judged: raw Redis Streams (system redis) was not measured in this run"});
    };
    let min_ratio = 1.0 / TARGET_REDIS_QUEUE_SLOWDOWN_MAX;
    let mut out = Map::new();
    let mut all_hit = true;
    let mut any = false;
    for name in ["redis-queue", "redis-queue-ids"] {
        let Some(ours) = measured(name) else {
            continue;
        };
        any = true;
        let r = ratio_json(ours, raw);
        let mut hit = |k: &str| {
            let ok = r[k].as_f64().is_some_and(|x| x >= min_ratio);
            all_hit &= ok;
            if ok { "hit" } else { "miss" }
        };
        let publish = hit("publish_msgs_per_s");
        let consume = hit("consume_ack_msgs_per_s");
        out.insert(
            name.into(),
            json!({
                "ratios": r,
                "publish_throughput": publish,
                "consume_ack_throughput": consume,
            }),
        );
    }
    if !any {
        return json!({"status": "not judged: neither redis-queue nor redis-queue-ids was measured in this run"});
    }
    json!({
        "target": format!("our queue on Redis Streams within {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}x of raw Redis Streams' throughput: ours >= raw / {TARGET_REDIS_QUEUE_SLOWDOWN_MAX}, for publish and for consume + ack"),
        "min_ratio": (min_ratio * 1000.0).round() / 1000.0,
        "ratio_definition": "ours ÷ raw Redis Streams, both measured in this run on scratch servers with the same settings; msgs/s above 1: ours faster; confirm p50/p99 above 1: ours slower",
        "systems": out,
        "result": if all_hit { "hit" } else { "miss" },
    })
}

/// The human table, on stderr.
fn print_table(results: &Results, baseline: Option<&SystemRun>) {
    note!("");
    note!(
        "{:<9} {:>12} {:>9} {:>9} {:>13} {:>6} | {:>9} {:>9} {:>9} | {:>10}",
        "system",
        "publish/s",
        "p50 µs",
        "p99 µs",
        "consume+ack/s",
        "dups",
        "pub ×brk",
        "p99 ×brk",
        "cons ×brk",
        "fsync p50"
    );
    for (name, probe, r) in results {
        match r {
            Ok(run) => {
                let (rp, r99, rc) = match baseline {
                    Some(b) => {
                        let v = ratio_json(run, b);
                        let f = |k: &str| {
                            v[k].as_f64()
                                .map(|x| format!("{x:.2}"))
                                .unwrap_or_else(|| "-".into())
                        };
                        (
                            f("publish_msgs_per_s"),
                            f("confirm_p99"),
                            f("consume_ack_msgs_per_s"),
                        )
                    }
                    None => ("-".into(), "-".into(), "-".into()),
                };
                note!(
                    "{:<9} {:>12.0} {:>9} {:>9} {:>13.0} {:>6} | {:>9} {:>9} {:>9} | {:>10}",
                    name,
                    run.publish.msgs_per_s(),
                    run.publish.confirm.value_at_quantile(0.5),
                    run.publish.confirm.value_at_quantile(0.99),
                    run.consume.msgs_per_s(),
                    run.consume.duplicates,
                    rp,
                    r99,
                    rc,
                    probe["p50_us"].to_string()
                );
            }
            Err(e) => note!(
                "{name:<9} not measured: {}",
                e.lines().next().unwrap_or_default()
            ),
        }
    }
    note!(
        "(×brk: other ÷ our broker, measured in this run; fsync p50: µs of a raw append + fdatasync on the data disk right before the system ran)"
    );
    for (name, _, r) in results {
        if let Ok(run) = r {
            note!("{name} ({}):", run.version);
            if let Some(d) = run.durability.as_object() {
                for (k, v) in d {
                    note!("  {k}: {}", v.as_str().unwrap_or_default());
                }
            }
            note!("  consume: {}", run.consume.batching);
        }
    }
}
