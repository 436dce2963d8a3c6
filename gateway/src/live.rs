//! The dashboard's live figures: a sample every second of the purchase outcomes at this
//! gateway, the orders topic's flow through the queue (enqueued, drained, backlog), orders
//! and cancellations in the database, dead letters, and the workers' heartbeats; kept for
//! the last [`LIVE_HISTORY_MAX`] seconds so the chart of incoming against drain rate and
//! backlog has its history when the page opens. Served as JSON by `GET /admin/api/live`.
//!
//! The queue and the counters are cheap to read and are sampled always; the database (order
//! totals, heartbeats) only while someone watched the dashboard in the last
//! [`WATCH_WINDOW_MS`], so an unwatched flash sale spends nothing on it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::app::{AppState, now_ms};

/// How often the figures are sampled.
pub const SAMPLE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// Seconds of history kept (five minutes at one sample a second).
pub const LIVE_HISTORY_MAX: usize = 300;
/// How long after the last look at the dashboard the database is still sampled.
pub const WATCH_WINDOW_MS: u64 = 10_000;
/// A worker whose last heartbeat is older than this is shown as stale.
pub const HEARTBEAT_STALE_MS: u64 = 3_000;
/// Samples closer together than this update the figures but not the rates or the
/// history (the dashboard's first look samples at once, beside the every-second task).
pub const MIN_SAMPLE_GAP_MS: u64 = 500;
/// Most workers listed.
pub const WORKERS_SHOWN_MAX: usize = 100;

/// One point of the chart.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// When, ms since the epoch.
    pub t_ms: u64,
    /// Purchases enqueued per second (all gateways: from the queue).
    pub incoming: f64,
    /// Purchases drained (finished by the workers) per second.
    pub drained: f64,
    /// Purchases waiting (the workers' consumer lag).
    pub backlog: u64,
    /// Purchase requests per second at this gateway.
    pub requests: f64,
}

/// The latest figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Current {
    /// Purchase and token requests answered per second at this gateway.
    pub requests_per_s: f64,
    /// Accepted purchases (202) at this gateway, in all.
    pub accepted: u64,
    /// Refused purchase and token requests at this gateway, in all.
    pub refused: u64,
    /// Requests by outcome at this gateway, in all.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// Requests by outcome per second.
    pub outcome_rates: std::collections::BTreeMap<&'static str, f64>,
    /// Purchases enqueued per second.
    pub enqueue_rate: f64,
    /// Purchases drained per second.
    pub drain_rate: f64,
    /// Messages ready to deliver to the workers now.
    pub depth: u64,
    /// Messages the workers have not finished (ready, leased, retrying).
    pub lag: u64,
    /// Messages leased by workers right now.
    pub in_flight: u64,
    /// Orders created per second (database).
    pub orders_rate: Option<f64>,
    /// Orders in the database, in all.
    pub orders: Option<u64>,
    /// Orders cancelled for want of payment, in all (database).
    pub cancelled: Option<u64>,
    /// Dead letters waiting for an operator (orders and pay-by topics).
    pub dead_letters: u64,
    /// What could not be read in the last sample, if anything.
    pub errors: Vec<String>,
}

/// A worker on the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    /// Its id.
    pub id: String,
    /// `worker` or `canceller`.
    pub kind: String,
    /// Since its last heartbeat, ms.
    pub beat_age_ms: u64,
    /// Since its loop last made a step, ms.
    pub progress_age_ms: u64,
    /// Messages it finished.
    pub handled: u64,
    /// Heartbeat fresh and not stopped.
    pub alive: bool,
    /// Stopped cleanly.
    pub stopped: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    at_ms: u64,
    requests: u64,
    outcomes: [u64; OUTCOMES.len()],
    /// None when the queue could not be read (then no rate is computed from it).
    finished: Option<u64>,
    enqueued: Option<u64>,
    orders: Option<u64>,
}

/// Outcomes counted, in the order of [`outcome_counts`].
const OUTCOMES: [&str; 8] = [
    "accepted",
    "sold_out",
    "tokens_exhausted",
    "already_bought",
    "throttled",
    "bad_token",
    "not_started",
    "unavailable",
];

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

#[derive(Debug, Default)]
struct Inner {
    history: VecDeque<Point>,
    last: Option<Totals>,
    current: Current,
    workers: Vec<WorkerView>,
}

/// The sampled figures and their history.
#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<Inner>,
    /// One sample at a time, so rates are always taken over a real interval.
    sampling: tokio::sync::Mutex<()>,
    watched_at_ms: AtomicU64,
}

/// `GET /admin/api/live`'s body.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The server's clock.
    pub now_ms: u64,
    /// Latest figures.
    pub current: Current,
    /// Points after `since_ms`, oldest first.
    pub history: Vec<Point>,
    /// Workers, freshest heartbeat first.
    pub workers: Vec<WorkerView>,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that someone is watching (the database is sampled for a while).
    pub fn watched(&self, now_ms: u64) {
        self.watched_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When someone last looked, ms since the epoch.
    pub fn watched_at_ms(&self) -> u64 {
        self.watched_at_ms.load(Ordering::Relaxed)
    }

    fn is_watched(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.watched_at_ms.load(Ordering::Relaxed)) <= WATCH_WINDOW_MS
    }

    /// The figures, with the history after `since_ms`.
    pub fn snapshot(&self, since_ms: u64) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            now_ms: now_ms(),
            current: inner.current.clone(),
            history: inner
                .history
                .iter()
                .filter(|p| p.t_ms > since_ms)
                .copied()
                .collect(),
            workers: inner.workers.clone(),
        }
    }
}

/// Takes one sample (the gateway's `serve` calls it every second).
pub async fn sample(state: &AppState) {
    sample_at(state, now_ms()).await;
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
        match state.db.workers(WORKERS_SHOWN_MAX).await {
            Ok(list) => {
                workers = Some(
                    list.into_iter()
                        .map(|w| WorkerView {
                            beat_age_ms: now.saturating_sub(w.beat_ms),
                            progress_age_ms: now.saturating_sub(w.progress_ms),
                            alive: w.stopped_ms.is_none()
                                && now.saturating_sub(w.beat_ms) <= HEARTBEAT_STALE_MS,
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
