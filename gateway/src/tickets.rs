//! Tickets: what a buyer holds after a `202`. How a ticket ended (ordered or rejected) is in
//! the orders database, written by the worker that decided it; this book only remembers the
//! tickets still waiting in the queue, with their offset (their place in line).
//!
//! A ticket is forgotten once the workers' group has finished its offset (acked after the
//! commit, so its outcome is in the database). While the book is full of waiting tickets the
//! gateway refuses new purchases (503 `busy`) rather than forget one.
//!
//! An orders topic may have several partitions (the Redis Streams backend, queue/REDIS.md
//! "Offsets"): its offsets are `(partition << 48) | seq`, ordered only within a partition,
//! and the workers finish each partition at its own pace. What is done is therefore kept
//! per partition ([`Done`]), and the book forgets each partition's tickets against that
//! partition's mark; a single-partition topic (the engine, the broker) is partition 0.
//!
//! The book is this gateway's own. So that every gateway can answer for a waiting ticket
//! (also after the gateway that accepted it died), a `202` carries a **receipt**: the
//! purchase's sale and offset, signed with a key every gateway derives from the shared
//! session secret ([`ReceiptKey`]). A gateway that does not know a ticket and finds no
//! outcome for it answers from a receipt that verifies: queued, with its place in line
//! from the workers' progress it reads from the queue like any other. A forged or
//! tampered receipt is ignored (the ticket is then unknown, as before).
//!
//! ```text
//! receipt = base64url_nopad( sale (u64 BE) | offset (u64 BE) | tag[16] )
//! tag     = HMAC-SHA256(key, "seckill-receipt-v1\0" | ticket | sale | offset)[..16]
//! key     = HMAC-SHA256(session secret, "seckill-receipt-key-v1")
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Waiting tickets remembered at most (beyond the purchases in flight).
pub const TICKETS_MAX: usize = 1_000_000;

/// Length of a receipt's tag, in bytes (128 bits: a forgery succeeds with probability
/// 2^-128 per try).
pub const RECEIPT_TAG_BYTES: usize = 16;
/// Length of a receipt's text (base64url of 8 + 8 + [`RECEIPT_TAG_BYTES`] bytes); any other
/// length is refused unread.
pub const RECEIPT_CHARS: usize = 43;

/// Bits of an offset below its partition number: offsets of a topic with several
/// partitions are `(partition << PARTITION_SHIFT) | seq`.
pub const PARTITION_SHIFT: u32 = 48;

/// Partitions whose marks [`Done`] keeps at most (the most a topic may have); a mark
/// reported beyond them is ignored, and the partition counts as not done past the lowest
/// mark.
pub const PARTITIONS_MAX: usize = queue::streams::PARTITIONS_MAX as usize;

/// The partition of a topic offset (0 for every offset of a single-partition topic).
pub fn partition_of(offset: u64) -> u64 {
    offset >> PARTITION_SHIFT
}

/// What the order workers have finished on the orders topic: per partition, the offset
/// below which that partition is done. Built from the workers' group
/// ([`Done::of_group`]), or from the log's start before the group exists ([`Done::below`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// Below this offset everything is done: the one figure of a single-partition topic;
    /// with several partitions the smallest mark, which says nothing of the partitions
    /// above its own.
    low: u64,
    /// Per partition, in partition order, the offset below which it is done (each within
    /// its partition's offsets); empty for a single-partition topic. At most
    /// [`PARTITIONS_MAX`].
    partitions: Vec<u64>,
}

impl Done {
    /// Everything below `low` is done, one offset space (a single-partition topic).
    pub fn below(low: u64) -> Done {
        Done {
            low,
            partitions: Vec::new(),
        }
    }

    /// What the group `g` has finished, per partition when its topic has several.
    pub fn of_group(g: &queue::GroupStats) -> Done {
        Done::of_partitions(g.low_watermark, &g.partition_low_watermarks)
    }

    /// What the group `group` has finished on the topic of `stats`; before that group
    /// exists, what precedes the log's start (nothing of the partitions above the first).
    pub fn of_topic(stats: &queue::TopicStats, group: &str) -> Done {
        stats
            .groups
            .iter()
            .find(|g| g.name == group)
            .map_or(Done::below(stats.log_start), Done::of_group)
    }

    /// Everything below `low` is done, and in partition `p` everything below
    /// `partitions[p]`.
    pub fn of_partitions(low: u64, partitions: &[u64]) -> Done {
        Done {
            low,
            partitions: partitions.iter().copied().take(PARTITIONS_MAX).collect(),
        }
    }

    /// The offset below which partition `p` is done, kept within that partition's offsets:
    /// the partition's own mark, else the lowest mark (which, from another partition's
    /// offsets, means nothing of `p` is known to be done).
    pub fn mark_of(&self, p: u64) -> u64 {
        let raw = usize::try_from(p)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .copied()
            .unwrap_or(self.low);
        let start = p << PARTITION_SHIFT;
        let end = start.saturating_add(1 << PARTITION_SHIFT);
        raw.clamp(start, end)
    }

    /// The offset below which the partition of `offset` is done.
    pub fn mark_for(&self, offset: u64) -> u64 {
        self.mark_of(partition_of(offset))
    }

    /// Place in line of `offset`: the messages of its partition not finished, up to and
    /// including it (1 for the next one the workers finish).
    pub fn position(&self, offset: u64) -> u64 {
        offset.saturating_sub(self.mark_for(offset)) + 1
    }

    /// Takes in a newer reading: every mark only moves forward (a stale reading, or one
    /// taken while the workers' group was being created, never takes back what was done).
    pub fn advance(&mut self, newer: &Done) {
        let n = self
            .partitions
            .len()
            .max(newer.partitions.len())
            .min(PARTITIONS_MAX);
        if n > 0 {
            // Index the marks before `low` changes: a partition without a mark of its own
            // stands at the lowest mark.
            let marks: Vec<u64> = (0..n)
                .map(|p| {
                    let p = p as u64;
                    self.mark_of(p).max(newer.mark_of(p))
                })
                .collect();
            self.partitions = marks;
        }
        self.low = self.low.max(newer.low);
    }
}

/// How a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TicketState {
    /// In the queue, not yet decided by a worker.
    Queued,
    /// An order was created.
    Ordered {
        /// The order's id.
        order_id: String,
    },
    /// The purchase was refused after it was queued.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// One accepted purchase waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// The purchase message's offset in the queue (its place in line).
    pub offset: u64,
}

/// The waiting tickets of this gateway.
#[derive(Debug)]
pub struct TicketBook {
    inner: Mutex<Book>,
    limit: usize,
}

impl Default for TicketBook {
    fn default() -> Self {
        TicketBook::with_limit(TICKETS_MAX)
    }
}

#[derive(Debug, Default)]
struct Book {
    tickets: HashMap<String, Ticket>,
    /// Per partition, ticket ids in insertion order (close to offset order within the
    /// partition): the ones to forget first. A partition's queue leaves the map when it
    /// empties, so there are never more queues than tickets.
    order: BTreeMap<u64, VecDeque<(u64, String)>>,
    /// What the workers have finished.
    done: Done,
}

impl Book {
    fn forget_done(&mut self) {
        let Book {
            tickets,
            order,
            done,
        } = self;
        order.retain(|&p, queue| {
            let mark = done.mark_of(p);
            while let Some((offset, _)) = queue.front() {
                if *offset >= mark {
                    break;
                }
                if let Some((_, id)) = queue.pop_front() {
                    tickets.remove(&id);
                }
            }
            !queue.is_empty()
        });
    }
}

impl TicketBook {
    /// A book holding at most `limit` waiting tickets (at most [`TICKETS_MAX`]) beyond the
    /// purchases in flight.
    pub fn with_limit(limit: usize) -> Self {
        TicketBook {
            inner: Mutex::new(Book::default()),
            limit: limit.min(TICKETS_MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether a new ticket fits (the gateway checks before reserving a unit).
    pub fn has_room(&self) -> bool {
        let mut b = self.lock();
        b.forget_done();
        b.tickets.len() < self.limit
    }

    /// Records an accepted purchase. A purchase that passed [`TicketBook::has_room`] is
    /// always recorded, so the book may exceed its limit by the purchases that were in
    /// flight together.
    pub fn insert(&self, id: String, ticket: Ticket) {
        let mut b = self.lock();
        b.order
            .entry(partition_of(ticket.offset))
            .or_default()
            .push_back((ticket.offset, id.clone()));
        b.tickets.insert(id, ticket);
    }

    /// A waiting ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.lock().tickets.get(id).cloned()
    }

    /// The workers have finished what `done` says, partition by partition: forget those
    /// tickets (their outcomes are in the database).
    pub fn finished_below(&self, done: &Done) {
        let mut b = self.lock();
        b.done.advance(done);
        b.forget_done();
    }

    /// Tickets held.
    pub fn len(&self) -> usize {
        self.lock().tickets.len()
    }

    /// Whether no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: u64) -> Ticket {
        Ticket {
            sale: 1,
            user: format!("u{n}"),
            offset: n,
        }
    }

    /// Offset `seq` of partition `p`.
    fn at(p: u64, seq: u64) -> u64 {
        (p << PARTITION_SHIFT) | seq
    }

    /// The workers' group as a three-partition topic reports it: per partition its mark, the
    /// smallest as the group's low watermark.
    fn group_of(marks: [u64; 3]) -> queue::GroupStats {
        let marks: Vec<u64> = marks
            .iter()
            .enumerate()
            .map(|(p, &m)| at(p as u64, m))
            .collect();
        queue::GroupStats {
            name: "workers".into(),
            low_watermark: marks.iter().copied().min().unwrap_or(0),
            partition_low_watermarks: marks,
            ..queue::GroupStats::default()
        }
    }

    #[test]
    fn a_full_book_forgets_only_tickets_the_workers_finished() {
        let book = TicketBook::with_limit(3);
        for n in 0..3 {
            book.insert(format!("t{n}"), waiting(n));
        }
        assert!(!book.has_room(), "full of waiting tickets");
        book.finished_below(&Done::below(0));
        assert!(!book.has_room());
        book.finished_below(&Done::below(2));
        assert!(book.get("t0").is_none() && book.get("t1").is_none());
        assert!(book.get("t2").is_some(), "offset 2 is not finished");
        assert!(book.has_room());
        book.finished_below(&Done::below(1));
        assert_eq!(book.len(), 1, "the watermark never goes back");
        for n in 3..6 {
            book.insert(format!("t{n}"), waiting(n));
        }
        // Past the check, a purchase in flight is still recorded (never lost).
        assert_eq!(book.len(), 4);
        assert!(!book.has_room());
    }

    /// With one offset space (the group's low watermark alone) the tickets of partitions 1
    /// and 2 were never below it: the book filled up for good and the gateway answered
    /// `busy` forever.
    #[test]
    fn a_book_forgets_each_partitions_tickets_once_that_partition_is_done() {
        let book = TicketBook::with_limit(9);
        // Interleaved as a flood publishes them: seqs 0..3 of every partition.
        for seq in 0..3 {
            for p in 0..3 {
                book.insert(format!("p{p}s{seq}"), waiting(at(p, seq)));
            }
        }
        assert!(!book.has_room());
        // Partition 2 is done up to seq 2, partition 1 up to 1, partition 0 not at all.
        book.finished_below(&Done::of_group(&group_of([0, 1, 2])));
        let held = |p: u64| {
            (0..3)
                .filter(|s| book.get(&format!("p{p}s{s}")).is_some())
                .count()
        };
        assert_eq!(
            (held(0), held(1), held(2)),
            (3, 2, 1),
            "each by its own mark"
        );
        assert!(book.has_room());
        // Partitions 1 and 2 finish while partition 0 still holds the low watermark at 0.
        book.finished_below(&Done::of_group(&group_of([0, 3, 3])));
        assert_eq!((held(0), held(1), held(2)), (3, 0, 0));
        // An older reading takes nothing back; then partition 0 finishes too.
        book.finished_below(&Done::of_group(&group_of([0, 0, 0])));
        assert_eq!(book.len(), 3);
        book.finished_below(&Done::of_group(&group_of([3, 3, 3])));
        assert!(book.is_empty(), "every partition's tickets forgotten");
        // New tickets of a done partition's next seqs wait again.
        book.insert("p2s3".into(), waiting(at(2, 3)));
        assert!(book.get("p2s3").is_some() && book.has_room());
        assert_eq!(book.len(), 1);
    }

    /// A ticket recorded after the workers had already finished it (the confirm raced the
    /// ack) leaves at the next room check, in any partition.
    #[test]
    fn a_ticket_finished_before_it_was_recorded_leaves_at_the_next_check() {
        let book = TicketBook::with_limit(1);
        book.finished_below(&Done::of_group(&group_of([0, 0, 5])));
        book.insert("late".into(), waiting(at(2, 4)));
        assert!(book.has_room());
        assert!(book.is_empty());
    }

    #[test]
    fn positions_count_within_the_offsets_own_partition() {
        let done = Done::of_group(&group_of([10, 20, 30]));
        assert_eq!(
            done.position(at(2, 30)),
            1,
            "the next one partition 2 finishes"
        );
        assert_eq!(done.position(at(2, 34)), 5);
        assert_eq!(done.position(at(1, 25)), 6);
        assert_eq!(done.position(at(0, 10)), 1);
        assert_eq!(
            done.position(at(2, 3)),
            1,
            "already finished: next in line at most"
        );
        // Before the workers' group exists: nothing of partition 2 is known done, so its
        // place is its seq + 1, never a distance across partitions.
        let before = Done::of_topic(
            &queue::TopicStats {
                log_start: at(0, 4),
                ..queue::TopicStats::default()
            },
            "workers",
        );
        assert_eq!(before.position(at(2, 7)), 8);
        assert_eq!(before.position(at(0, 7)), 4);
        // A single offset space is as before.
        let single = Done::below(100);
        assert_eq!(single.position(130), 31);
        assert_eq!(single.position(99), 1);
    }

    #[test]
    fn marks_only_move_forward_and_stay_bounded() {
        let mut done = Done::below(0);
        done.advance(&Done::of_group(&group_of([5, 6, 7])));
        done.advance(&Done::of_group(&group_of([4, 9, 7])));
        assert_eq!(
            (0..3).map(|p| done.mark_of(p)).collect::<Vec<_>>(),
            vec![at(0, 5), at(1, 9), at(2, 7)]
        );
        // A reading without partitions (the group not found) keeps the partitions' marks.
        done.advance(&Done::below(at(0, 2)));
        assert_eq!(done.mark_of(2), at(2, 7));
        // At most PARTITIONS_MAX marks are kept.
        let many: Vec<u64> = (0..PARTITIONS_MAX as u64 + 10).map(|p| at(p, 1)).collect();
        done.advance(&Done::of_partitions(0, &many));
        assert_eq!(done.partitions.len(), PARTITIONS_MAX);
        assert_eq!(
            done.mark_of(PARTITIONS_MAX as u64 + 5),
            at(PARTITIONS_MAX as u64 + 5, 0)
        );
    }
}

/// Domain of a receipt's tag: never valid as another kind of tag made with the same key.
const RECEIPT_DOMAIN: &[u8] = b"seckill-receipt-v1\0";

/// Signs and checks the receipts of `202`s. Every gateway sharing the session secret
/// derives the same key, so any of them can read another's receipts. `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct ReceiptKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(<redacted>)")
    }
}

/// What a verified receipt says of its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Sale.
    pub sale: u64,
    /// The purchase message's offset in the orders topic.
    pub offset: u64,
}

impl ReceiptKey {
    /// The receipt key derived from the session secret (a key of its own, so a receipt tag
    /// can never be a session tag).
    pub fn derive(session_secret: &[u8; 32]) -> ReceiptKey {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(session_secret);
        let mut outer = <Hmac<Sha256> as KeyInit>::new(&block.into());
        outer.update(b"seckill-receipt-key-v1");
        let derived: [u8; 32] = outer.finalize().into_bytes().into();
        block[..32].copy_from_slice(&derived);
        ReceiptKey {
            mac: <Hmac<Sha256> as KeyInit>::new(&block.into()),
        }
    }

    fn tag(&self, ticket: &str, sale: u64, offset: u64) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(RECEIPT_DOMAIN);
        mac.update(ticket.as_bytes());
        mac.update(&sale.to_be_bytes());
        mac.update(&offset.to_be_bytes());
        mac
    }

    /// The receipt of `ticket`, a purchase of `sale` stored at `offset`.
    pub fn sign(&self, ticket: &str, sale: u64, offset: u64) -> String {
        let tag = self.tag(ticket, sale, offset).finalize().into_bytes();
        let mut raw = [0u8; 16 + RECEIPT_TAG_BYTES];
        raw[..8].copy_from_slice(&sale.to_be_bytes());
        raw[8..16].copy_from_slice(&offset.to_be_bytes());
        raw[16..].copy_from_slice(&tag[..RECEIPT_TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// What `receipt` says of `ticket`, if this key signed it for that ticket (compared in
    /// constant time); `None` for anything else, never a panic.
    pub fn verify(&self, ticket: &str, receipt: &str) -> Option<Receipt> {
        if receipt.len() != RECEIPT_CHARS {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(receipt).ok()?;
        if raw.len() != 16 + RECEIPT_TAG_BYTES {
            return None;
        }
        let sale = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let offset = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        self.tag(ticket, sale, offset)
            .verify_truncated_left(&raw[16..])
            .ok()?;
        Some(Receipt { sale, offset })
    }
}

#[cfg(test)]
mod receipt_tests {
    use super::*;

    const T: &str = "0190f0a1-0000-7000-8000-000000000001";

    #[test]
    fn a_receipt_verifies_for_its_ticket_only_and_with_the_same_secret_only() {
        let k = ReceiptKey::derive(&[7; 32]);
        let r = k.sign(T, 3, (2 << PARTITION_SHIFT) | 41);
        assert_eq!(r.len(), RECEIPT_CHARS);
        assert_eq!(
            k.verify(T, &r),
            Some(Receipt {
                sale: 3,
                offset: (2 << PARTITION_SHIFT) | 41
            })
        );
        // Another gateway with the same secret reads it; another secret does not.
        assert!(ReceiptKey::derive(&[7; 32]).verify(T, &r).is_some());
        assert_eq!(ReceiptKey::derive(&[8; 32]).verify(T, &r), None);
        // Not for another ticket.
        assert_eq!(k.verify("0190f0a1-0000-7000-8000-000000000002", &r), None);
    }

    #[test]
    fn a_changed_or_malformed_receipt_is_refused() {
        let k = ReceiptKey::derive(&[7; 32]);
        let r = k.sign(T, 3, 41);
        let mut raw = URL_SAFE_NO_PAD.decode(&r).expect("base64url");
        for i in 0..raw.len() {
            raw[i] ^= 1;
            assert_eq!(k.verify(T, &URL_SAFE_NO_PAD.encode(&raw)), None, "byte {i}");
            raw[i] ^= 1;
        }
        for bad in [
            "",
            "x",
            &r[..42],
            &format!("{r}A"),
            &"!".repeat(43),
            &"é".repeat(20),
        ] {
            assert_eq!(k.verify(T, bad), None, "{bad:?}");
        }
    }
}
