//! Throttling and anti-bot rules: per-user and per-IP quotas on the routes a flash crowd
//! hammers (login, captcha, token, purchase) and on the database reads of the request path
//! (tickets, orders and payment), and the repeat-purchase rule that blocks a
//! user who retries the same sale faster than a person would.
//!
//! Quotas are GCRA token buckets from `governor` (one keyed limiter per route and key kind),
//! measured on governor's own monotonic clock. The repeat rule keeps a short log of attempt
//! times per (user, sale) and uses the caller's explicit `now_ms`, so it is deterministic
//! under test.
//!
//! Memory stays bounded: every table holds at most [`ThrottleConfig::keys_max`] keys (itself
//! at most [`KEYS_MAX`]), each repeat-rule entry holds at most
//! [`ThrottleConfig::repeat_max`] timestamps (at most [`REPEAT_MAX_LIMIT`]), and the gateway
//! calls [`Throttle::housekeeping`] periodically (every [`HOUSEKEEPING_INTERVAL_MS`] or so)
//! to drop keys whose state no longer matters. A table that fills up between two rounds of
//! housekeeping refuses new keys with [`REASON_TABLE_FULL`] instead of growing.
//!
//! User names are stored as 64-bit keyed hashes (the hasher is seeded at random per
//! process), so a table entry costs a few dozen bytes whatever the name's length, and
//! nobody can choose names that collide on purpose. An accidental collision only makes two
//! users share a quota.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use gateway::throttle::{Route, Throttle, ThrottleConfig};
//!
//! let throttle = Throttle::new(ThrottleConfig::default())?;
//! let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
//! throttle.check(Route::Captcha, Some("alice"), ip, 1_000)?;
//! throttle.check_purchase("alice", 7, ip, 1_000)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Hard upper bound on the keys of any one throttle table (each route's per-user and
/// per-IP limiter, and the repeat-rule table). [`ThrottleConfig::keys_max`] may lower it.
pub const KEYS_MAX: usize = 1_000_000;

/// Upper bound on [`ThrottleConfig::repeat_max`]: the repeat rule keeps up to that many
/// timestamps per (user, sale), so this bounds an entry's size.
pub const REPEAT_MAX_LIMIT: u32 = 64;

/// The repeat-rule table is split into this many independently locked shards, so
/// concurrent purchases rarely wait on each other. Each shard holds at most
/// `keys_max / REPEAT_SHARDS` keys, which is why `keys_max` may not be smaller.
pub const REPEAT_SHARDS: usize = 16;

/// How often the gateway should call [`Throttle::housekeeping`].
pub const HOUSEKEEPING_INTERVAL_MS: u64 = 1_000;

/// A full table purges stale keys on the request path at most this often (per table or
/// shard), so a flood at the cap does not turn every request into a full scan.
pub const INLINE_PURGE_INTERVAL_MS: u64 = 1_000;

/// `retry_after_ms` of a refusal caused by a full table: by then housekeeping has run.
pub const TABLE_FULL_RETRY_MS: u64 = 1_000;

/// [`Throttled::reason`]: the user's quota on this route is used up.
pub const REASON_USER_RATE: &str = "per-user rate";
/// [`Throttled::reason`]: the client address's quota on this route is used up.
pub const REASON_IP_RATE: &str = "per-IP rate";
/// [`Throttled::reason`]: the user is blocked from this sale for repeating purchase attempts.
pub const REASON_REPEAT: &str = "repeated purchase attempts";
/// [`Throttled::reason`]: a throttle table is at its key cap and cannot take a new key.
pub const REASON_TABLE_FULL: &str = "throttle table full";

/// A throttled route class; each has its own quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /api/login`.
    Login,
    /// `GET /api/sales/{id}/captcha`.
    Captcha,
    /// `POST /api/sales/{id}/token`.
    Token,
    /// `POST /api/sales/{id}/purchase`.
    Purchase,
    /// `GET /api/tickets/{ticket}` (per user when a session comes with it).
    Ticket,
    /// `GET /api/orders/{id}`, `POST /api/orders/{id}/pay` and the order page.
    Order,
}

impl Route {
    /// Every route, in index order.
    pub const ALL: [Route; 6] = [
        Route::Login,
        Route::Captcha,
        Route::Token,
        Route::Purchase,
        Route::Ticket,
        Route::Order,
    ];

    /// A stable lower-case name, e.g. for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Route::Login => "login",
            Route::Captcha => "captcha",
            Route::Token => "token",
            Route::Purchase => "purchase",
            Route::Ticket => "ticket",
            Route::Order => "order",
        }
    }

    const fn index(self) -> usize {
        match self {
            Route::Login => 0,
            Route::Captcha => 1,
            Route::Token => 2,
            Route::Purchase => 3,
            Route::Ticket => 4,
            Route::Order => 5,
        }
    }
}

/// A quota: a sustained rate and the burst allowed on top of an idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: NonZeroU32,
    /// Requests allowed at once after an idle period.
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_second` sustained, `burst` at once.
    pub const fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Rate { per_second, burst }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// The quotas of one route. `None` means no quota of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLimits {
    /// Quota per user (applied when the caller names a user).
    pub per_user: Option<Rate>,
    /// Quota per client address (IPv6 addresses are grouped by /64).
    pub per_ip: Option<Rate>,
}

/// Throttle settings. The defaults (see each field) suit a public sale: per-user quotas are
/// tight because one person needs few requests; per-IP quotas are looser because many
/// people share an address (NAT, campus networks, mobile carriers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleConfig {
    /// Login. Default: 5/s, burst 10 per IP; no per-user quota, because a login names an
    /// unauthenticated user, and a quota on the claimed name would only let anyone lock
    /// that name out.
    pub login: RouteLimits,
    /// Captcha images. Default: 2/s, burst 5 per user; 10/s, burst 20 per IP.
    pub captcha: RouteLimits,
    /// Purchase tokens. Default: 2/s, burst 5 per user; 10/s, burst 20 per IP.
    pub token: RouteLimits,
    /// Purchases. Default: 5/s, burst 10 per user; 50/s, burst 100 per IP.
    pub purchase: RouteLimits,
    /// Ticket reads (each one a database read). Default: 5/s, burst 10 per user; 50/s,
    /// burst 100 per IP (a page polls its ticket a few times a second at most).
    pub ticket: RouteLimits,
    /// Order reads and payments (each one a database round trip). Default: 5/s, burst 10
    /// per user; 50/s, burst 100 per IP.
    pub order: RouteLimits,
    /// Per-address bounds on live captchas and purchase tokens
    /// ([`crate::captcha::CAPTCHAS_PER_ADDRESS_MAX`], `--tokens-per-address`). Default on;
    /// off with the per-IP quotas ([`ThrottleConfig::without_per_ip`]), since then every
    /// client may come through one address.
    pub per_address: bool,
    /// Repeat rule: a user may make this many purchase attempts on one sale within
    /// `repeat_window_ms`; the next one within the window blocks them from that sale for
    /// `block_ms`. Default 5; 1 ..= [`REPEAT_MAX_LIMIT`].
    pub repeat_max: u32,
    /// Repeat rule: the sliding window, in ms. Default 2,000; not zero.
    pub repeat_window_ms: u64,
    /// Repeat rule: how long a user stays blocked from the sale, in ms. Default 30,000;
    /// not zero. Attempts while blocked are refused and do not extend the block.
    pub block_ms: u64,
    /// Most keys in any one table. Default and maximum [`KEYS_MAX`]; at least
    /// [`REPEAT_SHARDS`].
    pub keys_max: usize,
}

/// Makes a non-zero constant; zero fails at compile time, since it is only used in consts.
const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a rate constant must not be zero"),
    }
}

const fn rate(per_second: u32, burst: u32) -> Rate {
    Rate::new(nonzero(per_second), nonzero(burst))
}

const DEFAULT_LOGIN_IP: Rate = rate(5, 10);
const DEFAULT_CAPTCHA_USER: Rate = rate(2, 5);
const DEFAULT_CAPTCHA_IP: Rate = rate(10, 20);
const DEFAULT_TOKEN_USER: Rate = rate(2, 5);
const DEFAULT_TOKEN_IP: Rate = rate(10, 20);
const DEFAULT_PURCHASE_USER: Rate = rate(5, 10);
const DEFAULT_PURCHASE_IP: Rate = rate(50, 100);
const DEFAULT_READ_USER: Rate = rate(5, 10);
const DEFAULT_READ_IP: Rate = rate(50, 100);

impl ThrottleConfig {
    /// These limits without the per-IP quotas (the per-user ones stay): for when every
    /// client comes through one address (a proxy without forwarded addresses, or a load
    /// generator on loopback), where one per-IP quota would throttle everyone at once.
    pub fn without_per_ip(mut self) -> Self {
        for r in [
            &mut self.login,
            &mut self.captcha,
            &mut self.token,
            &mut self.purchase,
            &mut self.ticket,
            &mut self.order,
        ] {
            r.per_ip = None;
        }
        self.per_address = false;
        self
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            login: RouteLimits {
                per_user: None,
                per_ip: Some(DEFAULT_LOGIN_IP),
            },
            captcha: RouteLimits {
                per_user: Some(DEFAULT_CAPTCHA_USER),
                per_ip: Some(DEFAULT_CAPTCHA_IP),
            },
            token: RouteLimits {
                per_user: Some(DEFAULT_TOKEN_USER),
                per_ip: Some(DEFAULT_TOKEN_IP),
            },
            purchase: RouteLimits {
                per_user: Some(DEFAULT_PURCHASE_USER),
                per_ip: Some(DEFAULT_PURCHASE_IP),
            },
            ticket: RouteLimits {
                per_user: Some(DEFAULT_READ_USER),
                per_ip: Some(DEFAULT_READ_IP),
            },
            order: RouteLimits {
                per_user: Some(DEFAULT_READ_USER),
                per_ip: Some(DEFAULT_READ_IP),
            },
            per_address: true,
            repeat_max: 5,
            repeat_window_ms: 2_000,
            block_ms: 30_000,
            keys_max: KEYS_MAX,
        }
    }
}

impl ThrottleConfig {
    /// The quotas of `route`.
    pub fn limits(&self, route: Route) -> RouteLimits {
        match route {
            Route::Login => self.login,
            Route::Captcha => self.captcha,
            Route::Token => self.token,
            Route::Purchase => self.purchase,
            Route::Ticket => self.ticket,
            Route::Order => self.order,
        }
    }

    /// Checks the bounds documented on each field.
    pub fn validate(&self) -> Result<(), ThrottleConfigError> {
        if !(1..=REPEAT_MAX_LIMIT).contains(&self.repeat_max) {
            return Err(ThrottleConfigError::RepeatMax(self.repeat_max));
        }
        if self.repeat_window_ms == 0 {
            return Err(ThrottleConfigError::ZeroRepeatWindow);
        }
        if self.block_ms == 0 {
            return Err(ThrottleConfigError::ZeroBlock);
        }
        if !(REPEAT_SHARDS..=KEYS_MAX).contains(&self.keys_max) {
            return Err(ThrottleConfigError::KeysMax(self.keys_max));
        }
        Ok(())
    }
}

/// A [`ThrottleConfig`] outside its documented bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThrottleConfigError {
    /// `repeat_max` is not in 1 ..= [`REPEAT_MAX_LIMIT`].
    #[error("repeat_max must be between 1 and {REPEAT_MAX_LIMIT}, not {0}")]
    RepeatMax(u32),
    /// `repeat_window_ms` is zero.
    #[error("repeat_window_ms must not be zero")]
    ZeroRepeatWindow,
    /// `block_ms` is zero.
    #[error("block_ms must not be zero")]
    ZeroBlock,
    /// `keys_max` is not in [`REPEAT_SHARDS`] ..= [`KEYS_MAX`].
    #[error("keys_max must be between {REPEAT_SHARDS} and {KEYS_MAX}, not {0}")]
    KeysMax(usize),
}

/// A refusal: answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("throttled ({reason}); retry after {retry_after_ms} ms")]
pub struct Throttled {
    /// How long to wait before a retry can succeed, in ms (at least 1).
    pub retry_after_ms: u64,
    /// Which rule refused: one of the `REASON_*` constants.
    pub reason: &'static str,
}

impl Throttled {
    /// `retry_after_ms` rounded up to whole seconds (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1_000).max(1)
    }

    fn table_full() -> Self {
        Throttled {
            retry_after_ms: TABLE_FULL_RETRY_MS,
            reason: REASON_TABLE_FULL,
        }
    }
}

/// Key counts of the throttle's tables, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TableSizes {
    /// Keys across all quota tables (every route, per user and per IP).
    pub limiter_keys: usize,
    /// Keys of the repeat-rule table: (user, sale) pairs seen recently or blocked.
    pub repeat_keys: usize,
}

/// A keyed governor limiter on clock `C`; with the default clock this is
/// `governor::DefaultKeyedRateLimiter<K>`.
type Limiter<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One quota table: a keyed limiter plus when it may next be purged on the request path.
struct Keyed<K: Hash + Eq + Clone, C: Clock> {
    limiter: Limiter<K, C>,
    next_purge_ms: AtomicU64,
}

impl<K: Hash + Eq + Clone, C: Clock> Keyed<K, C> {
    fn new(rate: Rate, clock: C) -> Self {
        Keyed {
            limiter: RateLimiter::new(rate.quota(), DefaultKeyedStateStore::default(), clock),
            next_purge_ms: AtomicU64::new(0),
        }
    }

    fn check(
        &self,
        key: &K,
        keys_max: usize,
        now_ms: u64,
        reason: &'static str,
    ) -> Result<(), Throttled> {
        // Governor does not say whether a key is already present, so at the cap every key is
        // refused (until a purge frees room): the cap holds, up to the requests in flight.
        if self.limiter.len() >= keys_max && !self.purge_when_full(keys_max, now_ms) {
            return Err(Throttled::table_full());
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            Throttled {
                retry_after_ms: ceil_ms(wait),
                reason,
            }
        })
    }

    /// Drops stale keys if no other request did so within the last
    /// [`INLINE_PURGE_INTERVAL_MS`]; says whether there is now room.
    fn purge_when_full(&self, keys_max: usize, now_ms: u64) -> bool {
        let next = self.next_purge_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_purge_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(INLINE_PURGE_INTERVAL_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.limiter.retain_recent();
        }
        self.limiter.len() < keys_max
    }

    fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

struct RouteLimiters<C: Clock> {
    per_user: Option<Keyed<u64, C>>,
    per_ip: Option<Keyed<IpAddr, C>>,
}

impl<C: Clock + Clone> RouteLimiters<C> {
    fn new(limits: RouteLimits, clock: &C) -> Self {
        RouteLimiters {
            per_user: limits.per_user.map(|r| Keyed::new(r, clock.clone())),
            per_ip: limits.per_ip.map(|r| Keyed::new(r, clock.clone())),
        }
    }
}

impl<C: Clock> RouteLimiters<C> {
    fn len(&self) -> usize {
        self.per_user.as_ref().map_or(0, Keyed::len) + self.per_ip.as_ref().map_or(0, Keyed::len)
    }
}

/// The repeat rule's state for one (user, sale).
struct RepeatEntry {
    /// Times of the recent attempts inside the window, oldest first; at most `repeat_max`.
    attempts_ms: VecDeque<u64>,
    /// Blocked while `now_ms < blocked_until_ms`.
    blocked_until_ms: u64,
}

impl RepeatEntry {
    /// Records an attempt at `now_ms`, or refuses it.
    fn attempt(&mut self, now_ms: u64, config: &ThrottleConfig) -> Result<(), Throttled> {
        if now_ms < self.blocked_until_ms {
            return Err(Throttled {
                retry_after_ms: self.blocked_until_ms - now_ms,
                reason: REASON_REPEAT,
            });
        }
        while let Some(&oldest) = self.attempts_ms.front() {
            if oldest.saturating_add(config.repeat_window_ms) <= now_ms {
                self.attempts_ms.pop_front();
            } else {
                break;
            }
        }
        if self.attempts_ms.len() >= config.repeat_max as usize {
            self.attempts_ms.clear();
            self.blocked_until_ms = now_ms.saturating_add(config.block_ms);
            return Err(Throttled {
                retry_after_ms: config.block_ms,
                reason: REASON_REPEAT,
            });
        }
        self.attempts_ms.push_back(now_ms);
        Ok(())
    }

    /// True when forgetting the entry changes nothing: not blocked, no attempt in the window.
    fn is_expired(&self, now_ms: u64, window_ms: u64) -> bool {
        now_ms >= self.blocked_until_ms
            && self
                .attempts_ms
                .back()
                .is_none_or(|&last| last.saturating_add(window_ms) <= now_ms)
    }
}

#[derive(Default)]
struct RepeatShard {
    entries: HashMap<(u64, u64), RepeatEntry>,
    /// The request path may purge this shard again from this time on.
    next_purge_ms: u64,
}

impl RepeatShard {
    fn purge(&mut self, now_ms: u64, window_ms: u64) {
        self.entries
            .retain(|_, entry| !entry.is_expired(now_ms, window_ms));
    }
}

/// Per-user and per-IP quotas and the repeat-purchase rule; shared by all requests
/// (`Send + Sync`, no `&mut`).
///
/// The clock `C` is governor's clock for the quotas; tests inject
/// `governor::clock::FakeRelativeClock`.
pub struct Throttle<C: Clock = DefaultClock> {
    config: ThrottleConfig,
    /// Indexed by [`Route::index`].
    routes: [RouteLimiters<C>; Route::ALL.len()],
    repeat: [Mutex<RepeatShard>; REPEAT_SHARDS],
    /// Seeded at random per process: hashes user names into keys and picks shards.
    hasher: RandomState,
    /// The latest `now_ms` any check saw; [`Throttle::housekeeping`] uses it.
    latest_now_ms: AtomicU64,
}

impl Throttle<DefaultClock> {
    /// A throttle on governor's default (monotonic) clock.
    pub fn new(config: ThrottleConfig) -> Result<Self, ThrottleConfigError> {
        Throttle::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    /// A throttle whose quotas run on `clock`.
    pub fn with_clock(config: ThrottleConfig, clock: C) -> Result<Self, ThrottleConfigError> {
        config.validate()?;
        Ok(Throttle::assemble(config, clock))
    }

    /// A throttle with these settings on `clock`, with empty tables (the settings of this
    /// one were checked when it was made).
    pub fn on_clock(&self, clock: C) -> Self {
        Throttle::assemble(self.config.clone(), clock)
    }

    fn assemble(config: ThrottleConfig, clock: C) -> Self {
        let routes = Route::ALL.map(|route| RouteLimiters::new(config.limits(route), &clock));
        Throttle {
            config,
            routes,
            repeat: std::array::from_fn(|_| Mutex::new(RepeatShard::default())),
            hasher: RandomState::new(),
            latest_now_ms: AtomicU64::new(0),
        }
    }
}

/// Governor's clock over the gateway's `queue::Clock`: the quotas run on the same time as
/// everything else the gateway decides (sessions, tokens, captchas, the repeat rule, sales'
/// start and end), so a test moves them all with one manual clock. Millisecond resolution,
/// which every quota's interval is far above. The system clock may step back (NTP): governor
/// compares its instants with saturating arithmetic, so a step back only delays refills.
#[derive(Debug, Clone)]
pub struct QuotaClock(pub std::sync::Arc<dyn queue::Clock>);

impl Clock for QuotaClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(self.0.now_ms())
    }
}

impl<C: Clock> Throttle<C> {
    /// The settings in force.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Applies `route`'s per-IP quota, then its per-user quota when `user` is given.
    /// `now_ms` is the caller's time in ms (it only paces purges of full tables; the quotas
    /// run on governor's clock `C`, in the gateway a [`QuotaClock`] over the same time). Purchases go through [`Throttle::check_purchase`]
    /// instead, which adds the repeat rule.
    pub fn check(
        &self,
        route: Route,
        user: Option<&str>,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<(), Throttled> {
        self.observe(now_ms);
        // Per-IP first: a flood from one address is refused before it creates per-user keys.
        let limiters = &self.routes[route.index()];
        if let Some(per_ip) = &limiters.per_ip {
            per_ip.check(&ip_key(ip), self.config.keys_max, now_ms, REASON_IP_RATE)?;
        }
        if let (Some(per_user), Some(user)) = (&limiters.per_user, user) {
            per_user.check(
                &self.user_key(user),
                self.config.keys_max,
                now_ms,
                REASON_USER_RATE,
            )?;
        }
        Ok(())
    }

    /// Checks a purchase attempt by `user` on `sale`: first the repeat rule (every attempt
    /// counts, even one the quotas then refuse, since hammering is what the rule detects;
    /// a blocked user is refused before costing any quota), then the purchase quotas as
    /// [`Throttle::check`]. `now_ms` is the caller's clock in ms and should not run
    /// backwards (the gateway passes wall-clock ms).
    pub fn check_purchase(
        &self,
        user: &str,
        sale: u64,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<(), Throttled> {
        self.observe(now_ms);
        self.check_repeat(self.user_key(user), sale, now_ms)?;
        self.check(Route::Purchase, Some(user), ip, now_ms)
    }

    /// Forgets what no longer matters: quota keys indistinguishable from fresh ones
    /// (governor's `retain_recent`, then `shrink_to_fit`) and repeat-rule entries neither
    /// blocked nor with an attempt inside the window, as of the latest `now_ms` a check saw.
    /// The gateway calls this every [`HOUSEKEEPING_INTERVAL_MS`] or so from a background
    /// task; without it tables fill to `keys_max` and then refuse new keys. Returns the sizes
    /// after the purge.
    pub fn housekeeping(&self) -> TableSizes {
        self.housekeeping_at(self.latest_now_ms.load(Ordering::Relaxed))
    }

    /// [`Throttle::housekeeping`] with an explicit clock for the repeat rule.
    pub fn housekeeping_at(&self, now_ms: u64) -> TableSizes {
        for limiters in &self.routes {
            if let Some(keyed) = &limiters.per_user {
                keyed.housekeeping();
            }
            if let Some(keyed) = &limiters.per_ip {
                keyed.housekeeping();
            }
        }
        for shard in &self.repeat {
            // One shard locked at a time, so purchases on other shards go on meanwhile.
            let mut shard = lock(shard);
            shard.purge(now_ms, self.config.repeat_window_ms);
            shard.entries.shrink_to_fit();
        }
        self.sizes()
    }

    /// Current key counts.
    pub fn sizes(&self) -> TableSizes {
        TableSizes {
            limiter_keys: self.routes.iter().map(RouteLimiters::len).sum(),
            repeat_keys: self.repeat.iter().map(|s| lock(s).entries.len()).sum(),
        }
    }

    fn observe(&self, now_ms: u64) {
        // Read first: the figure changes once a millisecond, and a write on every request
        // would bounce its cache line between the cores.
        if now_ms > self.latest_now_ms.load(Ordering::Relaxed) {
            self.latest_now_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    fn user_key(&self, user: &str) -> u64 {
        self.hasher.hash_one(user)
    }

    fn repeat_shard(&self, user_key: u64, sale: u64) -> usize {
        // The remainder is below REPEAT_SHARDS, so the cast cannot truncate.
        (self.hasher.hash_one((user_key, sale)) % REPEAT_SHARDS as u64) as usize
    }

    fn check_repeat(&self, user_key: u64, sale: u64, now_ms: u64) -> Result<(), Throttled> {
        let key = (user_key, sale);
        let shard_keys_max = self.config.keys_max / REPEAT_SHARDS;
        let mut shard = lock(&self.repeat[self.repeat_shard(user_key, sale)]);
        if shard.entries.len() >= shard_keys_max && !shard.entries.contains_key(&key) {
            if now_ms >= shard.next_purge_ms {
                shard.purge(now_ms, self.config.repeat_window_ms);
                shard.next_purge_ms = now_ms.saturating_add(INLINE_PURGE_INTERVAL_MS);
            }
            if shard.entries.len() >= shard_keys_max {
                return Err(Throttled::table_full());
            }
        }
        let repeat_max = self.config.repeat_max as usize;
        shard
            .entries
            .entry(key)
            .or_insert_with(|| RepeatEntry {
                attempts_ms: VecDeque::with_capacity(repeat_max),
                blocked_until_ms: 0,
            })
            .attempt(now_ms, &self.config)
    }
}

impl<C: Clock> fmt::Debug for Throttle<C> {
    /// Settings and sizes only: the tables can hold a million keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .field("sizes", &self.sizes())
            .finish_non_exhaustive()
    }
}

/// The address a per-IP quota is keyed on. An IPv6 client usually controls a whole /64,
/// so it counts as one address; an IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

/// Whole ms, rounded up, at least 1: a refusal never says "retry in 0 ms".
fn ceil_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn lock(shard: &Mutex<RepeatShard>) -> MutexGuard<'_, RepeatShard> {
    // A panic while the lock was held could at worst leave one entry's log half-updated;
    // the table only throttles, so going on with it beats refusing every later purchase.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use governor::clock::FakeRelativeClock;

    use super::*;

    // Outside the 10.0.0.0/8 range that `ip(n)` hands out.
    const IP_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn no_limits() -> RouteLimits {
        RouteLimits {
            per_user: None,
            per_ip: None,
        }
    }

    /// No quotas anywhere; a loose repeat rule. Tests switch on what they test.
    fn open_config() -> ThrottleConfig {
        ThrottleConfig {
            login: no_limits(),
            captcha: no_limits(),
            token: no_limits(),
            purchase: no_limits(),
            ticket: no_limits(),
            order: no_limits(),
            per_address: false,
            repeat_max: REPEAT_MAX_LIMIT,
            repeat_window_ms: 1,
            block_ms: 1,
            keys_max: KEYS_MAX,
        }
    }

    fn throttle(config: ThrottleConfig) -> (Throttle<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let throttle = Throttle::with_clock(config, clock.clone()).expect("valid config");
        (throttle, clock)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n))
    }

    #[test]
    fn default_config_is_valid_and_as_documented() {
        let config = ThrottleConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.login.per_ip, Some(rate(5, 10)));
        assert_eq!(config.login.per_user, None);
        assert_eq!(config.captcha.per_user, Some(rate(2, 5)));
        assert_eq!(config.captcha.per_ip, Some(rate(10, 20)));
        assert_eq!(config.token.per_user, Some(rate(2, 5)));
        assert_eq!(config.purchase.per_user, Some(rate(5, 10)));
        assert_eq!(config.purchase.per_ip, Some(rate(50, 100)));
        assert_eq!(config.ticket.per_user, Some(rate(5, 10)));
        assert_eq!(config.ticket.per_ip, Some(rate(50, 100)));
        assert_eq!(config.order.per_user, Some(rate(5, 10)));
        assert_eq!(config.order.per_ip, Some(rate(50, 100)));
        assert!(config.per_address);
        let open = config.clone().without_per_ip();
        assert!(!open.per_address && open.ticket.per_ip.is_none() && open.order.per_ip.is_none());
        assert_eq!(open.ticket.per_user, Some(rate(5, 10)));
        assert_eq!(
            (config.repeat_max, config.repeat_window_ms, config.block_ms),
            (5, 2_000, 30_000)
        );
        assert!(Throttle::new(config).is_ok());
    }

    #[test]
    fn out_of_bounds_configs_are_refused() {
        let bad = [
            (
                ThrottleConfig {
                    repeat_max: 0,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::RepeatMax(0),
            ),
            (
                ThrottleConfig {
                    repeat_max: REPEAT_MAX_LIMIT + 1,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::RepeatMax(REPEAT_MAX_LIMIT + 1),
            ),
            (
                ThrottleConfig {
                    repeat_window_ms: 0,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::ZeroRepeatWindow,
            ),
            (
                ThrottleConfig {
                    block_ms: 0,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::ZeroBlock,
            ),
            (
                ThrottleConfig {
                    keys_max: KEYS_MAX + 1,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::KeysMax(KEYS_MAX + 1),
            ),
            (
                ThrottleConfig {
                    keys_max: REPEAT_SHARDS - 1,
                    ..ThrottleConfig::default()
                },
                ThrottleConfigError::KeysMax(REPEAT_SHARDS - 1),
            ),
        ];
        for (config, want) in bad {
            assert_eq!(Throttle::new(config).err(), Some(want));
        }
    }

    #[test]
    fn per_user_quota_trips_after_burst_with_positive_retry_after() {
        let (t, clock) = throttle(ThrottleConfig {
            token: RouteLimits {
                per_user: Some(rate(2, 3)),
                per_ip: None,
            },
            ..open_config()
        });
        for _ in 0..3 {
            assert_eq!(t.check(Route::Token, Some("alice"), IP_A, 0), Ok(()));
        }
        let refused = t
            .check(Route::Token, Some("alice"), IP_A, 0)
            .expect_err("burst used up");
        assert_eq!(refused.reason, REASON_USER_RATE);
        // 2/s replenishes one request every 500 ms, and no time has passed.
        assert_eq!(refused.retry_after_ms, 500);
        assert_eq!(refused.retry_after_secs(), 1);
        // Another address does not help: the quota follows the user.
        assert_eq!(
            t.check(Route::Token, Some("alice"), IP_B, 0)
                .map_err(|e| e.reason),
            Err(REASON_USER_RATE)
        );
        // Quotas are per route.
        assert_eq!(t.check(Route::Captcha, Some("alice"), IP_A, 0), Ok(()));

        clock.advance(Duration::from_millis(499));
        let refused = t
            .check(Route::Token, Some("alice"), IP_A, 0)
            .expect_err("not yet");
        assert_eq!(refused.retry_after_ms, 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(t.check(Route::Token, Some("alice"), IP_A, 0), Ok(()));
    }

    #[test]
    fn per_ip_quota_is_independent_of_user() {
        let (t, _clock) = throttle(ThrottleConfig {
            captcha: RouteLimits {
                per_user: Some(rate(100, 100)),
                per_ip: Some(rate(1, 2)),
            },
            ..open_config()
        });
        assert_eq!(t.check(Route::Captcha, Some("a"), IP_A, 0), Ok(()));
        assert_eq!(t.check(Route::Captcha, Some("b"), IP_A, 0), Ok(()));
        // A fresh user and an anonymous caller on the same address are both refused.
        for user in [Some("c"), None] {
            let refused = t
                .check(Route::Captcha, user, IP_A, 0)
                .expect_err("address used up");
            assert_eq!(refused.reason, REASON_IP_RATE);
            assert_eq!(refused.retry_after_ms, 1_000);
        }
        // The same users from another address are fine.
        assert_eq!(t.check(Route::Captcha, Some("a"), IP_B, 0), Ok(()));
        assert_eq!(t.check(Route::Captcha, Some("c"), IP_B, 0), Ok(()));
    }

    #[test]
    fn different_users_do_not_affect_each_other() {
        let (t, _clock) = throttle(ThrottleConfig {
            purchase: RouteLimits {
                per_user: Some(rate(1, 1)),
                per_ip: None,
            },
            ..open_config()
        });
        assert_eq!(t.check(Route::Purchase, Some("alice"), IP_A, 0), Ok(()));
        assert!(t.check(Route::Purchase, Some("alice"), IP_A, 0).is_err());
        for n in 0..100 {
            let user = format!("user-{n}");
            assert_eq!(t.check(Route::Purchase, Some(&user), IP_A, 0), Ok(()));
        }
        // Anonymous callers have no per-user quota to spend.
        assert_eq!(t.check(Route::Purchase, None, IP_A, 0), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_slash_64_and_mapped_ipv4_is_ipv4() {
        let (t, _clock) = throttle(ThrottleConfig {
            login: RouteLimits {
                per_user: None,
                per_ip: Some(rate(1, 1)),
            },
            ..open_config()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(t.check(Route::Login, None, a, 0), Ok(()));
        assert!(t.check(Route::Login, None, same_64, 0).is_err());
        assert_eq!(t.check(Route::Login, None, other_64, 0), Ok(()));

        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("address");
        assert_eq!(t.check(Route::Login, None, v4, 0), Ok(()));
        assert!(t.check(Route::Login, None, mapped, 0).is_err());
    }

    fn repeat_config() -> ThrottleConfig {
        ThrottleConfig {
            repeat_max: 3,
            repeat_window_ms: 1_000,
            block_ms: 5_000,
            ..open_config()
        }
    }

    #[test]
    fn repeat_rule_blocks_after_repeat_max_attempts_within_window_then_unblocks() {
        let (t, _clock) = throttle(repeat_config());
        for now in [10_000, 10_100, 10_200] {
            assert_eq!(t.check_purchase("bot", 1, IP_A, now), Ok(()));
        }
        assert_eq!(
            t.check_purchase("bot", 1, IP_A, 10_300),
            Err(Throttled {
                retry_after_ms: 5_000,
                reason: REASON_REPEAT
            })
        );
        // Still blocked, with the remaining time; attempts do not extend the block.
        assert_eq!(
            t.check_purchase("bot", 1, IP_A, 12_000),
            Err(Throttled {
                retry_after_ms: 3_300,
                reason: REASON_REPEAT
            })
        );
        assert_eq!(
            t.check_purchase("bot", 1, IP_A, 15_299)
                .map_err(|e| e.retry_after_ms),
            Err(1)
        );
        // The block is per sale and per user.
        assert_eq!(t.check_purchase("bot", 2, IP_A, 12_000), Ok(()));
        assert_eq!(t.check_purchase("human", 1, IP_A, 12_000), Ok(()));
        // Unblocked after block_ms, with a clean slate.
        for now in [15_300, 15_301, 15_302] {
            assert_eq!(t.check_purchase("bot", 1, IP_A, now), Ok(()));
        }
        assert!(t.check_purchase("bot", 1, IP_A, 15_303).is_err());
    }

    #[test]
    fn repeat_rule_allows_attempts_spread_over_the_window() {
        let (t, _clock) = throttle(repeat_config());
        // Three attempts per 1,000 ms, never more in any window: never blocked.
        for n in 0..100 {
            let now = 50_000 + n * 334;
            assert_eq!(
                t.check_purchase("patient", 1, IP_A, now),
                Ok(()),
                "at {now}"
            );
        }
        // One attempt more than that in one window is blocked.
        let (t, _clock) = throttle(repeat_config());
        for now in [0, 333, 666] {
            assert_eq!(t.check_purchase("eager", 1, IP_A, now), Ok(()));
        }
        assert!(t.check_purchase("eager", 1, IP_A, 999).is_err());
    }

    #[test]
    fn blocked_user_spends_no_quota() {
        let (t, _clock) = throttle(ThrottleConfig {
            purchase: RouteLimits {
                per_user: Some(rate(1, 2)),
                per_ip: None,
            },
            repeat_max: 1,
            repeat_window_ms: 1_000,
            block_ms: 60_000,
            ..open_config()
        });
        assert_eq!(t.check_purchase("u", 1, IP_A, 0), Ok(()));
        for now in 1..50 {
            assert_eq!(
                t.check_purchase("u", 1, IP_A, now).map_err(|e| e.reason),
                Err(REASON_REPEAT)
            );
        }
        // Of the burst of 2, only the accepted attempt spent one: sale 2 (not blocked) gets
        // the other, and only then is the quota used up.
        assert_eq!(t.check_purchase("u", 2, IP_A, 100), Ok(()));
        assert_eq!(
            t.check_purchase("u", 3, IP_A, 100).map_err(|e| e.reason),
            Err(REASON_USER_RATE)
        );
    }

    #[test]
    fn housekeeping_keeps_tables_bounded() {
        let (t, clock) = throttle(ThrottleConfig {
            captcha: RouteLimits {
                per_user: Some(rate(10, 10)),
                per_ip: Some(rate(10, 10)),
            },
            purchase: RouteLimits {
                per_user: Some(rate(10, 10)),
                per_ip: Some(rate(10, 10)),
            },
            ..repeat_config()
        });
        for n in 0..1_000 {
            let user = format!("user-{n}");
            t.check(Route::Captcha, Some(&user), ip(n), 1_000)
                .expect("fresh keys");
            t.check_purchase(&user, 7, ip(n), 1_000)
                .expect("fresh keys");
        }
        t.check_purchase("blocked", 7, IP_A, 1_000).expect("first");
        t.check_purchase("blocked", 7, IP_A, 1_000).expect("second");
        t.check_purchase("blocked", 7, IP_A, 1_000).expect("third");
        assert!(t.check_purchase("blocked", 7, IP_A, 1_000).is_err());
        assert_eq!(
            t.sizes(),
            TableSizes {
                limiter_keys: 4 * 1_000 + 2,
                repeat_keys: 1_001
            }
        );

        // Nothing is stale yet: housekeeping keeps everything.
        assert_eq!(t.housekeeping().repeat_keys, 1_001);
        assert_eq!(t.sizes().limiter_keys, 4 * 1_000 + 2);

        // After the quotas refill and the window passes, only the block is remembered.
        clock.advance(Duration::from_secs(10));
        let sizes = t.housekeeping_at(2_000);
        assert_eq!(
            sizes,
            TableSizes {
                limiter_keys: 0,
                repeat_keys: 1
            }
        );
        // The block still holds; once it ends, the entry goes too.
        assert_eq!(
            t.check_purchase("blocked", 7, IP_A, 2_000)
                .map_err(|e| e.retry_after_ms),
            Err(4_000)
        );
        assert_eq!(t.housekeeping_at(6_000).repeat_keys, 0);
        // `housekeeping` uses the latest time the checks saw (2,000 here).
        assert_eq!(t.latest_now_ms.load(Ordering::Relaxed), 2_000);
    }

    #[test]
    fn full_repeat_table_refuses_new_keys_but_not_known_ones() {
        // keys_max = REPEAT_SHARDS: one key per shard.
        let (t, _clock) = throttle(ThrottleConfig {
            keys_max: REPEAT_SHARDS,
            ..repeat_config()
        });
        let sale = 9;
        // Two users whose (user, sale) keys fall in the same shard.
        let users: Vec<String> = (0..)
            .map(|n| format!("user-{n}"))
            .filter(|u| t.repeat_shard(t.user_key(u), sale) == 0)
            .take(2)
            .collect();
        let (first, second) = (&users[0], &users[1]);

        assert_eq!(t.check_purchase(first, sale, IP_A, 0), Ok(()));
        assert_eq!(
            t.check_purchase(second, sale, IP_A, 100),
            Err(Throttled {
                retry_after_ms: TABLE_FULL_RETRY_MS,
                reason: REASON_TABLE_FULL
            })
        );
        // The key already in the table keeps working.
        assert_eq!(t.check_purchase(first, sale, IP_A, 200), Ok(()));
        assert_eq!(t.sizes().repeat_keys, 1);
        // Once the first key's window has passed (and the inline purge may run again), the
        // full shard purges it and takes the new key.
        assert_eq!(t.check_purchase(second, sale, IP_A, 1_300), Ok(()));
        assert_eq!(t.sizes().repeat_keys, 1);
    }

    #[test]
    fn full_quota_table_refuses_until_stale_keys_are_purged() {
        let (t, clock) = throttle(ThrottleConfig {
            keys_max: REPEAT_SHARDS,
            captcha: RouteLimits {
                per_user: None,
                per_ip: Some(rate(1, 1)),
            },
            ..open_config()
        });
        for n in 0..REPEAT_SHARDS as u32 {
            assert_eq!(t.check(Route::Captcha, None, ip(n), 0), Ok(()));
        }
        let full = Err(Throttled {
            retry_after_ms: TABLE_FULL_RETRY_MS,
            reason: REASON_TABLE_FULL,
        });
        assert_eq!(t.check(Route::Captcha, None, ip(100), 0), full);
        assert_eq!(t.sizes().limiter_keys, REPEAT_SHARDS);
        // Once the keys are stale, the next inline purge (paced by now_ms) makes room.
        clock.advance(Duration::from_secs(10));
        assert_eq!(t.check(Route::Captcha, None, ip(100), 500), full);
        assert_eq!(t.check(Route::Captcha, None, ip(100), 1_000), Ok(()));
        assert_eq!(t.sizes().limiter_keys, 1);
    }

    #[test]
    fn concurrent_attempts_get_exactly_the_burst_and_repeat_max() {
        let (t, _clock) = throttle(ThrottleConfig {
            purchase: RouteLimits {
                per_user: Some(rate(1, 10)),
                per_ip: None,
            },
            repeat_max: 50,
            repeat_window_ms: 60_000,
            block_ms: 60_000,
            ..open_config()
        });
        let t = Arc::new(t);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut quota_ok = 0;
                    let mut repeat_ok = 0;
                    for _ in 0..100 {
                        quota_ok +=
                            usize::from(t.check(Route::Purchase, Some("q"), IP_A, 0).is_ok());
                        repeat_ok += usize::from(t.check_repeat(1, 1, 0).is_ok());
                    }
                    (quota_ok, repeat_ok)
                })
            })
            .collect();
        let (quota_ok, repeat_ok) = threads
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        assert_eq!(quota_ok, 10);
        assert_eq!(repeat_ok, 50);
    }

    #[test]
    fn throttle_is_shareable_and_debug_is_small() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Throttle>();
        shareable::<Throttle<FakeRelativeClock>>();
        let (t, _clock) = throttle(open_config());
        t.check_purchase("u", 1, IP_A, 0).expect("open");
        let debug = format!("{t:?}");
        assert!(debug.contains("repeat_keys: 1"), "{debug}");
    }
}
