//! The `order-worker` binary's flags and its `/metrics` endpoint.
//!
//! - `bad_flags_are_named_before_anything_is_created`: a malformed address, target or URL
//!   is refused by clap naming the flag (exit 2), a `--metrics` address in use is reported
//!   with the flag and the address (exit 1), and nothing was created in the directory the
//!   binary ran in (the default database is `sqlite:data/orders.db` there).
//! - `metrics_are_served_with_the_heartbeat`: on an embedded queue directory and a SQLite
//!   file, `--metrics 127.0.0.1:0` serves the crew's counters; the heartbeat's timestamp
//!   turns non-zero (polled with a deadline); the start line says "1 canceller"; SIGTERM
//!   stops it cleanly.
//! - `a_held_queue_directory_is_refused_saying_why`: a worker on a queue directory another
//!   engine holds (a running gateway's) exits 1 saying the directory is in use.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_order-worker");
/// Longest wait for anything: far above what it needs, so only a hang fails on it.
const WAIT: Duration = Duration::from_secs(30);

/// `order-worker ARGS` in `dir` with a cleaned environment (only `PATH`).
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(WORKER_BIN);
    c.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs it to its end (at most [`WAIT`]).
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut child = command(dir, args).spawn().expect("start order-worker");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("order-worker {args:?} still runs after {WAIT:?}: it should have refused");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn bad_flags_are_named_before_anything_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [
        ("--metrics", "9090"),
        ("--metrics", "127.0.0.1:70000"),
        ("--queue", "tcp://:7070"),
        ("--queue", "nats://127.0.0.1:4222"),
        ("--database", "orders.db"),
        ("--inventory", "memory"),
        ("--redis-prefix", ""),
        ("--sqlite-sync", "off"),
    ] {
        let o = run(tmp.path(), &[flag, value]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {e}");
        assert!(e.contains(flag), "{flag} {value}: {e}");
        assert_eq!(entries(tmp.path()), Vec::<String>::new(), "{flag} {value}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = run(tmp.path(), &["--metrics", &addr]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--metrics") && e.contains(&addr) && e.to_lowercase().contains("in use"),
        "{e}"
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

/// A running child; killed and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /metrics` at `addr`: the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` (no labels) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn metrics_are_served_with_the_heartbeat() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue_dir = tmp.path().join("queue");
    let db = format!("sqlite:{}", tmp.path().join("orders.db").display());
    let mut child = command(
        tmp.path(),
        &[
            "--queue",
            queue_dir.to_str().expect("utf-8"),
            "--database",
            &db,
            "--workers",
            "1",
            "--cancellers",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
    )
    .spawn()
    .expect("start order-worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Running(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let (mut addr, mut started) = (None, None);
    while addr.is_none() || started.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no start lines ({e}): {addr:?} {started:?}"));
        if let Some(rest) = line.strip_prefix("order-worker: metrics on http://") {
            addr = rest.strip_suffix("/metrics").map(str::to_string);
        } else if line.starts_with("order-worker: 1 worker, 1 canceller on ") {
            started = Some(line);
        }
    }
    let addr = addr.expect("address");
    let text = loop {
        let text = scrape(&addr);
        if sample(&text, "orders_heartbeat_timestamp_seconds").is_some_and(|t| t > 0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no heartbeat in\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sample(&text, "orders_heartbeats_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "orders_created_total"), Some(0.0), "{text}");
    assert!(
        text.contains("# TYPE orders_created_total counter"),
        "{text}"
    );
    // SIGTERM: a clean stop.
    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    while child.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.0.wait().expect("status");
    assert!(status.success(), "{status:?}");
}

/// Why `order-worker` does not default to the gateway's `data/queue`: the engine locks its
/// directory, so while a gateway (here: an engine of this test) holds it, a worker on the
/// same directory is refused, and says so.
#[test]
fn a_held_queue_directory_is_refused_saying_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue_dir = tmp.path().join("queue");
    let held = queue::Engine::open(&queue_dir, queue::Config::default()).expect("open");
    let db = format!("sqlite:{}", tmp.path().join("orders.db").display());
    let o = run(
        tmp.path(),
        &[
            "--queue",
            queue_dir.to_str().expect("utf-8"),
            "--database",
            &db,
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("another process has this queue directory open") && e.contains("LOCK"),
        "{e}"
    );
    held.close().expect("close");
}
