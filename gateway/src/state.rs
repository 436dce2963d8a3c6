//! What the handlers share: [`AppState`] and the small shared structures it holds
//! ([`Commits`], [`LineProgress`], the reconciliation state, the held tickets, the pages'
//! stock cache).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use inventory::{Inventory, SaleStock};
use queue::Queue;

use crate::captcha::CaptchaStore;
use crate::config::GatewayConfig;
use crate::error::{ApiError, ApiResult};
use crate::ledger::{MemoryLedger, TokenLedger};
use crate::metrics::{CrewMetrics, GatewayMetrics};
use crate::publisher::Publisher;
use crate::sales::{Catalogue, Sale};
use crate::session::{AdminKey, SessionKey};
use crate::throttle::{QuotaClock, Throttle, Throttled};
use crate::tickets::{Done, ReceiptKey, TicketBook};
use crate::token::TokenKey;
use order_worker::OrdersDb;

/// Everything the handlers share.
pub struct AppState {
    /// The clock every handler reads (the system clock in production, a manual one in
    /// tests), the same trait the queue and the order workers take.
    pub clock: Arc<dyn queue::Clock>,
    /// Settings.
    pub config: GatewayConfig,
    /// Sales.
    pub catalogue: Catalogue,
    /// Stock (shared with the order workers of this process, if any).
    pub inventory: Arc<Inventory>,
    /// The orders database: sales, orders, outcomes of tickets.
    pub db: OrdersDb,
    /// The request path's own small pool on the same database (tickets, orders, payment,
    /// the order page), so a flood of those never takes the connections the order workers
    /// of this process need ([`AppState::new`] shares `db` until the system opens it).
    pub read_db: OrdersDb,
    /// Reconciliation of the stock store with the database at rest.
    pub reconciler: Reconciler,
    /// Tickets of purchases in the orders topic's dead letters.
    pub held: HeldTickets,
    /// The queue, embedded or remote.
    pub queue: Arc<dyn Queue>,
    /// Publishes purchases to the orders topic in batches.
    pub publisher: Publisher,
    /// Session signing key.
    pub sessions: SessionKey,
    /// Token signing key.
    pub tokens: TokenKey,
    /// Live purchase tokens per sale: the token budget and the single-use rule.
    pub ledger: Arc<dyn TokenLedger>,
    /// Captchas.
    pub captchas: CaptchaStore,
    /// Rate limits.
    pub throttle: Throttle<QuotaClock>,
    /// Accepted purchases.
    pub tickets: TicketBook,
    /// Signs the receipts of `202`s, so any gateway sharing the session secret answers for
    /// a waiting ticket.
    pub receipts: ReceiptKey,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    /// What `/metrics` shows (reads `metrics`, the reconciler's resets and the crew's).
    pub exposition: crate::metrics::Exposition,
    /// The workers' progress, for places in line.
    pub line: LineProgress,
    /// Purchases past their reservation, still running.
    pub commits: Commits,
    /// The dashboard's live figures and their history.
    pub live: crate::dashboard::Live,
    /// Units left per sale for the storefront pages, reused for a second.
    pub stock_cache: StockCache,
    /// Signs admin cookies and CSRF tokens.
    pub admin_key: AdminKey,
    /// The global budget of admin-secret guesses (sign-in form and bearer).
    pub admin_guesses: crate::guard::AuthBudget,
}

/// Purchases past their reservation whose task is still running (its request may be gone),
/// counted so that shutdown can wait for them before it closes the queue: a purchase cut
/// off between its reservation and its enqueue would hold a unit until reconciliation.
#[derive(Debug, Default)]
pub struct Commits {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running purchase, counted in [`Commits`] until dropped.
#[derive(Debug)]
pub struct Running(Shared);

impl Running {
    /// Counts one more running purchase of `state`.
    pub fn enter(state: &Shared) -> Running {
        state.commits.running.fetch_add(1, Ordering::AcqRel);
        Running(state.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.commits.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.commits.idle.notify_waiters();
        }
    }
}

impl Commits {
    /// Purchases running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until no purchase is running, at most `timeout`; whether none is.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a notification in between is kept.
            idle.as_mut().enable();
            if self.running() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.running() == 0;
            }
        }
    }
}

/// Why [`AppState::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The throttle configuration is invalid.
    #[error("throttle: {0}")]
    Throttle(crate::throttle::ThrottleConfigError),
    /// Not called inside a Tokio runtime (the publisher task needs one).
    #[error("the gateway state must be built inside a Tokio runtime")]
    NoRuntime,
}

impl AppState {
    /// State around these parts, with an in-process token ledger (replace `ledger` to
    /// share one in Redis), empty captcha, ticket and catalogue tables (load the catalogue
    /// with [`crate::sync::load_catalogue`]), zeroed metrics, and the purchase publisher task
    /// started on the current Tokio runtime, on the system clock (see
    /// [`AppState::with_clock`]). Fails on an invalid throttle configuration or outside a
    /// runtime.
    pub fn new(
        config: GatewayConfig,
        inventory: Inventory,
        queue: Arc<dyn Queue>,
        db: OrdersDb,
        sessions: SessionKey,
        tokens: TokenKey,
        throttle: crate::throttle::ThrottleConfig,
    ) -> Result<AppState, StateError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StateError::NoRuntime)?;
        let publisher = Publisher::spawn_on(&runtime, queue.clone(), &config.orders_topic);
        let admin_key = AdminKey::derive(&sessions, &config.admin_secret);
        let captchas = if config.reveal_captcha_answers {
            CaptchaStore::revealing()
        } else {
            CaptchaStore::new()
        };
        let tickets = TicketBook::with_limit(config.tickets_max);
        let receipts = ReceiptKey::derive(sessions.as_bytes());
        let metrics = Arc::new(GatewayMetrics::default());
        let reconciler = Reconciler::default();
        let exposition =
            crate::metrics::Exposition::new(metrics.clone(), reconciler.resets.clone());
        let clock: Arc<dyn queue::Clock> = Arc::new(queue::SystemClock);
        let throttle = Throttle::with_clock(throttle, QuotaClock(clock.clone()))
            .map_err(StateError::Throttle)?;
        Ok(AppState {
            clock,
            publisher,
            config,
            catalogue: Catalogue::default(),
            inventory: Arc::new(inventory),
            read_db: db.clone(),
            db,
            reconciler,
            held: HeldTickets::default(),
            queue,
            sessions,
            tokens,
            ledger: Arc::new(MemoryLedger::new()),
            captchas,
            throttle,
            tickets,
            receipts,
            metrics,
            exposition,
            line: LineProgress::default(),
            commits: Commits::default(),
            live: crate::dashboard::Live::default(),
            stock_cache: StockCache::default(),
            admin_key,
            admin_guesses: crate::guard::AuthBudget::default(),
        })
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The state as the handlers hold it.
pub type Shared = Arc<AppState>;

/// How long a place-in-line figure may use the workers' progress as last read.
pub const LINE_REFRESH_MS: u64 = 100;
/// Longest wait for the workers' progress; past it the position is left out (`null`).
pub const LINE_STATS_TIMEOUT_MS: u64 = 200;

/// The workers' progress through the orders topic (their group's marks, per partition when
/// the topic has several, or the log's start before they have a group), re-read from the
/// queue at most every [`LINE_REFRESH_MS`]: a flood of purchases does not turn into a flood
/// of `stats` calls, which lock the topic the purchases append to.
#[derive(Debug, Default)]
pub struct LineProgress {
    /// What the workers have finished. A small lock: read once per accepted purchase,
    /// written at most every [`LINE_REFRESH_MS`] and by each housekeeping round.
    done: Mutex<Done>,
    pub(crate) read_at_ms: AtomicU64,
}

impl LineProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Done> {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The workers have finished what `done` says (no mark ever goes back).
    pub fn advance(&self, done: &Done) {
        self.lock().advance(done);
    }

    /// Place in line of the message at `offset`, by the progress as last read: the messages
    /// of its partition not yet finished, up to and including it.
    pub fn position(&self, offset: u64) -> u64 {
        self.lock().position(offset)
    }

    /// Whether the workers have finished the message at `offset`, by the progress as last
    /// read (then its outcome is in the database, or it is in the dead letters).
    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.lock().mark_for(offset)
    }
}

impl AppState {
    /// This state on `clock` instead of the system clock (its throttle's quotas too).
    pub fn with_clock(mut self, clock: Arc<dyn queue::Clock>) -> Self {
        self.throttle = self.throttle.on_clock(QuotaClock(clock.clone()));
        self.clock = clock;
        self
    }

    /// Notes the order workers and cancellers running in this process (their counters show
    /// in `/metrics`).
    pub fn set_crew(&mut self, crew: CrewMetrics) {
        self.exposition.set_crew(crew);
    }

    /// Now by the gateway's clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The sale `id`, or 404.
    pub fn sale_or_404(&self, id: u64) -> ApiResult<Arc<Sale>> {
        self.catalogue
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no sale {id}")))
    }

    /// The client address the per-address bounds count (live captchas and tokens), or
    /// `None` when they are off ([`crate::throttle::ThrottleConfig::per_address`]).
    pub fn counted_addr(&self, ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
        self.throttle.config().per_address.then_some(ip)
    }

    /// The 429 of a throttled request, counted.
    pub fn throttled(&self, t: Throttled) -> ApiError {
        self.metrics.throttled.fetch_add(1, Ordering::Relaxed);
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", t.reason)
            .retry_after_ms(t.retry_after_ms)
    }
}

/// A purchase waiting in the orders topic's dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Sale.
    pub sale: u64,
    /// Why the workers gave up on it.
    pub reason: String,
}

/// The tickets of purchases in the orders topic's dead letters (the first
/// `queue::limits::DEAD_LETTER_LIST_MAX` of them), as last listed.
#[derive(Debug, Default)]
pub struct HeldTickets(Mutex<HashMap<String, Held>>);

impl HeldTickets {
    /// A held ticket.
    pub fn get(&self, ticket: &str) -> Option<Held> {
        match self.0.lock() {
            Ok(g) => g.get(ticket).cloned(),
            Err(p) => p.into_inner().get(ticket).cloned(),
        }
    }

    /// Held tickets of `sale`.
    pub fn count_of_sale(&self, sale: u64) -> usize {
        let count = |g: &HashMap<String, Held>| g.values().filter(|h| h.sale == sale).count();
        match self.0.lock() {
            Ok(g) => count(&g),
            Err(p) => count(&p.into_inner()),
        }
    }

    pub(crate) fn replace(&self, held: HashMap<String, Held>) {
        match self.0.lock() {
            Ok(mut g) => *g = held,
            Err(p) => *p.into_inner() = held,
        }
    }
}

/// State of the reconciliation at rest.
#[derive(Debug, Default)]
pub struct Reconciler {
    pub(crate) rounds: AtomicU64,
    /// Sales whose store figures differed from the database at the last check, with the
    /// figures seen then.
    suspects: Mutex<HashMap<u64, SaleStock>>,
    /// Sales reset to the database's figures (since start).
    pub resets: Arc<AtomicU64>,
}

impl Reconciler {
    pub(crate) fn suspects(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SaleStock>> {
        match self.suspects.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// How long a sale's units-left figure is reused by the pages.
pub const STOCK_CACHE_MS: u64 = 1_000;

/// Units left per sale, as last read from the stock store, reused for [`STOCK_CACHE_MS`].
/// Holds at most one entry per sale of the catalogue (bounded by `SALES_MAX`).
#[derive(Debug, Default)]
pub struct StockCache {
    entries: Mutex<HashMap<u64, (u64, Option<u64>)>>,
}

impl StockCache {
    /// Units left of `sale` (None: unknown), read from the store when the cached figure is
    /// older than [`STOCK_CACHE_MS`].
    pub async fn left(&self, state: &AppState, sale: u64, now: u64) -> Option<u64> {
        if let Some((at, left)) = self.lock().get(&sale).copied()
            && now.saturating_sub(at) < STOCK_CACHE_MS
        {
            return left;
        }
        let left = match state.inventory.store().stock(sale).await {
            Ok(s) => s.map(|s| s.left),
            Err(_) => None,
        };
        let mut entries = self.lock();
        if entries.len() >= crate::sales::SALES_MAX && !entries.contains_key(&sale) {
            entries.clear();
        }
        entries.insert(sale, (now, left));
        left
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, Option<u64>)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 202 for partition 2 of a three-partition topic used to say ~2.8e14 (its offset
    /// minus partition 0's mark); counted within its partition it is its place in line.
    #[test]
    fn places_in_line_of_a_later_partition_are_small() {
        let line = LineProgress::default();
        let at = |p: u64, seq: u64| (p << crate::tickets::PARTITION_SHIFT) | seq;
        // Before anything is read: the partition's seq + 1.
        assert_eq!(line.position(at(2, 4)), 5);
        line.advance(&Done::of_partitions(
            at(0, 40),
            &[at(0, 40), at(1, 50), at(2, 60)],
        ));
        assert_eq!(line.position(at(2, 61)), 2);
        assert_eq!(line.position(at(1, 50)), 1);
        assert_eq!(line.position(at(0, 49)), 10);
        // One offset space, as the engine and the broker number it.
        let single = LineProgress::default();
        single.advance(&Done::below(7));
        assert_eq!(single.position(9), 3);
    }
}
