//! A durable message queue for the flash-sale system: the engine every purchase passes
//! through. It knows nothing of HTTP or SQL.
//!
//! What it guarantees (each covered by tests, see `ARCHITECTURE.md` and `FORMAT.md`):
//! - a publish is confirmed only after its record is written and fsynced (group commit:
//!   concurrent publishers share one fsync); producer ids are de-duplicated in a window;
//! - consumer groups each see every message; consumers in a group get disjoint leases;
//!   ack, nack with delay, lease expiry and redelivery with attempt counts; dead letters
//!   after a configured number of attempts, with list, replay and discard;
//! - delayed messages of any delay, durable, never early, kept in a compact index;
//! - acks are durable; retention deletes segments every group is done with; backlog limits
//!   make `publish` fail fast with [`Error::Full`];
//! - recovery checks every record, truncates a torn tail (a damaged suffix with nothing
//!   valid after it) and refuses to serve a corrupt segment (damage inside the tail with a
//!   valid record after it included) unless asked to repair it;
//! - a failed write or fsync stops the engine for good: nothing is confirmed after it, and
//!   a restart recovers everything confirmed before it.
//!
//! Modules:
//! - [`addr`]: addresses and queue targets given on command lines, checked before a
//!   binary creates anything; bind errors that name the address.
//! - [`api`]: messages, deliveries, receipts, stats and the [`Queue`] trait.
//! - [`engine`]: [`Engine`], the embedded implementation of [`Queue`].
//! - [`format`](mod@format): the on-disk record format as pure encode/decode functions.
//! - [`config`], [`clock`], [`limits`], [`error`]: settings, injectable time, named limits,
//!   the error type.
//! - [`faults`]: the storage seam through which tests (and `queue serve`'s test-only fail
//!   point) make the writer's writes and fsyncs fail.
//! - `topic` (private): one topic's in-memory state machine (index, groups, delays).
//! - `dedup` (private): the compact producer de-duplication window.
//! - `recovery` (private): opening a topic directory and checking every record.
//! - `writer` (private): the group-commit writer thread; [`histogram`]: the lock-free
//!   fixed-bucket histogram it times fsync rounds with.
//! - [`proto`]: the broker's wire protocol (frames, requests, responses) as pure functions;
//!   `PROTOCOL.md` describes it byte by byte.
//! - [`server`]: [`Server`], the broker serving an engine over TCP.
//! - [`auth`]: the shared [`auth::Secret`] and the HMAC challenge-response that proves it
//!   in the handshake, and the per-address throttle on wrong proofs.
//! - [`client`]: [`Client`], the broker's client, another implementation of [`Queue`].
//! - [`backend`]: [`Backend::open`], embedded, remote or on Redis chosen by one
//!   configuration string (`tcp://HOST:PORT`, `redis://…`, `redis+cluster://…` or a
//!   directory).
//! - `streams` (feature `redis-streams`): `RedisQueue`, the queue on Redis Streams,
//!   standalone or Cluster (`REDIS.md`).
//! - [`signal`]: the SIGTERM/SIGINT wait every long-running binary shuts down on.
//! - [`backoff`]: the exponential backoff schedule every retry loop of the system uses
//!   (the client's reconnects among them).
//! - [`metrics`]: the broker's Prometheus metrics, one `prometheus-client` collector that
//!   reads the engine and the broker at scrape time; `metrics::serve` (feature `http`)
//!   serves them on `/metrics`.
//!
//! Cargo features (all on by default, so `cargo run -p queue --bin queue` and `--bin
//! queue-bench` just work; the other crates depend on this one with
//! `default-features = false` and compile none of their dependencies):
//! - `http`: `metrics::serve` over axum;
//! - `cli`: the `queue` binary (`queue serve` and the operator commands; clap, `http`);
//! - `bench`: the `queue-bench` binary (hdrhistogram, redis for Redis Streams, clap);
//! - `redis-streams`: the Redis Streams backend (redis with cluster support).

pub mod addr;
pub mod api;
pub mod auth;
pub mod backend;
pub mod backoff;
mod bits;
pub mod client;
pub mod clock;
pub mod config;
mod dedup;
pub mod engine;
pub mod error;
pub mod faults;
pub mod format;
mod fsutil;
pub mod histogram;
pub mod limits;
pub mod metrics;
pub mod proto;
mod recovery;
pub mod server;
pub mod signal;
#[cfg(feature = "redis-streams")]
pub mod streams;
mod topic;
mod writer;

pub use api::{
    AckOutcome, Confirm, DeadLetter, Delivery, Due, FetchOptions, GroupStats, Message, MessageId,
    Peeked, Queue, Receipt, StartAt, TopicStats,
};
pub use auth::Secret;
pub use backend::Backend;
pub use client::{Client, ClientConfig};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Durability};
pub use engine::{DLQ_GROUP, DLQ_SUFFIX, Engine, EngineMetrics, PendingPublish};
pub use error::{Error, Result};
pub use histogram::HistogramSnapshot;
pub use recovery::RecoveryReport;
pub use server::{Server, ServerConfig};
