//! `queue`: the broker (`queue serve`) and the operator's command line (`stats`, `topics`,
//! `dlq list|replay|discard`, `peek`, plus `publish` and `consume` for scripts and tests)
//! against a running broker (`--broker HOST:PORT`), the queue on Redis Streams
//! (`--broker redis://…`) or an embedded queue directory no process holds (`--dir
//! data/queue`: the engine opened here, its lock taken, no maintenance run). Output is for
//! people; `--json` prints JSON instead. Every address and target is checked before
//! anything is opened or created. Logic lives in the library (`queue::server`,
//! `queue::client`, `queue::engine`); this file parses arguments and formats output.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use queue::metrics::MetricsSource;
use queue::{
    Backend, Client, ClientConfig, Config, DLQ_SUFFIX, DeadLetter, Delivery, Due, Durability,
    Engine, FetchOptions, Message, Peeked, Queue, Secret, Server, ServerConfig, TopicStats,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The gateway's purchases topic (`order_worker::purchase::ORDERS_TOPIC`; the queue crate
/// knows no purchase, so the name is repeated here): `dlq discard` on it needs `--force`.
const PURCHASES_TOPIC: &str = "orders";

#[derive(Parser, Debug)]
#[command(
    name = "queue",
    version,
    about = "The flash-sale durable queue: broker and operator CLI"
)]
struct Cli {
    /// What the client commands talk to: a broker address (`HOST:PORT` or
    /// `tcp://HOST:PORT`), or the queue on Redis (`redis://HOST:PORT`,
    /// `redis+cluster://HOST:PORT,HOST:PORT`, options after `?` as in queue/REDIS.md).
    #[arg(
        long,
        global = true,
        env = "QUEUE_BROKER",
        default_value = "127.0.0.1:7070",
        value_parser = broker_target
    )]
    broker: String,
    /// An embedded queue directory instead of a broker (e.g. `data/queue`, the gateway's
    /// default): opened here, so only while no gateway, order-worker or `queue serve` has
    /// it open (the engine locks its directory; a held lock is an error saying so).
    #[arg(long, global = true, env = "QUEUE_DIR", conflicts_with = "broker")]
    dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker: serve the queue in DATA over TCP until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Statistics of topics and their consumer groups (all user topics by default).
    Stats {
        /// Topics to show.
        topics: Vec<String>,
    },
    /// Names of all topics, dead-letter topics included.
    Topics,
    /// Dead letters: list, replay, discard.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Show retained messages without consuming them.
    Peek {
        /// Topic (a dead-letter topic shows its raw stored entries).
        topic: String,
        /// First offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most messages.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Publish messages (for scripts and tests); prints each confirm.
    Publish {
        /// Topic.
        topic: String,
        /// Payload (UTF-8).
        payload: String,
        /// Producer message id (de-duplicated by the broker).
        #[arg(long)]
        id: Option<u128>,
        /// Deliver no earlier than this many ms from now.
        #[arg(long)]
        delay_ms: Option<u64>,
    },
    /// Consume from a group, printing one JSON line per delivery (for scripts and tests).
    Consume {
        /// Topic.
        topic: String,
        /// Consumer group.
        group: String,
        /// Stop after this many deliveries (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Lease length in ms.
        #[arg(long)]
        lease_ms: Option<u64>,
        /// Messages per fetch.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Do not ack (leave the leases to expire), for tests of redelivery.
        #[arg(long)]
        no_ack: bool,
        /// Stop after a fetch that waited this long and got nothing (0: never).
        #[arg(long, default_value_t = 0)]
        idle_exit_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// List pending dead letters of TOPIC.
    List {
        /// The original topic (not `.dlq`).
        topic: String,
        /// First dead-letter offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish a dead letter again to its topic, for the group that gave up on it.
    Replay {
        /// The original topic.
        topic: String,
        /// Dead-letter offsets.
        #[arg(required = true)]
        offsets: Vec<u64>,
    },
    /// Drop dead letters. On the `orders` topic (the gateway's purchases) it needs
    /// `--force`: a purchase dropped here leaves its ticket without an answer and its unit
    /// held; the dashboard and `POST /admin/api/dead-letters/bulk` discard it and also record
    /// the ticket's `discarded` answer and release the unit.
    Discard {
        /// The original topic.
        topic: String,
        /// Dead-letter offsets.
        #[arg(required = true)]
        offsets: Vec<u64>,
        /// Drop dead letters of the `orders` topic anyway.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "QUEUE_DATA")]
    data: PathBuf,
    /// Address to accept clients on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "QUEUE_LISTEN", default_value = "127.0.0.1:7070",
          value_parser = queue::addr::listen_addr)]
    listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint (none if not given).
    #[arg(long, env = "QUEUE_METRICS", value_parser = queue::addr::listen_addr)]
    metrics: Option<SocketAddr>,
    /// Most open connections.
    #[arg(long, default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,
    /// Most requests in flight per connection.
    #[arg(long, default_value_t = ServerConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// Largest frame, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Close connections idle (nothing in flight) for this long.
    #[arg(long, default_value_t = ServerConfig::default().idle_timeout_ms)]
    idle_timeout_ms: u64,
    /// fsync at most every this many ms instead of before every confirm (a machine crash
    /// may then lose that much confirmed data). Default: fsync before confirm.
    #[arg(long)]
    fsync_interval_ms: Option<u64>,
    /// Default lease length of fetches that do not name one.
    #[arg(long, default_value_t = Config::default().lease_ms_default)]
    lease_ms: u64,
    /// Deliveries after which a message is dead-lettered.
    #[arg(long, default_value_t = Config::default().max_attempts)]
    max_attempts: u32,
    /// Repair corrupt segments on open (losing their tails) instead of refusing.
    #[arg(long)]
    repair: bool,
    /// Test-only fail point: `fsync-after:N` or `write-after:N` makes the writer's N+1-th
    /// segment fsync (or write) fail once (`queue::faults`). Inert unless set.
    #[arg(long, env = "QUEUE_FAIL_POINT", hide = true)]
    fail_point: Option<String>,
    /// File holding the shared secret clients must prove (at least 16 bytes; trailing
    /// whitespace is dropped). Or set QUEUE_SECRET to the secret itself. Without either the
    /// broker listens only on a loopback address.
    #[arg(long, env = "QUEUE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Most response bytes reserved by reads across all connections (the broker-wide
    /// reply budget).
    #[arg(long, default_value_t = ServerConfig::default().max_reply_bytes)]
    max_reply_bytes: usize,
    /// Most topics, dead-letter topics included (each topic has one).
    #[arg(long, default_value_t = SERVE_TOPICS_MAX)]
    max_topics: usize,
    /// Most topics clients may create per minute.
    #[arg(long, default_value_t = ServerConfig::default().topic_creations_per_minute)]
    topic_creations_per_minute: u32,
    /// Most retained bytes per topic before publishes fail with FULL.
    #[arg(long, default_value_t = Config::default().backlog_bytes_max)]
    backlog_bytes_max: u64,
}

/// `queue serve`'s default topic limit: 64 user topics and their dead-letter topics (the
/// system uses two), well under the engine's hard `TOPICS_MAX`.
const SERVE_TOPICS_MAX: usize = 128;

/// The secret of `queue serve`: `--secret-file` (or QUEUE_SECRET_FILE) or QUEUE_SECRET,
/// never a command-line value (visible in `ps`).
fn serve_secret(args: &ServeArgs) -> Result<Option<Secret>, BoxError> {
    let value = std::env::var_os(queue::auth::SECRET_ENV).filter(|v| !v.is_empty());
    Ok(match (&args.secret_file, value) {
        (Some(_), Some(_)) => {
            return Err(
                "both --secret-file (or QUEUE_SECRET_FILE) and QUEUE_SECRET are set; \
                        set one"
                    .into(),
            );
        }
        (Some(path), None) => Some(Secret::from_file(path)?),
        (None, Some(v)) => Some(Secret::new(v.into_encoded_bytes())?),
        (None, None) => None,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "queue: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "queue: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--broker`: `HOST:PORT`, `tcp://HOST:PORT` or a Redis target, checked before anything
/// connects (clap names the flag in the error).
fn broker_target(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.starts_with("redis://") || t.starts_with("redis+cluster://") {
        return queue::addr::check_target(t);
    }
    queue::addr::broker_addr(t.strip_prefix(queue::backend::TCP_PREFIX).unwrap_or(t))?;
    Ok(t.to_string())
}

/// The queue the client commands use, and the engine to close after them when it is an
/// embedded directory.
type Target = (Arc<dyn Queue>, Option<Arc<Engine>>);

/// The queue the client commands use: the engine in `--dir`, else a Redis target through
/// `Backend::open` (the operator CLI runs no maintenance of its own), else a broker with
/// one connection.
async fn connect(target: &str, dir: Option<&Path>) -> Result<Target, BoxError> {
    if let Some(dir) = dir {
        let engine = Arc::new(open_dir(dir)?);
        return Ok((engine.clone(), Some(engine)));
    }
    let t = target.trim();
    if t.starts_with("redis://") || t.starts_with("redis+cluster://") {
        let config = Config {
            maintenance_interval_ms: None,
            ..Config::default()
        };
        return Ok((Backend::open(t, config).await?.queue(), None));
    }
    let addr = t.strip_prefix(queue::backend::TCP_PREFIX).unwrap_or(t);
    // The broker's secret, if it has one, from QUEUE_SECRET or QUEUE_SECRET_FILE.
    let client = Client::connect(ClientConfig {
        connections: 1,
        ..ClientConfig::from_env(addr.to_string())?
    })
    .await
    .map_err(|e| format!("broker {addr} (--broker): {e}"))?;
    Ok((Arc::new(client), None))
}

/// Opens the embedded queue in `dir` for an operator command: an existing queue directory
/// only (nothing is created), without the maintenance thread (no lease expiry, retention
/// or delay promotion runs while the command looks). The engine takes the directory's lock;
/// a process that holds it (a gateway with the embedded queue, an order-worker, `queue
/// serve`) makes this fail with an error that says so.
fn open_dir(dir: &Path) -> Result<Engine, BoxError> {
    if !dir.join("topics").is_dir() {
        return Err(format!(
            "{} (--dir) is not a queue directory (it has no topics/); the gateway's is \
             data/queue under the directory it runs in",
            dir.display()
        )
        .into());
    }
    let config = Config {
        maintenance_interval_ms: None,
        ..Config::default()
    };
    match Engine::open(dir, config) {
        Ok(engine) => Ok(engine),
        Err(queue::Error::Io { op, .. }) if op.starts_with("lock") => Err(format!(
            "{} (--dir) is in use by another process: a running gateway with the embedded \
             queue, an order-worker or `queue serve` holds its lock, and one process at a \
             time may open it. Stop that process first, or serve the directory with `queue \
             serve --data {}` and point the gateway, the workers and this command \
             (--broker) at the broker",
            dir.display(),
            dir.display()
        )
        .into()),
        Err(e) => Err(format!("{} (--dir): {e}", dir.display()).into()),
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let json = cli.json;
    let command = match cli.command {
        Command::Serve(args) => return serve(args).await,
        c => c,
    };
    let (client, engine) = connect(&cli.broker, cli.dir.as_deref()).await?;
    let result = operate(client.as_ref(), command, json).await;
    drop(client);
    if let Some(engine) = engine {
        // Writes nothing the command did not already make durable; releases the lock.
        engine.close()?;
    }
    result
}

/// One operator command against `client`.
async fn operate(client: &dyn Queue, command: Command, json: bool) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Serve(_) => {}
        Command::Stats { topics } => {
            let names = if topics.is_empty() {
                client
                    .topics()
                    .await?
                    .into_iter()
                    .filter(|t| !t.ends_with(DLQ_SUFFIX))
                    .collect()
            } else {
                topics
            };
            let mut all = Vec::new();
            for t in &names {
                all.push(client.stats(t).await?);
            }
            if json {
                writeln!(out, "{}", serde_json::to_string(&all)?)?;
            } else {
                for s in &all {
                    print_stats(&mut out, s)?;
                }
            }
        }
        Command::Topics => {
            let topics = client.topics().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&topics)?)?;
            } else {
                for t in topics {
                    writeln!(out, "{t}")?;
                }
            }
        }
        Command::Dlq { command } => dlq(client, command, json, &mut out).await?,
        Command::Peek { topic, from, limit } => {
            let msgs = client.peek(&topic, from, limit).await?;
            if json {
                let v: Vec<Value> = msgs.iter().map(peek_json).collect();
                writeln!(out, "{}", Value::Array(v))?;
            } else {
                print_peek(&mut out, &topic, &msgs)?;
            }
        }
        Command::Publish {
            topic,
            payload,
            id,
            delay_ms,
        } => {
            let mut m = Message::new(payload.into_bytes());
            m.id = id;
            if let Some(d) = delay_ms {
                m.due = Due::After(d);
            }
            let c = client.publish(&topic, m).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&c)?)?;
            } else {
                let dup = if c.duplicate { " (duplicate)" } else { "" };
                writeln!(out, "published to {topic} at offset {}{dup}", c.offset)?;
            }
        }
        Command::Consume {
            topic,
            group,
            count,
            lease_ms,
            batch,
            no_ack,
            idle_exit_ms,
        } => {
            let mut seen = 0u64;
            let wait_ms = if idle_exit_ms > 0 { idle_exit_ms } else { 1000 };
            loop {
                let options = FetchOptions {
                    max_messages: batch,
                    lease_ms,
                    wait_ms,
                };
                let ds = client.fetch(&topic, &group, options).await?;
                if ds.is_empty() && idle_exit_ms > 0 {
                    break;
                }
                for d in &ds {
                    writeln!(out, "{}", delivery_json(d))?;
                }
                // Printed before the ack, so a test that kills this process after reading
                // a line knows the message was delivered (and maybe not acked).
                out.flush()?;
                if !no_ack && !ds.is_empty() {
                    let receipts: Vec<_> = ds.iter().map(Delivery::receipt).collect();
                    client.ack(&topic, &group, &receipts).await?;
                }
                seen += ds.len() as u64;
                if count > 0 && seen >= count {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// `queue dlq list|replay|discard`.
async fn dlq(
    client: &dyn Queue,
    command: DlqCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<(), BoxError> {
    match command {
        DlqCommand::List { topic, from, limit } => {
            let dead = client.dead_letters(&topic, from, limit).await?;
            if json {
                let v: Vec<Value> = dead.iter().map(dead_json).collect();
                writeln!(out, "{}", Value::Array(v))?;
            } else {
                print_dead(out, &topic, &dead)?;
            }
        }
        DlqCommand::Replay { topic, offsets } => {
            let mut done = Vec::new();
            for o in offsets {
                let new_offset = client.replay_dead_letter(&topic, o).await?;
                done.push(json!({"dead_offset": o, "new_offset": new_offset}));
                if !json {
                    writeln!(
                        out,
                        "replayed dead letter {o} of {topic} as offset {new_offset}"
                    )?;
                }
            }
            if json {
                writeln!(out, "{}", Value::Array(done))?;
            }
        }
        DlqCommand::Discard {
            topic,
            offsets,
            force,
        } => {
            if topic == PURCHASES_TOPIC && !force {
                return Err(format!(
                    "dlq discard: the dead letters of {PURCHASES_TOPIC:?} are purchases whose tickets wait for an answer; discard them from the dashboard (/admin/dead-letters) or POST /admin/api/dead-letters/bulk, which also record the ticket's `discarded` answer and release its unit, or pass --force to drop them anyway"
                )
                .into());
            }
            for o in &offsets {
                client.discard_dead_letter(&topic, *o).await?;
                if !json {
                    writeln!(out, "discarded dead letter {o} of {topic}")?;
                }
            }
            if json {
                writeln!(out, "{}", json!({"discarded": offsets}))?;
            }
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let secret = serve_secret(&args)?;
    // Bound before the engine opens, so a refused address leaves nothing behind.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| queue::addr::bind_error("--listen", args.listen, &e))?;
    let addr: SocketAddr = listener.local_addr()?;
    let metrics_listener = match args.metrics {
        Some(m) => Some(
            TcpListener::bind(m)
                .await
                .map_err(|e| queue::addr::bind_error("--metrics", m, &e))?,
        ),
        None => None,
    };
    if secret.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without a secret: anyone who can reach it could \
             publish, ack and replay messages. Give the broker a secret of at least {} bytes \
             (--secret-file PATH, QUEUE_SECRET_FILE or QUEUE_SECRET; the clients need the \
             same), or listen on a loopback address",
            queue::limits::SECRET_BYTES_MIN
        )
        .into());
    }
    let auth = if secret.is_some() {
        "secret required"
    } else {
        "no secret, loopback only"
    };
    let mut config = Config {
        lease_ms_default: args.lease_ms,
        max_attempts: args.max_attempts,
        repair: args.repair,
        topics_max: args.max_topics,
        backlog_bytes_max: args.backlog_bytes_max,
        ..Config::default()
    };
    if let Some(interval_ms) = args.fsync_interval_ms {
        config.durability = Durability::Interval { interval_ms };
    }
    if let Some(spec) = &args.fail_point {
        let plan = queue::faults::FailAfter::parse(spec)?;
        let _ = writeln!(std::io::stderr(), "queue: fail point set: {spec}");
        config.storage_faults = Some(Arc::new(plan));
    }
    let durability = config.durability;
    let engine = Arc::new(Engine::open(&args.data, config)?);
    let server_config = ServerConfig {
        max_connections: args.max_connections,
        max_in_flight: args.max_in_flight,
        max_frame_bytes: args.max_frame_bytes,
        idle_timeout_ms: args.idle_timeout_ms,
        max_reply_bytes: args.max_reply_bytes,
        topic_creations_per_minute: args.topic_creations_per_minute,
        secret,
        ..ServerConfig::default()
    };
    let server = Server::new(engine.clone(), server_config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = match metrics_listener {
        Some(l) => {
            let maddr = l.local_addr()?;
            println!("queue: metrics on http://{maddr}/metrics");
            let source = MetricsSource {
                engine: engine.clone(),
                broker: server.metrics(),
            };
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(queue::metrics::serve(l, source, async move {
                let _ = rx.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    // Tests and scripts read this line to learn the port.
    println!(
        "queue: listening on {addr} (data {}, {durability}, {auth})",
        args.data.display()
    );
    let _ = std::io::stdout().flush();
    // A failed write or fsync stops the broker as a signal does, but it exits non-zero: the
    // engine refuses every request from then on, and a restart recovers what was confirmed.
    let failed = engine.clone();
    let stop = async move {
        tokio::select! {
            _ = queue::signal::shutdown_signal() => {}
            _ = failed.failed() => {}
        }
    };
    server.run(listener, stop).await;
    let _ = stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(e) = engine.failure() {
        let _ = engine.close();
        return Err(format!("stopped serving: {e}").into());
    }
    engine.close()?;
    println!("queue: stopped cleanly");
    Ok(())
}

fn payload_json(p: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(p) {
        Ok(s) => ("payload", Value::String(s.to_string())),
        Err(_) => (
            "payload_hex",
            Value::String(p.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

fn headers_json(h: &[(String, Vec<u8>)]) -> Value {
    Value::Object(
        h.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect(),
    )
}

fn delivery_json(d: &Delivery) -> Value {
    let (k, p) = payload_json(&d.payload);
    let mut v = json!({
        "offset": d.offset,
        "attempt": d.attempt,
        "id": d.id.map(|i| i.to_string()),
        "headers": headers_json(&d.headers),
        "due_ms": d.due_ms,
        "lease_until_ms": d.lease_until_ms,
    });
    v[k] = p;
    v
}

fn dead_json(d: &DeadLetter) -> Value {
    let (k, p) = payload_json(&d.payload);
    let mut v = json!({
        "dead_offset": d.dead_offset,
        "group": d.group,
        "original_offset": d.original_offset,
        "attempts": d.attempts,
        "reason": d.reason,
        "dead_at_ms": d.dead_at_ms,
        "id": d.id.map(|i| i.to_string()),
        "headers": headers_json(&d.headers),
    });
    v[k] = p;
    v
}

fn peek_json(m: &Peeked) -> Value {
    let (k, p) = payload_json(&m.payload);
    let mut v = json!({
        "offset": m.offset,
        "id": m.id.map(|i| i.to_string()),
        "headers": headers_json(&m.headers),
        "due_ms": m.due_ms,
    });
    v[k] = p;
    v
}

/// A payload for a terminal: UTF-8 (lossy) with control characters escaped, cut to 60.
fn short(p: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(p).escape_debug().collect();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn print_stats(out: &mut impl Write, s: &TopicStats) -> std::io::Result<()> {
    writeln!(
        out,
        "topic {}: offsets {}..{} (durable to {}), {} segments, {} bytes, {} delayed, {} dead letters pending",
        s.name,
        s.log_start,
        s.next_offset,
        s.durable_end,
        s.segments,
        s.retained_bytes,
        s.delayed_pending,
        s.dead_letters_pending
    )?;
    writeln!(
        out,
        "  published {} (duplicates {}) since start",
        s.published, s.duplicates
    )?;
    if s.groups.is_empty() {
        writeln!(out, "  no consumer groups")?;
        return Ok(());
    }
    writeln!(
        out,
        "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "GROUP", "LAG", "DEPTH", "IN-FLIGHT", "RETRY", "REDELIV", "ACKED", "DEAD"
    )?;
    for g in &s.groups {
        writeln!(
            out,
            "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
            g.name,
            g.lag,
            g.depth,
            g.in_flight,
            g.retry_waiting,
            g.redeliveries,
            g.acked,
            g.dead_lettered
        )?;
    }
    Ok(())
}

fn print_dead(out: &mut impl Write, topic: &str, dead: &[DeadLetter]) -> std::io::Result<()> {
    if dead.is_empty() {
        return writeln!(out, "no dead letters pending for {topic}");
    }
    writeln!(
        out,
        "{:>10} {:<16} {:>10} {:>8}  {:<30} PAYLOAD",
        "DEAD", "GROUP", "OFFSET", "ATTEMPTS", "REASON"
    )?;
    for d in dead {
        writeln!(
            out,
            "{:>10} {:<16} {:>10} {:>8}  {:<30} {}",
            d.dead_offset,
            d.group,
            d.original_offset,
            d.attempts,
            short(d.reason.as_bytes()),
            short(&d.payload)
        )?;
    }
    Ok(())
}

fn print_peek(out: &mut impl Write, topic: &str, msgs: &[Peeked]) -> std::io::Result<()> {
    if msgs.is_empty() {
        return writeln!(out, "no retained messages in {topic} from that offset");
    }
    writeln!(
        out,
        "{:>10} {:>40} {:>15}  PAYLOAD",
        "OFFSET", "ID", "DUE_MS"
    )?;
    for m in msgs {
        let id = m.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let due = m
            .due_ms
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:>10} {:>40} {:>15}  {}",
            m.offset,
            id,
            due,
            short(&m.payload)
        )?;
    }
    Ok(())
}
