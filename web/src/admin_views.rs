//! The operator's pages beyond the dashboard: edit a sale before its start, confirm an
//! action on a sale (end, reconcile, pause, resume), look orders up by id, ticket or user,
//! and confirm a bulk action on dead letters; and [`SaleFormValues`], the create/edit
//! form's fields as typed, so a form refused for an error comes back filled in.

use askama::Template;

use crate::assets::Assets;
use crate::format;
use crate::views::DeadLetterRow;

/// The create/edit-sale form's fields, as typed (all text: a refused form shows exactly
/// what was typed, not a re-formatted value).
#[derive(Debug, Clone, Default)]
pub struct SaleFormValues {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Price, as typed (`19.99`).
    pub price: String,
    /// Units.
    pub units: String,
    /// Start, local `YYYY-MM-DDTHH:MM[:SS]`.
    pub starts_at: String,
    /// Start as ms, from the page's script (or the server, on the edit page).
    pub starts_at_ms: String,
    /// Or: seconds from now.
    pub starts_in_s: String,
    /// Seconds after the start when it ends.
    pub ends_in_s: String,
    /// Pay window, seconds.
    pub pay_window_s: String,
    /// Units per person.
    pub per_user_limit: String,
    /// Stock buckets.
    pub stock_buckets: String,
    /// Token factor.
    pub token_factor: String,
}

impl SaleFormValues {
    /// Whether the form holds what an operator typed (shown again after an error), rather
    /// than a first visit's empty fields.
    pub fn typed(&self) -> bool {
        !(self.name.is_empty() && self.price.is_empty() && self.units.is_empty())
    }

    /// A field's value, or `default` when it is empty (a first visit).
    pub fn or<'a>(&'a self, value: &'a str, default: &'a str) -> &'a str {
        if value.is_empty() { default } else { value }
    }
}

/// `GET /admin/sales/{id}/edit`: the edit form of a sale not started yet.
#[derive(Debug, Template)]
#[template(path = "admin_sale_edit.html")]
pub struct AdminEditSalePage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session.
    pub csrf: String,
    /// The sale's id.
    pub id: u64,
    /// The form's values (the sale's, or as typed after an error).
    pub form: SaleFormValues,
    /// Error of the last attempt, if any.
    pub error: Option<String>,
    /// What the operator must confirm (shown with a checkbox).
    pub confirm: Vec<String>,
}

/// `GET /admin/sales/{id}/{action}`: "are you sure?" for an action on a sale.
#[derive(Debug, Template)]
#[template(path = "admin_sale_confirm.html")]
pub struct AdminSaleConfirmPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session.
    pub csrf: String,
    /// The sale's id.
    pub id: u64,
    /// The sale's name.
    pub name: String,
    /// `end`, `reconcile`, `pause` or `resume`.
    pub action: String,
    /// What the action does, for people.
    pub consequence: String,
    /// For a reconcile: why the sale is not at rest, if it is not (a reset needs "force").
    pub unsettled: Option<String>,
}

/// An order on the look-up page.
#[derive(Debug, Clone)]
pub struct AdminOrderRow {
    /// Order id.
    pub id: String,
    /// Ticket (request id).
    pub ticket: String,
    /// Sale.
    pub sale: u64,
    /// Buyer.
    pub user: String,
    /// Price, cents.
    pub price_cents: u64,
    /// `pending`, `paid` or `cancelled`.
    pub status: String,
    /// Created, ms.
    pub created_ms: u64,
    /// Pay by, ms.
    pub pay_by_ms: u64,
}

impl AdminOrderRow {
    /// `19.99`.
    pub fn price(&self) -> String {
        format::price(self.price_cents)
    }

    /// Created, UTC.
    pub fn created(&self) -> String {
        format::utc(self.created_ms)
    }

    /// Pay by, UTC.
    pub fn pay_by(&self) -> String {
        format::utc(self.pay_by_ms)
    }
}

/// `GET /admin/orders?q=`: the order look-up.
#[derive(Debug, Template)]
#[template(path = "admin_orders.html")]
pub struct AdminOrdersPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session (the header's sign-out form).
    pub csrf: String,
    /// What was looked up (trimmed; empty: nothing yet).
    pub query: String,
    /// The orders found, newest first.
    pub orders: Vec<AdminOrderRow>,
    /// A ticket's outcome in words, when the query is a decided ticket.
    pub outcome: Option<String>,
    /// Error of the look-up, if any.
    pub error: Option<String>,
    /// Most orders shown.
    pub limit: usize,
}

/// `POST /admin/dead-letters/bulk` before it is confirmed: what would be done.
#[derive(Debug, Template)]
#[template(path = "admin_bulk_confirm.html")]
pub struct AdminBulkConfirmPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session.
    pub csrf: String,
    /// `replay` or `discard`.
    pub action: String,
    /// The letters it would touch.
    pub letters: Vec<DeadLetterRow>,
}

impl AdminBulkConfirmPage<'_> {
    /// What the action does, for people.
    pub fn consequence(&self) -> &'static str {
        if self.action == "replay" {
            "Each message goes back into its topic and the workers try it again. A message its consumers cannot read is left in the dead letters and said so."
        } else {
            "Each message is deleted for good. A purchase is first recorded as rejected (discarded) and its unit goes back on sale."
        }
    }
}
