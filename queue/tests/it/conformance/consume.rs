//! Consuming: groups, leases, acks and nacks, attempts, delays, long polls, receipts, and
//! consumers racing for one group.

use queue::{AckOutcome, Due, Error, FetchOptions, Message, Receipt};

use super::{Backend, fetch_opts};
use crate::support::{T0, group, offsets};

pub async fn groups_see_everything_and_consumers_in_a_group_are_disjoint(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    group(&*q, "a").await;
    group(&*q, "b").await;
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

pub async fn lease_expiry_nack_and_dead_letters(b: Backend) {
    let h = b.start().await;
    let (q, clock) = (h.q(), &h.clock);
    q.publish("t", Message::new("poison").with_id(7))
        .await
        .expect("publish");
    // Attempt 1: lease expires.
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(d[0].attempt, 1);
    assert!(offsets(&*q, "t", "g", 1).await.is_empty(), "leased");
    clock.advance(1_000);
    // Attempt 2: nacked with a delay.
    let d = q.fetch("t", "g", fetch_opts(1)).await.expect("fetch");
    assert_eq!(d[0].attempt, 2);
    let stale = q
        .ack(
            "t",
            "g",
            &[Receipt {
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
        offsets(&*q, "t", "g", 1).await.is_empty(),
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
    assert!(offsets(&*q, "t", "g", 1).await.is_empty());
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

pub async fn delayed_messages_wait_for_their_time_and_survive_restart(b: Backend) {
    let mut h = b.start().await;
    let q = h.q();
    group(&*q, "g").await;
    q.publish("t", Message::new("late").with_due(Due::After(600_000)))
        .await
        .expect("publish");
    q.publish("t", Message::new("now")).await.expect("publish");
    let d = q.fetch("t", "g", fetch_opts(10)).await.expect("fetch");
    assert_eq!(d.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1]);
    q.ack("t", "g", &[d[0].receipt()]).await.expect("ack");
    assert_eq!(q.stats("t").await.expect("stats").delayed_pending, 1);
    drop(q);
    h.reopen().await;
    let q = h.q();
    h.clock.advance(599_999);
    assert!(offsets(&*q, "t", "g", 10).await.is_empty());
    h.clock.advance(1);
    let d = q.fetch("t", "g", fetch_opts(10)).await.expect("fetch");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload.as_ref(), b"late");
    assert_eq!(d[0].due_ms, Some(T0 + 600_000));
}

pub async fn long_poll_wakes_on_publish_and_times_out_empty(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    group(&*q, "g").await;
    let waiting = h
        .spawn_waiting_fetch(
            "t",
            "g",
            FetchOptions {
                max_messages: 10,
                lease_ms: Some(1_000),
                wait_ms: 60_000,
            },
        )
        .await;
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

pub async fn a_nack_wakes_a_waiting_consumer(b: Backend) {
    let h = b.start().await;
    let q = h.q();
    q.publish("t", Message::new("x")).await.expect("publish");
    // Held under a lease far longer than the test's patience, so that only the nack, not
    // the lease's end, can wake the waiting consumer.
    let long = FetchOptions {
        max_messages: 1,
        lease_ms: Some(600_000),
        wait_ms: 0,
    };
    let held = q.fetch("t", "g", long).await.expect("fetch");
    let opts = FetchOptions {
        max_messages: 1,
        lease_ms: Some(1_000),
        wait_ms: 600_000,
    };
    let waiting = h.spawn_waiting_fetch("t", "g", opts).await;
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

pub async fn receipts_must_be_real_and_refused_batches_count_nothing(b: Backend) {
    let h = b
        .start_with(|cfg| {
            cfg.backlog_messages_max = 1;
        })
        .await;
    let q = h.q();
    group(&*q, "g").await;
    q.publish("t", Message::new("x").with_id(1).with_due(Due::After(100)))
        .await
        .expect("publish");
    assert!(offsets(&*q, "t", "g", 1).await.is_empty());
    h.clock.advance(100);
    h.tick().await.expect("tick");
    // Never delivered: a made-up receipt for attempt 0 acks nothing.
    let out = q
        .ack(
            "t",
            "g",
            &[Receipt {
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

/// Real concurrency (two runtime threads): a publisher and four consumers of one group
/// racing. A delivery of a message some other consumer still holds is a double lease.
/// (The manual clock stands still: leases of a minute never run out.)
pub async fn competing_consumers_never_share_a_lease(b: Backend) {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    let h = b
        .start_with(|cfg| {
            cfg.lease_ms_default = 60_000;
            cfg.max_attempts = 1_000;
        })
        .await;
    let q = h.q();
    group(&*q, "g").await;
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
                let opts = FetchOptions {
                    max_messages: 1 + (round as usize * 7 + c) % 50,
                    lease_ms: None,
                    wait_ms: 20,
                };
                let got = q.fetch("t", "g", opts).await.expect("fetch");
                {
                    let mut h = held.lock().expect("lock");
                    for d in &got {
                        if let Some(other) = h.insert(d.offset, c) {
                            panic!(
                                "offset {} delivered to consumer {c} while consumer {other} holds it",
                                d.offset
                            );
                        }
                    }
                }
                tokio::task::yield_now().await;
                let mut to_ack = Vec::new();
                for (i, d) in got.iter().enumerate() {
                    // Give the lease up (drop it from `held`) before the queue may hand the
                    // message to someone else.
                    held.lock().expect("lock").remove(&d.offset);
                    if (i as u64 + round).is_multiple_of(3) {
                        let out = q
                            .nack("t", "g", d.receipt(), 0, "again")
                            .await
                            .expect("nack");
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
