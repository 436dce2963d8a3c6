//! The messages the workers consume and publish: the gateway's purchase message (JSON) and
//! the pay-by message an order schedules for its deadline; and [`new_id`], the ids of
//! tickets and orders.

use serde::{Deserialize, Serialize};

/// Topic the gateway publishes purchases to.
pub const ORDERS_TOPIC: &str = "orders";
/// Consumer group of the order workers on [`ORDERS_TOPIC`].
pub const WORKERS_GROUP: &str = "order-workers";
/// Topic of the delayed pay-by messages (one per order, due at its pay-by time).
pub const DEADLINES_TOPIC: &str = "pay-deadlines";
/// Consumer group of the cancellation consumers on [`DEADLINES_TOPIC`].
pub const CANCELLERS_GROUP: &str = "cancellers";
/// Longest ticket (request id) accepted, in bytes.
pub const TICKET_BYTES_MAX: usize = 64;

/// Random bits in an id made by [`new_id`] (all but its 48-bit time, 4-bit version and
/// 2-bit variant).
pub const ID_RANDOM_BITS: u32 = 74;

/// A new ticket or order id made at `now_ms`: a UUID in the version 7 layout (its first 48
/// bits the time in ms, so ids sort roughly by time) whose other [`ID_RANDOM_BITS`] bits all
/// come from a cryptographically secure generator. A ticket is a bearer capability on an
/// unauthenticated route, and an order id is shown to its buyer: `Uuid::now_v7()` fills
/// the bits after the time with a counter, so an id made in the same millisecond as
/// one's own was one's own plus one; these cannot be guessed from a neighbour's.
/// The id is also the queue message id (its 128 bits), unique as any random id is.
pub fn new_id(now_ms: u64) -> uuid::Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(now_ms, &random).into_uuid()
}

/// A purchase the gateway accepted (`202`): the body of a message on [`ORDERS_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseMessage {
    /// The ticket: the purchase's request id (also the message id).
    pub ticket: String,
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// Price the buyer saw, in cents (the order takes the database's price).
    pub price_cents: u64,
    /// When the gateway accepted it, ms since the Unix epoch.
    pub accepted_at_ms: u64,
}

/// Why a message could not be read as a purchase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed purchase message: {0}")]
pub struct Malformed(pub String);

impl PurchaseMessage {
    /// Parses and checks a message body: JSON with every field, a ticket of
    /// 1..=[`TICKET_BYTES_MAX`] printable bytes, a valid user id, a sale id the databases
    /// can hold (≤ `i64::MAX`).
    pub fn decode(payload: &[u8]) -> Result<PurchaseMessage, Malformed> {
        let m: PurchaseMessage =
            serde_json::from_slice(payload).map_err(|e| Malformed(e.to_string()))?;
        if m.ticket.is_empty()
            || m.ticket.len() > TICKET_BYTES_MAX
            || !m.ticket.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Malformed(format!(
                "a ticket is 1..={TICKET_BYTES_MAX} printable ASCII bytes"
            )));
        }
        inventory::validate_user(&m.user).map_err(|e| Malformed(e.to_string()))?;
        if i64::try_from(m.sale).is_err() || i64::try_from(m.price_cents).is_err() {
            return Err(Malformed("sale id or price out of range".into()));
        }
        Ok(m)
    }
}

/// The body of a pay-by message: when it falls due, the order is cancelled if it is still
/// pending. Its message id is the order id (so a re-publish after a crash is de-duplicated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// The order.
    pub order_id: String,
    /// Its pay-by time, ms since the Unix epoch.
    pub pay_by_ms: u64,
}

impl Deadline {
    /// The message for this deadline: id = the order's UUID, due at `pay_by_ms`.
    pub fn message(&self) -> Result<queue::Message, Malformed> {
        let id = uuid::Uuid::parse_str(&self.order_id)
            .map_err(|e| Malformed(format!("order id: {e}")))?;
        let body = serde_json::to_vec(self).map_err(|e| Malformed(e.to_string()))?;
        Ok(queue::Message::new(body)
            .with_id(id.as_u128())
            .with_due(queue::Due::At(self.pay_by_ms)))
    }

    /// Parses a pay-by message body.
    pub fn decode(payload: &[u8]) -> Result<Deadline, Malformed> {
        let d: Deadline = serde_json::from_slice(payload).map_err(|e| Malformed(e.to_string()))?;
        if d.order_id.is_empty() || d.order_id.len() > TICKET_BYTES_MAX {
            return Err(Malformed("bad order id".into()));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_what_it_cannot_use() {
        let ok = br#"{"ticket":"t-1","sale":3,"user":"ann","price_cents":5,"accepted_at_ms":9}"#;
        assert_eq!(PurchaseMessage::decode(ok).map(|m| m.sale), Ok(3));
        for bad in [
            &b"not json"[..],
            br#"{"ticket":"t","sale":3}"#,
            br#"{"ticket":"","sale":3,"user":"ann","price_cents":5,"accepted_at_ms":9}"#,
            br#"{"ticket":"a b","sale":3,"user":"ann","price_cents":5,"accepted_at_ms":9}"#,
            br#"{"ticket":"t","sale":3,"user":"","price_cents":5,"accepted_at_ms":9}"#,
            br#"{"ticket":"t","sale":18446744073709551615,"user":"a","price_cents":5,"accepted_at_ms":9}"#,
            br#"{"ticket":"t","sale":-1,"user":"a","price_cents":5,"accepted_at_ms":9}"#,
        ] {
            assert!(PurchaseMessage::decode(bad).is_err(), "{:?}", std::str::from_utf8(bad));
        }
    }

    /// Issue 16, finding 10: ids made in the same millisecond were sequential (`now_v7`'s
    /// counter), so a ticket gave away its neighbours'.
    #[test]
    fn ids_of_one_millisecond_are_not_guessable_from_each_other() {
        const MS: u64 = 1_800_000_000_000;
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| new_id(MS)).collect();
        let random = |u: &uuid::Uuid| {
            let b = u.as_u128();
            // Drop the 48-bit time, the version (bits 76..80) and the variant (62..64).
            ((b >> 64) & 0xfff) << 62 | (b & ((1 << 62) - 1))
        };
        for pair in ids.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(a.get_version_num(), 7);
            assert_eq!(a.get_timestamp().map(|t| t.to_unix().0), Some(MS / 1000));
            assert_eq!(a.as_u128() >> 80, b.as_u128() >> 80, "same millisecond");
            // Not sequential: neighbours are far apart (2^-41 odds of a false failure).
            let (x, y) = (random(&a), random(&b));
            assert!(x.abs_diff(y) > 1 << 32, "{a} then {b}");
            // And they differ in many bits (74 random bits: about 37 on average).
            assert!((x ^ y).count_ones() >= 10, "{a} then {b}");
        }
    }

    #[test]
    fn a_deadline_message_is_due_at_the_pay_by_time_under_the_order_id() {
        let order = uuid::Uuid::now_v7();
        let d = Deadline {
            order_id: order.to_string(),
            pay_by_ms: 1234,
        };
        let m = d.message().expect("message");
        assert_eq!(m.id, Some(order.as_u128()));
        assert_eq!(m.due, queue::Due::At(1234));
        assert_eq!(Deadline::decode(&m.payload), Ok(d));
        let bad = Deadline {
            order_id: "nope".into(),
            pay_by_ms: 1,
        };
        assert!(bad.message().is_err());
    }
}
