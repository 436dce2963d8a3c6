//! The publish path's shortcuts (issue 19): records encoded in place at their exact length,
//! the one-message `publish` without a batch around it, and the topic-name check skipped
//! for topics that exist. Each test checks what the shortcut must not change: the stored
//! bytes (read back, and recovered after a restart), the offsets and de-duplication, and
//! the refusals.

use queue::{Due, Error, Message, Queue};

use crate::support::{T0, reopen, setup, setup_with};

/// A message whose every optional part is set or not by `shape`'s bits.
fn shaped(i: u32, shape: u32) -> Message {
    let mut m = Message::new(format!("payload {i} {}", "x".repeat((i % 7) as usize)));
    if shape & 1 != 0 {
        m = m.with_id(0xABCD_0000_0000 + u128::from(i));
    }
    if shape & 2 != 0 {
        m = m.with_due(Due::At(T0 - 1));
    }
    if shape & 4 != 0 {
        m = m
            .with_header("h", format!("v{i}").into_bytes())
            .with_header("empty", Vec::new());
    }
    m
}

/// Everything `peek` shows of the topic, as comparable tuples.
async fn stored(q: &queue::Engine, topic: &str) -> Vec<(u64, Option<u128>, String, Option<u64>)> {
    q.peek(topic, 0, 1000)
        .await
        .expect("peek")
        .into_iter()
        .map(|p| {
            let headers = format!("{:?}", p.headers);
            let payload = String::from_utf8_lossy(&p.payload).to_string();
            (p.offset, p.id, format!("{payload}|{headers}"), p.due_ms)
        })
        .collect()
}

#[tokio::test]
async fn records_of_every_shape_read_back_and_recover_across_segment_rolls() {
    // Small segments: many records start a new segment (header written in front of them).
    let (dir, clock, q) = setup_with(|c| c.segment_bytes_max = 700);
    let mut expected = Vec::new();
    let mut next = 0u64;
    for i in 0..40u32 {
        let shape = i % 8;
        if i % 3 == 0 {
            let m = shaped(i, shape);
            let c = q.publish("t", m.clone()).await.expect("publish");
            assert_eq!((c.offset, c.duplicate), (next, false), "message {i}");
            expected.push((next, m));
            next += 1;
        } else {
            let batch: Vec<Message> = (0..3).map(|k| shaped(i * 10 + k, shape)).collect();
            let cs = q
                .publish_batch("t", batch.clone())
                .await
                .expect("publish batch");
            for (c, m) in cs.iter().zip(batch) {
                assert_eq!((c.offset, c.duplicate), (next, false), "batch {i}");
                expected.push((next, m));
                next += 1;
            }
        }
    }
    let want: Vec<_> = expected
        .iter()
        .map(|(off, m)| {
            let due = match m.due {
                Due::At(t) => Some(t),
                _ => None,
            };
            let payload = String::from_utf8_lossy(&m.payload).to_string();
            (*off, m.id, format!("{payload}|{:?}", m.headers), due)
        })
        .collect();
    assert!(q.stats("t").await.expect("stats").segments > 5);
    assert_eq!(stored(&q, "t").await, want);
    let q = reopen(q, dir.path(), &clock);
    assert_eq!(stored(&q, "t").await, want, "after a restart");
    assert!(
        q.recovery_reports()
            .values()
            .all(|r| *r == queue::RecoveryReport::default()),
        "recovery found damage: {:?}",
        q.recovery_reports()
    );
}

#[tokio::test]
async fn repeats_in_and_across_batches_get_the_first_copys_offset() {
    let (dir, clock, q) = setup();
    let a = Message::new("a").with_id(1);
    let b = Message::new("b").with_id(2);
    let c = Message::new("c").with_id(3);
    assert_eq!(q.publish("t", a.clone()).await.expect("a").offset, 0);
    // A repeat of a stored id, a fresh one, the fresh one again, a message without id.
    let got = q
        .publish_batch(
            "t",
            vec![a.clone(), b.clone(), b.clone(), Message::new("n")],
        )
        .await
        .expect("batch");
    let got: Vec<(u64, bool)> = got.iter().map(|c| (c.offset, c.duplicate)).collect();
    assert_eq!(got, vec![(0, true), (1, false), (1, true), (2, false)]);
    // Only repeats: nothing is written, and the next fresh message follows on.
    let got = q
        .publish_batch("t", vec![b.clone(), a.clone()])
        .await
        .expect("repeats");
    assert!(got.iter().all(|c| c.duplicate), "{got:?}");
    assert_eq!(q.publish("t", c).await.expect("c").offset, 3);
    let q = reopen(q, dir.path(), &clock);
    let payloads: Vec<String> = q
        .peek("t", 0, 10)
        .await
        .expect("peek")
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).to_string())
        .collect();
    assert_eq!(payloads, ["a", "b", "n", "c"]);
    // De-duplication survives the restart.
    let again = q.publish("t", b).await.expect("b again");
    assert_eq!((again.offset, again.duplicate), (1, true));
}

#[tokio::test]
async fn a_dead_letter_topic_that_exists_is_still_refused_as_a_publish_target() {
    let (_dir, _clock, q) = setup();
    // Publishing to "t" creates "t.dlq" too, so the shortcut for existing topics sees it.
    q.publish("t", Message::new("m")).await.expect("publish");
    assert!(
        q.topics()
            .await
            .expect("topics")
            .contains(&"t.dlq".to_string())
    );
    for r in [
        q.publish("t.dlq", Message::new("x")).await.map(|_| ()),
        q.publish_batch("t.dlq", vec![Message::new("x")])
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    }
    // A name too long to leave room for the suffix is refused whether or not it exists.
    let long = "n".repeat(62);
    let r = q.publish(&long, Message::new("x")).await;
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // And an invalid message to an existing topic is still checked.
    let r = q
        .publish(
            "t",
            Message::new(vec![0u8; queue::limits::PAYLOAD_BYTES_MAX + 1]),
        )
        .await;
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    assert_eq!(q.stats("t").await.expect("stats").next_offset, 1);
}
