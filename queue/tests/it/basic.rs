//! Behaviour of the embedded engine that depends on its storage (segments, retention,
//! disk use, lost writes, metadata writes, the de-duplication index's memory), one
//! behaviour per test, with a manual clock. The queue semantics every backend shares are
//! the conformance suite's (`conformance/`).

use queue::{FetchOptions, Message, Queue, StartAt};

use crate::support::{drain_acking, group, offsets, open, reopen, setup, setup_with, test_config};

fn fetch_opts(n: usize) -> FetchOptions {
    FetchOptions {
        max_messages: n,
        lease_ms: Some(1_000),
        wait_ms: 0,
    }
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
    // The file as it is before the last write (with its preallocated zeros, if any).
    let before = std::fs::read(&seg).expect("read segment");
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
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.set_len(before.len() as u64)?;
            f.write_all_at(&before, 0)
        })
        .expect("undo the last write");
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
