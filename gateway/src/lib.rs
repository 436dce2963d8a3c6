//! HTTP gateway (axum): captcha, per-user and per-IP throttling, purchase tokens, load shedding; it will turn accepted purchases into queue messages. Not built yet (see ARCHITECTURE.md).
