//! Reports of a run: JSON, Markdown and SVG plots.
//!
//! - [`to_json`]: the whole [`RunRecord`], pretty-printed (reads back with `serde_json`).
//! - [`to_markdown`]: a report a person reads without opening the JSON: the headline
//!   figures, the outcomes, latency per route and outcome, the audit's checks and links to
//!   the plots.
//! - [`throughput_svg`]: attempts per second, enqueue and drain rates and the backlog over
//!   the run, with the sale's opening marked.
//! - [`latency_svg`]: a latency histogram (and cumulative share) per route.
//! - [`write_all`]: all four into a folder.
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

use crate::record::{Latency, RunRecord, Second};

/// File names [`write_all`] writes (and the Markdown report links to).
pub const JSON_FILE: &str = "run.json";
/// The Markdown report.
pub const MARKDOWN_FILE: &str = "report.md";
/// The throughput plot.
pub const THROUGHPUT_FILE: &str = "throughput.svg";
/// The latency plot.
pub const LATENCY_FILE: &str = "latency.svg";

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
    if let Some((t, n)) = peak(&r.timeline, |s| Some(s.attempts as f64)) {
        row(
            "Peak attempts in one second",
            format!("{} (second {t})", int(n as u64)),
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
        row("Peak drain rate", format!("{} (second {t})", rate(v)))?;
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
         axis), by second since the run started; the dashed line is the sale's opening:"
    )?;
    writeln!(md)?;
    writeln!(md, "![Throughput and backlog]({THROUGHPUT_FILE})")?;
    writeln!(md)?;
    writeln!(md, "Latency histogram and cumulative share per route:")?;
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
/// x: seconds since the run started; left y: per second; right y: purchases queued. A
/// dashed vertical line marks the sale's opening.
pub fn throughput_svg(record: &RunRecord) -> Result<String, ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: "throughput",
        message: e.to_string(),
    };
    let mut timeline: Vec<&Second> = record.timeline.iter().collect();
    timeline.sort_by_key(|s| s.t_s);

    let attempts: Vec<(f64, f64)> = timeline
        .iter()
        .map(|s| (f64::from(s.t_s), s.attempts as f64))
        .collect();
    let enqueued = segments(&timeline, |s| s.enqueued_per_s);
    let drained = segments(&timeline, |s| s.drained_per_s);
    let backlog = segments(&timeline, |s| s.backlog.map(|b| b as f64));

    let opened_s = record.sale_opened_after_ms as f64 / 1000.0;
    let last_t = timeline.last().map_or(0.0, |s| f64::from(s.t_s));
    let x_max = (last_t + 1.0).max(opened_s + 1.0).max(1.0);
    let rate_max = attempts
        .iter()
        .chain(enqueued.iter().flatten())
        .chain(drained.iter().flatten())
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let backlog_max = backlog
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(record.peak_backlog as f64, f64::max);
    let y_max = headroom(rate_max);
    let b_max = headroom(backlog_max);

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
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..x_max, 0f64..b_max);
        chart
            .configure_mesh()
            .x_desc("seconds since the run started")
            .y_desc("per second")
            .x_label_formatter(&|v| number(*v))
            .y_label_formatter(&|v| number(*v))
            .light_line_style(RGBColor(235, 235, 235))
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
/// log scale), each tick labelled with the bucket bound in ms; bars are answers per bucket
/// (left axis), the line is the cumulative share of answers (right axis), dashed lines mark
/// p50 and p99.
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
            let y_max = headroom(panel.buckets.iter().map(|b| b.1 as f64).fold(0.0, f64::max));
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
                .build_cartesian_2d(BucketAxis { buckets: n }, 0f64..y_max)
                .map_err(|e| err(&e))?
                .set_secondary_coord(0f64..x_max, 0f64..100f64);
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("latency, ms (bucket upper bounds, log scale)")
                .y_desc("answers")
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
                    Rectangle::new([(x + 0.08, 0.0), (x + 0.92, c as f64)], ATTEMPTS.filled())
                }))
                .map_err(|e| err(&e))?
                .label("answers per bucket")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], ATTEMPTS.filled()));
            let total: u64 = panel.buckets.iter().map(|b| b.1).sum();
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

/// Writes `run.json`, `report.md`, `throughput.svg` and `latency.svg` into `dir` (created
/// if missing) and returns their paths, in that order. Nothing is written unless every
/// one of them could be made.
pub fn write_all(record: &RunRecord, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let files = [
        (JSON_FILE, to_json(record)),
        (MARKDOWN_FILE, to_markdown(record)),
        (THROUGHPUT_FILE, throughput_svg(record)?),
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

/// The contiguous runs of `Some` values of the timeline, as points.
fn segments(timeline: &[&Second], value: impl Fn(&Second) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for s in timeline {
        match value(s).filter(|v| v.is_finite()) {
            Some(v) => current.push((f64::from(s.t_s), v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The second with the highest value (the first of equals), if any value is positive.
fn peak(timeline: &[Second], value: impl Fn(&Second) -> Option<f64>) -> Option<(u32, f64)> {
    timeline
        .iter()
        .filter_map(|s| {
            value(s)
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| (s.t_s, v))
        })
        .fold(None, |best: Option<(u32, f64)>, (t, v)| match best {
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

/// An axis's upper end: the data's maximum with some headroom, never empty.
fn headroom(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.1
    } else {
        1.0
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
    use super::*;

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
