//! Process tests: the real `order-worker` binary on an embedded queue directory and a
//! SQLite file (or a scratch PostgreSQL database), killed with SIGKILL between a batch's
//! commit and its ack, restarted, and stopped with SIGTERM.
//!
//! - `killed_between_commit_and_ack_then_restarted` (`sqlite`, `postgres`): 300 purchases
//!   for a 200-unit sale wait in the queue directory. The worker runs with the fail point
//!   `ORDER_WORKER_PAUSE_AFTER_COMMIT=1` (it prints `order-worker: paused after commit` after
//!   a batch's commit, before the pay-by publish and the ack, and waits) and is killed there
//!   with SIGKILL, `ORDER_WORKER_CRASH_ITERATIONS` times (default 2). Each run takes a
//!   batch 50 larger than the last, so each kill comes after the commit of 50 purchases
//!   never decided before (plus the redelivery of everything killed earlier). A last run
//!   without the fail point drains the queue and is stopped with SIGTERM (exit 0). Then:
//!   exactly 200 orders (the first 200 purchases), 100 sold-out rejections, one outcome per
//!   ticket, one ticket per order, no unit left, exactly one stored pay-by message per
//!   order, and nothing left for the workers' group.
//!
//! Nothing sleeps in place of synchronisation: the test waits for a line on the child's
//! stdout, a count in the database or the child's exit, each with a deadline. A child is
//! killed and reaped when its guard is dropped, panics included.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use order_worker::OrdersDb;
use order_worker::db::{DbOptions, reason};
use order_worker::purchase::{DEADLINES_TOPIC, ORDERS_TOPIC, PurchaseMessage};
use queue::{Engine, Queue};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{WAIT, deadline_id, orders_lag, publish, purchase, sale, stored_deadlines, wait_until};

/// The secret of the broker the worker processes talk to.
const BROKER_SECRET: &str = "order-worker-test-broker-secret";

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_order-worker");
const PURCHASES: usize = 300;
const UNITS: u64 = 200;
const BATCH: usize = 50;
const PAUSED: &str = "order-worker: paused after commit";
const STOPPED: &str = "order-worker: stopped cleanly";
/// The fail point's value in the crash test (`the_fail_point_accepts_1` checks `1` too).
const PAUSE_ON: &str = "true";
const ITERATIONS_ENV: &str = "ORDER_WORKER_CRASH_ITERATIONS";
const ITERATIONS_DEFAULT: usize = 2;
/// Every kill costs the purchases it redelivers one delivery attempt, and the queue
/// dead-letters a message after `queue::Config::default().max_attempts` (5) of them; the
/// first batch is delivered once per kill and once more by the final run.
const ITERATIONS_MAX: usize = 4;

fn iterations() -> usize {
    let n = match std::env::var(ITERATIONS_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ITERATIONS_ENV}={v:?}: {e}")),
        Err(_) => ITERATIONS_DEFAULT,
    };
    assert!(
        (1..=ITERATIONS_MAX).contains(&n),
        "{ITERATIONS_ENV} is 1..={ITERATIONS_MAX} (each kill costs the first batch a \
         delivery attempt; the queue dead-letters after 5), not {n}"
    );
    n
}

/// A child `order-worker`. Its stdout is read line by line by a thread (into a channel the
/// test awaits with a deadline); its stderr is kept for failure messages. Dropping it kills
/// (SIGKILL) and reaps the process.
struct Proc {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    reaped: bool,
}

impl Proc {
    /// Starts `order-worker` on `queue_dir` and `database` (one worker, no canceller, batches
    /// of `batch`); with `pause`, the fail point's environment variable has that value.
    fn spawn(
        what: &str,
        queue_dir: &Path,
        database: &str,
        batch: usize,
        pause: Option<&str>,
    ) -> Proc {
        let queue_dir = queue_dir
            .to_str()
            .expect("temporary directory path is UTF-8");
        let batch = batch.to_string();
        Proc::spawn_args(
            what,
            &[
                "--queue",
                queue_dir,
                "--database",
                database,
                "--workers",
                "1",
                "--cancellers",
                "0",
                "--batch",
                &batch,
            ],
            pause,
        )
    }

    /// Starts `order-worker` with these arguments.
    fn spawn_args(what: &str, args: &[&str], pause: Option<&str>) -> Proc {
        let mut cmd = Command::new(WORKER_BIN);
        cmd.args(args)
            // The binary reads these; the test's own environment must not change its runs.
            .env_remove("ORDER_WORKER_QUEUE")
            .env_remove("DATABASE_URL")
            .env_remove("ORDER_WORKER_INVENTORY")
            .env_remove("GATEWAY_REDIS_PREFIX")
            .env_remove("SECKILL_REDIS_PREFIX")
            .env_remove("ORDER_WORKER_METRICS")
            .env_remove("ORDER_WORKER_PAUSE_AFTER_COMMIT")
            .env_remove(queue::auth::SECRET_FILE_ENV)
            // The test broker's secret (a `tcp://` queue target reads it; others ignore it).
            .env(queue::auth::SECRET_ENV, BROKER_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(v) = pause {
            cmd.env("ORDER_WORKER_PAUSE_AFTER_COMMIT", v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({WORKER_BIN}): {e}"));
        let stdout = child.stdout.take().expect("child stdout");
        let stderr_pipe = child.stderr.take().expect("child stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut short by a kill has no newline: it was never a whole line.
                let Some(line) = buf.strip_suffix(b"\n") else {
                    break;
                };
                if tx.send(String::from_utf8_lossy(line).into_owned()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf));
                }
                buf.clear();
            }
        });
        Proc {
            what: what.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
            reaped: false,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for a line equal to `want` on stdout; panics if stdout closes or the deadline
    /// passes first.
    async fn wait_for_line(&mut self, want: &str, deadline: Instant) {
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let found = line == want;
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Ok(None) => {
                    // It exited: say how, with all it wrote to stderr.
                    let status = self.wait_exit(deadline).await;
                    if let Some(t) = self.stderr_thread.take() {
                        let _ = t.join();
                    }
                    panic!(
                        "{}: exited ({status}) before {want:?}; stdout {:?}; stderr {:?}",
                        self.what,
                        self.seen,
                        self.stderr()
                    )
                }
                Err(_) => panic!(
                    "{}: no {want:?} before the deadline; stdout {:?}; stderr {:?}",
                    self.what,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the process to exit and reaps it.
    async fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("{}: wait failed: {e}", self.what),
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit before the deadline; stderr: {:?}",
                self.what,
                self.stderr()
            );
            // The exit itself is the condition: std offers no way to await it, so poll it.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILL (no handler, destructor or flush runs in the child), then reap it.
    async fn sigkill(&mut self, deadline: Instant) {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("{}: SIGKILL failed: {e}", self.what));
        let status = self.wait_exit(deadline).await;
        assert_eq!(
            status.signal(),
            Some(9),
            "{} exited by itself ({status}) before the SIGKILL; stderr: {:?}",
            self.what,
            self.stderr()
        );
    }

    /// Sends SIGTERM (with kill(1): the workspace forbids the unsafe code a libc call needs).
    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Decided tickets, ordered or rejected.
async fn decided(db: &OrdersDb) -> u64 {
    let (ordered, rejected) = db.outcome_counts(1).await.expect("outcome counts");
    ordered + rejected
}

/// An engine on the worker's queue directory, opened while no worker runs.
fn open_queue(dir: &Path) -> Engine {
    let config = queue::Config {
        maintenance_interval_ms: None,
        ..queue::Config::default()
    };
    Engine::open(dir, config).expect("open the queue directory")
}

async fn crash_between_commit_and_ack(db: OrdersDb, database: &str, queue_dir: &Path) {
    let purchases: Vec<PurchaseMessage> = (0..PURCHASES)
        .map(|i| purchase(&format!("ticket-{i:03}"), 1, &format!("user-{i:03}")))
        .collect();
    sale(&db, 1, UNITS, order_worker::db::PAY_WINDOW_MS_DEFAULT).await;
    {
        let engine = open_queue(queue_dir);
        publish(&engine, &purchases).await;
        engine.close().expect("close the queue");
    }

    let iterations = iterations();
    for k in 1..=iterations {
        let batch = BATCH * k;
        let mut p = Proc::spawn(
            &format!("order-worker (kill {k})"),
            queue_dir,
            database,
            batch,
            Some(PAUSE_ON),
        );
        p.wait_for_line(PAUSED, Instant::now() + WAIT).await;
        // The batch is committed (the fail point comes after the commit), and only once:
        // the purchases of earlier killed runs came back and changed nothing.
        let committed = batch.min(PURCHASES) as u64;
        assert_eq!(decided(&db).await, committed, "kill {k}: decided so far");
        let c = db.order_counts(1).await.expect("counts");
        assert_eq!(c.pending, committed.min(UNITS), "kill {k}: orders so far");
        p.sigkill(Instant::now() + WAIT).await;
    }

    // Restarted without the fail point: it drains the queue.
    let mut p = Proc::spawn("order-worker", queue_dir, database, BATCH, None);
    wait_until("every purchase decided", WAIT, || {
        let db = db.clone();
        async move { decided(&db).await == PURCHASES as u64 }
    })
    .await;
    p.sigterm();
    let status = p.wait_exit(Instant::now() + WAIT).await;
    assert!(
        status.success(),
        "SIGTERM: the worker stops cleanly ({status}); stderr {:?}",
        p.stderr()
    );
    p.wait_for_line(STOPPED, Instant::now() + WAIT).await;

    // The database: the first 200 purchases ordered, once each, the rest sold out.
    let mut ticket_of_order: HashMap<String, String> = HashMap::new();
    let mut sold_out = 0u64;
    for (i, pm) in purchases.iter().enumerate() {
        let o = db
            .outcome(&pm.ticket)
            .await
            .expect("outcome")
            .unwrap_or_else(|| panic!("{} has no outcome", pm.ticket));
        assert_eq!(o.user, pm.user);
        match (o.order_id, o.reason) {
            (Some(id), None) => {
                assert!((i as u64) < UNITS, "{} ordered past the units", pm.ticket);
                let order = db.order(&id).await.expect("order").expect("exists");
                assert_eq!(order.ticket, pm.ticket);
                assert!(
                    ticket_of_order.insert(id, pm.ticket.clone()).is_none(),
                    "one ticket per order"
                );
            }
            (None, Some(r)) => {
                assert!(
                    (i as u64) >= UNITS,
                    "{} rejected ({r}) with units left",
                    pm.ticket
                );
                assert_eq!(r, reason::SOLD_OUT);
                sold_out += 1;
            }
            other => panic!("{}: inconsistent outcome {other:?}", pm.ticket),
        }
    }
    assert_eq!(ticket_of_order.len() as u64, UNITS);
    assert_eq!(sold_out, PURCHASES as u64 - UNITS);
    let distinct_tickets: HashSet<&String> = ticket_of_order.values().collect();
    assert_eq!(distinct_tickets.len() as u64, UNITS, "no ticket twice");
    let c = db.order_counts(1).await.expect("counts");
    assert_eq!((c.pending, c.paid, c.cancelled), (UNITS, 0, 0));
    assert_eq!(
        db.outcome_counts(1).await.expect("outcomes"),
        (UNITS, PURCHASES as u64 - UNITS)
    );
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);
    crate::assert_conserved(&db, 1, None).await;

    // The queue: every purchase finished, nothing dead-lettered, one pay-by message per
    // order (published after the restart, each exactly once).
    let engine = open_queue(queue_dir);
    assert_eq!(orders_lag(&engine).await, 0, "every purchase acked");
    let dead = engine
        .dead_letters(ORDERS_TOPIC, 0, 10)
        .await
        .expect("dead letters");
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    let stored = stored_deadlines(&engine, PURCHASES * 2).await;
    assert_eq!(
        stored.len() as u64,
        UNITS,
        "exactly one stored pay-by message per order in {DEADLINES_TOPIC}"
    );
    let stored_orders: HashSet<&String> = stored.iter().map(|(_, d)| &d.order_id).collect();
    assert_eq!(
        stored_orders,
        ticket_of_order.keys().collect::<HashSet<_>>()
    );
    for (id, d) in &stored {
        assert_eq!(*id, deadline_id(&d.order_id));
    }
    engine.close().expect("close the queue");
}

mod killed_between_commit_and_ack_then_restarted {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("orders.db").display());
        let db = OrdersDb::connect(&url, &DbOptions::default())
            .await
            .expect("open the database");
        crash_between_commit_and_ack(db.clone(), &url, &dir.path().join("queue")).await;
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some((db, scratch)) = order_worker::testing::postgres(&DbOptions::default()).await
        else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        crash_between_commit_and_ack(db.clone(), &scratch.url, &dir.path().join("queue")).await;
        db.close().await;
    }
}

/// `ORDER_WORKER_PAUSE_AFTER_COMMIT=1` turns the fail point on, as the crash-test
/// procedure says; the worker pauses after its first commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_point_accepts_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let db = OrdersDb::connect(&url, &DbOptions::default())
        .await
        .expect("open the database");
    sale(&db, 1, 1, order_worker::db::PAY_WINDOW_MS_DEFAULT).await;
    let queue_dir = dir.path().join("queue");
    {
        let engine = open_queue(&queue_dir);
        publish(&engine, &[purchase("ticket-1", 1, "user-1")]).await;
        engine.close().expect("close the queue");
    }
    let mut p = Proc::spawn(
        "order-worker (fail point 1)",
        &queue_dir,
        &url,
        BATCH,
        Some("1"),
    );
    p.wait_for_line(PAUSED, Instant::now() + WAIT).await;
    assert_eq!(decided(&db).await, 1, "paused after the commit");
    p.sigkill(Instant::now() + WAIT).await;
    db.close().await;
}

/// Three `order-worker` processes (two workers each) compete for 3,000 purchases from
/// 1,500 users (each user twice) on a 1,000-unit sale, through a broker (`queue::Server`
/// over TCP) and one PostgreSQL database; one process is killed with SIGKILL mid-drain, its
/// leased batches go to the others after the lease. After the drain: exactly 1,000 orders,
/// one per user at most, every ticket decided once, units left 0, one pay-by message per
/// order, nothing left for the group; the survivors stop cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_compete_through_the_broker_and_survive_a_kill() {
    const UNITS: u64 = 1_000;
    const USERS: usize = 1_500;
    let Some((db, scratch)) = order_worker::testing::postgres(&DbOptions::default()).await else {
        return;
    };
    sale(&db, 1, UNITS, order_worker::db::PAY_WINDOW_MS_DEFAULT).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("engine"));
    // Each user twice, the repeat 700 places later (a second click after a while).
    let purchases: Vec<PurchaseMessage> = (0..2 * USERS)
        .map(|i| {
            let user = if i < USERS {
                i
            } else {
                (i - USERS + 700) % USERS
            };
            purchase(&format!("t-{i:04}"), 1, &format!("user-{user:04}"))
        })
        .collect();
    publish(engine.as_ref(), &purchases).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("tcp://{}", listener.local_addr().expect("addr"));
    // Secured as deployed: the worker processes prove the secret (QUEUE_SECRET).
    let secret = queue::Secret::new(BROKER_SECRET.as_bytes().to_vec()).expect("secret");
    let server = queue::Server::new(
        engine.clone(),
        queue::ServerConfig {
            secret: Some(secret),
            ..queue::ServerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    let args = [
        "--queue",
        &addr,
        "--database",
        &scratch.url,
        "--workers",
        "2",
        "--cancellers",
        "0",
        "--batch",
        "100",
        "--lease-ms",
        "2000",
    ];
    let mut procs: Vec<Proc> = (0..3)
        .map(|k| Proc::spawn_args(&format!("order-worker {k}"), &args, None))
        .collect();
    // Kill one once some purchases are decided (it may hold leased batches then).
    wait_until("a first share decided", WAIT, || async {
        decided(&db).await >= 300
    })
    .await;
    procs[0].sigkill(Instant::now() + WAIT).await;
    wait_until("every purchase decided", WAIT, || async {
        decided(&db).await == 2 * USERS as u64
    })
    .await;
    wait_until("the group drained", WAIT, || async {
        orders_lag(engine.as_ref()).await == 0
    })
    .await;
    for p in &mut procs[1..] {
        p.sigterm();
        let status = p.wait_exit(Instant::now() + WAIT).await;
        assert!(status.success(), "{}: {status}; {}", p.what, p.stderr());
    }
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!(counts.pending, UNITS, "every unit sold once");
    let holders = db.active_holders(1).await.expect("holders");
    let distinct: HashSet<&String> = holders.iter().collect();
    assert_eq!(distinct.len(), holders.len(), "one active order per user");
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);
    let (ordered, rejected) = db.outcome_counts(1).await.expect("outcomes");
    assert_eq!((ordered, rejected), (UNITS, 2 * USERS as u64 - UNITS));
    let mut per_reason: HashMap<String, u64> = HashMap::new();
    for p in &purchases {
        let o = db
            .outcome(&p.ticket)
            .await
            .expect("outcome")
            .expect("decided");
        if let Some(r) = o.reason {
            *per_reason.entry(r).or_default() += 1;
        }
    }
    assert!(
        per_reason
            .keys()
            .all(|r| r == reason::SOLD_OUT || r == reason::ALREADY_BOUGHT),
        "{per_reason:?}"
    );
    let deadlines = stored_deadlines(engine.as_ref(), 5_000).await;
    let ids: HashSet<u128> = deadlines.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len() as u64, UNITS, "one pay-by message per order");
    let _ = stop.send(());
    broker.await.expect("broker task");
    engine.close().expect("close");
    db.close().await;
}

/// The `order-worker` binary on a database of two shards (`--database` twice): purchases of
/// a sale on each shard, decided each on its own shard; the worker's heartbeats on the
/// control shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_drains_into_two_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s0 = format!("sqlite:{}", dir.path().join("s0.db").display());
    let s1 = format!("sqlite:{}", dir.path().join("s1.db").display());
    let db = OrdersDb::connect(&format!("{s0} {s1}"), &DbOptions::default())
        .await
        .expect("two shards");
    sale(&db, 1, 3, order_worker::db::PAY_WINDOW_MS_DEFAULT).await;
    sale(&db, 2, 3, order_worker::db::PAY_WINDOW_MS_DEFAULT).await;
    assert_eq!(db.shard_of(2).await.expect("route"), 1);
    let queue_dir = dir.path().join("queue");
    {
        let engine = open_queue(&queue_dir);
        let purchases: Vec<PurchaseMessage> = (0..8)
            .map(|i| purchase(&format!("t-{i}"), 1 + i % 2, &format!("user-{i}")))
            .collect();
        publish(&engine, &purchases).await;
        engine.close().expect("close the queue");
    }
    let queue_arg = queue_dir.to_str().expect("UTF-8 path");
    let mut p = Proc::spawn_args(
        "order-worker (two shards)",
        &[
            "--queue",
            queue_arg,
            "--database",
            &s0,
            "--database",
            &s1,
            "--workers",
            "1",
            "--cancellers",
            "0",
        ],
        None,
    );
    wait_until("every purchase decided on its shard", WAIT, || async {
        let (a, b) = (
            db.outcome_counts(1).await.expect("counts 1"),
            db.outcome_counts(2).await.expect("counts 2"),
        );
        a.0 + a.1 + b.0 + b.1 == 8
    })
    .await;
    for (sale_id, shard) in [(1, 0), (2, 1)] {
        let on = db.shard(shard).expect("shard");
        assert_eq!(
            on.outcome_counts(sale_id).await.expect("counts"),
            (3, 1),
            "sale {sale_id}: 3 units, 4 buyers, all on shard {shard}"
        );
        assert_eq!(
            on.sale(sale_id)
                .await
                .expect("sale")
                .expect("sale")
                .units_left,
            0
        );
    }
    assert_eq!(
        db.shard(0)
            .expect("shard 0")
            .outcome_counts(2)
            .await
            .expect("counts"),
        (0, 0)
    );
    wait_until(
        "the worker's heartbeat on the control shard",
        WAIT,
        || async { !db.workers(10).await.expect("workers").is_empty() },
    )
    .await;
    assert!(
        db.shard(1)
            .expect("shard 1")
            .workers(10)
            .await
            .expect("workers")
            .is_empty()
    );
    p.sigterm();
    p.wait_for_line(STOPPED, Instant::now() + WAIT).await;
    db.close().await;
}
