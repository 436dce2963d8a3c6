//! One `redis-server` child process on a free loopback port with a temporary directory.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::resp::{Connection, Resp, info_field};
use crate::wait::{Probe, wait_until};
use crate::{KitError, redis_server_path};

/// How long a server may take to answer PING after it was spawned (loading an AOF
/// included).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two readiness probes.
pub const START_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many free ports are tried when the one picked was taken before Redis bound it.
pub const PORT_ATTEMPTS: usize = 5;
/// Log lines quoted in a start-up error.
pub const LOG_TAIL_LINES: usize = 30;
/// `cluster-node-timeout` of cluster nodes unless set: small, so that a failover takes a
/// few seconds rather than the default's 15 s and more.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

/// Ports the kit never uses: the shared Redis on 6379 (and its cluster bus and Sentinel
/// ports) belongs to other tests and to people's machines.
const PORTS_NEVER: [u16; 3] = [6379, 16379, 26379];

const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "stdio.log";

/// How a test server is configured. The defaults are what the queue's Redis backend
/// requires of production (`appendonly yes`, `appendfsync always`, `maxmemory-policy
/// noeviction`); the setters exist so that tests of its start-up checks can get a wrongly
/// configured server.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    appendonly: bool,
    appendfsync: String,
    maxmemory_policy: String,
    replica_of: Option<(String, u16)>,
    cluster_enabled: bool,
    cluster_node_timeout_ms: u64,
    extra: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            appendonly: true,
            appendfsync: "always".into(),
            maxmemory_policy: "noeviction".into(),
            replica_of: None,
            cluster_enabled: false,
            cluster_node_timeout_ms: CLUSTER_NODE_TIMEOUT_MS,
            extra: Vec::new(),
        }
    }
}

impl RedisOptions {
    /// The defaults: a durable standalone primary.
    pub fn new() -> Self {
        Self::default()
    }

    /// `appendonly yes|no` (default yes).
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// `appendfsync` (default `always`; Redis knows `everysec` and `no`).
    pub fn appendfsync(mut self, policy: &str) -> Self {
        self.appendfsync = policy.into();
        self
    }

    /// `maxmemory-policy` (default `noeviction`).
    pub fn maxmemory_policy(mut self, policy: &str) -> Self {
        self.maxmemory_policy = policy.into();
        self
    }

    /// `replicaof HOST PORT`: start as a replica of that server.
    pub fn replica_of(mut self, host: &str, port: u16) -> Self {
        self.replica_of = Some((host.into(), port));
        self
    }

    /// `cluster-enabled yes`, with `cluster-config-file` in the server's directory, a
    /// `cluster-port` of its own (a second free port) and `cluster-node-timeout`.
    pub fn cluster_enabled(mut self, on: bool) -> Self {
        self.cluster_enabled = on;
        self
    }

    /// `cluster-node-timeout` in milliseconds (default [`CLUSTER_NODE_TIMEOUT_MS`]).
    pub fn cluster_node_timeout_ms(mut self, ms: u64) -> Self {
        self.cluster_node_timeout_ms = ms;
        self
    }

    /// One more raw line of redis.conf, written after the others (so it overrides them),
    /// e.g. `"maxmemory 10mb"`. A line with a line break is refused at start.
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }
}

/// What a process runs as; decides its config file and command line.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Server(RedisOptions),
    Sentinel(SentinelConf),
}

/// A Sentinel's monitoring settings (see `sentinel.rs`).
#[derive(Debug, Clone)]
pub(crate) struct SentinelConf {
    pub(crate) master_name: String,
    pub(crate) master_host: String,
    pub(crate) master_port: u16,
    pub(crate) quorum: u32,
    pub(crate) down_after_ms: u64,
    pub(crate) failover_timeout_ms: u64,
}

/// A running (or killed) `redis-server` on `127.0.0.1`, with a temporary directory that
/// holds its config, AOF, log and (in a cluster) nodes.conf.
///
/// Dropping it kills the process (SIGKILL), reaps it and removes the directory: a test
/// never leaves a server behind, even when it panics. (If the test process itself is
/// SIGKILLed no destructor runs; the server then outlives it.)
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    bus_port: Option<u16>,
    sentinel: bool,
    server_bin: PathBuf,
    conf_path: PathBuf,
    // Last, and the directory is removed after `Drop::drop` has killed the process.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with `options` on a free port and waits until it answers PING.
    ///
    /// Picking a port and binding it are not atomic (the port is found by binding
    /// 127.0.0.1:0 and closing it again), so when another process takes the port first
    /// the start is retried on a new one, up to [`PORT_ATTEMPTS`] times.
    pub fn start(options: RedisOptions) -> Result<RedisServer, KitError> {
        Self::launch(Role::Server(options))
    }

    pub(crate) fn launch(role: Role) -> Result<RedisServer, KitError> {
        let server_bin = redis_server_path()?;
        let wants_bus = matches!(&role, Role::Server(o) if o.cluster_enabled);
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let ports = free_ports(if wants_bus { 2 } else { 1 })?;
            let dir = tempfile::Builder::new()
                .prefix("redis-kit-")
                .tempdir()
                .map_err(|e| KitError::io("creating a temporary directory", e))?;
            let conf_path = dir.path().join(match role {
                Role::Server(_) => "redis.conf",
                Role::Sentinel(_) => "sentinel.conf",
            });
            let conf = render_conf(&role, ports[0], ports.get(1).copied(), dir.path())?;
            fs::write(&conf_path, conf)
                .map_err(|e| KitError::io(format!("writing {}", conf_path.display()), e))?;
            let mut server = RedisServer {
                child: None,
                port: ports[0],
                bus_port: ports.get(1).copied(),
                sentinel: matches!(role, Role::Sentinel(_)),
                server_bin: server_bin.clone(),
                conf_path,
                dir,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // The failed attempt's directory goes with `server`; the next one starts
                // afresh.
                Err(StartError::PortTaken(err)) => last_err = Some(err),
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| KitError::Invalid("no port attempt was made".into())))
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port (`cluster-port`), for a cluster node.
    pub fn bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The temporary directory (config, AOF, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (not killed, not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// A new connection to the server.
    pub fn connect(&self) -> Result<Connection, KitError> {
        Connection::connect(&self.addr())
    }

    /// Sends one command on a new connection and returns the reply; an error reply is
    /// [`KitError::Reply`].
    pub fn cmd(&self, args: &[&str]) -> Result<Resp, KitError> {
        self.connect()?.cmd(args)
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> Result<String, KitError> {
        self.connect()?.cmd_string(&["INFO", section])
    }

    /// `CONFIG GET <name>`'s value.
    pub fn config_get(&self, name: &str) -> Result<String, KitError> {
        let reply = self.cmd(&["CONFIG", "GET", name])?;
        match reply.as_array() {
            Some([_, value]) => value.clone().into_string(),
            _ => Err(KitError::Protocol(format!("CONFIG GET {name}: {reply:?}"))),
        }
    }

    /// Kills the process with SIGKILL and reaps it: it dies as in a crash or power cut,
    /// without shutdown, AOF rewrite or goodbye to replicas. A no-op when not running.
    pub fn kill(&mut self) -> Result<(), KitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // `Child::kill` is SIGKILL on Unix. It fails only if the process was already
        // reaped, which cannot be (we hold the only handle); a process that exited by
        // itself is a zombie until `wait`, and killing a zombie succeeds.
        child.kill().map_err(|e| {
            KitError::io(format!("SIGKILL to redis-server on port {}", self.port), e)
        })?;
        child
            .wait()
            .map_err(|e| KitError::io(format!("reaping redis-server on port {}", self.port), e))?;
        Ok(())
    }

    /// Starts the server again on the same port, directory and config file (so it reloads
    /// its AOF; a Sentinel or cluster node reads the config it rewrote itself), and waits
    /// until it answers PING. A server still running is killed first, as in a crash.
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.kill()?;
        match self.spawn_and_wait() {
            Ok(()) => Ok(()),
            Err(StartError::PortTaken(err) | StartError::Other(err)) => Err(err),
        }
    }

    /// The last lines of the server's log and of its stdout/stderr (where it reports
    /// config errors, before it opens the log).
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in [LOG_FILE, STDIO_FILE] {
            let path = self.dir.path().join(name);
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            let _ = writeln!(out, "[{}]", path.display());
            for line in &lines[from..] {
                let _ = writeln!(out, "{line}");
            }
        }
        if out.is_empty() {
            out.push_str("(no log output)");
        }
        out
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        // Each attempt's log starts empty, so that its tail is this attempt's.
        for name in [LOG_FILE, STDIO_FILE] {
            let _ = fs::remove_file(self.dir.path().join(name));
        }
        let stdio_path = self.dir.path().join(STDIO_FILE);
        let stdio = File::create(&stdio_path).map_err(|e| {
            StartError::Other(KitError::io(
                format!("creating {}", stdio_path.display()),
                e,
            ))
        })?;
        let stderr = stdio
            .try_clone()
            .map_err(|e| StartError::Other(KitError::io("duplicating the stdio file", e)))?;
        let mut command = Command::new(&self.server_bin);
        command
            .arg(&self.conf_path)
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stderr);
        if self.sentinel {
            command.arg("--sentinel");
        }
        let child = command.spawn().map_err(|e| {
            StartError::Other(KitError::io(
                format!("spawning {}", self.server_bin.display()),
                e,
            ))
        })?;
        let pid = child.id();
        self.child = Some(child);
        let result = wait_until(
            &format!("redis-server on port {} to answer PING", self.port),
            START_TIMEOUT,
            START_POLL_INTERVAL,
            || self.probe_ready(pid),
        );
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                let log_tail = self.log_tail();
                // A process that is there but not ours, or ours failing to bind, means the
                // port was taken between our pick and Redis's bind.
                let taken = matches!(err, KitError::Start { ref reason, .. } if reason.contains("another process"))
                    || log_tail.contains("Address already in use");
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

    /// One readiness probe: our process is alive, something answers PING on the port, and
    /// that something is our process (INFO's `process_id`), not another test's server
    /// that took the port we picked.
    fn probe_ready(&mut self, pid: u32) -> Probe<()> {
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
        let mut conn = match self.connect() {
            Ok(conn) => conn,
            Err(e) => return Probe::NotYet(e.to_string()),
        };
        match conn.cmd(&["PING"]).map(|r| r.as_str().map(str::to_owned)) {
            Ok(Some(pong)) if pong == "PONG" => {}
            // `-LOADING` while it replays its AOF, or a connection reset at start.
            Ok(other) => return Probe::NotYet(format!("PING answered {other:?}")),
            Err(e) => return Probe::NotYet(e.to_string()),
        }
        let info = match conn.cmd_string(&["INFO", "server"]) {
            Ok(info) => info,
            Err(e) => return Probe::NotYet(e.to_string()),
        };
        let answered = info_field(&info, "process_id").unwrap_or("?");
        if answered == pid.to_string() {
            Probe::Ready(())
        } else {
            Probe::Fatal(KitError::Start {
                port: self.port,
                reason: format!(
                    "another process (pid {answered}, ours is {pid}) answers on the port"
                ),
                log_tail: self.log_tail(),
            })
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Never leave a server behind; the directory is removed after this, with `dir`.
        let _ = self.kill();
    }
}

/// Why a spawn attempt failed: worth another port, or not.
enum StartError {
    PortTaken(KitError),
    Other(KitError),
}

/// `n` distinct free ports on 127.0.0.1, none of [`PORTS_NEVER`]. The listeners are held
/// together so the ports differ, then closed for Redis to bind.
fn free_ports(n: usize) -> Result<Vec<u16>, KitError> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    // Bounded: the OS hands out 6379 and friends rarely, if ever.
    for _ in 0..(n + PORTS_NEVER.len() + 1) {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| KitError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| KitError::io("reading a bound port", e))?
            .port();
        if !PORTS_NEVER.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    if ports.len() < n {
        return Err(KitError::Invalid(format!(
            "found only {} of {n} free ports",
            ports.len()
        )));
    }
    Ok(ports)
}

/// A value for redis.conf in double quotes (Redis unescapes `\\` and `\"` in them).
fn quoted(path: &Path) -> Result<String, KitError> {
    let text = path
        .to_str()
        .ok_or_else(|| KitError::Invalid(format!("{} is not UTF-8", path.display())))?;
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The config file of a server or Sentinel.
fn render_conf(
    role: &Role,
    port: u16,
    bus_port: Option<u16>,
    dir: &Path,
) -> Result<String, KitError> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by redis-kit for one test process; removed with its directory."
    );
    let _ = writeln!(c, "port {port}");
    let _ = writeln!(c, "bind 127.0.0.1");
    let _ = writeln!(c, "daemonize no");
    let _ = writeln!(c, "dir {}", quoted(dir)?);
    let _ = writeln!(c, "logfile {}", quoted(&dir.join(LOG_FILE))?);
    match role {
        Role::Server(o) => {
            let _ = writeln!(c, "save \"\"");
            let _ = writeln!(c, "appendonly {}", if o.appendonly { "yes" } else { "no" });
            let _ = writeln!(c, "appendfsync {}", o.appendfsync);
            let _ = writeln!(c, "maxmemory-policy {}", o.maxmemory_policy);
            if let Some((host, port)) = &o.replica_of {
                let _ = writeln!(c, "replicaof {host} {port}");
            }
            if o.cluster_enabled {
                let bus_port = bus_port
                    .ok_or_else(|| KitError::Invalid("a cluster node needs a bus port".into()))?;
                let _ = writeln!(c, "cluster-enabled yes");
                let _ = writeln!(
                    c,
                    "cluster-config-file {}",
                    quoted(&dir.join("nodes.conf"))?
                );
                let _ = writeln!(c, "cluster-node-timeout {}", o.cluster_node_timeout_ms);
                let _ = writeln!(c, "cluster-port {bus_port}");
            }
            for line in &o.extra {
                if line.contains(['\n', '\r']) {
                    return Err(KitError::Invalid(format!(
                        "a config line with a line break: {line:?}"
                    )));
                }
                let _ = writeln!(c, "{line}");
            }
        }
        Role::Sentinel(s) => {
            let name = &s.master_name;
            let _ = writeln!(
                c,
                "sentinel monitor {name} {} {} {}",
                s.master_host, s.master_port, s.quorum
            );
            let _ = writeln!(
                c,
                "sentinel down-after-milliseconds {name} {}",
                s.down_after_ms
            );
            let _ = writeln!(
                c,
                "sentinel failover-timeout {name} {}",
                s.failover_timeout_ms
            );
            let _ = writeln!(c, "sentinel parallel-syncs {name} 1");
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_the_shared_ones() -> Result<(), KitError> {
        for _ in 0..50 {
            let ports = free_ports(2)?;
            assert_eq!(ports.len(), 2);
            assert_ne!(ports[0], ports[1]);
            assert!(ports.iter().all(|p| !PORTS_NEVER.contains(p)), "{ports:?}");
        }
        Ok(())
    }

    #[test]
    fn the_default_config_is_durable_and_overrides_come_last() -> Result<(), KitError> {
        let dir = Path::new("/tmp/a \"b\"");
        let conf = render_conf(&Role::Server(RedisOptions::new()), 40001, None, dir)?;
        for line in [
            "port 40001",
            "bind 127.0.0.1",
            "appendonly yes",
            "appendfsync always",
            "maxmemory-policy noeviction",
            "save \"\"",
            "daemonize no",
            "dir \"/tmp/a \\\"b\\\"\"",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line:?} missing from\n{conf}"
            );
        }
        assert!(!conf.contains("cluster"), "{conf}");

        let options = RedisOptions::new()
            .appendonly(false)
            .appendfsync("everysec")
            .maxmemory_policy("allkeys-lru")
            .replica_of("127.0.0.1", 40000)
            .cluster_enabled(true)
            .config_line("maxmemory 10mb");
        let conf = render_conf(&Role::Server(options), 40001, Some(50001), dir)?;
        for line in [
            "appendonly no",
            "appendfsync everysec",
            "maxmemory-policy allkeys-lru",
            "replicaof 127.0.0.1 40000",
            "cluster-enabled yes",
            "cluster-port 50001",
            "cluster-node-timeout 2000",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line:?} missing from\n{conf}"
            );
        }
        assert_eq!(conf.lines().last(), Some("maxmemory 10mb"));

        let broken = RedisOptions::new().config_line("a\nb");
        assert!(render_conf(&Role::Server(broken), 1, None, dir).is_err());
        Ok(())
    }
}
