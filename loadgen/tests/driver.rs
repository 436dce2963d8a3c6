//! The driver against a minimal keep-alive HTTP/1.1 server on loopback: one request and its
//! answer, a closed loop's accounting, and the loopback-only rule.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{Conn, LoadError, LoadSpec, closed_loop, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The fixed answer of the test server: a JSON body, connection kept alive.
const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// Largest request head the test server reads (the driver's requests are far smaller).
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Reads until `buf` holds a whole request head and takes it off; `false` when the
/// connection ends (or its head grows past [`HEAD_BYTES_MAX`]) first.
async fn next_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 && buf.len() <= HEAD_BYTES_MAX => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

/// Starts a server that answers [`ANSWER`] to every request without a body, on as many
/// keep-alive connections as are opened.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while next_request(&mut stream, &mut buf).await {
                    if stream.write_all(ANSWER).await.is_err() {
                        return;
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

/// Starts a server that answers the `n`th request head of its one connection with
/// `answers[n]`, and closes the connection after the last.
async fn serve_script(answers: Vec<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        for answer in answers {
            if !next_request(&mut stream, &mut buf).await {
                return;
            }
            // In two writes, so the driver sees an answer arrive in pieces.
            let (a, b) = answer.split_at(answer.len() / 2);
            if stream.write_all(a).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
            if stream.write_all(b).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[tokio::test]
async fn answers_in_every_framing_are_read_whole_and_a_close_ends_the_connection() {
    let addr = serve_script(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye",
    ])
    .await;
    let mut conn = Conn::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    for _ in 0..4 {
        let a = conn
            .send(request("GET", "/", &[], None))
            .await
            .expect("an answer");
        got.push((
            a.status.as_u16(),
            String::from_utf8_lossy(&a.body).into_owned(),
        ));
    }
    assert_eq!(
        got,
        [
            (200, "hello world".to_string()),
            (201, "ok".to_string()),
            (204, String::new()),
            (200, "bye".to_string()),
        ]
    );
    let after = conn.send(request("GET", "/", &[], None)).await;
    assert!(
        matches!(after, Err(LoadError::Http(_))),
        "the server said close: {after:?}"
    );
}

#[tokio::test]
async fn an_answer_cut_short_or_malformed_is_an_error() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let addr = serve_script(vec![answer]).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        let r = conn.send(request("GET", "/", &[], None)).await;
        assert!(
            matches!(r, Err(LoadError::Http(_))),
            "{:?}: {r:?}",
            String::from_utf8_lossy(answer)
        );
    }
}
