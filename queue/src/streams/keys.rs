//! The Redis key layout of the Streams backend, written down once (queue/REDIS.md, "Keys").
//!
//! Every key of one topic partition shares the hash tag `{topic:partition}`, so every
//! script touches one slot and Redis Cluster never answers CROSSSLOT.

/// Offsets of a topic with several partitions: `(partition << 48) | seq`.
pub(crate) const PARTITION_SHIFT: u32 = 48;
/// The sequence-number part of an offset.
pub(crate) const SEQ_MASK: u64 = (1 << PARTITION_SHIFT) - 1;

/// The topic-wide offset of partition `p`'s sequence number `seq`.
pub(crate) fn offset(p: u32, seq: u64) -> u64 {
    (u64::from(p) << PARTITION_SHIFT) | (seq & SEQ_MASK)
}

/// Partition and sequence number of a topic-wide offset.
pub(crate) fn split(offset: u64) -> (u32, u64) {
    ((offset >> PARTITION_SHIFT) as u32, offset & SEQ_MASK)
}

/// The registry of topics: a hash topic name → partitions (its own slot).
pub(crate) fn registry(prefix: &str) -> String {
    format!("{prefix}topics")
}

/// The keys of one partition of one topic.
#[derive(Debug, Clone)]
pub(crate) struct PartKeys {
    base: String,
}

impl PartKeys {
    pub(crate) fn new(prefix: &str, topic: &str, partition: u32) -> PartKeys {
        PartKeys {
            base: format!("{prefix}{{{topic}:{partition}}}"),
        }
    }
    fn k(&self, what: &str) -> String {
        format!("{}:{what}", self.base)
    }
    /// The stream of messages, ids `<seq>-1`.
    pub(crate) fn stream(&self) -> String {
        self.k("s")
    }
    /// The next sequence number (INCR).
    pub(crate) fn next(&self) -> String {
        self.k("next")
    }
    /// Delayed messages not yet due (seq → due ms), for the topic's statistics.
    pub(crate) fn delays(&self) -> String {
        self.k("delays")
    }
    /// Counters of the partition: published, duplicates.
    pub(crate) fn counters(&self) -> String {
        self.k("st")
    }
    /// The consumer groups (a set).
    pub(crate) fn groups(&self) -> String {
        self.k("groups")
    }
    /// Appended to by nacks so that consumers blocked in XREAD wake up.
    pub(crate) fn wake(&self) -> String {
        self.k("w")
    }
    /// The dead letters (a stream, ids `<dead seq>-1`).
    pub(crate) fn dead(&self) -> String {
        self.k("dl")
    }
    /// The next dead-letter sequence number.
    pub(crate) fn dead_next(&self) -> String {
        self.k("dln")
    }
    /// Dead letters replayed or discarded (a set of dead seqs).
    pub(crate) fn dead_done(&self) -> String {
        self.k("dld")
    }
    /// The de-duplication entry of producer id `id`.
    pub(crate) fn dedup(&self, id: u128) -> String {
        format!("{}:d:{id:032x}", self.base)
    }
    /// The keys of group `group` on this partition.
    pub(crate) fn group(&self, group: &str) -> GroupKeys {
        let g = |what: &str| format!("{}:g:{group}:{what}", self.base);
        GroupKeys {
            lease: g("lease"),
            hold: g("hold"),
            wait: g("wait"),
            att: g("att"),
            counters: g("n"),
            cursor: g("cur"),
        }
    }
}

/// The keys of one consumer group on one partition.
#[derive(Debug, Clone)]
pub(crate) struct GroupKeys {
    /// seq → lease deadline of entries out with a consumer.
    pub(crate) lease: String,
    /// seq → retry time of nacked and expired entries.
    pub(crate) hold: String,
    /// seq → due time of delayed entries the group has read early.
    pub(crate) wait: String,
    /// seq → deliveries made.
    pub(crate) att: String,
    /// acked, redeliveries, dead_lettered, lost.
    pub(crate) counters: String,
    /// The group's read position: every seq below it has been read.
    pub(crate) cursor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_partition_has_one_hash_tag() {
        let k = PartKeys::new("q:", "orders", 3);
        let g = k.group("workers");
        let all = [
            k.stream(),
            k.next(),
            k.delays(),
            k.counters(),
            k.groups(),
            k.wake(),
            k.dead(),
            k.dead_next(),
            k.dead_done(),
            k.dedup(7),
            g.lease,
            g.hold,
            g.wait,
            g.att,
            g.counters,
            g.cursor,
        ];
        for key in all {
            let open = key.find('{').expect("tag");
            let close = key[open..].find('}').expect("tag end") + open;
            assert_eq!(&key[open + 1..close], "orders:3", "{key}");
        }
    }

    #[test]
    fn offsets_split_back() {
        for (p, seq) in [(0, 0), (0, 5), (3, 1 << 40), (255, SEQ_MASK)] {
            assert_eq!(split(offset(p, seq)), (p, seq));
        }
        assert_eq!(offset(0, 42), 42);
    }
}
