//! Real PostgreSQL servers for tests, each on a free loopback port with a temporary data
//! directory, killed with SIGKILL and restarted (crash recovery) on demand, taken down by
//! `Drop`.
//!
//! A dev-only crate (`publish = false`, a dev-dependency only), modelled on `redis-kit`,
//! for the tests that must crash the orders database itself (the chaos test in
//! `load-tests/tests/chaos.rs`); tests that only need a fresh database keep using the shared
//! server through `order_worker::testing`. It runs Debian's PostgreSQL 15 programs
//! (`initdb`, `postgres`, `psql` from `/usr/lib/postgresql/15/bin`, or `$PG_KIT_BIN_DIR`):
//! synchronous std code, no async runtime and no SQL driver, so it works the same from a
//! `#[test]` and from inside a tokio test.
//!
//! Modules:
//!
//! - [`binaries`] — [`PgBinaries`]: the programs, or an error that says to install
//!   `postgresql-15`; whom the server runs as (the `postgres` user when the tests run as
//!   root, since PostgreSQL refuses root).
//! - [`server`] — [`PgServer`] with [`PgOptions`]: `initdb` (trust authentication), a
//!   durable config (`fsync`, `synchronous_commit`, `full_page_writes` on), a free port;
//!   `url`, `psql`, `create_database`, `kill` (SIGKILL: the postmaster, then every process
//!   left in its data directory), `restart` (same port and data directory: crash recovery),
//!   `standby_of`, `promote`, `is_primary`.
//! - [`error`] — [`KitError`], the one error type.
//! - `wait` — bounded polling on a condition, the only way the kit waits.
//!
//! - A synchronous standby: [`PgServer::standby_of`] copies a primary (`pg_basebackup -R`,
//!   WAL streamed) into a second kit directory, starts it on another free port, sets the
//!   primary's `synchronous_standby_names = '*'` and waits until the primary counts it as
//!   synchronous; [`PgServer::promote`] (`pg_promote()`) waits until it accepts writes,
//!   [`PgServer::is_primary`] tells which is which. The orders database's failover test
//!   (`order-worker/tests/it/shards.rs`) kills a primary and promotes its standby with them.
//!
//! Invariants:
//!
//! - The kit never touches the shared PostgreSQL on 127.0.0.1:5432: every server gets a
//!   port from the OS (never 5432), listens on TCP only (no socket file), and before a
//!   start counts as done the kit checks that the server answering on the port reports
//!   its own data directory.
//! - Every process it starts is ended and reaped when its owner is dropped, panics
//!   included (the postmaster reaps its backends in an immediate shutdown; any process
//!   still working in the data directory is SIGKILLed); its directory goes with it. Only a
//!   SIGKILL of the test process itself leaves a server behind.
//! - Every wait is bounded and, when it runs out, says what it waited for and what it saw
//!   last; a failed start quotes the server's log.
//!
//! ```no_run
//! use pg_kit::PgServer;
//!
//! let mut pg = PgServer::start()?;
//! pg.create_database("orders")?;
//! pg.psql("orders", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")?;
//! pg.kill()?; // SIGKILL: no shutdown checkpoint
//! pg.restart()?; // crash recovery replays the WAL (fsynced at every commit)
//! assert_eq!(pg.psql("orders", "SELECT x FROM t")?, "1");
//! # Ok::<(), pg_kit::KitError>(())
//! ```

pub mod binaries;
pub mod error;
pub mod server;
mod wait;

pub use binaries::PgBinaries;
pub use error::KitError;
pub use server::{PgOptions, PgServer};
