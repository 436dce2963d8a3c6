//! The `gateway` binary's flag errors: a malformed address, target or URL is refused by
//! clap naming the flag (exit 2), a listen address in use is reported with the flag and
//! the address (exit 1), and in every case before the orders database, the queue
//! directory or the demo sale exist: the directory the binary ran in stays empty.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_gateway");
/// Longest a refused start may take: far above what it needs, so only a hang fails on it.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `gateway ARGS` in `dir` with a cleaned environment (only `PATH`): the defaults
/// (`data/queue`, `sqlite:data/orders.db`) would land in `dir`.
fn gateway(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(GATEWAY_BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {GATEWAY_BIN}: {e}"));
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway {args:?} still runs after {WAIT:?}: it should have refused");
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
        ("--listen", "8080"),
        ("--listen", "127.0.0.1:99999"),
        ("--listen", "127.0.0.1:port"),
        ("--queue", "tcp://127.0.0.1"),
        ("--queue", "http://broker:7070"),
        ("--inventory", "memroy"),
        ("--database", "mysql://db/orders"),
        ("--database", "sqlite:"),
        ("--redis-prefix", "a{b}"),
        ("--sqlite-sync", "sometimes"),
        ("--per-ip-limits", "maybe"),
    ] {
        let o = gateway(tmp.path(), &[flag, value]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {e}");
        assert!(e.contains(flag) && e.contains(value), "{flag} {value}: {e}");
        assert_eq!(entries(tmp.path()), Vec::<String>::new(), "{flag} {value}");
    }

    // A listen address in use: the flag and the address, and still nothing created (no
    // database, no queue directory, no demo sale).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = gateway(tmp.path(), &["--listen", &addr]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("--listen") && e.contains(&addr) && e.to_lowercase().contains("in use"),
        "{e}"
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}
