//! `peek`, a read-only view of a topic's stored messages (and of its dead letters), and
//! the byte budget of every read.

use queue::limits::PEEK_MESSAGES_MAX;
use queue::{Due, Error, Message, Peeked, StartAt, TopicStats};

use super::{Backend, fetch_opts};
use crate::support::{T0, drain_acking, group};

fn peeked_offsets(p: &[Peeked]) -> Vec<u64> {
    p.iter().map(|m| m.offset).collect()
}

pub async fn peek_shows_messages_in_offset_order_with_everything_stored(b: Backend) {
    let h = b.start().await;
    let q = h.q();
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

pub async fn peek_is_capped_and_walks_across_segments(b: Backend) {
    let h = b.start().await;
    let q = h.q();
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
    if h.caps().segment_files {
        assert!(st.segments >= 4, "{st:?}");
    }

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

pub async fn peek_leaves_groups_alone(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    group(&*q, "g").await;
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
    assert_eq!(drain_acking(&*q, "t", "late").await, 4);
}

/// Retention removes what every group finished (here: all but the last batch, which stays
/// unacked so that every backend retains something); peek from 0 starts at what is left.
pub async fn peek_starts_at_the_oldest_retained_message(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    group(&*q, "g").await;
    for _ in 0..50 {
        let batch = (0..20).map(|_| Message::new(vec![0u8; 200])).collect();
        q.publish_batch("t", batch).await.expect("publish");
    }
    loop {
        let got = q.fetch("t", "g", fetch_opts(1000)).await.expect("fetch");
        if got.is_empty() {
            break;
        }
        let done: Vec<_> = got
            .iter()
            .filter(|d| d.offset < 980)
            .map(|d| d.receipt())
            .collect();
        q.ack("t", "g", &done).await.expect("ack");
    }
    h.tick().await.expect("tick");
    let st = q.stats("t").await.expect("stats");
    assert!(st.log_start > 0, "retention deleted nothing: {st:?}");
    let seen = q.peek("t", 0, 3).await.expect("peek");
    assert_eq!(
        peeked_offsets(&seen),
        vec![st.log_start, st.log_start + 1, st.log_start + 2]
    );
}

pub async fn peek_shows_the_raw_dead_letter(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    group(&*q, "g").await;
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

pub async fn peek_of_an_unknown_topic_is_no_such_topic(b: Backend) {
    let h = b.start().await;
    let q = h.q();
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
    h.close().expect("close");
    assert!(matches!(q.peek("t", 0, 10).await, Err(Error::Closed)));
}

/// Fetch, peek and dead-letter listing stop at `READ_BYTES_MAX` stored bytes, so a response
/// of the largest messages still fits in one broker frame; the rest comes with the next call.
pub async fn reads_stop_at_the_byte_budget(b: Backend) {
    use queue::limits::{PAYLOAD_BYTES_MAX, READ_BYTES_MAX};
    let h = b.start().await;
    let q = h.q();
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
