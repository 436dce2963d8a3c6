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
//! Modules, by layer. A module imports only from the layers below it (handlers may also use
//! each other's helpers, in one direction); nothing imports upwards, so there is no import
//! circle:
//!
//! 1. Leaves, which know nothing of HTTP handlers or of the shared state:
//!    - [`config`]: [`config::GatewayConfig`] and [`config::ServeLimits`].
//!    - [`error`]: the JSON error type and its conversions from the domain errors.
//!    - [`metrics`]: the counters behind `/metrics` and their exposition.
//!    - [`session`]: HMAC-signed session cookies and the admin's cookie key;
//!      [`token`]: HMAC purchase tokens; [`ledger`]: live tokens per sale (the token
//!      budget and the single-use rule, in process or in Redis); [`captcha`]: captcha
//!      images and their hashed, single-use answers; [`throttle`]: per-user and per-IP rate
//!      limits and the repeat-purchase rule; [`sales`]: the in-memory copy of the
//!      database's sales; [`tickets`]: purchases waiting in the queue;
//!      [`publisher`]: batches accepted purchases into `publish_each` calls;
//!      [`dashboard`]: the dashboard's figures and their history (data only);
//!      [`guard`]: the global budget of admin-secret guesses; [`secrets`]: secrets from
//!      a flag, a variable or a file, and what `--production` asks of them;
//!      [`proxy`]: the trusted proxies, the client's address from `X-Forwarded-For`,
//!      and the route cookie nginx hashes on.
//! 2. [`state`]: [`state::AppState`], what every handler shares (its clock, a
//!    `queue::Clock`, is the only time the handlers read), and the small shared structures
//!    it holds (running purchases, the workers' progress, reconciliation).
//! 3. [`extract`]: the extractors (client address, sale id, JSON body, session user, admin)
//!    and the admin's authentication rules; imports `state` and the leaves.
//! 4. Handlers, which take state and extractors from `state` and `extract` (and may use
//!    each other's helpers, never the router): [`shop`]: login, sales, captchas, tokens
//!    and tickets; [`purchase`]: the purchase as named steps; [`orders`]: orders and
//!    payment, and the admin's sales, reconciliation and dead letters; [`pages`]: the
//!    storefront's HTML pages (templates of the `web` crate) and the content-hashed static
//!    assets; [`admin`]: the admin dashboard's pages, its cookie sign-in and CSRF protection;
//!    [`live`]: samples the dashboard's figures every second; [`sync`]: catalogue refresh,
//!    ticket progress and stock reconciliation with the database; [`health`]: `/readyz`
//!    and `/metrics`; [`openapi`]: the API's OpenAPI description, served at
//!    `/api/openapi.json` (operations declared beside it, schemas on the handlers' types).
//! 5. [`routes`]: the router, which imports the handlers; only [`front`] imports it.
//! 6. [`front`]: the front service (in-flight cap, timeout, body limit, the client's
//!    address behind trusted proxies, the route cookie's 421, metrics, and the purchase's
//!    and the token's refusals on public facts answered without the router, by
//!    [`purchase`]'s own checks) and
//!    `serve` (hyper's HTTP/1 with header-read and idle timeouts and a connection cap).
//! 7. [`system`]: the one assembly of the whole system (queue, database, stock, state,
//!    crew, listener) and its clean shutdown; the binaries, the load tests and the tests
//!    build through it.
//!
//! Every item has one home (the old `app` module, which held them all, is gone).

pub mod admin;
pub mod captcha;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod front;
pub mod guard;
pub mod health;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod pages;
pub mod proxy;
pub mod publisher;
pub mod purchase;
pub mod routes;
pub mod sales;
pub mod secrets;
pub mod session;
pub mod shop;
pub mod state;
pub mod sync;
pub mod system;
pub mod throttle;
pub mod tickets;
pub mod token;

pub use system::{System, SystemConfig};
