//! What the load tests that need scratch Redis servers share: starting them through
//! `redis-kit` (free loopback ports, temporary directories, never the shared 6379), the
//! Redis Streams key names the tests look at (queue/REDIS.md, "Keys"), and the flood of
//! purchases the fault tests run ([`flood`]).

#![allow(dead_code)] // Each test binary uses its own share of these helpers.

pub mod crowd;
pub mod flood;
pub mod procs;

use redis_kit::KitError;

/// The queue's default key prefix (`queue::streams::PREFIX_DEFAULT`).
pub const QUEUE_PREFIX: &str = queue::streams::PREFIX_DEFAULT;

/// The registry of topics (a hash: topic → partitions).
pub fn topics_key() -> String {
    format!("{QUEUE_PREFIX}topics")
}

/// The stream of partition `p` of `topic` (every key of a partition is under the hash tag
/// `{topic:p}`).
pub fn stream_key(topic: &str, p: u32) -> String {
    format!("{QUEUE_PREFIX}{{{topic}:{p}}}:s")
}

/// The counter of partition `p` of `topic`: the next seq to publish, so the messages it
/// ever took.
pub fn next_key(topic: &str, p: u32) -> String {
    format!("{QUEUE_PREFIX}{{{topic}:{p}}}:next")
}

/// Starts scratch Redis servers with `start` (blocking: run it off the async workers).
/// Without `redis-server` on `PATH` the test is skipped (`None`) — except under `CI`, where
/// it fails; any other failure to start fails the test everywhere.
pub async fn start_redis<T: Send + 'static>(
    what: &'static str,
    start: impl FnOnce() -> Result<T, KitError> + Send + 'static,
) -> Option<T> {
    let started = tokio::task::spawn_blocking(start)
        .await
        .expect("the start task does not panic");
    match started {
        Ok(servers) => Some(servers),
        Err(e @ KitError::MissingBinary { .. }) if !order_worker::testing::under_ci() => {
            eprintln!("skipping: {what}: {e}");
            None
        }
        Err(e) => panic!("{what} did not start: {e}"),
    }
}

/// Waits until the workers' group of `system` has finished the orders topic (lag 0), at
/// most `within`.
pub async fn wait_for_rest(system: &load_tests::system::AllInOne, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let stats = system
            .state
            .queue
            .stats(&system.state.config.orders_topic)
            .await
            .expect("queue stats");
        let lag = stats
            .groups
            .iter()
            .find(|g| g.name == system.state.config.workers_group)
            .map(|g| g.lag);
        if lag == Some(0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained: {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
