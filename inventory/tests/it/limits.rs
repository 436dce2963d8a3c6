//! Per-person limits: a person may hold up to N units of a sale (N = 1 and N = 3), on the
//! in-process store and on Redis (K = 1 and K = 4 stock buckets): the limit holds, a
//! reservation is idempotent by its tag, a release returns exactly its tag's unit, and
//! reconcile and the figures count reservations. A seeded random run compares each store
//! with a small model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use inventory::{
    Error, Holder, PER_USER_LIMIT_MAX, Released, Reservation, SaleId, SaleStock, StockStore,
};

use super::both;

/// The limits these tests run with.
const LIMITS: [u32; 2] = [1, 3];
/// The stock bucket counts these tests run with (a store without buckets ignores K).
const BUCKETS: [u32; 2] = [1, 4];

fn holder(user: &str, tag: &str) -> Holder {
    Holder {
        user: user.into(),
        tag: tag.into(),
    }
}

async fn figures(s: &dyn StockStore, sale: SaleId) -> (u64, u64) {
    let st = s.stock(sale).await.expect("stock").expect("defined");
    (st.left, st.holders)
}

async fn limit_semantics(s: Arc<dyn StockStore>, sale: SaleId, k: u32, n: u32) {
    let ctx = format!("limit {n}, {k} buckets");
    s.define_bucketed(sale, 20, k).await.expect("define");
    // ann takes n units, each under its own tag; the next is refused without burning one.
    for i in 0..n {
        let r = s
            .reserve_up_to(sale, "ann", &format!("t{i}"), n)
            .await
            .expect("reserve");
        assert!(matches!(r, Reservation::Reserved { .. }), "{ctx}: {r:?}");
    }
    assert_eq!(figures(&*s, sale).await, (20 - u64::from(n), u64::from(n)));
    assert_eq!(
        s.reserve_up_to(sale, "ann", "t-more", n).await.expect("r"),
        Reservation::AlreadyBought,
        "{ctx}"
    );
    assert_eq!(
        s.reserve_up_to(sale, "ann", "", n).await.expect("r"),
        Reservation::AlreadyBought,
        "{ctx}: untagged"
    );
    // Every tag ann holds, asked again (a retry, a redelivery), takes nothing.
    for i in 0..n {
        let r = s
            .reserve_up_to(sale, "ann", &format!("t{i}"), n)
            .await
            .expect("retry");
        assert!(matches!(r, Reservation::Reserved { .. }), "{ctx}: {r:?}");
    }
    assert_eq!(
        figures(&*s, sale).await,
        (20 - u64::from(n), u64::from(n)),
        "{ctx}: a retried reserve never takes a second unit"
    );
    // Releasing the first tag returns that unit and no other: it is gone, the others stay.
    assert!(matches!(
        s.release_if(sale, "ann", Some("t0")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert_eq!(
        s.release_if(sale, "ann", Some("t0")).await.expect("rel"),
        Released::NotHeld,
        "{ctx}"
    );
    for i in 1..n {
        let r = s
            .reserve_up_to(sale, "ann", &format!("t{i}"), n)
            .await
            .expect("r");
        assert!(
            matches!(r, Reservation::Reserved { .. }),
            "{ctx}: t{i} stays"
        );
    }
    assert_eq!(
        figures(&*s, sale).await,
        (21 - u64::from(n), u64::from(n) - 1)
    );
    // A free place again: a new tag is taken, then the limit holds again.
    assert!(matches!(
        s.reserve_up_to(sale, "ann", "t-new", n).await.expect("r"),
        Reservation::Reserved { .. }
    ));
    assert_eq!(
        s.reserve_up_to(sale, "ann", "t-newer", n).await.expect("r"),
        Reservation::AlreadyBought,
        "{ctx}"
    );
    // Another person has a limit of their own.
    assert!(matches!(
        s.reserve_up_to(sale, "bob", "b0", n).await.expect("r"),
        Reservation::Reserved { .. }
    ));
    // Reconcile keeps several reservations per person, a repeated pair once.
    let truth = vec![
        holder("ann", "t1"),
        holder("ann", "t2"),
        holder("ann", "t2"),
        holder("cat", "c0"),
    ];
    let st = s
        .reconcile_tagged(sale, 20, &truth)
        .await
        .expect("reconcile");
    assert_eq!(
        st,
        SaleStock {
            units: 20,
            left: 17,
            holders: 3
        },
        "{ctx}"
    );
    assert_eq!(figures(&*s, sale).await, (17, 3));
    assert_eq!(
        s.release_if(sale, "bob", Some("b0")).await.expect("rel"),
        Released::NotHeld
    );
    // Reconciled reservations are idempotent and released by tag like the others.
    assert!(matches!(
        s.reserve_up_to(sale, "ann", "t2", 3).await.expect("r"),
        Reservation::Reserved { left: _ }
    ));
    assert_eq!(figures(&*s, sale).await, (17, 3), "{ctx}");
    assert!(matches!(
        s.release_if(sale, "ann", Some("t1")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert!(matches!(
        s.release_if(sale, "ann", Some("t2")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert_eq!(figures(&*s, sale).await, (19, 1));
    // Limits outside 1..=max, and a person over the max in a reconcile, are refused.
    for bad in [0, PER_USER_LIMIT_MAX + 1] {
        assert!(matches!(
            s.reserve_up_to(sale, "dan", "d", bad).await,
            Err(Error::Invalid(_))
        ));
    }
    let over: Vec<Holder> = (0..=PER_USER_LIMIT_MAX)
        .map(|i| holder("eve", &format!("e{i}")))
        .collect();
    assert!(matches!(
        s.reconcile_tagged(sale, 20, &over).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(figures(&*s, sale).await, (19, 1), "a refused reconcile");
}

#[tokio::test]
async fn a_person_holds_up_to_the_limit_and_each_tag_once() {
    let sales: Vec<SaleId> = (0..4).map(|i| 60 + i).collect();
    both("limits", &sales, |s| async move {
        let mut sale = 60;
        for k in BUCKETS {
            for n in LIMITS {
                limit_semantics(s.clone(), sale, k, n).await;
                sale += 1;
            }
        }
    })
    .await;
}

/// With the home bucket dry, a unit comes from a sibling; a person's reservations from
/// several buckets are still counted against one limit, retried and released by tag.
#[tokio::test]
async fn reservations_from_siblings_count_against_the_limit() {
    both("limit-siblings", &[70], |s| async move {
        // Four buckets of one unit: most of ann's units come from siblings.
        s.define_bucketed(70, 4, 4).await.expect("define");
        for i in 0..3 {
            let r = s
                .reserve_up_to(70, "ann", &format!("t{i}"), 3)
                .await
                .expect("r");
            assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
        }
        for i in 0..3 {
            let r = s
                .reserve_up_to(70, "ann", &format!("t{i}"), 3)
                .await
                .expect("retry");
            assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
        }
        assert_eq!(figures(&*s, 70).await, (1, 3));
        assert_eq!(
            s.reserve_up_to(70, "ann", "t3", 3).await.expect("r"),
            Reservation::AlreadyBought
        );
        assert!(matches!(
            s.reserve_up_to(70, "bob", "b0", 3).await.expect("r"),
            Reservation::Reserved { left: 0 }
        ));
        assert_eq!(
            s.reserve_up_to(70, "bob", "b1", 3).await.expect("r"),
            Reservation::SoldOut
        );
        for i in 0..3 {
            assert!(matches!(
                s.release_if(70, "ann", Some(&format!("t{i}")))
                    .await
                    .expect("rel"),
                Released::Released { .. }
            ));
        }
        assert_eq!(figures(&*s, 70).await, (3, 1));
    })
    .await;
}

/// A small random generator with a printed seed (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random reserves (new and repeated tags), tagged releases and reconciles against the
/// model: user → tags held, units left.
async fn random_run(s: Arc<dyn StockStore>, sale: SaleId, k: u32, n: u32, seed: u64) {
    const UNITS: u64 = 12;
    const STEPS: usize = 300;
    let users = ["ann", "bob", "cat", "dan", "eve"];
    let mut rng = Rng(seed | 1);
    let mut held: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut left = UNITS;
    let mut next_tag = 0u64;
    s.define_bucketed(sale, UNITS, k).await.expect("define");
    for step in 0..STEPS {
        let ctx = format!("seed {seed}, limit {n}, {k} buckets, step {step}");
        let user = users[rng.below(users.len() as u64) as usize];
        let mine = held.entry(user).or_default();
        match rng.below(10) {
            0..=4 => {
                // A new purchase.
                next_tag += 1;
                let tag = format!("t{next_tag}");
                let r = s.reserve_up_to(sale, user, &tag, n).await.expect("r");
                if mine.len() >= n as usize {
                    assert_eq!(r, Reservation::AlreadyBought, "{ctx}");
                } else if left == 0 {
                    assert_eq!(r, Reservation::SoldOut, "{ctx}");
                } else {
                    assert!(matches!(r, Reservation::Reserved { .. }), "{ctx}: {r:?}");
                    mine.push(tag);
                    left -= 1;
                }
            }
            5..=6 if !mine.is_empty() => {
                // A retried reservation.
                let tag = mine[rng.below(mine.len() as u64) as usize].clone();
                let r = s.reserve_up_to(sale, user, &tag, n).await.expect("r");
                assert!(matches!(r, Reservation::Reserved { .. }), "{ctx}: {r:?}");
            }
            7..=8 if !mine.is_empty() => {
                let i = rng.below(mine.len() as u64) as usize;
                let tag = mine.remove(i);
                let r = s.release_if(sale, user, Some(&tag)).await.expect("rel");
                assert!(matches!(r, Released::Released { .. }), "{ctx}: {r:?}");
                left += 1;
                let again = s.release_if(sale, user, Some(&tag)).await.expect("rel");
                assert_eq!(again, Released::NotHeld, "{ctx}");
            }
            9 => {
                let truth: Vec<Holder> = held
                    .iter()
                    .flat_map(|(u, tags)| tags.iter().map(|t| holder(u, t)))
                    .collect();
                s.reconcile_tagged(sale, UNITS, &truth)
                    .await
                    .expect("reconcile");
            }
            _ => {}
        }
        let reservations: u64 = held.values().map(|t| t.len() as u64).sum();
        assert_eq!(
            figures(&*s, sale).await,
            (left, reservations),
            "{ctx}: the store's figures"
        );
    }
    let per_user: HashMap<&str, usize> = held.iter().map(|(u, t)| (*u, t.len())).collect();
    assert!(per_user.values().all(|c| *c <= n as usize));
}

#[tokio::test]
async fn random_operations_match_the_model() {
    let seed = std::env::var("LIMIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("random_operations_match_the_model: LIMIT_SEED={seed}");
    let sales: Vec<SaleId> = (0..4).map(|i| 80 + i).collect();
    both("limit-random", &sales, |s| async move {
        let mut sale = 80;
        for k in BUCKETS {
            for n in LIMITS {
                random_run(s.clone(), sale, k, n, seed).await;
                sale += 1;
            }
        }
    })
    .await;
}

/// A crowd of 200 people clicking 4 times each on a sale of 300 units with a limit of 3:
/// no one over 3, never more reserved than the units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_never_exceeds_the_limit() {
    both("limit-crowd", &[90], |s| async move {
        s.define(90, 300).await.expect("define");
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut won = Vec::new();
                    for i in 0..100u32 {
                        let attempt = t * 100 + i;
                        let user = format!("user-{}", attempt % 200);
                        let tag = format!("tag-{attempt}");
                        match s.reserve_up_to(90, &user, &tag, 3).await.expect("r") {
                            Reservation::Reserved { .. } => won.push(user),
                            Reservation::SoldOut | Reservation::AlreadyBought => {}
                            Reservation::NoSuchSale => panic!("the sale vanished"),
                        }
                    }
                    won
                })
            })
            .collect();
        let mut per_user: HashMap<String, u32> = HashMap::new();
        let mut total = 0u64;
        for t in tasks {
            for u in t.await.expect("join") {
                *per_user.entry(u).or_default() += 1;
                total += 1;
            }
        }
        assert!(per_user.values().all(|c| *c <= 3), "{per_user:?}");
        assert_eq!(figures(&*s, 90).await, (300 - total, total));
        // 200 people may want up to 600 units: all 300 are sold.
        assert_eq!(total, 300, "every unit found a buyer");
    })
    .await;
}

/// A tagged reserve retried after its first run stopped mid-walk (its holder record still
/// pending at a sibling) goes on from that sibling and settles the record; run again, it
/// takes nothing more.
#[tokio::test]
async fn a_retried_reserve_finishes_a_pending_walk_once() {
    let Some(s) = super::redis("limit-pending").await else {
        return;
    };
    let (sale, k) = (95, 4);
    s.define_bucketed(sale, 8, k).await.expect("define");
    let user = "ann";
    let home = inventory::home_bucket(user, k);
    let sibling = (home + 2) % k;
    let keys = inventory::keys::SaleKeys::new(s.prefix(), sale);
    let [home_left, home_holders] = keys.bucket(home);
    let [sibling_left, _] = keys.bucket(sibling);
    let get = |key: String| {
        let s = &s;
        async move {
            let v: i64 = s
                .conn()
                .query(redis::cmd("GET").arg(key))
                .await
                .expect("GET");
            v
        }
    };
    // The first run found the home dry and was about to try `sibling` when it stopped.
    let _: () = s
        .conn()
        .query(redis::cmd("SET").arg(&home_left).arg(0))
        .await
        .expect("SET");
    let _: i64 = s
        .conn()
        .query(
            redis::cmd("HSET")
                .arg(&home_holders)
                .arg(user)
                .arg(format!("t1|{sibling}?")),
        )
        .await
        .expect("HSET");
    let before = get(sibling_left.clone()).await;
    for _ in 0..2 {
        let r = s.reserve_up_to(sale, user, "t1", 3).await.expect("retry");
        assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
        assert_eq!(
            get(sibling_left.clone()).await,
            before - 1,
            "one unit, once"
        );
    }
    let record: String = s
        .conn()
        .query(redis::cmd("HGET").arg(&home_holders).arg(user))
        .await
        .expect("HGET");
    assert_eq!(record, format!("t1|{sibling}"), "settled");
    assert!(matches!(
        s.release_if(sale, user, Some("t1")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert_eq!(
        get(sibling_left).await,
        before,
        "given back where it came from"
    );
    s.forget(sale).await.expect("clean up");
}

/// The limits on a scratch 3-master Redis Cluster (redis-kit), K = 1 and K = 4: a person's
/// records all live in their home bucket's slot, whatever bucket gave the units.
#[tokio::test]
async fn limits_hold_on_a_cluster() {
    let cluster = redis_kit::RedisCluster::start(3, 0).expect("a 3-master cluster starts");
    let s: Arc<dyn StockStore> = Arc::new(
        inventory::RedisStore::connect(&cluster.url(), "limit-cluster:", 16)
            .await
            .expect("the store connects"),
    );
    let mut sale = 100;
    for k in BUCKETS {
        for n in LIMITS {
            limit_semantics(s.clone(), sale, k, n).await;
            random_run(s.clone(), sale + 10, k, n, sale).await;
            sale += 1;
        }
    }
}
