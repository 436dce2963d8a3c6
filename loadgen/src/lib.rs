//! A small HTTP/1.1 load driver for loopback targets: keep-alive connections (hyper's client
//! connection, one request at a time on each) and a closed loop that keeps `connections`
//! requests in flight for a measured period, recording latency in an HDR histogram.
//!
//! It is a tool, not part of any service: the gateway's `gateway-bench` binary (behind the
//! gateway's default `bench` feature), the gateway's real-socket tests and the `load-tests`
//! flash crowd use it. It knows nothing of the gateway (no dependency on it), and it talks
//! to loopback addresses only, so a mistyped address never sends load to another machine.
//!
//! Items:
//! - [`Conn`]: one keep-alive connection; [`Conn::send`] reads the whole [`Answer`] (body
//!   at most [`RESPONSE_BYTES_MAX`]); [`request`] builds a request with a JSON body.
//! - [`closed_loop`]: runs a [`LoadSpec`] (at most [`CONNECTIONS_MAX`] connections) and
//!   returns a [`LoadResult`]: counts by status, errors, and latency up to
//!   [`LATENCY_MAX_US`].
//! - [`LoadError`]: why a connection or a request failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Largest response body read; a larger one is an error.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// Most connections a closed loop opens.
pub const CONNECTIONS_MAX: usize = 4096;
/// Highest latency the histograms record (one minute, in µs); longer ones are clamped.
pub const LATENCY_MAX_US: u64 = 60_000_000;

/// A failed request: the connection broke, or the answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Connecting, or the target is not a loopback address.
    #[error("connect: {0}")]
    Connect(String),
    /// Sending or receiving.
    #[error("http: {0}")]
    Http(String),
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    host: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Conn {
    /// Connects to `addr`, which must be a loopback address.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, LoadError> {
        if !addr.ip().is_loopback() {
            return Err(LoadError::Connect(format!(
                "{addr} is not a loopback address"
            )));
        }
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            send,
            driver,
            host: addr.to_string(),
        })
    }

    /// Sends `req` (a `Host` header is added if missing) and reads the whole answer.
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Result<Answer, LoadError> {
        if !req.headers().contains_key(hyper::header::HOST)
            && let Ok(v) = self.host.parse()
        {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
        self.send
            .ready()
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A request with a JSON body (or none), built for [`Conn::send`].
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    // Every part above is valid by construction except a caller's header; an invalid one
    // yields a request without it, which the server then refuses visibly.
    b.body(body.clone()).unwrap_or_else(|_| Request::new(body))
}

/// How a closed loop runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Target (loopback).
    pub addr: SocketAddr,
    /// Requests in flight at once, one per connection (at most [`CONNECTIONS_MAX`]).
    pub connections: usize,
    /// Requests before this much time has passed are not counted.
    pub warmup: Duration,
    /// The measured period after the warm-up.
    pub measure: Duration,
}

/// What a closed loop measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests answered inside the measured period.
    pub requests: u64,
    /// Requests that failed (connection errors) inside the measured period.
    pub errors: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Latency of the answered requests, µs.
    pub latency_us: Histogram<u64>,
    /// The measured period.
    pub measured: Duration,
}

impl LoadResult {
    /// Answered requests per second in the measured period.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// A latency quantile, ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Adds another run's figures (the measured periods add up).
    pub fn merge(&mut self, other: &LoadResult) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        let _ = self.latency_us.add(&other.latency_us);
        self.measured += other.measured;
    }

    /// Machine-readable summary.
    pub fn summary(&self) -> Value {
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.measured.as_secs_f64(),
            "rps": self.rps().round(),
            "p50_ms": self.quantile_ms(0.50),
            "p90_ms": self.quantile_ms(0.90),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
            "statuses": statuses,
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant figures from 1 µs to a minute: constant, valid bounds.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Runs a closed loop: `spec.connections` connections, each sending the request
/// `make(n)` (with `n` a fresh number from 0 up), waiting for the answer, and sending the
/// next, until the warm-up and the measured period are over. Only requests that start
/// after the warm-up and finish inside the measured period are counted.
pub async fn closed_loop<F>(spec: LoadSpec, make: F) -> Result<LoadResult, LoadError>
where
    F: Fn(u64) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let connections = spec.connections.clamp(1, CONNECTIONS_MAX);
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let measure_until = measure_from + spec.measure;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::connect(spec.addr).await?);
    }
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let make = make.clone();
        let next = next.clone();
        let addr = spec.addr;
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut statuses = BTreeMap::<u16, u64>::new();
            let (mut requests, mut errors) = (0u64, 0u64);
            loop {
                let sent_at = Instant::now();
                if sent_at >= measure_until {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let result = conn.send(make(n)).await;
                let done = Instant::now();
                let counted = sent_at >= measure_from && done <= measure_until;
                match result {
                    Ok(a) => {
                        if counted {
                            requests += 1;
                            *statuses.entry(a.status.as_u16()).or_default() += 1;
                            let us = u64::try_from(done.duration_since(sent_at).as_micros())
                                .unwrap_or(LATENCY_MAX_US);
                            let _ = hist.record(us.clamp(1, LATENCY_MAX_US));
                        }
                    }
                    Err(_) => {
                        if counted {
                            errors += 1;
                        }
                        match Conn::connect(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (hist, statuses, requests, errors)
        }));
    }
    let mut out = LoadResult {
        requests: 0,
        errors: 0,
        statuses: BTreeMap::new(),
        latency_us: new_histogram(),
        measured: spec.measure,
    };
    for t in tasks {
        let (hist, statuses, requests, errors) =
            t.await.map_err(|e| LoadError::Http(e.to_string()))?;
        let _ = out.latency_us.add(&hist);
        for (k, v) in statuses {
            *out.statuses.entry(k).or_default() += v;
        }
        out.requests += requests;
        out.errors += errors;
    }
    Ok(out)
}
