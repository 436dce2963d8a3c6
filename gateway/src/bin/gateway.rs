//! `gateway`: the flash-sale HTTP gateway. Parses flags (and environment), opens the queue
//! (embedded directory or `tcp://` broker) and the stock store (in-process or Redis), and
//! serves `gateway::app` until SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gateway::app::{AppState, GatewayConfig, ServeLimits};
use gateway::ledger::{MemoryLedger, RedisLedger, TokenLedger};
use gateway::session::SessionKey;
use gateway::throttle::ThrottleConfig;
use gateway::token::TokenKey;
use inventory::{Inventory, MemoryStore, RedisStore, StockStore};

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "The flash-sale HTTP gateway")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The queue: a directory (embedded engine) or `tcp://HOST:PORT` (a `queue serve` broker).
    #[arg(long, env = "GATEWAY_QUEUE", default_value = "data/queue")]
    queue: String,
    /// The stock store: `memory` or a Redis URL (`redis://127.0.0.1:6379`).
    #[arg(long, env = "GATEWAY_INVENTORY", default_value = "memory")]
    inventory: String,
    /// Key prefix in Redis.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "seckill:")]
    redis_prefix: String,
    /// Admin API bearer secret (generated and printed if absent, unless --production).
    #[arg(long, env = "GATEWAY_ADMIN_SECRET")]
    admin_secret: Option<String>,
    /// Session and token signing secret, 64 hex digits (generated if absent, unless
    /// --production; a generated one invalidates sessions and tokens at restart).
    #[arg(long, env = "GATEWAY_SECRET")]
    secret: Option<String>,
    /// Refuse to start without configured secrets.
    #[arg(long)]
    production: bool,
    /// Load-test mode: requests carrying this secret in `x-load-test-secret` skip the
    /// captcha. Off unless set; logged loudly.
    #[arg(long, env = "GATEWAY_LOAD_TEST_SECRET")]
    load_test_secret: Option<String>,
    /// Create a demo sale (id 1) with this many units, open at once, so the gateway can be
    /// tried straight away.
    #[arg(long)]
    demo_units: Option<u64>,
    /// Tokens a sale issues at most, per unit.
    #[arg(long, default_value_t = 1.5)]
    token_factor: f64,
    /// Requests in flight at once (503 beyond).
    #[arg(long, default_value_t = ServeLimits::default().max_in_flight)]
    max_in_flight: usize,
    /// Request timeout, ms (503 beyond).
    #[arg(long, default_value_t = ServeLimits::default().request_timeout_ms)]
    request_timeout_ms: u64,
    /// Largest request body, bytes (413 beyond).
    #[arg(long, default_value_t = ServeLimits::default().body_limit_bytes)]
    body_limit_bytes: usize,
}

/// Longest wait at shutdown for purchases past their reservation.
const SHUTDOWN_COMMITS_WAIT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn hex32(s: &str) -> Result<[u8; 32], BoxError> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a secret is 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

fn random_hex() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn run(args: Args) -> Result<(), BoxError> {
    let secret = match (&args.secret, args.production) {
        (Some(s), _) => s.clone(),
        (None, true) => return Err("--production needs GATEWAY_SECRET".into()),
        (None, false) => {
            println!(
                "gateway: generated a signing secret (sessions end at restart); set GATEWAY_SECRET to keep one"
            );
            random_hex()
        }
    };
    let key = hex32(&secret)?;
    // Distinct keys for sessions and tokens, derived from the one secret.
    let mut token_key = key;
    token_key[0] ^= 0x5a;
    let admin_secret = match (&args.admin_secret, args.production) {
        (Some(s), _) => s.clone(),
        (None, true) => return Err("--production needs GATEWAY_ADMIN_SECRET".into()),
        (None, false) => {
            let s = random_hex();
            println!("gateway: admin secret (generated): {s}");
            s
        }
    };
    if args.load_test_secret.is_some() {
        let _ = writeln!(
            std::io::stderr(),
            "gateway: WARNING: LOAD-TEST MODE IS ON: requests with the load-test secret skip the captcha"
        );
    }
    let backend = queue::Backend::open(&args.queue, queue::Config::default()).await?;
    // With Redis, the token ledger lives beside the stock, so several gateways share one
    // budget and one single-use rule.
    let (store, ledger): (Box<dyn StockStore>, Arc<dyn TokenLedger>) = if args.inventory == "memory"
    {
        (Box::new(MemoryStore::new()), Arc::new(MemoryLedger::new()))
    } else {
        let store = RedisStore::connect(&args.inventory, &args.redis_prefix, 16).await?;
        let ledger = Arc::new(RedisLedger::beside(&store));
        (Box::new(store), ledger)
    };
    let mut config = GatewayConfig::new(admin_secret);
    config.token_factor = args.token_factor;
    config.load_test_secret = args.load_test_secret.clone();
    // A purchase answers (outcome_unknown, with its ticket) before the request timeout.
    config.purchase_wait_ms = args.request_timeout_ms.saturating_mul(4) / 5;
    let mut state = AppState::new(
        config,
        Inventory::new(store, Duration::from_millis(1000)),
        backend.queue(),
        SessionKey::from_bytes(key),
        TokenKey::from_bytes(token_key),
        ThrottleConfig::default(),
    )?;
    state.ledger = ledger;
    let state = Arc::new(state);
    if let Some(units) = args.demo_units {
        let sale = gateway::sales::Sale {
            id: 1,
            name: "demo".into(),
            price_cents: 100,
            units,
            starts_at_ms: gateway::app::now_ms(),
        };
        let stock = state.inventory.store().define(sale.id, units).await?;
        if stock.units != units {
            return Err(format!(
                "the stock store already holds sale 1 with {} units",
                stock.units
            )
            .into());
        }
        state.catalogue.add(sale)?;
        println!("gateway: demo sale 1 with {units} units is open");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("gateway: listening on http://{}", listener.local_addr()?);
    let limits = ServeLimits {
        max_in_flight: args.max_in_flight,
        request_timeout_ms: args.request_timeout_ms,
        body_limit_bytes: args.body_limit_bytes,
    };
    gateway::app::serve(listener, state.clone(), limits, async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
    .await?;
    // Purchases whose requests are gone may still be between reservation and enqueue:
    // let them finish before the queue closes.
    if !state.commits.drain(SHUTDOWN_COMMITS_WAIT).await {
        eprintln!(
            "gateway: {} purchases still running at shutdown; reconciliation will settle their units",
            state.commits.running()
        );
    }
    backend.close()?;
    println!("gateway: stopped cleanly");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
