//! A standalone Redis crash under a flood of purchases (issue 15, "crashes and failover").
//!
//! The all-in-one system (gateway, order workers, canceller; orders on SQLite, stock in
//! process) runs with its queue on a scratch standalone Redis (`redis-kit`: `appendonly yes`,
//! `appendfsync always`, `noeviction`; never the shared 6379). Distinct buyers purchase
//! without pause while Redis is SIGKILLed; while it is down purchases are refused or
//! answered `503 outcome_unknown` (the gateway keeps their units: the publish may have
//! landed); then Redis is restarted on the same port and directory (its AOF, fsynced on
//! every write, brings back every confirmed publish) and the system must carry on:
//!
//! - purchases are accepted again within [`RECOVERY_WAIT`] of the restart, and the workers
//!   drain the queue;
//! - every purchase answered 202 ends as exactly one outcome and the database's invariants
//!   hold (the auditor); no order exists without a ticket handed out;
//! - the units kept for outcome-unknown purchases that never reached Redis are given back by
//!   the gateway's reconciliation at rest: the stock store agrees with the database again.
//!
//! This is the one place where an outcome-unknown purchase whose message was certainly not
//! stored (Redis was down) meets the reconciliation that the README promises settles it.
//! Real time, bounded waits, < 60 s.

mod support;

use std::time::{Duration, Instant};

use redis_kit::{RedisOptions, RedisServer};
use support::flood::{self, Buyers, wait_for};

/// Purchases accepted before the kill.
const ACCEPTED_BEFORE_KILL: u64 = 200;
/// How long the flood may take to reach [`ACCEPTED_BEFORE_KILL`].
const WARMUP_WAIT: Duration = Duration::from_secs(15);
/// Purchases answered (not accepted) while Redis is down before it is restarted, and how
/// long that may take (a purchase waits at most the purchase wait, 4 s, for its enqueue).
const ANSWERED_WHILE_DOWN: u64 = 16;
const DOWN_WAIT: Duration = Duration::from_secs(15);
/// Purchases that must be accepted after the restart (the system recovered), and how long
/// the flood may take to get them.
const ACCEPTED_AFTER_RESTART: u64 = 50;
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// The whole test's bound.
const TEST_MAX: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_carries_on_after_its_redis_restarts_and_settles_outcome_unknown_units() {
    let began = Instant::now();
    let Some(mut redis) =
        support::start_redis(
            "a scratch Redis",
            || RedisServer::start(RedisOptions::new()),
        )
        .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let system = flood::start_system(dir.path(), redis.url()).await;

    let buyers = Buyers::start(&system);
    let f = buyers.flood.clone();
    wait_for(
        "purchases accepted before the kill",
        WARMUP_WAIT,
        async || (f.accepted() >= ACCEPTED_BEFORE_KILL, f.accepted()),
    )
    .await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| redis.kill()).expect("SIGKILL Redis");
    let at_kill = f.accepted();
    let refused_at_kill = f.not_accepted.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "killed Redis with {at_kill} accepted, {:?} in",
        began.elapsed()
    );
    wait_for(
        "purchases answered while Redis is down",
        DOWN_WAIT,
        async || {
            let n = f.not_accepted.load(std::sync::atomic::Ordering::Relaxed) - refused_at_kill;
            (n >= ANSWERED_WHILE_DOWN, n)
        },
    )
    .await;
    tokio::task::block_in_place(|| redis.restart()).expect("restart Redis");
    let restarted = f.accepted();
    eprintln!(
        "Redis restarted {:?} after the kill; accepted meanwhile: {}; answers so far {:?}",
        killed_at.elapsed(),
        restarted - at_kill,
        f.answers()
    );
    let recovery = wait_for(
        "purchases accepted again after the restart",
        RECOVERY_WAIT,
        async || {
            let n = f.accepted() - restarted;
            (
                n >= ACCEPTED_AFTER_RESTART,
                (n, f.answers(), f.last_refusal()),
            )
        },
    )
    .await;
    let flood = buyers.stop().await;
    eprintln!(
        "flood over after {:?}; {} accepted after the restart; answers {:?}",
        began.elapsed(),
        recovery.0,
        flood.answers()
    );

    flood::settle_and_audit(&system, &flood, began).await;
    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
    drop(redis);
    assert!(
        began.elapsed() < TEST_MAX,
        "the restart test took {:?}",
        began.elapsed()
    );
}
