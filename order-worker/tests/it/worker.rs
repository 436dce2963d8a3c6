//! The order worker through a real (embedded) queue, on both database backends.
//!
//! - `same_purchase_published_1_to_5_times`: copies of one purchase (no message id, so the
//!   queue stores each) make one order, one decrement and one stored pay-by message.
//! - `redelivery_after_commit_without_ack`: a batch decided and never acked (a worker that
//!   died after its commit) comes back when its lease ends; a real worker changes nothing,
//!   publishes the missing pay-by messages and acks.
//! - `malformed_messages_are_dead_lettered_without_blocking`: not-JSON and a bad ticket go
//!   to the dead letters; the valid purchases around them become orders in the same drain.
//! - `rejections_release_the_gateways_reservation`: a store that over-counts the database's
//!   units gets the sold-out rejections' units back, never an already-bought one.
//! - `competing_workers_sell_each_unit_once`: four workers, 2,000 purchases, 1,000 users,
//!   500 units.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use inventory::{Reservation, StockStore};
use order_worker::OrdersDb;
use order_worker::db::{OrderStatus, reason};
use order_worker::purchase::{DEADLINES_TOPIC, ORDERS_TOPIC, PurchaseMessage, WORKERS_GROUP};
use order_worker::worker::{OrderWorker, WorkerConfig, WorkerMetrics};
use queue::{Clock, FetchOptions, ManualClock, Queue};

use crate::{
    T0, WAIT, assert_conserved, body, both_backends, deadline_id, drain, engine, inventory_over,
    orders_lag, publish, publish_raw, published, purchase, sale, stock, stored_deadlines,
    wait_until, worker,
};

/// A deterministic Fisher-Yates shuffle (xorshift64), so a failure replays.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed.max(1);
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The order id a ticket's outcome names (panics if it was not ordered).
async fn order_of(db: &OrdersDb, ticket: &str) -> String {
    let o = db
        .outcome(ticket)
        .await
        .expect("outcome")
        .unwrap_or_else(|| panic!("{ticket} has no outcome"));
    o.order_id
        .unwrap_or_else(|| panic!("{ticket} was rejected: {:?}", o.reason))
}

/// The rejection reason of a ticket (panics if it was ordered or is undecided).
async fn reason_of(db: &OrdersDb, ticket: &str) -> String {
    let o = db
        .outcome(ticket)
        .await
        .expect("outcome")
        .unwrap_or_else(|| panic!("{ticket} has no outcome"));
    o.reason
        .unwrap_or_else(|| panic!("{ticket} was ordered: {:?}", o.order_id))
}

async fn same_purchase_many_times(db: OrdersDb) {
    const WINDOW: u64 = 60_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, 100, WINDOW).await;
    // Batches of two: some copies meet in one batch, the rest come in later batches.
    let w = worker(&db, &q, None, &clock, 2);
    let m = w.metrics().clone();
    for k in 1..=5u64 {
        let ticket = format!("ticket-{k}");
        let p = purchase(&ticket, 1, &format!("user-{k}"));
        let copies: Vec<PurchaseMessage> = (0..k).map(|_| p.clone()).collect();
        publish(q.as_ref(), &copies).await;
        assert_eq!(orders_lag(q.as_ref()).await, k, "every copy is stored");
        let (published_before, duplicates_before) = published(q.as_ref(), DEADLINES_TOPIC).await;
        let (ordered, redelivered, messages) =
            (load(&m.ordered), load(&m.redelivered), load(&m.messages));

        assert_eq!(drain(&w, q.as_ref()).await as u64, k);

        let order_id = order_of(&db, &ticket).await;
        let order = db.order(&order_id).await.expect("order").expect("exists");
        assert_eq!(
            (order.ticket.as_str(), order.status, order.pay_by_ms),
            (ticket.as_str(), OrderStatus::Pending, T0 + WINDOW)
        );
        assert_eq!(
            db.order_counts(1).await.expect("counts").pending,
            k,
            "one order per ticket, however many copies"
        );
        assert_eq!(
            db.sale(1).await.expect("sale").expect("exists").units_left,
            100 - k,
            "one decrement per ticket"
        );
        assert_eq!(load(&m.ordered) - ordered, 1);
        assert_eq!(load(&m.redelivered) - redelivered, k - 1);
        assert_eq!(load(&m.messages) - messages, k, "every copy acked");
        assert_eq!(orders_lag(q.as_ref()).await, 0);
        // Every copy re-published the order's pay-by message; the queue kept one.
        let (published_after, duplicates_after) = published(q.as_ref(), DEADLINES_TOPIC).await;
        assert_eq!(published_after - published_before, 1, "one pay-by stored");
        assert_eq!(
            duplicates_after - duplicates_before,
            k - 1,
            "the rest de-duplicated"
        );
        let stored = stored_deadlines(q.as_ref(), 100).await;
        let mine: Vec<_> = stored
            .iter()
            .filter(|(_, d)| d.order_id == order_id)
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "one pay-by message for {order_id}: {stored:?}"
        );
        assert_eq!(mine[0].0, deadline_id(&order_id));
        assert_eq!(mine[0].1.pay_by_ms, T0 + WINDOW);
    }
    assert_eq!(stored_deadlines(q.as_ref(), 100).await.len(), 5);
    assert_conserved(&db, 1, None).await;
    engine.close().expect("close the queue");
}
both_backends!(
    same_purchase_published_1_to_5_times,
    same_purchase_many_times
);

async fn redelivery_after_unacked_batch(db: OrdersDb) {
    const UNITS: u64 = 15;
    const PURCHASES: usize = 20;
    const LEASE_MS: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, UNITS, 60_000).await;
    let purchases: Vec<PurchaseMessage> = (0..PURCHASES)
        .map(|i| purchase(&format!("t{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;

    // A worker fetches the batch, commits its decisions and dies before the pay-by
    // messages and the ack.
    let batch = q
        .fetch(
            ORDERS_TOPIC,
            WORKERS_GROUP,
            FetchOptions {
                max_messages: 100,
                lease_ms: Some(LEASE_MS),
                wait_ms: 0,
            },
        )
        .await
        .expect("fetch");
    assert_eq!(batch.len(), PURCHASES);
    assert!(batch.iter().all(|d| d.attempt == 1));
    let fetched: Vec<PurchaseMessage> = batch
        .iter()
        .map(|d| PurchaseMessage::decode(&d.payload).expect("a purchase"))
        .collect();
    assert_eq!(fetched, purchases);
    let decided = db
        .decide_batch(&fetched, clock.now_ms())
        .await
        .expect("decide");
    assert!(decided.iter().all(|d| d.fresh()));
    let order_ids: HashSet<String> = decided
        .iter()
        .filter_map(|d| match d {
            order_worker::db::Decision::Ordered { order_id, .. } => Some(order_id.clone()),
            order_worker::db::Decision::Rejected { .. } => None,
        })
        .collect();
    assert_eq!(order_ids.len() as u64, UNITS);
    drop(batch);

    // While the lease lasts, a real worker gets nothing.
    let w = worker(&db, &q, None, &clock, 100);
    let m = w.metrics().clone();
    assert_eq!(w.step().await.expect("step"), 0, "leased");
    clock.advance(LEASE_MS - 1);
    engine.tick().await.expect("tick");
    assert_eq!(w.step().await.expect("step"), 0, "still leased");
    assert_eq!(orders_lag(q.as_ref()).await, PURCHASES as u64);
    // The lease ends: the batch comes back and the worker finds every decision made.
    clock.advance(1);
    engine.tick().await.expect("tick");
    assert_eq!(drain(&w, q.as_ref()).await, PURCHASES);
    assert_eq!(orders_lag(q.as_ref()).await, 0);

    assert_eq!(
        load(&m.redelivered),
        PURCHASES as u64,
        "every decision found"
    );
    assert_eq!(load(&m.ordered), 0, "no new order");
    assert_eq!(load(&m.rejected_sold_out), 0, "no new rejection");
    assert_eq!(load(&m.messages), PURCHASES as u64, "every message acked");
    assert_eq!(load(&m.deadlines_published), UNITS);
    let c = db.order_counts(1).await.expect("counts");
    assert_eq!(
        (c.pending, c.paid, c.cancelled),
        (UNITS, 0, 0),
        "no duplicate"
    );
    assert_eq!(
        db.outcome_counts(1).await.expect("outcomes"),
        (UNITS, PURCHASES as u64 - UNITS)
    );
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);
    // The pay-by messages the dead worker never published are there now, one per order.
    let stored = stored_deadlines(q.as_ref(), 100).await;
    let stored_orders: HashSet<String> = stored.iter().map(|(_, d)| d.order_id.clone()).collect();
    assert_eq!(stored.len() as u64, UNITS);
    assert_eq!(stored_orders, order_ids);
    for (id, d) in &stored {
        assert_eq!(*id, deadline_id(&d.order_id));
    }
    let stats = q.stats(ORDERS_TOPIC).await.expect("stats");
    let g = stats
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .expect("the workers' group");
    assert_eq!(g.redeliveries, PURCHASES as u64, "each delivered twice");
    assert_eq!(g.acked, PURCHASES as u64);
    assert_conserved(&db, 1, None).await;
    engine.close().expect("close the queue");
}
both_backends!(
    redelivery_after_commit_without_ack,
    redelivery_after_unacked_batch
);

async fn malformed_among_valid(db: OrdersDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, 100, 60_000).await;
    let valid = |i: usize| purchase(&format!("v{i}"), 1, &format!("u{i}"));
    let not_json = b"not json at all".to_vec();
    let bad_ticket =
        br#"{"ticket":"has space","sale":1,"user":"mallory","price_cents":100,"accepted_at_ms":1}"#
            .to_vec();
    let mut bodies: Vec<Vec<u8>> = (0..5).map(|i| body(&valid(i))).collect();
    bodies.push(not_json.clone());
    bodies.push(bad_ticket.clone());
    // A well-formed purchase of a sale the database does not know: rejected, not poison.
    bodies.push(body(&purchase("unknown-sale", 42, "u-x")));
    bodies.extend((5..10).map(|i| body(&valid(i))));
    publish_raw(q.as_ref(), bodies).await;

    let w = worker(&db, &q, None, &clock, 100);
    let m = w.metrics().clone();
    // One step: the malformed ones hold nothing up.
    assert_eq!(w.step().await.expect("step"), 13);
    assert_eq!(orders_lag(q.as_ref()).await, 0, "all finished in one batch");
    for i in 0..10 {
        order_of(&db, &format!("v{i}")).await;
    }
    assert_eq!(reason_of(&db, "unknown-sale").await, reason::NO_SUCH_SALE);
    assert!(db.outcome("has space").await.expect("outcome").is_none());
    assert_eq!(db.order_counts(1).await.expect("counts").pending, 10);
    assert_eq!(load(&m.malformed), 2);
    assert_eq!(load(&m.ordered), 10);
    assert_eq!(load(&m.rejected_no_such_sale), 1);
    assert_eq!(load(&m.nacked), 0);

    let dead = q
        .dead_letters(ORDERS_TOPIC, 0, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut payloads: Vec<Vec<u8>> = dead.iter().map(|d| d.payload.to_vec()).collect();
    payloads.sort();
    let mut expected = vec![not_json, bad_ticket];
    expected.sort();
    assert_eq!(payloads, expected);
    for d in &dead {
        assert_eq!(d.group, WORKERS_GROUP);
        assert_eq!(d.attempts, 1, "straight to the dead letters, no retries");
        assert!(
            d.reason.contains("malformed"),
            "the reason says why: {:?}",
            d.reason
        );
    }
    let mut offsets: Vec<u64> = dead.iter().map(|d| d.original_offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, vec![5, 6]);
    engine.close().expect("close the queue");
}
both_backends!(
    malformed_messages_are_dead_lettered_without_blocking,
    malformed_among_valid
);

async fn rejections_release_reservations(db: OrdersDb) {
    const DB_UNITS: u64 = 3;
    const STORE_UNITS: u64 = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, DB_UNITS, 60_000).await;
    // The gateway's cache believes in twice the units: it reserves for six buyers.
    let (store, inv) = inventory_over(1, STORE_UNITS).await;
    let users: Vec<String> = (1..=STORE_UNITS).map(|i| format!("u{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        assert!(matches!(
            inv.reserve_as(1, u, &format!("t{}", i + 1))
                .await
                .expect("reserve"),
            Reservation::Reserved { .. }
        ));
    }
    assert!(inv.flagged_sold_out(1), "the last unit flags the sale");

    let mut batch: Vec<PurchaseMessage> = users
        .iter()
        .enumerate()
        .map(|(i, u)| purchase(&format!("t{}", i + 1), 1, u))
        .collect();
    // u2 again in the same batch (another gateway let it through): already bought.
    batch.push(purchase("t2-again", 1, "u2"));
    publish(q.as_ref(), &batch).await;
    let w = worker(&db, &q, Some(inv.clone()), &clock, 100);
    let m = w.metrics().clone();
    assert_eq!(drain(&w, q.as_ref()).await, batch.len());
    // u1 again in a later batch: the database sees u1's active order.
    publish(q.as_ref(), &[purchase("t1-again", 1, "u1")]).await;
    assert_eq!(drain(&w, q.as_ref()).await, 1);

    for t in ["t1", "t2", "t3"] {
        order_of(&db, t).await;
    }
    for t in ["t4", "t5", "t6"] {
        assert_eq!(reason_of(&db, t).await, reason::SOLD_OUT);
    }
    for t in ["t2-again", "t1-again"] {
        assert_eq!(reason_of(&db, t).await, reason::ALREADY_BOUGHT);
    }
    assert_eq!(load(&m.rejected_sold_out), 3);
    assert_eq!(load(&m.rejected_already_bought), 2);
    assert_eq!(
        load(&m.released),
        3,
        "one release per sold-out rejection only"
    );

    // The store now agrees with the database: three holders, three units back on sale.
    let st = stock(&store, 1).await;
    assert_eq!((st.units, st.left, st.holders), (STORE_UNITS, 3, 3));
    assert!(
        !inv.flagged_sold_out(1),
        "a release clears the sold-out flag"
    );
    // The buyers still hold their units (the already-bought rejections released nothing);
    // the rejected ones can reserve again.
    for u in ["u1", "u2", "u3"] {
        assert_eq!(
            store.reserve(1, u).await.expect("reserve"),
            Reservation::AlreadyBought,
            "{u} keeps its unit"
        );
    }
    for u in ["u4", "u5", "u6"] {
        assert!(
            matches!(
                store.reserve(1, u).await.expect("reserve"),
                Reservation::Reserved { .. }
            ),
            "{u}'s unit was released"
        );
    }
    assert_conserved(&db, 1, Some(&store)).await;
    engine.close().expect("close the queue");
}
both_backends!(
    rejections_release_the_gateways_reservation,
    rejections_release_reservations
);

async fn competing_workers(db: OrdersDb) {
    const UNITS: u64 = 500;
    const USERS: usize = 1_000;
    const PURCHASES: usize = 2_000;
    const WORKERS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, UNITS, 600_000).await;
    // Every user twice, in a fixed shuffled order: many users come back long before the
    // units run out, in the same batch or in another worker's.
    let mut users: Vec<usize> = (0..PURCHASES).map(|i| i % USERS).collect();
    shuffle(&mut users, 0x5eed);
    let purchases: Vec<PurchaseMessage> = users
        .iter()
        .enumerate()
        .map(|(i, u)| purchase(&format!("t{i}"), 1, &format!("user-{u}")))
        .collect();
    let early_repeats = {
        let mut seen = HashSet::new();
        users[..UNITS as usize]
            .iter()
            .filter(|u| !seen.insert(**u))
            .count()
    };
    assert!(
        early_repeats > 50,
        "the order tests repeats: {early_repeats}"
    );
    publish(q.as_ref(), &purchases).await;

    let metrics = Arc::new(WorkerMetrics::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let w = OrderWorker::new(
            db.clone(),
            q.clone(),
            None,
            WorkerConfig {
                batch_max: 50,
                wait_ms: 20,
                ..WorkerConfig::default()
            },
            metrics.clone(),
            Arc::new(clock.clone()),
        );
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move { w.run(rx).await }));
    }
    let qc = q.clone();
    wait_until("the workers to drain the orders topic", WAIT, || {
        let q = qc.clone();
        async move { orders_lag(q.as_ref()).await == 0 }
    })
    .await;
    stop.send(true).expect("stop the workers");
    for t in tasks {
        t.await.expect("worker task");
    }

    assert_eq!(load(&metrics.messages), PURCHASES as u64);
    assert_eq!(load(&metrics.ordered), UNITS);
    assert_eq!(load(&metrics.nacked), 0);
    let c = db.order_counts(1).await.expect("counts");
    assert_eq!((c.pending, c.paid, c.cancelled), (UNITS, 0, 0));
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);
    assert_eq!(
        db.outcome_counts(1).await.expect("outcomes"),
        (UNITS, PURCHASES as u64 - UNITS)
    );
    let holders = db.active_holders(1).await.expect("holders");
    let distinct: HashSet<&String> = holders.iter().collect();
    assert_eq!(
        distinct.len() as u64,
        UNITS,
        "no user with two active orders"
    );
    // Every ticket has an outcome, for its own user; each order belongs to one ticket.
    let mut orders: HashMap<String, String> = HashMap::new();
    for p in &purchases {
        let o = db
            .outcome(&p.ticket)
            .await
            .expect("outcome")
            .unwrap_or_else(|| panic!("{} has no outcome", p.ticket));
        assert_eq!((o.sale, o.user.as_str()), (1, p.user.as_str()));
        match (o.order_id, o.reason) {
            (Some(id), None) => {
                assert!(
                    orders.insert(id, p.ticket.clone()).is_none(),
                    "one ticket per order"
                );
            }
            (None, Some(r)) => assert!(
                r == reason::SOLD_OUT || r == reason::ALREADY_BOUGHT,
                "{}: {r}",
                p.ticket
            ),
            other => panic!("{}: inconsistent outcome {other:?}", p.ticket),
        }
    }
    assert_eq!(orders.len() as u64, UNITS);
    // One pay-by message per order.
    let stored = stored_deadlines(q.as_ref(), PURCHASES).await;
    let stored_orders: HashSet<&String> = stored.iter().map(|(_, d)| &d.order_id).collect();
    assert_eq!(stored.len() as u64, UNITS);
    assert_eq!(stored_orders, orders.keys().collect::<HashSet<_>>());
    assert_eq!(orders_lag(q.as_ref()).await, 0);
    assert_conserved(&db, 1, None).await;
    engine.close().expect("close the queue");
}
both_backends!(competing_workers_sell_each_unit_once, competing_workers);

/// A database outage spends no delivery attempts: the worker retries within the batch's
/// lease, never nacks, and the batch is decided once the database is back (here: after the
/// lease, by a worker on a reopened pool). Nacking on every failure would walk a backlog
/// into the dead letters within seconds of an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_spends_no_delivery_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("orders.db").display());
    let db = OrdersDb::connect(&url, &order_worker::DbOptions::default())
        .await
        .expect("open");
    sale(&db, 1, 10, 60_000).await;
    let clock = ManualClock::new(1_000_000);
    let engine = crate::engine(&dir.path().join("queue"), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    let purchases: Vec<PurchaseMessage> = (0..3)
        .map(|i| purchase(&format!("o-{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;
    // The database goes away (a closed pool fails at once, like a refused connection).
    db.close().await;
    const LEASE_MS: u64 = order_worker::worker::LEASE_MARGIN_MS + 300;
    let down = OrderWorker::new(
        db.clone(),
        q.clone(),
        None,
        WorkerConfig {
            wait_ms: 0,
            lease_ms: LEASE_MS,
            retry_base_ms: 20,
            ..WorkerConfig::default()
        },
        Arc::new(WorkerMetrics::default()),
        Arc::new(clock.clone()),
    );
    assert_eq!(down.step().await.expect("step"), 3);
    let m = down.metrics();
    assert!(m.db_retries.load(Ordering::Relaxed) > 0, "it retried");
    assert_eq!(m.nacked.load(Ordering::Relaxed), 0, "it never nacked");
    let stats = q.stats(ORDERS_TOPIC).await.expect("stats");
    let g = stats
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .expect("group");
    assert_eq!(
        (g.in_flight, g.retry_waiting, g.dead_lettered),
        (3, 0, 0),
        "still leased, not given back"
    );
    // The database is back; once the lease ends the batch comes back (attempt 2 of 5) and
    // is decided.
    let db = OrdersDb::connect(&url, &order_worker::DbOptions::default())
        .await
        .expect("reopen");
    clock.advance(LEASE_MS + 1);
    engine.tick().await.expect("tick");
    let up = crate::worker(&db, &q, None, &clock, 100);
    drain(&up, q.as_ref()).await;
    assert_eq!(db.order_counts(1).await.expect("counts").pending, 3);
    assert_eq!(db.outcome_counts(1).await.expect("outcomes"), (3, 0));
    db.close().await;
}

/// On PostgreSQL the workers refresh the planner's statistics once they have decided
/// `ANALYZE_EVERY_DECISIONS_MIN` purchases (this machine's PostgreSQL runs without
/// autovacuum, and plans made on empty tables turned small batches into full scans).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_refresh_postgres_statistics_as_the_tables_grow() {
    let Some((db, _scratch)) = order_worker::testing::postgres(&Default::default()).await else {
        return;
    };
    let n = order_worker::worker::ANALYZE_EVERY_DECISIONS_MIN;
    sale(&db, 1, n, 600_000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    let last_analyze = || async {
        let order_worker::db::Shard::Postgres(p) = db.control() else {
            panic!("a PostgreSQL database")
        };
        let row = sqlx::query(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'orders'",
        )
        .fetch_one(p)
        .await
        .expect("pg_stat_user_tables");
        sqlx::Row::try_get::<bool, _>(&row, 0).expect("bool")
    };
    assert!(!last_analyze().await, "never analyzed before");
    let purchases: Vec<PurchaseMessage> = (0..n)
        .map(|i| purchase(&format!("a-{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;
    let w = worker(&db, &q, None, &clock, 1000);
    drain(&w, q.as_ref()).await;
    assert_eq!(w.metrics().analyzes.load(Ordering::Relaxed), 1);
    wait_until("the ANALYZE to finish", WAIT, || async {
        last_analyze().await
    })
    .await;
    engine.close().expect("close the queue");
    db.close().await;
}

/// A queue whose first `fail` publishes to the pay-by topic fail (a Redis master failing
/// over, a broker restarting); everything else goes to `inner`.
struct FlakyDeadlines {
    inner: Arc<dyn Queue>,
    fail: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl Queue for FlakyDeadlines {
    async fn publish(&self, topic: &str, message: queue::Message) -> queue::Result<queue::Confirm> {
        self.inner.publish(topic, message).await
    }
    async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<queue::Message>,
    ) -> queue::Result<Vec<queue::Confirm>> {
        self.inner.publish_batch(topic, messages).await
    }
    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<queue::Message>,
    ) -> queue::Result<Vec<queue::Result<queue::Confirm>>> {
        if topic == DEADLINES_TOPIC
            && self
                .fail
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(queue::Error::Connection("failing over".into()));
        }
        self.inner.publish_each(topic, messages).await
    }
    async fn create_group(
        &self,
        topic: &str,
        group: &str,
        start: queue::StartAt,
    ) -> queue::Result<()> {
        self.inner.create_group(topic, group, start).await
    }
    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> queue::Result<Vec<queue::Delivery>> {
        self.inner.fetch(topic, group, options).await
    }
    async fn ack(
        &self,
        topic: &str,
        group: &str,
        receipts: &[queue::Receipt],
    ) -> queue::Result<Vec<queue::AckOutcome>> {
        self.inner.ack(topic, group, receipts).await
    }
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: queue::Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> queue::Result<queue::AckOutcome> {
        self.inner
            .nack(topic, group, receipt, delay_ms, reason)
            .await
    }
    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: queue::Receipt,
        reason: &str,
    ) -> queue::Result<queue::AckOutcome> {
        self.inner.reject(topic, group, receipt, reason).await
    }
    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> queue::Result<Vec<queue::DeadLetter>> {
        self.inner
            .dead_letters(topic, from_dead_offset, limit)
            .await
    }
    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> queue::Result<u64> {
        self.inner.replay_dead_letter(topic, dead_offset).await
    }
    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> queue::Result<()> {
        self.inner.discard_dead_letter(topic, dead_offset).await
    }
    async fn stats(&self, topic: &str) -> queue::Result<queue::TopicStats> {
        self.inner.stats(topic).await
    }
    async fn peek(
        &self,
        topic: &str,
        from_offset: u64,
        limit: usize,
    ) -> queue::Result<Vec<queue::Peeked>> {
        self.inner.peek(topic, from_offset, limit).await
    }
    async fn topics(&self) -> queue::Result<Vec<String>> {
        self.inner.topics().await
    }
}

/// Issue 17: pay-by messages that fail to publish for a moment (the queue failing over)
/// are published again within the batch's lease; the purchases are acked, never nacked
/// (a nack a second spent the five delivery attempts inside a Redis master's failover and
/// dead-lettered decided purchases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_by_messages_that_fail_for_a_moment_are_retried_not_nacked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = order_worker::testing::sqlite(dir.path(), &Default::default()).await;
    sale(&db, 1, 10, 60_000).await;
    let clock = ManualClock::new(1_000_000);
    let engine = crate::engine(&dir.path().join("queue"), &clock);
    let flaky = Arc::new(FlakyDeadlines {
        inner: engine.clone(),
        fail: std::sync::atomic::AtomicU32::new(3),
    });
    let q: Arc<dyn Queue> = flaky.clone();
    let purchases: Vec<PurchaseMessage> = (0..3)
        .map(|i| purchase(&format!("o-{i}"), 1, &format!("u{i}")))
        .collect();
    publish(q.as_ref(), &purchases).await;
    let w = OrderWorker::new(
        db.clone(),
        q.clone(),
        None,
        WorkerConfig {
            wait_ms: 0,
            retry_base_ms: 10,
            ..WorkerConfig::default()
        },
        Arc::new(WorkerMetrics::default()),
        Arc::new(clock.clone()),
    );
    assert_eq!(w.step().await.expect("step"), 3);
    assert_eq!(
        flaky.fail.load(Ordering::Relaxed),
        0,
        "every failure was met"
    );
    let m = w.metrics();
    assert_eq!(m.nacked.load(Ordering::Relaxed), 0, "nothing nacked");
    let stats = q.stats(ORDERS_TOPIC).await.expect("stats");
    let g = stats
        .groups
        .iter()
        .find(|g| g.name == WORKERS_GROUP)
        .expect("group");
    assert_eq!(
        (
            g.lag,
            g.in_flight,
            g.retry_waiting,
            g.dead_lettered,
            g.redeliveries
        ),
        (0, 0, 0, 0, 0),
        "acked on the first delivery"
    );
    assert_eq!(stored_deadlines(q.as_ref(), 10).await.len(), 3);
    db.close().await;
}
