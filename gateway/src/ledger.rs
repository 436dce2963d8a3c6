//! The token ledger: which purchase tokens are live (issued, not yet spent, not expired),
//! per sale, at most one per user (a holder, [`crate::token::holder_of`]): a new token
//! replaces the user's live one, so a few accounts cannot hoard a sale's budget. It
//! carries three rules at once:
//!
//! - **No token, no access.** A sale may have at most `cap` live tokens, with
//!   `cap = ⌊units left × token_factor⌋` (see [`crate::token::token_cap`]): at the start of
//!   a sale that is `units × factor`; as units sell the cap shrinks, and tokens that expire
//!   unused, tokens given back after a failed purchase and units given back (a failed
//!   enqueue, a cancellation) make room again, so units returned can sell again.
//! - **Single use.** A purchase spends its token by removing it from the live set; a token
//!   that is not live (spent before, replaced by a newer one, or never recorded) is
//!   refused. A purchase that fails for the system's reasons (the queue or the stock store
//!   unavailable) restores its token, so the buyer keeps their place.
//! - **One live token per user and sale.** Asking again replaces the token (the old one
//!   stops working) without taking another place in the budget.
//!
//! [`MemoryLedger`] keeps the set in this process (embedded default: tokens are valid only
//! at the gateway that issued them, and a restart voids them). [`RedisLedger`] keeps it in
//! Redis beside the stock (per sale, a sorted set of holders scored by expiry and a hash of
//! their nonces; each operation one Lua script), so several gateway processes share one budget and a token spent at one
//! gateway is spent at all of them. Expiry uses the gateways' clocks (keep them in sync).
//!
//! Bounded: a sale's live set never exceeds its cap (plus tokens restored while it was
//! full), and [`MemoryLedger`] holds at most [`LIVE_TOKENS_MAX`] tokens in all.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

/// Most live tokens a [`MemoryLedger`] holds across all sales.
pub const LIVE_TOKENS_MAX: usize = 2_000_000;

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

/// The live purchase tokens of every sale. See the module documentation.
#[async_trait::async_trait]
pub trait TokenLedger: Send + Sync + std::fmt::Debug {
    /// Records a new token of `sale` for `holder`, live until `expires_at_ms`: it replaces
    /// the holder's live token if there is one; otherwise it takes a place if fewer than
    /// `cap` of the sale's tokens are live at `now_ms`, and is `false` (nothing recorded)
    /// otherwise.
    async fn issue(
        &self,
        sale: u64,
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool>;
    /// Spends `holder`'s token `nonce`: `true` if it was the holder's live token (now
    /// spent), `false` if it was spent before, replaced, expired, or never recorded.
    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool>;
    /// Makes a spent token live again (its purchase failed before anything was held),
    /// unless it has expired or the holder has a live token again.
    async fn restore(
        &self,
        sale: u64,
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()>;
    /// Live tokens of `sale` at `now_ms`.
    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64>;
    /// Whether `issue` would succeed now: `holder` has a live token of `sale` (it would be
    /// replaced), or fewer than `cap` are live.
    async fn room(&self, sale: u64, holder: u128, cap: u64, now_ms: u64) -> LedgerResult<bool>;
    /// Periodic clean-up (the gateway calls it every second or so). Default: nothing.
    async fn housekeeping(&self, _now_ms: u64) {}
}

#[derive(Debug, Default)]
struct SaleLive {
    /// holder → (nonce, expiry).
    by_holder: HashMap<u128, (u128, u64)>,
    /// (expiry, holder), soonest first.
    by_expiry: BTreeSet<(u64, u128)>,
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
            self.by_holder.remove(&holder);
            n += 1;
        }
        n
    }

    /// Sets the holder's token; returns whether the holder had none (one more live).
    fn put(&mut self, holder: u128, nonce: u128, expires_at_ms: u64) -> bool {
        let old = self.by_holder.insert(holder, (nonce, expires_at_ms));
        if let Some((_, old_exp)) = old {
            self.by_expiry.remove(&(old_exp, holder));
        }
        self.by_expiry.insert((expires_at_ms, holder));
        old.is_none()
    }

    /// Removes the holder's token if it is `nonce`.
    fn take(&mut self, holder: u128, nonce: u128) -> bool {
        match self.by_holder.get(&holder) {
            Some(&(n, exp)) if n == nonce => {
                self.by_holder.remove(&holder);
                self.by_expiry.remove(&(exp, holder));
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
        // Every update keeps `total` and the two indexes consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`TokenLedger::issue`], synchronously.
    pub fn issue_now(
        &self,
        sale: u64,
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        if expires_at_ms <= now_ms {
            return Ok(false);
        }
        let mut guard = self.lock();
        let live = &mut *guard;
        let s = live.sales.entry(sale).or_default();
        live.total -= s.purge(now_ms);
        if !s.by_holder.contains_key(&holder) {
            if s.by_holder.len() as u64 >= cap {
                return Ok(false);
            }
            if live.total >= self.limit {
                return Err(LedgerError::Full);
            }
        }
        if s.put(holder, nonce, expires_at_ms) {
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
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        self.issue_now(sale, holder, nonce, expires_at_ms, cap, now_ms)
    }

    async fn spend(&self, sale: u64, holder: u128, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        Ok(self.spend_now(sale, holder, nonce, now_ms))
    }

    async fn restore(
        &self,
        sale: u64,
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        if expires_at_ms <= now_ms {
            return Ok(());
        }
        let mut live = self.lock();
        if live.sale(sale, now_ms).by_holder.contains_key(&holder) {
            return Ok(());
        }
        if live.total >= self.limit {
            return Err(LedgerError::Full);
        }
        if live.sale(sale, now_ms).put(holder, nonce, expires_at_ms) {
            live.total += 1;
        }
        Ok(())
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let mut live = self.lock();
        Ok(live.sale(sale, now_ms).by_holder.len() as u64)
    }

    async fn room(&self, sale: u64, holder: u128, cap: u64, now_ms: u64) -> LedgerResult<bool> {
        let mut live = self.lock();
        let s = live.sale(sale, now_ms);
        Ok(s.by_holder.contains_key(&holder) || (s.by_holder.len() as u64) < cap)
    }

    async fn housekeeping(&self, now_ms: u64) {
        self.purge_expired(now_ms);
    }
}

/// Keeps both keys of a sale alive until its last token expires (a time to live relative
/// to the gateway's clock, so a skew between the clocks cannot expire them early).
/// ARGV[3] is the expiry and the last argument the gateway's now.
const EXTEND: &str = r#"
local ttl = tonumber(ARGV[3]) - tonumber(ARGV[#ARGV])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
"#;

/// KEYS: holders zset, nonces hash. ARGV: holder, nonce, expiry, cap, now.
const ISSUE_BODY: &str = r#"
local now = tonumber(ARGV[5])
local exp = tonumber(ARGV[3])
if exp <= now then return 0 end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, h in ipairs(expired) do redis.call('HDEL', KEYS[2], h) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"#;

/// KEYS: holders zset, nonces hash. ARGV: holder, cap, now.
const ROOM: &str = r#"
local now = tonumber(ARGV[3])
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > now then return 1 end
if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[3], '+inf') < tonumber(ARGV[2]) then return 1 end
return 0
"#;

/// KEYS: holders zset, nonces hash. ARGV: holder, nonce, now.
const SPEND: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) <= tonumber(ARGV[3]) then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: holders zset, nonces hash. ARGV: holder, nonce, expiry, now.
const RESTORE_BODY: &str = r#"
local now = tonumber(ARGV[4])
local exp = tonumber(ARGV[3])
if exp <= now then return 0 end
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > now then return 0 end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"#;

/// The live purchase tokens in Redis, beside the stock of an [`inventory::RedisStore`]: for
/// sale `S` under the store's prefix `P`, `P{S}:token_holders` (a sorted set of holders
/// scored by their token's expiry) and `P{S}:token_nonces` (holder → nonce); both expire
/// with the sale's last token.
pub struct RedisLedger {
    pool: deadpool_redis::Pool,
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
    /// A ledger sharing `store`'s Redis connections and key prefix.
    pub fn beside(store: &inventory::RedisStore) -> RedisLedger {
        RedisLedger {
            pool: store.pool().clone(),
            prefix: store.prefix().to_string(),
            issue: redis::Script::new(&format!("{ISSUE_BODY}{EXTEND}return 1")),
            spend: redis::Script::new(SPEND),
            restore: redis::Script::new(&format!("{RESTORE_BODY}{EXTEND}return 1")),
            room: redis::Script::new(ROOM),
        }
    }

    fn keys(&self, sale: u64) -> [String; 2] {
        inventory::keys::SaleKeys::new(&self.prefix, sale).ledger()
    }

    async fn run(&self, script: &redis::Script, sale: u64, args: &[String]) -> LedgerResult<i64> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let mut inv = script.prepare_invoke();
        for k in self.keys(sale) {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        inv.invoke_async(&mut *conn).await.map_err(store_err)
    }

    /// Deletes the sale's token set (tests and admin cleanup).
    pub async fn forget(&self, sale: u64) -> LedgerResult<()> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let _: i64 = redis::cmd("DEL")
            .arg(&self.keys(sale)[..])
            .query_async(&mut *conn)
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

fn hex(x: u128) -> String {
    format!("{x:032x}")
}

#[async_trait::async_trait]
impl TokenLedger for RedisLedger {
    async fn issue(
        &self,
        sale: u64,
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        let args = [
            hex(holder),
            hex(nonce),
            expires_at_ms.to_string(),
            cap.to_string(),
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
        holder: u128,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        let args = [
            hex(holder),
            hex(nonce),
            expires_at_ms.to_string(),
            now_ms.to_string(),
        ];
        self.run(&self.restore, sale, &args).await.map(|_| ())
    }

    async fn room(&self, sale: u64, holder: u128, cap: u64, now_ms: u64) -> LedgerResult<bool> {
        let args = [hex(holder), cap.to_string(), now_ms.to_string()];
        Ok(self.run(&self.room, sale, &args).await? == 1)
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let [holders, _] = self.keys(sale);
        let n: u64 = redis::cmd("ZCOUNT")
            .arg(holders)
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut *conn)
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

    /// The rules every ledger keeps, run against the memory ledger and the real Redis.
    async fn ledger_rules(l: &dyn TokenLedger, sale: u64) {
        // The cap holds: two live tokens at most.
        assert!(
            l.issue(sale, ANN, 1, NOW + 1000, 2, NOW)
                .await
                .expect("issue")
        );
        assert!(
            l.issue(sale, BOB, 2, NOW + 2000, 2, NOW)
                .await
                .expect("issue")
        );
        assert!(
            !l.issue(sale, CAT, 3, NOW + 2000, 2, NOW)
                .await
                .expect("issue")
        );
        assert_eq!(l.live(sale, NOW).await.expect("live"), 2);
        // One live token per holder: asking again replaces it without a new place, and
        // the old token no longer spends.
        assert!(
            l.issue(sale, ANN, 11, NOW + 1000, 2, NOW)
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
            l.issue(sale, CAT, 3, NOW + 2000, 2, NOW)
                .await
                .expect("issue")
        );
        // A restored token is live again and can be spent once more.
        assert!(l.spend(sale, CAT, 3, NOW).await.expect("spend"));
        l.restore(sale, CAT, 3, NOW + 2000, NOW)
            .await
            .expect("restore");
        assert!(l.spend(sale, CAT, 3, NOW).await.expect("spend"));
        // A restore does not undo a newer token of the same holder.
        assert!(
            l.issue(sale, CAT, 4, NOW + 2000, 2, NOW)
                .await
                .expect("issue")
        );
        l.restore(sale, CAT, 3, NOW + 2000, NOW)
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
            l.issue(sale, DAN, 5, NOW + 5000, 1, NOW + 2000)
                .await
                .expect("issue")
        );
        // An expired token is not restored, and one already expired is not issued.
        l.restore(sale, BOB, 6, NOW + 10, NOW + 20)
            .await
            .expect("restore");
        assert!(!l.spend(sale, BOB, 6, NOW + 20).await.expect("spend"));
        assert!(!l.issue(sale, BOB, 7, NOW, 10, NOW).await.expect("issue"));
        // Sales do not share budgets.
        assert!(
            l.issue(sale + 1, DAN, 8, NOW + 5000, 1, NOW)
                .await
                .expect("issue")
        );
        assert!(l.spend(sale + 1, DAN, 8, NOW).await.expect("spend"));
        assert!(l.spend(sale, DAN, 5, NOW + 2000).await.expect("spend"));
    }

    #[tokio::test]
    async fn the_memory_ledger_keeps_the_rules() {
        let l = MemoryLedger::new();
        ledger_rules(&l, 7).await;
        // Housekeeping drops what expired, and nothing is left over.
        l.issue_now(1, ANN, 10, NOW + 10, 5, NOW).expect("issue");
        assert_eq!(l.purge_expired(NOW + 10), 1);
        assert!(l.is_empty(), "{} left", l.len());
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
        l.forget(7).await.expect("clean up");
        l.forget(8).await.expect("clean up");
    }

    #[tokio::test]
    async fn the_memory_ledger_is_bounded() {
        let l = MemoryLedger::with_limit(3);
        for n in 0..3 {
            assert!(l.issue_now(1, n, n, NOW + 10, 100, NOW).expect("room"));
        }
        assert_eq!(
            l.issue_now(1, 9, 9, NOW + 10, 100, NOW),
            Err(LedgerError::Full)
        );
        assert_eq!(
            l.issue_now(2, 9, 9, NOW + 10, 100, NOW),
            Err(LedgerError::Full)
        );
        // A holder replacing its token needs no room.
        assert_eq!(l.issue_now(1, 0, 20, NOW + 10, 100, NOW), Ok(true));
        // Expiry makes room.
        assert!(l.issue_now(1, 9, 9, NOW + 20, 100, NOW + 10).expect("room"));
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
                            l.issue_now(1, id, id, NOW + 10, 500, NOW) == Ok(true)
                        })
                        .count()
                })
            })
            .collect();
        let issued: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(issued, 500);
    }
}
