//! Bounded polling on a condition: the shared `poll-kit` with this kit's error (a wait
//! that runs out is [`KitError::Timeout`]).

use crate::KitError;

/// One observation of the awaited condition.
pub(crate) type Probe<T> = poll_kit::Probe<T, KitError>;

pub(crate) use poll_kit::wait_until;

impl From<poll_kit::TimedOut> for KitError {
    fn from(t: poll_kit::TimedOut) -> Self {
        KitError::Timeout {
            what: t.what,
            waited_ms: t.waited_ms,
            last: t.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_timeout_is_this_kits_timeout_error() {
        let err = wait_until::<(), KitError>(
            "never",
            Duration::from_millis(10),
            Duration::from_millis(5),
            || Probe::NotYet("still no".into()),
        )
        .expect_err("never ready");
        let text = err.to_string();
        assert!(text.contains("waiting for never"), "{text}");
        assert!(text.contains("last seen: still no"), "{text}");
    }
}
