//! Captchas: an image per request (the `captcha` crate), its answer kept only as a salted
//! hash, valid [`CAPTCHA_TTL_MS`], single use, checked case-insensitively. A wrong answer
//! consumes the captcha, so each guess costs a new image (and a throttled request).
//!
//! The image is drawn to be read by people: a light wave and fine noise, no blobs over the
//! characters, and an alphabet without characters that look alike ([`ALPHABET`]). For
//! people who cannot see it (a screen reader, a braille display), the same store issues a
//! **proof-of-work** challenge instead ([`CaptchaStore::create_work`], docs/API.md
//! "Captcha"): find a decimal `nonce` such that SHA-256(`challenge` ‖ `nonce`) starts with
//! [`POW_BITS`] zero bits, which the browser's script does in a second or two with no eyes
//! or ears needed, and the gateway checks with one hash. It is the same kind of entry as an
//! image (single use, [`CAPTCHA_TTL_MS`], bound to its purpose, counted in the per-user,
//! per-address and store bounds), so it keeps every anti-bot bound of the image; what a bot
//! pays is CPU time per token instead of an OCR attempt.
//!
//! A captcha's id carries its expiry (the top 48 bits, ms since the epoch; 80 random bits
//! below), so an answer to a captcha that expired and was since purged is still told apart
//! (`Expired`) from one never issued (`Unknown`).
//!
//! A captcha is bound to its purpose, the user and sale it was fetched for ([`purpose`]):
//! the answer is hashed together with it, so a captcha solved for one account or sale is
//! wrong for any other.
//!
//! The store is bounded: at most [`CAPTCHAS_MAX`] live captchas in all, at most
//! [`CAPTCHAS_PER_USER_MAX`] per user and (unless per-IP limits are off) at most
//! [`CAPTCHAS_PER_ADDRESS_MAX`] per client address (IPv6 grouped by /64). Expired ones are
//! dropped whenever one is added; a new captcha past a bound evicts the oldest captcha of
//! that user, of that address, or (the whole store full) of the store, instead of refusing:
//! one client asking for many captchas only pushes out its own, and a store filled by many
//! addresses still serves a newcomer (the oldest captcha, closest to expiry, goes).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use ::captcha::Captcha;
use ::captcha::filters::{Noise, Wave};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a captcha may be answered after it was created.
pub const CAPTCHA_TTL_MS: u64 = 2 * 60 * 1000;
/// Most live captchas a [`CaptchaStore`] holds (about 80 bytes each).
pub const CAPTCHAS_MAX: usize = 200_000;
/// Most live captchas of one user (the oldest goes when they ask for another): a person
/// needs one, and a few more to reload an unreadable image.
pub const CAPTCHAS_PER_USER_MAX: usize = 5;
/// Most live captchas of one client address (IPv6 grouped by /64) when per-address bounds
/// are on (the oldest of the address goes when it asks for another): many people may share
/// an address (NAT), so this is far above one person's need, and far below the store's size.
pub const CAPTCHAS_PER_ADDRESS_MAX: usize = 500;
/// Characters in a captcha image.
pub const CAPTCHA_CHARS: u32 = 5;
/// Longest answer looked at, in bytes; a longer one is wrong (and consumes the captcha).
pub const CAPTCHA_ANSWER_BYTES_MAX: usize = 64;
/// Width of a captcha image, in pixels.
pub const CAPTCHA_WIDTH_PX: u32 = 220;
/// Height of a captcha image, in pixels.
pub const CAPTCHA_HEIGHT_PX: u32 = 120;
/// Leading zero bits a proof-of-work answer's hash needs: about a million SHA-256
/// evaluations on average (a second or two in a browser's script, a fraction of a second
/// in native code), paid per purchase token.
pub const POW_BITS: u32 = 20;
/// The proof of work of a store built for tests ([`CaptchaStore::revealing`]): cheap, so
/// tests in debug builds and browsers solve it at once.
pub const POW_BITS_TEST: u32 = 12;
/// Longest proof-of-work answer looked at: a decimal `u64`.
pub const POW_ANSWER_DIGITS_MAX: usize = 20;
/// An answer to an unknown captcha whose id says it expired at most this long ago is
/// reported `Expired` (older, or in the future: `Unknown`).
pub const EXPIRED_TOLD_MS: u64 = 60 * 60 * 1000;
/// Bits of a captcha id below its expiry (random).
const ID_RANDOM_BITS: u32 = 80;

/// The purpose of a captcha fetched by `user` for `sale` (user ids hold no control
/// characters, so the separator is unambiguous).
pub fn purpose(user: &str, sale: u64) -> String {
    format!("{user}\u{0}{sale}")
}

/// The characters drawn: the font's, without those easily mistaken for one another
/// (the font has no `0`, `I`, `O` or `o`, and `Q` goes too; `1`/`l`/`I`/`i`/`j`; `5`/`S`;
/// `8`/`B`; `2`/`Z`; `6`/`G`/`b`; `9`/`g`/`q`; `U`/`V`/`Y` are kept, their shapes differ in
/// this font). Upper and lower case of one letter count as the same answer, so `C`/`c`
/// and the like are no trap.
pub const ALPHABET: &[char] = &[
    '3', '4', '7', 'A', 'C', 'D', 'E', 'F', 'H', 'J', 'K', 'M', 'N', 'P', 'R', 'T', 'U', 'V', 'W',
    'X', 'Y', 'a', 'd', 'e', 'f', 'h', 'k', 'm', 'n', 'r', 't', 'y',
];

/// Characters never drawn because another looks like them.
pub const LOOKALIKES: &[char] = &[
    '0', 'O', 'o', 'Q', '1', 'l', 'I', 'i', 'j', '5', 'S', 's', '8', 'B', '2', 'Z', 'z', '6', 'G',
    'b', '9', 'g', 'q',
];

/// What a captcha asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Type the characters of an image (the entry holds the answer's salted hash).
    Image,
    /// Find a nonce for this challenge (the entry holds the purpose's salted hash).
    Work {
        /// The challenge's random bytes (sent as 32 lowercase hex characters).
        seed: [u8; 16],
        /// Leading zero bits the answer's hash needs.
        bits: u32,
    },
}

/// A proof-of-work challenge as the client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkChallenge {
    /// The captcha id to send back with the answer.
    pub id: String,
    /// The challenge: 32 lowercase hex characters.
    pub challenge: String,
    /// Leading zero bits SHA-256(challenge ‖ answer) needs.
    pub bits: u32,
}

/// Whether `hash` starts with at least `bits` zero bits.
pub fn leading_zero_bits(hash: &[u8], bits: u32) -> bool {
    let mut zeros = 0u32;
    for b in hash {
        if *b == 0 {
            zeros += 8;
        } else {
            zeros += b.leading_zeros();
            break;
        }
        if zeros >= bits {
            break;
        }
    }
    zeros >= bits
}

/// Whether `answer` (1..=[`POW_ANSWER_DIGITS_MAX`] ASCII digits) solves `challenge` at
/// `bits`: SHA-256 of the challenge's text followed by the answer's.
pub fn work_solves(challenge: &str, answer: &str, bits: u32) -> bool {
    if answer.is_empty()
        || answer.len() > POW_ANSWER_DIGITS_MAX
        || !answer.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(answer.as_bytes());
    leading_zero_bits(&h.finalize(), bits)
}

/// The answer a client finds for `challenge` (the first nonce from 0 that solves it); for
/// tests, at [`POW_BITS_TEST`]-like difficulties.
pub fn solve_work(challenge: &str, bits: u32) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|n| work_solves(challenge, n, bits))
        .unwrap_or_default()
}

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
    /// Too many live captchas; try again shortly. (No longer returned by [`CaptchaStore`],
    /// which evicts the oldest captcha instead; kept for the error mapping.)
    #[error("too many captchas outstanding, try again shortly")]
    Busy,
    /// The image could not be drawn.
    #[error("captcha image could not be generated")]
    Image,
}

/// Who asked for a captcha, for the per-user and per-address bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    /// The user's key ([`crate::token::holder_of`]).
    user: u128,
    /// The client address (IPv6 grouped by /64); `None` when per-address bounds are off.
    addr: Option<IpAddr>,
}

impl Requester {
    /// `user` asking from `addr` (`None`: no per-address bound, e.g. with per-IP limits off,
    /// when every client comes through one address).
    pub fn new(user: &str, addr: Option<IpAddr>) -> Self {
        Requester {
            user: crate::token::holder_of(user),
            addr: addr.map(crate::throttle::ip_key),
        }
    }
}

/// A live captcha: the salted hash of its answer, its expiry and who asked for it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The salted hash of the answer (an image) or of the purpose alone (work).
    answer_hash: [u8; 32],
    expires_at_ms: u64,
    owner: Requester,
    kind: Kind,
}

#[derive(Debug, Default)]
struct Live {
    by_id: HashMap<u128, Entry>,
    /// (expiry, id), oldest first, so expired entries are found without a scan. Every
    /// captcha lives [`CAPTCHA_TTL_MS`], so this is also the order they were made in.
    by_expiry: BTreeSet<(u64, u128)>,
    /// Each user's live captchas, oldest first (no empty sets).
    by_user: HashMap<u128, BTreeSet<(u64, u128)>>,
    /// Each address's live captchas, oldest first (no empty sets).
    by_addr: HashMap<IpAddr, BTreeSet<(u64, u128)>>,
}

/// Drops `key` from `owner`'s set, and the set once empty.
fn unlink<K: std::hash::Hash + Eq>(
    sets: &mut HashMap<K, BTreeSet<(u64, u128)>>,
    owner: K,
    key: (u64, u128),
) {
    if let Some(set) = sets.get_mut(&owner) {
        set.remove(&key);
        if set.is_empty() {
            sets.remove(&owner);
        }
    }
}

impl Live {
    fn purge(&mut self, now_ms: u64) -> usize {
        let mut purged = 0;
        while let Some(&(expires_at_ms, id)) = self.by_expiry.first() {
            if expires_at_ms > now_ms {
                break;
            }
            self.remove(id);
            purged += 1;
        }
        purged
    }

    /// Removes captcha `id` from every index; returns it.
    fn remove(&mut self, id: u128) -> Option<Entry> {
        let entry = self.by_id.remove(&id)?;
        let key = (entry.expires_at_ms, id);
        self.by_expiry.remove(&key);
        unlink(&mut self.by_user, entry.owner.user, key);
        if let Some(addr) = entry.owner.addr {
            unlink(&mut self.by_addr, addr, key);
        }
        Some(entry)
    }

    /// Makes room for one more captcha of `owner`: evicts the owner's oldest while the user
    /// or the address is at its bound, then the store's oldest while it is full.
    fn make_room(&mut self, owner: Requester, limits: &Limits) {
        while let Some(&(_, id)) = self
            .by_user
            .get(&owner.user)
            .filter(|s| s.len() >= limits.per_user)
            .and_then(BTreeSet::first)
        {
            self.remove(id);
        }
        if let Some(addr) = owner.addr {
            while let Some(&(_, id)) = self
                .by_addr
                .get(&addr)
                .filter(|s| s.len() >= limits.per_address)
                .and_then(BTreeSet::first)
            {
                self.remove(id);
            }
        }
        while self.by_id.len() >= limits.total {
            let Some(&(_, id)) = self.by_expiry.first() else {
                break;
            };
            self.remove(id);
        }
    }
}

/// A store's bounds (see the module documentation); each at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live captchas in all (at most [`CAPTCHAS_MAX`]).
    pub total: usize,
    /// Live captchas of one user.
    pub per_user: usize,
    /// Live captchas of one address.
    pub per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total: CAPTCHAS_MAX,
            per_user: CAPTCHAS_PER_USER_MAX,
            per_address: CAPTCHAS_PER_ADDRESS_MAX,
        }
    }
}

/// Live captchas, keyed by a random 128-bit id (32 lowercase hex characters). Thread-safe;
/// at most [`CAPTCHAS_MAX`] (or the `with_limit` bound) at once.
pub struct CaptchaStore {
    /// Per-store salt of the answer hashes: a leaked hash cannot be looked up in a table
    /// made for another store.
    salt: [u8; 32],
    inner: Mutex<Live>,
    limits: Limits,
    /// Test-only hook (off unless built with [`CaptchaStore::revealing`]): the plaintext
    /// answers of the last [`REVEALED_MAX`] captchas, for browser tests that must type one.
    revealed: Option<Mutex<std::collections::VecDeque<(String, String)>>>,
    /// Leading zero bits of a proof-of-work answer ([`POW_BITS`]; [`POW_BITS_TEST`] in a
    /// revealing store).
    pow_bits: u32,
}

/// Most answers a revealing store remembers.
pub const REVEALED_MAX: usize = 1024;

impl std::fmt::Debug for CaptchaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaStore")
            .field("live", &self.len())
            .field("limits", &self.limits)
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

    /// An empty store for at most `limit` live captchas (at most [`CAPTCHAS_MAX`]), with
    /// the default per-user and per-address bounds.
    pub fn with_limit(limit: usize) -> Self {
        CaptchaStore::with_limits(Limits {
            total: limit,
            ..Limits::default()
        })
    }

    /// An empty store with these bounds (each at least 1, the total at most
    /// [`CAPTCHAS_MAX`]).
    pub fn with_limits(limits: Limits) -> Self {
        CaptchaStore {
            salt: rand::random(),
            inner: Mutex::new(Live::default()),
            limits: Limits {
                total: limits.total.clamp(1, CAPTCHAS_MAX),
                per_user: limits.per_user.max(1),
                per_address: limits.per_address.max(1),
            },
            revealed: None,
            pow_bits: POW_BITS,
        }
    }

    /// A store that also remembers the plaintext answers of the captchas it draws, for
    /// [`CaptchaStore::revealed_answer`], and asks [`POW_BITS_TEST`] bits of work.
    /// **Test-only**: the gateway uses it only when
    /// `GatewayConfig::reveal_captcha_answers` is set, which no flag or variable sets.
    pub fn revealing() -> Self {
        CaptchaStore {
            revealed: Some(Mutex::new(std::collections::VecDeque::new())),
            pow_bits: POW_BITS_TEST,
            ..CaptchaStore::new()
        }
    }

    /// Leading zero bits this store's proof-of-work answers need.
    pub fn pow_bits(&self) -> u32 {
        self.pow_bits
    }

    /// A new proof-of-work challenge for `purpose` asked for by `owner` (the accessible
    /// alternative to an image; see the module documentation): stored like an image's
    /// answer, under the same bounds, single use, valid [`CAPTCHA_TTL_MS`].
    pub fn create_work(&self, purpose: &str, owner: Requester, now_ms: u64) -> WorkChallenge {
        let seed: [u8; 16] = rand::random();
        let kind = Kind::Work {
            seed,
            bits: self.pow_bits,
        };
        let id = self.insert(self.hash(purpose, ""), kind, owner, now_ms);
        WorkChallenge {
            id,
            challenge: hex(&seed),
            bits: self.pow_bits,
        }
    }

    /// The answer of captcha `id`, if this store reveals answers and drew it recently.
    pub fn revealed_answer(&self, id: &str) -> Option<String> {
        let revealed = self.revealed.as_ref()?;
        let list = revealed.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().find(|(i, _)| i == id).map(|(_, a)| a.clone())
    }

    /// A new captcha for `purpose` (see [`purpose`]) asked for by `owner`: its id and a PNG
    /// image of [`CAPTCHA_CHARS`] characters. The answer is stored with
    /// [`CaptchaStore::insert_answer`] (which evicts the oldest captcha past a bound).
    ///
    /// # Errors
    /// [`CaptchaError::Image`] if the image could not be encoded.
    pub fn create(
        &self,
        purpose: &str,
        owner: Requester,
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), CaptchaError> {
        let (answer, png) = draw().ok_or(CaptchaError::Image)?;
        let id = self.insert_answer(purpose, owner, &answer, now_ms)?;
        if let Some(revealed) = &self.revealed {
            let mut list = revealed.lock().unwrap_or_else(PoisonError::into_inner);
            if list.len() >= REVEALED_MAX {
                list.pop_front();
            }
            list.push_back((id.clone(), answer));
        }
        Ok((id, png))
    }

    /// Stores `answer` for `purpose` (as a salted hash of both), asked for by `owner`,
    /// under a new id, valid for [`CAPTCHA_TTL_MS`] from `now_ms`, and returns the id. Past
    /// a bound it first evicts the oldest captcha of the owner's user, of their address, or
    /// of the store (see the module documentation). `create` uses it after drawing the
    /// image; tests use it to get a captcha whose answer they know.
    ///
    /// # Errors
    /// None today (the `Result` is kept for the callers' sake).
    pub fn insert_answer(
        &self,
        purpose: &str,
        owner: Requester,
        answer: &str,
        now_ms: u64,
    ) -> Result<String, CaptchaError> {
        Ok(self.insert(self.hash(purpose, answer), Kind::Image, owner, now_ms))
    }

    /// Stores an entry under a new id (its expiry in the top bits, see the module docs).
    fn insert(&self, answer_hash: [u8; 32], kind: Kind, owner: Requester, now_ms: u64) -> String {
        let expires_at_ms = now_ms.saturating_add(CAPTCHA_TTL_MS);
        let mut live = self.lock();
        live.purge(now_ms);
        live.make_room(owner, &self.limits);
        // 80 random bits under the expiry: a collision is not expected, but must not
        // overwrite a captcha.
        let stamp = u128::from(expires_at_ms & ((1 << 48) - 1)) << ID_RANDOM_BITS;
        let random = || rand::random::<u128>() & ((1 << ID_RANDOM_BITS) - 1);
        let mut id = stamp | random();
        while live.by_id.contains_key(&id) {
            id = stamp | random();
        }
        live.by_id.insert(
            id,
            Entry {
                answer_hash,
                expires_at_ms,
                owner,
                kind,
            },
        );
        let key = (expires_at_ms, id);
        live.by_expiry.insert(key);
        live.by_user.entry(owner.user).or_default().insert(key);
        if let Some(addr) = owner.addr {
            live.by_addr.entry(addr).or_default().insert(key);
        }
        format!("{id:032x}")
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
        let short = answer.trim().len() <= CAPTCHA_ANSWER_BYTES_MAX;
        let given = short.then(|| self.hash(purpose, answer));
        let Some(entry) = self.lock().remove(id) else {
            // Purged: tell a recent expiry (the id says when) from an id never issued.
            let expired_at = u64::try_from(id >> ID_RANDOM_BITS).unwrap_or(u64::MAX);
            let recent = expired_at <= now_ms
                && now_ms - expired_at <= EXPIRED_TOLD_MS
                && expired_at > EXPIRED_TOLD_MS;
            return Err(if recent {
                CaptchaError::Expired
            } else {
                CaptchaError::Unknown
            });
        };
        if now_ms >= entry.expires_at_ms {
            return Err(CaptchaError::Expired);
        }
        match entry.kind {
            Kind::Image => {
                let Some(given) = given else {
                    return Err(CaptchaError::Wrong);
                };
                if !bool::from(entry.answer_hash.ct_eq(&given)) {
                    return Err(CaptchaError::Wrong);
                }
            }
            Kind::Work { seed, bits } => {
                // Bound to its purpose like an image: another user's or sale's challenge
                // is wrong here.
                let purpose_ok = bool::from(entry.answer_hash.ct_eq(&self.hash(purpose, "")));
                if !purpose_ok || !work_solves(&hex(&seed), answer.trim(), bits) {
                    return Err(CaptchaError::Wrong);
                }
            }
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

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        // Fine noise and one gentle wave: enough to break a plain template match, never a
        // blob over a character (the `Dots` filter, and a second wave that bent letters
        // into each other, made honest people misread 4 of 10 images).
        .apply_filter(Noise::new(0.1))
        .apply_filter(Wave::new(2.0, 8.0).horizontal())
        .view(CAPTCHA_WIDTH_PX, CAPTCHA_HEIGHT_PX)
        .as_tuple()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const P: &str = "alice\u{0}1";

    const NOW: u64 = 1_800_000_000_000;

    const ALICE: Requester = Requester {
        user: 0xa1,
        addr: None,
    };

    /// User `n` at address 10.0.0.`a`.
    fn at(n: u128, a: u8) -> Requester {
        Requester {
            user: n,
            addr: Some(IpAddr::from([10, 0, 0, a])),
        }
    }

    #[test]
    fn create_draws_a_png_and_stores_its_answer() {
        let store = CaptchaStore::new();
        let (id, png) = store.create(P, ALICE, NOW).expect("created");
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
        for c in LOOKALIKES {
            assert!(!ALPHABET.contains(c), "{c}");
        }
        for c in ['0', '1', 'I', 'O', 'l', '5', 'S', '8', 'B'] {
            assert!(LOOKALIKES.contains(&c), "{c}");
        }
    }

    #[test]
    fn work_is_single_use_bound_and_hostile_answers_fail() {
        let store = CaptchaStore::revealing();
        assert_eq!(store.pow_bits(), POW_BITS_TEST);
        assert_eq!(CaptchaStore::new().pow_bits(), POW_BITS);
        let w = store.create_work(P, ALICE, NOW);
        assert_eq!((w.challenge.len(), w.bits), (32, POW_BITS_TEST));
        let answer = solve_work(&w.challenge, w.bits);
        assert!(work_solves(&w.challenge, &answer, w.bits));
        assert_eq!(
            store.check(&w.id, P, &format!(" {answer} "), NOW + 1),
            Ok(())
        );
        // Single use.
        assert_eq!(
            store.check(&w.id, P, &answer, NOW + 2),
            Err(CaptchaError::Unknown)
        );
        // Hostile answers: each consumes the challenge and is wrong.
        let huge = "9".repeat(10_000);
        for bad in [
            "",
            "abc",
            "-1",
            "1e9",
            "０",
            "12 34",
            huge.as_str(),
            "99999999999999999999999",
        ] {
            let w = store.create_work(P, ALICE, NOW);
            assert_eq!(
                store.check(&w.id, P, bad, NOW),
                Err(CaptchaError::Wrong),
                "{bad:?}"
            );
            assert_eq!(store.check(&w.id, P, bad, NOW), Err(CaptchaError::Unknown));
        }
        // A nonce that does not reach the bits is wrong (find one that fails).
        let w = store.create_work(P, ALICE, NOW);
        let weak = (0u64..)
            .map(|n| n.to_string())
            .find(|n| !work_solves(&w.challenge, n, w.bits))
            .expect("a failing nonce");
        assert_eq!(store.check(&w.id, P, &weak, NOW), Err(CaptchaError::Wrong));
        // Bound to its purpose: solved, but for another user or sale, it is wrong.
        let w = store.create_work(&purpose("alice", 1), ALICE, NOW);
        let answer = solve_work(&w.challenge, w.bits);
        assert_eq!(
            store.check(&w.id, &purpose("bob", 1), &answer, NOW),
            Err(CaptchaError::Wrong)
        );
        // Expires like an image, and still told apart once purged.
        let w = store.create_work(P, ALICE, NOW);
        let answer = solve_work(&w.challenge, w.bits);
        assert_eq!(
            store.check(&w.id, P, &answer, NOW + CAPTCHA_TTL_MS),
            Err(CaptchaError::Expired)
        );
        // A default store's work at full difficulty refuses an easy nonce.
        let hard = CaptchaStore::new();
        let w = hard.create_work(P, ALICE, NOW);
        let easy = solve_work(&w.challenge, 4);
        if !work_solves(&w.challenge, &easy, POW_BITS) {
            assert_eq!(hard.check(&w.id, P, &easy, NOW), Err(CaptchaError::Wrong));
        }
    }

    #[test]
    fn work_counts_in_the_per_user_bound() {
        let store = CaptchaStore::revealing();
        let first = store.create_work(P, ALICE, NOW);
        for i in 0..CAPTCHAS_PER_USER_MAX as u64 {
            store.create_work(P, ALICE, NOW + 1 + i);
        }
        assert_eq!(store.len(), CAPTCHAS_PER_USER_MAX);
        let answer = solve_work(&first.challenge, first.bits);
        assert_eq!(
            store.check(&first.id, P, &answer, NOW + 10),
            Err(CaptchaError::Unknown),
            "the oldest was evicted"
        );
    }

    #[test]
    fn zero_bits() {
        assert!(leading_zero_bits(&[0, 0, 0x0f], 20));
        assert!(!leading_zero_bits(&[0, 0, 0x1f], 20));
        assert!(leading_zero_bits(&[0xff], 0));
        assert!(!leading_zero_bits(&[0, 0], 17));
    }

    #[test]
    fn a_purged_expired_captcha_is_told_apart_from_an_unknown_one() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        let later = NOW + CAPTCHA_TTL_MS + 5;
        assert_eq!(store.purge_expired(later), 1);
        assert_eq!(
            store.check(&id, P, "abcde", later),
            Err(CaptchaError::Expired)
        );
        // Long after (or an id claiming a future or ancient expiry): unknown.
        assert_eq!(
            store.check(&id, P, "abcde", later + EXPIRED_TOLD_MS + 1),
            Err(CaptchaError::Unknown)
        );
        assert_eq!(
            store.check(&id, P, "abcde", NOW),
            Err(CaptchaError::Unknown)
        );
    }

    #[test]
    fn right_answer_once_ignoring_case_and_spaces() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, ALICE, "aB3xY", NOW).expect("room");
        assert_eq!(store.check(&id, P, " Ab3Xy ", NOW + 1), Ok(()));
        // Single use: a second right answer fails.
        assert_eq!(
            store.check(&id, P, "aB3xY", NOW + 2),
            Err(CaptchaError::Unknown)
        );
        for given in ["ab3xy", "AB3XY", "aB3xY"] {
            let id = store.insert_answer(P, ALICE, "aB3xY", NOW).expect("room");
            assert_eq!(store.check(&id, P, given, NOW), Ok(()), "{given}");
        }
    }

    #[test]
    fn wrong_answer_consumes() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        assert_eq!(store.check(&id, P, "abcdf", NOW), Err(CaptchaError::Wrong));
        assert_eq!(
            store.check(&id, P, "abcde", NOW),
            Err(CaptchaError::Unknown)
        );
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        assert_eq!(store.check(&id, P, "", NOW), Err(CaptchaError::Wrong));
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        let huge = format!("abcde{}", " x".repeat(1000));
        assert_eq!(store.check(&id, P, &huge, NOW), Err(CaptchaError::Wrong));
        assert!(store.is_empty());
    }

    #[test]
    fn over_long_answers_never_match() {
        let store = CaptchaStore::new();
        let long = "a".repeat(CAPTCHA_ANSWER_BYTES_MAX + 1);
        let id = store.insert_answer(P, ALICE, &long, NOW).expect("room");
        assert_eq!(store.check(&id, P, &long, NOW), Err(CaptchaError::Wrong));
        let max = "a".repeat(CAPTCHA_ANSWER_BYTES_MAX);
        let id = store.insert_answer(P, ALICE, &max, NOW).expect("room");
        assert_eq!(store.check(&id, P, &max, NOW), Ok(()));
    }

    #[test]
    fn expires_after_two_minutes() {
        let store = CaptchaStore::new();
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        assert_eq!(
            store.check(&id, P, "abcde", NOW + CAPTCHA_TTL_MS - 1),
            Ok(())
        );
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
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
        let id = store.insert_answer(P, ALICE, "abcde", NOW).expect("room");
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
        let id = a.insert_answer(P, ALICE, "abcde", NOW).expect("room");
        assert_eq!(b.check(&id, P, "abcde", NOW), Err(CaptchaError::Unknown));
    }

    #[test]
    fn a_full_store_evicts_its_oldest_and_still_serves_a_new_user() {
        let store = CaptchaStore::with_limit(3);
        let ids: Vec<String> = (0..3u8)
            .map(|i| {
                store
                    .insert_answer(P, at(u128::from(i), i), "abcde", NOW + u64::from(i))
                    .expect("room")
            })
            .collect();
        // Issue 16, finding 3: a full store used to refuse everyone (503 busy). Now a
        // newcomer gets a captcha and the oldest one goes.
        let newcomer = store
            .insert_answer(P, at(9, 9), "abcde", NOW + 10)
            .expect("a full store still serves");
        assert_eq!(store.len(), 3);
        assert_eq!(
            store.check(&ids[0], P, "abcde", NOW + 10),
            Err(CaptchaError::Unknown),
            "the oldest was evicted"
        );
        assert_eq!(store.check(&newcomer, P, "abcde", NOW + 10), Ok(()));
        assert_eq!(store.check(&ids[1], P, "abcde", NOW + 10), Ok(()));
        // Expired ones are purged first, on insert.
        let later = NOW + 2 + CAPTCHA_TTL_MS;
        store
            .insert_answer(P, ALICE, "abcde", later)
            .expect("room after purge");
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.check(&ids[2], P, "abcde", later),
            Err(CaptchaError::Expired),
            "purged, and still told apart from an unknown id"
        );
        assert_eq!(store.purge_expired(u64::MAX), 1);
        assert!(store.is_empty());
        assert_eq!(
            CaptchaStore::with_limit(usize::MAX).limits.total,
            CAPTCHAS_MAX
        );
    }

    /// Issue 16, finding 3: about 170 addresses filled the whole store; one address asking
    /// for many captchas (under many user names) now only ever pushes out its own, beyond
    /// its bound.
    #[test]
    fn one_address_cannot_push_out_other_addresses_captchas() {
        let store = CaptchaStore::with_limits(Limits {
            total: 10,
            per_user: 2,
            per_address: 4,
        });
        // Six people at six addresses.
        let others: Vec<String> = (0..6u8)
            .map(|i| {
                store
                    .insert_answer(P, at(u128::from(i), i), "abcde", NOW)
                    .expect("room")
            })
            .collect();
        // One address asks for 1,000 captchas under 500 user names.
        let mut last = Vec::new();
        for n in 0..1000u128 {
            let id = store
                .insert_answer(P, at(100 + n / 2, 200), "abcde", NOW + 1 + n as u64)
                .expect("room");
            last.push(id);
        }
        assert_eq!(store.len(), 10, "six others and the address's four");
        for id in &others {
            assert_eq!(store.check(id, P, "abcde", NOW + 2000), Ok(()), "{id}");
        }
        // The address keeps its newest four.
        for id in &last[996..] {
            assert_eq!(store.check(id, P, "abcde", NOW + 2000), Ok(()));
        }
        assert!(store.is_empty());
    }

    #[test]
    fn one_user_keeps_at_most_their_bound() {
        let store = CaptchaStore::new();
        let ids: Vec<String> = (0..CAPTCHAS_PER_USER_MAX as u64 + 3)
            .map(|i| {
                store
                    .insert_answer(P, ALICE, "abcde", NOW + i)
                    .expect("room")
            })
            .collect();
        assert_eq!(store.len(), CAPTCHAS_PER_USER_MAX);
        // The oldest went; the newest is live.
        assert_eq!(
            store.check(&ids[0], P, "abcde", NOW + 100),
            Err(CaptchaError::Unknown)
        );
        assert_eq!(
            store.check(ids.last().expect("some"), P, "abcde", NOW + 100),
            Ok(())
        );
        // Another user is not affected.
        let bob = store
            .insert_answer(P, at(0xb, 1), "abcde", NOW + 200)
            .expect("room");
        assert_eq!(store.len(), CAPTCHAS_PER_USER_MAX);
        assert_eq!(store.check(&bob, P, "abcde", NOW + 200), Ok(()));
        // Every index is emptied with the captchas.
        assert_eq!(store.purge_expired(u64::MAX), CAPTCHAS_PER_USER_MAX - 1);
        let live = store.lock();
        assert!(live.by_user.is_empty() && live.by_addr.is_empty() && live.by_expiry.is_empty());
    }

    #[test]
    fn concurrent_checks_pass_once() {
        let store = Arc::new(CaptchaStore::new());
        let ids: Arc<Vec<String>> = Arc::new(
            (0..500)
                .map(|n| {
                    store
                        .insert_answer(P, at(n, 1), "abcde", NOW)
                        .expect("room")
                })
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
            .insert_answer(&purpose("alice", 1), ALICE, "abcde", NOW)
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
            .insert_answer(&purpose("alice", 1), ALICE, "abcde", NOW)
            .expect("room");
        assert_eq!(
            store.check(&id, &purpose("alice", 2), "abcde", NOW),
            Err(CaptchaError::Wrong),
            "another sale"
        );
        let id = store
            .insert_answer(&purpose("alice", 1), ALICE, "abcde", NOW)
            .expect("room");
        assert_eq!(store.check(&id, &purpose("alice", 1), "abcde", NOW), Ok(()));
    }
}
