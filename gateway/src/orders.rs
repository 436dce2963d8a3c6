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
//! - `POST /admin/api/sales` creates a sale; a price of 0 or a start more than
//!   [`crate::sales::START_PAST_GRACE_MS`] in the past needs `"confirm": true` (otherwise
//!   `422 confirmation_needed`, saying what to confirm).
//! - `POST /admin/api/sales/{id}/pause|resume|end` and `PATCH /admin/api/sales/{id}` (edit
//!   before the start, same confirmation rule): the change is made on the sale's row in the
//!   database (`order_worker::db::SaleChange`), then in this gateway's catalogue and stock;
//!   every other gateway follows at its next housekeeping round (`crate::sync`). Refusals:
//!   `404`, `409 sale_ended`, `409 sale_started` (an edit after the start), `409
//!   sale_has_orders`.
//! - `GET /admin/api/orders?q=`: orders by order id, ticket or user id (newest first, at
//!   most [`order_worker::db::LOOKUP_ORDERS_MAX`]), and a ticket's outcome.
//! - `GET /admin/api/dead-letters`: dead letters of the orders and pay-by topics, with
//!   their reasons; `POST /admin/api/dead-letters/{topic}/{offset}/replay|discard`, and
//!   `POST /admin/api/dead-letters/bulk` (all of a topic, or the offsets given). A
//!   purchase discarded from the orders topic's dead letters is first recorded as rejected
//!   (`discarded`) and its unit released, so its ticket ends with an explicit answer. A
//!   letter whose payload its topic's consumers cannot decode is not replayed (`422
//!   would_fail_again`): it would only be dead-lettered again at once.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use order_worker::db::{Order, Payment};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, ClientIp, JsonBody, SaleIdPath, SameSite, SessionUser};
use crate::sales::{NewSale, Sale, SaleChange, SaleEdit};
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

/// The query of `GET /admin/api/sales`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AdminSalesQuery {
    /// Only the newest this many sales (highest ids first), 1 to
    /// [`crate::sales::SALES_MAX`]: the
    /// dashboard's live table asks for the 50 it shows, so a poll every 2 s costs 50 counts
    /// and stock reads, not one per sale ever made.
    newest: Option<usize>,
}

/// `GET /admin/api/sales[?newest=N]`.
pub async fn admin_sales(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    query: Result<axum::extract::Query<AdminSalesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let newest = match query {
        Ok(q) => q.0.newest,
        Err(e) => return Err(ApiError::bad_request(format!("newest is a number: {e}"))),
    };
    if newest.is_some_and(|n| n == 0 || n > crate::sales::SALES_MAX) {
        return Err(ApiError::bad_request(format!(
            "newest is 1 to {}",
            crate::sales::SALES_MAX
        )));
    }
    let mut sales = state.db.sales().await.map_err(ApiError::unavailable_from)?;
    if let Some(n) = newest {
        sales.sort_by_key(|s| std::cmp::Reverse(s.id));
        sales.truncate(n);
    }
    let mut out = Vec::new();
    for sale in sales {
        let counts = state
            .db
            .order_counts(sale.id)
            .await
            .map_err(ApiError::unavailable_from)?;
        let stock = state.inventory.store().stock(sale.id).await.ok().flatten();
        let now = state.now_ms();
        out.push(json!({
            "state": crate::sales::admin_state(&sale, now, stock.map(|s| s.left)),
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
    reconcile_in(&state, id, force).await.map(Json)
}

/// Resets sale `id`'s stock to the database when it is at rest (or `force`); the JSON API
/// and the dashboard's reconcile form.
pub async fn reconcile_in(state: &AppState, id: u64, force: bool) -> ApiResult<Value> {
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
    let unsettled = crate::sync::sale_at_rest(state, id).await;
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
    let s = crate::sync::reconcile_sale(state, id)
        .await
        .map_err(ApiError::unavailable_from)?;
    let mut out = json!({"sale": id, "units": s.units, "left": s.left, "holders": s.holders});
    if let Some(w) = warning {
        out["forced"] = json!(true);
        out["warning"] = json!(w);
    }
    Ok(out)
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
        "replay" => {
            let letters = state
                .queue
                .dead_letters(topic, offset, 1)
                .await
                .map_err(ApiError::from)?;
            let Some(letter) = letters.into_iter().find(|d| d.dead_offset == offset) else {
                return Err(ApiError::not_found(
                    "no such dead letter (already replayed or discarded?)",
                ));
            };
            if let Some(why) = replay_would_fail(state, topic, &letter.payload) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "would_fail_again",
                    why,
                ));
            }
            state
                .queue
                .replay_dead_letter(topic, offset)
                .await
                .map(|o| json!({"replayed_at": o}))
        }
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
/// (`discarded`) unless a worker decided it after all, and the unit it reserved (by its
/// ticket's tag) is released. Idempotent (a discard retried after a crash finds it done).
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
    // The reservation this purchase took is tagged with its ticket, and a ticket recorded
    // as rejected here has no order: release exactly that one (with a per-person limit
    // above 1 the buyer may hold other units, backed by orders, which stay).
    if recorded
        && let Err(e) = state
            .inventory
            .release_if(purchase.sale, &purchase.user, Some(&purchase.ticket))
            .await
    {
        tracing::warn!("releasing the unit of a discarded purchase: {e}");
    }
    Ok(())
}

/// The body of `POST /admin/api/sales`: the sale, and the operator's confirmation of
/// what [`crate::sales::needs_confirmation`] lists.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct CreateSaleBody {
    /// The sale.
    #[serde(flatten)]
    pub sale: NewSale,
    /// Go ahead with a price of 0 or a start in the past.
    #[serde(default)]
    pub confirm: bool,
}

/// `422 confirmation_needed` listing `what`, unless `confirmed`.
pub fn check_confirmed(what: &[String], confirmed: bool) -> ApiResult<()> {
    if what.is_empty() || confirmed {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "confirmation_needed",
        format!(
            "please confirm: {}; send \"confirm\": true to go ahead",
            what.join("; ")
        ),
    ))
}

pub async fn create_sale(
    State(state): State<Shared>,
    _admin: Admin,
    JsonBody(body): JsonBody<CreateSaleBody>,
) -> ApiResult<Response> {
    let sale = body.sale;
    check_confirmed(
        &crate::sales::needs_confirmation(sale.price_cents, sale.starts_at_ms, state.now_ms()),
        body.confirm,
    )?;
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

/// What an operator's change came to, as this gateway applies it: the catalogue takes the
/// sale as the database now has it (other gateways at their next round).
fn applied(state: &AppState, change: SaleChange) -> ApiResult<Sale> {
    let sale = outcome_of(change)?;
    state.catalogue.upsert(sale.clone());
    Ok(sale)
}

/// The sale a change made, or the refusal as an answer.
fn outcome_of(change: SaleChange) -> ApiResult<Sale> {
    match change {
        SaleChange::Changed(sale) => Ok(sale),
        SaleChange::NoSuchSale => Err(ApiError::not_found("no such sale")),
        SaleChange::Refused { code, why } => Err(ApiError::new(StatusCode::CONFLICT, code, why)),
        _ => Err(ApiError::internal("an unknown kind of sale change")),
    }
}

/// Pauses, resumes or ends sale `id` (`action`: `pause`, `resume`, `end`); the JSON API and
/// the dashboard's forms.
pub async fn control_sale(state: &AppState, id: u64, action: &str) -> ApiResult<Sale> {
    let now = state.now_ms();
    let change = match action {
        "pause" => state.db.set_paused(id, true, now).await,
        "resume" => state.db.set_paused(id, false, now).await,
        "end" => state.db.end_sale(id, now).await,
        _ => return Err(ApiError::not_found("the actions are pause, resume and end")),
    }
    .map_err(ApiError::from)?;
    let sale = applied(state, change)?;
    tracing::info!("sale {id}: {action} by an operator");
    Ok(sale)
}

/// Edits sale `id` before its start (the JSON API and the dashboard's form); a price of 0
/// or a start in the past needs `confirm`. The stock is re-put from the new units.
pub async fn edit_sale_in(
    state: &AppState,
    id: u64,
    edit: &SaleEdit,
    confirm: bool,
) -> ApiResult<Sale> {
    let now = state.now_ms();
    let Some(old) = state
        .db
        .sale(id)
        .await
        .map_err(ApiError::unavailable_from)?
    else {
        return Err(ApiError::not_found("no such sale"));
    };
    let price = edit.price_cents.unwrap_or(old.price_cents);
    let start = edit.starts_at_ms.unwrap_or(old.starts_at_ms);
    // Only what the edit changes needs confirming again.
    let mut what = crate::sales::needs_confirmation(price, start, now);
    if edit.price_cents.is_none() {
        what.retain(|w| !w.starts_with("the price"));
    }
    if edit.starts_at_ms.is_none() {
        what.retain(|w| !w.starts_with("the start"));
    }
    check_confirmed(&what, confirm)?;
    let change = state
        .db
        .edit_sale(id, edit, now)
        .await
        .map_err(ApiError::from)?;
    let sale = outcome_of(change)?;
    // Not started and without orders: the units are re-put whole, before this gateway's
    // catalogue shows the edit (an edit that starts the sale at once must not sell from
    // the old stock; if the re-put fails, the catalogue keeps the old units and the next
    // housekeeping round, seeing them differ, re-puts the stock).
    state
        .inventory
        .reconcile_bucketed(sale.id, sale.units, sale.stock_buckets, &[])
        .await?;
    state.catalogue.upsert(sale.clone());
    tracing::info!("sale {id}: edited by an operator");
    Ok(sale)
}

/// The sale as the admin API answers a change: the sale and its state.
fn changed_json(state: &AppState, sale: &Sale) -> Value {
    json!({"sale": sale, "state": crate::sales::admin_state(sale, state.now_ms(), None)})
}

/// `POST /admin/api/sales/{id}/pause`.
pub async fn admin_pause(
    State(state): State<Shared>,
    _admin: Admin,
    SaleIdPath(id): SaleIdPath,
) -> ApiResult<Json<Value>> {
    let sale = control_sale(&state, id, "pause").await?;
    Ok(Json(changed_json(&state, &sale)))
}

/// `POST /admin/api/sales/{id}/resume`.
pub async fn admin_resume(
    State(state): State<Shared>,
    _admin: Admin,
    SaleIdPath(id): SaleIdPath,
) -> ApiResult<Json<Value>> {
    let sale = control_sale(&state, id, "resume").await?;
    Ok(Json(changed_json(&state, &sale)))
}

/// `POST /admin/api/sales/{id}/end`.
pub async fn admin_end(
    State(state): State<Shared>,
    _admin: Admin,
    SaleIdPath(id): SaleIdPath,
) -> ApiResult<Json<Value>> {
    let sale = control_sale(&state, id, "end").await?;
    Ok(Json(changed_json(&state, &sale)))
}

/// The body of `PATCH /admin/api/sales/{id}`: the fields to change, and the confirmation.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct EditSaleBody {
    /// The fields to change.
    #[serde(flatten)]
    pub edit: SaleEdit,
    /// Go ahead with a price of 0 or a start in the past.
    #[serde(default)]
    pub confirm: bool,
}

/// `PATCH /admin/api/sales/{id}`.
pub async fn admin_edit(
    State(state): State<Shared>,
    _admin: Admin,
    SaleIdPath(id): SaleIdPath,
    JsonBody(body): JsonBody<EditSaleBody>,
) -> ApiResult<Json<Value>> {
    let sale = edit_sale_in(&state, id, &body.edit, body.confirm).await?;
    Ok(Json(changed_json(&state, &sale)))
}

/// The query of an order look-up.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FindQuery {
    /// An order id, a ticket or a user id.
    #[serde(default)]
    pub q: String,
}

/// The orders matching `q` (an order id, a ticket or a user id) and, for a ticket, its
/// outcome; the JSON API and the dashboard's page.
pub async fn find_orders(
    state: &AppState,
    q: &str,
) -> ApiResult<(Vec<Order>, Option<order_worker::db::Outcome>)> {
    let q = q.trim();
    if q.len() > order_worker::db::LOOKUP_QUERY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "q: at most {} bytes (an order id, a ticket or a user id)",
            order_worker::db::LOOKUP_QUERY_BYTES_MAX
        )));
    }
    if q.is_empty() {
        return Ok((Vec::new(), None));
    }
    let orders = state
        .db
        .find_orders(q, order_worker::db::LOOKUP_ORDERS_MAX)
        .await
        .map_err(ApiError::unavailable_from)?;
    let outcome = state
        .db
        .outcome(q)
        .await
        .map_err(ApiError::unavailable_from)?;
    Ok((orders, outcome))
}

/// `GET /admin/api/orders?q=`.
pub async fn admin_find_orders(
    State(state): State<Shared>,
    _admin: Admin,
    query: Result<axum::extract::Query<FindQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query.map(|q| q.0.q).unwrap_or_default();
    let (orders, outcome) = find_orders(&state, &q).await?;
    let now = state.now_ms();
    Ok(Json(json!({
        "query": q.trim(),
        "orders": orders.iter().map(|o| order_json(o, now)).collect::<Vec<_>>(),
        "outcome": outcome,
        "limit": order_worker::db::LOOKUP_ORDERS_MAX,
    })))
}

/// Most dead letters one bulk action touches.
pub const DEAD_LETTERS_BULK_MAX: usize = DEAD_LETTERS_LISTED_MAX;

/// Why replaying `payload` on `topic` would fail again at once (its consumers cannot
/// decode it), if it would.
pub fn replay_would_fail(state: &AppState, topic: &str, payload: &[u8]) -> Option<String> {
    let r = if topic == state.config.orders_topic {
        order_worker::PurchaseMessage::decode(payload).map(|_| ())
    } else {
        order_worker::purchase::Deadline::decode(payload).map(|_| ())
    };
    r.err().map(|e| {
        format!(
            "the payload is not a message its consumers can read ({e}): a replay would be dead-lettered again at once; discard it instead"
        )
    })
}

/// What a bulk action did: the letters done, and those refused with why.
#[derive(Debug, Default, serde::Serialize)]
pub struct BulkOutcome {
    /// `(topic, dead offset)` of the letters replayed or discarded.
    pub done: Vec<(String, u64)>,
    /// `(topic, dead offset, why)` of the letters left alone.
    pub failed: Vec<(String, u64, String)>,
}

/// Replays or discards each of `letters` (`(topic, dead offset)`, at most
/// [`DEAD_LETTERS_BULK_MAX`]), going on past a refusal; a dependency's failure stops it,
/// listed among the refused with what was done before it.
pub async fn dead_letters_bulk(
    state: &AppState,
    action: &str,
    letters: &[(String, u64)],
) -> ApiResult<BulkOutcome> {
    if !matches!(action, "replay" | "discard") {
        return Err(ApiError::bad_request("action: replay or discard"));
    }
    if letters.len() > DEAD_LETTERS_BULK_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {DEAD_LETTERS_BULK_MAX} dead letters at once"
        )));
    }
    let mut out = BulkOutcome::default();
    for (topic, offset) in letters {
        match dead_letter_action(state, topic, *offset, action).await {
            Ok(_) => out.done.push((topic.clone(), *offset)),
            Err(e) if e.status.is_server_error() => {
                // A dependency failed: stop here, and say what was done before it.
                out.failed.push((
                    topic.clone(),
                    *offset,
                    format!("{} (stopped here: the rest were not tried)", e.message),
                ));
                break;
            }
            Err(e) => out.failed.push((topic.clone(), *offset, e.message.clone())),
        }
    }
    Ok(out)
}

/// The body of `POST /admin/api/dead-letters/bulk`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct BulkBody {
    /// `replay` or `discard`.
    pub action: String,
    /// The topic.
    pub topic: String,
    /// Dead offsets in that topic; absent: every dead letter of the topic (up to
    /// [`DEAD_LETTERS_BULK_MAX`]).
    #[serde(default)]
    pub offsets: Option<Vec<u64>>,
}

/// Every dead letter of `topic` listed (at most [`DEAD_LETTERS_LISTED_MAX`]).
pub async fn all_of_topic(state: &AppState, topic: &str) -> ApiResult<Vec<(String, u64)>> {
    Ok(list_dead_letters(state)
        .await?
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(t, d)| (t, d.dead_offset))
        .collect())
}

/// `POST /admin/api/dead-letters/bulk`.
pub async fn admin_dead_letters_bulk(
    State(state): State<Shared>,
    _admin: Admin,
    JsonBody(body): JsonBody<BulkBody>,
) -> ApiResult<Json<Value>> {
    if !dead_topics(&state).contains(&body.topic) {
        return Err(ApiError::not_found("no such topic"));
    }
    let letters = match body.offsets {
        Some(o) => o.into_iter().map(|o| (body.topic.clone(), o)).collect(),
        None => all_of_topic(&state, &body.topic).await?,
    };
    let out = dead_letters_bulk(&state, &body.action, &letters).await?;
    Ok(Json(json!({
        "action": body.action,
        "done": out.done.iter().map(|(t, o)| json!({"topic": t, "offset": o})).collect::<Vec<_>>(),
        "failed": out.failed.iter().map(|(t, o, why)| json!({"topic": t, "offset": o, "message": why})).collect::<Vec<_>>(),
    })))
}
