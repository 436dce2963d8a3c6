//! The broker's authentication: a shared secret proved by HMAC-SHA256 challenge-response
//! in the handshake (protocol version 2, `PROTOCOL.md` "Authentication"), and the
//! per-address throttle on wrong proofs.
//!
//! The broker sends a random 32-byte challenge in its hello; the client answers with a
//! nonce of its own and `HMAC-SHA256(secret, CLIENT_LABEL ‖ challenge ‖ client nonce)`;
//! the broker checks it in constant time and answers with
//! `HMAC-SHA256(secret, SERVER_LABEL ‖ challenge ‖ client nonce)`, which the client checks
//! the same way. So neither side learns anything from a peer without the secret, a
//! recorded exchange cannot be replayed (each side picks a fresh nonce), and a client
//! knows it talks to a broker that holds the secret. The labels keep one direction's
//! proof from passing as the other's. Nothing after the handshake is signed or encrypted:
//! that needs TLS (see `PROTOCOL.md`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::limits::{AUTH_THROTTLE_ADDRESSES_MAX, SECRET_BYTES_MAX, SECRET_BYTES_MIN};

/// Environment variable holding the shared secret itself.
pub const SECRET_ENV: &str = "QUEUE_SECRET";
/// Environment variable naming a file that holds the shared secret.
pub const SECRET_FILE_ENV: &str = "QUEUE_SECRET_FILE";
/// Bytes of a challenge or nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_BYTES: usize = 32;
/// What the client's proof is computed over, before the two nonces.
const CLIENT_LABEL: &[u8] = b"SKQP v2 client proof\0";
/// What the broker's proof is computed over, before the two nonces.
const SERVER_LABEL: &[u8] = b"SKQP v2 server proof\0";

/// A challenge or nonce.
pub type Nonce = [u8; NONCE_BYTES];
/// A proof.
pub type Proof = [u8; PROOF_BYTES];

/// A fresh random nonce from the thread's cryptographically secure generator.
pub fn nonce() -> Nonce {
    rand::random()
}

/// The secret shared by the broker and its clients. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Trailing whitespace a secret file may carry beyond [`SECRET_BYTES_MAX`].
const SECRET_FILE_SLACK_BYTES: usize = 64;

impl Secret {
    /// A secret of `bytes`: from [`SECRET_BYTES_MIN`] to [`SECRET_BYTES_MAX`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret> {
        let bytes = bytes.into();
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(Error::Invalid(format!(
                "the queue secret has {} bytes; at least {SECRET_BYTES_MIN} are needed \
                 (e.g. `openssl rand -hex 32`)",
                bytes.len()
            )));
        }
        if bytes.len() > SECRET_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "the queue secret has {} bytes; at most {SECRET_BYTES_MAX} are accepted",
                bytes.len()
            )));
        }
        Ok(Secret(bytes.into()))
    }

    /// The secret in the file at `path`, without trailing whitespace (the newline an
    /// editor or `echo` adds).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret> {
        use std::io::Read;
        let path = path.as_ref();
        let failed = |e: std::io::Error| {
            Error::Invalid(format!("queue secret file {}: {e}", path.display()))
        };
        // Read no more than a secret can be (plus room for trailing whitespace): a path to
        // something endless (a device, a log) is refused, not read into memory.
        let limit = (SECRET_BYTES_MAX + SECRET_FILE_SLACK_BYTES) as u64;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(failed)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(failed)?;
        if bytes.len() as u64 > limit {
            return Err(Error::Invalid(format!(
                "queue secret file {} is longer than {limit} bytes: not a secret",
                path.display()
            )));
        }
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        Secret::new(bytes).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{m} (in {})", path.display())),
            e => e,
        })
    }

    /// The secret from the environment: [`SECRET_ENV`] (the secret itself) or
    /// [`SECRET_FILE_ENV`] (a file holding it); `None` if neither is set (or both are
    /// empty), an error if both are set or the secret is not acceptable.
    pub fn from_env() -> Result<Option<Secret>> {
        let value = std::env::var_os(SECRET_ENV).filter(|v| !v.is_empty());
        let file = std::env::var_os(SECRET_FILE_ENV).filter(|v| !v.is_empty());
        match (value, file) {
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "both {SECRET_ENV} and {SECRET_FILE_ENV} are set; set one"
            ))),
            (Some(v), None) => Secret::new(v.into_encoded_bytes()).map(Some),
            (None, Some(f)) => Secret::from_file(f).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn mac(&self, label: &[u8], challenge: &Nonce, client_nonce: &Nonce) -> Hmac<Sha256> {
        // HMAC takes a key of any length, so this cannot fail; the zero-padded fallback
        // only satisfies the type.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&[0u8; 64].into()));
        mac.update(label);
        mac.update(challenge);
        mac.update(client_nonce);
        mac
    }

    /// The client's proof for the broker's `challenge` and its own `client_nonce`.
    pub fn client_proof(&self, challenge: &Nonce, client_nonce: &Nonce) -> Proof {
        self.mac(CLIENT_LABEL, challenge, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The broker's proof, sent once the client's checked out.
    pub fn server_proof(&self, challenge: &Nonce, client_nonce: &Nonce) -> Proof {
        self.mac(SERVER_LABEL, challenge, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the client's proof (compared in constant time).
    pub fn verify_client_proof(
        &self,
        challenge: &Nonce,
        client_nonce: &Nonce,
        proof: &[u8],
    ) -> bool {
        self.mac(CLIENT_LABEL, challenge, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// Whether `proof` is the broker's proof (compared in constant time).
    pub fn verify_server_proof(
        &self,
        challenge: &Nonce,
        client_nonce: &Nonce,
        proof: &[u8],
    ) -> bool {
        self.mac(SERVER_LABEL, challenge, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// Where failed authentications are counted: an IPv4 address, or the /64 prefix of an
/// IPv6 address (one host usually has a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// What [`Throttle::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The proof checked out.
    Good,
    /// The proof was wrong (and counted).
    Wrong,
    /// Wrong, from an address that has used up its failures for this long (not counted
    /// again).
    Throttled(Duration),
}

/// Counts wrong proofs per address: after `failures_max` of them within `window`, the
/// address's wrong proofs are answered as throttled until that window ends. A right proof
/// is always let in: a guesser sharing an address (NAT, the same host) with the gateway or
/// the workers must not lock them out; guessing stays slow through the delay before every
/// refusal and the secret's length. At most
/// [`AUTH_THROTTLE_ADDRESSES_MAX`] addresses are remembered; when full, expired windows are
/// dropped, then the oldest.
#[derive(Debug)]
pub(crate) struct Throttle {
    failures_max: u32,
    window: Duration,
    /// Per address: when its window started, and its failures in it.
    failures: Mutex<HashMap<Source, (Instant, u32)>>,
}

impl Throttle {
    pub(crate) fn new(failures_max: u32, window: Duration) -> Throttle {
        Throttle {
            failures_max: failures_max.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, (Instant, u32)>> {
        match self.failures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Checks a proof from `ip` with `verify`; a wrong one is counted, or, once `ip` has
    /// used up its failures, answered as throttled. The check and the count happen under
    /// one lock, so connections racing in parallel from one address cannot get more than
    /// its failures counted as plain wrong ones.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant, verify: impl FnOnce() -> bool) -> Verdict {
        let mut map = self.lock();
        let throttled = self.left(&map, ip, now);
        if verify() {
            return Verdict::Good;
        }
        if let Some(left) = throttled {
            return Verdict::Throttled(left);
        }
        self.count_failure(&mut map, ip, now);
        Verdict::Wrong
    }

    /// How long `ip`'s wrong proofs are still answered as throttled, if they are.
    fn left(
        &self,
        map: &HashMap<Source, (Instant, u32)>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let (start, n) = map.get(&Source::of(ip))?;
        let end = *start + self.window;
        (*n >= self.failures_max && end > now).then(|| end - now)
    }

    #[cfg(test)]
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.left(&self.lock(), ip, now)
    }

    #[cfg(test)]
    fn failed(&self, ip: IpAddr, now: Instant) {
        let _ = self.check(ip, now, || false);
    }

    /// Counts a wrong proof from `ip`.
    fn count_failure(&self, map: &mut HashMap<Source, (Instant, u32)>, ip: IpAddr, now: Instant) {
        let key = Source::of(ip);
        if !map.contains_key(&key) && map.len() >= AUTH_THROTTLE_ADDRESSES_MAX {
            let window = self.window;
            map.retain(|_, (start, _)| *start + window > now);
            if map.len() >= AUTH_THROTTLE_ADDRESSES_MAX
                && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(key).or_insert((now, 0));
        if entry.0 + self.window <= now {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_trimmed_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef-secret\n").expect("write");
        let s = Secret::from_file(&path).expect("a secret with a newline");
        assert_eq!(s.0.as_ref(), b"0123456789abcdef-secret");
        std::fs::write(
            &path,
            vec![b'x'; SECRET_BYTES_MAX + SECRET_FILE_SLACK_BYTES + 1],
        )
        .expect("write");
        assert!(
            matches!(Secret::from_file(&path), Err(Error::Invalid(m)) if m.contains("longer")),
            "an oversized file is refused"
        );
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).expect("long enough")
    }

    #[test]
    fn proofs_check_out_only_with_the_same_secret_nonces_and_direction() {
        let a = secret("0123456789abcdef-a");
        let b = secret("0123456789abcdef-b");
        let (ch, cn) = (nonce(), nonce());
        let p = a.client_proof(&ch, &cn);
        assert!(a.verify_client_proof(&ch, &cn, &p));
        assert!(!b.verify_client_proof(&ch, &cn, &p));
        assert!(!a.verify_client_proof(&nonce(), &cn, &p));
        assert!(!a.verify_client_proof(&ch, &nonce(), &p));
        // A client proof is not a server proof, and a short tag is refused.
        assert!(!a.verify_server_proof(&ch, &cn, &p));
        assert!(a.verify_server_proof(&ch, &cn, &a.server_proof(&ch, &cn)));
        assert!(!a.verify_client_proof(&ch, &cn, &p[..16]));
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        assert!(Secret::new(b"fifteen-bytes!!".to_vec()).is_err());
        let s = secret("sixteen-bytes!!!");
        assert!(!format!("{s:?}").contains("sixteen"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "sixteen-bytes!!!\n").expect("write");
        let from_file = Secret::from_file(&path).expect("read");
        let (ch, cn) = (nonce(), nonce());
        assert!(s.verify_client_proof(&ch, &cn, &from_file.client_proof(&ch, &cn)));
        std::fs::write(&path, "short\n").expect("write");
        assert!(Secret::from_file(&path).is_err());
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..2 {
            t.failed(ip, now);
        }
        assert_eq!(t.blocked(ip, now), None);
        t.failed(ip, now);
        assert!(t.blocked(ip, now).is_some());
        assert_eq!(t.blocked(other, now), None);
        assert_eq!(t.blocked(ip, now + Duration::from_secs(61)), None);
        // One IPv6 /64 counts as one source.
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::2".parse().expect("ip");
        for _ in 0..3 {
            t.failed(v6a, now);
        }
        assert!(t.blocked(v6b, now).is_some());
    }

    #[test]
    fn the_throttle_remembers_a_bounded_number_of_addresses() {
        let t = Throttle::new(1, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(AUTH_THROTTLE_ADDRESSES_MAX as u32 + 10) {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert!(t.lock().len() <= AUTH_THROTTLE_ADDRESSES_MAX);
    }
}
