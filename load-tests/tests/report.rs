//! The run reports: JSON round trip, Markdown figures, SVG plots, files on disk, and
//! empty or odd records.

use std::collections::BTreeMap;

use load_tests::audit::{AuditReport, Check, SaleFigures, StoreFigures};
use load_tests::record::{Bin, BinLatency, Latency, RunRecord};
use load_tests::report::{
    latency_svg, latency_time_svg, throughput_svg, to_json, to_markdown, write_all,
};
use load_tests::threshold::{Threshold, evaluate};

/// A ~30 s run: quiet before the sale opens at 5 s, a spike of attempts, a backlog that
/// rises and drains back to 0, latency for two routes and an audit with one failure.
fn synthetic() -> RunRecord {
    let mut timeline = Vec::new();
    let mut backlog: u64 = 0;
    for t in 0..30u32 {
        let attempts: u64 = match t {
            0..=4 => 0,
            5 => 4_000,
            6 => 2_500,
            7 => 1_200,
            8..=12 => 400 - u64::from(t - 8) * 60,
            _ => 20,
        };
        let enqueued: u64 = match t {
            5 => 900,
            6 => 700,
            7 => 400,
            _ => 0,
        };
        let drained = backlog.saturating_add(enqueued).min(250);
        backlog = backlog + enqueued - drained;
        let mut outcomes = BTreeMap::new();
        outcomes.insert("accepted".to_string(), enqueued);
        outcomes.insert(
            "sold_out".to_string(),
            attempts.saturating_sub(enqueued) / 2,
        );
        outcomes.insert(
            "throttled".to_string(),
            attempts.saturating_sub(enqueued) / 2,
        );
        let mut latency = BTreeMap::new();
        if attempts > 0 {
            latency.insert(
                "purchase".to_string(),
                BinLatency {
                    count: attempts,
                    p50_ms: 2.0 + f64::from(t),
                    p99_ms: 20.0 + 10.0 * f64::from(t),
                },
            );
        }
        timeline.push(Bin {
            t_ms: u64::from(t) * 1000,
            latency,
            requests: attempts + 150,
            attempts,
            outcomes,
            // The first two samples are missing, as when the system is slow to answer.
            backlog: (t >= 2).then_some(backlog),
            enqueued_per_s: (t >= 2).then_some(enqueued as f64),
            drained_per_s: (t >= 2).then_some(drained as f64),
            orders: (t >= 2).then_some(0),
        });
    }
    let buckets = |scale: u64| -> Vec<(f64, u64)> {
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
            .iter()
            .zip([5, 40, 300, 1_200, 2_500, 900, 200, 60, 9, 1])
            .map(|(u, c)| (*u, c * scale))
            .collect()
    };
    let latency_of = |count: u64, p50: f64, b: Vec<(f64, u64)>| Latency {
        count,
        p50_ms: p50,
        p90_ms: p50 * 2.0,
        p99_ms: p50 * 6.0,
        p999_ms: p50 * 20.0,
        max_ms: p50 * 40.0,
        buckets: b,
    };
    let mut latency = BTreeMap::new();
    let mut purchase = BTreeMap::new();
    purchase.insert("all".to_string(), latency_of(10_430, 6.25, buckets(2)));
    purchase.insert("accepted".to_string(), latency_of(2_000, 9.5, buckets(1)));
    latency.insert("purchase".to_string(), purchase);
    let mut token = BTreeMap::new();
    token.insert("all".to_string(), latency_of(5_215, 3.75, buckets(1)));
    latency.insert("token".to_string(), token);

    let mut outcomes = BTreeMap::new();
    outcomes.insert("accepted".to_string(), 2_000);
    outcomes.insert("sold_out".to_string(), 7_000);
    outcomes.insert("throttled".to_string(), 1_430);
    let mut rejected = BTreeMap::new();
    rejected.insert("duplicate".to_string(), 7);
    rejected.insert("sold_out".to_string(), 1_000);

    RunRecord {
        scenario: "ci-small".into(),
        settings: serde_json::json!({ "users": 5000, "units": 1000, "bots": 50 }),
        target: "all-in-one (sqlite)".into(),
        started_at_ms: 1_767_225_600_123, // 2026-01-01 00:00:00.123 UTC
        sale_opened_after_ms: 5_000,
        sale_id: 42,
        units: 1_000,
        users: 5_000,
        attempts: 12_345,
        requests: 17_890,
        attempt_phase_ms: 8_250,
        attempts_per_s: 1_496.4,
        outcomes,
        accepted: 2_000,
        ordered: 990,
        rejected,
        unresolved: 3,
        paid: 495,
        bots_refused: 321,
        bots_accepted: 0,
        sold_out_after_ms: Some(1_234),
        last_accepted_began_after_ms: Some(1_200),
        last_decision_after_ms: Some(9_876),
        peak_backlog: 1_100,
        errors: 2,
        latency,
        bin_ms: 1000,
        timeline,
        thresholds: Vec::new(),
        audit: Some(AuditReport {
            at_ms: 1_767_225_640_000,
            checks: vec![
                Check {
                    name: "no oversell".into(),
                    passed: true,
                    detail: "990 orders ≤ 1000 units".into(),
                },
                Check {
                    name: "bots refused".into(),
                    passed: false,
                    detail: "1 bot order | expected 0".into(),
                },
            ],
            sales: vec![
                SaleFigures {
                    sale: 42,
                    units: 1_000,
                    units_left: 10,
                    pending: 495,
                    paid: 495,
                    cancelled: 0,
                    store: Some(StoreFigures {
                        units: 1_000,
                        left: 10,
                        holders: 990,
                    }),
                },
                SaleFigures {
                    sale: 43,
                    units: 5,
                    units_left: 5,
                    ..SaleFigures::default()
                },
            ],
        }),
    }
}

/// Checks that `svg` is one well-formed-looking SVG document: starts with `<svg`, ends
/// with `</svg>`, every tag is closed in order, no stray `<` or `&` in text. Returns the
/// texts of its `<text>` elements.
fn check_svg(svg: &str) -> Vec<String> {
    assert!(
        svg.starts_with("<svg"),
        "does not start with <svg: {:?}",
        &svg[..svg.len().min(80)]
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "does not end with </svg>"
    );
    let mut stack: Vec<String> = Vec::new();
    let mut texts = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare '&' in text {text:?}"
            );
        }
        if stack.last().is_some_and(|t| t == "text") && !text.trim().is_empty() {
            texts.push(text.trim().to_string());
        }
        let close = rest[open..].find('>').expect("a tag is not closed") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().expect("a closing tag without an opening one");
            assert_eq!(top, name.trim(), "tags closed out of order");
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            let name = tag.split_whitespace().next().expect("an empty tag");
            stack.push(name.to_string());
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty(), "text after the last tag: {rest:?}");
    assert!(stack.is_empty(), "tags left open: {stack:?}");
    texts
}

/// The `points` of every `<polyline>` of `svg`, as point counts.
fn polyline_lengths(svg: &str) -> Vec<usize> {
    svg.match_indices("<polyline")
        .map(|(i, _)| {
            let tag = &svg[i..i + svg[i..].find('>').expect("an unclosed polyline")];
            let points = tag
                .split("points=\"")
                .nth(1)
                .expect("a polyline without points");
            points[..points.find('"').expect("an unclosed points attribute")]
                .split_whitespace()
                .count()
        })
        .collect()
}

#[test]
fn json_round_trips_to_an_equal_record() {
    let record = synthetic();
    let json = to_json(&record);
    assert!(json.contains('\n'), "not pretty-printed");
    assert!(json.contains("\"scenario\": \"ci-small\""), "{json}");
    let back: RunRecord = serde_json::from_str(&json).expect("run.json parses back");
    assert_eq!(back, record);
}

#[test]
fn markdown_has_the_headline_tables_audit_and_links() {
    let md = to_markdown(&synthetic());
    for needle in [
        "# Flash-sale load test: ci-small",
        // Headline.
        "| Scenario | ci-small |",
        "| Target | all-in-one (sqlite) |",
        "| Run started | 2026-01-01 00:00:00.123 UTC |",
        "| Units on sale | 1,000 |",
        "| Users (humans and bots) | 5,000 |",
        "| Purchase attempts | 12,345 |",
        "| Attempts/s over the attempt phase | 1496.4/s |",
        "| Peak attempts in one bin (1 s) | 4,000 (4000.0/s at 5 s) |",
        "| Time to sell out (first `sold_out`) | 1.23 s |",
        "| Time until the last decision | 9.88 s |",
        "| Peak backlog | 1,100 |",
        "| Accepted (202 with a ticket) | 2,000 |",
        "| Ordered | 990 (99.0% of units) |",
        "| Rejected by the workers | 1,007 (duplicate 7, sold_out 1,000) |",
        "| Unresolved at the deadline | 3 |",
        "| Paid | 495 (50.0% of orders) |",
        "| Bots' requests refused | 321 |",
        "| Bots' purchases accepted | 0 |",
        "| Connection errors | 2 |",
        // Outcome table.
        "| Outcome | Answers | Share |",
        "| accepted | 2,000 | 19.2% |",
        "| sold_out | 7,000 | 67.1% |",
        "| throttled | 1,430 | 13.7% |",
        "| **total** | **10,430** | 100.0% |",
        // Latency table: `all` first, then the outcomes.
        "| Route | Outcome | Count | p50 | p90 | p99 | p99.9 | max |",
        "| purchase | all | 10,430 | 6.25 | 12.5 | 37.5 | 125 | 250 |",
        "| purchase | accepted | 2,000 | 9.5 | 19 | 57 | 190 | 380 |",
        "| token | all | 5,215 | 3.75 | 7.5 | 22.5 | 75 | 150 |",
        // Audit.
        "**FAIL** — 1 of 2 checks passed",
        "| PASS | no oversell | 990 orders ≤ 1000 units |",
        "| **FAIL** | bots refused | 1 bot order \\| expected 0 |",
        "| 42 | 1000 | 10 | 495 | 495 | 0 | 1000 | 10 | 990 |",
        "| 43 | 5 | 5 | 0 | 0 | 0 | — | — | — |",
        // Plots and settings.
        "](throughput.svg)",
        "](latency.svg)",
        "](run.json)",
        "\"bots\": 50",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in:\n{md}");
    }
    assert!(md.find("| purchase | all |") < md.find("| purchase | accepted |"));
    // ordered + rejected + unresolved = 2,000 = accepted: no note.
    assert!(!md.contains("Note: ordered"), "{md}");

    // A passing audit, and figures that do not add up.
    let mut record = synthetic();
    record.unresolved = 10;
    if let Some(audit) = record.audit.as_mut() {
        audit.checks.retain(|c| c.passed);
    }
    let md = to_markdown(&record);
    assert!(md.contains("**PASS** — 1 of 1 checks passed"), "{md}");
    assert!(md.contains("**audit PASS**"), "{md}");
    assert!(!md.contains("FAIL"), "{md}");
    assert!(
        md.contains("Note: ordered + rejected + unresolved = 2,007 but 2,000 purchases"),
        "{md}"
    );
}

#[test]
fn throughput_svg_plots_rates_backlog_and_the_opening() {
    let record = synthetic();
    let svg = throughput_svg(&record).expect("throughput plot");
    let texts = check_svg(&svg);
    for label in [
        "Throughput and backlog: ci-small",
        "seconds since the run started (bins of 1 s)",
        "per second",
        "backlog (purchases queued)",
        "attempts/s",
        "enqueued/s",
        "drained/s",
        "backlog (right axis)",
        "sale opens",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in {texts:?}"
        );
    }
    assert!(
        texts.iter().any(|t| t.contains("sale opens (5.00 s)")),
        "{texts:?}"
    );
    assert!(!texts.iter().any(|t| t.starts_with("no data")), "{texts:?}");
    let lines = polyline_lengths(&svg);
    // The attempts line has every second; enqueued, drained and backlog all but the two
    // missing samples.
    assert_eq!(lines.iter().filter(|n| **n == 30).count(), 1, "{lines:?}");
    assert!(lines.iter().filter(|n| **n == 28).count() >= 3, "{lines:?}");
}

#[test]
fn latency_svg_has_a_histogram_per_route() {
    let svg = latency_svg(&synthetic()).expect("latency plot");
    let texts = check_svg(&svg);
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("purchase: 10,430 answers, p50 6.25 ms")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("token: 5,215 answers")),
        "{texts:?}"
    );
    for label in [
        "latency, ms (bucket upper bounds, log scale)",
        "answers in the bucket, % of the route",
        "cumulative share, %",
        "128",
        "0.5",
        "p99 37.5 ms",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in {texts:?}"
        );
    }
    // Two panels of ten bars each, plus backgrounds and legends.
    assert!(svg.matches("<rect").count() >= 20, "too few bars");
    // The cumulative line of each panel: a start and one point per bucket.
    let lines = polyline_lengths(&svg);
    assert_eq!(lines.iter().filter(|n| **n == 11).count(), 2, "{lines:?}");
}

#[test]
fn write_all_writes_the_five_files() {
    let record = synthetic();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("runs").join("ci-small");
    let paths = write_all(&record, &dir).expect("write_all");
    // To look at the synthetic report: REPORT_DUMP_DIR=/some/dir cargo test --test report.
    if let Some(keep) = std::env::var_os("REPORT_DUMP_DIR") {
        write_all(&record, std::path::Path::new(&keep)).expect("write_all to REPORT_DUMP_DIR");
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "run.json",
            "report.md",
            "throughput.svg",
            "latency-over-time.svg",
            "latency.svg"
        ]
    );
    for path in &paths {
        assert_eq!(path.parent(), Some(dir.as_path()));
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("a written file");
    let back: RunRecord = serde_json::from_str(&read("run.json")).expect("run.json parses");
    assert_eq!(back, record);
    assert_eq!(read("report.md"), to_markdown(&record));
    assert_eq!(
        read("throughput.svg"),
        throughput_svg(&record).expect("throughput")
    );
    assert_eq!(read("latency.svg"), latency_svg(&record).expect("latency"));
    assert_eq!(
        read("latency-over-time.svg"),
        latency_time_svg(&record).expect("latency over time")
    );

    // A path below a file cannot be created: an error, not a panic.
    let blocked = dir.join("run.json").join("below");
    assert!(write_all(&record, &blocked).is_err());
}

#[test]
fn an_empty_record_renders_without_panicking() {
    let record = RunRecord::default();
    let back: RunRecord = serde_json::from_str(&to_json(&record)).expect("parses");
    assert_eq!(back, record);

    let md = to_markdown(&record);
    for needle in [
        "| Purchase attempts | 0 |",
        "| Time to sell out (first `sold_out`) | not sold out |",
        "No answers were recorded.",
        "No latency was recorded.",
        "No audit ran after this run.",
        "](throughput.svg)",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in:\n{md}");
    }

    let texts = check_svg(&throughput_svg(&record).expect("throughput plot"));
    assert!(texts.iter().any(|t| t.starts_with("no data")), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("seconds since the run started")),
        "{texts:?}"
    );
    let texts = check_svg(&latency_time_svg(&record).expect("latency over time"));
    assert!(texts.iter().any(|t| t.starts_with("no data")), "{texts:?}");
    let texts = check_svg(&latency_svg(&record).expect("latency plot"));
    assert!(texts.iter().any(|t| t == "no data"), "{texts:?}");

    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(write_all(&record, tmp.path()).expect("write_all").len(), 5);
    if let Some(keep) = std::env::var_os("REPORT_DUMP_DIR") {
        let keep = std::path::Path::new(&keep).join("empty");
        write_all(&record, &keep).expect("write_all to REPORT_DUMP_DIR");
    }
}

#[test]
fn odd_records_render_without_panicking() {
    // A tiny run: one second, an audit with no check, a route without `all`, a route
    // with no buckets, odd names, non-finite figures, unsorted seconds.
    let mut record = RunRecord {
        scenario: "a <b> & \"c\" | d\nnext".into(),
        attempts_per_s: f64::NAN,
        sale_opened_after_ms: 120_000,
        audit: Some(AuditReport::default()),
        timeline: vec![
            Bin {
                t_ms: 3000,
                attempts: 7,
                backlog: Some(u64::MAX),
                ..Bin::default()
            },
            Bin {
                t_ms: 1000,
                attempts: 2,
                drained_per_s: Some(f64::INFINITY),
                ..Bin::default()
            },
        ],
        ..RunRecord::default()
    };
    let mut split = BTreeMap::new();
    let bucket = |b: Vec<(f64, u64)>| Latency {
        count: 3,
        buckets: b,
        ..Latency::default()
    };
    split.insert("accepted".to_string(), bucket(vec![(2.0, 1), (1.0, 1)]));
    split.insert(
        "sold_out".to_string(),
        bucket(vec![(1.0, 1), (f64::NAN, 5)]),
    );
    record.latency.insert("split | route".into(), split);
    let mut empty = BTreeMap::new();
    empty.insert(
        "all".to_string(),
        Latency {
            p50_ms: f64::NAN,
            max_ms: f64::INFINITY,
            ..Latency::default()
        },
    );
    record.latency.insert("empty".into(), empty);

    let md = to_markdown(&record);
    assert!(
        md.contains("# Flash-sale load test: a <b> & \"c\" | d next"),
        "{md}"
    );
    assert!(
        md.contains("| Scenario | a <b> & \"c\" \\| d next |"),
        "{md}"
    );
    assert!(md.contains("| split \\| route | accepted | 3 |"), "{md}");
    assert!(
        md.contains("| Attempts/s over the attempt phase | — |"),
        "{md}"
    );
    assert!(md.contains("**audit ran no check**"), "{md}");

    let texts = check_svg(&throughput_svg(&record).expect("throughput plot"));
    assert!(
        texts.iter().any(|t| t.contains("a &lt;b&gt; &amp;")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("sale opens (120.00 s)")),
        "{texts:?}"
    );
    check_svg(&latency_time_svg(&record).expect("latency over time"));
    let svg = latency_svg(&record).expect("latency plot");
    let texts = check_svg(&svg);
    // Merged by bound: 1 ms (2 answers), 2 ms (1); the NaN bound is dropped.
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("split | route (outcomes merged): 3 answers"))
    );
    assert!(
        texts.iter().any(|t| t == "no histogram recorded"),
        "{texts:?}"
    );
    assert_eq!(
        polyline_lengths(&svg).iter().filter(|n| **n == 3).count(),
        1
    );
}

/// The texts of the right-hand axis's tick labels: the `<text>`s right of the plot whose
/// content is a number (the backlog axis).
fn right_axis_numbers(svg: &str, x_min: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for part in svg.split("<text").skip(1) {
        let x = part
            .split("x=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse::<f64>().ok());
        let text = part
            .split_once('>')
            .and_then(|(_, r)| r.split_once("</text>"))
            .map(|(t, _)| t.trim().to_string());
        if let (Some(x), Some(t)) = (x, text)
            && x > x_min
            && let Ok(v) = t.parse::<f64>()
        {
            out.push(v);
        }
    }
    out
}

#[test]
fn a_short_run_gets_fine_bins_a_round_backlog_axis_and_its_latency_over_time() {
    // One second of attempts in 100 ms bins, a backlog of at most 3.
    let timeline: Vec<Bin> = (0..12u64)
        .map(|i| Bin {
            t_ms: i * 100,
            attempts: 100 + i * 10,
            backlog: (i % 5 == 0).then_some(i.min(3)),
            latency: BTreeMap::from([(
                "token".to_string(),
                BinLatency {
                    count: 100,
                    p50_ms: 1.0,
                    p99_ms: 4.0 + i as f64,
                },
            )]),
            ..Bin::default()
        })
        .collect();
    let record = RunRecord {
        scenario: "ci (units=5)".into(),
        bin_ms: 100,
        peak_backlog: 3,
        timeline,
        ..RunRecord::default()
    };
    let svg = throughput_svg(&record).expect("throughput plot");
    let texts = check_svg(&svg);
    assert!(
        texts
            .iter()
            .any(|t| t == "seconds since the run started (bins of 100 ms)"),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t == "Throughput and backlog: ci (units=5)")
    );
    // A point a bin, attempts as a rate (100 in 100 ms: 1,000/s).
    let lines = polyline_lengths(&svg);
    assert!(lines.contains(&12), "{lines:?}");
    // The backlog readings (every fifth bin) are joined into one line: 3 points.
    assert!(lines.contains(&3), "{lines:?}");
    // The backlog's axis: whole numbers from 0 to at least 3, not 0–1 in tenths.
    let right = right_axis_numbers(&svg, 1010.0);
    assert!(right.len() >= 4, "{right:?} in {texts:?}");
    assert!(right.iter().all(|v| v.fract() == 0.0), "{right:?}");
    assert!(
        right.iter().copied().fold(0.0, f64::max) >= 3.0,
        "{right:?}"
    );

    let svg = latency_time_svg(&record).expect("latency over time");
    let texts = check_svg(&svg);
    for label in [
        "Latency over time: ci (units=5)",
        "latency, ms (log scale)",
        "token p50",
        "token p99",
        "sale opens",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no {label:?} in {texts:?}"
        );
    }
    assert!(
        polyline_lengths(&svg).iter().filter(|n| **n == 12).count() >= 1,
        "the p99 line has a point a bin"
    );
}

#[test]
fn thresholds_are_reported_with_their_verdicts() {
    let mut record = synthetic();
    let thresholds: Vec<Threshold> = ["p99_purchase_ms<50", "p99_token_ms<10", "errors==2"]
        .iter()
        .map(|t| t.parse().expect("valid"))
        .collect();
    record.thresholds = evaluate(&thresholds, &record);
    let passed: Vec<bool> = record.thresholds.iter().map(|t| t.passed).collect();
    // p99 purchase 37.5 ms, token 22.5 ms, 2 errors.
    assert_eq!(passed, [true, false, true]);
    let md = to_markdown(&record);
    for needle in [
        "**thresholds FAIL** (1 of 3)",
        "## Thresholds",
        "| PASS | `p99_purchase_ms<50` | 37.5 |",
        "| **FAIL** | `p99_token_ms<10` | 22.5 |",
        "| PASS | `errors==2` | 2 |",
    ] {
        assert!(md.contains(needle), "no {needle:?} in\n{md}");
    }
    let json = to_json(&record);
    let back: RunRecord = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.thresholds, record.thresholds);
    assert!(
        json.contains("\"threshold\": \"p99_token_ms<10\""),
        "{json}"
    );
}

/// The binary refuses a malformed `--threshold` before anything runs: status 2, the flag
/// named, no report folder made.
#[test]
fn a_malformed_threshold_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("report");
    for bad in [
        "p99_purchase_ms",
        "p99_checkout_ms<5",
        "p99_purchase_ms<fast",
    ] {
        let started = std::time::Instant::now();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_load-tests"))
            .args(["demo", "--quiet", "--threshold", bad, "--out"])
            .arg(&out)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--threshold"), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{bad}: {stderr}");
        assert!(!out.exists(), "nothing was written");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "refused at once"
        );
    }
}

/// `demo --json-out` writes the benchmark's summary, which only a `--baseline` run has: without
/// it the flag is refused at once instead of running the whole demo and writing nothing.
#[test]
fn a_json_summary_without_the_baseline_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("summary.json");
    let started = std::time::Instant::now();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_load-tests"))
        .args(["demo", "--quiet", "--json-out"])
        .arg(&json)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--baseline"), "{stderr}");
    assert!(!json.exists(), "nothing was written");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "refused at once"
    );
}

/// A run that misses a threshold exits with status 1, and says so in its report and
/// record; a threshold it meets passes beside it. The run is named with its override.
#[test]
fn a_missed_threshold_fails_the_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("report");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_load-tests"))
        .args([
            "demo",
            "--quiet",
            "--units",
            "20",
            "--threshold",
            "p99_purchase_ms<0.000001",
            "--threshold",
            "accepted>=1",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("threshold p99_purchase_ms<0.000001 FAIL"),
        "{stdout}"
    );
    assert!(stdout.contains("threshold accepted>=1 PASS"), "{stdout}");
    let record: RunRecord =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("parses");
    assert_eq!(record.scenario, "ci (units=20)");
    let passed: Vec<(String, bool)> = record
        .thresholds
        .iter()
        .map(|t| (t.threshold.clone(), t.passed))
        .collect();
    assert_eq!(
        passed,
        [
            ("p99_purchase_ms<0.000001".to_string(), false),
            ("accepted>=1".to_string(), true)
        ]
    );
    // The run was short: bins finer than a second, at least ~30 of them.
    assert!(record.bin_ms < 1000, "{}", record.bin_ms);
    assert!(record.timeline.len() >= 30, "{}", record.timeline.len());
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("**thresholds FAIL** (1 of 2)"), "{md}");
    assert!(out.join("latency-over-time.svg").exists());
}
