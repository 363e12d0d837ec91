//! `sync`: replicates one library location into another, incrementally, and merges item
//! timelines so two sites that both took changes converge (docs/replication.md).
//!
//! The engine works on two `Store`s (folder, S3; an HTTP store to a daemon can be added
//! behind the same trait), in this order, so a reader of the destination never sees a version
//! whose chunks are not all there:
//! 1. an add marker on the destination (its gc then waits, as it does for an add);
//! 2. the source's timelines are read (a snapshot); one listing of the destination's chunks
//!    and manifests is the existence check for all of them;
//! 3. per item: the missing chunks of its versions are copied as stored (opaque bytes, checked
//!    against their names before they count), `parallel` requests in flight, optionally
//!    throttled; then the versions' manifests; then the timeline is merged by compare-and-swap.
//!
//! Without the key of an encrypted library the timelines and manifests cannot be read: the
//! sync then copies every chunk and manifest the destination lacks, then the timelines of
//! items it lacks (or whose timeline it last wrote itself and nobody changed since); an item
//! changed on both sides needs the key to merge and is reported as a conflict.
//!
//! A sync killed at any point resumes: copied chunks are found by the next listing and skip.

mod merge;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmedia_io::Progress;

use crate::config::{LibraryConfig, CONFIG_KEY, MAX_CONFIG_BYTES};
use crate::crypto::SEAL_OVERHEAD;
use crate::error::{LibraryError, Result};
use crate::library::{open_store, Library, CODEC_STORED, CODEC_ZSTD};
use crate::location::{OpenConfig, ProvidedStore};
use crate::manifest::{max_stored_bytes, Manifest, MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES};
use crate::store::{Etag, PutOutcome, Store};
use crate::timeline::{Event, EventKind, Timeline, MAX_EVENTS, MAX_TIMELINE_BYTES, MAX_VERSIONS};

pub use merge::{convergence_view, merge_timelines};
pub use status::{
    item_peer_state, sync_status, DecidingEvent, ItemAgreement, ItemPeerState, PeerStatus,
    SyncStatusReport,
};

/// Chunk requests in flight by default. A chunk put costs one round trip; at 100 ms (50 ms
/// each way) and ~120 KiB stored per chunk, 8 in flight moved ~10 MiB/s and left the link idle
/// between answers; 32 keep it busy while a loopback peer is not slowed by the extra threads.
/// Memory stays bounded by `MAX_INFLIGHT_BYTES`, not by this count.
pub const DEFAULT_PARALLEL: usize = 32;
/// More threads than this only adds scheduling: the byte budget bounds memory anyway.
pub const MAX_PARALLEL: usize = 256;
/// Stored chunk bytes held by the copying threads at once, whatever `--parallel` says: 32
/// threads of average chunks use a few MiB, but chunks of up to 16 MiB could otherwise make
/// 256 threads hold 4 GiB.
pub const MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// Concurrent small requests (timelines, manifests, listings) of one sync: each is a round trip
/// on a high-latency link and they have no order among them.
const METADATA_PARALLEL: usize = 16;
/// The object naming this library as a site: `{"site": "<32 hex>"}`, made at the first sync.
pub const SITE_KEY: &str = "site.json";
/// A site record is a few dozen bytes.
const MAX_SITE_BYTES: u64 = 4 << 10;
/// Peer records hold counters and, for key-less syncs, one hash per item.
pub(crate) const MAX_PEER_BYTES: u64 = 16 << 20;
/// Where peer records live.
pub(crate) const PEERS_PREFIX: &str = "sync/";
/// The peer record format.
const PEER_FORMAT: u32 = 1;

/// What `sync` does.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Only items whose name matches this glob (`*`, `?`).
    pub items: Option<String>,
    /// Hide (a `remove` event) items on the destination that the source does not hold.
    pub remove_vanished: bool,
    /// Chunk requests in flight.
    pub parallel: usize,
    /// Bytes per second sent at most.
    pub bwlimit: Option<u64>,
    /// Compute what would travel; write nothing.
    pub dry_run: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            items: None,
            remove_vanished: false,
            parallel: DEFAULT_PARALLEL,
            bwlimit: None,
            dry_run: false,
        }
    }
}

/// What happened to one item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemSync {
    pub name: String,
    /// Versions the destination did not have before.
    pub versions_added: u64,
    /// Events the destination did not have before.
    pub events_added: u64,
    /// The destination's current version after the merge (its own numbering).
    pub current: Option<u64>,
    pub removed: bool,
}

/// What `sync` did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub from: String,
    pub to: String,
    pub from_site: String,
    pub to_site: String,
    /// "full" (timelines merged) or "opaque" (an encrypted library without its key).
    pub mode: &'static str,
    pub dry_run: bool,
    /// The destination did not exist and was created as a replica of the source.
    pub created_destination: bool,
    pub items: Vec<ItemSync>,
    pub versions_copied: u64,
    pub manifests_copied: u64,
    /// Chunks the synced versions use that the destination lacked (the work of this run).
    pub chunks_needed: u64,
    pub chunks_sent: u64,
    /// Stored bytes sent (what travels: compressed, sealed).
    pub bytes_sent: u64,
    /// Chunks already on the destination (found by the listing: never sent again).
    pub chunks_skipped: u64,
    pub bytes_skipped: u64,
    /// Chunks checked against their names before they counted.
    pub chunks_verified: u64,
    /// Chunks and bytes still missing on the destination when the run ended.
    pub pending_chunks: u64,
    pub pending_bytes: u64,
    /// Items hidden on the destination by `--remove-vanished`.
    pub removed_items: Vec<String>,
    /// Items changed on both sides that need the key to merge (opaque mode).
    pub conflicts: Vec<String>,
    /// Per-item failures (the item was left as it was on the destination).
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl SyncReport {
    /// True when everything selected reached the destination.
    pub fn complete(&self) -> bool {
        self.errors.is_empty() && self.conflicts.is_empty() && self.pending_chunks == 0
    }
}

/// The per-peer record kept in a library's store under `sync/` (both ends keep one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerRecord {
    pub format: u32,
    /// "to": this library is the source of the syncs; "from": it receives them.
    pub direction: String,
    pub peer_site: String,
    pub peer_location: String,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    /// When the last successful sync read the source: changes made there after this moment
    /// are not replicated yet.
    pub replicated_until: Option<String>,
    pub last_error: Option<String>,
    pub pending_chunks: u64,
    pub pending_bytes: u64,
    pub last_sent_chunks: u64,
    pub last_sent_bytes: u64,
    /// Key-less syncs: item key -> SHA-256 of the timeline object this sync last wrote.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub written: BTreeMap<String, String>,
}

pub(crate) fn peer_key(direction: &str, site: &str) -> String {
    format!("{PEERS_PREFIX}{direction}-{site}.json")
}

/// This library's site id, made (once, `put_if_absent`) when `create`.
pub(crate) fn site_id(store: &dyn Store, create: bool) -> Result<Option<String>> {
    #[derive(Serialize, Deserialize)]
    struct Site {
        site: String,
    }
    let read = |bytes: Vec<u8>| -> Result<String> {
        let site: Site = serde_json::from_slice(&bytes).map_err(|e| LibraryError::Corrupt {
            key: SITE_KEY.into(),
            offset: 0,
            field: "json",
            problem: e.to_string(),
        })?;
        if site.site.len() != 32 || !crate::timeline::is_object_name(&site.site) {
            return Err(LibraryError::Corrupt {
                key: SITE_KEY.into(),
                offset: 0,
                field: "site",
                problem: "not 32 hex digits".into(),
            });
        }
        Ok(site.site)
    };
    if let Some(bytes) = store.get(SITE_KEY, MAX_SITE_BYTES)? {
        return read(bytes).map(Some);
    }
    if !create {
        return Ok(None);
    }
    let fresh = Site {
        site: hex::encode(crate::crypto::random_bytes::<16>()),
    };
    let bytes = serde_json::to_vec_pretty(&fresh).expect("a site record serialises");
    if store.put_if_absent(SITE_KEY, &bytes)? == PutOutcome::Written {
        return Ok(Some(fresh.site));
    }
    // Another process made it first: use theirs.
    match store.get(SITE_KEY, MAX_SITE_BYTES)? {
        Some(bytes) => read(bytes).map(Some),
        None => Ok(Some(fresh.site)),
    }
}

/// `*` and `?` glob match over whole names.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Runs two independent steps at once (each is a round trip or more on a high-latency link and
/// neither needs the other's result).
fn join<A: Send, B: Send>(
    first: impl FnOnce() -> A + Send,
    second: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|scope| {
        let other = scope.spawn(second);
        let a = first();
        let b = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

/// `f` over `items` with up to `parallel` threads, results in the order of `items`.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = parallel.clamp(1, MAX_PARALLEL).min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(index) else { break };
                let result = f(item);
                results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index was taken by one thread"))
        .collect()
}

/// A budget of bytes shared by the copying threads: each reserves its chunk's stored size
/// before reading it and gives it back once the chunk is written.
struct ByteBudget {
    free: Mutex<u64>,
    freed: std::sync::Condvar,
    total: u64,
}

impl ByteBudget {
    fn new(total: u64) -> Self {
        ByteBudget {
            free: Mutex::new(total),
            freed: std::sync::Condvar::new(),
            total,
        }
    }

    /// Waits for `bytes` (at most the whole budget, so one huge chunk still passes alone).
    fn take(&self, bytes: u64) -> u64 {
        let bytes = bytes.min(self.total);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free < bytes {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= bytes;
        bytes
    }

    fn give(&self, bytes: u64) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += bytes;
        self.freed.notify_all();
    }
}

/// A bandwidth limit shared by every copying thread: each transfer reserves its slot on a
/// virtual clock and starts when the slot comes.
struct Throttle {
    bytes_per_second: f64,
    next: Mutex<Instant>,
}

impl Throttle {
    fn wait(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

/// One chunk to copy: its object key and, when the library is readable, what it must hold.
#[derive(Debug, Clone)]
struct ChunkJob {
    key: String,
    plain: Option<([u8; 32], u32)>,
    /// Stored size, when known, for progress and the report.
    size: u64,
}

/// One side of a sync.
struct Side {
    store: Arc<dyn Store>,
    location: String,
    config: LibraryConfig,
    config_bytes: Vec<u8>,
}

fn open_side(store: Arc<dyn Store>, config: &OpenConfig) -> Result<(Side, bool)> {
    let location = config.location.to_string();
    let Some(bytes) = store
        .get(CONFIG_KEY, MAX_CONFIG_BYTES)
        .map_err(|e| crate::library::too_large(e, "the library configuration", MAX_CONFIG_BYTES))?
    else {
        return Ok((
            Side {
                store,
                location,
                config: empty_config(),
                config_bytes: Vec::new(),
            },
            false,
        ));
    };
    let parsed = LibraryConfig::parse(&bytes)?;
    Ok((
        Side {
            store,
            location,
            config: parsed,
            config_bytes: bytes,
        },
        true,
    ))
}

/// The configuration of a side that does not exist yet (replaced before any use).
fn empty_config() -> LibraryConfig {
    LibraryConfig {
        format: crate::config::LIBRARY_FORMAT,
        created: jiff::Timestamp::UNIX_EPOCH,
        chunking: crate::library::CHUNKING,
        encryption: None,
        require_signed: Vec::new(),
        keep_within_seconds: 0,
        keep_last: None,
        mac: None,
    }
}

/// A manifest read from the source: its key, its stored bytes (what is copied), its contents.
type LoadedManifest = (String, Vec<u8>, Manifest);

/// Checks a chunk's stored bytes before it counts; `Err` names the problem.
type ChunkCheck<'a> = dyn Fn(&ChunkJob, &[u8]) -> std::result::Result<(), String> + Sync + 'a;

/// Copies chunks with `parallel` threads, each a blocking get + check + put (the S3 store
/// runs each request on its runtime, so N threads keep N requests in flight).
struct Copier<'a> {
    from: &'a dyn Store,
    to: &'a dyn Store,
    /// Checks stored bytes against the job (decrypt/decompress/hash when readable).
    check: &'a ChunkCheck<'a>,
    throttle: Option<Throttle>,
    parallel: usize,
    budget: ByteBudget,
    progress: &'a dyn Progress,
    sent: AtomicU64,
    bytes: AtomicU64,
    verified: AtomicU64,
}

impl<'a> Copier<'a> {
    fn new(
        from: &'a dyn Store,
        to: &'a dyn Store,
        check: &'a ChunkCheck<'a>,
        options: &SyncOptions,
        progress: &'a dyn Progress,
    ) -> Self {
        Copier {
            from,
            to,
            check,
            throttle: options.bwlimit.map(|rate| Throttle {
                bytes_per_second: rate.max(1) as f64,
                next: Mutex::new(Instant::now()),
            }),
            parallel: options.parallel,
            budget: ByteBudget::new(MAX_INFLIGHT_BYTES),
            progress,
            sent: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            verified: AtomicU64::new(0),
        }
    }

    /// Copies `jobs`; returns the keys that arrived and the failures.
    fn copy(&self, jobs: &[ChunkJob]) -> (Vec<String>, Vec<String>) {
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::with_capacity(jobs.len()));
        let failed = Mutex::new(Vec::new());
        let threads = self.parallel.clamp(1, MAX_PARALLEL).min(jobs.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(index) else { break };
                    match self.copy_one(job) {
                        Ok(()) => done
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(job.key.clone()),
                        Err(problem) => failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{}: {problem}", job.key)),
                    }
                });
            }
        });
        (
            done.into_inner().unwrap_or_else(|e| e.into_inner()),
            failed.into_inner().unwrap_or_else(|e| e.into_inner()),
        )
    }

    fn copy_one(&self, job: &ChunkJob) -> std::result::Result<(), String> {
        let held = self.budget.take(job.size);
        let result = self.copy_held(job);
        self.budget.give(held);
        result
    }

    fn copy_held(&self, job: &ChunkJob) -> std::result::Result<(), String> {
        let limit = match job.plain {
            Some((_, length)) => max_stored_bytes(length) as u64 + SEAL_OVERHEAD as u64,
            None => max_stored_bytes(MAX_CHUNK_BYTES) as u64 + SEAL_OVERHEAD as u64,
        };
        let stored = match self.from.get(&job.key, limit) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err("missing on the source".into()),
            Err(e) => return Err(e.to_string()),
        };
        (self.check)(job, &stored)?;
        self.verified.fetch_add(1, Ordering::Relaxed);
        if let Some(throttle) = &self.throttle {
            throttle.wait(stored.len() as u64);
        }
        self.to.put(&job.key, &stored).map_err(|e| e.to_string())?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.progress.advance(stored.len() as u64);
        Ok(())
    }
}

/// Checks a stored chunk of a readable library: it opens under its name, decompresses to
/// the recorded length and hashes to the digest its name commits to.
fn check_readable(
    library: &Library,
    job: &ChunkJob,
    stored: &[u8],
) -> std::result::Result<(), String> {
    let Some((digest, length)) = job.plain else {
        return check_opaque(job, stored);
    };
    let body = library
        .unseal(&job.key, stored.to_vec())
        .map_err(|_| "failed authentication (tampered or swapped)".to_string())?;
    let plain = match body.split_first() {
        Some((&CODEC_STORED, rest)) => rest.to_vec(),
        Some((&CODEC_ZSTD, rest)) => {
            zstd::bulk::decompress(rest, length as usize).map_err(|e| format!("zstd: {e}"))?
        }
        Some((codec, _)) => return Err(format!("unknown codec {codec}")),
        None => return Err("empty object".into()),
    };
    if plain.len() != length as usize {
        return Err(format!(
            "holds {} bytes, the index says {length}",
            plain.len()
        ));
    }
    let actual: [u8; 32] = Sha256::digest(&plain).into();
    if actual != digest {
        return Err(format!(
            "content hashes to sha256:{}, its name says sha256:{}",
            hex::encode(actual),
            hex::encode(digest)
        ));
    }
    Ok(())
}

/// What can be checked without the key: the name is a chunk name and the size is possible.
fn check_opaque(job: &ChunkJob, stored: &[u8]) -> std::result::Result<(), String> {
    let name = job.key.rsplit('/').next().unwrap_or("");
    if name.len() != 64 || !crate::timeline::is_object_name(name) {
        return Err("not a chunk name".into());
    }
    let ceiling = max_stored_bytes(MAX_CHUNK_BYTES) as usize + SEAL_OVERHEAD;
    if stored.len() <= SEAL_OVERHEAD || stored.len() > ceiling {
        return Err(format!(
            "{} stored bytes is not a sealed chunk",
            stored.len()
        ));
    }
    Ok(())
}

/// A marker for a sync into a library it cannot seal for (no key): plain JSON, which gc
/// cannot open and so judges by the store's modification time (refreshed every heartbeat).
struct PlainMarker {
    store: Arc<dyn Store>,
    key: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlainMarker {
    fn write(store: Arc<dyn Store>) -> Result<PlainMarker> {
        let key = format!(
            "locks/add-{}",
            hex::encode(crate::crypto::random_bytes::<16>())
        );
        let body = |now: jiff::Timestamp| {
            format!(
                "{{\"kind\":\"sync\",\"pid\":{},\"heartbeat\":\"{now}\"}}",
                std::process::id()
            )
            .into_bytes()
        };
        store.put(&key, &body(jiff::Timestamp::now()))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let beat_store = Arc::clone(&store);
        let beat_key = key.clone();
        let thread = std::thread::Builder::new()
            .name("vmedia-sync-heartbeat".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(crate::gc::HEARTBEAT)
                {
                    let _ = beat_store.put(&beat_key, &body(jiff::Timestamp::now()));
                }
            })
            .map_err(|e| LibraryError::Io {
                what: "starting the marker heartbeat".into(),
                source: e,
            })?;
        // Wait while a gc runs (its markers are sealed: judged by their age).
        let stale =
            jiff::SignedDuration::try_from(crate::gc::STALE).unwrap_or(jiff::SignedDuration::MAX);
        loop {
            let now = jiff::Timestamp::now();
            let live = store
                .list("locks/gc-")?
                .into_iter()
                .any(|m| m.modified.is_some_and(|t| now.duration_since(t) < stale));
            if !live {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(PlainMarker {
            store,
            key,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for PlainMarker {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = self.store.delete(&self.key);
    }
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

fn read_peer(store: &dyn Store, key: &str) -> PeerRecord {
    store
        .get(key, MAX_PEER_BYTES)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Replicates `from` into `to` (created as a replica when absent). See the module text.
pub fn sync(
    from: &OpenConfig,
    to: &OpenConfig,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let started = Instant::now();
    let refuse = |problem: String| LibraryError::SyncRefused {
        from: from.location.to_string(),
        to: to.location.to_string(),
        problem,
    };
    // Every step below that has no order with another runs beside it: on a 50 ms link each
    // request is a round trip, and a sync of a small change is mostly such requests.
    // The site ids are read beside the configurations (made below only when missing).
    let (store_a, store_b) = (open_store(from)?, open_store(to)?);
    let ((opened_a, opened_b), (read_a_site, read_b_site)) = join(
        || {
            join(
                || open_side(Arc::clone(&store_a), from),
                || open_side(Arc::clone(&store_b), to),
            )
        },
        || {
            join(
                || site_id(store_a.as_ref(), false),
                || site_id(store_b.as_ref(), false),
            )
        },
    );
    let (a, a_exists) = opened_a?;
    if !a_exists {
        return Err(LibraryError::NotALibrary {
            location: a.location.clone(),
        });
    }
    let (mut b, b_exists) = opened_b?;
    let mut created = false;
    if !b_exists {
        if !options.dry_run {
            // A new destination is a replica: the same configuration, so the same naming keys.
            if b.store.put_if_absent(CONFIG_KEY, &a.config_bytes)? == PutOutcome::Written {
                created = true;
            }
            b.store.flush()?;
            let (reopened, _) = open_side(Arc::clone(&b.store), to)?;
            b = reopened;
        } else {
            b.config = a.config.clone();
            b.config_bytes = a.config_bytes.clone();
        }
    }
    // Chunks travel as stored, so both ends must name and seal them the same way.
    match (&a.config.encryption, &b.config.encryption) {
        (None, None) => {}
        (Some(x), Some(y)) if x.salt == y.salt && x.key_check == y.key_check => {}
        (Some(_), Some(_)) => {
            return Err(refuse(
                "the two libraries are encrypted under different keys; sync needs a replica (sync into a new location) or `library repair --from`".into(),
            ))
        }
        _ => {
            return Err(refuse(
                "one library is encrypted and the other is not; sync into a new location to make a replica".into(),
            ))
        }
    }
    let encrypted = a.config.encryption.is_some();
    let readable = !encrypted || from.key.is_some() || to.key.is_some();
    if !readable && !b.config.require_signed.is_empty() {
        let covered = !a.config.require_signed.is_empty()
            && a.config
                .require_signed
                .iter()
                .all(|k| b.config.require_signed.contains(k));
        if !covered {
            return Err(refuse(
                "the destination requires signatures the source does not guarantee; give --key so each manifest can be checked".into(),
            ));
        }
    }
    if !readable && options.items.is_some() {
        return Err(refuse(
            "--items needs the key: item names are sealed in an encrypted library".into(),
        ));
    }

    let create = !options.dry_run;
    let (a_site, b_site) = join(
        || match read_a_site? {
            Some(site) => Ok(Some(site)),
            None => site_id(a.store.as_ref(), create),
        },
        || match read_b_site? {
            Some(site) => Ok(Some(site)),
            None => site_id(b.store.as_ref(), create),
        },
    );
    let a_site = a_site?.unwrap_or_else(|| "(none yet)".into());
    let b_site = b_site?.unwrap_or_else(|| "(none yet)".into());
    if a_site == b_site && !options.dry_run {
        return Err(refuse(format!(
            "both locations are site {a_site} (one library, or a copy of its {SITE_KEY}); delete {SITE_KEY} in the copy so it gets its own id"
        )));
    }

    let mut report = SyncReport {
        from: a.location.clone(),
        to: b.location.clone(),
        from_site: a_site.clone(),
        to_site: b_site.clone(),
        mode: if readable { "full" } else { "opaque" },
        dry_run: options.dry_run,
        created_destination: created,
        items: Vec::new(),
        versions_copied: 0,
        manifests_copied: 0,
        chunks_needed: 0,
        chunks_sent: 0,
        bytes_sent: 0,
        chunks_skipped: 0,
        bytes_skipped: 0,
        chunks_verified: 0,
        pending_chunks: 0,
        pending_bytes: 0,
        removed_items: Vec::new(),
        conflicts: Vec::new(),
        errors: Vec::new(),
        seconds: 0.0,
    };
    let snapshot = now_text();
    let to_key = peer_key("from", &a_site);
    let from_key = peer_key("to", &b_site);
    let read_records = || {
        join(
            || read_peer(a.store.as_ref(), &from_key),
            || read_peer(b.store.as_ref(), &to_key),
        )
    };
    // The destination's marker (gc waits while it exists), released beside the peer records.
    let mut held: Option<Box<dyn Send>> = None;
    let ((mut a_record, mut b_record), outcome) = if readable {
        // Peer records are read while the sync starts (a key-less sync needs its own first).
        join(read_records, || {
            sync_readable(
                from,
                to,
                &a,
                &b,
                &a_site,
                &b_site,
                options,
                progress,
                &mut report,
                &mut held,
            )
        })
    } else {
        let (a_record, mut b_record) = read_records();
        let outcome = sync_opaque(
            &a,
            &b,
            options,
            progress,
            &mut report,
            &mut b_record,
            &mut held,
        );
        ((a_record, b_record), outcome)
    };
    report.seconds = started.elapsed().as_secs_f64();
    if options.dry_run {
        return outcome.map(|()| report);
    }

    // Peer records, at both ends (best effort at the source, which may be read-only to us).
    let error_text = match &outcome {
        Err(e) => Some(e.to_string()),
        Ok(()) if !report.complete() => Some(
            report
                .errors
                .iter()
                .chain(&report.conflicts)
                .next()
                .cloned()
                .unwrap_or_else(|| format!("{} chunks still pending", report.pending_chunks)),
        ),
        Ok(()) => None,
    };
    let update = |record: &mut PeerRecord, direction: &str, site: &str, location: &str| {
        record.format = PEER_FORMAT;
        record.direction = direction.to_string();
        record.peer_site = site.to_string();
        record.peer_location = location.to_string();
        record.last_attempt = Some(now_text());
        record.last_error = error_text.clone();
        record.pending_chunks = report.pending_chunks;
        record.pending_bytes = report.pending_bytes;
        record.last_sent_chunks = report.chunks_sent;
        record.last_sent_bytes = report.bytes_sent;
        if error_text.is_none() {
            record.last_success = record.last_attempt.clone();
            record.replicated_until = Some(snapshot.clone());
        }
    };
    update(&mut b_record, "from", &a_site, &a.location);
    update(&mut a_record, "to", &b_site, &b.location);
    join(
        || drop(held.take()),
        || {
            join(
                || {
                    let _ = b.store.put(
                        &to_key,
                        &serde_json::to_vec_pretty(&b_record).expect("a peer record serialises"),
                    );
                },
                || {
                    let _ = a.store.put(
                        &from_key,
                        &serde_json::to_vec_pretty(&a_record).expect("a peer record serialises"),
                    );
                },
            )
        },
    );
    outcome.map(|()| report)
}

/// Both libraries readable: per item, copy what its versions need, then merge its timeline.
#[allow(clippy::too_many_arguments)]
fn sync_readable(
    from: &OpenConfig,
    to: &OpenConfig,
    a: &Side,
    b: &Side,
    a_site: &str,
    b_site: &str,
    options: &SyncOptions,
    progress: &dyn Progress,
    report: &mut SyncReport,
    held: &mut Option<Box<dyn Send>>,
) -> Result<()> {
    let mut from = from.clone();
    let mut to = to.clone();
    if a.config.encryption.is_some() {
        // One key serves both ends of a replica.
        let key = from.key.clone().or_else(|| to.key.clone());
        from.key = key.clone();
        to.key = key;
    }
    // The stores opened already: one client (and its kept-alive connections) per side.
    from.store = Some(ProvidedStore(Arc::clone(&a.store)));
    to.store = Some(ProvidedStore(Arc::clone(&b.store)));
    // A dry run into a location that does not exist yet reads it as empty.
    let open_b = options.dry_run && b.config_bytes.is_empty();
    let (lib_a, lib_b) = join(
        || Library::open(&from),
        || (!open_b).then(|| Library::open(&to)).transpose(),
    );
    let (lib_a, lib_b) = (lib_a?, lib_b?);

    progress.phase("reading timelines");
    // The source's timelines while the destination's marker goes up (gc waits for it).
    let (a_items, marker) = join(
        || -> Result<Vec<Timeline>> {
            let keys = lib_a.item_keys()?;
            let loaded = parallel_map(&keys, METADATA_PARALLEL, |key| lib_a.load_timeline_key(key));
            let mut items = Vec::new();
            for timeline in loaded {
                if let Some(timeline) = timeline? {
                    if options
                        .items
                        .as_deref()
                        .is_none_or(|glob| glob_match(glob, &timeline.name))
                    {
                        items.push(timeline);
                    }
                }
            }
            items.sort_by(|x, y| x.name.cmp(&y.name));
            Ok(items)
        },
        || match (&lib_b, options.dry_run) {
            (Some(lib), false) => lib.begin_add(progress).map(Some),
            _ => Ok(None),
        },
    );
    if let Some(marker) = marker? {
        *held = Some(Box::new(marker));
    }
    let a_items = a_items?;

    // Once the marker holds gc off: one listing of the destination's chunks and one of its
    // manifests are the existence check for all of them, and its timelines of the same items
    // (kept with their tags for the merge) are read beside them.
    let listed = !b.config_bytes.is_empty();
    let list = |prefix: &'static str| -> Result<HashSet<String>> {
        if !listed {
            return Ok(HashSet::new());
        }
        Ok(b.store.list(prefix)?.into_iter().map(|m| m.key).collect())
    };
    let ((b_chunks, b_manifests), b_timelines) = join(
        || join(|| list("chunks/"), || list("manifests/")),
        || -> Vec<Result<Option<(Timeline, Etag)>>> {
            match &lib_b {
                Some(lib) => {
                    parallel_map(&a_items, METADATA_PARALLEL, |t| lib.load_timeline(&t.name))
                }
                None => a_items.iter().map(|_| Ok(None)).collect(),
            }
        },
    );
    let (b_chunks, b_manifests) = (b_chunks?, b_manifests?);
    let b_timelines = b_timelines.into_iter().collect::<Result<Vec<_>>>()?;

    // The manifests of the versions the destination lacks, read from the source at once.
    let wanted: Vec<(usize, usize)> = a_items
        .iter()
        .zip(&b_timelines)
        .enumerate()
        .flat_map(|(item, (timeline, b_timeline))| {
            let b_known: HashSet<&str> = b_timeline
                .iter()
                .flat_map(|(t, _)| t.versions.iter().map(|r| r.manifest.as_str()))
                .collect();
            timeline
                .versions
                .iter()
                .enumerate()
                .filter(|(_, r)| r.pruned.is_none())
                // Known at the destination (its retention may have released it: its
                // choice), or its manifest already there (written only after its chunks).
                .filter(|(_, r)| {
                    !b_known.contains(r.manifest.as_str())
                        && !b_manifests.contains(&format!("manifests/{}", r.manifest))
                })
                .map(|(index, _)| (item, index))
                .collect::<Vec<_>>()
        })
        .collect();
    let loaded = parallel_map(&wanted, METADATA_PARALLEL, |&(item, index)| {
        let timeline = &a_items[item];
        let record = &timeline.versions[index];
        let what = format!("{}@{}", timeline.name, record.version);
        let key = format!("manifests/{}", record.manifest);
        let stored = a
            .store
            .get(&key, MAX_MANIFEST_BYTES + SEAL_OVERHEAD as u64)?
            .ok_or_else(|| LibraryError::Missing {
                what: "a manifest",
                key: key.clone(),
            })?;
        let manifest = version_manifest(&lib_a, timeline, record, &key, &stored)?;
        if let Some(lib) = &lib_b {
            lib.check_trusted(&manifest, &what)?;
        }
        Ok::<_, LibraryError>((key, stored, manifest))
    });
    let mut loaded: HashMap<(usize, usize), Result<LoadedManifest>> =
        wanted.into_iter().zip(loaded).collect();

    // Plan every item, so progress has a total and the report counts what is needed.
    struct Plan {
        timeline: Timeline,
        /// The destination's timeline of the item and its tag, as read above.
        b_timeline: Option<(Timeline, Etag)>,
        manifests: Vec<(String, Vec<u8>)>,
        chunks: Vec<ChunkJob>,
        error: Option<String>,
    }
    let mut plans = Vec::new();
    let mut planned_chunks: HashSet<String> = HashSet::new();
    let mut total_bytes = 0u64;
    for (item, (timeline, b_timeline)) in a_items.into_iter().zip(b_timelines).enumerate() {
        let mut plan = Plan {
            manifests: Vec::new(),
            chunks: Vec::new(),
            error: None,
            b_timeline,
            timeline,
        };
        for (index, record) in plan.timeline.versions.iter().enumerate() {
            let Some(found) = loaded.remove(&(item, index)) else {
                continue;
            };
            let (key, stored, manifest) = match found {
                Ok(found) => found,
                Err(e) => {
                    plan.error = Some(format!("{}@{}: {e}", plan.timeline.name, record.version));
                    break;
                }
            };
            for entry in manifest.entries.iter().filter(|e| !e.zero) {
                let chunk_key = lib_a.chunk_key(&entry.digest);
                let size = entry.stored_length as u64
                    + if lib_a.is_encrypted() {
                        SEAL_OVERHEAD as u64
                    } else {
                        0
                    };
                if b_chunks.contains(&chunk_key) {
                    if planned_chunks.insert(chunk_key) {
                        report.chunks_skipped += 1;
                        report.bytes_skipped += size;
                    }
                    continue;
                }
                if planned_chunks.insert(chunk_key.clone()) {
                    total_bytes += size;
                    plan.chunks.push(ChunkJob {
                        key: chunk_key,
                        plain: Some((entry.digest, entry.length)),
                        size,
                    });
                }
            }
            plan.manifests.push((key, stored));
        }
        report.chunks_needed += plan.chunks.len() as u64;
        plans.push(plan);
    }
    report.pending_chunks = report.chunks_needed;
    report.pending_bytes = total_bytes;
    if options.dry_run {
        for plan in &plans {
            report.versions_copied += plan.manifests.len() as u64;
            if let Some(error) = &plan.error {
                report.errors.push(error.clone());
            }
        }
        return Ok(());
    }
    let Some(lib_b) = lib_b else {
        return Ok(());
    };

    progress.phase("copying chunks");
    progress.set_total(total_bytes);
    let check = |job: &ChunkJob, stored: &[u8]| check_readable(&lib_b, job, stored);
    let copier = Copier::new(
        a.store.as_ref(),
        b.store.as_ref(),
        &check,
        options,
        progress,
    );
    let a_names: HashSet<String> = plans.iter().map(|p| p.timeline.name.clone()).collect();
    for plan in plans {
        let name = plan.timeline.name.clone();
        if let Some(error) = plan.error {
            report.errors.push(error);
            continue;
        }
        let (arrived, failed) = copier.copy(&plan.chunks);
        let arrived: HashSet<String> = arrived.into_iter().collect();
        let arrived_bytes: u64 = plan
            .chunks
            .iter()
            .filter(|job| arrived.contains(&job.key))
            .map(|job| job.size)
            .sum();
        report.pending_chunks -= arrived.len() as u64;
        report.pending_bytes -= arrived_bytes;
        if !failed.is_empty() {
            report.errors.push(format!(
                "{name}: {} chunks failed: {}",
                failed.len(),
                failed[0]
            ));
            continue;
        }
        // Chunks durable before the manifests that name them, manifests before the timeline.
        b.store.flush()?;
        // The manifests of one item have no order among them, only before its timeline.
        for outcome in parallel_map(&plan.manifests, METADATA_PARALLEL, |(key, stored)| {
            b.store.put_if_absent(key, stored)
        }) {
            if outcome? == PutOutcome::Written {
                report.manifests_copied += 1;
            }
        }
        b.store.flush()?;
        match merge_into(&lib_b, b_site, &plan.timeline, a_site, plan.b_timeline) {
            Ok(Some(item)) => {
                report.versions_copied += item.versions_added;
                report.items.push(item);
            }
            Ok(None) => {}
            Err(e) => report.errors.push(format!("{name}: {e}")),
        }
    }
    report.chunks_sent = copier.sent.load(Ordering::Relaxed);
    report.bytes_sent = copier.bytes.load(Ordering::Relaxed);
    report.chunks_verified = copier.verified.load(Ordering::Relaxed);

    if options.remove_vanished {
        for key in lib_b.item_keys()? {
            let Some(timeline) = lib_b.load_timeline_key(&key)? else {
                continue;
            };
            let selected = options
                .items
                .as_deref()
                .is_none_or(|glob| glob_match(glob, &timeline.name));
            if !selected || a_names.contains(&timeline.name) || timeline.current().removed {
                continue;
            }
            let note = format!("removed by sync: absent from {}", a.location);
            let actor = lib_b.inner.actor.clone();
            let name = timeline.name.clone();
            let site = b_site.to_string();
            lib_b.update_timeline(&name, |current| {
                let mut timeline =
                    current.ok_or_else(|| LibraryError::NoSuchItem { name: name.clone() })?;
                if !timeline.current().removed && timeline.events.len() < MAX_EVENTS {
                    timeline.events.push(Event {
                        time: jiff::Timestamp::now(),
                        actor: actor.clone(),
                        kind: EventKind::Remove,
                        version: None,
                        note: Some(note.clone()),
                        site: Some(site.clone()),
                    });
                }
                Ok((timeline, ()))
            })?;
            report.removed_items.push(name);
        }
    }
    Ok(())
}

/// Merges the source's timeline of an item into the destination's by compare-and-swap (a
/// concurrent add or rollback there is re-read and kept). `None` when nothing changed.
/// `known` is the destination's timeline and tag as read when the sync planned: when nobody
/// changed it since, the merge costs one conditional write and no read.
fn merge_into(
    lib_b: &Library,
    b_site: &str,
    remote: &Timeline,
    a_site: &str,
    known: Option<(Timeline, Etag)>,
) -> Result<Option<ItemSync>> {
    let name = remote.name.clone();
    let merge = |current: Option<Timeline>| -> Result<(Timeline, ItemSync)> {
        let local = current.unwrap_or_else(|| Timeline::new(&name));
        let merged = merge_timelines(&local, b_site, remote, a_site);
        if merged.versions.len() > MAX_VERSIONS || merged.events.len() > MAX_EVENTS {
            return Err(LibraryError::Limit {
                what: "versions or events of one item",
                limit: MAX_EVENTS as u64,
                reason: "the merged timeline would not fit its object",
            });
        }
        let state = merged.current();
        let summary = ItemSync {
            name: name.clone(),
            versions_added: (merged.versions.len() - local.versions.len()) as u64,
            events_added: merged.events.len().saturating_sub(local.events.len()) as u64,
            current: state.version,
            removed: state.removed,
        };
        Ok((merged, summary))
    };
    // Stamping this site's own events changes no fact (an unstamped event is this site's):
    // such a merge is not written, so a converged pair of sites writes nothing.
    let unchanged = |local: &Timeline| {
        unstamp(merge_timelines(local, b_site, remote, a_site), b_site)
            == unstamp(local.clone(), b_site)
    };
    let (local, tag) = match known {
        Some((local, tag)) => (Some(local), Some(tag)),
        None => (None, None),
    };
    if local.as_ref().is_some_and(unchanged) {
        return Ok(None);
    }
    // The one write when the timeline is still as planned; anything else (changed, created
    // or removed meanwhile) falls back to the read-merge-swap loop below.
    let (merged, summary) = merge(local)?;
    let key = lib_b.item_key(&name);
    let bytes = lib_b.seal(&key, merged.to_bytes());
    if bytes.len() as u64 <= MAX_TIMELINE_BYTES {
        let outcome = match &tag {
            None => lib_b.store().put_if_absent(&key, &bytes)?,
            Some(tag) => lib_b.store().put_if_match(&key, &bytes, tag)?,
        };
        if outcome == PutOutcome::Written {
            lib_b.store().flush()?;
            return Ok(Some(summary));
        }
    }
    if lib_b
        .load_timeline(&name)?
        .is_some_and(|(local, _)| unchanged(&local))
    {
        return Ok(None);
    }
    let mut summary = None;
    lib_b.update_timeline(&name, |current| {
        let (merged, item) = merge(current)?;
        summary = Some(item);
        Ok((merged, ()))
    })?;
    Ok(summary)
}

/// A version's manifest from its stored bytes (read once: they are also what is copied),
/// checked as the library checks it when it loads one: it opens under its key, hashes to its
/// name and describes the version its timeline records.
fn version_manifest(
    library: &Library,
    timeline: &Timeline,
    record: &crate::timeline::VersionRecord,
    key: &str,
    stored: &[u8],
) -> Result<Manifest> {
    let plain = library.unseal(key, stored.to_vec())?;
    if library.manifest_name(&plain) != record.manifest {
        return Err(LibraryError::Tampered {
            key: key.to_string(),
        });
    }
    let manifest = Manifest::parse(key, &plain)?;
    if manifest.header.name != timeline.name
        || manifest.header.digest != record.digest
        || manifest.header.size != record.size
    {
        return Err(LibraryError::Corrupt {
            key: key.to_string(),
            offset: 0,
            field: "header",
            problem: format!(
                "does not describe {}@{} as its timeline records it",
                timeline.name, record.version
            ),
        });
    }
    library.check_trusted(&manifest, &format!("{}@{}", timeline.name, record.version))?;
    Ok(manifest)
}

/// `timeline` with the stamps of `site`'s own events removed (how that site writes them).
fn unstamp(mut timeline: Timeline, site: &str) -> Timeline {
    for event in &mut timeline.events {
        if event.site.as_deref() == Some(site) {
            event.site = None;
        }
    }
    timeline
}

/// An encrypted library without its key: copy every chunk and manifest the destination
/// lacks, then the timelines it can place without reading them.
fn sync_opaque(
    a: &Side,
    b: &Side,
    options: &SyncOptions,
    progress: &dyn Progress,
    report: &mut SyncReport,
    record: &mut PeerRecord,
    held: &mut Option<Box<dyn Send>>,
) -> Result<()> {
    if !options.dry_run {
        *held = Some(Box::new(PlainMarker::write(Arc::clone(&b.store))?));
    }
    progress.phase("listing");
    // Timelines first: every chunk a listed timeline names was stored before it.
    let a_items = a.store.list("items/")?;
    let (b_chunks, a_chunks) = join(|| b.store.list("chunks/"), || a.store.list("chunks/"));
    let b_chunks: HashMap<String, u64> = b_chunks?.into_iter().map(|m| (m.key, m.size)).collect();
    let mut jobs = Vec::new();
    for meta in a_chunks? {
        if let Some(size) = b_chunks.get(&meta.key) {
            report.chunks_skipped += 1;
            report.bytes_skipped += size;
        } else {
            jobs.push(ChunkJob {
                key: meta.key,
                plain: None,
                size: meta.size,
            });
        }
    }
    let total: u64 = jobs.iter().map(|j| j.size).sum();
    report.chunks_needed = jobs.len() as u64;
    report.pending_chunks = jobs.len() as u64;
    report.pending_bytes = total;
    if options.dry_run {
        return Ok(());
    }
    progress.phase("copying chunks");
    progress.set_total(total);
    let check = |job: &ChunkJob, stored: &[u8]| check_opaque(job, stored);
    let copier = Copier::new(
        a.store.as_ref(),
        b.store.as_ref(),
        &check,
        options,
        progress,
    );
    let (arrived, failed) = copier.copy(&jobs);
    report.chunks_sent = copier.sent.load(Ordering::Relaxed);
    report.bytes_sent = copier.bytes.load(Ordering::Relaxed);
    report.chunks_verified = copier.verified.load(Ordering::Relaxed);
    let arrived: HashSet<String> = arrived.into_iter().collect();
    report.pending_chunks -= arrived.len() as u64;
    report.pending_bytes -= jobs
        .iter()
        .filter(|j| arrived.contains(&j.key))
        .map(|j| j.size)
        .sum::<u64>();
    if !failed.is_empty() {
        // Which versions need the failed chunks is sealed: place no timeline this run.
        report
            .errors
            .push(format!("{} chunks failed: {}", failed.len(), failed[0]));
        return Ok(());
    }
    b.store.flush()?;
    let (b_manifests, a_manifests) =
        join(|| b.store.list("manifests/"), || a.store.list("manifests/"));
    let b_manifests: HashSet<String> = b_manifests?.into_iter().map(|m| m.key).collect();
    let missing: Vec<String> = a_manifests?
        .into_iter()
        .map(|m| m.key)
        .filter(|key| !b_manifests.contains(key))
        .collect();
    for outcome in parallel_map(&missing, METADATA_PARALLEL, |key| {
        match a
            .store
            .get(key, MAX_MANIFEST_BYTES + SEAL_OVERHEAD as u64)?
        {
            Some(bytes) => b.store.put_if_absent(key, &bytes).map(Some),
            None => Ok(None),
        }
    }) {
        if outcome? == Some(PutOutcome::Written) {
            report.manifests_copied += 1;
        }
    }
    b.store.flush()?;
    progress.phase("placing timelines");
    let limit = MAX_TIMELINE_BYTES + SEAL_OVERHEAD as u64;
    for meta in a_items {
        let Some(source) = a.store.get(&meta.key, limit)? else {
            continue;
        };
        let hash = hex::encode(Sha256::digest(&source));
        let outcome = match b.store.get_tagged(&meta.key, limit)? {
            None => b.store.put_if_absent(&meta.key, &source)?,
            Some(existing) if existing.bytes == source => {
                record.written.insert(meta.key.clone(), hash);
                continue;
            }
            Some(existing) => {
                let ours = hex::encode(Sha256::digest(&existing.bytes));
                if record.written.get(&meta.key) == Some(&ours) {
                    // Unchanged since this sync wrote it: the source's is newer.
                    b.store.put_if_match(&meta.key, &source, &existing.etag)?
                } else {
                    report.conflicts.push(format!(
                        "{}: changed on both sides; sync with --key to merge it",
                        meta.key
                    ));
                    continue;
                }
            }
        };
        if outcome == PutOutcome::Written {
            record.written.insert(meta.key.clone(), hash);
            report.items.push(ItemSync {
                name: meta.key.clone(),
                versions_added: 0,
                events_added: 0,
                current: None,
                removed: false,
            });
        } else {
            report.conflicts.push(format!(
                "{}: changed on the destination meanwhile",
                meta.key
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("debian-*", "debian-12.iso"));
        assert!(glob_match("*.iso", "debian-12.iso"));
        assert!(glob_match("d?bian*", "debian"));
        assert!(!glob_match("debian", "debian-12"));
        assert!(!glob_match("*.qcow2", "debian-12.iso"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn parallel_map_keeps_the_order_of_its_items() {
        let items: Vec<u64> = (0..200).collect();
        let doubled = parallel_map(&items, 16, |&n| {
            std::thread::sleep(Duration::from_micros(200 - n));
            n * 2
        });
        assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_byte_budget_bounds_the_bytes_in_flight() {
        let budget = ByteBudget::new(250);
        let held = AtomicU64::new(0);
        let most = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let taken = budget.take(100);
                        let now = held.fetch_add(taken, Ordering::SeqCst) + taken;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        held.fetch_sub(taken, Ordering::SeqCst);
                        budget.give(taken);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 200);
        // A chunk larger than the whole budget still passes, alone.
        assert_eq!(budget.take(1000), 250);
        budget.give(250);
    }

    #[test]
    fn a_merge_planned_on_a_stale_timeline_keeps_what_the_destination_wrote_since() {
        const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let dir = tempfile::tempdir().unwrap();
        let config = OpenConfig::folder(dir.path().join("b"), "test@b");
        let lib = Library::init(&config, &crate::location::InitOptions::default()).unwrap();
        let event = |minute: i64, note: &str, site: Option<&str>| Event {
            time: jiff::Timestamp::from_second(1_700_000_000 + minute * 60).unwrap(),
            actor: "test".into(),
            kind: EventKind::Remove,
            version: None,
            note: Some(note.into()),
            site: site.map(str::to_string),
        };
        let notes = |lib: &Library| -> Vec<String> {
            let (timeline, _) = lib.load_timeline("disk").unwrap().unwrap();
            timeline
                .events
                .iter()
                .filter_map(|e| e.note.clone())
                .collect()
        };
        let mut remote = Timeline::new("disk");
        remote.events.push(event(2, "from a", Some(A)));

        // Planned while the item was absent on B; B created it meanwhile.
        lib.update_timeline("disk", |_| {
            let mut timeline = Timeline::new("disk");
            timeline.events.push(event(0, "created meanwhile", None));
            Ok((timeline, ()))
        })
        .unwrap();
        merge_into(&lib, B, &remote, A, None).unwrap().unwrap();
        assert_eq!(notes(&lib), ["created meanwhile", "from a"]);

        // Planned on B's timeline as it was; B changed it before the swap.
        let known = lib.load_timeline("disk").unwrap().unwrap();
        lib.update_timeline("disk", |current| {
            let mut timeline = current.unwrap();
            timeline.events.push(event(3, "changed meanwhile", None));
            Ok((timeline, ()))
        })
        .unwrap();
        remote.events.push(event(4, "again from a", Some(A)));
        merge_into(&lib, B, &remote, A, Some(known))
            .unwrap()
            .unwrap();
        assert_eq!(
            notes(&lib),
            [
                "created meanwhile",
                "from a",
                "changed meanwhile",
                "again from a"
            ]
        );

        // Planned on the current timeline: one conditional write, nothing lost either.
        let known = lib.load_timeline("disk").unwrap().unwrap();
        remote.events.push(event(5, "third from a", Some(A)));
        merge_into(&lib, B, &remote, A, Some(known))
            .unwrap()
            .unwrap();
        assert_eq!(notes(&lib).len(), 5);
        // Nothing new: no write at all.
        let known = lib.load_timeline("disk").unwrap().unwrap();
        assert!(merge_into(&lib, B, &remote, A, Some(known))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_throttle_spreads_transfers_over_time() {
        let throttle = Throttle {
            bytes_per_second: 1_000_000.0,
            next: Mutex::new(Instant::now()),
        };
        let start = Instant::now();
        for _ in 0..5 {
            throttle.wait(50_000);
        }
        // Four transfers of 50 ms each had to wait for their slot (the first starts at once).
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }
}
