//! `library get`: a version written to a file by a parallel pipeline.
//!
//! The caller's thread hashes the image in order (SHA-256 is one sequential chain, the floor
//! of this command); workers (one fewer than the pool's threads, at least one) fetch, open and
//! decompress chunks. Whenever the next chunk in image order has not arrived, the hashing
//! thread takes the next unclaimed chunk itself instead of waiting, so both cores stay busy.
//! Claims never run more than `GET_WINDOW` chunks ahead of the hash, which bounds memory.
//! Hashed chunks go, in image order, to a writing thread outside the pool
//! ([`vmedia_io::OrderedWriter`]: direct I/O from an aligned staging buffer where the file
//! system supports it, so the gigabytes written neither pass through the page cache nor queue
//! on the file's lock; positional writes through the cache elsewhere); it mostly waits for the
//! device. Zero runs are never written, so they stay holes of the sparse output. The output is
//! a temporary file renamed into place only when the whole-image digest matches the version's
//! recorded one: the file appears whole and right, or not at all.
//!
//! Why the whole-image digest and not the chunk digests (which could be checked in parallel,
//! two SHA-256 streams per core, zero runs needing none). The manifest binds its entries (the
//! chunk digests) and its header digest (the whole image's, the number users compare with a
//! published SHA256SUMS) together: its name is a hash of its bytes, the timeline names it, a
//! signature covers both, and an encrypted library authenticates it. None of these proves that
//! the entries *describe an image with that digest*: that is only true if whoever wrote the
//! manifest computed both from the same bytes. With checked chunk digests alone, a `get`
//! proves "these are the bytes the entries name", not "these bytes have the digest shown to
//! the user". A writer of an unsigned, unencrypted store (or the holder of a trusted signing
//! key, or a bug in an add) can pair a vendor's published digest with the chunks of another
//! image; chunk checks pass and the user's comparison with SHA256SUMS is fooled. The
//! whole-image SHA-256 computed here over the bytes written catches exactly that, so it stays,
//! and the chunks' own digests are not computed on this path: a strictly stronger check for
//! one SHA-256 pass instead of two. A chunk that is missing, fails authentication (encrypted
//! libraries), does not decompress or has the wrong length still fails at once, named. When
//! only the whole digest disagrees, every chunk is then checked against its digest to name the
//! damaged one.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Condvar, Mutex};

use rayon::prelude::*;
use vmedia_io::sha256x2::Sha256;
use vmedia_io::{AtomicFile, Durability, OrderedWriter, OverwritePolicy, Progress};

use crate::error::{LibraryError, Result};
use crate::library::Library;
use crate::manifest::{format_digest, ChunkEntry};
use crate::naming::VersionSpec;
use crate::reports::GetReport;

/// Chunks claimed ahead of the oldest not yet hashed: enough to keep both cores and the store
/// busy while the hash waits for a slow fetch, at most 32 MiB decoded.
pub const GET_WINDOW: usize = 32;
/// Hashed chunks queued for the writing thread (16 MiB at the average chunk size, 64 MiB at
/// most): enough that the hash goes on through a slow write to the device.
pub const WRITE_QUEUE: usize = 64;
/// Zeros hashed per step for a zero run (a static-size buffer instead of the run's length).
const ZERO_BLOCK: usize = 1 << 20;

/// What the hashing thread and the workers of one `get` share.
struct Plan {
    /// Next entry a worker (or the hashing thread) may claim.
    next_claim: usize,
    /// Entries hashed so far; claims stay below `next_hash + GET_WINDOW`.
    next_hash: usize,
    /// Claimed chunks done, by entry index, until hashed.
    ready: BTreeMap<usize, Result<Vec<u8>>>,
    /// The get failed or finished: workers stop claiming.
    stop: bool,
}

impl Plan {
    /// Claims the next stored chunk within the window, if any (zero runs are skipped: nothing
    /// to fetch or write).
    fn claim(&mut self, entries: &[ChunkEntry]) -> Option<usize> {
        while entries.get(self.next_claim).is_some_and(|e| e.zero) {
            self.next_claim += 1;
        }
        if self.stop
            || self.next_claim >= entries.len()
            || self.next_claim >= self.next_hash.saturating_add(GET_WINDOW)
        {
            return None;
        }
        self.next_claim += 1;
        Some(self.next_claim - 1)
    }

    /// Nothing is left for workers: every stored chunk claimed, or the get ended.
    fn exhausted(&mut self, entries: &[ChunkEntry]) -> bool {
        while entries.get(self.next_claim).is_some_and(|e| e.zero) {
            self.next_claim += 1;
        }
        self.stop || self.next_claim >= entries.len()
    }
}

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
        // Fetch, open and decompress one stored chunk.
        let fetch = |index: usize| -> Result<Vec<u8>> {
            let entry = &entries[index];
            self.open_chunk(&entry.digest, entry.length, entry.offset, &label)
        };
        let mut writer = OrderedWriter::new(file.file(), file.temp_path(), manifest.header.size)
            .map_err(output_error)?;
        // Hashed chunks on their way to the writing thread.
        let (to_writer, hashed_chunks) = sync_channel::<(u64, Vec<u8>)>(WRITE_QUEUE);
        let plan = Mutex::new(Plan {
            next_claim: 0,
            next_hash: 0,
            ready: BTreeMap::new(),
            stop: false,
        });
        let changed = Condvar::new();
        let lock = || plan.lock().unwrap_or_else(|p| p.into_inner());
        let workers = self
            .inner
            .pool
            .current_num_threads()
            .saturating_sub(1)
            .max(1);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut holes = 0u64;
        let (hashed, wrote) = std::thread::scope(|threads| {
            // The writing thread is mostly waiting for the device; it takes no pool thread.
            let writing = threads.spawn(move || -> io::Result<()> {
                for (offset, data) in hashed_chunks {
                    writer.write(offset, &data)?;
                }
                writer.finish()
            });
            let hashed = self.inner.pool.in_place_scope(|scope| -> Result<()> {
                for _ in 0..workers {
                    let (fetch, changed, lock, label) = (&fetch, &changed, &lock, &label);
                    scope.spawn(move |_| loop {
                        let mut state = lock();
                        let index = loop {
                            if let Some(index) = state.claim(entries) {
                                break index;
                            }
                            if state.exhausted(entries) {
                                return;
                            }
                            // The window is full: wait for the hash to move on.
                            state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
                        };
                        drop(state);
                        // A panic would leave the hashing thread waiting for this chunk forever.
                        let result = crate::reader::unwound(label, || fetch(index));
                        lock().ready.insert(index, result);
                        changed.notify_all();
                    });
                }
                let zeros = vec![0u8; ZERO_BLOCK];
                let mut hash_all = || -> Result<()> {
                    let mut next_hash = 0usize;
                    while let Some(entry) = entries.get(next_hash) {
                        if entry.zero {
                            let mut left = entry.length as usize;
                            while left > 0 {
                                let n = left.min(zeros.len());
                                hasher.update(&zeros[..n]);
                                left -= n;
                            }
                            holes += entry.length as u64;
                        } else {
                            let mut state = lock();
                            let data = loop {
                                if let Some(data) = state.ready.remove(&next_hash) {
                                    break data;
                                }
                                // Not there yet: do a chunk rather than wait, when one is left.
                                if let Some(index) = state.claim(entries) {
                                    drop(state);
                                    let result = crate::reader::unwound(&label, || fetch(index));
                                    state = lock();
                                    state.ready.insert(index, result);
                                    continue;
                                }
                                // Claimed by a worker (next_hash is always within the window),
                                // which inserts it and notifies.
                                state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
                            };
                            drop(state);
                            let data = data?;
                            hasher.update(&data);
                            written += data.len() as u64;
                            if to_writer.send((entry.offset, data)).is_err() {
                                // The writer stopped on an error, reported after the join.
                                return Err(output_error(io::Error::other("writing stopped")));
                            }
                        }
                        progress.advance(entry.length as u64);
                        next_hash += 1;
                        lock().next_hash = next_hash;
                        changed.notify_all();
                    }
                    Ok(())
                };
                let hashed = hash_all();
                // Workers waiting on a full window (after an error) must not wait forever.
                lock().stop = true;
                changed.notify_all();
                hashed
            });
            drop(to_writer);
            let wrote = writing
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writing thread panicked")));
            (hashed, wrote)
        });
        // A writer's error explains a hash that stopped because the writer had gone.
        wrote.map_err(output_error)?;
        hashed?;
        let actual = format_digest(&hasher.finalize());
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
