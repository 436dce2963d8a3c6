//! Connections to Redis, standalone or Cluster, and the start-up checks.
//!
//! One multiplexed connection (standalone) or one cluster connection carries every
//! script; blocking reads (`XREAD BLOCK`, the long poll) never share it: each waiter takes a
//! connection of its own from a bounded set, opened with no response timeout (redis-rs's
//! default would cut a block at 500 ms).

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, Result};

/// Prefix of a standalone Redis queue target.
pub const REDIS_PREFIX: &str = "redis://";
/// Prefix of a Redis Cluster queue target: `redis+cluster://HOST:PORT,HOST:PORT,...`.
pub const CLUSTER_PREFIX: &str = "redis+cluster://";

/// Longest a script or command may take before the call fails with `Error::Connection`.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (with replicas behind it, or not): its `redis://` URL.
    Standalone(String),
    /// A Redis Cluster: `redis://` URLs of some of its nodes.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses `redis://HOST:PORT[/DB]` or `redis+cluster://HOST:PORT,HOST:PORT,...`;
    /// `None` when `target` is neither.
    pub fn parse(target: &str) -> Option<Result<RedisTarget>> {
        let target = target.trim();
        if let Some(rest) = target.strip_prefix(CLUSTER_PREFIX) {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| format!("{REDIS_PREFIX}{s}"))
                .collect();
            if nodes.is_empty() {
                return Some(Err(Error::Invalid(format!(
                    "{target:?}: a cluster target names at least one node, as {CLUSTER_PREFIX}HOST:PORT,HOST:PORT"
                ))));
            }
            return Some(Ok(RedisTarget::Cluster(nodes)));
        }
        if target.starts_with(REDIS_PREFIX) {
            if target.len() == REDIS_PREFIX.len() {
                return Some(Err(Error::Invalid(format!(
                    "{target:?}: a Redis target names a host, as {REDIS_PREFIX}HOST:PORT"
                ))));
            }
            return Some(Ok(RedisTarget::Standalone(target.to_string())));
        }
        None
    }
}

/// A connection to Redis: the shared one every script goes through (standalone: a
/// `ConnectionManager`, which reconnects after the server restarts or fails over; a
/// cluster connection reconnects by itself), or one of its own for a blocking read.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Maps a Redis client error to the queue's: the call may or may not have taken effect.
pub(crate) fn conn_err(e: redis::RedisError) -> Error {
    Error::Connection(format!("redis: {e}"))
}

/// Opens the shared connection to `target`: calls time out after [`COMMAND_TIMEOUT`]; a
/// standalone one reconnects (with backoff) after the server comes back.
pub(crate) async fn open_shared(target: &RedisTarget) -> Result<Conn> {
    match target {
        RedisTarget::Standalone(url) => {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| Error::Invalid(format!("queue target {url:?}: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_max_delay(Duration::from_secs(2));
            let c = client
                .get_connection_manager_with_config(config)
                .await
                .map_err(conn_err)?;
            Ok(Conn::Single(c))
        }
        RedisTarget::Cluster(_) => open(target, Some(COMMAND_TIMEOUT)).await,
    }
}

/// Opens a connection of its own to `target`; `response_timeout` `None`: calls may block
/// forever (blocking reads bound themselves with `BLOCK`).
pub(crate) async fn open(target: &RedisTarget, response_timeout: Option<Duration>) -> Result<Conn> {
    match target {
        RedisTarget::Standalone(url) => {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| Error::Invalid(format!("queue target {url:?}: {e}")))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(response_timeout);
            let c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(conn_err)?;
            Ok(Conn::Direct(c))
        }
        RedisTarget::Cluster(nodes) => {
            // A cluster connection always has a response timeout: "none" is a day.
            let timeout = response_timeout.unwrap_or(Duration::from_secs(24 * 3600));
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .build()
                .map_err(|e| Error::Invalid(format!("queue cluster {nodes:?}: {e}")))?;
            let c = client.get_async_connection().await.map_err(conn_err)?;
            Ok(Conn::Cluster(c))
        }
    }
}

/// What the start-up checks require of every server (README, "Queue on Redis").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    /// `appendfsync always` (else `everysec` is accepted too, explicitly relaxed).
    pub fsync_always: bool,
}

/// The `redis://` URLs of every master and replica of a cluster, from `CLUSTER NODES`.
async fn cluster_nodes(seed: &str) -> Result<Vec<String>> {
    let mut c = open(
        &RedisTarget::Standalone(seed.to_string()),
        Some(COMMAND_TIMEOUT),
    )
    .await?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .map_err(conn_err)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if flags.contains("fail") || flags.contains("noaddr") {
            continue;
        }
        let host_port = addr.split('@').next().unwrap_or(addr);
        out.push(format!("{REDIS_PREFIX}{host_port}"));
    }
    Ok(out)
}

/// Checks one server's settings; returns what is wrong with it, if anything. `standalone`:
/// the server was named as a `redis://` target, so it must be a primary outside a cluster.
async fn check_server(url: &str, req: Requirements, standalone: bool) -> Result<Vec<String>> {
    let mut c = open(
        &RedisTarget::Standalone(url.to_string()),
        Some(COMMAND_TIMEOUT),
    )
    .await?;
    let mut problems = Vec::new();
    let get = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
    let mut read = async |name: &'static str| -> Result<String> {
        let v: Vec<String> = get(name).query_async(&mut c).await.map_err(conn_err)?;
        Ok(v.get(1).cloned().unwrap_or_default())
    };
    let appendonly = read("appendonly").await?;
    let appendfsync = read("appendfsync").await?;
    let policy = read("maxmemory-policy").await?;
    let no_fsync_on_rewrite = read("no-appendfsync-on-rewrite").await?;
    if appendonly != "yes" {
        problems.push(format!(
            "appendonly is {appendonly:?}: an acknowledged publish must survive a restart (set `appendonly yes`)"
        ));
    }
    if req.fsync_always && appendfsync != "always" {
        problems.push(format!(
            "appendfsync is {appendfsync:?}: a confirm must mean fsynced (set `appendfsync always`, or add `?fsync=relaxed` to the queue target to accept losing up to a second of confirmed messages on a machine crash)"
        ));
    }
    if req.fsync_always && no_fsync_on_rewrite == "yes" {
        problems.push(
            "no-appendfsync-on-rewrite is \"yes\": writes are not fsynced while the AOF is rewritten (set `no-appendfsync-on-rewrite no`)"
                .to_string(),
        );
    }
    if policy != "noeviction" {
        problems.push(format!(
            "maxmemory-policy is {policy:?}: eviction would silently drop queued messages (set `maxmemory-policy noeviction`)"
        ));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .map_err(conn_err)?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if standalone {
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .map_err(conn_err)?;
        if replication.lines().any(|l| l.trim() == "role:slave") {
            problems.push(
                "it is a replica: name the primary (every publish to a replica fails)".to_string(),
            );
        }
        let cluster: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut c)
            .await
            .map_err(conn_err)?;
        if cluster.lines().any(|l| l.trim() == "cluster_enabled:1") {
            problems.push(format!(
                "it is a Redis Cluster node: use a {CLUSTER_PREFIX}HOST:PORT,... target"
            ));
        }
    }
    if major < 7 {
        problems.push(format!(
            "Redis {version} is too old: the queue needs 7.0 or later"
        ));
    }
    Ok(problems)
}

/// The start-up checks: every server of `target` must keep an acknowledged message
/// (`appendonly yes`, `appendfsync always` unless relaxed, `maxmemory-policy noeviction`,
/// Redis 7.0 or later). Refused with one clear message naming each server and setting. A
/// cluster node that cannot be reached is skipped with a warning (queue/REDIS.md).
pub async fn check(target: &RedisTarget, req: Requirements) -> Result<()> {
    let standalone = matches!(target, RedisTarget::Standalone(_));
    let servers = match target {
        RedisTarget::Standalone(url) => vec![url.clone()],
        RedisTarget::Cluster(nodes) => {
            let mut last = None;
            let mut found = None;
            for seed in nodes {
                match cluster_nodes(seed).await {
                    Ok(n) => {
                        found = Some(n);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (found, last) {
                (Some(n), _) => n,
                (None, Some(e)) => return Err(e),
                (None, None) => Vec::new(),
            }
        }
    };
    let mut report = Vec::new();
    let mut unreachable = Vec::new();
    for url in &servers {
        match check_server(url, req, standalone).await {
            Ok(problems) => report.extend(problems.into_iter().map(|p| format!("{url}: {p}"))),
            // A cluster node that is down but not yet flagged failed (the cluster takes
            // `cluster-node-timeout` to notice) cannot serve, and refusing to start over it
            // would turn one dead node into a dead system: it is skipped, and checked again
            // at the next start.
            Err(Error::Connection(e)) if !standalone => unreachable.push(format!("{url} ({e})")),
            Err(e) => return Err(e),
        }
    }
    if !unreachable.is_empty() {
        if unreachable.len() == servers.len() {
            return Err(Error::Connection(format!(
                "no node of the cluster could be checked: {}",
                unreachable.join("; ")
            )));
        }
        tracing::warn!(
            nodes = %unreachable.join("; "),
            "cluster nodes unreachable at start-up: their settings were not checked"
        );
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the Redis queue refuses these server settings: {}",
            report.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:7000").map(|r| r.ok()),
            Some(Some(RedisTarget::Standalone(
                "redis://127.0.0.1:7000".into()
            )))
        );
        let c = RedisTarget::parse("redis+cluster://a:1, b:2").and_then(|r| r.ok());
        assert_eq!(
            c,
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://"),
            Some(Err(Error::Invalid(_)))
        ));
        assert!(matches!(
            RedisTarget::parse("redis://"),
            Some(Err(Error::Invalid(_)))
        ));
        assert!(RedisTarget::parse("tcp://x:1").is_none());
        assert!(RedisTarget::parse("/var/lib/queue").is_none());
    }
}
