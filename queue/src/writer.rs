//! The group-commit writer: one thread that owns every write and fsync.
//!
//! Callers assign file positions under their topic's lock and send a [`Job`] while still
//! holding it, so the channel order is the file order. The thread takes every job waiting
//! (up to [`COMMIT_BYTES_MAX`]), writes them, fsyncs each touched file once (and the
//! directory when a segment was created), then tells the topics what is durable and answers
//! all the callers: one fsync confirms every publish that arrived while the previous one ran.
//! With fsync before confirm, the telling and answering (one task wake-up per caller) runs
//! on a second thread, `queue-notify`, in round order, so that the next round's write and
//! fsync need not wait for it; nothing is answered before its own round's fsync has returned.
//!
//! The first failed write or fsync stops it for good (the "fsyncgate" lesson: after a
//! failed fsync the page cache no longer says what is on disk, and a retried fsync may
//! succeed without the data): that round's callers and every later one get
//! [`Error::Failed`], nothing more is written, and nothing after it is ever confirmed.
//! Faults can be injected through [`crate::faults`] (tests and the broker's fail point).
//!
//! The thread also keeps [`WriterMetrics`]: a few relaxed atomic adds per round (never per
//! job), read by `Engine::metrics`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::faults::{StorageFaults, StorageOp};
use crate::histogram::AtomicHistogram;
use crate::limits::{
    COMMIT_BYTES_MAX, COMMIT_GATHER_GAP_US, COMMIT_GATHER_MAX_US, NOTIFY_ROUNDS_MAX,
    PREALLOCATE_BYTES_MAX,
};

/// Most job slots a round reserves up front (sized like the previous round, up to this);
/// a larger round grows its vector as usual.
const ROUND_JOBS_PREALLOC: usize = 1024;

/// Largest coalescing buffer the writer keeps between rounds; a round of big batches
/// (up to `COMMIT_BYTES_MAX`) gives its larger buffer back.
const COALESCE_BUF_KEEP_MAX: usize = 1 << 20;

/// An open segment file.
#[derive(Debug)]
pub(crate) struct SegFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    /// How long the file is, as far as the writer knows: where its written frames end, or
    /// past them where it zero-filled ahead ([`Prealloc`]). Only the writer thread changes it
    /// once the file is shared.
    allocated: AtomicU64,
}

impl SegFile {
    /// A segment file `len` bytes long.
    pub(crate) fn new(path: PathBuf, file: File, len: u64) -> SegFile {
        SegFile {
            path,
            file,
            allocated: AtomicU64::new(len),
        }
    }

    /// Sets how long the file is (recovery, after it read or cut the file).
    pub(crate) fn set_len_known(&self, len: u64) {
        self.allocated.store(len, Ordering::Relaxed);
    }
}

/// Zero-filling ahead: after a write that ends past a file's known length, the writer
/// writes zeros from the write's end up to `step` bytes further (never past `cap`, the
/// segment size), in the same round, before its fsync. Later rounds then overwrite blocks
/// that already exist, and their `fdatasync` need not commit a new file size to the file
/// system's journal (on ext4 this about halves it). Only the tail has such space: a
/// segment is cut to its frames when the next one starts (`Job::seal`), and recovery reads
/// all-zero bytes after the tail's last frame as this unused space (`FORMAT.md`).
/// `step == 0`: off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prealloc {
    pub(crate) step: u64,
    pub(crate) cap: u64,
}

impl Prealloc {
    /// Preallocation as the config asks for it, `step` cut to [`PREALLOCATE_BYTES_MAX`].
    pub(crate) fn new(step: u64, segment_bytes_max: u64) -> Prealloc {
        Prealloc {
            step: step.min(PREALLOCATE_BYTES_MAX),
            cap: segment_bytes_max,
        }
    }

    /// Where zero-filling should stop after a write ending at `end` into a file known to
    /// be `allocated` long, or `None` when nothing needs writing.
    fn fill_to(self, end: u64, allocated: u64) -> Option<u64> {
        if self.step == 0 || end <= allocated {
            return None;
        }
        let target = end.saturating_add(self.step).min(self.cap);
        (target > end).then_some(target)
    }
}

/// Zeros to fill ahead with, written as many times as a step needs.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Told when a topic's messages up to an offset are durable.
pub(crate) trait DurableSink: Send + Sync + std::fmt::Debug {
    fn durable(&self, end_offset: u64);
}

/// One unit of work for the writer.
#[derive(Debug)]
pub(crate) struct Job {
    /// File to append to (`None`: a barrier that only waits for earlier jobs).
    pub(crate) file: Option<Arc<SegFile>>,
    /// Position to write at.
    pub(crate) pos: u64,
    /// Bytes to write.
    pub(crate) bytes: Vec<u8>,
    /// Directory to fsync after the file (set when the file was just created).
    pub(crate) dir_sync: Option<PathBuf>,
    /// The segment this job's new file seals, and where its frames end: its preallocated
    /// space is cut there, durably, before anything is written to the new file.
    pub(crate) seal: Option<(Arc<SegFile>, u64)>,
    /// Topic to tell, and the message offset that is durable once this job is.
    pub(crate) sink: Option<(Arc<dyn DurableSink>, u64)>,
    /// Caller waiting for the confirm.
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
}

enum Msg {
    Job(Job),
    /// Flush everything, answer, and exit.
    Stop(std::sync::mpsc::Sender<Result<()>>),
}

/// A write or fsync of the writer thread that failed: what was done, to which file or
/// directory, and the OS error. Every caller of the round gets it (and every later caller,
/// see [`Failure`]), so it is cheap to clone: the OS error is shared. Callers see it as
/// [`Error::Failed`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub(crate) struct WriteFailure {
    op: &'static str,
    path: PathBuf,
    source: Arc<std::io::Error>,
}

impl WriteFailure {
    fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WriteFailure {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

impl From<WriteFailure> for Error {
    fn from(f: WriteFailure) -> Error {
        Error::Failed(f.to_string())
    }
}

/// The first write or fsync failure, shared by the writer thread and its handle. The flag
/// is read on every submit; the failure is locked only once something failed. `changed`
/// turns true with it, for whoever awaits the failure (the broker stops serving on it).
#[derive(Debug)]
struct Failure {
    set: AtomicBool,
    first: Mutex<Option<WriteFailure>>,
    changed: tokio::sync::watch::Sender<bool>,
}

impl Default for Failure {
    fn default() -> Self {
        Failure {
            set: AtomicBool::new(false),
            first: Mutex::new(None),
            changed: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Failure {
    fn get(&self) -> Option<WriteFailure> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.first.lock().ok().and_then(|m| m.clone())
    }

    /// Records `failure` unless a failure is already recorded.
    fn record(&self, failure: &WriteFailure) {
        if let Ok(mut m) = self.first.lock()
            && m.is_none()
        {
            tracing::error!(error = %failure, "queue writer failed; refusing further writes");
            *m = Some(failure.clone());
            self.set.store(true, Ordering::Release);
            self.changed.send_replace(true);
        }
    }
}

/// What the writer thread has done since it started.
#[derive(Debug, Default)]
pub(crate) struct WriterMetrics {
    /// Duration of each fsync round: the fdatasync of every file written since the last
    /// one plus the fsync of any directory that gained a segment, as one sample.
    pub(crate) fsync: AtomicHistogram,
    /// Rounds that took at least one job.
    pub(crate) commit_rounds: AtomicU64,
    /// Bytes written to segment files (segment headers of rolled segments included; the
    /// zeros of preallocation not).
    pub(crate) bytes_written: AtomicU64,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Mutex<Option<Sender<Msg>>>,
    failed: Arc<Failure>,
    metrics: Arc<WriterMetrics>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Job(j) => j.fmt(f),
            Msg::Stop(_) => f.write_str("Stop"),
        }
    }
}

impl Writer {
    pub(crate) fn start(
        durability: Durability,
        gather: bool,
        prealloc: Prealloc,
        faults: Option<Arc<dyn StorageFaults>>,
    ) -> Result<Writer> {
        let (tx, rx) = std::sync::mpsc::channel();
        let failed = Arc::new(Failure::default());
        let metrics = Arc::new(WriterMetrics::default());
        let (failed2, metrics2) = (failed.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || run(rx, durability, gather, prealloc, failed2, metrics2, faults))
            .map_err(|e| Error::io("spawn writer thread", "", e))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            failed,
            metrics,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a job. Call while holding the lock that assigned the job's position.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        if let Some(failure) = self.failure() {
            return Err(failure.into());
        }
        let tx = self.tx.lock().map_err(|_| Error::Closed)?;
        match tx.as_ref() {
            Some(tx) => tx.send(Msg::Job(job)).map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        }
    }

    /// The first write failure, if any.
    pub(crate) fn failure(&self) -> Option<WriteFailure> {
        self.failed.get()
    }

    /// Turns true when the first write failure is recorded.
    pub(crate) fn failure_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.failed.changed.subscribe()
    }

    /// What the thread has done so far.
    pub(crate) fn metrics(&self) -> &WriterMetrics {
        &self.metrics
    }

    /// Flushes, fsyncs and stops the thread.
    pub(crate) fn stop(&self) -> Result<()> {
        let tx = self.tx.lock().map_err(|_| Error::Closed)?.take();
        let Some(tx) = tx else { return Ok(()) };
        // A std channel, not a tokio one: `close` may be called from inside a runtime.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sent = tx.send(Msg::Stop(done_tx)).is_ok();
        drop(tx);
        let result = if sent {
            done_rx.recv().unwrap_or(Err(Error::Closed))
        } else {
            Ok(())
        };
        if let Some(t) = self.thread.lock().map_err(|_| Error::Closed)?.take() {
            let _ = t.join();
        }
        result
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping the sender lets the thread drain what is queued and exit. Wait for it, so
        // that nothing writes to the directory once the engine (and its lock file) is gone.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    durability: Durability,
    gather_rounds: bool,
    mut prealloc: Prealloc,
    failed: Arc<Failure>,
    metrics: Arc<WriterMetrics>,
    faults: Option<Arc<dyn StorageFaults>>,
) {
    let faults = faults.as_deref();
    // The gathering sleeps below are tens of µs; Linux lets a sleeping thread oversleep by
    // its timer slack (50 µs by default), which would double them. 1 µs keeps them as meant.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000)) {
        tracing::debug!(error = %e, "cannot set the writer's timer slack");
    }
    let mut dirty: HashMap<*const SegFile, Arc<SegFile>> = HashMap::new();
    let mut dirty_dirs: Vec<PathBuf> = Vec::new();
    let mut last_sync = Instant::now();
    // How long the last round's fsync took: a round gathers for at most half of it (see
    // below), so that on a disk whose fsync is short the wait does not outgrow what it saves.
    let mut last_fsync = Duration::from_micros(COMMIT_GATHER_MAX_US);
    let mut previous_round_jobs = 0usize;
    // The coalescing buffer, kept across rounds so that a round allocates nothing for it.
    let mut buf: Vec<u8> = Vec::new();
    let interval = match durability {
        Durability::FsyncBeforeConfirm => None,
        Durability::Interval { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
    };
    // Answering callers (waking one task each) takes a few µs per job; when every round
    // fsyncs, a second thread does it so that the next round's write + fsync starts at once.
    // Rounds are answered in order, each only after its own fsync. In interval mode (rounds
    // without fsync are CPU-bound, the hand-off would cost more than it saves) and if the
    // thread cannot be started, rounds are answered inline.
    let (notify_tx, notify_rx) = std::sync::mpsc::sync_channel::<Round>(NOTIFY_ROUNDS_MAX);
    let mut notifier = if interval.is_none() {
        std::thread::Builder::new()
            .name("queue-notify".into())
            .spawn(move || {
                for (jobs, result) in notify_rx {
                    finish(jobs, &result);
                }
            })
            .ok()
            .map(|handle| (notify_tx, handle))
    } else {
        None
    };
    loop {
        // Block for the first message (in interval mode, only until the next fsync is due).
        let first = match interval {
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            Some(iv) => {
                let wait = iv.saturating_sub(last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let gather_start = Instant::now();
        // Sized for a round like the previous one: the vector is handed to the notifier
        // with the round, so it cannot be kept.
        let mut jobs = Vec::with_capacity(previous_round_jobs.clamp(1, ROUND_JOBS_PREALLOC));
        let mut stop = None;
        let mut bytes = 0usize;
        let mut next = first;
        while let Some(msg) = next {
            match msg {
                Msg::Job(j) => {
                    bytes += j.bytes.len();
                    jobs.push(j);
                }
                Msg::Stop(s) => {
                    stop = Some(s);
                    break;
                }
            }
            if bytes >= COMMIT_BYTES_MAX {
                break;
            }
            next = rx.try_recv().ok();
            // Gathering: with fsync per round and concurrent callers, the callers answered
            // by the previous round come back within microseconds. Waiting for them (while
            // they keep arriving, up to a bound) puts them into this round instead of the
            // next, doubling the messages per fsync. A lone caller never waits, and a round
            // waits at most half as long as the last fsync took (a wait longer than the
            // fsync it shares costs the callers more than a round of their own would).
            if next.is_none()
                && interval.is_none()
                && stop.is_none()
                && gather_rounds
                && previous_round_jobs > 1
                && jobs.len() < previous_round_jobs
            {
                let waited = gather_start.elapsed();
                let bound = Duration::from_micros(COMMIT_GATHER_MAX_US).min(last_fsync / 2);
                let left = bound.saturating_sub(waited);
                if !left.is_zero() {
                    let gap = Duration::from_micros(COMMIT_GATHER_GAP_US).min(left);
                    // Sleep rather than block on the channel: blocked, every arriving
                    // job would wake this thread (a futex wake and a context switch per
                    // caller); asleep, the callers only enqueue.
                    std::thread::sleep(gap);
                    next = rx.try_recv().ok();
                }
            }
        }
        previous_round_jobs = jobs.len();

        let mut result = match failed.get() {
            Some(failure) => Err(failure),
            None => Ok(()),
        };
        if result.is_ok() {
            result = write_all(
                &jobs,
                &mut prealloc,
                &mut buf,
                &mut dirty,
                &mut dirty_dirs,
                &metrics.fsync,
                faults,
            );
            if buf.capacity() > COALESCE_BUF_KEEP_MAX {
                buf = Vec::new();
            }
            if result.is_ok() {
                metrics
                    .bytes_written
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            }
        }
        if !jobs.is_empty() {
            metrics.commit_rounds.fetch_add(1, Ordering::Relaxed);
        }
        let sync_now = interval.is_none()
            || stop.is_some()
            || last_sync.elapsed() >= interval.unwrap_or_default();
        if result.is_ok() && sync_now {
            let fsync_start = Instant::now();
            result = sync_all(&mut dirty, &mut dirty_dirs, &metrics.fsync, faults);
            last_sync = Instant::now();
            last_fsync = last_sync - fsync_start;
        }
        if let Err(failure) = &result {
            failed.record(failure);
        }
        let jobs = match &notifier {
            Some((tx, _)) if !jobs.is_empty() => match tx.send((jobs, result.clone())) {
                Ok(()) => Vec::new(),
                Err(std::sync::mpsc::SendError((jobs, _))) => jobs,
            },
            _ => jobs,
        };
        finish(jobs, &result);
        if let Some(s) = stop {
            // Every caller is answered before `stop` returns.
            stop_notifier(notifier.take());
            let _ = s.send(result.map_err(Error::from));
            return;
        }
    }
    // Channel closed: make what was written durable before exiting.
    let _ = sync_all(&mut dirty, &mut dirty_dirs, &metrics.fsync, faults);
    stop_notifier(notifier);
}

/// A fsynced round for the notifier thread to answer: its jobs and its outcome.
type Round = (Vec<Job>, Result<(), WriteFailure>);

/// Lets the notifier thread answer what it was given, and waits for it.
fn stop_notifier(notifier: Option<(SyncSender<Round>, JoinHandle<()>)>) {
    if let Some((tx, handle)) = notifier {
        drop(tx);
        let _ = handle.join();
    }
}

fn write_all(
    jobs: &[Job],
    prealloc: &mut Prealloc,
    buf: &mut Vec<u8>,
    dirty: &mut HashMap<*const SegFile, Arc<SegFile>>,
    dirty_dirs: &mut Vec<PathBuf>,
    fsync_us: &AtomicHistogram,
    faults: Option<&dyn StorageFaults>,
) -> Result<(), WriteFailure> {
    let mut i = 0;
    while i < jobs.len() {
        let Some(file) = &jobs[i].file else {
            i += 1;
            continue;
        };
        if let Some((sealed, end)) = &jobs[i].seal
            && sealed.allocated.load(Ordering::Relaxed) > *end
        {
            // A sealed segment keeps no preallocated space: recovery reads zeros only at the
            // end of the tail as space, anywhere else as damage. The cut is made durable by
            // the fsync just below, before the new segment gets its first bytes.
            sealed
                .file
                .set_len(*end)
                .map_err(|e| WriteFailure::new("cut preallocated space", &sealed.path, e))?;
            sealed.allocated.store(*end, Ordering::Relaxed);
            dirty.insert(Arc::as_ptr(sealed), sealed.clone());
        }
        if jobs[i].dir_sync.is_some() && !dirty.is_empty() {
            // A new segment: make the older ones durable first, so that after a power loss
            // a segment with data in it is never preceded by a torn one (recovery treats a
            // torn sealed segment as corruption).
            sync_all(dirty, dirty_dirs, fsync_us, faults)?;
        }
        // Coalesce jobs that continue each other in the same file into one write.
        let start = jobs[i].pos;
        let mut end = start + jobs[i].bytes.len() as u64;
        let mut j = i + 1;
        while j < jobs.len()
            && jobs[j].file.as_ref().is_some_and(|f| Arc::ptr_eq(f, file))
            && jobs[j].pos == end
        {
            end += jobs[j].bytes.len() as u64;
            j += 1;
        }
        let result = if j == i + 1 {
            write_at(file, &jobs[i].bytes, start, faults)
        } else {
            buf.clear();
            for job in &jobs[i..j] {
                buf.extend_from_slice(&job.bytes);
            }
            write_at(file, buf, start, faults)
        };
        result.map_err(|e| WriteFailure::new("write", &file.path, e))?;
        let allocated = file.allocated.load(Ordering::Relaxed);
        if let Some(fill_end) = prealloc.fill_to(end, allocated) {
            match fill_zeros(file, end, fill_end) {
                Ok(()) => file.allocated.store(fill_end, Ordering::Relaxed),
                Err(e) => {
                    // Only an optimisation: the frames are written. Without the space (a
                    // full disk, say) the writer appends as before; what the failed fill
                    // left is zeros past the frames, which recovery reads as unused.
                    tracing::warn!(segment = %file.path.display(), error = %e, "cannot zero-fill ahead; preallocation off");
                    prealloc.step = 0;
                    file.allocated.store(end, Ordering::Relaxed);
                }
            }
        } else if end > allocated {
            file.allocated.store(end, Ordering::Relaxed);
        }
        dirty.insert(Arc::as_ptr(file), file.clone());
        for job in &jobs[i..j] {
            if let Some(d) = &job.dir_sync {
                dirty_dirs.push(d.clone());
            }
        }
        i = j;
    }
    Ok(())
}

/// Writes `bytes` at `pos`, unless the fault plan fails the write: then half of the bytes
/// are written first, as a short write followed by an error leaves the file.
fn write_at(
    file: &SegFile,
    bytes: &[u8],
    pos: u64,
    faults: Option<&dyn StorageFaults>,
) -> std::io::Result<()> {
    if let Some(faults) = faults
        && let Err(e) = faults.before(StorageOp::Write, &file.path)
    {
        file.file.write_all_at(&bytes[..bytes.len() / 2], pos)?;
        return Err(e);
    }
    file.file.write_all_at(bytes, pos)
}

/// Writes zeros over `[from, to)` of `file`.
fn fill_zeros(file: &SegFile, mut from: u64, to: u64) -> std::io::Result<()> {
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64) as usize;
        file.file.write_all_at(&ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

/// Fsyncs every dirty file and directory, recording the time it took as one sample of
/// `fsync_us` (nothing is recorded when nothing was dirty).
fn sync_all(
    dirty: &mut HashMap<*const SegFile, Arc<SegFile>>,
    dirty_dirs: &mut Vec<PathBuf>,
    fsync_us: &AtomicHistogram,
    faults: Option<&dyn StorageFaults>,
) -> Result<(), WriteFailure> {
    if dirty.is_empty() && dirty_dirs.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let result = sync_files(dirty, dirty_dirs, faults);
    fsync_us.record_duration(start.elapsed());
    result
}

fn sync_files(
    dirty: &mut HashMap<*const SegFile, Arc<SegFile>>,
    dirty_dirs: &mut Vec<PathBuf>,
    faults: Option<&dyn StorageFaults>,
) -> Result<(), WriteFailure> {
    let check = |op, path: &std::path::Path| faults.map_or(Ok(()), |f| f.before(op, path));
    for (_, f) in dirty.drain() {
        check(StorageOp::Fsync, &f.path)
            .and_then(|()| f.file.sync_data())
            .map_err(|e| WriteFailure::new("fdatasync", &f.path, e))?;
    }
    dirty_dirs.sort();
    dirty_dirs.dedup();
    for d in dirty_dirs.drain(..) {
        check(StorageOp::FsyncDir, &d)
            .and_then(|()| crate::fsutil::fsync_dir(&d))
            .map_err(|e| WriteFailure::new("fsync directory", &d, e))?;
    }
    Ok(())
}

fn finish(mut jobs: Vec<Job>, result: &Result<(), WriteFailure>) {
    if result.is_ok() {
        // Tell each topic its new durable end once (jobs are in offset order per topic).
        let mut latest: Vec<(Arc<dyn DurableSink>, u64)> = Vec::new();
        for job in &jobs {
            if let Some((sink, end)) = &job.sink {
                match latest.iter_mut().find(|(s, _)| Arc::ptr_eq(s, sink)) {
                    Some(entry) => entry.1 = entry.1.max(*end),
                    None => latest.push((sink.clone(), *end)),
                }
            }
        }
        for (sink, end) in latest {
            sink.durable(end);
        }
    }
    // Every caller first, in one tight pass, and only then free the jobs (their bytes were
    // allocated on the callers' threads): wake-ups close together let a woken runtime
    // worker find the next task already queued instead of parking between two of them.
    for job in &mut jobs {
        if let Some(done) = job.done.take() {
            let _ = done.send(result.clone().map_err(Error::from));
        }
    }
    drop(jobs);
}

#[cfg(test)]
mod tests {
    use super::Prealloc;

    /// Where a write ending at `end` into a file `allocated` long is zero-filled to.
    #[test]
    fn the_fill_runs_one_step_past_the_write_and_never_past_the_segment() {
        let p = Prealloc::new(1000, 10_000);
        // Within what is already there: nothing to write.
        assert_eq!(p.fill_to(500, 1000), None);
        assert_eq!(p.fill_to(1000, 1000), None);
        // Past it: one step further.
        assert_eq!(p.fill_to(1001, 1000), Some(2001));
        assert_eq!(p.fill_to(32, 0), Some(1032));
        // Cut at the segment size, and nothing once a write reaches it (one large frame
        // may make a segment longer than its size: no zeros after it).
        assert_eq!(p.fill_to(9_500, 9_000), Some(10_000));
        assert_eq!(p.fill_to(10_000, 9_000), None);
        assert_eq!(p.fill_to(12_000, 9_000), None);
        // Off.
        assert_eq!(Prealloc::new(0, 10_000).fill_to(1001, 1000), None);
        // A step larger than the limit is cut to it.
        let huge = Prealloc::new(u64::MAX, u64::MAX);
        assert_eq!(
            huge.fill_to(10, 0),
            Some(10 + crate::limits::PREALLOCATE_BYTES_MAX)
        );
    }
}
