//! Cancellation of unpaid orders at their pay-by time, on both database backends, with one
//! `ManualClock` shared by the queue, the workers and the cancellers.
//!
//! - `unpaid_orders_are_cancelled_at_their_deadline_and_sell_again`: nothing before the
//!   deadline; at it, exactly the unpaid orders go, their units return to the database and
//!   the stock store (sold-out flag cleared), and their buyers can buy again.
//! - `the_sweep_cancels_an_order_whose_pay_by_message_never_arrived`: the backstop.
//! - `paying_and_cancelling_race_and_exactly_one_wins`: payments just before the deadline
//!   against the real canceller at it, for 100 orders at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use inventory::{Reservation, StockStore};
use order_worker::OrdersDb;
use order_worker::db::{Decision, OrderStatus, Payment};
use order_worker::purchase::{CANCELLERS_GROUP, DEADLINES_TOPIC, PurchaseMessage};
use queue::{Clock, ManualClock, Queue};

use crate::{
    T0, WAIT, assert_conserved, both_backends, canceller, drain, drain_deadlines, engine,
    inventory_over, lag, publish, purchase, sale, stock, worker,
};

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The order a ticket became (panics if it was rejected or is undecided).
async fn order_of(db: &OrdersDb, ticket: &str) -> String {
    let o = db
        .outcome(ticket)
        .await
        .expect("outcome")
        .unwrap_or_else(|| panic!("{ticket} has no outcome"));
    o.order_id
        .unwrap_or_else(|| panic!("{ticket} was rejected: {:?}", o.reason))
}

async fn status(db: &OrdersDb, order_id: &str) -> OrderStatus {
    db.order(order_id)
        .await
        .expect("order")
        .unwrap_or_else(|| panic!("no order {order_id}"))
        .status
}

/// Reserves a unit for each user in the store, as the gateway does before publishing,
/// tagged with the ticket its purchase will carry (`{tickets}{index}`).
async fn reserve_all(inv: &inventory::Inventory, sale: u64, users: &[String], tickets: &str) {
    for (i, u) in users.iter().enumerate() {
        let r = inv
            .reserve_as(sale, u, &format!("{tickets}{i}"))
            .await
            .expect("reserve");
        assert!(
            matches!(r, Reservation::Reserved { .. }),
            "{u} reserves: {r:?}"
        );
    }
}

async fn unpaid_orders_cancelled(db: OrdersDb) {
    const UNITS: u64 = 5;
    const WINDOW: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, UNITS, WINDOW).await;
    let (store, inv) = inventory_over(1, UNITS).await;
    let users: Vec<String> = (0..UNITS).map(|i| format!("u{i}")).collect();
    reserve_all(&inv, 1, &users, "t").await;
    assert!(inv.flagged_sold_out(1));
    assert_eq!(
        inv.reserve(1, "latecomer").await.expect("reserve"),
        Reservation::SoldOut
    );
    let purchases: Vec<PurchaseMessage> = users
        .iter()
        .enumerate()
        .map(|(i, u)| purchase(&format!("t{i}"), 1, u))
        .collect();
    publish(q.as_ref(), &purchases).await;
    let w = worker(&db, &q, Some(inv.clone()), &clock, 100);
    assert_eq!(drain(&w, q.as_ref()).await, purchases.len());
    let mut orders = Vec::new();
    for p in &purchases {
        let id = order_of(&db, &p.ticket).await;
        let o = db.order(&id).await.expect("order").expect("exists");
        assert_eq!(o.pay_by_ms, T0 + WINDOW);
        orders.push(id);
    }
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);

    // u0 pays in time.
    clock.advance(10);
    assert!(matches!(
        db.pay(&orders[0], "u0", clock.now_ms()).await.expect("pay"),
        Payment::Paid(_)
    ));

    // Just before the deadline: nothing is due, nothing is cancelled.
    let c = canceller(&db, &q, Some(inv.clone()), &clock, 100);
    let cm = c.metrics().clone();
    clock.set(T0 + WINDOW - 1);
    engine.tick().await.expect("tick");
    assert_eq!(
        c.step().await.expect("step"),
        0,
        "no pay-by message is due yet"
    );
    assert_eq!(
        c.sweep().await.expect("sweep"),
        0,
        "no order is overdue yet"
    );
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!((counts.pending, counts.paid, counts.cancelled), (4, 1, 0));
    assert_eq!(stock(&store, 1).await.holders, UNITS);
    assert!(inv.flagged_sold_out(1));

    // At the deadline the unpaid ones go, and only they.
    clock.set(T0 + WINDOW);
    engine.tick().await.expect("tick");
    assert_eq!(
        drain_deadlines(&c).await,
        UNITS as usize,
        "every pay-by message"
    );
    assert_eq!(lag(q.as_ref(), DEADLINES_TOPIC, CANCELLERS_GROUP).await, 0);
    assert_eq!(load(&cm.cancelled), UNITS - 1);
    assert_eq!(
        load(&cm.no_op),
        1,
        "the paid order's message changes nothing"
    );
    assert_eq!(load(&cm.released), UNITS - 1);
    assert_eq!(load(&cm.failed), 0);
    assert_eq!(status(&db, &orders[0]).await, OrderStatus::Paid);
    for id in &orders[1..] {
        let o = db.order(id).await.expect("order").expect("exists");
        assert_eq!(
            (o.status, o.cancelled_ms),
            (OrderStatus::Cancelled, Some(T0 + WINDOW))
        );
    }
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!((counts.pending, counts.paid, counts.cancelled), (0, 1, 4));
    assert_eq!(
        db.sale(1).await.expect("s").expect("s").units_left,
        UNITS - 1,
        "the units are back in the database"
    );
    let st = stock(&store, 1).await;
    assert_eq!(
        (st.left, st.holders),
        (UNITS - 1, 1),
        "and in the stock store"
    );
    assert!(!inv.flagged_sold_out(1), "the sale is no longer sold out");
    assert_eq!(c.sweep().await.expect("sweep"), 0, "nothing left to sweep");
    assert_conserved(&db, 1, Some(&store)).await;

    // A payment after the cancellation is refused; the buyers may buy again.
    assert!(matches!(
        db.pay(&orders[1], "u1", clock.now_ms()).await.expect("pay"),
        Payment::Cancelled(_)
    ));
    reserve_all(&inv, 1, &users[1..], "again-").await;
    assert_eq!(
        store.reserve(1, "u0").await.expect("reserve"),
        Reservation::AlreadyBought,
        "the payer keeps its unit"
    );
    let again: Vec<PurchaseMessage> = users[1..]
        .iter()
        .enumerate()
        .map(|(i, u)| purchase(&format!("again-{i}"), 1, u))
        .collect();
    publish(q.as_ref(), &again).await;
    assert_eq!(drain(&w, q.as_ref()).await, again.len());
    for p in &again {
        let id = order_of(&db, &p.ticket).await;
        assert_eq!(status(&db, &id).await, OrderStatus::Pending);
    }
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!((counts.pending, counts.paid, counts.cancelled), (4, 1, 4));
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 0);
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (0, UNITS));
    assert_conserved(&db, 1, Some(&store)).await;
    engine.close().expect("close the queue");
}
both_backends!(
    unpaid_orders_are_cancelled_at_their_deadline_and_sell_again,
    unpaid_orders_cancelled
);

async fn sweep_backstop(db: OrdersDb) {
    const WINDOW: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, 3, WINDOW).await;
    let (store, inv) = inventory_over(1, 3).await;
    reserve_all(&inv, 1, &["u0".to_string()], "t").await;
    // Decided, but its pay-by message never reached the queue.
    let d = db
        .decide_batch(&[purchase("t0", 1, "u0")], clock.now_ms())
        .await
        .expect("decide");
    let Decision::Ordered { order_id, .. } = &d[0] else {
        panic!("ordered: {d:?}")
    };
    let c = canceller(&db, &q, Some(inv.clone()), &clock, 100);
    let cm = c.metrics().clone();
    clock.set(T0 + WINDOW - 1);
    assert_eq!(c.sweep().await.expect("sweep"), 0, "not overdue yet");
    assert_eq!(status(&db, order_id).await, OrderStatus::Pending);
    clock.set(T0 + WINDOW);
    assert_eq!(
        c.step().await.expect("step"),
        0,
        "there is no pay-by message"
    );
    assert_eq!(status(&db, order_id).await, OrderStatus::Pending);
    assert_eq!(c.sweep().await.expect("sweep"), 1, "overdue: swept");
    let o = db.order(order_id).await.expect("order").expect("exists");
    assert_eq!(
        (o.status, o.cancelled_ms),
        (OrderStatus::Cancelled, Some(T0 + WINDOW))
    );
    assert_eq!((load(&cm.swept), load(&cm.cancelled)), (1, 0));
    assert_eq!(load(&cm.released), 1);
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 3);
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (3, 0));
    assert_eq!(c.sweep().await.expect("sweep"), 0, "once");
    assert_eq!(load(&cm.swept), 1);
    assert_conserved(&db, 1, Some(&store)).await;
    engine.close().expect("close the queue");
}
both_backends!(
    the_sweep_cancels_an_order_whose_pay_by_message_never_arrived,
    sweep_backstop
);

async fn pay_cancel_race(db: OrdersDb) {
    const ORDERS: u64 = 100;
    const WINDOW: u64 = 1_000;
    const CANCELLERS: usize = 2;
    /// How far ahead of the cancellers' progress a payment is made (two batches of 5).
    const FRONTIER: u64 = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, ORDERS, WINDOW).await;
    let (store, inv) = inventory_over(1, ORDERS).await;
    let users: Vec<String> = (0..ORDERS).map(|i| format!("u{i}")).collect();
    reserve_all(&inv, 1, &users, "t").await;
    let purchases: Vec<PurchaseMessage> = users
        .iter()
        .enumerate()
        .map(|(i, u)| purchase(&format!("t{i}"), 1, u))
        .collect();
    publish(q.as_ref(), &purchases).await;
    let w = worker(&db, &q, Some(inv.clone()), &clock, 100);
    assert_eq!(drain(&w, q.as_ref()).await, purchases.len());
    let mut orders = Vec::new();
    for p in &purchases {
        orders.push((order_of(&db, &p.ticket).await, p.user.clone()));
    }

    // The cancellers' clock (and the queue's) is at the deadline; the payers' is a moment
    // before it. Both conditions hold for every order: the status decides.
    clock.set(T0 + WINDOW);
    // Everyone starts at once.
    let start = Arc::new(tokio::sync::Barrier::new(CANCELLERS + orders.len()));
    let metrics = Arc::new(order_worker::canceller::CancellerMetrics::default());
    let mut cancellers = Vec::new();
    for _ in 0..CANCELLERS {
        // Small batches, so cancellations and payments interleave.
        let c = order_worker::canceller::Canceller::new(
            db.clone(),
            q.clone(),
            Some(inv.clone()),
            order_worker::canceller::CancellerConfig {
                batch_max: 5,
                wait_ms: 20,
                ..Default::default()
            },
            metrics.clone(),
            Arc::new(clock.clone()),
        );
        let (q, start) = (q.clone(), start.clone());
        cancellers.push(tokio::spawn(async move {
            start.wait().await;
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut fetched = 0;
            loop {
                // A step that finds the other canceller holding the rest long-polls
                // (wait_ms) rather than spinning.
                fetched += c.step().await.expect("canceller step");
                if lag(q.as_ref(), DEADLINES_TOPIC, CANCELLERS_GROUP).await == 0 {
                    return fetched;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cancellers did not finish within {WAIT:?}"
                );
            }
        }));
    }
    // Payer i starts once the cancellers have handled i - FRONTIER messages (they go in
    // offset order, i.e. order i's), so payments keep landing on the cancellers' frontier:
    // on orders in the batches being cancelled right now. The split is printed.
    let mut payments = Vec::new();
    for (i, (id, user)) in orders.iter().enumerate() {
        let (db, id, user, start) = (db.clone(), id.clone(), user.clone(), start.clone());
        let handled = metrics.clone();
        payments.push(tokio::spawn(async move {
            start.wait().await;
            let at = (i as u64).saturating_sub(FRONTIER);
            crate::wait_until("the cancellers to approach", WAIT, || {
                let h = load(&handled.cancelled) + load(&handled.no_op);
                async move { h >= at }
            })
            .await;
            db.pay(&id, &user, T0 + WINDOW - 1).await
        }));
    }
    let mut won_by_payment = HashSet::new();
    for (p, (id, _)) in payments.into_iter().zip(&orders) {
        match p.await.expect("payment task") {
            Ok(Payment::Paid(_)) => {
                won_by_payment.insert(id.clone());
            }
            Ok(Payment::Cancelled(_)) => {}
            Ok(other) => panic!("order {id}: unexpected payment answer {other:?}"),
            // A lost race may surface as a transient error, never as a second winner.
            Err(e) => assert!(e.is_transient(), "order {id}: {e}"),
        }
    }
    let mut fetched = 0;
    for c in cancellers {
        fetched += c.await.expect("canceller task");
    }
    assert_eq!(lag(q.as_ref(), DEADLINES_TOPIC, CANCELLERS_GROUP).await, 0);
    assert_eq!(fetched as u64, ORDERS, "each pay-by message handled once");

    let mut cancelled = 0u64;
    for (id, _) in &orders {
        match status(&db, id).await {
            OrderStatus::Paid => assert!(
                won_by_payment.contains(id),
                "{id} is paid but its payment lost"
            ),
            OrderStatus::Cancelled => {
                assert!(!won_by_payment.contains(id), "{id}: both won");
                cancelled += 1;
            }
            OrderStatus::Pending => panic!("{id}: neither won"),
        }
    }
    let paid = won_by_payment.len() as u64;
    eprintln!("{} race: {paid} paid, {cancelled} cancelled", db.backend());
    assert_eq!(paid + cancelled, ORDERS);
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!(
        (counts.pending, counts.paid, counts.cancelled),
        (0, paid, cancelled)
    );
    assert_eq!(load(&metrics.cancelled), cancelled);
    assert_eq!(load(&metrics.no_op), paid);
    assert_eq!(load(&metrics.released), cancelled);
    assert_eq!(load(&metrics.failed), 0);
    assert_eq!(
        db.sale(1).await.expect("s").expect("s").units_left,
        cancelled
    );
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (cancelled, paid));
    assert_conserved(&db, 1, Some(&store)).await;
    engine.close().expect("close the queue");
}
both_backends!(
    paying_and_cancelling_race_and_exactly_one_wins,
    pay_cancel_race
);

/// A canceller killed between its commit and its stock release (simulated: the
/// cancellation committed, nothing released) gives the unit back when the pay-by message is
/// delivered again; a later repeat of that release never takes the buyer's newer
/// reservation (releases are tagged with the order's ticket).
async fn release_after_a_crash(db: OrdersDb) {
    const WINDOW: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = engine(dir.path(), &clock);
    let q: Arc<dyn Queue> = engine.clone();
    sale(&db, 1, 2, WINDOW).await;
    let (store, inv) = inventory_over(1, 2).await;
    reserve_all(&inv, 1, &["u0".to_string()], "t").await;
    publish(q.as_ref(), &[purchase("t0", 1, "u0")]).await;
    let w = worker(&db, &q, Some(inv.clone()), &clock, 100);
    assert_eq!(drain(&w, q.as_ref()).await, 1);
    let order = order_of(&db, "t0").await;
    clock.advance(WINDOW);
    // The crashed canceller's commit: cancelled in the database, the unit still held.
    assert_eq!(
        db.cancel_due(std::slice::from_ref(&order), clock.now_ms())
            .await
            .expect("cancel")
            .len(),
        1
    );
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (1, 1), "the unit leaked for now");
    // The pay-by message comes (again): nothing to cancel, the unit is released.
    engine.tick().await.expect("tick");
    let c = canceller(&db, &q, Some(inv.clone()), &clock, 100);
    assert_eq!(drain_deadlines(&c).await, 1);
    assert_eq!(load(&c.metrics().cancelled), 0, "cancelled once, before");
    assert_eq!(load(&c.metrics().released), 1);
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (2, 0));
    assert_conserved(&db, 1, Some(&store)).await;
    // u0 buys again; another copy of the old pay-by message must not take the new unit.
    assert!(matches!(
        inv.reserve_as(1, "u0", "t-new").await.expect("reserve"),
        Reservation::Reserved { .. }
    ));
    let copy = order_worker::Deadline {
        order_id: order.clone(),
        pay_by_ms: T0 + WINDOW,
    };
    let body = serde_json::to_vec(&copy).expect("encode");
    q.publish(DEADLINES_TOPIC, queue::Message::new(body))
        .await
        .expect("publish a copy");
    assert_eq!(drain_deadlines(&c).await, 1);
    let st = stock(&store, 1).await;
    assert_eq!((st.left, st.holders), (1, 1), "u0's new reservation stands");
    engine.close().expect("close the queue");
}
both_backends!(
    a_release_lost_in_a_crash_happens_on_the_redelivery,
    release_after_a_crash
);
