//! The shopper's API short of the purchase itself: login and logout, the sales, captchas
//! (an image, or proof of work for assistive browsers), purchase tokens, tickets, and the
//! shopper's own orders ("my orders").

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use crate::config::LOAD_TEST_HEADER;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientIp, JsonBody, SaleIdPath, SessionUser, session_user};
use crate::ledger::{Caps, Claimant};
use crate::purchase::position;
use crate::sales::{Sale, SaleState};
use crate::state::{AppState, Shared};
use crate::throttle::Route;
use crate::tickets::TicketState;
use crate::token::{holder_of, token_cap};

/// The body of a login.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginBody {
    user: String,
}

pub async fn login(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    let now = state.now_ms();
    state
        .throttle
        .check(Route::Login, None, ip, now)
        .map_err(|t| state.throttled(t))?;
    // Trimmed and counted in characters; the refusal's text is for the shopper.
    let user = crate::session::normalize_name(&body.user)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_name", e.to_string()))?;
    let value = state
        .sessions
        .sign(&user, now + state.config.session_ttl_ms)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_name", e.to_string()))?;
    let max_age_s = state.config.session_ttl_ms / 1000;
    let cookie = crate::session::set_cookie_header(&value, max_age_s, state.config.secure_cookies);
    // The route cookie beside it (always, so that turning `--route-cookie` on finds it
    // set): nginx hashes it to send this person to one gateway (`crate::proxy`).
    let route = crate::proxy::set_route_cookie(&user, max_age_s, state.config.secure_cookies);
    Ok((
        // Appended: an array of pairs would insert, and the second would replace the first.
        axum::response::AppendHeaders([(header::SET_COOKIE, cookie), (header::SET_COOKIE, route)]),
        Json(json!({"user": user})),
    )
        .into_response())
}

/// `POST /api/logout`: removes the session and route cookies (`Max-Age=0`). Needs no
/// session (signing out twice is fine) but refuses another site's page (`403
/// cross_site`), so no page elsewhere can sign a shopper out.
pub async fn logout(_same_site: crate::extract::SameSite, State(state): State<Shared>) -> Response {
    let secure = state.config.secure_cookies;
    let session = crate::session::clear_cookie_header(secure);
    let route = crate::session::set_cookie(crate::proxy::ROUTE_COOKIE_NAME, "", "/", 0, secure);
    (
        axum::response::AppendHeaders([(header::SET_COOKIE, session), (header::SET_COOKIE, route)]),
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"user": null})),
    )
        .into_response()
}

/// The name of sale `id` for a shopper: the catalogue's, or "Sale N" for one it no longer
/// holds.
pub fn sale_name(state: &AppState, id: u64) -> String {
    state
        .catalogue
        .get(id)
        .map_or_else(|| format!("Sale {id}"), |s| s.name.clone())
}

/// `GET /api/orders`: the signed-in shopper's orders over every shard, newest first, at
/// most [`order_worker::db::USER_ORDERS_MAX`]; `complete: false` when a shard did not
/// answer (its orders are missing; the others' are there). Throttled like the other order
/// reads.
pub async fn my_orders(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SessionUser(user): SessionUser,
) -> ApiResult<Response> {
    state
        .throttle
        .check(Route::Order, Some(&user), ip, state.now_ms())
        .map_err(|t| state.throttled(t))?;
    let limit = order_worker::db::USER_ORDERS_MAX;
    let mine = state
        .read_db
        .orders_of_user(&user, limit)
        .await
        .map_err(ApiError::unavailable_from)?;
    let now = state.now_ms();
    let orders: Vec<Value> = mine
        .orders
        .iter()
        .map(|o| {
            json!({
                "id": o.id,
                "ticket": o.ticket,
                "sale": o.sale,
                "sale_name": sale_name(&state, o.sale),
                "status": o.status,
                "price_cents": o.price_cents,
                "currency": state.config.currency,
                "created_ms": o.created_ms,
                "pay_by_ms": o.pay_by_ms,
                "paid_ms": o.paid_ms,
                "cancelled_ms": o.cancelled_ms,
            })
        })
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "user": user,
            "orders": orders,
            "complete": mine.complete,
            "limit": limit,
            "server_time_ms": now,
        })),
    )
        .into_response())
}

pub async fn sale_json(state: &AppState, sale: &Sale, now: u64) -> Value {
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
        "currency": state.config.currency,
        "state": st,
        "server_time_ms": now,
    })
}

pub async fn list_sales(State(state): State<Shared>) -> Json<Value> {
    let now = state.now_ms();
    let mut out = Vec::new();
    for s in state.catalogue.list() {
        out.push(sale_json(&state, &s, now).await);
    }
    Json(json!({"sales": out, "server_time_ms": now}))
}

pub async fn get_sale(
    State(state): State<Shared>,
    SaleIdPath(id): SaleIdPath,
) -> ApiResult<Json<Value>> {
    let sale = state.sale_or_404(id)?;
    Ok(Json(sale_json(&state, &sale, state.now_ms()).await))
}

/// The query of `GET /api/sales/{id}/captcha`.
#[derive(Debug, Deserialize)]
pub struct CaptchaQuery {
    /// `image` (the default) or `work` (proof of work, for assistive browsers).
    kind: Option<String>,
}

pub async fn new_captcha(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    headers: HeaderMap,
    query: Result<Query<CaptchaQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let work = match query.ok().and_then(|Query(q)| q.kind).as_deref() {
        None | Some("image") => false,
        Some("work") if state.config.captcha_work => true,
        Some("work") => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "this shop offers only the image check; ask the shop for help if you cannot read it",
            ));
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "kind is image or work",
            ));
        }
    };
    let user = session_user(&state, &headers)?;
    let now = state.now_ms();
    state
        .throttle
        .check(Route::Captcha, Some(&user), ip, now)
        .map_err(|t| state.throttled(t))?;
    state.sale_or_404(id)?;
    // Drawing takes milliseconds of CPU: off the async workers.
    let drawer = state.clone();
    let purpose = crate::captcha::purpose(&user, id);
    let owner = crate::captcha::Requester::new(&user, state.counted_addr(ip));
    if work {
        let w = state.captchas.create_work(&purpose, owner, now);
        return Ok(Json(json!({
            "captcha_id": w.id,
            "kind": "work",
            "challenge": w.challenge,
            "bits": w.bits,
            "expires_at_ms": now + crate::captcha::CAPTCHA_TTL_MS,
        })));
    }
    let (captcha_id, png) =
        tokio::task::spawn_blocking(move || drawer.captchas.create(&purpose, owner, now))
            .await
            .map_err(ApiError::internal)??;
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    Ok(Json(json!({
        "captcha_id": captcha_id,
        "kind": "image",
        "image": image,
        "expires_at_ms": now + crate::captcha::CAPTCHA_TTL_MS,
    })))
}

/// The body of a token request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenBody {
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

pub async fn new_token(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    SaleIdPath(id): SaleIdPath,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let now = state.now_ms();
    // Public facts first, from memory, as on the purchase route (the front service asks
    // the same before routing): that a sale is unknown, ended, paused or sold out is no
    // secret, and after a sell-out it is what nearly every request gets, so it costs no
    // signature check, throttle or body read.
    let sale = match crate::purchase::refuse_token_on_public_facts(&state, id, now) {
        Ok(sale) => sale,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    // Then who is asking (before the body is read), and whether too often.
    let user = session_user(&state, req.headers())?;
    state
        .throttle
        .check(Route::Token, Some(&user), ip, now)
        .map_err(|t| state.throttled(t))?;
    let load_test = load_test_ok(&state, req.headers());
    let JsonBody(body) =
        <JsonBody<TokenBody> as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
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
        Err(e) => return Err(e.into()),
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
    let who = Claimant::new(holder_of(&user), state.counted_addr(ip));
    let caps = Caps {
        sale: cap,
        per_address: state.config.tokens_per_address,
    };
    if !state.ledger.room(id, who, caps, now).await? {
        return Err(exhausted());
    }
    if !load_test {
        state.captchas.check(
            &body.captcha_id,
            &crate::captcha::purpose(&user, id),
            &body.answer,
            now,
        )?;
    }
    let expires_at_ms = now + state.config.token_ttl_ms;
    let (token, nonce) = state.tokens.issue(&user, id, expires_at_ms);
    if !state
        .ledger
        .issue(id, who, nonce, expires_at_ms, caps, now)
        .await?
    {
        return Err(exhausted());
    }
    state.metrics.tokens_issued.fetch_add(1, Ordering::Relaxed);
    Ok(Json(json!({"token": token, "expires_at_ms": expires_at_ms})).into_response())
}

pub async fn get_ticket(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ticket: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<TicketQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    // Each look-up may read the database: throttled per address, and per user when a
    // session comes with it (a ticket needs none).
    let user = session_user(&state, &headers).ok();
    state
        .throttle
        .check(Route::Ticket, user.as_deref(), ip, state.now_ms())
        .map_err(|t| state.throttled(t))?;
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
        .read_db
        .outcome(&ticket)
        .await
        .map_err(ApiError::unavailable_from)?;
    if let Some(o) = decided {
        return decided_json(o);
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
    // Accepted by another gateway (alive or not): its receipt says where it waits.
    let receipt = query
        .ok()
        .and_then(|Query(q)| q.receipt)
        .and_then(|r| state.receipts.verify(&ticket, &r));
    if let Some(r) = receipt {
        let place = position(&state, r.offset).await;
        if state.line.is_done(r.offset) {
            // The workers passed it: decided since the read above (read again), or not in
            // the queue any more without an outcome (dead letters, whose copy here is at most
            // a second old, or lost): unknown, as at the gateway that took it, never
            // "queued" forever.
            let decided = state
                .read_db
                .outcome(&ticket)
                .await
                .map_err(ApiError::unavailable_from)?;
            return match decided {
                Some(o) => decided_json(o),
                None => Err(ApiError::not_found("no such ticket")),
            };
        }
        let mut v = serde_json::to_value(TicketState::Queued).map_err(ApiError::internal)?;
        v["position"] = json!(place);
        v["sale"] = json!(r.sale);
        return Ok(Json(v));
    }
    Err(ApiError::not_found("no such ticket"))
}

/// The answer for a decided ticket: ordered (with the order's id) or rejected (with why).
fn decided_json(o: order_worker::db::Outcome) -> ApiResult<Json<Value>> {
    let st = match (o.order_id, o.reason) {
        (Some(order_id), _) => TicketState::Ordered { order_id },
        (None, reason) => TicketState::Rejected {
            reason: reason.unwrap_or_default(),
        },
    };
    let mut v = serde_json::to_value(&st).map_err(ApiError::internal)?;
    v["sale"] = json!(o.sale);
    Ok(Json(v))
}

/// The query of `GET /api/tickets/{ticket}`: the `receipt` of its `202`, so any gateway
/// can answer for a ticket still waiting in the queue.
#[derive(Debug, serde::Deserialize)]
pub struct TicketQuery {
    /// The receipt (base64url); a wrong one is ignored.
    receipt: Option<String>,
}
