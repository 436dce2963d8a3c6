//! A flood of purchases on an orders topic of three partitions (queue/REDIS.md, "Offsets"
//! and "Cluster and partitions": offsets `(partition << 48) | seq`, ordered only within a
//! partition, each partition worked through at its own pace).
//!
//! The all-in-one system (gateway, order workers, canceller; orders on SQLite, stock in
//! process) runs with its queue on a scratch standalone Redis (`redis-kit`, a free port,
//! never the shared 6379), `?partitions=3`. Distinct buyers purchase without pause; then, at
//! rest:
//!
//! - every 202's place in line is small: at most the purchases handed out (a gateway that
//!   measured every offset against partition 0's progress answered ~2.8e14 for the others);
//! - the gateway's ticket book forgets the tickets of every partition once the workers are
//!   done with it (one that forgot only below the smallest mark kept those of partitions 1
//!   and 2 for good, and once full answered `503 busy` forever);
//! - every purchase answered 202 ends as exactly one outcome and the database's invariants
//!   hold (the auditor), no order exists without a ticket handed out, and the stock store
//!   agrees with the database;
//! - the purchases landed in all three partitions (each partition's counter took some, the
//!   counters add up to what the topic published) and the workers' group is done with each
//!   partition up to its end.
//!
//! Real time, bounded waits (each names what it waited for), < 60 s in all.

mod support;

use std::time::{Duration, Instant};

use gateway::tickets::{PARTITION_SHIFT, partition_of};
use order_worker::purchase::ORDERS_TOPIC;
use redis_kit::{RedisOptions, RedisServer};
use support::flood::{self, Buyers, wait_for};

/// Partitions of the orders topic.
const PARTITIONS: u32 = 3;
/// Purchases the flood must get accepted, and how long it may take.
const ACCEPTED: u64 = 600;
const FLOOD_WAIT: Duration = Duration::from_secs(20);
/// How long the gateway may take to forget the tickets at rest: its housekeeping reads the
/// workers' progress once a second.
const FORGET_WAIT: Duration = Duration::from_secs(5);
/// How long the workers may take to register the orders topic once the system is up.
const REGISTER_WAIT: Duration = Duration::from_secs(10);
/// The whole test's bound.
const TEST_MAX: Duration = Duration::from_secs(60);

/// The messages partition `p` of `topic` ever took (its `next` counter).
fn published_to(redis: &RedisServer, topic: &str, p: u32) -> u64 {
    let key = support::next_key(topic, p);
    let reply = redis
        .cmd(&["GET", &key])
        .expect("GET the partition's counter");
    reply
        .as_str()
        .map_or(0, |s| s.parse().expect("a counter is a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_on_three_partitions_get_small_places_in_line_and_leave_the_ticket_book() {
    let began = Instant::now();
    let Some(redis) =
        support::start_redis(
            "a scratch Redis",
            || RedisServer::start(RedisOptions::new()),
        )
        .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let system = flood::start_system(
        dir.path(),
        format!("{}?partitions={PARTITIONS}", redis.url()),
    )
    .await;
    // The orders topic is registered by whoever uses it first: the workers' first fetch,
    // in their own tasks, which may not have run yet when the sale is on.
    let registered = wait_for("the orders topic registered", REGISTER_WAIT, async || {
        let reply = tokio::task::block_in_place(|| {
            redis
                .cmd(&["HGET", &support::topics_key(), ORDERS_TOPIC])
                .expect("HGET the topic registry")
        });
        let partitions = reply.as_str().map(str::to_string);
        (partitions.is_some(), partitions)
    })
    .await;
    assert_eq!(
        registered.as_deref(),
        Some(PARTITIONS.to_string().as_str()),
        "the orders topic was created with {PARTITIONS} partitions"
    );

    let buyers = Buyers::start(&system);
    let f = buyers.flood.clone();
    wait_for("purchases accepted", FLOOD_WAIT, async || {
        (f.accepted() >= ACCEPTED, f.accepted())
    })
    .await;
    let flood = buyers.stop().await;
    let accepted = flood.accepted();
    let handed_out = accepted + flood.tickets_of(flood::Answer::Unknown).len() as u64;
    eprintln!(
        "flood over after {:?}; answers {:?}; largest place in line {} ({} left out)",
        began.elapsed(),
        flood.answers(),
        flood.position_max(),
        flood.positions_missing()
    );
    // Places in line, counted within each purchase's own partition.
    assert!(
        flood.positions_missing() < accepted,
        "no 202 gave a place in line"
    );
    assert!(
        (1..=handed_out).contains(&flood.position_max()),
        "a 202 gave place {} in line with {handed_out} purchases handed out",
        flood.position_max()
    );

    flood::settle_and_audit(&system, &flood, began).await;

    // The book forgets the tickets of every partition (the housekeeping round after the
    // drain). TicketBook::len is the figure a full book refuses purchases by.
    let state = system.state.clone();
    wait_for(
        "the ticket book to forget every partition's tickets",
        FORGET_WAIT,
        async || (state.tickets.is_empty(), state.tickets.len()),
    )
    .await;
    eprintln!("ticket book empty after {:?}", began.elapsed());

    // The purchases landed in every partition, and the workers are done with each to its
    // end.
    let per_partition: Vec<u64> = tokio::task::block_in_place(|| {
        (0..PARTITIONS)
            .map(|p| published_to(&redis, ORDERS_TOPIC, p))
            .collect()
    });
    eprintln!("messages per partition: {per_partition:?}");
    assert!(
        per_partition.iter().all(|&n| n > 0),
        "a partition took no purchase: {per_partition:?}"
    );
    let stats = state
        .queue
        .stats(ORDERS_TOPIC)
        .await
        .expect("the orders topic's stats");
    assert_eq!(
        per_partition.iter().sum::<u64>(),
        stats.published,
        "{stats:?}"
    );
    assert!(stats.published >= accepted, "{stats:?}");
    let workers = stats
        .groups
        .iter()
        .find(|g| g.name == state.config.workers_group)
        .expect("the workers' group");
    let expected: Vec<u64> = per_partition
        .iter()
        .zip(0u64..)
        .map(|(&n, p)| (p << PARTITION_SHIFT) | n)
        .collect();
    assert_eq!(
        workers.partition_low_watermarks, expected,
        "each partition done to its end: {workers:?}"
    );
    let covered: Vec<u64> = workers
        .partition_low_watermarks
        .iter()
        .map(|&m| partition_of(m))
        .collect();
    assert_eq!(covered, (0..u64::from(PARTITIONS)).collect::<Vec<_>>());

    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
    drop(redis);
    assert!(
        began.elapsed() < TEST_MAX,
        "the partitions test took {:?}",
        began.elapsed()
    );
}
