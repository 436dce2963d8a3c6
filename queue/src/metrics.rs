//! The broker's metrics in the Prometheus text exposition format (version 0.0.4), served
//! over HTTP at `/metrics`.
//!
//! Queue figures (depth, lag, in-flight, redeliveries, dead letters) are read from the
//! engine's stats at scrape time, so they are never stale; rates are left to Prometheus
//! (`rate(queue_messages_published_total[1m])`). The fsync histogram is the engine's own
//! fixed-bucket histogram, exported as a Prometheus histogram with cumulative buckets.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::api::Queue;
use crate::engine::Engine;
use crate::server::BrokerMetrics;

/// What the metrics endpoint reads.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The broker's counters.
    pub broker: Arc<BrokerMetrics>,
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
#[cfg(feature = "http")]
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: MetricsSource,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::Router;
    use axum::routing::get;

    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(source);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(feature = "http")]
async fn scrape(
    axum::extract::State(source): axum::extract::State<MetricsSource>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&source).await,
    )
}

/// A metric family read off a stats struct: name, type, help, getter.
type Family<S> = (&'static str, &'static str, &'static str, fn(&S) -> u64);

/// Escapes a label value (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric. Topics whose stats cannot be read (a race with retention, say)
/// are skipped rather than failing the scrape.
pub async fn render(source: &MetricsSource) -> String {
    let mut out = String::with_capacity(8 << 10);
    let b = &source.broker;
    let counters: [(&str, &str, &str, u64); 9] = [
        (
            "queue_broker_connections_open",
            "gauge",
            "Open client connections.",
            b.connections_open.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_connections_accepted_total",
            "counter",
            "Connections accepted.",
            b.connections_accepted.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_connections_rejected_total",
            "counter",
            "Connections refused at the connection limit.",
            b.connections_rejected.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_protocol_errors_total",
            "counter",
            "Connections closed for a malformed frame or handshake.",
            b.protocol_errors.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_idle_closed_total",
            "counter",
            "Connections closed for idleness.",
            b.idle_closed.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_request_errors_total",
            "counter",
            "Requests answered with a queue error.",
            b.request_errors.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_messages_published_total",
            "counter",
            "Messages confirmed to producers over the broker (duplicates included).",
            b.messages_published.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_messages_delivered_total",
            "counter",
            "Messages handed to consumers by fetches.",
            b.messages_delivered.load(Ordering::Relaxed),
        ),
        (
            "queue_broker_messages_acked_total",
            "counter",
            "Receipts acked by consumers.",
            b.messages_acked.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, v) in counters {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "queue_broker_requests_total",
        "counter",
        "Requests by opcode.",
    );
    for (opcode, c) in b.requests.iter().enumerate() {
        let v = c.load(Ordering::Relaxed);
        if v > 0 {
            let name = crate::proto::op_name(opcode as u8);
            let _ = writeln!(out, "queue_broker_requests_total{{op=\"{name}\"}} {v}");
        }
    }

    let m = source.engine.metrics();
    family(
        &mut out,
        "queue_fsync_duration_seconds",
        "histogram",
        "Duration of the writer's fsync rounds (the data files a round touched, plus a directory when a segment was created).",
    );
    let mut cumulative = 0u64;
    for (i, count) in m.fsync.counts.iter().enumerate() {
        cumulative += count;
        match m.fsync.bounds_us.get(i) {
            Some(bound) => {
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "queue_fsync_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "queue_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "queue_fsync_duration_seconds_sum {}",
        m.fsync.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "queue_fsync_duration_seconds_count {}", m.fsync.count);
    family(
        &mut out,
        "queue_commit_rounds_total",
        "counter",
        "Group-commit rounds of the writer (a write and, under fsync-before-confirm, an fsync; rounds with nothing to write count too).",
    );
    let _ = writeln!(out, "queue_commit_rounds_total {}", m.commit_rounds);
    family(
        &mut out,
        "queue_bytes_written_total",
        "counter",
        "Bytes written to segment files.",
    );
    let _ = writeln!(out, "queue_bytes_written_total {}", m.bytes_written);

    let topics = source.engine.topics().await.unwrap_or_default();
    let mut stats = Vec::with_capacity(topics.len());
    for t in &topics {
        if let Ok(s) = source.engine.stats(t).await {
            stats.push(s);
        }
    }
    let topic_metrics: [Family<crate::TopicStats>; 6] = [
        (
            "queue_topic_next_offset",
            "gauge",
            "Next offset to be assigned.",
            |s| s.next_offset,
        ),
        (
            "queue_topic_retained_bytes",
            "gauge",
            "Bytes in segment files.",
            |s| s.retained_bytes,
        ),
        (
            "queue_topic_delayed_pending",
            "gauge",
            "Delayed messages not yet due.",
            |s| s.delayed_pending,
        ),
        (
            "queue_topic_published_total",
            "counter",
            "Messages published since the broker started.",
            |s| s.published,
        ),
        (
            "queue_topic_duplicates_total",
            "counter",
            "Publishes confirmed as duplicates since the broker started.",
            |s| s.duplicates,
        ),
        (
            "queue_topic_dead_letters_pending",
            "gauge",
            "Dead letters waiting for replay or discard.",
            |s| s.dead_letters_pending,
        ),
    ];
    for (name, kind, help, f) in topic_metrics {
        family(&mut out, name, kind, help);
        for s in &stats {
            let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", label(&s.name), f(s));
        }
    }
    let group_metrics: [Family<crate::GroupStats>; 7] = [
        (
            "queue_group_lag",
            "gauge",
            "Messages the group has not finished.",
            |g| g.lag,
        ),
        (
            "queue_group_depth",
            "gauge",
            "Messages ready to deliver now.",
            |g| g.depth,
        ),
        (
            "queue_group_in_flight",
            "gauge",
            "Messages leased right now.",
            |g| g.in_flight,
        ),
        (
            "queue_group_retry_waiting",
            "gauge",
            "Messages waiting for their retry time.",
            |g| g.retry_waiting,
        ),
        (
            "queue_group_redeliveries_total",
            "counter",
            "Deliveries with attempt > 1.",
            |g| g.redeliveries,
        ),
        (
            "queue_group_acked_total",
            "counter",
            "Messages acked.",
            |g| g.acked,
        ),
        (
            "queue_group_dead_lettered_total",
            "counter",
            "Messages dead-lettered.",
            |g| g.dead_lettered,
        ),
    ];
    for (name, kind, help, f) in group_metrics {
        family(&mut out, name, kind, help);
        for s in &stats {
            for g in &s.groups {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",group=\"{}\"}} {}",
                    label(&s.name),
                    label(&g.name),
                    f(g)
                );
            }
        }
    }
    out
}
