//! [`RedisStore`]: the stock in Redis (standalone or Cluster), each step one Lua script
//! (atomic in Redis) on the keys of one stock bucket, so several gateway processes share one
//! stock without overselling.
//!
//! The layout is [`crate::keys`]. A sale of K = 1 bucket is one slot and every operation
//! one script, as before buckets. A sale of K > 1 buckets (a hot sale, spread over the
//! cluster's masters) routes each user to a home bucket ([`crate::home_bucket`]):
//!
//! - **reserve**: the home bucket's script checks the user's holder records (one per
//!   reservation, up to the sale's per-person limit: they live only in the home bucket,
//!   [`crate::keys`]), and takes a unit there if it has one. If the home is dry, it writes
//!   the new holder record first as pending, naming the sibling it will try (`tag|b?`);
//!   then a sibling's script takes a unit by a conditional decrement and the home's script
//!   settles the record (`tag|b`), or the sibling says it is empty and the home's script
//!   moves the pending record on to the next sibling (taking a unit at home if one came
//!   back meanwhile). Only when every bucket was seen empty in this attempt does the last
//!   step delete the record and answer sold out. A retried tagged reserve reads its own
//!   record: settled, it takes nothing; pending, it goes on from the sibling it names.
//! - **release**: the home's script deletes the record (the one with the tag) and, if the
//!   unit came from a sibling, the sibling's script gives it back there (delete first: a
//!   crash in between leaves a unit missing, never one too many).
//! - **define / restock / reconcile** write every bucket, bucket by bucket, units split
//!   evenly ([`crate::bucket_share`]); reconcile puts the holders in their home buckets and
//!   splits the units left (total minus holders) evenly, so no bucket goes negative.
//! - **stock** sums the buckets (not one atomic read across buckets for K > 1).
//!
//! A crash between two scripts of one operation leaves at worst a holder record without a
//! unit taken, or a unit taken but not given back: a unit held that no order uses, which the
//! gateway's reconciliation at rest resets to the database (the source of truth). A release
//! of a reservation still in flight is not expected (releases follow the purchase's own
//! reserve, or an order made after it).
//!
//! A process keeps each sale's K for [`BUCKETS_RECHECK`]; a sale's K is set when it is
//! defined (and by a reconcile that names another K, meant for a sale at rest).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Script;

use crate::keys::{SaleKeys, holder_field};
use crate::redis_conn::RedisConn;
use crate::{
    Error, Holder, Released, Reservation, Result, STOCK_BUCKETS_MAX, SaleId, SaleStock, StockStore,
    bucket_share, group_holders, home_bucket, validate_buckets, validate_limit, validate_tag,
    validate_units, validate_user,
};

/// How long a process trusts its copy of a sale's stock bucket count before reading it
/// again.
pub const BUCKETS_RECHECK: Duration = Duration::from_secs(5);
/// Longest key prefix, in bytes.
pub const PREFIX_BYTES_MAX: usize = 64;

/// The Lua helpers every holder-record script starts with. A user's reservations live in
/// slots 0..`slots` of their home bucket's holder hash (field `user` for slot 0,
/// `user\x1Fi` for slot i ≥ 1: [`crate::keys::holder_field`]); `slots` is
/// [`crate::PER_USER_LIMIT_MAX`], passed in as `ARGV[1]` and the user as `ARGV[2]`.
/// `records()` reads them all in one `HMGET`.
const SLOTS_LUA: &str = r#"
local slots = tonumber(ARGV[1])
local function field(i)
  if i == 0 then return ARGV[2] end
  return ARGV[2] .. '\31' .. i
end
local function records()
  local fields = {}
  for i = 0, slots - 1 do fields[#fields + 1] = field(i) end
  return redis.call('HMGET', KEYS[2], unpack(fields))
end
local function tag_of(v, bucketed)
  if bucketed then
    local t = string.match(v, '^(.*)|%d+$')
    if t then return t end
  end
  return v
end
"#;

/// Home bucket `KEYS = left, holders`, `ARGV = slots, user, record if taken here, pending
/// record naming the first sibling to try ('' for K = 1: answer sold out), tagged
/// ('1'/'0'), limit, tag, bucketed ('1'/'0')`.
///
/// A tagged reservation is idempotent: the same call run again (a cluster client re-sends
/// a script whose reply was lost, e.g. across a master's failover; a caller retrying)
/// finds its own record and answers as the first run did: its unit taken here (`left`), or
/// from a sibling (`-7`), or still being looked for in sibling b (`-100 - b`: the walk goes
/// on from there); never `already bought` for the buyer's own purchase and never a second
/// unit. A user holding `limit` records gets `-2`.
const RESERVE: &str = r#"
local left = redis.call('GET', KEYS[1])
if not left then return -3 end
local recs = records()
local held, free = 0, nil
for i = 1, slots do
  local cur = recs[i]
  if cur then
    held = held + 1
    if ARGV[5] == '1' then
      if cur == ARGV[3] then return tonumber(left) end
      if ARGV[8] == '1' then
        local t, g, p = string.match(cur, '^(.*)|(%d+)(%??)$')
        if t == ARGV[7] then
          if p == '?' then return -100 - tonumber(g) end
          return -7
        end
      end
    end
  elseif not free then
    free = i - 1
  end
end
if held >= tonumber(ARGV[6]) or not free then return -2 end
left = tonumber(left)
if left > 0 then
  redis.call('DECR', KEYS[1])
  redis.call('HSET', KEYS[2], field(free), ARGV[3])
  return left - 1
end
if ARGV[4] == '' then return -1 end
redis.call('HSET', KEYS[2], field(free), ARGV[4])
return -5
"#;

/// Sibling bucket `KEYS = left`: a conditional decrement (a missing bucket is empty).
const TAKE: &str = r#"
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left <= 0 then return -1 end
return redis.call('DECR', KEYS[1])
"#;

/// Home bucket after a sibling gave its unit: `KEYS = left, holders`, `ARGV = slots, user,
/// the pending record naming that sibling, the settled record`: 1, or -6 if the pending
/// record is gone.
const SETTLE: &str = r#"
local recs = records()
for i = 1, slots do
  if recs[i] == ARGV[3] then
    redis.call('HSET', KEYS[2], field(i - 1), ARGV[4])
    return 1
  end
end
return -6
"#;

/// Home bucket after a sibling was empty: `KEYS = left, holders`, `ARGV = slots, user, the
/// pending record naming that sibling, record if taken here, pending record naming the next
/// sibling ('' when every bucket has been tried: answer sold out)`.
const MOVE: &str = r#"
local recs = records()
local at = nil
for i = 1, slots do
  if recs[i] == ARGV[3] then at = field(i - 1) break end
end
if not at then return -6 end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left > 0 then
  redis.call('DECR', KEYS[1])
  redis.call('HSET', KEYS[2], at, ARGV[4])
  return left - 1
end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], at)
  return -1
end
redis.call('HSET', KEYS[2], at, ARGV[5])
return -5
"#;

/// Home bucket `KEYS = left, holders`, `ARGV = slots, user, only with tag ('1'/'0'), tag,
/// bucketed ('1'/'0'), home index`: `{-1, 0}` not held, `{0, left}` given back here,
/// `{1, g}` to be given back to bucket g. Without a tag, the user's highest slot goes. A
/// pending record (`tag|b?`: a reservation still walking the siblings) is never released.
const RELEASE: &str = r#"
local recs = records()
local at, v = nil, nil
for i = slots, 1, -1 do
  local cur = recs[i]
  local pending = ARGV[5] == '1' and string.match(cur or '', '|%d+%?$')
  if cur and not pending and (ARGV[3] ~= '1' or tag_of(cur, ARGV[5] == '1') == ARGV[4]) then
    at, v = field(i - 1), cur
    break
  end
end
if not at then return {-1, 0} end
local giver = ARGV[6]
if ARGV[5] == '1' then
  local g = string.match(v, '|(%d+)$')
  if g then giver = g end
end
redis.call('HDEL', KEYS[2], at)
if giver == ARGV[6] then return {0, redis.call('INCR', KEYS[1])} end
return {1, tonumber(giver)}
"#;

/// Bucket `KEYS = left`, `ARGV = units`: adds units to an existing bucket; -3 if missing.
const GIVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"#;

/// Base `KEYS = units, buckets, left, holders`, `ARGV = units, K, bucket 0's share`:
/// `{created (1/0), units, K}`.
const DEFINE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
  redis.call('SET', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[4])
  return {1, tonumber(ARGV[1]), tonumber(ARGV[2])}
end
return {0, tonumber(redis.call('GET', KEYS[1])), tonumber(redis.call('GET', KEYS[2]) or '1')}
"#;

/// Sibling `KEYS = left, holders`, `ARGV = share, force ('1'/'0')`: sets the bucket (if
/// forced or missing).
const DEFINE_BUCKET: &str = r#"
if ARGV[2] == '1' or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
return 1
"#;

/// Bucket `KEYS = left, holders`, `ARGV = left, then user, record pairs`.
const RECONCILE_BUCKET: &str = r#"
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('HLEN', KEYS[2])
"#;

/// Base `KEYS = units, buckets, left, holders`, `ARGV = units, K, left, then pairs`.
const RECONCILE_BASE: &str = r#"
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('DEL', KEYS[4])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[3], ARGV[3])
return redis.call('HLEN', KEYS[4])
"#;

/// Base `KEYS = units, buckets, left, holders`, `ARGV = units to add, units max`:
/// `{K, units}` after adding bucket 0's share; -3 no sale, -4 over the max.
const RESTOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if tonumber(redis.call('GET', KEYS[1])) + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -4 end
local k = tonumber(redis.call('GET', KEYS[2]) or '1')
local add = tonumber(ARGV[1])
local share = math.floor(add / k)
if add % k > 0 then share = share + 1 end
local units = redis.call('INCRBY', KEYS[1], add)
redis.call('INCRBY', KEYS[3], share)
return {k, units}
"#;

/// Base `KEYS = units, buckets, left, holders`: -3 no sale, else `{units, K, left, holders}`
/// of bucket 0.
const STOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
return {tonumber(redis.call('GET', KEYS[1])), tonumber(redis.call('GET', KEYS[2]) or '1'),
  tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('HLEN', KEYS[4])}
"#;

/// Sibling `KEYS = left, holders`: `{left, holders}` (0 for a missing bucket).
const STOCK_BUCKET: &str = r#"
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HLEN', KEYS[2])}
"#;

/// Base `KEYS = units, buckets`: -3 no sale, else K.
const BUCKETS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
return tonumber(redis.call('GET', KEYS[2]) or '1')
"#;

/// Scripts answer `-3` for a sale that is not defined.
const NO_SALE: i64 = -3;
/// The home script wrote the holder record: try the sibling it names.
const TRY_SIBLING: i64 = -5;
/// The holder record changed while a reservation was in flight.
const CHANGED: i64 = -6;
/// A tagged reserve found its tag holding a unit taken from a sibling bucket.
const HELD_BY_TAG: i64 = -7;
/// A tagged reserve found its tag's record pending at sibling `TRY_FROM - reply`.
const TRY_FROM: i64 = -100;

/// A holder-record script: [`SLOTS_LUA`] then `body`.
fn slots_script(body: &str) -> Script {
    Script::new(&format!("{SLOTS_LUA}{body}"))
}

/// `ARGV[1]` of a holder-record script.
fn slots_arg() -> String {
    crate::PER_USER_LIMIT_MAX.to_string()
}

struct Scripts {
    reserve: Script,
    take: Script,
    moved: Script,
    settle: Script,
    release: Script,
    give: Script,
    define: Script,
    define_bucket: Script,
    reconcile_bucket: Script,
    reconcile_base: Script,
    restock: Script,
    stock: Script,
    stock_bucket: Script,
    buckets: Script,
}

/// Stock in Redis, standalone or Cluster.
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    scripts: Scripts,
    /// Sale → its bucket count and when it was read (bounded by `crate::SALES_MAX`).
    buckets: Mutex<HashMap<SaleId, (u32, Instant)>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

fn n(x: i64) -> Result<u64> {
    u64::try_from(x).map_err(|_| Error::Store(format!("negative figure {x}")))
}

/// A pending holder record's value: the reservation is trying to take a unit from sibling
/// `b` (written before the sibling's script runs, settled to `tag|b` after it gave one).
fn pending(tag: &str, b: u32) -> String {
    format!("{tag}|{b}?")
}

/// A holder record's value: the plain tag for K = 1, else `tag|g`.
fn record(tag: &str, buckets: u32, giver: u32) -> String {
    if buckets <= 1 {
        tag.to_string()
    } else {
        format!("{tag}|{giver}")
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`, or
    /// `redis+cluster://host:port,host:port,…`), its keys under `prefix`, with at most
    /// `connections` pooled connections (standalone; cut to
    /// [`crate::redis_conn::POOL_CONNECTIONS_MAX`]).
    /// Checks that Redis answers.
    pub async fn connect(url: &str, prefix: &str, connections: usize) -> Result<RedisStore> {
        if prefix.is_empty() || prefix.len() > PREFIX_BYTES_MAX || prefix.contains(['{', '}']) {
            return Err(Error::Invalid(format!(
                "a key prefix is 1..={PREFIX_BYTES_MAX} bytes without braces"
            )));
        }
        let conn = RedisConn::open(url, connections).await?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            scripts: Scripts {
                reserve: slots_script(RESERVE),
                take: Script::new(TAKE),
                moved: slots_script(MOVE),
                settle: slots_script(SETTLE),
                release: slots_script(RELEASE),
                give: Script::new(GIVE),
                define: Script::new(DEFINE),
                define_bucket: Script::new(DEFINE_BUCKET),
                reconcile_bucket: Script::new(RECONCILE_BUCKET),
                reconcile_base: Script::new(RECONCILE_BASE),
                restock: Script::new(RESTOCK),
                stock: Script::new(STOCK),
                stock_bucket: Script::new(STOCK_BUCKET),
                buckets: Script::new(BUCKETS),
            },
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The connection (other Redis-backed parts of a gateway share it).
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, sale: SaleId) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale)
    }

    /// Deletes the sale's keys, every possible bucket's (tests and admin cleanup).
    pub async fn forget(&self, sale: SaleId) -> Result<()> {
        let k = self.keys(sale);
        for b in (0..STOCK_BUCKETS_MAX).rev() {
            let [left, holders] = k.bucket(b);
            let _: i64 = self
                .conn
                .query(redis::cmd("DEL").arg(left).arg(holders))
                .await?;
        }
        let _: i64 = self
            .conn
            .query(redis::cmd("DEL").arg(k.units()).arg(k.buckets()))
            .await?;
        self.forget_buckets(sale);
        Ok(())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SaleId, (u32, Instant)>> {
        match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn remember_buckets(&self, sale: SaleId, k: u32) {
        let mut c = self.cache();
        if c.len() >= crate::SALES_MAX && !c.contains_key(&sale) {
            c.clear();
        }
        c.insert(sale, (k, Instant::now()));
    }

    fn forget_buckets(&self, sale: SaleId) {
        self.cache().remove(&sale);
    }

    /// The sale's bucket count (cached for [`crate::BUCKETS_RECHECK`]), `None` if not defined.
    pub async fn buckets(&self, sale: SaleId) -> Result<Option<u32>> {
        if let Some((k, at)) = self.cache().get(&sale).copied()
            && at.elapsed() < BUCKETS_RECHECK
        {
            return Ok(Some(k));
        }
        let k = self.keys(sale);
        let r: i64 = self
            .conn
            .invoke_script(&self.scripts.buckets, &[k.units(), k.buckets()], &[])
            .await?;
        if r == NO_SALE {
            self.forget_buckets(sale);
            return Ok(None);
        }
        let k = u32::try_from(r)
            .ok()
            .filter(|k| validate_buckets(*k).is_ok())
            .ok_or_else(|| Error::Store(format!("sale {sale}: bucket count {r}")))?;
        self.remember_buckets(sale, k);
        Ok(Some(k))
    }

    async fn bucket_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        sale: SaleId,
        b: u32,
        args: &[String],
    ) -> Result<T> {
        let keys = self.keys(sale).bucket(b);
        self.conn.invoke_script(script, &keys, args).await
    }

    async fn base_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        sale: SaleId,
        args: &[String],
    ) -> Result<T> {
        let keys = self.keys(sale).base();
        self.conn.invoke_script(script, &keys, args).await
    }

    /// Units left as a reservation answers it: the giving bucket's `left` when above 0 (a
    /// lower bound of the sale's), else the sum of every bucket (so 0 means sold out).
    async fn left_after(&self, sale: SaleId, k: u32, bucket_left: i64) -> Result<u64> {
        if bucket_left > 0 || k <= 1 {
            return n(bucket_left);
        }
        Ok(self.stock(sale).await?.map_or(0, |s| s.left))
    }

    /// Writes sibling buckets `1..k` (`force`: overwrite) with their share of `units`.
    async fn define_siblings(&self, sale: SaleId, units: u64, k: u32, force: bool) -> Result<()> {
        let force = if force { "1" } else { "0" }.to_string();
        for b in 1..k {
            let share = bucket_share(units, k, b).to_string();
            let _: i64 = self
                .bucket_script(
                    &self.scripts.define_bucket,
                    sale,
                    b,
                    &[share, force.clone()],
                )
                .await?;
        }
        Ok(())
    }
}

fn stock_reply(v: redis::Value, what: &str) -> Result<Vec<i64>> {
    redis::from_redis_value(v).map_err(|e| Error::Store(format!("{what}: {e}")))
}

#[async_trait::async_trait]
impl StockStore for RedisStore {
    async fn define(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        self.define_bucketed(sale, units, crate::STOCK_BUCKETS_DEFAULT)
            .await
    }

    async fn define_bucketed(&self, sale: SaleId, units: u64, buckets: u32) -> Result<SaleStock> {
        validate_units(units)?;
        validate_buckets(buckets)?;
        let share0 = bucket_share(units, buckets, 0);
        let v: Vec<i64> = self
            .base_script(
                &self.scripts.define,
                sale,
                &[units.to_string(), buckets.to_string(), share0.to_string()],
            )
            .await?;
        let [created, units_now, k] = v[..] else {
            return Err(Error::Store(format!("unexpected define reply {v:?}")));
        };
        let k = u32::try_from(k)
            .ok()
            .filter(|k| validate_buckets(*k).is_ok())
            .ok_or_else(|| Error::Store(format!("sale {sale}: bucket count {k}")))?;
        // A new sale's siblings are (re)written; an existing one's are made sure of (a
        // define cut short between its scripts left some missing).
        self.define_siblings(sale, n(units_now)?, k, created == 1)
            .await?;
        self.remember_buckets(sale, k);
        self.stock(sale)
            .await?
            .ok_or_else(|| Error::Store(format!("sale {sale} vanished while defined")))
    }

    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        let k = self
            .buckets(sale)
            .await?
            .unwrap_or(crate::STOCK_BUCKETS_DEFAULT);
        self.reconcile_bucketed(sale, units, k, holders).await
    }

    async fn reconcile_bucketed(
        &self,
        sale: SaleId,
        units: u64,
        buckets: u32,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        validate_units(units)?;
        validate_buckets(buckets)?;
        // Checked here, before any script changes anything (a repeated (user, tag) pair
        // counts once).
        let (groups, held) = group_holders(holders)?;
        if held > units {
            return Err(Error::Invalid(format!("{held} holders for {units} units")));
        }
        let before = self.buckets(sale).await?;
        // Holders go to their home buckets, a user's reservations in slots 0, 1, …; the
        // units left are split evenly whatever the holders' spread, so no bucket's left is
        // negative.
        let mut per_bucket: Vec<Vec<String>> = vec![Vec::new(); buckets as usize];
        for (user, tags) in groups {
            let h = home_bucket(user, buckets);
            for (slot, tag) in tags.into_iter().enumerate() {
                per_bucket[h as usize].push(holder_field(user, slot as u32));
                per_bucket[h as usize].push(record(tag, buckets, h));
            }
        }
        let left_total = units - held;
        let mut holders_seen = 0u64;
        for b in (1..buckets).rev() {
            let mut args = Vec::with_capacity(1 + per_bucket[b as usize].len());
            args.push(bucket_share(left_total, buckets, b).to_string());
            args.append(&mut per_bucket[b as usize]);
            let h: i64 = self
                .bucket_script(&self.scripts.reconcile_bucket, sale, b, &args)
                .await?;
            holders_seen += n(h)?;
        }
        let mut args = Vec::with_capacity(3 + per_bucket[0].len());
        args.push(units.to_string());
        args.push(buckets.to_string());
        args.push(bucket_share(left_total, buckets, 0).to_string());
        args.append(&mut per_bucket[0]);
        let h: i64 = self
            .base_script(&self.scripts.reconcile_base, sale, &args)
            .await?;
        holders_seen += n(h)?;
        // Buckets of an earlier, wider layout go.
        for b in buckets..before.unwrap_or(0) {
            let [left, hold] = self.keys(sale).bucket(b);
            let _: i64 = self
                .conn
                .query(redis::cmd("DEL").arg(left).arg(hold))
                .await?;
        }
        self.remember_buckets(sale, buckets);
        Ok(SaleStock {
            units,
            left: left_total,
            holders: holders_seen,
        })
    }

    async fn reserve_up_to(
        &self,
        sale: SaleId,
        user: &str,
        tag: &str,
        limit: u32,
    ) -> Result<Reservation> {
        validate_user(user)?;
        validate_tag(tag)?;
        validate_limit(limit)?;
        let Some(k) = self.buckets(sale).await? else {
            return Ok(Reservation::NoSuchSale);
        };
        let home = home_bucket(user, k);
        let next = if k > 1 {
            pending(tag, (home + 1) % k)
        } else {
            String::new()
        };
        let r: i64 = self
            .bucket_script(
                &self.scripts.reserve,
                sale,
                home,
                &[
                    slots_arg(),
                    user.to_string(),
                    record(tag, k, home),
                    next,
                    if tag.is_empty() { "0" } else { "1" }.to_string(),
                    limit.to_string(),
                    tag.to_string(),
                    if k > 1 { "1" } else { "0" }.to_string(),
                ],
            )
            .await?;
        // The sibling the pending holder record names: the walk starts there.
        let first = match r {
            -1 => return Ok(Reservation::SoldOut),
            -2 => return Ok(Reservation::AlreadyBought),
            NO_SALE => return Ok(Reservation::NoSuchSale),
            HELD_BY_TAG => {
                return Ok(Reservation::Reserved {
                    left: self.left_after(sale, k, 0).await?,
                });
            }
            TRY_SIBLING if k > 1 => (home + 1) % k,
            left if left >= 0 => {
                return Ok(Reservation::Reserved {
                    left: self.left_after(sale, k, left).await?,
                });
            }
            from if from <= TRY_FROM && k > 1 => u32::try_from(TRY_FROM - from)
                .ok()
                .filter(|b| *b < k && *b != home)
                .ok_or_else(|| Error::Store(format!("unexpected reserve reply {from}")))?,
            other => return Err(Error::Store(format!("unexpected reserve reply {other}"))),
        };
        // The home is dry and the pending holder record names sibling `first`.
        for i in (first + k - home) % k..k {
            let b = (home + i) % k;
            let t: i64 = self.bucket_script(&self.scripts.take, sale, b, &[]).await?;
            if t >= 0 {
                // Settle the record (`tag|b`), so a retry knows the unit is taken. If it is
                // gone (a reconcile reset the sale meanwhile), the unit is still this
                // reservation's: the next reconciliation at rest counts it again.
                let _: i64 = self
                    .bucket_script(
                        &self.scripts.settle,
                        sale,
                        home,
                        &[
                            slots_arg(),
                            user.to_string(),
                            pending(tag, b),
                            record(tag, k, b),
                        ],
                    )
                    .await?;
                return Ok(Reservation::Reserved {
                    left: self.left_after(sale, k, t).await?,
                });
            }
            let next = if i + 1 < k {
                pending(tag, (home + i + 1) % k)
            } else {
                String::new()
            };
            let m: i64 = self
                .bucket_script(
                    &self.scripts.moved,
                    sale,
                    home,
                    &[
                        slots_arg(),
                        user.to_string(),
                        pending(tag, b),
                        record(tag, k, home),
                        next,
                    ],
                )
                .await?;
            match m {
                -1 => return Ok(Reservation::SoldOut),
                TRY_SIBLING => {}
                CHANGED => {
                    return Err(Error::Store(format!(
                        "sale {sale}: the reservation of {user:?} changed while in flight"
                    )));
                }
                left if left >= 0 => {
                    return Ok(Reservation::Reserved {
                        left: self.left_after(sale, k, left).await?,
                    });
                }
                other => return Err(Error::Store(format!("unexpected move reply {other}"))),
            }
        }
        Err(Error::Store(format!(
            "sale {sale}: the reservation of {user:?} ran past its {k} buckets"
        )))
    }

    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released> {
        validate_user(user)?;
        let Some(k) = self.buckets(sale).await? else {
            return Ok(Released::NotHeld);
        };
        let home = home_bucket(user, k);
        let (only, want) = match tag {
            Some(t) => ("1", t),
            None => ("0", ""),
        };
        let v: Vec<i64> = self
            .bucket_script(
                &self.scripts.release,
                sale,
                home,
                &[
                    slots_arg(),
                    user.to_string(),
                    only.to_string(),
                    want.to_string(),
                    if k > 1 { "1" } else { "0" }.to_string(),
                    home.to_string(),
                ],
            )
            .await?;
        match v[..] {
            [-1, _] => Ok(Released::NotHeld),
            [0, left] => Ok(Released::Released { left: n(left)? }),
            [1, giver] => {
                // Back to the bucket that gave it (the home, if that bucket is gone).
                let mut to = u32::try_from(giver).ok().filter(|g| *g < k).unwrap_or(home);
                loop {
                    let left: i64 = self
                        .bucket_script(&self.scripts.give, sale, to, &["1".to_string()])
                        .await?;
                    if left >= 0 {
                        return Ok(Released::Released { left: n(left)? });
                    }
                    if to == 0 {
                        return Err(Error::Store(format!(
                            "sale {sale}: no bucket to give a unit back to"
                        )));
                    }
                    to = 0;
                }
            }
            _ => Err(Error::Store(format!("unexpected release reply {v:?}"))),
        }
    }

    async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        validate_units(units)?;
        let max = crate::UNITS_MAX.to_string();
        let v: redis::Value = self
            .base_script(&self.scripts.restock, sale, &[units.to_string(), max])
            .await?;
        let (k, _units) = match v {
            redis::Value::Int(NO_SALE) => {
                return Err(Error::Invalid(format!("sale {sale} is not defined")));
            }
            redis::Value::Int(-4) => {
                return Err(Error::Limit {
                    what: "units per sale",
                    limit: crate::UNITS_MAX,
                });
            }
            v => match stock_reply(v, "restock")?[..] {
                [k, u] => (k, u),
                ref other => {
                    return Err(Error::Store(format!("unexpected restock reply {other:?}")));
                }
            },
        };
        let k = u32::try_from(k)
            .ok()
            .filter(|k| validate_buckets(*k).is_ok())
            .ok_or_else(|| Error::Store(format!("sale {sale}: bucket count {k}")))?;
        for b in 1..k {
            let share = bucket_share(units, k, b);
            if share == 0 {
                continue;
            }
            let _: i64 = self
                .bucket_script(&self.scripts.give, sale, b, &[share.to_string()])
                .await?;
        }
        self.stock(sale)
            .await?
            .ok_or_else(|| Error::Store(format!("sale {sale} vanished while restocked")))
    }

    async fn stock(&self, sale: SaleId) -> Result<Option<SaleStock>> {
        let v: redis::Value = self.base_script(&self.scripts.stock, sale, &[]).await?;
        if v == redis::Value::Int(NO_SALE) {
            return Ok(None);
        }
        let v = stock_reply(v, "stock")?;
        let [units, k, left, holders] = v[..] else {
            return Err(Error::Store(format!("unexpected stock reply {v:?}")));
        };
        let k = u32::try_from(k)
            .ok()
            .filter(|k| validate_buckets(*k).is_ok())
            .ok_or_else(|| Error::Store(format!("sale {sale}: bucket count {k}")))?;
        let (mut left, mut holders) = (n(left)?, n(holders)?);
        for b in 1..k {
            let v: Vec<i64> = self
                .bucket_script(&self.scripts.stock_bucket, sale, b, &[])
                .await?;
            let [l, h] = v[..] else {
                return Err(Error::Store(format!("unexpected bucket reply {v:?}")));
            };
            left += n(l)?;
            holders += n(h)?;
        }
        self.remember_buckets(sale, k);
        Ok(Some(SaleStock {
            units: n(units)?,
            left,
            holders,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::record;

    #[test]
    fn a_record_is_the_plain_tag_without_buckets() {
        assert_eq!(record("t-1", 1, 0), "t-1");
        assert_eq!(record("t|1", 4, 2), "t|1|2");
        assert_eq!(record("", 4, 0), "|0");
        assert_eq!(super::pending("t|1", 3), "t|1|3?");
    }
}
