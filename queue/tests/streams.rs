//! What only the Redis Streams backend has: start-up checks on the server's settings,
//! `WAIT` for replicas and "outcome unknown", partitions spread over a Redis Cluster with
//! no CROSSSLOT, and retention that trims what every group finished and nothing pending.
//! The semantics it shares with the other backends are in the conformance suite
//! (`tests/it/conformance/`). Every test starts its own `redis-server` on a free port
//! (`redis-kit`), never the shared one on 6379.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use queue::streams::{RedisConfig, RedisQueue, RedisTarget};
use queue::{AckOutcome, Config, Error, FetchOptions, ManualClock, Message, Queue};
use redis_kit::{RedisCluster, RedisOptions, RedisServer};

const T0: u64 = 1_700_000_000_000;

fn server(options: RedisOptions) -> RedisServer {
    RedisServer::start(options).expect("redis-server starts (install Debian's redis-server)")
}

fn config(url: &str, clock: &ManualClock) -> RedisConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let target = if let Some(nodes) = url.strip_prefix("redis+cluster://") {
        RedisTarget::Cluster(nodes.split(',').map(|n| format!("redis://{n}")).collect())
    } else {
        RedisTarget::Standalone(url.to_string())
    };
    let mut c = RedisConfig::from_config(
        target,
        &Config {
            max_attempts: 3,
            lease_ms_default: 1_000,
            maintenance_interval_ms: None,
            ..Config::default()
        },
    );
    c.prefix = format!("st{}:", N.fetch_add(1, Ordering::Relaxed));
    c.clock = Some(Arc::new(clock.clone()));
    c
}

fn opts(n: usize) -> FetchOptions {
    FetchOptions {
        max_messages: n,
        lease_ms: Some(1_000),
        wait_ms: 0,
    }
}

#[tokio::test]
async fn servers_that_could_lose_an_acknowledged_message_are_refused() {
    let clock = ManualClock::new(T0);
    let cases = [
        (RedisOptions::new().appendonly(false), "appendonly"),
        (RedisOptions::new().appendfsync("everysec"), "appendfsync"),
        (
            RedisOptions::new().maxmemory_policy("allkeys-lru"),
            "maxmemory-policy",
        ),
        (
            RedisOptions::new().config_line("no-appendfsync-on-rewrite yes"),
            "no-appendfsync-on-rewrite",
        ),
    ];
    for (options, setting) in cases {
        let s = server(options);
        let err = RedisQueue::connect(config(&s.url(), &clock))
            .await
            .expect_err("a server that can lose messages is refused");
        let text = err.to_string();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(text.contains(setting), "{setting}: {text}");
        assert!(text.contains(&s.addr()), "names the server: {text}");
    }
    // `fsync=relaxed` accepts `everysec` explicitly, and nothing else changes.
    let s = server(RedisOptions::new().appendfsync("everysec"));
    let relaxed = RedisConfig::parse(&format!("{}?fsync=relaxed", s.url()), &Config::default())
        .expect("a redis target")
        .expect("valid options");
    assert!(!relaxed.fsync_always);
    RedisQueue::connect(relaxed)
        .await
        .expect("relaxed accepts everysec");
    // Unknown options and bad values are refused clearly.
    for bad in [
        "?replicas=x",
        "?partitions=0",
        "?colour=blue",
        "?fsync=never",
    ] {
        let r = RedisConfig::parse(&format!("{}{bad}", s.url()), &Config::default())
            .expect("a redis target");
        assert!(matches!(r, Err(Error::Invalid(_))), "{bad}: {r:?}");
    }
}

#[tokio::test]
async fn a_publish_short_of_replicas_is_outcome_unknown_and_its_retry_is_deduplicated() {
    let clock = ManualClock::new(T0);
    let primary = server(RedisOptions::new());
    let mut c = config(&primary.url(), &clock);
    c.replicas = 1;
    c.replica_timeout_ms = 100;
    let q = RedisQueue::connect(c).await.expect("connect");
    let err = q
        .publish("orders", Message::new("p").with_id(42))
        .await
        .expect_err("no replica: the outcome is unknown");
    assert!(
        matches!(&err, Error::Connection(m) if m.contains("outcome unknown")),
        "{err:?}"
    );
    // A replica catches up; the caller's retry with the same id confirms the first copy.
    let (host, port) = primary
        .addr()
        .split_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().expect("port")))
        .expect("addr");
    let replica = server(RedisOptions::new().replica_of(&host, port));
    // A replica named as the target is refused: every publish to it would fail.
    let err = RedisQueue::connect(config(&replica.url(), &clock))
        .await
        .expect_err("a replica is not a queue target");
    assert!(err.to_string().contains("replica"), "{err}");
    let mut confirm = None;
    for _ in 0..200 {
        match q.publish("orders", Message::new("p").with_id(42)).await {
            Ok(c) => {
                confirm = Some(c);
                break;
            }
            Err(Error::Connection(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let confirm = confirm.expect("the replica acknowledges within 200 tries of 100 ms");
    assert_eq!(confirm.offset, 0);
    assert!(
        confirm.duplicate,
        "the retry is the first copy, not a second message"
    );
    let got = q.fetch("orders", "g", opts(10)).await.expect("fetch");
    assert_eq!(got.len(), 1, "exactly one message stored: {got:?}");
}

#[tokio::test]
async fn partitions_spread_over_a_cluster_and_every_operation_stays_on_one_slot() {
    let mut cluster = RedisCluster::start(3, 1).expect("a 3+3 cluster starts");
    let clock = ManualClock::new(T0);
    let mut c = config(&cluster.url(), &clock);
    c.partitions = 6;
    let q = RedisQueue::connect(c)
        .await
        .expect("connect to the cluster");
    // One node of it named as a standalone target is refused.
    let node = cluster.nodes()[0].url();
    let err = RedisQueue::connect(config(&node, &clock))
        .await
        .expect_err("a cluster node is not a standalone target");
    assert!(err.to_string().contains("Cluster node"), "{err}");
    // A batch whose ids belong to different partitions is refused whole: a later publish of
    // one of them alone would miss its de-duplication entry.
    let err = q
        .publish_batch(
            "orders",
            vec![Message::new("a").with_id(6), Message::new("b").with_id(7)],
        )
        .await
        .expect_err("ids of two partitions");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let mut offsets = std::collections::BTreeSet::new();
    for i in 0..300u128 {
        let c = q
            .publish("orders", Message::new(format!("m{i}")).with_id(1000 + i))
            .await
            .expect("publish");
        assert!(!c.duplicate);
        offsets.insert(c.offset);
    }
    let partitions: std::collections::BTreeSet<u64> = offsets.iter().map(|o| o >> 48).collect();
    assert_eq!(partitions.len(), 6, "ids spread over every partition");
    // A retry lands on the partition of its first copy.
    let again = q
        .publish("orders", Message::new("m7").with_id(1007))
        .await
        .expect("retry");
    assert!(again.duplicate && offsets.contains(&again.offset));
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let got = q.fetch("orders", "workers", opts(64)).await.expect("fetch");
        if got.is_empty() {
            break;
        }
        // One poison message per partition goes to the dead letters.
        let (poison, rest): (Vec<_>, Vec<_>) = got
            .into_iter()
            .partition(|d| d.offset & 0xffff_ffff_ffff == 3);
        for d in &poison {
            assert_eq!(
                q.reject("orders", "workers", d.receipt(), "poison")
                    .await
                    .expect("reject"),
                AckOutcome::Acked
            );
        }
        let receipts: Vec<_> = rest.iter().map(|d| d.receipt()).collect();
        let out = q.ack("orders", "workers", &receipts).await.expect("ack");
        assert!(out.iter().all(|o| *o == AckOutcome::Acked), "{out:?}");
        for d in rest.iter().chain(&poison) {
            assert!(seen.insert(d.offset), "delivered twice: {}", d.offset);
        }
    }
    assert_eq!(seen, offsets, "every message delivered once");
    let dead = q
        .dead_letters("orders", 0, 100)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 6, "{dead:?}");
    let replayed = q
        .replay_dead_letter("orders", dead[5].dead_offset)
        .await
        .expect("replay on the last partition");
    assert_eq!(replayed >> 48, dead[5].dead_offset >> 48);
    let got = q.fetch("orders", "workers", opts(10)).await.expect("fetch");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].offset, got[0].attempt), (replayed, 1));
    q.ack("orders", "workers", &[got[0].receipt()])
        .await
        .expect("ack");
    q.tick().await.expect("maintenance on every partition");
    let stats = q.stats("orders").await.expect("stats");
    let g = &stats.groups[0];
    assert_eq!((g.lag, g.in_flight, g.acked), (0, 0, 295), "{stats:?}");
    // Progress per partition, each mark in its own partition's offsets.
    assert_eq!(g.partition_low_watermarks.len(), 6, "{g:?}");
    for (p, mark) in g.partition_low_watermarks.iter().enumerate() {
        assert_eq!(mark >> 48, p as u64, "{g:?}");
        assert!(
            mark & 0xffff_ffff_ffff > 0,
            "partition {p} made progress: {g:?}"
        );
        assert_eq!(g.low_watermark_for(*mark), *mark);
    }
    assert_eq!(stats.dead_letters_pending, 5);
    // A process that starts while a master is down, before the cluster has flagged it failed
    // (`cluster-node-timeout`), still starts: the dead node is skipped by the start-up
    // checks, not a reason to refuse.
    let killed = cluster.kill_master(0).expect("SIGKILL a master");
    let again = RedisQueue::connect(config(&cluster.url(), &clock))
        .await
        .unwrap_or_else(|e| panic!("connect with master {killed} down: {e}"));
    drop(again);
}

#[tokio::test]
async fn retention_trims_what_every_group_finished_and_keeps_every_pending_entry() {
    let s = server(RedisOptions::new());
    let clock = ManualClock::new(T0);
    let c = config(&s.url(), &clock);
    let prefix = c.prefix.clone();
    let q = RedisQueue::connect(c).await.expect("connect");
    for i in 0..100 {
        q.publish("t", Message::new(format!("{i}")))
            .await
            .expect("publish");
    }
    // Group a finishes everything but offset 10 (still leased); group b finishes 0..50.
    let a = q.fetch("t", "a", opts(100)).await.expect("fetch a");
    let keep = a[10].receipt();
    let done: Vec<_> = a
        .iter()
        .filter(|d| d.offset != 10)
        .map(|d| d.receipt())
        .collect();
    q.ack("t", "a", &done).await.expect("ack a");
    let b = q.fetch("t", "b", opts(50)).await.expect("fetch b");
    let r: Vec<_> = b.iter().map(|d| d.receipt()).collect();
    q.ack("t", "b", &r).await.expect("ack b");
    q.tick().await.expect("tick");
    let xlen = |s: &RedisServer| {
        s.cmd(&["XLEN", &format!("{prefix}{{t:0}}:s")])
            .expect("XLEN")
            .as_int()
            .expect("int")
    };
    assert_eq!(xlen(&s), 90, "trimmed below offset 10 (a's oldest pending)");
    q.ack("t", "a", &[keep]).await.expect("ack the last of a");
    q.tick().await.expect("tick");
    assert_eq!(xlen(&s), 50, "trimmed below offset 50 (b's read position)");
    let rest = q.fetch("t", "b", opts(100)).await.expect("fetch b");
    assert_eq!(
        rest.len(),
        50,
        "b still gets everything it has not finished"
    );
    assert_eq!(rest[0].offset, 50);
    let stats = q.stats("t").await.expect("stats");
    assert_eq!(stats.log_start, 50);
    // A discarded dead letter at the front of the dead-letter stream goes with the next
    // round; an unresolved one behind it stays.
    q.reject("t", "b", rest[0].receipt(), "poison")
        .await
        .expect("reject");
    q.reject("t", "b", rest[1].receipt(), "poison")
        .await
        .expect("reject");
    let dead = q.dead_letters("t", 0, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 2);
    q.discard_dead_letter("t", dead[0].dead_offset)
        .await
        .expect("discard");
    q.tick().await.expect("tick");
    let dl_len = s
        .cmd(&["XLEN", &format!("{prefix}{{t:0}}:dl")])
        .expect("XLEN")
        .as_int()
        .expect("int");
    assert_eq!(
        dl_len, 1,
        "the resolved dead letter was dropped, the pending one kept"
    );
    let left = q.dead_letters("t", 0, 10).await.expect("dead letters");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].dead_offset, dead[1].dead_offset);
    assert_eq!(q.stats("t").await.expect("stats").dead_letters_pending, 1);
    assert!(
        s.cmd(&["HGET", &format!("{prefix}{{t:0}}:g:b:n"), "lost"])
            .expect("HGET")
            .as_str()
            .is_none(),
        "no entry was ever missing under a pending list"
    );
}

#[tokio::test]
async fn on_the_servers_clock_a_delayed_message_is_never_early() {
    let s = server(RedisOptions::new());
    let clock = ManualClock::new(T0);
    let mut c = config(&s.url(), &clock);
    c.clock = None;
    let q = RedisQueue::connect(c).await.expect("connect");
    let sent = std::time::Instant::now();
    let confirm = q
        .publish("t", Message::new("later").with_due(queue::Due::After(300)))
        .await
        .expect("publish");
    let options = FetchOptions {
        max_messages: 1,
        lease_ms: Some(1_000),
        wait_ms: 5_000,
    };
    let got = q.fetch("t", "g", options).await.expect("fetch");
    assert_eq!(got.len(), 1, "delivered within the wait");
    assert!(
        sent.elapsed() >= std::time::Duration::from_millis(300),
        "not before its due time: {:?}",
        sent.elapsed()
    );
    assert_eq!(got[0].offset, confirm.offset);
    let due = got[0]
        .due_ms
        .expect("a delayed message carries its due time");
    assert!(got[0].lease_until_ms >= due + 1_000, "{:?}", got[0]);
}

#[tokio::test]
async fn out_of_memory_refuses_a_publish_whole_and_stores_nothing_of_it() {
    let s = server(RedisOptions::new().config_line("maxmemory 3mb"));
    let clock = ManualClock::new(T0);
    let q = RedisQueue::connect(config(&s.url(), &clock))
        .await
        .expect("connect");
    let payload = vec![7u8; 16 * 1024];
    let mut stored = 0u64;
    let mut refused = None;
    for i in 0..2_000u128 {
        match q
            .publish("t", Message::new(payload.clone()).with_id(i + 1))
            .await
        {
            Ok(c) => {
                assert_eq!(c.offset, stored, "offsets stay dense: nothing half-stored");
                stored += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("3 MB fill up before 2,000 messages of 16 KiB");
    assert!(matches!(e, Error::Full { .. }), "{e:?}");
    let stats = q.stats("t").await.expect("stats answer on a full Redis");
    assert_eq!(stats.published, stored);
    assert_eq!(stats.next_offset, stored);
    // A full Redis can still be drained: fetch and ack run, retention frees the memory,
    // and publishing works again.
    let mut drained = 0u64;
    loop {
        let got = q
            .fetch("t", "g", opts(50))
            .await
            .expect("fetch on a full Redis");
        if got.is_empty() {
            break;
        }
        let receipts: Vec<_> = got.iter().map(|d| d.receipt()).collect();
        let out = q
            .ack("t", "g", &receipts)
            .await
            .expect("ack on a full Redis");
        assert!(out.iter().all(|o| *o == AckOutcome::Acked));
        drained += got.len() as u64;
    }
    assert_eq!(drained, stored);
    q.tick().await.expect("retention on a full Redis");
    let again = q
        .publish("t", Message::new(payload.clone()).with_id(1_000_000))
        .await
        .expect("room again after the drain");
    assert_eq!(again.offset, stored);
}

#[tokio::test]
async fn a_killed_and_restarted_redis_keeps_every_confirmed_message_and_the_client_reconnects() {
    let mut s = server(RedisOptions::new());
    let clock = ManualClock::new(T0);
    let q = RedisQueue::connect(config(&s.url(), &clock))
        .await
        .expect("connect");
    for i in 0..50u128 {
        q.publish("t", Message::new(format!("{i}")).with_id(i + 1))
            .await
            .expect("publish");
    }
    s.kill().expect("SIGKILL redis");
    let down = q
        .publish("t", Message::new("while down").with_id(999))
        .await;
    assert!(
        matches!(down, Err(Error::Connection(_))),
        "a publish to a dead Redis is outcome unknown: {down:?}"
    );
    s.restart().expect("restart on the same port and AOF");
    // The client reconnects by itself; the caller retries with the same id.
    let mut again = None;
    for _ in 0..100 {
        match q
            .publish("t", Message::new("while down").with_id(999))
            .await
        {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(Error::Connection(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let again = again.expect("reconnected within 100 tries");
    assert_eq!(again.offset, 50, "nothing lost, nothing doubled");
    let got = q.fetch("t", "g", opts(100)).await.expect("fetch");
    assert_eq!(
        got.len(),
        51,
        "every confirmed message survived the SIGKILL"
    );
}

#[tokio::test]
async fn concurrent_creators_never_pass_the_topic_limit() {
    let s = server(RedisOptions::new());
    let clock = ManualClock::new(T0);
    let c = config(&s.url(), &clock);
    let prefix = c.prefix.clone();
    let q = Arc::new(RedisQueue::connect(c).await.expect("connect"));
    // A topic and its dead-letter topic count as two: room for TOPICS_MAX / 2 topics.
    let room = queue::limits::TOPICS_MAX / 2;
    let tasks: Vec<_> = (0..room + 100)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.publish(&format!("t{i}"), Message::new("x")).await })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(Error::Limit { what: "topics", .. }) => limited += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, limited), (room, 100));
    let registered = s
        .cmd(&["HLEN", &format!("{prefix}topics")])
        .expect("HLEN")
        .as_int()
        .expect("int");
    assert_eq!(registered, room as i64);
}
