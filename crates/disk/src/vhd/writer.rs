//! Writing VHD images: fixed (data + footer), dynamic and differencing (footer copy, dynamic
//! header, BAT, parent locators, blocks appended in guest order, footer).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmedia_io::AtomicFile;

use super::dynamic::{self, DynamicHeader, Locator, PlatformCode, BAT_UNUSED, DEFAULT_BLOCK_SIZE};
use super::footer::{self, DiskType, Footer, Geometry, FOOTER_SIZE, MAX_CHS_SECTORS};
use super::{parent_identity, MAX_VIRTUAL_SIZE};
use crate::error::{DiskError, Result};
use crate::image::{CreateOptions, ImageWriter};

/// Room reserved for each parent locator (bytes), as Hyper-V reserves for W2ku.
pub(crate) const LOCATOR_SPACE: u64 = 4096;
/// Creator version written (vmedia 0.1).
const CREATOR_VERSION: u32 = 0x0000_0001;

/// The decisions `create` and `measure` share.
pub(crate) struct Plan {
    /// Flush before the rename (`CreateOptions::flush`; off for qemu-img's "unsafe" cache).
    pub flush: bool,
    pub virtual_size: u64,
    pub geometry: Geometry,
    pub fixed: bool,
    pub creator_app: [u8; 4],
    pub block_size: u32,
}

impl Plan {
    pub(crate) fn from_options(path: &Path, opts: &CreateOptions) -> Result<Plan> {
        opts.reject_unknown_options(&["subformat", "force_size", "size", "block_size"])?;
        let fixed = match opts.options.get("subformat").map(String::as_str) {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(other) => {
                return Err(DiskError::InvalidOption {
                    key: "subformat".into(),
                    value: other.into(),
                    reason: "vpc accepts dynamic or fixed".into(),
                })
            }
        };
        if fixed && opts.backing.is_some() {
            return Err(DiskError::NotSupportedFor {
                path: path.to_path_buf(),
                format: "vpc",
                operation: "a backing file with subformat=fixed",
            });
        }
        let force_size = match opts.options.get("force_size") {
            Some(v) => crate::image::parse_on_off("force_size", v)?,
            None => false,
        };
        let block_size = match opts.options.get("block_size") {
            None => DEFAULT_BLOCK_SIZE,
            Some(v) => {
                let b: u32 = v.parse().map_err(|_| DiskError::InvalidOption {
                    key: "block_size".into(),
                    value: v.clone(),
                    reason: "not a number".into(),
                })?;
                if !b.is_power_of_two() || !(512 * 1024..=dynamic::MAX_BLOCK_SIZE).contains(&b) {
                    return Err(DiskError::InvalidOption {
                        key: "block_size".into(),
                        value: v.clone(),
                        reason: "a power of two from 512 KiB to 256 MiB".into(),
                    });
                }
                b
            }
        };
        let requested = opts.virtual_size;
        let sectors = requested.div_ceil(512);
        let (virtual_size, geometry, creator_app) = if force_size {
            (sectors * 512, Geometry::for_sectors(sectors), *b"qem2")
        } else {
            // As qemu: the size becomes the smallest CHS size covering the request, unless that
            // is the maximal geometry, where the size field is used as is.
            let g = Geometry::covering(sectors);
            if g.total_sectors() == MAX_CHS_SECTORS && g.total_sectors() < sectors {
                (sectors * 512, g, *b"vmed")
            } else {
                (g.total_sectors() * 512, g, *b"vmed")
            }
        };
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: requested.to_string(),
                reason: "VHD images are limited to 2040 GiB".into(),
            });
        }
        Ok(Plan {
            flush: opts.flush,
            virtual_size,
            geometry,
            fixed,
            creator_app,
            block_size,
        })
    }

    fn footer(&self, disk_type: DiskType, data_offset: u64) -> Footer {
        Footer {
            features: footer::FEATURES_RESERVED,
            version: footer::FILE_FORMAT_VERSION,
            data_offset,
            timestamp: footer::timestamp_now(),
            creator_app: self.creator_app,
            creator_version: CREATOR_VERSION,
            creator_host: *b"Wi2k",
            original_size: self.virtual_size,
            current_size: self.virtual_size,
            geometry: self.geometry,
            disk_type,
            checksum: 0,
            unique_id: *uuid::Uuid::new_v4().as_bytes(),
            saved_state: 0,
        }
    }
}

const HEADER_OFFSET: u64 = FOOTER_SIZE as u64;
const BAT_OFFSET: u64 = HEADER_OFFSET + dynamic::HEADER_SIZE as u64;

fn bat_entries(virtual_size: u64, block_size: u32) -> u64 {
    virtual_size.div_ceil(u64::from(block_size))
}

/// First byte after the BAT (and locators), where blocks start; 512-aligned.
pub(crate) fn data_start(virtual_size: u64, block_size: u32) -> u64 {
    let bat_bytes = (bat_entries(virtual_size, block_size) * 4).div_ceil(512) * 512;
    BAT_OFFSET + bat_bytes
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    let plan = Plan::from_options(path, opts)?;
    let file = AtomicFile::create(path, opts.overwrite).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "create",
        source,
    })?;
    if plan.fixed {
        let len = plan.virtual_size + FOOTER_SIZE as u64;
        file.file()
            .set_len(len)
            .map_err(|e| DiskError::io(file.temp_path(), len, e))?;
        return Ok(Box::new(FixedWriter { file, plan }));
    }
    let entries = bat_entries(plan.virtual_size, plan.block_size);
    let mut header = DynamicHeader::new(BAT_OFFSET, entries as u32, plan.block_size);
    let mut next = data_start(plan.virtual_size, plan.block_size);
    let mut locator_data = Vec::new();
    let mut disk_type = DiskType::Dynamic;
    if let Some((name, format)) = &opts.backing {
        crate::image::require_parent_format(*format, crate::image::Format::Vhd)?;
        disk_type = DiskType::Differencing;
        let parent_path = crate::reference::resolve_reference(path, name);
        let (parent_footer, parent_size) = parent_identity(&parent_path)?;
        if parent_size != plan.virtual_size {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: opts.virtual_size.to_string(),
                reason: format!(
                    "a differencing VHD must have its parent's size ({parent_size} bytes)"
                ),
            });
        }
        header.parent_unique_id = parent_footer.unique_id;
        header.parent_timestamp = parent_mtime(&parent_path);
        header.parent_name = parent_unicode_name(name);
        for (slot, (code, text)) in parent_locator_texts(name, &parent_path)
            .into_iter()
            .enumerate()
        {
            let data = dynamic::encode_utf16le(&text);
            if data.len() as u64 > LOCATOR_SPACE {
                return Err(DiskError::InvalidOption {
                    key: "backing_file".into(),
                    value: name.clone(),
                    reason: "parent path is too long for a VHD locator".into(),
                });
            }
            header.locators[slot] = Locator {
                platform: code,
                data_space: LOCATOR_SPACE as u32,
                data_length: data.len() as u32,
                data_offset: next,
            };
            locator_data.push((next, data));
            next += LOCATOR_SPACE;
        }
    }
    let bitmap_size = dynamic::bitmap_size(plan.block_size);
    let footer = plan.footer(disk_type, HEADER_OFFSET);
    Ok(Box::new(DynamicWriter {
        file,
        path: path.to_path_buf(),
        block_size: u64::from(plan.block_size),
        bitmap_size,
        bat: vec![BAT_UNUSED; entries as usize],
        bitmaps: Vec::new(),
        next_block: next,
        header,
        footer,
        locator_data,
        flush: plan.flush,
        differencing: disk_type == DiskType::Differencing,
        virtual_size: plan.virtual_size,
    }))
}

/// The parent locators vmedia writes, as Hyper-V does: W2ku with the absolute path first, then
/// W2ru with the path relative to the child (".\\" + the name, backslashes). A name given as
/// an absolute path has no relative form, so only W2ku is written for it.
pub(crate) fn parent_locator_texts(name: &str, parent_path: &Path) -> Vec<(PlatformCode, String)> {
    let absolute = std::fs::canonicalize(parent_path).unwrap_or(parent_path.to_path_buf());
    let mut texts = vec![(PlatformCode::W2ku, absolute.display().to_string())];
    if !Path::new(name).is_absolute() {
        texts.push((
            PlatformCode::W2ru,
            format!(".\\{}", name.replace('/', "\\")),
        ));
    }
    texts
}

/// The dynamic header's parent unicode name: the parent's file name.
pub(crate) fn parent_unicode_name(name: &str) -> String {
    Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

/// The parent's modification time in VHD seconds (since 2000-01-01), the dynamic header's
/// parent time stamp.
pub(crate) fn parent_mtime(path: &Path) -> u32 {
    let secs = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(footer::VHD_EPOCH_UNIX);
    u32::try_from(secs.saturating_sub(footer::VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

struct FixedWriter {
    file: AtomicFile,
    plan: Plan,
}

impl ImageWriter for FixedWriter {
    fn cluster_size(&self) -> u64 {
        // Feeding 1 MiB at a time keeps holes for zero runs while writes stay large.
        1 << 20
    }
    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        crate::shared::check_range(
            self.file.final_path(),
            guest_offset,
            data.len() as u64,
            self.plan.virtual_size,
        )?;
        self.file
            .file()
            .write_all_at(data, guest_offset)
            .map_err(|e| DiskError::io(self.file.temp_path(), guest_offset, e))
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let footer = self.plan.footer(DiskType::Fixed, u64::MAX).emit();
        let at = self.plan.virtual_size;
        self.file
            .file()
            .write_all_at(&footer, at)
            .map_err(|e| DiskError::io(self.file.temp_path(), at, e))?;
        let final_path = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.plan.flush))
            .map_err(|e| DiskError::io(final_path, 0, e))
    }
}

struct DynamicWriter {
    file: AtomicFile,
    path: PathBuf,
    block_size: u64,
    bitmap_size: u64,
    bat: Vec<u32>,
    /// Sector bitmaps of allocated blocks (differencing only tracks real bits).
    bitmaps: Vec<(u64, Vec<u8>)>,
    next_block: u64,
    header: DynamicHeader,
    footer: Footer,
    locator_data: Vec<(u64, Vec<u8>)>,
    flush: bool,
    differencing: bool,
    virtual_size: u64,
}

impl DynamicWriter {
    fn io(&self, offset: u64, e: std::io::Error) -> DiskError {
        DiskError::io(self.file.temp_path(), offset, e)
    }

    /// Host offset of block `index`'s bitmap, allocating it at the end of the file.
    fn block(&mut self, index: u64) -> Result<(u64, usize)> {
        let i = index as usize;
        if self.bat[i] == BAT_UNUSED {
            let sector = self.next_block / 512;
            self.bat[i] = u32::try_from(sector).map_err(|_| DiskError::InvalidOption {
                key: "size".into(),
                value: self.virtual_size.to_string(),
                reason: "the image would exceed the 2 TiB reach of VHD block addresses".into(),
            })?;
            let fill = if self.differencing { 0 } else { 0xff };
            self.bitmaps
                .push((self.next_block, vec![fill; self.bitmap_size as usize]));
            self.next_block += self.bitmap_size + self.block_size;
        }
        let start = u64::from(self.bat[i]) * 512;
        let slot = self
            .bitmaps
            .iter()
            .rposition(|(s, _)| *s == start)
            .unwrap_or(0);
        Ok((start, slot))
    }

    fn mark(&mut self, slot: usize, in_block: u64, len: u64) {
        if !self.differencing {
            return;
        }
        let first = in_block / 512;
        let last = (in_block + len).div_ceil(512);
        let bitmap = &mut self.bitmaps[slot].1;
        for s in first..last {
            bitmap[(s / 8) as usize] |= 0x80 >> (s % 8);
        }
    }
}

impl ImageWriter for DynamicWriter {
    fn cluster_size(&self) -> u64 {
        self.block_size
    }

    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        crate::shared::check_range(
            &self.path,
            guest_offset,
            data.len() as u64,
            self.virtual_size,
        )?;
        let mut done = 0usize;
        while done < data.len() {
            let at = guest_offset + done as u64;
            let index = at / self.block_size;
            let in_block = at % self.block_size;
            let n = ((self.block_size - in_block) as usize).min(data.len() - done);
            let (start, slot) = self.block(index)?;
            let host = start + self.bitmap_size + in_block;
            self.file
                .file()
                .write_all_at(&data[done..done + n], host)
                .map_err(|e| self.io(host, e))?;
            self.mark(slot, in_block, n as u64);
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        // Only a differencing image must record zeros (they hide the parent's data); the new
        // block's data area is a hole that reads as zeros.
        if !self.differencing {
            return Ok(());
        }
        crate::shared::check_range(&self.path, guest_offset, len, self.virtual_size)?;
        let mut done = 0u64;
        while done < len {
            let at = guest_offset + done;
            let index = at / self.block_size;
            let in_block = at % self.block_size;
            let n = (self.block_size - in_block).min(len - done);
            let (_, slot) = self.block(index)?;
            self.mark(slot, in_block, n);
            done += n;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let f = self.file.file();
        for (at, bitmap) in &self.bitmaps {
            f.write_all_at(bitmap, *at).map_err(|e| self.io(*at, e))?;
        }
        for (at, data) in &self.locator_data {
            f.write_all_at(data, *at).map_err(|e| self.io(*at, e))?;
        }
        let bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        f.write_all_at(&bat, BAT_OFFSET)
            .map_err(|e| self.io(BAT_OFFSET, e))?;
        // BAT padding to the sector boundary is 0xff, as the unused entries it would hold.
        let pad = ((bat.len() as u64).div_ceil(512) * 512 - bat.len() as u64) as usize;
        if pad > 0 {
            f.write_all_at(&vec![0xff; pad], BAT_OFFSET + bat.len() as u64)
                .map_err(|e| self.io(BAT_OFFSET, e))?;
        }
        f.write_all_at(&self.header.emit(), HEADER_OFFSET)
            .map_err(|e| self.io(HEADER_OFFSET, e))?;
        let footer = self.footer.emit();
        f.write_all_at(&footer, 0).map_err(|e| self.io(0, e))?;
        f.write_all_at(&footer, self.next_block)
            .map_err(|e| self.io(self.next_block, e))?;
        let end = self.next_block + FOOTER_SIZE as u64;
        f.set_len(end).map_err(|e| self.io(end, e))?;
        let final_path = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.flush))
            .map_err(|e| DiskError::io(final_path, 0, e))
    }
}
