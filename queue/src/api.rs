//! The queue's public vocabulary: messages, deliveries, receipts, statistics, and the
//! [`Queue`] trait that the embedded engine implements (and a remote client will).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A message id: 128 bits, e.g. a UUID. Producer-supplied ids are de-duplicated.
pub type MessageId = u128;

/// When a message becomes deliverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Due {
    /// As soon as it is durable.
    #[default]
    Now,
    /// At this time, ms since the Unix epoch (engine clock).
    At(u64),
    /// This many ms after the publish is accepted.
    After(u64),
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Producer-supplied id; a repeat within the de-duplication window is confirmed without
    /// being stored again. `None`: no de-duplication.
    pub id: Option<MessageId>,
    /// Small headers (see [`crate::limits`]).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload.
    pub payload: Bytes,
    /// When it may be delivered.
    pub due: Due,
}

impl Message {
    /// A message with this payload and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }
    /// Sets the producer id.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }
    /// Sets the due time.
    pub fn with_due(mut self, due: Due) -> Self {
        self.due = due;
        self
    }
    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A publish confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Confirm {
    /// The message's offset in its topic.
    pub offset: u64,
    /// True when the id was already in the de-duplication window: nothing new was stored and
    /// `offset` is the first copy's.
    pub duplicate: bool,
}

/// Where a group starts reading when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At the oldest retained message.
    #[default]
    Earliest,
    /// At the next message published.
    Latest,
}

/// Options of a fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Most messages to return (capped at [`crate::limits::FETCH_MESSAGES_MAX`]).
    pub max_messages: usize,
    /// Lease length; `None` uses the engine default.
    pub lease_ms: Option<u64>,
    /// How long to wait for a message when none is ready (0: return at once).
    pub wait_ms: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_messages: 100,
            lease_ms: None,
            wait_ms: 0,
        }
    }
}

/// Proof of a delivery, handed back to ack or nack it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Receipt {
    /// Message offset.
    pub offset: u64,
    /// Which delivery attempt this receipt is for (1 = first).
    pub attempt: u32,
}

/// A message handed to a consumer under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message offset in the topic.
    pub offset: u64,
    /// Delivery attempt, 1 for the first.
    pub attempt: u32,
    /// Producer id, if one was given.
    pub id: Option<MessageId>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload.
    pub payload: Bytes,
    /// Due time, for delayed messages.
    pub due_ms: Option<u64>,
    /// The lease ends at this time; after it the message may go to another consumer.
    pub lease_until_ms: u64,
}

impl Delivery {
    /// The receipt to ack or nack this delivery with.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            offset: self.offset,
            attempt: self.attempt,
        }
    }
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    /// The message is now done for the group.
    Acked,
    /// It was already done (a repeated ack); nothing changed.
    AlreadyAcked,
    /// The lease was lost: the message went to another delivery attempt or to the dead
    /// letters. Nothing changed.
    LeaseLost,
    /// No such message in the topic.
    Unknown,
}

/// A message in a dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Offset in the dead-letter topic (the handle for replay and discard).
    pub dead_offset: u64,
    /// Group that gave up on it.
    pub group: String,
    /// Offset in the original topic.
    pub original_offset: u64,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// Why: the consumer's reason or "lease expired".
    pub reason: String,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_at_ms: u64,
    /// Original producer id.
    pub id: Option<MessageId>,
    /// Original headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Original payload.
    #[serde(skip)]
    pub payload: Bytes,
}

/// A stored message as [`Queue::peek`] shows it: no lease, no attempt count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// Message offset in the topic.
    pub offset: u64,
    /// Producer id, if one was given (for a dead letter: the id it was stored under).
    pub id: Option<MessageId>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload as stored (for a dead letter: its envelope followed by the original payload,
    /// see `FORMAT.md`).
    pub payload: Bytes,
    /// Due time, for delayed messages (shown whether or not it has passed).
    pub due_ms: Option<u64>,
}

/// Statistics of one consumer group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Messages published (durable) that the group has not finished (acked or
    /// dead-lettered), including leased and delayed ones.
    pub lag: u64,
    /// Messages ready to deliver now (lag minus leased, delayed and waiting retries).
    pub depth: u64,
    /// Messages leased right now.
    pub in_flight: u64,
    /// Nacked or expired messages waiting for their retry time.
    pub retry_waiting: u64,
    /// Deliveries with attempt > 1 (since open).
    pub redeliveries: u64,
    /// Messages this group acked (since open).
    pub acked: u64,
    /// Messages this group dead-lettered (since open).
    pub dead_lettered: u64,
    /// Offset below which everything is done. For a topic with several partitions
    /// (offsets `(partition << 48) | seq`, the Redis Streams backend) the smallest over
    /// them; see [`GroupStats::partition_low_watermarks`].
    pub low_watermark: u64,
    /// Per partition, in partition order, the offset below which that partition is done,
    /// when the topic has more than one partition; empty otherwise (then
    /// `low_watermark` is the one figure). A caller comparing an offset with what is done
    /// takes the entry of the offset's partition, `offset >> 48`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_low_watermarks: Vec<u64>,
}

impl GroupStats {
    /// The offset below which the partition of `offset` is done.
    pub fn low_watermark_for(&self, offset: u64) -> u64 {
        let p = (offset >> 48) as usize;
        self.partition_low_watermarks
            .get(p)
            .copied()
            .unwrap_or(self.low_watermark)
    }
}

/// Statistics of one topic.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicStats {
    /// Topic name.
    pub name: String,
    /// Oldest retained offset.
    pub log_start: u64,
    /// Next offset to be assigned.
    pub next_offset: u64,
    /// Offsets below this are durable and deliverable.
    pub durable_end: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes in segment files.
    pub retained_bytes: u64,
    /// Delayed messages not yet due.
    pub delayed_pending: u64,
    /// Messages published (since open).
    pub published: u64,
    /// Publishes confirmed as duplicates (since open).
    pub duplicates: u64,
    /// Dead letters waiting for replay or discard (for the topic's dead-letter topic).
    pub dead_letters_pending: u64,
    /// Per-group figures.
    pub groups: Vec<GroupStats>,
}

/// The queue operations, implemented by the embedded [`crate::Engine`] and, later, by a
/// network client and other backends. Callers switch implementations by configuration.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Publishes one message; returns once it is durable (per the durability policy).
    async fn publish(&self, topic: &str, message: Message) -> Result<Confirm>;
    /// Publishes many messages as one record; all-or-nothing; one confirm each, in order.
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Confirm>>;
    /// Publishes independent messages together, each confirmed or refused on its own (one
    /// result per message, in order); the outer error applies to every message. The engine
    /// appends them as one record with one fsync, the client pipelines them on one
    /// connection. The default publishes them one after another.
    async fn publish_each(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Confirm>>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.publish(topic, m).await);
        }
        Ok(out)
    }
    /// Creates a consumer group if it does not exist (fetch creates one at `Earliest`).
    async fn create_group(&self, topic: &str, group: &str, start: StartAt) -> Result<()>;
    /// Leases up to `max_messages` ready messages, waiting up to `wait_ms` if none is ready.
    async fn fetch(&self, topic: &str, group: &str, options: FetchOptions)
    -> Result<Vec<Delivery>>;
    /// Acknowledges deliveries; returns once the acks are durable. One outcome per receipt.
    async fn ack(&self, topic: &str, group: &str, receipts: &[Receipt]) -> Result<Vec<AckOutcome>>;
    /// Gives a delivery back: it is delivered again after `delay_ms`, or dead-lettered with
    /// `reason` if it has used its attempts.
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        delay_ms: u64,
        reason: &str,
    ) -> Result<AckOutcome>;
    /// Sends a delivery straight to the dead letters (a poison message).
    async fn reject(
        &self,
        topic: &str,
        group: &str,
        receipt: Receipt,
        reason: &str,
    ) -> Result<AckOutcome>;
    /// Lists pending dead letters of `topic`, from `from_dead_offset` on.
    async fn dead_letters(
        &self,
        topic: &str,
        from_dead_offset: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;
    /// Publishes a dead letter again into its topic, for the group that gave up on it, with
    /// its attempts reset; returns the new offset.
    async fn replay_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<u64>;
    /// Drops a dead letter.
    async fn discard_dead_letter(&self, topic: &str, dead_offset: u64) -> Result<()>;
    /// Statistics of one topic and its groups.
    async fn stats(&self, topic: &str) -> Result<TopicStats>;
    /// Shows up to `limit` (at most [`crate::limits::PEEK_MESSAGES_MAX`]) retained, durable
    /// messages of `topic` from `from_offset` on (or from the oldest retained one), in
    /// offset order, whatever groups have done with them. Read-only: leases nothing and
    /// changes no group. Works on dead-letter topics too, showing the stored dead letters
    /// (resolved ones included while retained).
    async fn peek(&self, topic: &str, from_offset: u64, limit: usize) -> Result<Vec<Peeked>>;
    /// Names of all topics (dead-letter topics included).
    async fn topics(&self) -> Result<Vec<String>>;
}
