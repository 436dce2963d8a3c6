//! Unpaid-order cancellation: the consumer of the delayed pay-by messages, and the sweep
//! that backs it up.
//!
//! A pay-by message falls due at its order's pay-by time. [`Canceller::step`] fetches due
//! messages in a batch and cancels, in one transaction, those orders still pending (one
//! conditional update each: `status = 'pending' AND pay_by_ms <= now`), putting their units
//! back into the sales' units left; then it releases each cancelled buyer's unit in the
//! inventory store (which clears the sold-out flag, so the unit sells again) and acks.
//! Paid or already-cancelled orders are left alone: a redelivery changes nothing in the
//! database. The release is tagged with the order's ticket, so it is repeated for every
//! cancelled order of the batch, also those cancelled by an earlier delivery: a canceller
//! killed between its commit and its release gives the unit back on the redelivery, and a
//! repeated release never takes the buyer's newer reservation.
//!
//! [`Canceller::sweep`] finds pending orders past their pay-by time straight from the
//! database and cancels them the same way, so an order whose pay-by message was never
//! published (or was lost) still expires within one sweep period.
//!
//! A payment (`OrdersDb::pay`) is the same kind of conditional update (`status =
//! 'pending' AND pay_by_ms > now`): whichever commits first wins, the other changes no row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use inventory::Inventory;
use queue::backoff::Backoff;
use queue::{Clock, Delivery, FetchOptions, Queue, Receipt};

use crate::consumer::{self, Consume, Subscription};
use crate::db::{CANCEL_BATCH_MAX, Cancelled, OrdersDb};
use crate::liveness::Liveness;
use crate::purchase::{CANCELLERS_GROUP, DEADLINES_TOPIC, Deadline};

/// Settings of a canceller.
#[derive(Debug, Clone)]
pub struct CancellerConfig {
    /// Topic of pay-by messages.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Most messages a batch (at most [`CANCEL_BATCH_MAX`]).
    pub batch_max: usize,
    /// Long-poll wait, ms.
    pub wait_ms: u64,
    /// Lease of a fetched batch, ms.
    pub lease_ms: u64,
    /// Period of the sweep for overdue pending orders, ms.
    pub sweep_every_ms: u64,
    /// Delay before a batch that failed comes back, ms.
    pub nack_delay_ms: u64,
}

impl Default for CancellerConfig {
    fn default() -> Self {
        CancellerConfig {
            topic: DEADLINES_TOPIC.into(),
            group: CANCELLERS_GROUP.into(),
            batch_max: 1_000,
            wait_ms: 250,
            lease_ms: 60_000,
            sweep_every_ms: 1_000,
            nack_delay_ms: 500,
        }
    }
}

/// Counters of the cancellers.
#[derive(Debug, Default)]
pub struct CancellerMetrics {
    /// Orders cancelled by their pay-by message.
    pub cancelled: AtomicU64,
    /// Orders cancelled by the sweep.
    pub swept: AtomicU64,
    /// Pay-by messages that found their order paid, already cancelled, or unknown.
    pub no_op: AtomicU64,
    /// Units released in the inventory store.
    pub released: AtomicU64,
    /// Malformed pay-by messages sent to the dead letters.
    pub malformed: AtomicU64,
    /// Batches given back after database errors.
    pub failed: AtomicU64,
}

/// Why a canceller step failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The queue failed.
    #[error("queue: {0}")]
    Queue(#[from] queue::Error),
    /// The database failed.
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
}

/// The cancellation consumer and sweep.
#[derive(Clone)]
pub struct Canceller {
    db: OrdersDb,
    queue: Arc<dyn Queue>,
    inventory: Option<Arc<Inventory>>,
    config: CancellerConfig,
    metrics: Arc<CancellerMetrics>,
    clock: Arc<dyn Clock>,
    liveness: Arc<Liveness>,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Canceller {
    /// A canceller on `db` and `queue`; with `inventory`, cancelled units are released there.
    pub fn new(
        db: OrdersDb,
        queue: Arc<dyn Queue>,
        inventory: Option<Arc<Inventory>>,
        mut config: CancellerConfig,
        metrics: Arc<CancellerMetrics>,
        clock: Arc<dyn Clock>,
    ) -> Canceller {
        config.batch_max = config.batch_max.clamp(1, CANCEL_BATCH_MAX);
        Canceller {
            db,
            queue,
            inventory,
            config,
            metrics,
            clock,
            liveness: Arc::new(Liveness::default()),
        }
    }

    /// This canceller reporting its steps and cancellations to `liveness` (a crew's
    /// heartbeat reads it).
    pub fn with_liveness(mut self, liveness: Arc<Liveness>) -> Canceller {
        self.liveness = liveness;
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<CancellerMetrics> {
        &self.metrics
    }

    /// What this canceller (and its clones) reports to the heartbeat.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// Consumes pay-by messages and sweeps every `sweep_every_ms` until `stop` is true. A
    /// failed step is logged and the next one waits `nack_delay_ms` (the sweep's errors are
    /// logged and wait for the next period).
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        consumer::run_until_stopped(self, stop).await
    }

    /// Fetches due pay-by messages (waiting up to `wait_ms`) and cancels their orders if
    /// still pending; returns how many messages it fetched. Each fetch that returns (a long
    /// poll that ran out too) and each batch handled counts as progress
    /// ([`Liveness::progress_ms`]).
    pub async fn step(&self) -> Result<usize, CancelError> {
        consumer::step(self).await
    }

    /// Cancels the orders of a batch of pay-by messages that are due and still pending,
    /// releases the units of every cancelled one, then acks; a message delivered early goes
    /// back until it is due, a malformed one to the dead letters. If the database fails,
    /// the batch is nacked and the error returned.
    async fn handle(&self, batch: Vec<Delivery>) -> Result<(), CancelError> {
        let sub = self.subscription();
        let now = self.clock.now_ms();
        let mut ids = Vec::with_capacity(batch.len());
        let mut receipts: Vec<Receipt> = Vec::with_capacity(batch.len());
        for d in &batch {
            match Deadline::decode(&d.payload) {
                Ok(deadline) if deadline.pay_by_ms > now => {
                    // Delivered early (clocks apart): back until it is due.
                    sub.nack_for(d.receipt(), deadline.pay_by_ms - now, "not yet due")
                        .await?;
                }
                Ok(deadline) => {
                    ids.push(deadline.order_id);
                    receipts.push(d.receipt());
                }
                Err(e) => {
                    self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    sub.reject(d.receipt(), &e.to_string()).await?;
                }
            }
        }
        match self.db.cancel_due(&ids, now).await {
            Ok(cancelled) => {
                let n = cancelled.len() as u64;
                self.metrics.cancelled.fetch_add(n, Ordering::Relaxed);
                self.liveness.finished(n);
                self.metrics
                    .no_op
                    .fetch_add(ids.len() as u64 - n, Ordering::Relaxed);
                // Every cancelled order of the batch, this delivery's and earlier ones'.
                match self.db.cancelled_among(&ids).await {
                    Ok(all) => self.release(&all).await,
                    Err(e) => {
                        // Released from what this delivery cancelled; the rest at the next
                        // delivery or by reconciliation.
                        tracing::warn!("listing cancelled orders: {e}");
                        self.release(&cancelled).await;
                    }
                }
                sub.ack(&receipts).await?;
                Ok(())
            }
            Err(e) => {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                sub.nack_each(&receipts, &e.to_string(), || {}).await?;
                Err(e.into())
            }
        }
    }

    /// Cancels pending orders past their pay-by time found in the database (a batch at a
    /// time, until none is left); returns how many it cancelled.
    pub async fn sweep(&self) -> Result<usize, CancelError> {
        let mut total = 0;
        loop {
            let now = self.clock.now_ms();
            let ids = self.db.overdue(now, self.config.batch_max).await?;
            self.liveness.progressed(self.clock.now_ms());
            if ids.is_empty() {
                return Ok(total);
            }
            let cancelled = self.db.cancel_due(&ids, now).await?;
            self.metrics
                .swept
                .fetch_add(cancelled.len() as u64, Ordering::Relaxed);
            self.liveness.finished(cancelled.len() as u64);
            self.release(&cancelled).await;
            total += cancelled.len();
            if ids.len() < self.config.batch_max {
                return Ok(total);
            }
        }
    }

    async fn release(&self, cancelled: &[Cancelled]) {
        let Some(inv) = &self.inventory else {
            return;
        };
        for c in cancelled {
            match inv.release_if(c.sale, &c.user, Some(&c.ticket)).await {
                Ok(inventory::Released::Released { .. }) => {
                    self.metrics.released.fetch_add(1, Ordering::Relaxed);
                }
                Ok(inventory::Released::NotHeld) => {}
                Err(e) => tracing::warn!(
                    "releasing the unit of cancelled order {}: {e}; reconciliation will",
                    c.order_id
                ),
            }
        }
    }
}

impl Consume for Canceller {
    type Error = CancelError;
    /// When the loop last swept, ms by the canceller's clock (0: never).
    type LoopState = u64;
    const NAME: &'static str = "canceller";

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

    /// A constant wait of `nack_delay_ms` (the delay its failed batch is given back for:
    /// retrying sooner would only find the database as unwell).
    fn failure_backoff(&self) -> Backoff {
        Backoff::new(self.config.nack_delay_ms, self.config.nack_delay_ms)
    }

    /// The sweep, when `sweep_every_ms` has passed since the last one.
    async fn before_step(&self, last_sweep_ms: &mut u64) {
        let now = self.clock.now_ms();
        if now.saturating_sub(*last_sweep_ms) >= self.config.sweep_every_ms {
            *last_sweep_ms = now;
            if let Err(e) = self.sweep().await {
                tracing::warn!("sweep of overdue orders: {e}");
            }
        }
    }

    async fn handle_batch(&self, batch: Vec<Delivery>) -> Result<(), CancelError> {
        self.handle(batch).await
    }
}
