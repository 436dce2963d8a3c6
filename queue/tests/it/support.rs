//! Helpers shared by the integration tests.

use std::sync::Arc;

use queue::{AckOutcome, Config, Engine, FetchOptions, ManualClock, Queue};

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
pub async fn drain_acking(q: &Engine, topic: &str, group: &str) -> usize {
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
