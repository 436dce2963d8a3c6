//! The gateway's counters behind `/metrics`: kept as atomics and lock-free histograms on
//! the request path, encoded at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Purchases accepted (202).
    pub accepted: AtomicU64,
    /// Refused: sold out.
    pub sold_out: AtomicU64,
    /// Refused: every purchase token of the sale is live.
    pub tokens_exhausted: AtomicU64,
    /// Refused: already bought.
    pub already_bought: AtomicU64,
    /// Refused: throttled.
    pub throttled: AtomicU64,
    /// Refused: bad, expired, reused or foreign token.
    pub bad_token: AtomicU64,
    /// Refused: not started.
    pub not_started: AtomicU64,
    /// Refused: queue or store unavailable.
    pub unavailable: AtomicU64,
    /// Tokens issued.
    pub tokens_issued: AtomicU64,
    /// Tokens given back after a purchase failed for the system's reasons.
    pub tokens_restored: AtomicU64,
    /// Reservations made.
    pub reservations: AtomicU64,
    /// Reservations released after a failed enqueue.
    pub released: AtomicU64,
    /// Sum of enqueue (durable publish) times, µs.
    pub enqueue_us_sum: AtomicU64,
    /// Request latency by route (index: [`ROUTES`]).
    pub latency: [queue::histogram::AtomicHistogram; ROUTES.len()],
    /// Responses by route and status class (2xx, 4xx, 5xx).
    pub responses: [[AtomicU64; 3]; ROUTES.len()],
}

impl GatewayMetrics {
    /// Records one answered request of route `route` (index into [`ROUTES`]).
    pub fn observe(&self, route: usize, started: std::time::Instant, status: StatusCode) {
        if let Some(h) = self.latency.get(route) {
            h.record_duration(started.elapsed());
        }
        let class = match status.as_u16() {
            0..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        if let Some(c) = self.responses.get(route).and_then(|r| r.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Route labels of the latency and response metrics (the last one catches the rest).
pub const ROUTES: [&str; 9] = [
    "login", "sales", "captcha", "token", "purchase", "ticket", "admin", "health", "other",
];

pub(crate) fn route_index(path: &str) -> usize {
    let label = if path == "/api/login" {
        "login"
    } else if path.ends_with("/captcha") {
        "captcha"
    } else if path.ends_with("/token") {
        "token"
    } else if path.ends_with("/purchase") {
        "purchase"
    } else if path.starts_with("/api/sales") {
        "sales"
    } else if path.starts_with("/api/tickets") {
        "ticket"
    } else if path.starts_with("/admin") {
        "admin"
    } else if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        "health"
    } else {
        "other"
    };
    ROUTES
        .iter()
        .position(|r| *r == label)
        .unwrap_or(ROUTES.len() - 1)
}

/// The counters of in-process order workers and cancellers, for `/metrics`.
#[derive(Debug, Clone)]
pub struct CrewMetrics {
    /// Workers.
    pub workers: Arc<order_worker::worker::WorkerMetrics>,
    /// Cancellers.
    pub cancellers: Arc<order_worker::canceller::CancellerMetrics>,
}
