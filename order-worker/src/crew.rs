//! A process's set of order workers and cancellers, started together and stopped together
//! (the `order-worker` binary and the all-in-one `gateway` both use it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inventory::Inventory;
use queue::{Clock, Queue};

use crate::canceller::{Canceller, CancellerConfig, CancellerMetrics};
use crate::db::OrdersDb;
use crate::worker::{OrderWorker, WorkerConfig, WorkerMetrics};

/// Most order workers one process runs.
pub const WORKERS_MAX: usize = 64;
/// Most cancellers one process runs.
pub const CANCELLERS_MAX: usize = 16;

/// What to start.
#[derive(Debug, Clone)]
pub struct CrewConfig {
    /// Order workers (at most [`WORKERS_MAX`]).
    pub workers: usize,
    /// Cancellers, each consuming pay-by messages and sweeping (at most
    /// [`CANCELLERS_MAX`]; 0: none).
    pub cancellers: usize,
    /// Settings of each worker.
    pub worker: WorkerConfig,
    /// Settings of each canceller.
    pub canceller: CancellerConfig,
}

impl Default for CrewConfig {
    fn default() -> Self {
        CrewConfig {
            workers: 2,
            cancellers: 1,
            worker: WorkerConfig::default(),
            canceller: CancellerConfig::default(),
        }
    }
}

/// Running workers and cancellers.
#[derive(Debug)]
pub struct Crew {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Counters of the workers.
    pub workers: Arc<WorkerMetrics>,
    /// Counters of the cancellers.
    pub cancellers: Arc<CancellerMetrics>,
}

impl Crew {
    /// Starts the crew on the current Tokio runtime.
    pub fn start(
        db: OrdersDb,
        queue: Arc<dyn Queue>,
        inventory: Option<Arc<Inventory>>,
        config: CrewConfig,
        clock: Arc<dyn Clock>,
    ) -> Crew {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let workers = Arc::new(WorkerMetrics::default());
        let cancellers = Arc::new(CancellerMetrics::default());
        let mut tasks = Vec::new();
        for _ in 0..config.workers.min(WORKERS_MAX) {
            let w = OrderWorker::new(
                db.clone(),
                queue.clone(),
                inventory.clone(),
                config.worker.clone(),
                workers.clone(),
                clock.clone(),
            );
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move { w.run(rx).await }));
        }
        for _ in 0..config.cancellers.min(CANCELLERS_MAX) {
            let c = Canceller::new(
                db.clone(),
                queue.clone(),
                inventory.clone(),
                config.canceller.clone(),
                cancellers.clone(),
                clock.clone(),
            );
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move { c.run(rx).await }));
        }
        Crew {
            stop,
            tasks,
            workers,
            cancellers,
        }
    }

    /// Logs the drain rate (purchases finished per second) every `period` until stopped.
    pub fn report_every(&mut self, period: Duration) {
        let metrics = self.workers.clone();
        let cancels = self.cancellers.clone();
        let mut rx = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            let mut last = (Instant::now(), metrics.messages.load(Ordering::Relaxed));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = rx.changed() => return,
                }
                let now = (Instant::now(), metrics.messages.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
                if now.1 != last.1 {
                    println!(
                        "order-worker: drained {:.0} purchases/s ({} ordered, {} rejected, {} cancelled in all)",
                        rate,
                        metrics.ordered.load(Ordering::Relaxed),
                        metrics.rejected_sold_out.load(Ordering::Relaxed)
                            + metrics.rejected_already_bought.load(Ordering::Relaxed)
                            + metrics.rejected_no_such_sale.load(Ordering::Relaxed),
                        cancels.cancelled.load(Ordering::Relaxed) + cancels.swept.load(Ordering::Relaxed),
                    );
                }
                last = now;
            }
        }));
    }

    /// Stops every task after its current batch and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
