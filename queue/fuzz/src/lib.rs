//! The bodies of the fuzz targets, as plain functions over bytes.
//!
//! `fuzz_targets/*.rs` call these, and the corpus replay test
//! (`queue/tests/it/fuzz_corpus.rs`) includes this very file with `#[path]`, so CI replays
//! the corpus through exactly the calls the fuzzers make.

use bytes::{Bytes, BytesMut};
use queue::format::{self, Reader, Record};
use queue::proto::{self, OP_ERROR, RESPONSE_BIT, Request, Response};

/// A frame limit small enough that fuzz inputs reach `split_frame`'s too-large branch.
const SMALL_FRAME_LIMIT: usize = 64;

/// Feeds `data` to every wire decoder: as a byte stream of frames of either direction
/// ([`proto::decode_any`], which uses `split_frame`), and as an opcode (the first byte)
/// followed by a body to `Request::decode`, to `Response::decode` as the success response to
/// that opcode, and as an error frame. Returns what `proto::decode_any` returned: whether
/// the stream's frames decoded.
pub fn frame(data: &[u8]) -> bool {
    let stream_ok = proto::decode_any(data);

    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = proto::split_frame(&mut buf, SMALL_FRAME_LIMIT) {}

    if let Some((&opcode, body)) = data.split_first() {
        let body = Bytes::copy_from_slice(body);
        let request = opcode & !RESPONSE_BIT;
        let _ = Request::decode(opcode, body.clone());
        let _ = Response::decode(request, request | RESPONSE_BIT, body.clone());
        let _ = Response::decode(request, OP_ERROR, body.clone());
        // A response opcode that does not match its request must be refused, not misread.
        let _ = Response::decode(request, opcode.wrapping_add(1) | RESPONSE_BIT, body);
    }
    stream_ok
}

/// Feeds `data` to every on-disk decoder: as segment bytes with checksummed frames
/// ([`format::decode_any`], what recovery reads), and as one frame body past its checksum
/// (`decode_record`, which a fuzzer could not otherwise reach through the CRC), as a
/// segment header and as a single message entry. Returns how many records decoded.
pub fn record(data: &[u8]) -> usize {
    let mut records = format::decode_any(data);
    match format::decode_record(data) {
        Ok(Record::Messages(_, entries)) => {
            for (_, entry) in &entries {
                let _ = entry.headers();
            }
            records += 1;
        }
        Ok(Record::GroupOps(..)) => records += 1,
        Err(_) => {}
    }
    let _ = format::SegmentHeader::decode(data);
    let _ = format::decode_frame(data);
    let _ = format::decode_entry(&mut Reader::new(data));
    records
}
