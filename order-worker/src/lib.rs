//! Order workers: they turn the queue's backlog of accepted purchases into orders at the
//! speed the database can take, exactly once per purchase, and cancel orders left unpaid
//! at their pay-by time.
//!
//! - [`db`]: the orders database (SQLite by default, PostgreSQL in production): sales
//!   (with their settings: end time, own purchase-token factor, one unit per person),
//!   orders, the outcome of every purchase, payments and cancellations, with the
//!   invariants in its constraints; and the `workers` table of heartbeats.
//! - [`purchase`]: the messages: the gateway's purchase and the order's pay-by deadline.
//! - [`worker`]: [`worker::OrderWorker`] drains the orders topic in batches, one
//!   transaction per batch, publishes each new order's pay-by message, then acks.
//! - [`testing`]: scratch SQLite and PostgreSQL databases for tests.
//! - [`canceller`]: [`canceller::Canceller`] consumes due pay-by messages and cancels
//!   orders still pending, returning their units; a periodic sweep is the backstop.
//!
//! - [`crew`]: [`crew::Crew`] starts and stops a process's workers and cancellers, and
//!   writes their heartbeats to the `workers` table every second (the database plays
//!   RocketMQ's name server: every gateway sees the workers of every process).
//! - [`liveness`]: each member's stable id (`{host}-{pid}-{kind}-{n}`) and the
//!   [`liveness::Liveness`] its loop updates (last step, messages finished).
//!
//! The same code runs embedded in the all-in-one `gateway` process and as the
//! `order-worker` binary against a `queue serve` broker; any number of workers compete
//! safely (the database decides, the queue redelivers).

pub mod canceller;
pub mod crew;
pub mod db;
pub mod liveness;
pub mod purchase;
pub mod testing;
pub mod worker;

pub use db::{DbError, DbOptions, OrdersDb};
pub use purchase::{Deadline, PurchaseMessage};
