//! [`AuthBudget`]: one global budget of admin-secret guesses, shared by the admin sign-in
//! form and `Authorization: Bearer` on every admin route, that no flag turns off (the
//! per-IP throttle of the sign-in form can be; this one cannot).
//!
//! The rule: every attempt takes a guess from the budget *before* its secret is compared
//! (so however many arrive at once, at most the budget's worth are ever compared), and a
//! correct secret gives its guess back. Wrong guesses thus drain the budget, which refills
//! at [`ADMIN_GUESSES_PER_S`] up to [`ADMIN_GUESSES_BURST`]; an empty budget answers 429
//! with `Retry-After` without comparing anything. The admin's own requests never spend
//! from it, but while a flood of wrong guesses keeps it empty the admin's sign-in and
//! bearer calls wait too: the secret cannot be checked without being guessable, and a
//! budget that let the right secret through while refusing wrong ones would answer the
//! guess. An admin already signed in (the cookie, an HMAC no one can guess) is not slowed
//! at all. Time is the gateway's clock (milliseconds), so tests step it.

use std::sync::Mutex;

/// Wrong admin-secret guesses allowed per second, across all clients.
pub const ADMIN_GUESSES_PER_S: u64 = 2;
/// Wrong guesses allowed in a burst (the budget's size).
pub const ADMIN_GUESSES_BURST: u64 = 10;

/// The global budget of admin-secret guesses (a token bucket on the gateway's clock).
#[derive(Debug)]
pub struct AuthBudget {
    per_s: u64,
    burst: u64,
    /// Guesses left, in thousandths, and when they were counted (ms).
    bucket: Mutex<(u64, u64)>,
}

/// A guess taken from the budget: given back by [`Guess::correct`], spent otherwise.
#[must_use = "a guess is spent unless given back"]
#[derive(Debug)]
pub struct Guess<'a> {
    budget: &'a AuthBudget,
}

impl Guess<'_> {
    /// The secret was right: the guess goes back into the budget.
    pub fn correct(self) {
        let mut b = self.budget.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.0 = (b.0 + 1000).min(self.budget.burst * 1000);
    }
}

impl Default for AuthBudget {
    fn default() -> Self {
        AuthBudget::new(ADMIN_GUESSES_PER_S, ADMIN_GUESSES_BURST)
    }
}

impl AuthBudget {
    /// A full budget of `burst` guesses refilling at `per_s` a second (both at least 1).
    pub fn new(per_s: u64, burst: u64) -> Self {
        let burst = burst.max(1);
        AuthBudget {
            per_s: per_s.max(1),
            burst,
            bucket: Mutex::new((burst * 1000, 0)),
        }
    }

    /// Takes one guess at `now_ms`, or says in how many ms one will be there.
    pub fn guess(&self, now_ms: u64) -> Result<Guess<'_>, u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (left, at) = *b;
        let refill = now_ms.saturating_sub(at).saturating_mul(self.per_s);
        let left = left.saturating_add(refill).min(self.burst * 1000);
        *b = (left, now_ms.max(at));
        if left < 1000 {
            return Err((1000 - left).div_ceil(self.per_s).max(1));
        }
        b.0 = left - 1000;
        Ok(Guess { budget: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_guesses_drain_the_budget_and_it_refills_by_the_clock() {
        let b = AuthBudget::new(2, 3);
        for _ in 0..3 {
            drop(b.guess(1_000).expect("within the burst"));
        }
        assert_eq!(b.guess(1_000).expect_err("empty"), 500);
        // Half a second later: one guess back.
        drop(b.guess(1_500).expect("refilled"));
        assert!(b.guess(1_500).is_err());
        // Long after: full again, never more than the burst.
        for _ in 0..3 {
            drop(b.guess(100_000).expect("full"));
        }
        assert!(b.guess(100_000).is_err());
    }

    #[test]
    fn a_correct_secret_gives_its_guess_back() {
        let b = AuthBudget::new(1, 2);
        for _ in 0..100 {
            b.guess(0).expect("never spent").correct();
        }
        drop(b.guess(0).expect("one"));
        drop(b.guess(0).expect("two"));
        assert!(b.guess(0).is_err(), "two wrong guesses emptied it");
    }

    #[test]
    fn a_clock_going_back_refills_nothing() {
        let b = AuthBudget::new(10, 1);
        drop(b.guess(5_000).expect("one"));
        assert!(b.guess(1_000).is_err());
        assert!(b.guess(5_000).is_err());
        assert!(b.guess(5_100).is_ok());
    }
}
