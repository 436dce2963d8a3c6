//! Schemathesis (PyPI) fuzzes the running gateway from its own OpenAPI description
//! (`GET /api/openapi.json`): a bounded property-based session against a real system (the
//! embedded queue, SQLite and order workers in a temporary directory, with the demo sale),
//! with a signed-in shopper's cookie and the admin's bearer secret on every request so the
//! routes behind them are exercised, not only their 401s. It checks that no answer is a
//! 5xx, and that every answer's status, content type and body are the ones the description
//! gives for that operation.
//!
//! Schemathesis comes from `scripts/ensure-schemathesis` (a virtual environment under
//! `~/.cache/seckill/schemathesis`; `SECKILL_SCHEMATHESIS` names another binary). Without
//! it the test is skipped with a message, except under `CI`, where it fails.

use std::path::PathBuf;
use std::time::Duration;

use gateway::config::GatewayConfig;
use gateway::system::{DatabaseSource, QueueSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;

use super::ADMIN;

/// Test cases per operation and phase (the bound on the session's size).
const MAX_EXAMPLES: u32 = 30;
/// The longest the whole session may take before it is killed and the test fails.
const SESSION_TIMEOUT: Duration = Duration::from_secs(420);
/// The seed of the generated cases, so a failure can be replayed (printed on failure;
/// `SCHEMATHESIS_SEED` overrides it).
const SEED_DEFAULT: u64 = 18;
/// Most bytes of schemathesis's output shown when it fails.
const OUTPUT_SHOWN_MAX: usize = 60_000;

/// The schemathesis binary, if installed (see the module's doc).
fn schemathesis() -> Option<PathBuf> {
    let path = match std::env::var_os("SECKILL_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            cache.join("seckill/schemathesis/venv/bin/schemathesis")
        }
    };
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{} not installed (scripts/ensure-schemathesis installs it)",
        path.display()
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg}; under CI the schemathesis test never skips"
    );
    // Straight to stderr: the test harness's capture would hide an `eprintln!`.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED schemathesis test: {msg}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_description() {
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SystemConfig::new(
        QueueSource::Open(dir.path().join("queue").display().to_string()),
        DatabaseSource::Url {
            url: format!("sqlite:{}", dir.path().join("orders.db").display()),
            options: order_worker::DbOptions::default(),
        },
        GatewayConfig::new(ADMIN),
    );
    config.demo_units = 100;
    // Every request comes from loopback: no per-IP quotas, or the fuzzer would mostly see
    // 429s (which the description allows, so the run would pass while testing little).
    config.throttle = ThrottleConfig::default().without_per_ip();
    let mut system = System::build(config).await.expect("system");
    let addr = system.spawn().await.expect("serve");
    let state = system.state().clone();
    let session = state
        .sessions
        .sign("fuzzer", state.now_ms() + 3_600_000)
        .expect("a session");
    let seed = std::env::var("SCHEMATHESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED_DEFAULT);
    let report = dir.path().join("junit.xml");
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("run")
        .arg(format!("http://{addr}/api/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .arg(format!("--max-examples={MAX_EXAMPLES}"))
        .arg(format!("--seed={seed}"))
        .args(["--workers", "1", "--request-timeout", "30", "--no-shrink"])
        .arg("--header")
        .arg(format!(
            "Cookie: {}={session}",
            gateway::session::SESSION_COOKIE_NAME
        ))
        .arg("--header")
        .arg(format!("Authorization: Bearer {ADMIN}"))
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(SESSION_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {SESSION_TIMEOUT:?}"))
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: String = text.chars().take(OUTPUT_SHOWN_MAX).collect();
    assert!(
        out.status.success(),
        "schemathesis failed (seed {seed}; replay with SCHEMATHESIS_SEED={seed}):\n{shown}"
    );
    // It tested every operation of the description (a run that tested nothing would pass).
    let junit = std::fs::read_to_string(&report).expect("the JUnit report");
    let operations: serde_json::Value =
        serde_json::from_str(gateway::openapi::document_json()).expect("the description");
    let described: usize = operations["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |m| m.len()))
        .sum();
    let cases = junit.matches("<testcase ").count();
    assert_eq!(
        cases, described,
        "one test case per operation in the report:\n{junit}\n{shown}"
    );
    assert!(
        !junit.contains("<skipped"),
        "no operation was skipped:\n{junit}"
    );
    // The signed-in routes were reached with the session, not only refused: the fuzzer's
    // purchases passed the session check and reached the token check at least once.
    let bad_tokens = state
        .metrics
        .bad_token
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(bad_tokens > 0, "no purchase got past the session:\n{shown}");
    system.stop().await.expect("a clean stop");
}
