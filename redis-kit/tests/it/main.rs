//! redis-kit's integration tests, linked as one binary. Each starts real `redis-server`
//! processes on free ports (never the shared 6379) and asserts on what they report.

mod cluster;
mod sentinel;
mod standalone;
