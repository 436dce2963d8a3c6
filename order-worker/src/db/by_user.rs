//! A shopper's orders ("my orders"): the newest orders of one user, on one shard. The
//! routed [`OrdersDb::orders_of_user`](super::OrdersDb::orders_of_user) merges the shards'
//! lists. Read through the index `orders_by_user (user_id, created_ms)` (migration 0010).

use super::orders::order_of;
use super::{DbResult, Order, Shard, to_i64};

/// Most orders one look-up of a user's orders returns (newest first). A person holds at
/// most one active order per sale; this bounds the page and the rows read per shard.
pub const USER_ORDERS_MAX: usize = 100;

/// A user's orders, newest first, and whether every shard answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserOrders {
    /// The orders, newest first (ties: by id), at most the limit asked for.
    pub orders: Vec<Order>,
    /// Whether every shard answered: `false` when some failed and their orders are missing
    /// (the others' are still here).
    pub complete: bool,
}

impl Shard {
    /// `user`'s orders on this shard, newest first (ties: by id), at most `limit` (itself
    /// at most [`USER_ORDERS_MAX`]).
    pub async fn orders_of_user(&self, user: &str, limit: usize) -> DbResult<Vec<Order>> {
        let limit = to_i64(limit.min(USER_ORDERS_MAX) as u64, "limit")?;
        on_db!(self, p => {
            let rows = sqlx::query(
                "SELECT id, request_id, sale_id, user_id, price_cents, status, created_ms, pay_by_ms, paid_ms, cancelled_ms \
                 FROM orders WHERE user_id = $1 ORDER BY created_ms DESC, id DESC LIMIT $2")
                .bind(user).bind(limit).fetch_all(p).await?;
            rows.iter().map(order_of).collect()
        })
    }
}
