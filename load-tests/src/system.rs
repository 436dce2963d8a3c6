//! The all-in-one system started inside this process, on a loopback port: the gateway
//! with the embedded queue in the run's directory (or any queue target: a broker, Redis
//! Streams), in-process stock, the orders database (SQLite in the run's
//! directory, or a PostgreSQL URL), order workers and the unpaid-order canceller. The
//! `load-tests demo` command and the tests run the flash crowd against it.
//!
//! It is the `gateway` binary's assembly ([`gateway::system::System`]), with two differences a load
//! generator needs: load-test mode is on (a secret lets the simulated humans skip the
//! captcha; nothing else is relaxed), and the per-IP throttles are off, because every
//! simulated person comes from 127.0.0.1 (the per-user throttles stay).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use gateway::config::GatewayConfig;
use gateway::config::ServeLimits;
use gateway::state::AppState;
use gateway::system::{DatabaseSource, QueueSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;
use order_worker::OrdersDb;
use order_worker::db::DbOptions;

/// How long shutdown waits for purchases still between reservation and enqueue.
pub const SHUTDOWN_COMMITS_WAIT: std::time::Duration = gateway::system::SHUTDOWN_COMMITS_WAIT;

/// What to start.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// `sqlite:PATH`, `postgres://…`, or `None` for SQLite in the run's directory.
    pub database: Option<String>,
    /// A queue target for [`queue::Backend::open`] (`tcp://…`, `redis://…`,
    /// `redis+cluster://…?replicas=1`, a directory), or `None` for the embedded queue in the
    /// run's directory.
    pub queue: Option<String>,
    /// The stock store: `redis://…` or `redis+cluster://…` (keys under a prefix of the
    /// run's own, [`SystemOptions::redis_prefix`]), or `None` for the in-process store.
    pub inventory: Option<String>,
    /// Order workers.
    pub workers: usize,
    /// Cancellers.
    pub cancellers: usize,
    /// Most purchases per worker batch (`None`: [`order_worker::db::batch_default`] for the
    /// database).
    pub batch: Option<usize>,
    /// Lease of a worker's fetched batch, ms (`None`: the workers' default): how long a
    /// batch whose worker lost its queue (a crash, a failover) waits before another takes it.
    pub worker_lease_ms: Option<u64>,
    /// Limits of the served gateway.
    pub limits: ServeLimits,
}

impl SystemOptions {
    /// A Redis key prefix of this process's own (`load-tests:PID:`), so a run never reads
    /// or overwrites another's stock.
    pub fn redis_prefix() -> String {
        format!("load-tests:{}:", std::process::id())
    }
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            database: None,
            queue: None,
            inventory: None,
            workers: 2,
            cancellers: 1,
            batch: None,
            worker_lease_ms: None,
            limits: ServeLimits::default(),
        }
    }
}

/// Why the system could not start.
pub type SystemError = gateway::system::SystemError;

/// The running system.
#[derive(Debug)]
pub struct AllInOne {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway's state (the tests look inside).
    pub state: Arc<AppState>,
    /// The orders database.
    pub db: OrdersDb,
    /// What `--database` it runs on, for reports.
    pub database: String,
    /// The admin secret.
    pub admin_secret: String,
    /// The load-test secret.
    pub load_test_secret: String,
    system: System,
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AllInOne {
    /// Starts the system with its queue and SQLite file (by default) under `dir`.
    pub async fn start(dir: &Path, options: SystemOptions) -> Result<AllInOne, SystemError> {
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", dir.join("orders.db").display()));
        let queue = options
            .queue
            .clone()
            .unwrap_or_else(|| dir.join("queue").display().to_string());
        let admin_secret = random_hex();
        let load_test_secret = random_hex();
        let mut gateway = GatewayConfig::new(admin_secret.clone());
        gateway.load_test_secret = Some(load_test_secret.clone());
        let mut config = SystemConfig::new(
            QueueSource::Open(queue),
            DatabaseSource::Url {
                url: database.clone(),
                options: DbOptions::default(),
            },
            gateway,
        );
        if let Some(url) = &options.inventory {
            config.stock = gateway::system::StockSource::Redis {
                url: url.clone(),
                prefix: SystemOptions::redis_prefix(),
            };
        }
        config.throttle = ThrottleConfig::default().without_per_ip();
        config.crew.workers = options.workers;
        config.crew.cancellers = options.cancellers;
        config.crew.worker.batch_max = options
            .batch
            .unwrap_or_else(|| order_worker::db::batch_default(&database));
        if let Some(lease_ms) = options.worker_lease_ms {
            config.crew.worker.lease_ms = lease_ms;
        }
        let system = System::start(config.with_limits(options.limits)).await?;
        Ok(AllInOne {
            addr: system
                .addr()
                .ok_or_else(|| SystemError::Io(std::io::Error::other("the system did not bind")))?,
            state: system.state().clone(),
            db: system.db().clone(),
            database,
            admin_secret,
            load_test_secret,
            system,
        })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving, lets running purchases finish, stops the workers, closes the queue.
    pub async fn stop(self) -> Result<gateway::system::Stopped, SystemError> {
        self.system.stop().await
    }
}
