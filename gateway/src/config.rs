//! The gateway's settings: [`GatewayConfig`] (what the handlers read) and [`ServeLimits`]
//! (what the front service enforces).

/// Header that lets load-test requests skip the captcha when load-test mode is on.
pub const LOAD_TEST_HEADER: &str = "x-load-test-secret";

/// Settings of the gateway (the binary fills them from flags and environment).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Topic purchases are published to.
    pub orders_topic: String,
    /// Consumer group of the order workers (for positions in line).
    pub workers_group: String,
    /// Tokens a sale issues at most: `units × token_factor`.
    pub token_factor: f64,
    /// How long a purchase token is valid.
    pub token_ttl_ms: u64,
    /// How long a session is valid.
    pub session_ttl_ms: u64,
    /// Load-test mode: requests carrying this secret in `x-load-test-secret` skip the
    /// captcha (nothing else is relaxed). `None`: off (the default).
    pub load_test_secret: Option<String>,
    /// Bearer secret of the admin API.
    pub admin_secret: String,
    /// How long a purchase request waits for its durable enqueue before it answers
    /// `503 outcome_unknown` with its ticket (the purchase goes on and the ticket tells how
    /// it ended). Keep it below the request timeout.
    pub purchase_wait_ms: u64,
    /// **Test-only hook, off by default** (no flag or variable sets it): the captcha store
    /// remembers plaintext answers so that browser tests can type them
    /// ([`crate::captcha::CaptchaStore::revealed_answer`]).
    pub reveal_captcha_answers: bool,
    /// Most tickets the gateway remembers while they wait in the queue (at most
    /// [`crate::tickets::TICKETS_MAX`]); past it purchases are refused with 503 `busy`.
    pub tickets_max: usize,
    /// Most live purchase tokens of one sale held from one client address (IPv6 grouped
    /// by /64), when per-address bounds are on (they follow the per-IP quotas). Default
    /// [`crate::ledger::TOKENS_PER_ADDRESS_DEFAULT`]; at least 1.
    pub tokens_per_address: u64,
    /// Session and admin cookies carry `Secure` (sent over HTTPS only). On under
    /// `--production`, where a TLS-terminating proxy stands in front of the gateway.
    pub secure_cookies: bool,
    /// Every response carries `Strict-Transport-Security` ([`HSTS_VALUE`]). On under
    /// `--production` (behind TLS).
    pub hsts: bool,
    /// The proxies whose `X-Forwarded-For` names the client (`--trusted-proxies`; empty,
    /// the default: nobody's, the client is the TCP peer). See [`crate::proxy`].
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Requests with a valid session must carry the user's route cookie
    /// (`--route-cookie`; off by default, on behind `deploy/nginx`): otherwise 421
    /// `misdirected` with the right cookie. See [`crate::proxy`].
    pub route_cookie: bool,
    /// The currency of every price (ISO 4217 code, e.g. `EUR`), shown by the storefront
    /// and carried as `currency` in the sale JSON (`--currency`, `GATEWAY_CURRENCY`).
    pub currency: String,
    /// Whether `GET /api/sales/{id}/captcha?kind=work` (the proof-of-work alternative for
    /// people who cannot read the image) is offered (`--captcha-work`, default on). It
    /// turns the captcha's cost to a bot into CPU time; an operator who would rather make
    /// bots read images turns it off (the storefront then offers only the image).
    pub captcha_work: bool,
}

/// The currency unless `--currency` says otherwise.
pub const CURRENCY_DEFAULT: &str = "EUR";

/// A currency code: three ASCII capital letters (ISO 4217's form).
pub fn validate_currency(code: &str) -> Result<String, String> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code.to_owned())
    } else {
        Err(format!(
            "a currency is three capital letters such as EUR or USD, not {code:?}"
        ))
    }
}

/// The `Strict-Transport-Security` value sent when [`GatewayConfig::hsts`] is on: one year,
/// subdomains not included (the gateway does not know them).
pub const HSTS_VALUE: &str = "max-age=31536000";

impl GatewayConfig {
    /// Defaults with this admin secret.
    pub fn new(admin_secret: impl Into<String>) -> Self {
        GatewayConfig {
            orders_topic: order_worker::purchase::ORDERS_TOPIC.into(),
            workers_group: order_worker::purchase::WORKERS_GROUP.into(),
            token_factor: 1.5,
            token_ttl_ms: 60_000,
            session_ttl_ms: 24 * 3600 * 1000,
            load_test_secret: None,
            admin_secret: admin_secret.into(),
            purchase_wait_ms: 4_000,
            reveal_captcha_answers: false,
            tickets_max: crate::tickets::TICKETS_MAX,
            tokens_per_address: crate::ledger::TOKENS_PER_ADDRESS_DEFAULT,
            secure_cookies: false,
            hsts: false,
            trusted_proxies: crate::proxy::TrustedProxies::default(),
            route_cookie: false,
            currency: CURRENCY_DEFAULT.into(),
            captcha_work: true,
        }
    }
}

/// Checks a default purchase-token factor (`--token-factor`): a finite number within the
/// bounds of a sale's own factor (`order_worker::db::TOKEN_FACTOR_MIN` ..=
/// `TOKEN_FACTOR_MAX`); the error says which bounds.
pub fn validate_token_factor(factor: f64) -> Result<f64, String> {
    use order_worker::db::{TOKEN_FACTOR_MAX, TOKEN_FACTOR_MIN};
    if !factor.is_finite() || !(TOKEN_FACTOR_MIN..=TOKEN_FACTOR_MAX).contains(&factor) {
        return Err(format!(
            "the token factor must be a number from {TOKEN_FACTOR_MIN} to {TOKEN_FACTOR_MAX}, not {factor}"
        ));
    }
    Ok(factor)
}

/// Limits of the served gateway.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Requests in flight at once; beyond it requests are shed at once with 503.
    pub max_in_flight: usize,
    /// A request taking longer is answered 503.
    pub request_timeout_ms: u64,
    /// Largest request body, on every route (413 beyond; a declared `Content-Length` over
    /// it is refused before the body is read).
    pub body_limit_bytes: usize,
    /// Longest wait for a request's head (request line and headers), from the moment the
    /// connection waits for one: a client sending half a request line (or trickling one),
    /// or holding an idle keep-alive connection, is disconnected after it — at the
    /// connection's next housekeeping tick, so between this and one and a half times this
    /// (`front::ConnTimeouts`: no timer per request).
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes read or written for this long is asked to close
    /// (between `idle_timeout_ms` and twice it), and dropped if still no byte moves for
    /// another `idle_timeout_ms` (a client that stopped mid-request, or stopped reading its
    /// answers). A connection whose request is being handled is not idle.
    pub idle_timeout_ms: u64,
    /// Open connections at once; one accepted beyond it is closed at once (counted in
    /// `gateway_connections_refused_total`).
    pub max_connections: usize,
    /// Connections the kernel holds completed but not yet accepted (`listen(2)`'s
    /// backlog; the kernel cuts it to `net.core.somaxconn`). A flash crowd connects all at
    /// once at the opening: beyond the backlog the kernel drops the handshake and the
    /// client's retry comes a whole second later (the TCP SYN retransmission timeout).
    /// std's and tokio's `bind` use 128.
    pub listen_backlog: u32,
}

/// Most connections [`ServeLimits::max_connections`] may allow (a semaphore counts them).
pub const MAX_CONNECTIONS_MAX: usize = 1 << 20;

/// Largest [`ServeLimits::listen_backlog`] (the kernel's own ceiling for `somaxconn`).
pub const LISTEN_BACKLOG_MAX: u32 = 65_535;

impl ServeLimits {
    /// Checks the limits: every timeout and count at least 1, connections at most
    /// [`MAX_CONNECTIONS_MAX`], the listen backlog at most [`LISTEN_BACKLOG_MAX`].
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("max_in_flight", self.max_in_flight as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("body_limit_bytes", self.body_limit_bytes as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("listen_backlog", u64::from(self.listen_backlog)),
        ];
        for (name, v) in checks {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_connections > MAX_CONNECTIONS_MAX {
            return Err(format!(
                "max_connections must be at most {MAX_CONNECTIONS_MAX}"
            ));
        }
        if self.listen_backlog > LISTEN_BACKLOG_MAX {
            return Err(format!(
                "listen_backlog must be at most {LISTEN_BACKLOG_MAX}"
            ));
        }
        Ok(())
    }

    /// The purchase wait that fits these limits: four fifths of the request timeout, so a
    /// purchase answers (`outcome_unknown`, with its ticket) before its request times out.
    pub fn purchase_wait_ms(&self) -> u64 {
        self.request_timeout_ms.saturating_mul(4) / 5
    }
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_in_flight: 4096,
            request_timeout_ms: 5_000,
            body_limit_bytes: 16 << 10,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 8_192,
            listen_backlog: 4_096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, finding 6: `--token-factor` took any float (NaN, 0, 1e9).
    #[test]
    fn the_token_factor_is_finite_and_within_a_sales_bounds() {
        for ok in [0.1, 1.0, 1.5, 100.0] {
            assert_eq!(validate_token_factor(ok), Ok(ok));
        }
        for bad in [
            0.0,
            0.099,
            -1.0,
            100.1,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let e = validate_token_factor(bad).expect_err("refused");
            assert!(e.contains("0.1") && e.contains("100"), "{e}");
        }
        assert_eq!(GatewayConfig::new("x").token_factor, 1.5);
    }
}
