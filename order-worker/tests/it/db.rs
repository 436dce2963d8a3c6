//! The orders database's decisions, on both backends.

use order_worker::db::{DbError, Decision, NewSale, OrderStatus, OrdersDb, Payment, Sale, reason};

use crate::{both_backends, purchase, sale};

fn rejected(d: &Decision) -> Option<&str> {
    match d {
        Decision::Rejected { reason, .. } => Some(reason.as_str()),
        Decision::Ordered { .. } => None,
    }
}

async fn grants_up_to_units_left(db: OrdersDb) {
    sale(&db, 1, 3, 60_000).await;
    let batch = vec![
        purchase("t1", 1, "ann"),
        purchase("t2", 1, "bob"),
        purchase("t3", 1, "ann"), // a repeat of ann in the same batch
        purchase("t4", 1, "cat"),
        purchase("t5", 1, "dan"),
        purchase("t6", 1, "eve"),
        purchase("t6b", 1, "eve"), // eve again: still sold out (she holds nothing)
        purchase("t7", 9, "ann"),  // no such sale
    ];
    let d = db.decide_batch(&batch, 1_000).await.expect("decide");
    let reasons: Vec<Option<&str>> = d.iter().map(rejected).collect();
    assert_eq!(
        reasons,
        vec![
            None,
            None,
            Some(reason::ALREADY_BOUGHT),
            None,
            Some(reason::SOLD_OUT),
            Some(reason::SOLD_OUT),
            Some(reason::SOLD_OUT),
            Some(reason::NO_SUCH_SALE),
        ]
    );
    assert!(d.iter().all(Decision::fresh));
    let s = db.sale(1).await.expect("sale").expect("exists");
    assert_eq!(s.units_left, 0);
    let c = db.order_counts(1).await.expect("counts");
    assert_eq!((c.pending, c.paid, c.cancelled), (3, 0, 0));
    assert_eq!(db.outcome_counts(1).await.expect("outcomes"), (3, 4));
    let Decision::Ordered {
        order_id,
        pay_by_ms,
        ..
    } = &d[0]
    else {
        panic!("t1 ordered")
    };
    assert_eq!(*pay_by_ms, 61_000);
    let o = db.order(order_id).await.expect("order").expect("exists");
    assert_eq!(
        (o.ticket.as_str(), o.user.as_str(), o.status, o.pay_by_ms),
        ("t1", "ann", OrderStatus::Pending, 61_000)
    );
    let out = db.outcome("t5").await.expect("outcome").expect("decided");
    assert_eq!(out.reason.as_deref(), Some(reason::SOLD_OUT));
    assert!(db.outcome("nope").await.expect("outcome").is_none());
    // Units left never below zero, whatever a caller tries.
    let more = db
        .decide_batch(&[purchase("t8", 1, "fay")], 2_000)
        .await
        .expect("decide");
    assert_eq!(rejected(&more[0]), Some(reason::SOLD_OUT));
}
both_backends!(
    grants_up_to_units_left_and_rejects_the_rest,
    grants_up_to_units_left
);

async fn same_message_many_times(db: OrdersDb) {
    sale(&db, 1, 100, 60_000).await;
    for k in 1..=5u64 {
        let ticket = format!("ticket-{k}");
        let user = format!("user-{k}");
        let p = purchase(&ticket, 1, &user);
        // k deliveries: some in one batch, the rest one batch each.
        let together: Vec<_> = (0..k.div_ceil(2)).map(|_| p.clone()).collect();
        let mut seen = db.decide_batch(&together, 10).await.expect("decide");
        for _ in together.len() as u64..k {
            seen.extend(
                db.decide_batch(std::slice::from_ref(&p), 20)
                    .await
                    .expect("decide"),
            );
        }
        assert_eq!(seen.len() as u64, k);
        let ids: Vec<&str> = seen
            .iter()
            .map(|d| match d {
                Decision::Ordered { order_id, .. } => order_id.as_str(),
                Decision::Rejected { reason, .. } => panic!("rejected: {reason}"),
            })
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "one order id: {ids:?}");
        assert_eq!(seen.iter().filter(|d| d.fresh()).count(), 1);
        let s = db.sale(1).await.expect("sale").expect("exists");
        assert_eq!(s.units_left, 100 - k, "one decrement per purchase");
        assert_eq!(db.order_counts(1).await.expect("counts").pending, k);
    }
}
both_backends!(
    the_same_message_1_to_5_times_gives_one_order,
    same_message_many_times
);

async fn active_order_blocks_a_repeat(db: OrdersDb) {
    sale(&db, 1, 10, 1_000).await;
    let first = db
        .decide_batch(&[purchase("a1", 1, "ann")], 0)
        .await
        .expect("decide");
    let Decision::Ordered { order_id, .. } = &first[0] else {
        panic!("ordered")
    };
    let again = db
        .decide_batch(&[purchase("a2", 1, "ann")], 10)
        .await
        .expect("decide");
    assert_eq!(rejected(&again[0]), Some(reason::ALREADY_BOUGHT));
    // Cancelled at its pay-by time, the unit is back and ann may buy again.
    let c = db
        .cancel_due(std::slice::from_ref(order_id), 1_000)
        .await
        .expect("cancel");
    assert_eq!(c.len(), 1);
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 10);
    let third = db
        .decide_batch(&[purchase("a3", 1, "ann")], 2_000)
        .await
        .expect("decide");
    assert!(rejected(&third[0]).is_none());
    assert_eq!(db.active_holders(1).await.expect("holders"), vec!["ann"]);
}
both_backends!(
    an_active_order_blocks_a_repeat_and_a_cancelled_one_does_not,
    active_order_blocks_a_repeat
);

async fn cancel_only_pending_and_due(db: OrdersDb) {
    sale(&db, 1, 10, 1_000).await;
    let batch: Vec<_> = (0..4)
        .map(|i| purchase(&format!("c{i}"), 1, &format!("u{i}")))
        .collect();
    let d = db.decide_batch(&batch, 0).await.expect("decide");
    let ids: Vec<String> = d
        .iter()
        .map(|d| match d {
            Decision::Ordered { order_id, .. } => order_id.clone(),
            Decision::Rejected { .. } => panic!("ordered"),
        })
        .collect();
    // u0 pays in time; nothing is due before 1,000.
    assert!(matches!(
        db.pay(&ids[0], "u0", 999).await,
        Ok(Payment::Paid(_))
    ));
    assert!(matches!(
        db.pay(&ids[0], "u0", 999).await,
        Ok(Payment::AlreadyPaid(_))
    ));
    assert!(matches!(
        db.pay(&ids[1], "someone-else", 10).await,
        Ok(Payment::NotFound)
    ));
    assert!(db.cancel_due(&ids, 999).await.expect("cancel").is_empty());
    assert_eq!(db.overdue(999, 100).await.expect("overdue").len(), 0);
    assert_eq!(db.overdue(1_000, 100).await.expect("overdue").len(), 3);
    // At 1,000 the unpaid ones go, once.
    let c = db.cancel_due(&ids, 1_000).await.expect("cancel");
    assert_eq!(c.len(), 3);
    assert!(db.cancel_due(&ids, 5_000).await.expect("again").is_empty());
    assert!(matches!(
        db.pay(&ids[1], "u1", 1_001).await,
        Ok(Payment::Cancelled(_))
    ));
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!((counts.pending, counts.paid, counts.cancelled), (0, 1, 3));
    assert_eq!(db.sale(1).await.expect("s").expect("s").units_left, 9);
    // A payment past the deadline while the cancellation has not run yet is refused too.
    let late = db
        .decide_batch(&[purchase("c9", 1, "u9")], 10_000)
        .await
        .expect("decide");
    let Decision::Ordered { order_id, .. } = &late[0] else {
        panic!("ordered")
    };
    assert!(matches!(
        db.pay(order_id, "u9", 11_000).await,
        Ok(Payment::TooLate(_))
    ));
}
both_backends!(
    cancel_due_touches_only_pending_orders_past_their_deadline,
    cancel_only_pending_and_due
);

async fn pay_cancel_race(db: OrdersDb) {
    const ORDERS: usize = 200;
    sale(&db, 1, ORDERS as u64, 1_000).await;
    let batch: Vec<_> = (0..ORDERS)
        .map(|i| purchase(&format!("r{i}"), 1, &format!("u{i}")))
        .collect();
    let d = db.decide_batch(&batch, 0).await.expect("decide");
    let ids: Vec<String> = d
        .iter()
        .map(|d| match d {
            Decision::Ordered { order_id, .. } => order_id.clone(),
            Decision::Rejected { .. } => panic!("ordered"),
        })
        .collect();
    // Each order is paid (by a clock just before the deadline) and cancelled (by a clock at
    // it) at the same moment: the two conditions both hold, the status decides.
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (db1, db2, id1, id2) = (db.clone(), db.clone(), id.clone(), id.clone());
        let user = format!("u{i}");
        let pay = tokio::spawn(async move { db1.pay(&id1, &user, 999).await });
        let cancel = tokio::spawn(async move { db2.cancel_due(&[id2], 1_000).await });
        tasks.push((pay, cancel));
    }
    let mut paid = 0u64;
    for (pay, cancel) in tasks {
        let p = pay.await.expect("join");
        let c = cancel.await.expect("join");
        let p = match p {
            Ok(p) => p,
            Err(e) => retryable(e),
        };
        let cancelled = match c {
            Ok(c) => c.len() == 1,
            Err(e) => {
                retryable(e);
                false
            }
        };
        let payment_won = matches!(p, Payment::Paid(_));
        assert!(
            payment_won != cancelled,
            "exactly one wins: paid {payment_won}, cancelled {cancelled}"
        );
        if payment_won {
            paid += 1;
        }
    }
    let counts = db.order_counts(1).await.expect("counts");
    assert_eq!(counts.paid, paid);
    assert_eq!(counts.paid + counts.cancelled, ORDERS as u64);
    assert_eq!(counts.pending, 0);
    let s = db.sale(1).await.expect("s").expect("s");
    assert_eq!(s.units_left + counts.active(), s.units, "conservation");
}

/// A lost race may surface as a transient database error (never as a second winner).
fn retryable(e: DbError) -> Payment {
    assert!(
        e.is_transient(),
        "only a transient error may end a racer: {e}"
    );
    Payment::NotFound
}
both_backends!(pay_and_cancel_racing_never_both_win, pay_cancel_race);

async fn sales_are_validated_and_unique(db: OrdersDb) {
    let mut s = NewSale {
        id: 7,
        name: "phone".into(),
        price_cents: 99,
        units: 5,
        starts_at_ms: 10,
        pay_window_ms: None,
        ends_at_ms: None,
        token_factor: None,
        per_user_limit: None,
        stock_buckets: None,
    };
    let made = db.create_sale(&s, 0).await.expect("create");
    assert_eq!(
        made.pay_window_ms,
        order_worker::db::PAY_WINDOW_MS_DEFAULT,
        "ten minutes unless named"
    );
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Conflict(_))
    ));
    s.id = 8;
    s.units = 0;
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Invalid(_))
    ));
    s.units = 1;
    s.name = String::new();
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Invalid(_))
    ));
    s.name = "x".into();
    s.id = u64::MAX;
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Invalid(_))
    ));
    let all = db.sales().await.expect("sales");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].units_left, 5);
}
both_backends!(
    sales_are_validated_and_unique,
    sales_are_validated_and_unique
);

/// Runs a statement straight on the database (to show what its constraints refuse).
async fn raw(db: &OrdersDb, sql: &'static str) -> Result<(), sqlx::Error> {
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        order_worker::db::Shard::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
}

fn invalid_saying(r: Result<Sale, DbError>, words: &str) -> bool {
    matches!(r, Err(DbError::Invalid(m)) if m.contains(words))
}

async fn sale_settings(db: OrdersDb) {
    let plain = NewSale {
        id: 1,
        name: "plain".into(),
        price_cents: 10,
        units: 3,
        starts_at_ms: 1_000,
        pay_window_ms: None,
        ends_at_ms: None,
        token_factor: None,
        per_user_limit: None,
        stock_buckets: None,
    };
    // Defaults: no end, the global token factor, one per person, one stock bucket.
    let made = db.create_sale(&plain, 0).await.expect("create");
    assert_eq!(
        (made.ends_at_ms, made.token_factor, made.per_user_limit),
        (None, None, 1)
    );
    assert_eq!(made.stock_buckets, 1);
    assert_eq!(db.sale(1).await.expect("read"), Some(made));

    // Every setting round-trips; the factor is kept to a thousandth.
    let full = NewSale {
        id: 2,
        name: "full".into(),
        ends_at_ms: Some(5_000),
        token_factor: Some(2.5),
        per_user_limit: Some(order_worker::db::PER_USER_LIMIT_MAX),
        stock_buckets: Some(inventory::STOCK_BUCKETS_MAX),
        ..plain.clone()
    };
    let made = db.create_sale(&full, 0).await.expect("create");
    assert_eq!(
        (made.ends_at_ms, made.token_factor, made.per_user_limit),
        (Some(5_000), Some(2.5), 10)
    );
    assert_eq!(made.stock_buckets, inventory::STOCK_BUCKETS_MAX);
    assert_eq!(db.sale(2).await.expect("read"), Some(made.clone()));
    let rounded = NewSale {
        id: 3,
        token_factor: Some(1.23456),
        ends_at_ms: Some(1_001), // just after the start
        ..plain.clone()
    };
    let made3 = db.create_sale(&rounded, 0).await.expect("create");
    assert_eq!(made3.token_factor, Some(1.235));
    assert_eq!(db.sale(3).await.expect("read"), Some(made3));
    for (id, f) in [(4, 0.1), (5, 100.0)] {
        let edge = NewSale {
            id,
            token_factor: Some(f),
            ..plain.clone()
        };
        let made = db.create_sale(&edge, 0).await.expect("a bound is allowed");
        assert_eq!(made.token_factor, Some(f));
        assert_eq!(db.sale(id).await.expect("read"), Some(made));
    }
    let all = db.sales().await.expect("sales");
    assert_eq!(all.len(), 5);
    assert_eq!(all[1], made, "the listing reads the settings too");

    // Refused: a per-person limit outside 1..=10, factors outside 0.1..=100 or not
    // numbers, an end not after the start.
    let try_with = |f: &dyn Fn(&mut NewSale)| {
        let mut s = NewSale {
            id: 9,
            ..plain.clone()
        };
        f(&mut s);
        s
    };
    for k in [0, inventory::STOCK_BUCKETS_MAX + 1, u32::MAX] {
        let s = try_with(&|s| s.stock_buckets = Some(k));
        assert!(
            invalid_saying(db.create_sale(&s, 0).await, "stock buckets must be 1..=64"),
            "stock_buckets {k}"
        );
    }
    for limit in [11, 0, u32::MAX] {
        let s = try_with(&|s| s.per_user_limit = Some(limit));
        assert!(
            invalid_saying(db.create_sale(&s, 0).await, "per_user_limit must be 1..=10"),
            "per_user_limit {limit}"
        );
    }
    for factor in [0.099, 0.0, -1.0, 100.001, 1e9] {
        let s = try_with(&|s| s.token_factor = Some(factor));
        assert!(
            invalid_saying(
                db.create_sale(&s, 0).await,
                "token_factor must be 0.1..=100"
            ),
            "factor {factor}"
        );
    }
    for factor in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let s = try_with(&|s| s.token_factor = Some(factor));
        assert!(
            invalid_saying(db.create_sale(&s, 0).await, "finite"),
            "factor {factor}"
        );
    }
    for ends in [1_000, 999, 0] {
        let s = try_with(&|s| s.ends_at_ms = Some(ends));
        assert!(
            invalid_saying(db.create_sale(&s, 0).await, "must be after starts_at_ms"),
            "ends {ends}"
        );
    }
    let s = try_with(&|s| s.ends_at_ms = Some(u64::MAX));
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Invalid(_))
    ));
    assert!(
        db.sale(9).await.expect("read").is_none(),
        "nothing refused was made"
    );

    // The tables refuse the same, whoever writes.
    for sql in [
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, per_user_limit) \
         VALUES (20, 'eleven each', 1, 1, 1, 0, 1000, 0, 11)",
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, per_user_limit) \
         VALUES (25, 'none each', 1, 1, 1, 0, 1000, 0, 0)",
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, token_factor_milli) \
         VALUES (21, 'tiny factor', 1, 1, 1, 0, 1000, 0, 99)",
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, token_factor_milli) \
         VALUES (22, 'huge factor', 1, 1, 1, 0, 1000, 0, 100001)",
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, ends_at_ms) \
         VALUES (23, 'ends first', 1, 1, 1, 10, 1000, 0, 10)",
        "UPDATE sales SET per_user_limit = 11 WHERE id = 1",
    ] {
        assert!(raw(&db, sql).await.is_err(), "the schema refuses: {sql}");
    }
    raw(
        &db,
        "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms) \
         VALUES (24, 'old style', 1, 1, 1, 0, 1000, 0)",
    )
    .await
    .expect("a row written without the settings");
    let old = db.sale(24).await.expect("read").expect("exists");
    assert_eq!(
        (old.ends_at_ms, old.token_factor, old.per_user_limit),
        (None, None, 1),
        "the columns' defaults"
    );

    // JSON without the settings reads as the defaults.
    let parsed: NewSale =
        serde_json::from_str(r#"{"id":1,"name":"n","price_cents":1,"units":1,"starts_at_ms":0}"#)
            .expect("parse");
    assert_eq!(
        (
            parsed.ends_at_ms,
            parsed.token_factor,
            parsed.per_user_limit
        ),
        (None, None, None)
    );
    let parsed: NewSale = serde_json::from_str(
        r#"{"id":1,"name":"n","price_cents":1,"units":1,"starts_at_ms":0,"ends_at_ms":9,"token_factor":0.5,"per_user_limit":1}"#,
    )
    .expect("parse");
    assert_eq!(
        (
            parsed.ends_at_ms,
            parsed.token_factor,
            parsed.per_user_limit
        ),
        (Some(9), Some(0.5), Some(1))
    );
}
both_backends!(sale_settings_round_trip_and_are_validated, sale_settings);

async fn sales_are_capped(db: OrdersDb) {
    // 9,999 sales in one statement, then the 10,000th through the API and one too many.
    let bulk = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) \
                INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms) \
                SELECT i, 'bulk', 1, 1, 1, 0, 600000, 0 FROM n";
    match db.control() {
        order_worker::db::Shard::Sqlite(p) => sqlx::query(bulk).execute(p).await.map(|_| ()),
        order_worker::db::Shard::Postgres(p) => sqlx::query(bulk).execute(p).await.map(|_| ()),
    }
    .expect("bulk insert");
    let mut s = NewSale {
        id: 10_000,
        name: "last".into(),
        price_cents: 1,
        units: 1,
        starts_at_ms: 0,
        pay_window_ms: None,
        ends_at_ms: None,
        token_factor: None,
        per_user_limit: None,
        stock_buckets: None,
    };
    db.create_sale(&s, 0).await.expect("the 10,000th sale");
    s.id = 10_001;
    assert!(
        matches!(db.create_sale(&s, 0).await, Err(DbError::Invalid(m)) if m.contains("10000")),
        "one past SALES_MAX is refused"
    );
    assert!(matches!(
        db.create_sale(&s, 0).await,
        Err(DbError::Invalid(_))
    ));
    s.id = 5;
    assert!(
        matches!(db.create_sale(&s, 0).await, Err(DbError::Conflict(_))),
        "a taken id is still a conflict"
    );
    assert_eq!(
        db.sales().await.expect("sales").len(),
        order_worker::db::SALES_MAX
    );
}
both_backends!(at_most_sales_max_sales, sales_are_capped);

/// Every SQLite connection runs in WAL mode with `synchronous=FULL` and the WAL checkpointed
/// at [`order_worker::db::SQLITE_WAL_AUTOCHECKPOINT_PAGES`], not SQLite's 1,000 pages, and
/// its statement journals in memory ([`order_worker::db::SQLITE_TEMP_STORE`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connections_have_the_wal_and_journal_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = order_worker::testing::sqlite(dir.path(), &Default::default()).await;
    let order_worker::db::Shard::Sqlite(pool) = db.control() else {
        panic!("a SQLite shard");
    };
    // More connections than the first one, so each is checked, not just the one reused.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.acquire().await.expect("a connection"));
    }
    for conn in &mut conns {
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(
            pages,
            i64::from(order_worker::db::SQLITE_WAL_AUTOCHECKPOINT_PAGES)
        );
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(sync, 2, "synchronous=FULL");
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut **conn)
            .await
            .expect("pragma");
        assert_eq!(
            (temp_store, order_worker::db::SQLITE_TEMP_STORE),
            (2, "MEMORY"),
            "statement journals in memory"
        );
    }
}
