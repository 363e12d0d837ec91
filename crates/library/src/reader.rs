//! Reading versions: a `ReadAt` over any version (random access through the chunk index),
//! and `cat`, which streams a whole version with chunks fetched in parallel (`get` is in
//! `restore`).
//!
//! Every chunk is checked against its SHA-256 on every fetch: a damaged or missing chunk makes
//! the read fail; no read ever returns bytes the manifest does not vouch for.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::sync::{mpsc, Arc, Mutex};

use sha2::{Digest, Sha256};
use vmedia_io::ReadAt;

use crate::error::{LibraryError, Result};
use crate::library::Library;
use crate::manifest::{format_digest, ChunkEntry};
use crate::naming::VersionSpec;

/// Decoded chunks a reader keeps: enough for the ISO and disk readers' locality (directory
/// blocks, tables) at up to 16 MiB.
pub const CACHE_CHUNKS: usize = 16;
/// Chunks fetched ahead in `get` and `cat`: keeps both cores and the store busy.
pub const FETCH_WINDOW: usize = 32;

/// A cache of decoded chunks shared by many readers (a daemon's, across every version and
/// client). Chunks are content-addressed, so one entry serves every version that holds it.
pub trait ChunkCache: Send + Sync {
    /// The plain bytes of the chunk `digest` (`length` bytes): from the cache, or by calling
    /// `load` (which fetches and checks it) and keeping the result.
    fn get_or_load(
        &self,
        digest: &[u8; 32],
        length: u32,
        load: &mut dyn FnMut() -> Result<Arc<Vec<u8>>>,
    ) -> Result<Arc<Vec<u8>>>;

    /// The chunk if the cache holds it now: never loads, never waits for a load in progress
    /// (callers on an event loop use it to serve hits without a blocking thread). It counts
    /// for admission as `get_or_load` would, but not as a hit in statistics: a caller that
    /// gives up half-way goes on to `get_or_load`, and one that served a read from it reports
    /// with `served_from_cache`.
    fn get_if_cached(&self, _digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        None
    }

    /// `hits` chunks were served through `get_if_cached`.
    fn served_from_cache(&self, _hits: u64) {}
}

/// Part of a read answered by reference to decoded chunks: `length` bytes of `data` from
/// `start`, or (`data` is `None`) `length` zero bytes of a run the image does not store.
#[derive(Debug, Clone)]
pub struct ReadPiece {
    pub data: Option<Arc<Vec<u8>>>,
    pub start: usize,
    pub length: usize,
}

/// Random access to one version. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct VersionReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    library: Library,
    name: String,
    version: u64,
    /// `NAME@N`, for errors.
    label: String,
    entries: Arc<Vec<ChunkEntry>>,
    size: u64,
    digest: String,
    /// When the version was added (`None` for a staged reader).
    created: Option<jiff::Timestamp>,
    cache: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    /// The shared cache; when set, the reader keeps no chunks of its own (they would outlive
    /// the shared cache's evictions and escape its size bound).
    shared: Option<Arc<dyn ChunkCache>>,
}

impl std::fmt::Debug for VersionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VersionReader({})", self.inner.label)
    }
}

impl VersionReader {
    fn new(
        library: &Library,
        name: &str,
        version: u64,
        label: String,
        entries: Arc<Vec<ChunkEntry>>,
        size: u64,
        digest: &str,
    ) -> VersionReader {
        VersionReader {
            inner: Arc::new(ReaderInner {
                library: library.clone(),
                name: name.to_string(),
                version,
                label,
                entries,
                size,
                digest: digest.to_string(),
                created: None,
                cache: Mutex::new(VecDeque::with_capacity(CACHE_CHUNKS)),
                shared: None,
            }),
        }
    }

    /// A reader over chunks just stored by an add, before its manifest exists.
    pub(crate) fn staged(
        library: &Library,
        name: &str,
        entries: &[ChunkEntry],
        size: u64,
        digest: &str,
    ) -> VersionReader {
        VersionReader::new(
            library,
            name,
            0,
            format!("{name} (being added)"),
            Arc::new(entries.to_vec()),
            size,
            digest,
        )
    }

    /// The image size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// `sha256:hex` of the whole image.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// When the version was added to the library (`None` while an add is staging it).
    pub fn created(&self) -> Option<jiff::Timestamp> {
        self.inner.created
    }

    /// The version's chunk index, in image order (zero runs flagged `zero`).
    pub fn entries(&self) -> &[ChunkEntry] {
        &self.inner.entries
    }

    fn chunk(&self, index: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(shared) = &self.inner.shared {
            let entry = &self.inner.entries[index];
            let inner = &self.inner;
            return shared.get_or_load(&entry.digest, entry.length, &mut || {
                Ok(Arc::new(inner.library.load_chunk(entry, &inner.label)?))
            });
        }
        {
            let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, data)) = cache.iter().find(|(i, _)| *i == index) {
                return Ok(Arc::clone(data));
            }
        }
        let entry = &self.inner.entries[index];
        let data = Arc::new(self.inner.library.load_chunk(entry, &self.inner.label)?);
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.iter().any(|(i, _)| *i == index) {
            if cache.len() == CACHE_CHUNKS {
                cache.pop_front();
            }
            cache.push_back((index, Arc::clone(&data)));
        }
        Ok(data)
    }
}

impl VersionReader {
    /// `[offset, offset + length)` as pieces of the decoded chunks, without copying them, if
    /// every chunk it needs is in the shared cache now; `None` if one is not (or the reader
    /// has no shared cache). Never blocks on the store: safe on an event loop.
    pub fn cached_pieces(&self, offset: u64, length: usize) -> Option<Vec<ReadPiece>> {
        let shared = self.inner.shared.as_ref()?;
        let pieces = self
            .pieces(offset, length, &mut |index| {
                let entry = &self.inner.entries[index];
                Ok(shared.get_if_cached(&entry.digest))
            })
            .ok()
            .flatten()?;
        let hits = pieces.iter().filter(|piece| piece.data.is_some()).count();
        shared.served_from_cache(hits as u64);
        Some(pieces)
    }

    /// `[offset, offset + length)` as pieces of the decoded chunks, loading (and checking)
    /// those not cached: the read path without a copy into a caller's buffer. Blocks.
    pub fn read_pieces(&self, offset: u64, length: usize) -> io::Result<Vec<ReadPiece>> {
        let got = self.pieces(offset, length, &mut |index| {
            self.chunk(index)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        })?;
        got.ok_or_else(|| io::Error::other("a chunk loader gave nothing"))
    }

    /// Splits the range at chunk boundaries; `chunk` gives a stored chunk's bytes, or `None`
    /// to give up (the result is then `Ok(None)`).
    fn pieces(
        &self,
        offset: u64,
        length: usize,
        chunk: &mut dyn FnMut(usize) -> io::Result<Option<Arc<Vec<u8>>>>,
    ) -> io::Result<Option<Vec<ReadPiece>>> {
        let size = self.inner.size;
        let end = offset
            .checked_add(length as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: {length} bytes at {offset:#x} pass the end ({size:#x})",
                        self.inner.label
                    ),
                )
            })?;
        let entries = &self.inner.entries;
        let mut out = Vec::new();
        let mut position = offset;
        while position < end {
            let index = entries.partition_point(|e| e.end() <= position);
            let Some(entry) = entries.get(index) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no chunk covers offset {position:#x}", self.inner.label),
                ));
            };
            let within = (position - entry.offset) as usize;
            let n = ((end - position) as usize).min(entry.length as usize - within);
            let data = if entry.zero {
                None
            } else {
                let Some(data) = chunk(index)? else {
                    return Ok(None);
                };
                if data.len() < within + n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: chunk at {:#x} holds {} bytes, not {}",
                            self.inner.label,
                            entry.offset,
                            data.len(),
                            entry.length
                        ),
                    ));
                }
                Some(data)
            };
            out.push(ReadPiece {
                data,
                start: within,
                length: n,
            });
            position += n as u64;
        }
        Ok(Some(out))
    }
}

impl ReadAt for VersionReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.inner.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (size - offset).min(buf.len() as u64) as usize;
        let entries = &self.inner.entries;
        let mut done = 0usize;
        while done < want {
            let position = offset + done as u64;
            let index = entries.partition_point(|e| e.end() <= position);
            let Some(entry) = entries.get(index) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no chunk covers offset {position:#x}", self.inner.label),
                ));
            };
            let within = (position - entry.offset) as usize;
            let n = (want - done).min(entry.length as usize - within);
            let target = &mut buf[done..done + n];
            if entry.zero {
                target.fill(0);
            } else {
                let data = self
                    .chunk(index)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                target.copy_from_slice(&data[within..within + n]);
            }
            done += n;
        }
        Ok(want)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.inner.size)
    }
}

/// One chunk's content handed to a streaming sink, in image order.
pub(crate) enum Piece {
    Zero(u32),
    Data(Arc<Vec<u8>>),
}

impl Library {
    /// A `ReadAt` over a version (`vmedia iso ... library:NAME@V` reads through this).
    pub fn open_version(&self, spec: &VersionSpec) -> Result<VersionReader> {
        self.open_version_with(spec, None)
    }

    /// `open_version`, fetching chunks through `cache` (shared by every reader given it).
    pub fn open_version_cached(
        &self,
        spec: &VersionSpec,
        cache: Arc<dyn ChunkCache>,
    ) -> Result<VersionReader> {
        self.open_version_with(spec, Some(cache))
    }

    fn open_version_with(
        &self,
        spec: &VersionSpec,
        cache: Option<Arc<dyn ChunkCache>>,
    ) -> Result<VersionReader> {
        let (timeline, record) = self.resolve(spec)?;
        let manifest = self.load_version_manifest(&timeline, &record)?;
        Ok(VersionReader {
            inner: Arc::new(ReaderInner {
                library: self.clone(),
                name: timeline.name.clone(),
                version: record.version,
                label: format!("{}@{}", timeline.name, record.version),
                entries: Arc::new(manifest.entries),
                size: manifest.header.size,
                digest: record.digest.clone(),
                created: Some(record.created),
                cache: Mutex::new(VecDeque::with_capacity(CACHE_CHUNKS)),
                shared: cache,
            }),
        })
    }

    /// Which version `spec` names now, without reading its manifest: `(name, version,
    /// digest)`. Cheap enough to ask per request (one timeline read).
    pub fn resolve_version(&self, spec: &VersionSpec) -> Result<(String, u64, String)> {
        let (timeline, record) = self.resolve(spec)?;
        Ok((timeline.name.clone(), record.version, record.digest.clone()))
    }

    /// Fetches every chunk of `entries` in parallel and hands them to `sink` in order.
    pub(crate) fn fetch_in_order(
        &self,
        entries: &[ChunkEntry],
        label: &str,
        sink: impl FnMut(&ChunkEntry, Piece) -> Result<()>,
    ) -> Result<()> {
        self.fetch_in_order_with(entries, label, &|_, _| Ok(()), sink)
    }

    /// `fetch_in_order`, also running `each` on every fetched chunk on the pool thread that
    /// fetched it (in any order), e.g. a positional write.
    pub(crate) fn fetch_in_order_with(
        &self,
        entries: &[ChunkEntry],
        label: &str,
        each: &(dyn Fn(&ChunkEntry, &[u8]) -> Result<()> + Sync),
        mut sink: impl FnMut(&ChunkEntry, Piece) -> Result<()>,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>>)>();
        self.inner.pool.in_place_scope(|scope| {
            let mut next_spawn = 0usize;
            let mut next_emit = 0usize;
            let mut in_flight = 0usize;
            let mut ready: BTreeMap<usize, Piece> = BTreeMap::new();
            while next_emit < entries.len() {
                while next_spawn < entries.len() && in_flight < FETCH_WINDOW {
                    let entry = entries[next_spawn];
                    if entry.zero {
                        ready.insert(next_spawn, Piece::Zero(entry.length));
                    } else {
                        let tx = tx.clone();
                        let index = next_spawn;
                        scope.spawn(move |_| {
                            let fetched = unwound(label, || {
                                self.load_chunk(&entry, label).and_then(|data| {
                                    each(&entry, &data)?;
                                    Ok(data)
                                })
                            });
                            let _ = tx.send((index, fetched));
                        });
                        in_flight += 1;
                    }
                    next_spawn += 1;
                }
                while let Some(piece) = ready.remove(&next_emit) {
                    sink(&entries[next_emit], piece)?;
                    next_emit += 1;
                }
                if next_emit == entries.len() {
                    break;
                }
                let (index, result) = rx.recv().map_err(|_| LibraryError::Io {
                    what: format!("reading {label}"),
                    source: io::Error::other("a fetch worker vanished"),
                })?;
                in_flight -= 1;
                ready.insert(index, Piece::Data(Arc::new(result?)));
            }
            Ok(())
        })
    }

    /// Streams a version to `out`. Each chunk is checked before it is written; the whole-image
    /// digest is checked at the end (a mismatch is an error after the bytes went out, which
    /// only a damaged manifest could cause).
    pub fn cat(&self, spec: &VersionSpec, out: &mut dyn Write) -> Result<()> {
        let (timeline, record) = self.resolve(spec)?;
        let manifest = self.load_version_manifest(&timeline, &record)?;
        let label = format!("{}@{}", timeline.name, record.version);
        let mut hasher = Sha256::new();
        let zeros = vec![0u8; 1 << 20];
        let write_error = |source: io::Error| LibraryError::Output {
            path: "standard output".into(),
            source,
        };
        self.fetch_in_order(&manifest.entries, &label, |_, piece| {
            match piece {
                Piece::Zero(length) => {
                    let mut left = length as usize;
                    while left > 0 {
                        let n = left.min(zeros.len());
                        hasher.update(&zeros[..n]);
                        out.write_all(&zeros[..n]).map_err(write_error)?;
                        left -= n;
                    }
                }
                Piece::Data(data) => {
                    hasher.update(data.as_slice());
                    out.write_all(&data).map_err(write_error)?;
                }
            }
            Ok(())
        })?;
        out.flush().map_err(write_error)?;
        let actual = format_digest(&hasher.finalize().into());
        if actual != record.digest {
            return Err(LibraryError::DigestMismatch {
                what: label,
                expected: record.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// The plain manifest bytes of a version (signed, when it was), for offline checks.
    pub fn export_manifest(&self, spec: &VersionSpec) -> Result<Vec<u8>> {
        let (timeline, record) = self.resolve(spec)?;
        self.load_version_manifest(&timeline, &record)?;
        self.load_manifest_bytes(&record.manifest)
    }
}

/// Runs one fetch job of a pipeline whose collector waits on a channel, turning a panic into
/// an error. The collector holds a sender of its own (it clones one per job), so a job that
/// unwound without sending would leave it waiting forever, the process alive and idle.
pub(crate) fn unwound<T>(label: &str, job: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(LibraryError::Io {
            what: format!("reading {label}"),
            source: io::Error::other(format!("a fetch worker failed: {why}")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_job_that_panics_is_an_error_for_the_collector_not_a_silent_hang() {
        let outcome: Result<()> = unwound("item@1", || panic!("store client broke"));
        match outcome {
            Err(LibraryError::Io { what, source }) => {
                assert_eq!(what, "reading item@1");
                assert!(
                    source.to_string().contains("store client broke"),
                    "{source}"
                );
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
