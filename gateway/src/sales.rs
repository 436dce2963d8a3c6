//! The sale catalogue: an in-memory copy of the orders database's sales, so the hot path
//! (every purchase asks whether its sale exists and has started) never reads the database.
//! Sales are created in the database first (`POST /admin/api/sales`), then added here; every
//! gateway re-reads the database's sales each housekeeping round, so a sale created through
//! another gateway appears within a second, and a sale paused, resumed, ended or edited
//! through another gateway (`order_worker::db::SaleChange`) follows within a second too.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use order_worker::db::{NewSale, SALES_MAX, Sale, SaleChange, SaleEdit};

use crate::error::ApiError;

/// `409 sale_paused` if an operator has paused `sale`: the purchase path and the token
/// path ask this after "has it ended", before anything is reserved or spent.
pub fn refuse_paused(
    sale: &Sale,
    metrics: &crate::metrics::GatewayMetrics,
) -> Result<(), ApiError> {
    if sale.paused {
        metrics
            .sale_paused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "sale_paused",
            "the sale is paused by the shop; try again when it resumes",
        ));
    }
    Ok(())
}

/// Where a sale is in its life, at a given time.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    /// Not started yet.
    Upcoming,
    /// Selling.
    Open,
    /// No units left (as far as this gateway knows).
    SoldOut,
    /// Past its end time.
    Ended,
}

/// A start this far in the past still counts as "now" (a script's clock and the gateway's
/// differ a little); further back it needs the operator's confirmation.
pub const START_PAST_GRACE_MS: u64 = 60_000;

/// What an operator must confirm before a sale is created or edited this way (empty: nothing):
/// a price of 0 and a start in the past (the sale goes live at once), each said plainly.
pub fn needs_confirmation(price_cents: u64, starts_at_ms: u64, now_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    if price_cents == 0 {
        out.push("the price is 0: the units are given away".to_string());
    }
    if starts_at_ms.saturating_add(START_PAST_GRACE_MS) < now_ms {
        out.push(format!(
            "the start ({}) is in the past: the sale goes live at once",
            web::format::utc(starts_at_ms)
        ));
    }
    out
}

/// The sale's state as the operator sees it: `ended`, `paused`, `upcoming`, `sold_out` or
/// `live` (in that order of precedence), with the stock store's units left if known.
pub fn admin_state(sale: &Sale, now_ms: u64, store_left: Option<u64>) -> &'static str {
    if sale.ends_at_ms.is_some_and(|e| now_ms >= e) {
        "ended"
    } else if sale.paused {
        "paused"
    } else if now_ms < sale.starts_at_ms {
        "upcoming"
    } else if store_left == Some(0) {
        "sold_out"
    } else {
        "live"
    }
}

/// The catalogue.
#[derive(Debug, Default)]
pub struct Catalogue {
    sales: RwLock<BTreeMap<u64, Arc<Sale>>>,
}

impl Catalogue {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<Sale>>> {
        match self.sales.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Sale>>> {
        match self.sales.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds or replaces a sale (as read from the database). Returns whether it was new.
    /// At most [`SALES_MAX`] sales are kept (the database lists no more).
    pub fn upsert(&self, sale: Sale) -> bool {
        let mut sales = self.write();
        if !sales.contains_key(&sale.id) && sales.len() >= SALES_MAX {
            return false;
        }
        sales.insert(sale.id, Arc::new(sale)).is_none()
    }

    /// One sale.
    pub fn get(&self, id: u64) -> Option<Arc<Sale>> {
        self.read().get(&id).cloned()
    }

    /// All sales, by id.
    pub fn list(&self) -> Vec<Arc<Sale>> {
        self.read().values().cloned().collect()
    }
}
