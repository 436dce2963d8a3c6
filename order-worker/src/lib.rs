//! Order workers: they turn the queue's backlog of accepted purchases into orders at the
//! speed the database can take, exactly once per purchase, and cancel orders left unpaid
//! at their pay-by time.
//!
//! - [`db`]: the orders database (SQLite by default, PostgreSQL in production), one file
//!   per job under `db/`: `mod.rs` ([`db::Shard`], one database: the pool, connecting, the
//!   statement macros), `shards` ([`OrdersDb`]: one shard or several by sale, each call
//!   routed; no transaction spans two shards), `failover` (a multi-host PostgreSQL shard
//!   follows its primary), `error`
//!   ([`DbError`]), `limits` (its named bounds), `sales` (sales with their settings: end
//!   time, own purchase-token factor, one unit per person; holders; counts), `decide` (a
//!   batch of purchases in one transaction, outcomes, operator rejections), `orders`
//!   (reading and paying an order), `cancel` (due and overdue orders), `heartbeat` (the
//!   `workers` table), `dialect` (the statements whose best form differs by backend) and
//!   `rows` (the rows those statements read and write). Inside `db`, `rows` is below
//!   `dialect`, and `dialect` below `decide` and `cancel`: no circle. The invariants are in
//!   its constraints.
//! - [`flags`]: checks of the flags `gateway` and `order-worker` share (database URLs,
//!   the stock store, the Redis key prefix and its variables), run before anything is
//!   created.
//! - [`purchase`]: the messages: the gateway's purchase and the order's pay-by deadline.
//! - [`limits`]: limits shared across layers (the size of a crew).
//! - `consumer` (crate-private): the one loop both consumers run (fetch, liveness
//!   reports, stop check, retry backoff through `queue::backoff::Backoff`) and their
//!   fetch/ack/nack/reject calls; each consumer only says what it does with a batch.
//! - [`worker`]: [`worker::OrderWorker`] drains the orders topic in batches, one
//!   transaction per batch, publishes each new order's pay-by message, then acks.
//! - [`canceller`]: [`canceller::Canceller`] consumes due pay-by messages and cancels
//!   orders still pending, returning their units; a periodic sweep is the backstop.
//! - [`crew`]: [`crew::Crew`] starts and stops a process's workers and cancellers, and
//!   writes their heartbeats to the `workers` table every second (the database plays
//!   RocketMQ's name server: every gateway sees the workers of every process).
//! - [`liveness`]: each member's stable id (`{host}-{pid}-{kind}-{n}`) and the
//!   [`liveness::Liveness`] its loop updates (last step, messages finished).
//! - [`metrics`]: the crew's counters (and its heartbeat's time) as Prometheus metrics,
//!   for the gateway's `/metrics` and the `order-worker` binary's `--metrics` endpoint.
//! - [`testing`]: scratch SQLite and PostgreSQL databases for tests.
//! - [`allocator`]: the mimalloc settings every service binary applies first thing
//!   (memory kept free ten seconds before it goes back to the kernel).
//!
//! ## Who may import whom
//!
//! The modules form layers; each imports only from the layers below it, never from one
//! above, so there is no import circle:
//!
//! 1. `limits` and `purchase` (plain values and message formats) at the bottom;
//! 2. `db` (uses only those two: it knows nothing of workers, cancellers or crews);
//! 3. `liveness` (uses `db`'s row types), then `consumer` (uses `liveness`);
//! 4. `worker` and `canceller` (use `db`, `purchase`, `liveness` and `consumer`; not each
//!    other);
//! 5. `crew` at the top (starts workers and cancellers, writes heartbeats through `db`),
//!    and `metrics` beside it (reads the counters of `worker`, `canceller` and `crew`).
//!
//! `testing` sits beside the layers and uses only `db`; `allocator` uses nothing of the
//! crate.
//!
//! The same code runs embedded in the all-in-one `gateway` process and as the
//! `order-worker` binary against a `queue serve` broker; any number of workers compete
//! safely (the database decides, the queue redelivers).

pub mod allocator;
pub mod canceller;
mod consumer;
pub mod crew;
pub mod db;
pub mod flags;
pub mod limits;
pub mod liveness;
pub mod metrics;
pub mod purchase;
pub mod testing;
pub mod worker;

pub use db::{DbError, DbOptions, OrdersDb};
pub use purchase::{Deadline, PurchaseMessage};
