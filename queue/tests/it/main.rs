//! The queue's integration tests, linked as one binary.

mod basic;
mod broker;
mod conformance;
mod corruption;
mod crash;
mod fuzz_corpus;
mod model;
mod peek_metrics;
mod prealloc;
mod publish_path;
// The broker as a child process needs the `queue` binary (feature `cli`).
#[cfg(feature = "cli")]
mod process;
// The operator commands on an embedded directory, and flag errors (the `queue` binary).
#[cfg(feature = "cli")]
mod cli;
// Its /readyz test serves the metrics endpoint (feature `http`).
#[cfg(feature = "http")]
mod storage_faults;
mod support;
