//! The gateway behind Debian's nginx, with the shipped config (`deploy/nginx`, filled by its
//! `render` script): nginx runs as a child process on a free loopback port, every path in a
//! temporary directory, in front of gateways served in this process on one queue, one
//! database, one stock store and token ledger, with `--trusted-proxies 127.0.0.1` and
//! `--route-cookie`, on one still manual clock (so quotas refill only when a test says).
//!
//! Clients connect from other loopback addresses (127.0.0.2 and up) than nginx's own
//! (127.0.0.1, the trusted proxy), so the gateway can tell them apart. Without
//! `/usr/sbin/nginx` the tests are skipped with a message, except under `CI`, where they
//! fail (`scripts/ensure-nginx` installs it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Request, StatusCode, header};
use bytes::Bytes;
use gateway::config::ServeLimits;
use gateway::ledger::{MemoryLedger, TokenLedger};
use gateway::proxy::{ROUTE_COOKIE_NAME, TrustedProxies, route_value};
use gateway::session::SessionKey;
use gateway::throttle::ThrottleConfig;
use gateway::token::TokenKey;
use http_body_util::{BodyExt, Full};
use inventory::MemoryStore;
use queue::{Engine, ManualClock};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{TestApp, test_db, test_system_on};

/// Debian's nginx.
const NGINX: &str = "/usr/sbin/nginx";
/// Longest wait for nginx to listen, or to stop.
const NGINX_WAIT: Duration = Duration::from_secs(10);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);
/// The manual clock's time (it never moves in these tests).
const START_MS: u64 = 1_000_000_000_000;
/// Requests of one hammering person.
const HAMMER: usize = 12;
/// Logins of one address, past its per-IP burst (10 by default).
const LOGINS: usize = 14;

/// Whether nginx is installed; outside CI a missing one skips the test with a message,
/// under `CI` it fails it.
fn nginx_installed(test: &str) -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {NGINX} is not installed (scripts/ensure-nginx installs it); under CI this test never skips"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {NGINX} is not installed (scripts/ensure-nginx installs it)"
    );
    false
}

/// nginx with deploy/nginx's config in front of `upstreams` (`host:port` and any `server`
/// parameters), killed and reaped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(upstreams: &[String]) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let render = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/render");
        // nginx's own limits far above these tests' requests: the gateways' limits are
        // what is measured here.
        let out = Command::new("bash")
            .arg(&render)
            .arg(dir.path())
            .arg(addr.to_string())
            .args(upstreams)
            .env("NGINX_REQ_RATE", "10000")
            .env("NGINX_REQ_BURST", "10000")
            .env("NGINX_CONN_MAX", "1000")
            .output()
            .expect("run deploy/nginx/render");
        assert!(
            out.status.success(),
            "render: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, &out.stdout).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + NGINX_WAIT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                nginx.error_log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (SIGKILL would leave the
        // workers running); SIGKILL only if it is still there after the wait.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + NGINX_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gateways sharing one queue, database, stock store, token ledger, keys and clock.
struct Fleet {
    gateways: Vec<TestApp>,
    _shared: Vec<tempfile::TempDir>,
}

async fn fleet(n: usize) -> Fleet {
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = test_db(&db_dir).await;
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let engine =
        Arc::new(Engine::open(queue_dir.path(), queue::Config::default()).expect("engine"));
    let store = Arc::new(MemoryStore::new());
    let ledger: Arc<dyn TokenLedger> = Arc::new(MemoryLedger::new());
    let (sessions, tokens) = (SessionKey::generate(), TokenKey::generate());
    let clock = ManualClock::new(START_MS);
    let mut gateways = Vec::new();
    for _ in 0..n {
        let (sessions, tokens, clock) = (sessions.clone(), tokens.clone(), clock.clone());
        let t = test_system_on(
            engine.clone(),
            engine.clone(),
            tempfile::tempdir().expect("tempdir"),
            Box::new(store.clone()),
            Some(ledger.clone()),
            ThrottleConfig::default(),
            Some(db.clone()),
            move |c| {
                c.sessions = sessions;
                c.tokens = tokens;
                c.clock = Arc::new(clock);
                c.gateway.trusted_proxies =
                    TrustedProxies::parse("127.0.0.1").expect("nginx's address");
                c.gateway.route_cookie = true;
            },
        )
        .await
        .on_port(ServeLimits::default())
        .await;
        gateways.push(t);
    }
    Fleet {
        gateways,
        _shared: vec![db_dir, queue_dir],
    }
}

fn addr(t: &TestApp) -> SocketAddr {
    t.served.as_ref().expect("served").addr
}

/// Responses of route `label` (`gateway::metrics::ROUTES`) this gateway answered.
fn answered(t: &TestApp, label: &str) -> u64 {
    let i = gateway::metrics::ROUTES
        .iter()
        .position(|r| *r == label)
        .expect("a route label");
    t.state.metrics.responses[i]
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// One request on a fresh connection from the loopback address `from` to `to`.
async fn call(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    let stream = socket.connect(to).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, to.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(b.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = send
        .send_request(req.body(body).expect("request"))
        .await
        .expect("an answer");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The `Cookie` value of every cookie a response sets.
fn cookies_of(headers: &HeaderMap) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `user` signs in through `to` from `from` and asks for captchas [`HAMMER`] times with
/// the cookies of the sign-in: the statuses, in order.
async fn hammer(from: Ipv4Addr, to: SocketAddr, user: &str) -> Vec<StatusCode> {
    let (s, h, v) = call(
        from,
        to,
        "POST",
        "/api/login",
        &[],
        Some(json!({"user": user})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cookie = cookies_of(&h);
    assert!(
        cookie.contains(&format!("{ROUTE_COOKIE_NAME}={}", route_value(user))),
        "{cookie}"
    );
    let mut out = Vec::new();
    for _ in 0..HAMMER {
        let (s, _, v) = call(
            from,
            to,
            "GET",
            "/api/sales/1/captcha",
            &[("cookie", &cookie)],
            None,
        )
        .await;
        assert!(
            s == StatusCode::NOT_FOUND || v["error"] == "throttled",
            "{s} {v} (cookie {cookie})"
        );
        out.push(s);
    }
    out
}

/// `LOGINS` sign-ins from `from` to `to`, each with another forged `X-Forwarded-For`: how
/// many were answered 200 and how many 429.
async fn forged_logins(from: Ipv4Addr, to: SocketAddr) -> (usize, usize) {
    let (mut ok, mut throttled) = (0, 0);
    for i in 0..LOGINS {
        let forged = format!("10.{i}.0.1, 192.0.2.{i}");
        let (s, _, v) = call(
            from,
            to,
            "POST",
            "/api/login",
            &[("x-forwarded-for", &forged)],
            Some(json!({"user": format!("forger{i}")})),
        )
        .await;
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"], "throttled", "the gateway's 429, not nginx's");
                throttled += 1;
            }
            other => panic!("{other} {v}"),
        }
    }
    (ok, throttled)
}

/// Issue 17: per-user limits hold fleet-wide through nginx (a person hammering gets the
/// same answers from three gateways as from one, and dropping the route cookie only earns
/// 421s); a forged `X-Forwarded-For`, through nginx or straight to a gateway, changes no
/// per-IP limit; and nginx balances people without a route cookie over every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_ip_limits_hold_behind_nginx() {
    if !nginx_installed("per_user_and_per_ip_limits_hold_behind_nginx") {
        return;
    }
    let fleet = fleet(3).await;
    let g: Vec<String> = fleet.gateways.iter().map(|t| addr(t).to_string()).collect();
    let one = Nginx::start(&g[..1]).await;
    let three = Nginx::start(&g).await;
    let burst = ThrottleConfig::default()
        .captcha
        .per_user
        .expect("a per-user captcha quota")
        .burst
        .get() as usize;

    // (a) The same sequence of requests through one gateway and through three.
    let before: Vec<u64> = fleet
        .gateways
        .iter()
        .map(|t| answered(t, "captcha"))
        .collect();
    let through_one = hammer(Ipv4Addr::new(127, 0, 0, 3), one.addr, "ann").await;
    let mid: Vec<u64> = fleet
        .gateways
        .iter()
        .map(|t| answered(t, "captcha"))
        .collect();
    let through_three = hammer(Ipv4Addr::new(127, 0, 0, 4), three.addr, "bob").await;
    let after: Vec<u64> = fleet
        .gateways
        .iter()
        .map(|t| answered(t, "captcha"))
        .collect();
    let passed = |seq: &[StatusCode]| {
        seq.iter()
            .filter(|s| **s != StatusCode::TOO_MANY_REQUESTS)
            .count()
    };
    assert_eq!(
        through_one, through_three,
        "the same answers, in the same order"
    );
    assert_eq!(passed(&through_one), burst, "{through_one:?}");
    assert_eq!(
        mid[0] - before[0],
        HAMMER as u64,
        "one gateway answered ann"
    );
    // Every one of bob's requests reached one and the same gateway.
    let reached: Vec<u64> = after.iter().zip(&mid).map(|(a, m)| a - m).collect();
    assert_eq!(
        reached.iter().filter(|n| **n > 0).collect::<Vec<_>>(),
        vec![&(HAMMER as u64)],
        "{reached:?}"
    );
    // Without the route cookie (a client spreading itself over the gateways): 421 and the
    // cookie, never a fresh quota.
    let (s, h, v) = call(
        Ipv4Addr::new(127, 0, 0, 4),
        three.addr,
        "POST",
        "/api/login",
        &[],
        Some(json!({"user": "bob"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let session = cookies_of(&h)
        .split("; ")
        .find(|c| c.starts_with("seckill_session="))
        .expect("a session cookie")
        .to_owned();
    for _ in 0..3 {
        let (s, h, v) = call(
            Ipv4Addr::new(127, 0, 0, 4),
            three.addr,
            "GET",
            "/api/sales/1/captcha",
            &[("cookie", &session)],
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::MISDIRECTED_REQUEST, Some("misdirected")),
            "{v}"
        );
        assert_eq!(
            cookies_of(&h),
            format!("{ROUTE_COOKIE_NAME}={}", route_value("bob"))
        );
    }
    // Two route cookies, a random one first (what nginx hashes: first match, `,` a
    // separator too) and the right one after (what a cookie parser splitting on `;` alone
    // would find): still 421, since the gateway checks the route nginx hashed
    // (`X-Seckill-Route`), never its own reading of the cookies.
    let right = route_value("bob");
    for forged in [
        format!(
            "{session}; a=1, {ROUTE_COOKIE_NAME}=0123456789abcdef; {ROUTE_COOKIE_NAME}={right}"
        ),
        format!("{session}; {ROUTE_COOKIE_NAME}=; {ROUTE_COOKIE_NAME}={right}"),
    ] {
        let (s, _, v) = call(
            Ipv4Addr::new(127, 0, 0, 4),
            three.addr,
            "GET",
            "/api/sales/1/captcha",
            &[("cookie", &forged)],
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (StatusCode::MISDIRECTED_REQUEST, Some("misdirected")),
            "{forged}: {v}"
        );
    }
    let misdirected: u64 = fleet
        .gateways
        .iter()
        .map(|t| {
            t.state
                .metrics
                .misdirected
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(misdirected, 5);

    // No route cookie (sign-ins): an empty hash key, balanced round robin over every
    // gateway (nginx 1.22's `hash … consistent` falls back to round robin on an empty key).
    let before: Vec<u64> = fleet
        .gateways
        .iter()
        .map(|t| answered(t, "login"))
        .collect();
    for i in 0..6 {
        let (s, _, v) = call(
            Ipv4Addr::new(127, 0, 0, 8),
            three.addr,
            "POST",
            "/api/login",
            &[],
            Some(json!({"user": format!("walker{i}")})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let spread: Vec<u64> = fleet
        .gateways
        .iter()
        .zip(&before)
        .map(|(t, b)| answered(t, "login") - b)
        .collect();
    assert_eq!(spread, vec![2, 2, 2], "round robin over the three gateways");

    // Static assets (content-hashed, immutable) are cached at the edge: the second request
    // for one never reaches a gateway.
    let asset = web::assets::assets().app_js.clone();
    let mut cache = Vec::new();
    for _ in 0..2 {
        let (s, h, _) = call(
            Ipv4Addr::new(127, 0, 0, 8),
            three.addr,
            "GET",
            &asset,
            &[],
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{asset}");
        cache.push(
            h.get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
    }
    assert_eq!(cache, [Some("MISS".to_owned()), Some("HIT".to_owned())]);

    // (b) Through nginx, a forged X-Forwarded-For changes nothing: one address's logins
    // stop at its per-IP burst (10) whatever the header says...
    let (ok, throttled) = forged_logins(Ipv4Addr::new(127, 0, 0, 5), one.addr).await;
    assert_eq!((ok, throttled), (10, LOGINS - 10));
    // ...and the gateway sees each client, not nginx: another address is not throttled.
    let (s, _, v) = call(
        Ipv4Addr::new(127, 0, 0, 6),
        one.addr,
        "POST",
        "/api/login",
        &[],
        Some(json!({"user": "carol"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // (c) Straight to a gateway from an untrusted peer, the header is ignored.
    let (ok, throttled) =
        forged_logins(Ipv4Addr::new(127, 0, 0, 7), addr(&fleet.gateways[0])).await;
    assert_eq!((ok, throttled), (10, LOGINS - 10));
    // From the trusted address, a header the walk cannot use is counted and the peer's
    // address stands in.
    let g0 = &fleet.gateways[0];
    let unusable = || {
        g0.state
            .metrics
            .forwarded_unusable
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let was = unusable();
    let (s, _, v) = call(
        Ipv4Addr::LOCALHOST,
        addr(g0),
        "POST",
        "/api/login",
        &[("x-forwarded-for", "unknown")],
        Some(json!({"user": "dave"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(unusable(), was + 1);
    drop((one, three));
}

/// A fake gateway: reads each request (head and `Content-Length` body), records its
/// method, and closes the connection without an answer.
struct Dropper {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dropper {
    async fn start() -> Dropper {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        let mut buf = [0u8; 4096];
                        loop {
                            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&data[..end]).to_string();
                                let len = super::content_length(&head);
                                if data.len() >= end + 4 + len {
                                    let method = head.split(' ').next().unwrap_or("").to_owned();
                                    seen.lock().expect("seen").push(method);
                                    let _ = s.shutdown().await;
                                    return;
                                }
                            }
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => data.extend_from_slice(&buf[..n]),
                            }
                        }
                    });
                }
            })
        };
        Dropper { addr, seen, task }
    }

    fn count(&self, method: &str) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|m| *m == method)
            .count()
    }
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 17: nginx passes a GET that a gateway dropped to the next gateway, and never a
/// POST: a POST the first gateway dropped is answered 502 and reaches no other gateway
/// (the config's `proxy_next_upstream error timeout`, without `non_idempotent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_never_passes_a_post_to_a_second_gateway() {
    if !nginx_installed("nginx_never_passes_a_post_to_a_second_gateway") {
        return;
    }
    let fleet = fleet(1).await;
    let real = &fleet.gateways[0];
    let dropper = Dropper::start().await;
    // `max_fails=0`: the dropper stays in the rotation, so round robin keeps sending it
    // requests (by default nginx would set it aside for ten seconds after one failure).
    let nginx = Nginx::start(&[
        format!("{} max_fails=0", dropper.addr),
        format!("{} max_fails=0", addr(real)),
    ])
    .await;
    let client = Ipv4Addr::new(127, 0, 0, 9);
    const N: usize = 6;

    let health_before = answered(real, "health");
    for _ in 0..N {
        let (s, _, _) = call(client, nginx.addr, "GET", "/healthz", &[], None).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "a dropped GET is passed on: {}",
            nginx.error_log()
        );
    }
    assert!(dropper.count("GET") >= 1, "round robin reached the dropper");
    assert_eq!(answered(real, "health") - health_before, N as u64);

    let login_before = answered(real, "login");
    let mut bad_gateway = 0;
    for i in 0..N {
        let (s, _, v) = call(
            client,
            nginx.addr,
            "POST",
            "/api/login",
            &[],
            Some(json!({"user": format!("poster{i}")})),
        )
        .await;
        match s {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            other => panic!("{other} {v}"),
        }
    }
    let dropped = dropper.count("POST");
    assert!(dropped >= 1, "round robin reached the dropper");
    assert_eq!(bad_gateway, dropped, "every dropped POST answered 502");
    assert_eq!(
        answered(real, "login") - login_before,
        (N - dropped) as u64,
        "the real gateway saw only the POSTs sent to it first"
    );
}
