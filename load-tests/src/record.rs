//! What a flash-crowd run records: the figures the report (JSON, Markdown, SVG plots) and
//! the auditor read. Everything here is plain data, serialisable, comparable across runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One bin of a run's timeline (bin 0 starts when the run starts, before the sale opens;
/// every bin is [`RunRecord::bin_ms`] wide, see [`crate::timeline`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bin {
    /// Where the bin starts, ms since the run started.
    pub t_ms: u64,
    /// Requests answered in this bin (every route).
    pub requests: u64,
    /// Purchase attempts answered in this bin (token and purchase requests).
    pub attempts: u64,
    /// Answers of this bin by outcome (`accepted`, `sold_out`, `throttled`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of the answers of this bin, for the token and purchase routes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency: BTreeMap<String, BinLatency>,
    /// Purchases waiting in the queue (the workers' lag), sampled from the system (about
    /// once a second: bins narrower than that hold it in some bins only).
    pub backlog: Option<u64>,
    /// Purchases enqueued per second, as the system reports it.
    pub enqueued_per_s: Option<f64>,
    /// Purchases drained per second, as the system reports it.
    pub drained_per_s: Option<f64>,
    /// Orders in the database (all statuses), as the system reports it.
    pub orders: Option<u64>,
}

impl Bin {
    /// Where the bin starts, seconds since the run started.
    pub fn t_s(&self) -> f64 {
        self.t_ms as f64 / 1000.0
    }
}

/// Latency of one route's answers in one bin.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BinLatency {
    /// Answers.
    pub count: u64,
    /// Median, ms (within about 5 %).
    pub p50_ms: f64,
    /// 99th percentile, ms (within about 5 %).
    pub p99_ms: f64,
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
    /// Scenario name: the preset's, with the overrides given (`large (users=300000)`).
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
    /// Ms from the sale's opening to the first `sold_out` answer (its arrival).
    pub sold_out_after_ms: Option<u64>,
    /// Ms from the sale's opening to the start of the last purchase attempt that was
    /// accepted. Its unit was reserved after it began and every `sold_out` answer was
    /// decided after the last unit went, so `sold_out_after_ms` is never below this: a
    /// check of the sold-out figure (absent in records written before it existed).
    #[serde(default)]
    pub last_accepted_began_after_ms: Option<u64>,
    /// Ms from the sale's opening until the last ticket resolved (the last order or
    /// rejection was in the database).
    pub last_decision_after_ms: Option<u64>,
    /// Highest backlog seen.
    pub peak_backlog: u64,
    /// Connection errors (the request got no answer).
    pub errors: u64,
    /// Latency by route, then by outcome (`all` for every outcome of the route).
    pub latency: BTreeMap<String, BTreeMap<String, Latency>>,
    /// Width of the timeline's bins, ms (chosen for the run's length:
    /// [`crate::timeline::bin_width_ms`]).
    #[serde(default = "bin_ms_default")]
    pub bin_ms: u64,
    /// The run by bin.
    pub timeline: Vec<Bin>,
    /// The thresholds given (`--threshold`) and whether the run met them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<crate::threshold::Verdict>,
    /// The audit after the run, if one ran.
    pub audit: Option<crate::audit::AuditReport>,
}

fn bin_ms_default() -> u64 {
    1000
}
