//! Named limits. Every queue, buffer, batch and count in the engine has one here or in
//! [`crate::Config`]; nothing grows without bound.

/// Longest topic or group name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Largest message payload.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Most bytes a dead letter's envelope (its metadata, in front of the original payload)
/// may take; stored payloads may be this much larger than published ones.
pub const DEAD_LETTER_ENVELOPE_BYTES_MAX: usize = 128 << 10;
/// Largest payload stored on disk: a published payload plus a dead-letter envelope.
pub const STORED_PAYLOAD_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + DEAD_LETTER_ENVELOPE_BYTES_MAX;
/// Most headers on one message.
pub const HEADERS_MAX: usize = 16;
/// Longest header name.
pub const HEADER_NAME_BYTES_MAX: usize = 64;
/// Longest header value.
pub const HEADER_VALUE_BYTES_MAX: usize = 1024;
/// Most messages in one `publish_batch` call (one frame on disk).
pub const BATCH_MESSAGES_MAX: usize = 10_000;
/// Most messages one `fetch` returns.
pub const FETCH_MESSAGES_MAX: usize = 10_000;
/// Most receipts in one `ack` call.
pub const ACK_RECEIPTS_MAX: usize = 10_000;
/// Most topics one engine holds (dead-letter topics included).
pub const TOPICS_MAX: usize = 1024;
/// Most consumer groups per topic.
pub const GROUPS_MAX: usize = 64;
/// Most bytes the writer coalesces into one write + fsync round.
pub const COMMIT_BYTES_MAX: usize = 16 << 20;
/// A group-commit round keeps gathering jobs while they arrive less than this far apart
/// (only when the previous round had concurrent callers; see `writer.rs`).
pub const COMMIT_GATHER_GAP_US: u64 = 40;
/// Longest a round waits to gather jobs before its write + fsync.
pub const COMMIT_GATHER_MAX_US: u64 = 250;
/// How far ahead of what it writes the writer zero-fills a segment file by default
/// (`Config::preallocate_bytes`): an `fdatasync` that need not record a larger file size
/// skips the file system's journal commit and takes about half as long.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1 << 20;
/// Largest `Config::preallocate_bytes` (larger values are cut to it): one step is written
/// in one round, so it bounds the zeros one round writes.
pub const PREALLOCATE_BYTES_MAX: u64 = 16 << 20;
/// Most fsynced rounds waiting for the writer's notifier thread to answer their callers.
pub const NOTIFY_ROUNDS_MAX: usize = 4;
/// Longest a fetch waits for messages; longer waits are cut to this.
pub const FETCH_WAIT_MS_MAX: u64 = 5 * 60 * 1000;
/// Longest lease a fetch may ask for (12 hours).
pub const LEASE_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Latest due time (ms since the Unix epoch) and longest delay a message may name: 2^53 − 1,
/// so that every backend can hold it exactly (Redis scripts compute in doubles).
pub const DUE_MS_MAX: u64 = (1 << 53) - 1;
/// Longest retry delay a nack may ask for (7 days).
pub const NACK_DELAY_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest dead-letter reason kept, in bytes; longer ones are cut.
pub const REASON_BYTES_MAX: usize = 512;
/// Most dead letters one `dead_letters` call lists.
pub const DEAD_LETTER_LIST_MAX: usize = 1000;
/// Most messages one `peek` call shows.
pub const PEEK_MESSAGES_MAX: usize = 1000;
/// Most stored bytes one fetch, peek or dead-letter listing returns: it stops adding
/// messages once their stored size reaches this (the first message is always returned), so
/// a response stays well inside the broker's frame limit
/// ([`crate::proto::FRAME_BYTES_MAX`]) even with the largest messages.
pub const READ_BYTES_MAX: u64 = 8 << 20;
/// Most body bytes recovery checksums while it looks for valid records after a damaged
/// frame of the tail segment (to tell a torn write from damage inside the log). Candidates
/// must first pass structural checks, so real scans checksum far less; one that runs out
/// refuses to open rather than guess (about 0.1 s of hardware CRC-32C).
pub const TAIL_SCAN_CRC_BYTES_MAX: u64 = 1 << 30;
/// Shortest shared secret the broker and its clients accept (`queue serve --secret-file`,
/// `QUEUE_SECRET`): 16 bytes, so the HMAC proofs cannot be brute-forced offline.
pub const SECRET_BYTES_MIN: usize = 16;
/// Longest shared secret accepted.
pub const SECRET_BYTES_MAX: usize = 1024;
/// Addresses the broker remembers failed authentications of (oldest forgotten first).
pub const AUTH_THROTTLE_ADDRESSES_MAX: usize = 4096;
