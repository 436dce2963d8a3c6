//! Integration tests of the stock stores: the same checks against [`MemoryStore`] and
//! against [`RedisStore`] on the real Redis (`REDIS_URL`, default 127.0.0.1:6379), each test
//! under its own key prefix. Without Redis the Redis half is skipped, except under `CI`,
//! where it fails.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod buckets;
mod limits;

use inventory::{
    Error, Holder, Inventory, MemoryStore, RedisStore, Released, Reservation, SaleId, SaleStock,
    StockStore,
};

/// A unique key prefix per test (and per run), so tests never see each other's keys.
fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "inventory-test:{}:{nanos}:{}:{test}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Redis store for `test`, or `None` (skip) when Redis is not there outside CI.
async fn redis(test: &str) -> Option<RedisStore> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match RedisStore::connect(&url, &prefix(test), 16).await {
        Ok(s) => Some(s),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("Redis at {url} is required under CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping the Redis half of {test}: {e}");
            None
        }
    }
}

/// Runs `check` against the in-process store and, when available, the Redis store.
async fn both<F, Fut>(test: &str, sales: &[SaleId], check: F)
where
    F: Fn(Arc<dyn StockStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    check(Arc::new(MemoryStore::new())).await;
    if let Some(r) = redis(test).await {
        let r = Arc::new(r);
        check(r.clone()).await;
        for s in sales {
            r.forget(*s).await.expect("clean up");
        }
    }
}

#[tokio::test]
async fn reserve_release_semantics() {
    both("semantics", &[1, 2], |s| async move {
        assert_eq!(
            s.reserve(1, "alice").await.expect("r"),
            Reservation::NoSuchSale
        );
        assert_eq!(s.stock(1).await.expect("stock"), None);
        let st = s.define(1, 2).await.expect("define");
        assert_eq!(
            st,
            SaleStock {
                units: 2,
                left: 2,
                holders: 0
            }
        );
        // Defining again changes nothing.
        assert_eq!(s.define(1, 99).await.expect("define"), st);
        assert_eq!(
            s.reserve(1, "alice").await.expect("r"),
            Reservation::Reserved { left: 1 }
        );
        // A repeat click: no unit burnt.
        assert_eq!(
            s.reserve(1, "alice").await.expect("r"),
            Reservation::AlreadyBought
        );
        assert_eq!(s.stock(1).await.expect("s").map(|s| s.left), Some(1));
        assert_eq!(
            s.reserve(1, "bob").await.expect("r"),
            Reservation::Reserved { left: 0 }
        );
        assert_eq!(
            s.reserve(1, "carol").await.expect("r"),
            Reservation::SoldOut
        );
        // Release is idempotent and puts the unit back.
        assert_eq!(
            s.release(1, "alice").await.expect("rel"),
            Released::Released { left: 1 }
        );
        assert_eq!(s.release(1, "alice").await.expect("rel"), Released::NotHeld);
        assert_eq!(
            s.release(1, "nobody").await.expect("rel"),
            Released::NotHeld
        );
        assert_eq!(s.release(2, "alice").await.expect("rel"), Released::NotHeld);
        assert_eq!(
            s.reserve(1, "carol").await.expect("r"),
            Reservation::Reserved { left: 0 }
        );
        // Restock.
        assert_eq!(
            s.restock(1, 3).await.expect("restock"),
            SaleStock {
                units: 5,
                left: 3,
                holders: 2
            }
        );
        assert!(matches!(s.restock(2, 3).await, Err(Error::Invalid(_))));
        // The total after a restock stays within the limit, and a refused one changes nothing.
        assert!(matches!(
            s.restock(1, inventory::UNITS_MAX).await,
            Err(Error::Limit { .. })
        ));
        assert_eq!(s.stock(1).await.expect("s").map(|s| s.units), Some(5));
        // Bad input.
        assert!(matches!(s.reserve(1, "").await, Err(Error::Invalid(_))));
        assert!(matches!(
            s.reserve(1, &"x".repeat(inventory::USER_ID_BYTES_MAX + 1))
                .await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(s.reserve(1, "a\nb").await, Err(Error::Invalid(_))));
        assert!(matches!(
            s.define(2, inventory::UNITS_MAX + 1).await,
            Err(Error::Limit { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn reconcile_resets_to_the_source_of_truth() {
    both("reconcile", &[7], |s| async move {
        s.define(7, 10).await.expect("define");
        for u in ["a", "b", "c"] {
            s.reserve(7, u).await.expect("reserve");
        }
        // "c"'s enqueue never happened: the truth is that only a and b hold a unit.
        let holders = vec!["a".to_string(), "b".to_string()];
        let st = s.reconcile(7, 10, &holders).await.expect("reconcile");
        assert_eq!(
            st,
            SaleStock {
                units: 10,
                left: 8,
                holders: 2
            }
        );
        assert_eq!(s.release(7, "c").await.expect("rel"), Released::NotHeld);
        assert_eq!(
            s.reserve(7, "a").await.expect("r"),
            Reservation::AlreadyBought
        );
        assert_eq!(
            s.reserve(7, "c").await.expect("r"),
            Reservation::Reserved { left: 7 }
        );
        let too_many: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
        let r = s.reconcile(7, 2, &too_many).await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        // A refused reconcile changes nothing.
        assert_eq!(
            s.stock(7).await.expect("stock"),
            Some(SaleStock {
                units: 10,
                left: 7,
                holders: 3
            })
        );
    })
    .await;
}

/// 20,000 purchase attempts from 5,000 users (four clicks each, interleaved) on a sale of
/// 500 units: exactly 500 reserved, never one user twice, and the stock ends at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_crowd_never_oversells() {
    both("crowd", &[42], |s| async move {
        s.define(42, 500).await.expect("define");
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut won = Vec::new();
                    for i in 0..625u32 {
                        let attempt = t * 625 + i;
                        let user = format!("user-{}", attempt % 5000);
                        match s.reserve(42, &user).await.expect("reserve") {
                            Reservation::Reserved { .. } => won.push(user),
                            Reservation::SoldOut | Reservation::AlreadyBought => {}
                            Reservation::NoSuchSale => panic!("the sale vanished"),
                        }
                    }
                    won
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.expect("join"));
        }
        let distinct: HashSet<&String> = winners.iter().collect();
        assert_eq!(winners.len(), 500, "exactly the units on sale");
        assert_eq!(distinct.len(), 500, "nobody twice");
        assert_eq!(
            s.stock(42).await.expect("stock"),
            Some(SaleStock {
                units: 500,
                left: 0,
                holders: 500
            })
        );
    })
    .await;
}

/// A store that counts the calls that reach it.
struct Counting {
    inner: MemoryStore,
    reserves: AtomicU64,
}

#[async_trait::async_trait]
impl StockStore for Counting {
    async fn define(&self, sale: SaleId, units: u64) -> inventory::Result<SaleStock> {
        self.inner.define(sale, units).await
    }
    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> inventory::Result<SaleStock> {
        self.inner.reconcile_tagged(sale, units, holders).await
    }
    async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> inventory::Result<Reservation> {
        self.reserves.fetch_add(1, Ordering::Relaxed);
        self.inner.reserve_up_to(sale, user, tag, limit).await
    }
    async fn release_if(
        &self,
        sale: SaleId,
        user: &str,
        tag: Option<&str>,
    ) -> inventory::Result<Released> {
        self.inner.release_if(sale, user, tag).await
    }
    async fn restock(&self, sale: SaleId, units: u64) -> inventory::Result<SaleStock> {
        self.inner.restock(sale, units).await
    }
    async fn stock(&self, sale: SaleId) -> inventory::Result<Option<SaleStock>> {
        self.inner.stock(sale).await
    }
}

/// Once sold out, reservations are answered from the process's flag without a store round
/// trip; a release (or restock) through this process clears it; a release elsewhere is
/// seen after the recheck period.
#[tokio::test]
async fn the_sold_out_flag_saves_round_trips_and_resets() {
    let store = Arc::new(Counting {
        inner: MemoryStore::new(),
        reserves: AtomicU64::new(0),
    });
    let inv = Inventory::new(Box::new(store.clone()), Duration::from_millis(200));
    inv.store().define(1, 1).await.expect("define");
    assert!(matches!(
        inv.reserve(1, "a").await.expect("r"),
        Reservation::Reserved { left: 0 }
    ));
    assert!(inv.flagged_sold_out(1), "the last unit sets the flag");
    let before = store.reserves.load(Ordering::Relaxed);
    for i in 0..100 {
        assert_eq!(
            inv.reserve(1, &format!("u{i}")).await.expect("r"),
            Reservation::SoldOut
        );
    }
    assert_eq!(
        store.reserves.load(Ordering::Relaxed),
        before,
        "no store round trip"
    );
    // A release through this process clears the flag at once.
    inv.release(1, "a").await.expect("release");
    assert!(!inv.flagged_sold_out(1));
    assert!(matches!(
        inv.reserve(1, "b").await.expect("r"),
        Reservation::Reserved { left: 0 }
    ));
    // A release made elsewhere (straight in the store) is seen after the recheck period.
    store.release(1, "b").await.expect("release elsewhere");
    assert_eq!(inv.reserve(1, "c").await.expect("r"), Reservation::SoldOut);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while inv.flagged_sold_out(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the flag never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        inv.reserve(1, "c").await.expect("r"),
        Reservation::Reserved { left: 0 }
    ));
    // A restock clears it too.
    assert_eq!(inv.reserve(1, "d").await.expect("r"), Reservation::SoldOut);
    inv.restock(1, 1).await.expect("restock");
    assert!(matches!(
        inv.reserve(1, "d").await.expect("r"),
        Reservation::Reserved { .. }
    ));
}

/// A tagged reservation asked again (a store client that re-sends a call whose answer was
/// lost) is answered as the first time and takes no second unit; another tag, or no tag,
/// is the buyer's second purchase: already bought.
#[tokio::test]
async fn a_repeated_tagged_reservation_is_answered_as_the_first() {
    both("replay", &[8], |s| async move {
        s.define(8, 3).await.expect("define");
        assert_eq!(
            s.reserve_as(8, "ann", "ticket-1").await.expect("r"),
            Reservation::Reserved { left: 2 }
        );
        assert_eq!(
            s.reserve_as(8, "ann", "ticket-1").await.expect("r"),
            Reservation::Reserved { left: 2 },
            "the same call again"
        );
        assert_eq!(
            s.reserve_as(8, "ann", "ticket-2").await.expect("r"),
            Reservation::AlreadyBought
        );
        assert_eq!(
            s.reserve(8, "ann").await.expect("r"),
            Reservation::AlreadyBought
        );
        s.reserve(8, "bob").await.expect("r");
        assert_eq!(
            s.reserve(8, "bob").await.expect("r"),
            Reservation::AlreadyBought,
            "untagged repeats are never replays"
        );
        let st = s.stock(8).await.expect("stock").expect("sale");
        assert_eq!((st.left, st.holders), (1, 2));
    })
    .await;
}

/// A tagged release takes back only the reservation with that tag: a late release for an
/// old purchase never takes the user's newer reservation; an untagged release takes any.
#[tokio::test]
async fn a_tagged_release_only_takes_its_own_reservation() {
    both("tags", &[9], |s| async move {
        s.define(9, 3).await.expect("define");
        assert_eq!(
            s.reserve_as(9, "ann", "ticket-1").await.expect("r"),
            Reservation::Reserved { left: 2 }
        );
        assert_eq!(
            s.release_if(9, "ann", Some("ticket-0")).await.expect("rel"),
            Released::NotHeld,
            "another purchase's release"
        );
        assert_eq!(
            s.release_if(9, "ann", Some("ticket-1")).await.expect("rel"),
            Released::Released { left: 3 }
        );
        assert_eq!(
            s.release_if(9, "ann", Some("ticket-1")).await.expect("rel"),
            Released::NotHeld,
            "idempotent"
        );
        // ann buys again; the first purchase's late release leaves the new one alone.
        s.reserve_as(9, "ann", "ticket-2").await.expect("r");
        assert_eq!(
            s.release_if(9, "ann", Some("ticket-1")).await.expect("rel"),
            Released::NotHeld
        );
        // Reconciled holders carry their tags.
        let holders = vec![
            Holder {
                user: "bob".into(),
                tag: "ticket-b".into(),
            },
            Holder {
                user: "cat".into(),
                tag: "ticket-c".into(),
            },
        ];
        let st = s.reconcile_tagged(9, 3, &holders).await.expect("reconcile");
        assert_eq!((st.left, st.holders), (1, 2));
        assert_eq!(
            s.release_if(9, "bob", Some("ticket-c")).await.expect("rel"),
            Released::NotHeld
        );
        assert_eq!(
            s.release_if(9, "bob", Some("ticket-b")).await.expect("rel"),
            Released::Released { left: 2 }
        );
        assert_eq!(
            s.release(9, "cat").await.expect("rel"),
            Released::Released { left: 3 },
            "untagged: whatever the tag"
        );
        let long = "x".repeat(inventory::TAG_BYTES_MAX + 1);
        assert!(matches!(
            s.reserve_as(9, "dan", &long).await,
            Err(Error::Invalid(_))
        ));
    })
    .await;
}
