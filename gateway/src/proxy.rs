//! The gateway behind proxies: which peers are trusted ([`TrustedProxies`], from
//! `--trusted-proxies`), the client's address from `X-Forwarded-For` ([`client_addr`]), and
//! the route cookie that lets nginx send one person to one gateway ([`route_value`]).
//!
//! # The client's address
//!
//! Every proxy appends the address it received the request from to `X-Forwarded-For`, so
//! the header reads `client, proxy1, proxy2` and the TCP peer is the last proxy. Only the
//! hops appended by proxies we trust can be believed: everything to their left may have
//! been written by the client itself. So the header is believed only when the peer is
//! trusted, and it is read from the right, skipping trusted hops: the first hop that is
//! not trusted is the client (the address a trusted proxy saw). If every hop is trusted
//! (a request from inside the proxy tier), the left-most one is. A forged prefix sent by
//! the client lies to the left of the address its own proxy appended, so the walk stops
//! before it is read and it changes nothing.
//!
//! A header we cannot use from a trusted peer (a hop that is not an address, one longer
//! than [`XFF_HOP_BYTES_MAX`], or more than [`XFF_HOPS_MAX`] trusted hops in a row) falls
//! back to the peer's own address and is counted (`gateway_forwarded_unusable_total`): a
//! proxy tier that writes such headers is misconfigured, and the safe answer is the address
//! we can see. The walk reads at most `XFF_HOPS_MAX × (XFF_HOP_BYTES_MAX + 1)` bytes from
//! the right of the header, whatever its length.
//!
//! # The route cookie
//!
//! nginx hashes `$cookie_seckill_route` onto its upstreams (`deploy/nginx`), so a person's
//! requests reach one gateway and its per-user throttles hold fleet-wide. The value is a
//! function of the user only ([`route_value`]), not of the session, so signing in again
//! (a new session cookie) keeps the same gateway. With `--route-cookie` a request whose
//! valid session comes without the matching route cookie is refused with 421
//! `misdirected` and given the right one ([`misdirected`]): a client that drops or changes
//! the cookie to spread its requests over the gateways gains nothing.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Most CIDRs `--trusted-proxies` may list (each request from a trusted peer checks its
/// hops against every one).
pub const TRUSTED_PROXIES_MAX: usize = 64;
/// Most hops of `X-Forwarded-For` the walk reads from the right (a deeper chain of trusted
/// proxies falls back to the peer's address).
pub const XFF_HOPS_MAX: usize = 16;
/// Longest hop of `X-Forwarded-For`, in bytes (`[v6 address]:port` with spaces fits).
pub const XFF_HOP_BYTES_MAX: usize = 64;
/// The header read.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` the gateway believes: IPv4 and IPv6 CIDRs. Empty
/// (the default): nobody's, the client is the TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses `--trusted-proxies`: CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses
    /// (`127.0.0.1`, taken as /32 or /128), separated by commas; blanks around them are
    /// ignored; the empty string trusts nobody. At most [`TRUSTED_PROXIES_MAX`].
    ///
    /// # Errors
    /// A message naming the entry that is not a CIDR or an address, or the bound.
    pub fn parse(s: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in s.split(',').map(str::trim) {
            if entry.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err("an empty entry in the list (two commas in a row?)".into());
            }
            let net = match IpNet::from_str(entry) {
                Ok(net) => net.trunc(),
                Err(_) => match IpAddr::from_str(entry) {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(format!(
                            "{entry:?} is neither a CIDR (10.0.0.0/8, fd00::/8) nor an address"
                        ));
                    }
                },
            };
            if nets.len() == TRUSTED_PROXIES_MAX {
                return Err(format!("more than {TRUSTED_PROXIES_MAX} CIDRs"));
            }
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }

    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The CIDRs, as given (host bits cleared).
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// The client's address of a request from `peer` with these headers, and whether a header
/// from a trusted peer had to be ignored (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address the throttles, captchas and token bounds count.
    pub ip: IpAddr,
    /// A trusted peer sent an `X-Forwarded-For` that could not be used: `ip` is the peer's.
    pub unusable: bool,
}

/// The client's address of a request from `peer` (see the module's doc).
pub fn client_addr(trusted: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
    let peer = peer.to_canonical();
    let plain = ClientAddr {
        ip: peer,
        unusable: false,
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return plain;
    }
    let mut values = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    if values.peek().is_none() {
        return plain;
    }
    // Several headers are one list, in order (RFC 9110, 5.3): walk them last to first.
    let values: Vec<&HeaderValue> = values.collect();
    match walk(trusted, values.iter().rev().map(|v| v.as_bytes())) {
        Some(ip) => ClientAddr {
            ip,
            unusable: false,
        },
        None => ClientAddr {
            ip: peer,
            unusable: true,
        },
    }
}

/// The walk over header values given last to first: the first untrusted hop from the
/// right, else the left-most one; `None` when a hop read is unusable or the walk ran past
/// [`XFF_HOPS_MAX`] hops.
fn walk<'a>(
    trusted: &TrustedProxies,
    values_reversed: impl Iterator<Item = &'a [u8]>,
) -> Option<IpAddr> {
    let mut hops = 0;
    let mut leftmost = None;
    for value in values_reversed {
        let mut end = value.len();
        loop {
            // The hop ends at `end`; it starts after the nearest comma to its left, looked
            // for over at most XFF_HOP_BYTES_MAX + 1 bytes.
            let from = end.saturating_sub(XFF_HOP_BYTES_MAX + 1);
            let comma = value[from..end].iter().rposition(|&b| b == b',');
            let start = match comma {
                Some(i) => from + i + 1,
                None if from == 0 => 0,
                None => return None,
            };
            hops += 1;
            if hops > XFF_HOPS_MAX {
                return None;
            }
            let ip = parse_hop(&value[start..end])?;
            if !trusted.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
            if start == 0 {
                break;
            }
            end = start - 1;
        }
    }
    leftmost
}

/// One hop: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`) or in brackets
/// (`[::1]`), blanks around it ignored.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim_matches([' ', '\t']);
    if hop.len() > XFF_HOP_BYTES_MAX {
        return None;
    }
    let ip = IpAddr::from_str(hop)
        .ok()
        .or_else(|| std::net::SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| std::net::Ipv6Addr::from_str(h).ok())
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// Name of the route cookie.
pub const ROUTE_COOKIE_NAME: &str = "seckill_route";
/// The domain of [`route_value`]'s hash.
const ROUTE_DOMAIN: &[u8] = b"seckill-route-v1\0";
/// Hex digits of a route cookie's value (64 bits: enough for nginx to spread people evenly).
pub const ROUTE_HEX_DIGITS: usize = 16;

/// The route cookie's value of `user`: the first [`ROUTE_HEX_DIGITS`] hex digits of
/// SHA-256(`"seckill-route-v1\0"` ‖ user). The same for every session of the user, and
/// not a secret (nginx only hashes it; it says nothing the session cookie does not).
pub fn route_value(user: &str) -> String {
    let mut h = Sha256::new();
    h.update(ROUTE_DOMAIN);
    h.update(user.as_bytes());
    let digest = h.finalize();
    digest[..ROUTE_HEX_DIGITS / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Set-Cookie` value of `user`'s route cookie, with the session cookie's attributes
/// ([`crate::session::set_cookie`]) and lifetime.
pub fn set_route_cookie(user: &str, max_age_s: u64, secure: bool) -> String {
    crate::session::set_cookie(
        ROUTE_COOKIE_NAME,
        &route_value(user),
        "/",
        max_age_s,
        secure,
    )
}

/// Whether the request's route cookie is `user`'s.
pub fn route_matches(headers: &HeaderMap, user: &str, from_proxy: bool) -> bool {
    let want = route_value(user);
    if from_proxy {
        // What the proxy hashed, as it passed it on: the cookie as nginx reads it (first
        // match, `,` a separator too) may differ from the cookie crate's reading, so a
        // client sending two route cookies could be hashed by one and checked by the other.
        let mut sent = headers.get_all(ROUTE_HEADER).iter();
        return match (sent.next(), sent.next()) {
            (Some(v), None) => v.as_bytes() == want.as_bytes(),
            _ => false,
        };
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| crate::session::cookie_value(v, ROUTE_COOKIE_NAME))
        == Some(want.as_str())
}

/// The header a trusted proxy puts the route it hashed on in (the shipped nginx config:
/// `proxy_set_header X-Seckill-Route $cookie_seckill_route`, which also drops a client's
/// own header of that name). From a trusted peer the route check reads only this header.
pub const ROUTE_HEADER: &str = "x-seckill-route";

/// Whether `path` is exempt from the route check: signing in (it sets the cookie), static
/// assets (a browser sends cookies with them too, and they hold no per-user state) and the
/// health and metrics probes.
pub fn route_exempt(path: &str) -> bool {
    path == "/api/login"
        || path.starts_with("/static/")
        || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// 421 `misdirected`: the request's session is `user`'s but its route cookie is missing or
/// another's; the answer carries the right cookie, so the client's retry is routed right.
pub fn misdirected(user: &str, max_age_s: u64, secure: bool) -> Response {
    let mut resp = ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected",
        "this request came without your route cookie; it is set now, send the request again",
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&set_route_cookie(user, max_age_s, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trusted(s: &str) -> TrustedProxies {
        TrustedProxies::parse(s).expect("a valid list")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("a value"));
        }
        h
    }

    fn client(t: &TrustedProxies, peer: &str, values: &[&str]) -> ClientAddr {
        client_addr(t, ip(peer), &headers(values))
    }

    #[test]
    fn the_list_parses_v4_v6_cidrs_and_addresses() {
        let t = trusted(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8, ::1, 192.168.1.7/24");
        assert_eq!(t.nets().len(), 5);
        for yes in [
            "10.1.2.3",
            "127.0.0.1",
            "fd12::1",
            "::1",
            "192.168.1.200",
            "::ffff:10.0.0.1",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "fe80::1", "192.168.2.1", "::2"] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        assert!(trusted("").is_empty());
        assert!(trusted("  ").is_empty());
    }

    #[test]
    fn a_bad_list_is_a_clear_error() {
        for (bad, names) in [
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("nginx", "nginx"),
            ("10.0.0.1,,10.0.0.2", "empty"),
            ("1.2.3.4/8/8", "1.2.3.4/8/8"),
            ("::1/129", "::1/129"),
        ] {
            let e = TrustedProxies::parse(bad).expect_err(bad);
            assert!(e.contains(names), "{bad}: {e}");
        }
        let many = vec!["10.0.0.1"; TRUSTED_PROXIES_MAX + 1].join(",");
        let e = TrustedProxies::parse(&many).expect_err("too many");
        assert!(e.contains(&TRUSTED_PROXIES_MAX.to_string()), "{e}");
        assert!(TrustedProxies::parse(&vec!["10.0.0.1"; TRUSTED_PROXIES_MAX].join(",")).is_ok());
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = trusted("10.0.0.0/8");
        let ok = |ip: &str| ClientAddr {
            ip: super::IpAddr::from_str(ip).expect("ip"),
            unusable: false,
        };
        // nginx appended the client; the client's own prefix is ignored.
        assert_eq!(client(&t, "10.0.0.5", &["6.6.6.6, 1.2.3.4"]), ok("1.2.3.4"));
        // Trusted hops on the right are skipped.
        assert_eq!(
            client(&t, "10.0.0.5", &["6.6.6.6, 1.2.3.4, 10.0.0.9"]),
            ok("1.2.3.4")
        );
        // Several headers are one list in order.
        assert_eq!(
            client(&t, "10.0.0.5", &["6.6.6.6", "1.2.3.4,10.0.0.9", "10.1.1.1"]),
            ok("1.2.3.4")
        );
        // Every hop trusted: the left-most.
        assert_eq!(
            client(&t, "10.0.0.5", &["10.0.0.7, 10.0.0.8"]),
            ok("10.0.0.7")
        );
        // Ports, brackets, IPv6, blanks.
        assert_eq!(client(&t, "10.0.0.5", &[" 1.2.3.4:5678 "]), ok("1.2.3.4"));
        assert_eq!(
            client(&t, "10.0.0.5", &["[2001:db8::1]:443"]),
            ok("2001:db8::1")
        );
        assert_eq!(
            client(&t, "10.0.0.5", &["[2001:db8::1]"]),
            ok("2001:db8::1")
        );
        assert_eq!(client(&t, "10.0.0.5", &["2001:db8::2"]), ok("2001:db8::2"));
        // A mapped peer is its IPv4 address, and so is a mapped hop.
        assert_eq!(
            client(&t, "::ffff:10.0.0.5", &["::ffff:1.2.3.4"]),
            ok("1.2.3.4")
        );
        // No header: the peer.
        assert_eq!(client(&t, "10.0.0.5", &[]), ok("10.0.0.5"));
    }

    #[test]
    fn an_untrusted_peers_header_is_ignored() {
        let t = trusted("10.0.0.0/8");
        let plain = ClientAddr {
            ip: ip("1.2.3.4"),
            unusable: false,
        };
        assert_eq!(client(&t, "1.2.3.4", &["6.6.6.6"]), plain);
        assert_eq!(client(&t, "1.2.3.4", &["garbage"]), plain);
        assert_eq!(
            client(&TrustedProxies::default(), "1.2.3.4", &["6.6.6.6"]),
            plain
        );
    }

    #[test]
    fn an_unusable_header_from_a_trusted_peer_falls_back_to_the_peer() {
        let t = trusted("10.0.0.0/8");
        let fallback = ClientAddr {
            ip: ip("10.0.0.5"),
            unusable: true,
        };
        let long = format!("{}1", " ".repeat(XFF_HOP_BYTES_MAX));
        let deep = vec!["10.0.0.1"; XFF_HOPS_MAX + 1].join(",");
        for bad in [
            "",
            "unknown",
            "1.2.3.4,",
            "1.2.3.4,,10.0.0.1",
            "_hidden",
            "1.2.3.4.5",
            long.as_str(),
            deep.as_str(),
        ] {
            assert_eq!(client(&t, "10.0.0.5", &[bad]), fallback, "{bad:?}");
        }
        // Exactly XFF_HOPS_MAX trusted hops are still read.
        let at_bound = vec!["10.0.0.1"; XFF_HOPS_MAX].join(",");
        assert_eq!(
            client(&t, "10.0.0.5", &[at_bound.as_str()]).ip,
            ip("10.0.0.1")
        );
        // A malformed hop left of the client's is never read.
        assert_eq!(
            client(&t, "10.0.0.5", &["garbage, 1.2.3.4"]).ip,
            ip("1.2.3.4")
        );
    }

    #[test]
    fn route_values_are_per_user_and_stable() {
        let a = route_value("alice");
        assert_eq!(a.len(), ROUTE_HEX_DIGITS);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, route_value("alice"));
        assert_ne!(a, route_value("bob"));
        // SHA-256("seckill-route-v1\0alice"), computed apart (Python's hashlib).
        assert_eq!(route_value("alice"), ROUTE_ALICE);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; seckill_route={a}")).expect("v"),
        );
        assert!(route_matches(&h, "alice", false));
        assert!(!route_matches(&h, "bob", false));
        assert!(!route_matches(&HeaderMap::new(), "alice", false));
        // From a trusted proxy only the route it hashed counts, not the cookies: a client
        // sending a random route first (what nginx hashes) and its own after (what the
        // cookie crate would read) is misdirected.
        assert!(
            !route_matches(&h, "alice", true),
            "cookie alone, from a proxy"
        );
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "seckill_route=0123456789abcdef, seckill_route={a}"
            ))
            .expect("v"),
        );
        forged.insert(ROUTE_HEADER, HeaderValue::from_static("0123456789abcdef"));
        assert!(!route_matches(&forged, "alice", true));
        forged.insert(ROUTE_HEADER, HeaderValue::from_str(&a).expect("v"));
        assert!(route_matches(&forged, "alice", true));
        forged.append(ROUTE_HEADER, HeaderValue::from_str(&a).expect("v"));
        assert!(!route_matches(&forged, "alice", true), "two route headers");
        let set = set_route_cookie("alice", 60, true);
        assert!(set.starts_with(&format!("seckill_route={a}")), "{set}");
        for attr in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(set.split("; ").any(|x| x == attr), "{attr} in {set}");
        }
    }

    /// `hashlib.sha256(b"seckill-route-v1\0alice").hexdigest()[:16]`.
    const ROUTE_ALICE: &str = "a0a989d52518fe4e";

    fn v4() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 4]>().prop_map(IpAddr::from)
    }

    /// A hop a client might forge: an address, garbage, or a long run of bytes.
    fn forged_hop() -> impl Strategy<Value = String> {
        prop_oneof![
            v4().prop_map(|i| i.to_string()),
            any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
            "[ -~]{0,80}".prop_map(|s| s.replace(',', ";")),
            Just("unknown".to_string()),
            Just("10.0.0.1".to_string()),
        ]
    }

    proptest! {
        /// Whatever a client puts in front of the hop its proxy appended (followed by the
        /// hops of trusted proxies), the answer is that hop: the same as without the
        /// prefix.
        #[test]
        fn a_forged_prefix_never_changes_the_answer(
            prefix in proptest::collection::vec(forged_hop(), 0..40),
            client_ip in v4(),
            trusted_hops in 0usize..4,
        ) {
            let t = trusted("10.0.0.0/8");
            prop_assume!(!t.contains(client_ip));
            let mut hops: Vec<String> = prefix;
            hops.push(client_ip.to_string());
            for i in 0..trusted_hops {
                hops.push(format!("10.0.0.{}", i + 1));
            }
            let forged = client(&t, "10.9.9.9", &[hops.join(", ").as_str()]);
            let honest = client(&t, "10.9.9.9", &[hops[hops.len() - 1 - trusted_hops..].join(",").as_str()]);
            prop_assert_eq!(forged, honest);
            prop_assert_eq!(forged, ClientAddr { ip: client_ip, unusable: false });
        }

        /// Any bytes at all from a trusted peer: never a panic, and an unusable header
        /// answers with the peer.
        #[test]
        fn any_header_is_answered(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let t = trusted("10.0.0.0/8");
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                h.insert(X_FORWARDED_FOR, v);
            }
            let a = client_addr(&t, ip("10.0.0.5"), &h);
            prop_assert!(!a.unusable || a.ip == ip("10.0.0.5"));
        }
    }
}
