//! `Engine::metrics` (writer figures) and the Prometheus text of `queue::metrics`. (`peek`,
//! the same on every backend, is tested in the conformance suite.)

use queue::format::SEGMENT_HEADER_LEN;
use queue::{Durability, FetchOptions, Message, Queue};

use crate::support::{group, setup, setup_with};

fn fetch_opts(n: usize) -> FetchOptions {
    FetchOptions {
        max_messages: n,
        lease_ms: Some(1_000),
        wait_ms: 0,
    }
}

#[tokio::test]
async fn metrics_count_fsync_rounds_and_bytes_written() {
    let (_dir, _clock, q) = setup();
    let m0 = q.metrics();
    assert_eq!(m0.fsync.bounds_us.len() + 1, m0.fsync.counts.len());
    assert_eq!(
        (m0.fsync.count, m0.commit_rounds, m0.bytes_written),
        (0, 0, 0)
    );

    q.publish("t", Message::new(vec![7u8; 1000]))
        .await
        .expect("publish");
    let m1 = q.metrics();
    assert_eq!(m1.fsync.count, 1, "{m1:?}");
    assert_eq!(m1.commit_rounds, 1, "{m1:?}");
    assert!(m1.bytes_written >= 1000, "{m1:?}");

    // One at a time, every publish is a round of its own with one fsync.
    for i in 0..10u8 {
        q.publish("t", Message::new(vec![i; 100]))
            .await
            .expect("publish");
    }
    let m2 = q.metrics();
    assert_eq!(m2.fsync.count, 11, "{m2:?}");
    assert_eq!(m2.commit_rounds, 11, "{m2:?}");
    assert!(m2.bytes_written >= m1.bytes_written + 10 * 100, "{m2:?}");
    assert_eq!(m2.fsync.counts.iter().sum::<u64>(), m2.fsync.count);
    assert!(m2.fsync.sum_us >= m1.fsync.sum_us);

    // Everything in the segment files came through the writer, except the header of each
    // topic's first segment ("t" and "t.dlq"), written when the topic was created.
    let retained = q.stats("t").await.expect("stats").retained_bytes
        + q.stats("t.dlq").await.expect("stats").retained_bytes;
    assert_eq!(
        m2.bytes_written,
        retained - 2 * SEGMENT_HEADER_LEN as u64,
        "{m2:?}"
    );

    // A repeated ack only waits for earlier writes (a round with nothing to write): it
    // counts as a round but makes no fsync.
    group(&q, "g").await;
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    q.ack("t", "g", &[d[0].receipt()]).await.expect("ack");
    let m3 = q.metrics();
    q.ack("t", "g", &[d[0].receipt()]).await.expect("ack again");
    let m4 = q.metrics();
    assert_eq!(m4.commit_rounds, m3.commit_rounds + 1, "{m4:?}");
    assert_eq!(m4.fsync.count, m3.fsync.count, "{m4:?}");
    assert_eq!(m4.bytes_written, m3.bytes_written, "{m4:?}");
}

#[tokio::test]
async fn metrics_count_no_fsync_between_interval_syncs() {
    let (_dir, _clock, q) = setup_with(|c| {
        c.durability = Durability::Interval {
            interval_ms: 3_600_000,
        };
    });
    for i in 0..5u8 {
        q.publish("t", Message::new(vec![i; 10]))
            .await
            .expect("publish");
    }
    let m = q.metrics();
    assert_eq!(m.commit_rounds, 5, "{m:?}");
    assert_eq!(
        m.fsync.count, 0,
        "rounds without a fsync record none: {m:?}"
    );
    assert!(m.bytes_written >= 50, "{m:?}");
    // Closing fsyncs what was written, once; the figures stay readable afterwards.
    q.close().expect("close");
    let closed = q.metrics();
    assert_eq!(closed.fsync.count, 1, "{closed:?}");
    assert_eq!(closed.bytes_written, m.bytes_written);
}

/// The Prometheus text keeps the exact names, types and labels dashboards rely on: the
/// encoder appends `_total` to counters and `_seconds` to the fsync histogram, so this
/// checks what is exposed, not what is registered.
#[tokio::test]
async fn prometheus_text_has_the_documented_names_types_and_labels() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use queue::metrics::{MetricsSource, registry, render};
    use queue::server::BrokerMetrics;

    let (_dir, _clock, q) = setup();
    let q = Arc::new(q);
    group(&*q, "workers").await;
    for i in 0..3u8 {
        q.publish("t", Message::new(vec![i; 10]))
            .await
            .expect("publish");
    }
    let d = q.fetch("t", "workers", fetch_opts(2)).await.expect("fetch");
    q.reject("t", "workers", d[0].receipt(), "poison")
        .await
        .expect("reject");
    let broker = Arc::new(BrokerMetrics::default());
    broker.connections_open.fetch_add(1, Ordering::Relaxed);
    broker.messages_published.fetch_add(3, Ordering::Relaxed);
    broker.requests[usize::from(queue::proto::op::FETCH)].fetch_add(4, Ordering::Relaxed);
    let source = MetricsSource {
        engine: q.clone(),
        broker,
    };
    let text = render(&registry(source)).expect("render");

    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert_eq!(
        types,
        [
            "queue_broker_connections_open gauge",
            "queue_broker_connections_accepted_total counter",
            "queue_broker_connections_rejected_total counter",
            "queue_broker_protocol_errors_total counter",
            "queue_broker_idle_closed_total counter",
            "queue_broker_request_errors_total counter",
            "queue_broker_messages_published_total counter",
            "queue_broker_messages_delivered_total counter",
            "queue_broker_messages_acked_total counter",
            "queue_broker_auth_succeeded_total counter",
            "queue_broker_auth_failed_total counter",
            "queue_broker_auth_throttled_total counter",
            "queue_broker_topic_creations_refused_total counter",
            "queue_broker_reply_reserved_bytes gauge",
            "queue_broker_reply_budget_bytes gauge",
            "queue_broker_requests_total counter",
            "queue_fsync_duration_seconds histogram",
            "queue_commit_rounds_total counter",
            "queue_bytes_written_total counter",
            "queue_topic_next_offset gauge",
            "queue_topic_retained_bytes gauge",
            "queue_topic_delayed_pending gauge",
            "queue_topic_published_total counter",
            "queue_topic_duplicates_total counter",
            "queue_topic_dead_letters_pending gauge",
            "queue_group_lag gauge",
            "queue_group_depth gauge",
            "queue_group_in_flight gauge",
            "queue_group_retry_waiting gauge",
            "queue_group_redeliveries_total counter",
            "queue_group_acked_total counter",
            "queue_group_dead_lettered_total counter",
        ],
        "{text}"
    );
    // Every family has its HELP line, under the same name as its TYPE line.
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helps, types.len(), "{text}");
    for line in [
        "# HELP queue_broker_connections_accepted_total Connections accepted.",
        "queue_broker_connections_open 1",
        "queue_broker_messages_published_total 3",
        "queue_broker_requests_total{op=\"fetch\"} 4",
        "queue_topic_next_offset{topic=\"t\"} 3",
        "queue_topic_published_total{topic=\"t\"} 3",
        "queue_topic_next_offset{topic=\"t.dlq\"} 1",
        "queue_group_lag{topic=\"t\",group=\"workers\"} 2",
        "queue_group_in_flight{topic=\"t\",group=\"workers\"} 1",
        "queue_group_dead_lettered_total{topic=\"t\",group=\"workers\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // Only opcodes that were used get a series.
    assert_eq!(
        text.matches("queue_broker_requests_total{").count(),
        1,
        "{text}"
    );

    // The histogram: cumulative buckets ending in +Inf, equal to the count.
    let m = q.metrics();
    let sample = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
    };
    assert_eq!(sample("queue_fsync_duration_seconds_count "), m.fsync.count);
    assert_eq!(
        sample("queue_fsync_duration_seconds_bucket{le=\"+Inf\"} "),
        m.fsync.count
    );
    assert_eq!(sample("queue_fsync_duration_seconds_bucket{le=\"1\"} "), {
        let last = m.fsync.counts.len() - 1;
        m.fsync.counts[..last].iter().sum::<u64>()
    });
    assert_eq!(
        text.matches("queue_fsync_duration_seconds_bucket{").count(),
        m.fsync.counts.len(),
        "{text}"
    );
}
