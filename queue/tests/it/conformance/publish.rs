//! Publishing: offsets, confirms, de-duplication, batches, `publish_each`, backlog limits,
//! refused input; and what a restart keeps.

use queue::{AckOutcome, DLQ_SUFFIX, Due, Error, Message, Receipt, StartAt};

use super::{Backend, fetch_opts};
use crate::support::group;

pub async fn publish_fetch_ack_and_reopen(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    for i in 0..10u32 {
        let c = q
            .publish(
                "orders",
                Message::new(i.to_le_bytes().to_vec()).with_header("k", b"v".to_vec()),
            )
            .await
            .expect("publish");
        assert_eq!(c.offset, u64::from(i));
        assert!(!c.duplicate);
    }
    let got = q.fetch("orders", "w", fetch_opts(4)).await.expect("fetch");
    assert_eq!(
        got.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(got[2].payload.as_ref(), 2u32.to_le_bytes());
    assert_eq!(got[2].headers, vec![("k".to_string(), b"v".to_vec())]);
    assert_eq!(got[0].attempt, 1);
    let receipts: Vec<_> = got.iter().map(|d| d.receipt()).collect();
    let out = q.ack("orders", "w", &receipts[..2]).await.expect("ack");
    assert_eq!(out, vec![AckOutcome::Acked, AckOutcome::Acked]);
    let again = q.ack("orders", "w", &receipts[..1]).await.expect("ack");
    assert_eq!(again, vec![AckOutcome::AlreadyAcked]);
    drop(q);
    h.reopen().await;
    let q = h.q();
    if !h.caps().restart_ends_leases {
        // The leases of 2 and 3 outlive the restart: they run to their deadline.
        h.clock.advance(1_000);
    }
    // 0 and 1 acked; 2 and 3 were leased when the queue closed: delivered again, attempt 2.
    let got = q
        .fetch("orders", "w", fetch_opts(100))
        .await
        .expect("fetch");
    let offs: Vec<_> = got.iter().map(|d| (d.offset, d.attempt)).collect();
    assert_eq!(
        offs,
        vec![
            (2, 2),
            (3, 2),
            (4, 1),
            (5, 1),
            (6, 1),
            (7, 1),
            (8, 1),
            (9, 1)
        ]
    );
}

pub async fn duplicate_ids_are_confirmed_not_stored(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    let first = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    let second = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    assert_eq!(second.offset, first.offset);
    assert!(second.duplicate);
    drop(q);
    // The window survives a restart.
    h.reopen().await;
    let q = h.q();
    let third = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    assert!(third.duplicate);
    let stats = q.stats("t").await.expect("stats");
    assert_eq!(stats.next_offset, 1);
    // After the window the id is forgotten.
    h.clock.advance(h.config.dedup_window_ms + 1);
    let fourth = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    assert!(!fourth.duplicate);
    assert_eq!(fourth.offset, 1);
}

/// Every operation once on one topic, with what each one answers (the broker's
/// round-trip test without the wire: the same calls, on every backend).
pub async fn one_topic_through_every_operation(b: Backend) {
    let h = b.start().await;
    let c = h.q();

    // Publish: plain, with an id (a repeat is a duplicate confirm), with headers.
    let plain = c
        .publish("orders", Message::new("plain"))
        .await
        .expect("publish");
    assert_eq!((plain.offset, plain.duplicate), (0, false));
    let first = c
        .publish("orders", Message::new("with id").with_id(0xA11CE))
        .await
        .expect("publish with id");
    assert_eq!((first.offset, first.duplicate), (1, false));
    let repeat = c
        .publish("orders", Message::new("with id").with_id(0xA11CE))
        .await
        .expect("repeat");
    assert_eq!(
        (repeat.offset, repeat.duplicate),
        (1, true),
        "dedup confirm"
    );
    let headed = c
        .publish(
            "orders",
            Message::new("headed").with_header("trace", b"abc".to_vec()),
        )
        .await
        .expect("publish with headers");
    assert_eq!(headed.offset, 2);

    // A batch: one confirm each, in order.
    let batch = (0..3u8)
        .map(|i| Message::new(vec![b'b', i]).with_id(0xB000 + u128::from(i)))
        .collect();
    let confirms = c.publish_batch("orders", batch).await.expect("batch");
    let offsets: Vec<_> = confirms.iter().map(|c| (c.offset, c.duplicate)).collect();
    assert_eq!(offsets, vec![(3, false), (4, false), (5, false)]);

    // Groups: Earliest sees everything retained, Latest only what comes after it.
    c.create_group("orders", "early", StartAt::Earliest)
        .await
        .expect("group early");
    c.create_group("orders", "late", StartAt::Latest)
        .await
        .expect("group late");
    let after = c
        .publish("orders", Message::new("after"))
        .await
        .expect("publish");
    assert_eq!(after.offset, 6);

    let early = c
        .fetch("orders", "early", super::opts(100, 30_000, 0))
        .await
        .expect("fetch early");
    assert_eq!(
        early.iter().map(|d| d.offset).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert!(early.iter().all(|d| d.attempt == 1));
    assert_eq!(early[0].payload.as_ref(), b"plain");
    assert_eq!(early[0].id, None);
    assert_eq!(early[1].id, Some(0xA11CE));
    assert_eq!(early[1].payload.as_ref(), b"with id");
    assert_eq!(
        early[2].headers,
        vec![("trace".to_string(), b"abc".to_vec())]
    );
    assert_eq!(early[4].payload.as_ref(), &[b'b', 1]);
    assert_eq!(early[4].id, Some(0xB001));
    let late = c
        .fetch("orders", "late", super::opts(100, 30_000, 0))
        .await
        .expect("fetch late");
    assert_eq!(late.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![6]);

    // Ack outcomes: Acked, then AlreadyAcked for a repeat, Unknown for an offset never
    // published.
    let receipts: Vec<Receipt> = early.iter().map(|d| d.receipt()).collect();
    let acked = c.ack("orders", "early", &receipts).await.expect("ack");
    assert_eq!(acked, vec![AckOutcome::Acked; 7]);
    let unknown = Receipt {
        offset: 1_000,
        attempt: 1,
    };
    let again = c
        .ack("orders", "early", &[receipts[0], unknown])
        .await
        .expect("ack again");
    assert_eq!(again, vec![AckOutcome::AlreadyAcked, AckOutcome::Unknown]);

    // Stats add up.
    let stats = c.stats("orders").await.expect("stats");
    assert_eq!(stats.next_offset, 7);
    assert_eq!(stats.durable_end, 7);
    assert_eq!(stats.published, 7);
    assert_eq!(stats.duplicates, 1);
    let group = |name: &str| {
        stats
            .groups
            .iter()
            .find(|g| g.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no group {name} in {stats:?}"))
    };
    let (e, l) = (group("early"), group("late"));
    assert_eq!((e.lag, e.acked, e.in_flight), (0, 7, 0));
    assert_eq!((l.lag, l.in_flight, l.depth), (1, 1, 0));

    // Topics: the topic and its dead-letter topic.
    assert_eq!(
        c.topics().await.expect("topics"),
        vec!["orders".to_string(), format!("orders{DLQ_SUFFIX}")]
    );

    // Peek: stored messages, whatever the groups did with them.
    let peeked = c.peek("orders", 2, 2).await.expect("peek");
    assert_eq!(peeked.len(), 2);
    assert_eq!((peeked[0].offset, peeked[1].offset), (2, 3));
    assert_eq!(
        peeked[0].headers,
        vec![("trace".to_string(), b"abc".to_vec())]
    );
    assert_eq!(peeked[1].id, Some(0xB000));
}

/// Each refusal is its own error kind, naming the topic, the offset or the limit (the
/// broker's errors-over-the-wire test without the wire).
pub async fn errors_name_their_kind_topic_and_limit(b: Backend) {
    let h = b.start_with(|c| c.backlog_messages_max = 3).await;
    let c = h.q();

    let r = c.stats("never-made").await;
    assert!(
        matches!(&r, Err(Error::NoSuchTopic(t)) if t == "never-made"),
        "{r:?}"
    );
    let r = c.publish("bad name!", Message::new("x")).await;
    assert!(
        matches!(&r, Err(Error::Invalid(m)) if m.contains("bad name!")),
        "{r:?}"
    );

    c.publish("orders", Message::new("x"))
        .await
        .expect("publish");
    let r = c.replay_dead_letter("orders", 42).await;
    assert!(
        matches!(&r, Err(Error::NoSuchDeadLetter { topic, offset: 42 }) if topic == "orders"),
        "{r:?}"
    );
    let r = c.discard_dead_letter("orders", 42).await;
    assert!(
        matches!(r, Err(Error::NoSuchDeadLetter { offset: 42, .. })),
        "{r:?}"
    );

    // Backlog limit of 3 unresolved messages.
    c.publish("orders", Message::new("y"))
        .await
        .expect("publish");
    c.publish("orders", Message::new("z"))
        .await
        .expect("publish");
    let r = c.publish("orders", Message::new("one too many")).await;
    assert!(
        matches!(&r, Err(Error::Full { topic, what: "messages", limit: 3 }) if topic == "orders"),
        "{r:?}"
    );
}

pub async fn backlog_limit_gives_full(b: Backend) {
    let h = b
        .start_with(|cfg| {
            cfg.backlog_messages_max = 5;
        })
        .await;
    let q = h.q();
    group(&*q, "g").await;
    for _ in 0..5 {
        q.publish("t", Message::new("x")).await.expect("publish");
    }
    let err = q.publish("t", Message::new("x")).await.expect_err("full");
    assert!(
        matches!(
            err,
            Error::Full {
                what: "messages",
                ..
            }
        ),
        "{err}"
    );
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    q.ack("t", "g", &[d[0].receipt()]).await.expect("ack");
    q.publish("t", Message::new("x"))
        .await
        .expect("room again after an ack");
}

pub async fn byte_backlog_limit_gives_full(b: Backend) {
    let h = b
        .start_with(|cfg| {
            cfg.backlog_bytes_max = 20_000;
        })
        .await;
    let q = h.q();
    let mut full = None;
    for i in 0..100 {
        match q.publish("t", Message::new(vec![1u8; 1000])).await {
            Ok(_) => {}
            Err(e) => {
                full = Some((i, e));
                break;
            }
        }
    }
    let (i, err) = full.expect("the byte limit was reached");
    assert!(matches!(err, Error::Full { what: "bytes", .. }), "{err}");
    assert!((10..20).contains(&i), "refused after {i} messages of 1 KB");
    // Nothing of the refused publish was stored.
    assert_eq!(q.stats("t").await.expect("stats").next_offset, i);
}

pub async fn bad_input_is_refused_clearly(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    for bad in ["", "a/b", "..", "x.dlq", &"n".repeat(65)] {
        assert!(
            matches!(
                q.publish(bad, Message::new("x")).await,
                Err(Error::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let big = Message::new(vec![0u8; queue::limits::PAYLOAD_BYTES_MAX + 1]);
    assert!(matches!(q.publish("t", big).await, Err(Error::Invalid(_))));
    assert!(matches!(
        q.publish_batch("t", vec![]).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        q.ack("nope", "g", &[]).await,
        Err(Error::NoSuchTopic(_))
    ));
}

/// A due time or delay past `DUE_MS_MAX` is refused on every backend (Redis computes in
/// doubles: it would deliver such a message at once); the largest allowed is held.
pub async fn due_times_past_the_limit_are_refused_and_the_largest_is_held(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    let max = queue::limits::DUE_MS_MAX;
    for due in [Due::At(max + 1), Due::At(u64::MAX), Due::After(max + 1)] {
        let err = q
            .publish("t", Message::new("x").with_due(due))
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Invalid(_)), "{due:?}: {err}");
    }
    let c = q
        .publish("t", Message::new("far").with_due(Due::At(max)))
        .await
        .expect("the largest due time is accepted");
    assert!(
        q.fetch("t", "g", fetch_opts(10))
            .await
            .expect("fetch")
            .is_empty(),
        "a message due at the end of time is not delivered now"
    );
    let seen = q.peek("t", c.offset, 1).await.expect("peek");
    assert_eq!(seen[0].due_ms, Some(max), "held exactly");
}

/// `publish_each` (what the broker does with pipelined publishes): one bad message gets its
/// own error, the others are stored and confirmed in order; ids are de-duplicated against
/// earlier publishes and within the call; an empty call confirms nothing.
pub async fn publish_each_judges_every_message_on_its_own(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    let first = q
        .publish("t", Message::new(&b"first"[..]).with_id(7))
        .await
        .expect("publish");
    let bad = Message::new(&b"bad"[..]).with_header("h", vec![0u8; 5000]);
    let results = q
        .publish_each(
            "t",
            vec![
                Message::new(&b"a"[..]).with_id(1),
                bad,
                Message::new(&b"again"[..]).with_id(7),
                Message::new(&b"b"[..]).with_id(1),
                Message::new(&b"c"[..]),
            ],
        )
        .await
        .expect("publish_each");
    assert_eq!(results.len(), 5);
    let a = results[0].as_ref().expect("a confirmed");
    assert!(!a.duplicate);
    assert!(
        matches!(results[1], Err(Error::Invalid(_))),
        "{:?}",
        results[1]
    );
    let again = results[2].as_ref().expect("repeat confirmed");
    assert!(again.duplicate);
    assert_eq!(again.offset, first.offset);
    let b = results[3]
        .as_ref()
        .expect("repeat within the call confirmed");
    assert!(b.duplicate, "{b:?}");
    assert_eq!(b.offset, a.offset);
    let c = results[4].as_ref().expect("c confirmed");
    assert_eq!(c.offset, a.offset + 1);
    let stored: Vec<Vec<u8>> = q
        .peek("t", 0, 10)
        .await
        .expect("peek")
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(
        stored,
        vec![b"first".to_vec(), b"a".to_vec(), b"c".to_vec()]
    );
    assert!(matches!(
        q.publish_each("no such!", vec![Message::new(&b"x"[..])])
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(
        q.publish_each("t", Vec::new())
            .await
            .expect("empty")
            .is_empty()
    );
}

/// Near the backlog limit, `publish_each` stores the messages that fit and refuses only
/// the rest with `Full` (the record as a whole would not fit).
pub async fn publish_each_near_the_backlog_limit_stores_what_fits(b: Backend) {
    let h = b.start_with(|c| c.backlog_messages_max = 10).await;
    let q = h.q();
    group(&*q, "g").await;
    for i in 0..5u8 {
        q.publish("t", Message::new(vec![i]))
            .await
            .expect("publish");
    }
    let results = q
        .publish_each("t", (0..8u8).map(|i| Message::new(vec![100 + i])).collect())
        .await
        .expect("publish_each");
    let stored: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(stored, [true, true, true, true, true, false, false, false]);
    assert!(
        results[5..].iter().all(|r| matches!(
            r,
            Err(Error::Full {
                what: "messages",
                ..
            })
        )),
        "{results:?}"
    );
    let offsets: Vec<u64> = results[..5]
        .iter()
        .map(|r| r.as_ref().expect("stored").offset)
        .collect();
    assert_eq!(offsets, vec![5, 6, 7, 8, 9], "in the order given");
}

pub async fn concurrent_publishers_share_commits_and_lose_nothing(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..20u64 {
                let id = u128::from(t * 1000 + i);
                let c = q
                    .publish("t", Message::new(id.to_le_bytes().to_vec()).with_id(id))
                    .await
                    .expect("publish");
                offs.push((id, c.offset));
            }
            offs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    let mut offsets: Vec<u64> = all.iter().map(|(_, o)| *o).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 64 * 20, "every confirm has its own offset");
    drop(q);
    h.reopen().await;
    let q = h.q();
    let mut seen = std::collections::HashMap::new();
    loop {
        let got = q
            .fetch("t", "check", fetch_opts(1000))
            .await
            .expect("fetch");
        if got.is_empty() {
            break;
        }
        for d in got {
            assert_eq!(d.payload.as_ref(), d.id.expect("id").to_le_bytes());
            seen.insert(d.id.expect("id"), d.offset);
        }
    }
    for (id, off) in all {
        assert_eq!(seen.get(&id), Some(&off), "confirmed message {id} at {off}");
    }
}
