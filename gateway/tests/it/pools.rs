//! Issue 16's shared pools: the token budget below one over the factor, the throttles and
//! the pool of the request path's database reads, and the reconcile that waits for rest.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::throttle::ThrottleConfig;
use inventory::MemoryStore;
use serde_json::Value;

use crate::system::{test_crew, with_crew};
use crate::{ADMIN, LOAD_TEST, TestApp, test_app, test_system, test_throttle, token_of};

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).expect("request")
}

/// A queued purchase of `user` on `sale`; its ticket.
async fn queued_purchase(t: &TestApp, user: &str, sale: u64) -> String {
    let cookie = t.login(user).await;
    let (s, v) = t.token_load_test(&cookie, sale).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.purchase(&cookie, sale, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v["ticket"].as_str().expect("a ticket").to_string()
}

async fn reconcile(t: &TestApp, sale: u64, query: &str) -> (StatusCode, Value) {
    let req = Request::post(format!("/admin/api/sales/{sale}/reconcile{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .expect("request");
    let (s, _, v) = t.call(req).await;
    (s, v)
}

/// Finding 6: with 5 units and factor 0.1, ⌊5 × 0.1⌋ = 0 refused every token.
#[tokio::test]
async fn a_sale_with_fewer_units_than_one_over_its_factor_still_issues_a_token() {
    let t = test_app(0.1, test_throttle()).await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let (s, v) = t.token_via_captcha(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // One token at a time while fewer than ten units are left.
    let bob = t.login("bob").await;
    let (s, v) = t.token_via_captcha(&bob, 1).await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    assert_eq!(v["error"], "tokens_exhausted", "{v}");
    // Ann buys; a unit is still left, so Bob gets a token.
    let (s, v) = t
        .purchase(&ann, 1, &token_of(&t.token_load_test(&ann, 1).await.1))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = t.token_via_captcha(&bob, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Finding 4: ticket and order reads had no quota at all.
#[tokio::test]
async fn a_flood_of_ticket_and_order_reads_is_refused_past_the_quota() {
    // Per-IP quotas on (every oneshot request comes from loopback).
    let t = test_app(1.5, ThrottleConfig::default()).await;
    let ticket = uuid::Uuid::now_v7().to_string();
    let mut refused = None;
    for n in 0..500 {
        let (s, headers, v) = t.call(get(&format!("/api/tickets/{ticket}"), None)).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.get(header::RETRY_AFTER).is_some(), "{v}");
            assert_eq!(v["error"], "throttled", "{v}");
            refused = Some(n);
            break;
        }
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }
    let n = refused.expect("a flood of ticket reads is throttled");
    assert!(n >= 10, "the burst is allowed ({n})");

    // Orders: per user, whatever the address.
    let t = test_app(1.5, test_throttle()).await;
    let cookie = t.login("ann").await;
    let order = uuid::Uuid::now_v7().to_string();
    let mut statuses = Vec::new();
    for i in 0..40 {
        let req = if i % 2 == 0 {
            get(&format!("/api/orders/{order}"), Some(&cookie))
        } else {
            Request::post(format!("/api/orders/{order}/pay"))
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("request")
        };
        let (s, headers, _) = t.call(req).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.get(header::RETRY_AFTER).is_some());
        }
        statuses.push(s);
    }
    assert!(statuses.contains(&StatusCode::NOT_FOUND));
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // A ticket read with a session counts against the user too.
    let mut throttled = false;
    for _ in 0..40 {
        let (s, _, _) = t
            .call(get(&format!("/api/tickets/{ticket}"), Some(&cookie)))
            .await;
        throttled |= s == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(throttled);
}

/// Finding 4: the request path's reads shared the workers' pool, so a flood of them
/// stalled order decisions. With every connection of the read pool held, the workers
/// still decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_decide_while_the_read_pool_is_exhausted() {
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.gateway.token_factor = 100.0;
            config.gateway.load_test_secret = Some(LOAD_TEST.into());
            config.crew = test_crew();
            config.read_connections = 2;
        },
    )
    .await;
    let (t, crew) = with_crew(t);
    t.create_sale(1, 3, 0).await;
    // Hold every connection of the read pool.
    let order_worker::db::Shard::Sqlite(read) = t.state.read_db.control() else {
        panic!("a SQLite test database");
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(read.acquire().await.expect("a read connection"));
    }
    // Reads now wait for a connection, then answer 503...
    let ticket = uuid::Uuid::now_v7().to_string();
    let (s, _, v) = t.call(get(&format!("/api/tickets/{ticket}"), None)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // ...while a purchase is still decided by the workers, on their own pool.
    let ticket = queued_purchase(&t, "ann", 1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if t.state
            .db
            .outcome(&ticket)
            .await
            .expect("outcome")
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the purchase was never decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    let (s, _, v) = t.call(get(&format!("/api/tickets/{ticket}"), None)).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("ordered")),
        "{v}"
    );
    crew.stop().await;
}

/// Schemathesis's finding (issue 18): a reconcile of a sale id past the database's signed
/// 64-bit range was a `503 unavailable` (the database refused the look-up); it names no
/// sale: `404`.
#[tokio::test]
async fn a_reconcile_of_a_sale_id_past_the_databases_range_is_a_404() {
    let t = test_app(100.0, test_throttle()).await;
    for id in [1u64 << 63, u64::MAX, 7] {
        let (s, v) = reconcile(&t, id, "?force=true").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{id}: {v}"
        );
    }
}

/// Finding 8: a reconcile mid-sale reset the stock while purchases were queued, so more
/// 202s than units were handed out.
#[tokio::test]
async fn reconcile_waits_for_rest_unless_forced() {
    let t = test_app(100.0, test_throttle()).await;
    t.create_sale(1, 2, 0).await;
    // Workers stopped (none in this app): the purchase stays queued.
    queued_purchase(&t, "ann", 1).await;
    let (s, v) = reconcile(&t, 1, "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "not_at_rest", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 purchases queued")),
        "{v}"
    );
    // The store was left alone: one unit held.
    let stock = t.state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| s.left), Some(1));
    let (s, v) = reconcile(&t, 1, "?force=nope").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // At rest (the purchase decided), it runs.
    t.drain().await;
    let (s, v) = reconcile(&t, 1, "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["left"].as_u64(), v.get("forced")),
        (Some(1), None),
        "{v}"
    );
    // Forced while a purchase is queued: it runs, and says so.
    queued_purchase(&t, "bob", 1).await;
    let (s, v) = reconcile(&t, 1, "?force=true").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["forced"], true, "{v}");
    assert!(
        v["warning"]
            .as_str()
            .is_some_and(|w| w.contains("not at rest")),
        "{v}"
    );
}

/// Finding 3 over HTTP: one address signing in as many users gets at most
/// `tokens_per_address` live tokens of a sale; with per-IP limits off it is not counted.
#[tokio::test]
async fn one_address_cannot_take_more_than_its_bound_of_a_sales_tokens() {
    for (throttle, bound) in [
        (ThrottleConfig::default(), Some(2)),
        (test_throttle(), None),
    ] {
        let t = crate::test_app_adjusted(
            Box::new(MemoryStore::new()),
            None,
            throttle,
            None,
            |config| {
                config.token_factor = 100.0;
                config.tokens_per_address = 2;
            },
        )
        .await;
        t.create_sale(1, 10, 0).await;
        let mut issued = 0;
        for n in 0..6 {
            let cookie = t.login(&format!("user{n}")).await;
            let (s, v) = t.token_via_captcha(&cookie, 1).await;
            match s {
                StatusCode::OK => issued += 1,
                StatusCode::GONE => assert_eq!(v["error"], "tokens_exhausted", "{v}"),
                other => panic!("{other}: {v}"),
            }
        }
        assert_eq!(issued, bound.unwrap_or(6));
    }
}

/// Finding 6: a system is not built with a token factor outside a sale's own bounds.
#[tokio::test]
async fn a_system_refuses_a_token_factor_out_of_bounds() {
    use gateway::system::{DatabaseSource, QueueSource, System, SystemConfig, SystemError};
    for bad in [0.0, 0.05, f64::NAN, 1e9] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = std::sync::Arc::new(
            queue::Engine::open(dir.path(), queue::Config::default()).expect("engine"),
        );
        let db = crate::test_db(&dir).await;
        let mut gateway = gateway::config::GatewayConfig::new(ADMIN);
        gateway.token_factor = bad;
        let config = SystemConfig::new(
            QueueSource::Shared(engine),
            DatabaseSource::Open(db),
            gateway,
        )
        .without_crew();
        match System::build(config).await {
            Err(SystemError::Config(e)) => assert!(e.contains("token factor"), "{e}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}
