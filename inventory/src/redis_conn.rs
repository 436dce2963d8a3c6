//! [`RedisConn`]: the one way the stock store, the gateway's token ledger and the load-test
//! auditor talk to Redis, standalone (`redis://HOST:PORT[/DB]`, a pool of connections) or
//! Cluster (`redis+cluster://HOST:PORT,HOST:PORT,…`, one cluster connection that routes
//! each call to the master of its key's slot and follows redirections).
//!
//! Every script is given all the keys it touches, and they share one hash tag (one slot):
//! see [`crate::keys`].

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::Script;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::{Error, Result};

/// Longest wait for a Redis reply (or a pooled connection).
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to connect to Redis.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections in the pool (standalone).
pub const POOL_CONNECTIONS_MAX: usize = 32;
/// Most nodes a `redis+cluster://` URL may name.
pub const CLUSTER_SEEDS_MAX: usize = 64;

/// Prefix of a standalone Redis URL.
pub const REDIS_PREFIX: &str = "redis://";
/// Prefix of a Redis Cluster URL: `redis+cluster://HOST:PORT,HOST:PORT,...`.
pub const CLUSTER_PREFIX: &str = "redis+cluster://";

/// Whether `url` names Redis (standalone or Cluster), as `--inventory` takes it.
pub fn is_redis_url(url: &str) -> bool {
    let url = url.trim();
    url.starts_with(REDIS_PREFIX) || url.starts_with(CLUSTER_PREFIX)
}

fn conn_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

/// A handle on Redis: cheap to clone (clones share the pool or the cluster connection).
#[derive(Clone)]
pub enum RedisConn {
    /// One server: a pool of connections.
    Standalone(Pool),
    /// A Redis Cluster: one multiplexed cluster connection (it reconnects by itself).
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConn::Standalone(_) => f.write_str("RedisConn::Standalone"),
            RedisConn::Cluster(_) => f.write_str("RedisConn::Cluster"),
        }
    }
}

impl RedisConn {
    /// Connects to `url`: `redis://HOST:PORT[/DB]` (a pool of at most `connections`,
    /// cut to [`POOL_CONNECTIONS_MAX`]) or `redis+cluster://HOST:PORT,HOST:PORT,…` (any
    /// reachable nodes of the cluster; `connections` is not used). Checks that Redis
    /// answers.
    pub async fn open(url: &str, connections: usize) -> Result<RedisConn> {
        let url = url.trim();
        let conn = if let Some(rest) = url.strip_prefix(CLUSTER_PREFIX) {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| format!("{REDIS_PREFIX}{s}"))
                .collect();
            if nodes.is_empty() || nodes.len() > CLUSTER_SEEDS_MAX {
                return Err(Error::Invalid(format!(
                    "{url:?}: a cluster URL names 1..={CLUSTER_SEEDS_MAX} nodes, as {CLUSTER_PREFIX}HOST:PORT,HOST:PORT"
                )));
            }
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(REDIS_CONNECT_TIMEOUT)
                .response_timeout(REDIS_RESPONSE_TIMEOUT)
                .build()
                .map_err(|e| Error::Invalid(format!("{url:?}: {e}")))?;
            RedisConn::Cluster(client.get_async_connection().await.map_err(conn_err)?)
        } else if url.starts_with(REDIS_PREFIX) && url.len() > REDIS_PREFIX.len() {
            // A reply slower than this is an error (the caller answers 503); redis-rs's own
            // default (0.5 s) is too tight for a loaded 2-core machine.
            let conn_cfg = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT));
            let manager = Manager::new_with_config(url, conn_cfg).map_err(conn_err)?;
            let pool = Pool::builder(manager)
                .max_size(connections.clamp(1, POOL_CONNECTIONS_MAX))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                .build()
                .map_err(conn_err)?;
            RedisConn::Standalone(pool)
        } else {
            return Err(Error::Invalid(format!(
                "{url:?} is not {REDIS_PREFIX}HOST:PORT nor {CLUSTER_PREFIX}HOST:PORT,HOST:PORT"
            )));
        };
        let _: String = conn.query(&redis::cmd("PING")).await?;
        Ok(conn)
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Runs `script` on `keys` (all in one slot) with `args`.
    pub async fn invoke_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        match self {
            RedisConn::Standalone(pool) => {
                let mut c = pool.get().await.map_err(conn_err)?;
                inv.invoke_async(&mut *c).await.map_err(conn_err)
            }
            RedisConn::Cluster(c) => {
                let mut c = c.clone();
                inv.invoke_async(&mut c).await.map_err(conn_err)
            }
        }
    }

    /// Runs one command (its keys, if several, in one slot).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        match self {
            RedisConn::Standalone(pool) => {
                let mut c = pool.get().await.map_err(conn_err)?;
                cmd.query_async(&mut *c).await.map_err(conn_err)
            }
            RedisConn::Cluster(c) => {
                let mut c = c.clone();
                cmd.query_async(&mut c).await.map_err(conn_err)
            }
        }
    }
}
