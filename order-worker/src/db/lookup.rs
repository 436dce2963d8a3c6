//! The operator's order look-up: the orders whose id, ticket (request id) or buyer matches
//! what was typed, newest first, from every shard (an order id or ticket does not say its
//! sale, so its shard is unknown). Indexed each way: the primary key, the unique request
//! id, and `orders_by_user` (migration 0010).

use super::orders::order_of;
use super::{DbResult, Order, OrdersDb, Shard, to_i64};

/// Most orders one look-up returns.
pub const LOOKUP_ORDERS_MAX: usize = 100;
/// Longest query accepted, bytes: the longest user id (an order id and a ticket are
/// shorter).
pub const LOOKUP_QUERY_BYTES_MAX: usize = inventory::USER_ID_BYTES_MAX;

impl Shard {
    /// Orders whose id, ticket or user is `query`, newest first, at most `limit` (and at most
    /// [`LOOKUP_ORDERS_MAX`]).
    pub async fn find_orders(&self, query: &str, limit: usize) -> DbResult<Vec<Order>> {
        let limit = to_i64(limit.min(LOOKUP_ORDERS_MAX) as u64, "limit")?;
        on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, paid_ms, cancelled_ms \
                 FROM orders WHERE id = $1 OR request_id = $1 OR user_id = $1 \
                 ORDER BY created_ms DESC, id LIMIT $2")
                .bind(query).bind(limit).fetch_all(p).await?;
            rows.iter().map(order_of).collect()
        })
    }
}

impl OrdersDb {
    /// Orders whose id, ticket or user is `query`, newest first, from every shard, at most
    /// `limit` (and at most [`LOOKUP_ORDERS_MAX`]). An empty or over-long query finds none.
    pub async fn find_orders(&self, query: &str, limit: usize) -> DbResult<Vec<Order>> {
        let query = query.trim();
        if query.is_empty() || query.len() > LOOKUP_QUERY_BYTES_MAX {
            return Ok(Vec::new());
        }
        let limit = limit.min(LOOKUP_ORDERS_MAX);
        let mut all = Vec::new();
        for i in 0..self.shard_count() {
            let r = self.shard_db(i).find_orders(query, limit).await;
            all.extend(self.watch(i, r).await?);
        }
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        all.truncate(limit);
        Ok(all)
    }
}
