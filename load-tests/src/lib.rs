//! Load tests of the flash-sale system: a flash-crowd generator, an invariant auditor and
//! run reports.
//!
//! - [`scenario`]: named presets (CI-sized, small, large, mega) of users, attempts, units, bots,
//!   with bounds on every count ([`scenario::ScenarioError`] names the setting out of them)
//!   and the seed of the crowd's random choices.
//! - [`crowd`]: drives a flash crowd against a running system over HTTP (loopback only,
//!   through the `loadgen` crate's keep-alive connections): page views and countdown
//!   polling before the start, the spike at the start, repeat clicks, retries honouring
//!   `Retry-After`, bots that must be refused, ticket polling and payment of a share of the
//!   orders. Every random choice derives from one seed (`--seed`, `LOAD_TESTS_SEED`, or a
//!   random one), printed at start and recorded in the report, so a run can be replayed.
//! - [`system`]: starts the all-in-one system in this process (gateway, embedded queue,
//!   in-process stock, order workers, canceller; SQLite or PostgreSQL) for a one-command
//!   demo and the tests.
//! - [`audit`]: checks every invariant of the brief against the database and the stock
//!   store; usable on its own against any deployment.
//! - [`overload`]: ten times the gateway's capacity against the all-in-one system, with
//!   a same-run baseline: fast refusals, bounded memory, no 202 lost.
//! - [`soak`]: repeated sales with cancellations over a long run, sampling RSS, open
//!   files, queue segments and database rows, which must stay bounded; a plot of them.
//! - [`hop`]: what one proxy hop costs (a trivial route directly and through nginx,
//!   alternating rounds of one run).
//! - [`outcome`]: what an answer came to (`accepted`, `sold_out`, …), the gateway's codes by
//!   index so that counting one allocates nothing.
//! - [`record`]: what a run records; [`timeline`]: its answers by 100 ms slot, binned for
//!   the report at a width fit for the run's length; [`report`]: JSON, Markdown and SVG
//!   plots of it; [`threshold`]: pass/fail criteria on its figures (`--threshold
//!   p99_purchase_ms<50`, as k6 has them).

pub mod audit;
pub mod crowd;
pub mod hop;
pub mod outcome;
pub mod overload;
pub mod record;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod system;
pub mod threshold;
pub mod timeline;
