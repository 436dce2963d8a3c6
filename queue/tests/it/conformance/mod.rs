//! One conformance suite for every backend (issue 15): the queue's semantic tests written
//! once against a [`Harness`] and instantiated for each implementation of [`Queue`]:
//!
//! - `embedded`: the [`Engine`] in a temporary directory;
//! - `broker`: a [`Server`] in this process over such an engine, reached through a
//!   [`Client`] on 127.0.0.1;
//! - `redis_standalone`: [`RedisQueue`] on one `redis-server`;
//! - `redis_cluster`: [`RedisQueue`] on a Redis Cluster of 3 masters with a replica each.
//!
//! So every test appears once per backend, e.g.
//! `conformance::redis_cluster::lease_expiry_nack_and_dead_letters`; the list is in
//! [`suite!`]. A test takes a [`Backend`] and starts as many harnesses as it needs, each
//! with the test's queue settings ([`queue::Config`], of which Redis takes the queue
//! semantics through `RedisConfig::from_config`) and, unless it asks for the real clock, a
//! [`ManualClock`] at [`T0`] that every backend reads (the engine through its config, Redis
//! scripts through `RedisConfig::clock`).
//!
//! The Redis backends share one server (and one cluster) per test binary, started on free
//! ports by `redis-kit` the first time a test needs it ([`servers`]); each harness gets a key
//! prefix of its own, so tests run in parallel on them. When `redis-server` cannot be
//! started the Redis tests are skipped with a message, except under `CI`, where they fail.
//!
//! Where the backends may rightly differ, the harness says so with a capability flag
//! ([`Caps`]) and the test asserts each behaviour exactly for the backends that have it;
//! no assertion is loosened to fit both. A semantic a backend does not give is a failing
//! test of that backend.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use queue::server::BrokerMetrics;
use queue::streams::{RedisConfig, RedisQueue};
use queue::{
    Client, ClientConfig, Clock, Config, Delivery, Engine, Error, FetchOptions, ManualClock, Queue,
    Server, ServerConfig, SystemClock,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{T0, test_config};

mod consume;
mod dead_letters;
mod peek;
mod publish;
pub mod servers;
mod timing;

/// Longest a test waits for a backend to get somewhere (a server to stop, a fetch to
/// block) before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Fetch options of the manual-clock tests: up to `n` messages, 1 s leases, no wait.
pub fn fetch_opts(n: usize) -> FetchOptions {
    opts(n, 1_000, 0)
}

pub fn opts(max_messages: usize, lease_ms: u64, wait_ms: u64) -> FetchOptions {
    FetchOptions {
        max_messages,
        lease_ms: Some(lease_ms),
        wait_ms,
    }
}

/// The implementations of [`Queue`] under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Broker,
    RedisStandalone,
    RedisCluster,
}

/// What a backend does where the [`Queue`] contract leaves it room. Each flag names the
/// behaviour of the `true` side; tests assert the exact behaviour of each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// A restart ends every lease: a message leased when the queue closed is delivered
    /// again at once after it reopens, as its next attempt (and one that had used its last
    /// attempt goes to the dead letters with "lease expired (queue restarted)"). The
    /// engine keeps leases in memory only. `false` (Redis): the lease lives in the server
    /// and runs until its deadline whoever reconnects.
    pub restart_ends_leases: bool,
    /// The statistics documented "since open" (`acked`, `redeliveries`, `dead_lettered`,
    /// `published`, `duplicates`) start from zero when the queue reopens. `false` (Redis):
    /// they are counters in the server, kept across clients.
    pub counters_reset_on_restart: bool,
    /// A fetch by one group also expires the leases of the topic's other groups (the
    /// engine maintains a whole topic at once), so their exhausted messages reach the dead
    /// letters then. `false` (Redis): a fetch expires only its own group's leases; the
    /// others' at their own fetch or at `tick`.
    pub fetch_expires_every_group: bool,
    /// The topic is stored in segment files that `stats` counts (`segments`).
    pub segment_files: bool,
}

impl Kind {
    pub fn caps(self) -> Caps {
        match self {
            Kind::Embedded | Kind::Broker => Caps {
                restart_ends_leases: true,
                counters_reset_on_restart: true,
                fetch_expires_every_group: true,
                segment_files: true,
            },
            Kind::RedisStandalone | Kind::RedisCluster => Caps {
                restart_ends_leases: false,
                counters_reset_on_restart: false,
                fetch_expires_every_group: false,
                segment_files: false,
            },
        }
    }

    /// Whether the backend is the engine (in this process or behind the broker), so that
    /// engine-only settings and checks apply.
    pub fn has_engine(self) -> bool {
        matches!(self, Kind::Embedded | Kind::Broker)
    }
}

/// A backend that is available to this test run: the factory of [`Harness`]es.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub kind: Kind,
    redis: Option<&'static servers::Shared>,
}

impl Backend {
    /// The backend, or `None` (with a message) when its servers cannot be started and the
    /// run is not under `CI` (under `CI` that fails the test instead).
    pub fn get(kind: Kind) -> Option<Backend> {
        let redis = match kind {
            Kind::Embedded | Kind::Broker => None,
            Kind::RedisStandalone => Some(servers::standalone()?),
            Kind::RedisCluster => Some(servers::cluster()?),
        };
        Some(Backend { kind, redis })
    }

    /// A harness with the test settings ([`test_config`]) and a manual clock at [`T0`].
    pub async fn start(&self) -> Harness {
        self.start_with(|_| {}).await
    }

    /// Like [`start`](Self::start), with the settings changed by `change` first.
    pub async fn start_with(&self, change: impl FnOnce(&mut Config)) -> Harness {
        let clock = ManualClock::new(T0);
        let mut config = test_config(&clock);
        change(&mut config);
        self.try_start(clock, config, true)
            .await
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.kind))
    }

    /// A harness on the real clock (the engine's system clock, the Redis server's `TIME`),
    /// for tests of what a long poll does while real time passes.
    pub async fn start_real_clock(&self, change: impl FnOnce(&mut Config)) -> Harness {
        let clock = ManualClock::new(T0);
        let mut config = Config {
            clock: Arc::new(SystemClock),
            ..test_config(&clock)
        };
        change(&mut config);
        self.try_start(clock, config, false)
            .await
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.kind))
    }

    /// Starts a harness with `config`; `manual`: the Redis scripts read `clock` (which
    /// `config.clock` must be too).
    pub async fn try_start(
        &self,
        clock: ManualClock,
        config: Config,
        manual: bool,
    ) -> Result<Harness, String> {
        let side = match self.kind {
            Kind::Embedded => {
                let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
                let engine = open_engine(dir.path(), &config).await?;
                Side::Embedded { dir, engine }
            }
            Kind::Broker => {
                let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
                let engine = open_engine(dir.path(), &config).await?;
                let broker = BrokerSide::serve(engine).await?;
                Side::Broker { dir, broker }
            }
            Kind::RedisStandalone | Kind::RedisCluster => {
                let shared = self.redis.ok_or("no Redis server")?;
                let mut cfg = RedisConfig::from_config(shared.target.clone(), &config);
                cfg.prefix = unique_prefix();
                cfg.clock = manual.then(|| Arc::new(clock.clone()) as Arc<dyn Clock>);
                cfg.maintenance_interval_ms = None;
                let redis = Arc::new(
                    RedisQueue::connect(cfg.clone())
                        .await
                        .map_err(|e| format!("connect: {e}"))?,
                );
                Side::Redis { cfg, redis, shared }
            }
        };
        Ok(Harness {
            kind: self.kind,
            clock,
            config,
            side,
        })
    }
}

/// A prefix no other harness of this process uses (one Redis server serves every test).
fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "conf{}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One queue under test, with the means to drive it.
pub struct Harness {
    pub kind: Kind,
    /// The clock every part of the backend reads (unless started on the real clock).
    pub clock: ManualClock,
    /// The settings it was started with (Redis took their queue semantics).
    pub config: Config,
    side: Side,
}

enum Side {
    Embedded {
        dir: tempfile::TempDir,
        engine: Arc<Engine>,
    },
    Broker {
        dir: tempfile::TempDir,
        broker: BrokerSide,
    },
    Redis {
        cfg: RedisConfig,
        redis: Arc<RedisQueue>,
        shared: &'static servers::Shared,
    },
    /// Between the old queue and the new one in a restart (and after a failed restart).
    Gone,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("kind", &self.kind).finish()
    }
}

impl Harness {
    /// The queue. After [`restart`](Self::restart) this is a new one: take it again.
    pub fn q(&self) -> Arc<dyn Queue> {
        match &self.side {
            Side::Embedded { engine, .. } => engine.clone(),
            Side::Broker { broker: b, .. } => b.client.clone(),
            Side::Redis { redis, .. } => redis.clone(),
            Side::Gone => panic!("the queue is gone (a restart failed)"),
        }
    }

    pub fn caps(&self) -> Caps {
        self.kind.caps()
    }

    /// The engine, for the backends that have one (engine-only checks).
    pub fn engine(&self) -> Option<&Engine> {
        match &self.side {
            Side::Embedded { engine, .. } => Some(engine),
            Side::Broker { broker: b, .. } => Some(&b.engine),
            Side::Redis { .. } | Side::Gone => None,
        }
    }

    /// One round of maintenance: `Engine::tick` (behind the broker too), `RedisQueue::tick`.
    pub async fn tick(&self) -> queue::Result<()> {
        match &self.side {
            Side::Embedded { engine, .. } => engine.tick().await,
            Side::Broker { broker: b, .. } => b.engine.tick().await,
            Side::Redis { redis, .. } => redis.tick().await,
            Side::Gone => Err(Error::Closed),
        }
    }

    /// Closes the queue: later calls through [`q`](Self::q) fail with `Error::Closed`.
    /// (The broker closes the engine behind it and keeps serving, answering `Closed`.)
    pub fn close(&self) -> queue::Result<()> {
        match &self.side {
            Side::Embedded { engine, .. } => engine.close(),
            Side::Broker { broker: b, .. } => b.engine.close(),
            Side::Redis { redis, .. } => redis.close(),
            Side::Gone => Err(Error::Closed),
        }
    }

    /// Stops the queue cleanly and starts it again on the same data: the engine closes
    /// and reopens its directory; the broker stops, its engine reopens, a new server
    /// serves it and a new client connects; Redis drops the client and connects a new one
    /// to the same server and prefix.
    pub async fn restart(&mut self) -> Result<(), String> {
        // The old queue goes first (the engine's directory lock with it), so every handle
        // taken from `q()` must be dropped by now.
        self.side = match std::mem::replace(&mut self.side, Side::Gone) {
            Side::Embedded { dir, engine } => {
                engine.close().map_err(|e| format!("close: {e}"))?;
                drop(engine);
                let engine = open_engine(dir.path(), &self.config).await?;
                Side::Embedded { dir, engine }
            }
            Side::Broker { dir, mut broker } => {
                broker.stop().await?;
                drop(broker);
                let engine = open_engine(dir.path(), &self.config).await?;
                let broker = BrokerSide::serve(engine).await?;
                Side::Broker { dir, broker }
            }
            Side::Redis { cfg, redis, shared } => {
                redis.close().map_err(|e| format!("close: {e}"))?;
                drop(redis);
                let redis = Arc::new(
                    RedisQueue::connect(cfg.clone())
                        .await
                        .map_err(|e| format!("reconnect: {e}"))?,
                );
                Side::Redis { cfg, redis, shared }
            }
            Side::Gone => return Err("the queue is gone (an earlier restart failed)".into()),
        };
        Ok(())
    }

    /// [`restart`](Self::restart) that fails the test on error.
    pub async fn reopen(&mut self) {
        let kind = self.kind;
        self.restart()
            .await
            .unwrap_or_else(|e| panic!("restart {kind:?}: {e}"));
    }

    /// Spawns a long-poll fetch and returns once it waits (or has returned): on the engine
    /// (on a current-thread runtime) one yield parks it; the broker has counted the fetch
    /// request; a Redis server has a client blocked (`blocked_clients`). The last is the
    /// best a test can see from outside, and other tests share the server, so it may
    /// return a little early: a publish made then only proves less, it fails nothing.
    pub async fn spawn_waiting_fetch(
        &self,
        topic: &str,
        group: &str,
        options: FetchOptions,
    ) -> JoinHandle<queue::Result<Vec<Delivery>>> {
        let fetches_before = match &self.side {
            Side::Broker { broker: b, .. } => b.fetches(),
            _ => 0,
        };
        let task = {
            let (q, topic, group) = (self.q(), topic.to_string(), group.to_string());
            tokio::spawn(async move { q.fetch(&topic, &group, options).await })
        };
        match &self.side {
            Side::Embedded { .. } | Side::Gone => tokio::task::yield_now().await,
            Side::Broker { broker: b, .. } => {
                let deadline = Instant::now() + DEADLINE;
                while b.fetches() == fetches_before && !task.is_finished() {
                    assert!(
                        Instant::now() < deadline,
                        "the fetch never reached the broker"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Let the server hand it to the engine, which parks it.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            Side::Redis { shared, .. } => {
                let deadline = Instant::now() + DEADLINE;
                while !task.is_finished() && !shared.some_client_blocked().await {
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        task
    }
}

/// Opens an engine, retrying while the directory lock is busy: another test in this
/// binary (crash.rs) spawns child processes, and until such a child calls exec it holds
/// copies of this process's descriptors, a just-closed lock file's among them.
async fn open_engine(dir: &Path, config: &Config) -> Result<Arc<Engine>, String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Engine::open(dir, config.clone()) {
            Err(Error::Io { op, .. }) if op.starts_with("lock") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            result => {
                return result
                    .map(Arc::new)
                    .map_err(|e| format!("open engine: {e}"));
            }
        }
    }
}

/// A broker in this process: an engine in a temporary directory served on 127.0.0.1 by
/// `Server::run`, and a client connected to it.
struct BrokerSide {
    engine: Arc<Engine>,
    metrics: Arc<BrokerMetrics>,
    /// Sending (or dropping) this completes the server's shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    client: Arc<Client>,
}

impl BrokerSide {
    /// Serves `engine` on a new port and connects a client.
    async fn serve(engine: Arc<Engine>) -> Result<BrokerSide, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("local addr: {e}"))?
            .to_string();
        // Secured as deployed: every operation of the suite runs on a connection that
        // proved the broker's secret.
        let secret = queue::Secret::new(b"conformance-broker-secret".to_vec())
            .map_err(|e| format!("secret: {e}"))?;
        let server = Server::new(
            engine.clone(),
            ServerConfig {
                secret: Some(secret.clone()),
                ..ServerConfig::default()
            },
        );
        let metrics = server.metrics();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            server
                .run(listener, async {
                    // A dropped sender (the test ended) stops the broker too.
                    let _ = stop.await;
                })
                .await;
        });
        let client = Client::connect(ClientConfig {
            connections: 1,
            connect_attempts: 2,
            connect_timeout_ms: 2_000,
            backoff_initial_ms: 5,
            backoff_max_ms: 20,
            ..ClientConfig::new(addr).with_secret(Some(secret))
        })
        .await
        .map_err(|e| format!("connect: {e}"))?;
        Ok(BrokerSide {
            engine,
            metrics,
            shutdown: Some(shutdown),
            server,
            client: Arc::new(client),
        })
    }

    fn fetches(&self) -> u64 {
        self.metrics.requests[usize::from(queue::proto::op::FETCH & 0x3f)].load(Ordering::Relaxed)
    }

    /// Stops the server (as `queue serve` does on SIGTERM) and closes the engine.
    async fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.server)
            .await
            .map_err(|_| "the broker did not stop in time".to_string())?
            .map_err(|e| format!("broker task: {e}"))?;
        self.engine.close().map_err(|e| format!("close: {e}"))
    }
}

/// Instantiates every conformance test for one backend: `$kind` is its [`Kind`]. Each test
/// is `module::name` of a `pub async fn name(b: Backend)`, run on a current-thread runtime
/// (`current`, as the engine's own tests, where one yield parks a long poll) or on two
/// threads (`multi`, real concurrency).
macro_rules! suite {
    ($kind:expr) => {
        suite!(@tests $kind;
            current publish::publish_fetch_ack_and_reopen,
            current publish::duplicate_ids_are_confirmed_not_stored,
            current publish::one_topic_through_every_operation,
            current publish::errors_name_their_kind_topic_and_limit,
            current publish::backlog_limit_gives_full,
            current publish::byte_backlog_limit_gives_full,
            current publish::bad_input_is_refused_clearly,
            current publish::due_times_past_the_limit_are_refused_and_the_largest_is_held,
            current publish::publish_each_judges_every_message_on_its_own,
            current publish::publish_each_near_the_backlog_limit_stores_what_fits,
            multi publish::concurrent_publishers_share_commits_and_lose_nothing,
            current consume::groups_see_everything_and_consumers_in_a_group_are_disjoint,
            current consume::lease_expiry_nack_and_dead_letters,
            current consume::delayed_messages_wait_for_their_time_and_survive_restart,
            current consume::long_poll_wakes_on_publish_and_times_out_empty,
            current consume::a_nack_wakes_a_waiting_consumer,
            current consume::receipts_must_be_real_and_refused_batches_count_nothing,
            multi consume::competing_consumers_never_share_a_lease,
            current dead_letters::a_replay_is_for_its_group_only_and_holds_back_no_other_group,
            current dead_letters::dead_letter_topics_are_not_for_consumer_groups,
            current dead_letters::a_largest_message_can_be_dead_lettered_and_reopened,
            current dead_letters::reject_dead_letters_then_list_replay_and_discard,
            current dead_letters::nacks_up_to_max_attempts_dead_letter_then_replay_redelivers,
            current peek::peek_shows_messages_in_offset_order_with_everything_stored,
            current peek::peek_is_capped_and_walks_across_segments,
            current peek::peek_leaves_groups_alone,
            current peek::peek_starts_at_the_oldest_retained_message,
            current peek::peek_shows_the_raw_dead_letter,
            current peek::peek_of_an_unknown_topic_is_no_such_topic,
            current peek::reads_stop_at_the_byte_budget,
            multi timing::nack_with_delay_is_redelivered_as_attempt_2_not_before_the_delay,
            multi timing::delayed_message_is_not_delivered_early,
            multi timing::expired_lease_is_redelivered_as_attempt_2,
        );
    };
    (@tests $kind:expr; $($flavor:ident $module:ident :: $name:ident),* $(,)?) => {
        $( suite!(@one $kind; $flavor $module::$name); )*
    };
    (@one $kind:expr; current $module:ident :: $name:ident) => {
        #[tokio::test]
        async fn $name() {
            if let Some(b) = super::Backend::get($kind) {
                super::$module::$name(b).await;
            }
        }
    };
    (@one $kind:expr; multi $module:ident :: $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some(b) = super::Backend::get($kind) {
                super::$module::$name(b).await;
            }
        }
    };
}

mod embedded {
    suite!(super::Kind::Embedded);
}

mod broker {
    suite!(super::Kind::Broker);
}

mod redis_standalone {
    suite!(super::Kind::RedisStandalone);
}

mod redis_cluster {
    suite!(super::Kind::RedisCluster);
}
