//! The purchase fast path (issue 19): the refusals of `POST /api/sales/{id}/purchase` on
//! public facts (unknown sale, ended, paused, not started, sold out), and of `POST
//! /api/sales/{id}/token` (the same but not started), are answered by the front service
//! itself, without the router. Each request here goes once through the
//! front service and once through the same service with the fast path off (the router and
//! the handler), with and without HSTS: the same status, headers and body, byte for byte
//! (through `oneshot` and on the wire, `Date` aside), and the same counters. Requests the
//! fast path must leave alone (a live sale, an id written otherwise, other methods) are
//! checked to reach the router.

use super::*;
use gateway::front::Front;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_MS: u64 = 1_000_000_000_000;
const LIVE: u64 = 1;
const SOLD_OUT: u64 = 2;
const NOT_STARTED: u64 = 3;
const ENDED: u64 = 4;
const PAUSED: u64 = 5;
/// Starts this long after the test's clock: `Retry-After: 13`.
const NOT_STARTED_IN_MS: u64 = 12_345;

/// A gateway on a still clock with one sale in each state (sale 99 unknown).
async fn sales_app(hsts: bool) -> TestApp {
    let clock = queue::ManualClock::new(START_MS);
    let t = test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |c| {
            c.gateway.hsts = hsts;
            c.clock = Arc::new(clock);
            // The sold-out flag holds for the whole test: no store re-check lets one
            // attempt through to the handler.
            c.sold_out_recheck = Duration::from_secs(3600);
        },
    )
    .await;
    for id in [LIVE, SOLD_OUT, ENDED, PAUSED] {
        t.create_sale(id, 1, START_MS).await;
    }
    t.create_sale(NOT_STARTED, 1, START_MS + NOT_STARTED_IN_MS)
        .await;
    // Sold out: the one unit taken, then the flag set by the next attempt.
    let inv = &t.state.inventory;
    assert!(matches!(
        inv.reserve(SOLD_OUT, "ann").await.expect("reserve"),
        inventory::Reservation::Reserved { .. }
    ));
    assert!(
        inv.flagged_sold_out(SOLD_OUT),
        "the last unit sets the flag"
    );
    for (id, action) in [(ENDED, "end"), (PAUSED, "pause")] {
        let req = Request::post(format!("/admin/api/sales/{id}/{action}"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .expect("request");
        let (s, _, v) = t.call(req).await;
        assert_eq!(s, StatusCode::OK, "{action}: {v}");
    }
    t
}

/// One request to send twice.
#[derive(Clone, Copy)]
struct Case {
    method: &'static str,
    uri: &'static str,
    cookie: bool,
    /// Sent chunked (no `Content-Length`: the front service wraps the body in its limit).
    chunked: bool,
    /// Answered by the fast path (else by the router).
    fast: bool,
}

const fn case(method: &'static str, uri: &'static str, fast: bool) -> Case {
    Case {
        method,
        uri,
        cookie: false,
        chunked: false,
        fast,
    }
}

/// Every case: each refusal on public facts, with and without a session and a chunked
/// body; and what the fast path leaves to the router.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for uri in [
        "/api/sales/2/purchase",
        "/api/sales/3/purchase",
        "/api/sales/4/purchase",
        "/api/sales/5/purchase",
        "/api/sales/99/purchase",
        // What `SaleIdPath` reads as sale 2 / as an unknown sale within range.
        "/api/sales/02/purchase",
        "/api/sales/9223372036854775807/purchase",
        "/api/sales/2/purchase?x=1",
        // The token route: the same refusals but not started.
        "/api/sales/2/token",
        "/api/sales/4/token",
        "/api/sales/5/token",
        "/api/sales/99/token",
        "/api/sales/02/token",
    ] {
        let c = case("POST", uri, true);
        out.extend([c, Case { cookie: true, ..c }, Case { chunked: true, ..c }]);
    }
    for uri in [
        // A live sale: on to the session check (401 without one).
        "/api/sales/1/purchase",
        // Ids the fast path does not read: out of range, not digits, encoded, empty.
        "/api/sales/9223372036854775808/purchase",
        "/api/sales/99999999999999999999999/purchase",
        "/api/sales/abc/purchase",
        "/api/sales/+2/purchase",
        "/api/sales/-2/purchase",
        "/api/sales/%32/purchase",
        "/api/sales//purchase",
        "/api/sales/2/purchase/",
        "/api/sales/2/purchases",
        // A token for a live sale or one not started yet: on to the session check.
        "/api/sales/1/token",
        "/api/sales/3/token",
        "/api/sales/%32/token",
        "/api/sales/2/tokens",
    ] {
        let c = case("POST", uri, false);
        out.extend([c, Case { cookie: true, ..c }]);
    }
    for method in ["GET", "HEAD", "PUT", "DELETE"] {
        out.push(case(method, "/api/sales/2/purchase", false));
    }
    out
}

fn request(c: Case, cookie: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(c.method)
        .uri(c.uri)
        .header(header::CONTENT_TYPE, "application/json");
    if c.cookie {
        b = b.header(header::COOKIE, cookie);
    }
    let json = r#"{"token":"x"}"#;
    let body = if c.chunked {
        Body::new(UnknownLength(Some(Bytes::from_static(json.as_bytes()))))
    } else {
        Body::from(json)
    };
    b.body(body).expect("request")
}

/// A one-chunk body whose length is not known ahead (as a chunked one's is not).
struct UnknownLength(Option<Bytes>);

impl axum::body::HttpBody for UnknownLength {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .take()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }
}

/// The counters a purchase refusal moves: the refusals by reason, and the responses and
/// latency samples by route.
fn counters(t: &TestApp) -> Vec<u64> {
    let m = &t.state.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
    let mut out = vec![
        load(&m.sold_out),
        load(&m.not_started),
        load(&m.sale_paused),
        load(&m.throttled),
        load(&m.bad_token),
        load(&m.unavailable),
        load(&m.forwarded_unusable),
        load(&m.misdirected),
    ];
    for route in &m.responses {
        out.extend(route.iter().map(load));
    }
    out.extend(m.latency.iter().map(|h| h.snapshot().count));
    out
}

/// Status, headers in order, the body's length as the response declares it, and the body.
type Answer = (StatusCode, Vec<(String, Vec<u8>)>, Option<u64>, Bytes);

/// Answers `req` through `front`; whether it was answered at once (the fast path and the
/// other refusals made before the router) or by the routes.
async fn answer(front: &Front, req: Request<Body>) -> (Answer, bool) {
    let future = front.handle(req);
    let ready = future.answered_without_routes();
    let resp = future.await.expect("infallible");
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let size = axum::body::HttpBody::size_hint(resp.body()).exact();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    ((status, headers, size, body), ready)
}

#[tokio::test]
async fn the_fast_paths_refusals_are_the_routers_byte_for_byte() {
    for hsts in [false, true] {
        let t = sales_app(hsts).await;
        let cookie = t.login("bob").await;
        let fast = gateway::front::app_with_limits(t.state.clone(), t.limits);
        let routed = fast.clone().without_purchase_fast_path();
        for c in cases() {
            let what = format!(
                "{} {} (hsts {hsts}, cookie {}, chunked {})",
                c.method, c.uri, c.cookie, c.chunked
            );
            let before = counters(&t);
            let (a, ready) = answer(&fast, request(c, &cookie)).await;
            let after_fast = counters(&t);
            let (b, ready_routed) = answer(&routed, request(c, &cookie)).await;
            let after_routed = counters(&t);
            assert_eq!(ready, c.fast, "{what}: answered by the fast path");
            assert!(!ready_routed, "{what}: the fast path is off");
            assert_eq!(a, b, "{what}");
            let moved = |x: &[u64], y: &[u64]| -> Vec<u64> {
                x.iter().zip(y).map(|(x, y)| y - x).collect()
            };
            assert_eq!(
                moved(&before, &after_fast),
                moved(&after_fast, &after_routed),
                "{what}: counters"
            );
            assert_ne!(before, after_fast, "{what}: observed");
            assert_eq!(
                a.1.iter().any(|(k, _)| k == "strict-transport-security"),
                hsts,
                "{what}: HSTS"
            );
            if c.fast {
                let v: Value = serde_json::from_slice(&a.3).expect("a JSON error");
                let expected = match c.uri.split('/').nth(3) {
                    Some("2" | "02") => (StatusCode::GONE, "sold_out"),
                    Some("3") => (StatusCode::TOO_EARLY, "not_started"),
                    Some("4") => (StatusCode::GONE, "ended"),
                    Some("5") => (StatusCode::CONFLICT, "sale_paused"),
                    _ => (StatusCode::NOT_FOUND, "not_found"),
                };
                assert_eq!(
                    (a.0, v["error"].as_str()),
                    (expected.0, Some(expected.1)),
                    "{what}"
                );
            }
            if c.uri == "/api/sales/3/purchase" {
                let retry = a.1.iter().find(|(k, _)| k == "retry-after");
                assert_eq!(retry.map(|(_, v)| v.as_slice()), Some(&b"13"[..]), "{what}");
            }
        }
    }
}

/// Serves `front` on a loopback port until the returned task is aborted.
async fn serve(front: Front) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = gateway::front::serve_connections(listener, front, std::future::pending()).await;
    });
    (addr, task)
}

/// The raw bytes of the answer to `request` on a fresh connection (closed after it), with
/// the `Date` header's line taken out.
async fn raw_answer(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8(out).expect("an ASCII answer");
    let kept: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    assert!(
        kept.len() < text.split("\r\n").count(),
        "a Date header: {text}"
    );
    kept.join("\r\n")
}

/// On the wire too (`Content-Length`, header order, the connection's handling): the same
/// bytes from both, `Date` aside.
#[tokio::test]
async fn on_the_wire_the_fast_paths_answers_are_the_routers() {
    for hsts in [false, true] {
        let t = sales_app(hsts).await;
        let cookie = t.login("bob").await;
        let fast = gateway::front::app_with_limits(t.state.clone(), t.limits);
        let routed = fast.clone().without_purchase_fast_path();
        let (fast_addr, fast_task) = serve(fast).await;
        let (routed_addr, routed_task) = serve(routed).await;
        for c in cases() {
            let body = r#"{"token":"x"}"#;
            let mut head = format!(
                "{} {} HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/json\r\nConnection: close\r\n",
                c.method, c.uri
            );
            if c.cookie {
                head.push_str(&format!("Cookie: {cookie}\r\n"));
            }
            let req = if c.chunked {
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
            } else {
                format!("{head}Content-Length: {}\r\n\r\n{body}", body.len())
            };
            let a = raw_answer(fast_addr, &req).await;
            let b = raw_answer(routed_addr, &req).await;
            assert_eq!(a, b, "{} {} (hsts {hsts})", c.method, c.uri);
            assert!(a.starts_with("HTTP/1.1 "), "{a}");
        }
        fast_task.abort();
        routed_task.abort();
    }
}
