//! Bounded polling on a condition.
//!
//! Every wait in the kit is "probe until the condition holds, or give up at a deadline with
//! what was last seen": never a sleep standing in for a condition. The pause between probes
//! only keeps the poll from spinning.

use std::thread;
use std::time::{Duration, Instant};

use crate::KitError;

/// One observation of the awaited condition.
pub(crate) enum Probe<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the text says what was seen instead (kept for the timeout error).
    NotYet(String),
    /// It never will (e.g. the process exited): stop waiting at once.
    Fatal(KitError),
}

/// Probes every `interval` until [`Probe::Ready`], a [`Probe::Fatal`], or `timeout`. The
/// probe runs at least once, and once more at the deadline.
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Probe<T>,
) -> Result<T, KitError> {
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
            return Err(KitError::Timeout {
                what: what.to_owned(),
                waited_ms: started.elapsed().as_millis(),
                last,
            });
        }
        thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ready_value() {
        let mut calls = 0;
        let got = wait_until(
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
        let err = wait_until::<()>(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Probe::NotYet("still no".into()),
        )
        .expect_err("never ready");
        let text = err.to_string();
        assert!(text.contains("waiting for never"), "{text}");
        assert!(text.contains("last seen: still no"), "{text}");
    }

    #[test]
    fn a_fatal_probe_stops_at_once() {
        let err = wait_until::<()>("x", Duration::from_secs(60), Duration::from_secs(1), || {
            Probe::Fatal(KitError::Invalid("gone".into()))
        })
        .expect_err("fatal");
        assert!(matches!(err, KitError::Invalid(_)));
    }
}
