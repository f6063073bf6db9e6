//! The cryptography of the store: per-environment keys, sealing and opening values, and
//! keyed fingerprints. Everything is ring.
//!
//! - Each environment has its own random 256-bit key (from `SystemRandom`, the OS
//!   CSPRNG). Two subkeys are derived from it with HKDF-SHA256 (RFC 5869), one per
//!   purpose, so the AEAD key and the fingerprint key are never the same bytes:
//!   `info = "runner-agent secret store v1 encryption"` for ChaCha20-Poly1305
//!   (RFC 8439) and `info = "runner-agent secret store v1 fingerprint"` for HMAC-SHA256
//!   (RFC 2104).
//! - Every seal uses a fresh random 96-bit nonce. Random nonces are safe here: the
//!   birthday bound of 2^48 writes per key is far beyond how often an operator sets
//!   secrets.
//! - The AAD names the environment and the secret (see [`aad`]): a ciphertext copied to
//!   another name or environment fails authentication instead of decrypting.
//! - Fingerprints are HMAC-SHA256 under the environment's fingerprint key, not a plain
//!   hash: a fingerprint of a short or guessable value could otherwise be brute-forced
//!   offline from a job record. The same value in the same environment always gives the
//!   same fingerprint; in another environment a different one.
//!
//! Key bytes read from disk live in zeroed-on-drop buffers; ring's key schedules are
//! opaque and live as long as the store's handle to that environment.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

/// Length of an environment key.
pub(super) const KEY_LEN: usize = 32;
/// Length of the authentication tag appended to a ciphertext.
pub(super) const TAG_LEN: usize = 16;
/// Length of a nonce.
pub(super) const NONCE_BYTES: usize = NONCE_LEN;
/// How fingerprints start.
pub const FINGERPRINT_PREFIX: &str = "hmac-sha256:";
/// Hex digits of the HMAC shown in a fingerprint (64 bits).
const FINGERPRINT_HEX: usize = 16;

const HKDF_SALT: &[u8] = b"runner-agent secret store v1";
const ENCRYPTION_INFO: &[u8] = b"runner-agent secret store v1 encryption";
const FINGERPRINT_INFO: &[u8] = b"runner-agent secret store v1 fingerprint";

/// The additional authenticated data of the value `name` of environment `env`. Neither
/// name can contain NUL (both are validated identifiers), so the encoding is unambiguous.
pub(super) fn aad(env: &str, name: &str) -> Zeroizing<Vec<u8>> {
    let mut aad = Zeroizing::new(Vec::with_capacity(env.len() + name.len() + 32));
    aad.extend_from_slice(b"runner-agent secret v1\0");
    aad.extend_from_slice(env.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// A fresh random environment key.
pub(super) fn generate_key(rng: &SystemRandom) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill(key.as_mut()).ok()?;
    Some(key)
}

/// An environment's keys, ready to use.
pub(super) struct EnvKeys {
    sealing: LessSafeKey,
    fingerprint: hmac::Key,
}

impl EnvKeys {
    /// Derives both subkeys from the environment key `raw` (module docs).
    pub(super) fn derive(raw: &[u8; KEY_LEN]) -> EnvKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(raw);
        // `expand` fails only for outputs longer than 255 hash lengths (RFC 5869 2.3);
        // both outputs here are 32 bytes.
        const EXPAND: &str = "HKDF-SHA256 can always expand to 32 bytes";
        let sealing = UnboundKey::from(
            prk.expand(&[ENCRYPTION_INFO], &aead::CHACHA20_POLY1305)
                .expect(EXPAND),
        );
        let fingerprint = hmac::Key::from(
            prk.expand(&[FINGERPRINT_INFO], hmac::HMAC_SHA256)
                .expect(EXPAND),
        );
        EnvKeys {
            sealing: LessSafeKey::new(sealing),
            fingerprint,
        }
    }

    /// Encrypts `plaintext` under a fresh nonce; returns the nonce and ciphertext+tag.
    pub(super) fn seal(
        &self,
        rng: &SystemRandom,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_BYTES], Vec<u8>), SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        // The buffer holds plaintext until sealing succeeds: zero it if it fails.
        let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buffer.extend_from_slice(plaintext);
        self.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *buffer,
            )
            .map_err(|_| SealError::Seal)?;
        Ok((nonce, std::mem::take(&mut *buffer)))
    }

    /// Decrypts `sealed` (ciphertext+tag) in place; returns the plaintext part of it,
    /// or `None` when authentication fails. The caller owns (and zeroes) `sealed`.
    pub(super) fn open<'a>(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        self.sealing
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
            .ok()
            .map(|plain| &*plain)
    }

    /// The fingerprint of `value` in this environment: `hmac-sha256:` and the first 16
    /// hex digits of the HMAC.
    pub(super) fn fingerprint(&self, value: &[u8]) -> String {
        let tag = hmac::sign(&self.fingerprint, value);
        let mut text = String::with_capacity(FINGERPRINT_PREFIX.len() + FINGERPRINT_HEX);
        text.push_str(FINGERPRINT_PREFIX);
        for byte in &tag.as_ref()[..FINGERPRINT_HEX / 2] {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }
}

/// Why sealing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SealError {
    /// No nonce could be drawn.
    Random,
    /// ring refused (input too large).
    Seal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> EnvKeys {
        EnvKeys::derive(&[byte; KEY_LEN])
    }

    #[test]
    fn seal_then_open_round_trips() {
        let rng = SystemRandom::new();
        let keys = keys(1);
        let aad = aad("ci", "TOKEN");
        let (nonce, mut sealed) = keys.seal(&rng, &aad, b"hunter2").unwrap();
        assert_eq!(sealed.len(), 7 + TAG_LEN);
        assert_ne!(&sealed[..7], b"hunter2");
        assert_eq!(keys.open(nonce, &aad, &mut sealed).unwrap(), b"hunter2");
    }

    #[test]
    fn nonces_are_fresh_per_seal() {
        let rng = SystemRandom::new();
        let keys = keys(1);
        let aad = aad("ci", "TOKEN");
        let (n1, c1) = keys.seal(&rng, &aad, b"same").unwrap();
        let (n2, c2) = keys.seal(&rng, &aad, b"same").unwrap();
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
    }

    #[test]
    fn aad_binds_environment_and_name() {
        let rng = SystemRandom::new();
        let keys = keys(1);
        let (nonce, sealed) = keys.seal(&rng, &aad("ci", "TOKEN"), b"v").unwrap();
        for (env, name) in [("ci", "OTHER"), ("release", "TOKEN"), ("ci\0TOKEN", "")] {
            let mut copy = sealed.clone();
            assert!(
                keys.open(nonce, &aad(env, name), &mut copy).is_none(),
                "{env}/{name}"
            );
        }
        // "c" + "i\0TOKEN" style shifts between the two fields give different AADs.
        assert_ne!(*aad("ci", "TOKEN"), *aad("c", "iTOKEN"));
    }

    #[test]
    fn wrong_key_or_altered_bytes_fail() {
        let rng = SystemRandom::new();
        let aad = aad("ci", "TOKEN");
        let (nonce, sealed) = keys(1).seal(&rng, &aad, b"value").unwrap();
        assert!(keys(2).open(nonce, &aad, &mut sealed.clone()).is_none());
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert!(
                keys(1).open(nonce, &aad, &mut altered).is_none(),
                "byte {i}"
            );
        }
        let mut other_nonce = nonce;
        other_nonce[0] ^= 1;
        assert!(keys(1)
            .open(other_nonce, &aad, &mut sealed.clone())
            .is_none());
    }

    #[test]
    fn fingerprints_are_stable_keyed_and_short() {
        let a = keys(1);
        let fp = a.fingerprint(b"hunter2");
        assert_eq!(fp, a.fingerprint(b"hunter2"));
        assert_eq!(fp, keys(1).fingerprint(b"hunter2"));
        assert!(fp.starts_with(FINGERPRINT_PREFIX));
        let hex = &fp[FINGERPRINT_PREFIX.len()..];
        assert_eq!(hex.len(), 16);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fp, a.fingerprint(b"hunter3"));
        // Keyed: another environment key gives another fingerprint of the same value.
        assert_ne!(fp, keys(2).fingerprint(b"hunter2"));
        // Not a plain hash of the value: compare with SHA-256("hunter2").
        let plain = ring::digest::digest(&ring::digest::SHA256, b"hunter2");
        let plain_hex: String = plain.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(hex, plain_hex);
    }

    #[test]
    fn subkeys_differ_from_the_raw_key() {
        // The fingerprint is not HMAC under the raw environment key.
        let raw = [7u8; KEY_LEN];
        let direct = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &raw), b"v");
        let direct_hex: String = direct.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(
            EnvKeys::derive(&raw).fingerprint(b"v"),
            format!("{FINGERPRINT_PREFIX}{direct_hex}")
        );
    }

    #[test]
    fn generated_keys_are_random() {
        let rng = SystemRandom::new();
        let a = generate_key(&rng).unwrap();
        let b = generate_key(&rng).unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, [0u8; KEY_LEN]);
    }
}
