//! Redis Streams at the queue's durability, as a point of comparison for `queue-bench`.
//!
//! [`run`] starts a scratch `redis-server` of its own (from `PATH`) on a free loopback port,
//! with `appendonly yes` and `appendfsync always`: Redis then writes every command to its
//! append-only file and fsyncs it before it sends the replies of an event-loop round, which
//! is the queue's "fsync before confirm". The server and its directory are removed at the
//! end, also on error. Nothing is printed to stdout; progress lines go to stderr.
//!
//! Phases:
//! 1. publish: `producers` connections, each with `in_flight` loops that send a pipeline of
//!    `pipeline` × `XADD bench * p <payload>` and wait for its replies; a pipeline's
//!    messages count as confirmed when its replies arrive (after the fsync). Runs for
//!    `publish_secs`; the confirm latency is recorded once per pipeline.
//! 2. consume + ack: `consumers` connections, each repeating `XREADGROUP GROUP g c<i> COUNT
//!    fetch_batch STREAMS bench >` and one `XACK` of all the ids it got, until
//!    `min(consume_messages, published)` messages are acked. Both commands are writes in
//!    Redis (the read moves the group's cursor and fills its pending list), so both are
//!    fsynced too.
//!
//! The tokio runtime that drives [`run`] needs its I/O and time drivers
//! (`Builder::enable_all()`): the Redis client uses tokio sockets.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use super::{BoxError, Res, err, join_all};

/// The stream every message goes to, and its consumer group.
const STREAM: &str = "bench";
const GROUP: &str = "g";
/// How long `redis-server` may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two PINGs while the server starts.
const STARTUP_POLL: Duration = Duration::from_millis(50);
/// A reply that takes longer than this is an error. The client's default (500 ms) is too
/// short for an fsync stall on a busy disk, which is part of what is measured.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The consume phase fails once it has run this long.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest latency a histogram holds, in µs (larger values are clamped), as in `main.rs`.
const HIST_MAX_US: u64 = 120_000_000;
/// The server's log file and its stderr, in its directory.
const LOG_FILE: &str = "redis.log";
const STDERR_FILE: &str = "redis.stderr";
/// Lines of each quoted in a startup error.
const LOG_TAIL_LINES: usize = 20;

/// What to run; see the module documentation.
#[derive(Debug, Clone)]
pub struct RedisParams {
    /// Payload bytes of every message (the `p` field of each entry).
    pub message_bytes: usize,
    /// Concurrent producers, each with its own connection.
    pub producers: usize,
    /// `XADD`s per pipeline (one round trip, one confirm).
    pub pipeline: usize,
    /// Pipelines in flight per producer connection (1 = wait for each before the next).
    pub in_flight: usize,
    /// Length of the publish phase.
    pub publish_secs: f64,
    /// Concurrent consumers of group `g`, each with its own connection.
    pub consumers: usize,
    /// `COUNT` of each `XREADGROUP` (and so the ids of each `XACK`).
    pub fetch_batch: usize,
    /// How many messages to consume; the consume phase reads what publish wrote, so it
    /// consumes `min(consume_messages, published)`.
    pub consume_messages: u64,
    /// Where Redis keeps its append-only file (a fresh subdirectory is made and removed);
    /// must be a real disk. Default: `std::env::temp_dir()`.
    pub dir: Option<PathBuf>,
}

/// The figures of one [`run`].
#[derive(Debug, Clone)]
pub struct RedisFigures {
    /// Confirmed messages per second over the publish phase (until the last reply).
    pub publish_msgs_per_s: f64,
    /// Confirm latency of a pipeline (send to last reply), median and 99th percentile.
    pub confirm_p50_us: u64,
    pub confirm_p99_us: u64,
    /// Messages read and acked per second over the consume phase.
    pub consume_ack_msgs_per_s: f64,
    /// Messages confirmed in the publish phase (checked against `XLEN`).
    pub published: u64,
    /// Messages read and acked in the consume phase.
    pub consumed: u64,
    /// `redis_version` of `INFO server`.
    pub redis_version: String,
    /// `CONFIG GET appendfsync` of the running server (`always`, or the run fails).
    pub appendfsync: String,
}

/// Runs both phases against a scratch `redis-server`; see the module documentation.
pub async fn run(p: &RedisParams) -> Result<RedisFigures, BoxError> {
    check_params(p)?;
    let base = p.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut server = RedisServer::start(&base)?;
    note!(
        "redis-streams: redis-server on 127.0.0.1:{}, AOF in {}",
        server.port,
        server.dir.display()
    );
    let client = Client::open(format!("redis://127.0.0.1:{}/", server.port))
        .map_err(|e| err(format!("redis client: {e}")))?;
    let mut admin = server.wait_ready(&client).await?;

    let appendfsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut admin)
        .await
        .map_err(|e| err(format!("CONFIG GET appendfsync: {e}")))?;
    let appendfsync = appendfsync.get(1).cloned().unwrap_or_default();
    if appendfsync != "always" {
        return Err(err(format!(
            "redis-server runs with appendfsync {appendfsync:?}, not \"always\""
        )));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .map_err(|e| err(format!("INFO server: {e}")))?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| err("no redis_version in INFO server"))?;
    note!("redis-streams: redis {redis_version}, appendonly yes, appendfsync {appendfsync}");

    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(&mut admin)
        .await
        .map_err(|e| err(format!("XGROUP CREATE: {e}")))?;

    note!(
        "redis-streams: publish: {} connections x {} in flight x pipelines of {} XADD ({} B) for {}s",
        p.producers,
        p.in_flight,
        p.pipeline,
        p.message_bytes,
        p.publish_secs
    );
    let (published, publish_secs, confirm) = publish(&client, p).await?;
    let xlen: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut admin)
        .await
        .map_err(|e| err(format!("XLEN: {e}")))?;
    if xlen != published {
        return Err(err(format!(
            "XLEN {xlen} after {published} confirmed XADDs"
        )));
    }
    let publish_msgs_per_s = published as f64 / publish_secs;
    let confirm_p50_us = confirm.value_at_quantile(0.50);
    let confirm_p99_us = confirm.value_at_quantile(0.99);
    note!(
        "redis-streams: published {published} in {publish_secs:.2}s: {publish_msgs_per_s:.0} msgs/s, \
         pipeline confirm p50 {confirm_p50_us} µs p99 {confirm_p99_us} µs [appendfsync {appendfsync}]"
    );

    let target = p.consume_messages.min(published);
    note!(
        "redis-streams: consume + ack: {target} messages, {} consumers, XREADGROUP COUNT {}",
        p.consumers,
        p.fetch_batch
    );
    let (consumed, consume_secs) = consume(&client, p, target).await?;
    let pending = pending_count(&mut admin).await?;
    if pending != 0 {
        return Err(err(format!(
            "{pending} messages still pending in group {GROUP} after acking"
        )));
    }
    let consume_ack_msgs_per_s = consumed as f64 / consume_secs;
    note!(
        "redis-streams: consumed + acked {consumed} in {consume_secs:.2}s: {consume_ack_msgs_per_s:.0} msgs/s \
         [appendfsync {appendfsync}]"
    );

    drop(admin);
    server.stop();
    Ok(RedisFigures {
        publish_msgs_per_s,
        confirm_p50_us,
        confirm_p99_us,
        consume_ack_msgs_per_s,
        published,
        consumed,
        redis_version,
        appendfsync,
    })
}

fn check_params(p: &RedisParams) -> Res<()> {
    if p.producers == 0
        || p.pipeline == 0
        || p.in_flight == 0
        || p.consumers == 0
        || p.fetch_batch == 0
    {
        return Err(err(
            "redis-streams: producers, pipeline, in_flight, consumers and fetch_batch must be at least 1",
        ));
    }
    if !(p.publish_secs.is_finite() && p.publish_secs > 0.0) {
        return Err(err("redis-streams: publish_secs must be positive"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The scratch server.

/// A `redis-server` child and its directory; both are removed on drop.
#[derive(Debug)]
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Makes a fresh directory under `base` and starts `redis-server` in it.
    fn start(base: &Path) -> Res<RedisServer> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("redis-streams-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
        // The guard exists from here on, so the directory goes even if the spawn fails.
        let mut server = RedisServer {
            port: free_port()?,
            dir,
            child: None,
        };
        // Config errors go to stderr before the log file is open, so keep stderr too.
        let stderr_path = server.dir.join(STDERR_FILE);
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| err(format!("create {}: {e}", stderr_path.display())))?;
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(server.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&server.dir)
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always")
            .arg("--save")
            .arg("")
            // No AOF rewrite (a fork that rewrites the whole file) in the middle of a
            // measurement: the strongest showing for Redis, and our queue does not
            // compact during the bench either.
            .arg("--auto-aof-rewrite-percentage")
            .arg("0")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(server.dir.join(LOG_FILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| err(format!("cannot start redis-server (is it on PATH?): {e}")))?;
        server.child = Some(child);
        Ok(server)
    }

    /// Waits until the server answers PING (at most [`STARTUP_TIMEOUT`]) and returns that
    /// connection.
    async fn wait_ready(&mut self, client: &Client) -> Res<MultiplexedConnection> {
        let start = Instant::now();
        loop {
            let last = match connect(client).await {
                Ok(mut con) => match redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => return Ok(con),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(err(format!(
                    "redis-server exited at startup ({status})\n{}",
                    self.log_tail()
                )));
            }
            if start.elapsed() >= STARTUP_TIMEOUT {
                return Err(err(format!(
                    "redis-server did not answer PING within {} s (last error: {last})\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
    }

    /// The last lines of the server's stderr and log file, for a startup error.
    fn log_tail(&self) -> String {
        [STDERR_FILE, LOG_FILE]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!("--- {name}:\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the server (it keeps nothing worth a clean shutdown) and removes its directory.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago. Another process may take it before Redis
/// binds it; Redis then exits at startup and [`RedisServer::wait_ready`] says so.
fn free_port() -> Res<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind 127.0.0.1:0: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| err(format!("local_addr: {e}")))?
        .port();
    drop(listener);
    Ok(port)
}

async fn connect(client: &Client) -> Res<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| err(format!("connect to redis: {e}")))
}

// ---------------------------------------------------------------------------------------
// Publish.

fn hist() -> Res<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| err(format!("histogram: {e}")))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Publishes until `p.publish_secs` have passed; returns the confirmed messages, the
/// seconds from the start until the last reply, and the per-pipeline confirm latency.
/// A loop sends no new pipeline after the deadline but waits for the one it has sent, so
/// every message in the stream is counted and the time includes that tail.
async fn publish(client: &Client, p: &RedisParams) -> Res<(u64, f64, Histogram<u64>)> {
    let payload: Arc<[u8]> = (0..p.message_bytes).map(|i| (i % 251) as u8).collect();
    let mut connections = Vec::with_capacity(p.producers);
    for _ in 0..p.producers {
        connections.push(connect(client).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(p.publish_secs);
    let mut handles = Vec::with_capacity(p.producers * p.in_flight);
    for con in &connections {
        for _ in 0..p.in_flight {
            let mut con = con.clone();
            let payload = payload.clone();
            let n = p.pipeline;
            handles.push(tokio::spawn(async move {
                // Built once: every round sends the same commands.
                let mut pipe = redis::pipe();
                for _ in 0..n {
                    pipe.cmd("XADD")
                        .arg(STREAM)
                        .arg("*")
                        .arg("p")
                        .arg(&payload[..]);
                }
                let mut latency = hist()?;
                let mut confirmed = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let ids: Vec<Value> = pipe
                        .query_async(&mut con)
                        .await
                        .map_err(|e| err(format!("XADD pipeline: {e}")))?;
                    latency.saturating_record(micros(t0.elapsed()));
                    if ids.len() != n || !ids.iter().all(|id| matches!(id, Value::BulkString(_))) {
                        return Err(err(format!("unexpected replies to {n} XADDs: {ids:?}")));
                    }
                    confirmed += n as u64;
                }
                Ok((confirmed, latency))
            }));
        }
    }
    let results = join_all(handles).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut all = hist()?;
    let mut confirmed = 0u64;
    for (n, h) in &results {
        confirmed += n;
        all.add(h)
            .map_err(|e| err(format!("histogram merge: {e}")))?;
    }
    Ok((confirmed, secs, all))
}

// ---------------------------------------------------------------------------------------
// Consume + ack.

/// `p.consumers` consumers read and ack until `target` messages are acked; returns the
/// messages acked and the seconds it took. Each read asks only for messages not yet
/// claimed by another consumer's read, so exactly `target` are read and acked.
async fn consume(client: &Client, p: &RedisParams, target: u64) -> Res<(u64, f64)> {
    let mut connections = Vec::with_capacity(p.consumers);
    for _ in 0..p.consumers {
        connections.push(connect(client).await?);
    }
    let unclaimed = Arc::new(AtomicU64::new(target));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(p.consumers);
    for (i, mut con) in connections.into_iter().enumerate() {
        let unclaimed = unclaimed.clone();
        let (batch, message_bytes) = (p.fetch_batch as u64, p.message_bytes);
        handles.push(tokio::spawn(async move {
            let consumer = format!("c{i}");
            let mut acked = 0u64;
            loop {
                if start.elapsed() > CONSUME_TIMEOUT {
                    return Err(err("redis-streams: consume phase timed out"));
                }
                let mut take = 0;
                let claimed = unclaimed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                    take = u.min(batch);
                    (take > 0).then_some(u - take)
                });
                if claimed.is_err() {
                    break;
                }
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(take)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">")
                    .query_async(&mut con)
                    .await
                    .map_err(|e| err(format!("XREADGROUP: {e}")))?;
                let ids = entry_ids(reply, message_bytes)?;
                let got = ids.len() as u64;
                if got < take {
                    // Fewer than asked for: give the rest back for another read.
                    unclaimed.fetch_add(take - got, Ordering::SeqCst);
                }
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let mut xack = redis::cmd("XACK");
                xack.arg(STREAM).arg(GROUP);
                for id in &ids {
                    xack.arg(&id[..]);
                }
                let n: u64 = xack
                    .query_async(&mut con)
                    .await
                    .map_err(|e| err(format!("XACK: {e}")))?;
                if n != got {
                    return Err(err(format!("XACK acknowledged {n} of {got} ids")));
                }
                acked += n;
            }
            Ok(acked)
        }));
    }
    let acked: u64 = join_all(handles).await?.into_iter().sum();
    let secs = start.elapsed().as_secs_f64();
    if acked != target {
        return Err(err(format!("acked {acked} messages, expected {target}")));
    }
    Ok((acked, secs))
}

/// The entry ids of an `XREADGROUP` reply of one stream, checking that every entry carries
/// one field of `message_bytes` bytes. Parsed by hand from the raw reply rather than into
/// `StreamReadReply`, which builds a `HashMap` per entry: the client shares the machine's
/// cores with Redis, so its CPU time would be taken from Redis.
fn entry_ids(reply: Value, message_bytes: usize) -> Res<Vec<Vec<u8>>> {
    let bad = |what: &str| err(format!("XREADGROUP: unexpected reply ({what})"));
    // RESP2: [[stream, entries]]; RESP3: {stream: entries}. Nil when there is nothing new.
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(pair)) => pair.into_iter().nth(1),
            Some(_) => return Err(bad("stream is not a pair")),
            None => return Ok(Vec::new()),
        },
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        Value::ServerError(e) => return Err(err(format!("XREADGROUP: {e}"))),
        _ => return Err(bad("not an array")),
    };
    let Some(Value::Array(entries)) = entries else {
        return Err(bad("no entry array"));
    };
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return Err(bad("entry is not an array"));
        };
        let mut parts = entry.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
            (parts.next(), parts.next())
        else {
            return Err(bad("entry is not [id, fields]"));
        };
        match fields.as_slice() {
            [_, Value::BulkString(payload)] if payload.len() == message_bytes => {}
            _ => {
                return Err(err(format!(
                    "XREADGROUP: entry {} is not one field of {message_bytes} bytes",
                    String::from_utf8_lossy(&id)
                )));
            }
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Messages delivered to the group and not yet acked (`XPENDING bench g`).
async fn pending_count(con: &mut MultiplexedConnection) -> Res<u64> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(con)
        .await
        .map_err(|e| err(format!("XPENDING: {e}")))?;
    match reply {
        Value::Array(summary) => match summary.first() {
            Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| err("XPENDING: negative count")),
            _ => Err(err("XPENDING: unexpected reply")),
        },
        _ => Err(err("XPENDING: unexpected reply")),
    }
}
