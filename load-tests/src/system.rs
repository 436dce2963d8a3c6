//! The all-in-one system started inside this process, on a loopback port: the gateway
//! with the embedded queue, in-process stock, the orders database (SQLite in the run's
//! directory, or a PostgreSQL URL), order workers and the unpaid-order canceller. The
//! `load-tests demo` command and the tests run the flash crowd against it.
//!
//! It is the same assembly as the `gateway` binary's, with two differences a load
//! generator needs: load-test mode is on (a secret lets the simulated humans skip the
//! captcha; nothing else is relaxed), and the per-IP throttles are off, because every
//! simulated person comes from 127.0.0.1 (the per-user throttles stay).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::app::{AppState, CrewMetrics, GatewayConfig, ServeLimits};
use gateway::session::SessionKey;
use gateway::throttle::ThrottleConfig;
use gateway::token::TokenKey;
use inventory::{Inventory, MemoryStore};
use order_worker::OrdersDb;
use order_worker::crew::{Crew, CrewConfig};
use order_worker::db::DbOptions;

/// How long shutdown waits for purchases still between reservation and enqueue.
pub const SHUTDOWN_COMMITS_WAIT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// `sqlite:PATH`, `postgres://…`, or `None` for SQLite in the run's directory.
    pub database: Option<String>,
    /// Order workers.
    pub workers: usize,
    /// Cancellers.
    pub cancellers: usize,
    /// Most purchases per worker batch.
    pub batch: usize,
    /// Limits of the served gateway.
    pub limits: ServeLimits,
}

impl Default for SystemOptions {
    fn default() -> Self {
        SystemOptions {
            database: None,
            workers: 2,
            cancellers: 1,
            batch: 1000,
            limits: ServeLimits::default(),
        }
    }
}

/// Why the system could not start.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The queue.
    #[error("queue: {0}")]
    Queue(#[from] queue::Error),
    /// The database.
    #[error("database: {0}")]
    Db(#[from] order_worker::DbError),
    /// The gateway's state.
    #[error("gateway: {0}")]
    State(#[from] gateway::app::StateError),
    /// The listener.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// Loading the catalogue.
    #[error("catalogue: {0}")]
    Catalogue(String),
}

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
    crew: Option<Crew>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    engine: Arc<queue::Engine>,
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AllInOne {
    /// Starts the system with its queue (and SQLite file, by default) under `dir`.
    pub async fn start(dir: &Path, options: SystemOptions) -> Result<AllInOne, SystemError> {
        let engine = Arc::new(queue::Engine::open(
            dir.join("queue"),
            queue::Config::default(),
        )?);
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", dir.join("orders.db").display()));
        let db = OrdersDb::connect(&database, &DbOptions::default()).await?;
        let admin_secret = random_hex();
        let load_test_secret = random_hex();
        let mut config = GatewayConfig::new(admin_secret.clone());
        config.load_test_secret = Some(load_test_secret.clone());
        config.purchase_wait_ms = options.limits.request_timeout_ms.saturating_mul(4) / 5;
        let mut throttle = ThrottleConfig::default();
        for r in [
            &mut throttle.login,
            &mut throttle.captcha,
            &mut throttle.token,
            &mut throttle.purchase,
        ] {
            r.per_ip = None;
        }
        let mut state = AppState::new(
            config,
            Inventory::new(Box::new(MemoryStore::new()), Duration::from_millis(1000)),
            engine.clone(),
            db.clone(),
            SessionKey::generate(),
            TokenKey::generate(),
            throttle,
        )?;
        gateway::sync::load_catalogue(&state)
            .await
            .map_err(|e| SystemError::Catalogue(e.to_string()))?;
        let crew = if options.workers + options.cancellers > 0 {
            let mut crew_config = CrewConfig {
                workers: options.workers,
                cancellers: options.cancellers,
                ..CrewConfig::default()
            };
            crew_config.worker.batch_max = options.batch;
            crew_config.worker.topic = state.config.orders_topic.clone();
            crew_config.worker.group = state.config.workers_group.clone();
            let crew = Crew::start(
                db.clone(),
                engine.clone(),
                Some(state.inventory.clone()),
                crew_config,
                Arc::new(queue::SystemClock),
            );
            state.crew = Some(CrewMetrics {
                workers: crew.workers.clone(),
                cancellers: crew.cancellers.clone(),
            });
            Some(crew)
        } else {
            None
        };
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gateway::app::serve(
            listener,
            state.clone(),
            options.limits,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(AllInOne {
            addr,
            state,
            db,
            database,
            admin_secret,
            load_test_secret,
            crew,
            stop: Some(stop),
            server: Some(server),
            engine,
        })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving, lets running purchases finish, stops the workers, closes the queue.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let _ = self.state.commits.drain(SHUTDOWN_COMMITS_WAIT).await;
        if let Some(crew) = self.crew.take() {
            crew.stop().await;
        }
        let _ = self.engine.close();
        self.db.close().await;
    }
}
