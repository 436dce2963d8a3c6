//! The router and its handlers: `app(state)` is the whole HTTP surface, testable with
//! `oneshot` and served by the `gateway` binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use inventory::{Inventory, Reservation};
use queue::{Message, Queue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::captcha::CaptchaStore;
use crate::error::{ApiError, ApiResult};
use crate::ledger::{LedgerError, MemoryLedger, TokenLedger};
use crate::publisher::Publisher;
use crate::sales::{Catalogue, NewSale, Sale, SaleState};
use crate::session::SessionKey;
use crate::throttle::{Route, Throttle, Throttled};
use crate::tickets::{Ticket, TicketBook, TicketState};
use crate::token::{TokenError, TokenKey, Verified, holder_of, token_cap};
use order_worker::OrdersDb;
use order_worker::PurchaseMessage;

/// Header that lets load-test requests skip the captcha when load-test mode is on.
pub const LOAD_TEST_HEADER: &str = "x-load-test-secret";

/// Settings of the gateway (the binary fills them from flags and environment).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Topic purchases are published to.
    pub orders_topic: String,
    /// Consumer group of the order workers (for positions in line).
    pub workers_group: String,
    /// Tokens a sale issues at most: `units × token_factor`.
    pub token_factor: f64,
    /// How long a purchase token is valid.
    pub token_ttl_ms: u64,
    /// How long a session is valid.
    pub session_ttl_ms: u64,
    /// Load-test mode: requests carrying this secret in `x-load-test-secret` skip the
    /// captcha (nothing else is relaxed). `None`: off (the default).
    pub load_test_secret: Option<String>,
    /// Bearer secret of the admin API.
    pub admin_secret: String,
    /// How long a purchase request waits for its durable enqueue before it answers
    /// `503 outcome_unknown` with its ticket (the purchase goes on and the ticket tells how
    /// it ended). Keep it below the request timeout.
    pub purchase_wait_ms: u64,
    /// **Test-only hook, off by default** (no flag or variable sets it): the captcha store
    /// remembers plaintext answers so that browser tests can type them
    /// ([`crate::captcha::CaptchaStore::revealed_answer`]).
    pub reveal_captcha_answers: bool,
}

impl GatewayConfig {
    /// Defaults with this admin secret.
    pub fn new(admin_secret: impl Into<String>) -> Self {
        GatewayConfig {
            orders_topic: "orders".into(),
            workers_group: "order-workers".into(),
            token_factor: 1.5,
            token_ttl_ms: 60_000,
            session_ttl_ms: 24 * 3600 * 1000,
            load_test_secret: None,
            admin_secret: admin_secret.into(),
            purchase_wait_ms: 4_000,
            reveal_captcha_answers: false,
        }
    }
}

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Purchases accepted (202).
    pub accepted: AtomicU64,
    /// Refused: sold out.
    pub sold_out: AtomicU64,
    /// Refused: every purchase token of the sale is live.
    pub tokens_exhausted: AtomicU64,
    /// Refused: already bought.
    pub already_bought: AtomicU64,
    /// Refused: throttled.
    pub throttled: AtomicU64,
    /// Refused: bad, expired, reused or foreign token.
    pub bad_token: AtomicU64,
    /// Refused: not started.
    pub not_started: AtomicU64,
    /// Refused: queue or store unavailable.
    pub unavailable: AtomicU64,
    /// Tokens issued.
    pub tokens_issued: AtomicU64,
    /// Tokens given back after a purchase failed for the system's reasons.
    pub tokens_restored: AtomicU64,
    /// Reservations made.
    pub reservations: AtomicU64,
    /// Reservations released after a failed enqueue.
    pub released: AtomicU64,
    /// Sum of enqueue (durable publish) times, µs.
    pub enqueue_us_sum: AtomicU64,
    /// Request latency by route (index: [`ROUTES`]).
    pub latency: [queue::histogram::AtomicHistogram; ROUTES.len()],
    /// Responses by route and status class (2xx, 4xx, 5xx).
    pub responses: [[AtomicU64; 3]; ROUTES.len()],
}

impl GatewayMetrics {
    /// Records one answered request of route `route` (index into [`ROUTES`]).
    pub fn observe(&self, route: usize, started: std::time::Instant, status: StatusCode) {
        if let Some(h) = self.latency.get(route) {
            h.record_duration(started.elapsed());
        }
        let class = match status.as_u16() {
            0..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        if let Some(c) = self.responses.get(route).and_then(|r| r.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Route labels of the latency and response metrics (the last one catches the rest).
pub const ROUTES: [&str; 9] = [
    "login", "sales", "captcha", "token", "purchase", "ticket", "admin", "health", "other",
];

fn route_index(path: &str) -> usize {
    let label = if path == "/api/login" {
        "login"
    } else if path.ends_with("/captcha") {
        "captcha"
    } else if path.ends_with("/token") {
        "token"
    } else if path.ends_with("/purchase") {
        "purchase"
    } else if path.starts_with("/api/sales") {
        "sales"
    } else if path.starts_with("/api/tickets") {
        "ticket"
    } else if path.starts_with("/admin") {
        "admin"
    } else if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        "health"
    } else {
        "other"
    };
    ROUTES
        .iter()
        .position(|r| *r == label)
        .unwrap_or(ROUTES.len() - 1)
}

/// Everything the handlers share.
pub struct AppState {
    /// Settings.
    pub config: GatewayConfig,
    /// Sales.
    pub catalogue: Catalogue,
    /// Stock (shared with the order workers of this process, if any).
    pub inventory: Arc<Inventory>,
    /// The orders database: sales, orders, outcomes of tickets.
    pub db: OrdersDb,
    /// Counters of the order workers and cancellers running in this process, if any.
    pub crew: Option<CrewMetrics>,
    /// Reconciliation of the stock store with the database at rest.
    pub reconciler: crate::sync::Reconciler,
    /// Tickets of purchases in the orders topic's dead letters.
    pub held: crate::sync::HeldTickets,
    /// The queue, embedded or remote.
    pub queue: Arc<dyn Queue>,
    /// Publishes purchases to the orders topic in batches.
    pub publisher: Publisher,
    /// Session signing key.
    pub sessions: SessionKey,
    /// Token signing key.
    pub tokens: TokenKey,
    /// Live purchase tokens per sale: the token budget and the single-use rule.
    pub ledger: Arc<dyn TokenLedger>,
    /// Captchas.
    pub captchas: CaptchaStore,
    /// Rate limits.
    pub throttle: Throttle,
    /// Accepted purchases.
    pub tickets: TicketBook,
    /// Counters.
    pub metrics: GatewayMetrics,
    /// The workers' progress, for places in line.
    pub line: LineProgress,
    /// Purchases past their reservation, still running.
    pub commits: Commits,
    /// The dashboard's live figures and their history.
    pub live: crate::live::Live,
    /// Units left per sale for the storefront pages, reused for a second.
    pub stock_cache: crate::pages::StockCache,
    /// Signs admin cookies and CSRF tokens.
    pub admin_key: crate::admin::AdminKey,
}

/// The counters of in-process order workers and cancellers, for `/metrics`.
#[derive(Debug, Clone)]
pub struct CrewMetrics {
    /// Workers.
    pub workers: Arc<order_worker::worker::WorkerMetrics>,
    /// Cancellers.
    pub cancellers: Arc<order_worker::canceller::CancellerMetrics>,
}

/// Purchases past their reservation whose task is still running (its request may be gone),
/// counted so that shutdown can wait for them before it closes the queue: a purchase cut
/// off between its reservation and its enqueue would hold a unit until reconciliation.
#[derive(Debug, Default)]
pub struct Commits {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running purchase, counted in [`Commits`] until dropped.
#[derive(Debug)]
pub struct Running(Shared);

impl Running {
    /// Counts one more running purchase of `state`.
    pub fn enter(state: &Shared) -> Running {
        state.commits.running.fetch_add(1, Ordering::AcqRel);
        Running(state.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.commits.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.commits.idle.notify_waiters();
        }
    }
}

impl Commits {
    /// Purchases running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until no purchase is running, at most `timeout`; whether none is.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a notification in between is kept.
            idle.as_mut().enable();
            if self.running() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.running() == 0;
            }
        }
    }
}

/// Why [`AppState::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The throttle configuration is invalid.
    #[error("throttle: {0}")]
    Throttle(crate::throttle::ThrottleConfigError),
    /// Not called inside a Tokio runtime (the publisher task needs one).
    #[error("the gateway state must be built inside a Tokio runtime")]
    NoRuntime,
}

impl AppState {
    /// State around these parts, with an in-process token ledger (replace `ledger` to
    /// share one in Redis), empty captcha, ticket and catalogue tables (load the catalogue
    /// with [`crate::sync::load_catalogue`]), zeroed metrics, and the purchase publisher task
    /// started on the current Tokio runtime. Fails on an invalid throttle configuration or
    /// outside a runtime.
    pub fn new(
        config: GatewayConfig,
        inventory: Inventory,
        queue: Arc<dyn Queue>,
        db: OrdersDb,
        sessions: SessionKey,
        tokens: TokenKey,
        throttle: crate::throttle::ThrottleConfig,
    ) -> Result<AppState, StateError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StateError::NoRuntime)?;
        let publisher = Publisher::spawn_on(&runtime, queue.clone(), &config.orders_topic);
        let admin_key = crate::admin::AdminKey::derive(&sessions, &config.admin_secret);
        let captchas = if config.reveal_captcha_answers {
            CaptchaStore::revealing()
        } else {
            CaptchaStore::new()
        };
        Ok(AppState {
            publisher,
            config,
            catalogue: Catalogue::default(),
            inventory: Arc::new(inventory),
            db,
            crew: None,
            reconciler: crate::sync::Reconciler::default(),
            held: crate::sync::HeldTickets::default(),
            queue,
            sessions,
            tokens,
            ledger: Arc::new(MemoryLedger::new()),
            captchas,
            throttle: Throttle::new(throttle).map_err(StateError::Throttle)?,
            tickets: TicketBook::default(),
            metrics: GatewayMetrics::default(),
            line: LineProgress::default(),
            commits: Commits::default(),
            live: crate::live::Live::default(),
            stock_cache: crate::pages::StockCache::default(),
            admin_key,
        })
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type Shared = Arc<AppState>;

/// The routes and handlers, without the front service (limits, metrics).
fn routes(state: Shared) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/sales", get(list_sales))
        .route("/api/sales/{id}", get(get_sale))
        .route("/api/sales/{id}/captcha", get(new_captcha))
        .route("/api/sales/{id}/token", post(new_token))
        .route("/api/sales/{id}/purchase", post(purchase))
        .route("/api/tickets/{ticket}", get(get_ticket))
        .route("/api/orders/{id}", get(crate::orders::get_order))
        .route("/api/orders/{id}/pay", post(crate::orders::pay_order))
        .route(
            "/admin/api/sales",
            post(create_sale).get(crate::orders::admin_sales),
        )
        .route(
            "/admin/api/sales/{id}/reconcile",
            post(crate::orders::admin_reconcile),
        )
        .route(
            "/admin/api/dead-letters",
            get(crate::orders::admin_dead_letters),
        )
        .route(
            "/admin/api/dead-letters/{topic}/{offset}/{action}",
            post(crate::orders::admin_dead_letter_action),
        )
        .route("/", get(crate::pages::sales_page))
        .route("/sales/{id}", get(crate::pages::sale_page))
        .route("/orders/{id}", get(crate::pages::order_page))
        .route("/static/{file}", get(crate::pages::static_asset))
        .route(
            "/admin/login",
            get(crate::admin::login_form).post(crate::admin::login),
        )
        .route("/admin/logout", post(crate::admin::logout))
        .route("/admin", get(crate::admin::dashboard))
        .route("/admin/", get(crate::admin::dashboard))
        .route("/admin/sales", post(crate::admin::create_sale))
        .route("/admin/dead-letters", get(crate::admin::dead_letters))
        .route(
            "/admin/dead-letters/{topic}/{offset}/{action}",
            get(crate::admin::confirm_dead_letter).post(crate::admin::act_on_dead_letter),
        )
        .route("/admin/api/live", get(crate::admin::live))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
}

/// The whole HTTP surface with the default [`ServeLimits`]: a `tower::Service` testable
/// with `oneshot`, and what `serve` serves.
pub fn app(state: Shared) -> Front {
    app_with_limits(state, ServeLimits::default())
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The client's address: the socket peer when served, loopback under `oneshot` tests.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip()),
        ))
    }
}

/// A sale id from the path; anything but a decimal `u64` is a JSON `404 not_found`.
#[derive(Debug, Clone, Copy)]
pub struct SaleIdPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for SaleIdPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<u64>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(SaleIdPath(id)),
            Err(_) => Err(ApiError::not_found("no such sale (a sale id is a number)")),
        }
    }
}

/// JSON body with our error shape for malformed input.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// The body limit of a request, set by [`Front`] (default: [`ServeLimits::default`]'s).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with Content-Type: application/json",
            ));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(ServeLimits::default().body_limit_bytes, |l| l.0);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if s.is::<http_body_util::LengthLimitError>() {
                        return ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("request body over {limit} bytes"),
                        );
                    }
                    source = s.source();
                }
                ApiError::bad_request(format!("reading the body: {e}"))
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }
}

fn ended() -> ApiError {
    ApiError::new(StatusCode::GONE, "ended", "the sale has ended")
}

fn ledger_unavailable(e: LedgerError) -> ApiError {
    ApiError::unavailable("unavailable", e.to_string(), 1000)
}

fn throttled(state: &AppState, t: Throttled) -> ApiError {
    state.metrics.throttled.fetch_add(1, Ordering::Relaxed);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", t.reason)
        .retry_after_ms(t.retry_after_ms)
}

/// The user of a valid session cookie.
fn session_user(state: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(crate::session::cookie_from_header)
        .ok_or_else(|| ApiError::unauthorized("log in first"))?;
    state
        .sessions
        .verify(cookie, now_ms())
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// The user of a valid session, checked before the request body is read (so a request
/// without a session is a 401 whatever its body).
#[derive(Debug, Clone)]
pub struct SessionUser(pub String);

impl FromRequestParts<Shared> for SessionUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        session_user(state, &parts.headers).map(SessionUser)
    }
}

fn sale_or_404(state: &AppState, id: u64) -> ApiResult<Arc<Sale>> {
    state
        .catalogue
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no sale {id}")))
}

#[derive(Deserialize)]
struct LoginBody {
    user: String,
}

async fn login(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    let now = now_ms();
    state
        .throttle
        .check(Route::Login, None, ip, now)
        .map_err(|t| throttled(&state, t))?;
    inventory::validate_user(&body.user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let value = state
        .sessions
        .sign(&body.user, now + state.config.session_ttl_ms)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cookie = crate::session::set_cookie_header(&value, state.config.session_ttl_ms / 1000);
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"user": body.user})),
    )
        .into_response())
}

async fn sale_json(state: &AppState, sale: &Sale, now: u64) -> Value {
    let left = match state.inventory.store().stock(sale.id).await {
        Ok(Some(s)) => Some(s.left),
        _ => None,
    };
    let st = if now < sale.starts_at_ms {
        SaleState::Upcoming
    } else if sale.ends_at_ms.is_some_and(|e| now >= e) {
        SaleState::Ended
    } else if left == Some(0) {
        SaleState::SoldOut
    } else {
        SaleState::Open
    };
    json!({
        "id": sale.id,
        "name": sale.name,
        "price_cents": sale.price_cents,
        "units": sale.units,
        "units_left": left,
        "starts_at_ms": sale.starts_at_ms,
        "pay_window_ms": sale.pay_window_ms,
        "ends_at_ms": sale.ends_at_ms,
        "per_user_limit": sale.per_user_limit,
        "state": st,
        "server_time_ms": now,
    })
}

async fn list_sales(State(state): State<Shared>) -> Json<Value> {
    let now = now_ms();
    let mut out = Vec::new();
    for s in state.catalogue.list() {
        out.push(sale_json(&state, &s, now).await);
    }
    Json(json!({"sales": out, "server_time_ms": now}))
}

async fn get_sale(
    State(state): State<Shared>,
    SaleIdPath(id): SaleIdPath,
) -> ApiResult<Json<Value>> {
    let sale = sale_or_404(&state, id)?;
    Ok(Json(sale_json(&state, &sale, now_ms()).await))
}

async fn new_captcha(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let user = session_user(&state, &headers)?;
    let now = now_ms();
    state
        .throttle
        .check(Route::Captcha, Some(&user), ip, now)
        .map_err(|t| throttled(&state, t))?;
    sale_or_404(&state, id)?;
    // Drawing takes milliseconds of CPU: off the async workers.
    let drawer = state.clone();
    let purpose = crate::captcha::purpose(&user, id);
    let (captcha_id, png) =
        tokio::task::spawn_blocking(move || drawer.captchas.create(&purpose, now))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::unavailable("busy", e.to_string(), 1000))?;
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    Ok(Json(json!({"captcha_id": captcha_id, "image": image})))
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    captcha_id: String,
    #[serde(default)]
    answer: String,
}

fn load_test_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let (Some(secret), Some(given)) = (
        state.config.load_test_secret.as_deref(),
        headers.get(LOAD_TEST_HEADER).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    use subtle::ConstantTimeEq;
    !secret.is_empty()
        && secret.len() == given.len()
        && bool::from(secret.as_bytes().ct_eq(given.as_bytes()))
}

async fn new_token(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    headers: HeaderMap,
    SessionUser(user): SessionUser,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<Json<Value>> {
    let now = now_ms();
    state
        .throttle
        .check(Route::Token, Some(&user), ip, now)
        .map_err(|t| throttled(&state, t))?;
    let sale = sale_or_404(&state, id)?;
    if sale.ends_at_ms.is_some_and(|e| now >= e) {
        return Err(ended());
    }
    if state.inventory.flagged_sold_out(id) {
        state.metrics.sold_out.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(StatusCode::GONE, "sold_out", "sold out"));
    }
    // No token, no access: at most ⌊units left × factor⌋ live tokens. Checked before the
    // captcha, so a buyer keeps an unused captcha when the tokens are gone.
    let left = match state.inventory.store().stock(id).await {
        Ok(Some(s)) => s.left,
        Ok(None) => {
            return Err(ApiError::unavailable(
                "unavailable",
                format!("sale {id} has no stock defined"),
                1000,
            ));
        }
        Err(e) => return Err(ApiError::unavailable("unavailable", e.to_string(), 1000)),
    };
    if left == 0 {
        state.metrics.sold_out.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(StatusCode::GONE, "sold_out", "sold out"));
    }
    let cap = token_cap(left, sale.token_factor.unwrap_or(state.config.token_factor));
    let exhausted = || {
        state
            .metrics
            .tokens_exhausted
            .fetch_add(1, Ordering::Relaxed);
        ApiError::new(
            StatusCode::GONE,
            "tokens_exhausted",
            "every purchase token of this sale is taken; try again when some expire",
        )
        .retry_after_ms(state.config.token_ttl_ms.min(60_000))
    };
    if !state
        .ledger
        .room(id, holder_of(&user), cap, now)
        .await
        .map_err(ledger_unavailable)?
    {
        return Err(exhausted());
    }
    if !load_test_ok(&state, &headers) {
        state
            .captchas
            .check(
                &body.captcha_id,
                &crate::captcha::purpose(&user, id),
                &body.answer,
                now,
            )
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "bad_captcha", e.to_string()))?;
    }
    let expires_at_ms = now + state.config.token_ttl_ms;
    let (token, nonce) = state.tokens.issue(&user, id, expires_at_ms);
    if !state
        .ledger
        .issue(id, holder_of(&user), nonce, expires_at_ms, cap, now)
        .await
        .map_err(ledger_unavailable)?
    {
        return Err(exhausted());
    }
    state.metrics.tokens_issued.fetch_add(1, Ordering::Relaxed);
    Ok(Json(
        json!({"token": token, "expires_at_ms": expires_at_ms}),
    ))
}

#[derive(Deserialize)]
struct PurchaseBody {
    token: String,
}

async fn purchase(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let m = &state.metrics;
    let now = now_ms();
    // Public facts first, answered from memory before any signature is checked or the body
    // is read: that a sale is unknown, not started or sold out is no secret, and in a
    // flash sale it is the answer most requests get.
    let sale = sale_or_404(&state, id)?;
    if sale.ends_at_ms.is_some_and(|e| now >= e) {
        return Err(ended());
    }
    if now < sale.starts_at_ms {
        m.not_started.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_EARLY,
            "not_started",
            format!("the sale starts at {}", sale.starts_at_ms),
        )
        .retry_after_ms(sale.starts_at_ms - now));
    }
    if state.inventory.flagged_sold_out(id) {
        m.sold_out.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(StatusCode::GONE, "sold_out", "sold out"));
    }
    // Then who is asking, and whether they are asking too often (before the body is read
    // and the token checked, so a flood of attempts costs one signature check each).
    let user = session_user(&state, req.headers())?;
    state
        .throttle
        .check_purchase(&user, id, ip, now)
        .map_err(|t| throttled(&state, t))?;
    let JsonBody(body) =
        <JsonBody<PurchaseBody> as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
    let verified = state
        .tokens
        .verify(&body.token, &user, id, now)
        .map_err(|e| {
            m.bad_token.fetch_add(1, Ordering::Relaxed);
            ApiError::new(StatusCode::FORBIDDEN, "bad_token", e.to_string())
        })?;
    // From the token spend on, the purchase runs as its own task: if the request is cut
    // short (its timeout, or the client goes away) it still ends with the token spent and
    // the unit queued (its ticket recorded), or with both given back; never a token spent
    // for nothing or a unit held by nobody.
    let task_state = state.clone();
    let task_user = user.clone();
    let price_cents = sale.price_cents;
    // The ticket is the request id and the message id: a retried publish is de-duplicated.
    let ticket = uuid::Uuid::now_v7();
    let running = Running::enter(&state);
    let commit = tokio::spawn(async move {
        let _running = running;
        commit_purchase(
            &task_state,
            id,
            task_user,
            verified,
            ticket,
            price_cents,
            now,
        )
        .await
    });
    let wait = Duration::from_millis(state.config.purchase_wait_ms.max(1));
    let outcome = match tokio::time::timeout(wait, commit).await {
        Ok(joined) => joined.map_err(ApiError::internal)??,
        Err(_) => {
            // The enqueue is slow (a slow disk or broker); it goes on without us.
            m.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(
                "outcome_unknown",
                "the purchase is still being queued; follow its ticket",
                1000,
            )
            .with_ticket(ticket.to_string()));
        }
    };
    let (ticket, confirm) = outcome;
    let position = position(&state, confirm.offset).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            ticket: ticket.to_string(),
            position,
        }),
    )
        .into_response())
}

/// Publish attempts (same message id) while the queue's answer is ambiguous.
pub const PUBLISH_ATTEMPTS: u32 = 3;

/// Whether a failed publish certainly stored nothing: the queue refused it before taking
/// it (full, invalid, over a limit, no such topic). Anything else — a lost connection or
/// timeout to a broker, a broker-side error, a write failure, the queue closing while the
/// publish waited, an error of a kind added later — may have left the message stored.
fn definitely_not_stored(e: &queue::Error) -> bool {
    matches!(
        e,
        queue::Error::Full { .. }
            | queue::Error::Invalid(_)
            | queue::Error::Limit { .. }
            | queue::Error::NoSuchTopic(_)
    )
}

/// Reserve, publish, then record the ticket or release the unit.
async fn commit_purchase(
    state: &AppState,
    id: u64,
    user: String,
    token: Verified,
    ticket: uuid::Uuid,
    price_cents: u64,
    now: u64,
) -> ApiResult<(uuid::Uuid, queue::Confirm)> {
    let m = &state.metrics;
    // A purchase that fails for the system's reasons gives its token back.
    let restore_token = || async {
        match state
            .ledger
            .restore(id, token.holder, token.nonce, token.expires_at_ms, now_ms())
            .await
        {
            Ok(()) => {
                m.tokens_restored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("restoring a purchase token: {e}"),
        }
    };
    if !state.tickets.has_room() {
        // Every ticket this gateway remembers is still queued: refuse rather than forget one
        // (before the token is spent, so the buyer keeps it).
        m.unavailable.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(
            "busy",
            "too many purchases waiting for the order workers; try again shortly",
            1000,
        ));
    }
    if !state
        .ledger
        .spend(id, token.holder, token.nonce, now)
        .await
        .map_err(ledger_unavailable)?
    {
        m.bad_token.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_token",
            TokenError::Reused.to_string(),
        ));
    }
    let ticket_id = ticket.to_string();
    let payload = serde_json::to_vec(&PurchaseMessage {
        ticket: ticket_id.clone(),
        sale: id,
        user: user.clone(),
        price_cents,
        accepted_at_ms: now,
    })
    .map_err(ApiError::internal)?;
    // Tagged with the ticket: a release for this purchase (here, or a worker's after a
    // rejection) takes back this reservation and no other.
    match state.inventory.reserve_as(id, &user, &ticket_id).await {
        Ok(Reservation::Reserved { .. }) => {}
        Ok(Reservation::SoldOut) => {
            m.sold_out.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(StatusCode::GONE, "sold_out", "sold out"));
        }
        Ok(Reservation::AlreadyBought) => {
            m.already_bought.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_bought",
                "one per person: you already hold one",
            ));
        }
        Ok(Reservation::NoSuchSale) => {
            restore_token().await;
            m.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(
                "unavailable",
                format!("sale {id} has no stock defined"),
                1000,
            ));
        }
        Err(e) => {
            // The reservation may or may not have happened. It is NOT released here: the
            // user may hold a unit from an earlier, accepted purchase, and a release would
            // hand that one back. A unit held by nobody is found by reconciliation.
            restore_token().await;
            m.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable("unavailable", e.to_string(), 1000));
        }
    }
    m.reservations.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut attempt = 0;
    // Once any attempt may have stored the message, a later definite refusal does not
    // make the outcome definite: the unit stays held (never sold twice).
    let mut maybe_stored = false;
    let confirm = loop {
        attempt += 1;
        let message = Message::new(payload.clone()).with_id(ticket.as_u128());
        match state.publisher.publish(message).await {
            Ok(c) => break c,
            Err(e) if !definitely_not_stored(&e) && attempt < PUBLISH_ATTEMPTS => {
                maybe_stored = true;
                tracing::warn!("publish of ticket {ticket}: {e}; retrying with the same id");
            }
            Err(e) if maybe_stored || !definitely_not_stored(&e) => {
                // It may be queued: keep the unit (an order may come of it); if it was not,
                // reconciliation frees it. Never sell it twice.
                m.unavailable.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::unavailable(
                    "outcome_unknown",
                    format!(
                        "the purchase may or may not have been queued ({e}); check your ticket or orders before trying again"
                    ),
                    1000,
                )
                .with_ticket(ticket_id));
            }
            Err(e) => {
                // Definitely not queued: give the unit back before answering.
                if let Err(re) = state
                    .inventory
                    .release_if(id, &user, Some(&ticket_id))
                    .await
                {
                    tracing::error!("release after a failed enqueue: {re}");
                }
                m.released.fetch_add(1, Ordering::Relaxed);
                restore_token().await;
                m.unavailable.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::unavailable(
                    "unavailable",
                    format!("the purchase could not be queued: {e}"),
                    1000,
                ));
            }
        }
    };
    m.enqueue_us_sum.fetch_add(
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    m.accepted.fetch_add(1, Ordering::Relaxed);
    state.tickets.insert(
        ticket_id,
        Ticket {
            sale: id,
            user,
            offset: confirm.offset,
        },
    );
    Ok((ticket, confirm))
}

/// The body of a `202`.
#[derive(serde::Serialize)]
struct Accepted {
    ticket: String,
    position: Option<u64>,
}

/// How long a place-in-line figure may use the workers' progress as last read.
pub const LINE_REFRESH_MS: u64 = 100;
/// Longest wait for the workers' progress; past it the position is left out (`null`).
pub const LINE_STATS_TIMEOUT_MS: u64 = 200;

/// The workers' progress through the orders topic (their group's low watermark, or the
/// log's start before they have one), re-read from the queue at most every
/// [`LINE_REFRESH_MS`]: a flood of purchases does not turn into a flood of `stats` calls,
/// which lock the topic the purchases append to.
#[derive(Debug, Default)]
pub struct LineProgress {
    done: AtomicU64,
    read_at_ms: AtomicU64,
}

impl LineProgress {
    /// The workers have finished every offset below `done` (never goes back).
    pub fn advance(&self, done: u64) {
        self.done.fetch_max(done, Ordering::AcqRel);
    }
}

/// Place in line: messages of the orders topic not yet finished by the workers up to and
/// including this one. `None` if the queue cannot say.
async fn position(state: &AppState, offset: u64) -> Option<u64> {
    let line = &state.line;
    let now = now_ms();
    let read_at = line.read_at_ms.load(Ordering::Acquire);
    // One caller refreshes; the others use the figure as it stands.
    if now.saturating_sub(read_at) >= LINE_REFRESH_MS
        && line
            .read_at_ms
            .compare_exchange(read_at, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        let stats = tokio::time::timeout(
            Duration::from_millis(LINE_STATS_TIMEOUT_MS),
            state.queue.stats(&state.config.orders_topic),
        )
        .await;
        match stats {
            Ok(Ok(stats)) => {
                let done = stats
                    .groups
                    .iter()
                    .find(|g| g.name == state.config.workers_group)
                    .map_or(stats.log_start, |g| g.low_watermark);
                line.done.fetch_max(done, Ordering::AcqRel);
            }
            Ok(Err(_)) | Err(_) => {
                line.read_at_ms.store(read_at, Ordering::Release);
                return None;
            }
        }
    }
    Some(offset.saturating_sub(line.done.load(Ordering::Acquire)) + 1)
}

async fn get_ticket(
    State(state): State<Shared>,
    ticket: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<Value>> {
    let Ok(Path(ticket)) = ticket else {
        return Err(ApiError::not_found("no such ticket"));
    };
    // Tickets are UUIDs; anything else is unknown (and never reaches the database).
    if uuid::Uuid::try_parse(&ticket).is_err() {
        return Err(ApiError::not_found("no such ticket"));
    }
    // The book first, then the database: a ticket leaves the book only after its outcome
    // is committed, so one of the two reads sees it.
    let waiting = state.tickets.get(&ticket);
    let decided = state
        .db
        .outcome(&ticket)
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string(), 1000))?;
    if let Some(o) = decided {
        let st = match (o.order_id, o.reason) {
            (Some(order_id), _) => TicketState::Ordered { order_id },
            (None, reason) => TicketState::Rejected {
                reason: reason.unwrap_or_default(),
            },
        };
        let mut v = serde_json::to_value(&st).map_err(ApiError::internal)?;
        v["sale"] = json!(o.sale);
        return Ok(Json(v));
    }
    if let Some(t) = waiting {
        // Waiting: this gateway's book knows its place in line.
        let mut v = serde_json::to_value(TicketState::Queued).map_err(ApiError::internal)?;
        v["position"] = json!(position(&state, t.offset).await);
        v["sale"] = json!(t.sale);
        return Ok(Json(v));
    }
    if let Some(h) = state.held.get(&ticket) {
        // In the dead letters: the unit stays reserved until an operator replays the
        // purchase (then decided) or discards it (then rejected).
        return Ok(Json(json!({
            "state": "held",
            "reason": h.reason,
            "sale": h.sale,
        })));
    }
    Err(ApiError::not_found("no such ticket"))
}

/// An admin request: `Authorization: Bearer <admin secret>` (checked in constant time), or
/// the admin cookie with, on anything but GET, the CSRF header and a same-site origin
/// ([`crate::admin::check_api`]); checked before the body is read.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        crate::admin::check_api(state, parts)?;
        Ok(Admin)
    }
}

async fn create_sale(
    State(state): State<Shared>,
    _admin: Admin,
    JsonBody(sale): JsonBody<NewSale>,
) -> ApiResult<Response> {
    let created = create_sale_in(&state, &sale).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Creates a sale (the JSON API and the dashboard's form).
pub async fn create_sale_in(state: &AppState, sale: &NewSale) -> ApiResult<Sale> {
    // The database is the source of truth: the sale is created there first (a taken id is
    // a conflict), then its stock is set to match (a store holding stale figures for this
    // id, from an earlier database, is reset), then it is listed.
    let created = state
        .db
        .create_sale(sale, now_ms())
        .await
        .map_err(|e| match e {
            order_worker::DbError::Invalid(m) => ApiError::bad_request(m),
            order_worker::DbError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "sale_exists", m)
            }
            other => ApiError::unavailable("unavailable", other.to_string(), 1000),
        })?;
    state
        .inventory
        .reconcile(created.id, created.units, &[])
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string(), 1000))?;
    state.catalogue.upsert(created.clone());
    Ok(created)
}

async fn ready(State(state): State<Shared>) -> ApiResult<&'static str> {
    state
        .queue
        .topics()
        .await
        .map_err(|e| ApiError::unavailable("not_ready", e.to_string(), 1000))?;
    Ok("ready")
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let m = &state.metrics;
    let mut out = String::new();
    let outcomes = [
        ("accepted", &m.accepted),
        ("sold_out", &m.sold_out),
        ("tokens_exhausted", &m.tokens_exhausted),
        ("already_bought", &m.already_bought),
        ("throttled", &m.throttled),
        ("bad_token", &m.bad_token),
        ("not_started", &m.not_started),
        ("unavailable", &m.unavailable),
    ];
    out.push_str("# HELP gateway_purchases_total Purchase and token requests by outcome.\n");
    out.push_str("# TYPE gateway_purchases_total counter\n");
    for (name, c) in outcomes {
        out.push_str(&format!(
            "gateway_purchases_total{{outcome=\"{name}\"}} {}\n",
            c.load(Ordering::Relaxed)
        ));
    }
    for (name, help, c) in [
        (
            "gateway_tokens_issued_total",
            "Purchase tokens issued.",
            &m.tokens_issued,
        ),
        (
            "gateway_tokens_restored_total",
            "Purchase tokens given back after a purchase failed for the system's reasons.",
            &m.tokens_restored,
        ),
        (
            "gateway_reservations_total",
            "Units reserved.",
            &m.reservations,
        ),
        (
            "gateway_released_total",
            "Reservations released after a failed enqueue.",
            &m.released,
        ),
        (
            "gateway_enqueue_seconds_sum",
            "Time spent in durable enqueues.",
            &m.enqueue_us_sum,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        let v = c.load(Ordering::Relaxed);
        if name.ends_with("seconds_sum") {
            out.push_str(&format!("{name} {}\n", v as f64 / 1e6));
        } else {
            out.push_str(&format!("{name} {v}\n"));
        }
    }
    crate::sync::crew_metrics(&state, &mut out);
    out.push_str("# HELP gateway_responses_total Responses by route and status class.\n");
    out.push_str("# TYPE gateway_responses_total counter\n");
    for (i, route) in ROUTES.iter().enumerate() {
        for (j, class) in ["2xx", "4xx", "5xx"].iter().enumerate() {
            let v = m.responses[i][j].load(Ordering::Relaxed);
            out.push_str(&format!(
                "gateway_responses_total{{route=\"{route}\",class=\"{class}\"}} {v}\n"
            ));
        }
    }
    out.push_str("# HELP gateway_request_duration_seconds Request latency by route.\n");
    out.push_str("# TYPE gateway_request_duration_seconds histogram\n");
    for (i, route) in ROUTES.iter().enumerate() {
        let snap = m.latency[i].snapshot();
        let mut cumulative = 0u64;
        for (k, count) in snap.counts.iter().enumerate() {
            cumulative += count;
            let le = snap
                .bounds_us
                .get(k)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{}", *b as f64 / 1e6));
            out.push_str(&format!(
                "gateway_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "gateway_request_duration_seconds_sum{{route=\"{route}\"}} {}\n",
            snap.sum_us as f64 / 1e6
        ));
        out.push_str(&format!(
            "gateway_request_duration_seconds_count{{route=\"{route}\"}} {}\n",
            snap.count
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// How long `serve`'s housekeeping waits between rounds.
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);
/// Longest one round of the database and queue housekeeping (`sync::housekeeping`) may take.
pub const SYNC_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the served gateway.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Requests in flight at once; beyond it requests are shed at once with 503.
    pub max_in_flight: usize,
    /// A request taking longer is answered 503.
    pub request_timeout_ms: u64,
    /// Largest request body (413 beyond).
    pub body_limit_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_in_flight: 4096,
            request_timeout_ms: 5_000,
            body_limit_bytes: 16 << 10,
        }
    }
}

/// `app(state)` with these limits.
pub fn app_with_limits(state: Shared, limits: ServeLimits) -> Front {
    Front {
        inner: routes(state.clone()),
        state,
        limits,
        in_flight: Arc::new(AtomicUsize::new(0)),
        peer: None,
    }
}

/// The front of the gateway, one `tower::Service` around the routes: a global cap on
/// requests in flight (beyond it: 503 `overloaded` + `Retry-After` at once), a request
/// timeout (503 `timeout`), the body limit (413, enforced by [`JsonBody`]), the client's
/// address (`ConnectInfo`), and the latency and status metrics by route. One service
/// instead of a stack of layers: one boxed future and no per-layer clones per request.
#[derive(Clone)]
pub struct Front {
    inner: Router,
    state: Shared,
    limits: ServeLimits,
    in_flight: Arc<AtomicUsize>,
    peer: Option<SocketAddr>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("limits", &self.limits)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// One request in flight, counted until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl tower::Service<axum::extract::Request> for Front {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::extract::Request) -> Self::Future {
        let started = std::time::Instant::now();
        let route = route_index(req.uri().path());
        let state = self.state.clone();
        // Load shedding: count first, refuse at once beyond the cap.
        let admitted = self.in_flight.fetch_add(1, Ordering::AcqRel) < self.limits.max_in_flight;
        let guard = InFlight(self.in_flight.clone());
        if !admitted {
            drop(guard);
            let resp = ApiError::unavailable("overloaded", "too many requests in flight", 1000)
                .into_response();
            state.metrics.observe(route, started, resp.status());
            return Box::pin(std::future::ready(Ok(resp)));
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        req.extensions_mut()
            .insert(BodyLimit(self.limits.body_limit_bytes));
        let timeout = Duration::from_millis(self.limits.request_timeout_ms.max(1));
        let inner = self.inner.clone();
        Box::pin(async move {
            let _guard = guard;
            let resp =
                match tokio::time::timeout(timeout, tower::ServiceExt::oneshot(inner, req)).await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(_) => ApiError::unavailable("timeout", "the request took too long", 1000)
                        .into_response(),
                };
            state.metrics.observe(route, started, resp.status());
            Ok(resp)
        })
    }
}

/// Makes one [`Front`] per accepted connection, knowing its peer address.
#[derive(Debug, Clone)]
pub struct MakeFront(pub Front);

impl<'a> tower::Service<axum::serve::IncomingStream<'a, tokio::net::TcpListener>> for MakeFront {
    type Response = Front;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Front, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(
        &mut self,
        stream: axum::serve::IncomingStream<'a, tokio::net::TcpListener>,
    ) -> Self::Future {
        let mut front = self.0.clone();
        front.peer = Some(*stream.remote_addr());
        std::future::ready(Ok(front))
    }
}

/// Serves the gateway on `listener` until `shutdown` completes; runs the throttle's
/// housekeeping every [`HOUSEKEEPING_PERIOD`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let keeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
            loop {
                tick.tick().await;
                state.throttle.housekeeping();
                state.ledger.housekeeping(now_ms()).await;
            }
        })
    };
    // The database and queue work of housekeeping in a loop of its own, each round cut off
    // after SYNC_ROUND_TIMEOUT, so a slow database never delays the throttle's purges.
    let syncer = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
            loop {
                tick.tick().await;
                if tokio::time::timeout(SYNC_ROUND_TIMEOUT, crate::sync::housekeeping(&state))
                    .await
                    .is_err()
                {
                    tracing::warn!("a housekeeping round with the database timed out");
                }
            }
        })
    };
    // The dashboard's figures, sampled every second.
    let sampler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::live::SAMPLE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = tokio::time::timeout(SYNC_ROUND_TIMEOUT, crate::live::sample(&state)).await;
            }
        })
    };
    let r = axum::serve(listener, MakeFront(app_with_limits(state, limits)))
        .with_graceful_shutdown(shutdown)
        .await;
    keeper.abort();
    syncer.abort();
    sampler.abort();
    r
}
