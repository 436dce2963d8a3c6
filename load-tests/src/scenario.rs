//! Named scenarios: how many people, attempts and units, how many bots, how long before
//! the sale opens, how many orders get paid. `ci` is small enough for the test suite;
//! `small` for a laptop; `large` is the end-to-end benchmark's (10,000 units, 1,000,000
//! attempts from 200,000 people).

use serde::{Deserialize, Serialize};

/// Most simulated people in one run.
pub const USERS_MAX: u64 = 1_000_000;
/// Most purchase attempts in one run.
pub const ATTEMPTS_MAX: u64 = 20_000_000;
/// Most concurrent connections of one run.
pub const CONNECTIONS_MAX: usize = 2048;
/// Longest run, ms (every phase stops by then).
pub const DEADLINE_MS_MAX: u64 = 30 * 60 * 1000;

/// A flash crowd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// Units on sale.
    pub units: u64,
    /// Simulated people (humans and bots).
    pub users: u64,
    /// Purchase attempts in all: token and purchase requests of humans, forged requests of
    /// bots.
    pub attempts: u64,
    /// Share of the people who are bots (rapid repeats, forged or reused tokens, no
    /// captcha); every one of their requests must be refused.
    pub bot_share: f64,
    /// Share of a human's accepted purchases followed by one more click (a double click).
    pub repeat_share: f64,
    /// Share of the orders the buyers pay; the rest are left to be cancelled.
    pub pay_share: f64,
    /// The sale opens this long after everyone has signed in (page views and countdown
    /// polling meanwhile).
    pub opens_in_ms: u64,
    /// Each human's page views and countdown polls before the start.
    pub polls_per_user: u32,
    /// The sale's pay window.
    pub pay_window_ms: u64,
    /// Concurrent connections (each runs one request at a time).
    pub connections: usize,
    /// The whole run stops by then, whatever is left.
    pub deadline_ms: u64,
    /// The seed of the crowd's random choices (who acts, bots' tricks, think times, repeat
    /// clicks, who pays, the run id); `None`: the `LOAD_TESTS_SEED` environment variable's,
    /// else a random one. A run records the seed it used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Scenario {
    /// A preset by name: `ci`, `small`, `large`.
    pub fn preset(name: &str) -> Option<Scenario> {
        let base = Scenario {
            name: name.to_string(),
            units: 50,
            users: 400,
            attempts: 2_000,
            bot_share: 0.05,
            repeat_share: 0.3,
            pay_share: 0.5,
            opens_in_ms: 1_500,
            polls_per_user: 2,
            pay_window_ms: 600_000,
            connections: 32,
            deadline_ms: 120_000,
            seed: None,
        };
        match name {
            "ci" => Some(base),
            "small" => Some(Scenario {
                units: 1_000,
                users: 20_000,
                attempts: 100_000,
                opens_in_ms: 3_000,
                connections: 128,
                deadline_ms: 300_000,
                ..base
            }),
            "large" => Some(Scenario {
                units: 10_000,
                users: 200_000,
                attempts: 1_000_000,
                opens_in_ms: 5_000,
                polls_per_user: 1,
                connections: 256,
                deadline_ms: 900_000,
                ..base
            }),
            _ => None,
        }
    }

    /// The preset names.
    pub const PRESETS: [&'static str; 3] = ["ci", "small", "large"];

    /// Checks the bounds; the reason when a setting is out of them.
    pub fn validate(&self) -> Result<(), String> {
        let share = |v: f64, what: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} is a share between 0 and 1, not {v}"))
            }
        };
        share(self.bot_share, "bot_share")?;
        share(self.repeat_share, "repeat_share")?;
        share(self.pay_share, "pay_share")?;
        if self.units == 0 || self.units > inventory::UNITS_MAX {
            return Err(format!("units: 1..={}", inventory::UNITS_MAX));
        }
        if self.users == 0 || self.users > USERS_MAX {
            return Err(format!("users: 1..={USERS_MAX}"));
        }
        if self.attempts == 0 || self.attempts > ATTEMPTS_MAX {
            return Err(format!("attempts: 1..={ATTEMPTS_MAX}"));
        }
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return Err(format!("connections: 1..={CONNECTIONS_MAX}"));
        }
        if self.deadline_ms == 0 || self.deadline_ms > DEADLINE_MS_MAX {
            return Err(format!("deadline_ms: 1..={DEADLINE_MS_MAX}"));
        }
        if self.pay_window_ms == 0 {
            return Err("pay_window_ms: at least 1".into());
        }
        Ok(())
    }

    /// Bots among the people.
    pub fn bots(&self) -> u64 {
        ((self.users as f64) * self.bot_share).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_distinct() {
        for name in Scenario::PRESETS {
            let s = Scenario::preset(name).expect("a preset");
            assert_eq!(s.name, name);
            assert_eq!(s.validate(), Ok(()));
        }
        let large = Scenario::preset("large").expect("large");
        assert_eq!(
            (large.units, large.users, large.attempts),
            (10_000, 200_000, 1_000_000)
        );
        assert!(Scenario::preset("huge").is_none());
    }

    #[test]
    fn bounds_are_checked() {
        let ok = Scenario::preset("ci").expect("ci");
        for bad in [
            Scenario {
                bot_share: 1.5,
                ..ok.clone()
            },
            Scenario {
                pay_share: -0.1,
                ..ok.clone()
            },
            Scenario {
                units: 0,
                ..ok.clone()
            },
            Scenario {
                users: USERS_MAX + 1,
                ..ok.clone()
            },
            Scenario {
                attempts: 0,
                ..ok.clone()
            },
            Scenario {
                connections: 0,
                ..ok.clone()
            },
            Scenario {
                deadline_ms: DEADLINE_MS_MAX + 1,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(ok.bots(), 20);
    }
}
