//! The auditor: checks the invariants of BRIEF.md against the orders database and the
//! stock store after a run (or against any deployment).
//!
//! [`audit`] reads the database in one read-only transaction (a consistent snapshot:
//! `REPEATABLE READ` in PostgreSQL, a deferred read transaction in SQLite WAL) — one per
//! shard of a database sharded by sale, combined: a sale's rows are all on its shard and a
//! ticket's outcome on its sale's, and every check below is per sale or per ticket — then
//! the stock store, and returns one [`Check`] per invariant it can see from outside:
//!
//! 1. [`check::NO_OVERSELL`]: per sale, active orders (pending + paid) ≤ units, and
//!    `0 <= units_left <= units`;
//! 2. [`check::ONE_PER_PERSON`]: no (sale, user) with more active orders than the sale's
//!    per-person limit N (`sales.per_user_limit`, 1 unless the sale says otherwise);
//! 3. [`check::NO_LOST_PURCHASE`]: every accepted ticket has an outcome, an order (that
//!    exists) or a rejection with a reason;
//! 4. [`check::CONSERVATION_DB`]: per sale, `units = units_left + active orders`;
//! 5. [`check::CONSERVATION_STORE`]: at rest, the store's figures equal the database's
//!    (units, left, holders: one per reservation; with [`audit_redis`] the holder sets
//!    themselves, each user's reservations against their active orders); not at rest
//!    the figures are reported and not asserted (the store runs ahead of the database by
//!    the purchases in flight);
//! 6. [`check::TIMELY_CANCELLATION`]: no order still pending more than
//!    [`CANCEL_GRACE_MS`] after its pay-by time, none both paid and cancelled, none paid at
//!    or after its pay-by time;
//! 7. [`check::NO_NEGATIVE_STOCK`]: no stock counter below zero, read as raw integers from
//!    SQL (and from Redis with [`audit_redis`]: every stock bucket's own counter).
//!
//! [`audit_redis`] reads standalone Redis or Redis Cluster, summing a sale's stock buckets;
//! at rest a user's reservation held in two buckets, or outside their home bucket, fails
//! check 5.
//!
//! A failure to read is an [`AuditError`], never a passed check. Every listing is bounded
//! (named constants below); the details carry per-sale figures and totals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use deadpool_redis::redis;
use inventory::{RedisStore, StockStore};
use order_worker::db::Shard;
use order_worker::{DbError, DbOptions, OrdersDb};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row};

/// Most tickets one outcome look-up statement carries.
pub const AUDIT_TICKETS_CHUNK: usize = 500;
/// Most sale ids one statement's `IN (…)` list carries.
pub const AUDIT_SALES_CHUNK: usize = 500;
/// Most tickets one audit takes.
pub const AUDIT_TICKETS_MAX: usize = 10_000_000;
/// Most sales a detail lists by name (offending ones first).
pub const SALES_LISTED_MAX: usize = 10;
/// Most offending rows (orders, users, tickets) a detail lists.
pub const OFFENDERS_LISTED_MAX: usize = 5;
/// Most distinct rejection reasons counted by name (the rest count as `other`).
pub const REASONS_COUNTED_MAX: usize = 20;
/// Most holders (all sales together) whose identities are compared between the store and
/// the database; beyond it the holders are compared by count only.
pub const HOLDERS_COMPARED_MAX: usize = 1_000_000;
/// How late a cancellation may be after an order's pay-by time (BRIEF.md, invariant 5).
pub const CANCEL_GRACE_MS: u64 = 1_000;
/// Entries one `HSCAN` step of the Redis holder hash asks for.
const HSCAN_COUNT: usize = 1_000;

/// The names of the checks, in the order an [`AuditReport`] lists them.
pub mod check {
    /// Invariant 1: active orders within units, units left within `0..=units`.
    pub const NO_OVERSELL: &str = "no oversell";
    /// Invariant 2: at most the sale's per-person limit N of active orders per (sale, user)
    /// (one, unless the sale says otherwise).
    pub const ONE_PER_PERSON: &str = "per-person limit";
    /// Invariant 3: every accepted ticket has an outcome.
    pub const NO_LOST_PURCHASE: &str = "no lost purchase";
    /// Invariant 4 in the database: units = units left + active orders.
    pub const CONSERVATION_DB: &str = "conservation (database)";
    /// Invariant 4 in the stock store, at rest.
    pub const CONSERVATION_STORE: &str = "conservation (store)";
    /// Invariant 5: no overdue pending order; payment and cancellation never both.
    pub const TIMELY_CANCELLATION: &str = "timely cancellation";
    /// Invariant 1: no stock counter below zero.
    pub const NO_NEGATIVE_STOCK: &str = "no negative stock";
    /// Every check, in report order.
    pub const ALL: [&str; 7] = [
        NO_OVERSELL,
        ONE_PER_PERSON,
        NO_LOST_PURCHASE,
        CONSERVATION_DB,
        CONSERVATION_STORE,
        TIMELY_CANCELLATION,
        NO_NEGATIVE_STOCK,
    ];
}

/// One check and its figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// What is checked (`no oversell`, …).
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind the verdict, for people.
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: String) -> Check {
        Check {
            name: name.to_string(),
            passed,
            detail,
        }
    }
}

/// A sale's figures as the audit read them (raw integers: a negative counter shows).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SaleFigures {
    /// Sale.
    pub sale: u64,
    /// Units on sale (database).
    pub units: i64,
    /// Units left (database).
    pub units_left: i64,
    /// Pending orders.
    pub pending: i64,
    /// Paid orders.
    pub paid: i64,
    /// Cancelled orders.
    pub cancelled: i64,
    /// The stock store's figures, if a store was audited and holds the sale.
    #[serde(default)]
    pub store: Option<StoreFigures>,
}

impl SaleFigures {
    /// Pending + paid.
    pub fn active(&self) -> i64 {
        self.pending.saturating_add(self.paid)
    }
}

/// A sale's figures in the stock store.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreFigures {
    /// Units put on sale (restocks included).
    pub units: i64,
    /// Units not held.
    pub left: i64,
    /// Users holding a unit.
    pub holders: i64,
}

/// Every check of one audit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditReport {
    /// When the audit ran, ms since the epoch.
    pub at_ms: u64,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The audited sales' figures, by sale id.
    #[serde(default)]
    pub sales: Vec<SaleFigures>,
}

impl AuditReport {
    /// Whether every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line per check (`PASS name: detail` / `FAIL name: detail`), then a summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                let verdict = if c.passed { "PASS" } else { "FAIL" };
                format!("{verdict} {}: {}", c.name, c.detail)
            })
            .collect();
        out.push(format!(
            "audit: {} checks, {} failed",
            self.checks.len(),
            self.failures().len()
        ));
        out
    }

    /// Prints [`AuditReport::lines`] to standard output.
    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }
}

/// What to audit.
#[derive(Clone)]
pub struct AuditInput {
    /// The orders database (the source of truth).
    pub db: OrdersDb,
    /// The stock store, if it is to be checked against the database.
    pub store: Option<Arc<dyn StockStore>>,
    /// The sales to audit; `None`: every sale.
    pub sales: Option<Vec<u64>>,
    /// The tickets that got a `202`.
    pub tickets: Vec<String>,
    /// The queue is drained: conservation must hold exactly in the store too.
    pub at_rest: bool,
    /// Now, ms since the epoch (the reference of the timely-cancellation check).
    pub now_ms: u64,
}

impl std::fmt::Debug for AuditInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditInput")
            .field("db", &self.db.backend())
            .field("store", &self.store.is_some())
            .field("sales", &self.sales)
            .field("tickets", &self.tickets.len())
            .field("at_rest", &self.at_rest)
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

/// What keeps an audit from reading its figures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The orders database failed.
    #[error("orders database: {0}")]
    Db(#[from] DbError),
    /// The orders database failed (a statement of the auditor's own).
    #[error("orders database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The stock store failed.
    #[error("stock store: {0}")]
    Store(#[from] inventory::Error),
    /// Redis failed or held something unexpected (raw reads of [`audit_redis`]).
    #[error("redis: {0}")]
    Redis(String),
    /// A sale asked for is not in the orders database.
    #[error("sale {0} is not in the orders database")]
    NoSuchSale(u64),
    /// The input is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl From<redis::RedisError> for AuditError {
    fn from(e: redis::RedisError) -> Self {
        AuditError::Redis(e.to_string())
    }
}

/// Checks every invariant visible in `input`'s database and store; see the module docs.
/// The store is read through [`StockStore::stock`], so its holders are compared by count.
pub async fn audit(input: &AuditInput) -> Result<AuditReport, AuditError> {
    let source = match &input.store {
        Some(s) => StoreSource::Trait(s.as_ref()),
        None => StoreSource::None,
    };
    audit_from(input, source).await
}

/// [`audit`] with the stock read straight from `redis` (whatever `input.store` is): raw
/// counters (a negative one shows), and at rest the holder set itself compared with the
/// users holding an active order (plus their reservation tags, reported).
pub async fn audit_redis(
    input: &AuditInput,
    redis: &RedisStore,
) -> Result<AuditReport, AuditError> {
    audit_from(input, StoreSource::Redis(redis)).await
}

/// Where the store's figures come from.
#[derive(Clone, Copy)]
enum StoreSource<'a> {
    None,
    Trait(&'a dyn StockStore),
    Redis(&'a RedisStore),
}

/// A sale row with its order counts.
#[derive(Debug, Clone, Copy)]
struct SaleRow {
    id: i64,
    units: i64,
    units_left: i64,
    pending: i64,
    paid: i64,
    cancelled: i64,
}

/// Per-sale counts of the timely-cancellation check.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    overdue: i64,
    paid_and_cancelled: i64,
    paid_late: i64,
    cancelled_late: i64,
    max_cancel_delay_ms: Option<i64>,
}

/// An order the timely-cancellation check lists.
#[derive(Debug, Clone)]
struct OrderIssue {
    id: String,
    sale: i64,
    user: String,
    status: String,
    pay_by_ms: i64,
    paid_ms: Option<i64>,
    cancelled_ms: Option<i64>,
}

/// What the tickets resolved to.
#[derive(Debug, Default)]
struct TicketTally {
    given: usize,
    distinct: usize,
    ordered: u64,
    rejected: BTreeMap<String, u64>,
    missing: u64,
    missing_listed: Vec<String>,
    inconsistent: u64,
    inconsistent_listed: Vec<String>,
}

/// Everything read from the database, in one snapshot.
#[derive(Debug, Default)]
struct Snapshot {
    sales: Vec<SaleRow>,
    dups_per_sale: BTreeMap<i64, i64>,
    /// (sale, user, active orders, the sale's limit).
    dup_listed: Vec<(i64, String, i64, i64)>,
    timing: BTreeMap<i64, Timing>,
    timing_listed: Vec<OrderIssue>,
    tickets: TicketTally,
    /// Sale → (user → tickets) of the active orders, for the sales whose holder sets are
    /// compared.
    holders: HashMap<i64, HashMap<String, Vec<String>>>,
    holders_skipped: bool,
}

/// Appends ` AND {column} IN (…)` for `ids`.
fn push_in<DB>(qb: &mut QueryBuilder<DB>, column: &str, ids: &[i64])
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(format_args!(" AND {column} IN ("));
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    sep.push_unseparated(")");
}

/// Runs `$body` with `$tx` a read-only transaction on whichever pool `$db` holds (the body
/// is compiled once per backend), then rolls it back.
macro_rules! in_read_tx {
    ($db:expr, $tx:ident => $body:block) => {
        match $db {
            Shard::Sqlite(p) => {
                let mut $tx = p.begin_with("BEGIN DEFERRED").await?;
                let out = $body;
                $tx.rollback().await?;
                out
            }
            Shard::Postgres(p) => {
                let mut $tx = p
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let out = $body;
                $tx.rollback().await?;
                out
            }
        }
    };
}

fn to_i64(v: u64, what: &str) -> Result<i64, AuditError> {
    i64::try_from(v).map_err(|_| AuditError::Invalid(format!("{what} {v} out of range")))
}

fn sale_u64(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

/// What one audit reads: the sales asked for and the tickets, each once.
struct AuditScope<'a> {
    /// The sales asked for, ascending; `None`: every sale.
    wanted: Option<Vec<i64>>,
    /// The tickets, once each, in the order given.
    tickets: Vec<&'a str>,
}

impl<'a> AuditScope<'a> {
    /// Checks the input's bounds and removes repeats.
    fn of(input: &'a AuditInput) -> Result<AuditScope<'a>, AuditError> {
        let wanted: Option<Vec<i64>> = match &input.sales {
            None => None,
            Some(list) => {
                let mut ids = list
                    .iter()
                    .map(|s| to_i64(*s, "sale id"))
                    .collect::<Result<Vec<i64>, _>>()?;
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > order_worker::db::SALES_MAX {
                    return Err(AuditError::Invalid(format!(
                        "at most {} sales an audit",
                        order_worker::db::SALES_MAX
                    )));
                }
                Some(ids)
            }
        };
        if input.tickets.len() > AUDIT_TICKETS_MAX {
            return Err(AuditError::Invalid(format!(
                "at most {AUDIT_TICKETS_MAX} tickets an audit"
            )));
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(input.tickets.len());
        let tickets: Vec<&str> = input
            .tickets
            .iter()
            .map(String::as_str)
            .filter(|t| seen.insert(t))
            .collect();
        Ok(AuditScope { wanted, tickets })
    }

    /// Statements over the whole table (`None`) or over chunks of the sales asked for.
    fn sale_chunks(&self) -> Vec<Option<&[i64]>> {
        match &self.wanted {
            None => vec![None],
            Some(ids) => ids.chunks(AUDIT_SALES_CHUNK).map(Some).collect(),
        }
    }
}

// The statements of the snapshot, built for whichever backend runs them (the values they
// bind are integers and strings, which both backends encode).

/// Sales with their order counts (one statement: one consistent row per sale).
fn sales_query<DB>(scope: Option<&[i64]>) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "SELECT s.id, s.units, s.units_left, \
         COALESCE(SUM(CASE WHEN o.status = 'pending' THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN o.status = 'paid' THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN o.status = 'cancelled' THEN 1 ELSE 0 END), 0) \
         FROM sales s LEFT JOIN orders o ON o.sale_id = s.id WHERE 1 = 1",
    );
    if let Some(ids) = scope {
        push_in(&mut qb, "s.id", ids);
    }
    qb.push(" GROUP BY s.id, s.units, s.units_left ORDER BY s.id LIMIT ");
    qb.push_bind(order_worker::db::SALES_MAX as i64 + 1);
    qb
}

/// Appends the active orders per (sale, user) over the sale's per-person limit (an order
/// of a sale the database does not know counts against a limit of 1), selecting
/// `o.sale_id, o.user_id, COUNT(*), limit`.
fn push_over_limit<DB>(qb: &mut QueryBuilder<DB>, scope: Option<&[i64]>)
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(
        "SELECT o.sale_id, o.user_id, COUNT(*), CAST(COALESCE(s.per_user_limit, 1) AS BIGINT) \
         FROM orders o LEFT JOIN sales s ON s.id = o.sale_id WHERE o.status <> 'cancelled'",
    );
    if let Some(ids) = scope {
        push_in(qb, "o.sale_id", ids);
    }
    qb.push(
        " GROUP BY o.sale_id, o.user_id, s.per_user_limit \
         HAVING COUNT(*) > COALESCE(s.per_user_limit, 1)",
    );
}

/// Per sale, the users with more active orders than the sale's per-person limit.
fn duplicates_per_sale_query<DB>(scope: Option<&[i64]>) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new("SELECT d.sale_id, COUNT(*) FROM (");
    push_over_limit(&mut qb, scope);
    qb.push(") d GROUP BY d.sale_id");
    qb
}

/// The first [`OFFENDERS_LISTED_MAX`] (sale, user) pairs with more active orders than the
/// sale's per-person limit.
fn duplicates_listed_query<DB>(scope: Option<&[i64]>) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new("");
    push_over_limit(&mut qb, scope);
    qb.push(" ORDER BY o.sale_id, o.user_id LIMIT ");
    qb.push_bind(OFFENDERS_LISTED_MAX as i64);
    qb
}

/// Cancellation timing per sale: overdue, paid and cancelled, paid late, cancelled late,
/// and the latest cancellation after its pay-by time.
fn timing_query<DB>(scope: Option<&[i64]>, overdue_before: i64) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "SELECT sale_id, \
         COALESCE(SUM(CASE WHEN status = 'pending' AND pay_by_ms < ",
    );
    qb.push_bind(overdue_before);
    qb.push(
        " THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN paid_ms IS NOT NULL AND cancelled_ms IS NOT NULL \
             THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN paid_ms IS NOT NULL AND paid_ms >= pay_by_ms \
             THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN cancelled_ms IS NOT NULL AND cancelled_ms > pay_by_ms + ",
    );
    qb.push_bind(CANCEL_GRACE_MS as i64);
    qb.push(
        " THEN 1 ELSE 0 END), 0), \
         MAX(cancelled_ms - pay_by_ms) \
         FROM orders WHERE 1 = 1",
    );
    if let Some(ids) = scope {
        push_in(&mut qb, "sale_id", ids);
    }
    qb.push(" GROUP BY sale_id");
    qb
}

/// The first [`OFFENDERS_LISTED_MAX`] orders the timely-cancellation check fails on.
fn timing_listed_query<DB>(scope: Option<&[i64]>, overdue_before: i64) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "SELECT id, sale_id, user_id, status, pay_by_ms, paid_ms, cancelled_ms \
         FROM orders WHERE ((status = 'pending' AND pay_by_ms < ",
    );
    qb.push_bind(overdue_before);
    qb.push(
        ") OR (paid_ms IS NOT NULL AND cancelled_ms IS NOT NULL) \
         OR (paid_ms IS NOT NULL AND paid_ms >= pay_by_ms))",
    );
    if let Some(ids) = scope {
        push_in(&mut qb, "sale_id", ids);
    }
    qb.push(" ORDER BY pay_by_ms, id LIMIT ");
    qb.push_bind(OFFENDERS_LISTED_MAX as i64);
    qb
}

/// The outcomes of a chunk of tickets, with the id of the order each names if it exists.
fn outcomes_query<'t, DB>(chunk: &[&'t str]) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "SELECT t.ticket, t.outcome, t.order_id, t.reason, o.id FROM outcomes t \
         LEFT JOIN orders o ON o.id = t.order_id WHERE t.ticket IN (",
    );
    let mut sep = qb.separated(", ");
    for t in chunk {
        sep.push_bind(*t);
    }
    sep.push_unseparated(")");
    qb
}

/// What a ticket's outcome row says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// An order, which exists.
    Ordered,
    /// Rejected, with this reason.
    Rejected(String),
    /// Neither: why the row does not add up.
    Inconsistent(String),
}

/// Judges one row of [`outcomes_query`]: the ticket and its verdict.
fn outcome_verdict<R>(r: &R) -> Result<(String, Verdict), sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let ticket: String = r.try_get(0)?;
    let outcome: String = r.try_get(1)?;
    let order_id: Option<String> = r.try_get(2)?;
    let reason: Option<String> = r.try_get(3)?;
    let order_row: Option<String> = r.try_get(4)?;
    let verdict = match (outcome.as_str(), order_id, reason) {
        ("ordered", Some(_), _) if order_row.is_some() => Verdict::Ordered,
        ("ordered", Some(id), _) => {
            Verdict::Inconsistent(format!("ordered as {id}, no such order"))
        }
        ("rejected", None, Some(why)) if !why.trim().is_empty() => Verdict::Rejected(why),
        (o, _, _) => Verdict::Inconsistent(format!("outcome {o:?} without its order or reason")),
    };
    Ok((ticket, verdict))
}

impl TicketTally {
    /// Counts a chunk of tickets by the verdicts found for them (a ticket without one is
    /// missing).
    fn count(&mut self, chunk: &[&str], mut found: HashMap<String, Verdict>) {
        for t in chunk {
            match found.remove(*t) {
                None => {
                    self.missing += 1;
                    if self.missing_listed.len() < OFFENDERS_LISTED_MAX {
                        self.missing_listed.push((*t).to_string());
                    }
                }
                Some(Verdict::Ordered) => self.ordered += 1,
                Some(Verdict::Rejected(why)) => {
                    let key = if self.rejected.len() < REASONS_COUNTED_MAX
                        || self.rejected.contains_key(&why)
                    {
                        why
                    } else {
                        "other".to_string()
                    };
                    *self.rejected.entry(key).or_default() += 1;
                }
                Some(Verdict::Inconsistent(why)) => {
                    self.inconsistent += 1;
                    if self.inconsistent_listed.len() < OFFENDERS_LISTED_MAX {
                        self.inconsistent_listed.push(format!("{t}: {why}"));
                    }
                }
            }
        }
    }
}

impl Timing {
    /// Whether the timely-cancellation check fails on these counts.
    fn failing(&self) -> bool {
        self.overdue > 0 || self.paid_and_cancelled > 0 || self.paid_late > 0
    }
}

/// Reads the snapshot: one per shard (each in its own read-only transaction), combined;
/// every check is per sale or per ticket, and a sale's rows are all on its shard.
/// `compare_holders`: load the active holders of the audited sales.
async fn read_snapshot(input: &AuditInput, compare_holders: bool) -> Result<Snapshot, AuditError> {
    let scope = AuditScope::of(input)?;
    let overdue_before = to_i64(input.now_ms, "now")?.saturating_sub(CANCEL_GRACE_MS as i64);
    let mut snap = Snapshot::default();
    snap.tickets.given = input.tickets.len();
    snap.tickets.distinct = scope.tickets.len();
    let mut remaining: Vec<&str> = scope.tickets.clone();
    for i in 0..input.db.shard_count() {
        let Some(shard) = input.db.shard(i) else {
            break;
        };
        let read = read_shard(
            shard,
            &scope,
            overdue_before,
            compare_holders,
            &mut snap,
            &mut remaining,
        )
        .await;
        if read.is_err() {
            // The shard's primary may have failed over: the next audit finds the new one.
            input.db.recheck_primary(i).await;
        }
        read?;
    }
    // Tickets no shard has an outcome for.
    snap.tickets.count(&remaining, HashMap::new());
    snap.sales.sort_by_key(|s| s.id);
    snap.dup_listed.truncate(OFFENDERS_LISTED_MAX);
    snap.timing_listed
        .sort_by(|a, b| (a.pay_by_ms, &a.id).cmp(&(b.pay_by_ms, &b.id)));
    snap.timing_listed.truncate(OFFENDERS_LISTED_MAX);

    if let Some(ids) = &scope.wanted {
        let found: HashSet<i64> = snap.sales.iter().map(|s| s.id).collect();
        if let Some(missing) = ids.iter().find(|id| !found.contains(id)) {
            return Err(AuditError::NoSuchSale(sale_u64(*missing)));
        }
    }
    Ok(snap)
}

/// Adds one shard's part of the snapshot to `snap`, in one read-only transaction; takes
/// the outcomes of `remaining`'s tickets found there out of it.
async fn read_shard<'t>(
    shard: &Shard,
    scope: &AuditScope<'t>,
    overdue_before: i64,
    compare_holders: bool,
    snap: &mut Snapshot,
    remaining: &mut Vec<&'t str>,
) -> Result<(), AuditError> {
    let scopes = scope.sale_chunks();
    let sales_before = snap.sales.len();
    in_read_tx!(shard, tx => {
        // 1. Sales with their order counts.
        for s in &scopes {
            for r in sales_query(*s).build().fetch_all(&mut *tx).await? {
                snap.sales.push(SaleRow {
                    id: r.try_get(0)?,
                    units: r.try_get(1)?,
                    units_left: r.try_get(2)?,
                    pending: r.try_get(3)?,
                    paid: r.try_get(4)?,
                    cancelled: r.try_get(5)?,
                });
            }
        }
        if snap.sales.len() > order_worker::db::SALES_MAX {
            return Err(AuditError::Invalid(format!(
                "more than {} sales: name the ones to audit",
                order_worker::db::SALES_MAX
            )));
        }

        // 2. (sale, user) pairs with more active orders than the sale's limit: per sale, and
        //    the first few.
        for s in &scopes {
            for r in duplicates_per_sale_query(*s).build().fetch_all(&mut *tx).await? {
                snap.dups_per_sale.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
        if !snap.dups_per_sale.is_empty() {
            for s in &scopes {
                for r in duplicates_listed_query(*s).build().fetch_all(&mut *tx).await? {
                    snap.dup_listed.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
                }
            }
            snap.dup_listed.truncate(OFFENDERS_LISTED_MAX);
        }

        // 3. Cancellation timing per sale, and the first few offending orders.
        for s in &scopes {
            for r in timing_query(*s, overdue_before).build().fetch_all(&mut *tx).await? {
                snap.timing.insert(
                    r.try_get(0)?,
                    Timing {
                        overdue: r.try_get(1)?,
                        paid_and_cancelled: r.try_get(2)?,
                        paid_late: r.try_get(3)?,
                        cancelled_late: r.try_get(4)?,
                        max_cancel_delay_ms: r.try_get(5)?,
                    },
                );
            }
        }
        if snap.timing.values().any(Timing::failing) {
            for s in &scopes {
                let mut qb = timing_listed_query(*s, overdue_before);
                for r in qb.build().fetch_all(&mut *tx).await? {
                    snap.timing_listed.push(OrderIssue {
                        id: r.try_get(0)?,
                        sale: r.try_get(1)?,
                        user: r.try_get(2)?,
                        status: r.try_get(3)?,
                        pay_by_ms: r.try_get(4)?,
                        paid_ms: r.try_get(5)?,
                        cancelled_ms: r.try_get(6)?,
                    });
                }
            }
            snap.timing_listed.sort_by(|a, b| (a.pay_by_ms, &a.id).cmp(&(b.pay_by_ms, &b.id)));
            snap.timing_listed.truncate(OFFENDERS_LISTED_MAX);
        }

        // 4. The outcomes of the tickets no shard before this one had, in chunks (a
        //    ticket's outcome is on its sale's shard only).
        let mut still = Vec::new();
        for chunk in remaining.chunks(AUDIT_TICKETS_CHUNK) {
            let mut found = HashMap::with_capacity(chunk.len());
            for r in outcomes_query(chunk).build().fetch_all(&mut *tx).await? {
                let (ticket, verdict) = outcome_verdict(&r)?;
                found.insert(ticket, verdict);
            }
            let (hit, miss): (Vec<&str>, Vec<&str>) =
                chunk.iter().partition(|t| found.contains_key(**t));
            snap.tickets.count(&hit, found);
            still.extend(miss);
        }
        *remaining = still;

        // 5. The active holders of the audited sales, if their sets are compared.
        if compare_holders && !snap.holders_skipped {
            let total: i64 = snap.sales.iter().map(|s| s.pending + s.paid).sum();
            if usize::try_from(total).is_ok_and(|t| t <= HOLDERS_COMPARED_MAX) {
                for s in &snap.sales[sales_before..] {
                    let rows = sqlx::query(
                        "SELECT user_id, request_id FROM orders \
                         WHERE sale_id = $1 AND status <> 'cancelled'",
                    )
                    .bind(s.id)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut users: HashMap<String, Vec<String>> =
                        HashMap::with_capacity(rows.len());
                    for r in rows {
                        users
                            .entry(r.try_get::<String, _>(0)?)
                            .or_default()
                            .push(r.try_get::<String, _>(1)?);
                    }
                    snap.holders.insert(s.id, users);
                }
            } else {
                snap.holders_skipped = true;
                snap.holders.clear();
            }
        }
    });

    Ok(())
}

/// A sale's store figures and, with Redis at rest, its holders (user → the tags of their
/// reservations).
struct StoreRead {
    figures: Option<StoreFigures>,
    holders: Option<HashMap<String, Vec<String>>>,
    /// Raw from Redis: the lowest bucket's `left` and that bucket, for a sale of K > 1
    /// stock buckets (each bucket's counter must stay ≥ 0, not only their sum).
    lowest_bucket: Option<(u32, i64)>,
    /// Raw from Redis: holder records that break the layout (a user's reservation slot held
    /// in two buckets, or outside their home bucket; a record naming no bucket).
    misplaced: Vec<String>,
}

fn sat_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads the sale's base slot in one script (atomic): `units` (nil: no sale), the bucket
/// count (nil: 1), bucket 0's `left` and its holder count.
const READ_BASE: &str = r#"
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]), redis.call('HLEN', KEYS[4])}
"#;

/// Reads one bucket's `left` (nil: missing) and holder count in one script.
const READ_BUCKET: &str = r#"
return {redis.call('GET', KEYS[1]), redis.call('HLEN', KEYS[2])}
"#;

fn raw_int(v: Option<&redis::Value>, what: &str) -> Result<Option<i64>, AuditError> {
    match v {
        None | Some(redis::Value::Nil) => Ok(None),
        Some(v) => redis::from_redis_value::<i64>(v.clone())
            .map(Some)
            .map_err(|e| AuditError::Redis(format!("{what}: {e}"))),
    }
}

/// Reads a sale's raw counters from Redis, standalone or Cluster (the layout of
/// `inventory::keys`: `P{S}:units`, `P{S}:buckets`, and per stock bucket b its `left` and
/// `holder_tags`, bucket 0 in `P{S}`, bucket b ≥ 1 in `P{S.b}`), summing the buckets. Each
/// bucket is read atomically; a sale's buckets are not read at one instant (at rest they do
/// not move). With holders: every bucket's records (one per reservation, the field naming
/// the user and slot: `inventory::keys::holder_field`), each tag without its `|g` suffix,
/// and the records that break the layout.
async fn redis_read(
    store: &RedisStore,
    sale: u64,
    with_holders: bool,
) -> Result<StoreRead, AuditError> {
    let conn = store.conn();
    let keys = inventory::keys::SaleKeys::new(store.prefix(), sale);
    let err = |e: inventory::Error| AuditError::Redis(e.to_string());
    let base: Vec<redis::Value> = conn
        .invoke_script(&redis::Script::new(READ_BASE), &keys.base(), &[])
        .await
        .map_err(err)?;
    let units_key = keys.units();
    let Some(units) = raw_int(base.first(), &units_key)? else {
        return Ok(StoreRead {
            figures: None,
            holders: None,
            lowest_bucket: None,
            misplaced: Vec::new(),
        });
    };
    let k = raw_int(base.get(1), &keys.buckets())?.unwrap_or(1);
    let k = u32::try_from(k)
        .ok()
        .filter(|k| inventory::validate_buckets(*k).is_ok())
        .ok_or_else(|| AuditError::Redis(format!("{}: {k} buckets", keys.buckets())))?;
    let mut left = 0i64;
    let mut holders = 0i64;
    let mut lowest: Option<(u32, i64)> = None;
    let read_bucket = redis::Script::new(READ_BUCKET);
    for b in 0..k {
        let [left_key, holders_key] = keys.bucket(b);
        let (l, h) = if b == 0 {
            (
                raw_int(base.get(2), &left_key)?,
                raw_int(base.get(3), &holders_key)?,
            )
        } else {
            let v: Vec<redis::Value> = conn
                .invoke_script(&read_bucket, &keys.bucket(b), &[])
                .await
                .map_err(err)?;
            (
                raw_int(v.first(), &left_key)?,
                raw_int(v.get(1), &holders_key)?,
            )
        };
        let Some(l) = l else {
            return Err(AuditError::Redis(format!(
                "{units_key} is set but {left_key} is not"
            )));
        };
        left = left.saturating_add(l);
        holders = holders.saturating_add(h.unwrap_or(0));
        if lowest.is_none_or(|(_, low)| l < low) {
            lowest = Some((b, l));
        }
    }
    let figures = Some(StoreFigures {
        units,
        left,
        holders,
    });
    let lowest_bucket = if k > 1 { lowest } else { None };
    if !with_holders {
        return Ok(StoreRead {
            figures,
            holders: None,
            lowest_bucket,
            misplaced: Vec::new(),
        });
    }
    let mut users: HashMap<String, Vec<String>> =
        HashMap::with_capacity(usize::try_from(holders).unwrap_or(0));
    // (bucket, field) pairs read: a scan may return a field twice.
    let mut fields_seen: HashSet<(u32, String)> = HashSet::new();
    // Field (a user's reservation slot) → the bucket it was first read in.
    let mut field_bucket: HashMap<String, u32> = HashMap::new();
    let mut misplaced = Vec::new();
    for b in 0..k {
        let [_, holders_key] = keys.bucket(b);
        let mut cursor = "0".to_string();
        loop {
            let (next, flat): (String, Vec<String>) = conn
                .query(
                    redis::cmd("HSCAN")
                        .arg(&holders_key)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(HSCAN_COUNT),
                )
                .await
                .map_err(err)?;
            let mut it = flat.into_iter();
            while let (Some(field), Some(record)) = (it.next(), it.next()) {
                if !fields_seen.insert((b, field.clone())) {
                    continue;
                }
                let (user, slot) = inventory::keys::parse_holder_field(&field);
                if *field_bucket.entry(field.clone()).or_insert(b) != b {
                    misplaced.push(format!("{user:?} held in two buckets"));
                }
                if slot >= inventory::PER_USER_LIMIT_MAX {
                    misplaced.push(format!("{user:?} in bucket {b}: slot {slot}"));
                }
                let tag = if k == 1 {
                    record
                } else {
                    let home = inventory::home_bucket(user, k);
                    if home != b {
                        misplaced.push(format!("{user:?} held in bucket {b}, home {home}"));
                    }
                    match record.rsplit_once('|') {
                        Some((tag, g)) if g.parse::<u32>().is_ok_and(|g| g < k) => tag.to_string(),
                        _ => {
                            misplaced.push(format!(
                                "{user:?} in bucket {b}: record {record:?} names no bucket"
                            ));
                            record
                        }
                    }
                };
                users.entry(user.to_string()).or_default().push(tag);
            }
            if fields_seen.len() > HOLDERS_COMPARED_MAX {
                return Err(AuditError::Redis(format!(
                    "sale {sale}'s holder records number more than {HOLDERS_COMPARED_MAX}"
                )));
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(StoreRead {
        figures,
        holders: Some(users),
        lowest_bucket,
        misplaced,
    })
}

/// Joins `items` with `; `, at most `max` of them, then `… N more`.
fn bounded(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > max {
        let _ = write!(s, "; … {} more", items.len() - max);
    }
    s
}

/// The per-sale part of a detail: the offending sales if any, else every sale (bounded).
fn per_sale(offending: &[String], all: &[String]) -> String {
    if offending.is_empty() {
        bounded(all, SALES_LISTED_MAX)
    } else {
        bounded(offending, SALES_LISTED_MAX)
    }
}

async fn audit_from(
    input: &AuditInput,
    source: StoreSource<'_>,
) -> Result<AuditReport, AuditError> {
    let compare_holders = input.at_rest && matches!(source, StoreSource::Redis(_));
    let snap = read_snapshot(input, compare_holders).await?;
    // The store's figures (after the database: at rest nothing moves).
    let store_reads = read_store(&snap, source, compare_holders).await?;
    let totals = Totals::of(&snap.sales);
    let store = match source {
        StoreSource::None => Check::new(
            check::CONSERVATION_STORE,
            true,
            "no store given: not checked".to_string(),
        ),
        _ => store_check(input, &snap, &store_reads, compare_holders),
    };
    // In the order of `check::ALL`.
    let checks = vec![
        no_oversell_check(&snap, &totals),
        one_per_person_check(&snap, &totals),
        no_lost_purchase_check(input, &snap.tickets),
        conservation_db_check(&snap, &totals),
        store,
        timely_cancellation_check(input, &snap, &totals),
        no_negative_stock_check(&snap, &store_reads, source),
    ];
    let sales = snap
        .sales
        .iter()
        .map(|s| SaleFigures {
            sale: sale_u64(s.id),
            units: s.units,
            units_left: s.units_left,
            pending: s.pending,
            paid: s.paid,
            cancelled: s.cancelled,
            store: store_reads.get(&s.id).and_then(|r| r.figures),
        })
        .collect();
    Ok(AuditReport {
        at_ms: input.now_ms,
        checks,
        sales,
    })
}

/// Reads the store's figures of every sale of the snapshot (none without a store).
async fn read_store(
    snap: &Snapshot,
    source: StoreSource<'_>,
    compare_holders: bool,
) -> Result<BTreeMap<i64, StoreRead>, AuditError> {
    let mut store_reads: BTreeMap<i64, StoreRead> = BTreeMap::new();
    for s in &snap.sales {
        let sale = sale_u64(s.id);
        let read = match source {
            StoreSource::None => continue,
            StoreSource::Trait(store) => StoreRead {
                figures: store.stock(sale).await?.map(|st| StoreFigures {
                    units: sat_i64(st.units),
                    left: sat_i64(st.left),
                    holders: sat_i64(st.holders),
                }),
                holders: None,
                lowest_bucket: None,
                misplaced: Vec::new(),
            },
            StoreSource::Redis(r) => {
                redis_read(r, sale, compare_holders && !snap.holders_skipped).await?
            }
        };
        store_reads.insert(s.id, read);
    }
    Ok(store_reads)
}

/// The database's figures over all audited sales.
#[derive(Debug, Clone, Copy)]
struct Totals {
    sales: usize,
    units: i64,
    left: i64,
    pending: i64,
    paid: i64,
    cancelled: i64,
    active: i64,
}

impl Totals {
    fn of(sales: &[SaleRow]) -> Totals {
        let (mut units, mut left, mut pending, mut paid, mut cancelled) =
            (0i64, 0i64, 0i64, 0i64, 0i64);
        for s in sales {
            units = units.saturating_add(s.units);
            left = left.saturating_add(s.units_left);
            pending = pending.saturating_add(s.pending);
            paid = paid.saturating_add(s.paid);
            cancelled = cancelled.saturating_add(s.cancelled);
        }
        Totals {
            sales: sales.len(),
            units,
            left,
            pending,
            paid,
            cancelled,
            active: pending.saturating_add(paid),
        }
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Totals {
            sales,
            units,
            left,
            pending,
            paid,
            cancelled,
            active,
        } = self;
        write!(
            f,
            "{sales} sales: {units} units, {active} active ({pending} pending, {paid} paid), \
             {cancelled} cancelled, {left} left"
        )
    }
}

/// Check 1: per sale, active orders within units and units left within `0..=units`.
fn no_oversell_check(snap: &Snapshot, totals: &Totals) -> Check {
    let n_sales = totals.sales;
    let mut bad = Vec::new();
    let mut all = Vec::new();
    for s in &snap.sales {
        let a = s.pending + s.paid;
        let line = format!(
            "sale {}: {a}/{} active, {} left",
            s.id, s.units, s.units_left
        );
        let mut why = Vec::new();
        if a > s.units {
            why.push(format!("{a} active > {} units", s.units));
        }
        if s.units_left < 0 {
            why.push(format!("units_left {} < 0", s.units_left));
        }
        if s.units_left > s.units {
            why.push(format!("units_left {} > units {}", s.units_left, s.units));
        }
        if !why.is_empty() {
            bad.push(format!("sale {}: {}", s.id, why.join(", ")));
        }
        all.push(line);
    }
    let detail = if bad.is_empty() {
        format!("{totals}; {}", per_sale(&bad, &all))
    } else {
        format!(
            "{} of {n_sales} sales oversold: {}; {totals}",
            bad.len(),
            per_sale(&bad, &all)
        )
    };
    Check::new(check::NO_OVERSELL, bad.is_empty(), detail)
}

/// Check 2: no (sale, user) with more active orders than the sale's per-person limit.
fn one_per_person_check(snap: &Snapshot, totals: &Totals) -> Check {
    let Totals {
        sales: n_sales,
        active,
        ..
    } = *totals;
    let pairs: i64 = snap.dups_per_sale.values().sum();
    let detail = if pairs == 0 {
        format!(
            "no (sale, user) over its sale's per-person limit among {active} active orders of {n_sales} sales"
        )
    } else {
        let per: Vec<String> = snap
            .dups_per_sale
            .iter()
            .map(|(sale, n)| format!("sale {sale}: {n} users"))
            .collect();
        let rows: Vec<String> = snap
            .dup_listed
            .iter()
            .map(|(sale, user, n, limit)| {
                format!("sale {sale} user {user:?}: {n} active (limit {limit})")
            })
            .collect();
        format!(
            "{pairs} (sale, user) pairs over their sale's per-person limit ({}); first: {}",
            per_sale(&per, &per),
            bounded(&rows, OFFENDERS_LISTED_MAX)
        )
    };
    Check::new(check::ONE_PER_PERSON, pairs == 0, detail)
}

/// Check 3: every accepted ticket has an outcome, consistent with the orders.
fn no_lost_purchase_check(input: &AuditInput, t: &TicketTally) -> Check {
    let rejected: u64 = t.rejected.values().sum();
    let reasons = t
        .rejected
        .iter()
        .map(|(why, n)| format!("{why} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut detail = format!(
        "{} tickets ({} distinct): {} resolved ({} ordered, {rejected} rejected{}), {} missing",
        t.given,
        t.distinct,
        t.ordered + rejected,
        t.ordered,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {reasons}")
        },
        t.missing
    );
    if t.missing > 0 {
        let _ = write!(
            detail,
            "; first missing: {}",
            bounded(&t.missing_listed, OFFENDERS_LISTED_MAX)
        );
        if !input.at_rest {
            detail.push_str(" (not at rest: some may still be queued)");
        }
    }
    if t.inconsistent > 0 {
        let _ = write!(
            detail,
            "; {} inconsistent: {}",
            t.inconsistent,
            bounded(&t.inconsistent_listed, OFFENDERS_LISTED_MAX)
        );
    }
    if t.given == 0 {
        detail.push_str(" (no tickets given)");
    }
    Check::new(
        check::NO_LOST_PURCHASE,
        t.missing == 0 && t.inconsistent == 0,
        detail,
    )
}

/// Check 4: per sale, units = units left + active orders in the database.
fn conservation_db_check(snap: &Snapshot, totals: &Totals) -> Check {
    let Totals {
        sales: n_sales,
        units,
        left,
        active,
        ..
    } = *totals;
    let mut bad = Vec::new();
    let mut all = Vec::new();
    for s in &snap.sales {
        let a = s.pending + s.paid;
        let sum = s.units_left.saturating_add(a);
        let line = format!(
            "sale {}: {} = {} left + {a} active",
            s.id, s.units, s.units_left
        );
        if sum != s.units {
            bad.push(format!(
                "sale {}: {} units ≠ {} left + {a} active = {sum}",
                s.id, s.units, s.units_left
            ));
        }
        all.push(line);
    }
    let detail = if bad.is_empty() {
        format!(
            "{units} units = {left} left + {active} active; {}",
            per_sale(&bad, &all)
        )
    } else {
        format!(
            "{} of {n_sales} sales do not add up: {}; totals: {units} units, {left} left, {active} active",
            bad.len(),
            per_sale(&bad, &all)
        )
    };
    Check::new(check::CONSERVATION_DB, bad.is_empty(), detail)
}

/// Check 6: no overdue pending order, none both paid and cancelled, none paid late.
fn timely_cancellation_check(input: &AuditInput, snap: &Snapshot, totals: &Totals) -> Check {
    let cancelled = totals.cancelled;
    let mut t = Timing::default();
    for x in snap.timing.values() {
        t.overdue += x.overdue;
        t.paid_and_cancelled += x.paid_and_cancelled;
        t.paid_late += x.paid_late;
        t.cancelled_late += x.cancelled_late;
        t.max_cancel_delay_ms = t.max_cancel_delay_ms.max(x.max_cancel_delay_ms);
    }
    let passed = !t.failing();
    let mut detail = format!(
        "{} pending more than {CANCEL_GRACE_MS} ms past pay-by (now {}), {} both paid and \
         cancelled, {} paid at or after pay-by; {cancelled} cancelled, {} of them more than \
         {CANCEL_GRACE_MS} ms after pay-by{}",
        t.overdue,
        input.now_ms,
        t.paid_and_cancelled,
        t.paid_late,
        t.cancelled_late,
        match t.max_cancel_delay_ms {
            Some(ms) => format!(" (latest {ms} ms after)"),
            None => String::new(),
        }
    );
    if !passed {
        let per: Vec<String> = snap
            .timing
            .iter()
            .filter(|(_, x)| x.failing())
            .map(|(sale, x)| {
                format!(
                    "sale {sale}: {} overdue, {} paid+cancelled, {} paid late",
                    x.overdue, x.paid_and_cancelled, x.paid_late
                )
            })
            .collect();
        let rows: Vec<String> = snap
            .timing_listed
            .iter()
            .map(|o| {
                format!(
                    "order {} (sale {}, user {:?}, {}, pay-by {}, paid {:?}, cancelled {:?})",
                    o.id, o.sale, o.user, o.status, o.pay_by_ms, o.paid_ms, o.cancelled_ms
                )
            })
            .collect();
        let _ = write!(
            detail,
            "; {}; first: {}",
            per_sale(&per, &per),
            bounded(&rows, OFFENDERS_LISTED_MAX)
        );
    }
    Check::new(check::TIMELY_CANCELLATION, passed, detail)
}

/// Check 7: no stock counter below zero, in the database or the store.
fn no_negative_stock_check(
    snap: &Snapshot,
    store_reads: &BTreeMap<i64, StoreRead>,
    source: StoreSource<'_>,
) -> Check {
    let mut bad = Vec::new();
    let db_low = snap.sales.iter().min_by_key(|s| s.units_left);
    for s in &snap.sales {
        if s.units_left < 0 {
            bad.push(format!(
                "sale {}: database units_left {}",
                s.id, s.units_left
            ));
        }
    }
    let mut store_low: Option<(i64, i64)> = None;
    for (sale, r) in store_reads {
        if let Some((b, l)) = r.lowest_bucket
            && l < 0
        {
            bad.push(format!("sale {sale}: store bucket {b} left {l}"));
        }
        if let Some(f) = r.figures {
            if f.left < 0 {
                bad.push(format!("sale {sale}: store left {}", f.left));
            }
            if f.units < 0 {
                bad.push(format!("sale {sale}: store units {}", f.units));
            }
            if store_low.is_none_or(|(_, l)| f.left < l) {
                store_low = Some((*sale, f.left));
            }
        }
    }
    let mut detail = match db_low {
        Some(s) => format!(
            "lowest database units_left {} (sale {})",
            s.units_left, s.id
        ),
        None => "no sales".to_string(),
    };
    match (source, store_low) {
        (StoreSource::None, _) => detail.push_str("; no store given"),
        (_, None) => detail.push_str("; the store holds none of the sales"),
        (StoreSource::Redis(_), Some((sale, l))) => {
            let _ = write!(
                detail,
                "; lowest store left {l} (sale {sale}, raw from Redis)"
            );
        }
        (_, Some((sale, l))) => {
            let _ = write!(
                detail,
                "; lowest store left {l} (sale {sale}; read through the store's API, \
                 which cannot represent a negative count)"
            );
        }
    }
    if !bad.is_empty() {
        detail = format!("{}; {detail}", bounded(&bad, SALES_LISTED_MAX));
    }
    Check::new(check::NO_NEGATIVE_STOCK, bad.is_empty(), detail)
}

/// Check 5 with a store: asserted at rest, reported otherwise.
fn store_check(
    input: &AuditInput,
    snap: &Snapshot,
    reads: &BTreeMap<i64, StoreRead>,
    compare_holders: bool,
) -> Check {
    let mut bad = Vec::new();
    let mut all = Vec::new();
    let (mut s_left, mut s_holders, mut tag_mismatches) = (0i64, 0i64, 0usize);
    let mut sets_compared = 0usize;
    for s in &snap.sales {
        let active = s.pending + s.paid;
        let Some(read) = reads.get(&s.id) else {
            continue;
        };
        let Some(f) = read.figures else {
            bad.push(format!("sale {}: not in the store", s.id));
            all.push(format!("sale {}: not in the store", s.id));
            continue;
        };
        s_left = s_left.saturating_add(f.left);
        s_holders = s_holders.saturating_add(f.holders);
        all.push(format!(
            "sale {}: store {} left + {} holders of {} (database {} left + {active} active of {})",
            s.id, f.left, f.holders, f.units, s.units_left, s.units
        ));
        let mut why = Vec::new();
        if f.left.saturating_add(f.holders) != s.units {
            why.push(format!(
                "{} left + {} holders ≠ {} units",
                f.left, f.holders, s.units
            ));
        }
        if f.units != s.units {
            why.push(format!(
                "store units {} ≠ database units {}",
                f.units, s.units
            ));
        }
        if f.left != s.units_left {
            why.push(format!(
                "store left {} ≠ database units_left {}",
                f.left, s.units_left
            ));
        }
        if f.holders != active {
            why.push(format!(
                "{} store holders ≠ {active} active orders",
                f.holders
            ));
        }
        if let (Some(store_users), Some(db_users)) = (&read.holders, snap.holders.get(&s.id)) {
            sets_compared += 1;
            // Per user: reservations in the store beyond their active orders, and active
            // orders beyond their reservations.
            let held = |m: &HashMap<String, Vec<String>>, u: &str| m.get(u).map_or(0, Vec::len);
            let mut extra: Vec<&str> = store_users
                .keys()
                .filter(|u| held(store_users, u) > held(db_users, u))
                .map(String::as_str)
                .collect();
            let mut absent: Vec<&str> = db_users
                .keys()
                .filter(|u| held(db_users, u) > held(store_users, u))
                .map(String::as_str)
                .collect();
            extra.sort_unstable();
            absent.sort_unstable();
            if !extra.is_empty() {
                why.push(format!(
                    "{} store holders without an active order (first: {})",
                    extra.len(),
                    extra
                        .iter()
                        .take(OFFENDERS_LISTED_MAX)
                        .map(|u| format!("{u:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !absent.is_empty() {
                why.push(format!(
                    "{} active orders without a store holder (first: {})",
                    absent.len(),
                    absent
                        .iter()
                        .take(OFFENDERS_LISTED_MAX)
                        .map(|u| format!("{u:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !read.misplaced.is_empty() {
                why.push(format!(
                    "{} holder records out of place (first: {})",
                    read.misplaced.len(),
                    read.misplaced
                        .iter()
                        .take(OFFENDERS_LISTED_MAX)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // Reservations whose tag is none of their holder's active orders' tickets.
            tag_mismatches += store_users
                .iter()
                .filter_map(|(u, tags)| db_users.get(u).map(|tickets| (tags, tickets)))
                .map(|(tags, tickets)| tags.iter().filter(|t| !tickets.contains(t)).count())
                .sum::<usize>();
        }
        if !why.is_empty() {
            bad.push(format!("sale {}: {}", s.id, why.join(", ")));
        }
    }
    let how = if compare_holders && !snap.holders_skipped {
        format!(
            "holder sets compared for {sets_compared} sales, {tag_mismatches} tags differ from the orders' tickets"
        )
    } else if compare_holders {
        format!("holders compared by count (more than {HOLDERS_COMPARED_MAX} active orders)")
    } else {
        "holders compared by count".to_string()
    };
    let totals = format!("store {s_left} left + {s_holders} holders");
    if !input.at_rest {
        return Check::new(
            check::CONSERVATION_STORE,
            true,
            format!(
                "not at rest: not asserted ({} of {} sales would differ); {totals}; {}",
                bad.len(),
                snap.sales.len(),
                per_sale(&bad, &all)
            ),
        );
    }
    if bad.is_empty() {
        Check::new(
            check::CONSERVATION_STORE,
            true,
            format!(
                "at rest, {totals} match the database; {how}; {}",
                per_sale(&bad, &all)
            ),
        )
    } else {
        Check::new(
            check::CONSERVATION_STORE,
            false,
            format!(
                "at rest, {} of {} sales differ: {}; {totals}; {how}",
                bad.len(),
                snap.sales.len(),
                per_sale(&bad, &all)
            ),
        )
    }
}

/// Exit status of [`run_cli`] when a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of [`run_cli`] when the audit could not run.
pub const EXIT_ERROR: u8 = 2;

/// The `audit` command: checks the invariants of a deployment.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The orders database: `sqlite:PATH` (must exist) or `postgres://…`; repeated (or
    /// several URLs separated by whitespace) for a database sharded by sale, the control
    /// shard first, as the gateway's `--database`. Each shard is read in a snapshot of its
    /// own.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:data/orders.db")]
    pub database: Vec<String>,
    /// The stock store: `memory` (in a gateway's process: not checked) or a Redis URL
    /// (`redis://127.0.0.1:6379`, or `redis+cluster://HOST:PORT,HOST:PORT`).
    #[arg(long, env = "GATEWAY_INVENTORY", default_value = "memory")]
    pub inventory: String,
    /// Key prefix in Redis (the gateway's).
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "seckill:")]
    pub redis_prefix: String,
    /// A sale to audit (repeatable); none: every sale.
    #[arg(long = "sale")]
    pub sales: Vec<u64>,
    /// Tickets that got a 202, one a line (or a JSON object with a `tickets` array):
    /// each must have an outcome.
    #[arg(long)]
    pub tickets: Option<PathBuf>,
    /// The queue is drained: the store must match the database exactly.
    #[arg(long)]
    pub at_rest: bool,
}

/// Reads a tickets file: one ticket a line (blank lines and `#` comments skipped), or a
/// JSON object with a `tickets` array of strings.
pub fn read_tickets(path: &std::path::Path) -> Result<Vec<String>, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Invalid(format!("reading {}: {e}", path.display())))?;
    let tickets: Vec<String> = if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AuditError::Invalid(format!("{}: {e}", path.display())))?;
        let Some(list) = v.get("tickets").and_then(|t| t.as_array()) else {
            return Err(AuditError::Invalid(format!(
                "{}: a JSON tickets file needs a \"tickets\" array",
                path.display()
            )));
        };
        list.iter()
            .map(|t| {
                t.as_str().map(str::to_string).ok_or_else(|| {
                    AuditError::Invalid(format!("{}: a ticket is a string", path.display()))
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    if tickets.len() > AUDIT_TICKETS_MAX {
        return Err(AuditError::Invalid(format!(
            "{}: more than {AUDIT_TICKETS_MAX} tickets",
            path.display()
        )));
    }
    Ok(tickets)
}

/// The `audit` command: 0 when every check passed, [`EXIT_FAILED`] when one failed,
/// [`EXIT_ERROR`] when the audit could not run.
pub async fn run_cli(args: AuditArgs) -> ExitCode {
    ExitCode::from(cli_status(&args).await)
}

/// [`run_cli`]'s work, returning its exit status.
pub async fn cli_status(args: &AuditArgs) -> u8 {
    match cli_report(args).await {
        Ok(report) => {
            report.print();
            if report.passed() { 0 } else { EXIT_FAILED }
        }
        Err(e) => {
            eprintln!("audit: {e}");
            EXIT_ERROR
        }
    }
}

/// Connects, audits and returns the report (not printed).
pub async fn cli_report(args: &AuditArgs) -> Result<AuditReport, AuditError> {
    let database = args.database.join(" ");
    for url in database.split_whitespace() {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let path = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(path).is_file() {
                return Err(AuditError::Invalid(format!("no SQLite database at {path}")));
            }
        }
    }
    let tickets = match &args.tickets {
        Some(path) => read_tickets(path)?,
        None => Vec::new(),
    };
    let redis = if args.inventory == "memory" {
        None
    } else {
        Some(Arc::new(
            RedisStore::connect(&args.inventory, &args.redis_prefix, 4).await?,
        ))
    };
    let db = OrdersDb::connect(&database, &DbOptions::default()).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let input = AuditInput {
        db: db.clone(),
        store: redis.clone().map(|r| r as Arc<dyn StockStore>),
        sales: if args.sales.is_empty() {
            None
        } else {
            Some(args.sales.clone())
        },
        tickets,
        at_rest: args.at_rest,
        now_ms,
    };
    let report = match &redis {
        Some(r) => audit_redis(&input, r).await,
        None => audit(&input).await,
    };
    db.close().await;
    report
}
