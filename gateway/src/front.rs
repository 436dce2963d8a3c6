//! The front of the gateway: [`Front`], the one `tower::Service` around the routes (cap on
//! requests in flight, timeout, body limit, client address, metrics by route), and
//! [`serve`], which serves it with the housekeeping tasks through [`serve_connections`]:
//! hyper's HTTP/1 with a header-read timeout, an idle timeout and a connection cap
//! (`axum::serve` runs hyper without a timer, so a client sending half a request line
//! held its connection forever).
//!
//! `Front` is hand-written on purpose: the tower stack it replaced (`HandleError` +
//! `LoadShed` + `ConcurrencyLimit` + `Timeout` + a `from_fn` metrics middleware +
//! `DefaultBodyLimit`) cloned and boxed a service per layer per request; one service with
//! an atomic in-flight counter and one boxed future took the rejection paths from about
//! 0.56 to about 0.70 of a bare axum "hello" route (gateway/BENCHMARKS.md, "Layer stack →
//! one service").
//!
//! The purchase fast path: after the checks above (load shedding, the body limit, the
//! route cookie), a `POST /api/sales/{id}/purchase` refused on public facts (unknown sale,
//! ended, paused, not started, sold out) is answered here, by the handler's own check
//! ([`crate::purchase::refuse_on_public_facts`]; for `POST /api/sales/{id}/token` the same
//! but not started, [`crate::purchase::refuse_token_on_public_facts`]) and with the same
//! counters, HSTS and
//! metrics, but without the router, the extractors, the request's extensions, a boxed
//! future or the timeout: in a flash crowd most requests get one of these answers (sold
//! out, most of all, sent from a static body), and the router's share of them was about
//! as much again as the rest of the work (gateway/BENCHMARKS.md, "Issue 19"). Anything
//! else, an id written otherwise than in plain digits included, goes to the router.
//!
//! Compression: pages and static assets (HTML, CSS, JavaScript, SVG of at least
//! [`COMPRESS_MIN_BYTES`]) are sent gzip- or brotli-encoded when the request's
//! `Accept-Encoding` allows it, by tower-http's `Compression` around the routes
//! ([`compressible`]). The API, `/metrics` and the health checks never pass through it:
//! the purchase path's answers are JSON of a hundred bytes or so, which compression would
//! hardly shrink but which would pay an encoder per request in the flash crowd, and JSON
//! that carries secrets (session cookies aside, purchase tokens and tickets) next to what
//! a client sent is what a BREACH-style length attack reads; so the choice is made by path
//! before the request reaches the routes (the API pays one prefix check), and by content
//! type and size on the way out (an error page's JSON stays plain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::Layer;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLayer};

use crate::config::{HSTS_VALUE, ServeLimits};
use crate::error::ApiError;
use crate::extract::{BodyLimit, ClientIp};
use crate::metrics::route_index;
use crate::proxy::{client_addr, misdirected, route_exempt, route_matches};
use crate::state::{AppState, Shared};

/// How long `serve`'s housekeeping waits between rounds.
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);
/// Longest one round of the database and queue housekeeping (`sync::housekeeping`) may take.
pub const SYNC_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Smallest response body compressed, bytes: below it the encoding's framing eats the gain.
pub const COMPRESS_MIN_BYTES: u64 = 512;

/// Content types compressed (the start of the `Content-Type` value): pages and static
/// assets. JSON and the metrics' text are not.
pub const COMPRESSED_TYPES: [&str; 5] = [
    "text/html",
    "text/css",
    "text/javascript",
    "application/javascript",
    "image/svg+xml",
];

/// Whether a request for `path` goes through the compressing routes: every page and
/// asset; never the API (`/api/…`, `/admin/api/…`), `/metrics`, `/healthz`, `/readyz`.
pub fn compressible(path: &str) -> bool {
    !(path.starts_with("/api/")
        || path.starts_with("/admin/api/")
        || path == "/metrics"
        || path == "/healthz"
        || path == "/readyz")
}

/// The response side of [`compressible`]: a page or asset type of at least
/// [`COMPRESS_MIN_BYTES`] (or of unknown length).
#[derive(Debug, Clone, Copy)]
struct PagesOnly(SizeAbove);

impl Predicate for PagesOnly {
    fn should_compress<B>(&self, response: &axum::http::Response<B>) -> bool
    where
        B: HttpBody,
    {
        let page = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| COMPRESSED_TYPES.iter().any(|t| ct.starts_with(t)));
        page && self.0.should_compress(response)
    }
}

/// The routes behind gzip and brotli compression (what the client accepts, brotli first
/// at equal weight).
fn compressed(routes: Router) -> Compression<Router, PagesOnly> {
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .compress_when(PagesOnly(SizeAbove::new(COMPRESS_MIN_BYTES)))
        .layer(routes)
}

/// The whole HTTP surface with the default [`ServeLimits`]: a `tower::Service` testable
/// with `oneshot`, and what `serve` serves.
pub fn app(state: Shared) -> Front {
    app_with_limits(state, ServeLimits::default())
}

/// `app(state)` with these limits.
pub fn app_with_limits(state: Shared, limits: ServeLimits) -> Front {
    let inner = crate::routes::routes(state.clone());
    Front {
        pages: compressed(inner.clone()),
        inner,
        state,
        limits,
        in_flight: Arc::new(AtomicUsize::new(0)),
        peer: None,
        fast_path: true,
    }
}

/// The front of the gateway, one `tower::Service` around the routes: a global cap on
/// requests in flight (beyond it: 503 `overloaded` + `Retry-After` at once), a request
/// timeout (503 `timeout`), the body limit on every route (413: a known length over it at
/// once, a chunked body cut there; [`crate::extract::JsonBody`] and
/// [`crate::extract::form_or_default`] report it), HSTS when configured, the client's
/// address (`ConnectInfo`, and [`ClientIp`] from `X-Forwarded-For` when the peer is a
/// trusted proxy: [`crate::proxy`]), the route cookie's 421 `misdirected` when
/// configured, and the latency and status metrics by route. One service
/// instead of a stack of layers: one boxed future and no per-layer clones per request.
#[derive(Clone)]
pub struct Front {
    inner: Router,
    /// The same routes behind compression, for [`compressible`] paths.
    pages: Compression<Router, PagesOnly>,
    state: Shared,
    limits: ServeLimits,
    in_flight: Arc<AtomicUsize>,
    peer: Option<SocketAddr>,
    /// Whether the purchase's refusals on public facts are answered in [`Front::handle`]
    /// (always, but in the tests that compare its answers with the router's).
    fast_path: bool,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("limits", &self.limits)
            .field("peer", &self.peer)
            .field("fast_path", &self.fast_path)
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
    type Future = FrontFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        self.handle(req)
    }
}

/// The future of one request through [`Front`]: an answer made in [`Front::handle`]
/// itself (load shedding, the body limit, the route cookie, the purchase fast path), ready
/// at once and not boxed, or the routes' answer, boxed.
pub struct FrontFuture(Answer);

enum Answer {
    Ready(std::future::Ready<Result<Response, std::convert::Infallible>>),
    Routed(
        std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send,
            >,
        >,
    ),
}

impl FrontFuture {
    fn ready(resp: Response) -> FrontFuture {
        FrontFuture(Answer::Ready(std::future::ready(Ok(resp))))
    }

    /// Whether the answer was made in [`Front::handle`] itself, without the routes.
    pub fn answered_without_routes(&self) -> bool {
        matches!(self.0, Answer::Ready(_))
    }
}

impl std::fmt::Debug for FrontFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0 {
            Answer::Ready(_) => "ready",
            Answer::Routed(_) => "routed",
        };
        f.debug_tuple("FrontFuture").field(&what).finish()
    }
}

impl std::future::Future for FrontFuture {
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Answer::Ready(r) => std::pin::Pin::new(r).poll(cx),
            Answer::Routed(f) => f.as_mut().poll(cx),
        }
    }
}

/// The sale id of a `POST /api/sales/{id}/purchase` path whose id is plain decimal digits
/// within the orders database's range (what [`crate::extract::SaleIdPath`] accepts); `None`
/// for any other path, or an id written otherwise (a sign, percent-encoding, too long),
/// which the router then answers as it always has.
pub fn purchase_sale_id(path: &str) -> Option<u64> {
    sale_id_before(path, "/purchase")
}

/// [`purchase_sale_id`] for `POST /api/sales/{id}/token`.
pub fn token_sale_id(path: &str) -> Option<u64> {
    sale_id_before(path, "/token")
}

fn sale_id_before(path: &str, suffix: &str) -> Option<u64> {
    let digits = path.strip_prefix("/api/sales/")?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    i64::try_from(id).is_ok().then_some(id)
}

/// The refusal on public facts of a `POST` to the purchase or the token route, asked as
/// their handlers ask it first; `None` for any other request, or one no fact refuses.
fn public_refusal(
    state: &AppState,
    req: &axum::extract::Request,
) -> Option<crate::purchase::Refusal> {
    if req.method() != axum::http::Method::POST {
        return None;
    }
    let path = req.uri().path();
    let refused = if let Some(id) = purchase_sale_id(path) {
        crate::purchase::refuse_on_public_facts(state, id, state.now_ms())
    } else if let Some(id) = token_sale_id(path) {
        crate::purchase::refuse_token_on_public_facts(state, id, state.now_ms())
    } else {
        return None;
    };
    refused.err()
}

impl Front {
    /// One request (`tower::Service::call` without the `&mut`: a connection calls it on
    /// its one `Front` without cloning it per request).
    pub fn handle(&self, mut req: axum::extract::Request) -> FrontFuture {
        let started = std::time::Instant::now();
        let route = route_index(req.uri().path());
        let state = self.state.clone();
        // Load shedding: count first, refuse at once beyond the cap.
        let admitted = self.in_flight.fetch_add(1, Ordering::AcqRel) < self.limits.max_in_flight;
        let guard = InFlight(self.in_flight.clone());
        if !admitted {
            drop(guard);
            let resp = busy(
                crate::pages::wants_html(req.uri().path(), req.headers()),
                ApiError::unavailable("overloaded", "too many requests in flight", 1000),
            );
            state.metrics.observe(route, started, resp.status());
            return FrontFuture::ready(resp);
        }
        let limit = self.limits.body_limit_bytes;
        // The body limit holds on every route, whatever extractor reads the body: a body of
        // known length over it (hyper knows it from `Content-Length`) is refused before a
        // byte of it is read; a body of unknown length (chunked) is cut at the limit by
        // `Limited`, which every extractor's read reports as 413. A body of known length
        // within the limit needs no wrapper: hyper never yields more than it declared.
        let size = HttpBody::size_hint(req.body());
        match size.exact() {
            Some(n) if n > limit as u64 => {
                drop(guard);
                let resp = too_large(limit);
                state.metrics.observe(route, started, resp.status());
                return FrontFuture::ready(resp);
            }
            Some(_) => {}
            None => {
                req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)));
            }
        }
        // The peer: this connection's, or (under `oneshot`) one the caller set.
        let peer = self.peer.or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        });
        // The client's address behind a trusted proxy (`X-Forwarded-For`); with nobody
        // trusted, `ClientIp` is the peer and nothing is read here. Put into the request
        // (with the peer) only once it goes to the routes: the answers made here need
        // neither.
        let mut client_ip = None;
        if let Some(peer) = peer
            && !state.config.trusted_proxies.is_empty()
        {
            let addr = client_addr(&state.config.trusted_proxies, peer.ip(), req.headers());
            if addr.unusable {
                state
                    .metrics
                    .forwarded_unusable
                    .fetch_add(1, Ordering::Relaxed);
            }
            client_ip = Some(ClientIp(addr.ip));
        }
        let hsts = state.config.hsts;
        // The route cookie: a valid session must come with its user's route, or nginx may
        // have sent it to any gateway (and its per-user limits would multiply).
        if state.config.route_cookie
            && !route_exempt(req.uri().path())
            && let Ok(user) = crate::extract::session_user(&state, req.headers())
            && !route_matches(
                req.headers(),
                &user,
                peer.is_some_and(|p| state.config.trusted_proxies.contains(p.ip())),
            )
        {
            drop(guard);
            state.metrics.misdirected.fetch_add(1, Ordering::Relaxed);
            let mut resp = misdirected(
                &user,
                state.config.session_ttl_ms / 1000,
                state.config.secure_cookies,
            );
            if hsts {
                resp.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS_VALUE),
                );
            }
            state.metrics.observe(route, started, resp.status());
            return FrontFuture::ready(resp);
        }
        // The purchase's and the token's refusals on public facts (unknown sale, ended,
        // paused, not started, sold out: most of a flash crowd's answers), answered here
        // from memory by the handlers' own checks, without the router, the extractors, the
        // request's extensions, a boxed future or the timeout; the same answer and counters
        // as the handlers' (tests/it/fast_path.rs holds the two to the same bytes).
        if self.fast_path
            && let Some(refusal) = public_refusal(&state, &req)
        {
            drop(guard);
            // With the `Content-Length` the router would add (`Refusal::into_response`).
            let mut resp = refusal.into_response();
            if hsts {
                resp.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS_VALUE),
                );
            }
            state.metrics.observe(route, started, resp.status());
            return FrontFuture::ready(resp);
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        if let Some(ip) = client_ip {
            req.extensions_mut().insert(ip);
        }
        req.extensions_mut().insert(BodyLimit(limit));
        let timeout = Duration::from_millis(self.limits.request_timeout_ms.max(1));
        let pages = compressible(req.uri().path()).then(|| self.pages.clone());
        // A browser asking for a page gets the timeout as a page (the API paths never do).
        let page = crate::pages::wants_html(req.uri().path(), req.headers());
        let inner = self.inner.clone();
        FrontFuture(Answer::Routed(Box::pin(async move {
            let _guard = guard;
            let answer = async move {
                match pages {
                    Some(pages) => tower::ServiceExt::oneshot(pages, req)
                        .await
                        .map(|r| r.map(axum::body::Body::new)),
                    None => tower::ServiceExt::oneshot(inner, req).await,
                }
            };
            let mut resp = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => busy(
                    page,
                    ApiError::unavailable("timeout", "the request took too long", 1000),
                ),
            };
            if hsts {
                resp.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS_VALUE),
                );
            }
            state.metrics.observe(route, started, resp.status());
            Ok(resp)
        })))
    }
}

/// The page a browser gets when the gateway sheds its request or it times out: static
/// HTML (no template: this answer must stay cheap under load), a 503 with `Retry-After`.
pub const BUSY_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Very busy · Flash sale</title></head><body><h1>Very busy right now</h1><p id=\"message\">So many people are here that this page could not be served. Reload it in a moment; nothing you already bought is lost.</p><p><a href=\"/\">All sales</a> · <a href=\"/orders\">My orders</a></p></body></html>";

/// 503 with `Retry-After: 1`: [`BUSY_PAGE`] for a browser asking for a page (`page`), the
/// JSON `error` (a 503 with its own `Retry-After`) otherwise.
fn busy(page: bool, error: ApiError) -> Response {
    if page {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::RETRY_AFTER, "1"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            BUSY_PAGE,
        )
            .into_response();
    }
    error.into_response()
}

/// 413 `too_large`: the body is over `limit` bytes.
pub fn too_large(limit: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body over {limit} bytes"),
    )
    .into_response()
}

impl Front {
    /// This service with the purchase fast path off: every purchase goes to the router and
    /// its handler, which gives the same answers (slower). For tests that hold the fast
    /// path's answers to the handler's, and for measuring the difference.
    pub fn without_purchase_fast_path(mut self) -> Front {
        self.fast_path = false;
        self
    }

    /// This service for one connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Front {
        let mut front = self.clone();
        front.peer = Some(peer);
        front
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
                state.ledger.housekeeping(state.now_ms()).await;
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
            let mut tick = tokio::time::interval(crate::dashboard::SAMPLE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = tokio::time::timeout(SYNC_ROUND_TIMEOUT, crate::live::sample(&state)).await;
            }
        })
    };
    let r = serve_connections(listener, app_with_limits(state, limits), shutdown).await;
    keeper.abort();
    syncer.abort();
    sampler.abort();
    r
}

/// How long past the request timeout a shutdown waits for connections to close by
/// themselves before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long the accept loop waits after an accept error other than a failed connection
/// (out of file descriptors: waiting lets connections close).
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The connections being served, each with its own shutdown signal: the accept loop
/// registers a connection when it starts and the connection removes itself when it ends;
/// at shutdown every registered connection is told to stop, and later to drop.
///
/// One pair of `oneshot` channels per connection rather than one `watch` channel for all:
/// a connection task polls its shutdown signals every time it wakes (several times per
/// request), and polling a shared `watch` receiver takes the channel's one lock, which
/// every connection on both cores contended for (issue 19). A `oneshot` is polled with
/// one atomic load.
#[derive(Default)]
struct Connections {
    next_id: u64,
    live: std::collections::HashMap<u64, Signals>,
}

/// The shutdown senders of one connection.
struct Signals {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    drop: Option<tokio::sync::oneshot::Sender<()>>,
}

type Registry = Arc<std::sync::Mutex<Connections>>;

fn lock_registry(r: &Registry) -> std::sync::MutexGuard<'_, Connections> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A registered connection: removed from the registry when dropped. Holds the registry
/// weakly, so that once the accept loop is gone (its future dropped) the senders go with
/// it and every connection sees its signals fire.
struct Registered {
    id: u64,
    registry: std::sync::Weak<std::sync::Mutex<Connections>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            lock_registry(&r).live.remove(&self.id);
        }
    }
}

/// Registers one connection: its registration and its (stop, drop) receivers.
fn register(
    registry: &Registry,
) -> (
    Registered,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (stop, stopping) = tokio::sync::oneshot::channel();
    let (drop, dropping) = tokio::sync::oneshot::channel();
    let mut c = lock_registry(registry);
    let id = c.next_id;
    c.next_id += 1;
    c.live.insert(
        id,
        Signals {
            stop: Some(stop),
            drop: Some(drop),
        },
    );
    (
        Registered {
            id,
            registry: Arc::downgrade(registry),
        },
        stopping,
        dropping,
    )
}

/// Sends every registered connection its stop (`stop`) or drop (`!stop`) signal.
fn signal_all(registry: &Registry, stop: bool) {
    let mut c = lock_registry(registry);
    for s in c.live.values_mut() {
        let sender = if stop { s.stop.take() } else { s.drop.take() };
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

/// A listening socket on `addr` with `backlog` completed connections held for `accept`
/// (see [`ServeLimits::listen_backlog`]; `TcpListener::bind` would hold 128), with
/// `SO_REUSEADDR` as `bind` sets it. Call inside a Tokio runtime.
pub fn listen(
    addr: std::net::SocketAddr,
    backlog: u32,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The accept loop: each connection served by hyper's HTTP/1 with the header-read timeout
/// ([`ServeLimits::header_read_timeout_ms`], which also ends an idle keep-alive wait), the
/// idle timeout ([`ServeLimits::idle_timeout_ms`]), and at most
/// [`ServeLimits::max_connections`] at once (one accepted beyond it is closed at once and
/// counted). At `shutdown` it stops accepting, lets each connection finish its request in
/// progress and close, and returns when every connection has — or, at the latest,
/// [`SHUTDOWN_GRACE`] after the request timeout, when the connections still open (a client
/// that stopped reading its answer) are dropped, so a stopping system always goes on to
/// drain its purchases and stop its workers.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    front: Front,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = front.limits;
    limits
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let permits = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(permits as usize));
    let registry: Registry = Arc::default();
    let metrics = front.state.metrics.clone();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Beyond the cap: closed at once, before a byte is read.
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let (registered, stopping, dropping) = register(&registry);
        tokio::spawn(serve_connection(
            stream,
            front.for_peer(peer),
            Shutdown {
                stopping,
                dropping,
                _registered: registered,
            },
            slot,
        ));
    }
    drop(listener);
    // Every connection: finish the request in progress, then close.
    signal_all(&registry, true);
    let grace = Duration::from_millis(limits.request_timeout_ms) + SHUTDOWN_GRACE;
    if tokio::time::timeout(grace, slots.acquire_many(permits))
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown: dropping {} connections still open after {} ms",
            metrics.connections_open.load(Ordering::Relaxed),
            grace.as_millis()
        );
        signal_all(&registry, false);
        let _ = slots.acquire_many(permits).await;
    }
    Ok(())
}

/// Errors of `accept` that concern one connection only (as hyper-util and axum judge them).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One connection's shutdown signals: stop (finish the request in progress, then close)
/// and drop (at once); either fires too when the accept loop is gone.
struct Shutdown {
    stopping: tokio::sync::oneshot::Receiver<()>,
    dropping: tokio::sync::oneshot::Receiver<()>,
    _registered: Registered,
}

/// The period of a connection's housekeeping tick for these limits: at most half the
/// header-read timeout (so that the timeout is enforced between once and one and a half
/// times its length) and at most the idle timeout.
pub fn tick_period(limits: &ServeLimits) -> Duration {
    // Rounded up, so that an odd timeout still takes two whole periods (1–1.5× it).
    let half_head = limits.header_read_timeout_ms.div_ceil(2).max(1);
    Duration::from_millis(half_head.min(limits.idle_timeout_ms).max(1))
}

/// What a connection's housekeeping tick decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickVerdict {
    /// Nothing to do.
    Keep,
    /// Ask the connection to close (an idle keep-alive connection closes at once).
    Close,
    /// Drop the connection now.
    Drop,
}

/// A connection's counters at one tick ([`ConnTimeouts::tick`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Reads that completed.
    pub reads: usize,
    /// Writes that completed.
    pub writes: usize,
    /// Requests handed to the service.
    pub started: usize,
    /// Requests in the service now.
    pub handling: usize,
    /// The last write found the socket full (the client is not reading an answer).
    pub write_blocked: bool,
}

/// The header-read and idle timeouts of one connection, judged at its housekeeping ticks
/// ([`tick_period`]) from counters the connection keeps ([`ConnSnapshot`]) instead of a
/// timer per request: hyper's own header-read timeout allocated, armed and disarmed a
/// timer entry for every request (issue 19).
///
/// - Header read: over enough whole tick periods to cover
///   [`ServeLimits::header_read_timeout_ms`], no request started, none was being handled
///   and no answer was being written (no write completed): the connection is waiting for a
///   request head (a client sending half a request line, or trickling one, or an idle
///   keep-alive connection) and is dropped, between the timeout and one and a half times
///   it. Reads do not count as progress here: a head trickled a byte at a time is still
///   no head.
/// - Idle: no byte read or written and no request handled over
///   [`ServeLimits::idle_timeout_ms`]: asked to close; still none over another idle
///   timeout: dropped.
#[derive(Debug, Clone)]
pub struct ConnTimeouts {
    head_ticks: u64,
    idle_ticks: u64,
    seen: ConnSnapshot,
    /// Consecutive tick periods waiting for a request head.
    waiting: u64,
    /// Consecutive tick periods without a byte moved or a request handled.
    idle: u64,
}

impl ConnTimeouts {
    /// The timeouts of `limits`, for a connection that just opened (waiting for its
    /// first request head).
    pub fn new(limits: &ServeLimits) -> ConnTimeouts {
        let period = u64::try_from(tick_period(limits).as_millis()).unwrap_or(u64::MAX);
        ConnTimeouts {
            head_ticks: limits.header_read_timeout_ms.div_ceil(period).max(1),
            idle_ticks: limits.idle_timeout_ms.div_ceil(period).max(1),
            seen: ConnSnapshot::default(),
            waiting: 0,
            idle: 0,
        }
    }

    /// One tick, with the connection's counters `now`.
    pub fn tick(&mut self, now: ConnSnapshot) -> TickVerdict {
        let before = self.seen;
        // A period counts as waiting for a head only if nothing was handled at either end
        // of it (a request handled at the last tick may have ended just before this one).
        // An answer the client does not read (a write stalled on a full socket) is not a
        // head wait either; the idle rule still drops such a connection.
        let waited = now.started == before.started
            && now.writes == before.writes
            && now.handling == 0
            && before.handling == 0
            && !now.write_blocked;
        self.waiting = if waited { self.waiting + 1 } else { 0 };
        let idle = now.reads == before.reads && now.writes == before.writes && now.handling == 0;
        self.idle = if idle { self.idle + 1 } else { 0 };
        self.seen = now;
        if self.waiting >= self.head_ticks || self.idle >= 2 * self.idle_ticks {
            TickVerdict::Drop
        } else if self.idle >= self.idle_ticks {
            TickVerdict::Close
        } else {
            TickVerdict::Keep
        }
    }
}

/// One connection, until it closes; holds its `slot` of the connection cap until then.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    front: Front,
    shutdown: Shutdown,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let limits = front.limits;
    let metrics = front.state.metrics.clone();
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::new(ConnCounters::default());
    let io = hyper_util::rt::TokioIo::new(Counted {
        inner: stream,
        counters: counters.clone(),
    });
    let front = Arc::new(front);
    let service = {
        let counters = counters.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            counters.started.fetch_add(1, Ordering::Relaxed);
            // Requests of this connection being handled: the connection is not idle
            // meanwhile (a handler moves no bytes until it answers; the request timeout
            // bounds it).
            let counted = Handling::enter(&counters);
            let answer = front.handle(req.map(axum::body::Body::new));
            async move {
                let _counted = counted;
                answer.await
            }
        })
    };
    // No timer for hyper: the header-read timeout is judged at the connection's ticks
    // (`ConnTimeouts`), not by a timer armed per request.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let period = tick_period(&limits);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timeouts = ConnTimeouts::new(&limits);
    let Shutdown {
        mut stopping,
        mut dropping,
        _registered,
    } = shutdown;
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection: {e}");
                }
                break;
            }
            // The shutdown (or the server gone): finish the request in progress, then close.
            _ = &mut stopping, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // The shutdown's grace is over: dropped, whatever it was doing.
            _ = &mut dropping => break,
            _ = tick.tick() => {
                match timeouts.tick(counters.snapshot()) {
                    TickVerdict::Keep => {}
                    TickVerdict::Close => {
                        if !closing {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                    TickVerdict::Drop => {
                        tracing::debug!("dropping a connection past its header-read or idle timeout");
                        break;
                    }
                }
            }
        }
    }
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// The counters of one connection that its ticks judge ([`ConnTimeouts`]): written by the
/// connection's own task only, read at its ticks (relaxed, uncontended).
#[derive(Debug, Default)]
struct ConnCounters {
    /// Reads that completed.
    reads: AtomicUsize,
    /// Writes that completed.
    writes: AtomicUsize,
    /// Requests handed to the service.
    started: AtomicUsize,
    /// Requests in the service now.
    handling: AtomicUsize,
    /// The last write returned `Pending` (the socket is full).
    write_blocked: std::sync::atomic::AtomicBool,
}

impl ConnCounters {
    fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            handling: self.handling.load(Ordering::Relaxed),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
        }
    }
}

/// One request of a connection in the service, counted until dropped.
struct Handling(Arc<ConnCounters>);

impl Handling {
    fn enter(counters: &Arc<ConnCounters>) -> Handling {
        counters.handling.fetch_add(1, Ordering::Relaxed);
        Handling(counters.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that counts its reads and writes, so that the idle timeout can tell a quiet
/// connection from a busy one without a clock read per operation.
struct Counted {
    inner: tokio::net::TcpStream,
    counters: Arc<ConnCounters>,
}

impl Counted {
    fn read(&self) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether a write attempt completed (`ready`) or found the socket full.
    fn write_polled(&self, ready: bool) {
        if ready {
            self.wrote();
        }
        // Written only when it changes: the flag is read at ticks, set on every write.
        if self.counters.write_blocked.load(Ordering::Relaxed) == ready {
            self.counters.write_blocked.store(!ready, Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_ready() {
            this.read();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_polled(r.is_ready());
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_polled(r.is_ready());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flash crowd's connections all arrive at once: the listener holds far more
    /// completed handshakes than std's and tokio's `bind` (128) while nothing accepts them.
    /// With 128 the connects past it would never complete here (nobody accepts), and the
    /// test would fail at its bound.
    #[tokio::test]
    async fn the_listener_holds_a_crowd_of_connections_nobody_accepted_yet() {
        let backlog = ServeLimits::default().listen_backlog;
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let crowd = 300.min(backlog).min(somaxconn) as usize;
        assert!(
            crowd > 128,
            "net.core.somaxconn is {somaxconn}: the kernel cuts every backlog to it"
        );
        let listener = listen("127.0.0.1:0".parse().expect("addr"), backlog).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..crowd {
            connects.spawn(tokio::net::TcpStream::connect(addr));
        }
        let all = tokio::time::timeout(Duration::from_secs(30), connects.join_all())
            .await
            .expect("every connect completes without an accept");
        assert_eq!(all.iter().filter(|c| c.is_ok()).count(), crowd);
        drop(listener);
    }

    fn limits(header_read_timeout_ms: u64, idle_timeout_ms: u64) -> ServeLimits {
        ServeLimits {
            header_read_timeout_ms,
            idle_timeout_ms,
            ..ServeLimits::default()
        }
    }

    fn snap(reads: usize, writes: usize, started: usize, handling: usize) -> ConnSnapshot {
        ConnSnapshot {
            reads,
            writes,
            started,
            handling,
            write_blocked: false,
        }
    }

    /// The fast path reads plain decimal ids in the orders database's range of the
    /// purchase route only; everything else is left to the router.
    #[test]
    fn the_fast_path_reads_plain_purchase_ids_only() {
        assert_eq!(purchase_sale_id("/api/sales/2/purchase"), Some(2));
        assert_eq!(purchase_sale_id("/api/sales/007/purchase"), Some(7));
        assert_eq!(
            purchase_sale_id("/api/sales/9223372036854775807/purchase"),
            Some(9_223_372_036_854_775_807)
        );
        for path in [
            "/api/sales/9223372036854775808/purchase",
            "/api/sales/184467440737095516160/purchase",
            "/api/sales//purchase",
            "/api/sales/+2/purchase",
            "/api/sales/-2/purchase",
            "/api/sales/%32/purchase",
            "/api/sales/2a/purchase",
            "/api/sales/2/purchase/",
            "/api/sales/2/3/purchase",
            "/api/sales/2/token",
            "/api/sales/2",
            "/api/sales/purchase",
            "/api/sales/\u{664}/purchase",
            "/admin/api/sales/2/purchase",
        ] {
            assert_eq!(purchase_sale_id(path), None, "{path}");
        }
    }

    #[test]
    fn the_tick_is_half_the_header_timeout_at_most_and_the_idle_timeout_at_most() {
        assert_eq!(
            tick_period(&limits(10_000, 60_000)),
            Duration::from_millis(5_000)
        );
        assert_eq!(
            tick_period(&limits(600_000, 200)),
            Duration::from_millis(200)
        );
        assert_eq!(tick_period(&limits(1, 1)), Duration::from_millis(1));
    }

    /// A fresh connection that sends no whole head (here: trickled bytes, reads moving)
    /// is dropped after the header-read timeout's worth of ticks, not before.
    #[test]
    fn a_head_trickled_in_is_dropped_after_the_header_read_timeout() {
        let mut t = ConnTimeouts::new(&limits(10_000, 60_000));
        assert_eq!(t.tick(snap(1, 0, 0, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(2, 0, 0, 0)), TickVerdict::Drop);
    }

    /// Requests served one after another keep the connection; once it goes quiet after an
    /// answer (an idle keep-alive connection), it is dropped two whole periods later.
    #[test]
    fn a_served_connection_stays_and_a_quiet_one_goes() {
        let mut t = ConnTimeouts::new(&limits(10_000, 60_000));
        assert_eq!(t.tick(snap(1, 1, 1, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(2, 2, 2, 0)), TickVerdict::Keep);
        // A request in the service at a tick: never a head wait, however long.
        for _ in 0..10 {
            assert_eq!(t.tick(snap(3, 2, 3, 1)), TickVerdict::Keep);
        }
        // Answered just before this tick (a write), then nothing.
        assert_eq!(t.tick(snap(3, 3, 3, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(3, 3, 3, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(3, 3, 3, 0)), TickVerdict::Drop);
    }

    /// A period that ended with a request in the service does not count as waiting for a
    /// head, even if nothing else changed at the next tick.
    #[test]
    fn a_request_handled_at_the_last_tick_restarts_the_head_wait() {
        let mut t = ConnTimeouts::new(&limits(10_000, 600_000));
        assert_eq!(t.tick(snap(1, 0, 1, 1)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(1, 0, 1, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(1, 0, 1, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(1, 0, 1, 0)), TickVerdict::Drop);
    }

    /// An answer still being written (writes moving, a slow reader downloading a large
    /// page) is not a head wait.
    #[test]
    fn an_answer_being_written_is_not_a_head_wait() {
        let mut t = ConnTimeouts::new(&limits(10_000, 600_000));
        for w in 1..20 {
            assert_eq!(t.tick(snap(1, w, 1, 0)), TickVerdict::Keep);
        }
    }

    /// An answer the client stopped reading (the last write found the socket full, no
    /// write completes) is not a head wait: it is left to the idle rule, which drops it.
    #[test]
    fn a_stalled_answer_is_left_to_the_idle_rule() {
        let mut t = ConnTimeouts::new(&limits(10_000, 60_000));
        let stalled = ConnSnapshot {
            write_blocked: true,
            ..snap(1, 1, 1, 0)
        };
        // 60 s idle at a 5 s tick: 12 periods to the close, 24 to the drop.
        for _ in 0..11 {
            assert_eq!(t.tick(stalled), TickVerdict::Keep);
        }
        assert_eq!(t.tick(stalled), TickVerdict::Keep);
        assert_eq!(t.tick(stalled), TickVerdict::Close);
    }

    /// An odd header-read timeout still drops a head wait within one and a half times it.
    #[test]
    fn an_odd_header_read_timeout_keeps_its_bound() {
        let l = limits(10_001, 600_000);
        assert_eq!(tick_period(&l), Duration::from_millis(5_001));
        let mut t = ConnTimeouts::new(&l);
        assert_eq!(t.tick(snap(1, 0, 0, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(2, 0, 0, 0)), TickVerdict::Drop);
    }

    /// The idle rule alone (header-read timeout far away): no byte moved for the idle
    /// timeout asks the connection to close; for another, drops it; a byte resets it.
    #[test]
    fn idle_connections_are_asked_to_close_then_dropped() {
        let mut t = ConnTimeouts::new(&limits(600_000, 200));
        assert_eq!(t.tick(snap(1, 0, 0, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(1, 0, 0, 0)), TickVerdict::Close);
        assert_eq!(t.tick(snap(2, 0, 0, 0)), TickVerdict::Keep);
        assert_eq!(t.tick(snap(2, 0, 0, 0)), TickVerdict::Close);
        assert_eq!(t.tick(snap(2, 0, 0, 0)), TickVerdict::Drop);
    }
}
