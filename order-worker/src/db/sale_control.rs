//! Operator control of a sale after its creation (migration 0009): pause and resume, end
//! now, and edit before the start. Each is one conditional `UPDATE` on the sale's row, on
//! the shard that holds it, so two operators (or two gateways) racing each other cannot
//! edit a sale that has started meanwhile or end one twice.
//!
//! - **Pause / resume** set `paused`; the gateways refuse the sale's purchases and tokens
//!   while it is set (`409 sale_paused`). An ended sale cannot be paused or resumed.
//! - **End** sets `ends_at_ms` (and `ended_ms`) to now; a sale not started yet also gets
//!   `starts_at_ms` just before now (the schema wants an end after the start). Every reader
//!   that knows `ends_at_ms` then sees the sale as ended, with no new check on its path.
//! - **Edit** (name, price, units, start, end) only while the sale has not started and has
//!   no order: its units are re-put whole (`units_left = units`). After the start it is
//!   refused: buyers hold tokens counted against the units and pay the price they saw.

use serde::{Deserialize, Serialize};

use super::sales::SaleSettings;
use super::{DbError, DbResult, OrdersDb, SALE_NAME_BYTES_MAX, Shard, to_i64};
use super::{NewSale, Sale};

/// The fields of a sale an operator may change before its start; `None` keeps a field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SaleEdit {
    /// New name.
    pub name: Option<String>,
    /// New price in cents.
    pub price_cents: Option<u64>,
    /// New units (re-put whole: no unit is sold before the start).
    pub units: Option<u64>,
    /// New start, ms since the Unix epoch.
    pub starts_at_ms: Option<u64>,
    /// New end, ms since the Unix epoch (after the start).
    pub ends_at_ms: Option<u64>,
    /// Remove the end (open until sold out); wins over `ends_at_ms`.
    pub no_end: bool,
}

/// What an operator's change of a sale came to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SaleChange {
    /// Done; the sale as it is now.
    Changed(Sale),
    /// No such sale.
    NoSuchSale,
    /// Refused, with a code for scripts (`sale_ended`, `sale_started`) and why, for people.
    Refused {
        /// `sale_ended` or `sale_started`.
        code: &'static str,
        /// Why, in a sentence an operator can act on.
        why: String,
    },
}

fn ended(id: u64) -> SaleChange {
    SaleChange::Refused {
        code: "sale_ended",
        why: format!(
            "sale {id} has ended; an ended sale cannot be paused, resumed, edited or ended again"
        ),
    }
}

fn started(sale: &Sale) -> SaleChange {
    SaleChange::Refused {
        code: "sale_started",
        why: format!(
            "sale {} started at {} ms: a started sale cannot be edited (its units are being sold, buyers hold tokens counted against them and pay the price they were shown); pause or end it instead",
            sale.id, sale.starts_at_ms
        ),
    }
}

fn has_ended(sale: &Sale, now_ms: u64) -> bool {
    sale.ends_at_ms.is_some_and(|e| now_ms >= e)
}

impl Shard {
    /// What a refused or missing change means for sale `id` at `now_ms`.
    async fn why_not(&self, id: u64, now_ms: u64) -> DbResult<SaleChange> {
        Ok(match self.sale(id).await? {
            None => SaleChange::NoSuchSale,
            Some(s) if has_ended(&s, now_ms) => ended(id),
            Some(s) => started(&s),
        })
    }

    async fn changed(&self, id: u64, now_ms: u64) -> DbResult<SaleChange> {
        match self.sale(id).await? {
            Some(s) => Ok(SaleChange::Changed(s)),
            None => self.why_not(id, now_ms).await,
        }
    }

    /// Pauses (`paused`) or resumes sale `id`, unless it has ended by `now_ms`.
    pub async fn set_paused(&self, id: u64, paused: bool, now_ms: u64) -> DbResult<SaleChange> {
        let (sale, now) = (to_i64(id, "sale id")?, to_i64(now_ms, "now")?);
        let done = on_db!(self, p => sqlx::query(
            "UPDATE sales SET paused = $1 WHERE id = $2 AND (ends_at_ms IS NULL OR ends_at_ms > $3)")
            .bind(i32::from(paused)).bind(sale).bind(now)
            .execute(p).await.map_err(DbError::on_request)?.rows_affected());
        if done == 0 {
            return self.why_not(id, now_ms).await;
        }
        self.changed(id, now_ms).await
    }

    /// Ends sale `id` at `now_ms` (see the module docs), unless it has ended already.
    pub async fn end_sale(&self, id: u64, now_ms: u64) -> DbResult<SaleChange> {
        let (sale, now) = (to_i64(id, "sale id")?, to_i64(now_ms.max(1), "now")?);
        // Every expression of a SET reads the row as it was, in both backends.
        let done = on_db!(self, p => sqlx::query(
            "UPDATE sales SET ends_at_ms = $1, ended_ms = $1, \
                 starts_at_ms = CASE WHEN starts_at_ms < $1 THEN starts_at_ms ELSE $1 - 1 END \
             WHERE id = $2 AND (ends_at_ms IS NULL OR ends_at_ms > $1)")
            .bind(now).bind(sale)
            .execute(p).await.map_err(DbError::on_request)?.rows_affected());
        if done == 0 {
            return self.why_not(id, now_ms).await;
        }
        self.changed(id, now_ms).await
    }

    /// Edits sale `id` as `edit` says, only while it has not started by `now_ms` and has no
    /// order. `Invalid` if a new value is out of range (as at creation).
    pub async fn edit_sale(&self, id: u64, edit: &SaleEdit, now_ms: u64) -> DbResult<SaleChange> {
        let Some(old) = self.sale(id).await? else {
            return Ok(SaleChange::NoSuchSale);
        };
        if has_ended(&old, now_ms) {
            return Ok(ended(id));
        }
        if old.starts_at_ms <= now_ms {
            return Ok(started(&old));
        }
        let merged = NewSale {
            id,
            name: edit.name.clone().unwrap_or(old.name.clone()),
            price_cents: edit.price_cents.unwrap_or(old.price_cents),
            units: edit.units.unwrap_or(old.units),
            starts_at_ms: edit.starts_at_ms.unwrap_or(old.starts_at_ms),
            pay_window_ms: Some(old.pay_window_ms),
            ends_at_ms: if edit.no_end {
                None
            } else {
                edit.ends_at_ms.or(old.ends_at_ms)
            },
            token_factor: old.token_factor,
            per_user_limit: Some(old.per_user_limit),
            stock_buckets: Some(old.stock_buckets),
        };
        if merged.name.is_empty() || merged.name.len() > SALE_NAME_BYTES_MAX {
            return Err(DbError::Invalid(format!(
                "a sale name is 1..={SALE_NAME_BYTES_MAX} bytes"
            )));
        }
        if merged.units == 0 || merged.units > inventory::UNITS_MAX {
            return Err(DbError::Invalid(format!(
                "units must be 1..={}",
                inventory::UNITS_MAX
            )));
        }
        let settings = SaleSettings::of(&merged)?;
        let (sale, now) = (to_i64(id, "sale id")?, to_i64(now_ms, "now")?);
        let (price, units, starts) = (
            to_i64(merged.price_cents, "price")?,
            to_i64(merged.units, "units")?,
            to_i64(merged.starts_at_ms, "start")?,
        );
        let ends = settings.ends_at_ms.map(|e| to_i64(e, "end")).transpose()?;
        // Still not started and still without an order (units_left = units) when written.
        let done = on_db!(self, p => sqlx::query(
            "UPDATE sales SET name = $1, price_cents = $2, units = $3, units_left = $3, \
                 starts_at_ms = $4, ends_at_ms = $5 \
             WHERE id = $6 AND starts_at_ms > $7 AND units_left = units \
               AND NOT EXISTS (SELECT 1 FROM orders WHERE sale_id = $6)")
            .bind(&merged.name).bind(price).bind(units).bind(starts).bind(ends)
            .bind(sale).bind(now)
            .execute(p).await.map_err(DbError::on_request)?.rows_affected());
        if done == 0 {
            return match self.sale(id).await? {
                None => Ok(SaleChange::NoSuchSale),
                Some(s) if has_ended(&s, now_ms) => Ok(ended(id)),
                Some(s) if s.starts_at_ms <= now_ms => Ok(started(&s)),
                Some(s) => Ok(SaleChange::Refused {
                    code: "sale_has_orders",
                    why: format!("sale {} already has orders; it cannot be edited", s.id),
                }),
            };
        }
        self.changed(id, now_ms).await
    }
}

impl OrdersDb {
    /// Pauses or resumes sale `id` on its shard (see [`Shard::set_paused`]).
    pub async fn set_paused(&self, id: u64, paused: bool, now_ms: u64) -> DbResult<SaleChange> {
        let i = self.shard_of(id).await?;
        let r = self.shard_db(i).set_paused(id, paused, now_ms).await;
        self.watch(i, r).await
    }

    /// Ends sale `id` now on its shard (see [`Shard::end_sale`]).
    pub async fn end_sale(&self, id: u64, now_ms: u64) -> DbResult<SaleChange> {
        let i = self.shard_of(id).await?;
        let r = self.shard_db(i).end_sale(id, now_ms).await;
        self.watch(i, r).await
    }

    /// Edits sale `id` before its start on its shard (see [`Shard::edit_sale`]).
    pub async fn edit_sale(&self, id: u64, edit: &SaleEdit, now_ms: u64) -> DbResult<SaleChange> {
        let i = self.shard_of(id).await?;
        let r = self.shard_db(i).edit_sale(id, edit, now_ms).await;
        self.watch(i, r).await
    }
}
