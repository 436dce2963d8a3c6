//! The dashboard's live figures: a sample every second of the purchase outcomes at this
//! gateway, the orders topic's flow through the queue (enqueued, drained, backlog), orders
//! and cancellations in the database, dead letters, and the workers' heartbeats; kept for
//! the last [`LIVE_HISTORY_MAX`] seconds so the chart of incoming against drain rate and
//! backlog has its history when the page opens. Served as JSON by `GET /admin/api/live`.
//!
//! Each point of the history carries what the dashboard's chart plots: purchase and token
//! requests per second by outcome group ([`OutcomeRates`]: accepted, sold out, throttled,
//! refused, errors), enqueue and drain rates and the backlog, and the purchase route's p50
//! and p99 latency over the interval since the last point (from the difference of the
//! route's histogram between two samples, interpolated within a bucket as Prometheus'
//! `histogram_quantile` does).
//!
//! The queue and the counters are cheap to read and are sampled always; the database (order
//! totals, heartbeats) only while someone watched the dashboard in the last
//! [`WATCH_WINDOW_MS`](crate::dashboard::WATCH_WINDOW_MS), so an unwatched flash sale spends nothing on it.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::dashboard::{
    Current, HEARTBEAT_STALE_MS, LIVE_HISTORY_MAX, MIN_SAMPLE_GAP_MS, OUTCOMES, Point, Totals,
    WORKERS_SHOWN_MAX, WorkerView,
};
use crate::state::AppState;

/// Buckets of a latency histogram ([`queue::histogram::BOUNDS_US`] and the overflow one).
pub const LATENCY_BUCKETS: usize = queue::histogram::BOUNDS_US.len() + 1;

/// Requests per second by the chart's outcome groups.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct OutcomeRates {
    /// Accepted (202).
    pub accepted: f64,
    /// Refused: sold out.
    pub sold_out: f64,
    /// Refused to shed load, come back later: throttled, or every purchase token of the
    /// sale is live (`tokens_exhausted`).
    pub throttled: f64,
    /// Refused for the request's own sake: already bought, a bad token, not started, or
    /// any other refusal.
    pub refused: f64,
    /// The system could not take it (`unavailable`: queue or stock store).
    pub errors: f64,
}

impl OutcomeRates {
    /// Adds `rate` of the outcome `name` (a [`OUTCOMES`] name) to its group.
    fn add(&mut self, name: &str, rate: f64) {
        let group = match name {
            "accepted" => &mut self.accepted,
            "sold_out" => &mut self.sold_out,
            "throttled" | "tokens_exhausted" => &mut self.throttled,
            "unavailable" => &mut self.errors,
            _ => &mut self.refused,
        };
        *group += rate;
    }
}

/// The `q` quantile (0..=1), ms, of the samples counted in `counts` (per bucket of
/// [`queue::histogram::BOUNDS_US`], the last one the overflow), interpolated linearly
/// within its bucket; `None` without samples. The overflow bucket reads as the last bound.
pub fn quantile_ms(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let bounds = queue::histogram::BOUNDS_US;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (k, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(k) else {
                return Some(bounds[bounds.len() - 1] as f64 / 1000.0);
            };
            let lower = if k == 0 { 0 } else { bounds[k - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            let us = lower as f64 + (upper - lower) as f64 * within;
            return Some(us / 1000.0);
        }
        below += n;
    }
    Some(bounds[bounds.len() - 1] as f64 / 1000.0)
}

fn purchase_latency(state: &AppState) -> [u64; LATENCY_BUCKETS] {
    let mut out = [0; LATENCY_BUCKETS];
    let route = crate::metrics::ROUTES
        .iter()
        .position(|r| *r == "purchase")
        .unwrap_or(0);
    if let Some(h) = state.metrics.latency.get(route) {
        for (o, c) in out.iter_mut().zip(h.snapshot().counts) {
            *o = c;
        }
    }
    out
}

fn outcome_counts(state: &AppState) -> [u64; OUTCOMES.len()] {
    let m = &state.metrics;
    [
        &m.accepted,
        &m.sold_out,
        &m.tokens_exhausted,
        &m.already_bought,
        &m.throttled,
        &m.bad_token,
        &m.not_started,
        &m.unavailable,
        &m.sale_paused,
    ]
    .map(|c| c.load(Ordering::Relaxed))
}

/// Takes one sample (the gateway's `serve` calls it every second).
pub async fn sample(state: &AppState) {
    sample_at(state, state.now_ms()).await;
}

/// Takes one sample as of `now` (ms since the epoch; tests step it by whole seconds).
pub async fn sample_at(state: &AppState, now: u64) {
    let _one_at_a_time = state.live.sampling.lock().await;
    let watched = state.live.is_watched(now);
    let mut errors = Vec::new();
    let outcomes = outcome_counts(state);
    let requests = outcomes.iter().sum::<u64>();
    let mut totals = Totals {
        at_ms: now,
        requests,
        outcomes,
        purchase_latency: purchase_latency(state),
        ..Totals::default()
    };
    let mut current = Current {
        accepted: outcomes[0],
        refused: requests - outcomes[0],
        outcomes: OUTCOMES.iter().copied().zip(outcomes).collect(),
        ..Current::default()
    };
    match state.queue.stats(&state.config.orders_topic).await {
        Ok(t) => {
            totals.enqueued = Some(t.durable_end);
            current.dead_letters += t.dead_letters_pending;
            if let Some(g) = t
                .groups
                .iter()
                .find(|g| g.name == state.config.workers_group)
            {
                current.depth = g.depth;
                current.lag = g.lag;
                current.in_flight = g.in_flight;
                totals.finished = Some(t.durable_end.saturating_sub(g.lag));
            } else {
                // No worker has joined yet: nothing drained, everything waits.
                totals.finished = Some(0);
                current.lag = t.durable_end.saturating_sub(t.log_start);
                current.depth = current.lag;
            }
        }
        Err(queue::Error::NoSuchTopic(_)) => {
            // Nothing published yet.
            totals.enqueued = Some(0);
            totals.finished = Some(0);
        }
        Err(e) => errors.push(format!("queue: {e}")),
    }
    match state
        .queue
        .stats(order_worker::purchase::DEADLINES_TOPIC)
        .await
    {
        Ok(t) => current.dead_letters += t.dead_letters_pending,
        Err(queue::Error::NoSuchTopic(_)) => {}
        Err(e) => errors.push(format!("queue: {e}")),
    }
    let mut workers = None;
    if watched {
        match state.db.order_totals().await {
            Ok(t) => {
                totals.orders = Some(t.created);
                current.orders = Some(t.created);
                current.cancelled = Some(t.cancelled);
            }
            Err(e) => errors.push(format!("database: {e}")),
        }
        // Ages by the database's clock, not this gateway's or the workers' hosts'.
        match state.db.worker_ages(WORKERS_SHOWN_MAX).await {
            Ok(list) => {
                workers = Some(
                    list.into_iter()
                        .map(|a| (a.beat_age_ms, a.progress_age_ms, a.beat))
                        .map(|(beat_age_ms, progress_age_ms, w)| WorkerView {
                            beat_age_ms,
                            progress_age_ms,
                            alive: w.stopped_ms.is_none() && beat_age_ms <= HEARTBEAT_STALE_MS,
                            stopped: w.stopped_ms.is_some(),
                            kind: w.kind.as_str().to_string(),
                            handled: w.handled,
                            id: w.id,
                        })
                        .collect(),
                );
            }
            Err(e) => errors.push(format!("database: {e}")),
        }
    }
    current.errors = errors;
    let mut inner = state.live.lock();
    let last = inner.last;
    if last.is_some_and(|l| now.saturating_sub(l.at_ms) < MIN_SAMPLE_GAP_MS) {
        // Too close to the last sample for a rate: keep its rates and its baseline.
        let previous = &inner.current;
        current.requests_per_s = previous.requests_per_s;
        current.outcome_rates = previous.outcome_rates.clone();
        current.enqueue_rate = previous.enqueue_rate;
        current.drain_rate = previous.drain_rate;
        current.orders_rate = previous.orders_rate;
        inner.current = current;
        if let Some(w) = workers {
            inner.workers = w;
        }
        return;
    }
    if let Some(last) = last {
        let secs = now.saturating_sub(last.at_ms) as f64 / 1000.0;
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let rate_of = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(rate(a, b)),
            _ => None,
        };
        current.requests_per_s = rate(totals.requests, last.requests);
        current.outcome_rates = OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, rate(totals.outcomes[i], last.outcomes[i])))
            .collect();
        // Over a gap in the queue's figures the rate is unknown, not the whole total.
        current.enqueue_rate = rate_of(totals.enqueued, last.enqueued).unwrap_or(0.0);
        current.drain_rate = rate_of(totals.finished, last.finished).unwrap_or(0.0);
        current.orders_rate = rate_of(totals.orders, last.orders);
        let mut by_group = OutcomeRates::default();
        for (name, rate) in &current.outcome_rates {
            by_group.add(name, *rate);
        }
        let mut latency = [0u64; LATENCY_BUCKETS];
        for (k, d) in latency.iter_mut().enumerate() {
            *d = totals.purchase_latency[k].saturating_sub(last.purchase_latency[k]);
        }
        let point = Point {
            t_ms: now,
            incoming: current.enqueue_rate,
            drained: current.drain_rate,
            backlog: current.lag,
            requests: current.requests_per_s,
            outcomes: by_group,
            purchase_p50_ms: quantile_ms(&latency, 0.50),
            purchase_p99_ms: quantile_ms(&latency, 0.99),
        };
        if inner.history.len() >= LIVE_HISTORY_MAX {
            inner.history.pop_front();
        }
        inner.history.push_back(point);
    }
    inner.last = Some(totals);
    inner.current = current;
    if let Some(w) = workers {
        inner.workers = w;
    } else if !watched {
        inner.workers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut c = [0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_ms(&c, 0.5), None);
        // 100 samples in (1, 2.5] ms: the median halfway, the p99 near the top.
        c[5] = 100;
        let p50 = quantile_ms(&c, 0.5).expect("p50");
        assert!((p50 - 1.75).abs() < 1e-9, "{p50}");
        let p99 = quantile_ms(&c, 0.99).expect("p99");
        assert!((p99 - 2.485).abs() < 1e-9, "{p99}");
        // One slow sample above every bound: the p99 of 100 stays in the fast bucket, the
        // max reads as the last bound.
        c[5] = 99;
        c[LATENCY_BUCKETS - 1] = 1;
        assert!(quantile_ms(&c, 0.99).expect("p99") <= 2.5);
        assert_eq!(quantile_ms(&c, 1.0), Some(1000.0));
        // The first bucket starts at 0.
        let mut c = [0u64; LATENCY_BUCKETS];
        c[0] = 4;
        assert_eq!(quantile_ms(&c, 0.5), Some(0.025));
    }

    #[test]
    fn outcomes_fall_into_the_chart_groups() {
        let mut g = OutcomeRates::default();
        for (name, rate) in [
            ("accepted", 1.0),
            ("sold_out", 2.0),
            ("tokens_exhausted", 4.0),
            ("throttled", 8.0),
            ("already_bought", 16.0),
            ("bad_token", 32.0),
            ("not_started", 64.0),
            ("unavailable", 128.0),
            ("a_new_refusal", 256.0),
        ] {
            g.add(name, rate);
        }
        assert_eq!(
            g,
            OutcomeRates {
                accepted: 1.0,
                sold_out: 2.0,
                throttled: 12.0,
                refused: 368.0,
                errors: 128.0,
            }
        );
        // Every outcome the gateway counts lands in exactly one group.
        let mut all = OutcomeRates::default();
        for name in OUTCOMES {
            all.add(name, 1.0);
        }
        let sum = all.accepted + all.sold_out + all.throttled + all.refused + all.errors;
        assert_eq!(sum, OUTCOMES.len() as f64);
    }
}
