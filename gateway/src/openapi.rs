//! The gateway's JSON API as an OpenAPI 3.1 document, built with `utoipa` and served at
//! `GET /api/openapi.json` ([`openapi_json`]).
//!
//! What comes from where:
//! - Request and response types that exist in the code derive `utoipa::ToSchema` where they
//!   live (`LoginBody`, `TokenBody`, `PurchaseBody`, the purchase's `Accepted`, `NewSale`,
//!   `Sale`, `Order`, `OrderStatus`, `OrderCounts`, `SaleState`, the dashboard's `Snapshot`),
//!   so their schemas follow the types and their serde attributes.
//! - Answers the handlers build with `serde_json::json!` (a sale with its state, a ticket,
//!   the admin's sale rows, dead letters) are described by the `*View` types below, which
//!   exist only for the description. The Schemathesis test (`gateway/tests/it/schemathesis.rs`)
//!   checks every answer against them, so a drift is a failing test, not a silent lie.
//! - The operations are declared on documented stubs in [`ops`], not on the handlers, so
//!   that the handlers' files (owned by the shop, purchase, orders and admin modules) carry
//!   no attribute blocks; the stub names match the handlers'.
//! - [`Common`] adds what every operation may answer (503 when overloaded, timed out or a
//!   dependency is down; 413 for a body over the limit; 421 misdirected behind a proxy;
//!   `Retry-After` where waiting helps), the security schemes (the shopper's session
//!   cookie; the admin's bearer secret or cookie), and the shared error body. `LINKS`
//!   adds how one answer leads to the next operation (a token to its purchase, a ticket to
//!   its order).
//!
//! Kept in step by tests, below: `openapi_covers_every_api_route` (every `/api/` and
//! `/admin/api/` route of `routes.rs` is described, and nothing else),
//! `openapi_matches_api_md` (the operations and docs/API.md name the same routes) and
//! `every_error_code_is_listed_in_the_error_body` (the codes in the source).
//!
//! To describe a new route: write a stub in [`ops`] (copy a neighbour: path, parameters,
//! body, every status it answers) and name it in [`ApiDoc`]'s `paths(...)` — one line there.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::sales::{Sale, SaleState};

/// The error body of every refusal (`crate::error::ApiError`).
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `unsupported_media_type`, `too_large`, `throttled` (with
    /// `Retry-After`), `misdirected`, `cross_site`, `csrf`, `bad_captcha`, `bad_token`,
    /// `not_started`, `sold_out`, `tokens_exhausted`, `ended`, `already_bought`,
    /// `order_cancelled`, `payment_window_closed`, `conflict`, `sale_exists`, `not_at_rest`,
    /// `bad_name`, `captcha_expired`, `sale_paused`, `sale_ended`, `sale_started`,
    /// `sale_has_orders`, `confirmation_needed` (422), `would_fail_again` (422),
    /// `busy`, `overloaded`, `timeout`, `unavailable`, `outcome_unknown`, `internal`. Every
    /// code the gateway sends is listed here (a test holds it to the source).
    #[schema(example = "sold_out")]
    pub error: String,
    /// Human-readable explanation (never a dependency's own error text).
    pub message: String,
    /// With `503 outcome_unknown` only: the purchase's ticket, to follow with
    /// `GET /api/tickets/{ticket}`.
    pub ticket: Option<String>,
}

/// The answer of a sign-in.
#[derive(Debug, ToSchema)]
pub struct LoginView {
    /// The signed-in user.
    pub user: String,
}

/// A sale as shoppers see it (`shop::sale_json`).
#[derive(Debug, ToSchema)]
pub struct SaleView {
    /// Id.
    pub id: u64,
    /// What is sold.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Units on sale.
    pub units: u64,
    /// The stock store's units left (approximate while purchases are in flight); `null`
    /// when the store cannot say.
    pub units_left: Option<u64>,
    /// Start, ms since the Unix epoch.
    pub starts_at_ms: u64,
    /// How long a buyer has to pay, ms.
    pub pay_window_ms: u64,
    /// End, ms since the Unix epoch; `null`: open until sold out.
    pub ends_at_ms: Option<u64>,
    /// Units one person may buy.
    pub per_user_limit: u32,
    /// Currency of the price (the gateway's `--currency`).
    pub currency: String,
    /// Where the sale is in its life now.
    pub state: SaleState,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// `GET /api/sales`.
#[derive(Debug, ToSchema)]
pub struct SalesView {
    /// Every sale.
    pub sales: Vec<SaleView>,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// A captcha to answer before a purchase token is given: an image to read, or (`kind=work`)
/// a proof-of-work challenge for browsers that cannot show or read it.
#[derive(Debug, ToSchema)]
pub struct CaptchaView {
    /// Its id.
    pub captcha_id: String,
    /// `image` or `work`.
    pub kind: String,
    /// `image` only: the picture, as a `data:image/png;base64,…` URL.
    pub image: Option<String>,
    /// `work` only: the challenge; the answer is a nonce whose SHA-256 with it has `bits`
    /// leading zero bits.
    pub challenge: Option<String>,
    /// `work` only: the leading zero bits asked for.
    pub bits: Option<u32>,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// One of the shopper's orders (`GET /api/orders`).
#[derive(Debug, ToSchema)]
pub struct MyOrderView {
    /// Order id.
    pub id: String,
    /// The purchase's ticket.
    pub ticket: String,
    /// Sale.
    pub sale: u64,
    /// The sale's name.
    pub sale_name: String,
    /// `pending`, `paid` or `cancelled`.
    pub status: order_worker::db::OrderStatus,
    /// Price in cents.
    pub price_cents: u64,
    /// Currency of the price.
    pub currency: String,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Pay by, ms since the Unix epoch.
    pub pay_by_ms: u64,
    /// Paid at, if paid.
    pub paid_ms: Option<u64>,
    /// Cancelled at, if cancelled.
    pub cancelled_ms: Option<u64>,
}

/// `GET /api/orders`: the signed-in shopper's orders, newest first.
#[derive(Debug, ToSchema)]
pub struct MyOrdersView {
    /// The shopper.
    pub user: String,
    /// At most `limit` orders.
    pub orders: Vec<MyOrderView>,
    /// False when a database shard did not answer (the list may miss orders).
    pub complete: bool,
    /// Most orders listed.
    pub limit: u64,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// The answer of a sign-out.
#[derive(Debug, ToSchema)]
pub struct LogoutView {
    /// Always `null`: nobody is signed in.
    pub user: Option<String>,
}

/// A sale after an operator's change, with the operator's view of its state.
#[derive(Debug, ToSchema)]
pub struct SaleChangedView {
    /// The sale as stored.
    pub sale: Sale,
    /// `ended`, `paused`, `upcoming`, `sold_out` or `live`.
    pub state: String,
}

/// An order found by the admin's look-up.
#[derive(Debug, ToSchema)]
pub struct FoundOrdersView {
    /// The query, trimmed.
    pub query: String,
    /// Orders whose id, ticket or buyer is the query, newest first.
    pub orders: Vec<OrderView>,
    /// The ticket's decision when the query is a decided ticket: `{sale, user, order_id,
    /// reason}`.
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<serde_json::Value>,
    /// Most orders listed.
    pub limit: u64,
}

/// A dead letter a bulk action touched.
#[derive(Debug, ToSchema)]
pub struct BulkLetterView {
    /// Topic.
    pub topic: String,
    /// Dead offset.
    pub offset: u64,
    /// With `failed`: why it was left alone.
    pub message: Option<String>,
}

/// The answer of a bulk dead-letter action.
#[derive(Debug, ToSchema)]
pub struct BulkDoneView {
    /// `replay` or `discard`.
    pub action: String,
    /// The letters done.
    pub done: Vec<BulkLetterView>,
    /// The letters refused, with why (e.g. a replay that would fail again at once).
    pub failed: Vec<BulkLetterView>,
}

/// A purchase token.
#[derive(Debug, ToSchema)]
pub struct TokenView {
    /// The token, to send with the purchase.
    pub token: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// How a ticket stands (`shop::get_ticket`).
#[derive(Debug, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TicketView {
    /// Waiting in the queue.
    Queued {
        /// Place in line; `null` when the queue cannot say.
        position: Option<u64>,
        /// Sale.
        sale: u64,
    },
    /// An order was created.
    Ordered {
        /// The order's id.
        order_id: String,
        /// Sale.
        sale: u64,
    },
    /// Refused after it was queued.
    Rejected {
        /// `sold_out`, `already_bought`, `no_such_sale` or `discarded`.
        reason: String,
        /// Sale.
        sale: u64,
    },
    /// In the dead letters: the workers gave up; an operator replays or discards it.
    Held {
        /// Why the workers gave up.
        reason: String,
        /// Sale.
        sale: u64,
    },
}

/// An order, with the server's clock (`orders::order_json`).
#[derive(Debug, ToSchema)]
pub struct OrderView {
    /// The order.
    #[serde(flatten)]
    pub order: order_worker::db::Order,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// A sale's stock in the stock store.
#[derive(Debug, ToSchema)]
pub struct StockView {
    /// Units on sale.
    pub units: u64,
    /// Units left.
    pub left: u64,
    /// Users holding a unit.
    pub holders: u64,
}

/// One row of `GET /admin/api/sales`.
#[derive(Debug, ToSchema)]
pub struct AdminSaleView {
    /// The operator's view: `ended`, `paused`, `upcoming`, `sold_out` or `live`.
    pub state: String,
    /// The sale as the database holds it.
    pub sale: Sale,
    /// Its orders by status.
    pub orders: order_worker::db::OrderCounts,
    /// The stock store's figures; `null` when the store has none or cannot answer.
    pub stock: Option<StockView>,
}

/// `GET /admin/api/sales`.
#[derive(Debug, ToSchema)]
pub struct AdminSalesView {
    /// Every sale.
    pub sales: Vec<AdminSaleView>,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// The answer of a reconcile.
#[derive(Debug, ToSchema)]
pub struct ReconcileView {
    /// Sale.
    pub sale: u64,
    /// Units on sale.
    pub units: u64,
    /// Units left after the reset.
    pub left: u64,
    /// Users holding a unit after the reset.
    pub holders: u64,
    /// Present (true) when `force=true` reset a sale that was not at rest.
    pub forced: Option<bool>,
    /// With `forced`: what was pending.
    pub warning: Option<String>,
}

/// A dead letter.
#[derive(Debug, ToSchema)]
pub struct DeadLetterView {
    /// `orders` or `pay-deadlines`.
    pub topic: String,
    /// Its offset among the topic's dead letters (the handle for replay and discard).
    pub dead_offset: u64,
    /// The consumer group that gave up.
    pub group: String,
    /// Its offset in the original topic.
    pub original_offset: u64,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// Why.
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub dead_at_ms: u64,
    /// The message (UTF-8, lossy).
    pub payload: String,
}

/// `GET /admin/api/dead-letters`.
#[derive(Debug, ToSchema)]
pub struct DeadLettersView {
    /// At most 100 per topic.
    pub dead_letters: Vec<DeadLetterView>,
}

/// What a dead-letter action did: one of the two fields.
#[derive(Debug, ToSchema)]
pub struct DeadLetterDoneView {
    /// `replay`: the new offset in the original topic.
    pub replayed_at: Option<u64>,
    /// `discard`: the dead letter's offset.
    pub discarded: Option<u64>,
}

/// The operations, one documented stub per route and method, named after the handler.
/// Never called: `utoipa` reads their attributes.
#[allow(dead_code)]
pub mod ops {
    use super::*;
    use crate::dashboard::Snapshot;
    use crate::purchase::{Accepted, PurchaseBody};
    use crate::shop::{LoginBody, TokenBody};

    /// Sign in (identity only, no password).
    ///
    /// Sets `seckill_session` (the signed session, HttpOnly, a day) and `seckill_route` (the
    /// user's route hash nginx sends a person to one gateway by).
    #[utoipa::path(post, path = "/api/login", tag = "session", request_body = LoginBody,
        responses(
            (status = 200, description = "Signed in", body = LoginView,
                headers(("set-cookie" = String, description = "`seckill_session=…` and `seckill_route=…`"))),
            (status = 400, description = "`bad_request`: malformed body; `bad_name`: a name that is empty once trimmed, over 40 characters, or has control characters or `|`", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 429, description = "`throttled` (per IP), with `Retry-After`", body = ErrorBody),
        ))]
    pub fn login() {}

    /// Every sale, with its state and units left.
    #[utoipa::path(get, path = "/api/sales", tag = "sales",
        responses((status = 200, description = "The sales", body = SalesView)))]
    pub fn list_sales() {}

    /// One sale.
    #[utoipa::path(get, path = "/api/sales/{id}", tag = "sales",
        params(("id" = u64, Path, description = "Sale id")),
        responses(
            (status = 200, description = "The sale", body = SaleView),
            (status = 404, description = "`not_found`: unknown sale, or an id that is not a number", body = ErrorBody),
        ))]
    pub fn get_sale() {}

    /// A new captcha for this user and sale (valid 2 minutes, single use).
    #[utoipa::path(get, path = "/api/sales/{id}/captcha", tag = "purchase",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("kind" = Option<String>, Query, description = "`image` (default) or `work` (a proof-of-work check for browsers that cannot show or read the image)"),
        ),
        security(("session" = [])),
        responses(
            (status = 200, description = "A captcha", body = CaptchaView),
            (status = 400, description = "`bad_request`: `kind` is neither `image` nor `work`", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn new_captcha() {}

    /// A purchase token for the answered captcha (valid 60 s, single use, one live per user
    /// and sale).
    #[utoipa::path(post, path = "/api/sales/{id}/token", tag = "purchase",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("x-load-test-secret" = Option<String>, Header, description = "Load-test mode only: no captcha needed with the right secret"),
        ),
        request_body = TokenBody,
        security(("session" = [])),
        responses(
            (status = 200, description = "A token", body = TokenView),
            (status = 400, description = "`bad_request`: malformed body", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 403, description = "`bad_captcha`: wrong, reused or unknown captcha; `captcha_expired`: its time ran out", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`sale_paused`: an operator paused the sale", body = ErrorBody),
            (status = 410, description = "`sold_out`, `ended`, or `tokens_exhausted` (with `Retry-After`)", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn new_token() {}

    /// Buy one unit with a purchase token: queued durably, answered with a ticket to follow.
    #[utoipa::path(post, path = "/api/sales/{id}/purchase", tag = "purchase",
        params(("id" = u64, Path, description = "Sale id")),
        request_body = PurchaseBody,
        security(("session" = [])),
        responses(
            (status = 202, description = "Durably queued", body = Accepted),
            (status = 400, description = "`bad_request`: malformed body", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 403, description = "`bad_token`: invalid, expired, spent or replaced token", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`already_bought`: the buyer holds the sale's per-person limit; `sale_paused`: an operator paused the sale", body = ErrorBody),
            (status = 410, description = "`sold_out` or `ended`", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 425, description = "`not_started`, with `Retry-After`", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn purchase() {}

    /// How a purchase's ticket stands.
    #[utoipa::path(get, path = "/api/tickets/{ticket}", tag = "purchase",
        params(
            ("ticket" = String, Path, description = "The ticket (a UUID)"),
            ("receipt" = Option<String>, Query, description = "The purchase's receipt: any gateway can then answer while it waits"),
        ),
        responses(
            (status = 200, description = "The ticket's state", body = TicketView),
            (status = 404, description = "`not_found`: unknown ticket, not a UUID, or waiting at another gateway without its receipt", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn get_ticket() {}

    /// The signed-in user's order.
    #[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
        params(("id" = String, Path, description = "Order id (a UUID)")),
        security(("session" = [])),
        responses(
            (status = 200, description = "The order", body = OrderView),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown or someone else's order", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn get_order() {}

    /// Pay an order (simulated; no body needed). Paying a paid order again is a `200`.
    #[utoipa::path(post, path = "/api/orders/{id}/pay", tag = "orders",
        params(("id" = String, Path, description = "Order id (a UUID)")),
        security(("session" = [])),
        responses(
            (status = 200, description = "The order, paid", body = OrderView),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 403, description = "`cross_site`: sent by another site's page", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown or someone else's order", body = ErrorBody),
            (status = 409, description = "`order_cancelled`, `payment_window_closed`, or `conflict` (a database rule refused it)", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn pay_order() {}

    /// Create a sale: in the orders database first, then its stock.
    #[utoipa::path(post, path = "/admin/api/sales", tag = "admin",
        params(("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token")),
        request_body = crate::orders::CreateSaleBody,
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 201, description = "The sale as stored", body = Sale),
            (status = 422, description = "`confirmation_needed`: a price of 0 or a start in the past, without `\"confirm\": true`", body = ErrorBody),
            (status = 400, description = "`bad_request`: malformed body or an invalid sale", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 409, description = "`sale_exists`: the id is taken", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn create_sale() {}

    /// Every sale with its orders by status and its stock figures.
    #[utoipa::path(get, path = "/admin/api/sales", tag = "admin",
        params(("newest" = Option<u64>, Query, description = "Only the newest this many sales (1 to 10,000), highest ids first")),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "The sales", body = AdminSalesView),
            (status = 400, description = "`bad_request`: `newest` is not 1 to 10,000", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_sales() {}

    /// Reset a sale's stock to the database (only at rest, unless forced).
    #[utoipa::path(post, path = "/admin/api/sales/{id}/reconcile", tag = "admin",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("force" = Option<bool>, Query, description = "Reset even when the sale is not at rest"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "The new stock figures", body = ReconcileView),
            (status = 400, description = "`bad_request`: `force` is not true or false", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`not_at_rest`: purchases are pending", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_reconcile() {}

    /// The dead letters of the orders and pay-by topics.
    #[utoipa::path(get, path = "/admin/api/dead-letters", tag = "admin",
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "The dead letters", body = DeadLettersView),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_dead_letters() {}

    /// Replay (publish again for the group that gave up) or discard a dead letter.
    #[utoipa::path(post, path = "/admin/api/dead-letters/{topic}/{offset}/{action}", tag = "admin",
        params(
            ("topic" = String, Path, description = "`orders` or `pay-deadlines`"),
            ("offset" = u64, Path, description = "The dead letter's `dead_offset`"),
            ("action" = String, Path, description = "`replay` or `discard`"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "Done", body = DeadLetterDoneView),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown topic, letter or action", body = ErrorBody),
            (status = 422, description = "`would_fail_again`: a replay of a letter its consumers cannot read would be dead-lettered again at once", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_dead_letter_action() {}

    /// The dashboard's figures, sampled every second, with the history after `since_ms`.
    #[utoipa::path(get, path = "/admin/api/live", tag = "admin",
        params(("since_ms" = Option<u64>, Query, description = "Only history points after this time (ms since the Unix epoch)")),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "The figures", body = Snapshot),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn live() {}

    /// Sign out: clears the session and route cookies. Needs no session; refuses another
    /// site's page.
    #[utoipa::path(post, path = "/api/logout", tag = "session",
        responses(
            (status = 200, description = "Signed out", body = LogoutView,
                headers(("set-cookie" = String, description = "`seckill_session=; Max-Age=0` and `seckill_route=; Max-Age=0`"))),
            (status = 403, description = "`cross_site`: sent by another site's page", body = ErrorBody),
        ))]
    pub fn logout() {}

    /// The signed-in shopper's orders, newest first, from every shard.
    #[utoipa::path(get, path = "/api/orders", tag = "orders",
        security(("session" = [])),
        responses(
            (status = 200, description = "The orders", body = MyOrdersView),
            (status = 401, description = "`unauthorized`: no valid session", body = ErrorBody),
            (status = 429, description = "`throttled`, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn my_orders() {}

    /// Pause a sale: its tokens and purchases answer `409 sale_paused` until it is resumed.
    #[utoipa::path(post, path = "/admin/api/sales/{id}/pause", tag = "admin",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "Paused", body = SaleChangedView),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`sale_ended`: an ended sale cannot be paused", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_pause() {}

    /// Resume a paused sale.
    #[utoipa::path(post, path = "/admin/api/sales/{id}/resume", tag = "admin",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "Resumed", body = SaleChangedView),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`sale_ended`: an ended sale cannot be resumed", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_resume() {}

    /// End a sale now: its tokens and purchases answer `410 ended`; orders made stand.
    #[utoipa::path(post, path = "/admin/api/sales/{id}/end", tag = "admin",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "Ended", body = SaleChangedView),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`sale_ended`: already ended", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_end() {}

    /// Edit a sale before its start; its units are put on sale again whole.
    #[utoipa::path(patch, path = "/admin/api/sales/{id}", tag = "admin",
        params(
            ("id" = u64, Path, description = "Sale id"),
            ("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token"),
        ),
        request_body = crate::orders::EditSaleBody,
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "Edited", body = SaleChangedView),
            (status = 400, description = "`bad_request`: malformed body or a value out of range", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown sale", body = ErrorBody),
            (status = 409, description = "`sale_ended`, `sale_started` (edits only before the start) or `sale_has_orders`", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 422, description = "`confirmation_needed`: a price of 0 or a start in the past, without `\"confirm\": true`", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_edit() {}

    /// Find orders by order id, ticket or user id, on every shard.
    #[utoipa::path(get, path = "/admin/api/orders", tag = "admin",
        params(("q" = Option<String>, Query, description = "An order id, a ticket or a user id (at most 160 bytes)")),
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "The orders found", body = FoundOrdersView),
            (status = 400, description = "`bad_request`: `q` too long", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_find_orders() {}

    /// Replay or discard many dead letters of one topic: the ones named, or all listed.
    #[utoipa::path(post, path = "/admin/api/dead-letters/bulk", tag = "admin",
        params(("x-csrf-token" = Option<String>, Header, description = "With the admin cookie: the session's CSRF token")),
        request_body = crate::orders::BulkBody,
        security(("admin_bearer" = []), ("admin_cookie" = [])),
        responses(
            (status = 200, description = "What was done and what was refused", body = BulkDoneView),
            (status = 400, description = "`bad_request`: malformed body, an action other than replay or discard, or too many letters", body = ErrorBody),
            (status = 401, description = "`unauthorized`: no admin secret or cookie", body = ErrorBody),
            (status = 403, description = "`csrf`: cookie without the CSRF token or from another site", body = ErrorBody),
            (status = 404, description = "`not_found`: unknown topic", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
            (status = 429, description = "`throttled`: the admin-secret guess budget is empty, with `Retry-After`", body = ErrorBody),
        ))]
    pub fn admin_dead_letters_bulk() {}

    /// This description.
    #[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
        responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")))]
    pub fn openapi_json() {}
}

/// The gateway's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "seckill gateway",
        description = "The flash-sale gateway's JSON API. docs/API.md is the prose reference; this description is generated from the code and checked against the running gateway by Schemathesis. Times are ms since the Unix epoch. Every refusal is a status with an `ErrorBody`; waiting helps where `Retry-After` (seconds) is sent."
    ),
    paths(
        ops::login,
        ops::list_sales,
        ops::get_sale,
        ops::new_captcha,
        ops::new_token,
        ops::purchase,
        ops::get_ticket,
        ops::get_order,
        ops::pay_order,
        ops::create_sale,
        ops::admin_sales,
        ops::admin_reconcile,
        ops::admin_dead_letters,
        ops::admin_dead_letter_action,
        ops::live,
        ops::openapi_json,
        ops::logout,
        ops::my_orders,
        ops::admin_pause,
        ops::admin_resume,
        ops::admin_end,
        ops::admin_edit,
        ops::admin_find_orders,
        ops::admin_dead_letters_bulk,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Common),
    tags(
        (name = "session", description = "Signing in"),
        (name = "sales", description = "The sales on offer"),
        (name = "purchase", description = "Captcha, purchase token, purchase and ticket"),
        (name = "orders", description = "The shopper's orders and payment"),
        (name = "admin", description = "The operator's API: `Authorization: Bearer <admin secret>` or the dashboard's `admin` cookie (with `x-csrf-token` on anything but GET)"),
        (name = "meta", description = "This description"),
    )
)]
pub struct ApiDoc;

/// What every operation shares: the security schemes, and the answers any request may get
/// from the front service whatever its route.
#[derive(Debug)]
pub struct Common;

/// An error answer with the shared body.
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::SESSION_COOKIE_NAME,
                "The shopper's signed session, set by `POST /api/login`",
            ))),
        );
        components.add_security_scheme(
            "admin_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin secret (`GATEWAY_ADMIN_SECRET`); wrong guesses spend a global budget",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::extract::ADMIN_COOKIE_NAME,
                "The dashboard's sign-in (`POST /admin/login`); anything but GET also needs `x-csrf-token` and a same-site `Origin`",
            ))),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                r.entry("503".into()).or_insert_with(|| {
                    error_response(
                        "`overloaded` (too many requests in flight), `timeout` (slower than the request timeout), `unavailable` (a dependency did not answer), `busy`, or `outcome_unknown` (a purchase whose enqueue may have happened: `ticket` to follow); with `Retry-After`",
                    )
                });
                r.entry("413".into())
                    .or_insert_with(|| error_response("`too_large`: a body over the body limit"));
                if path != "/api/login" {
                    r.entry("421".into()).or_insert_with(|| {
                        error_response(
                            "`misdirected`: with `--route-cookie`, a valid session whose `seckill_route` is missing or another user's; send again with the cookie set",
                        )
                    });
                }
                // Where waiting helps, the answer says how long.
                for status in ["410", "425", "429", "503"] {
                    if let Some(RefOr::T(resp)) = r.get_mut(status) {
                        resp.headers.insert(
                            "retry-after".into(),
                            utoipa::openapi::header::HeaderBuilder::new()
                                .schema(
                                    utoipa::openapi::ObjectBuilder::new()
                                        .schema_type(utoipa::openapi::schema::Type::Integer)
                                        .minimum(Some(1)),
                                )
                                .description(Some(
                                    "Seconds to wait before trying again (sent where waiting helps)",
                                ))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// How one answer leads to the next operation (OpenAPI links: what a client, or
/// Schemathesis's stateful phase, can do with an answer): (path, method, status, target
/// operation id, its parameters as runtime expressions, its body).
type LinkSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

/// The links of the shopper's way through a sale and the admin's: a created sale is
/// viewed, bought and reconciled; a token is spent on a purchase; a purchase's ticket is
/// followed to its order, which is paid.
const LINKS: &[LinkSpec] = &[
    (
        "/admin/api/sales",
        "post",
        "201",
        "get_sale",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/admin/api/sales",
        "post",
        "201",
        "new_token",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/admin/api/sales",
        "post",
        "201",
        "admin_reconcile",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/api/sales/{id}/token",
        "post",
        "200",
        "purchase",
        &[("id", "$request.path.id")],
        Some("$response.body#/token"),
    ),
    (
        "/api/sales/{id}/purchase",
        "post",
        "202",
        "get_ticket",
        &[
            ("ticket", "$response.body#/ticket"),
            ("receipt", "$response.body#/receipt"),
        ],
        None,
    ),
    (
        "/api/tickets/{ticket}",
        "get",
        "200",
        "get_order",
        &[("id", "$response.body#/order_id")],
        None,
    ),
    (
        "/api/orders/{id}",
        "get",
        "200",
        "pay_order",
        &[("id", "$response.body#/id")],
        None,
    ),
];

/// Adds [`LINKS`] to the document's JSON (utoipa 5.5's `Link` would be written with
/// snake_case field names, `operation_id`, which no reader understands).
fn add_links(doc: &mut serde_json::Value) {
    for (path, method, status, target, params, body) in LINKS {
        let response = &mut doc["paths"][*path][*method]["responses"][*status];
        if !response.is_object() {
            continue;
        }
        let mut link = serde_json::json!({ "operationId": target });
        for (name, expr) in *params {
            link["parameters"][*name] = serde_json::json!(expr);
        }
        if let Some(token) = body {
            link["requestBody"] = serde_json::json!({ "token": token });
        }
        response["links"][*target] = link;
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        add_links(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

/// `GET /api/openapi.json`.
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (METHOD, path) of every operation in the document.
    fn operations() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// (METHOD, path) of every route of `routes.rs` under `/api/` and `/admin/api/`, read
    /// from its source: a `.route("PATH", …)` line and the `get(`/`post(`/… calls up to the
    /// next route. A new route needs nothing here, only its description.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("routes.rs");
        let mut out = BTreeSet::new();
        let mut rest = src;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(open) = rest.find('"') else { break };
            let Some(len) = rest[open + 1..].find('"') else {
                break;
            };
            let path = &rest[open + 1..open + 1 + len];
            let end = [".route(", ".fallback(", ".method_not_allowed_fallback("]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()
                .unwrap_or(rest.len());
            let handlers = &rest[open + 1 + len..end];
            if path.starts_with("/api/") || path.starts_with("/admin/api/") {
                for method in ["get", "post", "put", "delete", "patch"] {
                    let call = format!("{method}(");
                    let found = handlers.match_indices(&call).any(|(i, _)| {
                        i == 0
                            || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && handlers.as_bytes()[i - 1] != b'_'
                                && handlers.as_bytes()[i - 1] != b':'
                    });
                    if found {
                        out.insert((method.to_uppercase(), path.to_string()));
                    }
                }
            }
        }
        out
    }

    /// (METHOD, path) of every route docs/API.md names: a backticked `METHOD /path` (query
    /// strings, `[?…]` and alternatives like `/discard` after a route are not routes of
    /// their own).
    fn documented() -> BTreeSet<(String, String)> {
        let md = include_str!("../../docs/API.md");
        // Without the fenced examples, whose ``` fences would throw the pairing of
        // backticks off (a code span may run over a line break, so pairs are counted over
        // the whole text).
        let mut fenced = false;
        let prose: String = md
            .lines()
            .filter(|l| {
                if l.trim_start().starts_with("```") {
                    fenced = !fenced;
                    return false;
                }
                !fenced
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut out = BTreeSet::new();
        for piece in prose.split('`').skip(1).step_by(2) {
            let Some((method, path)) = piece.split_once(' ') else {
                continue;
            };
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method) {
                continue;
            }
            let path = path.split(['[', '?', ' ']).next().unwrap_or("");
            if path.starts_with("/api/") || path.starts_with("/admin/api/") {
                out.insert((method.to_string(), path.to_string()));
            }
        }
        out
    }

    /// docs/API.md names the dead-letter action's path by example
    /// (`…/{dead_offset}/replay`, "or `/discard`"); the route is `…/{offset}/{action}`.
    fn normalise(ops: BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
        ops.into_iter()
            .map(|(m, p)| {
                let p = p
                    .replace("{dead_offset}/replay", "{offset}/{action}")
                    .replace("{dead_offset}/discard", "{offset}/{action}");
                (m, p)
            })
            .collect()
    }

    #[test]
    fn openapi_covers_every_api_route() {
        let routed = routed();
        // The parser found the routes (a parser that finds nothing would pass).
        assert!(
            routed.contains(&("POST".into(), "/api/sales/{id}/purchase".into())),
            "{routed:?}"
        );
        assert!(
            routed.contains(&("GET".into(), "/admin/api/sales".into())),
            "{routed:?}"
        );
        let described = operations();
        let missing: Vec<_> = routed.difference(&described).collect();
        assert!(
            missing.is_empty(),
            "routes without a description: {missing:?} (write a stub in `openapi::ops` and name it in `ApiDoc`'s `paths(...)`)"
        );
        let stale: Vec<_> = described.difference(&routed).collect();
        assert!(stale.is_empty(), "described routes not routed: {stale:?}");
    }

    #[test]
    fn openapi_matches_api_md() {
        let documented = normalise(documented());
        let described = operations();
        assert!(documented.len() >= 10, "{documented:?}");
        let missing: Vec<_> = described.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "operations docs/API.md does not name: {missing:?} (name each as `METHOD /path` there)"
        );
        let undescribed: Vec<_> = documented.difference(&described).collect();
        assert!(
            undescribed.is_empty(),
            "routes of docs/API.md without a description: {undescribed:?} (write a stub in `openapi::ops` and name it in `ApiDoc`'s `paths(...)`)"
        );
    }

    /// Every error code the gateway's source sends (the first string literal of an
    /// `ApiError::new(…)` or `ApiError::unavailable(…)`) is listed in the description of
    /// the error body, so a client generated from it knows every code.
    #[test]
    fn every_error_code_is_listed_in_the_error_body() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        let listed: BTreeSet<String> =
            doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["description"]
                .as_str()
                .expect("the codes")
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
        // `/readyz`'s code: not an operation of the JSON API.
        let outside_the_api = ["not_ready"];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut sent = BTreeSet::new();
        for entry in std::fs::read_dir(&src).expect("src") {
            let path = entry.expect("entry").path();
            // This file names the calls in its own test.
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for call in ["ApiError::new(", "ApiError::unavailable("] {
                for (at, _) in text.match_indices(call) {
                    let rest = &text[at + call.len()..];
                    let Some(open) = rest.find('"') else { continue };
                    // Only a literal code: the status before it, nothing else.
                    let before = rest[..open].trim();
                    let before = before.strip_suffix(',').unwrap_or(before).trim();
                    let status_only = before
                        .strip_prefix("StatusCode::")
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
                    if !(before.is_empty() || status_only) {
                        continue;
                    }
                    let Some(len) = rest[open + 1..].find('"') else {
                        continue;
                    };
                    sent.insert(rest[open + 1..open + 1 + len].to_string());
                }
            }
        }
        assert!(
            sent.contains("sale_exists") && sent.contains("throttled"),
            "the scan found the codes: {sent:?}"
        );
        let missing: Vec<_> = sent
            .iter()
            .filter(|c| !listed.contains(*c) && !outside_the_api.contains(&c.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "codes the gateway sends that `ErrorBody`'s description does not list: {missing:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("503"), "{method} {path}");
                for (status, r) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            r["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        // Every link leads to an operation of the document.
        let ids: BTreeSet<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("item").values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let mut links = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for op in item.as_object().expect("item").values() {
                for r in op["responses"].as_object().expect("responses").values() {
                    for (name, link) in r["links"].as_object().into_iter().flatten() {
                        let target = link["operationId"].as_str().unwrap_or_default();
                        assert!(ids.contains(target), "{path}: link {name} to {target}");
                        links += 1;
                    }
                }
            }
        }
        assert_eq!(links, LINKS.len());
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("schemes");
        assert_eq!(
            schemes["session"]["name"],
            crate::session::SESSION_COOKIE_NAME
        );
        assert_eq!(schemes["admin_bearer"]["scheme"], "bearer");
    }
}
