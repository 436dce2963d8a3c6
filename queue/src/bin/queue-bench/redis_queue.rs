//! Our queue on Redis Streams (`queue::streams::RedisQueue`), driven exactly as
//! `redis_streams.rs` drives raw Redis Streams, on a scratch server with the same settings
//! (`scratch_redis.rs`: `appendonly yes`, `appendfsync always`), so that the two figures
//! differ only by what our backend does per message.
//!
//! - publish: `producers` connections (one `RedisQueue` each: it multiplexes every script
//!   over one connection, as the raw side's `MultiplexedConnection`), each in a loop that
//!   publishes `pipeline` messages in one call and waits for the confirms: one
//!   `publish_batch` (all or nothing), or with `each` one `publish_each` (each message
//!   confirmed on its own); both are one `EVALSHA` of the publish script. With `ids` every
//!   message carries its own producer id, so the script also looks it up and stores it
//!   (`GET` + `SET … PX window`, the de-duplication). Counted as the raw side counts: from
//!   the first call until the last confirm, every confirmed message; the confirm latency
//!   once per call.
//! - consume + ack: `consumers` connections (one `RedisQueue` each), each repeating
//!   `fetch(max fetch_batch, lease 10 min, no wait)` and one `ack` of all its receipts
//!   until `min(consume_messages, published)` are acked; an empty fetch sleeps 1 ms, as
//!   the raw consumer's empty `XREADGROUP` does.
//!
//! The queues that publish and consume run no maintenance task of their own; one more
//! queue (the admin's, which creates the group and reads the statistics) runs it at the
//! default period, as one process of the real system would.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use queue::streams::{RedisConfig, RedisQueue, RedisTarget};
use queue::{AckOutcome, Config, Delivery, FetchOptions, Message, Queue, StartAt};
use serde_json::Value;

use super::scratch_redis::{PhaseMeter, Scratch};
use super::{Res, err, hist, join_all, micros};

const TOPIC: &str = "bench";
const GROUP: &str = "g";
/// Lease of a fetched message: longer than the phase, so nothing expires and comes back.
const LEASE_MS: u64 = 600_000;
/// The consume phase fails once it has run this long.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(300);

/// What to run; see the module documentation.
#[derive(Debug, Clone)]
pub struct QueueParams {
    pub message_bytes: usize,
    pub producers: usize,
    /// Messages per publish call (one round trip).
    pub pipeline: usize,
    pub publish_secs: f64,
    /// `publish_each` instead of `publish_batch`.
    pub each: bool,
    /// Every message with its own producer id (de-duplication on).
    pub ids: bool,
    pub consumers: usize,
    pub fetch_batch: usize,
    /// Messages to consume + ack (0: no consume phase).
    pub consume_messages: u64,
    /// Where the scratch server's directory goes (a real disk).
    pub dir: Option<PathBuf>,
}

impl QueueParams {
    /// The variant's name in the JSON: `batch_no_ids`, `batch_ids`, `each_no_ids`, `each_ids`.
    pub fn key(&self) -> &'static str {
        match (self.each, self.ids) {
            (false, false) => "batch_no_ids",
            (false, true) => "batch_ids",
            (true, false) => "each_no_ids",
            (true, true) => "each_ids",
        }
    }

    /// `publish_batch` / `publish_each`, with or without ids, for progress lines and JSON.
    pub fn label(&self) -> String {
        format!(
            "{}({}){}",
            if self.each {
                "publish_each"
            } else {
                "publish_batch"
            },
            self.pipeline,
            if self.ids {
                " with producer ids"
            } else {
                " without ids"
            }
        )
    }
}

/// The figures of one [`run`].
#[derive(Debug, Clone)]
pub struct QueueFigures {
    pub publish_msgs_per_s: f64,
    pub confirm_p50_us: u64,
    pub confirm_p99_us: u64,
    /// `None` without a consume phase.
    pub consume_ack_msgs_per_s: Option<f64>,
    pub published: u64,
    pub consumed: u64,
    /// The server's settings, read back.
    pub settings: Value,
    /// Server-side figures of each phase (`scratch_redis::PhaseMeter`).
    pub publish_server: Value,
    pub consume_server: Value,
}

/// A queue on the scratch server: maintenance at the default period for the admin's,
/// none for the others (see the module documentation).
async fn open(url: &str, maintenance: bool) -> Res<RedisQueue> {
    let mut cfg =
        RedisConfig::from_config(RedisTarget::Standalone(url.to_string()), &Config::default());
    if !maintenance {
        cfg.maintenance_interval_ms = None;
    }
    Ok(RedisQueue::connect(cfg).await?)
}

/// Runs both phases against a fresh scratch server; see the module documentation.
pub async fn run(p: &QueueParams) -> Res<QueueFigures> {
    let base = p.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut server = Scratch::start(&base, "redis-queue").await?;
    let settings = server.settings_json().await?;
    let url = server.url();
    // Start-up checks (appendonly, appendfsync always, noeviction) run in `connect`.
    let admin = open(&url, true).await?;
    admin.create_group(TOPIC, GROUP, StartAt::Earliest).await?;

    let mut producers = Vec::with_capacity(p.producers);
    for _ in 0..p.producers {
        producers.push(Arc::new(open(&url, false).await?));
    }
    note!(
        "redis-queue: publish: {} connections x {} for {}s",
        p.producers,
        p.label(),
        p.publish_secs
    );
    let meter = PhaseMeter::begin(&mut server.admin).await?;
    let (published, publish_secs, confirm) = publish(&producers, p).await?;
    let publish_server = meter.end(&mut server.admin, published).await?;
    drop(producers);
    let stats = admin.stats(TOPIC).await?;
    if stats.next_offset != published || stats.published != published || stats.duplicates != 0 {
        return Err(err(format!(
            "{published} confirmed, but the topic holds {} (published {}, duplicates {})",
            stats.next_offset, stats.published, stats.duplicates
        )));
    }
    let publish_msgs_per_s = published as f64 / publish_secs;
    let (confirm_p50_us, confirm_p99_us) = (
        confirm.value_at_quantile(0.5),
        confirm.value_at_quantile(0.99),
    );
    note!(
        "redis-queue: published {published} in {publish_secs:.2}s: {publish_msgs_per_s:.0} msgs/s, \
         confirm p50 {confirm_p50_us} µs p99 {confirm_p99_us} µs [appendfsync {}]",
        server.appendfsync
    );

    let target = p.consume_messages.min(published);
    let (consumed, consume_ack_msgs_per_s, consume_server) = if target == 0 {
        (0, None, Value::Null)
    } else {
        note!(
            "redis-queue: consume + ack: {target} messages, {} consumers, fetch(max {}) + ack",
            p.consumers,
            p.fetch_batch
        );
        let mut consumers = Vec::with_capacity(p.consumers);
        for _ in 0..p.consumers {
            consumers.push(Arc::new(open(&url, false).await?));
        }
        let meter = PhaseMeter::begin(&mut server.admin).await?;
        let (consumed, secs) = consume(&consumers, p, target).await?;
        let consume_server = meter.end(&mut server.admin, consumed).await?;
        let stats = admin.stats(TOPIC).await?;
        let g = stats
            .groups
            .iter()
            .find(|g| g.name == GROUP)
            .ok_or_else(|| err("the group is gone"))?;
        if g.in_flight != 0 || g.acked != target {
            return Err(err(format!(
                "after consume: {} in flight, {} acked of {target}",
                g.in_flight, g.acked
            )));
        }
        let rate = consumed as f64 / secs;
        note!(
            "redis-queue: consumed + acked {consumed} in {secs:.2}s: {rate:.0} msgs/s [appendfsync {}]",
            server.appendfsync
        );
        (consumed, Some(rate), consume_server)
    };
    admin.close()?;
    server.stop();
    Ok(QueueFigures {
        publish_msgs_per_s,
        confirm_p50_us,
        confirm_p99_us,
        consume_ack_msgs_per_s,
        published,
        consumed,
        settings,
        publish_server,
        consume_server,
    })
}

/// Producer ids unique in this run and spread over the whole id space, as tickets are.
fn id_of(n: u64) -> u128 {
    // A 64-bit mix (splitmix64's finaliser) of the counter in the high half, the counter
    // itself in the low half: unique, and not sequential in the dedup keys' text.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (u128::from(z) << 64) | u128::from(n)
}

/// Publishes until `p.publish_secs` have passed, as `redis_streams::publish` does: a loop
/// sends no new call after the deadline but waits for the one it sent.
async fn publish(
    producers: &[Arc<RedisQueue>],
    p: &QueueParams,
) -> Res<(u64, f64, Histogram<u64>)> {
    let payload = Bytes::from(
        (0..p.message_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let next_id = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(p.publish_secs);
    let mut handles = Vec::with_capacity(producers.len());
    for q in producers {
        let (q, payload, next_id) = (q.clone(), payload.clone(), next_id.clone());
        let (n, ids, each) = (p.pipeline, p.ids, p.each);
        handles.push(tokio::spawn(async move {
            let mut latency = hist()?;
            let mut confirmed = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let first = if ids {
                    next_id.fetch_add(n as u64, Ordering::Relaxed)
                } else {
                    0
                };
                let batch: Vec<Message> = (0..n as u64)
                    .map(|j| {
                        let m = Message::new(payload.clone());
                        if ids { m.with_id(id_of(first + j)) } else { m }
                    })
                    .collect();
                let confirms = if each {
                    q.publish_each(TOPIC, batch)
                        .await?
                        .into_iter()
                        .collect::<queue::Result<Vec<_>>>()?
                } else {
                    q.publish_batch(TOPIC, batch).await?
                };
                latency.saturating_record(micros(t0.elapsed()));
                if confirms.len() != n || confirms.iter().any(|c| c.duplicate) {
                    return Err(err(format!(
                        "{} confirms for {n} messages, or a duplicate",
                        confirms.len()
                    )));
                }
                confirmed += n as u64;
            }
            Ok((confirmed, latency))
        }));
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

/// The consumers read and ack until `target` messages are acked, claiming what they ask
/// for as `redis_streams::consume` does; returns the messages acked and the seconds.
async fn consume(consumers: &[Arc<RedisQueue>], p: &QueueParams, target: u64) -> Res<(u64, f64)> {
    let unclaimed = Arc::new(AtomicU64::new(target));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(consumers.len());
    for q in consumers {
        let (q, unclaimed) = (q.clone(), unclaimed.clone());
        let (batch, message_bytes) = (p.fetch_batch as u64, p.message_bytes);
        handles.push(tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                if start.elapsed() > CONSUME_TIMEOUT {
                    return Err(err("redis-queue: consume phase timed out"));
                }
                let mut take = 0;
                let claimed = unclaimed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                    take = u.min(batch);
                    (take > 0).then_some(u - take)
                });
                if claimed.is_err() {
                    break;
                }
                let ds = q
                    .fetch(
                        TOPIC,
                        GROUP,
                        FetchOptions {
                            max_messages: take as usize,
                            lease_ms: Some(LEASE_MS),
                            wait_ms: 0,
                        },
                    )
                    .await?;
                let got = ds.len() as u64;
                if got < take {
                    unclaimed.fetch_add(take - got, Ordering::SeqCst);
                }
                if ds.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                if ds.iter().any(|d| d.payload.len() != message_bytes) {
                    return Err(err("redis-queue: a delivery has the wrong payload length"));
                }
                let receipts: Vec<_> = ds.iter().map(Delivery::receipt).collect();
                let outcomes = q.ack(TOPIC, GROUP, &receipts).await?;
                if let Some(o) = outcomes.iter().find(|o| **o != AckOutcome::Acked) {
                    return Err(err(format!("redis-queue: an ack came back {o:?}")));
                }
                acked += got;
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
