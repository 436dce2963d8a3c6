//! The sale catalogue: an in-memory copy of the orders database's sales, so the hot path
//! (every purchase asks whether its sale exists and has started) never reads the database.
//! Sales are created in the database first (`POST /admin/api/sales`), then added here; every
//! gateway re-reads the database's sales each housekeeping round, so a sale created through
//! another gateway appears within a second.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use order_worker::db::{NewSale, SALES_MAX, Sale};

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
