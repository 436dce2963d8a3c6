//! An orders database of several shards: sales spread by the routing table, every call on
//! the right shard, a batch over two shards decided in one transaction each, unions and
//! totals; and a multi-host PostgreSQL shard that follows its primary to a promoted
//! synchronous standby without losing an acknowledged order.

use std::time::{Duration, Instant};

use order_worker::db::{
    DbError, DbOptions, Decision, NewSale, OrderStatus, OrdersDb, Payment, Shard, WorkerBeat,
    WorkerKind, reason,
};

use crate::{purchase, sale};

/// How long the failover test waits for the shard to answer from the promoted standby.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// The pause between two attempts while it waits (as a worker's retry backoff).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_shards_route_by_sale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = format!(
        "sqlite:{} sqlite:{}",
        dir.path().join("s0.db").display(),
        dir.path().join("s1.db").display()
    );
    two_shards_route_by_sale(&urls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_shards_route_by_sale() {
    let opts = DbOptions::default();
    let Some((a, scratch_a)) = order_worker::testing::postgres(&opts).await else {
        return;
    };
    let Some((b, scratch_b)) = order_worker::testing::postgres(&opts).await else {
        return;
    };
    a.close().await;
    b.close().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mixed = format!(
        "{} sqlite:{}",
        scratch_a.url,
        dir.path().join("x.db").display()
    );
    let e = OrdersDb::connect(&mixed, &opts)
        .await
        .expect_err("two backends");
    assert!(matches!(e, DbError::Invalid(_)), "{e:?}");
    two_shards_route_by_sale(&format!("{} {}", scratch_a.url, scratch_b.url)).await;
}

async fn ids_on(shard: &Shard) -> Vec<u64> {
    shard
        .sales()
        .await
        .expect("sales")
        .iter()
        .map(|s| s.id)
        .collect()
}

async fn two_shards_route_by_sale(urls: &str) {
    let db = OrdersDb::connect(urls, &DbOptions::default())
        .await
        .expect("two shards");
    assert_eq!(db.shard_count(), 2);
    // The shard with the fewest sales takes the next one (ties: the lower index).
    for id in [1, 2, 3, 4] {
        sale(&db, id, 5, 60_000).await;
    }
    let (s0, s1) = (db.shard(0).expect("shard 0"), db.shard(1).expect("shard 1"));
    assert_eq!(ids_on(s0).await, [1, 3]);
    assert_eq!(ids_on(s1).await, [2, 4]);
    let all: Vec<u64> = db
        .sales()
        .await
        .expect("sales")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, [1, 2, 3, 4], "the union, by id");
    assert_eq!(db.shard_of(2).await.expect("route"), 1);
    assert_eq!(db.sale(4).await.expect("sale").expect("sale 4").units, 5);
    // Ids are global: taken on another shard is taken.
    let again = db
        .create_sale(&new_sale(2, 5), 0)
        .await
        .expect_err("sale 2 exists");
    assert!(matches!(again, DbError::Conflict(_)), "{again:?}");
    // A sale the shard refuses leaves no route behind: the id stays free.
    let bad = db
        .create_sale(&new_sale(5, 0), 0)
        .await
        .expect_err("no units");
    assert!(matches!(bad, DbError::Invalid(_)), "{bad:?}");
    sale(&db, 5, 1, 60_000).await;
    assert_eq!(ids_on(s0).await, [1, 3, 5]);

    // One batch, purchases of sales on both shards and of an unknown sale.
    let batch = [
        purchase("t1", 1, "alice"),
        purchase("t2", 2, "bob"),
        purchase("t3", 99, "carol"),
        purchase("t4", 2, "bob"),
    ];
    let decided = db.decide_batch(&batch, 1_000).await.expect("decide");
    let order_of = |d: &Decision| match d {
        Decision::Ordered { order_id, .. } => order_id.clone(),
        other => panic!("not ordered: {other:?}"),
    };
    let (o1, o2) = (order_of(&decided[0]), order_of(&decided[1]));
    assert!(
        matches!(&decided[2], Decision::Rejected { reason: r, .. } if r == reason::NO_SUCH_SALE),
        "{:?}",
        decided[2]
    );
    assert!(
        matches!(&decided[3], Decision::Rejected { reason: r, .. } if r == reason::ALREADY_BOUGHT),
        "{:?}",
        decided[3]
    );
    // Each order and outcome on its sale's shard only.
    assert!(s0.order(&o1).await.expect("read").is_some());
    assert!(s1.order(&o1).await.expect("read").is_none());
    assert!(s1.order(&o2).await.expect("read").is_some());
    assert!(s0.outcome("t2").await.expect("read").is_none());
    assert_eq!(s1.sale(2).await.expect("read").expect("sale").units_left, 4);
    assert_eq!(s0.sale(1).await.expect("read").expect("sale").units_left, 4);
    // A redelivery finds both decisions, whichever shard.
    let again = db.decide_batch(&batch[..2], 2_000).await.expect("again");
    assert!(again.iter().all(|d| !d.fresh()), "{again:?}");
    assert_eq!(order_of(&again[1]), o2);
    // Look-ups by ticket and order id find them on either shard.
    assert_eq!(
        db.outcome("t2")
            .await
            .expect("outcome")
            .expect("t2")
            .order_id,
        Some(o2.clone())
    );
    assert_eq!(db.order(&o1).await.expect("order").expect("o1").sale, 1);
    assert!(db.outcome("nope").await.expect("outcome").is_none());
    assert_eq!(db.order_counts(2).await.expect("counts").pending, 1);
    assert!(db.holds_active(2, "bob").await.expect("holds"));
    assert!(!db.holds_active(1, "bob").await.expect("holds"));
    assert_eq!(db.outcome_counts(2).await.expect("counts"), (1, 1));

    // Payment on shard 1; an unknown order is not found anywhere.
    match db.pay(&o2, "bob", 2_000).await.expect("pay") {
        Payment::Paid(o) => assert_eq!(o.status, OrderStatus::Paid),
        other => panic!("not paid: {other:?}"),
    }
    assert_eq!(
        db.pay(&o1, "mallory", 2_000).await.expect("pay"),
        Payment::NotFound
    );

    // Overdue orders of both shards; a cancellation over both cancels the pending one.
    db.decide_batch(&[purchase("t5", 4, "dave")], 1_000)
        .await
        .expect("decide");
    let late = 1_000 + 60_000 + 1;
    let mut overdue = db.overdue(late, 100).await.expect("overdue");
    overdue.sort();
    let o5 = order_of_ticket(&db, "t5").await;
    let mut expected = vec![o1.clone(), o5.clone()];
    expected.sort();
    assert_eq!(
        overdue, expected,
        "pending past their pay-by, on both shards"
    );
    let ids = vec![o1.clone(), o2.clone(), o5.clone()];
    let cancelled = db.cancel_due(&ids, late).await.expect("cancel");
    let mut got: Vec<String> = cancelled.iter().map(|c| c.order_id.clone()).collect();
    got.sort();
    assert_eq!(got, expected, "the paid order stays paid");
    assert_eq!(db.cancelled_among(&ids).await.expect("among").len(), 2);
    assert_eq!(s0.sale(1).await.expect("read").expect("sale").units_left, 5);
    assert_eq!(s1.sale(4).await.expect("read").expect("sale").units_left, 5);
    let totals = db.order_totals().await.expect("totals");
    assert_eq!(
        (
            totals.created,
            totals.pending,
            totals.paid,
            totals.cancelled
        ),
        (3, 0, 1, 2)
    );

    // Heartbeats live on the control shard.
    let beat = WorkerBeat {
        id: "h-1-worker-0".into(),
        kind: WorkerKind::Worker,
        host: "h".into(),
        pid: 1,
        started_ms: 1,
        beat_ms: 1,
        progress_ms: 1,
        handled: 0,
        stopped_ms: None,
    };
    db.heartbeat(&[beat], 1).await.expect("beat");
    assert_eq!(db.workers(10).await.expect("workers").len(), 1);
    assert!(s1.workers(10).await.expect("workers").is_empty());

    // Another process on the same shards reads the routes (none cached yet).
    let other = OrdersDb::connect(urls, &DbOptions::default())
        .await
        .expect("again");
    assert_eq!(other.shard_of(4).await.expect("route"), 1);
    assert_eq!(other.sale(4).await.expect("sale").expect("sale 4").id, 4);
    other.close().await;
    db.close().await;
}

/// The order id of a decided ticket.
async fn order_of_ticket(db: &OrdersDb, ticket: &str) -> String {
    db.outcome(ticket)
        .await
        .expect("outcome")
        .and_then(|o| o.order_id)
        .expect("ordered")
}

fn new_sale(id: u64, units: u64) -> NewSale {
    NewSale {
        id,
        name: format!("sale {id}"),
        price_cents: 100,
        units,
        starts_at_ms: 0,
        pay_window_ms: Some(60_000),
        ends_at_ms: None,
        token_factor: None,
        per_user_limit: None,
        stock_buckets: None,
    }
}

#[tokio::test]
async fn bad_shard_lists_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = OrdersDb::connect(
        &format!(
            "sqlite:{} postgres://u@127.0.0.1:1,127.0.0.1:2,,/db",
            dir.path().join("a.db").display()
        ),
        &DbOptions::default(),
    )
    .await
    .expect_err("an empty host");
    assert!(matches!(e, DbError::Invalid(_)), "{e:?}");
    let e = OrdersDb::connect("  ", &DbOptions::default())
        .await
        .expect_err("no URL");
    assert!(matches!(e, DbError::Invalid(_)), "{e:?}");
}

/// A shard on a primary with a synchronous standby: an order whose commit returned is on
/// the standby; the primary is SIGKILLed and the standby promoted; the shard's next
/// operations fail (transient) until it has found the new primary, then run there, and the
/// order is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_follows_its_primary_to_the_promoted_standby() {
    let started = Instant::now();
    let kit = tokio::task::block_in_place(|| {
        let primary = match pg_kit::PgServer::start() {
            Ok(p) => p,
            Err(e) if order_worker::testing::under_ci() => panic!("pg-kit under CI: {e}"),
            Err(e) => {
                eprintln!("skipping: pg-kit cannot start PostgreSQL: {e}");
                return None;
            }
        };
        primary.create_database("orders").expect("create database");
        let standby = pg_kit::PgServer::standby_of(&primary).expect("standby");
        Some((primary, standby))
    });
    let Some((mut primary, standby)) = kit else {
        return;
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/orders",
        primary.port(),
        standby.port()
    );
    let db = OrdersDb::connect(&url, &DbOptions::default())
        .await
        .expect("the shard");
    assert_eq!(db.primary_of(0), Some(primary.addr()));
    sale(&db, 1, 10, 60_000).await;
    let decided = db
        .decide_batch(&[purchase("t1", 1, "alice")], 1_000)
        .await
        .expect("decide");
    let Decision::Ordered { order_id, .. } = &decided[0] else {
        panic!("not ordered: {decided:?}");
    };
    // Acknowledged: the commit returned. Now the primary dies and the standby takes over.
    tokio::task::block_in_place(|| {
        primary.kill().expect("kill -9 the primary");
        standby.promote().expect("promote");
    });

    let deadline = Instant::now() + FAILOVER_WAIT;
    let mut refused = 0;
    let order = loop {
        match db.order(order_id).await {
            Ok(order) => break order,
            Err(e) => {
                assert!(e.is_transient(), "a failover error is transient: {e}");
                refused += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the shard did not answer from the promoted standby within {FAILOVER_WAIT:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    assert!(refused >= 1, "the first operation after the loss fails");
    eprintln!(
        "failover: {refused} refused operation(s), answered from the promoted standby {:?} \
         after the promotion",
        deadline
            .checked_sub(FAILOVER_WAIT)
            .map(|promoted| promoted.elapsed())
    );
    let order = order.expect("the acknowledged order is on the promoted standby");
    assert_eq!(order.user, "alice");
    assert_eq!(db.primary_of(0), Some(standby.addr()));
    // It takes writes there: the next purchase of the sale is decided on the new primary.
    let decided = db
        .decide_batch(&[purchase("t2", 1, "bob")], 2_000)
        .await
        .expect("decide on the promoted standby");
    assert!(
        matches!(decided[0], Decision::Ordered { .. }),
        "{decided:?}"
    );
    assert_eq!(
        db.sale(1).await.expect("sale").expect("sale 1").units_left,
        8
    );
    db.close().await;
    drop(standby);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A database that had one shard and gets a second: its sales stay on the first (adopted
/// into the routing table), their ids stay taken, new sales go to the emptier shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shard_adopts_the_first_ones_sales() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = format!("sqlite:{}", dir.path().join("s0.db").display());
    let one = OrdersDb::connect(&first, &DbOptions::default())
        .await
        .expect("one shard");
    sale(&one, 7, 3, 60_000).await;
    one.close().await;
    let urls = format!("{first} sqlite:{}", dir.path().join("s1.db").display());
    let two = OrdersDb::connect(&urls, &DbOptions::default())
        .await
        .expect("two shards");
    assert_eq!(two.shard_of(7).await.expect("route"), 0);
    let e = two
        .create_sale(&new_sale(7, 3), 0)
        .await
        .expect_err("sale 7 exists");
    assert!(matches!(e, DbError::Conflict(_)), "{e:?}");
    sale(&two, 8, 3, 60_000).await;
    assert_eq!(two.shard_of(8).await.expect("route"), 1);
    let decided = two
        .decide_batch(&[purchase("a", 7, "u"), purchase("b", 8, "u")], 1_000)
        .await
        .expect("decide");
    assert!(
        decided
            .iter()
            .all(|d| matches!(d, Decision::Ordered { .. })),
        "{decided:?}"
    );
    two.close().await;
}
