//! The reconciliation at rest with purchases in the orders topic's dead letters (the
//! embedded queue, the in-process store, SQLite): a decided one does not stop the reset of
//! a drifted store; an undecided one keeps its unit through checks and resets until the
//! operator replays it. The checks are driven by calling the housekeeping round directly.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use inventory::Released;
use queue::Queue;

use super::{TestApp, test_throttle, token_of};

/// Runs housekeeping rounds until `checks` reconciliation checks have run.
async fn checks(t: &TestApp, checks: u64) {
    for _ in 0..checks * gateway::sync::RECONCILE_EVERY_ROUNDS {
        gateway::sync::housekeeping(&t.state).await;
    }
}

/// The store's (left, holders) of `sale`.
async fn store_of(t: &TestApp, sale: u64) -> (u64, u64) {
    let s = t.state.inventory.store().stock(sale).await.expect("stock");
    s.map(|s| (s.left, s.holders)).expect("the sale's stock")
}

/// The database's (units left, active orders) of `sale`.
async fn db_of(t: &TestApp, sale: u64) -> (u64, u64) {
    let left = t
        .state
        .db
        .sale(sale)
        .await
        .expect("sale")
        .expect("the sale")
        .units_left;
    let active = t
        .state
        .db
        .order_counts(sale)
        .await
        .expect("counts")
        .active();
    (left, active)
}

fn resets(t: &TestApp) -> u64 {
    t.state.reconciler.resets.load(Ordering::Relaxed)
}

/// `user` buys one unit of `sale` and the workers decide it.
async fn bought(t: &TestApp, user: &str, sale: u64) {
    let cookie = t.login(user).await;
    let (_, v) = t.token_load_test(&cookie, sale).await;
    let (s, v) = t.purchase(&cookie, sale, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    t.drain().await;
}

/// `user` buys one unit of `sale` and the workers give up on it at its last attempt (the
/// orders topic's dead letters); with `decided`, its order is committed first, as when its
/// pay-by message could not be confirmed (a queue partition's master lost with its only
/// replica). Returns its ticket.
async fn dead_lettered(t: &TestApp, user: &str, sale: u64, decided: bool) -> String {
    let cookie = t.login(user).await;
    let (_, v) = t.token_load_test(&cookie, sale).await;
    let (s, v) = t.purchase(&cookie, sale, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ticket = v["ticket"].as_str().expect("ticket").to_string();
    let ds = t
        .engine
        .fetch("orders", "order-workers", queue::FetchOptions::default())
        .await
        .expect("fetch");
    assert_eq!(ds.len(), 1);
    if decided {
        let p = order_worker::PurchaseMessage::decode(&ds[0].payload).expect("a purchase");
        assert_eq!(p.ticket, ticket);
        t.state
            .db
            .decide_batch(&[p], t.state.now_ms())
            .await
            .expect("decide");
    }
    t.engine
        .reject(
            "orders",
            "order-workers",
            ds[0].receipt(),
            "publishing pay-by messages failed",
        )
        .await
        .expect("reject");
    let stats = t.state.queue.stats("orders").await.expect("stats");
    assert_eq!(stats.dead_letters_pending, 1, "dead-lettered");
    ticket
}

/// The flaky cluster run: a decided purchase dead-lettered (its pay-by message never
/// confirmed) stopped the check at rest for good, so a reservation left by a gateway killed
/// mid-purchase was never undone. It is reset within two checks now, and stays put.
#[tokio::test]
async fn a_decided_purchase_in_the_dead_letters_does_not_stop_the_reset_at_rest() {
    let t = super::test_app(100.0, test_throttle()).await;
    t.create_sale(61, 5, 0).await;
    bought(&t, "ann", 61).await;
    dead_lettered(&t, "bob", 61, true).await;
    assert_eq!(db_of(&t, 61).await, (3, 2), "bob's order committed");
    assert_eq!(store_of(&t, 61).await, (3, 2));
    // A reservation whose enqueue never happened (its gateway killed mid-purchase).
    t.state
        .inventory
        .store()
        .reserve_as(61, "carl", "a-ticket-never-enqueued")
        .await
        .expect("reserve");
    assert_eq!(store_of(&t, 61).await, (2, 3), "drifted");
    checks(&t, 2).await;
    assert_eq!(store_of(&t, 61).await, (3, 2), "reset to the database");
    assert_eq!(resets(&t), 1);
    // Consistent now: nothing more to reset.
    checks(&t, 3).await;
    assert_eq!(store_of(&t, 61).await, (3, 2));
    assert_eq!(resets(&t), 1);
}

/// An undecided purchase in the dead letters keeps its unit: no reset while the store
/// agrees with the database plus it; a drift is reset with its unit still held (by its
/// ticket's tag); the operator's replay then makes it an order on that unit.
#[tokio::test]
async fn an_undecided_purchase_in_the_dead_letters_keeps_its_unit_through_resets() {
    let t = super::test_app(100.0, test_throttle()).await;
    t.create_sale(62, 5, 0).await;
    bought(&t, "ann", 62).await;
    let bob = dead_lettered(&t, "bob", 62, false).await;
    assert_eq!(db_of(&t, 62).await, (4, 1), "bob's purchase undecided");
    assert_eq!(store_of(&t, 62).await, (3, 2), "bob's unit held");
    // The store agrees with the database once bob's held unit is counted: no reset.
    checks(&t, 3).await;
    assert_eq!(store_of(&t, 62).await, (3, 2), "bob's unit kept");
    assert_eq!(resets(&t), 0);
    // Drift (a reservation whose enqueue never happened): reset, bob's unit still held.
    t.state
        .inventory
        .store()
        .reserve_as(62, "carl", "a-ticket-never-enqueued")
        .await
        .expect("reserve");
    checks(&t, 2).await;
    assert_eq!(store_of(&t, 62).await, (3, 2), "reset, bob's unit kept");
    assert_eq!(resets(&t), 1);
    checks(&t, 3).await;
    assert_eq!(store_of(&t, 62).await, (3, 2));
    assert_eq!(resets(&t), 1);
    let (s, _, v) = t
        .call(
            Request::get(format!("/api/tickets/{bob}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("held")),
        "{v}"
    );
    // The operator replays it: an order on the unit it kept.
    let (_, v) = super::operator::admin(&t, "GET", "/admin/api/dead-letters", None).await;
    let offset = v["dead_letters"][0]["dead_offset"]
        .as_u64()
        .expect("offset");
    let (s, v) = super::operator::admin(
        &t,
        "POST",
        &format!("/admin/api/dead-letters/orders/{offset}/replay"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.drain().await;
    assert_eq!(db_of(&t, 62).await, (3, 2), "bob's order");
    assert_eq!(store_of(&t, 62).await, (3, 2), "on the unit kept");
    checks(&t, 3).await;
    assert_eq!(store_of(&t, 62).await, (3, 2));
    assert_eq!(resets(&t), 1, "consistent after the replay");
    // The unit bob holds is tagged with his ticket (as a cancellation releases it).
    let r = t
        .state
        .inventory
        .store()
        .release_if(62, "bob", Some(&bob))
        .await
        .expect("release");
    assert_eq!(r, Released::Released { left: 4 });
}

/// Many undecided purchases in the orders topic's dead letters through many checks at
/// rest: the store must stay as the database plus the units those purchases hold, with no
/// reset. Also the callgrind harness of gateway/BENCHMARKS.md ("Issue 19: the
/// reconciliation at rest with dead letters"): `RECONCILE_DEAD` purchases (20 unless set;
/// the benchmark used 100) and `RECONCILE_CHECKS` checks (3 unless set; it used 20 and 100).
#[tokio::test]
async fn reconcile_checks_with_dead_letters_harness() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().expect("a count"))
    };
    let (dead, n) = (var("RECONCILE_DEAD", 20), var("RECONCILE_CHECKS", 3));
    let t = super::test_app(100.0, test_throttle()).await;
    t.create_sale(63, dead + 1, 0).await;
    for i in 0..dead {
        let p = order_worker::PurchaseMessage {
            ticket: format!("harness-ticket-{i}"),
            sale: 63,
            user: format!("harness-user-{i}"),
            price_cents: 99_900,
            accepted_at_ms: t.state.now_ms(),
        };
        t.state
            .inventory
            .store()
            .reserve_as(63, &p.user, &p.ticket)
            .await
            .expect("reserve");
        t.state
            .queue
            .publish(
                "orders",
                queue::Message::new(serde_json::to_vec(&p).expect("json")),
            )
            .await
            .expect("publish");
    }
    let mut rejected = 0;
    while rejected < dead {
        let ds = t
            .engine
            .fetch("orders", "order-workers", queue::FetchOptions::default())
            .await
            .expect("fetch");
        assert!(!ds.is_empty(), "{rejected} of {dead} fetched");
        for d in ds {
            t.engine
                .reject("orders", "order-workers", d.receipt(), "harness")
                .await
                .expect("reject");
            rejected += 1;
        }
    }
    checks(&t, n).await;
    assert_eq!(store_of(&t, 63).await, (1, dead));
    assert_eq!(db_of(&t, 63).await, (dead + 1, 0));
    assert_eq!(resets(&t), 0);
}
