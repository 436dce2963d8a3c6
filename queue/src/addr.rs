//! Addresses and queue targets given on command lines, checked before a binary creates
//! anything: [`listen_addr`] resolves `HOST:PORT` to one socket address (a clap value
//! parser, so clap's error names the flag), [`check_target`] checks the syntax of a queue
//! target without opening it, and [`bind_error`] names the address in a failed bind
//! ("127.0.0.1:8080: Address already in use" rather than the OS text alone).

use std::net::{SocketAddr, ToSocketAddrs};

use crate::backend::{FILE_PREFIX, TCP_PREFIX};

/// `HOST:PORT` (an IP address or a host name, and a port 0..=65535) as one socket address:
/// the first the name resolves to. The error says what is wrong with the value; used as a
/// clap `value_parser`, clap adds the flag's name.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:8080)"));
    };
    if host.is_empty() {
        return Err(format!("{s:?} names no host (e.g. 127.0.0.1{s})"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "{s:?}: the port {port:?} is not a number from 0 to 65535"
        ));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} does not resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Checks the syntax of a queue target (see [`crate::Backend::open`]) without opening
/// it: a broker address is `tcp://HOST:PORT` with a valid port, a Redis target parses with
/// its options (feature `redis-streams`), a directory is not empty. Returns the target.
pub fn check_target(target: &str) -> Result<String, String> {
    let t = target.trim();
    if t.is_empty() {
        return Err(
            "an empty queue target; give a directory, tcp://HOST:PORT or redis://HOST:PORT".into(),
        );
    }
    if t.starts_with("redis://") || t.starts_with("redis+cluster://") {
        return check_redis(t);
    }
    if let Some(addr) = t.strip_prefix(TCP_PREFIX) {
        broker_addr(addr)?;
        return Ok(t.to_string());
    }
    if t.contains("://") {
        return Err(format!(
            "{t:?}: unknown scheme; a queue target is a directory, tcp://HOST:PORT, \
             redis://HOST:PORT or redis+cluster://HOST:PORT,HOST:PORT"
        ));
    }
    let dir = t.strip_prefix(FILE_PREFIX).unwrap_or(t);
    if dir.is_empty() {
        return Err(format!("{t:?} names no directory"));
    }
    Ok(t.to_string())
}

/// A Redis target with its options.
#[cfg(feature = "redis-streams")]
fn check_redis(t: &str) -> Result<String, String> {
    match crate::streams::RedisConfig::parse(t, &crate::Config::default()) {
        Some(Err(e)) => Err(e.to_string()),
        _ => Ok(t.to_string()),
    }
}

/// Without the Redis Streams backend a Redis target cannot be served.
#[cfg(not(feature = "redis-streams"))]
fn check_redis(_: &str) -> Result<String, String> {
    Err("this build has no Redis Streams backend (cargo feature queue/redis-streams)".into())
}

/// A broker's `HOST:PORT` (no scheme): a host and a port 1..=65535. Not resolved here
/// (the client resolves it at every connect, so a name may point elsewhere later).
pub fn broker_addr(s: &str) -> Result<(), String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:7070)"))?;
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{s:?}: the port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// A failed bind of `addr` for `flag`, with both named: `--listen 127.0.0.1:8080:
/// Address already in use (os error 98)`.
pub fn bind_error(flag: &str, addr: impl std::fmt::Display, e: &std::io::Error) -> String {
    format!("cannot listen on {addr} ({flag}): {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_or_say_what_is_wrong() {
        assert_eq!(
            listen_addr("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(listen_addr("[::1]:0"), Ok("[::1]:0".parse().expect("addr")));
        assert!(listen_addr("localhost:0").is_ok());
        for bad in [
            "8080",
            "127.0.0.1",
            ":8080",
            "127.0.0.1:99999",
            "127.0.0.1:x",
        ] {
            let e = listen_addr(bad).expect_err(bad);
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }

    #[test]
    fn queue_targets_are_checked_without_opening_them() {
        for ok in [
            "data/queue",
            "file:/tmp/q",
            "tcp://127.0.0.1:7070",
            "tcp://broker:7070",
            "redis://127.0.0.1:6379",
            "redis+cluster://a:1,b:2",
        ] {
            assert_eq!(check_target(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "  ",
            "tcp://127.0.0.1",
            "tcp://:7070",
            "tcp://h:0",
            "tcp://h:70000",
            "http://h:1",
            "file:",
        ] {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
        #[cfg(feature = "redis-streams")]
        assert!(check_target("redis://h:1?replicas=x").is_err());
    }

    #[test]
    fn a_bind_error_names_the_flag_and_the_address() {
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let s = bind_error("--listen", "127.0.0.1:8080", &e);
        assert!(
            s.contains("--listen") && s.contains("127.0.0.1:8080"),
            "{s}"
        );
    }
}
