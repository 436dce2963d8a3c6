//! The storefront's HTML pages (templates of the `web` crate) and the static assets.
//!
//! - `GET /`, `GET /sales/{id}`: server-rendered with the sale's approximate units left,
//!   read from the stock store at most once per [`STOCK_CACHE_MS`] per sale
//!   ([`StockCache`]), and `Cache-Control: private, max-age=1`: a refresh storm in the
//!   last second before a sale costs the server one render per browser per second at most.
//! - `GET /orders/{id}`: the signed-in buyer's order (`no-store`).
//! - `GET /static/{file}`: content-hashed assets, cached for a year, with ETags.
//!
//! Routes, element ids and caching are in docs/WEB.md.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use web::Template;
use web::assets::{IMMUTABLE, assets};
use web::views::{MessagePage, OrderPage, OrderView, SalePage, SaleState, SaleView, SalesPage};

use crate::sales::Sale;
use crate::state::AppState;

/// `Cache-Control` of storefront pages (they name the signed-in user: private).
pub const PAGE_CACHE: &str = "private, max-age=1";

/// A rendered page with its status and `Cache-Control`; a template error is a 500 page.
pub fn html(status: StatusCode, cache: &'static str, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, cache),
                (header::VARY, "Cookie"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("rendering a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// The signed-in shopper, if the session cookie is valid.
fn shopper(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(crate::session::cookie_from_header)?;
    state.sessions.verify(cookie, state.now_ms()).ok()
}

/// A message page (404 and friends).
pub fn message(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    html(
        status,
        "no-store",
        &MessagePage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            user: shopper(state, headers),
            title: title.into(),
            message: text.into(),
        },
    )
}

async fn sale_view(state: &AppState, sale: &Sale, now: u64) -> SaleView {
    let units_left = state.stock_cache.left(state, sale.id, now).await;
    SaleView {
        id: sale.id,
        name: sale.name.clone(),
        price_cents: sale.price_cents,
        units: sale.units,
        units_left,
        starts_at_ms: sale.starts_at_ms,
        ends_at_ms: sale.ends_at_ms,
        pay_window_ms: sale.pay_window_ms,
        state: SaleState::at(now, sale.starts_at_ms, sale.ends_at_ms, units_left),
    }
}

/// `GET /`.
pub async fn sales_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let now = state.now_ms();
    let mut sales = Vec::new();
    for s in state.catalogue.list() {
        sales.push(sale_view(&state, &s, now).await);
    }
    html(
        StatusCode::OK,
        PAGE_CACHE,
        &SalesPage {
            assets: assets(),
            server_time_ms: now,
            user: shopper(&state, &headers),
            sales,
        },
    )
}

/// `GET /sales/{id}`.
pub async fn sale_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    let sale = id.ok().and_then(|Path(id)| state.catalogue.get(id));
    let Some(sale) = sale else {
        return message(
            &state,
            &headers,
            StatusCode::NOT_FOUND,
            "No such sale",
            "There is no sale at this address.",
        );
    };
    let now = state.now_ms();
    let view = sale_view(&state, &sale, now).await;
    html(
        StatusCode::OK,
        PAGE_CACHE,
        &SalePage {
            assets: assets(),
            server_time_ms: now,
            user: shopper(&state, &headers),
            sale: view,
        },
    )
}

/// `GET /orders/{id}`: the signed-in buyer's order; a 401 page without a session, a 404 page
/// for anyone else's or an unknown order.
pub async fn order_page(
    State(state): State<Arc<AppState>>,
    crate::extract::ClientIp(ip): crate::extract::ClientIp,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Some(user) = shopper(&state, &headers) else {
        return message(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "Sign in on the sale's page with the name you bought with to see this order.",
        );
    };
    // A database read, under the order routes' quota.
    if let Err(t) = state.throttle.check(
        crate::throttle::Route::Order,
        Some(&user),
        ip,
        state.now_ms(),
    ) {
        let mut page = message(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Wait a moment, then reload this page.",
        );
        state
            .metrics
            .throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(v) = axum::http::HeaderValue::from_str(&t.retry_after_secs().to_string()) {
            page.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        return page;
    }
    let not_found = || {
        message(
            &state,
            &headers,
            StatusCode::NOT_FOUND,
            "No such order",
            "You have no order at this address.",
        )
    };
    let Ok(Path(id)) = id else {
        return not_found();
    };
    if id.len() > crate::orders::ORDER_ID_BYTES_MAX || uuid::Uuid::try_parse(&id).is_err() {
        return not_found();
    }
    let order = match state.read_db.order(&id).await {
        Ok(Some(o)) if o.user == user => o,
        Ok(_) => return not_found(),
        Err(e) => {
            tracing::warn!("reading order {id}: {e}");
            return message(
                &state,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again in a moment",
                "The orders database did not answer.",
            );
        }
    };
    let sale_name = state
        .catalogue
        .get(order.sale)
        .map_or_else(|| format!("Sale {}", order.sale), |s| s.name.clone());
    let view = OrderView {
        id: order.id,
        ticket: order.ticket,
        sale: order.sale,
        sale_name,
        price_cents: order.price_cents,
        status: serde_json::to_value(order.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        created_ms: order.created_ms,
        pay_by_ms: order.pay_by_ms,
        paid_ms: order.paid_ms,
        cancelled_ms: order.cancelled_ms,
    };
    html(
        StatusCode::OK,
        "no-store",
        &OrderPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            user: Some(user),
            order: view,
        },
    )
}

/// `GET /static/{file}`: a hashed asset, cached for a year; `If-None-Match` → 304.
pub async fn static_asset(
    headers: HeaderMap,
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let asset = file.ok().and_then(|Path(f)| assets().get(&f));
    let Some(asset) = asset else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such asset",
        )
            .into_response();
    };
    let etag = HeaderValue::from_str(&asset.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == asset.etag
        });
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}
