//! Storage faults (issue 16, "fsync failure"): a write or fsync of the writer thread fails,
//! injected through the storage seam (`queue::faults`), while publishers and a consumer run.
//!
//! The plan ([`FailAfter`]) fails one operation and lets every later one succeed, as Linux
//! does after a writeback error (the "fsyncgate" lesson: a retried fsync succeeds although
//! the data is gone). What must hold:
//! - no confirm after the fault: every publish or ack started once the fault fired fails
//!   with `Error::Failed`, and so does the round the fault hit;
//! - the engine stops for good: publish, fetch, ack, nack, group creation, stats and tick
//!   all fail with `Error::Failed`, and [`Engine::failure`] says why;
//! - nothing confirmed before the fault is lost: the directory reopened (a restart) holds
//!   every confirmed message at its confirmed offset, and no confirmed ack is undone;
//! - the broker's `/readyz` answers 200 before and 503 after (the process test in
//!   `process.rs` shows that `queue serve` then exits non-zero).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use queue::faults::{FailAfter, StorageOp};
use queue::metrics::MetricsSource;
use queue::{
    Confirm, Engine, Error, FetchOptions, ManualClock, Message, Queue, Receipt, Server,
    ServerConfig, StartAt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::corruption::open_engine;
use crate::support::{T0, test_config};

const TOPIC: &str = "t";
const GROUP: &str = "g";
const PUBLISHERS: u32 = 6;
/// Most publishes per publisher: far more than any fault point below needs, so every
/// publisher runs into the fault.
const PUBLISHES_MAX: u32 = 400;

fn id_of(task: u32, seq: u32) -> u128 {
    (u128::from(task) << 32) | u128::from(seq)
}

fn payload_of(id: u128) -> Vec<u8> {
    format!("message {id:x}").into_bytes()
}

fn faulty_engine(
    dir: &std::path::Path,
    clock: &ManualClock,
    plan: &Arc<FailAfter>,
    segment_bytes_max: u64,
) -> Engine {
    let mut config = test_config(clock);
    config.segment_bytes_max = segment_bytes_max;
    config.storage_faults = Some(plan.clone());
    Engine::open(dir, config).expect("open engine")
}

fn is_failed<T: std::fmt::Debug>(r: &queue::Result<T>) -> bool {
    matches!(r, Err(Error::Failed(_)))
}

/// What one call returned, and whether the fault had fired before it started.
#[derive(Debug)]
struct Call<T> {
    after_fault: bool,
    result: queue::Result<T>,
}

async fn publisher(q: Engine, plan: Arc<FailAfter>, task: u32) -> Vec<(u128, Call<Confirm>)> {
    let mut calls = Vec::new();
    for seq in 0..PUBLISHES_MAX {
        let id = id_of(task, seq);
        let after_fault = plan.fired();
        let result = q
            .publish(TOPIC, Message::new(payload_of(id)).with_id(id))
            .await;
        let stop = result.is_err();
        calls.push((
            id,
            Call {
                after_fault,
                result,
            },
        ));
        if stop {
            break;
        }
    }
    calls
}

/// Fetches and acks for group `g` until a call fails; returns each ack call with its
/// receipts.
async fn consumer(
    q: Engine,
    plan: Arc<FailAfter>,
    done: Arc<AtomicBool>,
) -> Vec<(Vec<Receipt>, Call<Vec<queue::AckOutcome>>)> {
    let mut acks = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let options = FetchOptions {
            max_messages: 16,
            lease_ms: Some(60_000),
            // A long poll: returns as soon as something is published.
            wait_ms: 20,
        };
        let Ok(got) = q.fetch(TOPIC, GROUP, options).await else {
            break;
        };
        if got.is_empty() {
            continue;
        }
        let receipts: Vec<Receipt> = got.iter().map(|d| d.receipt()).collect();
        let after_fault = plan.fired();
        let result = q.ack(TOPIC, GROUP, &receipts).await;
        let stop = result.is_err();
        acks.push((
            receipts,
            Call {
                after_fault,
                result,
            },
        ));
        if stop {
            break;
        }
    }
    acks
}

/// Runs publishers and a consumer into the fault described by `op` and `after`, checks what
/// the engine answered and what a reopened directory holds.
async fn fault_case(op: StorageOp, after: u64, segment_bytes_max: u64) {
    let context = format!("{op:?} number {} fails", after + 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let plan = Arc::new(FailAfter::new(op, after));
    let q = faulty_engine(dir.path(), &clock, &plan, segment_bytes_max);
    q.create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("group");

    let done = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(consumer(q.clone(), plan.clone(), done.clone()));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|t| tokio::spawn(publisher(q.clone(), plan.clone(), t)))
        .collect();
    let mut publishes = Vec::new();
    for p in publishers {
        publishes.extend(p.await.expect("publisher task"));
    }
    done.store(true, Ordering::SeqCst);
    let acks = consumer.await.expect("consumer task");

    assert!(plan.fired(), "{context}: the fault never fired");
    // No confirm after the fault, and the only error is `Failed`.
    let mut confirmed: BTreeMap<u64, u128> = BTreeMap::new();
    for (id, call) in &publishes {
        match &call.result {
            Ok(c) => {
                assert!(
                    !call.after_fault,
                    "{context}: publish of {id:x} started after the fault was confirmed: {c:?}"
                );
                assert!(!c.duplicate, "{context}: {c:?}");
                assert_eq!(
                    confirmed.insert(c.offset, *id),
                    None,
                    "{context}: offset twice"
                );
            }
            Err(e) => assert!(is_failed(&call.result), "{context}: publish of {id:x}: {e}"),
        }
    }
    let failed_publishes = publishes.iter().filter(|(_, c)| c.result.is_err()).count();
    assert_eq!(
        failed_publishes, PUBLISHERS as usize,
        "{context}: every publisher ends on the failure"
    );
    let mut acked = BTreeSet::new();
    for (receipts, call) in &acks {
        match &call.result {
            Ok(_) => {
                assert!(
                    !call.after_fault,
                    "{context}: ack after the fault confirmed"
                );
                acked.extend(receipts.iter().map(|r| r.offset));
            }
            Err(e) => assert!(is_failed(&call.result), "{context}: ack: {e}"),
        }
    }

    // Stopped for good: every operation fails with the writer's failure, although the
    // storage below works again.
    let why = q.failure().expect("the engine reports its failure");
    assert!(
        why.to_string().contains("injected"),
        "{context}: failure {why}"
    );
    let msg = || Message::new(b"after".to_vec());
    assert!(
        is_failed(&q.publish(TOPIC, msg()).await),
        "{context}: publish"
    );
    assert!(
        is_failed(&q.publish_batch(TOPIC, vec![msg(), msg()]).await),
        "{context}: publish_batch"
    );
    let fetch = FetchOptions {
        max_messages: 10,
        lease_ms: None,
        wait_ms: 0,
    };
    assert!(
        is_failed(&q.fetch(TOPIC, GROUP, fetch).await),
        "{context}: fetch"
    );
    let receipt = Receipt {
        offset: 0,
        attempt: 1,
    };
    assert!(
        is_failed(&q.ack(TOPIC, GROUP, &[receipt]).await),
        "{context}: ack"
    );
    assert!(
        is_failed(&q.nack(TOPIC, GROUP, receipt, 0, "retry").await),
        "{context}: nack"
    );
    assert!(
        is_failed(&q.create_group(TOPIC, "late", StartAt::Earliest).await),
        "{context}: create_group"
    );
    assert!(is_failed(&q.stats(TOPIC).await), "{context}: stats");
    assert!(is_failed(&q.tick().await), "{context}: tick");
    assert!(q.close().is_err(), "{context}: close reports the failure");
    drop(q);

    // A restart: everything confirmed is there, at its offset, and no confirmed ack is
    // undone. Unconfirmed publishes of the failed round may be there too (a failed
    // publish may or may not have happened; a producer retries with the same id).
    let q = open_engine(dir.path(), test_config(&clock)).expect("reopen");
    let stats = q.stats(TOPIC).await.expect("stats after reopen");
    let top = confirmed.keys().next_back().copied();
    assert!(
        top.is_none_or(|o| stats.next_offset > o),
        "{context}: next offset {} after confirmed offset {top:?}",
        stats.next_offset
    );
    q.create_group(TOPIC, "audit", StartAt::Earliest)
        .await
        .expect("audit group");
    let mut seen = BTreeMap::new();
    loop {
        let options = FetchOptions {
            max_messages: 1000,
            lease_ms: Some(60_000),
            wait_ms: 0,
        };
        let got = q.fetch(TOPIC, "audit", options).await.expect("audit fetch");
        if got.is_empty() {
            break;
        }
        for d in got {
            seen.insert(d.offset, (d.id, d.payload.to_vec()));
        }
    }
    for (offset, id) in &confirmed {
        let (got_id, payload) = seen
            .get(offset)
            .unwrap_or_else(|| panic!("{context}: confirmed offset {offset} lost"));
        assert_eq!(*got_id, Some(*id), "{context}: id at {offset}");
        assert_eq!(*payload, payload_of(*id), "{context}: payload at {offset}");
    }
    let mut redelivered = BTreeSet::new();
    loop {
        let options = FetchOptions {
            max_messages: 1000,
            lease_ms: Some(60_000),
            wait_ms: 0,
        };
        let got = q.fetch(TOPIC, GROUP, options).await.expect("group fetch");
        if got.is_empty() {
            break;
        }
        redelivered.extend(got.iter().map(|d| d.offset));
    }
    let undone: Vec<_> = acked.intersection(&redelivered).collect();
    assert!(
        undone.is_empty(),
        "{context}: confirmed acks undone: {undone:?}"
    );
    // And the queue works again after the restart.
    let c = q
        .publish(TOPIC, msg())
        .await
        .expect("publish after restart");
    assert!(top.is_none_or(|o| c.offset > o), "{context}: {c:?}");
    q.close().expect("close");
    println!(
        "{context}: {} confirmed, {} acked before the fault; all there after a restart",
        confirmed.len(),
        acked.len()
    );
}

/// A failed `fdatasync`, early and later in the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_fsync_stops_the_engine_and_loses_nothing_confirmed() {
    fault_case(StorageOp::Fsync, 0, 64 * 1024).await;
    fault_case(StorageOp::Fsync, 25, 64 * 1024).await;
}

/// A failed (short) write: half its bytes reach the file, the rest never do; recovery cuts
/// the torn frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_write_stops_the_engine_and_loses_nothing_confirmed() {
    fault_case(StorageOp::Write, 20, 64 * 1024).await;
}

/// A failed fsync of the topic directory after a segment roll (small segments roll often).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_directory_fsync_stops_the_engine_and_loses_nothing_confirmed() {
    fault_case(StorageOp::FsyncDir, 2, 512).await;
}

/// A long poll waiting when the writer fails ends at once with the failure, rather than
/// at its deadline (a broker stopping on the failure would otherwise wait for it).
#[tokio::test(flavor = "current_thread")]
async fn a_waiting_fetch_ends_with_the_writer_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let plan = Arc::new(FailAfter::new(StorageOp::Fsync, 1));
    let q = faulty_engine(dir.path(), &clock, &plan, 64 * 1024);
    q.create_group("idle", GROUP, StartAt::Earliest)
        .await
        .expect("group");
    let waiter = q.clone();
    let long_poll = tokio::spawn(async move {
        let options = FetchOptions {
            max_messages: 1,
            lease_ms: None,
            wait_ms: 120_000,
        };
        waiter.fetch("idle", GROUP, options).await
    });
    // On this single-threaded runtime the spawned fetch runs, up to its wait, when this
    // task yields.
    tokio::task::yield_now().await;
    assert!(!long_poll.is_finished(), "the fetch should be waiting");
    q.publish(TOPIC, Message::new(b"one".to_vec()))
        .await
        .expect("publish before the fault");
    let r = q.publish(TOPIC, Message::new(b"two".to_vec())).await;
    assert!(is_failed(&r), "{r:?}");
    // Far below the fetch's own two minutes; only a fetch left waiting runs into it.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), long_poll)
        .await
        .expect("the long poll kept waiting after the writer failed")
        .expect("fetch task");
    assert!(is_failed(&ended), "{ended:?}");
}

/// `GET path` on `addr`; returns the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The broker's `/readyz`: 200 while the engine takes writes, 503 (naming the failure)
/// from the failed fsync on; `/metrics` keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_writer_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let plan = Arc::new(FailAfter::new(StorageOp::Fsync, 3));
    let q = Arc::new(faulty_engine(dir.path(), &clock, &plan, 64 * 1024));
    let server = Server::new(q.clone(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let source = MetricsSource {
        engine: q.clone(),
        broker: server.metrics(),
    };
    let http = tokio::spawn(queue::metrics::serve(listener, source, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    assert_eq!(
        http_get(addr, "/readyz").await,
        (200, "ready\n".to_string())
    );
    for i in 0..3u8 {
        q.publish(TOPIC, Message::new(vec![i]))
            .await
            .expect("publish before the fault");
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let r = q.publish(TOPIC, Message::new(b"fails".to_vec())).await;
    assert!(is_failed(&r), "{r:?}");
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not ready") && body.contains("injected"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/metrics").await.0, 200);

    let _ = stop_tx.send(true);
    http.await.expect("http task").expect("http server");
}
