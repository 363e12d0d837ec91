//! `Library`: opening a store, and the object-level operations every command builds on
//! (chunk encode/decode, manifests, timelines with compare-and-swap).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::config::{
    EncryptionConfig, LibraryConfig, CONFIG_KEY, LIBRARY_FORMAT, MAX_CONFIG_BYTES,
};
use crate::crypto::{random_bytes, Keys, SEAL_OVERHEAD};
use crate::error::{LibraryError, Result};
use crate::location::{InitOptions, Location, OpenConfig};
use crate::manifest::{max_stored_bytes, ChunkEntry, ChunkingParams, Manifest, MAX_MANIFEST_BYTES};
use crate::naming::{check_name, VersionSelector, VersionSpec};
use crate::signing::parse_verifying_key;
use crate::store::{Etag, FolderStore, PutOutcome, S3Store, Store, StoreError};
use crate::timeline::{Timeline, VersionRecord, MAX_TIMELINE_BYTES};

/// FastCDC bounds. 256 KiB average: an ISO repacked with one more 1 MiB file re-stores the
/// file, its neighbours' edge chunks and the rewritten directory blocks, a few MiB (measured
/// by `dedup_of_a_repacked_iso_*`), while a 2 GiB image is ~8 Ki objects, few enough that
/// per-object overhead (S3 requests, files) stays small next to the data.
pub const CHUNKING: ChunkingParams = ChunkingParams {
    min: 64 << 10,
    avg: 256 << 10,
    max: 1 << 20,
};
/// How often a timeline compare-and-swap is retried before giving up: each retry means
/// another host changed the item in between, so this is far past any real contention.
pub const MAX_CAS_ATTEMPTS: u32 = 200;
/// Codec byte of a stored chunk: the plain bytes follow.
pub const CODEC_STORED: u8 = 0;
/// Codec byte of a stored chunk: a zstd frame follows.
pub const CODEC_ZSTD: u8 = 1;

/// An open library. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Library {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) location: String,
    pub(crate) config: LibraryConfig,
    pub(crate) keys: Option<Keys>,
    pub(crate) trusted: Vec<VerifyingKey>,
    pub(crate) actor: String,
    /// CPU work (hashing, compression, decompression) runs here, one thread per core.
    pub(crate) pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Library({})", self.inner.location)
    }
}

pub(crate) fn open_store(config: &OpenConfig) -> Result<Arc<dyn Store>> {
    if let Some(provided) = &config.store {
        return Ok(Arc::clone(&provided.0));
    }
    Ok(match &config.location {
        Location::Folder(path) => Arc::new(FolderStore::new(path)),
        Location::S3 { bucket, prefix } => Arc::new(S3Store::new(&crate::store::s3_config(
            bucket, prefix, &config.s3,
        ))?),
        Location::Daemon { url } => {
            return Err(LibraryError::InvalidLocation {
                text: url.clone(),
                problem: "a daemon's store is opened by the caller (OpenConfig::store)".into(),
            })
        }
    })
}

fn make_pool() -> Result<rayon::ThreadPool> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vmedia-lib-{i}"))
        .build()
        .map_err(|e| LibraryError::Io {
            what: "starting worker threads".into(),
            source: std::io::Error::other(e.to_string()),
        })
}

impl Library {
    /// Creates a new library at the configured location (refused if one exists).
    pub fn init(config: &OpenConfig, options: &InitOptions) -> Result<Library> {
        let store = open_store(config)?;
        let location = config.location.to_string();
        for pem in &options.require_signed {
            parse_verifying_key(pem)?;
        }
        let (keys, encryption) = match &options.encrypt_key {
            None => (None, None),
            Some(key_file) => {
                let salt: [u8; 32] = random_bytes();
                let keys = Keys::derive(key_file, &salt)?;
                let encryption = EncryptionConfig {
                    algorithm: "xchacha20poly1305".into(),
                    kdf: "hkdf-sha256".into(),
                    salt: hex::encode(salt),
                    key_check: keys.key_check(),
                };
                (Some(keys), Some(encryption))
            }
        };
        let library_config = LibraryConfig {
            format: LIBRARY_FORMAT,
            created: jiff::Timestamp::now(),
            chunking: CHUNKING,
            encryption,
            require_signed: options.require_signed.clone(),
            keep_within_seconds: options.keep_within.as_secs(),
            keep_last: options.keep_last,
            mac: None,
        };
        let bytes = library_config.to_bytes(keys.as_ref());
        if store.put_if_absent(CONFIG_KEY, &bytes)? == PutOutcome::Conflict {
            return Err(LibraryError::AlreadyExists { location });
        }
        store.flush()?;
        let mut open = config.clone();
        open.key = options.encrypt_key.clone();
        Library::open_with(store, &open)
    }

    /// Opens an existing library.
    pub fn open(config: &OpenConfig) -> Result<Library> {
        let store = open_store(config)?;
        Library::open_with(store, config)
    }

    fn open_with(store: Arc<dyn Store>, config: &OpenConfig) -> Result<Library> {
        let location = config.location.to_string();
        let bytes = store
            .get(CONFIG_KEY, MAX_CONFIG_BYTES)
            .map_err(|e| too_large(e, "the library configuration", MAX_CONFIG_BYTES))?
            .ok_or_else(|| LibraryError::NotALibrary {
                location: location.clone(),
            })?;
        let library_config = LibraryConfig::parse(&bytes)?;
        let keys = library_config.unlock(config.key.as_deref(), &location)?;
        let trusted = library_config
            .require_signed
            .iter()
            .map(|pem| parse_verifying_key(pem))
            .collect::<Result<Vec<_>>>()?;
        Ok(Library {
            inner: Arc::new(Inner {
                store,
                location,
                config: library_config,
                keys,
                trusted,
                actor: config.actor.clone(),
                pool: make_pool()?,
            }),
        })
    }

    /// Where the library lives, for messages.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// True when the library seals its objects.
    pub fn is_encrypted(&self) -> bool {
        self.inner.keys.is_some()
    }

    /// The retention window.
    pub fn keep_within(&self) -> Duration {
        Duration::from_secs(self.inner.config.keep_within_seconds)
    }

    /// The retention count, if any.
    pub fn keep_last(&self) -> Option<u32> {
        self.inner.config.keep_last
    }

    /// True when every version must be signed by a trusted key.
    pub fn requires_signatures(&self) -> bool {
        !self.inner.trusted.is_empty()
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The object store under this library, for the daemon's replication routes, which give
    /// a peer's `sync` the same operations a folder or S3 store does. Everything else goes
    /// through the library's own operations.
    pub fn raw_store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    // ----- object names -----

    /// The object key of the chunk with this plain digest.
    pub(crate) fn chunk_key(&self, digest: &[u8; 32]) -> String {
        let name = match &self.inner.keys {
            Some(keys) => keys.chunk_name(digest),
            None => hex::encode(digest),
        };
        format!("chunks/{}/{name}", &name[..2])
    }

    /// The manifest name (under `manifests/`) of these plain manifest bytes.
    pub(crate) fn manifest_name(&self, plain: &[u8]) -> String {
        let digest: [u8; 32] = Sha256::digest(plain).into();
        match &self.inner.keys {
            Some(keys) => keys.manifest_name(&digest),
            None => hex::encode(digest),
        }
    }

    pub(crate) fn item_key(&self, name: &str) -> String {
        match &self.inner.keys {
            Some(keys) => format!("items/{}", keys.item_name(name)),
            None => format!("items/{name}"),
        }
    }

    // ----- sealing -----

    pub(crate) fn seal(&self, key: &str, plain: Vec<u8>) -> Vec<u8> {
        match &self.inner.keys {
            Some(keys) => keys.seal(key, &plain),
            None => plain,
        }
    }

    pub(crate) fn unseal(&self, key: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        match &self.inner.keys {
            Some(keys) => keys.open(key, stored),
            None => Ok(stored),
        }
    }

    // ----- chunks -----

    /// The stored form of a chunk: codec byte, payload (zstd when that saves at least 1/64),
    /// sealed when encrypted.
    pub(crate) fn encode_chunk(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let compressed = crate::add::compress(plain);
        let mut body = Vec::with_capacity(1 + plain.len());
        match compressed {
            Some(frame) if frame.len() < plain.len() - plain.len() / 64 => {
                body.push(CODEC_ZSTD);
                body.extend_from_slice(&frame);
            }
            _ => {
                body.push(CODEC_STORED);
                body.extend_from_slice(plain);
            }
        }
        self.seal(key, body)
    }

    /// Fetches, opens, decompresses and checks one chunk; `what` names the version for errors.
    pub(crate) fn load_chunk(&self, entry: &ChunkEntry, what: &str) -> Result<Vec<u8>> {
        self.load_chunk_by_digest(&entry.digest, entry.length, entry.offset, what)
    }

    pub(crate) fn load_chunk_by_digest(
        &self,
        digest: &[u8; 32],
        length: u32,
        offset: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let plain = self.open_chunk(digest, length, offset, what)?;
        let actual: [u8; 32] = Sha256::digest(&plain).into();
        if &actual != digest {
            return Err(self.chunk_damaged(
                digest,
                what,
                offset,
                format!(
                    "content hashes to sha256:{}, expected sha256:{}",
                    hex::encode(actual),
                    hex::encode(digest)
                ),
            ));
        }
        Ok(plain)
    }

    /// Fetches, opens (authenticated when encrypted) and decompresses one chunk and checks its
    /// length, but not its digest: for a caller that checks a digest over these bytes itself
    /// (`get` checks the whole image's). `load_chunk_by_digest` is the checked form.
    pub(crate) fn open_chunk(
        &self,
        digest: &[u8; 32],
        length: u32,
        offset: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let key = self.chunk_key(digest);
        let damaged = |problem: String| self.chunk_damaged(digest, what, offset, problem);
        let limit = max_stored_bytes(length) as u64 + SEAL_OVERHEAD as u64;
        let stored = match self.store().get(&key, limit) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(damaged("missing from the store".into())),
            Err(e) if e.too_large.is_some() => {
                return Err(damaged(format!(
                    "{} stored bytes for {length} plain bytes",
                    e.too_large.unwrap_or(0)
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let mut body = self
            .unseal(&key, stored)
            .map_err(|_| damaged("failed authentication (tampered or swapped)".into()))?;
        let plain = match body.first() {
            Some(&CODEC_STORED) => {
                // In place: one move instead of a second buffer.
                body.drain(..1);
                body
            }
            Some(&CODEC_ZSTD) => decompress(&body[1..], length as usize)
                .map_err(|e| damaged(format!("zstd: {e}")))?,
            Some(codec) => return Err(damaged(format!("unknown codec {codec}"))),
            None => return Err(damaged("empty object".into())),
        };
        if plain.len() != length as usize {
            return Err(damaged(format!(
                "holds {} bytes, the index says {length}",
                plain.len()
            )));
        }
        Ok(plain)
    }

    fn chunk_damaged(
        &self,
        digest: &[u8; 32],
        what: &str,
        offset: u64,
        problem: String,
    ) -> LibraryError {
        LibraryError::ChunkDamaged {
            version: what.to_string(),
            chunk: self.chunk_key(digest),
            offset,
            problem,
        }
    }

    // ----- manifests -----

    /// Stores manifest bytes (content-addressed, so an existing object is the same manifest).
    pub(crate) fn put_manifest(&self, plain: &[u8]) -> Result<String> {
        let name = self.manifest_name(plain);
        let key = format!("manifests/{name}");
        let stored = self.seal(&key, plain.to_vec());
        self.store().put_if_absent(&key, &stored)?;
        Ok(name)
    }

    /// Reads a manifest's plain bytes, checking they are the ones its name commits to.
    pub(crate) fn load_manifest_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let key = format!("manifests/{name}");
        let stored = self
            .store()
            .get(&key, MAX_MANIFEST_BYTES + SEAL_OVERHEAD as u64)
            .map_err(|e| too_large(e, "a manifest", MAX_MANIFEST_BYTES))?
            .ok_or_else(|| LibraryError::Missing {
                what: "a manifest",
                key: key.clone(),
            })?;
        let plain = self.unseal(&key, stored)?;
        if self.manifest_name(&plain) != name {
            return Err(LibraryError::Tampered { key });
        }
        Ok(plain)
    }

    pub(crate) fn load_manifest(&self, name: &str) -> Result<Manifest> {
        let plain = self.load_manifest_bytes(name)?;
        Manifest::parse(&format!("manifests/{name}"), &plain)
    }

    /// Loads a version's manifest, checks it matches its timeline record and, in a library
    /// that requires signatures, that a trusted key signed it.
    pub(crate) fn load_version_manifest(
        &self,
        timeline: &Timeline,
        record: &VersionRecord,
    ) -> Result<Manifest> {
        let manifest = self.load_manifest(&record.manifest)?;
        let what = format!("{}@{}", timeline.name, record.version);
        if manifest.header.name != timeline.name
            || manifest.header.digest != record.digest
            || manifest.header.size != record.size
        {
            return Err(LibraryError::Corrupt {
                key: format!("manifests/{}", record.manifest),
                offset: 0,
                field: "header",
                problem: format!("does not describe {what} as its timeline records it"),
            });
        }
        self.check_trusted(&manifest, &what)?;
        Ok(manifest)
    }

    /// Refuses an unsigned or untrusted manifest when the library requires signatures.
    pub(crate) fn check_trusted(&self, manifest: &Manifest, what: &str) -> Result<()> {
        if self.inner.trusted.is_empty() {
            return Ok(());
        }
        let Some(key_id) = manifest.check_signature(what)? else {
            return Err(LibraryError::Unsigned {
                what: what.to_string(),
            });
        };
        let trusted = manifest.signature.as_ref().is_some_and(|sig| {
            self.inner
                .trusted
                .iter()
                .any(|k| k.to_bytes() == sig.public_key)
        });
        if !trusted {
            return Err(LibraryError::Untrusted {
                what: what.to_string(),
                key_id,
            });
        }
        Ok(())
    }

    // ----- timelines -----

    /// Reads an item's timeline and its tag, `None` when the item does not exist.
    pub(crate) fn load_timeline(&self, name: &str) -> Result<Option<(Timeline, Etag)>> {
        let key = self.item_key(name);
        let Some(object) = self
            .store()
            .get_tagged(&key, MAX_TIMELINE_BYTES + SEAL_OVERHEAD as u64)
            .map_err(|e| too_large(e, "a timeline", MAX_TIMELINE_BYTES))?
        else {
            return Ok(None);
        };
        let plain = self.unseal(&key, object.bytes)?;
        Ok(Some((
            Timeline::parse(&key, &plain, Some(name))?,
            object.etag,
        )))
    }

    /// Reads a timeline by object key (listing), whatever item it holds.
    pub(crate) fn load_timeline_key(&self, key: &str) -> Result<Option<Timeline>> {
        let Some(stored) = self
            .store()
            .get(key, MAX_TIMELINE_BYTES + SEAL_OVERHEAD as u64)
            .map_err(|e| too_large(e, "a timeline", MAX_TIMELINE_BYTES))?
        else {
            return Ok(None);
        };
        let plain = self.unseal(key, stored)?;
        let timeline = Timeline::parse(key, &plain, None)?;
        if self.item_key(&timeline.name) != key {
            return Err(LibraryError::Corrupt {
                key: key.to_string(),
                offset: 0,
                field: "name",
                problem: format!("holds item {:?}, which lives elsewhere", timeline.name),
            });
        }
        Ok(Some(timeline))
    }

    /// The timeline of an existing item.
    pub(crate) fn timeline(&self, name: &str) -> Result<Timeline> {
        check_name(name)?;
        self.load_timeline(name)?
            .map(|(t, _)| t)
            .ok_or_else(|| LibraryError::NoSuchItem {
                name: name.to_string(),
            })
    }

    /// Every item's timeline object key.
    pub(crate) fn item_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .store()
            .list("items/")?
            .into_iter()
            .map(|m| m.key)
            .collect())
    }

    /// Changes an item's timeline by compare-and-swap: `change` gets the current timeline
    /// (`None` for a new item) and returns the new one, or an error that stops the update. It
    /// may run several times when other hosts change the item at the same moment; each run
    /// sees their changes.
    pub(crate) fn update_timeline<T>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<Timeline>) -> Result<(Timeline, T)>,
    ) -> Result<T> {
        let key = self.item_key(name);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let current = self.load_timeline(name)?;
            let (tag, timeline) = match current {
                Some((timeline, tag)) => (Some(tag), Some(timeline)),
                None => (None, None),
            };
            let (updated, result) = change(timeline)?;
            let bytes = self.seal(&key, updated.to_bytes());
            if bytes.len() as u64 > MAX_TIMELINE_BYTES {
                return Err(LibraryError::Limit {
                    what: "timeline size",
                    limit: MAX_TIMELINE_BYTES,
                    reason: "prune old versions of the item",
                });
            }
            let outcome = match &tag {
                None => self.store().put_if_absent(&key, &bytes)?,
                Some(tag) => self.store().put_if_match(&key, &bytes, tag)?,
            };
            if outcome == PutOutcome::Written {
                self.store().flush()?;
                return Ok(result);
            }
            // Another host won this round: back off a little (randomised, growing) and retry.
            let ceiling = 2 + u64::from(attempt.min(50)) * 4;
            let jitter = u64::from(random_bytes::<1>()[0]) % ceiling;
            std::thread::sleep(Duration::from_millis(1 + jitter));
        }
        Err(LibraryError::Contention {
            key,
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Finds the version a spec names. Removed items resolve only by explicit number or digest.
    pub(crate) fn resolve(&self, spec: &VersionSpec) -> Result<(Timeline, VersionRecord)> {
        let timeline = self.timeline(&spec.name)?;
        let record = resolve_in(&timeline, spec)?.clone();
        Ok((timeline, record))
    }
}

/// The record `spec` names in `timeline`.
pub(crate) fn resolve_in<'t>(
    timeline: &'t Timeline,
    spec: &VersionSpec,
) -> Result<&'t VersionRecord> {
    let name = &timeline.name;
    let no_such = |wanted: String| LibraryError::NoSuchVersion {
        name: name.clone(),
        wanted,
    };
    let record = match &spec.selector {
        VersionSelector::Current => {
            let state = timeline.current();
            if state.removed {
                return Err(LibraryError::ItemRemoved { name: name.clone() });
            }
            let version = state.version.ok_or_else(|| no_such("current".into()))?;
            timeline
                .record(version)
                .ok_or_else(|| no_such(format!("@{version}")))?
        }
        VersionSelector::Number(n) => timeline
            .record(*n)
            .ok_or_else(|| no_such(format!("@{n}")))?,
        VersionSelector::DigestPrefix(prefix) => {
            let matches: Vec<&VersionRecord> = timeline
                .versions
                .iter()
                .filter(|r| r.pruned.is_none())
                .filter(|r| {
                    r.digest
                        .strip_prefix("sha256:")
                        .is_some_and(|hex| hex.starts_with(prefix.as_str()))
                })
                .collect();
            let Some(&last) = matches.last() else {
                return Err(no_such(format!("@sha256:{prefix}")));
            };
            // One image added several times is one content: take its newest version.
            if matches.iter().any(|r| r.digest != last.digest) {
                return Err(LibraryError::AmbiguousDigest {
                    name: name.clone(),
                    prefix: prefix.clone(),
                    count: matches.len(),
                });
            }
            last
        }
    };
    if record.pruned.is_some() {
        return Err(LibraryError::VersionPruned {
            name: name.clone(),
            version: record.version,
        });
    }
    Ok(record)
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// zstd-decompresses a chunk of at most `capacity` bytes with a per-thread context (a fresh
/// context per chunk costs an allocation and its set-up thousands of times per image).
fn decompress(frame: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(decompressor) => decompressor.decompress(frame, capacity),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// Turns a store "too large" refusal into the library's error for that object.
pub(crate) fn too_large(error: StoreError, what: &'static str, limit: u64) -> LibraryError {
    match error.too_large {
        Some(size) => LibraryError::TooLarge {
            key: error.key.clone(),
            what,
            size,
            limit,
        },
        None => LibraryError::Store(error),
    }
}
