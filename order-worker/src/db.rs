//! The orders database: sales, orders and the outcome of every purchase, in SQLite (the
//! embedded default, WAL) or PostgreSQL, through sqlx with runtime-checked queries (the build
//! needs no database). Both backends run the same statements (`$N` placeholders) and have
//! their own migrations (`migrations/sqlite`, `migrations/postgres`), embedded in the binary.
//!
//! ## How a batch of purchases becomes orders ([`OrdersDb::decide_batch`])
//!
//! One transaction per batch (`BEGIN IMMEDIATE` in SQLite: one writer at a time; in
//! PostgreSQL each sale's row is locked `FOR UPDATE`, sales in ascending id order):
//!
//! 1. the outcomes already recorded for the batch's tickets are read: a redelivered purchase
//!    finds its decision and changes nothing;
//! 2. per sale: purchases of users who already hold an active order (or appear earlier in the
//!    batch) are rejected `already_bought`; the first `units_left` of the rest are granted,
//!    the others rejected `sold_out`; a sale the database does not know rejects `no_such_sale`;
//! 3. `units_left` drops by the units granted with a conditional update (`… WHERE units_left
//!    >= granted`), the last guard against oversell whatever the gateway's cache said, and a
//!    `CHECK (units_left >= 0)` behind it;
//! 4. the orders and every outcome are inserted with multi-row statements.
//!
//! The constraints carry the invariants even if this code were wrong: one outcome per ticket
//! (primary key), one order per request id (unique), one active order per (sale, user)
//! (partial unique index), units left within `0..=units` (check).
//!
//! ## Locks
//!
//! Every transaction that changes a sale's active orders takes the sale's row first (in
//! PostgreSQL `FOR UPDATE`, ascending sale ids), then the orders: batches and cancellations
//! never deadlock each other. A payment touches one order row only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};

use crate::purchase::PurchaseMessage;

/// Most purchases one [`OrdersDb::decide_batch`] takes (one transaction).
pub const BATCH_MAX: usize = 5_000;
/// Most rows one multi-row statement carries (bounded by the backends' parameter limits:
/// 9 parameters a row stays far below SQLite's 32,766 and PostgreSQL's 65,535).
pub const ROWS_PER_STATEMENT: usize = 500;
/// Default pool size.
pub const CONNECTIONS_DEFAULT: u32 = 8;
/// Most connections a pool may be given.
pub const CONNECTIONS_MAX: u32 = 64;
/// Most sales [`OrdersDb::sales`] lists.
pub const SALES_MAX: usize = 10_000;
/// Most orders one cancellation transaction handles.
pub const CANCEL_BATCH_MAX: usize = 5_000;
/// The pay window of a sale that does not name one: ten minutes.
pub const PAY_WINDOW_MS_DEFAULT: u64 = 10 * 60 * 1000;
/// Longest sale name, bytes.
pub const SALE_NAME_BYTES_MAX: usize = 200;
/// Smallest per-sale purchase-token factor ([`NewSale::token_factor`]).
pub const TOKEN_FACTOR_MIN: f64 = 0.1;
/// Largest per-sale purchase-token factor.
pub const TOKEN_FACTOR_MAX: f64 = 100.0;
/// The only units-per-person a sale may have: the stock store and the partial unique index
/// of active orders per (sale, user) hold one unit per person.
pub const PER_USER_LIMIT_SUPPORTED: u32 = 1;
/// How long a SQLite connection waits for the write lock before failing (busy timeout).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows of the `workers` table not beaten for this long are pruned: one hour.
pub const WORKER_ROWS_TTL_MS: u64 = 60 * 60 * 1000;
/// [`OrdersDb::heartbeat`] prunes stale rows when its time falls in the first
/// [`WORKER_PRUNE_WINDOW_MS`] of each period this long: about once a minute for a process
/// beating every second, with no state to keep.
pub const WORKER_PRUNE_EVERY_MS: u64 = 60 * 1000;
/// See [`WORKER_PRUNE_EVERY_MS`]; the heartbeat period, so every beating process hits it.
pub const WORKER_PRUNE_WINDOW_MS: u64 = 1000;
/// Most stale rows one pruning deletes (the next one takes the rest).
pub const WORKER_PRUNE_ROWS_MAX: usize = 1_000;
/// Most rows [`OrdersDb::workers`] lists.
pub const WORKERS_LISTED_MAX: usize = 200;
/// Most beats one [`OrdersDb::heartbeat`] (or ids one [`OrdersDb::mark_stopped`]) takes:
/// a whole crew.
pub const HEARTBEAT_ROWS_MAX: usize = crate::crew::WORKERS_MAX + crate::crew::CANCELLERS_MAX;
/// Longest worker id, bytes.
pub const WORKER_ID_BYTES_MAX: usize = 200;
/// Longest host name in a worker's row, bytes.
pub const WORKER_HOST_BYTES_MAX: usize = 255;

/// Rejection reasons recorded in `outcomes.reason`.
pub mod reason {
    /// No unit left in the database.
    pub const SOLD_OUT: &str = "sold_out";
    /// The user already holds an active order of the sale (one per person).
    pub const ALREADY_BOUGHT: &str = "already_bought";
    /// The database does not know the sale.
    pub const NO_SUCH_SALE: &str = "no_such_sale";
    /// The purchase went to the dead letters and an operator discarded it.
    pub const DISCARDED: &str = "discarded";
}

/// Everything a database operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database or the driver failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A caller-supplied argument is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The thing exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A sale's units left changed under a batch that held its lock (must not happen; the
    /// batch is rolled back and retried).
    #[error("sale {0}: units left changed under the batch")]
    Raced(u64),
}

impl DbError {
    /// Whether retrying the same operation later may succeed: connection and pool trouble,
    /// lock timeouts, serialization failures and deadlocks, and unique-key races between
    /// workers (the retry finds the winner's outcome).
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sql(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(d) => {
                    let code = d.code().unwrap_or_default();
                    let code = code.as_ref();
                    // PostgreSQL: connection exceptions (08), transaction rollbacks such as
                    // serialization failures and deadlocks (40), insufficient resources
                    // (53), operator intervention such as a shutdown or a restart (57P),
                    // lock not available, and unique violations (a race between workers:
                    // the retry finds the winner's outcome).
                    let pg = code.starts_with("08")
                        || code.starts_with("40")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "55P03"
                        || code == "23505";
                    // SQLite (numeric, extended codes included): busy, locked, I/O error,
                    // disk full (primary codes 5, 6, 10, 13), unique and primary-key
                    // violations (2067, 1555).
                    let sqlite = code.parse::<u32>().is_ok_and(|n| {
                        matches!(n & 0xff, 5 | 6 | 10 | 13) || n == 2067 || n == 1555
                    });
                    if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some()
                    {
                        pg
                    } else {
                        sqlite
                    }
                }
                _ => false,
            },
            DbError::Raced(_) => true,
            _ => false,
        }
    }
}

/// Result with [`DbError`].
pub type DbResult<T> = Result<T, DbError>;

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

/// The orders database: a pool of either backend.
#[derive(Debug, Clone)]
pub enum OrdersDb {
    /// SQLite (a file, WAL).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// The columns of `sales` a [`Sale`] is read from, in [`sale_of`]'s order (a macro, so
/// statements stay `&'static str` through `concat!`).
macro_rules! sale_columns {
    () => {
        "id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, \
         ends_at_ms, token_factor_milli, per_user_limit"
    };
}

/// The columns of `workers` a [`WorkerBeat`] is read from, in [`worker_of`]'s order.
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
            OrdersDb::Sqlite($p) => $body,
            OrdersDb::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` in a transaction `$tx` (committed if the body does not return early with
/// an error); `$pg` tells the body which backend it runs on.
macro_rules! in_tx {
    ($db:expr, $tx:ident, $pg:ident => $body:block) => {
        match $db {
            OrdersDb::Sqlite(p) => {
                #[allow(unused_variables)]
                let $pg = false;
                let mut $tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            OrdersDb::Postgres(p) => {
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

/// A sale as an admin defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSale {
    /// Id (chosen by the admin).
    pub id: u64,
    /// What is sold (1..=[`SALE_NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Units on sale (1..=`inventory::UNITS_MAX`).
    pub units: u64,
    /// Start, ms since the Unix epoch.
    pub starts_at_ms: u64,
    /// How long a buyer has to pay, ms ([`PAY_WINDOW_MS_DEFAULT`] if absent).
    #[serde(default)]
    pub pay_window_ms: Option<u64>,
    /// When the sale stops taking purchases, ms since the Unix epoch (after
    /// `starts_at_ms`); `None`: open until sold out.
    #[serde(default)]
    pub ends_at_ms: Option<u64>,
    /// The sale's own purchase-token factor ([`TOKEN_FACTOR_MIN`]..=[`TOKEN_FACTOR_MAX`],
    /// stored to a thousandth), overriding the gateway's global one; `None`: the global one.
    #[serde(default)]
    pub token_factor: Option<f64>,
    /// Units one person may hold; `None`: 1. Only 1 is supported
    /// ([`PER_USER_LIMIT_SUPPORTED`]).
    #[serde(default)]
    pub per_user_limit: Option<u32>,
}

/// A sale as the database holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sale {
    /// Id.
    pub id: u64,
    /// What is sold.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Units on sale.
    pub units: u64,
    /// Units not taken by an active order.
    pub units_left: u64,
    /// Start, ms since the Unix epoch.
    pub starts_at_ms: u64,
    /// How long a buyer has to pay, ms.
    pub pay_window_ms: u64,
    /// When the sale stops taking purchases, ms since the Unix epoch; `None`: open until
    /// sold out.
    pub ends_at_ms: Option<u64>,
    /// The sale's own purchase-token factor (to a thousandth); `None`: the gateway's global
    /// one.
    pub token_factor: Option<f64>,
    /// Units one person may hold (always [`PER_USER_LIMIT_SUPPORTED`] for now).
    pub per_user_limit: u32,
}

/// What a member of a crew does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// An order worker ([`crate::worker::OrderWorker`]).
    Worker,
    /// A canceller ([`crate::canceller::Canceller`]).
    Canceller,
}

impl WorkerKind {
    /// The name in the `workers.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Worker => "worker",
            WorkerKind::Canceller => "canceller",
        }
    }

    fn parse(s: &str) -> DbResult<WorkerKind> {
        match s {
            "worker" => Ok(WorkerKind::Worker),
            "canceller" => Ok(WorkerKind::Canceller),
            other => Err(DbError::Invalid(format!("unknown worker kind {other:?}"))),
        }
    }
}

/// A row of the `workers` table: a worker's or canceller's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    /// Stable id, unique across processes (`{host}-{pid}-{kind}-{n}`).
    pub id: String,
    /// Worker or canceller.
    pub kind: WorkerKind,
    /// Host of its process.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Its last heartbeat, ms since the Unix epoch ([`OrdersDb::heartbeat`] writes its
    /// `now_ms` here, whatever the beat says).
    pub beat_ms: u64,
    /// The last time its loop made a step (fetched, decided, or a long poll ran out): an
    /// old value under fresh beats means the loop is stuck.
    pub progress_ms: u64,
    /// Messages it finished: purchases decided (workers), orders cancelled (cancellers).
    pub handled: u64,
    /// When it stopped, if it did.
    pub stopped_ms: Option<u64>,
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for payment until its pay-by time.
    Pending,
    /// Paid.
    Paid,
    /// Cancelled (unpaid at its pay-by time); its unit went back on sale.
    Cancelled,
}

impl OrderStatus {
    fn parse(s: &str) -> DbResult<OrderStatus> {
        match s {
            "pending" => Ok(OrderStatus::Pending),
            "paid" => Ok(OrderStatus::Paid),
            "cancelled" => Ok(OrderStatus::Cancelled),
            other => Err(DbError::Invalid(format!("unknown order status {other:?}"))),
        }
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// Id (a UUID).
    pub id: String,
    /// The purchase's ticket (its request id).
    pub ticket: String,
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// Price, cents.
    pub price_cents: u64,
    /// Status.
    pub status: OrderStatus,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Pay by this time or it is cancelled.
    pub pay_by_ms: u64,
    /// When it was paid.
    pub paid_ms: Option<u64>,
    /// When it was cancelled.
    pub cancelled_ms: Option<u64>,
}

/// What became of a purchase, as the worker decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An order was created.
    Ordered {
        /// The order.
        order_id: String,
        /// Its pay-by time.
        pay_by_ms: u64,
        /// Decided by this call (false: found from an earlier delivery).
        fresh: bool,
    },
    /// Refused, with a reason from [`reason`].
    Rejected {
        /// Why.
        reason: String,
        /// Decided by this call.
        fresh: bool,
    },
}

impl Decision {
    /// Whether this call made the decision (not a redelivery's look-up).
    pub fn fresh(&self) -> bool {
        match self {
            Decision::Ordered { fresh, .. } | Decision::Rejected { fresh, .. } => *fresh,
        }
    }
    fn stale(&self) -> Decision {
        let mut d = self.clone();
        match &mut d {
            Decision::Ordered { fresh, .. } | Decision::Rejected { fresh, .. } => *fresh = false,
        }
        d
    }
}

/// A purchase's recorded outcome (what `GET /api/tickets/{t}` reports once decided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// `Some(order id)` if ordered.
    pub order_id: Option<String>,
    /// `Some(reason)` if rejected.
    pub reason: Option<String>,
}

/// An order cancelled by [`OrdersDb::cancel_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The order.
    pub order_id: String,
    /// Its sale.
    pub sale: u64,
    /// Its buyer (whose unit goes back on sale).
    pub user: String,
    /// Its ticket (the tag of the buyer's reservation in the stock store).
    pub ticket: String,
}

/// What a payment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payment {
    /// Pending → paid, now.
    Paid(Order),
    /// It was paid before (an idempotent repeat).
    AlreadyPaid(Order),
    /// Cancelled: the cancellation won.
    Cancelled(Order),
    /// Still pending but its pay-by time has passed: the cancellation will take it.
    TooLate(Order),
    /// No such order for this user.
    NotFound,
}

/// Orders of every sale by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTotals {
    /// Orders ever created (any status).
    pub created: u64,
    /// Pending.
    pub pending: u64,
    /// Paid.
    pub paid: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// Orders of a sale by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OrderCounts {
    /// Pending.
    pub pending: u64,
    /// Paid.
    pub paid: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl OrderCounts {
    /// Pending + paid.
    pub fn active(&self) -> u64 {
        self.pending + self.paid
    }
}

fn to_i64(v: u64, what: &str) -> DbResult<i64> {
    i64::try_from(v).map_err(|_| DbError::Invalid(format!("{what} out of range")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

struct NewOrder {
    id: String,
    ticket: String,
    sale: i64,
    user: String,
    price_cents: i64,
    pay_by_ms: i64,
}

struct NewOutcome<'a> {
    ticket: &'a str,
    sale: i64,
    user: &'a str,
    order_id: Option<String>,
    reason: Option<&'static str>,
}

impl OrdersDb {
    /// Opens `url` and brings its schema up to date: `sqlite:PATH` (created with its
    /// directory if missing; WAL) or `postgres://…` / `postgresql://…`.
    pub async fn connect(url: &str, options: &DbOptions) -> DbResult<OrdersDb> {
        let max = options.max_connections.clamp(1, CONNECTIONS_MAX);
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            OrdersDb::Postgres(pool)
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
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            OrdersDb::Sqlite(pool)
        } else {
            return Err(DbError::Invalid(format!(
                "a database URL is sqlite:PATH or postgres://…, not {url:?}"
            )));
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> DbResult<()> {
        match self {
            OrdersDb::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await?,
            OrdersDb::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            OrdersDb::Sqlite(_) => "sqlite",
            OrdersDb::Postgres(_) => "postgres",
        }
    }

    /// Refreshes the planner's statistics of the orders tables (PostgreSQL: `ANALYZE`; a
    /// no-op on SQLite, whose look-ups do not depend on them). The workers call it as the
    /// tables grow, so plans never stay those of an empty table where autovacuum is off.
    pub async fn analyze(&self) -> DbResult<()> {
        if let OrdersDb::Postgres(p) = self {
            sqlx::query("ANALYZE orders, outcomes").execute(p).await?;
        }
        Ok(())
    }

    /// Closes the pool (waits for connections in use).
    pub async fn close(&self) {
        on_db!(self, p => p.close().await)
    }

    /// Creates a sale with all its units left. `Conflict` if the id is taken.
    pub async fn create_sale(&self, sale: &NewSale, now_ms: u64) -> DbResult<Sale> {
        if sale.name.is_empty() || sale.name.len() > SALE_NAME_BYTES_MAX {
            return Err(DbError::Invalid(format!(
                "a sale name is 1..={SALE_NAME_BYTES_MAX} bytes"
            )));
        }
        if sale.units == 0 || sale.units > inventory::UNITS_MAX {
            return Err(DbError::Invalid(format!(
                "units must be 1..={}",
                inventory::UNITS_MAX
            )));
        }
        let window = sale.pay_window_ms.unwrap_or(PAY_WINDOW_MS_DEFAULT);
        if window == 0 || window > 7 * 24 * 3600 * 1000 {
            return Err(DbError::Invalid("pay_window_ms must be 1..=7 days".into()));
        }
        let settings = SaleSettings::of(sale)?;
        let (id, price, units, starts) = (
            to_i64(sale.id, "sale id")?,
            to_i64(sale.price_cents, "price")?,
            to_i64(sale.units, "units")?,
            to_i64(sale.starts_at_ms, "start")?,
        );
        let ends = settings.ends_at_ms.map(|e| to_i64(e, "end")).transpose()?;
        // At most SALES_MAX sales (what the gateways list and serve), checked in the insert.
        let done = on_db!(self, p => sqlx::query(
            "INSERT INTO sales (id, name, price_cents, units, units_left, starts_at_ms, pay_window_ms, created_ms, \
                                ends_at_ms, token_factor_milli, per_user_limit) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12 WHERE (SELECT COUNT(*) FROM sales) < $9 \
             ON CONFLICT (id) DO NOTHING")
            .bind(id).bind(&sale.name).bind(price).bind(units).bind(units).bind(starts)
            .bind(to_i64(window, "pay window")?).bind(to_i64(now_ms, "now")?)
            .bind(SALES_MAX as i64)
            .bind(ends).bind(settings.token_factor_milli).bind(settings.per_user_limit)
            .execute(p).await?.rows_affected());
        if done == 0 {
            if self.sale(sale.id).await?.is_some() {
                return Err(DbError::Conflict(format!("sale {} exists", sale.id)));
            }
            return Err(DbError::Invalid(format!("at most {SALES_MAX} sales")));
        }
        Ok(Sale {
            id: sale.id,
            name: sale.name.clone(),
            price_cents: sale.price_cents,
            units: sale.units,
            units_left: sale.units,
            starts_at_ms: sale.starts_at_ms,
            pay_window_ms: window,
            ends_at_ms: settings.ends_at_ms,
            token_factor: settings.token_factor_milli.map(factor_of_milli),
            per_user_limit: PER_USER_LIMIT_SUPPORTED,
        })
    }

    /// One sale.
    pub async fn sale(&self, id: u64) -> DbResult<Option<Sale>> {
        let id = to_i64(id, "sale id")?;
        let row = on_db!(self, p => {
            let r = sqlx::query(concat!("SELECT ", sale_columns!(), " FROM sales WHERE id = $1"))
                .bind(id).fetch_optional(p).await?;
            r.map(|r| sale_of(&r)).transpose()?
        });
        Ok(row)
    }

    /// Sales by id (at most [`SALES_MAX`]).
    pub async fn sales(&self) -> DbResult<Vec<Sale>> {
        on_db!(self, p => {
            let rows = sqlx::query(
                concat!("SELECT ", sale_columns!(), " FROM sales ORDER BY id LIMIT $1"))
                .bind(SALES_MAX as i64).fetch_all(p).await?;
            rows.iter().map(sale_of).collect()
        })
    }

    /// The users holding an active order of `sale` (the inventory's holders at rest).
    pub async fn active_holders(&self, sale: u64) -> DbResult<Vec<String>> {
        let sale = to_i64(sale, "sale id")?;
        on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT user_id FROM orders WHERE sale_id = $1 AND status <> 'cancelled'")
                .bind(sale).fetch_all(p).await?;
            rows.iter().map(|r| r.try_get::<String, _>(0).map_err(DbError::from)).collect()
        })
    }

    /// The users holding an active order of `sale`, each with its ticket: the stock
    /// store's holders and their reservation tags at rest.
    pub async fn active_holder_tags(&self, sale: u64) -> DbResult<Vec<inventory::Holder>> {
        let sale = to_i64(sale, "sale id")?;
        on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT user_id, request_id FROM orders WHERE sale_id = $1 AND status <> 'cancelled'")
                .bind(sale).fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok(inventory::Holder { user: r.try_get(0)?, tag: r.try_get(1)? }))
                .collect()
        })
    }

    /// Those of `order_ids` that are cancelled (whenever that happened), for the release
    /// of their stock units (tagged, so repeating it is harmless).
    pub async fn cancelled_among(&self, order_ids: &[String]) -> DbResult<Vec<Cancelled>> {
        if order_ids.len() > CANCEL_BATCH_MAX {
            return Err(DbError::Invalid(format!(
                "at most {CANCEL_BATCH_MAX} orders a look-up"
            )));
        }
        on_db!(self, p => {
            let mut conn = p.acquire().await?;
            Dialect::cancelled_among(&mut *conn, order_ids).await
        })
    }

    /// Orders of `sale` by status.
    pub async fn order_counts(&self, sale: u64) -> DbResult<OrderCounts> {
        let sale = to_i64(sale, "sale id")?;
        let rows: Vec<(String, i64)> = on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT status, COUNT(*) FROM orders WHERE sale_id = $1 GROUP BY status")
                .bind(sale).fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?))).collect::<DbResult<_>>()?
        });
        let mut c = OrderCounts::default();
        for (status, n) in rows {
            match OrderStatus::parse(&status)? {
                OrderStatus::Pending => c.pending = to_u64(n),
                OrderStatus::Paid => c.paid = to_u64(n),
                OrderStatus::Cancelled => c.cancelled = to_u64(n),
            }
        }
        Ok(c)
    }

    /// Orders of every sale by status (the dashboard's totals; one scan of `orders`).
    pub async fn order_totals(&self) -> DbResult<OrderTotals> {
        let rows: Vec<(String, i64)> = on_db!(self, p => {
            let rows = sqlx::query("SELECT status, COUNT(*) FROM orders GROUP BY status")
                .fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?))).collect::<DbResult<_>>()?
        });
        let mut t = OrderTotals::default();
        for (status, n) in rows {
            let n = to_u64(n);
            t.created += n;
            match OrderStatus::parse(&status)? {
                OrderStatus::Pending => t.pending = n,
                OrderStatus::Paid => t.paid = n,
                OrderStatus::Cancelled => t.cancelled = n,
            }
        }
        Ok(t)
    }

    /// Outcomes recorded for `sale`, ordered and rejected (audits and tests).
    pub async fn outcome_counts(&self, sale: u64) -> DbResult<(u64, u64)> {
        let sale = to_i64(sale, "sale id")?;
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT COALESCE(SUM(CASE WHEN outcome = 'ordered' THEN 1 ELSE 0 END), 0), \
                        COALESCE(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END), 0) \
                 FROM outcomes WHERE sale_id = $1")
                .bind(sale).fetch_one(p).await?;
            Ok((to_u64(r.try_get::<i64, _>(0)?), to_u64(r.try_get::<i64, _>(1)?)))
        })
    }

    /// How a ticket ended, if a worker has decided it.
    pub async fn outcome(&self, ticket: &str) -> DbResult<Option<Outcome>> {
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT sale_id, user_id, order_id, reason FROM outcomes WHERE ticket = $1")
                .bind(ticket).fetch_optional(p).await?;
            match r {
                None => Ok(None),
                Some(r) => Ok(Some(Outcome {
                    sale: to_u64(r.try_get::<i64, _>(0)?),
                    user: r.try_get(1)?,
                    order_id: r.try_get(2)?,
                    reason: r.try_get(3)?,
                })),
            }
        })
    }

    /// One order.
    pub async fn order(&self, id: &str) -> DbResult<Option<Order>> {
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, paid_ms, cancelled_ms \
                 FROM orders WHERE id = $1")
                .bind(id).fetch_optional(p).await?;
            r.map(|r| order_of(&r)).transpose()
        })
    }

    /// Decides a batch of purchases in one transaction (see the module docs); one decision
    /// per purchase, in order. A ticket seen before (in an earlier transaction or earlier in
    /// this batch) gets its recorded decision with `fresh: false` and changes nothing.
    pub async fn decide_batch(
        &self,
        purchases: &[PurchaseMessage],
        now_ms: u64,
    ) -> DbResult<Vec<Decision>> {
        if purchases.len() > BATCH_MAX {
            return Err(DbError::Invalid(format!(
                "at most {BATCH_MAX} purchases a batch"
            )));
        }
        if purchases.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_i64(now_ms, "now")?;
        // The first occurrence of each ticket in the batch.
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(purchases.len());
        for (i, p) in purchases.iter().enumerate() {
            first.entry(p.ticket.as_str()).or_insert(i);
        }
        let tickets: Vec<&str> = first.keys().copied().collect();
        let mut decided: Vec<Option<Decision>> = vec![None; purchases.len()];
        in_tx!(self, tx, pg => {
            // 1. Decisions recorded by earlier deliveries.
            for (ticket, order_id, reason, pay_by) in Dialect::known(&mut *tx, &tickets).await? {
                let d = match (order_id, reason, pay_by) {
                    (Some(order_id), _, Some(pay_by)) => Decision::Ordered {
                        order_id,
                        pay_by_ms: to_u64(pay_by),
                        fresh: false,
                    },
                    (None, Some(reason), _) => Decision::Rejected { reason, fresh: false },
                    _ => return Err(DbError::Invalid(format!("outcome of {ticket} is inconsistent"))),
                };
                if let Some(&i) = first.get(ticket.as_str()) {
                    decided[i] = Some(d);
                }
            }
            // 2. New purchases, by sale (ascending: the lock order).
            let mut by_sale: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, p) in purchases.iter().enumerate() {
                if first.get(p.ticket.as_str()) == Some(&i) && decided[i].is_none() {
                    by_sale.entry(p.sale).or_default().push(i);
                }
            }
            let mut orders: Vec<NewOrder> = Vec::new();
            let mut outcomes: Vec<NewOutcome<'_>> = Vec::new();
            let mut rejected: Vec<(usize, &'static str)> = Vec::new();
            for (sale, idxs) in &by_sale {
                let sale_i = to_i64(*sale, "sale id")?;
                let row = sqlx::query(if pg {
                    "SELECT units_left, price_cents, pay_window_ms FROM sales WHERE id = $1 FOR UPDATE"
                } else {
                    "SELECT units_left, price_cents, pay_window_ms FROM sales WHERE id = $1"
                })
                .bind(sale_i)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    for &i in idxs {
                        rejected.push((i, reason::NO_SUCH_SALE));
                    }
                    continue;
                };
                let left: i64 = row.try_get(0)?;
                let price: i64 = row.try_get(1)?;
                let window: i64 = row.try_get(2)?;
                // The batch's users, once each, for the look-up of active orders.
                let mut seen: HashSet<&str> = HashSet::new();
                let users: Vec<&str> = idxs
                    .iter()
                    .map(|&i| purchases[i].user.as_str())
                    .filter(|u| seen.insert(u))
                    .collect();
                // Users already holding an active order.
                let active = Dialect::active_users(&mut *tx, sale_i, &users).await?;
                // In queue order: a user holding an order (from before, or granted earlier
                // in this batch) is refused; the first `left` others get a unit; the rest
                // find it sold out (a repeat of a user who found it sold out too).
                let mut granted: i64 = 0;
                let mut granted_users: HashSet<&str> = HashSet::new();
                for &i in idxs {
                    let p = &purchases[i];
                    if active.contains(&p.user) || granted_users.contains(p.user.as_str()) {
                        rejected.push((i, reason::ALREADY_BOUGHT));
                    } else if granted < left {
                        granted += 1;
                        granted_users.insert(p.user.as_str());
                        let order_id = uuid::Uuid::now_v7().to_string();
                        let pay_by = now.saturating_add(window);
                        decided[i] = Some(Decision::Ordered {
                            order_id: order_id.clone(),
                            pay_by_ms: to_u64(pay_by),
                            fresh: true,
                        });
                        orders.push(NewOrder {
                            id: order_id,
                            ticket: p.ticket.clone(),
                            sale: sale_i,
                            user: p.user.clone(),
                            price_cents: price,
                            pay_by_ms: pay_by,
                        });
                    } else {
                        rejected.push((i, reason::SOLD_OUT));
                    }
                }
                if granted > 0 {
                    let r = sqlx::query(
                        "UPDATE sales SET units_left = units_left - $1 WHERE id = $2 AND units_left >= $3")
                        .bind(granted).bind(sale_i).bind(granted)
                        .execute(&mut *tx).await?;
                    if r.rows_affected() != 1 {
                        return Err(DbError::Raced(*sale));
                    }
                }
            }
            for (i, why) in rejected {
                decided[i] = Some(Decision::Rejected { reason: why.to_string(), fresh: true });
                let p = &purchases[i];
                outcomes.push(NewOutcome { ticket: &p.ticket, sale: to_i64(p.sale, "sale id")?, user: &p.user, order_id: None, reason: Some(why) });
            }
            for o in &orders {
                outcomes.push(NewOutcome {
                    ticket: &o.ticket,
                    sale: o.sale,
                    user: &o.user,
                    order_id: Some(o.id.clone()),
                    reason: None,
                });
            }
            // 3. The orders, then every outcome.
            Dialect::insert_orders(&mut *tx, &orders, now).await?;
            Dialect::insert_outcomes(&mut *tx, &outcomes, now).await?;
        });
        // Repeats of a ticket inside the batch share its decision.
        let mut out = Vec::with_capacity(purchases.len());
        for (i, p) in purchases.iter().enumerate() {
            let at = first.get(p.ticket.as_str()).copied().unwrap_or(i);
            let d =
                decided.get(at).cloned().flatten().ok_or_else(|| {
                    DbError::Invalid(format!("ticket {} left undecided", p.ticket))
                })?;
            out.push(if at == i { d } else { d.stale() });
        }
        Ok(out)
    }

    /// Cancels those of `order_ids` that are still pending with their pay-by time at or
    /// before `now_ms`, and puts their units back in the sales' units left, in one
    /// transaction. Returns the orders it cancelled (not those already paid, cancelled, or
    /// not yet due).
    pub async fn cancel_due(&self, order_ids: &[String], now_ms: u64) -> DbResult<Vec<Cancelled>> {
        if order_ids.len() > CANCEL_BATCH_MAX {
            return Err(DbError::Invalid(format!(
                "at most {CANCEL_BATCH_MAX} orders a cancellation"
            )));
        }
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_i64(now_ms, "now")?;
        let mut cancelled = Vec::new();
        in_tx!(self, tx, pg => {
            // The sales' rows first (the lock order), then the orders.
            let mut sales: Vec<i64> = Dialect::sales_of(&mut *tx, order_ids).await?;
            sales.sort_unstable();
            sales.dedup();
            if pg {
                for s in &sales {
                    sqlx::query("SELECT id FROM sales WHERE id = $1 FOR UPDATE")
                        .bind(*s).fetch_optional(&mut *tx).await?;
                }
            }
            let mut per_sale: BTreeMap<i64, i64> = BTreeMap::new();
            for c in Dialect::cancel_pending(&mut *tx, order_ids, now).await? {
                *per_sale.entry(to_i64(c.sale, "sale id")?).or_default() += 1;
                cancelled.push(c);
            }
            for (sale, n) in per_sale {
                sqlx::query("UPDATE sales SET units_left = units_left + $1 WHERE id = $2")
                    .bind(n).bind(sale).execute(&mut *tx).await?;
            }
        });
        Ok(cancelled)
    }

    /// Up to `limit` pending orders whose pay-by time is at or before `now_ms`, oldest
    /// deadline first (the sweep's backstop for lost pay-by messages).
    pub async fn overdue(&self, now_ms: u64, limit: usize) -> DbResult<Vec<String>> {
        let now = to_i64(now_ms, "now")?;
        let limit = limit.min(CANCEL_BATCH_MAX) as i64;
        on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT id FROM orders WHERE status = 'pending' AND pay_by_ms <= $1 ORDER BY pay_by_ms LIMIT $2")
                .bind(now).bind(limit).fetch_all(p).await?;
            rows.iter().map(|r| r.try_get::<String, _>(0).map_err(DbError::from)).collect()
        })
    }

    /// Records `ticket` as rejected with `why` unless it is decided already (an operator
    /// discarding a dead-lettered purchase); returns whether this recorded it.
    pub async fn record_rejection(
        &self,
        purchase: &PurchaseMessage,
        why: &str,
        now_ms: u64,
    ) -> DbResult<bool> {
        let (sale, now) = (to_i64(purchase.sale, "sale id")?, to_i64(now_ms, "now")?);
        let n = on_db!(self, p => sqlx::query(
            "INSERT INTO outcomes (ticket, sale_id, user_id, outcome, order_id, reason, decided_ms) \
             VALUES ($1, $2, $3, 'rejected', NULL, $4, $5) ON CONFLICT (ticket) DO NOTHING")
            .bind(&purchase.ticket).bind(sale).bind(&purchase.user).bind(why).bind(now)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Whether `user` holds an active order of `sale`.
    pub async fn holds_active(&self, sale: u64, user: &str) -> DbResult<bool> {
        let sale = to_i64(sale, "sale id")?;
        on_db!(self, p => {
            let r = sqlx::query(
                "SELECT 1 FROM orders WHERE sale_id = $1 AND user_id = $2 AND status <> 'cancelled'")
                .bind(sale).bind(user).fetch_optional(p).await?;
            Ok(r.is_some())
        })
    }

    /// Pays `user`'s order `id`: pending → paid in one conditional update, only before its
    /// pay-by time. Exactly one of a payment and the cancellation ever succeeds.
    pub async fn pay(&self, id: &str, user: &str, now_ms: u64) -> DbResult<Payment> {
        let now = to_i64(now_ms, "now")?;
        let paid = on_db!(self, p => sqlx::query(
            "UPDATE orders SET status = 'paid', paid_ms = $1 \
             WHERE id = $2 AND user_id = $3 AND status = 'pending' AND pay_by_ms > $4")
            .bind(now).bind(id).bind(user).bind(now).execute(p).await?.rows_affected());
        let order = match self.order(id).await? {
            Some(o) if o.user == user => o,
            _ => return Ok(Payment::NotFound),
        };
        Ok(match (paid, order.status) {
            (1, OrderStatus::Paid) => Payment::Paid(order),
            (_, OrderStatus::Paid) => Payment::AlreadyPaid(order),
            (_, OrderStatus::Cancelled) => Payment::Cancelled(order),
            (_, OrderStatus::Pending) => Payment::TooLate(order),
        })
    }

    /// Writes the heartbeats of a process's crew (at most [`HEARTBEAT_ROWS_MAX`]) in one
    /// transaction: each member's row is inserted or replaced, with `beat_ms = now_ms`.
    /// When `now_ms` falls in the first [`WORKER_PRUNE_WINDOW_MS`] of a
    /// [`WORKER_PRUNE_EVERY_MS`] period, it also prunes rows not beaten for
    /// [`WORKER_ROWS_TTL_MS`] (see [`OrdersDb::prune_workers`]). Returns the rows pruned.
    pub async fn heartbeat(&self, beats: &[WorkerBeat], now_ms: u64) -> DbResult<u64> {
        if beats.len() > HEARTBEAT_ROWS_MAX {
            return Err(DbError::Invalid(format!(
                "at most {HEARTBEAT_ROWS_MAX} beats a heartbeat"
            )));
        }
        let now = to_i64(now_ms, "now")?;
        let mut rows = Vec::with_capacity(beats.len());
        for b in beats {
            if b.id.is_empty() || b.id.len() > WORKER_ID_BYTES_MAX {
                return Err(DbError::Invalid(format!(
                    "a worker id is 1..={WORKER_ID_BYTES_MAX} bytes"
                )));
            }
            if b.host.len() > WORKER_HOST_BYTES_MAX {
                return Err(DbError::Invalid(format!(
                    "a host name is at most {WORKER_HOST_BYTES_MAX} bytes"
                )));
            }
            rows.push((
                b,
                to_i64(b.started_ms, "start")?,
                to_i64(b.progress_ms, "progress")?,
                to_i64(b.handled, "handled")?,
                b.stopped_ms.map(|s| to_i64(s, "stop")).transpose()?,
            ));
        }
        // One lock order for every process (PostgreSQL row locks).
        rows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let prune = now_ms % WORKER_PRUNE_EVERY_MS < WORKER_PRUNE_WINDOW_MS;
        let cutoff = now.saturating_sub(to_i64(WORKER_ROWS_TTL_MS, "ttl")?);
        let pruned = in_tx!(self, tx, pg => {
            for (b, started, progress, handled, stopped) in &rows {
                sqlx::query(
                    "INSERT INTO workers (id, kind, host, pid, started_ms, beat_ms, progress_ms, handled, stopped_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, host = excluded.host, \
                         pid = excluded.pid, started_ms = excluded.started_ms, beat_ms = excluded.beat_ms, \
                         progress_ms = excluded.progress_ms, handled = excluded.handled, \
                         stopped_ms = excluded.stopped_ms")
                    .bind(b.id.as_str()).bind(b.kind.as_str()).bind(b.host.as_str())
                    .bind(i64::from(b.pid)).bind(*started).bind(now).bind(*progress)
                    .bind(*handled).bind(*stopped)
                    .execute(&mut *tx).await?;
            }
            if prune {
                sqlx::query(
                    "DELETE FROM workers WHERE id IN \
                     (SELECT id FROM workers WHERE beat_ms < $1 ORDER BY beat_ms LIMIT $2)")
                    .bind(cutoff).bind(WORKER_PRUNE_ROWS_MAX as i64)
                    .execute(&mut *tx).await?.rows_affected()
            } else {
                0
            }
        });
        Ok(pruned)
    }

    /// Deletes up to [`WORKER_PRUNE_ROWS_MAX`] rows of `workers` not beaten for
    /// [`WORKER_ROWS_TTL_MS`] before `now_ms` (oldest first); returns how many.
    pub async fn prune_workers(&self, now_ms: u64) -> DbResult<u64> {
        let cutoff = to_i64(now_ms.saturating_sub(WORKER_ROWS_TTL_MS), "now")?;
        let n = on_db!(self, p => sqlx::query(
            "DELETE FROM workers WHERE id IN \
             (SELECT id FROM workers WHERE beat_ms < $1 ORDER BY beat_ms LIMIT $2)")
            .bind(cutoff).bind(WORKER_PRUNE_ROWS_MAX as i64)
            .execute(p).await?.rows_affected());
        Ok(n)
    }

    /// The workers and cancellers of every process, newest beat first (ties by id), at most
    /// `limit` (itself at most [`WORKERS_LISTED_MAX`]).
    pub async fn workers(&self, limit: usize) -> DbResult<Vec<WorkerBeat>> {
        let limit = limit.min(WORKERS_LISTED_MAX) as i64;
        on_db!(self, p => {
            let rows = sqlx::query(concat!(
                "SELECT ", worker_columns!(), " FROM workers ORDER BY beat_ms DESC, id LIMIT $1"))
                .bind(limit).fetch_all(p).await?;
            rows.iter().map(worker_of).collect()
        })
    }

    /// Marks these workers stopped at `now_ms` (also their last beat); at most
    /// [`HEARTBEAT_ROWS_MAX`] ids. Returns the rows it marked (unknown ids are skipped).
    pub async fn mark_stopped(&self, ids: &[String], now_ms: u64) -> DbResult<u64> {
        if ids.len() > HEARTBEAT_ROWS_MAX {
            return Err(DbError::Invalid(format!(
                "at most {HEARTBEAT_ROWS_MAX} ids a call"
            )));
        }
        let now = to_i64(now_ms, "now")?;
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let marked = in_tx!(self, tx, pg => {
            let mut marked = 0;
            for id in &ids {
                marked += sqlx::query(
                    "UPDATE workers SET stopped_ms = $1, beat_ms = $2 WHERE id = $3")
                    .bind(now).bind(now).bind(*id)
                    .execute(&mut *tx).await?.rows_affected();
            }
            marked
        });
        Ok(marked)
    }
}

/// Reads a [`Sale`] from a row of [`sale_columns!`].
fn sale_of<R: Row>(r: &R) -> DbResult<Sale>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i32>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Sale {
        id: to_u64(r.try_get::<i64, _>(0)?),
        name: r.try_get(1)?,
        price_cents: to_u64(r.try_get::<i64, _>(2)?),
        units: to_u64(r.try_get::<i64, _>(3)?),
        units_left: to_u64(r.try_get::<i64, _>(4)?),
        starts_at_ms: to_u64(r.try_get::<i64, _>(5)?),
        pay_window_ms: to_u64(r.try_get::<i64, _>(6)?),
        ends_at_ms: r.try_get::<Option<i64>, _>(7)?.map(to_u64),
        token_factor: r.try_get::<Option<i32>, _>(8)?.map(factor_of_milli),
        per_user_limit: u32::try_from(r.try_get::<i32, _>(9)?).unwrap_or(0),
    })
}

/// A factor stored in thousandths, as a number.
fn factor_of_milli(milli: i32) -> f64 {
    f64::from(milli) / 1000.0
}

/// The checked settings of a [`NewSale`] as the `sales` columns hold them.
#[derive(Debug)]
struct SaleSettings {
    ends_at_ms: Option<u64>,
    token_factor_milli: Option<i32>,
    per_user_limit: i32,
}

impl SaleSettings {
    fn of(sale: &NewSale) -> DbResult<SaleSettings> {
        if let Some(ends) = sale.ends_at_ms
            && ends <= sale.starts_at_ms
        {
            return Err(DbError::Invalid(format!(
                "ends_at_ms ({ends}) must be after starts_at_ms ({})",
                sale.starts_at_ms
            )));
        }
        let token_factor_milli = match sale.token_factor {
            None => None,
            Some(f) if !f.is_finite() => {
                return Err(DbError::Invalid(
                    "token_factor must be a finite number".into(),
                ));
            }
            Some(f) if !(TOKEN_FACTOR_MIN..=TOKEN_FACTOR_MAX).contains(&f) => {
                return Err(DbError::Invalid(format!(
                    "token_factor must be {TOKEN_FACTOR_MIN}..={TOKEN_FACTOR_MAX}, not {f}"
                )));
            }
            // In range, so 100..=100_000 after rounding: the cast cannot truncate.
            Some(f) => Some((f * 1000.0).round() as i32),
        };
        let per_user_limit = sale.per_user_limit.unwrap_or(PER_USER_LIMIT_SUPPORTED);
        if per_user_limit != PER_USER_LIMIT_SUPPORTED {
            return Err(DbError::Invalid(format!(
                "only one unit per person is supported (per_user_limit must be 1, not {per_user_limit})"
            )));
        }
        Ok(SaleSettings {
            ends_at_ms: sale.ends_at_ms,
            token_factor_milli,
            per_user_limit: per_user_limit as i32,
        })
    }
}

/// Reads a [`WorkerBeat`] from a row of [`worker_columns!`].
fn worker_of<R: Row>(r: &R) -> DbResult<WorkerBeat>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get(1)?;
    Ok(WorkerBeat {
        id: r.try_get(0)?,
        kind: WorkerKind::parse(&kind)?,
        host: r.try_get(2)?,
        pid: u32::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
        started_ms: to_u64(r.try_get::<i64, _>(4)?),
        beat_ms: to_u64(r.try_get::<i64, _>(5)?),
        progress_ms: to_u64(r.try_get::<i64, _>(6)?),
        handled: to_u64(r.try_get::<i64, _>(7)?),
        stopped_ms: r.try_get::<Option<i64>, _>(8)?.map(to_u64),
    })
}

fn order_of<R: Row>(r: &R) -> DbResult<Order>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = r.try_get(5)?;
    Ok(Order {
        id: r.try_get(0)?,
        ticket: r.try_get(1)?,
        sale: to_u64(r.try_get::<i64, _>(2)?),
        user: r.try_get(3)?,
        price_cents: to_u64(r.try_get::<i64, _>(4)?),
        status: OrderStatus::parse(&status)?,
        created_ms: to_u64(r.try_get::<i64, _>(6)?),
        pay_by_ms: to_u64(r.try_get::<i64, _>(7)?),
        paid_ms: r.try_get::<Option<i64>, _>(8)?.map(to_u64),
        cancelled_ms: r.try_get::<Option<i64>, _>(9)?.map(to_u64),
    })
}

/// Row of a decision found again: ticket, order id, reason, pay-by time.
type KnownRow = (String, Option<String>, Option<String>, Option<i64>);

/// The statements of [`OrdersDb::decide_batch`] whose best form differs by backend. SQLite
/// takes multi-row `VALUES` and `IN (…)` lists (its planner uses the indexes for them).
/// PostgreSQL takes one array per column (`unnest`): one short statement whatever the
/// batch size, and look-ups that join the array against the unique indexes, so the plan
/// never depends on table statistics (with `IN ($2, …, $501)` and a fresh, unanalyzed table
/// the generic plan scanned every order of the sale and compared each with the whole list:
/// 222 orders/s).
trait Dialect {
    /// Decisions already recorded for these tickets.
    async fn known(&mut self, tickets: &[&str]) -> DbResult<Vec<KnownRow>>;
    /// Those of `users` holding an active order of `sale`.
    async fn active_users(&mut self, sale: i64, users: &[&str]) -> DbResult<HashSet<String>>;
    /// Inserts pending orders created at `now`.
    async fn insert_orders(&mut self, orders: &[NewOrder], now: i64) -> DbResult<()>;
    /// Inserts outcomes decided at `now`.
    async fn insert_outcomes(&mut self, outcomes: &[NewOutcome<'_>], now: i64) -> DbResult<()>;
    /// The distinct sales of these orders.
    async fn sales_of(&mut self, order_ids: &[String]) -> DbResult<Vec<i64>>;
    /// Cancels those of these orders still pending with their pay-by time at or before
    /// `now`; returns them.
    async fn cancel_pending(&mut self, order_ids: &[String], now: i64) -> DbResult<Vec<Cancelled>>;
    /// Those of these orders that are cancelled.
    async fn cancelled_among(&mut self, order_ids: &[String]) -> DbResult<Vec<Cancelled>>;
}

fn cancelled_of<R: Row>(r: &R) -> DbResult<Cancelled>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Cancelled {
        order_id: r.try_get(0)?,
        sale: to_u64(r.try_get::<i64, _>(1)?),
        user: r.try_get(2)?,
        ticket: r.try_get(3)?,
    })
}

impl Dialect for sqlx::SqliteConnection {
    async fn known(&mut self, tickets: &[&str]) -> DbResult<Vec<KnownRow>> {
        let mut out = Vec::new();
        for chunk in tickets.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "SELECT t.ticket, t.order_id, t.reason, o.pay_by_ms FROM outcomes t \
                 LEFT JOIN orders o ON o.id = t.order_id WHERE t.ticket IN (",
            );
            let mut sep = qb.separated(", ");
            for t in chunk {
                sep.push_bind(*t);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
        }
        Ok(out)
    }

    async fn active_users(&mut self, sale: i64, users: &[&str]) -> DbResult<HashSet<String>> {
        let mut active = HashSet::new();
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "SELECT user_id FROM orders WHERE status <> 'cancelled' AND sale_id = ",
            );
            qb.push_bind(sale);
            qb.push(" AND user_id IN (");
            let mut sep = qb.separated(", ");
            for u in chunk {
                sep.push_bind(*u);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self).await? {
                active.insert(r.try_get::<String, _>(0)?);
            }
        }
        Ok(active)
    }

    async fn insert_orders(&mut self, orders: &[NewOrder], now: i64) -> DbResult<()> {
        for chunk in orders.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms) ",
            );
            qb.push_values(chunk, |mut b, o| {
                b.push_bind(o.id.as_str())
                    .push_bind(o.ticket.as_str())
                    .push_bind(o.sale)
                    .push_bind(o.user.as_str())
                    .push_bind(o.price_cents)
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(o.pay_by_ms);
            });
            qb.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn insert_outcomes(&mut self, outcomes: &[NewOutcome<'_>], now: i64) -> DbResult<()> {
        for chunk in outcomes.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO outcomes (ticket, sale_id, user_id, outcome, order_id, reason, decided_ms) ",
            );
            qb.push_values(chunk, |mut b, o| {
                b.push_bind(o.ticket)
                    .push_bind(o.sale)
                    .push_bind(o.user)
                    .push_bind(if o.order_id.is_some() {
                        "ordered"
                    } else {
                        "rejected"
                    })
                    .push_bind(o.order_id.as_deref())
                    .push_bind(o.reason)
                    .push_bind(now);
            });
            qb.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn sales_of(&mut self, order_ids: &[String]) -> DbResult<Vec<i64>> {
        let mut sales = Vec::new();
        for chunk in order_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new("SELECT DISTINCT sale_id FROM orders WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self).await? {
                sales.push(r.try_get(0)?);
            }
        }
        Ok(sales)
    }

    async fn cancel_pending(&mut self, order_ids: &[String], now: i64) -> DbResult<Vec<Cancelled>> {
        let mut out = Vec::new();
        for chunk in order_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb =
                QueryBuilder::new("UPDATE orders SET status = 'cancelled', cancelled_ms = ");
            qb.push_bind(now);
            qb.push(" WHERE status = 'pending' AND pay_by_ms <= ");
            qb.push_bind(now);
            qb.push(" AND id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            qb.push(") RETURNING id, sale_id, user_id, request_id");
            for r in qb.build().fetch_all(&mut *self).await? {
                out.push(cancelled_of(&r)?);
            }
        }
        Ok(out)
    }

    async fn cancelled_among(&mut self, order_ids: &[String]) -> DbResult<Vec<Cancelled>> {
        let mut out = Vec::new();
        for chunk in order_ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "SELECT id, sale_id, user_id, request_id FROM orders WHERE status = 'cancelled' AND id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self).await? {
                out.push(cancelled_of(&r)?);
            }
        }
        Ok(out)
    }
}

impl Dialect for sqlx::PgConnection {
    async fn known(&mut self, tickets: &[&str]) -> DbResult<Vec<KnownRow>> {
        let rows = sqlx::query(
            "SELECT t.ticket, t.order_id, t.reason, o.pay_by_ms \
             FROM unnest($1::text[]) AS k(ticket) \
             JOIN outcomes t ON t.ticket = k.ticket \
             LEFT JOIN orders o ON o.id = t.order_id",
        )
        .bind(tickets)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    async fn active_users(&mut self, sale: i64, users: &[&str]) -> DbResult<HashSet<String>> {
        let rows = sqlx::query(
            "SELECT o.user_id FROM unnest($2::text[]) AS u(user_id) \
             JOIN orders o ON o.sale_id = $1 AND o.user_id = u.user_id AND o.status <> 'cancelled'",
        )
        .bind(sale)
        .bind(users)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
    }

    async fn insert_orders(&mut self, orders: &[NewOrder], now: i64) -> DbResult<()> {
        if orders.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let tickets: Vec<&str> = orders.iter().map(|o| o.ticket.as_str()).collect();
        let sales: Vec<i64> = orders.iter().map(|o| o.sale).collect();
        let users: Vec<&str> = orders.iter().map(|o| o.user.as_str()).collect();
        let prices: Vec<i64> = orders.iter().map(|o| o.price_cents).collect();
        let pay_by: Vec<i64> = orders.iter().map(|o| o.pay_by_ms).collect();
        sqlx::query(
            "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms) \
             SELECT id, request_id, sale_id, user_id, price_cents, 'pending', $7, pay_by_ms \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[]) \
                  AS r(id, request_id, sale_id, user_id, price_cents, pay_by_ms)",
        )
        .bind(&ids)
        .bind(&tickets)
        .bind(&sales)
        .bind(&users)
        .bind(&prices)
        .bind(&pay_by)
        .bind(now)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert_outcomes(&mut self, outcomes: &[NewOutcome<'_>], now: i64) -> DbResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let tickets: Vec<&str> = outcomes.iter().map(|o| o.ticket).collect();
        let sales: Vec<i64> = outcomes.iter().map(|o| o.sale).collect();
        let users: Vec<&str> = outcomes.iter().map(|o| o.user).collect();
        let order_ids: Vec<Option<&str>> = outcomes.iter().map(|o| o.order_id.as_deref()).collect();
        let reasons: Vec<Option<&str>> = outcomes.iter().map(|o| o.reason).collect();
        sqlx::query(
            "INSERT INTO outcomes (ticket, sale_id, user_id, outcome, order_id, reason, decided_ms) \
             SELECT ticket, sale_id, user_id, \
                    CASE WHEN order_id IS NULL THEN 'rejected' ELSE 'ordered' END, \
                    order_id, reason, $6 \
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[]) \
                  AS r(ticket, sale_id, user_id, order_id, reason)",
        )
        .bind(&tickets)
        .bind(&sales)
        .bind(&users)
        .bind(&order_ids)
        .bind(&reasons)
        .bind(now)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn sales_of(&mut self, order_ids: &[String]) -> DbResult<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.sale_id FROM unnest($1::text[]) AS k(id) JOIN orders o ON o.id = k.id",
        )
        .bind(order_ids)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(DbError::from))
            .collect()
    }

    async fn cancel_pending(&mut self, order_ids: &[String], now: i64) -> DbResult<Vec<Cancelled>> {
        let rows = sqlx::query(
            "UPDATE orders o SET status = 'cancelled', cancelled_ms = $2 \
             FROM unnest($1::text[]) AS k(id) \
             WHERE o.id = k.id AND o.status = 'pending' AND o.pay_by_ms <= $2 \
             RETURNING o.id, o.sale_id, o.user_id, o.request_id",
        )
        .bind(order_ids)
        .bind(now)
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(cancelled_of).collect()
    }

    async fn cancelled_among(&mut self, order_ids: &[String]) -> DbResult<Vec<Cancelled>> {
        let rows = sqlx::query(
            "SELECT o.id, o.sale_id, o.user_id, o.request_id FROM unnest($1::text[]) AS k(id) \
             JOIN orders o ON o.id = k.id WHERE o.status = 'cancelled'",
        )
        .bind(order_ids)
        .fetch_all(&mut *self)
        .await?;
        rows.iter().map(cancelled_of).collect()
    }
}
