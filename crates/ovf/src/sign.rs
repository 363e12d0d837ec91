//! The OVA signature file (`.cert`): `SHA256(name.mf)= <hex signature>` over the manifest,
//! followed by the signer's PEM certificate, as ovftool writes it. RSA keys sign with PKCS#1
//! v1.5 and SHA-256, P-256 keys with ECDSA and SHA-256 (DER signature); `openssl dgst -sha256
//! -verify` checks either with the certificate's public key.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};

use crate::error::{io_err, OvfError, Result};

/// Largest key or certificate file read: PEM keys and certificates are a few KiB.
pub const MAX_PEM_BYTES: u64 = 64 << 10;

enum Key {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A loaded private key and the certificate that goes with it.
pub struct Signer {
    key: Key,
    certificate: String,
}

fn read_small(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(io_err(path, "open"))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(OvfError::Limit {
            what: path.display().to_string(),
            limit: "MAX_PEM_BYTES",
            value: meta.len(),
            max: MAX_PEM_BYTES,
        });
    }
    std::fs::read_to_string(path).map_err(io_err(path, "read"))
}

/// The DER body of the first PEM block labelled `label`.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

impl Signer {
    pub fn load(key_path: &Path, cert_path: &Path) -> Result<Signer> {
        let key_text = read_small(key_path)?;
        let certificate = read_small(cert_path)?;
        if pem_block(&certificate, "CERTIFICATE").is_none() {
            return Err(OvfError::Signing(format!(
                "{}: no PEM CERTIFICATE block",
                cert_path.display()
            )));
        }
        let bad = |why: String| OvfError::Signing(format!("{}: {why}", key_path.display()));
        let key = if let Some(der) = pem_block(&key_text, "PRIVATE KEY") {
            match RsaKeyPair::from_pkcs8(&der) {
                Ok(k) => Key::Rsa(k),
                Err(_) => EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &der,
                    &SystemRandom::new(),
                )
                .map(Key::Ecdsa)
                .map_err(|e| bad(format!("not an RSA or P-256 PKCS#8 key ({e})")))?,
            }
        } else if let Some(der) = pem_block(&key_text, "RSA PRIVATE KEY") {
            Key::Rsa(RsaKeyPair::from_der(&der).map_err(|e| bad(format!("bad RSA key ({e})")))?)
        } else {
            return Err(bad("no PEM PRIVATE KEY or RSA PRIVATE KEY block".into()));
        };
        Ok(Signer { key, certificate })
    }

    /// The `.cert` member for the manifest `mf_name` with content `mf`.
    pub fn certificate_file(&self, mf_name: &str, mf: &[u8]) -> Result<String> {
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, mf, &mut sig)
                    .map_err(|e| OvfError::Signing(format!("RSA signing failed ({e})")))?;
                sig
            }
            Key::Ecdsa(k) => k
                .sign(&rng, mf)
                .map_err(|e| OvfError::Signing(format!("ECDSA signing failed ({e})")))?
                .as_ref()
                .to_vec(),
        };
        let mut out = format!("SHA256({mf_name})= {}\n", hex::encode(sig));
        out.push_str(self.certificate.trim_end());
        out.push('\n');
        Ok(out)
    }
}
