//! What a flash-crowd run records: the figures the report (JSON, Markdown, SVG plots) and
//! the auditor read. Everything here is plain data, serialisable, comparable across runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One second of a run (second 0 starts when the run starts, before the sale opens).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Seconds since the run started.
    pub t_s: u32,
    /// Requests answered in this second (every route).
    pub requests: u64,
    /// Purchase attempts answered in this second (token and purchase requests).
    pub attempts: u64,
    /// Answers of this second by outcome (`accepted`, `sold_out`, `throttled`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Purchases waiting in the queue (the workers' lag), sampled from the system.
    pub backlog: Option<u64>,
    /// Purchases enqueued per second, as the system reports it.
    pub enqueued_per_s: Option<f64>,
    /// Purchases drained per second, as the system reports it.
    pub drained_per_s: Option<f64>,
    /// Orders in the database (all statuses), as the system reports it.
    pub orders: Option<u64>,
}

/// Latency of one route and outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Answers measured.
    pub count: u64,
    /// Quantiles, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Histogram on a log scale: (upper bound ms, answers in the bucket), ascending.
    pub buckets: Vec<(f64, u64)>,
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Scenario name.
    pub scenario: String,
    /// The scenario's settings, as run.
    pub settings: serde_json::Value,
    /// The system under test (`http://127.0.0.1:8080`, `all-in-one (sqlite)`, …).
    pub target: String,
    /// When the run started, ms since the epoch.
    pub started_at_ms: u64,
    /// When the sale opened, ms after the run started.
    pub sale_opened_after_ms: u64,
    /// The sale.
    pub sale_id: u64,
    /// Units on sale.
    pub units: u64,
    /// Simulated people (humans and bots).
    pub users: u64,
    /// Purchase attempts sent (token and purchase requests, humans and bots).
    pub attempts: u64,
    /// Requests sent in all (every route).
    pub requests: u64,
    /// Wall time of the attempt phase, ms (from the sale's opening to the last attempt's
    /// answer).
    pub attempt_phase_ms: u64,
    /// Purchase attempts per second over the attempt phase.
    pub attempts_per_s: f64,
    /// Answers by outcome over the whole run.
    pub outcomes: BTreeMap<String, u64>,
    /// Purchases accepted (202 with a ticket).
    pub accepted: u64,
    /// Accepted purchases that ended as orders.
    pub ordered: u64,
    /// Accepted purchases rejected by the workers (with their reasons).
    pub rejected: BTreeMap<String, u64>,
    /// Accepted purchases whose ticket did not resolve before the run's deadline.
    pub unresolved: u64,
    /// Orders paid by the simulated buyers.
    pub paid: u64,
    /// Bots' requests refused, and accepted (must be 0).
    pub bots_refused: u64,
    /// Bots' purchases the system accepted (a failure of the defences).
    pub bots_accepted: u64,
    /// Ms from the sale's opening to the first `sold_out` answer.
    pub sold_out_after_ms: Option<u64>,
    /// Ms from the sale's opening until the last ticket resolved (the last order or
    /// rejection was in the database).
    pub last_decision_after_ms: Option<u64>,
    /// Highest backlog seen.
    pub peak_backlog: u64,
    /// Connection errors (the request got no answer).
    pub errors: u64,
    /// Latency by route, then by outcome (`all` for every outcome of the route).
    pub latency: BTreeMap<String, BTreeMap<String, Latency>>,
    /// Per-second figures.
    pub timeline: Vec<Second>,
    /// The audit after the run, if one ran.
    pub audit: Option<crate::audit::AuditReport>,
}
