//! Bounded polling on a condition, shared by the test kits (`redis-kit`, `pg-kit`).
//!
//! Every wait in the kits is "probe until the condition holds, or give up at a deadline with
//! what was last seen": never a sleep standing in for a condition. The pause between probes
//! only keeps the poll from spinning. Each kit names its own error `E`, which a timeout
//! becomes through `From<TimedOut>`.

use std::thread;
use std::time::{Duration, Instant};

/// One observation of the awaited condition.
#[derive(Debug)]
pub enum Probe<T, E> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the text says what was seen instead (kept for the timeout error).
    NotYet(String),
    /// It never will (e.g. the process exited): stop waiting at once.
    Fatal(E),
}

/// A bounded wait that ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// The condition awaited.
    pub what: String,
    /// How long the wait took, ms.
    pub waited_ms: u128,
    /// The last observation that did not satisfy it.
    pub last: String,
}

/// Probes every `interval` until [`Probe::Ready`], a [`Probe::Fatal`], or `timeout`. The
/// probe runs at least once, and once more at the deadline.
pub fn wait_until<T, E: From<TimedOut>>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Probe<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let last = match probe() {
            Probe::Ready(value) => return Ok(value),
            Probe::Fatal(err) => return Err(err),
            Probe::NotYet(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(E::from(TimedOut {
                what: what.to_owned(),
                waited_ms: started.elapsed().as_millis(),
                last,
            }));
        }
        thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Timeout(TimedOut),
        Gone,
    }

    impl From<TimedOut> for TestError {
        fn from(t: TimedOut) -> Self {
            TestError::Timeout(t)
        }
    }

    #[test]
    fn returns_the_first_ready_value() {
        let mut calls = 0;
        let got: Result<i32, TestError> = wait_until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                calls += 1;
                if calls == 3 {
                    Probe::Ready(calls)
                } else {
                    Probe::NotYet(format!("call {calls}"))
                }
            },
        );
        assert_eq!(got.expect("ready on the third call"), 3);
    }

    #[test]
    fn times_out_with_the_last_observation() {
        let err = wait_until::<(), TestError>(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Probe::NotYet("still no".into()),
        )
        .expect_err("never ready");
        match err {
            TestError::Timeout(t) => {
                assert_eq!(t.what, "never");
                assert_eq!(t.last, "still no");
                assert!(t.waited_ms >= 30, "{t:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fatal_probe_stops_at_once() {
        let started = Instant::now();
        let err = wait_until::<(), TestError>(
            "x",
            Duration::from_secs(60),
            Duration::from_secs(1),
            || Probe::Fatal(TestError::Gone),
        )
        .expect_err("fatal");
        assert_eq!(err, TestError::Gone);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
