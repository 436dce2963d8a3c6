//! Storage fault injection: the seam through which tests, and the broker's test-only fail
//! point, make the writer thread's writes and fsyncs fail.
//!
//! [`Config::storage_faults`](crate::Config::storage_faults) is `None` in production: the
//! writer then pays one `Option` check per coalesced write and per fsync, nothing per
//! message. When it is set, the writer asks it before every segment write, every
//! `fdatasync` of a segment and every fsync of a topic directory; an error it returns is
//! that operation's result. A failed write first writes half of its bytes, as a short write
//! followed by an error (`ENOSPC`, `EIO`) leaves a file.
//!
//! [`FailAfter`] is the one plan the crate ships: the `n+1`-th operation of one kind fails,
//! once, and every later one succeeds again. That is the behaviour the "fsyncgate" lesson
//! is about (Linux reports a writeback error to one `fsync` and then forgets it, so a retry
//! succeeds although the data never reached the disk): the engine must stop at the first
//! failure, not at a retry's.
//!
//! `queue serve` reads the same plan from the `QUEUE_FAIL_POINT` environment variable
//! (`fsync-after:N` or `write-after:N`); it is compiled in always and inert unless set, like
//! the order worker's `ORDER_WORKER_PAUSE_AFTER_COMMIT`.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A storage operation of the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    /// A write (`pwrite`) to a segment file.
    Write,
    /// An `fdatasync` of a segment file.
    Fsync,
    /// An fsync of a topic directory (after a segment was created in it).
    FsyncDir,
}

/// Decides whether a storage operation of the writer fails. See the module documentation.
pub trait StorageFaults: Send + Sync + fmt::Debug {
    /// Called before the writer performs `op` on `path`; an error makes the operation fail
    /// with it.
    fn before(&self, op: StorageOp, path: &Path) -> std::io::Result<()>;
}

/// Fails the operation of kind `op` that follows `after` successful ones, once: every later
/// one succeeds again.
#[derive(Debug)]
pub struct FailAfter {
    op: StorageOp,
    after: u64,
    seen: AtomicU64,
    fired: AtomicBool,
}

impl FailAfter {
    /// A plan that fails the `after + 1`-th `op`.
    pub fn new(op: StorageOp, after: u64) -> FailAfter {
        FailAfter {
            op,
            after,
            seen: AtomicU64::new(0),
            fired: AtomicBool::new(false),
        }
    }

    /// Parses a fail point: `fsync-after:N` (the `N+1`-th segment `fdatasync` fails) or
    /// `write-after:N` (the `N+1`-th segment write fails).
    pub fn parse(spec: &str) -> Result<FailAfter, String> {
        let (what, n) = spec
            .split_once(':')
            .ok_or_else(|| format!("fail point {spec:?}: want fsync-after:N or write-after:N"))?;
        let op = match what {
            "fsync-after" => StorageOp::Fsync,
            "write-after" => StorageOp::Write,
            other => return Err(format!("fail point {spec:?}: unknown kind {other:?}")),
        };
        let after = n
            .parse()
            .map_err(|e| format!("fail point {spec:?}: count {n:?}: {e}"))?;
        Ok(FailAfter::new(op, after))
    }

    /// Whether the fault has been injected.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl StorageFaults for FailAfter {
    fn before(&self, op: StorageOp, path: &Path) -> std::io::Result<()> {
        if op != self.op {
            return Ok(());
        }
        if self.seen.fetch_add(1, Ordering::SeqCst) != self.after {
            return Ok(());
        }
        // Set before the error is returned, so whoever sees the flag knows the writer
        // is failing (or has failed) this operation.
        self.fired.store(true, Ordering::SeqCst);
        Err(std::io::Error::other(format!(
            "injected {op:?} failure on {} (fail point)",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_point_specs_parse_or_say_why_not() {
        let p = FailAfter::parse("fsync-after:3").expect("valid");
        assert_eq!((p.op, p.after), (StorageOp::Fsync, 3));
        let p = FailAfter::parse("write-after:0").expect("valid");
        assert_eq!((p.op, p.after), (StorageOp::Write, 0));
        for bad in [
            "",
            "fsync-after",
            "fsync-after:",
            "fsync-after:-1",
            "read-after:2",
            "x:y",
        ] {
            let e = FailAfter::parse(bad).expect_err(bad);
            assert!(e.contains("fail point"), "{bad}: {e}");
        }
    }

    #[test]
    fn fails_exactly_once_then_succeeds_again() {
        let p = FailAfter::new(StorageOp::Fsync, 2);
        let path = Path::new("seg");
        // Other kinds of operation are not counted.
        assert!(p.before(StorageOp::Write, path).is_ok());
        assert!(p.before(StorageOp::Fsync, path).is_ok());
        assert!(p.before(StorageOp::Fsync, path).is_ok());
        assert!(!p.fired());
        assert!(p.before(StorageOp::Fsync, path).is_err());
        assert!(p.fired());
        assert!(p.before(StorageOp::Fsync, path).is_ok());
        assert!(p.before(StorageOp::FsyncDir, path).is_ok());
    }
}
