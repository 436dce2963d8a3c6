//! A shopper's orders ("my orders"): newest first, only theirs, bounded; over two shards the
//! union, and a failing shard does not hide the other's orders.

use order_worker::db::{DbOptions, OrderStatus, OrdersDb, Shard, USER_ORDERS_MAX};

use crate::{both_backends, purchase, sale};

async fn order_of_ticket(db: &OrdersDb, ticket: &str) -> String {
    db.outcome(ticket)
        .await
        .expect("outcome")
        .and_then(|o| o.order_id)
        .expect("ordered")
}

async fn newest_first_and_only_theirs(db: OrdersDb) {
    for id in 1..=3 {
        sale(&db, id, 5, 60_000).await;
    }
    // ann buys in sales 1, 2, 3 at 1 s, 2 s, 3 s; bob in sale 1.
    for (k, sale_id) in [1u64, 2, 3].into_iter().enumerate() {
        let at = 1_000 * (k as u64 + 1);
        db.decide_batch(&[purchase(&format!("a{sale_id}"), sale_id, "ann")], at)
            .await
            .expect("decide");
    }
    db.decide_batch(&[purchase("b1", 1, "bob")], 4_000)
        .await
        .expect("decide");
    let mine = db
        .orders_of_user("ann", USER_ORDERS_MAX)
        .await
        .expect("orders");
    assert!(mine.complete);
    let sales: Vec<u64> = mine.orders.iter().map(|o| o.sale).collect();
    assert_eq!(sales, vec![3, 2, 1], "newest first");
    assert!(mine.orders.iter().all(|o| o.user == "ann"));
    assert_eq!(mine.orders[0].id, order_of_ticket(&db, "a3").await);
    assert_eq!(mine.orders[0].status, OrderStatus::Pending);
    assert_eq!(mine.orders[0].pay_by_ms, 63_000);
    // A paid order stays listed, with its new status.
    let paid = order_of_ticket(&db, "a1").await;
    db.pay(&paid, "ann", 5_000).await.expect("pay");
    let mine = db.orders_of_user("ann", 2).await.expect("orders");
    assert_eq!(
        mine.orders.iter().map(|o| o.sale).collect::<Vec<_>>(),
        vec![3, 2],
        "the limit keeps the newest"
    );
    let all = db.orders_of_user("ann", usize::MAX).await.expect("orders");
    assert_eq!(all.orders.len(), 3, "a huge limit is clamped, not refused");
    assert_eq!(all.orders[2].status, OrderStatus::Paid);
    let bob = db.orders_of_user("bob", 10).await.expect("orders");
    assert_eq!(bob.orders.len(), 1);
    // Names are matched exactly: no prefix, case or pattern matching.
    for other in ["an", "ANN", "%", "ann%", "", "nobody"] {
        let none = db.orders_of_user(other, 10).await.expect("orders");
        assert!(none.orders.is_empty(), "{other:?}");
    }
}
both_backends!(a_users_orders_newest_first, newest_first_and_only_theirs);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_shards_list_a_users_orders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = format!(
        "sqlite:{} sqlite:{}",
        dir.path().join("s0.db").display(),
        dir.path().join("s1.db").display()
    );
    over_two_shards(&urls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_shards_list_a_users_orders() {
    let opts = DbOptions::default();
    let Some((a, scratch_a)) = order_worker::testing::postgres(&opts).await else {
        return;
    };
    let Some((b, scratch_b)) = order_worker::testing::postgres(&opts).await else {
        return;
    };
    a.close().await;
    b.close().await;
    over_two_shards(&format!("{} {}", scratch_a.url, scratch_b.url)).await;
}

async fn close(shard: &Shard) {
    match shard {
        Shard::Sqlite(p) => p.close().await,
        Shard::Postgres(p) => p.close().await,
    }
}

async fn over_two_shards(urls: &str) {
    let db = OrdersDb::connect(urls, &DbOptions::default())
        .await
        .expect("two shards");
    // Sale 1 on shard 0, sale 2 on shard 1 (the emptier shard takes the next sale).
    sale(&db, 1, 5, 60_000).await;
    sale(&db, 2, 5, 60_000).await;
    assert_eq!(db.shard_of(2).await.expect("route"), 1);
    db.decide_batch(&[purchase("s2", 2, "ann")], 1_000)
        .await
        .expect("decide");
    db.decide_batch(&[purchase("s1", 1, "ann")], 2_000)
        .await
        .expect("decide");
    let mine = db.orders_of_user("ann", 10).await.expect("orders");
    assert!(mine.complete);
    assert_eq!(
        mine.orders.iter().map(|o| o.sale).collect::<Vec<_>>(),
        vec![1, 2],
        "both shards', newest first"
    );
    let newest = db.orders_of_user("ann", 1).await.expect("orders");
    assert_eq!(newest.orders.len(), 1);
    assert_eq!(newest.orders[0].sale, 1);
    // Shard 1 fails: shard 0's order still comes back, marked incomplete.
    close(db.shard(1).expect("shard 1")).await;
    let partial = db
        .orders_of_user("ann", 10)
        .await
        .expect("one shard answered");
    assert!(!partial.complete);
    assert_eq!(
        partial.orders.iter().map(|o| o.sale).collect::<Vec<_>>(),
        vec![1]
    );
    // Every shard fails: an error, never an empty "you have no orders".
    close(db.shard(0).expect("shard 0")).await;
    assert!(db.orders_of_user("ann", 10).await.is_err());
}
