//! Purchase tokens: "no token, no access". A solved captcha buys one token; a purchase
//! spends it. A token is HMAC-signed, bound to a user and a sale, short-lived and single
//! use; how many a sale may have live, and which are spent, is the [`crate::ledger`]'s
//! business.
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
//! ## Single use and the budget
//!
//! A token's signature proves who it is for; whether it is still live (issued, not spent,
//! not expired) is recorded in the [`crate::ledger::TokenLedger`], which also caps the live
//! tokens of a sale at [`token_cap`]`(units left, factor)`.

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
    /// The token is not live: spent already, or not issued by this gateway's ledger.
    #[error("purchase token already used")]
    Reused,
}

/// What a valid token says, for the ledger ([`crate::ledger::TokenLedger::spend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The token's random nonce: its identity for single use.
    pub nonce: u128,
    /// When the token expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// Its holder's key in the ledger ([`holder_of`] the user).
    pub holder: u128,
}

/// The ledger key of `user`: 128 bits of SHA-256 of the user id (the digest tokens carry).
pub fn holder_of(user: &str) -> u128 {
    u128::from_be_bytes(user_digest(user))
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
    /// Single use is the ledger's job ([`crate::ledger`]).
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
        let digest = user_digest(user);
        if !bool::from(body[33..BODY_BYTES].ct_eq(&digest)) {
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
            holder: u128::from_be_bytes(digest),
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

/// Most tokens a sale of `units` issues with `factor`: ⌊units × factor⌋, saturating, and at
/// least 1 while a unit is left (a factor below 1 would otherwise leave the last
/// `< 1 / factor` units without any token: 5 units at 0.1 is ⌊0.5⌋ = 0); 0 with no unit
/// left or a factor that is not a positive number.
pub fn token_cap(units: u64, factor: f64) -> u64 {
    if units == 0 || factor.is_nan() || factor <= 0.0 {
        return 0;
    }
    // `as` saturates (and the product of a u64 and a positive factor is never NaN).
    ((units as f64 * factor).floor() as u64).max(1)
}

#[cfg(test)]
mod tests {
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
                expires_at_ms: NOW + 60_000,
                holder: holder_of("alice"),
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

    /// Issue 16, finding 6: ⌊left × factor⌋ is 0 when left < 1 / factor, which stranded
    /// the last units of a sale with a factor below 1 (5 units at 0.1 refused every token).
    #[test]
    fn a_sale_with_units_left_always_has_a_token() {
        assert_eq!(token_cap(5, 0.1), 1);
        assert_eq!(token_cap(1, 0.1), 1);
        assert_eq!(token_cap(9, 0.1), 1);
        assert_eq!(token_cap(10, 0.1), 1);
        assert_eq!(token_cap(20, 0.1), 2);
        assert_eq!(token_cap(1, f64::MIN_POSITIVE), 1);
        // Sold out: none.
        assert_eq!(token_cap(0, 0.1), 0);
        assert_eq!(token_cap(0, 100.0), 0);
    }
}
