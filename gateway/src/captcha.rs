//! Captchas: an image per request (the `captcha` crate), its answer kept only as a salted
//! hash, valid [`CAPTCHA_TTL_MS`], single use, checked case-insensitively. A wrong answer
//! consumes the captcha, so each guess costs a new image (and a throttled request).
//!
//! A captcha is bound to its purpose, the user and sale it was fetched for ([`purpose`]):
//! the answer is hashed together with it, so a captcha solved for one account or sale is
//! wrong for any other.
//!
//! The store is bounded: at most [`CAPTCHAS_MAX`] live captchas; expired ones are dropped
//! whenever one is added, and when it is still full a new captcha is refused with
//! [`CaptchaError::Busy`] (a 503 to the client) rather than evicting a live one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use ::captcha::Captcha;
use ::captcha::filters::{Dots, Noise, Wave};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a captcha may be answered after it was created.
pub const CAPTCHA_TTL_MS: u64 = 2 * 60 * 1000;
/// Most live captchas a [`CaptchaStore`] holds (about 80 bytes each).
pub const CAPTCHAS_MAX: usize = 200_000;
/// Characters in a captcha image.
pub const CAPTCHA_CHARS: u32 = 5;
/// Longest answer looked at, in bytes; a longer one is wrong (and consumes the captcha).
pub const CAPTCHA_ANSWER_BYTES_MAX: usize = 64;
/// Width of a captcha image, in pixels.
pub const CAPTCHA_WIDTH_PX: u32 = 220;
/// Height of a captcha image, in pixels.
pub const CAPTCHA_HEIGHT_PX: u32 = 120;

/// The purpose of a captcha fetched by `user` for `sale` (user ids hold no control
/// characters, so the separator is unambiguous).
pub fn purpose(user: &str, sale: u64) -> String {
    format!("{user}\u{0}{sale}")
}

/// The characters drawn: the font's, without those easily mistaken for one another in
/// this font (`1`, `i`, `j`, `l`; the font has no `0`, `I`, `O` or `o`). Upper and lower
/// case of one letter count as the same answer.
const ALPHABET: &[char] = &[
    '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'J', 'K', 'M',
    'N', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'a', 'b', 'd', 'e', 'f', 'g', 'h',
    'k', 'm', 'n', 'q', 'r', 't', 'y',
];

/// Why a captcha could not be created or was not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaptchaError {
    /// No such captcha: never issued, already used (right or wrong), or purged.
    #[error("unknown or already used captcha")]
    Unknown,
    /// The captcha is older than its time to live; get a new one.
    #[error("captcha expired")]
    Expired,
    /// The answer is wrong; the captcha is used up, get a new one.
    #[error("wrong captcha answer")]
    Wrong,
    /// Too many live captchas; try again shortly.
    #[error("too many captchas outstanding, try again shortly")]
    Busy,
    /// The image could not be drawn.
    #[error("captcha image could not be generated")]
    Image,
}

/// A live captcha: the salted hash of its answer and its expiry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    answer_hash: [u8; 32],
    expires_at_ms: u64,
}

#[derive(Debug, Default)]
struct Live {
    by_id: HashMap<u128, Entry>,
    /// (expiry, id), oldest first, so expired entries are found without a scan.
    by_expiry: BTreeSet<(u64, u128)>,
}

impl Live {
    fn purge(&mut self, now_ms: u64) -> usize {
        let mut purged = 0;
        while let Some(&(expires_at_ms, id)) = self.by_expiry.first() {
            if expires_at_ms > now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.by_id.remove(&id);
            purged += 1;
        }
        purged
    }
}

/// Live captchas, keyed by a random 128-bit id (32 lowercase hex characters). Thread-safe;
/// at most [`CAPTCHAS_MAX`] (or the `with_limit` bound) at once.
pub struct CaptchaStore {
    /// Per-store salt of the answer hashes: a leaked hash cannot be looked up in a table
    /// made for another store.
    salt: [u8; 32],
    inner: Mutex<Live>,
    limit: usize,
    /// Test-only hook (off unless built with [`CaptchaStore::revealing`]): the plaintext
    /// answers of the last [`REVEALED_MAX`] captchas, for browser tests that must type one.
    revealed: Option<Mutex<std::collections::VecDeque<(String, String)>>>,
}

/// Most answers a revealing store remembers.
pub const REVEALED_MAX: usize = 1024;

impl std::fmt::Debug for CaptchaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaStore")
            .field("live", &self.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Default for CaptchaStore {
    fn default() -> Self {
        CaptchaStore::new()
    }
}

impl CaptchaStore {
    /// An empty store for at most [`CAPTCHAS_MAX`] live captchas, with a random salt.
    pub fn new() -> Self {
        CaptchaStore::with_limit(CAPTCHAS_MAX)
    }

    /// An empty store for at most `limit` live captchas (at most [`CAPTCHAS_MAX`]).
    pub fn with_limit(limit: usize) -> Self {
        CaptchaStore {
            salt: rand::random(),
            inner: Mutex::new(Live::default()),
            limit: limit.min(CAPTCHAS_MAX),
            revealed: None,
        }
    }

    /// A store that also remembers the plaintext answers of the captchas it draws, for
    /// [`CaptchaStore::revealed_answer`]. **Test-only**: the gateway uses it only when
    /// `GatewayConfig::reveal_captcha_answers` is set, which no flag or variable sets.
    pub fn revealing() -> Self {
        CaptchaStore {
            revealed: Some(Mutex::new(std::collections::VecDeque::new())),
            ..CaptchaStore::new()
        }
    }

    /// The answer of captcha `id`, if this store reveals answers and drew it recently.
    pub fn revealed_answer(&self, id: &str) -> Option<String> {
        let revealed = self.revealed.as_ref()?;
        let list = revealed.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().find(|(i, _)| i == id).map(|(_, a)| a.clone())
    }

    /// A new captcha for `purpose` (see [`purpose`]): its id and a PNG image of
    /// [`CAPTCHA_CHARS`] characters. The answer is stored with
    /// [`CaptchaStore::insert_answer`].
    ///
    /// # Errors
    /// [`CaptchaError::Busy`] when the store is full of live captchas (checked before the
    /// image is drawn, so a full store costs no drawing), [`CaptchaError::Image`] if the
    /// image could not be encoded.
    pub fn create(&self, purpose: &str, now_ms: u64) -> Result<(String, Vec<u8>), CaptchaError> {
        {
            let mut live = self.lock();
            live.purge(now_ms);
            if live.by_id.len() >= self.limit {
                return Err(CaptchaError::Busy);
            }
        }
        let (answer, png) = draw().ok_or(CaptchaError::Image)?;
        let id = self.insert_answer(purpose, &answer, now_ms)?;
        if let Some(revealed) = &self.revealed {
            let mut list = revealed.lock().unwrap_or_else(PoisonError::into_inner);
            if list.len() >= REVEALED_MAX {
                list.pop_front();
            }
            list.push_back((id.clone(), answer));
        }
        Ok((id, png))
    }

    /// Stores `answer` for `purpose` (as a salted hash of both) under a new id, valid for
    /// [`CAPTCHA_TTL_MS`] from
    /// `now_ms`, and returns the id. `create` uses it after drawing the image; tests use it
    /// to get a captcha whose answer they know.
    ///
    /// # Errors
    /// [`CaptchaError::Busy`] when the store is still full after dropping expired captchas.
    pub fn insert_answer(
        &self,
        purpose: &str,
        answer: &str,
        now_ms: u64,
    ) -> Result<String, CaptchaError> {
        let answer_hash = self.hash(purpose, answer);
        let expires_at_ms = now_ms.saturating_add(CAPTCHA_TTL_MS);
        let mut live = self.lock();
        live.purge(now_ms);
        if live.by_id.len() >= self.limit {
            return Err(CaptchaError::Busy);
        }
        // 128 random bits: a collision is not expected, but must not overwrite a captcha.
        let mut id: u128 = rand::random();
        while live.by_id.contains_key(&id) {
            id = rand::random();
        }
        live.by_id.insert(
            id,
            Entry {
                answer_hash,
                expires_at_ms,
            },
        );
        live.by_expiry.insert((expires_at_ms, id));
        Ok(format!("{id:032x}"))
    }

    /// Checks `answer` to captcha `id` at `now_ms`, ignoring case and surrounding spaces,
    /// for `purpose` (a captcha answered for another purpose is wrong). The captcha is used
    /// up whatever the outcome.
    ///
    /// # Errors
    /// [`CaptchaError::Unknown`] (never issued, or already used), [`CaptchaError::Expired`],
    /// [`CaptchaError::Wrong`].
    pub fn check(
        &self,
        id: &str,
        purpose: &str,
        answer: &str,
        now_ms: u64,
    ) -> Result<(), CaptchaError> {
        let id = parse_id(id).ok_or(CaptchaError::Unknown)?;
        // Hash before taking the lock: the lock is held only for the map operations. An
        // over-long answer is not hashed at all: it is wrong, and still uses the captcha up.
        let given =
            (answer.trim().len() <= CAPTCHA_ANSWER_BYTES_MAX).then(|| self.hash(purpose, answer));
        let entry = {
            let mut live = self.lock();
            let entry = live.by_id.remove(&id).ok_or(CaptchaError::Unknown)?;
            live.by_expiry.remove(&(entry.expires_at_ms, id));
            entry
        };
        if now_ms >= entry.expires_at_ms {
            return Err(CaptchaError::Expired);
        }
        let Some(given) = given else {
            return Err(CaptchaError::Wrong);
        };
        if !bool::from(entry.answer_hash.ct_eq(&given)) {
            return Err(CaptchaError::Wrong);
        }
        Ok(())
    }

    /// Drops captchas expired at `now_ms` (also done whenever one is added); returns how
    /// many.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        self.lock().purge(now_ms)
    }

    /// Captchas held (live or not yet purged).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no captcha is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SHA-256 of the salt, the purpose (length-prefixed) and the normalized answer
    /// (trimmed, ASCII lower case).
    fn hash(&self, purpose: &str, answer: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((purpose.len() as u64).to_le_bytes());
        h.update(purpose.as_bytes());
        h.update(answer.trim().to_ascii_lowercase().as_bytes());
        h.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Every update leaves both indexes consistent before anything can panic, so a
        // poisoned lock holds usable data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A captcha id back to its number: exactly 32 lowercase hex characters.
fn parse_id(id: &str) -> Option<u128> {
    if id.len() != 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

/// Draws a captcha: its characters and the PNG image.
fn draw() -> Option<(String, Vec<u8>)> {
    Captcha::new()
        .set_chars(ALPHABET)
        .add_chars(CAPTCHA_CHARS)
        .apply_filter(Noise::new(0.3))
        .apply_filter(Wave::new(2.0, 15.0).horizontal())
        .apply_filter(Wave::new(2.0, 15.0).vertical())
        .view(CAPTCHA_WIDTH_PX, CAPTCHA_HEIGHT_PX)
        .apply_filter(Dots::new(10))
        .as_tuple()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const P: &str = "alice\u{0}1";

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn create_draws_a_png_and_stores_its_answer() {
        let store = CaptchaStore::new();
        let (id, png) = store.create(P, NOW).expect("created");
        assert_eq!(id.len(), 32);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert_eq!(store.len(), 1);
        // The real answer is unknown here; a wrong one consumes it.
        assert_eq!(store.check(&id, P, "!!!!!", NOW), Err(CaptchaError::Wrong));
        assert_eq!(
            store.check(&id, P, "!!!!!", NOW),
            Err(CaptchaError::Unknown)
        );
        assert!(store.is_empty());
    }

    #[test]
    fn drawn_answers_use_the_alphabet() {
        for _ in 0..3 {
            let (answer, png) = draw().expect("drawn");
            assert_eq!(answer.chars().count(), CAPTCHA_CHARS as usize);
            assert!(answer.chars().all(|c| ALPHABET.contains(&c)), "{answer}");
            assert!(!png.is_empty());
        }
    }

    #[test]
    fn alphabet_is_in_the_font_and_has_no_lookalikes() {
        let font = Captcha::new().supported_chars();
        for c in ALPHABET {
            assert!(font.contains(c), "{c} not in the font");
        }
        for c in ['0', '1', 'I', 'O', 'i', 'j', 'l', 'o'] {
            assert!(!ALPHABET.contains(&c), "{c}");
        }
    }

    #[test]
    fn right_answer_once_ignoring_case_and_spaces() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, "aB3xY", NOW).expect("room");
        assert_eq!(store.check(&id, P, " Ab3Xy ", NOW + 1), Ok(()));
        // Single use: a second right answer fails.
        assert_eq!(
            store.check(&id, P, "aB3xY", NOW + 2),
            Err(CaptchaError::Unknown)
        );
        for given in ["ab3xy", "AB3XY", "aB3xY"] {
            let id = store.insert_answer(P, "aB3xY", NOW).expect("room");
            assert_eq!(store.check(&id, P, given, NOW), Ok(()), "{given}");
        }
    }

    #[test]
    fn wrong_answer_consumes() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        assert_eq!(store.check(&id, P, "abcdf", NOW), Err(CaptchaError::Wrong));
        assert_eq!(
            store.check(&id, P, "abcde", NOW),
            Err(CaptchaError::Unknown)
        );
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        assert_eq!(store.check(&id, P, "", NOW), Err(CaptchaError::Wrong));
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        let huge = format!("abcde{}", " x".repeat(1000));
        assert_eq!(store.check(&id, P, &huge, NOW), Err(CaptchaError::Wrong));
        assert!(store.is_empty());
    }

    #[test]
    fn over_long_answers_never_match() {
        let store = CaptchaStore::new();
        let long = "a".repeat(CAPTCHA_ANSWER_BYTES_MAX + 1);
        let id = store.insert_answer(P, &long, NOW).expect("room");
        assert_eq!(store.check(&id, P, &long, NOW), Err(CaptchaError::Wrong));
        let max = "a".repeat(CAPTCHA_ANSWER_BYTES_MAX);
        let id = store.insert_answer(P, &max, NOW).expect("room");
        assert_eq!(store.check(&id, P, &max, NOW), Ok(()));
    }

    #[test]
    fn expires_after_two_minutes() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        assert_eq!(
            store.check(&id, P, "abcde", NOW + CAPTCHA_TTL_MS - 1),
            Ok(())
        );
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        assert_eq!(
            store.check(&id, P, "abcde", NOW + CAPTCHA_TTL_MS),
            Err(CaptchaError::Expired)
        );
        // Consumed by that check too.
        assert_eq!(
            store.check(&id, P, "abcde", NOW),
            Err(CaptchaError::Unknown)
        );
    }

    #[test]
    fn unknown_and_malformed_ids() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, "abcde", NOW).expect("room");
        let upper = id.to_ascii_uppercase();
        let plus = format!("+{}", &id[1..]);
        for bad in [
            "",
            "nope",
            "0".repeat(32).as_str(),
            upper.as_str(),
            plus.as_str(),
            &id[1..],
            &format!("{id}0"),
            &"é".repeat(16),
        ] {
            assert_eq!(
                store.check(bad, P, "abcde", NOW),
                Err(CaptchaError::Unknown),
                "{bad:?}"
            );
        }
        // None of those touched the real one.
        assert_eq!(store.check(&id, P, "abcde", NOW), Ok(()));
    }

    #[test]
    fn salts_differ_per_store() {
        let (a, b) = (CaptchaStore::new(), CaptchaStore::new());
        assert_ne!(a.hash(P, "abcde"), b.hash(P, "abcde"));
        assert_eq!(a.hash(P, "ABCDE"), a.hash(P, " abcde "));
        let id = a.insert_answer(P, "abcde", NOW).expect("room");
        assert_eq!(b.check(&id, P, "abcde", NOW), Err(CaptchaError::Unknown));
    }

    #[test]
    fn full_store_is_busy_until_captchas_expire_or_are_used() {
        let store = CaptchaStore::with_limit(3);
        let ids: Vec<String> = (0..3)
            .map(|i| store.insert_answer(P, "abcde", NOW + i).expect("room"))
            .collect();
        assert_eq!(
            store.insert_answer(P, "abcde", NOW + 10),
            Err(CaptchaError::Busy)
        );
        assert_eq!(store.create(P, NOW + 10), Err(CaptchaError::Busy));
        // Using one frees its place.
        assert_eq!(store.check(&ids[0], P, "abcde", NOW + 10), Ok(()));
        let id = store.insert_answer(P, "abcde", NOW + 10).expect("room");
        assert_eq!(
            store.insert_answer(P, "abcde", NOW + 10),
            Err(CaptchaError::Busy)
        );
        // Expired ones are purged on insert: the two oldest expire at NOW+1 / NOW+2 + TTL.
        let later = NOW + 2 + CAPTCHA_TTL_MS;
        store
            .insert_answer(P, "abcde", later)
            .expect("room after purge");
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.check(&ids[1], P, "abcde", later),
            Err(CaptchaError::Unknown)
        );
        assert_eq!(store.check(&id, P, "abcde", later), Ok(()));
        assert_eq!(store.purge_expired(u64::MAX), 1);
        assert!(store.is_empty());
        assert_eq!(CaptchaStore::with_limit(usize::MAX).limit, CAPTCHAS_MAX);
    }

    #[test]
    fn concurrent_checks_pass_once() {
        let store = Arc::new(CaptchaStore::new());
        let ids: Arc<Vec<String>> = Arc::new(
            (0..500)
                .map(|_| store.insert_answer(P, "abcde", NOW).expect("room"))
                .collect(),
        );
        let passed: usize = (0..4)
            .map(|_| {
                let (store, ids) = (store.clone(), ids.clone());
                std::thread::spawn(move || {
                    ids.iter()
                        .filter(|id| store.check(id, P, "ABCDE", NOW).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(passed, 500);
        assert!(store.is_empty());
    }

    #[test]
    fn debug_shows_no_salt() {
        let store = CaptchaStore::new();
        let d = format!("{store:?}");
        assert!(d.contains("live: 0") && !d.contains("salt"), "{d}");
    }

    #[test]
    fn a_captcha_is_bound_to_its_purpose() {
        let store = CaptchaStore::new();
        let id = store
            .insert_answer(&purpose("alice", 1), "abcde", NOW)
            .expect("room");
        assert_eq!(
            store.check(&id, &purpose("bob", 1), "abcde", NOW),
            Err(CaptchaError::Wrong),
            "another user"
        );
        assert_eq!(
            store.check(&id, &purpose("alice", 1), "abcde", NOW),
            Err(CaptchaError::Unknown)
        );
        let id = store
            .insert_answer(&purpose("alice", 1), "abcde", NOW)
            .expect("room");
        assert_eq!(
            store.check(&id, &purpose("alice", 2), "abcde", NOW),
            Err(CaptchaError::Wrong),
            "another sale"
        );
        let id = store
            .insert_answer(&purpose("alice", 1), "abcde", NOW)
            .expect("room");
        assert_eq!(store.check(&id, &purpose("alice", 1), "abcde", NOW), Ok(()));
    }
}
