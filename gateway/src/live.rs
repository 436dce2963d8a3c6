//! The dashboard's live figures: a sample every second of the purchase outcomes at this
//! gateway, the orders topic's flow through the queue (enqueued, drained, backlog), orders
//! and cancellations in the database, dead letters, and the workers' heartbeats; kept for
//! the last [`LIVE_HISTORY_MAX`] seconds so the chart of incoming against drain rate and
//! backlog has its history when the page opens. Served as JSON by `GET /admin/api/live`.
//!
//! The queue and the counters are cheap to read and are sampled always; the database (order
//! totals, heartbeats) only while someone watched the dashboard in the last
//! [`WATCH_WINDOW_MS`], so an unwatched flash sale spends nothing on it.

use std::sync::atomic::Ordering;

use crate::dashboard::{
    Current, HEARTBEAT_STALE_MS, LIVE_HISTORY_MAX, MIN_SAMPLE_GAP_MS, OUTCOMES, Point, Totals,
    WORKERS_SHOWN_MAX, WorkerView,
};
use crate::state::AppState;

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
        let point = Point {
            t_ms: now,
            incoming: current.enqueue_rate,
            drained: current.drain_rate,
            backlog: current.lag,
            requests: current.requests_per_s,
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
