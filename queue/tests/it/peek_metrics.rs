//! `peek` (a read-only view of a topic's log), `Engine::metrics` (writer figures) and the
//! Prometheus text of `queue::metrics`.

use queue::format::SEGMENT_HEADER_LEN;
use queue::limits::PEEK_MESSAGES_MAX;
use queue::{Due, Durability, Error, FetchOptions, Message, Queue, StartAt, TopicStats};

use crate::support::{T0, drain_acking, group, setup, setup_with};

fn fetch_opts(n: usize) -> FetchOptions {
    FetchOptions {
        max_messages: n,
        lease_ms: Some(1_000),
        wait_ms: 0,
    }
}

fn peeked_offsets(p: &[queue::Peeked]) -> Vec<u64> {
    p.iter().map(|m| m.offset).collect()
}

#[tokio::test]
async fn peek_shows_messages_in_offset_order_with_everything_stored() {
    let (_dir, _clock, q) = setup();
    for i in 0..5u8 {
        let mut m = Message::new(vec![i; 3]).with_header("n", vec![i]);
        if i % 2 == 0 {
            m = m.with_id(1000 + u128::from(i));
        }
        if i == 3 {
            m = m.with_due(Due::At(T0 + 60_000));
        }
        q.publish("t", m).await.expect("publish");
    }
    let all = q.peek("t", 0, 100).await.expect("peek");
    assert_eq!(peeked_offsets(&all), vec![0, 1, 2, 3, 4]);
    for (i, m) in all.iter().enumerate() {
        let b = i as u8;
        assert_eq!(m.payload.as_ref(), [b; 3], "{m:?}");
        assert_eq!(m.headers, vec![("n".to_string(), vec![b])], "{m:?}");
        let id = (i % 2 == 0).then(|| 1000 + u128::from(b));
        assert_eq!(m.id, id, "{m:?}");
        // A delayed message is shown before it is due, with its due time.
        let due = (i == 3).then_some(T0 + 60_000);
        assert_eq!(m.due_ms, due, "{m:?}");
    }

    let from_two = q.peek("t", 2, 2).await.expect("peek");
    assert_eq!(peeked_offsets(&from_two), vec![2, 3]);
    assert_eq!(from_two[0], all[2]);
    assert_eq!(
        peeked_offsets(&q.peek("t", 4, 10).await.expect("peek")),
        [4]
    );
    assert!(q.peek("t", 5, 10).await.expect("peek").is_empty());
    assert!(q.peek("t", u64::MAX, 10).await.expect("peek").is_empty());
    assert!(q.peek("t", 0, 0).await.expect("peek").is_empty());
}

#[tokio::test]
async fn peek_is_capped_and_walks_across_segments() {
    let (_dir, _clock, q) = setup();
    // 1700 messages of 200 bytes, 100 per record: several 64 KiB segments in tests.
    let total = PEEK_MESSAGES_MAX as u64 + 700;
    for chunk in 0..total / 100 {
        let batch = (chunk * 100..(chunk + 1) * 100)
            .map(|i| Message::new(i.to_le_bytes().repeat(25)))
            .collect();
        q.publish_batch("t", batch).await.expect("publish");
    }
    let st = q.stats("t").await.expect("stats");
    assert_eq!(st.next_offset, total);
    assert!(st.segments >= 4, "{st:?}");

    let first = q.peek("t", 0, usize::MAX).await.expect("peek");
    assert_eq!(first.len(), PEEK_MESSAGES_MAX);
    let want: Vec<u64> = (0..PEEK_MESSAGES_MAX as u64).collect();
    assert_eq!(peeked_offsets(&first), want);

    let middle = q.peek("t", 900, 700).await.expect("peek");
    assert_eq!(peeked_offsets(&middle), (900..1600).collect::<Vec<_>>());
    for m in &middle {
        assert_eq!(m.payload.as_ref(), m.offset.to_le_bytes().repeat(25));
    }

    let tail = q.peek("t", total - 50, 1000).await.expect("peek");
    assert_eq!(
        peeked_offsets(&tail),
        (total - 50..total).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn peek_leaves_groups_alone() {
    let (_dir, _clock, q) = setup();
    group(&q, "g").await;
    let msgs = (0..4u8).map(|i| Message::new(vec![i])).collect();
    q.publish_batch("t", msgs).await.expect("publish");
    let leased = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(leased[0].offset, 0);
    let before: TopicStats = q.stats("t").await.expect("stats");
    assert_eq!((before.groups[0].lag, before.groups[0].in_flight), (4, 1));

    for _ in 0..3 {
        let seen = q.peek("t", 0, 100).await.expect("peek");
        // The leased message is shown too: peek ignores group state.
        assert_eq!(peeked_offsets(&seen), vec![0, 1, 2, 3]);
    }
    assert_eq!(q.stats("t").await.expect("stats"), before);

    // The group still gets the rest, first delivery each.
    let got = q.fetch("t", "g", fetch_opts(10)).await.expect("fetch");
    let got: Vec<(u64, u32)> = got.iter().map(|d| (d.offset, d.attempt)).collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1)]);
    // And a group created after the peeks starts from the beginning: nothing was consumed.
    q.create_group("t", "late", StartAt::Earliest)
        .await
        .expect("group");
    assert_eq!(drain_acking(&q, "t", "late").await, 4);
}

#[tokio::test]
async fn peek_starts_at_the_oldest_retained_message() {
    let (_dir, _clock, q) = setup();
    group(&q, "g").await;
    for _ in 0..50 {
        let batch = (0..20).map(|_| Message::new(vec![0u8; 200])).collect();
        q.publish_batch("t", batch).await.expect("publish");
    }
    drain_acking(&q, "t", "g").await;
    q.tick().await.expect("tick");
    let st = q.stats("t").await.expect("stats");
    assert!(st.log_start > 0, "retention deleted nothing: {st:?}");
    let seen = q.peek("t", 0, 3).await.expect("peek");
    assert_eq!(
        peeked_offsets(&seen),
        vec![st.log_start, st.log_start + 1, st.log_start + 2]
    );
}

#[tokio::test]
async fn peek_shows_the_raw_dead_letter() {
    let (_dir, _clock, q) = setup();
    group(&q, "g").await;
    let m = Message::new("poison pill")
        .with_id(42)
        .with_header("k", b"v".to_vec());
    q.publish("t", m).await.expect("publish");
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    q.reject("t", "g", d[0].receipt(), "cannot parse")
        .await
        .expect("reject");
    let pending = q.stats("t").await.expect("stats").dead_letters_pending;
    assert_eq!(pending, 1);

    let seen = q.peek("t.dlq", 0, 10).await.expect("peek dlq");
    assert_eq!(peeked_offsets(&seen), vec![0]);
    let raw = &seen[0];
    // Stored under its own de-duplication id, with the original headers in the envelope.
    assert!(raw.id.is_some() && raw.id != Some(42), "{raw:?}");
    assert!(raw.headers.is_empty(), "{raw:?}");
    assert_eq!(raw.due_ms, None);
    let p = raw.payload.as_ref();
    let n = u32::from_le_bytes(p[..4].try_into().expect("length")) as usize;
    let envelope: serde_json::Value = serde_json::from_slice(&p[4..4 + n]).expect("envelope");
    assert_eq!(envelope["group"], "g");
    assert_eq!(envelope["reason"], "cannot parse");
    assert_eq!(envelope["original_offset"], 0);
    assert_eq!(&p[4 + n..], b"poison pill");

    // Peeking changed nothing about the dead letter; once discarded it is no longer
    // pending, but the stored record is still shown while retained.
    assert_eq!(
        q.stats("t").await.expect("stats").dead_letters_pending,
        pending
    );
    let listed = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(listed.len(), 1);
    q.discard_dead_letter("t", listed[0].dead_offset)
        .await
        .expect("discard");
    assert!(q.dead_letters("t", 0, 10).await.expect("list").is_empty());
    assert_eq!(q.peek("t.dlq", 0, 10).await.expect("peek dlq"), seen);
}

#[tokio::test]
async fn peek_of_an_unknown_topic_is_no_such_topic() {
    let (_dir, _clock, q) = setup();
    for name in ["nope", "nope.dlq", "a/b"] {
        let err = q.peek(name, 0, 10).await.expect_err(name);
        assert!(
            matches!(&err, Error::NoSuchTopic(t) if t == name),
            "{name}: {err}"
        );
    }
    q.publish("t", Message::new("x")).await.expect("publish");
    // A topic created by a publish has an (empty) dead-letter topic to peek at.
    assert!(q.peek("t.dlq", 0, 10).await.expect("peek").is_empty());
    q.close().expect("close");
    assert!(matches!(q.peek("t", 0, 10).await, Err(Error::Closed)));
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
    group(&q, "workers").await;
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

/// Fetch, peek and dead-letter listing stop at `READ_BYTES_MAX` stored bytes, so a response
/// of the largest messages still fits in one broker frame; the rest comes with the next call.
#[tokio::test]
async fn reads_stop_at_the_byte_budget() {
    use queue::limits::{PAYLOAD_BYTES_MAX, READ_BYTES_MAX};
    let (_dir, _clock, q) = setup();
    let n = 12usize;
    for i in 0..n {
        q.publish("big", Message::new(vec![i as u8; PAYLOAD_BYTES_MAX]))
            .await
            .expect("publish");
    }
    let budget = READ_BYTES_MAX as usize + PAYLOAD_BYTES_MAX + 4096;
    let peeked = q.peek("big", 0, 100).await.expect("peek");
    let peeked_bytes: usize = peeked.iter().map(|m| m.payload.len()).sum();
    assert!(!peeked.is_empty() && peeked.len() < n, "{}", peeked.len());
    assert!(peeked_bytes <= budget, "{peeked_bytes}");

    q.create_group("big", "g", StartAt::Earliest)
        .await
        .expect("group");
    let first = q.fetch("big", "g", fetch_opts(100)).await.expect("fetch");
    let first_bytes: usize = first.iter().map(|d| d.payload.len()).sum();
    assert!(!first.is_empty() && first.len() < n, "{}", first.len());
    assert!(first_bytes <= budget, "{first_bytes}");
    // Nothing is lost or leased twice: the following fetches return the rest, in order.
    let mut got: Vec<u64> = first.iter().map(|d| d.offset).collect();
    while got.len() < n {
        let more = q.fetch("big", "g", fetch_opts(100)).await.expect("fetch");
        assert!(!more.is_empty(), "stalled after {got:?}");
        got.extend(more.iter().map(|d| d.offset));
    }
    assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
}
