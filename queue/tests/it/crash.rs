//! Crash test: a child process publishes and acks under load and is killed with SIGKILL at
//! a random moment, again and again on the same directory; after each kill this process
//! opens the queue itself (recovery), checks that nothing confirmed was lost, then closes it
//! so that the next child recovers a directory that was itself recovered.
//!
//! The child is this test binary run again ([`crash_child`], selected by name and by the
//! `QUEUE_CRASH_CHILD_DIR` variable; without the variable it passes at once). It runs
//! several publishers (single and batch publishes with producer ids, payloads derived from
//! the id, some delayed messages, some ids published again) and consumers that fetch and ack
//! for the `worker` group. It prints one line per confirmed publish and per confirmed ack,
//! only after the call returned `Ok`, and one per delivery; this process reads them while
//! the child runs.
//!
//! What is checked after every kill (`verify`):
//! - every message known to be durable (confirmed, or seen by any consumer) is still there,
//!   at the same offset, with the same id, headers, payload and due time; an id is never
//!   stored at two offsets (de-duplication survives restarts); `next_offset` is past every
//!   such offset;
//! - a fresh read (group `audit`, which acks what it reads, and every few iterations a brand
//!   new group reading from offset 0) delivers every due message exactly once, never a
//!   delayed one early, and the group's lag afterwards is exactly the not-yet-due messages,
//!   so no offset is silently unreadable;
//! - for the `worker` group, a confirmed ack stays acked (the offset is never delivered to
//!   the group again); only acks in flight at the kill may be lost; every other due message
//!   is either redelivered or in the dead letters (a message whose lease was cut short by
//!   five kills is dead-lettered), and each dead letter is intact and moved only once.
//!
//! A group `hold` never reads, so retention keeps every segment and the whole history can be
//! checked again and again. Every recovery reads that whole history, so the run time grows
//! faster than the number of iterations (50 take some 20-30 s in a debug build).
//!
//! What SIGKILL does and does not test: killing a process does not drop the kernel's page
//! cache, so everything the child wrote reaches the files whether or not it was fsynced.
//! This test therefore shows that a confirm (publish or ack) is only given for bytes that
//! were written (a confirm handed out before the write would be lost here), that recovery
//! copes with whatever a kill leaves (torn frames: a `pwrite` interrupted by SIGKILL may stop
//! part-way; segment files created but never written), and that recovery of
//! a recovered directory works. That `fdatasync` really happens before the confirm, against
//! a power cut, is beyond what a process kill can show. Because a kill seldom lands inside a
//! `pwrite` (writes are short next to fsyncs), about a third of the iterations also leave, after
//! the kill, what such a kill leaves (`tear_tail`: a frame cut short at the end of the log,
//! maybe a new segment file not yet written).
//!
//! Knobs: `QUEUE_CRASH_ITERATIONS` (default 50), `QUEUE_CRASH_SEED` (printed at the start
//! and on failure).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use queue::{
    AckOutcome, Clock, Config, Delivery, Due, Engine, FetchOptions, Message, Queue, Receipt,
    StartAt, SystemClock, TopicStats,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "orders";
/// The group the child consumes with.
const WORKER: &str = "worker";
/// Reads every message once, in the verifier, and acks it.
const AUDIT: &str = "audit";
/// Never reads: keeps every segment from retention.
const HOLD: &str = "hold";

const CHILD_DIR_ENV: &str = "QUEUE_CRASH_CHILD_DIR";
const CHILD_ITER_ENV: &str = "QUEUE_CRASH_CHILD_ITER";
const CHILD_SEED_ENV: &str = "QUEUE_CRASH_CHILD_SEED";
const ITERATIONS_ENV: &str = "QUEUE_CRASH_ITERATIONS";
const SEED_ENV: &str = "QUEUE_CRASH_SEED";
const ITERATIONS_DEFAULT: u64 = 50;
/// The child's own test name, to run it alone.
const CHILD_TEST: &str = "crash::crash_child";
/// Marks the child's report lines (the test harness prints its own lines too).
const TAG: &str = "@@";

/// Small segments, so that segments roll often and kills land around new files.
const SEGMENT_BYTES: u64 = 128 * 1024;
/// The child stops by itself after this long if nobody kills it.
const CHILD_RUN: Duration = Duration::from_secs(5);
const PUBLISHERS: u32 = 4;
const CONSUMERS: u32 = 2;
/// Kill delay after the child reports it started, ms.
const KILL_MS: std::ops::RangeInclusive<u64> = 5..=150;
/// Longest delay of a delayed message, ms (a few iterations long, so delays cross kills).
const LONG_DELAY_MS: std::ops::Range<u64> = 500..2_500;
const SHORT_DELAY_MS: std::ops::Range<u64> = 10..200;
/// The engine's default; the dead letters of this test come from leases cut by kills.
const MAX_ATTEMPTS: u32 = 5;

// ----------------------------------------------------------------------------------------
// Messages derived from their ids.

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn id_hash(id: u128) -> u64 {
    splitmix((id as u64) ^ splitmix((id >> 64) as u64))
}

/// Producer id of message `seq` of publisher `task` in child run `iter`.
fn make_id(iter: u64, task: u32, seq: u32) -> u128 {
    (u128::from(iter) << 64) | (u128::from(task) << 32) | u128::from(seq)
}

fn payload_for(id: u128) -> Vec<u8> {
    let h = id_hash(id);
    let len = 1 + (h % 700) as usize;
    let mut out = Vec::with_capacity(len + 8);
    let mut s = h;
    while out.len() < len {
        s = splitmix(s);
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn headers_for(id: u128) -> Vec<(String, Vec<u8>)> {
    if id_hash(id).is_multiple_of(4) {
        vec![("id".to_string(), format!("{id:x}").into_bytes())]
    } else {
        Vec::new()
    }
}

fn message_for(id: u128, due_ms: Option<u64>) -> Message {
    Message {
        id: Some(id),
        headers: headers_for(id),
        payload: payload_for(id).into(),
        due: due_ms.map_or(Due::Now, Due::At),
    }
}

/// Checks a delivery against its id; returns the id.
fn check_delivery(d: &Delivery, now_ms: u64) -> Result<u128, String> {
    let id =
        d.id.ok_or_else(|| format!("offset {}: delivered without its producer id", d.offset))?;
    if d.payload.as_ref() != payload_for(id).as_slice() {
        return Err(format!(
            "offset {} id {id:x}: payload differs from the one published ({} bytes read)",
            d.offset,
            d.payload.len()
        ));
    }
    if d.headers != headers_for(id) {
        return Err(format!(
            "offset {} id {id:x}: headers differ: {:?}",
            d.offset, d.headers
        ));
    }
    if let Some(due) = d.due_ms
        && now_ms < due
    {
        return Err(format!(
            "offset {} id {id:x}: delivered at {now_ms}, before its due time {due}",
            d.offset
        ));
    }
    Ok(id)
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// The defaults (system clock, fsync before confirm, maintenance thread), with small
/// segments, and room for the verifier's whole-log reads, which lease every message at once.
fn engine_config() -> Config {
    Config {
        segment_bytes_max: SEGMENT_BYTES,
        max_attempts: MAX_ATTEMPTS,
        in_flight_max: 1 << 40,
        ..Config::default()
    }
}

// ----------------------------------------------------------------------------------------
// The child.

/// One report line: written in one call and flushed, so a kill leaves at most the line
/// being written incomplete (the parent drops a line without its newline).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{TAG}{line}\n").as_bytes());
    let _ = out.flush();
}

/// The child process: runs only when started by [`crash_recovery_under_sigkill`].
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let iter: u64 = std::env::var(CHILD_ITER_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("child iteration");
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("child seed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child runtime");
    rt.block_on(child_main(PathBuf::from(dir), iter, seed));
}

async fn child_main(dir: PathBuf, iter: u64, seed: u64) {
    let q = match Engine::open(&dir, engine_config()) {
        Ok(q) => q,
        Err(e) => {
            emit(&format!("BAD child could not open the queue: {e}"));
            panic!("child could not open the queue: {e}");
        }
    };
    let deadline = Instant::now() + CHILD_RUN;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let rng = StdRng::seed_from_u64(splitmix(seed ^ u64::from(p)));
        tasks.push(tokio::spawn(publisher(q.clone(), iter, p, rng, deadline)));
    }
    for c in 0..CONSUMERS {
        let rng = StdRng::seed_from_u64(splitmix(seed ^ (u64::from(c) + 100)));
        tasks.push(tokio::spawn(consumer(q.clone(), rng, deadline)));
    }
    emit("S");
    for t in tasks {
        if let Err(e) = t.await {
            emit(&format!("BAD child task failed: {e}"));
        }
    }
    if let Err(e) = q.close() {
        emit(&format!("BAD close: {e}"));
    }
    emit("DONE");
}

async fn publisher(q: Engine, iter: u64, task: u32, mut rng: StdRng, deadline: Instant) {
    let mut seq: u32 = 0;
    let mut mine: Vec<u128> = Vec::new();
    while Instant::now() < deadline {
        let n = if rng.random_bool(0.5) {
            1
        } else {
            rng.random_range(2..=16)
        };
        let now = now_ms();
        let mut msgs = Vec::with_capacity(n);
        let mut dues = Vec::with_capacity(n);
        for _ in 0..n {
            let id = if iter > 1 && rng.random_bool(0.02) {
                // Published (or maybe not) by the previous, killed child: must be confirmed
                // at the first copy's offset if that copy was stored.
                make_id(iter - 1, task, rng.random_range(1..=64))
            } else if !mine.is_empty() && rng.random_bool(0.02) {
                mine[rng.random_range(0..mine.len())]
            } else {
                seq += 1;
                make_id(iter, task, seq)
            };
            let due = if rng.random_bool(0.1) {
                Some(now + rng.random_range(SHORT_DELAY_MS))
            } else if rng.random_bool(0.02) {
                Some(now + rng.random_range(LONG_DELAY_MS))
            } else {
                None
            };
            msgs.push(message_for(id, due));
            dues.push((id, due));
        }
        let result = if n == 1 {
            let m = msgs.pop().expect("one message");
            q.publish(TOPIC, m).await.map(|c| vec![c])
        } else {
            q.publish_batch(TOPIC, msgs).await
        };
        match result {
            Ok(confirms) if confirms.len() == dues.len() => {
                for (c, (id, due)) in confirms.iter().zip(&dues) {
                    emit(&format!(
                        "P {id:x} {} {} {}",
                        c.offset,
                        due.unwrap_or(0),
                        u8::from(c.duplicate)
                    ));
                    mine.push(*id);
                }
            }
            Ok(confirms) => {
                emit(&format!(
                    "BAD {} confirms for {} messages",
                    confirms.len(),
                    dues.len()
                ));
                return;
            }
            Err(e) => {
                emit(&format!("BAD publish failed: {e}"));
                return;
            }
        }
    }
}

async fn consumer(q: Engine, mut rng: StdRng, deadline: Instant) {
    while Instant::now() < deadline {
        let opts = FetchOptions {
            max_messages: 32,
            // Longer than the child lives: only a kill ends a lease.
            lease_ms: Some(60_000),
            wait_ms: 20,
        };
        let got = match q.fetch(TOPIC, WORKER, opts).await {
            Ok(got) => got,
            Err(e) => {
                emit(&format!("BAD fetch failed: {e}"));
                return;
            }
        };
        let now = now_ms();
        let mut receipts = Vec::with_capacity(got.len());
        for d in &got {
            emit(&format!(
                "F {} {} {:x}",
                d.offset,
                d.attempt,
                d.id.unwrap_or(0)
            ));
            if let Err(e) = check_delivery(d, now) {
                emit(&format!("BAD {e}"));
            }
            // Leave some leased: the next run must deliver them again.
            if rng.random_bool(0.9) {
                receipts.push(d.receipt());
            }
        }
        if receipts.is_empty() {
            continue;
        }
        for r in &receipts {
            emit(&format!("I {}", r.offset));
        }
        match q.ack(TOPIC, WORKER, &receipts).await {
            Ok(outcomes) => {
                for (r, o) in receipts.iter().zip(&outcomes) {
                    if *o == AckOutcome::Acked {
                        emit(&format!("A {}", r.offset));
                    } else {
                        emit(&format!("BAD ack of {r:?} gave {o:?}"));
                    }
                }
            }
            Err(e) => {
                emit(&format!("BAD ack failed: {e}"));
                return;
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// What the parent knows.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DueInfo {
    /// Learned only from a duplicate confirm: the stored copy's due time is not known yet.
    Unknown,
    Now,
    At(u64),
}

impl DueInfo {
    fn from_delivery(due_ms: Option<u64>) -> DueInfo {
        due_ms.map_or(DueInfo::Now, DueInfo::At)
    }

    /// Must a read started at `now` deliver it?
    fn due_by(self, now: u64) -> bool {
        match self {
            DueInfo::Unknown => false,
            DueInfo::Now => true,
            DueInfo::At(t) => t <= now,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Known {
    id: u128,
    due: DueInfo,
}

/// Everything the parent has learned, over all iterations.
#[derive(Debug, Default)]
struct Model {
    /// Messages known to be durable (confirmed, or delivered to someone), by offset.
    known: BTreeMap<u64, Known>,
    id_off: HashMap<u128, u64>,
    /// Worker-group acks that were confirmed (or proven durable).
    acked: HashSet<u64>,
    /// Worker-group acks the child started but did not see confirmed.
    ack_in_flight: HashSet<u64>,
    /// Offsets the audit group has read and acked.
    audited: HashSet<u64>,
    /// Dead letters: original offset -> dead-letter offset.
    dead: HashMap<u64, u64>,
    /// Latest due time of any delayed message seen.
    max_due: u64,
    // Totals for the summary.
    confirms: u64,
    duplicate_confirms: u64,
    child_acks: u64,
    redeliveries_seen: u64,
    torn_bytes: u64,
    recoveries_with_torn_tail: u64,
    tears: u64,
    kills: u64,
    child_time: Duration,
    verify_time: Duration,
    open_time: Duration,
}

impl Model {
    /// Records that `off` holds `id`; an id at two offsets, or two ids at one offset, is a
    /// lost or duplicated message.
    fn learn(&mut self, off: u64, id: u128, due: DueInfo) -> Result<(), String> {
        match self.id_off.get(&id) {
            Some(&o) if o != off => {
                return Err(format!(
                    "id {id:x} is at offset {off} but was earlier at offset {o}"
                ));
            }
            Some(_) => {}
            None => {
                self.id_off.insert(id, off);
            }
        }
        if let DueInfo::At(t) = due {
            self.max_due = self.max_due.max(t);
        }
        match self.known.get_mut(&off) {
            Some(k) => {
                if k.id != id {
                    return Err(format!(
                        "offset {off} holds id {id:x} but held id {:x} before",
                        k.id
                    ));
                }
                match (k.due, due) {
                    (_, DueInfo::Unknown) => {}
                    (DueInfo::Unknown, d) => k.due = d,
                    (a, b) if a != b => {
                        return Err(format!(
                            "offset {off} id {id:x}: due time {b:?}, but {a:?} was published"
                        ));
                    }
                    _ => {}
                }
            }
            None => {
                self.known.insert(off, Known { id, due });
            }
        }
        Ok(())
    }

    fn learn_delivery(&mut self, d: &Delivery, now: u64) -> Result<u128, String> {
        let id = check_delivery(d, now)?;
        self.learn(d.offset, id, DueInfo::from_delivery(d.due_ms))?;
        if d.attempt > 1 {
            self.redeliveries_seen += 1;
        }
        Ok(id)
    }

    /// Applies the child's report lines, in the order it wrote them.
    fn apply_child_lines(&mut self, lines: &[String]) -> Result<(), String> {
        for line in lines {
            let mut parts = line.split(' ');
            let kind = parts.next().unwrap_or("");
            let mut field = |what: &str| -> Result<String, String> {
                parts
                    .next()
                    .map(str::to_string)
                    .ok_or_else(|| format!("child line {line:?}: no {what}"))
            };
            let num = |s: String| -> Result<u64, String> {
                s.parse::<u64>()
                    .map_err(|e| format!("child line {line:?}: {e}"))
            };
            let hex = |s: String| -> Result<u128, String> {
                u128::from_str_radix(&s, 16).map_err(|e| format!("child line {line:?}: {e}"))
            };
            match kind {
                "S" | "DONE" => {}
                "BAD" => return Err(format!("the child found a problem: {line}")),
                "P" => {
                    let id = hex(field("id")?)?;
                    let off = num(field("offset")?)?;
                    let due = num(field("due")?)?;
                    let dup = field("duplicate")? == "1";
                    self.confirms += 1;
                    let due = if dup {
                        self.duplicate_confirms += 1;
                        DueInfo::Unknown
                    } else if due == 0 {
                        DueInfo::Now
                    } else {
                        DueInfo::At(due)
                    };
                    self.learn(off, id, due)
                        .map_err(|e| format!("publish confirm {line:?}: {e}"))?;
                }
                "F" => {
                    let off = num(field("offset")?)?;
                    let attempt = num(field("attempt")?)?;
                    let id = hex(field("id")?)?;
                    if self.acked.contains(&off) {
                        return Err(format!(
                            "worker group: offset {off} was delivered again (attempt {attempt}) \
                             after its ack was confirmed"
                        ));
                    }
                    if let Some(dead) = self.dead.get(&off) {
                        return Err(format!(
                            "worker group: offset {off} was delivered (attempt {attempt}) after \
                             it was dead-lettered as {dead}"
                        ));
                    }
                    if attempt > 1 {
                        self.redeliveries_seen += 1;
                    }
                    self.learn(off, id, DueInfo::Unknown)
                        .map_err(|e| format!("delivery {line:?}: {e}"))?;
                }
                "I" => {
                    self.ack_in_flight.insert(num(field("offset")?)?);
                }
                "A" => {
                    let off = num(field("offset")?)?;
                    if !self.acked.insert(off) {
                        return Err(format!(
                            "worker group: offset {off} acked (outcome Acked) twice"
                        ));
                    }
                    self.ack_in_flight.remove(&off);
                    self.child_acks += 1;
                }
                _ => return Err(format!("unexpected child line {line:?}")),
            }
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------
// The parent.

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn group<'a>(s: &'a TopicStats, name: &str) -> Result<&'a queue::GroupStats, String> {
    s.groups
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| format!("stats have no group {name:?}: {s:?}"))
}

fn read_opts() -> FetchOptions {
    FetchOptions {
        max_messages: queue::limits::FETCH_MESSAGES_MAX,
        lease_ms: Some(600_000),
        wait_ms: 0,
    }
}

/// Reads `group` until nothing is ready, checking each delivery; returns the deliveries and
/// the topic stats taken when nothing was ready (between two empty fetches, so that they
/// describe a state with nothing deliverable).
async fn drain(
    q: &Engine,
    group_name: &str,
    model: &mut Model,
) -> Result<(Vec<Delivery>, TopicStats), String> {
    let mut out: Vec<Delivery> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let mut batch = q
            .fetch(TOPIC, group_name, read_opts())
            .await
            .map_err(err("fetch"))?;
        let mut stats = None;
        if batch.is_empty() {
            let s = q.stats(TOPIC).await.map_err(err("stats"))?;
            batch = q
                .fetch(TOPIC, group_name, read_opts())
                .await
                .map_err(err("fetch"))?;
            stats = Some(s);
        }
        if batch.is_empty() {
            let s = stats.ok_or("no stats")?;
            return Ok((out, s));
        }
        let now = now_ms();
        for d in batch {
            model
                .learn_delivery(&d, now)
                .map_err(|e| format!("group {group_name}: {e}"))?;
            if !seen.insert(d.offset) {
                return Err(format!(
                    "group {group_name}: offset {} delivered twice in one read",
                    d.offset
                ));
            }
            out.push(d);
        }
    }
}

async fn ack_all(q: &Engine, group_name: &str, receipts: &[Receipt]) -> Result<(), String> {
    for chunk in receipts.chunks(queue::limits::ACK_RECEIPTS_MAX) {
        let outcomes = q.ack(TOPIC, group_name, chunk).await.map_err(err("ack"))?;
        for (r, o) in chunk.iter().zip(&outcomes) {
            if *o != AckOutcome::Acked {
                return Err(format!("group {group_name}: ack of {r:?} gave {o:?}"));
            }
        }
    }
    Ok(())
}

/// Opens the queue after a kill and checks everything the model knows; closes it again.
async fn verify(
    dir: &Path,
    model: &mut Model,
    full_read: Option<String>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let t = Instant::now();
    let q = Engine::open(dir, engine_config()).map_err(err("recovery (open) failed"))?;
    model.open_time += t.elapsed();
    if let Some(r) = q.recovery_reports().get(TOPIC) {
        if !r.repaired.is_empty() || r.messages_lost != 0 {
            return Err(format!("recovery repaired or lost data: {r:?}"));
        }
        if r.torn_bytes_truncated > 0 {
            model.recoveries_with_torn_tail += 1;
            model.torn_bytes += r.torn_bytes_truncated;
        }
    }
    let s = q.stats(TOPIC).await.map_err(err("stats"))?;
    if let Some((&max_off, _)) = model.known.last_key_value()
        && s.next_offset <= max_off
    {
        return Err(format!(
            "next_offset {} after recovery, but offset {max_off} was confirmed or delivered",
            s.next_offset
        ));
    }
    if s.durable_end != s.next_offset || s.log_start != 0 {
        return Err(format!(
            "after recovery durable_end must be next_offset and log_start 0 (group {HOLD} \
             reads nothing): {s:?}"
        ));
    }

    // A fresh read: every due message exactly once, intact, at its offset.
    let start = now_ms();
    let (got, s) = drain(&q, AUDIT, model).await?;
    for d in &got {
        if model.audited.contains(&d.offset) {
            return Err(format!(
                "group {AUDIT}: offset {} delivered again after its ack was confirmed",
                d.offset
            ));
        }
    }
    let receipts: Vec<Receipt> = got.iter().map(Delivery::receipt).collect();
    ack_all(&q, AUDIT, &receipts).await?;
    model.audited.extend(got.iter().map(|d| d.offset));
    let audit = group(&s, AUDIT)?;
    if audit.lag != s.delayed_pending + got.len() as u64 || audit.in_flight != got.len() as u64 {
        return Err(format!(
            "group {AUDIT}: after reading everything ready, lag {} and in_flight {} should be \
             {} read + {} not yet due: some message can't be read ({s:?})",
            audit.lag,
            audit.in_flight,
            got.len(),
            s.delayed_pending
        ));
    }
    for (off, k) in &model.known {
        if k.due.due_by(start) && !model.audited.contains(off) {
            return Err(format!(
                "offset {off} (id {:x}, due {:?}) is missing: a fresh read did not deliver it",
                k.id, k.due
            ));
        }
    }

    // The worker group: confirmed acks stay acked, nothing else goes missing.
    let start = now_ms();
    let (got, s) = drain(&q, WORKER, model).await?;
    let worker = group(&s, WORKER)?;
    if worker.lag != worker.in_flight + s.delayed_pending
        || worker.in_flight != got.len() as u64
        || worker.retry_waiting != 0
    {
        return Err(format!(
            "group {WORKER}: after reading everything ready, {} delivered, stats disagree: {s:?}",
            got.len()
        ));
    }
    let delivered: HashSet<u64> = got.iter().map(|d| d.offset).collect();
    for d in &got {
        if model.acked.contains(&d.offset) {
            return Err(format!(
                "group {WORKER}: offset {} delivered again (attempt {}) after its ack was confirmed",
                d.offset, d.attempt
            ));
        }
    }
    check_dead_letters(&q, model).await?;
    for d in &got {
        if let Some(dead) = model.dead.get(&d.offset) {
            return Err(format!(
                "group {WORKER}: offset {} delivered and also dead-lettered as {dead}",
                d.offset
            ));
        }
    }
    let mut proven = Vec::new();
    for (off, k) in &model.known {
        if !k.due.due_by(start)
            || model.acked.contains(off)
            || model.dead.contains_key(off)
            || delivered.contains(off)
        {
            continue;
        }
        if model.ack_in_flight.contains(off) {
            // The ack was under way at the kill and reached the file: done for good now.
            proven.push(*off);
            continue;
        }
        return Err(format!(
            "group {WORKER}: offset {off} (id {:x}) was never acked but is neither delivered \
             again nor dead-lettered",
            k.id
        ));
    }
    model.acked.extend(proven);
    model.ack_in_flight.clear();
    // Finish about half; the rest stay leased and go back to the next child (attempt + 1).
    let receipts: Vec<Receipt> = got
        .iter()
        .filter(|_| rng.random_bool(0.5))
        .map(Delivery::receipt)
        .collect();
    ack_all(&q, WORKER, &receipts).await?;
    model.acked.extend(receipts.iter().map(|r| r.offset));

    // Every few iterations, a brand-new group reads the whole log from offset 0.
    if let Some(name) = full_read {
        q.create_group(TOPIC, &name, StartAt::Earliest)
            .await
            .map_err(err("create group"))?;
        let start = now_ms();
        let (got, s) = drain(&q, &name, model).await?;
        if got.len() as u64 + s.delayed_pending != s.next_offset {
            return Err(format!(
                "group {name}: read {} messages from offset 0, with {} not yet due, but \
                 next_offset is {}: the log has holes",
                got.len(),
                s.delayed_pending,
                s.next_offset
            ));
        }
        let read: HashSet<u64> = got.iter().map(|d| d.offset).collect();
        for (off, k) in &model.known {
            if k.due.due_by(start) && !read.contains(off) {
                return Err(format!(
                    "group {name}: offset {off} (id {:x}) missing from a read of the whole log",
                    k.id
                ));
            }
        }
    }

    q.close().map_err(err("close"))?;
    Ok(())
}

/// Lists every dead letter; each must be a worker-group message that was never acked,
/// intact, moved once, and dead letters once listed stay listed.
async fn check_dead_letters(q: &Engine, model: &mut Model) -> Result<(), String> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = q
            .dead_letters(TOPIC, from, queue::limits::DEAD_LETTER_LIST_MAX)
            .await
            .map_err(err("dead letters"))?;
        let Some(last) = page.last() else { break };
        from = last.dead_offset + 1;
        all.extend(page);
    }
    let mut now_dead: HashMap<u64, u64> = HashMap::new();
    for dl in &all {
        let id = dl
            .id
            .ok_or_else(|| format!("dead letter {} lost its id", dl.dead_offset))?;
        if dl.group != WORKER
            || dl.attempts < MAX_ATTEMPTS
            || !dl.reason.starts_with("lease expired")
            || dl.payload.as_ref() != payload_for(id).as_slice()
            || dl.headers != headers_for(id)
        {
            return Err(format!(
                "dead letter {} (offset {}) is not the message it was: group {:?}, attempts \
                 {}, reason {:?}, {} payload bytes",
                dl.dead_offset,
                dl.original_offset,
                dl.group,
                dl.attempts,
                dl.reason,
                dl.payload.len()
            ));
        }
        model
            .learn(dl.original_offset, id, DueInfo::Unknown)
            .map_err(|e| format!("dead letter {}: {e}", dl.dead_offset))?;
        if model.acked.contains(&dl.original_offset) {
            return Err(format!(
                "offset {} was acked by the worker group and yet dead-lettered",
                dl.original_offset
            ));
        }
        if let Some(other) = now_dead.insert(dl.original_offset, dl.dead_offset) {
            return Err(format!(
                "offset {} was dead-lettered twice (dead offsets {other} and {})",
                dl.original_offset, dl.dead_offset
            ));
        }
    }
    for (off, dead) in &model.dead {
        if now_dead.get(off) != Some(dead) {
            return Err(format!(
                "dead letter {dead} (offset {off}) disappeared: {:?}",
                now_dead.get(off)
            ));
        }
    }
    let s = q.stats(TOPIC).await.map_err(err("stats"))?;
    if s.dead_letters_pending != now_dead.len() as u64 {
        return Err(format!(
            "stats say {} dead letters pending, the list has {}",
            s.dead_letters_pending,
            now_dead.len()
        ));
    }
    model.dead = now_dead;
    Ok(())
}

/// Leaves what a SIGKILL in the middle of the writer's `pwrite` leaves (a kill seldom lands
/// there by itself: writes are short next to fsyncs). None of it was confirmed: recovery
/// must cut it away and lose nothing. The writer writes in offset order and finishes (and
/// fsyncs) a segment before it writes the next one, which a roll has already created, so a
/// kill can leave: the first bytes of a frame after the end of the last segment, with or
/// without an empty next segment file; or the last segment complete and the next one holding
/// the first bytes of its header.
/// Returns whether it changed anything (a kill may have left a torn new file already).
fn tear_tail(dir: &Path, rng: &mut StdRng) -> Result<bool, String> {
    const HEADER_LEN: u64 = queue::format::SEGMENT_HEADER_LEN as u64;
    let tdir = dir.join("topics").join(TOPIC);
    let mut segs: Vec<(u64, PathBuf, u64)> = std::fs::read_dir(&tdir)
        .map_err(err("list topic directory"))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let seq = path
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            let len = std::fs::metadata(&path).ok()?.len();
            Some((seq, path, len))
        })
        .collect();
    segs.sort();
    let Some((seq, last, len)) = segs.last().cloned() else {
        return Err("no segment file".into());
    };
    let next_file = tdir.join(format!("{:020}.seg", seq + 1));
    let (torn_file, next_bytes) = if len == 0 {
        // The kill left a new, empty segment: the write it cut short was the one before.
        match segs.len().checked_sub(2).map(|i| &segs[i]) {
            Some((_, prev, prev_len)) if *prev_len >= HEADER_LEN => (Some(prev.clone()), None),
            _ => return Ok(false),
        }
    } else if len < HEADER_LEN {
        // The kill cut a new segment's header already.
        return Ok(false);
    } else {
        match rng.random_range(0..3) {
            0 => (Some(last), None),
            1 => (Some(last), Some(0)),
            _ => (None, Some(rng.random_range(1..=24))),
        }
    };
    if let Some(path) = torn_file {
        let body: Vec<u8> = (0..rng.random_range(1..20_000))
            .map(|_| rng.random())
            .collect();
        let mut frame = Vec::new();
        queue::format::encode_frame(&mut frame, &body);
        let cut = rng.random_range(1..frame.len());
        // Where the next frame would have gone: after the last whole frame, inside the
        // preallocated zeros if the file has any (a killed write leaves its first bytes
        // there, not past the zeros).
        let bytes = std::fs::read(&path).map_err(err("read the tail"))?;
        let mut end = HEADER_LEN as usize;
        while let Ok((_, n)) = queue::format::decode_frame(&bytes[end.min(bytes.len())..]) {
            end += n;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&frame[..cut], end as u64)
            })
            .map_err(err("write a torn frame"))?;
    }
    if let Some(n) = next_bytes {
        // At most 24 bytes: magic, version, the header CRC (which covers the base offset,
        // unknown here, and which recovery cannot check without the bytes after it) and
        // the sequence number.
        let header = queue::format::SegmentHeader {
            seq: seq + 1,
            base_offset: 0,
        }
        .encode();
        std::fs::write(&next_file, &header[..n]).map_err(err("start a new segment"))?;
    }
    Ok(true)
}

/// Runs one child, kills it, and returns its report lines.
fn run_child(dir: &Path, iter: u64, child_seed: u64, kill_ms: u64) -> Result<Vec<String>, String> {
    // On Linux, the running binary itself, even if a rebuild has replaced the file since.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe().map_err(err("current_exe"))?
    };
    let mut child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ITER_ENV, iter.to_string())
        .env(CHILD_SEED_ENV, child_seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(err("spawn child"))?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut by the kill has no newline: drop it.
            let Some(line) = buf.strip_suffix(b"\n") else {
                break;
            };
            let line = String::from_utf8_lossy(line);
            // The harness may have started the line ("test crash::crash_child ... ").
            if let Some(at) = line.find(TAG)
                && tx.send(line[at + TAG.len()..].to_string()).is_err()
            {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let wait_until = Instant::now() + Duration::from_secs(60);
    let started = loop {
        let left = wait_until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let s = l == "S";
                lines.push(l);
                if s {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if started {
        std::thread::sleep(Duration::from_millis(kill_ms));
    }
    // SIGKILL: no destructor, no flush, no close runs in the child.
    let _ = child.kill();
    let status = child.wait().map_err(err("wait for child"))?;
    reader
        .join()
        .map_err(|_| "child stdout reader panicked".to_string())?;
    lines.extend(rx.try_iter());
    if !started {
        let tail = &lines[lines.len().saturating_sub(20)..];
        return Err(format!(
            "child did not start (status {status}); its last lines: {tail:?}"
        ));
    }
    let killed = status.signal() == Some(9);
    let finished = status.success() && lines.last().is_some_and(|l| l == "DONE");
    if !killed && !finished {
        let bad: Vec<_> = lines.iter().filter(|l| l.starts_with("BAD")).collect();
        return Err(format!("child failed (status {status}): {bad:?}"));
    }
    Ok(lines)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// The crash test proper (see the module documentation).
#[test]
fn crash_recovery_under_sigkill() {
    let seed = env_u64(SEED_ENV).unwrap_or_else(rand::random);
    let iterations = env_u64(ITERATIONS_ENV).unwrap_or(ITERATIONS_DEFAULT).max(1);
    println!("crash test: seed {seed} ({SEED_ENV}), {iterations} iterations ({ITERATIONS_ENV})");
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    // A whole-log read every `full_every` iterations, and one at the end: at most ~50 groups
    // (GROUPS_MAX is 64).
    let full_every = (iterations / 50).max(10);
    let started = Instant::now();

    let setup = rt.block_on(async {
        let q = Engine::open(dir.path(), engine_config()).map_err(err("open"))?;
        for g in [HOLD, AUDIT, WORKER] {
            q.create_group(TOPIC, g, StartAt::Earliest)
                .await
                .map_err(err("create group"))?;
        }
        q.close().map_err(err("close"))
    });
    if let Err(e) = setup {
        panic!("crash test setup failed (seed {seed}): {e}");
    }

    let mut last_kill_ms = now_ms();
    for iter in 1..=iterations {
        let child_seed: u64 = rng.random();
        let kill_ms = rng.random_range(KILL_MS);
        let full = (iter % full_every == 0).then(|| format!("full-{iter}"));
        let tear = rng.random_bool(0.3);
        let t0 = Instant::now();
        let result = run_child(dir.path(), iter, child_seed, kill_ms).and_then(|lines| {
            last_kill_ms = now_ms();
            model.child_time += t0.elapsed();
            if lines.last().is_none_or(|l| l != "DONE") {
                model.kills += 1;
            }
            model.apply_child_lines(&lines)?;
            if tear && tear_tail(dir.path(), &mut rng)? {
                model.tears += 1;
            }
            let t1 = Instant::now();
            let r = rt.block_on(verify(dir.path(), &mut model, full, &mut rng));
            model.verify_time += t1.elapsed();
            r
        });
        if let Err(e) = result {
            let kept = dir.keep();
            panic!(
                "crash test failed at iteration {iter} of {iterations} (seed {seed}: rerun with \
                 {SEED_ENV}={seed}; queue directory kept at {}): {e}",
                kept.display()
            );
        }
        if iter % 10 == 0 {
            println!(
                "crash test: iteration {iter}: {} messages known, {} acks, {} dead letters, \
                 {:.1}s (children {:.1}s, checks {:.1}s, of which recovery {:.1}s)",
                model.known.len(),
                model.acked.len(),
                model.dead.len(),
                started.elapsed().as_secs_f64(),
                model.child_time.as_secs_f64(),
                model.verify_time.as_secs_f64(),
                model.open_time.as_secs_f64()
            );
        }
    }

    // Last: wait until every delayed message is due, then read everything once more.
    let due_all = model.max_due.max(last_kill_ms + LONG_DELAY_MS.end) + 50;
    std::thread::sleep(Duration::from_millis(due_all.saturating_sub(now_ms())));
    let last = rt.block_on(verify(
        dir.path(),
        &mut model,
        Some("full-final".to_string()),
        &mut rng,
    ));
    if let Err(e) = last {
        let kept = dir.keep();
        panic!(
            "crash test failed in the final check (seed {seed}: rerun with {SEED_ENV}={seed}; \
             queue directory kept at {}): {e}",
            kept.display()
        );
    }
    // The final read delivered everything, so every due time is known and past.
    let now = now_ms();
    let unread: Vec<_> = model
        .known
        .iter()
        .filter(|(_, k)| !k.due.due_by(now))
        .take(10)
        .collect();
    assert!(
        unread.is_empty(),
        "messages never delivered by the final read (seed {seed}): {unread:?}"
    );
    println!(
        "crash test: {iterations} iterations ({} killed mid-run) in {:.1}s: {} confirms ({} \
         duplicates), {} messages known, {} acks by the child, {} redeliveries, {} dead \
         letters, {} recoveries cut a torn tail ({} bytes; {} tails torn on purpose)",
        model.kills,
        started.elapsed().as_secs_f64(),
        model.confirms,
        model.duplicate_confirms,
        model.known.len(),
        model.child_acks,
        model.redeliveries_seen,
        model.dead.len(),
        model.recoveries_with_torn_tail,
        model.torn_bytes,
        model.tears
    );
    assert!(
        model.confirms > 0 && model.child_acks > 0,
        "the children confirmed nothing (seed {seed})"
    );
    assert!(
        model.kills * 2 >= iterations,
        "most children finished before the kill (seed {seed})"
    );
}
