//! Opening a topic directory: reading its metadata, checking every record of every
//! segment, truncating a torn tail, and rebuilding the in-memory state.
//!
//! Rules (see FORMAT.md, "Recovery"):
//! - The last segment (the tail) is the only one being written. A record in it that does
//!   not check out (short, bad length, bad CRC) with nothing valid after it is a torn
//!   write: the file is cut there. One followed by a record that checks out is damage
//!   inside the log, treated as corruption (below): cutting there would drop confirmed
//!   records.
//! - Any bad record in an earlier (sealed) segment, or a record that checks out but makes
//!   no sense (wrong offsets, unknown kind), is corruption: `Error::Corrupt` names the file
//!   and byte position, unless `repair` is set, in which case the segment is cut there and
//!   the offsets lost are recorded as a gap.

use std::collections::VecDeque;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bits::BitWindow;
use crate::dedup::DedupWindow;
use crate::error::{Error, Result};
use crate::format::{
    self, FLAG_ID, FLAG_NO_DEDUP, FRAME_HEADER_LEN, OpKind, Record, SEGMENT_HEADER_LEN,
    SegmentHeader,
};
use crate::fsutil;
use crate::limits::TAIL_SCAN_CRC_BYTES_MAX;
use crate::topic::{Group, Hint, Segment, TopicLimits, TopicState};
use crate::writer::SegFile;

/// Name of the per-topic metadata file.
pub(crate) const META_FILE: &str = "topic.meta";
const META_VERSION: u32 = 1;

/// Per-topic metadata, rewritten atomically when groups are created or segments deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    pub(crate) version: u32,
    /// Segments with a lower sequence number were deleted by retention (leftover files are
    /// removed on open).
    pub(crate) first_seq: u64,
    /// Offset of the first message of segment `first_seq`: where offsets resume if no
    /// segment with data survives (they are never reused).
    #[serde(default)]
    pub(crate) first_offset: u64,
    pub(crate) groups: Vec<GroupMeta>,
    /// Offset ranges `[from, to)` lost to a repair. A segment may start past the end of the
    /// one before it only across one of these. Written (open-ended: `to` = `u64::MAX`)
    /// before repair cuts or drops a segment, so that a crash mid-repair leaves a directory
    /// that still opens; made exact when the next segment is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) gaps: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GroupMeta {
    pub(crate) name: String,
    pub(crate) start_offset: u64,
}

impl TopicMeta {
    pub(crate) fn new() -> Self {
        TopicMeta {
            version: META_VERSION,
            first_seq: 0,
            first_offset: 0,
            groups: Vec::new(),
            gaps: Vec::new(),
        }
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("encode topic meta: {e}")))?;
        fsutil::write_atomic(&dir.join(META_FILE), &bytes)
    }

    fn read(dir: &Path) -> Result<Option<TopicMeta>> {
        let path = dir.join(META_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let meta: TopicMeta =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        segment: path.clone(),
                        position: 0,
                        reason: format!("topic meta: {e}"),
                    })?;
                if meta.version != META_VERSION {
                    return Err(Error::Corrupt {
                        segment: path,
                        position: 0,
                        reason: format!("unknown meta version {}", meta.version),
                    });
                }
                Ok(Some(meta))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }
}

/// What recovery found and did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the tail segment (a torn write).
    pub torn_bytes_truncated: u64,
    /// Sealed segments cut by repair: file and byte position of the first bad record.
    pub repaired: Vec<(PathBuf, u64)>,
    /// Messages lost to repair.
    pub messages_lost: u64,
}

fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        segment: path.to_path_buf(),
        position,
        reason: reason.into(),
    }
}

fn open_segment(path: &Path) -> Result<Arc<SegFile>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open segment", path, e))?;
    // The length is set once the segment has been read.
    Ok(Arc::new(SegFile::new(path.to_path_buf(), file, 0)))
}

fn truncate(seg: &SegFile, len: u64) -> Result<()> {
    seg.file
        .set_len(len)
        .and_then(|_| seg.file.sync_all())
        .map_err(|e| Error::io("truncate segment", &seg.path, e))
}

/// Lists `(seq, path)` of segment files, sorted by sequence.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(seq) = stem.parse::<u64>()
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Creates a topic directory with its metadata and first, empty segment.
pub(crate) fn create_topic(
    dir: &Path,
    name: &str,
    limits: TopicLimits,
    groups: &[GroupMeta],
) -> Result<TopicState> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create topic directory", dir, e))?;
    let mut meta = TopicMeta::new();
    meta.groups = groups.to_vec();
    meta.write(dir)?;
    if let Some(parent) = dir.parent() {
        fsutil::sync_dir(parent)?;
    }
    let (state, _) = open_topic(dir, name, limits, 0, false)?;
    Ok(state)
}

/// Opens (recovers) a topic directory, in named steps: leftovers of an interrupted
/// segment creation are removed, every segment is checked and replayed into the state
/// ([`Scan::segment`]), a topic with no segment left gets a fresh one, and the metadata is
/// brought in line with what survived ([`Scan::finish`]).
pub(crate) fn open_topic(
    dir: &Path,
    name: &str,
    limits: TopicLimits,
    now_ms: u64,
    repair: bool,
) -> Result<(TopicState, RecoveryReport)> {
    let meta = TopicMeta::read(dir)?.unwrap_or_else(TopicMeta::new);
    let mut segs = list_segments(dir)?;
    // Files below first_seq were deleted by retention, but the unlink may not have reached
    // the disk before a crash: finish the job.
    segs.retain(|(seq, path)| {
        if *seq < meta.first_seq {
            let _ = std::fs::remove_file(path);
            false
        } else {
            true
        }
    });

    let st = TopicState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        limits,
        segments: VecDeque::new(),
        next_seq: segs.last().map_or(meta.first_seq, |(s, _)| s + 1),
        next_offset: 0,
        durable_end: 0,
        log_start: 0,
        undue: BitWindow::new(0),
        delays: BinaryHeap::new(),
        targets: HashMap::new(),
        gaps: Vec::new(),
        dedup: DedupWindow::new(),
        groups: Vec::new(),
        published: 0,
        duplicates: 0,
    };
    let mut scan = Scan {
        dir,
        repair,
        now_ms,
        meta,
        report: RecoveryReport::default(),
        st,
        dedup: Vec::new(),
    };
    scan.remove_unfinished_tail(&mut segs)?;
    for i in 0..segs.len() {
        scan.segment(&segs, i)?;
    }
    if scan.st.segments.is_empty() {
        // A new topic, or one whose only segment was torn at creation: start a segment.
        scan.start_first_segment()?;
    }
    scan.finish()
}

/// The state of one topic's recovery while its segments are read.
struct Scan<'a> {
    dir: &'a Path,
    repair: bool,
    now_ms: u64,
    meta: TopicMeta,
    report: RecoveryReport,
    st: TopicState,
    /// `(publish_ms, id, offset)` of every producer id seen, for the de-duplication window
    /// (filled in at the end, once the clock's window is known to apply).
    dedup: Vec<(u64, u128, u64)>,
}

impl Scan<'_> {
    /// Segment files at the end holding no more than a header were being created when the
    /// process stopped: nothing in them was confirmed (the writer fsyncs older segments
    /// before it writes a new one). Removes them so the segment before is the tail.
    fn remove_unfinished_tail(&mut self, segs: &mut Vec<(u64, PathBuf)>) -> Result<()> {
        while let Some((_, path)) = segs.last() {
            let len = std::fs::metadata(path)
                .map_err(|e| Error::io("stat segment", path, e))?
                .len();
            let header_ok = len == SEGMENT_HEADER_LEN as u64
                && std::fs::read(path)
                    .ok()
                    .is_some_and(|b| SegmentHeader::decode(&b).is_ok());
            if len > SEGMENT_HEADER_LEN as u64 || (header_ok && segs.len() == 1) {
                break;
            }
            self.report.torn_bytes_truncated += len;
            std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
            fsutil::sync_dir(self.dir)?;
            segs.pop();
        }
        Ok(())
    }

    /// Checks segment `i` of `segs` and replays its records into the state.
    fn segment(&mut self, segs: &[(u64, PathBuf)], i: usize) -> Result<()> {
        let (seq, path) = &segs[i];
        let is_tail = i + 1 == segs.len();
        let file = open_segment(path)?;
        let buf = std::fs::read(path).map_err(|e| Error::io("read segment", path, e))?;
        let Some(header) = self.check_header(path, *seq, &buf)? else {
            return Ok(());
        };
        self.append_segment(segs, i, &header, file.clone())?;
        let (end, file_len) = self.replay_records(path, &file, &buf, is_tail)?;
        file.set_len_known(file_len as u64);
        if let Some(seg) = self.st.segments.back_mut() {
            seg.len = end as u64;
        }
        Ok(())
    }

    /// The segment's header, or `None` when repair dropped the segment for a bad one (it
    /// is renamed `*.corrupt` and the offsets after the previous segment become a gap).
    fn check_header(&mut self, path: &Path, seq: u64, buf: &[u8]) -> Result<Option<SegmentHeader>> {
        match SegmentHeader::decode(buf) {
            Ok(h) if h.seq == seq => Ok(Some(h)),
            Ok(h) => Err(corrupt(
                path,
                0,
                format!("header says segment {} but file name says {seq}", h.seq),
            )),
            Err(e) => {
                if !self.repair {
                    return Err(corrupt(path, 0, format!("segment header: {e}")));
                }
                tracing::warn!(segment = %path.display(), error = %e, "repair: dropping segment with a bad header");
                self.report.repaired.push((path.to_path_buf(), 0));
                self.meta.gaps.push((self.st.next_offset, u64::MAX));
                self.meta.write(self.dir)?;
                let quarantine = path.with_extension("corrupt");
                std::fs::rename(path, &quarantine).map_err(|e| Error::io("rename", path, e))?;
                Ok(None)
            }
        }
    }

    /// Adds segment `i` to the state: the first one sets where the log starts (and where
    /// the groups of the metadata start); a later one must continue the one before, or
    /// start after a gap a repair made.
    fn append_segment(
        &mut self,
        segs: &[(u64, PathBuf)],
        i: usize,
        header: &SegmentHeader,
        file: Arc<SegFile>,
    ) -> Result<()> {
        let st = &mut self.st;
        let (seq, path) = &segs[i];
        if st.segments.is_empty() {
            st.next_offset = header.base_offset;
            st.log_start = header.base_offset;
            st.undue = BitWindow::new(header.base_offset);
            for gm in &self.meta.groups {
                st.groups
                    .push(Group::new(&gm.name, gm.start_offset, header.base_offset));
                // A start past the end of what survived is clamped after the scan.
            }
        } else if header.base_offset != st.next_offset {
            let repaired_before = self
                .report
                .repaired
                .last()
                .is_some_and(|(p, _)| segs.get(i.wrapping_sub(1)).is_some_and(|(_, q)| q == p));
            // A gap an earlier repair recorded (or began to record before a crash).
            let known_gap = self
                .meta
                .gaps
                .iter()
                .any(|&(a, b)| a == st.next_offset && b >= header.base_offset);
            if header.base_offset > st.next_offset && (repaired_before || known_gap) {
                st.gaps.push((st.next_offset, header.base_offset));
                if repaired_before {
                    self.report.messages_lost += header.base_offset - st.next_offset;
                }
                st.next_offset = header.base_offset;
            } else {
                return Err(corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at offset {} but the previous one ends at {}",
                        header.base_offset, st.next_offset
                    ),
                ));
            }
        }
        st.segments.push_back(Segment {
            seq: *seq,
            base_offset: header.base_offset,
            file,
            positions: Vec::new(),
            len: SEGMENT_HEADER_LEN as u64,
            delayed_pending: 0,
            last_publish_ms: 0,
        });
        Ok(())
    }

    /// Replays the records of a segment after its header; returns where the good records
    /// end and how long the file is afterwards. A bad record in the tail that may be a torn
    /// write is cut off; any other is corruption, refused or (with repair) cut off and
    /// recorded as a gap. In the tail, all-zero bytes from a frame boundary to the end of
    /// the file are space the writer zero-filled ahead (`FORMAT.md`, "Preallocated space"):
    /// the end of the frames, kept as it is. A sealed segment has none (it is cut at the
    /// roll), so zeros there are damage like any other bytes.
    fn replay_records(
        &mut self,
        path: &Path,
        file: &SegFile,
        buf: &[u8],
        is_tail: bool,
    ) -> Result<(usize, usize)> {
        let mut pos = SEGMENT_HEADER_LEN;
        let mut file_len = buf.len();
        while pos < buf.len() {
            if is_tail && buf[pos..].iter().all(|&b| b == 0) {
                break;
            }
            let bad = match format::decode_frame(&buf[pos..]) {
                Ok((body, frame_len)) => {
                    match apply_record(&mut self.st, body, pos, self.now_ms, &mut self.dedup) {
                        Ok(()) => {
                            pos += frame_len;
                            continue;
                        }
                        // A record whose CRC checks but whose content does not is never a torn
                        // write: it is corruption wherever it is.
                        Err(reason) => (reason.to_string(), false),
                    }
                }
                Err(e) => (e.to_string(), true),
            };
            let (mut reason, maybe_torn) = bad;
            // In the tail, what follows the bad frame decides: only a damaged suffix is a torn
            // write. A frame that checks out after it means confirmed records would be cut.
            let after = is_tail.then(|| scan_after_damage(buf, pos, self.st.next_offset));
            if let Some(after) = &after
                && maybe_torn
            {
                match (after.first_valid, after.budget_ran_out) {
                    (None, false) => {
                        tracing::warn!(segment = %path.display(), position = pos, %reason, "truncating torn tail");
                        self.report.torn_bytes_truncated += (buf.len() - pos) as u64;
                        truncate(file, pos as u64)?;
                        file_len = pos;
                        break;
                    }
                    (Some(valid), _) => {
                        reason = format!(
                            "{reason}; a valid record follows at byte {valid}, so this is damage \
                             inside the tail segment, not a torn write"
                        );
                    }
                    (None, true) => {
                        reason = format!(
                            "{reason}; could not rule out valid records after it (the scan for \
                             them stopped after checksumming {TAIL_SCAN_CRC_BYTES_MAX} bytes)"
                        );
                    }
                }
            }
            if !self.repair {
                return Err(corrupt(path, pos as u64, reason));
            }
            let lost = after
                .and_then(|a| a.messages_end)
                .map_or(0, |end| end.saturating_sub(self.st.next_offset));
            if lost > 0 {
                // The tail has no next segment to tell the loss: count what the records
                // found after the damage held (offsets from the cut to their end).
                self.report.messages_lost += lost;
                tracing::warn!(
                    segment = %path.display(),
                    position = pos,
                    from_offset = self.st.next_offset,
                    to_offset = self.st.next_offset + lost,
                    "repair: cutting the tail loses these messages"
                );
            }
            tracing::warn!(segment = %path.display(), position = pos, %reason, "repair: cutting segment");
            self.report.repaired.push((path.to_path_buf(), pos as u64));
            self.meta.gaps.push((self.st.next_offset, u64::MAX));
            self.meta.write(self.dir)?;
            truncate(file, pos as u64)?;
            file_len = pos;
            break;
        }
        Ok((pos.min(buf.len()), file_len))
    }

    /// Creates the first segment of a topic that has none, at the offset where the log
    /// resumes (offsets are never reused).
    fn start_first_segment(&mut self) -> Result<()> {
        let (dir, meta, st) = (self.dir, &self.meta, &mut self.st);
        st.next_offset = st.next_offset.max(meta.first_offset);
        let seq = st.next_seq;
        let path = dir.join(format!("{seq:020}.seg"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io("create segment", &path, e))?;
        let header = SegmentHeader {
            seq,
            base_offset: st.next_offset,
        };
        use std::os::unix::fs::FileExt;
        file.write_all_at(&header.encode(), 0)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io("write segment header", &path, e))?;
        fsutil::sync_dir(dir)?;
        st.next_seq = seq + 1;
        st.log_start = st.next_offset;
        st.undue = BitWindow::new(st.next_offset);
        if st.groups.is_empty() {
            for gm in &meta.groups {
                st.groups
                    .push(Group::new(&gm.name, gm.start_offset, st.next_offset));
            }
        }
        st.segments.push_back(Segment {
            seq,
            base_offset: st.next_offset,
            file: Arc::new(SegFile::new(path, file, SEGMENT_HEADER_LEN as u64)),
            positions: Vec::new(),
            len: SEGMENT_HEADER_LEN as u64,
            delayed_pending: 0,
            last_publish_ms: 0,
        });
        Ok(())
    }

    /// Everything read is durable; ids still inside the de-duplication window are
    /// remembered; groups and gaps are reconciled with the metadata, which is rewritten if
    /// that changed it.
    fn finish(self) -> Result<(TopicState, RecoveryReport)> {
        let Scan {
            dir,
            now_ms,
            mut meta,
            report,
            mut st,
            dedup,
            ..
        } = self;
        st.durable_end = st.next_offset;
        for (at, id, off) in dedup {
            if at.saturating_add(st.limits.dedup_window_ms) > now_ms {
                st.remember_id(id, off, at);
            }
        }
        let mut changed = reconcile_groups(&mut st, &mut meta);
        // Record the gaps exactly (and forget provisional ones a repair did not need).
        if meta.gaps != st.gaps {
            meta.gaps = st.gaps.clone();
            changed = true;
        }
        if changed {
            meta.write(dir)?;
        }
        Ok((st, report))
    }
}

/// What follows a damaged frame of the tail segment.
#[derive(Debug, Default)]
struct AfterDamage {
    /// Byte position of the first frame after the damage that checks out completely
    /// (length, CRC, full record decode, plausible offsets).
    first_valid: Option<usize>,
    /// End offset (`base_offset + count`) of the last message batch found after the damage.
    messages_end: Option<u64>,
    /// The scan spent [`TAIL_SCAN_CRC_BYTES_MAX`] before reaching the end of the file.
    budget_ran_out: bool,
}

/// Looks for frames that check out after the bad frame at `damaged_at`, trying every byte
/// position up to the end of `buf` (the file length bounds the scan). A torn write leaves a
/// damaged suffix with nothing valid after it; a valid frame after the damage means the
/// damage is corruption inside the log.
///
/// Random bytes must not pass for a frame, so a candidate has to clear cheap structural
/// checks before its CRC is even computed: a known record kind, and for a message batch a
/// `base_offset` no lower than the next expected offset and no higher than the bytes
/// skipped since then could hold (every message takes at least 6 bytes); for group
/// operations, a body length that matches the operation count exactly. Only then is the
/// CRC checked (a chance match on garbage is about 2^-32 per candidate, on top of the
/// structure) and the whole record decoded. Checksummed bytes are bounded by
/// [`TAIL_SCAN_CRC_BYTES_MAX`]; a scan that runs out is reported, never taken for a tear.
fn scan_after_damage(buf: &[u8], damaged_at: usize, next_offset: u64) -> AfterDamage {
    let mut out = AfterDamage::default();
    let mut budget = TAIL_SCAN_CRC_BYTES_MAX;
    // Where the messages not yet accounted for start: the next offset expected, and the byte
    // from which they may have been stored.
    let (mut expect_from, mut since) = (next_offset, damaged_at);
    let mut pos = damaged_at + 1;
    while pos + FRAME_HEADER_LEN < buf.len() {
        let cand = &buf[pos..];
        let len = u32::from_le_bytes([cand[0], cand[1], cand[2], cand[3]]) as usize;
        let plausible = len > 0
            && len <= format::FRAME_BODY_BYTES_MAX
            && FRAME_HEADER_LEN + len <= cand.len()
            && plausible_body(
                &cand[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len],
                expect_from,
                (pos - since) as u64,
            );
        if !plausible {
            pos += 1;
            continue;
        }
        if budget < len as u64 {
            out.budget_ran_out = true;
            break;
        }
        budget -= len as u64;
        let record = format::decode_frame(cand)
            .ok()
            .and_then(|(body, frame_len)| Some((format::decode_record(body).ok()?, frame_len)));
        let Some((record, frame_len)) = record else {
            pos += 1;
            continue;
        };
        out.first_valid.get_or_insert(pos);
        pos += frame_len;
        if let Record::Messages(h, _) = record {
            let end = h.base_offset + u64::from(h.count);
            out.messages_end = Some(end);
            expect_from = end;
            since = pos;
        }
    }
    out
}

/// The cheap checks of [`scan_after_damage`] on a candidate body, before its CRC: a message
/// batch starting at an offset in `expect_from ..= expect_from + skipped_bytes / 6`, or
/// group operations whose length matches their count.
fn plausible_body(body: &[u8], expect_from: u64, skipped_bytes: u64) -> bool {
    const ENTRY_BYTES_MIN: u64 = 6;
    match body.first() {
        Some(&format::KIND_MESSAGES) if body.len() >= format::BATCH_HEADER_LEN => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[1..9]);
            let base = u64::from_le_bytes(b);
            base >= expect_from && base - expect_from <= skipped_bytes / ENTRY_BYTES_MIN
        }
        Some(&format::KIND_GROUP_OPS) if body.len() >= 2 => {
            let n = body[1] as usize;
            if n == 0 || n > crate::limits::NAME_BYTES_MAX || body.len() < 2 + n + 4 {
                return false;
            }
            let mut c = [0u8; 4];
            c.copy_from_slice(&body[2 + n..2 + n + 4]);
            let count = u32::from_le_bytes(c) as usize;
            count > 0 && body.len() - (2 + n + 4) == count.saturating_mul(format::GROUP_OP_LEN)
        }
        _ => false,
    }
}

/// Brings the recovered groups and the metadata's in line; returns whether the metadata
/// changed.
fn reconcile_groups(st: &mut TopicState, meta: &mut TopicMeta) -> bool {
    let mut changed = false;
    let (next_offset, log_start) = (st.next_offset, st.log_start);
    for g in &mut st.groups {
        if g.start_offset > next_offset {
            // Created "at the latest offset" while publishes that did not survive were in
            // flight: those offsets will be given to new messages, which the group must
            // see. It has no records (they would be after the lost messages), so start it
            // afresh at the recovered end.
            *g = Group::new(&g.name.clone(), next_offset, log_start);
            if let Some(m) = meta.groups.iter_mut().find(|m| m.name == g.name) {
                m.start_offset = next_offset;
            }
            changed = true;
        }
        g.done.compact_full();
    }
    // Groups found only in records (metadata written by an older run) get a meta entry.
    for g in &st.groups {
        if !meta.groups.iter().any(|m| m.name == g.name) {
            meta.groups.push(GroupMeta {
                name: g.name.clone(),
                start_offset: g.start_offset,
            });
            changed = true;
        }
    }
    changed
}

/// Why a record whose checksum is right cannot be applied. Never a torn write: it is
/// corruption wherever it is.
#[derive(Debug, thiserror::Error)]
enum BadRecord {
    /// The body does not decode.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// A batch that does not continue the log.
    #[error("batch starts at offset {found} but {expected} was expected")]
    OffsetGap {
        /// The batch's base offset.
        found: u64,
        /// The offset the log had reached.
        expected: u64,
    },
    /// A batch with no segment to index it in (cannot happen after a segment header).
    #[error("no segment")]
    NoSegment,
    /// An entry past what the 32-bit segment index can address.
    #[error("segment too large")]
    SegmentTooLarge,
    /// A group operation on an offset no message has yet.
    #[error("group op for offset {offset} before that message exists")]
    OpBeforeMessage {
        /// The operation's offset.
        offset: u64,
    },
}

/// Applies one checked frame body to the state being rebuilt.
fn apply_record(
    st: &mut TopicState,
    body: &[u8],
    frame_pos: usize,
    now_ms: u64,
    dedup: &mut Vec<(u64, u128, u64)>,
) -> Result<(), BadRecord> {
    match format::decode_record(body)? {
        Record::Messages(h, entries) => {
            if h.base_offset != st.next_offset {
                return Err(BadRecord::OffsetGap {
                    found: h.base_offset,
                    expected: st.next_offset,
                });
            }
            let seg = st.segments.back_mut().ok_or(BadRecord::NoSegment)?;
            for (start, _) in &entries {
                let entry_pos = frame_pos + FRAME_HEADER_LEN + start;
                let pos = u32::try_from(entry_pos).map_err(|_| BadRecord::SegmentTooLarge)?;
                seg.positions.push(pos);
            }
            seg.last_publish_ms = seg.last_publish_ms.max(h.publish_ms);
            for (i, (_, entry)) in entries.iter().enumerate() {
                let off = h.base_offset + i as u64;
                if let Some(due) = entry.due_ms {
                    st.index_delay(off, due, now_ms);
                }
                if let Some(id) = entry.id
                    && entry.flags & FLAG_ID != 0
                    && entry.flags & FLAG_NO_DEDUP == 0
                {
                    dedup.push((h.publish_ms, id, off));
                }
                if let Some(t) = entry.target {
                    st.target_message(off, t);
                }
            }
            st.next_offset += u64::from(h.count);
        }
        Record::GroupOps(group, ops) => {
            let log_start = st.log_start;
            let gi = match st.group_index(group) {
                Some(gi) => gi,
                None => {
                    st.groups.push(Group::new(group, log_start, log_start));
                    st.groups.len() - 1
                }
            };
            let next = st.next_offset;
            let g = &mut st.groups[gi];
            for op in ops {
                if op.offset >= next {
                    return Err(BadRecord::OpBeforeMessage { offset: op.offset });
                }
                match op.kind {
                    OpKind::Lease => {
                        g.hints.insert(
                            op.offset,
                            Hint {
                                attempts: op.attempts,
                                not_before_ms: 0,
                            },
                        );
                    }
                    OpKind::Nack => {
                        g.hints.insert(
                            op.offset,
                            Hint {
                                attempts: op.attempts,
                                not_before_ms: op.time_ms.max(1),
                            },
                        );
                    }
                    OpKind::Ack | OpKind::Dead => {
                        g.hints.remove(&op.offset);
                        g.done.set(op.offset);
                    }
                }
            }
        }
    }
    if let Some(seg) = st.segments.back_mut() {
        seg.len = (frame_pos + FRAME_HEADER_LEN + body.len()) as u64;
    }
    Ok(())
}
