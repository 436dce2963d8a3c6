//! Pass/fail thresholds on a run's figures, as k6 has them: `--threshold
//! p99_purchase_ms<50` (repeatable). A run that misses one fails: the report and the JSON
//! summary say which, and `load-tests` exits with status 1.
//!
//! A threshold is `METRIC OP VALUE`: `OP` one of `<`, `<=`, `>`, `>=`, `==`, `!=`, `VALUE`
//! a finite number, spaces allowed around them. The metrics ([`METRICS`] lists them for
//! `--help` and the errors):
//!
//! | metric | what |
//! | --- | --- |
//! | `p50_ROUTE_ms`, `p90_ROUTE_ms`, `p99_ROUTE_ms`, `p999_ROUTE_ms`, `max_ROUTE_ms` | latency of every answer of `ROUTE` ([`ROUTES`]), ms |
//! | `error_rate` | connection errors ÷ requests sent (0..1) |
//! | `attempts_per_s` | purchase attempts per second over the attempt phase |
//! | `sold_out_after_s` | seconds from the opening to the first `sold_out` |
//! | `last_decision_after_s` | seconds from the opening to the last decision |
//! | `peak_backlog` | highest backlog seen |
//! | `accepted`, `ordered`, `unresolved`, `paid`, `bots_accepted`, `errors` | counts of the run |
//!
//! A metric the run has no value for (a route that saw no request, a sale that did not
//! sell out) fails its threshold: a criterion that cannot be checked is not met.

use serde::{Deserialize, Serialize};

use crate::record::RunRecord;

/// Routes the crowd sends requests on (the latency metrics' `ROUTE`).
pub const ROUTES: [&str; 8] = [
    "login", "page", "sales", "token", "purchase", "ticket", "pay", "live",
];
/// Latency statistics of a route (`STAT_ROUTE_ms`).
const STATS: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];
/// The run-wide metrics.
const RUN_METRICS: [&str; 11] = [
    "error_rate",
    "attempts_per_s",
    "sold_out_after_s",
    "last_decision_after_s",
    "peak_backlog",
    "accepted",
    "ordered",
    "unresolved",
    "paid",
    "bots_accepted",
    "errors",
];
/// Most thresholds of one run.
pub const THRESHOLDS_MAX: usize = 64;
/// Longest threshold text accepted.
const TEXT_MAX: usize = 200;

/// Every metric a threshold may name, for `--help` and error messages.
pub const METRICS: &str = "p50_ROUTE_ms, p90_ROUTE_ms, p99_ROUTE_ms, p999_ROUTE_ms, max_ROUTE_ms \
     (ROUTE: login, page, sales, token, purchase, ticket, pay, live), error_rate, \
     attempts_per_s, sold_out_after_s, last_decision_after_s, peak_backlog, accepted, \
     ordered, unresolved, paid, bots_accepted, errors";

/// Why a threshold cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// No comparison operator.
    #[error(
        "{text:?} has no comparison: write METRIC OP VALUE, e.g. p99_purchase_ms<50 (OP: <, <=, >, >=, ==, !=)"
    )]
    NoOperator {
        /// The text given.
        text: String,
    },
    /// The metric is not one of [`METRICS`].
    #[error("{text:?}: no metric {metric:?}; the metrics are {METRICS}")]
    UnknownMetric {
        /// The text given.
        text: String,
        /// The metric named.
        metric: String,
    },
    /// The value is not a finite number.
    #[error("{text:?}: {value:?} is not a number")]
    BadValue {
        /// The text given.
        text: String,
        /// The value given.
        value: String,
    },
    /// The text is longer than any threshold.
    #[error("a threshold is at most {TEXT_MAX} characters")]
    TooLong,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Longest first, so `<=` is not read as `<`.
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    fn symbol(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(_, o)| *o == self)
            .map_or("?", |(s, _)| s)
    }

    /// Whether `actual OP limit` holds.
    pub fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
            Op::Eq => actual == limit,
            Op::Ne => actual != limit,
        }
    }
}

/// One threshold: `metric op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The metric's name (one of [`METRICS`]).
    pub metric: String,
    /// The comparison.
    pub op: Op,
    /// The limit.
    pub value: f64,
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.metric, self.op.symbol(), self.value)
    }
}

fn known_metric(metric: &str) -> bool {
    if RUN_METRICS.contains(&metric) {
        return true;
    }
    let Some(rest) = metric.strip_suffix("_ms") else {
        return false;
    };
    STATS.iter().any(|stat| {
        rest.strip_prefix(stat)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|route| ROUTES.contains(&route))
    })
}

impl std::str::FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > TEXT_MAX {
            return Err(ThresholdError::TooLong);
        }
        let (at, sym, op) = Op::ALL
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|at| (at, *sym, *op)))
            // The leftmost operator; at one place, the longest (listed first).
            .min_by_key(|(at, sym, _)| (*at, std::cmp::Reverse(sym.len())))
            .ok_or_else(|| ThresholdError::NoOperator {
                text: text.to_string(),
            })?;
        let metric = text[..at].trim();
        let value = text[at + sym.len()..].trim();
        if !known_metric(metric) {
            return Err(ThresholdError::UnknownMetric {
                text: text.to_string(),
                metric: metric.to_string(),
            });
        }
        let bad = || ThresholdError::BadValue {
            text: text.to_string(),
            value: value.to_string(),
        };
        let v: f64 = value.parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        Ok(Threshold {
            metric: metric.to_string(),
            op,
            value: v,
        })
    }
}

/// For clap: a threshold, or the message that says why not.
pub fn parse(text: &str) -> Result<Threshold, String> {
    text.parse().map_err(|e: ThresholdError| e.to_string())
}

/// A threshold checked against a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The threshold as given (`p99_purchase_ms<50`).
    pub threshold: String,
    /// The metric.
    pub metric: String,
    /// The run's value of it (`None`: the run has none, and the threshold fails).
    pub actual: Option<f64>,
    /// Whether the run met it.
    pub passed: bool,
}

/// The run's value of `metric` (a known one), if it has one.
pub fn value_of(record: &RunRecord, metric: &str) -> Option<f64> {
    let secs = |ms: Option<u64>| ms.map(|v| v as f64 / 1000.0);
    let count = |n: u64| Some(n as f64);
    match metric {
        "error_rate" => (record.requests + record.errors > 0)
            .then(|| record.errors as f64 / (record.requests.max(record.errors)) as f64),
        "attempts_per_s" => Some(record.attempts_per_s).filter(|v| v.is_finite()),
        "sold_out_after_s" => secs(record.sold_out_after_ms),
        "last_decision_after_s" => secs(record.last_decision_after_ms),
        "peak_backlog" => count(record.peak_backlog),
        "accepted" => count(record.accepted),
        "ordered" => count(record.ordered),
        "unresolved" => count(record.unresolved),
        "paid" => count(record.paid),
        "bots_accepted" => count(record.bots_accepted),
        "errors" => count(record.errors),
        _ => {
            let rest = metric.strip_suffix("_ms")?;
            let (stat, route) = rest.split_once('_')?;
            let l = record.latency.get(route)?.get("all")?;
            if l.count == 0 {
                return None;
            }
            match stat {
                "p50" => Some(l.p50_ms),
                "p90" => Some(l.p90_ms),
                "p99" => Some(l.p99_ms),
                "p999" => Some(l.p999_ms),
                "max" => Some(l.max_ms),
                _ => None,
            }
        }
    }
}

/// Checks each threshold against the run.
pub fn evaluate(thresholds: &[Threshold], record: &RunRecord) -> Vec<Verdict> {
    thresholds
        .iter()
        .map(|t| {
            let actual = value_of(record, &t.metric);
            Verdict {
                threshold: t.to_string(),
                metric: t.metric.clone(),
                actual,
                passed: actual.is_some_and(|a| t.op.holds(a, t.value)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::record::Latency;

    #[test]
    fn thresholds_read_as_k6_writes_them() {
        let t: Threshold = "p99_purchase_ms<50".parse().expect("valid");
        assert_eq!(
            t,
            Threshold {
                metric: "p99_purchase_ms".into(),
                op: Op::Lt,
                value: 50.0
            }
        );
        let t: Threshold = " error_rate <= 0.01 ".parse().expect("valid");
        assert_eq!(
            (t.metric.as_str(), t.op, t.value),
            ("error_rate", Op::Le, 0.01)
        );
        for (text, op) in [
            ("accepted>=50", Op::Ge),
            ("accepted>50", Op::Gt),
            ("accepted==50", Op::Eq),
            ("accepted!=50", Op::Ne),
            ("max_token_ms<1e3", Op::Lt),
            ("p999_ticket_ms < 2.5", Op::Lt),
        ] {
            assert_eq!(text.parse::<Threshold>().expect(text).op, op, "{text}");
        }
        assert_eq!(
            "p99_purchase_ms<50"
                .parse::<Threshold>()
                .expect("valid")
                .to_string(),
            "p99_purchase_ms<50"
        );
    }

    #[test]
    fn malformed_thresholds_say_what_is_wrong() {
        for (text, says) in [
            ("p99_purchase_ms", "no comparison"),
            ("p99_purchase_ms 50", "no comparison"),
            ("p99_checkout_ms<50", "no metric \"p99_checkout_ms\""),
            ("p98_purchase_ms<50", "no metric"),
            ("latency<50", "the metrics are p50_ROUTE_ms"),
            ("<50", "no metric \"\""),
            ("p99_purchase_ms<fast", "\"fast\" is not a number"),
            ("p99_purchase_ms<", "is not a number"),
            ("p99_purchase_ms<inf", "is not a number"),
            ("p99_purchase_ms<NaN", "is not a number"),
            ("p99_purchase_ms<<50", "is not a number"),
        ] {
            let e = text.parse::<Threshold>().expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let long = format!("accepted<{}", "9".repeat(TEXT_MAX));
        assert_eq!(long.parse::<Threshold>(), Err(ThresholdError::TooLong));
    }

    fn record() -> RunRecord {
        let mut purchase = BTreeMap::new();
        purchase.insert(
            "all".to_string(),
            Latency {
                count: 10,
                p50_ms: 2.0,
                p90_ms: 5.0,
                p99_ms: 40.0,
                p999_ms: 45.0,
                max_ms: 60.0,
                buckets: Vec::new(),
            },
        );
        RunRecord {
            requests: 1000,
            errors: 5,
            attempts_per_s: 800.0,
            sold_out_after_ms: Some(1500),
            accepted: 50,
            latency: BTreeMap::from([("purchase".to_string(), purchase)]),
            ..RunRecord::default()
        }
    }

    #[test]
    fn thresholds_pass_and_fail_on_the_run_figures() {
        let r = record();
        let check = |text: &str| {
            let t: Threshold = text.parse().expect(text);
            evaluate(&[t], &r).remove(0)
        };
        assert!(check("p99_purchase_ms<50").passed);
        assert!(!check("p99_purchase_ms<40").passed);
        assert!(check("p99_purchase_ms<=40").passed);
        assert_eq!(check("max_purchase_ms<50").actual, Some(60.0));
        assert!(check("error_rate<0.01").passed, "5 of 1000");
        assert!(!check("error_rate<0.005").passed);
        assert!(check("attempts_per_s>=800").passed);
        assert!(check("sold_out_after_s<2").passed);
        assert!(check("accepted==50").passed);
        // No value: a route without requests, a sale that never sold out.
        let v = check("p99_token_ms<1000");
        assert_eq!((v.actual, v.passed), (None, false));
        let mut r2 = r.clone();
        r2.sold_out_after_ms = None;
        let t: Threshold = "sold_out_after_s<2".parse().expect("valid");
        assert!(!evaluate(&[t], &r2)[0].passed);
        assert_eq!(value_of(&RunRecord::default(), "error_rate"), None);
    }

    proptest! {
        #[test]
        fn every_metric_and_op_reads_back(
            metric in proptest::sample::select(
                RUN_METRICS.iter().map(|m| m.to_string())
                    .chain(STATS.iter().flat_map(|s| ROUTES.iter().map(move |r| format!("{s}_{r}_ms"))))
                    .collect::<Vec<_>>()),
            op in proptest::sample::select(Op::ALL.to_vec()),
            value in -1e9f64..1e9,
        ) {
            let text = format!("{metric}{}{value}", op.0);
            let t: Threshold = text.parse().expect("a valid threshold");
            prop_assert_eq!(&t.metric, &metric);
            prop_assert_eq!(t.op, op.1);
            prop_assert_eq!(t.value, value);
            let again: Threshold = t.to_string().parse().expect("its text reads back");
            prop_assert_eq!(again, t);
        }

        #[test]
        fn no_text_panics(text in "\\PC{0,40}") {
            let _ = text.parse::<Threshold>();
        }

        #[test]
        fn a_threshold_and_its_opposite_never_both_pass(limit in -100f64..100.0, actual in -100f64..100.0) {
            for (a, b) in [(Op::Lt, Op::Ge), (Op::Le, Op::Gt), (Op::Eq, Op::Ne)] {
                prop_assert!(a.holds(actual, limit) != b.holds(actual, limit));
            }
        }
    }
}
