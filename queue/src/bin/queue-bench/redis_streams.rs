//! Raw Redis Streams at the queue's durability, as a point of comparison for `queue-bench`.
//!
//! [`run`] starts a scratch `redis-server` of its own (`scratch_redis.rs`: `appendonly
//! yes`, `appendfsync always`, the same server our queue on Redis is measured on in
//! `redis_queue.rs`). Nothing is printed to stdout; progress lines go to stderr.
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
//! Around each phase the server's own figures are taken (`scratch_redis::PhaseMeter`:
//! commands, CPU and AOF bytes per message).
//!
//! The tokio runtime that drives [`run`] needs its I/O and time drivers
//! (`Builder::enable_all()`): the Redis client uses tokio sockets.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::scratch_redis::{PhaseMeter, Scratch};
use super::{BoxError, Res, err, hist, join_all, micros};

/// The stream every message goes to, and its consumer group.
const STREAM: &str = "bench";
const GROUP: &str = "g";
/// The consume phase fails once it has run this long.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// The server's settings, read back.
    pub settings: serde_json::Value,
    /// Server-side figures of each phase (`scratch_redis::PhaseMeter`).
    pub publish_server: serde_json::Value,
    pub consume_server: serde_json::Value,
}

/// Runs both phases against a scratch `redis-server`; see the module documentation.
pub async fn run(p: &RedisParams) -> Result<RedisFigures, BoxError> {
    check_params(p)?;
    let base = p.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut server = Scratch::start(&base, "redis-streams").await?;
    let (redis_version, appendfsync) = (server.version.clone(), server.appendfsync.clone());
    let settings = server.settings_json().await?;
    note!("redis-streams: redis {redis_version}, appendonly yes, appendfsync {appendfsync}");
    let admin = &mut server.admin;

    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(admin)
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
    let mut connections = Vec::with_capacity(p.producers);
    for _ in 0..p.producers {
        connections.push(server.connect().await?);
    }
    let admin = &mut server.admin;
    let meter = PhaseMeter::begin(admin).await?;
    let (published, publish_secs, confirm) = publish(connections, p).await?;
    let publish_server = meter.end(admin, published).await?;
    let xlen: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(admin)
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
    let mut connections = Vec::with_capacity(p.consumers);
    for _ in 0..p.consumers {
        connections.push(server.connect().await?);
    }
    let admin = &mut server.admin;
    let meter = PhaseMeter::begin(admin).await?;
    let (consumed, consume_secs) = consume(connections, p, target).await?;
    let consume_server = meter.end(admin, consumed).await?;
    let pending = pending_count(admin).await?;
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
        settings,
        publish_server,
        consume_server,
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
// Publish.

/// Publishes until `p.publish_secs` have passed; returns the confirmed messages, the
/// seconds from the start until the last reply, and the per-pipeline confirm latency.
/// A loop sends no new pipeline after the deadline but waits for the one it has sent, so
/// every message in the stream is counted and the time includes that tail.
async fn publish(
    connections: Vec<MultiplexedConnection>,
    p: &RedisParams,
) -> Res<(u64, f64, Histogram<u64>)> {
    let payload: Arc<[u8]> = (0..p.message_bytes).map(|i| (i % 251) as u8).collect();
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
async fn consume(
    connections: Vec<MultiplexedConnection>,
    p: &RedisParams,
    target: u64,
) -> Res<(u64, f64)> {
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
