//! Browser tests: Debian's headless Chromium, driven over WebDriver (chromedriver, through
//! fantoccini), against the whole system in one process: the gateway on a loopback port
//! with the embedded queue, the in-process stock store, order workers and a canceller
//! running, and SQLite. They use the pages of docs/WEB.md as a shopper and an operator do,
//! and assert on what the pages show (text and the attributes the contract names).
//!
//! `scripts/ensure-chromium` (run by `scripts/test`) installs `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`; without them these tests are skipped with a message, except
//! under `CI`, where they fail. A screenshot of every step goes to
//! `target/browser-artifacts/<test>/<NN-step>.png` (and chromedriver's log beside them).
//! Nothing here sleeps for a fixed time: every wait polls the DOM (or the system) until a
//! condition holds, with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use inventory::MemoryStore;
use loadgen::Conn;
use order_worker::crew::Crew;
use queue::{Clock as _, Queue, SystemClock};
use serde_json::{Value, json};

use super::{LOAD_TEST, TestApp, patient, test_throttle, token_of};

/// The shopper's pages of issue 18 (reload, my orders, sign-out, plain errors).
mod shopper;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// Whether the browser and its driver are installed. Outside CI a missing one skips the
/// test (with a message saying how to install them); under `CI` it fails the test.
fn browser_installed(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (scripts/ensure-chromium installs them)",
        missing.join(" and ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {msg}; under CI the browser tests never skip"
    );
    // Straight to stderr: the test harness's capture would hide an `eprintln!`.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED browser test {test}: {msg}");
    false
}

/// A free loopback port (bound, then let go: chromedriver takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// chromedriver on a loopback port; it and the browsers it started end when this is dropped
/// (also when a test panics).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(artifacts: &Path) -> Driver {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(CHROMEDRIVER);
            cmd.arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    artifacts.join("chromedriver.log").display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd.spawn().expect("spawn chromedriver");
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            match driver.ready(port).await {
                Ok(()) => return driver,
                Err(e) => failures.push(e),
            }
        }
        panic!("chromedriver did not start: {failures:?}");
    }

    /// Polls chromedriver's `/status` until it says it is ready.
    async fn ready(&mut self, port: u16) -> Result<(), String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited: {status}"));
            }
            match Conn::connect(addr).await {
                Ok(mut conn) => {
                    let req = Request::get("/status")
                        .body(http_body_util::Full::new(Bytes::new()))
                        .expect("request");
                    match conn.send(req).await {
                        Ok(a)
                            if a.status == StatusCode::OK && a.json()["value"]["ready"] == true =>
                        {
                            return Ok(());
                        }
                        Ok(a) => last = format!("{} {}", a.status, a.json()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(format!("not ready on port {port} within {WAIT:?}: {last}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver's `/shutdown` ends the browsers it started (also those of a test
        // that panicked before closing its session), then chromedriver itself. A plain
        // blocking request: the test's runtime may be gone by now.
        let _ = shutdown(&self.url);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the chromedriver at `url` to shut down (a blocking request).
fn shutdown(url: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr = url
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
        .map_err(std::io::Error::other)?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(())
}

/// One test's browser: chromedriver, the test's artifacts folder and its step counter.
struct Browser {
    driver: Driver,
    dir: PathBuf,
    step: AtomicUsize,
}

impl Browser {
    /// `None` when the browser is not installed (outside CI only; see
    /// [`browser_installed`]).
    async fn start(test: &str) -> Option<Browser> {
        if !browser_installed(test) {
            return None;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/browser-artifacts")
            .join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("artifacts folder");
        let driver = Driver::start(&dir).await;
        Some(Browser {
            driver,
            dir,
            step: AtomicUsize::new(0),
        })
    }

    /// A new browser session with a fresh profile (no cookies, no cache).
    async fn session(&self, base: &str) -> Page<'_> {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.driver.url)
            .await
            .expect("a WebDriver session with Chromium");
        Page {
            client,
            browser: self,
            base: base.to_string(),
            _profile: profile,
        }
    }
}

/// Helpers the page-side checks use: `$` (first match of a selector) and `shown` (the
/// element is there and rendered).
const PRELUDE: &str = r#"
const $ = (s) => document.querySelector(s);
const shown = (e) => {
  if (typeof e === 'string') e = document.querySelector(e);
  if (!e || e.hidden) return false;
  const st = getComputedStyle(e);
  return st.display !== 'none' && st.visibility !== 'hidden' && e.getClientRects().length > 0;
};
const txt = (s) => { const e = document.querySelector(s); return e ? e.textContent.trim() : null; };
"#;

/// A browser session, at the system under test's `base` URL.
struct Page<'b> {
    client: Client,
    browser: &'b Browser,
    base: String,
    _profile: tempfile::TempDir,
}

impl Page<'_> {
    /// Opens `path` (relative to the gateway) or a full URL.
    async fn goto(&self, path: &str) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Saves a screenshot as the test's next step, `NN-name.png`.
    async fn shot(&self, name: &str) {
        let n = self.browser.step.fetch_add(1, Ordering::SeqCst) + 1;
        let path = self.browser.dir.join(format!("{n:02}-{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(&path, png).expect("write screenshot"),
            Err(e) => eprintln!("no screenshot {}: {e}", path.display()),
        }
    }

    /// The value of the JavaScript expression `js` (see [`PRELUDE`] for its helpers).
    async fn eval(&self, js: &str) -> Result<Value, fantoccini::error::CmdError> {
        self.client
            .execute(&format!("{PRELUDE}\nreturn ({js});"), vec![])
            .await
    }

    /// Polls `js` until its value is truthy (not null, false, 0 or ""); returns it. After
    /// `limit`, saves a screenshot and fails with the page's address and text.
    async fn wait_for_within(&self, limit: Duration, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            match self.eval(js).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => last = v,
                // A page being replaced answers with an error for a moment.
                Err(e) => last = json!(format!("error: {e}")),
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {limit:?} waiting for {what} (last value: {last})"
                ))
                .await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_for(&self, what: &str, js: &str) -> Value {
        self.wait_for_within(WAIT, what, js).await
    }

    /// Waits until the element `sel` shows attribute `attr` with one of `values`; returns it.
    async fn wait_attr(&self, sel: &str, attr: &str, values: &[&str]) -> String {
        let js = format!(
            "(() => {{ const e = $({s}); const v = e && e.getAttribute({a}); return {vs}.includes(v) ? v : null; }})()",
            s = json!(sel),
            a = json!(attr),
            vs = json!(values),
        );
        let v = self
            .wait_for(&format!("{sel}[{attr}] to be one of {values:?}"), &js)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until `sel` is shown; returns its text.
    async fn wait_shown(&self, sel: &str) -> String {
        let js = format!("shown({s}) ? (txt({s}) || ' ') : null", s = json!(sel));
        let v = self.wait_for(&format!("{sel} to be shown"), &js).await;
        v.as_str().unwrap_or_default().trim().to_string()
    }

    /// Waits until `sel` is gone (absent or not rendered).
    async fn wait_gone(&self, sel: &str) {
        let js = format!("!shown({})", json!(sel));
        self.wait_for(&format!("{sel} to be gone"), &js).await;
    }

    /// The trimmed text of `sel`, if it is there.
    async fn text(&self, sel: &str) -> Option<String> {
        let v = self
            .eval(&format!("txt({})", json!(sel)))
            .await
            .unwrap_or(Value::Null);
        v.as_str().map(String::from)
    }

    /// Attribute `attr` of `sel`, if both are there.
    async fn attr(&self, sel: &str, attr: &str) -> Option<String> {
        let js = format!(
            "(() => {{ const e = $({}); return e ? e.getAttribute({}) : null; }})()",
            json!(sel),
            json!(attr)
        );
        let v = self.eval(&js).await.unwrap_or(Value::Null);
        v.as_str().map(String::from)
    }

    async fn find(&self, sel: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(sel)).await {
            Ok(e) => e,
            Err(e) => self.fail(&format!("no element {sel}: {e}")).await,
        }
    }

    /// Types `text` into the input `sel` (emptied first).
    async fn type_into(&self, sel: &str, text: &str) {
        let e = self.find(sel).await;
        if let Err(err) = e.clear().await {
            self.fail(&format!("clear {sel}: {err}")).await;
        }
        if let Err(err) = e.send_keys(text).await {
            self.fail(&format!("type into {sel}: {err}")).await;
        }
    }

    async fn click(&self, sel: &str) {
        let e = self.find(sel).await;
        if let Err(err) = e.click().await {
            self.fail(&format!("click {sel}: {err}")).await;
        }
    }

    /// The address shown.
    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Fails the test with `why`, after a screenshot, the address and the page's text.
    async fn fail(&self, why: &str) -> ! {
        self.shot("failure").await;
        let url = self.url().await;
        let body = self
            .eval("document.body ? document.body.innerText : ''")
            .await
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let body: String = body.chars().take(3000).collect();
        panic!("{why}\n  at {url}\n  page text:\n{body}");
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// The system under test: a gateway served on a loopback port (revealing captcha answers
/// to the test, load-test mode on) with order workers and a canceller running, on the
/// embedded queue, the in-process stock store and SQLite, all in a temporary folder.
async fn system() -> (Arc<TestApp>, Crew, String) {
    let t = super::test_system(
        Box::new(MemoryStore::new()),
        None,
        test_throttle(),
        None,
        |config| {
            config.gateway.token_factor = 100.0;
            config.gateway.load_test_secret = Some(LOAD_TEST.into());
            config.gateway.reveal_captcha_answers = true;
            config.crew = super::system::test_crew();
        },
    )
    .await
    .on_port(patient())
    .await;
    let base = format!("http://{}", t.served.as_ref().expect("served").addr);
    let (t, crew) = super::system::with_crew(t);
    (t, crew, base)
}

/// Waits until the countdown `sel` is shown and shows a time (a digit); returns its text.
async fn shows_time(page: &Page<'_>, sel: &str) -> String {
    let js = format!(
        "shown({s}) && /[0-9]/.test(txt({s}) || '') ? txt({s}) : null",
        s = json!(sel)
    );
    let v = page.wait_for(&format!("{sel} to show a time"), &js).await;
    v.as_str().unwrap_or_default().to_string()
}

/// Signs `user` in with the sale page's form.
async fn sign_in(page: &Page<'_>, user: &str) {
    page.wait_shown("form#login-form").await;
    page.type_into("input#login-name", user).await;
    page.click("button#login-submit").await;
    let js = format!(
        "(() => {{ const e = $('#signed-in'); return e && e.dataset.user === {u} && shown(e) ? e.textContent : null; }})()",
        u = json!(user)
    );
    let shown = page
        .wait_for(&format!("#signed-in[data-user={user}]"), &js)
        .await;
    assert!(
        shown.as_str().is_some_and(|s| s.contains(user)),
        "#signed-in shows the name: {shown}"
    );
}

/// The captcha shown on the sale page: its id (once its image has loaded).
async fn captcha_id(page: &Page<'_>) -> String {
    let v = page
        .wait_for(
            "a captcha image with its id",
            "(() => { const i = $('img#captcha-image'); return shown('#captcha-section') && i && shown(i) && i.complete && i.naturalWidth > 0 ? i.dataset.captchaId : null; })()",
        )
        .await;
    v.as_str().expect("captcha id").to_string()
}

/// Solves the captcha (its answer read through the test hook) and asks for a token; waits
/// until the page either holds one (`#buy` enabled: `None`) or shows a refusal
/// (`Some((state, reason))`).
async fn solve_captcha(page: &Page<'_>, t: &TestApp) -> Option<(String, String)> {
    let id = captcha_id(page).await;
    let answer = t
        .state
        .captchas
        .revealed_answer(&id)
        .unwrap_or_else(|| panic!("the gateway drew no captcha {id}"));
    page.type_into("input#captcha-answer", &answer).await;
    page.shot("captcha-typed").await;
    page.click("button#get-token").await;
    let v = page
        .wait_for(
            "a token (#buy enabled) or a refusal in #status",
            "(() => { const b = $('button#buy'); const s = $('#status'); \
               if (s && ['refused', 'rejected'].includes(s.dataset.state)) return [s.dataset.state, s.dataset.reason || '']; \
               return b && shown(b) && !b.disabled ? 'token' : null; })()",
        )
        .await;
    match v {
        Value::Array(a) => Some((
            a[0].as_str().unwrap_or_default().to_string(),
            a[1].as_str().unwrap_or_default().to_string(),
        )),
        _ => None,
    }
}

/// Clicks Buy and follows the purchase to its order: returns the order id (from
/// `a#order-link`).
async fn buy_to_order(page: &Page<'_>) -> String {
    page.click("button#buy").await;
    // State and text read together: the page moves on from `queued` by itself.
    let v = page
        .wait_for(
            "#status[data-state] to be queued or ordered",
            "(() => { const s = $('#status'); return s && ['queued', 'ordered'].includes(s.dataset.state) ? [s.dataset.state, s.textContent] : null; })()",
        )
        .await;
    let state = v[0].as_str().unwrap_or_default().to_string();
    let text = v[1].as_str().unwrap_or_default().to_string();
    page.shot(&format!("status-{state}")).await;
    if state == "queued" {
        assert!(
            text.to_lowercase().contains("line") || text.chars().any(|c| c.is_ascii_digit()),
            "#status queued says the place in line: {text:?}"
        );
    }
    page.wait_attr("#status", "data-state", &["ordered"]).await;
    page.wait_shown("a#order-link").await;
    page.shot("ordered").await;
    let href = page.attr("a#order-link", "href").await.expect("href");
    let id = href
        .rsplit_once("/orders/")
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| panic!("#order-link goes to /orders/{{id}}: {href}"));
    assert!(!id.is_empty(), "{href}");
    id
}

/// Signs `user` in on the (live) sale page of `sale`, solves the captcha, buys and opens the
/// order page; returns the order id.
async fn shopper_buys(page: &Page<'_>, t: &TestApp, sale: u64, user: &str) -> String {
    page.goto(&format!("/sales/{sale}")).await;
    sign_in(page, user).await;
    page.wait_attr("#sale-state", "data-state", &["live"]).await;
    page.shot("live").await;
    let refused = solve_captcha(page, t).await;
    assert_eq!(refused, None, "a token for the captcha's answer");
    page.shot("token").await;
    let order = buy_to_order(page).await;
    page.click("a#order-link").await;
    page.wait_for(
        "the order page",
        &format!(
            "location.pathname === {}",
            json!(format!("/orders/{order}"))
        ),
    )
    .await;
    order
}

/// Admin JSON API over the socket, with the Bearer secret.
async fn admin_api(
    t: &TestApp,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri).header(
        header::AUTHORIZATION,
        format!("Bearer {}", t.state.config.admin_secret),
    );
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
    let (s, _, v) = t.call(b.body(body).expect("request")).await;
    (s, v)
}

async fn create_sale(t: &TestApp, id: u64, units: u64, starts_at_ms: u64, pay_window_ms: u64) {
    let (s, v) = admin_api(
        t,
        "POST",
        "/admin/api/sales",
        Some(
            json!({"id": id, "name": format!("Gadget {id}"), "price_cents": 1999,
                    "units": units, "starts_at_ms": starts_at_ms,
                    "pay_window_ms": pay_window_ms, "confirm": true}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn order_status(t: &TestApp, order: &str) -> order_worker::db::OrderStatus {
    t.state
        .db
        .order(order)
        .await
        .expect("order")
        .expect("the order exists")
        .status
}

/// The harness itself: Chromium opens a page of the gateway and the screenshot is a PNG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_gateway_page() {
    let test = "chromium_loads_a_gateway_page";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (_t, crew, base) = system().await;
    let page = browser.session(&base).await;
    page.goto("/healthz").await;
    let text = page
        .wait_for(
            "the body",
            "document.body && document.body.innerText.trim()",
        )
        .await;
    assert_eq!(text, "ok");
    page.shot("healthz").await;
    let png = std::fs::read(browser.dir.join("01-healthz.png")).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    page.close().await;
    crew.stop().await;
}

/// Shopper A opens an upcoming sale of one unit, sees the countdown, signs in; the operator
/// then moves the start to two seconds away and the open page follows it to the start.
/// Shopper A solves the captcha, buys, follows the purchase to the order and pays it.
/// Shopper B (another browser session) then finds it sold out.
///
/// The sale is made an hour ahead so that however slowly the browser opens the pages it is
/// still upcoming when the test looks; the moved start is what takes it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopper_buys_pays_and_second_shopper_sees_sold_out() {
    let test = "shopper_buys_pays_and_second_shopper_sees_sold_out";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    let a = browser.session(&base).await;
    create_sale(&t, 1, 1, SystemClock.now_ms() + 3_600_000, 60_000).await;

    // The sale list shows it upcoming, with its units; its link opens the sale page.
    a.goto("/").await;
    let item = a
        .wait_for(
            "the sale in ul#sales",
            "(() => { const li = $('ul#sales li.sale[data-sale-id=\"1\"]'); if (!li || !shown(li)) return null; \
               const st = li.querySelector('.sale-state'), u = li.querySelector('.units-left'); \
               return st && u && li.querySelector('a[href=\"/sales/1\"]') ? [st.textContent.trim(), u.textContent.trim()] : null; })()",
        )
        .await;
    assert!(
        item[0]
            .as_str()
            .is_some_and(|s| s.to_lowercase().contains("upcoming")),
        "the list says upcoming: {item}"
    );
    assert_eq!(
        item[1].as_str().map(|u| u.contains('1')),
        Some(true),
        "units left: {item}"
    );
    a.shot("sale-list").await;
    a.click("ul#sales li.sale[data-sale-id=\"1\"] a[href=\"/sales/1\"]")
        .await;
    a.wait_for("the sale page", "location.pathname === '/sales/1'")
        .await;

    // Upcoming, with a countdown that counts.
    a.wait_attr("#sale-state", "data-state", &["upcoming"])
        .await;
    let state_text = a.text("#sale-state").await.unwrap_or_default();
    assert!(
        state_text.to_lowercase().contains("upcoming"),
        "#sale-state says upcoming: {state_text:?}"
    );
    assert!(
        a.attr("body", "data-server-time-ms")
            .await
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "<body data-server-time-ms>"
    );
    let first = shows_time(&a, "#countdown").await;
    assert!(
        first.chars().any(|c| c.is_ascii_digit()),
        "the countdown shows time: {first:?}"
    );
    a.shot("upcoming").await;
    a.wait_for(
        "the countdown to count",
        &format!("txt('#countdown') !== {} && $('#sale-state').dataset.state === 'upcoming' || $('#sale-state').dataset.state === 'live'", json!(first)),
    )
    .await;
    sign_in(&a, "ann").await;
    a.shot("signed-in").await;

    // The operator moves the start: the open page follows it (its sale refresh) and goes
    // live by itself, without a reload.
    let starts_at = SystemClock.now_ms() + 2_000;
    let (s, v) = admin_api(
        &t,
        "PATCH",
        "/admin/api/sales/1",
        Some(json!({"starts_at_ms": starts_at})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "the start moved: {v}");
    a.wait_for(
        "the page to follow the moved start",
        &format!(
            "$('.when time') && $('.when time').dataset.ms === {}",
            json!(starts_at.to_string())
        ),
    )
    .await;

    // Live: the captcha, a token, Buy.
    a.wait_for_within(
        Duration::from_millis(starts_at.saturating_sub(SystemClock.now_ms())) + WAIT,
        "the sale to go live",
        "$('#sale-state') && $('#sale-state').dataset.state === 'live'",
    )
    .await;
    let live_text = a.text("#sale-state").await.unwrap_or_default();
    assert!(live_text.to_lowercase().contains("live"), "{live_text:?}");
    a.shot("live").await;
    let refused = solve_captcha(&a, &t).await;
    assert_eq!(refused, None, "a token for the captcha's answer");
    a.shot("token").await;
    let order = buy_to_order(&a).await;

    // The order page: pending, pay, paid.
    a.click("a#order-link").await;
    a.wait_for(
        "the order page",
        &format!(
            "location.pathname === {}",
            json!(format!("/orders/{order}"))
        ),
    )
    .await;
    a.wait_attr("#order-status", "data-status", &["pending"])
        .await;
    let pending = a.text("#order-status").await.unwrap_or_default();
    let lower = pending.to_lowercase();
    assert!(
        lower.contains("pending") || lower.contains("waiting for payment"),
        "#order-status says the order waits for payment: {pending:?}"
    );
    shows_time(&a, "#pay-countdown").await;
    a.wait_shown("button#pay").await;
    a.shot("order-pending").await;
    a.click("button#pay").await;
    a.wait_attr("#order-status", "data-status", &["paid"]).await;
    a.wait_gone("button#pay").await;
    let paid = a.text("#order-status").await.unwrap_or_default();
    assert!(paid.to_lowercase().contains("paid"), "{paid:?}");
    a.shot("order-paid").await;
    assert_eq!(
        order_status(&t, &order).await,
        order_worker::db::OrderStatus::Paid
    );
    a.close().await;

    // Shopper B, in a browser session of their own: sold out.
    let b = browser.session(&base).await;
    b.goto("/sales/1").await;
    sign_in(&b, "bob").await;
    b.shot("second-shopper").await;
    let seen = b
        .wait_for(
            "the sale sold out, or a captcha to try",
            "(() => { const s = $('#sale-state'); if (!s) return null; \
               if (s.dataset.state === 'sold_out') return 'sold_out'; \
               const i = $('img#captcha-image'); \
               return s.dataset.state === 'live' && i && shown(i) && i.dataset.captchaId ? 'captcha' : null; })()",
        )
        .await;
    if seen == "sold_out" {
        let text = b.text("#sale-state").await.unwrap_or_default();
        assert!(
            text.to_lowercase().contains("sold out"),
            "#sale-state says sold out: {text:?}"
        );
        let can_buy = b
            .eval("(() => { const x = $('button#buy'); return !!x && shown(x) && !x.disabled; })()")
            .await
            .expect("eval");
        assert_eq!(can_buy, json!(false), "no purchase possible when sold out");
        let captcha = b.eval("shown('#captcha-section')").await.expect("eval");
        assert_eq!(captcha, json!(false), "no captcha offered when sold out");
        b.wait_for("#units-left to show 0", "txt('#units-left') === '0'")
            .await;
    } else {
        // The page still offers a try: the answer must be a sold-out refusal.
        let outcome = match solve_captcha(&b, &t).await {
            Some(refusal) => refusal,
            None => {
                b.click("button#buy").await;
                let state = b
                    .wait_attr("#status", "data-state", &["refused", "rejected"])
                    .await;
                (
                    state,
                    b.attr("#status", "data-reason").await.unwrap_or_default(),
                )
            }
        };
        assert_eq!(outcome.1, "sold_out", "refused as sold out: {outcome:?}");
        let text = b.text("#status").await.unwrap_or_default();
        assert!(
            text.to_lowercase().contains("sold out"),
            "#status says sold out: {text:?}"
        );
    }
    b.shot("sold-out").await;
    b.close().await;
    let counts = t.state.db.order_counts(1).await.expect("counts");
    assert_eq!(
        (counts.paid, counts.active()),
        (1, 1),
        "one unit, one order"
    );
    crew.stop().await;
}

/// An order left unpaid shows as cancelled on its page once its pay-by time has passed, and
/// its Pay button goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_order_page_shows_cancelled_after_deadline() {
    let test = "unpaid_order_page_shows_cancelled_after_deadline";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    create_sale(&t, 2, 3, 0, 4_000).await;
    let page = browser.session(&base).await;
    let order = shopper_buys(&page, &t, 2, "carl").await;
    page.wait_attr("#order-status", "data-status", &["pending"])
        .await;
    let countdown = shows_time(&page, "#pay-countdown").await;
    assert!(
        countdown.chars().any(|c| c.is_ascii_digit()),
        "#pay-countdown shows time: {countdown:?}"
    );
    page.wait_shown("button#pay").await;
    page.shot("order-pending").await;
    page.wait_for_within(
        Duration::from_secs(15),
        "#order-status[data-status=cancelled]",
        "$('#order-status') && $('#order-status').dataset.status === 'cancelled'",
    )
    .await;
    page.wait_gone("button#pay").await;
    let text = page.text("#order-status").await.unwrap_or_default();
    assert!(text.to_lowercase().contains("cancel"), "{text:?}");
    page.shot("order-cancelled").await;
    assert_eq!(
        order_status(&t, &order).await,
        order_worker::db::OrderStatus::Cancelled
    );
    page.close().await;
    crew.stop().await;
}

/// Plain-HTTP form POST (no browser), with cookie and extra headers.
async fn form_post(
    t: &TestApp,
    uri: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    fields: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut b =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (s, h, bytes) = t.call_raw(b.body(Body::from(body)).expect("request")).await;
    (s, h, String::from_utf8_lossy(&bytes).into_owned())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get_page(t: &TestApp, uri: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut b = Request::get(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    let (s, _, bytes) = t.call_raw(b.body(Body::empty()).expect("request")).await;
    (s, String::from_utf8_lossy(&bytes).into_owned())
}

/// The `value` of the first `<input>` named `name` in `html`.
fn input_value(html: &str, name: &str) -> Option<String> {
    let mut rest = html;
    while let Some(i) = rest.find("<input") {
        let tag = &rest[i..];
        let tag = &tag[..tag.find('>')?];
        if tag.contains(&format!("name=\"{name}\"")) {
            let v = &tag[tag.find("value=\"")? + 7..];
            return Some(v[..v.find('"')?].to_string());
        }
        rest = &rest[i + 6..];
    }
    None
}

/// Signs in as admin with the sign-in form (the page at `/admin` without a cookie).
async fn admin_sign_in(page: &Page<'_>, secret: &str) {
    page.goto("/admin").await;
    page.wait_shown("input[name=secret]").await;
    page.shot("admin-sign-in").await;
    page.type_into("input[name=secret]", secret).await;
    page.find("input[name=secret]")
        .await
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .expect("submit");
    page.wait_for(
        "the dashboard",
        "!!$('#live') && !!$('form#create-sale') && location.pathname === '/admin'",
    )
    .await;
}

/// The number shown in `sel` (digits of its text).
fn figure_js(sel: &str) -> String {
    format!(
        "(() => {{ const t = txt({}); if (t === null) return null; const n = parseFloat(t.replace(/[^0-9.]/g, '')); return isNaN(n) ? null : n; }})()",
        json!(sel)
    )
}

/// The operator signs in, creates a sale with the form, sees it listed, and watches the
/// live figures, chart and workers follow purchases made through the API; the dead letters
/// page lists a letter, and its discard confirmation works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_signs_in_creates_a_sale_and_sees_live_figures_move() {
    let test = "admin_signs_in_creates_a_sale_and_sees_live_figures_move";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    // Without a cookie: the sign-in form, with status 401.
    let (s, html) = get_page(&t, "/admin", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{html}");
    assert!(html.contains("name=\"secret\""), "the sign-in form: {html}");
    let (s, _) = get_page(&t, "/admin/api/live", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let page = browser.session(&base).await;
    let secret = t.state.config.admin_secret.clone();
    admin_sign_in(&page, &secret).await;
    page.wait_for("live updates", "Number($('#live').dataset.ticks) > 0")
        .await;
    page.shot("dashboard").await;

    // Create a sale with the form.
    for (name, value) in [
        ("id", "41"),
        ("name", "Browser-made kettle"),
        ("price", "12.50"),
        ("units", "50"),
        ("starts_in_s", "0"),
        ("pay_window_s", "600"),
    ] {
        page.type_into(&format!("form#create-sale input[name={name}]"), value)
            .await;
    }
    page.shot("create-sale-filled").await;
    page.click("form#create-sale [type=submit]").await;
    page.wait_for(
        "the new sale in table#sales-table",
        "(() => { const r = $('table#sales-table tr[data-sale-id=\"41\"]'); return r && shown(r) ? r.textContent : null; })()",
    )
    .await;
    let row = page
        .text("table#sales-table tr[data-sale-id=\"41\"]")
        .await
        .unwrap_or_default();
    assert!(
        row.contains("Browser-made kettle"),
        "the row names the sale: {row:?}"
    );
    page.shot("sale-created").await;
    let sale = t
        .state
        .db
        .sale(41)
        .await
        .expect("db")
        .expect("sale 41 stored");
    assert_eq!((sale.units, sale.price_cents), (50, 1250), "{sale:?}");

    // Figures before, then purchases through the API, then the figures move.
    page.wait_for(
        "#fig-accepted to show a number",
        &format!("{} !== null", figure_js("#fig-accepted")),
    )
    .await;
    let ticks: f64 = page
        .eval("Number($('#live').dataset.ticks)")
        .await
        .expect("ticks")
        .as_f64()
        .unwrap_or_default();
    let accepted: f64 = page
        .eval(&figure_js("#fig-accepted"))
        .await
        .expect("figure")
        .as_f64()
        .unwrap_or_default();
    const BUYERS: usize = 6;
    for u in 0..BUYERS {
        let cookie = t.login(&format!("api-buyer-{u}")).await;
        let deadline = Instant::now() + WAIT;
        let token = loop {
            let (s, v) = t.token_load_test(&cookie, 41).await;
            if s == StatusCode::OK {
                break token_of(&v);
            }
            assert!(Instant::now() < deadline, "no token: {s} {v}");
            tokio::time::sleep(POLL).await;
        };
        let (s, v) = t.purchase(&cookie, 41, &token).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    page.wait_for(
        &format!("#fig-accepted to grow by {BUYERS} from {accepted}"),
        &format!(
            "{} >= {}",
            figure_js("#fig-accepted"),
            accepted + BUYERS as f64
        ),
    )
    .await;
    page.wait_for(
        "more live updates",
        &format!("Number($('#live').dataset.ticks) > {ticks}"),
    )
    .await;
    page.wait_for(
        "svg#chart to draw a line",
        "(() => { const s = $('svg#chart'); if (!s) return 0; let n = 0; \
           for (const p of s.querySelectorAll('polyline')) n = Math.max(n, p.points.numberOfItems); \
           for (const p of s.querySelectorAll('path')) n = Math.max(n, ((p.getAttribute('d') || '').match(/-?[0-9.]+[ ,]+-?[0-9.]+/g) || []).length); \
           return n >= 2; })()",
    )
    .await;
    page.wait_for(
        "a worker in table#workers",
        "document.querySelectorAll('table#workers tr.worker[data-worker-id]').length > 0",
    )
    .await;
    for fig in [
        "#fig-requests",
        "#fig-refused",
        "#fig-enqueue-rate",
        "#fig-drain-rate",
        "#fig-depth",
        "#fig-lag",
        "#fig-orders-rate",
        "#fig-cancellations",
        "#fig-dead-letters",
    ] {
        page.wait_shown(fig).await;
    }
    page.shot("figures-moved").await;

    // The dead letters page lists a message the workers could not use; discard it through
    // its confirmation page.
    t.engine
        .publish("orders", queue::Message::new(&b"{not a purchase"[..]))
        .await
        .expect("publish");
    let deadline = Instant::now() + WAIT;
    while t
        .state
        .queue
        .dead_letters("orders", 0, 10)
        .await
        .expect("dead letters")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(POLL).await;
    }
    page.goto("/admin/dead-letters").await;
    page.wait_shown("table#dead-letters").await;
    let row = page.wait_shown("table#dead-letters tr.dead-letter").await;
    assert!(row.contains("malformed"), "the reason is shown: {row:?}");
    page.shot("dead-letters").await;
    page.click("table#dead-letters tr.dead-letter a.discard")
        .await;
    page.wait_shown("form#confirm").await;
    page.shot("discard-confirm").await;
    page.click("button#confirm-submit").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, v) = admin_api(&t, "GET", "/admin/api/dead-letters", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["dead_letters"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the letter was not discarded: {v}"
        );
        tokio::time::sleep(POLL).await;
    }
    page.goto("/admin/dead-letters").await;
    page.wait_shown("table#dead-letters").await;
    page.wait_gone("table#dead-letters tr.dead-letter").await;
    page.shot("dead-letters-empty").await;
    page.close().await;
    crew.stop().await;
}

/// A tiny web server on another loopback port (another origin than the gateway's): serves
/// `html` for every request. Stops when the returned handle is aborted.
async fn other_origin(html: String) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// An auto-submitting form, as a hostile page would carry, posting a sale to the gateway.
fn hostile_form(base: &str, sale: u64, csrf: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>You won!</title></head><body>
<h1>Claim your prize</h1>
<form id="f" method="POST" action="{base}/admin/sales">
<input name="csrf" value="{csrf}"><input name="id" value="{sale}">
<input name="name" value="Hostile {sale}"><input name="price" value="1.00">
<input name="units" value="5"><input name="starts_in_s" value="0">
<input name="pay_window_s" value="600">
</form>
<script>document.getElementById('f').submit();</script>
</body></html>"#
    )
}

/// A form posted to the admin from another origin, in the browser of a signed-in admin,
/// creates nothing; over plain HTTP, a cookie-authenticated form POST without the right
/// `csrf` field, or from another site (`Origin`, `Sec-Fetch-Site`), is 403, while the same
/// POST done right creates the sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_post_is_refused() {
    let test = "cross_site_form_post_is_refused";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    let secret = t.state.config.admin_secret.clone();
    let page = browser.session(&base).await;
    admin_sign_in(&page, &secret).await;
    page.shot("signed-in").await;
    let csrf = page
        .attr("form#create-sale input[name=csrf]", "value")
        .await
        .expect("the create-sale form carries a csrf field");
    assert!(!csrf.is_empty());

    // From another origin: with a made-up csrf value (all an attacker can have), and even
    // with the admin's real one (only the Origin check is left to stop it).
    for (sale, token, label) in [
        (71, "forged", "forged-csrf"),
        (72, csrf.as_str(), "real-csrf"),
    ] {
        let (port, server) = other_origin(hostile_form(&base, sale, token)).await;
        page.goto(&format!("http://127.0.0.1:{port}/prize")).await;
        page.wait_for(
            "the hostile form to be posted to the gateway",
            &format!("location.href === {}", json!(format!("{base}/admin/sales"))),
        )
        .await;
        page.shot(&format!("cross-site-{label}")).await;
        let dashboard = page.eval("!!$('form#create-sale')").await.expect("eval");
        assert_eq!(
            dashboard,
            json!(false),
            "{label}: the POST was answered with the dashboard"
        );
        server.abort();
        assert!(
            t.state.db.sale(sale).await.expect("db").is_none(),
            "a form posted from another origin ({label}) created sale {sale}"
        );
        let (_, v) = admin_api(&t, "GET", "/admin/api/sales", None).await;
        assert!(
            !v.to_string().contains(&format!("Hostile {sale}")),
            "sale {sale} listed: {v}"
        );
    }
    // The same form from the gateway's own page, with the real csrf, does create a sale:
    // the refusals above are not about the form's fields.
    page.goto("/admin").await;
    page.wait_shown("form#create-sale").await;
    let inject = format!(
        "(() => {{ const d = document.createElement('div'); d.innerHTML = {}; \
           document.body.appendChild(d); return true; }})()",
        json!(
            hostile_form(&base, 73, &csrf)
                .split("<form")
                .nth(1)
                .and_then(|f| f.split("</form>").next())
                .map(|f| format!("<form{f}</form>"))
                .expect("the form")
        )
    );
    page.eval(&inject).await.expect("inject");
    page.eval("(() => { document.getElementById('f').submit(); return true; })()")
        .await
        .expect("submit");
    let deadline = Instant::now() + WAIT;
    while t.state.db.sale(73).await.expect("db").is_none() {
        if Instant::now() > deadline {
            page.fail("the same form posted from the admin's own page created no sale")
                .await;
        }
        tokio::time::sleep(POLL).await;
    }
    page.shot("same-origin-created").await;
    page.close().await;

    // Plain HTTP: sign in with the form, read the csrf field of the dashboard.
    let (s, h, body) = form_post(&t, "/admin/login", None, &[], &[("secret", &secret)]).await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    let set = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("admin="))
        .unwrap_or_else(|| panic!("an admin cookie: {h:?}"))
        .to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    let cookie = set.split(';').next().expect("name=value").to_string();
    let (s, html) = get_page(&t, "/admin", Some(&cookie)).await;
    assert_eq!(s, StatusCode::OK, "{html}");
    let csrf = input_value(&html, "csrf").expect("a csrf field on the dashboard");
    // The create-sale form's fields for sale `id`, with this `csrf` field if any.
    let fields = |id: u64, csrf: Option<&str>| {
        let id = id.to_string();
        let mut f = vec![
            ("id", id.as_str()),
            ("name", "Plain"),
            ("price", "1.00"),
            ("units", "3"),
            ("starts_in_s", "0"),
            ("pay_window_s", "600"),
        ];
        if let Some(c) = csrf {
            f.push(("csrf", c));
        }
        f.into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect::<Vec<_>>()
    };
    let cases = [
        ("no csrf field", 81, None, ("origin", base.as_str())),
        (
            "a wrong csrf field",
            82,
            Some("0000"),
            ("origin", base.as_str()),
        ),
        (
            "an Origin of another site",
            83,
            Some(csrf.as_str()),
            ("origin", "http://evil.example"),
        ),
        (
            "Sec-Fetch-Site: cross-site (no Origin)",
            84,
            Some(csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
        ),
        // Done right: created (the refusals above are about what each one lacks).
        (
            "the right csrf field and Origin",
            85,
            Some(csrf.as_str()),
            ("origin", base.as_str()),
        ),
    ];
    for (what, id, token, extra) in cases {
        let f = fields(id, token);
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _, body) = form_post(&t, "/admin/sales", Some(&cookie), &[extra], &f).await;
        let created = t.state.db.sale(id).await.expect("db").is_some();
        if id == 85 {
            assert!(s.is_redirection(), "{what}: {s} {body}");
            assert!(created, "{what}: no sale {id}");
        } else {
            assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {body}");
            assert!(!created, "{what}: sale {id} created");
        }
    }
    crew.stop().await;
}

/// `stock_buckets` on sale creation: stored and answered, 1 when absent, and a count
/// outside 1..=64 refused with a 400 that names it (nothing created).
#[tokio::test]
async fn a_sale_is_created_with_its_stock_buckets() {
    let t = super::test_app(1.5, test_throttle()).await;
    let sale = |id: u64, k: Option<u64>| {
        let mut v = json!({"id": id, "name": format!("Gadget {id}"), "price_cents": 1999,
                           "units": 10, "starts_at_ms": 0, "confirm": true});
        if let Some(k) = k {
            v["stock_buckets"] = json!(k);
        }
        v
    };
    let (s, v) = admin_api(&t, "POST", "/admin/api/sales", Some(sale(1, Some(4)))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["stock_buckets"], json!(4));
    let (s, v) = admin_api(&t, "POST", "/admin/api/sales", Some(sale(2, None))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["stock_buckets"], json!(1));
    for (id, k) in [(3, 0), (4, 65)] {
        let (s, v) = admin_api(&t, "POST", "/admin/api/sales", Some(sale(id, Some(k)))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v.to_string().contains("stock buckets must be 1..=64"),
            "{v}"
        );
        assert!(t.state.db.sale(id).await.expect("db").is_none());
    }
    assert_eq!(
        t.state
            .db
            .sale(1)
            .await
            .expect("db")
            .map(|s| s.stock_buckets),
        Some(4)
    );
}

/// The state shown for sale `id` in the live sales table.
fn sale_state_js(id: u64) -> String {
    format!("txt('table#sales-table tr[data-sale-id=\"{id}\"] td.sale-state')")
}

/// The operator pauses, resumes and ends a sale from the dashboard's live sales table; the
/// table follows a change made elsewhere (the admin API) without a reload; the create form
/// refuses "1,50", keeps what was typed, and asks to confirm a zero price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pauses_resumes_and_ends_a_sale_from_the_dashboard() {
    let test = "operator_pauses_resumes_and_ends_a_sale_from_the_dashboard";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    let page = browser.session(&base).await;
    let secret = t.state.config.admin_secret.clone();
    admin_sign_in(&page, &secret).await;
    // A sale created elsewhere after the page loaded shows up in the live table.
    create_sale(&t, 51, 10, 0, 600_000).await;
    page.wait_for(
        "sale 51 live in the table without a reload",
        &format!("{} === 'live'", sale_state_js(51)),
    )
    .await;
    page.shot("operator-table-live").await;

    // Pause from the table: the sale refuses tokens.
    page.click("table#sales-table tr[data-sale-id=\"51\"] button.act-pause")
        .await;
    page.wait_for(
        "the pause notice",
        "(txt('#notice') || '').includes('Sale 51 paused')",
    )
    .await;
    page.wait_for(
        "sale 51 shown paused",
        &format!("{} === 'paused'", sale_state_js(51)),
    )
    .await;
    let _ = page
        .eval("document.getElementById('sales').scrollIntoView() || true")
        .await;
    page.shot("operator-paused").await;
    assert!(t.state.db.sale(51).await.expect("db").expect("sale").paused);
    let ann = t.login("ann").await;
    let (s, v) = t.token_load_test(&ann, 51).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("sale_paused")),
        "{v}"
    );

    // Resume from the table.
    page.click("table#sales-table tr[data-sale-id=\"51\"] button.act-resume")
        .await;
    page.wait_for(
        "the resume notice",
        "(txt('#notice') || '').includes('Sale 51 resumed')",
    )
    .await;
    assert!(!t.state.db.sale(51).await.expect("db").expect("sale").paused);
    let (s, v) = t.token_load_test(&ann, 51).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Paused by another operator through the API: the table follows without a reload.
    let (s, v) = admin_api(&t, "POST", "/admin/api/sales/51/pause", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    page.wait_for(
        "the table to show the pause made elsewhere",
        &format!("{} === 'paused'", sale_state_js(51)),
    )
    .await;

    // End, after its confirmation page.
    page.click("table#sales-table tr[data-sale-id=\"51\"] a.act-end")
        .await;
    page.wait_shown("form#confirm").await;
    page.shot("operator-end-confirm").await;
    page.click("button#confirm-submit").await;
    page.wait_for(
        "sale 51 shown ended",
        &format!("{} === 'ended'", sale_state_js(51)),
    )
    .await;
    let (s, v) = t.token_load_test(&ann, 51).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::GONE, Some("ended")),
        "{v}"
    );

    // "1,50" is refused with both readings; what was typed stays in the form.
    for (name, value) in [
        ("id", "52"),
        ("name", "Comma kettle"),
        ("price", "1,50"),
        ("units", "5"),
        ("starts_in_s", "0"),
    ] {
        page.type_into(&format!("form#create-sale input[name={name}]"), value)
            .await;
    }
    page.click("form#create-sale [type=submit]").await;
    page.wait_for(
        "the decimal comma refused",
        "(txt('#error') || '').includes('is it 1.50 or 150?')",
    )
    .await;
    let _ = page
        .eval("document.getElementById('new-sale').scrollIntoView() || true")
        .await;
    assert!(
        page.text("#form-error")
            .await
            .is_some_and(|e| e.contains("1.50 or 150")),
        "the error beside the form"
    );
    page.shot("operator-price-comma").await;
    for (name, value) in [("name", "Comma kettle"), ("price", "1,50"), ("units", "5")] {
        let kept = page
            .eval(&format!("$('form#create-sale input[name={name}]').value"))
            .await
            .expect("value");
        assert_eq!(kept, json!(value), "{name} kept");
    }
    assert!(
        t.state.db.sale(52).await.expect("db").is_none(),
        "never 150.00"
    );
    // A price of 0 needs the box ticked.
    page.type_into("form#create-sale input[name=price]", "0")
        .await;
    page.click("form#create-sale [type=submit]").await;
    page.wait_shown("#confirm-box").await;
    let _ = page
        .eval("document.getElementById('new-sale').scrollIntoView() || true")
        .await;
    page.shot("operator-confirm-zero-price").await;
    assert!(t.state.db.sale(52).await.expect("db").is_none());
    page.click("input#confirm").await;
    page.click("form#create-sale [type=submit]").await;
    page.wait_for(
        "sale 52 created",
        "(txt('#notice') || '').includes('Sale 52 created')",
    )
    .await;
    let made = t.state.db.sale(52).await.expect("db").expect("sale 52");
    assert_eq!((made.price_cents, made.name.as_str()), (0, "Comma kettle"));
    page.wait_for(
        "sale 52 in the table",
        &format!("{} === 'live'", sale_state_js(52)),
    )
    .await;
    let _ = page
        .eval("document.getElementById('sales').scrollIntoView() || true")
        .await;
    page.shot("operator-dashboard").await;
    page.close().await;
    crew.stop().await;
}

/// The operator edits a sale before its start from the table's link (the start shown and
/// sent back by the page's script), looks an order up by its buyer, reconciles a sale
/// after its confirmation page, and discards two unreadable dead letters in one go after a
/// refused replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_edits_looks_up_reconciles_and_clears_dead_letters() {
    let test = "operator_edits_looks_up_reconciles_and_clears_dead_letters";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    let start = SystemClock.now_ms() + 3_600_000;
    create_sale(&t, 61, 5, start, 600_000).await;
    create_sale(&t, 62, 5, 0, 600_000).await;
    let page = browser.session(&base).await;
    let secret = t.state.config.admin_secret.clone();
    admin_sign_in(&page, &secret).await;

    // Edit sale 61 before its start.
    page.wait_shown("table#sales-table tr[data-sale-id=\"61\"] a.act-edit")
        .await;
    page.click("table#sales-table tr[data-sale-id=\"61\"] a.act-edit")
        .await;
    page.wait_shown("form#edit-sale").await;
    page.type_into("form#edit-sale input[name=units]", "8")
        .await;
    page.type_into("form#edit-sale input[name=price]", "24.50")
        .await;
    page.shot("operator-edit").await;
    page.click("button#edit-sale-submit").await;
    page.wait_for(
        "the saved notice",
        "(txt('#notice') || '').includes('Sale 61 saved')",
    )
    .await;
    let edited = t.state.db.sale(61).await.expect("db").expect("sale 61");
    assert_eq!((edited.units, edited.price_cents), (8, 2450), "{edited:?}");
    assert!(
        edited.starts_at_ms.abs_diff(start) < 1000,
        "the start kept (to the second): {} vs {start}",
        edited.starts_at_ms
    );
    let stock = t.state.inventory.store().stock(61).await.expect("ok");
    assert_eq!(stock.map(|s| s.units), Some(8), "the stock re-put");

    // A purchase of sale 62, found by its buyer.
    let ann = t.login("ann").await;
    let (_, v) = t.token_load_test(&ann, 62).await;
    let (s, v) = t.purchase(&ann, 62, &token_of(&v)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let deadline = Instant::now() + WAIT;
    while t.state.db.order_counts(62).await.expect("db").pending == 0 {
        assert!(Instant::now() < deadline, "no order");
        tokio::time::sleep(POLL).await;
    }
    page.type_into("input#order-query", "ann").await;
    page.find("input#order-query")
        .await
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .expect("submit");
    let row = page.wait_shown("table#orders tr.order").await;
    assert!(row.contains("ann") && row.contains("pending"), "{row}");
    page.shot("operator-order-lookup").await;

    // Reconcile sale 62 after its confirmation page: the result is shown.
    page.goto("/admin").await;
    page.wait_shown("table#sales-table tr[data-sale-id=\"62\"] a.act-reconcile")
        .await;
    page.click("table#sales-table tr[data-sale-id=\"62\"] a.act-reconcile")
        .await;
    page.wait_shown("form#confirm").await;
    page.click("button#confirm-submit").await;
    page.wait_for(
        "the reconcile result",
        "(txt('#notice') || '').includes('Sale 62 reconciled: 5 units, 4 left, 1 held by buyers with an active order.')",
    )
    .await;
    page.shot("operator-reconciled").await;

    // Two unreadable dead letters: a replay is refused, saying why; both go in one discard.
    for payload in [&b"{not a purchase"[..], &b"[]"[..]] {
        t.engine
            .publish("orders", queue::Message::new(payload))
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + WAIT;
    while t
        .state
        .queue
        .dead_letters("orders", 0, 10)
        .await
        .expect("dead letters")
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(POLL).await;
    }
    page.goto("/admin/dead-letters").await;
    page.click("table#dead-letters tr.dead-letter a.replay")
        .await;
    page.wait_shown("form#confirm").await;
    page.click("button#confirm-submit").await;
    page.wait_for(
        "the refused replay",
        "(txt('#error') || '').includes('dead-lettered again at once')",
    )
    .await;
    assert!(
        !page
            .text("body")
            .await
            .unwrap_or_default()
            .contains("Replayed"),
        "never says Replayed"
    );
    page.shot("operator-replay-refused").await;
    page.click("button.all-of-topic[value=\"discard:orders\"]")
        .await;
    page.wait_shown("table#bulk-letters").await;
    page.shot("operator-bulk-confirm").await;
    page.click("button#confirm-submit").await;
    page.wait_for(
        "the bulk discard",
        "(txt('#notice') || '').includes('Discarded 2.')",
    )
    .await;
    page.wait_gone("table#dead-letters tr.dead-letter").await;
    assert!(
        t.state
            .queue
            .dead_letters("orders", 0, 10)
            .await
            .expect("dead letters")
            .is_empty()
    );
    page.close().await;
    crew.stop().await;
}

/// The sum over the plotted points of `series`' rate × the interval since the point before
/// (the first point has no interval): the requests the chart shows, as a JS expression.
fn plotted_js(series: &str) -> String {
    format!(
        "(() => {{ const p = (window.liveChart || {{}}).points || []; let n = 0; \
           for (let i = 1; i < p.length; i++) n += Number((p[i].outcomes || {{}})[{s}] || 0) * (p[i].t_ms - p[i - 1].t_ms) / 1000; \
           return n; }})()",
        s = json!(series)
    )
}

/// The dashboard's chart: purchases, sell-outs and refusals made through the API show up
/// in their stacked series (as many as were made), the queue panel has its backlog on a
/// labelled right axis, the latency panel plots the purchases' p50 and p99, every panel
/// has a time axis with clock times and value ticks, and the dead letters tile links to its
/// page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_chart_plots_outcomes_queue_and_latency_with_axes() {
    let test = "the_live_chart_plots_outcomes_queue_and_latency_with_axes";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (t, crew, base) = system().await;
    const SALE: u64 = 77;
    const UNITS: u64 = 3;
    create_sale(&t, SALE, UNITS, SystemClock.now_ms(), 600_000).await;
    let page = browser.session(&base).await;
    let secret = t.state.config.admin_secret.clone();
    admin_sign_in(&page, &secret).await;
    page.wait_for(
        "two plotted points",
        "((window.liveChart || {}).points || []).length >= 2",
    )
    .await;
    page.shot("chart-empty").await;

    // Forged tokens refused (before the sell-out, which a purchase hears of first), every
    // unit bought, then buyers told it is sold out.
    const FORGED: u64 = 4;
    for u in 0..FORGED {
        let cookie = t.login(&format!("chart-forger-{u}")).await;
        let (s, v) = t.purchase(&cookie, SALE, "forged.token").await;
        assert!(s.is_client_error(), "{s} {v}");
        assert_ne!(v["error"], "throttled", "{v}");
    }
    for u in 0..UNITS {
        let cookie = t.login(&format!("chart-buyer-{u}")).await;
        let (s, v) = t.token_load_test(&cookie, SALE).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = t.purchase(&cookie, SALE, &token_of(&v)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    const SOLD_OUT: u64 = 2;
    for u in 0..SOLD_OUT {
        let cookie = t.login(&format!("chart-late-{u}")).await;
        let (s, v) = t.token_load_test(&cookie, SALE).await;
        assert_eq!(s, StatusCode::GONE, "{v}");
        assert_eq!(v["error"], "sold_out", "{v}");
    }
    for (series, n) in [
        ("accepted", UNITS),
        ("sold_out", SOLD_OUT),
        ("refused", FORGED),
    ] {
        // Rates × intervals add up to whole requests, up to float rounding.
        page.wait_for(
            &format!("{n} {series} plotted"),
            &format!("{} >= {} - 0.01", plotted_js(series), n),
        )
        .await;
        let plotted = page
            .eval(&plotted_js(series))
            .await
            .expect("plotted")
            .as_f64()
            .unwrap_or_default();
        assert!(
            plotted < n as f64 + 0.01,
            "{series}: {plotted} plotted, {n} made"
        );
    }
    page.wait_for(
        "the purchases' latency plotted",
        "(window.liveChart.series.p99 || []).some(([, v]) => v !== null && v > 0) && \
         (window.liveChart.series.p50 || []).some(([, v]) => v !== null && v > 0)",
    )
    .await;
    page.wait_for(
        "the enqueued purchases plotted",
        "(window.liveChart.series.enqueued || []).some(([, v]) => v > 0)",
    )
    .await;
    // Each stacked band and line is a path with points; the latency (of one burst of
    // purchases) at least one point, with its marker.
    for (series, least) in [
        ("accepted", 2.0),
        ("sold_out", 2.0),
        ("refused", 2.0),
        ("enqueued", 2.0),
        ("drained", 2.0),
        ("backlog", 2.0),
        ("p50", 1.0),
        ("p99", 1.0),
    ] {
        let n = page
            .eval(&format!(
                "Number(($('svg#chart path[data-series=\"{series}\"]') || {{ dataset: {{}} }}).dataset.points || 0)"
            ))
            .await
            .expect("points")
            .as_f64()
            .unwrap_or_default();
        assert!(n >= least, "{series}: {n} points drawn");
    }
    let markers = page
        .eval("document.querySelectorAll('svg#chart circle.marker-p99').length")
        .await
        .expect("markers")
        .as_f64()
        .unwrap_or_default();
    assert!(markers >= 1.0, "{markers} p99 markers");
    // Axes: three panels, each with clock times under it, value ticks and a unit; the
    // backlog has its own labelled axis.
    let axes = page
        .eval(
            "(() => { const out = {}; for (const g of document.querySelectorAll('svg#chart g.panel')) { \
               out[g.id] = { times: [...g.querySelectorAll('.x-axis text')].map((e) => e.textContent), \
                             ticks: [...g.querySelectorAll('.y-axis text')].map((e) => e.textContent), \
                             right: [...g.querySelectorAll('.y-axis-right text')].map((e) => e.textContent), \
                             labels: [...g.querySelectorAll('.axis-label')].map((e) => e.textContent), \
                             legend: [...g.querySelectorAll('.legend text')].map((e) => e.textContent) }; } \
               return out; })()",
        )
        .await
        .expect("axes");
    let clock = |s: &str| {
        s.len() == 8
            && s.chars().enumerate().all(|(i, c)| {
                if i == 2 || i == 5 {
                    c == ':'
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    for panel in ["chart-requests", "chart-queue", "chart-latency"] {
        let a = &axes[panel];
        let times: Vec<&str> = a["times"]
            .as_array()
            .map_or(Vec::new(), |v| v.iter().filter_map(Value::as_str).collect());
        assert!(
            times.len() >= 4 && times.iter().all(|s| clock(s)),
            "{panel}: times {times:?}"
        );
        let ticks = a["ticks"].as_array().map_or(0, Vec::len);
        assert!(ticks >= 2, "{panel}: value ticks {a}");
        assert!(
            a["labels"].as_array().is_some_and(|l| !l.is_empty()),
            "{panel}: {a}"
        );
    }
    let legend = axes["chart-requests"]["legend"].to_string();
    for name in ["accepted", "sold out", "throttled", "refused", "errors"] {
        assert!(legend.contains(name), "legend {legend}");
    }
    let queue = &axes["chart-queue"];
    assert!(
        queue["labels"].to_string().contains("backlog (messages)"),
        "{queue}"
    );
    assert!(
        queue["right"].as_array().is_some_and(|r| r.len() >= 2),
        "{queue}"
    );
    assert_eq!(
        page.attr("a#tile-dead-letters", "href").await.as_deref(),
        Some("/admin/dead-letters")
    );
    page.eval("document.getElementById('live-chart').scrollIntoView()")
        .await
        .expect("scroll to the chart");
    page.shot("chart-with-outcomes").await;
    page.eval("window.scrollTo(0, 0)").await.expect("scroll up");
    page.click("a#tile-dead-letters").await;
    page.wait_shown("table#dead-letters").await;
    page.close().await;
    crew.stop().await;
}
