//! Reserve throughput of one hot sale on a scratch 3-master Redis Cluster (redis-kit), with
//! its stock in K = 1 bucket and in K = 3 buckets: `TASKS` concurrent reservers, each a new
//! user per call, for `MEASURE`; one JSON line per K. The units never run out during the
//! measurement (every reserve takes one).
//!
//! `cargo run --release -p inventory --example bucket_bench` (needs Debian's redis-server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inventory::{RedisStore, Reservation, StockStore};

/// Concurrent reservers.
const TASKS: usize = 64;
/// How long each K is measured.
const MEASURE: Duration = Duration::from_secs(5);
/// Units of the sale (more than the reserves the measurement can make).
const UNITS: u64 = 5_000_000;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = redis_kit::RedisCluster::start(3, 0)?;
    for (sale, k) in [(1u64, 1u32), (3, 3), (11, 1), (33, 3)] {
        let store = Arc::new(RedisStore::connect(&cluster.url(), "bench:", 1).await?);
        store.define_bucketed(sale, UNITS, k).await?;
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + MEASURE;
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (store, done) = (store.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < until {
                        let r = store.reserve(sale, &format!("u-{t}-{i}")).await;
                        assert!(matches!(r, Ok(Reservation::Reserved { .. })), "{r:?}");
                        i += 1;
                    }
                    done.fetch_add(i, Ordering::Relaxed);
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let st = store.stock(sale).await?.ok_or("no sale")?;
        assert_eq!(st.holders, n);
        assert_eq!(st.left + st.holders, UNITS);
        println!(
            "{{\"buckets\": {k}, \"tasks\": {TASKS}, \"reserves\": {n}, \"secs\": {secs:.2}, \"reserves_per_s\": {:.0}}}",
            n as f64 / secs
        );
        store.forget(sale).await?;
    }
    Ok(())
}
