//! The two file formats of the store, both small, binary and versioned.
//!
//! Key file `<env>.key` (37 bytes):
//! ```text
//! "RAK1"  magic, 4 bytes
//! 0x01    format version
//! key     32 random bytes
//! ```
//! Value file `<NAME>.secret` (at least 34 bytes):
//! ```text
//! "RAS1"  magic, 4 bytes
//! 0x01    format version
//! nonce   12 bytes, random per write
//! sealed  ChaCha20-Poly1305 ciphertext of the value followed by its 16-byte tag
//! ```
//! The AAD of a value (not stored, see `crypto::aad`) names its environment and secret,
//! so the file is only valid at its own place. Parsing reports exactly what is wrong
//! (magic, version, length); authenticity is the AEAD's job.

use super::crypto::{KEY_LEN, NONCE_BYTES, TAG_LEN};
use zeroize::Zeroizing;

const KEY_MAGIC: &[u8; 4] = b"RAK1";
const VALUE_MAGIC: &[u8; 4] = b"RAS1";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 5;

/// Length of a key file.
pub(super) const KEY_FILE_LEN: usize = HEADER_LEN + KEY_LEN;
/// Bytes a value file adds to the value.
pub(super) const VALUE_OVERHEAD: usize = HEADER_LEN + NONCE_BYTES + TAG_LEN;

/// Checks magic and version of `bytes`.
fn check_header(bytes: &[u8], magic: &[u8; 4], what: &str) -> Result<(), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..4] != magic {
        return Err(format!(
            "bad magic: this is not a runner-agent {what} file (expected it to start with `{}`)",
            String::from_utf8_lossy(magic)
        ));
    }
    if bytes[4] != VERSION {
        return Err(format!(
            "unknown format version {} (this runner-agent reads version {VERSION})",
            bytes[4]
        ));
    }
    Ok(())
}

/// The bytes of a key file holding `key`.
pub(super) fn encode_key(key: &[u8; KEY_LEN]) -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
    bytes.extend_from_slice(KEY_MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(key);
    bytes
}

/// The key in a key file's bytes.
pub(super) fn decode_key(bytes: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    check_header(bytes, KEY_MAGIC, "key")?;
    if bytes.len() != KEY_FILE_LEN {
        return Err(format!(
            "{} bytes long; a key file has exactly {KEY_FILE_LEN}",
            bytes.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes[HEADER_LEN..]);
    Ok(key)
}

/// The bytes of a value file.
pub(super) fn encode_value(nonce: &[u8; NONCE_BYTES], sealed: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + NONCE_BYTES + sealed.len());
    bytes.extend_from_slice(VALUE_MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(nonce);
    bytes.extend_from_slice(sealed);
    bytes
}

/// Splits a value file's bytes into the nonce and the sealed part (ciphertext+tag).
pub(super) fn decode_value(bytes: &mut [u8]) -> Result<([u8; NONCE_BYTES], &mut [u8]), String> {
    check_header(bytes, VALUE_MAGIC, "secret")?;
    if bytes.len() <= VALUE_OVERHEAD {
        return Err(format!(
            "truncated: {} bytes, but a value file has at least {} (header, nonce, one byte, tag)",
            bytes.len(),
            VALUE_OVERHEAD + 1
        ));
    }
    let (head, sealed) = bytes.split_at_mut(HEADER_LEN + NONCE_BYTES);
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&head[HEADER_LEN..]);
    Ok((nonce, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_key_files_say_why() {
        let key = [9u8; KEY_LEN];
        let bytes = encode_key(&key);
        assert_eq!(bytes.len(), KEY_FILE_LEN);
        assert_eq!(*decode_key(&bytes).unwrap(), key);
        assert!(decode_key(&bytes[..3]).unwrap_err().contains("truncated"));
        assert!(decode_key(&bytes[..20])
            .unwrap_err()
            .contains("20 bytes long"));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode_key(&longer).unwrap_err().contains("38 bytes long"));
        let mut magic = bytes.to_vec();
        magic[0] = b'X';
        assert!(decode_key(&magic).unwrap_err().contains("bad magic"));
        let mut version = bytes.to_vec();
        version[4] = 7;
        assert!(decode_key(&version)
            .unwrap_err()
            .contains("unknown format version 7"));
        // A value file is not a key file.
        let value = encode_value(&[0; NONCE_BYTES], &[0; 40]);
        assert!(decode_key(&value)
            .unwrap_err()
            .contains("not a runner-agent key file"));
    }

    #[test]
    fn values_round_trip_and_every_truncation_is_reported() {
        let nonce = [3u8; NONCE_BYTES];
        let sealed = [5u8; 1 + TAG_LEN];
        let bytes = encode_value(&nonce, &sealed);
        let mut copy = bytes.clone();
        let (n, s) = decode_value(&mut copy).unwrap();
        assert_eq!(n, nonce);
        assert_eq!(s, &sealed);
        for len in 0..bytes.len() {
            let mut prefix = bytes[..len].to_vec();
            let err = decode_value(&mut prefix).unwrap_err();
            assert!(err.contains("truncated"), "{len}: {err}");
        }
        let mut key_file = encode_key(&[0; KEY_LEN]).to_vec();
        assert!(decode_value(&mut key_file)
            .unwrap_err()
            .contains("not a runner-agent secret file"));
    }
}
