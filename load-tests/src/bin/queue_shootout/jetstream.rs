//! NATS JetStream at fsync-before-confirm: a scratch `nats-server` of our own on free
//! loopback ports, configured with `jetstream { store_dir: <fresh dir>, sync_interval:
//! always }` (read back from its `/varz` as `sync_always: true`): every write to a file-
//! stored stream is fsynced before the server answers. The shared NATS on 4222 is not used:
//! it runs with JetStream's default sync (every 2 minutes) and offers no way to read its
//! settings back. `sync_interval` needs nats-server 2.10 or later; an older server refuses
//! the config, and the system is then reported as not measured.
//!
//! Stream: file storage, 1 replica, limits retention, subject `shootout`. Publish: a
//! JetStream publish awaiting its `PubAck`. Consume: one durable pull consumer with explicit
//! acks shared by all consumer tasks; each fetches up to `batch` messages (no wait), then
//! acks each with a double ack (the server confirms every ack), all of a batch at once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self as js, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    Publisher, Res, Seen, SystemRun, Workload, err, finish_consume, free_port, note, run_publish,
    wait_until,
};
use crate::machine::Meter;
use crate::scratch::{Scratch, fresh_dir};

const STREAM: &str = "SHOOTOUT";
const SUBJECT: &str = "shootout";
const CONSUMER: &str = "g";
/// Timeout of JetStream API requests and of publish and ack confirms.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the scratch server; returns it, its client port and its monitoring port.
fn start(nats_server: &str, base: &Path) -> Res<(Scratch, u16, u16)> {
    let dir = fresh_dir(base, "nats")?;
    let (port, http) = (free_port()?, free_port()?);
    let store = dir.join("js");
    let config = format!(
        "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
        store.display().to_string()
    );
    let path = dir.join("nats.conf");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(nats_server);
    cmd.arg("-c").arg(&path);
    Ok((Scratch::spawn("nats", dir, cmd)?, port, http))
}

/// `GET /varz` of the monitoring port, as JSON.
async fn varz(http: u16) -> Res<Value> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http)).await?;
    s.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| err("GET /varz timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| err("GET /varz: no body"))?;
    Ok(serde_json::from_str(body)?)
}

struct NatsPublisher {
    ctx: Context,
}

impl Publisher for NatsPublisher {
    async fn publish(&mut self, payload: Bytes) -> Res<()> {
        let ack = self.ctx.publish(SUBJECT, payload).await?.await?;
        if ack.duplicate {
            return Err(err("a publish was acknowledged as a duplicate"));
        }
        Ok(())
    }
}

async fn connect(port: u16) -> Res<(async_nats::Client, Context)> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(TIMEOUT))
        .connect(format!("127.0.0.1:{port}"))
        .await?;
    let ctx = ContextBuilder::new().timeout(TIMEOUT).build(client.clone());
    Ok((client, ctx))
}

pub async fn run(w: &Workload, nats_server: &str, base: &Path, meter: &Meter) -> Res<SystemRun> {
    let (mut server, port, http) = start(nats_server, base)?;
    let pid = server.pid();
    let varz = wait_until(Duration::from_secs(10), || {
        let exited = server.exited();
        async move {
            if let Some(status) = exited {
                return Err(err(format!("nats-server exited at startup ({status})")));
            }
            varz(http).await
        }
    })
    .await
    .map_err(|e| {
        err(format!(
            "{e} (nats-server {nats_server:?}; `sync_interval: always` needs 2.10+, pass --nats-server PATH)\n{}",
            server.tail()
        ))
    })?;
    let sync_always = varz["jetstream"]["config"]["sync_always"].as_bool();
    if sync_always != Some(true) {
        return Err(err(format!(
            "nats-server /varz says jetstream sync_always {sync_always:?}, not true"
        )));
    }
    let version = format!("nats-server {}", varz["version"].as_str().unwrap_or("?"));
    note!(
        "jetstream: scratch {version} on 127.0.0.1:{port} (pid {pid:?}), store in {}",
        server.dir.display()
    );

    let mut conns = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        conns.push(connect(port).await?);
    }
    let admin = conns[0].1.clone();
    let mut stream = admin
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    let cfg = stream.info().await?.config.clone();
    let durability = json!({
        "publish": format!(
            "server jetstream sync_interval: always (read back from /varz: sync_always {}): each message write is fsynced before the PubAck; stream storage {:?}, replicas {}, retention {:?}",
            sync_always.unwrap_or(false), cfg.storage, cfg.num_replicas, cfg.retention
        ),
        "ack": "explicit acks sent as double acks: the server confirms each ack",
        "server": format!("scratch nats-server ({nats_server}) on a free port, store on the same disk as the others"),
    });

    // Publish.
    let publishers = (0..w.publishers)
        .map(|i| NatsPublisher {
            ctx: conns[i % conns.len()].1.clone(),
        })
        .collect();
    let snap = meter.begin(pid);
    let publish = run_publish(w, publishers).await?;
    let publish_resources = meter.end(&snap, w.messages);
    let stored = stream.info().await?.state.messages;
    if stored != w.messages {
        return Err(err(format!(
            "the stream holds {stored} messages after {} PubAcks",
            w.messages
        )));
    }
    let mut checks = vec![format!("after publish: stream state.messages = {stored}")];

    // Consume + ack.
    let max_ack_pending = i64::try_from(w.consumers * w.batch * 2).unwrap_or(i64::MAX);
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(600),
            max_ack_pending,
            ..Default::default()
        })
        .await?;
    let mut consumers = Vec::with_capacity(w.consumers);
    for i in 0..w.consumers {
        let ctx = &conns[i % conns.len()].1;
        let c: PullConsumer = ctx.get_stream(STREAM).await?.get_consumer(CONSUMER).await?;
        consumers.push(c);
    }
    let seen = Seen::new(w);
    let snap = meter.begin(pid);
    let mut handles = Vec::with_capacity(w.consumers);
    for c in consumers {
        let seen = seen.clone();
        let batch = w.batch;
        handles.push(tokio::spawn(async move {
            while !seen.done() {
                let mut msgs = c.fetch().max_messages(batch).messages().await?;
                let mut got: Vec<js::Message> = Vec::with_capacity(batch);
                while let Some(m) = msgs.next().await {
                    got.push(m?);
                }
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                try_join_all(got.iter().map(|m| m.double_ack())).await?;
                for m in &got {
                    if m.info()?.delivered > 1 {
                        seen.redelivered();
                    }
                    seen.acked(&m.payload)?;
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
            "{} consumer tasks on one durable pull consumer (explicit acks, max_ack_pending {max_ack_pending}), fetch max_messages {} (no wait; 1 ms pause when empty), then a double ack of each message of the batch, concurrently",
            w.consumers, w.batch
        ),
    )
    .await?;
    let consume_resources = meter.end(&snap, w.messages);
    let info = consumer.info().await?;
    if info.num_ack_pending != 0 || info.num_pending != 0 {
        return Err(err(format!(
            "after consume: consumer ack pending {}, pending {}",
            info.num_ack_pending, info.num_pending
        )));
    }
    checks.push(format!(
        "after consume: consumer num_ack_pending 0, num_pending 0, num_redelivered {}",
        info.num_redelivered
    ));
    drop(conns);
    server.stop();
    Ok(SystemRun {
        version,
        durability,
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    })
}
