//! Chaos across processes (issue 16, "Prove it: chaos"): the split deployment, every part a
//! real process or server, killed with SIGKILL at seeded random moments of a sale and
//! started again, and afterwards, at rest, the auditor.
//!
//! The fleet of one round: the queue (a `queue serve` broker, or in the second variant the
//! queue on Redis Streams in a scratch `redis-server` with `appendfsync always`), two
//! `gateway` processes (`--workers 0 --cancellers 0`, stock in Redis, orders in
//! PostgreSQL, one signing secret so a session or token of one is good at the other), two
//! `order-worker` processes (two workers and a canceller each), the Redis stock store (a
//! `redis-kit` scratch server) and PostgreSQL (a `pg-kit` scratch server). Nothing shared:
//! never the machine's 5432 or 6379.
//!
//! A crowd of [`BUYERS`] connections buys from one sale of [`UNITS`] units with a short pay
//! window ([`PAY_WINDOW_MS`]): each person signs in, takes a token (load-test mode) and buys
//! at one of the gateways picked at random; some pay for their order, some come back and
//! try to buy again (one per person), the rest let their order lapse, so units come back
//! and the sale keeps selling through the whole window. Meanwhile a seeded schedule kills
//! (SIGKILL) the queue, a gateway and an order-worker process (and [`EXTRA_KILLS`] more of
//! these), and Redis and PostgreSQL once each (SIGKILL, then a restart: the AOF, or crash
//! recovery from the WAL), each down for a seeded moment and then started again on its port.
//! Kills of different parts overlap (a gateway may restart while PostgreSQL recovers); a
//! process that exits at start because a server it needs is down is started again, as a
//! supervisor would, and counted; a process that exits by itself while serving fails the
//! test.
//! Every [`AUDIT_EVERY`] the auditor checks, mid-sale, what must hold at every instant (no
//! oversell, one per person, the database's conservation, no negative stock).
//!
//! A buyer tells answers apart: a 202 with a ticket is acknowledged and must never be lost;
//! `503 outcome_unknown` carries a ticket that may or may not become an order; a purchase
//! whose answer never came (the gateway was killed, the connection cut) is unknown too,
//! and only its person is known. Afterwards, with every process running again: the orders
//! topic drains, and then, at rest, the auditor must pass in full within [`SETTLE_WAIT`]: no
//! acknowledged purchase without an outcome, no oversell, one order per person, the stock
//! store (raw Redis counters and holder set) equal to the database, every unpaid order
//! cancelled in time. And no order may exist that no buyer could have caused: each order's
//! ticket was handed out, or its person's purchase was cut off.
//!
//! Seeded and replayable: `CHAOS_SEED` (else random; printed at the start, so a failed
//! run's output names it) fixes the schedule and every buyer's choices; `CHAOS_ROUNDS`
//! (default 1, at most [`ROUNDS_MAX`]) runs more rounds per backend, each on a fresh fleet.
//! The counts of kills and restarts of each kind are printed per round. The binaries are
//! the ones cargo built (`support::procs`); a missing binary, `redis-server` or PostgreSQL
//! fails the test under `CI` and skips it elsewhere.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inventory::RedisStore;
use load_tests::audit::AuditReport;
use order_worker::OrdersDb;
use order_worker::db::DbOptions;
use pg_kit::PgServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_kit::{RedisOptions, RedisServer};
use serde_json::json;
use support::crowd::{self, Crowd, Seen, audit_mid_sale, lock};
use support::flood;
use support::procs::{Binaries, Proc, binaries_or_skip};

/// The seed of the run (decimal); random if unset.
const SEED_ENV: &str = "CHAOS_SEED";
/// Rounds per backend.
const ROUNDS_ENV: &str = "CHAOS_ROUNDS";
const ROUNDS_DEFAULT: u32 = 1;
const ROUNDS_MAX: u32 = 50;

/// The sale (the flood's id, so the flood's purchase steps apply).
const SALE: u64 = flood::SALE;
/// Units on sale: fewer than the crowd wants, so the sale sells out and oversell is tested.
const UNITS: u64 = 300;
/// The sale's pay window: short, so unpaid orders lapse (and their units come back) within
/// the round.
const PAY_WINDOW_MS: u64 = 4_000;
/// Connections buying at once.
const BUYERS: usize = 8;

/// The window in which the schedule's kills happen, after the warm-up.
const CHAOS_WINDOW: Duration = Duration::from_secs(20);
/// Kills of a queue, gateway or order-worker process beyond one of each, per round.
const EXTRA_KILLS: usize = 2;
/// Longest a killed part stays down before its restart.
const DOWN_MAX_MS: u64 = 1_500;
/// Acknowledged purchases before the first kill, and how long they may take.
const WARMUP_ACCEPTED: u64 = 30;
const WARMUP_WAIT: Duration = Duration::from_secs(60);
/// Lease of an order-worker's batch: a killed worker's batch is taken by another this soon.
const WORKER_LEASE_MS: u64 = 5_000;
/// Longest a process may take to start (a gateway connects to the queue, Redis and
/// PostgreSQL; debug builds on two cores).
const START_WAIT: Duration = Duration::from_secs(60);
/// Longest the orders topic may take to drain after the chaos.
const DRAIN_WAIT: Duration = Duration::from_secs(90);
/// Longest the system may take, drained, to pass the full audit at rest: the last pay
/// windows end and their orders are cancelled, and the gateways' reconciliation at rest
/// (two checks ten seconds apart) resets the stock store to the database.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// The two chaos tests share the machine's two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_the_broker() {
    chaos(QueueKind::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_the_queue_on_redis_streams() {
    chaos(QueueKind::RedisStreams).await;
}

/// Which queue the fleet runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    Broker,
    RedisStreams,
}

/// What a schedule's event kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Target {
    /// The broker process, or the queue's Redis.
    Queue,
    Gateway(usize),
    Worker(usize),
    /// The stock store's Redis.
    StockRedis,
    Postgres,
}

impl Target {
    fn kind(self) -> &'static str {
        match self {
            Target::Queue => "queue",
            Target::Gateway(_) => "gateway",
            Target::Worker(_) => "order-worker",
            Target::StockRedis => "redis (stock)",
            Target::Postgres => "postgresql",
        }
    }
}

/// One kill of the schedule: when (after the window opens), what, and how long it stays
/// down before its restart.
#[derive(Debug, Clone, Copy)]
struct Event {
    at: Duration,
    target: Target,
    down: Duration,
}

async fn chaos(kind: QueueKind) {
    let _one_at_a_time = SERIAL.lock().await;
    let Some(bins) = binaries_or_skip("the chaos test") else {
        return;
    };
    let seed = match std::env::var(SEED_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={v:?}: {e}")),
        Err(_) => rand::random::<u64>(),
    };
    let rounds = match std::env::var(ROUNDS_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ROUNDS_ENV}={v:?}: {e}")),
        Err(_) => ROUNDS_DEFAULT,
    };
    assert!(
        (1..=ROUNDS_MAX).contains(&rounds),
        "{ROUNDS_ENV} is 1..={ROUNDS_MAX}, not {rounds}"
    );
    eprintln!("chaos ({kind:?}): seed {seed} (replay with {SEED_ENV}={seed}), {rounds} round(s)");
    for round in 0..rounds {
        // Each backend and round its own stream of the one seed.
        let round_seed = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(round) * 2 + u64::from(kind == QueueKind::RedisStreams));
        let Some(outcome) = one_round(&bins, kind, round, round_seed).await else {
            return;
        };
        eprintln!("chaos ({kind:?}) round {round} (seed {seed}): {outcome}");
    }
}

/// Starts scratch servers with `start` off the async workers; `None` (skip) when the
/// program is missing outside `CI`.
async fn start_server<T: Send + 'static, E: fmt::Display + Send + 'static>(
    what: &'static str,
    missing: fn(&E) -> bool,
    start: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Option<T> {
    let started = tokio::task::spawn_blocking(start)
        .await
        .expect("the start task does not panic");
    match started {
        Ok(server) => Some(server),
        Err(e) if missing(&e) && !order_worker::testing::under_ci() => {
            eprintln!("skipping the chaos test: {what}: {e}");
            None
        }
        Err(e) => panic!("{what} did not start: {e}"),
    }
}

/// Runs in a blocking section (kills, restarts and their bounded waits are synchronous).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The seeded schedule: one kill of each kind (queue, a gateway, an order-worker, the stock
/// Redis, PostgreSQL) and [`EXTRA_KILLS`] more of processes, at uniform moments of the
/// window, in time order.
fn schedule(rng: &mut StdRng) -> Vec<Event> {
    let mut targets = vec![
        Target::Queue,
        Target::Gateway(rng.random_range(0..2)),
        Target::Worker(rng.random_range(0..2)),
        Target::StockRedis,
        Target::Postgres,
    ];
    for _ in 0..EXTRA_KILLS {
        targets.push(match rng.random_range(0..3) {
            0 => Target::Queue,
            1 => Target::Gateway(rng.random_range(0..2)),
            _ => Target::Worker(rng.random_range(0..2)),
        });
    }
    let window_ms = u64::try_from(CHAOS_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let mut events: Vec<Event> = targets
        .into_iter()
        .map(|target| Event {
            at: Duration::from_millis(rng.random_range(0..window_ms)),
            target,
            down: Duration::from_millis(rng.random_range(0..=DOWN_MAX_MS)),
        })
        .collect();
    events.sort_by_key(|e| e.at);
    events
}

/// The parts of one round's deployment. Each part has a lock of its own: kills of
/// different parts overlap (PostgreSQL may be down while a gateway restarts), two kills of
/// one part take turns.
struct Fleet {
    pg: Mutex<PgServer>,
    stock: Mutex<RedisServer>,
    stock_url: String,
    /// The queue's Redis (Redis Streams variant).
    queue_redis: Option<Mutex<RedisServer>>,
    /// The broker (broker variant).
    broker: Option<Mutex<Proc>>,
    queue_url: String,
    db_url: String,
    gateways: Vec<Mutex<Proc>>,
    gateway_addrs: Vec<SocketAddr>,
    workers: Vec<Mutex<Proc>>,
    admin_secret: String,
    load_test_secret: String,
    /// Starts of a process that exited before it was ready (a gateway or order-worker
    /// started while PostgreSQL or Redis was down), each followed by another start, as a
    /// supervisor (systemd's `Restart=always`) does.
    failed_starts: AtomicU64,
}

/// The line each binary prints once it serves.
const BROKER_READY: &str = "queue: listening on ";
const GATEWAY_READY: &str = "gateway: listening on http://";
/// (Not just `order-worker: `: its start-up errors begin so too. The workers run with one
/// canceller: "2 workers, 1 canceller on postgres …".)
const WORKER_READY: &str = " canceller on ";
/// The pause before a supervisor starts a process that exited at start again.
const RESPAWN_PAUSE: Duration = Duration::from_millis(200);

fn random_hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl Fleet {
    /// Starts everything (blocking): the servers are started by the caller.
    fn start(
        bins: &Binaries,
        kind: QueueKind,
        dir: &Path,
        pg: PgServer,
        stock: RedisServer,
        queue_redis: Option<RedisServer>,
        rng: &mut StdRng,
    ) -> Fleet {
        let db_url = pg.url("chaos");
        let (broker, queue_url) = match (&queue_redis, kind) {
            (Some(redis), QueueKind::RedisStreams) => (None, redis.url()),
            _ => {
                let data = dir.join("queue").display().to_string();
                let args = |listen: &str| -> Vec<String> {
                    ["serve", "--data", &data, "--listen", listen]
                        .map(String::from)
                        .to_vec()
                };
                let mut broker = Proc::new("broker", &bins.queue, args("127.0.0.1:0"), dir);
                broker.spawn();
                let line = broker.wait_for_line(BROKER_READY, START_WAIT);
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or_else(|| panic!("no address in {line:?}"))
                    .to_string();
                // Restarts come back on the same port: the gateways and workers keep it.
                broker.set_args(args(&addr));
                (Some(broker), format!("tcp://{addr}"))
            }
        };
        let secret = random_hex(rng, 32);
        let admin_secret = random_hex(rng, 16);
        let load_test_secret = random_hex(rng, 16);
        let gateway_args = |listen: &str| -> Vec<String> {
            [
                "--listen",
                listen,
                "--queue",
                &queue_url,
                "--inventory",
                &stock.url(),
                "--database",
                &db_url,
                "--workers",
                "0",
                "--cancellers",
                "0",
                "--secret",
                &secret,
                "--admin-secret",
                &admin_secret,
                "--load-test-secret",
                &load_test_secret,
                "--per-ip-limits",
                "off",
                "--demo-units",
                "0",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut gateways = Vec::new();
        let mut gateway_addrs = Vec::new();
        for i in 0..2 {
            let mut g = Proc::new(
                &format!("gateway {i}"),
                &bins.gateway,
                gateway_args("127.0.0.1:0"),
                dir,
            );
            g.spawn();
            let line = g.wait_for_line(GATEWAY_READY, START_WAIT);
            let addr: SocketAddr = line
                .rsplit("http://")
                .next()
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            g.set_args(gateway_args(&addr.to_string()));
            gateways.push(g);
            gateway_addrs.push(addr);
        }
        let lease = WORKER_LEASE_MS.to_string();
        let workers = (0..2)
            .map(|i| {
                let args = [
                    "--queue",
                    &queue_url,
                    "--database",
                    &db_url,
                    "--inventory",
                    &stock.url(),
                    "--workers",
                    "2",
                    "--cancellers",
                    "1",
                    "--lease-ms",
                    &lease,
                    "--report-secs",
                    "3600",
                ]
                .map(String::from)
                .to_vec();
                let mut w = Proc::new(&format!("order-worker {i}"), &bins.order_worker, args, dir);
                w.spawn();
                w.wait_for_line(WORKER_READY, START_WAIT);
                Mutex::new(w)
            })
            .collect();
        Fleet {
            pg: Mutex::new(pg),
            stock_url: stock.url(),
            stock: Mutex::new(stock),
            queue_redis: queue_redis.map(Mutex::new),
            broker: broker.map(Mutex::new),
            queue_url,
            db_url,
            gateways: gateways.into_iter().map(Mutex::new).collect(),
            gateway_addrs,
            workers,
            admin_secret,
            load_test_secret,
            failed_starts: AtomicU64::new(0),
        }
    }

    /// SIGKILLs `target`, leaves it down for `down`, starts it again and waits until it is
    /// back (blocking; holds the part's lock throughout).
    fn kill_and_restart(&self, target: Target, down: Duration) {
        match target {
            Target::Queue => match (&self.broker, &self.queue_redis) {
                (Some(broker), _) => self.restart_proc(&mut lock(broker), down, BROKER_READY),
                (None, Some(redis)) => {
                    let mut redis = lock(redis);
                    redis.kill().expect("SIGKILL the queue's Redis");
                    std::thread::sleep(down);
                    redis.restart().expect("restart the queue's Redis");
                }
                (None, None) => unreachable!("a fleet has a queue"),
            },
            Target::Gateway(i) => {
                self.restart_proc(&mut lock(&self.gateways[i]), down, GATEWAY_READY);
            }
            Target::Worker(i) => {
                self.restart_proc(&mut lock(&self.workers[i]), down, WORKER_READY);
            }
            Target::StockRedis => {
                let mut stock = lock(&self.stock);
                stock.kill().expect("SIGKILL the stock Redis");
                std::thread::sleep(down);
                stock.restart().expect("restart the stock Redis");
            }
            Target::Postgres => {
                let mut pg = lock(&self.pg);
                pg.kill().expect("SIGKILL PostgreSQL");
                std::thread::sleep(down);
                pg.restart().expect("restart PostgreSQL (crash recovery)");
            }
        }
    }

    /// Kill, `down`, then start until it prints `ready`: a start that exits first (its
    /// database or Redis is down at that moment) is counted and started again, within
    /// [`START_WAIT`].
    fn restart_proc(&self, p: &mut Proc, down: Duration, ready: &str) {
        p.kill();
        std::thread::sleep(down);
        let deadline = Instant::now() + START_WAIT;
        loop {
            p.spawn();
            match p.wait_ready(ready, deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => return,
                Err(why) => {
                    assert!(
                        Instant::now() < deadline,
                        "{} did not start within {START_WAIT:?}: {why}",
                        p.name
                    );
                    self.failed_starts.fetch_add(1, Ordering::Relaxed);
                    // A supervisor's pause between starts, not a synchronisation.
                    std::thread::sleep(RESPAWN_PAUSE);
                }
            }
        }
    }

    /// Every process that exited by itself while it served (none should: they ride out
    /// their peers' crashes), with its log. A part being restarted (locked) is skipped.
    fn exited_by_themselves(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self
            .broker
            .iter()
            .chain(self.gateways.iter())
            .chain(self.workers.iter())
        {
            let Ok(mut p) = p.try_lock() else { continue };
            if let Some(status) = p.exited() {
                out.push(format!(
                    "{} exited by itself ({status}):\n{}",
                    p.name,
                    p.log_tail()
                ));
            }
        }
        out
    }

    fn logs(&self) -> String {
        self.broker
            .iter()
            .chain(self.gateways.iter())
            .chain(self.workers.iter())
            .map(|p| lock(p).log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Puts the sale on through gateway 0's admin API and waits until both gateways list it.
async fn create_sale(fleet: &Fleet) {
    crowd::put_on_sale(
        fleet.gateway_addrs[0],
        &fleet.admin_secret,
        &json!({
            "id": SALE,
            "name": "chaos",
            "price_cents": 100,
            "units": UNITS,
            "starts_at_ms": queue::Clock::now_ms(&queue::SystemClock),
            "pay_window_ms": PAY_WINDOW_MS,
        }),
    )
    .await;
    crowd::every_gateway_lists(&fleet.gateway_addrs, SALE, Duration::from_secs(10)).await;
}

/// What a round did, for its line in the output.
struct RoundOutcome {
    kills: BTreeMap<&'static str, u32>,
    restarts: BTreeMap<&'static str, u32>,
    failed_starts: u64,
    seen: Seen,
    audits_mid_sale: (u64, u64),
    orders_of_cut_off: usize,
    report: AuditReport,
    took: Duration,
}

impl fmt::Display for RoundOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.seen;
        let figures = self.report.sales.first();
        write!(
            f,
            "kills {:?}, restarts {:?} ({} starts failed and were retried); {} accepted (202), {} outcome unknown (503), {} cut off \
             ({} of them became orders); {} repeat purchases ({} accepted); {} paid, payment \
             refusals {:?}; mid-sale audits {} (+{} unreadable while PostgreSQL was down); \
             at rest {:?}; answers {:?} (refusals, e.g. {:?}); {:?}",
            self.kills,
            self.restarts,
            self.failed_starts,
            s.accepted.len(),
            s.unknown.len(),
            s.cut_off.len(),
            self.orders_of_cut_off,
            s.repeats,
            s.repeats_accepted,
            s.paid,
            s.pay_refused,
            self.audits_mid_sale.0,
            self.audits_mid_sale.1,
            figures,
            s.answers,
            s.messages,
            self.took,
        )
    }
}

/// One round on a fresh fleet; `None` when a server program is missing (outside `CI`).
async fn one_round(
    bins: &Binaries,
    kind: QueueKind,
    round: u32,
    seed: u64,
) -> Option<RoundOutcome> {
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let events = schedule(&mut rng);
    eprintln!("round {round}: schedule {events:?}");

    let pg = start_server(
        "PostgreSQL (pg-kit)",
        |e: &pg_kit::KitError| matches!(e, pg_kit::KitError::MissingBinary { .. }),
        || {
            let pg = PgServer::start()?;
            pg.create_database("chaos")?;
            Ok(pg)
        },
    )
    .await?;
    let redis_missing =
        |e: &redis_kit::KitError| matches!(e, redis_kit::KitError::MissingBinary { .. });
    let stock = start_server("the stock Redis", redis_missing, || {
        RedisServer::start(RedisOptions::new())
    })
    .await?;
    let queue_redis = match kind {
        QueueKind::Broker => None,
        QueueKind::RedisStreams => {
            let redis = start_server("the queue's Redis", redis_missing, || {
                RedisServer::start(RedisOptions::new())
            })
            .await?;
            Some(redis)
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Arc::new(blocking(|| {
        Fleet::start(bins, kind, dir.path(), pg, stock, queue_redis, &mut rng)
    }));
    let db = OrdersDb::connect(&fleet.db_url, &DbOptions::default())
        .await
        .expect("the test's own connection to the orders database");
    create_sale(&fleet).await;
    eprintln!("round {round}: fleet up after {:?}", began.elapsed());

    let crowd = Arc::new(Crowd {
        pay_window: Duration::from_millis(PAY_WINDOW_MS),
        ..Crowd::default()
    });
    let buyers = crowd::start_buyers(
        &crowd,
        &fleet.gateway_addrs,
        &fleet.load_test_secret,
        BUYERS,
        &mut rng,
    );
    crowd::warm_up(&crowd, WARMUP_ACCEPTED, WARMUP_WAIT).await;
    let stop_audits = Arc::new(AtomicBool::new(false));
    let auditor = tokio::spawn(audit_mid_sale(db.clone(), SALE, stop_audits.clone()));

    // The schedule: each kill at its moment, on a thread of its own, so kills of different
    // parts overlap; two kills of one part take turns (the part's lock).
    let window = Instant::now();
    let mut kills: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut restarts: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut running = Vec::new();
    for event in events.iter().copied() {
        tokio::time::sleep_until((window + event.at).into()).await;
        let exited = fleet.exited_by_themselves();
        assert!(exited.is_empty(), "seed {seed}: {}", exited.join("\n"));
        let (fleet, accepted) = (fleet.clone(), crowd.accepted.load(Ordering::Relaxed));
        running.push(tokio::task::spawn_blocking(move || {
            let at = window.elapsed();
            fleet.kill_and_restart(event.target, event.down);
            eprintln!(
                "round {round}: {:?} killed at {at:?} ({accepted} accepted), back at {:?}",
                event.target,
                window.elapsed()
            );
            event.target
        }));
    }
    for done in running {
        let target = done
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: a kill: {e}"));
        *kills.entry(target.kind()).or_default() += 1;
        *restarts.entry(target.kind()).or_default() += 1;
    }
    tokio::time::sleep_until((window + CHAOS_WINDOW).into()).await;
    crowd.stop.store(true, Ordering::Relaxed);
    for b in buyers {
        b.await.expect("a buyer");
    }
    stop_audits.store(true, Ordering::Relaxed);
    let (mid_failures, ran, unreadable) = auditor.await.expect("the mid-sale auditor");
    let exited = fleet.exited_by_themselves();
    assert!(exited.is_empty(), "seed {seed}: {}", exited.join("\n"));
    assert!(
        mid_failures.is_empty(),
        "seed {seed}: checks that must hold at every instant failed mid-sale: {mid_failures:#?}"
    );
    eprintln!("round {round}: crowd stopped after {:?}", began.elapsed());

    let seen = std::mem::take(&mut *lock(&crowd.seen));
    let (report, orders_of_cut_off) = settle_and_audit(&fleet, &db, &seen, seed).await;
    let outcome = RoundOutcome {
        kills,
        restarts,
        failed_starts: fleet.failed_starts.load(Ordering::Relaxed),
        seen,
        audits_mid_sale: (ran, unreadable),
        orders_of_cut_off,
        report,
        took: began.elapsed(),
    };
    db.close().await;
    drop(fleet);
    Some(outcome)
}

/// At rest: the orders topic drained; then the full audit (stock read raw from Redis) must
/// pass within [`SETTLE_WAIT`]; and every order must have a cause. Returns the passing
/// report and how many orders came of cut-off purchases.
async fn settle_and_audit(
    fleet: &Fleet,
    db: &OrdersDb,
    seen: &Seen,
    seed: u64,
) -> (AuditReport, usize) {
    crowd::drain(&fleet.queue_url, DRAIN_WAIT, || {
        format!("seed {seed}; logs:\n{}", fleet.logs())
    })
    .await;
    let store = RedisStore::connect(&fleet.stock_url, "seckill:", 2)
        .await
        .expect("the stock store");
    let report = crowd::audit_at_rest(db, &store, SALE, seen, SETTLE_WAIT, || {
        format!("seed {seed}; logs:\n{}", fleet.logs())
    })
    .await;
    let of_cut_off = crowd::orders_have_causes(db, seen, seed).await;
    (report, of_cut_off)
}
