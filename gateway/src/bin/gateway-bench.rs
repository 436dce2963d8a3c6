//! `gateway-bench`: the gateway's throughput and latency against a plain axum "hello" route,
//! measured in one run, with one load tool (`gateway::loadgen`) and one connection count.
//!
//! Phases (each a closed loop of `--connections` keep-alive connections, a warm-up, then
//! `--secs` measured):
//! - `hello`: `GET /hello` on a bare axum router (the baseline);
//! - `purchase`: `POST /api/sales/1/purchase` in load-test mode with a fresh user and token
//!   per request, on a sale with enough units: session → token → throttle → sold-out flag
//!   → token spend → reservation → durable publish to the embedded queue (fsync before the
//!   answer) → 202;
//! - `sold_out`: the same request on a sold-out sale (410 from the sold-out flag);
//! - `throttled`: users repeating purchase attempts (429 from the throttle).
//!
//! Sessions and tokens are minted with the gateway's keys before each request (by the load
//! tool, so their cost lands on the load side); the token step itself is not measured. All
//! load comes from one loopback address, so the per-IP quotas are off (per-user quotas and
//! the repeat rule stay on). Prints one JSON summary with the ratios to the baseline, and
//! exits non-zero if the purchase phase's accounting is off (a 202 without its message).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use gateway::app::{AppState, GatewayConfig, LOAD_TEST_HEADER, ServeLimits, now_ms};
use gateway::loadgen::{LoadResult, LoadSpec, closed_loop, request};
use gateway::sales::Sale;
use gateway::session::{SESSION_COOKIE_NAME, SessionKey};
use gateway::throttle::ThrottleConfig;
use gateway::token::TokenKey;
use inventory::{Inventory, MemoryStore};
use queue::Queue;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "gateway-bench",
    about = "Gateway throughput against a plain axum route"
)]
struct Args {
    /// Connections (requests in flight), the same for every phase.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Warm-up seconds per phase (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// A short run (1 s measured, 0.3 s warm-up per phase).
    #[arg(long)]
    quick: bool,
    /// Queue data directory (a temporary one if absent).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const LOAD_TEST: &str = "bench-load-test-secret";
/// Units of the purchase phase's sale: more than any run here sells.
const PURCHASE_UNITS: u64 = 5_000_000;
/// Users of the throttled phase (they cycle).
const REPEAT_USERS: u64 = 1000;
/// Validity of the sessions and tokens the load tool mints.
const MINT_TTL_MS: u64 = 600_000;

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "os": std::env::consts::OS,
    })
}

async fn serve_hello() -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new().route("/hello", get(|| async { "hello" }));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

fn report(name: &str, r: &LoadResult) {
    let _ = writeln!(
        std::io::stderr(),
        "{name:>10}: {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}  statuses {:?}",
        r.rps(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.errors,
        r.statuses
    );
}

/// The minting half of the load tool: a session cookie and a token for (user, sale).
struct Mint {
    sessions: SessionKey,
    tokens: TokenKey,
}

impl Mint {
    fn purchase(
        &self,
        user: &str,
        sale: u64,
    ) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
        let exp = now_ms() + MINT_TTL_MS;
        let cookie = match self.sessions.sign(user, exp) {
            Ok(v) => format!("{SESSION_COOKIE_NAME}={v}"),
            Err(_) => String::new(),
        };
        let (token, _) = self.tokens.issue(user, sale, exp);
        request(
            "POST",
            &format!("/api/sales/{sale}/purchase"),
            &[("cookie", &cookie), (LOAD_TEST_HEADER, LOAD_TEST)],
            Some(&json!({ "token": token })),
        )
    }
}

async fn run(args: Args) -> Result<bool, BoxError> {
    let (warmup, secs) = if args.quick {
        (0.3, 1.0)
    } else {
        (args.warmup, args.secs)
    };
    let spec = |addr| LoadSpec {
        addr,
        connections: args.connections,
        warmup: Duration::from_secs_f64(warmup.max(0.0)),
        measure: Duration::from_secs_f64(secs.max(0.1)),
    };

    // Baseline.
    let hello_addr = serve_hello().await?;
    let hello = closed_loop(spec(hello_addr), |_| request("GET", "/hello", &[], None)).await?;
    report("hello", &hello);

    // The gateway, as the binary builds it: embedded queue (fsync before confirm),
    // in-process stock, load-test mode on.
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let engine = Arc::new(queue::Engine::open(&dir, queue::Config::default())?);
    let mut config = GatewayConfig::new("bench-admin");
    config.load_test_secret = Some(LOAD_TEST.into());
    let mut throttle = ThrottleConfig::default();
    for r in [
        &mut throttle.login,
        &mut throttle.captcha,
        &mut throttle.token,
        &mut throttle.purchase,
    ] {
        r.per_ip = None;
    }
    let sessions = SessionKey::generate();
    let tokens = TokenKey::generate();
    let mint = Arc::new(Mint {
        sessions: SessionKey::from_bytes(*sessions.as_bytes()),
        tokens: TokenKey::from_bytes(*tokens.as_bytes()),
    });
    let state = Arc::new(AppState::new(
        config,
        Inventory::new(Box::new(MemoryStore::new()), Duration::from_millis(1000)),
        engine.clone(),
        sessions,
        tokens,
        throttle,
    )?);
    for (id, units) in [(1, PURCHASE_UNITS), (2, 1), (3, PURCHASE_UNITS)] {
        state.inventory.store().define(id, units).await?;
        state.catalogue.add(Sale {
            id,
            name: format!("bench sale {id}"),
            price_cents: 100,
            units,
            starts_at_ms: 0,
        })?;
    }
    // Sale 2 is sold out, and this gateway knows it.
    state.inventory.reserve(2, "early-bird").await?;
    state.inventory.reserve(2, "late-bird").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::app::serve(
        listener,
        state.clone(),
        ServeLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let m = mint.clone();
    let purchase = closed_loop(spec(gw), move |n| m.purchase(&format!("buyer-{n}"), 1)).await?;
    report("purchase", &purchase);
    let m = mint.clone();
    let sold_out = closed_loop(spec(gw), move |n| m.purchase(&format!("late-{n}"), 2)).await?;
    report("sold_out", &sold_out);
    let m = mint.clone();
    let throttled = closed_loop(spec(gw), move |n| {
        m.purchase(&format!("repeater-{}", n % REPEAT_USERS), 3)
    })
    .await?;
    report("throttled", &throttled);
    let _ = stop.send(());
    server.await??;

    // Accounting: every 202 of the purchase phase has its message in the queue.
    let accepted = state
        .metrics
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let stats = engine.stats(&state.config.orders_topic).await?;
    let queued = stats.next_offset - stats.log_start;
    let accounting_ok = accepted == queued;
    engine.close()?;

    let base = hello.rps().max(1e-9);
    let ratio = |r: &LoadResult| (r.rps() / base * 1000.0).round() / 1000.0;
    let targets = json!({
        "purchase_ge_half_baseline": ratio(&purchase) >= 0.5,
        "purchase_p99_under_20ms": purchase.quantile_ms(0.99) < 20.0,
        "sold_out_ge_80pct_baseline": ratio(&sold_out) >= 0.8,
        "throttled_ge_80pct_baseline": ratio(&throttled) >= 0.8,
    });
    let summary = json!({
        "bench": "gateway",
        "unix_ms": now_ms(),
        "machine": machine(),
        "connections": args.connections,
        "warmup_s": warmup,
        "measured_s": secs,
        "phases": {
            "hello": hello.summary(),
            "purchase": purchase.summary(),
            "sold_out": sold_out.summary(),
            "throttled": throttled.summary(),
        },
        "ratios_to_hello": {
            "purchase": ratio(&purchase),
            "sold_out": ratio(&sold_out),
            "throttled": ratio(&throttled),
        },
        "targets": targets,
        "accounting": {"accepted": accepted, "queued": queued, "ok": accounting_ok},
    });
    let text = serde_json::to_string(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    Ok(accounting_ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            let _ = writeln!(
                std::io::stderr(),
                "gateway-bench: accounting failed: a 202 without its queue message"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
