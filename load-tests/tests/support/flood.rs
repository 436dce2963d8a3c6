//! A flood of purchases by distinct buyers against a running system, for the tests that
//! break its Redis underneath it, and what they check afterwards at rest.
//!
//! Each of [`BUYERS`] connections signs in a new person, takes a token (load-test mode: no
//! captcha) and buys once, again and again until told to stop, and records every answer;
//! the tickets of 202s and of `503 outcome_unknown`s are kept apart, and the largest place in
//! line a 202 gave. [`settle_and_audit`]
//! then waits for the orders topic to drain, audits the 202s, checks that no order exists
//! without a ticket handed out, and waits for the gateway's reconciliation at rest to make
//! the stock store agree with the database.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load_tests::audit::{AuditInput, AuditReport, audit, check};
use load_tests::system::{AllInOne, SystemOptions};
use loadgen::{Conn, request};
use order_worker::OrdersDb;
use serde_json::{Value, json};

/// Connections buying at once.
pub const BUYERS: usize = 8;
/// Units on sale: more than a flood can buy, so it never sells out.
pub const UNITS: u64 = 100_000;
/// The sale the flood buys from.
pub const SALE: u64 = 7;
/// Longest wait for the workers to drain the orders topic.
pub const DRAIN_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for the gateway's reconciliation at rest to settle kept units: two checks
/// ten housekeeping rounds apart (`gateway::sync::RECONCILE_EVERY_ROUNDS`), plus slack.
pub const RECONCILE_WAIT: Duration = Duration::from_secs(25);
/// Lease of a worker's batch in these tests: a batch fetched before the fault and never
/// acked comes back this soon (the workers' default of two minutes would outlast a test).
pub const WORKER_LEASE_MS: u64 = 3_000;

/// How one purchase was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// 202 with a ticket.
    Accepted,
    /// 503 `outcome_unknown` with a ticket.
    Unknown,
    /// Any other answer to the purchase or to a step before it.
    Refused,
    /// The connection failed.
    Broken,
}

/// What the flood saw.
#[derive(Debug, Default)]
pub struct Flood {
    /// 202s so far.
    pub accepted: AtomicU64,
    /// Answers other than 202 so far.
    pub not_accepted: AtomicU64,
    next_user: AtomicU64,
    stop: AtomicBool,
    /// Ticket → answer, for the purchases that carried one.
    tickets: Mutex<Vec<(String, Answer)>>,
    /// Answers by (kind, code).
    answers: Mutex<BTreeMap<(Answer, String), u64>>,
    /// The message of the latest answer that was not a 202 (why purchases fail).
    last_refusal: Mutex<String>,
    /// The largest place in line a 202 gave.
    position_max: AtomicU64,
    /// 202s whose place in line was left out (`null`: the queue could not say in time).
    positions_missing: AtomicU64,
}

impl Flood {
    fn note(&self, answer: Answer, code: &str, ticket: Option<&str>) {
        if answer == Answer::Accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.not_accepted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = ticket {
            lock(&self.tickets).push((t.to_string(), answer));
        }
        *lock(&self.answers)
            .entry((answer, code.to_string()))
            .or_default() += 1;
    }

    /// The tickets answered with `answer`.
    pub fn tickets_of(&self, answer: Answer) -> Vec<String> {
        lock(&self.tickets)
            .iter()
            .filter(|(_, a)| *a == answer)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Every answer so far, by kind and code.
    pub fn answers(&self) -> BTreeMap<(Answer, String), u64> {
        lock(&self.answers).clone()
    }

    /// The message of the latest answer that was not a 202.
    pub fn last_refusal(&self) -> String {
        lock(&self.last_refusal).clone()
    }

    /// 202s so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn note_position(&self, position: Option<u64>) {
        match position {
            Some(p) => {
                self.position_max.fetch_max(p, Ordering::Relaxed);
            }
            None => {
                self.positions_missing.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The largest place in line a 202 gave (0 if none gave one).
    pub fn position_max(&self) -> u64 {
        self.position_max.load(Ordering::Relaxed)
    }

    /// 202s whose place in line was left out.
    pub fn positions_missing(&self) -> u64 {
        self.positions_missing.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running buyers.
#[derive(Debug)]
pub struct Buyers {
    /// What they saw.
    pub flood: Arc<Flood>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Buyers {
    /// Starts [`BUYERS`] connections buying from [`SALE`] on `system`.
    pub fn start(system: &AllInOne) -> Buyers {
        let flood = Arc::new(Flood::default());
        let tasks = (0..BUYERS)
            .map(|_| {
                tokio::spawn(buyer(
                    system.addr,
                    system.load_test_secret.clone(),
                    flood.clone(),
                ))
            })
            .collect();
        Buyers { flood, tasks }
    }

    /// Stops them after the purchases they are in.
    pub async fn stop(self) -> Arc<Flood> {
        self.flood.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a buyer");
        }
        self.flood
    }
}

/// One buyer connection.
async fn buyer(addr: SocketAddr, secret: String, flood: Arc<Flood>) {
    let mut conn: Option<Conn> = None;
    while !flood.stop.load(Ordering::Relaxed) {
        let user = format!("buyer-{}", flood.next_user.fetch_add(1, Ordering::Relaxed));
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    flood.note(Answer::Broken, "connect", None);
                    // Not a synchronisation: a pause before connecting again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match buy_once(c, &user, &secret).await {
            Ok(Bought {
                answer,
                code,
                ticket,
                message,
                position,
                ..
            }) => {
                if answer == Answer::Accepted {
                    flood.note_position(position);
                } else {
                    *lock(&flood.last_refusal) = message;
                }
                flood.note(answer, &code, ticket.as_deref());
            }
            Err(step) => {
                flood.note(Answer::Broken, step, None);
                conn = None;
            }
        }
    }
}

/// How one person's purchase was answered.
pub struct Bought {
    /// The kind of answer.
    pub answer: Answer,
    /// `202`, the error code, or the step that was refused.
    pub code: String,
    /// The ticket of a 202 or a `503 outcome_unknown`.
    pub ticket: Option<String>,
    /// The error message of a refusal.
    pub message: String,
    /// A 202's place in line.
    pub position: Option<u64>,
    /// A 202's receipt: any gateway answers for the waiting ticket with it.
    pub receipt: Option<String>,
    /// The cookies set at sign-in (`name=value; …`: the session, and behind nginx the
    /// route), once signed in: the person's orders need them.
    pub cookie: Option<String>,
}

impl Bought {
    fn refused(code: String, message: String) -> Bought {
        Bought {
            answer: Answer::Refused,
            code,
            ticket: None,
            message,
            position: None,
            receipt: None,
            cookie: None,
        }
    }
}

/// One person's purchase of [`SALE`]: sign in, token, buy; how it was answered, or
/// `Err(step)` when the connection broke (`"purchase"`: the purchase was sent and its
/// answer never came, so its outcome is unknown to the buyer).
pub async fn buy_once(c: &mut Conn, user: &str, secret: &str) -> Result<Bought, &'static str> {
    let login = c
        .send(request(
            "POST",
            "/api/login",
            &[],
            Some(&json!({ "user": user })),
        ))
        .await
        .map_err(|_| "login")?;
    // Every cookie set (the session, and the route cookie behind nginx), as one header.
    let cookies: Vec<&str> = login
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .collect();
    let Some(cookie) = (!cookies.is_empty()).then(|| cookies.join("; ")) else {
        return Ok(Bought::refused(
            format!("login {}", login.status),
            String::new(),
        ));
    };
    let token = c
        .send(request(
            "POST",
            &format!("/api/sales/{SALE}/token"),
            &[
                ("cookie", &cookie),
                (load_tests::crowd::LOAD_TEST_HEADER, secret),
            ],
            Some(&json!({})),
        ))
        .await
        .map_err(|_| "token")?;
    let Some(token) = token
        .json()
        .get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        let message = String::from_utf8_lossy(&token.body).into_owned();
        return Ok(Bought {
            cookie: Some(cookie),
            ..Bought::refused(format!("token {}", token.status), message)
        });
    };
    let a = c
        .send(request(
            "POST",
            &format!("/api/sales/{SALE}/purchase"),
            &[("cookie", &cookie)],
            Some(&json!({ "token": token })),
        ))
        .await
        .map_err(|_| "purchase")?;
    // A proxy's 502 or 504 (nginx: the gateway died or hung with the purchase sent) is
    // no gateway's answer: the purchase may have been queued, as when the connection is cut.
    if matches!(a.status.as_u16(), 502 | 504) {
        return Err("purchase");
    }
    let body = a.json();
    let code = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ticket = body
        .get("ticket")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let position = body.get("position").and_then(Value::as_u64);
    let receipt = body
        .get("receipt")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (answer, code) = match (a.status.as_u16(), code.as_str(), &ticket) {
        (202, _, Some(_)) => (Answer::Accepted, "202".into()),
        (503, "outcome_unknown", Some(_)) => (Answer::Unknown, code),
        (status, _, _) => (Answer::Refused, format!("{status} {code}")),
    };
    Ok(Bought {
        answer,
        code,
        ticket,
        message,
        position,
        receipt,
        cookie: Some(cookie),
    })
}

/// Polls `probe` until it says done, at most `within`; panics naming `what` and what it saw
/// last.
pub async fn wait_for<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let (done, seen) = probe().await;
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the all-in-one system in `dir` with its queue at `queue` (workers' lease
/// [`WORKER_LEASE_MS`]) and puts the flood's sale on.
pub async fn start_system(dir: &std::path::Path, queue: String) -> AllInOne {
    let system = AllInOne::start(
        dir,
        SystemOptions {
            queue: Some(queue),
            worker_lease_ms: Some(WORKER_LEASE_MS),
            ..SystemOptions::default()
        },
    )
    .await
    .expect("the all-in-one system starts on Redis");
    create_sale(&system).await;
    system
}

/// Puts [`SALE`] on (open now, [`UNITS`] units) through the admin API and waits until the
/// gateway's catalogue has it.
pub async fn create_sale(system: &AllInOne) {
    let mut admin = Conn::connect(system.addr).await.expect("connect");
    let auth = format!("Bearer {}", system.admin_secret);
    let created = admin
        .send(request(
            "POST",
            "/admin/api/sales",
            &[("authorization", &auth)],
            Some(&json!({
                "id": SALE,
                "name": "flood",
                "price_cents": 100,
                "units": UNITS,
                "starts_at_ms": queue::Clock::now_ms(&queue::SystemClock),
            })),
        ))
        .await
        .expect("create the sale");
    assert_eq!(
        created.status.as_u16(),
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let state = system.state.clone();
    wait_for(
        "the sale in the catalogue",
        Duration::from_secs(5),
        async || (state.catalogue.get(SALE).is_some(), ()),
    )
    .await;
}

/// The request ids (tickets) of every order in the database.
async fn order_tickets(db: &OrdersDb) -> Vec<String> {
    let sql = "SELECT request_id FROM orders";
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        order_worker::db::Shard::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
    }
    .expect("the orders")
}

/// At rest after a flood: the orders topic drained; every 202 decided and the database's
/// invariants held (the auditor); no order without a ticket handed out; then, within
/// [`RECONCILE_WAIT`], the stock store agreeing with the database (the units kept for
/// outcome-unknown purchases that never reached the queue given back by the gateway's
/// reconciliation). Returns the last audit.
pub async fn settle_and_audit(system: &AllInOne, flood: &Flood, began: Instant) -> AuditReport {
    let state = system.state.clone();
    wait_for("the orders topic to drain", DRAIN_WAIT, async || {
        let stats = state.queue.stats(&state.config.orders_topic).await;
        let drained = stats.as_ref().is_ok_and(|s| {
            s.groups
                .iter()
                .any(|g| g.name == state.config.workers_group && g.lag == 0 && g.in_flight == 0)
        });
        (drained, format!("{stats:?}"))
    })
    .await;
    eprintln!("drained after {:?}", began.elapsed());

    let accepted = flood.tickets_of(Answer::Accepted);
    let unknown = flood.tickets_of(Answer::Unknown);
    let input = AuditInput {
        db: system.db.clone(),
        store: None,
        sales: Some(vec![SALE]),
        tickets: accepted.clone(),
        at_rest: true,
        now_ms: queue::Clock::now_ms(&queue::SystemClock),
    };
    let report = audit(&input).await.expect("the audit runs");
    assert!(
        report.passed(),
        "{} accepted, {} outcome unknown; {report:#?}",
        accepted.len(),
        unknown.len(),
    );

    // A purchase refused for certain never became an order; an outcome-unknown one may have.
    let handed_out: HashSet<&str> = accepted
        .iter()
        .chain(unknown.iter())
        .map(String::as_str)
        .collect();
    let orders = order_tickets(&system.db).await;
    let strays: Vec<&String> = orders
        .iter()
        .filter(|t| !handed_out.contains(t.as_str()))
        .take(5)
        .collect();
    assert!(
        strays.is_empty(),
        "orders without a ticket handed out: {strays:?}"
    );
    let ordered: HashSet<&str> = orders.iter().map(String::as_str).collect();
    let unknown_ordered = unknown
        .iter()
        .filter(|t| ordered.contains(t.as_str()))
        .count();
    eprintln!(
        "{} accepted, all decided; {} outcome unknown, of which {unknown_ordered} became orders",
        accepted.len(),
        unknown.len()
    );

    let with_store = AuditInput {
        store: Some(system.state.inventory.store_arc()),
        ..input
    };
    let report = wait_for(
        "the stock store to agree with the database (reconciliation at rest)",
        RECONCILE_WAIT,
        async || {
            let report = audit(&AuditInput {
                now_ms: queue::Clock::now_ms(&queue::SystemClock),
                ..with_store.clone()
            })
            .await
            .expect("the audit runs");
            (report.passed(), report)
        },
    )
    .await;
    assert!(
        report
            .check(check::CONSERVATION_STORE)
            .is_some_and(|c| c.passed)
    );
    eprintln!(
        "store and database agree after {:?} (reconciliation resets: {})",
        began.elapsed(),
        system.state.reconciler.resets.load(Ordering::Relaxed)
    );
    report
}
