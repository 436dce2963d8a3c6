//! Reports of a run: JSON, Markdown and SVG plots.
//!
//! - [`to_json`]: the whole [`RunRecord`], pretty-printed (reads back with `serde_json`).
//! - [`to_markdown`]: a report a person reads without opening the JSON: the headline
//!   figures, the outcomes, latency per route and outcome, the audit's checks and links to
//!   the plots.
//! - [`throughput_svg`]: attempts per second, enqueue and drain rates and the backlog (on
//!   its own axis, with round ticks) over the run, with the sale's opening marked; bins as
//!   fine as the run's length calls for ([`crate::timeline`]: 100 ms for a short run).
//! - [`latency_time_svg`]: the token and purchase routes' p50 and p99 latency over the run.
//! - [`latency_svg`]: a latency histogram (and cumulative share) per route, every route on
//!   the same buckets and the same share-of-answers scale, so they compare at a glance.
//! - [`write_all`]: all five into a folder.
//!
//! Thresholds (`--threshold`, [`crate::threshold`]) the run was held to are listed with
//! their verdicts in the Markdown report and in the JSON record.
//!
//! Every function copes with an empty record (no timeline, no latency, zeros): the plots
//! then say "no data" but are still whole SVG documents. The plots are drawn with
//! `plotters`' SVG backend alone, which writes `<text>` elements itself: no font library
//! is needed to draw them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::record::{Bin, Latency, RunRecord};

/// File names [`write_all`] writes (and the Markdown report links to).
pub const JSON_FILE: &str = "run.json";
/// The Markdown report.
pub const MARKDOWN_FILE: &str = "report.md";
/// The throughput plot.
pub const THROUGHPUT_FILE: &str = "throughput.svg";
/// The latency plot.
pub const LATENCY_FILE: &str = "latency.svg";
/// Most buckets on the latency histograms' axis (a doubling from 1 µs to an hour is 32).
const BUCKETS_SHOWN_MAX: usize = 64;
/// The latency-over-time plot.
pub const LATENCY_TIME_FILE: &str = "latency-over-time.svg";
/// A gap between two readings of the system's figures longer than this (and than two
/// bins) breaks their lines: the system did not answer in between.
const SAMPLE_GAP_MAX_MS: u64 = 2_500;

/// Why a report could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Drawing a plot failed.
    #[error("drawing the {plot} plot: {message}")]
    Plot {
        /// Which plot.
        plot: &'static str,
        /// What the plotting library said.
        message: String,
    },
    /// Creating the folder or writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The record as pretty-printed JSON.
pub fn to_json(record: &RunRecord) -> String {
    // A RunRecord has only string map keys and plain data, so this does not fail; should
    // it ever, the report still gets a JSON document that says why.
    serde_json::to_string_pretty(record).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("the run record could not be serialised: {e}") })
            .to_string()
    })
}

/// The record as a Markdown report for people.
pub fn to_markdown(record: &RunRecord) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail: the `fmt::Result`s below are ignored on purpose.
    let _ = write_markdown(&mut md, record);
    md
}

fn write_markdown(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    let scenario = if r.scenario.is_empty() {
        "(unnamed)"
    } else {
        r.scenario.as_str()
    };
    writeln!(md, "# Flash-sale load test: {}", inline(scenario))?;
    writeln!(md)?;
    write_verdict(md, r)?;
    write_headline(md, r, scenario)?;
    write_thresholds(md, r)?;
    write_outcomes(md, r)?;
    write_latency(md, r)?;
    write_audit(md, r)?;
    write_plots_and_settings(md, r)
}

/// One line a person can stop at: the audit, the sell-out, orders, bots, errors.
fn write_verdict(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    let mut verdict = Vec::new();
    match &r.audit {
        Some(a) if a.passed() => verdict.push("**audit PASS**".to_string()),
        Some(a) if a.checks.is_empty() => verdict.push("**audit ran no check**".to_string()),
        Some(a) => {
            let failed = a.checks.iter().filter(|c| !c.passed).count();
            verdict.push(format!(
                "**audit FAIL** ({failed} of {} checks)",
                a.checks.len()
            ));
        }
        None => verdict.push("no audit".to_string()),
    }
    match r.sold_out_after_ms {
        Some(ms) => verdict.push(format!("sold out {} after the opening", secs(ms))),
        None => verdict.push("not sold out".to_string()),
    }
    verdict.push(format!(
        "{} of {} units ordered",
        int(r.ordered),
        int(r.units)
    ));
    verdict.push(format!("{} bot purchases accepted", int(r.bots_accepted)));
    verdict.push(format!("{} connection errors", int(r.errors)));
    if !r.thresholds.is_empty() {
        let failed = r.thresholds.iter().filter(|t| !t.passed).count();
        verdict.push(if failed == 0 {
            format!(
                "**thresholds PASS** ({} of {})",
                r.thresholds.len(),
                r.thresholds.len()
            )
        } else {
            format!("**thresholds FAIL** ({failed} of {})", r.thresholds.len())
        });
    }
    writeln!(md, "{}.", verdict.join(" · "))?;
    writeln!(md)?;
    Ok(())
}

/// The headline table: the run's figures, one a row.
fn write_headline(md: &mut String, r: &RunRecord, scenario: &str) -> std::fmt::Result {
    writeln!(md, "## Headline")?;
    writeln!(md)?;
    writeln!(md, "| Figure | Value |")?;
    writeln!(md, "| --- | ---: |")?;
    let mut row = |k: &str, v: String| writeln!(md, "| {} | {} |", k, cell(&v));
    row("Scenario", scenario.to_string())?;
    if let Some(seed) = r.settings.get("seed").and_then(serde_json::Value::as_u64) {
        row("Seed (`--seed`)", seed.to_string())?;
    }
    row(
        "Target",
        if r.target.is_empty() {
            "—".into()
        } else {
            r.target.clone()
        },
    )?;
    row("Sale", int(r.sale_id))?;
    row("Run started", utc(r.started_at_ms))?;
    row("Sale opened after", secs(r.sale_opened_after_ms))?;
    row("Units on sale", int(r.units))?;
    row("Users (humans and bots)", int(r.users))?;
    row("Purchase attempts", int(r.attempts))?;
    row("Requests (every route)", int(r.requests))?;
    row("Attempt phase", secs(r.attempt_phase_ms))?;
    row("Attempts/s over the attempt phase", rate(r.attempts_per_s))?;
    let bin_s = r.bin_ms.max(1) as f64 / 1000.0;
    if let Some((t, n)) = peak(&r.timeline, |s| Some(s.attempts as f64)) {
        row(
            &format!("Peak attempts in one bin ({})", width(r.bin_ms)),
            format!("{} ({} at {})", int(n as u64), rate(n / bin_s), seconds(t)),
        )?;
    }
    row(
        "Time to sell out (first `sold_out`)",
        r.sold_out_after_ms
            .map_or_else(|| "not sold out".into(), secs),
    )?;
    row(
        "Time until the last decision",
        r.last_decision_after_ms.map_or_else(|| "—".into(), secs),
    )?;
    row("Peak backlog", int(r.peak_backlog))?;
    if let Some((t, v)) = peak(&r.timeline, |s| s.drained_per_s) {
        row(
            "Peak drain rate",
            format!("{} (at {})", rate(v), seconds(t)),
        )?;
    }
    row("Accepted (202 with a ticket)", int(r.accepted))?;
    row(
        "Ordered",
        format!(
            "{}{}",
            int(r.ordered),
            share(r.ordered, r.units, "of units")
        ),
    )?;
    let rejected: u64 = r.rejected.values().sum();
    let reasons = if r.rejected.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = r
            .rejected
            .iter()
            .map(|(k, v)| format!("{k} {}", int(*v)))
            .collect();
        format!(" ({})", list.join(", "))
    };
    row(
        "Rejected by the workers",
        format!("{}{reasons}", int(rejected)),
    )?;
    row("Unresolved at the deadline", int(r.unresolved))?;
    row(
        "Paid",
        format!("{}{}", int(r.paid), share(r.paid, r.ordered, "of orders")),
    )?;
    row("Bots' requests refused", int(r.bots_refused))?;
    row("Bots' purchases accepted", int(r.bots_accepted))?;
    row("Connection errors", int(r.errors))?;
    writeln!(md)?;
    let decided = r
        .ordered
        .saturating_add(rejected)
        .saturating_add(r.unresolved);
    if decided != r.accepted {
        writeln!(
            md,
            "Note: ordered + rejected + unresolved = {} but {} purchases were accepted.",
            int(decided),
            int(r.accepted)
        )?;
        writeln!(md)?;
    }

    Ok(())
}

/// The thresholds the run was held to, with the run's values.
fn write_thresholds(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    if r.thresholds.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Thresholds")?;
    writeln!(md)?;
    writeln!(md, "| Result | Threshold | Run's value |")?;
    writeln!(md, "| --- | --- | ---: |")?;
    for t in &r.thresholds {
        writeln!(
            md,
            "| {} | `{}` | {} |",
            if t.passed { "PASS" } else { "**FAIL**" },
            cell(&t.threshold),
            t.actual.map_or_else(|| "no value".to_string(), ms)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Answers to purchase attempts by outcome, with their shares.
fn write_outcomes(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    writeln!(md, "## Outcomes")?;
    writeln!(md)?;
    if r.outcomes.is_empty() {
        writeln!(md, "No answers were recorded.")?;
    } else {
        let total: u64 = r.outcomes.values().sum();
        writeln!(md, "| Outcome | Answers | Share |")?;
        writeln!(md, "| --- | ---: | ---: |")?;
        for (outcome, n) in &r.outcomes {
            writeln!(
                md,
                "| {} | {} | {} |",
                cell(outcome),
                int(*n),
                percent(*n, total)
            )?;
        }
        writeln!(
            md,
            "| **total** | **{}** | {} |",
            int(total),
            percent(total, total)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Latency per route (`all` first) and outcome.
fn write_latency(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    writeln!(md, "## Latency")?;
    writeln!(md)?;
    if r.latency.is_empty() {
        writeln!(md, "No latency was recorded.")?;
    } else {
        writeln!(
            md,
            "Milliseconds, from sending a request to its whole answer."
        )?;
        writeln!(md)?;
        writeln!(
            md,
            "| Route | Outcome | Count | p50 | p90 | p99 | p99.9 | max |"
        )?;
        writeln!(
            md,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for (route, outcomes) in &r.latency {
            // `all` first, then each outcome.
            let all = outcomes.get("all").map(|l| ("all", l));
            let rest = outcomes.iter().filter(|(k, _)| k.as_str() != "all");
            for (outcome, l) in all.into_iter().chain(rest.map(|(k, l)| (k.as_str(), l))) {
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell(route),
                    cell(outcome),
                    int(l.count),
                    ms(l.p50_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    ms(l.p999_ms),
                    ms(l.max_ms)
                )?;
            }
        }
    }
    writeln!(md)?;
    Ok(())
}

/// The audit's checks and the figures it read.
fn write_audit(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    writeln!(md, "## Audit")?;
    writeln!(md)?;
    match &r.audit {
        None => writeln!(md, "No audit ran after this run.")?,
        Some(a) => {
            let passed = a.checks.iter().filter(|c| c.passed).count();
            writeln!(
                md,
                "{} — {passed} of {} checks passed (audited {}).",
                if a.passed() { "**PASS**" } else { "**FAIL**" },
                a.checks.len(),
                utc(a.at_ms)
            )?;
            writeln!(md)?;
            if !a.checks.is_empty() {
                writeln!(md, "| Result | Check | Figures |")?;
                writeln!(md, "| --- | --- | --- |")?;
                for c in &a.checks {
                    writeln!(
                        md,
                        "| {} | {} | {} |",
                        if c.passed { "PASS" } else { "**FAIL**" },
                        cell(&c.name),
                        cell(&c.detail)
                    )?;
                }
            }
            write_audit_sales(md, &a.sales)?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// The audit's figures per sale (database, then stock store), if it read any.
fn write_audit_sales(md: &mut String, sales: &[crate::audit::SaleFigures]) -> std::fmt::Result {
    if sales.is_empty() {
        return Ok(());
    }
    writeln!(md)?;
    writeln!(
        md,
        "Figures the audit read, per sale (database, then stock store):"
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| Sale | Units | Left | Pending | Paid | Cancelled | Store units | \
         Store left | Holders |"
    )?;
    writeln!(
        md,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for s in sales {
        let store = |f: fn(&crate::audit::StoreFigures) -> i64| {
            s.store
                .as_ref()
                .map_or_else(|| "—".to_string(), |st| f(st).to_string())
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.sale,
            s.units,
            s.units_left,
            s.pending,
            s.paid,
            s.cancelled,
            store(|st| st.units),
            store(|st| st.left),
            store(|st| st.holders)
        )?;
    }
    Ok(())
}

/// Links to the plots and the JSON record, and the scenario's settings.
fn write_plots_and_settings(md: &mut String, r: &RunRecord) -> std::fmt::Result {
    writeln!(md, "## Plots")?;
    writeln!(md)?;
    writeln!(
        md,
        "Attempts per second, enqueue and drain rates (left axis) and the backlog (right \
         axis), in bins of {} since the run started; the dashed line is the sale's opening:",
        width(r.bin_ms)
    )?;
    writeln!(md)?;
    writeln!(md, "![Throughput and backlog]({THROUGHPUT_FILE})")?;
    writeln!(md)?;
    writeln!(
        md,
        "Latency of the token and purchase routes over the run (p50 and p99 per bin, log \
         scale):"
    )?;
    writeln!(md)?;
    writeln!(md, "![Latency over time]({LATENCY_TIME_FILE})")?;
    writeln!(md)?;
    writeln!(
        md,
        "Latency histogram and cumulative share per route (the same buckets and scale for \
         every route):"
    )?;
    writeln!(md)?;
    writeln!(md, "![Latency per route]({LATENCY_FILE})")?;
    writeln!(md)?;
    writeln!(md, "The whole record: [`{JSON_FILE}`]({JSON_FILE}).")?;

    if !r.settings.is_null() {
        writeln!(md)?;
        writeln!(md, "<details><summary>Scenario settings</summary>")?;
        writeln!(md)?;
        writeln!(md, "```json")?;
        let settings = serde_json::to_string_pretty(&r.settings).unwrap_or_default();
        writeln!(md, "{}", settings.replace("```", "` ` `"))?;
        writeln!(md, "```")?;
        writeln!(md)?;
        writeln!(md, "</details>")?;
    }
    Ok(())
}

const ATTEMPTS: RGBColor = RGBColor(31, 119, 180);
const ENQUEUED: RGBColor = RGBColor(148, 103, 189);
const DRAINED: RGBColor = RGBColor(44, 160, 44);
const BACKLOG: RGBColor = RGBColor(255, 127, 14);
const MARKER: RGBColor = RGBColor(214, 39, 40);
const MUTED: RGBColor = RGBColor(120, 120, 120);

/// Attempts per second, enqueue and drain rates and the backlog over the run, as SVG.
///
/// x: seconds since the run started, in bins of [`RunRecord::bin_ms`]; left y: per second;
/// right y: purchases queued, on round ticks of its own (whole numbers, never 0–1). A
/// dashed vertical line marks the sale's opening.
pub fn throughput_svg(record: &RunRecord) -> Result<String, ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: "throughput",
        message: e.to_string(),
    };
    let mut timeline: Vec<&Bin> = record.timeline.iter().collect();
    timeline.sort_by_key(|s| s.t_ms);
    let bin_s = record.bin_ms.max(1) as f64 / 1000.0;

    // Each bin's attempts as a rate, plotted at the bin's middle.
    let attempts: Vec<(f64, f64)> = timeline
        .iter()
        .map(|s| (s.t_s() + bin_s / 2.0, s.attempts as f64 / bin_s))
        .collect();
    let gap_ms = SAMPLE_GAP_MAX_MS.max(2 * record.bin_ms);
    let enqueued = readings(&timeline, gap_ms, |s| s.enqueued_per_s);
    let drained = readings(&timeline, gap_ms, |s| s.drained_per_s);
    let backlog = readings(&timeline, gap_ms, |s| s.backlog.map(|b| b as f64));

    let opened_s = record.sale_opened_after_ms as f64 / 1000.0;
    let last_t = timeline.last().map_or(0.0, |s| s.t_s() + bin_s);
    let x_max = last_t.max(opened_s + bin_s).max(1.0);
    let rate_max = attempts
        .iter()
        .chain(enqueued.iter().flatten())
        .chain(drained.iter().flatten())
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let backlog_max = backlog
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(record.peak_backlog as f64, f64::max);
    let (y_max, y_step) = nice_axis(rate_max, 6, false);
    let (b_max, b_step) = nice_axis(backlog_max, 6, true);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!("Throughput and backlog: {}", short_label(&record.scenario));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, NiceAxis::new(y_max, y_step))
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..x_max, NiceAxis::new(b_max, b_step));
        chart
            .configure_mesh()
            .x_desc(format!(
                "seconds since the run started (bins of {})",
                width(record.bin_ms)
            ))
            .y_desc("per second")
            .x_label_formatter(&|v| number(*v))
            .y_label_formatter(&|v| number(*v))
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(2)
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("backlog (purchases queued)")
            .y_label_formatter(&|v| number(*v))
            .draw()
            .map_err(|e| err(&e))?;

        // The sale's opening.
        chart
            .draw_series(DashedLineSeries::new(
                [(opened_s, 0.0), (opened_s, y_max)],
                8,
                5,
                MARKER.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("sale opens")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MARKER.stroke_width(2)));
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" sale opens ({})", secs(record.sale_opened_after_ms)),
                (opened_s, y_max * 0.97),
                ("sans-serif", 13).into_font().color(&MARKER),
            )))
            .map_err(|e| err(&e))?;

        if !attempts.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    attempts.iter().copied(),
                    ATTEMPTS.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label("attempts/s")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], ATTEMPTS.stroke_width(2))
                });
        }
        for (segments, style, label) in [
            (&enqueued, ENQUEUED.stroke_width(1), "enqueued/s"),
            (&drained, DRAINED.stroke_width(2), "drained/s"),
        ] {
            for (i, seg) in segments.iter().enumerate() {
                let anno = chart
                    .draw_series(LineSeries::new(seg.iter().copied(), style))
                    .map_err(|e| err(&e))?;
                if i == 0 {
                    anno.label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                }
            }
        }
        for (i, seg) in backlog.iter().enumerate() {
            let anno = chart
                .draw_secondary_series(LineSeries::new(
                    seg.iter().copied(),
                    BACKLOG.stroke_width(2),
                ))
                .map_err(|e| err(&e))?;
            if i == 0 {
                anno.label("backlog (right axis)").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BACKLOG.stroke_width(2))
                });
            }
        }
        if timeline.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no data: the run recorded no timeline",
                    (x_max / 2.0, y_max / 2.0),
                    ("sans-serif", 20)
                        .into_font()
                        .color(&MUTED)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(MUTED)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// A line in pieces (broken where there is no value), points (x, y).
type Lines = Vec<Vec<(f64, f64)>>;

/// The token and purchase routes' p50 and p99 latency per bin over the run, as SVG (log
/// scale: a p50 of a millisecond and a p99 of half a second both read).
pub fn latency_time_svg(record: &RunRecord) -> Result<String, ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: "latency over time",
        message: e.to_string(),
    };
    let mut timeline: Vec<&Bin> = record.timeline.iter().collect();
    timeline.sort_by_key(|s| s.t_ms);
    let bin_s = record.bin_ms.max(1) as f64 / 1000.0;
    let routes = crate::timeline::TIMED_ROUTES;
    // (route and quantile, colour, dashed, the line's pieces)
    let mut lines: Vec<(String, RGBColor, bool, Lines)> = Vec::new();
    for (route, color) in routes.iter().zip([ENQUEUED, ATTEMPTS]) {
        for (q, dashed) in [("p50", true), ("p99", false)] {
            let mut segs: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut current = Vec::new();
            for b in &timeline {
                let v = b
                    .latency
                    .get(*route)
                    .map(|l| if q == "p50" { l.p50_ms } else { l.p99_ms });
                match v.filter(|v| v.is_finite() && *v > 0.0) {
                    Some(v) => current.push((b.t_s() + bin_s / 2.0, v)),
                    None if !current.is_empty() => segs.push(std::mem::take(&mut current)),
                    None => {}
                }
            }
            if !current.is_empty() {
                segs.push(current);
            }
            lines.push((format!("{route} {q}"), color, dashed, segs));
        }
    }
    let values = || lines.iter().flat_map(|l| l.3.iter().flatten().map(|p| p.1));
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(0.0, f64::max);
    let no_data = !lo.is_finite();
    // Whole decades around the data, so the log axis has round labels.
    let (lo, hi) = if no_data {
        (0.1, 1000.0)
    } else {
        (
            10f64.powf(lo.log10().floor()).min(hi / 10.0),
            10f64.powf(hi.log10().ceil()).max(lo * 10.0),
        )
    };
    let opened_s = record.sale_opened_after_ms as f64 / 1000.0;
    let last_t = timeline.last().map_or(0.0, |s| s.t_s() + bin_s);
    let x_max = last_t.max(opened_s + bin_s).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!("Latency over time: {}", short_label(&record.scenario));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "seconds since the run started (bins of {})",
                width(record.bin_ms)
            ))
            .y_desc("latency, ms (log scale)")
            .x_label_formatter(&|v| number(*v))
            .y_label_formatter(&|v| ms(*v))
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(2)
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                [(opened_s, lo), (opened_s, hi)],
                8,
                5,
                MARKER.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("sale opens")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MARKER.stroke_width(2)));
        for (label, color, dashed, segs) in &lines {
            let style = color.stroke_width(if *dashed { 1 } else { 2 });
            for (i, seg) in segs.iter().enumerate() {
                // A lone point (one bin) shows as a dot.
                if seg.len() == 1 {
                    chart
                        .draw_series(seg.iter().map(|p| Circle::new(*p, 3, color.filled())))
                        .map_err(|e| err(&e))?;
                }
                let anno = if *dashed {
                    chart
                        .draw_series(DashedLineSeries::new(seg.iter().copied(), 5, 3, style))
                        .map_err(|e| err(&e))?
                } else {
                    chart
                        .draw_series(LineSeries::new(seg.iter().copied(), style))
                        .map_err(|e| err(&e))?
                };
                if i == 0 {
                    let dashed = *dashed;
                    anno.label(label.clone()).legend(move |(x, y)| {
                        PathElement::new(
                            vec![(x, y), (x + 20, y)],
                            color.stroke_width(if dashed { 1 } else { 2 }),
                        )
                    });
                }
            }
        }
        if no_data {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no data: no token or purchase answers were timed",
                    (x_max / 2.0, (lo * hi).sqrt()),
                    ("sans-serif", 20)
                        .into_font()
                        .color(&MUTED)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(MUTED)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// One histogram to draw: its title and its buckets (upper bound ms, count), ascending.
struct Panel {
    title: String,
    buckets: Vec<(f64, u64)>,
    quantiles: Option<Latency>,
}

fn panels(record: &RunRecord) -> Vec<Panel> {
    let mut out = Vec::new();
    for (route, outcomes) in &record.latency {
        let (latency, note) = match outcomes.get("all") {
            Some(l) => (Some(l), ""),
            None if outcomes.len() == 1 => (outcomes.values().next(), ""),
            None => (None, " (outcomes merged)"),
        };
        let mut buckets: Vec<(f64, u64)> = match latency {
            Some(l) => l.buckets.clone(),
            None => {
                // No `all`: add the outcomes' buckets up by upper bound.
                let mut merged: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
                for l in outcomes.values() {
                    for &(upper, n) in &l.buckets {
                        let e = merged.entry(upper.to_bits()).or_insert((upper, 0));
                        e.1 = e.1.saturating_add(n);
                    }
                }
                merged.into_values().collect()
            }
        };
        buckets.retain(|(upper, _)| upper.is_finite());
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = latency.map_or_else(|| buckets.iter().map(|b| b.1).sum(), |l| l.count);
        let mut title = format!("{}{note}: {} answers", short_label(route), int(count));
        if let Some(l) = latency {
            let _ = write!(
                title,
                ", p50 {} ms, p99 {} ms, max {} ms",
                ms(l.p50_ms),
                ms(l.p99_ms),
                ms(l.max_ms)
            );
        }
        out.push(Panel {
            title,
            buckets,
            quantiles: latency.cloned(),
        });
    }
    out
}

/// Latency histograms per route (the route's `all` outcome), as SVG.
///
/// One panel per route: x is the histogram's buckets, evenly spaced (the buckets are on a
/// log scale), each tick labelled with the bucket bound in ms, the same buckets for every
/// route; bars are the share of the route's answers per bucket (left axis, one scale for
/// every route), the line is the cumulative share (right axis), dashed lines mark p50 and
/// p99.
pub fn latency_svg(record: &RunRecord) -> Result<String, ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: "latency",
        message: e.to_string(),
    };
    let mut panels = panels(record);
    let no_data = panels.is_empty();
    if no_data {
        panels.push(Panel {
            title: "no data: the run recorded no latency".into(),
            buckets: Vec::new(),
            quantiles: None,
        });
    }
    // One scale for every route: the same buckets (the union of theirs) and the same
    // share-of-answers axis.
    let mut common: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.buckets.iter().map(|b| b.0))
        .collect();
    common.sort_by(f64::total_cmp);
    common.dedup_by(|a, b| a.to_bits() == b.to_bits());
    // The crowd's buckets double (0.1 ms × 2^k) and only non-empty ones are recorded: put
    // the missing doublings back, so that equal steps on the axis are equal ratios.
    let common = fill_doublings(&common);
    for p in &mut panels {
        if !p.buckets.is_empty() {
            p.buckets = common
                .iter()
                .map(|u| {
                    let n = p
                        .buckets
                        .iter()
                        .filter(|b| b.0.to_bits() == u.to_bits())
                        .map(|b| b.1)
                        .sum();
                    (*u, n)
                })
                .collect();
        }
    }
    let share_max = panels
        .iter()
        .flat_map(|p| {
            let total: u64 = p.buckets.iter().map(|b| b.1).sum();
            p.buckets.iter().map(move |b| share_pct(b.1, total))
        })
        .fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(share_max, 5, false);
    // A share is at most 100 %: no axis past it.
    let y_max = if y_max > 100.0 && share_max <= 100.0 {
        100.0
    } else {
        y_max
    };
    const PANEL_HEIGHT: u32 = 340;
    let height = PANEL_HEIGHT.saturating_mul(u32::try_from(panels.len()).unwrap_or(u32::MAX));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((panels.len(), 1));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let n = panel.buckets.len();
            let x_max = n.max(1) as f64;
            let total: u64 = panel.buckets.iter().map(|b| b.1).sum();
            let uppers: Vec<f64> = panel.buckets.iter().map(|b| b.0).collect();
            let x_label = |v: &f64| -> String {
                let k = v.round();
                if (v - k).abs() > 1e-6 || k < 0.0 {
                    return String::new();
                }
                match k as usize {
                    0 => "0".into(),
                    k => uppers.get(k - 1).map_or_else(String::new, |u| ms(*u)),
                }
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .right_y_label_area_size(64)
                .build_cartesian_2d(BucketAxis { buckets: n }, NiceAxis::new(y_max, y_step))
                .map_err(|e| err(&e))?
                .set_secondary_coord(0f64..x_max, 0f64..100f64);
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("latency, ms (bucket upper bounds, log scale)")
                .y_desc("answers in the bucket, % of the route")
                .x_label_formatter(&x_label)
                .y_label_formatter(&|v| number(*v))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| err(&e))?;
            chart
                .configure_secondary_axes()
                .y_desc("cumulative share, %")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| err(&e))?;
            if n == 0 {
                chart
                    .draw_series(std::iter::once(Text::new(
                        if no_data {
                            "no data"
                        } else {
                            "no histogram recorded"
                        },
                        (x_max / 2.0, y_max / 2.0),
                        ("sans-serif", 20)
                            .into_font()
                            .color(&MUTED)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )))
                    .map_err(|e| err(&e))?;
                continue;
            }
            chart
                .draw_series(panel.buckets.iter().enumerate().map(|(i, &(_, c))| {
                    let x = i as f64;
                    Rectangle::new(
                        [(x + 0.08, 0.0), (x + 0.92, share_pct(c, total))],
                        ATTEMPTS.filled(),
                    )
                }))
                .map_err(|e| err(&e))?
                .label("% of answers in the bucket")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], ATTEMPTS.filled()));
            let mut cumulative = 0u64;
            let mut cdf = vec![(0.0, 0.0)];
            for (i, &(_, c)) in panel.buckets.iter().enumerate() {
                cumulative = cumulative.saturating_add(c);
                let pct = if total == 0 {
                    0.0
                } else {
                    cumulative as f64 * 100.0 / total as f64
                };
                cdf.push(((i + 1) as f64, pct));
            }
            chart
                .draw_secondary_series(LineSeries::new(cdf, BACKLOG.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label("cumulative % (right axis)")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BACKLOG.stroke_width(2))
                });
            if let Some(l) = &panel.quantiles {
                for (name, q, color) in [("p50", l.p50_ms, DRAINED), ("p99", l.p99_ms, MARKER)] {
                    let Some(x) = bucket_position(&uppers, q) else {
                        continue;
                    };
                    chart
                        .draw_series(DashedLineSeries::new(
                            [(x, 0.0), (x, y_max)],
                            6,
                            4,
                            color.stroke_width(2),
                        ))
                        .map_err(|e| err(&e))?
                        .label(format!("{name} {} ms", ms(q)))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(MUTED)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// Writes `run.json`, `report.md`, `throughput.svg`, `latency-over-time.svg` and
/// `latency.svg` into `dir` (created if missing) and returns their paths, in that order. Nothing is written unless every
/// one of them could be made.
pub fn write_all(record: &RunRecord, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let files = [
        (JSON_FILE, to_json(record)),
        (MARKDOWN_FILE, to_markdown(record)),
        (THROUGHPUT_FILE, throughput_svg(record)?),
        (LATENCY_TIME_FILE, latency_time_svg(record)?),
        (LATENCY_FILE, latency_svg(record)?),
    ];
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::with_capacity(files.len());
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    Ok(paths)
}

/// The latency plot's x axis: bucket `k` spans `[k, k+1)`, the ticks sit on bucket bounds
/// (integers) only, as many as fit.
#[derive(Debug, Clone, Copy)]
struct BucketAxis {
    buckets: usize,
}

impl Ranged for BucketAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        // As `RangedCoordf64` maps `0..buckets`, so the secondary axis lines up.
        let width = self.buckets.max(1) as f64;
        let span = f64::from(limit.1) - f64::from(limit.0);
        (f64::from(limit.0) + (span * value / width + 1e-3).floor()) as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let max = hint.max_num_points().max(1);
        let step = (self.buckets + 1).div_ceil(max).max(1);
        (0..=self.buckets).step_by(step).map(|k| k as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.buckets.max(1) as f64
    }
}

// --- helpers -------------------------------------------------------------------------

/// The system's readings of the timeline as lines: each bin's value at its middle, a bin
/// without a reading skipped, a line broken where readings are more than `gap_ms` apart.
fn readings(
    timeline: &[&Bin],
    gap_ms: u64,
    value: impl Fn(&Bin) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut last_ms: Option<u64> = None;
    let width_s = match timeline {
        [a, b, ..] => b.t_ms.saturating_sub(a.t_ms) as f64 / 1000.0,
        _ => 0.0,
    };
    for s in timeline {
        let Some(v) = value(s).filter(|v| v.is_finite()) else {
            continue;
        };
        if last_ms.is_some_and(|l| s.t_ms.saturating_sub(l) > gap_ms) && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push((s.t_s() + width_s / 2.0, v));
        last_ms = Some(s.t_ms);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A round axis from 0 for values up to `max`: `(top, step)`, the step 1, 2 or 5 × 10^k
/// giving about `ticks` steps, the top a whole number of steps at or above `max` (with a
/// little headroom). An `integer` axis (a count) steps by whole numbers and spans at least
/// 0–5, so a small or empty backlog reads 0, 1, 2, … and not 0–1 in tenths.
pub fn nice_axis(max: f64, ticks: u32, integer: bool) -> (f64, f64) {
    let ticks = f64::from(ticks.max(1));
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        0.0
    };
    if max == 0.0 {
        return if integer { (5.0, 1.0) } else { (1.0, 0.2) };
    }
    let want = max * 1.05;
    let mut raw = want / ticks;
    if integer {
        raw = raw.max(1.0);
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let top = (want / step - 1e-9).ceil().max(1.0) * step;
    let top = if integer { top.max(5.0) } else { top };
    (top, step)
}

/// A value axis from 0 to `top` whose ticks are exactly the multiples of `step` (see
/// [`nice_axis`]), as many as fit.
#[derive(Debug, Clone, Copy)]
struct NiceAxis {
    top: f64,
    step: f64,
}

impl NiceAxis {
    fn new(top: f64, step: f64) -> NiceAxis {
        let top = if top.is_finite() && top > 0.0 {
            top
        } else {
            1.0
        };
        let step = if step.is_finite() && step > 0.0 {
            step
        } else {
            top
        };
        NiceAxis { top, step }
    }
}

impl Ranged for NiceAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1) - f64::from(limit.0);
        (f64::from(limit.0) + span * value / self.top).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let steps = (self.top / self.step).round().max(1.0) as usize;
        let max = hint.max_num_points().max(2);
        let every = steps.div_ceil(max - 1).max(1);
        (0..=steps)
            .step_by(every)
            .map(|k| k as f64 * self.step)
            .collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.top
    }
}

/// The bin with the highest value (the first of equals), if any value is positive: where it
/// starts (seconds since the run started) and the value.
fn peak(timeline: &[Bin], value: impl Fn(&Bin) -> Option<f64>) -> Option<(f64, f64)> {
    timeline
        .iter()
        .filter_map(|s| {
            value(s)
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| (s.t_s(), v))
        })
        .fold(None, |best: Option<(f64, f64)>, (t, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((t, v)),
        })
}

/// Where latency `q` falls on the bucket-index axis (bucket k spans [k, k+1), from the
/// previous bucket's bound to its own), interpolated linearly within the bucket.
fn bucket_position(uppers: &[f64], q: f64) -> Option<f64> {
    if !q.is_finite() || q < 0.0 || uppers.is_empty() {
        return None;
    }
    let k = uppers
        .iter()
        .position(|u| *u >= q)
        .unwrap_or(uppers.len() - 1);
    let lower = if k == 0 { 0.0 } else { uppers[k - 1] };
    let upper = uppers[k];
    let within = if upper > lower {
        ((q - lower) / (upper - lower)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Some(k as f64 + within)
}

/// Ascending bucket bounds with every missing doubling between two of them put back
/// (`[0.1, 0.8]` → `[0.1, 0.2, 0.4, 0.8]`), at most [`BUCKETS_SHOWN_MAX`] of them.
fn fill_doublings(uppers: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(uppers.len());
    for &u in uppers {
        if let Some(&last) = out.last()
            && last > 0.0
        {
            let mut next = last * 2.0;
            while next < u * (1.0 - 1e-9) && out.len() < BUCKETS_SHOWN_MAX {
                out.push(next);
                next *= 2.0;
            }
        }
        out.push(u);
    }
    out
}

/// `n` as a percentage of `total` (0 when `total` is).
fn share_pct(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    }
}

/// A label for a plot title: one line, not too long.
fn short_label(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None if s.is_empty() => "(unnamed)".into(),
        None => s,
    }
}

/// An axis number: integers without decimals, large ones with k/M.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.2}"))
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Milliseconds with about three significant digits.
fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// A duration given in ms, in seconds.
fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// A bin width: `100 ms`, `1 s`, `2.5 s`.
fn width(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{} s", trim(format!("{:.1}", ms as f64 / 1000.0)))
    }
}

/// A time since the run started, seconds.
fn seconds(t: f64) -> String {
    format!("{} s", trim(format!("{t:.1}")))
}

fn rate(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}/s")
    } else {
        "—".into()
    }
}

/// An integer with thousands separated by commas.
fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(n: u64, total: u64) -> String {
    if total == 0 {
        "—".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / total as f64)
    }
}

/// " (x% of what)", or nothing when `total` is 0.
fn share(n: u64, total: u64, what: &str) -> String {
    if total == 0 {
        String::new()
    } else {
        format!(" ({} {what})", percent(n, total))
    }
}

/// Text for a Markdown table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// Text for a Markdown heading: one line.
fn inline(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Ms since the epoch as a UTC date and time (`—` for 0, i.e. unknown).
fn utc(epoch_ms: u64) -> String {
    if epoch_ms == 0 {
        return "—".into();
    }
    i64::try_from(epoch_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || format!("{epoch_ms} ms after the epoch"),
            |t| t.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn missing_doublings_are_put_back_on_the_bucket_axis() {
        assert_eq!(fill_doublings(&[0.1, 0.8, 1.6]), [0.1, 0.2, 0.4, 0.8, 1.6]);
        assert_eq!(fill_doublings(&[0.5, 1.0]), [0.5, 1.0]);
        assert_eq!(fill_doublings(&[1.0, 3.0]), [1.0, 2.0, 3.0]);
        assert_eq!(fill_doublings(&[0.0, 1.0]), [0.0, 1.0]);
        assert!(fill_doublings(&[1e-300, 1e300]).len() <= BUCKETS_SHOWN_MAX + 1);
        assert!(fill_doublings(&[]).is_empty());
    }

    #[test]
    fn axes_are_round_and_a_small_backlog_is_counted_in_whole_numbers() {
        assert_eq!(nice_axis(0.0, 6, true), (5.0, 1.0), "an empty backlog: 0–5");
        assert_eq!(nice_axis(1.0, 6, true), (5.0, 1.0), "not 0–1 in tenths");
        assert_eq!(nice_axis(3.0, 6, true), (5.0, 1.0));
        assert_eq!(nice_axis(21.0, 6, true), (25.0, 5.0));
        assert_eq!(nice_axis(1_100.0, 6, true), (1_200.0, 200.0));
        assert_eq!(nice_axis(1_650.0, 6, false), (2_000.0, 500.0));
        assert_eq!(nice_axis(0.3, 6, false), (0.4, 0.1));
        assert_eq!(nice_axis(f64::NAN, 6, false), (1.0, 0.2));
        assert_eq!(nice_axis(-3.0, 6, true), (5.0, 1.0));
    }

    proptest! {
        #[test]
        fn an_axis_covers_its_data_in_a_few_round_steps(
            max in 0f64..1e9,
            ticks in 2u32..12,
            integer in any::<bool>(),
        ) {
            let (top, step) = nice_axis(max, ticks, integer);
            prop_assert!(top >= max, "{max}: top {top}");
            prop_assert!(step > 0.0);
            let steps = top / step;
            prop_assert!((steps - steps.round()).abs() < 1e-6, "{top} / {step}");
            prop_assert!(steps.round() <= f64::from(ticks) * 2.5 + 1.0, "{steps} steps for {ticks}");
            // The step is 1, 2 or 5 × 10^k.
            let mantissa = step / 10f64.powf(step.log10().floor());
            prop_assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                "step {step}"
            );
            if integer {
                prop_assert!(step >= 1.0 && step.fract() == 0.0 && top >= 5.0, "{step} {top}");
            }
        }
    }

    #[test]
    fn the_headline_names_the_seed_when_the_settings_hold_one() {
        let mut record = RunRecord {
            settings: serde_json::json!({ "units": 5, "seed": 12345 }),
            ..RunRecord::default()
        };
        assert!(
            to_markdown(&record).contains("| Seed (`--seed`) | 12345 |"),
            "{}",
            to_markdown(&record)
        );
        record.settings = serde_json::json!({ "units": 5 });
        assert!(!to_markdown(&record).contains("Seed"));
    }
}
