//! Who a crew's members are and whether they are alive: each worker and canceller has a
//! stable id and a small shared [`Liveness`] its loop updates; the crew's heartbeat task
//! turns them into rows of the `workers` table ([`crate::db::OrdersDb::heartbeat`]), where
//! every gateway sees the members of every process (the database plays RocketMQ's name
//! server, the crews its brokers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::db::{WORKER_HOST_BYTES_MAX, WorkerBeat, WorkerKind};

/// Longest host name put in a member's id, bytes (the row's `host` column may hold up to
/// [`WORKER_HOST_BYTES_MAX`]).
pub const HOST_IN_ID_BYTES_MAX: usize = 64;

/// What a member's loop reports: when it last made a step and how many messages it
/// finished. Shared between the member and the crew's heartbeat task.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Last step of the loop (a fetch, a decision, a long poll that ran out), ms since the
    /// Unix epoch by the member's clock; 0 before the first.
    pub progress_ms: AtomicU64,
    /// Messages finished: purchases decided and acked (workers), orders cancelled
    /// (cancellers).
    pub handled: AtomicU64,
}

impl Liveness {
    /// Records a step of the loop at `now_ms` (never moves back).
    pub fn progressed(&self, now_ms: u64) {
        self.progress_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Records `n` more messages finished.
    pub fn finished(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::Relaxed);
    }
}

/// One worker or canceller of a crew, as the heartbeat reports it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Stable id: `{host}-{pid}-{kind}-{n}`, `n` counting the members of that kind the
    /// process has started (so two crews of one process never share an id).
    pub id: String,
    /// Worker or canceller.
    pub kind: WorkerKind,
    /// Host of the process ([`host_name`]).
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Its loop's reports.
    pub liveness: Arc<Liveness>,
}

/// Members of each kind started in this process so far (the `n` of their ids).
static WORKERS_STARTED: AtomicU64 = AtomicU64::new(0);
static CANCELLERS_STARTED: AtomicU64 = AtomicU64::new(0);

impl Member {
    /// A new member of this process, started at `now_ms`, with a fresh id and liveness.
    pub fn new(kind: WorkerKind, now_ms: u64) -> Member {
        let counter = match kind {
            WorkerKind::Worker => &WORKERS_STARTED,
            WorkerKind::Canceller => &CANCELLERS_STARTED,
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let host = host_name().to_string();
        let pid = std::process::id();
        Member {
            id: format!("{host}-{pid}-{}-{n}", kind.as_str()),
            kind,
            host,
            pid,
            started_ms: now_ms,
            liveness: Arc::new(Liveness::default()),
        }
    }

    /// Its heartbeat row at `now_ms`.
    pub fn beat(&self, now_ms: u64) -> WorkerBeat {
        WorkerBeat {
            id: self.id.clone(),
            kind: self.kind,
            host: self.host.clone(),
            pid: self.pid,
            started_ms: self.started_ms,
            beat_ms: now_ms,
            progress_ms: self.liveness.progress_ms.load(Ordering::Relaxed),
            handled: self.liveness.handled.load(Ordering::Relaxed),
            stopped_ms: None,
        }
    }
}

/// This machine's name: `/etc/hostname`, else the `HOSTNAME` environment variable, else
/// `localhost`; only ASCII letters, digits, `.`, `-` and `_` are kept, at most
/// [`HOST_IN_ID_BYTES_MAX`] bytes. Read once.
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let from_file = std::fs::read_to_string("/etc/hostname").ok();
        let from_env = std::env::var("HOSTNAME").ok();
        [from_file, from_env]
            .into_iter()
            .flatten()
            .map(|h| clean_host(&h))
            .find(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    })
}

/// `raw` with surrounding blanks trimmed and every byte outside `[A-Za-z0-9._-]` dropped,
/// cut to [`HOST_IN_ID_BYTES_MAX`] bytes.
fn clean_host(raw: &str) -> String {
    const _: () = assert!(HOST_IN_ID_BYTES_MAX <= WORKER_HOST_BYTES_MAX);
    raw.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(HOST_IN_ID_BYTES_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_cleaned_and_bounded() {
        assert_eq!(clean_host("  web-1.example\n"), "web-1.example");
        assert_eq!(clean_host("a b/c;d"), "abcd");
        assert_eq!(clean_host("\n"), "");
        assert_eq!(clean_host(&"x".repeat(500)).len(), HOST_IN_ID_BYTES_MAX);
        let h = host_name();
        assert!(!h.is_empty() && h.len() <= HOST_IN_ID_BYTES_MAX);
    }

    #[test]
    fn ids_are_unique_in_a_process_and_beats_carry_liveness() {
        let a = Member::new(WorkerKind::Worker, 5);
        let b = Member::new(WorkerKind::Worker, 5);
        let c = Member::new(WorkerKind::Canceller, 5);
        assert_ne!(a.id, b.id);
        assert!(c.id.contains("-canceller-"), "{}", c.id);
        assert!(
            a.id.starts_with(&format!("{}-{}-worker-", host_name(), std::process::id())),
            "{}",
            a.id
        );
        a.liveness.progressed(40);
        a.liveness.progressed(30); // never back
        a.liveness.finished(3);
        let beat = a.beat(50);
        assert_eq!(
            (
                beat.started_ms,
                beat.beat_ms,
                beat.progress_ms,
                beat.handled
            ),
            (5, 50, 40, 3)
        );
        assert_eq!(beat.stopped_ms, None);
    }
}
