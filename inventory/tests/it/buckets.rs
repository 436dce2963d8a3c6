//! Stock buckets and Redis Cluster: the store on a scratch standalone server and on a
//! scratch 3-master cluster (redis-kit), with sales of K = 1 and K > 1 buckets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use inventory::keys::SaleKeys;
use inventory::{
    Error, Holder, RedisStore, Released, Reservation, STOCK_BUCKETS_MAX, SaleId, SaleStock,
    StockStore, bucket_share, home_bucket,
};
use redis_kit::{RedisCluster, RedisOptions, RedisServer};

/// Key prefix of these tests (each runs on servers of its own).
const PREFIX: &str = "bucket-test:";

/// A scratch server or cluster, kept alive as long as the store is used.
enum Servers {
    Standalone(#[allow(dead_code)] RedisServer),
    Cluster(RedisCluster),
}

fn standalone() -> (Servers, String) {
    let s = RedisServer::start(RedisOptions::new().appendonly(false))
        .expect("redis-server starts (install Debian's redis-server)");
    let url = s.url();
    (Servers::Standalone(s), url)
}

fn cluster() -> (Servers, String) {
    let c = RedisCluster::start(3, 0).expect("a 3-master cluster starts");
    let url = c.url();
    (Servers::Cluster(c), url)
}

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(url, PREFIX, 16)
        .await
        .expect("the store connects")
}

/// Bucket `b`'s raw `left` and holder records.
async fn raw_bucket(s: &RedisStore, sale: SaleId, b: u32) -> (i64, HashMap<String, String>) {
    let [left, holders] = SaleKeys::new(s.prefix(), sale).bucket(b);
    let left: Option<i64> = s
        .conn()
        .query(redis::cmd("GET").arg(left))
        .await
        .expect("GET");
    let holders: HashMap<String, String> = s
        .conn()
        .query(redis::cmd("HGETALL").arg(holders))
        .await
        .expect("HGETALL");
    (left.unwrap_or(-1), holders)
}

/// The bucket a `tag|g` record names.
fn giver(record: &str) -> u32 {
    let (_, g) = record.rsplit_once('|').expect("a bucketed record is tag|g");
    g.parse().expect("a bucket index")
}

/// `count` users per home bucket, by `counts[b]`, for a sale of `k` buckets.
fn users_by_home(k: u32, counts: &[usize]) -> Vec<String> {
    let mut per: Vec<Vec<String>> = vec![Vec::new(); k as usize];
    let mut i = 0u64;
    while per.iter().zip(counts).any(|(v, c)| v.len() < *c) {
        let u = format!("user-{i}");
        let h = home_bucket(&u, k) as usize;
        if per[h].len() < counts[h] {
            per[h].push(u);
        }
        i += 1;
    }
    per.into_iter().flatten().collect()
}

/// The plain operations, K = 1 and K = 3, as on the standalone store.
async fn semantics(s: &RedisStore, sale: SaleId, k: u32) {
    assert_eq!(
        s.reserve(sale, "alice").await.expect("r"),
        Reservation::NoSuchSale
    );
    let st = s.define_bucketed(sale, 3, k).await.expect("define");
    assert_eq!(
        st,
        SaleStock {
            units: 3,
            left: 3,
            holders: 0
        }
    );
    // Defining again changes nothing, K included.
    assert_eq!(s.define_bucketed(sale, 99, 1).await.expect("define"), st);
    assert_eq!(s.buckets(sale).await.expect("k"), Some(k));
    for u in ["alice", "bob", "carol"] {
        assert!(matches!(
            s.reserve_as(sale, u, &format!("t-{u}")).await.expect("r"),
            Reservation::Reserved { .. }
        ));
        assert_eq!(
            s.reserve(sale, u).await.expect("r"),
            Reservation::AlreadyBought
        );
    }
    assert_eq!(
        s.reserve(sale, "dave").await.expect("r"),
        Reservation::SoldOut
    );
    assert_eq!(
        s.release_if(sale, "bob", Some("other")).await.expect("rel"),
        Released::NotHeld
    );
    assert!(matches!(
        s.release_if(sale, "bob", Some("t-bob")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert_eq!(
        s.release(sale, "bob").await.expect("rel"),
        Released::NotHeld
    );
    assert!(matches!(
        s.reserve(sale, "dave").await.expect("r"),
        Reservation::Reserved { .. }
    ));
    let st = s.restock(sale, 4).await.expect("restock");
    assert_eq!(
        st,
        SaleStock {
            units: 7,
            left: 4,
            holders: 3
        }
    );
    let holders = [
        Holder {
            user: "alice".into(),
            tag: "t-a".into(),
        },
        Holder {
            user: "zed".into(),
            tag: "t-z".into(),
        },
    ];
    let st = s.reconcile_tagged(sale, 5, &holders).await.expect("rec");
    assert_eq!(
        st,
        SaleStock {
            units: 5,
            left: 3,
            holders: 2
        }
    );
    assert_eq!(s.stock(sale).await.expect("stock"), Some(st));
    assert!(matches!(
        s.release_if(sale, "zed", Some("t-z")).await.expect("rel"),
        Released::Released { .. }
    ));
    assert_eq!(s.stock(sale).await.expect("stock").map(|s| s.left), Some(4));
    s.forget(sale).await.expect("forget");
    assert_eq!(s.stock(sale).await.expect("stock"), None);
}

#[tokio::test]
async fn the_store_keeps_its_rules_on_a_cluster_and_with_buckets() {
    for (servers, url) in [standalone(), cluster()] {
        let s = store(&url).await;
        assert_eq!(
            s.conn().is_cluster(),
            matches!(servers, Servers::Cluster(_))
        );
        semantics(&s, 1, 1).await;
        semantics(&s, 2, 3).await;
        drop(servers);
    }
}

#[tokio::test]
async fn units_split_evenly_and_one_bucket_is_the_old_layout() {
    let (_servers, url) = standalone();
    let s = store(&url).await;
    assert!(matches!(
        s.define_bucketed(1, 10, 0).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.define_bucketed(1, 10, STOCK_BUCKETS_MAX + 1).await,
        Err(Error::Invalid(_))
    ));
    // K = 1: exactly `units`, `left`, `holder_tags` with the plain tag, no `buckets` key.
    s.define(1, 10).await.expect("define");
    s.reserve_as(1, "ann", "ticket-1").await.expect("r");
    let k = SaleKeys::new(s.prefix(), 1);
    let mut keys: Vec<String> = s
        .conn()
        .query(redis::cmd("KEYS").arg(format!("{PREFIX}{{1*")))
        .await
        .expect("KEYS");
    keys.sort();
    assert_eq!(keys, {
        let mut v = k.stock().to_vec();
        v.sort();
        v
    });
    assert_eq!(raw_bucket(&s, 1, 0).await.1["ann"], "ticket-1");
    // K = 5, 12 units: 3, 3, 2, 2, 2.
    s.define_bucketed(2, 12, 5).await.expect("define");
    for b in 0..5 {
        assert_eq!(
            raw_bucket(&s, 2, b).await.0,
            [3, 3, 2, 2, 2][b as usize],
            "bucket {b}"
        );
        assert_eq!(bucket_share(12, 5, b), [3, 3, 2, 2, 2][b as usize]);
    }
    let st = s.restock(2, 6).await.expect("restock");
    assert_eq!((st.units, st.left), (18, 18));
    for b in 0..5 {
        assert_eq!(raw_bucket(&s, 2, b).await.0, [5, 4, 3, 3, 3][b as usize]);
    }
}

/// The figures a stress run saw.
#[derive(Default)]
struct Seen {
    reserved: Vec<String>,
    sold_out: usize,
}

/// Many concurrent users, most of them homed in bucket 0, over K = 4 buckets; every unit is
/// sold once, sold out is only answered when the sale is empty, no user holds twice; then
/// releases go back to the giving bucket and a reconcile restores exact figures.
async fn stress(s: Arc<RedisStore>, sale: SaleId) {
    const K: u32 = 4;
    const UNITS: u64 = 200;
    const TASKS: usize = 24;
    let users = Arc::new(users_by_home(K, &[480, 40, 40, 40]));
    s.define_bucketed(sale, UNITS, K).await.expect("define");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (s, users) = (s.clone(), users.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                for u in users.iter().skip(t).step_by(TASKS) {
                    match s.reserve_as(sale, u, &format!("t-{u}")).await.expect("r") {
                        Reservation::Reserved { .. } => {
                            seen.reserved.push(u.clone());
                            // A second click never gets a second unit.
                            assert_eq!(
                                s.reserve(sale, u).await.expect("r"),
                                Reservation::AlreadyBought
                            );
                        }
                        Reservation::SoldOut => {
                            // Nothing is released meanwhile: sold out means every bucket is
                            // empty, now and from then on.
                            let st = s.stock(sale).await.expect("stock").expect("sale");
                            assert_eq!(st.left, 0, "sold out answered with units left");
                            seen.sold_out += 1;
                        }
                        other => panic!("{u}: {other:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    let mut reserved = Vec::new();
    let mut sold_out = 0;
    for t in tasks {
        let seen = t.await.expect("task");
        reserved.extend(seen.reserved);
        sold_out += seen.sold_out;
    }
    assert_eq!(reserved.len() as u64, UNITS, "every unit sold, none twice");
    assert_eq!(reserved.len() + sold_out, users.len());
    let distinct: HashSet<&String> = reserved.iter().collect();
    assert_eq!(distinct.len(), reserved.len());
    let st = s.stock(sale).await.expect("stock").expect("sale");
    assert_eq!(
        st,
        SaleStock {
            units: UNITS,
            left: 0,
            holders: UNITS
        }
    );
    // Each holder record is in its user's home bucket only, naming a real bucket.
    let mut givers: HashMap<String, u32> = HashMap::new();
    for b in 0..K {
        let (left, holders) = raw_bucket(&s, sale, b).await;
        assert_eq!(left, 0, "bucket {b}");
        for (u, rec) in holders {
            assert_eq!(home_bucket(&u, K), b, "{u} held outside its home");
            assert_eq!(
                rec.rsplit_once('|').map(|r| r.0),
                Some(format!("t-{u}").as_str())
            );
            let g = giver(&rec);
            assert!(g < K);
            assert!(givers.insert(u, g).is_none());
        }
    }
    assert_eq!(givers.len() as u64, UNITS);
    // Homes in bucket 0 outnumber its units: its users were served by the siblings.
    assert!(givers.values().any(|g| *g != 0));
    // Release every other holder: each unit goes back to the bucket that gave it.
    let mut back = [0i64; K as usize];
    let mut kept = Vec::new();
    for (i, u) in reserved.iter().enumerate() {
        if i % 2 == 0 {
            assert!(matches!(
                s.release_if(sale, u, Some(&format!("t-{u}")))
                    .await
                    .expect("rel"),
                Released::Released { .. }
            ));
            back[givers[u] as usize] += 1;
        } else {
            kept.push(Holder {
                user: u.clone(),
                tag: format!("t-{u}"),
            });
        }
    }
    for b in 0..K {
        assert_eq!(
            raw_bucket(&s, sale, b).await.0,
            back[b as usize],
            "bucket {b}"
        );
    }
    // Reconcile to the kept holders: exact figures, holders at home, left split evenly.
    let st = s
        .reconcile_bucketed(sale, UNITS, K, &kept)
        .await
        .expect("reconcile");
    let left = UNITS - kept.len() as u64;
    let want = SaleStock {
        units: UNITS,
        left,
        holders: kept.len() as u64,
    };
    assert_eq!(st, want);
    assert_eq!(s.stock(sale).await.expect("stock"), Some(want));
    for b in 0..K {
        let (l, holders) = raw_bucket(&s, sale, b).await;
        assert_eq!(l as u64, bucket_share(left, K, b));
        for u in holders.keys() {
            assert_eq!(home_bucket(u, K), b);
        }
    }
    s.forget(sale).await.expect("forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_crowd_over_four_buckets_standalone() {
    let (_servers, url) = standalone();
    stress(Arc::new(store(&url).await), 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_crowd_over_four_buckets_on_a_cluster() {
    let (_servers, url) = cluster();
    stress(Arc::new(store(&url).await), 7).await;
}

/// A gateway killed between the home's script (holder record naming a sibling written)
/// and the sibling's decrement: the user holds nothing, the figures are off by one; a
/// reconcile at rest makes them exact, and the user may buy again.
#[tokio::test]
async fn a_crash_between_scripts_is_healed_by_reconcile() {
    const K: u32 = 4;
    let (_servers, url) = cluster();
    let s = store(&url).await;
    s.define_bucketed(3, 8, K).await.expect("define");
    let users = users_by_home(K, &[4, 0, 0, 0]);
    // Two users of home 0 take its two units.
    for u in &users[..2] {
        assert!(matches!(
            s.reserve(3, u).await.expect("r"),
            Reservation::Reserved { .. }
        ));
    }
    assert_eq!(raw_bucket(&s, 3, 0).await.0, 0);
    // The third: the record naming bucket 1 is written, the gateway dies before bucket 1's
    // decrement.
    let victim = &users[2];
    let [_, home_holders] = SaleKeys::new(s.prefix(), 3).bucket(0);
    let _: i64 = s
        .conn()
        .query(
            redis::cmd("HSET")
                .arg(home_holders)
                .arg(victim)
                .arg("t-v|1"),
        )
        .await
        .expect("HSET");
    let st = s.stock(3).await.expect("stock").expect("sale");
    assert_eq!((st.left, st.holders), (6, 3), "one holder without a unit");
    assert_eq!(
        s.reserve(3, victim).await.expect("r"),
        Reservation::AlreadyBought
    );
    // The database knows the first two only.
    let db: Vec<Holder> = users[..2]
        .iter()
        .map(|u| Holder {
            user: u.clone(),
            tag: String::new(),
        })
        .collect();
    let st = s.reconcile_bucketed(3, 8, K, &db).await.expect("rec");
    let want = SaleStock {
        units: 8,
        left: 6,
        holders: 2,
    };
    assert_eq!(st, want);
    assert_eq!(s.stock(3).await.expect("stock"), Some(want));
    assert!(matches!(
        s.reserve(3, victim).await.expect("r"),
        Reservation::Reserved { .. }
    ));
    // A release cut short between the home's script (record deleted) and the giving
    // bucket's (unit back): a unit missing, healed the same way.
    let [sibling_left, _] = SaleKeys::new(s.prefix(), 3).bucket(2);
    let _: i64 = s
        .conn()
        .query(redis::cmd("DECR").arg(sibling_left))
        .await
        .expect("DECR");
    let st = s.stock(3).await.expect("stock").expect("sale");
    assert_eq!((st.left, st.holders), (4, 3), "a unit missing");
    let mut db = db;
    db.push(Holder {
        user: victim.clone(),
        tag: String::new(),
    });
    let st = s.reconcile_bucketed(3, 8, K, &db).await.expect("rec");
    let want = SaleStock {
        units: 8,
        left: 5,
        holders: 3,
    };
    assert_eq!(st, want);
    assert_eq!(s.stock(3).await.expect("stock"), Some(want));
    for b in 0..K {
        assert_eq!(raw_bucket(&s, 3, b).await.0 as u64, bucket_share(5, K, b));
    }
}

/// On a cluster the buckets of a sale, each under its own hash tag, spread over the
/// masters; so do the keys of different sales.
#[tokio::test]
async fn buckets_and_sales_spread_over_the_masters() {
    let (mut servers, url) = cluster();
    let Servers::Cluster(c) = &servers else {
        unreachable!("a cluster")
    };
    let s = store(&url).await;
    s.define_bucketed(11, 64, 8).await.expect("define");
    for sale in 20..28 {
        s.define(sale, 5).await.expect("define");
    }
    // Which node holds each key (SCAN on a node lists its own keys only).
    let mut node_of: HashMap<String, usize> = HashMap::new();
    for (i, node) in c.nodes().iter().enumerate() {
        let mut cursor = "0".to_string();
        loop {
            let r = node
                .cmd(&[
                    "SCAN",
                    &cursor,
                    "MATCH",
                    &format!("{PREFIX}*"),
                    "COUNT",
                    "1000",
                ])
                .expect("SCAN");
            let parts = r.as_array().expect("reply");
            cursor = parts[0].as_str().expect("cursor").to_string();
            for k in parts[1].as_array().expect("keys") {
                node_of.insert(k.as_str().expect("key").to_string(), i);
            }
            if cursor == "0" {
                break;
            }
        }
    }
    let k = SaleKeys::new(PREFIX, 11);
    let bucket_nodes: HashSet<usize> = (0..8).map(|b| node_of[&k.bucket(b)[0]]).collect();
    assert!(bucket_nodes.len() >= 2, "8 buckets on one master");
    let sale_nodes: HashSet<usize> = (20..28)
        .map(|sale| node_of[&SaleKeys::new(PREFIX, sale).units()])
        .collect();
    assert!(sale_nodes.len() >= 2, "8 sales on one master");
    // A sale's own keys of one bucket share a node.
    for b in 0..8 {
        let [l, h] = k.bucket(b);
        if let Some(hn) = node_of.get(&h) {
            assert_eq!(node_of[&l], *hn);
        }
    }
    // A store that starts while a master is down, before the cluster has flagged it failed,
    // still starts, and serves the sales whose keys live on the other masters.
    let Servers::Cluster(c) = &mut servers else {
        unreachable!("a cluster")
    };
    let killed = c.kill_master(0).expect("SIGKILL a master");
    let again = RedisStore::connect(&url, PREFIX, 16)
        .await
        .unwrap_or_else(|e| panic!("connect with node {killed} down: {e}"));
    let live = (20..28)
        .find(|sale| node_of[&SaleKeys::new(PREFIX, *sale).units()] != killed)
        .expect("a sale on a live master");
    let stock = again.stock(live).await.expect("a live master answers");
    assert!(stock.is_some(), "sale {live} is defined: {stock:?}");
}

/// The in-process store takes a bucket count (checked) and keeps one lock per sale.
#[tokio::test]
async fn the_memory_store_accepts_and_checks_buckets() {
    let s = inventory::MemoryStore::new();
    assert!(matches!(
        s.define_bucketed(1, 10, 0).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.reconcile_bucketed(1, 10, STOCK_BUCKETS_MAX + 1, &[])
            .await,
        Err(Error::Invalid(_))
    ));
    let st = s.define_bucketed(1, 10, 4).await.expect("define");
    assert_eq!((st.units, st.left), (10, 10));
    let holders = [Holder {
        user: "ann".into(),
        tag: "t".into(),
    }];
    let st = s
        .reconcile_bucketed(1, 10, STOCK_BUCKETS_MAX, &holders)
        .await
        .expect("reconcile");
    assert_eq!((st.units, st.left, st.holders), (10, 9, 1));
}

/// Reserves and releases interleaved by many tasks (each user driven by one task, as a
/// purchase's own release follows its reserve): at every quiet point the units are
/// conserved, no bucket is below zero, and every holder record sits in its home bucket.
async fn churn(s: Arc<RedisStore>, sale: SaleId) {
    const K: u32 = 4;
    const UNITS: u64 = 40;
    const TASKS: usize = 16;
    const ROUNDS: usize = 30;
    let users = Arc::new(users_by_home(K, &[120, 10, 10, 20]));
    s.define_bucketed(sale, UNITS, K).await.expect("define");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (s, users) = (s.clone(), users.clone());
            tokio::spawn(async move {
                let mine: Vec<&String> = users.iter().skip(t).step_by(TASKS).collect();
                let mut held = 0u64;
                for round in 0..ROUNDS {
                    for (i, u) in mine.iter().enumerate() {
                        let tag = format!("t-{round}");
                        if (i + round) % 3 == 0 {
                            if let Released::Released { .. } =
                                s.release_if(sale, u, None).await.expect("rel")
                            {
                                held -= 1;
                            }
                        } else if let Reservation::Reserved { .. } =
                            s.reserve_as(sale, u, &tag).await.expect("r")
                        {
                            held += 1;
                        }
                    }
                }
                held
            })
        })
        .collect();
    let mut held = 0;
    for t in tasks {
        held += t.await.expect("task");
    }
    let st = s.stock(sale).await.expect("stock").expect("sale");
    assert_eq!(st.holders, held, "holders as the tasks counted them");
    assert_eq!(st.left + st.holders, UNITS, "units conserved: {st:?}");
    for b in 0..K {
        let (left, holders) = raw_bucket(&s, sale, b).await;
        assert!(left >= 0, "bucket {b} left {left}");
        for (u, rec) in holders {
            assert_eq!(home_bucket(&u, K), b);
            assert!(giver(&rec) < K);
        }
    }
    s.forget(sale).await.expect("forget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserves_and_releases_interleaved_conserve_units() {
    for (_servers, url) in [standalone(), cluster()] {
        churn(Arc::new(store(&url).await), 5).await;
    }
}
