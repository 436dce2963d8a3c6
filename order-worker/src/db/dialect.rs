//! The statements whose best form differs by backend.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row};

use super::rows::{Cancelled, NewOrder, NewOutcome, SaleTerms};
use super::{DbError, DbResult, ROWS_PER_STATEMENT, to_u64};

/// Row of a decision found again: ticket, order id, reason, pay-by time.
pub(super) type KnownRow = (String, Option<String>, Option<String>, Option<i64>);

/// The statements of [`OrdersDb::decide_batch`] whose best form differs by backend. SQLite
/// takes multi-row `VALUES` and `IN (…)` lists (its planner uses the indexes for them).
/// PostgreSQL takes one array per column (`unnest`): one short statement whatever the
/// batch size, and look-ups that join the array against the unique indexes, so the plan
/// never depends on table statistics (with `IN ($2, …, $501)` and a fresh, unanalyzed table
/// the generic plan scanned every order of the sale and compared each with the whole list:
/// 222 orders/s).
pub(super) trait Dialect {
    /// Step 1 of a batch: the decisions already recorded for these tickets, and the terms
    /// of these `sales` (ascending ids), each sale's row locked until the commit
    /// (PostgreSQL: `FOR UPDATE`, in ascending id order; SQLite's `BEGIN IMMEDIATE` holds
    /// the whole database already). A sale the database does not know is not in the map.
    async fn recall_and_lock(
        &mut self,
        tickets: &[&str],
        sales: &[i64],
    ) -> DbResult<(Vec<KnownRow>, HashMap<i64, SaleTerms>)>;
    /// Those of `users` holding active orders of `sale`, each with the slots those orders
    /// take (read after the sale's row is locked).
    async fn active_slots(
        &mut self,
        sale: i64,
        users: &[&str],
    ) -> DbResult<HashMap<String, Vec<i64>>>;
    /// The last step of a batch: takes the units granted of each sale (`(sale, units)`,
    /// each only if that many are left: `… WHERE units_left >= units`, the last guard
    /// against oversell), inserts the pending orders and the outcomes, all decided at
    /// `now`. Returns the first sale whose units could not be taken (the caller then
    /// fails the transaction), `None` if all were.
    async fn record_batch(
        &mut self,
        takes: &[(i64, i64)],
        orders: &[NewOrder],
        outcomes: &[NewOutcome<'_>],
        now: i64,
    ) -> DbResult<Option<i64>>;
    /// The distinct sales of these orders.
    async fn sales_of(&mut self, order_ids: &[String]) -> DbResult<Vec<i64>>;
    /// Cancels those of these orders still pending with their pay-by time at or before
    /// `now`; returns them.
    async fn cancel_pending(&mut self, order_ids: &[String], now: i64) -> DbResult<Vec<Cancelled>>;
    /// Those of these orders that are cancelled.
    async fn cancelled_among(&mut self, order_ids: &[String]) -> DbResult<Vec<Cancelled>>;
}

/// Takes `$1` units of sale `$2` if at least `$3` (= `$1`) are left: the conditional
/// update that guards against oversell whatever the gateway's cache said.
const TAKE_UNITS: &str =
    "UPDATE sales SET units_left = units_left - $1 WHERE id = $2 AND units_left >= $3";

/// The columns [`terms_of`] reads, `FROM sales` (a macro, so statements stay
/// `&'static str` through `concat!`).
macro_rules! terms_select {
    () => {
        "SELECT units_left, price_cents, pay_window_ms, CAST(per_user_limit AS BIGINT) FROM sales"
    };
}

/// Reads a [`SaleTerms`] from `units_left, price_cents, pay_window_ms, per_user_limit`.
fn terms_of<R: Row>(r: &R) -> DbResult<SaleTerms>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    terms_of_at(r, 0)
}

/// [`terms_of`] from the columns at `at`, `at + 1`, ….
fn terms_of_at<R: Row>(r: &R, at: usize) -> DbResult<SaleTerms>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SaleTerms {
        units_left: r.try_get(at)?,
        price_cents: r.try_get(at + 1)?,
        pay_window_ms: r.try_get(at + 2)?,
        per_user_limit: r.try_get(at + 3)?,
    })
}

/// PostgreSQL, step 1 of a batch in one round trip: the sales `$2` locked `FOR UPDATE` in
/// ascending id order (the lock order of every transaction that changes a sale's active
/// orders), then the decisions recorded for the tickets `$1`, each with its order's pay-by
/// time. Two row shapes under one column list: a sale's row (`id` and its terms, the
/// ticket columns NULL) or a recorded decision (`ticket` and the rest; a ticket is never
/// NULL, it is `outcomes`' primary key). The recorded decisions are read with the
/// statement's snapshot, taken before any wait for a lock, as the separate look-up before
/// the lock read them; a ticket decided meanwhile by a concurrent delivery is caught by
/// `outcomes`' primary key and the batch is decided again one purchase at a time.
const RECALL_AND_LOCK: &str = "\
    WITH locked AS ( \
        SELECT id, units_left, price_cents, pay_window_ms, \
               CAST(per_user_limit AS BIGINT) AS per_user_limit \
        FROM sales WHERE id = ANY($2::int8[]) ORDER BY id FOR UPDATE) \
    SELECT id, units_left, price_cents, pay_window_ms, per_user_limit, \
           NULL::text AS ticket, NULL::text AS order_id, NULL::text AS reason, \
           NULL::int8 AS pay_by_ms \
    FROM locked \
    UNION ALL \
    SELECT NULL, NULL, NULL, NULL, NULL, t.ticket, t.order_id, t.reason, o.pay_by_ms \
    FROM unnest($1::text[]) AS k(ticket) \
    JOIN outcomes t ON t.ticket = k.ticket \
    LEFT JOIN orders o ON o.id = t.order_id";

/// PostgreSQL, the last step of a batch in one round trip: the units granted taken per
/// sale (`$1` sales, `$2` units, each only `WHERE units_left >= units`), the pending orders
/// (`$4`…`$10`, created at `$3`) and the outcomes (`$11`…`$15`, decided at `$3`) inserted.
/// Returns the ids of the sales whose units were taken; a sale missing from them makes
/// the caller fail the transaction (nothing of it is committed). The outcomes' foreign
/// key to the orders is checked at the end of the statement, when the orders are in.
const RECORD_BATCH: &str = "\
    WITH taken AS ( \
        UPDATE sales s SET units_left = s.units_left - t.units \
        FROM unnest($1::int8[], $2::int8[]) AS t(id, units) \
        WHERE s.id = t.id AND s.units_left >= t.units \
        RETURNING s.id), \
    new_orders AS ( \
        INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, \
                            created_ms, pay_by_ms, slot) \
        SELECT id, request_id, sale_id, user_id, price_cents, 'pending', $3, pay_by_ms, slot \
        FROM unnest($4::text[], $5::text[], $6::int8[], $7::text[], $8::int8[], $9::int8[], \
                    $10::int4[]) \
             AS r(id, request_id, sale_id, user_id, price_cents, pay_by_ms, slot)), \
    new_outcomes AS ( \
        INSERT INTO outcomes (ticket, sale_id, user_id, outcome, order_id, reason, decided_ms) \
        SELECT ticket, sale_id, user_id, \
               CASE WHEN order_id IS NULL THEN 'rejected' ELSE 'ordered' END, \
               order_id, reason, $3 \
        FROM unnest($11::text[], $12::int8[], $13::text[], $14::text[], $15::text[]) \
             AS r(ticket, sale_id, user_id, order_id, reason)) \
    SELECT id FROM taken";

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
    async fn recall_and_lock(
        &mut self,
        tickets: &[&str],
        sales: &[i64],
    ) -> DbResult<(Vec<KnownRow>, HashMap<i64, SaleTerms>)> {
        let mut known = Vec::new();
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
                known.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
        }
        let mut terms = HashMap::with_capacity(sales.len());
        for &sale in sales {
            let row = sqlx::query(concat!(terms_select!(), " WHERE id = $1"))
                .bind(sale)
                .fetch_optional(&mut *self)
                .await?;
            if let Some(r) = row {
                terms.insert(sale, terms_of(&r)?);
            }
        }
        Ok((known, terms))
    }

    async fn active_slots(
        &mut self,
        sale: i64,
        users: &[&str],
    ) -> DbResult<HashMap<String, Vec<i64>>> {
        let mut active: HashMap<String, Vec<i64>> = HashMap::new();
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "SELECT user_id, slot FROM orders WHERE status <> 'cancelled' AND sale_id = ",
            );
            qb.push_bind(sale);
            qb.push(" AND user_id IN (");
            let mut sep = qb.separated(", ");
            for u in chunk {
                sep.push_bind(*u);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *self).await? {
                active
                    .entry(r.try_get::<String, _>(0)?)
                    .or_default()
                    .push(r.try_get::<i64, _>(1)?);
            }
        }
        Ok(active)
    }

    async fn record_batch(
        &mut self,
        takes: &[(i64, i64)],
        orders: &[NewOrder],
        outcomes: &[NewOutcome<'_>],
        now: i64,
    ) -> DbResult<Option<i64>> {
        for &(sale, units) in takes {
            let r = sqlx::query(TAKE_UNITS)
                .bind(units)
                .bind(sale)
                .bind(units)
                .execute(&mut *self)
                .await?;
            if r.rows_affected() != 1 {
                return Ok(Some(sale));
            }
        }
        for chunk in orders.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) ",
            );
            qb.push_values(chunk, |mut b, o| {
                b.push_bind(o.id.as_str())
                    .push_bind(o.ticket.as_str())
                    .push_bind(o.sale)
                    .push_bind(o.user.as_str())
                    .push_bind(o.price_cents)
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(o.pay_by_ms)
                    .push_bind(o.slot);
            });
            qb.build().execute(&mut *self).await?;
        }
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
        Ok(None)
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
    async fn recall_and_lock(
        &mut self,
        tickets: &[&str],
        sales: &[i64],
    ) -> DbResult<(Vec<KnownRow>, HashMap<i64, SaleTerms>)> {
        let rows = sqlx::query(RECALL_AND_LOCK)
            .bind(tickets)
            .bind(sales)
            .fetch_all(&mut *self)
            .await?;
        let mut known = Vec::new();
        let mut terms = HashMap::with_capacity(sales.len());
        for r in &rows {
            match r.try_get::<Option<String>, _>(5)? {
                Some(ticket) => known.push((ticket, r.try_get(6)?, r.try_get(7)?, r.try_get(8)?)),
                None => {
                    terms.insert(r.try_get::<i64, _>(0)?, terms_of_at(r, 1)?);
                }
            }
        }
        Ok((known, terms))
    }

    async fn active_slots(
        &mut self,
        sale: i64,
        users: &[&str],
    ) -> DbResult<HashMap<String, Vec<i64>>> {
        let rows = sqlx::query(
            "SELECT o.user_id, CAST(o.slot AS BIGINT) FROM unnest($2::text[]) AS u(user_id) \
             JOIN orders o ON o.sale_id = $1 AND o.user_id = u.user_id AND o.status <> 'cancelled'",
        )
        .bind(sale)
        .bind(users)
        .fetch_all(&mut *self)
        .await?;
        let mut active: HashMap<String, Vec<i64>> = HashMap::new();
        for r in &rows {
            active
                .entry(r.try_get::<String, _>(0)?)
                .or_default()
                .push(r.try_get::<i64, _>(1)?);
        }
        Ok(active)
    }

    async fn record_batch(
        &mut self,
        takes: &[(i64, i64)],
        orders: &[NewOrder],
        outcomes: &[NewOutcome<'_>],
        now: i64,
    ) -> DbResult<Option<i64>> {
        if takes.is_empty() && orders.is_empty() && outcomes.is_empty() {
            // A batch of redeliveries only: nothing to write.
            return Ok(None);
        }
        let take_sales: Vec<i64> = takes.iter().map(|t| t.0).collect();
        let take_units: Vec<i64> = takes.iter().map(|t| t.1).collect();
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let tickets: Vec<&str> = orders.iter().map(|o| o.ticket.as_str()).collect();
        let sales: Vec<i64> = orders.iter().map(|o| o.sale).collect();
        let users: Vec<&str> = orders.iter().map(|o| o.user.as_str()).collect();
        let prices: Vec<i64> = orders.iter().map(|o| o.price_cents).collect();
        let pay_by: Vec<i64> = orders.iter().map(|o| o.pay_by_ms).collect();
        let slots: Vec<i32> = orders.iter().map(|o| o.slot).collect();
        let t_tickets: Vec<&str> = outcomes.iter().map(|o| o.ticket).collect();
        let t_sales: Vec<i64> = outcomes.iter().map(|o| o.sale).collect();
        let t_users: Vec<&str> = outcomes.iter().map(|o| o.user).collect();
        let t_orders: Vec<Option<&str>> = outcomes.iter().map(|o| o.order_id.as_deref()).collect();
        let t_reasons: Vec<Option<&str>> = outcomes.iter().map(|o| o.reason).collect();
        let taken: Vec<i64> = sqlx::query_scalar(RECORD_BATCH)
            .bind(&take_sales)
            .bind(&take_units)
            .bind(now)
            .bind(&ids)
            .bind(&tickets)
            .bind(&sales)
            .bind(&users)
            .bind(&prices)
            .bind(&pay_by)
            .bind(&slots)
            .bind(&t_tickets)
            .bind(&t_sales)
            .bind(&t_users)
            .bind(&t_orders)
            .bind(&t_reasons)
            .fetch_all(&mut *self)
            .await?;
        Ok(take_sales.into_iter().find(|s| !taken.contains(s)))
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
