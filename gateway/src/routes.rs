//! The router: every route of the gateway and the handler behind it, and nothing else.
//! Only [`crate::front`] (and through it `serve` and the system) uses it.

use axum::Router;
use axum::routing::{get, patch, post};

use crate::state::Shared;
use crate::{admin, health, orders, pages, purchase, shop};

/// The routes and handlers, without the front service (limits, metrics).
pub fn routes(state: Shared) -> Router {
    Router::new()
        .route("/api/login", post(shop::login))
        .route("/api/logout", post(shop::logout))
        .route("/api/orders", get(shop::my_orders))
        .route("/api/sales", get(shop::list_sales))
        .route("/api/sales/{id}", get(shop::get_sale))
        .route("/api/sales/{id}/captcha", get(shop::new_captcha))
        .route("/api/sales/{id}/token", post(shop::new_token))
        .route("/api/sales/{id}/purchase", post(purchase::purchase))
        .route("/api/tickets/{ticket}", get(shop::get_ticket))
        .route("/api/orders/{id}", get(orders::get_order))
        .route("/api/orders/{id}/pay", post(orders::pay_order))
        .route("/api/openapi.json", get(crate::openapi::openapi_json))
        .route(
            "/admin/api/sales",
            post(orders::create_sale).get(orders::admin_sales),
        )
        .route(
            "/admin/api/sales/{id}/reconcile",
            post(orders::admin_reconcile),
        )
        .route("/admin/api/sales/{id}", patch(orders::admin_edit))
        .route("/admin/api/sales/{id}/pause", post(orders::admin_pause))
        .route("/admin/api/sales/{id}/resume", post(orders::admin_resume))
        .route("/admin/api/sales/{id}/end", post(orders::admin_end))
        .route("/admin/api/orders", get(orders::admin_find_orders))
        .route(
            "/admin/api/dead-letters/bulk",
            post(orders::admin_dead_letters_bulk),
        )
        .route("/admin/api/dead-letters", get(orders::admin_dead_letters))
        .route(
            "/admin/api/dead-letters/{topic}/{offset}/{action}",
            post(orders::admin_dead_letter_action),
        )
        .route("/", get(pages::sales_page))
        .route("/sales/{id}", get(pages::sale_page))
        .route("/orders/{id}", get(pages::order_page))
        .route("/orders", get(pages::my_orders_page))
        .route("/static/{file}", get(pages::static_asset))
        .route("/admin/login", get(admin::login_form).post(admin::login))
        .route("/admin/logout", post(admin::logout))
        .route("/admin", get(admin::dashboard))
        .route("/admin/", get(admin::dashboard))
        .route("/admin/sales", post(admin::create_sale))
        .route("/admin/dead-letters", get(admin::dead_letters))
        .route(
            "/admin/dead-letters/{topic}/{offset}/{action}",
            get(admin::confirm_dead_letter).post(admin::act_on_dead_letter),
        )
        .route("/admin/api/live", get(admin::live))
        .route("/admin/orders", get(admin::orders_page))
        .route(
            "/admin/sales/{id}/edit",
            get(admin::edit_sale_form).post(admin::edit_sale),
        )
        .route(
            "/admin/sales/{id}/{action}",
            get(admin::confirm_sale_action).post(admin::act_on_sale),
        )
        .route("/admin/dead-letters/bulk", post(admin::dead_letters_bulk))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .with_state(state)
}
