//! The whole system in one process: the gateway on a real port, the embedded queue, the
//! in-process stock store, order workers and the canceller running beside it, and the
//! orders database (SQLite, and a fresh PostgreSQL database). Checks invariants 1–5 of the
//! brief end to end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use inventory::MemoryStore;
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::OrderStatus;
use queue::Queue;
use serde_json::{Value, json};

use super::{LOAD_TEST, TestApp, patient, test_system, test_throttle, token_of};

/// Polls `check` every 20 ms until it is true; panics with `what` after `limit`.
async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The system: a gateway on a real port with workers and a canceller running.
async fn system(db: Option<order_worker::OrdersDb>) -> (Arc<TestApp>, Crew) {
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        db,
        |config| {
            config.gateway.token_factor = 100.0;
            config.gateway.load_test_secret = Some(LOAD_TEST.into());
            config.crew = test_crew();
        },
    )
    .await
    .on_port(patient())
    .await;
    with_crew(t)
}

/// Order workers and a canceller for the system tests (also used by the browser tests):
/// quick to notice new work.
pub(super) fn test_crew() -> CrewConfig {
    let mut config = CrewConfig::default();
    config.worker.wait_ms = 100;
    config.canceller.wait_ms = 100;
    config.canceller.sweep_every_ms = 200;
    config
}

/// The app `t`, shared, and its crew (built with [`test_crew`]).
pub(super) fn with_crew(mut t: TestApp) -> (Arc<TestApp>, Crew) {
    let crew = t.crew.take().expect("a system built with a crew");
    (Arc::new(t), crew)
}

async fn lag(t: &TestApp) -> u64 {
    let stats = t.state.queue.stats("orders").await.expect("stats");
    stats
        .groups
        .iter()
        .find(|g| g.name == "order-workers")
        .map_or(stats.next_offset, |g| g.lag)
}

async fn ticket(t: &TestApp, ticket: &str) -> Value {
    let (s, _, v) = t
        .call(
            Request::get(format!("/api/tickets/{ticket}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "ticket {ticket}: {v}");
    v
}

/// 5,000 purchase attempts from 1,000 users (five clicks each, interleaved) on a sale of
/// 200 units, with the workers draining while the crowd pushes. After the drain: exactly 200
/// active orders, one per person, units left 0 in the database and the store (never below),
/// units = left + active orders in both, and every accepted ticket ordered or rejected.
async fn flash_sale_end_to_end(db: Option<order_worker::OrdersDb>) {
    const UNITS: u64 = 200;
    const USERS: usize = 1_000;
    const ATTEMPTS: usize = 5_000;
    const TASKS: usize = 25;
    let (t, crew) = system(db).await;
    t.create_sale(5, UNITS, 0).await;
    let mut cookies = Vec::with_capacity(USERS);
    for u in 0..USERS {
        cookies.push(t.login(&format!("buyer-{u}")).await);
    }
    let cookies = Arc::new(cookies);
    let tasks: Vec<_> = (0..TASKS)
        .map(|k| {
            let t = t.clone();
            let cookies = cookies.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for i in 0..ATTEMPTS / TASKS {
                    let user = (k * (ATTEMPTS / TASKS) + i) % USERS;
                    let cookie = &cookies[user];
                    let (s, v) = t.token_load_test(cookie, 5).await;
                    if s != StatusCode::OK {
                        assert!(
                            s == StatusCode::GONE || s == StatusCode::TOO_MANY_REQUESTS,
                            "token: {s} {v}"
                        );
                        continue;
                    }
                    let (s, v) = t.purchase(cookie, 5, &token_of(&v)).await;
                    match s {
                        StatusCode::ACCEPTED => {
                            accepted.push((user, v["ticket"].as_str().expect("ticket").to_string()))
                        }
                        StatusCode::GONE | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS => {
                        }
                        StatusCode::FORBIDDEN if v["error"] == "bad_token" => {}
                        other => panic!("purchase: {other} {v}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.expect("join"));
    }
    assert_eq!(
        accepted.len() as u64,
        UNITS,
        "the gateway accepts one per unit"
    );
    wait_for(Duration::from_secs(60), "the workers to drain", || async {
        lag(&t).await == 0
    })
    .await;
    let db = &t.state.db;
    // 1. No oversell: active orders never exceed the units, units left never below zero.
    let sale = db.sale(5).await.expect("sale").expect("exists");
    let counts = db.order_counts(5).await.expect("counts");
    assert_eq!(counts.active(), UNITS);
    assert_eq!(sale.units_left, 0);
    // 2. One per person.
    let holders = db.active_holders(5).await.expect("holders");
    let distinct: HashSet<&String> = holders.iter().collect();
    assert_eq!(
        distinct.len(),
        holders.len(),
        "a user with two active orders"
    );
    // 3. No lost purchase: every accepted ticket is ordered or rejected, visibly.
    let mut ordered = 0;
    for (user, tk) in &accepted {
        let v = ticket(&t, tk).await;
        match v["state"].as_str() {
            Some("ordered") => {
                ordered += 1;
                let order = db
                    .order(v["order_id"].as_str().expect("order id"))
                    .await
                    .expect("order")
                    .expect("exists");
                assert_eq!(order.user, format!("buyer-{user}"));
                assert_eq!(order.ticket, *tk);
                assert_eq!(order.status, OrderStatus::Pending);
            }
            Some("rejected") => assert!(v["reason"].is_string(), "{v}"),
            other => panic!("ticket {tk} is {other:?}: {v}"),
        }
    }
    assert_eq!(ordered, UNITS, "every accepted purchase became an order");
    assert_eq!(
        db.outcome_counts(5).await.expect("outcomes"),
        (UNITS, 0),
        "one outcome per accepted purchase"
    );
    // 4. Conservation, in the database and in the store alike.
    assert_eq!(sale.units, sale.units_left + counts.active());
    let stock = t
        .state
        .inventory
        .store()
        .stock(5)
        .await
        .expect("stock")
        .expect("defined");
    assert_eq!((stock.units, stock.left, stock.holders), (UNITS, 0, UNITS));
    let store_holders: HashSet<String> = (0..USERS)
        .map(|u| format!("buyer-{u}"))
        .filter(|u| distinct.contains(u))
        .collect();
    assert_eq!(store_holders.len() as u64, UNITS);
    // Every pay-by message is scheduled, one per order.
    let deadlines = t.state.queue.stats("pay-deadlines").await.expect("stats");
    assert_eq!(deadlines.published - deadlines.duplicates, UNITS);
    crew.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_end_to_end_on_sqlite() {
    flash_sale_end_to_end(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_end_to_end_on_postgres() {
    let Some((db, _scratch)) = order_worker::testing::postgres(&Default::default()).await else {
        return;
    };
    flash_sale_end_to_end(Some(db.clone())).await;
    db.close().await;
}

/// A sale of two per person, end to end: the admin API takes `per_user_limit` 2 (and
/// refuses 11), one buyer's first two purchases become two orders, the third is refused
/// `already_bought` by the gateway, and after the workers decided, again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_gets_two_of_a_two_per_person_sale_then_is_refused() {
    let (t, crew) = system(None).await;
    let create = |limit: u32| {
        Request::post("/admin/api/sales")
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {}", super::ADMIN),
            )
            .body(Body::from(
                json!({"id": 7, "name": "pair of socks", "price_cents": 500, "units": 10,
                       "starts_at_ms": 0, "per_user_limit": limit, "confirm": true})
                .to_string(),
            ))
            .expect("request")
    };
    let (s, _, v) = t.call(create(inventory::PER_USER_LIMIT_MAX + 1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("per_user_limit must be 1..=10")),
        "{v}"
    );
    let (s, _, v) = t.call(create(2)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["per_user_limit"], 2, "{v}");
    let cookie = t.login("sam").await;
    let mut tickets = Vec::new();
    for _ in 0..2 {
        let (s, v) = t.token_load_test(&cookie, 7).await;
        assert_eq!(s, StatusCode::OK, "token: {v}");
        let (s, v) = t.purchase(&cookie, 7, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "purchase: {v}");
        tickets.push(v["ticket"].as_str().expect("ticket").to_string());
    }
    let third = |t: Arc<TestApp>, cookie: String| async move {
        let (s, v) = t.token_load_test(&cookie, 7).await;
        assert_eq!(s, StatusCode::OK, "token: {v}");
        t.purchase(&cookie, 7, &token_of(&v)).await
    };
    let (s, v) = third(t.clone(), cookie.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "already_bought", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 per person")),
        "{v}"
    );
    wait_for(Duration::from_secs(30), "the workers to drain", || async {
        lag(&t).await == 0
    })
    .await;
    let db = &t.state.db;
    for tk in &tickets {
        let v = ticket(&t, tk).await;
        assert_eq!(v["state"], "ordered", "{v}");
    }
    assert_eq!(
        db.active_holders(7).await.expect("holders"),
        vec!["sam".to_string(), "sam".to_string()]
    );
    assert_eq!(
        db.sale(7).await.expect("sale").expect("exists").units_left,
        8
    );
    let stock = t
        .state
        .inventory
        .store()
        .stock(7)
        .await
        .expect("stock")
        .expect("defined");
    assert_eq!((stock.left, stock.holders), (8, 2));
    // Decided and still refused; another buyer is not.
    let (s, v) = third(t.clone(), cookie.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let other = t.login("kit").await;
    let (s, v) = third(t.clone(), other).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    crew.stop().await;
}

async fn pay(t: &TestApp, cookie: &str, order: &str) -> (StatusCode, Value) {
    t.post(&format!("/api/orders/{order}/pay"), Some(cookie), json!({}))
        .await
}

/// With a short pay window, unpaid orders are cancelled within a second of their pay-by
/// time, their units go back on sale (database and store, sold-out flag cleared) and are
/// bought again; paid orders stay paid; paying a cancelled order is a 409.
async fn unpaid_orders_are_cancelled_and_sold_again(db: Option<order_worker::OrdersDb>) {
    const UNITS: u64 = 10;
    const WINDOW_MS: u64 = 1_500;
    let (t, crew) = system(db).await;
    t.create_sale_paid_within(6, UNITS, 0, WINDOW_MS).await;
    let mut orders: HashMap<usize, (String, String)> = HashMap::new();
    for u in 0..UNITS as usize {
        let cookie = t.login(&format!("first-{u}")).await;
        let (_, v) = t.token_load_test(&cookie, 6).await;
        let (s, v) = t.purchase(&cookie, 6, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let tk = v["ticket"].as_str().expect("ticket").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let order = loop {
            if let Some(o) = ticket(&t, &tk).await["order_id"].as_str() {
                break o.to_string();
            }
            assert!(Instant::now() < deadline, "no order for {tk}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        orders.insert(u, (cookie, order));
    }
    // Sold out now, as the gateway knows.
    let late = t.login("late").await;
    let (s, _) = t.token_load_test(&late, 6).await;
    assert_eq!(s, StatusCode::GONE, "sold out");
    // Half pay in time.
    for u in 0..(UNITS as usize) / 2 {
        let (cookie, order) = &orders[&u];
        let (s, v) = pay(&t, cookie, order).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::OK, Some("paid")),
            "{v}"
        );
    }
    // The others are cancelled at their pay-by time.
    let db = t.state.db.clone();
    wait_for(
        Duration::from_secs(30),
        "the unpaid orders to be cancelled",
        || async { db.order_counts(6).await.expect("counts").cancelled == UNITS / 2 },
    )
    .await;
    for u in (UNITS as usize) / 2..UNITS as usize {
        let (cookie, order) = &orders[&u];
        let o = db.order(order).await.expect("order").expect("exists");
        assert_eq!(o.status, OrderStatus::Cancelled);
        let late_by = o.cancelled_ms.expect("cancelled at") - o.pay_by_ms;
        assert!(
            late_by < 1_000,
            "cancelled {late_by} ms after its pay-by time"
        );
        let (s, v) = pay(&t, cookie, order).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::CONFLICT, Some("order_cancelled"))
        );
    }
    for u in 0..(UNITS as usize) / 2 {
        let o = db
            .order(&orders[&u].1)
            .await
            .expect("order")
            .expect("exists");
        assert_eq!(
            o.status,
            OrderStatus::Paid,
            "a paid order is never cancelled"
        );
    }
    // The units are back, in the database and in the store, and sell again.
    let sale = db.sale(6).await.expect("sale").expect("exists");
    assert_eq!(sale.units_left, UNITS / 2);
    let stock = t.state.inventory.store().stock(6).await.expect("s");
    assert_eq!(
        stock.map(|s| (s.left, s.holders)),
        Some((UNITS / 2, UNITS / 2))
    );
    assert!(!t.state.inventory.flagged_sold_out(6));
    let mut again = Vec::new();
    for u in 0..(UNITS as usize) / 2 {
        let cookie = t.login(&format!("second-{u}")).await;
        let (s, v) = t.token_load_test(&cookie, 6).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = t.purchase(&cookie, 6, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        again.push(v["ticket"].as_str().expect("ticket").to_string());
    }
    wait_for(
        Duration::from_secs(30),
        "the second buyers' orders",
        || async { lag(&t).await == 0 },
    )
    .await;
    for tk in &again {
        assert_eq!(ticket(&t, tk).await["state"], "ordered");
    }
    let counts = db.order_counts(6).await.expect("counts");
    assert_eq!(counts.active(), UNITS, "sold again, and no more");
    let sale = db.sale(6).await.expect("sale").expect("exists");
    assert_eq!(sale.units_left + counts.active(), sale.units);
    crew.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_cancelled_and_sold_again_on_sqlite() {
    unpaid_orders_are_cancelled_and_sold_again(None).await;
}

/// Two SQLite shards, a sale already on the first: the test's sale lands on the second,
/// and purchases, tickets, payment and cancellation all find it there.
async fn two_shards(dir: &std::path::Path) -> order_worker::OrdersDb {
    let urls = format!(
        "sqlite:{} sqlite:{}",
        dir.join("s0.db").display(),
        dir.join("s1.db").display()
    );
    let db = order_worker::OrdersDb::connect(&urls, &Default::default())
        .await
        .expect("two shards");
    db.create_sale(
        &order_worker::db::NewSale {
            id: 99,
            name: "elsewhere".into(),
            price_cents: 100,
            units: 1,
            starts_at_ms: 0,
            pay_window_ms: None,
            ends_at_ms: None,
            token_factor: None,
            per_user_limit: None,
            stock_buckets: None,
        },
        0,
    )
    .await
    .expect("sale 99");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_cancelled_and_sold_again_on_two_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = two_shards(dir.path()).await;
    unpaid_orders_are_cancelled_and_sold_again(Some(db.clone())).await;
    assert_eq!(db.shard_of(6).await.expect("route"), 1);
    let on_second = db.shard(1).expect("shard 1").order_counts(6).await;
    assert!(on_second.expect("counts").cancelled > 0, "cancelled there");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_cancelled_and_sold_again_on_postgres() {
    let Some((db, _scratch)) = order_worker::testing::postgres(&Default::default()).await else {
        return;
    };
    unpaid_orders_are_cancelled_and_sold_again(Some(db.clone())).await;
    db.close().await;
}

async fn admin_get(t: &TestApp, uri: &str) -> (StatusCode, Value) {
    let (s, _, v) = t
        .call(
            Request::get(uri)
                .header("authorization", format!("Bearer {}", super::ADMIN))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    (s, v)
}

async fn admin_post(t: &TestApp, uri: &str) -> (StatusCode, Value) {
    let (s, _, v) = t
        .call(
            Request::post(uri)
                .header("authorization", format!("Bearer {}", super::ADMIN))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    (s, v)
}

/// A message the workers cannot use goes to the dead letters with its reason and shows up
/// for the admin (who can replay or discard it) without blocking the purchases around it;
/// the admin's sales view puts the database's and the store's figures side by side, and a
/// store that drifted is reset to the database on request.
#[tokio::test]
async fn dead_letters_and_stock_show_up_for_the_admin() {
    let t = super::test_app(100.0, test_throttle()).await;
    t.create_sale(3, 5, 0).await;
    let ann = t.login("ann").await;
    let (_, v) = t.token_load_test(&ann, 3).await;
    assert_eq!(
        t.purchase(&ann, 3, &token_of(&v)).await.0,
        StatusCode::ACCEPTED
    );
    t.engine
        .publish("orders", queue::Message::new(&b"{not a purchase"[..]))
        .await
        .expect("publish");
    let bob = t.login("bob").await;
    let (_, v) = t.token_load_test(&bob, 3).await;
    assert_eq!(
        t.purchase(&bob, 3, &token_of(&v)).await.0,
        StatusCode::ACCEPTED
    );
    t.drain().await;
    assert_eq!(t.state.db.order_counts(3).await.expect("counts").pending, 2);
    // Without the secret: refused.
    let (s, _, _) = t
        .call(
            Request::get("/admin/api/dead-letters")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = admin_get(&t, "/admin/api/dead-letters").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let letters = v["dead_letters"].as_array().expect("list");
    assert_eq!(letters.len(), 1, "{v}");
    assert_eq!(letters[0]["topic"], "orders");
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("malformed")),
        "{v}"
    );
    let offset = letters[0]["dead_offset"].as_u64().expect("offset");
    let (s, _) = admin_post(
        &t,
        &format!("/admin/api/dead-letters/orders/{offset}/explode"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = admin_post(
        &t,
        &format!("/admin/api/dead-letters/nope/{offset}/discard"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = admin_post(
        &t,
        &format!("/admin/api/dead-letters/orders/{offset}/discard"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = admin_get(&t, "/admin/api/dead-letters").await;
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0), "{v}");
    // The sales view, and a drifted store reset to the database.
    t.state
        .inventory
        .store()
        .release(3, "ann")
        .await
        .expect("drift");
    let (_, v) = admin_get(&t, "/admin/api/sales").await;
    let sale = &v["sales"][0];
    assert_eq!(sale["sale"]["units_left"], 3, "{v}");
    assert_eq!(sale["orders"]["pending"], 2, "{v}");
    assert_eq!(sale["stock"]["left"], 4, "the drifted store: {v}");
    // At rest (queue drained), the gateway's housekeeping resets a difference that stays
    // put for two checks.
    for _ in 0..2 * gateway::sync::RECONCILE_EVERY_ROUNDS {
        gateway::sync::housekeeping(&t.state).await;
    }
    let stock = t.state.inventory.store().stock(3).await.expect("stock");
    assert_eq!(
        stock.map(|s| (s.left, s.holders)),
        Some((3, 2)),
        "reset at rest"
    );
    t.state
        .inventory
        .store()
        .release(3, "bob")
        .await
        .expect("drift again");
    let (s, v) = admin_post(&t, "/admin/api/sales/3/reconcile").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["left"].as_u64(), v["holders"].as_u64()),
        (Some(3), Some(2))
    );
    let (s, _) = admin_post(&t, "/admin/api/sales/99/reconcile").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no such sale");
}

/// A purchase the workers gave up on (dead-lettered) keeps its unit and its ticket says
/// `held` with the reason; reconciliation at rest leaves its unit alone; when the operator
/// discards it, the ticket ends `rejected: discarded` and the unit goes back on sale.
#[tokio::test]
async fn a_dead_lettered_purchase_is_held_until_the_operator_discards_it() {
    let t = super::test_app(100.0, test_throttle()).await;
    t.create_sale(4, 2, 0).await;
    let ann = t.login("ann").await;
    let (_, v) = t.token_load_test(&ann, 4).await;
    let (s, v) = t.purchase(&ann, 4, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let tk = v["ticket"].as_str().expect("ticket").to_string();
    // The workers give up on it (as after its last delivery attempt).
    let ds = t
        .engine
        .fetch("orders", "order-workers", queue::FetchOptions::default())
        .await
        .expect("fetch");
    assert_eq!(ds.len(), 1);
    t.engine
        .reject("orders", "order-workers", ds[0].receipt(), "database down")
        .await
        .expect("reject");
    for _ in 0..2 * gateway::sync::RECONCILE_EVERY_ROUNDS {
        gateway::sync::housekeeping(&t.state).await;
    }
    let v = ticket(&t, &tk).await;
    assert_eq!(v["state"], "held", "{v}");
    assert_eq!(v["reason"], "database down", "{v}");
    let stock = t.state.inventory.store().stock(4).await.expect("stock");
    assert_eq!(
        stock.map(|s| (s.left, s.holders)),
        Some((1, 1)),
        "the held purchase keeps its unit through reconciliation"
    );
    let (_, v) = admin_get(&t, "/admin/api/dead-letters").await;
    let offset = v["dead_letters"][0]["dead_offset"]
        .as_u64()
        .expect("offset");
    let (s, v) = admin_post(
        &t,
        &format!("/admin/api/dead-letters/orders/{offset}/discard"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    gateway::sync::housekeeping(&t.state).await;
    let v = ticket(&t, &tk).await;
    assert_eq!(
        (v["state"].as_str(), v["reason"].as_str()),
        (Some("rejected"), Some("discarded")),
        "{v}"
    );
    let stock = t.state.inventory.store().stock(4).await.expect("stock");
    assert_eq!(
        stock.map(|s| (s.left, s.holders)),
        Some((2, 0)),
        "unit back"
    );
    // Hostile ticket and order ids are 404s, never database errors.
    for bad in ["ab%00cd", "not-a-uuid", "%F0%9F%92%A9"] {
        let (s, _, _) = t
            .call(
                Request::get(format!("/api/tickets/{bad}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
        let (s, _) = t
            .post(&format!("/api/orders/{bad}/pay"), Some(&ann), json!({}))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    }
}

/// A sale whose stock figures the store lost (a Redis restarted without persistence) is set
/// again from the database at the next reconciliation check, even while not at rest.
#[tokio::test]
async fn a_sale_the_store_lost_is_restored_from_the_database() {
    let t = super::test_app(100.0, test_throttle()).await;
    let sale = t
        .state
        .db
        .create_sale(
            &gateway::sales::NewSale {
                id: 8,
                name: "lost".into(),
                price_cents: 1,
                units: 3,
                starts_at_ms: 0,
                pay_window_ms: None,
                ends_at_ms: None,
                token_factor: None,
                per_user_limit: None,
                stock_buckets: None,
            },
            0,
        )
        .await
        .expect("create");
    t.state.catalogue.upsert(sale);
    let ann = t.login("ann").await;
    let (s, v) = t.token_load_test(&ann, 8).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "no stock yet: {v}");
    for _ in 0..gateway::sync::RECONCILE_EVERY_ROUNDS {
        gateway::sync::housekeeping(&t.state).await;
    }
    let stock = t.state.inventory.store().stock(8).await.expect("stock");
    assert_eq!(stock.map(|s| (s.units, s.left)), Some((3, 3)));
    let (s, v) = t.token_load_test(&ann, 8).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        t.purchase(&ann, 8, &token_of(&v)).await.0,
        StatusCode::ACCEPTED
    );
}

/// `GET /api/tickets/{ticket}` on `t`, with `receipt` when given.
async fn ticket_with(t: &TestApp, ticket: &str, receipt: Option<&str>) -> (StatusCode, Value) {
    let uri = match receipt {
        Some(r) => format!("/api/tickets/{ticket}?receipt={r}"),
        None => format!("/api/tickets/{ticket}"),
    };
    let (s, _, v) = t
        .call(Request::get(uri).body(Body::empty()).expect("request"))
        .await;
    (s, v)
}

/// Issue 17: a purchase still waiting in the queue is answered as queued, with its place,
/// by every gateway (they share the queue, the database and the session secret), also
/// after the gateway that accepted it is gone; a forged or another ticket's receipt is not.
#[tokio::test]
async fn a_waiting_ticket_is_answered_by_every_gateway_even_after_its_own_died() {
    let one = super::test_app(100.0, test_throttle()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let shared_db = one.state.db.clone();
    let secret = *one.state.sessions.as_bytes();
    let two = super::test_system_on(
        one.state.queue.clone(),
        one.engine.clone(),
        dir,
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        Some(shared_db),
        |c| c.sessions = gateway::session::SessionKey::from_bytes(secret),
    )
    .await;
    one.create_sale(1, 10, 0).await;
    let mut accepted = Vec::new();
    for user in ["ann", "bob"] {
        let cookie = one.login(user).await;
        let (s, v) = one.token_load_test(&cookie, 1).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = one.purchase(&cookie, 1, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let ticket = v["ticket"].as_str().expect("ticket").to_string();
        let receipt = v["receipt"].as_str().expect("a receipt").to_string();
        accepted.push((ticket, receipt));
    }
    let (bob_ticket, bob_receipt) = accepted[1].clone();
    let (ann_ticket, ann_receipt) = accepted[0].clone();
    // The other gateway never saw these tickets: without a receipt they are unknown there.
    let (s, _) = ticket_with(&two, &bob_ticket, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // With it: queued, second in line, of sale 1.
    let (s, v) = ticket_with(&two, &bob_ticket, Some(&bob_receipt)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(v["position"], 2, "{v}");
    assert_eq!(v["sale"], 1, "{v}");
    // Another ticket's receipt, or a changed one, says nothing.
    let (s, _) = ticket_with(&two, &bob_ticket, Some(&ann_receipt)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let mut forged = bob_receipt.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let (s, _) = ticket_with(&two, &bob_ticket, Some(&forged)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The accepting gateway goes away (its book, state and system dropped; the files of
    // the queue and the database it shares with the other kept); the other still answers.
    let TestApp { _dir: kept, .. } = one;
    let (s, v) = ticket_with(&two, &ann_ticket, Some(&ann_receipt)).await;
    assert_eq!((s, &v["state"]), (StatusCode::OK, &json!("queued")), "{v}");
    assert_eq!(v["position"], 1, "{v}");
    // Once a worker decides them, the database answers, receipt or not.
    two.drain().await;
    for (ticket, receipt) in [
        (&ann_ticket, None),
        (&bob_ticket, Some(bob_receipt.as_str())),
    ] {
        let (s, v) = ticket_with(&two, ticket, receipt).await;
        assert_eq!((s, &v["state"]), (StatusCode::OK, &json!("ordered")), "{v}");
    }
    drop(kept);
}
