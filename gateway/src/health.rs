//! Probes and figures: `/readyz` and `/metrics` (`/healthz` is a constant in the router).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::error::{ApiError, ApiResult};
use crate::metrics::ROUTES;
use crate::state::Shared;

pub async fn ready(State(state): State<Shared>) -> ApiResult<&'static str> {
    state
        .queue
        .topics()
        .await
        .map_err(|e| ApiError::unavailable("not_ready", e.to_string(), 1000))?;
    Ok("ready")
}

pub async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
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
