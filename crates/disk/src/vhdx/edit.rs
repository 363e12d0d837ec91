//! Editing a VHDX in place (commit into it, rebase it, empty it): `VhdxEditor`.
//!
//! Writes into a block that is not allocated append a payload block (1 MiB aligned) at the end
//! of the file; in a differencing image it is PAYLOAD_BLOCK_PARTIALLY_PRESENT and its chunk's
//! sector bitmap (a 1 MiB sector bitmap block, allocated the same way when the chunk has none)
//! gets one bit per logical sector written. A block whose every sector ends up written becomes
//! FULLY_PRESENT. Blocks that read as zeros (ZERO/UNMAPPED states, or any unallocated block
//! of an image without a parent) become FULLY_PRESENT with a zero-filled hole around the data.
//!
//! # Headers and chains
//! Before the first change the headers are updated as MS-VHDX asks (both copies in turn, each
//! with a higher sequence number, synced between): a new FileWriteGuid, and a new
//! DataWriteGuid before the first change to what the guest reads (data writes, `empty`).
//! A differencing child records its parent's DataWriteGuid as `parent_linkage`, so after
//! writing into a parent (commit), callers relink each child they keep by calling
//! `set_parent_path` with the same parent: it records the parent's current DataWriteGuid.
//!
//! # Crash safety: the log for metadata, ordering for data
//! Guest data goes first, into new blocks past everything the BAT references (the file is
//! extended first) or over sectors already present; it is synced. Sector bitmaps follow
//! (new bitmap blocks start as a hole, so until written they send every sector to the
//! parent: the old view), and new sector bitmap entries are synced before the payload
//! entries that need them. The changed BAT pages then go through the VHDX log as MS-VHDX
//! and qemu do it: the headers name a fresh log GUID, each batch of up to 126 pages is one
//! log entry, synced, applied in place, synced, and the GUID is cleared. A crash leaves either
//! the old BAT or a log entry that vmedia (in memory), `qemu-img check -r all` and Hyper-V
//! replay to the new one (`vhdx_log_entries_vmedia_writes_are_replayed_by_qemu_img`).
//! Metadata-region changes (the parent locator item with its table entry and count, the
//! has_parent flag) go through the log the same way, so a locator switch is one atomic log
//! entry; `has_parent` is set last when linking and cleared first when unlinking, and the
//! BAT is consistent at either point. An image whose log still holds entries is refused
//! (replay it first with `qemu-img check -r all`), so no stale entry is replayed over these
//! writes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::header::{self, put_guid, Header, RegionEntry, HEADER_SIZE, MIB};
use super::metadata::{self, Metadata};
use super::{
    Geometry, VhdxImage, FORMAT, OFFSET_MASK, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT,
    PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_ZERO, SB_PRESENT, STATE_MASK,
};
use crate::editor::{self, BitOrder};
use crate::error::{DiskError, Result};
use crate::image::{Format, OpenOptions};
use vmedia_io::bytes::{le16, le32};

/// Granularity offered to commit/rebase: small enough that a differencing image records only
/// what changed, large enough that writes stay efficient.
pub const EDIT_CLUSTER: u64 = 64 << 10;
/// Size of a sector bitmap block (one per chunk).
const BITMAP_BLOCK: u64 = MIB;
/// Bytes of one metadata table entry.
const TABLE_ENTRY: usize = 32;
/// VHDX sector bitmaps: sector 0 is the least significant bit of byte 0.
const BITS: BitOrder = BitOrder::LeastSignificantFirst;
/// Items in the metadata region start at or after the 64 KiB table.
const ITEMS_START: usize = metadata::TABLE_SIZE;

/// A VHDX opened for writing in place.
pub struct VhdxEditor {
    path: PathBuf,
    file: File,
    header: Header,
    /// Offset of the header copy with the highest sequence number.
    current_header_at: u64,
    file_guid_changed: bool,
    data_guid_changed: bool,
    meta: Metadata,
    geometry: Geometry,
    meta_region: RegionEntry,
    bat_region: RegionEntry,
    bat: Vec<u64>,
    /// BAT entries changed in this session (indices), written by `finish`.
    dirty_entries: BTreeSet<u64>,
    /// Sector bitmap blocks read or changed, by chunk: (bits, dirty).
    bitmaps: BTreeMap<u64, (Vec<u8>, bool)>,
    /// Partially present blocks written in this session (candidates for FULLY_PRESENT).
    partial_touched: BTreeSet<u64>,
    /// Where the next block is appended (1 MiB aligned).
    next: u64,
    /// Cut the file to `next` at `finish` (after `empty`).
    truncate: bool,
    data_written: bool,
    /// Crash tests: stop right after the first log entry is durable, before it is applied.
    stop_after_log_write: bool,
}

fn io(path: &Path, offset: u64, e: std::io::Error) -> DiskError {
    DiskError::io(path, offset, e)
}

impl VhdxEditor {
    /// Opens a dynamic, fixed or differencing VHDX for writing; the parent is not opened.
    pub fn open(path: &Path) -> Result<VhdxEditor> {
        let file = crate::image::open_for_writing(path)?;
        let reader = file.try_clone().map_err(|e| io(path, 0, e))?;
        let opts = OpenOptions {
            skip_backing: true,
            format: Some(Format::Vhdx),
            ..OpenOptions::default()
        };
        let image = VhdxImage::open(path, Arc::new(reader), &opts)?;
        if !image.header.log_guid.is_nil() && image.replayed_entries > 0 {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: format!(
                    "writing into an image whose log holds {} entries to replay (replay it first: qemu-img check -r all)",
                    image.replayed_entries
                ),
            });
        }
        // The image has no log entries to replay (refused above), so the regions it read
        // through its log view are the file's own.
        let (meta_region, bat_region) = (image.meta_region, image.bat_region);
        let current_header_at = current_header_offset(path, &file)?;
        refuse_inconsistent(path, &image, &[meta_region, bat_region])?;
        let g = image.geometry;
        let mut end = image.file_size;
        for (i, &entry) in image.bat.iter().enumerate() {
            let at = entry & OFFSET_MASK;
            let state = entry & STATE_MASK;
            let is_bitmap = g.chunk_ratio > 0 && (i as u64 + 1).is_multiple_of(g.chunk_ratio + 1);
            let len = if is_bitmap {
                (state == SB_PRESENT).then_some(BITMAP_BLOCK)
            } else {
                matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT)
                    .then_some(g.block_size)
            };
            if let Some(len) = len {
                end = end.max(at.saturating_add(len));
            }
        }
        let regions_end = regions_end(
            path,
            &image.header,
            &[meta_region, bat_region],
            image.file_size,
        )?;
        let next = end.max(regions_end).div_ceil(MIB) * MIB;
        Ok(VhdxEditor {
            path: path.to_path_buf(),
            file,
            header: image.header,
            current_header_at,
            file_guid_changed: false,
            data_guid_changed: false,
            meta: image.meta,
            geometry: g,
            meta_region,
            bat_region,
            bat: image.bat,
            dirty_entries: BTreeSet::new(),
            bitmaps: BTreeMap::new(),
            partial_touched: BTreeSet::new(),
            next,
            truncate: false,
            data_written: false,
            stop_after_log_write: false,
        })
    }

    pub fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The DataWriteGuid as it is now (after a write: the new one).
    pub fn data_write_guid(&self) -> Uuid {
        self.header.data_write_guid
    }

    /// For crash tests only: `finish` stops once the first log entry is durable, leaving the
    /// file as a crash at that moment would (a log every reader must replay).
    #[doc(hidden)]
    pub fn simulate_crash_after_log_write(&mut self) {
        self.stop_after_log_write = true;
    }

    /// The unit commit and rebase write in (see `EDIT_CLUSTER`).
    pub fn cluster_size(&self) -> u64 {
        EDIT_CLUSTER.min(self.geometry.block_size)
    }

    /// The coming writes do not change what the guest reads (safe rebase copies, emptying
    /// after a commit): keep the DataWriteGuid that children record as parent_linkage.
    pub fn keep_data_write_guid(&mut self) {
        self.data_guid_changed = true;
    }

    pub fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(guest_offset, data)
    }

    /// Makes the cluster at `guest_offset` read as zeros.
    pub fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        let len = editor::cluster_len_at(self.cluster_size(), self.meta.virtual_size, guest_offset);
        self.zero_range(guest_offset, len)
    }

    /// Writes guest data in place (in a differencing image whole logical sectors, unless a
    /// partly covered sector is already present in this layer).
    pub fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        crate::shared::check_range(
            &self.path,
            guest_offset,
            data.len() as u64,
            self.meta.virtual_size,
        )?;
        self.touch_headers(true)?;
        let bs = self.geometry.block_size;
        editor::split_at_blocks(guest_offset, data.len(), bs, |block, in_block, range| {
            self.write_in_block(block, in_block, &data[range])
        })
    }

    /// Makes `[guest_offset, +len)` read as zeros: whole blocks become PAYLOAD_BLOCK_ZERO,
    /// unallocated blocks of an image without a parent stay as they are (they read as
    /// zeros), everything else gets zeros written.
    pub fn zero_range(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        crate::shared::check_range(&self.path, guest_offset, len, self.meta.virtual_size)?;
        self.touch_headers(true)?;
        let bs = self.geometry.block_size;
        let zeros = vec![0u8; EDIT_CLUSTER as usize];
        let mut done = 0u64;
        while done < len {
            let at = guest_offset + done;
            let block = at / bs;
            let in_block = at % bs;
            let block_len = bs.min(self.meta.virtual_size - block * bs);
            let n = (block_len - in_block).min(len - done);
            let index = self.geometry.payload_index(block);
            let state = self.entry(index) & STATE_MASK;
            let allocated = matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT);
            if in_block == 0 && n == block_len && !self.meta.leave_blocks_allocated {
                self.set_entry(index, PAYLOAD_ZERO);
                self.partial_touched.remove(&block);
            } else if allocated
                || self.meta.has_parent && !matches!(state, PAYLOAD_ZERO | super::PAYLOAD_UNMAPPED)
            {
                let mut pos = 0u64;
                while pos < n {
                    let m = (n - pos).min(EDIT_CLUSTER);
                    self.write_in_block(block, in_block + pos, &zeros[..m as usize])?;
                    pos += m;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn entry(&self, index: u64) -> u64 {
        self.bat.get(index as usize).copied().unwrap_or(0)
    }

    fn set_entry(&mut self, index: u64, value: u64) {
        if let Some(e) = self.bat.get_mut(index as usize) {
            *e = value;
            self.dirty_entries.insert(index);
        }
    }

    /// Appends `len` bytes (1 MiB aligned) at the end of the file; returns their offset.
    fn append(&mut self, len: u64) -> Result<u64> {
        let at = self.next;
        let end = at + len.div_ceil(MIB) * MIB;
        // Extend first: BAT entries written later must never point past the end.
        self.file.set_len(end).map_err(|e| io(&self.path, end, e))?;
        self.next = end;
        Ok(at)
    }

    fn write_in_block(&mut self, block: u64, in_block: u64, data: &[u8]) -> Result<()> {
        let index = self.geometry.payload_index(block);
        let entry = self.entry(index);
        let state = entry & STATE_MASK;
        let sector = u64::from(self.meta.logical_sector_size);
        let len = data.len() as u64;
        let allocated = matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT);
        let new_partial = !allocated
            && self.meta.has_parent
            && matches!(state, PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED);
        // Refused before anything is allocated or written.
        if state == PAYLOAD_PARTIALLY_PRESENT {
            self.check_partial_sectors(block, in_block, len)?;
        } else if new_partial
            && (!in_block.is_multiple_of(sector) || !(in_block + len).is_multiple_of(sector))
        {
            return Err(self.partial_sector_error(block, in_block / sector));
        }
        let base = if allocated {
            entry & OFFSET_MASK
        } else {
            if new_partial {
                // The chunk needs a sector bitmap, and bits a discarded block left behind
                // must not claim sectors of the new one.
                let first = self.sector_in_chunk(block, 0);
                let per_block = self.geometry.block_size / sector;
                let bits = self.chunk_bitmap(block / self.geometry.chunk_ratio, true)?;
                for s in first..first + per_block {
                    BITS.clear(bits, s);
                }
            }
            let at = self.append(self.geometry.block_size)?;
            let new_state = if new_partial {
                PAYLOAD_PARTIALLY_PRESENT
            } else {
                PAYLOAD_FULLY_PRESENT
            };
            self.set_entry(index, at | new_state);
            at
        };
        let partial = self.entry(index) & STATE_MASK == PAYLOAD_PARTIALLY_PRESENT;
        let host = base + in_block;
        self.file
            .write_all_at(data, host)
            .map_err(|e| io(&self.path, host, e))?;
        self.data_written = true;
        if partial {
            let first = self.sector_in_chunk(block, in_block / sector);
            let last = self.sector_in_chunk(block, (in_block + len).div_ceil(sector));
            let bits = self.chunk_bitmap(block / self.geometry.chunk_ratio, true)?;
            for s in first..last {
                BITS.set(bits, s);
            }
            self.partial_touched.insert(block);
        }
        Ok(())
    }

    fn partial_sector_error(&self, block: u64, sector_in_block: u64) -> DiskError {
        DiskError::Unsupported {
            path: self.path.clone(),
            format: FORMAT,
            feature: format!(
                "a write covering part of logical sector {sector_in_block} of block {block} in a differencing VHDX (whole {}-byte sectors only)",
                self.meta.logical_sector_size
            ),
        }
    }

    fn sector_in_chunk(&self, block: u64, sector_in_block: u64) -> u64 {
        let per_block = self.geometry.block_size / u64::from(self.meta.logical_sector_size);
        (block % self.geometry.chunk_ratio) * per_block + sector_in_block
    }

    fn check_partial_sectors(&mut self, block: u64, in_block: u64, len: u64) -> Result<()> {
        let sector = u64::from(self.meta.logical_sector_size);
        for s in editor::partly_covered_sectors(in_block, len, sector, false) {
            let bit = self.sector_in_chunk(block, s);
            let bits = self.chunk_bitmap(block / self.geometry.chunk_ratio, false)?;
            if !BITS.get(bits, bit) {
                return Err(self.partial_sector_error(block, s));
            }
        }
        Ok(())
    }

    /// The sector bitmap of `chunk`, read on first use, allocated when the chunk has none
    /// and `mark_dirty` is set (it will be written).
    fn chunk_bitmap(&mut self, chunk: u64, mark_dirty: bool) -> Result<&mut Vec<u8>> {
        let index = self.geometry.bitmap_index(chunk);
        let entry = self.entry(index);
        if entry & STATE_MASK != SB_PRESENT && mark_dirty {
            let at = self.append(BITMAP_BLOCK)?;
            self.set_entry(index, at | SB_PRESENT);
            self.bitmaps
                .insert(chunk, (vec![0u8; BITMAP_BLOCK as usize], true));
        }
        let path = &self.path;
        let file = &self.file;
        let slot = match self.bitmaps.entry(chunk) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let mut bits = vec![0u8; BITMAP_BLOCK as usize];
                if entry & STATE_MASK == SB_PRESENT {
                    crate::shared::read_exact(file, path, &mut bits, entry & OFFSET_MASK)?;
                }
                v.insert((bits, false))
            }
        };
        slot.1 |= mark_dirty;
        Ok(&mut slot.0)
    }

    /// Updates both headers before the first change (new FileWriteGuid; new DataWriteGuid
    /// when `data` is set and it was not changed yet).
    fn touch_headers(&mut self, data: bool) -> Result<()> {
        let need_file = !self.file_guid_changed;
        let need_data = data && !self.data_guid_changed;
        if !need_file && !need_data {
            return Ok(());
        }
        let mut h = self.header.clone();
        if need_file {
            h.file_write_guid = Uuid::new_v4();
        }
        if need_data {
            h.data_write_guid = Uuid::new_v4();
        }
        // `open` found nothing to replay: a stale log GUID must not make another reader
        // replay old entries over the writes that follow.
        h.log_guid = Uuid::nil();
        self.write_headers(&mut h)?;
        self.header = h;
        self.file_guid_changed = true;
        self.data_guid_changed |= need_data;
        Ok(())
    }

    /// Writes `h` to both header copies in turn, the older one first, each with a higher
    /// sequence number and synced: one valid header always survives.
    fn write_headers(&mut self, h: &mut Header) -> Result<()> {
        for _ in 0..2 {
            h.sequence_number = h.sequence_number.checked_add(1).ok_or_else(|| {
                DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    self.current_header_at + 8,
                    "header sequence number",
                    "at its maximum",
                )
            })?;
            let at = if self.current_header_at == header::HEADER_1_OFFSET {
                header::HEADER_2_OFFSET
            } else {
                header::HEADER_1_OFFSET
            };
            self.file
                .write_all_at(&h.emit(), at)
                .map_err(|e| io(&self.path, at, e))?;
            self.file.sync_data().map_err(|e| io(&self.path, at, e))?;
            self.current_header_at = at;
        }
        self.header = h.clone();
        Ok(())
    }

    /// Records `parent` (name as the user wrote it, resolved path) as this image's parent:
    /// parent_linkage = the parent's current DataWriteGuid, relative_path, absolute_win32_path.
    /// `None` makes a differencing image a plain dynamic one. Only the reference changes:
    /// callers copy data whose view would change first (safe rebase). Refused: parents that
    /// are not VHDX images of the same size, a locator that does not fit the metadata region,
    /// a BAT region too small for a differencing image's sector bitmap entries.
    pub fn set_parent_path(&mut self, parent: Option<(&str, &Path)>) -> Result<()> {
        self.touch_headers(false)?;
        match parent {
            Some((name, resolved)) => self.link_parent(name, resolved),
            None => self.unlink_parent(),
        }
    }

    fn link_parent(&mut self, name: &str, resolved: &Path) -> Result<()> {
        let (guid, size) = super::data_write_guid(resolved)?;
        if size != self.meta.virtual_size {
            return Err(DiskError::InvalidOption {
                key: "backing_file".into(),
                value: name.into(),
                reason: format!(
                    "a differencing VHDX must have its parent's size: {} has {size} bytes, {} has {}",
                    resolved.display(),
                    self.path.display(),
                    self.meta.virtual_size
                ),
            });
        }
        let locator = super::writer::parent_locator(name, resolved, &guid);
        let mut new_meta = self.meta.clone();
        new_meta.has_parent = true;
        let new_geometry = Geometry::new(&new_meta);
        if new_geometry.total_entries * 8 > u64::from(self.bat_region.length) {
            return Err(DiskError::Limit {
                path: self.path.clone(),
                offset: self.bat_region.file_offset,
                field: "BAT region",
                value: new_geometry.total_entries * 8,
                limit: u64::from(self.bat_region.length),
                why: "a differencing image needs a sector bitmap entry per chunk and the BAT region has no room for them",
            });
        }
        self.write_locator_item(&locator.emit())?;
        if !self.meta.has_parent {
            // The entries a differencing image adds at the end start as "not present".
            let old = self.bat.len() as u64;
            self.bat.resize(new_geometry.total_entries as usize, 0);
            for i in old..new_geometry.total_entries {
                self.dirty_entries.insert(i);
            }
            // Flush the BAT before has_parent turns on, so a crash never shows a
            // differencing image with stale entries.
            self.write_dirty_bat()?;
            self.sync()?;
            self.set_has_parent(true)?;
        }
        self.meta = new_meta;
        self.meta.parent_locator = Some(locator);
        self.geometry = new_geometry;
        Ok(())
    }

    fn unlink_parent(&mut self) -> Result<()> {
        if !self.meta.has_parent {
            return Ok(());
        }
        self.touch_headers(true)?;
        // Sectors the bitmaps send to the parent read as zeros without one.
        let g = self.geometry;
        let sector = u64::from(self.meta.logical_sector_size);
        let per_block = g.block_size / sector;
        let zeros = vec![0u8; EDIT_CLUSTER as usize];
        for block in 0..g.data_blocks {
            let index = g.payload_index(block);
            let entry = self.entry(index);
            if entry & STATE_MASK != PAYLOAD_PARTIALLY_PRESENT {
                continue;
            }
            let base = entry & OFFSET_MASK;
            // Only this block's bits (a whole number of bytes: blocks hold at least 256
            // sectors), not the chunk's 1 MiB bitmap.
            let first_byte = (self.sector_in_chunk(block, 0) / 8) as usize;
            let chunk_bits = self.chunk_bitmap(block / g.chunk_ratio, false)?;
            let bits = chunk_bits
                .get(first_byte..first_byte + (per_block / 8) as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    DiskError::corrupt(
                        &self.path,
                        FORMAT,
                        base,
                        "sector bitmap",
                        format!("block {block}'s bits lie outside its chunk's bitmap"),
                    )
                })?;
            for run in editor::absent_runs(BITS, &bits, per_block, sector, EDIT_CLUSTER) {
                let at = base + run.start * sector;
                self.file
                    .write_all_at(&zeros[..((run.end - run.start) * sector) as usize], at)
                    .map_err(|err| io(&self.path, at, err))?;
            }
            self.set_entry(index, base | PAYLOAD_FULLY_PRESENT);
        }
        self.sync()?;
        self.set_has_parent(false)?;
        let mut new_meta = self.meta.clone();
        new_meta.has_parent = false;
        new_meta.parent_locator = None;
        let new_geometry = Geometry::new(&new_meta);
        // Sector bitmap entries mean nothing without a parent.
        for chunk in 0..g.bitmap_blocks {
            let i = g.bitmap_index(chunk);
            if self.entry(i) != 0 {
                self.set_entry(i, 0);
            }
        }
        self.bitmaps.clear();
        self.partial_touched.clear();
        self.remove_locator_item()?;
        self.meta = new_meta;
        self.geometry = new_geometry;
        Ok(())
    }

    /// Drops every block: a differencing image then reads entirely from its parent, a dynamic
    /// one as zeros; the file shrinks to its regions.
    pub fn empty(&mut self) -> Result<()> {
        if self.meta.leave_blocks_allocated {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "emptying a fixed VHDX",
            });
        }
        self.touch_headers(true)?;
        for i in 0..self.bat.len() as u64 {
            if self.bat[i as usize] != 0 {
                self.set_entry(i, 0);
            }
        }
        self.bitmaps.clear();
        self.partial_touched.clear();
        let regions_end = regions_end(
            &self.path,
            &self.header,
            &[self.meta_region, self.bat_region],
            u64::MAX,
        )?;
        self.next = regions_end.div_ceil(MIB) * MIB;
        self.truncate = true;
        Ok(())
    }

    /// Writes bitmaps and BAT entries after syncing the data they describe, then syncs.
    pub fn finish(mut self) -> Result<()> {
        if self.data_written {
            self.sync()?;
        }
        // Blocks whose every sector is now written become fully present.
        let sector = u64::from(self.meta.logical_sector_size);
        let per_block = self.geometry.block_size / sector;
        for block in std::mem::take(&mut self.partial_touched) {
            let first = self.sector_in_chunk(block, 0);
            let bits = self.chunk_bitmap(block / self.geometry.chunk_ratio, false)?;
            if (first..first + per_block).all(|s| BITS.get(bits, s)) {
                let index = self.geometry.payload_index(block);
                let entry = self.entry(index);
                self.set_entry(index, (entry & OFFSET_MASK) | PAYLOAD_FULLY_PRESENT);
            }
        }
        let dirty: Vec<(u64, u64)> = self
            .bitmaps
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(chunk, _)| (*chunk, self.entry(self.geometry.bitmap_index(*chunk))))
            .collect();
        for (chunk, entry) in dirty {
            if entry & STATE_MASK != SB_PRESENT {
                continue;
            }
            let at = entry & OFFSET_MASK;
            let bits = &self.bitmaps[&chunk].0;
            self.file
                .write_all_at(bits, at)
                .map_err(|e| io(&self.path, at, e))?;
        }
        self.write_dirty_bat()?;
        if self.stop_after_log_write {
            return Ok(());
        }
        if self.truncate {
            // The emptied BAT must be durable before the blocks it referenced are cut off.
            self.sync()?;
            self.file
                .set_len(self.next)
                .map_err(|e| io(&self.path, self.next, e))?;
        }
        self.file.sync_all().map_err(|e| io(&self.path, 0, e))
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| io(&self.path, 0, e))
    }

    /// Writes the BAT pages (4 KiB) holding changed entries. New sector bitmap entries go
    /// first and are synced, so a partially present payload entry never reaches the disk
    /// before its chunk's bitmap entry (a reader would find no bitmap for it).
    fn write_dirty_bat(&mut self) -> Result<()> {
        const PER_PAGE: u64 = 4096 / 8;
        let ratio = self.geometry.chunk_ratio + 1;
        let bitmap_entries: Vec<u64> = self
            .dirty_entries
            .iter()
            .copied()
            .filter(|i| (i + 1).is_multiple_of(ratio) && self.entry(*i) & STATE_MASK == SB_PRESENT)
            .collect();
        for i in &bitmap_entries {
            let at = self.bat_region.file_offset + i * 8;
            self.file
                .write_all_at(&self.entry(*i).to_le_bytes(), at)
                .map_err(|e| io(&self.path, at, e))?;
        }
        if !bitmap_entries.is_empty() {
            self.sync()?;
        }
        let pages: BTreeSet<u64> = std::mem::take(&mut self.dirty_entries)
            .into_iter()
            .map(|i| i / PER_PAGE)
            .collect();
        if pages.is_empty() {
            return Ok(());
        }
        let mut images = Vec::with_capacity(pages.len());
        for page in pages {
            let at = self.bat_region.file_offset + page * 4096;
            let mut bytes = [0u8; 4096];
            // Entries past the table keep what the file holds there.
            let len = self
                .file
                .metadata()
                .map_err(|e| io(&self.path, at, e))?
                .len();
            let have = len.saturating_sub(at).min(4096) as usize;
            crate::shared::read_exact(&self.file, &self.path, &mut bytes[..have], at)?;
            let first = (page * PER_PAGE) as usize;
            let last = (first + PER_PAGE as usize).min(self.bat.len());
            for (slot, entry) in self.bat[first.min(last)..last].iter().enumerate() {
                bytes[slot * 8..slot * 8 + 8].copy_from_slice(&entry.to_le_bytes());
            }
            images.push((at, bytes));
        }
        self.write_through_log(&images)
    }

    /// Writes whole 4 KiB pages through the VHDX log, as MS-VHDX asks for metadata: a log
    /// GUID is set in the headers, each batch of pages is written as one log entry, synced,
    /// applied in place, synced; then the log GUID is cleared. A crash at any point leaves
    /// either the old pages or a log entry every reader replays (vmedia in memory, qemu-img
    /// check -r all, Hyper-V on open) to the new ones.
    fn write_through_log(&mut self, pages: &[(u64, [u8; 4096])]) -> Result<()> {
        if pages.is_empty() {
            return Ok(());
        }
        let log_at = self.header.log_offset;
        let log_len = u64::from(self.header.log_length);
        let aligned = pages.iter().all(|(at, _)| at.is_multiple_of(4096));
        if !aligned || log_len < 4096 * (1 + super::log::MAX_PAGES_PER_ENTRY as u64) {
            // No usable log (a region off the 4 KiB grid, or a log too small for an entry):
            // direct page writes, synced.
            self.write_pages(pages)?;
            return self.sync();
        }
        let log_guid = Uuid::new_v4();
        let mut h = self.header.clone();
        h.log_guid = log_guid;
        self.write_headers(&mut h)?;
        let file_size = self
            .file
            .metadata()
            .map_err(|e| io(&self.path, 0, e))?
            .len();
        for (k, batch) in pages.chunks(super::log::MAX_PAGES_PER_ENTRY).enumerate() {
            let refs: Vec<(u64, &[u8; 4096])> = batch.iter().map(|(at, p)| (*at, p)).collect();
            let entry = super::log::entry_bytes(k as u64 + 1, 0, &log_guid, file_size, &refs);
            self.file
                .write_all_at(&entry, log_at)
                .map_err(|e| io(&self.path, log_at, e))?;
            self.sync()?;
            if self.stop_after_log_write {
                return Ok(());
            }
            self.write_pages(batch)?;
            self.sync()?;
        }
        let mut h = self.header.clone();
        h.log_guid = Uuid::nil();
        self.write_headers(&mut h)
    }

    fn write_pages(&self, pages: &[(u64, [u8; 4096])]) -> Result<()> {
        for (at, bytes) in pages {
            self.file
                .write_all_at(bytes, *at)
                .map_err(|e| io(&self.path, *at, e))?;
        }
        Ok(())
    }

    fn read_meta_region(&self) -> Result<Vec<u8>> {
        let mut region = vec![0u8; self.meta_region.length as usize];
        crate::shared::read_exact(
            &self.file,
            &self.path,
            &mut region,
            self.meta_region.file_offset,
        )?;
        Ok(region)
    }

    /// Sets or clears the has_parent bit of the file parameters item.
    fn set_has_parent(&mut self, on: bool) -> Result<()> {
        let region = self.read_meta_region()?;
        let table = MetadataTable::parse(&region);
        let (_, e) = table.find(&metadata::FILE_PARAMETERS).ok_or_else(|| {
            DiskError::corrupt(
                &self.path,
                FORMAT,
                self.meta_region.file_offset,
                "file parameters",
                "missing from the metadata table",
            )
        })?;
        let at = e.offset as usize + 4;
        let mut flags = le32(&region, at).ok_or_else(|| {
            DiskError::corrupt(
                &self.path,
                FORMAT,
                self.meta_region.file_offset,
                "file parameters",
                "item outside the region",
            )
        })?;
        if on {
            flags |= 2;
        } else {
            flags &= !2;
        }
        let mut new = region.clone();
        new[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        self.log_meta_change(&region, &new)
    }

    /// Writes the 4 KiB pages of the metadata region that differ between `old` and `new`
    /// through the log (table pages last, so with several entries the table switches last).
    fn log_meta_change(&mut self, old: &[u8], new: &[u8]) -> Result<()> {
        let mut pages: Vec<(u64, [u8; 4096])> = Vec::new();
        for (i, (a, b)) in old.chunks(4096).zip(new.chunks(4096)).enumerate() {
            if a == b {
                continue;
            }
            let mut page = [0u8; 4096];
            page[..b.len()].copy_from_slice(b);
            if b.len() < 4096 {
                // A region that does not end on a page: keep the file's bytes after it.
                let at = self.meta_region.file_offset + (i * 4096 + b.len()) as u64;
                crate::shared::read_exact(&self.file, &self.path, &mut page[b.len()..], at)?;
            }
            pages.push((self.meta_region.file_offset + (i * 4096) as u64, page));
        }
        let table_end = self.meta_region.file_offset + ITEMS_START as u64;
        pages.sort_by_key(|(at, _)| *at < table_end);
        self.write_through_log(&pages)
    }

    /// Writes a new parent locator item into free space of the metadata region (in place
    /// only when nothing else fits), then points the table at it.
    fn write_locator_item(&mut self, item: &[u8]) -> Result<()> {
        let region = self.read_meta_region()?;
        let table = MetadataTable::parse(&region);
        let existing = table.find(&metadata::PARENT_LOCATOR);
        let mut taken: Vec<(usize, usize)> = table
            .entries
            .iter()
            .filter(|e| e.length > 0)
            .map(|e| (e.offset as usize, e.offset as usize + e.length as usize))
            .collect();
        taken.sort_unstable();
        let fit = free_space(&taken, region.len(), item.len()).or_else(|| {
            // In place: the old item's room up to the next item.
            existing.and_then(|(_, e)| {
                let start = e.offset as usize;
                let room_end = taken
                    .iter()
                    .map(|t| t.0)
                    .filter(|s| *s > start)
                    .min()
                    .unwrap_or(region.len());
                (start + item.len() <= room_end).then_some(start)
            })
        });
        let Some(offset) = fit else {
            return Err(DiskError::InvalidOption {
                key: "backing_file".into(),
                value: format!("{} bytes of parent locator", item.len()),
                reason: format!(
                    "the metadata region of {} has no room for it ({} bytes, items take the rest)",
                    self.path.display(),
                    region.len()
                ),
            });
        };
        let (slot, count) = match existing {
            Some((i, _)) => (i, table.count),
            None => {
                if usize::from(table.count) >= usize::from(metadata::MAX_ENTRIES) {
                    return Err(DiskError::InvalidOption {
                        key: "backing_file".into(),
                        value: "parent locator".into(),
                        reason: "the metadata table is full".into(),
                    });
                }
                (usize::from(table.count), table.count + 1)
            }
        };
        let mut new = region.clone();
        new[offset..offset + item.len()].copy_from_slice(item);
        let at = 32 + slot * TABLE_ENTRY;
        let entry = &mut new[at..at + TABLE_ENTRY];
        entry.fill(0);
        put_guid(entry, 0, &metadata::PARENT_LOCATOR);
        entry[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
        entry[20..24].copy_from_slice(&(item.len() as u32).to_le_bytes());
        // IsRequired, as Hyper-V marks the parent locator.
        entry[24..28].copy_from_slice(&4u32.to_le_bytes());
        new[10..12].copy_from_slice(&count.to_le_bytes());
        // Item and table entry switch together: one log entry for a locator of usual size.
        self.log_meta_change(&region, &new)
    }

    /// Removes the parent locator entry from the metadata table (the last entry moves into
    /// its slot, then the count shrinks).
    fn remove_locator_item(&mut self) -> Result<()> {
        let region = self.read_meta_region()?;
        let table = MetadataTable::parse(&region);
        let Some((slot, _)) = table.find(&metadata::PARENT_LOCATOR) else {
            return Ok(());
        };
        let last = usize::from(table.count) - 1;
        let mut new = region.clone();
        if slot != last {
            new.copy_within(
                32 + last * TABLE_ENTRY..32 + (last + 1) * TABLE_ENTRY,
                32 + slot * TABLE_ENTRY,
            );
        }
        new[32 + last * TABLE_ENTRY..32 + (last + 1) * TABLE_ENTRY].fill(0);
        new[10..12].copy_from_slice(&(table.count - 1).to_le_bytes());
        self.log_meta_change(&region, &new)
    }
}

/// Writing follows BAT entries: a payload or sector bitmap block outside the file, inside the
/// first MiB or a region, or overlapping another block would make a write land there. Such
/// images are refused before any write.
fn refuse_inconsistent(path: &Path, image: &VhdxImage, regions: &[RegionEntry]) -> Result<()> {
    use crate::image::DiskImage;
    let report = image.check(&vmedia_io::NoProgress)?;
    let problem = |what: String| {
        DiskError::corrupt(
            path,
            FORMAT,
            regions[1].file_offset,
            "BAT entry",
            format!("{what}; run `vmedia disk check` and repair the image first"),
        )
    };
    if report.corruptions > 0 {
        let first = report
            .messages
            .iter()
            .find(|m| m.starts_with("ERROR"))
            .cloned()
            .unwrap_or_default();
        return Err(problem(format!(
            "{} problem(s) found before writing in place ({first})",
            report.corruptions
        )));
    }
    let g = image.geometry;
    let mut used: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| {
            (
                r.file_offset,
                r.file_offset.saturating_add(u64::from(r.length)),
            )
        })
        .chain([(0, MIB)])
        .collect();
    for (i, &entry) in image.bat.iter().enumerate() {
        let is_bitmap = (i as u64 + 1).is_multiple_of(g.chunk_ratio + 1);
        let state = entry & STATE_MASK;
        let len = if is_bitmap {
            if state != SB_PRESENT {
                continue;
            }
            BITMAP_BLOCK
        } else if matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
            g.block_size
        } else {
            continue;
        };
        let at = entry & OFFSET_MASK;
        let end = at.saturating_add(len);
        if is_bitmap && end > image.file_size {
            return Err(problem(format!(
                "sector bitmap block at {at:#x} lies past the end of the file"
            )));
        }
        used.push((at, end));
    }
    used.sort_unstable();
    for w in used.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(problem(format!(
                "blocks or regions at {:#x} and {:#x} overlap",
                w[0].0, w[1].0
            )));
        }
    }
    Ok(())
}

/// The first byte after the log, metadata and BAT regions. Blocks are appended after it, so
/// every region must lie inside the file: one that claims space past the end (a damaged or
/// hostile length) is refused rather than trusted to place new blocks.
fn regions_end(path: &Path, h: &Header, regions: &[RegionEntry], file_size: u64) -> Result<u64> {
    let log = (h.log_length > 0).then_some((h.log_offset, u64::from(h.log_length), "log"));
    let mut end = MIB;
    for (at, len, what) in regions
        .iter()
        .map(|r| (r.file_offset, u64::from(r.length), "region"))
        .chain(log)
    {
        match at.checked_add(len) {
            Some(e) if e <= file_size => end = end.max(e),
            _ => {
                return Err(DiskError::corrupt(
                    path,
                    FORMAT,
                    at,
                    what,
                    format!("{len} bytes at {at:#x} run past the end of the file ({file_size} bytes); not written in place"),
                ))
            }
        }
    }
    Ok(end.div_ceil(MIB) * MIB)
}

/// The offset of the header copy with the highest valid sequence number.
fn current_header_offset(path: &Path, file: &File) -> Result<u64> {
    let mut best: Option<(u64, u64)> = None;
    for at in [header::HEADER_1_OFFSET, header::HEADER_2_OFFSET] {
        let mut bytes = [0u8; HEADER_SIZE];
        crate::shared::read_exact(file, path, &mut bytes, at)?;
        if let Ok(h) = Header::parse(&bytes) {
            if best.is_none_or(|(seq, _)| h.sequence_number > seq) {
                best = Some((h.sequence_number, at));
            }
        }
    }
    best.map(|(_, at)| at).ok_or_else(|| {
        DiskError::corrupt(
            path,
            FORMAT,
            header::HEADER_1_OFFSET,
            "header",
            "no valid header",
        )
    })
}

/// The raw metadata table (the parsed `Metadata` keeps only the system items).
struct MetadataTable {
    count: u16,
    entries: Vec<TableEntry>,
}

#[derive(Clone, Copy)]
struct TableEntry {
    item: Uuid,
    offset: u32,
    length: u32,
    is_user: bool,
}

impl MetadataTable {
    /// The region was validated by `Metadata::parse` when the image was opened: the count is
    /// within `MAX_ENTRIES`, so every entry lies inside the 64 KiB table.
    fn parse(region: &[u8]) -> MetadataTable {
        let count = le16(region, 10).unwrap_or(0).min(metadata::MAX_ENTRIES);
        let entries = (0..usize::from(count))
            .filter_map(|i| {
                let e = region.get(32 + i * TABLE_ENTRY..)?;
                let e = vmedia_io::bytes::Fields::new_checked(e, TABLE_ENTRY)?;
                Some(TableEntry {
                    item: header::guid_field(&e, 0),
                    offset: e.le32(16),
                    length: e.le32(20),
                    is_user: e.le32(24) & 1 != 0,
                })
            })
            .collect();
        MetadataTable { count, entries }
    }

    fn find(&self, id: &Uuid) -> Option<(usize, TableEntry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| !e.is_user && e.item == *id)
            .map(|(i, e)| (i, *e))
    }
}

/// First 8-aligned gap of `len` bytes in the item area that no item uses.
fn free_space(taken: &[(usize, usize)], region_len: usize, len: usize) -> Option<usize> {
    let mut at = ITEMS_START;
    for &(start, end) in taken {
        if start >= at && start - at >= len {
            return Some(at);
        }
        at = at.max(end.div_ceil(8) * 8);
    }
    (region_len >= at && region_len - at >= len).then_some(at)
}

editor::own_format_parent_editor!(VhdxEditor, Format::Vhdx, keep_content_id: keep_data_write_guid);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::CreateOptions;

    const SIZE: u64 = 4 << 20;

    /// A VHDX of SIZE bytes (1 MiB blocks) with `fill` written at `writes`.
    fn make(dir: &Path, name: &str, parent: Option<&str>, writes: &[(u64, usize, u8)]) -> PathBuf {
        let path = dir.join(name);
        let mut opts = CreateOptions::new(Format::Vhdx, SIZE);
        opts.options.insert("block_size".into(), "1M".into());
        opts.backing = parent.map(|p| (p.to_string(), Some(Format::Vhdx)));
        let mut w = super::super::create(&path, &opts).unwrap();
        for &(at, len, fill) in writes {
            w.write_at(at, &vec![fill; len]).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn open(path: &Path) -> VhdxImage {
        let file = File::open(path).unwrap();
        VhdxImage::open(path, Arc::new(file), &OpenOptions::default()).unwrap()
    }

    fn read_all(path: &Path) -> Vec<u8> {
        use crate::image::DiskImage;
        let img = open(path);
        let mut buf = vec![0u8; img.virtual_size() as usize];
        img.read_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn dynamic_write_round_trip_allocates_aligned_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "d.vhdx", None, &[(0, 4096, 1)]);
        let mut expect = read_all(&p);
        let before = open(&p).header.data_write_guid;
        let mut e = VhdxEditor::open(&p).unwrap();
        e.write_at(2 << 20, &[7u8; 70000]).unwrap();
        e.write_at(100, &[9u8; 300]).unwrap();
        e.zero_range(3 << 20, 1 << 20).unwrap();
        e.finish().unwrap();
        expect[(2 << 20)..(2 << 20) + 70000].fill(7);
        expect[100..400].fill(9);
        assert!(
            read_all(&p) == expect,
            "the edited image reads back differently"
        );
        let img = open(&p);
        let g = img.geometry;
        let entry = img.bat[g.payload_index(2) as usize];
        assert_eq!(entry & STATE_MASK, PAYLOAD_FULLY_PRESENT);
        assert_eq!((entry & OFFSET_MASK) % MIB, 0);
        assert_eq!(
            img.bat[g.payload_index(3) as usize] & STATE_MASK,
            PAYLOAD_ZERO
        );
        assert_ne!(img.header.data_write_guid, before, "DataWriteGuid renewed");
        use crate::image::DiskImage;
        let r = img.check(&vmedia_io::NoProgress).unwrap();
        assert_eq!(r.corruptions, 0, "{:?}", r.messages);
    }

    #[test]
    fn differencing_partial_write_sets_only_the_written_sectors_bits() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(dir.path(), "child.vhdx", Some("base.vhdx"), &[]);
        let mut e = VhdxEditor::open(&child).unwrap();
        // Block 1, sectors 3..5 of that block.
        e.write_at((1 << 20) + 512 * 3, &[0xaa; 1024]).unwrap();
        e.finish().unwrap();
        let img = open(&child);
        let g = img.geometry;
        assert_eq!(
            img.bat[g.payload_index(1) as usize] & STATE_MASK,
            PAYLOAD_PARTIALLY_PRESENT
        );
        let sb = img.bat[g.bitmap_index(0) as usize];
        assert_eq!(sb & STATE_MASK, SB_PRESENT);
        let bytes = std::fs::read(&child).unwrap();
        let bits = &bytes[(sb & OFFSET_MASK) as usize..][..BITMAP_BLOCK as usize];
        let first = (1 << 20) / 512 + 3;
        let set: Vec<u64> = (0..BITMAP_BLOCK * 8)
            .filter(|s| BITS.get(bits, *s))
            .collect();
        assert_eq!(set, vec![first, first + 1]);
        let data = read_all(&child);
        let at = (1 << 20) + 1536;
        assert!(data[..at].iter().all(|b| *b == 0x55));
        assert!(data[at..at + 1024].iter().all(|b| *b == 0xaa));
        assert!(data[at + 1024..].iter().all(|b| *b == 0x55));
    }

    #[test]
    fn differencing_block_written_whole_becomes_fully_present() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(dir.path(), "child.vhdx", Some("base.vhdx"), &[]);
        let mut e = VhdxEditor::open(&child).unwrap();
        for at in (0..MIB).step_by(EDIT_CLUSTER as usize) {
            e.write_at(at, &[0x11; EDIT_CLUSTER as usize]).unwrap();
        }
        e.finish().unwrap();
        let img = open(&child);
        assert_eq!(
            img.bat[img.geometry.payload_index(0) as usize] & STATE_MASK,
            PAYLOAD_FULLY_PRESENT
        );
        assert!(read_all(&child)[..MIB as usize].iter().all(|b| *b == 0x11));
    }

    #[test]
    fn differencing_write_of_part_of_a_sector_not_present_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[]);
        let child = make(dir.path(), "child.vhdx", Some("base.vhdx"), &[]);
        let mut e = VhdxEditor::open(&child).unwrap();
        let err = e.write_at(100, &[1u8; 10]).unwrap_err();
        assert!(err.to_string().contains("whole 512-byte sectors"), "{err}");
    }

    #[test]
    fn set_parent_rewrites_the_locator_with_the_parents_data_write_guid() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "a.vhdx", None, &[(0, 4096, 1)]);
        let b = make(
            dir.path(),
            "b-with-a-longer-name.vhdx",
            None,
            &[(0, 4096, 2)],
        );
        let child = make(dir.path(), "child.vhdx", Some("a.vhdx"), &[(8192, 512, 3)]);
        let mut e = VhdxEditor::open(&child).unwrap();
        e.set_parent_path(Some(("b-with-a-longer-name.vhdx", &b)))
            .unwrap();
        e.finish().unwrap();
        let img = open(&child);
        let l = img.meta.parent_locator.as_ref().unwrap();
        let guid = open(&b).header.data_write_guid;
        assert_eq!(
            l.get("parent_linkage"),
            Some(format!("{{{guid}}}").as_str())
        );
        assert_eq!(l.get("relative_path"), Some(".\\b-with-a-longer-name.vhdx"));
        assert!(l
            .get("absolute_win32_path")
            .unwrap()
            .ends_with("/b-with-a-longer-name.vhdx"));
        use crate::image::DiskImage;
        assert_eq!(img.backing().unwrap().path(), b.as_path());
        let r = img.check(&vmedia_io::NoProgress).unwrap();
        assert_eq!(r.check_errors + r.corruptions, 0, "{:?}", r.messages);
        let data = read_all(&child);
        assert_eq!((data[0], data[8192]), (2, 3));
    }

    #[test]
    fn set_parent_refuses_a_locator_that_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let a = make(dir.path(), "a.vhdx", None, &[]);
        let child = make(dir.path(), "child.vhdx", Some("a.vhdx"), &[]);
        let mut e = VhdxEditor::open(&child).unwrap();
        // 1 MiB region, 64 KiB table: a 600 Ki-character name cannot fit.
        let err = e.write_locator_item(&vec![0u8; 2 << 20]).unwrap_err();
        assert!(err.to_string().contains("has no room"), "{err}");
        drop(e);
        // Nothing was switched: the child still reads through its parent.
        use crate::image::DiskImage;
        assert_eq!(open(&child).backing().unwrap().path(), a.as_path());
    }

    #[test]
    fn linking_a_dynamic_image_makes_it_differencing_and_unlinking_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let top = make(dir.path(), "top.vhdx", None, &[(4096, 512, 0xaa)]);
        let mut e = VhdxEditor::open(&top).unwrap();
        e.set_parent_path(Some(("base.vhdx", &base))).unwrap();
        e.finish().unwrap();
        let data = read_all(&top);
        // Block 0 was allocated (fully present): still all this layer's; others: the parent.
        assert!(data[..4096].iter().all(|b| *b == 0));
        assert!(data[4096..4608].iter().all(|b| *b == 0xaa));
        assert!(data[MIB as usize..].iter().all(|b| *b == 0x55));
        let mut e = VhdxEditor::open(&top).unwrap();
        e.write_at(2 * MIB + 512, &[0xbb; 512]).unwrap();
        e.set_parent_path(None).unwrap();
        e.finish().unwrap();
        let img = open(&top);
        assert!(!img.meta.has_parent && img.meta.parent_locator.is_none());
        let data = read_all(&top);
        assert!(data[4096..4608].iter().all(|b| *b == 0xaa));
        assert!(data[2 * MIB as usize + 512..][..512]
            .iter()
            .all(|b| *b == 0xbb));
        let nonzero = data.iter().filter(|b| **b != 0).count();
        assert_eq!(
            nonzero, 1024,
            "unwritten sectors read as zeros without a parent"
        );
    }

    #[test]
    fn empty_drops_every_block() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(
            dir.path(),
            "child.vhdx",
            Some("base.vhdx"),
            &[(0, 2 << 20, 0xaa)],
        );
        let before = std::fs::metadata(&child).unwrap().len();
        let mut e = VhdxEditor::open(&child).unwrap();
        e.keep_data_write_guid();
        e.empty().unwrap();
        e.finish().unwrap();
        assert!(std::fs::metadata(&child).unwrap().len() <= before - (2 << 20));
        assert!(read_all(&child).iter().all(|b| *b == 0x55));
    }

    #[test]
    fn headers_are_updated_in_turn_with_higher_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "d.vhdx", None, &[]);
        let seq = |at: u64| {
            let bytes = std::fs::read(&p).unwrap();
            Header::parse(&bytes[at as usize..][..HEADER_SIZE])
                .unwrap()
                .sequence_number
        };
        let (s1, s2) = (seq(header::HEADER_1_OFFSET), seq(header::HEADER_2_OFFSET));
        let mut e = VhdxEditor::open(&p).unwrap();
        e.write_at(0, &[1u8; 512]).unwrap();
        e.finish().unwrap();
        let (n1, n2) = (seq(header::HEADER_1_OFFSET), seq(header::HEADER_2_OFFSET));
        assert!(n1 > s1.max(s2) && n2 > s1.max(s2) && n1 != n2);
    }

    #[test]
    fn bits_a_discarded_block_left_do_not_claim_sectors_of_a_new_block() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(
            dir.path(),
            "child.vhdx",
            Some("base.vhdx"),
            &[(0, 4096, 0xaa)],
        );
        // Discard block 0 behind the bitmap's back, as another tool may leave it.
        let img = open(&child);
        let bat_at = {
            let file = File::open(&child).unwrap();
            let t = super::super::read_region_table(&child, &file).unwrap();
            t.find(&header::BAT_REGION).unwrap().file_offset
        };
        let at = bat_at + img.geometry.payload_index(0) * 8;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&child)
            .unwrap();
        f.write_all_at(&0u64.to_le_bytes(), at).unwrap();
        let mut e = VhdxEditor::open(&child).unwrap();
        e.write_at(8192, &[0xbb; 512]).unwrap();
        e.finish().unwrap();
        let data = read_all(&child);
        assert!(
            data[..8192].iter().all(|b| *b == 0x55),
            "stale bits exposed"
        );
        assert!(data[8192..8704].iter().all(|b| *b == 0xbb));
    }

    #[test]
    fn fixed_image_zeroed_block_stays_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.vhdx");
        let mut opts = CreateOptions::new(Format::Vhdx, SIZE);
        opts.options.insert("block_size".into(), "1M".into());
        opts.options.insert("subformat".into(), "fixed".into());
        let mut w = super::super::create(&p, &opts).unwrap();
        w.write_at(0, &vec![0x42; SIZE as usize]).unwrap();
        w.finish().unwrap();
        let mut e = VhdxEditor::open(&p).unwrap();
        e.zero_range(MIB, MIB).unwrap();
        e.finish().unwrap();
        let img = open(&p);
        let entry = img.bat[img.geometry.payload_index(1) as usize];
        assert_eq!(entry & STATE_MASK, PAYLOAD_FULLY_PRESENT);
        let data = read_all(&p);
        assert!(data[MIB as usize..2 * MIB as usize].iter().all(|b| *b == 0));
        assert!(data[..MIB as usize].iter().all(|b| *b == 0x42));
    }

    #[test]
    fn an_edit_cut_short_before_finish_leaves_the_old_view() {
        // What a crash before `finish` leaves on disk: new headers, data in appended blocks,
        // no BAT or bitmap change.
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhdx", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(
            dir.path(),
            "child.vhdx",
            Some("base.vhdx"),
            &[(0, 512, 0xaa)],
        );
        let dynamic = make(dir.path(), "d.vhdx", None, &[(0, 512, 0xaa)]);
        for p in [&child, &dynamic] {
            let before = read_all(p);
            let mut e = VhdxEditor::open(p).unwrap();
            e.keep_data_write_guid();
            e.write_at(2 << 20, &[0xee; 4096]).unwrap();
            e.write_at(1024, &[0xee; 512]).unwrap();
            drop(e);
            // Overwrites inside a block the image already holds wholly (dynamic) are plain
            // disk writes; everything else must still read as before.
            let mut expect = before;
            if p == &dynamic {
                expect[1024..1536].fill(0xee);
            }
            assert!(
                read_all(p) == expect,
                "{} shows a half-made edit",
                p.display()
            );
            use crate::image::DiskImage;
            let report = open(p).check(&vmedia_io::NoProgress).unwrap();
            assert_eq!(
                report.corruptions + report.check_errors,
                0,
                "{:?}",
                report.messages
            );
        }
    }

    #[test]
    fn bat_updates_go_through_the_log_and_a_crash_before_applying_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "d.vhdx", None, &[(0, 4096, 1)]);
        let mut e = VhdxEditor::open(&p).unwrap();
        e.write_at(2 << 20, &[7u8; 8192]).unwrap();
        e.simulate_crash_after_log_write();
        e.finish().unwrap();
        // The BAT in the file is unchanged, the headers name a log holding the new page.
        let img = open(&p);
        assert!(!img.header.log_guid.is_nil());
        assert_eq!(img.replayed_entries, 1);
        let data = read_all(&p);
        assert!(data[2 << 20..(2 << 20) + 8192].iter().all(|b| *b == 7));
        assert!(data[..4096].iter().all(|b| *b == 1));
        let err = VhdxEditor::open(&p)
            .err()
            .expect("a log to replay was ignored");
        assert!(err.to_string().contains("replay it first"), "{err}");
        // Without the crash the log is applied and its GUID cleared.
        let q = make(dir.path(), "q.vhdx", None, &[]);
        let mut e = VhdxEditor::open(&q).unwrap();
        e.write_at(2 << 20, &[7u8; 8192]).unwrap();
        e.finish().unwrap();
        let img = open(&q);
        assert!(img.header.log_guid.is_nil());
        assert_eq!(img.replayed_entries, 0);
        assert!(read_all(&q)[2 << 20..(2 << 20) + 8192]
            .iter()
            .all(|b| *b == 7));
    }

    #[test]
    fn a_crash_while_switching_the_parent_locator_is_replayed_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "a.vhdx", None, &[]);
        let b = make(dir.path(), "b.vhdx", None, &[]);
        let child = make(dir.path(), "child.vhdx", Some("a.vhdx"), &[]);
        let mut e = VhdxEditor::open(&child).unwrap();
        e.simulate_crash_after_log_write();
        e.set_parent_path(Some(("b.vhdx", &b))).unwrap();
        e.finish().unwrap();
        // In the file itself the table still names a.vhdx ...
        let file = File::open(&child).unwrap();
        let t = super::super::read_region_table(&child, &file).unwrap();
        let m = t.find(&header::METADATA_REGION).unwrap();
        let mut region = vec![0u8; m.length as usize];
        file.read_exact_at(&mut region, m.file_offset).unwrap();
        let raw = Metadata::parse(&region).unwrap();
        let raw_locator = raw.parent_locator.unwrap();
        assert_eq!(raw_locator.get("relative_path"), Some(".\\a.vhdx"));
        // ... and the log entry replays it to b.vhdx.
        let img = open(&child);
        assert_eq!(img.replayed_entries, 1);
        let l = img.meta.parent_locator.as_ref().unwrap();
        assert_eq!(l.get("relative_path"), Some(".\\b.vhdx"));
    }

    #[test]
    fn free_space_skips_items_and_respects_the_region_end() {
        let taken = [
            (ITEMS_START, ITEMS_START + 100),
            (ITEMS_START + 200, ITEMS_START + 300),
        ];
        assert_eq!(free_space(&taken, 1 << 20, 50), Some(ITEMS_START + 104));
        assert_eq!(free_space(&taken, 1 << 20, 150), Some(ITEMS_START + 304));
        assert_eq!(free_space(&taken, ITEMS_START + 310, 150), None);
    }
}
