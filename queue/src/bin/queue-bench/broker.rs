//! The broker side of the side-by-side benchmark: our broker in its own process (this
//! binary re-executed with `--serve-broker`), driven over loopback TCP by clients in this
//! process exactly as `redis_streams.rs` drives Redis: the same producer tasks, the same
//! messages per round trip, the same consumers and fetch batches.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use queue::{Client, ClientConfig, Delivery, FetchOptions, Message, Queue, StartAt};

use super::{BoxError, Res, err};

/// How the broker is driven.
#[derive(Debug, Clone)]
pub struct BrokerParams {
    /// Payload bytes of every message.
    pub message_bytes: usize,
    /// Concurrent producer tasks, each with its own connection.
    pub producers: usize,
    /// Messages per round trip: one `publish_batch` frame, or this many `publish` frames
    /// written together (see `single_frames`).
    pub pipeline: usize,
    /// Measured seconds of the publish phase (after `warmup_secs`).
    pub publish_secs: f64,
    /// Warm-up before the measured window.
    pub warmup_secs: f64,
    /// Send each message as its own `publish` frame (pipelined) instead of one batch frame.
    pub single_frames: bool,
    /// Concurrent consumer tasks, each with its own connection.
    pub consumers: usize,
    /// Messages per fetch (and per ack).
    pub fetch_batch: usize,
    /// Messages to consume + ack.
    pub consume_messages: u64,
    /// Where the broker keeps its data (a real disk).
    pub dir: PathBuf,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BrokerFigures {
    /// Confirmed messages per second in the measured window.
    pub publish_msgs_per_s: f64,
    /// Round-trip confirm latency (one per round trip).
    pub confirm: Histogram<u64>,
    /// Consumed + acked messages per second.
    pub consume_ack_msgs_per_s: f64,
    /// Messages confirmed in the window.
    pub published: u64,
    /// Messages acked.
    pub consumed: u64,
}

/// The child broker process; killed when dropped.
struct BrokerProcess {
    child: Child,
    addr: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(dir: &Path) -> Res<BrokerProcess> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--serve-broker")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| err("broker has no stdout"))?;
    let mut proc = BrokerProcess {
        child,
        addr: String::new(),
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    proc.addr = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| err(format!("broker said {line:?}")))?
        .to_string();
    Ok(proc)
}

/// `--serve-broker DIR`: the broker process. Prints `listening ADDR`, serves until killed.
pub fn serve_broker(dir: &Path) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = Arc::new(queue::Engine::open(dir, queue::Config::default())?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let server = queue::Server::new(engine.clone(), queue::ServerConfig::default());
        server.run(listener, std::future::pending()).await;
        Ok::<(), BoxError>(())
    })
}

async fn client(addr: &str) -> Res<Client> {
    Ok(Client::connect(ClientConfig {
        connections: 1,
        ..ClientConfig::new(addr)
    })
    .await?)
}

/// Runs the publish phase, then the consume phase, against a fresh broker process.
pub async fn run(p: &BrokerParams) -> Res<BrokerFigures> {
    let broker = start_broker(&p.dir)?;
    let topic = "bench";
    let payload = Bytes::from(vec![b'x'; p.message_bytes]);
    let setup = client(&broker.addr).await?;
    setup.create_group(topic, "g", StartAt::Earliest).await?;

    let from = Instant::now() + Duration::from_secs_f64(p.warmup_secs);
    let until = from + Duration::from_secs_f64(p.publish_secs);
    let mut handles = Vec::new();
    for _ in 0..p.producers {
        let c = client(&broker.addr).await?;
        let payload = payload.clone();
        let p = p.clone();
        handles.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            let mut msgs = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let batch: Vec<Message> = (0..p.pipeline)
                    .map(|_| Message::new(payload.clone()))
                    .collect();
                let n = if p.single_frames {
                    let mut n = 0u64;
                    for r in c.publish_each(topic, batch).await? {
                        r?;
                        n += 1;
                    }
                    n
                } else {
                    c.publish_batch(topic, batch).await?.len() as u64
                };
                let t1 = Instant::now();
                if t0 >= from && t1 <= until {
                    msgs += n;
                    h.saturating_record(super::micros(t1 - t0));
                }
            }
            Ok::<_, BoxError>((msgs, h))
        }));
    }
    let mut published = 0;
    let mut confirm = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for h in handles {
        let (m, hist) = h.await??;
        published += m;
        confirm.add(&hist)?;
    }
    let publish_msgs_per_s = published as f64 / p.publish_secs;

    // Consume what was published (at most consume_messages).
    let stats = setup.stats(topic).await?;
    let target = p.consume_messages.min(stats.next_offset);
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..p.consumers {
        let c = client(&broker.addr).await?;
        let acked = acked.clone();
        let batch = p.fetch_batch;
        let payload_len = p.message_bytes;
        handles.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < target {
                let ds = c
                    .fetch(
                        topic,
                        "g",
                        FetchOptions {
                            max_messages: batch,
                            lease_ms: Some(600_000),
                            wait_ms: 100,
                        },
                    )
                    .await?;
                if ds.is_empty() {
                    continue;
                }
                let receipts: Vec<_> = ds.iter().map(Delivery::receipt).collect();
                let outcomes = c.ack(topic, "g", &receipts).await?;
                if outcomes.iter().any(|o| *o != queue::AckOutcome::Acked) {
                    return Err(err(format!("an ack was not Acked: {outcomes:?}")));
                }
                if ds.iter().any(|d| d.payload.len() != payload_len) {
                    return Err(err("a delivery's payload has the wrong length"));
                }
                acked.fetch_add(receipts.len() as u64, Ordering::Relaxed);
                if start.elapsed() > Duration::from_secs(300) {
                    return Err(err("consume phase timed out"));
                }
            }
            Ok::<_, BoxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let consumed = acked.load(Ordering::Relaxed);
    // Every confirmed message is there, once.
    let after = setup.stats(topic).await?;
    if after.next_offset < published {
        return Err(err(format!(
            "{published} confirmed in the window but only {} stored",
            after.next_offset
        )));
    }
    drop(broker);
    Ok(BrokerFigures {
        publish_msgs_per_s,
        confirm,
        consume_ack_msgs_per_s: consumed as f64 / secs,
        published,
        consumed,
    })
}
