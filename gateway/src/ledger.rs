//! The token ledger: which purchase tokens are live (issued, not yet spent, not expired),
//! per sale. It carries two rules at once:
//!
//! - **No token, no access.** A sale may have at most `cap` live tokens, with
//!   `cap = ⌊units left × token_factor⌋` (see [`crate::token::token_cap`]): at the start of
//!   a sale that is `units × factor`; as units sell the cap shrinks, and tokens that expire
//!   unused, tokens given back after a failed purchase and units given back (a failed
//!   enqueue, a cancellation) make room again, so units returned can sell again.
//! - **Single use.** A purchase spends its token by removing it from the live set; a token
//!   that is not live (spent before, or never recorded) is refused. A purchase that fails
//!   for the system's reasons (the queue or the stock store unavailable) restores its
//!   token, so the buyer keeps their place.
//!
//! [`MemoryLedger`] keeps the set in this process (embedded default: tokens are valid only
//! at the gateway that issued them, and a restart voids them). [`RedisLedger`] keeps it in
//! Redis beside the stock, one sorted set per sale scored by expiry and each operation one
//! Lua script, so several gateway processes share one budget and a token spent at one
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
    /// Records a new token of `sale`, live until `expires_at_ms`, if fewer than `cap` of the
    /// sale's tokens are live at `now_ms`; `false` (nothing recorded) otherwise.
    async fn issue(
        &self,
        sale: u64,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool>;
    /// Spends a live token: `true` if it was live (and is now spent), `false` if it was
    /// spent before, has expired, or was never recorded.
    async fn spend(&self, sale: u64, nonce: u128, now_ms: u64) -> LedgerResult<bool>;
    /// Makes a spent token live again (its purchase failed before anything was held); does
    /// nothing once the token has expired.
    async fn restore(
        &self,
        sale: u64,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()>;
    /// Live tokens of `sale` at `now_ms`.
    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64>;
    /// Periodic clean-up (the gateway calls it every second or so). Default: nothing.
    async fn housekeeping(&self, _now_ms: u64) {}
}

#[derive(Debug, Default)]
struct SaleLive {
    /// nonce → expiry.
    by_nonce: HashMap<u128, u64>,
    /// (expiry, nonce), soonest first.
    by_expiry: BTreeSet<(u64, u128)>,
}

impl SaleLive {
    /// Drops expired tokens; returns how many.
    fn purge(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some(&(exp, nonce)) = self.by_expiry.first() {
            if exp > now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.by_nonce.remove(&nonce);
            n += 1;
        }
        n
    }

    fn insert(&mut self, nonce: u128, expires_at_ms: u64) -> bool {
        if self.by_nonce.insert(nonce, expires_at_ms).is_some() {
            return false;
        }
        self.by_expiry.insert((expires_at_ms, nonce));
        true
    }

    fn remove(&mut self, nonce: u128) -> bool {
        match self.by_nonce.remove(&nonce) {
            Some(exp) => {
                self.by_expiry.remove(&(exp, nonce));
                true
            }
            None => false,
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
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        if expires_at_ms <= now_ms {
            return Ok(false);
        }
        let mut live = self.lock();
        if live.sale(sale, now_ms).by_nonce.len() as u64 >= cap {
            return Ok(false);
        }
        if live.total >= self.limit {
            return Err(LedgerError::Full);
        }
        if live.sale(sale, now_ms).insert(nonce, expires_at_ms) {
            live.total += 1;
        }
        Ok(true)
    }

    /// [`TokenLedger::spend`], synchronously.
    pub fn spend_now(&self, sale: u64, nonce: u128, now_ms: u64) -> bool {
        let mut live = self.lock();
        let removed = live.sale(sale, now_ms).remove(nonce);
        if removed {
            live.total -= 1;
        }
        removed
    }

    /// Drops the expired tokens of every sale, and sales with none live (housekeeping);
    /// returns how many tokens.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut live = self.lock();
        let mut n = 0;
        live.sales.retain(|_, s| {
            n += s.purge(now_ms);
            !s.by_nonce.is_empty()
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
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        self.issue_now(sale, nonce, expires_at_ms, cap, now_ms)
    }

    async fn spend(&self, sale: u64, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        Ok(self.spend_now(sale, nonce, now_ms))
    }

    async fn restore(
        &self,
        sale: u64,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        if expires_at_ms <= now_ms {
            return Ok(());
        }
        let mut live = self.lock();
        if live.total >= self.limit {
            return Err(LedgerError::Full);
        }
        if live.sale(sale, now_ms).insert(nonce, expires_at_ms) {
            live.total += 1;
        }
        Ok(())
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let mut live = self.lock();
        Ok(live.sale(sale, now_ms).by_nonce.len() as u64)
    }

    async fn housekeeping(&self, now_ms: u64) {
        self.purge_expired(now_ms);
    }
}

const ISSUE: &str = r#"
local now = tonumber(ARGV[4])
local exp = tonumber(ARGV[2])
if exp <= now then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < exp - now then redis.call('PEXPIRE', KEYS[1], exp - now) end
return 1
"#;

const SPEND: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
return redis.call('ZREM', KEYS[1], ARGV[1])
"#;

const RESTORE: &str = r#"
local now = tonumber(ARGV[3])
local exp = tonumber(ARGV[2])
if exp <= now then return 0 end
redis.call('ZADD', KEYS[1], exp, ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < exp - now then redis.call('PEXPIRE', KEYS[1], exp - now) end
return 1
"#;

/// The live tokens in Redis, beside the stock of an [`inventory::RedisStore`]: key
/// `P{S}:tokens` (a sorted set of nonces scored by expiry; the key expires with its last
/// token, its time to live set relative to the gateway's clock, so that a skew between the
/// gateway's and Redis's clocks cannot expire it early)
/// for sale `S` under the store's prefix `P`.
pub struct RedisLedger {
    pool: deadpool_redis::Pool,
    prefix: String,
    issue: redis::Script,
    spend: redis::Script,
    restore: redis::Script,
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
            issue: redis::Script::new(ISSUE),
            spend: redis::Script::new(SPEND),
            restore: redis::Script::new(RESTORE),
        }
    }

    fn key(&self, sale: u64) -> String {
        format!("{}{{{sale}}}:tokens", self.prefix)
    }

    async fn run(&self, script: &redis::Script, sale: u64, args: &[String]) -> LedgerResult<i64> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let mut inv = script.prepare_invoke();
        inv.key(self.key(sale));
        for a in args {
            inv.arg(a);
        }
        inv.invoke_async(&mut *conn).await.map_err(store_err)
    }

    /// Deletes the sale's token set (tests and admin cleanup).
    pub async fn forget(&self, sale: u64) -> LedgerResult<()> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let _: i64 = redis::cmd("DEL")
            .arg(self.key(sale))
            .query_async(&mut *conn)
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

fn member(nonce: u128) -> String {
    format!("{nonce:032x}")
}

#[async_trait::async_trait]
impl TokenLedger for RedisLedger {
    async fn issue(
        &self,
        sale: u64,
        nonce: u128,
        expires_at_ms: u64,
        cap: u64,
        now_ms: u64,
    ) -> LedgerResult<bool> {
        let args = [
            member(nonce),
            expires_at_ms.to_string(),
            cap.to_string(),
            now_ms.to_string(),
        ];
        Ok(self.run(&self.issue, sale, &args).await? == 1)
    }

    async fn spend(&self, sale: u64, nonce: u128, now_ms: u64) -> LedgerResult<bool> {
        let args = [member(nonce), now_ms.to_string()];
        Ok(self.run(&self.spend, sale, &args).await? == 1)
    }

    async fn restore(
        &self,
        sale: u64,
        nonce: u128,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> LedgerResult<()> {
        let args = [member(nonce), expires_at_ms.to_string(), now_ms.to_string()];
        self.run(&self.restore, sale, &args).await.map(|_| ())
    }

    async fn live(&self, sale: u64, now_ms: u64) -> LedgerResult<u64> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let n: u64 = redis::cmd("ZCOUNT")
            .arg(self.key(sale))
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

    /// The rules every ledger keeps, run against the memory ledger here and against Redis
    /// in the integration tests.
    async fn ledger_rules(l: &dyn TokenLedger, sale: u64) {
        // The cap holds: two live tokens at most.
        assert!(l.issue(sale, 1, NOW + 1000, 2, NOW).await.expect("issue"));
        assert!(l.issue(sale, 2, NOW + 2000, 2, NOW).await.expect("issue"));
        assert!(!l.issue(sale, 3, NOW + 2000, 2, NOW).await.expect("issue"));
        assert_eq!(l.live(sale, NOW).await.expect("live"), 2);
        // Spending is single use, and frees a place.
        assert!(l.spend(sale, 1, NOW).await.expect("spend"));
        assert!(!l.spend(sale, 1, NOW).await.expect("spend"), "spent twice");
        assert!(
            !l.spend(sale, 99, NOW).await.expect("spend"),
            "never issued"
        );
        assert!(l.issue(sale, 3, NOW + 2000, 2, NOW).await.expect("issue"));
        // A restored token is live again and can be spent once more.
        assert!(l.spend(sale, 3, NOW).await.expect("spend"));
        l.restore(sale, 3, NOW + 2000, NOW).await.expect("restore");
        assert!(l.spend(sale, 3, NOW).await.expect("spend"));
        // An expired token is no longer live: it cannot be spent and frees its place.
        assert!(
            !l.spend(sale, 2, NOW + 2000).await.expect("spend"),
            "expired"
        );
        assert_eq!(l.live(sale, NOW + 2000).await.expect("live"), 0);
        assert!(
            l.issue(sale, 4, NOW + 5000, 1, NOW + 2000)
                .await
                .expect("issue")
        );
        // An expired token is not restored, and a token already expired is not issued.
        l.restore(sale, 5, NOW + 10, NOW + 20)
            .await
            .expect("restore");
        assert!(!l.spend(sale, 5, NOW + 20).await.expect("spend"));
        assert!(!l.issue(sale, 6, NOW, 10, NOW).await.expect("issue"));
        // Sales do not share budgets.
        assert!(
            l.issue(sale + 1, 4, NOW + 5000, 1, NOW)
                .await
                .expect("issue")
        );
        assert!(l.spend(sale + 1, 4, NOW).await.expect("spend"));
        assert!(l.spend(sale, 4, NOW + 2000).await.expect("spend"));
    }

    #[tokio::test]
    async fn the_memory_ledger_keeps_the_rules() {
        let l = MemoryLedger::new();
        ledger_rules(&l, 7).await;
        // Housekeeping drops what expired, and nothing is left over.
        l.issue_now(1, 10, NOW + 10, 5, NOW).expect("issue");
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
            assert!(l.issue_now(1, n, NOW + 10, 100, NOW).expect("room"));
        }
        assert_eq!(
            l.issue_now(1, 9, NOW + 10, 100, NOW),
            Err(LedgerError::Full)
        );
        assert_eq!(
            l.issue_now(2, 9, NOW + 10, 100, NOW),
            Err(LedgerError::Full)
        );
        // Expiry makes room.
        assert!(l.issue_now(1, 9, NOW + 20, 100, NOW + 10).expect("room"));
    }

    #[test]
    fn concurrent_issues_never_pass_the_cap() {
        let l = std::sync::Arc::new(MemoryLedger::new());
        let threads: Vec<_> = (0..4u128)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..1000u128)
                        .filter(|n| l.issue_now(1, t * 1000 + n, NOW + 10, 500, NOW) == Ok(true))
                        .count()
                })
            })
            .collect();
        let issued: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(issued, 500);
    }
}
