//! Helpers shared by the integration tests.

use std::sync::Arc;

use queue::{AckOutcome, Config, Engine, FetchOptions, ManualClock, Queue, StartAt};

/// A start time far from zero so that subtractions in the engine would show.
pub const T0: u64 = 1_700_000_000_000;

/// Config for deterministic tests: manual clock, no maintenance thread, small segments.
pub fn test_config(clock: &ManualClock) -> Config {
    Config {
        clock: Arc::new(clock.clone()),
        maintenance_interval_ms: None,
        segment_bytes_max: 64 * 1024,
        max_attempts: 3,
        lease_ms_default: 1_000,
        ..Config::default()
    }
}

/// Opens an engine in `dir` with the test config.
pub fn open(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::open(dir, test_config(clock)).expect("open engine")
}

/// A temporary directory, a manual clock at [`T0`] and an engine opened on both.
pub fn setup() -> (tempfile::TempDir, ManualClock, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let q = open(dir.path(), &clock);
    (dir, clock, q)
}

/// Fetches and acks everything deliverable to `group` now; returns how many were acked.
/// (These helpers take any backend: an `Engine` or a conformance harness's `dyn Queue`.)
pub async fn drain_acking<Q: Queue + ?Sized>(q: &Q, topic: &str, group: &str) -> usize {
    let mut n = 0;
    loop {
        let options = FetchOptions {
            max_messages: 1000,
            lease_ms: Some(1_000),
            wait_ms: 0,
        };
        let d = q.fetch(topic, group, options).await.expect("fetch");
        if d.is_empty() {
            return n;
        }
        let r: Vec<_> = d.iter().map(|d| d.receipt()).collect();
        let out = q.ack(topic, group, &r).await.expect("ack");
        assert!(out.iter().all(|o| *o == AckOutcome::Acked), "{out:?}");
        n += d.len();
    }
}

/// Closes `q` (flushing everything), drops it and opens the directory again.
pub fn reopen(q: Engine, dir: &std::path::Path, clock: &ManualClock) -> Engine {
    q.close().expect("close");
    drop(q);
    open(dir, clock)
}

/// Offsets of what one fetch of up to `max` messages (1 s leases, no wait) delivers.
pub async fn offsets<Q: Queue + ?Sized>(q: &Q, topic: &str, group: &str, max: usize) -> Vec<u64> {
    let options = FetchOptions {
        max_messages: max,
        lease_ms: Some(1_000),
        wait_ms: 0,
    };
    let got = q.fetch(topic, group, options).await.expect("fetch");
    got.iter().map(|d| d.offset).collect()
}

/// Like [`setup`], with the test config changed by `change` first.
pub fn setup_with(change: impl FnOnce(&mut Config)) -> (tempfile::TempDir, ManualClock, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut cfg = test_config(&clock);
    change(&mut cfg);
    let q = Engine::open(dir.path(), cfg).expect("open engine");
    (dir, clock, q)
}

/// Creates group `name` on topic "t", reading from the earliest message.
pub async fn group<Q: Queue + ?Sized>(q: &Q, name: &str) {
    q.create_group("t", name, StartAt::Earliest)
        .await
        .expect("group");
}
