//! The queue's integration tests, linked as one binary.

mod basic;
mod broker;
mod corruption;
mod crash;
mod fuzz_corpus;
mod model;
mod peek_metrics;
mod process;
mod support;
