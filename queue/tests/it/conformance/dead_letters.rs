//! Dead letters: reject, attempts used up, list, replay (for the group that gave up only),
//! discard, and the dead-letter topic's place.

use queue::{AckOutcome, Error, Message, StartAt};

use super::{Backend, fetch_opts, opts};
use crate::support::{drain_acking, group, offsets};

pub async fn a_replay_is_for_its_group_only_and_holds_back_no_other_group(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    group(&*q, "a").await;
    group(&*q, "b").await;
    q.publish("t", Message::new("x")).await.expect("publish");
    let d = q.fetch("t", "a", fetch_opts(1)).await.expect("fetch");
    q.reject("t", "a", d[0].receipt(), "poison")
        .await
        .expect("reject");
    assert_eq!(drain_acking(&*q, "t", "b").await, 1);
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    let replayed = q
        .replay_dead_letter("t", dead[0].dead_offset)
        .await
        .expect("replay");
    let st = q.stats("t").await.expect("stats");
    let b = st.groups.iter().find(|g| g.name == "b").expect("b");
    assert_eq!(b.lag, 0, "the replay is not b's: {st:?}");
    assert_eq!(b.low_watermark, replayed + 1);
    drop(q);
    h.reopen().await;
    let q = h.q();
    let st = q.stats("t").await.expect("stats");
    let b = st.groups.iter().find(|g| g.name == "b").expect("b");
    assert_eq!(b.lag, 0, "after reopen: {st:?}");
    assert_eq!(offsets(&*q, "t", "a", 10).await, vec![replayed]);
    assert!(offsets(&*q, "t", "b", 10).await.is_empty());
}

pub async fn dead_letter_topics_are_not_for_consumer_groups(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    q.publish("t", Message::new("x")).await.expect("publish");
    let err = q
        .fetch("t.dlq", "inspector", fetch_opts(1))
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = q
        .create_group("t.dlq", "g", StartAt::Earliest)
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    // A name whose dead-letter topic would be too long is refused everywhere.
    let long = "a".repeat(62);
    assert!(matches!(
        q.create_group(&long, "g", StartAt::Earliest).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        q.fetch(&long, "g", fetch_opts(1)).await,
        Err(Error::Invalid(_))
    ));
}

pub async fn a_largest_message_can_be_dead_lettered_and_reopened(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    let mut m = Message::new(vec![7u8; queue::limits::PAYLOAD_BYTES_MAX]).with_id(9);
    for n in 0..queue::limits::HEADERS_MAX {
        m = m.with_header(
            format!("h{n:0>62}"),
            vec![255u8; queue::limits::HEADER_VALUE_BYTES_MAX],
        );
    }
    q.publish("t", m).await.expect("publish");
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    q.reject("t", "g", d[0].receipt(), &"r".repeat(10_000))
        .await
        .expect("reject");
    drop(q);
    h.reopen().await;
    let q = h.q();
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.len(), queue::limits::PAYLOAD_BYTES_MAX);
    assert_eq!(dead[0].headers.len(), queue::limits::HEADERS_MAX);
    assert_eq!(dead[0].reason.len(), queue::limits::REASON_BYTES_MAX);
}

pub async fn reject_dead_letters_then_list_replay_and_discard(b: Backend) {
    let h = b.start().await;
    let c = h.q();
    c.create_group("pay", "g", StartAt::Earliest)
        .await
        .expect("group");
    c.publish(
        "pay",
        Message::new("poison")
            .with_id(0xBAD)
            .with_header("k", b"v".to_vec()),
    )
    .await
    .expect("publish");
    c.publish("pay", Message::new("junk"))
        .await
        .expect("publish");
    let d = c
        .fetch("pay", "g", opts(10, 30_000, 0))
        .await
        .expect("fetch");
    assert_eq!(d.len(), 2);
    for delivery in &d {
        let outcome = c
            .reject("pay", "g", delivery.receipt(), "cannot parse")
            .await
            .expect("reject");
        assert_eq!(outcome, AckOutcome::Acked);
    }

    let dead = c.dead_letters("pay", 0, 100).await.expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let poison = &dead[0];
    assert_eq!(poison.group, "g");
    assert_eq!(poison.original_offset, 0);
    assert_eq!(poison.attempts, 1);
    assert_eq!(poison.reason, "cannot parse");
    assert_eq!(poison.id, Some(0xBAD));
    assert_eq!(poison.headers, vec![("k".to_string(), b"v".to_vec())]);
    assert_eq!(poison.payload.as_ref(), b"poison");
    assert_eq!(dead[1].original_offset, 1);
    let stats = c.stats("pay").await.expect("stats");
    assert_eq!(stats.dead_letters_pending, 2);
    assert_eq!(stats.groups[0].dead_lettered, 2);

    // Replay: back into the topic for the group, attempts reset.
    let new_offset = c
        .replay_dead_letter("pay", poison.dead_offset)
        .await
        .expect("replay");
    assert_eq!(new_offset, 2);
    let replayed = c
        .fetch("pay", "g", opts(10, 30_000, 5_000))
        .await
        .expect("fetch");
    assert_eq!(replayed.len(), 1);
    assert_eq!((replayed[0].offset, replayed[0].attempt), (2, 1));
    assert_eq!(replayed[0].payload.as_ref(), b"poison");
    assert_eq!(replayed[0].id, Some(0xBAD));

    // Discard the other one.
    c.discard_dead_letter("pay", dead[1].dead_offset)
        .await
        .expect("discard");
    assert!(
        c.dead_letters("pay", 0, 100)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(c.stats("pay").await.expect("stats").dead_letters_pending, 0);
    // Both are resolved now: a second discard names no pending dead letter.
    let again = c.discard_dead_letter("pay", dead[1].dead_offset).await;
    assert!(
        matches!(again, Err(Error::NoSuchDeadLetter { .. })),
        "{again:?}"
    );
}

pub async fn nacks_up_to_max_attempts_dead_letter_then_replay_redelivers(b: Backend) {
    let h = b.start().await;
    assert_eq!(h.config.max_attempts, 3);
    let c = h.q();
    c.publish("flaky", Message::new("again and again").with_id(77))
        .await
        .expect("publish");
    for attempt in 1..=3 {
        let d = c
            .fetch("flaky", "g", opts(1, 30_000, 5_000))
            .await
            .expect("fetch");
        assert_eq!(d.len(), 1, "attempt {attempt} delivered");
        assert_eq!(d[0].attempt, attempt);
        c.nack(
            "flaky",
            "g",
            d[0].receipt(),
            0,
            &format!("failed {attempt}"),
        )
        .await
        .expect("nack");
    }
    // The third nack used the last attempt: dead-lettered, not delivered again.
    assert!(
        c.fetch("flaky", "g", opts(1, 30_000, 0))
            .await
            .expect("fetch")
            .is_empty()
    );
    let dead = c.dead_letters("flaky", 0, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "failed 3");
    assert_eq!(dead[0].id, Some(77));

    c.replay_dead_letter("flaky", dead[0].dead_offset)
        .await
        .expect("replay");
    let d = c
        .fetch("flaky", "g", opts(1, 30_000, 5_000))
        .await
        .expect("fetch");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempt, 1, "attempts reset by the replay");
    assert_eq!(d[0].payload.as_ref(), b"again and again");
    let acked = c.ack("flaky", "g", &[d[0].receipt()]).await.expect("ack");
    assert_eq!(acked, vec![AckOutcome::Acked]);
    assert!(
        c.dead_letters("flaky", 0, 10)
            .await
            .expect("list")
            .is_empty()
    );
}
