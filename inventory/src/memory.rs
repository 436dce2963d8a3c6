//! [`MemoryStore`]: the embedded stock store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{
    Error, Holder, Released, Reservation, Result, SALES_MAX, SaleId, SaleStock, StockStore,
    group_holders, validate_limit, validate_tag, validate_units, validate_user,
};

/// One sale's state. Its reservations (user → the tags of their reservations, at most
/// [`crate::PER_USER_LIMIT_MAX`] each) never outnumber its units; `held` counts them.
#[derive(Debug)]
struct Sale {
    units: u64,
    left: u64,
    holders: HashMap<Box<str>, Vec<Box<str>>>,
    held: u64,
}

impl Sale {
    fn stock(&self) -> SaleStock {
        SaleStock {
            units: self.units,
            left: self.left,
            holders: self.held,
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
                    held: 0,
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
        let (groups, held) = group_holders(holders)?;
        if held > units {
            return Err(Error::Invalid(format!("{held} holders for {units} units")));
        }
        let map: HashMap<Box<str>, Vec<Box<str>>> = groups
            .into_iter()
            .map(|(u, tags)| (u.into(), tags.into_iter().map(Into::into).collect()))
            .collect();
        let s = self.sale_or_insert(sale, units)?;
        let mut st = lock(&s);
        st.units = units;
        st.left = units - held;
        st.holders = map;
        st.held = held;
        Ok(st.stock())
    }

    async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> Result<Reservation> {
        validate_user(user)?;
        validate_tag(tag)?;
        validate_limit(limit)?;
        let Some(s) = self.sale(sale) else {
            return Ok(Reservation::NoSuchSale);
        };
        let mut st = lock(&s);
        // The limit check first: a repeat click never burns a unit.
        if let Some(tags) = st.holders.get(user) {
            // The same reservation asked again (a retried call) is answered as it was.
            if !tag.is_empty() && tags.iter().any(|t| &**t == tag) {
                return Ok(Reservation::Reserved { left: st.left });
            }
            if tags.len() >= limit as usize {
                return Ok(Reservation::AlreadyBought);
            }
        }
        if st.left == 0 {
            return Ok(Reservation::SoldOut);
        }
        st.left -= 1;
        st.held += 1;
        st.holders.entry(user.into()).or_default().push(tag.into());
        Ok(Reservation::Reserved { left: st.left })
    }

    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released> {
        validate_user(user)?;
        let Some(s) = self.sale(sale) else {
            return Ok(Released::NotHeld);
        };
        let mut st = lock(&s);
        let Some(tags) = st.holders.get_mut(user) else {
            return Ok(Released::NotHeld);
        };
        // With a tag, exactly that reservation; without, the user's latest.
        let at = match tag {
            None => tags.len().checked_sub(1),
            Some(want) => tags.iter().position(|t| &**t == want),
        };
        let Some(at) = at else {
            return Ok(Released::NotHeld);
        };
        tags.remove(at);
        if tags.is_empty() {
            st.holders.remove(user);
        }
        st.held -= 1;
        st.left += 1;
        Ok(Released::Released { left: st.left })
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
