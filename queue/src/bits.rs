//! A sliding bitmap over message offsets: one bit per offset from a moving base.
//!
//! Groups use it for "done" flags (everything below the base counts as done) and topics for
//! "delayed, not yet due" flags. One bit per retained message keeps a million pending
//! entries at 125 KiB.

use std::collections::VecDeque;

#[derive(Debug, Clone, Default)]
pub(crate) struct BitWindow {
    /// Offset of bit 0 of `words[0]`; always a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

impl BitWindow {
    pub(crate) fn new(start: u64) -> Self {
        BitWindow {
            base: start & !63,
            words: VecDeque::new(),
        }
    }

    /// Offset of the first tracked bit.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The bit at `off`, or `None` below the base.
    pub(crate) fn get(&self, off: u64) -> Option<bool> {
        if off < self.base {
            return None;
        }
        let idx = off - self.base;
        let word = (idx / 64) as usize;
        Some(
            self.words
                .get(word)
                .is_some_and(|w| w & (1u64 << (idx % 64)) != 0),
        )
    }

    pub(crate) fn set(&mut self, off: u64) {
        if off < self.base {
            return;
        }
        let idx = off - self.base;
        let word = (idx / 64) as usize;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1u64 << (idx % 64);
    }

    pub(crate) fn clear(&mut self, off: u64) {
        if off < self.base {
            return;
        }
        let idx = off - self.base;
        if let Some(w) = self.words.get_mut((idx / 64) as usize) {
            *w &= !(1u64 << (idx % 64));
        }
    }

    /// Sets every bit in `[from, to)`.
    pub(crate) fn set_range(&mut self, from: u64, to: u64) {
        for off in from.max(self.base)..to {
            self.set(off);
        }
    }

    /// First offset at or above the base whose bit is clear.
    pub(crate) fn first_zero(&self) -> u64 {
        for (i, w) in self.words.iter().enumerate() {
            if *w != u64::MAX {
                return self.base + i as u64 * 64 + u64::from(w.trailing_ones());
            }
        }
        self.base + self.words.len() as u64 * 64
    }

    /// Drops leading words whose bits are all set (for "done" windows).
    pub(crate) fn compact_full(&mut self) {
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    /// Drops whole words below `off` (their bits are forgotten).
    pub(crate) fn drop_below(&mut self, off: u64) {
        while self.base + 64 <= off {
            self.words.pop_front();
            self.base += 64;
        }
    }

    /// Bits set in `[from, to)`.
    pub(crate) fn count_ones(&self, from: u64, to: u64) -> u64 {
        let mut n = 0;
        let from = from.max(self.base);
        let mut off = from;
        while off < to {
            let idx = off - self.base;
            let word = (idx / 64) as usize;
            let Some(w) = self.words.get(word) else { break };
            if idx.is_multiple_of(64) && to - off >= 64 {
                n += u64::from(w.count_ones());
                off += 64;
            } else {
                n += u64::from(w & (1u64 << (idx % 64)) != 0);
                off += 1;
            }
        }
        n
    }

    /// Heap bytes used, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tracks_bits_and_compacts() {
        let mut b = BitWindow::new(100);
        assert_eq!(b.base(), 64);
        assert_eq!(b.get(10), None);
        b.set_range(64, 100);
        assert_eq!(b.first_zero(), 100);
        for off in 100..300 {
            if off != 200 {
                b.set(off);
            }
        }
        assert_eq!(b.first_zero(), 200);
        b.compact_full();
        assert_eq!(b.base(), 192);
        assert_eq!(b.get(199), Some(true));
        assert_eq!(b.get(200), Some(false));
        assert_eq!(b.count_ones(192, 300), 107);
        b.clear(199);
        assert_eq!(b.first_zero(), 199);
        b.drop_below(300);
        assert_eq!(b.base(), 256);
    }
}
