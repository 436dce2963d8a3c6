//! Integration tests of the order workers. Every database test runs on SQLite (a temporary
//! file) and on PostgreSQL (a fresh database on 127.0.0.1:5432; under `CI` it must answer).

mod batch;
mod by_user;
mod cancel;
mod db;
mod flags;
mod heartbeat;
mod limits;
mod process;
mod sale_control;
mod shards;
mod worker;

use order_worker::db::{DbOptions, NewSale, OrdersDb};
use order_worker::purchase::PurchaseMessage;

/// Runs `$body` (an async fn taking an `OrdersDb`) once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = order_worker::testing::sqlite(dir.path(), &Default::default()).await;
                super::$body(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((db, _scratch)) =
                    order_worker::testing::postgres(&Default::default()).await
                else {
                    return;
                };
                super::$body(db.clone()).await;
                db.close().await;
            }
        }
    };
}

pub fn purchase(ticket: &str, sale: u64, user: &str) -> PurchaseMessage {
    PurchaseMessage {
        ticket: ticket.to_string(),
        sale,
        user: user.to_string(),
        price_cents: 100,
        accepted_at_ms: 1,
    }
}

pub async fn sale(db: &OrdersDb, id: u64, units: u64, pay_window_ms: u64) {
    sale_with_limit(db, id, units, pay_window_ms, None).await;
}

/// [`sale`] with a per-person limit (`None`: the default of one).
pub async fn sale_with_limit(
    db: &OrdersDb,
    id: u64,
    units: u64,
    pay_window_ms: u64,
    per_user_limit: Option<u32>,
) {
    db.create_sale(
        &NewSale {
            id,
            name: format!("sale {id}"),
            price_cents: 100,
            units,
            starts_at_ms: 0,
            pay_window_ms: Some(pay_window_ms),
            ends_at_ms: None,
            token_factor: None,
            per_user_limit,
            stock_buckets: None,
        },
        0,
    )
    .await
    .expect("create sale");
}

#[allow(dead_code)]
pub fn options() -> DbOptions {
    DbOptions::default()
}

// ----------------------------------------------------------------------------------------
// Shared by the queue-backed tests (worker, cancel, process).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use order_worker::canceller::{Canceller, CancellerConfig, CancellerMetrics};
use order_worker::worker::{OrderWorker, WorkerConfig, WorkerMetrics};
use queue::{Engine, ManualClock, Message, Queue};

/// Where the tests' manual clocks start (a plausible "now", ms since the Unix epoch).
pub const T0: u64 = 1_700_000_000_000;

/// Longest any test waits for a condition: far above what it needs, so only a hang fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Most steps a drain may take before it is declared stuck.
pub const DRAIN_STEPS_MAX: usize = 1_000;

/// Polls `cond` until it holds; panics (naming `what`) if it still does not after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        // The poll interval of the condition, not a stand-in for it.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An embedded queue in `dir` that reads the time from `clock` and runs no maintenance
/// thread (leases end and delays fire as `clock` moves, at the next fetch or `tick`).
pub fn engine(dir: &std::path::Path, clock: &ManualClock) -> Arc<Engine> {
    let config = queue::Config {
        clock: Arc::new(clock.clone()),
        maintenance_interval_ms: None,
        ..queue::Config::default()
    };
    Arc::new(Engine::open(dir, config).expect("open the queue"))
}

/// The JSON body the gateway publishes for `p`.
pub fn body(p: &PurchaseMessage) -> Vec<u8> {
    serde_json::to_vec(p).expect("encode a purchase")
}

/// Publishes raw bodies to the orders topic, without message ids (every copy is stored),
/// after creating the workers' group (as a deployment does before the first purchase).
pub async fn publish_raw(q: &dyn Queue, bodies: Vec<Vec<u8>>) {
    q.create_group(
        order_worker::purchase::ORDERS_TOPIC,
        order_worker::purchase::WORKERS_GROUP,
        queue::StartAt::Earliest,
    )
    .await
    .expect("create the workers' group");
    for chunk in bodies.chunks(queue::limits::BATCH_MESSAGES_MAX) {
        let messages: Vec<Message> = chunk.iter().map(|b| Message::new(b.clone())).collect();
        let confirms = q
            .publish_batch(order_worker::purchase::ORDERS_TOPIC, messages)
            .await
            .expect("publish purchases");
        assert!(confirms.iter().all(|c| !c.duplicate), "no id, no duplicate");
    }
}

/// Publishes purchases to the orders topic, without message ids.
pub async fn publish(q: &dyn Queue, purchases: &[PurchaseMessage]) {
    publish_raw(q, purchases.iter().map(body).collect()).await;
}

/// The lag of `group` on `topic` (the group must exist).
pub async fn lag(q: &dyn Queue, topic: &str, group: &str) -> u64 {
    let stats = q.stats(topic).await.expect("topic stats");
    stats
        .groups
        .iter()
        .find(|g| g.name == group)
        .unwrap_or_else(|| panic!("no group {group} on {topic}"))
        .lag
}

/// The lag of the order workers' group.
pub async fn orders_lag(q: &dyn Queue) -> u64 {
    lag(
        q,
        order_worker::purchase::ORDERS_TOPIC,
        order_worker::purchase::WORKERS_GROUP,
    )
    .await
}

/// `(published, duplicates)` of a topic since the engine opened ((0, 0) if it does not
/// exist yet).
pub async fn published(q: &dyn Queue, topic: &str) -> (u64, u64) {
    let topics = q.topics().await.expect("topics");
    if !topics.iter().any(|t| t == topic) {
        return (0, 0);
    }
    let s = q.stats(topic).await.expect("topic stats");
    (s.published, s.duplicates)
}

/// Every retained message of `topic` (at most `max`), in offset order.
pub async fn peek_all(q: &dyn Queue, topic: &str, max: usize) -> Vec<queue::Peeked> {
    let mut out: Vec<queue::Peeked> = Vec::new();
    loop {
        let from = out.last().map_or(0, |p| p.offset + 1);
        let page = q
            .peek(topic, from, queue::limits::PEEK_MESSAGES_MAX)
            .await
            .expect("peek");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
        assert!(out.len() <= max, "more than {max} messages in {topic}");
    }
}

/// The pay-by messages stored in the deadlines topic: (message id, body).
pub async fn stored_deadlines(q: &dyn Queue, max: usize) -> Vec<(u128, order_worker::Deadline)> {
    let topics = q.topics().await.expect("topics");
    if !topics
        .iter()
        .any(|t| t == order_worker::purchase::DEADLINES_TOPIC)
    {
        return Vec::new();
    }
    peek_all(q, order_worker::purchase::DEADLINES_TOPIC, max)
        .await
        .into_iter()
        .map(|p| {
            let id = p.id.expect("a pay-by message has an id");
            let d = order_worker::Deadline::decode(&p.payload).expect("a pay-by body");
            (id, d)
        })
        .collect()
}

/// The message id a pay-by message of `order_id` carries.
pub fn deadline_id(order_id: &str) -> u128 {
    uuid::Uuid::parse_str(order_id)
        .expect("an order id is a UUID")
        .as_u128()
}

/// A worker that never waits in a fetch (a step with nothing ready returns at once).
pub fn worker(
    db: &OrdersDb,
    q: &Arc<dyn Queue>,
    inventory: Option<Arc<inventory::Inventory>>,
    clock: &ManualClock,
    batch_max: usize,
) -> OrderWorker {
    OrderWorker::new(
        db.clone(),
        q.clone(),
        inventory,
        WorkerConfig {
            batch_max,
            wait_ms: 0,
            ..WorkerConfig::default()
        },
        Arc::new(WorkerMetrics::default()),
        Arc::new(clock.clone()),
    )
}

/// A canceller that never waits in a fetch.
pub fn canceller(
    db: &OrdersDb,
    q: &Arc<dyn Queue>,
    inventory: Option<Arc<inventory::Inventory>>,
    clock: &ManualClock,
    batch_max: usize,
) -> Canceller {
    Canceller::new(
        db.clone(),
        q.clone(),
        inventory,
        CancellerConfig {
            batch_max,
            wait_ms: 0,
            ..CancellerConfig::default()
        },
        Arc::new(CancellerMetrics::default()),
        Arc::new(clock.clone()),
    )
}

/// Steps `w` until the orders group has nothing left (bounded); returns the messages it
/// fetched.
pub async fn drain(w: &OrderWorker, q: &dyn Queue) -> usize {
    let mut fetched = 0;
    for _ in 0..DRAIN_STEPS_MAX {
        fetched += w.step().await.expect("worker step");
        if orders_lag(q).await == 0 {
            return fetched;
        }
    }
    panic!(
        "the orders group still lags by {} after {DRAIN_STEPS_MAX} steps",
        orders_lag(q).await
    );
}

/// Steps `c` until a step fetches nothing (bounded); returns the messages it fetched.
pub async fn drain_deadlines(c: &Canceller) -> usize {
    let mut fetched = 0;
    for _ in 0..DRAIN_STEPS_MAX {
        let n = c.step().await.expect("canceller step");
        if n == 0 {
            return fetched;
        }
        fetched += n;
    }
    panic!("the canceller still fetches after {DRAIN_STEPS_MAX} steps");
}

/// A stock store over `units` of `sale` behind an inventory whose sold-out flag lasts an
/// hour unless a release clears it (so only the code under test clears it).
pub async fn inventory_over(
    sale: u64,
    units: u64,
) -> (Arc<inventory::MemoryStore>, Arc<inventory::Inventory>) {
    use inventory::StockStore;
    let store = Arc::new(inventory::MemoryStore::new());
    store.define(sale, units).await.expect("define stock");
    let inv = Arc::new(inventory::Inventory::new(
        Box::new(store.clone()),
        Duration::from_secs(3600),
    ));
    (store, inv)
}

/// The store's figures of `sale`.
pub async fn stock(store: &inventory::MemoryStore, sale: u64) -> inventory::SaleStock {
    use inventory::StockStore;
    store
        .stock(sale)
        .await
        .expect("stock")
        .expect("sale defined")
}

/// Invariant 4, conservation: in the database every unit is either left or held by an
/// active order; in the store, either left or held by a holder.
pub async fn assert_conserved(db: &OrdersDb, sale: u64, store: Option<&inventory::MemoryStore>) {
    let s = db.sale(sale).await.expect("sale").expect("sale exists");
    let c = db.order_counts(sale).await.expect("order counts");
    assert_eq!(
        s.units_left + c.active(),
        s.units,
        "database: units = units left + active orders ({c:?}, {} left)",
        s.units_left
    );
    let limit = s.per_user_limit as usize;
    let holders = db.active_holders(sale).await.expect("holders");
    let mut per_user: HashMap<&String, usize> = HashMap::new();
    for h in &holders {
        *per_user.entry(h).or_default() += 1;
    }
    assert!(
        per_user.values().all(|n| *n <= limit),
        "at most {limit} active orders per user"
    );
    if let Some(store) = store {
        let st = stock(store, sale).await;
        assert_eq!(
            st.left + st.holders,
            st.units,
            "store: units = left + holders ({st:?})"
        );
    }
}
