//! The token ledger: which purchase tokens are live (issued, not yet spent, not expired),
//! per sale, at most one per user (a holder, [`crate::token::holder_of`]): a new token
//! replaces the user's live one, so a few accounts cannot hoard a sale's budget. It
//! carries four rules at once:
//!
//! - **No token, no access.** A sale may have at most `cap` live tokens, with
//!   `cap = ⌊units left × token_factor⌋`, at least 1 while a unit is left (see
//!   [`crate::token::token_cap`]): at the start of
//!   a sale that is `units × factor`; as units sell the cap shrinks, and tokens that expire
//!   unused, tokens given back after a failed purchase and units given back (a failed
//!   enqueue, a cancellation) make room again, so units returned can sell again.
//! - **Single use.** A purchase spends its token by removing it from the live set; a token
//!   that is not live (spent before, replaced by a newer one, or never recorded) is
//!   refused. A purchase that fails for the system's reasons (the queue or the stock store
//!   unavailable) restores its token, so the buyer keeps their place.
//! - **One live token per user and sale.** Asking again replaces the token (the old one
//!   stops working) without taking another place in the budget.
//! - **At most [`Caps::per_address`] live tokens per client address and sale** (IPv6
//!   grouped by /64), when the gateway gives the address ([`Claimant::addr`]; not with
//!   per-IP limits off): one address signing in as many users cannot take a small sale's
//!   whole budget.
//!
//! [`MemoryLedger`] keeps the set in this process (embedded default: tokens are valid only
//! at the gateway that issued them, and a restart voids them). [`RedisLedger`] keeps it in
//! Redis beside the stock (per sale, a sorted set of holders scored by expiry, a hash of
//! their nonces and addresses and a hash of live tokens per address; each operation one Lua
//! script), so several gateway processes share one budget and a token spent at one
//! gateway is spent at all of them. Expiry uses the gateways' clocks (keep them in sync).
//!
//! Bounded: a sale's live set never exceeds its cap (plus tokens restored while it was
//! full), and [`MemoryLedger`] holds at most [`LIVE_TOKENS_MAX`] tokens in all.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// Most live tokens a [`MemoryLedger`] holds across all sales.
pub const LIVE_TOKENS_MAX: usize = 2_000_000;

/// Default of [`Caps::per_address`] (the gateway's `--tokens-per-address`): live tokens of
/// one sale held from one client address. Many people may share an address (NAT), so it
/// is well above one person's need; it stops one address from holding a small sale's
/// whole budget (10 tokens/s for the token's minute was 600).
pub const TOKENS_PER_ADDRESS_DEFAULT: u64 = 50;

/// A ledger failure: the backing store did not answer (the gateway answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Redis failed or timed out.
    #[error("token ledger: {0}")]
    Store(String),
    /// [`LIVE_TOKENS_MAX`] live tokens are held.
    #[error("too many live purchase tokens; try again shortly")]
    Full,
}

/// Result of a ledger operation.
pub type LedgerResult<T> = Result<T, LedgerError>;

/// Who holds (or asks for) a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant {
    /// The user's key ([`crate::token::holder_of`]).
    pub holder: u128,
    /// The client address's key ([`address_key`]); `None`: not counted per address.
    pub addr: Option<u128>,
}

impl Claimant {
    /// `holder` asking from `addr` (`None`: no per-address bound).
    pub fn new(holder: u128, addr: Option<IpAddr>) -> Self {
        Claimant {
            holder,
            addr: addr.map(address_key),
        }
    }
}

/// The ledger's key of a client address: the per-IP quotas' key (IPv6 grouped by /64,
/// IPv4-mapped as IPv4) as 128 bits.
pub fn address_key(ip: IpAddr) -> u128 {
    match crate::throttle::ip_key(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// The bounds an issue must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Live tokens of the sale ([`crate::token::token_cap`]).
    pub sale: u64,
    /// Live tokens of the sale from one address (when the claimant gives one).
    pub per_address: u64,
}

impl Caps {
    /// `sale` live tokens, [`TOKENS_PER_ADDRESS_DEFAULT`] per address.
    pub fn of_sale(sale: u64) -> Self {
        Caps {
            sale,
            per_address: TOKENS_PER_ADDRESS_DEFAULT,
        }
    }
}

/// The live purchase tokens of every sale. See the module documentation.
#[async_trait::async_trait]
pub trait TokenLedger: Send + Sync + std::fmt::Debug {
    /// Records a new token of `sale` for `who`, live until `expires_at_ms`: it replaces
    /// the holder's live token if there is one; otherwise it takes a place if fewer than
    /// `caps.sale` of the sale's tokens are live at `now_ms`. Either way the claimant's
    /// address (if given) must hold fewer than `caps.per_address` of the sale's live tokens
    /// (its own replaced token aside). `false` (nothing recorded) otherwise.
    async fn issue(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        caps: Caps,
        now_ms: u64,
    ) -> LedgerResult<bool>;
    /// Spends `holder`'s token `nonce`: `true` if it was the holder's live token (now
    /// spent), `false` if it was spent before, replaced, expired, or never recorded.
    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool>;
    /// Makes a spent token live again (its purchase failed before anything was held),
    /// unless it has expired or the holder has a live token again. It counts for `who`'s
    /// address again (no cap is checked: the place was the holder's a moment ago).
    async fn restore(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()>;
    /// Live tokens of `sale` at `now_ms`.
    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64>;
    /// Whether `issue` would succeed now for `who` (see [`TokenLedger::issue`]).
    async fn room(&self, sale: u64, who: Claimant, caps: Caps, now_ms: u64) -> LedgerResult<bool>;
    /// Periodic clean-up (the gateway calls it every second or so). Default: nothing.
    async fn housekeeping(&self, _now_ms: u64) {}
}

#[derive(Debug, Default)]
struct SaleLive {
    /// holder → (nonce, expiry, address).
    by_holder: HashMap<u128, (u128, u64, Option<u128>)>,
    /// (expiry, holder), soonest first.
    by_expiry: BTreeSet<(u64, u128)>,
    /// address → its live tokens (no zero counts).
    by_addr: HashMap<u128, u64>,
}

impl SaleLive {
    /// Drops expired tokens; returns how many.
    fn purge(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some(&(exp, holder)) = self.by_expiry.first() {
            if exp > now_ms {
                break;
            }
            self.by_expiry.pop_first();
            if let Some((_, _, addr)) = self.by_holder.remove(&holder) {
                self.uncount(addr);
            }
            n += 1;
        }
        n
    }

    fn uncount(&mut self, addr: Option<u128>) {
        let Some(addr) = addr else { return };
        if let Some(c) = self.by_addr.get_mut(&addr) {
            *c -= 1;
            if *c == 0 {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Whether `who` may take (or move) a token within `caps` (expired ones purged).
    fn room(&self, who: Claimant, caps: Caps) -> bool {
        let old = self.by_holder.get(&who.holder);
        if old.is_none() && self.by_holder.len() as u64 >= caps.sale {
            return false;
        }
        match who.addr {
            Some(addr) if old.and_then(|o| o.2) != Some(addr) => {
                self.by_addr.get(&addr).copied().unwrap_or(0) < caps.per_address
            }
            _ => true,
        }
    }

    /// Sets the holder's token; returns whether the holder had none (one more live).
    fn put(&mut self, who: Claimant, nonce: u128, expires_at_ms: u64) -> bool {
        let old = self
            .by_holder
            .insert(who.holder, (nonce, expires_at_ms, who.addr));
        if let Some((_, old_exp, old_addr)) = old {
            self.by_expiry.remove(&(old_exp, who.holder));
            self.uncount(old_addr);
        }
        if let Some(addr) = who.addr {
            *self.by_addr.entry(addr).or_default() += 1;
        }
        self.by_expiry.insert((expires_at_ms, who.holder));
        old.is_none()
    }

    /// Removes the holder's token if it is `nonce`.
    fn take(&mut self, holder: u128, nonce: u128) -> bool {
        match self.by_holder.get(&holder) {
            Some(&(n, exp, addr)) if n == nonce => {
                self.by_holder.remove(&holder);
                self.by_expiry.remove(&(exp, holder));
                self.uncount(addr);
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Live {
    sales: HashMap<u64, SaleLive>,
    total: usize,
}

impl Live {
    fn sale(&mut self, sale: u64, now_ms: u64) -> &mut SaleLive {
        let s = self.sales.entry(sale).or_default();
        let purged = s.purge(now_ms);
        self.total -= purged;
        s
    }
}

/// The live tokens in this process.
#[derive(Debug)]
pub struct MemoryLedger {
    inner: Mutex<Live>,
    limit: usize,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        MemoryLedger::new()
    }
}

impl MemoryLedger {
    /// An empty ledger holding at most [`LIVE_TOKENS_MAX`] tokens.
    pub fn new() -> Self {
        MemoryLedger::with_limit(LIVE_TOKENS_MAX)
    }

    /// An empty ledger holding at most `limit` tokens (at most [`LIVE_TOKENS_MAX`]).
    pub fn with_limit(limit: usize) -> Self {
        MemoryLedger {
            inner: Mutex::new(Live::default()),
            limit: limit.min(LIVE_TOKENS_MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Every update keeps `total` and the indexes consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`TokenLedger::issue`], synchronously.
    pub fn issue_now(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        caps: Caps,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        if expires_at_ms <= now_ms {
            return Ok(false);
        }
        let mut guard = self.lock();
        let live = &mut *guard;
        let s = live.sales.entry(sale).or_default();
        live.total -= s.purge(now_ms);
        if !s.room(who, caps) {
            return Ok(false);
        }
        if !s.by_holder.contains_key(&who.holder) && live.total >= self.limit {
            return Err(LedgerError::Full);
        }
        if s.put(who, nonce, expires_at_ms) {
            live.total += 1;
        }
        Ok(true)
    }

    /// [`TokenLedger::spend`], synchronously.
    pub fn spend_now(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> bool {
        let mut live = self.lock();
        let taken = live.sale(sale, now_ms).take(holder, nonce);
        if taken {
            live.total -= 1;
        }
        taken
    }

    /// Drops the expired tokens of every sale, and sales with none live (housekeeping);
    /// returns how many tokens.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut live = self.lock();
        let mut n = 0;
        live.sales.retain(|_, s| {
            n += s.purge(now_ms);
            !s.by_holder.is_empty()
        });
        live.total -= n;
        n
    }

    /// Live tokens held in all (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl TokenLedger for MemoryLedger {
    async fn issue(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        caps: Caps,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        self.issue_now(sale, who, nonce, expires_at_ms, caps, now_ms)
    }

    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        Ok(self.spend_now(sale, holder, nonce, now_ms))
    }

    async fn restore(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        if expires_at_ms <= now_ms {
            return Ok(());
        }
        let mut live = self.lock();
        if live.sale(sale, now_ms).by_holder.contains_key(&who.holder) {
            return Ok(());
        }
        if live.total >= self.limit {
            return Err(LedgerError::Full);
        }
        if live.sale(sale, now_ms).put(who, nonce, expires_at_ms) {
            live.total += 1;
        }
        Ok(())
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let mut live = self.lock();
        Ok(live.sale(sale, now_ms).by_holder.len() as u64)
    }

    async fn room(&self, sale: u64, who: Claimant, caps: Caps, now_ms: u64) -> LedgerResult<bool> {
        let mut live = self.lock();
        Ok(live.sale(sale, now_ms).room(who, caps))
    }

    async fn housekeeping(&self, now_ms: u64) {
        self.purge_expired(now_ms);
    }
}

/// Keeps every key of a sale alive until its last token expires (a time to live relative
/// to the gateway's clock, so a skew between the clocks cannot expire them early).
/// ARGV[3] is the expiry and the last argument the gateway's now.
const EXTEND: &str = r#"
local ttl = tonumber(ARGV[3]) - tonumber(ARGV[#ARGV])
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
"#;

/// Shared by the scripts. KEYS: holders zset, nonces hash (holder → `nonce:address`, the
/// address empty when not counted), addresses hash (address → live tokens).
/// `purge(now)` drops the expired tokens and their addresses' counts.
const PRELUDE: &str = r#"
local function addr_of(v)
  if not v then return '' end
  local i = string.find(v, ':', 1, true)
  if not i then return '' end
  return string.sub(v, i + 1)
end
local function nonce_of(v)
  if not v then return false end
  local i = string.find(v, ':', 1, true)
  if not i then return v end
  return string.sub(v, 1, i - 1)
end
local function uncount(a)
  if a ~= '' and redis.call('HINCRBY', KEYS[3], a, -1) <= 0 then redis.call('HDEL', KEYS[3], a) end
end
local function purge(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, h in ipairs(expired) do
    uncount(addr_of(redis.call('HGET', KEYS[2], h)))
    redis.call('HDEL', KEYS[2], h)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
-- Whether holder h may take (or move) a token from address a: 1 or 0.
local function room(h, a, cap, addr_cap)
  local live = redis.call('ZSCORE', KEYS[1], h)
  if not live and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
  if a ~= '' and (not live or addr_of(redis.call('HGET', KEYS[2], h)) ~= a) then
    if tonumber(redis.call('HGET', KEYS[3], a) or '0') >= addr_cap then return 0 end
  end
  return 1
end
"#;

/// ARGV: holder, nonce, expiry, cap, address, address cap, now (last, for [`EXTEND`]).
const ISSUE_BODY: &str = r#"
local now = tonumber(ARGV[7])
local exp = tonumber(ARGV[3])
if exp <= now then return 0 end
purge(now)
if room(ARGV[1], ARGV[5], tonumber(ARGV[4]), tonumber(ARGV[6])) == 0 then return 0 end
uncount(addr_of(redis.call('HGET', KEYS[2], ARGV[1])))
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[5], 1) end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[5])
"#;

/// ARGV: holder, cap, now, address, address cap.
const ROOM: &str = r#"
purge(tonumber(ARGV[3]))
return room(ARGV[1], ARGV[4], tonumber(ARGV[2]), tonumber(ARGV[5]))
"#;

/// ARGV: holder, nonce, now.
const SPEND: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) <= tonumber(ARGV[3]) then return 0 end
local v = redis.call('HGET', KEYS[2], ARGV[1])
if nonce_of(v) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
uncount(addr_of(v))
return 1
"#;

/// ARGV: holder, nonce, expiry, address, now (last, for [`EXTEND`]).
const RESTORE_BODY: &str = r#"
local now = tonumber(ARGV[5])
local exp = tonumber(ARGV[3])
if exp <= now then return 0 end
purge(now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[4], 1) end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[4])
"#;

/// The live purchase tokens in Redis, beside the stock of an [`inventory::RedisStore`]: for
/// sale `S` under the store's prefix `P`, `P{S}:token_holders` (a sorted set of holders
/// scored by their token's expiry), `P{S}:token_nonces` (holder → `nonce:address`) and
/// `P{S}:token_addresses` (address → live tokens); all expire with the sale's last token.
pub struct RedisLedger {
    conn: inventory::RedisConn,
    prefix: String,
    issue: redis::Script,
    spend: redis::Script,
    restore: redis::Script,
    room: redis::Script,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn store_err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Store(e.to_string())
}

impl RedisLedger {
    /// A ledger sharing `store`'s Redis connections (standalone or Cluster: each sale's
    /// token keys share its `{S}` hash tag, one slot) and key prefix.
    pub fn beside(store: &inventory::RedisStore) -> RedisLedger {
        RedisLedger {
            conn: store.conn().clone(),
            prefix: store.prefix().to_string(),
            issue: redis::Script::new(&format!("{PRELUDE}{ISSUE_BODY}{EXTEND}return 1")),
            spend: redis::Script::new(&format!("{PRELUDE}{SPEND}")),
            restore: redis::Script::new(&format!("{PRELUDE}{RESTORE_BODY}{EXTEND}return 1")),
            room: redis::Script::new(&format!("{PRELUDE}{ROOM}")),
        }
    }

    fn keys(&self, sale: u64) -> [String; 3] {
        inventory::keys::SaleKeys::new(&self.prefix, sale).ledger()
    }

    async fn run(&self, script: &redis::Script, sale: u64, args: &[String]) -> LedgerResult<i64> {
        self.conn
            .invoke_script(script, &self.keys(sale), args)
            .await
            .map_err(store_err)
    }

    /// Deletes the sale's token set (tests and admin cleanup).
    pub async fn forget(&self, sale: u64) -> LedgerResult<()> {
        let _: i64 = self
            .conn
            .query(redis::cmd("DEL").arg(&self.keys(sale)[..]))
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

fn hex(x: u128) -> String {
    format!("{x:032x}")
}

fn addr_arg(who: Claimant) -> String {
    who.addr.map(hex).unwrap_or_default()
}

#[async_trait::async_trait]
impl TokenLedger for RedisLedger {
    async fn issue(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        caps: Caps,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        let args = [
            hex(who.holder),
            hex(nonce),
            expires_at_ms.to_string(),
            caps.sale.to_string(),
            addr_arg(who),
            caps.per_address.to_string(),
            now_ms.to_string(),
        ];
        Ok(self.run(&self.issue, sale, &args).await? == 1)
    }

    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        let args = [hex(holder), hex(nonce), now_ms.to_string()];
        Ok(self.run(&self.spend, sale, &args).await? == 1)
    }

    async fn restore(
        &self,
        sale: u64,
        who: Claimant,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        let args = [
            hex(who.holder),
            hex(nonce),
            expires_at_ms.to_string(),
            addr_arg(who),
            now_ms.to_string(),
        ];
        self.run(&self.restore, sale, &args).await.map(|_| ())
    }

    async fn room(&self, sale: u64, who: Claimant, caps: Caps, now_ms: u64) -> LedgerResult<bool> {
        let args = [
            hex(who.holder),
            caps.sale.to_string(),
            now_ms.to_string(),
            addr_arg(who),
            caps.per_address.to_string(),
        ];
        Ok(self.run(&self.room, sale, &args).await? == 1)
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let [holders, ..] = self.keys(sale);
        let n: u64 = self
            .conn
            .query(
                redis::cmd("ZCOUNT")
                    .arg(holders)
                    .arg(format!("({now_ms}"))
                    .arg("+inf"),
            )
            .await
            .map_err(store_err)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    // Holders (users) and nonces (tokens).
    const ANN: u128 = 0xa;
    const BOB: u128 = 0xb;
    const CAT: u128 = 0xc;
    const DAN: u128 = 0xd;

    /// A claimant not counted per address.
    fn who(holder: u128) -> Claimant {
        Claimant { holder, addr: None }
    }

    /// The rules every ledger keeps, run against the memory ledger and the real Redis.
    async fn ledger_rules(l: &dyn TokenLedger, sale: u64) {
        // The cap holds: two live tokens at most.
        assert!(
            l.issue(sale, who(ANN), 1, NOW + 1000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        assert!(
            l.issue(sale, who(BOB), 2, NOW + 2000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        assert!(
            !l.issue(sale, who(CAT), 3, NOW + 2000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        assert_eq!(l.live(sale, NOW).await.expect("live"), 2);
        // One live token per holder: asking again replaces it without a new place, and
        // the old token no longer spends.
        assert!(
            l.issue(sale, who(ANN), 11, NOW + 1000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        assert_eq!(l.live(sale, NOW).await.expect("live"), 2);
        assert!(
            !l.spend(sale, ANN, 1, NOW).await.expect("spend"),
            "replaced"
        );
        // Spending is single use, bound to its holder, and frees a place.
        assert!(
            !l.spend(sale, BOB, 11, NOW).await.expect("spend"),
            "not bob's"
        );
        assert!(l.spend(sale, ANN, 11, NOW).await.expect("spend"));
        assert!(
            !l.spend(sale, ANN, 11, NOW).await.expect("spend"),
            "spent twice"
        );
        assert!(
            !l.spend(sale, DAN, 99, NOW).await.expect("spend"),
            "never issued"
        );
        assert!(
            l.issue(sale, who(CAT), 3, NOW + 2000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        // A restored token is live again and can be spent once more.
        assert!(l.spend(sale, CAT, 3, NOW).await.expect("spend"));
        l.restore(sale, who(CAT), 3, NOW + 2000, NOW)
            .await
            .expect("restore");
        assert!(l.spend(sale, CAT, 3, NOW).await.expect("spend"));
        // A restore does not undo a newer token of the same holder.
        assert!(
            l.issue(sale, who(CAT), 4, NOW + 2000, Caps::of_sale(2), NOW)
                .await
                .expect("issue")
        );
        l.restore(sale, who(CAT), 3, NOW + 2000, NOW)
            .await
            .expect("restore");
        assert!(!l.spend(sale, CAT, 3, NOW).await.expect("spend"));
        assert!(l.spend(sale, CAT, 4, NOW).await.expect("spend"));
        // An expired token is no longer live: it cannot be spent and frees its place.
        assert!(
            !l.spend(sale, BOB, 2, NOW + 2000).await.expect("spend"),
            "expired"
        );
        assert_eq!(l.live(sale, NOW + 2000).await.expect("live"), 0);
        assert!(
            l.issue(sale, who(DAN), 5, NOW + 5000, Caps::of_sale(1), NOW + 2000)
                .await
                .expect("issue")
        );
        // An expired token is not restored, and one already expired is not issued.
        l.restore(sale, who(BOB), 6, NOW + 10, NOW + 20)
            .await
            .expect("restore");
        assert!(!l.spend(sale, BOB, 6, NOW + 20).await.expect("spend"));
        assert!(
            !l.issue(sale, who(BOB), 7, NOW, Caps::of_sale(10), NOW)
                .await
                .expect("issue")
        );
        // Sales do not share budgets.
        assert!(
            l.issue(sale + 1, who(DAN), 8, NOW + 5000, Caps::of_sale(1), NOW)
                .await
                .expect("issue")
        );
        assert!(l.spend(sale + 1, DAN, 8, NOW).await.expect("spend"));
        assert!(l.spend(sale, DAN, 5, NOW + 2000).await.expect("spend"));
    }

    /// Issue 16, finding 3: one address (signing in as many users) took a small sale's
    /// whole budget. Now it holds at most its bound of the sale's live tokens.
    async fn address_rules(l: &dyn TokenLedger, sale: u64) {
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let caps = Caps {
            sale: 1000,
            per_address: 3,
        };
        let exp = NOW + 1000;
        let mut issued = 0;
        for h in 1..=100u128 {
            if l.issue(sale, Claimant::new(h, a), h, exp, caps, NOW)
                .await
                .expect("issue")
            {
                issued += 1;
            }
        }
        assert_eq!(issued, 3, "one address holds at most its bound");
        assert_eq!(l.live(sale, NOW).await.expect("live"), 3);
        // Another address is not affected; the same /64 of IPv6 is one address.
        assert!(
            l.room(sale, Claimant::new(200, b), caps, NOW)
                .await
                .expect("room")
        );
        let v6 = |last: u16| Some(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]));
        assert!(
            l.issue(sale, Claimant::new(201, v6(1)), 201, exp, caps, NOW)
                .await
                .expect("issue")
        );
        let one_v6 = Caps {
            per_address: 1,
            ..caps
        };
        assert!(
            !l.issue(sale, Claimant::new(202, v6(2)), 202, exp, one_v6, NOW)
                .await
                .expect("issue")
        );
        // Replacing one's own token needs no new place of the address.
        assert!(
            !l.room(sale, Claimant::new(4, a), caps, NOW)
                .await
                .expect("room")
        );
        assert!(
            l.issue(sale, Claimant::new(1, a), 11, exp, caps, NOW)
                .await
                .expect("issue")
        );
        // Spending frees the address's place; a restore takes it again.
        assert!(l.spend(sale, 2, 2, NOW).await.expect("spend"));
        assert!(
            l.room(sale, Claimant::new(4, a), caps, NOW)
                .await
                .expect("room")
        );
        l.restore(sale, Claimant::new(2, a), 2, exp, NOW)
            .await
            .expect("restore");
        assert!(
            !l.issue(sale, Claimant::new(4, a), 4, exp, caps, NOW)
                .await
                .expect("issue")
        );
        // Expiry frees them all.
        assert!(
            l.issue(sale, Claimant::new(4, a), 4, exp + 10, caps, exp)
                .await
                .expect("issue")
        );
        // Not counted per address (per-IP limits off): only the sale's cap.
        for h in 300..310u128 {
            assert!(
                l.issue(sale, Claimant::new(h, None), h, exp + 10, caps, exp)
                    .await
                    .expect("issue")
            );
        }
    }

    #[tokio::test]
    async fn the_memory_ledger_keeps_the_rules() {
        let l = MemoryLedger::new();
        ledger_rules(&l, 7).await;
        // Housekeeping drops what expired, and nothing is left over.
        l.issue_now(1, who(ANN), 10, NOW + 10, Caps::of_sale(5), NOW)
            .expect("issue");
        assert_eq!(l.purge_expired(NOW + 10), 1);
        assert!(l.is_empty(), "{} left", l.len());
        address_rules(&l, 9).await;
        l.purge_expired(u64::MAX);
        assert!(l.is_empty() && l.lock().sales.is_empty());
    }

    /// The same rules in Redis (the real one, a key prefix of its own). Skipped without
    /// Redis, except under `CI`, where it fails.
    #[tokio::test]
    async fn the_redis_ledger_keeps_the_rules() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!(
            "ledger-test:{}:{}:",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let store = match inventory::RedisStore::connect(&url, &prefix, 4).await {
            Ok(s) => s,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("Redis at {url} is required under CI: {e}")
            }
            Err(e) => {
                eprintln!("skipping: no Redis at {url}: {e}");
                return;
            }
        };
        let l = RedisLedger::beside(&store);
        ledger_rules(&l, 7).await;
        address_rules(&l, 9).await;
        l.forget(7).await.expect("clean up");
        l.forget(8).await.expect("clean up");
        l.forget(9).await.expect("clean up");
    }

    /// The same rules on a scratch 3-master Redis Cluster (redis-kit): each sale's token
    /// keys share its hash tag, so every script runs in one slot.
    #[tokio::test]
    async fn the_redis_ledger_keeps_the_rules_on_a_cluster() {
        let cluster = redis_kit::RedisCluster::start(3, 0).expect("a 3-master cluster starts");
        let store = inventory::RedisStore::connect(&cluster.url(), "ledger-test:", 4)
            .await
            .expect("the store connects");
        assert!(store.conn().is_cluster());
        let l = RedisLedger::beside(&store);
        ledger_rules(&l, 7).await;
        address_rules(&l, 9).await;
        l.forget(7).await.expect("clean up");
    }

    #[tokio::test]
    async fn the_memory_ledger_is_bounded() {
        let l = MemoryLedger::with_limit(3);
        for n in 0..3 {
            assert!(
                l.issue_now(1, who(n), n, NOW + 10, Caps::of_sale(100), NOW)
                    .expect("room")
            );
        }
        assert_eq!(
            l.issue_now(1, who(9), 9, NOW + 10, Caps::of_sale(100), NOW),
            Err(LedgerError::Full)
        );
        assert_eq!(
            l.issue_now(2, who(9), 9, NOW + 10, Caps::of_sale(100), NOW),
            Err(LedgerError::Full)
        );
        // A holder replacing its token needs no room.
        assert_eq!(
            l.issue_now(1, who(0), 20, NOW + 10, Caps::of_sale(100), NOW),
            Ok(true)
        );
        // Expiry makes room.
        assert!(
            l.issue_now(1, who(9), 9, NOW + 20, Caps::of_sale(100), NOW + 10)
                .expect("room")
        );
    }

    #[test]
    fn concurrent_issues_never_pass_the_cap() {
        let l = std::sync::Arc::new(MemoryLedger::new());
        let threads: Vec<_> = (0..4u128)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..1000u128)
                        .filter(|n| {
                            let id = t * 1000 + n;
                            l.issue_now(1, who(id), id, NOW + 10, Caps::of_sale(500), NOW)
                                == Ok(true)
                        })
                        .count()
                })
            })
            .collect();
        let issued: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(issued, 500);
    }
}
