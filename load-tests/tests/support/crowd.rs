//! A crowd of buyers for the tests that kill parts of a running deployment (the chaos test
//! over processes, the cluster test through nginx): buyers that sign in, take a token
//! (load-test mode), buy, sometimes pay and sometimes buy again, and tell answers apart (a
//! 202 is acknowledged, a `503 outcome_unknown` or a purchase whose answer never came is
//! unknown); the auditor mid-sale and at rest; the check that every order has a cause.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inventory::RedisStore;
use load_tests::audit::{AuditInput, AuditReport, audit, audit_redis, check};
use loadgen::{Conn, request};
use order_worker::OrdersDb;
use order_worker::db::Shard;
use order_worker::purchase::{ORDERS_TOPIC, WORKERS_GROUP};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::flood::{Answer, buy_once};

/// Share of acknowledged purchases whose person pays.
pub const PAY_SHARE: f64 = 0.5;
/// Share of purchases made by a person who already got a 202 (one per person).
pub const REPEAT_SHARE: f64 = 0.05;
/// Most people remembered for repeat purchases.
pub const REPEATERS_MAX: usize = 10_000;
/// Pause after a refusal before the next person (pacing, not synchronisation: a sold-out
/// sale is refused in microseconds, and the crowd must not burn the two cores).
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(20);
/// Longest one HTTP exchange (connect, a purchase's three requests) may take before the
/// buyer counts it as cut off.
pub const REQUEST_WAIT: Duration = Duration::from_secs(20);
/// How often a payer asks whether its ticket became an order.
pub const TICKET_POLL: Duration = Duration::from_millis(100);

/// How often the auditor looks mid-sale.
pub const AUDIT_EVERY: Duration = Duration::from_secs(2);

/// What the crowd saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Answers by kind and code.
    pub answers: BTreeMap<String, u64>,
    /// The first message of each kind of refusal (why purchases fail).
    pub messages: BTreeMap<String, String>,
    /// Tickets of 202s, with their person.
    pub accepted: Vec<(String, String)>,
    /// Tickets of `503 outcome_unknown`s, with their person.
    pub unknown: Vec<(String, String)>,
    /// People whose purchase was sent and never answered.
    pub cut_off: HashSet<String>,
    /// People with a 202, for repeat purchases (at most [`REPEATERS_MAX`]).
    pub repeaters: Vec<String>,
    /// Repeat purchases tried, and those answered 202.
    pub repeats: u64,
    pub repeats_accepted: u64,
    /// Orders paid, and payments refused (by code).
    pub paid: u64,
    pub pay_refused: BTreeMap<String, u64>,
}

/// The crowd's shared state.
#[derive(Debug, Default)]
pub struct Crowd {
    /// Set to stop every buyer after its current person.
    pub stop: AtomicBool,
    /// The next new person's number.
    pub next_person: AtomicU64,
    /// Purchases answered 202.
    pub accepted: AtomicU64,
    /// What the crowd saw.
    pub seen: Mutex<Seen>,
    /// The sale's pay window: how long a payer waits for its order.
    pub pay_window: Duration,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Crowd {
    pub fn count(&self, what: String) {
        *lock(&self.seen).answers.entry(what).or_default() += 1;
    }
}

/// One buying connection: person after person, each at a gateway picked by the buyer's
/// own seeded RNG, until told to stop.
pub async fn buyer(crowd: Arc<Crowd>, addrs: Vec<SocketAddr>, secret: String, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !crowd.stop.load(Ordering::Relaxed) {
        let repeat = if rng.random_bool(REPEAT_SHARE) {
            let seen = lock(&crowd.seen);
            (!seen.repeaters.is_empty())
                .then(|| seen.repeaters[rng.random_range(0..seen.repeaters.len())].clone())
        } else {
            None
        };
        let is_repeat = repeat.is_some();
        let user = repeat.unwrap_or_else(|| {
            format!(
                "person-{}",
                crowd.next_person.fetch_add(1, Ordering::Relaxed)
            )
        });
        let addr = addrs[rng.random_range(0..addrs.len())];
        let pays = rng.random_bool(PAY_SHARE);
        let mut conn = match tokio::time::timeout(REQUEST_WAIT, Conn::connect(addr)).await {
            Ok(Ok(c)) => c,
            _ => {
                crowd.count("broken: connect".into());
                // Pacing: the gateway is down; try the next person shortly.
                tokio::time::sleep(REFUSAL_PAUSE).await;
                continue;
            }
        };
        let bought = tokio::time::timeout(REQUEST_WAIT, buy_once(&mut conn, &user, &secret)).await;
        let bought = match bought {
            // No answer to the purchase (or the exchange hung): whether it was stored is
            // unknown; only the person is known.
            Ok(Err("purchase")) | Err(_) => {
                crowd.count("cut off: purchase".into());
                lock(&crowd.seen).cut_off.insert(user);
                continue;
            }
            Ok(Err(step)) => {
                crowd.count(format!("broken: {step}"));
                continue;
            }
            Ok(Ok(b)) => b,
        };
        let key = format!("{:?} {}", bought.answer, bought.code);
        if bought.answer == Answer::Refused {
            lock(&crowd.seen)
                .messages
                .entry(key.clone())
                .or_insert_with(|| bought.message.chars().take(300).collect());
        }
        crowd.count(key);
        match (bought.answer, bought.ticket) {
            (Answer::Accepted, Some(ticket)) => {
                crowd.accepted.fetch_add(1, Ordering::Relaxed);
                {
                    let mut seen = lock(&crowd.seen);
                    seen.accepted.push((ticket.clone(), user.clone()));
                    if is_repeat {
                        seen.repeats += 1;
                        seen.repeats_accepted += 1;
                    } else if seen.repeaters.len() < REPEATERS_MAX {
                        seen.repeaters.push(user.clone());
                    }
                }
                if pays && let Some(cookie) = bought.cookie {
                    pay(
                        &crowd,
                        &mut conn,
                        &cookie,
                        &ticket,
                        bought.receipt.as_deref(),
                    )
                    .await;
                }
            }
            (Answer::Unknown, Some(ticket)) => {
                let mut seen = lock(&crowd.seen);
                seen.unknown.push((ticket, user));
                if is_repeat {
                    seen.repeats += 1;
                }
            }
            _ => {
                if is_repeat {
                    lock(&crowd.seen).repeats += 1;
                }
                tokio::time::sleep(REFUSAL_PAUSE).await;
            }
        }
    }
}

/// Waits (within the pay window) for `ticket` to become an order and pays it; notes how
/// that went. A cut connection ends the attempt (the gateway was killed).
async fn pay(crowd: &Crowd, conn: &mut Conn, cookie: &str, ticket: &str, receipt: Option<&str>) {
    // With the receipt (and the cookies, so nginx keeps the person on one gateway), any
    // gateway answers while the ticket waits.
    let path = match receipt {
        Some(r) => format!("/api/tickets/{ticket}?receipt={r}"),
        None => format!("/api/tickets/{ticket}"),
    };
    let deadline = Instant::now() + crowd.pay_window;
    let order = loop {
        let asked = tokio::time::timeout(
            REQUEST_WAIT,
            conn.send(request("GET", &path, &[("cookie", cookie)], None)),
        )
        .await;
        let Ok(Ok(answer)) = asked else {
            crowd.count("pay: ticket poll cut off".into());
            return;
        };
        let body = answer.json();
        match body.get("state").and_then(Value::as_str) {
            Some("ordered") => {
                break body
                    .get("order_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
            }
            Some("rejected") => return,
            _ => {}
        }
        if Instant::now() >= deadline {
            crowd.count("pay: not decided within the pay window".into());
            return;
        }
        tokio::time::sleep(TICKET_POLL).await;
    };
    let paid = tokio::time::timeout(
        REQUEST_WAIT,
        conn.send(request(
            "POST",
            &format!("/api/orders/{order}/pay"),
            &[("cookie", cookie)],
            None,
        )),
    )
    .await;
    let mut seen = lock(&crowd.seen);
    match paid {
        Ok(Ok(a)) if a.status.as_u16() == 200 => seen.paid += 1,
        Ok(Ok(a)) => {
            let code = a
                .json()
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            *seen
                .pay_refused
                .entry(format!("{} {code}", a.status.as_u16()))
                .or_default() += 1;
        }
        _ => *seen.pay_refused.entry("cut off".into()).or_default() += 1,
    }
}

/// The checks that hold at every instant, not only at rest.
pub const ALWAYS: [&str; 4] = [
    check::NO_OVERSELL,
    check::ONE_PER_PERSON,
    check::CONSERVATION_DB,
    check::NO_NEGATIVE_STOCK,
];

/// Audits every [`AUDIT_EVERY`] until stopped: the failures of [`ALWAYS`] checks seen, and
/// how many audits ran and how many could not read (PostgreSQL down).
pub async fn audit_mid_sale(
    db: OrdersDb,
    sale: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, u64, u64) {
    let (mut failures, mut ran, mut unreadable) = (Vec::new(), 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let input = AuditInput {
            db: db.clone(),
            store: None,
            sales: Some(vec![sale]),
            tickets: Vec::new(),
            at_rest: false,
            now_ms: queue::Clock::now_ms(&queue::SystemClock),
        };
        match audit(&input).await {
            Ok(report) => {
                ran += 1;
                for name in ALWAYS {
                    if let Some(c) = report.check(name).filter(|c| !c.passed) {
                        failures.push(format!("{}: {}", c.name, c.detail));
                    }
                }
            }
            Err(_) => unreadable += 1,
        }
        // The audit's period, not a synchronisation.
        tokio::time::sleep(AUDIT_EVERY).await;
    }
    (failures, ran, unreadable)
}

/// Waits until the workers' group has finished the orders topic (nothing lagging, nothing
/// in flight), at most `within`; panics with what it saw last and `context()` (logs)
/// otherwise.
pub async fn drain(queue_url: &str, within: Duration, context: impl Fn() -> String) {
    let backend = queue::Backend::open(queue_url, queue::Config::default())
        .await
        .expect("a queue client");
    let q = backend.queue();
    let deadline = Instant::now() + within;
    loop {
        let stats = q.stats(ORDERS_TOPIC).await;
        let drained = stats.as_ref().is_ok_and(|s| {
            s.groups
                .iter()
                .any(|g| g.name == WORKERS_GROUP && g.lag == 0 && g.in_flight == 0)
        });
        if drained {
            // Decided purchases dead-lettered (e.g. pay-by messages never confirmed after a
            // queue master's loss) once stopped the reconciliation at rest: name them, so a
            // failing audit after the drain says whether they were there.
            let dead = stats.as_ref().map_or(0, |s| s.dead_letters_pending);
            eprintln!("drain: the orders topic drained; {dead} dead letters pending");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the orders topic did not drain within {within:?}; last seen {stats:?}\n{}",
            context()
        );
        // The poll's period, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    backend.close().expect("close the queue client");
}

/// The full audit at rest of `sale` (the stock read raw from Redis, every 202's ticket
/// decided) until it passes with no order left pending, at most `within`; panics with the
/// report and `context()` (a seed, logs) otherwise.
pub async fn audit_at_rest(
    db: &OrdersDb,
    store: &RedisStore,
    sale: u64,
    seen: &Seen,
    within: Duration,
    context: impl Fn() -> String,
) -> AuditReport {
    let tickets: Vec<String> = seen.accepted.iter().map(|(t, _)| t.clone()).collect();
    let deadline = Instant::now() + within;
    loop {
        let input = AuditInput {
            db: db.clone(),
            store: None,
            sales: Some(vec![sale]),
            tickets: tickets.clone(),
            at_rest: true,
            now_ms: queue::Clock::now_ms(&queue::SystemClock),
        };
        // A read that fails (a shard's primary failing over) is tried again until the
        // deadline.
        let report = match audit_redis(&input, store).await {
            Ok(report) => report,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the audit at rest could not read within {within:?}: {e}\n{}",
                    context()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Every pay window over: each order paid or cancelled, none left pending.
        let pending = report.sales.iter().map(|s| s.pending).sum::<i64>();
        if report.passed() && pending == 0 {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the audit at rest did not pass (or {pending} orders stayed pending) within \
             {within:?} ({} accepted):\n{}\n{report:#?}\n{}",
            tickets.len(),
            report.lines().join("\n"),
            context()
        );
        // The audit's period while the last pay windows end, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every order (on every shard) has a cause: a ticket handed out (202 or 503 outcome_unknown) to its
/// person, or a purchase of its person that was cut off. Returns how many orders came of
/// cut-off purchases.
pub async fn orders_have_causes(db: &OrdersDb, seen: &Seen, seed: u64) -> usize {
    let handed_out: HashMap<&str, &str> = seen
        .accepted
        .iter()
        .chain(seen.unknown.iter())
        .map(|(t, u)| (t.as_str(), u.as_str()))
        .collect();
    let sql = "SELECT request_id, user_id FROM orders";
    let mut orders: Vec<(String, String)> = Vec::new();
    for i in 0..db.shard_count() {
        let shard = db.shard(i).expect("a shard below the count");
        let mut of_shard: Vec<(String, String)> = match shard {
            Shard::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
            Shard::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .expect("the orders of a shard");
        orders.append(&mut of_shard);
    }
    let mut of_cut_off = 0;
    let mut strays = Vec::new();
    for (ticket, user) in &orders {
        match handed_out.get(ticket.as_str()) {
            Some(u) => assert_eq!(u, user, "seed {seed}: ticket {ticket} changed hands"),
            None if seen.cut_off.contains(user) => of_cut_off += 1,
            None => strays.push((ticket, user)),
        }
    }
    assert!(
        strays.is_empty(),
        "seed {seed}: {} orders nobody could have caused, e.g. {:?}",
        strays.len(),
        &strays[..strays.len().min(5)]
    );
    of_cut_off
}

/// Starts `n` buyers on `crowd` against `addrs` (each picks one per person), seeded from
/// `rng`.
pub fn start_buyers(
    crowd: &Arc<Crowd>,
    addrs: &[SocketAddr],
    secret: &str,
    n: usize,
    rng: &mut StdRng,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|_| {
            tokio::spawn(buyer(
                crowd.clone(),
                addrs.to_vec(),
                secret.to_string(),
                rng.random(),
            ))
        })
        .collect()
}

/// Waits until the crowd has `accepted` purchases answered 202, at most `within` (the
/// warm-up before the first kill).
pub async fn warm_up(crowd: &Arc<Crowd>, accepted: u64, within: Duration) {
    super::flood::wait_for(
        "purchases accepted before the first kill",
        within,
        async || {
            let n = crowd.accepted.load(Ordering::Relaxed);
            (n >= accepted, (n, lock(&crowd.seen).answers.clone()))
        },
    )
    .await;
}

/// Waits until every gateway of `addrs` lists `sale` (their catalogues follow the database
/// each second), at most `within`.
pub async fn every_gateway_lists(addrs: &[SocketAddr], sale: u64, within: Duration) {
    for addr in addrs.iter().copied() {
        super::flood::wait_for("every gateway lists the sale", within, async || {
            let listed = match Conn::connect(addr).await {
                Ok(mut c) => c
                    .send(request("GET", &format!("/api/sales/{sale}"), &[], None))
                    .await
                    .map(|a| a.status.as_u16())
                    .ok(),
                Err(_) => None,
            };
            (listed == Some(200), listed)
        })
        .await;
    }
}

/// Puts a sale on through `addr`'s admin API (`sale`: the JSON body) with the admin's
/// bearer secret; panics unless it is created (201).
pub async fn put_on_sale(addr: SocketAddr, admin_secret: &str, sale: &serde_json::Value) {
    let mut admin = Conn::connect(addr)
        .await
        .expect("connect for the admin API");
    let auth = format!("Bearer {admin_secret}");
    let created = admin
        .send(request(
            "POST",
            "/admin/api/sales",
            &[("authorization", &auth)],
            Some(sale),
        ))
        .await
        .expect("create the sale");
    assert_eq!(
        created.status.as_u16(),
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
}
