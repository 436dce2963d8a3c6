//! `order-worker`: order workers and cancellers as a process of their own, against a queue
//! broker (`tcp://…`), Redis Streams (`redis://…`, `redis+cluster://…`) or an embedded queue
//! directory, the orders database (SQLite or
//! PostgreSQL) and optionally the Redis stock store (to release units of rejected and
//! cancelled purchases). Stops cleanly on SIGTERM/SIGINT after the batches in hand.
//! Every flag is checked before anything is opened or created; `--metrics ADDR` serves the
//! crew's counters on `GET /metrics`.
//!
//! The default queue is the broker `queue serve` listens on by default
//! (`tcp://127.0.0.1:7070`), not the gateway's embedded `data/queue`: the engine locks its
//! directory, one process at a time, so an order-worker can never share the directory of a
//! running all-in-one gateway; a separate worker needs a shared queue (a broker or Redis
//! Streams), and the gateway then takes the same `--queue tcp://…`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use inventory::{Inventory, RedisStore};
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::{DbOptions, OrdersDb, SqliteDurability};
use order_worker::flags;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "order-worker",
    version,
    about = "Order workers and unpaid-order cancellers"
)]
struct Args {
    /// The queue: `tcp://HOST:PORT` (a `queue serve` broker), a directory (embedded),
    /// `redis://HOST:PORT` or `redis+cluster://HOST:PORT,HOST:PORT` (Redis Streams; options
    /// after `?`: `replicas=N`, `replica_timeout_ms=MS`, `fsync=relaxed`, `partitions=P`,
    /// `prefix=P`; see the README, "Queue on Redis Streams"). The gateways' target. A
    /// broker's secret is read from QUEUE_SECRET or QUEUE_SECRET_FILE. Default: the broker
    /// `queue serve` listens on by default (a directory is locked by the one process that
    /// opens it, so a worker cannot share a running gateway's embedded `data/queue`).
    #[arg(
        long,
        env = "ORDER_WORKER_QUEUE",
        default_value = "tcp://127.0.0.1:7070",
        value_parser = queue::addr::check_target
    )]
    queue: String,
    /// The orders database: `sqlite:PATH` or `postgres://…`. Repeat it for a database
    /// sharded by sale, one shard each (the first holds the routing table and the workers'
    /// heartbeats; the env variable: the URLs separated by whitespace); a PostgreSQL URL may
    /// name a primary and its standbys, `postgres://u@h1:p1,h2:p2/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:data/orders.db",
          value_parser = flags::database_url)]
    database: Vec<String>,
    /// The stock store whose reservations rejected and cancelled purchases release: `none`
    /// or a Redis URL (the one the gateways use: `redis://…` or `redis+cluster://…`).
    #[arg(long, env = "ORDER_WORKER_INVENTORY", default_value = "none",
          value_parser = |s: &str| flags::stock_target(s, &["none"]))]
    inventory: String,
    /// Key prefix in Redis, the gateways' (default `seckill:`). Read from
    /// SECKILL_REDIS_PREFIX, which the gateway reads too; GATEWAY_REDIS_PREFIX, its former
    /// name, is still honoured when that is unset.
    #[arg(long, env = flags::REDIS_PREFIX_ENV, value_parser = flags::redis_prefix)]
    redis_prefix: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint (the crew's counters; none if not
    /// given).
    #[arg(long, env = "ORDER_WORKER_METRICS", value_parser = queue::addr::listen_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Order workers (concurrent batches).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Cancellers (pay-by consumers, each also sweeping); 0 for none.
    #[arg(long, default_value_t = 1)]
    cancellers: usize,
    /// Most purchases per batch (one transaction; at most 5,000). Default: 4,000 on SQLite,
    /// 1,000 on PostgreSQL (`order_worker::db::batch_default`).
    #[arg(long)]
    batch: Option<usize>,
    /// Lease of a fetched batch, ms: after a worker dies, its batch goes to another after
    /// this long. Longer than a batch takes, retries included.
    #[arg(long, default_value_t = order_worker::worker::WorkerConfig::default().lease_ms)]
    lease_ms: u64,
    /// Database connections.
    #[arg(long, default_value_t = order_worker::db::CONNECTIONS_DEFAULT)]
    db_connections: u32,
    /// SQLite commits: `full` (fsync, the default) or `normal` (survives a process crash,
    /// not a power loss).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// Seconds between drain-rate reports.
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
    /// Fail point for crash tests: wait forever after a batch's commit, before its ack.
    #[arg(
        long,
        env = "ORDER_WORKER_PAUSE_AFTER_COMMIT",
        hide = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pause_after_commit: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<(), BoxError> {
    let redis_prefix = flags::resolve_redis_prefix(args.redis_prefix.as_deref())?;
    // Bound before anything is opened, so a refused address leaves nothing behind.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| queue::addr::bind_error("--metrics", addr, &e))?,
        ),
        None => None,
    };
    let options = DbOptions {
        max_connections: args.db_connections,
        sqlite_durability: match args.sqlite_sync.as_str() {
            "full" => SqliteDurability::Full,
            "normal" => SqliteDurability::Normal,
            other => return Err(format!("--sqlite-sync is full or normal, not {other}").into()),
        },
    };
    let database = args.database.join(" ");
    let db = OrdersDb::connect(&database, &options).await?;
    let backend = queue::Backend::open(&args.queue, queue::Config::default()).await?;
    let inventory = if args.inventory == "none" {
        None
    } else {
        let store = RedisStore::connect(&args.inventory, &redis_prefix, 8).await?;
        Some(Arc::new(Inventory::new(
            Box::new(store),
            Duration::from_millis(1000),
        )))
    };
    let mut config = CrewConfig {
        workers: args.workers,
        cancellers: args.cancellers,
        ..CrewConfig::default()
    };
    config.worker.batch_max = args
        .batch
        .unwrap_or_else(|| order_worker::db::batch_default(&database));
    config.worker.lease_ms = args.lease_ms;
    config.worker.pause_after_commit = args.pause_after_commit;
    let mut crew = Crew::start(
        db.clone(),
        backend.queue(),
        inventory,
        config,
        Arc::new(queue::SystemClock),
    );
    crew.report_every(Duration::from_secs(args.report_secs.max(1)));
    let (stop_metrics, stopped) = tokio::sync::watch::channel(false);
    let metrics_task = match metrics_listener {
        Some(l) => {
            // Tests and scripts read this line to learn the port.
            println!(
                "order-worker: metrics on http://{}/metrics",
                l.local_addr()?
            );
            let mut rx = stopped.clone();
            let counters = order_worker::metrics::CrewCounters::of(&crew);
            Some(tokio::spawn(order_worker::metrics::serve(
                l,
                counters,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    println!(
        "order-worker: {}, {} on {} ({} shard(s): {}), queue {}",
        flags::count(args.workers, "worker"),
        flags::count(args.cancellers, "canceller"),
        db.backend(),
        db.shard_count(),
        database,
        args.queue
    );
    queue::signal::shutdown_signal().await;
    crew.stop().await;
    let _ = stop_metrics.send(true);
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    backend.close()?;
    db.close().await;
    println!("order-worker: stopped cleanly");
    Ok(())
}

fn main() -> ExitCode {
    order_worker::allocator::configure();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "order-worker: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "order-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
