//! The library's one error type: every message says what happened and what to do next.

use std::path::PathBuf;

use crate::store::StoreError;

/// Errors of every library operation.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{text:?} is not a library location ({problem}); give a folder or s3://BUCKET/PREFIX")]
    InvalidLocation { text: String, problem: String },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("no library at {location}; create one with `vmedia library init`")]
    NotALibrary { location: String },

    #[error("a library already exists at {location}; open it instead of running init again")]
    AlreadyExists { location: String },

    #[error("{key}: {what} format {found} is not supported by this vmedia (it reads {supported}); upgrade vmedia")]
    UnsupportedFormat {
        key: String,
        what: &'static str,
        found: u32,
        supported: u32,
    },

    #[error("the library at {location} is encrypted; pass its key file with --key")]
    KeyRequired { location: String },

    #[error(
        "the key does not open the library at {location}; pass the key file it was created with"
    )]
    WrongKey { location: String },

    #[error("the library at {location} is not encrypted; drop --key")]
    KeyNotExpected { location: String },

    #[error("key: {problem}")]
    Key { problem: String },

    #[error("object {key} is damaged at offset {offset:#x} ({field}): {problem}; run `vmedia library verify` and `repair --from`")]
    Corrupt {
        key: String,
        offset: u64,
        field: &'static str,
        problem: String,
    },

    #[error("object {key} failed authentication: it was tampered with, swapped or sealed under another key; run `vmedia library verify`")]
    Tampered { key: String },

    #[error("object {key} is {size} bytes, more than the {limit} bytes allowed for {what}; the store is damaged or hostile")]
    TooLarge {
        key: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error(
        "{what} is missing from the store: {key}; run `vmedia library verify` and `repair --from`"
    )]
    Missing { what: &'static str, key: String },

    #[error("invalid item name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },

    #[error("invalid version {spec:?}: {problem}; write NAME, NAME@N or NAME@sha256:PREFIX")]
    InvalidSpec { spec: String, problem: String },

    #[error("no item named {name:?} in the library; `vmedia library ls` lists them")]
    NoSuchItem { name: String },

    #[error("item {name:?} has no version {wanted}; `vmedia library history {name}` lists them")]
    NoSuchVersion { name: String, wanted: String },

    #[error("digest prefix {prefix} names {count} versions of {name:?}; give more digits")]
    AmbiguousDigest {
        name: String,
        prefix: String,
        count: usize,
    },

    #[error("item {name:?} was removed; `vmedia library rollback {name} --to N` restores it")]
    ItemRemoved { name: String },

    #[error("version {version} of {name:?} was pruned by the retention policy and is gone")]
    VersionPruned { name: String, version: u64 },

    #[error("no version of {name:?} was current at {at}; the first was added at {first}")]
    NothingCurrentAt {
        name: String,
        at: String,
        first: String,
    },

    #[error("reading the source {source_name}: {source}")]
    Source {
        source_name: String,
        #[source]
        source: std::io::Error,
    },

    #[error("writing {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{name}: the disk image names a backing file {backing:?}; pass --flatten to store its merged content")]
    BackingFile { name: String, backing: String },

    #[error("{name}: reading the image: {problem}")]
    Image { name: String, problem: String },

    #[error("{name}: the image's embedded {check} does not match its content ({problem}); refusing to add a damaged image")]
    EmbeddedChecksum {
        name: String,
        check: &'static str,
        problem: String,
    },

    #[error("this library requires signed versions; {what} is not signed; add with --sign-key")]
    Unsigned { what: String },

    #[error("{what} is signed by key {key_id}, which this library does not trust")]
    Untrusted { what: String, key_id: String },

    #[error("the signature of {what} does not match its manifest: the manifest was altered")]
    BadSignature { what: String },

    #[error("chunk {chunk} at image offset {offset:#x} of {version} is damaged: {problem}; run `vmedia library verify` and `repair --from`")]
    ChunkDamaged {
        version: String,
        chunk: String,
        offset: u64,
        problem: String,
    },

    #[error("{what}: the content's SHA-256 is {actual}, the manifest records {expected}; nothing was written")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{key} kept changing under {attempts} attempts to update it; retry the command")]
    Contention { key: String, attempts: u32 },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot sync {from} to {to}: {problem}")]
    SyncRefused {
        from: String,
        to: String,
        problem: String,
    },

    #[error("{what} exceeds the limit of {limit} ({reason})")]
    Limit {
        what: &'static str,
        limit: u64,
        reason: &'static str,
    },
}

/// Shorthand for library results.
pub type Result<T, E = LibraryError> = std::result::Result<T, E>;

/// Refuses object `key` (`what`: "a manifest", "a timeline") when it is over `limit` bytes,
/// before anything parses it: the store is untrusted input and memory stays bounded.
pub(crate) fn check_size(key: &str, what: &'static str, bytes: &[u8], limit: u64) -> Result<()> {
    let size = bytes.len() as u64;
    if size > limit {
        return Err(LibraryError::TooLarge {
            key: key.to_string(),
            what,
            size,
            limit,
        });
    }
    Ok(())
}

/// Refuses object `key` written in a format number this version does not read.
pub(crate) fn check_format(
    key: &str,
    what: &'static str,
    found: u32,
    supported: u32,
) -> Result<()> {
    if found != supported {
        return Err(LibraryError::UnsupportedFormat {
            key: key.to_string(),
            what,
            found,
            supported,
        });
    }
    Ok(())
}
