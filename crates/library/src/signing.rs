//! ed25519 keys as text (the PEM files `vmedia iso create --sign-key` and openssl use, or 64 hex
//! digits) and the offline check of an exported manifest.

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{LibraryError, Result};
use crate::manifest::{key_id, Manifest};
use crate::reports::SignatureReport;

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut raw).ok()?;
    Some(raw)
}

/// A private key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) or 64 hex digits.
pub fn parse_signing_key(text: &str) -> Result<SigningKey> {
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        return SigningKey::from_pkcs8_pem(text).map_err(|e| LibraryError::Key {
            problem: format!("not an ed25519 PKCS#8 private key: {e}"),
        });
    }
    if let Some(raw) = hex32(text) {
        return Ok(SigningKey::from_bytes(&raw));
    }
    Err(LibraryError::Key {
        problem: "not an ed25519 private key (PKCS#8 PEM from `openssl genpkey -algorithm ed25519`, or 64 hex digits)".into(),
    })
}

/// A public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`), a private key PEM (its public half),
/// or 64 hex digits.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey> {
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| LibraryError::Key {
            problem: format!("not an ed25519 public key: {e}"),
        });
    }
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        return parse_signing_key(text).map(|k| k.verifying_key());
    }
    if let Some(raw) = hex32(text) {
        return VerifyingKey::from_bytes(&raw).map_err(|e| LibraryError::Key {
            problem: format!("not a valid ed25519 public key: {e}"),
        });
    }
    Err(LibraryError::Key {
        problem:
            "not an ed25519 public key (SPKI PEM from `openssl pkey -pubout`, or 64 hex digits)"
                .into(),
    })
}

/// Checks an exported manifest (`export_manifest`) against a public key, offline.
pub fn verify_signature(manifest: &[u8], public_key_pem: &str) -> Result<SignatureReport> {
    let key = parse_verifying_key(public_key_pem)?;
    let parsed = Manifest::parse("the exported manifest", manifest)?;
    let mut report = SignatureReport {
        name: parsed.header.name.clone(),
        digest: parsed.header.digest.clone(),
        size: parsed.header.size,
        signed: parsed.signature.is_some(),
        key_id: parsed.signature.as_ref().map(|s| key_id(&s.public_key)),
        valid: false,
        problem: None,
    };
    match parsed.check_signature("the exported manifest") {
        Ok(None) => report.problem = Some("the manifest is not signed".into()),
        Ok(Some(id)) if id == key_id(&key.to_bytes()) => report.valid = true,
        Ok(Some(id)) => {
            report.problem = Some(format!(
                "signed by key {id}, not by the given key {}",
                key_id(&key.to_bytes())
            ))
        }
        Err(e) => report.problem = Some(e.to_string()),
    }
    Ok(report)
}
