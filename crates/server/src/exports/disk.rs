//! A disk image in the library (qcow2, VMDK, VHD, VHDX, raw) served as its virtual content.
//! Read-only; a disk that names a backing file or extent files is refused, since a library
//! version must be whole on its own (and a name inside it must never open a server file).
//!
//! Blocks whose bytes must be decoded (compressed qcow2 clusters, compressed VMDK grains: the
//! format reports no host offset for them) are decoded once into the shared cache, keyed by
//! the version's digest and the block's index, so every client and every later read of the
//! block finds it decoded. A reader going through the disk in order has the next blocks
//! decoded ahead of it by a small pool (`ReadAhead`), in parallel with its own requests. Zero
//! and unallocated blocks cost no decode and no cache space; stored blocks are read directly.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use vmedia_disk::image::{BlockKind, DiskImage, OpenOptions, ReferencePolicy};

use super::version::{MAX_EXTENTS, MAX_REQUEST_BYTES};
use super::ExportReader;
use crate::cache::SharedCache;
use crate::export::{BlockSizes, Export, ExportError, Extent};

/// Smallest and largest decoded block: the image's cluster (its unit of compression) within
/// these bounds, so a 4 KiB read never decodes more than one cluster and an entry stays a
/// reasonable share of a small cache.
const MIN_BLOCK: u64 = 4096;
const MAX_BLOCK: u64 = 2 << 20;
/// Block size when the format has no cluster (VHD, VHDX, raw: nothing to decode anyway).
const DEFAULT_BLOCK: u64 = 64 << 10;
/// How far ahead of an in-order reader blocks are decoded: enough to keep both cores busy
/// while the reader copies, small enough not to flush a small cache with guesses.
const READ_AHEAD_BYTES: u64 = 4 << 20;
/// Threads decoding ahead, shared by every disk export (the machine's decode budget).
pub const READ_AHEAD_THREADS: usize = 2;
/// Blocks queued for the read-ahead threads; beyond this, new guesses are dropped.
const READ_AHEAD_QUEUE: usize = 256;
/// Recently read blocks remembered to tell an in-order reader from a random one.
const RECENT_BLOCKS: usize = 16;

pub struct DiskExport {
    name: String,
    inner: Arc<DiskInner>,
}

struct DiskInner {
    image: Box<dyn DiskImage>,
    size: u64,
    blocks: Option<Blocks>,
}

/// The decoded-block cache of one disk export.
struct Blocks {
    cache: Arc<SharedCache>,
    /// `sha256:HEX` of the version's bytes: with the block index, what a block is made of.
    version: String,
    block: u64,
    ahead: Arc<ReadAhead>,
    /// The blocks read last (a ring), to see whether a read continues an earlier one.
    recent: Mutex<([u64; RECENT_BLOCKS], usize)>,
    /// Read-ahead was queued up to (not including) this block.
    queued_until: AtomicU64,
}

/// What one block holds for a read.
enum Block {
    /// Zero or unallocated for the whole block.
    Zero,
    /// Decoded bytes (the block's length).
    Decoded(Arc<Vec<u8>>),
    /// Stored as is (or partly zero, partly not): read through the image directly.
    Direct,
}

impl DiskExport {
    /// Opens `source` (a version's bytes) as a disk image named `name`; every read decodes.
    pub fn open(name: String, source: Arc<dyn Export>) -> Result<DiskExport, ExportError> {
        DiskExport::open_with(name, source, None)
    }

    /// Opens `source` as `open` does, keeping decoded blocks in `cache` (keyed by `digest`,
    /// the version's `sha256:HEX`) and decoding ahead of in-order readers with `ahead`.
    pub fn open_cached(
        name: String,
        source: Arc<dyn Export>,
        cache: Arc<SharedCache>,
        digest: String,
        ahead: Arc<ReadAhead>,
    ) -> Result<DiskExport, ExportError> {
        DiskExport::open_with(name, source, Some((cache, digest, ahead)))
    }

    fn open_with(
        name: String,
        source: Arc<dyn Export>,
        cache: Option<(Arc<SharedCache>, String, Arc<ReadAhead>)>,
    ) -> Result<DiskExport, ExportError> {
        let unavailable = |reason: String| ExportError::Unavailable {
            name: name.clone(),
            reason,
        };
        let options = OpenOptions {
            references: ReferencePolicy::None,
            skip_backing: true,
            ..OpenOptions::default()
        };
        let image = vmedia_disk::factory::open_source(
            Path::new(&name),
            Arc::new(ExportReader(source)),
            &options,
        )
        .map_err(|e| unavailable(e.to_string()))?;
        if let Some(backing) = image.backing_ref() {
            return Err(unavailable(format!(
                "the disk names a backing file ({}); a library disk must stand alone",
                backing.name
            )));
        }
        let block = image
            .cluster_size()
            .unwrap_or(DEFAULT_BLOCK)
            .clamp(MIN_BLOCK, MAX_BLOCK);
        let blocks = cache.map(|(cache, version, ahead)| Blocks {
            cache,
            version,
            block,
            ahead,
            recent: Mutex::new(([u64::MAX; RECENT_BLOCKS], 0)),
            queued_until: AtomicU64::new(0),
        });
        let size = image.virtual_size();
        Ok(DiskExport {
            name,
            inner: Arc::new(DiskInner {
                image,
                size,
                blocks,
            }),
        })
    }
}

impl DiskInner {
    fn image_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image
            .read_at(buf, offset)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The block `index` for a read; decodes it into the cache when it must be decoded (with
    /// `wait` false, a block another thread is decoding answers `None`).
    fn block(&self, blocks: &Blocks, index: u64, wait: bool) -> io::Result<Option<Block>> {
        let start = index * blocks.block;
        let len = blocks.block.min(self.size - start);
        let status = self
            .image
            .block_status(start, len)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match status.kind {
            // No backing image is ever opened, so unallocated ranges read as zeroes.
            BlockKind::Zero | BlockKind::Unallocated if status.len >= len => {
                return Ok(Some(Block::Zero))
            }
            BlockKind::Data if status.host_offset.is_none() => {}
            _ => return Ok(Some(Block::Direct)),
        }
        let key = block_key(&blocks.version, index);
        let mut decode = || {
            let mut data = vec![0u8; len as usize];
            self.image_read(&mut data, start)?;
            Ok(Arc::new(data))
        };
        Ok(blocks
            .cache
            .derived(&key, wait, &mut decode)?
            .map(|(data, _)| Block::Decoded(data)))
    }

    /// After a read of blocks `first..=last`: when it continues an earlier read, queues the
    /// blocks after it for decoding ahead.
    fn read_ahead(self: &Arc<DiskInner>, blocks: &Blocks, first: u64, last: u64) {
        let in_order = {
            let mut recent = lock(&blocks.recent);
            let (ring, next) = &mut *recent;
            let seen = first
                .checked_sub(1)
                .is_some_and(|previous| ring.contains(&previous) || ring.contains(&first));
            ring[*next] = last;
            *next = (*next + 1) % RECENT_BLOCKS;
            seen
        };
        if !in_order {
            return;
        }
        let count = self.size.div_ceil(blocks.block);
        let end = (last + 1)
            .saturating_add(READ_AHEAD_BYTES / blocks.block)
            .min(count);
        let queued = blocks.queued_until.load(Ordering::Relaxed);
        // Continue from what is already queued when this reader is inside that window.
        let start = if queued > last && queued <= end {
            queued
        } else {
            last + 1
        };
        for index in start..end {
            if !blocks.ahead.submit(Arc::clone(self), index) {
                blocks.queued_until.store(index, Ordering::Relaxed);
                return;
            }
        }
        blocks.queued_until.store(end, Ordering::Relaxed);
    }
}

/// The cache key of a decoded block: no chunk's digest (chunks are keyed by the SHA-256 of
/// their bytes; this hashes a label, a version digest and an index).
fn block_key(version: &str, index: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"vmedia disk block\0");
    hasher.update(version.as_bytes());
    hasher.update(index.to_le_bytes());
    hasher.finalize().into()
}

/// One read-ahead job: a disk and the index of a block to decode.
type Job = (Arc<DiskInner>, u64);

/// Threads that decode blocks ahead of in-order readers, shared by every disk export; started
/// on first use, stopped when the pool is dropped.
pub struct ReadAhead {
    queue: Mutex<Option<SyncSender<Job>>>,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            queue: Mutex::new(None),
        }
    }
}

impl ReadAhead {
    /// Queues a block; false when the queue is full (the guess is dropped) or no thread runs.
    fn submit(&self, disk: Arc<DiskInner>, index: u64) -> bool {
        let mut queue = lock(&self.queue);
        if queue.is_none() {
            let (sender, receiver) = mpsc::sync_channel(READ_AHEAD_QUEUE);
            let receiver = Arc::new(Mutex::new(receiver));
            for n in 0..READ_AHEAD_THREADS {
                let receiver = Arc::clone(&receiver);
                let spawned = std::thread::Builder::new()
                    .name(format!("disk-ahead-{n}"))
                    .spawn(move || decode_ahead(&receiver));
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot start a disk read-ahead thread");
                    return false;
                }
            }
            *queue = Some(sender);
        }
        let Some(sender) = queue.as_ref() else {
            return false;
        };
        match sender.try_send((disk, index)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn decode_ahead(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = lock(receiver).recv();
        let Ok((disk, index)) = job else {
            return;
        };
        if let Some(blocks) = &disk.blocks {
            // A failure here is the client's to see when it reads the block itself.
            if let Err(error) = disk.block(blocks, index, false) {
                tracing::debug!(%error, index, "disk read-ahead failed");
            }
        }
    }
}

impl Export for DiskExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.inner.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_REQUEST_BYTES,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = &self.inner;
        let Some(blocks) = &inner.blocks else {
            return inner.image_read(buf, offset);
        };
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= inner.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: read past the end at {offset:#x}", self.name),
                )
            })?;
        // One look at the whole range first: a stored or zero range needs no block work.
        let status = inner
            .image
            .block_status(offset, end - offset)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if status.len >= end - offset {
            match status.kind {
                BlockKind::Data if status.host_offset.is_some() => {
                    return inner.image_read(buf, offset)
                }
                BlockKind::Zero | BlockKind::Unallocated => {
                    buf.fill(0);
                    return Ok(());
                }
                BlockKind::Data => {}
            }
        }
        let first = offset / blocks.block;
        let last = (end - 1) / blocks.block;
        let mut done = 0usize;
        for index in first..=last {
            let start = index * blocks.block;
            let at = offset + done as u64;
            let n = ((start + blocks.block).min(end) - at) as usize;
            let piece = &mut buf[done..done + n];
            match inner.block(blocks, index, true)? {
                Some(Block::Zero) => piece.fill(0),
                Some(Block::Decoded(data)) => {
                    let within = (at - start) as usize;
                    piece.copy_from_slice(&data[within..within + n]);
                }
                Some(Block::Direct) | None => inner.image_read(piece, at)?,
            }
            done += n;
        }
        inner.read_ahead(blocks, first, last);
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let image = &self.inner.image;
        let end = offset.saturating_add(length).min(self.inner.size);
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let status = image
                .block_status(at, end - at)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let run = status.len.clamp(1, end - at);
            // No backing image is ever opened, so unallocated ranges read as zeroes.
            let (hole, zero) = match status.kind {
                BlockKind::Data => (false, false),
                BlockKind::Zero => (false, true),
                BlockKind::Unallocated => (true, true),
            };
            match out.last_mut() {
                Some(last) if last.hole == hole && last.zero == zero => last.length += run,
                _ => out.push(Extent {
                    length: run,
                    hole,
                    zero,
                }),
            }
            at += run;
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: offset {offset:#x} is past the end", self.name),
            ));
        }
        Ok(out)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
