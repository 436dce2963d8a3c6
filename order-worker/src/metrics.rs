//! The crew's counters as Prometheus metrics: [`encode_crew`] writes the workers',
//! cancellers' and heartbeat counters into a `prometheus-client` encoder (the all-in-one
//! gateway's `/metrics` calls it for its in-process crew), and [`serve`] answers
//! `GET /metrics` for the `order-worker` binary (`--metrics ADDR`). Names are those the
//! gateway has always exported (`orders_*`), plus the heartbeat's
//! (`orders_heartbeat_timestamp_seconds`, `orders_heartbeats_total`,
//! `orders_heartbeats_failed_total`), which the alert on stale worker heartbeats reads
//! (deploy/prometheus/rules.yml).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::canceller::CancellerMetrics;
use crate::crew::HeartbeatMetrics;
use crate::worker::WorkerMetrics;

/// The `Content-Type` of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counters of one process's crew.
#[derive(Debug, Clone)]
pub struct CrewCounters {
    /// Its workers'.
    pub workers: Arc<WorkerMetrics>,
    /// Its cancellers'.
    pub cancellers: Arc<CancellerMetrics>,
    /// Its heartbeat task's.
    pub heartbeats: Arc<HeartbeatMetrics>,
}

impl CrewCounters {
    /// The counters of a running crew.
    pub fn of(crew: &crate::crew::Crew) -> Self {
        CrewCounters {
            workers: crew.workers.clone(),
            cancellers: crew.cancellers.clone(),
            heartbeats: crew.heartbeats.clone(),
        }
    }

    /// The exposition of these counters alone, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CrewCollector(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }
}

/// Reads the counters at scrape time.
#[derive(Debug)]
struct CrewCollector(CrewCounters);

impl Collector for CrewCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        encode_crew(&mut enc, &c.workers, &c.cancellers, Some(&c.heartbeats))
    }
}

/// One counter without labels (`name` without its `_total`, which the encoder appends).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// The counters of the workers and cancellers of one process, and of its heartbeats when
/// given.
pub fn encode_crew(
    enc: &mut DescriptorEncoder,
    w: &WorkerMetrics,
    c: &CancellerMetrics,
    heartbeats: Option<&HeartbeatMetrics>,
) -> Result<(), std::fmt::Error> {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "orders_purchases_finished",
            "Purchase messages decided and acked.",
            get(&w.messages),
        ),
        ("orders_created", "Orders created.", get(&w.ordered)),
        (
            "orders_rejected_sold_out",
            "Purchases rejected: sold out in the database.",
            get(&w.rejected_sold_out),
        ),
        (
            "orders_rejected_already_bought",
            "Purchases rejected: the buyer already holds the sale's per-person limit.",
            get(&w.rejected_already_bought),
        ),
        (
            "orders_rejected_no_such_sale",
            "Purchases rejected: unknown sale.",
            get(&w.rejected_no_such_sale),
        ),
        (
            "orders_redelivered",
            "Deliveries that found their decision already made.",
            get(&w.redelivered),
        ),
        (
            "orders_malformed",
            "Malformed purchase messages dead-lettered.",
            get(&w.malformed),
        ),
        (
            "orders_nacked",
            "Purchase messages given back after failures.",
            get(&w.nacked),
        ),
        (
            "orders_db_retries",
            "Batch transactions retried after transient errors.",
            get(&w.db_retries),
        ),
        ("orders_batches", "Batches decided.", get(&w.batches)),
        (
            "orders_cancelled",
            "Orders cancelled by their pay-by message.",
            get(&c.cancelled),
        ),
        (
            "orders_swept",
            "Overdue orders cancelled by the sweep.",
            get(&c.swept),
        ),
        (
            "orders_units_released",
            "Units released in the stock store (rejections and cancellations).",
            get(&w.released) + get(&c.released),
        ),
    ] {
        counter(enc, name, help, v)?;
    }
    if let Some(h) = heartbeats {
        counter(
            enc,
            "orders_heartbeats",
            "Heartbeats written to the workers table (each with every member's row).",
            get(&h.written),
        )?;
        counter(
            enc,
            "orders_heartbeats_failed",
            "Heartbeats that failed (the next one tries again).",
            get(&h.failed),
        )?;
        enc.encode_descriptor(
            "orders_heartbeat_timestamp_seconds",
            "When the last heartbeat was written, seconds since the Unix epoch (0 before the first).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(get(&h.last_written_ms) as f64 / 1e3))?;
    }
    Ok(())
}

/// Serves `GET /metrics` (the crew's counters) on `listener` until `shutdown` completes;
/// every other path is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: CrewCounters,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE as CT;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let counters = counters.clone();
            async move { ([(CT, CONTENT_TYPE)], counters.encode()) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crew_exposition_has_its_counters_and_the_heartbeat_time() {
        let counters = CrewCounters {
            workers: Arc::new(WorkerMetrics::default()),
            cancellers: Arc::new(CancellerMetrics::default()),
            heartbeats: Arc::new(HeartbeatMetrics::default()),
        };
        counters.workers.ordered.store(3, Ordering::Relaxed);
        counters.heartbeats.written.store(2, Ordering::Relaxed);
        counters
            .heartbeats
            .last_written_ms
            .store(1_700_000_000_500, Ordering::Relaxed);
        let text = counters.encode();
        for line in [
            "# TYPE orders_created_total counter",
            "orders_created_total 3",
            "orders_heartbeats_total 2",
            "orders_heartbeats_failed_total 0",
            "# TYPE orders_heartbeat_timestamp_seconds gauge",
            "orders_heartbeat_timestamp_seconds 1700000000.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
