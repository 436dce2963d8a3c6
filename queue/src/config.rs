//! Engine configuration: one typed struct with documented defaults.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::faults::StorageFaults;

/// When a publish is confirmed relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Durability {
    /// Confirm only after write + `fdatasync` (and a directory fsync when a segment file was
    /// created). Concurrent publishers share one fsync (group commit). The default.
    FsyncBeforeConfirm,
    /// Confirm after the write reaches the OS; fsync at most every `interval_ms`. A machine
    /// crash (not a process crash) may lose up to that much confirmed data. Opt-in only.
    Interval {
        /// Longest time between fsyncs.
        interval_ms: u64,
    },
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::FsyncBeforeConfirm => f.write_str("fsync-before-confirm"),
            Durability::Interval { interval_ms } => write!(f, "fsync-every-{interval_ms}ms"),
        }
    }
}

/// Settings of an [`crate::Engine`]. `Config::default()` is what production uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Durability policy (default: fsync before confirm).
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes_max: u64,
    /// The writer zero-fills a segment file this far past what it writes (in steps of this
    /// size, never past `segment_bytes_max`), so that an fsync seldom has to record a larger
    /// file size (`FORMAT.md`, "Preallocated space"). Only a topic's tail segment has
    /// such space (a segment is cut to its frames when the next one starts). `0` turns it
    /// off (do so on copy-on-write or network file systems). At most
    /// [`crate::limits::PREALLOCATE_BYTES_MAX`] (larger values are cut to it).
    pub preallocate_bytes: u64,
    /// Most unresolved messages per topic before `publish` fails with `Full`.
    pub backlog_messages_max: u64,
    /// Most retained bytes per topic before `publish` fails with `Full`.
    pub backlog_bytes_max: u64,
    /// How long a producer-supplied message id is remembered for de-duplication.
    pub dedup_window_ms: u64,
    /// Most ids remembered per topic for de-duplication (oldest forgotten first; at most
    /// 2^30, larger values are cut to it).
    pub dedup_entries_max: usize,
    /// Most topics the engine holds, dead-letter topics included (each user topic has
    /// one); at most [`crate::limits::TOPICS_MAX`]. With `backlog_bytes_max`, it bounds
    /// the disk a queue may fill.
    pub topics_max: usize,
    /// Lease length used when a fetch does not name one.
    pub lease_ms_default: u64,
    /// Deliveries after which a failed message is dead-lettered.
    pub max_attempts: u32,
    /// Most leased (in-flight) messages per group; fetch returns fewer beyond it.
    pub in_flight_max: usize,
    /// Let a group-commit round wait briefly (bounded by `limits::COMMIT_GATHER_*` and by
    /// half the previous round's fsync time) for concurrent callers, so one fsync confirms more of them. Only with fsync before
    /// confirm and only after a round with more than one caller; a lone caller never waits.
    pub commit_gather: bool,
    /// Segments are kept at least this long after their last publish, even when acked.
    pub retention_ms: u64,
    /// Period of the background maintenance thread (lease expiry, dead-lettering,
    /// retention). `None` runs no thread: callers call [`crate::Engine::tick`] (tests).
    pub maintenance_interval_ms: Option<u64>,
    /// Repair corrupt sealed segments on open by truncating them at the first bad record
    /// (the messages after it in that segment are lost and reported) instead of refusing.
    pub repair: bool,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Storage faults to inject into the writer's writes and fsyncs (tests and the
    /// broker's fail point; see [`crate::faults`]). `None` (the default) injects nothing.
    pub storage_faults: Option<Arc<dyn StorageFaults>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            durability: Durability::FsyncBeforeConfirm,
            segment_bytes_max: 64 << 20,
            preallocate_bytes: crate::limits::PREALLOCATE_BYTES_DEFAULT,
            backlog_messages_max: 50_000_000,
            backlog_bytes_max: 16 << 30,
            dedup_window_ms: 10 * 60 * 1000,
            dedup_entries_max: 2_000_000,
            topics_max: crate::limits::TOPICS_MAX,
            lease_ms_default: 30_000,
            max_attempts: 5,
            in_flight_max: 100_000,
            commit_gather: true,
            retention_ms: 0,
            maintenance_interval_ms: Some(50),
            repair: false,
            clock: Arc::new(SystemClock),
            storage_faults: None,
        }
    }
}
