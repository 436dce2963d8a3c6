//! The order worker: fetch a batch of purchases (long poll), decide them in one database
//! transaction, publish each order's pay-by message, release the gateway's reservation of
//! each rejected purchase, then ack.
//!
//! Crash safety, step by step:
//! - killed before the commit: nothing happened; the leases expire and the batch is
//!   delivered again;
//! - killed after the commit, before the pay-by publish or the ack: the redelivered batch
//!   finds its decisions (the outcome per ticket) and changes nothing; the pay-by messages
//!   are published again under their order ids (the queue de-duplicates them), then acked;
//! - a pay-by message lost anyway (publish refused, outside the de-duplication window) is
//!   caught by the canceller's sweep of overdue pending orders;
//! - killed after the commit of a rejection but before its stock release: the redelivery
//!   releases it (every rejection's release is tagged with its ticket, so it only ever
//!   takes back that purchase's reservation, never the user's newer one or the unit of
//!   their order).
//!
//! Failures: transient database errors (an outage, a restart, lock timeouts) are retried
//! with exponential backoff inside the worker for as long as the batch's lease lasts, and the
//! worker fetches nothing else meanwhile. A database outage therefore never spends the
//! purchases' delivery attempts faster than one per lease (two minutes by default; the
//! queue dead-letters after five): nacking on every failure would send a backlog to the
//! dead letters within seconds of an outage. The same holds for the pay-by messages of a
//! decided batch when the queue fails for a moment (a Redis master failing over): they are
//! published again with backoff within the lease, and only what still fails is nacked. If
//! the lease runs out first, the batch is left to the queue, which delivers it again. A batch that fails for another reason is split and
//! decided one purchase at a time, so one poison message is nacked alone (and dead-lettered
//! by the queue after its attempts) and never blocks the rest. A malformed message goes
//! straight to the dead letters with its reason. A purchase in the dead letters keeps its
//! unit reserved and its ticket shows it (`held`) until an operator replays it (it is then
//! decided) or discards it (it is then recorded as rejected, `discarded`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use inventory::Inventory;
use queue::backoff::Backoff;
use queue::{Clock, Delivery, FetchOptions, Queue, Receipt};

use crate::consumer::{self, Consume, Subscription};
use crate::db::{BATCH_DEFAULT, BATCH_MAX, DbError, Decision, OrdersDb, reason};
use crate::liveness::Liveness;
use crate::purchase::{DEADLINES_TOPIC, Deadline, ORDERS_TOPIC, PurchaseMessage, WORKERS_GROUP};

/// Longest backoff between database retries.
pub const RETRY_BACKOFF_MAX_MS: u64 = 5_000;
/// Database retries of a batch stop this long before its lease ends, so the last attempt
/// finishes (and acks) inside the lease.
pub const LEASE_MARGIN_MS: u64 = 10_000;
/// The workers of a process refresh the database's statistics ([`OrdersDb::analyze`])
/// after deciding this many purchases, then each time they have decided as many again as
/// at the last refresh (the tables doubled: at 10,000, 20,000, 40,000, …), one refresh at
/// a time: plans made while the tables were empty (where autovacuum is off) turned small
/// batches into full scans (`BENCHMARKS.md`, "Statistics"), and a plan good for a table
/// stays good as it grows. Refreshing after every tenth more cost a 100,000-unit sale nine
/// `ANALYZE`s of both tables (`pg_stat_user_tables.analyze_count`), each sampling up to
/// 30,000 rows, on the cores that serve the sale; now four, each sampling 3,000
/// ([`crate::db::ANALYZE_STATISTICS_TARGET`]).
pub const ANALYZE_EVERY_DECISIONS_MIN: u64 = 10_000;

/// Whether the statistics are due for a refresh, `decided` fresh decisions made in all and
/// `analyzed_at` of them at the last refresh (see [`ANALYZE_EVERY_DECISIONS_MIN`]).
pub fn analyze_due(analyzed_at: u64, decided: u64) -> bool {
    decided.saturating_sub(analyzed_at) >= analyzed_at.max(ANALYZE_EVERY_DECISIONS_MIN)
}

/// Settings of an order worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Topic of purchases.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Topic of pay-by messages.
    pub deadlines_topic: String,
    /// Most purchases a batch (one fetch, one transaction); at most [`BATCH_MAX`].
    pub batch_max: usize,
    /// Long-poll wait of a fetch, ms (also how quickly `run` notices a stop).
    pub wait_ms: u64,
    /// Lease of a fetched batch, ms: longer than a batch takes, retries included.
    pub lease_ms: u64,
    /// First retry backoff after a transient database error, ms (doubles each time, at most
    /// [`RETRY_BACKOFF_MAX_MS`]; retries go on until the lease is [`LEASE_MARGIN_MS`] from
    /// its end).
    pub retry_base_ms: u64,
    /// Delay before a nacked batch comes back, ms.
    pub nack_delay_ms: u64,
    /// Fail point for crash tests: after a batch's commit, print
    /// `order-worker: paused after commit` and wait forever (before the pay-by publish and
    /// the ack), so a test can SIGKILL the process exactly there.
    pub pause_after_commit: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            topic: ORDERS_TOPIC.into(),
            group: WORKERS_GROUP.into(),
            deadlines_topic: DEADLINES_TOPIC.into(),
            batch_max: BATCH_DEFAULT,
            wait_ms: 500,
            lease_ms: 120_000,
            retry_base_ms: 50,
            nack_delay_ms: 1_000,
            pause_after_commit: false,
        }
    }
}

/// Counters of a worker (shared by the workers of a process).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Batches decided.
    pub batches: AtomicU64,
    /// Purchase messages finished (acked after a decision).
    pub messages: AtomicU64,
    /// Orders created.
    pub ordered: AtomicU64,
    /// Purchases rejected: sold out in the database.
    pub rejected_sold_out: AtomicU64,
    /// Purchases rejected: the user already holds an order.
    pub rejected_already_bought: AtomicU64,
    /// Purchases rejected: unknown sale.
    pub rejected_no_such_sale: AtomicU64,
    /// Deliveries that found their decision already made (redeliveries).
    pub redelivered: AtomicU64,
    /// Malformed messages sent to the dead letters.
    pub malformed: AtomicU64,
    /// Messages nacked after failures (dead-lettered by the queue after their attempts).
    pub nacked: AtomicU64,
    /// Database retries after transient errors.
    pub db_retries: AtomicU64,
    /// Reservations released for rejected purchases.
    pub released: AtomicU64,
    /// Pay-by messages published (fresh or again).
    pub deadlines_published: AtomicU64,
    /// Fresh decisions (orders and rejections) made by this process's workers.
    pub decided: AtomicU64,
    /// Fresh decisions at the last statistics refresh.
    pub analyzed_at: AtomicU64,
    /// Statistics refreshes started.
    pub analyzes: AtomicU64,
    /// Whether a statistics refresh is running (one at a time per process).
    pub analyzing: AtomicBool,
}

/// Why a worker step failed (the queue; database failures are handled by nacks).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue failed.
    #[error("queue: {0}")]
    Queue(#[from] queue::Error),
}

/// One order worker. Cheap to clone; clones share metrics.
#[derive(Clone)]
pub struct OrderWorker {
    db: OrdersDb,
    queue: Arc<dyn Queue>,
    inventory: Option<Arc<Inventory>>,
    config: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
    clock: Arc<dyn Clock>,
    liveness: Arc<Liveness>,
}

impl std::fmt::Debug for OrderWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrderWorker {
    /// A worker on `db` and `queue`. With `inventory`, a rejected purchase releases its
    /// reservation there (without one, the gateway's reconciliation settles it).
    pub fn new(
        db: OrdersDb,
        queue: Arc<dyn Queue>,
        inventory: Option<Arc<Inventory>>,
        mut config: WorkerConfig,
        metrics: Arc<WorkerMetrics>,
        clock: Arc<dyn Clock>,
    ) -> OrderWorker {
        config.batch_max = config.batch_max.clamp(1, BATCH_MAX);
        OrderWorker {
            db,
            queue,
            inventory,
            config,
            metrics,
            clock,
            liveness: Arc::new(Liveness::default()),
        }
    }

    /// This worker reporting its steps and finished messages to `liveness` (a crew's
    /// heartbeat reads it).
    pub fn with_liveness(mut self, liveness: Arc<Liveness>) -> OrderWorker {
        self.liveness = liveness;
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// What this worker (and its clones) reports to the heartbeat.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// Runs until `stop` turns true (checked between batches, at least every
    /// `wait_ms`). Queue errors are logged and retried with backoff.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        consumer::run_until_stopped(self, stop).await
    }

    /// Fetches one batch (waiting up to `wait_ms`) and handles it; returns how many
    /// messages it fetched. Each fetch that returns (a long poll that ran out too) and each
    /// batch handled counts as progress ([`Liveness::progress_ms`]).
    pub async fn step(&self) -> Result<usize, WorkerError> {
        consumer::step(self).await
    }

    /// Decides, publishes and acks a batch of deliveries, in this order (the crash safety
    /// of the module docs depends on it): malformed messages to the dead letters; the
    /// decisions committed; the pay-by messages published; the reservations of rejected
    /// purchases released; then the acks (the purchases whose pay-by message was not
    /// published are nacked instead, so their redelivery publishes it again).
    pub async fn handle(&self, deliveries: Vec<Delivery>) -> Result<(), WorkerError> {
        let batch = self.parse(&deliveries).await?;
        if batch.purchases.is_empty() {
            return Ok(());
        }
        let budget = RetryBudget::for_batch(&deliveries, self.config.lease_ms);
        let Some(decisions) = self.decide_or_split(&batch, &budget).await? else {
            return Ok(());
        };
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        let fresh = decisions.iter().filter(|(_, d)| d.fresh()).count() as u64;
        self.maybe_analyze(fresh);
        self.pause_if_asked().await;
        let unpublished = self
            .publish_deadlines_within(&batch.purchases, &decisions, &budget)
            .await;
        for (i, d) in &decisions {
            self.settle(&batch.purchases[*i], d).await;
        }
        self.ack_or_retry(&batch.receipts, &decisions, &unpublished)
            .await
    }

    /// Step 1: the purchases of `deliveries`, each with its receipt; a malformed message
    /// goes straight to the dead letters with its reason.
    async fn parse(&self, deliveries: &[Delivery]) -> Result<Parsed, WorkerError> {
        let mut batch = Parsed {
            purchases: Vec::with_capacity(deliveries.len()),
            receipts: Vec::with_capacity(deliveries.len()),
        };
        for d in deliveries {
            match PurchaseMessage::decode(&d.payload) {
                Ok(p) => {
                    batch.purchases.push(p);
                    batch.receipts.push(d.receipt());
                }
                Err(e) => {
                    self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("purchase at offset {}: {e}; dead-lettered", d.offset);
                    self.subscription()
                        .reject(d.receipt(), &e.to_string())
                        .await?;
                }
            }
        }
        Ok(batch)
    }

    /// Step 2: the decisions of the batch (index in the batch, decision), retrying
    /// transient errors within `budget`. `None` if the database stayed unwell for the
    /// whole budget: the batch is left to the queue (it comes back after its lease)
    /// without spending more delivery attempts. If the batch fails for another reason, it
    /// is decided one purchase at a time, so only the culprit is nacked (and dead-lettered
    /// after its attempts) and left out of the decisions.
    async fn decide_or_split(
        &self,
        batch: &Parsed,
        budget: &RetryBudget,
    ) -> Result<Option<Vec<(usize, Decision)>>, WorkerError> {
        let purchases = &batch.purchases;
        match self.decide(purchases, budget).await {
            Ok(d) => Ok(Some(d.into_iter().enumerate().collect())),
            Err(e) if e.is_transient() => {
                tracing::warn!(
                    "batch of {}: {e}; left to the queue until its lease ends",
                    purchases.len()
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!("batch of {}: {e}; deciding one at a time", purchases.len());
                let mut ok = Vec::with_capacity(purchases.len());
                for (i, p) in purchases.iter().enumerate() {
                    match self.decide(std::slice::from_ref(p), budget).await {
                        Ok(mut d) => {
                            if let Some(d) = d.pop() {
                                ok.push((i, d));
                            }
                        }
                        Err(e) => {
                            self.nack_all(&batch.receipts[i..=i], &e.to_string())
                                .await?
                        }
                    }
                }
                Ok(Some(ok))
            }
        }
    }

    /// The fail point of crash tests ([`WorkerConfig::pause_after_commit`]): after the
    /// commit, before any publish or ack, announce it and wait forever.
    async fn pause_if_asked(&self) {
        if self.config.pause_after_commit {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "order-worker: paused after commit");
            let _ = out.flush();
            std::future::pending::<()>().await;
        }
    }

    /// Step 3 with retries: the pay-by messages that failed to publish (the queue failing
    /// over, unreachable for a moment) are published again with backoff while the batch's
    /// lease allows, as transient database errors are. Nacking them at once would spend a
    /// delivery attempt a second, and a failover of a few seconds would dead-letter
    /// decided purchases. Returns what still failed (nacked by the caller).
    async fn publish_deadlines_within(
        &self,
        purchases: &[PurchaseMessage],
        decisions: &[(usize, Decision)],
        budget: &RetryBudget,
    ) -> Vec<bool> {
        let mut unpublished = self.publish_deadlines(purchases, decisions).await;
        let mut backoff = self.retry_backoff();
        while unpublished.iter().any(|u| *u)
            && budget.allows(self.clock.now_ms(), backoff.peek_ms())
        {
            let delay = backoff.next_delay();
            tracing::warn!(
                "publishing pay-by messages failed; retrying in {} ms",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
            let again: Vec<(usize, Decision)> = decisions
                .iter()
                .filter(|(i, _)| unpublished[*i])
                .cloned()
                .collect();
            unpublished = self.publish_deadlines(purchases, &again).await;
        }
        unpublished
    }

    /// Step 3: a pay-by message for every order, fresh or found again (a crash may have
    /// come between the commit and the first publish); the order id de-duplicates them.
    /// Returns, per purchase of the batch, whether its pay-by message failed to publish
    /// (it is then not acked: the redelivery publishes it again).
    async fn publish_deadlines(
        &self,
        purchases: &[PurchaseMessage],
        decisions: &[(usize, Decision)],
    ) -> Vec<bool> {
        let mut deadlines = Vec::new();
        let mut deadline_of = Vec::new();
        for (i, d) in decisions {
            if let Decision::Ordered {
                order_id,
                pay_by_ms,
                ..
            } = d
            {
                let msg = Deadline {
                    order_id: order_id.clone(),
                    pay_by_ms: *pay_by_ms,
                }
                .message();
                match msg {
                    Ok(msg) => {
                        deadlines.push(msg);
                        deadline_of.push(*i);
                    }
                    Err(e) => tracing::error!("order {order_id}: {e}; the sweep will expire it"),
                }
            }
        }
        let mut unpublished = vec![false; purchases.len()];
        if deadlines.is_empty() {
            return unpublished;
        }
        match self
            .queue
            .publish_each(&self.config.deadlines_topic, deadlines)
            .await
        {
            Ok(results) => {
                for (k, r) in results.into_iter().enumerate() {
                    match r {
                        Ok(_) => {
                            self.metrics
                                .deadlines_published
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Some(&i) = deadline_of.get(k) {
                                unpublished[i] = true;
                                tracing::warn!("pay-by message of {}: {e}", purchases[i].ticket);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("pay-by messages: {e}");
                for &i in &deadline_of {
                    unpublished[i] = true;
                }
            }
        }
        unpublished
    }

    /// Step 4, one purchase: counts its decision and, if it was rejected, gives the
    /// gateway's reservation back.
    async fn settle(&self, p: &PurchaseMessage, d: &Decision) {
        let m = &self.metrics;
        if !d.fresh() {
            m.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        match d {
            Decision::Ordered { fresh, .. } => {
                if *fresh {
                    m.ordered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Decision::Rejected { reason: why, fresh } => {
                if *fresh {
                    let counter = match why.as_str() {
                        reason::SOLD_OUT => &m.rejected_sold_out,
                        reason::ALREADY_BOUGHT => &m.rejected_already_bought,
                        _ => &m.rejected_no_such_sale,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                self.release_rejected(p, why).await;
            }
        }
    }

    /// The gateway reserved a unit the database did not grant: give it back, fresh
    /// decision or redelivery alike. Tagged with this purchase's ticket, so only the
    /// reservation this purchase made goes, never one standing for the user's orders
    /// (`already_bought` included: each reservation has its own tag, and an order's
    /// reservation carries the order's ticket).
    async fn release_rejected(&self, p: &PurchaseMessage, _why: &str) {
        let Some(inv) = &self.inventory else {
            return;
        };
        match inv.release_if(p.sale, &p.user, Some(&p.ticket)).await {
            Ok(inventory::Released::Released { .. }) => {
                self.metrics.released.fetch_add(1, Ordering::Relaxed);
            }
            Ok(inventory::Released::NotHeld) => {}
            Err(e) => tracing::warn!("releasing {}'s unit of sale {}: {e}", p.user, p.sale),
        }
    }

    /// Step 5: acks the decided purchases whose pay-by message is out (counted as
    /// finished), then nacks those whose message is not.
    async fn ack_or_retry(
        &self,
        receipts: &[Receipt],
        decisions: &[(usize, Decision)],
        unpublished: &[bool],
    ) -> Result<(), WorkerError> {
        let mut acks: Vec<Receipt> = Vec::with_capacity(decisions.len());
        let mut retry: Vec<Receipt> = Vec::new();
        for (i, _) in decisions {
            if unpublished[*i] {
                retry.push(receipts[*i]);
            } else {
                acks.push(receipts[*i]);
            }
        }
        self.subscription().ack(&acks).await?;
        self.metrics
            .messages
            .fetch_add(acks.len() as u64, Ordering::Relaxed);
        self.liveness.finished(acks.len() as u64);
        if !retry.is_empty() {
            self.nack_all(&retry, "pay-by message not published")
                .await?;
        }
        Ok(())
    }

    /// `decide_batch`, retrying transient errors with backoff within `budget`.
    async fn decide(
        &self,
        purchases: &[PurchaseMessage],
        budget: &RetryBudget,
    ) -> Result<Vec<Decision>, DbError> {
        let mut backoff = self.retry_backoff();
        loop {
            match self.db.decide_batch(purchases, self.clock.now_ms()).await {
                Ok(d) => return Ok(d),
                Err(e)
                    if e.is_transient()
                        && budget.allows(self.clock.now_ms(), backoff.peek_ms()) =>
                {
                    self.metrics.db_retries.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        "deciding a batch: {e}; retrying in {} ms",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Counts `fresh` decisions and, once enough have been made since the last refresh
    /// ([`analyze_due`]), refreshes the statistics in a task of its own (one at a time per
    /// process: while one runs, the next waits for a later batch).
    fn maybe_analyze(&self, fresh: u64) {
        let m = self.metrics.clone();
        let total = m.decided.fetch_add(fresh, Ordering::Relaxed) + fresh;
        let last = m.analyzed_at.load(Ordering::Relaxed);
        if !analyze_due(last, total) || m.analyzing.swap(true, Ordering::AcqRel) {
            return;
        }
        if m.analyzed_at
            .compare_exchange(last, total, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            m.analyzing.store(false, Ordering::Release);
            return;
        }
        m.analyzes.fetch_add(1, Ordering::Relaxed);
        let db = self.db.clone();
        tokio::spawn(async move {
            if let Err(e) = db.analyze().await {
                tracing::warn!("refreshing the database's statistics: {e}");
            }
            m.analyzing.store(false, Ordering::Release);
        });
    }

    async fn nack_all(&self, receipts: &[Receipt], why: &str) -> Result<(), WorkerError> {
        self.subscription()
            .nack_each(receipts, why, || {
                self.metrics.nacked.fetch_add(1, Ordering::Relaxed);
            })
            .await?;
        Ok(())
    }

    /// The schedule of every retry of this worker (a failed step of its loop, a transient
    /// database error): from `retry_base_ms`, doubling, at most [`RETRY_BACKOFF_MAX_MS`].
    fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.config.retry_base_ms, RETRY_BACKOFF_MAX_MS)
    }
}

impl Consume for OrderWorker {
    type Error = WorkerError;
    type LoopState = ();
    const NAME: &'static str = "order worker";

    fn subscription(&self) -> Subscription<'_> {
        Subscription {
            queue: self.queue.as_ref(),
            topic: &self.config.topic,
            group: &self.config.group,
            fetch: FetchOptions {
                max_messages: self.config.batch_max,
                lease_ms: Some(self.config.lease_ms),
                wait_ms: self.config.wait_ms,
            },
            nack_delay_ms: self.config.nack_delay_ms,
        }
    }

    fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn failure_backoff(&self) -> Backoff {
        self.retry_backoff()
    }

    async fn handle_batch(&self, batch: Vec<Delivery>) -> Result<(), WorkerError> {
        self.handle(batch).await
    }
}

/// How long a batch's database work may keep retrying: until shortly before its lease ends
/// (by the queue's clock) and for at most the lease length in real time.
#[derive(Debug)]
struct RetryBudget {
    lease_until_ms: u64,
    started: std::time::Instant,
    max: Duration,
}

/// The purchases of a batch that parsed, each with its delivery's receipt (same index).
#[derive(Debug)]
struct Parsed {
    purchases: Vec<PurchaseMessage>,
    receipts: Vec<Receipt>,
}

impl RetryBudget {
    /// The budget of a batch: until [`LEASE_MARGIN_MS`] before the earliest lease of its
    /// `deliveries` ends, and at most `lease_ms` less that margin from now.
    fn for_batch(deliveries: &[Delivery], lease_ms: u64) -> RetryBudget {
        let lease_until = deliveries
            .iter()
            .map(|d| d.lease_until_ms)
            .min()
            .unwrap_or(0);
        RetryBudget {
            lease_until_ms: lease_until.saturating_sub(LEASE_MARGIN_MS),
            started: std::time::Instant::now(),
            max: Duration::from_millis(lease_ms.saturating_sub(LEASE_MARGIN_MS)),
        }
    }

    fn allows(&self, now_ms: u64, backoff_ms: u64) -> bool {
        now_ms.saturating_add(backoff_ms) < self.lease_until_ms
            && self.started.elapsed() + Duration::from_millis(backoff_ms) < self.max
    }
}

#[cfg(test)]
mod tests {
    use super::{ANALYZE_EVERY_DECISIONS_MIN as MIN, analyze_due};

    #[test]
    fn statistics_are_refreshed_as_the_tables_double() {
        assert!(!analyze_due(0, 0));
        assert!(!analyze_due(0, MIN - 1));
        assert!(analyze_due(0, MIN));
        // After the first refresh at MIN: the next once MIN more are decided (2 MIN).
        assert!(!analyze_due(MIN, 2 * MIN - 1));
        assert!(analyze_due(MIN, 2 * MIN));
        // Then each time the decisions have doubled.
        assert!(!analyze_due(2 * MIN, 4 * MIN - 1));
        assert!(analyze_due(2 * MIN, 4 * MIN));
        assert!(!analyze_due(100 * MIN, 199 * MIN));
        assert!(analyze_due(100 * MIN, 200 * MIN));
        // A refresh that started late (batches larger than the step) counts from there.
        assert!(!analyze_due(3 * MIN, 5 * MIN));
        // Never an overflow.
        assert!(!analyze_due(u64::MAX, u64::MAX));
        assert!(analyze_due(0, u64::MAX));
    }
}
