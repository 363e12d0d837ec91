//! ed25519 keys (PKCS#8/SPKI PEM as `openssl genpkey -algorithm ed25519` writes, or raw hex) and
//! the exact message vmedia signs.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::IntegrityError;

/// Key files are a few hundred bytes; anything larger is not a key and is not read whole.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Domain separation: a vmedia image signature can never be replayed as another message.
pub const SIGNATURE_CONTEXT: &[u8] = b"vmedia-iso-ed25519-v1\0";

/// The signed message: `SIGNATURE_CONTEXT || covered_bytes (u64 big-endian) || SHA-256`.
pub fn signed_message(covered_bytes: u64, sha256: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 8 + 32);
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(&covered_bytes.to_be_bytes());
    message.extend_from_slice(sha256);
    message
}

/// Names a public key: the first 8 bytes of SHA-256 over its 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// Loads a private key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), PKCS#8 DER, 64 hex digits,
/// or the raw 32 bytes.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, IntegrityError> {
    let bytes = read_key_file(path)?;
    let fail = |problem: String| IntegrityError::Key {
        path: path.to_path_buf(),
        problem,
    };
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if text.contains("-----BEGIN PRIVATE KEY-----") {
            return SigningKey::from_pkcs8_pem(text)
                .map_err(|e| fail(format!("not an ed25519 PKCS#8 private key: {e}")));
        }
        if text.contains("-----BEGIN") {
            return Err(fail(
                "unsupported PEM block; expected `-----BEGIN PRIVATE KEY-----` (openssl genpkey -algorithm ed25519)".into(),
            ));
        }
        if let Some(raw) = hex_key(text) {
            return Ok(SigningKey::from_bytes(&raw));
        }
    }
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(SigningKey::from_bytes(&raw));
    }
    SigningKey::from_pkcs8_der(&bytes).map_err(|_| {
        fail(
            "not an ed25519 private key (PKCS#8 PEM or DER, 64 hex digits, or 32 raw bytes)".into(),
        )
    })
}

/// Loads a public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`), SPKI DER, 64 hex digits, the raw
/// 32 bytes, or a private key file (its public half is used).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, IntegrityError> {
    let bytes = read_key_file(path)?;
    let fail = |problem: String| IntegrityError::Key {
        path: path.to_path_buf(),
        problem,
    };
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            return VerifyingKey::from_public_key_pem(text)
                .map_err(|e| fail(format!("not an ed25519 public key: {e}")));
        }
        if text.contains("-----BEGIN PRIVATE KEY-----") {
            return load_signing_key(path).map(|k| k.verifying_key());
        }
        if text.contains("-----BEGIN") {
            return Err(fail(
                "unsupported PEM block; expected `-----BEGIN PUBLIC KEY-----` (openssl pkey -pubout)".into(),
            ));
        }
        if let Some(raw) = hex_key(text) {
            return VerifyingKey::from_bytes(&raw)
                .map_err(|e| fail(format!("not a valid ed25519 public key: {e}")));
        }
    }
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return VerifyingKey::from_bytes(&raw)
            .map_err(|e| fail(format!("not a valid ed25519 public key: {e}")));
    }
    VerifyingKey::from_public_key_der(&bytes).map_err(|_| {
        fail("not an ed25519 public key (SPKI PEM or DER, 64 hex digits, or 32 raw bytes)".into())
    })
}

/// A fresh key pair from the operating system's random source.
pub fn generate_keypair() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// PKCS#8 PEM of a private key, readable by `openssl pkey`.
pub fn signing_key_pem(key: &SigningKey) -> Result<String, IntegrityError> {
    key.to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .map_err(|e| IntegrityError::KeyEncoding(e.to_string()))
}

/// SPKI PEM of a public key, readable by `openssl pkey -pubin`.
pub fn verifying_key_pem(key: &VerifyingKey) -> Result<String, IntegrityError> {
    key.to_public_key_pem(Default::default())
        .map_err(|e| IntegrityError::KeyEncoding(e.to_string()))
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, IntegrityError> {
    let fail = |problem: String| IntegrityError::Key {
        path: PathBuf::from(path),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(fail(format!(
            "{} bytes is too large for a key file",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

fn hex_key(text: &str) -> Option<[u8; 32]> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut raw).ok()?;
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_keypair();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("key.pub");
        std::fs::write(&private, signing_key_pem(&key).unwrap()).unwrap();
        std::fs::write(&public, verifying_key_pem(&key.verifying_key()).unwrap()).unwrap();
        assert_eq!(
            load_signing_key(&private).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(load_verifying_key(&public).unwrap(), key.verifying_key());
        assert_eq!(load_verifying_key(&private).unwrap(), key.verifying_key());
    }

    #[test]
    fn hex_keys_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_keypair();
        let private = dir.path().join("key.hex");
        let public = dir.path().join("pub.hex");
        std::fs::write(&private, format!("{}\n", hex::encode(key.to_bytes()))).unwrap();
        std::fs::write(&public, hex::encode(key.verifying_key().to_bytes())).unwrap();
        assert_eq!(
            load_signing_key(&private).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(load_verifying_key(&public).unwrap(), key.verifying_key());
    }

    #[test]
    fn oversized_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; MAX_KEY_FILE as usize + 1]).unwrap();
        assert!(matches!(
            load_signing_key(&path),
            Err(IntegrityError::Key { .. })
        ));
    }

    #[test]
    fn garbage_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, "not a key").unwrap();
        assert!(load_verifying_key(&path).is_err());
        assert!(load_signing_key(&path).is_err());
    }

    #[test]
    fn signed_message_layout() {
        let message = signed_message(0x0102, &[7; 32]);
        assert_eq!(&message[..SIGNATURE_CONTEXT.len()], SIGNATURE_CONTEXT);
        assert_eq!(
            &message[SIGNATURE_CONTEXT.len()..SIGNATURE_CONTEXT.len() + 8],
            &[0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(message.len(), SIGNATURE_CONTEXT.len() + 40);
    }
}
