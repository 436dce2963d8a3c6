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
use crate::state::Shared;

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

impl InFlight {
    /// Counts one more in `count` until the guard is dropped.
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

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
            let resp = busy(
                crate::pages::wants_html(req.uri().path(), req.headers()),
                ApiError::unavailable("overloaded", "too many requests in flight", 1000),
            );
            state.metrics.observe(route, started, resp.status());
            return Box::pin(std::future::ready(Ok(resp)));
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
                return Box::pin(std::future::ready(Ok(resp)));
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
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        // The client's address behind a trusted proxy (`X-Forwarded-For`); with nobody
        // trusted, `ClientIp` is the peer and nothing is read here.
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
            req.extensions_mut().insert(ClientIp(addr.ip));
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
            return Box::pin(std::future::ready(Ok(resp)));
        }
        req.extensions_mut().insert(BodyLimit(limit));
        let timeout = Duration::from_millis(self.limits.request_timeout_ms.max(1));
        let pages = compressible(req.uri().path()).then(|| self.pages.clone());
        // A browser asking for a page gets the timeout as a page (the API paths never do).
        let page = crate::pages::wants_html(req.uri().path(), req.headers());
        let inner = self.inner.clone();
        Box::pin(async move {
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
        })
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
    let (stop, stopping) = tokio::sync::watch::channel(());
    let (drop_all, dropping) = tokio::sync::watch::channel(());
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
        tokio::spawn(serve_connection(
            stream,
            front.for_peer(peer),
            stopping.clone(),
            dropping.clone(),
            slot,
        ));
    }
    drop(listener);
    // Every connection: finish the request in progress, then close.
    let _ = stop.send(());
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
        let _ = drop_all.send(());
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

/// One connection, until it closes; holds its `slot` of the connection cap until then.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    front: Front,
    mut stopping: tokio::sync::watch::Receiver<()>,
    mut dropping: tokio::sync::watch::Receiver<()>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let limits = front.limits;
    let metrics = front.state.metrics.clone();
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    let activity = Arc::new(AtomicUsize::new(0));
    let io = hyper_util::rt::TokioIo::new(Counted {
        inner: stream,
        activity: activity.clone(),
    });
    // Requests of this connection being handled: the connection is not idle meanwhile
    // (a handler moves no bytes until it answers; the request timeout bounds it).
    let handling = Arc::new(AtomicUsize::new(0));
    let service = {
        let handling = handling.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut front = front.clone();
            let counted = InFlight::enter(&handling);
            let answer = tower::Service::call(&mut front, req.map(axum::body::Body::new));
            async move {
                let _counted = counted;
                answer.await
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    let mut idle_ticks = 0u32;
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection: {e}");
                }
                break;
            }
            // The shutdown (or the server gone): finish the request in progress, then close.
            _ = stopping.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // The shutdown's grace is over: dropped, whatever it was doing.
            _ = dropping.changed() => break,
            // Idle: not a byte moved since the last tick. Asked to close first (an idle
            // keep-alive connection closes at once); still no byte a tick later (a client
            // that stopped mid-request or stopped reading its answer), dropped.
            _ = tick.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now != seen || handling.load(Ordering::Relaxed) > 0 {
                    seen = now;
                    idle_ticks = 0;
                    continue;
                }
                idle_ticks += 1;
                if idle_ticks >= 2 {
                    tracing::debug!("dropping a connection idle for two idle timeouts");
                    break;
                }
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// A socket that counts its reads and writes, so that the idle timeout can tell a quiet
/// connection from a busy one without a clock read per operation.
struct Counted {
    inner: tokio::net::TcpStream,
    activity: Arc<AtomicUsize>,
}

impl Counted {
    fn moved(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
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
            this.moved();
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
        if r.is_ready() {
            this.moved();
        }
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            this.moved();
        }
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
