//! One PostgreSQL server (a postmaster child process) on a free loopback port with a
//! temporary data directory.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::KitError;
use crate::binaries::{PgBinaries, run_as};
use crate::wait::{Probe, wait_until};

/// How long a server may take to accept connections after it was spawned (crash recovery
/// after a SIGKILL included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two readiness probes.
pub const START_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many free ports are tried when the one picked was taken before PostgreSQL bound it.
pub const PORT_ATTEMPTS: usize = 5;
/// Log lines quoted in a start-up error.
pub const LOG_TAIL_LINES: usize = 40;
/// How long `initdb` and one `psql` call may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a readiness probe's `psql` may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server's processes may take to exit after a SIGKILL or, on drop, after an
/// immediate shutdown (SIGQUIT) before they are SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `max_connections` unless set: room for a few processes' pools (the default 100 is
/// tight for two gateways and two order-worker processes).
pub const MAX_CONNECTIONS_DEFAULT: u32 = 200;
/// The superuser `initdb` creates; trust authentication, so no password.
pub const SUPERUSER: &str = "postgres";
/// How long `pg_basebackup` may take to copy a primary for a standby.
pub const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a new standby may take to stream from its primary, and the primary to count it
/// as its synchronous standby.
pub const STANDBY_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a promoted standby may take to accept writes.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two probes of a standby's or a promotion's progress.
pub const REPLICATION_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The `application_name` a standby of [`PgServer::standby_of`] connects to its primary
/// with (what `pg_stat_replication` lists).
pub const STANDBY_NAME: &str = "pg_kit_standby";

/// The port the kit never uses: the shared PostgreSQL's.
const PORT_NEVER: u16 = 5432;
const DATA_DIR: &str = "data";
const LOG_FILE: &str = "postgres.log";

/// How a test server is configured. The defaults are durable: `fsync`, `synchronous_commit`
/// and `full_page_writes` on (written out, so that a test can read them back).
#[derive(Debug, Clone)]
pub struct PgOptions {
    max_connections: u32,
    extra: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            extra: Vec::new(),
        }
    }
}

impl PgOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// `max_connections` (default [`MAX_CONNECTIONS_DEFAULT`]).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// One more raw line of postgresql.conf, written after the kit's (so it overrides them),
    /// e.g. `"synchronous_standby_names = 'standby'"`. A line with a line break is refused
    /// at start.
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }
}

/// A running (or killed) PostgreSQL server on `127.0.0.1`, with a temporary directory that
/// holds its data directory and its log.
///
/// When the test runs as root the server runs as the `postgres` system user (PostgreSQL
/// refuses root): the directory is handed to that user and the process started with its
/// uid and gid.
///
/// Dropping it shuts the server down (SIGQUIT, an immediate shutdown; SIGKILL if that does
/// not end it in [`STOP_TIMEOUT`]), reaps it, makes sure none of its backends is left, and
/// removes the directory.
#[derive(Debug)]
pub struct PgServer {
    child: Option<Child>,
    port: u16,
    bins: PgBinaries,
    run_as: Option<(u32, u32)>,
    /// The data directory, absolute and canonical (the server reports it as given).
    data: PathBuf,
    // Last, so the directory is removed after `Drop::drop` has stopped the server.
    dir: TempDir,
}

impl PgServer {
    /// Starts a server with the default [`PgOptions`].
    pub fn start() -> Result<PgServer, KitError> {
        Self::start_with(PgOptions::new())
    }

    /// Creates a data directory (`initdb`, trust authentication, superuser
    /// [`SUPERUSER`]), writes the configuration, starts the server on a free port and
    /// waits until it accepts connections.
    ///
    /// Picking a port and binding it are not atomic (the port is found by binding
    /// 127.0.0.1:0 and closing it again), so when another process takes the port first
    /// the start is retried on a new one, up to [`PORT_ATTEMPTS`] times.
    pub fn start_with(options: PgOptions) -> Result<PgServer, KitError> {
        let bins = PgBinaries::find()?;
        let run_as = run_as()?;
        let dir = owned_tempdir("pg-kit-", run_as)?;
        let data = dir.path().join(DATA_DIR);
        init_data(&bins, run_as, &data)?;
        let data = data
            .canonicalize()
            .map_err(|e| KitError::io(format!("resolving {}", data.display()), e))?;
        append_conf(&data, &options)?;
        let mut server = PgServer {
            child: None,
            port: 0,
            bins,
            run_as,
            data,
            dir,
        };
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(StartError::PortTaken(err)) => last_err = Some(err),
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| KitError::Invalid("no port attempt was made".into())))
    }

    /// A synchronous standby of `primary`: a base backup of it (`pg_basebackup -R`, WAL
    /// streamed, as the server's user) in a temporary directory of its own, started on a
    /// free port, streaming as [`STANDBY_NAME`]; then the primary is configured with
    /// `synchronous_standby_names = '*'` (`ALTER SYSTEM`, reloaded) and this waits until
    /// the primary counts the standby as synchronous: from then on a commit on the primary
    /// returns only once the standby has its WAL (`synchronous_commit = on`). The primary
    /// keeps `wal_level = replica` and the default `max_wal_senders` (10) of the kit.
    ///
    /// The standby's own `synchronous_standby_names` is empty: promoted, it commits alone
    /// (it has no standby to wait for). Stopped and removed on drop like any server.
    pub fn standby_of(primary: &PgServer) -> Result<PgServer, KitError> {
        let bins = primary.bins.clone();
        let run_as = primary.run_as;
        let dir = owned_tempdir("pg-kit-standby-", run_as)?;
        let data = dir.path().join(DATA_DIR);
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} application_name={STANDBY_NAME}",
            primary.port
        );
        let mut command = Command::new(&bins.pg_basebackup);
        command
            .arg("-D")
            .arg(&data)
            .args(["-d", &conninfo, "-R", "-X", "stream", "--checkpoint=fast"])
            .current_dir(dir.path())
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env("PGCONNECT_TIMEOUT", "5");
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        let (ok, stdout, stderr) = run_bounded(command, "pg_basebackup", BASEBACKUP_TIMEOUT)?;
        if !ok {
            return Err(KitError::Command {
                program: format!("pg_basebackup from port {}", primary.port),
                status: "failed".into(),
                output: format!("{stdout}{stderr}"),
            });
        }
        let data = data
            .canonicalize()
            .map_err(|e| KitError::io(format!("resolving {}", data.display()), e))?;
        // `-R` wrote standby.signal and a primary_conninfo into postgresql.auto.conf (read
        // last); ours, with the application name, goes after it.
        append_line(
            &data.join("postgresql.auto.conf"),
            &format!("primary_conninfo = '{conninfo}'"),
        )?;
        append_line(
            &data.join("postgresql.conf"),
            "synchronous_standby_names = ''",
        )?;
        let mut standby = PgServer {
            child: None,
            port: 0,
            bins,
            run_as,
            data,
            dir,
        };
        let mut last_err = None;
        let mut started = false;
        for _ in 0..PORT_ATTEMPTS {
            standby.port = free_port()?;
            match standby.spawn_and_wait() {
                Ok(()) => {
                    started = true;
                    break;
                }
                Err(StartError::PortTaken(err)) => last_err = Some(err),
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        if !started {
            return Err(
                last_err.unwrap_or_else(|| KitError::Invalid("no port attempt was made".into()))
            );
        }
        primary.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )?;
        primary.psql("postgres", "SELECT pg_reload_conf()")?;
        let query = format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        );
        wait_until(
            &format!(
                "the standby on port {} to be the synchronous standby of port {}",
                standby.port, primary.port
            ),
            STANDBY_SYNC_TIMEOUT,
            REPLICATION_POLL_INTERVAL,
            || match primary.psql_within("postgres", &query, PROBE_TIMEOUT) {
                Ok(state) if state.lines().any(|l| l.trim() == "sync") => Probe::Ready(()),
                Ok(state) => Probe::NotYet(format!("sync_state {state:?}")),
                Err(e) => Probe::NotYet(e.to_string()),
            },
        )?;
        Ok(standby)
    }

    /// Whether the server is a primary (`pg_is_in_recovery()` false).
    pub fn is_primary(&self) -> Result<bool, KitError> {
        Ok(self.psql("postgres", "SELECT pg_is_in_recovery()")?.trim() == "f")
    }

    /// Promotes a standby (`pg_promote()`) and waits until it accepts writes (at most
    /// [`PROMOTE_TIMEOUT`]). A no-op on a primary.
    pub fn promote(&self) -> Result<(), KitError> {
        if self.is_primary()? {
            return Ok(());
        }
        self.psql_within(
            "postgres",
            &format!("SELECT pg_promote(true, {})", PROMOTE_TIMEOUT.as_secs()),
            PROMOTE_TIMEOUT + PROBE_TIMEOUT,
        )?;
        wait_until(
            &format!("postgres on port {} to accept writes", self.port),
            PROMOTE_TIMEOUT,
            REPLICATION_POLL_INTERVAL,
            || match self.psql_within("postgres", "SELECT pg_is_in_recovery()", PROBE_TIMEOUT) {
                Ok(r) if r.trim() == "f" => Probe::Ready(()),
                Ok(r) => Probe::NotYet(format!("in recovery: {r}")),
                Err(e) => Probe::NotYet(e.to_string()),
            },
        )
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"postgres://postgres@127.0.0.1:PORT/DB"` (trust authentication: no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The temporary directory (the data directory `data/` and the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the postmaster is still running (not killed, not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Runs `sql` with `psql` on database `db` (stopping at the first error) and returns its
    /// unaligned, tuples-only output (`-XAtq`): one line per row, `|` between columns.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, KitError> {
        self.psql_within(db, sql, COMMAND_TIMEOUT)
    }

    /// `CREATE DATABASE name`; the name is letters, digits and `_`.
    pub fn create_database(&self, name: &str) -> Result<(), KitError> {
        let plain = !name.is_empty()
            && name.len() < 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !plain {
            return Err(KitError::Invalid(format!("a database name like {name:?}")));
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .map(drop)
    }

    /// Kills the postmaster with SIGKILL and reaps it, then SIGKILLs its backends and
    /// background processes (every process whose working directory is the data
    /// directory) and waits until none is left: the server dies as in a crash, without
    /// shutdown checkpoint, and its next start runs crash recovery from the WAL. A no-op
    /// when not running.
    pub fn kill(&mut self) -> Result<(), KitError> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix; it cannot fail on a child we hold.
            child.kill().map_err(|e| {
                KitError::io(format!("SIGKILL to postgres on port {}", self.port), e)
            })?;
            child
                .wait()
                .map_err(|e| KitError::io(format!("reaping postgres on port {}", self.port), e))?;
        }
        self.kill_leftovers()
    }

    /// Starts the server again on the same port and data directory (after a [`kill`]
    /// that means crash recovery) and waits until it accepts connections. A server still
    /// running is killed first, as in a crash.
    ///
    /// [`kill`]: PgServer::kill
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.kill()?;
        match self.spawn_and_wait() {
            Ok(()) => Ok(()),
            Err(StartError::PortTaken(err) | StartError::Other(err)) => Err(err),
        }
    }

    /// The last lines of the server's log (every start's output, appended).
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join(LOG_FILE);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(no log output)".into();
        }
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        let mut out = String::new();
        let _ = writeln!(out, "[{}]", path.display());
        for line in &lines[from..] {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    fn psql_within(&self, db: &str, sql: &str, timeout: Duration) -> Result<String, KitError> {
        let mut command = Command::new(&self.bins.psql);
        command
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db, "-c", sql])
            // Only the arguments say where to connect.
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .env("PGCONNECT_TIMEOUT", "5");
        let (ok, stdout, stderr) = run_bounded(command, "psql", timeout)?;
        if ok {
            Ok(stdout.trim_end().to_owned())
        } else {
            Err(KitError::Command {
                program: format!("psql -p {} -d {db} -c {sql:?}", self.port),
                status: "failed".into(),
                output: format!("{stdout}{stderr}"),
            })
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let other = StartError::Other;
        let log_path = self.dir.path().join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| other(KitError::io(format!("opening {}", log_path.display()), e)))?;
        // Only this start's output decides whether the port was taken.
        let log_start = log
            .metadata()
            .map_err(|e| other(KitError::io("reading the log's size", e)))?
            .len();
        let stderr = log
            .try_clone()
            .map_err(|e| other(KitError::io("duplicating the log file", e)))?;
        let mut command = Command::new(&self.bins.postgres);
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|e| {
            other(KitError::io(
                format!("spawning {}", self.bins.postgres.display()),
                e,
            ))
        })?;
        self.child = Some(child);
        let mut foreign = false;
        let result = wait_until(
            &format!("postgres on port {} to accept connections", self.port),
            START_TIMEOUT,
            START_POLL_INTERVAL,
            || self.probe_ready(&mut foreign),
        );
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                let this_start = read_from(&log_path, log_start);
                let taken = foreign || this_start.contains("Address already in use");
                let log_tail = self.log_tail();
                let _ = self.kill();
                let err = match err {
                    KitError::Start { .. } => err,
                    other => KitError::Start {
                        port: self.port,
                        reason: other.to_string(),
                        log_tail,
                    },
                };
                Err(if taken {
                    StartError::PortTaken(err)
                } else {
                    StartError::Other(err)
                })
            }
        }
    }

    /// One readiness probe: our postmaster is alive, a server on the port accepts a
    /// connection, and that server's data directory is ours (not another test's server
    /// that took the port we picked: then `foreign` is set).
    fn probe_ready(&mut self, foreign: &mut bool) -> Probe<()> {
        let exited = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(format!("it exited ({status})")),
            Some(Err(e)) => Some(format!("waiting on it failed: {e}")),
            None => Some("it is not running".into()),
        };
        if let Some(reason) = exited {
            return Probe::Fatal(KitError::Start {
                port: self.port,
                reason,
                log_tail: self.log_tail(),
            });
        }
        // Refused while it starts, "the database system is starting up" or "is in
        // recovery" while it replays its WAL.
        let answered = match self.psql_within("postgres", "SHOW data_directory", PROBE_TIMEOUT) {
            Ok(answered) => answered,
            Err(e) => return Probe::NotYet(e.to_string()),
        };
        if Path::new(answered.trim()) == self.data {
            Probe::Ready(())
        } else {
            *foreign = true;
            Probe::Fatal(KitError::Start {
                port: self.port,
                reason: format!("another server (data directory {answered}) answers on the port"),
                log_tail: self.log_tail(),
            })
        }
    }

    /// SIGKILLs every process still working in the data directory (backends and
    /// background processes that outlived a killed postmaster) until none is left.
    fn kill_leftovers(&self) -> Result<(), KitError> {
        wait_until(
            &format!("the processes of postgres on port {} to exit", self.port),
            STOP_TIMEOUT,
            Duration::from_millis(20),
            || {
                let left = processes_in(&self.data);
                if left.is_empty() {
                    return Probe::Ready(());
                }
                // Some may exit by themselves between the listing and the signal: then
                // `kill` fails for them, and the next probe no longer lists them.
                let _ = signal(&left, "KILL");
                Probe::NotYet(format!("still running: {left:?}"))
            },
        )
    }

    /// Ends the server for good: an immediate shutdown (SIGQUIT: the postmaster kills and
    /// reaps its backends and exits), SIGKILL if it is still there after
    /// [`STOP_TIMEOUT`], then whatever is left.
    fn shut_down(&mut self) -> Result<(), KitError> {
        if let Some(child) = self.child.as_mut() {
            let pid = child.id();
            if signal(&[pid], "QUIT").is_ok() {
                let exited = wait_until(
                    &format!("postgres on port {} to shut down", self.port),
                    STOP_TIMEOUT,
                    Duration::from_millis(20),
                    || match child.try_wait() {
                        Ok(Some(_)) | Err(_) => Probe::Ready(()),
                        Ok(None) => Probe::NotYet("running".into()),
                    },
                );
                if exited.is_ok() {
                    self.child = None;
                }
            }
        }
        self.kill()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Never leave a server behind; the directory is removed after this, with `dir`.
        let _ = self.shut_down();
    }
}

/// Why a spawn attempt failed: worth another port, or not.
enum StartError {
    PortTaken(KitError),
    Other(KitError),
}

/// A temporary directory named `prefix…`, handed to `run_as` (the postgres user) when set.
fn owned_tempdir(prefix: &str, run_as: Option<(u32, u32)>) -> Result<tempfile::TempDir, KitError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| KitError::io("creating a temporary directory", e))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
            KitError::io(format!("handing {} to postgres", dir.path().display()), e)
        })?;
    }
    Ok(dir)
}

/// `initdb` into `data` (as `run_as`): trust authentication, superuser [`SUPERUSER`], UTF-8
/// and the C locale (the same on every machine). It syncs its files, as a real install does.
fn init_data(bins: &PgBinaries, run_as: Option<(u32, u32)>, data: &Path) -> Result<(), KitError> {
    let mut command = Command::new(&bins.initdb);
    command
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .env_remove("PGDATA");
    if let Some(parent) = data.parent() {
        command.current_dir(parent);
    }
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    let (ok, stdout, stderr) = run_bounded(command, "initdb", COMMAND_TIMEOUT)?;
    if ok {
        Ok(())
    } else {
        Err(KitError::Command {
            program: format!("initdb -D {}", data.display()),
            status: "failed".into(),
            output: format!("{stdout}{stderr}"),
        })
    }
}

/// The kit's settings, appended to the data directory's postgresql.conf (later lines win).
fn render_conf(options: &PgOptions) -> Result<String, KitError> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "\n# Written by pg-kit for one test process; removed with its directory."
    );
    // The port is given on the command line (`-p`), so that a retry on another port
    // needs no new config.
    let _ = writeln!(c, "listen_addresses = '127.0.0.1'");
    // TCP only: no socket file in /var/run/postgresql beside the shared server's.
    let _ = writeln!(c, "unix_socket_directories = ''");
    let _ = writeln!(c, "fsync = on");
    let _ = writeln!(c, "synchronous_commit = on");
    let _ = writeln!(c, "full_page_writes = on");
    let _ = writeln!(c, "max_connections = {}", options.max_connections);
    let _ = writeln!(c, "shared_buffers = 32MB");
    // Room for a standby later (`pg_basebackup`, `primary_conninfo`).
    let _ = writeln!(c, "wal_level = replica");
    let _ = writeln!(c, "logging_collector = off");
    // Crash recovery first makes everything in the data directory durable; one syncfs of
    // its file system instead of an fsync per file (about 1000 in a fresh cluster) cut a
    // restart after SIGKILL from about 6.4 s to 2.2 s here. Durability is the same.
    let _ = writeln!(c, "recovery_init_sync_method = syncfs");
    for line in &options.extra {
        if line.contains(['\n', '\r']) {
            return Err(KitError::Invalid(format!(
                "a config line with a line break: {line:?}"
            )));
        }
        let _ = writeln!(c, "{line}");
    }
    Ok(c)
}

fn append_conf(data: &Path, options: &PgOptions) -> Result<(), KitError> {
    use std::io::Write as _;
    let path = data.join("postgresql.conf");
    let conf = render_conf(options)?;
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| KitError::io(format!("opening {}", path.display()), e))?;
    file.write_all(conf.as_bytes())
        .map_err(|e| KitError::io(format!("writing {}", path.display()), e))
}

/// Appends one line to the config file at `path`.
fn append_line(path: &Path, line: &str) -> Result<(), KitError> {
    use std::io::Write as _;
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| KitError::io(format!("opening {}", path.display()), e))?;
    writeln!(file, "\n{line}").map_err(|e| KitError::io(format!("writing {}", path.display()), e))
}

/// A free port on 127.0.0.1, never [`PORT_NEVER`]. The listener is closed for PostgreSQL
/// to bind.
fn free_port() -> Result<u16, KitError> {
    // Bounded: the OS hands out 5432 rarely, if ever.
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| KitError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| KitError::io("reading a bound port", e))?
            .port();
        if port != PORT_NEVER {
            return Ok(port);
        }
    }
    Err(KitError::Invalid("no free port other than 5432".into()))
}

/// The processes whose working directory is `data` (a postmaster's children inherit its
/// `chdir` into the data directory), this process excluded. Processes that cannot be read
/// (gone, or zombies) are not listed.
fn processes_in(data: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data))
        .collect()
}

/// Sends `SIGNAL` (a name: `KILL`, `QUIT`) to `pids` with `kill(1)`: std has no call for a
/// process that is not our child, and the workspace allows no `unsafe`.
fn signal(pids: &[u32], name: &str) -> Result<(), KitError> {
    let mut command = Command::new("kill");
    command.args(["-s", name, "--"]);
    command.args(pids.iter().map(u32::to_string));
    let (ok, stdout, stderr) = run_bounded(command, "kill", COMMAND_TIMEOUT)?;
    if ok {
        Ok(())
    } else {
        Err(KitError::Command {
            program: format!("kill -s {name} {pids:?}"),
            status: "failed".into(),
            output: format!("{stdout}{stderr}"),
        })
    }
}

/// Runs `command` to its end, at most `timeout` (then it is killed): whether it succeeded,
/// and its stdout and stderr. Threads drain the pipes, so a talkative program never blocks.
fn run_bounded(
    mut command: Command,
    what: &str,
    timeout: Duration,
) -> Result<(bool, String, String), KitError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KitError::io(format!("spawning {what}"), e))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_until(what, timeout, Duration::from_millis(5), || {
        match child.try_wait() {
            Ok(Some(status)) => Probe::Ready(status),
            Ok(None) => Probe::NotYet("running".into()),
            Err(e) => Probe::Fatal(KitError::io(format!("waiting for {what}"), e)),
        }
    });
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}

/// The text of `path` from byte `from` on (empty if unreadable).
fn read_from(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_durable_and_overrides_come_last() -> Result<(), KitError> {
        let conf = render_conf(&PgOptions::new().config_line("work_mem = '8MB'"))?;
        for line in [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",
            "fsync = on",
            "synchronous_commit = on",
            "full_page_writes = on",
            "max_connections = 200",
            "recovery_init_sync_method = syncfs",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line:?} missing from\n{conf}"
            );
        }
        assert_eq!(conf.lines().last(), Some("work_mem = '8MB'"));
        assert!(render_conf(&PgOptions::new().config_line("a\nb")).is_err());
        Ok(())
    }

    #[test]
    fn free_ports_are_never_the_shared_one() -> Result<(), KitError> {
        for _ in 0..50 {
            assert_ne!(free_port()?, PORT_NEVER);
        }
        Ok(())
    }

    #[test]
    fn a_bounded_command_that_runs_too_long_is_killed() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let err = run_bounded(command, "sleep", Duration::from_millis(50)).expect_err("timeout");
        assert!(matches!(err, KitError::Timeout { .. }), "{err}");
    }
}
