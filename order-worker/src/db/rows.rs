//! The rows the batch statements read and write, shared by the statements that differ by
//! backend (`dialect`) and the operations that use them (`decide`, `cancel`): defined
//! here, below both, so that neither imports the other's module.

/// A pending order to insert.
pub(crate) struct NewOrder {
    pub(crate) id: String,
    pub(crate) ticket: String,
    pub(crate) sale: i64,
    pub(crate) user: String,
    pub(crate) price_cents: i64,
    pub(crate) pay_by_ms: i64,
    /// Which of the buyer's places (0..per_user_limit) it takes: at most one active order
    /// per (sale, user, slot).
    pub(crate) slot: i32,
}

/// An outcome to insert.
pub(crate) struct NewOutcome<'a> {
    pub(crate) ticket: &'a str,
    pub(crate) sale: i64,
    pub(crate) user: &'a str,
    pub(crate) order_id: Option<String>,
    pub(crate) reason: Option<&'static str>,
}

/// A sale's terms as a batch decides against them, read with the sale's row locked.
pub(crate) struct SaleTerms {
    /// Units not taken by an active order.
    pub(crate) units_left: i64,
    /// Price of an order, cents.
    pub(crate) price_cents: i64,
    /// How long a buyer has to pay, ms.
    pub(crate) pay_window_ms: i64,
    /// Units one person may hold (active orders per user).
    pub(crate) per_user_limit: i64,
}

/// An order cancelled by [`OrdersDb::cancel_due`](super::OrdersDb::cancel_due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The order.
    pub order_id: String,
    /// Its sale.
    pub sale: u64,
    /// Its buyer (whose unit goes back on sale).
    pub user: String,
    /// Its ticket (the tag of the buyer's reservation in the stock store).
    pub ticket: String,
}
