//! Probes and figures: `/readyz` and `/metrics` (`/healthz` is a constant in the router).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::error::{ApiError, ApiResult};
use crate::state::Shared;

pub async fn ready(State(state): State<Shared>) -> ApiResult<&'static str> {
    state.queue.topics().await.map_err(|e| {
        // The queue's own words (addresses, URLs) go to the log, not to the public port.
        tracing::warn!("readyz: the queue does not answer: {e}");
        ApiError::unavailable("not_ready", "the queue does not answer", 1000)
    })?;
    Ok("ready")
}

pub async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.exposition.encode(),
    )
}
