//! The gateway's counters behind `/metrics`: kept as atomics and lock-free histograms on
//! the request path, encoded at scrape time through `prometheus-client`.
//!
//! Why `prometheus-client` (the official Rust client of the Prometheus project): it writes
//! the exposition format (HELP, TYPE, label escaping, bucket series, float formatting as
//! Prometheus's own Go clients write them) so that we do not, and its [`Collector`] lets
//! us keep our own storage: the request path stays as cheap as before (relaxed atomic adds
//! and the lock-free [`queue::histogram::AtomicHistogram`]), and only a scrape reads and
//! encodes them. Its own `Histogram` takes a lock per observation, which the hot path of a
//! flash sale should not pay; its counters would do, but one collector reading our atomics
//! keeps every figure in one place (the dashboard's sampler reads the same atomics).
//!
//! Exposition: the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]). Names, labels and
//! buckets are today's. Counters are registered without their `_total`, which the encoder
//! appends. Two details differ from the hand-written text this replaced: floats are written
//! as the Go clients write them (`0.5`, `1.0`; the first bucket's `le` is `5e-05`, the same
//! number as the former `0.00005`), and `gateway_enqueue_seconds_sum` (a running sum whose
//! name has no `_total`) is the sum of the histogram `gateway_enqueue_seconds` (first a
//! gauge, which `promtool check metrics` refuses under a `_sum` name).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Status classes of `gateway_responses_total` (index: the second one of
/// [`GatewayMetrics::responses`]).
pub const CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

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
    /// Refused: an operator paused the sale (`409 sale_paused`).
    pub sale_paused: AtomicU64,
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
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections closed at once because [`crate::config::ServeLimits::max_connections`]
    /// were open.
    pub connections_refused: AtomicU64,
    /// Requests from a trusted proxy whose `X-Forwarded-For` could not be used (the peer's
    /// address was counted instead; [`crate::proxy`]).
    pub forwarded_unusable: AtomicU64,
    /// Requests refused with 421 `misdirected`: a session without its route cookie.
    pub misdirected: AtomicU64,
    /// Request latency by route (index: [`ROUTES`]).
    pub latency: [queue::histogram::AtomicHistogram; ROUTES.len()],
    /// Durable enqueue times (`gateway_enqueue_seconds`; its sum is
    /// [`GatewayMetrics::enqueue_us_sum`]).
    pub enqueue: queue::histogram::AtomicHistogram,
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
    /// The crew's heartbeats (`orders_heartbeat_timestamp_seconds`).
    pub heartbeats: Arc<order_worker::crew::HeartbeatMetrics>,
}

/// The registry behind `/metrics`: one collector reading the gateway's counters, the stock
/// reconciliation's resets and, once set, the in-process crew's counters.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    crew: Arc<OnceLock<CrewMetrics>>,
}

impl Exposition {
    /// The exposition of these counters.
    pub fn new(gateway: Arc<GatewayMetrics>, stock_resets: Arc<AtomicU64>) -> Self {
        let crew = Arc::new(OnceLock::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(GatewayCollector {
            gateway,
            stock_resets,
            crew: crew.clone(),
        }));
        Exposition { registry, crew }
    }

    /// Adds the counters of the order workers and cancellers of this process (once).
    pub fn set_crew(&self, crew: CrewMetrics) {
        let _ = self.crew.set(crew);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }
}

/// Reads the counters at scrape time.
#[derive(Debug)]
struct GatewayCollector {
    gateway: Arc<GatewayMetrics>,
    stock_resets: Arc<AtomicU64>,
    crew: Arc<OnceLock<CrewMetrics>>,
}

/// One counter without labels (`name` without its `_total`).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.gateway;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let outcomes = [
            ("accepted", &m.accepted),
            ("sold_out", &m.sold_out),
            ("tokens_exhausted", &m.tokens_exhausted),
            ("already_bought", &m.already_bought),
            ("throttled", &m.throttled),
            ("bad_token", &m.bad_token),
            ("not_started", &m.not_started),
            ("unavailable", &m.unavailable),
            ("sale_paused", &m.sale_paused),
        ];
        {
            let mut family = enc.encode_descriptor(
                "gateway_purchases",
                "Purchase and token requests by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, c) in outcomes {
                family
                    .encode_family(&[("outcome", outcome)])?
                    .encode_counter::<NoLabelSet, _, u64>(&get(c), None)?;
            }
        }
        counter(
            &mut enc,
            "gateway_tokens_issued",
            "Purchase tokens issued.",
            get(&m.tokens_issued),
        )?;
        counter(
            &mut enc,
            "gateway_tokens_restored",
            "Purchase tokens given back after a purchase failed for the system's reasons.",
            get(&m.tokens_restored),
        )?;
        counter(
            &mut enc,
            "gateway_reservations",
            "Units reserved.",
            get(&m.reservations),
        )?;
        counter(
            &mut enc,
            "gateway_released",
            "Reservations released after a failed enqueue.",
            get(&m.released),
        )?;
        // A histogram, so that its `_sum` (the series this metric always had) is one that
        // `promtool check metrics` accepts: a gauge may not end in `_sum`.
        let snap = m.enqueue.snapshot();
        enc.encode_descriptor(
            "gateway_enqueue_seconds",
            "Time spent in durable enqueues.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            get(&m.enqueue_us_sum) as f64 / 1e6,
            snap.count,
            &buckets_of(&snap),
            None,
        )?;
        counter(
            &mut enc,
            "gateway_stock_resets",
            "Sales whose stock was reset to the orders database.",
            get(&self.stock_resets),
        )?;
        enc.encode_descriptor(
            "gateway_connections_open",
            "Client connections open.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(get(&m.connections_open) as i64))?;
        counter(
            &mut enc,
            "gateway_connections_refused",
            "Client connections closed at once: the connection cap was reached.",
            get(&m.connections_refused),
        )?;
        counter(
            &mut enc,
            "gateway_forwarded_unusable",
            "Requests from a trusted proxy whose X-Forwarded-For could not be used (the proxy's address counted instead).",
            get(&m.forwarded_unusable),
        )?;
        counter(
            &mut enc,
            "gateway_misdirected",
            "Requests refused with 421: a valid session without its route cookie.",
            get(&m.misdirected),
        )?;
        if let Some(crew) = self.crew.get() {
            encode_crew(&mut enc, crew)?;
        }
        {
            let mut family = enc.encode_descriptor(
                "gateway_responses",
                "Responses by route and status class.",
                None,
                MetricType::Counter,
            )?;
            for (i, route) in ROUTES.iter().enumerate() {
                for (j, class) in CLASSES.iter().enumerate() {
                    family
                        .encode_family(&[("route", *route), ("class", *class)])?
                        .encode_counter::<NoLabelSet, _, u64>(&get(&m.responses[i][j]), None)?;
                }
            }
        }
        let mut family = enc.encode_descriptor(
            "gateway_request_duration_seconds",
            "Request latency by route.",
            None,
            MetricType::Histogram,
        )?;
        for (i, route) in ROUTES.iter().enumerate() {
            let snap = m.latency[i].snapshot();
            // Per-bucket counts (the encoder accumulates them), the last one above every
            // bound (`+Inf`).
            let buckets: Vec<(f64, u64)> = snap
                .counts
                .iter()
                .enumerate()
                .map(|(k, count)| {
                    let le = snap
                        .bounds_us
                        .get(k)
                        .map_or(f64::INFINITY, |b| *b as f64 / 1e6);
                    (le, *count)
                })
                .collect();
            family
                .encode_family(&[("route", *route)])?
                .encode_histogram::<NoLabelSet>(
                    snap.sum_us as f64 / 1e6,
                    snap.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// A histogram's buckets for the encoder: per-bucket counts (the encoder accumulates them)
/// with their upper bounds in seconds, the last one above every bound (`+Inf`).
fn buckets_of(snap: &queue::HistogramSnapshot) -> Vec<(f64, u64)> {
    snap.counts
        .iter()
        .enumerate()
        .map(|(k, count)| {
            let le = snap
                .bounds_us
                .get(k)
                .map_or(f64::INFINITY, |b| *b as f64 / 1e6);
            (le, *count)
        })
        .collect()
}

/// The counters of the order workers and cancellers running in this process (their names
/// are the `order-worker` binary's: [`order_worker::metrics::encode_crew`]).
fn encode_crew(enc: &mut DescriptorEncoder, crew: &CrewMetrics) -> Result<(), std::fmt::Error> {
    order_worker::metrics::encode_crew(enc, &crew.workers, &crew.cancellers, Some(&crew.heartbeats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line is `name{labels} value` with a float value, under a `# TYPE` of
    /// its family: what a Prometheus text-format parser needs.
    fn parse(text: &str) -> Vec<(String, f64)> {
        let mut typed: Vec<String> = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.push(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = value.parse().expect("a float value");
            let name = series.split('{').next().expect("name");
            assert!(
                typed.iter().any(|t| name == t
                    || name
                        .strip_prefix(t.as_str())
                        .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) })),
                "{name} has no TYPE line before it"
            );
            samples.push((series.to_string(), value));
        }
        samples
    }

    #[test]
    fn the_exposition_keeps_names_labels_and_buckets() {
        let m = Arc::new(GatewayMetrics::default());
        let resets = Arc::new(AtomicU64::new(3));
        m.accepted.fetch_add(2, Ordering::Relaxed);
        m.tokens_issued.fetch_add(5, Ordering::Relaxed);
        m.enqueue_us_sum.fetch_add(1_500_000, Ordering::Relaxed);
        m.enqueue.record(1_500_000);
        m.observe(4, std::time::Instant::now(), StatusCode::ACCEPTED);
        let exposition = Exposition::new(m, resets);
        let text = exposition.encode();
        for line in [
            "# HELP gateway_purchases_total Purchase and token requests by outcome.",
            "# TYPE gateway_purchases_total counter",
            "gateway_purchases_total{outcome=\"accepted\"} 2",
            "gateway_purchases_total{outcome=\"unavailable\"} 0",
            "gateway_tokens_issued_total 5",
            "gateway_tokens_restored_total 0",
            "gateway_reservations_total 0",
            "gateway_released_total 0",
            "gateway_enqueue_seconds_sum 1.5",
            "# TYPE gateway_enqueue_seconds histogram",
            "gateway_enqueue_seconds_count 1",
            "gateway_enqueue_seconds_bucket{le=\"+Inf\"} 1",
            "gateway_stock_resets_total 3",
            "# TYPE gateway_connections_open gauge",
            "gateway_connections_open 0",
            "gateway_connections_refused_total 0",
            "gateway_forwarded_unusable_total 0",
            "gateway_misdirected_total 0",
            "gateway_responses_total{route=\"purchase\",class=\"2xx\"} 1",
            "gateway_responses_total{route=\"other\",class=\"5xx\"} 0",
            "# TYPE gateway_request_duration_seconds histogram",
            "gateway_request_duration_seconds_bucket{route=\"purchase\",le=\"+Inf\"} 1",
            "gateway_request_duration_seconds_bucket{route=\"purchase\",le=\"1\"} 1",
            "gateway_request_duration_seconds_count{route=\"purchase\"} 1",
            "gateway_request_duration_seconds_count{route=\"login\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let samples = parse(&text);
        // One series per outcome, per route and class, and 14 buckets + sum + count per route
        // and for the enqueue histogram (the first 2: connections open and refused; the second: forwarded headers the
        // gateway could not use, and 421s).
        assert_eq!(
            samples.len(),
            9 + 4 + (14 + 2) + 1 + 2 + 2 + ROUTES.len() * 3 + ROUTES.len() * (14 + 2)
        );
        assert!(!text.contains("orders_"), "no crew, no crew counters");
        // The crew's counters once there is one.
        exposition.set_crew(CrewMetrics {
            workers: Arc::default(),
            cancellers: Arc::default(),
            heartbeats: Arc::default(),
        });
        let text = exposition.encode();
        for line in [
            "# TYPE orders_created_total counter",
            "orders_created_total 0",
            "orders_units_released_total 0",
            "orders_swept_total 0",
            "orders_heartbeat_timestamp_seconds 0.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        parse(&text);
    }
}
