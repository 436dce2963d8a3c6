//! The named bounds of the orders database: batch and statement sizes, pool size, sale
//! settings, and the `workers` table's retention and sizes.

use std::time::Duration;

#[cfg(doc)]
use super::{NewSale, OrdersDb};

/// Most purchases one [`OrdersDb::decide_batch`] takes (one transaction).
pub const BATCH_MAX: usize = 5_000;

/// Default most purchases per worker batch (one fetch, one transaction; at most
/// [`BATCH_MAX`]) on PostgreSQL, or on a mix of backends: [`batch_default`] picks it. A
/// worker takes what is waiting, up to this, so small sales still commit one purchase at a
/// time.
pub const BATCH_DEFAULT: usize = 1_000;

/// Default most purchases per worker batch when every shard is SQLite. Larger than
/// [`BATCH_DEFAULT`] because a sale's orders land in two indexes keyed by buyer
/// (`orders_active_slot`, `orders_by_user`): their inserts fall on random pages, SQLite's
/// one writer writes each page a transaction touched once, so a batch of 4,000 writes far
/// fewer pages per order than four of 1,000 (the `mega` sell-through: 0.52 GB written
/// instead of 1.06 GB, with [`SQLITE_WAL_AUTOCHECKPOINT_PAGES`]; `BENCHMARKS.md`, issue 19
/// seventh pass). On PostgreSQL the same change made `mega` slower (5.3–5.8 s against
/// 3.9–4.4 s), so it stays at [`BATCH_DEFAULT`] there.
pub const SQLITE_BATCH_DEFAULT: usize = 4_000;

/// The default batch for a database URL as the binaries take it (one URL, or several
/// separated by spaces for shards): [`SQLITE_BATCH_DEFAULT`] when every one is
/// `sqlite:…`, else [`BATCH_DEFAULT`].
pub fn batch_default(url: &str) -> usize {
    let mut urls = url.split_whitespace().peekable();
    if urls.peek().is_some() && urls.all(|u| u.starts_with("sqlite:")) {
        SQLITE_BATCH_DEFAULT
    } else {
        BATCH_DEFAULT
    }
}

/// SQLite's WAL is copied into the database file (a checkpoint, run by the committing
/// connection) once it holds this many pages: 16,384 pages of 4 KiB, 64 MiB (SQLite's
/// default is 1,000 pages). A checkpoint writes each page once however many commits
/// rewrote it since the last one, and a sale's commits rewrite the same index pages over
/// and over, so rarer checkpoints write less. The WAL file grows to about this size (more
/// only while a reader holds an old snapshot); durability is the commit's `fsync` of the
/// WAL either way.
pub const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// Where SQLite keeps a statement's journal (`PRAGMA temp_store`): in memory. A
/// multi-row `INSERT` inside a transaction journals every page it changes so that the
/// statement alone can be undone if a later row breaks a constraint; SQLite keeps that
/// journal in memory up to 64 KiB and then spills it to a temporary file, and a worker's
/// batch (up to [`ROWS_PER_STATEMENT`] rows per statement, into the seven B-trees of
/// `orders`) spills every time: in the `mega` sell-through those `pwrite`s were 3% of the
/// machine's CPU (`BENCHMARKS.md`, issue 19, eighth pass). The journal is never read after
/// a crash (the WAL is), so where it lives changes no durability; in memory it holds at
/// most the pages one statement changes (a few MiB for 500 rows).
pub const SQLITE_TEMP_STORE: &str = "MEMORY";

/// The statistics target of the workers' `ANALYZE` of the orders tables on PostgreSQL (its
/// default is 100): a sample of 300 rows per unit, 3,000 rows. The look-ups of the orders
/// tables are by unique keys and short lists, whose plans need the tables' sizes and
/// rough distributions only; a 30,000-row sample cost 0.4–0.6 s of the server's CPU per
/// 100,000-row table on this machine, against 30–70 ms for 3,000 rows
/// (`order-worker/BENCHMARKS.md`).
pub const ANALYZE_STATISTICS_TARGET: u32 = 10;

/// Most rows one multi-row statement carries (bounded by the backends' parameter limits:
/// 9 parameters a row stays far below SQLite's 32,766 and PostgreSQL's 65,535).
pub const ROWS_PER_STATEMENT: usize = 500;

/// Default pool size.
pub const CONNECTIONS_DEFAULT: u32 = 8;

/// Default size of the request path's own pool ([`OrdersDb::sibling`]): the gateway's
/// ticket and order reads and payments, kept apart from the order workers' pool.
pub const READ_CONNECTIONS_DEFAULT: u32 = 4;

/// How long a request-path query waits for a connection of its pool before failing (the
/// request then answers 503), well inside a request's timeout.
pub const READ_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Most units one person may hold of a sale (a sale's `per_user_limit` is
/// 1..=this): the stock store's holder slots and the `slot` column of active orders
/// (migration 0008, `CHECK (slot BETWEEN 0 AND 9)`) are sized by it.
pub const PER_USER_LIMIT_MAX: u32 = inventory::PER_USER_LIMIT_MAX;

/// A sale's units per person unless it says otherwise.
pub const PER_USER_LIMIT_DEFAULT: u32 = 1;

/// How long a SQLite connection waits for the write lock before failing (busy timeout).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows of the `workers` table not seen for this long (by the database's clock) are pruned:
/// one hour.
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
pub const HEARTBEAT_ROWS_MAX: usize = crate::limits::WORKERS_MAX + crate::limits::CANCELLERS_MAX;

/// Longest worker id, bytes.
pub const WORKER_ID_BYTES_MAX: usize = 200;

/// Longest host name in a worker's row, bytes.
pub const WORKER_HOST_BYTES_MAX: usize = 255;

/// Most shards one `--database` list names.
pub const SHARDS_MAX: usize = 64;

/// Most hosts one PostgreSQL shard URL names (`postgres://u@h1:p1,h2:p2/db`: a primary and
/// its standbys).
pub const SHARD_HOSTS_MAX: usize = 8;

/// How long an operation of a multi-host PostgreSQL shard waits for a connection: short, so
/// that while its primary is gone the operation fails (transient) and the shard looks for
/// the new primary instead of waiting out a long timeout.
pub const FAILOVER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the look-up of a shard's primary waits for each host to answer.
pub const FAILOVER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most one look-up of a shard's primary this often (every failing operation asks for
/// one; the others in the interval return their error, transient, and are retried).
pub const FAILOVER_RESOLVE_INTERVAL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_batch_is_larger_only_when_every_shard_is_sqlite() {
        assert_eq!(batch_default("sqlite:/tmp/o.db"), SQLITE_BATCH_DEFAULT);
        assert_eq!(
            batch_default("sqlite:/tmp/a.db sqlite:/tmp/b.db"),
            SQLITE_BATCH_DEFAULT
        );
        assert_eq!(batch_default("postgres://u@h/db"), BATCH_DEFAULT);
        assert_eq!(
            batch_default("sqlite:/tmp/a.db postgres://u@h/db"),
            BATCH_DEFAULT
        );
        assert_eq!(batch_default(""), BATCH_DEFAULT);
        const { assert!(SQLITE_BATCH_DEFAULT <= BATCH_MAX && BATCH_DEFAULT <= BATCH_MAX) };
    }
}
