//! Editing a VHD in place (commit into it, rebase it, empty it): `VhdEditor`.
//!
//! Fixed images are written like raw files. In dynamic and differencing images a write into an
//! unallocated block appends the block (sector bitmap + data) where the trailing footer was and
//! moves the footer behind it; the footer copy and the dynamic header at the start stay where
//! they are. In a differencing image the block's bitmap gets a bit for each sector written,
//! and only for those, so the other sectors keep coming from the parent.
//!
//! # Crash ordering
//! Guest data is written first (into new blocks past everything the BAT references, or over
//! sectors the bitmap already marks as present); bitmaps, BAT entries, the dynamic header and
//! the footers are written by `finish` only after an `fsync` of that data, and synced again. A
//! crash before `finish` completes therefore leaves either the old view (new blocks are not yet
//! referenced, unset bitmap bits still send reads to the parent) or, per BAT sector and per
//! bitmap, the new one; each new block's trailing footer is written as soon as the block is
//! appended, so the last 512 bytes of the file are always a valid footer. Overwrites of
//! sectors that are already present are ordinary in-place disk writes. When the disk type
//! changes, the header and the footer are written in the order that keeps the image openable
//! (synced between), and an emptied BAT is synced before the file is cut. A parent path that
//! fits the room its locator already has is rewritten there: a crash in that one write can
//! leave a damaged path (the unicode name and the other locator still name the parent).
//! Longer paths go to new space at the end, which no header references until `finish`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dynamic::{self, DynamicHeader, Locator, PlatformCode, BAT_UNUSED, LOCATOR_SLOTS};
use super::footer::{DiskType, Footer, FOOTER_SIZE};
use super::writer::{parent_locator_texts, parent_mtime, parent_unicode_name, LOCATOR_SPACE};
use super::{VhdImage, FORMAT};
use crate::editor::{self, BitOrder};
use crate::error::{DiskError, Result};
use crate::image::{Format, OpenOptions};

/// Granularity offered to commit/rebase: small enough that a differencing image records only
/// what changed, large enough that writes stay efficient.
pub const EDIT_CLUSTER: u64 = 64 << 10;
/// Sector size of every VHD.
const SECTOR: u64 = 512;
/// VHD sector bitmaps: sector 0 is the most significant bit of byte 0.
const BITS: BitOrder = BitOrder::MostSignificantFirst;
/// Bytes of the dynamic header's parent unicode name field (UTF-16).
const PARENT_NAME_BYTES: usize = 512;

/// A VHD opened for writing in place.
pub struct VhdEditor {
    path: PathBuf,
    file: File,
    footer: Footer,
    footer_dirty: bool,
    virtual_size: u64,
    dynamic: Option<DynamicState>,
}

struct DynamicState {
    header: DynamicHeader,
    header_offset: u64,
    header_dirty: bool,
    block_size: u64,
    bitmap_size: u64,
    bat: Vec<u32>,
    dirty_bat_sectors: BTreeSet<u64>,
    /// Sector bitmaps read or changed in this session, by block index: (bits, dirty).
    bitmaps: BTreeMap<u64, (Vec<u8>, bool)>,
    /// Where the next appended structure starts; the trailing footer sits here.
    next: u64,
    /// The file must be cut to `next + FOOTER_SIZE` at `finish` (after `empty`).
    truncate: bool,
    /// Guest data was written and must be synced before metadata.
    data_written: bool,
}

fn io(path: &Path, offset: u64, e: std::io::Error) -> DiskError {
    DiskError::io(path, offset, e)
}

/// Writing follows BAT entries: one that points past the end, into the headers or into
/// another block would make a write land there. Such images are refused before any write.
fn refuse_inconsistent(image: &VhdImage) -> Result<()> {
    use crate::image::DiskImage;
    let report = image.check(&vmedia_io::NoProgress)?;
    if report.corruptions == 0 {
        return Ok(());
    }
    let first = report
        .messages
        .iter()
        .find(|m| m.starts_with("ERROR"))
        .cloned()
        .unwrap_or_default();
    Err(DiskError::corrupt(
        &image.path,
        FORMAT,
        image.dynamic.as_ref().map_or(0, |d| d.header.table_offset),
        "BAT entry",
        format!(
            "{} problem(s) found before writing in place ({first}); run `vmedia disk check` and repair the image first",
            report.corruptions
        ),
    ))
}

impl VhdEditor {
    /// Opens `path` (fixed, dynamic or differencing VHD) for writing. The parent is not
    /// opened: the editor changes this layer only.
    pub fn open(path: &Path) -> Result<VhdEditor> {
        let file = crate::image::open_for_writing(path)?;
        let reader = file.try_clone().map_err(|e| io(path, 0, e))?;
        let opts = OpenOptions {
            skip_backing: true,
            format: Some(Format::Vhd),
            ..OpenOptions::default()
        };
        let image = VhdImage::open(path, Arc::new(reader), &opts)?;
        refuse_inconsistent(&image)?;
        let footer = image.footer.clone();
        let virtual_size = image.virtual_size;
        let file_size = image.file_size;
        let mut trailing = [0u8; FOOTER_SIZE];
        crate::shared::read_exact(&file, path, &mut trailing, file_size - FOOTER_SIZE as u64)?;
        let footer_dirty = !Footer::has_cookie(&trailing) || !Footer::checksum_ok(&trailing);
        let dynamic = match image.dynamic {
            None => None,
            Some(d) => {
                let block_size = u64::from(d.header.block_size);
                let span = d.bitmap_size + block_size;
                let mut end = metadata_end(&d.header, footer.data_offset);
                for &entry in &d.bat {
                    if entry != BAT_UNUSED {
                        end = end.max(u64::from(entry) * SECTOR + span);
                    }
                }
                // New blocks go where the trailing footer is (or after the last block when a
                // damaged footer made the reader use the copy at 0).
                let next = end.max(file_size - FOOTER_SIZE as u64).div_ceil(SECTOR) * SECTOR;
                Some(DynamicState {
                    header_offset: footer.data_offset,
                    header: d.header,
                    header_dirty: false,
                    block_size,
                    bitmap_size: d.bitmap_size,
                    bat: d.bat,
                    dirty_bat_sectors: BTreeSet::new(),
                    bitmaps: BTreeMap::new(),
                    next,
                    truncate: false,
                    data_written: false,
                })
            }
        };
        Ok(VhdEditor {
            path: path.to_path_buf(),
            file,
            footer,
            footer_dirty,
            virtual_size,
            dynamic,
        })
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The unit commit and rebase write in (see `EDIT_CLUSTER`).
    pub fn cluster_size(&self) -> u64 {
        match &self.dynamic {
            Some(d) => EDIT_CLUSTER.min(d.block_size),
            None => EDIT_CLUSTER,
        }
    }

    /// Writes `data` at `guest_offset` (any length; in a differencing image it must cover
    /// whole sectors unless a partly covered sector is already present in this layer).
    pub fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(guest_offset, data)
    }

    /// Makes the cluster at `guest_offset` read as zeros.
    pub fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        let len = editor::cluster_len_at(self.cluster_size(), self.virtual_size, guest_offset);
        self.zero_range(guest_offset, len)
    }

    /// Writes guest data in place.
    pub fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        crate::shared::check_range(
            &self.path,
            guest_offset,
            data.len() as u64,
            self.virtual_size,
        )?;
        if self.dynamic.is_none() {
            return self
                .file
                .write_all_at(data, guest_offset)
                .map_err(|e| io(&self.path, guest_offset, e));
        }
        let block_size = self.block_size();
        editor::split_at_blocks(
            guest_offset,
            data.len(),
            block_size,
            |index, in_block, range| self.write_in_block(index, in_block, &data[range]),
        )
    }

    /// Makes `[guest_offset, +len)` read as zeros: nothing to do for unallocated blocks of a
    /// dynamic image (they read as zeros), zeros written everywhere else (a differencing
    /// image must hide the parent's data).
    pub fn zero_range(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        crate::shared::check_range(&self.path, guest_offset, len, self.virtual_size)?;
        let zeros = vec![0u8; EDIT_CLUSTER as usize];
        let differencing = self.footer.disk_type == DiskType::Differencing;
        let mut done = 0u64;
        while done < len {
            let at = guest_offset + done;
            let mut n = (len - done).min(EDIT_CLUSTER);
            if let Some(d) = &self.dynamic {
                n = n.min(d.block_size - at % d.block_size);
                let unallocated = d
                    .bat
                    .get((at / d.block_size) as usize)
                    .is_none_or(|e| *e == BAT_UNUSED);
                if unallocated && !differencing {
                    done += n;
                    continue;
                }
            }
            self.write_at(at, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    fn block_size(&self) -> u64 {
        self.dynamic.as_ref().map_or(EDIT_CLUSTER, |d| d.block_size)
    }

    fn write_in_block(&mut self, index: u64, in_block: u64, data: &[u8]) -> Result<()> {
        let differencing = self.footer.disk_type == DiskType::Differencing;
        // Refused before a block is appended (an unallocated block has no sector present).
        if differencing {
            self.check_partial_sectors(index, in_block, data.len() as u64)?;
        }
        let start = self.block_start(index)?;
        let path = self.path.clone();
        let d = self.dynamic.as_mut().ok_or_else(|| fixed_error(&path))?;
        let host = start + d.bitmap_size + in_block;
        d.data_written = true;
        self.file
            .write_all_at(data, host)
            .map_err(|e| io(&path, host, e))?;
        if differencing {
            let first = in_block / SECTOR;
            let last = (in_block + data.len() as u64).div_ceil(SECTOR);
            let bits = self.bitmap_mut(index)?;
            for s in first..last {
                BITS.set(bits, s);
            }
        }
        Ok(())
    }

    /// A write that covers part of a sector keeps the rest of it only if the sector is
    /// already in this layer; otherwise the rest would have to come from the parent.
    fn check_partial_sectors(&mut self, index: u64, in_block: u64, len: u64) -> Result<()> {
        let guest_end = index * self.block_size() + in_block + len;
        let ends_the_disk = guest_end == self.virtual_size;
        for sector in editor::partly_covered_sectors(in_block, len, SECTOR, ends_the_disk) {
            let bits = self.bitmap_mut(index)?;
            if !BITS.get(bits, sector) {
                return Err(DiskError::Unsupported {
                    path: self.path.clone(),
                    format: FORMAT,
                    feature: format!(
                        "a write covering part of sector {sector} of block {index} in a differencing VHD (whole 512-byte sectors only)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Host offset of block `index`'s bitmap, appending the block when it is not allocated.
    fn block_start(&mut self, index: u64) -> Result<u64> {
        let differencing = self.footer.disk_type == DiskType::Differencing;
        let footer = self.footer.emit();
        let path = self.path.clone();
        let d = self.dynamic.as_mut().ok_or_else(|| fixed_error(&path))?;
        let entry = *d.bat.get(index as usize).ok_or_else(|| {
            DiskError::corrupt(
                &path,
                FORMAT,
                d.header.table_offset,
                "max table entries",
                format!("block {index} has no BAT entry"),
            )
        })?;
        if entry != BAT_UNUSED {
            return Ok(u64::from(entry) * SECTOR);
        }
        let start = d.next;
        let sector = u32::try_from(start / SECTOR).map_err(|_| DiskError::Limit {
            path: path.clone(),
            offset: d.header.table_offset + index * 4,
            field: "BAT entry",
            value: start,
            limit: u64::from(u32::MAX) * SECTOR,
            why: "VHD block addresses are 32-bit sector numbers (2 TiB of file)",
        })?;
        let end = start + d.bitmap_size + d.block_size;
        // The footer moves first, so the file always ends with a valid one; the block's data
        // area is a hole until written (zeros, as an unwritten dynamic block must read).
        self.file
            .write_all_at(&footer, end)
            .map_err(|e| io(&path, end, e))?;
        d.next = end;
        d.bat[index as usize] = sector;
        d.dirty_bat_sectors.insert(index * 4 / SECTOR);
        let fill = if differencing { 0x00 } else { 0xff };
        d.bitmaps
            .insert(index, (vec![fill; d.bitmap_size as usize], true));
        Ok(start)
    }

    /// The sector bitmap of block `index`, read on first use; marked dirty.
    fn bitmap_mut(&mut self, index: u64) -> Result<&mut Vec<u8>> {
        let path = &self.path;
        let file = &self.file;
        let d = self.dynamic.as_mut().ok_or_else(|| fixed_error(path))?;
        let slot = match d.bitmaps.entry(index) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let entry = d.bat.get(index as usize).copied().unwrap_or(BAT_UNUSED);
                let mut bits = vec![0u8; d.bitmap_size as usize];
                if entry != BAT_UNUSED {
                    let at = u64::from(entry) * SECTOR;
                    crate::shared::read_exact(file, path, &mut bits, at)?;
                }
                v.insert((bits, false))
            }
        };
        slot.1 = true;
        Ok(&mut slot.0)
    }

    /// Records `parent` as this image's parent (unique id, time stamp, unicode name, W2ku and
    /// W2ru locators), turning a dynamic image into a differencing one; `None` turns a
    /// differencing image into a dynamic one. Only the reference changes: callers copy any
    /// data whose view would change first (safe rebase).
    ///
    /// Locator data is rewritten in the space the slot already reserves when it fits, else
    /// appended at the end of the file. Refused: fixed images, parents that are not VHDs of
    /// the same size, names longer than the 256-character unicode name field.
    pub fn set_parent_path(&mut self, parent: Option<(&str, &Path)>) -> Result<()> {
        if self.dynamic.is_none() {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "a parent for a fixed VHD",
            });
        }
        match parent {
            Some((name, resolved)) => self.link_parent(name, resolved),
            None => self.unlink_parent(),
        }
    }

    fn link_parent(&mut self, name: &str, resolved: &Path) -> Result<()> {
        let (parent_footer, parent_size) = super::parent_identity(resolved)?;
        if parent_size != self.virtual_size {
            return Err(DiskError::InvalidOption {
                key: "backing_file".into(),
                value: name.into(),
                reason: format!(
                    "a differencing VHD must have its parent's size: {} has {parent_size} bytes, {} has {}",
                    resolved.display(),
                    self.path.display(),
                    self.virtual_size
                ),
            });
        }
        let unicode_name = parent_unicode_name(name);
        if unicode_name.encode_utf16().count() * 2 > PARENT_NAME_BYTES {
            return Err(DiskError::InvalidOption {
                key: "backing_file".into(),
                value: name.into(),
                reason: "the parent's file name is longer than the 256 UTF-16 units of the VHD parent name field".into(),
            });
        }
        let texts = parent_locator_texts(name, resolved);
        let was_dynamic = self.footer.disk_type == DiskType::Dynamic;
        if was_dynamic {
            // Every allocated block of a dynamic image is wholly this layer's.
            self.fill_bitmaps_of_allocated_blocks()?;
        }
        let path = self.path.clone();
        let d = self.dynamic.as_mut().ok_or_else(|| fixed_error(&path))?;
        let old = d.header.locators;
        let mut locators = [EMPTY; LOCATOR_SLOTS];
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, (code, text)) in texts.iter().enumerate() {
            let data = dynamic::encode_utf16le(text);
            if data.len() as u64 > u64::from(dynamic::MAX_LOCATOR_BYTES) {
                return Err(DiskError::InvalidOption {
                    key: "backing_file".into(),
                    value: name.into(),
                    reason: format!(
                        "the {} locator path is longer than {} bytes",
                        code_name(*code),
                        dynamic::MAX_LOCATOR_BYTES
                    ),
                });
            }
            // Reuse the room of the old slot with this platform code when it fits.
            // The room is checked against the BAT and every block too: `data_space` units
            // differ between creators, and a guess must never let the path overwrite data.
            let span = d.bitmap_size + d.block_size;
            let table_end = d.header.table_offset + u64::from(d.header.max_table_entries) * 4;
            let clear = |start: u64, len: u64| {
                let end = start.saturating_add(len);
                let outside = |a: u64, b: u64| end <= a || start >= b;
                outside(0, d.header_offset + dynamic::HEADER_SIZE as u64)
                    && outside(d.header.table_offset, table_end)
                    && d.bat.iter().filter(|e| **e != BAT_UNUSED).all(|e| {
                        let at = u64::from(*e) * SECTOR;
                        outside(at, at + span)
                    })
            };
            let reuse = old.iter().find(|l| {
                l.platform == *code
                    && data.len() as u64 <= locator_room(l)
                    && clear(l.data_offset, locator_room(l))
            });
            let (offset, space) = match reuse {
                Some(l) => (l.data_offset, l.data_space),
                None => {
                    let room = (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
                    let room = room.max(LOCATOR_SPACE);
                    let at = d.next;
                    d.next += room;
                    (at, room as u32)
                }
            };
            let mut padded = data.clone();
            padded.resize(locator_room_of(space) as usize, 0);
            writes.push((offset, padded));
            locators[i] = Locator {
                platform: *code,
                data_space: space,
                data_length: data.len() as u32,
                data_offset: offset,
            };
        }
        d.header.parent_unique_id = parent_footer.unique_id;
        d.header.parent_timestamp = parent_mtime(resolved);
        d.header.parent_name = unicode_name;
        d.header.locators = locators;
        d.header_dirty = true;
        let next = d.next;
        for (at, bytes) in writes {
            self.file
                .write_all_at(&bytes, at)
                .map_err(|e| io(&path, at, e))?;
        }
        self.footer.disk_type = DiskType::Differencing;
        self.footer_dirty = true;
        // Appended locator space pushed the trailing footer back.
        let footer = self.footer.emit();
        self.file
            .write_all_at(&footer, next)
            .map_err(|e| io(&path, next, e))?;
        Ok(())
    }

    fn unlink_parent(&mut self) -> Result<()> {
        if self.footer.disk_type == DiskType::Differencing {
            // Sectors the bitmap sends to the parent must read as zeros once there is no
            // parent: zero them in the data area, then mark the whole block present.
            let d = self
                .dynamic
                .as_ref()
                .ok_or_else(|| fixed_error(&self.path))?;
            let allocated: Vec<u64> = (0..d.bat.len() as u64)
                .filter(|i| d.bat[*i as usize] != BAT_UNUSED)
                .collect();
            let block_size = d.block_size;
            let zeros = vec![0u8; block_size.min(EDIT_CLUSTER) as usize];
            for index in allocated {
                let start = self.block_start(index)?;
                let bitmap_size = self.dynamic.as_ref().map_or(0, |d| d.bitmap_size);
                let bits = self.bitmap_mut(index)?.clone();
                let sectors = block_size / SECTOR;
                for run in editor::absent_runs(BITS, &bits, sectors, SECTOR, EDIT_CLUSTER) {
                    let at = start + bitmap_size + run.start * SECTOR;
                    let n = ((run.end - run.start) * SECTOR) as usize;
                    self.file
                        .write_all_at(&zeros[..n], at)
                        .map_err(|err| io(&self.path, at, err))?;
                }
                if let Some(d) = self.dynamic.as_mut() {
                    d.data_written = true;
                }
            }
            self.fill_bitmaps_of_allocated_blocks()?;
        }
        let d = self
            .dynamic
            .as_mut()
            .ok_or_else(|| fixed_error(&self.path))?;
        d.header.parent_unique_id = [0; 16];
        d.header.parent_timestamp = 0;
        d.header.parent_name.clear();
        d.header.locators = [EMPTY; LOCATOR_SLOTS];
        d.header_dirty = true;
        self.footer.disk_type = DiskType::Dynamic;
        self.footer_dirty = true;
        Ok(())
    }

    fn fill_bitmaps_of_allocated_blocks(&mut self) -> Result<()> {
        let Some(d) = self.dynamic.as_mut() else {
            return Ok(());
        };
        let size = d.bitmap_size as usize;
        for (index, &entry) in d.bat.iter().enumerate() {
            if entry != BAT_UNUSED {
                d.bitmaps.insert(index as u64, (vec![0xff; size], true));
            }
        }
        Ok(())
    }

    /// Drops every block: the image then reads entirely from its parent (or as zeros), and
    /// the file shrinks to its headers, BAT and locators.
    pub fn empty(&mut self) -> Result<()> {
        let path = self.path.clone();
        let data_offset = self.footer.data_offset;
        let Some(d) = self.dynamic.as_mut() else {
            return Err(DiskError::NotSupportedFor {
                path,
                format: FORMAT,
                operation: "emptying a fixed VHD",
            });
        };
        for (i, entry) in d.bat.iter_mut().enumerate() {
            if *entry != BAT_UNUSED {
                *entry = BAT_UNUSED;
                d.dirty_bat_sectors.insert(i as u64 * 4 / SECTOR);
            }
        }
        d.bitmaps.clear();
        d.next = metadata_end(&d.header, data_offset).div_ceil(SECTOR) * SECTOR;
        d.truncate = true;
        self.footer_dirty = true;
        Ok(())
    }

    /// Writes the metadata (after syncing the data it describes) and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        let path = self.path.clone();
        let Some(mut d) = self.dynamic.take() else {
            return self.file.sync_all().map_err(|e| io(&path, 0, e));
        };
        if d.data_written {
            self.file.sync_data().map_err(|e| io(&path, 0, e))?;
        }
        for (index, (bits, dirty)) in &d.bitmaps {
            if !dirty {
                continue;
            }
            let Some(&entry) = d.bat.get(*index as usize) else {
                continue;
            };
            if entry == BAT_UNUSED {
                continue;
            }
            let at = u64::from(entry) * SECTOR;
            self.file
                .write_all_at(bits, at)
                .map_err(|e| io(&path, at, e))?;
        }
        let per_sector = (SECTOR / 4) as usize;
        for sector in std::mem::take(&mut d.dirty_bat_sectors) {
            let first = sector as usize * per_sector;
            let last = (first + per_sector).min(d.bat.len());
            if first >= last {
                continue;
            }
            let bytes: Vec<u8> = d.bat[first..last]
                .iter()
                .flat_map(|e| e.to_be_bytes())
                .collect();
            let at = d.header.table_offset + first as u64 * 4;
            self.file
                .write_all_at(&bytes, at)
                .map_err(|e| io(&path, at, e))?;
        }
        if d.truncate {
            // The emptied BAT must be durable before the blocks it referenced are cut off.
            self.file.sync_data().map_err(|e| io(&path, 0, e))?;
        }
        let footer = self.footer.emit();
        let header = d.header.emit();
        let write = |bytes: &[u8], at: u64| {
            self.file
                .write_all_at(bytes, at)
                .map_err(|e| io(&path, at, e))
        };
        // When both change, the one that keeps the image openable goes first: linking writes
        // the parent fields before the footer says "differencing", unlinking makes the footer
        // say "dynamic" before the parent fields go.
        let footer_first = self.footer.disk_type == DiskType::Dynamic;
        let steps: [(bool, &[u8], u64); 2] = if footer_first {
            [
                (self.footer_dirty, &footer, 0),
                (d.header_dirty, &header, d.header_offset),
            ]
        } else {
            [
                (d.header_dirty, &header, d.header_offset),
                (self.footer_dirty, &footer, 0),
            ]
        };
        let both = self.footer_dirty && d.header_dirty;
        for (i, (dirty, bytes, at)) in steps.into_iter().enumerate() {
            if !dirty {
                continue;
            }
            if i == 1 && both {
                self.file.sync_data().map_err(|e| io(&path, 0, e))?;
            }
            write(bytes, at)?;
        }
        self.file
            .write_all_at(&footer, d.next)
            .map_err(|e| io(&path, d.next, e))?;
        let end = d.next + FOOTER_SIZE as u64;
        let len = self.file.metadata().map_err(|e| io(&path, 0, e))?.len();
        if d.truncate || len > end {
            self.file.set_len(end).map_err(|e| io(&path, end, e))?;
        }
        self.file.sync_all().map_err(|e| io(&path, 0, e))
    }
}

fn fixed_error(path: &Path) -> DiskError {
    DiskError::NotSupportedFor {
        path: path.to_path_buf(),
        format: FORMAT,
        operation: "block allocation or parents in a fixed VHD",
    }
}

const EMPTY: Locator = Locator {
    platform: PlatformCode::None,
    data_space: 0,
    data_length: 0,
    data_offset: 0,
};

fn code_name(code: PlatformCode) -> &'static str {
    match code {
        PlatformCode::W2ku => "W2ku",
        PlatformCode::W2ru => "W2ru",
        _ => "parent",
    }
}

/// Bytes a locator's `data_space` reserves: Virtual PC counts sectors, Windows and vmedia
/// bytes; values under one sector can only be sector counts.
fn locator_room_of(data_space: u32) -> u64 {
    let space = u64::from(data_space);
    if space < SECTOR {
        space * SECTOR
    } else {
        space
    }
}

fn locator_room(l: &Locator) -> u64 {
    locator_room_of(l.data_space).min(u64::from(dynamic::MAX_LOCATOR_BYTES))
}

/// First byte after the header, the BAT and every locator's reserved space.
fn metadata_end(header: &DynamicHeader, header_offset: u64) -> u64 {
    let mut end = header_offset + dynamic::HEADER_SIZE as u64;
    let table = u64::from(header.max_table_entries) * 4;
    end = end.max((header.table_offset + table).div_ceil(SECTOR) * SECTOR);
    for l in &header.locators {
        if l.platform != PlatformCode::None && l.data_offset != 0 {
            end = end.max(l.data_offset.saturating_add(locator_room(l)));
        }
    }
    end
}

editor::own_format_parent_editor!(VhdEditor, Format::Vhd);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::CreateOptions;

    const SIZE: u64 = 4 << 20;

    /// A VHD of SIZE bytes (512 KiB blocks, force_size) with `fill` written at `writes`.
    fn make(dir: &Path, name: &str, parent: Option<&str>, writes: &[(u64, usize, u8)]) -> PathBuf {
        let path = dir.join(name);
        let mut opts = CreateOptions::new(Format::Vhd, SIZE);
        opts.options
            .insert("block_size".into(), (512 << 10).to_string());
        opts.options.insert("force_size".into(), "on".into());
        opts.backing = parent.map(|p| (p.to_string(), Some(Format::Vhd)));
        let mut w = super::super::create(&path, &opts).unwrap();
        for &(at, len, fill) in writes {
            w.write_at(at, &vec![fill; len]).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn read_all(path: &Path) -> Vec<u8> {
        let img = crate::factory::open(path, &OpenOptions::default()).unwrap();
        let mut buf = vec![0u8; img.virtual_size() as usize];
        img.read_at(&mut buf, 0).unwrap();
        buf
    }

    fn header(path: &Path) -> DynamicHeader {
        let bytes = std::fs::read(path).unwrap();
        DynamicHeader::parse(bytes[512..1536].try_into().unwrap()).unwrap()
    }

    #[test]
    fn dynamic_write_round_trip_appends_blocks_and_moves_the_footer() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "d.vhd", None, &[(0, 4096, 1)]);
        let mut expect = read_all(&p);
        let mut e = VhdEditor::open(&p).unwrap();
        e.write_at(1 << 20, &[7u8; 70000]).unwrap();
        e.write_at(100, &[9u8; 300]).unwrap();
        e.zero_range(2048, 1024).unwrap();
        e.finish().unwrap();
        expect[(1 << 20)..(1 << 20) + 70000].fill(7);
        expect[100..400].fill(9);
        expect[2048..3072].fill(0);
        assert!(
            read_all(&p) == expect,
            "the edited image reads back differently"
        );
        let bytes = std::fs::read(&p).unwrap();
        let tail = &bytes[bytes.len() - 512..];
        assert!(Footer::has_cookie(tail) && Footer::checksum_ok(tail.try_into().unwrap()));
        assert_eq!(
            &bytes[..512],
            tail,
            "the footer copy at 0 and the trailing footer agree"
        );
        let img = crate::factory::open(&p, &OpenOptions::default()).unwrap();
        let report = img.check(&vmedia_io::NoProgress).unwrap();
        assert_eq!(report.corruptions, 0, "{:?}", report.messages);
        assert_eq!(report.allocated_clusters, Some(2));
    }

    #[test]
    fn differencing_partial_block_write_sets_only_the_written_sectors() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(dir.path(), "child.vhd", Some("base.vhd"), &[]);
        let mut e = VhdEditor::open(&child).unwrap();
        e.write_at(512 * 3, &[0xaa; 1024]).unwrap();
        e.finish().unwrap();
        let h = header(&child);
        let bytes = std::fs::read(&child).unwrap();
        let bat0 = u32::from_be_bytes(bytes[h.table_offset as usize..][..4].try_into().unwrap());
        let bitmap = &bytes[bat0 as usize * 512..][..h.bitmap_size() as usize];
        assert_eq!(bitmap[0], 0b0001_1000, "sectors 3 and 4 only");
        assert!(bitmap[1..].iter().all(|b| *b == 0));
        let data = read_all(&child);
        assert!(data[..1536].iter().all(|b| *b == 0x55));
        assert!(data[1536..2560].iter().all(|b| *b == 0xaa));
        assert!(data[2560..].iter().all(|b| *b == 0x55));
    }

    #[test]
    fn differencing_write_of_part_of_a_sector_not_present_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[]);
        let child = make(dir.path(), "child.vhd", Some("base.vhd"), &[]);
        let mut e = VhdEditor::open(&child).unwrap();
        let err = e.write_at(100, &[1u8; 10]).unwrap_err();
        assert!(err.to_string().contains("whole 512-byte sectors"), "{err}");
    }

    #[test]
    fn differencing_zeros_hide_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(dir.path(), "child.vhd", Some("base.vhd"), &[]);
        let mut e = VhdEditor::open(&child).unwrap();
        e.zero_cluster(EDIT_CLUSTER).unwrap();
        e.finish().unwrap();
        let data = read_all(&child);
        assert!(data[EDIT_CLUSTER as usize..2 * EDIT_CLUSTER as usize]
            .iter()
            .all(|b| *b == 0));
        assert!(data[..EDIT_CLUSTER as usize].iter().all(|b| *b == 0x55));
    }

    #[test]
    fn set_parent_rewrites_identity_and_locators() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "a.vhd", None, &[(0, 4096, 1)]);
        let b = make(dir.path(), "bb-longer-name.vhd", None, &[(0, 4096, 2)]);
        let child = make(dir.path(), "child.vhd", Some("a.vhd"), &[(8192, 512, 3)]);
        let mut e = VhdEditor::open(&child).unwrap();
        e.set_parent_path(Some(("bb-longer-name.vhd", &b))).unwrap();
        e.finish().unwrap();
        let h = header(&child);
        assert_eq!(h.parent_name, "bb-longer-name.vhd");
        let (b_footer, _) = super::super::parent_identity(&b).unwrap();
        assert_eq!(h.parent_unique_id, b_footer.unique_id);
        let bytes = std::fs::read(&child).unwrap();
        let text = |code| {
            let l = h.locators.iter().find(|l| l.platform == code).unwrap();
            let data = &bytes[l.data_offset as usize..][..l.data_length as usize];
            dynamic::decode_locator_path(code, data).unwrap()
        };
        assert_eq!(text(PlatformCode::W2ru), ".\\bb-longer-name.vhd");
        assert!(text(PlatformCode::W2ku).ends_with("/bb-longer-name.vhd"));
        let img = crate::factory::open(&child, &OpenOptions::default()).unwrap();
        assert_eq!(img.backing().unwrap().path(), b.as_path());
        let data = read_all(&child);
        assert_eq!(data[0], 2);
        assert_eq!(data[8192], 3);
    }

    #[test]
    fn locator_room_that_overlaps_blocks_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = make(dir.path(), "a.vhd", None, &[]);
        let child = make(
            dir.path(),
            "child.vhd",
            Some("a.vhd"),
            &[(0, SIZE as usize, 7)],
        );
        // Claim a W2ru room of 16 MiB: it would run over every block.
        let mut h = header(&child);
        let slot = h
            .locators
            .iter()
            .position(|l| l.platform == PlatformCode::W2ru)
            .unwrap();
        h.locators[slot].data_space = 16 << 20;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&child)
            .unwrap();
        f.write_all_at(&h.emit(), 512).unwrap();
        let old_len = std::fs::metadata(&child).unwrap().len();
        let mut e = VhdEditor::open(&child).unwrap();
        e.set_parent_path(Some(("a.vhd", &a))).unwrap();
        e.finish().unwrap();
        let h = header(&child);
        let w2ru = h
            .locators
            .iter()
            .find(|l| l.platform == PlatformCode::W2ru)
            .unwrap();
        assert!(w2ru.data_offset >= old_len - 512, "the path was appended");
        assert!(
            read_all(&child).iter().all(|b| *b == 7),
            "no block was overwritten"
        );
    }

    #[test]
    fn an_edit_cut_short_before_finish_leaves_the_old_view() {
        // What a crash before `finish` leaves on disk: data in new blocks, no metadata.
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(dir.path(), "child.vhd", Some("base.vhd"), &[(0, 512, 0xaa)]);
        let dynamic = make(dir.path(), "d.vhd", None, &[(0, 512, 0xaa)]);
        for p in [&child, &dynamic] {
            let before = read_all(p);
            let mut e = VhdEditor::open(p).unwrap();
            e.write_at(1 << 20, &[0xee; 4096]).unwrap();
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
            let img = crate::factory::open(p, &OpenOptions::default()).unwrap();
            let report = img.check(&vmedia_io::NoProgress).unwrap();
            assert_eq!(report.corruptions, 0, "{:?}", report.messages);
        }
    }

    #[test]
    fn set_parent_refuses_a_parent_of_another_size() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "a.vhd", None, &[]);
        let child = make(dir.path(), "child.vhd", Some("a.vhd"), &[]);
        let other = dir.path().join("small.vhd");
        let mut opts = CreateOptions::new(Format::Vhd, 1 << 20);
        opts.options.insert("force_size".into(), "on".into());
        super::super::create(&other, &opts)
            .unwrap()
            .finish()
            .unwrap();
        let mut e = VhdEditor::open(&child).unwrap();
        let err = e.set_parent_path(Some(("small.vhd", &other))).unwrap_err();
        assert!(err.to_string().contains("parent's size"), "{err}");
    }

    #[test]
    fn set_parent_refuses_a_name_longer_than_the_unicode_name_field() {
        let dir = tempfile::tempdir().unwrap();
        let a = make(dir.path(), "a.vhd", None, &[]);
        let child = make(dir.path(), "child.vhd", Some("a.vhd"), &[]);
        let long = format!("{}.vhd", "x".repeat(300));
        let mut e = VhdEditor::open(&child).unwrap();
        let err = e.set_parent_path(Some((&long, &a))).unwrap_err();
        assert!(err.to_string().contains("256 UTF-16 units"), "{err}");
    }

    #[test]
    fn unlinking_the_parent_keeps_written_sectors_and_zeros_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(
            dir.path(),
            "child.vhd",
            Some("base.vhd"),
            &[(1024, 512, 0xaa)],
        );
        let mut e = VhdEditor::open(&child).unwrap();
        e.set_parent_path(None).unwrap();
        e.finish().unwrap();
        let img = crate::factory::open(&child, &OpenOptions::default()).unwrap();
        assert!(img.backing_ref().is_none());
        let data = read_all(&child);
        assert!(data[1024..1536].iter().all(|b| *b == 0xaa));
        assert!(data[..1024].iter().all(|b| *b == 0));
        assert!(data[1536..].iter().all(|b| *b == 0));
    }

    #[test]
    fn empty_clears_the_bat_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vhd", None, &[(0, SIZE as usize, 0x55)]);
        let child = make(
            dir.path(),
            "child.vhd",
            Some("base.vhd"),
            &[(0, 1 << 20, 0xaa)],
        );
        let before = std::fs::metadata(&child).unwrap().len();
        let mut e = VhdEditor::open(&child).unwrap();
        e.empty().unwrap();
        e.finish().unwrap();
        assert!(std::fs::metadata(&child).unwrap().len() < before - (1 << 20));
        assert!(read_all(&child).iter().all(|b| *b == 0x55));
    }

    #[test]
    fn fixed_vhd_is_written_like_a_raw_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.vhd");
        let mut opts = CreateOptions::new(Format::Vhd, SIZE);
        opts.options.insert("subformat".into(), "fixed".into());
        opts.options.insert("force_size".into(), "on".into());
        super::super::create(&p, &opts).unwrap().finish().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        let mut e = VhdEditor::open(&p).unwrap();
        e.write_at(4096, &[3u8; 512]).unwrap();
        assert!(e.empty().is_err());
        e.finish().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        assert!(read_all(&p)[4096..4608].iter().all(|b| *b == 3));
    }
}
