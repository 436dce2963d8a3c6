//! What every system's run shares: the workload, numbered payloads, the publish driver
//! (C publishers, each awaiting its confirm before sending the next), the delivery tracker
//! that proves every message arrived at least once and counts duplicates, and the figures.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Boxed error of every fallible step; its text ends up in the JSON.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

/// An error with this message.
pub fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

/// Progress line on stderr; a closed stderr is ignored rather than a panic.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Largest latency a histogram holds, in µs (larger values are clamped).
const HIST_MAX_US: u64 = 120_000_000;
/// Bytes of a payload that carry its sequence number.
const SEQ_BYTES: usize = 8;
/// Smallest message size: the sequence number.
pub const MESSAGE_BYTES_MIN: usize = SEQ_BYTES;

/// The workload, identical for every system.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Messages published, then consumed + acked.
    pub messages: u64,
    /// Payload bytes of each message.
    pub message_bytes: usize,
    /// Publisher tasks; each has one message in flight (publish, await confirm, next).
    pub publishers: usize,
    /// Consumer tasks.
    pub consumers: usize,
    /// Messages per fetch / read / prefetch window, and per ack where the system batches
    /// acks.
    pub batch: usize,
    /// Client connections; publishers and consumers are spread over them round-robin.
    pub connections: usize,
    /// A phase (publish, consume) not done within this long fails the system's run.
    pub phase_timeout: Duration,
    /// Profiling aid (`--publish-only`): our broker's run stops after the publish phase.
    pub publish_only: bool,
    /// Our broker's `queue::Config::preallocate_bytes` (`--broker-preallocate-bytes`).
    pub broker_preallocate_bytes: u64,
    /// Our broker's `queue::Config::commit_gather` (`--broker-commit-gather`).
    pub broker_commit_gather: bool,
}

impl Workload {
    /// The workload as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "messages": self.messages,
            "message_bytes": self.message_bytes,
            "publishers": self.publishers,
            "publisher_in_flight": 1,
            "consumers": self.consumers,
            "batch": self.batch,
            "connections": self.connections,
            "phase_timeout_s": self.phase_timeout.as_secs(),
        })
    }
}

/// The payload of message `seq`: its number (8 bytes, big-endian), then bytes derived from
/// it, so that a delivery can be checked byte for byte.
pub fn payload(seq: u64, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&seq.to_be_bytes());
    match fill(seq, len) {
        Some(bytes) => v.extend_from_slice(bytes),
        None => v.extend((SEQ_BYTES..len).map(|i| fill_byte(seq, i))),
    }
    Bytes::from(v)
}

/// Byte `i` of message `seq`'s payload (past its number).
fn fill_byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8
}

/// Payload sizes whose fill bytes come from [`FILL_TABLE`] (larger ones are computed byte
/// by byte).
const FILL_TABLE_PAYLOAD_MAX: usize = 64 << 10;
/// `k % 251` for every `k` below 251 + [`FILL_TABLE_PAYLOAD_MAX`]: the fill bytes of every
/// message are a slice of it, so the load generator copies them instead of computing each
/// (it shares the machine's two cores with the systems measured).
static FILL_TABLE: OnceLock<Vec<u8>> = OnceLock::new();

/// Bytes `SEQ_BYTES..len` of message `seq`'s payload, as a slice of [`FILL_TABLE`] (the
/// same bytes as [`fill_byte`]); `None` for payloads above the table or message numbers
/// large enough for the byte formula to wrap.
fn fill(seq: u64, len: usize) -> Option<&'static [u8]> {
    if len > FILL_TABLE_PAYLOAD_MAX || seq > u64::MAX / 64 {
        return None;
    }
    let table = FILL_TABLE.get_or_init(|| {
        (0..251 + FILL_TABLE_PAYLOAD_MAX)
            .map(|k| (k % 251) as u8)
            .collect()
    });
    let start = (seq * 31 % 251) as usize;
    table.get(start + SEQ_BYTES..start + len.max(SEQ_BYTES))
}

/// The sequence number of a delivered payload, after checking its length and every byte.
pub fn decode(payload: &[u8], len: usize, messages: u64) -> Res<u64> {
    if payload.len() != len {
        return Err(err(format!(
            "a delivery has {} bytes, expected {len}",
            payload.len()
        )));
    }
    let mut seq_bytes = [0u8; SEQ_BYTES];
    seq_bytes.copy_from_slice(&payload[..SEQ_BYTES]);
    let seq = u64::from_be_bytes(seq_bytes);
    if seq >= messages {
        return Err(err(format!("a delivery carries message number {seq}")));
    }
    let intact = match fill(seq, len) {
        Some(expected) => payload[SEQ_BYTES..] == *expected,
        None => payload[SEQ_BYTES..]
            .iter()
            .enumerate()
            .all(|(j, b)| *b == fill_byte(seq, j + SEQ_BYTES)),
    };
    if !intact {
        return Err(err(format!("the payload of message {seq} is corrupt")));
    }
    Ok(seq)
}

/// A latency histogram in µs.
pub fn hist() -> Res<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| err(format!("histogram: {e}")))
}

/// A duration in whole µs, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// p50, p90, p99, p99.9, max and mean of a histogram, in µs.
pub fn quantiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Joins spawned tasks; returns the first error (a task's own or a panic) after all ended.
pub async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<Res<T>>>) -> Res<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(err(format!("task failed: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

// ---------------------------------------------------------------------------------------
// Publish.

/// One publisher: sends a message and returns once the system confirmed it (durably).
pub trait Publisher: Send + 'static {
    fn publish(&mut self, payload: Bytes) -> impl Future<Output = Res<()>> + Send;
}

/// What the publish phase measured.
#[derive(Debug)]
pub struct PublishFigures {
    /// Messages confirmed (all of them, or the phase failed).
    pub confirmed: u64,
    /// From the first send to the last confirm.
    pub secs: f64,
    /// Per-message publish → confirm latency.
    pub confirm: Histogram<u64>,
}

impl PublishFigures {
    pub fn msgs_per_s(&self) -> f64 {
        self.confirmed as f64 / self.secs
    }

    pub fn to_json(&self) -> Value {
        json!({
            "msgs_per_s": self.msgs_per_s().round(),
            "confirmed": self.confirmed,
            "secs": round3(self.secs),
            "confirm_latency_us": quantiles(&self.confirm),
        })
    }
}

/// Runs the publish phase: every publisher claims the next message number, sends it, awaits
/// its confirm and records the latency, until all `w.messages` are confirmed. Fails after
/// `w.phase_timeout`.
pub async fn run_publish<P: Publisher>(w: &Workload, publishers: Vec<P>) -> Res<PublishFigures> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(publishers.len());
    for mut p in publishers {
        let next = next.clone();
        let (n, len) = (w.messages, w.message_bytes);
        handles.push(tokio::spawn(async move {
            let mut latency = hist()?;
            let mut confirmed = 0u64;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n {
                    break;
                }
                let body = payload(seq, len);
                let t0 = Instant::now();
                p.publish(body).await?;
                latency.saturating_record(micros(t0.elapsed()));
                confirmed += 1;
            }
            Ok((confirmed, latency))
        }));
    }
    let results = match tokio::time::timeout(w.phase_timeout, join_all(handles)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(err(format!(
                "publish phase not done after {} s",
                w.phase_timeout.as_secs()
            )));
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let mut confirm = hist()?;
    let mut confirmed = 0;
    for (c, h) in &results {
        confirmed += c;
        confirm
            .add(h)
            .map_err(|e| err(format!("histogram merge: {e}")))?;
    }
    if confirmed != w.messages {
        return Err(err(format!(
            "{confirmed} confirms for {} messages",
            w.messages
        )));
    }
    Ok(PublishFigures {
        confirmed,
        secs,
        confirm,
    })
}

// ---------------------------------------------------------------------------------------
// Consume.

/// Which messages were delivered and acked, how often. Consumers call [`Seen::acked`] for
/// each message once its ack is done (confirmed by the system, where it confirms acks).
#[derive(Debug)]
pub struct Seen {
    counts: Vec<AtomicU32>,
    messages: u64,
    message_bytes: usize,
    unique: AtomicU64,
    deliveries: AtomicU64,
    redelivered_flags: AtomicU64,
    start: Instant,
    done_at: OnceLock<Instant>,
}

impl Seen {
    pub fn new(w: &Workload) -> Arc<Seen> {
        Arc::new(Seen {
            counts: (0..w.messages).map(|_| AtomicU32::new(0)).collect(),
            messages: w.messages,
            message_bytes: w.message_bytes,
            unique: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            redelivered_flags: AtomicU64::new(0),
            start: Instant::now(),
            done_at: OnceLock::new(),
        })
    }

    /// Records one acked delivery; fails on a corrupt or foreign payload.
    pub fn acked(&self, payload: &[u8]) -> Res<()> {
        let seq = decode(payload, self.message_bytes, self.messages)?;
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(seq).map_err(|_| err("message number out of range"))?;
        if self.counts[slot].fetch_add(1, Ordering::Relaxed) == 0
            && self.unique.fetch_add(1, Ordering::AcqRel) + 1 == self.messages
        {
            let _ = self.done_at.set(Instant::now());
        }
        Ok(())
    }

    /// Counts a delivery the system flagged as a redelivery.
    pub fn redelivered(&self) {
        self.redelivered_flags.fetch_add(1, Ordering::Relaxed);
    }

    /// Every message has been acked at least once.
    pub fn done(&self) -> bool {
        self.unique.load(Ordering::Acquire) >= self.messages
    }

    /// Messages not yet acked.
    pub fn remaining(&self) -> u64 {
        self.messages
            .saturating_sub(self.unique.load(Ordering::Acquire))
    }

    /// Seconds from [`Seen::new`] until the last distinct message was acked.
    pub fn secs(&self) -> Option<f64> {
        self.done_at
            .get()
            .map(|t| t.duration_since(self.start).as_secs_f64())
    }
}

/// What the consume phase measured.
#[derive(Debug)]
pub struct ConsumeFigures {
    pub messages: u64,
    pub secs: f64,
    pub deliveries: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub redelivered_flags: u64,
    /// How the system was asked for messages and acked them.
    pub batching: String,
}

impl ConsumeFigures {
    /// The consume phase was not run (`--publish-only`): no figures.
    pub fn skipped() -> ConsumeFigures {
        ConsumeFigures {
            messages: 0,
            secs: 0.0,
            deliveries: 0,
            unique: 0,
            duplicates: 0,
            missing: 0,
            redelivered_flags: 0,
            batching: "not run (--publish-only)".into(),
        }
    }

    pub fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    pub fn to_json(&self) -> Value {
        json!({
            "msgs_per_s": self.msgs_per_s().round(),
            "secs": round3(self.secs),
            "deliveries_acked": self.deliveries,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "redelivered_flags": self.redelivered_flags,
            "batching": self.batching,
        })
    }
}

/// Runs the consumers (already spawned, each ending once [`Seen::done`] or on error) to the
/// end, bounded by `w.phase_timeout`, and checks that every message was acked.
pub async fn finish_consume(
    w: &Workload,
    seen: &Seen,
    handles: Vec<tokio::task::JoinHandle<Res<()>>>,
    batching: String,
) -> Res<ConsumeFigures> {
    match tokio::time::timeout(w.phase_timeout, join_all(handles)).await {
        Ok(r) => {
            r?;
        }
        Err(_) => {
            return Err(err(format!(
                "consume phase not done after {} s: {} of {} messages not acked",
                w.phase_timeout.as_secs(),
                seen.remaining(),
                w.messages
            )));
        }
    }
    let secs = seen
        .secs()
        .ok_or_else(|| err(format!("{} messages never acked", seen.remaining())))?;
    let deliveries = seen.deliveries.load(Ordering::Relaxed);
    let unique = seen.unique.load(Ordering::Relaxed);
    let missing = seen
        .counts
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) == 0)
        .count() as u64;
    Ok(ConsumeFigures {
        messages: w.messages,
        secs,
        deliveries,
        unique,
        duplicates: deliveries - unique,
        missing,
        redelivered_flags: seen.redelivered_flags.load(Ordering::Relaxed),
        batching,
    })
}

/// Rounds to 3 decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A loopback port that was free a moment ago (a server started on it may lose the race to
/// another process; it then fails at startup and says so).
pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| err(format!("bind 127.0.0.1:0: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| err(format!("local_addr: {e}")))?
        .port())
}

/// Waits until `check` succeeds, at most `timeout`, polling every 50 ms; returns the last
/// error otherwise.
pub async fn wait_until<F, Fut, T>(timeout: Duration, mut check: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Res<T>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One system's measured run.
#[derive(Debug)]
pub struct SystemRun {
    /// Server version as the server reports it.
    pub version: String,
    /// The durability settings the figures were measured with (read back from the server
    /// where it can tell).
    pub durability: Value,
    pub publish: PublishFigures,
    pub publish_resources: Value,
    pub consume: ConsumeFigures,
    pub consume_resources: Value,
    /// What was checked after each phase.
    pub checks: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table-driven fill bytes are the byte-by-byte formula's, and `decode` accepts
    /// exactly the payloads `payload` makes.
    #[test]
    fn payloads_from_the_table_match_the_formula() {
        for len in [SEQ_BYTES, SEQ_BYTES + 1, 200, 4096] {
            for seq in [0, 1, 250, 251, 99_999, 1 << 40] {
                let p = payload(seq, len);
                let mut slow = seq.to_be_bytes().to_vec();
                slow.extend((SEQ_BYTES..len).map(|i| fill_byte(seq, i)));
                assert_eq!(p[..], slow[..], "seq {seq} len {len}");
                assert_eq!(decode(&p, len, u64::MAX).ok(), Some(seq));
            }
        }
        let mut bad = payload(7, 200).to_vec();
        bad[150] ^= 1;
        assert!(decode(&bad, 200, 100).is_err());
    }
}
