//! The broker over real TCP on 127.0.0.1: every [`Queue`] operation through the [`Client`],
//! errors keeping their kind across the wire, pipelining on one connection, a publish retried
//! after a lost confirm, malformed and random input on raw sockets, the connection and idle
//! limits, and graceful shutdown. (The queue semantics the broker shares with every
//! backend, nack delays, delayed messages, lease expiry and dead letters among them, are
//! the conformance suite's, which runs them through a broker too.)
//!
//! Each test starts its own broker ([`spawn_broker`]) on port 0 over an engine in a fresh
//! temporary directory, with the real clock. Nothing sleeps in place of synchronisation:
//! tests wait on long-poll fetches (`wait_ms`) or poll a condition in a loop with a deadline
//! ([`wait_for`]). Time-based behaviour (delays, leases, idle timeout) uses short real
//! durations, a few hundred ms at most.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use queue::proto::{self, RawFrame, Request, Response, WireError, code, op};
use queue::server::{BrokerMetrics, ReplyBudget};
use queue::{
    Client, ClientConfig, Config, Due, Engine, Error, FetchOptions, Message, Queue, Receipt,
    Secret, Server, ServerConfig, StartAt,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Longest any single wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// The engine's clock is the wall clock in whole ms; the tests measure with `Instant`. A due
/// time computed from a truncated wall-clock reading can fall up to 1 ms before the exact
/// one, so "not before the delay" is checked with this much slack.
const CLOCK_SLACK_MS: u64 = 2;
/// Seed of the random-frame test; set it to replay a failure.
const FUZZ_SEED_ENV: &str = "QUEUE_BROKER_FUZZ_SEED";
/// Iterations (one connection each) of the random-frame test.
const FUZZ_ITERATIONS: u32 = 200;

// ---- the broker under test ----

/// A broker serving an engine in a temporary directory, on 127.0.0.1 port 0.
struct Broker {
    /// `host:port` to connect to.
    addr: String,
    engine: Arc<Engine>,
    /// The engine's configuration, to reopen the directory with.
    config: Config,
    metrics: Arc<BrokerMetrics>,
    /// The broker-wide reply budget and its accounting.
    replies: Arc<ReplyBudget>,
    /// Sending (or dropping) this completes the server's shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// Engine settings for broker tests: the real clock, fsync before confirm (the default),
/// three attempts before dead-lettering, small segments.
fn engine_config() -> Config {
    Config {
        max_attempts: 3,
        segment_bytes_max: 1 << 20,
        maintenance_interval_ms: Some(20),
        ..Config::default()
    }
}

/// Opens an engine in a fresh temporary directory, binds 127.0.0.1:0 and runs
/// `Server::run(listener, shutdown)` in a task.
async fn spawn_broker(config: Config, server_config: ServerConfig) -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), config.clone()).expect("open engine"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = Server::new(engine.clone(), server_config);
    let metrics = server.metrics();
    let replies = server.reply_budget();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        server
            .run(listener, async {
                // A dropped sender (the test ended) stops the broker too.
                let _ = stop.await;
            })
            .await;
    });
    Broker {
        addr,
        engine,
        config,
        metrics,
        replies,
        shutdown: Some(shutdown),
        server,
        dir,
    }
}

impl Broker {
    /// Completes the server's shutdown future.
    fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `Server::run` to return.
    async fn join(&mut self) {
        tokio::time::timeout(DEADLINE, &mut self.server)
            .await
            .expect("the server stops in time")
            .expect("the server task did not panic");
    }

    fn accepted(&self) -> u64 {
        self.metrics.connections_accepted.load(Ordering::Relaxed)
    }

    fn open_connections(&self) -> u64 {
        self.metrics.connections_open.load(Ordering::Relaxed)
    }

    fn requests(&self, opcode: u8) -> u64 {
        self.metrics.requests[usize::from(opcode & 0x3f)].load(Ordering::Relaxed)
    }
}

/// Client settings for tests: `connections` connections, quick to give up reconnecting.
fn client_config(addr: &str, connections: usize) -> ClientConfig {
    ClientConfig {
        connections,
        connect_attempts: 2,
        connect_timeout_ms: 2_000,
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        ..ClientConfig::new(addr)
    }
}

async fn connect(addr: &str, connections: usize) -> Client {
    Client::connect(client_config(addr, connections))
        .await
        .expect("connect")
}

/// Polls `cond` until it holds; fails the test after [`DEADLINE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn opts(max_messages: usize, lease_ms: u64, wait_ms: u64) -> FetchOptions {
    FetchOptions {
        max_messages,
        lease_ms: Some(lease_ms),
        wait_ms,
    }
}

// ---- 1. every operation through the client ----

/// Every operation's answers through the broker are checked by the conformance suite
/// (`conformance::broker::*`, a client with one connection); here only what the wire adds:
/// the client sees the engine's own figures and records, all over one connection.
#[tokio::test]
async fn the_client_sees_the_engines_own_figures_over_one_connection() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let c = connect(&b.addr, 1).await;
    c.ping().await.expect("ping");
    c.publish("orders", Message::new("plain"))
        .await
        .expect("publish");
    for _ in 0..2 {
        c.publish("orders", Message::new("with id").with_id(0xA11CE))
            .await
            .expect("publish with id");
    }
    let d = c
        .fetch("orders", "g", opts(10, 30_000, 0))
        .await
        .expect("fetch");
    assert_eq!(d.len(), 2);
    c.ack("orders", "g", &[d[0].receipt()]).await.expect("ack");
    let remote = c.stats("orders").await.expect("stats");
    assert_eq!(remote.duplicates, 1);
    assert_eq!(
        remote,
        b.engine.stats("orders").await.expect("engine stats")
    );
    assert_eq!(
        c.peek("orders", 0, 10).await.expect("peek"),
        b.engine.peek("orders", 0, 10).await.expect("engine peek")
    );
    // Everything above went over the one connection.
    assert_eq!(b.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_returns_when_another_client_publishes() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let consumer = connect(&b.addr, 1).await;
    let producer = connect(&b.addr, 1).await;
    consumer
        .create_group("events", "g", StartAt::Earliest)
        .await
        .expect("group");
    let fetches_before = b.requests(op::FETCH);

    let started = Instant::now();
    let poll =
        tokio::spawn(async move { consumer.fetch("events", "g", opts(10, 30_000, 5_000)).await });
    // The broker has read the fetch and nothing is there: it is waiting.
    wait_for("the fetch to reach the broker", || {
        b.requests(op::FETCH) > fetches_before
    })
    .await;
    assert!(
        !poll.is_finished(),
        "an empty fetch with wait_ms returned at once"
    );

    producer
        .publish("events", Message::new("wake up"))
        .await
        .expect("publish");
    let got = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("fetch returns")
        .expect("task")
        .expect("fetch");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"wake up");
    // It returned because of the publish, well before its 5 s wait ran out.
    assert!(
        started.elapsed() < Duration::from_millis(4_000),
        "fetch took {:?}",
        started.elapsed()
    );
}

// ---- 2. errors keep their kind ----

#[tokio::test]
async fn errors_keep_their_kind_over_the_wire() {
    let small = Config {
        backlog_messages_max: 3,
        ..engine_config()
    };
    let b = spawn_broker(small, ServerConfig::default()).await;
    let c = connect(&b.addr, 1).await;

    let r = c.stats("never-made").await;
    assert!(
        matches!(&r, Err(Error::NoSuchTopic(t)) if t == "never-made"),
        "{r:?}"
    );
    let r = c.publish("bad name!", Message::new("x")).await;
    assert!(
        matches!(&r, Err(Error::Invalid(m)) if m.contains("bad name!")),
        "{r:?}"
    );

    c.publish("orders", Message::new("x"))
        .await
        .expect("publish");
    let r = c.replay_dead_letter("orders", 42).await;
    assert!(
        matches!(&r, Err(Error::NoSuchDeadLetter { topic, offset: 42 }) if topic == "orders"),
        "{r:?}"
    );
    let r = c.discard_dead_letter("orders", 42).await;
    assert!(
        matches!(r, Err(Error::NoSuchDeadLetter { offset: 42, .. })),
        "{r:?}"
    );

    // Backlog limit of 3 unresolved messages.
    c.publish("orders", Message::new("y"))
        .await
        .expect("publish");
    c.publish("orders", Message::new("z"))
        .await
        .expect("publish");
    let r = c.publish("orders", Message::new("one too many")).await;
    assert!(
        matches!(&r, Err(Error::Full { topic, what: "messages", limit: 3 }) if topic == "orders"),
        "{r:?}"
    );

    // Queue errors are answers, not protocol errors: the connection is still the first one.
    c.ping().await.expect("ping");
    assert_eq!(b.accepted(), 1);
    assert_eq!(b.metrics.protocol_errors.load(Ordering::Relaxed), 0);
    assert_eq!(b.metrics.request_errors.load(Ordering::Relaxed), 5);
}

// ---- 3. pipelining ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_on_one_connection_are_matched_to_their_callers() {
    const N: u32 = 2_000;
    const ID_BASE: u128 = 0x5EED_0000;
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let c = Arc::new(connect(&b.addr, 1).await);

    let mut tasks = JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        tasks.spawn(async move {
            let m = Message::new(i.to_le_bytes().to_vec()).with_id(ID_BASE + u128::from(i));
            (i, c.publish("pipe", m).await)
        });
    }
    let mut confirms = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.expect("task");
        let confirm = r.unwrap_or_else(|e| panic!("publish {i}: {e}"));
        assert!(!confirm.duplicate, "publish {i} confirmed as a duplicate");
        confirms.insert(i, confirm.offset);
    }
    assert_eq!(confirms.len(), N as usize);
    let distinct: HashSet<u64> = confirms.values().copied().collect();
    assert_eq!(distinct.len(), N as usize, "two publishes got one offset");
    assert_eq!(distinct, (0..u64::from(N)).collect::<HashSet<_>>());

    // Each caller got its own confirm: the message at its offset is the one it sent.
    let mut stored = Vec::new();
    while stored.len() < N as usize {
        let page = c
            .peek("pipe", stored.len() as u64, 1_000)
            .await
            .expect("peek");
        assert!(!page.is_empty(), "peek stopped at {}", stored.len());
        stored.extend(page);
    }
    for (i, offset) in &confirms {
        let p = &stored[*offset as usize];
        assert_eq!(p.offset, *offset);
        assert_eq!(p.id, Some(ID_BASE + u128::from(*i)), "offset {offset}");
        assert_eq!(p.payload.as_ref(), i.to_le_bytes());
    }
    assert_eq!(b.accepted(), 1, "one connection carried every request");
}

// ---- 4. a publish retried after a lost confirm ----

/// A TCP proxy between a client and the broker. It forwards bytes both ways, can be told to
/// swallow what the broker sends (so a confirm is lost on the way back), and to cut every
/// connection it carries.
struct Proxy {
    addr: String,
    swallow: Arc<AtomicBool>,
    swallowed_bytes: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn spawn(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let swallow = Arc::new(AtomicBool::new(false));
        let swallowed_bytes = Arc::new(AtomicU64::new(0));
        let (cut, cut_rx) = watch::channel(0u64);
        let (sw, sb) = (swallow.clone(), swallowed_bytes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let mut cut_rx = cut_rx.clone();
                // Only cuts ordered after this connection began apply to it.
                cut_rx.borrow_and_update();
                let (sw, sb) = (sw.clone(), sb.clone());
                tokio::spawn(async move {
                    let (mut down_rd, mut down_wr) = down.into_split();
                    let (mut up_rd, mut up_wr) = up.into_split();
                    let to_broker = tokio::io::copy(&mut down_rd, &mut up_wr);
                    let to_client = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match up_rd.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if sw.load(Ordering::SeqCst) {
                                sb.fetch_add(n as u64, Ordering::SeqCst);
                            } else if down_wr.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = to_broker => {}
                        _ = to_client => {}
                        _ = cut_rx.changed() => {}
                    }
                    // Returning drops all four halves: both connections close.
                });
            }
        });
        Proxy {
            addr,
            swallow,
            swallowed_bytes,
            cut,
        }
    }

    /// Closes every connection open through the proxy now.
    fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

/// The claim of `client.rs` and `Error::Connection`: a publish whose connection is lost may
/// or may not have been stored, and retrying it with the same message id is harmless. Here
/// the broker stores the message and sends its confirm, the proxy swallows the confirm and
/// then cuts the connection, so the caller sees `Error::Connection` although the message is
/// stored. The retry (the client reconnects through the proxy) is confirmed as a duplicate
/// at the first copy's offset, and the topic holds exactly one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retried_with_the_same_id_after_a_lost_confirm_is_stored_once() {
    const ID: u128 = 0x0DDC_0FFE_E000_0000_0000_0000_0000_0042;
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let proxy = Proxy::spawn(b.addr.clone()).await;
    let c = Arc::new(connect(&proxy.addr, 1).await);
    // An earlier message, so that the one under test does not sit at offset 0.
    c.publish("orders", Message::new("earlier"))
        .await
        .expect("publish");

    // From now on nothing the broker sends reaches the client.
    proxy.swallow.store(true, Ordering::SeqCst);
    let publisher = c.clone();
    let lost = tokio::spawn(async move {
        publisher
            .publish("orders", Message::new("pay order 42").with_id(ID))
            .await
    });
    // The broker confirms only once the message is durable, and the confirm is the only
    // frame in flight: once the proxy has swallowed bytes, the message is stored and its
    // confirm is lost.
    wait_for("the broker to send the confirm", || {
        proxy.swallowed_bytes.load(Ordering::SeqCst) > 0
    })
    .await;
    let stored = b.engine.peek("orders", 0, 10).await.expect("peek");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].id, Some(ID));
    assert!(
        !lost.is_finished(),
        "the client got an answer it should not have"
    );

    // The connection drops before the confirm arrives.
    proxy.cut_all();
    let r = tokio::time::timeout(DEADLINE, lost)
        .await
        .expect("the lost publish returns")
        .expect("task");
    assert!(matches!(r, Err(Error::Connection(_))), "{r:?}");

    // The retry, with the same id, on the same client: it reconnects, and the broker's
    // de-duplication answers with the first copy's offset.
    proxy.swallow.store(false, Ordering::SeqCst);
    let retry = c
        .publish("orders", Message::new("pay order 42").with_id(ID))
        .await
        .expect("retry");
    assert!(retry.duplicate, "the retry was stored again: {retry:?}");
    assert_eq!(retry.offset, stored[1].offset);

    // Exactly one copy.
    let stats = c.stats("orders").await.expect("stats");
    assert_eq!(stats.next_offset, 2, "{stats:?}");
    assert_eq!(stats.published, 2);
    assert_eq!(stats.duplicates, 1);
    let all = c.peek("orders", 0, 100).await.expect("peek");
    assert_eq!(all.iter().filter(|p| p.id == Some(ID)).count(), 1);
    assert_eq!(b.accepted(), 2, "the client reconnected once");
}

// ---- 5. malformed input ----

/// A hand-driven connection speaking the protocol byte by byte.
struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// What the broker sent next.
#[derive(Debug)]
enum Next {
    Frame(RawFrame),
    /// It closed the connection cleanly (a read returned 0).
    Eof,
    /// It closed the connection with a reset (it had unread bytes of ours).
    Reset,
}

impl RawConn {
    async fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("raw connect");
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    async fn send_request(&mut self, id: u32, request: &Request) {
        let mut out = BytesMut::new();
        request.encode(id, &mut out);
        self.send(&out).await;
    }

    /// Says hello and checks the answer.
    async fn hello(&mut self) {
        self.hello_speaking(proto::VERSION).await;
    }

    /// Says hello speaking only `version`, and checks the broker agrees on it.
    async fn hello_speaking(&mut self, version: u16) {
        let hello = Request::Hello {
            min_version: version,
            max_version: version,
            client: "raw-test".into(),
        };
        self.send_request(0, &hello).await;
        let f = self.frame().await;
        let r = Response::decode(op::HELLO, f.opcode, f.body).expect("hello response");
        assert!(
            matches!(r, Response::Hello { version: v, .. } if v == version),
            "{r:?}"
        );
    }

    async fn next(&mut self) -> Next {
        loop {
            match proto::split_frame(&mut self.buf, proto::FRAME_BYTES_MAX) {
                Ok(Some(f)) => return Next::Frame(f),
                Ok(None) => {}
                Err(e) => panic!("the broker sent a bad frame: {e}"),
            }
            let read = tokio::time::timeout(DEADLINE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the broker answers or closes in time");
            match read {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "closed inside a frame: {:?}", self.buf);
                    return Next::Eof;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Next::Reset,
                Err(e) => panic!("raw read: {e}"),
            }
        }
    }

    async fn frame(&mut self) -> RawFrame {
        match self.next().await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads an error frame; returns its request id and contents.
    async fn error(&mut self) -> (u32, WireError) {
        let f = self.frame().await;
        let id = f.request_id;
        match Response::decode(op::PING, f.opcode, f.body) {
            Ok(Response::Error(w)) => (id, w),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// The broker closed the connection cleanly: a read returns 0.
    async fn closed(&mut self) {
        let n = self.next().await;
        assert!(matches!(n, Next::Eof), "expected a clean close, got {n:?}");
    }
}

fn frame_bytes(opcode: u8, id: u32, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let at = proto::begin_frame(&mut out, opcode, id);
    out.put_slice(body);
    proto::end_frame(&mut out, at);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_frame_and_a_close_and_others_never_notice() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let bystander = connect(&b.addr, 1).await;
    bystander
        .publish("steady", Message::new("before"))
        .await
        .expect("publish");

    // A hand-made request works: the encoding below is the protocol's.
    let mut ok = RawConn::connect(&b.addr).await;
    ok.hello().await;
    ok.send_request(3, &Request::Ping).await;
    let f = ok.frame().await;
    assert_eq!(f.request_id, 3);
    assert!(matches!(
        Response::decode(op::PING, f.opcode, f.body),
        Ok(Response::Done)
    ));

    // Random bytes as the first frame: a protocol error (which one depends on the bytes).
    let mut junk = [0u8; 20];
    StdRng::seed_from_u64(0x5EED).fill(&mut junk[..]);
    let mut conn = RawConn::connect(&b.addr).await;
    conn.send(&junk).await;
    let (_, e) = conn.error().await;
    assert!(e.code >= code::BAD_FRAME, "{e:?}");
    conn.closed().await;

    // A well-formed request that is not a hello, first.
    let mut conn = RawConn::connect(&b.addr).await;
    conn.send_request(1, &Request::Ping).await;
    let (id, e) = conn.error().await;
    assert_eq!((id, e.code), (1, code::BAD_HANDSHAKE), "{e:?}");
    conn.closed().await;

    // A hello, then a frame cut short, then EOF: the broker closes without an answer.
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    let mut partial = BytesMut::new();
    partial.put_u32_le(100);
    partial.put_u8(op::PUBLISH);
    partial.put_u32_le(5);
    partial.put_slice(b"only ten b");
    conn.send(&partial).await;
    conn.stream.shutdown().await.expect("shutdown write");
    conn.closed().await;

    // A huge length prefix is refused before any of the body is awaited.
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    conn.send(&u32::MAX.to_le_bytes()).await;
    let (id, e) = conn.error().await;
    assert_eq!((id, e.code), (0, code::FRAME_TOO_LARGE), "{e:?}");
    conn.closed().await;

    // A publish whose body is garbage: its topic length runs past the body.
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    conn.send(&frame_bytes(op::PUBLISH, 9, b"\xff\xffgarbage"))
        .await;
    let (id, e) = conn.error().await;
    assert_eq!((id, e.code), (9, code::BAD_FRAME), "{e:?}");
    conn.closed().await;

    // An opcode nobody defined.
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    conn.send(&frame_bytes(0x7E, 11, b"")).await;
    let (id, e) = conn.error().await;
    assert_eq!((id, e.code), (11, code::UNKNOWN_OPCODE), "{e:?}");
    conn.closed().await;

    assert_eq!(b.metrics.protocol_errors.load(Ordering::Relaxed), 5);
    // The well-behaved raw connection is still served...
    ok.send_request(4, &Request::Topics).await;
    assert_eq!(ok.frame().await.opcode, op::TOPICS | proto::RESPONSE_BIT);
    // ... and so is the client that was connected all along.
    bystander
        .publish("steady", Message::new("after"))
        .await
        .expect("publish after");
    let got = bystander
        .fetch("steady", "g", opts(10, 30_000, 0))
        .await
        .expect("fetch");
    let payloads: Vec<_> = got.iter().map(|d| d.payload.to_vec()).collect();
    assert_eq!(payloads, vec![b"before".to_vec(), b"after".to_vec()]);
    drop(ok);
    wait_for("closed connections to be released", || {
        b.open_connections() == 1
    })
    .await;
}

/// Publishes pipelined ahead of a frame that cannot be decoded were appended before the
/// protocol error: they are answered (after their fsync) before the broker closes, not
/// dropped with the connection, so their callers know they are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_ahead_of_a_protocol_error_are_answered_before_the_close() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    // One write: three publishes in one frame, then a publish whose body is garbage.
    let messages = (0..3u8).map(|i| Message::new(vec![i])).collect();
    let mut bytes = each_frame(5, "ahead", messages);
    bytes.extend_from_slice(&frame_bytes(op::PUBLISH, 9, b"\xff\xffgarbage"));
    conn.send(&bytes).await;
    let mut each = None;
    let mut error = None;
    while each.is_none() || error.is_none() {
        let f = conn.frame().await;
        match f.request_id {
            5 => each = Some(Response::decode(op::PUBLISH_EACH, f.opcode, f.body)),
            9 => error = Some(Response::decode(op::PING, f.opcode, f.body)),
            other => panic!("an answer to request {other}"),
        }
    }
    let Some(Ok(Response::Each(results))) = each else {
        panic!("the publishes' answer: {each:?}");
    };
    let offsets: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().expect("confirmed").offset)
        .collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(
        matches!(&error, Some(Ok(Response::Error(e))) if e.code == code::BAD_FRAME),
        "{error:?}"
    );
    conn.closed().await;
    let stored = b.engine.peek("ahead", 0, 10).await.expect("peek");
    assert_eq!(stored.len(), 3);
}

/// Every request kind, as the seed of a mutated frame. No fetch: a mutated fetch could be a
/// legal long poll, and this test wants every connection to end promptly.
fn fuzz_template(rng: &mut StdRng) -> Request {
    let topic = "fz".to_string();
    let group = "g".to_string();
    let receipt = Receipt {
        offset: rng.random_range(0..8),
        attempt: rng.random_range(0..3),
    };
    let message = |rng: &mut StdRng| {
        let mut m = Message::new(vec![rng.random::<u8>(); rng.random_range(0..16)]);
        if rng.random_bool(0.5) {
            m = m.with_id(rng.random());
        }
        if rng.random_bool(0.3) {
            m = m.with_header("h", vec![1, 2, 3]);
        }
        if rng.random_bool(0.3) {
            m = m.with_due(Due::After(rng.random_range(0..1_000)));
        }
        m
    };
    match rng.random_range(0..14) {
        0 => Request::Ping,
        1 => Request::Topics,
        2 => Request::Publish {
            topic,
            message: message(rng),
        },
        3 => Request::PublishBatch {
            topic,
            messages: (0..rng.random_range(1..4)).map(|_| message(rng)).collect(),
        },
        4 => Request::CreateGroup {
            topic,
            group,
            start: StartAt::Earliest,
        },
        5 => Request::Ack {
            topic,
            group,
            receipts: vec![receipt; rng.random_range(0..3)],
        },
        6 => Request::Nack {
            topic,
            group,
            receipt,
            delay_ms: rng.random_range(0..100),
            reason: "fuzz".into(),
        },
        7 => Request::Reject {
            topic,
            group,
            receipt,
            reason: "fuzz".into(),
        },
        8 => Request::DeadLetters {
            topic,
            from: 0,
            limit: 10,
        },
        9 => Request::Replay {
            topic,
            dead_offset: rng.random_range(0..4),
        },
        10 => Request::Discard {
            topic,
            dead_offset: rng.random_range(0..4),
        },
        11 => Request::Stats { topic },
        12 => Request::Peek {
            topic,
            from: 0,
            limit: 10,
        },
        _ => Request::Hello {
            min_version: proto::VERSION,
            max_version: proto::VERSION,
            client: "fuzz".into(),
        },
    }
}

/// One random frame: raw junk, a well-sized frame with a random body, or a real request
/// mutated (bytes flipped, cut short, extended, or its length prefix replaced).
fn fuzz_frame(rng: &mut StdRng, id: u32) -> BytesMut {
    let mut out = match rng.random_range(0..4) {
        0 => {
            let mut junk = vec![0u8; rng.random_range(1..48)];
            rng.fill(&mut junk[..]);
            BytesMut::from(&junk[..])
        }
        1 => {
            let mut body = vec![0u8; rng.random_range(0..48)];
            rng.fill(&mut body[..]);
            frame_bytes(rng.random(), id, &body)
        }
        _ => {
            let mut out = BytesMut::new();
            fuzz_template(rng).encode(id, &mut out);
            match rng.random_range(0..5) {
                0 => {}
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(4..out.len());
                        out[at] ^= rng.random_range(1..=255u8);
                    }
                }
                2 => {
                    let cut = rng.random_range(9..=out.len());
                    out.truncate(cut);
                    let len = (cut - 4) as u32;
                    out[..4].copy_from_slice(&len.to_le_bytes());
                }
                3 => {
                    for _ in 0..rng.random_range(1..8) {
                        out.put_u8(rng.random());
                    }
                    let len = (out.len() - 4) as u32;
                    out[..4].copy_from_slice(&len.to_le_bytes());
                }
                _ => {
                    let len: u32 = rng.random();
                    out[..4].copy_from_slice(&len.to_le_bytes());
                }
            }
            out
        }
    };
    // No fetches (see `fuzz_template`).
    if out.len() > 4 && out[4] == op::FETCH {
        out[4] = op::PEEK;
    }
    out
}

/// Random frames, one connection per iteration (with or without a hello first). Whatever
/// arrives, the broker answers each frame it reads with a valid response or an error frame,
/// closes the connection, and keeps serving everyone else. The seed is printed; set
/// `QUEUE_BROKER_FUZZ_SEED` to replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_get_answers_or_error_frames_and_never_kill_the_broker() {
    let seed = std::env::var(FUZZ_SEED_ENV)
        .ok()
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{FUZZ_SEED_ENV}={v:?} is not a number: {e}"))
        })
        .unwrap_or_else(rand::random);
    println!("broker fuzz: seed {seed} ({FUZZ_SEED_ENV}), {FUZZ_ITERATIONS} iterations");
    let mut rng = StdRng::seed_from_u64(seed);
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let probe = connect(&b.addr, 1).await;
    let (mut answers, mut errors, mut resets) = (0u64, 0u64, 0u64);

    for iteration in 0..FUZZ_ITERATIONS {
        let context = format!("seed {seed}, iteration {iteration}");
        let mut conn = RawConn::connect(&b.addr).await;
        if rng.random_bool(0.8) {
            conn.hello().await;
        }
        let mut bytes = BytesMut::new();
        for id in 1..=rng.random_range(1..=3u32) {
            bytes.extend_from_slice(&fuzz_frame(&mut rng, id));
        }
        conn.send(&bytes).await;
        // Our side is done; the broker answers what it read and closes.
        conn.stream.shutdown().await.expect("shutdown write");
        loop {
            match conn.next().await {
                Next::Frame(f) if f.opcode == proto::OP_ERROR => {
                    let r = Response::decode(op::PING, f.opcode, f.body);
                    assert!(
                        matches!(r, Ok(Response::Error(_))),
                        "{context}: bad error frame {r:?}"
                    );
                    errors += 1;
                }
                Next::Frame(f) => {
                    let request = f.opcode & !proto::RESPONSE_BIT;
                    assert!(
                        f.opcode & proto::RESPONSE_BIT != 0,
                        "{context}: opcode {:#04x} is not a response",
                        f.opcode
                    );
                    let r = Response::decode(request, f.opcode, f.body);
                    assert!(r.is_ok(), "{context}: undecodable response {r:?}");
                    answers += 1;
                }
                Next::Eof => break,
                Next::Reset => {
                    resets += 1;
                    break;
                }
            }
        }
        if iteration % 50 == 49 {
            probe
                .ping()
                .await
                .unwrap_or_else(|e| panic!("{context}: broker stopped answering: {e}"));
        }
    }
    println!("broker fuzz: {answers} answers, {errors} error frames, {resets} resets");

    // Still alive and correct for a well-behaved client.
    probe
        .publish("probe", Message::new("alive"))
        .await
        .expect("publish after fuzz");
    let got = probe
        .fetch("probe", "g", opts(10, 30_000, 0))
        .await
        .expect("fetch after fuzz");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"alive");
    // No connection leaked.
    wait_for("fuzz connections to be released", || {
        b.open_connections() == 1
    })
    .await;
}

// ---- 6. limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_one_more_with_an_error_frame() {
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut first = RawConn::connect(&b.addr).await;
    first.hello().await;
    let second = connect(&b.addr, 1).await;
    // Both hellos were answered, so both connections hold a slot.

    let mut third = RawConn::connect(&b.addr).await;
    let (id, e) = third.error().await;
    assert_eq!((id, e.code), (0, code::TOO_MANY_CONNECTIONS), "{e:?}");
    third.closed().await;

    let refused = Client::connect(ClientConfig {
        connect_attempts: 1,
        ..client_config(&b.addr, 1)
    })
    .await;
    let err = refused.expect_err("a client beyond the limit cannot connect");
    // Refused before any request: nothing was sent.
    assert!(matches!(err, Error::NotSent(_)), "{err:?}");
    println!("refused client: {err}");
    assert_eq!(b.metrics.connections_rejected.load(Ordering::Relaxed), 2);

    // The connections inside the limit are unaffected.
    second.ping().await.expect("ping");
    // A slot freed is a slot for the next one.
    drop(first);
    wait_for("the slot to be released", || b.open_connections() == 1).await;
    let late = connect(&b.addr, 1).await;
    late.ping().await.expect("ping");
}

/// An idle connection is closed with an `IDLE_TIMEOUT` frame; one with a long poll in flight
/// is not, however long the poll; and a client whose connection was closed for idleness
/// reconnects on its next request. What the client guarantees there: a request made after
/// the client has read the broker's close reconnects transparently; a request that races
/// the close (sent before the client's reader saw it) fails once with `Error::Connection`,
/// like any request on a lost connection, and the next one reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_long_polls_are_not() {
    const IDLE_MS: u64 = 300;
    const POLL_MS: u64 = 1_000;
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            idle_timeout_ms: IDLE_MS,
            ..ServerConfig::default()
        },
    )
    .await;
    let c = Arc::new(connect(&b.addr, 1).await);
    let poller = c.clone();
    let started = Instant::now();
    let poll =
        tokio::spawn(async move { poller.fetch("quiet", "g", opts(10, 30_000, POLL_MS)).await });

    let mut idle = RawConn::connect(&b.addr).await;
    idle.hello().await;
    let hello_at = Instant::now();
    let (id, e) = idle.error().await;
    assert_eq!((id, e.code), (0, code::IDLE_TIMEOUT), "{e:?}");
    idle.closed().await;
    // The broker's timer started a little before our hello answer arrived.
    assert!(
        hello_at.elapsed() >= Duration::from_millis(IDLE_MS - 50),
        "closed after {:?}",
        hello_at.elapsed()
    );

    // The long poll outlives several idle periods and ends normally, empty.
    let got = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("poll returns")
        .expect("task");
    assert!(
        matches!(&got, Ok(d) if d.is_empty()),
        "a long poll's connection was closed: {got:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(POLL_MS - CLOCK_SLACK_MS));

    // Now the client's connection is idle too, and the broker closes it.
    wait_for("the client's connection to be closed for idleness", || {
        b.metrics.idle_closed.load(Ordering::Relaxed) == 2
    })
    .await;
    let first = c.ping().await;
    let raced = match first {
        Ok(()) => false,
        Err(Error::Connection(_) | Error::NotSent(_)) => {
            c.ping().await.expect("the request after a lost connection");
            true
        }
        Err(other) => panic!("unexpected error after the idle close: {other:?}"),
    };
    println!("idle close: the first request after it raced the close: {raced}");
    assert_eq!(b.accepted(), 3, "the client reconnected once");
}

// ---- 7. graceful shutdown ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_in_flight_and_keeps_every_confirm() {
    const PUBLISHERS: u64 = 8;
    let mut b = spawn_broker(
        engine_config(),
        ServerConfig {
            shutdown_grace_ms: 5_000,
            ..ServerConfig::default()
        },
    )
    .await;
    let c = Arc::new(
        Client::connect(ClientConfig {
            connect_attempts: 1,
            ..client_config(&b.addr, 2)
        })
        .await
        .expect("connect"),
    );
    let poller = connect(&b.addr, 1).await;
    poller
        .create_group("idle", "g", StartAt::Earliest)
        .await
        .expect("group");
    let fetches_before = b.requests(op::FETCH);
    let poll =
        tokio::spawn(async move { poller.fetch("idle", "g", opts(10, 30_000, 30_000)).await });

    // Publishers publish until their first error; every publish ends confirmed or failed.
    let confirmed = Arc::new(AtomicU64::new(0));
    let mut publishers = JoinSet::new();
    for p in 0..PUBLISHERS {
        let (c, confirmed) = (c.clone(), confirmed.clone());
        publishers.spawn(async move {
            let mut confirms = Vec::new();
            for n in 0..100_000u64 {
                let id = u128::from(p << 32 | n);
                match c
                    .publish("load", Message::new(id.to_le_bytes().to_vec()).with_id(id))
                    .await
                {
                    Ok(confirm) => {
                        confirms.push((id, confirm));
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return (confirms, Some(e)),
                }
            }
            (confirms, None)
        });
    }
    wait_for("publishes to flow and the long poll to arrive", || {
        confirmed.load(Ordering::Relaxed) >= 100 && b.requests(op::FETCH) > fetches_before
    })
    .await;

    let stop_at = Instant::now();
    b.trigger_shutdown();
    // The long poll is cut short with an empty answer, not a lost connection.
    let polled = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("poll returns")
        .expect("task");
    assert!(matches!(&polled, Ok(d) if d.is_empty()), "{polled:?}");
    assert!(
        stop_at.elapsed() < Duration::from_secs(2),
        "the long poll took {:?} to end",
        stop_at.elapsed()
    );
    b.join().await;

    let mut confirms = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tokio::time::timeout(DEADLINE, publishers.join_next())
        .await
        .expect("publishers end after shutdown")
    {
        let (mine, failure) = joined.expect("publisher task");
        confirms.extend(mine);
        failures.push(failure.expect("publishing stopped with an error"));
    }
    for f in &failures {
        assert!(
            matches!(f, Error::Connection(_) | Error::NotSent(_) | Error::Closed),
            "publish failed with {f:?}"
        );
    }
    println!(
        "shutdown: {} confirmed, failures {:?}",
        confirms.len(),
        failures.iter().map(ToString::to_string).collect::<Vec<_>>()
    );

    // Close and reopen the engine: every confirmed message is there, at its offset.
    wait_for("the broker to release the engine", || {
        Arc::strong_count(&b.engine) == 1
    })
    .await;
    b.engine.close().expect("close");
    let dir = b.dir.path().to_path_buf();
    let config = b.config.clone();
    let Broker {
        engine, dir: _keep, ..
    } = b;
    drop(engine);
    let reopened = Engine::open(&dir, config).expect("reopen");
    let mut stored = BTreeMap::new();
    loop {
        let page = reopened
            .peek("load", stored.len() as u64, 1_000)
            .await
            .expect("peek");
        if page.is_empty() {
            break;
        }
        for p in page {
            stored.insert(p.offset, p.id);
        }
    }
    for (id, confirm) in &confirms {
        assert_eq!(
            stored.get(&confirm.offset),
            Some(&Some(*id)),
            "confirmed message {id:#x} at offset {} lost",
            confirm.offset
        );
    }
    assert!(stored.len() >= confirms.len());
    reopened.close().expect("close");
}

/// `Client::publish_each`: independent publishes written together on one connection; one
/// bad message is refused on its own, the others are stored in order, ids de-duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_each_confirms_every_message_on_its_own() {
    let broker = spawn_broker(engine_config(), ServerConfig::default()).await;
    let client = connect(&broker.addr, 1).await;
    let earlier = client
        .publish("t", Message::new(&b"earlier"[..]).with_id(9))
        .await
        .expect("publish");
    let results = client
        .publish_each(
            "t",
            vec![
                Message::new(&b"a"[..]).with_id(1),
                Message::new(&b"bad"[..]).with_header("h", vec![0u8; 5000]),
                Message::new(&b"again"[..]).with_id(9),
                Message::new(&b"b"[..]),
            ],
        )
        .await
        .expect("publish_each");
    assert_eq!(results.len(), 4);
    let a = results[0].as_ref().expect("a");
    assert!(
        matches!(results[1], Err(Error::Invalid(_))),
        "{:?}",
        results[1]
    );
    let again = results[2].as_ref().expect("repeat");
    assert!(
        again.duplicate && again.offset == earlier.offset,
        "{again:?}"
    );
    let b = results[3].as_ref().expect("b");
    assert_eq!(b.offset, a.offset + 1);
    let stored: Vec<Vec<u8>> = client
        .peek("t", 0, 10)
        .await
        .expect("peek")
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(
        stored,
        vec![b"earlier".to_vec(), b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(broker.accepted(), 1, "one connection, no reconnect");
    assert!(
        client
            .publish_each("t", Vec::new())
            .await
            .expect("empty")
            .is_empty()
    );
}

/// The client keeps to the frame limit the broker announces: a request above it fails on
/// its own (Invalid) and the connection, with the other requests on it, carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_to_the_brokers_announced_frame_limit() {
    let broker = spawn_broker(
        engine_config(),
        ServerConfig {
            max_frame_bytes: 64 << 10,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = connect(&broker.addr, 1).await;
    let big = client
        .publish("t", Message::new(vec![7u8; 100 << 10]))
        .await;
    assert!(matches!(big, Err(Error::Invalid(_))), "{big:?}");
    client
        .publish("t", Message::new(vec![7u8; 1 << 10]))
        .await
        .expect("a small publish on the same connection");
    assert_eq!(broker.accepted(), 1);
    assert_eq!(
        broker.metrics.protocol_errors.load(Ordering::Relaxed),
        0,
        "nothing too large reached the broker"
    );
}

/// A broker that accepts the hello and then never answers: the client gives up after its
/// request timeout with `Error::Connection` instead of waiting forever, closes that
/// connection (a late answer to the abandoned request goes nowhere), and the next request
/// reconnects instead of waiting on the silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_time_out() {
    let mut fake = FakeBroker::spawn(16).await;
    let client = Client::connect(ClientConfig {
        request_timeout_ms: 200,
        ..client_config(&fake.addr, 1)
    })
    .await
    .expect("connect");
    let started = Instant::now();
    let r = client.publish("t", Message::new(&b"x"[..])).await;
    assert!(
        matches!(&r, Err(Error::Connection(m)) if m.contains("no answer")),
        "{r:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    let first = fake.next().await;
    assert_eq!((first.conn, first.frame.opcode), (0, op::PUBLISH));
    // The client closed the silent connection.
    wait_for("the client to close the silent connection", || {
        fake.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    // The abandoned request's late answer goes nowhere.
    let mut late = BytesMut::new();
    Response::Confirm(queue::Confirm {
        offset: 0,
        duplicate: false,
    })
    .encode(op::PUBLISH, first.frame.request_id, &mut late);
    let _ = first.reply.send(FakeReply::Bytes(late));
    // The next request reconnects and is answered on the new connection.
    let ping = tokio::spawn(async move { client.ping().await });
    let second = fake.next().await;
    assert_eq!((second.conn, second.frame.opcode), (1, op::PING));
    let mut pong = BytesMut::new();
    Response::Done.encode(op::PING, second.frame.request_id, &mut pong);
    second.reply.send(FakeReply::Bytes(pong)).expect("send");
    ping.await
        .expect("join")
        .expect("the ping is answered on a new connection");
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 2);
}

/// `Backend::open` picks the embedded engine or the broker from one string; the same code
/// runs against both and sees the same queue behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_switches_between_embedded_and_remote_by_configuration() {
    let broker = spawn_broker(engine_config(), ServerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded_target = dir.path().to_str().expect("utf-8 path").to_string();
    let remote_target = format!("tcp://{}", broker.addr);
    let mut seen = Vec::new();
    for target in [embedded_target.as_str(), remote_target.as_str()] {
        let backend = queue::Backend::open(target, engine_config())
            .await
            .unwrap_or_else(|e| panic!("open {target}: {e}"));
        assert_eq!(
            matches!(backend, queue::Backend::Remote(_)),
            target.starts_with("tcp://")
        );
        let q = backend.queue();
        q.create_group("orders", "w", StartAt::Earliest)
            .await
            .expect("group");
        let first = q
            .publish("orders", Message::new(&b"one"[..]).with_id(5))
            .await
            .expect("publish");
        let again = q
            .publish("orders", Message::new(&b"one"[..]).with_id(5))
            .await
            .expect("publish again");
        let ds = q
            .fetch("orders", "w", opts(10, 10_000, 1000))
            .await
            .expect("fetch");
        let outcomes = q.ack("orders", "w", &[ds[0].receipt()]).await.expect("ack");
        seen.push((first, again.duplicate, ds.len(), outcomes));
        backend.close().expect("close");
    }
    assert_eq!(seen[0], seen[1], "embedded and remote behave alike");
    assert!(seen[0].1, "the repeat is a duplicate");
    assert!(matches!(
        queue::Backend::open("  ", engine_config()).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        queue::Backend::open("tcp://127.0.0.1:1", engine_config()).await,
        Err(Error::NotSent(_))
    ));
}

// ---- 8. the client's own limits, slots, timeouts and reconnects ----

/// What a test tells a [`FakeBroker`] connection to do.
enum FakeReply {
    /// Write these bytes.
    Bytes(BytesMut),
    /// Close the connection.
    Close,
}

/// A frame a [`FakeBroker`] connection received (not the hello, which it answers itself).
struct FakeFrame {
    /// The connection's number, in accept order from 0.
    conn: usize,
    frame: RawFrame,
    /// Writes to (or closes) the connection the frame came on.
    reply: tokio::sync::mpsc::UnboundedSender<FakeReply>,
}

/// A scripted broker: accepts any number of connections, answers each hello (announcing
/// `max_in_flight`), and hands every other frame to the test, which answers as it likes.
struct FakeBroker {
    addr: String,
    frames: tokio::sync::mpsc::UnboundedReceiver<FakeFrame>,
    accepted: Arc<AtomicU64>,
    /// Connections the client closed (a read returned 0 or failed).
    closed: Arc<AtomicU64>,
    acceptor: JoinHandle<()>,
}

impl FakeBroker {
    /// A fake speaking protocol version 2, so that the client sends one `PUBLISH` frame per
    /// publish (what the tests written for version 2 script).
    async fn spawn(max_in_flight: u32) -> FakeBroker {
        FakeBroker::spawn_speaking(max_in_flight, proto::VERSION_AUTH).await
    }

    /// A fake that agrees on `version` in every hello.
    async fn spawn_speaking(max_in_flight: u32, version: u16) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (frames_tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let (acc, cl) = (accepted.clone(), closed.clone());
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let conn = acc.fetch_add(1, Ordering::SeqCst) as usize;
                let (frames_tx, cl) = (frames_tx.clone(), cl.clone());
                tokio::spawn(async move {
                    let (reply, mut replies) = tokio::sync::mpsc::unbounded_channel();
                    let mut buf = BytesMut::new();
                    loop {
                        tokio::select! {
                            r = s.read_buf(&mut buf) => {
                                if !matches!(r, Ok(n) if n > 0) {
                                    cl.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                while let Some(f) =
                                    proto::split_frame(&mut buf, proto::FRAME_BYTES_MAX).expect("frame")
                                {
                                    if f.opcode == op::HELLO {
                                        let mut out = BytesMut::new();
                                        Response::Hello {
                                            version,
                                            max_frame_bytes: proto::FRAME_BYTES_MAX as u32,
                                            max_in_flight,
                                            server: "fake".into(),
                                            challenge: None,
                                        }
                                        .encode(op::HELLO, f.request_id, &mut out);
                                        if s.write_all(&out).await.is_err() {
                                            return;
                                        }
                                    } else {
                                        let _ = frames_tx.send(FakeFrame {
                                            conn,
                                            frame: f,
                                            reply: reply.clone(),
                                        });
                                    }
                                }
                            }
                            Some(r) = replies.recv() => match r {
                                FakeReply::Bytes(out) => {
                                    if s.write_all(&out).await.is_err() {
                                        return;
                                    }
                                }
                                FakeReply::Close => return,
                            },
                        }
                    }
                });
            }
        });
        FakeBroker {
            addr,
            frames,
            accepted,
            closed,
            acceptor,
        }
    }

    /// The next frame a client sent.
    async fn next(&mut self) -> FakeFrame {
        tokio::time::timeout(DEADLINE, self.frames.recv())
            .await
            .expect("a frame arrives in time")
            .expect("the fake broker runs")
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// A message the broker could not even decode (17 headers), a batch above
/// `BATCH_MESSAGES_MAX` (or empty), an ack above `ACK_RECEIPTS_MAX`: each fails alone with
/// `Invalid` in the client, never reaching the broker, where it would be a protocol error
/// closing the connection under a long poll waiting on it. In `publish_each` the bad
/// message gets its own error and the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_requests_fail_alone_without_costing_the_connection() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let c = Arc::new(connect(&b.addr, 1).await);
    c.create_group("t", "g", StartAt::Earliest)
        .await
        .expect("group");
    let fetches = b.requests(op::FETCH);
    let poller = c.clone();
    let poll = tokio::spawn(async move { poller.fetch("t", "g", opts(10, 30_000, 30_000)).await });
    wait_for("the long poll to reach the broker", || {
        b.requests(op::FETCH) > fetches
    })
    .await;

    let mut headed = Message::new("too many headers");
    for i in 0..=queue::limits::HEADERS_MAX {
        headed = headed.with_header(format!("h{i}"), b"v".to_vec());
    }
    let r = c.publish("t", headed.clone()).await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    let too_many = vec![Message::new("x"); queue::limits::BATCH_MESSAGES_MAX + 1];
    let r = c.publish_batch("t", too_many).await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    let r = c.publish_batch("t", Vec::new()).await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    let r = c
        .publish_batch("t", vec![Message::new("fine"), headed.clone()])
        .await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    let receipts = vec![
        Receipt {
            offset: 0,
            attempt: 1
        };
        queue::limits::ACK_RECEIPTS_MAX + 1
    ];
    let r = c.ack("t", "g", &receipts).await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    let each = c
        .publish_each(
            "t",
            vec![Message::new("first"), headed, Message::new("second")],
        )
        .await
        .expect("publish_each");
    assert_eq!(each.len(), 3);
    assert!(matches!(&each[1], Err(Error::Invalid(_))), "{:?}", each[1]);
    let first = each[0].as_ref().expect("first");
    let second = each[2].as_ref().expect("second");
    assert_eq!((first.offset, second.offset), (0, 1));

    // The long poll on the same connection carried on and got the first message.
    let got = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("the poll returns")
        .expect("task")
        .expect("the long poll survived");
    assert_eq!(got[0].payload.as_ref(), b"first");
    assert_eq!(b.accepted(), 1, "one connection throughout");
    assert_eq!(b.metrics.protocol_errors.load(Ordering::Relaxed), 0);
    assert_eq!(
        b.requests(op::PUBLISH_BATCH) + b.requests(op::ACK),
        0,
        "nothing over the limits was sent"
    );
}

/// A request whose caller gave up keeps its in-flight slot until the broker answers it:
/// with the broker's one slot taken by an abandoned long poll, a new request waits in the
/// client (it is not sent, so it cannot sit unread in the broker's socket and later run
/// for a caller that is gone); once the poll is answered, the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_keep_their_in_flight_slot_until_answered() {
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            max_in_flight: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let c = Arc::new(connect(&b.addr, 1).await);
    let publisher = connect(&b.addr, 1).await;
    c.create_group("t", "g", StartAt::Earliest)
        .await
        .expect("group");
    let fetches = b.requests(op::FETCH);
    let poller = c.clone();
    let poll = tokio::spawn(async move { poller.fetch("t", "g", opts(10, 30_000, 30_000)).await });
    wait_for("the long poll to reach the broker", || {
        b.requests(op::FETCH) > fetches
    })
    .await;
    // The caller goes away; the broker still runs the fetch.
    poll.abort();
    assert!(poll.await.expect_err("aborted").is_cancelled());

    let pings = b.requests(op::PING);
    // Whatever this caller's patience, nothing can answer it while the slot is taken.
    let r = tokio::time::timeout(Duration::from_millis(100), c.ping()).await;
    assert!(
        r.is_err(),
        "answered while the broker's only slot was taken"
    );
    // A publish (on another connection) answers the abandoned poll, freeing the slot.
    publisher
        .publish("t", Message::new("leased to nobody"))
        .await
        .expect("publish");
    tokio::time::timeout(DEADLINE, c.ping())
        .await
        .expect("the slot comes back")
        .expect("ping");
    assert_eq!(
        b.requests(op::PING) - pings,
        1,
        "the abandoned ping was sent although the broker had no slot for it"
    );
    assert_eq!(b.accepted(), 2);
}

/// With the broker gone, callers queued on a pool slot's reconnect do not each run the
/// whole backoff schedule in turn: the first runs it, the others then fail at once with its
/// error. So 20 concurrent pings all fail within about one schedule (the old behaviour took
/// one schedule per caller per slot); and once the broker is back, the client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_broker_fails_queued_callers_fast_instead_of_once_per_caller() {
    const CALLERS: usize = 20;
    let mut b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let config = ClientConfig {
        connect_attempts: 3,
        backoff_initial_ms: 100,
        backoff_max_ms: 200,
        // Two slots: the second never connected, so its callers must reconnect (the first
        // one's callers may instead fail on the closed connection, just as fast).
        ..client_config(&b.addr, 2)
    };
    // The sleeps between attempts; the connects themselves are refused at once.
    let schedule_ms: u64 = (1..config.connect_attempts)
        .map(|i| (config.backoff_initial_ms << (i - 1)).min(config.backoff_max_ms))
        .sum();
    let schedule = Duration::from_millis(schedule_ms);
    let c = Arc::new(Client::connect(config).await.expect("connect"));
    c.ping().await.expect("ping");
    b.trigger_shutdown();
    b.join().await;

    let started = Instant::now();
    let mut pings = JoinSet::new();
    for _ in 0..CALLERS {
        let c = c.clone();
        pings.spawn(async move { c.ping().await });
    }
    let mut errors = Vec::new();
    while let Some(joined) = pings.join_next().await {
        match joined.expect("task") {
            // Never sent (queued behind the failed reconnect), or cut off on the
            // connection that broke: either way each caller learns it at once.
            Err(Error::NotSent(m) | Error::Connection(m)) => errors.push(m),
            other => panic!("a ping to a stopped broker: {other:?}"),
        }
    }
    let took = started.elapsed();
    println!("{CALLERS} pings failed in {took:?} (schedule {schedule:?}): {errors:?}");
    assert!(
        took < 2 * schedule,
        "{CALLERS} pings took {took:?}, one schedule is {schedule:?}"
    );
    assert!(
        errors.iter().any(|m| m.contains("not retrying")),
        "no caller failed fast: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .filter(|m| m.contains("not retrying"))
            .all(|m| m.contains("cannot reach")),
        "a fast failure does not name the last error: {errors:?}"
    );

    // The broker comes back on the same address: the client reconnects once the down time
    // has passed (polled with a deadline; a port taken meanwhile skips this part).
    let Ok(listener) = TcpListener::bind(&b.addr).await else {
        println!("{} was taken meanwhile; recovery not checked", b.addr);
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), engine_config()).expect("engine"));
    let server = Server::new(engine, ServerConfig::default());
    let (_stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    // Both slots reconnect: two pings in a row succeed (pings take the slots in turn; the
    // second slot's own down time may end a moment after the first's).
    let deadline = Instant::now() + DEADLINE;
    let mut in_a_row = 0;
    while in_a_row < 2 {
        match c.ping().await {
            Ok(()) => in_a_row += 1,
            Err(Error::Connection(m) | Error::NotSent(m)) => {
                in_a_row = 0;
                assert!(Instant::now() < deadline, "never reconnected: {m}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// `publish_each` keeps what it got when the connection drops mid-way: the confirms that
/// arrived are returned, and only the unanswered messages fail with `Error::Connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_each_keeps_the_confirms_received_before_the_connection_drops() {
    let mut fake = FakeBroker::spawn(16).await;
    let client = Arc::new(connect(&fake.addr, 1).await);
    let publisher = client.clone();
    let each = tokio::spawn(async move {
        let messages = (0..4u8).map(|i| Message::new(vec![i])).collect();
        publisher.publish_each("t", messages).await
    });
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(fake.next().await);
    }
    let mut out = BytesMut::new();
    for (offset, f) in frames.iter().take(2).enumerate() {
        assert_eq!(f.frame.opcode, op::PUBLISH);
        Response::Confirm(queue::Confirm {
            offset: offset as u64,
            duplicate: false,
        })
        .encode(op::PUBLISH, f.frame.request_id, &mut out);
    }
    frames[0].reply.send(FakeReply::Bytes(out)).expect("answer");
    frames[0].reply.send(FakeReply::Close).expect("close");
    let results = tokio::time::timeout(DEADLINE, each)
        .await
        .expect("publish_each returns")
        .expect("task")
        .expect("something was sent: one result per message");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().expect("confirmed").offset, 0);
    assert_eq!(results[1].as_ref().expect("confirmed").offset, 1);
    for r in &results[2..] {
        assert!(matches!(r, Err(Error::Connection(_))), "{r:?}");
    }
}

/// Likewise when the broker stops answering: after the request timeout the confirms that
/// arrived are kept, the rest fail with `Error::Connection`, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_each_keeps_the_confirms_received_before_a_timeout() {
    const TIMEOUT_MS: u64 = 200;
    let mut fake = FakeBroker::spawn(16).await;
    let client = Arc::new(
        Client::connect(ClientConfig {
            request_timeout_ms: TIMEOUT_MS,
            ..client_config(&fake.addr, 1)
        })
        .await
        .expect("connect"),
    );
    let publisher = client.clone();
    let started = Instant::now();
    let each = tokio::spawn(async move {
        let messages = (0..3u8).map(|i| Message::new(vec![i])).collect();
        publisher.publish_each("t", messages).await
    });
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(fake.next().await);
    }
    let mut out = BytesMut::new();
    Response::Confirm(queue::Confirm {
        offset: 7,
        duplicate: false,
    })
    .encode(op::PUBLISH, frames[0].frame.request_id, &mut out);
    frames[0].reply.send(FakeReply::Bytes(out)).expect("answer");
    let results = tokio::time::timeout(DEADLINE, each)
        .await
        .expect("publish_each returns")
        .expect("task")
        .expect("something was sent: one result per message");
    assert!(started.elapsed() >= Duration::from_millis(TIMEOUT_MS));
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().expect("confirmed").offset, 7);
    for r in &results[1..] {
        assert!(
            matches!(r, Err(Error::Connection(m)) if m.contains("no answer")),
            "{r:?}"
        );
    }
    wait_for("the client to close the silent connection", || {
        fake.closed.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// A client whose `max_frame_bytes` is below what a fetch or peek may return still receives
/// such responses (up to `RESPONSE_BYTES_MAX`) instead of losing its connection on them;
/// what it sends stays within its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_frame_limit_still_receives_large_reads() {
    const LIMIT: usize = 64 << 10;
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let publisher = connect(&b.addr, 1).await;
    let small = Client::connect(ClientConfig {
        max_frame_bytes: LIMIT,
        ..client_config(&b.addr, 1)
    })
    .await
    .expect("connect");
    small
        .create_group("big", "g", StartAt::Earliest)
        .await
        .expect("group");
    let payload = vec![7u8; 512 << 10];
    for _ in 0..2 {
        publisher
            .publish("big", Message::new(payload.clone()))
            .await
            .expect("publish");
    }
    // The broker bounds a fetch's bytes by its message count (16 KiB a message, at least
    // 64 KiB): each fetch here returns at least one of the 512 KiB messages.
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = small
            .fetch("big", "g", opts(10, 30_000, 0))
            .await
            .expect("a fetch larger than max_frame_bytes");
        assert!(
            !more.is_empty(),
            "a fetch returned nothing after {}",
            got.len()
        );
        got.extend(more);
    }
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.payload.as_ref() == payload.as_slice()));
    let peeked = small.peek("big", 0, 10).await.expect("peek");
    assert_eq!(peeked.len(), 2);
    let r = small
        .publish("big", Message::new(vec![0u8; 2 * LIMIT]))
        .await;
    assert!(matches!(&r, Err(Error::Invalid(_))), "{r:?}");
    small.ping().await.expect("ping");
    assert_eq!(b.accepted(), 2, "no reconnect");
    assert_eq!(b.metrics.protocol_errors.load(Ordering::Relaxed), 0);
}

/// The hello has an absolute deadline from the accept: a peer trickling bytes does not
/// keep its connection slot; and before the hello only a small frame is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_deadline_is_absolute_and_pre_hello_frames_are_small() {
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            handshake_timeout_ms: 300,
            ..ServerConfig::default()
        },
    )
    .await;
    let trickle = TcpStream::connect(&b.addr).await.expect("connect");
    let started = Instant::now();
    let (mut rd, mut wr) = trickle.into_split();
    // A hello-sized length prefix, then one byte every 50 ms: never a whole frame. The
    // answer is read while the bytes go on trickling.
    let feeder = tokio::spawn(async move {
        let _ = wr.write_all(&200u32.to_le_bytes()).await;
        for _ in 0..100 {
            if wr.write_all(&[0]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = BytesMut::new();
    let f = loop {
        if let Some(f) = proto::split_frame(&mut buf, proto::FRAME_BYTES_MAX).expect("frame") {
            break f;
        }
        let n = tokio::time::timeout(DEADLINE, rd.read_buf(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed without an error frame");
    };
    feeder.abort();
    let Ok(Response::Error(e)) = Response::decode(op::PING, f.opcode, f.body) else {
        panic!("expected an error frame");
    };
    assert_eq!(e.code, code::BAD_HANDSHAKE, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the trickle kept the connection for {:?}",
        started.elapsed()
    );

    let mut big = RawConn::connect(&b.addr).await;
    big.send(&(proto::FRAME_BYTES_MAX as u32 - 1).to_le_bytes())
        .await;
    let (_, e) = big.error().await;
    assert_eq!(e.code, code::FRAME_TOO_LARGE, "{e:?}");
    // A client that says hello first is served as usual.
    connect(&b.addr, 1).await.ping().await.expect("ping");
}

/// Publishes pipelined on one connection are stored in the order they were sent, across
/// several gathered appends (more than `GATHER_MESSAGES_MAX` at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_stored_in_the_order_sent() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let client = connect(&b.addr, 1).await;
    let n = 3 * queue::server::GATHER_MESSAGES_MAX as u32 / 2 + 7;
    let messages: Vec<Message> = (0..n)
        .map(|i| Message::new(i.to_le_bytes().to_vec()))
        .collect();
    let results = client
        .publish_each("t", messages)
        .await
        .expect("publish_each");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut stored = Vec::new();
    while stored.len() < n as usize {
        let page = client
            .peek("t", stored.len() as u64, 1000)
            .await
            .expect("peek");
        assert!(!page.is_empty());
        stored.extend(
            page.iter()
                .map(|m| u32::from_le_bytes(m.payload[..4].try_into().expect("4 bytes"))),
        );
    }
    assert_eq!(stored, (0..n).collect::<Vec<_>>());
}

/// A peer that sends reads and never reads the answers is closed after the write timeout;
/// what it pinned is released and everyone else carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_after_the_write_timeout() {
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            write_timeout_ms: 300,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = connect(&b.addr, 1).await;
    // Sent, never read: the answers (8 MiB each) fill the socket buffers and stall.
    let _hog = big_peeks_never_read(&b.addr, &client, 200).await;
    wait_for("the stalled connection to be closed", || {
        b.open_connections() == 1
    })
    .await;
    client.ping().await.expect("the other client carries on");
    assert_eq!(client.peek("big", 0, 1).await.expect("peek").len(), 1);
}

/// Many long polls on one connection do not crowd out other reads: a fetch reserves room
/// for the bytes it may return, not for the largest messages, so a peek behind 40 waiting
/// fetches is answered at once, and the long polls stay healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_do_not_crowd_out_other_reads() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let client = Arc::new(
        Client::connect(ClientConfig {
            request_timeout_ms: 2_000,
            ..client_config(&b.addr, 1)
        })
        .await
        .expect("connect"),
    );
    client
        .create_group("t", "g", StartAt::Earliest)
        .await
        .expect("group");
    let polls: Vec<_> = (0..40)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.fetch("t", "g", opts(10, 30_000, 3_000)).await })
        })
        .collect();
    wait_for("40 long polls at the broker", || {
        b.requests(op::FETCH) >= 40
    })
    .await;
    let started = Instant::now();
    let peeked = client
        .peek("t", 0, 10)
        .await
        .expect("peek behind the long polls");
    assert!(peeked.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "the peek waited {:?}",
        started.elapsed()
    );
    client
        .publish("t", Message::new(&b"m"[..]))
        .await
        .expect("publish");
    let mut delivered = 0;
    for p in polls {
        delivered += p.await.expect("join").expect("a healthy long poll").len();
    }
    assert_eq!(delivered, 1);
    assert_eq!(b.accepted(), 1, "the connection was never killed");
}

/// When the shutdown grace runs out, connections still busy (here: a peer that never reads
/// its answers) are abandoned: the server returns, their sockets close, nothing is left
/// counted as open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_connections_stuck_past_the_grace_period() {
    let mut b = spawn_broker(
        engine_config(),
        ServerConfig {
            shutdown_grace_ms: 200,
            write_timeout_ms: 60_000,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = connect(&b.addr, 1).await;
    let mut hog = big_peeks_never_read(&b.addr, &client, 64).await;
    drop(client);
    wait_for("the peeks to reach the broker", || {
        b.requests(op::PEEK) >= 8
    })
    .await;
    let started = Instant::now();
    b.trigger_shutdown();
    b.join().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_for("the abandoned connection to be released", || {
        b.open_connections() == 0
    })
    .await;
    // Its socket is closed (mid-frame: the writer was abandoned): draining what was sent
    // ends in EOF or a reset.
    let mut sink = vec![0u8; 1 << 20];
    loop {
        let read = tokio::time::timeout(DEADLINE, hog.stream.read(&mut sink))
            .await
            .expect("the abandoned socket closes in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Publishes eight 1 MiB messages to "big" through `client`, then opens a raw connection
/// that sends `peeks` pipelined peeks of all eight (8 MiB answers each) and reads nothing.
async fn big_peeks_never_read(addr: &str, client: &Client, peeks: u32) -> RawConn {
    for _ in 0..8 {
        client
            .publish("big", Message::new(vec![1u8; 1 << 20]))
            .await
            .expect("publish");
    }
    let mut hog = RawConn::connect(addr).await;
    hog.hello().await;
    let mut requests = BytesMut::new();
    for id in 1..=peeks {
        Request::Peek {
            topic: "big".into(),
            from: 0,
            limit: 8,
        }
        .encode(id, &mut requests);
    }
    hog.send(&requests).await;
    hog
}

// ---- authentication, the reply budget, topic creation ----

const SECRET: &[u8] = b"broker-test-secret-0123456789";

fn secret() -> Secret {
    Secret::new(SECRET.to_vec()).expect("a long enough secret")
}

/// Broker settings with a secret; wrong proofs answered at once and never throttled
/// unless a test asks.
fn secured() -> ServerConfig {
    ServerConfig {
        secret: Some(secret()),
        auth_failure_delay_ms: 0,
        auth_failures_max: 1_000,
        ..ServerConfig::default()
    }
}

/// One request of every kind but the handshake's, on topic "orders" group "workers".
fn every_request() -> Vec<Request> {
    let (topic, group) = ("orders".to_string(), "workers".to_string());
    let receipt = Receipt {
        offset: 0,
        attempt: 1,
    };
    vec![
        Request::Ping,
        Request::Publish {
            topic: topic.clone(),
            message: Message::new(&b"forged purchase"[..]),
        },
        Request::PublishBatch {
            topic: topic.clone(),
            messages: vec![Message::new(&b"forged"[..]); 2],
        },
        Request::CreateGroup {
            topic: "new-topic".into(),
            group: group.clone(),
            start: StartAt::Earliest,
        },
        Request::Fetch {
            topic: topic.clone(),
            group: group.clone(),
            options: opts(10, 30_000, 0),
        },
        Request::Ack {
            topic: topic.clone(),
            group: group.clone(),
            receipts: vec![receipt],
        },
        Request::Nack {
            topic: topic.clone(),
            group: group.clone(),
            receipt,
            delay_ms: 0,
            reason: "x".into(),
        },
        Request::Reject {
            topic: topic.clone(),
            group: group.clone(),
            receipt,
            reason: "x".into(),
        },
        Request::DeadLetters {
            topic: topic.clone(),
            from: 0,
            limit: 10,
        },
        Request::Replay {
            topic: topic.clone(),
            dead_offset: 0,
        },
        Request::Discard {
            topic: topic.clone(),
            dead_offset: 0,
        },
        Request::Stats {
            topic: topic.clone(),
        },
        Request::Topics,
        Request::Peek {
            topic,
            from: 0,
            limit: 10,
        },
    ]
}

impl RawConn {
    /// Says hello to a broker with a secret; returns its challenge.
    async fn hello_challenge(&mut self) -> [u8; 32] {
        let hello = Request::Hello {
            min_version: proto::VERSION_MIN,
            max_version: proto::VERSION,
            client: "raw-test".into(),
        };
        self.send_request(0, &hello).await;
        let f = self.frame().await;
        match Response::decode(op::HELLO, f.opcode, f.body).expect("hello response") {
            Response::Hello {
                version,
                challenge: Some(c),
                ..
            } if version == proto::VERSION => c,
            r => panic!("expected a hello with a challenge, got {r:?}"),
        }
    }
}

/// The broker's state an intruder could change: every topic's figures and dead letters.
async fn snapshot(engine: &Engine) -> String {
    let mut out = String::new();
    for t in engine.topics().await.expect("topics") {
        if let Ok(s) = engine.stats(&t).await {
            out.push_str(&format!("{s:?}\n"));
        }
    }
    out
}

/// A broker with a secret refuses every request kind before a good proof: with no proof
/// at all (`AUTH_REQUIRED`), after a wrong proof (`AUTH_FAILED`), and a request pipelined
/// behind a wrong proof is never run. Each closes the connection; the engine's state
/// (a seeded message, its lease, a dead letter) is exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_before_a_good_proof_is_refused_and_the_connection_closed() {
    let b = spawn_broker(engine_config(), secured()).await;
    let client = Client::connect(client_config(&b.addr, 1).with_secret(Some(secret())))
        .await
        .expect("the right secret connects");
    // Something to forge, ack, replay or discard: a leased message and a dead letter.
    client
        .create_group("orders", "workers", StartAt::Earliest)
        .await
        .expect("group");
    for p in [&b"a"[..], b"b"] {
        client
            .publish("orders", Message::new(p))
            .await
            .expect("publish");
    }
    let ds = client
        .fetch("orders", "workers", opts(2, 60_000, 1_000))
        .await
        .expect("fetch");
    assert_eq!(ds.len(), 2);
    client
        .reject("orders", "workers", ds[1].receipt(), "poison")
        .await
        .expect("reject");
    wait_for("the dead letter", || {
        b.engine
            .topic_names()
            .is_ok_and(|t| t.contains(&"orders.dlq".to_string()))
    })
    .await;
    let before = snapshot(&b.engine).await;

    let wrong = Secret::new(b"not-the-broker-secret-42".to_vec()).expect("secret");
    for request in every_request() {
        let name = proto::op_name(request.opcode());
        // No proof.
        let mut raw = RawConn::connect(&b.addr).await;
        raw.hello_challenge().await;
        raw.send_request(9, &request).await;
        let (id, e) = raw.error().await;
        assert_eq!((id, e.code), (9, code::AUTH_REQUIRED), "{name}: {e:?}");
        raw.closed().await;
        // A wrong proof, with the request pipelined behind it.
        let mut raw = RawConn::connect(&b.addr).await;
        let challenge = raw.hello_challenge().await;
        let client_nonce = queue::auth::nonce();
        let mut out = BytesMut::new();
        Request::Auth {
            client_nonce,
            proof: wrong.client_proof(&challenge, &client_nonce),
        }
        .encode(1, &mut out);
        request.encode(2, &mut out);
        raw.send(&out).await;
        let (id, e) = raw.error().await;
        assert_eq!((id, e.code), (1, code::AUTH_FAILED), "{name}: {e:?}");
        raw.closed().await;
        // A replayed proof of the right secret, for another challenge.
        let mut raw = RawConn::connect(&b.addr).await;
        let challenge = raw.hello_challenge().await;
        let stale = queue::auth::nonce();
        let client_nonce = queue::auth::nonce();
        raw.send_request(
            1,
            &Request::Auth {
                client_nonce,
                proof: secret().client_proof(&stale, &client_nonce),
            },
        )
        .await;
        let (_, e) = raw.error().await;
        assert_eq!(e.code, code::AUTH_FAILED, "{name}: {e:?}");
        assert_ne!(stale, challenge);
        raw.closed().await;
    }
    // Nothing ran: the state is as before, and no request but the client's reached the
    // engine (the refused ones are counted, never handled).
    assert_eq!(snapshot(&b.engine).await, before);
    assert!(
        !b.engine
            .topic_names()
            .expect("names")
            .contains(&"new-topic".to_string())
    );
    assert_eq!(b.metrics.auth_failed.load(Ordering::Relaxed), 28);
    // Through the client: no secret and a wrong one fail clearly; the right one works.
    let err = Client::connect(client_config(&b.addr, 1))
        .await
        .expect_err("no secret");
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("requires authentication")),
        "{err}"
    );
    let err = Client::connect(client_config(&b.addr, 1).with_secret(Some(wrong)))
        .await
        .expect_err("wrong secret");
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("wrong proof")),
        "{err}"
    );
    assert_eq!(
        client
            .ack("orders", "workers", &[ds[0].receipt()])
            .await
            .expect("ack"),
        vec![queue::AckOutcome::Acked]
    );
    let dead = client.dead_letters("orders", 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    client
        .replay_dead_letter("orders", dead[0].dead_offset)
        .await
        .expect("replay");
}

/// A client holding a secret refuses a broker that asks for no proof (it could not prove
/// it holds the secret), and a version-1 client (no authentication) is refused by a broker
/// with a secret, both with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_secret_refuses_a_broker_without_one_and_old_clients_are_refused() {
    let open = spawn_broker(engine_config(), ServerConfig::default()).await;
    let err = Client::connect(client_config(&open.addr, 1).with_secret(Some(secret())))
        .await
        .expect_err("a broker without the secret");
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("asks for no authentication")),
        "{err}"
    );
    // Without a secret on either side, version 2 without a challenge.
    connect(&open.addr, 1).await.ping().await.expect("ping");

    let b = spawn_broker(engine_config(), secured()).await;
    let mut raw = RawConn::connect(&b.addr).await;
    raw.send_request(
        0,
        &Request::Hello {
            min_version: 1,
            max_version: 1,
            client: "old".into(),
        },
    )
    .await;
    let (_, e) = raw.error().await;
    assert_eq!(e.code, code::AUTH_REQUIRED, "{e:?}");
    raw.closed().await;
    // An AUTH the broker did not ask for is a handshake error.
    let mut raw = RawConn::connect(&open.addr).await;
    raw.hello().await;
    raw.send_request(
        1,
        &Request::Auth {
            client_nonce: [0; 32],
            proof: [0; 32],
        },
    )
    .await;
    let (_, e) = raw.error().await;
    assert_eq!(e.code, code::BAD_HANDSHAKE, "{e:?}");
}

/// Mutual proof: a fake broker that sends a challenge and accepts any proof, but does not
/// hold the secret, cannot answer with the broker's proof, and the client refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_broker_without_the_secret_is_refused_by_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let fake = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = s;
                let mut buf = BytesMut::new();
                loop {
                    match proto::split_frame(&mut buf, proto::FRAME_BYTES_MAX) {
                        Ok(Some(f)) => {
                            let mut out = BytesMut::new();
                            let resp = if f.opcode == op::HELLO {
                                Response::Hello {
                                    version: proto::VERSION,
                                    max_frame_bytes: proto::FRAME_BYTES_MAX as u32,
                                    max_in_flight: 16,
                                    server: "fake".into(),
                                    challenge: Some(queue::auth::nonce()),
                                }
                            } else {
                                Response::Authenticated {
                                    proof: queue::auth::nonce(),
                                }
                            };
                            resp.encode(f.opcode, f.request_id, &mut out);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            if !matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    let err = Client::connect(client_config(&addr, 1).with_secret(Some(secret())))
        .await
        .expect_err("a fake broker");
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("did not prove")),
        "{err}"
    );
    fake.abort();
}

/// Wrong proofs are slowed (each answered only after the failure delay) and counted per
/// address: past the limit the address's wrong proofs are answered `AUTH_THROTTLED` (also
/// after the delay), however many connections race, while the right secret still gets in
/// (no lockout of the gateway or the workers by a guesser sharing their address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proofs_are_delayed_and_capped_per_address() {
    let delay = Duration::from_millis(100);
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            auth_failures_max: 3,
            auth_failure_delay_ms: delay.as_millis() as u64,
            auth_failure_window_ms: 600_000,
            ..secured()
        },
    )
    .await;
    let wrong = Secret::new(b"guess-guess-guess-guess".to_vec()).expect("secret");
    for _ in 0..3 {
        let started = Instant::now();
        let err = Client::connect(ClientConfig {
            connect_attempts: 5,
            ..client_config(&b.addr, 1).with_secret(Some(wrong.clone()))
        })
        .await
        .expect_err("wrong secret");
        assert!(
            matches!(&err, Error::Auth(m) if m.contains("wrong proof")),
            "{err}"
        );
        assert!(
            started.elapsed() >= delay,
            "answered after {:?}",
            started.elapsed()
        );
    }
    // One attempt each: the client does not retry a refused authentication.
    assert_eq!(b.metrics.auth_failed.load(Ordering::Relaxed), 3);
    // Past its count the address's wrong proofs are throttled, still after the delay...
    let started = Instant::now();
    let err = Client::connect(client_config(&b.addr, 1).with_secret(Some(wrong.clone())))
        .await
        .expect_err("throttled");
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("too many wrong proofs")),
        "{err}"
    );
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(b.metrics.auth_throttled.load(Ordering::Relaxed), 1);
    // ...but the right secret from the same address gets in: a guesser beside the gateway
    // or the workers (NAT, the same host) cannot lock them out.
    let c = Client::connect(client_config(&b.addr, 1).with_secret(Some(secret())))
        .await
        .expect("the right secret from a throttled address");
    c.ping().await.expect("ping");
    assert_eq!(b.metrics.auth_succeeded.load(Ordering::Relaxed), 1);
    assert_eq!(b.metrics.auth_failed.load(Ordering::Relaxed), 3);

    // Many connections racing from one address get no more wrong proofs checked than the
    // limit: here a fresh broker, 20 wrong proofs sent at once, 3 checked.
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            auth_failures_max: 3,
            auth_failure_window_ms: 600_000,
            ..secured()
        },
    )
    .await;
    let mut conns = Vec::new();
    let mut proofs = Vec::new();
    for _ in 0..20 {
        let mut raw = RawConn::connect(&b.addr).await;
        let challenge = raw.hello_challenge().await;
        let client_nonce = queue::auth::nonce();
        let mut out = BytesMut::new();
        Request::Auth {
            client_nonce,
            proof: wrong.client_proof(&challenge, &client_nonce),
        }
        .encode(1, &mut out);
        proofs.push(out);
        conns.push(raw);
    }
    let mut racing = JoinSet::new();
    for (mut raw, out) in conns.into_iter().zip(proofs) {
        racing.spawn(async move {
            raw.send(&out).await;
            raw.error().await.1.code
        });
    }
    let mut codes = Vec::new();
    while let Some(c) = racing.join_next().await {
        codes.push(c.expect("join"));
    }
    let failed = codes.iter().filter(|c| **c == code::AUTH_FAILED).count();
    let throttled = codes.iter().filter(|c| **c == code::AUTH_THROTTLED).count();
    assert_eq!((failed, throttled), (3, 17), "{codes:?}");
    assert_eq!(b.metrics.auth_failed.load(Ordering::Relaxed), 3);
}

/// The broker-wide reply budget: eight connections that send big reads and never read the
/// answers cannot make the broker reserve more than `max_reply_bytes` between them (each
/// alone could reserve 128 MiB: without the budget they reserve about 1 GiB); their reads
/// wait instead. Meanwhile a well-behaved client's publishes and pings are served, and its
/// own read is served once the stalled connections go (here they close; a peer that just
/// stops reading is cut by the write timeout, see
/// `a_peer_that_stops_reading_is_closed_after_the_write_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_read_cannot_push_the_broker_past_its_reply_budget() {
    let budget: usize = 40 << 20;
    let mut engine = engine_config();
    engine.segment_bytes_max = 16 << 20;
    let b = spawn_broker(
        engine,
        ServerConfig {
            max_reply_bytes: budget,
            // Far beyond the test: the stalled connections stay until they close.
            write_timeout_ms: 600_000,
            ..ServerConfig::default()
        },
    )
    .await;
    // The broker's own accounting of what its reads reserved.
    let listener_budget = b.replies.clone();
    let client = connect(&b.addr, 1).await;
    let mut hogs = Vec::new();
    hogs.push(big_peeks_never_read(&b.addr, &client, 30).await);
    for _ in 1..8 {
        let mut hog = RawConn::connect(&b.addr).await;
        hog.hello().await;
        let mut requests = BytesMut::new();
        for id in 1..=30 {
            Request::Peek {
                topic: "big".into(),
                from: 0,
                limit: 8,
            }
            .encode(id, &mut requests);
        }
        hog.send(&requests).await;
        hogs.push(hog);
    }
    wait_for("every hog's peeks at the broker", || {
        b.requests(op::PEEK) >= 8 * 30
    })
    .await;
    // The budget fills up (reads wait for room) and is never exceeded.
    let one_peek = 9 << 20;
    wait_for("the reply budget to fill", || {
        listener_budget.reserved() + one_peek > budget as u64
    })
    .await;
    assert_eq!(listener_budget.max(), budget as u64);
    assert!(
        listener_budget.peak() <= budget as u64,
        "peak {} over the budget {budget}",
        listener_budget.peak()
    );
    // A well-behaved client: writes and pings go on while the budget is full...
    let other = connect(&b.addr, 1).await;
    other.ping().await.expect("ping");
    other
        .publish("small", Message::new(&b"m"[..]))
        .await
        .expect("publish");
    assert!(listener_budget.reserved() + one_peek > budget as u64);
    // ...and its read is served once the stalled connections are gone.
    let read = tokio::spawn(async move { other.peek("small", 0, 10).await });
    drop(hogs);
    let peeked = read.await.expect("join").expect("peek");
    assert_eq!(peeked.len(), 1);
    assert!(listener_budget.peak() <= budget as u64);
}

/// Topic creation is rate-limited by the broker (a request that would create a topic past
/// the rate gets `LIMIT`, existing topics are untouched) and capped by the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_creation_is_rate_limited_and_capped() {
    let b = spawn_broker(
        engine_config(),
        ServerConfig {
            topic_creations_per_minute: 3,
            ..ServerConfig::default()
        },
    )
    .await;
    let client = connect(&b.addr, 1).await;
    for t in ["t1", "t2", "t3"] {
        client
            .publish(t, Message::new(&b"m"[..]))
            .await
            .expect("within the rate");
    }
    let over = |e: Error| {
        assert!(
            matches!(
                e,
                Error::Limit {
                    what: "topic creations per minute",
                    limit: 3
                }
            ),
            "{e}"
        );
    };
    over(
        client
            .publish("t4", Message::new(&b"m"[..]))
            .await
            .expect_err("rate"),
    );
    over(
        client
            .fetch("t5", "g", opts(1, 1_000, 0))
            .await
            .expect_err("rate"),
    );
    over(
        client
            .create_group("t6", "g", StartAt::Earliest)
            .await
            .expect_err("rate"),
    );
    over(
        client
            .publish_batch("t7", vec![Message::new(&b"m"[..])])
            .await
            .expect_err("rate"),
    );
    // Existing topics are served as before, on the same connection.
    client
        .publish("t1", Message::new(&b"again"[..]))
        .await
        .expect("existing topic");
    assert_eq!(b.engine.topic_names().expect("names").len(), 6);
    assert_eq!(b.metrics.topic_creations_refused.load(Ordering::Relaxed), 4);

    // The engine's cap: two user topics (and their dead-letter topics) at most.
    let capped = spawn_broker(
        Config {
            topics_max: 4,
            ..engine_config()
        },
        ServerConfig::default(),
    )
    .await;
    let client = connect(&capped.addr, 1).await;
    for t in ["a", "b"] {
        client
            .publish(t, Message::new(&b"m"[..]))
            .await
            .expect("under the cap");
    }
    let e = client
        .publish("c", Message::new(&b"m"[..]))
        .await
        .expect_err("over the cap");
    assert!(
        matches!(
            e,
            Error::Limit {
                what: "topics",
                limit: 4
            }
        ),
        "{e}"
    );
}

// ---- 12. publishes coalesced into PUBLISH_EACH frames (protocol version 3) ----

/// A PUBLISH_EACH frame of `messages` for `topic`, with request id `id`.
fn each_frame(id: u32, topic: &str, messages: Vec<Message>) -> BytesMut {
    let mut out = BytesMut::new();
    Request::PublishEach {
        topic: topic.into(),
        messages,
    }
    .encode(id, &mut out);
    out
}

/// Publishes queued together on one connection leave as PUBLISH_EACH frames, and each
/// caller still gets its own message's confirm: distinct offsets, each holding the
/// caller's payload and id. On a single-threaded runtime every publisher queues before the
/// connection's writer runs, so all of them share one frame.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_publishes_share_one_frame_and_each_gets_its_own_confirm() {
    const N: u64 = 50;
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let c = Arc::new(connect(&b.addr, 1).await);
    c.create_group("each", "g", StartAt::Earliest)
        .await
        .expect("group");
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let m = Message::new(i.to_le_bytes().to_vec()).with_id(u128::from(i) + 1);
            (i, c.publish("each", m).await)
        }));
    }
    let mut offsets = BTreeMap::new();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        let confirm = r.expect("confirmed");
        assert!(!confirm.duplicate);
        assert!(offsets.insert(confirm.offset, i).is_none(), "offset reused");
    }
    assert_eq!(
        b.requests(op::PUBLISH_EACH),
        1,
        "one frame carried them all"
    );
    assert_eq!(b.requests(op::PUBLISH), 0);
    let stored = b.engine.peek("each", 0, 1000).await.expect("peek");
    assert_eq!(stored.len() as u64, N);
    for p in &stored {
        let i = offsets[&p.offset];
        assert_eq!(p.payload.as_ref(), i.to_le_bytes());
        assert_eq!(p.id, Some(u128::from(i) + 1));
    }
}

/// Byte by byte: a PUBLISH_EACH frame is answered with one result per message in its order
/// (a message the engine refuses gets its own error, a repeated id its first offset); a
/// frame that cannot be decoded (no messages, too many, cut short) is a protocol error
/// that publishes nothing; and a connection that agreed on version 2 cannot use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_each_frames_answer_each_message_and_need_version_3() {
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let mut conn = RawConn::connect(&b.addr).await;
    conn.hello().await;
    let messages = vec![
        Message::new(&b"first"[..]).with_id(7),
        Message::new(&b"bad"[..]).with_header("h".repeat(65), b"v".to_vec()),
        Message::new(&b"second"[..]),
        Message::new(&b"first again"[..]).with_id(7),
    ];
    conn.send(&each_frame(5, "raw", messages)).await;
    let f = conn.frame().await;
    assert_eq!(f.request_id, 5);
    let Ok(Response::Each(rs)) = Response::decode(op::PUBLISH_EACH, f.opcode, f.body) else {
        panic!("expected a publish_each answer");
    };
    assert_eq!(rs.len(), 4, "{rs:?}");
    let first = rs[0].as_ref().expect("first");
    let bad = rs[1].as_ref().expect_err("bad header");
    assert_eq!(bad.code, code::INVALID, "{bad:?}");
    let second = rs[2].as_ref().expect("second");
    let again = rs[3].as_ref().expect("repeat");
    assert_eq!(
        (first.offset, second.offset, again.offset, again.duplicate),
        (0, 1, 0, true)
    );

    // Hostile frames: each closes its connection, and nothing of it is stored.
    let mut empty = BytesMut::new();
    empty.put_u16_le(3);
    empty.put_slice(b"raw");
    empty.put_u32_le(0);
    let mut too_many = BytesMut::new();
    too_many.put_u16_le(3);
    too_many.put_slice(b"raw");
    too_many.put_u32_le(proto::EACH_MESSAGES_MAX as u32 + 1);
    too_many.put_slice(&vec![0u8; 7 * (proto::EACH_MESSAGES_MAX + 1)]);
    let whole = each_frame(0, "raw", vec![Message::new(&b"x"[..]); 3]);
    let cut_short = whole[9..whole.len() - 1].to_vec();
    for body in [empty.to_vec(), too_many.to_vec(), cut_short] {
        let mut hostile = RawConn::connect(&b.addr).await;
        hostile.hello().await;
        hostile.send(&frame_bytes(op::PUBLISH_EACH, 9, &body)).await;
        let (id, e) = hostile.error().await;
        assert_eq!((id, e.code), (9, code::BAD_FRAME), "{e:?}");
        hostile.closed().await;
    }
    assert_eq!(
        b.engine.topic_stats("raw").expect("stats").next_offset,
        2,
        "only the good frame's messages are stored"
    );

    // Version 2 has no PUBLISH_EACH: the broker treats it as an unknown operation.
    let mut old = RawConn::connect(&b.addr).await;
    old.hello_speaking(proto::VERSION_AUTH).await;
    old.send(&each_frame(3, "raw", vec![Message::new(&b"x"[..])]))
        .await;
    let (id, e) = old.error().await;
    assert_eq!((id, e.code), (3, code::UNKNOWN_OPCODE), "{e:?}");
    old.closed().await;
    assert_eq!(b.engine.topic_stats("raw").expect("stats").next_offset, 2);
}

/// The client speaks each version's way: to a version-2 broker a publish is a PUBLISH
/// frame; to a version-3 one a PUBLISH_EACH frame, whose answer is split among its callers
/// (an answer with the wrong number of results fails each of them, never a wrong one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_publishes_each_versions_way() {
    for (version, expected_op) in [
        (proto::VERSION_AUTH, op::PUBLISH),
        (proto::VERSION_EACH, op::PUBLISH_EACH),
    ] {
        let mut fake = FakeBroker::spawn_speaking(16, version).await;
        let client = Arc::new(connect(&fake.addr, 1).await);
        let publisher = client.clone();
        let call = tokio::spawn(async move {
            publisher
                .publish("t", Message::new(&b"x"[..]).with_id(1))
                .await
        });
        let f = fake.next().await;
        assert_eq!(f.frame.opcode, expected_op, "version {version}");
        let mut out = BytesMut::new();
        let confirm = queue::Confirm {
            offset: 41,
            duplicate: false,
        };
        if expected_op == op::PUBLISH {
            Response::Confirm(confirm).encode(op::PUBLISH, f.frame.request_id, &mut out);
        } else {
            let Ok(Request::PublishEach { topic, messages }) =
                Request::decode(f.frame.opcode, f.frame.body.clone())
            else {
                panic!("not a publish_each frame");
            };
            assert_eq!((topic.as_str(), messages.len()), ("t", 1));
            assert_eq!(messages[0].id, Some(1));
            Response::Each(vec![Ok(confirm)]).encode(
                op::PUBLISH_EACH,
                f.frame.request_id,
                &mut out,
            );
        }
        let _ = f.reply.send(FakeReply::Bytes(out));
        let got = tokio::time::timeout(DEADLINE, call)
            .await
            .expect("answered")
            .expect("task")
            .expect("confirmed");
        assert_eq!(got.offset, 41);
    }

    // A version-3 answer with two results for one message: the caller gets a connection
    // error (its message may or may not be stored: retry with its id), never someone
    // else's confirm, and the connection is dropped.
    let mut fake = FakeBroker::spawn_speaking(16, proto::VERSION_EACH).await;
    let client = Arc::new(connect(&fake.addr, 1).await);
    let publisher = client.clone();
    let call = tokio::spawn(async move { publisher.publish("t", Message::new("x")).await });
    let f = fake.next().await;
    let c = queue::Confirm {
        offset: 1,
        duplicate: false,
    };
    let mut out = BytesMut::new();
    Response::Each(vec![Ok(c), Ok(c)]).encode(op::PUBLISH_EACH, f.frame.request_id, &mut out);
    let _ = f.reply.send(FakeReply::Bytes(out));
    let r = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("answered")
        .expect("task");
    assert!(matches!(r, Err(Error::Connection(_))), "{r:?}");
    wait_for(
        "the client to drop the connection after an unsplittable answer",
        || fake.closed.load(Ordering::SeqCst) == 1,
    )
    .await;
}

/// A connection cut while coalesced publishes are in flight loses nothing confirmed: every
/// publish the client confirmed is stored at its offset with its payload and id, and the
/// others fail with a connection error (they may or may not be stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_batch_loses_nothing_confirmed() {
    const PUBLISHERS: u64 = 32;
    const EACH: u64 = 40;
    let b = spawn_broker(engine_config(), ServerConfig::default()).await;
    let proxy = Proxy::spawn(b.addr.clone()).await;
    let c = Arc::new(connect(&proxy.addr, 1).await);
    let confirmed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (c, confirmed) = (c.clone(), confirmed.clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for k in 0..EACH {
                let n = p * EACH + k;
                let m = Message::new(n.to_le_bytes().to_vec()).with_id(u128::from(n) + 1);
                let r = c.publish("cut", m).await;
                if r.is_ok() {
                    confirmed.fetch_add(1, Ordering::SeqCst);
                }
                let failed = r.is_err();
                results.push((n, r));
                if failed {
                    break;
                }
            }
            results
        }));
    }
    wait_for("some publishes to be confirmed", || {
        confirmed.load(Ordering::SeqCst) >= PUBLISHERS * EACH / 4
    })
    .await;
    proxy.cut_all();
    let mut ok = 0;
    let mut lost = 0;
    for t in tasks {
        for (n, r) in t.await.expect("task") {
            match r {
                Ok(confirm) => {
                    ok += 1;
                    let stored = b.engine.peek("cut", confirm.offset, 1).await.expect("peek");
                    assert_eq!(
                        stored.len(),
                        1,
                        "confirmed offset {} missing",
                        confirm.offset
                    );
                    assert_eq!(stored[0].offset, confirm.offset);
                    assert_eq!(stored[0].payload.as_ref(), n.to_le_bytes());
                    assert_eq!(stored[0].id, Some(u128::from(n) + 1));
                }
                Err(Error::Connection(_) | Error::NotSent(_)) => lost += 1,
                Err(e) => panic!("publish {n}: {e}"),
            }
        }
    }
    assert!(ok >= PUBLISHERS * EACH / 4, "{ok} confirmed");
    assert!(
        ok + lost >= PUBLISHERS,
        "every publisher ended: {ok} confirmed, {lost} lost"
    );
    assert!(b.requests(op::PUBLISH_EACH) > 0);
}
