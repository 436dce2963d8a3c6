//! The Redis servers the conformance suite runs on: one standalone server and one Cluster
//! (3 masters, a replica each) per test binary, started by `redis-kit` on free loopback
//! ports with temporary directories the first time a test asks for them, and shared by
//! every test after (each harness uses a key prefix of its own). Never the shared Redis on
//! 6379: redis-kit picks ports from the OS and checks the server answering is its child.
//!
//! **Cleanup.** The servers live in statics, and Rust never drops statics, so redis-kit's
//! kill-on-drop does not run for them. Instead each shared setup gets a *reaper*: a small
//! `sh` child whose stdin is a pipe from this process, blocked reading it. The write end
//! is held (in [`HELD`]) for the life of the process and is close-on-exec, so no other
//! child inherits it; when this process ends, however it ends (tests done, a panic,
//! `process::exit`, SIGKILL), the kernel closes it, the reaper reads end-of-file and
//! SIGKILLs the servers it was given (if their pid still names a `redis-server`) and
//! removes their directories (and the cluster's `redis-cli` output directory). It ignores SIGINT and SIGHUP, so a Ctrl-C of `cargo test`,
//! which signals the whole process group, leaves it to finish its job. Chosen over
//! `prctl(PR_SET_PDEATHSIG)`, which redis-kit's spawn does not set and which fires when the
//! spawning *thread* exits (a test thread, long before the process), and over `atexit`,
//! which needs unsafe code and does not run on SIGKILL.
//!
//! **When Redis is missing.** If `redis-server` cannot be started, the Redis tests are
//! skipped with a message on stderr, unless the environment variable `CI` is set (to
//! anything but empty, `0` or `false`): then they fail, so CI never passes without them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};

use queue::streams::RedisTarget;
use redis_kit::{RedisCluster, RedisOptions, RedisServer, info_field};

/// Masters of the shared cluster, and replicas per master.
pub const CLUSTER_MASTERS: usize = 3;
pub const CLUSTER_REPLICAS_PER_MASTER: usize = 1;

/// A running Redis setup shared by the tests of this process.
#[derive(Debug)]
pub struct Shared {
    /// Where the queue connects.
    pub target: RedisTarget,
    kit: Kit,
}

#[derive(Debug)]
enum Kit {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Shared {
    fn servers(&self) -> Vec<&RedisServer> {
        match &self.kit {
            Kit::Server(s) => vec![s],
            Kit::Cluster(c) => c.nodes().iter().collect(),
        }
    }

    /// Whether any node has a client blocked in a command (`INFO clients`'s
    /// `blocked_clients`), as a long-poll fetch is in `XREAD BLOCK`.
    pub async fn some_client_blocked(&'static self) -> bool {
        tokio::task::spawn_blocking(move || {
            self.servers().iter().any(|s| {
                s.info("clients").ok().is_some_and(|info| {
                    info_field(&info, "blocked_clients")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        })
        .await
        .unwrap_or(false)
    }
}

static STANDALONE: OnceLock<Result<Shared, String>> = OnceLock::new();
static CLUSTER: OnceLock<Result<Shared, String>> = OnceLock::new();
/// The reapers, with their stdin pipes: held, never closed, until the process ends.
static HELD: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// The shared standalone server, or `None` (skip) when it cannot be started outside CI.
pub fn standalone() -> Option<&'static Shared> {
    static WARNED: Once = Once::new();
    available(
        "a standalone redis-server",
        STANDALONE.get_or_init(|| {
            let server = RedisServer::start(RedisOptions::new()).map_err(|e| e.to_string())?;
            reap_at_exit(&[&server], &[])?;
            Ok(Shared {
                target: RedisTarget::Standalone(server.url()),
                kit: Kit::Server(server),
            })
        }),
        &WARNED,
    )
}

/// The shared cluster, or `None` (skip) when it cannot be started outside CI.
pub fn cluster() -> Option<&'static Shared> {
    static WARNED: Once = Once::new();
    available(
        "a Redis Cluster",
        CLUSTER.get_or_init(|| {
            let cluster = RedisCluster::start(CLUSTER_MASTERS, CLUSTER_REPLICAS_PER_MASTER)
                .map_err(|e| e.to_string())?;
            let nodes: Vec<&RedisServer> = cluster.nodes().iter().collect();
            let work: Vec<PathBuf> = cluster_work_dir(&nodes).into_iter().collect();
            reap_at_exit(&nodes, &work)?;
            let target = match RedisTarget::parse(&cluster.url()) {
                Some(Ok(t)) => t,
                other => return Err(format!("cluster url {:?}: {other:?}", cluster.url())),
            };
            Ok(Shared {
                target,
                kit: Kit::Cluster(cluster),
            })
        }),
        &WARNED,
    )
}

/// Whether a missing Redis fails the run (`CI` set) instead of skipping its tests.
pub fn redis_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// `started`, or `None` after saying once (per setup, `warned`) why its tests are skipped.
fn available(
    what: &str,
    started: &'static Result<Shared, String>,
    warned: &'static Once,
) -> Option<&'static Shared> {
    match started {
        Ok(shared) => Some(shared),
        Err(e) if redis_required() => panic!("CI is set and {what} could not be started: {e}"),
        Err(e) => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of a
            // passing test, and a skip nobody sees would look like a pass.
            warned.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the Redis tests need {what}, which could not be started ({e}); with CI set this fails instead"
                );
            });
            None
        }
    }
}

/// What a reaper runs once its stdin reaches end-of-file (this process is gone): SIGKILL
/// each pid still running `redis-server`, then remove each redis-kit directory.
const REAPER_SCRIPT: &str = r#"trap '' INT HUP
cat >/dev/null
for p in $REAP_PIDS; do
  if grep -qa redis-server "/proc/$p/cmdline" 2>/dev/null; then kill -9 "$p"; fi
done
for d in $REAP_DIRS; do
  case "$d" in */redis-kit-*) rm -rf "$d" ;; esac
done
"#;

/// The directory `RedisCluster` keeps `redis-cli`'s output in (it does not say which): the
/// `redis-kit-cluster-*` directory whose `cluster-create.log` names every one of `nodes`
/// (their ports are this process's while they run).
fn cluster_work_dir(nodes: &[&RedisServer]) -> Option<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("redis-kit-cluster-"))
        })
        .find(|p| {
            std::fs::read_to_string(p.join("cluster-create.log"))
                .is_ok_and(|log| nodes.iter().all(|n| log.contains(&n.addr())))
        })
}

/// Arranges for `servers` to be killed, and their directories and `dirs` removed, when
/// this process ends (see the module documentation).
fn reap_at_exit(servers: &[&RedisServer], dirs: &[PathBuf]) -> Result<(), String> {
    let pids: Vec<String> = servers
        .iter()
        .filter_map(|s| s.pid())
        .map(|p| p.to_string())
        .collect();
    let dirs: Vec<String> = servers
        .iter()
        .map(|s| s.dir())
        .chain(dirs.iter().map(PathBuf::as_path))
        .map(|d| d.display().to_string())
        .collect();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("redis-reaper")
        .env("REAP_PIDS", pids.join(" "))
        .env("REAP_DIRS", dirs.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning the reaper (sh): {e}"))?;
    // Nothing it reads matters; this only shows the pipe is open and the reaper alive.
    child
        .stdin
        .as_mut()
        .ok_or("the reaper has no stdin")?
        .write_all(b"\n")
        .map_err(|e| format!("writing to the reaper: {e}"))?;
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(child);
    Ok(())
}
