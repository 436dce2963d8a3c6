//! The scratch `redis-server` both Redis sides of `queue-bench` run on (raw Redis Streams in
//! `redis_streams.rs`, our queue on Redis in `redis_queue.rs`), so that both get exactly the
//! same server settings, and the server-side figures taken around each phase.
//!
//! [`Scratch::start`] starts a `redis-server` of its own (from `PATH`) on a free loopback
//! port in a fresh directory, with `appendonly yes` and `appendfsync always` (Redis writes
//! every command to its append-only file and fsyncs it before it sends the replies of an
//! event-loop round: the queue's "fsync before confirm"), no RDB snapshots and no AOF
//! rewrite during the run, and the defaults otherwise (`maxmemory-policy noeviction`, which
//! our backend's start-up check requires, is Redis's default). The settings are read back
//! with `CONFIG GET` and the run fails if they are not what was asked. The server and its
//! directory are removed when the [`Scratch`] is dropped, also on error.
//!
//! [`PhaseMeter`] samples the server around a phase: `CONFIG RESETSTAT` before, then `INFO
//! commandstats` (calls and µs per command, including the commands our Lua scripts run),
//! the server's CPU (`INFO cpu`), the AOF growth (`INFO persistence`) and this process's
//! own CPU (the client, from `/proc/self/stat`), each per message of the phase. That says
//! where the time of a phase goes without a profiler attached.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use serde_json::{Map, Value, json};

use super::{Res, err, round1, round3};

/// How long `redis-server` may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two PINGs while the server starts.
const STARTUP_POLL: Duration = Duration::from_millis(50);
/// A reply that takes longer than this is an error. The client's default (500 ms) is too
/// short for an fsync stall on a busy disk, which is part of what is measured.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The server's log file and its stderr, in its directory.
const LOG_FILE: &str = "redis.log";
const STDERR_FILE: &str = "redis.stderr";
/// Lines of each quoted in a startup error.
const LOG_TAIL_LINES: usize = 20;
/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every Linux build this
/// runs on; reading `sysconf` would need `libc`).
const USER_HZ: f64 = 100.0;
/// Commands listed per phase in the JSON (by total time, largest first).
const COMMANDS_LISTED_MAX: usize = 16;

/// A running scratch server, checked: its address, an admin connection and what it said
/// about itself.
#[derive(Debug)]
pub struct Scratch {
    server: RedisServer,
    pub client: Client,
    pub admin: MultiplexedConnection,
    /// `redis_version` of `INFO server`.
    pub version: String,
    /// `CONFIG GET appendfsync` (`always`, or [`Scratch::start`] failed).
    pub appendfsync: String,
}

impl Scratch {
    /// Starts a fresh server under `base` and checks its settings; see the module docs.
    pub async fn start(base: &Path, label: &str) -> Res<Scratch> {
        let mut server = RedisServer::start(base, label)?;
        note!(
            "{label}: redis-server on 127.0.0.1:{}, AOF in {}",
            server.port,
            server.dir.display()
        );
        let client = Client::open(server.url()).map_err(|e| err(format!("redis client: {e}")))?;
        let mut admin = server.wait_ready(&client).await?;
        let appendonly = config_get(&mut admin, "appendonly").await?;
        let appendfsync = config_get(&mut admin, "appendfsync").await?;
        if appendonly != "yes" || appendfsync != "always" {
            return Err(err(format!(
                "redis-server runs with appendonly {appendonly:?}, appendfsync {appendfsync:?}, not yes / always"
            )));
        }
        let info = info(&mut admin, "server").await?;
        let version = info_field(&info, "redis_version")
            .ok_or_else(|| err("no redis_version in INFO server"))?;
        Ok(Scratch {
            server,
            client,
            admin,
            version,
            appendfsync,
        })
    }

    /// `redis://127.0.0.1:PORT`, the queue target of this server.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A new multiplexed connection of its own.
    pub async fn connect(&self) -> Res<MultiplexedConnection> {
        connect(&self.client).await
    }

    /// The server's settings that the figures depend on, read back (`CONFIG GET`).
    pub async fn settings_json(&mut self) -> Res<Value> {
        let mut out = Map::new();
        for key in [
            "appendonly",
            "appendfsync",
            "maxmemory-policy",
            "save",
            "auto-aof-rewrite-percentage",
        ] {
            out.insert(key.into(), json!(config_get(&mut self.admin, key).await?));
        }
        out.insert("version".into(), json!(self.version));
        Ok(Value::Object(out))
    }

    /// Stops the server and removes its directory (also done on drop).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

async fn config_get(con: &mut MultiplexedConnection, key: &str) -> Res<String> {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(con)
        .await
        .map_err(|e| err(format!("CONFIG GET {key}: {e}")))?;
    Ok(v.get(1).cloned().unwrap_or_default())
}

async fn info(con: &mut MultiplexedConnection, section: &str) -> Res<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .map_err(|e| err(format!("INFO {section}: {e}")))
}

fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Server-side figures of a phase.

/// What [`PhaseMeter::begin`] saw: the counters that only grow.
#[derive(Debug, Clone, Copy)]
pub struct PhaseMeter {
    server_cpu_s: f64,
    aof_bytes: u64,
    client_cpu_s: f64,
    at: Instant,
}

impl PhaseMeter {
    /// Resets the server's command statistics and takes the counters.
    pub async fn begin(con: &mut MultiplexedConnection) -> Res<PhaseMeter> {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .exec_async(con)
            .await
            .map_err(|e| err(format!("CONFIG RESETSTAT: {e}")))?;
        let (server_cpu_s, aof_bytes) = counters(con).await?;
        Ok(PhaseMeter {
            server_cpu_s,
            aof_bytes,
            client_cpu_s: client_cpu_s(),
            at: Instant::now(),
        })
    }

    /// The phase's figures per message of `msgs`: server and client CPU, AOF bytes, and
    /// each command's calls and µs (from `INFO commandstats`, which counts the commands a
    /// script runs as well as the script call itself).
    pub async fn end(&self, con: &mut MultiplexedConnection, msgs: u64) -> Res<Value> {
        let client_cpu = client_cpu_s() - self.client_cpu_s;
        let secs = self.at.elapsed().as_secs_f64();
        let (server_cpu_s, aof_bytes) = counters(con).await?;
        let stats = info(con, "commandstats").await?;
        let server_cpu = server_cpu_s - self.server_cpu_s;
        let per_msg = |x: f64| if msgs > 0 { x / msgs as f64 } else { 0.0 };
        let mut commands: Vec<(String, u64, u64)> = stats
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |k: &str| {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                Some((name.to_string(), field("calls")?, field("usec")?))
            })
            .collect();
        commands.sort_by_key(|c| std::cmp::Reverse(c.2));
        let listed: Map<String, Value> = commands
            .iter()
            .take(COMMANDS_LISTED_MAX)
            .map(|(name, calls, usec)| {
                (
                    name.clone(),
                    json!({
                        "calls": calls,
                        "usec": usec,
                        "calls_per_msg": round3(per_msg(*calls as f64)),
                        "usec_per_call": round3(if *calls > 0 { *usec as f64 / *calls as f64 } else { 0.0 }),
                        "usec_per_msg": round3(per_msg(*usec as f64)),
                    }),
                )
            })
            .collect();
        Ok(json!({
            "messages": msgs,
            "secs": round3(secs),
            "server_cpu_s": round3(server_cpu),
            "server_cpu_share": round3(if secs > 0.0 { server_cpu / secs } else { 0.0 }),
            "server_cpu_us_per_msg": round3(per_msg(server_cpu * 1e6)),
            "client_cpu_us_per_msg": round3(per_msg(client_cpu * 1e6)),
            "aof_bytes_per_msg": round1(per_msg(aof_bytes.saturating_sub(self.aof_bytes) as f64)),
            "commands": listed,
            "note": "commands: INFO commandstats after CONFIG RESETSTAT at the start of the phase; a script's own commands are counted as well as the EVALSHA that ran them, so the EVALSHA's usec includes theirs; server CPU: INFO cpu (all threads of redis-server); client CPU: this process (/proc/self/stat)",
        }))
    }
}

/// The server's CPU seconds so far (user + system, all threads) and its AOF size.
async fn counters(con: &mut MultiplexedConnection) -> Res<(f64, u64)> {
    let cpu = info(con, "cpu").await?;
    let num = |k: &str| {
        info_field(&cpu, k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let persistence = info(con, "persistence").await?;
    let aof = info_field(&persistence, "aof_current_size")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok((num("used_cpu_user") + num("used_cpu_sys"), aof))
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn client_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / USER_HZ
}

// ---------------------------------------------------------------------------------------
// The server process.

/// A `redis-server` child and its directory; both are removed on drop.
#[derive(Debug)]
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Makes a fresh directory under `base` and starts `redis-server` in it.
    fn start(base: &Path, label: &str) -> Res<RedisServer> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
        // The guard exists from here on, so the directory goes even if the spawn fails.
        let mut server = RedisServer {
            port: free_port()?,
            dir,
            child: None,
        };
        // Config errors go to stderr before the log file is open, so keep stderr too.
        let stderr_path = server.dir.join(STDERR_FILE);
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| err(format!("create {}: {e}", stderr_path.display())))?;
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(server.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&server.dir)
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always")
            .arg("--save")
            .arg("")
            // No AOF rewrite (a fork that rewrites the whole file) in the middle of a
            // measurement: the strongest showing for Redis, and our queue does not
            // compact during the bench either.
            .arg("--auto-aof-rewrite-percentage")
            .arg("0")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(server.dir.join(LOG_FILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| err(format!("cannot start redis-server (is it on PATH?): {e}")))?;
        server.child = Some(child);
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until the server answers PING (at most [`STARTUP_TIMEOUT`]) and returns that
    /// connection.
    async fn wait_ready(&mut self, client: &Client) -> Res<MultiplexedConnection> {
        let start = Instant::now();
        loop {
            let last = match connect(client).await {
                Ok(mut con) => match redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => return Ok(con),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(err(format!(
                    "redis-server exited at startup ({status})\n{}",
                    self.log_tail()
                )));
            }
            if start.elapsed() >= STARTUP_TIMEOUT {
                return Err(err(format!(
                    "redis-server did not answer PING within {} s (last error: {last})\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
    }

    /// The last lines of the server's stderr and log file, for a startup error.
    fn log_tail(&self) -> String {
        [STDERR_FILE, LOG_FILE]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!("--- {name}:\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the server (it keeps nothing worth a clean shutdown) and removes its directory.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago. Another process may take it before Redis
/// binds it; Redis then exits at startup and [`RedisServer::wait_ready`] says so.
fn free_port() -> Res<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind 127.0.0.1:0: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| err(format!("local_addr: {e}")))?
        .port();
    drop(listener);
    Ok(port)
}

async fn connect(client: &Client) -> Res<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| err(format!("connect to redis: {e}")))
}
