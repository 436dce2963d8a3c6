//! The flash-sale HTTP gateway (axum): the front door. It turns a flood of purchase
//! attempts into at most one durable queue message per unit on sale, answering most
//! refusals from memory.
//!
//! A purchase goes: sale known, started, not flagged sold out (from memory) → valid session
//! → throttle → valid purchase token → single-use spend in the token ledger → stock
//! reservation (`inventory`) → durable publish to the queue (the ticket is the message id)
//! → `202 {ticket, position}`. A publish refused for certain releases the reservation and
//! answers 503; one that may have been stored keeps it and answers 503 `outcome_unknown`
//! with the ticket.
//!
//! Modules:
//! - [`app`]: the router, shared state and handlers.
//! - [`session`]: HMAC-signed session cookies.
//! - [`token`]: HMAC purchase tokens.
//! - [`ledger`]: live tokens per sale: the token budget and the single-use rule, in
//!   process or in Redis.
//! - [`captcha`]: captcha images and their hashed, single-use answers.
//! - [`throttle`]: per-user and per-IP rate limits and the repeat-purchase rule.
//! - [`sales`]: the in-memory copy of the database's sales; [`tickets`]: purchases
//!   waiting in the queue (decided ones are read from the orders database).
//! - [`orders`]: orders and payment, and the admin's sales, reconciliation and dead letters.
//! - [`sync`]: catalogue refresh, ticket progress and stock reconciliation with the
//!   database.
//! - [`pages`]: the storefront's HTML pages (templates of the `web` crate) and the
//!   content-hashed static assets; [`admin`]: the admin dashboard's pages, its cookie
//!   sign-in and CSRF protection; [`live`]: the dashboard's figures, sampled every second.
//! - [`error`]: the JSON error type.
//! - [`publisher`]: batches accepted purchases into `publish_each` calls.

pub mod admin;
pub mod app;
pub mod captcha;
pub mod error;
pub mod ledger;
pub mod live;
pub mod orders;
pub mod pages;
pub mod publisher;
pub mod sales;
pub mod session;
pub mod sync;
pub mod throttle;
pub mod tickets;
pub mod token;
