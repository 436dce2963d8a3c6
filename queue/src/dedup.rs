//! The producer de-duplication window of one topic: ids seen recently, oldest first.
//!
//! Compact on purpose (about 35 bytes per id instead of ~100 for a `HashMap<u128, u64>`
//! plus an ordering queue): the ids live once, in publish order, in a `VecDeque` of
//! 24-byte entries; an open-addressing table of 4-byte slots (linear probing, at most half
//! full, backward-shift deletion) finds them by id; publish times are kept as checkpoints,
//! one per distinct publish time, not one per id.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

/// One remembered id.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The id, as two halves (a `u128` would be 16-byte aligned: 32-byte entries).
    id: [u64; 2],
    /// Offset of the message that carried it.
    offset: u64,
}

/// Live entries are numbered by a sequence; slots hold it modulo 2^31, plus one (0 = empty).
const SEQ_MOD: u64 = 1 << 31;
/// Smallest table.
const SLOTS_MIN: usize = 64;

#[derive(Debug)]
pub(crate) struct DedupWindow {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    front_seq: u64,
    /// `(publish time, sequence of the first entry with that time)`, oldest first.
    times: VecDeque<(u64, u64)>,
    /// `0` = empty, else `seq % SEQ_MOD + 1`. Length is a power of two.
    slots: Vec<u32>,
    hasher: RandomState,
}

fn split(id: u128) -> [u64; 2] {
    [id as u64, (id >> 64) as u64]
}

impl DedupWindow {
    pub(crate) fn new() -> Self {
        DedupWindow {
            entries: VecDeque::new(),
            front_seq: 0,
            times: VecDeque::new(),
            slots: vec![0; SLOTS_MIN],
            hasher: RandomState::new(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Offset of the oldest remembered id.
    pub(crate) fn lowest_offset(&self) -> Option<u64> {
        self.entries.front().map(|e| e.offset)
    }

    fn home(&self, id: [u64; 2]) -> usize {
        (self.hasher.hash_one(id) as usize) & (self.slots.len() - 1)
    }

    /// The live sequence a slot value names.
    fn seq_of(&self, slot: u32) -> u64 {
        let s = u64::from(slot) - 1;
        let base = self.front_seq % SEQ_MOD;
        self.front_seq + (s + SEQ_MOD - base) % SEQ_MOD
    }

    fn entry(&self, seq: u64) -> Option<&Entry> {
        seq.checked_sub(self.front_seq)
            .and_then(|i| self.entries.get(i as usize))
    }

    /// Slot index holding `id`, if remembered.
    fn find(&self, id: [u64; 2]) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if self.entry(self.seq_of(slot)).is_some_and(|e| e.id == id) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The offset remembered for `id`.
    pub(crate) fn get(&self, id: u128) -> Option<u64> {
        let i = self.find(split(id))?;
        self.entry(self.seq_of(self.slots[i])).map(|e| e.offset)
    }

    /// Remembers `id` for the message at `offset`, published at `at_ms`. A repeated id
    /// points to the newest entry (the older one is then forgotten when it expires).
    pub(crate) fn insert(&mut self, id: u128, offset: u64, at_ms: u64) {
        let id = split(id);
        let seq = self.front_seq + self.entries.len() as u64;
        self.entries.push_back(Entry { id, offset });
        if self.times.back().is_none_or(|&(t, _)| t != at_ms) {
            self.times.push_back((at_ms, seq));
        }
        let value = (seq % SEQ_MOD) as u32 + 1;
        match self.find(id) {
            Some(i) => self.slots[i] = value,
            None => {
                if (self.entries.len()) * 2 > self.slots.len() {
                    self.resize(self.slots.len() * 2);
                    // `resize` re-inserted every live entry, this one included.
                    return;
                }
                self.place(id, value);
            }
        }
    }

    fn place(&mut self, id: [u64; 2], value: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = value;
    }

    /// Rebuilds the table with `n` slots from the live entries (newest wins for repeats).
    fn resize(&mut self, n: usize) {
        self.slots = vec![0; n.max(SLOTS_MIN)];
        for k in 0..self.entries.len() {
            let e = self.entries[k];
            let seq = self.front_seq + k as u64;
            let value = (seq % SEQ_MOD) as u32 + 1;
            match self.find(e.id) {
                Some(i) => self.slots[i] = value,
                None => self.place(e.id, value),
            }
        }
    }

    /// Forgets the oldest entry.
    fn pop_front(&mut self) {
        let Some(e) = self.entries.front().copied() else {
            return;
        };
        let seq = self.front_seq;
        // Remove its slot only if it still names this entry (not a newer repeat).
        if let Some(i) = self.find(e.id)
            && self.seq_of(self.slots[i]) == seq
        {
            self.remove_slot(i);
        }
        self.entries.pop_front();
        self.front_seq += 1;
        while self.times.len() > 1 && self.times[1].1 <= self.front_seq {
            self.times.pop_front();
        }
        if self.entries.is_empty() {
            self.times.clear();
        }
    }

    /// Backward-shift deletion: close the gap so every probe chain stays unbroken.
    fn remove_slot(&mut self, mut hole: usize) {
        let mask = self.slots.len() - 1;
        self.slots[hole] = 0;
        let mut i = (hole + 1) & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return;
            }
            let Some(e) = self.entry(self.seq_of(slot)).copied() else {
                return;
            };
            let home = self.home(e.id);
            // Move it into the hole if its home is not in (hole, i] cyclically.
            let dist_home = i.wrapping_sub(home) & mask;
            let dist_hole = i.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                self.slots[hole] = slot;
                self.slots[i] = 0;
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Forgets ids published `window_ms` or longer before `now_ms`, and the oldest beyond
    /// `entries_max`; gives memory back once the window uses a small part of it.
    pub(crate) fn expire(&mut self, now_ms: u64, window_ms: u64, entries_max: usize) {
        while let Some(&(at, _)) = self.times.front() {
            if at.saturating_add(window_ms) > now_ms {
                break;
            }
            let end = self.times.get(1).map_or(u64::MAX, |&(_, s)| s);
            while self.front_seq < end && !self.entries.is_empty() {
                self.pop_front();
            }
            if self.times.front().is_some_and(|&(t, _)| t == at) {
                self.times.pop_front();
            }
        }
        while self.entries.len() > entries_max {
            self.pop_front();
        }
        if self.slots.len() > SLOTS_MIN && self.entries.len() * 8 < self.slots.len() {
            self.resize((self.entries.len() * 4).next_power_of_two());
        }
        if self.entries.capacity() > 4 * self.entries.len() + 4096 {
            self.entries.shrink_to(2 * self.entries.len());
        }
        if self.times.capacity() > 4 * self.times.len() + 4096 {
            self.times.shrink_to(2 * self.times.len());
        }
    }

    /// Heap bytes in use (capacities).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>()
            + self.times.capacity() * 16
            + self.slots.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, lookups and expiries against a plain map with the same rules.
    #[test]
    fn matches_a_plain_map() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20 {
            let mut w = DedupWindow::new();
            let mut model: VecDeque<(u64, u128, u64)> = VecDeque::new();
            let mut now = 1_000u64;
            let window = 50;
            let cap = if round % 2 == 0 { 300 } else { usize::MAX };
            let mut offset = 0u64;
            for _ in 0..5_000 {
                match next() % 10 {
                    0 => now += next() % 20,
                    1..=6 => {
                        // Small id space so repeats and collisions of probe chains happen.
                        let id = u128::from(next() % 400) << (next() % 2 * 64);
                        let expected = model
                            .iter()
                            .rev()
                            .find(|(_, i, _)| *i == id)
                            .map(|&(_, _, o)| o);
                        assert_eq!(w.get(id), expected, "lookup of {id}");
                        if expected.is_none() {
                            w.insert(id, offset, now);
                            model.push_back((now, id, offset));
                            offset += 1;
                        }
                    }
                    _ => {
                        w.expire(now, window, cap);
                        while model.front().is_some_and(|&(t, _, _)| t + window <= now)
                            || model.len() > cap
                        {
                            model.pop_front();
                        }
                        assert_eq!(w.len(), model.len());
                        assert_eq!(w.lowest_offset(), model.front().map(|m| m.2));
                    }
                }
            }
            let live: HashMap<u128, u64> = model.iter().map(|&(_, i, o)| (i, o)).collect();
            for (id, off) in live {
                assert_eq!(w.get(id), Some(off));
            }
        }
    }
}
