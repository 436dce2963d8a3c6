//! [`OrdersDb`]: the orders database as its callers see it, one [`Shard`] or several, each
//! sale on one shard. The methods are [`Shard`]'s, routed:
//!
//! - **Routes.** Sale ids are global. The first shard (the *control shard*) holds the
//!   routing table `sale_shards(sale, shard)`; [`OrdersDb::create_sale`] writes the route
//!   (the id's uniqueness across shards, the [`SALES_MAX`] bound) and then the sale on the
//!   chosen shard: the one with the fewest sales (ties: the lowest index). A route never
//!   changes; routes are cached in memory and read again on a miss. A sale without a route
//!   is on the control shard (a sale created with one shard; connecting with several
//!   adopts the control shard's sales into the table).
//! - **Per sale** (a sale, its holders and counts, a rejection, a batch's purchases): on the
//!   sale's shard. [`OrdersDb::decide_batch`] splits a batch by shard and decides each part
//!   in that shard's own transaction.
//! - **By ticket or order id** (outcome, order, payment, cancellation): the ids do not name
//!   their sale, so the shards are asked in turn.
//! - **Lists and totals** (sales, order totals, overdue orders): the union of the shards.
//! - **Control data** (the `workers` heartbeats): on the control shard.
//!
//! **No transaction ever spans two shards.** A batch whose purchases fall on two shards is
//! two transactions: if the second fails after the first committed, the call fails
//! (transient) and the worker's retry finds the first part's decisions recorded (as a
//! redelivery does), so nothing is decided twice. A cancellation of orders on several
//! shards is likewise one transaction per shard; the canceller lists what ended cancelled
//! ([`OrdersDb::cancelled_among`]) before releasing units.
//!
//! With one shard (one `--database`), every call goes straight to it and the routing table
//! is not used: exactly the one-database behaviour. All shards are of one backend.
//!
//! A multi-host PostgreSQL shard re-resolves its primary after a connection-level error
//! (module `failover`); the error is returned as it is, transient, and retried by the
//! caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use sqlx::Row;

use super::failover::{self, Failover};
use super::{
    BATCH_MAX, Cancelled, DbError, DbOptions, DbResult, Decision, NewSale, Order, OrderCounts,
    OrderTotals, Outcome, Payment, SALES_MAX, SHARDS_MAX, Sale, Shard, USER_ORDERS_MAX, UserOrders,
    WorkerAge, WorkerBeat, to_i64,
};
use crate::purchase::PurchaseMessage;

/// One shard and, for a multi-host PostgreSQL shard, its failover.
#[derive(Debug, Clone)]
struct Member {
    db: Shard,
    failover: Option<Arc<Failover>>,
}

#[derive(Debug)]
struct Routed {
    members: Vec<Member>,
    /// Sale → shard, for the routes read or written so far (they never change).
    routes: Arc<RwLock<HashMap<u64, usize>>>,
}

/// The orders database: one shard or several (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrdersDb {
    inner: Arc<Routed>,
}

impl From<Shard> for OrdersDb {
    /// A one-shard database on `shard`.
    fn from(shard: Shard) -> OrdersDb {
        OrdersDb::of(vec![Member {
            db: shard,
            failover: None,
        }])
    }
}

impl OrdersDb {
    fn of(members: Vec<Member>) -> OrdersDb {
        OrdersDb {
            inner: Arc::new(Routed {
                members,
                routes: Arc::new(RwLock::new(HashMap::new())),
            }),
        }
    }

    /// Opens the shards `urls` names — one URL or several separated by whitespace, each a
    /// shard, the first the control shard — and brings their schemas up to date. Each URL is
    /// `sqlite:PATH` (created with its directory if missing; WAL) or `postgres://…` /
    /// `postgresql://…`, which may name a primary and its standbys
    /// (`postgres://u@h1:p1,h2:p2/db`). All shards must be of one backend.
    pub async fn connect(urls: &str, options: &DbOptions) -> DbResult<OrdersDb> {
        let list: Vec<&str> = urls.split_whitespace().collect();
        if list.is_empty() {
            return Err(DbError::Invalid("no database URL".into()));
        }
        if list.len() > SHARDS_MAX {
            return Err(DbError::Invalid(format!(
                "at most {SHARDS_MAX} shards, not {}",
                list.len()
            )));
        }
        let mut members: Vec<Member> = Vec::with_capacity(list.len());
        for url in list {
            let (db, failover) = Shard::connect(url, options).await?;
            if let Some(first) = members.first()
                && first.db.backend() != db.backend()
            {
                return Err(DbError::Invalid(format!(
                    "all shards must be of one backend: {} and {}",
                    first.db.backend(),
                    db.backend()
                )));
            }
            members.push(Member { db, failover });
        }
        let db = OrdersDb::of(members);
        if db.shard_count() > 1 {
            db.adopt_routes().await?;
        }
        Ok(db)
    }

    /// How many shards.
    pub fn shard_count(&self) -> usize {
        self.inner.members.len()
    }

    /// Shard `i` (0: the control shard), if there is one.
    pub fn shard(&self, i: usize) -> Option<&Shard> {
        self.inner.members.get(i).map(|m| &m.db)
    }

    /// The control shard: the only one with one `--database`; it holds the routing table and
    /// the workers' heartbeats.
    pub fn control(&self) -> &Shard {
        &self.inner.members[0].db
    }

    /// The host a multi-host PostgreSQL shard `i` uses now (`host:port`); `None` for other
    /// shards.
    pub fn primary_of(&self, i: usize) -> Option<String> {
        let m = self.inner.members.get(i)?;
        m.failover.as_ref().map(|f| f.current_host().to_string())
    }

    /// Another pool per shard, of at most `max_connections` each (see [`Shard`]'s
    /// `sibling`): the gateway's request path uses one. Shares the routes. Close it too.
    pub fn sibling(&self, max_connections: u32) -> OrdersDb {
        let members = self
            .inner
            .members
            .iter()
            .map(|m| match (&m.failover, &m.db) {
                (Some(f), Shard::Postgres(_)) => {
                    let f = f.sibling();
                    let max = max_connections.clamp(1, super::CONNECTIONS_MAX);
                    Member {
                        db: Shard::Postgres(f.pool(max, super::READ_ACQUIRE_TIMEOUT)),
                        failover: Some(f),
                    }
                }
                _ => Member {
                    db: m.db.sibling(max_connections),
                    failover: None,
                },
            })
            .collect();
        OrdersDb {
            inner: Arc::new(Routed {
                members,
                routes: self.inner.routes.clone(),
            }),
        }
    }

    /// Connections open now (in use or idle), all shards.
    pub fn connections(&self) -> u32 {
        self.inner.members.iter().map(|m| m.db.connections()).sum()
    }

    /// `"sqlite"` or `"postgres"` (every shard's).
    pub fn backend(&self) -> &'static str {
        self.control().backend()
    }

    /// Refreshes the planner's statistics on every shard (see [`Shard`]'s `analyze`).
    pub async fn analyze(&self) -> DbResult<()> {
        for i in 0..self.shard_count() {
            let r = self.member(i).db.analyze().await;
            self.watch(i, r).await?;
        }
        Ok(())
    }

    /// Closes every shard's pool (waits for connections in use).
    pub async fn close(&self) {
        for m in &self.inner.members {
            m.db.close().await;
        }
    }

    /// Looks again which host of multi-host shard `i` is the primary (rate-limited like
    /// every re-resolve); for callers that read a shard's pool directly ([`Self::shard`]:
    /// the auditor) and saw an error. Nothing for other shards.
    pub async fn recheck_primary(&self, i: usize) {
        if let Some(m) = self.inner.members.get(i)
            && let (Some(f), Shard::Postgres(pool)) = (&m.failover, &m.db)
        {
            f.resolve(pool).await;
        }
    }

    fn member(&self, i: usize) -> &Member {
        &self.inner.members[i]
    }

    /// Shard `i`'s database (for the operations kept in their own files: `sale_control`,
    /// `lookup`); `i` below [`Self::shard_count`].
    pub(super) fn shard_db(&self, i: usize) -> &Shard {
        &self.member(i).db
    }

    /// Hands `r`, the result of an operation on shard `i`, back; after a connection-level
    /// error on a multi-host shard, first re-resolves the shard's primary.
    pub(super) async fn watch<T>(&self, i: usize, r: DbResult<T>) -> DbResult<T> {
        if let Err(e) = &r
            && let Some(m) = self.inner.members.get(i)
            && let (Some(f), Shard::Postgres(pool)) = (&m.failover, &m.db)
            && failover::is_connection_error(e)
        {
            f.resolve(pool).await;
        }
        r
    }

    // ---- Routes ----

    /// Writes a route to the control shard for each of its sales without one (a database
    /// that had one shard and now has several).
    async fn adopt_routes(&self) -> DbResult<()> {
        // (`WHERE true`: SQLite needs it to tell the upsert from a join constraint.)
        let r = on_db!(self.control(), p => sqlx::query(
            "INSERT INTO sale_shards (sale, shard) SELECT id, 0 FROM sales WHERE true ON CONFLICT (sale) DO NOTHING")
            .execute(p).await.map(|_| ()).map_err(DbError::from));
        self.watch(0, r).await
    }

    /// The shard of `sale`: its route (cached), or the control shard if it has none.
    pub async fn shard_of(&self, sale: u64) -> DbResult<usize> {
        if self.shard_count() == 1 {
            return Ok(0);
        }
        if let Some(&i) = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sale)
        {
            return Ok(i);
        }
        let Some(i) = self.read_route(sale).await? else {
            return Ok(0);
        };
        if i >= self.shard_count() {
            return Err(DbError::Invalid(format!(
                "sale {sale} is on shard {i}, but only {} shards are configured",
                self.shard_count()
            )));
        }
        self.remember(sale, i);
        Ok(i)
    }

    fn remember(&self, sale: u64, shard: usize) {
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() < SALES_MAX {
            routes.insert(sale, shard);
        }
    }

    async fn read_route(&self, sale: u64) -> DbResult<Option<usize>> {
        let id = to_i64(sale, "sale id")?;
        let r = on_db!(self.control(), p => {
            let row = sqlx::query("SELECT shard FROM sale_shards WHERE sale = $1")
                .bind(id).fetch_optional(p).await.map_err(DbError::from);
            row.and_then(|row| row.map(|r| r.try_get::<i32, _>(0)).transpose().map_err(DbError::from))
        });
        let shard = self.watch(0, r).await?;
        Ok(shard.map(|s| usize::try_from(s).unwrap_or(usize::MAX)))
    }

    /// The shard with the fewest sales (ties: the lowest index).
    async fn emptiest_shard(&self) -> DbResult<usize> {
        let r = on_db!(self.control(), p => {
            let rows = sqlx::query("SELECT shard, COUNT(*) FROM sale_shards GROUP BY shard")
                .fetch_all(p).await.map_err(DbError::from);
            rows.and_then(|rows| rows.iter()
                .map(|r| Ok((r.try_get::<i32, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<DbResult<Vec<(i32, i64)>>>())
        });
        let counts = self.watch(0, r).await?;
        let mut per = vec![0i64; self.shard_count()];
        for (shard, n) in counts {
            if let Some(c) = usize::try_from(shard).ok().and_then(|s| per.get_mut(s)) {
                *c = n;
            }
        }
        Ok(per
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (**n, *i))
            .map_or(0, |(i, _)| i))
    }

    // ---- Sales ----

    /// Creates a sale with all its units left, on the shard with the fewest sales (see the
    /// module docs). `Invalid` if a setting is out of range or [`SALES_MAX`] sales exist,
    /// `Conflict` if the id is taken (on any shard), `Constraint` if the schema refuses the
    /// row anyway.
    pub async fn create_sale(&self, sale: &NewSale, now_ms: u64) -> DbResult<Sale> {
        if self.shard_count() == 1 {
            let r = self.control().create_sale(sale, now_ms).await;
            return self.watch(0, r).await;
        }
        let id = to_i64(sale.id, "sale id")?;
        let mut shard = self.emptiest_shard().await?;
        let r = on_db!(self.control(), p => sqlx::query(
            "INSERT INTO sale_shards (sale, shard) SELECT $1, $2 \
             WHERE (SELECT COUNT(*) FROM sale_shards) < $3 ON CONFLICT (sale) DO NOTHING")
            .bind(id).bind(shard as i32).bind(SALES_MAX as i64)
            .execute(p).await.map(|d| d.rows_affected()).map_err(DbError::from));
        let routed_here = self.watch(0, r).await? == 1;
        if !routed_here {
            match self.read_route(sale.id).await? {
                None => return Err(DbError::Invalid(format!("at most {SALES_MAX} sales"))),
                Some(i) if i >= self.shard_count() => {
                    return Err(DbError::Conflict(format!("sale {} exists", sale.id)));
                }
                Some(i) => {
                    if self.sale_on(i, sale.id).await?.is_some() {
                        return Err(DbError::Conflict(format!("sale {} exists", sale.id)));
                    }
                    // A route without its sale (a crash between the two writes): the
                    // route stands, the sale goes where it says.
                    shard = i;
                }
            }
        }
        let r = self.member(shard).db.create_sale(sale, now_ms).await;
        match self.watch(shard, r).await {
            Ok(created) => {
                self.remember(sale.id, shard);
                Ok(created)
            }
            Err(e) => {
                if routed_here && matches!(e, DbError::Invalid(_) | DbError::Constraint { .. }) {
                    // Refused for certain (a setting out of range, the shard's bound): the
                    // route goes too, best effort (left behind, it is re-used by the next
                    // creation). After any other error the insert may have committed (a lost
                    // reply), so the route stays: deleting it would hide a live sale.
                    let _ = on_db!(self.control(), p => sqlx::query(
                        "DELETE FROM sale_shards WHERE sale = $1").bind(id).execute(p).await.map(|_| ()));
                }
                Err(e)
            }
        }
    }

    async fn sale_on(&self, i: usize, id: u64) -> DbResult<Option<Sale>> {
        let r = self.member(i).db.sale(id).await;
        self.watch(i, r).await
    }

    /// One sale.
    pub async fn sale(&self, id: u64) -> DbResult<Option<Sale>> {
        let i = self.shard_of(id).await?;
        self.sale_on(i, id).await
    }

    /// Sales by id, every shard's (at most [`SALES_MAX`]).
    pub async fn sales(&self) -> DbResult<Vec<Sale>> {
        let mut all = Vec::new();
        for i in 0..self.shard_count() {
            let r = self.member(i).db.sales().await;
            all.extend(self.watch(i, r).await?);
        }
        if self.shard_count() > 1 {
            all.sort_by_key(|s| s.id);
            all.truncate(SALES_MAX);
        }
        Ok(all)
    }

    /// The users holding an active order of `sale`.
    pub async fn active_holders(&self, sale: u64) -> DbResult<Vec<String>> {
        let i = self.shard_of(sale).await?;
        let r = self.member(i).db.active_holders(sale).await;
        self.watch(i, r).await
    }

    /// The users holding an active order of `sale`, each with its ticket.
    pub async fn active_holder_tags(&self, sale: u64) -> DbResult<Vec<inventory::Holder>> {
        let i = self.shard_of(sale).await?;
        let r = self.member(i).db.active_holder_tags(sale).await;
        self.watch(i, r).await
    }

    /// Whether `user` holds an active order of `sale`.
    pub async fn holds_active(&self, sale: u64, user: &str) -> DbResult<bool> {
        let i = self.shard_of(sale).await?;
        let r = self.member(i).db.holds_active(sale, user).await;
        self.watch(i, r).await
    }

    /// Orders of `sale` by status.
    pub async fn order_counts(&self, sale: u64) -> DbResult<OrderCounts> {
        let i = self.shard_of(sale).await?;
        let r = self.member(i).db.order_counts(sale).await;
        self.watch(i, r).await
    }

    /// Orders of every sale by status, summed over the shards.
    pub async fn order_totals(&self) -> DbResult<OrderTotals> {
        let mut t = OrderTotals::default();
        for i in 0..self.shard_count() {
            let r = self.member(i).db.order_totals().await;
            let s = self.watch(i, r).await?;
            t.created += s.created;
            t.pending += s.pending;
            t.paid += s.paid;
            t.cancelled += s.cancelled;
        }
        Ok(t)
    }

    // ---- Purchases ----

    /// Decides a batch of purchases: one transaction per shard the batch's sales are on
    /// (see the module docs of [`crate::db`] and of this type); one decision per purchase,
    /// in order. A purchase of a sale without a route goes to the control shard, which
    /// rejects it `no_such_sale` as for any unknown sale.
    pub async fn decide_batch(
        &self,
        purchases: &[PurchaseMessage],
        now_ms: u64,
    ) -> DbResult<Vec<Decision>> {
        if self.shard_count() == 1 || purchases.is_empty() || purchases.len() > BATCH_MAX {
            let r = self.control().decide_batch(purchases, now_ms).await;
            return self.watch(0, r).await;
        }
        let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, p) in purchases.iter().enumerate() {
            parts
                .entry(self.shard_of(p.sale).await?)
                .or_default()
                .push(k);
        }
        let mut out: Vec<Option<Decision>> = vec![None; purchases.len()];
        for (i, idxs) in parts {
            let part: Vec<PurchaseMessage> = idxs.iter().map(|&k| purchases[k].clone()).collect();
            let r = self.member(i).db.decide_batch(&part, now_ms).await;
            let decided = self.watch(i, r).await?;
            if decided.len() != idxs.len() {
                return Err(DbError::Invalid(format!(
                    "shard {i} decided {} of {} purchases",
                    decided.len(),
                    idxs.len()
                )));
            }
            for (k, d) in idxs.into_iter().zip(decided) {
                out[k] = Some(d);
            }
        }
        out.into_iter()
            .map(|d| d.ok_or_else(|| DbError::Invalid("a purchase left undecided".into())))
            .collect()
    }

    /// How a ticket ended, if a worker has decided it (the shards asked in turn). A shard
    /// that fails does not hide another's answer: the error is returned only when no
    /// shard had the ticket.
    pub async fn outcome(&self, ticket: &str) -> DbResult<Option<Outcome>> {
        let mut failed = None;
        for i in 0..self.shard_count() {
            let r = self.member(i).db.outcome(ticket).await;
            match self.watch(i, r).await {
                Ok(Some(o)) => return Ok(Some(o)),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Outcomes recorded for `sale`, ordered and rejected.
    pub async fn outcome_counts(&self, sale: u64) -> DbResult<(u64, u64)> {
        let i = self.shard_of(sale).await?;
        let r = self.member(i).db.outcome_counts(sale).await;
        self.watch(i, r).await
    }

    /// Records `purchase`'s ticket as rejected with `why` unless it is decided already, on
    /// its sale's shard; returns whether this recorded it.
    pub async fn record_rejection(
        &self,
        purchase: &PurchaseMessage,
        why: &str,
        now_ms: u64,
    ) -> DbResult<bool> {
        let i = self.shard_of(purchase.sale).await?;
        let r = self
            .member(i)
            .db
            .record_rejection(purchase, why, now_ms)
            .await;
        self.watch(i, r).await
    }

    // ---- Orders ----

    /// One order (the shards asked in turn; a failing shard does not hide another's
    /// order, as for [`Self::outcome`]).
    pub async fn order(&self, id: &str) -> DbResult<Option<Order>> {
        let mut failed = None;
        for i in 0..self.shard_count() {
            let r = self.member(i).db.order(id).await;
            match self.watch(i, r).await {
                Ok(Some(o)) => return Ok(Some(o)),
                Ok(None) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Pays order `id` of `user` (see [`Payment`]) on the shard that has it (a failing
    /// shard does not stop the payment of an order on another).
    pub async fn pay(&self, id: &str, user: &str, now_ms: u64) -> DbResult<Payment> {
        let mut failed = None;
        for i in 0..self.shard_count() {
            let r = self.member(i).db.pay(id, user, now_ms).await;
            match self.watch(i, r).await {
                Ok(Payment::NotFound) => {}
                Ok(paid) => return Ok(paid),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(Payment::NotFound), Err)
    }

    /// `user`'s orders on every shard, newest first (ties: by id), at most `limit` (itself
    /// at most [`USER_ORDERS_MAX`]). As for [`Self::order`], a failing shard does not hide
    /// the others' orders: they come back with `complete: false`; the error only when
    /// every shard failed.
    pub async fn orders_of_user(&self, user: &str, limit: usize) -> DbResult<UserOrders> {
        let limit = limit.min(USER_ORDERS_MAX);
        let mut all = Vec::new();
        let mut failed = None;
        let mut answered = 0;
        for i in 0..self.shard_count() {
            let r = self.member(i).db.orders_of_user(user, limit).await;
            match self.watch(i, r).await {
                Ok(orders) => {
                    answered += 1;
                    all.extend(orders);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) if answered == 0 => Err(e),
            failed => {
                all.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
                all.truncate(limit);
                Ok(UserOrders {
                    orders: all,
                    complete: failed.is_none(),
                })
            }
        }
    }

    // ---- Cancellation ----

    /// Cancels the orders among `order_ids` still pending, on every shard (one transaction
    /// each), and returns them.
    pub async fn cancel_due(&self, order_ids: &[String], now_ms: u64) -> DbResult<Vec<Cancelled>> {
        let mut all = Vec::new();
        for i in 0..self.shard_count() {
            let r = self.member(i).db.cancel_due(order_ids, now_ms).await;
            all.extend(self.watch(i, r).await?);
        }
        Ok(all)
    }

    /// Pending orders past their pay-by time, at most `limit` (each shard's earliest first).
    pub async fn overdue(&self, now_ms: u64, limit: usize) -> DbResult<Vec<String>> {
        let mut all = Vec::new();
        let mut failed = None;
        for i in 0..self.shard_count() {
            if all.len() >= limit {
                break;
            }
            let r = self.member(i).db.overdue(now_ms, limit - all.len()).await;
            // A failing shard does not stop the sweep of the others; it is swept again
            // next time. The error only when every shard failed.
            match self.watch(i, r).await {
                Ok(ids) => all.extend(ids),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) if all.is_empty() => Err(e),
            _ => Ok(all),
        }
    }

    /// The orders among `order_ids` that are cancelled, every shard's.
    pub async fn cancelled_among(&self, order_ids: &[String]) -> DbResult<Vec<Cancelled>> {
        let mut all = Vec::new();
        for i in 0..self.shard_count() {
            let r = self.member(i).db.cancelled_among(order_ids).await;
            all.extend(self.watch(i, r).await?);
        }
        Ok(all)
    }

    // ---- Workers (control data, on the control shard) ----

    /// Writes heartbeats (see [`Shard`]'s `heartbeat`).
    pub async fn heartbeat(&self, beats: &[WorkerBeat], now_ms: u64) -> DbResult<u64> {
        let r = self.control().heartbeat(beats, now_ms).await;
        self.watch(0, r).await
    }

    /// Deletes stale worker rows.
    pub async fn prune_workers(&self) -> DbResult<u64> {
        let r = self.control().prune_workers().await;
        self.watch(0, r).await
    }

    /// The workers' rows, at most `limit`.
    pub async fn workers(&self, limit: usize) -> DbResult<Vec<WorkerBeat>> {
        let r = self.control().workers(limit).await;
        self.watch(0, r).await
    }

    /// The workers' rows with their ages by the database's clock.
    pub async fn worker_ages(&self, limit: usize) -> DbResult<Vec<WorkerAge>> {
        let r = self.control().worker_ages(limit).await;
        self.watch(0, r).await
    }

    /// Marks workers stopped.
    pub async fn mark_stopped(&self, ids: &[String], now_ms: u64) -> DbResult<u64> {
        let r = self.control().mark_stopped(ids, now_ms).await;
        self.watch(0, r).await
    }
}
