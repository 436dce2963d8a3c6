//! The browser pages of the flash-sale system: the storefront (sale list, sale page with
//! the purchase flow, order page with payment) and the admin dashboard (sign-in, live
//! figures and chart, sales, dead letters), as askama templates with small vanilla
//! JavaScript and CSS. No framework, no build step, no CDN.
//!
//! This crate only renders: the gateway's handlers fill the view structs of [`views`] from
//! its state and serve the results, and serve [`assets`] under content-hashed names. The
//! pages' routes, element ids and caching rules are written down in `docs/WEB.md`; the
//! scripts and the browser tests rely on those ids.
//!
//! Modules:
//! - [`views`]: one template struct per page, and the rows they show.
//! - [`admin_views`]: the operator's pages beyond the dashboard (edit a sale, confirm an
//!   action on a sale, order look-up, bulk dead-letter confirmation) and the create/edit
//!   form's values.
//! - [`assets`]: the CSS and JavaScript, embedded, with content-hashed URLs and ETags.
//! - [`format`](mod@format): prices, counts and times as people read them.

pub mod admin_views;
pub mod assets;
pub mod format;
pub mod views;

pub use askama::Template;
