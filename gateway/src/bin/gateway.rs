//! `gateway`: the flash-sale HTTP gateway, and by default the whole system in one process.
//! Parses flags (and environment) into a [`gateway::system::SystemConfig`]: the queue
//! (embedded directory, `tcp://` broker, or Redis Streams at `redis://` or
//! `redis+cluster://`), the stock store (in-process or Redis), the
//! orders database (SQLite file or PostgreSQL), the order workers and unpaid-order
//! cancellers (none with `--workers 0 --cancellers 0`: they then run as `order-worker`
//! processes); then runs the [`gateway::system::System`] until SIGTERM/SIGINT. The
//! assembly itself is the library's.
//!
//! Every flag is checked before anything is created: addresses, targets and URLs parse in
//! clap (whose error names the flag), the rest in [`system_config`], and the listen address
//! is tried before the database, the queue directory or the demo sale exist, so a taken
//! port says so ("cannot listen on 127.0.0.1:8080 (--listen): Address in use") and leaves
//! nothing behind.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{GatewayConfig, ServeLimits};
use gateway::proxy::TrustedProxies;
use gateway::secrets;
use gateway::session::SessionKey;
use gateway::system::{DatabaseSource, QueueSource, StockSource, System, SystemConfig};
use gateway::throttle::ThrottleConfig;
use gateway::token::TokenKey;
use order_worker::db::{DbOptions, SqliteDurability};
use order_worker::flags;

// mimalloc: the allocator the gateway benchmark measures (glibc's malloc showed as the
// top symbol in a profile of this binary under a flash crowd).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "The flash-sale HTTP gateway")]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080",
          value_parser = queue::addr::listen_addr)]
    listen: std::net::SocketAddr,
    /// The queue: a directory (embedded engine), `tcp://HOST:PORT` (a `queue serve` broker),
    /// `redis://HOST:PORT` or `redis+cluster://HOST:PORT,HOST:PORT` (Redis Streams; options
    /// after `?`: `replicas=N`, `replica_timeout_ms=MS`, `fsync=relaxed`, `partitions=P`,
    /// `prefix=P`; see the README, "Queue on Redis Streams"). A broker's secret is read
    /// from QUEUE_SECRET or QUEUE_SECRET_FILE.
    #[arg(long, env = "GATEWAY_QUEUE", default_value = "data/queue",
          value_parser = queue::addr::check_target)]
    queue: String,
    /// The stock store: `memory` or a Redis URL (`redis://127.0.0.1:6379`, or a Redis
    /// Cluster as `redis+cluster://HOST:PORT,HOST:PORT`).
    #[arg(long, env = "GATEWAY_INVENTORY", default_value = "memory",
          value_parser = |s: &str| flags::stock_target(s, &["memory"]))]
    inventory: String,
    /// Key prefix in Redis (default `seckill:`). Read from SECKILL_REDIS_PREFIX, which
    /// `order-worker` reads too; GATEWAY_REDIS_PREFIX, its former name, is still honoured
    /// when that is unset.
    #[arg(long, env = flags::REDIS_PREFIX_ENV, value_parser = flags::redis_prefix)]
    redis_prefix: Option<String>,
    /// Admin API bearer secret (generated and printed if absent, unless --production; at
    /// least 16 bytes under --production). Prefer the variable or the file: a flag shows
    /// in `ps`.
    #[arg(long, env = "GATEWAY_ADMIN_SECRET")]
    admin_secret: Option<String>,
    /// File holding the admin secret (trailing line ends trimmed); not with --admin-secret.
    #[arg(long, env = "GATEWAY_ADMIN_SECRET_FILE")]
    admin_secret_file: Option<std::path::PathBuf>,
    /// Session and token signing secret, 64 hex digits (generated if absent, unless
    /// --production; a generated one invalidates sessions and tokens at restart).
    #[arg(long, env = "GATEWAY_SECRET")]
    secret: Option<String>,
    /// File holding the signing secret (trailing line ends trimmed); not with --secret.
    #[arg(long, env = "GATEWAY_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
    /// Production: refuse to start without configured secrets, refuse short admin secrets
    /// and any load-test secret; turn on Secure cookies and HSTS; no demo sale by default.
    #[arg(long)]
    production: bool,
    /// Load-test mode: requests carrying this secret in `x-load-test-secret` skip the
    /// captcha. Off unless set; logged loudly; refused under --production.
    #[arg(long, env = "GATEWAY_LOAD_TEST_SECRET")]
    load_test_secret: Option<String>,
    /// File holding the load-test secret (trailing line ends trimmed); not with
    /// --load-test-secret.
    #[arg(long, env = "GATEWAY_LOAD_TEST_SECRET_FILE")]
    load_test_secret_file: Option<std::path::PathBuf>,
    /// Session and admin cookies carry `Secure` (HTTPS only). On under --production.
    #[arg(long, env = "GATEWAY_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Send `Strict-Transport-Security` (only behind a TLS-terminating proxy). On under
    /// --production.
    #[arg(long, env = "GATEWAY_HSTS")]
    hsts: bool,
    /// Per-IP throttles (`on`, the default, or `off`): off when every client comes through
    /// one address (a proxy without forwarded addresses, or a load generator on loopback);
    /// the per-user throttles stay on.
    #[arg(long, env = "GATEWAY_PER_IP_LIMITS", default_value = "on",
          value_parser = ["on", "off"])]
    per_ip_limits: String,
    /// Proxies whose `X-Forwarded-For` names the client, e.g. nginx's address: CIDRs or
    /// addresses, comma-separated (IPv4 and IPv6). The client is then the right-most hop
    /// that is not itself trusted. Default: none (the client is the TCP peer; every
    /// `X-Forwarded-For` is ignored).
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", default_value = "",
          value_parser = trusted_proxies)]
    trusted_proxies: TrustedProxies,
    /// Requests with a valid session must carry the user's route cookie (`seckill_route`,
    /// set at sign-in), or are answered 421 `misdirected` with it: on behind nginx
    /// (deploy/nginx), which hashes the cookie onto the gateways.
    #[arg(long, env = "GATEWAY_ROUTE_COOKIE")]
    route_cookie: bool,
    /// The currency of every price (three capital letters, ISO 4217), shown by the
    /// storefront and sent as `currency` in the sale JSON.
    #[arg(long, env = "GATEWAY_CURRENCY", default_value = gateway::config::CURRENCY_DEFAULT,
          value_parser = gateway::config::validate_currency)]
    currency: String,
    /// Offer the proof-of-work check (`captcha?kind=work`) to people who cannot read the
    /// captcha image: `on` (default) or `off` (then `kind=work` is `400`, and bots must read
    /// images like everyone else; docs/API.md weighs the two).
    #[arg(long, env = "GATEWAY_CAPTCHA_WORK", default_value = "on",
          value_parser = ["on", "off"])]
    captcha_work: String,
    /// The orders database: `sqlite:PATH` (created if missing) or `postgres://…`. Repeat it
    /// for a database sharded by sale, one shard each (the first holds the routing table and
    /// the workers' heartbeats; the env variable: the URLs separated by whitespace); a
    /// PostgreSQL URL may name a primary and its standbys, `postgres://u@h1:p1,h2:p2/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:data/orders.db",
          value_parser = flags::database_url)]
    database: Vec<String>,
    /// Database connections.
    #[arg(long, default_value_t = order_worker::db::CONNECTIONS_DEFAULT)]
    db_connections: u32,
    /// Database connections of the request path (ticket and order reads, payment), a
    /// pool apart from the order workers'.
    #[arg(long, default_value_t = order_worker::db::READ_CONNECTIONS_DEFAULT)]
    db_read_connections: u32,
    /// SQLite commits: `full` (fsync, the default) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// Order workers in this process (0: run `order-worker` processes instead).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Unpaid-order cancellers in this process (0: none here).
    #[arg(long, default_value_t = 1)]
    cancellers: usize,
    /// Most purchases per worker batch (one transaction; at most 5,000). Default: 4,000 on
    /// SQLite, 1,000 on PostgreSQL (`order_worker::db::batch_default`).
    #[arg(long)]
    batch: Option<usize>,
    /// If the database has no sale 1, create it as a demo sale with this many units, open
    /// at once with a ten-minute pay window (0: no demo sale). Default: 100, or 0 with
    /// `--production`.
    #[arg(long)]
    demo_units: Option<u64>,
    /// Tokens a sale issues at most, per unit (0.1 to 100, a sale's own factor's bounds;
    /// at least one token while a unit is left).
    #[arg(long, default_value_t = 1.5, value_parser = token_factor)]
    token_factor: f64,
    /// Most live purchase tokens of one sale held from one client address (with per-IP
    /// limits on).
    #[arg(long, default_value_t = gateway::ledger::TOKENS_PER_ADDRESS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    tokens_per_address: u64,
    /// Requests in flight at once (503 beyond).
    #[arg(long, default_value_t = ServeLimits::default().max_in_flight)]
    max_in_flight: usize,
    /// Request timeout, ms (503 beyond).
    #[arg(long, default_value_t = ServeLimits::default().request_timeout_ms)]
    request_timeout_ms: u64,
    /// Largest request body on every route, bytes (413 beyond).
    #[arg(long, default_value_t = ServeLimits::default().body_limit_bytes)]
    body_limit_bytes: usize,
    /// Longest wait for a request's head, ms, also between requests of a keep-alive
    /// connection (the connection is closed beyond it).
    #[arg(long, default_value_t = ServeLimits::default().header_read_timeout_ms)]
    header_read_timeout_ms: u64,
    /// A connection with no bytes moving for this long is closed, ms.
    #[arg(long, default_value_t = ServeLimits::default().idle_timeout_ms)]
    idle_timeout_ms: u64,
    /// Open client connections at once (one beyond it is closed at once).
    #[arg(long, default_value_t = ServeLimits::default().max_connections)]
    max_connections: usize,
    /// Connections the kernel holds completed but not yet accepted (listen backlog; the
    /// kernel cuts it to net.core.somaxconn). Beyond it a connecting client waits a second.
    #[arg(long, default_value_t = ServeLimits::default().listen_backlog)]
    listen_backlog: u32,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--trusted-proxies`: CIDRs or addresses (clap names the flag in the error).
fn trusted_proxies(s: &str) -> Result<TrustedProxies, String> {
    TrustedProxies::parse(s)
}

/// `--token-factor`: a finite number within a sale's own factor's bounds.
fn token_factor(s: &str) -> Result<f64, String> {
    let f: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    gateway::config::validate_token_factor(f)
}

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
    let config = system_config(&args)?;
    // The listen address, tried before the database, the queue directory and the demo
    // sale are made (the system binds it again once built; a process that takes the port
    // in between is still reported with the address).
    drop(
        std::net::TcpListener::bind(args.listen)
            .map_err(|e| queue::addr::bind_error("--listen", args.listen, &e))?,
    );
    let database = match &config.database {
        DatabaseSource::Url { url, .. } => url.clone(),
        DatabaseSource::Open(_) => String::new(),
    };
    let system = System::build(config).await?;
    if system.demo_created() {
        println!(
            "gateway: demo sale {} with {} units is open",
            gateway::system::DEMO_SALE_ID,
            demo_units(&args)
        );
    }
    println!(
        "gateway: orders database {} ({} shard(s): {database}); {} and {} in this process",
        system.db().backend(),
        system.db().shard_count(),
        flags::count(args.workers, "order worker"),
        flags::count(args.cancellers, "canceller")
    );
    let mut system = system;
    let addr = system.bind().await?;
    println!("gateway: listening on http://{addr}");
    println!("  shop:      http://{addr}/");
    println!("  dashboard: http://{addr}/admin  (sign in with the admin secret)");
    println!(
        "  API:       http://{addr}/api/sales, http://{addr}/admin/api/sales (Authorization: Bearer <admin secret>)"
    );
    println!("  metrics:   http://{addr}/metrics");
    let stopped = system.run_until(queue::signal::shutdown_signal()).await?;
    if stopped.purchases_running > 0 {
        eprintln!(
            "gateway: {} purchases still running at shutdown; reconciliation will settle their units",
            stopped.purchases_running
        );
    }
    println!("gateway: stopped cleanly");
    Ok(())
}

fn demo_units(args: &Args) -> u64 {
    args.demo_units
        .unwrap_or(if args.production { 0 } else { 100 })
}

/// The flags as the system's configuration (secrets generated and printed unless
/// `--production`).
fn system_config(args: &Args) -> Result<SystemConfig, BoxError> {
    let resolve = |flag: &str, value: &Option<String>, file: &Option<std::path::PathBuf>| {
        secrets::resolve(flag, value.as_deref(), file.as_deref())
    };
    let secret = resolve("secret", &args.secret, &args.secret_file)?;
    let admin_secret = resolve("admin-secret", &args.admin_secret, &args.admin_secret_file)?;
    let load_test_secret = resolve(
        "load-test-secret",
        &args.load_test_secret,
        &args.load_test_secret_file,
    )?;
    let secret = match (secret, args.production) {
        (Some(s), _) => s,
        (None, true) => {
            return Err("--production needs GATEWAY_SECRET (or --secret-file)".into());
        }
        (None, false) => {
            println!(
                "gateway: generated a signing secret (sessions end at restart); set GATEWAY_SECRET to keep one"
            );
            random_hex()
        }
    };
    let key = hex32(&secret).map_err(|e| format!("--secret (or GATEWAY_SECRET): {e}"))?;
    // Distinct keys for sessions and tokens, derived from the one secret.
    let mut token_key = key;
    token_key[0] ^= 0x5a;
    let admin_secret = match (admin_secret, args.production) {
        (Some(s), _) => s,
        (None, true) => {
            return Err("--production needs GATEWAY_ADMIN_SECRET (or --admin-secret-file)".into());
        }
        (None, false) => {
            let s = random_hex();
            println!("gateway: admin secret (generated): {s}");
            s
        }
    };
    if args.production {
        secrets::check_production(&admin_secret, load_test_secret.as_deref())?;
    }
    if load_test_secret.is_some() {
        let _ = writeln!(
            std::io::stderr(),
            "gateway: WARNING: LOAD-TEST MODE IS ON: requests with the load-test secret skip the captcha"
        );
    }
    let options = DbOptions {
        max_connections: args.db_connections,
        sqlite_durability: match args.sqlite_sync.as_str() {
            "full" => SqliteDurability::Full,
            "normal" => SqliteDurability::Normal,
            other => return Err(format!("--sqlite-sync is full or normal, not {other}").into()),
        },
    };
    let throttle = match args.per_ip_limits.as_str() {
        "on" => ThrottleConfig::default(),
        "off" => {
            let _ = writeln!(
                std::io::stderr(),
                "gateway: per-IP throttles are off (--per-ip-limits off)"
            );
            ThrottleConfig::default().without_per_ip()
        }
        other => return Err(format!("--per-ip-limits is on or off, not {other}").into()),
    };
    let limits = ServeLimits {
        max_in_flight: args.max_in_flight,
        request_timeout_ms: args.request_timeout_ms,
        body_limit_bytes: args.body_limit_bytes,
        header_read_timeout_ms: args.header_read_timeout_ms,
        idle_timeout_ms: args.idle_timeout_ms,
        max_connections: args.max_connections,
        listen_backlog: args.listen_backlog,
    };
    limits.validate()?;
    let mut gateway = GatewayConfig::new(admin_secret);
    gateway.token_factor = args.token_factor;
    gateway.tokens_per_address = args.tokens_per_address;
    gateway.load_test_secret = load_test_secret;
    gateway.secure_cookies = args.secure_cookies || args.production;
    gateway.hsts = args.hsts || args.production;
    gateway.trusted_proxies = args.trusted_proxies.clone();
    gateway.route_cookie = args.route_cookie;
    gateway.currency = args.currency.clone();
    gateway.captcha_work = args.captcha_work == "on";
    let mut config = SystemConfig::new(
        QueueSource::Open(args.queue.clone()),
        DatabaseSource::Url {
            url: args.database.join(" "),
            options,
        },
        gateway,
    );
    config.listen = args.listen.to_string();
    config.stock = if args.inventory == "memory" {
        StockSource::Memory
    } else {
        StockSource::Redis {
            url: args.inventory.clone(),
            prefix: flags::resolve_redis_prefix(args.redis_prefix.as_deref())?,
        }
    };
    config.sessions = SessionKey::from_bytes(key);
    config.tokens = TokenKey::from_bytes(token_key);
    config.throttle = throttle;
    config.crew.workers = args.workers;
    config.crew.cancellers = args.cancellers;
    config.crew.worker.batch_max = args
        .batch
        .unwrap_or_else(|| order_worker::db::batch_default(&args.database.join(" ")));
    config.crew_reports = true;
    config.demo_units = demo_units(args);
    config.read_connections = args.db_read_connections;
    Ok(config.with_limits(limits))
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const ADMIN_LONG: &str = "a-long-admin-secret";

    fn config(flags: &[&str]) -> Result<SystemConfig, String> {
        let args = Args::try_parse_from(std::iter::once("gateway").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        system_config(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn production_refuses_short_admin_secrets_and_any_load_test_secret() {
        let err = config(&[
            "--production",
            "--secret",
            SECRET,
            "--admin-secret",
            "short",
        ])
        .expect_err("a short admin secret");
        assert!(
            err.contains("--admin-secret") && err.contains("16"),
            "{err}"
        );
        let err = config(&[
            "--production",
            "--secret",
            SECRET,
            "--admin-secret",
            ADMIN_LONG,
            "--load-test-secret",
            "a-long-load-test-secret",
        ])
        .expect_err("load-test mode under --production");
        assert!(err.contains("--load-test-secret"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("load-test");
        std::fs::write(&file, "a-long-load-test-secret\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let err = config(&[
            "--production",
            "--secret",
            SECRET,
            "--admin-secret",
            ADMIN_LONG,
            "--load-test-secret-file",
            file,
        ])
        .expect_err("load-test mode from a file under --production");
        assert!(err.contains("--load-test-secret"), "{err}");
    }

    #[test]
    fn production_turns_on_secure_cookies_and_hsts() {
        let c = config(&[
            "--production",
            "--secret",
            SECRET,
            "--admin-secret",
            ADMIN_LONG,
        ])
        .expect("a production config");
        assert!(c.gateway.secure_cookies && c.gateway.hsts);
        assert_eq!(c.gateway.load_test_secret, None);
        let c = config(&["--secret", SECRET, "--admin-secret", "x"]).expect("a dev config");
        assert!(!c.gateway.secure_cookies && !c.gateway.hsts);
        let c = config(&["--secure-cookies", "--hsts"]).expect("flags");
        assert!(c.gateway.secure_cookies && c.gateway.hsts);
    }

    #[test]
    fn secrets_come_from_files_and_a_file_with_a_flag_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let admin = dir.path().join("admin");
        std::fs::write(&admin, format!("{ADMIN_LONG}\n")).expect("write");
        let signing = dir.path().join("signing");
        std::fs::write(&signing, format!("{SECRET}\r\n")).expect("write");
        let (admin, signing) = (
            admin.to_str().expect("utf-8"),
            signing.to_str().expect("utf-8"),
        );
        let c = config(&[
            "--production",
            "--secret-file",
            signing,
            "--admin-secret-file",
            admin,
        ])
        .expect("secrets from files");
        assert_eq!(c.gateway.admin_secret, ADMIN_LONG);
        let err = config(&["--admin-secret", "x", "--admin-secret-file", admin])
            .expect_err("flag and file");
        assert!(err.contains("--admin-secret-file"), "{err}");
        let err = config(&["--secret", SECRET, "--secret-file", signing]).expect_err("both");
        assert!(err.contains("--secret-file"), "{err}");
    }

    #[test]
    fn trusted_proxies_and_the_route_cookie_come_from_flags() {
        let c = config(&[]).expect("defaults");
        assert!(c.gateway.trusted_proxies.is_empty() && !c.gateway.route_cookie);
        let c = config(&[
            "--trusted-proxies",
            "127.0.0.1, 10.0.0.0/8,fd00::/8",
            "--route-cookie",
        ])
        .expect("flags");
        assert_eq!(c.gateway.trusted_proxies.nets().len(), 3);
        assert!(c.gateway.route_cookie);
        let err = config(&["--trusted-proxies", "10.0.0.0/40"]).expect_err("a bad CIDR");
        assert!(
            err.contains("--trusted-proxies") && err.contains("10.0.0.0/40"),
            "{err}"
        );
    }

    #[test]
    fn serve_limits_come_from_flags_and_zero_is_refused() {
        let c = config(&[
            "--header-read-timeout-ms",
            "1500",
            "--idle-timeout-ms",
            "20000",
            "--max-connections",
            "300",
            "--listen-backlog",
            "1000",
        ])
        .expect("limits");
        assert_eq!(
            (
                c.limits.header_read_timeout_ms,
                c.limits.idle_timeout_ms,
                c.limits.max_connections,
                c.limits.listen_backlog
            ),
            (1500, 20_000, 300, 1000)
        );
        let err = config(&["--max-connections", "0"]).expect_err("no connections");
        assert!(err.contains("max_connections"), "{err}");
        for bad in ["0", "65536"] {
            let err = config(&["--listen-backlog", bad]).expect_err("backlog out of range");
            assert!(err.contains("listen_backlog"), "{bad}: {err}");
        }
    }
}
