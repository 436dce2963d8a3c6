//! Damage on disk: a tail cut at every byte, bit flips in sealed segments (refused, then
//! repaired, then reopened without repair), garbage after the last record, segment files
//! cut at creation, damage inside the tail with valid records after it (corruption, not a
//! torn write), missing offsets between segments, batches too large for a record, and
//! the format decoders fed random bytes.
//!
//! Every case works on a copy of a data directory prepared once, and derives what must
//! survive from the pristine segment files (walked with `queue::format`), so the
//! expectations follow the bytes actually written rather than guesses about sizes.
//! Random choices print their seed; `QUEUE_CORRUPTION_SEED=<seed>` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use queue::format::{
    self, BatchHeader, GroupOp, KIND_GROUP_OPS, KIND_MESSAGES, OpKind, Record, SEGMENT_HEADER_LEN,
    SegmentHeader,
};
use queue::{
    Config, Delivery, Due, Engine, Error, FetchOptions, ManualClock, Message, Queue, Receipt,
    StartAt,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{T0, test_config};

const TOPIC: &str = "t";
const GROUP: &str = "g";

// ---------------------------------------------------------------------------------------
// Messages: everything about message `off` is a function of `off`, so any delivery can be
// checked for integrity on its own.

fn payload(off: u64) -> Vec<u8> {
    let mut p = format!("msg-{off}:").into_bytes();
    let extra = (off * 7 % 23) as usize;
    p.extend((0..extra).map(|i| (off as u8).wrapping_mul(31).wrapping_add(i as u8)));
    p
}

fn id_of(off: u64) -> Option<u128> {
    off.is_multiple_of(3)
        .then(|| 0xC0FF_EE00_0000_0000_0000_0000_0000_0000 + u128::from(off))
}

fn headers_of(off: u64) -> Vec<(String, Vec<u8>)> {
    if off % 4 == 1 {
        vec![("h".to_string(), format!("v{off}").into_bytes())]
    } else {
        Vec::new()
    }
}

/// Due in the past for some: the entry carries a due time but is deliverable at once.
fn due_of(off: u64) -> Option<u64> {
    (off % 5 == 2).then_some(T0 - 1 - off)
}

fn msg_for(off: u64) -> Message {
    Message {
        id: id_of(off),
        headers: headers_of(off),
        payload: payload(off).into(),
        due: due_of(off).map_or(Due::Now, Due::At),
    }
}

fn check_delivery(d: &Delivery, context: &str) {
    let off = d.offset;
    assert_eq!(
        d.payload.as_ref(),
        payload(off).as_slice(),
        "{context}: payload of {off}"
    );
    assert_eq!(d.headers, headers_of(off), "{context}: headers of {off}");
    assert_eq!(d.id, id_of(off), "{context}: id of {off}");
    assert_eq!(d.due_ms, due_of(off), "{context}: due of {off}");
}

// ---------------------------------------------------------------------------------------
// Data directories.

/// The byte surgery here reasons about files that end at their last frame (a torn write's
/// bytes counted up to the end of the file, garbage appended after the last frame), so
/// these directories are written without preallocated space; `prealloc.rs` covers files
/// that have it (zeros after the frames, a torn frame or a hole inside them).
fn config(clock: &ManualClock, segment_bytes_max: u64, repair: bool) -> Config {
    let mut c = test_config(clock);
    c.segment_bytes_max = segment_bytes_max;
    c.repair = repair;
    c.preallocate_bytes = 0;
    c
}

/// `Engine::open`, retrying while the directory's lock is taken. An engine that was closed
/// and dropped has released its lock, but a child process spawned meanwhile by another test
/// in this binary (the crash test) holds a copy of the lock file's descriptor until it
/// execs, and `flock` locks belong to the open file, not to the descriptor.
pub(crate) fn open_engine(dir: &Path, config: Config) -> queue::Result<Engine> {
    let mut tries = 0;
    loop {
        match Engine::open(dir, config.clone()) {
            Err(Error::Io { op, .. }) if op.starts_with("lock") && tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn topic_dir(dir: &Path) -> PathBuf {
    dir.join("topics").join(TOPIC)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn fresh_copy(base: &Path) -> tempfile::TempDir {
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(base, work.path());
    work
}

/// Publishes rounds of 1..=3-message batches; group `g` leases two messages every other
/// round and acks the oldest lease every third round, so group records are mixed in.
/// Stops after at least `min_rounds` rounds, once `enough` holds for the segments on disk
/// (checked right after a publish, when everything before it is written). Returns the
/// number of messages.
async fn build_until(
    dir: &Path,
    clock: &ManualClock,
    segment_bytes_max: u64,
    min_rounds: u64,
    enough: impl Fn(&[SegInfo]) -> bool,
) -> u64 {
    let q = open_engine(dir, config(clock, segment_bytes_max, false)).expect("open");
    q.create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("group");
    let mut next = 0u64;
    let mut leased: std::collections::VecDeque<Receipt> = Default::default();
    for round in 0.. {
        assert!(round < 1_000, "the build never reached its goal");
        let n = round % 3 + 1;
        let confirms = q
            .publish_batch(TOPIC, (next..next + n).map(msg_for).collect())
            .await
            .expect("publish");
        let offsets: Vec<u64> = confirms.iter().map(|c| c.offset).collect();
        assert_eq!(offsets, (next..next + n).collect::<Vec<_>>());
        next += n;
        if round + 1 >= min_rounds && enough(&scan_topic(dir)) {
            break;
        }
        if round % 2 == 1 {
            let opts = FetchOptions {
                max_messages: 2,
                lease_ms: Some(600_000),
                wait_ms: 0,
            };
            let got = q.fetch(TOPIC, GROUP, opts).await.expect("fetch");
            leased.extend(got.iter().map(Delivery::receipt));
        }
        if round % 3 == 2
            && let Some(r) = leased.pop_front()
        {
            q.ack(TOPIC, GROUP, &[r]).await.expect("ack");
        }
    }
    q.close().expect("close");
    next
}

/// A pristine data directory built by [`build_until`] for a test to damage copies of, with
/// its clock, the number of messages written and its segments.
type Base = (tempfile::TempDir, ManualClock, u64, Vec<SegInfo>);

async fn build_base_until(
    segment_bytes_max: u64,
    min_rounds: u64,
    enough: impl Fn(&[SegInfo]) -> bool,
) -> Base {
    let base = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let total = build_until(base.path(), &clock, segment_bytes_max, min_rounds, enough).await;
    let segs = scan_topic(base.path());
    (base, clock, total, segs)
}

/// [`build_base_until`] after `rounds` rounds.
async fn build_base(segment_bytes_max: u64, rounds: u64) -> Base {
    build_base_until(segment_bytes_max, rounds, |_| true).await
}

// ---------------------------------------------------------------------------------------
// What is on disk, read with the format module.

#[derive(Debug, Clone)]
struct Frame {
    start: u64,
    end: u64,
    /// Offsets of the messages in the frame (empty for group operations).
    messages: Range<u64>,
    /// Group operations in the frame.
    ops: Vec<(String, GroupOp)>,
}

#[derive(Debug, Clone)]
struct SegInfo {
    name: std::ffi::OsString,
    base_offset: u64,
    len: u64,
    frames: Vec<Frame>,
}

impl SegInfo {
    /// The frame holding byte `pos` (`None` inside the header).
    fn frame_at(&self, pos: u64) -> Option<&Frame> {
        self.frames.iter().find(|f| (f.start..f.end).contains(&pos))
    }
    /// First message offset at or after byte `pos`.
    fn first_offset_from(&self, pos: u64) -> u64 {
        self.base_offset
            + self
                .frames
                .iter()
                .filter(|f| f.end <= pos)
                .map(|f| f.messages.end - f.messages.start)
                .sum::<u64>()
    }
}

fn scan_segment(path: &Path) -> SegInfo {
    let buf = std::fs::read(path).expect("read segment");
    let header = SegmentHeader::decode(&buf).expect("pristine header");
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < buf.len() {
        let (body, len) = format::decode_frame(&buf[pos..]).expect("pristine frame");
        let (messages, ops) = match format::decode_record(body).expect("pristine record") {
            Record::Messages(h, _) => (h.base_offset..h.base_offset + u64::from(h.count), vec![]),
            Record::GroupOps(g, ops) => (
                0..0,
                ops.into_iter().map(|op| (g.to_string(), op)).collect(),
            ),
        };
        frames.push(Frame {
            start: pos as u64,
            end: (pos + len) as u64,
            messages,
            ops,
        });
        pos += len;
    }
    SegInfo {
        name: path.file_name().expect("file name").to_os_string(),
        base_offset: header.base_offset,
        len: buf.len() as u64,
        frames,
    }
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(topic_dir(dir))
        .expect("list topic")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    out.sort();
    out
}

fn scan_topic(dir: &Path) -> Vec<SegInfo> {
    segment_paths(dir).iter().map(|p| scan_segment(p)).collect()
}

/// What a reopened engine must show, given the frames that survive.
#[derive(Debug, Default)]
struct Expect {
    present: BTreeSet<u64>,
    next_offset: u64,
    /// Offsets group `g` acked in surviving records.
    acked: BTreeSet<u64>,
    /// Attempts of the last surviving lease of group `g`, for offsets not acked.
    attempts: BTreeMap<u64, u32>,
}

impl Expect {
    /// Everything in `segs` survives.
    fn all(segs: &[SegInfo]) -> Expect {
        Expect::from_frames(segs.iter().flat_map(|s| &s.frames))
    }

    fn from_frames<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Expect {
        let mut e = Expect::default();
        for f in frames {
            e.present.extend(f.messages.clone());
            e.next_offset = e.next_offset.max(f.messages.end);
            for (g, op) in &f.ops {
                assert_eq!(g, GROUP, "only group g writes records while building");
                match op.kind {
                    OpKind::Lease => {
                        e.attempts.insert(op.offset, op.attempts);
                    }
                    OpKind::Ack => {
                        e.acked.insert(op.offset);
                        e.attempts.remove(&op.offset);
                    }
                    other => panic!("unexpected op {other:?} while building"),
                }
            }
        }
        e
    }
}

async fn fetch_all(q: &Engine, group: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    loop {
        let opts = FetchOptions {
            max_messages: 10_000,
            lease_ms: Some(600_000),
            wait_ms: 0,
        };
        let got = q.fetch(TOPIC, group, opts).await.expect("fetch");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// Every expected message is there, intact, and nothing else; group `g` resumes where the
/// surviving records left it.
async fn verify(q: &Engine, exp: &Expect, check_group: &str, context: &str) {
    let stats = q.stats(TOPIC).await.expect("stats");
    assert_eq!(stats.next_offset, exp.next_offset, "{context}: next offset");
    assert_eq!(stats.durable_end, exp.next_offset, "{context}: durable end");

    q.create_group(TOPIC, check_group, StartAt::Earliest)
        .await
        .expect("check group");
    let all = fetch_all(q, check_group).await;
    for d in &all {
        check_delivery(d, context);
        assert_eq!(
            d.attempt, 1,
            "{context}: fresh group attempt of {}",
            d.offset
        );
    }
    let got: BTreeSet<u64> = all.iter().map(|d| d.offset).collect();
    assert_eq!(got.len(), all.len(), "{context}: an offset delivered twice");
    assert_eq!(got, exp.present, "{context}: messages present");

    let g = fetch_all(q, GROUP).await;
    let got: BTreeSet<u64> = g.iter().map(|d| d.offset).collect();
    let want: BTreeSet<u64> = exp.present.difference(&exp.acked).copied().collect();
    assert_eq!(got, want, "{context}: group {GROUP} redeliveries");
    for d in &g {
        check_delivery(d, context);
        let want = exp.attempts.get(&d.offset).copied().unwrap_or(0) + 1;
        assert_eq!(d.attempt, want, "{context}: attempt of {}", d.offset);
    }
}

/// [`verify`]s the recovered engine against `exp` (with a fresh group `check`), then
/// publishes one more message at offset `next`, reopens (without repair) and checks that the
/// old and the new messages are all there.
async fn verify_and_reopen(
    q: Engine,
    dir: &Path,
    clock: &ManualClock,
    segment_bytes_max: u64,
    exp: &Expect,
    next: u64,
    context: &str,
) {
    verify(&q, exp, "check", context).await;
    let mut present = exp.present.clone();
    let c = q
        .publish(TOPIC, msg_for(next))
        .await
        .unwrap_or_else(|e| panic!("{context}: publish after recovery: {e}"));
    assert_eq!(c.offset, next, "{context}: offset after recovery");
    assert!(!c.duplicate, "{context}: new message taken as a duplicate");
    q.close().expect("close");
    drop(q);
    let q = open_engine(dir, config(clock, segment_bytes_max, false))
        .unwrap_or_else(|e| panic!("{context}: reopen after recovery: {e}"));
    let report = q.recovery_reports().get(TOPIC).cloned().unwrap_or_default();
    assert_eq!(
        report,
        queue::RecoveryReport::default(),
        "{context}: second open"
    );
    present.insert(next);
    let all = fetch_all(&q, "after-reopen").await;
    for d in &all {
        check_delivery(d, context);
    }
    let got: BTreeSet<u64> = all.iter().map(|d| d.offset).collect();
    assert_eq!(got, present, "{context}: messages after reopen");
    q.close().expect("close");
}

fn flip(path: &Path, pos: u64, mask: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[pos as usize] ^= mask;
    std::fs::write(path, &bytes).expect("write");
    bytes
}

fn append(path: &Path, garbage: &[u8]) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes.extend_from_slice(garbage);
    std::fs::write(path, &bytes).expect("write");
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("cut");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn read_meta(dir: &Path) -> serde_json::Value {
    let path = topic_dir(dir).join("topic.meta");
    serde_json::from_slice(&std::fs::read(path).expect("read meta")).expect("meta is JSON")
}

/// Opens `dir` (with `repair` as given), which must succeed; returns the engine and its
/// recovery report for the topic.
fn open_reporting(
    dir: &Path,
    clock: &ManualClock,
    segment_bytes_max: u64,
    repair: bool,
    context: &str,
) -> (Engine, queue::RecoveryReport) {
    let q = open_engine(dir, config(clock, segment_bytes_max, repair))
        .unwrap_or_else(|e| panic!("{context}: open (repair {repair}): {e}"));
    let report = q.recovery_reports().get(TOPIC).cloned().expect("report");
    (q, report)
}

/// Opens `dir` without repair, which must fail with `Corrupt`; returns the segment and the
/// byte position it names.
fn open_refused(
    dir: &Path,
    clock: &ManualClock,
    segment_bytes_max: u64,
    context: &str,
) -> (PathBuf, u64) {
    match open_engine(dir, config(clock, segment_bytes_max, false)) {
        Err(Error::Corrupt {
            segment, position, ..
        }) => (segment, position),
        Err(other) => panic!("{context}: want Corrupt, got {other}"),
        Ok(_) => panic!("{context}: opened a damaged directory"),
    }
}

fn seed() -> u64 {
    let seed = std::env::var("QUEUE_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("corruption seed: {seed} (replay with QUEUE_CORRUPTION_SEED={seed})");
    seed
}

/// Runs `case` for every item on a few threads, each with its own runtime: the cases are
/// independent directories and spend their time waiting for fsync.
fn run_cases<T: Sync, F, Fut>(items: &[T], case: F)
where
    F: Fn(&T) -> Fut + Sync,
    Fut: std::future::Future<Output = ()>,
{
    const THREADS: usize = 4;
    std::thread::scope(|scope| {
        for k in 0..THREADS {
            let case = &case;
            scope.spawn(move || {
                let rt = runtime();
                for item in items.iter().skip(k).step_by(THREADS) {
                    rt.block_on(case(item));
                }
            });
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------
// Torn tails.

/// The tail cut at every byte inside its last few records: the cut record and everything
/// after it are gone, everything before is intact, and the queue carries on.
#[test]
fn tail_cut_at_every_byte_of_its_last_records() {
    const SEG_MAX: u64 = 2048;
    const LAST_FRAMES: usize = 4;
    // A sealed segment before the tail, and a tail whose last records mix messages and
    // group operations.
    let enough = |segs: &[SegInfo]| {
        segs.len() >= 2
            && segs.last().is_some_and(|t| {
                let last = t.frames.iter().rev().take(LAST_FRAMES);
                t.frames.len() > LAST_FRAMES
                    && last.clone().any(|f| !f.ops.is_empty())
                    && last.clone().filter(|f| !f.messages.is_empty()).count() >= 2
            })
    };
    let (base, clock, _, segs) = runtime().block_on(build_base_until(SEG_MAX, 20, enough));
    assert!(enough(&segs), "{segs:?}");
    let (tail, sealed) = segs.split_last().expect("segments");
    let first_cut = tail.frames[tail.frames.len() - LAST_FRAMES].start;
    let sealed_frames: Vec<&Frame> = sealed.iter().flat_map(|s| &s.frames).collect();

    let cuts: Vec<u64> = (first_cut..=tail.len).collect();
    let (base, clock, sealed_frames) = (&base, &clock, &sealed_frames);
    run_cases(&cuts, |&cut| async move {
        let context = format!("tail cut at byte {cut} of {}", tail.len);
        let work = fresh_copy(base.path());
        let tail_path = topic_dir(work.path()).join(&tail.name);
        truncate(&tail_path, cut);
        let kept: Vec<&Frame> = tail.frames.iter().filter(|f| f.end <= cut).collect();
        let boundary = kept.last().map_or(SEGMENT_HEADER_LEN as u64, |f| f.end);
        let exp = Expect::from_frames(sealed_frames.iter().copied().chain(kept));

        let (q, report) = open_reporting(work.path(), clock, SEG_MAX, false, &context);
        assert_eq!(report.torn_bytes_truncated, cut - boundary, "{context}");
        assert!(report.repaired.is_empty(), "{context}: {report:?}");
        assert_eq!(report.messages_lost, 0, "{context}");
        assert_eq!(
            file_len(&tail_path),
            boundary,
            "{context}: tail truncated to the last whole record"
        );
        let next = exp.next_offset;
        verify_and_reopen(q, work.path(), clock, SEG_MAX, &exp, next, &context).await;
    });
}

/// Bytes after the last record of the tail (a write that never completed) are cut; nothing
/// confirmed is lost. All-zero bytes there are preallocated space and are kept.
#[tokio::test]
async fn garbage_after_the_tail_is_truncated() {
    const SEG_MAX: u64 = 1024;
    let (base, clock, _, segs) = build_base(SEG_MAX, 12).await;
    let tail = segs.last().expect("tail");
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut garbages: Vec<Vec<u8>> = vec![vec![0u8; 1], vec![0u8; 100], vec![0xFF; 9]];
    for _ in 0..5 {
        let n = rng.random_range(1..300);
        garbages.push((0..n).map(|_| rng.random()).collect());
    }
    // A frame header that promises more than is there.
    let mut promise = 50u32.to_le_bytes().to_vec();
    promise.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    garbages.push(promise);
    for (i, garbage) in garbages.iter().enumerate() {
        let context = format!("garbage #{i} ({} bytes) after the tail", garbage.len());
        let work = fresh_copy(base.path());
        let tail_path = topic_dir(work.path()).join(&tail.name);
        append(&tail_path, garbage);
        let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, false, &context);
        // All zeros are preallocated space (FORMAT.md): kept, not counted as torn.
        let space = garbage.iter().all(|&b| b == 0);
        let (torn, kept) = if space {
            (0, tail.len + garbage.len() as u64)
        } else {
            (garbage.len() as u64, tail.len)
        };
        assert_eq!(report.torn_bytes_truncated, torn, "{context}");
        assert!(report.repaired.is_empty(), "{context}");
        assert_eq!(file_len(&tail_path), kept, "{context}");
        let exp = Expect::all(&segs);
        let next = exp.next_offset;
        verify_and_reopen(q, work.path(), &clock, SEG_MAX, &exp, next, &context).await;
    }
}

/// A segment file that a crash left empty, with part of its header, or with only its header
/// opens fine and loses nothing; the queue goes on appending.
#[tokio::test]
async fn segment_cut_at_creation_opens() {
    const SEG_MAX: u64 = 1024;
    let (base, clock, total, segs) = build_base(SEG_MAX, 12).await;
    assert!(segs.len() >= 2, "{segs:?}");
    let last_seq: u64 = segs
        .last()
        .and_then(|s| s.name.to_str())
        .and_then(|n| n.strip_suffix(".seg"))
        .and_then(|n| n.parse().ok())
        .expect("tail seq");
    let seq = last_seq + 1;
    let header = SegmentHeader {
        seq,
        base_offset: total,
    }
    .encode();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero-length", vec![]),
        ("half a header", header[..17].to_vec()),
        ("header only", header.to_vec()),
        ("zeroed header", vec![0u8; SEGMENT_HEADER_LEN]),
    ];
    for (what, bytes) in cases {
        let context = format!("{what} new tail segment");
        let work = fresh_copy(base.path());
        let new_path = topic_dir(work.path()).join(format!("{seq:020}.seg"));
        std::fs::write(&new_path, &bytes).expect("write");
        let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, false, &context);
        assert!(report.repaired.is_empty(), "{context}: {report:?}");
        assert_eq!(report.messages_lost, 0, "{context}");
        assert!(
            report.torn_bytes_truncated <= SEGMENT_HEADER_LEN as u64,
            "{context}: {report:?}"
        );
        let exp = Expect::all(&segs);
        verify_and_reopen(q, work.path(), &clock, SEG_MAX, &exp, total, &context).await;
    }

    // A topic whose only segment is empty (crashed right after creating the topic).
    let work = tempfile::tempdir().expect("tempdir");
    let q = open_engine(work.path(), config(&clock, SEG_MAX, false)).expect("open");
    q.create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("group");
    q.close().expect("close");
    drop(q);
    let only = segment_paths(work.path());
    assert_eq!(only.len(), 1, "{only:?}");
    std::fs::write(&only[0], b"").expect("empty the only segment");
    let q = open_engine(work.path(), config(&clock, SEG_MAX, false)).expect("open empty");
    let c = q.publish(TOPIC, msg_for(0)).await.expect("publish");
    assert_eq!(c.offset, 0);
    let d = fetch_all(&q, GROUP).await;
    assert_eq!(d.len(), 1);
    check_delivery(&d[0], "only segment emptied");
}

/// Damage inside the tail segment with valid records after it (issue 16, finding 9) is
/// corruption, not a torn write: cutting there would drop confirmed messages. Without repair
/// open refuses, naming the tail and the damaged record's position, and leaves the file
/// alone; with repair the tail is cut there and the report says where and how many
/// messages were lost (exactly: the records after the damage tell their offsets).
#[test]
fn damage_inside_the_tail_with_valid_records_after_it_is_corrupt() {
    const SEG_MAX: u64 = 4096;
    // A tail with many records, messages among the last ones.
    let enough = |segs: &[SegInfo]| {
        segs.last().is_some_and(|t| {
            t.frames.len() >= 8
                && t.frames
                    .iter()
                    .rev()
                    .take(2)
                    .any(|f| !f.messages.is_empty())
        })
    };
    let (base, clock, total, segs) = runtime().block_on(build_base_until(SEG_MAX, 10, enough));
    assert!(enough(&segs), "{segs:?}");
    let (tail, sealed) = segs.split_last().expect("segments");
    let last_batch_start = tail
        .frames
        .iter()
        .rev()
        .find(|f| !f.messages.is_empty())
        .expect("a batch in the tail")
        .start;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Every record before the tail's last batch, damaged in its length, its CRC or its
    // body (a bit flip, or a run of zeros as a lost sector would leave).
    let mut cases = Vec::new();
    for (i, f) in tail.frames.iter().enumerate() {
        if f.start >= last_batch_start {
            break;
        }
        let (field, pos) = match i % 3 {
            0 => ("length", f.start + rng.random_range(0..4)),
            1 => ("crc", f.start + 4 + rng.random_range(0..4)),
            _ => ("body", rng.random_range(f.start + 8..f.end)),
        };
        let zeros = i % 4 == 3;
        cases.push((i, field, pos, 1u8 << rng.random_range(0..8), zeros));
    }
    assert!(cases.len() >= 4, "{cases:?}");
    let (base, clock, sealed) = (&base, &clock, &sealed);
    run_cases(&cases, |&(i, field, pos, mask, zeros)| async move {
        let frame = &tail.frames[i];
        let context = format!(
            "seed {seed}: {} in the {field} of the tail record at byte {} (byte {pos})",
            if zeros {
                "zeros from the record's start".to_string()
            } else {
                format!("bit {mask:#04x}")
            },
            frame.start
        );
        let work = fresh_copy(base.path());
        let path = topic_dir(work.path()).join(&tail.name);
        let original = std::fs::read(&path).expect("read");
        let damaged = if zeros {
            // A lost sector reads as zeros: the record's header and the start of its body
            // (zeros anywhere else might land on bytes that were zero already).
            let mut bytes = original.clone();
            let end = (frame.start as usize + 16).min(frame.end as usize);
            bytes[frame.start as usize..end]
                .iter_mut()
                .for_each(|b| *b = 0);
            std::fs::write(&path, &bytes).expect("write");
            bytes
        } else {
            flip(&path, pos, mask)
        };
        assert_ne!(damaged, original, "{context}: the damage changed nothing");

        let (segment, position) = open_refused(work.path(), clock, SEG_MAX, &context);
        assert_eq!(segment, path, "{context}");
        assert_eq!(position, frame.start, "{context}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            damaged,
            "{context}: a refused open must not change the file"
        );

        let (q, report) = open_reporting(work.path(), clock, SEG_MAX, true, &context);
        assert_eq!(
            report.repaired,
            vec![(path.clone(), frame.start)],
            "{context}"
        );
        assert_eq!(report.torn_bytes_truncated, 0, "{context}");
        let cut_offset = tail.first_offset_from(frame.start);
        assert_eq!(report.messages_lost, total - cut_offset, "{context}");
        assert_eq!(file_len(&path), frame.start, "{context}");
        let kept = tail.frames.iter().filter(|f| f.end <= frame.start);
        let exp = Expect::from_frames(sealed.iter().flat_map(|s| &s.frames).chain(kept));
        let next = exp.next_offset;
        assert_eq!(next, cut_offset, "{context}");
        verify_and_reopen(q, work.path(), clock, SEG_MAX, &exp, next, &context).await;
    });
}

/// A torn tail is only a damaged suffix: the last records overwritten with zeros or random
/// bytes (the file length kept, as a write whose pages never reached the disk leaves it),
/// with nothing valid after the damage, still opens without repair and keeps every record
/// before it.
#[tokio::test]
async fn damaged_suffix_of_the_tail_is_a_torn_write() {
    const SEG_MAX: u64 = 4096;
    let (base, clock, _, segs) = build_base_until(SEG_MAX, 10, |segs: &[SegInfo]| {
        segs.last().is_some_and(|t| t.frames.len() >= 4)
    })
    .await;
    let (tail, sealed) = segs.split_last().expect("segments");
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for from_frame in [tail.frames.len() - 1, tail.frames.len() - 3] {
        // Zeros from inside the record's header (its body may end in bytes that are zero
        // already), random bytes from anywhere inside it, or zeros from its first byte.
        for (random, boundary) in [(false, false), (true, false), (false, true)] {
            let frame = &tail.frames[from_frame];
            let at = if random {
                rng.random_range(frame.start..frame.end)
            } else if boundary {
                frame.start
            } else {
                rng.random_range(frame.start + 1..frame.start + 8)
            };
            let context = format!(
                "seed {seed}: tail {} from byte {at} (record at {})",
                if random { "random" } else { "zeroed" },
                frame.start
            );
            let work = fresh_copy(base.path());
            let path = topic_dir(work.path()).join(&tail.name);
            let mut bytes = std::fs::read(&path).expect("read");
            for b in &mut bytes[at as usize..] {
                *b = if random { rng.random() } else { 0 };
            }
            std::fs::write(&path, &bytes).expect("write");
            let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, false, &context);
            // Zeros from a record's first byte to the end of the tail cannot be told from
            // preallocated space (FORMAT.md): the records there are lost all the same, but
            // nothing is counted as torn or cut.
            // (Zeros from inside a header whose first bytes were zero already, too.)
            let space = bytes[frame.start as usize..].iter().all(|&b| b == 0);
            assert!(space || !boundary, "{context}");
            let (torn, len_after) = if space {
                (0, tail.len)
            } else {
                (tail.len - frame.start, frame.start)
            };
            assert_eq!(report.torn_bytes_truncated, torn, "{context}");
            assert!(report.repaired.is_empty(), "{context}: {report:?}");
            assert_eq!(file_len(&path), len_after, "{context}");
            let kept = tail.frames.iter().filter(|f| f.end <= frame.start);
            let exp = Expect::from_frames(sealed.iter().flat_map(|s| &s.frames).chain(kept));
            let next = exp.next_offset;
            verify_and_reopen(q, work.path(), &clock, SEG_MAX, &exp, next, &context).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sealed segments.

/// A bit flipped anywhere in a sealed segment (outside the header's reserved bytes) makes
/// open fail with `Corrupt` at the record holding it; with repair the segment is cut there,
/// the loss is reported, everything else is intact, and the repaired directory opens again.
#[test]
fn bit_flips_in_sealed_segments() {
    const SEG_MAX: u64 = 700;
    const FLIPS: usize = 80;
    let (base, clock, total, segs) = runtime().block_on(build_base(SEG_MAX, 30));
    assert!(segs.len() >= 4, "want several sealed segments: {segs:?}");
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);

    // Drawn up front, in order, so that a seed replays the same flips.
    let mut flips = Vec::with_capacity(FLIPS);
    for round in 0..FLIPS {
        // Every sealed segment's header gets its turn; the rest are uniform over the bytes.
        let si = rng.random_range(0..segs.len() - 1);
        let seg = &segs[si];
        let pos = loop {
            let pos = if round < 2 * (segs.len() - 1) && round % 2 == 0 {
                rng.random_range(0..SEGMENT_HEADER_LEN as u64)
            } else {
                rng.random_range(0..seg.len)
            };
            // Reserved header bytes carry no checksum: see `reserved_header_bytes_are_ignored`.
            if !(10..12).contains(&pos) {
                break pos;
            }
        };
        let mask = 1u8 << rng.random_range(0..8);
        flips.push((round, si, pos, mask));
    }
    let (base, clock, segs) = (&base, &clock, &segs);
    run_cases(&flips, |&(round, si, pos, mask)| async move {
        let seg = &segs[si];
        let context = format!(
            "seed {seed} round {round}: bit {mask:#04x} of byte {pos} in {:?}",
            seg.name
        );
        let work = fresh_copy(base.path());
        let path = topic_dir(work.path()).join(&seg.name);
        let damaged = flip(&path, pos, mask);
        let bad_frame = seg.frame_at(pos);
        let bad_at = bad_frame.map_or(0, |f| f.start);
        assert!(bad_at <= pos);

        let (segment, position) = open_refused(work.path(), clock, SEG_MAX, &context);
        assert_eq!(segment, path, "{context}");
        assert_eq!(position, bad_at, "{context}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            damaged,
            "{context}: a refused open must not change the file"
        );

        let (q, report) = open_reporting(work.path(), clock, SEG_MAX, true, &context);
        assert_eq!(report.repaired, vec![(path.clone(), bad_at)], "{context}");
        assert_eq!(report.torn_bytes_truncated, 0, "{context}");
        let lost_from = match bad_frame {
            Some(_) => seg.first_offset_from(bad_at),
            None => seg.base_offset,
        };
        let lost_to = segs[si + 1].base_offset;
        if bad_frame.is_some() || si > 0 {
            assert_eq!(report.messages_lost, lost_to - lost_from, "{context}");
        }
        // A segment dropped for its header is quarantined, one cut is truncated.
        match bad_frame {
            Some(_) => assert_eq!(file_len(&path), bad_at, "{context}"),
            None => assert!(
                !path.exists() && path.with_extension("corrupt").exists(),
                "{context}"
            ),
        }
        let surviving = segs.iter().enumerate().flat_map(|(i, s)| {
            s.frames
                .iter()
                .filter(move |f| i != si || (bad_frame.is_some() && f.end <= bad_at))
        });
        let exp = Expect::from_frames(surviving);
        assert_eq!(exp.next_offset, total, "{context}: later segments survive");
        assert!(
            (lost_from..lost_to).all(|o| !exp.present.contains(&o)),
            "{context}"
        );
        verify_and_reopen(q, work.path(), clock, SEG_MAX, &exp, total, &context).await;
    });
}

/// Bytes 10..12 of a segment header are reserved and covered by no checksum: a flip there
/// is not detected, and loses nothing.
#[tokio::test]
async fn reserved_header_bytes_are_ignored() {
    const SEG_MAX: u64 = 1024;
    let (base, clock, _, segs) = build_base(SEG_MAX, 12).await;
    let work = fresh_copy(base.path());
    for s in &segs {
        let path = topic_dir(work.path()).join(&s.name);
        flip(&path, 10, 0xFF);
        flip(&path, 11, 0x5A);
    }
    let context = "reserved bytes flipped";
    let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, false, context);
    assert_eq!(report, queue::RecoveryReport::default());
    verify(&q, &Expect::all(&segs), "check", context).await;
}

/// Offsets missing between two segments are refused unless `topic.meta` records them as a
/// gap: that is how a repair interrupted after cutting a segment (gap written open-ended,
/// segment cut, crash) still opens, while a lost segment file or cut segment is not taken
/// for one.
#[tokio::test]
async fn missing_offsets_need_a_recorded_gap() {
    const SEG_MAX: u64 = 700;
    let (base, clock, total, segs) = build_base(SEG_MAX, 30).await;
    assert!(segs.len() >= 4, "{segs:?}");
    let seg = &segs[1];
    let cut_frame = seg
        .frames
        .iter()
        .find(|f| f.start > SEGMENT_HEADER_LEN as u64 && !f.messages.is_empty())
        .expect("a message record after the first");
    let lost_from = seg.first_offset_from(cut_frame.start);
    let lost_to = segs[2].base_offset;
    assert!(lost_from < lost_to);

    let cut_segment = |work: &Path| truncate(&topic_dir(work).join(&seg.name), cut_frame.start);

    // A sealed segment cut at a record boundary, nothing recorded: refused.
    let work = fresh_copy(base.path());
    cut_segment(work.path());
    let (segment, _) = open_refused(work.path(), &clock, SEG_MAX, "cut segment");
    assert_eq!(
        segment,
        topic_dir(work.path()).join(&segs[2].name),
        "cut segment"
    );

    // A whole segment file gone: refused.
    let work = fresh_copy(base.path());
    std::fs::remove_file(topic_dir(work.path()).join(&seg.name)).expect("remove");
    open_refused(work.path(), &clock, SEG_MAX, "missing segment");

    // The state a crash mid-repair leaves: the open-ended gap recorded, the segment cut.
    let work = fresh_copy(base.path());
    let mut meta = read_meta(work.path());
    meta["gaps"] = serde_json::json!([[lost_from, u64::MAX]]);
    std::fs::write(
        topic_dir(work.path()).join("topic.meta"),
        serde_json::to_vec(&meta).expect("json"),
    )
    .expect("write meta");
    cut_segment(work.path());
    let context = "interrupted repair";
    let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, false, context);
    assert_eq!(report, queue::RecoveryReport::default());
    let exp = Expect::from_frames(segs.iter().flat_map(|s| {
        s.frames
            .iter()
            .filter(|f| s.name != seg.name || f.end <= cut_frame.start)
    }));
    assert_eq!(exp.next_offset, total);
    verify(&q, &exp, "check", context).await;
    q.close().expect("close");
    drop(q);
    // The gap is now recorded exactly.
    let meta = read_meta(work.path());
    assert_eq!(meta["gaps"], serde_json::json!([[lost_from, lost_to]]));
}

/// Bytes after the last record of a sealed segment are corruption, not a torn write, zeros
/// included (a segment's preallocated space is cut when the next one starts).
#[tokio::test]
async fn garbage_after_a_sealed_segment_is_corrupt() {
    const SEG_MAX: u64 = 1024;
    let (base, clock, total, segs) = build_base(SEG_MAX, 12).await;
    assert!(segs.len() >= 2, "{segs:?}");
    let sealed = &segs[segs.len() - 2];
    for garbage in [
        vec![0u8; 1],
        vec![0u8; 64],
        vec![0xAB; 7],
        b"not a frame".to_vec(),
    ] {
        let context = format!("{} bytes after {:?}", garbage.len(), sealed.name);
        let work = fresh_copy(base.path());
        let path = topic_dir(work.path()).join(&sealed.name);
        append(&path, &garbage);
        let (segment, position) = open_refused(work.path(), &clock, SEG_MAX, &context);
        assert_eq!(segment, path, "{context}");
        assert_eq!(position, sealed.len, "{context}");
        // Repair cuts the garbage and loses no message.
        let (q, report) = open_reporting(work.path(), &clock, SEG_MAX, true, &context);
        assert_eq!(
            report.repaired,
            vec![(path.clone(), sealed.len)],
            "{context}"
        );
        assert_eq!(report.messages_lost, 0, "{context}");
        let exp = Expect::all(&segs);
        verify_and_reopen(q, work.path(), &clock, SEG_MAX, &exp, total, &context).await;
    }
}

/// A batch whose record would exceed the largest frame the decoder accepts is refused up
/// front: confirming it would write a record that recovery cuts as torn (or calls corrupt).
#[tokio::test]
async fn batch_larger_than_a_frame_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let q = open_engine(dir.path(), config(&clock, 64 << 20, false)).expect("open");
    q.publish(TOPIC, msg_for(0)).await.expect("publish");
    let payload = bytes::Bytes::from(vec![7u8; queue::limits::PAYLOAD_BYTES_MAX]);
    let n = format::FRAME_BODY_BYTES_MAX / queue::limits::PAYLOAD_BYTES_MAX + 1;
    let batch = (0..n).map(|_| Message::new(payload.clone())).collect();
    match q.publish_batch(TOPIC, batch).await {
        Err(Error::Invalid(_)) => {}
        Err(other) => panic!("want Invalid, got {other}"),
        Ok(c) => panic!("confirmed {} messages no frame can hold", c.len()),
    }
    let stats = q.stats(TOPIC).await.expect("stats");
    assert_eq!(stats.next_offset, 1, "a refused batch takes no offsets");
    let c = q.publish(TOPIC, msg_for(1)).await.expect("publish after");
    assert_eq!(c.offset, 1);
    q.close().expect("close");
    drop(q);
    let q = open_engine(dir.path(), config(&clock, 64 << 20, false)).expect("reopen");
    assert_eq!(
        q.recovery_reports().get(TOPIC).cloned().unwrap_or_default(),
        queue::RecoveryReport::default()
    );
    let got = fetch_all(&q, "check").await;
    assert_eq!(got.len(), 2);
    got.iter()
        .for_each(|d| check_delivery(d, "after a refused batch"));
}

// ---------------------------------------------------------------------------------------
// Decoders on hostile bytes.

fn batch_body(base_offset: u64, entries: &[(Option<u128>, Option<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    format::encode_batch_header(
        &mut body,
        &BatchHeader {
            base_offset,
            publish_ms: T0,
            count: entries.len() as u32,
        },
    );
    for (i, (id, due, payload)) in entries.iter().enumerate() {
        let headers = headers_of(i as u64);
        let target = (i % 2 == 1).then_some("grp");
        format::encode_entry(&mut body, 0, *id, *due, target, &headers, payload);
    }
    body
}

fn decode_everything(buf: &[u8]) {
    let _ = format::decode_frame(buf);
    let _ = format::decode_record(buf);
    let _ = format::decode_batch(buf);
    let _ = format::decode_group_ops(buf);
    let _ = SegmentHeader::decode(buf);
    let mut r = format::Reader::new(buf);
    while r.remaining() > 0 {
        match format::decode_entry(&mut r) {
            Ok(e) => {
                let _ = e.headers();
            }
            Err(_) => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and arbitrary bytes behind each record kind, never panic a decoder.
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..700)) {
        decode_everything(&buf);
        for kind in [KIND_MESSAGES, KIND_GROUP_OPS] {
            let mut b = vec![kind];
            b.extend_from_slice(&buf);
            decode_everything(&b);
        }
    }

    /// Valid records with bytes overwritten: decoding the body (as if its CRC had matched)
    /// never panics, and the frame check refuses any single changed byte.
    #[test]
    fn damaged_records_never_panic(
        entries in prop::collection::vec(
            (any::<Option<u128>>(), any::<Option<u64>>(), prop::collection::vec(any::<u8>(), 0..40)),
            1..5,
        ),
        ops in prop::collection::vec((1u8..=4, any::<u64>(), any::<u32>(), any::<u64>()), 1..4),
        damage in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut group_ops = Vec::new();
        let ops: Vec<GroupOp> = ops
            .into_iter()
            .map(|(k, offset, attempts, time_ms)| GroupOp {
                kind: match k {
                    1 => OpKind::Lease,
                    2 => OpKind::Ack,
                    3 => OpKind::Nack,
                    _ => OpKind::Dead,
                },
                offset,
                attempts,
                time_ms,
            })
            .collect();
        format::encode_group_ops(&mut group_ops, "workers", &ops);
        for body in [batch_body(7, &entries), group_ops] {
            prop_assert!(format::decode_record(&body).is_ok());
            let mut frame = Vec::new();
            format::encode_frame(&mut frame, &body);
            let mut bad_body = body.clone();
            for (at, x) in &damage {
                bad_body[at.index(body.len())] ^= x;
                decode_everything(&bad_body);
            }
            let (i, x) = &damage[0];
            let mut bad_frame = frame.clone();
            bad_frame[i.index(frame.len())] ^= x;
            prop_assert!(format::decode_frame(&bad_frame).is_err());
            decode_everything(&bad_frame);
        }
    }
}
