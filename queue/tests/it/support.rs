//! Helpers shared by the integration tests.

use std::sync::Arc;

use queue::{Config, Engine, ManualClock};

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
