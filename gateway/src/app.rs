//! The old home of the router, the state and the handlers, kept as a façade so that callers
//! of `gateway::app::…` keep working: everything here is re-exported from the module that
//! owns it now ([`crate::config`], [`crate::state`], [`crate::extract`], [`crate::front`],
//! [`crate::metrics`], [`crate::purchase`], [`crate::orders`]). New code should use those.

pub use crate::config::{GatewayConfig, LOAD_TEST_HEADER, ServeLimits};
pub use crate::extract::{Admin, BodyLimit, ClientIp, JsonBody, SaleIdPath, SessionUser};
pub use crate::front::{
    Front, HOUSEKEEPING_PERIOD, MakeFront, SYNC_ROUND_TIMEOUT, app, app_with_limits, serve,
};
pub use crate::metrics::{CrewMetrics, GatewayMetrics, ROUTES};
pub use crate::orders::create_sale_in;
pub use crate::purchase::PUBLISH_ATTEMPTS;
pub use crate::state::{
    AppState, Commits, LINE_REFRESH_MS, LINE_STATS_TIMEOUT_MS, LineProgress, Running, StateError,
};
