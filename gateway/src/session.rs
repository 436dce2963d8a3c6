//! HMAC-signed session cookies: identity only, no passwords (logging in names a user; who
//! may claim which name is out of scope, as the brief says).
//!
//! ## Cookie value
//!
//! ```text
//! base64url_nopad( user | '|' | expires_at_ms (decimal ASCII) | '|' | tag[32] )
//! tag = HMAC-SHA256(key, "seckill-session-v1\0" | user | '|' | expires_at_ms | '|')
//! ```
//!
//! A user id is 1..=[`USER_ID_BYTES_MAX`] bytes without control characters or `|`, so the
//! first `|` ends it. `verify` checks the length bound, then the tag (in constant time),
//! and only then reads the fields: nothing about a forged cookie's content is looked at.
//! The domain string keeps a session tag from ever being accepted as another kind of tag
//! made with the same secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const SESSION_COOKIE_NAME: &str = "seckill_session";
/// Longest cookie value `verify` looks at, in bytes; longer input is refused unread.
pub const SESSION_COOKIE_BYTES_MAX: usize = 512;
/// Size of a session secret, in bytes.
pub const SESSION_KEY_BYTES: usize = 32;
/// Longest user id, in bytes (the inventory's limit, so both agree).
pub const USER_ID_BYTES_MAX: usize = inventory::USER_ID_BYTES_MAX;
/// Longest name a shopper signs in with, in characters (Unicode scalar values, not bytes):
/// 40 letters of any script fit the [`USER_ID_BYTES_MAX`] bytes of a user id.
pub const USER_NAME_CHARS_MAX: usize = 40;
const _: () = assert!(USER_NAME_CHARS_MAX * 4 <= USER_ID_BYTES_MAX);

/// Why a name typed at sign-in was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing but white space.
    #[error("type your name")]
    Empty,
    /// More than [`USER_NAME_CHARS_MAX`] characters.
    #[error("a name is at most {USER_NAME_CHARS_MAX} characters")]
    TooLong,
    /// A control character or `|`.
    #[error("a name cannot contain control characters or \"|\"")]
    BadCharacter,
}

/// A name as typed at sign-in, made a user id: surrounding white space trimmed (any
/// Unicode white space, e.g. a non-breaking space pasted with it), then
/// 1..=[`USER_NAME_CHARS_MAX`] characters without control characters or `|` (the cookie's
/// separator).
///
/// # Errors
/// [`NameError`], whose text is meant for the shopper.
pub fn normalize_name(raw: &str) -> Result<String, NameError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    // Counted lazily: a huge input stops at the first character past the bound.
    if name.chars().nth(USER_NAME_CHARS_MAX).is_some() {
        return Err(NameError::TooLong);
    }
    if name.chars().any(|c| c.is_control() || c == '|') {
        return Err(NameError::BadCharacter);
    }
    debug_assert!(validate_user(name).is_ok());
    Ok(name.to_owned())
}

/// Size of the HMAC-SHA256 tag at the end of a cookie value.
const TAG_BYTES: usize = 32;
/// Domain separation: a session tag is never valid as any other tag made with this secret.
const DOMAIN: &[u8] = b"seckill-session-v1\0";

/// Why a session cookie (or a user id to sign) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Longer than [`SESSION_COOKIE_BYTES_MAX`].
    #[error("session cookie too long (over {SESSION_COOKIE_BYTES_MAX} bytes)")]
    TooLong,
    /// Not base64url, too short, or not in the cookie format.
    #[error("malformed session cookie")]
    Malformed,
    /// The signature does not match: forged or tampered with.
    #[error("invalid session signature")]
    BadSignature,
    /// The session has expired; log in again.
    #[error("session expired, log in again")]
    Expired,
    /// The user id breaks the rules (1..=[`USER_ID_BYTES_MAX`] bytes, no control
    /// characters, no `|`).
    #[error("a user id is 1..={USER_ID_BYTES_MAX} bytes without control characters or '|'")]
    InvalidUser,
}

/// Checks a user id for a session: the inventory's rule (1..=[`USER_ID_BYTES_MAX`] bytes, no
/// control characters) and no `|`, which separates the cookie's fields.
pub fn validate_user(user: &str) -> Result<(), SessionError> {
    if inventory::validate_user(user).is_err() || user.contains('|') {
        return Err(SessionError::InvalidUser);
    }
    Ok(())
}

/// The secret that signs and verifies session cookies.
///
/// `Debug` never shows the secret.
#[derive(Clone)]
pub struct SessionKey {
    bytes: [u8; SESSION_KEY_BYTES],
    /// The keyed HMAC state, cloned per use so the key pads are hashed once.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// A fresh random secret (from the thread's cryptographically secure generator).
    pub fn generate() -> Self {
        SessionKey::from_bytes(rand::random())
    }

    /// The key with this secret (e.g. from configuration, so that several gateway
    /// processes accept each other's cookies).
    pub fn from_bytes(bytes: [u8; SESSION_KEY_BYTES]) -> Self {
        SessionKey {
            bytes,
            mac: keyed_mac(&bytes),
        }
    }

    /// The secret, e.g. to print a generated one on first run. Treat it as a password.
    pub fn as_bytes(&self) -> &[u8; SESSION_KEY_BYTES] {
        &self.bytes
    }

    /// A cookie value naming `user`, valid until `expires_at_ms` (ms since the Unix epoch).
    ///
    /// # Errors
    /// [`SessionError::InvalidUser`] if `user` breaks [`validate_user`].
    pub fn sign(&self, user: &str, expires_at_ms: u64) -> Result<String, SessionError> {
        validate_user(user)?;
        let mut raw = Vec::with_capacity(user.len() + 22 + TAG_BYTES);
        raw.extend_from_slice(user.as_bytes());
        raw.push(b'|');
        raw.extend_from_slice(expires_at_ms.to_string().as_bytes());
        raw.push(b'|');
        let tag = self.tag(&raw);
        raw.extend_from_slice(&tag);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The user a cookie value names, if it was signed with this key and has not expired at
    /// `now_ms`. The tag is compared in constant time and checked before any field is read.
    ///
    /// # Errors
    /// [`SessionError::TooLong`], [`SessionError::Malformed`],
    /// [`SessionError::BadSignature`], [`SessionError::Expired`]; never panics.
    pub fn verify(&self, cookie_value: &str, now_ms: u64) -> Result<String, SessionError> {
        if cookie_value.len() > SESSION_COOKIE_BYTES_MAX {
            return Err(SessionError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(cookie_value)
            .map_err(|_| SessionError::Malformed)?;
        // The shortest body is "u|0|".
        if raw.len() < 4 + TAG_BYTES {
            return Err(SessionError::Malformed);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_BYTES);
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(body);
        mac.verify_slice(tag)
            .map_err(|_| SessionError::BadSignature)?;

        // Authentic from here on: only this key's `sign` made it, so a failure below means
        // a bug or a changed format, reported as malformed rather than trusted.
        let body = body.strip_suffix(b"|").ok_or(SessionError::Malformed)?;
        let body = std::str::from_utf8(body).map_err(|_| SessionError::Malformed)?;
        let (user, expiry) = body.split_once('|').ok_or(SessionError::Malformed)?;
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SessionError::Malformed);
        }
        let expires_at_ms: u64 = expiry.parse().map_err(|_| SessionError::Malformed)?;
        validate_user(user)?;
        if now_ms >= expires_at_ms {
            return Err(SessionError::Expired);
        }
        Ok(user.to_owned())
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// HMAC-SHA256 keyed with a 32-byte secret. HMAC pads a key shorter than the hash's block
/// with zeros, so passing the zero-padded block is the same key, without a fallible call.
fn keyed_mac(secret: &[u8; SESSION_KEY_BYTES]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..SESSION_KEY_BYTES].copy_from_slice(secret);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// A `Set-Cookie` header value for cookie `name` on `path`, kept `max_age_s` seconds (0:
/// removed): `HttpOnly` (no script can read it) and `SameSite=Strict` (no other site's page
/// can make the browser send it), and `Secure` when `secure` (sent over HTTPS only:
/// [`crate::config::GatewayConfig::secure_cookies`]). Written by the `cookie` crate.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_s: u64, secure: bool) -> String {
    let mut c = cookie::Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(cookie::SameSite::Strict);
    if secure {
        c = c.secure(true);
    }
    c.max_age(cookie::time::Duration::seconds(
        i64::try_from(max_age_s).unwrap_or(i64::MAX),
    ))
    .build()
    .to_string()
}

/// The `Set-Cookie` header value that stores `value` as the session cookie for `max_age_s`
/// seconds, on every path ([`set_cookie`]'s attributes).
pub fn set_cookie_header(value: &str, max_age_s: u64, secure: bool) -> String {
    set_cookie(SESSION_COOKIE_NAME, value, "/", max_age_s, secure)
}

/// The `Set-Cookie` header value that removes the session cookie (log out).
pub fn clear_cookie_header(secure: bool) -> String {
    set_cookie_header("", 0, secure)
}

/// The value of cookie `name` in a `Cookie` request header (`a=1; b=…`), without a pair of
/// surrounding double quotes, if present and not empty. The first one wins. Parsed by the
/// `cookie` crate (pairs it cannot parse are skipped).
pub fn cookie_value<'h>(header_value: &'h str, name: &str) -> Option<&'h str> {
    cookie::Cookie::split_parse(header_value)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .find_map(|c| {
            let value = c.value_raw()?;
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (!value.is_empty()).then_some(value)
        })
}

/// The session cookie's value in a `Cookie` request header (`a=1; seckill_session=…`), if
/// present and not empty. The first one wins.
pub fn cookie_from_header(header_value: &str) -> Option<&str> {
    cookie_value(header_value, SESSION_COOKIE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key() -> SessionKey {
        SessionKey::from_bytes([7; SESSION_KEY_BYTES])
    }

    #[test]
    fn round_trip() {
        let k = key();
        let v = k.sign("alice", NOW + 1000).expect("valid user");
        assert_eq!(k.verify(&v, NOW), Ok("alice".to_owned()));
        assert_eq!(k.verify(&v, NOW + 999), Ok("alice".to_owned()));
        // Cookie-safe characters only.
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn longest_user_fits_the_bound() {
        let k = key();
        let user = "u".repeat(USER_ID_BYTES_MAX);
        let v = k.sign(&user, u64::MAX).expect("valid user");
        assert!(v.len() <= SESSION_COOKIE_BYTES_MAX);
        assert_eq!(k.verify(&v, NOW), Ok(user));
    }

    #[test]
    fn expired_at_and_after_expiry() {
        let k = key();
        let v = k.sign("alice", NOW).expect("valid user");
        assert_eq!(k.verify(&v, NOW), Err(SessionError::Expired));
        assert_eq!(k.verify(&v, NOW + 1), Err(SessionError::Expired));
    }

    #[test]
    fn other_key_is_bad_signature() {
        let v = key().sign("alice", NOW + 1000).expect("valid user");
        let other = SessionKey::from_bytes([8; SESSION_KEY_BYTES]);
        assert_eq!(other.verify(&v, NOW), Err(SessionError::BadSignature));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let k = key();
        let v = k.sign("alice", NOW + 1000).expect("valid user");
        let raw = URL_SAFE_NO_PAD.decode(&v).expect("our encoding");
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut t = raw.clone();
                t[i] ^= 1 << bit;
                let forged = URL_SAFE_NO_PAD.encode(&t);
                assert_eq!(
                    k.verify(&forged, NOW),
                    Err(SessionError::BadSignature),
                    "byte {i} bit {bit}"
                );
            }
        }
        // Flips in the text itself: refused one way or another, never accepted.
        for i in 0..v.len() {
            for bit in 0..7 {
                let mut t = v.clone().into_bytes();
                t[i] ^= 1 << bit;
                let Ok(s) = String::from_utf8(t) else {
                    continue;
                };
                assert!(k.verify(&s, NOW).is_err(), "char {i} bit {bit}");
            }
        }
    }

    #[test]
    fn forged_expiry_is_refused() {
        let k = key();
        let v = k.sign("alice", NOW + 1000).expect("valid user");
        let raw = URL_SAFE_NO_PAD.decode(&v).expect("our encoding");
        let tag = &raw[raw.len() - TAG_BYTES..];
        let mut forged = format!("alice|{}|", u64::MAX).into_bytes();
        forged.extend_from_slice(tag);
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(forged), NOW),
            Err(SessionError::BadSignature)
        );
    }

    #[test]
    fn malformed_and_oversized_input() {
        let k = key();
        for bad in ["", "!!!", "a", "YWxpY2U", "alice|1|", "====", "\u{0}", "ü"] {
            assert_eq!(k.verify(bad, NOW), Err(SessionError::Malformed), "{bad:?}");
        }
        let long = "A".repeat(SESSION_COOKIE_BYTES_MAX + 1);
        assert_eq!(k.verify(&long, NOW), Err(SessionError::TooLong));
        // Long enough for a tag but unsigned: a bad signature.
        let junk = URL_SAFE_NO_PAD.encode([0u8; 100]);
        assert_eq!(k.verify(&junk, NOW), Err(SessionError::BadSignature));
    }

    #[test]
    fn names_are_trimmed_and_counted_in_characters() {
        let accented = "é".repeat(USER_NAME_CHARS_MAX);
        assert_eq!(accented.len(), 2 * USER_NAME_CHARS_MAX, "two bytes each");
        assert_eq!(normalize_name(&accented).as_deref(), Ok(accented.as_str()));
        let widest = "𝄞".repeat(USER_NAME_CHARS_MAX);
        assert_eq!(normalize_name(&widest).as_deref(), Ok(widest.as_str()));
        let k = key();
        let v = k.sign(&widest, NOW + 1).expect("fits the cookie");
        assert!(v.len() <= SESSION_COOKIE_BYTES_MAX);
        assert_eq!(
            normalize_name(&"é".repeat(USER_NAME_CHARS_MAX + 1)),
            Err(NameError::TooLong)
        );
        assert_eq!(normalize_name("  Zoë \u{a0}\t").as_deref(), Ok("Zoë"));
        let padded = format!("   {accented}   ");
        assert_eq!(normalize_name(&padded).as_deref(), Ok(accented.as_str()));
        for empty in ["", "   ", "\u{a0}\u{3000}", "\n"] {
            assert_eq!(normalize_name(empty), Err(NameError::Empty), "{empty:?}");
        }
        for bad in ["a|b", "tab\there", "nul\u{0}x", "del\u{7f}"] {
            assert_eq!(normalize_name(bad), Err(NameError::BadCharacter), "{bad:?}");
        }
        // The texts are for shoppers: no byte counts, no ranges.
        for e in [
            NameError::Empty,
            NameError::TooLong,
            NameError::BadCharacter,
        ] {
            assert!(!e.to_string().contains("bytes") && !e.to_string().contains("..="));
        }
    }

    #[test]
    fn user_rules() {
        let k = key();
        let too_long = "x".repeat(USER_ID_BYTES_MAX + 1);
        for bad in ["", "a|b", "tab\there", "nl\n", "\u{7f}", too_long.as_str()] {
            assert_eq!(
                k.sign(bad, NOW + 1),
                Err(SessionError::InvalidUser),
                "{bad:?}"
            );
        }
        for good in ["a", "alice@example.com", "用户", "with space"] {
            let v = k.sign(good, NOW + 1).expect("valid user");
            assert_eq!(k.verify(&v, NOW).as_deref(), Ok(good));
        }
    }

    #[test]
    fn generated_keys_differ_and_debug_hides_them() {
        let (a, b) = (SessionKey::generate(), SessionKey::generate());
        assert_ne!(a.as_bytes(), b.as_bytes());
        let v = a.sign("alice", NOW + 1).expect("valid user");
        assert_eq!(b.verify(&v, NOW), Err(SessionError::BadSignature));
        assert_eq!(format!("{a:?}"), "SessionKey(<redacted>)");
    }

    #[test]
    fn cookie_header_round_trip() {
        let k = key();
        let v = k.sign("alice", NOW + 1000).expect("valid user");
        let set = set_cookie_header(&v, 86_400, false);
        // The attributes of `seckill_session={v}; Path=/; HttpOnly; SameSite=Strict;
        // Max-Age=86400`, in whatever order the `cookie` crate writes them.
        let parsed = cookie::Cookie::parse(set.as_str()).expect("a Set-Cookie value");
        assert_eq!(
            (
                parsed.name(),
                parsed.value(),
                parsed.path(),
                parsed.http_only(),
                parsed.same_site(),
                parsed.max_age(),
                parsed.secure(),
                parsed.domain(),
            ),
            (
                "seckill_session",
                v.as_str(),
                Some("/"),
                Some(true),
                Some(cookie::SameSite::Strict),
                Some(cookie::time::Duration::seconds(86_400)),
                None,
                None,
            ),
            "{set}"
        );
        let mut attributes: Vec<&str> = set.split("; ").collect();
        attributes.sort_unstable();
        let want = format!("seckill_session={v}");
        let mut expected = vec![
            want.as_str(),
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=86400",
        ];
        expected.sort_unstable();
        assert_eq!(attributes, expected, "exactly these attributes");
        let header = format!("theme=dark; seckill_session={v}; other=1");
        assert_eq!(cookie_from_header(&header), Some(v.as_str()));
        assert_eq!(
            cookie_from_header(&format!("seckill_session={v}")),
            Some(v.as_str())
        );
        assert_eq!(
            cookie_from_header(&format!("seckill_session=\"{v}\"")),
            Some(v.as_str())
        );
        assert_eq!(clear_cookie_header(false), set_cookie_header("", 0, false));
    }

    #[test]
    fn secure_cookies_carry_secure() {
        let set = set_cookie_header("v", 60, true);
        let parsed = cookie::Cookie::parse(set.as_str()).expect("a Set-Cookie value");
        assert_eq!(
            (parsed.secure(), parsed.http_only(), parsed.same_site()),
            (Some(true), Some(true), Some(cookie::SameSite::Strict)),
            "{set}"
        );
        assert!(set.split("; ").any(|a| a == "Secure"), "{set}");
        assert!(clear_cookie_header(true).contains("Secure"));
        assert!(!set_cookie_header("v", 60, false).contains("Secure"));
    }

    #[test]
    fn cookie_header_without_session() {
        for h in [
            "",
            "theme=dark",
            "seckill_session=",
            "seckill_session",
            "xseckill_session=abc",
            "seckill_sessionx=abc",
            ";;;",
        ] {
            assert_eq!(cookie_from_header(h), None, "{h:?}");
        }
        assert_eq!(
            cookie_from_header("seckill_session=first; seckill_session=second"),
            Some("first")
        );
    }
}

/// Signs admin cookies and CSRF tokens: derived from the session key and the admin secret.
#[derive(Clone)]
pub struct AdminKey {
    cookies: SessionKey,
    csrf: Hmac<Sha256>,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

impl AdminKey {
    /// The key of a gateway with this session key and admin secret.
    pub fn derive(sessions: &SessionKey, admin_secret: &str) -> AdminKey {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"seckill admin key v1\0");
            h.update(label);
            h.update(sessions.as_bytes());
            h.update(admin_secret.as_bytes());
            h.finalize().into()
        };
        let mut csrf_key = [0u8; 64];
        csrf_key[..32].copy_from_slice(&derive(b"csrf"));
        AdminKey {
            cookies: SessionKey::from_bytes(derive(b"cookie")),
            csrf: <Hmac<Sha256> as KeyInit>::new(&csrf_key.into()),
        }
    }

    /// A new admin cookie value (random nonce), valid until `expires_at_ms`.
    pub fn sign(&self, expires_at_ms: u64) -> String {
        let nonce: [u8; 16] = rand::random();
        let subject = format!("admin.{}", hex(&nonce));
        // The subject is a valid user id (ASCII, no separator), so signing cannot fail.
        self.cookies
            .sign(&subject, expires_at_ms)
            .unwrap_or_default()
    }

    /// The nonce of a valid admin cookie value.
    pub fn verify(&self, value: &str, now_ms: u64) -> Option<String> {
        let subject = self.cookies.verify(value, now_ms).ok()?;
        subject.strip_prefix("admin.").map(str::to_owned)
    }

    /// The CSRF token of the session with this nonce.
    pub fn csrf(&self, nonce: &str) -> String {
        let mut mac = self.csrf.clone();
        mac.update(b"csrf|");
        mac.update(nonce.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// Whether `given` is the CSRF token of `nonce` (constant time).
    pub fn csrf_ok(&self, nonce: &str, given: &str) -> bool {
        let want = self.csrf(nonce);
        want.len() == given.len() && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
