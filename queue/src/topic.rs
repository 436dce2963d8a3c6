//! One topic's in-memory state: the segment index, consumer groups, the delay index and the
//! de-duplication window. Pure bookkeeping under the topic's mutex; every change that must
//! survive a restart is returned as bytes for the writer ([`crate::writer::Job`]).
//!
//! Memory per retained message: 4 bytes of index (its position) plus one bit per
//! group and one "not yet due" bit; a pending delayed message adds a 16-byte heap entry.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{AckOutcome, Confirm, Due, GroupStats, Message, Receipt, TopicStats};
use crate::bits::BitWindow;
use crate::dedup::DedupWindow;
use crate::error::{Error, Result};
use crate::format::{
    self, BATCH_HEADER_LEN, BatchHeader, FLAG_NO_DEDUP, FRAME_HEADER_LEN, GroupOp, OpKind,
    SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::limits::READ_BYTES_MAX;
use crate::writer::SegFile;

/// One segment file and the index of the messages in it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) seq: u64,
    pub(crate) base_offset: u64,
    pub(crate) file: Arc<SegFile>,
    /// File position of each message entry (`base_offset + i`).
    pub(crate) positions: Vec<u32>,
    /// Bytes assigned in the file (written, or queued to the writer).
    pub(crate) len: u64,
    /// Delayed messages in this segment not yet due; the segment is kept while any remain.
    pub(crate) delayed_pending: u32,
    /// When the last message was appended, ms since the Unix epoch.
    pub(crate) last_publish_ms: u64,
}

impl Segment {
    pub(crate) fn end_offset(&self) -> u64 {
        self.base_offset + self.positions.len() as u64
    }
}

/// Where a message's bytes are.
#[derive(Debug, Clone)]
pub(crate) struct ReadLoc {
    pub(crate) offset: u64,
    pub(crate) file: Arc<SegFile>,
    pub(crate) pos: u64,
    pub(crate) len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingState {
    Leased {
        until_ms: u64,
    },
    Waiting {
        ready_at_ms: u64,
    },
    /// Being moved to the dead-letter topic.
    Dead,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    attempts: u32,
    state: PendingState,
}

/// What recovery learned about a message a group had not finished.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hint {
    pub(crate) attempts: u32,
    /// Retry time for a nacked message; 0 when the last thing recorded was a lease.
    pub(crate) not_before_ms: u64,
}

/// One consumer group's progress.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) start_offset: u64,
    /// Done (acked, dead-lettered or not for this group) flags; below the base all are done.
    pub(crate) done: BitWindow,
    /// Next offset never examined by this group since open.
    scan: u64,
    pending: BTreeMap<u64, Pending>,
    /// `(ready_at, offset)` of waiting messages; stale entries are skipped when popped.
    ready: BinaryHeap<Reverse<(u64, u64)>>,
    /// `(until, offset, attempts)` of leases; stale entries are skipped when popped.
    leases: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Dead-letter moves to (re)start.
    dead_retry: Vec<(u64, String)>,
    pub(crate) hints: HashMap<u64, Hint>,
    in_flight: u64,
    pub(crate) retry_waiting: u64,
    /// Messages being moved to the dead-letter topic (or waiting to retry the move).
    dead_moving: u64,
    redeliveries: u64,
    acked: u64,
    dead_lettered: u64,
}

impl Group {
    pub(crate) fn new(name: &str, start_offset: u64, log_start: u64) -> Group {
        let start = start_offset.max(log_start);
        let mut done = BitWindow::new(start);
        done.set_range(done.base(), start);
        done.compact_full();
        Group {
            name: name.to_string(),
            start_offset,
            done,
            scan: start,
            pending: BTreeMap::new(),
            ready: BinaryHeap::new(),
            leases: BinaryHeap::new(),
            dead_retry: Vec::new(),
            hints: HashMap::new(),
            in_flight: 0,
            retry_waiting: 0,
            dead_moving: 0,
            redeliveries: 0,
            acked: 0,
            dead_lettered: 0,
        }
    }

    pub(crate) fn is_done(&self, off: u64) -> bool {
        self.done.get(off).unwrap_or(true)
    }

    fn mark_done(&mut self, off: u64) {
        self.done.set(off);
        self.done.compact_full();
    }

    /// Every offset below this is done for the group.
    pub(crate) fn low_watermark(&self) -> u64 {
        self.done.first_zero()
    }
}

/// A message to move to the dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct DeadJob {
    pub(crate) group: String,
    pub(crate) offset: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: String,
}

/// A lease handed out by `fetch`.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) loc: ReadLoc,
    pub(crate) attempt: u32,
    pub(crate) until_ms: u64,
}

/// Stale entries a lease or retry heap may hold beyond twice its live ones.
const HEAP_SLACK: u64 = 4096;

/// Limits that apply to every topic, from the engine config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopicLimits {
    pub(crate) segment_bytes_max: u64,
    pub(crate) backlog_messages_max: u64,
    pub(crate) backlog_bytes_max: u64,
    pub(crate) dedup_window_ms: u64,
    pub(crate) dedup_entries_max: usize,
    pub(crate) max_attempts: u32,
    pub(crate) in_flight_max: u64,
    pub(crate) retention_ms: u64,
}

/// Bytes for the writer: a frame at a file position.
#[derive(Debug)]
pub(crate) struct Append {
    pub(crate) file: Arc<SegFile>,
    pub(crate) pos: u64,
    pub(crate) bytes: Vec<u8>,
    /// Set when the file was just created: its directory must be fsynced too.
    pub(crate) new_file: bool,
    /// Set when the file was just created and a tail came before it: that segment, now
    /// sealed, and where its frames end (its preallocated space is cut there first).
    pub(crate) seal: Option<(Arc<SegFile>, u64)>,
}

/// The state of one topic.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) limits: TopicLimits,
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) next_seq: u64,
    pub(crate) next_offset: u64,
    pub(crate) durable_end: u64,
    pub(crate) log_start: u64,
    /// Offsets of delayed messages that are not yet due.
    pub(crate) undue: BitWindow,
    /// `(due, offset)` of delayed messages not yet due.
    pub(crate) delays: BinaryHeap<Reverse<(u64, u64)>>,
    /// Messages meant for one group only (dead-letter replays).
    pub(crate) targets: HashMap<u64, String>,
    /// Offsets missing from the log after a repair (`[from, to)` ranges).
    pub(crate) gaps: Vec<(u64, u64)>,
    pub(crate) dedup: DedupWindow,
    pub(crate) groups: Vec<Group>,
    pub(crate) published: u64,
    pub(crate) duplicates: u64,
}

fn new_segment_file(dir: &std::path::Path, seq: u64) -> Result<Arc<SegFile>> {
    let path = dir.join(format!("{seq:020}.seg"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("create segment", &path, e))?;
    Ok(Arc::new(SegFile::new(path, file, 0)))
}

impl TopicState {
    /// Index of the group, creating nothing.
    pub(crate) fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    fn segment_index(&self, off: u64) -> Option<usize> {
        let idx = self.segments.partition_point(|s| s.base_offset <= off);
        let idx = idx.checked_sub(1)?;
        (off < self.segments[idx].end_offset()).then_some(idx)
    }

    pub(crate) fn locate(&self, off: u64) -> Option<ReadLoc> {
        let seg = &self.segments[self.segment_index(off)?];
        let i = (off - seg.base_offset) as usize;
        Some(ReadLoc {
            offset: off,
            file: seg.file.clone(),
            pos: u64::from(seg.positions[i]),
            // An upper bound: up to the next message, or to the end of the segment. Entries
            // are self-delimiting, and the bytes after the last durable one may not be
            // written yet, so readers accept a short read.
            len: (seg.positions.get(i + 1).map_or(seg.len, |&p| u64::from(p))
                - u64::from(seg.positions[i]))
            .min(format::ENTRY_BYTES_MAX as u64) as u32,
        })
    }

    /// Stored size of the message at `off` (an upper bound; 0 if not retained).
    pub(crate) fn entry_bytes(&self, off: u64) -> u64 {
        self.locate(off).map_or(0, |l| u64::from(l.len))
    }

    /// Where the first `max` durable messages at or after `from` are, in offset order, up to
    /// `READ_BYTES_MAX` stored bytes (at least one message). Walks
    /// the segment index, not offsets: offsets lost to a repair (between segments) and
    /// retention cost nothing, so the work is bounded by `max` plus the segments skipped.
    pub(crate) fn locate_range(&self, from: u64, max: usize) -> Vec<ReadLoc> {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut bytes = 0u64;
        let end = self.durable_end;
        let mut off = from.max(self.log_start);
        let first = self.segments.partition_point(|s| s.end_offset() <= off);
        for seg in self.segments.range(first..) {
            off = off.max(seg.base_offset);
            while off < seg.end_offset() && off < end && out.len() < max && bytes < READ_BYTES_MAX {
                if let Some(loc) = self.locate(off) {
                    bytes += u64::from(loc.len);
                    out.push(loc);
                }
                off += 1;
            }
            if off >= end || out.len() >= max || bytes >= READ_BYTES_MAX {
                break;
            }
        }
        out
    }

    fn in_gap(&self, off: u64) -> bool {
        self.gaps.iter().any(|&(a, b)| (a..b).contains(&off))
    }

    /// Lowest offset some group (or a pending delay) still needs; `None` without groups.
    fn needed_low(&self) -> Option<u64> {
        self.groups.iter().map(Group::low_watermark).min()
    }

    fn retained_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Forgets de-duplication entries that left the window.
    fn expire_dedup(&mut self, now_ms: u64) {
        self.dedup.expire(
            now_ms,
            self.limits.dedup_window_ms,
            self.limits.dedup_entries_max,
        );
    }

    pub(crate) fn remember_id(&mut self, id: u128, off: u64, at_ms: u64) {
        self.dedup.insert(id, off, at_ms);
    }

    /// Records that the message at `off` is for group `target` only: it is done at once for
    /// every other group, so it counts in no other group's lag and holds back no retention.
    pub(crate) fn target_message(&mut self, off: u64, target: &str) {
        self.targets.insert(off, target.to_string());
        for g in &mut self.groups {
            if g.name != target {
                g.mark_done(off);
            }
        }
    }

    /// Records a message that will exist at `off` (at publish and at recovery).
    pub(crate) fn index_delay(&mut self, off: u64, due_ms: u64, now_ms: u64) {
        if due_ms > now_ms {
            self.undue.set(off);
            self.delays.push(Reverse((due_ms, off)));
            if let Some(seg) = self.segments.back_mut() {
                seg.delayed_pending += 1;
            }
        }
    }

    /// Assigns offsets to `messages`, encodes them as one frame and returns the confirms and
    /// the bytes to write. Duplicates (by producer id) get the first copy's offset.
    ///
    /// `flags` is added to every entry (replays pass `FLAG_NO_DEDUP`), `target` limits the
    /// messages to one group.
    ///
    /// Every publish runs this under the topic lock, so it allocates once for the bytes
    /// (sized exactly, segment header included when the record starts a segment) and once
    /// for the confirms; the entries are encoded in place, not copied into a frame.
    pub(crate) fn append_messages(
        &mut self,
        messages: &[Message],
        flags: u8,
        target: Option<&str>,
        now_ms: u64,
    ) -> Result<(Vec<Confirm>, Option<Append>)> {
        self.expire_dedup(now_ms);
        let use_dedup = flags & FLAG_NO_DEDUP == 0;
        let mut confirms = Vec::with_capacity(messages.len());
        // Which messages are repeats (allocated only once one is found) and the ids of this
        // batch (allocated only for a batch of several messages with ids).
        let mut repeats: Option<Vec<bool>> = None;
        let mut batch_ids: HashMap<u128, u64> = HashMap::new();
        let mut fresh = 0usize;
        for (i, m) in messages.iter().enumerate() {
            let known =
                m.id.filter(|_| use_dedup)
                    .and_then(|id| self.dedup.get(id).or_else(|| batch_ids.get(&id).copied()));
            match known {
                Some(offset) => {
                    confirms.push(Confirm {
                        offset,
                        duplicate: true,
                    });
                    repeats.get_or_insert_with(|| vec![false; messages.len()])[i] = true;
                }
                None => {
                    let offset = self.next_offset + fresh as u64;
                    if let (Some(id), true) = (m.id, use_dedup)
                        && messages.len() > 1
                    {
                        batch_ids.insert(id, offset);
                    }
                    confirms.push(Confirm {
                        offset,
                        duplicate: false,
                    });
                    fresh += 1;
                }
            }
        }
        let fresh_messages = || {
            messages
                .iter()
                .enumerate()
                .filter(|(i, _)| repeats.as_ref().is_none_or(|r| !r[*i]))
                .map(|(_, m)| m)
        };
        let duplicates = (messages.len() - fresh) as u64;
        if fresh == 0 {
            self.duplicates += duplicates;
            return Ok((confirms, None));
        }

        // Backpressure: refuse the whole batch if it would pass a backlog limit.
        let low = self.needed_low().unwrap_or(self.log_start);
        let backlog = self.next_offset.saturating_sub(low) + fresh as u64;
        if backlog > self.limits.backlog_messages_max {
            return Err(Error::Full {
                topic: self.name.clone(),
                what: "messages",
                limit: self.limits.backlog_messages_max,
            });
        }
        let payload_bytes: u64 = fresh_messages().map(|m| m.payload.len() as u64 + 64).sum();
        if self.retained_bytes() + payload_bytes > self.limits.backlog_bytes_max {
            return Err(Error::Full {
                topic: self.name.clone(),
                what: "bytes",
                limit: self.limits.backlog_bytes_max,
            });
        }

        let due_of = |m: &Message| match m.due {
            Due::Now => None,
            Due::At(t) => Some(t),
            Due::After(d) => Some(now_ms.saturating_add(d)),
        };
        let body_len = BATCH_HEADER_LEN
            + fresh_messages()
                .map(|m| format::entry_len(m.id, due_of(m), target, &m.headers, m.payload.len()))
                .sum::<usize>();
        // Recovery refuses longer frames: such a record would be cut as torn, confirmed or not.
        if body_len > format::FRAME_BODY_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "a batch of {body_len} encoded bytes exceeds the largest record ({} bytes)",
                format::FRAME_BODY_BYTES_MAX
            )));
        }
        let frame_len = (FRAME_HEADER_LEN + body_len) as u64;
        let mut out = Vec::with_capacity(frame_len as usize + SEGMENT_HEADER_LEN);
        let (file, pos, new_file, seal) = self.reserve(frame_len, &mut out)?;
        let frame_start = pos + out.len() as u64;
        let body_start = out.len() + FRAME_HEADER_LEN;
        // Length and checksum are filled in once the body is encoded.
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        let base_offset = self.next_offset;
        format::encode_batch_header(
            &mut out,
            &BatchHeader {
                base_offset,
                publish_ms: now_ms,
                count: fresh as u32,
            },
        );
        let seg = self
            .segments
            .back_mut()
            .ok_or_else(|| Error::Invalid("topic has no segment".into()))?;
        for m in fresh_messages() {
            let entry_pos = frame_start + (out.len() - body_start + FRAME_HEADER_LEN) as u64;
            seg.positions.push(entry_pos as u32);
            format::encode_entry(
                &mut out,
                flags,
                m.id,
                due_of(m),
                target,
                &m.headers,
                &m.payload,
            );
        }
        format::seal_frame(&mut out[body_start - FRAME_HEADER_LEN..]);
        debug_assert_eq!(out.len() - body_start, body_len);
        seg.last_publish_ms = now_ms;
        self.next_offset += fresh as u64;
        self.duplicates += duplicates;
        self.published += fresh as u64;
        for (i, m) in fresh_messages().enumerate() {
            let off = base_offset + i as u64;
            if let Some(due) = due_of(m) {
                self.index_delay(off, due, now_ms);
            }
            if let (Some(id), true) = (m.id, use_dedup) {
                self.remember_id(id, off, now_ms);
            }
            if let Some(t) = target {
                self.target_message(off, t);
            }
        }
        Ok((
            confirms,
            Some(Append {
                file,
                pos,
                bytes: out,
                new_file,
                seal,
            }),
        ))
    }

    /// Finds room for `frame_len` bytes, starting a new segment when the current one is
    /// full. A new segment's header is put into `out` first. Returns the file, the position,
    /// whether the file is new, and (when it is) the segment it seals and where that one's
    /// frames end.
    #[allow(clippy::type_complexity)]
    fn reserve(
        &mut self,
        frame_len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(Arc<SegFile>, u64, bool, Option<(Arc<SegFile>, u64)>)> {
        let roll = match self.segments.back() {
            None => true,
            Some(s) => {
                s.len > SEGMENT_HEADER_LEN as u64
                    && s.len + frame_len > self.limits.segment_bytes_max
            }
        };
        if roll {
            if frame_len + SEGMENT_HEADER_LEN as u64 > u64::from(u32::MAX) {
                return Err(Error::Invalid("frame too large for a segment".into()));
            }
            let seq = self.next_seq;
            let file = new_segment_file(&self.dir, seq)?;
            let seal = self.segments.back().map(|s| (s.file.clone(), s.len));
            self.next_seq += 1;
            let header = SegmentHeader {
                seq,
                base_offset: self.next_offset,
            };
            out.extend_from_slice(&header.encode());
            self.segments.push_back(Segment {
                seq,
                base_offset: self.next_offset,
                file: file.clone(),
                positions: Vec::new(),
                len: SEGMENT_HEADER_LEN as u64 + frame_len,
                delayed_pending: 0,
                last_publish_ms: 0,
            });
            return Ok((file, 0, true, seal));
        }
        let seg = self
            .segments
            .back_mut()
            .ok_or_else(|| Error::Invalid("topic has no segment".into()))?;
        let pos = seg.len;
        if pos + frame_len > u64::from(u32::MAX) {
            return Err(Error::Invalid("segment position overflow".into()));
        }
        seg.len += frame_len;
        Ok((seg.file.clone(), pos, false, None))
    }

    /// Encodes group operations as a frame for the writer.
    pub(crate) fn append_ops(&mut self, group: &str, ops: &[GroupOp]) -> Result<Option<Append>> {
        if ops.is_empty() {
            return Ok(None);
        }
        let mut body = Vec::with_capacity(6 + group.len() + ops.len() * format::GROUP_OP_LEN);
        format::encode_group_ops(&mut body, group, ops);
        let frame_len = (FRAME_HEADER_LEN + body.len()) as u64;
        let mut out = Vec::with_capacity(frame_len as usize);
        let (file, pos, new_file, seal) = self.reserve(frame_len, &mut out)?;
        format::encode_frame(&mut out, &body);
        Ok(Some(Append {
            file,
            pos,
            bytes: out,
            new_file,
            seal,
        }))
    }

    /// Fires due delays and expires leases. Returns dead-letter moves to make.
    pub(crate) fn maintain(&mut self, now_ms: u64) -> Vec<DeadJob> {
        while let Some(&Reverse((due, off))) = self.delays.peek() {
            if due > now_ms {
                break;
            }
            self.delays.pop();
            if off < self.log_start {
                continue;
            }
            self.undue.clear(off);
            if let Some(i) = self.segment_index(off) {
                let seg = &mut self.segments[i];
                seg.delayed_pending = seg.delayed_pending.saturating_sub(1);
            }
            let target = self.targets.get(&off).cloned();
            for g in &mut self.groups {
                // Groups that already scanned past it skipped it as "not due": hand it over
                // now. Groups that have not reached it will deliver it when they do.
                if off < g.scan
                    && !g.is_done(off)
                    && !g.pending.contains_key(&off)
                    && target.as_deref().is_none_or(|t| t == g.name)
                {
                    let attempts = g.hints.remove(&off).map_or(0, |h| h.attempts);
                    g.pending.insert(
                        off,
                        Pending {
                            attempts,
                            state: PendingState::Waiting { ready_at_ms: due },
                        },
                    );
                    g.retry_waiting += 1;
                    g.ready.push(Reverse((due, off)));
                }
            }
        }
        let max_attempts = self.limits.max_attempts;
        let mut dead = Vec::new();
        for g in &mut self.groups {
            while let Some(&Reverse((until, off, attempts))) = g.leases.peek() {
                if until > now_ms {
                    break;
                }
                g.leases.pop();
                let Some(p) = g.pending.get_mut(&off) else {
                    continue;
                };
                if p.attempts != attempts || p.state != (PendingState::Leased { until_ms: until }) {
                    continue;
                }
                g.in_flight -= 1;
                if attempts >= max_attempts {
                    p.state = PendingState::Dead;
                    g.dead_moving += 1;
                    dead.push(DeadJob {
                        group: g.name.clone(),
                        offset: off,
                        attempts,
                        reason: "lease expired".into(),
                    });
                } else {
                    p.state = PendingState::Waiting { ready_at_ms: until };
                    g.retry_waiting += 1;
                    g.ready.push(Reverse((until, off)));
                }
            }
            for (offset, reason) in g.dead_retry.drain(..) {
                let attempts = g.pending.get(&offset).map_or(0, |p| p.attempts);
                dead.push(DeadJob {
                    group: g.name.clone(),
                    offset,
                    attempts,
                    reason,
                });
            }
        }
        dead
    }

    /// Leases up to `max` deliverable messages to group `gi`.
    ///
    /// Returns the leases, the lease records to persist, dead-letter moves found on the
    /// way (messages recovered with their attempts used up) and the earliest time something
    /// may become deliverable.
    pub(crate) fn fetch(
        &mut self,
        gi: usize,
        max: usize,
        max_bytes: u64,
        lease_ms: u64,
        now_ms: u64,
    ) -> (Vec<Lease>, Vec<GroupOp>, Vec<DeadJob>, Option<u64>) {
        let max_attempts = self.limits.max_attempts;
        let in_flight_max = self.limits.in_flight_max;
        let durable_end = self.durable_end;
        let mut out_offsets: Vec<(u64, u32, u64)> = Vec::new();
        let mut ops = Vec::new();
        let mut dead = Vec::new();
        let has_gaps = !self.gaps.is_empty();
        let until = now_ms.saturating_add(lease_ms);
        // Stored bytes leased so far, against `READ_BYTES_MAX`.
        let mut bytes = 0u64;
        let mut counted = 0;
        loop {
            // Count the message leased by the previous iteration, if it leased one.
            if out_offsets.len() > counted {
                counted = out_offsets.len();
                if let Some(&(last, _, _)) = out_offsets.last() {
                    bytes += self.entry_bytes(last);
                }
            }
            let g = &mut self.groups[gi];
            if out_offsets.len() >= max || g.in_flight >= in_flight_max || bytes >= max_bytes {
                break;
            }
            // Retries and fired delays first, oldest ready time first.
            if let Some(&Reverse((ready_at, off))) = g.ready.peek()
                && ready_at <= now_ms
            {
                g.ready.pop();
                let valid = g.pending.get(&off).is_some_and(|p| {
                    p.state
                        == PendingState::Waiting {
                            ready_at_ms: ready_at,
                        }
                });
                if valid {
                    g.retry_waiting -= 1;
                    let attempts = g.pending.get(&off).map_or(0, |p| p.attempts) + 1;
                    lease(g, off, attempts, until, &mut ops);
                    out_offsets.push((off, attempts, until));
                }
                continue;
            }
            // Everything below the done window's base is finished: no need to walk it.
            g.scan = g.scan.max(g.done.base());
            if g.scan >= durable_end {
                break;
            }
            let off = g.scan;
            g.scan += 1;
            if g.is_done(off) {
                continue;
            }
            if (has_gaps && self.in_gap(off))
                || self
                    .targets
                    .get(&off)
                    .is_some_and(|t| *t != self.groups[gi].name)
            {
                self.groups[gi].mark_done(off);
                continue;
            }
            if self.undue.get(off) == Some(true) {
                continue;
            }
            let g = &mut self.groups[gi];
            let mut attempts = 0;
            if let Some(h) = g.hints.remove(&off) {
                attempts = h.attempts;
                if h.not_before_ms > now_ms {
                    g.pending.insert(
                        off,
                        Pending {
                            attempts,
                            state: PendingState::Waiting {
                                ready_at_ms: h.not_before_ms,
                            },
                        },
                    );
                    g.retry_waiting += 1;
                    g.ready.push(Reverse((h.not_before_ms, off)));
                    continue;
                }
                if h.not_before_ms == 0 && attempts >= max_attempts {
                    // Its last lease ended with the previous run and used the last attempt.
                    g.pending.insert(
                        off,
                        Pending {
                            attempts,
                            state: PendingState::Dead,
                        },
                    );
                    g.dead_moving += 1;
                    dead.push(DeadJob {
                        group: g.name.clone(),
                        offset: off,
                        attempts,
                        reason: "lease expired (queue restarted)".into(),
                    });
                    continue;
                }
            }
            lease(g, off, attempts + 1, until, &mut ops);
            out_offsets.push((off, attempts + 1, until));
        }

        let g = &self.groups[gi];
        let mut wake: Option<u64> = None;
        let mut consider = |t: u64| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(&Reverse((t, _))) = g.ready.peek() {
            consider(t);
        }
        if let Some(&Reverse((t, _, _))) = g.leases.peek() {
            consider(t);
        }
        if let Some(&Reverse((t, _))) = self.delays.peek() {
            consider(t);
        }
        let leases = out_offsets
            .into_iter()
            .filter_map(|(off, attempt, until_ms)| {
                self.locate(off).map(|loc| Lease {
                    loc,
                    attempt,
                    until_ms,
                })
            })
            .collect();
        (leases, ops, dead, wake)
    }

    /// Drops stale heap entries (acked or re-leased messages) once they outnumber the live
    /// ones, so the heaps stay proportional to what is in flight, not to throughput.
    fn compact_heaps(g: &mut Group) {
        if g.leases.len() as u64 > 2 * g.in_flight + HEAP_SLACK {
            let pending = &g.pending;
            g.leases.retain(|&Reverse((until, off, attempts))| {
                pending.get(&off).is_some_and(|p| {
                    p.attempts == attempts && p.state == PendingState::Leased { until_ms: until }
                })
            });
        }
        if g.ready.len() as u64 > 2 * g.retry_waiting + HEAP_SLACK {
            let pending = &g.pending;
            g.ready.retain(|&Reverse((ready_at, off))| {
                pending.get(&off).is_some_and(|p| {
                    p.state
                        == PendingState::Waiting {
                            ready_at_ms: ready_at,
                        }
                })
            });
        }
    }

    /// Acknowledges receipts for group `gi`. Returns outcomes and the ack records.
    pub(crate) fn ack(
        &mut self,
        gi: usize,
        receipts: &[Receipt],
    ) -> (Vec<AckOutcome>, Vec<GroupOp>) {
        let durable_end = self.durable_end;
        let g = &mut self.groups[gi];
        let mut outcomes = Vec::with_capacity(receipts.len());
        let mut ops = Vec::new();
        for r in receipts {
            let outcome = if r.offset >= durable_end {
                AckOutcome::Unknown
            } else if g.is_done(r.offset) {
                AckOutcome::AlreadyAcked
            } else {
                match g.pending.get(&r.offset).copied() {
                    Some(p)
                        if r.attempt >= 1
                            && p.attempts == r.attempt
                            && p.state != PendingState::Dead =>
                    {
                        g.pending.remove(&r.offset);
                        match p.state {
                            PendingState::Leased { .. } => g.in_flight -= 1,
                            PendingState::Waiting { .. } => g.retry_waiting -= 1,
                            PendingState::Dead => {}
                        }
                        g.mark_done(r.offset);
                        g.acked += 1;
                        ops.push(GroupOp {
                            kind: OpKind::Ack,
                            offset: r.offset,
                            attempts: r.attempt,
                            time_ms: 0,
                        });
                        AckOutcome::Acked
                    }
                    _ => AckOutcome::LeaseLost,
                }
            };
            outcomes.push(outcome);
        }
        Self::compact_heaps(g);
        (outcomes, ops)
    }

    /// Gives a delivery back for redelivery at `retry_at_ms`, or dead-letters it when its
    /// attempts are used up (or always, with `reject`).
    pub(crate) fn nack(
        &mut self,
        gi: usize,
        receipt: Receipt,
        retry_at_ms: u64,
        reject: bool,
        reason: &str,
    ) -> (AckOutcome, Vec<GroupOp>, Option<DeadJob>) {
        let durable_end = self.durable_end;
        let max_attempts = self.limits.max_attempts;
        let g = &mut self.groups[gi];
        if receipt.offset >= durable_end {
            return (AckOutcome::Unknown, vec![], None);
        }
        if g.is_done(receipt.offset) {
            return (AckOutcome::AlreadyAcked, vec![], None);
        }
        let Some(p) = g.pending.get_mut(&receipt.offset) else {
            return (AckOutcome::LeaseLost, vec![], None);
        };
        let PendingState::Leased { .. } = p.state else {
            return (AckOutcome::LeaseLost, vec![], None);
        };
        if p.attempts != receipt.attempt {
            return (AckOutcome::LeaseLost, vec![], None);
        }
        g.in_flight -= 1;
        if reject || p.attempts >= max_attempts {
            p.state = PendingState::Dead;
            g.dead_moving += 1;
            let job = DeadJob {
                group: g.name.clone(),
                offset: receipt.offset,
                attempts: p.attempts,
                reason: reason.to_string(),
            };
            // A rejected message with attempts left must not be delivered again if the
            // process dies before the Dead record: a lease record with the attempts used up
            // makes recovery dead-letter it again (the dead-letter topic de-duplicates).
            let ops = if p.attempts < max_attempts {
                vec![GroupOp {
                    kind: OpKind::Lease,
                    offset: receipt.offset,
                    attempts: max_attempts,
                    time_ms: 0,
                }]
            } else {
                vec![]
            };
            return (AckOutcome::Acked, ops, Some(job));
        }
        p.state = PendingState::Waiting {
            ready_at_ms: retry_at_ms,
        };
        g.retry_waiting += 1;
        g.ready.push(Reverse((retry_at_ms, receipt.offset)));
        let op = GroupOp {
            kind: OpKind::Nack,
            offset: receipt.offset,
            attempts: p.attempts,
            time_ms: retry_at_ms,
        };
        (AckOutcome::Acked, vec![op], None)
    }

    /// Completes a dead-letter move (the dead letter is durable in the dead-letter topic).
    pub(crate) fn finish_dead(&mut self, gi: usize, off: u64) -> Vec<GroupOp> {
        let g = &mut self.groups[gi];
        let Some(p) = g.pending.remove(&off) else {
            return vec![];
        };
        if p.state == PendingState::Dead {
            g.dead_moving -= 1;
        }
        g.mark_done(off);
        g.dead_lettered += 1;
        vec![GroupOp {
            kind: OpKind::Dead,
            offset: off,
            attempts: p.attempts,
            time_ms: 0,
        }]
    }

    /// A dead-letter move failed (e.g. the dead-letter topic is full): try again later.
    pub(crate) fn retry_dead(&mut self, gi: usize, off: u64, reason: String) {
        self.groups[gi].dead_retry.push((off, reason));
    }

    /// How many segments at the front every group is done with (and are past retention);
    /// never the active one.
    pub(crate) fn expired_segments(&mut self, now_ms: u64) -> usize {
        let Some(low) = self.needed_low() else {
            return 0;
        };
        // Recovery rebuilds the de-duplication window from the log: a segment holding an id
        // still in the window is kept, or a restart would forget the id. Entries are in
        // offset order, so the front is the lowest offset still remembered.
        self.expire_dedup(now_ms);
        let dedup_low = self.dedup.lowest_offset();
        self.segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .take_while(|s| {
                s.end_offset() <= low
                    && s.end_offset() <= self.durable_end
                    && s.delayed_pending == 0
                    && dedup_low.is_none_or(|d| s.end_offset() <= d)
                    && s.last_publish_ms.saturating_add(self.limits.retention_ms) <= now_ms
            })
            .count()
    }

    /// Removes the first `n` segments from the index (after `expired_segments` and after
    /// the metadata naming the new first segment is durable).
    pub(crate) fn drop_segments(&mut self, n: usize) -> Vec<Segment> {
        let n = n.min(self.segments.len().saturating_sub(1));
        let out: Vec<Segment> = self.segments.drain(..n).collect();
        if let Some(first) = self.segments.front() {
            let start = first.base_offset;
            if start > self.log_start {
                self.log_start = start;
                self.undue.drop_below(start);
                self.targets.retain(|off, _| *off >= start);
                self.gaps.retain(|&(_, b)| b > start);
            }
        }
        out
    }

    pub(crate) fn stats(&self, dead_letters_pending: u64) -> TopicStats {
        let delayed_pending = self.delays.len() as u64;
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let low = g.low_watermark();
                let end = self.durable_end.max(low);
                let done_above = g.done.count_ones(low, end);
                let lag = (end - low).saturating_sub(done_above);
                let undue_visible = self.undue.count_ones(low, end);
                GroupStats {
                    name: g.name.clone(),
                    lag,
                    depth: lag.saturating_sub(
                        g.in_flight + g.retry_waiting + undue_visible + g.dead_moving,
                    ),
                    in_flight: g.in_flight,
                    retry_waiting: g.retry_waiting,
                    redeliveries: g.redeliveries,
                    acked: g.acked,
                    dead_lettered: g.dead_lettered,
                    low_watermark: low,
                    partition_low_watermarks: Vec::new(),
                }
            })
            .collect();
        TopicStats {
            name: self.name.clone(),
            log_start: self.log_start,
            next_offset: self.next_offset,
            durable_end: self.durable_end,
            segments: self.segments.len() as u64,
            retained_bytes: self.retained_bytes(),
            delayed_pending,
            published: self.published,
            duplicates: self.duplicates,
            dead_letters_pending,
            groups,
        }
    }

    /// Heap bytes of the index and delay structures (memory accounting for benchmarks).
    pub(crate) fn index_heap_bytes(&self) -> usize {
        let segs: usize = self
            .segments
            .iter()
            .map(|s| s.positions.capacity() * 4)
            .sum();
        let groups: usize = self.groups.iter().map(|g| g.done.heap_bytes()).sum();
        segs + self.delays.capacity() * 16
            + self.undue.heap_bytes()
            + groups
            + self.dedup.heap_bytes()
    }
}

fn lease(g: &mut Group, off: u64, attempts: u32, until: u64, ops: &mut Vec<GroupOp>) {
    g.pending.insert(
        off,
        Pending {
            attempts,
            state: PendingState::Leased { until_ms: until },
        },
    );
    g.leases.push(Reverse((until, off, attempts)));
    g.in_flight += 1;
    if attempts > 1 {
        g.redeliveries += 1;
    }
    ops.push(GroupOp {
        kind: OpKind::Lease,
        offset: off,
        attempts,
        time_ms: until,
    });
}
