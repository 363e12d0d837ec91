//! Encryption at rest: keys derived from the key file, sealed objects, keyed names.
//!
//! Three 32-byte keys come from HKDF-SHA256 over the key file's bytes, salted with the
//! library's random salt (so two libraries made from one key file share no key):
//! - `name`: HMAC-SHA256 key for chunk, manifest and item object names. The store sees
//!   `HMAC(name, digest)`, which says nothing about the content and cannot be matched
//!   against another library's names.
//! - `seal`: XChaCha20-Poly1305 key for every chunk, manifest and timeline. A sealed object is
//!   `nonce (24 random bytes) || ciphertext || tag (16)`, with the object's own key
//!   (`chunks/..`, `manifests/..`, `items/..`) as associated data, so an object copied or swapped
//!   under another name fails to open.
//! - `config`: HMAC-SHA256 key authenticating `library.json`, and its key check value.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::RngCore;
use sha2::Sha256;

use crate::error::{LibraryError, Result};

/// Fewer bytes than this cannot hold 128 bits of key material.
pub const MIN_KEY_FILE_BYTES: usize = 16;
/// Key files are small; a larger one is a wrong path, not a key.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// XChaCha20's nonce: large enough that random nonces never repeat in practice.
pub const NONCE_BYTES: usize = 24;
/// Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to an object.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;

/// The keys of an encrypted library.
#[derive(Clone)]
pub struct Keys {
    name: [u8; 32],
    seal: [u8; 32],
    config: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// Fresh random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl Keys {
    /// Derives the keys from a key file's bytes and the library's salt.
    pub fn derive(key_file: &[u8], salt: &[u8]) -> Result<Keys> {
        if key_file.len() < MIN_KEY_FILE_BYTES {
            return Err(LibraryError::Key {
                problem: format!(
                    "the key file holds {} bytes; it needs at least {MIN_KEY_FILE_BYTES} random bytes (e.g. `head -c 32 /dev/urandom > lib.key`)",
                    key_file.len()
                ),
            });
        }
        if key_file.len() > MAX_KEY_FILE_BYTES {
            return Err(LibraryError::Key {
                problem: format!(
                    "the key file holds {} bytes; that is not a key file",
                    key_file.len()
                ),
            });
        }
        let hkdf = Hkdf::<Sha256>::new(Some(salt), key_file);
        let mut keys = Keys {
            name: [0; 32],
            seal: [0; 32],
            config: [0; 32],
        };
        let expand = |info: &[u8], out: &mut [u8; 32]| {
            hkdf.expand(info, out)
                .expect("32 bytes is a valid HKDF length")
        };
        expand(b"vmedia-library v1 names", &mut keys.name);
        expand(b"vmedia-library v1 seal", &mut keys.seal);
        expand(b"vmedia-library v1 config", &mut keys.config);
        Ok(keys)
    }

    /// The keyed name of a chunk with this content digest (hex).
    pub fn chunk_name(&self, digest: &[u8; 32]) -> String {
        hex::encode(hmac(&self.name, &[b"chunk\0", digest]))
    }

    /// The keyed name of a manifest with this plaintext digest (hex).
    pub fn manifest_name(&self, digest: &[u8; 32]) -> String {
        hex::encode(hmac(&self.name, &[b"manifest\0", digest]))
    }

    /// The keyed name of an item's timeline (hex).
    pub fn item_name(&self, name: &str) -> String {
        hex::encode(hmac(&self.name, &[b"item\0", name.as_bytes()]))
    }

    /// The value stored in `library.json` that tells a wrong key from a right one.
    pub fn key_check(&self) -> String {
        hex::encode(hmac(&self.config, &[b"key check"]))
    }

    /// HMAC of the configuration bytes.
    pub fn config_mac(&self, bytes: &[u8]) -> String {
        hex::encode(hmac(&self.config, &[b"config\0", bytes]))
    }

    /// Seals `plain` for storage under `object_key`.
    pub fn seal(&self, object_key: &str, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = random_bytes();
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.seal));
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: object_key.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any length the library produces");
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens an object sealed under `object_key`, in place; any change to it (or another key)
    /// fails.
    pub fn open(&self, object_key: &str, mut sealed: Vec<u8>) -> Result<Vec<u8>> {
        let tampered = || LibraryError::Tampered {
            key: object_key.to_string(),
        };
        let Some(tag_at) = sealed
            .len()
            .checked_sub(TAG_BYTES)
            .filter(|&at| at >= NONCE_BYTES)
        else {
            return Err(tampered());
        };
        let (head, tag) = sealed.split_at_mut(tag_at);
        let (nonce, body) = head.split_at_mut(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.seal));
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                object_key.as_bytes(),
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| tampered())?;
        sealed.truncate(tag_at);
        sealed.drain(..NONCE_BYTES);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&[7u8; 32], b"salt").unwrap()
    }

    #[test]
    fn sealed_objects_open_only_under_their_own_name() {
        let keys = keys();
        let sealed = keys.seal("chunks/ab/abcd", b"secret content");
        assert_eq!(
            keys.open("chunks/ab/abcd", sealed.clone()).unwrap(),
            b"secret content"
        );
        assert!(matches!(
            keys.open("chunks/cd/cdef", sealed),
            Err(LibraryError::Tampered { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let keys = keys();
        let mut sealed = keys.seal("k", b"secret content");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(keys.open("k", sealed.clone()).is_err());
        assert!(keys.open("k", sealed[..10].to_vec()).is_err());
        assert!(keys.open("k", sealed[..SEAL_OVERHEAD].to_vec()).is_err());
        assert!(keys.open("k", Vec::new()).is_err());
    }

    #[test]
    fn another_key_or_salt_gives_other_names_and_cannot_open() {
        let a = keys();
        let b = Keys::derive(&[8u8; 32], b"salt").unwrap();
        let c = Keys::derive(&[7u8; 32], b"other salt").unwrap();
        let digest = [1u8; 32];
        assert_ne!(a.chunk_name(&digest), b.chunk_name(&digest));
        assert_ne!(a.chunk_name(&digest), c.chunk_name(&digest));
        assert_ne!(a.key_check(), b.key_check());
        assert!(b.open("k", a.seal("k", b"x")).is_err());
    }

    #[test]
    fn short_key_files_are_refused() {
        assert!(Keys::derive(&[1u8; 8], b"salt").is_err());
    }
}
