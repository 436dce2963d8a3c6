//! The whole system in one process, assembled once: [`System::build`] opens the queue, the
//! orders database and the stock store, builds the gateway's state, loads the catalogue,
//! creates the demo sale, and starts the order workers and unpaid-order cancellers; the
//! system then answers through [`System::app`] (no socket: tests call it with `oneshot`)
//! or on its listener ([`System::bind`], then [`System::spawn`] or
//! [`System::run_until`]); [`System::stop`] takes it down in order: stop serving, wait for
//! running purchases, stop the crew, close the queue, close the database.
//!
//! The `gateway` binary, the load tests' all-in-one system, `gateway-bench` and the
//! gateway's tests all build through here (in the manner of zero2prod's
//! `Application::build`), so there is one copy of these steps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use inventory::{Inventory, MemoryStore, RedisStore, StockStore};
use order_worker::OrdersDb;
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::{DbOptions, NewSale};
use queue::{Clock, Queue};

use crate::config::{GatewayConfig, ServeLimits};
use crate::front::Front;
use crate::ledger::{MemoryLedger, RedisLedger, TokenLedger};
use crate::metrics::CrewMetrics;
use crate::session::SessionKey;
use crate::state::{AppState, StateError};
use crate::throttle::ThrottleConfig;
use crate::token::TokenKey;

/// Longest wait at shutdown for purchases past their reservation.
pub const SHUTDOWN_COMMITS_WAIT: Duration = Duration::from_secs(30);
/// Connections of a Redis stock store.
pub const REDIS_CONNECTIONS: usize = 16;
/// How often the in-process crew logs its counters, when it reports.
pub const CREW_REPORT_PERIOD: Duration = Duration::from_secs(5);
/// The id of the demo sale.
pub const DEMO_SALE_ID: u64 = 1;
/// How long the sold-out flag is trusted before the store is asked again, by default.
pub const SOLD_OUT_RECHECK_DEFAULT: Duration = Duration::from_millis(1000);

/// Where the queue comes from.
#[derive(Clone)]
pub enum QueueSource {
    /// A [`queue::Backend::open`] target: a directory (the embedded engine),
    /// `tcp://HOST:PORT` (a broker), or Redis Streams at `redis://HOST:PORT` or
    /// `redis+cluster://HOST:PORT,HOST:PORT` with options after `?` (`replicas=N`,
    /// `replica_timeout_ms`, `fsync=relaxed`, `partitions=P`, `prefix=…`; see
    /// [`queue::streams::RedisConfig::parse`]). The queue's semantics (attempts, leases,
    /// de-duplication window) are [`queue::Config::default`]'s. The system closes it at
    /// shutdown.
    Open(String),
    /// A queue opened by the caller (tests inject gated or shared ones); the caller closes it.
    Shared(Arc<dyn Queue>),
}

impl std::fmt::Debug for QueueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueSource::Open(t) => f.debug_tuple("Open").field(t).finish(),
            QueueSource::Shared(_) => f.write_str("Shared(..)"),
        }
    }
}

/// Where the stock (and the token ledger beside it) lives.
pub enum StockSource {
    /// In this process (the ledger too).
    Memory,
    /// In Redis under a key prefix; the token ledger lives beside the stock there, so
    /// several gateways share one budget and one single-use rule.
    Redis {
        /// `redis://…`.
        url: String,
        /// Key prefix.
        prefix: String,
    },
    /// A store and a ledger made by the caller (tests).
    Given {
        /// The stock store.
        store: Box<dyn StockStore>,
        /// The token ledger.
        ledger: Arc<dyn TokenLedger>,
    },
}

impl std::fmt::Debug for StockSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StockSource::Memory => f.write_str("Memory"),
            StockSource::Redis { prefix, .. } => f
                .debug_struct("Redis")
                .field("prefix", prefix)
                .finish_non_exhaustive(),
            StockSource::Given { .. } => f.write_str("Given(..)"),
        }
    }
}

/// Where the orders database is.
#[derive(Debug, Clone)]
pub enum DatabaseSource {
    /// `sqlite:PATH` (created if missing) or `postgres://…`, with these options. The
    /// system closes it at shutdown.
    Url {
        /// The URL, or several separated by whitespace: one shard each (see
        /// [`OrdersDb::connect`]).
        url: String,
        /// Connections and durability.
        options: DbOptions,
    },
    /// A database opened by the caller (tests with a fresh schema); closed at shutdown too.
    Open(OrdersDb),
}

/// Everything the system is built from.
#[derive(Debug)]
pub struct SystemConfig {
    /// Address to listen on (`127.0.0.1:0`: any free port).
    pub listen: String,
    /// The queue.
    pub queue: QueueSource,
    /// The stock store and token ledger.
    pub stock: StockSource,
    /// The orders database.
    pub database: DatabaseSource,
    /// The gateway's settings.
    pub gateway: GatewayConfig,
    /// Session signing key.
    pub sessions: SessionKey,
    /// Purchase token signing key.
    pub tokens: TokenKey,
    /// Rate limits (per-IP ones off with [`ThrottleConfig::without_per_ip`]).
    pub throttle: ThrottleConfig,
    /// Order workers and cancellers in this process (`workers + cancellers == 0`: none;
    /// they run as `order-worker` processes). Topic and group are the gateway's.
    pub crew: CrewConfig,
    /// Whether the crew logs its counters every [`CREW_REPORT_PERIOD`].
    pub crew_reports: bool,
    /// If the database has no sale [`DEMO_SALE_ID`], create it as a demo sale with this many
    /// units, open at once (0: none).
    pub demo_units: u64,
    /// Limits of the served gateway.
    pub limits: ServeLimits,
    /// Connections of the request path's own database pool (tickets, orders, payment),
    /// apart from the order workers' (`--db-read-connections`). Default
    /// `order_worker::db::READ_CONNECTIONS_DEFAULT`.
    pub read_connections: u32,
    /// How long the sold-out flag is trusted before the store is asked again.
    pub sold_out_recheck: Duration,
    /// The clock of the gateway and the crew.
    pub clock: Arc<dyn Clock>,
}

impl SystemConfig {
    /// A system on this queue, database and gateway configuration; the rest by default:
    /// any free loopback port, in-process stock, fresh random keys, the default throttles,
    /// the default crew (two workers, one canceller), no demo sale, the default limits, the
    /// system clock.
    pub fn new(queue: QueueSource, database: DatabaseSource, gateway: GatewayConfig) -> Self {
        SystemConfig {
            listen: "127.0.0.1:0".into(),
            queue,
            stock: StockSource::Memory,
            database,
            gateway,
            sessions: SessionKey::generate(),
            tokens: TokenKey::generate(),
            throttle: ThrottleConfig::default(),
            crew: CrewConfig::default(),
            crew_reports: false,
            demo_units: 0,
            limits: ServeLimits::default(),
            read_connections: order_worker::db::READ_CONNECTIONS_DEFAULT,
            sold_out_recheck: SOLD_OUT_RECHECK_DEFAULT,
            clock: Arc::new(queue::SystemClock),
        }
    }

    /// Serves with these limits, and lets a purchase wait for its enqueue what fits them
    /// ([`ServeLimits::purchase_wait_ms`]: it answers before its request times out).
    pub fn with_limits(mut self, limits: ServeLimits) -> Self {
        self.gateway.purchase_wait_ms = limits.purchase_wait_ms();
        self.limits = limits;
        self
    }

    /// No order workers and no cancellers in this process.
    pub fn without_crew(mut self) -> Self {
        self.crew.workers = 0;
        self.crew.cancellers = 0;
        self
    }
}

/// Why the system could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The queue.
    #[error("queue: {0}")]
    Queue(#[from] queue::Error),
    /// The orders database.
    #[error("database: {0}")]
    Db(#[from] order_worker::DbError),
    /// The stock store.
    #[error("stock store: {0}")]
    Stock(#[from] inventory::Error),
    /// The gateway's state.
    #[error("gateway: {0}")]
    State(#[from] StateError),
    /// Loading the catalogue.
    #[error("catalogue: {0}")]
    Catalogue(#[from] crate::sync::SyncError),
    /// The listener.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// A setting out of its bounds.
    #[error("configuration: {0}")]
    Config(String),
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Stopped {
    /// Purchases still between reservation and enqueue after [`SHUTDOWN_COMMITS_WAIT`]:
    /// reconciliation will settle their units (0 after a clean stop).
    pub purchases_running: usize,
}

/// The running system: the gateway's state, the database, the optional crew, and once
/// bound its listener.
pub struct System {
    state: Arc<AppState>,
    db: OrdersDb,
    crew: Option<Crew>,
    backend: Option<queue::Backend>,
    limits: ServeLimits,
    listen: String,
    demo_created: bool,
    listener: Option<tokio::net::TcpListener>,
    addr: Option<SocketAddr>,
    server: Option<Server>,
}

/// A spawned server and the switch that stops it.
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("addr", &self.addr)
            .field("limits", &self.limits)
            .field("crew", &self.crew.is_some())
            .finish_non_exhaustive()
    }
}

impl System {
    /// Builds the system without binding a socket (see the module's doc for the steps).
    pub async fn build(config: SystemConfig) -> Result<System, SystemError> {
        let SystemConfig {
            listen,
            queue,
            stock,
            database,
            gateway,
            sessions,
            tokens,
            throttle,
            crew,
            crew_reports,
            demo_units,
            limits,
            read_connections,
            sold_out_recheck,
            clock,
        } = config;
        crate::config::validate_token_factor(gateway.token_factor).map_err(SystemError::Config)?;
        let (backend, queue) = match queue {
            QueueSource::Open(target) => {
                let backend = queue::Backend::open(&target, queue::Config::default()).await?;
                let q = backend.queue();
                (Some(backend), q)
            }
            QueueSource::Shared(q) => (None, q),
        };
        let db = match database {
            DatabaseSource::Url { url, options } => OrdersDb::connect(&url, &options).await?,
            DatabaseSource::Open(db) => db,
        };
        let (store, ledger): (Box<dyn StockStore>, Arc<dyn TokenLedger>) = match stock {
            StockSource::Memory => (Box::new(MemoryStore::new()), Arc::new(MemoryLedger::new())),
            StockSource::Redis { url, prefix } => {
                let store = RedisStore::connect(&url, &prefix, REDIS_CONNECTIONS).await?;
                let ledger = Arc::new(RedisLedger::beside(&store));
                (Box::new(store), ledger)
            }
            StockSource::Given { store, ledger } => (store, ledger),
        };
        let mut state = AppState::new(
            gateway,
            Inventory::new(store, sold_out_recheck),
            queue.clone(),
            db.clone(),
            sessions,
            tokens,
            throttle,
        )?
        .with_clock(clock.clone());
        state.ledger = ledger;
        state.read_db = db.sibling(read_connections);
        // The sales and their stock, from the database (an in-process store starts empty
        // and is rebuilt from the active orders).
        crate::sync::load_catalogue(&state).await?;
        let demo_created = demo_units > 0 && create_demo_sale(&state, demo_units, &*clock).await?;
        let crew = if crew.workers + crew.cancellers > 0 {
            let mut crew_config = crew;
            crew_config.worker.topic = state.config.orders_topic.clone();
            crew_config.worker.group = state.config.workers_group.clone();
            let mut crew = Crew::start(
                db.clone(),
                queue,
                Some(state.inventory.clone()),
                crew_config,
                clock,
            );
            if crew_reports {
                crew.report_every(CREW_REPORT_PERIOD);
            }
            state.set_crew(CrewMetrics {
                workers: crew.workers.clone(),
                cancellers: crew.cancellers.clone(),
                heartbeats: crew.heartbeats.clone(),
            });
            Some(crew)
        } else {
            None
        };
        Ok(System {
            state: Arc::new(state),
            db,
            crew,
            backend,
            limits,
            listen,
            demo_created,
            listener: None,
            addr: None,
            server: None,
        })
    }

    /// Builds the system, binds its listener and serves it on a task until [`System::stop`].
    pub async fn start(config: SystemConfig) -> Result<System, SystemError> {
        let mut system = System::build(config).await?;
        system.spawn().await?;
        Ok(system)
    }

    /// Binds the listen address (once); returns the bound address. Limits that cannot be
    /// served ([`ServeLimits::validate`]) are refused here, before anything listens.
    pub async fn bind(&mut self) -> Result<SocketAddr, SystemError> {
        if let Some(addr) = self.addr {
            return Ok(addr);
        }
        self.limits
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", self.listen));
        let mut last = None;
        let mut listener = None;
        for addr in tokio::net::lookup_host(&self.listen).await.map_err(named)? {
            match crate::front::listen(addr, self.limits.listen_backlog) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let listener = listener.ok_or_else(|| {
            named(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
            }))
        })?;
        let addr = listener.local_addr()?;
        self.listener = Some(listener);
        self.addr = Some(addr);
        Ok(addr)
    }

    /// Serves on a task, until [`System::stop`] or until the system is dropped, on the
    /// bound listener (binding the listen address first if needed); returns the address.
    /// Serving already, it only returns the address.
    pub async fn spawn(&mut self) -> Result<SocketAddr, SystemError> {
        let addr = self.bind().await?;
        let Some(listener) = self.listener.take() else {
            // The listener is taken only by serving: this system serves already.
            return Ok(addr);
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::front::serve(
            listener,
            self.state.clone(),
            self.limits,
            async {
                let _ = stopped.await;
            },
        ));
        self.server = Some(Server { stop, task });
        Ok(addr)
    }

    /// Serves on the listen address until `shutdown` completes, then stops cleanly.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Stopped, SystemError> {
        self.bind().await?;
        let served = match self.listener.take() {
            Some(listener) => {
                crate::front::serve(listener, self.state.clone(), self.limits, shutdown).await
            }
            // Serving already (spawned): wait for the shutdown, then stop it.
            None => {
                shutdown.await;
                Ok(())
            }
        };
        let stopped = self.stop().await?;
        served.map_err(SystemError::from)?;
        Ok(stopped)
    }

    /// Stops serving, lets running purchases finish (at most [`SHUTDOWN_COMMITS_WAIT`]),
    /// stops the crew, closes the queue (if the system opened it) and the database; says
    /// how many purchases were still running when it stopped waiting for them.
    pub async fn stop(mut self) -> Result<Stopped, SystemError> {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
        // Purchases whose requests are gone may still be between reservation and enqueue:
        // let them finish before the queue closes.
        let purchases_running = if self.state.commits.drain(SHUTDOWN_COMMITS_WAIT).await {
            0
        } else {
            self.state.commits.running()
        };
        if let Some(crew) = self.crew.take() {
            crew.stop().await;
        }
        let closed = match self.backend.take() {
            Some(backend) => backend.close(),
            None => Ok(()),
        };
        self.state.read_db.close().await;
        self.db.close().await;
        closed.map_err(SystemError::from)?;
        Ok(Stopped { purchases_running })
    }

    /// The whole HTTP surface with the system's limits, without a socket.
    pub fn app(&self) -> Front {
        crate::front::app_with_limits(self.state.clone(), self.limits)
    }

    /// The gateway's state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The orders database.
    pub fn db(&self) -> &OrdersDb {
        &self.db
    }

    /// Serves with these limits instead (before [`System::spawn`] or
    /// [`System::run_until`]; tests change them between building and serving).
    pub fn set_limits(&mut self, limits: ServeLimits) {
        self.limits = limits;
    }

    /// The limits the system serves with.
    pub fn limits(&self) -> ServeLimits {
        self.limits
    }

    /// The bound address, once bound.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Whether this start created the demo sale.
    pub fn demo_created(&self) -> bool {
        self.demo_created
    }

    /// The order workers and cancellers of this process, taken out (the caller stops them).
    pub fn take_crew(&mut self) -> Option<Crew> {
        self.crew.take()
    }
}

/// Creates the demo sale unless the database has it; whether it was created here.
async fn create_demo_sale(
    state: &AppState,
    units: u64,
    clock: &dyn Clock,
) -> Result<bool, SystemError> {
    if state.catalogue.get(DEMO_SALE_ID).is_some() {
        return Ok(false);
    }
    let now = clock.now_ms();
    let created = state
        .db
        .create_sale(
            &NewSale {
                id: DEMO_SALE_ID,
                name: "demo".into(),
                price_cents: 100,
                units,
                starts_at_ms: now,
                pay_window_ms: None,
                ends_at_ms: None,
                token_factor: None,
                per_user_limit: None,
                stock_buckets: None,
            },
            now,
        )
        .await;
    match created {
        Ok(sale) => {
            state
                .inventory
                .reconcile(DEMO_SALE_ID, sale.units, &[])
                .await?;
            state.catalogue.upsert(sale);
            Ok(true)
        }
        // Another gateway starting beside this one created it first.
        Err(order_worker::DbError::Conflict(_)) => {
            crate::sync::load_catalogue(state).await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
