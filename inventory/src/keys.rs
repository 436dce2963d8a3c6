//! The Redis key layout of one sale, in one place: the stock store, the gateway's token
//! ledger and the load-test auditor all name their keys through [`SaleKeys`].
//!
//! Every key of sale `S` under prefix `P` starts with `P{S}` (or `P{S.b}` for stock bucket
//! `b` ≥ 1): the hash tag puts all the keys one Lua script touches in one Redis Cluster slot,
//! while the buckets of a hot sale, each under its own tag, spread over the cluster's masters.
//!
//! | key | type | owner | content |
//! | --- | --- | --- | --- |
//! | `P{S}:units` | string | stock store | units on sale (all buckets) |
//! | `P{S}:buckets` | string | stock store | the sale's stock buckets K, 2..=64 (absent: 1) |
//! | `P{S}:left` | string | stock store | units not held, bucket 0 |
//! | `P{S}:holder_tags` | hash | stock store | bucket 0's home users' reservations → tag (`""`: untagged) |
//! | `P{S.b}:left` | string | stock store | units not held, bucket b (1 ≤ b < K) |
//! | `P{S.b}:holder_tags` | hash | stock store | bucket b's home users' reservations → `tag\|g`, g the bucket that gave the unit |
//! | `P{S}:token_holders` | sorted set | token ledger | holder → expiry of their live token |
//! | `P{S}:token_nonces` | hash | token ledger | holder → `nonce:address` of their live token |
//! | `P{S}:token_addresses` | hash | token ledger | client address → its live tokens |
//!
//! With K = 1 (the default) a sale has exactly the three stock keys `units`, `left`,
//! `holder_tags` with plain tags, as before stock buckets existed. With K > 1 each user has a
//! home bucket ([`crate::home_bucket`]: FNV-1a of the user id, mod K); their holder record
//! lives only there, and its value is `tag|g` (the last `|` separates the tag from the index
//! of the bucket whose unit they hold), also when g is the home bucket.
//!
//! A person may hold up to the sale's per-person limit N of units (at most
//! [`crate::PER_USER_LIMIT_MAX`]), one holder record per reservation, all in their home
//! bucket: the field of reservation slot 0 is the user id itself (so a sale with N = 1 has
//! exactly the layout from before limits), that of slot i ≥ 1 is `user\x1Fi`
//! ([`holder_field`]; user ids never contain control characters). `HLEN` of the holder
//! hashes counts reservations.

/// Separates a user id from a slot number in a holder-record field (a control character,
/// which user ids never contain).
pub const SLOT_SEPARATOR: char = '\u{1f}';

/// The holder-hash field of `user`'s reservation slot `slot`: the user id itself for slot
/// 0 (the layout from before per-person limits), `user\x1Fslot` for slot ≥ 1.
pub fn holder_field(user: &str, slot: u32) -> String {
    if slot == 0 {
        user.to_string()
    } else {
        format!("{user}{SLOT_SEPARATOR}{slot}")
    }
}

/// The user and slot of a holder-hash field ([`holder_field`] read back); a field with a
/// separator but no number after it is taken as a whole user id in slot 0.
pub fn parse_holder_field(field: &str) -> (&str, u32) {
    if let Some((user, slot)) = field.rsplit_once(SLOT_SEPARATOR)
        && let Ok(slot) = slot.parse::<u32>()
    {
        return (user, slot);
    }
    (field, 0)
}

/// The keys of one sale under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleKeys {
    base: String,
}

impl SaleKeys {
    /// The keys of `sale` under `prefix` (the prefix is validated by the store that owns it).
    pub fn new(prefix: &str, sale: u64) -> SaleKeys {
        SaleKeys {
            base: format!("{prefix}{{{sale}}}"),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.base)
    }

    /// Units on sale.
    pub fn units(&self) -> String {
        self.key("units")
    }

    /// Units not held.
    pub fn left(&self) -> String {
        self.key("left")
    }

    /// Holders and the tags of their reservations.
    pub fn holder_tags(&self) -> String {
        self.key("holder_tags")
    }

    /// Live token holders and their expiry.
    pub fn token_holders(&self) -> String {
        self.key("token_holders")
    }

    /// Live token holders' nonces.
    pub fn token_nonces(&self) -> String {
        self.key("token_nonces")
    }

    /// Live tokens per client address.
    pub fn token_addresses(&self) -> String {
        self.key("token_addresses")
    }

    /// The sale's stock bucket count K (absent: 1).
    pub fn buckets(&self) -> String {
        self.key("buckets")
    }

    /// The stock store's keys of bucket 0, in the order its scripts take them: units, left,
    /// holders.
    pub fn stock(&self) -> [String; 3] {
        [self.units(), self.left(), self.holder_tags()]
    }

    /// The keys of the sale's base slot as the store's bucket-0 scripts take them: units,
    /// buckets, left, holders.
    pub fn base(&self) -> [String; 4] {
        [
            self.units(),
            self.buckets(),
            self.left(),
            self.holder_tags(),
        ]
    }

    /// Stock bucket `b`'s keys: its units left and its home users' holder records (bucket 0:
    /// `P{S}:left`, `P{S}:holder_tags`; bucket b ≥ 1: `P{S.b}:left`, `P{S.b}:holder_tags`).
    pub fn bucket(&self, b: u32) -> [String; 2] {
        if b == 0 {
            return [self.left(), self.holder_tags()];
        }
        let base = self.base.strip_suffix('}').unwrap_or(&self.base);
        [
            format!("{base}.{b}}}:left"),
            format!("{base}.{b}}}:holder_tags"),
        ]
    }

    /// The token ledger's keys, in the order its scripts take them: holders, nonces,
    /// addresses.
    pub fn ledger(&self) -> [String; 3] {
        [
            self.token_holders(),
            self.token_nonces(),
            self.token_addresses(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::SaleKeys;

    #[test]
    fn every_key_of_a_sale_shares_its_hash_tag() {
        let k = SaleKeys::new("seckill:", 42);
        assert_eq!(
            k.stock(),
            [
                "seckill:{42}:units".to_string(),
                "seckill:{42}:left".to_string(),
                "seckill:{42}:holder_tags".to_string()
            ]
        );
        assert_eq!(
            k.ledger(),
            [
                "seckill:{42}:token_holders".to_string(),
                "seckill:{42}:token_nonces".to_string(),
                "seckill:{42}:token_addresses".to_string()
            ]
        );
        assert_eq!(
            k.bucket(0),
            [
                "seckill:{42}:left".to_string(),
                "seckill:{42}:holder_tags".to_string()
            ]
        );
        assert_eq!(
            k.bucket(3),
            [
                "seckill:{42.3}:left".to_string(),
                "seckill:{42.3}:holder_tags".to_string()
            ]
        );
        assert_eq!(k.buckets(), "seckill:{42}:buckets");
    }

    #[test]
    fn holder_fields_read_back() {
        use super::{holder_field, parse_holder_field};
        assert_eq!(holder_field("ann", 0), "ann");
        assert_eq!(holder_field("ann", 3), "ann\u{1f}3");
        for (user, slot) in [("ann", 0), ("ann", 9), ("a|b#1", 2), ("", 1)] {
            assert_eq!(parse_holder_field(&holder_field(user, slot)), (user, slot));
        }
        assert_eq!(parse_holder_field("ann\u{1f}x"), ("ann\u{1f}x", 0));
    }
}
