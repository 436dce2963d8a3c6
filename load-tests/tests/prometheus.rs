//! The alert rules and a real Prometheus against every kind of process.
//!
//! - `rules_check_and_their_unit_tests_pass`: `promtool check rules` on
//!   deploy/prometheus/rules.yml and `promtool test rules` on its tests.yml (each alert
//!   firing for the series that should trip it and silent for its neighbour).
//! - `prometheus_scrapes_every_process`: a broker (`queue serve --metrics`), a gateway on
//!   it (with one worker and one canceller in process) and an `order-worker --metrics`, each
//!   a real process on free loopback ports with its files in a temporary directory; a real
//!   `prometheus` (Debian's, `scripts/ensure-prometheus`) with a scrape configuration
//!   naming the three and the rules file; the test polls its HTTP API (bounded) until
//!   every target is `up` and the rules are loaded and healthy, then runs `promtool check
//!   metrics` on each `/metrics` body (clean: no lint problem) and checks that each body
//!   carries the names the rules read. Every process is killed when the test ends.
//!
//! Needs the `queue`, `gateway` and `order-worker` binaries (support/procs.rs) and
//! `prometheus`/`promtool` on PATH: missing ones skip the test with the reason, and fail
//! it under `CI`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::procs::{Proc, binaries_or_skip, run_bounded};

/// Longest wait for a process's start line, a command, or Prometheus to see every target.
const WAIT: Duration = Duration::from_secs(60);
/// The pause between two looks at Prometheus's API.
const POLL: Duration = Duration::from_millis(200);

/// deploy/prometheus in the workspace.
fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy/prometheus")
}

/// The path of `program` on PATH, or `None` (the test is skipped, saying why; under `CI`
/// it fails).
fn tool_or_skip(program: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if order_worker::testing::under_ci() => {
            panic!("{what}: {program} is not on PATH; run scripts/ensure-prometheus")
        }
        None => {
            eprintln!("skipping {what}: {program} is not on PATH; run scripts/ensure-prometheus");
            None
        }
    }
}

/// Runs `promtool ARGS` in `dir`; panics with its output unless it succeeds.
fn promtool(promtool: &Path, dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = match stdin {
        None => {
            let mut c = Command::new(promtool);
            c.args(args).current_dir(dir);
            run_bounded(c, WAIT).unwrap_or_else(|e| panic!("promtool {args:?}: {e}"))
        }
        Some(input) => {
            let mut child = Command::new(promtool)
                .args(args)
                .current_dir(dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start promtool");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write to promtool");
            child.wait_with_output().expect("promtool output")
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn rules_check_and_their_unit_tests_pass() {
    let Some(promtool_bin) = tool_or_skip("promtool", "the rule checks") else {
        return;
    };
    let dir = rules_dir();
    let out = promtool(&promtool_bin, &dir, &["check", "rules", "rules.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&promtool_bin, &dir, &["test", "rules", "tests.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A free loopback port (bound and released; the process given it binds it a moment
/// later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` from `addr` over HTTP/1.0 (no chunking, the server closes): status line and
/// body.
fn http_get(addr: &str, path: &str) -> Result<(String, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read {addr}{path}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: no header end in {answer:?}"))?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// The address in a start line after `prefix` (up to `suffix` or the end).
fn addr_after(line: &str, prefix: &str, suffix: &str) -> String {
    let rest = &line[line.find(prefix).expect("prefix") + prefix.len()..];
    rest.split(suffix)
        .next()
        .unwrap_or(rest)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn prometheus_scrapes_every_process() {
    let what = "the Prometheus scrape test";
    let Some(bins) = binaries_or_skip(what) else {
        return;
    };
    let Some(prometheus_bin) = tool_or_skip("prometheus", what) else {
        return;
    };
    let Some(promtool_bin) = tool_or_skip("promtool", what) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let path = |p: &str| t.join(p).to_str().expect("utf-8 path").to_string();

    let mut broker = Proc::new(
        "queue",
        &bins.queue,
        vec![
            "serve".into(),
            "--data".into(),
            path("queue"),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ],
        t,
    );
    broker.spawn();
    let line = broker.wait_for_line("queue: listening on ", WAIT);
    let broker_addr = addr_after(&line, "listening on ", " ");
    let line = broker.wait_for_line("queue: metrics on http://", WAIT);
    let broker_metrics = addr_after(&line, "http://", "/metrics");

    let database = format!("sqlite:{}", path("orders.db"));
    let queue_target = format!("tcp://{broker_addr}");
    let mut gateway = Proc::new(
        "gateway",
        &bins.gateway,
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--queue".into(),
            queue_target.clone(),
            "--database".into(),
            database.clone(),
            "--workers".into(),
            "1".into(),
            "--cancellers".into(),
            "1".into(),
        ],
        t,
    );
    gateway.spawn();
    let line = gateway.wait_for_line("gateway: listening on http://", WAIT);
    let gateway_addr = addr_after(&line, "http://", "/");

    let mut worker = Proc::new(
        "order-worker",
        &bins.order_worker,
        vec![
            "--queue".into(),
            queue_target,
            "--database".into(),
            database,
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ],
        t,
    );
    worker.spawn();
    let line = worker.wait_for_line("order-worker: metrics on http://", WAIT);
    let worker_metrics = addr_after(&line, "http://", "/metrics");

    let targets = [
        ("gateway", gateway_addr.as_str()),
        ("order-worker", worker_metrics.as_str()),
        ("queue", broker_metrics.as_str()),
    ];
    let rules = rules_dir().join("rules.yml");
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
        ));
    }
    std::fs::write(t.join("prometheus.yml"), &config).expect("write the configuration");
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Proc::new(
        "prometheus",
        &prometheus_bin,
        vec![
            format!("--config.file={}", path("prometheus.yml")),
            format!("--storage.tsdb.path={}", path("tsdb")),
            format!("--web.listen-address={web}"),
        ],
        t,
    );
    prometheus.spawn();

    // Every target up, polled with a bound.
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Some(status) = prometheus.exited() {
            panic!("prometheus exited ({status}):\n{}", prometheus.log_tail());
        }
        if let Ok((status, body)) = http_get(&web, "/api/v1/targets?state=active") {
            last = format!("{status}\n{body}");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let active = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up: Vec<&str> = active
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["job"].as_str())
                .collect();
            if targets.iter().all(|(job, _)| up.contains(job)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every target up within {WAIT:?}; last answer:\n{last}\n{}",
            prometheus.log_tail()
        );
        std::thread::sleep(POLL);
    }
    // The rules loaded and evaluated without error.
    let (status, body) = http_get(&web, "/api/v1/rules").expect("rules");
    assert!(status.contains("200"), "{status}\n{body}");
    let v: Value = serde_json::from_str(&body).expect("rules JSON");
    let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), 14, "every rule loaded: {body}");
    for r in &rules {
        assert_ne!(r["health"], "err", "{r}");
    }

    // Each body: clean for promtool, and carrying what the rules read.
    let wants: [(&str, &[&str]); 3] = [
        (
            "gateway",
            &[
                "gateway_responses_total",
                "gateway_purchases_total",
                "orders_heartbeat_timestamp_seconds",
            ],
        ),
        (
            "order-worker",
            &["orders_heartbeat_timestamp_seconds", "orders_created_total"],
        ),
        (
            "queue",
            &[
                "queue_fsync_duration_seconds_bucket",
                "queue_topic_dead_letters_pending",
                "queue_group_depth",
            ],
        ),
    ];
    for ((job, addr), (_, names)) in targets.iter().zip(wants) {
        let (status, body) = http_get(addr, "/metrics").expect("metrics");
        assert!(status.contains("200"), "{job}: {status}");
        let lint = promtool(
            &promtool_bin,
            t,
            &["check", "metrics"],
            Some(body.as_bytes()),
        );
        assert!(
            lint.trim().is_empty(),
            "{job}: promtool check metrics:\n{lint}"
        );
        for name in names {
            assert!(body.contains(name), "{job}: no {name} in\n{body}");
        }
    }
    drop((prometheus, worker, gateway, broker));
}
