//! A primary, its replica and one Sentinel watching them: the smallest setup that fails
//! over.

use std::time::Duration;

use crate::resp::{Resp, info_field};
use crate::server::{Role, SentinelConf};
use crate::wait::{Probe, wait_until};
use crate::{KitError, RedisOptions, RedisServer};

/// The name the Sentinel monitors the primary under.
pub const SENTINEL_MASTER_NAME: &str = "seckill";
/// `sentinel down-after-milliseconds`: how long the primary must be silent before it is
/// considered down (the default's 30 s would make every failover test slow).
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `sentinel failover-timeout`: small, so that a stuck failover is retried soon.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;
/// How long the setup may take to be ready (replica synced, Sentinel aware of it).
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause between two looks at the Sentinel's state.
pub const SENTINEL_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A primary, one replica (`replicaof` the primary) and one Sentinel (`redis-server
/// sentinel.conf --sentinel`, quorum 1) on free loopback ports, each with its own
/// temporary directory. Dropping it kills all three (the Sentinel first, so it does not
/// act on the others' deaths).
#[derive(Debug)]
pub struct SentinelSetup {
    // Field order is drop order.
    sentinel: RedisServer,
    replica: RedisServer,
    primary: RedisServer,
    /// The address killed by `kill_primary`, until a failover wait sees another master.
    killed: Option<String>,
}

impl SentinelSetup {
    /// Starts the three processes and waits until the replica's link to the primary is up
    /// and the Sentinel lists the replica as healthy (a Sentinel only promotes a replica it
    /// knows, so a failover test must not begin before).
    pub fn start() -> Result<SentinelSetup, KitError> {
        let primary = RedisServer::start(RedisOptions::new())?;
        let replica =
            RedisServer::start(RedisOptions::new().replica_of("127.0.0.1", primary.port()))?;
        wait_until(
            "the replica's link to the primary",
            SENTINEL_READY_TIMEOUT,
            SENTINEL_POLL_INTERVAL,
            || match replica.info("replication") {
                Ok(info) if info_field(&info, "master_link_status") == Some("up") => {
                    Probe::Ready(())
                }
                Ok(info) => Probe::NotYet(format!(
                    "master_link_status:{}",
                    info_field(&info, "master_link_status").unwrap_or("?")
                )),
                Err(e) => Probe::NotYet(e.to_string()),
            },
        )?;
        let sentinel = RedisServer::launch(Role::Sentinel(SentinelConf {
            master_name: SENTINEL_MASTER_NAME.into(),
            master_host: "127.0.0.1".into(),
            master_port: primary.port(),
            quorum: 1,
            down_after_ms: SENTINEL_DOWN_AFTER_MS,
            failover_timeout_ms: SENTINEL_FAILOVER_TIMEOUT_MS,
        }))?;
        let setup = SentinelSetup {
            sentinel,
            replica,
            primary,
            killed: None,
        };
        let replica_port = setup.replica.port().to_string();
        wait_until(
            "the Sentinel to know the replica",
            SENTINEL_READY_TIMEOUT,
            SENTINEL_POLL_INTERVAL,
            || match setup
                .sentinel
                .cmd(&["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME])
            {
                Ok(reply) => {
                    let replicas = fields_of_each(&reply);
                    let healthy = replicas.iter().any(|r| {
                        field(r, "port") == Some(replica_port.as_str())
                            && field(r, "flags") == Some("slave")
                            && field(r, "master-link-status") == Some("ok")
                    });
                    if healthy {
                        Probe::Ready(())
                    } else {
                        Probe::NotYet(format!("SENTINEL REPLICAS: {replicas:?}"))
                    }
                }
                Err(e) => Probe::NotYet(e.to_string()),
            },
        )?;
        Ok(setup)
    }

    /// The server started as primary (a replica after a failover, if restarted).
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The server started as replica (the primary after a failover).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The Sentinel process (it answers `SENTINEL …` commands).
    pub fn sentinel(&self) -> &RedisServer {
        &self.sentinel
    }

    /// The server started as primary, to restart it after a failover.
    pub fn primary_mut(&mut self) -> &mut RedisServer {
        &mut self.primary
    }

    /// The server started as replica.
    pub fn replica_mut(&mut self) -> &mut RedisServer {
        &mut self.replica
    }

    /// `"127.0.0.1:PORT"` of the server started as primary.
    pub fn primary_addr(&self) -> String {
        self.primary.addr()
    }

    /// `"127.0.0.1:PORT"` of the server started as replica.
    pub fn replica_addr(&self) -> String {
        self.replica.addr()
    }

    /// `"127.0.0.1:PORT"` of the Sentinel.
    pub fn sentinel_addr(&self) -> String {
        self.sentinel.addr()
    }

    /// The current master as the Sentinel says (`SENTINEL get-master-addr-by-name
    /// seckill`), `"HOST:PORT"`.
    pub fn master_addr(&self) -> Result<String, KitError> {
        let reply =
            self.sentinel
                .cmd(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER_NAME])?;
        match reply.as_array() {
            Some([host, port]) => match (host.as_str(), port.as_str()) {
                (Some(host), Some(port)) => Ok(format!("{host}:{port}")),
                _ => Err(KitError::Protocol(format!(
                    "get-master-addr-by-name: {reply:?}"
                ))),
            },
            _ => Err(KitError::Protocol(format!(
                "get-master-addr-by-name: {reply:?}"
            ))),
        }
    }

    /// Kills the current master (per the Sentinel) with SIGKILL and returns its address.
    pub fn kill_primary(&mut self) -> Result<String, KitError> {
        let master = self.master_addr()?;
        let server = if master == self.primary.addr() {
            &mut self.primary
        } else if master == self.replica.addr() {
            &mut self.replica
        } else {
            return Err(KitError::Invalid(format!(
                "the Sentinel names {master}, neither {} nor {}",
                self.primary.addr(),
                self.replica.addr()
            )));
        };
        server.kill()?;
        self.killed = Some(master.clone());
        Ok(master)
    }

    /// Waits until the Sentinel names a master other than the one killed by
    /// [`kill_primary`](Self::kill_primary) and that server reports `role:master`; returns
    /// its address. Expect a few seconds (down-after 1 s, then the election and the
    /// promotion).
    pub fn wait_for_failover(&mut self, timeout: Duration) -> Result<String, KitError> {
        let killed = self
            .killed
            .clone()
            .ok_or_else(|| KitError::Invalid("wait_for_failover without kill_primary".into()))?;
        let what = format!("the Sentinel to promote a replica in place of {killed}");
        let new_master = wait_until(&what, timeout, SENTINEL_POLL_INTERVAL, || {
            let master = match self.master_addr() {
                Ok(m) if m != killed => m,
                Ok(m) => return Probe::NotYet(format!("the Sentinel still names {m}")),
                Err(e) => return Probe::NotYet(e.to_string()),
            };
            let role = crate::resp::Connection::connect(&master)
                .and_then(|mut c| c.cmd_string(&["INFO", "replication"]))
                .map(|info| info_field(&info, "role").unwrap_or("?").to_owned());
            match role {
                Ok(role) if role == "master" => Probe::Ready(master),
                Ok(role) => Probe::NotYet(format!(
                    "the Sentinel names {master}, which says role:{role}"
                )),
                Err(e) => Probe::NotYet(format!("the Sentinel names {master}: {e}")),
            }
        })?;
        self.killed = None;
        Ok(new_master)
    }
}

/// `SENTINEL REPLICAS`' answer: one flat `[name, value, name, value, …]` array per replica.
fn fields_of_each(reply: &Resp) -> Vec<Vec<(String, String)>> {
    reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            entry
                .as_array()
                .unwrap_or_default()
                .chunks(2)
                .filter_map(|pair| match pair {
                    [k, v] => Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
