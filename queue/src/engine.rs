//! The embedded engine: topics on disk under one directory, one writer thread, one
//! maintenance thread, and the [`Queue`] operations.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, Due, FetchOptions, Message, Peeked, Queue, Receipt,
    StartAt, TopicStats,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{self, FLAG_NO_DEDUP, GroupOp, OpKind, Reader};
use crate::histogram::HistogramSnapshot;
use crate::limits::{
    ACK_RECEIPTS_MAX, BATCH_MESSAGES_MAX, DEAD_LETTER_ENVELOPE_BYTES_MAX, DEAD_LETTER_LIST_MAX,
    DUE_MS_MAX, FETCH_MESSAGES_MAX, FETCH_WAIT_MS_MAX, GROUPS_MAX, HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX, HEADERS_MAX, LEASE_MS_MAX, NACK_DELAY_MS_MAX, NAME_BYTES_MAX,
    PAYLOAD_BYTES_MAX, PEEK_MESSAGES_MAX, READ_BYTES_MAX, REASON_BYTES_MAX, TOPICS_MAX,
};
use crate::recovery::{self, GroupMeta, RecoveryReport, TopicMeta};
use crate::topic::{Append, DeadJob, Group, ReadLoc, TopicLimits, TopicState};
use crate::writer::{DurableSink, Job, Writer};

/// Suffix of dead-letter topic names.
pub const DLQ_SUFFIX: &str = ".dlq";
/// The built-in group of a dead-letter topic that tracks which dead letters are pending.
pub const DLQ_GROUP: &str = "$dead-letters";
/// How long `open` waits for a lock held by someone else before failing (see there).
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// An open topic.
#[derive(Debug)]
pub(crate) struct Topic {
    name: String,
    dir: PathBuf,
    state: Mutex<TopicState>,
    /// Woken when messages become durable.
    notify: Notify,
}

impl Topic {
    fn lock(&self) -> MutexGuard<'_, TopicState> {
        // A panic while holding the lock is a bug; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DurableSink for Topic {
    fn durable(&self, end_offset: u64) {
        {
            let mut st = self.lock();
            if end_offset > st.durable_end {
                st.durable_end = end_offset;
            }
        }
        self.notify.notify_waiters();
    }
}

/// The topic map's hasher: FNV-1a over the name. Every publish looks its topic up, and
/// SipHash (the default) cost more than the rest of the lookup. FNV is not keyed, but the
/// map holds at most `TOPICS_MAX` names, so even names chosen to collide cost a lookup at
/// most that many comparisons.
type TopicNameHash = std::hash::BuildHasherDefault<Fnv1a>;

/// 64-bit FNV-1a (see [`TopicNameHash`]).
#[derive(Debug, Clone, Copy)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: Config,
    limits: TopicLimits,
    writer: Writer,
    topics: RwLock<HashMap<String, Arc<Topic>, TopicNameHash>>,
    create_lock: Mutex<()>,
    dlq_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    maintenance: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    _lock_file: File,
    recovery: HashMap<String, RecoveryReport>,
}

/// The embedded durable queue. Cheap to clone; all clones share one engine.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// What the engine's writer has done since the engine was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineMetrics {
    /// Duration of each fsync round: one sample per round that had anything to make
    /// durable, covering the fdatasync of every file it wrote and the fsync of a directory
    /// that gained a segment. (With `Durability::Interval`, rounds between fsyncs add none.)
    pub fsync: HistogramSnapshot,
    /// Group-commit rounds that took at least one job (publishes, acks, lease records...).
    pub commit_rounds: u64,
    /// Bytes the writer wrote to segment files. The first segment of a new topic is created
    /// (with its header) outside the writer and is not counted.
    pub bytes_written: u64,
}

/// Envelope stored as the payload of a dead letter (FORMAT.md, "Dead letters").
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeadMeta {
    pub(crate) group: String,
    pub(crate) original_offset: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: String,
    pub(crate) dead_at_ms: u64,
    pub(crate) id: Option<String>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// Checks a topic or group name: 1..=64 bytes of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{kind} name {name:?} must be 1..={NAME_BYTES_MAX} bytes of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

pub(crate) fn validate_user_topic(name: &str) -> Result<()> {
    validate_name("topic", name)?;
    if name.ends_with(DLQ_SUFFIX) || name.len() + DLQ_SUFFIX.len() > NAME_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "topic name {name:?} must not end in {DLQ_SUFFIX:?} and must leave room for it"
        )));
    }
    Ok(())
}

/// A fetch's message count (1..=`FETCH_MESSAGES_MAX`) and lease (the default when none is
/// asked for; at most `LEASE_MS_MAX`), as every backend reads them.
pub(crate) fn fetch_limits(options: &FetchOptions, lease_ms_default: u64) -> Result<(usize, u64)> {
    let max = options.max_messages.clamp(1, FETCH_MESSAGES_MAX);
    let lease_ms = options.lease_ms.unwrap_or(lease_ms_default).max(1);
    if lease_ms > LEASE_MS_MAX {
        return Err(Error::Invalid(format!(
            "lease of {lease_ms} ms exceeds {LEASE_MS_MAX} ms"
        )));
    }
    Ok((max, lease_ms))
}

/// Checks a `publish_batch`: 1..=`BATCH_MESSAGES_MAX` messages, each within the limits
/// (every backend refuses a bad batch whole, before anything is stored).
pub(crate) fn validate_batch(messages: &[Message]) -> Result<()> {
    if messages.is_empty() || messages.len() > BATCH_MESSAGES_MAX {
        return Err(Error::Invalid(format!(
            "a batch holds 1..={BATCH_MESSAGES_MAX} messages, not {}",
            messages.len()
        )));
    }
    messages.iter().try_for_each(validate_message)
}

/// Checks a message against the limits of [`crate::limits`] (payload, headers); the
/// broker client runs it before sending, so a bad message fails alone with `Invalid`.
pub fn validate_message(m: &Message) -> Result<()> {
    if m.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "payload of {} bytes exceeds {PAYLOAD_BYTES_MAX}",
            m.payload.len()
        )));
    }
    match m.due {
        Due::At(t) | Due::After(t) if t > DUE_MS_MAX => {
            return Err(Error::Invalid(format!(
                "due time or delay of {t} ms exceeds {DUE_MS_MAX}"
            )));
        }
        _ => {}
    }
    if m.headers.len() > HEADERS_MAX {
        return Err(Error::Invalid(format!(
            "{} headers exceed {HEADERS_MAX}",
            m.headers.len()
        )));
    }
    for (k, v) in &m.headers {
        if k.is_empty() || k.len() > HEADER_NAME_BYTES_MAX || v.len() > HEADER_VALUE_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "header {k:?}: name must be 1..={HEADER_NAME_BYTES_MAX} bytes, value at most {HEADER_VALUE_BYTES_MAX}"
            )));
        }
    }
    Ok(())
}

pub(crate) fn cut(reason: &str) -> String {
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// The id under which a dead letter is published, so that a repeated move is de-duplicated.
pub(crate) fn dead_letter_id(topic: &str, group: &str, offset: u64) -> u128 {
    // FNV-1a, 128-bit: stable across builds (unlike `DefaultHasher`).
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    let prime: u128 = 0x0000000001000000000000000000013B;
    for b in topic
        .bytes()
        .chain([0u8])
        .chain(group.bytes())
        .chain([0u8])
        .chain(offset.to_le_bytes())
    {
        h ^= u128::from(b);
        h = h.wrapping_mul(prime);
    }
    h
}

/// The metadata of a topic whose first `skip` segments are about to be deleted.
fn topic_meta(st: &TopicState, skip: usize) -> TopicMeta {
    let mut meta = TopicMeta::new();
    let first = st.segments.get(skip).or(st.segments.back());
    meta.first_seq = first.map_or(0, |s| s.seq);
    meta.first_offset = first.map_or(st.log_start, |s| s.base_offset);
    meta.gaps = st.gaps.clone();
    meta.groups = st
        .groups
        .iter()
        .map(|g| GroupMeta {
            name: g.name.clone(),
            start_offset: g.start_offset,
        })
        .collect();
    meta
}

/// One message read back from a segment.
struct Stored {
    id: Option<u128>,
    due_ms: Option<u64>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Bytes,
}

/// Reads the entry at `loc`.
fn read_entry(loc: ReadLoc) -> Result<Stored> {
    read_entries(std::slice::from_ref(&loc))?
        .pop()
        .ok_or_else(|| Error::Invalid("entry vanished".into()))
}

/// Reads the entries at `locs` (any order), coalescing neighbours into one read. Returns
/// them in the order of `locs`.
fn read_entries(locs: &[ReadLoc]) -> Result<Vec<Stored>> {
    use std::os::unix::fs::FileExt;
    let mut by_place: Vec<usize> = (0..locs.len()).collect();
    by_place.sort_by_key(|&k| (Arc::as_ptr(&locs[k].file) as usize, locs[k].pos));
    let order: Vec<&ReadLoc> = by_place.iter().map(|&k| &locs[k]).collect();
    let mut out: Vec<Option<Stored>> = (0..locs.len()).map(|_| None).collect();
    let mut i = 0;
    let mut buf = Vec::new();
    while i < order.len() {
        let first = order[i];
        let mut end = first.pos + u64::from(first.len);
        let mut j = i + 1;
        // Frames between neighbours are small; read across them rather than seek.
        while j < order.len()
            && Arc::ptr_eq(&order[j].file, &first.file)
            && order[j].pos >= end
            && order[j].pos - end <= 4096
            && order[j].pos + u64::from(order[j].len) - first.pos <= (8 << 20)
        {
            end = order[j].pos + u64::from(order[j].len);
            j += 1;
        }
        buf.resize((end - first.pos) as usize, 0);
        // Lengths are upper bounds and the file may end sooner (what follows the last
        // durable entry may not be written yet): read what is there.
        let mut filled = 0;
        while filled < buf.len() {
            match first
                .file
                .file
                .read_at(&mut buf[filled..], first.pos + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read segment", &first.file.path, e)),
            }
        }
        for (&k, loc) in by_place[i..j].iter().zip(&order[i..j]) {
            let start = (loc.pos - first.pos) as usize;
            let slice = &buf[start.min(filled)..(start + loc.len as usize).min(filled)];
            let mut r = Reader::new(slice);
            let e = format::decode_entry(&mut r).map_err(|e| Error::Corrupt {
                segment: loc.file.path.clone(),
                position: loc.pos,
                reason: format!("entry read back: {e}"),
            })?;
            out[k] = Some(Stored {
                id: e.id,
                due_ms: e.due_ms,
                headers: e.headers(),
                payload: Bytes::copy_from_slice(e.payload),
            });
        }
        i = j;
    }
    Ok(out.into_iter().flatten().collect())
}

/// The writer's answer for a queued record (`None`: nothing to wait for). Await it with
/// [`Engine::wait_durable`].
pub type Durable = Option<oneshot::Receiver<Result<()>>>;

/// A record's confirms, and the writer's answer once it is durable.
pub type Submitted = (Vec<Confirm>, Durable);

/// Publishes queued by [`Engine::publish_each_submit`], waiting for durability.
#[derive(Debug)]
pub struct PendingPublish {
    /// Per message: valid (`Ok`) or its own error.
    verdicts: Vec<Result<()>>,
    /// The valid messages' records in order: their confirms (or a per-record `Full`) and
    /// the writer's answer.
    parts: Vec<(Result<Vec<Confirm>>, Durable)>,
}

impl PendingPublish {
    /// Waits until every queued record is durable; one result per message, in order.
    pub async fn wait(self) -> Result<Vec<Result<Confirm>>> {
        let mut confirmed: Vec<Result<Confirm>> = Vec::new();
        for (confirms, rx) in self.parts {
            match confirms {
                Ok(cs) => {
                    Engine::wait(rx).await?;
                    confirmed.extend(cs.into_iter().map(Ok));
                }
                Err(e) => confirmed.push(Err(e)),
            }
        }
        let mut confirmed = confirmed.into_iter();
        Ok(self
            .verdicts
            .into_iter()
            .map(|v| {
                v.and_then(|()| {
                    confirmed
                        .next()
                        .unwrap_or_else(|| Err(Error::Invalid("missing confirm".into())))
                })
            })
            .collect())
    }
}

impl Engine {
    /// Opens (creating if needed) the queue in `dir`, recovering every topic.
    ///
    /// Fails with [`Error::Corrupt`] if a sealed segment is damaged and `config.repair` is
    /// off. Only one engine may have a directory open at a time (a lock file enforces it).
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Engine> {
        let dir = dir.as_ref().to_path_buf();
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| Error::io("create directory", &topics_dir, e))?;
        crate::fsutil::sync_dir(&dir)?;
        let lock_path = dir.join("LOCK");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        // The lock of an engine closed a moment ago can outlive it: a process forked (by any
        // thread, to spawn a program) before the close holds a copy of the lock file's
        // descriptor until it execs. Wait briefly for such a holder before concluding that
        // another engine has the directory.
        let lock_deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock_file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock)
                    if std::time::Instant::now() < lock_deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => {
                    return Err(Error::io(
                        "lock (another process has this queue directory open: a gateway with the embedded \
                         queue, an order-worker or `queue serve`; one process at a time may open it, \
                         others share it through `queue serve` and tcp://)",
                        &lock_path,
                        std::io::Error::other(e.to_string()),
                    ));
                }
            }
        }
        let limits = TopicLimits {
            segment_bytes_max: config.segment_bytes_max,
            backlog_messages_max: config.backlog_messages_max,
            backlog_bytes_max: config.backlog_bytes_max,
            dedup_window_ms: config.dedup_window_ms,
            // The window numbers its entries modulo 2^31 (see dedup.rs).
            dedup_entries_max: config.dedup_entries_max.min(1 << 30),
            max_attempts: config.max_attempts.max(1),
            in_flight_max: config.in_flight_max as u64,
            retention_ms: config.retention_ms,
        };
        let now = config.clock.now_ms();
        let mut topics: HashMap<String, Arc<Topic>, TopicNameHash> = HashMap::default();
        let mut reports = HashMap::new();
        let entries =
            std::fs::read_dir(&topics_dir).map_err(|e| Error::io("list", &topics_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &topics_dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name("topic", &name).is_err() || !entry.path().is_dir() {
                continue;
            }
            let tdir = entry.path();
            let (state, report) = recovery::open_topic(&tdir, &name, limits, now, config.repair)?;
            if report != RecoveryReport::default() {
                tracing::warn!(topic = %name, ?report, "recovered topic");
            }
            reports.insert(name.clone(), report);
            topics.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    dir: tdir,
                    state: Mutex::new(state),
                    notify: Notify::new(),
                }),
            );
        }
        let writer = Writer::start(
            config.durability,
            config.commit_gather,
            crate::writer::Prealloc::new(config.preallocate_bytes, config.segment_bytes_max),
            config.storage_faults.clone(),
        )?;
        let inner = Arc::new(Inner {
            dir,
            limits,
            writer,
            topics: RwLock::new(topics),
            create_lock: Mutex::new(()),
            dlq_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            maintenance: Mutex::new(None),
            _lock_file: lock_file,
            recovery: reports,
            config,
        });
        let engine = Engine { inner };
        if let Some(ms) = engine.inner.config.maintenance_interval_ms {
            engine.start_maintenance(Duration::from_millis(ms.max(1)))?;
        }
        Ok(engine)
    }

    /// What recovery found for each topic when the engine was opened.
    pub fn recovery_reports(&self) -> &HashMap<String, RecoveryReport> {
        &self.inner.recovery
    }

    /// The directory this engine stores its data in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Writer figures since open: fsync latency, rounds, bytes. Cheap (a few atomic loads);
    /// still answers after `close`.
    pub fn metrics(&self) -> EngineMetrics {
        let m = self.inner.writer.metrics();
        EngineMetrics {
            fsync: m.fsync.snapshot(),
            commit_rounds: m.commit_rounds.load(Ordering::Relaxed),
            bytes_written: m.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// [`Queue::stats`] without the `async`: it takes only in-memory locks, so a caller
    /// that cannot await (the Prometheus collector in [`crate::metrics`]) reads the same
    /// figures.
    pub fn topic_stats(&self, topic: &str) -> Result<TopicStats> {
        self.check_open()?;
        let t = self.existing_topic(topic)?;
        let dead_pending = match self.get_topic(&format!("{topic}{DLQ_SUFFIX}")) {
            Some(dlq) => {
                let st = dlq.lock();
                st.stats(0)
                    .groups
                    .iter()
                    .find(|g| g.name == DLQ_GROUP)
                    .map_or(0, |g| g.lag)
            }
            None => 0,
        };
        let st = t.lock();
        Ok(st.stats(dead_pending))
    }

    /// [`Queue::topics`] without the `async` (sorted names, dead-letter topics included),
    /// for the same callers as [`Engine::topic_stats`].
    pub fn topic_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let mut names: Vec<String> = self
            .inner
            .topics
            .read()
            .map_err(|_| Error::Closed)?
            .keys()
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }

    fn start_maintenance(&self, every: Duration) -> Result<()> {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("queue-maintenance".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                else {
                    tracing::error!("queue maintenance: cannot build a runtime");
                    return;
                };
                loop {
                    match stop_rx.recv_timeout(every) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let engine = Engine { inner };
                    match rt.block_on(engine.tick()) {
                        Ok(()) => {}
                        // The writer failed for good (it logged why): nothing to maintain.
                        Err(Error::Failed(_)) => return,
                        Err(e) => tracing::warn!(error = %e, "queue maintenance"),
                    }
                }
            })
            .map_err(|e| Error::io("spawn maintenance thread", "", e))?;
        if let Ok(mut m) = self.inner.maintenance.lock() {
            *m = Some((stop_tx, handle));
        }
        Ok(())
    }

    /// Stops background work, writes and fsyncs everything queued, and closes the engine.
    /// Operations after `close` fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let maint = self
            .inner
            .maintenance
            .lock()
            .ok()
            .and_then(|mut m| m.take());
        if let Some((stop, handle)) = maint {
            drop(stop);
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        let result = self.inner.writer.stop();
        for t in self.all_topics() {
            t.notify.notify_waiters();
        }
        result
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The writer's first failure as [`Error::Failed`], if a write or fsync failed. From
    /// then on the engine is stopped for good: every operation (publish, fetch, ack, nack,
    /// reject, dead-letter calls, peek, stats, tick) fails with that error, because fetches
    /// and acks must write and what the page cache says may no longer match the disk; only
    /// this, [`Engine::metrics`] and [`Engine::close`] still answer. Reopening the directory
    /// (a restart) recovers everything that was confirmed.
    pub fn failure(&self) -> Option<Error> {
        self.inner.writer.failure().map(Error::from)
    }

    /// Completes when a write or fsync of the writer fails (at once if one already has);
    /// returns [`Engine::failure`]'s error. The broker stops serving on it.
    pub async fn failed(&self) -> Error {
        let mut watch = self.inner.writer.failure_watch();
        // The sender lives as long as the writer, so an error here means it is gone: the
        // recorded failure, if any, is then final.
        let _ = watch.wait_for(|failed| *failed).await;
        match self.failure() {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(failure) = self.inner.writer.failure() {
            return Err(failure.into());
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.inner.config.clock.now_ms()
    }

    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the topic exists (the broker asks before a request that would create one).
    pub fn has_topic(&self, name: &str) -> bool {
        self.get_topic(name).is_some()
    }

    fn get_topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner.topics.read().ok()?.get(name).cloned()
    }

    fn existing_topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.get_topic(name)
            .ok_or_else(|| Error::NoSuchTopic(name.to_string()))
    }

    /// Returns the topic, creating it (and, for a user topic, its dead-letter topic).
    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(t) = self.get_topic(name) {
            return Ok(t);
        }
        let _guard = self.inner.create_lock.lock().map_err(|_| Error::Closed)?;
        if let Some(t) = self.get_topic(name) {
            return Ok(t);
        }
        let count = self.inner.topics.read().map(|t| t.len()).unwrap_or(0);
        let topics_max = self.inner.config.topics_max.min(TOPICS_MAX);
        if count + 2 > topics_max {
            return Err(Error::Limit {
                what: "topics",
                limit: topics_max as u64,
            });
        }
        let is_dlq = name.ends_with(DLQ_SUFFIX);
        let mut names = vec![name.to_string()];
        if !is_dlq {
            names.push(format!("{name}{DLQ_SUFFIX}"));
        }
        let mut created = Vec::new();
        for n in names {
            if self.get_topic(&n).is_some() {
                continue;
            }
            let dir = self.inner.dir.join("topics").join(&n);
            let groups = if n.ends_with(DLQ_SUFFIX) {
                vec![GroupMeta {
                    name: DLQ_GROUP.to_string(),
                    start_offset: 0,
                }]
            } else {
                vec![]
            };
            let state = recovery::create_topic(&dir, &n, self.inner.limits, &groups)?;
            created.push(Arc::new(Topic {
                name: n,
                dir,
                state: Mutex::new(state),
                notify: Notify::new(),
            }));
        }
        let mut map = self.inner.topics.write().map_err(|_| Error::Closed)?;
        for t in created {
            map.insert(t.name.clone(), t);
        }
        map.get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchTopic(name.to_string()))
    }

    /// Queues an append; call with the topic's lock held so that file order is offset order.
    fn submit(
        &self,
        topic: &Arc<Topic>,
        append: Append,
        durable_end: Option<u64>,
        wait: bool,
    ) -> Result<Durable> {
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sink: Option<(Arc<dyn DurableSink>, u64)> =
            durable_end.map(|end| (topic.clone() as Arc<dyn DurableSink>, end));
        self.inner.writer.submit(Job {
            file: Some(append.file),
            pos: append.pos,
            bytes: append.bytes,
            dir_sync: append.new_file.then(|| topic.dir.clone()),
            seal: append.seal,
            sink,
            done: tx,
        })?;
        Ok(rx)
    }

    /// A job that completes once everything queued before it is durable.
    fn barrier(&self) -> Result<oneshot::Receiver<Result<()>>> {
        let (tx, rx) = oneshot::channel();
        self.inner.writer.submit(Job {
            file: None,
            pos: 0,
            bytes: Vec::new(),
            dir_sync: None,
            seal: None,
            sink: None,
            done: Some(tx),
        })?;
        Ok(rx)
    }

    async fn wait(rx: Durable) -> Result<()> {
        match rx {
            Some(rx) => rx.await.unwrap_or(Err(Error::Closed)),
            None => Ok(()),
        }
    }

    /// Appends messages to a topic (any topic, dead-letter ones included) and waits for
    /// the confirm.
    async fn append(
        &self,
        topic: &Arc<Topic>,
        messages: &[Message],
        flags: u8,
        target: Option<&str>,
    ) -> Result<Vec<Confirm>> {
        let (confirms, rx) = self.append_submit(topic, messages, flags, target)?;
        Self::wait(rx).await?;
        Ok(confirms)
    }

    /// The synchronous half of [`Engine::append`]: assigns offsets and queues the record for
    /// the writer; the receiver answers once it is durable.
    fn append_submit(
        &self,
        topic: &Arc<Topic>,
        messages: &[Message],
        flags: u8,
        target: Option<&str>,
    ) -> Result<Submitted> {
        self.check_open()?;
        let now = self.now();
        let mut st = topic.lock();
        let (confirms, append) = st.append_messages(messages, flags, target, now)?;
        let rx = match append {
            Some(a) => {
                let end = st.next_offset;
                self.submit(topic, a, Some(end), true)?
            }
            None => Some(self.barrier()?),
        };
        Ok((confirms, rx))
    }

    /// Queues group operations; call with the topic locked. Returns a receiver to await
    /// (after dropping the lock) when `wait` is set.
    fn queue_ops(
        &self,
        topic: &Arc<Topic>,
        st: &mut TopicState,
        group: &str,
        ops: &[GroupOp],
        wait: bool,
    ) -> Result<Durable> {
        match st.append_ops(group, ops)? {
            Some(a) => self.submit(topic, a, None, wait),
            None => Ok(None),
        }
    }

    fn group_index(st: &TopicState, topic: &str, group: &str) -> Result<usize> {
        st.group_index(group)
            .ok_or_else(|| Error::Invalid(format!("no group {group:?} on topic {topic:?}")))
    }

    /// Adds a group to a locked topic, persisting the topic metadata first.
    fn add_group(st: &mut TopicState, dir: &Path, group: &str, start: StartAt) -> Result<usize> {
        if let Some(gi) = st.group_index(group) {
            return Ok(gi);
        }
        if st.groups.len() >= GROUPS_MAX {
            return Err(Error::Limit {
                what: "groups per topic",
                limit: GROUPS_MAX as u64,
            });
        }
        let start_offset = match start {
            StartAt::Earliest => st.log_start,
            // Not `next_offset`: publishes still in flight may never become durable, and
            // their offsets would then be given to later messages this group must see.
            StartAt::Latest => st.durable_end,
        };
        let mut meta = topic_meta(st, 0);
        meta.groups.push(GroupMeta {
            name: group.to_string(),
            start_offset,
        });
        meta.write(dir)?;
        st.groups
            .push(Group::new(group, start_offset, st.log_start));
        Ok(st.groups.len() - 1)
    }

    /// Moves messages to their topic's dead-letter topic, then marks them dead in the group.
    async fn move_dead(&self, topic: &Arc<Topic>, jobs: Vec<DeadJob>) {
        for job in jobs {
            if let Err(e) = self.move_one_dead(topic, &job).await {
                tracing::warn!(topic = %topic.name, offset = job.offset, error = %e, "dead-letter move failed; will retry");
                let mut st = topic.lock();
                if let Some(gi) = st.group_index(&job.group) {
                    st.retry_dead(gi, job.offset, job.reason.clone());
                }
            }
        }
    }

    async fn move_one_dead(&self, topic: &Arc<Topic>, job: &DeadJob) -> Result<()> {
        let loc = topic
            .lock()
            .locate(job.offset)
            .ok_or_else(|| Error::Invalid(format!("offset {} not retained", job.offset)))?;
        let m = read_entry(loc)?;
        let meta = DeadMeta {
            group: job.group.clone(),
            original_offset: job.offset,
            attempts: job.attempts,
            reason: cut(&job.reason),
            dead_at_ms: self.now(),
            id: m.id.map(|id| format!("{id:032x}")),
            headers: m.headers,
        };
        let meta_bytes =
            serde_json::to_vec(&meta).map_err(|e| Error::Invalid(format!("dead meta: {e}")))?;
        // Bounded by the header and reason limits; checked because recovery refuses larger.
        if 4 + meta_bytes.len() > DEAD_LETTER_ENVELOPE_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "dead-letter envelope of {} bytes exceeds {DEAD_LETTER_ENVELOPE_BYTES_MAX}",
                meta_bytes.len()
            )));
        }
        let mut payload = Vec::with_capacity(4 + meta_bytes.len() + m.payload.len());
        payload.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&meta_bytes);
        payload.extend_from_slice(&m.payload);
        let dlq_name = if topic.name.ends_with(DLQ_SUFFIX) {
            topic.name.clone()
        } else {
            format!("{}{DLQ_SUFFIX}", topic.name)
        };
        let dlq = self.topic(&dlq_name)?;
        let message = Message {
            id: Some(dead_letter_id(&topic.name, &job.group, job.offset)),
            headers: Vec::new(),
            payload: Bytes::from(payload),
            due: crate::api::Due::Now,
        };
        self.append(&dlq, std::slice::from_ref(&message), 0, None)
            .await?;
        let rx = {
            let mut st = topic.lock();
            let Some(gi) = st.group_index(&job.group) else {
                return Ok(());
            };
            let ops = st.finish_dead(gi, job.offset);
            self.queue_ops(topic, &mut st, &job.group, &ops, true)?
        };
        Self::wait(rx).await
    }

    /// Runs one round of maintenance on every topic: fires due delays, expires leases,
    /// moves exhausted messages to dead letters and deletes segments nobody needs.
    /// The background thread calls this; tests with a manual clock call it directly.
    pub async fn tick(&self) -> Result<()> {
        self.check_open()?;
        let now = self.now();
        let mut first_error = None;
        for topic in self.all_topics() {
            let (dead, expired, wake) = {
                let mut st = topic.lock();
                let delays_before = st.delays.len();
                let waiting_before: u64 = st.groups.iter().map(|g| g.retry_waiting).sum();
                let dead = st.maintain(now);
                let waiting_after: u64 = st.groups.iter().map(|g| g.retry_waiting).sum();
                // Fired delays and expired leases may have made messages deliverable.
                let wake = st.delays.len() != delays_before || waiting_after > waiting_before;
                let n = st.expired_segments(now);
                let mut expired = Vec::new();
                if n > 0 {
                    // The metadata names the new first segment before any file goes, so a
                    // crash mid-deletion cannot leave a hole in the log; if it cannot be
                    // written, nothing is deleted.
                    match topic_meta(&st, n).write(&topic.dir) {
                        Ok(()) => expired = st.drop_segments(n),
                        Err(e) => {
                            tracing::warn!(topic = %topic.name, error = %e, "retention: cannot write topic metadata");
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (dead, expired, wake)
            };
            for seg in expired {
                if let Err(e) = std::fs::remove_file(&seg.file.path) {
                    tracing::warn!(segment = %seg.file.path.display(), error = %e, "could not delete segment");
                }
            }
            if wake {
                topic.notify.notify_waiters();
            }
            if !dead.is_empty() {
                self.move_dead(&topic, dead).await;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Publishes independent messages together: each is validated on its own (an invalid
    /// one gets its own error and does not hold up the others), the valid ones are appended
    /// as one record and confirmed by one fsync. The broker uses this for publish requests
    /// pipelined on one connection. Offsets are assigned in the order given. If the backlog
    /// limit refuses the record as a whole, the messages are tried one by one, so those
    /// that fit are stored and only the rest get [`Error::Full`]. The outer error (failed,
    /// closed, bad topic) applies to every message.
    pub async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        self.publish_each_submit(topic, messages)?.wait().await
    }

    /// [`Queue::fetch`] that stops leasing once the stored bytes of the messages leased
    /// reach `max_bytes` (the message crossing it included, so at least one is returned);
    /// `fetch` uses [`READ_BYTES_MAX`]. The broker passes the room it reserved for the
    /// response.
    pub async fn fetch_bounded(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
        max_bytes: u64,
    ) -> Result<Vec<Delivery>> {
        let max_bytes = max_bytes.clamp(1, READ_BYTES_MAX);
        self.check_open()?;
        validate_user_topic(topic)?;
        validate_name("group", group)?;
        let (max, lease_ms) = fetch_limits(&options, self.inner.config.lease_ms_default)?;
        let t = self.topic(topic)?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(options.wait_ms.min(FETCH_WAIT_MS_MAX));
        // A writer failure ends the wait at once (the next round of the loop fails with
        // it), so that a broker stopping on the failure does not wait for long polls.
        let mut failed = self.inner.writer.failure_watch();
        loop {
            let notified = t.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.now();
            let (leases, dead, wake) = {
                let mut st = t.lock();
                let gi = Self::add_group(&mut st, &t.dir, group, StartAt::Earliest)?;
                let mut dead = st.maintain(now);
                let (leases, ops, more_dead, wake) = st.fetch(gi, max, max_bytes, lease_ms, now);
                dead.extend(more_dead);
                // Lease records need not be durable before the consumer sees the message:
                // losing one in a crash only undercounts an attempt (FORMAT.md).
                if let Some(a) = st.append_ops(group, &ops)? {
                    self.submit(&t, a, None, false)?;
                }
                (leases, dead, wake)
            };
            if !dead.is_empty() {
                self.move_dead(&t, dead).await;
            }
            if !leases.is_empty() {
                let (locs, terms): (Vec<ReadLoc>, Vec<(u32, u64)>) = leases
                    .into_iter()
                    .map(|l| (l.loc, (l.attempt, l.until_ms)))
                    .unzip();
                let stored = read_entries(&locs)?;
                let out = locs
                    .iter()
                    .zip(terms)
                    .zip(stored)
                    .map(|((loc, (attempt, lease_until_ms)), m)| Delivery {
                        offset: loc.offset,
                        attempt,
                        id: m.id,
                        headers: m.headers,
                        payload: m.payload,
                        due_ms: m.due_ms,
                        lease_until_ms,
                    })
                    .collect();
                return Ok(out);
            }
            let now_instant = tokio::time::Instant::now();
            if now_instant >= deadline {
                return Ok(Vec::new());
            }
            self.check_open()?;
            let mut until = deadline;
            if let Some(w) = wake {
                let in_ms = w.saturating_sub(self.now());
                until = until.min(now_instant + Duration::from_millis(in_ms.max(1)));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = failed.wait_for(|f| *f) => {}
            }
        }
    }

    /// The synchronous half of `publish_batch` (all or nothing): validates, assigns offsets
    /// and queues the record; the receiver answers once it is durable. The broker calls it
    /// in its reader so that a connection's publishes keep their order.
    pub fn publish_batch_submit(&self, topic: &str, messages: &[Message]) -> Result<Submitted> {
        self.check_open()?;
        let known = self.known_user_topic(topic);
        if known.is_none() {
            validate_user_topic(topic)?;
        }
        validate_batch(messages)?;
        let t = match known {
            Some(t) => t,
            None => self.topic(topic)?,
        };
        self.append_submit(&t, messages, 0, None)
    }

    /// The topic, if it exists and is a user topic: then `validate_user_topic` would pass,
    /// and this skips its byte-by-byte check on every publish. Names in the map were
    /// checked when the topic was created or recovered (`validate_name`), so only the rules
    /// that set user topics apart from dead-letter ones remain to check.
    fn known_user_topic(&self, topic: &str) -> Option<Arc<Topic>> {
        if topic.ends_with(DLQ_SUFFIX) || topic.len() + DLQ_SUFFIX.len() > NAME_BYTES_MAX {
            return None;
        }
        self.get_topic(topic)
    }

    /// Waits for a receiver from one of the `*_submit` calls.
    pub async fn wait_durable(rx: Durable) -> Result<()> {
        Self::wait(rx).await
    }

    /// The synchronous half of [`Engine::publish_each`]: validates, assigns offsets and
    /// queues the record before returning, so calls made one after another get offsets in
    /// that order (the broker relies on this to keep a connection's publishes in order);
    /// [`PendingPublish::wait`] then waits for durability.
    pub fn publish_each_submit(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<PendingPublish> {
        self.check_open()?;
        validate_user_topic(topic)?;
        if messages.len() > BATCH_MESSAGES_MAX {
            return Err(Error::Invalid(format!(
                "at most {BATCH_MESSAGES_MAX} messages at once, not {}",
                messages.len()
            )));
        }
        let verdicts: Vec<Result<()>> = messages.iter().map(validate_message).collect();
        let valid: Vec<Message> = messages
            .into_iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.is_ok())
            .map(|(m, _)| m)
            .collect();
        let mut parts = Vec::new();
        if !valid.is_empty() {
            let t = self.topic(topic)?;
            match self.append_submit(&t, &valid, 0, None) {
                Ok((confirms, rx)) => parts.push((Ok(confirms), rx)),
                Err(Error::Full { .. }) if valid.len() > 1 => {
                    for m in &valid {
                        match self.append_submit(&t, std::slice::from_ref(m), 0, None) {
                            Ok((c, rx)) => parts.push((Ok(c), rx)),
                            Err(e @ Error::Full { .. }) => parts.push((Err(e), None)),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(PendingPublish { verdicts, parts })
    }

    /// Heap bytes of the delay and index structures of a topic (benchmarks use this to
    /// check the memory budget of pending delayed messages).
    pub fn index_heap_bytes(&self, topic: &str) -> Result<usize> {
        Ok(self.existing_topic(topic)?.lock().index_heap_bytes())
    }

    fn parse_dead(offset: u64, m: Stored) -> Result<DeadLetter> {
        let bad = |why: &str| Error::Corrupt {
            segment: PathBuf::from("<dead-letter topic>"),
            position: offset,
            reason: why.to_string(),
        };
        let p = &m.payload;
        if p.len() < 4 {
            return Err(bad("dead letter shorter than its envelope"));
        }
        let n = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if p.len() < 4 + n {
            return Err(bad("dead letter envelope truncated"));
        }
        let meta: DeadMeta =
            serde_json::from_slice(&p[4..4 + n]).map_err(|e| bad(&format!("envelope: {e}")))?;
        Ok(DeadLetter {
            dead_offset: offset,
            group: meta.group,
            original_offset: meta.original_offset,
            attempts: meta.attempts,
            reason: meta.reason,
            dead_at_ms: meta.dead_at_ms,
            id: meta.id.and_then(|s| u128::from_str_radix(&s, 16).ok()),
            headers: meta.headers,
            payload: p.slice(4 + n..),
        })
    }

    fn dlq_topic(&self, topic: &str) -> Result<Arc<Topic>> {
        validate_user_topic(topic)?;
        self.existing_topic(topic)?;
        self.existing_topic(&format!("{topic}{DLQ_SUFFIX}"))
    }

    async fn read_dead(&self, dlq: &Arc<Topic>, dead_offset: u64) -> Result<DeadLetter> {
        let loc = {
            let st = dlq.lock();
            let gi = Self::group_index(&st, &dlq.name, DLQ_GROUP)?;
            if st.groups[gi].is_done(dead_offset) || dead_offset >= st.durable_end {
                None
            } else {
                st.locate(dead_offset)
            }
        };
        let Some(loc) = loc else {
            return Err(Error::NoSuchDeadLetter {
                topic: dlq.name.trim_end_matches(DLQ_SUFFIX).to_string(),
                offset: dead_offset,
            });
        };
        Self::parse_dead(dead_offset, read_entry(loc)?)
    }

    /// Marks a dead letter as handled in the dead-letter topic's built-in group.
    async fn resolve_dead(&self, dlq: &Arc<Topic>, dead_offset: u64) -> Result<()> {
        let rx = {
            let mut st = dlq.lock();
            let gi = Self::group_index(&st, &dlq.name, DLQ_GROUP)?;
            let g = &mut st.groups[gi];
            if g.is_done(dead_offset) {
                return Ok(());
            }
            g.done.set(dead_offset);
            g.done.compact_full();
            let ops = [GroupOp {
                kind: OpKind::Ack,
                offset: dead_offset,
                attempts: 0,
                time_ms: 0,
            }];
            self.queue_ops(dlq, &mut st, DLQ_GROUP, &ops, true)?
        };
        Self::wait(rx).await
    }
}

#[async_trait::async_trait]
impl Queue for Engine {
    async fn publish(&self, topic: &str, message: Message) -> Result<Confirm> {
        // The one-message batch without a `Vec` around it; the message (its bytes are in
        // the record now) is not kept while waiting for the fsync.
        let submitted = self.publish_batch_submit(topic, std::slice::from_ref(&message));
        drop(message);
        let (mut confirms, rx) = submitted?;
        Self::wait(rx).await?;
        confirms
            .pop()
            .ok_or_else(|| Error::Invalid("empty confirm".into()))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Confirm>> {
        let (confirms, rx) = self.publish_batch_submit(topic, &messages)?;
        Self::wait(rx).await?;
        Ok(confirms)
    }

    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        Engine::publish_each(self, topic, messages).await
    }

    async fn create_group(&self, topic: &str, group: &str, start: StartAt) -> Result<()> {
        self.check_open()?;
        // Dead-letter topics are read through `dead_letters`, not by consumer groups.
        validate_user_topic(topic)?;
        validate_name("group", group)?;
        let t = self.topic(topic)?;
        let mut st = t.lock();
        Self::add_group(&mut st, &t.dir, group, start)?;
        Ok(())
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> Result<Vec<Delivery>> {
        self.fetch_bounded(topic, group, options, READ_BYTES_MAX)
            .await
    }

    async fn ack(&self, topic: &str, group: &str, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        self.check_open()?;
        if receipts.len() > ACK_RECEIPTS_MAX {
            return Err(Error::Invalid(format!(
                "at most {ACK_RECEIPTS_MAX} receipts per ack"
            )));
        }
        let t = self.existing_topic(topic)?;
        let (outcomes, rx) = {
            let mut st = t.lock();
            let gi = Self::group_index(&st, topic, group)?;
            let (outcomes, ops) = st.ack(gi, receipts);
            let mut rx = self.queue_ops(&t, &mut st, group, &ops, true)?;
            // "Already acked" may mean an ack still on its way to the disk: answer only once
            // everything queued before is durable, so a returned ack is never undone.
            if rx.is_none() && outcomes.contains(&AckOutcome::AlreadyAcked) {
                rx = Some(self.barrier()?);
            }
            (outcomes, rx)
        };
        Self::wait(rx).await?;
        Ok(outcomes)
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> Result<AckOutcome> {
        self.check_open()?;
        if delay_ms > NACK_DELAY_MS_MAX {
            return Err(Error::Invalid(format!(
                "retry delay of {delay_ms} ms exceeds {NACK_DELAY_MS_MAX} ms"
            )));
        }
        let t = self.existing_topic(topic)?;
        let now = self.now();
        let (outcome, dead, rx) = {
            let mut st = t.lock();
            let gi = Self::group_index(&st, topic, group)?;
            let (outcome, ops, dead) =
                st.nack(gi, receipt, now.saturating_add(delay_ms), false, reason);
            let rx = self.queue_ops(&t, &mut st, group, &ops, true)?;
            (outcome, dead, rx)
        };
        Self::wait(rx).await?;
        // A retry may be ready at once: wake long-polling consumers to look.
        t.notify.notify_waiters();
        if let Some(job) = dead {
            self.move_dead(&t, vec![job]).await;
        }
        Ok(outcome)
    }

    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        reason: &str,
    ) -> Result<AckOutcome> {
        self.check_open()?;
        let t = self.existing_topic(topic)?;
        let (outcome, dead, rx) = {
            let mut st = t.lock();
            let gi = Self::group_index(&st, topic, group)?;
            let (outcome, ops, dead) = st.nack(gi, receipt, 0, true, reason);
            let rx = self.queue_ops(&t, &mut st, group, &ops, true)?;
            (outcome, dead, rx)
        };
        Self::wait(rx).await?;
        if let Some(job) = dead {
            self.move_dead(&t, vec![job]).await;
        }
        Ok(outcome)
    }

    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        self.check_open()?;
        let dlq = self.dlq_topic(topic)?;
        let limit = limit.clamp(1, DEAD_LETTER_LIST_MAX);
        let locs: Vec<ReadLoc> = {
            let st = dlq.lock();
            let gi = Self::group_index(&st, &dlq.name, DLQ_GROUP)?;
            let g = &st.groups[gi];
            let mut locs = Vec::new();
            let mut bytes = 0u64;
            let mut off = from_dead_offset.max(g.low_watermark());
            while off < st.durable_end && locs.len() < limit && bytes < READ_BYTES_MAX {
                if !g.is_done(off)
                    && let Some(loc) = st.locate(off)
                {
                    bytes += u64::from(loc.len);
                    locs.push(loc);
                }
                off += 1;
            }
            locs
        };
        let stored = read_entries(&locs)?;
        locs.iter()
            .zip(stored)
            .map(|(loc, m)| Self::parse_dead(loc.offset, m))
            .collect()
    }

    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<u64> {
        self.check_open()?;
        let dlq = self.dlq_topic(topic)?;
        let _serial = self.inner.dlq_lock.lock().await;
        let dead = self.read_dead(&dlq, dead_offset).await?;
        let t = self.existing_topic(topic)?;
        // The group that gave up on it exists (groups are never deleted); a replay never
        // creates one.
        Self::group_index(&t.lock(), topic, &dead.group)?;
        let message = Message {
            id: dead.id,
            headers: dead.headers,
            payload: dead.payload,
            due: crate::api::Due::Now,
        };
        let confirms = self
            .append(
                &t,
                std::slice::from_ref(&message),
                FLAG_NO_DEDUP,
                Some(&dead.group),
            )
            .await?;
        self.resolve_dead(&dlq, dead_offset).await?;
        confirms
            .first()
            .map(|c| c.offset)
            .ok_or_else(|| Error::Invalid("empty confirm".into()))
    }

    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<()> {
        self.check_open()?;
        let dlq = self.dlq_topic(topic)?;
        let _serial = self.inner.dlq_lock.lock().await;
        self.read_dead(&dlq, dead_offset).await?;
        self.resolve_dead(&dlq, dead_offset).await
    }

    async fn stats(&self, topic: &str) -> Result<TopicStats> {
        self.topic_stats(topic)
    }

    async fn peek(&self, topic: &str, from_offset: u64, limit: usize) -> Result<Vec<Peeked>> {
        self.check_open()?;
        // Any existing topic, dead-letter ones included; no name check is needed for a
        // lookup that creates nothing.
        let t = self.existing_topic(topic)?;
        let limit = limit.min(PEEK_MESSAGES_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Locations only under the lock; the reads happen after it is released, like a
        // fetch's. A segment deleted meanwhile stays readable through its open file.
        let locs = t.lock().locate_range(from_offset, limit);
        let stored = read_entries(&locs)?;
        Ok(locs
            .iter()
            .zip(stored)
            .map(|(loc, m)| Peeked {
                offset: loc.offset,
                id: m.id,
                headers: m.headers,
                payload: m.payload,
                due_ms: m.due_ms,
            })
            .collect())
    }

    async fn topics(&self) -> Result<Vec<String>> {
        self.topic_names()
    }
}
