//! A small HTTP/1.1 load driver for loopback targets: keep-alive connections (one request at
//! a time on each, read and written in the caller's task by [`wire`]) and a closed loop that
//! keeps `connections` requests in flight for a measured period, recording latency in an
//! HDR histogram.
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
//! - [`wire`]: the request's bytes and the answer's head and body framing (`httparse`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod wire;

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

/// One keep-alive HTTP/1.1 connection, one request at a time. It owns its socket and does
/// its reading and writing in the caller's task ([`wire`]): a load generator shares the
/// cores with what it measures, so it spends as little per request as it can while still
/// reading every answer whole.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed (at most an answer's head and body).
    buf: BytesMut,
    /// The request being written (kept for its capacity).
    out: Vec<u8>,
    host: String,
    /// Whether another request may be sent (the server did not close, nothing failed).
    usable: bool,
}

/// An answer: status, headers and the whole body.
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

/// Bytes asked of the socket at a time (the read buffer grows by this much when full).
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied out of the read buffer rather than split off it.
const COPY_BYTES_MAX: usize = 16 * 1024;

impl Conn {
    /// Connects to `addr`, which must be a loopback address.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, LoadError> {
        if !addr.ip().is_loopback() {
            return Err(LoadError::Connect(format!(
                "{addr} is not a loopback address"
            )));
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| LoadError::Connect(e.to_string()))?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            host: addr.to_string(),
            usable: true,
        })
    }

    /// Sends `req` (a `Host` header is added if missing, `Content-Length` always from the
    /// body) and reads the whole answer. After an error, or an answer that ends the
    /// connection, every later call fails: open a new connection.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, LoadError> {
        if !self.usable {
            return Err(LoadError::Http("the connection is closed".into()));
        }
        self.usable = false;
        let head_request = req.method() == Method::HEAD;
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?
            .to_bytes();
        self.out.clear();
        wire::encode_request(
            &Request::from_parts(parts, ()),
            &body,
            &self.host,
            &mut self.out,
        )?;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?;
        let head = loop {
            // (Parsed only once something is there: an answer mostly arrives in one read.)
            if !self.buf.is_empty()
                && let Some((head, len)) = wire::parse_head(&self.buf, head_request)?
            {
                self.buf.advance(len);
                // An interim answer (100 Continue, 103 Early Hints) precedes the real one.
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                break head;
            }
            self.fill().await?;
        };
        let body = match head.framing {
            wire::Framing::Empty => Bytes::new(),
            wire::Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                if n <= COPY_BYTES_MAX {
                    // Copied, so the read buffer stays this connection's alone and is reused
                    // (a split would share it with the answer, and the next read allocate).
                    let body = Bytes::copy_from_slice(&self.buf[..n]);
                    self.buf.advance(n);
                    body
                } else {
                    self.buf.split_to(n).freeze()
                }
            }
            wire::Framing::Chunked => loop {
                if let Some(body) = wire::take_chunked(&mut self.buf)? {
                    break body;
                }
                self.fill().await?;
            },
            wire::Framing::UntilClose => {
                while self.read_some().await? > 0 {
                    if self.buf.len() > RESPONSE_BYTES_MAX {
                        return Err(LoadError::Http(format!(
                            "an answer body over {RESPONSE_BYTES_MAX} bytes"
                        )));
                    }
                }
                self.buf.split().freeze()
            }
        };
        self.usable = head.keep_alive;
        Ok(Answer {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// Reads more of the answer; the end of the connection is an error here.
    async fn fill(&mut self) -> Result<(), LoadError> {
        match self.read_some().await? {
            0 => Err(LoadError::Http(
                "the connection closed before the answer ended".into(),
            )),
            _ => Ok(()),
        }
    }

    async fn read_some(&mut self) -> Result<usize, LoadError> {
        self.buf.reserve(READ_CHUNK);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| LoadError::Http(e.to_string()))
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
