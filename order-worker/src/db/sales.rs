//! Sales: their definition and checks, listing, holders of active orders, and the
//! counts of orders by status.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{
    DbError, DbResult, OrderStatus, PAY_WINDOW_MS_DEFAULT, PER_USER_LIMIT_DEFAULT,
    PER_USER_LIMIT_MAX, SALE_NAME_BYTES_MAX, SALES_MAX, Shard, TOKEN_FACTOR_MAX, TOKEN_FACTOR_MIN,
    to_i64, to_u64,
};

/// A sale as an admin defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Units one person may hold, 1..=[`PER_USER_LIMIT_MAX`]; `None`:
    /// [`PER_USER_LIMIT_DEFAULT`] (1).
    #[serde(default)]
    pub per_user_limit: Option<u32>,
    /// Stock buckets the sale's units are split over in a Redis stock store (a hot sale
    /// spread over a cluster's masters), 1..=`inventory::STOCK_BUCKETS_MAX`; `None`: 1.
    #[serde(default)]
    pub stock_buckets: Option<u32>,
}

/// A sale as the database holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Units one person may hold (1..=[`PER_USER_LIMIT_MAX`]).
    pub per_user_limit: u32,
    /// Stock buckets of the sale's units in a Redis stock store (1: one bucket, the layout
    /// from before buckets).
    #[serde(default = "stock_buckets_default")]
    pub stock_buckets: u32,
    /// Whether an operator has paused the sale (purchases and tokens refused until resumed).
    #[serde(default)]
    pub paused: bool,
    /// When an operator ended the sale early (`ends_at_ms` is that time too), if they did.
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

fn stock_buckets_default() -> u32 {
    inventory::STOCK_BUCKETS_DEFAULT
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

impl Shard {
    /// Creates a sale with all its units left. `Invalid` if a setting is out of range,
    /// `Conflict` if the id is taken, `Constraint` if the schema refuses the row anyway.
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
        let buckets = sale
            .stock_buckets
            .unwrap_or(inventory::STOCK_BUCKETS_DEFAULT);
        inventory::validate_buckets(buckets).map_err(|e| DbError::Invalid(e.to_string()))?;
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
                                ends_at_ms, token_factor_milli, per_user_limit, stock_buckets) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12, $13 WHERE (SELECT COUNT(*) FROM sales) < $9 \
             ON CONFLICT (id) DO NOTHING")
            .bind(id).bind(&sale.name).bind(price).bind(units).bind(units).bind(starts)
            .bind(to_i64(window, "pay window")?).bind(to_i64(now_ms, "now")?)
            .bind(SALES_MAX as i64)
            .bind(ends).bind(settings.token_factor_milli).bind(settings.per_user_limit)
            .bind(buckets as i32)
            .execute(p).await.map_err(DbError::on_request)?.rows_affected());
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
            per_user_limit: settings.per_user_limit as u32,
            stock_buckets: buckets,
            paused: false,
            ended_ms: None,
        })
    }

    /// One sale.
    pub async fn sale(&self, id: u64) -> DbResult<Option<Sale>> {
        let id = to_i64(id, "sale id")?;
        let row = on_db!(self, p => {
            let r = sqlx::query(concat!("SELECT ", sale_columns!(), ", stock_buckets, paused, ended_ms FROM sales WHERE id = $1"))
                .bind(id).fetch_optional(p).await?;
            r.map(|r| sale_of(&r)).transpose()?
        });
        Ok(row)
    }

    /// Sales by id (at most [`SALES_MAX`]).
    pub async fn sales(&self) -> DbResult<Vec<Sale>> {
        on_db!(self, p => {
            let rows = sqlx::query(
                concat!("SELECT ", sale_columns!(), ", stock_buckets, paused, ended_ms FROM sales ORDER BY id LIMIT $1"))
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

    /// Orders of every sale by status (the dashboard's totals; one scan of `orders`, counted
    /// with conditional aggregates rather than grouped by status: no hash of every row's
    /// status, about a fifth less of the server's time at 100,000 orders, and the live
    /// dashboard asks every second while it is watched).
    pub async fn order_totals(&self) -> DbResult<OrderTotals> {
        const SQL: &str = "SELECT COUNT(CASE WHEN status = 'pending' THEN 1 END), \
                                  COUNT(CASE WHEN status = 'paid' THEN 1 END), \
                                  COUNT(CASE WHEN status = 'cancelled' THEN 1 END), \
                                  COUNT(*) \
                           FROM orders";
        let (pending, paid, cancelled, created): (i64, i64, i64, i64) = on_db!(self, p => {
            let r = sqlx::query(SQL).fetch_one(p).await?;
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)
        });
        Ok(OrderTotals {
            created: to_u64(created),
            pending: to_u64(pending),
            paid: to_u64(paid),
            cancelled: to_u64(cancelled),
        })
    }
}

/// Reads a [`Sale`] from a row of [`sale_columns!`] followed by `stock_buckets, paused,
/// ended_ms`.
pub(super) fn sale_of<R: Row>(r: &R) -> DbResult<Sale>
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
        stock_buckets: u32::try_from(r.try_get::<i32, _>(10)?).unwrap_or(0),
        paused: r.try_get::<i32, _>(11)? != 0,
        ended_ms: r.try_get::<Option<i64>, _>(12)?.map(to_u64),
    })
}

/// A factor stored in thousandths, as a number.
fn factor_of_milli(milli: i32) -> f64 {
    f64::from(milli) / 1000.0
}

/// The checked settings of a [`NewSale`] as the `sales` columns hold them.
#[derive(Debug)]
pub(super) struct SaleSettings {
    pub(super) ends_at_ms: Option<u64>,
    token_factor_milli: Option<i32>,
    per_user_limit: i32,
}

impl SaleSettings {
    pub(super) fn of(sale: &NewSale) -> DbResult<SaleSettings> {
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
        let per_user_limit = sale.per_user_limit.unwrap_or(PER_USER_LIMIT_DEFAULT);
        if !(1..=PER_USER_LIMIT_MAX).contains(&per_user_limit) {
            return Err(DbError::Invalid(format!(
                "per_user_limit must be 1..={PER_USER_LIMIT_MAX}, not {per_user_limit}"
            )));
        }
        Ok(SaleSettings {
            ends_at_ms: sale.ends_at_ms,
            token_factor_milli,
            per_user_limit: per_user_limit as i32,
        })
    }
}
