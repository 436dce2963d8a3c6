//! The CI-sized flash crowd with the stock on a scratch 3-master Redis Cluster and the
//! run's sale split over three stock buckets (`--inventory redis+cluster://… --stock-buckets
//! 3`): every unit sold once, and the auditor, reading the buckets raw, passes at rest.

mod support;

use std::time::Duration;

use inventory::keys::SaleKeys;
use inventory::{RedisStore, StockStore};
use load_tests::audit::{AuditInput, audit_redis};
use load_tests::crowd::{self, Target};
use load_tests::scenario::Scenario;
use load_tests::system::{AllInOne, SystemOptions};

/// Longest wait for the workers to drain the queue after the crowd.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// The run's stock buckets.
const BUCKETS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_crowd_on_a_cluster_in_three_buckets_passes_the_raw_audit() {
    let cluster = redis_kit::RedisCluster::start(3, 0).expect("a 3-master cluster starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let system = AllInOne::start(
        dir.path(),
        SystemOptions {
            inventory: Some(cluster.url()),
            ..SystemOptions::default()
        },
    )
    .await
    .expect("the all-in-one system starts");
    let scenario = Scenario {
        stock_buckets: BUCKETS,
        ..Scenario::preset("ci").expect("the ci preset")
    };
    let outcome = crowd::run(
        scenario.clone(),
        Target {
            addr: system.addr,
            admin_secret: system.admin_secret.clone(),
            load_test_secret: system.load_test_secret.clone(),
            label: "test".into(),
        },
        false,
    )
    .await
    .expect("the crowd runs");
    let r = &outcome.record;
    assert_eq!(r.accepted, scenario.units, "every unit sold once");
    assert_eq!(r.ordered, scenario.units);
    assert_eq!(r.bots_accepted, 0);
    assert!(r.outcomes.get("sold_out").copied().unwrap_or(0) > 0);
    assert_eq!(
        system
            .db
            .sale(r.sale_id)
            .await
            .expect("read")
            .expect("the sale")
            .stock_buckets,
        BUCKETS
    );

    support::wait_for_rest(&system, DRAIN_WAIT).await;
    let redis = RedisStore::connect(&cluster.url(), &SystemOptions::redis_prefix(), 2)
        .await
        .expect("the auditor connects");
    assert_eq!(redis.buckets(r.sale_id).await.expect("K"), Some(BUCKETS));
    // The units really are spread: every bucket's own `left` key exists.
    let keys = SaleKeys::new(redis.prefix(), r.sale_id);
    for b in 0..BUCKETS {
        let left: Option<i64> = redis
            .conn()
            .query(redis::cmd("GET").arg(&keys.bucket(b)[0]))
            .await
            .expect("GET");
        assert!(left.is_some(), "bucket {b}");
    }
    let input = AuditInput {
        db: system.db.clone(),
        store: Some(system.state.inventory.store_arc()),
        sales: Some(vec![r.sale_id]),
        tickets: outcome.tickets.clone(),
        at_rest: true,
        now_ms: queue::Clock::now_ms(&queue::SystemClock),
    };
    let report = audit_redis(&input, &redis).await.expect("the audit runs");
    assert!(report.passed(), "{report:#?}");
    let st = redis.stock(r.sale_id).await.expect("stock").expect("sale");
    assert_eq!(st.units, scenario.units);
    assert_eq!(st.left + st.holders, scenario.units);
    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
}
