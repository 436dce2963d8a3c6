//! One order: reading it and paying it.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{DbError, DbResult, Shard, to_i64, to_u64};

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub(super) fn parse(s: &str) -> DbResult<OrderStatus> {
        match s {
            "pending" => Ok(OrderStatus::Pending),
            "paid" => Ok(OrderStatus::Paid),
            "cancelled" => Ok(OrderStatus::Cancelled),
            other => Err(DbError::Invalid(format!("unknown order status {other:?}"))),
        }
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

impl Shard {
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

    /// Pays `user`'s order `id`: pending → paid in one conditional update, only before its
    /// pay-by time, which returns the paid order (one statement when it pays; otherwise the
    /// order is read to say why not). Exactly one of a payment and the cancellation ever
    /// succeeds. A constraint that refuses the update is reported as `Constraint`.
    pub async fn pay(&self, id: &str, user: &str, now_ms: u64) -> DbResult<Payment> {
        let now = to_i64(now_ms, "now")?;
        let paid = on_db!(self, p => {
            let r = sqlx::query(
                "UPDATE orders SET status = 'paid', paid_ms = $1 \
                 WHERE id = $2 AND user_id = $3 AND status = 'pending' AND pay_by_ms > $4 \
                 RETURNING id, request_id, sale_id, user_id, price_cents, status, created_ms, \
                           pay_by_ms, paid_ms, cancelled_ms")
                .bind(now).bind(id).bind(user).bind(now).fetch_optional(p).await
                .map_err(DbError::on_request)?;
            r.map(|r| order_of(&r)).transpose()?
        });
        if let Some(order) = paid {
            return Ok(Payment::Paid(order));
        }
        let order = match self.order(id).await? {
            Some(o) if o.user == user => o,
            _ => return Ok(Payment::NotFound),
        };
        Ok(match order.status {
            OrderStatus::Paid => Payment::AlreadyPaid(order),
            OrderStatus::Cancelled => Payment::Cancelled(order),
            OrderStatus::Pending => Payment::TooLate(order),
        })
    }
}

pub(super) fn order_of<R: Row>(r: &R) -> DbResult<Order>
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
