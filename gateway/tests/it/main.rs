//! Gateway tests: the handlers through `oneshot` (no socket, `test_app`) and served on a
//! real loopback port (`spawn_app`), on an embedded queue in a temporary directory and the
//! in-process or Redis stock store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use gateway::captcha::purpose;
use gateway::config::{GatewayConfig, LOAD_TEST_HEADER, ServeLimits};
use gateway::state::AppState;
use gateway::system::{DatabaseSource, QueueSource, StockSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;
use inventory::MemoryStore;
use loadgen::Conn;
use queue::{Clock as _, Engine, FetchOptions, Queue, StartAt, SystemClock};
use serde_json::{Value, json};
use tower::ServiceExt;

mod behind_proxy;
mod browser;
mod compression;
mod edge;
mod fast_path;
mod flags;
mod handoff;
mod hostile;
mod operator;
mod pages;
mod pools;
mod reconcile;
mod schemathesis;
mod shopper;
mod sold_out_flag;
mod system;

const ADMIN: &str = "admin-secret";

/// The `Content-Length` of an HTTP/1.1 message head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// A fresh SQLite orders database in `dir`.
async fn test_db(dir: &tempfile::TempDir) -> order_worker::OrdersDb {
    order_worker::testing::sqlite(dir.path(), &Default::default()).await
}
const LOAD_TEST: &str = "load-test-secret";
/// The purchase wait of the test gateways: longer than any test request may take.
const PURCHASE_WAIT_MS: u64 = 120_000;

struct TestApp {
    state: Arc<AppState>,
    engine: Arc<Engine>,
    /// Limits of the front service (both transports).
    limits: ServeLimits,
    /// Set when the app is served on a real port: requests go over HTTP/1.1 sockets.
    served: Option<Served>,
    /// The system the app was built as (serving, once on a port, until dropped).
    system: Option<System>,
    /// The order workers and cancellers, when the system was built with them.
    crew: Option<order_worker::crew::Crew>,
    _dir: tempfile::TempDir,
}

/// A gateway served on a loopback port until dropped.
struct Served {
    addr: std::net::SocketAddr,
    pool: std::sync::Mutex<Vec<Conn>>,
}

/// Throttles for tests: everything comes from loopback, so no per-IP quotas.
fn test_throttle() -> ThrottleConfig {
    ThrottleConfig::default().without_per_ip()
}

async fn test_app(token_factor: f64, throttle: ThrottleConfig) -> TestApp {
    test_app_with(token_factor, throttle, Some(LOAD_TEST)).await
}

/// The app served on a real loopback port with the default limits.
async fn spawn_app(token_factor: f64, throttle: ThrottleConfig) -> TestApp {
    test_app(token_factor, throttle)
        .await
        .on_port(ServeLimits::default())
        .await
}

async fn test_app_with(
    token_factor: f64,
    throttle: ThrottleConfig,
    load_test: Option<&str>,
) -> TestApp {
    test_app_on(
        Box::new(MemoryStore::new()),
        None,
        token_factor,
        throttle,
        load_test,
        None,
    )
    .await
}

async fn test_app_on(
    store: Box<dyn inventory::StockStore>,
    ledger: Option<Arc<dyn gateway::ledger::TokenLedger>>,
    token_factor: f64,
    throttle: ThrottleConfig,
    load_test: Option<&str>,
    db: Option<order_worker::OrdersDb>,
) -> TestApp {
    test_app_adjusted(store, ledger, throttle, db, |config| {
        config.token_factor = token_factor;
        config.load_test_secret = load_test.map(String::from);
    })
    .await
}

/// The test gateway on a fresh embedded queue (and a fresh SQLite database unless `db`),
/// with the test configuration changed by `adjust`.
async fn test_app_adjusted(
    store: Box<dyn inventory::StockStore>,
    ledger: Option<Arc<dyn gateway::ledger::TokenLedger>>,
    throttle: ThrottleConfig,
    db: Option<order_worker::OrdersDb>,
    adjust: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    test_system(store, ledger, throttle, db, |c| adjust(&mut c.gateway)).await
}

/// The test system, built through [`gateway::system::System`] on a fresh embedded queue
/// (and a fresh SQLite database unless `db`), without order workers unless `adjust` asks
/// for them.
async fn test_system(
    store: Box<dyn inventory::StockStore>,
    ledger: Option<Arc<dyn gateway::ledger::TokenLedger>>,
    throttle: ThrottleConfig,
    db: Option<order_worker::OrdersDb>,
    adjust: impl FnOnce(&mut SystemConfig),
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("engine"));
    test_system_on(
        engine.clone(),
        engine,
        dir,
        store,
        ledger,
        throttle,
        db,
        adjust,
    )
    .await
}

/// The test system on `queue` (`engine` is what the test reads behind it).
#[allow(clippy::too_many_arguments)]
async fn test_system_on(
    queue: Arc<dyn Queue>,
    engine: Arc<Engine>,
    dir: tempfile::TempDir,
    store: Box<dyn inventory::StockStore>,
    ledger: Option<Arc<dyn gateway::ledger::TokenLedger>>,
    throttle: ThrottleConfig,
    db: Option<order_worker::OrdersDb>,
    adjust: impl FnOnce(&mut SystemConfig),
) -> TestApp {
    let db = match db {
        Some(db) => db,
        None => test_db(&dir).await,
    };
    let mut gateway = GatewayConfig::new(ADMIN);
    // Tests check outcomes, not latency: a purchase waits for its enqueue as long as its
    // request may last (a debug build on two shared cores sometimes sees seconds-long
    // fsync rounds); `a_slow_enqueue_answers_with_a_ticket_to_follow` tests the wait.
    gateway.purchase_wait_ms = PURCHASE_WAIT_MS;
    let mut config = SystemConfig::new(
        QueueSource::Shared(queue),
        DatabaseSource::Open(db),
        gateway,
    )
    .without_crew();
    config.stock = StockSource::Given {
        store,
        ledger: ledger.unwrap_or_else(|| Arc::new(gateway::ledger::MemoryLedger::new())),
    };
    config.throttle = throttle;
    config.sold_out_recheck = Duration::from_millis(200);
    adjust(&mut config);
    let mut system = System::build(config).await.expect("system");
    TestApp {
        state: system.state().clone(),
        engine,
        limits: system.limits(),
        served: None,
        crew: system.take_crew(),
        system: Some(system),
        _dir: dir,
    }
}

impl TestApp {
    /// Runs an order worker until every queued purchase is decided (the workers' lag is
    /// 0), then one housekeeping round of the gateway.
    async fn drain(&self) {
        let worker = order_worker::worker::OrderWorker::new(
            self.state.db.clone(),
            self.state.queue.clone(),
            Some(self.state.inventory.clone()),
            order_worker::worker::WorkerConfig {
                wait_ms: 0,
                ..Default::default()
            },
            Default::default(),
            Arc::new(queue::SystemClock),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never drained"
            );
            if worker.step().await.expect("worker step") > 0 {
                continue;
            }
            let stats = self.state.queue.stats("orders").await.expect("stats");
            let lag = stats
                .groups
                .iter()
                .find(|g| g.name == "order-workers")
                .map_or(stats.next_offset, |g| g.lag);
            if lag == 0 {
                break;
            }
        }
        gateway::sync::housekeeping(&self.state).await;
    }

    /// Serves this app on a fresh loopback port (until dropped); requests then go over
    /// real sockets.
    async fn on_port(mut self, limits: ServeLimits) -> TestApp {
        self.limits = limits;
        let system = self.system.as_mut().expect("a system not yet served");
        system.set_limits(limits);
        let addr = system.spawn().await.expect("bind and serve");
        self.served = Some(Served {
            addr,
            pool: std::sync::Mutex::new(Vec::new()),
        });
        self
    }

    async fn call_raw(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let Some(served) = &self.served else {
            let resp = gateway::front::app_with_limits(self.state.clone(), self.limits)
                .oneshot(req)
                .await
                .expect("infallible");
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            return (status, headers, bytes);
        };
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let req = Request::from_parts(parts, http_body_util::Full::new(body));
        let pooled = served.pool.lock().expect("pool").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::connect(served.addr).await.expect("connect"),
        };
        let answer = conn.send(req).await.expect("an answer over the socket");
        served.pool.lock().expect("pool").push(conn);
        (answer.status, answer.headers, answer.body)
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let (status, headers, bytes) = self.call_raw(req).await;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn post(&self, uri: &str, cookie: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        let (s, _, v) = self
            .call(b.body(Body::from(body.to_string())).expect("request"))
            .await;
        (s, v)
    }

    async fn create_sale(&self, id: u64, units: u64, starts_at_ms: u64) {
        self.create_sale_paid_within(id, units, starts_at_ms, 600_000)
            .await
    }

    async fn create_sale_paid_within(
        &self,
        id: u64,
        units: u64,
        starts_at_ms: u64,
        pay_window_ms: u64,
    ) {
        let req = Request::post("/admin/api/sales")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::from(
                json!({"id": id, "name": "phone", "price_cents": 99900, "units": units,
                       "starts_at_ms": starts_at_ms, "pay_window_ms": pay_window_ms,
                       "confirm": true})
                .to_string(),
            ))
            .expect("request");
        let (s, _, v) = self.call(req).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Logs `user` in; returns the `Cookie` header value.
    async fn login(&self, user: &str) -> String {
        let req = Request::post("/api/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"user": user}).to_string()))
            .expect("request");
        let (s, headers, v) = self.call(req).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let set = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite"),
            "{set}"
        );
        set.split(';').next().expect("name=value").to_string()
    }

    /// The user of a `Cookie` header value from `login`.
    fn user_of(&self, cookie: &str) -> String {
        let value = gateway::session::cookie_from_header(cookie).expect("a session cookie");
        self.state
            .sessions
            .verify(value, self.state.now_ms())
            .expect("a valid session")
    }

    /// Plants a captcha as fetched by `user` for `sale`, with this answer; returns its id.
    fn plant_captcha(&self, user: &str, sale: u64, answer: &str) -> String {
        self.state
            .captchas
            .insert_answer(
                &purpose(user, sale),
                gateway::captcha::Requester::new(user, None),
                answer,
                self.state.now_ms(),
            )
            .expect("captcha")
    }

    /// Asks for a token of `sale` with captcha `id` answered `answer`.
    async fn token_with_captcha(
        &self,
        cookie: &str,
        sale: u64,
        id: &str,
        answer: &str,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/api/sales/{sale}/token"),
            Some(cookie),
            json!({"captcha_id": id, "answer": answer}),
        )
        .await
    }

    /// A token through a real captcha (its answer planted in the store, for this user and
    /// sale).
    async fn token_via_captcha(&self, cookie: &str, sale: u64) -> (StatusCode, Value) {
        let id = self.plant_captcha(&self.user_of(cookie), sale, "AbCdE");
        self.token_with_captcha(cookie, sale, &id, "abcde").await
    }

    /// A token in load-test mode (no captcha).
    async fn token_load_test(&self, cookie: &str, sale: u64) -> (StatusCode, Value) {
        let req = Request::post(format!("/api/sales/{sale}/token"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, cookie)
            .header(LOAD_TEST_HEADER, LOAD_TEST)
            .body(Body::from("{}"))
            .expect("request");
        let (s, _, v) = self.call(req).await;
        (s, v)
    }

    async fn purchase(&self, cookie: &str, sale: u64, token: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/api/sales/{sale}/purchase"),
            Some(cookie),
            json!({"token": token}),
        )
        .await
    }
}

/// `GET /admin/api/sales` with the admin's bearer secret.
fn admin_sales_request() -> Request<Body> {
    Request::get("/admin/api/sales")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .expect("request")
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().expect("a token").to_string()
}

#[tokio::test]
async fn a_purchase_from_login_to_ticket() {
    purchase_flow(test_app(1.5, test_throttle()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_from_login_to_ticket_on_a_real_port() {
    purchase_flow(spawn_app(1.5, test_throttle()).await).await;
}

async fn purchase_flow(t: TestApp) {
    t.create_sale(1, 10, 0).await;
    let alice = t.login("alice").await;
    // The captcha image endpoint answers with an id and a PNG data URL.
    let (s, _, v) = t
        .call(
            Request::get("/api/sales/1/captcha")
                .header(header::COOKIE, &alice)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("data:image/png;base64,"))
    );
    let (s, v) = t.token_via_captcha(&alice, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.purchase(&alice, 1, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ticket = v["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(v["position"], 1);
    // The purchase is in the queue, with the ticket as its message id.
    let peeked = t.engine.peek("orders", 0, 10).await.expect("peek");
    assert_eq!(peeked.len(), 1);
    let id = uuid::Uuid::parse_str(&ticket).expect("uuid").as_u128();
    assert_eq!(peeked[0].id, Some(id));
    let body: Value = serde_json::from_slice(&peeked[0].payload).expect("json payload");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["sale"], 1);
    // The ticket is queued, first in line; once a worker resolves it, it says so.
    let (s, _, v) = t
        .call(
            Request::get(format!("/api/tickets/{ticket}"))
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "queued");
    assert_eq!(v["position"], 1);
    t.drain().await;
    let (_, _, v) = t
        .call(
            Request::get(format!("/api/tickets/{ticket}"))
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(v["state"], "ordered", "{v}");
    let order_id = v["order_id"].as_str().expect("order id").to_string();
    // The order is alice's alone, pending until she pays.
    let (s, _, v) = t
        .call(
            Request::get(format!("/api/orders/{order_id}"))
                .header(header::COOKIE, &alice)
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("pending")),
        "{v}"
    );
    let bob = t.login("bob").await;
    let (s, _, _) = t
        .call(
            Request::get(format!("/api/orders/{order_id}"))
                .header(header::COOKIE, &bob)
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not bob's order");
    let (s, _) = t
        .post(
            &format!("/api/orders/{order_id}/pay"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "bob cannot pay alice's order");
    let (s, v) = t
        .post(
            &format!("/api/orders/{order_id}/pay"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("paid")),
        "{v}"
    );
    let (s, v) = t
        .post(
            &format!("/api/orders/{order_id}/pay"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("paid")),
        "paying twice is harmless: {v}"
    );
    // Stock and sale view agree.
    let (_, _, v) = t
        .call(Request::get("/api/sales/1").body(Body::empty()).expect("r"))
        .await;
    assert_eq!(v["units_left"], 9);
    assert_eq!(v["state"], "open");
    // The metrics saw it.
    let (_, _, body) = t
        .call_raw(Request::get("/metrics").body(Body::empty()).expect("r"))
        .await;
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    for line in [
        "gateway_purchases_total{outcome=\"accepted\"} 1",
        "gateway_responses_total{route=\"purchase\",class=\"2xx\"} 1",
        "gateway_request_duration_seconds_count{route=\"purchase\"} 1",
        "gateway_tokens_issued_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn refusals_have_the_right_status_and_a_json_error() {
    let t = spawn_app(1.5, test_throttle()).await;
    t.create_sale(1, 1, 0).await;
    t.create_sale(2, 5, 0).await;
    t.create_sale(3, 5, SystemClock.now_ms() + 3_600_000).await;
    let alice = t.login("alice").await;
    let bob = t.login("bob").await;

    // No session.
    let (s, v) = t
        .post("/api/sales/1/purchase", None, json!({"token": "x"}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "unauthorized");
    // A forged cookie.
    let (s, _) = t
        .post(
            "/api/sales/1/purchase",
            Some("seckill_session=Zm9v"),
            json!({"token": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // No session and a malformed body: the session is checked first.
    let (s, _) = t
        .post("/api/sales/1/purchase", None, json!({"nope": 1}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Malformed body.
    let (s, v) = t
        .post("/api/sales/1/purchase", Some(&alice), json!({"nope": 1}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Wrong captcha answer: refused, and the captcha is used up.
    let id = t.plant_captcha("alice", 1, "right");
    let (s, v) = t.token_with_captcha(&alice, 1, &id, "wrong").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_captcha"))
    );
    let (s, _) = t.token_with_captcha(&alice, 1, &id, "right").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a captcha is single use");
    // A captcha fetched (and solved) for one user and sale is wrong for another user, and
    // for another sale (fresh users: the token route has a per-user quota).
    for (who, owner, sale) in [("dave", "alice", 1), ("erin", "erin", 2)] {
        let who = &t.login(who).await;
        let id = t.plant_captcha(owner, 1, "right");
        let (s, v) = t.token_with_captcha(who, sale, &id, "right").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("bad_captcha")),
            "{v}"
        );
    }

    // Tokens: tampered, another user's, another sale's, reused.
    let (_, v) = t.token_via_captcha(&alice, 2).await;
    let token = token_of(&v);
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let (s, v) = t.purchase(&alice, 2, &tampered).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_token"))
    );
    let (s, _) = t.purchase(&bob, 2, &token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another user's token");
    let (s, _) = t.purchase(&alice, 1, &token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another sale's token");
    let (s, _) = t.purchase(&alice, 2, &token).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = t.purchase(&alice, 2, &token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a token is single use");

    // Already bought: a fresh token, same user and sale; no unit burnt.
    let (_, v) = t.token_via_captcha(&alice, 2).await;
    let (s, v) = t.purchase(&alice, 2, &token_of(&v)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_bought"))
    );
    let left = t
        .state
        .inventory
        .store()
        .stock(2)
        .await
        .expect("stock")
        .map(|s| s.left);
    assert_eq!(left, Some(4));

    // Sold out: sale 1 has one unit; bob takes it, carol finds it gone.
    let carol = t.login("carol").await;
    let (_, v) = t.token_via_captcha(&bob, 1).await;
    assert_eq!(
        t.purchase(&bob, 1, &token_of(&v)).await.0,
        StatusCode::ACCEPTED
    );
    let (s, v) = t.token_via_captcha(&carol, 1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("sold_out")),
        "the flag answers at the token step"
    );
    // A sold-out sale is public knowledge: answered before any session or token check.
    let (s, v) = t
        .post("/api/sales/1/purchase", None, json!({"token": "x"}))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("sold_out"))
    );

    // Not started: 425 with Retry-After.
    let (_, v) = t.token_via_captcha(&bob, 3).await;
    let req = Request::post("/api/sales/3/purchase")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, &bob)
        .body(Body::from(json!({"token": token_of(&v)}).to_string()))
        .expect("request");
    let (s, headers, v) = t.call(req).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::TOO_EARLY, Some("not_started"))
    );
    assert!(headers.get(header::RETRY_AFTER).is_some());

    // Unknown sale and admin without the secret.
    let (s, _) = t.post("/api/sales/99/token", Some(&alice), json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Malformed paths and wrong methods get JSON errors too.
    for uri in [
        "/api/sales/abc",
        "/api/sales/99999999999999999999999",
        "/api/tickets/%FF",
    ] {
        let (s, _, v) = t
            .call(Request::get(uri).body(Body::empty()).expect("r"))
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{uri}: {v}"
        );
    }
    let (s, _, v) = t
        .call(
            Request::delete("/api/sales")
                .body(Body::empty())
                .expect("r"),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (s, v) = t.post("/admin/api/sales", None, json!({"id": 9})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}

#[tokio::test]
async fn load_test_mode_skips_only_the_captcha_and_only_with_the_secret() {
    let t = test_app(1.5, test_throttle()).await;
    t.create_sale(1, 10, 0).await;
    let alice = t.login("alice").await;
    let (s, v) = t.token_load_test(&alice, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A wrong secret is no secret: the captcha is required.
    let req = Request::post("/api/sales/1/token")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, &alice)
        .header(LOAD_TEST_HEADER, "guess")
        .body(Body::from("{}"))
        .expect("request");
    assert_eq!(t.call(req).await.0, StatusCode::FORBIDDEN);
    // With load-test mode off, the right secret is no help either.
    let off = test_app_with(1.5, test_throttle(), None).await;
    off.create_sale(1, 10, 0).await;
    let alice = off.login("alice").await;
    assert_eq!(
        off.token_load_test(&alice, 1).await.0,
        StatusCode::FORBIDDEN
    );
}

/// No token, no access: live tokens are capped at units left × factor; a token spent in a
/// purchase leaves the count, and a unit given back (a cancellation) makes room again.
#[tokio::test]
async fn the_token_budget_follows_the_units_left() {
    let t = test_app(1.0, test_throttle()).await;
    t.create_sale(1, 2, 0).await;
    let alice = t.login("alice").await;
    let bob = t.login("bob").await;
    let carol = t.login("carol").await;
    let (s, v) = t.token_load_test(&alice, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let alice_token = token_of(&v);
    let (s, v) = t.token_load_test(&bob, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let bob_first = token_of(&v);
    // Asking again replaces bob's token without taking a second place; the first one is void.
    assert_eq!(t.token_load_test(&bob, 1).await.0, StatusCode::OK);
    let (s, v) = t.purchase(&bob, 1, &bob_first).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_token")),
        "a replaced token"
    );
    // Two units, two live tokens: carol is refused before her captcha is looked at.
    let id = t.plant_captcha("carol", 1, "abcde");
    let (s, v) = t.token_with_captcha(&carol, 1, &id, "abcde").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("tokens_exhausted")),
        "{v}"
    );
    // Alice buys: one unit left, bob's token still live: still no room.
    assert_eq!(
        t.purchase(&alice, 1, &alice_token).await.0,
        StatusCode::ACCEPTED
    );
    let (s, v) = t.token_load_test(&carol, 1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("tokens_exhausted"))
    );
    // Alice's unit comes back (her order was cancelled): room for carol, whose captcha
    // was kept.
    t.state
        .inventory
        .release(1, "alice")
        .await
        .expect("release");
    let (s, v) = t.token_with_captcha(&carol, 1, &id, "abcde").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// A ticket book full of queued tickets refuses new purchases (503 busy) before any unit
/// is reserved, and the buyer keeps the token; a resolved ticket makes room.
#[tokio::test]
async fn a_book_full_of_queued_tickets_refuses_purchases_without_losing_any() {
    let t = test_app_adjusted(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.load_test_secret = Some(LOAD_TEST.into());
            config.tickets_max = 2;
        },
    )
    .await;
    t.create_sale(1, 10, 0).await;
    let mut tickets = Vec::new();
    for user in ["ann", "bob"] {
        let c = t.login(user).await;
        let (_, v) = t.token_load_test(&c, 1).await;
        let (s, v) = t.purchase(&c, 1, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        tickets.push(v["ticket"].as_str().expect("ticket").to_string());
    }
    let cat = t.login("cat").await;
    let (_, v) = t.token_load_test(&cat, 1).await;
    let token = token_of(&v);
    let (s, v) = t.purchase(&cat, 1, &token).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy"))
    );
    let left = t.state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(
        left.map(|s| s.left),
        Some(8),
        "no unit held for the refused purchase"
    );
    // The queued tickets are still there; once one is resolved, cat's token buys.
    for id in &tickets {
        assert!(t.state.tickets.get(id).is_some());
    }
    // Once the workers have decided them, the book forgets them and cat's token buys.
    t.drain().await;
    assert!(t.state.tickets.is_empty(), "decided tickets leave the book");
    assert_eq!(t.purchase(&cat, 1, &token).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn repeated_purchase_attempts_are_throttled_with_retry_after() {
    let mut cfg = test_throttle();
    cfg.repeat_max = 2;
    let t = test_app(100.0, cfg).await;
    t.create_sale(1, 10, 0).await;
    let alice = t.login("alice").await;
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..3 {
        let (_, v) = t.token_load_test(&alice, 1).await;
        last = t.purchase(&alice, 1, &token_of(&v)).await;
    }
    assert_eq!(last.0, StatusCode::TOO_MANY_REQUESTS, "{}", last.1);
    assert_eq!(last.1["error"], "throttled");
}

/// 20,000 purchase attempts from 5,000 users (four clicks each) on a sale of 500 units:
/// exactly 500 accepted, nobody twice, the stock ends at zero, and every 202 has its
/// message in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_gets_exactly_the_units_on_sale() {
    let mut t = test_app(100.0, test_throttle()).await;
    t.limits = patient();
    flash_crowd(t).await;
}

/// Limits for the flash-crowd tests: they check who gets a unit, so a request must not time
/// out because a debug build shares two cores with other tests (every outcome counts).
fn patient() -> ServeLimits {
    ServeLimits {
        request_timeout_ms: 120_000,
        ..ServeLimits::default()
    }
}

/// The same flash crowd over real sockets, through the served stack (load shedding,
/// timeouts, body limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_on_a_real_port_gets_exactly_the_units_on_sale() {
    flash_crowd(
        test_app(100.0, test_throttle())
            .await
            .on_port(patient())
            .await,
    )
    .await;
}

/// The same against the Redis stock store (the real Redis, a key prefix of its own).
/// Skipped without Redis, except under `CI`, where it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_gets_exactly_the_units_on_sale_with_redis() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "gateway-test:{}:{}:",
        std::process::id(),
        SystemClock.now_ms()
    );
    let store = match inventory::RedisStore::connect(&url, &prefix, 16).await {
        Ok(s) => s,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("Redis at {url} is required under CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: no Redis at {url}: {e}");
            return;
        }
    };
    let store = Arc::new(store);
    // The token ledger in Redis too, as the binary sets it up with a Redis store.
    let ledger = Arc::new(gateway::ledger::RedisLedger::beside(&store));
    let t = test_app_on(
        Box::new(store.clone()),
        Some(ledger.clone()),
        100.0,
        test_throttle(),
        Some(LOAD_TEST),
        None,
    )
    .await
    .on_port(patient())
    .await;
    flash_crowd(t).await;
    store.forget(7).await.expect("clean up");
    ledger.forget(7).await.expect("clean up");
}

/// The same flash crowd with the queue behind a broker (`queue::Server` on a loopback
/// port, reached through `queue::Client`): purchases travel as pipelined `publish_each`
/// frames, and the audit reads the broker's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_through_the_broker_gets_exactly_the_units_on_sale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("engine"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // Secured as deployed: the gateway's client proves the broker's secret.
    let secret = queue::Secret::new(b"gateway-test-broker-secret".to_vec()).expect("secret");
    let server = queue::Server::new(
        engine.clone(),
        queue::ServerConfig {
            secret: Some(secret.clone()),
            ..queue::ServerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    let client = queue::Client::connect(queue::ClientConfig::new(&addr).with_secret(Some(secret)))
        .await
        .expect("connect to the broker");
    let t = test_system_on(
        Arc::new(client),
        engine,
        dir,
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.gateway.token_factor = 100.0;
            config.gateway.load_test_secret = Some(LOAD_TEST.into());
        },
    )
    .await
    .on_port(patient())
    .await;
    flash_crowd(t).await;
    let _ = stop.send(());
    broker.await.expect("the broker task");
}

async fn flash_crowd(t: TestApp) {
    let t = Arc::new(t);
    t.create_sale(7, 500, 0).await;
    let mut cookies = Vec::new();
    for u in 0..5000 {
        cookies.push(t.login(&format!("user-{u}")).await);
    }
    let cookies = Arc::new(cookies);
    let tasks: Vec<_> = (0..32usize)
        .map(|k| {
            let t = t.clone();
            let cookies = cookies.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for i in 0..625usize {
                    let attempt = k * 625 + i;
                    let user = attempt % 5000;
                    let cookie = &cookies[user];
                    let (s, v) = t.token_load_test(cookie, 7).await;
                    if s != StatusCode::OK {
                        assert!(
                            s == StatusCode::GONE || s == StatusCode::TOO_MANY_REQUESTS,
                            "token: {s} {v}"
                        );
                        continue;
                    }
                    let (s, v) = t.purchase(cookie, 7, &token_of(&v)).await;
                    match s {
                        StatusCode::ACCEPTED => {
                            accepted.push((user, v["ticket"].as_str().expect("ticket").to_string()))
                        }
                        StatusCode::GONE | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS => {
                        }
                        // The same user clicking in another task got a newer token, which
                        // replaced this one (one live token per user and sale).
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
    let users: HashSet<usize> = accepted.iter().map(|(u, _)| *u).collect();
    assert_eq!(accepted.len(), 500, "exactly the units on sale");
    assert_eq!(users.len(), 500, "nobody twice");
    let stock = t.state.inventory.store().stock(7).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((0, 500)));
    // Every 202 has its message in the queue.
    t.engine
        .create_group("orders", "audit", StartAt::Earliest)
        .await
        .expect("group");
    let mut ids = HashSet::new();
    loop {
        let ds = t
            .engine
            .fetch(
                "orders",
                "audit",
                FetchOptions {
                    max_messages: 1000,
                    lease_ms: Some(60_000),
                    wait_ms: 0,
                },
            )
            .await
            .expect("fetch");
        if ds.is_empty() {
            break;
        }
        ids.extend(ds.iter().filter_map(|d| d.id));
    }
    assert_eq!(ids.len(), 500);
    for (_, ticket) in &accepted {
        let id = uuid::Uuid::parse_str(ticket).expect("uuid").as_u128();
        assert!(ids.contains(&id), "ticket {ticket} has no message");
    }
}

/// The served router refuses an oversized body with 413 and a JSON error.
#[tokio::test]
async fn oversized_bodies_get_413() {
    let t = test_app(1.5, test_throttle()).await;
    let router = gateway::front::app_with_limits(
        t.state.clone(),
        ServeLimits {
            body_limit_bytes: 1024,
            ..ServeLimits::default()
        },
    );
    let big = json!({"user": "x".repeat(4096)}).to_string();
    let resp = router
        .oneshot(
            Request::post("/api/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(big))
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&bytes).expect("a JSON error");
    assert_eq!(v["error"], "too_large");
}

/// A queue whose publishes wait for the test's go-ahead (or fail), to hold a purchase in
/// flight or make its enqueue fail; everything else goes to the engine.
struct GatedQueue {
    inner: Arc<Engine>,
    entered: tokio::sync::Semaphore,
    go: tokio::sync::Semaphore,
    fail: std::sync::atomic::AtomicBool,
    /// Fail as a lost broker connection would (the message may or may not be stored).
    ambiguous: std::sync::atomic::AtomicBool,
    /// Fail the next publish that way only, then go on as the other flags say.
    ambiguous_once: std::sync::atomic::AtomicBool,
    /// Fail as an unreachable broker does: the request was never sent (`NotSent`).
    not_sent: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Queue for GatedQueue {
    async fn publish(&self, topic: &str, m: queue::Message) -> queue::Result<queue::Confirm> {
        self.entered.add_permits(1);
        let _ = self.go.acquire().await.map(|p| p.forget());
        if self.ambiguous.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .ambiguous_once
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(queue::Error::Connection("lost".into()));
        }
        if self.not_sent.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(queue::Error::NotSent("broker unreachable".into()));
        }
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            // A definite refusal: nothing stored.
            return Err(queue::Error::Full {
                topic: topic.into(),
                what: "messages",
                limit: 0,
            });
        }
        self.inner.publish(topic, m).await
    }
    async fn publish_batch(
        &self,
        topic: &str,
        ms: Vec<queue::Message>,
    ) -> queue::Result<Vec<queue::Confirm>> {
        self.inner.publish_batch(topic, ms).await
    }
    async fn create_group(&self, t: &str, g: &str, s: StartAt) -> queue::Result<()> {
        self.inner.create_group(t, g, s).await
    }
    async fn fetch(
        &self,
        t: &str,
        g: &str,
        o: FetchOptions,
    ) -> queue::Result<Vec<queue::Delivery>> {
        self.inner.fetch(t, g, o).await
    }
    async fn ack(
        &self,
        t: &str,
        g: &str,
        r: &[queue::Receipt],
    ) -> queue::Result<Vec<queue::AckOutcome>> {
        self.inner.ack(t, g, r).await
    }
    async fn nack(
        &self,
        t: &str,
        g: &str,
        r: queue::Receipt,
        d: u64,
        why: &str,
    ) -> queue::Result<queue::AckOutcome> {
        self.inner.nack(t, g, r, d, why).await
    }
    async fn reject(
        &self,
        t: &str,
        g: &str,
        r: queue::Receipt,
        why: &str,
    ) -> queue::Result<queue::AckOutcome> {
        self.inner.reject(t, g, r, why).await
    }
    async fn dead_letters(
        &self,
        t: &str,
        f: u64,
        l: usize,
    ) -> queue::Result<Vec<queue::DeadLetter>> {
        self.inner.dead_letters(t, f, l).await
    }
    async fn replay_dead_letter(&self, t: &str, o: u64) -> queue::Result<u64> {
        self.inner.replay_dead_letter(t, o).await
    }
    async fn discard_dead_letter(&self, t: &str, o: u64) -> queue::Result<()> {
        self.inner.discard_dead_letter(t, o).await
    }
    async fn stats(&self, t: &str) -> queue::Result<queue::TopicStats> {
        self.inner.stats(t).await
    }
    async fn topics(&self) -> queue::Result<Vec<String>> {
        self.inner.topics().await
    }
    async fn peek(&self, t: &str, f: u64, l: usize) -> queue::Result<Vec<queue::Peeked>> {
        self.inner.peek(t, f, l).await
    }
}

/// A gateway (oneshot transport) on a [`GatedQueue`] over a fresh engine; `adjust` may
/// change the configuration first.
async fn gated_app(adjust: impl FnOnce(&mut GatewayConfig)) -> (TestApp, Arc<GatedQueue>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("engine"));
    let gated = Arc::new(GatedQueue {
        inner: engine.clone(),
        entered: tokio::sync::Semaphore::new(0),
        go: tokio::sync::Semaphore::new(0),
        fail: std::sync::atomic::AtomicBool::new(false),
        ambiguous: std::sync::atomic::AtomicBool::new(false),
        ambiguous_once: std::sync::atomic::AtomicBool::new(false),
        not_sent: std::sync::atomic::AtomicBool::new(false),
    });
    let t = test_system_on(
        gated.clone(),
        engine,
        dir,
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.gateway.load_test_secret = Some(LOAD_TEST.into());
            adjust(&mut config.gateway);
        },
    )
    .await;
    (t, gated)
}

/// A purchase whose enqueue is slower than the purchase wait answers 503 outcome_unknown
/// with its ticket at once; the purchase goes on, and the ticket then says it is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_enqueue_answers_with_a_ticket_to_follow() {
    let (t, gated) = gated_app(|c| c.purchase_wait_ms = 100).await;
    t.create_sale(1, 5, 0).await;
    let ann = t.login("ann").await;
    let (_, v) = t.token_load_test(&ann, 1).await;
    let (s, v) = t.purchase(&ann, 1, &token_of(&v)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("outcome_unknown")),
        "{v}"
    );
    let ticket = v["ticket"]
        .as_str()
        .expect("a ticket to follow")
        .to_string();
    let get = || {
        Request::get(format!("/api/tickets/{ticket}"))
            .body(Body::empty())
            .expect("r")
    };
    assert_eq!(
        t.call(get()).await.0,
        StatusCode::NOT_FOUND,
        "not queued yet"
    );
    // The purchase is still running, and shutdown would wait for it.
    assert_eq!(t.state.commits.running(), 1);
    assert!(!t.state.commits.drain(Duration::from_millis(20)).await);
    // The enqueue completes: the ticket is recorded as queued, the unit held once.
    gated.go.add_permits(1);
    assert!(t.state.commits.drain(Duration::from_secs(60)).await);
    let (s, _, v) = t.call(get()).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("queued")),
        "{v}"
    );
    let stock = t.state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((4, 1)));
}

/// Over a real socket: with one request allowed in flight, a second one is shed at once
/// (503 + Retry-After) while the first waits for its enqueue; and an enqueue that fails
/// answers 503 and puts the unit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_and_a_failed_enqueue_releases_the_unit() {
    let (t, gated) = gated_app(|_| {}).await;
    let state = t.state.clone();
    t.create_sale(1, 5, 0).await;
    let alice = t.login("alice").await;
    let bob = t.login("bob").await;
    let (_, v) = t.token_load_test(&alice, 1).await;
    let alice_token = token_of(&v);
    let (_, v) = t.token_load_test(&bob, 1).await;
    let bob_token = token_of(&v);

    // Served on a port through the system, with one request allowed in flight.
    let t = t
        .on_port(ServeLimits {
            max_in_flight: 1,
            ..ServeLimits::default()
        })
        .await;
    let addr = t.served.as_ref().expect("served on a port").addr;
    let post = |cookie: String, token: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = json!({"token": token}).to_string();
        let req = format!(
            "POST /api/sales/1/purchase HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    // Alice's purchase waits in its enqueue, holding the one slot.
    let first = tokio::spawn(post(alice.clone(), alice_token.clone()));
    gated.entered.acquire().await.expect("entered").forget();
    // Bob is shed at once.
    let shed = post(bob.clone(), bob_token.clone()).await;
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(shed.to_ascii_lowercase().contains("retry-after"), "{shed}");
    assert!(shed.contains("overloaded"), "{shed}");
    // A browser asking for a page meanwhile gets a page, not JSON: 503, Retry-After, HTML.
    let page = {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /sales/1 HTTP/1.1\r\nHost: x\r\nAccept: text/html,*/*;q=0.8\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    let head = page.to_ascii_lowercase();
    assert!(head.contains("retry-after: 1"), "{page}");
    assert!(head.contains("content-type: text/html"), "{page}");
    assert!(page.contains("Very busy right now"), "{page}");
    // Alice's enqueue fails: 503, and her unit is back.
    gated.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    gated.go.add_permits(1);
    let failed = first.await.expect("join");
    assert!(failed.starts_with("HTTP/1.1 503"), "{failed}");
    let stock = state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((5, 0)));
    // Bob's token was never spent: with the queue back, it buys. Alice's was given back
    // when her enqueue failed: it buys too.
    gated.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    gated.go.add_permits(10);
    let ok = post(bob, bob_token).await;
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    let ok = post(alice, alice_token).await;
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    // An ambiguous failure (the broker connection lost, retried with the same id, still
    // lost): 503 "outcome unknown", and the unit stays held, never sold twice.
    let carol = t.login("carol").await;
    let (_, v) = t.token_load_test(&carol, 1).await;
    gated
        .ambiguous
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let unknown = post(carol, token_of(&v)).await;
    assert!(unknown.starts_with("HTTP/1.1 503"), "{unknown}");
    assert!(unknown.contains("outcome_unknown"), "{unknown}");
    assert!(
        unknown.contains("\"ticket\""),
        "the ticket to follow: {unknown}"
    );
    let stock = state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((2, 3)));
    // A first attempt that may have stored the message, then a definite refusal: still
    // unknown, and the unit stays held (releasing it could sell it twice).
    gated
        .ambiguous
        .store(false, std::sync::atomic::Ordering::SeqCst);
    gated
        .ambiguous_once
        .store(true, std::sync::atomic::Ordering::SeqCst);
    gated.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let dave = t.login("dave").await;
    let (_, v) = t.token_load_test(&dave, 1).await;
    let unknown = post(dave, token_of(&v)).await;
    assert!(unknown.starts_with("HTTP/1.1 503"), "{unknown}");
    assert!(unknown.contains("outcome_unknown"), "{unknown}");
    let stock = state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((1, 4)));
    // An unreachable broker (every attempt never sent): certainly not queued, so a plain
    // 503 and the unit back at once, not a unit held until reconciliation.
    gated
        .ambiguous_once
        .store(false, std::sync::atomic::Ordering::SeqCst);
    gated.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    gated
        .not_sent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let erin = t.login("erin").await;
    let (_, v) = t.token_load_test(&erin, 1).await;
    let refused = post(erin, token_of(&v)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(!refused.contains("outcome_unknown"), "{refused}");
    let stock = state.inventory.store().stock(1).await.expect("stock");
    assert_eq!(stock.map(|s| (s.left, s.holders)), Some((1, 4)));
}

/// The gateway reads time from its clock, not the wall: moved past a token's lifetime, the
/// token no longer buys; moved past a session's, the session no longer signs anyone in; and
/// a sale starts when the clock reaches its start. Nothing here waits for real time.
#[tokio::test]
async fn tokens_sessions_and_starts_follow_the_gateways_clock() {
    const START_MS: u64 = 1_000_000_000_000;
    const TOKEN_TTL_MS: u64 = 60_000;
    const SESSION_TTL_MS: u64 = 3_600_000;
    let clock = queue::ManualClock::new(START_MS);
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| {
            c.gateway.load_test_secret = Some(LOAD_TEST.into());
            c.gateway.token_ttl_ms = TOKEN_TTL_MS;
            c.gateway.session_ttl_ms = SESSION_TTL_MS;
            c.clock = Arc::new(clock.clone());
        },
    )
    .await;
    t.create_sale(1, 10, START_MS + 1_000).await;
    let ann = t.login("ann").await;
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = token_of(&v);
    let (s, v) = t.purchase(&ann, 1, &token).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::TOO_EARLY, Some("not_started"))
    );
    clock.advance(TOKEN_TTL_MS + 1);
    let (s, v) = t.purchase(&ann, 1, &token).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_token")),
        "{v}"
    );
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.purchase(&ann, 1, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    clock.advance(SESSION_TTL_MS);
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
}

/// A captcha expires, and a repeat-purchase block ends, when the gateway's clock passes
/// their time, with no real waiting.
#[tokio::test]
async fn captchas_and_repeat_blocks_end_by_the_gateways_clock() {
    const START_MS: u64 = 1_000_000_000_000;
    let clock = queue::ManualClock::new(START_MS);
    let mut throttle = test_throttle();
    throttle.repeat_max = 2;
    let block_ms = throttle.block_ms;
    let t = test_system(Box::new(MemoryStore::new()), None, throttle, None, |c| {
        c.gateway.load_test_secret = Some(LOAD_TEST.into());
        c.gateway.token_factor = 100.0;
        c.clock = Arc::new(clock.clone());
    })
    .await;
    t.create_sale(1, 10, START_MS).await;
    let ann = t.login("ann").await;
    let id = t.plant_captcha("ann", 1, "abcde");
    clock.advance(gateway::captcha::CAPTCHA_TTL_MS + 1);
    let (s, v) = t.token_with_captcha(&ann, 1, &id, "abcde").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("captcha_expired")),
        "{v}"
    );
    // Three attempts inside the repeat window: the third is blocked.
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..3 {
        let (_, v) = t.token_load_test(&ann, 1).await;
        last = t.purchase(&ann, 1, &token_of(&v)).await;
    }
    assert_eq!(last.0, StatusCode::TOO_MANY_REQUESTS, "{}", last.1);
    let (_, v) = t.token_load_test(&ann, 1).await;
    let token = token_of(&v);
    let (s, _) = t.purchase(&ann, 1, &token).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "still blocked");
    clock.advance(block_ms);
    let (s, v) = t.purchase(&ann, 1, &token).await;
    assert_ne!(s, StatusCode::TOO_MANY_REQUESTS, "the block is over: {v}");
}

/// The per-user quotas run on the gateway's clock too: with the clock still, a user's
/// token requests past the burst are refused, and moving the clock by one interval of the
/// quota lets exactly one more through. With the quotas on a real clock of their own, the
/// request after the move would still be refused, since no real time passes here.
#[tokio::test]
async fn quotas_refill_by_the_gateways_clock() {
    const START_MS: u64 = 1_000_000_000_000;
    let clock = queue::ManualClock::new(START_MS);
    let throttle = test_throttle();
    let quota = throttle
        .token
        .per_user
        .expect("a per-user token quota by default");
    let burst = quota.burst.get();
    let interval_ms = 1_000 / u64::from(quota.per_second.get());
    let t = test_system(Box::new(MemoryStore::new()), None, throttle, None, |c| {
        c.gateway.load_test_secret = Some(LOAD_TEST.into());
        c.gateway.token_factor = 100.0;
        c.clock = Arc::new(clock.clone());
    })
    .await;
    t.create_sale(1, 10, START_MS).await;
    let ann = t.login("ann").await;
    for i in 0..burst {
        let (s, v) = t.token_load_test(&ann, 1).await;
        assert_eq!(s, StatusCode::OK, "request {i} of the burst: {v}");
    }
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("throttled")),
        "past the burst: {v}"
    );
    clock.advance(interval_ms);
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::OK, "one interval later, one more: {v}");
    let (s, v) = t.token_load_test(&ann, 1).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "and only one: {v}");
}

/// The system's own lifecycle, as the binary uses it: built from a `SystemConfig` that opens
/// its queue and database itself, served (a second `spawn` only returns the same address),
/// answering on its port, then stopped cleanly with no purchase left running; the queue it
/// opened is closed (a new engine opens the same directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_serves_and_stops_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue_dir = dir.path().join("queue");
    let config = SystemConfig::new(
        QueueSource::Open(queue_dir.display().to_string()),
        DatabaseSource::Url {
            url: format!("sqlite:{}", dir.path().join("orders.db").display()),
            options: order_worker::DbOptions::default(),
        },
        GatewayConfig::new(ADMIN),
    )
    .with_limits(ServeLimits {
        request_timeout_ms: 2_500,
        ..ServeLimits::default()
    });
    assert_eq!(
        config.gateway.purchase_wait_ms, 2_000,
        "four fifths of the timeout"
    );
    let mut system = System::build(config).await.expect("build");
    let addr = system.spawn().await.expect("serve");
    assert_eq!(system.spawn().await.expect("serving already"), addr);
    let mut conn = Conn::connect(addr).await.expect("connect");
    let answer = conn
        .send(loadgen::request("GET", "/healthz", &[], None))
        .await
        .expect("healthz");
    assert_eq!(answer.status, StatusCode::OK);
    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
    // The system closed the queue it opened: the directory opens again.
    let engine = Engine::open(&queue_dir, queue::Config::default()).expect("reopen");
    engine.close().expect("close");
}
