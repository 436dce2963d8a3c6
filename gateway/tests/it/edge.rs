//! The gateway's HTTP edge on real sockets and through the front service: slow and idle
//! connections are closed, connections beyond the cap are refused, one body limit holds on
//! every route, admin-secret guesses are throttled globally, cookies and HSTS follow the
//! configuration, a cross-site payment is refused, and 503s carry no dependency text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::config::{GatewayConfig, HSTS_VALUE, ServeLimits};
use gateway::guard::ADMIN_GUESSES_BURST;
use inventory::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ADMIN, TestApp, test_system, test_throttle};

/// Longest a test waits for the server to close a connection it must close (far above the
/// limits the tests set; without the fix the connection would stay open past it).
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// A test system with these limits and configuration, served on a loopback port.
async fn served(limits: ServeLimits, adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| adjust(&mut c.gateway),
    )
    .await
    .on_port(limits)
    .await
}

fn addr(t: &TestApp) -> SocketAddr {
    t.served.as_ref().expect("served").addr
}

/// Whether the server closed `s`: a read returns end of stream or an error (reset) within
/// [`CLOSE_WAIT`]. Bytes the server sent first (an answer) are skipped.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `raw` on a fresh connection and reads one answer: its status and body.
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    read_answer(&mut s).await
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body.
async fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let len = super::content_length(&head);
            if data.len() >= end + 4 + len {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .expect("a status line");
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

async fn healthz(addr: SocketAddr) -> u16 {
    raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .0
}

/// Finding 1: clients that send half a request line and stop are disconnected after the
/// header-read timeout, while other clients keep being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_disconnected_and_others_are_served() {
    let t = served(
        ServeLimits {
            header_read_timeout_ms: 300,
            ..ServeLimits::default()
        },
        |_| {},
    )
    .await;
    let addr = addr(&t);
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HT").await.expect("half a line");
        slow.push(s);
    }
    // Meanwhile: whole requests are answered.
    for _ in 0..5 {
        assert_eq!(healthz(addr).await, 200);
    }
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "slow connection {i} still open");
    }
    // A keep-alive connection that goes quiet after an answer is closed the same way.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_answer(&mut s).await.0, 200);
    assert!(closed_by_server(&mut s).await, "idle keep-alive still open");
    assert_eq!(healthz(addr).await, 200);
    assert_eq!(
        t.state.metrics.connections_refused.load(Ordering::Relaxed),
        0
    );
}

/// The idle timeout on its own (the header-read timeout far away): a silent connection is
/// closed, and one that stopped mid-request is dropped a tick later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_by_the_idle_timeout() {
    let t = served(
        ServeLimits {
            header_read_timeout_ms: 600_000,
            idle_timeout_ms: 200,
            ..ServeLimits::default()
        },
        |_| {},
    )
    .await;
    let addr = addr(&t);
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut stopped = TcpStream::connect(addr).await.expect("connect");
    stopped
        .write_all(b"POST /api/login HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    assert_eq!(healthz(addr).await, 200);
    assert!(
        closed_by_server(&mut silent).await,
        "a silent connection still open"
    );
    assert!(
        closed_by_server(&mut stopped).await,
        "a stopped request still open"
    );
}

/// Finding 1: beyond the connection cap a connection is closed at once (and counted);
/// once the holders go, new connections are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_until_others_close() {
    const CAP: usize = 4;
    let t = served(
        ServeLimits {
            max_connections: CAP,
            header_read_timeout_ms: 600_000,
            idle_timeout_ms: 600_000,
            ..ServeLimits::default()
        },
        |_| {},
    )
    .await;
    let addr = addr(&t);
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_answer(&mut s).await.0, 200, "within the cap");
        held.push(s);
    }
    assert_eq!(
        t.state.metrics.connections_open.load(Ordering::Relaxed),
        CAP as u64
    );
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.expect("the kernel accepts");
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        assert!(
            closed_by_server(&mut s).await,
            "a connection beyond the cap"
        );
    }
    assert!(t.state.metrics.connections_refused.load(Ordering::Relaxed) >= 3);
    let metrics = t.state.exposition.encode();
    assert!(
        metrics.contains("gateway_connections_refused_total"),
        "{metrics}"
    );
    drop(held);
    // The server notices the closes in its own time: poll until a request is answered.
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut data = Vec::new();
        let _ = tokio::time::timeout(CLOSE_WAIT, s.read_to_end(&mut data)).await;
        if data.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "service never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finding 7: one body limit on every kind of route (JSON API, admin forms, storefront
/// POSTs without a body extractor), refused with 413 before the body is read: the client
/// declares 10 MB and sends a few bytes, and the answer comes anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_on_every_route_without_being_read() {
    let t = served(
        ServeLimits {
            body_limit_bytes: 1024,
            ..ServeLimits::default()
        },
        |_| {},
    )
    .await;
    let addr = addr(&t);
    let order = uuid::Uuid::now_v7();
    let routes = [
        ("/api/login", "application/json"),
        ("/api/sales/1/token", "application/json"),
        ("/api/sales/1/purchase", "application/json"),
        ("/admin/api/sales", "application/json"),
        ("/admin/login", "application/x-www-form-urlencoded"),
        ("/admin/logout", "application/x-www-form-urlencoded"),
        ("/admin/sales", "application/x-www-form-urlencoded"),
        (
            "/admin/dead-letters/orders/1/replay",
            "application/x-www-form-urlencoded",
        ),
        (&*format!("/api/orders/{order}/pay"), "application/json"),
    ];
    for (path, kind) in routes {
        // Declared just over the limit, sent in full: 413.
        let body = "x".repeat(1025);
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = raw_exchange(addr, raw.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {answer}");
        assert!(answer.contains("too_large"), "{path}: {answer}");
        // Declared as 10 MB, a few bytes sent: answered without waiting for the rest.
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {kind}\r\ncontent-length: 10000000\r\n\r\nsecret=abc"
        );
        let (status, _) = raw_exchange(addr, raw.as_bytes()).await;
        assert_eq!(status, 413, "{path}, 10 MB declared");
    }
    // Chunked (no declared length): cut at the limit, the rest never awaited.
    for path in ["/admin/login", "/api/login"] {
        let kind = if path == "/admin/login" {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let chunk = "x".repeat(2000);
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        );
        let (status, answer) = raw_exchange(addr, raw.as_bytes()).await;
        assert_eq!(status, 413, "{path} chunked: {answer}");
    }
    // Within the limit, a form still works.
    let raw = "POST /admin/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 9\r\n\r\nsecret=no";
    assert_eq!(raw_exchange(addr, raw.as_bytes()).await.0, 401);
}

fn form_login(secret: &str) -> Request<Body> {
    Request::post("/admin/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("secret={secret}")))
        .expect("request")
}

fn bearer(secret: &str) -> Request<Body> {
    Request::get("/admin/api/sales")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .body(Body::empty())
        .expect("request")
}

/// Finding 5: with per-IP limits off, admin sign-in still has a global budget of guesses:
/// wrong secrets beyond it are 429 with `Retry-After`, whatever the secret, until the
/// gateway's clock refills it; wrong bearer secrets spend from the same budget; a correct
/// secret gives its guess back; an admin signed in by cookie is not slowed.
#[tokio::test]
async fn admin_secret_guesses_share_one_global_budget() {
    const START_MS: u64 = 1_000_000_000_000;
    let clock = queue::ManualClock::new(START_MS);
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| c.clock = Arc::new(clock.clone()),
    )
    .await;
    // Correct secrets never drain it.
    for _ in 0..3 * ADMIN_GUESSES_BURST {
        let (s, _, _) = t.call_raw(bearer(ADMIN)).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, h, _) = t.call_raw(form_login(ADMIN)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = h
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("the admin cookie")
        .to_string();
    let mut refused = 0;
    for i in 0..30 {
        let (s, h, _) = t.call_raw(form_login("wrong-secret")).await;
        if (i as u64) < ADMIN_GUESSES_BURST {
            assert_eq!(s, StatusCode::UNAUTHORIZED, "guess {i}");
        } else {
            assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "guess {i}");
            assert!(h.contains_key(header::RETRY_AFTER));
            refused += 1;
        }
    }
    assert_eq!(refused, 30 - ADMIN_GUESSES_BURST);
    // Wrong bearers: the same budget, empty now.
    let (s, h, v) = t.call(bearer("wrong-secret")).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("throttled"))
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    // While it is empty the right secret waits too (else a 200 would answer the guess)…
    assert_eq!(
        t.call_raw(bearer(ADMIN)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        t.call_raw(form_login(ADMIN)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // …but the signed-in admin is not slowed.
    let by_cookie = Request::get("/admin/api/sales")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .expect("request");
    assert_eq!(t.call_raw(by_cookie).await.0, StatusCode::OK);
    // Nor when a proxy in front of /admin adds its own `Authorization: Basic …`, or the
    // signed-in admin's script sends a bearer too: the cookie spends no guess.
    for authorization in ["Basic dXNlcjpwYXNz", "Bearer wrong"] {
        let behind_proxy = Request::get("/admin/api/sales")
            .header(header::COOKIE, &cookie)
            .header(header::AUTHORIZATION, authorization)
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            t.call_raw(behind_proxy).await.0,
            StatusCode::OK,
            "{authorization}"
        );
    }
    // The budget refills by the gateway's clock.
    clock.advance(60_000);
    assert_eq!(t.call_raw(bearer(ADMIN)).await.0, StatusCode::OK);
    for i in 0..ADMIN_GUESSES_BURST {
        assert_eq!(
            t.call_raw(bearer("wrong")).await.0,
            StatusCode::UNAUTHORIZED,
            "bearer guess {i}"
        );
    }
    assert_eq!(
        t.call_raw(bearer("wrong")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Admin pages answer the 429 as a page.
    let page = Request::get("/admin")
        .header(header::AUTHORIZATION, "Bearer wrong")
        .body(Body::empty())
        .expect("request");
    assert_eq!(t.call_raw(page).await.0, StatusCode::TOO_MANY_REQUESTS);
}

/// Finding 10: `Secure` cookies and HSTS when configured, neither by default.
#[tokio::test]
async fn secure_cookies_and_hsts_follow_the_configuration() {
    for on in [false, true] {
        let t = test_system(
            Box::new(MemoryStore::new()),
            None,
            test_throttle(),
            None,
            |c| {
                c.gateway.secure_cookies = on;
                c.gateway.hsts = on;
            },
        )
        .await;
        let login = Request::post("/api/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"user":"ann"}"#))
            .expect("request");
        let (s, h, _) = t.call_raw(login).await;
        assert_eq!(s, StatusCode::OK);
        let set = h
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("cookie");
        assert_eq!(set.contains("; Secure"), on, "{set}");
        assert_eq!(
            h.get(header::STRICT_TRANSPORT_SECURITY)
                .map(|v| v.as_bytes()),
            on.then_some(HSTS_VALUE.as_bytes()),
        );
        let (s, h, _) = t.call_raw(form_login(ADMIN)).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        let set = h
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("cookie");
        assert_eq!(set.contains("; Secure"), on, "{set}");
    }
}

/// Finding 10: a payment sent from another site's page is refused before anything else;
/// same-origin and header-less (API client) payments go on to the order lookup.
#[tokio::test]
async fn a_cross_site_payment_is_refused() {
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |_| {},
    )
    .await;
    let cookie = t.login("ann").await;
    let order = uuid::Uuid::now_v7();
    let pay = |origin: Option<&str>, fetch_site: Option<&str>| {
        let mut b = Request::post(format!("/api/orders/{order}/pay"))
            .header(header::HOST, "shop.example")
            .header(header::COOKIE, &cookie);
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(f) = fetch_site {
            b = b.header("sec-fetch-site", f);
        }
        b.body(Body::empty()).expect("request")
    };
    let (s, _, v) = t.call(pay(Some("https://evil.example"), None)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("cross_site"))
    );
    let (s, _, v) = t.call(pay(None, Some("cross-site"))).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("cross_site"))
    );
    for (origin, site) in [
        (Some("https://shop.example"), None),
        (None, Some("same-origin")),
        (None, None),
    ] {
        let (s, _, v) = t.call(pay(origin, site)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{origin:?} {site:?}: {v}");
    }
}

/// Finding 10: a 503 from the orders database carries a stable code and message, never the
/// database's own text.
#[tokio::test]
async fn a_database_503_carries_no_database_text() {
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |_| {},
    )
    .await;
    let cookie = t.login("ann").await;
    // Both pools: the workers' (admin views) and the request path's reads (orders).
    t.state.db.close().await;
    t.state.read_db.close().await;
    let order = uuid::Uuid::now_v7();
    let req = Request::get(format!("/api/orders/{order}"))
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .expect("request");
    let (s, _, v) = t.call(req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"], "unavailable");
    assert_eq!(v["message"], gateway::error::UNAVAILABLE_MESSAGE);
    let (s, _, v) = t.call(super::admin_sales_request()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["message"], gateway::error::UNAVAILABLE_MESSAGE);
}
