//! Real Redis servers for tests: standalone, Cluster and Sentinel, each on free loopback
//! ports with temporary data, taken down by `Drop`.
//!
//! A dev-only crate (`publish = false`, a dev-dependency only) for the tests of the queue's
//! Redis Streams backend (issue 15, `queue/REDIS.md`) and anything else that needs a Redis
//! it may kill. It runs Debian's `redis-server` as child processes and talks to them over
//! a tiny blocking RESP client: synchronous std code, no async runtime, so it works the
//! same from a `#[test]` and from inside a tokio test.
//!
//! Modules:
//!
//! - [`binaries`] — [`redis_server_path`] and [`redis_cli_path`]: the programs on `PATH`,
//!   or an error that says to install the `redis-server` package.
//! - [`server`] — [`RedisServer`] with [`RedisOptions`]: one server on a free port with a
//!   temporary directory and a written redis.conf (durable by default: `appendonly yes`,
//!   `appendfsync always`, `maxmemory-policy noeviction`); `kill` (SIGKILL, as a crash),
//!   `restart` (same port and directory, AOF reloaded), `cmd`.
//! - [`cluster`] — [`RedisCluster`]: masters with replicas made a cluster by `redis-cli
//!   --cluster create`; `kill_master` and `failover_and_wait`.
//! - [`sentinel`] — [`SentinelSetup`]: a primary, a replica and one Sentinel (master name
//!   `seckill`, quorum 1); `kill_primary` and `wait_for_failover`.
//! - [`resp`] — [`Connection`] and [`Resp`]: the RESP2 client (timeouts and size limits on
//!   everything it reads).
//! - [`error`] — [`KitError`], the one error type.
//! - `wait` — bounded polling on a condition, the only way the kit waits.
//!
//! Invariants:
//!
//! - The kit never touches the shared Redis on 127.0.0.1:6379: every server gets a port
//!   from the OS (never 6379, 16379 or 26379), and before a start counts as done the kit
//!   checks that the process answering on the port is its own child (INFO's
//!   `process_id`).
//! - Every process it starts is killed with SIGKILL and reaped when its owner is dropped,
//!   panics included; its directory goes with it. Only a SIGKILL of the test process
//!   itself leaves servers behind.
//! - Every wait is bounded and, when it runs out, says what it waited for and what it saw
//!   last; a failed start quotes the server's log.
//!
//! ```no_run
//! use redis_kit::{RedisOptions, RedisServer};
//!
//! let mut server = RedisServer::start(RedisOptions::new())?;
//! server.cmd(&["SET", "k", "v"])?;
//! server.kill()?; // SIGKILL: no shutdown, no final fsync
//! server.restart()?; // the AOF (fsynced on every write) brings the key back
//! assert_eq!(server.cmd(&["GET", "k"])?.as_str(), Some("v"));
//! # Ok::<(), redis_kit::KitError>(())
//! ```

pub mod binaries;
pub mod cluster;
pub mod error;
pub mod resp;
pub mod sentinel;
pub mod server;
mod wait;

pub use binaries::{redis_cli_path, redis_server_path};
pub use cluster::{ClusterFailover, RedisCluster};
pub use error::KitError;
pub use resp::{Connection, Resp, info_field};
pub use sentinel::{SENTINEL_MASTER_NAME, SentinelSetup};
pub use server::{RedisOptions, RedisServer};
