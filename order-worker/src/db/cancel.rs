//! Cancelling unpaid orders: due ones by id, overdue ones found by the sweep, and the
//! look-up of those already cancelled.

use std::collections::BTreeMap;

use sqlx::Row;

use super::dialect::Dialect;
use super::rows::Cancelled;
use super::{CANCEL_BATCH_MAX, DbError, DbResult, Shard, to_i64};

impl Shard {
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
}
