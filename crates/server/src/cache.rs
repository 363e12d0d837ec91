//! The daemon's shared chunk cache: decoded chunks kept in memory (quick_cache, weighted by
//! bytes, with its scan-resistant CLOCK-Pro admission), single-flight loads, and an optional
//! bounded on-disk tier for object-store libraries.
//!
//! Chunks are content-addressed, so one entry serves every version, export and client holding
//! that chunk. Every chunk read back from the disk tier is checked against its digest; a bad
//! file is deleted and the chunk loaded from the library again.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, GuardResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use sha2::{Digest, Sha256};
use vmedia_library::{ChunkCache, Result as LibraryResult};

/// The default memory budget (`--cache-size`).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// The average chunk size the library writes, to size the cache's index.
const AVERAGE_CHUNK_BYTES: u64 = 256 << 10;
/// Bytes counted per entry on top of its data: the Arc, the key and the index slot.
const ENTRY_OVERHEAD: u64 = 128;
/// Suffix of disk-tier files being written (never read as chunks; removed at open).
const PARTIAL_SUFFIX: &str = ".part";

/// Latency histogram bucket bounds in seconds (50 us .. 10 s), shared with `metrics`.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot counts values above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (then +Inf), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0u64;
        let mut cumulative = Vec::with_capacity(self.counts.len());
        for count in &self.counts {
            total = total.saturating_add(count.load(Ordering::Relaxed));
            cumulative.push(total);
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

/// Counters the metrics render.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    /// Chunks fetched from the library (the object store or folder).
    pub backend_reads: AtomicU64,
    pub backend_read_bytes: AtomicU64,
    pub backend_latency: Histogram,
    pub disk_hits: AtomicU64,
}

#[derive(Clone)]
struct ChunkWeighter;

impl Weighter<[u8; 32], Arc<Vec<u8>>> for ChunkWeighter {
    fn weight(&self, _key: &[u8; 32], value: &Arc<Vec<u8>>) -> u64 {
        value.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone)]
struct CountEvictions(Arc<CacheStats>);

impl Lifecycle<[u8; 32], Arc<Vec<u8>>> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut (), _key: [u8; 32], _value: Arc<Vec<u8>>) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Memory = Cache<[u8; 32], Arc<Vec<u8>>, ChunkWeighter, DefaultHashBuilder, CountEvictions>;

/// Sizes of the cache tiers.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub memory_bytes: u64,
    /// The on-disk tier: a folder and its byte budget.
    pub disk: Option<(PathBuf, u64)>,
}

/// The shared cache. `Send + Sync`; hand it to readers as `Arc<dyn ChunkCache>`.
pub struct SharedCache {
    memory: Memory,
    capacity: u64,
    stats: Arc<CacheStats>,
    disk: Option<DiskTier>,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SharedCache {
    pub fn new(options: &CacheOptions) -> io::Result<SharedCache> {
        let stats = Arc::new(CacheStats::default());
        let capacity = options.memory_bytes.max(1);
        let items = usize::try_from((capacity / AVERAGE_CHUNK_BYTES).max(16)).unwrap_or(16);
        let built = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(capacity)
            .build()
            .map_err(|e| io::Error::other(format!("cache options: {e:?}")))?;
        let memory = Cache::with_options(
            built,
            ChunkWeighter,
            DefaultHashBuilder::default(),
            CountEvictions(Arc::clone(&stats)),
        );
        let disk = match &options.disk {
            Some((dir, limit)) => Some(DiskTier::open(dir, *limit)?),
            None => None,
        };
        Ok(SharedCache {
            memory,
            capacity,
            stats,
            disk,
        })
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// Bytes held in memory (data plus per-entry overhead).
    pub fn bytes(&self) -> u64 {
        self.memory.weight()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the chunk is in memory now (no load, no effect on admission).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.memory.peek(digest).is_some()
    }

    /// The chunk if memory holds it now; never loads and never waits for a load in progress,
    /// so the event loop may call it. Not counted: see `count_hits`.
    pub fn get_now(&self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.memory.get(digest)
    }

    /// Counts hits served through `get_now`.
    pub fn count_hits(&self, hits: u64) {
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
    }

    /// The chunk, and whether it came from memory (a hit).
    pub fn lookup(
        &self,
        digest: &[u8; 32],
        length: u32,
        load: &mut dyn FnMut() -> LibraryResult<Arc<Vec<u8>>>,
    ) -> LibraryResult<(Arc<Vec<u8>>, bool)> {
        // One loader per digest: every other thread missing the same chunk waits on the
        // guard and then takes the loaded value (500 clients, one backend read).
        let guard = match self.memory.get_value_or_guard(digest, None) {
            GuardResult::Value(value) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((value, true));
            }
            GuardResult::Guard(guard) => guard,
            // Waiting without a timeout never times out; load on our own if it ever does.
            GuardResult::Timeout => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return Ok((self.load_through(digest, length, load)?, false));
            }
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let value = self.load_through(digest, length, load)?;
        let _ = guard.insert(Arc::clone(&value));
        Ok((value, false))
    }

    /// The disk tier, else the library (whose result then goes to the disk tier).
    fn load_through(
        &self,
        digest: &[u8; 32],
        length: u32,
        load: &mut dyn FnMut() -> LibraryResult<Arc<Vec<u8>>>,
    ) -> LibraryResult<Arc<Vec<u8>>> {
        if let Some(disk) = &self.disk {
            if let Some(data) = disk.get(digest, length) {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::new(data));
            }
        }
        let started = Instant::now();
        let data = load()?;
        self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .backend_read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.stats.backend_latency.observe(started.elapsed());
        if let Some(disk) = &self.disk {
            // A full or failing disk tier only costs speed: the chunk is served anyway.
            if let Err(error) = disk.put(digest, &data) {
                tracing::warn!(%error, "cannot keep a chunk in the disk cache");
            }
        }
        Ok(data)
    }
}

/// Derived data (a disk export's decoded blocks), beside the library chunks: keyed by a
/// digest the caller derives from what the data is made of, so it is never a chunk's.
impl SharedCache {
    /// The derived entry `key`, decoded by `decode` on a miss (single flight: other readers of
    /// the same key wait for it). Memory only: the disk tier checks files against their
    /// SHA-256, which derived data does not have. Counted as cache hits and misses, not as
    /// backend reads (`decode` reads chunks through this cache itself). With `wait` false,
    /// a key another thread is decoding answers `Ok(None)` at once (read-ahead skips it).
    pub fn derived(
        &self,
        key: &[u8; 32],
        wait: bool,
        decode: &mut dyn FnMut() -> io::Result<Arc<Vec<u8>>>,
    ) -> io::Result<Option<(Arc<Vec<u8>>, bool)>> {
        let timeout = if wait { None } else { Some(Duration::ZERO) };
        let guard = match self.memory.get_value_or_guard(key, timeout) {
            GuardResult::Value(value) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some((value, true)));
            }
            GuardResult::Guard(guard) => guard,
            GuardResult::Timeout => return Ok(None),
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let value = decode()?;
        let _ = guard.insert(Arc::clone(&value));
        Ok(Some((value, false)))
    }
}

impl ChunkCache for SharedCache {
    fn get_or_load(
        &self,
        digest: &[u8; 32],
        length: u32,
        load: &mut dyn FnMut() -> LibraryResult<Arc<Vec<u8>>>,
    ) -> LibraryResult<Arc<Vec<u8>>> {
        self.lookup(digest, length, load).map(|(data, _)| data)
    }

    fn get_if_cached(&self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.get_now(digest)
    }

    fn served_from_cache(&self, hits: u64) {
        self.count_hits(hits);
    }
}

/// Per-export hit and miss counts in front of the shared cache.
#[derive(Debug, Default)]
pub struct ExportCacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The shared cache as one export sees it: counts that export's hits and misses.
pub struct ExportCache {
    pub shared: Arc<SharedCache>,
    pub stats: Arc<ExportCacheStats>,
}

impl ChunkCache for ExportCache {
    fn get_or_load(
        &self,
        digest: &[u8; 32],
        length: u32,
        load: &mut dyn FnMut() -> LibraryResult<Arc<Vec<u8>>>,
    ) -> LibraryResult<Arc<Vec<u8>>> {
        let (data, hit) = self.shared.lookup(digest, length, load)?;
        let counter = if hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    fn get_if_cached(&self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.shared.get_now(digest)
    }

    fn served_from_cache(&self, hits: u64) {
        self.shared.count_hits(hits);
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The on-disk tier

struct DiskTier {
    dir: PathBuf,
    limit: u64,
    index: Mutex<DiskIndex>,
}

/// Files in the tier, oldest first (by the order they were written; at open, by mtime).
#[derive(Default)]
struct DiskIndex {
    by_age: BTreeMap<u64, ([u8; 32], u64)>,
    age_of: HashMap<[u8; 32], u64>,
    bytes: u64,
    next_age: u64,
}

impl DiskIndex {
    fn add(&mut self, digest: [u8; 32], size: u64) {
        if self.age_of.contains_key(&digest) {
            return;
        }
        let age = self.next_age;
        self.next_age += 1;
        self.by_age.insert(age, (digest, size));
        self.age_of.insert(digest, age);
        self.bytes = self.bytes.saturating_add(size);
    }

    fn remove(&mut self, digest: &[u8; 32]) {
        if let Some(age) = self.age_of.remove(digest) {
            if let Some((_, size)) = self.by_age.remove(&age) {
                self.bytes = self.bytes.saturating_sub(size);
            }
        }
    }
}

impl DiskTier {
    fn open(dir: &Path, limit: u64) -> io::Result<DiskTier> {
        fs::create_dir_all(dir).map_err(|e| annotate(e, "create the disk cache", dir))?;
        let mut found = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| annotate(e, "list the disk cache", dir))? {
            let item = item?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(PARTIAL_SUFFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(digest) = parse_hex_digest(&name) else {
                continue;
            };
            let meta = item.metadata()?;
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, digest, meta.len()));
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        let mut index = DiskIndex::default();
        for (_, digest, size) in found {
            index.add(digest, size);
        }
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
        };
        tier.evict(0);
        Ok(tier)
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(digest))
    }

    /// The chunk if a file holds exactly its bytes; a damaged file is removed.
    fn get(&self, digest: &[u8; 32], length: u32) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let data = fs::read(&path).ok()?;
        let actual: [u8; 32] = Sha256::digest(&data).into();
        if data.len() != length as usize || &actual != digest {
            tracing::warn!(path = %path.display(), "damaged disk cache file removed");
            let _ = fs::remove_file(&path);
            self.lock().remove(digest);
            return None;
        }
        Some(data)
    }

    fn put(&self, digest: &[u8; 32], data: &[u8]) -> io::Result<()> {
        let size = data.len() as u64;
        if size > self.limit || self.lock().age_of.contains_key(digest) {
            return Ok(());
        }
        self.evict(size);
        let path = self.path(digest);
        let partial = self
            .dir
            .join(format!("{}{PARTIAL_SUFFIX}", hex::encode(digest)));
        let mut file = fs::File::create(&partial)?;
        file.write_all(data)?;
        drop(file);
        fs::rename(&partial, &path)?;
        self.lock().add(*digest, size);
        Ok(())
    }

    /// Removes the oldest files until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) {
        loop {
            let victim = {
                let mut index = self.lock();
                if index.bytes.saturating_add(incoming) <= self.limit {
                    return;
                }
                let Some((_, (digest, _))) = index.by_age.iter().next().map(|(a, v)| (*a, *v))
                else {
                    return;
                };
                index.remove(&digest);
                digest
            };
            let _ = fs::remove_file(self.path(&victim));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_hex_digest(name: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(name).ok()?;
    bytes.try_into().ok()
}

fn annotate(error: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot {action} {}: {error}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn chunk(seed: u8, len: usize) -> ([u8; 32], Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let digest: [u8; 32] = Sha256::digest(&data).into();
        (digest, data)
    }

    fn memory_only(bytes: u64) -> SharedCache {
        SharedCache::new(&CacheOptions {
            memory_bytes: bytes,
            disk: None,
        })
        .unwrap()
    }

    #[test]
    fn concurrent_misses_of_one_chunk_load_it_once() {
        let cache = Arc::new(memory_only(64 << 20));
        let (digest, data) = chunk(3, 1 << 16);
        let loads = Arc::new(AtomicU64::new(0));
        let threads = 32;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, loads, barrier, data) = (
                    Arc::clone(&cache),
                    Arc::clone(&loads),
                    Arc::clone(&barrier),
                    data.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let got = cache
                        .get_or_load(&digest, data.len() as u32, &mut || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // Slow backend: every other thread arrives while this one loads.
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(Arc::new(data.clone()))
                        })
                        .unwrap();
                    assert_eq!(*got, data);
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().backend_reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_streaming_scan_does_not_evict_the_hot_set() {
        // 4 MiB of cache; a hot set of 1 MiB read repeatedly, then a 64 MiB one-pass scan.
        let cache = memory_only(4 << 20);
        let hot: Vec<_> = (1..=16u8).map(|s| chunk(s, 64 << 10)).collect();
        let load_counts = AtomicU64::new(0);
        let read = |digest: &[u8; 32], data: &Vec<u8>| {
            cache
                .get_or_load(digest, data.len() as u32, &mut || {
                    load_counts.fetch_add(1, Ordering::SeqCst);
                    Ok(Arc::new(data.clone()))
                })
                .unwrap();
        };
        for _ in 0..4 {
            for (digest, data) in &hot {
                read(digest, data);
            }
        }
        for i in 0..1024u32 {
            let data: Vec<u8> = i.to_le_bytes().repeat(16 << 10);
            let digest: [u8; 32] = Sha256::digest(&data).into();
            read(&digest, &data);
        }
        let hot_still = hot.iter().filter(|(d, _)| cache.contains(d)).count();
        assert!(
            hot_still >= hot.len() * 3 / 4,
            "only {hot_still} of {} hot chunks survived the scan",
            hot.len()
        );
        assert!(cache.bytes() <= cache.capacity());
        assert!(cache.stats().evictions.load(Ordering::SeqCst) > 900);
    }

    #[test]
    fn the_disk_tier_survives_a_restart_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let options = CacheOptions {
            memory_bytes: 1 << 20,
            disk: Some((dir.path().join("chunks"), 1 << 20)),
        };
        let (digest, data) = chunk(7, 100_000);
        let (other, other_data) = chunk(9, 100_000);
        {
            let cache = SharedCache::new(&options).unwrap();
            for (d, v) in [(&digest, &data), (&other, &other_data)] {
                cache
                    .get_or_load(d, v.len() as u32, &mut || Ok(Arc::new(v.clone())))
                    .unwrap();
            }
        }
        // Damage one file: it must be reloaded, never served.
        let damaged = dir.path().join("chunks").join(hex::encode(other));
        let mut bytes = fs::read(&damaged).unwrap();
        bytes[10] ^= 1;
        fs::write(&damaged, bytes).unwrap();
        let cache = SharedCache::new(&options).unwrap();
        let got = cache
            .get_or_load(&digest, data.len() as u32, &mut || {
                panic!("the disk tier should have had it")
            })
            .unwrap();
        assert_eq!(*got, data);
        let reloads = AtomicU64::new(0);
        let got = cache
            .get_or_load(&other, other_data.len() as u32, &mut || {
                reloads.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(other_data.clone()))
            })
            .unwrap();
        assert_eq!(*got, other_data);
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().disk_hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_disk_tier_evicts_oldest_first_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SharedCache::new(&CacheOptions {
            memory_bytes: 1 << 20,
            disk: Some((dir.path().to_path_buf(), 250_000)),
        })
        .unwrap();
        let chunks: Vec<_> = (1..=4u8).map(|s| chunk(s, 100_000)).collect();
        for (d, v) in &chunks {
            cache
                .get_or_load(d, v.len() as u32, &mut || Ok(Arc::new(v.clone())))
                .unwrap();
        }
        let present: Vec<bool> = chunks
            .iter()
            .map(|(d, _)| dir.path().join(hex::encode(d)).exists())
            .collect();
        assert_eq!(present, [false, false, true, true]);
    }
}
