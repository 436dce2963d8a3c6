//! The system's real binaries (`queue`, `gateway`, `order-worker`) as child processes, for
//! the tests that SIGKILL them and start them again (the chaos test).
//!
//! `env!("CARGO_BIN_EXE_…")` names only this crate's own binaries, so the others are found
//! where cargo puts every binary of the workspace: the profile directory above this test
//! executable (`target/debug/`), or `$CHAOS_BIN_DIR`. `cargo test --workspace
//! --all-targets` (scripts/test) builds them before any test runs; for this crate's tests
//! alone, run `cargo build --bins -p queue -p gateway -p order-worker` first. A binary
//! older than any source file of the crates it is built from is stale and refused, like a
//! missing one: the test fails under `CI` and is skipped (with the reason) elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Overrides the directory the binaries are looked for in.
pub const BIN_DIR_ENV: &str = "CHAOS_BIN_DIR";
/// The source directories (relative to the workspace root) the `queue` binary is built
/// from: a file in them newer than the binary makes it stale.
pub const QUEUE_SOURCES: &[&str] = &["queue/src"];
/// The same for `order-worker` (the queue and the inventory are its dependencies).
pub const ORDER_WORKER_SOURCES: &[&str] = &[
    "queue/src",
    "inventory/src",
    "order-worker/src",
    "order-worker/migrations",
];
/// The same for `gateway` (every product crate). Only a binary's own crates count: a
/// change to the gateway alone rebuilds the gateway, never the broker.
pub const GATEWAY_SOURCES: &[&str] = &[
    "queue/src",
    "inventory/src",
    "order-worker/src",
    "order-worker/migrations",
    "gateway/src",
    "web/src",
    "web/templates",
    "web/static",
];
/// Most directory entries the staleness check walks (a bound on a walk of the sources).
pub const SOURCE_FILES_MAX: usize = 10_000;
/// Lines of a process's log quoted in a failure.
pub const LOG_TAIL_LINES: usize = 30;
/// The pause between two looks at a log for an awaited line.
const LOG_POLL: Duration = Duration::from_millis(20);

/// The command that builds the binaries.
pub const BUILD_COMMAND: &str = "cargo build --bins -p queue -p gateway -p order-worker";

/// Where the system's binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `queue` (the broker: `queue serve`).
    pub queue: PathBuf,
    /// `gateway`.
    pub gateway: PathBuf,
    /// `order-worker`.
    pub order_worker: PathBuf,
}

impl Binaries {
    /// The binaries in `$CHAOS_BIN_DIR` or beside this test executable's `deps/`, each
    /// present and no older than the product crates' sources; else why not.
    pub fn find() -> Result<Binaries, String> {
        let dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
                // target/<profile>/deps/<test>-<hash>
                exe.parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .ok_or_else(|| format!("no profile directory above {}", exe.display()))?
            }
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace root above load-tests")?;
        let find = |name: &str, sources: &[&str]| -> Result<PathBuf, String> {
            let newest = newest_source(root, sources)?;
            let path = dir.join(name);
            let built = path.metadata().and_then(|m| m.modified()).map_err(|e| {
                format!("{} is missing ({e}); run `{BUILD_COMMAND}`", path.display())
            })?;
            if let Some((source, changed)) = &newest
                && *changed > built
            {
                return Err(format!(
                    "{} is older than {} (stale); run `{BUILD_COMMAND}`",
                    path.display(),
                    source.display()
                ));
            }
            Ok(path)
        };
        Ok(Binaries {
            queue: find("queue", QUEUE_SOURCES)?,
            gateway: find("gateway", GATEWAY_SOURCES)?,
            order_worker: find("order-worker", ORDER_WORKER_SOURCES)?,
        })
    }
}

/// The binaries, or `None` (the test is skipped, saying why) when one is missing or stale;
/// under `CI` that fails the test instead.
pub fn binaries_or_skip(what: &str) -> Option<Binaries> {
    match Binaries::find() {
        Ok(b) => Some(b),
        Err(e) if order_worker::testing::under_ci() => panic!("{what}: {e}"),
        Err(e) => {
            eprintln!("skipping {what}: {e}");
            None
        }
    }
}

/// The most recently modified file under `dirs` (relative to `root`) and when.
fn newest_source(root: &Path, dirs: &[&str]) -> Result<Option<(PathBuf, SystemTime)>, String> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > SOURCE_FILES_MAX {
                return Err(format!("more than {SOURCE_FILES_MAX} source files"));
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if let Ok(modified) = meta.modified()
                && newest.as_ref().is_none_or(|(_, t)| modified > *t)
            {
                newest = Some((entry.path(), modified));
            }
        }
    }
    Ok(newest)
}

/// A child process of one of the binaries that the test kills and starts again with the
/// same arguments. Its stdout and stderr go to one log file (appended at every start);
/// lines it prints are awaited by polling that file. Dropping it kills (SIGKILL) and reaps
/// the process.
#[derive(Debug)]
pub struct Proc {
    /// A name for messages (`gateway 1`).
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// Where this start's output begins in the log.
    log_from: u64,
    /// Starts so far.
    pub starts: u32,
}

impl Proc {
    /// A process to be started with [`Proc::spawn`]; its log is `NAME.log` in `log_dir`.
    pub fn new(name: &str, program: &Path, args: Vec<String>, log_dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            child: None,
            log: log_dir.join(format!("{}.log", name.replace(' ', "-"))),
            log_from: 0,
            starts: 0,
        }
    }

    /// Replaces the arguments of the next starts (a restart on the port the first start
    /// was given by the OS).
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    /// Starts it (a no-op if it runs). The environment is cleared but for `PATH`, so that
    /// nothing but the arguments configures it (the binaries read `GATEWAY_*`,
    /// `DATABASE_URL`, … from the environment).
    pub fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: opening {}: {e}", self.name, self.log.display()));
        self.log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().expect("duplicating a log file");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawning {}: {e}", self.name, self.program.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// Waits (at most `within`) for a line of this start's output that contains `needle`
    /// and returns it; panics with the log's tail if the process exits or time runs out.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        self.wait_ready(needle, within)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Waits (at most `within`) for a line of this start's output that contains `needle`;
    /// `Err` with the log's tail if the process exits first (reaped) or time runs out.
    pub fn wait_ready(&mut self, needle: &str, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .output_since_start()
                .lines()
                .find(|l| l.contains(needle))
            {
                return Ok(line.to_string());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not print {needle:?} within {within:?}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(LOG_POLL);
        }
    }

    /// SIGKILL, then reap. A no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// If it was started and has exited by itself, how (the process is reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The last lines of its log (every start's).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!("[{}]\n{}", self.log.display(), lines[from..].join("\n"))
    }

    fn output_since_start(&self) -> String {
        let Ok(mut file) = File::open(&self.log) else {
            return String::new();
        };
        if file.seek(SeekFrom::Start(self.log_from)).is_err() {
            return String::new();
        }
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind.
        self.kill();
    }
}

/// Runs `command` to its end, its output captured, at most `within`; a command still
/// running then is killed and reported as an error.
pub fn run_bounded(mut command: Command, within: Duration) -> Result<std::process::Output, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    // The pipes are drained by threads, so a chatty command never blocks on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(LOG_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} still running after {within:?}"));
            }
            Err(e) => return Err(format!("waiting for {command:?}: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}
