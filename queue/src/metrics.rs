//! The broker's metrics in the Prometheus text exposition format (version 0.0.4), encoded
//! by `prometheus-client` and served over HTTP at `/metrics` (feature `http`), next to the
//! readiness check `/readyz` (503 once the engine's writer failed).
//!
//! Every figure already lives in the engine or the broker (atomics, stats), so nothing is
//! kept twice: one [`Collector`] registered once reads them at scrape time and encodes each
//! family with its HELP and TYPE. Queue figures (depth, lag, in-flight, redeliveries, dead
//! letters) are therefore never stale; rates are left to Prometheus
//! (`rate(queue_broker_messages_published_total[1m])`). The fsync histogram is the
//! engine's own fixed-bucket histogram, exported as a Prometheus histogram.
//!
//! Exposed names are part of the interface (dashboards and alerts use them). The encoder
//! appends `_total` to every counter and the unit to a family registered with one, so the
//! tables below give counters without `_total`, and the fsync histogram as
//! `queue_fsync_duration` with unit seconds; a test checks the exact exposed names.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::api::{GroupStats, TopicStats};
use crate::engine::Engine;
use crate::server::BrokerMetrics;

/// The `Content-Type` of what [`render`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the metrics endpoint reads.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The broker's counters.
    pub broker: Arc<BrokerMetrics>,
}

/// A registry holding the queue's metrics (and nothing else).
pub fn registry(source: MetricsSource) -> Registry {
    let mut registry = Registry::default();
    register(&mut registry, source);
    registry
}

/// Adds the queue's metrics to `registry`, for a process that exposes them next to its own.
pub fn register(registry: &mut Registry, source: MetricsSource) {
    registry.register_collector(Box::new(QueueCollector { source }));
}

/// Encodes every metric of `registry` as Prometheus text. Topics whose stats cannot be
/// read (a race with retention, say) are skipped rather than failing the scrape. Writing
/// to a `String` cannot fail, so an error can only come from a collector.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(8 << 10);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves `/metrics` and `/readyz` on `listener` until `shutdown` completes.
///
/// `/readyz` answers `200 ready` while the engine takes writes, and `503` with the reason
/// once its writer failed (or it was closed): a broker whose storage failed must be taken
/// out of service, and `queue serve` exits non-zero on it (see README, "The broker").
#[cfg(feature = "http")]
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: MetricsSource,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::Router;
    use axum::routing::get;

    let engine = source.engine.clone();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry(source)))
        .route("/readyz", get(move || readyz(engine.clone())));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `200 ready`, or `503` and why not.
#[cfg(feature = "http")]
async fn readyz(engine: Arc<Engine>) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    match engine.failure() {
        None if !engine.is_closed() => (StatusCode::OK, "ready\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: closed\n").into_response(),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

#[cfg(feature = "http")]
async fn scrape(
    axum::extract::State(registry): axum::extract::State<Arc<Registry>>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    match render(&registry) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Whether a family is a counter (only ever goes up; `_total` is appended) or a gauge.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        }
    }

    /// Encodes one sample of this kind.
    fn encode(self, value: u64, encoder: MetricEncoder<'_>) -> fmt::Result {
        match self {
            Kind::Counter => ConstCounter::new(value).encode(encoder),
            Kind::Gauge => ConstGauge::new(value).encode(encoder),
        }
    }
}

/// A metric family read off a struct: base name, kind, help, getter.
type Family<S> = (&'static str, Kind, &'static str, fn(&S) -> u64);

/// The broker's own counters, one unlabelled sample each.
const BROKER_FAMILIES: [Family<BrokerMetrics>; 15] = [
    (
        "queue_broker_connections_open",
        Kind::Gauge,
        "Open client connections.",
        |b| load(&b.connections_open),
    ),
    (
        "queue_broker_connections_accepted",
        Kind::Counter,
        "Connections accepted.",
        |b| load(&b.connections_accepted),
    ),
    (
        "queue_broker_connections_rejected",
        Kind::Counter,
        "Connections refused at the connection limit.",
        |b| load(&b.connections_rejected),
    ),
    (
        "queue_broker_protocol_errors",
        Kind::Counter,
        "Connections closed for a malformed frame or handshake.",
        |b| load(&b.protocol_errors),
    ),
    (
        "queue_broker_idle_closed",
        Kind::Counter,
        "Connections closed for idleness.",
        |b| load(&b.idle_closed),
    ),
    (
        "queue_broker_request_errors",
        Kind::Counter,
        "Requests answered with a queue error.",
        |b| load(&b.request_errors),
    ),
    (
        "queue_broker_messages_published",
        Kind::Counter,
        "Messages confirmed to producers over the broker (duplicates included).",
        |b| load(&b.messages_published),
    ),
    (
        "queue_broker_messages_delivered",
        Kind::Counter,
        "Messages handed to consumers by fetches.",
        |b| load(&b.messages_delivered),
    ),
    (
        "queue_broker_messages_acked",
        Kind::Counter,
        "Receipts acked by consumers.",
        |b| load(&b.messages_acked),
    ),
    (
        "queue_broker_auth_succeeded",
        Kind::Counter,
        "Connections that proved the broker's secret.",
        |b| load(&b.auth_succeeded),
    ),
    (
        "queue_broker_auth_failed",
        Kind::Counter,
        "Wrong proofs of the broker's secret.",
        |b| load(&b.auth_failed),
    ),
    (
        "queue_broker_auth_throttled",
        Kind::Counter,
        "Proofs refused unchecked: too many wrong ones from their address.",
        |b| load(&b.auth_throttled),
    ),
    (
        "queue_broker_topic_creations_refused",
        Kind::Counter,
        "Requests refused because they would create a topic past the creation rate.",
        |b| load(&b.topic_creations_refused),
    ),
    (
        "queue_broker_reply_reserved_bytes",
        Kind::Gauge,
        "Response bytes reserved by reads across all connections now.",
        |b| b.replies.reserved(),
    ),
    (
        "queue_broker_reply_budget_bytes",
        Kind::Gauge,
        "The broker-wide reply budget (--max-reply-bytes).",
        |b| b.replies.max(),
    ),
];

/// Per topic, labelled `topic`.
const TOPIC_FAMILIES: [Family<TopicStats>; 6] = [
    (
        "queue_topic_next_offset",
        Kind::Gauge,
        "Next offset to be assigned.",
        |s| s.next_offset,
    ),
    (
        "queue_topic_retained_bytes",
        Kind::Gauge,
        "Bytes in segment files.",
        |s| s.retained_bytes,
    ),
    (
        "queue_topic_delayed_pending",
        Kind::Gauge,
        "Delayed messages not yet due.",
        |s| s.delayed_pending,
    ),
    (
        "queue_topic_published",
        Kind::Counter,
        "Messages published since the broker started.",
        |s| s.published,
    ),
    (
        "queue_topic_duplicates",
        Kind::Counter,
        "Publishes confirmed as duplicates since the broker started.",
        |s| s.duplicates,
    ),
    (
        "queue_topic_dead_letters_pending",
        Kind::Gauge,
        "Dead letters waiting for replay or discard.",
        |s| s.dead_letters_pending,
    ),
];

/// Per consumer group, labelled `topic` and `group` (in that order).
const GROUP_FAMILIES: [Family<GroupStats>; 7] = [
    (
        "queue_group_lag",
        Kind::Gauge,
        "Messages the group has not finished.",
        |g| g.lag,
    ),
    (
        "queue_group_depth",
        Kind::Gauge,
        "Messages ready to deliver now.",
        |g| g.depth,
    ),
    (
        "queue_group_in_flight",
        Kind::Gauge,
        "Messages leased right now.",
        |g| g.in_flight,
    ),
    (
        "queue_group_retry_waiting",
        Kind::Gauge,
        "Messages waiting for their retry time.",
        |g| g.retry_waiting,
    ),
    (
        "queue_group_redeliveries",
        Kind::Counter,
        "Deliveries with attempt > 1.",
        |g| g.redeliveries,
    ),
    ("queue_group_acked", Kind::Counter, "Messages acked.", |g| {
        g.acked
    }),
    (
        "queue_group_dead_lettered",
        Kind::Counter,
        "Messages dead-lettered.",
        |g| g.dead_lettered,
    ),
];

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Encodes one family with one sample per label set (none at all is fine: the family's
/// HELP and TYPE are still written, so a scrape always shows every name).
fn labelled<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, kind, help): (&str, Kind, &str),
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind.metric_type())?;
    for (labels, value) in samples {
        kind.encode(value, family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one family with a single unlabelled sample.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    (name, kind, help): (&str, Kind, &str),
    value: u64,
) -> fmt::Result {
    kind.encode(
        value,
        encoder.encode_descriptor(name, help, None, kind.metric_type())?,
    )
}

/// Reads the engine and the broker at every scrape.
#[derive(Debug)]
struct QueueCollector {
    source: MetricsSource,
}

impl QueueCollector {
    fn encode_broker(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let b = &*self.source.broker;
        for (name, kind, help, get) in BROKER_FAMILIES {
            single(encoder, (name, kind, help), get(b))?;
        }
        // Only opcodes seen so far: 64 mostly-zero series would be noise.
        let requests = b.requests.iter().enumerate().filter_map(|(opcode, c)| {
            let v = load(c);
            let opcode = u8::try_from(opcode).ok()?;
            (v > 0).then(|| ([("op", crate::proto::op_name(opcode))], v))
        });
        labelled(
            encoder,
            (
                "queue_broker_requests",
                Kind::Counter,
                "Requests by opcode.",
            ),
            requests,
        )
    }

    fn encode_writer(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let m = self.source.engine.metrics();
        // Per-bucket counts with their upper bounds in seconds; the last count is the
        // overflow bucket (`+Inf`). The encoder makes the buckets cumulative.
        let buckets: Vec<(f64, u64)> = m
            .fsync
            .counts
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let le = m
                    .fsync
                    .bounds_us
                    .get(i)
                    .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                (le, count)
            })
            .collect();
        encoder
            .encode_descriptor(
                "queue_fsync_duration",
                "Duration of the writer's fsync rounds (the data files a round touched, plus a directory when a segment was created).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                m.fsync.sum_us as f64 / 1e6,
                m.fsync.count,
                &buckets,
                None,
            )?;
        single(
            encoder,
            (
                "queue_commit_rounds",
                Kind::Counter,
                "Group-commit rounds of the writer (a write and, under fsync-before-confirm, an fsync; rounds with nothing to write count too).",
            ),
            m.commit_rounds,
        )?;
        single(
            encoder,
            (
                "queue_bytes_written",
                Kind::Counter,
                "Bytes written to segment files.",
            ),
            m.bytes_written,
        )
    }

    fn encode_topics(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let engine = &self.source.engine;
        let stats: Vec<TopicStats> = engine
            .topic_names()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| engine.topic_stats(t).ok())
            .collect();
        for (name, kind, help, get) in TOPIC_FAMILIES {
            let samples = stats.iter().map(|s| ([("topic", s.name.as_str())], get(s)));
            labelled(encoder, (name, kind, help), samples)?;
        }
        for (name, kind, help, get) in GROUP_FAMILIES {
            let samples = stats.iter().flat_map(|s| {
                s.groups.iter().map(|g| {
                    (
                        [("topic", s.name.as_str()), ("group", g.name.as_str())],
                        get(g),
                    )
                })
            });
            labelled(encoder, (name, kind, help), samples)?;
        }
        Ok(())
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_broker(&mut encoder)?;
        self.encode_writer(&mut encoder)?;
        self.encode_topics(&mut encoder)
    }
}
