//! One exponential backoff schedule for every retry loop of the system: the broker
//! client's reconnects, the order workers' and cancellers' queue and database retries.
//! The callers keep their own stop conditions (attempt counts, lease budgets, a stop
//! signal); this only says how long to wait next.

use std::time::Duration;

/// Delays that start at `initial_ms` and double after each wait, up to `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    /// A schedule from `initial_ms` (at least 1) doubling to at most `max_ms` (at least
    /// the initial delay).
    pub fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        let initial_ms = initial_ms.max(1);
        let max_ms = max_ms.max(initial_ms);
        Backoff {
            initial_ms,
            max_ms,
            next_ms: initial_ms,
        }
    }

    /// The delay the next wait will take, ms (without advancing).
    pub fn peek_ms(&self) -> u64 {
        self.next_ms
    }

    /// The delay to wait now; the one after it is doubled (capped).
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next_ms;
        self.next_ms = now.saturating_mul(2).min(self.max_ms);
        Duration::from_millis(now)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(20, 100);
        let waits: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(
            waits,
            [20, 40, 80, 100, 100].map(Duration::from_millis).to_vec()
        );
        b.reset();
        assert_eq!(b.peek_ms(), 20);
    }

    #[test]
    fn zero_and_inverted_bounds_are_made_sane() {
        let mut b = Backoff::new(0, 0);
        assert_eq!(b.next_delay(), Duration::from_millis(1));
        assert_eq!(b.next_delay(), Duration::from_millis(1));
    }
}
