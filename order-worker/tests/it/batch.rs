//! One batch over several sales, on both backends: the batch's statements (on PostgreSQL
//! one round trip that recalls earlier decisions and locks every sale of the batch, and one
//! that takes the units and writes every order and outcome) decide each purchase as the
//! rules say, whatever the order of the sales in the batch, and a whole batch delivered
//! again changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use order_worker::db::{Decision, OrdersDb, reason};

use crate::{both_backends, purchase};

/// A sale of `units` with a per-person `limit` and a minute to pay.
async fn sale_with_limit(db: &OrdersDb, id: u64, units: u64, limit: u32) {
    crate::sale_with_limit(db, id, units, 60_000, Some(limit)).await;
}

/// What a decision says, without its order id: `"ordered"` or the reason.
fn said(d: &Decision) -> &str {
    match d {
        Decision::Ordered { .. } => "ordered",
        Decision::Rejected { reason, .. } => reason.as_str(),
    }
}

fn order_id(d: &Decision) -> Option<&str> {
    match d {
        Decision::Ordered { order_id, .. } => Some(order_id.as_str()),
        Decision::Rejected { .. } => None,
    }
}

/// Sale 1: 2 units, one per person; sale 2: 3 units, two per person; sale 9 unknown. One
/// batch mixes them (sale 2 first, so the batch's order is not the lock order), with a
/// redelivery of a ticket decided in an earlier batch and a repeat of a ticket inside the
/// batch.
async fn mixed_batch(db: OrdersDb) {
    sale_with_limit(&db, 1, 2, 1).await;
    sale_with_limit(&db, 2, 3, 2).await;
    let earlier = db
        .decide_batch(&[purchase("a", 2, "ann")], 500)
        .await
        .expect("decide the earlier batch");
    assert_eq!(said(&earlier[0]), "ordered");
    let batch = vec![
        purchase("b1", 2, "bob"),
        purchase("x1", 1, "ann"),
        purchase("a", 2, "ann"),  // decided in the earlier batch
        purchase("b2", 2, "bob"), // bob's second unit: allowed (limit 2)
        purchase("b3", 2, "bob"), // bob's third: refused, he holds two
        purchase("u1", 9, "zed"), // no such sale
        purchase("x2", 1, "cat"),
        purchase("x1", 1, "ann"), // a repeat inside the batch: x1's decision again
        purchase("x3", 1, "dan"), // sale 1 has no unit left
        purchase("c1", 2, "cat"), // sale 2: a, b1, b2 took its 3 units
        purchase("a2", 2, "ann"), // ann holds 1 of 2, but no unit is left
    ];
    let d = db.decide_batch(&batch, 1_000).await.expect("decide");
    let says: Vec<&str> = d.iter().map(said).collect();
    assert_eq!(
        says,
        vec![
            "ordered",
            "ordered",
            "ordered",
            "ordered",
            reason::ALREADY_BOUGHT,
            reason::NO_SUCH_SALE,
            "ordered",
            "ordered",
            reason::SOLD_OUT,
            reason::SOLD_OUT,
            reason::SOLD_OUT,
        ]
    );
    let fresh: Vec<bool> = d.iter().map(Decision::fresh).collect();
    assert_eq!(
        fresh,
        vec![
            true, true, false, true, true, true, true, false, true, true, true
        ],
        "the earlier ticket and the repeat are not decided again"
    );
    assert_eq!(
        order_id(&d[2]),
        order_id(&earlier[0]),
        "a's order is the earlier one"
    );
    assert_eq!(
        order_id(&d[7]),
        order_id(&d[1]),
        "the repeat shares x1's order"
    );
    for (sale, units_left) in [(1, 0), (2, 0)] {
        let s = db.sale(sale).await.expect("sale").expect("exists");
        assert_eq!(s.units_left, units_left, "sale {sale}");
        crate::assert_conserved(&db, sale, None).await;
    }
    assert_eq!(db.order_counts(1).await.expect("counts").pending, 2);
    assert_eq!(db.order_counts(2).await.expect("counts").pending, 3);
    // Ordered and rejected outcomes per sale: each ticket recorded once.
    assert_eq!(db.outcome_counts(1).await.expect("outcomes"), (2, 1));
    assert_eq!(db.outcome_counts(2).await.expect("outcomes"), (3, 3));
    assert_eq!(db.outcome_counts(9).await.expect("outcomes"), (0, 1));
    let u1 = db.outcome("u1").await.expect("outcome").expect("decided");
    assert_eq!(u1.reason.as_deref(), Some(reason::NO_SUCH_SALE));
    // The whole batch again (a redelivery after a crash before the ack): the same
    // decisions, none fresh, nothing taken or written.
    let again = db.decide_batch(&batch, 2_000).await.expect("decide again");
    assert_eq!(again.iter().map(said).collect::<Vec<_>>(), says);
    assert!(again.iter().all(|d| !d.fresh()));
    let ids: Vec<Option<&str>> = d.iter().map(order_id).collect();
    assert_eq!(again.iter().map(order_id).collect::<Vec<_>>(), ids);
    assert_eq!(db.order_counts(1).await.expect("counts").pending, 2);
    assert_eq!(db.order_counts(2).await.expect("counts").pending, 3);
    assert_eq!(db.outcome_counts(2).await.expect("outcomes"), (3, 3));
}
both_backends!(
    a_batch_over_three_sales_decides_each_by_the_rules,
    mixed_batch
);

/// Four deciders at once on two scarce sales, each batch naming both sales in the opposite
/// order to the lock order: no deadlock, exactly the units sold, one order per person.
async fn concurrent_over_two_sales(db: OrdersDb) {
    const UNITS: u64 = 20;
    const PEOPLE: usize = 60;
    sale_with_limit(&db, 1, UNITS, 1).await;
    sale_with_limit(&db, 2, UNITS, 1).await;
    let all: Vec<_> = (0..PEOPLE * 2)
        .map(|i| {
            // Sale 2, then sale 1, alternately: everyone tries each sale once.
            let sale = 2 - (i % 2) as u64;
            purchase(&format!("t{i}"), sale, &format!("user-{}", i / 2))
        })
        .collect();
    let all = Arc::new(all);
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (db, all) = (db.clone(), all.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                // Every fourth run of 6 purchases: 3 of each sale, sale 2 first.
                for chunk in all.chunks(6).skip(w).step_by(4) {
                    let d = db.decide_batch(chunk, 0).await.expect("decide");
                    out.extend(chunk.iter().map(|p| (p.sale, p.user.clone())).zip(d));
                }
                out
            })
        })
        .collect();
    let mut ordered: HashMap<u64, Vec<String>> = HashMap::new();
    for t in tasks {
        for ((sale, user), d) in t.await.expect("join") {
            match d {
                Decision::Ordered { .. } => ordered.entry(sale).or_default().push(user),
                Decision::Rejected { reason: r, .. } => assert_eq!(r, reason::SOLD_OUT),
            }
        }
    }
    for sale in [1, 2] {
        let mut buyers = ordered.remove(&sale).unwrap_or_default();
        assert_eq!(
            buyers.len() as u64,
            UNITS,
            "sale {sale}: exactly its units sold"
        );
        buyers.sort();
        buyers.dedup();
        assert_eq!(
            buyers.len() as u64,
            UNITS,
            "sale {sale}: one order per person"
        );
        let s = db.sale(sale).await.expect("sale").expect("exists");
        assert_eq!(s.units_left, 0);
        crate::assert_conserved(&db, sale, None).await;
    }
}
both_backends!(
    concurrent_batches_over_two_sales_sell_exactly_the_units,
    concurrent_over_two_sales
);
