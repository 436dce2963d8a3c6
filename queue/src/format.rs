//! The on-disk format, as pure functions over byte slices (no I/O).
//!
//! `queue/FORMAT.md` draws every field; this module is the only code that knows the layout.
//! Every decoder here takes untrusted bytes: it returns [`FormatError`] for anything that
//! does not parse and never panics or allocates more than the input justifies.

use crate::limits::{
    HEADER_NAME_BYTES_MAX, HEADER_VALUE_BYTES_MAX, HEADERS_MAX, NAME_BYTES_MAX,
    STORED_PAYLOAD_BYTES_MAX,
};

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SKQLOG01";
/// Version of the segment format written by this code.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a frame header: body length (u32) and CRC32C of the body (u32).
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest frame body accepted by the decoder (and produced by the encoder).
pub const FRAME_BODY_BYTES_MAX: usize = 64 << 20;

/// Frame kind: a batch of messages with consecutive offsets.
pub const KIND_MESSAGES: u8 = 1;
/// Frame kind: consumer-group operations (ack, lease, nack, dead-letter).
pub const KIND_GROUP_OPS: u8 = 2;

/// Entry flag: the producer supplied a message id.
pub const FLAG_ID: u8 = 1;
/// Entry flag: the message has a due time.
pub const FLAG_DUE: u8 = 2;
/// Entry flag: the message is for one consumer group only (a dead-letter replay).
pub const FLAG_TARGET: u8 = 4;
/// Entry flag: the id must not enter the de-duplication window (replays).
pub const FLAG_NO_DEDUP: u8 = 8;
const FLAGS_KNOWN: u8 = FLAG_ID | FLAG_DUE | FLAG_TARGET | FLAG_NO_DEDUP;

/// Largest message entry: flags, id, due time, target group, headers, payload.
pub const ENTRY_BYTES_MAX: usize = 1
    + 16
    + 8
    + (1 + NAME_BYTES_MAX)
    + 1
    + HEADERS_MAX * (1 + HEADER_NAME_BYTES_MAX + 2 + HEADER_VALUE_BYTES_MAX)
    + 4
    + STORED_PAYLOAD_BYTES_MAX;

/// Fixed length of one group operation on disk.
pub const GROUP_OP_LEN: usize = 1 + 8 + 4 + 8;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input ended inside a structure.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// CRC32C mismatch.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC found in the file.
        stored: u32,
        /// CRC of the bytes found.
        computed: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What was wrong.
        detail: String,
    },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// A bounds-checked little-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }
    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u128`.
    pub fn u128(&mut self) -> Result<u128, FormatError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
}

/// The fixed header at the start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment within its topic (also its file name).
    pub seq: u64,
    /// Offset the first message in this segment has (or would have).
    pub base_offset: u64,
}

impl SegmentHeader {
    /// Encodes the header: magic, version, reserved, CRC of bytes 16..32, seq, base offset.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.base_offset.to_le_bytes());
        let crc = crc32c::crc32c(&out[16..32]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, FormatError> {
        let mut r = Reader::new(buf);
        let magic = r.bytes(8)?;
        if magic != SEGMENT_MAGIC {
            return Err(invalid("segment magic", format!("{magic:02x?}")));
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(invalid("segment version", version.to_string()));
        }
        let _reserved = r.u16()?;
        let stored = r.u32()?;
        let rest = r.bytes(16)?;
        let computed = crc32c::crc32c(rest);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let mut r = Reader::new(rest);
        Ok(SegmentHeader {
            seq: r.u64()?,
            base_offset: r.u64()?,
        })
    }
}

/// Splits one frame off the front of `buf`: checks length and CRC, returns the body.
///
/// The returned `usize` is the frame's total length (header plus body).
pub fn decode_frame(buf: &[u8]) -> Result<(&[u8], usize), FormatError> {
    let mut r = Reader::new(buf);
    let len = r.u32()? as usize;
    let stored = r.u32()?;
    if len == 0 || len > FRAME_BODY_BYTES_MAX {
        return Err(invalid("frame length", len.to_string()));
    }
    let body = r.bytes(len)?;
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    Ok((body, FRAME_HEADER_LEN + len))
}

/// Appends a frame header for `body` and then `body` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(!body.is_empty() && body.len() <= FRAME_BODY_BYTES_MAX);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Fills in the frame header in front of a body encoded in place: `frame` is the header's
/// [`FRAME_HEADER_LEN`] bytes (any content) followed by the body; the result is the same
/// bytes [`encode_frame`] writes for that body.
pub fn seal_frame(frame: &mut [u8]) {
    let (header, body) = frame.split_at_mut(FRAME_HEADER_LEN);
    debug_assert!(!body.is_empty() && body.len() <= FRAME_BODY_BYTES_MAX);
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
}

/// One message as it is written (borrowed parts).
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Producer-supplied id, if any.
    pub id: Option<u128>,
    /// Due time in ms since the Unix epoch, if any.
    pub due_ms: Option<u64>,
    /// Consumer group this message is for (replays only).
    pub target: Option<&'a str>,
    /// Headers as written.
    pub headers: &'a [u8],
    /// Number of headers in `headers`.
    pub header_count: u8,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> EntryRef<'a> {
    /// Iterates the headers as `(name, value)` pairs. The bytes were validated by `decode_entry`.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::with_capacity(self.header_count as usize);
        let mut r = Reader::new(self.headers);
        for _ in 0..self.header_count {
            let Ok(name_len) = r.u8() else { break };
            let Ok(name) = r.bytes(name_len as usize) else {
                break;
            };
            let Ok(value_len) = r.u16() else { break };
            let Ok(value) = r.bytes(value_len as usize) else {
                break;
            };
            out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        }
        out
    }
}

/// Upper bound of the length an entry takes on disk (counts id and due time whether or not
/// they are present); used to size buffers.
pub fn entry_len_max(
    target: Option<&str>,
    headers: &[(String, Vec<u8>)],
    payload_len: usize,
) -> usize {
    let mut n = 1 + 1 + 4 + 16 + 8 + payload_len;
    if let Some(t) = target {
        n += 1 + t.len();
    }
    for (k, v) in headers {
        n += 1 + k.len() + 2 + v.len();
    }
    n
}

/// The exact length [`encode_entry`] gives an entry with these parts.
pub fn entry_len(
    id: Option<u128>,
    due_ms: Option<u64>,
    target: Option<&str>,
    headers: &[(String, Vec<u8>)],
    payload_len: usize,
) -> usize {
    let mut n = 1 + 1 + 4 + payload_len;
    if id.is_some() {
        n += 16;
    }
    if due_ms.is_some() {
        n += 8;
    }
    if let Some(t) = target {
        n += 1 + t.len();
    }
    for (k, v) in headers {
        n += 1 + k.len() + 2 + v.len();
    }
    n
}

/// Appends one message entry. Callers have validated lengths against the limits.
pub fn encode_entry(
    out: &mut Vec<u8>,
    flags: u8,
    id: Option<u128>,
    due_ms: Option<u64>,
    target: Option<&str>,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
) {
    let mut flags = flags & (FLAG_NO_DEDUP);
    if id.is_some() {
        flags |= FLAG_ID;
    }
    if due_ms.is_some() {
        flags |= FLAG_DUE;
    }
    if target.is_some() {
        flags |= FLAG_TARGET;
    }
    out.push(flags);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    if let Some(due) = due_ms {
        out.extend_from_slice(&due.to_le_bytes());
    }
    if let Some(t) = target {
        out.push(t.len() as u8);
        out.extend_from_slice(t.as_bytes());
    }
    out.push(headers.len() as u8);
    for (k, v) in headers {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes one message entry from the front of `r`.
pub fn decode_entry<'a>(r: &mut Reader<'a>) -> Result<EntryRef<'a>, FormatError> {
    let flags = r.u8()?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(invalid("entry flags", format!("{flags:#04x}")));
    }
    let id = if flags & FLAG_ID != 0 {
        Some(r.u128()?)
    } else {
        None
    };
    let due_ms = if flags & FLAG_DUE != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let target = if flags & FLAG_TARGET != 0 {
        let len = r.u8()? as usize;
        if len == 0 || len > NAME_BYTES_MAX {
            return Err(invalid("target group length", len.to_string()));
        }
        let raw = r.bytes(len)?;
        Some(std::str::from_utf8(raw).map_err(|_| invalid("target group", "not UTF-8"))?)
    } else {
        None
    };
    let header_count = r.u8()?;
    if header_count as usize > HEADERS_MAX {
        return Err(invalid("header count", header_count.to_string()));
    }
    let headers_start = r.position();
    let mut hr = r.clone();
    for _ in 0..header_count {
        let name_len = hr.u8()? as usize;
        if name_len == 0 || name_len > HEADER_NAME_BYTES_MAX {
            return Err(invalid("header name length", name_len.to_string()));
        }
        std::str::from_utf8(hr.bytes(name_len)?)
            .map_err(|_| invalid("header name", "not UTF-8"))?;
        let value_len = hr.u16()? as usize;
        if value_len > HEADER_VALUE_BYTES_MAX {
            return Err(invalid("header value length", value_len.to_string()));
        }
        hr.bytes(value_len)?;
    }
    let headers = r.bytes(hr.position() - headers_start)?;
    let payload_len = r.u32()? as usize;
    if payload_len > STORED_PAYLOAD_BYTES_MAX {
        return Err(invalid("payload length", payload_len.to_string()));
    }
    let payload = r.bytes(payload_len)?;
    Ok(EntryRef {
        flags,
        id,
        due_ms,
        target,
        headers,
        header_count,
        payload,
    })
}

/// The fixed part of a message-batch body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first entry.
    pub base_offset: u64,
    /// When the batch was accepted, ms since the Unix epoch.
    pub publish_ms: u64,
    /// Number of entries.
    pub count: u32,
}

/// Length of the fixed part of a message-batch body.
pub const BATCH_HEADER_LEN: usize = 1 + 8 + 8 + 4;

/// Appends the fixed part of a message-batch body.
pub fn encode_batch_header(out: &mut Vec<u8>, h: &BatchHeader) {
    out.push(KIND_MESSAGES);
    out.extend_from_slice(&h.base_offset.to_le_bytes());
    out.extend_from_slice(&h.publish_ms.to_le_bytes());
    out.extend_from_slice(&h.count.to_le_bytes());
}

/// Decodes a whole message-batch body (after its kind byte was checked by the caller).
///
/// Returns the header and, for every entry, its start within `body` and its decoded form.
pub fn decode_batch(body: &[u8]) -> Result<(BatchHeader, Vec<(usize, EntryRef<'_>)>), FormatError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    if kind != KIND_MESSAGES {
        return Err(invalid("frame kind", kind.to_string()));
    }
    let h = BatchHeader {
        base_offset: r.u64()?,
        publish_ms: r.u64()?,
        count: r.u32()?,
    };
    if h.count == 0 {
        return Err(invalid("batch count", "0"));
    }
    if h.base_offset.checked_add(u64::from(h.count)).is_none() {
        return Err(invalid("batch offsets", "overflow"));
    }
    // Each entry takes at least 6 bytes, so a count larger than that is a lie.
    if h.count as usize > r.remaining() / 6 {
        return Err(invalid("batch count", h.count.to_string()));
    }
    let mut entries = Vec::with_capacity(h.count as usize);
    for _ in 0..h.count {
        let start = r.position();
        entries.push((start, decode_entry(&mut r)?));
    }
    if r.remaining() != 0 {
        return Err(invalid(
            "batch",
            format!("{} trailing bytes", r.remaining()),
        ));
    }
    Ok((h, entries))
}

/// What a consumer group did to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Delivered under a lease (`attempts` is the new attempt count, `time_ms` the lease end).
    Lease = 1,
    /// Acknowledged: done for this group.
    Ack = 2,
    /// Negatively acknowledged: deliver again at `time_ms`.
    Nack = 3,
    /// Moved to the dead-letter topic: done for this group.
    Dead = 4,
}

/// One group operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOp {
    /// What happened.
    pub kind: OpKind,
    /// Message offset.
    pub offset: u64,
    /// Attempt count after the operation.
    pub attempts: u32,
    /// Lease end or retry time, ms since the Unix epoch (0 when unused).
    pub time_ms: u64,
}

/// Appends a group-ops body: kind, group name, count, fixed-size ops.
pub fn encode_group_ops(out: &mut Vec<u8>, group: &str, ops: &[GroupOp]) {
    out.push(KIND_GROUP_OPS);
    out.push(group.len() as u8);
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        out.push(op.kind as u8);
        out.extend_from_slice(&op.offset.to_le_bytes());
        out.extend_from_slice(&op.attempts.to_le_bytes());
        out.extend_from_slice(&op.time_ms.to_le_bytes());
    }
}

/// Decodes a group-ops body.
pub fn decode_group_ops(body: &[u8]) -> Result<(&str, Vec<GroupOp>), FormatError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    if kind != KIND_GROUP_OPS {
        return Err(invalid("frame kind", kind.to_string()));
    }
    let len = r.u8()? as usize;
    if len == 0 || len > NAME_BYTES_MAX {
        return Err(invalid("group name length", len.to_string()));
    }
    let group =
        std::str::from_utf8(r.bytes(len)?).map_err(|_| invalid("group name", "not UTF-8"))?;
    let count = r.u32()? as usize;
    if count == 0 || r.remaining() != count.saturating_mul(GROUP_OP_LEN) {
        return Err(invalid("group op count", count.to_string()));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = match r.u8()? {
            1 => OpKind::Lease,
            2 => OpKind::Ack,
            3 => OpKind::Nack,
            4 => OpKind::Dead,
            other => return Err(invalid("group op kind", other.to_string())),
        };
        ops.push(GroupOp {
            kind,
            offset: r.u64()?,
            attempts: r.u32()?,
            time_ms: r.u64()?,
        });
    }
    Ok((group, ops))
}

/// A decoded frame body of either kind.
#[derive(Debug)]
pub enum Record<'a> {
    /// A batch of messages.
    Messages(BatchHeader, Vec<(usize, EntryRef<'a>)>),
    /// Group operations.
    GroupOps(&'a str, Vec<GroupOp>),
}

/// Decodes a frame body of any kind.
pub fn decode_record(body: &[u8]) -> Result<Record<'_>, FormatError> {
    match body.first() {
        Some(&KIND_MESSAGES) => {
            let (h, entries) = decode_batch(body)?;
            Ok(Record::Messages(h, entries))
        }
        Some(&KIND_GROUP_OPS) => {
            let (g, ops) = decode_group_ops(body)?;
            Ok(Record::GroupOps(g, ops))
        }
        Some(other) => Err(invalid("frame kind", other.to_string())),
        None => Err(FormatError::Truncated { needed: 1 }),
    }
}

/// Decodes arbitrary bytes as segment contents, for fuzzing and tests: an optional segment
/// header (when the bytes start with [`SEGMENT_MAGIC`]), then frames whose bodies are decoded
/// as records (headers included), up to the first that does not decode. Returns how many
/// records decoded. Never panics.
pub fn decode_any(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    if rest.starts_with(&SEGMENT_MAGIC) {
        if SegmentHeader::decode(rest).is_err() {
            return 0;
        }
        rest = &rest[SEGMENT_HEADER_LEN..];
    }
    let mut records = 0;
    while let Ok((body, frame_len)) = decode_frame(rest) {
        match decode_record(body) {
            Ok(Record::Messages(_, entries)) => {
                for (_, e) in &entries {
                    let _ = e.headers();
                }
            }
            Ok(Record::GroupOps(..)) => {}
            Err(_) => break,
        }
        records += 1;
        rest = &rest[frame_len..];
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_len_is_exact_and_a_sealed_frame_equals_an_encoded_one() {
        let headers = [
            ("a".to_string(), b"xyz".to_vec()),
            ("bb".to_string(), Vec::new()),
        ];
        for id in [None, Some(7u128 << 100 | 3)] {
            for due in [None, Some(123_456u64)] {
                for target in [None, Some("grp")] {
                    for hs in [&headers[..0], &headers[..]] {
                        for payload in [&b""[..], &b"payload bytes"[..]] {
                            let mut body = vec![KIND_MESSAGES];
                            encode_entry(&mut body, 0, id, due, target, hs, payload);
                            assert_eq!(
                                body.len() - 1,
                                entry_len(id, due, target, hs, payload.len()),
                                "{id:?} {due:?} {target:?} {} headers",
                                hs.len()
                            );
                            let mut framed = Vec::new();
                            encode_frame(&mut framed, &body);
                            let mut sealed = vec![0xAA; FRAME_HEADER_LEN];
                            sealed.extend_from_slice(&body);
                            seal_frame(&mut sealed);
                            assert_eq!(sealed, framed);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            seq: 7,
            base_offset: 1234,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            // Bytes 10..12 are reserved and not covered; every other flip must be caught.
            if (10..12).contains(&i) {
                continue;
            }
            assert!(
                SegmentHeader::decode(&bad).is_err(),
                "flip at {i} not caught"
            );
        }
    }

    #[test]
    fn batch_round_trips() {
        let mut body = Vec::new();
        encode_batch_header(
            &mut body,
            &BatchHeader {
                base_offset: 10,
                publish_ms: 99,
                count: 2,
            },
        );
        let headers = vec![("k".to_string(), b"v".to_vec())];
        encode_entry(&mut body, 0, Some(5), Some(77), None, &headers, b"hello");
        encode_entry(&mut body, FLAG_NO_DEDUP, None, None, Some("g1"), &[], b"");
        let mut frame = Vec::new();
        encode_frame(&mut frame, &body);
        let (b, n) = decode_frame(&frame).expect("frame");
        assert_eq!(n, frame.len());
        let (h, entries) = decode_batch(b).expect("batch");
        assert_eq!(h.base_offset, 10);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.id, Some(5));
        assert_eq!(entries[0].1.due_ms, Some(77));
        assert_eq!(entries[0].1.payload, b"hello");
        assert_eq!(entries[0].1.headers(), headers);
        assert_eq!(entries[1].1.target, Some("g1"));
        assert_eq!(entries[1].1.flags & FLAG_NO_DEDUP, FLAG_NO_DEDUP);
        assert_eq!(
            entries[0].0, BATCH_HEADER_LEN,
            "first entry starts after the batch header"
        );
    }

    #[test]
    fn group_ops_round_trip() {
        let ops = vec![
            GroupOp {
                kind: OpKind::Lease,
                offset: 3,
                attempts: 1,
                time_ms: 50,
            },
            GroupOp {
                kind: OpKind::Ack,
                offset: 3,
                attempts: 1,
                time_ms: 0,
            },
        ];
        let mut body = Vec::new();
        encode_group_ops(&mut body, "workers", &ops);
        let (g, back) = decode_group_ops(&body).expect("ops");
        assert_eq!(g, "workers");
        assert_eq!(back, ops);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_frame(&buf);
            let _ = decode_record(&buf);
            let _ = SegmentHeader::decode(&buf);
            let mut r = Reader::new(&buf);
            let _ = decode_entry(&mut r);
        }
    }
}
