//! A process's set of order workers and cancellers, started together and stopped together
//! (the `order-worker` binary and the all-in-one `gateway` both use it).
//!
//! Heartbeats: as RocketMQ's brokers report to the name server, a crew reports its members
//! to the database. Each member has a stable id and a shared [`Liveness`] its loop updates;
//! one task writes every member's row of the `workers` table each [`HEARTBEAT_PERIOD`]
//! ([`OrdersDb::heartbeat`]), so every gateway sees the workers of every process: a stale
//! `beat_ms` means a dead process, a stale `progress_ms` under fresh beats a stuck loop.
//! [`Crew::stop`] writes the last beats and marks the members stopped. Database errors of
//! the heartbeat are logged (at most one warning every [`HEARTBEAT_WARN_EVERY`]) and never
//! stop the crew.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inventory::Inventory;
use queue::{Clock, Queue};

use crate::canceller::{Canceller, CancellerConfig, CancellerMetrics};
use crate::db::{OrdersDb, WorkerBeat, WorkerKind};
use crate::liveness::{Liveness, Member};
use crate::worker::{OrderWorker, WorkerConfig, WorkerMetrics};

// The crew's sizes live in `limits`, below both this module and the database (which bounds
// a heartbeat by them).
pub use crate::limits::{CANCELLERS_MAX, WORKERS_MAX};
/// How often a crew writes its members' heartbeats.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// At most one warning about failing heartbeats this often (the others are counted).
pub const HEARTBEAT_WARN_EVERY: Duration = Duration::from_secs(30);
/// Longest [`Crew::stop`] waits for the database to take the last beats.
pub const STOP_BEAT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Counters of a crew's heartbeat task.
#[derive(Debug, Default)]
pub struct HeartbeatMetrics {
    /// Heartbeats written (each with every member's row).
    pub written: AtomicU64,
    /// Heartbeats that failed (logged, rate-limited; the next one tries again).
    pub failed: AtomicU64,
    /// Stale rows of other processes' members pruned.
    pub pruned: AtomicU64,
    /// When the last heartbeat was written, ms since the Unix epoch by the crew's clock;
    /// 0 before the first (`orders_heartbeat_timestamp_seconds`).
    pub last_written_ms: AtomicU64,
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
    /// Counters of the heartbeats.
    pub heartbeats: Arc<HeartbeatMetrics>,
    members: Arc<[Member]>,
    db: OrdersDb,
    clock: Arc<dyn Clock>,
}

impl Crew {
    /// Starts the crew on the current Tokio runtime: its workers, its cancellers, and the
    /// task writing their heartbeats every [`HEARTBEAT_PERIOD`] (the first at once).
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
        let mut members = Vec::new();
        let started = clock.now_ms();
        for _ in 0..config.workers.min(WORKERS_MAX) {
            let member = Member::new(WorkerKind::Worker, started);
            let w = OrderWorker::new(
                db.clone(),
                queue.clone(),
                inventory.clone(),
                config.worker.clone(),
                workers.clone(),
                clock.clone(),
            )
            .with_liveness(member.liveness.clone());
            members.push(member);
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move { w.run(rx).await }));
        }
        for _ in 0..config.cancellers.min(CANCELLERS_MAX) {
            let member = Member::new(WorkerKind::Canceller, started);
            let c = Canceller::new(
                db.clone(),
                queue.clone(),
                inventory.clone(),
                config.canceller.clone(),
                cancellers.clone(),
                clock.clone(),
            )
            .with_liveness(member.liveness.clone());
            members.push(member);
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move { c.run(rx).await }));
        }
        let members: Arc<[Member]> = members.into();
        let beats = Arc::new(HeartbeatMetrics::default());
        if !members.is_empty() {
            tasks.push(tokio::spawn(heartbeats(
                db.clone(),
                members.clone(),
                clock.clone(),
                beats.clone(),
                rx,
            )));
        }
        Crew {
            stop,
            tasks,
            workers,
            cancellers,
            heartbeats: beats,
            members,
            db,
            clock,
        }
    }

    /// The workers and cancellers, as their heartbeats report them.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Each member's heartbeat row as of now (what the next beat writes).
    pub fn beats(&self) -> Vec<WorkerBeat> {
        let now = self.clock.now_ms();
        self.members.iter().map(|m| m.beat(now)).collect()
    }

    /// The liveness of the member `id`, if it is one of this crew's.
    pub fn liveness(&self, id: &str) -> Option<&Arc<Liveness>> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| &m.liveness)
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

    /// Stops every task after its current batch and waits for them, then writes the
    /// members' last beats and marks them stopped (waiting at most [`STOP_BEAT_TIMEOUT`] for
    /// the database; a failure is logged).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if self.members.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let beats: Vec<WorkerBeat> = self.members.iter().map(|m| m.beat(now)).collect();
        let ids: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        let db = &self.db;
        let last = async {
            db.heartbeat(&beats, now).await?;
            db.mark_stopped(&ids, now).await
        };
        match tokio::time::timeout(STOP_BEAT_TIMEOUT, last).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("marking the crew's workers stopped: {e}"),
            Err(_) => tracing::warn!(
                "marking the crew's workers stopped: no answer within {STOP_BEAT_TIMEOUT:?}"
            ),
        }
    }
}

/// The heartbeat task: writes every member's beat each [`HEARTBEAT_PERIOD`] until `stop`
/// turns true (or its sender is dropped). Errors are logged, rate-limited, and the beats go
/// on.
async fn heartbeats(
    db: OrdersDb,
    members: Arc<[Member]>,
    clock: Arc<dyn Clock>,
    metrics: Arc<HeartbeatMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warn: Option<Instant> = None;
    let mut suppressed: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = clock.now_ms();
        let beats: Vec<WorkerBeat> = members.iter().map(|m| m.beat(now)).collect();
        // A stop does not wait for a database that hangs (the pool's acquire timeout).
        let result = tokio::select! {
            r = db.heartbeat(&beats, now) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(pruned) => {
                metrics.written.fetch_add(1, Ordering::Relaxed);
                metrics.pruned.fetch_add(pruned, Ordering::Relaxed);
                metrics.last_written_ms.fetch_max(now, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                if last_warn.is_none_or(|t| t.elapsed() >= HEARTBEAT_WARN_EVERY) {
                    tracing::warn!(
                        "heartbeat of {} workers: {e} ({suppressed} more failures not logged)",
                        members.len()
                    );
                    last_warn = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
            }
        }
    }
}
