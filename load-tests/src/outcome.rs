//! What an answer came to, as the crowd counts it: `accepted`/`ok` for successes, else the
//! gateway's JSON error code, else `http_STATUS`.
//!
//! The codes the gateway sends (and the crowd's own, such as `connection_error`) are
//! [`KNOWN_OUTCOMES`]: an [`Outcome`] of one of them is its index, so that counting an
//! answer (in the timeline's slot, in the latency per route and outcome) is an array index
//! rather than a string hashed or compared, and allocates nothing. Any other code is kept
//! under its own name, and counted and reported the same way.

/// The error codes the gateway answers with, and this crowd's own outcomes. The order is
/// only the order of the indices; nothing reports it.
pub const KNOWN_OUTCOMES: [&str; 27] = [
    "accepted",
    "ok",
    "sold_out",
    "bad_token",
    "throttled",
    "busy",
    "already_bought",
    "tokens_exhausted",
    "outcome_unknown",
    "unavailable",
    "overloaded",
    "timeout",
    "not_ready",
    "not_found",
    "ended",
    "paused",
    "bad_request",
    "bad_captcha",
    "captcha_expired",
    "unauthorized",
    "cross_site",
    "conflict",
    "forbidden",
    "internal",
    "connection_error",
    "http_429",
    "http_503",
];

/// How many outcomes have an index of their own.
pub const KNOWN: usize = KNOWN_OUTCOMES.len();
// An index fits the `u8` of [`Outcome::Known`].
const _: () = assert!(KNOWN <= 256, "a known outcome's index must fit a u8");

/// An answer's outcome: one of [`KNOWN_OUTCOMES`] by its index, or another code by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// `KNOWN_OUTCOMES[i]`.
    Known(u8),
    /// A code that is not in [`KNOWN_OUTCOMES`].
    Other(Box<str>),
}

impl Outcome {
    /// `accepted` (a 202).
    pub const ACCEPTED: Outcome = Outcome::Known(0);
    /// `ok` (any other success).
    pub const OK: Outcome = Outcome::Known(1);
    /// `sold_out`.
    pub const SOLD_OUT: Outcome = Outcome::Known(2);
    /// `connection_error`: the request got no answer.
    pub const CONNECTION_ERROR: Outcome = Outcome::Known(24);

    /// The outcome named `code`: its index if it is known, else the code itself.
    pub fn of(code: &str) -> Outcome {
        match KNOWN_OUTCOMES.iter().position(|k| *k == code) {
            // KNOWN_OUTCOMES has at most 256 entries (a constant assertion holds it).
            Some(i) => Outcome::Known(i as u8),
            None => Outcome::Other(code.into()),
        }
    }

    /// The outcome of an HTTP status without an error code: `http_STATUS`.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            429 => Outcome::of("http_429"),
            503 => Outcome::of("http_503"),
            _ => Outcome::Other(format!("http_{status}").into()),
        }
    }

    /// Its name, as reported.
    pub fn as_str(&self) -> &str {
        match self {
            Outcome::Known(i) => KNOWN_OUTCOMES[usize::from(*i)],
            Outcome::Other(code) => code,
        }
    }

    /// Its index in [`KNOWN_OUTCOMES`], if it has one.
    pub fn known(&self) -> Option<usize> {
        match self {
            Outcome::Known(i) => Some(usize::from(*i)),
            Outcome::Other(_) => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_an_index_and_reads_back() {
        for (i, code) in KNOWN_OUTCOMES.iter().enumerate() {
            let o = Outcome::of(code);
            assert_eq!(o.known(), Some(i), "{code}");
            assert_eq!(o.as_str(), *code);
        }
        let mut sorted = KNOWN_OUTCOMES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KNOWN, "no code twice");
    }

    #[test]
    fn the_named_constants_are_their_codes() {
        assert_eq!(Outcome::ACCEPTED.as_str(), "accepted");
        assert_eq!(Outcome::OK.as_str(), "ok");
        assert_eq!(Outcome::SOLD_OUT.as_str(), "sold_out");
        assert_eq!(Outcome::CONNECTION_ERROR.as_str(), "connection_error");
    }

    #[test]
    fn another_code_keeps_its_name() {
        let o = Outcome::of("teapot");
        assert_eq!((o.known(), o.as_str()), (None, "teapot"));
        assert_eq!(Outcome::of_status(418).as_str(), "http_418");
        assert_eq!(Outcome::of_status(503), Outcome::of("http_503"));
        assert_eq!(
            Outcome::of_status(429).known(),
            Outcome::of("http_429").known()
        );
    }
}
