//! Inventory pre-deduction for flash sales: the gate that makes sure no more purchases
//! are accepted than units exist, before anything reaches the queue.
//!
//! - [`StockStore`]: per sale, units left and the reservations holding the others;
//!   `reserve(sale, user)` answers reserved / sold out / already bought in one atomic step
//!   (the limit check comes *before* the decrement, so repeat clicks never burn stock);
//!   `release` gives a unit back and is idempotent. A person may hold up to the sale's
//!   per-person limit N of units (1..=[`PER_USER_LIMIT_MAX`], passed by the caller:
//!   [`StockStore::reserve_up_to`]; 1 unless said otherwise), one reservation each. A
//!   reservation may carry a tag (the purchase's ticket: `reserve_as`): a tagged reserve is
//!   idempotent (run again with a tag the user holds, it answers `Reserved` and takes
//!   nothing), and `release_if(.., Some(tag))` releases exactly the reservation with that
//!   tag: a late or repeated release for an old purchase (a worker redelivery, a canceller
//!   retrying after a crash) never takes away the user's other reservations.
//! - [`MemoryStore`]: the embedded default, one small lock per sale; memory per sale is
//!   bounded by its units (at most one entry per reservation).
//! - [`RedisStore`]: the same operations as Lua scripts on Redis, standalone or Cluster
//!   ([`RedisConn`]: `redis://…` or `redis+cluster://h:p,h:p,…`, shared with the gateway's
//!   token ledger and the auditor), so several gateway processes share one stock without
//!   overselling.
//! - Stock buckets: a sale may be defined with K buckets
//!   ([`StockStore::define_bucketed`], [`StockStore::reconcile_bucketed`];
//!   1..=[`STOCK_BUCKETS_MAX`], default 1, the layout from before buckets), each under its
//!   own hash tag so a hot sale spreads over a cluster's masters. A user's home bucket
//!   ([`home_bucket`], FNV-1a of the user id) holds all their holder records alone (one per
//!   reservation, at most N per person across buckets); when it is dry the unit comes from the next siblings in order,
//!   and sold out is answered only once every bucket was seen empty. Units are split evenly
//!   ([`bucket_share`]); the figures sum the buckets. The steps and what a crash between
//!   them leaves: `redis_store.rs`; the keys: [`keys`]. [`MemoryStore`] accepts K and keeps
//!   one lock per sale.
//! - [`Inventory`]: a store plus a per-process sold-out flag, so a sold-out sale costs no
//!   store round trip; the flag is cleared by a release or restock made through this process
//!   and re-checked against the store at most every `recheck` (releases made by other
//!   processes are seen within that bound), or renewed from the store's figures by
//!   [`Inventory::refresh_sold_out`] on a shorter period (the gateway's housekeeping), so
//!   that it does not lapse while the sale stays sold out.
//! - [`keys`]: the Redis key layout of a sale (stock and token ledger), the one place
//!   the store, the gateway's ledger and the auditor take their key names from.
//!
//! ## Reconciliation and lost reservations
//!
//! A reservation whose enqueue never happened (the gateway was killed between `reserve` and
//! the queue's confirm) holds a unit that no order will ever use. It is found by
//! [`StockStore::reconcile_tagged`], which resets a sale to the source of truth: the units
//! on sale and one reservation per active order in the orders database, each tagged with
//! its order's ticket. The gateway runs it at startup for a store without the sale, and
//! whenever the queue is at rest and the figures stay apart (`gateway/src/sync.rs`); that
//! bounds how long such a unit stays unsellable to about two reconciliation checks after
//! the queue goes quiet, and how many to the purchases in flight when a gateway died (at
//! most its in-flight request limit).

pub mod keys;
mod memory;
pub mod redis_conn;
mod redis_store;

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use memory::MemoryStore;
pub use redis_conn::RedisConn;
pub use redis_store::{BUCKETS_RECHECK, PREFIX_BYTES_MAX, RedisStore};

/// A sale's id.
pub type SaleId = u64;

/// Longest user id, in bytes: room for the storefront's 40-character names in any script
/// (4 bytes a character at most; `gateway::session::USER_NAME_CHARS_MAX`).
pub const USER_ID_BYTES_MAX: usize = 160;
/// Most units one sale may have: the holders of a sale take memory per unit.
pub const UNITS_MAX: u64 = 10_000_000;
/// Most sales a [`MemoryStore`] holds.
pub const SALES_MAX: usize = 100_000;
/// Most stock buckets one sale may be split into.
pub const STOCK_BUCKETS_MAX: u32 = 64;
/// A sale's stock buckets unless it says otherwise (one: the layout from before buckets).
pub const STOCK_BUCKETS_DEFAULT: u32 = 1;
/// Most units one person may hold of one sale (a sale's per-person limit is 1..=this). Also
/// the number of holder-record slots the Redis store looks at per person, so it stays small.
pub const PER_USER_LIMIT_MAX: u32 = 10;

/// Checks a per-person limit: 1..=[`PER_USER_LIMIT_MAX`].
pub fn validate_limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > PER_USER_LIMIT_MAX {
        return Err(Error::Invalid(format!(
            "a per-person limit must be 1..={PER_USER_LIMIT_MAX}, not {limit}"
        )));
    }
    Ok(())
}

/// Checks a stock bucket count: 1..=[`STOCK_BUCKETS_MAX`].
pub fn validate_buckets(buckets: u32) -> Result<()> {
    if buckets == 0 || buckets > STOCK_BUCKETS_MAX {
        return Err(Error::Invalid(format!(
            "stock buckets must be 1..={STOCK_BUCKETS_MAX}, not {buckets}"
        )));
    }
    Ok(())
}

/// The home stock bucket of `user` in a sale of `buckets` buckets: FNV-1a (64 bits) of the
/// user id's bytes, mod `buckets` (stable across processes, versions and platforms; 0 when
/// `buckets` ≤ 1).
pub fn home_bucket(user: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let h = user.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    (h % u64::from(buckets)) as u32
}

/// The units of bucket `b` when `units` are split evenly over `buckets` buckets: the first
/// `units % buckets` get one more.
pub fn bucket_share(units: u64, buckets: u32, b: u32) -> u64 {
    let k = u64::from(buckets.max(1));
    units / k + u64::from(u64::from(b) < units % k)
}

/// What `reserve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A unit is held for the user; `left` units remain.
    Reserved {
        /// Units left after this one.
        left: u64,
    },
    /// No unit left.
    SoldOut,
    /// The user already holds as many units of this sale as the per-person limit allows;
    /// nothing changed.
    AlreadyBought,
    /// The sale's stock was never defined.
    NoSuchSale,
}

/// What `release` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The reservation's unit is back on sale; `left` units remain.
    Released {
        /// Units left after the release.
        left: u64,
    },
    /// The user held no such reservation (already released, or never reserved): nothing
    /// changed.
    NotHeld,
}

/// A sale's stock figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleStock {
    /// Units put on sale (restocks included).
    pub units: u64,
    /// Units not held by anyone.
    pub left: u64,
    /// Reservations held (units held by someone: `units - left` when consistent). With a
    /// per-person limit of 1, the users holding a unit.
    pub holders: u64,
}

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller-supplied argument is not acceptable.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A named limit was reached.
    #[error("limit reached: {what} (max {limit})")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The store (Redis) failed or answered something unexpected.
    #[error("stock store: {0}")]
    Store(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest reservation tag, in bytes.
pub const TAG_BYTES_MAX: usize = 64;

/// Checks a reservation tag: 0..=[`TAG_BYTES_MAX`] bytes, no control characters (empty:
/// untagged).
pub fn validate_tag(tag: &str) -> Result<()> {
    if tag.len() > TAG_BYTES_MAX || tag.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "a reservation tag is 0..={TAG_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

/// A holder of a unit and the tag of its reservation (`""`: untagged). A user holding
/// several units appears once per reservation, each with its own tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The user.
    pub user: String,
    /// The reservation's tag (the purchase's ticket).
    pub tag: String,
}

/// Checks a user id: 1..=[`USER_ID_BYTES_MAX`] bytes, no control characters.
pub fn validate_user(user: &str) -> Result<()> {
    if user.is_empty() || user.len() > USER_ID_BYTES_MAX || user.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "a user id is 1..={USER_ID_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

/// A user and the tags of their reservations.
type UserTags<'a> = (&'a str, Vec<&'a str>);

/// `holders` grouped by user, in first-seen order, each user's distinct tags in order (a
/// repeated (user, tag) pair counts once); checks every user and tag, and that no user has
/// more than [`PER_USER_LIMIT_MAX`] reservations. The second value is the reservation count.
fn group_holders(holders: &[Holder]) -> Result<(Vec<UserTags<'_>>, u64)> {
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(holders.len());
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut count = 0u64;
    for h in holders {
        validate_user(&h.user)?;
        validate_tag(&h.tag)?;
        let i = *at.entry(&h.user).or_insert_with(|| {
            groups.push((&h.user, Vec::new()));
            groups.len() - 1
        });
        let tags = &mut groups[i].1;
        if tags.contains(&h.tag.as_str()) {
            continue;
        }
        if tags.len() >= PER_USER_LIMIT_MAX as usize {
            return Err(Error::Invalid(format!(
                "{:?} holds more than {PER_USER_LIMIT_MAX} reservations",
                h.user
            )));
        }
        tags.push(&h.tag);
        count += 1;
    }
    Ok((groups, count))
}

fn validate_units(units: u64) -> Result<()> {
    if units > UNITS_MAX {
        return Err(Error::Limit {
            what: "units per sale",
            limit: UNITS_MAX,
        });
    }
    Ok(())
}

/// Per-sale stock, reserved and released per user. Every method is atomic per sale.
#[async_trait::async_trait]
pub trait StockStore: Send + Sync {
    /// Defines a sale with `units` units if it is not defined yet (an existing sale is left
    /// as it is); returns its figures.
    async fn define(&self, sale: SaleId, units: u64) -> Result<SaleStock>;
    /// [`StockStore::define`] with the sale's units split over `buckets` stock buckets
    /// (1..=[`STOCK_BUCKETS_MAX`]; a store without buckets checks the count and ignores it).
    async fn define_bucketed(&self, sale: SaleId, units: u64, buckets: u32) -> Result<SaleStock> {
        validate_buckets(buckets)?;
        self.define(sale, units).await
    }
    /// [`StockStore::reconcile_tagged`] laying the sale out over `buckets` stock buckets
    /// (1..=[`STOCK_BUCKETS_MAX`]); `reconcile_tagged` keeps the layout the sale has.
    async fn reconcile_bucketed(
        &self,
        sale: SaleId,
        units: u64,
        buckets: u32,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        validate_buckets(buckets)?;
        self.reconcile_tagged(sale, units, holders).await
    }
    /// Resets a sale to the source of truth: `units` on sale, held by exactly `holders`
    /// (one per active order, each with its reservation's tag; a repeated (user, tag) pair
    /// counts once). Fails if there are more holders than units, or a user with more than
    /// [`PER_USER_LIMIT_MAX`] reservations.
    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock>;
    /// [`StockStore::reconcile_tagged`] with untagged holders.
    async fn reconcile(&self, sale: SaleId, units: u64, holders: &[String]) -> Result<SaleStock> {
        let tagged: Vec<Holder> = holders
            .iter()
            .map(|u| Holder {
                user: u.clone(),
                tag: String::new(),
            })
            .collect();
        self.reconcile_tagged(sale, units, &tagged).await
    }
    /// Holds one unit for `user`, tagged `tag`, if `user` holds fewer than `limit`
    /// (1..=[`PER_USER_LIMIT_MAX`], the sale's per-person limit) reservations: the limit
    /// check, the sold-out check, the decrement and the holder record, in one atomic step.
    /// Idempotent for a non-empty tag: run again with a tag `user` holds (a retried call
    /// whose answer was lost, a redelivery), it answers `Reserved` and takes nothing more;
    /// a new tag when `user` holds `limit` reservations is `AlreadyBought`.
    async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> Result<Reservation>;
    /// [`StockStore::reserve_up_to`] with a limit of one unit per person.
    async fn reserve_as(&self, sale: SaleId, user: &str, tag: &str) -> Result<Reservation> {
        self.reserve_up_to(sale, user, tag, 1).await
    }
    /// [`StockStore::reserve_as`] untagged.
    async fn reserve(&self, sale: SaleId, user: &str) -> Result<Reservation> {
        self.reserve_as(sale, user, "").await
    }
    /// Gives one of `user`'s units back (enqueue failed, order rejected or cancelled); with
    /// `Some(tag)`, exactly the reservation carrying that tag, if the user holds it (with
    /// `None`, any one of theirs). Idempotent with a tag.
    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released>;
    /// [`StockStore::release_if`] whatever the tag.
    async fn release(&self, sale: SaleId, user: &str) -> Result<Released> {
        self.release_if(sale, user, None).await
    }
    /// Adds `units` units to a defined sale.
    async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock>;
    /// The sale's figures, `None` if it is not defined.
    async fn stock(&self, sale: SaleId) -> Result<Option<SaleStock>>;
}

/// A shared store is a store (so one store can sit behind an [`Inventory`] and be used
/// directly too).
#[async_trait::async_trait]
impl<T: StockStore + ?Sized> StockStore for std::sync::Arc<T> {
    async fn define(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        (**self).define(sale, units).await
    }
    async fn define_bucketed(&self, sale: SaleId, units: u64, buckets: u32) -> Result<SaleStock> {
        (**self).define_bucketed(sale, units, buckets).await
    }
    async fn reconcile_bucketed(
        &self,
        sale: SaleId,
        units: u64,
        buckets: u32,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        (**self)
            .reconcile_bucketed(sale, units, buckets, holders)
            .await
    }
    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        (**self).reconcile_tagged(sale, units, holders).await
    }
    async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> Result<Reservation> {
        (**self).reserve_up_to(sale, user, tag, limit).await
    }
    async fn reserve_as(&self, sale: SaleId, user: &str, tag: &str) -> Result<Reservation> {
        (**self).reserve_as(sale, user, tag).await
    }
    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released> {
        (**self).release_if(sale, user, tag).await
    }
    async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        (**self).restock(sale, units).await
    }
    async fn stock(&self, sale: SaleId) -> Result<Option<SaleStock>> {
        (**self).stock(sale).await
    }
}

/// A stock store with a per-process sold-out flag in front of it.
pub struct Inventory {
    store: std::sync::Arc<dyn StockStore>,
    /// Sale → when its sold-out flag must be checked against the store again. A read-write
    /// lock: every purchase attempt reads it (on both cores at once in a flash crowd) and
    /// only a store answer or an expiry writes it; readers never wait for each other.
    sold_out: RwLock<HashMap<SaleId, Instant>>,
    recheck: Duration,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl Inventory {
    /// `store` behind a sold-out flag re-checked at most every `recheck`.
    pub fn new(store: Box<dyn StockStore>, recheck: Duration) -> Inventory {
        Inventory {
            store: std::sync::Arc::from(store),
            sold_out: RwLock::new(HashMap::new()),
            recheck,
        }
    }

    /// How long a sold-out flag set by a reservation holds before the store is asked again.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }

    /// The store.
    pub fn store(&self) -> &dyn StockStore {
        self.store.as_ref()
    }

    /// The store, shared (e.g. for an auditor running beside the process).
    pub fn store_arc(&self) -> std::sync::Arc<dyn StockStore> {
        self.store.clone()
    }

    /// Whether this process currently treats `sale` as sold out (no store round trip).
    pub fn flagged_sold_out(&self, sale: SaleId) -> bool {
        let now = Instant::now();
        let until = {
            let flags = self.sold_out.read().unwrap_or_else(PoisonError::into_inner);
            match flags.get(&sale) {
                None => return false,
                Some(until) if *until > now => return true,
                Some(until) => *until,
            }
        };
        // Expired: dropped (unless set again meanwhile), so this attempt asks the store.
        let mut flags = self
            .sold_out
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if flags.get(&sale) == Some(&until) {
            flags.remove(&sale);
        }
        false
    }

    /// Reads `sale`'s figures from the store and sets the sold-out flag from them: on (for
    /// `hold`) when no unit is left, off otherwise. A process calls it for its sales on a
    /// period shorter than `hold` (the gateway: every housekeeping round, with `hold` =
    /// `recheck` + the round), so that a sold-out flag never lapses while the sale stays
    /// sold out (when it lapses, every attempt goes on towards the store until one gets
    /// there; attempts refused earlier, for their session or token, never do) and a unit
    /// released by another process is seen within one period. Returns the flag, or `None`
    /// when the store does not hold the sale (the flag is left alone).
    pub async fn refresh_sold_out(&self, sale: SaleId, hold: Duration) -> Result<Option<bool>> {
        let Some(s) = self.store.stock(sale).await? else {
            return Ok(None);
        };
        let sold_out = s.left == 0;
        self.set_flag_for(sale, sold_out, hold);
        Ok(Some(sold_out))
    }

    fn set_flag(&self, sale: SaleId, on: bool) {
        self.set_flag_for(sale, on, self.recheck);
    }

    /// Sets the flag for `hold` (`on`), or clears it.
    fn set_flag_for(&self, sale: SaleId, on: bool, hold: Duration) {
        let mut flags = self
            .sold_out
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if on {
            // Bounded: one entry per sold-out sale, and sales are bounded by the store.
            flags.insert(sale, Instant::now() + hold);
        } else {
            flags.remove(&sale);
        }
    }

    /// `reserve`, answered from the flag when the sale is known to be sold out.
    pub async fn reserve(&self, sale: SaleId, user: &str) -> Result<Reservation> {
        self.reserve_as(sale, user, "").await
    }

    /// `reserve_as`, answered from the flag when the sale is known to be sold out.
    pub async fn reserve_as(&self, sale: SaleId, user: &str, tag: &str) -> Result<Reservation> {
        self.reserve_up_to(sale, user, tag, 1).await
    }

    /// `reserve_up_to`, answered from the flag when the sale is known to be sold out.
    pub async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> Result<Reservation> {
        validate_user(user)?;
        validate_limit(limit)?;
        if self.flagged_sold_out(sale) {
            return Ok(Reservation::SoldOut);
        }
        let r = self.store.reserve_up_to(sale, user, tag, limit).await?;
        match r {
            Reservation::SoldOut | Reservation::Reserved { left: 0 } => self.set_flag(sale, true),
            _ => {}
        }
        Ok(r)
    }

    /// `release`; a unit back clears the sold-out flag.
    pub async fn release(&self, sale: SaleId, user: &str) -> Result<Released> {
        self.release_if(sale, user, None).await
    }

    /// `release_if`; a unit back clears the sold-out flag.
    pub async fn release_if(
        &self,
        sale: SaleId,
        user: &str,
        tag: Option<&str>,
    ) -> Result<Released> {
        let r = self.store.release_if(sale, user, tag).await?;
        if matches!(r, Released::Released { .. }) {
            self.set_flag(sale, false);
        }
        Ok(r)
    }

    /// `restock`; clears the sold-out flag.
    pub async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        let s = self.store.restock(sale, units).await?;
        self.set_flag(sale, s.left == 0);
        Ok(s)
    }

    /// `reconcile`; sets the flag from the result.
    pub async fn reconcile(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[String],
    ) -> Result<SaleStock> {
        let s = self.store.reconcile(sale, units, holders).await?;
        self.set_flag(sale, s.left == 0);
        Ok(s)
    }

    /// `reconcile_bucketed`; sets the flag from the result.
    pub async fn reconcile_bucketed(
        &self,
        sale: SaleId,
        units: u64,
        buckets: u32,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        let s = self
            .store
            .reconcile_bucketed(sale, units, buckets, holders)
            .await?;
        self.set_flag(sale, s.left == 0);
        Ok(s)
    }

    /// `reconcile_tagged`; sets the flag from the result.
    pub async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        let s = self.store.reconcile_tagged(sale, units, holders).await?;
        self.set_flag(sale, s.left == 0);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::{bucket_share, home_bucket};

    #[test]
    fn homes_are_stable_and_shares_add_up() {
        // FNV-1a 64 of "" is its offset basis; these pin the hash across versions (a change
        // would move every holder of a bucketed sale away from its record).
        assert_eq!(home_bucket("", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as u32);
        assert_eq!(
            home_bucket("a", 1_000_000),
            (0xaf63_dc4c_8601_ec8cu64 % 1_000_000) as u32
        );
        assert_eq!(home_bucket("anything", 1), 0);
        for k in 1..=64u32 {
            for units in [0u64, 1, 7, 64, 1001] {
                let sum: u64 = (0..k).map(|b| bucket_share(units, k, b)).sum();
                assert_eq!(sum, units);
            }
        }
    }
}
