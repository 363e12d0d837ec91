//! The object store under a library: a flat key space of immutable-or-compare-and-swap objects,
//! backed by a local folder or an S3 bucket.
//!
//! Keys are `/`-separated relative names made of `[A-Za-z0-9._-]` segments; the library builds
//! them, users never do. Every write is atomic (a reader sees the old object or the new one,
//! never a mix), and the two conditional writes are the only coordination between hosts.

mod folder;
mod s3;

pub use folder::FolderStore;
pub use s3::{S3Config, S3Store};

/// The S3 store configuration for a location and the caller's explicit settings.
pub(crate) fn s3_config(bucket: &str, prefix: &str, settings: &crate::S3Settings) -> S3Config {
    S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: settings.endpoint.clone(),
        region: settings.region.clone(),
        access_key_id: settings.access_key_id.clone(),
        secret_access_key: settings.secret_access_key.clone(),
        allow_http: settings.allow_http,
    }
}

/// An object's version tag, compared by `put_if_match` (S3's ETag; a content hash in a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag(pub String);

/// One object's bytes and its version tag.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: Etag,
}

/// What a listing or `head` says about an object.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When the object was last written, by the store's clock.
    pub modified: Option<jiff::Timestamp>,
}

/// The result of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// `put_if_absent`: the key exists; `put_if_match`: the object changed (or vanished).
    Conflict,
}

/// Failures of the store itself (I/O, network, permissions), with the key involved.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {action} {key}: {message}")]
pub struct StoreError {
    pub store: String,
    pub action: &'static str,
    pub key: String,
    pub message: String,
    /// Set when the object exists but is larger than the caller's limit.
    pub too_large: Option<u64>,
}

impl StoreError {
    pub fn new(store: &str, action: &'static str, key: &str, message: String) -> Self {
        StoreError {
            store: store.to_string(),
            action,
            key: key.to_string(),
            message,
            too_large: None,
        }
    }
}

/// The operations a library needs from its storage. Blocking; safe to call from many threads.
pub trait Store: Send + Sync {
    /// A human name for messages ("folder /srv/lib", "s3://bucket/prefix").
    fn describe(&self) -> String;
    /// Reads a whole object, refusing (with `too_large` set) one larger than `limit` bytes
    /// before reading it. `None` when absent.
    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// `get` plus the object's tag, for a later `put_if_match`.
    fn get_tagged(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError>;
    /// Writes an object unconditionally (atomically replacing any old one).
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Writes an object only if no object has that key (S3 `If-None-Match: *`).
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError>;
    /// Replaces an object only if its tag is still `etag` (S3 `If-Match`).
    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &Etag) -> Result<PutOutcome, StoreError>;
    /// Every object whose key starts with `prefix` (a folder-like prefix ending in `/`).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Deletes an object; deleting an absent object is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Size and time of an object, `None` when absent.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Makes every write so far durable before the next one (a folder's `syncfs`; S3
    /// acknowledges writes only once durable, so nothing to do there).
    fn flush(&self) -> Result<(), StoreError>;
}

/// Checks that a key is one the library builds (no `..`, no empty or hidden segment), so a
/// folder store can never be led outside its root. Also checked by the daemon's store routes
/// and its peer-store client, which carry keys over the network.
pub fn check_key(store: &str, key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if valid {
        Ok(())
    } else {
        Err(StoreError::new(
            store,
            "use",
            key,
            "not a valid object key".to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        for bad in ["", "../x", "a//b", "a/.hidden", "/abs", "a b", "a/\u{e9}"] {
            assert!(check_key("t", bad).is_err(), "{bad:?} accepted");
        }
        check_key("t", "chunks/ab/abcdef.1").unwrap();
    }
}
