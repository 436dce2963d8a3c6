//! The queue's integration tests, linked as one binary.

mod basic;
mod corruption;
mod crash;
mod model;
mod peek_metrics;
mod support;
