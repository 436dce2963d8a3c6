//! The operator commands of the `queue` binary on an embedded queue directory (`--dir`),
//! and its flag errors: each names the flag and comes before anything is created.
//!
//! - `stats_and_dlq_work_on_an_embedded_directory`: a directory with published messages
//!   and a dead letter, closed; `queue --dir D stats|dlq list|dlq discard` read and change
//!   it; while an engine holds the directory the command fails saying so; a directory that
//!   is not a queue's is refused and left untouched.
//! - `bad_flags_are_named_before_anything_is_created`: `queue serve` with a malformed
//!   `--listen` or `--metrics`, or a `--listen` address in use, exits non-zero naming the
//!   flag (and the address), and its data directory was never made.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use queue::{Config, Engine, FetchOptions, Message, Queue};
use serde_json::Value;

const QUEUE_BIN: &str = env!("CARGO_BIN_EXE_queue");
/// Longest a command may take: far above what it needs, so only a hang fails on it.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `queue ARGS` in a cleaned environment (only `PATH`), waiting at most [`WAIT`].
fn queue(args: &[&str]) -> Output {
    let mut child = Command::new(QUEUE_BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QUEUE_BIN}: {e}"));
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("queue {args:?} still runs after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stdout));
    })
}

/// A queue directory in `dir` with 3 messages on `orders`, the first dead-lettered by
/// group `workers` and the second acked by it.
async fn fill(dir: &Path) {
    let engine = Engine::open(dir, Config::default()).expect("open");
    for i in 0..3u8 {
        engine
            .publish("orders", Message::new(vec![b'a' + i]))
            .await
            .expect("publish");
    }
    let options = FetchOptions {
        max_messages: 2,
        lease_ms: None,
        wait_ms: 0,
    };
    let ds = engine
        .fetch("orders", "workers", options)
        .await
        .expect("fetch");
    assert_eq!(ds.len(), 2);
    engine
        .reject("orders", "workers", ds[0].receipt(), "poison")
        .await
        .expect("reject");
    engine
        .ack("orders", "workers", &[ds[1].receipt()])
        .await
        .expect("ack");
    engine.close().expect("close");
}

#[tokio::test]
async fn stats_and_dlq_work_on_an_embedded_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("queue");
    fill(&dir).await;
    let d = dir.to_str().expect("utf-8");

    let stats = json_of(&queue(&["--dir", d, "--json", "stats"]));
    let orders = stats
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "orders"))
        .unwrap_or_else(|| panic!("no orders in {stats}"));
    assert_eq!(orders["next_offset"], 3, "{orders}");
    assert_eq!(orders["dead_letters_pending"], 1, "{orders}");
    let group = &orders["groups"][0];
    assert_eq!(group["name"], "workers", "{orders}");
    assert_eq!(
        group["lag"], 1,
        "one message neither acked nor dead: {orders}"
    );
    // The text form, for people.
    let text = queue(&["--dir", d, "stats"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("topic orders") && text.contains("workers"),
        "{text}"
    );

    let dead = json_of(&queue(&["--dir", d, "--json", "dlq", "list", "orders"]));
    assert_eq!(dead.as_array().map(Vec::len), Some(1), "{dead}");
    assert_eq!(dead[0]["payload"], "a");
    assert_eq!(dead[0]["reason"], "poison");
    let offset = dead[0]["dead_offset"].to_string();
    // The purchases topic's dead letters are not dropped without --force (their tickets
    // would get no answer): refused, naming the safe way, and kept.
    let refused = queue(&["--dir", d, "dlq", "discard", "orders", &offset]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("/admin/dead-letters"),
        "{}",
        stderr(&refused)
    );
    let kept = json_of(&queue(&["--dir", d, "--json", "dlq", "list", "orders"]));
    assert_eq!(kept.as_array().map(Vec::len), Some(1), "{kept}");
    let done = queue(&["--dir", d, "dlq", "discard", "--force", "orders", &offset]);
    assert!(done.status.success(), "{}", stderr(&done));
    let dead = json_of(&queue(&["--dir", d, "--json", "dlq", "list", "orders"]));
    assert_eq!(dead, Value::Array(vec![]), "the discard was kept");

    // Held by a running engine (a gateway's, say): refused, saying why.
    let held = Engine::open(&dir, Config::default()).expect("open");
    let o = queue(&["--dir", d, "stats"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(d) && e.contains("--dir") && e.contains("in use by another process"),
        "{e}"
    );
    held.close().expect("close");
    drop(held);
    // Released: it opens again.
    json_of(&queue(&["--dir", d, "--json", "stats"]));

    // Not a queue directory: refused, and nothing made in it.
    let empty = tmp.path().join("not-a-queue");
    std::fs::create_dir(&empty).expect("mkdir");
    let e_dir = empty.to_str().expect("utf-8");
    let o = queue(&["--dir", e_dir, "stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a queue directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0);
    let missing = tmp.path().join("missing");
    let o = queue(&["--dir", missing.to_str().expect("utf-8"), "stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!missing.exists(), "nothing created");

    // --dir and --broker together: clap names both.
    let o = queue(&["--dir", d, "--broker", "127.0.0.1:1", "stats"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("--dir") && e.contains("--broker"), "{e}");
}

#[test]
fn bad_flags_are_named_before_anything_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let d = data.to_str().expect("utf-8");
    for (flag, value) in [
        ("--listen", "no-port"),
        ("--listen", "127.0.0.1:99999"),
        ("--metrics", "127.0.0.1:x"),
    ] {
        let o = queue(&["serve", "--data", d, flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(flag) && e.contains(value), "{flag} {value}: {e}");
        assert!(
            !data.exists(),
            "{flag} {value}: the data directory was made"
        );
    }
    let o = queue(&["--broker", "tcp://nowhere", "stats"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--broker"), "{}", stderr(&o));

    // An address in use: named with the flag, before the engine opens.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for flag in ["--listen", "--metrics"] {
        let mut args = vec!["serve", "--data", d];
        if flag == "--metrics" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend([flag, addr.as_str()]);
        let o = queue(&args);
        assert_eq!(o.status.code(), Some(1), "{flag}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(flag) && e.contains(&addr) && e.to_lowercase().contains("in use"),
            "{flag}: {e}"
        );
        assert!(!data.exists(), "{flag}: the data directory was made");
    }
}
