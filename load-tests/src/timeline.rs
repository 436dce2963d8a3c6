//! A run's timeline at a fine grain, and its binning for the report.
//!
//! While a crowd runs, every answer is counted into a [`FINE_BIN_MS`] (100 ms) slot of one
//! shared [`Timeline`]: requests, purchase attempts by outcome, and the latency of the
//! token and purchase routes in a compact log-scale histogram ([`LogHistogram`]). The
//! system's own figures (backlog, enqueue and drain rates, orders), sampled about once a
//! second, go into the slot they were read in.
//!
//! The report does not plot the slots themselves: [`bin_width_ms`] picks a round bin width
//! (100 ms, 200 ms, 500 ms, 1 s, 2 s, 5 s, …) that gives a run at least
//! [`POINTS_MIN`] points and no more than about [`POINTS_MAX`], and [`Timeline::bins`]
//! merges the slots into those bins: a one-second spike gets ten points, a ten-minute run
//! one every ten seconds or so.
//!
//! Memory is bounded: at most [`SLOTS_MAX`] slots (the longest run at 100 ms), a latency
//! histogram per slot only for the routes in [`TIMED_ROUTES`], with [`LOG_BUCKETS`]
//! counters each.

use std::collections::BTreeMap;

use crate::outcome::{KNOWN, KNOWN_OUTCOMES, Outcome};
use crate::record::{Bin, BinLatency};

/// The grain of the recording, ms.
pub const FINE_BIN_MS: u64 = 100;
/// Most slots of one run (the longest run, [`crate::scenario::DEADLINE_MS_MAX`], at
/// [`FINE_BIN_MS`]); later answers count in the last slot.
pub const SLOTS_MAX: usize = (crate::scenario::DEADLINE_MS_MAX / FINE_BIN_MS) as usize;
/// A run is plotted with at least this many points (when it lasts 3 s or more).
pub const POINTS_MIN: u64 = 30;
/// A run is plotted with about this many points at most.
pub const POINTS_MAX: u64 = 300;
/// Bin widths the report may use, ms: round numbers, each a multiple of [`FINE_BIN_MS`].
pub const BIN_WIDTHS_MS: [u64; 13] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
];
/// Routes whose latency is kept per slot (for the latency-over-time plot).
pub const TIMED_ROUTES: [&str; 2] = ["token", "purchase"];
/// Buckets per factor of ten of a [`LogHistogram`] (a bucket spans about 4.7 %).
const BUCKETS_PER_DECADE: f64 = 50.0;
/// Buckets of a [`LogHistogram`]: 1 µs to 100 s.
pub const LOG_BUCKETS: usize = 8 * BUCKETS_PER_DECADE as usize + 1;

/// The bin width for a run of `duration_ms`: the widest of [`BIN_WIDTHS_MS`] that still
/// gives [`POINTS_MIN`] points, and never one that gives more than about [`POINTS_MAX`].
pub fn bin_width_ms(duration_ms: u64) -> u64 {
    let fits = |w: &&u64| duration_ms / **w >= POINTS_MIN;
    let widest_fitting = BIN_WIDTHS_MS
        .iter()
        .rev()
        .find(fits)
        .copied()
        .unwrap_or(BIN_WIDTHS_MS[0]);
    // Very long runs: the narrowest width that keeps to about POINTS_MAX points.
    let narrowest_sparse = BIN_WIDTHS_MS
        .iter()
        .find(|w| duration_ms.div_ceil(**w) <= POINTS_MAX)
        .copied()
        .unwrap_or(BIN_WIDTHS_MS[BIN_WIDTHS_MS.len() - 1]);
    widest_fitting.max(narrowest_sparse)
}

/// A latency histogram with logarithmic buckets (`BUCKETS_PER_DECADE` per factor of ten
/// from 1 µs): small and mergeable, a quantile within about 5 %.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHistogram {
    counts: Box<[u32; LOG_BUCKETS]>,
    count: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            counts: Box::new([0; LOG_BUCKETS]),
            count: 0,
        }
    }
}

impl LogHistogram {
    fn bucket(us: u64) -> usize {
        let us = us.max(1) as f64;
        ((us.log10() * BUCKETS_PER_DECADE).ceil() as usize).min(LOG_BUCKETS - 1)
    }

    /// The upper bound of bucket `k`, µs.
    fn upper_us(k: usize) -> f64 {
        10f64.powf(k as f64 / BUCKETS_PER_DECADE)
    }

    /// Records one answer of `us` µs.
    pub fn record(&mut self, us: u64) {
        let k = Self::bucket(us);
        self.counts[k] = self.counts[k].saturating_add(1);
        self.count += 1;
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
    }

    /// Answers recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `q` quantile (0..=1), ms: the upper bound of the bucket it falls in; `None`
    /// when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (k, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(Self::upper_us(k) / 1000.0);
            }
        }
        Some(Self::upper_us(LOG_BUCKETS - 1) / 1000.0)
    }
}

/// One [`FINE_BIN_MS`] slot.
#[derive(Debug, Clone)]
struct Slot {
    requests: u64,
    attempts: u64,
    /// Attempts by outcome: a known outcome's count by its index, any other's by name.
    known: [u64; KNOWN],
    others: BTreeMap<String, u64>,
    /// Latency of the [`TIMED_ROUTES`], by their index there.
    latency: [Option<LogHistogram>; TIMED_ROUTES.len()],
    backlog: Option<u64>,
    enqueued_per_s: Option<f64>,
    drained_per_s: Option<f64>,
    orders: Option<u64>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            requests: 0,
            attempts: 0,
            known: [0; KNOWN],
            others: BTreeMap::new(),
            latency: Default::default(),
            backlog: None,
            enqueued_per_s: None,
            drained_per_s: None,
            orders: None,
        }
    }
}

/// The figures of a run by [`FINE_BIN_MS`] slot since the run started.
#[derive(Debug, Default)]
pub struct Timeline {
    slots: Vec<Slot>,
}

/// The system's figures read at one moment (from `/admin/api/live`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SystemSample {
    /// Purchases waiting (the workers' lag).
    pub backlog: Option<u64>,
    /// Enqueued per second.
    pub enqueued_per_s: Option<f64>,
    /// Drained per second.
    pub drained_per_s: Option<f64>,
    /// Orders in the database.
    pub orders: Option<u64>,
}

impl Timeline {
    fn slot(&mut self, at_ms: u64) -> &mut Slot {
        let i = usize::try_from(at_ms / FINE_BIN_MS)
            .unwrap_or(usize::MAX)
            .min(SLOTS_MAX - 1);
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        &mut self.slots[i]
    }

    /// Counts one answer `at_ms` after the run started.
    pub fn record(
        &mut self,
        at_ms: u64,
        route: &str,
        outcome: &Outcome,
        took_us: u64,
        attempt: bool,
    ) {
        let slot = self.slot(at_ms);
        slot.requests += 1;
        if attempt {
            slot.attempts += 1;
            match outcome {
                // Nearly every answer: an index, no lookup, no allocation.
                Outcome::Known(i) => slot.known[usize::from(*i)] += 1,
                Outcome::Other(code) => match slot.others.get_mut(&**code) {
                    Some(n) => *n += 1,
                    None => {
                        slot.others.insert(code.to_string(), 1);
                    }
                },
            }
        }
        if let Some(timed) = TIMED_ROUTES.iter().position(|r| *r == route) {
            slot.latency[timed]
                .get_or_insert_with(LogHistogram::default)
                .record(took_us);
        }
    }

    /// Notes the system's figures as read `at_ms` after the run started.
    pub fn sample(&mut self, at_ms: u64, s: SystemSample) {
        let slot = self.slot(at_ms);
        slot.backlog = s.backlog;
        slot.enqueued_per_s = s.enqueued_per_s;
        slot.drained_per_s = s.drained_per_s;
        slot.orders = s.orders;
    }

    /// The highest backlog the system reported.
    pub fn peak_backlog(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.backlog)
            .max()
            .unwrap_or(0)
    }

    /// How long the recording spans, ms (to the end of its last slot).
    pub fn span_ms(&self) -> u64 {
        self.slots.len() as u64 * FINE_BIN_MS
    }

    /// The slots merged into bins of `width_ms` (a multiple of [`FINE_BIN_MS`]), every bin
    /// from the start to the last slot, empty ones included. Counts add up; the system's
    /// figures are the last ones read in the bin; latency quantiles are over the bin's
    /// answers.
    pub fn bins(&self, width_ms: u64) -> Vec<Bin> {
        let per = (width_ms / FINE_BIN_MS).max(1) as usize;
        self.slots
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| {
                let mut bin = Bin {
                    t_ms: i as u64 * per as u64 * FINE_BIN_MS,
                    ..Bin::default()
                };
                let mut latency: BTreeMap<&str, LogHistogram> = BTreeMap::new();
                for s in chunk {
                    bin.requests += s.requests;
                    bin.attempts += s.attempts;
                    // Only the outcomes that occurred, as a map of names.
                    for (i, n) in s.known.iter().enumerate().filter(|(_, n)| **n > 0) {
                        *bin.outcomes
                            .entry(KNOWN_OUTCOMES[i].to_string())
                            .or_default() += n;
                    }
                    for (o, n) in &s.others {
                        *bin.outcomes.entry(o.clone()).or_default() += n;
                    }
                    for (route, h) in TIMED_ROUTES.iter().zip(&s.latency) {
                        if let Some(h) = h {
                            latency.entry(route).or_default().add(h);
                        }
                    }
                    if s.backlog.is_some() {
                        bin.backlog = s.backlog;
                    }
                    if s.enqueued_per_s.is_some() {
                        bin.enqueued_per_s = s.enqueued_per_s;
                    }
                    if s.drained_per_s.is_some() {
                        bin.drained_per_s = s.drained_per_s;
                    }
                    if s.orders.is_some() {
                        bin.orders = s.orders;
                    }
                }
                bin.latency = latency
                    .into_iter()
                    .filter(|(_, h)| !h.is_empty())
                    .map(|(route, h)| {
                        (
                            route.to_string(),
                            BinLatency {
                                count: h.len(),
                                p50_ms: h.quantile_ms(0.50).unwrap_or(0.0),
                                p99_ms: h.quantile_ms(0.99).unwrap_or(0.0),
                            },
                        )
                    })
                    .collect();
                bin
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_runs_get_fine_bins_long_ones_round_coarse_ones() {
        assert_eq!(bin_width_ms(0), 100);
        assert_eq!(bin_width_ms(1_000), 100, "a one-second run: ten points");
        assert_eq!(bin_width_ms(3_000), 100);
        assert_eq!(bin_width_ms(6_000), 200);
        assert_eq!(bin_width_ms(15_000), 500);
        assert_eq!(bin_width_ms(30_000), 1_000);
        assert_eq!(bin_width_ms(90_000), 2_000);
        assert_eq!(bin_width_ms(600_000), 15_000);
        assert_eq!(bin_width_ms(30 * 60_000), 60_000);
    }

    proptest! {
        #[test]
        fn a_bin_width_is_round_and_gives_enough_points(duration_ms in 0u64..=40 * 60_000) {
            let w = bin_width_ms(duration_ms);
            prop_assert!(BIN_WIDTHS_MS.contains(&w));
            prop_assert!(w.is_multiple_of(FINE_BIN_MS));
            if duration_ms >= POINTS_MIN * FINE_BIN_MS {
                prop_assert!(duration_ms / w >= POINTS_MIN, "{duration_ms} ms / {w} ms");
            }
            prop_assert!(duration_ms.div_ceil(w) <= POINTS_MAX, "{duration_ms} ms / {w} ms");
        }

        #[test]
        fn binning_keeps_every_count(
            answers in proptest::collection::vec((0u64..20_000, 0usize..4, 1u64..2_000_000), 0..300),
            width in proptest::sample::select(BIN_WIDTHS_MS[..6].to_vec()),
        ) {
            let mut t = Timeline::default();
            // Known outcomes (by index) and another (by name).
            let outcomes = ["accepted", "sold_out", "throttled", "teapot"];
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            for (at, o, us) in &answers {
                t.record(*at, "purchase", &Outcome::of(outcomes[*o]), *us, true);
                *expected.entry(outcomes[*o].to_string()).or_default() += 1;
            }
            let bins = t.bins(width);
            let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
            for b in &bins {
                for (o, n) in &b.outcomes {
                    prop_assert!(*n > 0, "only outcomes that occurred: {o}");
                    *by_name.entry(o.clone()).or_default() += n;
                }
            }
            prop_assert_eq!(by_name, expected);
            let total: u64 = bins.iter().map(|b| b.attempts).sum();
            prop_assert_eq!(total, answers.len() as u64);
            let timed: u64 = bins.iter().filter_map(|b| b.latency.get("purchase")).map(|l| l.count).sum();
            prop_assert_eq!(timed, answers.len() as u64);
            for (i, b) in bins.iter().enumerate() {
                prop_assert_eq!(b.t_ms, i as u64 * width);
                let by_outcome: u64 = b.outcomes.values().sum();
                prop_assert_eq!(by_outcome, b.attempts);
            }
            // Each answer lands in the bin that holds its time.
            for (at, _, _) in &answers {
                let b = &bins[(*at / width) as usize];
                prop_assert!(b.attempts > 0);
            }
        }

        #[test]
        fn a_log_quantile_is_within_five_percent(us in 1u64..50_000_000) {
            let mut h = LogHistogram::default();
            h.record(us);
            let q = h.quantile_ms(0.5).expect("one answer") * 1000.0;
            prop_assert!(q >= us as f64 * 0.999 && q <= us as f64 * 1.05, "{us} µs read as {q}");
        }
    }

    #[test]
    fn a_one_second_spike_has_ten_points_with_their_latency() {
        let mut t = Timeline::default();
        for i in 0..1_000u64 {
            t.record(i, "purchase", &Outcome::ACCEPTED, 1_000 + i * 10, true);
            t.record(i, "page", &Outcome::OK, 50, false);
        }
        t.sample(
            950,
            SystemSample {
                backlog: Some(7),
                ..SystemSample::default()
            },
        );
        let bins = t.bins(bin_width_ms(t.span_ms()));
        assert_eq!(bins.len(), 10);
        for b in &bins {
            assert_eq!((b.attempts, b.requests), (100, 200), "{b:?}");
            let l = &b.latency["purchase"];
            assert_eq!(l.count, 100);
            assert!(l.p50_ms <= l.p99_ms, "{l:?}");
            assert!(!b.latency.contains_key("page"), "only timed routes");
        }
        // Later bins are slower (the latency grows with time here).
        assert!(bins[9].latency["purchase"].p50_ms > bins[0].latency["purchase"].p99_ms);
        assert_eq!(bins[9].backlog, Some(7));
        assert_eq!(bins[0].backlog, None);
    }

    #[test]
    fn answers_past_the_longest_run_count_in_the_last_slot() {
        let mut t = Timeline::default();
        t.record(u64::MAX, "token", &Outcome::ACCEPTED, 10, true);
        assert_eq!(t.span_ms(), SLOTS_MAX as u64 * FINE_BIN_MS);
    }
}
