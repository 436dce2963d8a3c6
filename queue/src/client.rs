//! [`Client`]: the broker's client, implementing the same [`Queue`] trait as the embedded
//! [`crate::Engine`], so gateways and workers switch between the two by configuration.
//!
//! The client keeps a small pool of connections (`ClientConfig::connections`) and
//! multiplexes many requests over each: every request gets an id, is written by the
//! connection's writer task (which coalesces whatever is queued into one `write`), and is
//! answered by the connection's reader task through a one-shot channel. Requests are spread
//! over the pool round-robin. A request holds one of the connection's in-flight slots (at
//! most what the broker announced) from before it is written until its answer arrives or
//! its connection dies, even if its caller stopped waiting: the broker still runs it.
//!
//! Arguments the broker could not even decode (too many headers, batch or ack receipts
//! above [`crate::limits`], a frame above the broker's limit) are refused here with
//! [`Error::Invalid`] and never sent: at the broker they would be protocol errors, which
//! close the connection and fail every other request in flight on it.
//!
//! With [`ClientConfig::secret`] set, every connection proves the broker's secret in the
//! handshake and requires the broker's proof back (`PROTOCOL.md`, "Authentication"); a
//! refused authentication is [`Error::Auth`] and is not retried.
//!
//! When a connection is lost, every request in flight on it fails with
//! [`Error::Connection`]; nothing is retried behind the caller's back, because a publish
//! may or may not have been stored. The caller retries with the same message id and the
//! broker's de-duplication makes the retry harmless. A request not answered within
//! [`ClientConfig::request_timeout_ms`] closes its connection the same way (a broker that
//! does not answer one request is presumed gone). The next request on that slot
//! reconnects, with exponential backoff ([`crate::backoff::Backoff`]) between failed
//! attempts; after a whole schedule of failed attempts, requests on the slot fail at once
//! for [`ClientConfig::backoff_max_ms`] instead of each running the schedule again.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, FetchOptions, Message, Peeked, Queue, Receipt,
    StartAt, TopicStats,
};
use crate::auth::Secret;
use crate::backoff::Backoff;
use crate::engine::validate_message;
use crate::error::{Error, Result};
use crate::limits::{ACK_RECEIPTS_MAX, READ_BYTES_MAX, STORED_PAYLOAD_BYTES_MAX};
use crate::proto::{self, Request, Response, op};

/// The largest response the client accepts whatever [`ClientConfig::max_frame_bytes`] says:
/// a fetch, peek or dead-letter listing stops adding messages at
/// [`READ_BYTES_MAX`] stored bytes but always finishes the message that crossed it (up to
/// [`STORED_PAYLOAD_BYTES_MAX`]), plus the per-message framing (well under 1 MiB at the
/// count limits).
pub const RESPONSE_BYTES_MAX: usize =
    READ_BYTES_MAX as usize + STORED_PAYLOAD_BYTES_MAX + (1 << 20);

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
    /// First backoff between attempts; doubled after each failure (the schedule of
    /// [`Backoff`]).
    pub backoff_initial_ms: u64,
    /// Longest backoff between attempts (a value below `backoff_initial_ms` counts as
    /// `backoff_initial_ms`). After a reconnect that ran out of attempts, requests on that
    /// pool slot fail at once with its error for this long.
    pub backoff_max_ms: u64,
    /// Largest frame the client sends (also capped by the broker's announced limit; a
    /// larger request fails alone with [`Error::Invalid`]). The client accepts responses up
    /// to the larger of this and [`RESPONSE_BYTES_MAX`], since a fetch, peek or dead-letter
    /// listing can be that large whatever is set here.
    pub max_frame_bytes: usize,
    /// A request not done within this long (plus a fetch's own `wait_ms`), counting the
    /// connect and the wait for an in-flight slot, fails with [`Error::Connection`]. If it
    /// was sent, it may or may not have taken effect, and its connection is closed (failing
    /// the other requests in flight on it); the next request reconnects.
    pub request_timeout_ms: u64,
    /// Name sent in the hello.
    pub name: String,
    /// The broker's shared secret. With one, the client proves it in the handshake and
    /// requires the broker to prove it back (a broker that asks for no proof is refused:
    /// it cannot hold the secret). Without one, a broker that requires a proof is refused
    /// with [`Error::Auth`]. [`ClientConfig::from_env`] reads it from `QUEUE_SECRET` or
    /// `QUEUE_SECRET_FILE`.
    pub secret: Option<Secret>,
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
            secret: None,
        }
    }

    /// Defaults for a broker at `addr`, with the secret from the environment
    /// ([`Secret::from_env`]: `QUEUE_SECRET` or `QUEUE_SECRET_FILE`), if one is set.
    pub fn from_env(addr: impl Into<String>) -> Result<Self> {
        Ok(ClientConfig::new(addr).with_secret(Secret::from_env()?))
    }

    /// The same settings with `secret`.
    pub fn with_secret(self, secret: Option<Secret>) -> Self {
        ClientConfig { secret, ..self }
    }

    /// The waits between the connect attempts of one reconnect: from
    /// `backoff_initial_ms`, doubling, capped at `backoff_max_ms`.
    pub(crate) fn reconnect_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial_ms, self.backoff_max_ms)
    }
}

/// A broker client. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// Dropping a request's future (an outer timeout, a `select!`) does not recall the request:
/// the broker still runs it and it keeps its in-flight slot until answered. See
/// [`Client::fetch`](Queue::fetch) for what that means for a fetch.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

/// One pool slot: its live connection, a lock held while (re)connecting so that only one
/// task reconnects while the others wait for it, and until when the broker counts as down.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    /// After a reconnect ran out of attempts: until when requests fail at once, and its
    /// error. Only looked at when there is no live connection.
    down: Mutex<Option<(Instant, String)>>,
}

/// Locks a std mutex, recovering the data if a panic poisoned it (every critical section
/// here leaves the data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Slot {
    /// The live connection, if any: the fast path of every request (a brief std lock).
    fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.current)
            .as_ref()
            .filter(|c| c.alive.load(Ordering::Acquire))
            .cloned()
    }

    fn set(&self, conn: Option<Arc<Conn>>) {
        *lock(&self.current) = conn;
    }

    /// Fails while the broker counts as down after a failed reconnect.
    fn check_down(&self) -> Result<()> {
        match &*lock(&self.down) {
            Some((until, why)) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Ok(())
                } else {
                    Err(Error::NotSent(format!(
                        "{why}; not retrying for another {} ms",
                        left.as_millis().max(1)
                    )))
                }
            }
            None => Ok(()),
        }
    }

    fn set_down(&self, down: Option<(Instant, String)>) {
        *lock(&self.down) = down;
    }
}

type Waiter = oneshot::Sender<Result<(u8, Response)>>;

/// Who waits for a request's answer: its one caller, or, for a `PUBLISH_EACH` frame, the
/// caller of each of its messages in the frame's order.
#[derive(Debug)]
enum Waiters {
    One(Waiter),
    Each(Vec<Waiter>),
}

impl Waiters {
    /// Fails every caller with the error `why` makes.
    fn fail(self, why: impl Fn() -> Error) {
        match self {
            Waiters::One(w) => {
                let _ = w.send(Err(why()));
            }
            Waiters::Each(ws) => {
                for w in ws {
                    let _ = w.send(Err(why()));
                }
            }
        }
    }

    /// Hands the decoded answer to a request of opcode `op` to its callers: a
    /// `PUBLISH_EACH` answer is split into one confirm or error per message (an error frame
    /// is every message's error). An answer of the wrong length or kind cannot be split: its
    /// messages may or may not be stored, so each caller gets [`Error::Connection`] (retry
    /// with the same id) and the reason is returned: the connection must be dropped, since
    /// a broker that answers so cannot be trusted with the next request.
    fn answer(self, op: u8, r: Result<Response>) -> Option<String> {
        let ws = match self {
            Waiters::One(w) => {
                let _ = w.send(r.map(|r| (op, r)));
                return None;
            }
            Waiters::Each(ws) => ws,
        };
        let why = match r {
            Ok(Response::Each(rs)) if rs.len() == ws.len() => {
                for (w, r) in ws.into_iter().zip(rs) {
                    let resp = match r {
                        Ok(c) => Response::Confirm(c),
                        Err(e) => Response::Error(e),
                    };
                    let _ = w.send(Ok((op, resp)));
                }
                return None;
            }
            Ok(Response::Error(e)) => {
                for w in ws {
                    let _ = w.send(Ok((op, Response::Error(e.clone()))));
                }
                return None;
            }
            Ok(other) => format!(
                "the broker answered {} to a publish_each of {} messages",
                short(&other),
                ws.len()
            ),
            Err(e) => format!("the broker's answer to a publish_each: {e}"),
        };
        Waiters::Each(ws).fail(|| Error::Connection(why.clone()));
        Some(why)
    }
}

/// A response's kind and size, for an error message.
fn short(r: &Response) -> String {
    match r {
        Response::Each(rs) => format!("of {} results", rs.len()),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct Pending {
    /// The request's opcode (to decode the answer).
    op: u8,
    waiter: Waiters,
    /// When its caller gives up on it (whether or not the caller is still there): the
    /// connection's reader closes the connection then (see `Conn::watch`).
    deadline: Instant,
    /// What the request may wait beyond the request timeout (a fetch's `wait_ms`), for the
    /// timeout's message.
    extra_wait_ms: u64,
    /// Its in-flight slot, released with the entry: when the answer arrives or the
    /// connection dies, not when the caller stops waiting.
    _permit: OwnedSemaphorePermit,
}

/// What callers hand a connection's writer task.
#[derive(Debug)]
enum Outgoing {
    /// A whole request frame, already registered.
    Frame(BytesMut),
    /// One publish: the writer groups the publishes queued together for one topic into one
    /// `PUBLISH_EACH` frame and registers it (version 3).
    Publish(QueuedPublish),
}

/// A publish waiting for the writer (see [`Outgoing::Publish`]).
#[derive(Debug)]
struct QueuedPublish {
    topic: String,
    /// The message, encoded (`proto::encode_message`).
    message: BytesMut,
    waiter: Waiter,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
}

/// One multiplexed connection.
#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Outgoing>,
    state: Mutex<ConnState>,
    next_id: AtomicU32,
    alive: AtomicBool,
    permits: Arc<Semaphore>,
    /// The permits' total: the most requests in flight on this connection.
    permits_max: usize,
    /// Largest frame sent: the smaller of the client's and the broker's limit.
    max_frame_bytes: usize,
    /// The protocol version agreed in the hello.
    version: u16,
    /// The broker's address and the request timeout, for the timeout's message.
    addr: String,
    request_timeout_ms: u64,
}

#[derive(Debug, Default)]
struct ConnState {
    /// Request id → its entry. `None` once the connection is dead.
    pending: Option<HashMap<u32, Pending>>,
    /// Dropped by [`Conn::kill`] (or with the connection): stops the reader and the writer,
    /// which closes the socket.
    stop: Option<(oneshot::Sender<()>, oneshot::Sender<()>)>,
}

impl Conn {
    /// Registers requests about to be sent; fails if the connection is dead.
    fn register(&self, entries: impl IntoIterator<Item = (u32, Pending)>) -> Result<()> {
        let collided = {
            let mut st = lock(&self.state);
            let Some(p) = st.pending.as_mut() else {
                return Err(Error::Connection("connection lost".into()));
            };
            let mut collided = false;
            for (id, entry) in entries {
                // Ids wrap after 2^32 requests; one still pending then (an abandoned long
                // poll) must not get another caller's answer. Vanishingly rare: start over
                // on a fresh connection.
                if let Some(old) = p.insert(id, entry) {
                    old.waiter
                        .fail(|| Error::Connection("request id reused".into()));
                    collided = true;
                }
            }
            collided
        };
        if collided {
            self.kill("request id space wrapped onto a pending request");
            return Err(Error::Connection("request id reused; reconnecting".into()));
        }
        Ok(())
    }

    /// Fails every waiter, refuses new ones, releases every in-flight slot (waiters for one
    /// fail) and closes the socket.
    fn kill(&self, why: &str) {
        self.alive.store(false, Ordering::Release);
        self.permits.close();
        let (pending, stop) = {
            let mut st = lock(&self.state);
            (st.pending.take(), st.stop.take())
        };
        drop(stop);
        for (_, p) in pending.into_iter().flatten() {
            p.waiter.fail(|| Error::Connection(why.to_string()));
        }
    }

    /// The request timeout of every request on this connection, checked by its reader (one
    /// timer per connection, not one per request): kills the connection if a request is
    /// past its deadline (failing every request in flight on it with
    /// [`Error::Connection`]) and returns `None`; else when to look again: at the earliest
    /// deadline pending, and no later than [`WATCH_INTERVAL_MAX_MS`] from `now`. A request
    /// registered after `now` may have a deadline before the timer (it waited to connect or
    /// for a slot), so it is failed at most that much after its deadline.
    fn watch(&self, now: Instant) -> Option<Instant> {
        let overdue = {
            let st = lock(&self.state);
            let pending = st.pending.as_ref()?;
            let mut next = now + watch_interval(self.request_timeout_ms);
            let mut overdue = None;
            for e in pending.values() {
                if e.deadline <= now {
                    overdue = Some(e.extra_wait_ms);
                    break;
                }
                next = next.min(e.deadline);
            }
            match overdue {
                None => return Some(next),
                Some(extra_wait_ms) => extra_wait_ms,
            }
        };
        self.kill(&timed_out(
            &self.addr,
            self.request_timeout_ms.saturating_add(overdue),
        ));
        None
    }

    /// Kills the connection if a request on it is past its deadline (its caller may have
    /// gone and so never noticed): the broker is not answering.
    fn kill_if_overdue(&self, now: Instant, why: &str) -> bool {
        let overdue = lock(&self.state)
            .pending
            .as_ref()
            .is_some_and(|p| p.values().any(|e| e.deadline <= now));
        if overdue {
            self.kill(why);
        }
        overdue
    }
}

/// Writes the request id of the frame starting at `at` (frames are encoded before the id
/// is known, so that an oversized one is refused without taking an in-flight slot).
fn set_request_id(frames: &mut BytesMut, at: usize, id: u32) {
    frames[at + 5..at + 9].copy_from_slice(&id.to_le_bytes());
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
        if let Some(first) = client.slots.first() {
            client.reconnect(first).await?;
        }
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

    /// [`Queue::publish`], without the trait's boxed future (one allocation and copy per
    /// publish for callers that hold a `Client` itself rather than a `dyn Queue`).
    pub async fn publish(&self, topic: &str, message: Message) -> Result<Confirm> {
        validate_message(&message)?;
        self.publish_one(topic, &message).await
    }

    /// Publishes independent messages pipelined on one connection: one PUBLISH frame each,
    /// all written together, each confirmed (or refused) on its own, like
    /// [`crate::Engine::publish_each`]. Returns one result per message: a message that is
    /// invalid (limits, or a frame above the limit) gets its own [`Error::Invalid`] and is
    /// not sent; one not answered because the connection was lost or the request timed out
    /// gets [`Error::Connection`] (it may or may not be stored; a retry with the same id is
    /// harmless), while confirms already received are kept. The outer error means nothing
    /// was sent (no connection, no in-flight slots in time, more messages than
    /// [`ClientConfig::max_in_flight`]).
    pub async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        // A bad topic name is the outer error, as the engine's: it applies to every message.
        crate::engine::validate_user_topic(topic)?;
        let n = messages.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.timeout(0);
        let mut results: Vec<Option<Result<Confirm>>> = messages
            .iter()
            .map(|m| validate_message(m).err().map(Err))
            .collect();
        if results.iter().all(Option::is_some) {
            return Ok(finish(results));
        }
        let conn = self.conn(self.pick(), deadline).await?;
        if n > conn.permits_max {
            return Err(Error::Invalid(format!(
                "{n} messages exceed the {} requests one connection may have in flight",
                conn.permits_max
            )));
        }
        // Encoded with id 0; each id is written in once the slots are taken.
        let mut frames = BytesMut::with_capacity(n * (64 + topic.len()));
        let mut sent = Vec::with_capacity(n);
        for (i, m) in messages.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let at = frames.len();
            proto::encode_publish(0, topic, m, &mut frames);
            if frames.len() - at - 4 > conn.max_frame_bytes {
                frames.truncate(at);
                results[i] = Some(Err(Error::Invalid(format!(
                    "message {i} makes a frame larger than the limit of {} bytes",
                    conn.max_frame_bytes
                ))));
                continue;
            }
            sent.push((i, at));
        }
        if sent.is_empty() {
            return Ok(finish(results));
        }
        let k = sent.len();
        let mut permits = self.permits(&conn, k as u32, deadline).await?;
        let first = conn.next_id.fetch_add(k as u32, Ordering::Relaxed);
        let mut entries = Vec::with_capacity(k);
        let mut receivers = Vec::with_capacity(k);
        for (j, &(i, at)) in sent.iter().enumerate() {
            let id = first.wrapping_add(j as u32);
            set_request_id(&mut frames, at, id);
            let Some(permit) = permits.split(1) else {
                return Err(Error::Connection("in-flight slots miscounted".into()));
            };
            let (tx, rx) = oneshot::channel();
            entries.push((
                id,
                Pending {
                    op: op::PUBLISH,
                    waiter: Waiters::One(tx),
                    deadline,
                    extra_wait_ms: 0,
                    _permit: permit,
                },
            ));
            receivers.push((i, rx));
        }
        let Ok(writer) = conn.tx.reserve().await else {
            conn.kill("connection lost while sending");
            return Err(Error::NotSent(
                "connection lost before the request was sent".into(),
            ));
        };
        conn.register(entries)?;
        writer.send(Outgoing::Frame(frames));
        for (i, rx) in receivers {
            // Each is answered, or failed when the connection dies (its reader closes it
            // once a request is past its deadline).
            let answer = rx.await.ok();
            results[i] = Some(match answer {
                Some(Ok((_, Response::Confirm(c)))) => Ok(c),
                Some(Ok((_, Response::Error(e)))) => Err(e.into_error()),
                Some(Ok((_, other))) => Err(unexpected(&other)),
                Some(Err(e)) => Err(e),
                None => Err(Error::Connection("connection lost".into())),
            });
        }
        Ok(finish(results))
    }

    /// The next pool slot, round-robin.
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// The slot's live connection, or a new one, by `deadline`.
    async fn conn(&self, slot: usize, deadline: Instant) -> Result<Arc<Conn>> {
        let Some(slot) = self.slots.get(slot) else {
            return Err(Error::Invalid(format!("no pool slot {slot}")));
        };
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        match tokio::time::timeout_at(deadline, self.reconnect(slot)).await {
            Ok(r) => r,
            Err(_) => Err(Error::NotSent(format!(
                "could not connect to {} within the request timeout; the request was not sent",
                self.config.addr
            ))),
        }
    }

    /// Reconnects the slot (or takes the connection another task just made), running the
    /// backoff schedule; after a failed schedule the slot counts as down for
    /// `backoff_max_ms`, and callers fail at once with its error.
    async fn reconnect(&self, slot: &Slot) -> Result<Arc<Conn>> {
        slot.check_down()?;
        let _connecting = slot.connecting.lock().await;
        // Another task may have reconnected, or given up, while this one waited.
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        slot.check_down()?;
        slot.set(None);
        let attempts = self.config.connect_attempts.max(1);
        let mut backoff = self.config.reconnect_backoff();
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
            match tokio::time::timeout(timeout, open(&self.config)).await {
                Ok(Ok(c)) => {
                    slot.set_down(None);
                    slot.set(Some(c.clone()));
                    return Ok(c);
                }
                // A refused authentication will not pass by retrying (and each wrong proof
                // counts against this address at the broker): give up at once.
                Ok(Err(e @ Error::Auth(_))) => {
                    let until = Instant::now() + Duration::from_millis(self.config.backoff_max_ms);
                    slot.set_down(Some((until, e.to_string())));
                    return Err(e);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connect timed out".into(),
            }
        }
        let why = format!(
            "cannot reach {} after {attempts} attempts: {last}",
            self.config.addr
        );
        let until = Instant::now() + Duration::from_millis(self.config.backoff_max_ms);
        slot.set_down(Some((until, why.clone())));
        Err(Error::NotSent(why))
    }

    /// Takes `n` in-flight slots on `conn` by `deadline`.
    async fn permits(
        &self,
        conn: &Conn,
        n: u32,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit> {
        let closed = || Error::NotSent("connection lost before the request was sent".into());
        match conn.permits.clone().try_acquire_many_owned(n) {
            Ok(p) => return Ok(p),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout_at(deadline, conn.permits.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                // Slots held past their deadline (by callers that went away) mean the broker
                // is not answering: retire the connection so the next request reconnects.
                let why = self.timed_out(0);
                if conn.kill_if_overdue(Instant::now(), &why) {
                    return Err(Error::NotSent(why));
                }
                Err(Error::NotSent(format!(
                    "no in-flight slot free on the connection to {} within the request \
                     timeout; the request was not sent",
                    self.config.addr
                )))
            }
        }
    }

    async fn call(&self, request: Request) -> Result<Response> {
        let extra_wait_ms = match &request {
            Request::Fetch { options, .. } => options.wait_ms,
            _ => 0,
        };
        let deadline = Instant::now() + self.timeout(extra_wait_ms);
        let opcode = request.opcode();
        // Encoded with id 0; the id is written in once the slot is taken.
        let mut frame = BytesMut::with_capacity(request_size_hint(&request));
        request.encode(0, &mut frame);
        drop(request);
        let conn = self.conn(self.pick(), deadline).await?;
        self.call_on(&conn, opcode, frame, extra_wait_ms, deadline)
            .await
    }

    /// Sends a request frame encoded with id 0 on `conn` and waits for its answer (an
    /// error frame becomes its error).
    async fn call_on(
        &self,
        conn: &Conn,
        opcode: u8,
        mut frame: BytesMut,
        extra_wait_ms: u64,
        deadline: Instant,
    ) -> Result<Response> {
        if frame.len() - 4 > conn.max_frame_bytes {
            return Err(Error::Invalid(format!(
                "request of {} bytes exceeds the frame limit of {}",
                frame.len() - 4,
                conn.max_frame_bytes
            )));
        }
        let permit = self.permits(conn, 1, deadline).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        set_request_id(&mut frame, 0, id);
        let (tx, rx) = oneshot::channel();
        // The channel has room for as many frames as there are slots, so this does not
        // wait; reserving first means no await between registering and sending.
        let Ok(writer) = conn.tx.reserve().await else {
            conn.kill("connection lost while sending");
            return Err(Error::NotSent(
                "connection lost before the request was sent".into(),
            ));
        };
        conn.register(std::iter::once((
            id,
            Pending {
                op: opcode,
                waiter: Waiters::One(tx),
                deadline,
                extra_wait_ms,
                _permit: permit,
            },
        )))?;
        writer.send(Outgoing::Frame(frame));
        answer(rx).await
    }

    /// One publish: on a broker of version 3 or later it is queued for the connection's
    /// writer, which sends the publishes queued together for one topic as one
    /// `PUBLISH_EACH` frame (each still confirmed or refused on its own); an older broker
    /// gets a `PUBLISH` frame.
    async fn publish_one(&self, topic: &str, message: &Message) -> Result<Confirm> {
        let deadline = Instant::now() + self.timeout(0);
        let conn = self.conn(self.pick(), deadline).await?;
        let answer = if conn.version >= proto::VERSION_EACH {
            let mut encoded = BytesMut::with_capacity(message_size_hint(message));
            proto::encode_message(message, &mut encoded);
            let frame_bytes = proto::publish_each_overhead(topic) + encoded.len();
            if frame_bytes > conn.max_frame_bytes {
                return Err(Error::Invalid(format!(
                    "request of {frame_bytes} bytes exceeds the frame limit of {}",
                    conn.max_frame_bytes
                )));
            }
            let permit = self.permits(&conn, 1, deadline).await?;
            let (tx, rx) = oneshot::channel();
            let queued = QueuedPublish {
                topic: topic.to_string(),
                message: encoded,
                waiter: tx,
                deadline,
                permit,
            };
            if conn.tx.send(Outgoing::Publish(queued)).await.is_err() {
                conn.kill("connection lost while sending");
                return Err(Error::NotSent(
                    "connection lost before the request was sent".into(),
                ));
            }
            answer(rx).await?
        } else {
            let mut frame = BytesMut::with_capacity(
                proto::publish_each_overhead(topic) + message_size_hint(message),
            );
            proto::encode_publish(0, topic, message, &mut frame);
            self.call_on(&conn, op::PUBLISH, frame, 0, deadline).await?
        };
        match answer {
            Response::Confirm(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    fn timeout(&self, extra_wait_ms: u64) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.saturating_add(extra_wait_ms))
    }

    /// The error of a request that timed out, which is also why its connection is closed.
    fn timed_out(&self, extra_wait_ms: u64) -> String {
        timed_out(
            &self.config.addr,
            self.config.request_timeout_ms.saturating_add(extra_wait_ms),
        )
    }
}

/// The error of a request to `addr` not answered within `timeout_ms`, which is also why
/// its connection is closed.
fn timed_out(addr: &str, timeout_ms: u64) -> String {
    format!(
        "no answer from {addr} within {timeout_ms} ms; closed the connection: requests in \
         flight on it may or may not have taken effect"
    )
}

/// Waits for the answer to a request (an error frame becomes its error). It has no timer of
/// its own: a request past its deadline makes its connection's reader close the
/// connection ([`Conn::watch`]), which fails it with [`Error::Connection`].
async fn answer(rx: oneshot::Receiver<Result<(u8, Response)>>) -> Result<Response> {
    match rx.await {
        Ok(Ok((_, Response::Error(e)))) => Err(e.into_error()),
        Ok(Ok((_, r))) => Ok(r),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Connection("connection lost".into())),
    }
}

/// Bytes a message's encoding takes at most (`proto::encode_message`), so that encoding
/// it allocates once.
fn message_size_hint(m: &Message) -> usize {
    let headers: usize = m.headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
    // Due kind and time, the optional id, the header count, the payload length.
    1 + 8 + 17 + 1 + headers + 4 + m.payload.len()
}

/// Bytes a request's frame takes, roughly (exactly enough for publishes), so that
/// encoding it rarely grows the buffer.
fn request_size_hint(r: &Request) -> usize {
    let base = 64;
    match r {
        Request::Publish { message, .. } => base + message_size_hint(message),
        Request::PublishBatch { messages, .. } | Request::PublishEach { messages, .. } => {
            base + messages.iter().map(message_size_hint).sum::<usize>()
        }
        Request::Ack { receipts, .. } => base + 128 + receipts.len() * 12,
        _ => base + 192,
    }
}

/// One result per message; a message left without one (not expected) counts as lost.
fn finish(results: Vec<Option<Result<Confirm>>>) -> Vec<Result<Confirm>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Connection("not sent".into()))))
        .collect()
}

/// Connects, says hello, starts the reader and writer tasks.
async fn open(config: &ClientConfig) -> Result<Arc<Conn>> {
    let io_err = |e: io::Error| Error::Connection(format!("{}: {e}", config.addr));
    let receive_max = config.max_frame_bytes.max(RESPONSE_BYTES_MAX);
    let mut stream = TcpStream::connect(&config.addr).await.map_err(io_err)?;
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let hello = Request::Hello {
        min_version: proto::VERSION_MIN,
        max_version: proto::VERSION,
        client: config.name.clone(),
    };
    let (version, max_in_flight, broker_frame_max, challenge) =
        match handshake_step(&mut stream, &mut buf, hello, config).await? {
            Response::Hello {
                version,
                max_in_flight,
                max_frame_bytes,
                challenge,
                ..
            } => (
                version,
                max_in_flight as usize,
                max_frame_bytes as usize,
                challenge,
            ),
            other => return Err(unexpected(&other)),
        };
    match (challenge, &config.secret) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::Auth(format!(
                "the broker at {} requires authentication: give this client its secret \
                 (QUEUE_SECRET or QUEUE_SECRET_FILE)",
                config.addr
            )));
        }
        (None, Some(_)) => {
            return Err(Error::Auth(format!(
                "the broker at {} asks for no authentication, so it cannot prove it holds \
                 this client's secret: refusing it (start the broker with --secret-file or \
                 QUEUE_SECRET, or drop the client's secret)",
                config.addr
            )));
        }
        (Some(challenge), Some(secret)) => {
            let client_nonce = crate::auth::nonce();
            let auth = Request::Auth {
                client_nonce,
                proof: secret.client_proof(&challenge, &client_nonce),
            };
            match handshake_step(&mut stream, &mut buf, auth, config).await? {
                Response::Authenticated { proof }
                    if secret.verify_server_proof(&challenge, &client_nonce, &proof) => {}
                Response::Authenticated { .. } => {
                    return Err(Error::Auth(format!(
                        "the broker at {} did not prove it holds this client's secret",
                        config.addr
                    )));
                }
                other => return Err(unexpected(&other)),
            }
        }
    }
    let (rd, wr) = stream.into_split();
    let in_flight = config.max_in_flight.min(max_in_flight).max(1);
    let (tx, rx) = mpsc::channel(in_flight);
    let (stop_reader, reader_stopped) = oneshot::channel();
    let (stop_writer, writer_stopped) = oneshot::channel();
    let conn = Arc::new(Conn {
        tx,
        state: Mutex::new(ConnState {
            pending: Some(HashMap::new()),
            stop: Some((stop_reader, stop_writer)),
        }),
        next_id: AtomicU32::new(1),
        alive: AtomicBool::new(true),
        permits: Arc::new(Semaphore::new(in_flight)),
        permits_max: in_flight,
        // Requests above the broker's limit would get FRAME_TOO_LARGE and cost the
        // connection (and every request in flight on it): refuse them here instead.
        max_frame_bytes: config.max_frame_bytes.min(broker_frame_max),
        version,
        addr: config.addr.clone(),
        request_timeout_ms: config.request_timeout_ms,
    });
    tokio::spawn(write_loop(wr, rx, Arc::downgrade(&conn), writer_stopped));
    tokio::spawn(read_loop(
        rd,
        buf,
        Arc::downgrade(&conn),
        reader_stopped,
        receive_max,
        config.request_timeout_ms,
    ));
    Ok(conn)
}

/// Sends one handshake request and reads its answer (an error frame becomes its error).
async fn handshake_step(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: Request,
    config: &ClientConfig,
) -> Result<Response> {
    let io_err = |e: io::Error| Error::Connection(format!("{}: {e}", config.addr));
    let opcode = request.opcode();
    let mut out = BytesMut::new();
    request.encode(0, &mut out);
    stream.write_all(&out).await.map_err(io_err)?;
    let receive_max = config.max_frame_bytes.max(RESPONSE_BYTES_MAX);
    let frame = loop {
        if let Some(f) =
            proto::split_frame(buf, receive_max).map_err(|e| Error::Protocol(e.to_string()))?
        {
            break f;
        }
        if stream.read_buf(buf).await.map_err(io_err)? == 0 {
            return Err(Error::Connection(format!(
                "{} closed the connection during the handshake",
                config.addr
            )));
        }
    };
    match Response::decode(opcode, frame.opcode, frame.body)
        .map_err(|e| Error::Protocol(e.to_string()))?
    {
        Response::Error(e) => Err(e.into_error()),
        r => Ok(r),
    }
}

/// Bytes the writer gathers before it writes.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 << 10;

/// The publishes the writer is grouping into one `PUBLISH_EACH` frame: one topic, at most
/// [`proto::EACH_MESSAGES_MAX`] messages and the connection's frame limit.
#[derive(Debug, Default)]
struct EachGroup {
    topic: String,
    /// The messages' encodings, end to end.
    messages: BytesMut,
    waiters: Vec<Waiter>,
    /// The earliest caller's deadline.
    deadline: Option<Instant>,
    permit: Option<OwnedSemaphorePermit>,
}

impl EachGroup {
    /// Whether `p` may join the group.
    fn fits(&self, p: &QueuedPublish, max_frame_bytes: usize) -> bool {
        self.waiters.is_empty()
            || (self.topic == p.topic
                && self.waiters.len() < proto::EACH_MESSAGES_MAX
                && proto::publish_each_overhead(&p.topic) + self.messages.len() + p.message.len()
                    <= max_frame_bytes)
    }

    fn add(&mut self, p: QueuedPublish) {
        if self.waiters.is_empty() {
            self.topic = p.topic;
        }
        self.messages.extend_from_slice(&p.message);
        self.waiters.push(p.waiter);
        self.deadline = Some(self.deadline.map_or(p.deadline, |d| d.min(p.deadline)));
        match &mut self.permit {
            Some(held) => held.merge(p.permit),
            None => self.permit = Some(p.permit),
        }
    }

    /// Registers the group as one `PUBLISH_EACH` request and appends its frame to `out`;
    /// on a dead or dropped connection its callers see it lost (their waiters are dropped).
    fn close(&mut self, conn: Option<&Conn>, out: &mut BytesMut) {
        if self.waiters.is_empty() {
            return;
        }
        let count = self.waiters.len();
        // The next frame is likely about as large: room for it, instead of growing from one.
        let waiters = std::mem::replace(&mut self.waiters, Vec::with_capacity(count));
        let (deadline, permit) = (self.deadline.take(), self.permit.take());
        let (Some(conn), Some(deadline), Some(permit)) = (conn, deadline, permit) else {
            self.messages.clear();
            return;
        };
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Pending {
            op: op::PUBLISH_EACH,
            waiter: Waiters::Each(waiters),
            deadline,
            extra_wait_ms: 0,
            _permit: permit,
        };
        if conn.register(std::iter::once((id, entry))).is_ok() {
            proto::encode_publish_each(id, &self.topic, count, &self.messages, out);
        }
        self.messages.clear();
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    conn: std::sync::Weak<Conn>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut group = EachGroup::default();
    loop {
        // Frames queued before the client was dropped are still written (the channel
        // closes after them); a killed connection writes nothing more.
        let first = tokio::select! {
            biased;
            _ = &mut stop => break,
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        // Callers woken together (by one read of answers) queue their next publishes one
        // after another; the first wakes this task, which would otherwise run at once and
        // write that one alone. Yielding once lets the others queue theirs first, so they
        // share one PUBLISH_EACH frame and one write.
        if matches!(first, Outgoing::Publish(_)) {
            tokio::task::yield_now().await;
        }
        let c = conn.upgrade();
        let max_frame_bytes = c.as_ref().map_or(0, |c| c.max_frame_bytes);
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Outgoing::Frame(f) => {
                    // Frames keep their order relative to the publishes before them.
                    group.close(c.as_deref(), &mut buf);
                    buf.extend_from_slice(&f);
                }
                Outgoing::Publish(p) => {
                    if !group.fits(&p, max_frame_bytes) {
                        group.close(c.as_deref(), &mut buf);
                    }
                    group.add(p);
                }
            }
            if buf.len() + group.messages.len() < WRITE_BATCH_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        group.close(c.as_deref(), &mut buf);
        drop(c);
        if buf.is_empty() {
            continue;
        }
        let written = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = wr.write_all(&buf) => r,
        };
        if let Err(e) = written {
            if let Some(c) = conn.upgrade() {
                c.kill(&format!("write failed: {e}"));
            }
            return;
        }
        buf.clear();
    }
    // Close our side; the broker answers what it has and closes.
    let _ = wr.shutdown().await;
}

/// Longest the connection's request-timeout timer sleeps (see `Conn::watch`): how late, at
/// most, a request is failed after its deadline.
pub const WATCH_INTERVAL_MAX_MS: u64 = 100;

/// How far ahead the request-timeout timer is set when nothing pending ends sooner.
fn watch_interval(request_timeout_ms: u64) -> Duration {
    Duration::from_millis(request_timeout_ms.clamp(1, WATCH_INTERVAL_MAX_MS))
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    conn: std::sync::Weak<Conn>,
    mut stop: oneshot::Receiver<()>,
    max_frame_bytes: usize,
    request_timeout_ms: u64,
) {
    // The request timeout of every request on the connection (see `Conn::watch`): one
    // timer, moved to the earliest deadline pending when it fires.
    let watch = tokio::time::sleep(watch_interval(request_timeout_ms));
    tokio::pin!(watch);
    let why = loop {
        let frame = match proto::split_frame(&mut buf, max_frame_bytes) {
            Ok(Some(f)) => f,
            Ok(None) => {
                if buf.capacity() - buf.len() < 16 << 10 {
                    buf.reserve(64 << 10);
                }
                tokio::select! {
                    biased;
                    // First, so that a stream of other answers cannot put it off.
                    () = &mut watch => {
                        let Some(c) = conn.upgrade() else { return };
                        match c.watch(Instant::now()) {
                            Some(next) => {
                                watch.as_mut().reset(next);
                                continue;
                            }
                            // Killed: every waiter has its error.
                            None => return,
                        }
                    }
                    r = rd.read_buf(&mut buf) => match r {
                        Ok(0) => break "the broker closed the connection".to_string(),
                        Ok(_) => continue,
                        Err(e) => break format!("read failed: {e}"),
                    },
                    // Killed (every waiter has its error) or dropped.
                    _ = &mut stop => return,
                }
            }
            Err(e) => break format!("bad frame from the broker: {e}"),
        };
        let Some(c) = conn.upgrade() else { return };
        let entry = lock(&c.state)
            .pending
            .as_mut()
            .and_then(|p| p.remove(&frame.request_id));
        match entry {
            // The entry's in-flight slot is released as it drops, after the answer.
            Some(p) => {
                let req_op = p.op;
                let r = Response::decode(req_op, frame.opcode, frame.body)
                    .map_err(|e| Error::Protocol(e.to_string()));
                if let Some(why) = p.waiter.answer(req_op, r) {
                    break why;
                }
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
            // Not expected: entries are only dropped by a kill, which stops this loop.
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
    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        Client::publish_each(self, topic, messages).await
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Confirm> {
        Client::publish(self, topic, message).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Confirm>> {
        crate::engine::validate_batch(&messages)?;
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

    /// Long-polls like [`crate::Engine`]'s fetch. Dropping the future before it returns
    /// does not recall the fetch: the broker may still lease messages to it, and with no
    /// one to receive them they stay invisible until their lease ends (the broker cannot
    /// know the caller is gone). Prefer a shorter `wait_ms` to cancelling.
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
        if receipts.len() > ACK_RECEIPTS_MAX {
            return Err(Error::Invalid(format!(
                "at most {ACK_RECEIPTS_MAX} receipts per ack, not {}",
                receipts.len()
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::ClientConfig;

    /// The reconnect waits are the schedule the client had before it used `Backoff`: the
    /// initial delay (at least 1 ms), doubled after each attempt, capped at the maximum.
    #[test]
    fn reconnect_waits_double_from_the_initial_delay_up_to_the_cap() {
        for (initial, max) in [(20, 2_000), (5, 20), (100, 200), (0, 0), (0, 7), (3, 3)] {
            let config = ClientConfig {
                backoff_initial_ms: initial,
                backoff_max_ms: max,
                ..ClientConfig::new("127.0.0.1:1")
            };
            let mut expected = Vec::new();
            let mut wait = initial.max(1);
            for _ in 0..12 {
                expected.push(wait);
                wait = (wait * 2).min(max.max(1));
            }
            let mut backoff = config.reconnect_backoff();
            let waits: Vec<u64> = (0..12)
                .map(|_| backoff.next_delay().as_millis() as u64)
                .collect();
            assert_eq!(waits, expected, "initial {initial} ms, max {max} ms");
        }
    }
}
