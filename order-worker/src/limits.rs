//! Limits shared across the layers of the crate: the size of a process's crew. The crew
//! starts at most this many members, and the database takes at most this many heartbeat
//! rows in one call; both import them from here, so the database layer needs nothing
//! from the crew.

/// Most order workers one process runs.
pub const WORKERS_MAX: usize = 64;
/// Most cancellers one process runs.
pub const CANCELLERS_MAX: usize = 16;
