//! Soak (issue 16): sale after sale with cancellations on the all-in-one system (embedded
//! queue, SQLite or PostgreSQL), sampling what could leak, and checking it stays bounded.
//!
//! Each round is a small flash crowd ([`crate::crowd::run`]) on a new sale with a short pay
//! window, so the orders its buyers leave unpaid are cancelled by the canceller (a delayed
//! message on the queue) while the next rounds run. After every round the run samples:
//! - the process's RSS (system and generator: they share this process);
//! - its open file descriptors (`/proc/self/fd`);
//! - the queue's segment files on disk (count, bytes, and the highest segment number ever
//!   made, so retention's deletions show);
//! - the database's rows per table.
//!
//! The queue runs with small segments and a short de-duplication window
//! ([`Spec::segment_bytes_max`], [`Spec::dedup_window_ms`]) so that its retention (a
//! segment is deleted once every group is done with it, no delayed message in it is
//! pending and no id in it is still in the de-duplication window) cycles many times even in
//! a short run. Orders are kept by design (the database is the record of every sale), so
//! rows grow with sales; the bound that must hold is per sale: at most one order and one
//! outcome per purchase answered 202, and the `workers` table no larger than the crew.
//!
//! [`Report::checks`] lists the checks; [`plot_svg`] draws the samples.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::GatewayConfig;
use gateway::system::{DatabaseSource, QueueSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;
use order_worker::OrdersDb;
use order_worker::db::DbOptions;
use plotters::prelude::*;
use queue::Clock as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::crowd::{self, Target};
use crate::scenario::Scenario;

/// The environment variable of a soak's length, s (`load-tests soak --secs`, and the CI
/// test's override).
pub const SOAK_SECS_ENV: &str = "SOAK_SECS";
/// The environment variable naming where the plot goes (else the target directory).
pub const SOAK_PLOT_ENV: &str = "SOAK_PLOT";
/// Longest soak, s (a day).
pub const SOAK_SECS_MAX: u64 = 24 * 3600;
/// Most rounds of one soak.
pub const ROUNDS_MAX: u64 = 100_000;
/// How long the end of the run waits for the last unpaid orders to be cancelled.
const CANCEL_WAIT: Duration = Duration::from_secs(60);
/// How long the run waits for the workers to drain the queue at the end.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// How a soak goes.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Its length, s: rounds start until then.
    pub secs: u64,
    /// Units of each round's sale.
    pub units: u64,
    /// People of each round.
    pub users: u64,
    /// Attempts of each round.
    pub attempts: u64,
    /// Each sale's pay window, ms (short: the unpaid orders are cancelled during the run).
    pub pay_window_ms: u64,
    /// Share of the orders paid.
    pub pay_share: f64,
    /// The queue's segment size, bytes.
    pub segment_bytes_max: u64,
    /// The queue's de-duplication window, ms.
    pub dedup_window_ms: u64,
    /// Bound: peak RSS of the process, MiB.
    pub rss_max_mib: u64,
    /// Bound: how far the RSS of the run's last half may rise above its first half's peak,
    /// MiB (a leak grows without end; a warmed-up heap does not).
    pub rss_growth_max_mib: u64,
    /// Bound: open file descriptors.
    pub fds_max: u64,
    /// Bound: open file descriptors above the count after the first round.
    pub fds_growth_max: u64,
    /// Bound: queue segment files on disk.
    pub segments_max: u64,
    /// The orders database (`None`: SQLite in the run's directory).
    pub database: Option<String>,
    /// The seed of round `i`'s crowd is `seed + i`.
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            secs: 60,
            units: 20,
            users: 120,
            attempts: 500,
            pay_window_ms: 2_000,
            pay_share: 0.3,
            segment_bytes_max: 16 << 10,
            dedup_window_ms: 10_000,
            rss_max_mib: 768,
            rss_growth_max_mib: 64,
            fds_max: 512,
            fds_growth_max: 32,
            segments_max: 64,
            database: None,
            seed: 1,
        }
    }
}

/// Why a soak could not go on (a failed check is not an error: see [`Report::passed`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoakError {
    /// A setting out of its bounds.
    #[error("{0}")]
    Spec(String),
    /// The queue could not be opened.
    #[error("queue: {0}")]
    Queue(#[from] queue::Error),
    /// The system did not start or stop.
    #[error("system: {0}")]
    System(#[from] gateway::system::SystemError),
    /// A round's crowd failed.
    #[error("round {round}: {source}")]
    Crowd {
        /// Which round.
        round: u64,
        /// Why.
        #[source]
        source: crowd::CrowdError,
    },
    /// Reading the database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The auditor could not read its figures.
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Drawing the plot.
    #[error("plot: {0}")]
    Plot(String),
    /// Files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One sample, taken after a round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Rounds (sales) done.
    pub rounds: u64,
    /// Purchases answered 202 so far.
    pub accepted: u64,
    /// Resident set, MiB.
    pub rss_mib: f64,
    /// Open file descriptors.
    pub fds: u64,
    /// Queue segment files on disk.
    pub segments: u64,
    /// Their bytes.
    pub segment_bytes: u64,
    /// The highest segment number made so far (per topic, summed): segments ever made.
    pub segments_made: u64,
    /// Rows: sales.
    pub sales: u64,
    /// Rows: orders.
    pub orders: u64,
    /// Rows: pending orders.
    pub pending: u64,
    /// Rows: outcomes.
    pub outcomes: u64,
    /// Rows: workers.
    pub workers: u64,
}

/// One check (the same as the overload run's).
pub use crate::overload::Check;

/// What a soak found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The settings.
    pub spec: Spec,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// How long it ran, s.
    pub seconds: f64,
    /// The samples, one per round (and one before the first).
    pub samples: Vec<Sample>,
    /// Orders cancelled by the end.
    pub cancelled: u64,
    /// Orders paid by the end.
    pub paid: u64,
    /// The auditor's lines (every sale, every ticket, at rest).
    pub audit: Vec<String>,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// The queue's segment files under `dir`: (count, bytes, segments made), the last the sum
/// over topic folders of the highest segment number plus one.
fn segments(dir: &Path) -> (u64, u64, u64) {
    let (mut count, mut bytes, mut made) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    let mut highest: std::collections::HashMap<PathBuf, u64> = Default::default();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Some(seq) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                count += 1;
                bytes += meta.len();
                let h = highest.entry(d.clone()).or_default();
                *h = (*h).max(seq + 1);
            }
        }
    }
    for h in highest.values() {
        made += h;
    }
    (count, bytes, made)
}

/// Open file descriptors of this process.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// A `SELECT COUNT(*) …`, summed over the shards.
async fn count(db: &OrdersDb, sql: &'static str) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for i in 0..db.shard_count() {
        let n: i64 = match db.shard(i) {
            Some(order_worker::db::Shard::Sqlite(p)) => {
                sqlx::query_scalar(sql).fetch_one(p).await?
            }
            Some(order_worker::db::Shard::Postgres(p)) => {
                sqlx::query_scalar(sql).fetch_one(p).await?
            }
            None => 0,
        };
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

/// Rows per sale of a `SELECT sale_id, COUNT(*) … GROUP BY sale_id` query.
async fn per_sale_counts(
    db: &OrdersDb,
    sql: &'static str,
) -> Result<std::collections::HashMap<u64, u64>, sqlx::Error> {
    let mut counts = std::collections::HashMap::new();
    for i in 0..db.shard_count() {
        let rows: Vec<(i64, i64)> = match db.shard(i) {
            Some(order_worker::db::Shard::Sqlite(p)) => sqlx::query_as(sql).fetch_all(p).await?,
            Some(order_worker::db::Shard::Postgres(p)) => sqlx::query_as(sql).fetch_all(p).await?,
            None => Vec::new(),
        };
        for (s, n) in rows {
            *counts.entry(u64::try_from(s).unwrap_or(0)).or_default() +=
                u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(counts)
}

async fn sample(
    db: &OrdersDb,
    queue_dir: &Path,
    start: Instant,
    rounds: u64,
    accepted: u64,
) -> Result<Sample, sqlx::Error> {
    let (segments, segment_bytes, segments_made) = segments(queue_dir);
    Ok(Sample {
        t_s: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        rounds,
        accepted,
        rss_mib: (crate::overload::rss_mib(false) * 10.0).round() / 10.0,
        fds: open_fds(),
        segments,
        segment_bytes,
        segments_made,
        sales: count(db, "SELECT COUNT(*) FROM sales").await?,
        orders: count(db, "SELECT COUNT(*) FROM orders").await?,
        pending: count(db, "SELECT COUNT(*) FROM orders WHERE status = 'pending'").await?,
        outcomes: count(db, "SELECT COUNT(*) FROM outcomes").await?,
        workers: count(db, "SELECT COUNT(*) FROM workers").await?,
    })
}

/// Runs a soak with its queue and SQLite file (by default) under `dir`.
pub async fn run(spec: Spec, dir: &Path) -> Result<Report, SoakError> {
    if spec.secs == 0 || spec.secs > SOAK_SECS_MAX {
        return Err(SoakError::Spec(format!(
            "a soak lasts 1..={SOAK_SECS_MAX} s, not {}",
            spec.secs
        )));
    }
    let started_at_ms = queue::SystemClock.now_ms();
    let queue_dir = dir.join("queue");
    let engine = Arc::new(queue::Engine::open(
        &queue_dir,
        queue::Config {
            segment_bytes_max: spec.segment_bytes_max,
            dedup_window_ms: spec.dedup_window_ms,
            ..queue::Config::default()
        },
    )?);
    let admin_secret = hex16();
    let load_test_secret = hex16();
    let mut gateway = GatewayConfig::new(admin_secret.clone());
    gateway.load_test_secret = Some(load_test_secret.clone());
    let database = spec
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", dir.join("orders.db").display()));
    let mut config = SystemConfig::new(
        QueueSource::Shared(engine.clone()),
        DatabaseSource::Url {
            url: database,
            options: DbOptions::default(),
        },
        gateway,
    );
    // Every simulated person comes from 127.0.0.1 (as in `system::AllInOne`).
    config.throttle = ThrottleConfig::default().without_per_ip();
    let crew_members = (config.crew.workers + config.crew.cancellers) as u64;
    let system = System::start(config).await?;
    let addr = system
        .addr()
        .ok_or_else(|| SoakError::Spec("the system did not bind".into()))?;
    let db = system.db().clone();
    let state = system.state().clone();

    let start = Instant::now();
    let until = start + Duration::from_secs(spec.secs);
    let mut samples = vec![sample(&db, &queue_dir, start, 0, 0).await?];
    let mut tickets: Vec<String> = Vec::new();
    let mut per_sale: Vec<(u64, u64)> = Vec::new();
    let mut round = 0;
    while Instant::now() < until && round < ROUNDS_MAX {
        let scenario = Scenario {
            name: "soak".into(),
            units: spec.units,
            users: spec.users,
            attempts: spec.attempts,
            bot_share: 0.05,
            repeat_share: 0.3,
            pay_share: spec.pay_share,
            opens_in_ms: 200,
            polls_per_user: 1,
            pay_window_ms: spec.pay_window_ms,
            connections: 16,
            deadline_ms: 60_000,
            seed: Some(spec.seed.wrapping_add(round)),
            stock_buckets: inventory::STOCK_BUCKETS_DEFAULT,
        };
        let outcome = crowd::run(
            scenario,
            Target {
                addr,
                admin_secret: admin_secret.clone(),
                load_test_secret: load_test_secret.clone(),
                label: "soak".into(),
            },
            false,
        )
        .await
        .map_err(|source| SoakError::Crowd { round, source })?;
        per_sale.push((outcome.record.sale_id, outcome.tickets.len() as u64));
        tickets.extend(outcome.tickets);
        round += 1;
        samples.push(sample(&db, &queue_dir, start, round, tickets.len() as u64).await?);
    }
    let seconds = start.elapsed().as_secs_f64();

    // The end: the queue drained, the last unpaid orders cancelled, then the audit.
    let drained = crate::overload::wait_for_drain(&state, DRAIN_WAIT).await;
    let cancel_deadline = Instant::now() + CANCEL_WAIT;
    let mut pending = u64::MAX;
    while Instant::now() < cancel_deadline {
        pending = count(&db, "SELECT COUNT(*) FROM orders WHERE status = 'pending'").await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = sample(&db, &queue_dir, start, round, tickets.len() as u64).await?;
    let audit = crate::audit::audit(&crate::audit::AuditInput {
        db: db.clone(),
        store: Some(state.inventory.store_arc()),
        sales: Some(per_sale.iter().map(|(s, _)| *s).collect()),
        tickets: tickets.clone(),
        at_rest: drained,
        now_ms: queue::SystemClock.now_ms(),
    })
    .await?;
    let cancelled = count(
        &db,
        "SELECT COUNT(*) FROM orders WHERE status = 'cancelled'",
    )
    .await?;
    let paid = count(&db, "SELECT COUNT(*) FROM orders WHERE status = 'paid'").await?;
    // Rows per sale: at most one order and exactly one outcome per 202.
    let mut over: Vec<String> = Vec::new();
    let orders_of =
        per_sale_counts(&db, "SELECT sale_id, COUNT(*) FROM orders GROUP BY sale_id").await?;
    let outcomes_of = per_sale_counts(
        &db,
        "SELECT sale_id, COUNT(*) FROM outcomes GROUP BY sale_id",
    )
    .await?;
    let active_of = per_sale_counts(
        &db,
        "SELECT sale_id, COUNT(*) FROM orders WHERE status <> 'cancelled' GROUP BY sale_id",
    )
    .await?;
    for (sale, accepted) in &per_sale {
        let of = |m: &std::collections::HashMap<u64, u64>| m.get(sale).copied().unwrap_or(0);
        let (orders, outcomes, active) = (of(&orders_of), of(&outcomes_of), of(&active_of));
        if orders > *accepted || outcomes != *accepted || active > spec.units {
            over.push(format!(
                "sale {sale}: {accepted} × 202, {orders} orders ({active} active), {outcomes} outcomes"
            ));
        }
    }
    let _ = system.stop().await?;
    engine.close()?;
    samples.push(last);

    let checks = checks(
        &spec,
        &samples,
        crew_members,
        pending,
        drained,
        &over,
        &audit,
        round,
    );
    Ok(Report {
        spec,
        started_at_ms,
        seconds,
        samples,
        cancelled,
        paid,
        audit: audit.lines(),
        checks,
    })
}

#[allow(clippy::too_many_arguments)]
fn checks(
    spec: &Spec,
    samples: &[Sample],
    crew_members: u64,
    pending: u64,
    drained: bool,
    over: &[String],
    audit: &crate::audit::AuditReport,
    rounds: u64,
) -> Vec<Check> {
    let max = |f: &dyn Fn(&Sample) -> f64, from: usize| {
        samples.iter().skip(from).map(f).fold(0.0, f64::max)
    };
    let half = samples.len() / 2;
    let rss_peak = max(&|s| s.rss_mib, 0);
    let rss_first_half = samples
        .iter()
        .take(half.max(1))
        .map(|s| s.rss_mib)
        .fold(0.0, f64::max);
    let rss_last_half = max(&|s| s.rss_mib, half);
    let fds_peak = max(&|s| s.fds as f64, 0) as u64;
    let fds_after_first = samples.get(1).map_or(0, |s| s.fds);
    let fds_last = samples.last().map_or(0, |s| s.fds);
    let segments_peak = max(&|s| s.segments as f64, 0) as u64;
    let last = samples.last().cloned().unwrap_or_default();
    vec![
        Check {
            name: "more than one sale ran",
            passed: rounds >= 2,
            detail: format!("{rounds} sales"),
        },
        Check {
            name: "RSS under its bound",
            passed: rss_peak <= spec.rss_max_mib as f64,
            detail: format!("peak {rss_peak:.1} MiB ≤ {} MiB", spec.rss_max_mib),
        },
        Check {
            name: "RSS does not keep growing",
            passed: rss_last_half <= rss_first_half + spec.rss_growth_max_mib as f64,
            detail: format!(
                "last half's peak {rss_last_half:.1} MiB ≤ first half's {rss_first_half:.1} + {} MiB",
                spec.rss_growth_max_mib
            ),
        },
        Check {
            name: "open files under their bound",
            passed: fds_peak <= spec.fds_max,
            detail: format!("peak {fds_peak} ≤ {}", spec.fds_max),
        },
        Check {
            name: "open files do not leak",
            passed: fds_last <= fds_after_first + spec.fds_growth_max,
            detail: format!(
                "{fds_last} at the end ≤ {fds_after_first} after the first sale + {}",
                spec.fds_growth_max
            ),
        },
        Check {
            name: "queue segments under their bound",
            passed: segments_peak <= spec.segments_max,
            detail: format!("peak {segments_peak} files ≤ {}", spec.segments_max),
        },
        Check {
            name: "queue retention deleted segments",
            passed: last.segments_made > last.segments,
            detail: format!(
                "{} segments made, {} on disk at the end ({} bytes)",
                last.segments_made, last.segments, last.segment_bytes
            ),
        },
        Check {
            name: "rows per sale: an order at most and an outcome per 202, active orders ≤ units",
            passed: over.is_empty(),
            detail: if over.is_empty() {
                format!(
                    "{} orders, {} outcomes for {} × 202 over {} sales",
                    last.orders, last.outcomes, last.accepted, last.sales
                )
            } else {
                over.join("; ")
            },
        },
        Check {
            name: "workers rows no more than the crew",
            passed: samples.iter().all(|s| s.workers <= crew_members),
            detail: format!(
                "peak {} ≤ {crew_members}",
                max(&|s| s.workers as f64, 0) as u64
            ),
        },
        Check {
            name: "every unpaid order cancelled at the end",
            passed: pending == 0,
            detail: format!("{pending} pending after the last pay window"),
        },
        Check {
            name: "the queue drained",
            passed: drained,
            detail: format!("within {} s", DRAIN_WAIT.as_secs()),
        },
        Check {
            name: "audit at rest over every sale",
            passed: audit.passed(),
            detail: format!("{} tickets answered 202", last.accepted),
        },
    ]
}

fn hex16() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The samples as an SVG: four panels over time (RSS; open files; queue segment files;
/// database rows with the 202s beside them).
pub fn plot_svg(report: &Report) -> Result<String, SoakError> {
    let err = |e: &dyn std::fmt::Display| SoakError::Plot(e.to_string());
    let s = &report.samples;
    let x_max = s.iter().map(|x| x.t_s).fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let panels = root.split_evenly((4, 1));
        type Series<'a> = Vec<(&'a str, RGBColor, Box<dyn Fn(&Sample) -> f64>)>;
        let specs: Vec<(String, &str, Series)> = vec![
            (
                format!(
                    "Soak: RSS of system and generator (bound {} MiB)",
                    report.spec.rss_max_mib
                ),
                "MiB",
                vec![(
                    "RSS",
                    RGBColor(31, 119, 180),
                    Box::new(|x: &Sample| x.rss_mib),
                )],
            ),
            (
                format!("Open file descriptors (bound {})", report.spec.fds_max),
                "fds",
                vec![(
                    "open fds",
                    RGBColor(214, 39, 40),
                    Box::new(|x: &Sample| x.fds as f64),
                )],
            ),
            (
                format!(
                    "Queue segment files on disk (bound {}) and segments ever made",
                    report.spec.segments_max
                ),
                "files",
                vec![
                    (
                        "on disk",
                        RGBColor(44, 160, 44),
                        Box::new(|x: &Sample| x.segments as f64),
                    ),
                    (
                        "made",
                        RGBColor(150, 150, 150),
                        Box::new(|x: &Sample| x.segments_made as f64),
                    ),
                ],
            ),
            (
                "Database rows (orders are kept: bound one order and one outcome per 202)".into(),
                "rows",
                vec![
                    (
                        "202s",
                        RGBColor(150, 150, 150),
                        Box::new(|x: &Sample| x.accepted as f64),
                    ),
                    (
                        "orders",
                        RGBColor(255, 127, 14),
                        Box::new(|x: &Sample| x.orders as f64),
                    ),
                    (
                        "outcomes",
                        RGBColor(148, 103, 189),
                        Box::new(|x: &Sample| x.outcomes as f64),
                    ),
                    (
                        "pending",
                        RGBColor(214, 39, 40),
                        Box::new(|x: &Sample| x.pending as f64),
                    ),
                ],
            ),
        ];
        for (area, (title, unit, series)) in panels.iter().zip(specs) {
            let y_max = series
                .iter()
                .flat_map(|(_, _, f)| s.iter().map(f))
                .fold(1.0, f64::max)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds since the soak started")
                .y_desc(unit)
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| err(&e))?;
            for (name, color, f) in series {
                chart
                    .draw_series(LineSeries::new(
                        s.iter().map(|x| (x.t_s, f(x))),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// The report as JSON (with the machine beside it).
pub fn to_json(report: &Report) -> Value {
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("benchmark".into(), json!("soak"));
        o.insert("passed".into(), json!(report.passed()));
        o.insert("machine".into(), crate::overload::machine());
    }
    v
}

/// Writes `soak.json` and `soak.svg` into `dir`; returns their paths.
pub fn write(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf), SoakError> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("soak.json");
    let svg_path = dir.join("soak.svg");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&to_json(report)).unwrap_or_default() + "\n",
    )?;
    std::fs::write(&svg_path, plot_svg(report)?)?;
    Ok((json_path, svg_path))
}

/// `load-tests soak`'s flags.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long, s.
    #[arg(long, env = SOAK_SECS_ENV, default_value_t = Spec::default().secs)]
    secs: u64,
    /// The orders database (default: SQLite in a temporary directory).
    #[arg(long)]
    database: Option<String>,
    /// The queue's de-duplication window, ms (segments holding ids still in it are kept).
    #[arg(long, default_value_t = Spec::default().dedup_window_ms)]
    dedup_window_ms: u64,
    /// Where soak.json and soak.svg go.
    #[arg(long, default_value = "target/load-tests/soak")]
    out: PathBuf,
}

/// Runs `load-tests soak`: exit 0 when every check passed, 1 when not, 2 when the run
/// could not go on.
pub async fn run_cli(args: SoakArgs) -> std::process::ExitCode {
    let spec = Spec {
        secs: args.secs,
        database: args.database,
        dedup_window_ms: args.dedup_window_ms,
        ..Spec::default()
    };
    let result = async {
        let dir = tempfile::tempdir()?;
        let report = run(spec, dir.path()).await?;
        let paths = write(&report, &args.out)?;
        Ok::<_, SoakError>((report, paths))
    }
    .await;
    let (report, (json_path, svg_path)) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load-tests: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    crate::overload::print_checks(&report.audit, &report.checks);
    println!(
        "load-tests soak: {:.0} s, {} sales, {} paid, {} cancelled; {} and {}",
        report.seconds,
        report.samples.last().map_or(0, |s| s.rounds),
        report.paid,
        report.cancelled,
        json_path.display(),
        svg_path.display()
    );
    if report.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("load-tests: FAILED (see above)");
        std::process::ExitCode::FAILURE
    }
}
