//! Browser storefront and admin dashboard (askama templates); will be served by the gateway. Not built yet.
