//! Preallocated space (`FORMAT.md`, "Preallocated space"): the writer zero-fills segment
//! files ahead of its writes. Each test runs the same publishes into two directories, one
//! with preallocation and one without, so the one without says byte for byte where the
//! frames end; the preallocated files must hold exactly those bytes followed by zeros, and
//! read back, recover and continue exactly as the plain ones do.

use std::path::{Path, PathBuf};

use queue::{Config, Engine, ManualClock, Message, Queue, RecoveryReport};

use crate::support::{T0, test_config};

/// The segment files of topic `t`, in sequence order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("topics").join("t"))
        .expect("list topic")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// An engine in `dir` with preallocation `step` and segments of at most `segment`.
fn open(dir: &Path, clock: &ManualClock, step: u64, segment: u64) -> Engine {
    let config = Config {
        preallocate_bytes: step,
        segment_bytes_max: segment,
        ..test_config(clock)
    };
    Engine::open(dir, config).expect("open engine")
}

/// Two logs written alike: one with preallocation `step`, one without; segments of at
/// most `segment` bytes.
struct Pair {
    pre_dir: tempfile::TempDir,
    plain_dir: tempfile::TempDir,
    clock: ManualClock,
    pre: Engine,
    plain: Engine,
}

fn pair(step: u64, segment: u64) -> Pair {
    let pre_dir = tempfile::tempdir().expect("test setup");
    let plain_dir = tempfile::tempdir().expect("test setup");
    let clock = ManualClock::new(T0);
    let pre = open(pre_dir.path(), &clock, step, segment);
    let plain = open(plain_dir.path(), &clock, 0, segment);
    Pair {
        pre_dir,
        plain_dir,
        clock,
        pre,
        plain,
    }
}

/// Publishes messages `from..to` one at a time (one write round each).
async fn publish(q: &Engine, from: u32, to: u32) {
    for i in from..to {
        let payload = format!("message {i} {}", "y".repeat((i % 13) as usize));
        let c = q
            .publish("t", Message::new(payload))
            .await
            .expect("publish");
        assert_eq!(c.offset, u64::from(i));
    }
}

/// Every payload of topic `t`, in offset order.
async fn payloads(q: &Engine) -> Vec<(u64, Vec<u8>)> {
    q.peek("t", 0, 1000)
        .await
        .expect("peek")
        .into_iter()
        .map(|p| (p.offset, p.payload.to_vec()))
        .collect()
}

/// Checks that every preallocated segment holds the plain one's bytes, the tail then only
/// zeros, at most `step` of them and never past `segment` (unless the frames are), and a
/// sealed segment nothing more (its space is cut at the roll); returns how many zero bytes
/// the tail holds after its frames.
fn same_frames_then_zeros(pre: &Path, plain: &Path, step: u64, segment: u64) -> u64 {
    let (a, b) = (segments(pre), segments(plain));
    assert_eq!(a.len(), b.len(), "same segments: {a:?} / {b:?}");
    let mut last_zeros = 0;
    let tail = a.len() - 1;
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let (bytes_a, bytes_b) = (
            std::fs::read(a).expect("test setup"),
            std::fs::read(b).expect("test setup"),
        );
        let end = bytes_b.len();
        assert!(
            bytes_a.len() >= end,
            "{}: shorter than its frames",
            a.display()
        );
        assert_eq!(
            &bytes_a[..end],
            &bytes_b[..],
            "{}: frames differ",
            a.display()
        );
        assert!(
            bytes_a[end..].iter().all(|&x| x == 0),
            "{}: not zeros after the frames",
            a.display()
        );
        let zeros = (bytes_a.len() - end) as u64;
        assert!(
            zeros <= step,
            "{}: {zeros} zero bytes > step {step}",
            a.display()
        );
        assert!(
            bytes_a.len() as u64 <= segment.max(end as u64),
            "{}: zero-filled past the segment size",
            a.display()
        );
        if i < tail {
            assert_eq!(zeros, 0, "{}: a sealed segment kept its space", a.display());
        }
        last_zeros = zeros;
    }
    last_zeros
}

fn reopen(q: Engine, dir: &Path, clock: &ManualClock, step: u64, segment: u64) -> Engine {
    q.close().expect("close");
    drop(q);
    open(dir, clock, step, segment)
}

#[tokio::test]
async fn the_tail_is_zero_filled_ahead_and_reopens_as_it_was() {
    let (step, segment) = (4096, 1 << 20);
    let Pair {
        pre_dir,
        plain_dir,
        clock,
        pre,
        plain,
    } = pair(step, segment);
    publish(&pre, 0, 50).await;
    publish(&plain, 0, 50).await;
    let zeros = same_frames_then_zeros(pre_dir.path(), plain_dir.path(), step, segment);
    assert!(zeros > 0, "the tail was not zero-filled ahead");

    // Reopened: nothing torn, nothing repaired, the same messages, and the log continues.
    let pre = reopen(pre, pre_dir.path(), &clock, step, segment);
    let plain = reopen(plain, plain_dir.path(), &clock, 0, segment);
    assert_eq!(
        pre.recovery_reports().get("t").cloned(),
        Some(RecoveryReport::default())
    );
    assert_eq!(payloads(&pre).await, payloads(&plain).await);
    publish(&pre, 50, 120).await;
    publish(&plain, 50, 120).await;
    same_frames_then_zeros(pre_dir.path(), plain_dir.path(), step, segment);
    let pre = reopen(pre, pre_dir.path(), &clock, step, segment);
    assert_eq!(
        pre.recovery_reports().get("t").cloned(),
        Some(RecoveryReport::default())
    );
    assert_eq!(payloads(&pre).await, payloads(&plain).await);
    assert_eq!(payloads(&pre).await.len(), 120);
}

#[tokio::test]
async fn sealed_segments_are_cut_to_their_frames_and_the_fill_stays_within_a_segment() {
    // Steps larger than what is left of a segment: the fill stops at the segment size.
    let (step, segment) = (1500, 2000);
    let Pair {
        pre_dir,
        plain_dir,
        clock,
        pre,
        plain,
    } = pair(step, segment);
    let mut tail_zeros_seen = 0;
    for k in 0..20u32 {
        publish(&pre, k * 10, k * 10 + 10).await;
        publish(&plain, k * 10, k * 10 + 10).await;
        // Every sealed segment ends at its last frame; the tail's zeros stay in bounds.
        tail_zeros_seen += same_frames_then_zeros(pre_dir.path(), plain_dir.path(), step, segment);
    }
    assert!(segments(pre_dir.path()).len() > 5, "the log rolled");
    assert!(tail_zeros_seen > 0, "the tails were zero-filled ahead");

    let pre = reopen(pre, pre_dir.path(), &clock, step, segment);
    assert_eq!(
        pre.recovery_reports().get("t").cloned(),
        Some(RecoveryReport::default())
    );
    assert_eq!(payloads(&pre).await, payloads(&plain).await);
    assert_eq!(payloads(&pre).await.len(), 200);
}

#[tokio::test]
async fn a_torn_frame_inside_the_zeros_is_cut_and_the_fill_resumes() {
    let (step, segment) = (4096, 1 << 20);
    let Pair {
        pre_dir,
        plain_dir,
        clock,
        pre,
        plain,
    } = pair(step, segment);
    publish(&pre, 0, 20).await;
    publish(&plain, 0, 20).await;
    pre.close().expect("test setup");
    drop(pre);
    // A frame whose write was torn: its first bytes landed in the preallocated space, the
    // rest of the space is still zeros.
    let tail = segments(pre_dir.path()).pop().expect("test setup");
    let frames_end = std::fs::metadata(segments(plain_dir.path()).pop().expect("test setup"))
        .expect("test setup")
        .len();
    let file_len = std::fs::metadata(&tail).expect("test setup").len();
    assert!(file_len > frames_end + 16);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tail)
            .expect("test setup");
        f.write_all_at(&[40, 0, 0, 0, 0xAB, 0xCD, 0xEF, 0x01, 7], frames_end)
            .expect("test setup");
    }
    let pre = open(pre_dir.path(), &clock, step, segment);
    let report = pre.recovery_reports().get("t").cloned().expect("report");
    assert_eq!(
        report.torn_bytes_truncated,
        file_len - frames_end,
        "{report:?}"
    );
    assert!(report.repaired.is_empty(), "{report:?}");
    assert_eq!(
        std::fs::metadata(&tail).expect("test setup").len(),
        frames_end,
        "cut at the torn frame"
    );
    assert_eq!(payloads(&pre).await, payloads(&plain).await);
    // Publishing again fills ahead again.
    publish(&pre, 20, 30).await;
    publish(&plain, 20, 30).await;
    let zeros = same_frames_then_zeros(pre_dir.path(), plain_dir.path(), step, segment);
    assert!(zeros > 0, "the fill resumed after the cut");
}

#[tokio::test]
async fn bytes_after_the_zeros_are_not_taken_for_space() {
    let (step, segment) = (4096, 1 << 20);
    let Pair {
        pre_dir: dir,
        plain_dir,
        clock,
        pre,
        plain,
    } = pair(step, segment);
    publish(&pre, 0, 10).await;
    publish(&plain, 0, 10).await;
    pre.close().expect("test setup");
    drop(pre);
    let tail = segments(dir.path()).pop().expect("test setup");
    let plain_tail = segments(plain_dir.path()).pop().expect("test setup");
    let frames_end = std::fs::metadata(&plain_tail).expect("test setup").len();
    // The frame the next publish writes (offset 10), as the plain log has it.
    publish(&plain, 10, 11).await;
    let plain_bytes = std::fs::read(&plain_tail).expect("test setup");
    let next_frame = plain_bytes[frames_end as usize..].to_vec();
    let file_len = std::fs::metadata(&tail).expect("test setup").len();
    let at = frames_end + 1000;
    assert!(at + next_frame.len() as u64 + 8 < file_len);
    let write_at = |bytes: &[u8], pos: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tail)
            .expect("test setup");
        f.write_all_at(bytes, pos).expect("test setup");
    };
    let config = || Config {
        preallocate_bytes: step,
        segment_bytes_max: segment,
        ..test_config(&clock)
    };

    // A valid frame of the next offset after a run of zeros: a hole followed by a frame
    // that checks out is damage inside the tail (FORMAT.md), not space and not a torn
    // write, so the open is refused.
    write_at(&next_frame, at);
    match Engine::open(dir.path(), config()) {
        Err(queue::Error::Corrupt { position, .. }) => assert_eq!(position, frames_end),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a frame after a hole was taken for preallocated space"),
    }

    // Bytes that are no frame after the zeros: a torn suffix, cut from the frames' end.
    write_at(&vec![0u8; next_frame.len()], at);
    write_at(&[0x5A; 3], at + 7);
    let q = Engine::open(dir.path(), config()).expect("open");
    let report = q.recovery_reports().get("t").cloned().expect("report");
    assert_eq!(
        report.torn_bytes_truncated,
        file_len - frames_end,
        "{report:?}"
    );
    assert_eq!(
        std::fs::metadata(&tail).expect("test setup").len(),
        frames_end
    );
    assert_eq!(payloads(&q).await.len(), 10);
}
