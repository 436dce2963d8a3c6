//! Crashes on the queue's Redis Streams backend (issue 15, "crashes and failover"), on a
//! scratch standalone Redis started by `redis-kit` (never the shared 6379), in real time with
//! bounded waits:
//!
//! - a consumer *process* holding hundreds of leased messages is SIGKILLed: every message
//!   comes back to a second consumer within two leases, each with attempt 2, and none comes
//!   back early;
//! - a poison message (a consumer that always nacks) is dead-lettered after exactly
//!   `max_attempts` deliveries; replayed, it is delivered once more, with attempt 1, and the
//!   order workers (on SQLite) make exactly one order of it.
//!
//! The killed consumer is this test binary run again with [`CHILD_ENV`] set: the libtest
//! "test" [`consumer_child_process`] then acts as the consumer (it does nothing in a normal
//! run), reports what it holds on one stdout line and waits to be killed.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use order_worker::PurchaseMessage;
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::{DbOptions, NewSale};
use order_worker::purchase::{ORDERS_TOPIC, WORKERS_GROUP};
use queue::streams::{RedisConfig, RedisQueue, RedisTarget};
use queue::{AckOutcome, Delivery, FetchOptions, Message, Queue, Receipt, StartAt};

/// Set in the child's environment: the Redis URL it consumes from. Its presence makes
/// [`consumer_child_process`] act.
const CHILD_ENV: &str = "REDIS_FAULTS_CONSUMER_URL";
/// The line the child prints once it holds every message: `HOLDING <min lease end ms>
/// <offsets, comma-separated>`.
const HOLDING: &str = "HOLDING";
/// Messages the killed consumer holds.
const CRASH_MESSAGES: usize = 400;
/// Their lease: short, so the test runs in seconds; long enough for the child to fetch
/// them all before the first lease ends (it checks that, see below).
const CRASH_LEASE_MS: u64 = 2_000;
/// Topic and group of the crash test.
const CRASH_TOPIC: &str = "crash";
const CRASH_GROUP: &str = "holders";
/// Longest the child may take to start, connect and fetch everything.
const CHILD_READY_WAIT: Duration = Duration::from_secs(30);
/// Longest the child waits to be killed before it exits by itself (the parent died).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// Deliveries of the poison message before it is dead-lettered.
const MAX_ATTEMPTS: u32 = 4;
/// Longest the order workers may take to decide the replayed purchase.
const DECIDE_WAIT: Duration = Duration::from_secs(30);

fn redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(RedisTarget::Standalone(url.to_string()));
    config.max_attempts = MAX_ATTEMPTS;
    config
}

async fn connect(url: &str) -> RedisQueue {
    RedisQueue::connect(redis_config(url))
        .await
        .unwrap_or_else(|e| panic!("the queue on {url}: {e}"))
}

fn now_ms() -> u64 {
    queue::Clock::now_ms(&queue::SystemClock)
}

/// Not a test on its own: the body of the consumer process [`a_killed_consumer_s_leases_all_come_back_with_attempt_2`]
/// starts and SIGKILLs. Without [`CHILD_ENV`] (a normal test run) it does nothing.
#[test]
fn consumer_child_process() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let q = connect(&url).await;
        let started = Instant::now();
        let mut held: Vec<Delivery> = Vec::with_capacity(CRASH_MESSAGES);
        while held.len() < CRASH_MESSAGES {
            assert!(
                started.elapsed() < CHILD_READY_WAIT,
                "the child fetched only {} messages",
                held.len()
            );
            let got = q
                .fetch(
                    CRASH_TOPIC,
                    CRASH_GROUP,
                    FetchOptions {
                        max_messages: CRASH_MESSAGES - held.len(),
                        lease_ms: Some(CRASH_LEASE_MS),
                        wait_ms: 1_000,
                    },
                )
                .await
                .expect("fetch");
            held.extend(got);
        }
        // Every message once, each a first delivery: no lease ran out while fetching (the
        // parent's "attempt 2" would otherwise be an "attempt 3").
        let offsets: BTreeSet<u64> = held.iter().map(|d| d.offset).collect();
        assert_eq!(offsets.len(), CRASH_MESSAGES, "an offset fetched twice");
        assert!(
            held.iter().all(|d| d.attempt == 1),
            "a redelivery in the child"
        );
        let lease_end = held.iter().map(|d| d.lease_until_ms).min().unwrap_or(0);
        let list: Vec<String> = offsets.iter().map(u64::to_string).collect();
        println!("{HOLDING} {lease_end} {}", list.join(","));
        // Held until killed; a parent that died leaves no orphan for long.
        tokio::time::sleep(CHILD_LIFETIME).await;
    });
}

/// A started child and the lines of its standard output.
struct ChildConsumer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildConsumer {
    fn spawn(url: &str) -> ChildConsumer {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "consumer_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the consumer process");
        let stdout = child.stdout.take().expect("the child's stdout");
        let (tx, lines) = mpsc::channel();
        // A thread reads the pipe (so the child never blocks on it) and hands lines over.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildConsumer { child, lines }
    }

    /// Waits (at most `within`) for the `HOLDING` line: the earliest lease end and the
    /// offsets held.
    fn holding(&mut self, within: Duration) -> (u64, BTreeSet<u64>) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let status = self.child.try_wait();
                    panic!("no {HOLDING} line from the consumer process ({e}); status {status:?}")
                }
            };
            // libtest's own lines come too, and its "test NAME ... " has no newline
            // before the test's output.
            let Some(at) = line.find(HOLDING) else {
                continue;
            };
            let rest = &line[at + HOLDING.len()..];
            let mut parts = rest.split_whitespace();
            let lease_end = parts
                .next()
                .and_then(|v| v.parse().ok())
                .expect("a lease end");
            let offsets = parts
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("an offset"))
                .collect();
            return (lease_end, offsets);
        }
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL to the consumer process");
        self.child.wait().expect("reaping the consumer process");
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        // A test that failed half-way leaves no consumer behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_s_leases_all_come_back_with_attempt_2() {
    let Some(redis) = support::start_redis("a scratch Redis", || {
        redis_kit::RedisServer::start(redis_kit::RedisOptions::new())
    })
    .await
    else {
        return;
    };
    let url = redis.url();
    let producer = connect(&url).await;
    producer
        .create_group(CRASH_TOPIC, CRASH_GROUP, StartAt::Earliest)
        .await
        .expect("create the group");
    let messages = (0..CRASH_MESSAGES)
        .map(|i| Message::new(format!("job {i}").into_bytes()).with_id(1_000 + i as u128))
        .collect();
    let confirms = producer
        .publish_batch(CRASH_TOPIC, messages)
        .await
        .expect("publish");
    let published: BTreeSet<u64> = confirms.iter().map(|c| c.offset).collect();
    assert_eq!(published.len(), CRASH_MESSAGES);

    let mut child = ChildConsumer::spawn(&url);
    let (lease_end_ms, held) = child.holding(CHILD_READY_WAIT);
    assert_eq!(held, published, "the consumer process holds every message");

    // While the holder lives and its leases run, nobody else gets them (checked only if
    // the leases are not about to end: the check must not race their expiry).
    let second = connect(&url).await;
    let fetch_now = FetchOptions {
        max_messages: CRASH_MESSAGES,
        lease_ms: Some(CRASH_LEASE_MS),
        wait_ms: 0,
    };
    let checked_at = now_ms();
    if checked_at + 200 < lease_end_ms {
        let early = second
            .fetch(CRASH_TOPIC, CRASH_GROUP, fetch_now)
            .await
            .expect("fetch");
        assert!(
            early.is_empty(),
            "{} messages handed out before their lease ended",
            early.len()
        );
    } else {
        eprintln!(
            "note: leases end {} ms after the holder reported; early-delivery check skipped",
            lease_end_ms.saturating_sub(checked_at)
        );
    }

    child.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_millis(2 * CRASH_LEASE_MS);
    let mut back: Vec<Delivery> = Vec::with_capacity(CRASH_MESSAGES);
    let mut first_back_ms = None;
    while back.len() < CRASH_MESSAGES {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {CRASH_MESSAGES} messages came back within two leases ({} ms) of the kill",
            back.len(),
            2 * CRASH_LEASE_MS
        );
        let got = second
            .fetch(
                CRASH_TOPIC,
                CRASH_GROUP,
                FetchOptions {
                    max_messages: CRASH_MESSAGES,
                    lease_ms: Some(30_000),
                    wait_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                },
            )
            .await
            .expect("fetch");
        if !got.is_empty() && first_back_ms.is_none() {
            first_back_ms = Some(now_ms());
        }
        back.extend(got);
    }
    // None came back before the dead holder's leases ended (the server's clock, the same
    // host's as ours).
    let first_back_ms = first_back_ms.expect("something came back");
    assert!(
        first_back_ms >= lease_end_ms,
        "a message came back {} ms before its lease ended",
        lease_end_ms - first_back_ms
    );
    let came_back_ms = killed.elapsed().as_millis();
    let offsets: BTreeSet<u64> = back.iter().map(|d| d.offset).collect();
    assert_eq!(back.len(), CRASH_MESSAGES, "a message came back twice");
    assert_eq!(offsets, published, "every held message came back");
    let attempts: BTreeSet<u32> = back.iter().map(|d| d.attempt).collect();
    assert_eq!(
        attempts,
        BTreeSet::from([2]),
        "each came back as its second attempt"
    );
    eprintln!("all {CRASH_MESSAGES} leases came back {came_back_ms} ms after the kill");

    let receipts: Vec<Receipt> = back.iter().map(Delivery::receipt).collect();
    let acked = second
        .ack(CRASH_TOPIC, CRASH_GROUP, &receipts)
        .await
        .expect("ack");
    assert!(acked.iter().all(|a| *a == AckOutcome::Acked), "{acked:?}");
    let stats = second.stats(CRASH_TOPIC).await.expect("stats");
    let group = stats
        .groups
        .iter()
        .find(|g| g.name == CRASH_GROUP)
        .expect("the group");
    assert_eq!((group.lag, group.in_flight), (0, 0), "{group:?}");
    assert_eq!(group.redeliveries, CRASH_MESSAGES as u64, "{group:?}");
    for q in [&producer, &second] {
        q.close().expect("close");
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_dead_letters_after_its_attempts_and_its_replay_makes_one_order() {
    let Some(redis) = support::start_redis("a scratch Redis", || {
        redis_kit::RedisServer::start(redis_kit::RedisOptions::new())
    })
    .await
    else {
        return;
    };
    let q: Arc<RedisQueue> = Arc::new(connect(&redis.url()).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = order_worker::testing::sqlite(dir.path(), &DbOptions::default()).await;
    let now = now_ms();
    let sale = db
        .create_sale(
            &NewSale {
                id: 1,
                name: "poison".into(),
                price_cents: 100,
                units: 10,
                starts_at_ms: now,
                pay_window_ms: None,
                ends_at_ms: None,
                token_factor: None,
                per_user_limit: None,
                stock_buckets: None,
            },
            now,
        )
        .await
        .expect("a sale");
    q.create_group(ORDERS_TOPIC, WORKERS_GROUP, StartAt::Earliest)
        .await
        .expect("the workers' group");
    let ticket = uuid::Uuid::now_v7();
    let purchase = PurchaseMessage {
        ticket: ticket.to_string(),
        sale: sale.id,
        user: "poisoned".into(),
        price_cents: 100,
        accepted_at_ms: now,
    };
    let payload = serde_json::to_vec(&purchase).expect("json");
    let confirm = q
        .publish(
            ORDERS_TOPIC,
            Message::new(payload).with_id(ticket.as_u128()),
        )
        .await
        .expect("publish");

    // A consumer of the workers' group that always fails: it nacks every delivery at once.
    let fetch = FetchOptions {
        max_messages: 10,
        lease_ms: Some(10_000),
        wait_ms: 2_000,
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let got = q
            .fetch(ORDERS_TOPIC, WORKERS_GROUP, fetch)
            .await
            .expect("fetch");
        assert_eq!(got.len(), 1, "delivery {attempt}: {got:?}");
        assert_eq!(
            (got[0].offset, got[0].attempt),
            (confirm.offset, attempt),
            "delivery {attempt}"
        );
        q.nack(ORDERS_TOPIC, WORKERS_GROUP, got[0].receipt(), 0, "poison")
            .await
            .expect("nack");
    }
    // Its attempts are used up: dead-lettered, never delivered again.
    let none = q
        .fetch(
            ORDERS_TOPIC,
            WORKERS_GROUP,
            FetchOptions {
                wait_ms: 500,
                ..fetch
            },
        )
        .await
        .expect("fetch");
    assert!(
        none.is_empty(),
        "delivered after its last attempt: {none:?}"
    );
    let dead = q
        .dead_letters(ORDERS_TOPIC, 0, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter.original_offset, confirm.offset);
    assert_eq!(
        letter.attempts, MAX_ATTEMPTS,
        "dead after exactly its attempts"
    );
    assert_eq!(letter.group, WORKERS_GROUP);
    assert!(letter.reason.contains("poison"), "{letter:?}");
    assert_eq!(letter.id, Some(ticket.as_u128()));
    let before = q.stats(ORDERS_TOPIC).await.expect("stats");
    assert_eq!(before.dead_letters_pending, 1, "{before:?}");
    let group_before = before
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .cloned()
        .expect("the workers' group");
    assert_eq!(group_before.dead_lettered, 1, "{group_before:?}");
    assert_eq!(
        group_before.redeliveries,
        u64::from(MAX_ATTEMPTS - 1),
        "{group_before:?}"
    );

    // The operator replays it; the order workers (on SQLite) make exactly one order.
    let replayed = q
        .replay_dead_letter(ORDERS_TOPIC, letter.dead_offset)
        .await
        .expect("replay");
    assert_ne!(replayed, confirm.offset, "a replay is a new message");
    let mut crew_config = CrewConfig {
        workers: 2,
        cancellers: 0,
        ..CrewConfig::default()
    };
    crew_config.worker.wait_ms = 200;
    let crew = Crew::start(
        db.clone(),
        q.clone(),
        None,
        crew_config,
        Arc::new(queue::SystemClock),
    );
    let deadline = Instant::now() + DECIDE_WAIT;
    let (outcome, stats) = loop {
        let outcome = db.outcome(&purchase.ticket).await.expect("outcome");
        let stats = q.stats(ORDERS_TOPIC).await.expect("stats");
        let group = stats.groups.iter().find(|g| g.name == WORKERS_GROUP);
        // Decided and acked: nothing left for the group.
        if outcome.is_some() && group.is_some_and(|g| g.lag == 0 && g.in_flight == 0) {
            break (outcome, stats);
        }
        assert!(
            Instant::now() < deadline,
            "the replayed purchase was not decided and acked within {DECIDE_WAIT:?}: {outcome:?} {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    crew.stop().await;
    let outcome = outcome.expect("decided");
    assert!(outcome.order_id.is_some(), "ordered: {outcome:?}");
    let counts = db.order_counts(sale.id).await.expect("counts");
    assert_eq!(counts.active(), 1, "exactly one order: {counts:?}");
    assert_eq!(
        db.outcome_counts(sale.id).await.expect("outcomes"),
        (1, 0),
        "one outcome, ordered"
    );
    // Delivered once to the group after the replay, as a first attempt: no redelivery was
    // added, the dead letter is resolved.
    assert_eq!(stats.dead_letters_pending, 0, "{stats:?}");
    let group = stats
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .expect("the workers' group");
    assert_eq!(
        group.redeliveries, group_before.redeliveries,
        "the replay was delivered exactly once: {group:?}"
    );
    assert_eq!(group.dead_lettered, 1, "{group:?}");
    q.close().expect("close");
    db.close().await;
    drop(redis);
}
