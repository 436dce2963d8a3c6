//! Checks of the flags the `gateway` and `order-worker` binaries share, run before either
//! creates anything (a database file, a queue directory, a demo sale): database URLs, the
//! stock store's target, the Redis key prefix and where it comes from. Used as clap
//! `value_parser`s, so clap's error names the flag.

use std::str::FromStr;

/// The Redis key prefix's environment variable, shared by the gateways, the order workers
/// and the auditor (all must use one prefix).
pub const REDIS_PREFIX_ENV: &str = "SECKILL_REDIS_PREFIX";
/// Its former name (read by the gateway, and once by `order-worker` too), still honoured
/// when [`REDIS_PREFIX_ENV`] is unset.
pub const REDIS_PREFIX_ENV_OLD: &str = "GATEWAY_REDIS_PREFIX";
/// The Redis key prefix when neither the flag nor a variable gives one.
pub const REDIS_PREFIX_DEFAULT: &str = "seckill:";

/// One database URL: `sqlite:PATH` or `postgres://…` / `postgresql://…` (several hosts
/// allowed, `postgres://u@h1:p1,h2:p2/db`). Checks the syntax only; nothing is opened.
pub fn database_url(s: &str) -> Result<String, String> {
    for url in s.split_whitespace() {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // A multi-host URL is split by the failover code; one host parses as is.
            if !url.contains(',') {
                sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(|e| format!("{url:?} is not a PostgreSQL URL: {e}"))?;
            }
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.split('?').next().unwrap_or("").is_empty() {
                return Err(format!(
                    "{url:?}: sqlite: needs a file path (sqlite:data/orders.db)"
                ));
            }
        } else {
            return Err(format!(
                "{url:?}: a database URL is sqlite:PATH or postgres://…"
            ));
        }
    }
    if s.trim().is_empty() {
        return Err("an empty database URL".into());
    }
    Ok(s.trim().to_string())
}

/// The stock store: `none` or `memory` where the binary allows it (`keywords`), or a
/// Redis URL (`redis://HOST:PORT`, `redis+cluster://HOST:PORT,HOST:PORT`).
pub fn stock_target(s: &str, keywords: &[&str]) -> Result<String, String> {
    let t = s.trim();
    if keywords.contains(&t) {
        return Ok(t.to_string());
    }
    let rest = t
        .strip_prefix("redis+cluster://")
        .or_else(|| t.strip_prefix("redis://"))
        .or_else(|| t.strip_prefix("rediss://"))
        .ok_or_else(|| {
            format!(
                "{t:?}: the stock store is {} or a Redis URL (redis://HOST:PORT, redis+cluster://HOST:PORT,HOST:PORT)",
                keywords.join(" or ")
            )
        })?;
    if rest.trim_matches(',').is_empty() {
        return Err(format!("{t:?} names no host"));
    }
    Ok(t.to_string())
}

/// A Redis key prefix: 1..=[`inventory::PREFIX_BYTES_MAX`] bytes without braces (they
/// would change the keys' hash tags).
pub fn redis_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > inventory::PREFIX_BYTES_MAX || s.contains(['{', '}']) {
        return Err(format!(
            "{s:?}: a key prefix is 1 to {} bytes without braces",
            inventory::PREFIX_BYTES_MAX
        ));
    }
    Ok(s.to_string())
}

/// The Redis key prefix: the flag (or [`REDIS_PREFIX_ENV`], which clap reads into it),
/// else [`REDIS_PREFIX_ENV_OLD`], else [`REDIS_PREFIX_DEFAULT`]; checked as
/// [`redis_prefix`] (an error names the variable it came from).
pub fn resolve_redis_prefix(given: Option<&str>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p.to_string());
    }
    match std::env::var(REDIS_PREFIX_ENV_OLD) {
        Ok(p) if !p.is_empty() => {
            redis_prefix(&p).map_err(|e| format!("{REDIS_PREFIX_ENV_OLD}: {e}"))
        }
        _ => Ok(REDIS_PREFIX_DEFAULT.to_string()),
    }
}

/// `n thing` or `n things`.
pub fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_checked_without_opening_them() {
        for ok in [
            "sqlite:data/orders.db",
            "sqlite://x.db",
            "postgres://root@127.0.0.1:5432/test",
            "postgres://u@h1:1,h2:2/db",
            "sqlite:a.db sqlite:b.db",
        ] {
            assert!(database_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sqlite:",
            "mysql://x",
            "data/orders.db",
            "postgres://u@h:notaport/db",
        ] {
            assert!(database_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stock_targets_and_prefixes() {
        assert_eq!(stock_target("memory", &["memory"]).as_deref(), Ok("memory"));
        assert!(stock_target("none", &["memory"]).is_err());
        assert!(stock_target("redis://127.0.0.1:6379", &["none"]).is_ok());
        assert!(stock_target("redis+cluster://a:1,b:2", &["none"]).is_ok());
        for bad in ["redis://", "http://x", "memroy"] {
            let e = stock_target(bad, &["memory"]).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        assert!(redis_prefix("seckill:").is_ok());
        assert!(redis_prefix("").is_err() && redis_prefix("a{b}").is_err());
        assert!(redis_prefix(&"x".repeat(65)).is_err());
        assert_eq!(resolve_redis_prefix(Some("p:")).as_deref(), Ok("p:"));
    }

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(count(1, "canceller"), "1 canceller");
        assert_eq!(count(0, "canceller"), "0 cancellers");
        assert_eq!(count(2, "order worker"), "2 order workers");
    }
}
