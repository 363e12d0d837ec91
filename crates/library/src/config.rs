//! `library.json`: the one object that says what a library is (format, encryption, trusted
//! keys, retention), written once by `init` with `put_if_absent`.

use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::error::{LibraryError, Result};
use crate::manifest::ChunkingParams;

/// The configuration's object key.
pub const CONFIG_KEY: &str = "library.json";
/// The configuration holds a few keys and numbers.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The store layout this code writes and reads.
pub const LIBRARY_FORMAT: u32 = 1;

/// How the library's objects are sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// Always "xchacha20poly1305" in format 1.
    pub algorithm: String,
    /// Always "hkdf-sha256" in format 1.
    pub kdf: String,
    /// Random HKDF salt (hex).
    pub salt: String,
    /// HMAC under the config key of "key check" (hex): tells a wrong key apart.
    pub key_check: String,
}

/// The library's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryConfig {
    pub format: u32,
    #[serde(with = "crate::timefmt")]
    pub created: jiff::Timestamp,
    pub chunking: ChunkingParams,
    pub encryption: Option<EncryptionConfig>,
    /// Trusted public keys (PEM); non-empty means every version must carry a valid signature
    /// by one of them.
    pub require_signed: Vec<String>,
    pub keep_within_seconds: u64,
    pub keep_last: Option<u32>,
    /// HMAC of the rest under the config key (encrypted libraries): a store that drops a
    /// trusted key or changes the retention is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl LibraryConfig {
    fn unmacked_bytes(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac = None;
        serde_json::to_vec(&copy).expect("the configuration serialises")
    }

    /// Serialises, adding the MAC when `keys` is given.
    pub fn to_bytes(&self, keys: Option<&Keys>) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac = keys.map(|k| k.config_mac(&self.unmacked_bytes()));
        serde_json::to_vec_pretty(&copy).expect("the configuration serialises")
    }

    /// Parses `library.json`.
    pub fn parse(bytes: &[u8]) -> Result<LibraryConfig> {
        let config: LibraryConfig =
            serde_json::from_slice(bytes).map_err(|e| LibraryError::Corrupt {
                key: CONFIG_KEY.into(),
                offset: 0,
                field: "json",
                problem: e.to_string(),
            })?;
        crate::error::check_format(CONFIG_KEY, "library", config.format, LIBRARY_FORMAT)?;
        Ok(config)
    }

    /// Derives the keys from `key_file` and checks them (and the MAC) against this config.
    pub fn unlock(&self, key_file: Option<&[u8]>, location: &str) -> Result<Option<Keys>> {
        match (&self.encryption, key_file) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(LibraryError::KeyNotExpected {
                location: location.to_string(),
            }),
            (Some(_), None) => Err(LibraryError::KeyRequired {
                location: location.to_string(),
            }),
            (Some(encryption), Some(key_file)) => {
                let salt = hex::decode(&encryption.salt).map_err(|_| LibraryError::Corrupt {
                    key: CONFIG_KEY.into(),
                    offset: 0,
                    field: "encryption.salt",
                    problem: "not hex".into(),
                })?;
                let keys = Keys::derive(key_file, &salt)?;
                if keys.key_check() != encryption.key_check {
                    return Err(LibraryError::WrongKey {
                        location: location.to_string(),
                    });
                }
                if self.mac.as_deref() != Some(keys.config_mac(&self.unmacked_bytes()).as_str()) {
                    return Err(LibraryError::Tampered {
                        key: CONFIG_KEY.into(),
                    });
                }
                Ok(Some(keys))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &Keys) -> LibraryConfig {
        LibraryConfig {
            format: LIBRARY_FORMAT,
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
            chunking: ChunkingParams {
                min: 1,
                avg: 2,
                max: 3,
            },
            encryption: Some(EncryptionConfig {
                algorithm: "xchacha20poly1305".into(),
                kdf: "hkdf-sha256".into(),
                salt: hex::encode(b"salt"),
                key_check: keys.key_check(),
            }),
            require_signed: vec!["PEM".into()],
            keep_within_seconds: 3600,
            keep_last: None,
            mac: None,
        }
    }

    #[test]
    fn the_right_key_unlocks_and_a_wrong_one_is_named() {
        let keys = Keys::derive(&[5u8; 32], b"salt").unwrap();
        let bytes = config(&keys).to_bytes(Some(&keys));
        let parsed = LibraryConfig::parse(&bytes).unwrap();
        assert!(parsed.unlock(Some(&[5u8; 32]), "l").unwrap().is_some());
        assert!(matches!(
            parsed.unlock(Some(&[6u8; 32]), "l"),
            Err(LibraryError::WrongKey { .. })
        ));
        assert!(matches!(
            parsed.unlock(None, "l"),
            Err(LibraryError::KeyRequired { .. })
        ));
    }

    #[test]
    fn a_dropped_trusted_key_is_detected() {
        let keys = Keys::derive(&[5u8; 32], b"salt").unwrap();
        let mut parsed = LibraryConfig::parse(&config(&keys).to_bytes(Some(&keys))).unwrap();
        parsed.require_signed.clear();
        assert!(matches!(
            parsed.unlock(Some(&[5u8; 32]), "l"),
            Err(LibraryError::Tampered { .. })
        ));
    }
}
