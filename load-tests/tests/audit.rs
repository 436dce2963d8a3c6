//! The auditor against real states: a small consistent state built through the system's own
//! code paths (the store's reservations, `decide_batch`, payments, cancellations, a discarded
//! dead letter) passes every check, on SQLite and PostgreSQL; each broken fixture (a row
//! written behind the system's back, an unknown ticket, an overdue order, a store that
//! drifted, …) fails the check it breaks, and only that one.
//!
//! PostgreSQL is a fresh scratch database per test (`TEST_POSTGRES_URL`), Redis a unique key
//! prefix (`REDIS_URL`, default 127.0.0.1:6379); without them those tests skip, except under
//! `CI`, where they fail.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use inventory::{MemoryStore, RedisStore, Reservation, StockStore};
use load_tests::audit::{
    AUDIT_TICKETS_CHUNK, AuditArgs, AuditInput, AuditReport, EXIT_ERROR, EXIT_FAILED, audit,
    audit_redis, check, cli_status, read_tickets,
};
use order_worker::db::{Decision, NewSale, Payment, reason};
use order_worker::testing;
use order_worker::{DbOptions, OrdersDb, PurchaseMessage};

/// The sale opens.
const T0: u64 = 1_700_000_000_000;
/// When the audits run: after eve's order was cancelled, before hal's pay-by time.
const NOW: u64 = T0 + 60_500;

fn purchase(sale: u64, user: &str, ticket: &str) -> PurchaseMessage {
    PurchaseMessage {
        ticket: ticket.to_string(),
        sale,
        user: user.to_string(),
        price_cents: 100,
        accepted_at_ms: T0,
    }
}

fn new_sale(id: u64, units: u64, pay_window_ms: Option<u64>) -> NewSale {
    NewSale {
        id,
        name: format!("sale {id}"),
        price_cents: 100,
        units,
        starts_at_ms: T0,
        pay_window_ms,
        ends_at_ms: None,
        token_factor: None,
        per_user_limit: None,
        stock_buckets: None,
    }
}

/// A consistent state and what the gateway answered.
struct Fixture {
    db: OrdersDb,
    store: Arc<dyn StockStore>,
    /// The tickets that got a 202, in order.
    tickets: Vec<String>,
}

impl Fixture {
    fn input(&self, at_rest: bool) -> AuditInput {
        AuditInput {
            db: self.db.clone(),
            store: Some(self.store.clone()),
            sales: None,
            tickets: self.tickets.clone(),
            at_rest,
            now_ms: NOW,
        }
    }

    /// The gateway's side of a purchase: a reservation tagged with its ticket; `Some` (a
    /// 202) when reserved.
    async fn accept(&mut self, sale: u64, user: &str) -> Option<PurchaseMessage> {
        let ticket = format!("t-{sale}-{user}-{}", self.tickets.len());
        match self
            .store
            .reserve_as(sale, user, &ticket)
            .await
            .expect("reserve")
        {
            Reservation::Reserved { .. } => {
                self.tickets.push(ticket.clone());
                Some(purchase(sale, user, &ticket))
            }
            _ => None,
        }
    }

    /// A worker's decision of `purchases` at `now_ms`: the order ids (every one granted).
    async fn order(&self, purchases: &[PurchaseMessage], now_ms: u64) -> Vec<String> {
        self.db
            .decide_batch(purchases, now_ms)
            .await
            .expect("decide")
            .into_iter()
            .map(|d| match d {
                Decision::Ordered { order_id, .. } => order_id,
                other => panic!("expected an order, got {other:?}"),
            })
            .collect()
    }

    /// The canceller: cancels due orders and releases their reservations.
    async fn cancel(&self, order_ids: &[String], now_ms: u64) -> usize {
        let done = self.db.cancel_due(order_ids, now_ms).await.expect("cancel");
        for c in &done {
            self.store
                .release_if(c.sale, &c.user, Some(&c.ticket))
                .await
                .expect("release");
        }
        done.len()
    }
}

/// Sale 1: 3 units, 3 orders (one paid), a fourth buyer refused sold out and a repeat
/// click refused already bought by the store. Sale 2: 10 units; eve's order cancelled at
/// its pay-by time, fay's paid, gus's purchase dead-lettered and discarded, hal's pending.
async fn consistent(db: OrdersDb, store: Arc<dyn StockStore>) -> Fixture {
    db.create_sale(&new_sale(1, 3, None), T0 - 1_000)
        .await
        .expect("sale 1");
    db.create_sale(&new_sale(2, 10, Some(60_000)), T0 - 1_000)
        .await
        .expect("sale 2");
    store.define(1, 3).await.expect("define 1");
    store.define(2, 10).await.expect("define 2");
    let mut f = Fixture {
        db,
        store,
        tickets: Vec::new(),
    };
    let mut one = Vec::new();
    for user in ["ann", "bob", "cat", "dan", "ann"] {
        if let Some(p) = f.accept(1, user).await {
            one.push(p);
        }
    }
    assert_eq!(
        one.len(),
        3,
        "dan finds it sold out, ann's repeat is refused"
    );
    let mut two = Vec::new();
    for user in ["eve", "fay", "gus", "hal"] {
        two.push(f.accept(2, user).await.expect("sale 2 has units"));
    }
    let ones = f.order(&one, T0 + 100).await;
    let eve = f.order(&two[0..1], T0).await;
    let fay_hal = f.order(&[two[1].clone(), two[3].clone()], T0 + 1_000).await;
    // gus's purchase went to the dead letters; an operator discarded it.
    assert!(
        f.db.record_rejection(&two[2], reason::DISCARDED, T0 + 1_500)
            .await
            .expect("discard")
    );
    f.store
        .release_if(2, "gus", Some(&two[2].ticket))
        .await
        .expect("release gus");
    assert!(matches!(
        f.db.pay(&ones[1], "bob", T0 + 3_000).await.expect("pay"),
        Payment::Paid(_)
    ));
    assert!(matches!(
        f.db.pay(&fay_hal[0], "fay", T0 + 2_000).await.expect("pay"),
        Payment::Paid(_)
    ));
    assert_eq!(f.cancel(&eve, T0 + 60_200).await, 1);
    f
}

async fn run(input: &AuditInput) -> AuditReport {
    audit(input).await.expect("audit reads")
}

/// The names of the failed checks.
fn failed(report: &AuditReport) -> BTreeSet<&str> {
    report.failures().iter().map(|c| c.name.as_str()).collect()
}

fn names(list: &[&'static str]) -> BTreeSet<&'static str> {
    list.iter().copied().collect()
}

fn detail<'a>(report: &'a AuditReport, name: &str) -> &'a str {
    &report.check(name).expect("check present").detail
}

/// Runs a raw statement behind the system's back.
async fn exec(db: &OrdersDb, sql: &'static str) {
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.expect(sql);
        }
        order_worker::db::Shard::Postgres(p) => {
            sqlx::query(sql).execute(p).await.expect(sql);
        }
    }
}

/// Runs a raw statement behind the system's back on the shard of `sale`.
async fn exec_on(db: &OrdersDb, sale: u64, sql: &'static str) {
    let i = db.shard_of(sale).await.expect("route");
    match db.shard(i).expect("shard") {
        order_worker::db::Shard::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.expect(sql);
        }
        order_worker::db::Shard::Postgres(p) => {
            sqlx::query(sql).execute(p).await.expect(sql);
        }
    }
}

/// Runs a raw statement on SQLite with the check constraints off (one connection).
async fn exec_unchecked(db: &OrdersDb, sql: &'static str) {
    let order_worker::db::Shard::Sqlite(p) = db.control() else {
        panic!("SQLite only");
    };
    let mut c = p.acquire().await.expect("connection");
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *c)
        .await
        .expect("pragma");
    sqlx::query(sql).execute(&mut *c).await.expect(sql);
    sqlx::query("PRAGMA ignore_check_constraints = OFF")
        .execute(&mut *c)
        .await
        .expect("pragma");
}

// ---- scenarios, each run on both backends ----

async fn consistent_state_passes(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    let report = run(&f.input(true)).await;
    report.print();
    assert!(report.passed(), "{:#?}", report.failures());
    let got: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(got, check::ALL.to_vec());
    assert_eq!(report.at_ms, NOW);
    assert_eq!(report.lines().len(), check::ALL.len() + 1);
    assert!(report.lines()[0].starts_with("PASS no oversell: 2 sales: 13 units, 5 active"));
    // The figures, per sale, database and store.
    assert_eq!(report.sales.len(), 2);
    let (s1, s2) = (&report.sales[0], &report.sales[1]);
    assert_eq!(
        (
            s1.sale,
            s1.units,
            s1.units_left,
            s1.pending,
            s1.paid,
            s1.cancelled
        ),
        (1, 3, 0, 2, 1, 0)
    );
    assert_eq!(
        (
            s2.sale,
            s2.units,
            s2.units_left,
            s2.pending,
            s2.paid,
            s2.cancelled
        ),
        (2, 10, 8, 1, 1, 1)
    );
    let st = s2.store.expect("store figures");
    assert_eq!((st.units, st.left, st.holders), (10, 8, 2));
    assert!(
        detail(&report, check::NO_LOST_PURCHASE).starts_with(
            "7 tickets (7 distinct): 7 resolved (6 ordered, 1 rejected: discarded 1), 0 missing"
        ),
        "{}",
        detail(&report, check::NO_LOST_PURCHASE)
    );
    assert!(detail(&report, check::CONSERVATION_STORE).starts_with("at rest"));
    assert!(detail(&report, check::TIMELY_CANCELLATION).contains("1 cancelled, 0 of them"));

    // Not at rest: the store is reported, not asserted.
    let report = run(&f.input(false)).await;
    assert!(report.passed(), "{:#?}", report.failures());
    assert!(detail(&report, check::CONSERVATION_STORE).starts_with("not at rest"));
    // No store: not checked.
    let mut input = f.input(true);
    input.store = None;
    let report = run(&input).await;
    assert!(report.passed());
    assert_eq!(
        detail(&report, check::CONSERVATION_STORE),
        "no store given: not checked"
    );
    // One sale only; an unknown sale is an error, not a pass.
    let mut input = f.input(true);
    input.sales = Some(vec![2, 2]);
    let report = run(&input).await;
    assert!(report.passed(), "{:#?}", report.failures());
    assert_eq!(report.sales.len(), 1);
    assert_eq!(report.sales[0].sale, 2);
    input.sales = Some(vec![2, 42]);
    let err = audit(&input).await.expect_err("sale 42 does not exist");
    assert!(err.to_string().contains("sale 42"), "{err}");
    // A store that forgot a sale fails at rest.
    let fresh = Arc::new(MemoryStore::new());
    fresh.define(1, 3).await.expect("define");
    let mut input = f.input(true);
    input.store = Some(fresh);
    input.sales = Some(vec![2]);
    let report = run(&input).await;
    assert_eq!(failed(&report), names(&[check::CONSERVATION_STORE]));
    assert!(detail(&report, check::CONSERVATION_STORE).contains("sale 2: not in the store"));
    f.db.close().await;
}

async fn extra_order_fails(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    // An order for sale 2 (not sold out) written without taking its unit.
    exec_on(
        &f.db,
        2,
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms) \
         VALUES ('intruder-2', 'intruder-ticket-2', 2, 'intruder', 100, 'pending', 1700000060000, 1700000600000)",
    )
    .await;
    let report = run(&f.input(false)).await;
    assert_eq!(failed(&report), names(&[check::CONSERVATION_DB]));
    assert!(
        detail(&report, check::CONSERVATION_DB)
            .contains("sale 2: 10 units ≠ 8 left + 3 active = 11"),
        "{}",
        detail(&report, check::CONSERVATION_DB)
    );
    // And one for sale 1, which is sold out: an oversell.
    exec_on(
        &f.db,
        1,
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms) \
         VALUES ('intruder-1', 'intruder-ticket-1', 1, 'intruder', 100, 'pending', 1700000060000, 1700000600000)",
    )
    .await;
    let report = run(&f.input(false)).await;
    assert_eq!(
        failed(&report),
        names(&[check::NO_OVERSELL, check::CONSERVATION_DB])
    );
    assert!(
        detail(&report, check::NO_OVERSELL).contains("sale 1: 4 active > 3 units"),
        "{}",
        detail(&report, check::NO_OVERSELL)
    );
    // At rest the store disagrees with the database too.
    let report = run(&f.input(true)).await;
    assert_eq!(
        failed(&report),
        names(&[
            check::NO_OVERSELL,
            check::CONSERVATION_DB,
            check::CONSERVATION_STORE
        ])
    );
    f.db.close().await;
}

async fn unknown_ticket_fails(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    let mut input = f.input(true);
    input.tickets.push("never-decided".into());
    let report = run(&input).await;
    assert_eq!(failed(&report), names(&[check::NO_LOST_PURCHASE]));
    let d = detail(&report, check::NO_LOST_PURCHASE);
    assert!(d.contains("1 missing; first missing: never-decided"), "{d}");
    f.db.close().await;
}

async fn tickets_are_read_in_chunks(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    // Purchases of a sale the database does not know: rejected `no_such_sale`, in one batch.
    let n = 2 * AUDIT_TICKETS_CHUNK + 1;
    let rejected: Vec<PurchaseMessage> = (0..n)
        .map(|i| purchase(99, &format!("u{i}"), &format!("x-{i}")))
        .collect();
    for d in f.db.decide_batch(&rejected, NOW).await.expect("decide") {
        assert!(matches!(d, Decision::Rejected { ref reason, .. } if reason == "no_such_sale"));
    }
    let mut input = f.input(true);
    input
        .tickets
        .extend(rejected.iter().map(|p| p.ticket.clone()));
    // A repeat and one unknown ticket in the second chunk.
    input.tickets.push("x-0".into());
    input
        .tickets
        .insert(AUDIT_TICKETS_CHUNK + 3, "lost-in-chunk-two".into());
    let report = run(&input).await;
    assert_eq!(failed(&report), names(&[check::NO_LOST_PURCHASE]));
    let d = detail(&report, check::NO_LOST_PURCHASE);
    let given = 7 + n + 2;
    assert!(
        d.starts_with(&format!(
            "{given} tickets ({} distinct): {} resolved (6 ordered, {} rejected: discarded 1, no_such_sale {n}), 1 missing; first missing: lost-in-chunk-two",
            given - 1,
            given - 2,
            n + 1
        )),
        "{d}"
    );
    f.db.close().await;
}

async fn overdue_pending_fails(db: OrdersDb) {
    let mut f = consistent(db, Arc::new(MemoryStore::new())).await;
    // Within the grace: 0.5 s past its pay-by time.
    let joe = f.accept(2, "joe").await.expect("reserve joe");
    let joe_order = f.order(&[joe], NOW - 60_000 - 500).await;
    let report = run(&f.input(true)).await;
    assert!(report.passed(), "{:#?}", report.failures());
    // 5 s past its pay-by time: the canceller is late.
    let ivy = f.accept(2, "ivy").await.expect("reserve ivy");
    let ivy_order = f.order(&[ivy], NOW - 60_000 - 5_000).await;
    let report = run(&f.input(true)).await;
    assert_eq!(failed(&report), names(&[check::TIMELY_CANCELLATION]));
    let d = detail(&report, check::TIMELY_CANCELLATION);
    assert!(
        d.starts_with("1 pending more than 1000 ms past pay-by"),
        "{d}"
    );
    assert!(d.contains(&format!("order {}", ivy_order[0])), "{d}");
    assert!(d.contains("user \"ivy\""), "{d}");
    // Once cancelled (late), it passes again; the lateness is reported.
    assert_eq!(f.cancel(&ivy_order, NOW).await, 1);
    assert_eq!(f.cancel(&joe_order, NOW).await, 1);
    let report = run(&f.input(true)).await;
    assert!(report.passed(), "{:#?}", report.failures());
    let d = detail(&report, check::TIMELY_CANCELLATION);
    assert!(
        d.contains("3 cancelled, 1 of them more than 1000 ms after pay-by (latest 5000 ms after)"),
        "{d}"
    );
    f.db.close().await;
}

async fn store_drift_fails_at_rest(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    // The store gives hal's unit back though hal's order is still pending.
    f.store.release(2, "hal").await.expect("release");
    let report = run(&f.input(true)).await;
    assert_eq!(failed(&report), names(&[check::CONSERVATION_STORE]));
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(d.contains("store left 9 ≠ database units_left 8"), "{d}");
    assert!(d.contains("1 store holders ≠ 2 active orders"), "{d}");
    // Not at rest, the store may run ahead: reported only.
    let report = run(&f.input(false)).await;
    assert!(report.passed(), "{:#?}", report.failures());
    assert!(
        detail(&report, check::CONSERVATION_STORE)
            .starts_with("not at rest: not asserted (1 of 2 sales would differ)")
    );
    f.db.close().await;
}

async fn two_active_orders_fail(db: OrdersDb) {
    let f = consistent(db, Arc::new(MemoryStore::new())).await;
    // A second active order for fay in another slot (the unique index allows it; the
    // decision never would on a sale of one per person), its unit taken.
    exec(
        &f.db,
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) \
         VALUES ('fay-again', 'fay-again-ticket', 2, 'fay', 100, 'pending', 1700000060000, 1700000600000, 1)",
    )
    .await;
    exec(
        &f.db,
        "UPDATE sales SET units_left = units_left - 1 WHERE id = 2",
    )
    .await;
    let report = run(&f.input(false)).await;
    assert_eq!(failed(&report), names(&[check::ONE_PER_PERSON]));
    let d = detail(&report, check::ONE_PER_PERSON);
    assert!(
        d.contains("1 (sale, user) pairs over their sale's per-person limit (sale 2: 1 users)"),
        "{d}"
    );
    assert!(d.contains("sale 2 user \"fay\": 2 active (limit 1)"), "{d}");
    f.db.close().await;
}

/// Sale 3, two per person: kim's two orders pass; a third active order (written behind
/// the system's back, its unit taken) fails the per-person check, and only that one.
async fn limit_plus_one_fails(db: OrdersDb) {
    let mut f = consistent(db, Arc::new(MemoryStore::new())).await;
    let mut sale = new_sale(3, 5, None);
    sale.per_user_limit = Some(2);
    f.db.create_sale(&sale, T0 - 1_000).await.expect("sale 3");
    f.store.define(3, 5).await.expect("define 3");
    let mut kims = Vec::new();
    for i in 0..3 {
        let ticket = format!("t-3-kim-{i}");
        if let Reservation::Reserved { .. } = f
            .store
            .reserve_up_to(3, "kim", &ticket, 2)
            .await
            .expect("reserve")
        {
            f.tickets.push(ticket.clone());
            kims.push(purchase(3, "kim", &ticket));
        }
    }
    assert_eq!(kims.len(), 2, "the store refuses kim's third");
    f.order(&kims, T0 + 100).await;
    let report = run(&f.input(true)).await;
    assert!(report.passed(), "{:#?}", report.failures());
    exec(
        &f.db,
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) \
         VALUES ('kim-3', 'kim-3-ticket', 3, 'kim', 100, 'pending', 1700000060000, 1700000600000, 2)",
    )
    .await;
    exec(
        &f.db,
        "UPDATE sales SET units_left = units_left - 1 WHERE id = 3",
    )
    .await;
    let report = run(&f.input(false)).await;
    assert_eq!(failed(&report), names(&[check::ONE_PER_PERSON]));
    let d = detail(&report, check::ONE_PER_PERSON);
    assert!(d.contains("sale 3 user \"kim\": 3 active (limit 2)"), "{d}");
    f.db.close().await;
}

/// Each scenario on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = order_worker::testing::sqlite(dir.path(), &order_worker::DbOptions::default()).await;
                super::$name(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((db, _scratch)) =
                    order_worker::testing::postgres(&order_worker::DbOptions::default()).await
                else {
                    return;
                };
                super::$name(db).await;
            }
        }
    )*};
}

on_both!(
    consistent_state_passes,
    extra_order_fails,
    unknown_ticket_fails,
    tickets_are_read_in_chunks,
    overdue_pending_fails,
    store_drift_fails_at_rest,
    two_active_orders_fail,
    limit_plus_one_fails,
);

/// Each scenario on two SQLite shards (sale 1 on the first, sale 2 on the second): the
/// audit reads a snapshot per shard and combines them; its checks are per sale and per
/// ticket, so the verdicts are the one-database ones.
macro_rules! on_two_shards {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_sqlite_shards() {
                let dir = tempfile::tempdir().expect("tempdir");
                let urls = format!(
                    "sqlite:{} sqlite:{}",
                    dir.path().join("s0.db").display(),
                    dir.path().join("s1.db").display()
                );
                let db = order_worker::OrdersDb::connect(&urls, &order_worker::DbOptions::default())
                    .await
                    .expect("two shards");
                super::$name(db.clone()).await;
                assert_eq!(db.shard_of(1).await.expect("route"), 0);
                assert_eq!(db.shard_of(2).await.expect("route"), 1);
            }
        }
    )*};
}

mod sharded {
    use super::*;
    on_two_shards!(consistent_state_passes, extra_order_fails);
}

// ---- SQLite only: states the constraints forbid, written with them switched off ----

async fn sqlite_fixture() -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = testing::sqlite(dir.path(), &DbOptions::default()).await;
    (consistent(db, Arc::new(MemoryStore::new())).await, dir)
}

#[tokio::test]
async fn negative_units_left_fails_on_sqlite() {
    let (f, _dir) = sqlite_fixture().await;
    exec_unchecked(&f.db, "UPDATE sales SET units_left = -1 WHERE id = 2").await;
    let report = run(&f.input(false)).await;
    assert_eq!(
        failed(&report),
        names(&[
            check::NO_OVERSELL,
            check::CONSERVATION_DB,
            check::NO_NEGATIVE_STOCK
        ])
    );
    let d = detail(&report, check::NO_NEGATIVE_STOCK);
    assert!(d.starts_with("sale 2: database units_left -1"), "{d}");
    assert!(
        detail(&report, check::NO_OVERSELL).contains("sale 2: units_left -1 < 0"),
        "{}",
        detail(&report, check::NO_OVERSELL)
    );
    f.db.close().await;
}

#[tokio::test]
async fn paid_and_cancelled_fails_on_sqlite() {
    let (f, _dir) = sqlite_fixture().await;
    exec_unchecked(
        &f.db,
        "UPDATE orders SET cancelled_ms = 1700000060200 WHERE user_id = 'fay'",
    )
    .await;
    let report = run(&f.input(true)).await;
    assert_eq!(failed(&report), names(&[check::TIMELY_CANCELLATION]));
    let d = detail(&report, check::TIMELY_CANCELLATION);
    assert!(d.contains("1 both paid and cancelled"), "{d}");
    assert!(d.contains("user \"fay\", paid"), "{d}");
    f.db.close().await;
}

#[tokio::test]
async fn payment_after_pay_by_fails_on_sqlite() {
    let (f, _dir) = sqlite_fixture().await;
    exec(
        &f.db,
        "UPDATE orders SET paid_ms = pay_by_ms WHERE user_id = 'fay'",
    )
    .await;
    let report = run(&f.input(true)).await;
    assert_eq!(failed(&report), names(&[check::TIMELY_CANCELLATION]));
    assert!(detail(&report, check::TIMELY_CANCELLATION).contains("1 paid at or after pay-by"));
    f.db.close().await;
}

// ---- Redis ----

/// A unique key prefix per test and run.
fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "audit-test:{}:{nanos}:{}:{test}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Redis store for `test`, or `None` (skip) when Redis is not there outside CI.
async fn redis(test: &str) -> Option<Arc<RedisStore>> {
    let url = redis_url();
    match RedisStore::connect(&url, &prefix(test), 4).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) if testing::under_ci() => panic!("Redis at {url} is required under CI: {e}"),
        Err(e) => {
            eprintln!("skipping {test}: Redis at {url}: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_holder_sets_and_raw_counters() {
    let Some(store) = redis("holders").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = testing::sqlite(dir.path(), &DbOptions::default()).await;
    let mut f = consistent(db, store.clone()).await;
    // Sale 3, two per person: kim holds two reservations, each with its order.
    let mut sale = new_sale(3, 4, None);
    sale.per_user_limit = Some(2);
    f.db.create_sale(&sale, T0 - 1_000).await.expect("sale 3");
    store.define(3, 4).await.expect("define 3");
    let mut kims = Vec::new();
    for i in 0..2 {
        let ticket = format!("t-3-kim-{i}");
        assert!(matches!(
            store
                .reserve_up_to(3, "kim", &ticket, 2)
                .await
                .expect("reserve"),
            Reservation::Reserved { .. }
        ));
        f.tickets.push(ticket.clone());
        kims.push(purchase(3, "kim", &ticket));
    }
    f.order(&kims, T0 + 100).await;
    let report = audit_redis(&f.input(true), &store).await.expect("audit");
    assert!(report.passed(), "{:#?}", report.failures());
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(
        d.contains("holder sets compared for 3 sales, 0 tags differ"),
        "{d}"
    );
    assert!(detail(&report, check::NO_NEGATIVE_STOCK).contains("raw from Redis"));
    // One of kim's reservations released behind the system's back: one active order
    // without a store holder.
    store
        .release_if(3, "kim", Some("t-3-kim-1"))
        .await
        .expect("release");
    let report = audit_redis(&f.input(true), &store).await.expect("audit");
    assert_eq!(failed(&report), names(&[check::CONSERVATION_STORE]));
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(
        d.contains("1 active orders without a store holder (first: \"kim\")"),
        "{d}"
    );
    store
        .reserve_up_to(3, "kim", "t-3-kim-1", 2)
        .await
        .expect("reserve again");

    // hal's reservation swapped for zed's: the counts agree, the holders do not.
    store.release(2, "hal").await.expect("release");
    assert!(matches!(
        store
            .reserve_as(2, "zed", "zed-tag")
            .await
            .expect("reserve"),
        Reservation::Reserved { left: 8 }
    ));
    let by_count = audit(&f.input(true)).await.expect("audit");
    assert!(by_count.passed(), "{:#?}", by_count.failures());
    let report = audit_redis(&f.input(true), &store).await.expect("audit");
    assert_eq!(failed(&report), names(&[check::CONSERVATION_STORE]));
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(
        d.contains("1 store holders without an active order (first: \"zed\")"),
        "{d}"
    );
    assert!(
        d.contains("1 active orders without a store holder (first: \"hal\")"),
        "{d}"
    );

    // A counter below zero: raw, it fails the check; through the store's API it cannot be
    // read, and the audit says so rather than passing.
    let key = format!("{}{{1}}:left", store.prefix());
    let _: () = store
        .conn()
        .query(deadpool_redis::redis::cmd("SET").arg(&key).arg(-1))
        .await
        .expect("SET");
    let report = audit_redis(&f.input(false), &store).await.expect("audit");
    assert_eq!(failed(&report), names(&[check::NO_NEGATIVE_STOCK]));
    assert!(
        detail(&report, check::NO_NEGATIVE_STOCK).starts_with("sale 1: store left -1"),
        "{}",
        detail(&report, check::NO_NEGATIVE_STOCK)
    );
    assert!(audit(&f.input(false)).await.is_err());

    store.forget(1).await.expect("forget");
    store.forget(2).await.expect("forget");
    store.forget(3).await.expect("forget");
    f.db.close().await;
}

/// The raw reading on a Redis Cluster, with sale 2 in 3 stock buckets: the buckets are
/// summed, the holders' `|g` suffixes stripped, and a user held in two buckets, or a bucket
/// below zero, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_stock_buckets_are_summed_and_checked() {
    let cluster = redis_kit::RedisCluster::start(3, 0).expect("a 3-master cluster starts");
    let store = Arc::new(
        RedisStore::connect(&cluster.url(), "audit-buckets:", 4)
            .await
            .expect("the store connects"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let db = testing::sqlite(dir.path(), &DbOptions::default()).await;
    let f = consistent(db, store.clone()).await;
    let holders = f.db.active_holder_tags(2).await.expect("holders");
    store
        .reconcile_bucketed(2, 10, 3, &holders)
        .await
        .expect("reconcile into 3 buckets");
    let report = audit_redis(&f.input(true), &store).await.expect("audit");
    assert!(report.passed(), "{:#?}", report.failures());
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(
        d.contains("holder sets compared for 2 sales, 0 tags differ"),
        "{d}"
    );

    // A holder of sale 2 recorded in a second bucket too.
    let user = &holders[0].user;
    let home = inventory::home_bucket(user, 3);
    let other = (home + 1) % 3;
    let keys = inventory::keys::SaleKeys::new(store.prefix(), 2);
    let [_, other_holders] = keys.bucket(other);
    let _: i64 = store
        .conn()
        .query(
            deadpool_redis::redis::cmd("HSET")
                .arg(&other_holders)
                .arg(user)
                .arg(format!("{}|{other}", holders[0].tag)),
        )
        .await
        .expect("HSET");
    let report = audit_redis(&f.input(true), &store).await.expect("audit");
    assert!(failed(&report).contains(check::CONSERVATION_STORE));
    let d = detail(&report, check::CONSERVATION_STORE);
    assert!(d.contains("held in two buckets"), "{d}");
    assert!(
        d.contains(&format!("held in bucket {other}, home {home}")),
        "{d}"
    );
    let _: i64 = store
        .conn()
        .query(
            deadpool_redis::redis::cmd("HDEL")
                .arg(&other_holders)
                .arg(user),
        )
        .await
        .expect("HDEL");

    // One bucket below zero while the sum is not.
    let [left_key, _] = keys.bucket(2);
    let _: () = store
        .conn()
        .query(deadpool_redis::redis::cmd("SET").arg(&left_key).arg(-1))
        .await
        .expect("SET");
    let report = audit_redis(&f.input(false), &store).await.expect("audit");
    assert!(failed(&report).contains(check::NO_NEGATIVE_STOCK));
    let d = detail(&report, check::NO_NEGATIVE_STOCK);
    assert!(d.contains("sale 2: store bucket 2 left -1"), "{d}");
    f.db.close().await;
}

// ---- the command ----

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    audit: AuditArgs,
}

#[test]
fn command_line_parses() {
    let cli = Cli::try_parse_from([
        "audit",
        "--database",
        "sqlite:x.db",
        "--inventory",
        "redis://127.0.0.1:6379",
        "--redis-prefix",
        "p:",
        "--sale",
        "1",
        "--sale",
        "2",
        "--tickets",
        "t.txt",
        "--at-rest",
    ])
    .expect("parses");
    let a = cli.audit;
    assert_eq!(a.database, ["sqlite:x.db"]);
    assert_eq!(a.inventory, "redis://127.0.0.1:6379");
    assert_eq!(a.redis_prefix, "p:");
    assert_eq!(a.sales, vec![1, 2]);
    assert_eq!(a.tickets.as_deref(), Some(std::path::Path::new("t.txt")));
    assert!(a.at_rest);
    assert!(Cli::try_parse_from(["audit", "--sale", "one"]).is_err());
    // A sharded database: one `--database` per shard, the control shard first.
    let cli = Cli::try_parse_from([
        "audit",
        "--database",
        "postgres://a/orders",
        "--database",
        "postgres://b1,b2/orders",
    ])
    .expect("parses");
    assert_eq!(
        cli.audit.database,
        ["postgres://a/orders", "postgres://b1,b2/orders"]
    );
}

#[test]
fn tickets_file_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = dir.path().join("t.txt");
    std::fs::write(&lines, "# accepted\na\n\n b \nc\n").expect("write");
    assert_eq!(read_tickets(&lines).expect("read"), vec!["a", "b", "c"]);
    let json = dir.path().join("t.json");
    std::fs::write(&json, r#"{"scenario": "ci", "tickets": ["x", "y"]}"#).expect("write");
    assert_eq!(read_tickets(&json).expect("read"), vec!["x", "y"]);
    std::fs::write(&json, r#"{"tickets": [1]}"#).expect("write");
    assert!(read_tickets(&json).is_err());
    std::fs::write(&json, r#"{"other": []}"#).expect("write");
    assert!(read_tickets(&json).is_err());
    assert!(read_tickets(&dir.path().join("absent")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_exit_statuses() {
    let (f, dir) = sqlite_fixture().await;
    let tickets = dir.path().join("tickets.txt");
    std::fs::write(&tickets, f.tickets.join("\n")).expect("write");
    let args = AuditArgs {
        database: vec![format!("sqlite:{}", dir.path().join("orders.db").display())],
        inventory: "memory".into(),
        redis_prefix: "seckill:".into(),
        sales: Vec::new(),
        tickets: Some(tickets.clone()),
        at_rest: true,
    };
    // The clock is real: hal's pay-by time (T0 + 61 s) is long past, so an order is
    // overdue unless the canceller ran.
    let overdue = f.db.overdue(u64::MAX / 2, 100).await.expect("overdue");
    assert_eq!(f.cancel(&overdue, T0 + 600_100).await, 3);
    assert_eq!(cli_status(&args).await, 0);
    // An unknown ticket: a failed check.
    std::fs::write(&tickets, format!("{}\nlost\n", f.tickets.join("\n"))).expect("write");
    assert_eq!(cli_status(&args).await, EXIT_FAILED);
    // Errors: an unknown sale, no database file, no Redis there.
    let mut bad = args.clone();
    bad.tickets = None;
    bad.sales = vec![42];
    assert_eq!(cli_status(&bad).await, EXIT_ERROR);
    let mut bad = args.clone();
    bad.database = vec![format!("sqlite:{}", dir.path().join("absent.db").display())];
    assert_eq!(cli_status(&bad).await, EXIT_ERROR);
    assert!(!dir.path().join("absent.db").exists());
    // A missing second shard is refused too, never created empty.
    let mut bad = args.clone();
    bad.database
        .push(format!("sqlite:{}", dir.path().join("absent.db").display()));
    assert_eq!(cli_status(&bad).await, EXIT_ERROR);
    assert!(!dir.path().join("absent.db").exists());
    let mut bad = args.clone();
    bad.inventory = "redis://127.0.0.1:1".into();
    assert_eq!(cli_status(&bad).await, EXIT_ERROR);
    f.db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_against_redis() {
    let Some(store) = redis("command").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = testing::sqlite(dir.path(), &DbOptions::default()).await;
    let f = consistent(db, store.clone()).await;
    let overdue = f.db.overdue(u64::MAX / 2, 100).await.expect("overdue");
    assert_eq!(f.cancel(&overdue, T0 + 600_100).await, 3);
    let args = AuditArgs {
        database: vec![format!("sqlite:{}", dir.path().join("orders.db").display())],
        inventory: redis_url(),
        redis_prefix: store.prefix().to_string(),
        sales: Vec::new(),
        tickets: None,
        at_rest: true,
    };
    assert_eq!(cli_status(&args).await, 0);
    // Another prefix holds none of the sales: at rest, that fails.
    let mut other = args.clone();
    other.redis_prefix = prefix("command-empty");
    assert_eq!(cli_status(&other).await, EXIT_FAILED);
    store.forget(1).await.expect("forget");
    store.forget(2).await.expect("forget");
    store.forget(3).await.expect("forget");
    f.db.close().await;
}
