//! A Redis Cluster failover under a flood of purchases (issue 15, "crashes and failover").
//!
//! The all-in-one system (gateway, order workers, canceller; orders on SQLite, stock in
//! process) runs with its queue on a scratch Redis Cluster of 3 masters and 3 replicas
//! (`redis-kit`, free ports, never the shared 6379), `?replicas=1`: a publish is confirmed
//! only after one replica acknowledged it. Distinct buyers purchase without pause while the
//! master holding the orders topic's partition is SIGKILLed; the cluster promotes its replica,
//! the killed node is restarted (it rejoins as the new master's replica, so confirms with
//! `replicas=1` are possible again) and the flood goes on a little. Then, at rest:
//!
//! - every purchase answered 202 ends as exactly one outcome (the auditor's "no lost
//!   purchase"; one outcome per ticket is the table's key), and the other invariants hold in
//!   the database;
//! - no order exists that the gateway did not hand out a ticket for (a purchase refused for
//!   certain never became an order);
//! - purchases answered `503 outcome_unknown` may or may not have become orders; the units
//!   the gateway kept for those that did not are given back by its reconciliation at rest,
//!   after which the stock store agrees with the database (the auditor's conservation
//!   check with the store) — what the README says the system does about a lost write.
//!
//! Real time, bounded waits (each names what it waited for), < 60 s in all.

mod support;

use std::time::{Duration, Instant};

use order_worker::purchase::ORDERS_TOPIC;
use redis_kit::RedisCluster;
use support::flood::{self, Buyers, wait_for};

/// Purchases accepted before the kill.
const ACCEPTED_BEFORE_KILL: u64 = 200;
/// How long the flood may take to reach [`ACCEPTED_BEFORE_KILL`].
const WARMUP_WAIT: Duration = Duration::from_secs(15);
/// How long the cluster may take to promote the killed master's replica.
const FAILOVER_WAIT: Duration = Duration::from_secs(15);
/// How long the restarted node may take to rejoin as a replica.
const REJOIN_WAIT: Duration = Duration::from_secs(15);
/// Purchases that must be accepted after the rejoin (the system recovered), and how long
/// the flood may take to get them.
const ACCEPTED_AFTER_REJOIN: u64 = 50;
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// The whole test's bound.
const TEST_MAX: Duration = Duration::from_secs(60);

/// The position (in [`RedisCluster::masters`]) and node index of the master that holds
/// `key`: the one that answers `EXISTS` instead of redirecting with MOVED.
fn master_holding(cluster: &RedisCluster, key: &str) -> (usize, usize) {
    let masters = cluster.masters().expect("the masters");
    for (position, &node) in masters.iter().enumerate() {
        if cluster.nodes()[node].cmd(&["EXISTS", key]).is_ok() {
            return (position, node);
        }
    }
    panic!("no master of {masters:?} holds {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_purchase_survives_a_master_failover_as_exactly_one_outcome() {
    let began = Instant::now();
    let Some(mut cluster) =
        support::start_redis("a scratch Redis Cluster (3 masters + 3 replicas)", || {
            RedisCluster::start(3, 1)
        })
        .await
    else {
        return;
    };
    eprintln!("cluster up after {:?}", began.elapsed());
    let dir = tempfile::tempdir().expect("tempdir");
    let system = flood::start_system(dir.path(), format!("{}?replicas=1", cluster.url())).await;

    let buyers = Buyers::start(&system);
    let f = buyers.flood.clone();
    wait_for(
        "purchases accepted before the kill",
        WARMUP_WAIT,
        async || (f.accepted() >= ACCEPTED_BEFORE_KILL, f.accepted()),
    )
    .await;

    // The orders topic's only partition, and the master that holds it.
    let key = support::stream_key(ORDERS_TOPIC, 0);
    let (position, node) = tokio::task::block_in_place(|| master_holding(&cluster, &key));
    let at_kill = f.accepted();
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_master(position)).expect("SIGKILL the master");
    eprintln!(
        "killed node {node} (holds {key}) with {at_kill} accepted, {:?} in",
        began.elapsed()
    );
    let failover = tokio::task::block_in_place(|| cluster.failover_and_wait(FAILOVER_WAIT))
        .expect("the cluster fails over");
    let at_failover = f.accepted();
    eprintln!(
        "failover {failover:?} {:?} after the kill; accepted meanwhile: {}",
        killed_at.elapsed(),
        at_failover - at_kill
    );
    // The killed node comes back and rejoins as the new master's replica, so that
    // `replicas=1` confirms are possible again.
    tokio::task::block_in_place(|| {
        cluster
            .node_mut(node)
            .expect("the killed node")
            .restart()
            .expect("restart the killed node");
        cluster.wait_healthy(REJOIN_WAIT)
    })
    .expect("the restarted node rejoins");
    let rejoined = f.accepted();
    eprintln!(
        "node {node} rejoined {:?} after the kill; accepted meanwhile: {}",
        killed_at.elapsed(),
        rejoined - at_failover
    );
    wait_for(
        "purchases accepted again after the rejoin",
        RECOVERY_WAIT,
        async || {
            let n = f.accepted() - rejoined;
            (n >= ACCEPTED_AFTER_REJOIN, n)
        },
    )
    .await;
    let flood = buyers.stop().await;
    eprintln!(
        "flood over after {:?}; answers {:?}",
        began.elapsed(),
        flood.answers()
    );

    flood::settle_and_audit(&system, &flood, began).await;
    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
    drop(cluster);
    assert!(
        began.elapsed() < TEST_MAX,
        "the failover test took {:?}",
        began.elapsed()
    );
}
