//! [`MemoryStore`]: the embedded stock store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{
    Error, Holder, Released, Reservation, Result, SALES_MAX, SaleId, SaleStock, StockStore,
    validate_tag, validate_units, validate_user,
};

/// One sale's state. Its holders (user → reservation tag) never outnumber its units.
#[derive(Debug)]
struct Sale {
    units: u64,
    left: u64,
    holders: HashMap<Box<str>, Box<str>>,
}

impl Sale {
    fn stock(&self) -> SaleStock {
        SaleStock {
            units: self.units,
            left: self.left,
            holders: self.holders.len() as u64,
        }
    }
}

/// In-process stock: a map of sales, each behind its own small lock, so concurrent
/// purchases of different sales never contend and those of one sale are serialized for a
/// few hundred nanoseconds.
#[derive(Debug, Default)]
pub struct MemoryStore {
    sales: RwLock<HashMap<SaleId, Arc<Mutex<Sale>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn sale(&self, sale: SaleId) -> Option<Arc<Mutex<Sale>>> {
        let sales = match self.sales.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        sales.get(&sale).cloned()
    }

    fn sale_or_insert(&self, sale: SaleId, units: u64) -> Result<Arc<Mutex<Sale>>> {
        if let Some(s) = self.sale(sale) {
            return Ok(s);
        }
        let mut sales = match self.sales.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if !sales.contains_key(&sale) && sales.len() >= SALES_MAX {
            return Err(Error::Limit {
                what: "sales",
                limit: SALES_MAX as u64,
            });
        }
        Ok(sales
            .entry(sale)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Sale {
                    units,
                    left: units,
                    holders: HashMap::new(),
                }))
            })
            .clone())
    }
}

#[async_trait::async_trait]
impl StockStore for MemoryStore {
    async fn define(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        validate_units(units)?;
        let s = self.sale_or_insert(sale, units)?;
        let st = lock(&s).stock();
        Ok(st)
    }

    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        validate_units(units)?;
        for h in holders {
            validate_user(&h.user)?;
            validate_tag(&h.tag)?;
        }
        let map: HashMap<Box<str>, Box<str>> = holders
            .iter()
            .map(|h| (h.user.as_str().into(), h.tag.as_str().into()))
            .collect();
        if map.len() as u64 > units {
            return Err(Error::Invalid(format!(
                "{} holders for {units} units",
                map.len()
            )));
        }
        let s = self.sale_or_insert(sale, units)?;
        let mut st = lock(&s);
        st.units = units;
        st.left = units - map.len() as u64;
        st.holders = map;
        Ok(st.stock())
    }

    async fn reserve_as(&self, sale: SaleId, user: &str, tag: &str) -> Result<Reservation> {
        validate_user(user)?;
        validate_tag(tag)?;
        let Some(s) = self.sale(sale) else {
            return Ok(Reservation::NoSuchSale);
        };
        let mut st = lock(&s);
        // The duplicate check first: a repeat click never burns a unit.
        if let Some(held) = st.holders.get(user) {
            // The same reservation asked again (a retried call) is answered as it was.
            if !tag.is_empty() && &**held == tag {
                return Ok(Reservation::Reserved { left: st.left });
            }
            return Ok(Reservation::AlreadyBought);
        }
        if st.left == 0 {
            return Ok(Reservation::SoldOut);
        }
        st.left -= 1;
        st.holders.insert(user.into(), tag.into());
        Ok(Reservation::Reserved { left: st.left })
    }

    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released> {
        validate_user(user)?;
        let Some(s) = self.sale(sale) else {
            return Ok(Released::NotHeld);
        };
        let mut st = lock(&s);
        let held = match (st.holders.get(user), tag) {
            (Some(_), None) => true,
            (Some(t), Some(want)) => &**t == want,
            (None, _) => false,
        };
        if held {
            st.holders.remove(user);
            st.left += 1;
            Ok(Released::Released { left: st.left })
        } else {
            Ok(Released::NotHeld)
        }
    }

    async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        let Some(s) = self.sale(sale) else {
            return Err(Error::Invalid(format!("sale {sale} is not defined")));
        };
        let mut st = lock(&s);
        let total = st.units.saturating_add(units);
        validate_units(total)?;
        st.units = total;
        st.left += units;
        Ok(st.stock())
    }

    async fn stock(&self, sale: SaleId) -> Result<Option<SaleStock>> {
        Ok(self.sale(sale).map(|s| lock(&s).stock()))
    }
}
