//! The broker: serves an [`Engine`] over TCP with the protocol of [`crate::proto`].
//!
//! Each connection has a reader (this task) and a writer task. The reader splits frames off
//! its buffer and starts one task per request, so a connection has many requests in flight
//! (pipelining) and a slow one (a long-poll fetch) never holds up the others; responses go
//! back in completion order, matched by request id. Publishes are the exception: the
//! reader appends them (gathered, in arrival order) and hands them to the writer, which
//! waits for their fsync round itself and answers them, with no task of their own. The
//! writer coalesces whatever responses are ready into one `write`.
//!
//! Limits (all in [`ServerConfig`]): connections, requests and request bytes in flight per
//! connection (beyond them the reader stops reading, which pushes back through TCP), frame
//! size, handshake and idle timeouts, response bytes reserved by reads per connection and
//! across all of them ([`ReplyBudget`]: a read waits for room), topic creations per
//! minute.
//!
//! Authentication: with [`ServerConfig::secret`], the hello carries a challenge and the
//! connection serves nothing until the client's `AUTH` proves the secret
//! ([`crate::auth`]); wrong proofs are answered late and counted per address. A frame that cannot be decoded gets an error frame and
//! the connection is closed; other connections never notice.
//!
//! Shutdown (the future given to [`Server::run`]): stop accepting, stop reading, let every
//! request in flight finish (long-poll fetches return at once, empty), flush the responses,
//! close. The caller then closes the engine, which fsyncs.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::api::Queue;
use crate::auth::{Nonce, Secret, Throttle, Verdict};
use crate::engine::Engine;
use crate::format::ENTRY_BYTES_MAX;
use crate::limits::{DEAD_LETTER_LIST_MAX, FETCH_MESSAGES_MAX, PEEK_MESSAGES_MAX, READ_BYTES_MAX};
use crate::proto::{self, Request, Response, WireError, code, op};

/// Broker settings; `ServerConfig::default()` is what `queue serve` uses unless told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most open connections; one more gets a `TOO_MANY_CONNECTIONS` error frame.
    pub max_connections: usize,
    /// Most requests in flight per connection; beyond it the broker stops reading.
    pub max_in_flight: usize,
    /// Most request bytes in flight per connection; beyond it the broker stops reading.
    pub max_in_flight_bytes: usize,
    /// Largest frame accepted (bytes after the length prefix).
    pub max_frame_bytes: usize,
    /// A connection with nothing in flight that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// The hello must arrive within this long.
    pub handshake_timeout_ms: u64,
    /// On shutdown, requests still running after this long are abandoned (their callers see
    /// a lost connection; a publish among them may or may not be stored).
    pub shutdown_grace_ms: u64,
    /// The writer flushes once this many response bytes are gathered.
    pub write_batch_bytes: usize,
    /// Most response bytes reserved by reads (fetch, peek, dead-letter listing) in flight
    /// per connection; a read waits for room before it runs.
    pub max_read_bytes_in_flight: usize,
    /// A connection whose peer takes longer than this to accept a write is closed.
    pub write_timeout_ms: u64,
    /// Most response bytes reserved by reads across all connections together (the
    /// broker-wide reply budget); a read waits for room before it runs, so connections
    /// that do not read their answers cannot make the broker hold more than this.
    pub max_reply_bytes: usize,
    /// The shared secret clients must prove in the handshake (`crate::auth`); `None`
    /// serves anyone who connects (`queue serve` allows that only on a loopback address).
    pub secret: Option<Secret>,
    /// Wrong proofs one address (an IPv6 /64) may send per `auth_failure_window_ms`;
    /// beyond them its wrong proofs get `AUTH_THROTTLED` (a right one still gets in).
    pub auth_failures_max: u32,
    /// The window of `auth_failures_max`.
    pub auth_failure_window_ms: u64,
    /// A wrong proof is answered (and the connection closed) only after this long.
    pub auth_failure_delay_ms: u64,
    /// Most topics clients may create per minute (a burst of this many, refilled evenly);
    /// a request that would create one beyond it gets `LIMIT`. The engine's
    /// `Config::topics_max` caps how many exist.
    pub topic_creations_per_minute: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            max_in_flight: 4096,
            max_in_flight_bytes: 64 << 20,
            max_frame_bytes: proto::FRAME_BYTES_MAX,
            idle_timeout_ms: 10 * 60 * 1000,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            write_batch_bytes: 256 << 10,
            max_read_bytes_in_flight: 128 << 20,
            write_timeout_ms: 30_000,
            max_reply_bytes: 256 << 20,
            secret: None,
            auth_failures_max: 10,
            auth_failure_window_ms: 60_000,
            auth_failure_delay_ms: 1_000,
            topic_creations_per_minute: 60,
        }
    }
}

/// Counters of the broker itself (the engine's figures come from its stats).
#[derive(Debug)]
pub struct BrokerMetrics {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections refused at the limit.
    pub connections_rejected: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// Connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// Requests answered with an error frame (queue errors).
    pub request_errors: AtomicU64,
    /// Requests by opcode (index = opcode & 0x3f).
    pub requests: [AtomicU64; 64],
    /// Messages published (confirmed, duplicates included).
    pub messages_published: AtomicU64,
    /// Messages delivered by fetches.
    pub messages_delivered: AtomicU64,
    /// Receipts acked.
    pub messages_acked: AtomicU64,
    /// Connections that proved the secret.
    pub auth_succeeded: AtomicU64,
    /// Wrong proofs.
    pub auth_failed: AtomicU64,
    /// Proofs not checked because their address had too many wrong ones.
    pub auth_throttled: AtomicU64,
    /// Requests refused because they would create a topic beyond the creation rate.
    pub topic_creations_refused: AtomicU64,
    /// The broker-wide reply budget, whose accounting the metrics read.
    pub replies: Arc<ReplyBudget>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            request_errors: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            messages_published: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            messages_acked: AtomicU64::new(0),
            auth_succeeded: AtomicU64::new(0),
            auth_failed: AtomicU64::new(0),
            auth_throttled: AtomicU64::new(0),
            topic_creations_refused: AtomicU64::new(0),
            replies: Arc::new(ReplyBudget::new(ServerConfig::default().max_reply_bytes)),
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The broker-wide budget of response bytes reserved by reads
/// ([`ServerConfig::max_reply_bytes`]), and its accounting.
#[derive(Debug)]
pub struct ReplyBudget {
    semaphore: Arc<Semaphore>,
    max: usize,
    peak: AtomicU64,
}

impl ReplyBudget {
    fn new(max: usize) -> ReplyBudget {
        // Semaphores count permits in u32 when many are taken at once.
        let max = max.clamp(1, u32::MAX as usize);
        ReplyBudget {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
            peak: AtomicU64::new(0),
        }
    }

    /// The budget, in bytes.
    pub fn max(&self) -> u64 {
        self.max as u64
    }

    /// Bytes reserved now (by reads running or answers not yet written).
    pub fn reserved(&self) -> u64 {
        (self.max - self.semaphore.available_permits()) as u64
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` (cut to the budget), waiting for room.
    async fn reserve(&self, bytes: u32) -> Option<OwnedSemaphorePermit> {
        let bytes = bytes.clamp(1, self.max as u32);
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(bytes)
            .await
            .ok()?;
        self.peak.fetch_max(self.reserved(), Ordering::Relaxed);
        Some(permit)
    }
}

/// The topic-creation rate ([`ServerConfig::topic_creations_per_minute`]): a token bucket.
#[derive(Debug)]
struct TopicGate {
    per_minute: u32,
    /// Tokens left, and when they were last refilled.
    bucket: Mutex<(f64, tokio::time::Instant)>,
}

impl TopicGate {
    fn new(per_minute: u32) -> TopicGate {
        TopicGate {
            per_minute,
            bucket: Mutex::new((f64::from(per_minute), tokio::time::Instant::now())),
        }
    }

    /// Takes a token for one topic creation, if there is one.
    fn allow(&self) -> bool {
        let mut b = match self.bucket.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = tokio::time::Instant::now();
        let cap = f64::from(self.per_minute);
        let refill = now.duration_since(b.1).as_secs_f64() * cap / 60.0;
        *b = ((b.0 + refill).min(cap), now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What every connection of one broker shares.
#[derive(Debug)]
struct Shared {
    throttle: Throttle,
    replies: Arc<ReplyBudget>,
    topics: TopicGate,
}

/// A broker over one engine.
#[derive(Debug, Clone)]
pub struct Server {
    engine: Arc<Engine>,
    config: ServerConfig,
    metrics: Arc<BrokerMetrics>,
    shared: Arc<Shared>,
}

/// The name this broker gives in its hello.
pub const SERVER_NAME: &str = concat!("queue-broker/", env!("CARGO_PKG_VERSION"));

impl Server {
    /// A broker for `engine`.
    pub fn new(engine: Arc<Engine>, config: ServerConfig) -> Server {
        let replies = Arc::new(ReplyBudget::new(config.max_reply_bytes));
        let shared = Arc::new(Shared {
            throttle: Throttle::new(
                config.auth_failures_max,
                Duration::from_millis(config.auth_failure_window_ms),
            ),
            replies: replies.clone(),
            topics: TopicGate::new(config.topic_creations_per_minute),
        });
        Server {
            engine,
            config,
            metrics: Arc::new(BrokerMetrics {
                replies,
                ..BrokerMetrics::default()
            }),
            shared,
        }
    }

    /// The broker-wide reply budget and its accounting.
    pub fn reply_budget(&self) -> Arc<ReplyBudget> {
        self.shared.replies.clone()
    }

    /// The broker's counters, for the metrics endpoint.
    pub fn metrics(&self) -> Arc<BrokerMetrics> {
        self.metrics.clone()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Accepts connections until `shutdown` completes, then drains them (see the module
    /// docs). Does not close the engine.
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of
                            // spinning, then keep serving the connections we have.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            self.metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
                            let conn = Connection {
                                engine: self.engine.clone(),
                                config: self.config.clone(),
                                metrics: self.metrics.clone(),
                                shared: self.shared.clone(),
                                stop: stop_rx.clone(),
                                peer,
                            };
                            conns.spawn(async move {
                                // Counted down on drop, so also when aborted at shutdown.
                                let _open = OpenConnection::new(conn.metrics.clone());
                                if let Err(e) = conn.serve(stream).await {
                                    tracing::debug!("connection {peer}: {e}");
                                }
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            self.metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
                            conns.spawn(refuse(stream, self.config.max_connections));
                        }
                    }
                }
                // Reap finished connections so the set does not grow with the total count.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "shutdown grace ran out; abandoning {} connections",
                conns.len()
            );
            conns.abort_all();
        }
    }
}

async fn refuse(mut stream: TcpStream, max: usize) {
    let mut out = BytesMut::new();
    Response::Error(WireError::protocol(
        code::TOO_MANY_CONNECTIONS,
        format!("the broker's limit of {max} connections is reached"),
    ))
    .encode(op::HELLO, 0, &mut out);
    // Write the refusal, then read until the client closes: closing a socket with unread
    // bytes (its hello) would send a reset, which can destroy the refusal in flight.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Bytes a read's response may add per message beyond its stored entry (offsets, attempt,
/// lease, the dead-letter fields), for the response reservation.
const READ_OVERHEAD_BYTES: usize = 1 << 10;

/// Stored bytes a fetch may return per message it asks for (see `read_room`).
pub const FETCH_BYTES_PER_MESSAGE: u64 = 16 << 10;

/// Largest frame accepted before the hello (a hello is a few dozen bytes).
pub const HELLO_FRAME_BYTES_MAX: usize = 1024;
/// Most publish requests gathered into one append (see `Connection::flush_publishes`).
pub const GATHER_MESSAGES_MAX: usize = 1024;
/// Most request bytes gathered into one append.
pub const GATHER_BYTES_MAX: usize = 4 << 20;

/// Publish requests of one connection waiting to be appended together: their messages in
/// arrival order, and per request whom to answer and how.
struct Gathered {
    topic: String,
    messages: Vec<crate::Message>,
    replies: Vec<Reply>,
    bytes: usize,
}

/// One gathered publish request: a `PUBLISH` (one message, answered with a confirm or an
/// error frame) or a `PUBLISH_EACH` (`count` messages, answered with one frame holding each
/// message's result).
struct Reply {
    id: u32,
    opcode: u8,
    count: usize,
    permits: Permits,
}

/// The results of an append of gathered publishes, once durable (one per message, in order).
type PublishResults = crate::Result<Vec<crate::Result<crate::Confirm>>>;

/// Gathered publish requests appended together, waiting in the writer for their fsync round
/// (the engine's `PendingPublish::wait`), then answered there: no task and no hand-off per
/// append, and the writer is the one woken when the round is durable.
struct Answering {
    durable: Pin<Box<dyn Future<Output = PublishResults> + Send>>,
    replies: Vec<Reply>,
}

/// A request's share of its connection's in-flight limits.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// Permits a response holds until the writer has written it: the request's share of the
/// in-flight limits, and a read's reservation of response bytes. So everything a
/// connection has taken on, answers waiting for a slow reader included, stays within them.
type Held = Vec<OwnedSemaphorePermit>;

/// One open connection in [`BrokerMetrics::connections_open`], for as long as it lives.
struct OpenConnection(Arc<BrokerMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<BrokerMetrics>) -> Self {
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A task aborted when this handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the reader hands the writer.
enum Out {
    /// Encoded response frames, and what they hold until written.
    Frames(BytesMut, Held),
    /// Publishes appended together, to answer once their round is fsynced.
    Publishes(Answering),
    /// Write what came before, then close (after a protocol error or idleness).
    Close,
}

/// One connection's in-flight budgets (see [`ServerConfig`]): requests and request bytes
/// taken on, and response bytes reserved by reads.
struct Budgets {
    max_in_flight: usize,
    requests: Arc<Semaphore>,
    bytes_max: usize,
    bytes: Arc<Semaphore>,
    reads_max: usize,
    reads: Arc<Semaphore>,
}

impl Budgets {
    fn new(config: &ServerConfig) -> Budgets {
        let max_in_flight = config.max_in_flight.max(1);
        // Semaphores count permits in u32 when many are taken at once.
        let bytes_max = config.max_in_flight_bytes.clamp(1, u32::MAX as usize);
        let reads_max = config.max_read_bytes_in_flight.clamp(1, u32::MAX as usize);
        Budgets {
            max_in_flight,
            requests: Arc::new(Semaphore::new(max_in_flight)),
            bytes_max,
            bytes: Arc::new(Semaphore::new(bytes_max)),
            reads_max,
            reads: Arc::new(Semaphore::new(reads_max)),
        }
    }
}

struct Connection {
    engine: Arc<Engine>,
    config: ServerConfig,
    metrics: Arc<BrokerMetrics>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// Reads, dispatches and answers the requests of one connection until it ends (end of
    /// file, a protocol error, idleness, a writer failure or the broker's shutdown), then
    /// lets the requests in flight answer and the writer flush.
    async fn serve(&self, stream: TcpStream) -> io::Result<()> {
        let (mut rd, wr) = stream.into_split();
        let budgets = Budgets::new(&self.config);
        let (tx, rx) = mpsc::channel::<Out>(budgets.max_in_flight);
        // Aborted with this task (when the shutdown grace runs out), closing the socket.
        let mut writer = AbortOnDrop(tokio::spawn(write_loop(
            wr,
            rx,
            self.config.write_batch_bytes,
            Duration::from_millis(self.config.write_timeout_ms.max(1)),
            self.metrics.clone(),
        )));
        let mut stop = self.stop.clone();
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut greeted = false;
        // The protocol version agreed in the hello.
        let mut version = proto::VERSION_MIN;
        // Until this is set (after the hello, and after a good proof when the broker has
        // a secret), only the handshake's frames are accepted.
        let mut authed = false;
        // The challenge sent in the hello, while its proof is awaited.
        let mut challenge: Option<Nonce> = None;
        let idle = Duration::from_millis(self.config.idle_timeout_ms.max(1));
        let handshake = Duration::from_millis(self.config.handshake_timeout_ms.max(1));
        let hello_deadline = tokio::time::Instant::now() + handshake;
        let mut eof = false;
        let mut gathered: Option<Gathered> = None;
        // Set when the connection stops reading (end of file, error, protocol error,
        // shutdown): a long-poll fetch still waiting then returns at once, empty, instead of
        // leasing messages to a peer that is gone (they would be invisible for a lease).
        let (closed_tx, closed_rx) = watch::channel(false);
        'conn: while !eof {
            loop {
                // Until the handshake is done, only a hello-sized frame is accepted: a peer
                // that has not proved who it is may not make us buffer 16 MiB.
                let limit = if authed {
                    self.config.max_frame_bytes
                } else {
                    HELLO_FRAME_BYTES_MAX
                };
                let frame = match proto::split_frame(&mut buf, limit) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.flush_publishes(&mut gathered, &tx).await;
                        self.fail(&tx, 0, e.code(), e.to_string()).await;
                        break 'conn;
                    }
                };
                let id = frame.request_id;
                let opcode = frame.opcode;
                let frame_bytes = frame.body.len() + proto::FRAME_HEADER_BYTES;
                let request = match Request::decode(opcode, frame.body) {
                    Ok(r) => r,
                    Err(e) => {
                        self.flush_publishes(&mut gathered, &tx).await;
                        self.fail(&tx, id, e.code(), e.to_string()).await;
                        break 'conn;
                    }
                };
                // An operation newer than the version agreed is one the client cannot know.
                if greeted && opcode == op::PUBLISH_EACH && version < proto::VERSION_EACH {
                    let message = format!(
                        "publish_each needs protocol version {}; this connection speaks {version}",
                        proto::VERSION_EACH
                    );
                    // Publishes gathered ahead of the error are answered before it.
                    self.flush_publishes(&mut gathered, &tx).await;
                    self.fail(&tx, id, code::UNKNOWN_OPCODE, message).await;
                    break 'conn;
                }
                if let Some(counter) = self.metrics.requests.get(usize::from(opcode & 0x3f)) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if !greeted {
                    let Some((v, asked)) = self.greet(&request, opcode, id, &budgets, &tx).await
                    else {
                        break 'conn;
                    };
                    greeted = true;
                    version = v;
                    authed = asked.is_none();
                    challenge = asked;
                    continue;
                }
                match (&request, challenge.take()) {
                    (Request::Hello { .. }, _) => {
                        let message = HandshakeError::SecondHello.to_string();
                        self.flush_publishes(&mut gathered, &tx).await;
                        self.fail(&tx, id, code::BAD_HANDSHAKE, message).await;
                        break 'conn;
                    }
                    (
                        Request::Auth {
                            client_nonce,
                            proof,
                        },
                        Some(ch),
                    ) => {
                        if !self
                            .authenticate(&ch, client_nonce, proof, id, &tx, &mut stop)
                            .await
                        {
                            break 'conn;
                        }
                        authed = true;
                        continue;
                    }
                    (Request::Auth { .. }, None) => {
                        let message = HandshakeError::UnexpectedAuth.to_string();
                        self.flush_publishes(&mut gathered, &tx).await;
                        self.fail(&tx, id, code::BAD_HANDSHAKE, message).await;
                        break 'conn;
                    }
                    // Anything else before a good proof: refused, and the connection closed.
                    (_, Some(_)) => {
                        let message = format!(
                            "{} before authentication: this broker requires a proof of its \
                             secret (AUTH) first",
                            proto::op_name(opcode)
                        );
                        self.fail(&tx, id, code::AUTH_REQUIRED, message).await;
                        break 'conn;
                    }
                    (_, None) => {}
                }
                // A request that would create a topic beyond the creation rate is refused
                // (it alone; the connection goes on).
                // (Publishes gathered for the same topic already took its token: the topic
                // appears only when they are appended.)
                if let Some(topic) = creates_topic(&request)
                    && crate::engine::validate_user_topic(topic).is_ok()
                    && gathered.as_ref().is_none_or(|g| g.topic != topic)
                    && !self.engine.has_topic(topic)
                    && !self.shared.topics.allow()
                {
                    self.metrics
                        .topic_creations_refused
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.request_errors.fetch_add(1, Ordering::Relaxed);
                    let e = crate::Error::Limit {
                        what: "topic creations per minute",
                        limit: u64::from(self.config.topic_creations_per_minute),
                    };
                    let mut out = BytesMut::new();
                    Response::Error(WireError::from_error(&e)).encode(opcode, id, &mut out);
                    self.flush_publishes(&mut gathered, &tx).await;
                    if tx.send(Out::Frames(out, Vec::new())).await.is_err() {
                        break 'conn;
                    }
                    continue;
                }
                let Some(permits) = self
                    .admit(frame_bytes, &budgets, &mut gathered, &tx, &mut stop)
                    .await
                else {
                    break 'conn;
                };
                // Publishes pipelined on this connection are gathered while their frames
                // are already in the buffer, and appended together (one record, one fsync
                // round), each still answered on its own. See `flush_publishes`.
                if let Request::Publish { topic, message } = request {
                    let reply = Reply {
                        id,
                        opcode,
                        count: 1,
                        permits,
                    };
                    let messages = vec![message];
                    self.gather_publish(&mut gathered, topic, messages, reply, frame_bytes, &tx)
                        .await;
                    continue;
                }
                if let Request::PublishEach { topic, messages } = request {
                    let reply = Reply {
                        id,
                        opcode,
                        count: messages.len(),
                        permits,
                    };
                    self.gather_publish(&mut gathered, topic, messages, reply, frame_bytes, &tx)
                        .await;
                    continue;
                }
                self.flush_publishes(&mut gathered, &tx).await;
                // A batch is queued here too, for the same reason: in arrival order.
                if let Request::PublishBatch { topic, messages } = request {
                    let submitted = self.engine.publish_batch_submit(&topic, &messages);
                    self.answer_batch(submitted, id, permits, &tx);
                    continue;
                }
                self.spawn_request(request, (opcode, id), permits, &budgets, &tx, &closed_rx);
            }
            // Every whole frame of the buffer is taken: what was gathered goes now.
            self.flush_publishes(&mut gathered, &tx).await;
            if buf.capacity() - buf.len() < 16 << 10 {
                buf.reserve(64 << 10);
            }
            // The hello has an absolute deadline from the accept (bytes trickling in do not
            // extend it); after it, the idle timeout restarts with every read.
            let wake = if authed {
                tokio::time::Instant::now() + idle
            } else {
                hello_deadline
            };
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(_) => eof = true,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if !authed {
                        let message = HandshakeError::Timeout.to_string();
                        self.fail(&tx, 0, code::BAD_HANDSHAKE, message).await;
                        break 'conn;
                    }
                    if budgets.requests.available_permits() == budgets.max_in_flight {
                        self.close_idle(&tx).await;
                        break 'conn;
                    }
                }
                _ = stopped(&mut stop) => break 'conn,
                // The writer gave up (write error or timeout): nothing more can be answered.
                _ = tx.closed() => break 'conn,
            }
        }
        self.flush_publishes(&mut gathered, &tx).await;
        let _ = closed_tx.send(true);
        // Let the requests in flight answer, then let the writer flush and close: it ends
        // once every sender is gone, that is once every request task has sent its answer.
        // (Waiting here for the in-flight permits instead would deadlock: an answer sent just
        // as the writer stops stays in the channel, with its permits, until every sender,
        // this one included, is dropped.) The wait is bounded by the requests themselves
        // (fetches end when the connection closes), the write timeout and, on shutdown, the
        // server's grace period.
        drop(tx);
        match (&mut writer.0).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Answers the first frame of a connection: a hello with the version both speak, our
    /// limits and, when the broker has a secret, a fresh challenge; or a `BAD_HANDSHAKE`
    /// (`AUTH_REQUIRED` for a client too old to authenticate) error. `None`: the connection
    /// ends; else the version agreed and the challenge sent, if any.
    async fn greet(
        &self,
        request: &Request,
        opcode: u8,
        id: u32,
        budgets: &Budgets,
        tx: &mpsc::Sender<Out>,
    ) -> Option<(u16, Option<Nonce>)> {
        let version = match hello(request, self.config.secret.is_some()) {
            Ok(v) => v,
            Err(e) => {
                let code = match e {
                    HandshakeError::NoAuthVersion { .. } => code::AUTH_REQUIRED,
                    _ => code::BAD_HANDSHAKE,
                };
                self.fail(tx, id, code, e.to_string()).await;
                return None;
            }
        };
        let challenge = self.config.secret.as_ref().map(|_| crate::auth::nonce());
        let resp = Response::Hello {
            version,
            max_frame_bytes: self.config.max_frame_bytes as u32,
            max_in_flight: budgets.max_in_flight as u32,
            server: SERVER_NAME.into(),
            challenge,
        };
        let mut out = BytesMut::new();
        resp.encode(opcode, id, &mut out);
        tx.send(Out::Frames(out, Vec::new())).await.ok()?;
        Some((version, challenge))
    }

    /// Checks a client's proof of the secret against the `challenge` sent. A good one is
    /// answered with the broker's own proof; a wrong one is counted against the peer's
    /// address and answered `AUTH_FAILED` only after `auth_failure_delay_ms`; an address
    /// over its count gets `AUTH_THROTTLED` for a wrong proof, after the same delay; a right
    /// proof always gets in. Returns whether the connection goes on.
    async fn authenticate(
        &self,
        challenge: &Nonce,
        client_nonce: &Nonce,
        proof: &[u8],
        id: u32,
        tx: &mpsc::Sender<Out>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let Some(secret) = &self.config.secret else {
            return false;
        };
        let ip = self.peer.ip();
        let now = std::time::Instant::now();
        let verdict = self.shared.throttle.check(ip, now, || {
            secret.verify_client_proof(challenge, client_nonce, proof)
        });
        match verdict {
            Verdict::Throttled(left) => {
                self.metrics.auth_throttled.fetch_add(1, Ordering::Relaxed);
                let delay = Duration::from_millis(self.config.auth_failure_delay_ms);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(stop) => {}
                }
                let message = format!(
                    "too many wrong proofs from {ip}; authentication refused for another {} s",
                    left.as_secs().max(1)
                );
                self.fail(tx, id, code::AUTH_THROTTLED, message).await;
                return false;
            }
            Verdict::Good => {
                self.metrics.auth_succeeded.fetch_add(1, Ordering::Relaxed);
                let resp = Response::Authenticated {
                    proof: secret.server_proof(challenge, client_nonce),
                };
                let mut out = BytesMut::new();
                resp.encode(op::AUTH, id, &mut out);
                return tx.send(Out::Frames(out, Vec::new())).await.is_ok();
            }
            Verdict::Wrong => {}
        }
        self.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("broker: wrong authentication proof from {}", self.peer);
        // The delay slows guessing on this connection; the count above bounds it per
        // address however many connections are used.
        let delay = Duration::from_millis(self.config.auth_failure_delay_ms);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(stop) => {}
        }
        let message = "wrong proof: this client's secret is not the broker's".to_string();
        self.fail(tx, id, code::AUTH_FAILED, message).await;
        false
    }

    /// Backpressure: waits for room in the connection's budgets before a request of
    /// `frame_bytes` is taken on. A frame larger than the byte budget takes the whole budget
    /// (it passed the frame limit). Permits held by the publishes gathered so far come back
    /// only once they are handed to a task, so they are handed over before waiting. `None`:
    /// the broker is stopping or the writer is gone; the connection ends.
    async fn admit(
        &self,
        frame_bytes: usize,
        budgets: &Budgets,
        gathered: &mut Option<Gathered>,
        tx: &mpsc::Sender<Out>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Permits> {
        let want = frame_bytes.clamp(1, budgets.bytes_max) as u32;
        match (
            budgets.requests.clone().try_acquire_owned(),
            budgets.bytes.clone().try_acquire_many_owned(want),
        ) {
            (Ok(r), Ok(b)) => Some((r, b)),
            (r, b) => {
                drop((r, b));
                self.flush_publishes(gathered, tx).await;
                let (r, b) = tokio::select! {
                    p = async {
                        let r = budgets.requests.clone().acquire_owned().await;
                        let b = budgets.bytes.clone().acquire_many_owned(want).await;
                        (r, b)
                    } => p,
                    _ = stopped(stop) => return None,
                    _ = tx.closed() => return None,
                };
                Some((r.ok()?, b.ok()?))
            }
        }
    }

    /// Adds a publish request's messages to those gathered, first flushing them when it
    /// cannot join them (another topic, or the gathering limits would be passed).
    async fn gather_publish(
        &self,
        gathered: &mut Option<Gathered>,
        topic: String,
        messages: Vec<crate::Message>,
        reply: Reply,
        frame_bytes: usize,
        tx: &mpsc::Sender<Out>,
    ) {
        if let Some(g) = gathered.as_ref()
            && (g.topic != topic
                || g.messages.len() + messages.len() > GATHER_MESSAGES_MAX
                || g.bytes >= GATHER_BYTES_MAX)
        {
            self.flush_publishes(gathered, tx).await;
        }
        let g = gathered.get_or_insert_with(|| Gathered {
            topic,
            messages: Vec::with_capacity(messages.len()),
            replies: Vec::new(),
            bytes: 0,
        });
        g.bytes += frame_bytes;
        g.messages.extend(messages);
        g.replies.push(reply);
    }

    /// Runs any other request (`opcode`, request `id`) in a task of its own, so a slow one
    /// (a long poll) never holds up the connection, and sends its answer with the permits it
    /// holds.
    fn spawn_request(
        &self,
        request: Request,
        (opcode, id): (u8, u32),
        (req_permit, bytes_permit): Permits,
        budgets: &Budgets,
        tx: &mpsc::Sender<Out>,
        closed: &watch::Receiver<bool>,
    ) {
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        let tx = tx.clone();
        let mut task_stop = self.stop.clone();
        let mut task_closed = closed.clone();
        let reads = budgets.reads.clone();
        let reads_max = budgets.reads_max;
        let replies = self.shared.replies.clone();
        tokio::spawn(async move {
            let mut held = vec![req_permit, bytes_permit];
            // A read reserves room for its response before it runs, in its connection's
            // budget (`max_read_bytes_in_flight`) and then in the broker's
            // (`max_reply_bytes`), so the responses in memory stay within both however
            // many connections stop reading theirs: their reads wait (backpressure) until
            // answers are written or the write timeout closes the connection. A fetch's
            // reservation is small (it bounds the bytes the engine may return), so long
            // polls waiting for messages do not crowd out the rest.
            let mut fetch_bytes = READ_BYTES_MAX;
            if let Some(room) = read_room(&request, reads_max) {
                let reserved = tokio::select! {
                    biased;
                    // Nobody is left to answer.
                    _ = stopped(&mut task_closed) => None,
                    _ = stopped(&mut task_stop), if opcode == op::FETCH => None,
                    p = async {
                        let mine = reads.acquire_many_owned(room.reserve).await.ok()?;
                        let all = replies.reserve(room.reserve).await?;
                        Some([mine, all])
                    } => p,
                };
                match reserved {
                    Some(p) => held.extend(p),
                    None if opcode == op::FETCH => {
                        let mut out = BytesMut::new();
                        Response::Deliveries(Vec::new()).encode(opcode, id, &mut out);
                        let _ = tx.send(Out::Frames(out, held)).await;
                        return;
                    }
                    None => return,
                }
                fetch_bytes = room.engine_bytes;
            }
            let resp = tokio::select! {
                // A long poll ends, empty, when the broker stops or the connection
                // closes (checked first: never lease to a peer that is gone).
                biased;
                _ = stopped(&mut task_stop), if opcode == op::FETCH => {
                    Response::Deliveries(Vec::new())
                }
                _ = stopped(&mut task_closed), if opcode == op::FETCH => {
                    Response::Deliveries(Vec::new())
                }
                // Other requests finish (their effects are on their way to the disk
                // anyway).
                r = handle(&engine, &metrics, request, fetch_bytes) => r,
            };
            if matches!(resp, Response::Error(_)) {
                metrics.request_errors.fetch_add(1, Ordering::Relaxed);
            }
            let mut out = BytesMut::new();
            resp.encode(opcode, id, &mut out);
            let _ = tx.send(Out::Frames(out, held)).await;
        });
    }

    /// Tells an idle peer why it is being closed, and closes.
    async fn close_idle(&self, tx: &mpsc::Sender<Out>) {
        self.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
        let msg = format!("idle for {} ms", self.config.idle_timeout_ms);
        let mut out = BytesMut::new();
        Response::Error(WireError::protocol(code::IDLE_TIMEOUT, msg)).encode(op::PING, 0, &mut out);
        let _ = tx.send(Out::Frames(out, Vec::new())).await;
        let _ = tx.send(Out::Close).await;
    }

    /// Publishes what was gathered: `Engine::publish_each_submit` runs here, in the reader,
    /// so a connection's publishes get offsets in the order they arrived; the writer then
    /// waits for durability and writes one response per request (a confirm, or that
    /// message's own error). See [`write_loop`].
    async fn flush_publishes(&self, gathered: &mut Option<Gathered>, tx: &mpsc::Sender<Out>) {
        let Some(g) = gathered.take() else { return };
        let pending = self.engine.publish_each_submit(&g.topic, g.messages);
        let durable = Box::pin(async move {
            match pending {
                Ok(p) => p.wait().await,
                Err(e) => Err(e),
            }
        });
        let answering = Answering {
            durable,
            replies: g.replies,
        };
        // The writer is gone only when the connection is ending: these requests' answers
        // (their messages are on their way to the disk) then go nowhere, as every other.
        let _ = tx.send(Out::Publishes(answering)).await;
    }

    /// Waits for a submitted batch in a task and answers it.
    fn answer_batch(
        &self,
        submitted: crate::Result<crate::engine::Submitted>,
        id: u32,
        permits: Permits,
        tx: &mpsc::Sender<Out>,
    ) {
        let metrics = self.metrics.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = match submitted {
                Ok((confirms, rx)) => Engine::wait_durable(rx).await.map(|()| confirms),
                Err(e) => Err(e),
            };
            let resp = match result {
                Ok(cs) => {
                    metrics
                        .messages_published
                        .fetch_add(cs.len() as u64, Ordering::Relaxed);
                    Response::Confirms(cs)
                }
                Err(e) => {
                    metrics.request_errors.fetch_add(1, Ordering::Relaxed);
                    Response::Error(WireError::from_error(&e))
                }
            };
            let mut out = BytesMut::new();
            resp.encode(op::PUBLISH_BATCH, id, &mut out);
            let (r, b) = permits;
            let _ = tx.send(Out::Frames(out, vec![r, b])).await;
        });
    }

    /// Sends an error frame and asks the writer to close after it.
    async fn fail(&self, tx: &mpsc::Sender<Out>, id: u32, code: u16, message: String) {
        if code >= code::BAD_FRAME {
            self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = BytesMut::new();
        Response::Error(WireError::protocol(code, message)).encode(op::PING, id, &mut out);
        let _ = tx.send(Out::Frames(out, Vec::new())).await;
        let _ = tx.send(Out::Close).await;
    }
}

/// Why a connection's handshake is refused (answered with `BAD_HANDSHAKE`, then closed).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    /// The client's version range does not include ours.
    #[error(
        "no common version: client speaks {min}..={max}, broker {}",
        proto::VERSION
    )]
    NoCommonVersion {
        /// Oldest version the client speaks.
        min: u16,
        /// Newest version the client speaks.
        max: u16,
    },
    /// Something other than a hello came first.
    #[error("the first frame must be a hello")]
    NotHello,
    /// A hello after the handshake.
    #[error("a second hello")]
    SecondHello,
    /// The deadline for the hello (and the proof) passed.
    #[error("no hello (or no proof of the secret) in time")]
    Timeout,
    /// An `AUTH` the broker did not ask for.
    #[error("an AUTH frame the broker did not ask for")]
    UnexpectedAuth,
    /// The broker has a secret but the client speaks no version that can prove it.
    #[error(
        "this broker requires authentication (protocol version {}), but the client speaks \
         only {min}..={max}",
        proto::VERSION_AUTH
    )]
    NoAuthVersion {
        /// Oldest version the client speaks.
        min: u16,
        /// Newest version the client speaks.
        max: u16,
    },
}

/// Checks the first frame of a connection; returns the version to speak: the newest both
/// speak, which must have authentication when the broker has a secret.
fn hello(request: &Request, auth: bool) -> Result<u16, HandshakeError> {
    let Request::Hello {
        min_version,
        max_version,
        ..
    } = request
    else {
        return Err(HandshakeError::NotHello);
    };
    let (min, max) = (*min_version, *max_version);
    let version = max.min(proto::VERSION);
    if version < min || version < proto::VERSION_MIN {
        return Err(HandshakeError::NoCommonVersion { min, max });
    }
    if auth && version < proto::VERSION_AUTH {
        return Err(HandshakeError::NoAuthVersion { min, max });
    }
    Ok(version)
}

/// The topic a request may create (the engine creates a topic on its first publish,
/// group or fetch).
fn creates_topic(request: &Request) -> Option<&str> {
    match request {
        Request::Publish { topic, .. }
        | Request::PublishBatch { topic, .. }
        | Request::PublishEach { topic, .. }
        | Request::CreateGroup { topic, .. }
        | Request::Fetch { topic, .. } => Some(topic),
        _ => None,
    }
}

/// Encodes the answers to gathered publish requests from the per-message `results` (in
/// the requests' order): a `PUBLISH` gets its confirm or its error frame, a `PUBLISH_EACH`
/// one frame with each of its messages' results; an outer error (the engine failed or
/// closed, a bad topic) answers every request with it. Appends the frames to `out`; returns
/// the messages confirmed and the answers that are errors.
fn answer_publishes(replies: &[Reply], results: PublishResults, out: &mut BytesMut) -> (u64, u64) {
    // A confirm frame is 18 bytes; a PUBLISH_EACH answer 13 plus 10 per message.
    let messages: usize = replies.iter().map(|r| r.count).sum();
    out.reserve(replies.len() * 18 + messages * 10);
    let (mut ok, mut failed) = (0u64, 0u64);
    match results {
        Ok(rs) => {
            let mut rs = rs.into_iter();
            for r in replies {
                let mut each = Vec::with_capacity(r.count);
                for _ in 0..r.count {
                    let result = rs
                        .next()
                        .unwrap_or_else(|| Err(crate::Error::Invalid("missing confirm".into())));
                    each.push(match result {
                        Ok(c) => {
                            ok += 1;
                            Ok(c)
                        }
                        Err(e) => {
                            failed += 1;
                            Err(WireError::from_error(&e))
                        }
                    });
                }
                let resp = if r.opcode == op::PUBLISH_EACH {
                    Response::Each(each)
                } else {
                    match each.pop() {
                        Some(Ok(c)) => Response::Confirm(c),
                        Some(Err(w)) => Response::Error(w),
                        None => Response::Error(WireError::protocol(
                            code::INTERNAL,
                            "no result for a publish".to_string(),
                        )),
                    }
                };
                resp.encode(r.opcode, r.id, out);
            }
        }
        Err(e) => {
            let w = WireError::from_error(&e);
            for r in replies {
                failed += r.count as u64;
                Response::Error(w.clone()).encode(r.opcode, r.id, out);
            }
        }
    }
    (ok, failed)
}

/// The connection's writer: writes the frames the reader and the request tasks hand it, and
/// answers the publishes the reader appended ([`Out::Publishes`]) once their round is
/// durable. Whatever is ready when it wakes goes out in one `write`: every durable answer,
/// and frames until `batch_bytes` (the answers are bounded by the in-flight limit). After [`Out::Close`], or once every sender is gone, it still
/// answers the publishes it holds, then closes.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    batch_bytes: usize,
    write_timeout: Duration,
    metrics: Arc<BrokerMetrics>,
) -> io::Result<()> {
    // At least one byte: with 0, no frame would ever be taken.
    let batch_bytes = batch_bytes.max(1);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut held: Held = Vec::new();
    // Appends waiting for their round, oldest first. Rounds end in submission order, so
    // only the oldest is polled (the next is polled as soon as it is answered). Bounded by
    // the connection's in-flight limit: each entry holds its requests' permits.
    let mut waiting: VecDeque<Answering> = VecDeque::new();
    // Close asked for, or every sender gone: no frame is taken any more.
    let mut closing = false;
    loop {
        std::future::poll_fn(|cx| {
            loop {
                let mut more = false;
                while let Some(oldest) = waiting.front_mut() {
                    let Poll::Ready(results) = oldest.durable.as_mut().poll(cx) else {
                        break;
                    };
                    let replies = waiting.pop_front().map(|a| a.replies).unwrap_or_default();
                    let (ok, failed) = answer_publishes(&replies, results, &mut buf);
                    metrics.messages_published.fetch_add(ok, Ordering::Relaxed);
                    metrics.request_errors.fetch_add(failed, Ordering::Relaxed);
                    held.extend(replies.into_iter().flat_map(|r| [r.permits.0, r.permits.1]));
                }
                // After a close, the channel is still drained (and what comes is dropped,
                // its permits with it), so that no sender waits on a full channel.
                while closing || buf.len() < batch_bytes {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(_)) if closing => {}
                        Poll::Ready(Some(Out::Frames(f, h))) => {
                            buf.extend_from_slice(&f);
                            held.extend(h);
                        }
                        Poll::Ready(Some(Out::Publishes(a))) => {
                            waiting.push_back(a);
                            // Poll it (it may be durable already, and it must hold our
                            // waker before this returns `Pending`).
                            more |= waiting.len() == 1;
                        }
                        Poll::Ready(Some(Out::Close)) | Poll::Ready(None) => {
                            closing = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if !more {
                    break;
                }
            }
            if !buf.is_empty() || (closing && waiting.is_empty()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        // A peer that stops reading would otherwise pin these responses (and the limits
        // they hold) forever. The timeout restarts with every bit of progress, so a slow
        // reader that keeps reading is not cut off.
        let mut written = 0;
        while written < buf.len() {
            match tokio::time::timeout(write_timeout, wr.write(&buf[written..])).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {} ms", write_timeout.as_millis()),
                    ));
                }
            }
        }
        buf.clear();
        held.clear();
        if closing && waiting.is_empty() {
            break;
        }
    }
    wr.shutdown().await
}

/// Room a read reserves for its response before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadRoom {
    /// Bytes reserved: the largest response the read can produce.
    reserve: u32,
    /// The stored bytes the engine may return (fetch only; peek and dead-letter listing use
    /// the engine's own `READ_BYTES_MAX`).
    engine_bytes: u64,
}

/// The room a read needs; `None` for requests that are not reads. A fetch asks the engine
/// for at most `FETCH_BYTES_PER_MESSAGE` stored bytes per message it may return (at least
/// 64 KiB, at most `READ_BYTES_MAX`); the engine stops once the messages it leased reach
/// that, the one crossing it included, so the response is at most that plus one entry plus
/// the per-message overheads. Peek and dead-letter listing (which never wait) reserve their
/// worst case: their limit times the largest entry, at most the engine's per-read budget
/// plus one entry. Every reservation is cut to the connection's whole budget.
fn read_room(request: &Request, budget: usize) -> Option<ReadRoom> {
    let per_message = ENTRY_BYTES_MAX + READ_OVERHEAD_BYTES;
    let (n, engine_bytes) = match request {
        Request::Fetch { options, .. } => {
            let n = options.max_messages.clamp(1, FETCH_MESSAGES_MAX);
            let bytes = (n as u64 * FETCH_BYTES_PER_MESSAGE).clamp(64 << 10, READ_BYTES_MAX);
            (n, bytes)
        }
        Request::Peek { limit, .. } => (
            (*limit as usize).clamp(1, PEEK_MESSAGES_MAX),
            READ_BYTES_MAX,
        ),
        Request::DeadLetters { limit, .. } => (
            (*limit as usize).clamp(1, DEAD_LETTER_LIST_MAX),
            READ_BYTES_MAX,
        ),
        _ => return None,
    };
    let most = engine_bytes as usize + per_message + n * READ_OVERHEAD_BYTES;
    let reserve = n.saturating_mul(per_message).min(most).clamp(1, budget) as u32;
    Some(ReadRoom {
        reserve,
        engine_bytes,
    })
}

fn reply<T>(r: crate::Result<T>, f: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => f(v),
        Err(e) => Response::Error(WireError::from_error(&e)),
    }
}

async fn handle(
    engine: &Engine,
    metrics: &BrokerMetrics,
    request: Request,
    fetch_bytes: u64,
) -> Response {
    match request {
        // The reader answers these itself (the hello, and publishes queued in arrival
        // order); they never reach a request task.
        Request::Hello { .. }
        | Request::Auth { .. }
        | Request::Publish { .. }
        | Request::PublishBatch { .. }
        | Request::PublishEach { .. } => Response::Error(WireError::protocol(
            code::INTERNAL,
            "request handled by the connection's reader".to_string(),
        )),
        Request::Ping => Response::Done,
        Request::CreateGroup {
            topic,
            group,
            start,
        } => reply(engine.create_group(&topic, &group, start).await, |()| {
            Response::Done
        }),
        Request::Fetch {
            topic,
            group,
            options,
        } => {
            let r = engine
                .fetch_bounded(&topic, &group, options, fetch_bytes)
                .await;
            if let Ok(ds) = &r {
                metrics
                    .messages_delivered
                    .fetch_add(ds.len() as u64, Ordering::Relaxed);
            }
            reply(r, Response::Deliveries)
        }
        Request::Ack {
            topic,
            group,
            receipts,
        } => {
            let r = engine.ack(&topic, &group, &receipts).await;
            if let Ok(os) = &r {
                let n = os
                    .iter()
                    .filter(|o| **o == crate::AckOutcome::Acked)
                    .count();
                metrics
                    .messages_acked
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            reply(r, Response::Outcomes)
        }
        Request::Nack {
            topic,
            group,
            receipt,
            delay_ms,
            reason,
        } => reply(
            engine
                .nack(&topic, &group, receipt, delay_ms, &reason)
                .await,
            Response::Outcome,
        ),
        Request::Reject {
            topic,
            group,
            receipt,
            reason,
        } => reply(
            engine.reject(&topic, &group, receipt, &reason).await,
            Response::Outcome,
        ),
        Request::DeadLetters { topic, from, limit } => {
            let limit = (limit as usize).min(DEAD_LETTER_LIST_MAX);
            reply(
                engine.dead_letters(&topic, from, limit).await,
                Response::DeadLetters,
            )
        }
        Request::Replay { topic, dead_offset } => reply(
            engine.replay_dead_letter(&topic, dead_offset).await,
            Response::Offset,
        ),
        Request::Discard { topic, dead_offset } => reply(
            engine.discard_dead_letter(&topic, dead_offset).await,
            |()| Response::Done,
        ),
        Request::Stats { topic } => reply(engine.stats(&topic).await, Response::Stats),
        Request::Topics => reply(engine.topics().await, Response::Topics),
        Request::Peek { topic, from, limit } => {
            let limit = (limit as usize).min(PEEK_MESSAGES_MAX);
            reply(engine.peek(&topic, from, limit).await, Response::Peeked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FetchOptions;

    fn fetch(max_messages: usize) -> Request {
        Request::Fetch {
            topic: "t".into(),
            group: "g".into(),
            options: FetchOptions {
                max_messages,
                lease_ms: None,
                wait_ms: 0,
            },
        }
    }

    #[test]
    fn reads_reserve_their_largest_response_within_the_budget() {
        let budget = 128 << 20;
        let room = |r: &Request| read_room(r, budget).expect("a read");
        // A fetch's response: at most its engine budget plus one entry plus overheads.
        for n in [1, 10, 100, 10_000] {
            let r = room(&fetch(n));
            let largest = r.engine_bytes as usize + ENTRY_BYTES_MAX + n * READ_OVERHEAD_BYTES;
            assert!(
                r.reserve as usize >= largest.min(n * (ENTRY_BYTES_MAX + READ_OVERHEAD_BYTES)),
                "{n}: {r:?}"
            );
            assert!(
                r.engine_bytes <= READ_BYTES_MAX && r.engine_bytes >= 64 << 10,
                "{r:?}"
            );
        }
        // Small fetches reserve little, so many long polls fit in one connection's budget.
        let ten = room(&fetch(10));
        assert!((ten.reserve as usize) < 2 * ENTRY_BYTES_MAX, "{ten:?}");
        assert!(budget / ten.reserve as usize >= 50, "{ten:?}");
        // A peek reserves its worst case: enough for the engine's whole per-read budget.
        let peek = Request::Peek {
            topic: "t".into(),
            from: 0,
            limit: 1000,
        };
        let p = room(&peek);
        assert!(
            p.reserve as usize >= READ_BYTES_MAX as usize + ENTRY_BYTES_MAX,
            "{p:?}"
        );
        assert_eq!(
            read_room(&fetch(10_000), 1000).map(|r| r.reserve),
            Some(1000)
        );
        assert_eq!(read_room(&Request::Ping, budget), None);
    }
}
