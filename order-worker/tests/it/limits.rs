//! Per-sale limits of N units per person, on both backends: the decision grants a buyer's
//! orders while they hold fewer than N active ones, each in its own slot, and refuses the
//! next `already_bought`; concurrent deciders never give anyone more than N; the unique
//! index on (sale, user, slot) among active orders stands behind the decision.

use std::collections::HashMap;
use std::sync::Arc;

use order_worker::db::{Decision, NewSale, OrdersDb, reason};

use crate::{both_backends, purchase};

fn rejected(d: &Decision) -> Option<&str> {
    match d {
        Decision::Rejected { reason, .. } => Some(reason.as_str()),
        Decision::Ordered { .. } => None,
    }
}

async fn limited_sale(db: &OrdersDb, id: u64, units: u64, limit: u32) {
    let made = db
        .create_sale(
            &NewSale {
                id,
                name: format!("sale {id}"),
                price_cents: 100,
                units,
                starts_at_ms: 0,
                pay_window_ms: Some(1_000),
                ends_at_ms: None,
                token_factor: None,
                per_user_limit: Some(limit),
                stock_buckets: None,
            },
            0,
        )
        .await
        .expect("create sale");
    assert_eq!(made.per_user_limit, limit);
    assert_eq!(
        db.sale(id).await.expect("read").map(|s| s.per_user_limit),
        Some(limit)
    );
}

/// The slots of `user`'s active orders of `sale`, ascending.
async fn active_slots(db: &OrdersDb, sale: i64, user: &str) -> Vec<i64> {
    const SQL: &str = "SELECT CAST(slot AS BIGINT) FROM orders \
                       WHERE sale_id = $1 AND user_id = $2 AND status <> 'cancelled' ORDER BY slot";
    let mut slots: Vec<i64> = match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query_scalar(SQL)
            .bind(sale)
            .bind(user)
            .fetch_all(p)
            .await
            .expect("slots"),
        order_worker::db::Shard::Postgres(p) => sqlx::query_scalar(SQL)
            .bind(sale)
            .bind(user)
            .fetch_all(p)
            .await
            .expect("slots"),
    };
    slots.sort_unstable();
    slots
}

async fn raw(db: &OrdersDb, sql: &'static str) -> Result<(), sqlx::Error> {
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        order_worker::db::Shard::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
}

async fn limit_of_two(db: OrdersDb) {
    limited_sale(&db, 1, 10, 2).await;
    // ann buys three times in one batch: the third is refused.
    let d = db
        .decide_batch(
            &[
                purchase("a1", 1, "ann"),
                purchase("a2", 1, "ann"),
                purchase("a3", 1, "ann"),
            ],
            0,
        )
        .await
        .expect("decide");
    let reasons: Vec<Option<&str>> = d.iter().map(rejected).collect();
    assert_eq!(reasons, vec![None, None, Some(reason::ALREADY_BOUGHT)]);
    assert_eq!(active_slots(&db, 1, "ann").await, vec![0, 1]);
    // bob buys three times in three batches: the same.
    for (t, want) in [
        ("b1", None),
        ("b2", None),
        ("b3", Some(reason::ALREADY_BOUGHT)),
    ] {
        let d = db
            .decide_batch(&[purchase(t, 1, "bob")], 10)
            .await
            .expect("decide");
        assert_eq!(rejected(&d[0]), want, "{t}");
    }
    assert_eq!(active_slots(&db, 1, "bob").await, vec![0, 1]);
    // A redelivery finds its decision and changes nothing.
    let again = db
        .decide_batch(&[purchase("a2", 1, "ann"), purchase("a3", 1, "ann")], 20)
        .await
        .expect("decide");
    assert!(matches!(again[0], Decision::Ordered { fresh: false, .. }));
    assert_eq!(rejected(&again[1]), Some(reason::ALREADY_BOUGHT));
    let s = db.sale(1).await.expect("sale").expect("exists");
    assert_eq!(s.units_left, 6);
    assert_eq!(db.order_counts(1).await.expect("counts").active(), 4);
    // ann's first order cancelled at its pay-by time: her slot 0 is free, the next purchase
    // takes it, and the one after is refused again.
    let Decision::Ordered { order_id, .. } = &d_first(&db, "a1").await else {
        panic!("a1 ordered")
    };
    let c = db
        .cancel_due(std::slice::from_ref(order_id), 1_000)
        .await
        .expect("cancel");
    assert_eq!(c.len(), 1);
    assert_eq!(active_slots(&db, 1, "ann").await, vec![1]);
    let d = db
        .decide_batch(&[purchase("a4", 1, "ann"), purchase("a5", 1, "ann")], 2_000)
        .await
        .expect("decide");
    assert_eq!(rejected(&d[0]), None);
    assert_eq!(rejected(&d[1]), Some(reason::ALREADY_BOUGHT));
    assert_eq!(active_slots(&db, 1, "ann").await, vec![0, 1]);
    crate::assert_conserved(&db, 1, None).await;
    // The schema refuses a third active order whoever writes it: a slot already taken, or
    // a slot outside 0..=9.
    for sql in [
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) \
         VALUES ('x1', 'rx1', 1, 'ann', 100, 'pending', 0, 1000, 1)",
        "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) \
         VALUES ('x2', 'rx2', 1, 'ann', 100, 'pending', 0, 1000, 10)",
    ] {
        assert!(raw(&db, sql).await.is_err(), "the schema refuses: {sql}");
    }
}
both_backends!(a_limit_of_two_refuses_the_third_purchase, limit_of_two);

/// The decision recorded for `ticket` (a redelivery of a single purchase).
async fn d_first(db: &OrdersDb, ticket: &str) -> Decision {
    let out = db.outcome(ticket).await.expect("outcome").expect("decided");
    let d = db
        .decide_batch(&[purchase(ticket, out.sale, &out.user)], 0)
        .await
        .expect("decide");
    d.into_iter().next().expect("one decision")
}

async fn a_limit_of_one_is_the_old_rule(db: OrdersDb) {
    limited_sale(&db, 2, 10, 1).await;
    let d = db
        .decide_batch(&[purchase("c1", 2, "cat"), purchase("c2", 2, "cat")], 0)
        .await
        .expect("decide");
    assert_eq!(rejected(&d[0]), None);
    assert_eq!(rejected(&d[1]), Some(reason::ALREADY_BOUGHT));
    assert_eq!(active_slots(&db, 2, "cat").await, vec![0]);
    // Without the slot column named, an order takes slot 0: the old one-per-person index.
    assert!(
        raw(
            &db,
            "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms) \
             VALUES ('y1', 'ry1', 2, 'cat', 100, 'pending', 0, 1000)"
        )
        .await
        .is_err()
    );
}
both_backends!(
    a_limit_of_one_keeps_one_active_order,
    a_limit_of_one_is_the_old_rule
);

/// Four deciders at once, 30 people buying 5 times each on a sale with a limit of 2 and
/// units for everyone: each person ends with exactly 2 active orders, every other purchase
/// refused `already_bought`.
async fn concurrent_deciders(db: OrdersDb) {
    const PEOPLE: usize = 30;
    const TRIES: usize = 5;
    limited_sale(&db, 3, 1_000, 2).await;
    let all: Vec<_> = (0..PEOPLE * TRIES)
        .map(|i| purchase(&format!("t{i}"), 3, &format!("user-{}", i % PEOPLE)))
        .collect();
    let all = Arc::new(all);
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (db, all) = (db.clone(), all.clone());
            tokio::spawn(async move {
                let mine: Vec<_> = all.iter().skip(w).step_by(4).cloned().collect();
                let mut out = Vec::new();
                for chunk in mine.chunks(5) {
                    let d = db.decide_batch(chunk, 0).await.expect("decide");
                    out.extend(chunk.iter().map(|p| p.user.clone()).zip(d));
                }
                out
            })
        })
        .collect();
    let mut ordered: HashMap<String, usize> = HashMap::new();
    let mut refused = 0;
    for t in tasks {
        for (user, d) in t.await.expect("join") {
            match rejected(&d) {
                None => *ordered.entry(user).or_default() += 1,
                Some(r) => {
                    assert_eq!(r, reason::ALREADY_BOUGHT);
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(ordered.len(), PEOPLE);
    assert!(ordered.values().all(|n| *n == 2), "{ordered:?}");
    assert_eq!(refused, PEOPLE * (TRIES - 2));
    for p in 0..PEOPLE {
        assert_eq!(active_slots(&db, 3, &format!("user-{p}")).await, vec![0, 1]);
    }
    let s = db.sale(3).await.expect("sale").expect("exists");
    assert_eq!(s.units_left, 1_000 - 2 * PEOPLE as u64);
    crate::assert_conserved(&db, 3, None).await;
}
both_backends!(
    concurrent_deciders_never_exceed_the_limit,
    concurrent_deciders
);
