//! The loop every queue consumer of this crate runs: the order worker and the canceller
//! differ only in what they do with a batch, so the fetching, the liveness reports, the
//! stop check and the retry backoff live here once.
//!
//! A step is a fetch (a long poll of up to `wait_ms`) and, if it brought messages, the
//! handling of the batch. Each fetch that returns (a long poll that ran out too) and each
//! batch handled counts as progress ([`Liveness::progress_ms`]), so a crew's heartbeat
//! tells a loop that waits for work from one that is stuck. A step that fails (the queue
//! failed, or the canceller's database) is logged and the loop waits the next delay of its
//! [`Backoff`] (or until it is told to stop) before the next step; a step that succeeds
//! resets the schedule.

use queue::backoff::Backoff;
use queue::{Delivery, FetchOptions, Queue, Receipt};

use crate::liveness::Liveness;

/// One consumer group's view of a topic, borrowed from a consumer's settings for the
/// length of a call.
#[derive(Clone, Copy)]
pub(crate) struct Subscription<'a> {
    /// The queue.
    pub queue: &'a dyn Queue,
    /// Topic consumed.
    pub topic: &'a str,
    /// Consumer group.
    pub group: &'a str,
    /// How a step fetches (batch size, lease, long-poll wait).
    pub fetch: FetchOptions,
    /// Delay before a nacked message comes back, ms.
    pub nack_delay_ms: u64,
}

impl Subscription<'_> {
    /// Fetches the next batch (waiting up to the long-poll wait).
    pub async fn fetch(&self) -> queue::Result<Vec<Delivery>> {
        self.queue.fetch(self.topic, self.group, self.fetch).await
    }

    /// Acks `receipts`, as many a call as the queue takes.
    pub async fn ack(&self, receipts: &[Receipt]) -> queue::Result<()> {
        for chunk in receipts.chunks(queue::limits::ACK_RECEIPTS_MAX) {
            self.queue.ack(self.topic, self.group, chunk).await?;
        }
        Ok(())
    }

    /// Gives each of `receipts` back for [`Subscription::nack_delay_ms`] with `why`, calling
    /// `nacked` after each one the queue took.
    pub async fn nack_each(
        &self,
        receipts: &[Receipt],
        why: &str,
        mut nacked: impl FnMut(),
    ) -> queue::Result<()> {
        for r in receipts {
            self.nack_for(*r, self.nack_delay_ms, why).await?;
            nacked();
        }
        Ok(())
    }

    /// Gives `receipt` back for `delay_ms` with `why`.
    pub async fn nack_for(&self, receipt: Receipt, delay_ms: u64, why: &str) -> queue::Result<()> {
        self.queue
            .nack(self.topic, self.group, receipt, delay_ms, why)
            .await?;
        Ok(())
    }

    /// Sends `receipt` straight to the dead letters with `why` (a malformed message).
    pub async fn reject(&self, receipt: Receipt, why: &str) -> queue::Result<()> {
        self.queue
            .reject(self.topic, self.group, receipt, why)
            .await?;
        Ok(())
    }
}

/// A queue consumer the shared loop drives.
pub(crate) trait Consume {
    /// Why a step failed.
    type Error: std::fmt::Display + From<queue::Error>;
    /// What the loop keeps for [`Consume::before_step`] from one step to the next.
    type LoopState: Default;
    /// The consumer's name in the logs.
    const NAME: &'static str;

    /// Where it consumes.
    fn subscription(&self) -> Subscription<'_>;
    /// What its steps report to the heartbeat.
    fn liveness(&self) -> &Liveness;
    /// Now, ms since the Unix epoch, by the consumer's clock.
    fn now_ms(&self) -> u64;
    /// The wait after a failed step: its first delay and how it grows.
    fn failure_backoff(&self) -> Backoff;
    /// Work besides consuming, done before each step of [`run_until_stopped`] (the
    /// canceller's periodic sweep); nothing by default.
    async fn before_step(&self, _state: &mut Self::LoopState) {}
    /// Handles a fetched batch (never empty): decides or cancels, then acks.
    async fn handle_batch(&self, batch: Vec<Delivery>) -> Result<(), Self::Error>;
}

/// One step of `consumer`: fetches a batch and handles it; returns how many messages it
/// fetched. The fetch's return and a batch handled both count as progress.
pub(crate) async fn step<C: Consume>(consumer: &C) -> Result<usize, C::Error> {
    let batch = consumer.subscription().fetch().await?;
    consumer.liveness().progressed(consumer.now_ms());
    let n = batch.len();
    if n > 0 {
        consumer.handle_batch(batch).await?;
        consumer.liveness().progressed(consumer.now_ms());
    }
    Ok(n)
}

/// Runs `consumer` until `stop` turns true (checked before each step, so at least every
/// long-poll wait): [`Consume::before_step`], then [`step`]; after a failed step it logs
/// the error and waits the backoff's next delay, cut short by a change of `stop`.
pub(crate) async fn run_until_stopped<C: Consume>(
    consumer: &C,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = consumer.failure_backoff();
    let mut state = C::LoopState::default();
    while !*stop.borrow() {
        consumer.before_step(&mut state).await;
        match step(consumer).await {
            Ok(_) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("{}: {e}; retrying in {} ms", C::NAME, delay.as_millis());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}
