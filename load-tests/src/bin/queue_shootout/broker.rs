//! Our broker: `queue::Server` over a fresh directory with `queue::Config::default()`
//! (fsync before confirm), in a process of its own (this binary re-run with
//! `--serve-broker DIR`, like the other systems' servers), driven through `queue::Client`.
//!
//! Publish: `Client::publish` of one message, awaited (the broker confirms after the
//! record's fsync). Consume: `fetch(max batch)` then one `ack` of all its receipts (the
//! broker answers the ack once it is fsynced).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use queue::{AckOutcome, Client, ClientConfig, Delivery, FetchOptions, Message, Queue, StartAt};
use serde_json::json;

use crate::common::{
    Publisher, Res, Seen, SystemRun, Workload, err, finish_consume, note, run_publish, wait_until,
};
use crate::machine::Meter;
use crate::scratch::{Scratch, fresh_dir};

const TOPIC: &str = "shootout";
const GROUP: &str = "g";
/// Lease of a fetched message: longer than any phase, so nothing is redelivered by expiry.
const LEASE_MS: u64 = 600_000;
/// How long an empty fetch waits for a message.
const FETCH_WAIT_MS: u64 = 20;

/// `--serve-broker DIR`: the broker process. Prints `listening ADDR`, serves until killed.
/// `preallocate_bytes` and `commit_gather` are the engine's, the rest its default config.
pub fn serve(dir: &Path, preallocate_bytes: u64, commit_gather: bool) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = queue::Config {
            preallocate_bytes,
            commit_gather,
            ..queue::Config::default()
        };
        let engine = Arc::new(queue::Engine::open(dir, config)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        {
            use std::io::Write as _;
            let mut out = std::io::stdout();
            writeln!(out, "listening {}", listener.local_addr()?)?;
            out.flush()?;
        }
        let server = queue::Server::new(engine, queue::ServerConfig::default());
        server.run(listener, std::future::pending()).await;
        Ok(())
    })
}

struct BrokerPublisher {
    client: Arc<Client>,
}

impl Publisher for BrokerPublisher {
    async fn publish(&mut self, payload: Bytes) -> Res<()> {
        let c = self.client.publish(TOPIC, Message::new(payload)).await?;
        if c.duplicate {
            return Err(err("a publish was confirmed as a duplicate"));
        }
        Ok(())
    }
}

/// Starts the broker process over a fresh directory under `base` and waits for its address.
async fn start(w: &Workload, base: &Path) -> Res<(Scratch, String)> {
    let dir = fresh_dir(base, "broker")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve-broker").arg(dir.join("data"));
    cmd.arg("--broker-preallocate-bytes")
        .arg(w.broker_preallocate_bytes.to_string())
        .arg("--broker-commit-gather")
        .arg(w.broker_commit_gather.to_string());
    let mut server = Scratch::spawn("broker", dir, cmd)?;
    let addr = wait_until(Duration::from_secs(10), || {
        let out = server.stdout();
        let exited = server.exited();
        async move {
            if let Some(status) = exited {
                return Err(err(format!("broker exited at startup ({status})")));
            }
            out.lines()
                .find_map(|l| l.strip_prefix("listening "))
                .map(|a| a.trim().to_string())
                .ok_or_else(|| err("broker did not say where it listens within 10 s"))
        }
    })
    .await
    .map_err(|e| err(format!("{e}\n{}", server.tail())))?;
    Ok((server, addr))
}

async fn connect(addr: &str) -> Res<Arc<Client>> {
    Ok(Arc::new(
        Client::connect(ClientConfig {
            connections: 1,
            request_timeout_ms: 120_000,
            ..ClientConfig::new(addr)
        })
        .await?,
    ))
}

/// Runs the workload on a broker of our own, or on the one listening at `external` (a
/// profiling aid: a broker started under a profiler; its topic must be new).
pub async fn run(
    w: &Workload,
    base: &Path,
    meter: &Meter,
    external: Option<&str>,
) -> Res<SystemRun> {
    let (mut server, addr) = match external {
        Some(addr) => (None, addr.to_string()),
        None => {
            let (server, addr) = start(w, base).await?;
            (Some(server), addr)
        }
    };
    let pid = server.as_ref().and_then(Scratch::pid);
    match &server {
        Some(s) => note!(
            "broker: queue::Server on {addr} (pid {pid:?}), data in {}",
            s.dir.display()
        ),
        None => note!("broker: the broker already listening on {addr} (its CPU is not measured)"),
    }
    let mut clients = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        clients.push(connect(&addr).await?);
    }
    let admin = &clients[0];
    admin.create_group(TOPIC, GROUP, StartAt::Earliest).await?;
    let config = queue::Config::default();
    let durability = json!({
        "publish": format!(
            "{} (queue::Config::default(): the record is written and fdatasync'ed before the confirm; concurrent publishes share one fsync, commit_gather {}; segments zero-filled ahead by preallocate_bytes {})",
            config.durability, w.broker_commit_gather, w.broker_preallocate_bytes
        ),
        "ack": "durable: the ack record is fsynced before the ack reply",
        "server": "queue::Server, ServerConfig::default(), its own process, data on the same disk as the others",
    });

    // Publish.
    let publishers = (0..w.publishers)
        .map(|i| BrokerPublisher {
            client: clients[i % clients.len()].clone(),
        })
        .collect();
    let snap = meter.begin(pid);
    let publish = run_publish(w, publishers).await?;
    let publish_resources = meter.end(&snap, w.messages);
    let stats = admin.stats(TOPIC).await?;
    if stats.next_offset != w.messages || stats.published != w.messages {
        return Err(err(format!(
            "{} confirmed but the topic holds {} (published {})",
            w.messages, stats.next_offset, stats.published
        )));
    }
    let mut checks = vec![format!(
        "after publish: topic next_offset = published = {}",
        stats.next_offset
    )];
    if w.publish_only {
        drop(clients);
        if let Some(s) = server.as_mut() {
            s.stop();
        }
        return Ok(SystemRun {
            version: "queue (this workspace's crate, this build)".into(),
            durability,
            publish,
            publish_resources,
            consume: crate::common::ConsumeFigures::skipped(),
            consume_resources: json!(null),
            checks,
        });
    }

    // Consume + ack.
    let seen = Seen::new(w);
    let snap = meter.begin(pid);
    let mut handles = Vec::with_capacity(w.consumers);
    for i in 0..w.consumers {
        let c = clients[i % clients.len()].clone();
        let seen = seen.clone();
        let batch = w.batch;
        handles.push(tokio::spawn(async move {
            while !seen.done() {
                let ds = c
                    .fetch(
                        TOPIC,
                        GROUP,
                        FetchOptions {
                            max_messages: batch,
                            lease_ms: Some(LEASE_MS),
                            wait_ms: FETCH_WAIT_MS,
                        },
                    )
                    .await?;
                if ds.is_empty() {
                    continue;
                }
                let receipts: Vec<_> = ds.iter().map(Delivery::receipt).collect();
                let outcomes = c.ack(TOPIC, GROUP, &receipts).await?;
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
            "{} consumers, fetch(max_messages {}) then one ack(all receipts) per fetch; the ack reply comes after its fsync",
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
    drop(clients);
    if let Some(s) = server.as_mut() {
        s.stop();
    }
    Ok(SystemRun {
        version: "queue (this workspace's crate, this build)".into(),
        durability,
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    })
}
