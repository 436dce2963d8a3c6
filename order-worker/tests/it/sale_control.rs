//! Operator control of a sale (migration 0009) on both backends: pause and resume, end now
//! (a live sale and one not started), edit before the start only and never with orders, and
//! the order look-up by id, ticket or user; and on two shards, each change on the sale's own
//! shard.

use order_worker::db::{Decision, NewSale, OrdersDb, SaleChange, SaleEdit};

use crate::{both_backends, purchase, sale};

/// Now, for these tests (the sales of `sale` start at 0).
const NOW: u64 = 10_000;

fn changed(c: SaleChange) -> order_worker::db::Sale {
    match c {
        SaleChange::Changed(s) => s,
        other => panic!("not changed: {other:?}"),
    }
}

fn refused(c: SaleChange) -> &'static str {
    match c {
        SaleChange::Refused { code, .. } => code,
        other => panic!("not refused: {other:?}"),
    }
}

async fn upcoming(db: &OrdersDb, id: u64, units: u64) {
    db.create_sale(
        &NewSale {
            id,
            name: format!("sale {id}"),
            price_cents: 100,
            units,
            starts_at_ms: NOW + 60_000,
            pay_window_ms: None,
            ends_at_ms: None,
            token_factor: None,
            per_user_limit: None,
            stock_buckets: None,
        },
        0,
    )
    .await
    .expect("create sale");
}

async fn pause_resume_end(db: OrdersDb) {
    sale(&db, 1, 5, 60_000).await;
    let s = changed(db.set_paused(1, true, NOW).await.expect("pause"));
    assert!(s.paused);
    assert!(
        db.sale(1).await.expect("ok").expect("sale").paused,
        "stored"
    );
    assert!(db.sales().await.expect("ok")[0].paused, "listed");
    let s = changed(db.set_paused(1, false, NOW).await.expect("resume"));
    assert!(!s.paused);
    let s = changed(db.end_sale(1, NOW).await.expect("end"));
    assert_eq!(
        (s.ends_at_ms, s.ended_ms, s.starts_at_ms),
        (Some(NOW), Some(NOW), 0)
    );
    assert_eq!(
        refused(db.end_sale(1, NOW + 1).await.expect("ok")),
        "sale_ended"
    );
    assert_eq!(
        refused(db.set_paused(1, true, NOW + 1).await.expect("ok")),
        "sale_ended"
    );
    assert_eq!(
        db.set_paused(9, true, NOW).await.expect("ok"),
        SaleChange::NoSuchSale
    );
    assert_eq!(
        db.end_sale(9, NOW).await.expect("ok"),
        SaleChange::NoSuchSale
    );
    // A sale not started yet ends at once too (its start moves just before the end).
    upcoming(&db, 2, 3).await;
    let s = changed(db.end_sale(2, NOW).await.expect("end"));
    assert!(s.starts_at_ms < NOW && s.ends_at_ms == Some(NOW), "{s:?}");
}
both_backends!(a_sale_is_paused_resumed_and_ended, pause_resume_end);

async fn edits(db: OrdersDb) {
    upcoming(&db, 1, 5).await;
    let edit = SaleEdit {
        name: Some("Lamp".into()),
        price_cents: Some(250),
        units: Some(8),
        starts_at_ms: Some(NOW + 120_000),
        ends_at_ms: Some(NOW + 180_000),
        no_end: false,
    };
    let s = changed(db.edit_sale(1, &edit, NOW).await.expect("edit"));
    assert_eq!(
        (
            s.name.as_str(),
            s.price_cents,
            s.units,
            s.units_left,
            s.starts_at_ms,
            s.ends_at_ms
        ),
        ("Lamp", 250, 8, 8, NOW + 120_000, Some(NOW + 180_000))
    );
    let s = changed(
        db.edit_sale(
            1,
            &SaleEdit {
                no_end: true,
                ..SaleEdit::default()
            },
            NOW,
        )
        .await
        .expect("edit"),
    );
    assert_eq!(
        (s.ends_at_ms, s.name.as_str()),
        (None, "Lamp"),
        "the rest kept"
    );
    // Out of range: refused as at creation.
    for bad in [
        SaleEdit {
            units: Some(0),
            ..SaleEdit::default()
        },
        SaleEdit {
            name: Some(String::new()),
            ..SaleEdit::default()
        },
        SaleEdit {
            ends_at_ms: Some(NOW),
            ..SaleEdit::default()
        },
    ] {
        assert!(db.edit_sale(1, &bad, NOW).await.is_err(), "{bad:?}");
    }
    assert_eq!(db.sale(1).await.expect("ok").expect("sale").units, 8);
    // Started: refused.
    let later = SaleEdit {
        units: Some(3),
        ..SaleEdit::default()
    };
    assert_eq!(
        refused(db.edit_sale(1, &later, NOW + 120_000).await.expect("ok")),
        "sale_started"
    );
    // With an order (the workers decide what the gateways queued, whatever the clock says):
    // refused, the units kept.
    upcoming(&db, 2, 5).await;
    let d = db
        .decide_batch(&[purchase("t1", 2, "ann")], NOW)
        .await
        .expect("decide");
    assert!(matches!(d[0], Decision::Ordered { .. }));
    assert_eq!(
        refused(db.edit_sale(2, &later, NOW).await.expect("ok")),
        "sale_has_orders"
    );
    assert_eq!(db.sale(2).await.expect("ok").expect("sale").units, 5);
    assert_eq!(
        db.edit_sale(9, &later, NOW).await.expect("ok"),
        SaleChange::NoSuchSale
    );
}
both_backends!(a_sale_is_edited_only_before_its_start, edits);

async fn lookups(db: OrdersDb) {
    sale(&db, 1, 5, 60_000).await;
    let d = db
        .decide_batch(
            &[purchase("t-ann", 1, "ann"), purchase("t-bob", 1, "bob")],
            NOW,
        )
        .await
        .expect("decide");
    let Decision::Ordered { order_id, .. } = &d[0] else {
        panic!("{d:?}");
    };
    for q in ["ann", "t-ann", order_id.as_str(), " ann "] {
        let found = db.find_orders(q, 10).await.expect("find");
        assert_eq!(found.len(), 1, "{q}");
        assert_eq!(
            (found[0].user.as_str(), &found[0].id),
            ("ann", order_id),
            "{q}"
        );
    }
    assert!(db.find_orders("nobody", 10).await.expect("ok").is_empty());
    assert!(db.find_orders("", 10).await.expect("ok").is_empty());
    assert!(
        db.find_orders("bob", 0).await.expect("ok").is_empty(),
        "limit 0"
    );
}
both_backends!(orders_are_found_by_id_ticket_or_user, lookups);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_go_to_the_sales_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = format!(
        "sqlite:{} sqlite:{}",
        dir.path().join("s0.db").display(),
        dir.path().join("s1.db").display()
    );
    let db = OrdersDb::connect(&urls, &Default::default())
        .await
        .expect("connect");
    // The emptiest shard takes each new sale: 1 on shard 0, 2 on shard 1.
    sale(&db, 1, 5, 60_000).await;
    upcoming(&db, 2, 5).await;
    assert_eq!(db.shard_of(2).await.expect("route"), 1);
    changed(db.set_paused(2, true, NOW).await.expect("pause"));
    let on_1 = db
        .shard(1)
        .expect("shard 1")
        .sale(2)
        .await
        .expect("ok")
        .expect("sale");
    assert!(on_1.paused);
    let edit = SaleEdit {
        units: Some(9),
        ..SaleEdit::default()
    };
    changed(db.edit_sale(2, &edit, NOW).await.expect("edit"));
    assert_eq!(
        db.shard(1)
            .expect("shard 1")
            .sale(2)
            .await
            .expect("ok")
            .expect("sale")
            .units,
        9
    );
    db.decide_batch(&[purchase("t", 2, "cy")], NOW + 60_000)
        .await
        .expect("decide");
    let found = db.find_orders("cy", 10).await.expect("find");
    assert_eq!(found.len(), 1);
    changed(db.end_sale(1, NOW).await.expect("end"));
    assert!(
        db.shard(0)
            .expect("shard 0")
            .sale(1)
            .await
            .expect("ok")
            .expect("sale")
            .ended_ms
            .is_some()
    );
}
