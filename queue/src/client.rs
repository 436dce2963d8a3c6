//! [`Client`]: the broker's client, implementing the same [`Queue`] trait as the embedded
//! [`crate::Engine`], so gateways and workers switch between the two by configuration.
//!
//! The client keeps a small pool of connections (`ClientConfig::connections`) and
//! multiplexes many requests over each: every request gets an id, is written by the
//! connection's writer task (which coalesces whatever is queued into one `write`), and is
//! answered by the connection's reader task through a one-shot channel. Requests are spread
//! over the pool round-robin.
//!
//! When a connection is lost, every request in flight on it fails with
//! [`Error::Connection`]; nothing is retried behind the caller's back, because a publish
//! may or may not have been stored. The caller retries with the same message id and the
//! broker's de-duplication makes the retry harmless. The next request on that slot
//! reconnects, with exponential backoff between failed attempts.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, FetchOptions, Message, Peeked, Queue, Receipt,
    StartAt, TopicStats,
};
use crate::error::{Error, Result};
use crate::proto::{self, Request, Response, op};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address, `host:port`.
    pub addr: String,
    /// Connections in the pool (each multiplexes many requests).
    pub connections: usize,
    /// Most requests in flight per connection (also capped by what the broker announces).
    pub max_in_flight: usize,
    /// Timeout of one connect + handshake attempt.
    pub connect_timeout_ms: u64,
    /// Attempts per reconnect before a request fails with [`Error::Connection`].
    pub connect_attempts: u32,
    /// First backoff between attempts; doubled after each failure.
    pub backoff_initial_ms: u64,
    /// Longest backoff between attempts.
    pub backoff_max_ms: u64,
    /// Largest frame the client sends or accepts.
    pub max_frame_bytes: usize,
    /// A request not answered within this long (plus a fetch's own `wait_ms`) fails with
    /// [`Error::Connection`]; like a lost connection, it may or may not have taken effect.
    /// A late answer is dropped.
    pub request_timeout_ms: u64,
    /// Name sent in the hello.
    pub name: String,
}

impl ClientConfig {
    /// Defaults for a broker at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        ClientConfig {
            addr: addr.into(),
            connections: 2,
            max_in_flight: 4096,
            connect_timeout_ms: 5_000,
            connect_attempts: 5,
            backoff_initial_ms: 20,
            backoff_max_ms: 2_000,
            max_frame_bytes: proto::FRAME_BYTES_MAX,
            request_timeout_ms: 30_000,
            name: concat!("queue-client/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// A broker client. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

/// One pool slot: its live connection, and a lock held while (re)connecting so that only
/// one task reconnects while the others wait for it.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The live connection, if any: the fast path of every request (a brief std lock).
    fn live(&self) -> Option<Arc<Conn>> {
        let guard = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .as_ref()
            .filter(|c| c.alive.load(Ordering::Acquire))
            .cloned()
    }

    fn set(&self, conn: Option<Arc<Conn>>) {
        match self.current.lock() {
            Ok(mut g) => *g = conn,
            Err(p) => *p.into_inner() = conn,
        }
    }
}

type Waiter = oneshot::Sender<Result<(u8, Response)>>;

/// One multiplexed connection.
#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<BytesMut>,
    state: Mutex<ConnState>,
    next_id: AtomicU32,
    alive: AtomicBool,
    permits: Semaphore,
    /// The permits' total: the most requests in flight on this connection.
    permits_max: usize,
    max_frame_bytes: usize,
}

#[derive(Debug, Default)]
struct ConnState {
    /// Request id → (request opcode, waiter). `None` once the connection is dead.
    pending: Option<HashMap<u32, (u8, Waiter)>>,
}

impl Conn {
    /// Drops the waiters of requests given up on; their late answers are then ignored.
    fn forget(&self, ids: &[u32]) {
        if let Ok(mut st) = self.state.lock()
            && let Some(p) = st.pending.as_mut()
        {
            for id in ids {
                p.remove(id);
            }
        }
    }

    /// Fails every waiter and refuses new ones.
    fn kill(&self, why: &str) {
        self.alive.store(false, Ordering::Release);
        let pending = match self.state.lock() {
            Ok(mut st) => st.pending.take(),
            Err(p) => p.into_inner().pending.take(),
        };
        for (_, (_, w)) in pending.into_iter().flatten() {
            let _ = w.send(Err(Error::Connection(why.to_string())));
        }
    }
}

impl Client {
    /// Connects the first connection of the pool (so a wrong address fails here); the others
    /// connect on first use.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        if config.addr.is_empty() {
            return Err(Error::Invalid("empty broker address".into()));
        }
        let n = config.connections.clamp(1, 64);
        let client = Client {
            slots: (0..n).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            config,
        };
        client.conn(0).await?;
        Ok(client)
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Round trip to the broker.
    pub async fn ping(&self) -> Result<()> {
        match self.call(Request::Ping).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes independent messages pipelined on one connection: one PUBLISH frame each,
    /// all written together, each confirmed (or refused) on its own, like
    /// [`crate::Engine::publish_each`]. The outer error means nothing was sent, or the
    /// connection was lost: then each message may or may not be stored, and a retry with the
    /// same ids is harmless. At most [`ClientConfig::max_in_flight`] messages per call.
    pub async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.conn(slot).await?;
        let n = messages.len();
        if n > conn.permits_max {
            return Err(Error::Invalid(format!(
                "{n} messages exceed the {} requests one connection may have in flight",
                conn.permits_max
            )));
        }
        let _permits = conn
            .permits
            .acquire_many(n as u32)
            .await
            .map_err(|_| Error::Connection("connection closed".into()))?;
        let first = conn.next_id.fetch_add(n as u32, Ordering::Relaxed);
        let mut frames = BytesMut::with_capacity(n * (64 + topic.len()));
        let mut waiters = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for (i, m) in messages.iter().enumerate() {
            let id = first.wrapping_add(i as u32);
            let before = frames.len();
            proto::encode_publish(id, topic, m, &mut frames);
            if frames.len() - before - 4 > conn.max_frame_bytes {
                return Err(Error::Invalid(format!(
                    "message {i} makes a frame larger than the limit of {} bytes",
                    conn.max_frame_bytes
                )));
            }
            let (tx, rx) = oneshot::channel();
            waiters.push((id, (op::PUBLISH, tx)));
            receivers.push(rx);
        }
        {
            let mut st = conn
                .state
                .lock()
                .map_err(|_| Error::Connection("connection state poisoned".into()))?;
            match st.pending.as_mut() {
                Some(p) => p.extend(waiters),
                None => return Err(Error::Connection("connection lost".into())),
            }
        }
        if conn.tx.send(frames).await.is_err() {
            conn.kill("connection lost while sending");
        }
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + self.timeout(0);
        for rx in receivers {
            let Ok(answer) = tokio::time::timeout_at(deadline, rx).await else {
                let ids: Vec<u32> = (0..n as u32).map(|i| first.wrapping_add(i)).collect();
                conn.forget(&ids);
                return Err(self.timed_out());
            };
            out.push(match answer {
                Ok(Ok((_, Response::Confirm(c)))) => Ok(c),
                Ok(Ok((_, Response::Error(e)))) => Err(e.into_error()),
                Ok(Ok((_, other))) => Err(unexpected(&other)),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Connection("connection lost".into())),
            });
        }
        Ok(out)
    }

    async fn conn(&self, slot: usize) -> Result<Arc<Conn>> {
        let Some(slot) = self.slots.get(slot) else {
            return Err(Error::Invalid(format!("no pool slot {slot}")));
        };
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        // Another task may have reconnected while this one waited.
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        slot.set(None);
        let mut backoff = self.config.backoff_initial_ms.max(1);
        let mut last = String::new();
        for attempt in 0..self.config.connect_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(self.config.backoff_max_ms.max(1));
            }
            let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
            match tokio::time::timeout(timeout, open(&self.config)).await {
                Ok(Ok(c)) => {
                    slot.set(Some(c.clone()));
                    return Ok(c);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connect timed out".into(),
            }
        }
        Err(Error::Connection(format!(
            "cannot reach {} after {} attempts: {last}",
            self.config.addr,
            self.config.connect_attempts.max(1)
        )))
    }

    async fn call(&self, request: Request) -> Result<Response> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.conn(slot).await?;
        let opcode = request.opcode();
        let extra_wait_ms = match &request {
            Request::Fetch { options, .. } => options.wait_ms,
            _ => 0,
        };
        let mut frame = BytesMut::new();
        // The id is written after the permit is taken; encode first with a placeholder.
        let _permit = conn
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Connection("connection closed".into()))?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        request.encode(id, &mut frame);
        if frame.len() - 4 > conn.max_frame_bytes {
            return Err(Error::Invalid(format!(
                "request of {} bytes exceeds the frame limit of {}",
                frame.len() - 4,
                conn.max_frame_bytes
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = conn
                .state
                .lock()
                .map_err(|_| Error::Connection("connection state poisoned".into()))?;
            match st.pending.as_mut() {
                Some(p) => {
                    p.insert(id, (opcode, tx));
                }
                None => return Err(Error::Connection("connection lost".into())),
            }
        }
        if conn.tx.send(frame).await.is_err() {
            conn.kill("connection lost while sending");
        }
        let answer = match tokio::time::timeout(self.timeout(extra_wait_ms), rx).await {
            Ok(a) => a,
            Err(_) => {
                conn.forget(&[id]);
                return Err(self.timed_out());
            }
        };
        match answer {
            Ok(Ok((_, Response::Error(e)))) => Err(e.into_error()),
            Ok(Ok((_, r))) => Ok(r),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Connection("connection lost".into())),
        }
    }

    fn timeout(&self, extra_wait_ms: u64) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.saturating_add(extra_wait_ms))
    }

    fn timed_out(&self) -> Error {
        Error::Connection(format!(
            "no answer from {} within {} ms; the request may or may not have taken effect",
            self.config.addr, self.config.request_timeout_ms
        ))
    }
}

/// Connects, says hello, starts the reader and writer tasks.
async fn open(config: &ClientConfig) -> Result<Arc<Conn>> {
    let io_err = |e: io::Error| Error::Connection(format!("{}: {e}", config.addr));
    let mut stream = TcpStream::connect(&config.addr).await.map_err(io_err)?;
    let _ = stream.set_nodelay(true);
    let mut out = BytesMut::new();
    Request::Hello {
        min_version: proto::VERSION,
        max_version: proto::VERSION,
        client: config.name.clone(),
    }
    .encode(0, &mut out);
    stream.write_all(&out).await.map_err(io_err)?;
    let mut buf = BytesMut::with_capacity(64 << 10);
    let frame = loop {
        if let Some(f) = proto::split_frame(&mut buf, config.max_frame_bytes)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            break f;
        }
        if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
            return Err(Error::Connection(format!(
                "{} closed the connection during the handshake",
                config.addr
            )));
        }
    };
    let (max_in_flight, broker_frame_max) =
        match Response::decode(op::HELLO, frame.opcode, frame.body)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            Response::Hello {
                max_in_flight,
                max_frame_bytes,
                ..
            } => (max_in_flight as usize, max_frame_bytes as usize),
            Response::Error(e) => return Err(e.into_error()),
            other => return Err(unexpected(&other)),
        };
    let (rd, wr) = stream.into_split();
    let in_flight = config.max_in_flight.min(max_in_flight).max(1);
    let (tx, rx) = mpsc::channel(in_flight);
    let conn = Arc::new(Conn {
        tx,
        state: Mutex::new(ConnState {
            pending: Some(HashMap::new()),
        }),
        next_id: AtomicU32::new(1),
        alive: AtomicBool::new(true),
        permits: Semaphore::new(in_flight),
        permits_max: in_flight,
        // Requests above the broker's limit would get FRAME_TOO_LARGE and cost the
        // connection (and every request in flight on it): refuse them here instead.
        max_frame_bytes: config.max_frame_bytes.min(broker_frame_max),
    });
    tokio::spawn(write_loop(wr, rx, Arc::downgrade(&conn)));
    tokio::spawn(read_loop(
        rd,
        buf,
        Arc::downgrade(&conn),
        config.max_frame_bytes,
    ));
    Ok(conn)
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<BytesMut>,
    conn: std::sync::Weak<Conn>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    while let Some(f) = rx.recv().await {
        buf.extend_from_slice(&f);
        while buf.len() < 256 << 10 {
            match rx.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            if let Some(c) = conn.upgrade() {
                c.kill(&format!("write failed: {e}"));
            }
            return;
        }
        buf.clear();
    }
    // The client was dropped: close our side; the broker answers what it has and closes.
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    conn: std::sync::Weak<Conn>,
    max_frame_bytes: usize,
) {
    let why = loop {
        let frame = match proto::split_frame(&mut buf, max_frame_bytes) {
            Ok(Some(f)) => f,
            Ok(None) => {
                if buf.capacity() - buf.len() < 16 << 10 {
                    buf.reserve(64 << 10);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => break "the broker closed the connection".to_string(),
                    Ok(_) => continue,
                    Err(e) => break format!("read failed: {e}"),
                }
            }
            Err(e) => break format!("bad frame from the broker: {e}"),
        };
        let Some(c) = conn.upgrade() else { return };
        let waiter = match c.state.lock() {
            Ok(mut st) => st
                .pending
                .as_mut()
                .and_then(|p| p.remove(&frame.request_id)),
            Err(_) => None,
        };
        match waiter {
            Some((req_op, w)) => {
                let r = Response::decode(req_op, frame.opcode, frame.body)
                    .map_err(|e| Error::Protocol(e.to_string()));
                let _ = w.send(r.map(|r| (req_op, r)));
            }
            None if frame.opcode == proto::OP_ERROR => {
                // A connection-level error (idle timeout, limit, bad frame): it names the
                // reason the broker is about to close.
                let why = match Response::decode(op::PING, frame.opcode, frame.body) {
                    Ok(Response::Error(e)) => {
                        format!("broker closed the connection: {}", e.message)
                    }
                    _ => "broker closed the connection".into(),
                };
                break why;
            }
            // A late answer to a request that timed out: nobody waits for it.
            None => {}
        }
    };
    if let Some(c) = conn.upgrade() {
        c.kill(&why);
    }
}

fn unexpected(r: &Response) -> Error {
    Error::Protocol(format!("unexpected response {r:?}"))
}

#[async_trait::async_trait]
impl Queue for Client {
    async fn publish(&self, topic: &str, message: Message) -> Result<Confirm> {
        match self
            .call(Request::Publish {
                topic: topic.into(),
                message,
            })
            .await?
        {
            Response::Confirm(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Confirm>> {
        match self
            .call(Request::PublishBatch {
                topic: topic.into(),
                messages,
            })
            .await?
        {
            Response::Confirms(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    async fn create_group(&self, topic: &str, group: &str, start: StartAt) -> Result<()> {
        match self
            .call(Request::CreateGroup {
                topic: topic.into(),
                group: group.into(),
                start,
            })
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> Result<Vec<Delivery>> {
        match self
            .call(Request::Fetch {
                topic: topic.into(),
                group: group.into(),
                options,
            })
            .await?
        {
            Response::Deliveries(d) => Ok(d),
            other => Err(unexpected(&other)),
        }
    }

    async fn ack(&self, topic: &str, group: &str, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        match self
            .call(Request::Ack {
                topic: topic.into(),
                group: group.into(),
                receipts: receipts.to_vec(),
            })
            .await?
        {
            Response::Outcomes(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> Result<AckOutcome> {
        match self
            .call(Request::Nack {
                topic: topic.into(),
                group: group.into(),
                receipt,
                delay_ms,
                reason: reason.into(),
            })
            .await?
        {
            Response::Outcome(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        reason: &str,
    ) -> Result<AckOutcome> {
        match self
            .call(Request::Reject {
                topic: topic.into(),
                group: group.into(),
                receipt,
                reason: reason.into(),
            })
            .await?
        {
            Response::Outcome(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        match self
            .call(Request::DeadLetters {
                topic: topic.into(),
                from: from_dead_offset,
                limit: limit.min(u32::MAX as usize) as u32,
            })
            .await?
        {
            Response::DeadLetters(d) => Ok(d),
            other => Err(unexpected(&other)),
        }
    }

    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<u64> {
        match self
            .call(Request::Replay {
                topic: topic.into(),
                dead_offset,
            })
            .await?
        {
            Response::Offset(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<()> {
        match self
            .call(Request::Discard {
                topic: topic.into(),
                dead_offset,
            })
            .await?
        {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn stats(&self, topic: &str) -> Result<TopicStats> {
        match self
            .call(Request::Stats {
                topic: topic.into(),
            })
            .await?
        {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    async fn topics(&self) -> Result<Vec<String>> {
        match self.call(Request::Topics).await? {
            Response::Topics(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    async fn peek(&self, topic: &str, from_offset: u64, limit: usize) -> Result<Vec<Peeked>> {
        match self
            .call(Request::Peek {
                topic: topic.into(),
                from: from_offset,
                limit: limit.min(u32::MAX as usize) as u32,
            })
            .await?
        {
            Response::Peeked(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }
}
