//! The driver against a minimal keep-alive HTTP/1.1 server on loopback: one request and its
//! answer, a closed loop's accounting, and the loopback-only rule.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{Conn, LoadError, LoadSpec, closed_loop, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The fixed answer of the test server: a JSON body, connection kept alive.
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// Largest request head the test server reads (the driver's requests are far smaller).
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Starts a server that answers [`ANSWER`] to every request without a body, on as many
/// keep-alive connections as are opened.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 || buf.len() > HEAD_BYTES_MAX {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // One answer per complete request head.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(ANSWER).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn one_request_reads_status_headers_and_json_body() {
    let addr = serve().await;
    let mut conn = Conn::connect(addr).await.expect("connect");
    for _ in 0..3 {
        let answer = conn
            .send(request("GET", "/healthz", &[("x-test", "1")], None))
            .await
            .expect("an answer on the kept-alive connection");
        assert_eq!(answer.status.as_u16(), 200);
        assert_eq!(
            answer.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(answer.json(), serde_json::json!({"ok": true}));
    }
}

#[tokio::test]
async fn a_request_with_a_json_body_says_so() {
    let req = request("POST", "/x", &[], Some(&serde_json::json!({"a": 1})));
    assert_eq!(
        req.headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}

#[tokio::test]
async fn only_loopback_addresses_are_targeted() {
    let addr: SocketAddr = "192.0.2.1:80".parse().expect("an address");
    match Conn::connect(addr).await {
        Err(LoadError::Connect(why)) => assert!(why.contains("loopback"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_counts_every_answer_by_status() {
    let addr = serve().await;
    let spec = LoadSpec {
        addr,
        connections: 4,
        warmup: Duration::from_millis(20),
        measure: Duration::from_millis(300),
    };
    let mut result = closed_loop(spec, |_| request("GET", "/", &[], None))
        .await
        .expect("the loop runs");
    assert!(result.requests > 0, "{:?}", result.summary());
    assert_eq!(result.errors, 0, "{:?}", result.summary());
    assert_eq!(
        result.statuses.get(&200).copied(),
        Some(result.requests),
        "every counted answer is a 200"
    );
    assert_eq!(result.latency_us.len(), result.requests);
    let summary = result.summary();
    assert_eq!(summary["requests"], result.requests);
    // Merging adds the counts and the measured periods.
    let again = result.clone();
    result.merge(&again);
    assert_eq!(result.requests, 2 * again.requests);
    assert_eq!(result.measured, 2 * spec.measure);
}
