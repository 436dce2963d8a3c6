//! `load-tests`: flash crowds against the flash-sale system, the invariant auditor, and
//! reports.
//!
//! ```text
//! load-tests demo  [--scenario ci|small|large] [--threshold 'p99_purchase_ms<50']… [--database URL] [--queue TARGET] [--out DIR]
//! load-tests run   --url http://127.0.0.1:8080 --admin-secret S --load-test-secret L [--scenario …] [--threshold …]… [--out DIR]
//! load-tests overload [--capacity 32] [--factor 10] [--secs 10] [--database URL] [--json-out FILE]
//! load-tests soak  [--secs 60] [--database URL] [--out DIR]
//! load-tests audit [--database URL] [--inventory memory|redis://…] [--sale N]… [--tickets FILE] [--at-rest]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use load_tests::audit::AuditError;
use load_tests::crowd::{self, CrowdError, Target};
use load_tests::scenario::{Scenario, ScenarioError};
use load_tests::system::{AllInOne, SystemError, SystemOptions};
use load_tests::threshold::{self, Threshold};

// The same allocator as the gateway binary (the system runs in this process for `demo`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the baseline's closed loop is measured.
const BASELINE_MEASURE: Duration = Duration::from_secs(3);
/// How long `demo` waits for the queue to drain before it audits.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// Why `demo` or `run` could not run (exit status 2; a failed check is exit status 1).
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The scenario or an override is not acceptable.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// `--url` is not an `http://IP:PORT` URL.
    #[error("{url}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The all-in-one system did not start.
    #[error("starting the all-in-one system: {0}")]
    System(#[from] SystemError),
    /// The crowd could not run.
    #[error(transparent)]
    Crowd(#[from] CrowdError),
    /// The baseline's closed loop failed.
    #[error("baseline: {0}")]
    Baseline(#[from] loadgen::LoadError),
    /// The audit could not read its figures.
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
    /// A file or folder could not be made or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |source| CliError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "load-tests",
    about = "Flash crowds, the invariant auditor and run reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ScenarioArgs {
    /// A preset: ci, small, large, mega (large with 100,000 units, 300,000 people,
    /// 1,500,000 attempts: the sell-through benchmark).
    #[arg(long, default_value = "ci")]
    scenario: String,
    /// Override: units on sale.
    #[arg(long)]
    units: Option<u64>,
    /// Override: simulated people.
    #[arg(long)]
    users: Option<u64>,
    /// Override: purchase attempts.
    #[arg(long)]
    attempts: Option<u64>,
    /// Override: concurrent connections.
    #[arg(long)]
    connections: Option<usize>,
    /// Override: stock buckets of the run's sale (1..=64; a Redis stock store splits the
    /// units over them, the in-process one ignores it).
    #[arg(long)]
    stock_buckets: Option<u32>,
    /// The seed of the crowd's random choices (who acts, bots' tricks, think times, repeat
    /// clicks, who pays, the run id), to replay a run; default: a random one. Every run
    /// prints its seed at start and records it in run.json and report.md.
    #[arg(long, env = crowd::SEED_ENV)]
    seed: Option<u64>,
    /// Where the report goes (run.json, report.md, throughput.svg, latency-over-time.svg,
    /// latency.svg).
    #[arg(long, default_value = "target/load-tests")]
    out: PathBuf,
    /// A pass/fail criterion, as k6 has them: METRIC OP VALUE, e.g. `p99_purchase_ms<50`
    /// or `error_rate<=0.01` (repeatable; a run that misses one exits with status 1).
    /// OP: <, <=, >, >=, ==, !=. METRIC: p50_ROUTE_ms, p90_ROUTE_ms, p99_ROUTE_ms,
    /// p999_ROUTE_ms, max_ROUTE_ms (ROUTE: login, page, sales, token, purchase, ticket,
    /// pay, live), error_rate, attempts_per_s, sold_out_after_s, last_decision_after_s,
    /// peak_backlog, accepted, ordered, unresolved, paid, bots_accepted, errors.
    #[arg(long = "threshold", value_name = "METRIC OP VALUE", value_parser = threshold::parse)]
    thresholds: Vec<Threshold>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl ScenarioArgs {
    /// The preset with the overrides given, named after both (`large (users=300000)`).
    fn scenario(&self) -> Result<Scenario, ScenarioError> {
        let mut s = Scenario::named(&self.scenario)?;
        s.override_with(&[
            ("units", self.units),
            ("users", self.users),
            ("attempts", self.attempts),
            (
                "connections",
                self.connections
                    .map(|v| u64::try_from(v).unwrap_or(u64::MAX)),
            ),
            ("stock_buckets", self.stock_buckets.map(u64::from)),
        ])?;
        s.seed = self.seed;
        s.validate()?;
        if self.thresholds.len() > threshold::THRESHOLDS_MAX {
            return Err(ScenarioError::OutOfBounds {
                setting: "--threshold",
                value: self.thresholds.len() as u64,
                min: 0,
                max: threshold::THRESHOLDS_MAX as u64,
            });
        }
        Ok(s)
    }
}

/// Holds the run to the thresholds given: records the verdicts and prints them; whether
/// every one passed.
fn hold_to_thresholds(
    record: &mut load_tests::record::RunRecord,
    thresholds: &[Threshold],
) -> bool {
    record.thresholds = threshold::evaluate(thresholds, record);
    for v in &record.thresholds {
        println!(
            "load-tests: threshold {} {} (value: {})",
            v.threshold,
            if v.passed { "PASS" } else { "FAIL" },
            v.actual
                .map_or_else(|| "none".to_string(), |a| format!("{a}"))
        );
    }
    record.thresholds.iter().all(|v| v.passed)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts the all-in-one system in this process, runs the scenario against it, waits
    /// for the queue to drain, audits every invariant and writes the report.
    Demo {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// The orders database (default: SQLite in a temporary directory).
        #[arg(long)]
        database: Option<String>,
        /// The queue (default: the embedded engine in a temporary directory): a directory,
        /// `tcp://HOST:PORT` (a `queue serve` broker), `redis://HOST:PORT` or
        /// `redis+cluster://HOST:PORT,HOST:PORT` (Redis Streams; options after `?`:
        /// `replicas=N`, `replica_timeout_ms=MS`, `fsync=relaxed`, `partitions=P`,
        /// `prefix=P`; see the README, "Queue on Redis Streams").
        #[arg(long)]
        queue: Option<String>,
        /// The stock store (default: in-process): `redis://HOST:PORT` or
        /// `redis+cluster://HOST:PORT,HOST:PORT` (keys under a prefix of the run's own; the
        /// audit reads the buckets raw from Redis).
        #[arg(long)]
        inventory: Option<String>,
        /// The benchmark: first measure a baseline in the same run (a closed loop of
        /// `GET /healthz` on as many connections, the ceiling of this harness and server
        /// on this machine), then the crowd, and print a JSON summary.
        #[arg(long)]
        baseline: bool,
        /// Also write the JSON summary here (the summary is the benchmark's: needs
        /// `--baseline`).
        #[arg(long, requires = "baseline")]
        json_out: Option<PathBuf>,
    },
    /// Runs the scenario against a running gateway (loopback only).
    Run {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Its admin secret.
        #[arg(long, env = "GATEWAY_ADMIN_SECRET")]
        admin_secret: String,
        /// Its load-test secret (`gateway --load-test-secret`).
        #[arg(long, env = "GATEWAY_LOAD_TEST_SECRET")]
        load_test_secret: String,
        /// Also write the accepted tickets here, one per line (for `audit --tickets`).
        #[arg(long)]
        tickets_out: Option<PathBuf>,
    },
    /// Checks every invariant against the orders database and the stock store.
    Audit(load_tests::audit::AuditArgs),
    /// Ten times the gateway's capacity after a same-run baseline: refusals' latency,
    /// peak memory, only 202/429/503, and the audit of every 202 (a JSON summary).
    Overload(load_tests::overload::OverloadArgs),
    /// Sale after sale with cancellations: RSS, open files, queue segments and database
    /// rows sampled and checked against their bounds (soak.json, soak.svg).
    Soak(load_tests::soak::SoakArgs),
    /// What one proxy hop costs: a closed loop of a trivial route against a gateway and
    /// through a proxy in front of it (nginx), alternating rounds, one JSON summary.
    Hop(load_tests::hop::HopArgs),
}

fn addr_of(url: &str) -> Result<std::net::SocketAddr, CliError> {
    let bad = |why: String| CliError::Url {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs".into()))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().map_err(|e| {
        bad(format!(
            "{e} (give an IP address and port, e.g. http://127.0.0.1:8080)"
        ))
    })
}

fn write_report(record: &load_tests::record::RunRecord, out: &std::path::Path) -> bool {
    match load_tests::report::write_all(record, out) {
        Ok(paths) => {
            for p in paths {
                println!("load-tests: wrote {}", p.display());
            }
            true
        }
        Err(e) => {
            eprintln!("load-tests: writing the report: {e}");
            false
        }
    }
}

/// The p99 latency of `route` over all its outcomes, ms (0 when the route saw no request).
fn p99_ms(record: &load_tests::record::RunRecord, route: &str) -> f64 {
    record
        .latency
        .get(route)
        .and_then(|m| m.get("all"))
        .map_or(0.0, |l| l.p99_ms)
}

fn headline(record: &load_tests::record::RunRecord) {
    let p99 = |route: &str| p99_ms(record, route);
    println!(
        "load-tests: {} attempts in {:.1} s ({:.0}/s), p99 token {:.1} ms, purchase {:.1} ms; accepted {}, ordered {}, unresolved {}, paid {}; bots refused {}, accepted {}; sold out after {} ms; peak backlog {}",
        record.attempts,
        record.attempt_phase_ms as f64 / 1000.0,
        record.attempts_per_s,
        p99("token"),
        p99("purchase"),
        record.accepted,
        record.ordered,
        record.unresolved,
        record.paid,
        record.bots_refused,
        record.bots_accepted,
        record
            .sold_out_after_ms
            .map_or_else(|| "-".to_string(), |v| v.to_string()),
        record.peak_backlog,
    );
}

/// When the sale's last order was written, ms since the epoch (from the database).
async fn last_order_ms(db: &order_worker::OrdersDb, sale: u64) -> Option<u64> {
    let shard = db.shard(db.shard_of(sale).await.ok()?)?;
    let sale = i64::try_from(sale).ok()?;
    let sql = "SELECT MAX(created_ms) FROM orders WHERE sale_id = $1";
    let v: Option<i64> = match shard {
        order_worker::db::Shard::Sqlite(p) => {
            sqlx::query_scalar(sql).bind(sale).fetch_one(p).await.ok()?
        }
        order_worker::db::Shard::Postgres(p) => {
            sqlx::query_scalar(sql).bind(sale).fetch_one(p).await.ok()?
        }
    };
    v.and_then(|v| u64::try_from(v).ok())
}

/// Peak resident memory of this process (the system and the load generator together), KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Baseline: `GET /healthz` in a closed loop on `connections` connections.
async fn baseline(
    addr: std::net::SocketAddr,
    connections: usize,
) -> Result<serde_json::Value, loadgen::LoadError> {
    let spec = loadgen::LoadSpec {
        addr,
        connections,
        warmup: Duration::from_secs(1),
        measure: BASELINE_MEASURE,
    };
    let r = loadgen::closed_loop(spec, |_| loadgen::request("GET", "/healthz", &[], None)).await?;
    Ok(serde_json::json!({
        "what": "GET /healthz, closed loop, same connections, same process",
        "requests_per_s": r.rps(),
        "p50_ms": r.quantile_ms(0.5),
        "p99_ms": r.quantile_ms(0.99),
        "errors": r.errors,
    }))
}

/// What kind of queue a target names, for the report's label (never the target itself: a
/// Redis URL may carry a password).
fn queue_kind(target: &str) -> &'static str {
    if target.starts_with(queue::streams::CLUSTER_PREFIX) {
        "Redis Cluster streams"
    } else if target.starts_with(queue::streams::REDIS_PREFIX) {
        "Redis streams"
    } else if target.starts_with(queue::backend::TCP_PREFIX) {
        "broker"
    } else {
        "embedded"
    }
}

/// Waits, at most [`DRAIN_WAIT`], until the order workers have drained the queue.
async fn wait_for_drain(system: &AllInOne) {
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let lag = system
            .state
            .queue
            .stats(&system.state.config.orders_topic)
            .await
            .ok()
            .and_then(|t| {
                t.groups
                    .iter()
                    .find(|g| g.name == system.state.config.workers_group)
                    .map(|g| g.lag)
            });
        if lag == Some(0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The end-to-end benchmark's JSON summary: the crowd's figures against the baseline's.
fn benchmark_summary(
    record: &load_tests::record::RunRecord,
    report: &load_tests::audit::AuditReport,
    base: serde_json::Value,
    last_order_after_ms: Option<u64>,
    seed: u64,
) -> serde_json::Value {
    let p99 = |route: &str| p99_ms(record, route);
    serde_json::json!({
        "benchmark": "end-to-end flash crowd",
        "scenario": record.scenario,
        "seed": seed,
        "target": record.target,
        "units": record.units,
        "users": record.users,
        "attempts": record.attempts,
        "attempts_per_s": record.attempts_per_s,
        "attempt_phase_ms": record.attempt_phase_ms,
        "p99_token_ms": p99("token"),
        "p99_purchase_ms": p99("purchase"),
        "p50_purchase_ms": record.latency.get("purchase").and_then(|m| m.get("all")).map_or(0.0, |l| l.p50_ms),
        "sold_out_after_ms": record.sold_out_after_ms,
        "last_decision_seen_after_ms": record.last_decision_after_ms,
        "last_order_written_after_ms": last_order_after_ms,
        "peak_backlog": record.peak_backlog,
        "accepted": record.accepted,
        "ordered": record.ordered,
        "bots_accepted": record.bots_accepted,
        "errors": record.errors,
        "audit_passed": report.passed(),
        "thresholds": record.thresholds,
        "thresholds_passed": record.thresholds.iter().all(|t| t.passed),
        "peak_rss_kib_system_and_generator": peak_rss_kib(),
        "baseline": base,
        "attempts_vs_baseline": record.attempts_per_s / base["requests_per_s"].as_f64().unwrap_or(f64::NAN),
        "published_reference_req_per_s": {"note": "quoted from public seckill projects, not measured here", "best_with_db_and_queue": 1306, "no_db_no_queue": 4276},
    })
}

async fn demo(
    args: ScenarioArgs,
    database: Option<String>,
    queue: Option<String>,
    inventory: Option<String>,
    with_baseline: bool,
    json_out: Option<PathBuf>,
) -> Result<bool, CliError> {
    let scenario = args.scenario()?;
    let dir = tempfile::tempdir().map_err(CliError::io(&std::env::temp_dir()))?;
    let system = AllInOne::start(
        dir.path(),
        SystemOptions {
            database,
            queue: queue.clone(),
            inventory: inventory.clone(),
            ..SystemOptions::default()
        },
    )
    .await?;
    println!(
        "load-tests: all-in-one system at {} on {}",
        system.url(),
        system.database
    );
    let base = if with_baseline {
        Some(baseline(system.addr, scenario.connections).await?)
    } else {
        None
    };
    let target = Target {
        addr: system.addr,
        admin_secret: system.admin_secret.clone(),
        load_test_secret: system.load_test_secret.clone(),
        label: match queue.as_deref().map(queue_kind) {
            None => format!("all-in-one ({})", system.db.backend()),
            Some(kind) => format!("all-in-one ({}, queue: {kind})", system.db.backend()),
        },
    };
    let outcome = crowd::run(scenario, target, !args.quiet).await?;
    // At rest: the queue drained, then the audit.
    wait_for_drain(&system).await;
    let store = system.state.inventory.store_arc();
    let input = load_tests::audit::AuditInput {
        db: system.db.clone(),
        store: Some(store),
        sales: Some(vec![outcome.record.sale_id]),
        tickets: outcome.tickets.clone(),
        at_rest: true,
        now_ms: queue::Clock::now_ms(&queue::SystemClock),
    };
    let report = match &inventory {
        // Redis: its counters and holder records read raw, every stock bucket summed.
        Some(url) => {
            let redis = inventory::RedisStore::connect(url, &SystemOptions::redis_prefix(), 2)
                .await
                .map_err(|e| AuditError::Redis(e.to_string()))?;
            let report = load_tests::audit::audit_redis(&input, &redis).await?;
            redis
                .forget(outcome.record.sale_id)
                .await
                .map_err(|e| AuditError::Redis(e.to_string()))?;
            report
        }
        None => load_tests::audit::audit(&input).await?,
    };
    report.print();
    let opened_ms = outcome.record.started_at_ms + outcome.record.sale_opened_after_ms;
    let last_order_after_ms = last_order_ms(&system.db, outcome.record.sale_id)
        .await
        .map(|t| t.saturating_sub(opened_ms));
    let seed = outcome.seed;
    let mut record = outcome.record;
    // The tickets are polled after the spike, so the poll's last sight of a decision is no
    // earlier than the spike's end; with the database at hand, the last order's own time.
    if last_order_after_ms.is_some() {
        record.last_decision_after_ms = last_order_after_ms;
    }
    record.audit = Some(report.clone());
    headline(&record);
    let thresholds_met = hold_to_thresholds(&mut record, &args.thresholds);
    let wrote = write_report(&record, &args.out);
    if let Some(base) = base {
        let summary = benchmark_summary(&record, &report, base, last_order_after_ms, seed);
        // A JSON value always serialises.
        let text = serde_json::to_string_pretty(&summary).unwrap_or_else(|_| summary.to_string());
        println!("{text}");
        if let Some(path) = json_out {
            std::fs::write(&path, &text).map_err(CliError::io(&path))?;
        }
    }
    let stopped = system.stop().await?;
    if stopped.purchases_running > 0 {
        eprintln!(
            "load-tests: {} purchases were still running when the system stopped",
            stopped.purchases_running
        );
    }
    Ok(report.passed() && record.bots_accepted == 0 && wrote && thresholds_met)
}

async fn run_against(
    args: ScenarioArgs,
    url: String,
    admin_secret: String,
    load_test_secret: String,
    tickets_out: Option<PathBuf>,
) -> Result<bool, CliError> {
    let scenario = args.scenario()?;
    let addr = addr_of(&url)?;
    let outcome = crowd::run(
        scenario,
        Target {
            addr,
            admin_secret,
            load_test_secret,
            label: url,
        },
        !args.quiet,
    )
    .await?;
    if let Some(path) = tickets_out {
        let mut text = outcome.tickets.join("\n");
        text.push('\n');
        std::fs::write(&path, text).map_err(CliError::io(&path))?;
    }
    let mut record = outcome.record;
    headline(&record);
    let thresholds_met = hold_to_thresholds(&mut record, &args.thresholds);
    let wrote = write_report(&record, &args.out);
    Ok(record.bots_accepted == 0 && record.unresolved == 0 && wrote && thresholds_met)
}

fn main() -> ExitCode {
    order_worker::allocator::configure();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load-tests: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let result = match cli.command {
            Command::Audit(args) => return load_tests::audit::run_cli(args).await,
            Command::Overload(args) => return load_tests::overload::run_cli(args).await,
            Command::Soak(args) => return load_tests::soak::run_cli(args).await,
            Command::Hop(args) => return load_tests::hop::run_cli(args).await,
            Command::Demo {
                scenario,
                database,
                queue,
                inventory,
                baseline,
                json_out,
            } => demo(scenario, database, queue, inventory, baseline, json_out).await,
            Command::Run {
                scenario,
                url,
                admin_secret,
                load_test_secret,
                tickets_out,
            } => run_against(scenario, url, admin_secret, load_test_secret, tickets_out).await,
        };
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("load-tests: FAILED (see above)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("load-tests: {e}");
                ExitCode::from(2)
            }
        }
    })
}
