//! The orders database: sales, orders and the outcome of every purchase, in SQLite (the
//! embedded default, WAL) or PostgreSQL, through sqlx with runtime-checked queries (the build
//! needs no database). Both backends run the same statements (`$N` placeholders) and have
//! their own migrations (`migrations/sqlite`, `migrations/postgres`), embedded in the binary.
//!
//! ## Shards
//!
//! [`Shard`] is one database; [`OrdersDb`], what callers hold, is one shard or several, the
//! orders sharded by sale (`shards.rs`): sale ids are global, the first shard (the control
//! shard) holds the routing table `sale_shards` and the `workers` heartbeats, each call
//! goes to its sale's shard (or asks the shards in turn for a ticket or an order, or takes
//! their union for lists and totals). **No transaction ever spans two shards**: a batch
//! over two shards is two transactions, and everything below holds per shard. All shards
//! are of one backend; with one shard every call goes straight to it.
//!
//! ## Failover of a PostgreSQL shard
//!
//! A shard URL may name a primary and its standbys (`postgres://u@h1:p1,h2:p2/db`). The
//! shard uses the host that is the primary; after a connection-level error it looks for the
//! primary again (rate-limited) and re-points its pool, and the error goes back transient,
//! so the worker's retry runs on the promoted standby (`failover.rs`). A worker acks a
//! purchase only after its commit returned; with `synchronous_commit = on` and
//! `synchronous_standby_names` naming the standby (the server's configuration, checked with
//! a warning at connect) a returned commit is on the standby too, so a promotion loses no
//! acknowledged order.
//!
//! ## How a batch of purchases becomes orders ([`OrdersDb::decide_batch`])
//!
//! One transaction per batch (per shard) (`BEGIN IMMEDIATE` in SQLite: one writer at a time,
//! its WAL checkpointed every [`SQLITE_WAL_AUTOCHECKPOINT_PAGES`], statement journals in
//! memory ([`SQLITE_TEMP_STORE`]); in PostgreSQL each sale's row is locked `FOR UPDATE`,
//! sales in ascending id order):
//!
//! 1. the outcomes already recorded for the batch's tickets are read (a redelivered purchase
//!    finds its decision and changes nothing), and the batch's sales are locked and read;
//! 2. per sale: purchases of users who already hold the sale's per-person limit N of active
//!    orders (counting those granted earlier in the batch) are rejected `already_bought`; the
//!    first `units_left` of the rest are granted, each order in its buyer's lowest free slot
//!    0..N, the others rejected `sold_out`; a sale the database does not know rejects
//!    `no_such_sale`;
//! 3. `units_left` drops by the units granted with a conditional update (`… WHERE units_left
//!    >= granted`), the last guard against oversell whatever the gateway's cache said, and a
//!    `CHECK (units_left >= 0)` behind it;
//! 4. the orders and every outcome are inserted with multi-row statements.
//!
//! On PostgreSQL a batch of one sale is five round trips whatever its size: `BEGIN`, step 1
//! in one statement, the active orders of the batch's buyers, steps 3 and 4 in one
//! statement (data-modifying `WITH`), `COMMIT` (`dialect.rs`). SQLite runs each step as its
//! own statements (in-process calls, no round trips).
//!
//! The constraints carry the invariants even if this code were wrong: one outcome per ticket
//! (primary key), one order per request id (unique), one active order per (sale, user, slot)
//! with slots 0..=9 (partial unique index and check: at most N per (sale, user), since the
//! decision only gives slots 0..N; with N = 1, one per (sale, user)), units left within
//! `0..=units` (check).
//!
//! ## Locks
//!
//! Every transaction that changes a sale's active orders takes the sale's row first (in
//! PostgreSQL `FOR UPDATE`, ascending sale ids), then the orders: batches and cancellations
//! never deadlock each other. A payment touches one order row only.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// The columns of `sales` a [`Sale`] is read from, in `sales::sale_of`'s order (a macro, so
/// statements stay `&'static str` through `concat!`).
macro_rules! sale_columns {
    () => {
        "id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, \
         ends_at_ms, token_factor_milli, per_user_limit"
    };
}

/// The columns of `workers` a [`WorkerBeat`] is read from, in `heartbeat::worker_of`'s order.
macro_rules! worker_columns {
    () => {
        "id, kind, host, pid, started_ms, beat_ms, progress_ms, handled, stopped_ms"
    };
}

/// Runs `$body` with `$p` bound to whichever pool `$db` holds (the body is compiled once
/// per backend).
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Shard::Sqlite($p) => $body,
            Shard::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` in a transaction `$tx` (committed if the body does not return early with
/// an error); `$pg` tells the body which backend it runs on.
macro_rules! in_tx {
    ($db:expr, $tx:ident, $pg:ident => $body:block) => {
        match $db {
            Shard::Sqlite(p) => {
                #[allow(unused_variables)]
                let $pg = false;
                let mut $tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            Shard::Postgres(p) => {
                #[allow(unused_variables)]
                let $pg = true;
                let mut $tx = p.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

mod by_user;
mod cancel;
mod decide;
mod dialect;
mod error;
mod failover;
mod heartbeat;
mod limits;
mod lookup;
mod orders;
mod rows;
mod sale_control;
mod sales;
mod shards;

pub use by_user::{USER_ORDERS_MAX, UserOrders};
pub use decide::{Decision, Outcome, reason};
pub use error::{DbError, DbResult};
pub use heartbeat::{WorkerAge, WorkerBeat, WorkerKind};
pub use limits::*;
pub use lookup::{LOOKUP_ORDERS_MAX, LOOKUP_QUERY_BYTES_MAX};
pub use orders::{Order, OrderStatus, Payment};
pub use rows::Cancelled;
pub use sale_control::{SaleChange, SaleEdit};
pub use sales::{NewSale, OrderCounts, OrderTotals, Sale};
pub use shards::OrdersDb;

/// Durability of SQLite commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteDurability {
    /// `synchronous=FULL`: a commit is on disk when it returns (the WAL is fsynced). The
    /// default: a worker acks purchases only after their orders are durable.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a process crash, not a power loss.
    Normal,
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Pool size (at most [`CONNECTIONS_MAX`]).
    pub max_connections: u32,
    /// SQLite commit durability.
    pub sqlite_durability: SqliteDurability,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: CONNECTIONS_DEFAULT,
            sqlite_durability: SqliteDurability::Full,
        }
    }
}

/// One orders database (a shard of [`OrdersDb`]): a pool of either backend. With one
/// `--database`, the only one.
#[derive(Debug, Clone)]
pub enum Shard {
    /// SQLite (a file, WAL).
    Sqlite(SqlitePool),
    /// PostgreSQL (on the host that was the primary when the pool last connected; see
    /// the module docs, "Failover of a PostgreSQL shard").
    Postgres(PgPool),
}

impl Shard {
    /// Opens one shard's `url` and brings its schema up to date: `sqlite:PATH` (created with
    /// its directory if missing; WAL) or `postgres://…` / `postgresql://…`, which may name
    /// several hosts (`postgres://u@h1:p1,h2:p2/db`): the pool then connects to whichever is
    /// the primary, and the returned [`failover::Failover`] re-resolves it after a
    /// connection-level error.
    async fn connect(
        url: &str,
        options: &DbOptions,
    ) -> DbResult<(Shard, Option<std::sync::Arc<failover::Failover>>)> {
        let max = options.max_connections.clamp(1, CONNECTIONS_MAX);
        let (db, hosts) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let hosts = failover::split_hosts(url)?;
            if hosts.len() > 1 {
                let f = failover::Failover::new(hosts).await?;
                let pool = f.pool(max, FAILOVER_ACQUIRE_TIMEOUT);
                (Shard::Postgres(pool), Some(f))
            } else {
                let opts = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await?;
                (Shard::Postgres(pool), None)
            }
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(DbError::Invalid("sqlite: needs a file path".into()));
            }
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DbError::Invalid(format!("creating {}: {e}", dir.display())))?;
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match options.sqlite_durability {
                    SqliteDurability::Full => SqliteSynchronous::Full,
                    SqliteDurability::Normal => SqliteSynchronous::Normal,
                })
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .pragma(
                    "wal_autocheckpoint",
                    SQLITE_WAL_AUTOCHECKPOINT_PAGES.to_string(),
                )
                // Statement journals (and temporary tables and indexes) in memory: see
                // `SQLITE_TEMP_STORE`.
                .pragma("temp_store", SQLITE_TEMP_STORE);
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            (Shard::Sqlite(pool), None)
        } else {
            return Err(DbError::Invalid(format!(
                "a database URL is sqlite:PATH or postgres://…, not {url:?}"
            )));
        };
        db.migrate().await?;
        Ok((db, hosts))
    }

    /// Another pool on the same database, of at most `max_connections` (1 ..=
    /// [`CONNECTIONS_MAX`]) connections opened as needed, whose queries wait at most
    /// [`READ_ACQUIRE_TIMEOUT`] for a connection: the gateway's request path uses one, so
    /// a flood of ticket and order reads never takes the connections the order workers need
    /// (they keep this pool). The schema is this one's (not migrated again). Close it too.
    /// (A multi-host PostgreSQL shard's sibling is built by its `Failover` instead.)
    fn sibling(&self, max_connections: u32) -> Shard {
        let max = max_connections.clamp(1, CONNECTIONS_MAX);
        match self {
            Shard::Sqlite(p) => Shard::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(READ_ACQUIRE_TIMEOUT)
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
            Shard::Postgres(p) => Shard::Postgres(
                PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(READ_ACQUIRE_TIMEOUT)
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
        }
    }

    /// Connections of this pool open now (in use or idle).
    fn connections(&self) -> u32 {
        on_db!(self, p => p.size())
    }

    async fn migrate(&self) -> DbResult<()> {
        match self {
            Shard::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await?,
            Shard::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Shard::Sqlite(_) => "sqlite",
            Shard::Postgres(_) => "postgres",
        }
    }

    /// Refreshes the planner's statistics of the orders tables (PostgreSQL: `ANALYZE`; a
    /// no-op on SQLite, whose look-ups do not depend on them). The workers call it as the
    /// tables grow, so plans never stay those of an empty table where autovacuum is off.
    /// It samples with a statistics target of [`ANALYZE_STATISTICS_TARGET`] (set for its
    /// own transaction only).
    async fn analyze(&self) -> DbResult<()> {
        if let Shard::Postgres(p) = self {
            let mut tx = p.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET LOCAL default_statistics_target = {ANALYZE_STATISTICS_TARGET}"
            )))
            .execute(&mut *tx)
            .await?;
            sqlx::query("ANALYZE orders, outcomes")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Closes the pool (waits for connections in use).
    async fn close(&self) {
        on_db!(self, p => p.close().await)
    }
}

pub(super) fn to_i64(v: u64, what: &str) -> DbResult<i64> {
    i64::try_from(v).map_err(|_| DbError::Invalid(format!("{what} out of range")))
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
