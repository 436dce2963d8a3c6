//! Schemathesis (PyPI) fuzzes the running gateway from its own OpenAPI description
//! (`GET /api/openapi.json`): a bounded property-based session against a real system (the
//! embedded queue, SQLite and order workers in a temporary directory, with the demo sale),
//! with a signed-in shopper's cookie and the admin's bearer secret on every request so the
//! routes behind them are exercised, not only their 401s. It checks that no answer is a
//! 5xx, and that every answer's status, content type and body are the ones the description
//! gives for that operation. Two sessions: every operation but those that change a sale's
//! life (pause, end, edit: [`LIFE_OPERATIONS`]), so the demo sale stays on sale and the
//! purchase path is reached; then those.
//!
//! The session is bounded by [`MAX_EXAMPLES`] cases per operation and phase (about 1,000
//! requests, some twenty seconds) and killed, failing the test, after [`SESSION_TIMEOUT`].
//! Its seed is fixed ([`SEED_DEFAULT`], `SCHEMATHESIS_SEED` for another);
//! `SCHEMATHESIS_DUMP=FILE` writes the run's output, its JUnit report and the description
//! to `FILE` and `FILE.openapi.json`.
//!
//! Schemathesis comes from `scripts/ensure-schemathesis` (a virtual environment under
//! `~/.cache/seckill/schemathesis`; `SECKILL_SCHEMATHESIS` names another binary). Without
//! it the test is skipped with a message, except under `CI`, where it fails.

use std::path::PathBuf;
use std::time::Duration;

use gateway::config::{GatewayConfig, ServeLimits};
use gateway::system::{DatabaseSource, QueueSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;

use super::{ADMIN, LOAD_TEST};
use gateway::config::LOAD_TEST_HEADER;

/// The default throttles without their quotas, and the repeat rule at its loosest.
fn unthrottled() -> ThrottleConfig {
    let mut t = ThrottleConfig::default().without_per_ip();
    for r in [
        &mut t.login,
        &mut t.captcha,
        &mut t.token,
        &mut t.purchase,
        &mut t.ticket,
        &mut t.order,
    ] {
        r.per_user = None;
    }
    t.repeat_max = gateway::throttle::REPEAT_MAX_LIMIT;
    t
}

/// Test cases per operation and phase (the bound on the session's size;
/// `SCHEMATHESIS_MAX_EXAMPLES` overrides it for a deeper run by hand).
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
    )
    // A busy CI machine (every other test of this binary runs beside it) must not turn a
    // slow answer into a 503 `timeout`, which the fuzzer would rightly report.
    .with_limits(ServeLimits {
        request_timeout_ms: 120_000,
        ..ServeLimits::default()
    });
    config.demo_units = 100;
    // One fuzzer is one user on one address: without quotas, or it would mostly see 429s
    // (which the description allows, so the run would pass while testing little).
    config.throttle = unthrottled();
    // The fuzzer's token requests pass without a captcha (it sends the load-test header),
    // so its purchases can get past the token check.
    config.gateway.load_test_secret = Some(LOAD_TEST.into());
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
    let max_examples: u32 = std::env::var("SCHEMATHESIS_MAX_EXAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_EXAMPLES);
    let run = Session {
        st: &st,
        url: format!("http://{addr}/api/openapi.json"),
        cookie: format!("{}={session}", gateway::session::SESSION_COOKIE_NAME),
        seed,
        max_examples,
        dir: dir.path(),
    };
    // First every operation but those that change a sale's life (they would pause or end
    // the demo sale early, and the purchase path would then be tested only as refused);
    // then those, on what the first session left.
    let (text, junit) = run.run("life", "--exclude-name-regex").await;
    let shown: String = text.chars().take(OUTPUT_SHOWN_MAX).collect();
    // The signed-in routes were reached with the session, not only refused: tokens were
    // issued, and the fuzzer's purchases passed the session check to the token check.
    let m = &state.metrics;
    let r = std::sync::atomic::Ordering::Relaxed;
    assert!(m.tokens_issued.load(r) > 0, "no token was issued:\n{shown}");
    assert!(
        m.bad_token.load(r) > 0,
        "no purchase got past the session:\n{shown}"
    );
    let (text_life, junit_life) = run.run("life", "--include-name-regex").await;
    let text = format!("{text}\n{text_life}");
    let junit = format!("{junit}\n{junit_life}");
    let shown: String = text.chars().take(OUTPUT_SHOWN_MAX).collect();
    // It tested every operation of the description (a run that tested nothing would pass).
    let operations: serde_json::Value =
        serde_json::from_str(gateway::openapi::document_json()).expect("the description");
    // Every operation of the description was tested, except the description itself
    // (Schemathesis leaves out the schema it was loaded from).
    for (path, item) in operations["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let name = format!("{} {path}", method.to_uppercase());
            assert!(
                name == "GET /api/openapi.json" || junit.contains(&format!("\"{name}\"")),
                "{name} was not tested:\n{junit}\n{shown}"
            );
        }
    }
    assert!(
        !junit.contains("<skipped"),
        "no operation was skipped:\n{junit}"
    );
    if let Ok(to) = std::env::var("SCHEMATHESIS_DUMP") {
        std::fs::write(
            &to,
            format!(
                "{text}\n{junit}\naccepted {} tokens {} bad_token {}",
                m.accepted.load(r),
                m.tokens_issued.load(r),
                m.bad_token.load(r)
            ),
        )
        .expect("dump");
        std::fs::write(
            format!("{to}.openapi.json"),
            gateway::openapi::document_json(),
        )
        .expect("dump");
    }
    let stopped = system.stop().await.expect("a clean stop");
    assert_eq!(stopped.purchases_running, 0);
}

/// The operations that change a sale's life (pause, end, edit), as Schemathesis names them.
const LIFE_OPERATIONS: &str =
    r"^(PATCH /admin/api/sales/\{id\}|POST /admin/api/sales/\{id\}/(pause|end))$";

/// One Schemathesis session against the running gateway.
struct Session<'a> {
    st: &'a std::path::Path,
    url: String,
    cookie: String,
    seed: u64,
    max_examples: u32,
    dir: &'a std::path::Path,
}

impl Session<'_> {
    /// Runs a session over the operations `filter` (`--include-name-regex` or
    /// `--exclude-name-regex`) selects with [`LIFE_OPERATIONS`]; asserts it passed and
    /// answers its output and its JUnit report.
    async fn run(&self, tag: &str, filter: &str) -> (String, String) {
        let name = format!("{tag}{filter}");
        let report = self.dir.join(format!("{name}.xml"));
        let out_path = self.dir.join(format!("{name}.out"));
        let out_file = std::fs::File::create(&out_path).expect("output file");
        let mut cmd = std::process::Command::new(self.st);
        cmd.arg("run")
            .arg(&self.url)
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            ])
            .args([filter, LIFE_OPERATIONS])
            .arg(format!("--max-examples={}", self.max_examples))
            .arg(format!("--seed={}", self.seed))
            .args(["--workers", "1", "--request-timeout", "30", "--no-shrink"])
            .arg("--header")
            .arg(format!("Cookie: {}", self.cookie))
            .arg("--header")
            .arg(format!("Authorization: Bearer {ADMIN}"))
            .arg("--header")
            .arg(format!("{LOAD_TEST_HEADER}: {LOAD_TEST}"))
            .args(["--report", "junit", "--report-junit-path"])
            .arg(&report)
            .current_dir(self.dir)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(out_file.try_clone().expect("output file"))
            .stderr(out_file);
        let mut child = cmd.spawn().expect("run schemathesis");
        // The gateway serves on this runtime's workers while the child runs: its exit is
        // polled (with a bound) rather than waited for on a worker.
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("schemathesis's status") {
                break status;
            }
            if started.elapsed() > SESSION_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&out_path).unwrap_or_default();
                panic!("schemathesis ran longer than {SESSION_TIMEOUT:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let text = std::fs::read_to_string(&out_path).expect("schemathesis's output");
        let shown: String = text.chars().take(OUTPUT_SHOWN_MAX).collect();
        let seed = self.seed;
        assert!(
            status.success(),
            "schemathesis ({filter} {LIFE_OPERATIONS}) failed (seed {seed}; replay with SCHEMATHESIS_SEED={seed}):\n{shown}"
        );
        let junit = std::fs::read_to_string(&report).expect("the JUnit report");
        (text, junit)
    }
}
