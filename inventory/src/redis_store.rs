//! [`RedisStore`]: the stock in Redis, each operation one Lua script (atomic in Redis), so
//! several gateway processes share one stock without overselling.
//!
//! Keys of sale `S` under prefix `P`: `P{S}:units`, `P{S}:left`, `P{S}:holder_tags`; the
//! layout is [`crate::keys`].

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::Script;

use crate::{
    Error, Holder, Released, Reservation, Result, SaleId, SaleStock, StockStore, validate_tag,
    validate_units, validate_user,
};

/// Longest wait for a Redis reply (or a pooled connection).
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to connect to Redis.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most connections in the pool.
pub const POOL_CONNECTIONS_MAX: usize = 32;

const RESERVE: &str = r#"
local left = redis.call('GET', KEYS[2])
if not left then return -3 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -2 end
left = tonumber(left)
if left <= 0 then return -1 end
redis.call('DECR', KEYS[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return left - 1
"#;

const RELEASE: &str = r#"
local tag = redis.call('HGET', KEYS[3], ARGV[1])
if not tag then return -1 end
if ARGV[2] == '1' and tag ~= ARGV[3] then return -1 end
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('INCR', KEYS[2])
"#;

const DEFINE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return {tonumber(redis.call('GET', KEYS[1])), tonumber(redis.call('GET', KEYS[2])), redis.call('HLEN', KEYS[3])}
"#;

const RECONCILE: &str = r#"
redis.call('DEL', KEYS[3])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
local holders = redis.call('HLEN', KEYS[3])
local units = tonumber(ARGV[1])
redis.call('SET', KEYS[1], units)
redis.call('SET', KEYS[2], units - holders)
return {units, units - holders, holders}
"#;

const RESTOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if tonumber(redis.call('GET', KEYS[1])) + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -4 end
local units = redis.call('INCRBY', KEYS[1], ARGV[1])
local left = redis.call('INCRBY', KEYS[2], ARGV[1])
return {units, left, redis.call('HLEN', KEYS[3])}
"#;

const STOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
return {tonumber(redis.call('GET', KEYS[1])), tonumber(redis.call('GET', KEYS[2])), redis.call('HLEN', KEYS[3])}
"#;

/// Stock in Redis.
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    reserve: Script,
    release: Script,
    define: Script,
    reconcile: Script,
    restock: Script,
    stock: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`), its keys under `prefix`, with
    /// at most `connections` pooled connections (cut to [`POOL_CONNECTIONS_MAX`]). Checks
    /// that Redis answers.
    pub async fn connect(url: &str, prefix: &str, connections: usize) -> Result<RedisStore> {
        if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}']) {
            return Err(Error::Invalid(
                "a key prefix is 1..=64 bytes without braces".into(),
            ));
        }
        // A reply slower than this is an error (the caller answers 503); redis-rs's own
        // default (0.5 s) is too tight for a loaded 2-core machine.
        let conn_cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT));
        let manager = Manager::new_with_config(url, conn_cfg).map_err(store_err)?;
        let pool = Pool::builder(manager)
            .max_size(connections.clamp(1, POOL_CONNECTIONS_MAX))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .build()
            .map_err(store_err)?;
        let store = RedisStore {
            pool,
            prefix: prefix.to_string(),
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            define: Script::new(DEFINE),
            reconcile: Script::new(RECONCILE),
            restock: Script::new(RESTOCK),
            stock: Script::new(STOCK),
        };
        let mut conn = store.pool.get().await.map_err(store_err)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(store_err)?;
        Ok(store)
    }

    /// The connection pool (other Redis-backed parts of a gateway share it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn keys(&self, sale: SaleId) -> [String; 3] {
        crate::keys::SaleKeys::new(&self.prefix, sale).stock()
    }

    /// Deletes the sale's keys (tests and admin cleanup).
    pub async fn forget(&self, sale: SaleId) -> Result<()> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let [a, b, c] = self.keys(sale);
        let _: i64 = redis::cmd("DEL")
            .arg(a)
            .arg(b)
            .arg(c)
            .query_async(&mut *conn)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        sale: SaleId,
        args: &[&str],
    ) -> Result<T> {
        let mut conn = self.pool.get().await.map_err(store_err)?;
        let mut inv = script.prepare_invoke();
        for k in self.keys(sale) {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        inv.invoke_async(&mut *conn).await.map_err(store_err)
    }
}

fn stock_of(v: Vec<i64>) -> Result<SaleStock> {
    let [units, left, holders] = v[..] else {
        return Err(Error::Store(format!("unexpected stock reply {v:?}")));
    };
    let n = |x: i64| u64::try_from(x).map_err(|_| Error::Store(format!("negative figure {x}")));
    Ok(SaleStock {
        units: n(units)?,
        left: n(left)?,
        holders: n(holders)?,
    })
}

/// Scripts answer `-3` for a sale that is not defined.
const NO_SALE: i64 = -3;

#[async_trait::async_trait]
impl StockStore for RedisStore {
    async fn define(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        validate_units(units)?;
        let v: Vec<i64> = self.run(&self.define, sale, &[&units.to_string()]).await?;
        stock_of(v)
    }

    async fn reconcile_tagged(
        &self,
        sale: SaleId,
        units: u64,
        holders: &[Holder],
    ) -> Result<SaleStock> {
        validate_units(units)?;
        for h in holders {
            validate_user(&h.user)?;
            validate_tag(&h.tag)?;
        }
        // Checked here, before the script changes anything (a later holder of the same
        // user wins, as in the script's HSET).
        let mut distinct: std::collections::HashMap<&str, &str> =
            std::collections::HashMap::with_capacity(holders.len());
        for h in holders {
            distinct.insert(&h.user, &h.tag);
        }
        if distinct.len() as u64 > units {
            return Err(Error::Invalid(format!(
                "{} holders for {units} units",
                distinct.len()
            )));
        }
        let units_arg = units.to_string();
        let mut args: Vec<&str> = Vec::with_capacity(2 * distinct.len() + 1);
        args.push(&units_arg);
        for (user, tag) in distinct {
            args.push(user);
            args.push(tag);
        }
        let v: Vec<i64> = self.run(&self.reconcile, sale, &args).await?;
        stock_of(v)
    }

    async fn reserve_as(&self, sale: SaleId, user: &str, tag: &str) -> Result<Reservation> {
        validate_user(user)?;
        validate_tag(tag)?;
        let r: i64 = self.run(&self.reserve, sale, &[user, tag]).await?;
        Ok(match r {
            -1 => Reservation::SoldOut,
            -2 => Reservation::AlreadyBought,
            NO_SALE => Reservation::NoSuchSale,
            left if left >= 0 => Reservation::Reserved { left: left as u64 },
            other => return Err(Error::Store(format!("unexpected reserve reply {other}"))),
        })
    }

    async fn release_if(&self, sale: SaleId, user: &str, tag: Option<&str>) -> Result<Released> {
        validate_user(user)?;
        let (only, want) = match tag {
            Some(t) => ("1", t),
            None => ("0", ""),
        };
        let r: i64 = self.run(&self.release, sale, &[user, only, want]).await?;
        Ok(match r {
            -1 => Released::NotHeld,
            left if left >= 0 => Released::Released { left: left as u64 },
            other => return Err(Error::Store(format!("unexpected release reply {other}"))),
        })
    }

    async fn restock(&self, sale: SaleId, units: u64) -> Result<SaleStock> {
        validate_units(units)?;
        let max = crate::UNITS_MAX.to_string();
        let v: redis::Value = self
            .run(&self.restock, sale, &[&units.to_string(), &max])
            .await?;
        match v {
            redis::Value::Int(NO_SALE) => {
                Err(Error::Invalid(format!("sale {sale} is not defined")))
            }
            redis::Value::Int(-4) => Err(Error::Limit {
                what: "units per sale",
                limit: crate::UNITS_MAX,
            }),
            v => stock_of(redis::from_redis_value(v).map_err(store_err)?),
        }
    }

    async fn stock(&self, sale: SaleId) -> Result<Option<SaleStock>> {
        let v: redis::Value = self.run(&self.stock, sale, &[]).await?;
        match v {
            redis::Value::Int(NO_SALE) => Ok(None),
            v => Ok(Some(stock_of(
                redis::from_redis_value(v).map_err(store_err)?,
            )?)),
        }
    }
}
