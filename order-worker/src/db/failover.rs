//! Failover of a multi-host PostgreSQL shard (`postgres://u@h1:p1,h2:p2/db`, libpq's
//! multi-host form, which sqlx does not parse): one [`PgConnectOptions`] per host, the pool
//! pointed at the host that is the primary (`pg_is_in_recovery()` false), and after a
//! connection-level error ([`is_connection_error`]) a new look-up of the primary
//! ([`Failover::resolve`], at most once per [`FAILOVER_RESOLVE_INTERVAL`]) that re-points
//! the pool in place (`set_connect_options`). The failing operation's error is returned as
//! it is — transient — and the caller's retry runs on the new primary.
//!
//! The pool of such a shard never hands out a connection to a standby: a new connection
//! that finds itself in recovery is refused (sqlx retries the connect until its acquire
//! timeout, [`FAILOVER_ACQUIRE_TIMEOUT`]), and a connection opened before the last switch is
//! discarded when next acquired.
//!
//! Promoting a standby is the operator's (or the cluster manager's) job, not this code's:
//! it only follows whichever host says it is the primary. Nothing acknowledged is lost when
//! the servers run `synchronous_commit = on` with `synchronous_standby_names` naming the
//! standby: a commit returns only once the standby has its WAL. [`Failover::new`] warns when
//! the primary has no synchronous standby.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::{
    DbError, DbResult, FAILOVER_PROBE_TIMEOUT, FAILOVER_RESOLVE_INTERVAL, SHARD_HOSTS_MAX,
};

/// The hosts of one multi-host URL, each with its own options (the URL's user, password,
/// database and parameters, one host and port), in the URL's order, with `host:port` to
/// name it in logs (never the password).
pub(crate) fn split_hosts(url: &str) -> DbResult<Vec<(String, PgConnectOptions)>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(DbError::Invalid("a PostgreSQL URL is postgres://…".into()));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    let list: Vec<&str> = hosts.split(',').collect();
    if list.len() > SHARD_HOSTS_MAX {
        return Err(DbError::Invalid(format!(
            "a shard URL names at most {SHARD_HOSTS_MAX} hosts, not {}",
            list.len()
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for host in list {
        if host.is_empty() {
            return Err(DbError::Invalid(format!(
                "an empty host in the shard URL's host list {hosts:?}"
            )));
        }
        let one = format!("{scheme}://{userinfo}{host}{tail}");
        let opts = PgConnectOptions::from_str(&one)
            .map_err(|e| DbError::Invalid(format!("host {host:?} of a shard URL: {e}")))?;
        out.push((host.to_string(), opts));
    }
    Ok(out)
}

/// Whether `e` says the shard's server is gone or is not (any longer) the primary: I/O
/// and protocol errors, a pool that could not connect in time, PostgreSQL's connection
/// exceptions (08…), operator intervention (57P…: shutdown, crash restart, cannot connect
/// now), and a write refused in a read-only transaction (25006: a standby answering).
pub(crate) fn is_connection_error(e: &DbError) -> bool {
    let DbError::Sql(e) = e else {
        return false;
    };
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            code.starts_with("08") || code.starts_with("57P") || code == "25006"
        }
        _ => false,
    }
}

/// The hosts of one PostgreSQL shard and which of them its pool uses.
#[derive(Debug)]
pub(crate) struct Failover {
    /// `host:port` and options, in the URL's order.
    hosts: Vec<(String, PgConnectOptions)>,
    /// The host the pool connects to.
    current: AtomicUsize,
    /// When this was made: the origin of `switched_us`.
    epoch: Instant,
    /// µs after `epoch` of the last switch of host (0: none); connections opened before it
    /// are discarded. Shared with the pool's hook.
    switched_us: Arc<AtomicU64>,
    /// When the last look-up started.
    last_resolve: Mutex<Option<Instant>>,
    /// Held by the one look-up running.
    resolving: tokio::sync::Mutex<()>,
}

impl Failover {
    /// The shard's hosts, the pool to point at the one that is the primary now; an error if
    /// none is. Warns if the primary has no synchronous standby.
    pub(crate) async fn new(hosts: Vec<(String, PgConnectOptions)>) -> DbResult<Arc<Failover>> {
        let f = Failover::with_current(hosts, 0);
        let Some(i) = f.find_primary().await else {
            return Err(DbError::Invalid(format!(
                "no primary among the shard's hosts {}",
                f.names()
            )));
        };
        f.current.store(i, Ordering::Relaxed);
        f.warn_without_sync_standby().await;
        Ok(Arc::new(f))
    }

    fn with_current(hosts: Vec<(String, PgConnectOptions)>, current: usize) -> Failover {
        Failover {
            hosts,
            current: AtomicUsize::new(current),
            epoch: Instant::now(),
            switched_us: Arc::new(AtomicU64::new(0)),
            last_resolve: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(()),
        }
    }

    /// The same hosts, starting from the current one, for another pool.
    pub(crate) fn sibling(&self) -> Arc<Failover> {
        Arc::new(Failover::with_current(
            self.hosts.clone(),
            self.current.load(Ordering::Relaxed),
        ))
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.hosts.iter().map(|(n, _)| n.as_str()).collect();
        names.join(",")
    }

    /// The host in use, `host:port`.
    pub(crate) fn current_host(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.hosts.get(i).map_or("", |(n, _)| n.as_str())
    }

    /// A lazy pool on the current host, of at most `max` connections waiting at most
    /// `acquire_timeout` for one, that refuses standbys and drops connections older than
    /// the last switch.
    pub(crate) fn pool(&self, max: u32, acquire_timeout: Duration) -> PgPool {
        let (epoch, switched) = (self.epoch, self.switched_us.clone());
        let i = self.current.load(Ordering::Relaxed);
        let opts = self.hosts[i.min(self.hosts.len() - 1)].1.clone();
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                        .fetch_one(&mut *conn)
                        .await?;
                    if standby {
                        return Err(sqlx::Error::Protocol(
                            "connected to a standby, not the primary".into(),
                        ));
                    }
                    Ok(())
                })
            })
            .before_acquire(move |_conn, meta| {
                let opened_us = Instant::now()
                    .checked_sub(meta.age)
                    .map_or(0, |t| micros(t.saturating_duration_since(epoch)));
                let fresh = opened_us >= switched.load(Ordering::Relaxed);
                Box::pin(async move { Ok(fresh) })
            })
            .connect_lazy_with(opts)
    }

    /// After a connection-level error on `pool`: unless a look-up ran less than
    /// [`FAILOVER_RESOLVE_INTERVAL`] ago or runs now, finds the host that is the primary
    /// and, if it is another, points the pool at it.
    pub(crate) async fn resolve(&self, pool: &PgPool) {
        let Ok(_running) = self.resolving.try_lock() else {
            return;
        };
        {
            let mut last = self.last_resolve.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < FAILOVER_RESOLVE_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Some(i) = self.find_primary().await else {
            tracing::warn!(
                "orders shard: no primary among {} yet; operations fail until one is promoted",
                self.names()
            );
            return;
        };
        let was = self.current.swap(i, Ordering::Relaxed);
        if was != i {
            pool.set_connect_options(self.hosts[i].1.clone());
            self.switched_us
                .store(micros(self.epoch.elapsed()).max(1), Ordering::Relaxed);
            tracing::warn!(
                "orders shard: the primary is now {} (was {})",
                self.hosts[i].0,
                self.hosts.get(was).map_or("?", |(n, _)| n.as_str())
            );
        }
    }

    /// The first host, in the URL's order, that answers as a primary.
    async fn find_primary(&self) -> Option<usize> {
        for (i, (_, opts)) in self.hosts.iter().enumerate() {
            let probe = async {
                let mut c = PgConnection::connect_with(opts).await?;
                let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut c)
                    .await?;
                let _ = c.close().await;
                Ok::<bool, sqlx::Error>(standby)
            };
            if let Ok(Ok(false)) = tokio::time::timeout(FAILOVER_PROBE_TIMEOUT, probe).await {
                return Some(i);
            }
        }
        None
    }

    /// Logs a warning if the current primary has no synchronous standby streaming from it
    /// (a URL of several hosts promises one: without it, a commit acknowledged just before
    /// the primary's loss may be missing on the promoted standby).
    async fn warn_without_sync_standby(&self) {
        let host = &self.hosts[self.current.load(Ordering::Relaxed)];
        let check = async {
            let mut c = PgConnection::connect_with(&host.1).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
            )
            .fetch_one(&mut c)
            .await?;
            let _ = c.close().await;
            Ok::<i64, sqlx::Error>(n)
        };
        match tokio::time::timeout(FAILOVER_PROBE_TIMEOUT, check).await {
            Ok(Ok(0)) => tracing::warn!(
                "orders shard {}: the primary {} has no synchronous standby (set \
                 synchronous_standby_names and synchronous_commit = on): a failover may lose \
                 acknowledged orders",
                self.names(),
                host.0
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("orders shard {}: checking its standbys: {e}", host.0),
            Err(_) => tracing::warn!("orders shard {}: checking its standbys timed out", host.0),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::split_hosts;

    #[test]
    fn a_multi_host_url_splits_into_one_url_per_host() {
        let hosts = split_hosts("postgres://u:secret@a:5001,b:5002/orders?sslmode=disable")
            .expect("two hosts");
        let names: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a:5001", "b:5002"]);
        assert_eq!(hosts[1].1.get_host(), "b");
        assert_eq!(hosts[1].1.get_port(), 5002);
        assert_eq!(hosts[1].1.get_database(), Some("orders"));
        assert_eq!(hosts[0].1.get_username(), "u");
        let one = split_hosts("postgresql://h/db").expect("one host");
        assert_eq!(one.len(), 1);
        assert!(split_hosts("postgres://u@a,,b/db").is_err());
        let many = format!("postgres://{}/db", ["h"; 9].join(","));
        assert!(split_hosts(&many).is_err());
        assert!(split_hosts("not a url").is_err());
    }
}
