//! One clone's copy-on-write overlay: a sparse data file the size of the disk (block `b`'s
//! bytes at offset `b * BLOCK_SIZE`) and an allocation map saying, per block, whether it reads
//! from the base, from the data file, or as zeroes. The map is persisted by the journal
//! (`journal.rs`); see docs/clones.md for the durability argument.
//!
//! Concurrency: any number of connections share one `Overlay`. Reads take the map's read lock
//! only to look blocks up (never during I/O). Writes lock the block stripes they touch, so a
//! read-modify-write of a partial block never races another write to that block. A FLUSH
//! covers every connection's completed writes (the map and its pending records are shared),
//! so the export can offer CAN_MULTI_CONN.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy};

use super::files::FileCache;
use super::journal::{self, BlockState, Header, Record};
use super::{BaseOpener, CloneError};
use crate::export::{BlockSizes, Export, Extent};

/// The overlay's block: large enough that the map stays small (16 Ki entries per GiB) and
/// sequential guest writes rarely need a read-modify-write, small enough that a 4 KiB write
/// into a base block copies little.
pub const BLOCK_SIZE: u32 = 64 << 10;
/// Largest clone: the map holds one byte per block, so 4 TiB costs at most 64 MiB of map.
pub const MAX_CLONE_SIZE: u64 = 4 << 40;
/// Largest single request the export advertises (NBD's customary 32 MiB).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Stripe locks per clone: writes to different blocks rarely share one.
const STRIPES: usize = 64;
/// Journal records before a flush considers rewriting the journal from the map.
const COMPACT_MIN_RECORDS: u64 = 4096;
/// The metadata file's format number.
pub const META_FORMAT: u32 = 1;

pub(crate) const META_FILE: &str = "clone.json";
pub(crate) const DATA_FILE: &str = "data";
pub(crate) const JOURNAL_FILE: &str = "journal";

/// Map codes (one byte per block).
const BASE: u8 = 0;
const DATA: u8 = 1;
const ZERO: u8 = 2;

/// What `clone.json` holds; written once, when the clone is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneMeta {
    pub format: u32,
    pub name: String,
    /// The pinned base, `NAME@V` (with `/disk` when the clone is of a disk's virtual content).
    pub base: String,
    /// `sha256:hex` of the base version: reads refuse a base whose digest changed.
    pub base_digest: String,
    pub size: u64,
    pub block_size: u32,
    pub ephemeral: bool,
    /// RFC 3339.
    pub created: String,
}

impl CloneMeta {
    /// Parses `clone.json` and checks its fields (the file is ours, but a disk can damage it).
    pub fn parse(bytes: &[u8]) -> Result<CloneMeta, String> {
        let meta: CloneMeta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.format != META_FORMAT {
            return Err(format!("unknown format {}", meta.format));
        }
        if meta.block_size != BLOCK_SIZE {
            return Err(format!(
                "block size {} is not {BLOCK_SIZE}",
                meta.block_size
            ));
        }
        if meta.size > MAX_CLONE_SIZE {
            return Err(format!("size {} is over {MAX_CLONE_SIZE}", meta.size));
        }
        super::check_clone_name(&meta.name).map_err(|e| e.to_string())?;
        Ok(meta)
    }
}

/// The in-memory allocation map and the records not yet in the journal.
struct MapState {
    /// One code per block; empty while nothing was changed (every block reads the base).
    codes: Vec<u8>,
    /// Blocks not reading the base.
    changed: u64,
    /// Transitions made since the last flush, in order.
    pending: Vec<Record>,
}

impl MapState {
    fn code(&self, block: u64) -> u8 {
        usize::try_from(block)
            .ok()
            .and_then(|b| self.codes.get(b).copied())
            .unwrap_or(BASE)
    }

    /// Marks `count` blocks from `first` (inside the map) and, when `record`, queues the record.
    fn set(&mut self, blocks: u64, first: u64, count: u64, state: BlockState, record: bool) {
        if self.codes.is_empty() {
            self.codes = vec![BASE; blocks as usize];
        }
        let code = match state {
            BlockState::Data => DATA,
            BlockState::Zero => ZERO,
        };
        for slot in &mut self.codes[first as usize..(first + count) as usize] {
            if *slot == BASE {
                self.changed += 1;
            }
            *slot = code;
        }
        if record {
            push_record(&mut self.pending, state, first, count);
        }
    }

    /// The whole map as the fewest records (for a compacted journal).
    fn as_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        let mut at = 0usize;
        while at < self.codes.len() {
            let code = self.codes[at];
            let mut end = at + 1;
            while end < self.codes.len() && self.codes[end] == code {
                end += 1;
            }
            match code {
                DATA => push_record(&mut records, BlockState::Data, at as u64, (end - at) as u64),
                ZERO => push_record(&mut records, BlockState::Zero, at as u64, (end - at) as u64),
                _ => {}
            }
            at = end;
        }
        records
    }
}

/// Appends "`count` blocks from `first` are `state`" to `records`, merging with the last record
/// when it continues it and splitting at the record's 32-bit count.
fn push_record(records: &mut Vec<Record>, state: BlockState, first: u64, count: u64) {
    let mut first = first;
    let mut left = count;
    while left > 0 {
        let take = left.min(u64::from(u32::MAX));
        match records.last_mut() {
            Some(last)
                if last.state == state
                    && last.first + u64::from(last.count) == first
                    && u64::from(last.count) + take <= u64::from(u32::MAX) =>
            {
                last.count += take as u32;
            }
            _ => records.push(Record {
                state,
                first,
                count: take as u32,
            }),
        }
        first += take;
        left -= take;
    }
}

/// The journal file's state, owned by whoever flushes.
struct JournalState {
    /// Bytes of valid journal; the next append goes here.
    len: u64,
    records: u64,
    /// Record count at which the next compaction is tried.
    compact_at: u64,
}

/// One clone.
pub(crate) struct Overlay {
    pub(crate) id: u64,
    pub(crate) dir: PathBuf,
    pub(crate) meta: CloneMeta,
    export_name: String,
    blocks: u64,
    map: RwLock<MapState>,
    stripes: Vec<Mutex<()>>,
    journal: Mutex<JournalState>,
    /// A data-file write happened since the last flush started.
    dirty: AtomicBool,
    /// Writes hold it shared; a commit holds it exclusively so it reads one consistent state.
    gate: RwLock<()>,
    removed: AtomicBool,
    /// Client connections holding the clone open (NBD sessions through the resolver).
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    base: Mutex<Option<Arc<dyn Export>>>,
    opener: Arc<dyn BaseOpener>,
    files: Arc<FileCache>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes a new clone's three files into `dir` (a folder not yet under its final name) and
/// flushes them. O(1): the data file is sparse, the journal is just its header.
pub(crate) fn create_files(dir: &Path, meta: &CloneMeta) -> io::Result<()> {
    let meta_path = dir.join(META_FILE);
    let mut file = File::create(&meta_path).map_err(|e| with_path(&meta_path, e))?;
    let text = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| with_path(&meta_path, e))?;

    let data_path = dir.join(DATA_FILE);
    let data = File::create(&data_path).map_err(|e| with_path(&data_path, e))?;
    data.set_len(meta.size)
        .and_then(|()| data.sync_all())
        .map_err(|e| with_path(&data_path, e))?;

    let journal_path = dir.join(JOURNAL_FILE);
    let mut journal = File::create(&journal_path).map_err(|e| with_path(&journal_path, e))?;
    let header = Header {
        block_size: meta.block_size,
        disk_size: meta.size,
    };
    journal
        .write_all(&header.encode())
        .and_then(|()| journal.sync_all())
        .map_err(|e| with_path(&journal_path, e))?;
    File::open(dir)?.sync_all()
}

impl Overlay {
    /// Opens a clone folder: replays its journal (dropping a torn tail) and compacts the
    /// journal when it has grown much longer than the map.
    pub(crate) fn open(
        id: u64,
        dir: PathBuf,
        meta: CloneMeta,
        opener: Arc<dyn BaseOpener>,
        files: Arc<FileCache>,
    ) -> Result<Overlay, CloneError> {
        let damaged = |problem: String| CloneError::Damaged {
            name: meta.name.clone(),
            problem,
        };
        let journal_path = dir.join(JOURNAL_FILE);
        let bytes = std::fs::read(&journal_path).map_err(|e| CloneError::Io {
            what: journal_path.display().to_string(),
            source: e,
        })?;
        let replayed = journal::replay(&bytes).map_err(|e| damaged(format!("journal: {e}")))?;
        if replayed.header.block_size != meta.block_size || replayed.header.disk_size != meta.size {
            return Err(damaged(format!(
                "the journal's block size {} and size {} differ from clone.json's {} and {}",
                replayed.header.block_size, replayed.header.disk_size, meta.block_size, meta.size
            )));
        }
        let data_path = dir.join(DATA_FILE);
        let data_len = std::fs::metadata(&data_path)
            .map_err(|e| CloneError::Io {
                what: data_path.display().to_string(),
                source: e,
            })?
            .len();
        if data_len != meta.size {
            return Err(damaged(format!(
                "the data file is {data_len} bytes, not {}",
                meta.size
            )));
        }
        let blocks = replayed.header.blocks();
        let mut map = MapState {
            codes: Vec::new(),
            changed: 0,
            pending: Vec::new(),
        };
        for record in &replayed.records {
            map.set(
                blocks,
                record.first,
                u64::from(record.count),
                record.state,
                false,
            );
        }
        if replayed.valid_len < bytes.len() as u64 {
            // A torn tail (an append that never completed): cut it so appends follow the
            // last good record.
            tracing::info!(
                clone = %meta.name,
                torn_bytes = bytes.len() as u64 - replayed.valid_len,
                "dropping the torn tail of a clone journal"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&journal_path)
                .and_then(|f| {
                    f.set_len(replayed.valid_len)?;
                    f.sync_all()
                });
            file.map_err(|e| CloneError::Io {
                what: journal_path.display().to_string(),
                source: e,
            })?;
        }
        let records = replayed.records.len() as u64;
        let overlay = Overlay {
            id,
            export_name: format!("clone/{}", meta.name),
            dir,
            meta,
            blocks,
            map: RwLock::new(map),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            journal: Mutex::new(JournalState {
                len: replayed.valid_len,
                records,
                compact_at: COMPACT_MIN_RECORDS,
            }),
            dirty: AtomicBool::new(false),
            gate: RwLock::new(()),
            removed: AtomicBool::new(false),
            connections: std::sync::atomic::AtomicUsize::new(0),
            base: Mutex::new(None),
            opener,
            files,
        };
        if records >= COMPACT_MIN_RECORDS {
            let mut journal = lock(&overlay.journal);
            overlay.compact(&mut journal).map_err(|e| CloneError::Io {
                what: format!("compacting {}", journal_path.display()),
                source: e,
            })?;
        }
        Ok(overlay)
    }

    fn block_size(&self) -> u64 {
        u64::from(self.meta.block_size)
    }

    /// Bytes `[start, end)` of block `b` (the last block may be short).
    fn span(&self, b: u64) -> (u64, u64) {
        let start = b * self.block_size();
        (start, (start + self.block_size()).min(self.meta.size))
    }

    /// Bytes of the disk no longer read from the base, in whole blocks (the short last block
    /// counts its own length).
    pub(crate) fn bytes_written(&self) -> u64 {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut bytes = map.changed.saturating_mul(self.block_size());
        if let Some(last) = self.blocks.checked_sub(1) {
            if map.code(last) != BASE {
                let (start, stop) = self.span(last);
                bytes -= self.block_size() - (stop - start);
            }
        }
        bytes
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.files.forget(self.id);
    }

    pub(crate) fn check_live(&self) -> io::Result<()> {
        if self.removed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("clone {} was removed", self.meta.name),
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_live()?;
        match offset.checked_add(length) {
            Some(end) if end <= self.meta.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: range {offset:#x}+{length:#x} is outside the disk ({:#x} bytes)",
                    self.export_name, self.meta.size
                ),
            )),
        }
    }

    fn data_file(&self) -> io::Result<Arc<File>> {
        self.files.get(self.id, &self.dir.join(DATA_FILE))
    }

    fn code(&self, block: u64) -> u8 {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .code(block)
    }

    /// The base export, opened (and its digest checked) on first use.
    fn base(&self) -> io::Result<Arc<dyn Export>> {
        let mut slot = lock(&self.base);
        if let Some(base) = &*slot {
            return Ok(Arc::clone(base));
        }
        let unavailable = |e: crate::export::ExportError| {
            io::Error::other(format!(
                "{}: base {}: {e}",
                self.export_name, self.meta.base
            ))
        };
        let pinned = self
            .opener
            .resolve_base(&self.meta.base)
            .map_err(unavailable)?;
        if pinned.digest != self.meta.base_digest {
            return Err(io::Error::other(format!(
                "{}: base {} now has digest {}, the clone was made from {}",
                self.export_name, self.meta.base, pinned.digest, self.meta.base_digest
            )));
        }
        let base = self
            .opener
            .open_base(&self.meta.base)
            .map_err(unavailable)?;
        if base.size() != self.meta.size {
            return Err(io::Error::other(format!(
                "{}: base {} is {} bytes, the clone {}",
                self.export_name,
                self.meta.base,
                base.size(),
                self.meta.size
            )));
        }
        *slot = Some(Arc::clone(&base));
        Ok(base)
    }

    /// Locks the stripes of blocks `first..=last` in stripe order (no deadlock between writes).
    fn lock_blocks(&self, first: u64, last: u64) -> Vec<MutexGuard<'_, ()>> {
        let mut wanted = [false; STRIPES];
        let span = last - first + 1;
        if span >= STRIPES as u64 {
            wanted = [true; STRIPES];
        } else {
            for b in first..=last {
                wanted[(b % STRIPES as u64) as usize] = true;
            }
        }
        wanted
            .iter()
            .enumerate()
            .filter(|(_, w)| **w)
            .map(|(i, _)| lock(&self.stripes[i]))
            .collect()
    }

    /// Reads block `b` as it reads now (base or zeroes; not called for data blocks).
    fn current_block(&self, b: u64, code: u8) -> io::Result<Vec<u8>> {
        let (start, end) = self.span(b);
        let mut buf = vec![0u8; (end - start) as usize];
        if code == BASE {
            self.base()?.read_at(&mut buf, start)?;
        }
        Ok(buf)
    }

    fn mark(&self, first: u64, count: u64, state: BlockState) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.set(self.blocks, first, count, state, true);
    }

    /// Writes `data` at `offset`; partial blocks that are not yet the clone's own are first
    /// filled from what they read now.
    pub(crate) fn write(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let end = offset + len;
        let first = offset / self.block_size();
        let last = (end - 1) / self.block_size();
        let _stripes = self.lock_blocks(first, last);
        let file = self.data_file()?;
        // Consecutive byte ranges written straight from `data`.
        let mut direct: Option<(u64, u64)> = None;
        let put = |range: (u64, u64)| -> io::Result<()> {
            let part = &data[(range.0 - offset) as usize..(range.1 - offset) as usize];
            file.write_all_at(part, range.0)
        };
        for b in first..=last {
            let (start, stop) = self.span(b);
            let from = offset.max(start);
            let to = end.min(stop);
            let code = self.code(b);
            if (from == start && to == stop) || code == DATA {
                direct = match direct {
                    Some((s, _)) => Some((s, to)),
                    None => Some((from, to)),
                };
                continue;
            }
            if let Some(range) = direct.take() {
                put(range)?;
            }
            let mut block = self.current_block(b, code)?;
            block[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            file.write_all_at(&block, start)?;
        }
        if let Some(range) = direct {
            put(range)?;
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.mark(first, last - first + 1, BlockState::Data);
        Ok(())
    }

    /// Makes `[offset, offset + length)` read as zeroes: whole blocks become zero blocks (their
    /// storage is released), partial blocks get zeroes written.
    pub(crate) fn zero(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_range(offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let end = offset + length;
        let first = offset / self.block_size();
        let last = (end - 1) / self.block_size();
        let _stripes = self.lock_blocks(first, last);
        let mut whole: Option<(u64, u64)> = None;
        for b in first..=last {
            let (start, stop) = self.span(b);
            let from = offset.max(start);
            let to = end.min(stop);
            if from == start && to == stop {
                whole = Some(whole.map_or((b, b), |(f, _)| (f, b)));
                continue;
            }
            match self.code(b) {
                ZERO => {}
                DATA => {
                    let zeroes = vec![0u8; (to - from) as usize];
                    self.data_file()?.write_all_at(&zeroes, from)?;
                    self.dirty.store(true, Ordering::SeqCst);
                }
                code => {
                    let mut block = self.current_block(b, code)?;
                    block[(from - start) as usize..(to - start) as usize].fill(0);
                    self.data_file()?.write_all_at(&block, start)?;
                    self.dirty.store(true, Ordering::SeqCst);
                    self.mark(b, 1, BlockState::Data);
                }
            }
        }
        if let Some((f, l)) = whole {
            self.mark(f, l - f + 1, BlockState::Zero);
            // Release the space; the map already says zero, so a failure (a file system
            // without hole punching) only costs space.
            let (start, _) = self.span(f);
            let (_, stop) = self.span(l);
            let file = self.data_file()?;
            if let Err(e) = rustix::fs::fallocate(
                &*file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                start,
                stop - start,
            ) {
                tracing::debug!(clone = %self.meta.name, error = %e, "punching a hole failed");
            }
        }
        Ok(())
    }

    /// Fills `buf` from `offset`: clone blocks from the data file, zero blocks as zeroes, the
    /// rest from the base.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        for (code, from, to) in self.runs(offset, len) {
            let part = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match code {
                DATA => self.data_file()?.read_exact_at(part, from)?,
                ZERO => part.fill(0),
                _ => self.base()?.read_at(part, from)?,
            }
        }
        Ok(())
    }

    /// `[offset, offset + length)` cut into runs of one map code, as byte ranges.
    fn runs(&self, offset: u64, length: u64) -> Vec<(u8, u64, u64)> {
        let end = offset + length;
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        if map.codes.is_empty() {
            return vec![(BASE, offset, end)];
        }
        let mut runs: Vec<(u8, u64, u64)> = Vec::new();
        let first = offset / self.block_size();
        let last = (end - 1) / self.block_size();
        for b in first..=last {
            let (start, stop) = self.span(b);
            let from = offset.max(start);
            let to = end.min(stop);
            let code = map.code(b);
            match runs.last_mut() {
                Some(run) if run.0 == code => run.2 = to,
                _ => runs.push((code, from, to)),
            }
        }
        runs
    }

    pub(crate) fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        self.check_live()?;
        let length = length.min(self.meta.size.saturating_sub(offset));
        if length == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no extents at {offset:#x}", self.export_name),
            ));
        }
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |extent: Extent| match out.last_mut() {
            Some(last) if last.hole == extent.hole && last.zero == extent.zero => {
                last.length += extent.length
            }
            _ => out.push(extent),
        };
        for (code, from, to) in self.runs(offset, length) {
            match code {
                DATA => push(Extent {
                    length: to - from,
                    hole: false,
                    zero: false,
                }),
                ZERO => push(Extent {
                    length: to - from,
                    hole: true,
                    zero: true,
                }),
                _ => {
                    let base = self.base()?;
                    let mut at = from;
                    while at < to {
                        let extents = base.extents(at, to - at)?;
                        let mut moved = 0u64;
                        for extent in extents {
                            let take = extent.length.min(to - at - moved);
                            if take == 0 {
                                break;
                            }
                            push(Extent {
                                length: take,
                                ..extent
                            });
                            moved += take;
                        }
                        if moved == 0 {
                            return Err(io::Error::other(format!(
                                "{}: the base reported no extent at {at:#x}",
                                self.export_name
                            )));
                        }
                        at += moved;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Makes every completed write durable: the data file first, then the journal records
    /// describing it.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.check_live()?;
        let mut journal = lock(&self.journal);
        let dirty = self.dirty.swap(false, Ordering::SeqCst);
        let batch =
            std::mem::take(&mut self.map.write().unwrap_or_else(|p| p.into_inner()).pending);
        let outcome = self.write_batch(&mut journal, dirty, &batch);
        if let Err(e) = outcome {
            // Put the records back in front of any newer ones: the next flush retries them.
            self.dirty.store(true, Ordering::SeqCst);
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::replace(&mut map.pending, batch);
            map.pending.extend(newer);
            return Err(e);
        }
        if journal.records >= journal.compact_at {
            if let Err(e) = self.compact(&mut journal) {
                tracing::warn!(clone = %self.meta.name, error = %e, "compacting the journal failed");
            }
        }
        Ok(())
    }

    fn write_batch(
        &self,
        journal: &mut JournalState,
        dirty: bool,
        batch: &[Record],
    ) -> io::Result<()> {
        if dirty || !batch.is_empty() {
            self.data_file()?.sync_data()?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(JOURNAL_FILE);
        let bytes = journal::encode_records(batch);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| with_path(&path, e))?;
        let written = file
            .write_all_at(&bytes, journal.len)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Leave no partial record behind the good ones (best effort: replay ignores one).
            let _ = file.set_len(journal.len);
            return Err(with_path(&path, e));
        }
        journal.len += bytes.len() as u64;
        journal.records += batch.len() as u64;
        Ok(())
    }

    /// Rewrites the journal as the map's runs, when nothing is pending (then the map is
    /// exactly what the journal says). Atomic: the old journal stays until the new one is
    /// flushed and renamed over it.
    fn compact(&self, journal: &mut JournalState) -> io::Result<()> {
        let records = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if !map.pending.is_empty() {
                return Ok(());
            }
            map.as_records()
        };
        let header = Header {
            block_size: self.meta.block_size,
            disk_size: self.meta.size,
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend(journal::encode_records(&records));
        let path = self.dir.join(JOURNAL_FILE);
        let mut out = AtomicFile::create(&path, OverwritePolicy::Replace)?;
        out.file_mut().write_all(&bytes)?;
        out.commit_with(Durability::Flush)?;
        journal.len = bytes.len() as u64;
        journal.records = records.len() as u64;
        journal.compact_at = COMPACT_MIN_RECORDS.max(journal.records.saturating_mul(4));
        Ok(())
    }

    /// Holds writes off while a commit reads the clone.
    pub(crate) fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records in the journal file (tests check compaction).
    pub(crate) fn journal_records(&self) -> u64 {
        lock(&self.journal).records
    }
}

impl Export for Overlay {
    fn name(&self) -> &str {
        &self.export_name
    }
    fn size(&self) -> u64 {
        self.meta.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: self.meta.block_size,
            maximum: MAX_REQUEST,
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read(buf, offset)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        Overlay::extents(self, offset, length)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.write(data, offset)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        self.zero(offset, length)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.zero(offset, length)
    }
    fn flush(&self) -> io::Result<()> {
        Overlay::flush(self)
    }
    fn can_multi_conn(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> MapState {
        MapState {
            codes: Vec::new(),
            changed: 0,
            pending: Vec::new(),
        }
    }

    #[test]
    fn contiguous_transitions_merge_into_one_record() {
        let mut map = empty();
        map.set(100, 0, 2, BlockState::Data, true);
        map.set(100, 2, 3, BlockState::Data, true);
        map.set(100, 10, 1, BlockState::Data, true);
        map.set(100, 11, 1, BlockState::Zero, true);
        assert_eq!(
            map.pending,
            [
                Record {
                    state: BlockState::Data,
                    first: 0,
                    count: 5
                },
                Record {
                    state: BlockState::Data,
                    first: 10,
                    count: 1
                },
                Record {
                    state: BlockState::Zero,
                    first: 11,
                    count: 1
                },
            ]
        );
        // Rewriting a changed block changes nothing in the count.
        map.set(100, 1, 1, BlockState::Zero, false);
        assert_eq!(map.changed, 7);
        assert_eq!(map.as_records().len(), 5);
    }

    #[test]
    fn records_split_at_the_32_bit_count() {
        let mut records = Vec::new();
        push_record(&mut records, BlockState::Zero, 0, u64::from(u32::MAX) + 10);
        push_record(&mut records, BlockState::Zero, u64::from(u32::MAX) + 10, 5);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].count, u32::MAX);
        assert_eq!(records[1].first, u64::from(u32::MAX));
        assert_eq!(records[1].count, 15);
    }
}
