//! Named scenarios: how many people, attempts and units, how many bots, how long before
//! the sale opens, how many orders get paid. `ci` is small enough for the test suite;
//! `small` for a laptop; `large` is the end-to-end benchmark's (10,000 units, 1,000,000
//! attempts from 200,000 people); `mega` is `large` with ten times the units (100,000 units,
//! 1,500,000 attempts from 300,000 people), the sell-through benchmark: there the winning
//! purchases, made durable and decided, are a large share of the work rather than a
//! second's worth.

use serde::{Deserialize, Serialize};

/// Most simulated people in one run.
pub const USERS_MAX: u64 = 1_000_000;
/// Most purchase attempts in one run.
pub const ATTEMPTS_MAX: u64 = 20_000_000;
/// Most concurrent connections of one run.
pub const CONNECTIONS_MAX: usize = 2048;
/// Longest run, ms (every phase stops by then).
pub const DEADLINE_MS_MAX: u64 = 30 * 60 * 1000;

/// Why a scenario cannot run: an unknown preset, or a setting out of its bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// No preset has this name.
    #[error("no scenario {name:?}; the presets are {}", Scenario::PRESETS.join(", "))]
    NoSuchPreset {
        /// The name asked for.
        name: String,
    },
    /// A share is outside `0..=1`.
    #[error("{setting} is a share between 0 and 1, not {value}")]
    Share {
        /// Which setting.
        setting: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count is outside its bounds.
    #[error("{setting}: {value} is outside {min}..={max}")]
    OutOfBounds {
        /// Which setting.
        setting: &'static str,
        /// Its value.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// An override names no setting of a scenario.
    #[error("no scenario setting {setting:?}")]
    NoSuchSetting {
        /// The name given.
        setting: String,
    },
    /// A count is below its least value.
    #[error("{setting}: {value} is below {min}")]
    TooSmall {
        /// Which setting.
        setting: &'static str,
        /// Its value.
        value: u64,
        /// The smallest allowed.
        min: u64,
    },
}

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
    /// Stock buckets of the run's sale (1..=`inventory::STOCK_BUCKETS_MAX`): a Redis stock
    /// store splits the units over them (a hot sale over a cluster's masters); the
    /// in-process store ignores it. Records from before it read as 1.
    #[serde(default = "stock_buckets_default")]
    pub stock_buckets: u32,
}

fn stock_buckets_default() -> u32 {
    inventory::STOCK_BUCKETS_DEFAULT
}

impl Scenario {
    /// A preset by name, or the error that names the presets.
    pub fn named(name: &str) -> Result<Scenario, ScenarioError> {
        Scenario::preset(name).ok_or_else(|| ScenarioError::NoSuchPreset {
            name: name.to_string(),
        })
    }

    /// A preset by name: `ci`, `small`, `large`, `mega`.
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
            stock_buckets: inventory::STOCK_BUCKETS_DEFAULT,
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
            // `large` with ten times the units and one and a half times the people and attempts:
            // the sale sells for seconds, not one, so the hard path (purchases that win,
            // made durable, decided) is measured. The rest as `large`.
            "mega" => Some(Scenario {
                name: name.to_string(),
                units: 100_000,
                users: 300_000,
                attempts: 1_500_000,
                ..Scenario::preset("large")?
            }),
            _ => None,
        }
    }

    /// Applies overrides (a setting's name and its value; `None`: not given) and names
    /// the scenario after its preset and them, as it ran: `large (users=300000)`. The
    /// settings: `units`, `users`, `attempts`, `connections`, `stock_buckets`.
    pub fn override_with(
        &mut self,
        overrides: &[(&'static str, Option<u64>)],
    ) -> Result<(), ScenarioError> {
        let mut given = Vec::new();
        for (setting, value) in overrides {
            let Some(v) = *value else {
                continue;
            };
            let too_big = |max: u64| ScenarioError::OutOfBounds {
                setting,
                value: v,
                min: 1,
                max,
            };
            match *setting {
                "units" => self.units = v,
                "users" => self.users = v,
                "attempts" => self.attempts = v,
                "connections" => {
                    self.connections =
                        usize::try_from(v).map_err(|_| too_big(CONNECTIONS_MAX as u64))?;
                }
                "stock_buckets" => {
                    self.stock_buckets = u32::try_from(v)
                        .map_err(|_| too_big(u64::from(inventory::STOCK_BUCKETS_MAX)))?;
                }
                other => {
                    return Err(ScenarioError::NoSuchSetting {
                        setting: other.to_string(),
                    });
                }
            }
            given.push(format!("{setting}={v}"));
        }
        if !given.is_empty() {
            self.name = format!("{} ({})", self.name, given.join(", "));
        }
        Ok(())
    }

    /// The preset names.
    pub const PRESETS: [&'static str; 4] = ["ci", "small", "large", "mega"];

    /// Checks the bounds; the first setting out of them is the error.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let share = |setting: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(ScenarioError::Share { setting, value })
            }
        };
        let count = |setting: &'static str, value: u64, max: u64| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ScenarioError::OutOfBounds {
                    setting,
                    value,
                    min: 1,
                    max,
                })
            }
        };
        share("bot_share", self.bot_share)?;
        share("repeat_share", self.repeat_share)?;
        share("pay_share", self.pay_share)?;
        count("units", self.units, inventory::UNITS_MAX)?;
        count("users", self.users, USERS_MAX)?;
        count("attempts", self.attempts, ATTEMPTS_MAX)?;
        // A usize fits in a u64 on every target this builds for; the fallback only keeps
        // the conversion total.
        count(
            "connections",
            u64::try_from(self.connections).unwrap_or(u64::MAX),
            CONNECTIONS_MAX as u64,
        )?;
        count("deadline_ms", self.deadline_ms, DEADLINE_MS_MAX)?;
        count(
            "stock_buckets",
            u64::from(self.stock_buckets),
            u64::from(inventory::STOCK_BUCKETS_MAX),
        )?;
        if self.pay_window_ms == 0 {
            return Err(ScenarioError::TooSmall {
                setting: "pay_window_ms",
                value: self.pay_window_ms,
                min: 1,
            });
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
    fn overrides_are_applied_and_named() {
        let mut s = Scenario::preset("large").expect("large");
        s.override_with(&[("units", None), ("users", Some(300_000))])
            .expect("valid");
        assert_eq!(s.name, "large (users=300000)");
        assert_eq!(s.users, 300_000);
        let mut s = Scenario::preset("ci").expect("ci");
        s.override_with(&[
            ("units", Some(5)),
            ("attempts", Some(100)),
            ("connections", Some(4)),
            ("stock_buckets", Some(2)),
        ])
        .expect("valid");
        assert_eq!(
            s.name,
            "ci (units=5, attempts=100, connections=4, stock_buckets=2)"
        );
        assert_eq!(
            (s.units, s.attempts, s.connections, s.stock_buckets),
            (5, 100, 4, 2)
        );
        let mut s = Scenario::preset("ci").expect("ci");
        s.override_with(&[]).expect("nothing to apply");
        assert_eq!(s.name, "ci", "no overrides, the preset's name");
        assert!(matches!(
            s.override_with(&[("stock_buckets", Some(u64::MAX))]),
            Err(ScenarioError::OutOfBounds { .. })
        ));
        assert!(matches!(
            s.override_with(&[("colour", Some(1))]),
            Err(ScenarioError::NoSuchSetting { .. })
        ));
    }

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
        let mega = Scenario::preset("mega").expect("mega");
        assert_eq!(
            (mega.units, mega.users, mega.attempts),
            (100_000, 300_000, 1_500_000)
        );
        assert_eq!(mega.name, "mega");
        assert_eq!(
            Scenario {
                name: "large".to_string(),
                units: large.units,
                users: large.users,
                attempts: large.attempts,
                ..mega
            },
            large,
            "mega is large but for its units, people and attempts"
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
                stock_buckets: 0,
                ..ok.clone()
            },
            Scenario {
                stock_buckets: inventory::STOCK_BUCKETS_MAX + 1,
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

    #[test]
    fn errors_name_the_setting_and_its_bounds() {
        let ok = Scenario::preset("ci").expect("ci");
        let err = Scenario {
            units: 0,
            ..ok.clone()
        }
        .validate()
        .expect_err("no units");
        assert_eq!(
            err.to_string(),
            format!("units: 0 is outside 1..={}", inventory::UNITS_MAX)
        );
        let err = Scenario {
            repeat_share: 2.0,
            ..ok.clone()
        }
        .validate()
        .expect_err("a share above 1");
        assert_eq!(
            err.to_string(),
            "repeat_share is a share between 0 and 1, not 2"
        );
        let err = Scenario {
            pay_window_ms: 0,
            ..ok
        }
        .validate()
        .expect_err("no pay window");
        assert_eq!(err.to_string(), "pay_window_ms: 0 is below 1");
        let err = Scenario::named("huge").expect_err("no such preset");
        assert_eq!(
            err.to_string(),
            "no scenario \"huge\"; the presets are ci, small, large, mega"
        );
    }
}
