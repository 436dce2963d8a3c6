//! The dashboard's figures and their history (data only; [`crate::live`] samples them).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
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
    /// Purchase and token requests per second at this gateway, by the chart's outcome
    /// groups ([`crate::live::OutcomeRates`]).
    pub outcomes: crate::live::OutcomeRates,
    /// Median latency of the purchases answered at this gateway since the last point, ms
    /// (`None`: none answered).
    pub purchase_p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub purchase_p99_ms: Option<f64>,
}

/// The latest figures.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
pub(crate) struct Totals {
    pub(crate) at_ms: u64,
    pub(crate) requests: u64,
    pub(crate) outcomes: [u64; OUTCOMES.len()],
    /// None when the queue could not be read (then no rate is computed from it).
    pub(crate) finished: Option<u64>,
    pub(crate) enqueued: Option<u64>,
    pub(crate) orders: Option<u64>,
    /// The purchase route's latency histogram counts ([`crate::live`] takes percentiles of
    /// the difference between two samples).
    pub(crate) purchase_latency: [u64; crate::live::LATENCY_BUCKETS],
}

/// Outcomes counted, in the order of `live::outcome_counts`.
pub(crate) const OUTCOMES: [&str; 9] = [
    "accepted",
    "sold_out",
    "tokens_exhausted",
    "already_bought",
    "throttled",
    "bad_token",
    "not_started",
    "unavailable",
    "sale_paused",
];

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) history: VecDeque<Point>,
    pub(crate) last: Option<Totals>,
    pub(crate) current: Current,
    pub(crate) workers: Vec<WorkerView>,
}

/// The sampled figures and their history.
#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<Inner>,
    /// One sample at a time, so rates are always taken over a real interval.
    pub(crate) sampling: tokio::sync::Mutex<()>,
    watched_at_ms: AtomicU64,
}

/// `GET /admin/api/live`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
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

    pub(crate) fn is_watched(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.watched_at_ms.load(Ordering::Relaxed)) <= WATCH_WINDOW_MS
    }

    /// The figures as of `now_ms`, with the history after `since_ms`.
    pub fn snapshot(&self, since_ms: u64, now_ms: u64) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            now_ms,
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
