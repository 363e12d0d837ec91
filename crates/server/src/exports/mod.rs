//! Library versions as exports, and the resolver the front ends share: `NAME[@V]` (a
//! version's bytes), `NAME[@V]/disk` (a disk image's virtual content) and `clone/CLONE`
//! (handed to the clone store).
//!
//! Opened exports are kept (bounded) so that per-request front ends (HTTP) do not re-read
//! the manifest each time; names that follow the current version are re-resolved after
//! `CURRENT_TTL`.

mod disk;
mod version;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmedia_io::ReadAt;
use vmedia_library::{Library, LibraryError, VersionSelector, VersionSpec};

use crate::cache::{ExportCache, ExportCacheStats, SharedCache};
use crate::export::{Export, ExportError, ExportListing, ExportResolver};
use crate::preload::Traces;

pub use disk::{DiskExport, ReadAhead};
pub use version::VersionExport;

/// How long `NAME` (the current version) keeps meaning the version it resolved to: a new
/// version becomes visible to clients within this time, and a burst of requests costs one
/// timeline read.
pub const CURRENT_TTL: Duration = Duration::from_secs(1);
/// Opened versions kept: manifests of the versions in use, each up to a few MiB.
pub const MAX_OPEN_VERSIONS: usize = 256;
/// The prefix of clone export names.
pub use crate::clones::CLONE_EXPORT_PREFIX as CLONE_PREFIX;
/// The suffix naming a disk image's virtual content.
pub const DISK_SUFFIX: &str = "/disk";

/// One opened library version and what HTTP needs to describe it.
#[derive(Clone)]
pub struct OpenedVersion {
    /// The version's bytes (decorated for boot traces when those are on).
    pub export: Arc<dyn Export>,
    pub name: String,
    pub version: u64,
    /// `sha256:hex` of the version's bytes.
    pub digest: String,
    pub created: Option<jiff::Timestamp>,
    /// `created` as HTTP's Last-Modified, formatted once.
    pub last_modified: Option<String>,
    opened: Instant,
}

/// Library versions (and, through `clones`, clone exports) by name.
pub struct LibraryExports {
    library: Library,
    cache: Arc<SharedCache>,
    traces: Option<Arc<Traces>>,
    clones: Mutex<Option<Arc<dyn ExportResolver>>>,
    /// `NAME@N` -> opened version.
    versions: Mutex<HashMap<String, OpenedVersion>>,
    /// `NAME@N` -> the version opened as a disk image (parsing its tables once).
    disks: Mutex<HashMap<String, Arc<DiskExport>>>,
    /// `NAME` or `NAME@sha256:PREFIX` -> `NAME@N` and when it was resolved.
    aliases: Mutex<HashMap<String, (String, Instant)>>,
    /// Per-export cache counters, by export name (kept across reopenings).
    cache_stats: Mutex<HashMap<String, Arc<ExportCacheStats>>>,
    /// Decodes disk blocks ahead of in-order readers, for every disk export.
    read_ahead: Arc<ReadAhead>,
}

impl LibraryExports {
    pub fn new(
        library: Library,
        cache: Arc<SharedCache>,
        traces: Option<Arc<Traces>>,
    ) -> LibraryExports {
        LibraryExports {
            library,
            cache,
            traces,
            clones: Mutex::new(None),
            versions: Mutex::new(HashMap::new()),
            disks: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            cache_stats: Mutex::new(HashMap::new()),
            read_ahead: Arc::new(ReadAhead::default()),
        }
    }

    /// Hands `clone/...` names to the clone store's resolver.
    pub fn set_clones(&self, clones: Arc<dyn ExportResolver>) {
        *lock(&self.clones) = Some(clones);
    }

    pub fn library(&self) -> &Library {
        &self.library
    }

    pub fn cache(&self) -> &Arc<SharedCache> {
        &self.cache
    }

    /// Cache hits and misses per export name.
    pub fn cache_stats(&self) -> Vec<(String, Arc<ExportCacheStats>)> {
        let mut all: Vec<_> = lock(&self.cache_stats)
            .iter()
            .map(|(name, stats)| (name.clone(), Arc::clone(stats)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Opens `NAME`, `NAME@N` or `NAME@sha256:PREFIX` (a version's bytes).
    pub fn open_version(&self, spec_text: &str) -> Result<OpenedVersion, ExportError> {
        let spec = VersionSpec::parse(spec_text).map_err(|e| not_found(spec_text, &e))?;
        let key = match &spec.selector {
            VersionSelector::Number(n) => format!("{}@{n}", spec.name),
            _ => self.alias(spec_text, &spec)?,
        };
        if let Some(opened) = lock(&self.versions).get(&key) {
            return Ok(opened.clone());
        }
        let pinned = VersionSpec::parse(&key).map_err(|e| not_found(spec_text, &e))?;
        let stats = self.export_stats(&key);
        let cache = Arc::new(ExportCache {
            shared: Arc::clone(&self.cache),
            stats,
        });
        let reader = self
            .library
            .open_version_cached(&pinned, cache)
            .map_err(|e| library_error(spec_text, e))?;
        let digest = reader.digest().to_string();
        let mut export: Arc<dyn Export> = Arc::new(VersionExport::new(key.clone(), reader.clone()));
        if let Some(traces) = &self.traces {
            export = traces.decorate(export, &digest);
        }
        let opened = OpenedVersion {
            export,
            name: reader.name().to_string(),
            version: reader.version(),
            digest,
            created: reader.created(),
            last_modified: reader.created().and_then(|t| {
                jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(&t)
                    .ok()
            }),
            opened: Instant::now(),
        };
        let mut versions = lock(&self.versions);
        if versions.len() >= MAX_OPEN_VERSIONS {
            // Drop the longest-open one; it is reopened (one manifest read) when asked again.
            if let Some(oldest) = versions
                .iter()
                .min_by_key(|(_, v)| v.opened)
                .map(|(k, _)| k.clone())
            {
                versions.remove(&oldest);
            }
        }
        versions.insert(key, opened.clone());
        Ok(opened)
    }

    /// `open_version` if it needs no I/O (the version is open and, for a name that follows
    /// the current version, resolved less than `CURRENT_TTL` ago): the event loop's path.
    pub fn open_version_now(&self, spec_text: &str) -> Option<OpenedVersion> {
        let key = match spec_text.split_once('@') {
            // `NAME@N`: the key itself.
            Some((_, number)) if number.bytes().all(|b| b.is_ascii_digit()) => {
                spec_text.to_string()
            }
            _ => {
                let aliases = lock(&self.aliases);
                let (key, at) = aliases.get(spec_text)?;
                // Only a digest prefix pins a version for good; a name follows the current one.
                if !spec_text.contains('@') && at.elapsed() >= CURRENT_TTL {
                    return None;
                }
                key.clone()
            }
        };
        lock(&self.versions).get(&key).cloned()
    }

    /// `open_disk` if it needs no I/O (see `open_version_now`).
    pub fn open_disk_now(&self, spec_text: &str) -> Option<(OpenedVersion, Arc<DiskExport>)> {
        let version = self.open_version_now(spec_text)?;
        let key = format!("{}@{}", version.name, version.version);
        let disk = lock(&self.disks).get(&key).map(Arc::clone)?;
        Some((version, disk))
    }

    /// Opens `NAME[@V]/disk`'s version as a disk image (read-only, no backing references).
    pub fn open_disk(
        &self,
        spec_text: &str,
    ) -> Result<(OpenedVersion, Arc<DiskExport>), ExportError> {
        let version = self.open_version(spec_text)?;
        let key = format!("{}@{}", version.name, version.version);
        if let Some(disk) = lock(&self.disks).get(&key) {
            return Ok((version, Arc::clone(disk)));
        }
        let name = format!("{key}{DISK_SUFFIX}");
        let disk = Arc::new(DiskExport::open_cached(
            name,
            Arc::clone(&version.export),
            Arc::clone(&self.cache),
            version.digest.clone(),
            Arc::clone(&self.read_ahead),
        )?);
        let mut disks = lock(&self.disks);
        if disks.len() >= MAX_OPEN_VERSIONS {
            disks.clear();
        }
        disks.insert(key, Arc::clone(&disk));
        Ok((version, disk))
    }

    /// Tells the boot-trace recorder that a client attached `opened` (NBD: a connection
    /// chose the export; HTTP: a request for it).
    pub fn attached(&self, opened: &OpenedVersion) {
        if let Some(traces) = &self.traces {
            traces.attached(&opened.digest, &opened.export);
        }
    }

    fn alias(&self, text: &str, spec: &VersionSpec) -> Result<String, ExportError> {
        let fresh = |at: &Instant| match spec.selector {
            VersionSelector::Current => at.elapsed() < CURRENT_TTL,
            _ => true,
        };
        if let Some((key, at)) = lock(&self.aliases).get(text) {
            if fresh(at) {
                return Ok(key.clone());
            }
        }
        let (name, version, _) = self
            .library
            .resolve_version(spec)
            .map_err(|e| library_error(text, e))?;
        let key = format!("{name}@{version}");
        let mut aliases = lock(&self.aliases);
        if aliases.len() >= MAX_OPEN_VERSIONS * 4 {
            aliases.clear();
        }
        aliases.insert(text.to_string(), (key.clone(), Instant::now()));
        Ok(key)
    }

    fn export_stats(&self, name: &str) -> Arc<ExportCacheStats> {
        Arc::clone(lock(&self.cache_stats).entry(name.to_string()).or_default())
    }
}

impl ExportResolver for LibraryExports {
    fn list(&self) -> io::Result<Vec<ExportListing>> {
        let items = self.library.list(false).map_err(io::Error::other)?;
        let mut listing = Vec::new();
        for item in items {
            let (Some(version), Some(kind)) = (item.current, item.kind.as_deref()) else {
                continue;
            };
            listing.push(ExportListing {
                name: item.name.clone(),
                description: format!("{}@{version} ({kind})", item.name),
            });
            if kind != "iso" && kind != "raw" {
                listing.push(ExportListing {
                    name: format!("{}{DISK_SUFFIX}", item.name),
                    description: format!("{}@{version} as a {kind} disk", item.name),
                });
            }
        }
        if let Some(clones) = lock(&self.clones).clone() {
            listing.extend(clones.list()?);
        }
        Ok(listing)
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        if name.starts_with(CLONE_PREFIX) {
            let clones = lock(&self.clones).clone();
            return match clones {
                Some(clones) => clones.open(name),
                None => Err(ExportError::NotFound(name.to_string())),
            };
        }
        if let Some(spec) = name.strip_suffix(DISK_SUFFIX) {
            let (version, disk) = self.open_disk(spec)?;
            self.attached(&version);
            return Ok(disk);
        }
        let version = self.open_version(name)?;
        self.attached(&version);
        Ok(version.export)
    }
}

/// An export as a `ReadAt` (the ISO and disk readers read through it).
pub struct ExportReader(pub Arc<dyn Export>);

impl ReadAt for ExportReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.0.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        self.0.read_at(&mut buf[..n], offset)?;
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.size())
    }
}

/// A name that does not parse names no export.
fn not_found(spec: &str, _error: &LibraryError) -> ExportError {
    ExportError::NotFound(spec.to_string())
}

/// Missing items and versions are `NotFound`; everything else (a store outage, damage) is
/// `Unavailable` with the reason.
fn library_error(spec: &str, error: LibraryError) -> ExportError {
    let text = error.to_string();
    if matches!(
        error,
        LibraryError::NoSuchItem { .. }
            | LibraryError::NoSuchVersion { .. }
            | LibraryError::ItemRemoved { .. }
            | LibraryError::VersionPruned { .. }
    ) {
        ExportError::NotFound(spec.to_string())
    } else {
        ExportError::Unavailable {
            name: spec.to_string(),
            reason: text,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clones stand on library versions read through the shared cache: `NAME[@V]` (the bytes) or
/// `NAME[@V]/disk` (a disk image's virtual content), pinned to one version when made.
impl crate::clones::BaseOpener for LibraryExports {
    fn resolve_base(&self, spec: &str) -> Result<crate::clones::BaseVersion, ExportError> {
        match spec.strip_suffix(DISK_SUFFIX) {
            Some(version) => {
                let (opened, disk) = self.open_disk(version)?;
                Ok(crate::clones::BaseVersion {
                    spec: format!("{}@{}{DISK_SUFFIX}", opened.name, opened.version),
                    digest: opened.digest,
                    size: disk.size(),
                })
            }
            None => {
                let opened = self.open_version(spec)?;
                Ok(crate::clones::BaseVersion {
                    spec: format!("{}@{}", opened.name, opened.version),
                    digest: opened.digest,
                    size: opened.export.size(),
                })
            }
        }
    }

    fn open_base(&self, spec: &str) -> Result<Arc<dyn Export>, ExportError> {
        match spec.strip_suffix(DISK_SUFFIX) {
            Some(version) => Ok(self.open_disk(version)?.1),
            None => Ok(self.open_version(spec)?.export),
        }
    }

    fn commit(
        &self,
        name: &str,
        source: &dyn ReadAt,
        size: u64,
    ) -> io::Result<vmedia_library::AddReport> {
        crate::clones::add_read_at(&self.library, name, source, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheOptions;
    use std::io::Cursor;
    use std::sync::atomic::Ordering;
    use vmedia_library::{AddOptions, AddSource, InitOptions, OpenConfig};

    /// A library holding `image` as `img`, served through a fresh shared cache.
    fn served(dir: &std::path::Path, image: &[u8]) -> LibraryExports {
        let library = Library::init(
            &OpenConfig::folder(dir.join("library"), "tester@host"),
            &InitOptions::default(),
        )
        .unwrap();
        library
            .add(
                "img",
                AddSource::Reader(Box::new(Cursor::new(image.to_vec()))),
                &AddOptions::default(),
                &vmedia_io::NoProgress,
            )
            .unwrap();
        let cache = SharedCache::new(&CacheOptions {
            memory_bytes: 64 << 20,
            disk: None,
        })
        .unwrap();
        LibraryExports::new(library, Arc::new(cache), None)
    }

    fn joined(parts: Vec<bytes::Bytes>) -> Vec<u8> {
        parts.iter().flat_map(|part| part.iter().copied()).collect()
    }

    #[test]
    fn cached_reads_give_the_same_bytes_as_reads_and_never_load() {
        let dir = tempfile::tempdir().unwrap();
        // Data, a long zero run (a hole in the manifest), data again.
        let mut image: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
        image.extend(std::iter::repeat_n(0u8, 4 << 20));
        image.extend((0..1u32 << 20).map(|i| (i * 13 + 5) as u8));
        let exports = served(dir.path(), &image);
        let export = exports.open("img").unwrap();
        let stats = Arc::clone(exports.cache().stats());
        let (offset, length) = (100_000u64, 7usize << 20);
        // Cold: nothing is cached, and asking does not load anything.
        assert!(export.read_cached(offset, length).is_none());
        assert_eq!(stats.backend_reads.load(Ordering::Relaxed), 0);
        assert_eq!(stats.hits.load(Ordering::Relaxed), 0);
        let read = joined(export.read_bytes(offset, length).unwrap());
        assert_eq!(read, &image[offset as usize..offset as usize + length]);
        let loaded = stats.backend_reads.load(Ordering::Relaxed);
        assert!(loaded > 0);
        // Warm: the same bytes from memory, counted as hits, with no backend read.
        let hits_before = stats.hits.load(Ordering::Relaxed);
        let cached = joined(export.read_cached(offset, length).unwrap());
        assert_eq!(cached, read);
        assert_eq!(stats.backend_reads.load(Ordering::Relaxed), loaded);
        assert!(stats.hits.load(Ordering::Relaxed) > hits_before);
        // A range past the end is refused, never answered short.
        assert!(export.read_cached(image.len() as u64 - 10, 20).is_none());
        assert!(export.read_bytes(image.len() as u64 - 10, 20).is_err());
        // An open version is found without I/O; `NAME@N` too.
        assert!(exports.open_version_now("img").is_some());
        assert!(exports.open_version_now("img@1").is_some());
        assert!(exports.open_version_now("other").is_none());
    }
}
