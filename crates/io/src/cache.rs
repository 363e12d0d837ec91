//! A shared, bytes-bounded block cache that any [`ReadAt`] source can sit behind.
//!
//! One [`BlockCache`] (a capacity in bytes and a block size) is shared by many
//! [`CachedSource`]s; each source reads through it in whole, aligned blocks. This is the seed
//! of the serving daemon's cache: hundreds of VMs reading the same few images.
//!
//! Design:
//! - **Sharded**: blocks are spread over up to [`MAX_SHARDS`] shards by a hash of (source,
//!   block), each behind its own mutex, so concurrent readers rarely meet on a lock. Locks are
//!   never held during I/O: a miss reads the block from the source unlocked, then inserts it
//!   (two readers missing the same block at once both read it; the second insert is dropped).
//! - **S3-FIFO eviction** per shard (Yang et al., SOSP 2023): new blocks enter a small FIFO
//!   (a tenth of the shard); a block read again while there moves to the main FIFO, one that
//!   is not is evicted and remembered in a ghost FIFO (keys only), and a ghost that is read
//!   again enters main directly. Main evicts with a 2-bit frequency, CLOCK-style. Chosen
//!   because serving reads are scan-heavy (a VM reading a whole image once, a checksum pass)
//!   next to a small hot set (boot sectors, directory blocks, the kernel): a scan only churns
//!   the small FIFO and never flushes the hot set, which LRU would; hits only set a counter
//!   (no list moves), which keeps the critical section tiny.
//! - **Bounded by bytes**: every shard holds at most its share of the capacity, counting the
//!   real length of each block (a source's last block may be short). Ghost entries hold no data.
//! - **Counters**: hits, misses, insertions, evictions and bytes held, read as a typed
//!   [`CacheStats`] snapshot.
//!
//! ```
//! use vmedia_io::{BlockCache, CachedSource, ReadAt};
//!
//! // 64 MiB of 64 KiB blocks, shared by every image served.
//! let cache = BlockCache::new(64 * 1024 * 1024, 64 * 1024).unwrap();
//! let image = CachedSource::new(vec![7u8; 1 << 20], cache.clone()).unwrap();
//! let mut sector = [0u8; 512];
//! image.read_exact_at(&mut sector, 4096).unwrap(); // a miss: the block is read and kept
//! image.read_exact_at(&mut sector, 4608).unwrap(); // the same block: a hit
//! let stats = cache.stats();
//! assert_eq!((stats.hits, stats.misses), (1, 1));
//! assert!(stats.bytes <= stats.capacity_bytes);
//! ```

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::read_at::ReadAt;

/// Most shards a cache is split into: beyond the core counts vmedia runs on, more shards only
/// waste capacity on rounding.
pub const MAX_SHARDS: usize = 64;
/// A shard is only split off when it can still hold this many blocks, so a small cache is not
/// cut into shards too small to keep a hot set.
const MIN_BLOCKS_PER_SHARD: u64 = 64;
/// Largest block size accepted: a block is read and copied whole on every miss.
pub const MAX_BLOCK_SIZE: usize = 16 * 1024 * 1024;
/// The small FIFO's share of a shard (S3-FIFO's 10%).
const SMALL_SHARE_PERCENT: u64 = 10;
/// Largest access frequency kept per block (S3-FIFO's 2 bits).
const MAX_FREQUENCY: u8 = 3;

/// Where a block comes from: the source's id and the block's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    source: u64,
    block: u64,
}

/// A snapshot of a cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Block lookups served from the cache.
    pub hits: u64,
    /// Block lookups that read the source.
    pub misses: u64,
    /// Blocks added to the cache.
    pub insertions: u64,
    /// Blocks dropped to make room.
    pub evictions: u64,
    /// Bytes of block data held now.
    pub bytes: u64,
    /// Blocks held now.
    pub blocks: u64,
    /// The configured capacity, in bytes.
    pub capacity_bytes: u64,
    /// The configured block size, in bytes.
    pub block_size: u64,
}

impl CacheStats {
    /// Hits over all lookups (0 before the first lookup).
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits.saturating_add(self.misses);
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

/// Why a cache could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("block size {0} is not between 1 byte and MAX_BLOCK_SIZE (16 MiB)")]
    BlockSize(usize),
}

struct Entry {
    data: Arc<[u8]>,
    frequency: u8,
    in_main: bool,
}

/// One shard: the map from keys to blocks and the three FIFOs of S3-FIFO.
struct Shard {
    capacity: u64,
    small_target: u64,
    map: HashMap<Key, Entry>,
    small: VecDeque<Key>,
    main: VecDeque<Key>,
    small_bytes: u64,
    main_bytes: u64,
    /// Recently evicted keys (with the sequence number that put them there), bounded by the
    /// number of blocks the shard can hold.
    ghost: VecDeque<(Key, u64)>,
    ghost_set: HashMap<Key, u64>,
    ghost_limit: usize,
    ghost_sequence: u64,
}

impl Shard {
    fn new(capacity: u64, block_size: u64) -> Shard {
        Shard {
            capacity,
            small_target: capacity / 100 * SMALL_SHARE_PERCENT,
            map: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghost_set: HashMap::new(),
            ghost_limit: usize::try_from(capacity / block_size.max(1)).unwrap_or(usize::MAX),
            ghost_sequence: 0,
        }
    }

    fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    fn get(&mut self, key: &Key) -> Option<Arc<[u8]>> {
        let entry = self.map.get_mut(key)?;
        entry.frequency = (entry.frequency + 1).min(MAX_FREQUENCY);
        Some(entry.data.clone())
    }

    /// Adds a block; returns how many blocks were evicted to make room, or `None` when the
    /// block was not added (already present, or larger than the shard).
    fn insert(&mut self, key: Key, data: Arc<[u8]>) -> Option<u64> {
        let len = data.len() as u64;
        if len > self.capacity || self.map.contains_key(&key) {
            return None;
        }
        let mut evicted = 0u64;
        while self.bytes() + len > self.capacity {
            if !self.evict_one() {
                return None;
            }
            evicted += 1;
        }
        let was_ghost = self.ghost_set.remove(&key).is_some();
        if was_ghost {
            self.main.push_back(key);
            self.main_bytes += len;
        } else {
            self.small.push_back(key);
            self.small_bytes += len;
        }
        self.map.insert(
            key,
            Entry {
                data,
                frequency: 0,
                in_main: was_ghost,
            },
        );
        Some(evicted)
    }

    /// Evicts one block (promoting and aging others on the way). False when the shard is
    /// empty.
    fn evict_one(&mut self) -> bool {
        loop {
            if self.small.is_empty() && self.main.is_empty() {
                return false;
            }
            if self.small_bytes > self.small_target || self.main.is_empty() {
                let Some(key) = self.small.pop_front() else {
                    continue;
                };
                let Some(entry) = self.map.get_mut(&key) else {
                    continue;
                };
                let len = entry.data.len() as u64;
                self.small_bytes -= len;
                if entry.frequency > 0 {
                    // Read again while new: part of the working set.
                    entry.frequency = 0;
                    entry.in_main = true;
                    self.main.push_back(key);
                    self.main_bytes += len;
                    continue;
                }
                self.map.remove(&key);
                self.remember_ghost(key);
                return true;
            }
            let Some(key) = self.main.pop_front() else {
                continue;
            };
            let Some(entry) = self.map.get_mut(&key) else {
                continue;
            };
            debug_assert!(entry.in_main);
            if entry.frequency > 0 {
                entry.frequency -= 1;
                self.main.push_back(key);
                continue;
            }
            let len = entry.data.len() as u64;
            self.main_bytes -= len;
            self.map.remove(&key);
            return true;
        }
    }

    fn remember_ghost(&mut self, key: Key) {
        if self.ghost_limit == 0 {
            return;
        }
        self.ghost_sequence += 1;
        self.ghost.push_back((key, self.ghost_sequence));
        self.ghost_set.insert(key, self.ghost_sequence);
        while self.ghost.len() > self.ghost_limit {
            if let Some((old, sequence)) = self.ghost.pop_front() {
                if self.ghost_set.get(&old) == Some(&sequence) {
                    self.ghost_set.remove(&old);
                }
            }
        }
    }
}

/// A bytes-bounded block cache shared by many sources (see the module docs).
pub struct BlockCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    block_size: usize,
    capacity_bytes: u64,
    next_source: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    insertions: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("shards", &self.shards.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks of `block_size` bytes.
    pub fn new(capacity_bytes: u64, block_size: usize) -> Result<Arc<BlockCache>, CacheError> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(CacheError::BlockSize(block_size));
        }
        let block = block_size as u64;
        let mut shards = 1usize;
        while shards < MAX_SHARDS
            && capacity_bytes / (shards as u64 * 2) >= block * MIN_BLOCKS_PER_SHARD
        {
            shards *= 2;
        }
        let per_shard = capacity_bytes / shards as u64;
        Ok(Arc::new(BlockCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(per_shard, block)))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            block_size,
            capacity_bytes,
            next_source: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            insertions: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }))
    }

    /// The block size sources read in.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// A snapshot of the counters (each counter is exact; together they are not one atomic
    /// instant while readers run).
    pub fn stats(&self) -> CacheStats {
        let (mut bytes, mut blocks) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            bytes += shard.bytes();
            blocks += shard.map.len() as u64;
        }
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            insertions: self.insertions.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes,
            blocks,
            capacity_bytes: self.capacity_bytes,
            block_size: self.block_size as u64,
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        let index = (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1);
        &self.shards[index]
    }

    fn get(&self, key: &Key) -> Option<Arc<[u8]>> {
        let found = lock(self.shard(key)).get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn insert(&self, key: Key, data: Arc<[u8]>) {
        let evicted = lock(self.shard(&key)).insert(key, data);
        if let Some(evicted) = evicted {
            self.insertions.fetch_add(1, Ordering::Relaxed);
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }
}

/// A poisoned shard only means another reader panicked mid-update of plain counters and
/// queues; the cache stays usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A [`ReadAt`] source read through a shared [`BlockCache`].
///
/// The source is assumed not to change while cached (images being served are read-only);
/// its size is read once, when the `CachedSource` is made.
pub struct CachedSource<S: ReadAt> {
    inner: S,
    cache: Arc<BlockCache>,
    id: u64,
    size: u64,
}

impl<S: ReadAt> std::fmt::Debug for CachedSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSource")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish()
    }
}

impl<S: ReadAt> CachedSource<S> {
    /// Puts `inner` behind `cache`.
    pub fn new(inner: S, cache: Arc<BlockCache>) -> io::Result<CachedSource<S>> {
        let size = inner.size()?;
        let id = cache.next_source.fetch_add(1, Ordering::Relaxed);
        Ok(CachedSource {
            inner,
            cache,
            id,
            size,
        })
    }

    /// The source behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The shared cache.
    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// Block `index` of the source, from the cache or read (and cached) now.
    fn block(&self, index: u64) -> io::Result<Arc<[u8]>> {
        let key = Key {
            source: self.id,
            block: index,
        };
        if let Some(data) = self.cache.get(&key) {
            return Ok(data);
        }
        let block_size = self.cache.block_size as u64;
        let start = index
            .checked_mul(block_size)
            .ok_or_else(|| io::Error::other(format!("block {index} lies past any offset")))?;
        let len = self.size.saturating_sub(start).min(block_size) as usize;
        let mut data = vec![0u8; len];
        let mut filled = 0usize;
        while filled < len {
            match self
                .inner
                .read_at(&mut data[filled..], start + filled as u64)
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the source ended at {:#x}, inside the {:#x} bytes it reported",
                            start + filled as u64,
                            self.size
                        ),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let data: Arc<[u8]> = data.into();
        self.cache.insert(key, data.clone());
        Ok(data)
    }
}

impl<S: ReadAt> ReadAt for CachedSource<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (self.size - offset).min(buf.len() as u64) as usize;
        let block_size = self.cache.block_size as u64;
        let mut done = 0usize;
        while done < want {
            let at = offset + done as u64;
            let block = self.block(at / block_size)?;
            let within = (at % block_size) as usize;
            let n = (block.len().saturating_sub(within)).min(want - done);
            if n == 0 {
                break;
            }
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(done)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that counts the reads reaching it.
    struct Counting {
        data: Vec<u8>,
        reads: AtomicU64,
    }

    impl ReadAt for Counting {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.data.read_at(buf, offset)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.data.len() as u64)
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    /// A small deterministic generator (xorshift) for offsets.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn reads_match_the_source_at_any_offset_and_length() {
        let data = pattern(100_000, 7);
        let cache = BlockCache::new(64 * 1024, 4096).unwrap();
        let source = CachedSource::new(data.clone(), cache).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let offset = rng.next() % 101_000;
            let len = (rng.next() % 20_000) as usize;
            let mut got = vec![0u8; len];
            let n = source.read_at(&mut got, offset).unwrap();
            let start = (offset as usize).min(data.len());
            let end = (start + len).min(data.len());
            assert_eq!(n, end - start, "offset {offset} len {len}");
            assert_eq!(&got[..n], &data[start..end]);
        }
        let mut tail = [0u8; 10];
        source.read_exact_at(&mut tail, 99_990).unwrap();
        assert_eq!(&tail, &data[99_990..]);
    }

    #[test]
    fn a_second_read_is_a_hit_and_does_not_reach_the_source() {
        let inner = Counting {
            data: pattern(64 * 1024, 1),
            reads: AtomicU64::new(0),
        };
        let cache = BlockCache::new(1024 * 1024, 4096).unwrap();
        let source = CachedSource::new(inner, cache.clone()).unwrap();
        let mut buf = [0u8; 100];
        source.read_at(&mut buf, 5000).unwrap();
        source.read_at(&mut buf, 5100).unwrap();
        assert_eq!(source.inner().reads.load(Ordering::Relaxed), 1);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.insertions), (1, 1, 1));
        assert_eq!(stats.bytes, 4096);
        assert_eq!(stats.blocks, 1);
        assert!((stats.hit_ratio() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn sources_sharing_a_cache_do_not_see_each_others_blocks() {
        let cache = BlockCache::new(1024 * 1024, 512).unwrap();
        let a = CachedSource::new(vec![b'a'; 4096], cache.clone()).unwrap();
        let b = CachedSource::new(vec![b'b'; 4096], cache.clone()).unwrap();
        let mut buf = [0u8; 8];
        a.read_exact_at(&mut buf, 1024).unwrap();
        assert_eq!(&buf, b"aaaaaaaa");
        b.read_exact_at(&mut buf, 1024).unwrap();
        assert_eq!(&buf, b"bbbbbbbb");
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let capacity = 256 * 1024;
        let cache = BlockCache::new(capacity, 4096).unwrap();
        let sources: Vec<_> = (0..4)
            .map(|i| CachedSource::new(pattern(1024 * 1024 + 1000, i), cache.clone()).unwrap())
            .collect();
        let mut rng = Rng(42);
        let mut buf = vec![0u8; 10_000];
        for _ in 0..3000 {
            let source = &sources[(rng.next() % 4) as usize];
            source
                .read_at(&mut buf, rng.next() % (1024 * 1024))
                .unwrap();
            assert!(cache.stats().bytes <= capacity);
        }
        let stats = cache.stats();
        assert!(stats.evictions > 0, "{stats:?}");
        assert!(
            stats.bytes <= capacity && stats.bytes > capacity / 2,
            "{stats:?}"
        );
        assert_eq!(
            stats.insertions - stats.evictions,
            stats.blocks,
            "{stats:?}"
        );
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        // 64 hot blocks read over and over, then one pass over 10x the cache's size.
        let block = 4096usize;
        let cache = BlockCache::new(256 * block as u64, block).unwrap();
        let hot = CachedSource::new(pattern(64 * block, 3), cache.clone()).unwrap();
        let cold = CachedSource::new(pattern(2560 * block, 4), cache.clone()).unwrap();
        let mut buf = vec![0u8; block];
        for _ in 0..3 {
            for i in 0..64 {
                hot.read_exact_at(&mut buf, (i * block) as u64).unwrap();
            }
        }
        for i in 0..2560 {
            cold.read_exact_at(&mut buf, (i * block) as u64).unwrap();
        }
        let before = cache.stats();
        for i in 0..64 {
            hot.read_exact_at(&mut buf, (i * block) as u64).unwrap();
        }
        let after = cache.stats();
        let hits = after.hits - before.hits;
        assert!(hits >= 60, "only {hits} of 64 hot blocks survived the scan");
    }

    #[test]
    fn concurrent_readers_see_the_right_bytes() {
        let data = Arc::new(pattern(4 * 1024 * 1024, 9));
        let cache = BlockCache::new(512 * 1024, 4096).unwrap();
        let source = Arc::new(CachedSource::new(data.clone(), cache.clone()).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let source = source.clone();
                let data = data.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(t + 1);
                    let mut buf = vec![0u8; 9000];
                    for round in 0..2000 {
                        // Half the reads go to a small shared hot region.
                        let offset = if round % 2 == 0 {
                            rng.next() % 65_536
                        } else {
                            rng.next() % (data.len() as u64 - 9000)
                        };
                        source.read_exact_at(&mut buf, offset).unwrap();
                        let start = offset as usize;
                        assert_eq!(&buf[..], &data[start..start + 9000]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 512 * 1024, "{stats:?}");
        assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
        assert!(stats.hits + stats.misses >= 8 * 2000 * 3, "{stats:?}");
    }

    #[test]
    fn bad_block_sizes_are_refused() {
        assert_eq!(
            BlockCache::new(1024, 0).unwrap_err(),
            CacheError::BlockSize(0)
        );
        assert!(BlockCache::new(1024, MAX_BLOCK_SIZE + 1).is_err());
    }

    #[test]
    fn blocks_larger_than_a_shard_are_read_but_not_kept() {
        let cache = BlockCache::new(1000, 4096).unwrap();
        let source = CachedSource::new(pattern(10_000, 5), cache.clone()).unwrap();
        let mut buf = [0u8; 16];
        source.read_exact_at(&mut buf, 5000).unwrap();
        assert_eq!(&buf[..], &pattern(10_000, 5)[5000..5016]);
        assert_eq!(cache.stats().bytes, 0);
    }
}
