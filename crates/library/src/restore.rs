//! `library get`: a version written to a file by a parallel pipeline.
//!
//! The pool's threads (one per core) fetch, open and decompress chunks and write each at its
//! offset (positional writes, in any order); zero runs are never written, so they stay holes
//! of the sparse output. The caller's thread hashes the image in order as chunks complete
//! (SHA-256 is sequential, so it runs beside the pool's work, not in it). The output is a
//! temporary file renamed into place only when the whole-image digest matches the version's
//! recorded one: the file appears whole and right, or not at all.
//!
//! The chunks' own digests are not computed on this path: the whole-image SHA-256 covers every
//! byte the chunks supply and is compared with the digest the manifest (and its signature)
//! records, a strictly stronger check than the chunk digests, for one SHA-256 pass instead of
//! two. A chunk that is missing, fails authentication (encrypted libraries), does not
//! decompress or has the wrong length still fails at once, named. When only the whole digest
//! disagrees, every chunk is then checked against its digest to name the damaged one.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy, Progress};

use crate::error::{LibraryError, Result};
use crate::library::Library;
use crate::manifest::{format_digest, ChunkEntry};
use crate::naming::VersionSpec;
use crate::reports::GetReport;

/// Chunks between the oldest not yet hashed and the newest being fetched: enough to keep both
/// cores and the store busy while the hash waits for a slow fetch, at most 32 MiB decoded.
pub const GET_WINDOW: usize = 32;
/// Zeros hashed per step for a zero run (a static-size buffer instead of the run's length).
const ZERO_BLOCK: usize = 1 << 20;

impl Library {
    /// Writes a version to `out` atomically: the file appears only when complete and its
    /// SHA-256 matched the recorded digest; runs of zeros are left as holes.
    pub fn get(
        &self,
        spec: &VersionSpec,
        out: &Path,
        overwrite: OverwritePolicy,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let (timeline, record) = self.resolve(spec)?;
        let manifest = self.load_version_manifest(&timeline, &record)?;
        let label = format!("{}@{}", timeline.name, record.version);
        let output_error = |source: io::Error| LibraryError::Output {
            path: out.to_path_buf(),
            source,
        };
        let file = AtomicFile::create(out, overwrite).map_err(output_error)?;
        file.file()
            .set_len(manifest.header.size)
            .map_err(output_error)?;
        progress.set_total(manifest.header.size);
        progress.phase("writing");
        let entries = &manifest.entries;
        let write = |entry: &ChunkEntry, data: &[u8]| -> Result<()> {
            file.file()
                .write_all_at(data, entry.offset)
                .map_err(output_error)
        };
        let mut hasher = Sha256::new();
        let zeros = vec![0u8; ZERO_BLOCK];
        let mut written = 0u64;
        let mut holes = 0u64;
        let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>>)>();
        self.inner.pool.in_place_scope(|scope| -> Result<()> {
            let mut next_spawn = 0usize;
            let mut next_hash = 0usize;
            let mut ready: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
            while next_hash < entries.len() {
                while next_spawn < entries.len() && next_spawn < next_hash + GET_WINDOW {
                    let entry = entries[next_spawn];
                    if !entry.zero {
                        let (tx, label, write) = (tx.clone(), &label, &write);
                        let index = next_spawn;
                        scope.spawn(move |_| {
                            let fetched = self
                                .open_chunk(&entry.digest, entry.length, entry.offset, label)
                                .and_then(|data| {
                                    write(&entry, &data)?;
                                    Ok(data)
                                });
                            let _ = tx.send((index, fetched));
                        });
                    }
                    next_spawn += 1;
                }
                // Hash what is next in image order, as far as it has arrived.
                while let Some(entry) = entries.get(next_hash) {
                    if entry.zero {
                        let mut left = entry.length as usize;
                        while left > 0 {
                            let n = left.min(zeros.len());
                            hasher.update(&zeros[..n]);
                            left -= n;
                        }
                        holes += entry.length as u64;
                    } else if let Some(data) = ready.remove(&next_hash) {
                        hasher.update(&data);
                        written += data.len() as u64;
                    } else {
                        break;
                    }
                    progress.advance(entry.length as u64);
                    next_hash += 1;
                }
                if next_hash == entries.len() {
                    break;
                }
                let (index, fetched) = rx.recv().map_err(|_| LibraryError::Io {
                    what: format!("reading {label}"),
                    source: io::Error::other("a fetch worker vanished"),
                })?;
                ready.insert(index, fetched?);
            }
            Ok(())
        })?;
        let actual = format_digest(&hasher.finalize().into());
        if actual != record.digest {
            return Err(self.name_damaged_chunk(entries, &label).unwrap_or(
                LibraryError::DigestMismatch {
                    what: label,
                    expected: record.digest.clone(),
                    actual,
                },
            ));
        }
        file.commit_with(Durability::PageCache)
            .map_err(output_error)?;
        Ok(GetReport {
            name: timeline.name.clone(),
            version: record.version,
            digest: record.digest.clone(),
            size: manifest.header.size,
            path: out.to_path_buf(),
            written_bytes: written,
            hole_bytes: holes,
        })
    }

    /// After a whole-image digest mismatch: the error of the first chunk (in image order)
    /// whose content does not hash to its digest, if any does not.
    fn name_damaged_chunk(&self, entries: &[ChunkEntry], label: &str) -> Option<LibraryError> {
        self.inner.pool.install(|| {
            entries
                .par_iter()
                .filter(|e| !e.zero)
                .find_map_first(|entry| self.load_chunk(entry, label).err())
        })
    }
}
