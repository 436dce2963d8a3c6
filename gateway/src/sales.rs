//! The sale catalogue: a minimal in-memory one until the database issue replaces it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Most sales the catalogue holds.
pub const SALES_MAX: usize = 10_000;
/// Longest sale name, in bytes.
pub const SALE_NAME_BYTES_MAX: usize = 200;

/// A sale as defined by an admin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sale {
    /// Id.
    pub id: u64,
    /// What is sold.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Units on sale.
    pub units: u64,
    /// Start, ms since the Unix epoch.
    pub starts_at_ms: u64,
}

/// Where a sale is in its life, at a given time.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    /// Not started yet.
    Upcoming,
    /// Selling.
    Open,
    /// No units left (as far as this gateway knows).
    SoldOut,
}

/// The catalogue.
#[derive(Debug, Default)]
pub struct Catalogue {
    sales: RwLock<BTreeMap<u64, Arc<Sale>>>,
}

impl Catalogue {
    /// Adds a sale; `Err` with a message if it is invalid or the id is taken.
    pub fn add(&self, sale: Sale) -> Result<(), String> {
        if sale.name.is_empty() || sale.name.len() > SALE_NAME_BYTES_MAX {
            return Err(format!("a sale name is 1..={SALE_NAME_BYTES_MAX} bytes"));
        }
        if sale.units == 0 || sale.units > inventory::UNITS_MAX {
            return Err(format!("units must be 1..={}", inventory::UNITS_MAX));
        }
        let mut sales = match self.sales.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if sales.contains_key(&sale.id) {
            return Err(format!("sale {} exists", sale.id));
        }
        if sales.len() >= SALES_MAX {
            return Err(format!("at most {SALES_MAX} sales"));
        }
        sales.insert(sale.id, Arc::new(sale));
        Ok(())
    }

    /// One sale.
    pub fn get(&self, id: u64) -> Option<Arc<Sale>> {
        let sales = match self.sales.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        sales.get(&id).cloned()
    }

    /// All sales, by id.
    pub fn list(&self) -> Vec<Arc<Sale>> {
        let sales = match self.sales.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        sales.values().cloned().collect()
    }
}
