//! The broker's wire protocol as pure encode/decode functions (no I/O), shared by the
//! server and the client. `queue/PROTOCOL.md` is the byte-by-byte description.
//!
//! A frame is `u32 length | u8 opcode | u32 request_id | body`, little-endian, where
//! `length` counts the bytes after itself. Requests and responses carry the same request id;
//! a response's opcode is the request's with the high bit set, or [`OP_ERROR`].
//!
//! Every decoder takes untrusted bytes: lengths and counts are checked against the bytes
//! that are left and against [`crate::limits`] before anything is allocated, and every
//! failure is a [`ProtoError`], never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, Due, FetchOptions, Message, Peeked, Receipt,
    StartAt, TopicStats,
};
use crate::auth::{Nonce, Proof};
use crate::error::Error;
use crate::limits::{
    ACK_RECEIPTS_MAX, BATCH_MESSAGES_MAX, DEAD_LETTER_LIST_MAX, FETCH_MESSAGES_MAX, HEADERS_MAX,
    PEEK_MESSAGES_MAX, TOPICS_MAX,
};

/// Magic bytes at the start of a hello.
pub const MAGIC: [u8; 4] = *b"SKQP";
/// The newest protocol version this build speaks: 2 adds authentication to the handshake
/// (a challenge in the hello response, then `AUTH`); 3 adds `PUBLISH_EACH`.
pub const VERSION: u16 = 3;
/// The oldest protocol version this build speaks (a broker without a secret still serves
/// version-1 clients; one with a secret requires version 2).
pub const VERSION_MIN: u16 = 1;
/// The first version with authentication.
pub const VERSION_AUTH: u16 = 2;
/// The first version with `PUBLISH_EACH` (many independent publishes in one frame).
pub const VERSION_EACH: u16 = 3;
/// Most messages in one `PUBLISH_EACH` frame: the broker appends a frame's messages in one
/// submission, and gathers at most this many (`server::GATHER_MESSAGES_MAX`) at once.
pub const EACH_MESSAGES_MAX: usize = 1024;
/// Hello response (version 2): no authentication asked.
pub const AUTH_NONE: u8 = 0;
/// Hello response (version 2): HMAC-SHA256 challenge-response (`crate::auth`).
pub const AUTH_HMAC_SHA256: u8 = 1;
/// Bytes of the frame header after the length: opcode and request id.
pub const FRAME_HEADER_BYTES: usize = 5;
/// Largest frame (the bytes after the length prefix) either side accepts by default.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// Opcodes of requests (client to server). A response uses `op | 0x80`.
pub mod op {
    /// Version handshake; must be the first frame.
    pub const HELLO: u8 = 0x01;
    /// Liveness check.
    pub const PING: u8 = 0x02;
    /// Proof of the shared secret (version 2); must follow a hello that asked for it.
    pub const AUTH: u8 = 0x03;
    /// Publish one message.
    pub const PUBLISH: u8 = 0x10;
    /// Publish a batch (one record).
    pub const PUBLISH_BATCH: u8 = 0x11;
    /// Create a consumer group.
    pub const CREATE_GROUP: u8 = 0x12;
    /// Lease messages (long poll).
    pub const FETCH: u8 = 0x13;
    /// Acknowledge deliveries.
    pub const ACK: u8 = 0x14;
    /// Give a delivery back.
    pub const NACK: u8 = 0x15;
    /// Dead-letter a delivery.
    pub const REJECT: u8 = 0x16;
    /// List dead letters.
    pub const DEAD_LETTERS: u8 = 0x17;
    /// Replay a dead letter.
    pub const REPLAY: u8 = 0x18;
    /// Discard a dead letter.
    pub const DISCARD: u8 = 0x19;
    /// Topic statistics.
    pub const STATS: u8 = 0x1A;
    /// Topic names.
    pub const TOPICS: u8 = 0x1B;
    /// Read messages without leasing them.
    pub const PEEK: u8 = 0x1C;
    /// Publish independent messages, each confirmed (or refused) on its own (version 3).
    pub const PUBLISH_EACH: u8 = 0x1D;
}

/// A request opcode's name, for logs and metrics labels.
pub fn op_name(opcode: u8) -> &'static str {
    match opcode {
        op::HELLO => "hello",
        op::PING => "ping",
        op::AUTH => "auth",
        op::PUBLISH => "publish",
        op::PUBLISH_BATCH => "publish_batch",
        op::CREATE_GROUP => "create_group",
        op::FETCH => "fetch",
        op::ACK => "ack",
        op::NACK => "nack",
        op::REJECT => "reject",
        op::DEAD_LETTERS => "dead_letters",
        op::REPLAY => "replay",
        op::DISCARD => "discard",
        op::STATS => "stats",
        op::TOPICS => "topics",
        op::PEEK => "peek",
        op::PUBLISH_EACH => "publish_each",
        _ => "unknown",
    }
}

/// Opcode of an error response.
pub const OP_ERROR: u8 = 0xFF;
/// Bit set on a success response's opcode.
pub const RESPONSE_BIT: u8 = 0x80;

/// Error codes of an error frame. Codes below 100 are queue errors (the request was
/// well-formed); codes from 100 are protocol errors, after which the server closes the
/// connection.
pub mod code {
    /// Invalid argument.
    pub const INVALID: u16 = 1;
    /// Backlog limit reached; retry later.
    pub const FULL: u16 = 2;
    /// A named limit (topics, groups) reached.
    pub const LIMIT: u16 = 3;
    /// No such topic.
    pub const NO_SUCH_TOPIC: u16 = 4;
    /// No such pending dead letter.
    pub const NO_SUCH_DEAD_LETTER: u16 = 5;
    /// The queue stopped after a write failure.
    pub const FAILED: u16 = 6;
    /// The broker is shutting down (or the engine is closed).
    pub const CLOSED: u16 = 7;
    /// Another server-side error (I/O, corruption): the message says which.
    pub const INTERNAL: u16 = 8;
    /// The frame could not be decoded.
    pub const BAD_FRAME: u16 = 100;
    /// The frame's length exceeds the limit.
    pub const FRAME_TOO_LARGE: u16 = 101;
    /// The opcode is not known.
    pub const UNKNOWN_OPCODE: u16 = 102;
    /// No common protocol version, or no hello first.
    pub const BAD_HANDSHAKE: u16 = 103;
    /// The broker's connection limit is reached.
    pub const TOO_MANY_CONNECTIONS: u16 = 104;
    /// The connection was idle longer than the broker's idle timeout.
    pub const IDLE_TIMEOUT: u16 = 105;
    /// The broker requires authentication: a request came before a successful `AUTH`, or
    /// the client speaks no version with authentication.
    pub const AUTH_REQUIRED: u16 = 106;
    /// The client's proof is wrong (its secret is not the broker's).
    pub const AUTH_FAILED: u16 = 107;
    /// Too many wrong proofs from the client's address lately; no proof was checked.
    pub const AUTH_THROTTLED: u16 = 108;
}

/// A frame that could not be decoded. The server answers with an error frame carrying
/// [`ProtoError::code`] and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The body ended before a field did.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// A field holds a value it may not.
    #[error("bad frame: {0}")]
    Bad(String),
    /// The length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Unknown opcode.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
}

impl ProtoError {
    /// The error code sent for this error.
    pub fn code(&self) -> u16 {
        match self {
            ProtoError::Truncated(_) | ProtoError::Bad(_) => code::BAD_FRAME,
            ProtoError::TooLarge { .. } => code::FRAME_TOO_LARGE,
            ProtoError::UnknownOpcode(_) => code::UNKNOWN_OPCODE,
        }
    }
}

type PResult<T> = Result<T, ProtoError>;

/// One frame off the wire, not yet decoded further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Opcode.
    pub opcode: u8,
    /// Request id.
    pub request_id: u32,
    /// Body (a slice of the read buffer, no copy).
    pub body: Bytes,
}

/// Splits the next whole frame off `buf`, if one is there. `Ok(None)`: read more bytes.
/// A length above `max_frame_bytes` or below the header size is an error at once, before
/// the body arrives, so a huge length prefix never makes the reader buffer it.
pub fn split_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> PResult<Option<RawFrame>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame_bytes {
        return Err(ProtoError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    if len < FRAME_HEADER_BYTES {
        return Err(ProtoError::Bad(format!(
            "frame length {len} below the header size"
        )));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len).freeze();
    let opcode = frame.get_u8();
    let request_id = frame.get_u32_le();
    Ok(Some(RawFrame {
        opcode,
        request_id,
        body: frame,
    }))
}

/// Starts a frame in `out`; returns the position of its length field for [`end_frame`].
pub fn begin_frame(out: &mut BytesMut, opcode: u8, request_id: u32) -> usize {
    let at = out.len();
    out.put_u32_le(0);
    out.put_u8(opcode);
    out.put_u32_le(request_id);
    at
}

/// Fills in the length of the frame begun at `at`.
pub fn end_frame(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends a whole PUBLISH frame; the same bytes as `Request::Publish { .. }.encode(..)`,
/// without building the request (the client's pipelined publishes use it).
pub fn encode_publish(request_id: u32, topic: &str, message: &Message, out: &mut BytesMut) {
    let at = begin_frame(out, op::PUBLISH, request_id);
    put_str(out, topic);
    put_message(out, message);
    end_frame(out, at);
}

/// Appends a message's encoding (the `message` field) to `out`: the client encodes a
/// publish once and groups the encodings into a `PUBLISH_EACH` frame
/// ([`encode_publish_each`]).
pub fn encode_message(message: &Message, out: &mut BytesMut) {
    put_message(out, message);
}

/// Appends a whole `PUBLISH_EACH` frame of `count` messages already encoded by
/// [`encode_message`] and laid end to end in `messages`.
pub fn encode_publish_each(
    request_id: u32,
    topic: &str,
    count: usize,
    messages: &[u8],
    out: &mut BytesMut,
) {
    let at = begin_frame(out, op::PUBLISH_EACH, request_id);
    put_str(out, topic);
    out.put_u32_le(count as u32);
    out.put_slice(messages);
    end_frame(out, at);
}

/// Bytes a `PUBLISH_EACH` frame adds around its messages for `topic`: the header after the
/// length prefix, the topic and the count.
pub fn publish_each_overhead(topic: &str) -> usize {
    FRAME_HEADER_BYTES + 2 + topic.len().min(u16::MAX as usize) + 4
}

/// A request, decoded.
#[derive(Debug, Clone)]
pub enum Request {
    /// Handshake.
    Hello {
        /// Lowest version the client speaks.
        min_version: u16,
        /// Highest version the client speaks.
        max_version: u16,
        /// Free-form client name, for logs.
        client: String,
    },
    /// Liveness check.
    Ping,
    /// Proof of the shared secret (version 2).
    Auth {
        /// The client's fresh nonce.
        client_nonce: Nonce,
        /// `HMAC-SHA256(secret, label ‖ challenge ‖ client_nonce)`, see [`crate::auth`].
        proof: Proof,
    },
    /// Publish one message.
    Publish {
        /// Topic.
        topic: String,
        /// The message.
        message: Message,
    },
    /// Publish a batch.
    PublishBatch {
        /// Topic.
        topic: String,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Publish independent messages, each confirmed on its own (version 3).
    PublishEach {
        /// Topic.
        topic: String,
        /// The messages (1 to [`EACH_MESSAGES_MAX`]).
        messages: Vec<Message>,
    },
    /// Create a group.
    CreateGroup {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
        /// Start position.
        start: StartAt,
    },
    /// Lease messages.
    Fetch {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
        /// Options.
        options: FetchOptions,
    },
    /// Acknowledge.
    Ack {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
        /// Receipts.
        receipts: Vec<Receipt>,
    },
    /// Give back.
    Nack {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
        /// Receipt.
        receipt: Receipt,
        /// Retry delay.
        delay_ms: u64,
        /// Reason (kept if it is dead-lettered).
        reason: String,
    },
    /// Dead-letter at once.
    Reject {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
        /// Receipt.
        receipt: Receipt,
        /// Reason.
        reason: String,
    },
    /// List dead letters.
    DeadLetters {
        /// Topic (the original, not `.dlq`).
        topic: String,
        /// First dead offset.
        from: u64,
        /// Most entries.
        limit: u32,
    },
    /// Replay a dead letter.
    Replay {
        /// Topic.
        topic: String,
        /// Dead offset.
        dead_offset: u64,
    },
    /// Discard a dead letter.
    Discard {
        /// Topic.
        topic: String,
        /// Dead offset.
        dead_offset: u64,
    },
    /// Statistics.
    Stats {
        /// Topic.
        topic: String,
    },
    /// Topic names.
    Topics,
    /// Read without leasing.
    Peek {
        /// Topic.
        topic: String,
        /// First offset.
        from: u64,
        /// Most messages.
        limit: u32,
    },
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::Ping => op::PING,
            Request::Auth { .. } => op::AUTH,
            Request::Publish { .. } => op::PUBLISH,
            Request::PublishBatch { .. } => op::PUBLISH_BATCH,
            Request::PublishEach { .. } => op::PUBLISH_EACH,
            Request::CreateGroup { .. } => op::CREATE_GROUP,
            Request::Fetch { .. } => op::FETCH,
            Request::Ack { .. } => op::ACK,
            Request::Nack { .. } => op::NACK,
            Request::Reject { .. } => op::REJECT,
            Request::DeadLetters { .. } => op::DEAD_LETTERS,
            Request::Replay { .. } => op::REPLAY,
            Request::Discard { .. } => op::DISCARD,
            Request::Stats { .. } => op::STATS,
            Request::Topics => op::TOPICS,
            Request::Peek { .. } => op::PEEK,
        }
    }

    /// Appends the whole frame (length prefix included) to `out`.
    pub fn encode(&self, request_id: u32, out: &mut BytesMut) {
        let at = begin_frame(out, self.opcode(), request_id);
        match self {
            Request::Hello {
                min_version,
                max_version,
                client,
            } => {
                out.put_slice(&MAGIC);
                out.put_u16_le(*min_version);
                out.put_u16_le(*max_version);
                put_str(out, client);
            }
            Request::Ping | Request::Topics => {}
            Request::Auth {
                client_nonce,
                proof,
            } => {
                out.put_slice(client_nonce);
                out.put_slice(proof);
            }
            Request::Publish { topic, message } => {
                put_str(out, topic);
                put_message(out, message);
            }
            Request::PublishBatch { topic, messages }
            | Request::PublishEach { topic, messages } => {
                put_str(out, topic);
                out.put_u32_le(messages.len() as u32);
                for m in messages {
                    put_message(out, m);
                }
            }
            Request::CreateGroup {
                topic,
                group,
                start,
            } => {
                put_str(out, topic);
                put_str(out, group);
                out.put_u8(match start {
                    StartAt::Earliest => 0,
                    StartAt::Latest => 1,
                });
            }
            Request::Fetch {
                topic,
                group,
                options,
            } => {
                put_str(out, topic);
                put_str(out, group);
                out.put_u32_le(options.max_messages.min(u32::MAX as usize) as u32);
                put_opt_u64(out, options.lease_ms);
                out.put_u64_le(options.wait_ms);
            }
            Request::Ack {
                topic,
                group,
                receipts,
            } => {
                put_str(out, topic);
                put_str(out, group);
                out.put_u32_le(receipts.len() as u32);
                for r in receipts {
                    put_receipt(out, r);
                }
            }
            Request::Nack {
                topic,
                group,
                receipt,
                delay_ms,
                reason,
            } => {
                put_str(out, topic);
                put_str(out, group);
                put_receipt(out, receipt);
                out.put_u64_le(*delay_ms);
                put_str(out, reason);
            }
            Request::Reject {
                topic,
                group,
                receipt,
                reason,
            } => {
                put_str(out, topic);
                put_str(out, group);
                put_receipt(out, receipt);
                put_str(out, reason);
            }
            Request::DeadLetters { topic, from, limit } | Request::Peek { topic, from, limit } => {
                put_str(out, topic);
                out.put_u64_le(*from);
                out.put_u32_le(*limit);
            }
            Request::Replay { topic, dead_offset } | Request::Discard { topic, dead_offset } => {
                put_str(out, topic);
                out.put_u64_le(*dead_offset);
            }
            Request::Stats { topic } => put_str(out, topic),
        }
        end_frame(out, at);
    }

    /// Decodes a request body. Trailing bytes are an error.
    pub fn decode(opcode: u8, body: Bytes) -> PResult<Request> {
        let mut r = Reader(body);
        let req = match opcode {
            op::HELLO => {
                let magic = r.bytes_n(4, "magic")?;
                if magic[..] != MAGIC {
                    return Err(ProtoError::Bad("bad magic in hello".into()));
                }
                Request::Hello {
                    min_version: r.u16("min version")?,
                    max_version: r.u16("max version")?,
                    client: r.string("client name")?,
                }
            }
            op::PING => Request::Ping,
            op::AUTH => Request::Auth {
                client_nonce: r.array("client nonce")?,
                proof: r.array("proof")?,
            },
            op::TOPICS => Request::Topics,
            op::PUBLISH => Request::Publish {
                topic: r.string("topic")?,
                message: r.message()?,
            },
            op::PUBLISH_BATCH => {
                let topic = r.string("topic")?;
                let n = r.count("batch size", BATCH_MESSAGES_MAX, 6)?;
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    messages.push(r.message()?);
                }
                Request::PublishBatch { topic, messages }
            }
            op::PUBLISH_EACH => {
                let topic = r.string("topic")?;
                let n = r.count("messages", EACH_MESSAGES_MAX, 7)?;
                if n == 0 {
                    return Err(ProtoError::Bad("publish_each of no messages".into()));
                }
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    messages.push(r.message()?);
                }
                Request::PublishEach { topic, messages }
            }
            op::CREATE_GROUP => Request::CreateGroup {
                topic: r.string("topic")?,
                group: r.string("group")?,
                start: match r.u8("start")? {
                    0 => StartAt::Earliest,
                    1 => StartAt::Latest,
                    v => return Err(ProtoError::Bad(format!("start position {v}"))),
                },
            },
            op::FETCH => Request::Fetch {
                topic: r.string("topic")?,
                group: r.string("group")?,
                options: FetchOptions {
                    max_messages: r.u32("max messages")? as usize,
                    lease_ms: r.opt_u64("lease")?,
                    wait_ms: r.u64("wait")?,
                },
            },
            op::ACK => {
                let topic = r.string("topic")?;
                let group = r.string("group")?;
                let n = r.count("receipts", ACK_RECEIPTS_MAX, 12)?;
                let mut receipts = Vec::with_capacity(n);
                for _ in 0..n {
                    receipts.push(r.receipt()?);
                }
                Request::Ack {
                    topic,
                    group,
                    receipts,
                }
            }
            op::NACK => Request::Nack {
                topic: r.string("topic")?,
                group: r.string("group")?,
                receipt: r.receipt()?,
                delay_ms: r.u64("delay")?,
                reason: r.string("reason")?,
            },
            op::REJECT => Request::Reject {
                topic: r.string("topic")?,
                group: r.string("group")?,
                receipt: r.receipt()?,
                reason: r.string("reason")?,
            },
            op::DEAD_LETTERS => Request::DeadLetters {
                topic: r.string("topic")?,
                from: r.u64("from")?,
                limit: r.u32("limit")?,
            },
            op::PEEK => Request::Peek {
                topic: r.string("topic")?,
                from: r.u64("from")?,
                limit: r.u32("limit")?,
            },
            op::REPLAY => Request::Replay {
                topic: r.string("topic")?,
                dead_offset: r.u64("dead offset")?,
            },
            op::DISCARD => Request::Discard {
                topic: r.string("topic")?,
                dead_offset: r.u64("dead offset")?,
            },
            op::STATS => Request::Stats {
                topic: r.string("topic")?,
            },
            other => return Err(ProtoError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

/// A response, decoded.
#[derive(Debug, Clone)]
pub enum Response {
    /// Handshake accepted.
    Hello {
        /// The version both speak.
        version: u16,
        /// Largest frame the server accepts.
        max_frame_bytes: u32,
        /// Most requests in flight per connection before the server stops reading.
        max_in_flight: u32,
        /// Server name and version, for logs.
        server: String,
        /// Version 2: the broker's challenge if it requires authentication (then the
        /// client's next frame must be `AUTH`). Not on the wire in version 1.
        challenge: Option<Nonce>,
    },
    /// Authentication accepted: the broker's own proof of the secret.
    Authenticated {
        /// `HMAC-SHA256(secret, server label ‖ challenge ‖ client nonce)`.
        proof: Proof,
    },
    /// Empty success (ping, create group, discard).
    Done,
    /// Publish confirm.
    Confirm(Confirm),
    /// Batch confirms.
    Confirms(Vec<Confirm>),
    /// `PUBLISH_EACH`: per message, in the frame's order, its confirm or its own error.
    Each(Vec<Result<Confirm, WireError>>),
    /// Fetched deliveries.
    Deliveries(Vec<Delivery>),
    /// Ack outcomes.
    Outcomes(Vec<AckOutcome>),
    /// One nack/reject outcome.
    Outcome(AckOutcome),
    /// Dead letters.
    DeadLetters(Vec<DeadLetter>),
    /// Replayed: the new offset.
    Offset(u64),
    /// Statistics (JSON inside the frame, see PROTOCOL.md).
    Stats(TopicStats),
    /// Topic names.
    Topics(Vec<String>),
    /// Peeked messages.
    Peeked(Vec<Peeked>),
    /// An error.
    Error(WireError),
}

/// An error as carried by an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// One of [`code`].
    pub code: u16,
    /// Human-readable message.
    pub message: String,
    /// Topic, for `FULL`, `NO_SUCH_TOPIC`, `NO_SUCH_DEAD_LETTER`.
    pub topic: String,
    /// What limit, for `FULL` and `LIMIT`.
    pub what: String,
    /// The limit or the dead-letter offset.
    pub number: u64,
}

impl WireError {
    /// A protocol-level error.
    pub fn protocol(code: u16, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            topic: String::new(),
            what: String::new(),
            number: 0,
        }
    }

    /// The wire form of an engine error.
    pub fn from_error(e: &Error) -> Self {
        let mut w = WireError::protocol(code::INTERNAL, e.to_string());
        match e {
            Error::Invalid(m) => {
                w.code = code::INVALID;
                w.message = m.clone();
            }
            Error::Full { topic, what, limit } => {
                w.code = code::FULL;
                w.topic = topic.clone();
                w.what = (*what).to_string();
                w.number = *limit;
            }
            Error::Limit { what, limit } => {
                w.code = code::LIMIT;
                w.what = (*what).to_string();
                w.number = *limit;
            }
            Error::NoSuchTopic(t) => {
                w.code = code::NO_SUCH_TOPIC;
                w.topic = t.clone();
            }
            Error::NoSuchDeadLetter { topic, offset } => {
                w.code = code::NO_SUCH_DEAD_LETTER;
                w.topic = topic.clone();
                w.number = *offset;
            }
            Error::Failed(m) => {
                w.code = code::FAILED;
                w.message = m.clone();
            }
            Error::Closed => w.code = code::CLOSED,
            _ => {}
        }
        w
    }

    /// The engine error this stands for, so remote callers can match on it as on local ones.
    pub fn into_error(self) -> Error {
        match self.code {
            code::INVALID => Error::Invalid(self.message),
            code::FULL => Error::Full {
                topic: self.topic,
                what: static_name(&self.what),
                limit: self.number,
            },
            code::LIMIT => Error::Limit {
                what: static_name(&self.what),
                limit: self.number,
            },
            code::NO_SUCH_TOPIC => Error::NoSuchTopic(self.topic),
            code::NO_SUCH_DEAD_LETTER => Error::NoSuchDeadLetter {
                topic: self.topic,
                offset: self.number,
            },
            code::FAILED => Error::Failed(self.message),
            code::CLOSED => Error::Closed,
            code::AUTH_REQUIRED | code::AUTH_FAILED | code::AUTH_THROTTLED => {
                Error::Auth(self.message)
            }
            c => Error::Remote {
                code: c,
                message: self.message,
            },
        }
    }
}

/// The engine's error fields are `&'static str`; map the names it uses back to them.
fn static_name(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "messages",
        "bytes",
        "topics",
        "groups per topic",
        "topic creations per minute",
    ];
    KNOWN.iter().find(|k| **k == s).copied().unwrap_or("limit")
}

impl Response {
    /// Appends the whole response frame to `out`; `request_opcode` is the request's.
    pub fn encode(&self, request_opcode: u8, request_id: u32, out: &mut BytesMut) {
        let opcode = match self {
            Response::Error(_) => OP_ERROR,
            _ => request_opcode | RESPONSE_BIT,
        };
        let at = begin_frame(out, opcode, request_id);
        match self {
            Response::Hello {
                version,
                max_frame_bytes,
                max_in_flight,
                server,
                challenge,
            } => {
                out.put_u16_le(*version);
                out.put_u32_le(*max_frame_bytes);
                out.put_u32_le(*max_in_flight);
                put_str(out, server);
                if *version >= VERSION_AUTH {
                    match challenge {
                        Some(c) => {
                            out.put_u8(AUTH_HMAC_SHA256);
                            out.put_slice(c);
                        }
                        None => out.put_u8(AUTH_NONE),
                    }
                }
            }
            Response::Authenticated { proof } => out.put_slice(proof),
            Response::Done => {}
            Response::Confirm(c) => put_confirm(out, c),
            Response::Confirms(cs) => {
                out.put_u32_le(cs.len() as u32);
                for c in cs {
                    put_confirm(out, c);
                }
            }
            Response::Each(rs) => {
                out.put_u32_le(rs.len() as u32);
                for r in rs {
                    match r {
                        Ok(c) => {
                            out.put_u8(EACH_CONFIRM);
                            put_confirm(out, c);
                        }
                        Err(e) => {
                            out.put_u8(EACH_ERROR);
                            put_wire_error(out, e);
                        }
                    }
                }
            }
            Response::Deliveries(ds) => {
                out.put_u32_le(ds.len() as u32);
                for d in ds {
                    out.put_u64_le(d.offset);
                    out.put_u32_le(d.attempt);
                    put_opt_id(out, d.id);
                    put_headers(out, &d.headers);
                    put_bytes32(out, &d.payload);
                    put_opt_u64(out, d.due_ms);
                    out.put_u64_le(d.lease_until_ms);
                }
            }
            Response::Outcomes(os) => {
                out.put_u32_le(os.len() as u32);
                for o in os {
                    out.put_u8(outcome_byte(*o));
                }
            }
            Response::Outcome(o) => out.put_u8(outcome_byte(*o)),
            Response::DeadLetters(ds) => {
                out.put_u32_le(ds.len() as u32);
                for d in ds {
                    out.put_u64_le(d.dead_offset);
                    put_str(out, &d.group);
                    out.put_u64_le(d.original_offset);
                    out.put_u32_le(d.attempts);
                    put_str(out, &d.reason);
                    out.put_u64_le(d.dead_at_ms);
                    put_opt_id(out, d.id);
                    put_headers(out, &d.headers);
                    put_bytes32(out, &d.payload);
                }
            }
            Response::Offset(o) => out.put_u64_le(*o),
            Response::Stats(s) => {
                // Serializing plain structs of numbers and strings cannot fail; an empty
                // object would be rejected by the client's decoder rather than misread.
                let json = serde_json::to_vec(s).unwrap_or_default();
                put_bytes32(out, &json);
            }
            Response::Topics(ts) => {
                out.put_u32_le(ts.len() as u32);
                for t in ts {
                    put_str(out, t);
                }
            }
            Response::Peeked(ps) => {
                out.put_u32_le(ps.len() as u32);
                for p in ps {
                    out.put_u64_le(p.offset);
                    put_opt_id(out, p.id);
                    put_headers(out, &p.headers);
                    put_bytes32(out, &p.payload);
                    put_opt_u64(out, p.due_ms);
                }
            }
            Response::Error(e) => put_wire_error(out, e),
        }
        end_frame(out, at);
    }

    /// Decodes a response to a request with opcode `request_opcode`.
    pub fn decode(request_opcode: u8, opcode: u8, body: Bytes) -> PResult<Response> {
        let mut r = Reader(body);
        if opcode == OP_ERROR {
            let e = r.wire_error()?;
            r.finish()?;
            return Ok(Response::Error(e));
        }
        if opcode != request_opcode | RESPONSE_BIT {
            return Err(ProtoError::Bad(format!(
                "response opcode {opcode:#04x} to request {request_opcode:#04x}"
            )));
        }
        let resp = match request_opcode {
            op::HELLO => {
                let version = r.u16("version")?;
                let max_frame_bytes = r.u32("max frame")?;
                let max_in_flight = r.u32("max in flight")?;
                let server = r.string("server")?;
                let challenge = if version >= VERSION_AUTH {
                    match r.u8("auth method")? {
                        AUTH_NONE => None,
                        AUTH_HMAC_SHA256 => Some(r.array("challenge")?),
                        m => return Err(ProtoError::Bad(format!("auth method {m}"))),
                    }
                } else {
                    None
                };
                Response::Hello {
                    version,
                    max_frame_bytes,
                    max_in_flight,
                    server,
                    challenge,
                }
            }
            op::AUTH => Response::Authenticated {
                proof: r.array("proof")?,
            },
            op::PING | op::CREATE_GROUP | op::DISCARD => Response::Done,
            op::PUBLISH => Response::Confirm(r.confirm()?),
            op::PUBLISH_BATCH => {
                let n = r.count("confirms", BATCH_MESSAGES_MAX, 9)?;
                let mut cs = Vec::with_capacity(n);
                for _ in 0..n {
                    cs.push(r.confirm()?);
                }
                Response::Confirms(cs)
            }
            op::PUBLISH_EACH => {
                let n = r.count("results", EACH_MESSAGES_MAX, 10)?;
                let mut rs = Vec::with_capacity(n);
                for _ in 0..n {
                    rs.push(match r.u8("result tag")? {
                        EACH_CONFIRM => Ok(r.confirm()?),
                        EACH_ERROR => Err(r.wire_error()?),
                        v => return Err(ProtoError::Bad(format!("result tag {v}"))),
                    });
                }
                Response::Each(rs)
            }
            op::FETCH => {
                let n = r.count("deliveries", FETCH_MESSAGES_MAX, 27)?;
                let mut ds = Vec::with_capacity(n);
                for _ in 0..n {
                    ds.push(Delivery {
                        offset: r.u64("offset")?,
                        attempt: r.u32("attempt")?,
                        id: r.opt_id()?,
                        headers: r.headers()?,
                        payload: r.bytes32("payload")?,
                        due_ms: r.opt_u64("due")?,
                        lease_until_ms: r.u64("lease until")?,
                    });
                }
                Response::Deliveries(ds)
            }
            op::ACK => {
                let n = r.count("outcomes", ACK_RECEIPTS_MAX, 1)?;
                let mut os = Vec::with_capacity(n);
                for _ in 0..n {
                    os.push(r.outcome()?);
                }
                Response::Outcomes(os)
            }
            op::NACK | op::REJECT => Response::Outcome(r.outcome()?),
            op::DEAD_LETTERS => {
                let n = r.count("dead letters", DEAD_LETTER_LIST_MAX, 35)?;
                let mut ds = Vec::with_capacity(n);
                for _ in 0..n {
                    ds.push(DeadLetter {
                        dead_offset: r.u64("dead offset")?,
                        group: r.string("group")?,
                        original_offset: r.u64("original offset")?,
                        attempts: r.u32("attempts")?,
                        reason: r.string("reason")?,
                        dead_at_ms: r.u64("dead at")?,
                        id: r.opt_id()?,
                        headers: r.headers()?,
                        payload: r.bytes32("payload")?,
                    });
                }
                Response::DeadLetters(ds)
            }
            op::REPLAY => Response::Offset(r.u64("offset")?),
            op::STATS => {
                let json = r.bytes32("stats")?;
                let stats = serde_json::from_slice(&json)
                    .map_err(|e| ProtoError::Bad(format!("stats JSON: {e}")))?;
                Response::Stats(stats)
            }
            op::TOPICS => {
                let n = r.count("topics", TOPICS_MAX, 2)?;
                let mut ts = Vec::with_capacity(n);
                for _ in 0..n {
                    ts.push(r.string("topic")?);
                }
                Response::Topics(ts)
            }
            op::PEEK => {
                let n = r.count("peeked", PEEK_MESSAGES_MAX, 15)?;
                let mut ps = Vec::with_capacity(n);
                for _ in 0..n {
                    ps.push(Peeked {
                        offset: r.u64("offset")?,
                        id: r.opt_id()?,
                        headers: r.headers()?,
                        payload: r.bytes32("payload")?,
                        due_ms: r.opt_u64("due")?,
                    });
                }
                Response::Peeked(ps)
            }
            other => return Err(ProtoError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

fn outcome_byte(o: AckOutcome) -> u8 {
    match o {
        AckOutcome::Acked => 0,
        AckOutcome::AlreadyAcked => 1,
        AckOutcome::LeaseLost => 2,
        AckOutcome::Unknown => 3,
    }
}

// ---- encoding helpers ----
//
// Strings carry a u16 length; a longer string (never valid: names, reasons and header names
// are all limited well below 64 KiB) is cut at the largest char boundary that fits, and the
// engine then judges the cut value.

fn put_str(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16_le(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn put_bytes16(out: &mut BytesMut, b: &[u8]) {
    let end = b.len().min(u16::MAX as usize);
    out.put_u16_le(end as u16);
    out.put_slice(&b[..end]);
}

fn put_bytes32(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v);
        }
        None => out.put_u8(0),
    }
}

fn put_opt_id(out: &mut BytesMut, id: Option<u128>) {
    match id {
        Some(id) => {
            out.put_u8(1);
            out.put_u128_le(id);
        }
        None => out.put_u8(0),
    }
}

fn put_headers(out: &mut BytesMut, headers: &[(String, Vec<u8>)]) {
    out.put_u8(headers.len().min(u8::MAX as usize) as u8);
    for (k, v) in headers.iter().take(u8::MAX as usize) {
        put_str(out, k);
        put_bytes16(out, v);
    }
}

fn put_receipt(out: &mut BytesMut, r: &Receipt) {
    out.put_u64_le(r.offset);
    out.put_u32_le(r.attempt);
}

fn put_confirm(out: &mut BytesMut, c: &Confirm) {
    out.put_u64_le(c.offset);
    out.put_u8(u8::from(c.duplicate));
}

fn put_wire_error(out: &mut BytesMut, e: &WireError) {
    out.put_u16_le(e.code);
    put_str(out, &e.message);
    put_str(out, &e.topic);
    put_str(out, &e.what);
    out.put_u64_le(e.number);
}

/// `PUBLISH_EACH` result tags: a confirm follows, or an error body.
const EACH_CONFIRM: u8 = 0;
const EACH_ERROR: u8 = 1;

/// Due kinds on the wire.
const DUE_NOW: u8 = 0;
const DUE_AT: u8 = 1;
const DUE_AFTER: u8 = 2;

fn put_message(out: &mut BytesMut, m: &Message) {
    let (kind, at) = match m.due {
        Due::Now => (DUE_NOW, 0),
        Due::At(t) => (DUE_AT, t),
        Due::After(d) => (DUE_AFTER, d),
    };
    out.put_u8(kind);
    if kind != DUE_NOW {
        out.put_u64_le(at);
    }
    put_opt_id(out, m.id);
    put_headers(out, &m.headers);
    put_bytes32(out, &m.payload);
}

// ---- decoding ----

/// A checked cursor over a frame body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> PResult<()> {
        if self.0.remaining() < n {
            Err(ProtoError::Truncated(what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> PResult<u8> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> PResult<u16> {
        self.need(2, what)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self, what: &'static str) -> PResult<u32> {
        self.need(4, what)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> PResult<u64> {
        self.need(8, what)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes_n(&mut self, n: usize, what: &'static str) -> PResult<Bytes> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    /// A fixed-size field (a nonce or a proof).
    fn array<const N: usize>(&mut self, what: &'static str) -> PResult<[u8; N]> {
        self.need(N, what)?;
        let mut a = [0u8; N];
        self.0.copy_to_slice(&mut a);
        Ok(a)
    }
    fn bytes32(&mut self, what: &'static str) -> PResult<Bytes> {
        let n = self.u32(what)? as usize;
        self.bytes_n(n, what)
    }
    fn string(&mut self, what: &'static str) -> PResult<String> {
        let n = self.u16(what)? as usize;
        let b = self.bytes_n(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Bad(format!("{what}: not UTF-8")))
    }
    fn opt_u64(&mut self, what: &'static str) -> PResult<Option<u64>> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.u64(what)?)),
            v => Err(ProtoError::Bad(format!("{what}: option tag {v}"))),
        }
    }
    fn opt_id(&mut self) -> PResult<Option<u128>> {
        match self.u8("id")? {
            0 => Ok(None),
            1 => {
                self.need(16, "id")?;
                Ok(Some(self.0.get_u128_le()))
            }
            v => Err(ProtoError::Bad(format!("id: option tag {v}"))),
        }
    }
    /// A u32 count of items at least `min_item_bytes` long each, at most `max`; checked
    /// against the bytes left so that a forged count cannot make us reserve memory.
    fn count(&mut self, what: &'static str, max: usize, min_item_bytes: usize) -> PResult<usize> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(ProtoError::Bad(format!("{what}: {n} exceeds {max}")));
        }
        if n.saturating_mul(min_item_bytes) > self.0.remaining() {
            return Err(ProtoError::Truncated(what));
        }
        Ok(n)
    }
    fn headers(&mut self) -> PResult<Vec<(String, Vec<u8>)>> {
        let n = self.u8("header count")? as usize;
        if n > HEADERS_MAX {
            return Err(ProtoError::Bad(format!("{n} headers exceed {HEADERS_MAX}")));
        }
        let mut hs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.string("header name")?;
            let len = self.u16("header value")? as usize;
            let v = self.bytes_n(len, "header value")?;
            hs.push((k, v.to_vec()));
        }
        Ok(hs)
    }
    fn receipt(&mut self) -> PResult<Receipt> {
        Ok(Receipt {
            offset: self.u64("receipt offset")?,
            attempt: self.u32("receipt attempt")?,
        })
    }
    fn confirm(&mut self) -> PResult<Confirm> {
        let offset = self.u64("confirm offset")?;
        let duplicate = match self.u8("confirm duplicate")? {
            0 => false,
            1 => true,
            v => return Err(ProtoError::Bad(format!("duplicate flag {v}"))),
        };
        Ok(Confirm { offset, duplicate })
    }
    fn wire_error(&mut self) -> PResult<WireError> {
        Ok(WireError {
            code: self.u16("code")?,
            message: self.string("message")?,
            topic: self.string("topic")?,
            what: self.string("what")?,
            number: self.u64("number")?,
        })
    }
    fn outcome(&mut self) -> PResult<AckOutcome> {
        Ok(match self.u8("outcome")? {
            0 => AckOutcome::Acked,
            1 => AckOutcome::AlreadyAcked,
            2 => AckOutcome::LeaseLost,
            3 => AckOutcome::Unknown,
            v => return Err(ProtoError::Bad(format!("ack outcome {v}"))),
        })
    }
    fn message(&mut self) -> PResult<Message> {
        let due = match self.u8("due kind")? {
            DUE_NOW => Due::Now,
            DUE_AT => Due::At(self.u64("due")?),
            DUE_AFTER => Due::After(self.u64("due")?),
            v => return Err(ProtoError::Bad(format!("due kind {v}"))),
        };
        Ok(Message {
            id: self.opt_id()?,
            due,
            headers: self.headers()?,
            payload: self.bytes32("payload")?,
        })
    }
    fn finish(&self) -> PResult<()> {
        if self.0.has_remaining() {
            Err(ProtoError::Bad(format!(
                "{} bytes after the last field",
                self.0.remaining()
            )))
        } else {
            Ok(())
        }
    }
}

/// Decodes one whole frame of either direction, for fuzzing and tests: every request
/// opcode, and every response opcode (decoded as a response to the opcode without the high
/// bit). Returns whether it decoded.
pub fn decode_any(data: &[u8]) -> bool {
    let mut buf = BytesMut::from(data);
    let mut ok = false;
    while let Ok(Some(f)) = split_frame(&mut buf, FRAME_BYTES_MAX) {
        ok = if f.opcode & RESPONSE_BIT != 0 {
            let req = if f.opcode == OP_ERROR {
                op::PING
            } else {
                f.opcode & !RESPONSE_BIT
            };
            Response::decode(req, f.opcode, f.body).is_ok()
        } else {
            Request::decode(f.opcode, f.body).is_ok()
        };
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(req: &Request) -> Request {
        let mut out = BytesMut::new();
        req.encode(7, &mut out);
        let f = split_frame(&mut out, FRAME_BYTES_MAX)
            .expect("frame")
            .expect("whole frame");
        assert_eq!(f.request_id, 7);
        assert!(out.is_empty());
        Request::decode(f.opcode, f.body).expect("decodes")
    }

    #[test]
    fn publish_roundtrips_every_field() {
        let m = Message::new(&b"payload"[..])
            .with_id(u128::MAX - 3)
            .with_due(Due::After(1500))
            .with_header("k", b"v".to_vec());
        let Request::Publish { topic, message } = roundtrip_request(&Request::Publish {
            topic: "orders".into(),
            message: m,
        }) else {
            panic!("wrong request kind");
        };
        assert_eq!(topic, "orders");
        assert_eq!(message.id, Some(u128::MAX - 3));
        assert_eq!(message.due, Due::After(1500));
        assert_eq!(message.headers, vec![("k".to_string(), b"v".to_vec())]);
        assert_eq!(&message.payload[..], b"payload");
    }

    #[test]
    fn every_truncation_of_a_batch_is_an_error_not_a_panic() {
        let req = Request::PublishBatch {
            topic: "t".into(),
            messages: vec![Message::new(&b"abc"[..]).with_id(9); 3],
        };
        let mut out = BytesMut::new();
        req.encode(1, &mut out);
        let body = Bytes::copy_from_slice(&out[9..]);
        for cut in 0..body.len() {
            assert!(
                Request::decode(op::PUBLISH_BATCH, body.slice(..cut)).is_err(),
                "cut at {cut} decoded"
            );
        }
        assert!(Request::decode(op::PUBLISH_BATCH, body).is_ok());
    }

    #[test]
    fn publish_each_roundtrips_and_every_truncation_is_an_error() {
        let messages = vec![
            Message::new(&b"a"[..]).with_id(1),
            Message::new(&b"bb"[..]).with_due(Due::At(5)),
        ];
        let req = Request::PublishEach {
            topic: "t".into(),
            messages: messages.clone(),
        };
        let Request::PublishEach {
            topic,
            messages: got,
        } = roundtrip_request(&req)
        else {
            panic!("wrong request kind");
        };
        assert_eq!(topic, "t");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[1].due), (Some(1), Due::At(5)));
        // The client's way (messages encoded one by one, then framed) is the same bytes.
        let mut by_parts = BytesMut::new();
        let mut encoded = BytesMut::new();
        for m in &messages {
            encode_message(m, &mut encoded);
        }
        encode_publish_each(3, "t", 2, &encoded, &mut by_parts);
        let mut whole = BytesMut::new();
        req.encode(3, &mut whole);
        assert_eq!(by_parts, whole);
        assert_eq!(publish_each_overhead("t") + encoded.len(), whole.len() - 4);
        let body = Bytes::copy_from_slice(&whole[9..]);
        for cut in 0..body.len() {
            assert!(
                Request::decode(op::PUBLISH_EACH, body.slice(..cut)).is_err(),
                "cut at {cut} decoded"
            );
        }
        // No messages, and more than the limit, are refused.
        for n in [0, EACH_MESSAGES_MAX as u32 + 1] {
            let mut b = BytesMut::new();
            put_str(&mut b, "t");
            b.put_u32_le(n);
            b.put_slice(&vec![0u8; 7 * (n as usize)]);
            assert!(matches!(
                Request::decode(op::PUBLISH_EACH, b.freeze()),
                Err(ProtoError::Bad(_))
            ));
        }
    }

    #[test]
    fn publish_each_answers_roundtrip_and_every_truncation_is_an_error() {
        let e = WireError::from_error(&Error::Invalid("no".into()));
        let resp = Response::Each(vec![
            Ok(Confirm {
                offset: 4,
                duplicate: false,
            }),
            Err(e.clone()),
            Ok(Confirm {
                offset: 2,
                duplicate: true,
            }),
        ]);
        let mut out = BytesMut::new();
        resp.encode(op::PUBLISH_EACH, 9, &mut out);
        let f = split_frame(&mut out, FRAME_BYTES_MAX)
            .expect("frame")
            .expect("whole");
        assert_eq!(f.opcode, op::PUBLISH_EACH | RESPONSE_BIT);
        let Ok(Response::Each(rs)) = Response::decode(op::PUBLISH_EACH, f.opcode, f.body.clone())
        else {
            panic!("not an each answer");
        };
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[1].as_ref().err(), Some(&e));
        assert!(rs[2].as_ref().is_ok_and(|c| c.duplicate && c.offset == 2));
        for cut in 0..f.body.len() {
            assert!(
                Response::decode(op::PUBLISH_EACH, f.opcode, f.body.slice(..cut)).is_err(),
                "cut at {cut} decoded"
            );
        }
        // An unknown result tag.
        let mut bad = BytesMut::new();
        bad.put_u32_le(1);
        bad.put_u8(2);
        bad.put_slice(&[0u8; 16]);
        assert!(Response::decode(op::PUBLISH_EACH, f.opcode, bad.freeze()).is_err());
    }

    #[test]
    fn huge_length_prefix_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            split_frame(&mut buf, FRAME_BYTES_MAX),
            Err(ProtoError::TooLarge { .. })
        ));
        let mut small = BytesMut::from(&2u32.to_le_bytes()[..]);
        assert!(split_frame(&mut small, FRAME_BYTES_MAX).is_err());
    }

    #[test]
    fn forged_counts_are_refused() {
        let mut body = BytesMut::new();
        put_str(&mut body, "t");
        body.put_u32_le(9_999);
        assert_eq!(
            Request::decode(op::PUBLISH_BATCH, body.freeze()).err(),
            Some(ProtoError::Truncated("batch size"))
        );
    }

    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        let e = Error::Full {
            topic: "t".into(),
            what: "bytes",
            limit: 10,
        };
        let mut out = BytesMut::new();
        Response::Error(WireError::from_error(&e)).encode(op::PUBLISH, 3, &mut out);
        let f = split_frame(&mut out, FRAME_BYTES_MAX)
            .expect("frame")
            .expect("whole");
        let Response::Error(w) = Response::decode(op::PUBLISH, f.opcode, f.body).expect("decodes")
        else {
            panic!("not an error");
        };
        assert!(matches!(
            w.into_error(),
            Error::Full {
                what: "bytes",
                limit: 10,
                ..
            }
        ));
    }
}
