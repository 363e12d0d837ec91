//! `add`: stream an image into the library as a new version.
//!
//! Pipeline (both cores busy, the image never whole in memory):
//! 1. the caller's thread reads the source in large batches and cuts them with FastCDC
//!    (boundaries are sequential; `chunker` cuts in place, no copy or allocation per chunk);
//! 2. a second thread hashes the whole image in order (SHA-256, the digest users compare);
//! 3. the CPU pool fingerprints the chunks (BLAKE3, a few consecutive ones per task) and
//!    recognises zero runs; a fingerprint the item's previous version recorded gives the
//!    chunk's SHA-256 digest from that version's index, and the chunk goes no further (no
//!    SHA-256, no compression, no store request); the other chunks' digests are computed two
//!    at a time in lockstep (`vmedia_io::sha256x2::digest_many`) and new chunks compressed
//!    (zstd). So a new version of an image pays SHA-256 only where it changed, and the one
//!    SHA-256 pass every add needs (the whole image, with its embedded check) has a core.
//! 4. I/O threads check whether each new chunk is already stored and write the missing ones.
//!
//! An ISO's embedded checksums (vmedia's SHA-256, isomd5sum's MD5) are hashed by the whole-image
//! thread from the very buffers the chunker reads, so every byte is read once: the embedded
//! SHA-256 covers the same bytes as the image digest but the 512-byte application-use area
//! (hashed as spaces), so the two advance in lockstep over each buffer, two SHA-256 streams on
//! one core for little more than the cost of one. A matching SHA-256 stands for the MD5 over
//! the same bytes (`inspect::MD5_POLICY`). When the item already has a verified
//! version of the same size, the check waits for the image digest instead: equal digests mean
//! the same bytes, whose recorded outcome is reused; a different digest is checked then. A
//! mismatch refuses the add before any manifest names the chunks written meanwhile.
//!
//! The chunker's circulating batch buffers (`chunker::BATCH_BUFFERS`) and the I/O queue
//! (`MAX_IN_FLIGHT` encoded chunks) bound memory.
//! Write order (what makes a SIGKILL harmless): every chunk, then a flush, then the manifest,
//! then a flush, then the timeline compare-and-swap. Until the swap, nothing refers to the new
//! objects; a killed add leaves only unreferenced objects that `gc` removes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use vmedia_io::sha256x2;
use vmedia_io::{Progress, ReadAt};

use crate::chunker::{is_all_zero, Batch, BatchChunker, Span, BATCH_BUFFERS, BATCH_BYTES};
use crate::error::{LibraryError, Result};
use crate::inspect::{inspect, Embedded, EmbeddedVerifier, GuestReader};
use crate::library::{Library, CHUNKING};
use crate::manifest::{
    format_digest, key_id, ChunkEntry, EmbeddedCheck, ImageKind, Manifest, ManifestHeader,
    HEADER_FORMAT,
};
use crate::naming::check_name;
use crate::reader::VersionReader;
use crate::reports::AddReport;
use crate::signing::parse_signing_key;
use crate::timeline::{Event, EventKind, Timeline, VersionRecord, MAX_EVENTS, MAX_VERSIONS};

/// zstd level 3 (zstd's default): restic's "auto" setting compresses about as well, so stored
/// bytes compare fairly, and it runs at hundreds of MB/s per core.
pub const ZSTD_LEVEL: i32 = 3;
/// Encoded chunks queued for the I/O threads: 64 x 1 MiB at most in memory (the chunker's
/// batch buffers bound the plain bytes in flight).
pub const MAX_IN_FLIGHT: usize = 64;
/// Threads doing store requests: S3 latency is hidden by having several requests out.
pub const IO_THREADS: usize = 6;
/// Labels per version, and their sizes: metadata, not payload.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 1024;
/// A note is a sentence or two.
pub const MAX_NOTE: usize = 4096;
/// Zero runs longer than this are split: the index stores lengths as 32-bit numbers.
const MAX_ZERO_RUN: u64 = u32::MAX as u64;

/// What to add.
pub enum AddSource {
    /// A file or a block device.
    File(PathBuf),
    /// A stream of unknown length (stdin, an HTTP body).
    Reader(Box<dyn Read + Send>),
}

/// How to add.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    pub note: Option<String>,
    pub labels: Vec<(String, String)>,
    /// ed25519 private key (PKCS#8 PEM or 64 hex digits) to sign the manifest with.
    pub sign_key_pem: Option<String>,
    /// Store the merged content of a disk that names a backing file (instead of refusing).
    pub flatten: bool,
    /// The version's creation time (tests inject a clock); now when `None`.
    pub now: Option<jiff::Timestamp>,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// zstd-compresses a chunk with a per-thread compressor; `None` if zstd fails.
pub(crate) fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()?.compress(plain).ok()
    })
}

/// One chunk's place in the image and how it was stored.
struct Placed {
    index: usize,
    entry: ChunkEntry,
    /// BLAKE3 of the plain bytes (all zero for a zero run).
    fingerprint: [u8; 32],
    /// True when this add wrote it.
    written: bool,
}

/// A chunk on its way to the store.
struct StoreJob {
    index: usize,
    entry: ChunkEntry,
    fingerprint: [u8; 32],
    key: String,
    encoded: Vec<u8>,
}

/// The chunks of a streamed image, in order.
pub(crate) struct Staged {
    pub entries: Vec<ChunkEntry>,
    /// One per entry (see `Manifest::fingerprints`).
    pub fingerprints: Vec<[u8; 32]>,
    pub digest: [u8; 32],
    pub size: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub new_chunks: u64,
}

impl Library {
    /// Adds a new version of item `name` and makes it current.
    pub fn add(
        &self,
        name: &str,
        source: AddSource,
        options: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        check_name(name)?;
        check_metadata(options)?;
        let signing_key = match &options.sign_key_pem {
            Some(pem) => Some(parse_signing_key(pem)?),
            None => None,
        };
        if self.requires_signatures() {
            let Some(key) = &signing_key else {
                return Err(LibraryError::Unsigned {
                    what: format!("the new version of {name}"),
                });
            };
            let public = key.verifying_key().to_bytes();
            if !self.inner.trusted.iter().any(|k| k.to_bytes() == public) {
                return Err(LibraryError::Untrusted {
                    what: format!("the new version of {name}"),
                    key_id: key_id(&public),
                });
            }
        }

        // What the image is, before storing anything when it is a file.
        let mut pre_inspected = None;
        // An ISO file whose embedded checksums wait for the image digest (see below).
        let mut deferred_check: Option<(EmbeddedVerifier, Arc<dyn ReadAt>)> = None;
        let mut streamed_check = StreamedCheck::Undecided;
        let mut verified = HashMap::new();
        let mut reader: Box<dyn Read + Send> = match source {
            AddSource::File(path) => {
                let file = std::fs::File::open(&path).map_err(|e| source_error(&path, e))?;
                let shared: Arc<dyn ReadAt> =
                    Arc::new(file.try_clone().map_err(|e| source_error(&path, e))?);
                let size = shared.size().ok();
                if let Some(size) = size {
                    progress.set_total(size);
                }
                if vmedia_iso::read::is_iso(shared.as_ref()) {
                    // An ISO never names a backing file: its structure is read now (a few
                    // sectors); its embedded checksums are hashed from the bytes the chunker
                    // reads, or not at all when these exact bytes were verified before.
                    let inspection = inspect(name, Arc::clone(&shared), &path, Embedded::Later)?;
                    let embedded = match inspection.kind {
                        ImageKind::Iso { .. } => EmbeddedVerifier::new(name, shared.as_ref())?,
                        _ => None,
                    };
                    pre_inspected = Some(inspection.kind);
                    if let Some(embedded) = embedded {
                        verified = self.verified_embedded(name, size);
                        if verified.is_empty() {
                            streamed_check = StreamedCheck::Verifying(Box::new(embedded));
                        } else {
                            deferred_check = Some((embedded, shared));
                        }
                    } else {
                        streamed_check = StreamedCheck::Nothing;
                    }
                    Box::new(file)
                } else {
                    streamed_check = StreamedCheck::Nothing;
                    let inspection = inspect(name, Arc::clone(&shared), &path, Embedded::Check)?;
                    match (&inspection.backing, options.flatten) {
                        (None, _) => {
                            pre_inspected = Some(inspection.kind);
                            Box::new(file)
                        }
                        (Some(backing), false) => {
                            return Err(LibraryError::BackingFile {
                                name: name.to_string(),
                                backing: backing.clone(),
                            })
                        }
                        (Some(_), true) => {
                            let (guest, kind) = GuestReader::open_flattened(name, &path, shared)?;
                            progress.set_total(guest.size());
                            pre_inspected = Some(kind);
                            Box::new(guest)
                        }
                    }
                }
            }
            AddSource::Reader(reader) => reader,
        };

        // From here until the timeline swap, gc on any host leaves our chunks alone.
        let _marker = self.begin_add(progress)?;
        let known = self.known_chunks(name);
        progress.phase("storing");
        let staged = {
            let wanted = matches!(
                streamed_check,
                StreamedCheck::Undecided | StreamedCheck::Verifying(_)
            );
            let mut tap =
                |data: &[u8], whole: &mut sha256x2::Sha256| streamed_check.feed(name, data, whole);
            let tap: Option<&mut Tap<'_>> = match wanted {
                true => Some(&mut tap),
                false => None,
            };
            self.stage(&mut *reader, &known, tap, progress)?
        };
        drop(reader);
        let digest = format_digest(&staged.digest);

        // A damaged ISO is refused even when storing its chunks went fine: nothing refers to
        // them yet (gc removes them), exactly as after an add killed before its manifest.
        let kind = match pre_inspected {
            Some(ImageKind::Iso {
                volume_id,
                boot_entries,
                ..
            }) => {
                let embedded_checks = match (streamed_check, deferred_check) {
                    (StreamedCheck::Verifying(verifier), _) => verifier.finish(name)?,
                    (_, Some((mut verifier, source))) => match verified.remove(&digest) {
                        // The same bytes as a version whose checks passed: the same outcome.
                        Some(checks) => checks,
                        None => {
                            verifier.feed_from(name, source.as_ref())?;
                            verifier.finish(name)?
                        }
                    },
                    _ => Vec::new(),
                };
                ImageKind::Iso {
                    volume_id,
                    boot_entries,
                    embedded_checks,
                }
            }
            Some(kind) => kind,
            None => {
                // A stream: inspect the stored chunks through a reader over them; the embedded
                // checksums were checked as the stream passed when its head showed a record.
                let view = VersionReader::staged(self, name, &staged.entries, staged.size, &digest);
                let embedded = match &streamed_check {
                    StreamedCheck::Verifying(_) | StreamedCheck::Nothing => Embedded::Later,
                    StreamedCheck::Undecided | StreamedCheck::Unusable => Embedded::Check,
                };
                let inspection = inspect(name, Arc::new(view), Path::new(name), embedded)?;
                if let Some(backing) = inspection.backing {
                    return Err(LibraryError::BackingFile {
                        name: name.to_string(),
                        backing,
                    });
                }
                match (inspection.kind, streamed_check) {
                    (
                        ImageKind::Iso {
                            volume_id,
                            boot_entries,
                            embedded_checks,
                        },
                        check,
                    ) => ImageKind::Iso {
                        volume_id,
                        boot_entries,
                        embedded_checks: match check {
                            StreamedCheck::Verifying(verifier) => verifier.finish(name)?,
                            _ => embedded_checks,
                        },
                    },
                    (kind, _) => kind,
                }
            }
        };

        let created = options.now.unwrap_or_else(jiff::Timestamp::now);
        let mut manifest = Manifest {
            header: ManifestHeader {
                format: HEADER_FORMAT,
                name: name.to_string(),
                digest: digest.clone(),
                size: staged.size,
                created,
                actor: self.inner.actor.clone(),
                note: options.note.clone(),
                labels: options.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                kind: kind.clone(),
                chunking: CHUNKING,
            },
            entries: staged.entries,
            fingerprints: Some(staged.fingerprints),
            signature: None,
        };
        if let Some(key) = &signing_key {
            manifest.sign(key);
        }
        let signed_by = signing_key
            .as_ref()
            .map(|k| key_id(&k.verifying_key().to_bytes()));
        let chunks = manifest.entries.len() as u64;
        let plain = manifest.to_bytes();
        // Chunks durable before the manifest that names them.
        self.store().flush()?;
        let manifest_name = self.put_manifest(&plain)?;
        self.store().flush()?;

        let record = VersionRecord {
            version: 0,
            manifest: manifest_name.clone(),
            digest: digest.clone(),
            size: staged.size,
            created,
            kind: kind.summary(),
            signed_by: signed_by.clone(),
            pruned: None,
        };
        let actor = self.inner.actor.clone();
        let note = options.note.clone();
        let version = self.update_timeline(name, |timeline| {
            let mut timeline = timeline.unwrap_or_else(|| Timeline::new(name));
            if timeline.versions.len() >= MAX_VERSIONS || timeline.events.len() >= MAX_EVENTS {
                return Err(LibraryError::Limit {
                    what: "versions of one item",
                    limit: MAX_VERSIONS as u64,
                    reason: "prune old versions or use a new item name",
                });
            }
            let version = timeline.versions.len() as u64 + 1;
            let mut record = record.clone();
            record.version = version;
            timeline.versions.push(record);
            timeline.events.push(Event {
                time: created,
                actor: actor.clone(),
                kind: EventKind::Add,
                version: Some(version),
                note: note.clone(),
                site: None,
            });
            Ok((timeline, version))
        })?;

        Ok(AddReport {
            name: name.to_string(),
            version,
            digest,
            size: staged.size,
            new_bytes: staged.new_bytes,
            reused_bytes: staged.size - staged.new_bytes,
            stored_bytes: staged.stored_bytes,
            chunks,
            new_chunks: staged.new_chunks,
            kind,
            signed_by,
            manifest: manifest_name,
        })
    }

    /// The embedded-checksum outcomes of this item's kept ISO versions of `size` bytes, by
    /// image digest: an add whose digest turns out to be one of these holds exactly the bytes
    /// that were verified, so their outcome is reused instead of hashing the image again.
    fn verified_embedded(
        &self,
        name: &str,
        size: Option<u64>,
    ) -> HashMap<String, Vec<EmbeddedCheck>> {
        let mut verified = HashMap::new();
        let (Some(size), Ok(Some((timeline, _)))) = (size, self.load_timeline(name)) else {
            return verified;
        };
        let candidates = timeline
            .versions
            .iter()
            .rev()
            .filter(|r| r.pruned.is_none() && r.size == size && r.kind == "iso")
            .take(MAX_REUSE_CANDIDATES);
        for record in candidates {
            if let Ok(manifest) = self.load_manifest(&record.manifest) {
                if let ImageKind::Iso {
                    embedded_checks, ..
                } = manifest.header.kind
                {
                    // The digest in the manifest is the one its chunks were checked against.
                    if !embedded_checks.is_empty() && manifest.header.digest == record.digest {
                        verified.insert(record.digest.clone(), embedded_checks);
                    }
                }
            }
        }
        verified
    }

    /// Chunks of the item's newest kept version: they are stored (gc cannot run during an
    /// add), so the add skips even the existence check for them.
    fn known_chunks(&self, name: &str) -> Known {
        let mut known = Known::default();
        let Ok(Some((timeline, _))) = self.load_timeline(name) else {
            return known;
        };
        let Some(record) = timeline.versions.iter().rev().find(|r| r.pruned.is_none()) else {
            return known;
        };
        let Ok(manifest) = self.load_manifest(&record.manifest) else {
            return known;
        };
        for (index, entry) in manifest.entries.iter().enumerate() {
            if entry.zero {
                continue;
            }
            known.by_digest.insert(entry.digest, entry.stored_length);
            if let Some(fingerprint) = manifest.fingerprints.as_ref().and_then(|f| f.get(index)) {
                known
                    .by_fingerprint
                    .insert(*fingerprint, (entry.digest, entry.stored_length));
            }
        }
        known
    }

    /// Cuts, hashes, compresses and stores a stream; returns its index.
    ///
    /// `tap`, when given, sees every byte in order on the whole-image thread, with the
    /// whole-image hash to advance (the embedded checksums, hashed in lockstep with it).
    pub(crate) fn stage(
        &self,
        reader: &mut (dyn Read + Send),
        known: &Known,
        tap: Option<&mut Tap<'_>>,
        progress: &dyn Progress,
    ) -> Result<Staged> {
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<LibraryError>> = Mutex::new(None);
        let fail = |e: LibraryError| {
            failed.store(true, Ordering::SeqCst);
            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
        };
        let claimed: Mutex<HashSet<[u8; 32]>> = Mutex::new(HashSet::new());
        let stored_bytes = AtomicU64::new(0);
        let (done_tx, done_rx) = mpsc::channel::<Placed>();
        let (io_tx, io_rx) = mpsc::sync_channel::<StoreJob>(MAX_IN_FLIGHT);
        let io_rx = Mutex::new(io_rx);
        // The batch buffers bound what these queues hold.
        let (whole_tx, whole_rx) = mpsc::channel::<Arc<Batch>>();
        let mut total = 0u64;

        let whole_digest = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut whole = sha256x2::Sha256::new();
                let mut tap = tap;
                for batch in whole_rx {
                    match &mut tap {
                        Some(tap) => tap(batch.bytes(), &mut whole),
                        None => whole.update(batch.bytes()),
                    }
                }
                whole.finalize()
            });
            for _ in 0..IO_THREADS {
                let done_tx = done_tx.clone();
                let (io_rx, fail, failed, stored_bytes) = (&io_rx, &fail, &failed, &stored_bytes);
                scope.spawn(move || loop {
                    let job = io_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(job) = job else { break };
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    match self.store_job(&job) {
                        Ok((written, stored_length)) => {
                            let mut entry = job.entry;
                            entry.stored_length = stored_length;
                            if written {
                                stored_bytes.fetch_add(stored_length as u64, Ordering::Relaxed);
                            }
                            let _ = done_tx.send(Placed {
                                index: job.index,
                                entry,
                                fingerprint: job.fingerprint,
                                written,
                            });
                        }
                        Err(e) => fail(e),
                    }
                });
            }

            self.inner.pool.in_place_scope(|cpu| {
                let mut chunker =
                    BatchChunker::new(&mut *reader, CHUNKING, BATCH_BYTES, BATCH_BUFFERS);
                let mut index = 0usize;
                while !failed.load(Ordering::SeqCst) {
                    let batch = match chunker.next_batch() {
                        Ok(Some(batch)) => batch,
                        Ok(None) => break,
                        Err(source) => {
                            fail(LibraryError::Source {
                                source_name: "the image".into(),
                                source,
                            });
                            break;
                        }
                    };
                    let covered = batch.bytes().len() as u64;
                    total = batch.offset + covered;
                    if whole_tx.send(Arc::clone(&batch)).is_err() {
                        break;
                    }
                    progress.advance(covered);
                    for group in 0..batch.chunks.len().div_ceil(CHUNKS_PER_TASK) {
                        let (done_tx, io_tx) = (done_tx.clone(), io_tx.clone());
                        let (batch, claimed) = (Arc::clone(&batch), &claimed);
                        let first_index = index;
                        let spans = group * CHUNKS_PER_TASK
                            ..((group + 1) * CHUNKS_PER_TASK).min(batch.chunks.len());
                        index += spans.len();
                        cpu.spawn(move |_| {
                            self.place_chunks(
                                first_index,
                                &batch,
                                &batch.chunks[spans],
                                known,
                                claimed,
                                |p| {
                                    let _ = done_tx.send(p);
                                },
                                |job| {
                                    let _ = io_tx.send(job);
                                },
                            )
                        });
                    }
                }
            });
            drop(whole_tx);
            drop(io_tx);
            hasher.join().unwrap_or([0; 32])
        });
        drop(done_tx);
        if let Some(error) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(error);
        }

        let mut placed: Vec<Placed> = done_rx.into_iter().collect();
        placed.sort_by_key(|p| p.index);
        if placed.iter().enumerate().any(|(i, p)| p.index != i) {
            return Err(LibraryError::Io {
                what: "storing the image".into(),
                source: std::io::Error::other("a chunk went missing in the pipeline"),
            });
        }
        // Stored lengths of reused chunks: from this add's copy, or the store.
        let mut stored_length_of: HashMap<[u8; 32], u32> = placed
            .iter()
            .filter(|p| !p.entry.zero && p.entry.stored_length != 0)
            .map(|p| (p.entry.digest, p.entry.stored_length))
            .collect();
        let mut entries: Vec<ChunkEntry> = Vec::with_capacity(placed.len());
        let mut fingerprints: Vec<[u8; 32]> = Vec::with_capacity(placed.len());
        let mut new_bytes = 0u64;
        let mut new_chunks = 0u64;
        for p in &placed {
            let mut entry = p.entry;
            if p.written {
                new_bytes += entry.length as u64;
                new_chunks += 1;
            }
            if !entry.zero && entry.stored_length == 0 {
                entry.stored_length = match stored_length_of.get(&entry.digest) {
                    Some(&length) => length,
                    None => {
                        let length = match self.store().head(&self.chunk_key(&entry.digest))? {
                            Some(meta) => meta.size.min(u32::MAX as u64) as u32,
                            None => {
                                return Err(LibraryError::Missing {
                                    what: "a chunk the previous version uses",
                                    key: self.chunk_key(&entry.digest),
                                })
                            }
                        };
                        stored_length_of.insert(entry.digest, length);
                        length
                    }
                };
            }
            // Merge zero runs.
            if entry.zero {
                if let Some(last) = entries.last_mut() {
                    if last.zero && last.length as u64 + entry.length as u64 <= MAX_ZERO_RUN {
                        last.length += entry.length;
                        continue;
                    }
                }
            }
            entries.push(entry);
            fingerprints.push(p.fingerprint);
        }
        Ok(Staged {
            entries,
            fingerprints,
            digest: whole_digest,
            size: total,
            new_bytes,
            stored_bytes: stored_bytes.load(Ordering::Relaxed),
            new_chunks,
        })
    }

    /// Consecutive chunks on a CPU thread (`first_index` is the first one's index): each is a
    /// zero run, a chunk stored already (by an earlier version, or earlier in this image: its
    /// index entry is completed at assembly), or a new chunk, encoded here and handed to the
    /// I/O threads. Every chunk's BLAKE3 fingerprint is computed; one the previous version
    /// recorded gives the SHA-256 digest, the others' digests are computed two at a time.
    #[allow(clippy::too_many_arguments)]
    fn place_chunks(
        &self,
        first_index: usize,
        batch: &Batch,
        spans: &[Span],
        known: &Known,
        claimed: &Mutex<HashSet<[u8; 32]>>,
        done: impl Fn(Placed),
        store: impl Fn(StoreJob),
    ) {
        let fingerprints: Vec<Option<[u8; 32]>> = spans
            .iter()
            .map(|span| {
                let data = batch.chunk(span);
                (!(span.zero || is_all_zero(data))).then(|| *blake3::hash(data).as_bytes())
            })
            .collect();
        let recognised: Vec<Option<([u8; 32], u32)>> = fingerprints
            .iter()
            .map(|f| f.and_then(|f| known.by_fingerprint.get(&f).copied()))
            .collect();
        let unrecognised: Vec<&[u8]> = spans
            .iter()
            .zip(fingerprints.iter().zip(&recognised))
            .filter(|(_, (f, r))| f.is_some() && r.is_none())
            .map(|(span, _)| batch.chunk(span))
            .collect();
        let mut digests = sha256x2::digest_many(&unrecognised).into_iter();
        for (i, (span, (fingerprint, recognised))) in spans
            .iter()
            .zip(fingerprints.into_iter().zip(recognised))
            .enumerate()
        {
            let index = first_index + i;
            let mut entry = ChunkEntry {
                offset: batch.offset + span.start as u64,
                length: span.length as u32,
                stored_length: 0,
                zero: fingerprint.is_none(),
                digest: [0; 32],
            };
            let Some(fingerprint) = fingerprint else {
                done(Placed {
                    index,
                    entry,
                    fingerprint: [0; 32],
                    written: false,
                });
                continue;
            };
            match recognised {
                Some((digest, stored_length)) => {
                    entry.digest = digest;
                    entry.stored_length = stored_length;
                }
                None => {
                    let Some(digest) = digests.next() else {
                        // digest_many gives one digest per message; a shortfall is a bug,
                        // reported by assembly as the missing chunk it leaves.
                        return;
                    };
                    entry.digest = digest;
                    if let Some(&stored_length) = known.by_digest.get(&entry.digest) {
                        entry.stored_length = stored_length;
                    }
                }
            }
            let first = entry.stored_length == 0
                && claimed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.digest);
            if !first {
                done(Placed {
                    index,
                    entry,
                    fingerprint,
                    written: false,
                });
                continue;
            }
            let key = self.chunk_key(&entry.digest);
            let encoded = self.encode_chunk(&key, batch.chunk(span));
            entry.stored_length = encoded.len() as u32;
            store(StoreJob {
                index,
                entry,
                fingerprint,
                key,
                encoded,
            });
        }
    }

    /// Writes one chunk unless the store has it: (written, stored length).
    fn store_job(&self, job: &StoreJob) -> Result<(bool, u32)> {
        if let Some(meta) = self.store().head(&job.key)? {
            // A chunk of implausible size is rewritten rather than trusted.
            let plausible = crate::manifest::max_stored_bytes(job.entry.length) as u64
                + crate::crypto::SEAL_OVERHEAD as u64;
            if meta.size > 1 && meta.size <= plausible {
                return Ok((false, meta.size as u32));
            }
        }
        self.store().put(&job.key, &job.encoded)?;
        Ok((true, job.encoded.len() as u32))
    }
}

/// What the item's previous version holds: stored lengths by digest, and digests with stored
/// lengths by fingerprint (when its manifest recorded fingerprints).
#[derive(Default)]
pub(crate) struct Known {
    by_digest: HashMap<[u8; 32], u32>,
    by_fingerprint: HashMap<[u8; 32], ([u8; 32], u32)>,
}

/// Kept versions whose recorded embedded-check outcome an add may reuse: the newest few of the
/// same size are where a re-added image is found; more would only cost manifest reads.
const MAX_REUSE_CANDIDATES: usize = 4;

/// Chunks per CPU task: their digests are computed two at a time (`sha256x2::digest_many`);
/// a batch of ~32 chunks still makes 8 tasks for the pool to spread.
const CHUNKS_PER_TASK: usize = 4;

/// A consumer of every byte of an image, in order, that advances the whole-image hash over
/// them too (see `stage`).
type Tap<'a> = dyn FnMut(&[u8], &mut sha256x2::Sha256) + Send + 'a;

/// The embedded-checksum check of an add, fed as the image streams past.
enum StreamedCheck {
    /// A stream whose head has not been seen yet.
    Undecided,
    /// Hashing the embedded values.
    Verifying(Box<EmbeddedVerifier>),
    /// Nothing to check from the stream (no ISO, no record, or checked otherwise).
    Nothing,
    /// The stream's head did not show a record the stream check can use (its descriptors lie
    /// past the first chunk, or they are damaged): the inspection after staging checks it.
    Unusable,
}

impl StreamedCheck {
    /// The next bytes of the image: into the embedded check (when there is one) and `whole`.
    fn feed(&mut self, name: &str, data: &[u8], whole: &mut sha256x2::Sha256) {
        match self {
            StreamedCheck::Undecided => {
                // The first chunk (at least CHUNKING.min bytes) holds the primary volume
                // descriptor of every ISO whose descriptors start at sector 16.
                let head = data.to_vec();
                *self = match EmbeddedVerifier::new(name, &head) {
                    Ok(Some(mut verifier)) => {
                        verifier.feed_paired(data, whole);
                        StreamedCheck::Verifying(Box::new(verifier))
                    }
                    Ok(None) | Err(_) => {
                        whole.update(data);
                        StreamedCheck::Unusable
                    }
                };
            }
            StreamedCheck::Verifying(verifier) => verifier.feed_paired(data, whole),
            StreamedCheck::Nothing | StreamedCheck::Unusable => whole.update(data),
        }
    }
}

fn source_error(path: &Path, source: std::io::Error) -> LibraryError {
    LibraryError::Source {
        source_name: path.display().to_string(),
        source,
    }
}

fn check_metadata(options: &AddOptions) -> Result<()> {
    let limit = |what: &'static str, limit: usize| LibraryError::Limit {
        what,
        limit: limit as u64,
        reason: "labels and notes are short metadata",
    };
    if options.labels.len() > MAX_LABELS {
        return Err(limit("labels per version", MAX_LABELS));
    }
    for (key, value) in &options.labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return Err(limit("label name length", MAX_LABEL_KEY));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(limit("label value length", MAX_LABEL_VALUE));
        }
    }
    if options.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE) {
        return Err(limit("note length", MAX_NOTE));
    }
    Ok(())
}
