//! Our queue on Redis Streams (`queue::streams::RedisQueue`) on a scratch `redis-server`
//! started and checked exactly as the raw Redis Streams system's (`redis_streams.rs`:
//! `appendonly yes`, `appendfsync always`, read back), and driven the same way:
//!
//! - the same client connections: one `RedisQueue` per connection (each multiplexes every
//!   call over one connection, as the raw side's `MultiplexedConnection`), publishers and
//!   consumers spread over them round-robin;
//! - publish: `RedisQueue::publish` of one message, awaited (one `EVALSHA` of the publish
//!   script; Redis replies after the fsync), against the raw side's one `XADD`; as
//!   `redis-queue-ids` every message carries its own producer id, so the script also looks
//!   the id up and stores it for the de-duplication window (`GET` + `SET … PX`);
//! - consume: `fetch(max batch, lease 10 min, no wait)` then one `ack` of all its receipts
//!   (one script each), against `XREADGROUP COUNT batch` + one `XACK`; an empty fetch
//!   pauses 1 ms, as the raw consumer's empty read does.
//!
//! The queues that publish and consume run no maintenance task of their own; one more (the
//! admin's: creates the group, reads the statistics) runs it at the default period, as one
//! process of the real system would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use queue::streams::{RedisConfig, RedisQueue, RedisTarget};
use queue::{AckOutcome, Config, Delivery, FetchOptions, Message, Queue, StartAt};
use serde_json::json;

use crate::common::{
    Publisher, Res, Seen, SystemRun, Workload, decode, err, finish_consume, run_publish,
};
use crate::machine::Meter;
use crate::redis_streams::{Checked, start_checked};

const TOPIC: &str = "shootout";
const GROUP: &str = "g";
/// Lease of a fetched message: longer than any phase, so nothing is redelivered by expiry.
const LEASE_MS: u64 = 600_000;
/// Pause after an empty fetch (as the raw Redis consumer's after an empty read).
const EMPTY_PAUSE: Duration = Duration::from_millis(1);

/// A queue on the scratch server at `url`; maintenance at the default period only for the
/// admin's (see the module documentation).
async fn open(url: &str, maintenance: bool) -> Res<RedisQueue> {
    let mut cfg =
        RedisConfig::from_config(RedisTarget::Standalone(url.to_string()), &Config::default());
    if !maintenance {
        cfg.maintenance_interval_ms = None;
    }
    Ok(RedisQueue::connect(cfg).await?)
}

/// A producer id per message number: unique, spread over the id space as tickets are.
fn id_of(seq: u64) -> u128 {
    // splitmix64's finaliser of the number in the high half, the number in the low half.
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (u128::from(z) << 64) | u128::from(seq)
}

struct QueuePublisher {
    q: Arc<RedisQueue>,
    /// Give every message its producer id (its number, mixed).
    ids: bool,
    messages: u64,
    message_bytes: usize,
}

impl Publisher for QueuePublisher {
    async fn publish(&mut self, payload: Bytes) -> Res<()> {
        let mut m = Message::new(payload);
        if self.ids {
            let seq = decode(&m.payload, self.message_bytes, self.messages)?;
            m = m.with_id(id_of(seq));
        }
        let c = self.q.publish(TOPIC, m).await?;
        if c.duplicate {
            return Err(err("a publish was confirmed as a duplicate"));
        }
        Ok(())
    }
}

/// Runs the system `redis-queue` (`ids` false) or `redis-queue-ids` (`ids` true).
pub async fn run(
    w: &Workload,
    redis_server: &str,
    base: &Path,
    meter: &Meter,
    ids: bool,
) -> Res<SystemRun> {
    let label = if ids {
        "redis-queue-ids"
    } else {
        "redis-queue"
    };
    let Checked {
        mut server,
        port,
        durability: server_durability,
        version,
        ..
    } = start_checked(redis_server, base, label).await?;
    let pid = server.pid();
    let url = format!("redis://127.0.0.1:{port}");
    // The backend's own start-up checks (appendonly, appendfsync always, noeviction, 7.0+)
    // run in `connect`.
    let admin = open(&url, true).await?;
    admin.create_group(TOPIC, GROUP, StartAt::Earliest).await?;
    let mut queues = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        queues.push(Arc::new(open(&url, false).await?));
    }
    let durability = json!({
        "publish": format!(
            "{}; one EVALSHA of the publish script per message{}",
            server_durability["publish"].as_str().unwrap_or_default(),
            if ids {
                ", which also looks up and stores the producer id (GET + SET PX, de-duplication window 10 min)"
            } else {
                " (no producer ids)"
            }
        ),
        "ack": "fetch and ack are one script each; their writes (XREADGROUP's XCLAIMs, leases, attempt counts, XACK) are fsynced before the reply",
        "server": server_durability["server"],
        "backend": "queue::streams::RedisQueue, RedisConfig::from_config(Standalone, &Config::default()); its start-up checks passed",
    });

    // Publish.
    let publishers = (0..w.publishers)
        .map(|i| QueuePublisher {
            q: queues[i % queues.len()].clone(),
            ids,
            messages: w.messages,
            message_bytes: w.message_bytes,
        })
        .collect();
    let snap = meter.begin(pid);
    let publish = run_publish(w, publishers).await?;
    let publish_resources = meter.end(&snap, w.messages);
    let stats = admin.stats(TOPIC).await?;
    if stats.next_offset != w.messages || stats.published != w.messages || stats.duplicates != 0 {
        return Err(err(format!(
            "{} confirmed but the topic holds {} (published {}, duplicates {})",
            w.messages, stats.next_offset, stats.published, stats.duplicates
        )));
    }
    let mut checks = vec![format!(
        "after publish: topic next_offset = published = {}, duplicates 0",
        stats.next_offset
    )];

    // Consume + ack.
    let seen = Seen::new(w);
    let snap = meter.begin(pid);
    let mut handles = Vec::with_capacity(w.consumers);
    for i in 0..w.consumers {
        let q = queues[i % queues.len()].clone();
        let seen = seen.clone();
        let batch = w.batch;
        handles.push(tokio::spawn(async move {
            while !seen.done() {
                let ds = q
                    .fetch(
                        TOPIC,
                        GROUP,
                        FetchOptions {
                            max_messages: batch,
                            lease_ms: Some(LEASE_MS),
                            wait_ms: 0,
                        },
                    )
                    .await?;
                if ds.is_empty() {
                    tokio::time::sleep(EMPTY_PAUSE).await;
                    continue;
                }
                let receipts: Vec<_> = ds.iter().map(Delivery::receipt).collect();
                let outcomes = q.ack(TOPIC, GROUP, &receipts).await?;
                if let Some(o) = outcomes.iter().find(|o| **o != AckOutcome::Acked) {
                    return Err(err(format!("an ack came back {o:?}")));
                }
                for d in &ds {
                    if d.attempt > 1 {
                        seen.redelivered();
                    }
                    seen.acked(&d.payload)?;
                }
            }
            Ok(())
        }));
    }
    let consume = finish_consume(
        w,
        &seen,
        handles,
        format!(
            "{} consumers, fetch(max_messages {}, no wait; 1 ms pause when empty) then one ack(all receipts) per fetch",
            w.consumers, w.batch
        ),
    )
    .await?;
    let consume_resources = meter.end(&snap, w.messages);
    let stats = admin.stats(TOPIC).await?;
    let group = stats
        .groups
        .iter()
        .find(|g| g.name == GROUP)
        .ok_or_else(|| err("the group is gone"))?;
    if group.lag != 0 || group.in_flight != 0 {
        return Err(err(format!(
            "after consume: group lag {} in flight {}",
            group.lag, group.in_flight
        )));
    }
    checks.push(format!(
        "after consume: group lag 0, in flight 0, acked {}",
        group.acked
    ));
    for q in &queues {
        q.close()?;
    }
    admin.close()?;
    drop((queues, admin));
    server.stop();
    Ok(SystemRun {
        version: format!("queue::streams::RedisQueue (this build) on {version}"),
        durability,
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    })
}
