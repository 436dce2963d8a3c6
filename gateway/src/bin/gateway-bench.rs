//! `gateway-bench`: the gateway's throughput and latency against a plain axum "hello" route,
//! measured in one run, with one load tool (the `loadgen` crate) and one connection count.
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
//! Sessions and tokens are minted with the gateway's keys before each phase (the token
//! step itself is not measured), so the load side only sends prepared bytes, as it does
//! for the baseline. All
//! load comes from one loopback address, so the per-IP quotas are off (per-user quotas and
//! the repeat rule stay on). Prints one JSON summary with the ratios to the baseline, and
//! exits non-zero if the purchase phase's accounting is off (a 202 without its message).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use clap::Parser;
use gateway::config::{GatewayConfig, LOAD_TEST_HEADER};
use gateway::ledger::MemoryLedger;
use gateway::sales::NewSale;
use gateway::session::{SESSION_COOKIE_NAME, SessionKey};
use gateway::system::{DatabaseSource, QueueSource, StockSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;
use gateway::token::{TokenKey, holder_of};
use http_body_util::Full;
use hyper::Request;
use hyper::header::HeaderValue;
use inventory::MemoryStore;
use loadgen::{LoadResult, LoadSpec, closed_loop, request};
use queue::{Clock as _, Queue, SystemClock};
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
    /// A short run (1 s measured, 0.3 s warm-up per phase, one round).
    #[arg(long)]
    quick: bool,
    /// Queue data directory (a temporary one if absent).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Rounds: each runs the baseline, then the phase; the ratio is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Run only these gateway phases (comma-separated: purchase, sold_out, throttled); the
    /// baseline always runs.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

// The gateway binary's allocator, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const LOAD_TEST: &str = "bench-load-test-secret";
/// Units of the purchase phase's sale: more than any run here sells.
const PURCHASE_UNITS: u64 = 5_000_000;
/// Users of the throttled phase (they cycle).
const REPEAT_USERS: u64 = 1000;
/// Most requests made ahead of a phase.
const MINTED_MAX: usize = 2_000_000;
/// Validity of the sessions and tokens the load tool mints (the gateway's own token
/// lifetime; earlier rounds' unused tokens expire and leave the ledger).
const MINT_TTL_MS: u64 = 60_000;

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

/// The runs of one gateway phase: merged figures and the ratio to the baseline run just
/// before each round.
struct PhaseRuns {
    name: &'static str,
    merged: Option<LoadResult>,
    ratios: Vec<f64>,
    late: u64,
}

fn merge_into(acc: &mut Option<LoadResult>, r: LoadResult) {
    match acc {
        Some(a) => a.merge(&r),
        None => *acc = Some(r),
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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

/// The minting half of the load tool: session cookies and tokens, made with the gateway's
/// keys before a phase starts so that the load side only sends bytes.
struct Mint {
    sessions: SessionKey,
    tokens: TokenKey,
    /// The gateway's ledger: each token is recorded live, as the token step would.
    ledger: Arc<MemoryLedger>,
}

/// One pre-made purchase request: its cookie header and body.
type Minted = (HeaderValue, Bytes);

impl Mint {
    fn one(&self, user: &str, sale: u64) -> Minted {
        let exp = SystemClock.now_ms() + MINT_TTL_MS;
        let cookie = match self.sessions.sign(user, exp) {
            Ok(v) => format!("{SESSION_COOKIE_NAME}={v}"),
            Err(_) => String::new(),
        };
        let (token, nonce) = self.tokens.issue(user, sale, exp);
        // Recorded live as the token step would (also for the sold-out sale: once a second
        // the flag is re-checked against the store by one request that gets that far).
        let _ = self.ledger.issue_now(
            sale,
            gateway::ledger::Claimant::new(holder_of(user), None),
            nonce,
            exp,
            gateway::ledger::Caps::of_sale(u64::MAX),
            SystemClock.now_ms(),
        );
        (
            HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("")),
            Bytes::from(json!({ "token": token }).to_string()),
        )
    }

    /// `count` requests for sale `sale`, user `user(n)` for the n-th.
    fn many(&self, count: usize, sale: u64, user: impl Fn(usize) -> String) -> Arc<Vec<Minted>> {
        Arc::new((0..count).map(|n| self.one(&user(n), sale)).collect())
    }
}

/// The purchase request of pre-made `minted[n]`; past the end of `minted`, one made now
/// for `user()` (counted in `late`, reported: those requests carry minting cost on the load
/// side). The user's name is only formatted then: a pre-made request costs the load side
/// no formatting, as the baseline's costs it none.
fn purchase_request(
    minted: &[Minted],
    mint: &Mint,
    late: &AtomicU64,
    n: u64,
    sale: u64,
    user: impl FnOnce() -> String,
) -> Request<Full<Bytes>> {
    let made;
    let (cookie, body) = match usize::try_from(n).ok().and_then(|i| minted.get(i)) {
        Some(m) => m,
        None => {
            late.fetch_add(1, Ordering::Relaxed);
            made = mint.one(&user(), sale);
            &made
        }
    };
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = match sale {
        1 => hyper::Uri::from_static("/api/sales/1/purchase"),
        2 => hyper::Uri::from_static("/api/sales/2/purchase"),
        _ => hyper::Uri::from_static("/api/sales/3/purchase"),
    };
    let h = req.headers_mut();
    h.insert(hyper::header::COOKIE, cookie.clone());
    h.insert(LOAD_TEST_HEADER, HeaderValue::from_static(LOAD_TEST));
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    req
}

/// The gateway under test, built through `gateway::system::System` as the binary builds it
/// (embedded queue in `queue_dir`, fsync before confirm; in-process stock; load-test mode
/// on; per-IP quotas off; no order workers: the benchmark measures the gateway up to the
/// durable enqueue), with the three bench sales (sale 2 sold out); the engine behind it,
/// and the keys to mint sessions and tokens with.
async fn build_gateway(
    queue_dir: &std::path::Path,
    db_dir: &std::path::Path,
) -> Result<(System, Arc<queue::Engine>, Arc<Mint>), BoxError> {
    let engine = Arc::new(queue::Engine::open(queue_dir, queue::Config::default())?);
    let mut config = GatewayConfig::new("bench-admin");
    config.load_test_secret = Some(LOAD_TEST.into());
    let sessions = SessionKey::generate();
    let tokens = TokenKey::generate();
    let ledger = Arc::new(MemoryLedger::new());
    let mint = Arc::new(Mint {
        sessions: SessionKey::from_bytes(*sessions.as_bytes()),
        tokens: TokenKey::from_bytes(*tokens.as_bytes()),
        ledger: ledger.clone(),
    });
    // No order workers: the benchmark measures the gateway up to the durable enqueue.
    let mut system_config = SystemConfig::new(
        QueueSource::Shared(engine.clone()),
        // The orders database holds the sales (the purchase path reads them from memory).
        DatabaseSource::Url {
            url: format!("sqlite:{}", db_dir.join("orders.db").display()),
            options: order_worker::DbOptions::default(),
        },
        config,
    )
    .without_crew();
    system_config.stock = StockSource::Given {
        store: Box::new(MemoryStore::new()),
        ledger,
    };
    system_config.sessions = sessions;
    system_config.tokens = tokens;
    system_config.throttle = ThrottleConfig::default().without_per_ip();
    let system = System::build(system_config).await?;
    let state = system.state().clone();
    for (id, units) in [(1, PURCHASE_UNITS), (2, 1), (3, PURCHASE_UNITS)] {
        gateway::orders::create_sale_in(
            &state,
            &NewSale {
                id,
                name: format!("bench sale {id}"),
                price_cents: 100,
                units,
                starts_at_ms: 0,
                pay_window_ms: None,
                ends_at_ms: None,
                token_factor: None,
                per_user_limit: None,
                stock_buckets: None,
            },
        )
        .await
        .map_err(|e| format!("creating bench sale {id}: {} ({})", e.message, e.code))?;
    }
    // Sale 2 is sold out, and this gateway knows it.
    state.inventory.reserve(2, "early-bird").await?;
    state.inventory.reserve(2, "late-bird").await?;
    Ok((system, engine, mint))
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

    // Baseline: the plain route, served in this process like the gateway. It runs again
    // right before each gateway phase (the machine's speed drifts; each ratio compares
    // neighbours).
    let hello_addr = serve_hello().await?;
    let hello_run = || closed_loop(spec(hello_addr), |_| request("GET", "/hello", &[], None));
    let first_hello = hello_run().await?;
    report("hello", &first_hello);

    // The gateway, as the binary builds it: embedded queue (fsync before confirm),
    // in-process stock, load-test mode on.
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let (mut system, engine, mint) = build_gateway(&dir, tmp.path()).await?;
    let state = system.state().clone();
    let gw = system.spawn().await?;

    // Enough pre-made requests for 120% of the baseline's rate over a whole phase; any
    // beyond are made on the fly (at the load side's cost) and reported.
    let pool =
        (first_hello.rps() * (warmup + secs) * 1.2).clamp(1000.0, MINTED_MAX as f64) as usize;
    let late = Arc::new(AtomicU64::new(0));
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let rounds = if args.quick { 1 } else { args.rounds.max(1) };
    // (phase, sale, user of request n in round r)
    type UserOf = fn(u64, u64) -> String;
    let phases: [(&str, u64, UserOf); 3] = [
        ("purchase", 1, |r, n| format!("buyer-{r}-{n}")),
        ("sold_out", 2, |r, n| format!("late-{r}-{n}")),
        // Repeaters: REPEAT_USERS users, each presenting its one token again and again.
        ("throttled", 3, |_, n| {
            format!("repeater-{}", n % REPEAT_USERS)
        }),
    ];
    let mut hello_all: Option<LoadResult> = Some(first_hello);
    let mut results: Vec<PhaseRuns> = Vec::new();
    for (name, sale, user) in phases {
        if !wanted(name) {
            continue;
        }
        let mut runs = PhaseRuns {
            name,
            merged: None,
            ratios: Vec::new(),
            late: 0,
        };
        for round in 0..rounds {
            let distinct = if name == "throttled" {
                REPEAT_USERS as usize
            } else {
                pool
            };
            let once = mint.many(distinct, sale, |n| user(round, n as u64));
            let minted: Arc<Vec<Minted>> =
                Arc::new((0..pool).map(|n| once[n % once.len()].clone()).collect());
            let base = hello_run().await?;
            report("hello", &base);
            let (mint, late) = (mint.clone(), late.clone());
            let r = closed_loop(spec(gw), move |n| {
                purchase_request(&minted, &mint, &late, n, sale, || user(round, n))
            })
            .await?;
            report(name, &r);
            runs.ratios.push(r.rps() / base.rps().max(1e-9));
            merge_into(&mut hello_all, base);
            merge_into(&mut runs.merged, r);
        }
        runs.late = late.swap(0, Ordering::Relaxed);
        results.push(runs);
    }
    let _ = system.stop().await?;

    // Accounting: every 202 of the purchase phase has its message in the queue.
    let accepted = state.metrics.accepted.load(Ordering::Relaxed);
    // No purchase phase ran (`--only sold_out`, say): the topic was never made, and nothing
    // was queued.
    let queued = match engine.stats(&state.config.orders_topic).await {
        Ok(stats) => stats.next_offset - stats.log_start,
        Err(queue::Error::NoSuchTopic(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    let accounting_ok = accepted == queued;
    // How the accepted purchases were made durable: fsync rounds, and purchases per round
    // (the gateway's batching and the writer's group commit together).
    let writer = engine.metrics();
    let queue_json = json!({
        "commit_rounds": writer.commit_rounds,
        "purchases_per_round": if writer.commit_rounds == 0 {
            0.0
        } else {
            (queued as f64 / writer.commit_rounds as f64 * 10.0).round() / 10.0
        },
    });
    engine.close()?;

    let hello = hello_all.ok_or("no baseline")?;
    let mut phases_json = serde_json::Map::new();
    phases_json.insert("hello".into(), hello.summary());
    let mut ratios = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    let mut late_json = serde_json::Map::new();
    for runs in &results {
        let Some(r) = &runs.merged else { continue };
        let ratio = (median(&runs.ratios) * 1000.0).round() / 1000.0;
        let mut summary = r.summary();
        summary["ratio_per_round"] = json!(runs.ratios);
        phases_json.insert(runs.name.into(), summary);
        ratios.insert(runs.name.into(), json!(ratio));
        late_json.insert(runs.name.into(), json!(runs.late));
        if runs.name == "purchase" {
            targets.insert("purchase_ge_half_baseline".into(), json!(ratio >= 0.5));
            targets.insert(
                "purchase_p99_under_20ms".into(),
                json!(r.quantile_ms(0.99) < 20.0),
            );
        } else {
            targets.insert(
                format!("{}_ge_80pct_baseline", runs.name),
                json!(ratio >= 0.8),
            );
        }
    }
    let summary = json!({
        "bench": "gateway",
        "unix_ms": SystemClock.now_ms(),
        "machine": machine(),
        "connections": args.connections,
        "warmup_s": warmup,
        "measured_s": secs,
        "rounds": rounds,
        "phases": phases_json,
        "ratios_to_hello": ratios,
        "targets": targets,
        "accounting": {"accepted": accepted, "queued": queued, "ok": accounting_ok},
        "queue_writer": queue_json,
        "premade_requests": pool,
        "made_during_phase": late_json,
    });
    let text = serde_json::to_string(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    Ok(accounting_ok)
}

fn main() -> ExitCode {
    order_worker::allocator::configure();
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
