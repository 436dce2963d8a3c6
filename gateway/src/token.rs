//! Purchase tokens: "no token, no access". A solved captcha buys one token; a purchase
//! spends it. A token is HMAC-signed, bound to a user and a sale, short-lived and single
//! use, and a sale hands out at most `units × token_factor` of them ([`TokenBudget`]).
//!
//! ## Token format
//!
//! ```text
//! base64url_nopad(body | tag), 81 bytes → 108 characters
//! body (49 bytes) = version (1, = 1)
//!                 | expires_at_ms (u64, big-endian)
//!                 | sale          (u64, big-endian)
//!                 | nonce         (u128, big-endian, random)
//!                 | user_digest   (16 bytes: SHA-256 of the user id, truncated)
//! tag  (32 bytes) = HMAC-SHA256(key, "seckill-token-v1\0" | body)
//! ```
//!
//! The user appears as a digest so a token has a fixed size whatever the user id and does
//! not show it; 128 bits of SHA-256 make finding another user id with the same digest
//! infeasible. `verify` checks the length, then the tag in constant time, and only then the
//! fields, so a forged token learns nothing from timing and any flipped bit is a
//! [`TokenError::BadSignature`].
//!
//! ## Single use
//!
//! [`UsedNonces`] remembers spent nonces until their token expires, bounded by
//! [`USED_NONCES_MAX`]: when full it refuses new spends ([`TokenError::Busy`]) rather than
//! forget a live one (which would let that token be spent twice). It lives in one process;
//! with several gateway processes a token could be spent once per process, which still
//! buys nothing extra: the inventory's atomic `reserve` allows one unit per user and sale.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Size of a token secret, in bytes.
pub const TOKEN_KEY_BYTES: usize = 32;
/// Length of every token, in characters (base64url of [`TOKEN_RAW_BYTES`] bytes).
pub const TOKEN_CHARS: usize = 108;
/// Decoded size of a token: body and tag.
pub const TOKEN_RAW_BYTES: usize = BODY_BYTES + TAG_BYTES;
/// Most spent nonces a [`UsedNonces`] remembers at once (about 50 bytes each).
pub const USED_NONCES_MAX: usize = 1_000_000;
/// Most sales a [`TokenBudget`] counts at once.
pub const TOKEN_BUDGET_SALES_MAX: usize = 100_000;

const VERSION: u8 = 1;
const USER_DIGEST_BYTES: usize = 16;
const BODY_BYTES: usize = 1 + 8 + 8 + 16 + USER_DIGEST_BYTES;
const TAG_BYTES: usize = 32;
/// Domain separation: a token tag is never valid as any other tag made with this secret.
const DOMAIN: &[u8] = b"seckill-token-v1\0";

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token: wrong length, not base64url, or an unknown version.
    #[error("malformed purchase token")]
    Malformed,
    /// The signature does not match: forged or tampered with.
    #[error("invalid purchase token signature")]
    BadSignature,
    /// The token has expired; get a new one.
    #[error("purchase token expired")]
    Expired,
    /// The token was issued to another user.
    #[error("purchase token belongs to another user")]
    WrongUser,
    /// The token was issued for another sale.
    #[error("purchase token is for another sale")]
    WrongSale,
    /// The token was already spent.
    #[error("purchase token already used")]
    Reused,
    /// Too many live spent tokens to remember another; try again shortly.
    #[error("too many purchase tokens in use, try again shortly")]
    Busy,
}

/// What a valid token says, for [`UsedNonces::spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The token's random nonce: its identity for single use.
    pub nonce: u128,
    /// When the token expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// The secret that issues and verifies purchase tokens.
///
/// `Debug` never shows the secret.
#[derive(Clone)]
pub struct TokenKey {
    bytes: [u8; TOKEN_KEY_BYTES],
    /// The keyed HMAC state, cloned per use so the key pads are hashed once.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// A fresh random secret (from the thread's cryptographically secure generator).
    pub fn generate() -> Self {
        TokenKey::from_bytes(rand::random())
    }

    /// The key with this secret (e.g. from configuration, so that several gateway
    /// processes accept each other's tokens).
    pub fn from_bytes(bytes: [u8; TOKEN_KEY_BYTES]) -> Self {
        // HMAC pads a key shorter than the hash's block with zeros, so the zero-padded
        // block is the same key, without a fallible call.
        let mut block = [0u8; 64];
        block[..TOKEN_KEY_BYTES].copy_from_slice(&bytes);
        TokenKey {
            bytes,
            mac: <Hmac<Sha256> as KeyInit>::new(&block.into()),
        }
    }

    /// The secret, e.g. to print a generated one on first run. Treat it as a password.
    pub fn as_bytes(&self) -> &[u8; TOKEN_KEY_BYTES] {
        &self.bytes
    }

    /// A token for `user` on `sale`, valid until `expires_at_ms`, and its random nonce.
    pub fn issue(&self, user: &str, sale: u64, expires_at_ms: u64) -> (String, u128) {
        let nonce: u128 = rand::random();
        (
            self.issue_with_nonce(user, sale, expires_at_ms, nonce),
            nonce,
        )
    }

    fn issue_with_nonce(&self, user: &str, sale: u64, expires_at_ms: u64, nonce: u128) -> String {
        let mut raw = [0u8; TOKEN_RAW_BYTES];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&expires_at_ms.to_be_bytes());
        raw[9..17].copy_from_slice(&sale.to_be_bytes());
        raw[17..33].copy_from_slice(&nonce.to_be_bytes());
        raw[33..BODY_BYTES].copy_from_slice(&user_digest(user));
        let tag = self.tag(&raw[..BODY_BYTES]);
        raw[BODY_BYTES..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks that `token` was issued by this key to `user` for `sale` and has not expired
    /// at `now_ms`. The tag is checked first, in constant time; the fields only after it.
    /// Single use is [`UsedNonces::spend`]'s job.
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::BadSignature`], [`TokenError::WrongUser`],
    /// [`TokenError::WrongSale`], [`TokenError::Expired`] (in that order of checking);
    /// never panics.
    pub fn verify(
        &self,
        token: &str,
        user: &str,
        sale: u64,
        now_ms: u64,
    ) -> Result<Verified, TokenError> {
        if token.len() != TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let mut raw = [0u8; TOKEN_RAW_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(TOKEN_RAW_BYTES) => {}
            _ => return Err(TokenError::Malformed),
        }
        let (body, tag) = raw.split_at(BODY_BYTES);
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(body);
        mac.verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;

        // Authentic from here on.
        if body[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let expires_at_ms = u64::from_be_bytes(be_array(&body[1..9]));
        let token_sale = u64::from_be_bytes(be_array(&body[9..17]));
        let nonce = u128::from_be_bytes(be_array(&body[17..33]));
        if !bool::from(body[33..BODY_BYTES].ct_eq(&user_digest(user))) {
            return Err(TokenError::WrongUser);
        }
        if token_sale != sale {
            return Err(TokenError::WrongSale);
        }
        if now_ms >= expires_at_ms {
            return Err(TokenError::Expired);
        }
        Ok(Verified {
            nonce,
            expires_at_ms,
        })
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

fn user_digest(user: &str) -> [u8; USER_DIGEST_BYTES] {
    let full: [u8; 32] = Sha256::digest(user.as_bytes()).into();
    let mut out = [0u8; USER_DIGEST_BYTES];
    out.copy_from_slice(&full[..USER_DIGEST_BYTES]);
    out
}

/// A fixed-size array from a slice of exactly that size (the callers slice fixed ranges).
fn be_array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(s);
    out
}

/// Spent token nonces, each kept until its token expires: the single-use rule.
/// Thread-safe; at most [`USED_NONCES_MAX`] (or the `with_limit` bound) at once.
#[derive(Debug)]
pub struct UsedNonces {
    inner: Mutex<Spent>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Spent {
    /// nonce → its token's expiry.
    by_nonce: HashMap<u128, u64>,
    /// (expiry, nonce), oldest expiry first, so expired entries are found without a scan.
    by_expiry: BTreeSet<(u64, u128)>,
}

impl Spent {
    fn purge(&mut self, now_ms: u64) -> usize {
        let mut purged = 0;
        while let Some(&(expires_at_ms, nonce)) = self.by_expiry.first() {
            if expires_at_ms > now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.by_nonce.remove(&nonce);
            purged += 1;
        }
        purged
    }
}

impl Default for UsedNonces {
    fn default() -> Self {
        UsedNonces::new()
    }
}

impl UsedNonces {
    /// An empty set holding at most [`USED_NONCES_MAX`] nonces.
    pub fn new() -> Self {
        UsedNonces::with_limit(USED_NONCES_MAX)
    }

    /// An empty set holding at most `limit` nonces (at most [`USED_NONCES_MAX`]).
    pub fn with_limit(limit: usize) -> Self {
        UsedNonces {
            inner: Mutex::new(Spent::default()),
            limit: limit.min(USED_NONCES_MAX),
        }
    }

    /// Spends `nonce`, whose token expires at `expires_at_ms` (from [`Verified`]); first
    /// drops the nonces of tokens expired at `now_ms`, which can no longer be presented.
    ///
    /// # Errors
    /// [`TokenError::Reused`] if it was spent before, [`TokenError::Expired`] if its token
    /// has expired, [`TokenError::Busy`] if the set is full of live nonces.
    pub fn spend(&self, nonce: u128, expires_at_ms: u64, now_ms: u64) -> Result<(), TokenError> {
        if now_ms >= expires_at_ms {
            return Err(TokenError::Expired);
        }
        // A panic while holding the lock cannot leave the two indexes disagreeing in a way
        // that matters (at worst an entry outlives its expiry), so a poisoned lock is used.
        let mut spent = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        spent.purge(now_ms);
        if spent.by_nonce.contains_key(&nonce) {
            return Err(TokenError::Reused);
        }
        if spent.by_nonce.len() >= self.limit {
            return Err(TokenError::Busy);
        }
        spent.by_nonce.insert(nonce, expires_at_ms);
        spent.by_expiry.insert((expires_at_ms, nonce));
        Ok(())
    }

    /// Drops the nonces of tokens expired at `now_ms` (also done by every `spend`); returns
    /// how many.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .purge(now_ms)
    }

    /// Nonces held (live or not yet purged).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_nonce
            .len()
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most tokens a sale of `units` issues with `factor`: ⌊units × factor⌋, saturating; 0 for
/// a factor that is not a positive number.
pub fn token_cap(units: u64, factor: f64) -> u64 {
    if factor.is_nan() || factor <= 0.0 {
        return 0;
    }
    // `as` saturates (and the product of a u64 and a positive factor is never NaN).
    (units as f64 * factor).floor() as u64
}

/// Tokens issued per sale, capped at [`token_cap`]`(units, factor)`: once a sale's tokens
/// are gone, token requests are refused before any other work. Thread-safe and lock-free
/// per take once a sale is known; at most [`TOKEN_BUDGET_SALES_MAX`] (or the `with_limit`
/// bound) sales at once.
#[derive(Debug)]
pub struct TokenBudget {
    issued: RwLock<HashMap<u64, AtomicU64>>,
    sales_max: usize,
}

impl Default for TokenBudget {
    fn default() -> Self {
        TokenBudget::new()
    }
}

impl TokenBudget {
    /// An empty budget for at most [`TOKEN_BUDGET_SALES_MAX`] sales.
    pub fn new() -> Self {
        TokenBudget::with_limit(TOKEN_BUDGET_SALES_MAX)
    }

    /// An empty budget for at most `sales_max` sales (at most [`TOKEN_BUDGET_SALES_MAX`]).
    pub fn with_limit(sales_max: usize) -> Self {
        TokenBudget {
            issued: RwLock::new(HashMap::new()),
            sales_max: sales_max.min(TOKEN_BUDGET_SALES_MAX),
        }
    }

    /// Takes one token of `sale` if fewer than [`token_cap`]`(units, factor)` were taken;
    /// atomic, so concurrent callers never take more than the cap together. `false` also
    /// when the budget already counts its maximum of sales and `sale` is not among them
    /// (see [`TokenBudget::forget`]).
    pub fn try_take(&self, sale: u64, units: u64, factor: f64) -> bool {
        let cap = token_cap(units, factor);
        let take = |n: &AtomicU64| {
            n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < cap).then_some(taken + 1)
            })
            .is_ok()
        };
        {
            let issued = self.issued.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = issued.get(&sale) {
                return take(n);
            }
        }
        let mut issued = self.issued.write().unwrap_or_else(PoisonError::into_inner);
        if !issued.contains_key(&sale) && issued.len() >= self.sales_max {
            tracing::warn!(
                sale,
                "token budget full of sales; refusing tokens of a new sale"
            );
            return false;
        }
        take(issued.entry(sale).or_default())
    }

    /// Tokens of `sale` taken so far.
    pub fn issued(&self, sale: u64) -> u64 {
        self.issued
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sale)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Whether no token of `sale` is left: callers may refuse before any other work.
    pub fn exhausted(&self, sale: u64, units: u64, factor: f64) -> bool {
        self.issued(sale) >= token_cap(units, factor)
    }

    /// Stops counting `sale` (it ended or was deleted); a later take starts from zero.
    pub fn forget(&self, sale: u64) {
        self.issued
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sale);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const SALE: u64 = 42;

    fn key() -> TokenKey {
        TokenKey::from_bytes([3; TOKEN_KEY_BYTES])
    }

    #[test]
    fn round_trip() {
        let k = key();
        let (t, nonce) = k.issue("alice", SALE, NOW + 60_000);
        assert_eq!(t.len(), TOKEN_CHARS);
        assert_eq!(
            k.verify(&t, "alice", SALE, NOW),
            Ok(Verified {
                nonce,
                expires_at_ms: NOW + 60_000
            })
        );
        let (t2, nonce2) = k.issue("alice", SALE, NOW + 60_000);
        assert_ne!(nonce, nonce2);
        assert_ne!(t, t2);
    }

    #[test]
    fn expired() {
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW);
        assert_eq!(
            k.verify(&t, "alice", SALE, NOW - 1)
                .map(|v| v.expires_at_ms),
            Ok(NOW)
        );
        assert_eq!(k.verify(&t, "alice", SALE, NOW), Err(TokenError::Expired));
        assert_eq!(
            k.verify(&t, "alice", SALE, u64::MAX),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_user_and_wrong_sale() {
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        assert_eq!(k.verify(&t, "bob", SALE, NOW), Err(TokenError::WrongUser));
        assert_eq!(
            k.verify(&t, "alice ", SALE, NOW),
            Err(TokenError::WrongUser)
        );
        assert_eq!(k.verify(&t, "", SALE, NOW), Err(TokenError::WrongUser));
        assert_eq!(
            k.verify(&t, "alice", SALE + 1, NOW),
            Err(TokenError::WrongSale)
        );
        // The signature comes first: an expired token for another user is still WrongUser,
        // and a forged one is BadSignature whatever its fields say.
        assert_eq!(
            k.verify(&t, "bob", SALE, NOW + 5000),
            Err(TokenError::WrongUser)
        );
    }

    #[test]
    fn other_key_is_bad_signature() {
        let (t, _) = key().issue("alice", SALE, NOW + 1000);
        let other = TokenKey::from_bytes([4; TOKEN_KEY_BYTES]);
        assert_eq!(
            other.verify(&t, "alice", SALE, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn every_flipped_bit_is_bad_signature() {
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        let raw = URL_SAFE_NO_PAD.decode(&t).expect("our encoding");
        assert_eq!(raw.len(), TOKEN_RAW_BYTES);
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut f = raw.clone();
                f[i] ^= 1 << bit;
                assert_eq!(
                    k.verify(&URL_SAFE_NO_PAD.encode(&f), "alice", SALE, NOW),
                    Err(TokenError::BadSignature),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_flipped_character_bit_is_refused() {
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        for i in 0..t.len() {
            for bit in 0..7 {
                let mut f = t.clone().into_bytes();
                f[i] ^= 1 << bit;
                let Ok(s) = String::from_utf8(f) else {
                    continue;
                };
                let r = k.verify(&s, "alice", SALE, NOW);
                assert!(
                    matches!(r, Err(TokenError::BadSignature | TokenError::Malformed)),
                    "char {i} bit {bit}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn forged_fields_with_a_real_tag_are_refused() {
        // Someone with a valid token for sale 42 rewrites it for sale 43 or a later expiry.
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("our encoding");
        raw[9..17].copy_from_slice(&(SALE + 1).to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            k.verify(&forged, "alice", SALE + 1, NOW),
            Err(TokenError::BadSignature)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("our encoding");
        raw[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            k.verify(&forged, "alice", SALE, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_input() {
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        let long = "A".repeat(10_000);
        let cases = [
            String::new(),
            "abc".into(),
            t[..TOKEN_CHARS - 1].to_string(),
            format!("{t}A"),
            format!("{}=", &t[..TOKEN_CHARS - 1]),
            format!("{}+", &t[..TOKEN_CHARS - 1]),
            "é".repeat(TOKEN_CHARS / 2),
            long,
        ];
        for bad in cases {
            assert_eq!(
                k.verify(&bad, "alice", SALE, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        // Right length, valid base64, no tag: a bad signature.
        let junk = "A".repeat(TOKEN_CHARS);
        assert_eq!(
            k.verify(&junk, "alice", SALE, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_version_is_malformed_even_when_signed() {
        let k = key();
        let t = k.issue_with_nonce("alice", SALE, NOW + 1000, 9);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("our encoding");
        raw[0] = 2;
        let tag = k.tag(&raw[..BODY_BYTES]);
        raw[BODY_BYTES..].copy_from_slice(&tag);
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(&raw), "alice", SALE, NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn any_user_id_length_works() {
        let k = key();
        let long = "x".repeat(10_000);
        for user in ["", "a", "用户", long.as_str()] {
            let (t, _) = k.issue(user, SALE, NOW + 1);
            assert_eq!(t.len(), TOKEN_CHARS);
            assert!(k.verify(&t, user, SALE, NOW).is_ok(), "{user:?}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(
            format!("{:?}", TokenKey::generate()),
            "TokenKey(<redacted>)"
        );
        assert_ne!(
            TokenKey::generate().as_bytes(),
            TokenKey::generate().as_bytes()
        );
    }

    #[test]
    fn spend_once() {
        let used = UsedNonces::new();
        let k = key();
        let (t, _) = k.issue("alice", SALE, NOW + 1000);
        let v = k.verify(&t, "alice", SALE, NOW).expect("valid");
        assert_eq!(used.spend(v.nonce, v.expires_at_ms, NOW), Ok(()));
        assert_eq!(
            used.spend(v.nonce, v.expires_at_ms, NOW),
            Err(TokenError::Reused)
        );
        assert_eq!(
            used.spend(v.nonce, v.expires_at_ms, NOW + 999),
            Err(TokenError::Reused)
        );
        assert_eq!(
            used.spend(v.nonce, v.expires_at_ms, NOW + 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(used.len(), 1);
    }

    #[test]
    fn expired_nonces_are_dropped() {
        let used = UsedNonces::new();
        for n in 0..100u128 {
            used.spend(n, NOW + 10 + n as u64, NOW).expect("room");
        }
        assert_eq!(used.len(), 100);
        assert_eq!(used.purge_expired(NOW + 10), 1);
        assert_eq!(used.len(), 99);
        // A spend purges too.
        used.spend(1000, NOW + 1000, NOW + 59).expect("room");
        assert_eq!(used.len(), 100 - 50 + 1);
        assert_eq!(used.purge_expired(u64::MAX), 51);
        assert!(used.is_empty());
    }

    #[test]
    fn full_set_refuses_rather_than_forgets() {
        let used = UsedNonces::with_limit(3);
        for n in 0..3 {
            used.spend(n, NOW + 100, NOW).expect("room");
        }
        assert_eq!(used.spend(3, NOW + 100, NOW), Err(TokenError::Busy));
        // Every live nonce is still remembered.
        for n in 0..3 {
            assert_eq!(used.spend(n, NOW + 100, NOW + 1), Err(TokenError::Reused));
        }
        // Once they expire there is room again.
        assert_eq!(used.spend(3, NOW + 200, NOW + 100), Ok(()));
        assert_eq!(used.len(), 1);
        assert!(UsedNonces::with_limit(usize::MAX).limit == USED_NONCES_MAX);
    }

    #[test]
    fn concurrent_spends_of_one_nonce_succeed_once() {
        let used = Arc::new(UsedNonces::new());
        let wins: usize = (0..8)
            .map(|_| {
                let used = used.clone();
                std::thread::spawn(move || {
                    (0..1000u128)
                        .filter(|&n| used.spend(n, NOW + 1000, NOW).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(wins, 1000);
    }

    #[test]
    fn cap_arithmetic() {
        assert_eq!(token_cap(500, 1.5), 750);
        assert_eq!(token_cap(3, 1.5), 4);
        assert_eq!(token_cap(10, 1.0), 10);
        assert_eq!(token_cap(0, 2.0), 0);
        assert_eq!(token_cap(10, 0.0), 0);
        assert_eq!(token_cap(10, -1.0), 0);
        assert_eq!(token_cap(10, f64::NAN), 0);
        assert_eq!(token_cap(10, f64::INFINITY), u64::MAX);
        assert_eq!(token_cap(u64::MAX, 2.0), u64::MAX);
    }

    #[test]
    fn budget_exhausts() {
        let b = TokenBudget::new();
        for _ in 0..15 {
            assert!(b.try_take(SALE, 10, 1.5));
        }
        assert!(b.exhausted(SALE, 10, 1.5));
        assert!(!b.try_take(SALE, 10, 1.5));
        assert_eq!(b.issued(SALE), 15);
        // Other sales have their own budget.
        assert!(b.try_take(SALE + 1, 1, 1.0));
        assert!(!b.try_take(SALE + 1, 1, 1.0));
        // A restock raises the cap.
        assert!(b.try_take(SALE, 20, 1.5));
        assert_eq!(b.issued(SALE), 16);
        // A sale without units issues nothing.
        assert!(!b.try_take(SALE + 2, 0, 1.5));
        assert_eq!(b.issued(SALE + 2), 0);
    }

    #[test]
    fn budget_under_concurrency_never_exceeds_the_cap() {
        let b = Arc::new(TokenBudget::new());
        let sales = [1u64, 2, 3];
        let takes: Vec<[u64; 3]> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut got = [0u64; 3];
                    for _ in 0..2_000 {
                        for (i, &s) in sales.iter().enumerate() {
                            if b.try_take(s, 500, 1.5) {
                                got[i] += 1;
                            }
                        }
                    }
                    got
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        for (i, &s) in sales.iter().enumerate() {
            let total: u64 = takes.iter().map(|g| g[i]).sum();
            assert_eq!(total, 750, "sale {s}");
            assert_eq!(b.issued(s), 750);
        }
    }

    #[test]
    fn budget_bounds_its_sales() {
        let b = TokenBudget::with_limit(2);
        assert!(b.try_take(1, 10, 1.0));
        assert!(b.try_take(2, 10, 1.0));
        assert!(!b.try_take(3, 10, 1.0));
        assert_eq!(b.issued(3), 0);
        // Known sales still work; forgetting one makes room.
        assert!(b.try_take(1, 10, 1.0));
        b.forget(1);
        assert_eq!(b.issued(1), 0);
        assert!(b.try_take(3, 10, 1.0));
        assert!(!b.try_take(4, 10, 1.0));
    }
}
