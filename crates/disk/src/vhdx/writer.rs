//! Writing VHDX images (fixed, dynamic, differencing) in the layout Hyper-V and qemu use:
//! identifier, two headers, two region tables, a 1 MiB empty log at 1 MiB, metadata at 2 MiB,
//! the BAT at 3 MiB, then payload blocks on 1 MiB boundaries.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;
use vmedia_io::AtomicFile;

use super::header::{self, Header, RegionEntry, RegionTable, MIB};
use super::metadata::{self, Metadata, ParentLocator};
use super::{Geometry, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, SB_PRESENT};
use crate::error::{DiskError, Result};
use crate::image::{BlockKind, CreateOptions, DiskImage, Format, ImageWriter, Measurement};

/// Default block size: Hyper-V's 32 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
/// Default log size (1 MiB, what Hyper-V and qemu make).
pub const DEFAULT_LOG_SIZE: u64 = MIB;
const LOG_OFFSET: u64 = MIB;
const METADATA_SIZE: u64 = MIB;

pub(crate) struct Plan {
    /// Flush before the rename (`CreateOptions::flush`; off for qemu-img's "unsafe" cache).
    pub flush: bool,
    pub fixed: bool,
    pub meta: Metadata,
    pub log_size: u64,
}

fn parse_size(key: &str, v: &str) -> Result<u64> {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| DiskError::InvalidOption {
            key: key.into(),
            value: v.into(),
            reason: "not a size".into(),
        })
}

impl Plan {
    pub(crate) fn from_options(opts: &CreateOptions) -> Result<Plan> {
        opts.reject_unknown_options(&[
            "subformat",
            "block_size",
            "log_size",
            "block_state_zero",
            "size",
            "physical_sector_size",
            "logical_sector_size",
        ])?;
        let get = |k: &str| opts.options.get(k).map(String::as_str);
        let fixed = match get("subformat") {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(o) => {
                return Err(DiskError::InvalidOption {
                    key: "subformat".into(),
                    value: o.into(),
                    reason: "vhdx accepts dynamic or fixed".into(),
                })
            }
        };
        let block_size = match get("block_size") {
            None => DEFAULT_BLOCK_SIZE,
            Some(v) => {
                let b = parse_size("block_size", v)?;
                if b == 0 {
                    DEFAULT_BLOCK_SIZE
                } else if !b.is_power_of_two()
                    || !(u64::from(metadata::MIN_BLOCK_SIZE)..=u64::from(metadata::MAX_BLOCK_SIZE))
                        .contains(&b)
                {
                    return Err(DiskError::InvalidOption {
                        key: "block_size".into(),
                        value: v.into(),
                        reason: "a power of two from 1 MiB to 256 MiB".into(),
                    });
                } else {
                    b as u32
                }
            }
        };
        let log_size = match get("log_size") {
            None => DEFAULT_LOG_SIZE,
            Some(v) => {
                let l = parse_size("log_size", v)?;
                if l == 0 || l % MIB != 0 || l > u64::from(super::log::MAX_LOG_BYTES) {
                    return Err(DiskError::InvalidOption {
                        key: "log_size".into(),
                        value: v.into(),
                        reason: "a multiple of 1 MiB up to 64 MiB".into(),
                    });
                }
                l
            }
        };
        if let Some(v) = get("block_state_zero") {
            crate::image::parse_on_off("block_state_zero", v)?;
        }
        let sector_opt = |key: &str, default: u32| -> Result<u32> {
            match get(key) {
                None => Ok(default),
                Some("512") => Ok(512),
                Some("4096") => Ok(4096),
                Some(v) => Err(DiskError::InvalidOption {
                    key: key.into(),
                    value: v.into(),
                    reason: "512 or 4096".into(),
                }),
            }
        };
        let logical_sector_size = sector_opt("logical_sector_size", 512)?;
        let physical_sector_size = sector_opt("physical_sector_size", 4096)?;
        let virtual_size = opts.virtual_size.div_ceil(u64::from(logical_sector_size))
            * u64::from(logical_sector_size);
        if virtual_size > metadata::MAX_VIRTUAL_SIZE {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: opts.virtual_size.to_string(),
                reason: "VHDX disks are limited to 64 TiB".into(),
            });
        }
        if fixed && opts.backing.is_some() {
            return Err(DiskError::InvalidOption {
                key: "subformat".into(),
                value: "fixed".into(),
                reason: "a differencing VHDX cannot be fixed".into(),
            });
        }
        let meta = Metadata {
            block_size,
            leave_blocks_allocated: fixed,
            has_parent: opts.backing.is_some(),
            virtual_size,
            logical_sector_size,
            physical_sector_size,
            page83: Some(Uuid::new_v4()),
            parent_locator: None,
        };
        Ok(Plan {
            flush: opts.flush,
            fixed,
            meta,
            log_size,
        })
    }

    fn bat_offset(&self) -> u64 {
        LOG_OFFSET + self.log_size + METADATA_SIZE
    }
    fn bat_bytes(&self) -> u64 {
        (Geometry::new(&self.meta).total_entries * 8)
            .div_ceil(MIB)
            .max(1)
            * MIB
    }
    fn data_start(&self) -> u64 {
        self.bat_offset() + self.bat_bytes()
    }
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    let mut plan = Plan::from_options(opts)?;
    if let Some((name, format)) = &opts.backing {
        crate::image::require_parent_format(*format, Format::Vhdx)?;
        let parent_path = crate::reference::resolve_reference(path, name);
        let (guid, size) = super::data_write_guid(&parent_path)?;
        if size != plan.meta.virtual_size {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: opts.virtual_size.to_string(),
                reason: format!("a differencing VHDX must have its parent's size ({size} bytes)"),
            });
        }
        plan.meta.parent_locator = Some(parent_locator(name, &parent_path, &guid));
    }
    let file = AtomicFile::create(path, opts.overwrite).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "create",
        source,
    })?;
    let geometry = Geometry::new(&plan.meta);
    let mut bat = vec![0u64; geometry.total_entries as usize];
    let mut next = plan.data_start();
    if plan.fixed {
        for block in 0..geometry.data_blocks {
            bat[geometry.payload_index(block) as usize] = next | PAYLOAD_FULLY_PRESENT;
            next += geometry.block_size;
        }
        file.file()
            .set_len(next)
            .map_err(|e| DiskError::io(file.temp_path(), next, e))?;
    }
    Ok(Box::new(VhdxWriter {
        file,
        path: path.to_path_buf(),
        plan,
        geometry,
        bat,
        next,
        bitmaps: BTreeMap::new(),
        partial: BTreeMap::new(),
    }))
}

/// The parent locator vmedia writes (as Hyper-V does): parent_linkage = the parent's
/// DataWriteGuid in braces, relative_path = ".\\" + the name with backslashes (only for a
/// relative name), absolute_win32_path = the parent's canonical path.
pub(crate) fn parent_locator(name: &str, parent_path: &Path, guid: &Uuid) -> ParentLocator {
    let mut entries = vec![("parent_linkage".to_string(), format!("{{{guid}}}"))];
    if !Path::new(name).is_absolute() {
        entries.push((
            "relative_path".to_string(),
            format!(".\\{}", name.replace('/', "\\")),
        ));
    }
    if let Ok(abs) = std::fs::canonicalize(parent_path) {
        entries.push(("absolute_win32_path".to_string(), abs.display().to_string()));
    }
    ParentLocator {
        locator_type: metadata::VHDX_PARENT_LOCATOR_TYPE,
        entries,
    }
}

struct VhdxWriter {
    file: AtomicFile,
    path: PathBuf,
    plan: Plan,
    geometry: Geometry,
    bat: Vec<u64>,
    next: u64,
    /// Sector bitmaps of chunks (differencing only): chunk -> bits.
    bitmaps: BTreeMap<u64, Vec<u8>>,
    /// Sectors written per block of a differencing image (to tell full from partial).
    partial: BTreeMap<u64, u64>,
}

impl VhdxWriter {
    fn io(&self, at: u64, e: std::io::Error) -> DiskError {
        DiskError::io(self.file.temp_path(), at, e)
    }

    fn block_host(&mut self, block: u64) -> u64 {
        let index = self.geometry.payload_index(block) as usize;
        if self.bat[index] & 0x7 != PAYLOAD_FULLY_PRESENT
            && self.bat[index] & 0x7 != PAYLOAD_PARTIALLY_PRESENT
        {
            let state = if self.plan.meta.has_parent {
                PAYLOAD_PARTIALLY_PRESENT
            } else {
                PAYLOAD_FULLY_PRESENT
            };
            self.bat[index] = self.next | state;
            self.next += self.geometry.block_size;
        }
        self.bat[index] & !0xF_FFFF
    }

    fn mark(&mut self, block: u64, in_block: u64, len: u64) {
        if !self.plan.meta.has_parent {
            return;
        }
        let sector = u64::from(self.plan.meta.logical_sector_size);
        let per_block = self.geometry.block_size / sector;
        let chunk = block / self.geometry.chunk_ratio;
        let bitmap = self
            .bitmaps
            .entry(chunk)
            .or_insert_with(|| vec![0u8; MIB as usize]);
        let base = (block % self.geometry.chunk_ratio) * per_block;
        let mut newly = 0u64;
        for s in (base + in_block / sector)..(base + (in_block + len).div_ceil(sector)) {
            let (byte, bit) = ((s / 8) as usize, 1u8 << (s % 8));
            if bitmap[byte] & bit == 0 {
                bitmap[byte] |= bit;
                newly += 1;
            }
        }
        *self.partial.entry(block).or_insert(0) += newly;
    }

    fn each_block(
        &mut self,
        guest_offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Self, u64, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        crate::shared::check_range(&self.path, guest_offset, len, self.plan.meta.virtual_size)?;
        let bs = self.geometry.block_size;
        let mut done = 0u64;
        while done < len {
            let at = guest_offset + done;
            let n = (bs - at % bs).min(len - done);
            f(self, at / bs, at % bs, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl ImageWriter for VhdxWriter {
    fn cluster_size(&self) -> u64 {
        if self.plan.fixed {
            MIB
        } else {
            // Feeding 1 MiB pieces keeps zero detection fine-grained; blocks are still
            // allocated whole.
            MIB.min(self.geometry.block_size)
        }
    }

    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.each_block(
            guest_offset,
            data.len() as u64,
            |w, block, in_block, done, n| {
                let host = w.block_host(block) + in_block;
                w.file
                    .file()
                    .write_all_at(&data[done as usize..(done + n) as usize], host)
                    .map_err(|e| w.io(host, e))?;
                w.mark(block, in_block, n);
                Ok(())
            },
        )
    }

    fn write_zeroes(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        if !self.plan.meta.has_parent {
            return Ok(());
        }
        self.each_block(guest_offset, len, |w, block, in_block, _, n| {
            w.block_host(block);
            w.mark(block, in_block, n);
            Ok(())
        })
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let sector = u64::from(self.plan.meta.logical_sector_size);
        let per_block = self.geometry.block_size / sector;
        // Blocks whose every sector was written are fully present.
        for (block, count) in std::mem::take(&mut self.partial) {
            if count >= per_block {
                let i = self.geometry.payload_index(block) as usize;
                self.bat[i] = (self.bat[i] & !0x7) | PAYLOAD_FULLY_PRESENT;
            }
        }
        for (chunk, bits) in std::mem::take(&mut self.bitmaps) {
            let at = self.next;
            self.file
                .file()
                .write_all_at(&bits, at)
                .map_err(|e| self.io(at, e))?;
            self.bat[self.geometry.bitmap_index(chunk) as usize] = at | SB_PRESENT;
            self.next += MIB;
        }
        let f = self.file.file();
        f.write_all_at(
            &header::emit_file_identifier(&format!("vmedia {}", env!("CARGO_PKG_VERSION"))),
            0,
        )
        .map_err(|e| self.io(0, e))?;
        let file_write_guid = Uuid::new_v4();
        let data_write_guid = Uuid::new_v4();
        for (seq, at) in [
            (1u64, header::HEADER_1_OFFSET),
            (2, header::HEADER_2_OFFSET),
        ] {
            let h = Header {
                checksum: 0,
                sequence_number: seq,
                file_write_guid,
                data_write_guid,
                log_guid: Uuid::nil(),
                log_version: header::LOG_VERSION,
                version: header::VERSION,
                log_length: self.plan.log_size as u32,
                log_offset: LOG_OFFSET,
            };
            f.write_all_at(&h.emit(), at).map_err(|e| self.io(at, e))?;
        }
        let regions = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: header::BAT_REGION,
                    file_offset: self.plan.bat_offset(),
                    length: self.plan.bat_bytes() as u32,
                    required: true,
                },
                RegionEntry {
                    guid: header::METADATA_REGION,
                    file_offset: LOG_OFFSET + self.plan.log_size,
                    length: METADATA_SIZE as u32,
                    required: true,
                },
            ],
        }
        .emit();
        for at in [header::REGION_TABLE_1_OFFSET, header::REGION_TABLE_2_OFFSET] {
            f.write_all_at(&regions, at).map_err(|e| self.io(at, e))?;
        }
        let meta_at = LOG_OFFSET + self.plan.log_size;
        f.write_all_at(&self.plan.meta.emit(METADATA_SIZE as usize), meta_at)
            .map_err(|e| self.io(meta_at, e))?;
        let bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_le_bytes()).collect();
        let bat_at = self.plan.bat_offset();
        f.write_all_at(&bat, bat_at)
            .map_err(|e| self.io(bat_at, e))?;
        let end = self.next.max(self.plan.data_start());
        f.set_len(end).map_err(|e| self.io(end, e))?;
        let p = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.plan.flush))
            .map_err(|e| DiskError::io(p, 0, e))
    }
}

pub(crate) fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    let mut o = opts.clone();
    o.backing = None;
    let plan = Plan::from_options(&o)?;
    let g = Geometry::new(&plan.meta);
    let overhead = plan.data_start();
    let full = overhead + g.data_blocks * g.block_size;
    if plan.fixed {
        return Ok(Measurement {
            required: full,
            fully_allocated: full,
            bitmaps: 0,
        });
    }
    let mut used = 0u64;
    if let Some(img) = source {
        for block in 0..g.data_blocks {
            let start = block * g.block_size;
            let end = (start + g.block_size).min(img.virtual_size());
            let mut at = start;
            while at < end {
                let s = img.block_status(at, end - at)?;
                if s.kind == BlockKind::Data
                    || (s.kind == BlockKind::Unallocated && img.backing().is_some())
                {
                    used += 1;
                    break;
                }
                at += s.len;
            }
        }
    }
    Ok(Measurement {
        required: overhead + used * g.block_size,
        fully_allocated: full,
        bitmaps: 0,
    })
}
