//! Orders and payment for buyers, and the admin's view of sales, reconciliation and dead
//! letters.
//!
//! - `GET /api/orders/{id}`: the signed-in buyer's order (404 for anyone else's).
//! - `POST /api/orders/{id}/pay`: simulated payment, pending → paid with one conditional
//!   update before the pay-by time. `200` paid (again: `200`, idempotent); `409
//!   order_cancelled` if the cancellation won, `409 payment_window_closed` if the pay-by time
//!   has passed and the cancellation is about to run. Exactly one of payment and
//!   cancellation ever succeeds (both are conditional on `status = 'pending'`). A request
//!   from another site's page (`Origin`, or `Sec-Fetch-Site`) is `403 cross_site`.
//! - `GET /admin/api/sales`: every sale with its orders by status and its stock figures.
//! - `POST /admin/api/sales/{id}/reconcile[?force=true]`: resets the sale's stock to the
//!   database, only when the sale is at rest (`crate::sync::sale_at_rest`: nothing queued
//!   or being enqueued, none of its purchases in the dead letters); otherwise `409
//!   not_at_rest`, since a reset while purchases are queued would hand their units out
//!   again. `force=true` resets anyway, with a warning in the log and in the answer.
//! - `GET /admin/api/dead-letters`: dead letters of the orders and pay-by topics, with
//!   their reasons; `POST /admin/api/dead-letters/{topic}/{offset}/replay|discard`. A
//!   purchase discarded from the orders topic's dead letters is first recorded as rejected
//!   (`discarded`) and its unit released, so its ticket ends with an explicit answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use order_worker::db::{Order, Payment};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, ClientIp, JsonBody, SaleIdPath, SameSite, SessionUser};
use crate::sales::{NewSale, Sale};
use crate::state::{AppState, Shared};

/// Longest order id accepted in a path, bytes.
pub const ORDER_ID_BYTES_MAX: usize = 64;
/// Most dead letters listed per topic.
pub const DEAD_LETTERS_LISTED_MAX: usize = 100;

type PathOf<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

fn order_json(o: &Order, now_ms: u64) -> Value {
    json!({
        "id": o.id,
        "ticket": o.ticket,
        "sale": o.sale,
        "user": o.user,
        "price_cents": o.price_cents,
        "status": o.status,
        "created_ms": o.created_ms,
        "pay_by_ms": o.pay_by_ms,
        "paid_ms": o.paid_ms,
        "cancelled_ms": o.cancelled_ms,
        "server_time_ms": now_ms,
    })
}

/// Order ids are UUIDs; anything else is unknown (and never reaches the database).
fn order_id(id: PathOf<String>) -> ApiResult<String> {
    match id {
        Ok(Path(id)) if id.len() <= ORDER_ID_BYTES_MAX && uuid::Uuid::try_parse(&id).is_ok() => {
            Ok(id)
        }
        _ => Err(ApiError::not_found("no such order")),
    }
}

/// Order reads and payments are throttled per user and per address (each one a database
/// round trip on the request path's own pool, `AppState::read_db`).
fn check_order_quota(state: &AppState, user: &str, ip: std::net::IpAddr) -> ApiResult<()> {
    state
        .throttle
        .check(
            crate::throttle::Route::Order,
            Some(user),
            ip,
            state.now_ms(),
        )
        .map_err(|t| state.throttled(t))
}

/// `GET /api/orders/{id}`.
pub async fn get_order(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    SessionUser(user): SessionUser,
    id: PathOf<String>,
) -> ApiResult<Json<Value>> {
    check_order_quota(&state, &user, ip)?;
    let id = order_id(id)?;
    match state
        .read_db
        .order(&id)
        .await
        .map_err(ApiError::unavailable_from)?
    {
        Some(o) if o.user == user => Ok(Json(order_json(&o, state.now_ms()))),
        _ => Err(ApiError::not_found("no such order")),
    }
}

/// `POST /api/orders/{id}/pay`.
pub async fn pay_order(
    _same_site: SameSite,
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    SessionUser(user): SessionUser,
    id: PathOf<String>,
) -> ApiResult<Json<Value>> {
    check_order_quota(&state, &user, ip)?;
    let id = order_id(id)?;
    match state.read_db.pay(&id, &user, state.now_ms()).await? {
        Payment::Paid(o) | Payment::AlreadyPaid(o) => Ok(Json(order_json(&o, state.now_ms()))),
        Payment::Cancelled(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_cancelled",
            "the order was cancelled at its pay-by time and its unit went back on sale; nothing was charged",
        )),
        Payment::TooLate(o) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "payment_window_closed",
            format!(
                "the pay-by time ({}) has passed; the order is being cancelled",
                o.pay_by_ms
            ),
        )),
        Payment::NotFound => Err(ApiError::not_found("no such order")),
    }
}

/// `GET /admin/api/sales`.
pub async fn admin_sales(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for sale in state.db.sales().await.map_err(ApiError::unavailable_from)? {
        let counts = state
            .db
            .order_counts(sale.id)
            .await
            .map_err(ApiError::unavailable_from)?;
        let stock = state.inventory.store().stock(sale.id).await.ok().flatten();
        out.push(json!({
            "sale": sale,
            "orders": counts,
            "stock": stock.map(|s| json!({"units": s.units, "left": s.left, "holders": s.holders})),
        }));
    }
    Ok(Json(
        json!({"sales": out, "server_time_ms": state.now_ms()}),
    ))
}

/// The query of a reconcile.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ReconcileQuery {
    /// Reset even when the sale is not at rest.
    #[serde(default)]
    force: bool,
}

/// `POST /admin/api/sales/{id}/reconcile[?force=true]`.
pub async fn admin_reconcile(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    SaleIdPath(id): SaleIdPath,
    query: Result<axum::extract::Query<ReconcileQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let force = match query {
        Ok(q) => q.0.force,
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "force is true or false: {e}"
            )));
        }
    };
    // The database keeps ids as 64-bit signed integers: a larger id names no sale (the
    // database would refuse to look it up, and that is no reason for a 503).
    if i64::try_from(id).is_err()
        || state
            .db
            .sale(id)
            .await
            .map_err(ApiError::unavailable_from)?
            .is_none()
    {
        return Err(ApiError::not_found(format!("no sale {id}")));
    }
    let unsettled = crate::sync::sale_at_rest(&state, id).await;
    let mut warning = None;
    if !unsettled.at_rest() {
        if !force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_at_rest",
                format!(
                    "sale {id} is not at rest ({unsettled}): a reset now would hand out the units of queued purchases again; wait until the queue drains, or add ?force=true"
                ),
            ));
        }
        let w = format!(
            "forced reconcile of sale {id} while not at rest ({unsettled}): queued purchases may be accepted beyond the units"
        );
        tracing::warn!("{w}");
        warning = Some(w);
    }
    let s = crate::sync::reconcile_sale(&state, id)
        .await
        .map_err(ApiError::unavailable_from)?;
    let mut out = json!({"sale": id, "units": s.units, "left": s.left, "holders": s.holders});
    if let Some(w) = warning {
        out["forced"] = json!(true);
        out["warning"] = json!(w);
    }
    Ok(Json(out))
}

fn dead_topics(state: &AppState) -> [String; 2] {
    [
        state.config.orders_topic.clone(),
        order_worker::purchase::DEADLINES_TOPIC.to_string(),
    ]
}

/// The dead letters of the orders and pay-by topics, at most [`DEAD_LETTERS_LISTED_MAX`]
/// per topic, with their topic.
pub async fn list_dead_letters(state: &AppState) -> ApiResult<Vec<(String, queue::DeadLetter)>> {
    let mut out = Vec::new();
    for topic in dead_topics(state) {
        let letters = match state
            .queue
            .dead_letters(&topic, 0, DEAD_LETTERS_LISTED_MAX)
            .await
        {
            Ok(l) => l,
            Err(queue::Error::NoSuchTopic(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        out.extend(letters.into_iter().map(|d| (topic.clone(), d)));
    }
    Ok(out)
}

/// `GET /admin/api/dead-letters`.
pub async fn admin_dead_letters(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
) -> ApiResult<Json<Value>> {
    let out: Vec<Value> = list_dead_letters(&state)
        .await?
        .into_iter()
        .map(|(topic, d)| {
            json!({
                "topic": topic,
                "dead_offset": d.dead_offset,
                "group": d.group,
                "original_offset": d.original_offset,
                "attempts": d.attempts,
                "reason": d.reason,
                "dead_at_ms": d.dead_at_ms,
                "payload": String::from_utf8_lossy(&d.payload),
            })
        })
        .collect();
    Ok(Json(json!({"dead_letters": out})))
}

/// `POST /admin/api/dead-letters/{topic}/{offset}/{replay|discard}`.
pub async fn admin_dead_letter_action(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    path: PathOf<(String, u64, String)>,
) -> ApiResult<Json<Value>> {
    let Ok(Path((topic, offset, action))) = path else {
        return Err(ApiError::not_found("no such dead letter"));
    };
    dead_letter_action(&state, &topic, offset, &action)
        .await
        .map(Json)
}

/// Replays or discards one dead letter (the JSON API and the dashboard's form).
pub async fn dead_letter_action(
    state: &AppState,
    topic: &str,
    offset: u64,
    action: &str,
) -> ApiResult<Value> {
    if !dead_topics(state).iter().any(|t| t == topic) {
        return Err(ApiError::not_found("no such topic"));
    }
    let r = match action {
        "replay" => state
            .queue
            .replay_dead_letter(topic, offset)
            .await
            .map(|o| json!({"replayed_at": o})),
        "discard" => {
            if topic == state.config.orders_topic {
                settle_discarded_purchase(state, topic, offset).await?;
            }
            state
                .queue
                .discard_dead_letter(topic, offset)
                .await
                .map(|()| json!({"discarded": offset}))
        }
        _ => return Err(ApiError::not_found("the actions are replay and discard")),
    };
    r.map_err(ApiError::from)
}

/// Before a purchase leaves the dead letters for good: its ticket is recorded as rejected
/// (`discarded`) unless a worker decided it after all, and a unit its buyer holds without an
/// active order is released. Idempotent (a discard retried after a crash finds it done).
async fn settle_discarded_purchase(state: &AppState, topic: &str, offset: u64) -> ApiResult<()> {
    let letters = state
        .queue
        .dead_letters(topic, offset, 1)
        .await
        .map_err(ApiError::unavailable_from)?;
    let Some(letter) = letters.into_iter().find(|d| d.dead_offset == offset) else {
        return Err(ApiError::not_found("no such dead letter"));
    };
    let Ok(purchase) = order_worker::PurchaseMessage::decode(&letter.payload) else {
        // Not a purchase anyone could have been told about: nothing to settle.
        return Ok(());
    };
    let recorded = state
        .db
        .record_rejection(
            &purchase,
            order_worker::db::reason::DISCARDED,
            state.now_ms(),
        )
        .await
        .map_err(ApiError::unavailable_from)?;
    if recorded
        && !state
            .db
            .holds_active(purchase.sale, &purchase.user)
            .await
            .map_err(ApiError::unavailable_from)?
        && let Err(e) = state
            .inventory
            .release_if(purchase.sale, &purchase.user, Some(&purchase.ticket))
            .await
    {
        tracing::warn!("releasing the unit of a discarded purchase: {e}");
    }
    Ok(())
}

pub async fn create_sale(
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
        .create_sale(sale, state.now_ms())
        .await
        .map_err(|e| match e {
            order_worker::DbError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "sale_exists", m)
            }
            other => ApiError::from(other),
        })?;
    state
        .inventory
        .reconcile_bucketed(created.id, created.units, created.stock_buckets, &[])
        .await?;
    state.catalogue.upsert(created.clone());
    Ok(created)
}
