//! The Redis key layout of one sale, in one place: the stock store, the gateway's token
//! ledger and the load-test auditor all name their keys through [`SaleKeys`].
//!
//! Every key of sale `S` under prefix `P` starts with `P{S}`: the `{S}` hash tag puts all
//! of a sale's keys in one Redis Cluster slot, so each Lua script touches one slot.
//!
//! | key | type | owner | content |
//! | --- | --- | --- | --- |
//! | `P{S}:units` | string | stock store | units on sale |
//! | `P{S}:left` | string | stock store | units not held |
//! | `P{S}:holder_tags` | hash | stock store | user → tag of their reservation (`""`: untagged) |
//! | `P{S}:token_holders` | sorted set | token ledger | holder → expiry of their live token |
//! | `P{S}:token_nonces` | hash | token ledger | holder → `nonce:address` of their live token |
//! | `P{S}:token_addresses` | hash | token ledger | client address → its live tokens |

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

    /// The stock store's keys, in the order its scripts take them: units, left, holders.
    pub fn stock(&self) -> [String; 3] {
        [self.units(), self.left(), self.holder_tags()]
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
    }
}
