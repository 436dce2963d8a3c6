//! One template struct per page (rendered with [`askama::Template::render`]) and the rows
//! they show. The gateway fills them; nothing here reads state.

use askama::Template;

use crate::assets::Assets;
use crate::format;

/// Where a sale is in its life, as the storefront shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleState {
    /// Not started.
    Upcoming,
    /// Taking purchases.
    Live,
    /// No units left (approximately: from the stock store).
    SoldOut,
    /// Past its end time.
    Ended,
}

impl SaleState {
    /// The state at `now_ms` of a sale starting at `starts_at_ms`, ending at `ends_at_ms`
    /// (if it ends), with `units_left` (if known).
    pub fn at(
        now_ms: u64,
        starts_at_ms: u64,
        ends_at_ms: Option<u64>,
        units_left: Option<u64>,
    ) -> SaleState {
        if now_ms < starts_at_ms {
            SaleState::Upcoming
        } else if ends_at_ms.is_some_and(|e| now_ms >= e) {
            SaleState::Ended
        } else if units_left == Some(0) {
            SaleState::SoldOut
        } else {
            SaleState::Live
        }
    }

    /// For scripts and tests: `upcoming`, `live`, `sold_out`, `ended`.
    pub fn code(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::Live => "live",
            SaleState::SoldOut => "sold_out",
            SaleState::Ended => "ended",
        }
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::Live => "live",
            SaleState::SoldOut => "sold out",
            SaleState::Ended => "ended",
        }
    }
}

/// A sale as the storefront shows it.
#[derive(Debug, Clone)]
pub struct SaleView {
    /// Id.
    pub id: u64,
    /// What is sold.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Units on sale.
    pub units: u64,
    /// Units left, approximately (the stock store's figure), if known.
    pub units_left: Option<u64>,
    /// Start, ms since the epoch.
    pub starts_at_ms: u64,
    /// End, if the sale ends.
    pub ends_at_ms: Option<u64>,
    /// How long a buyer has to pay, ms.
    pub pay_window_ms: u64,
    /// State at render time.
    pub state: SaleState,
}

impl SaleView {
    /// `19.99`.
    pub fn price(&self) -> String {
        format::price(self.price_cents)
    }

    /// Units left for people: `1,234` or `?`.
    pub fn left(&self) -> String {
        self.units_left
            .map_or_else(|| "?".into(), format::thousands)
    }

    /// Start time, UTC.
    pub fn starts(&self) -> String {
        format::utc(self.starts_at_ms)
    }

    /// "Starts" before the start, "Started" after it (never "Starts" with a time in the
    /// past).
    pub fn start_verb(&self) -> &'static str {
        if self.state == SaleState::Upcoming {
            "Starts"
        } else {
            "Started"
        }
    }

    /// End time as a data attribute (empty: none).
    pub fn ends_attr(&self) -> String {
        self.ends_at_ms.map(|e| e.to_string()).unwrap_or_default()
    }

    /// End time, UTC, or empty.
    pub fn ends(&self) -> String {
        self.ends_at_ms.map(format::utc).unwrap_or_default()
    }

    /// The pay window for people.
    pub fn pay_window(&self) -> String {
        format::duration(self.pay_window_ms)
    }
}

/// `GET /`: the sale list.
#[derive(Debug, Template)]
#[template(path = "sales.html")]
pub struct SalesPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The signed-in shopper, if any.
    pub user: Option<String>,
    /// The sales, by id.
    pub sales: Vec<SaleView>,
    /// The currency of the prices (`EUR`).
    pub currency: String,
}

/// `GET /sales/{id}`: a sale and its purchase flow.
#[derive(Debug, Template)]
#[template(path = "sale.html")]
pub struct SalePage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The signed-in shopper, if any.
    pub user: Option<String>,
    /// The sale.
    pub sale: SaleView,
    /// The currency of the price (`EUR`).
    pub currency: String,
    /// Whether the proof-of-work check is offered beside the image (`--captcha-work`).
    pub captcha_work: bool,
}

/// An order as its buyer sees it.
#[derive(Debug, Clone)]
pub struct OrderView {
    /// Order id.
    pub id: String,
    /// The ticket it came from.
    pub ticket: String,
    /// Sale id.
    pub sale: u64,
    /// Sale name, if the sale is known.
    pub sale_name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// `pending`, `paid` or `cancelled`.
    pub status: String,
    /// Created, ms.
    pub created_ms: u64,
    /// Pay-by time, ms.
    pub pay_by_ms: u64,
    /// Paid at, ms.
    pub paid_ms: Option<u64>,
    /// Cancelled at, ms.
    pub cancelled_ms: Option<u64>,
}

impl OrderView {
    /// `19.99`.
    pub fn price(&self) -> String {
        format::price(self.price_cents)
    }

    /// Pay-by time, UTC.
    pub fn pay_by(&self) -> String {
        format::utc(self.pay_by_ms)
    }

    /// Whether the Pay button is shown at `now_ms`.
    pub fn payable(&self, now_ms: u64) -> bool {
        self.status == "pending" && now_ms < self.pay_by_ms
    }

    /// Created, UTC.
    pub fn created(&self) -> String {
        format::utc(self.created_ms)
    }

    /// The status for people, short (a list's column).
    pub fn status_short(&self) -> &str {
        match self.status.as_str() {
            "pending" => "waiting for payment",
            "paid" => "paid",
            "cancelled" => "cancelled (not paid in time)",
            other => other,
        }
    }

    /// The status for people.
    pub fn status_label(&self) -> &str {
        match self.status.as_str() {
            "pending" => "waiting for payment",
            "paid" => "paid",
            "cancelled" => "cancelled: not paid in time, the unit went back on sale",
            other => other,
        }
    }
}

/// `GET /orders/{id}`.
#[derive(Debug, Template)]
#[template(path = "order.html")]
pub struct OrderPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The signed-in shopper.
    pub user: Option<String>,
    /// The order.
    pub order: OrderView,
    /// The currency of the price (`EUR`).
    pub currency: String,
}

/// `GET /orders`: the signed-in shopper's orders, newest first.
#[derive(Debug, Template)]
#[template(path = "my_orders.html")]
pub struct MyOrdersPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The signed-in shopper.
    pub user: Option<String>,
    /// Their orders, newest first (at most the look-up's limit).
    pub orders: Vec<OrderView>,
    /// Whether every database shard answered (if not, some orders may be missing).
    pub complete: bool,
    /// Most orders listed.
    pub limit: usize,
    /// The currency of the prices (`EUR`).
    pub currency: String,
}

/// A page saying what went wrong (404 and friends).
#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The signed-in shopper, if any.
    pub user: Option<String>,
    /// Heading.
    pub title: String,
    /// What happened.
    pub message: String,
}

/// `GET /admin/login` (and every admin page asked for without credentials, with 401).
#[derive(Debug, Template)]
#[template(path = "admin_login.html")]
pub struct AdminLoginPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
}

/// A sale on the dashboard.
#[derive(Debug, Clone)]
pub struct AdminSaleRow {
    /// The sale.
    pub sale: SaleView,
    /// Units left in the database.
    pub db_left: u64,
    /// Units left in the stock store, if known.
    pub store_left: Option<u64>,
    /// Orders waiting for payment.
    pub pending: u64,
    /// Orders paid.
    pub paid: u64,
    /// Orders cancelled.
    pub cancelled: u64,
    /// The sale's token factor (its own, or the gateway's).
    pub token_factor: String,
    /// Units per person.
    pub per_user_limit: u32,
    /// The operator's state: `live`, `upcoming`, `paused`, `sold_out`, `ended` (the
    /// gateway's `sales::admin_state`).
    pub admin_state: &'static str,
}

impl AdminSaleRow {
    /// Store figure for people.
    pub fn store(&self) -> String {
        self.store_left
            .map_or_else(|| "?".into(), format::thousands)
    }

    /// The operator's state for people.
    pub fn state_label(&self) -> String {
        self.admin_state.replace('_', " ")
    }

    /// Whether the sale can be paused (not ended, not paused).
    pub fn can_pause(&self) -> bool {
        !matches!(self.admin_state, "ended" | "paused")
    }

    /// Whether the sale can be resumed (paused).
    pub fn can_resume(&self) -> bool {
        self.admin_state == "paused"
    }

    /// Whether the sale can be ended (not ended yet).
    pub fn can_end(&self) -> bool {
        self.admin_state != "ended"
    }

    /// Whether the sale can be edited (not started, not ended).
    pub fn can_edit(&self, now_ms: &u64) -> bool {
        self.admin_state != "ended" && *now_ms < self.sale.starts_at_ms
    }
}

/// `GET /admin`: the dashboard.
#[derive(Debug, Template)]
#[template(path = "admin_dashboard.html")]
pub struct AdminDashboard<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session, for the forms.
    pub csrf: String,
    /// Sales.
    pub sales: Vec<AdminSaleRow>,
    /// Outcome of the last action, if any.
    pub notice: Option<String>,
    /// Error of the last action, if any.
    pub error: Option<String>,
    /// Suggested id of the next sale.
    pub next_id: u64,
    /// The gateway's default token factor.
    pub default_token_factor: String,
    /// The create-sale form's values as last typed (kept after an error); empty fields on
    /// a first visit.
    pub form: crate::admin_views::SaleFormValues,
    /// What the operator must confirm before the sale is created (shown with a checkbox).
    pub confirm: Vec<String>,
}

/// A dead letter on the admin's list.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    /// Topic it was dead-lettered from.
    pub topic: String,
    /// Its offset in the dead-letter topic.
    pub dead_offset: u64,
    /// The consumer group that gave up on it.
    pub group: String,
    /// Its offset in the topic.
    pub original_offset: u64,
    /// Deliveries attempted.
    pub attempts: u32,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When, ms.
    pub dead_at_ms: u64,
    /// The payload, as text, cut to a readable length.
    pub payload: String,
}

impl DeadLetterRow {
    /// When, UTC.
    pub fn when(&self) -> String {
        format::utc(self.dead_at_ms)
    }
}

/// `GET /admin/dead-letters`.
#[derive(Debug, Template)]
#[template(path = "admin_dead_letters.html")]
pub struct DeadLettersPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session.
    pub csrf: String,
    /// The dead letters.
    pub letters: Vec<DeadLetterRow>,
    /// Outcome of the last action, if any.
    pub notice: Option<String>,
    /// Error of the last action, if any.
    pub error: Option<String>,
    /// The topics dead letters come from (for "all of a topic").
    pub topics: Vec<String>,
}

/// `GET /admin/dead-letters/{topic}/{offset}/{action}`: "are you sure?".
#[derive(Debug, Template)]
#[template(path = "admin_confirm.html")]
pub struct ConfirmPage<'a> {
    /// Asset URLs.
    pub assets: &'a Assets,
    /// The server's clock at render time.
    pub server_time_ms: u64,
    /// The CSRF token of the admin's session.
    pub csrf: String,
    /// `replay` or `discard`.
    pub action: String,
    /// The letter.
    pub letter: DeadLetterRow,
}

impl ConfirmPage<'_> {
    /// What the action does, for people.
    pub fn consequence(&self) -> &'static str {
        if self.action == "replay" {
            "The message goes back into its topic and the workers try it again."
        } else {
            "The message is deleted for good. A purchase is first recorded as rejected (discarded) and its unit goes back on sale."
        }
    }
}
