//! A 3+3 Redis Cluster: created healthy, routes keys, and fails over when a master is
//! SIGKILLed.

use std::time::{Duration, Instant};

use redis_kit::{KitError, RedisCluster, RedisServer, info_field};

/// Sends a command to `node`, following one `MOVED` redirection.
fn cmd_routed(
    cluster: &RedisCluster,
    node: &RedisServer,
    args: &[&str],
) -> Result<redis_kit::Resp, KitError> {
    match node.cmd(args) {
        Err(KitError::Reply(text)) if text.starts_with("MOVED ") => {
            let addr = text
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            let target = cluster
                .nodes()
                .iter()
                .find(|n| n.addr() == addr)
                .ok_or_else(|| KitError::Invalid(format!("MOVED to unknown {addr}")))?;
            target.cmd(args)
        }
        other => other,
    }
}

#[test]
fn three_masters_three_replicas_start_ok() -> Result<(), KitError> {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1)?;
    eprintln!("3+3 cluster ready in {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    let masters = cluster.masters()?;
    assert_eq!(masters.len(), 3, "{masters:?}");

    let mut roles = Vec::new();
    for node in cluster.nodes() {
        assert_ne!(node.port(), 6379);
        let info = node.connect()?.cmd_string(&["CLUSTER", "INFO"])?;
        assert_eq!(info_field(&info, "cluster_state"), Some("ok"), "{info}");
        assert_eq!(info_field(&info, "cluster_slots_assigned"), Some("16384"));
        assert_eq!(info_field(&info, "cluster_known_nodes"), Some("6"));
        assert_eq!(node.config_get("appendfsync")?, "always");
        let repl = node.info("replication")?;
        roles.push(info_field(&repl, "role").unwrap_or("?").to_owned());
        if roles.last().is_some_and(|r| r == "slave") {
            assert_eq!(info_field(&repl, "master_link_status"), Some("up"));
        }
    }
    for (i, role) in roles.iter().enumerate() {
        let want = if masters.contains(&i) {
            "master"
        } else {
            "slave"
        };
        assert_eq!(role, want, "node {i}: roles {roles:?}, masters {masters:?}");
    }

    let url = cluster.url();
    let addrs: Vec<&str> = url
        .strip_prefix("redis+cluster://")
        .expect("the cluster scheme")
        .split(',')
        .collect();
    let master_addrs: Vec<String> = masters.iter().map(|&i| cluster.nodes()[i].addr()).collect();
    assert_eq!(addrs, master_addrs);

    // Keys land on the master that owns their slot.
    let first = &cluster.nodes()[0];
    for key in ["a", "b", "{t:0}:s", "{t:1}:s"] {
        cmd_routed(&cluster, first, &["SET", key, key])?;
        assert_eq!(
            cmd_routed(&cluster, first, &["GET", key])?.as_str(),
            Some(key)
        );
    }
    Ok(())
}

#[test]
fn a_killed_master_is_replaced_by_its_replica() -> Result<(), KitError> {
    let mut cluster = RedisCluster::start(3, 1)?;
    let before = cluster.masters()?;
    let killed = cluster.kill_master(0)?;
    assert_eq!(killed, before[0]);
    assert!(cluster.nodes()[killed].pid().is_none());

    let started = Instant::now();
    let failover = cluster.failover_and_wait(Duration::from_secs(30))?;
    eprintln!("cluster failover in {:?}", started.elapsed());
    assert_eq!(failover.killed, killed);
    assert!(
        !before.contains(&failover.promoted),
        "{failover:?} {before:?}"
    );

    let after = cluster.masters()?;
    assert_eq!(after.len(), 3);
    assert!(
        after.contains(&failover.promoted) && !after.contains(&killed),
        "{after:?}"
    );
    let promoted = &cluster.nodes()[failover.promoted];
    assert_eq!(
        info_field(&promoted.info("replication")?, "role"),
        Some("master")
    );
    assert!(
        cluster.url().contains(&promoted.addr()),
        "{}",
        cluster.url()
    );
    assert!(!cluster.url().contains(&cluster.nodes()[killed].addr()));

    // A second failover wait without a kill is a usage error, not a hang.
    assert!(matches!(
        cluster.failover_and_wait(Duration::from_secs(1)),
        Err(KitError::Invalid(_))
    ));
    Ok(())
}
