//! Semantics of the embedded engine, one behaviour per test, with a manual clock.

use queue::{AckOutcome, Due, Error, FetchOptions, Message, Queue, StartAt};

use crate::support::{
    T0, drain_acking, group, offsets, open, reopen, setup, setup_with, test_config,
};

fn fetch_opts(n: usize) -> FetchOptions {
    FetchOptions {
        max_messages: n,
        lease_ms: Some(1_000),
        wait_ms: 0,
    }
}

#[tokio::test]
async fn publish_fetch_ack_and_reopen() {
    let (dir, clock, q) = setup();
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
    q.close().expect("close");
    drop(q);

    let q = open(dir.path(), &clock);
    // 0 and 1 acked; 2 and 3 were leased when the engine closed: delivered again, attempt 2.
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

#[tokio::test]
async fn groups_see_everything_and_consumers_in_a_group_are_disjoint() {
    let (_dir, _clock, q) = setup();
    group(&q, "a").await;
    group(&q, "b").await;
    let msgs = (0..6).map(|i: u8| Message::new(vec![i])).collect();
    q.publish_batch("t", msgs).await.expect("batch");
    let a1 = q.fetch("t", "a", fetch_opts(3)).await.expect("fetch");
    let a2 = q.fetch("t", "a", fetch_opts(10)).await.expect("fetch");
    let b = q.fetch("t", "b", fetch_opts(10)).await.expect("fetch");
    let mut a: Vec<u64> = a1.iter().chain(&a2).map(|d| d.offset).collect();
    a.sort();
    assert_eq!(a, (0..6).collect::<Vec<_>>());
    assert_eq!(a1.len(), 3);
    assert_eq!(b.len(), 6);
}

#[tokio::test]
async fn duplicate_ids_are_confirmed_not_stored() {
    let (dir, clock, q) = setup();
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
    q.close().expect("close");
    drop(q);
    // The window survives a restart.
    let q = open(dir.path(), &clock);
    let third = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    assert!(third.duplicate);
    let stats = q.stats("t").await.expect("stats");
    assert_eq!(stats.next_offset, 1);
    // After the window the id is forgotten.
    clock.advance(test_config(&clock).dedup_window_ms + 1);
    let fourth = q
        .publish("t", Message::new("a").with_id(42))
        .await
        .expect("publish");
    assert!(!fourth.duplicate);
    assert_eq!(fourth.offset, 1);
}

#[tokio::test]
async fn lease_expiry_nack_and_dead_letters() {
    let (_dir, clock, q) = setup();
    q.publish("t", Message::new("poison").with_id(7))
        .await
        .expect("publish");
    // Attempt 1: lease expires.
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(d[0].attempt, 1);
    assert!(offsets(&q, "t", "g", 1).await.is_empty(), "leased");
    clock.advance(1_000);
    // Attempt 2: nacked with a delay.
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(d[0].attempt, 2);
    let stale = q
        .ack(
            "t",
            "g",
            &[queue::Receipt {
                offset: 0,
                attempt: 1,
            }],
        )
        .await
        .expect("ack");
    assert_eq!(stale, vec![AckOutcome::LeaseLost]);
    q.nack("t", "g", d[0].receipt(), 500, "try later")
        .await
        .expect("nack");
    clock.advance(499);
    assert!(
        offsets(&q, "t", "g", 1).await.is_empty(),
        "not before its delay"
    );
    clock.advance(1);
    // Attempt 3 (the last): nacked again, so it is dead-lettered.
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(d[0].attempt, 3);
    q.nack("t", "g", d[0].receipt(), 0, "bad payload")
        .await
        .expect("nack");
    clock.advance(10_000);
    assert!(offsets(&q, "t", "g", 1).await.is_empty());
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_offset, 0);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "bad payload");
    assert_eq!(dead[0].group, "g");
    assert_eq!(dead[0].id, Some(7));
    assert_eq!(dead[0].payload.as_ref(), b"poison");
    let stats = q.stats("t").await.expect("stats");
    assert_eq!(stats.dead_letters_pending, 1);
    assert_eq!(stats.groups[0].dead_lettered, 1);
    assert_eq!(stats.groups[0].lag, 0);

    // Replay: delivered again to the group, attempts reset.
    let new_off = q
        .replay_dead_letter("t", dead[0].dead_offset)
        .await
        .expect("replay");
    assert_eq!(new_off, 1);
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!((d[0].offset, d[0].attempt), (1, 1));
    assert_eq!(d[0].payload.as_ref(), b"poison");
    assert!(q.dead_letters("t", 0, 10).await.expect("list").is_empty());
    assert!(matches!(
        q.discard_dead_letter("t", dead[0].dead_offset).await,
        Err(Error::NoSuchDeadLetter { .. })
    ));
    // Reject sends it straight back; then discard.
    q.reject("t", "g", d[0].receipt(), "poison")
        .await
        .expect("reject");
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    q.discard_dead_letter("t", dead[0].dead_offset)
        .await
        .expect("discard");
    assert!(q.dead_letters("t", 0, 10).await.expect("list").is_empty());
}

#[tokio::test]
async fn delayed_messages_wait_for_their_time_and_survive_restart() {
    let (dir, clock, q) = setup();
    group(&q, "g").await;
    q.publish("t", Message::new("late").with_due(Due::After(600_000)))
        .await
        .expect("publish");
    q.publish("t", Message::new("now")).await.expect("publish");
    let d = q.fetch("t", "g", fetch_opts(10)).await.expect("fetch");
    assert_eq!(d.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1]);
    q.ack("t", "g", &[d[0].receipt()]).await.expect("ack");
    assert_eq!(q.stats("t").await.expect("stats").delayed_pending, 1);
    let q = reopen(q, dir.path(), &clock);
    clock.advance(599_999);
    assert!(offsets(&q, "t", "g", 10).await.is_empty());
    clock.advance(1);
    let d = q.fetch("t", "g", fetch_opts(10)).await.expect("fetch");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload.as_ref(), b"late");
    assert_eq!(d[0].due_ms, Some(T0 + 600_000));
}

#[tokio::test]
async fn backlog_limit_gives_full() {
    let (_dir, _clock, q) = setup_with(|cfg| {
        cfg.backlog_messages_max = 5;
    });
    group(&q, "g").await;
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

#[tokio::test]
async fn retention_deletes_segments_every_group_finished() {
    let (dir, clock, q) = setup();
    group(&q, "g").await;
    for _ in 0..50 {
        let batch = (0..20).map(|_| Message::new(vec![0u8; 200])).collect();
        q.publish_batch("t", batch).await.expect("publish");
    }
    let before = q.stats("t").await.expect("stats");
    assert!(before.segments > 2, "{before:?}");
    drain_acking(&q, "t", "g").await;
    q.tick().await.expect("tick");
    let after = q.stats("t").await.expect("stats");
    assert_eq!(after.segments, 1, "{after:?}");
    assert!(after.log_start >= 900, "{after:?}");
    let q = reopen(q, dir.path(), &clock);
    let st = q.stats("t").await.expect("stats");
    assert_eq!(st.next_offset, 1000);
    assert!(offsets(&q, "t", "g", 10).await.is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let (_dir, _clock, q) = setup();
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

#[tokio::test]
async fn long_poll_wakes_on_publish_and_times_out_empty() {
    let (_dir, _clock, q) = setup();
    group(&q, "g").await;
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            q.fetch(
                "t",
                "g",
                FetchOptions {
                    max_messages: 10,
                    lease_ms: Some(1_000),
                    wait_ms: 60_000,
                },
            )
            .await
        })
    };
    // On this current-thread runtime one yield runs the fetch until it parks in its wait.
    tokio::task::yield_now().await;
    assert!(
        !waiting.is_finished(),
        "fetch returned before anything was published"
    );
    q.publish("t", Message::new("wake")).await.expect("publish");
    // Without the wake-up the fetch would sleep for its whole minute.
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("long poll woke up")
        .expect("join")
        .expect("fetch");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"wake");

    let started = std::time::Instant::now();
    let empty = q
        .fetch(
            "t",
            "g",
            FetchOptions {
                max_messages: 10,
                lease_ms: None,
                wait_ms: 50,
            },
        )
        .await
        .expect("fetch");
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(50),
        "returned before its wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_commits_and_lose_nothing() {
    let (dir, clock, q) = setup();
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
    let q = reopen(q, dir.path(), &clock);
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

#[tokio::test]
async fn disk_use_stays_bounded_under_steady_load() {
    let (dir, clock, q) = setup();
    group(&q, "g").await;
    let segment_bytes_max = test_config(&clock).segment_bytes_max;
    let rounds = 300u64;
    let mut max_retained = 0;
    let mut per_round = 0;
    for round in 0..rounds {
        let batch = (0..50)
            .map(|i| Message::new(vec![0u8; 200]).with_id(u128::from(round * 50 + i)))
            .collect();
        q.publish_batch("t", batch).await.expect("publish");
        drain_acking(&q, "t", "g").await;
        // Ten seconds per round: the de-duplication window (10 min) keeps the segments of
        // the last 60 rounds, because their ids must survive a restart.
        clock.advance(10_000);
        q.tick().await.expect("tick");
        let st = q.stats("t").await.expect("stats");
        if round == 0 {
            per_round = st.retained_bytes;
        }
        max_retained = max_retained.max(st.retained_bytes);
    }
    let st = q.stats("t").await.expect("stats");
    assert_eq!(st.next_offset, rounds * 50);
    let window_rounds = test_config(&clock).dedup_window_ms / 10_000;
    // What stays is bounded by the window plus a segment, however long the load runs.
    assert!(
        max_retained <= (window_rounds + 1) * per_round + 2 * segment_bytes_max,
        "retained {max_retained} bytes, {per_round} per round"
    );
    assert!(
        max_retained * 3 < rounds * per_round,
        "retained {max_retained} of {} bytes written",
        rounds * per_round
    );
    let files = std::fs::read_dir(dir.path().join("topics").join("t"))
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count() as u64;
    assert_eq!(
        files, st.segments,
        "deleted segments are gone from the disk"
    );
}

#[tokio::test]
async fn byte_backlog_limit_gives_full() {
    let (_dir, _clock, q) = setup_with(|cfg| {
        cfg.backlog_bytes_max = 20_000;
    });
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

/// Real concurrency (two runtime threads, real clock): publishers and four consumers of one
/// group racing. A delivery of a message some other consumer still holds is a double lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_never_share_a_lease() {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = queue::Config {
        maintenance_interval_ms: None,
        lease_ms_default: 60_000,
        max_attempts: 1_000,
        ..queue::Config::default()
    };
    let q = queue::Engine::open(dir.path(), cfg).expect("open");
    group(&q, "g").await;
    const MESSAGES: u64 = 2_000;
    let held: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let publisher = {
        let q = q.clone();
        tokio::spawn(async move {
            for chunk in 0..(MESSAGES / 20) {
                let batch = (0..20)
                    .map(|i| Message::new(vec![0u8; 64]).with_id(u128::from(chunk * 20 + i)))
                    .collect();
                q.publish_batch("t", batch).await.expect("publish");
            }
        })
    };
    let mut consumers = Vec::new();
    for c in 0..4usize {
        let (q, held, acked) = (q.clone(), held.clone(), acked.clone());
        consumers.push(tokio::spawn(async move {
            let mut round = 0u64;
            while acked.lock().expect("lock").len() < MESSAGES as usize {
                round += 1;
                let opts = FetchOptions { max_messages: 1 + (round as usize * 7 + c) % 50, lease_ms: None, wait_ms: 20 };
                let got = q.fetch("t", "g", opts).await.expect("fetch");
                {
                    let mut h = held.lock().expect("lock");
                    for d in &got {
                        if let Some(other) = h.insert(d.offset, c) {
                            panic!("offset {} delivered to consumer {c} while consumer {other} holds it", d.offset);
                        }
                    }
                }
                tokio::task::yield_now().await;
                let mut to_ack = Vec::new();
                for (i, d) in got.iter().enumerate() {
                    // Give the lease up (drop it from `held`) before the engine may hand the
                    // message to someone else.
                    held.lock().expect("lock").remove(&d.offset);
                    if (i as u64 + round).is_multiple_of(3) {
                        let out = q.nack("t", "g", d.receipt(), 0, "again").await.expect("nack");
                        assert_eq!(out, AckOutcome::Acked);
                    } else {
                        to_ack.push(d.receipt());
                    }
                }
                let out = q.ack("t", "g", &to_ack).await.expect("ack");
                assert!(out.iter().all(|o| *o == AckOutcome::Acked), "{out:?}");
                let mut a = acked.lock().expect("lock");
                for r in &to_ack {
                    assert!(a.insert(r.offset), "offset {} acked twice", r.offset);
                }
            }
        }));
    }
    publisher.await.expect("publisher");
    for c in consumers {
        tokio::time::timeout(std::time::Duration::from_secs(120), c)
            .await
            .expect("consumers finish")
            .expect("consumer");
    }
    let st = q.stats("t").await.expect("stats");
    assert_eq!(st.groups[0].lag, 0, "{st:?}");
    assert_eq!(st.groups[0].acked, MESSAGES);
}

#[tokio::test]
async fn a_replay_is_for_its_group_only_and_holds_back_no_other_group() {
    let (dir, clock, q) = setup();
    group(&q, "a").await;
    group(&q, "b").await;
    q.publish("t", Message::new("x")).await.expect("publish");
    let d = q.fetch("t", "a", fetch_opts(1)).await.expect("fetch");
    q.reject("t", "a", d[0].receipt(), "poison")
        .await
        .expect("reject");
    assert_eq!(drain_acking(&q, "t", "b").await, 1);
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    let replayed = q
        .replay_dead_letter("t", dead[0].dead_offset)
        .await
        .expect("replay");
    let st = q.stats("t").await.expect("stats");
    let b = st.groups.iter().find(|g| g.name == "b").expect("b");
    assert_eq!(b.lag, 0, "the replay is not b's: {st:?}");
    assert_eq!(b.low_watermark, replayed + 1);
    let q = reopen(q, dir.path(), &clock);
    let st = q.stats("t").await.expect("stats");
    let b = st.groups.iter().find(|g| g.name == "b").expect("b");
    assert_eq!(b.lag, 0, "after reopen: {st:?}");
    assert_eq!(offsets(&q, "t", "a", 10).await, vec![replayed]);
    assert!(offsets(&q, "t", "b", 10).await.is_empty());
}

#[tokio::test]
async fn dead_letter_topics_are_not_for_consumer_groups() {
    let (_dir, _clock, q) = setup();
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

#[tokio::test]
async fn a_latest_group_sees_offsets_reused_after_lost_writes() {
    let (dir, clock, q) = setup();
    for i in 0..5u8 {
        q.publish("t", Message::new(vec![i]))
            .await
            .expect("publish");
    }
    let seg = std::fs::read_dir(dir.path().join("topics/t"))
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("segment");
    let len = std::fs::metadata(&seg).expect("stat").len();
    q.publish("t", Message::new(vec![5]))
        .await
        .expect("publish");
    q.create_group("t", "late", StartAt::Latest)
        .await
        .expect("group");
    q.close().expect("close");
    drop(q);
    // The disk lost the last write (as after a power cut): offset 5 will be reused.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len))
        .expect("truncate");
    let q = open(dir.path(), &clock);
    let c = q.publish("t", Message::new("new")).await.expect("publish");
    assert_eq!(c.offset, 5);
    assert_eq!(
        offsets(&q, "t", "late", 10).await,
        vec![5],
        "the group must see what was published after it"
    );
}

#[tokio::test]
async fn maintenance_still_dead_letters_when_retention_cannot_write_metadata() {
    let (dir, clock, q) = setup_with(|cfg| {
        cfg.max_attempts = 1;
        cfg.segment_bytes_max = 200;
    });
    for i in 0..6u8 {
        q.publish("t", Message::new(vec![i; 40]))
            .await
            .expect("publish");
    }
    let d = q.fetch("t", "g", fetch_opts(6)).await.expect("fetch");
    let r: Vec<_> = d[..5].iter().map(|d| d.receipt()).collect();
    q.ack("t", "g", &r).await.expect("ack");
    clock.advance(1_000);
    // Make the metadata impossible to write: its temporary file's name is a directory.
    let blocker = dir.path().join("topics/t/topic.tmp");
    std::fs::create_dir(&blocker).expect("mkdir");
    assert!(
        q.tick().await.is_err(),
        "the failed metadata write is reported"
    );
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(
        dead.iter().map(|d| d.original_offset).collect::<Vec<_>>(),
        vec![5]
    );
    let segments = q.stats("t").await.expect("stats").segments;
    std::fs::remove_dir(&blocker).expect("rmdir");
    q.tick().await.expect("tick");
    assert!(
        q.stats("t").await.expect("stats").segments < segments,
        "retention resumes"
    );
}

#[tokio::test]
async fn a_nack_wakes_a_waiting_consumer() {
    let (_dir, _clock, q) = setup();
    q.publish("t", Message::new("x")).await.expect("publish");
    let held = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            let opts = FetchOptions {
                max_messages: 1,
                lease_ms: Some(1_000),
                wait_ms: 60_000,
            };
            q.fetch("t", "g", opts).await
        })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    q.nack("t", "g", held[0].receipt(), 0, "later")
        .await
        .expect("nack");
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("woken by the nack")
        .expect("join")
        .expect("fetch");
    assert_eq!(
        got.iter()
            .map(|d| (d.offset, d.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 2)]
    );
}

#[tokio::test]
async fn receipts_must_be_real_and_refused_batches_count_nothing() {
    let (_dir, clock, q) = setup_with(|cfg| {
        cfg.backlog_messages_max = 1;
    });
    group(&q, "g").await;
    q.publish("t", Message::new("x").with_id(1).with_due(Due::After(100)))
        .await
        .expect("publish");
    assert!(offsets(&q, "t", "g", 1).await.is_empty());
    clock.advance(100);
    q.tick().await.expect("tick");
    // Never delivered: a made-up receipt for attempt 0 acks nothing.
    let out = q
        .ack(
            "t",
            "g",
            &[queue::Receipt {
                offset: 0,
                attempt: 0,
            }],
        )
        .await
        .expect("ack");
    assert_eq!(out, vec![AckOutcome::LeaseLost]);
    let err = q
        .publish_batch(
            "t",
            vec![Message::new("x").with_id(1), Message::new("y").with_id(2)],
        )
        .await
        .expect_err("full");
    assert!(matches!(err, Error::Full { .. }), "{err}");
    assert_eq!(
        q.stats("t").await.expect("stats").duplicates,
        0,
        "a refused batch counts nothing"
    );
    // Out-of-range waits and leases get clear errors or are cut, never a panic.
    let opts = FetchOptions {
        max_messages: 1,
        lease_ms: Some(u64::MAX),
        wait_ms: 0,
    };
    assert!(matches!(
        q.fetch("t", "g", opts).await,
        Err(Error::Invalid(_))
    ));
    let opts = FetchOptions {
        max_messages: 1,
        lease_ms: None,
        wait_ms: u64::MAX,
    };
    let d = q
        .fetch("t", "g", opts)
        .await
        .expect("a huge wait is cut, and a message is ready");
    assert!(matches!(
        q.nack("t", "g", d[0].receipt(), u64::MAX, "").await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn the_dedup_window_gives_memory_back_when_it_expires() {
    let (_dir, clock, q) = setup();
    for chunk in 0..20u128 {
        let batch = (0..1000)
            .map(|i| Message::new("x").with_id(chunk * 1000 + i))
            .collect();
        q.publish_batch("t", batch).await.expect("publish");
    }
    let full = q.index_heap_bytes("t").expect("bytes");
    clock.advance(test_config(&clock).dedup_window_ms);
    q.publish("t", Message::new("x").with_id(u128::MAX))
        .await
        .expect("publish");
    let after = q.index_heap_bytes("t").expect("bytes");
    assert!(
        after * 2 < full,
        "heap {full} -> {after} bytes after the window passed"
    );
}

#[tokio::test]
async fn a_largest_message_can_be_dead_lettered_and_reopened() {
    let (dir, clock, q) = setup();
    let mut m = Message::new(vec![7u8; queue::limits::PAYLOAD_BYTES_MAX]).with_id(9);
    for h in 0..queue::limits::HEADERS_MAX {
        m = m.with_header(
            format!("h{h:0>62}"),
            vec![255u8; queue::limits::HEADER_VALUE_BYTES_MAX],
        );
    }
    q.publish("t", m).await.expect("publish");
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    q.reject("t", "g", d[0].receipt(), &"r".repeat(10_000))
        .await
        .expect("reject");
    let q = reopen(q, dir.path(), &clock);
    let dead = q.dead_letters("t", 0, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.len(), queue::limits::PAYLOAD_BYTES_MAX);
    assert_eq!(dead[0].headers.len(), queue::limits::HEADERS_MAX);
    assert_eq!(dead[0].reason.len(), queue::limits::REASON_BYTES_MAX);
}

/// `publish_each` (what the broker does with pipelined publishes): one bad message gets its
/// own error, the others are stored and confirmed in order; ids are de-duplicated against
/// earlier publishes and within the call.
#[tokio::test]
async fn publish_each_judges_every_message_on_its_own() {
    let (_dir, _clock, q) = setup();
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
}

/// Near the backlog limit, `publish_each` stores the messages that fit and refuses only
/// the rest with `Full` (the record as a whole would not fit).
#[tokio::test]
async fn publish_each_near_the_backlog_limit_stores_what_fits() {
    let (_dir, _clock, q) = setup_with(|c| c.backlog_messages_max = 10);
    group(&q, "g").await;
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
