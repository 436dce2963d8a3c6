//! The storefront's HTML pages (templates of the `web` crate) and the static assets.
//!
//! - `GET /`, `GET /sales/{id}`: server-rendered with the sale's approximate units left,
//!   read from the stock store at most once per [`STOCK_CACHE_MS`](crate::state::STOCK_CACHE_MS) per sale
//!   ([`StockCache`](crate::state::StockCache)), and `Cache-Control: private, max-age=1`: a refresh storm in the
//!   last second before a sale costs the server one render per browser per second at most.
//! - `GET /orders/{id}`: the signed-in buyer's order (`no-store`).
//! - `GET /orders`: the signed-in shopper's orders, newest first (`no-store`).
//! - `GET /static/{file}`: content-hashed assets, cached for a year, with ETags.
//! - Every other path ([`not_found`]): an HTML "no such page" for a browser (its `Accept`
//!   names `text/html`) outside `/api/` and `/admin/api/`; the JSON `not_found` for the APIs
//!   and for clients that ask for JSON. A page that cannot be rendered is an HTML 500.
//!
//! Routes, element ids and caching are in docs/WEB.md.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use web::Template;
use web::assets::{IMMUTABLE, assets};
use web::views::{
    MessagePage, MyOrdersPage, OrderPage, OrderView, SalePage, SaleState, SaleView, SalesPage,
};

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
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                SERVER_ERROR_PAGE,
            )
                .into_response()
        }
    }
}

/// The page of a server error when even the templates failed: plain HTML, no template.
pub const SERVER_ERROR_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Something went wrong · Flash sale</title></head><body><h1>Something went wrong</h1><p id=\"message\">This page could not be shown. Reload it in a moment.</p><p><a href=\"/\">All sales</a></p></body></html>";

/// Whether a request wants a page: its `Accept` names `text/html` (browsers navigating
/// do), and its path is not under an API (`/api/`, `/admin/api/`), which answer JSON.
pub fn wants_html(path: &str, headers: &HeaderMap) -> bool {
    let api = path.starts_with("/api/") || path == "/api" || path.starts_with("/admin/api/");
    !api && headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// Every route the router does not know: an HTML 404 page for a browser asking for a page,
/// the JSON `not_found` otherwise.
pub async fn not_found(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if wants_html(uri.path(), &headers) {
        return message(
            &state,
            &headers,
            StatusCode::NOT_FOUND,
            "No such page",
            "There is nothing at this address. The sales are on the front page.",
        );
    }
    crate::error::ApiError::not_found("no such route").into_response()
}

/// A route that exists but not for this method: an HTML 405 page for a browser, the JSON
/// `method_not_allowed` otherwise.
pub async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if wants_html(uri.path(), &headers) {
        return message(
            &state,
            &headers,
            StatusCode::METHOD_NOT_ALLOWED,
            "No such page",
            "This address is not a page. The sales are on the front page.",
        );
    }
    crate::error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
    .into_response()
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
            currency: state.config.currency.clone(),
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
            currency: state.config.currency.clone(),
            captcha_work: state.config.captcha_work,
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
    let view = order_view(&state, order);
    html(
        StatusCode::OK,
        "no-store",
        &OrderPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            user: Some(user),
            order: view,
            currency: state.config.currency.clone(),
        },
    )
}

/// An order as its buyer sees it, with its sale's name.
fn order_view(state: &AppState, order: order_worker::db::Order) -> OrderView {
    OrderView {
        sale_name: crate::shop::sale_name(state, order.sale),
        id: order.id,
        ticket: order.ticket,
        sale: order.sale,
        price_cents: order.price_cents,
        status: serde_json::to_value(order.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        created_ms: order.created_ms,
        pay_by_ms: order.pay_by_ms,
        paid_ms: order.paid_ms,
        cancelled_ms: order.cancelled_ms,
    }
}

/// A 429 page with `Retry-After` (the order routes' quota).
fn throttled_page(
    state: &AppState,
    headers: &HeaderMap,
    t: &crate::throttle::Throttled,
) -> Response {
    let mut page = message(
        state,
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "Wait a moment, then reload this page.",
    );
    state
        .metrics
        .throttled
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(v) = HeaderValue::from_str(&t.retry_after_secs().to_string()) {
        page.headers_mut().insert(header::RETRY_AFTER, v);
    }
    page
}

/// `GET /orders`: the signed-in shopper's orders over every shard, newest first (at most
/// [`order_worker::db::USER_ORDERS_MAX`]); a 401 page without a session. Under the order
/// routes' quota, like `GET /api/orders`.
pub async fn my_orders_page(
    State(state): State<Arc<AppState>>,
    crate::extract::ClientIp(ip): crate::extract::ClientIp,
    headers: HeaderMap,
) -> Response {
    let Some(user) = shopper(&state, &headers) else {
        return message(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "Sign in on a sale's page with the name you bought with to see your orders.",
        );
    };
    if let Err(t) = state.throttle.check(
        crate::throttle::Route::Order,
        Some(&user),
        ip,
        state.now_ms(),
    ) {
        return throttled_page(&state, &headers, &t);
    }
    let limit = order_worker::db::USER_ORDERS_MAX;
    let mine = match state.read_db.orders_of_user(&user, limit).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("reading the orders of a shopper: {e}");
            return message(
                &state,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again in a moment",
                "Your orders could not be loaded just now. Reload the page in a moment.",
            );
        }
    };
    let orders = mine
        .orders
        .into_iter()
        .map(|o| order_view(&state, o))
        .collect();
    html(
        StatusCode::OK,
        "no-store",
        &MyOrdersPage {
            assets: assets(),
            server_time_ms: state.now_ms(),
            user: Some(user),
            orders,
            complete: mine.complete,
            limit,
            currency: state.config.currency.clone(),
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
