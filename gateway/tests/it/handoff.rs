//! A purchase whose request is cut short mid-commit still ends whole (issue 19: the commit
//! runs inside the request's future, and the request's drop hands the rest of it to a task
//! of its own). Each test holds one purchase at one await point of its commit, with a gate
//! placed after the step's effect (the token spent, the unit reserved) or before the
//! publish, then drops the request there and opens the gate: the purchase must end with
//! the token spent and the unit queued under a recorded ticket, or with both given back.
//! Without the handoff, each of these tests fails: the drop would end the commit where it
//! stood (a token spent for nothing, a unit held by nobody, a message with no ticket).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::config::ServeLimits;
use gateway::ledger::{Caps, Claimant, LedgerResult, MemoryLedger, TokenLedger};
use inventory::{Holder, MemoryStore, Released, Reservation, SaleId, SaleStock, StockStore};
use queue::{Engine, FetchOptions, Queue, StartAt};
use serde_json::json;
use tower::ServiceExt;

use super::{GatedQueue, TestApp, test_system_on, test_throttle, token_of};

/// Units of the test sale.
const UNITS: u64 = 5;
/// How long a test waits for the cut-short purchase to end.
const END_WAIT: Duration = Duration::from_secs(60);

/// Holds a step when armed: it says it has arrived (`entered`), then waits for `go`.
#[derive(Debug)]
struct Gate {
    armed: AtomicBool,
    entered: tokio::sync::Semaphore,
    go: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            armed: AtomicBool::new(false),
            entered: tokio::sync::Semaphore::new(0),
            go: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    async fn pass(&self) {
        if self.armed.load(Ordering::SeqCst) {
            self.entered.add_permits(1);
            let _ = self.go.acquire().await.map(|p| p.forget());
        }
    }
}

/// An in-process ledger whose spends are held at the gate after the token is spent (as a
/// Redis ledger's answer may be on its way when the request is dropped).
#[derive(Debug, Default)]
struct GatedLedger {
    inner: MemoryLedger,
    gate: Gate,
}

#[async_trait::async_trait]
impl TokenLedger for GatedLedger {
    async fn issue(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        caps: Caps,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        self.inner
            .issue(sale, who, nonce, expires_at_ms, caps, now_ms)
            .await
    }
    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        let spent = self.inner.spend(sale, holder, nonce, now_ms).await;
        self.gate.pass().await;
        spent
    }
    async fn restore(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        self.inner
            .restore(sale, who, nonce, expires_at_ms, now_ms)
            .await
    }
    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        self.inner.live(sale, now_ms).await
    }
    async fn room(&self, sale: u64, who: Claimant, caps: Caps, now_ms: u64) -> LedgerResult<bool> {
        self.inner.room(sale, who, caps, now_ms).await
    }
}

/// An in-process stock store whose reservations are held at the gate after the unit is
/// reserved.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    gate: Gate,
}

#[async_trait::async_trait]
impl StockStore for GatedStore {
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
        let reserved = self.inner.reserve_up_to(sale, user, tag, limit).await;
        self.gate.pass().await;
        reserved
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

/// Where the purchase is held when its request is dropped.
#[derive(Debug, Clone, Copy)]
enum HeldAt {
    /// Token spent, its answer not yet back.
    Spend,
    /// Unit reserved, its answer not yet back.
    Reserve,
    /// Waiting for the queue's confirm (the publisher's call is held before the queue).
    Publish,
}

/// A gateway (oneshot transport) on a gated ledger, stock store and queue; only the gate
/// of `held_at` holds (the queue's is always on: it is opened in advance otherwise).
struct Held {
    t: TestApp,
    ledger: Arc<GatedLedger>,
    store: Arc<GatedStore>,
    queue: Arc<GatedQueue>,
    held_at: HeldAt,
}

impl Held {
    async fn new(held_at: HeldAt, limits: Option<ServeLimits>) -> Held {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Engine::open(dir.path(), queue::Config::default()).expect("engine"));
        let queue = Arc::new(GatedQueue {
            inner: engine.clone(),
            entered: tokio::sync::Semaphore::new(0),
            go: tokio::sync::Semaphore::new(0),
            fail: AtomicBool::new(false),
            ambiguous: AtomicBool::new(false),
            ambiguous_once: AtomicBool::new(false),
            not_sent: AtomicBool::new(false),
        });
        let ledger = Arc::new(GatedLedger::default());
        let store = Arc::new(GatedStore::default());
        let mut t = test_system_on(
            queue.clone(),
            engine,
            dir,
            Box::new(store.clone()),
            Some(ledger.clone()),
            test_throttle(),
            None,
            |config| config.gateway.load_test_secret = Some(super::LOAD_TEST.into()),
        )
        .await;
        if let Some(limits) = limits {
            t.limits = limits;
        }
        match held_at {
            HeldAt::Spend => ledger.gate.armed.store(true, Ordering::SeqCst),
            HeldAt::Reserve => store.gate.armed.store(true, Ordering::SeqCst),
            HeldAt::Publish => {}
        }
        if !matches!(held_at, HeldAt::Publish) {
            queue.go.add_permits(1000);
        }
        Held {
            t,
            ledger,
            store,
            queue,
            held_at,
        }
    }

    fn purchase_request(cookie: &str, token: &str) -> Request<Body> {
        Request::post("/api/sales/1/purchase")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, cookie)
            .body(Body::from(json!({ "token": token }).to_string()))
            .expect("request")
    }

    /// Waits until the purchase arrives at its gate.
    async fn arrived(&self) {
        let entered = match self.held_at {
            HeldAt::Spend => &self.ledger.gate.entered,
            HeldAt::Reserve => &self.store.gate.entered,
            HeldAt::Publish => &self.queue.entered,
        };
        entered.acquire().await.expect("entered").forget();
    }

    /// Opens the gate the purchase waits at.
    fn open(&self) {
        let go = match self.held_at {
            HeldAt::Spend => &self.ledger.gate.go,
            HeldAt::Reserve => &self.store.gate.go,
            HeldAt::Publish => &self.queue.go,
        };
        go.add_permits(1000);
    }

    /// Starts a purchase with `token` and drops its request once the purchase is held at
    /// its gate; opens the gate; waits until no purchase is running.
    async fn cut_short(&self, cookie: &str, token: &str) {
        let app = gateway::front::app_with_limits(self.t.state.clone(), self.t.limits);
        let call = app.oneshot(Self::purchase_request(cookie, token));
        tokio::select! {
            answered = call => panic!(
                "the purchase answered while held at its gate: {:?}",
                answered.map(|r| r.status())
            ),
            () = self.arrived() => {}
        }
        // The request's future is gone (dropped with the `select!`); its purchase is not.
        assert_eq!(
            self.t.state.commits.running(),
            1,
            "the purchase goes on after its request was dropped at {:?}",
            self.held_at
        );
        self.open();
        assert!(
            self.t.state.commits.drain(END_WAIT).await,
            "the purchase never ended"
        );
    }

    /// The ids of the messages in the orders topic.
    async fn queued_ids(&self) -> Vec<u128> {
        let engine = &self.t.engine;
        engine
            .create_group("orders", "audit", StartAt::Earliest)
            .await
            .expect("group");
        let mut ids = Vec::new();
        loop {
            let ds = engine
                .fetch(
                    "orders",
                    "audit",
                    FetchOptions {
                        max_messages: 100,
                        lease_ms: Some(60_000),
                        wait_ms: 0,
                    },
                )
                .await
                .expect("fetch");
            if ds.is_empty() {
                return ids;
            }
            ids.extend(
                ds.iter()
                    .map(|d| d.id.expect("a purchase has its ticket as id")),
            );
        }
    }

    async fn stock(&self) -> Option<(u64, u64)> {
        let stock = self
            .t
            .state
            .inventory
            .store()
            .stock(1)
            .await
            .expect("stock");
        stock.map(|s| (s.left, s.holders))
    }

    /// Buys again with `token`; the status and error code.
    async fn again(&self, cookie: &str, token: &str) -> (StatusCode, Option<String>) {
        let (s, _, v) = self.t.call(Self::purchase_request(cookie, token)).await;
        (s, v["error"].as_str().map(str::to_string))
    }
}

/// The purchase ended queued: one unit held, its message in the queue under a ticket the
/// gateway recorded, and its token spent.
async fn assert_queued(h: &Held, cookie: &str, token: &str) {
    assert_eq!(h.stock().await, Some((UNITS - 1, 1)), "one unit held");
    let ids = h.queued_ids().await;
    assert_eq!(ids.len(), 1, "one message queued: {ids:?}");
    let ticket = uuid::Uuid::from_u128(ids[0]).to_string();
    let (s, _, v) =
        h.t.call(
            Request::get(format!("/api/tickets/{ticket}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("queued")),
        "the ticket was recorded: {v}"
    );
    assert_eq!(
        h.again(cookie, token).await,
        (StatusCode::FORBIDDEN, Some("bad_token".to_string())),
        "the token was spent"
    );
}

async fn cut_short_at(held_at: HeldAt) {
    let h = Held::new(held_at, None).await;
    h.t.create_sale(1, UNITS, 0).await;
    let ann = h.t.login("ann").await;
    let (_, v) = h.t.token_load_test(&ann, 1).await;
    let token = token_of(&v);
    h.cut_short(&ann, &token).await;
    assert_queued(&h, &ann, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_dropped_after_its_token_spend_still_ends_queued() {
    cut_short_at(HeldAt::Spend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_dropped_after_its_reservation_still_ends_queued() {
    cut_short_at(HeldAt::Reserve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_dropped_while_publishing_still_ends_queued() {
    cut_short_at(HeldAt::Publish).await;
}

/// Dropped while publishing, and the publish is then refused for certain: the purchase is
/// rolled back whole, its unit released and its token live again (it buys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_dropped_while_publishing_is_rolled_back_whole_if_refused() {
    let h = Held::new(HeldAt::Publish, None).await;
    h.t.create_sale(1, UNITS, 0).await;
    let ann = h.t.login("ann").await;
    let (_, v) = h.t.token_load_test(&ann, 1).await;
    let token = token_of(&v);
    h.queue.fail.store(true, Ordering::SeqCst);
    h.cut_short(&ann, &token).await;
    assert_eq!(h.stock().await, Some((UNITS, 0)), "the unit is back");
    assert!(h.queued_ids().await.is_empty(), "nothing queued");
    h.queue.fail.store(false, Ordering::SeqCst);
    let (s, error) = h.again(&ann, &token).await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "the token was given back: {error:?}"
    );
    assert_eq!(h.stock().await, Some((UNITS - 1, 1)));
}

/// The front service's request timeout drops the handler while its purchase waits for the
/// queue (here the timeout is shorter than the purchase wait): the buyer gets 503
/// `timeout`, and the purchase still ends queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_past_the_request_timeout_still_ends_queued() {
    let limits = ServeLimits {
        request_timeout_ms: 200,
        ..ServeLimits::default()
    };
    let h = Held::new(HeldAt::Publish, Some(limits)).await;
    h.t.create_sale(1, UNITS, 0).await;
    let ann = h.t.login("ann").await;
    let (_, v) = h.t.token_load_test(&ann, 1).await;
    let token = token_of(&v);
    // The queue's gate stays shut until the timeout has answered.
    let (s, _, v) = h.t.call(Held::purchase_request(&ann, &token)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("timeout")),
        "{v}"
    );
    h.arrived().await;
    assert_eq!(h.t.state.commits.running(), 1, "the purchase goes on");
    h.open();
    assert!(
        h.t.state.commits.drain(END_WAIT).await,
        "the purchase ended"
    );
    assert_queued(&h, &ann, &token).await;
}
