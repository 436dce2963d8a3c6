//! The front of the gateway: [`Front`], the one `tower::Service` around the routes (cap on
//! requests in flight, timeout, body limit, client address, metrics by route), and
//! [`serve`], which serves it with the housekeeping tasks.
//!
//! `Front` is hand-written on purpose: the tower stack it replaced (`HandleError` +
//! `LoadShed` + `ConcurrencyLimit` + `Timeout` + a `from_fn` metrics middleware +
//! `DefaultBodyLimit`) cloned and boxed a service per layer per request; one service with
//! an atomic in-flight counter and one boxed future took the rejection paths from about
//! 0.56 to about 0.70 of a bare axum "hello" route (gateway/BENCHMARKS.md, "Layer stack →
//! one service").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};

use crate::config::ServeLimits;
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::metrics::route_index;
use crate::state::Shared;

/// How long `serve`'s housekeeping waits between rounds.
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);
/// Longest one round of the database and queue housekeeping (`sync::housekeeping`) may take.
pub const SYNC_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole HTTP surface with the default [`ServeLimits`]: a `tower::Service` testable
/// with `oneshot`, and what `serve` serves.
pub fn app(state: Shared) -> Front {
    app_with_limits(state, ServeLimits::default())
}

/// `app(state)` with these limits.
pub fn app_with_limits(state: Shared, limits: ServeLimits) -> Front {
    Front {
        inner: crate::routes::routes(state.clone()),
        state,
        limits,
        in_flight: Arc::new(AtomicUsize::new(0)),
        peer: None,
    }
}

/// The front of the gateway, one `tower::Service` around the routes: a global cap on
/// requests in flight (beyond it: 503 `overloaded` + `Retry-After` at once), a request
/// timeout (503 `timeout`), the body limit (413, enforced by [`crate::extract::JsonBody`]), the client's
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
    let r = axum::serve(listener, MakeFront(app_with_limits(state, limits)))
        .with_graceful_shutdown(shutdown)
        .await;
    keeper.abort();
    syncer.abort();
    sampler.abort();
    r
}
