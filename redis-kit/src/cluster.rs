//! A Redis Cluster of test servers: masters with replicas, created by `redis-cli --cluster
//! create`, and SIGKILL failovers.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::resp::info_field;
use crate::wait::{Probe, wait_until};
use crate::{KitError, RedisOptions, RedisServer, redis_cli_path};

/// Redis Cluster's hash slot count.
pub const CLUSTER_SLOTS: usize = 16384;
/// `redis-cli --cluster create` needs at least three masters.
pub const CLUSTER_MASTERS_MIN: usize = 3;
/// The most nodes one cluster may have here (a test machine has 2 cores).
pub const CLUSTER_NODES_MAX: usize = 24;
/// How long `redis-cli --cluster create` may run (it waits for the nodes to agree).
pub const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new cluster may take to report `cluster_state:ok` everywhere.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between two looks at the cluster's state.
pub const CLUSTER_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A running Redis Cluster on loopback: `masters × (1 + replicas_per_master)` servers,
/// each a [`RedisServer`] with `cluster-enabled yes` and the kit's default (durable)
/// options. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `CLUSTER MYID` of each node, by index.
    ids: Vec<String>,
    masters: usize,
    /// The masters `url()` names: those at start, updated by each failover wait.
    url_masters: Vec<usize>,
    /// The master killed by `kill_master` and its replicas then, until a failover wait
    /// sees one of them promoted.
    killed: Option<Killed>,
    /// Holds `redis-cli`'s output.
    work: TempDir,
}

#[derive(Debug, Clone)]
struct Killed {
    node: usize,
    replicas: Vec<usize>,
}

/// What a failover wait saw: the killed master and the replica that took its slots (node
/// indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterFailover {
    /// The master killed by [`RedisCluster::kill_master`].
    pub killed: usize,
    /// Its former replica, now a master serving its slots.
    pub promoted: usize,
}

impl RedisCluster {
    /// Starts the servers, creates the cluster with `redis-cli --cluster create …
    /// --cluster-replicas N`, and waits (up to [`CLUSTER_READY_TIMEOUT`]) until every node
    /// says `cluster_state:ok` with all 16384 slots assigned and served, every node sees
    /// the same `masters` masters, and every replica's link to its master is up.
    pub fn start(masters: usize, replicas_per_master: usize) -> Result<RedisCluster, KitError> {
        let total = masters * (1 + replicas_per_master);
        if masters < CLUSTER_MASTERS_MIN || total > CLUSTER_NODES_MAX {
            return Err(KitError::Invalid(format!(
                "a cluster of {masters} masters × {replicas_per_master} replicas: needs at least \
                 {CLUSTER_MASTERS_MIN} masters and at most {CLUSTER_NODES_MAX} nodes"
            )));
        }
        let cli = redis_cli_path()?;
        let nodes = (0..total)
            .map(|_| RedisServer::start(RedisOptions::new().cluster_enabled(true)))
            .collect::<Result<Vec<_>, _>>()?;
        let work = tempfile::Builder::new()
            .prefix("redis-kit-cluster-")
            .tempdir()
            .map_err(|e| KitError::io("creating a temporary directory", e))?;
        let mut cluster = RedisCluster {
            ids: Vec::with_capacity(total),
            nodes,
            masters,
            url_masters: Vec::new(),
            killed: None,
            work,
        };
        cluster.create(&cli, replicas_per_master)?;
        for node in &cluster.nodes {
            let id = node.connect()?.cmd_string(&["CLUSTER", "MYID"])?;
            cluster.ids.push(id);
        }
        cluster.url_masters = cluster.wait_healthy(CLUSTER_READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create`, bounded by [`CLUSTER_CREATE_TIMEOUT`].
    fn create(&self, cli: &std::path::Path, replicas_per_master: usize) -> Result<(), KitError> {
        let out_path = self.work.path().join("cluster-create.log");
        let out = File::create(&out_path)
            .map_err(|e| KitError::io(format!("creating {}", out_path.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| KitError::io("duplicating the output file", e))?;
        let mut command = Command::new(cli);
        command
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(RedisServer::addr))
            .args([
                "--cluster-replicas",
                &replicas_per_master.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let program = format!("{command:?}");
        let mut child = command
            .spawn()
            .map_err(|e| KitError::io(format!("spawning {}", cli.display()), e))?;
        // Output goes to a file, not a pipe, so a chatty redis-cli cannot block on a full
        // pipe while we poll for its exit.
        let status = wait_until(
            "redis-cli --cluster create to finish",
            CLUSTER_CREATE_TIMEOUT,
            CLUSTER_POLL_INTERVAL,
            || match child.try_wait() {
                Ok(Some(status)) => Probe::Ready(Ok(status)),
                Ok(None) => Probe::NotYet("still running".into()),
                Err(e) => Probe::Ready(Err(e)),
            },
        );
        let output = || fs::read_to_string(&out_path).unwrap_or_default();
        match status {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(KitError::Command {
                program,
                status: status.to_string(),
                output: output(),
            }),
            Ok(Err(e)) => Err(KitError::io("waiting for redis-cli", e)),
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(KitError::Command {
                    program,
                    status: timeout.to_string(),
                    output: output(),
                })
            }
        }
    }

    /// `"redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…"`: every master, as of the start or
    /// the last [`failover_and_wait`](Self::failover_and_wait).
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .url_masters
            .iter()
            .map(|&i| self.nodes[i].addr())
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// Every node, by index (killed ones included).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to kill or restart by hand.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut RedisServer> {
        self.nodes.get_mut(index)
    }

    /// A node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, index: usize) -> Option<&str> {
        self.ids.get(index).map(String::as_str)
    }

    /// The current masters (node indices, ascending): the nodes that serve slots and are
    /// not flagged as failing, in the view of the first running node.
    pub fn masters(&self) -> Result<Vec<usize>, KitError> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .ok_or_else(|| KitError::Invalid("every node of the cluster is killed".into()))?;
        let view = self.view_of(node)?;
        let mut masters: Vec<usize> = view
            .iter()
            .filter(|e| e.serves_slots())
            .filter_map(|e| self.index_of_port(e.port))
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// Kills master number `i` of [`masters`](Self::masters) with SIGKILL and returns its
    /// node index. [`failover_and_wait`](Self::failover_and_wait) then waits for one of its
    /// replicas to take over.
    pub fn kill_master(&mut self, i: usize) -> Result<usize, KitError> {
        let masters = self.masters()?;
        let node = *masters.get(i).ok_or_else(|| {
            KitError::Invalid(format!("master {i} of {} ({masters:?})", masters.len()))
        })?;
        let view = self.view_of(&self.nodes[node])?;
        let replicas = view
            .iter()
            .filter(|e| e.master_id.as_deref() == Some(self.ids[node].as_str()))
            .filter_map(|e| self.index_of_port(e.port))
            .collect();
        self.nodes[node].kill()?;
        self.killed = Some(Killed { node, replicas });
        Ok(node)
    }

    /// Waits until the cluster is healthy again (as [`start`](Self::start) requires, among
    /// the running nodes) with a former replica of the killed master serving its slots.
    /// Expect a few seconds: `cluster-node-timeout` (2 s) to flag the master as failing,
    /// then the replica's election delay.
    pub fn failover_and_wait(&mut self, timeout: Duration) -> Result<ClusterFailover, KitError> {
        let killed = self.killed.clone().ok_or_else(|| {
            KitError::Invalid("failover_and_wait without a master killed by kill_master".into())
        })?;
        if killed.replicas.is_empty() {
            return Err(KitError::Invalid(format!(
                "node {} had no replica when it was killed: nothing can take over",
                killed.node
            )));
        }
        let what = format!(
            "a replica of killed node {} (port {}) to take over its slots",
            killed.node,
            self.nodes[killed.node].port()
        );
        let promoted = wait_until(&what, timeout, CLUSTER_POLL_INTERVAL, || {
            let masters = match self.health() {
                Ok(masters) => masters,
                Err(seen) => return Probe::NotYet(seen),
            };
            match killed.replicas.iter().find(|r| masters.contains(r)) {
                Some(&promoted) if !masters.contains(&killed.node) => {
                    Probe::Ready((promoted, masters))
                }
                _ => Probe::NotYet(format!("masters {masters:?}, none a former replica")),
            }
        })?;
        let (promoted, masters) = promoted;
        self.url_masters = masters;
        self.killed = None;
        Ok(ClusterFailover {
            killed: killed.node,
            promoted,
        })
    }

    /// Waits until the running nodes agree that the cluster is healthy (see
    /// [`start`](Self::start)) and returns the masters; e.g. after restarting a node.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<Vec<usize>, KitError> {
        wait_until(
            "the cluster to be ok on every running node",
            timeout,
            CLUSTER_POLL_INTERVAL,
            || match self.health() {
                Ok(masters) => Probe::Ready(masters),
                Err(seen) => Probe::NotYet(seen),
            },
        )
    }

    /// The masters if every running node reports `cluster_state:ok` with every slot
    /// assigned and ok, sees the same `self.masters` masters (all of them running), and is
    /// itself one of them or a replica whose link is up; otherwise what is amiss.
    fn health(&self) -> Result<Vec<usize>, String> {
        let mut agreed: Option<BTreeSet<usize>> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            if node.pid().is_none() {
                continue;
            }
            let port = node.port();
            let mut conn = node.connect().map_err(|e| format!("node {index}: {e}"))?;
            let info = conn
                .cmd_string(&["CLUSTER", "INFO"])
                .map_err(|e| format!("node {index}: {e}"))?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info_field(&info, field).unwrap_or("?");
                if got != want {
                    return Err(format!("node {index} (port {port}): {field}:{got}"));
                }
            }
            let text = conn
                .cmd_string(&["CLUSTER", "NODES"])
                .map_err(|e| format!("node {index}: {e}"))?;
            let view = parse_cluster_nodes(&text).map_err(|e| format!("node {index}: {e}"))?;
            let masters: BTreeSet<usize> = view
                .iter()
                .filter(|e| e.serves_slots())
                .map(|e| self.index_of_port(e.port).ok_or(e.port))
                .collect::<Result<_, _>>()
                .map_err(|p| format!("node {index} names a master on unknown port {p}"))?;
            if masters.len() != self.masters {
                return Err(format!("node {index} sees masters {masters:?}"));
            }
            if let Some(dead) = masters.iter().find(|&&m| self.nodes[m].pid().is_none()) {
                return Err(format!(
                    "node {index} still counts killed node {dead} as a master"
                ));
            }
            match &agreed {
                Some(seen) if *seen != masters => {
                    return Err(format!(
                        "nodes disagree on the masters: {seen:?} vs {masters:?}"
                    ));
                }
                _ => agreed = Some(masters.clone()),
            }
            if !masters.contains(&index) {
                let repl = conn
                    .cmd_string(&["INFO", "replication"])
                    .map_err(|e| format!("node {index}: {e}"))?;
                let role = info_field(&repl, "role").unwrap_or("?");
                let link = info_field(&repl, "master_link_status").unwrap_or("?");
                if role != "slave" || link != "up" {
                    return Err(format!(
                        "node {index} (port {port}): role:{role} master_link_status:{link}"
                    ));
                }
            }
        }
        agreed
            .map(|m| m.into_iter().collect())
            .ok_or_else(|| "no node is running".into())
    }

    fn view_of(&self, node: &RedisServer) -> Result<Vec<NodeEntry>, KitError> {
        parse_cluster_nodes(&node.connect()?.cmd_string(&["CLUSTER", "NODES"])?)
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    pub(crate) port: u16,
    pub(crate) flags: Vec<String>,
    pub(crate) master_id: Option<String>,
    pub(crate) has_slots: bool,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master that serves slots and is not flagged as failing (`fail`) or suspected
    /// (`fail?`).
    fn serves_slots(&self) -> bool {
        self.has_flag("master")
            && self.has_slots
            && !self.has_flag("fail")
            && !self.has_flag("fail?")
    }
}

/// Parses `CLUSTER NODES` (the node ids themselves are not kept: `CLUSTER MYID` gives
/// ours): `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> [<slot>…]`, one node a line.
pub(crate) fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeEntry>, KitError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bad = || KitError::Protocol(format!("a CLUSTER NODES line: {line:?}"));
            if fields.len() < 8 {
                return Err(bad());
            }
            let host_port = fields[1].split(['@', ',']).next().unwrap_or("");
            let port = host_port
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .ok_or_else(bad)?;
            Ok(NodeEntry {
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                has_slots: fields.len() > 8,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master - 0 1426238316232 5 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";

    #[test]
    fn parses_cluster_nodes() -> Result<(), KitError> {
        let view = parse_cluster_nodes(SAMPLE)?;
        assert_eq!(view.len(), 5);
        assert_eq!(view[0].port, 30004);
        assert_eq!(
            view[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(view[4].flags, ["myself", "master"]);
        let serving: Vec<u16> = view
            .iter()
            .filter(|e| e.serves_slots())
            .map(|e| e.port)
            .collect();
        // 30003 is suspected failing, 30005 is a master without slots.
        assert_eq!(serving, [30002, 30001]);
        assert!(parse_cluster_nodes("abc 127.0.0.1:1@2 master").is_err());
        assert!(parse_cluster_nodes("a nowhere master - 0 0 1 connected").is_err());
        Ok(())
    }
}
