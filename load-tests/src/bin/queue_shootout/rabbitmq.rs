//! RabbitMQ at fsync-before-confirm: the machine's RabbitMQ (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), a durable quorum queue (`x-queue-type:
//! quorum`) of a fresh name, deleted at the end, and publisher confirms. A quorum queue
//! confirms a publish once its Raft log entry is written and fsynced by the Ra WAL (on this
//! single node: 1 replica). Messages are persistent (`delivery_mode` 2).
//!
//! Publish: one channel per publisher (in confirm mode), `basic.publish` awaiting its
//! confirm. Consume: one channel per consumer with `basic.qos(prefetch batch)` and
//! `basic.consume` (manual acks); a consumer acks with one `basic.ack(multiple)` once it
//! holds `batch` deliveries, or after 5 ms without a new one. AMQP acks have no reply, so an
//! ack counts as done once it is sent; at the end the consumer channels are closed (which
//! would requeue anything unacked) and the queue must be empty.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

use crate::common::{
    Publisher, Res, Seen, SystemRun, Workload, err, finish_consume, note, run_publish,
};
use crate::machine::Meter;

/// How long a consumer waits for another delivery before acking a partial batch.
const ACK_FLUSH: Duration = Duration::from_millis(5);
/// Persistent messages.
const DELIVERY_MODE_PERSISTENT: u8 = 2;

/// Where the broker is and how to find its process for the CPU figures.
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    pub url: String,
    pub pid_file: String,
}

struct RabbitPublisher {
    channel: Channel,
    queue: ShortString,
}

impl Publisher for RabbitPublisher {
    async fn publish(&mut self, payload: Bytes) -> Res<()> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(""),
                self.queue.clone(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(DELIVERY_MODE_PERSISTENT),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            return Err(err(format!("publish not confirmed: {confirm:?}")));
        }
        Ok(())
    }
}

/// Output of `rabbitmqctl eval EXPR` (best effort: `None` without rabbitmqctl or access).
async fn rabbitmqctl_eval(expr: &'static str) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .args(["--timeout", "10", "eval", expr])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().trim_matches('"').to_string())
    })
    .await
    .ok()
    .flatten()
}

fn server_pid(pid_file: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

async fn passive_count(channel: &Channel, queue: &ShortString) -> Res<(u32, u32)> {
    let q = channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((q.message_count(), q.consumer_count()))
}

pub async fn run(w: &Workload, opts: &RabbitOptions, meter: &Meter) -> Res<SystemRun> {
    let mut conns = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        let c = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&opts.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| err(format!("RabbitMQ at {} did not answer in 10 s", opts.url)))?
        .map_err(|e| err(format!("RabbitMQ at {} not reachable: {e}", opts.url)))?;
        conns.push(c);
    }
    let pid = server_pid(&opts.pid_file);
    let version = rabbitmqctl_eval("rabbit_misc:version().")
        .await
        .map(|v| format!("rabbitmq {v}"))
        .unwrap_or_else(|| "rabbitmq (version not read: rabbitmqctl unavailable)".into());
    let wal_sync = rabbitmqctl_eval("application:get_env(ra, wal_sync_method).").await;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let queue = ShortString::from(format!("queue-shootout-{}-{nanos}", std::process::id()));
    let admin = conns[0].create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    admin
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    note!(
        "rabbitmq: {version} at {} (pid {pid:?}), quorum queue {queue}",
        opts.url
    );
    let result = measure(w, &conns, &admin, &queue, pid, meter).await;
    // Leave the shared broker as it was, whatever happened.
    let _ = admin
        .queue_delete(queue.clone(), QueueDeleteOptions::default())
        .await;
    for c in &conns {
        let _ = c.close(200, "bye".into()).await;
    }
    let (publish, publish_resources, consume, consume_resources, checks) = result?;
    let wal = match wal_sync.as_deref() {
        Some("undefined") => "ra wal_sync_method unset: Ra's default (datasync)".to_string(),
        Some(v) => format!("ra wal_sync_method {v}"),
        None => "ra wal_sync_method not read (rabbitmqctl unavailable)".to_string(),
    };
    Ok(SystemRun {
        version,
        durability: json!({
            "publish": format!(
                "quorum queue (x-queue-type quorum, durable, 1 replica on this single node), publisher confirms, delivery_mode 2: confirmed after the Raft WAL write is fsynced ({wal}, read with rabbitmqctl eval)"
            ),
            "ack": "basic.ack(multiple) per batch; AMQP acks are not confirmed to the client (the queue records the settlement in its Raft log)",
            "server": format!("the machine's RabbitMQ at {}, its data on the same disk as the others", "127.0.0.1:5672"),
        }),
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    })
}

type Measured = (
    crate::common::PublishFigures,
    serde_json::Value,
    crate::common::ConsumeFigures,
    serde_json::Value,
    Vec<String>,
);

async fn measure(
    w: &Workload,
    conns: &[Connection],
    admin: &Channel,
    queue: &ShortString,
    pid: Option<u32>,
    meter: &Meter,
) -> Res<Measured> {
    // Publish.
    let mut publishers = Vec::with_capacity(w.publishers);
    for i in 0..w.publishers {
        let channel = conns[i % conns.len()].create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publishers.push(RabbitPublisher {
            channel,
            queue: queue.clone(),
        });
    }
    let snap = meter.begin(pid);
    let publish = run_publish(w, publishers).await?;
    let publish_resources = meter.end(&snap, w.messages);
    let (ready, _) = passive_count(admin, queue).await?;
    if u64::from(ready) != w.messages {
        return Err(err(format!(
            "the queue holds {ready} messages after {} confirms",
            w.messages
        )));
    }
    let mut checks = vec![format!("after publish: queue message_count = {ready}")];

    // Consume + ack.
    let prefetch = u16::try_from(w.batch).map_err(|_| err("batch above 65535"))?;
    // Channels and their prefetch are set up before the clock starts; basic.consume is
    // part of the timed phase, since deliveries start as soon as it is issued.
    let mut channels = Vec::with_capacity(w.consumers);
    for i in 0..w.consumers {
        let channel = conns[i % conns.len()].create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        channels.push(channel);
    }
    let seen = Seen::new(w);
    let snap = meter.begin(pid);
    let mut handles = Vec::with_capacity(w.consumers);
    for (i, channel) in channels.iter().enumerate() {
        let channel = channel.clone();
        let queue = queue.clone();
        let seen = seen.clone();
        let batch = w.batch;
        handles.push(tokio::spawn(async move {
            let mut consumer = channel
                .basic_consume(
                    queue,
                    format!("c{i}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut held: Vec<lapin::message::Delivery> = Vec::with_capacity(batch);
            loop {
                if held.is_empty() && seen.done() {
                    break;
                }
                match tokio::time::timeout(ACK_FLUSH, consumer.next()).await {
                    Ok(Some(d)) => {
                        held.push(d?);
                        if held.len() < batch {
                            continue;
                        }
                    }
                    Ok(None) => return Err(err("the consumer was cancelled")),
                    Err(_) if held.is_empty() => continue,
                    Err(_) => {}
                }
                let last = held.last().map(|d| d.delivery_tag).unwrap_or_default();
                channel
                    .basic_ack(last, BasicAckOptions { multiple: true })
                    .await?;
                for d in held.drain(..) {
                    if d.redelivered {
                        seen.redelivered();
                    }
                    seen.acked(&d.data)?;
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
            "{} consumers, one channel each with basic.qos prefetch {} and basic.consume (manual ack); one basic.ack(multiple) per {} deliveries or after {} ms without one; acks are not confirmed by the server",
            w.consumers,
            w.batch,
            w.batch,
            ACK_FLUSH.as_millis()
        ),
    )
    .await?;
    let consume_resources = meter.end(&snap, w.messages);
    for ch in &channels {
        ch.close(200, "done".into()).await?;
    }
    let (ready, consumer_count) = passive_count(admin, queue).await?;
    if ready != 0 {
        return Err(err(format!(
            "{ready} messages back in the queue after closing the consumer channels"
        )));
    }
    checks.push(format!(
        "after consume and closing the consumer channels: queue message_count 0, consumers {consumer_count}"
    ));
    Ok((
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    ))
}
