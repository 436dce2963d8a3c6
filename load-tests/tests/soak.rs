//! Soak in CI (issue 16): sale after sale with cancellations on the all-in-one system
//! (embedded queue, SQLite) for `SOAK_SECS` seconds (default 45; an hour on demand:
//! `SOAK_SECS=3600`), sampling RSS, open files, queue segment files and database rows after
//! every sale; every bound of [`load_tests::soak::Spec`] must hold, retention must have
//! deleted segments, every unpaid order must be cancelled and the audit must pass. The plot
//! goes to `SOAK_PLOT` (a directory) or `target/load-tests/soak-ci/`.
//!
//! Its own test binary, so that RSS and open files are this run's alone.

use load_tests::soak::{SOAK_PLOT_ENV, SOAK_SECS_ENV, Spec, run, write};

/// The CI soak's length, s, unless `SOAK_SECS` says otherwise.
const CI_SECS: u64 = 45;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_with_cancellations_keep_memory_files_segments_and_rows_bounded() {
    let secs = std::env::var(SOAK_SECS_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CI_SECS);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = Spec {
        secs,
        ..Spec::default()
    };
    let report = run(spec, dir.path()).await.expect("the soak ran");
    let out = std::env::var_os(SOAK_PLOT_ENV).map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/load-tests/soak-ci")
        },
        std::path::PathBuf::from,
    );
    let (json, svg) = write(&report, &out).expect("the report and plot are written");
    println!("soak: {} and {}", json.display(), svg.display());
    for line in &report.audit {
        println!("{line}");
    }
    for c in &report.checks {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    for c in &report.checks {
        assert!(c.passed, "{}: {}", c.name, c.detail);
    }
    let svg_text = std::fs::read_to_string(&svg).expect("the plot");
    assert!(
        svg_text.starts_with("<svg") && svg_text.contains("polyline"),
        "not a plot"
    );
}
