//! A lock-free latency histogram with fixed buckets, cheap enough for the writer thread's
//! hot path: recording a sample is two relaxed atomic adds and a search of a 13-entry array.
//!
//! Buckets are upper bounds in microseconds, inclusive (like Prometheus' `le`), plus one
//! overflow bucket for everything slower than the last bound. Counts are per bucket, not
//! cumulative.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets, in µs. They span a fast NVMe fdatasync (tens of µs) to a
/// stalled disk (a second); anything slower lands in the overflow bucket.
pub const BOUNDS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Number of buckets: one per bound plus the overflow bucket.
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A fixed-bucket histogram of durations that any thread may record into without a lock.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// A copy of an [`AtomicHistogram`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Inclusive upper bound of each bucket, µs.
    pub bounds_us: Vec<u64>,
    /// Samples per bucket (not cumulative); one more entry than `bounds_us`, the last one
    /// counting samples above the last bound (`+Inf`).
    pub counts: Vec<u64>,
    /// Sum of all samples, µs.
    pub sum_us: u64,
    /// Number of samples (the sum of `counts`).
    pub count: u64,
}

/// The bucket a sample of `us` µs falls into.
fn bucket(us: u64) -> usize {
    BOUNDS_US.partition_point(|&bound| bound < us)
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample of `us` microseconds.
    pub fn record(&self, us: u64) {
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records one sample, rounded down to whole microseconds.
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The current figures. Samples recorded while the snapshot is taken may be counted in
    /// `counts` but not yet in `sum_us` (or the reverse); `count` always equals the sum of
    /// `counts`.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds_us: BOUNDS_US.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the only non-empty bucket of a histogram holding one sample of `us`.
    fn placed(us: u64) -> usize {
        let h = AtomicHistogram::new();
        h.record(us);
        let s = h.snapshot();
        let hits: Vec<usize> = (0..s.counts.len()).filter(|&i| s.counts[i] > 0).collect();
        assert_eq!(hits.len(), 1, "one sample of {us} µs: {s:?}");
        assert_eq!(s.counts[hits[0]], 1);
        hits[0]
    }

    #[test]
    fn bounds_are_inclusive_upper_bounds() {
        assert_eq!(placed(0), 0);
        assert_eq!(placed(1), 0);
        assert_eq!(placed(50), 0);
        assert_eq!(placed(51), 1);
        assert_eq!(placed(100), 1);
        assert_eq!(placed(101), 2);
        assert_eq!(placed(999), 4);
        assert_eq!(placed(1_000), 4);
        assert_eq!(placed(1_001), 5);
        assert_eq!(placed(250_001), 12);
        assert_eq!(placed(1_000_000), 12);
        // Every bound lands in its own bucket, one above it in the next.
        for (i, &b) in BOUNDS_US.iter().enumerate() {
            assert_eq!(placed(b), i, "bound {b}");
            assert_eq!(placed(b + 1), i + 1, "just above bound {b}");
        }
    }

    #[test]
    fn slower_than_the_last_bound_goes_to_overflow() {
        let overflow = BOUNDS_US.len();
        assert_eq!(placed(1_000_001), overflow);
        assert_eq!(placed(60_000_000), overflow);
        assert_eq!(placed(u64::MAX), overflow);
    }

    #[test]
    fn snapshot_counts_sums_and_shape() {
        let h = AtomicHistogram::new();
        let empty = h.snapshot();
        assert_eq!(empty.bounds_us, BOUNDS_US.to_vec());
        assert_eq!(empty.counts, vec![0; BOUNDS_US.len() + 1]);
        assert_eq!((empty.count, empty.sum_us), (0, 0));

        for us in [10, 20, 300, 2_000_000] {
            h.record(us);
        }
        h.record_duration(Duration::from_micros(1_500));
        h.record_duration(Duration::from_nanos(999)); // rounds down to 0 µs
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum_us, 10 + 20 + 300 + 2_000_000 + 1_500);
        let mut want = vec![0u64; BOUNDS_US.len() + 1];
        want[0] = 3; // 10, 20, 0
        want[3] = 1; // 300
        want[5] = 1; // 1500
        want[BOUNDS_US.len()] = 1; // 2 s
        assert_eq!(s.counts, want);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(AtomicHistogram::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record((t * 10_000 + i) * 37 % 2_000_000);
                    }
                })
            })
            .collect();
        let mut expected_sum = 0u64;
        for t in 0..4u64 {
            for i in 0..10_000u64 {
                expected_sum += (t * 10_000 + i) * 37 % 2_000_000;
            }
        }
        for t in threads {
            t.join().expect("recording thread");
        }
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert_eq!(s.counts.iter().sum::<u64>(), 40_000);
        assert_eq!(s.sum_us, expected_sum);
    }
}
