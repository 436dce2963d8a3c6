//! The queue on Redis Streams: a third implementation of [`Queue`], on a standalone Redis
//! (with replicas, under Sentinel or not) or a Redis Cluster, chosen by the queue target
//! `redis://HOST:PORT` or `redis+cluster://HOST:PORT,HOST:PORT` (queue/REDIS.md).
//!
//! Every operation is one Lua script on one slot (all keys of a topic partition share the
//! hash tag `{topic:partition}`), so it is atomic and Cluster never sees CROSSSLOT:
//! - offsets are the stream ids, taken explicitly as `<seq>-1` at publish and never
//!   re-added, so a redelivery keeps its offset;
//! - the Redis consumer group reads new entries (`XREADGROUP`) and holds them pending until
//!   `XACK`; leases, retry times and the delivery count of a receipt live in sorted sets and
//!   a hash of our own, because a lease length is per fetch and a delayed entry is read
//!   before it is due;
//! - dead letters are a stream per partition, moved to in the same script that acks;
//! - retention is `XTRIM MINID` below what every group still needs, never `MAXLEN`.
//!
//! Options ride on the target's query string: `?replicas=N` (confirm only after `WAIT N`,
//! else "outcome unknown"), `replica_timeout_ms`, `fsync=relaxed`, `partitions=P` (for new
//! topics), `prefix=...`. The start-up checks refuse servers that could lose an acknowledged
//! message ([`conn::check`]).

mod conn;
mod keys;
mod reply;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value};
use tokio::sync::Semaphore;

pub use conn::{CLUSTER_PREFIX, REDIS_PREFIX, RedisTarget, Requirements, check};

use crate::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, Due, FetchOptions, GroupStats, Message, Peeked,
    Queue, Receipt, StartAt, TopicStats,
};
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{
    DLQ_SUFFIX, DeadMeta, cut, dead_letter_id, fetch_limits, validate_batch, validate_message,
    validate_name, validate_user_topic,
};
use crate::error::{Error, Result};
use crate::limits::{
    ACK_RECEIPTS_MAX, BATCH_MESSAGES_MAX, DEAD_LETTER_LIST_MAX, FETCH_WAIT_MS_MAX, GROUPS_MAX,
    NACK_DELAY_MS_MAX, PEEK_MESSAGES_MAX, READ_BYTES_MAX, TOPICS_MAX,
};
use conn::{Conn, conn_err};
use keys::{PartKeys, offset, split};
use reply::{array, bytes, entries, int, uint};

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 256;
/// Most consumers blocked in `XREAD` at once, each on a connection of its own; a fetch
/// beyond it polls every [`POLL_FALLBACK_MS`] instead.
pub const WAITERS_MAX: usize = 64;
/// Most publisher connections (with `replicas=N`: each publish and its `WAIT` take one
/// of their own); publishes beyond it wait for one.
pub const PUBLISHERS_MAX: usize = 16;
/// Most entries one `XREADGROUP` inside the fetch script reads at a time (the script
/// loops while it has room), bounding the script's memory with large payloads.
pub const READ_CHUNK_MAX: usize = 64;
/// Most dead-letter entries one listing looks at per partition (resolved ones behind a
/// pending one are skipped, not returned).
pub const DEAD_SCAN_MAX: usize = 10_000;
/// How often a long poll that found no free blocking connection looks again.
pub const POLL_FALLBACK_MS: u64 = 20;
/// In a cluster a long poll blocks on one partition at a time, this long at most, then
/// looks at all of them again.
pub const CLUSTER_BLOCK_SLICE_MS: u64 = 250;
/// Most expired leases one fetch turns back into retries (the rest: the next call).
pub const EXPIRE_PER_FETCH_MAX: usize = 1000;
/// Default key prefix.
pub const PREFIX_DEFAULT: &str = "seckill:q:";

/// Settings of a [`RedisQueue`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: RedisTarget,
    /// Prefix of every key (several systems can share one Redis).
    pub prefix: String,
    /// Partitions of a topic this client creates (an existing topic keeps its own).
    pub partitions: u32,
    /// Replicas that must acknowledge a publish (`WAIT`); 0: the primary's answer.
    pub replicas: u32,
    /// How long a publish waits for them before answering "outcome unknown".
    pub replica_timeout_ms: u64,
    /// Require `appendfsync always` (the default); `false` accepts `everysec`.
    pub fsync_always: bool,
    /// Deliveries after which a failed message is dead-lettered.
    pub max_attempts: u32,
    /// Lease length used when a fetch does not name one.
    pub lease_ms_default: u64,
    /// How long a producer id is remembered for de-duplication.
    pub dedup_window_ms: u64,
    /// Most retained messages per partition before `publish` fails with `Full`.
    pub backlog_messages_max: u64,
    /// Most retained bytes (payload + 64 each, as the engine counts) per partition before
    /// `publish` fails with `Full`.
    pub backlog_bytes_max: u64,
    /// Most leased messages per group and partition.
    pub in_flight_max: usize,
    /// Period of the maintenance task (lease expiry, dead-lettering, trimming); `None`:
    /// callers call [`RedisQueue::tick`].
    pub maintenance_interval_ms: Option<u64>,
    /// The clock scripts use; `None`: the Redis server's (production: "never early" and
    /// lease deadlines then do not depend on clients' clocks).
    pub clock: Option<Arc<dyn Clock>>,
}

impl RedisConfig {
    /// Defaults for `target`.
    pub fn new(target: RedisTarget) -> RedisConfig {
        RedisConfig::from_config(target, &Config::default())
    }

    /// The queue semantics of an engine [`Config`] (attempts, lease, de-duplication
    /// window, backlog, in-flight limit, maintenance period) on Redis at `target`; the
    /// server's clock.
    pub fn from_config(target: RedisTarget, c: &Config) -> RedisConfig {
        RedisConfig {
            target,
            prefix: PREFIX_DEFAULT.to_string(),
            partitions: 1,
            replicas: 0,
            replica_timeout_ms: 1_000,
            fsync_always: true,
            max_attempts: c.max_attempts.max(1),
            lease_ms_default: c.lease_ms_default,
            dedup_window_ms: c.dedup_window_ms.max(1),
            backlog_messages_max: c.backlog_messages_max,
            backlog_bytes_max: c.backlog_bytes_max,
            in_flight_max: c.in_flight_max,
            maintenance_interval_ms: c.maintenance_interval_ms.map(|m| m.max(100)),
            clock: None,
        }
    }

    /// Parses a queue target with its options (`redis://HOST:PORT?replicas=1&partitions=3`);
    /// `None` when `target` is not a Redis one.
    pub fn parse(target: &str, base: &Config) -> Option<Result<RedisConfig>> {
        let (addr, query) = match target.trim().split_once('?') {
            Some((a, q)) => (a, q),
            None => (target.trim(), ""),
        };
        let parsed = RedisTarget::parse(addr)?;
        Some(parsed.and_then(|t| {
            let mut c = RedisConfig::from_config(t, base);
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let num = |v: &str| -> Result<u64> {
                    v.parse().map_err(|_| {
                        Error::Invalid(format!("queue option {k}={v:?} is not a number"))
                    })
                };
                match k {
                    "replicas" => c.replicas = u32::try_from(num(v)?).unwrap_or(u32::MAX),
                    "replica_timeout_ms" => c.replica_timeout_ms = num(v)?.max(1),
                    "partitions" => {
                        let p = num(v)?;
                        if p == 0 || p > u64::from(PARTITIONS_MAX) {
                            return Err(Error::Invalid(format!(
                                "partitions={p}: a topic has 1..={PARTITIONS_MAX}"
                            )));
                        }
                        c.partitions = p as u32;
                    }
                    "fsync" => match v {
                        "always" => c.fsync_always = true,
                        "relaxed" => c.fsync_always = false,
                        _ => {
                            return Err(Error::Invalid(format!(
                                "fsync={v:?}: `always` (the default) or `relaxed`"
                            )));
                        }
                    },
                    "prefix" => {
                        if v.contains(['{', '}']) {
                            return Err(Error::Invalid("prefix must not hold { or }".into()));
                        }
                        c.prefix = v.to_string();
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "unknown queue option {k:?} (known: replicas, replica_timeout_ms, fsync, partitions, prefix)"
                        )));
                    }
                }
            }
            Ok(c)
        }))
    }
}

struct Scripts {
    publish: Script,
    fetch: Script,
    ack: Script,
    nack: Script,
    create_group: Script,
    maintain: Script,
    stats: Script,
    replay: Script,
    discard: Script,
    dead_list: Script,
    register: Script,
}

impl Scripts {
    fn new() -> Scripts {
        const COMMON: &str = include_str!("lua/common.lua");
        // Script flags (Redis 7). Those that add messages (publish, replay) declare none:
        // Redis refuses them *before* they run when it is out of memory, so an OOM never
        // leaves half a step behind and the caller knows nothing was stored. Those that
        // hand out, finish or clean up entries may run out of memory (`allow-oom`), or a
        // full Redis could never be drained; the read-only ones say `no-writes`. Every
        // script touches only the keys it declares, all of one slot.
        let s = |flags: &str, body: &str| Script::new(&format!("#!lua{flags}\n{COMMON}\n{body}"));
        const ADDS: &str = "";
        const DRAINS: &str = " flags=allow-oom";
        const READS: &str = " flags=no-writes,allow-oom";
        Scripts {
            publish: s(ADDS, include_str!("lua/publish.lua")),
            fetch: s(DRAINS, include_str!("lua/fetch.lua")),
            ack: s(DRAINS, include_str!("lua/ack.lua")),
            nack: s(DRAINS, include_str!("lua/nack.lua")),
            create_group: s(DRAINS, include_str!("lua/create_group.lua")),
            maintain: s(DRAINS, include_str!("lua/maintain.lua")),
            stats: s(READS, include_str!("lua/stats.lua")),
            replay: s(ADDS, include_str!("lua/replay.lua")),
            discard: s(DRAINS, include_str!("lua/discard.lua")),
            dead_list: s(READS, include_str!("lua/dead_list.lua")),
            register: s(ADDS, include_str!("lua/register.lua")),
        }
    }
}

struct Inner {
    config: RedisConfig,
    conn: Conn,
    scripts: Scripts,
    /// This client's consumer name, stable for its life: `{host}-{pid}-{n}`.
    consumer: String,
    /// Known topics and their partitions.
    topics: Mutex<HashMap<String, u32>>,
    /// Round-robin position for publishes without an id and for fetches.
    rr: AtomicU32,
    waiters: Semaphore,
    idle_blocking: Mutex<Vec<Conn>>,
    publishers: Semaphore,
    idle_publishers: Mutex<Vec<Conn>>,
    closed: AtomicBool,
}

/// The queue on Redis Streams. Cheap to share (`Arc` inside the `Backend`).
pub struct RedisQueue {
    inner: Arc<Inner>,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("target", &self.inner.config.target)
            .field("prefix", &self.inner.config.prefix)
            .field("consumer", &self.inner.consumer)
            .finish()
    }
}

/// What a fetch of one partition says about when to look again.
struct Poll {
    partition: u32,
    now_ms: u64,
    wake_ms: Option<u64>,
    next_seq: u64,
    wake_id: String,
}

fn consumer_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn due_args(due: Due) -> (u8, u64) {
    match due {
        Due::Now => (0, 0),
        Due::At(t) => (1, t),
        Due::After(ms) => (2, ms),
    }
}

/// The same error again, for each message of a call that failed as a whole.
fn dup_error(e: &Error) -> Error {
    match e {
        Error::Connection(m) => Error::Connection(m.clone()),
        Error::Full { topic, what, limit } => Error::Full {
            topic: topic.clone(),
            what,
            limit: *limit,
        },
        Error::Invalid(m) => Error::Invalid(m.clone()),
        Error::Closed => Error::Closed,
        other => Error::Remote {
            code: 0,
            message: other.to_string(),
        },
    }
}

fn outcome(code: i64) -> Result<AckOutcome> {
    Ok(match code {
        0 => AckOutcome::Acked,
        1 => AckOutcome::AlreadyAcked,
        2 => AckOutcome::LeaseLost,
        3 => AckOutcome::Unknown,
        other => return Err(reply::bad(&format!("ack outcome {other}"))),
    })
}

impl RedisQueue {
    /// Connects, runs the start-up checks ([`check`]) and starts the maintenance task.
    pub async fn connect(config: RedisConfig) -> Result<RedisQueue> {
        if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
            return Err(Error::Invalid(format!(
                "a topic has 1..={PARTITIONS_MAX} partitions, not {}",
                config.partitions
            )));
        }
        check(
            &config.target,
            Requirements {
                fsync_always: config.fsync_always,
            },
        )
        .await?;
        let conn = conn::open_shared(&config.target).await?;
        let inner = Arc::new(Inner {
            conn,
            scripts: Scripts::new(),
            consumer: consumer_name(),
            topics: Mutex::new(HashMap::new()),
            rr: AtomicU32::new(rand_start()),
            waiters: Semaphore::new(WAITERS_MAX),
            idle_blocking: Mutex::new(Vec::new()),
            publishers: Semaphore::new(PUBLISHERS_MAX),
            idle_publishers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            config,
        });
        let q = RedisQueue {
            inner,
            maintenance: Mutex::new(None),
        };
        if let Some(period) = q.inner.config.maintenance_interval_ms {
            let weak = Arc::downgrade(&q.inner);
            let handle = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(period));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Err(e) = inner.tick().await {
                        tracing::warn!(error = %e, "redis queue maintenance failed; will retry");
                    }
                }
            });
            *lock(&q.maintenance) = Some(handle);
        }
        Ok(q)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// One round of maintenance on every topic (the background task runs it; tests with a
    /// manual clock call it): expires leases, dead-letters exhausted messages, forgets
    /// fired delays, trims what every group is done with. Safe to run from every process
    /// at once.
    pub async fn tick(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.tick().await
    }

    /// Stops the maintenance task; later calls fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(h) = lock(&self.maintenance).take() {
            h.abort();
        }
        Ok(())
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.maintenance).take() {
            h.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rand_start() -> u32 {
    // Different processes start their round-robin at different partitions.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id()
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn now_arg(&self) -> String {
        self.config
            .clock
            .as_ref()
            .map(|c| c.now_ms().to_string())
            .unwrap_or_default()
    }

    fn part(&self, topic: &str, p: u32) -> PartKeys {
        PartKeys::new(&self.config.prefix, topic, p)
    }

    fn full(&self, topic: &str, what: &'static str) -> Error {
        Error::Full {
            topic: topic.to_string(),
            what,
            limit: if what == "bytes" {
                self.config.backlog_bytes_max
            } else {
                self.config.backlog_messages_max
            },
        }
    }

    /// Maps a script's error: our own codes (`Q...`) to the queue's errors, lost
    /// connections to `Error::Connection` (the outcome is unknown), the rest to `Remote`.
    fn script_err(&self, e: redis::RedisError, topic: &str, dead_offset: u64) -> Error {
        match e.code() {
            Some("QFULL") if e.detail() == Some("bytes") => self.full(topic, "bytes"),
            Some("QFULL") => self.full(topic, "messages"),
            Some("QNOGROUP") => Error::Invalid(format!(
                "no group {:?} on topic {topic:?}",
                e.detail().unwrap_or("")
            )),
            Some("QLIMIT") if e.detail() == Some("topics") => Error::Limit {
                what: "topics",
                limit: TOPICS_MAX as u64,
            },
            Some("QLIMIT") => Error::Limit {
                what: "groups per topic",
                limit: GROUPS_MAX as u64,
            },
            // Refused before the script ran (script flags): nothing was stored.
            Some("OOM") => Error::Full {
                topic: topic.to_string(),
                what: "bytes",
                limit: 0,
            },
            Some("QNODEAD") => Error::NoSuchDeadLetter {
                topic: topic.to_string(),
                offset: dead_offset,
            },
            _ if is_connection_error(&e) => conn_err(e),
            _ => Error::Remote {
                code: 0,
                message: format!("redis: {e}"),
            },
        }
    }

    /// Runs `script` on the shared connection; errors name `topic` (and `dead_offset`).
    async fn run(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        topic: &str,
        dead_offset: u64,
    ) -> Result<Value> {
        let mut conn = self.conn.clone();
        self.run_on(&mut conn, script, keys, args, topic, dead_offset)
            .await
    }

    /// [`Inner::run`] on a given connection (a publisher's, for `WAIT`).
    async fn run_on(
        &self,
        conn: &mut Conn,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        topic: &str,
        dead_offset: u64,
    ) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a.as_slice());
        }
        inv.invoke_async(conn)
            .await
            .map_err(|e| self.script_err(e, topic, dead_offset))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(conn_err)
    }

    /// Partitions of an existing topic, else `NoSuchTopic`.
    async fn partitions(&self, topic: &str) -> Result<u32> {
        if let Some(p) = lock(&self.topics).get(topic) {
            return Ok(*p);
        }
        let p: Option<u32> = self
            .query(
                redis::cmd("HGET")
                    .arg(keys::registry(&self.config.prefix))
                    .arg(topic),
            )
            .await?;
        match p {
            Some(p) if (1..=PARTITIONS_MAX).contains(&p) => {
                lock(&self.topics).insert(topic.to_string(), p);
                Ok(p)
            }
            Some(p) => Err(Error::Remote {
                code: 0,
                message: format!("topic {topic:?} is registered with {p} partitions"),
            }),
            None => Err(Error::NoSuchTopic(topic.to_string())),
        }
    }

    /// Partitions of `topic`, registering it with this client's partition count if new.
    async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        match self.partitions(topic).await {
            Err(Error::NoSuchTopic(_)) => {}
            other => return other,
        }
        let registry = keys::registry(&self.config.prefix);
        let args = [
            topic.as_bytes().to_vec(),
            self.config.partitions.to_string().into_bytes(),
            TOPICS_MAX.to_string().into_bytes(),
        ];
        self.run(&self.scripts.register, &[registry], &args, topic, 0)
            .await?;
        self.partitions(topic).await
    }

    fn pick_partition(&self, id: Option<u128>, parts: u32) -> u32 {
        match id {
            // A retry of the same id lands where the first attempt did.
            Some(id) => (id % u128::from(parts)) as u32,
            None => self.rr.fetch_add(1, Ordering::Relaxed) % parts,
        }
    }

    /// Publishes `messages` into partition `p`; `batch`: all or nothing. A partition that
    /// is full runs a maintenance round first (an ack frees room only once retention has
    /// trimmed, as in the engine it does at once) and is asked again, once.
    async fn publish_part(
        &self,
        topic: &str,
        p: u32,
        messages: &[&Message],
        batch: bool,
    ) -> Result<Vec<Result<Confirm>>> {
        let full = |e: &Error| matches!(e, Error::Full { .. });
        match self.publish_once(topic, p, messages, batch).await {
            Err(e) if full(&e) => {
                self.maintain_partition(topic, p).await?;
                self.publish_once(topic, p, messages, batch).await
            }
            Ok(mut out) if out.iter().any(|r| r.as_ref().is_err_and(full)) => {
                self.maintain_partition(topic, p).await?;
                let again: Vec<usize> = (0..out.len())
                    .filter(|&i| out[i].as_ref().is_err_and(full))
                    .collect();
                let retry: Vec<&Message> = again.iter().map(|&i| messages[i]).collect();
                // The first call's results stand; the retry's answer (or its error) is for
                // the retried messages only.
                match self.publish_once(topic, p, &retry, false).await {
                    Ok(second) => {
                        for (i, r) in again.into_iter().zip(second) {
                            out[i] = r;
                        }
                    }
                    Err(e) => {
                        for i in again {
                            out[i] = Err(dup_error(&e));
                        }
                    }
                }
                Ok(out)
            }
            other => other,
        }
    }

    /// Publishes `messages` into partition `p` with one script.
    async fn publish_once(
        &self,
        topic: &str,
        p: u32,
        messages: &[&Message],
        batch: bool,
    ) -> Result<Vec<Result<Confirm>>> {
        let k = self.part(topic, p);
        let mut keys = vec![k.stream(), k.next(), k.delays(), k.counters()];
        let mut args: Vec<Vec<u8>> = vec![
            self.now_arg().into_bytes(),
            self.config.dedup_window_ms.to_string().into_bytes(),
            self.config.backlog_messages_max.to_string().into_bytes(),
            self.config.backlog_bytes_max.to_string().into_bytes(),
            if batch {
                b"batch".to_vec()
            } else {
                b"each".to_vec()
            },
            messages.len().to_string().into_bytes(),
        ];
        for m in messages {
            // A message without an id names a key of its slot it never reads.
            keys.push(m.id.map_or_else(|| k.counters(), |id| k.dedup(id)));
            let (kind, value) = due_args(m.due);
            args.push(
                m.id.map(|id| format!("{id:032x}"))
                    .unwrap_or_default()
                    .into_bytes(),
            );
            args.push(reply::encode_headers(&m.headers));
            args.push(m.payload.to_vec());
            args.push(kind.to_string().into_bytes());
            args.push(value.to_string().into_bytes());
        }
        let v = if self.config.replicas > 0 {
            self.publish_replicated(&k.stream(), &keys, &args, topic)
                .await?
        } else {
            self.run(&self.scripts.publish, &keys, &args, topic, 0)
                .await?
        };
        let mut out = Vec::with_capacity(messages.len());
        for pair in array(v)? {
            let pair = array(pair)?;
            let (Some(seq), Some(flag)) = (pair.first(), pair.get(1)) else {
                return Err(reply::bad("publish reply"));
            };
            out.push(match int(flag)? {
                2 => Err(self.full(topic, "messages")),
                3 => Err(self.full(topic, "bytes")),
                flag => Ok(Confirm {
                    offset: offset(p, uint(seq)?),
                    duplicate: flag == 1,
                }),
            });
        }
        if out.len() != messages.len() {
            return Err(reply::bad("publish reply count"));
        }
        Ok(out)
    }

    /// Runs the publish script and then `WAIT replicas timeout` on one publisher
    /// connection of its own (at most [`PUBLISHERS_MAX`]): `WAIT` counts the writes of the
    /// connection it is sent on, and it blocks that connection while it waits, which must
    /// not stall the shared one. A connection that failed is dropped, never reused, so the
    /// `WAIT` always follows its write on the same server connection (in a cluster, the
    /// master of the written key). Fewer acknowledgements: "outcome unknown", retry with
    /// the same id.
    async fn publish_replicated(
        &self,
        key: &str,
        keys: &[String],
        args: &[Vec<u8>],
        topic: &str,
    ) -> Result<Value> {
        let _permit = self.publishers.acquire().await.map_err(|_| Error::Closed)?;
        let idle = lock(&self.idle_publishers).pop();
        let mut conn = match idle {
            Some(c) => c,
            None => conn::open(&self.config.target, Some(conn::COMMAND_TIMEOUT)).await?,
        };
        let v = self
            .run_on(&mut conn, &self.scripts.publish, keys, args, topic, 0)
            .await?;
        let want = self.config.replicas;
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(want).arg(self.config.replica_timeout_ms);
        let got = match &mut conn {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot_of(key), SlotAddr::Master),
                ));
                c.route_command(cmd, route)
                    .await
                    .map_err(conn_err)
                    .and_then(|v| int(&v))
            }
            other => cmd.query_async::<i64>(other).await.map_err(conn_err),
        }?;
        lock(&self.idle_publishers).push(conn);
        if got < i64::from(want) {
            return Err(Error::Connection(format!(
                "outcome unknown: {got} of {want} replicas acknowledged within {} ms; retry with the same message id",
                self.config.replica_timeout_ms
            )));
        }
        Ok(v)
    }

    async fn fetch_part(
        &self,
        topic: &str,
        group: &str,
        p: u32,
        max: usize,
        lease_ms: u64,
        max_bytes: u64,
    ) -> Result<(Vec<Delivery>, Poll)> {
        let k = self.part(topic, p);
        let g = k.group(group);
        let keys = [
            k.stream(),
            k.groups(),
            k.next(),
            g.lease,
            g.hold,
            g.wait,
            g.att,
            g.counters,
            g.cursor,
            k.dead(),
            k.dead_next(),
            k.wake(),
        ];
        let args: Vec<Vec<u8>> = [
            self.now_arg(),
            group.to_string(),
            self.consumer.clone(),
            max.to_string(),
            lease_ms.to_string(),
            self.config.max_attempts.to_string(),
            max_bytes.to_string(),
            self.config.in_flight_max.to_string(),
            GROUPS_MAX.to_string(),
            READ_CHUNK_MAX.to_string(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        let v = self
            .run(&self.scripts.fetch, &keys, &args, topic, 0)
            .await?;
        let mut it = array(v)?.into_iter();
        let mut head = || it.next().ok_or_else(|| reply::bad("short fetch reply"));
        let now_ms = uint(&head()?)?;
        let wake = int(&head()?)?;
        let next_seq = uint(&head()?)?;
        let wake_id = String::from_utf8(bytes(head()?)?).map_err(|_| reply::bad("wake id"))?;
        let lease_until_ms = uint(&head()?)?;
        let mut out = Vec::new();
        for d in it {
            let mut d = array(d)?;
            if d.len() < 2 {
                return Err(reply::bad("delivery"));
            }
            let rest = d.split_off(2);
            let seq = uint(&d[0])?;
            let attempt = u32::try_from(uint(&d[1])?).unwrap_or(u32::MAX);
            let f = reply::fields(rest)?;
            out.push(Delivery {
                offset: offset(p, seq),
                attempt,
                id: f.id,
                headers: f.headers,
                payload: f.payload,
                due_ms: f.due_ms,
                lease_until_ms,
            });
        }
        let poll = Poll {
            partition: p,
            now_ms,
            wake_ms: u64::try_from(wake).ok(),
            next_seq,
            wake_id,
        };
        Ok((out, poll))
    }

    /// Waits up to `block_ms` for something new in the partitions (a publish or a nack),
    /// on a connection of its own.
    async fn block(&self, topic: &str, polls: &[Poll], block_ms: u64) -> Result<()> {
        let cluster = matches!(self.config.target, RedisTarget::Cluster(_));
        let Ok(_permit) = self.waiters.try_acquire() else {
            tokio::time::sleep(Duration::from_millis(block_ms.min(POLL_FALLBACK_MS))).await;
            return Ok(());
        };
        let chosen = if cluster {
            &polls[..1.min(polls.len())]
        } else {
            polls
        };
        if chosen.is_empty() {
            return Ok(());
        }
        let block_ms = if cluster {
            block_ms.min(CLUSTER_BLOCK_SLICE_MS)
        } else {
            block_ms
        };
        let conn = lock(&self.idle_blocking).pop();
        let mut conn = match conn {
            Some(c) => c,
            None => conn::open(&self.config.target, None).await?,
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK").arg(block_ms.max(1)).arg("STREAMS");
        for poll in chosen {
            let k = self.part(topic, poll.partition);
            cmd.arg(k.stream()).arg(k.wake());
        }
        for poll in chosen {
            let last = match poll.next_seq {
                0 => "0-0".to_string(),
                n => format!("{}-1", n - 1),
            };
            cmd.arg(last).arg(&poll.wake_id);
        }
        // The block is bounded on our side too: a connection that died silently (a
        // network partition) must not hold the fetch past its wait.
        let bound = Duration::from_millis(block_ms.max(1)) + conn::COMMAND_TIMEOUT;
        let r = tokio::time::timeout(bound, cmd.query_async::<Value>(&mut conn)).await;
        match r {
            Ok(Ok(_)) => {
                lock(&self.idle_blocking).push(conn);
                Ok(())
            }
            // A failed or stuck blocking connection is dropped and the wait counts as a
            // wake-up: the next fetch, on the shared connection, says what is wrong.
            Ok(Err(e)) if is_connection_error(&e) => Ok(()),
            Err(_) => Ok(()),
            Ok(Err(e)) => {
                lock(&self.idle_blocking).push(conn);
                Err(Error::Remote {
                    code: 0,
                    message: format!("redis: {e}"),
                })
            }
        }
    }

    async fn group_names(&self, k: &PartKeys) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(k.groups())).await?;
        names.sort();
        Ok(names)
    }

    async fn tick(&self) -> Result<()> {
        let registry: HashMap<String, u32> = self
            .query(redis::cmd("HGETALL").arg(keys::registry(&self.config.prefix)))
            .await?;
        // Every partition gets its round even when one fails; the first error is reported.
        let mut first_error = None;
        for (topic, parts) in registry {
            for p in 0..parts.min(PARTITIONS_MAX) {
                if let Err(e) = self.maintain_partition(&topic, p).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One maintenance round on partition `p` of `topic` (the `maintain` script).
    async fn maintain_partition(&self, topic: &str, p: u32) -> Result<()> {
        let k = self.part(topic, p);
        let groups = self.group_names(&k).await?;
        let mut keys = vec![
            k.stream(),
            k.groups(),
            k.delays(),
            k.dead(),
            k.dead_next(),
            k.dead_done(),
            k.counters(),
        ];
        let mut args = vec![
            self.now_arg().into_bytes(),
            self.config.max_attempts.to_string().into_bytes(),
        ];
        for g in &groups {
            let gk = k.group(g);
            keys.extend([gk.lease, gk.hold, gk.wait, gk.att, gk.counters, gk.cursor]);
            args.push(g.clone().into_bytes());
        }
        self.run(&self.scripts.maintain, &keys, &args, topic, 0)
            .await?;
        Ok(())
    }

    /// Runs the ack script, or with `nack` the nack script (which also needs the dead-letter
    /// and wake keys), on partition `p` of `group`.
    async fn group_call(
        &self,
        nack: bool,
        topic: &str,
        group: &str,
        p: u32,
        head: Vec<String>,
        tail: Vec<Vec<u8>>,
    ) -> Result<Value> {
        let k = self.part(topic, p);
        let g = k.group(group);
        let mut keys = vec![
            k.stream(),
            k.groups(),
            k.next(),
            g.lease,
            g.hold,
            g.wait,
            g.att,
            g.counters,
            g.cursor,
        ];
        let script = if nack {
            keys.extend([k.dead(), k.dead_next(), k.wake()]);
            &self.scripts.nack
        } else {
            &self.scripts.ack
        };
        let mut args: Vec<Vec<u8>> = head.into_iter().map(String::into_bytes).collect();
        args.extend(tail);
        self.run(script, &keys, &args, topic, 0).await
    }

    /// Partition and dead seq of a dead letter of `topic`, checking what can be checked
    /// before asking Redis.
    async fn dead_partition(&self, topic: &str, dead_offset: u64) -> Result<(u32, u64)> {
        self.check_open()?;
        validate_user_topic(topic)?;
        let parts = self.partitions(topic).await?;
        let (p, dseq) = split(dead_offset);
        if p >= parts {
            return Err(Error::NoSuchDeadLetter {
                topic: topic.to_string(),
                offset: dead_offset,
            });
        }
        Ok((p, dseq))
    }

    fn dead_letter(&self, p: u32, dseq: u64, f: reply::Fields) -> DeadLetter {
        DeadLetter {
            dead_offset: offset(p, dseq),
            group: f.group.unwrap_or_default(),
            original_offset: offset(p, f.original_seq),
            attempts: f.attempts,
            reason: f.reason,
            dead_at_ms: f.at_ms,
            id: f.id,
            headers: f.headers,
            payload: f.payload,
        }
    }
}

/// The cluster slot of `key` (CRC16 of its hash tag), for routing `WAIT` to the master
/// that took the write.
fn slot_of(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|&c| c == b'{').and_then(|open| {
        let close = b[open + 1..].iter().position(|&c| c == b'}')?;
        (close > 0).then(|| &b[open + 1..open + 1 + close])
    });
    crc16_xmodem(tagged.unwrap_or(b)) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    async fn publish(&self, topic: &str, message: Message) -> Result<Confirm> {
        let mut c = self.publish_batch(topic, vec![message]).await?;
        c.pop().ok_or_else(|| reply::bad("empty confirm"))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Confirm>> {
        let q = &self.inner;
        q.check_open()?;
        validate_user_topic(topic)?;
        validate_batch(&messages)?;
        let parts = q.ensure_topic(topic).await?;
        // All or nothing needs one script: a batch goes to one partition. Its ids must all
        // belong there, or a later publish of one of them alone would miss its
        // de-duplication entry.
        let p = q.pick_partition(messages[0].id, parts);
        if parts > 1
            && messages.iter().any(|m| {
                m.id.is_some_and(|id| q.pick_partition(Some(id), parts) != p)
            })
        {
            return Err(Error::Invalid(format!(
                "topic {topic:?} has {parts} partitions: a batch's producer ids must all map to one (id % {parts})"
            )));
        }
        let refs: Vec<&Message> = messages.iter().collect();
        q.publish_part(topic, p, &refs, true)
            .await?
            .into_iter()
            .collect()
    }

    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        let q = &self.inner;
        q.check_open()?;
        validate_user_topic(topic)?;
        if messages.len() > BATCH_MESSAGES_MAX {
            return Err(Error::Invalid(format!(
                "at most {BATCH_MESSAGES_MAX} messages per call, not {}",
                messages.len()
            )));
        }
        let parts = q.ensure_topic(topic).await?;
        let mut out: Vec<Option<Result<Confirm>>> = Vec::with_capacity(messages.len());
        let mut by_part: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            match validate_message(m) {
                Ok(()) => {
                    by_part
                        .entry(q.pick_partition(m.id, parts))
                        .or_default()
                        .push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let calls = by_part.into_iter().map(|(p, idx)| {
            let refs: Vec<&Message> = idx.iter().map(|&i| &messages[i]).collect();
            async move { (idx, q.publish_part(topic, p, &refs, false).await) }
        });
        // One script per partition, in turn (few partitions per call).
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await);
        }
        for (idx, r) in results {
            match r {
                Ok(confirms) => {
                    for (i, c) in idx.into_iter().zip(confirms) {
                        out[i] = Some(c);
                    }
                }
                Err(e) => {
                    // The one error of this partition's call, for each of its messages.
                    for i in idx {
                        out[i] = Some(Err(dup_error(&e)));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(reply::bad("missing confirm"))))
            .collect())
    }

    async fn create_group(&self, topic: &str, group: &str, start: StartAt) -> Result<()> {
        let q = &self.inner;
        q.check_open()?;
        validate_user_topic(topic)?;
        validate_name("group", group)?;
        let parts = q.ensure_topic(topic).await?;
        for p in 0..parts {
            let k = q.part(topic, p);
            let keys = [k.stream(), k.groups(), k.next(), k.group(group).cursor];
            let args = [
                group.as_bytes().to_vec(),
                if start == StartAt::Latest { b"1" } else { b"0" }.to_vec(),
                GROUPS_MAX.to_string().into_bytes(),
            ];
            q.run(&q.scripts.create_group, &keys, &args, topic, 0)
                .await?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> Result<Vec<Delivery>> {
        let q = &self.inner;
        q.check_open()?;
        validate_user_topic(topic)?;
        validate_name("group", group)?;
        let (max, lease_ms) = fetch_limits(&options, q.config.lease_ms_default)?;
        let parts = q.ensure_topic(topic).await?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(options.wait_ms.min(FETCH_WAIT_MS_MAX));
        loop {
            let start = q.rr.fetch_add(1, Ordering::Relaxed) % parts;
            let mut out: Vec<Delivery> = Vec::new();
            let mut polls = Vec::new();
            let mut bytes = 0u64;
            for i in 0..parts {
                if out.len() >= max || bytes >= READ_BYTES_MAX {
                    break;
                }
                let p = (start + i) % parts;
                let part = q
                    .fetch_part(
                        topic,
                        group,
                        p,
                        max - out.len(),
                        lease_ms,
                        READ_BYTES_MAX - bytes,
                    )
                    .await;
                let (got, poll) = match part {
                    Ok(r) => r,
                    // What earlier partitions leased is handed out, not left to expire.
                    Err(e) if !out.is_empty() => {
                        tracing::warn!(topic, partition = p, error = %e, "fetch of a partition failed");
                        return Ok(out);
                    }
                    Err(e) => return Err(e),
                };
                bytes += got.iter().map(|d| d.payload.len() as u64).sum::<u64>();
                out.extend(got);
                polls.push(poll);
            }
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            q.check_open()?;
            let mut block = deadline.saturating_duration_since(now).as_millis() as u64;
            for poll in &polls {
                if let Some(w) = poll.wake_ms {
                    block = block.min(w.saturating_sub(poll.now_ms).max(1));
                }
            }
            q.block(topic, &polls, block.max(1)).await?;
        }
    }

    async fn ack(&self, topic: &str, group: &str, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        let q = &self.inner;
        q.check_open()?;
        if receipts.len() > ACK_RECEIPTS_MAX {
            return Err(Error::Invalid(format!(
                "at most {ACK_RECEIPTS_MAX} receipts per ack"
            )));
        }
        let parts = q.partitions(topic).await?;
        let mut out = vec![AckOutcome::Unknown; receipts.len()];
        let mut by_part: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, r) in receipts.iter().enumerate() {
            let (p, _) = split(r.offset);
            if p < parts {
                by_part.entry(p).or_default().push(i);
            }
        }
        if by_part.is_empty() && !receipts.is_empty() {
            // Still refuse an unknown group, as every other backend does.
            q.group_call(false, topic, group, 0, vec![group.into()], vec![])
                .await?;
        }
        for (p, idx) in by_part {
            let mut tail = Vec::with_capacity(idx.len() * 2);
            for &i in &idx {
                tail.push(split(receipts[i].offset).1.to_string().into_bytes());
                tail.push(receipts[i].attempt.to_string().into_bytes());
            }
            let v = q
                .group_call(false, topic, group, p, vec![group.into()], tail)
                .await?;
            let codes = array(v)?;
            if codes.len() != idx.len() {
                return Err(reply::bad("ack reply count"));
            }
            for (i, c) in idx.into_iter().zip(codes) {
                out[i] = outcome(int(&c)?)?;
            }
        }
        Ok(out)
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> Result<AckOutcome> {
        if delay_ms > NACK_DELAY_MS_MAX {
            return Err(Error::Invalid(format!(
                "retry delay of {delay_ms} ms exceeds {NACK_DELAY_MS_MAX} ms"
            )));
        }
        self.give_back(topic, group, receipt, delay_ms, false, reason)
            .await
    }

    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        reason: &str,
    ) -> Result<AckOutcome> {
        self.give_back(topic, group, receipt, 0, true, reason).await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let q = &self.inner;
        q.check_open()?;
        validate_user_topic(topic)?;
        let parts = q.partitions(topic).await?;
        let limit = limit.clamp(1, DEAD_LETTER_LIST_MAX);
        let (first, from_seq) = split(from_dead_offset);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for p in first..parts {
            if out.len() >= limit || bytes >= READ_BYTES_MAX {
                break;
            }
            let k = q.part(topic, p);
            let from = if p == first { from_seq } else { 0 };
            let args = [
                from.to_string().into_bytes(),
                (limit - out.len()).to_string().into_bytes(),
                (READ_BYTES_MAX - bytes).to_string().into_bytes(),
                DEAD_SCAN_MAX.to_string().into_bytes(),
            ];
            let v = q
                .run(
                    &q.scripts.dead_list,
                    &[k.dead(), k.dead_done()],
                    &args,
                    topic,
                    0,
                )
                .await?;
            for (dseq, f) in entries(v)? {
                bytes += f.payload.len() as u64;
                out.push(q.dead_letter(p, dseq, f));
            }
        }
        Ok(out)
    }

    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<u64> {
        let q = &self.inner;
        let (p, dseq) = q.dead_partition(topic, dead_offset).await?;
        let k = q.part(topic, p);
        let groups = q.group_names(&k).await?;
        let mut keys = vec![
            k.stream(),
            k.next(),
            k.dead(),
            k.dead_done(),
            k.groups(),
            k.counters(),
        ];
        let mut args = vec![dseq.to_string().into_bytes()];
        for g in &groups {
            keys.push(k.group(g).cursor);
            args.push(g.clone().into_bytes());
        }
        let v = q
            .run(&q.scripts.replay, &keys, &args, topic, dead_offset)
            .await?;
        Ok(offset(p, uint(&v)?))
    }

    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<()> {
        let q = &self.inner;
        let (p, dseq) = q.dead_partition(topic, dead_offset).await?;
        let k = q.part(topic, p);
        q.run(
            &q.scripts.discard,
            &[k.dead(), k.dead_done()],
            &[dseq.to_string().into_bytes()],
            topic,
            dead_offset,
        )
        .await?;
        Ok(())
    }

    async fn stats(&self, topic: &str) -> Result<TopicStats> {
        let q = &self.inner;
        q.check_open()?;
        let parts = q.partitions(topic).await?;
        let mut t = TopicStats {
            name: topic.to_string(),
            log_start: u64::MAX,
            ..TopicStats::default()
        };
        let mut groups: Vec<GroupStats> = Vec::new();
        let mut marks: HashMap<String, Vec<Option<u64>>> = HashMap::new();
        for p in 0..parts {
            let k = q.part(topic, p);
            let names = q.group_names(&k).await?;
            let mut keys = vec![
                k.stream(),
                k.next(),
                k.delays(),
                k.counters(),
                k.dead(),
                k.dead_done(),
            ];
            let mut args = vec![q.now_arg().into_bytes()];
            for g in &names {
                let gk = k.group(g);
                keys.extend([gk.lease, gk.hold, gk.wait, gk.counters, gk.cursor]);
                args.push(g.clone().into_bytes());
            }
            let v = q.run(&q.scripts.stats, &keys, &args, topic, 0).await?;
            let v = array(v)?;
            if v.len() < 7 {
                return Err(reply::bad("stats reply"));
            }
            let next = uint(&v[0])?;
            let first = int(&v[2])?;
            let delayed = uint(&v[3])?;
            t.log_start = t
                .log_start
                .min(offset(p, u64::try_from(first).unwrap_or(next)));
            t.next_offset = if parts == 1 {
                next
            } else {
                t.next_offset + next
            };
            t.durable_end = t.next_offset;
            t.delayed_pending += delayed;
            t.published += uint(&v[4])?;
            t.duplicates += uint(&v[5])?;
            t.dead_letters_pending += u64::try_from(int(&v[6])?).unwrap_or(0);
            for g in v.into_iter().skip(7) {
                let g = array(g)?;
                if g.len() < 11 {
                    return Err(reply::bad("group stats"));
                }
                let name = String::from_utf8(bytes(g[0].clone())?)
                    .map_err(|_| reply::bad("group name"))?;
                let pending = uint(&g[1])?;
                let oldest = int(&g[2])?;
                let leased = uint(&g[3])?;
                let retry = uint(&g[4])?;
                let waiting = uint(&g[5])?;
                let cursor = uint(&g[6])?;
                let lag = next.saturating_sub(cursor) + pending;
                let low = u64::try_from(oldest).unwrap_or(cursor).min(cursor);
                let s = GroupStats {
                    name: name.clone(),
                    lag,
                    depth: lag.saturating_sub(leased + retry + waiting.max(delayed)),
                    in_flight: leased,
                    retry_waiting: retry,
                    redeliveries: uint(&g[8])?,
                    acked: uint(&g[7])?,
                    dead_lettered: uint(&g[9])?,
                    low_watermark: offset(p, low),
                    partition_low_watermarks: Vec::new(),
                };
                marks
                    .entry(name.clone())
                    .or_insert_with(|| vec![None; parts as usize])[p as usize] =
                    Some(offset(p, low));
                match groups.iter_mut().find(|x| x.name == name) {
                    Some(x) => {
                        x.lag += s.lag;
                        x.depth += s.depth;
                        x.in_flight += s.in_flight;
                        x.retry_waiting += s.retry_waiting;
                        x.redeliveries += s.redeliveries;
                        x.acked += s.acked;
                        x.dead_lettered += s.dead_lettered;
                        x.low_watermark = x.low_watermark.min(s.low_watermark);
                    }
                    None => groups.push(s),
                }
                let lost = uint(&g[10])?;
                if lost > 0 {
                    tracing::error!(topic, group = %name, partition = p, lost, "entries deleted under a pending list");
                }
            }
        }
        if t.log_start == u64::MAX {
            t.log_start = 0;
        }
        if parts > 1 {
            for g in &mut groups {
                // A partition the group has never read: nothing of it is done yet.
                g.partition_low_watermarks = marks
                    .remove(&g.name)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(p, m)| m.unwrap_or_else(|| offset(p as u32, 0)))
                    .collect();
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        t.groups = groups;
        Ok(t)
    }

    async fn peek(&self, topic: &str, from_offset: u64, limit: usize) -> Result<Vec<Peeked>> {
        let q = &self.inner;
        q.check_open()?;
        let (base, dead) = match topic.strip_suffix(DLQ_SUFFIX) {
            Some(b) => (b, true),
            None => (topic, false),
        };
        let parts = match q.partitions(base).await {
            Err(Error::NoSuchTopic(_)) => return Err(Error::NoSuchTopic(topic.to_string())),
            other => other?,
        };
        let limit = limit.min(PEEK_MESSAGES_MAX);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let (first, from_seq) = split(from_offset);
        for p in first..parts {
            if out.len() >= limit || bytes >= READ_BYTES_MAX {
                break;
            }
            let k = q.part(base, p);
            let from = if p == first { from_seq } else { 0 };
            let key = if dead { k.dead() } else { k.stream() };
            let v: Value = q
                .query(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(format!("{from}-0"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit - out.len()),
                )
                .await?;
            for (seq, f) in entries(v)? {
                if bytes >= READ_BYTES_MAX {
                    break;
                }
                bytes += f.payload.len() as u64;
                out.push(if dead {
                    peek_dead(base, p, seq, f)?
                } else {
                    Peeked {
                        offset: offset(p, seq),
                        id: f.id,
                        headers: f.headers,
                        payload: f.payload,
                        due_ms: f.due_ms,
                    }
                });
            }
        }
        Ok(out)
    }

    async fn topics(&self) -> Result<Vec<String>> {
        let q = &self.inner;
        q.check_open()?;
        let names: Vec<String> = q
            .query(redis::cmd("HKEYS").arg(keys::registry(&q.config.prefix)))
            .await?;
        let mut out: Vec<String> = names
            .into_iter()
            .flat_map(|n| [format!("{n}{DLQ_SUFFIX}"), n])
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A dead letter as `peek` on the dead-letter topic shows it: the engine's envelope (a
/// little-endian u32 length, the JSON metadata) followed by the original payload, stored
/// under the id the engine would give it (FORMAT.md, "Dead letters").
fn peek_dead(topic: &str, p: u32, dseq: u64, f: reply::Fields) -> Result<Peeked> {
    let group = f.group.unwrap_or_default();
    let original_offset = offset(p, f.original_seq);
    let meta = DeadMeta {
        group: group.clone(),
        original_offset,
        attempts: f.attempts,
        reason: f.reason,
        dead_at_ms: f.at_ms,
        id: f.id.map(|id| format!("{id:032x}")),
        headers: f.headers,
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| Error::Invalid(format!("dead meta: {e}")))?;
    let mut payload = Vec::with_capacity(4 + meta.len() + f.payload.len());
    payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(&f.payload);
    Ok(Peeked {
        offset: offset(p, dseq),
        id: Some(dead_letter_id(topic, &group, original_offset)),
        headers: Vec::new(),
        payload: Bytes::from(payload),
        due_ms: None,
    })
}

impl RedisQueue {
    async fn give_back(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reject: bool,
        reason: &str,
    ) -> Result<AckOutcome> {
        let q = &self.inner;
        q.check_open()?;
        let parts = q.partitions(topic).await?;
        let (p, seq) = split(receipt.offset);
        if p >= parts {
            return Ok(AckOutcome::Unknown);
        }
        let head = vec![
            q.now_arg(),
            group.to_string(),
            seq.to_string(),
            receipt.attempt.to_string(),
            delay_ms.to_string(),
            if reject { "1" } else { "0" }.to_string(),
            cut(reason),
            q.config.max_attempts.to_string(),
        ];
        let v = q.group_call(true, topic, group, p, head, vec![]).await?;
        outcome(int(&v)?)
    }
}
