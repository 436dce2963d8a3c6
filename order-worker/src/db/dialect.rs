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
    /// The terms of `sale`, its row locked until the commit (PostgreSQL: `FOR UPDATE`;
    /// SQLite's `BEGIN IMMEDIATE` holds the whole database already); `None` if unknown.
    async fn lock_sale(&mut self, sale: i64) -> DbResult<Option<SaleTerms>>;
    /// Takes `units` of `sale`'s units left if that many are left (`… WHERE units_left >=
    /// units`); whether it did.
    async fn take_units(&mut self, sale: i64, units: i64) -> DbResult<bool>;
    /// Decisions already recorded for these tickets.
    async fn known(&mut self, tickets: &[&str]) -> DbResult<Vec<KnownRow>>;
    /// Those of `users` holding active orders of `sale`, each with the slots those orders
    /// take.
    async fn active_slots(
        &mut self,
        sale: i64,
        users: &[&str],
    ) -> DbResult<HashMap<String, Vec<i64>>>;
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
    Ok(SaleTerms {
        units_left: r.try_get(0)?,
        price_cents: r.try_get(1)?,
        pay_window_ms: r.try_get(2)?,
        per_user_limit: r.try_get(3)?,
    })
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
    async fn lock_sale(&mut self, sale: i64) -> DbResult<Option<SaleTerms>> {
        let row = sqlx::query(concat!(terms_select!(), " WHERE id = $1"))
            .bind(sale)
            .fetch_optional(&mut *self)
            .await?;
        row.map(|r| terms_of(&r)).transpose()
    }

    async fn take_units(&mut self, sale: i64, units: i64) -> DbResult<bool> {
        let r = sqlx::query(TAKE_UNITS)
            .bind(units)
            .bind(sale)
            .bind(units)
            .execute(&mut *self)
            .await?;
        Ok(r.rows_affected() == 1)
    }

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

    async fn insert_orders(&mut self, orders: &[NewOrder], now: i64) -> DbResult<()> {
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
    async fn lock_sale(&mut self, sale: i64) -> DbResult<Option<SaleTerms>> {
        let row = sqlx::query(concat!(terms_select!(), " WHERE id = $1 FOR UPDATE"))
            .bind(sale)
            .fetch_optional(&mut *self)
            .await?;
        row.map(|r| terms_of(&r)).transpose()
    }

    async fn take_units(&mut self, sale: i64, units: i64) -> DbResult<bool> {
        let r = sqlx::query(TAKE_UNITS)
            .bind(units)
            .bind(sale)
            .bind(units)
            .execute(&mut *self)
            .await?;
        Ok(r.rows_affected() == 1)
    }

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
        let slots: Vec<i32> = orders.iter().map(|o| o.slot).collect();
        sqlx::query(
            "INSERT INTO orders (id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, slot) \
             SELECT id, request_id, sale_id, user_id, price_cents, 'pending', $7, pay_by_ms, slot \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[], $8::int4[]) \
                  AS r(id, request_id, sale_id, user_id, price_cents, pay_by_ms, slot)",
        )
        .bind(&ids)
        .bind(&tickets)
        .bind(&sales)
        .bind(&users)
        .bind(&prices)
        .bind(&pay_by)
        .bind(now)
        .bind(&slots)
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
