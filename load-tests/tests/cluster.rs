//! The cluster (issue 17, "Prove it"): the deployment `scripts/cluster up` starts — nginx in
//! front of three gateways (route cookie, trusted proxy), a Redis Cluster of three masters
//! and three replicas holding the queue (Redis Streams, `WAIT` for one replica), the stock
//! (the sale split into [`BUCKETS`] stock buckets) and the tokens, two `order-worker`
//! processes, and two PostgreSQL shards each with a synchronous standby — under a flash
//! crowd through nginx, with a seeded schedule of SIGKILLs: a gateway (nginx routes around
//! it; started again), an order worker (started again), a Redis master (its replica takes
//! over; the master stays down), and a PostgreSQL primary (its standby is promoted; the
//! shard's URL names both hosts, so every process finds the new primary).
//!
//! Mid-sale, every [`crowd::AUDIT_EVERY`], the checks that hold at every instant run on every
//! shard; at rest the full audit on every shard: no oversell, one order per person across
//! buckets and gateways, every 202 decided, the stock store (all buckets) equal to the
//! database, unpaid orders cancelled; and every order has a cause.
//!
//! Seeded and replayable: `CLUSTER_SEED` (else random, printed). The script, nginx,
//! `redis-server` and PostgreSQL 15 are needed: missing ones fail the test under `CI` and
//! skip it elsewhere. The binaries are the ones cargo built (`support::procs`).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inventory::RedisStore;
use order_worker::OrdersDb;
use order_worker::db::DbOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::crowd::{self, Crowd, audit_mid_sale, lock};
use support::procs::binaries_or_skip;

/// The seed of the run (decimal); random if unset.
const SEED_ENV: &str = "CLUSTER_SEED";
/// The sale the crowd buys (the flood's buy steps name it).
const SALE: u64 = support::flood::SALE;
/// Units on sale: fewer than the crowd wants, so it sells out (and oversell is tested).
const UNITS: u64 = 200;
/// Stock buckets of the sale, so units live on several Redis masters.
const BUCKETS: u64 = 3;
/// The sale's pay window: short, so unpaid orders lapse within the run.
const PAY_WINDOW_MS: u64 = 4_000;
/// Connections buying at once, all through nginx.
const BUYERS: usize = 6;
/// Acknowledged purchases before the first kill, and how long they may take.
const WARMUP_ACCEPTED: u64 = 20;
const WARMUP_WAIT: Duration = Duration::from_secs(90);
/// The window in which the schedule's kills happen, after the warm-up.
const CHAOS_WINDOW: Duration = Duration::from_secs(25);
/// Longest a killed gateway or worker stays down, and before a standby is promoted.
const DOWN_MAX_MS: u64 = 2_000;
/// Longest `scripts/cluster up` may take (debug binaries, two cores).
const UP_WAIT: Duration = Duration::from_secs(300);
/// Longest the orders topic may take to drain after the chaos.
const DRAIN_WAIT: Duration = Duration::from_secs(120);
/// Longest the drained system may take to pass the audit at rest.
const SETTLE_WAIT: Duration = Duration::from_secs(90);
/// nginx's per-address request rate for the run (the whole crowd comes from 127.0.0.1).
const NGINX_RATE: u32 = 100_000;

/// A cluster started by `scripts/cluster up` in a temporary directory; `down` when dropped.
struct Cluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Cluster {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// `scripts/cluster up`; `None` (skip) when a program it needs is missing outside `CI`.
    fn up(bin_dir: &Path) -> Option<Cluster> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("scripts/cluster");
        for program in [
            "/usr/sbin/nginx",
            "/usr/bin/redis-server",
            "/usr/lib/postgresql/15/bin/postgres",
        ] {
            if !Path::new(program).exists() {
                assert!(
                    !order_worker::testing::under_ci(),
                    "the cluster test needs {program} (scripts/ensure-nginx, ensure-redis, ensure-postgres)"
                );
                eprintln!("skipping the cluster test: no {program}");
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            script,
            dir,
            env: HashMap::new(),
        };
        let rate = NGINX_RATE.to_string();
        let state = cluster.state_dir().display().to_string();
        let bins = bin_dir.display().to_string();
        cluster.run(
            &[
                "up",
                "--bin-dir",
                &bins,
                "--per-ip-limits",
                "off",
                "--nginx-rate",
                &rate,
            ],
            &state,
            UP_WAIT,
        );
        let text =
            std::fs::read_to_string(cluster.state_dir().join("cluster.env")).expect("cluster.env");
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                cluster
                    .env
                    .insert(k.to_string(), v.trim_matches('\'').to_string());
            }
        }
        Some(cluster)
    }

    /// Runs the script with `args` and `--dir`; panics with its output if it fails.
    fn run(&self, args: &[&str], state: &str, within: Duration) -> String {
        let mut command = Command::new("bash");
        command.arg(&self.script).args(args).args(["--dir", state]);
        let out = support::procs::run_bounded(command, within)
            .unwrap_or_else(|e| panic!("scripts/cluster {args:?}: {e}"));
        assert!(
            out.status.success(),
            "scripts/cluster {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cmd(&self, args: &[&str]) -> String {
        let state = self.state_dir().display().to_string();
        self.run(args, &state, UP_WAIT)
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("cluster.env has no {name}"))
    }

    fn nginx(&self) -> SocketAddr {
        addr_of(self.var("NGINX_URL"))
    }

    fn gateways(&self) -> Vec<SocketAddr> {
        self.var("GATEWAY_URLS")
            .split_whitespace()
            .map(addr_of)
            .collect()
    }

    /// The name (`redis-PORT`) of a Redis node that is a master now.
    fn a_redis_master(&self, rng: &mut StdRng) -> String {
        let procs = std::fs::read_to_string(self.state_dir().join("procs")).expect("procs");
        let mut masters: Vec<String> = procs
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("redis-"))
            .filter(|n| {
                let port = &n["redis-".len()..];
                Command::new("redis-cli")
                    .args(["-p", port, "role"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("master"))
            })
            .map(str::to_string)
            .collect();
        masters.sort();
        assert!(!masters.is_empty(), "no Redis master answers");
        masters[rng.random_range(0..masters.len())].clone()
    }

    /// The status lines of every process and the tail of each log, for a failure.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.state_dir()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    out.push_str(&format!("--- {}\n", p.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.state_dir().join("procs").exists() {
            let state = self.state_dir().display().to_string();
            let mut command = Command::new("bash");
            command.arg(&self.script).args(["down", "--dir", &state]);
            let _ = support::procs::run_bounded(command, Duration::from_secs(60));
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// What a schedule's event kills.
#[derive(Debug, Clone)]
enum Target {
    Gateway(usize),
    Worker(usize),
    RedisMaster,
    PostgresPrimary(usize),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Gateway(_) => "gateway",
            Target::Worker(_) => "order-worker",
            Target::RedisMaster => "redis master",
            Target::PostgresPrimary(_) => "postgresql primary",
        }
    }
}

/// One kill of each kind at a seeded moment of the window, in time order; how long each
/// stays down (or, for a PostgreSQL primary, until its standby is promoted).
fn schedule(rng: &mut StdRng) -> Vec<(Duration, Target, Duration)> {
    let targets = [
        Target::Gateway(rng.random_range(0..3)),
        Target::Worker(rng.random_range(0..2)),
        Target::RedisMaster,
        Target::PostgresPrimary(rng.random_range(0..2)),
    ];
    let window_ms = u64::try_from(CHAOS_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let mut events: Vec<_> = targets
        .into_iter()
        .map(|t| {
            (
                Duration::from_millis(rng.random_range(0..window_ms)),
                t,
                Duration::from_millis(rng.random_range(0..=DOWN_MAX_MS)),
            )
        })
        .collect();
    events.sort_by_key(|e| e.0);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_through_nginx_survives_kills_across_the_cluster() {
    let Some(bins) = binaries_or_skip("the cluster test") else {
        return;
    };
    let seed = match std::env::var(SEED_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={v:?}: {e}")),
        Err(_) => rand::random::<u64>(),
    };
    eprintln!("cluster: seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let events = schedule(&mut rng);
    eprintln!("cluster: schedule {events:?}");
    let began = Instant::now();
    let bin_dir = bins
        .gateway
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    let Some(cluster) = tokio::task::block_in_place(|| Cluster::up(&bin_dir)) else {
        return;
    };
    let cluster = Arc::new(cluster);
    eprintln!("cluster: up after {:?}: {:?}", began.elapsed(), cluster.env);

    let db = OrdersDb::connect(cluster.var("DATABASE_URLS"), &DbOptions::default())
        .await
        .expect("the test's own connections to the shards");
    create_sale(&cluster).await;

    let crowd = Arc::new(Crowd {
        pay_window: Duration::from_millis(PAY_WINDOW_MS),
        ..Crowd::default()
    });
    let secret = cluster.var("LOAD_TEST_SECRET").to_string();
    let buyers = crowd::start_buyers(&crowd, &[cluster.nginx()], &secret, BUYERS, &mut rng);
    crowd::warm_up(&crowd, WARMUP_ACCEPTED, WARMUP_WAIT).await;
    let stop_audits = Arc::new(AtomicBool::new(false));
    let auditor = tokio::spawn(audit_mid_sale(db.clone(), SALE, stop_audits.clone()));

    let window = Instant::now();
    let mut kills: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut running = Vec::new();
    for (at, target, down) in events {
        tokio::time::sleep_until((window + at).into()).await;
        let cluster = cluster.clone();
        // Drawn here, so the schedule's randomness stays in seed order.
        let pick: u64 = rng.random();
        *kills.entry(target.kind()).or_default() += 1;
        running.push(tokio::task::spawn_blocking(move || {
            let t0 = window.elapsed();
            // (`redis-cli` calls block: off the runtime's two workers.)
            let master = matches!(target, Target::RedisMaster)
                .then(|| cluster.a_redis_master(&mut StdRng::seed_from_u64(pick)));
            match &target {
                Target::Gateway(i) => {
                    cluster.cmd(&["kill", &format!("gateway-{i}")]);
                    std::thread::sleep(down);
                    cluster.cmd(&["start", &format!("gateway-{i}")]);
                }
                Target::Worker(i) => {
                    cluster.cmd(&["kill", &format!("worker-{i}")]);
                    std::thread::sleep(down);
                    cluster.cmd(&["start", &format!("worker-{i}")]);
                }
                Target::RedisMaster => {
                    cluster.cmd(&["kill", master.as_deref().expect("a master")]);
                }
                Target::PostgresPrimary(s) => {
                    cluster.cmd(&["kill", &format!("pg-{s}-primary")]);
                    std::thread::sleep(down);
                    cluster.cmd(&["promote", &s.to_string()]);
                }
            }
            eprintln!(
                "cluster: {target:?} ({master:?}) killed at {t0:?}, done at {:?}",
                window.elapsed()
            );
        }));
    }
    for r in running {
        r.await
            .unwrap_or_else(|e| panic!("seed {seed}: a kill: {e}"));
    }
    tokio::time::sleep_until((window + CHAOS_WINDOW).into()).await;
    crowd.stop.store(true, Ordering::Relaxed);
    for b in buyers {
        b.await.expect("a buyer");
    }
    stop_audits.store(true, Ordering::Relaxed);
    let (mid_failures, ran, unreadable) = auditor.await.expect("the mid-sale auditor");
    assert!(
        mid_failures.is_empty(),
        "seed {seed}: checks that must hold at every instant failed mid-sale: {mid_failures:#?}"
    );
    let seen = std::mem::take(&mut *lock(&crowd.seen));
    assert!(
        !seen.accepted.is_empty(),
        "seed {seed}: nothing was accepted: {:?}",
        seen.answers
    );

    crowd::drain(cluster.var("QUEUE_URL"), DRAIN_WAIT, || {
        format!("seed {seed}; logs:\n{}", cluster.logs())
    })
    .await;
    let store = RedisStore::connect(cluster.var("STOCK_URL"), "seckill:", 2)
        .await
        .expect("the stock store");
    let report = crowd::audit_at_rest(&db, &store, SALE, &seen, SETTLE_WAIT, || {
        format!("seed {seed}; logs:\n{}", cluster.logs())
    })
    .await;
    let of_cut_off = crowd::orders_have_causes(&db, &seen, seed).await;
    eprintln!(
        "cluster (seed {seed}): kills {kills:?}; {} accepted, {} unknown, {} cut off ({of_cut_off} \
         became orders); {} paid; mid-sale audits {ran} (+{unreadable} unreadable); at rest \
         {:?}; answers {:?}; took {:?}",
        seen.accepted.len(),
        seen.unknown.len(),
        seen.cut_off.len(),
        seen.paid,
        report.sales.first(),
        seen.answers,
        began.elapsed()
    );
    db.close().await;
}

/// Puts the sale on through nginx's admin route, in [`BUCKETS`] stock buckets, and waits
/// until every gateway lists it.
async fn create_sale(cluster: &Cluster) {
    crowd::put_on_sale(
        cluster.nginx(),
        cluster.var("ADMIN_SECRET"),
        &json!({
            "id": SALE,
            "name": "cluster",
            "price_cents": 100,
            "units": UNITS,
            "stock_buckets": BUCKETS,
            "starts_at_ms": queue::Clock::now_ms(&queue::SystemClock),
            "pay_window_ms": PAY_WINDOW_MS,
        }),
    )
    .await;
    crowd::every_gateway_lists(&cluster.gateways(), SALE, Duration::from_secs(20)).await;
}
