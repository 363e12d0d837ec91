//! VHD: fixed, dynamic and differencing images (footer, dynamic header, BAT, parent locators).
//!
//! Layout: a fixed VHD is the raw data followed by a 512-byte footer. A dynamic or
//! differencing VHD is a footer copy, the dynamic header, the BAT (big-endian u32 sector
//! numbers), then blocks of [sector bitmap | data], then the footer. In a differencing image a
//! bitmap bit says whether the sector lives in this file or in the parent.
//!
//! Sizes follow qemu's rule (see `Footer::virtual_size`), so vmedia and qemu-img agree on
//! every image; writers record creator "vmed" for CHS-exact sizes and "qem2" (qemu's marker
//! for "the size field is authoritative") for exact, non-CHS sizes (`force_size=on`, Azure).

pub mod dynamic;
pub mod edit;
pub mod footer;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use vmedia_io::{Progress, ReadAt};

use crate::error::{DiskError, Result};
use crate::image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, CreateOptions, DiskImage, Format, HostOffset,
    ImageInfo, Measurement, OpenOptions,
};
pub use crate::parse_error::ParseError as Error;
use crate::shared::{self, check_range, read_exact, source_size};
use dynamic::{DynamicHeader, PlatformCode, BAT_UNUSED};
use footer::{DiskType, Footer, FOOTER_SIZE};

pub use writer::create;

const FORMAT: &str = "vpc";
/// Largest virtual size qemu accepts for VHD (2040 GiB); larger images are refused the same way.
pub const MAX_VIRTUAL_SIZE: u64 = 2040 << 30;

/// True for a dynamic VHD (cookie at 0) or a fixed one (footer at the end).
pub fn probe(head: &[u8], tail: &[u8]) -> bool {
    head.starts_with(footer::COOKIE)
        || tail.len() >= FOOTER_SIZE && tail[tail.len() - FOOTER_SIZE..].starts_with(footer::COOKIE)
}

/// One open VHD layer.
pub struct VhdImage {
    path: PathBuf,
    source: Arc<dyn ReadAt>,
    footer: Footer,
    virtual_size: u64,
    file_size: u64,
    /// Dynamic/differencing only.
    dynamic: Option<Dynamic>,
    parent: Option<Box<dyn DiskImage>>,
    parent_ref: Option<BackingRef>,
    checksum_warnings: Vec<String>,
}

struct Dynamic {
    header: DynamicHeader,
    bat: Vec<u32>,
    bitmap_size: u64,
}

fn read_footer(
    path: &Path,
    source: &dyn ReadAt,
    file_size: u64,
    ignore_checksums: bool,
) -> Result<(Footer, Vec<String>)> {
    let mut warnings = Vec::new();
    if file_size < FOOTER_SIZE as u64 {
        return Err(DiskError::corrupt(
            path,
            FORMAT,
            0,
            "footer",
            format!("file of {file_size} bytes is shorter than a footer"),
        ));
    }
    let mut bytes = [0u8; FOOTER_SIZE];
    let tail_offset = file_size - FOOTER_SIZE as u64;
    read_exact(source, path, &mut bytes, tail_offset)?;
    let mut at = tail_offset;
    if !Footer::has_cookie(&bytes) {
        // A dynamic image whose trailing footer is damaged still has the copy at 0.
        read_exact(source, path, &mut bytes, 0)?;
        at = 0;
    }
    let parsed = Footer::parse(&bytes).map_err(|e| e.into_disk(path, FORMAT, at))?;
    if !Footer::checksum_ok(&bytes) {
        if ignore_checksums {
            warnings.push(format!(
                "footer checksum at {at:#x} does not match (ignored)"
            ));
        } else {
            return Err(Error::Checksum {
                what: "footer",
                offset: 64,
            }
            .into_disk(path, FORMAT, at));
        }
    }
    Ok((parsed, warnings))
}

pub fn open(
    path: &Path,
    source: Arc<dyn ReadAt>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdImage::open(path, source, opts)?))
}

impl VhdImage {
    pub fn open(path: &Path, source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<VhdImage> {
        let file_size = source_size(source.as_ref(), path)?;
        let (footer, mut checksum_warnings) =
            read_footer(path, source.as_ref(), file_size, opts.ignore_checksums)?;
        let virtual_size = footer.virtual_size();
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::Limit {
                path: path.to_path_buf(),
                offset: 48,
                field: "current size",
                value: virtual_size,
                limit: MAX_VIRTUAL_SIZE,
                why: "VHD images are limited to 2040 GiB",
            });
        }
        let mut image = VhdImage {
            path: path.to_path_buf(),
            source,
            footer: footer.clone(),
            virtual_size,
            file_size,
            dynamic: None,
            parent: None,
            parent_ref: None,
            checksum_warnings: Vec::new(),
        };
        match footer.disk_type {
            DiskType::Fixed => {
                let data_end = file_size - FOOTER_SIZE as u64;
                if virtual_size > data_end {
                    return Err(DiskError::corrupt(path, FORMAT, data_end, "current size",
                        format!("fixed VHD says {virtual_size} bytes but only {data_end} bytes of data precede the footer")));
                }
            }
            DiskType::Dynamic | DiskType::Differencing => {
                image.dynamic = Some(image.read_dynamic(opts, &mut checksum_warnings)?);
                if footer.disk_type == DiskType::Differencing {
                    image.open_parent(opts)?;
                }
            }
            DiskType::Unknown(v) => {
                return Err(DiskError::corrupt(
                    path,
                    FORMAT,
                    60,
                    "disk type",
                    format!("{v} is not fixed (2), dynamic (3) or differencing (4)"),
                ));
            }
        }
        image.checksum_warnings = checksum_warnings;
        Ok(image)
    }

    fn read_dynamic(&self, opts: &OpenOptions, warnings: &mut Vec<String>) -> Result<Dynamic> {
        let path = &self.path;
        let at = self.footer.data_offset;
        if at >= self.file_size {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                16,
                "data offset",
                format!("dynamic header at {at:#x} lies past the end of the file"),
            ));
        }
        // A header cut short by the end of the file reads as zero-padded (as qemu reads it),
        // so its fields are still validated and named in the error.
        let mut bytes = [0u8; dynamic::HEADER_SIZE];
        let available = (self.file_size - at).min(dynamic::HEADER_SIZE as u64) as usize;
        read_exact(self.source.as_ref(), path, &mut bytes[..available], at)?;
        let header = DynamicHeader::parse(&bytes).map_err(|e| e.into_disk(path, FORMAT, at))?;
        if !DynamicHeader::checksum_ok(&bytes) {
            if opts.ignore_checksums {
                warnings.push(format!(
                    "dynamic header checksum at {at:#x} does not match (ignored)"
                ));
            } else {
                return Err(Error::Checksum {
                    what: "dynamic header",
                    offset: 36,
                }
                .into_disk(path, FORMAT, at));
            }
        }
        let covered = u64::from(header.max_table_entries) * u64::from(header.block_size);
        if covered < self.virtual_size {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                at + 28,
                "max table entries",
                format!(
                    "{} blocks of {} bytes cover less than the virtual size {}",
                    header.max_table_entries, header.block_size, self.virtual_size
                ),
            ));
        }
        let table_bytes = u64::from(header.max_table_entries) * 4;
        if header
            .table_offset
            .checked_add(table_bytes)
            .is_none_or(|end| end > self.file_size)
        {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                at + 16,
                "table offset",
                format!(
                    "BAT of {table_bytes} bytes at {:#x} runs past the end of the file ({} bytes)",
                    header.table_offset, self.file_size
                ),
            ));
        }
        let mut raw = vec![0u8; table_bytes as usize];
        read_exact(self.source.as_ref(), path, &mut raw, header.table_offset)?;
        let bat: Vec<u32> = crate::table::be32_entries(&raw);
        let bitmap_size = header.bitmap_size();
        Ok(Dynamic {
            header,
            bat,
            bitmap_size,
        })
    }

    /// Finds the parent: relative locator (W2ru), absolute (W2ku), MacX, then the unicode name.
    fn parent_candidates(&self) -> Result<Vec<String>> {
        let Some(d) = &self.dynamic else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let order = [
            PlatformCode::W2ru,
            PlatformCode::W2ku,
            PlatformCode::MacX,
            PlatformCode::Wi2r,
            PlatformCode::Wi2k,
        ];
        for code in order {
            for l in d.header.locators.iter().filter(|l| l.platform == code) {
                if l.data_length == 0 || l.data_length > dynamic::MAX_LOCATOR_BYTES {
                    continue;
                }
                if l.data_offset
                    .checked_add(u64::from(l.data_length))
                    .is_none_or(|e| e > self.file_size)
                {
                    return Err(DiskError::corrupt(
                        &self.path,
                        FORMAT,
                        l.data_offset,
                        "parent locator",
                        format!(
                            "{} bytes at {:#x} run past the end of the file",
                            l.data_length, l.data_offset
                        ),
                    ));
                }
                let mut data = vec![0u8; l.data_length as usize];
                read_exact(self.source.as_ref(), &self.path, &mut data, l.data_offset)?;
                if let Some(p) = dynamic::decode_locator_path(code, &data) {
                    let p = windows_to_local(&p);
                    if !p.is_empty() && !names.contains(&p) {
                        names.push(p);
                    }
                }
            }
        }
        if !d.header.parent_name.is_empty() && !names.contains(&d.header.parent_name) {
            names.push(d.header.parent_name.clone());
        }
        Ok(names)
    }

    fn open_parent(&mut self, opts: &OpenOptions) -> Result<()> {
        let names = self.parent_candidates()?;
        if names.is_empty() {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                self.footer.data_offset + 64,
                "parent name",
                "differencing VHD names no parent (no locator, no unicode name)",
            ));
        }
        let (parent_ref, parent) =
            crate::reference::open_first_parent(&self.path, &names, Format::Vhd, opts, open)?;
        self.parent_ref = Some(parent_ref);
        self.parent = parent;
        Ok(())
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.dynamic.as_ref().map(|d| &d.header)
    }
    /// Checksum mismatches tolerated because of `OpenOptions::ignore_checksums`.
    pub fn warnings(&self) -> &[String] {
        &self.checksum_warnings
    }

    /// Host byte offset of block `index`'s bitmap, checked against the file.
    fn block_location(&self, d: &Dynamic, index: u64) -> Result<Option<u64>> {
        let Some(&entry) = d.bat.get(index as usize) else {
            return Ok(None);
        };
        if entry == BAT_UNUSED {
            return Ok(None);
        }
        let start = u64::from(entry) * 512;
        let end = start + d.bitmap_size + u64::from(d.header.block_size);
        // The last block may be cut short by the footer when the virtual size is not a whole
        // number of blocks; only the part inside the disk must exist.
        let needed = (self.virtual_size
            - (index * u64::from(d.header.block_size)).min(self.virtual_size))
        .min(u64::from(d.header.block_size));
        if start + d.bitmap_size + needed > self.file_size {
            return Err(DiskError::corrupt(&self.path, FORMAT, d.header.table_offset + index * 4, "BAT entry",
                format!("block {index} at {start:#x}..{end:#x} lies past the end of the file ({} bytes)", self.file_size)));
        }
        Ok(Some(start))
    }

    fn parent_read(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        if self.footer.disk_type == DiskType::Differencing && self.parent.is_none() {
            return Err(DiskError::Reference {
                path: self.path.clone(),
                reference: self
                    .parent_ref
                    .as_ref()
                    .map(|r| r.resolved.clone())
                    .unwrap_or_default(),
                reason: "not opened, and the read needs the parent's data",
            });
        }
        shared::read_backing(self.parent.as_deref(), buf, guest_offset)
    }
}

/// Turns ".\\dir\\base.vhd" into "dir/base.vhd" and keeps absolute Windows paths recognisable.
fn windows_to_local(p: &str) -> String {
    let unified = p.replace('\\', "/");
    unified
        .strip_prefix("./")
        .map(str::to_string)
        .unwrap_or(unified)
}

impl DiskImage for VhdImage {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    fn cluster_size(&self) -> Option<u64> {
        self.dynamic
            .as_ref()
            .map(|d| u64::from(d.header.block_size))
    }

    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        check_range(
            &self.path,
            guest_offset,
            buf.len() as u64,
            self.virtual_size,
        )?;
        let Some(d) = &self.dynamic else {
            return read_exact(self.source.as_ref(), &self.path, buf, guest_offset);
        };
        let block_size = u64::from(d.header.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = guest_offset + done as u64;
            let index = at / block_size;
            let in_block = at % block_size;
            let n = ((block_size - in_block) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.block_location(d, index)? {
                None => self.parent_read(chunk, at)?,
                Some(start) if self.footer.disk_type == DiskType::Dynamic => {
                    read_exact(
                        self.source.as_ref(),
                        &self.path,
                        chunk,
                        start + d.bitmap_size + in_block,
                    )?;
                }
                Some(start) => {
                    // Differencing: the bitmap says, sector by sector, which layer has the data.
                    let mut bitmap = vec![0u8; d.bitmap_size as usize];
                    read_exact(self.source.as_ref(), &self.path, &mut bitmap, start)?;
                    let mut pos = 0usize;
                    while pos < n {
                        let sector = (in_block + pos as u64) / 512;
                        let present = bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0;
                        let sector_end = ((sector + 1) * 512 - in_block) as usize;
                        let mut run_end = sector_end.min(n);
                        // Extend the run while the following sectors have the same state.
                        while run_end < n {
                            let s = (in_block + run_end as u64) / 512;
                            let p = bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                            if p != present {
                                break;
                            }
                            run_end = (((s + 1) * 512 - in_block) as usize).min(n);
                        }
                        let piece = &mut chunk[pos..run_end];
                        if present {
                            read_exact(
                                self.source.as_ref(),
                                &self.path,
                                piece,
                                start + d.bitmap_size + in_block + pos as u64,
                            )?;
                        } else {
                            self.parent_read(piece, at + pos as u64)?;
                        }
                        pos = run_end;
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus> {
        let len = len
            .min(self.virtual_size.saturating_sub(guest_offset))
            .max(1);
        let Some(d) = &self.dynamic else {
            return Ok(BlockStatus {
                len,
                kind: BlockKind::Data,
                host_offset: Some(HostOffset(guest_offset)),
            });
        };
        let block_size = u64::from(d.header.block_size);
        let first = guest_offset / block_size;
        let first_start = self.block_location(d, first)?;
        let in_block = guest_offset % block_size;
        let mut run = (block_size - in_block).min(len);
        if self.footer.disk_type == DiskType::Differencing {
            if let Some(start) = first_start {
                let mut bitmap = vec![0u8; d.bitmap_size as usize];
                read_exact(self.source.as_ref(), &self.path, &mut bitmap, start)?;
                let bit = |s: u64| bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                let sector = in_block / 512;
                let present = bit(sector);
                let mut end_sector = sector + 1;
                while end_sector * 512 < in_block + run && bit(end_sector) == present {
                    end_sector += 1;
                }
                run = (end_sector * 512 - in_block).min(run);
                return Ok(if present {
                    BlockStatus {
                        len: run,
                        kind: BlockKind::Data,
                        host_offset: Some(HostOffset(start + d.bitmap_size + in_block)),
                    }
                } else {
                    BlockStatus {
                        len: run,
                        kind: BlockKind::Unallocated,
                        host_offset: None,
                    }
                });
            }
        }
        // Merge following blocks in the same state (and contiguous on the host for data).
        let mut index = first + 1;
        while run < len {
            let next = self.block_location(d, index)?;
            let contiguous = match (first_start, next) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    self.footer.disk_type == DiskType::Dynamic
                        && b == a + (index - first) * (block_size + d.bitmap_size)
                        && d.bitmap_size == 0
                }
                _ => false,
            };
            if !contiguous {
                break;
            }
            run = (run + block_size).min(len);
            index += 1;
        }
        Ok(match first_start {
            None => BlockStatus {
                len: run,
                kind: BlockKind::Unallocated,
                host_offset: None,
            },
            Some(start) => BlockStatus {
                len: run,
                kind: BlockKind::Data,
                host_offset: Some(HostOffset(start + d.bitmap_size + in_block)),
            },
        })
    }

    fn info(&self) -> Result<ImageInfo> {
        let mut info = ImageInfo::basic(&self.path, Format::Vhd, self.virtual_size);
        info.cluster_size = self.cluster_size();
        if let Some(r) = &self.parent_ref {
            info.backing_filename = Some(r.name.clone());
            info.full_backing_filename = Some(r.resolved.display().to_string());
            info.backing_filename_format = Some("vpc".into());
        }
        info.format_specific = Some(json!({
            "type": "vpc",
            "data": {
                "subformat": self.footer.disk_type.name(),
                "creator-app": self.footer.creator_app_text(),
                "creator-version": format!("{}.{}", self.footer.creator_version >> 16, self.footer.creator_version & 0xffff),
                "creator-host": String::from_utf8_lossy(&self.footer.creator_host).trim_end_matches('\0').to_string(),
                "current-size": self.footer.current_size,
                "chs": [self.footer.geometry.cylinders, self.footer.geometry.heads, self.footer.geometry.sectors_per_track],
                "unique-id": uuid::Uuid::from_bytes(self.footer.unique_id).to_string(),
            }
        }));
        Ok(info)
    }

    fn check(&self, progress: &dyn Progress) -> Result<CheckReport> {
        let _span =
            tracing::info_span!("check", path = %self.path.display(), format = FORMAT).entered();
        let mut report = CheckReport {
            filename: self.path.display().to_string(),
            format: FORMAT.into(),
            ..CheckReport::default()
        };
        report
            .messages
            .extend(self.checksum_warnings.iter().cloned());
        let Some(d) = &self.dynamic else {
            report.image_end_offset = Some(self.file_size);
            return Ok(report);
        };
        let block_size = u64::from(d.header.block_size);
        let span = d.bitmap_size + block_size;
        let needed_blocks = self.virtual_size.div_ceil(block_size);
        progress.set_total(d.bat.len() as u64);
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut allocated = 0u64;
        let mut end = d.header.table_offset + d.bat.len() as u64 * 4;
        for (index, &entry) in d.bat.iter().enumerate() {
            if entry == BAT_UNUSED {
                continue;
            }
            let start = u64::from(entry) * 512;
            if index as u64 >= needed_blocks {
                report.corruptions += 1;
                report.messages.push(format!(
                    "ERROR block {index} is allocated beyond the virtual size"
                ));
            }
            if start + span > self.file_size - FOOTER_SIZE as u64
                && start + d.bitmap_size >= self.file_size
            {
                report.corruptions += 1;
                report.messages.push(format!(
                    "ERROR block {index} at {start:#x} lies past the end of the file"
                ));
                continue;
            }
            if start < d.header.table_offset + d.bat.len() as u64 * 4 {
                report.corruptions += 1;
                report.messages.push(format!(
                    "ERROR block {index} at {start:#x} overlaps the headers or the BAT"
                ));
            }
            used.push((start, index as u64));
            allocated += 1;
            end = end.max(start + span);
        }
        used.sort_unstable();
        for pair in used.windows(2) {
            if pair[1].0 < pair[0].0 + span {
                report.corruptions += 1;
                report.messages.push(format!(
                    "ERROR blocks {} and {} overlap at {:#x}",
                    pair[0].1, pair[1].1, pair[1].0
                ));
            }
        }
        progress.advance(d.bat.len() as u64);
        report.total_clusters = Some(needed_blocks);
        report.allocated_clusters = Some(allocated);
        report.image_end_offset = Some(end.max(self.file_size));
        Ok(report)
    }

    fn backing_ref(&self) -> Option<BackingRef> {
        self.parent_ref.clone()
    }
    fn backing(&self) -> Option<&dyn DiskImage> {
        self.parent.as_deref()
    }
}

/// qemu-img measure for VHD: fixed = size + footer; dynamic = headers + BAT + allocated blocks.
pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    let plan = writer::Plan::from_options(Path::new(""), opts)?;
    let size = plan.virtual_size;
    let fixed_total = size + FOOTER_SIZE as u64;
    if plan.fixed {
        return Ok(Measurement {
            required: fixed_total,
            fully_allocated: fixed_total,
            bitmaps: 0,
        });
    }
    let block = u64::from(plan.block_size);
    let overhead = writer::data_start(size, plan.block_size) + FOOTER_SIZE as u64;
    let per_block = block + dynamic::bitmap_size(plan.block_size);
    let blocks = size.div_ceil(block);
    let used_blocks = match source {
        Some(img) => count_used_blocks(img, block)?,
        None => 0,
    };
    Ok(Measurement {
        required: overhead + used_blocks * per_block,
        fully_allocated: overhead + blocks * per_block,
        bitmaps: 0,
    })
}

fn count_used_blocks(img: &dyn DiskImage, block: u64) -> Result<u64> {
    let size = img.virtual_size();
    let mut count = 0u64;
    let mut start = 0u64;
    while start < size {
        let end = (start + block).min(size);
        let mut at = start;
        let mut used = false;
        while at < end {
            let s = img.block_status(at, end - at)?;
            if s.kind == BlockKind::Data
                || (s.kind == BlockKind::Unallocated && img.backing().is_some())
            {
                used = true;
                break;
            }
            at += s.len;
        }
        if used {
            count += 1;
        }
        start = end;
    }
    Ok(count)
}

/// What `create` needs to know about an image to be a parent (unique id, timestamp, size).
pub(crate) fn parent_identity(path: &Path) -> Result<(Footer, u64)> {
    let file = std::fs::File::open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "open the parent",
        source,
    })?;
    let size = source_size(&file, path)?;
    let (footer, _) = read_footer(path, &file, size, false)?;
    Ok((footer.clone(), footer.virtual_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_dynamic_and_fixed() {
        let f = footer::Footer {
            features: 2,
            version: footer::FILE_FORMAT_VERSION,
            data_offset: u64::MAX,
            timestamp: 0,
            creator_app: *b"vmed",
            creator_version: 1,
            creator_host: *b"Wi2k",
            original_size: 512,
            current_size: 512,
            geometry: footer::Geometry::for_sectors(1),
            disk_type: DiskType::Fixed,
            checksum: 0,
            unique_id: [0; 16],
            saved_state: 0,
        }
        .emit();
        assert!(probe(&[0u8; 16], &f));
        assert!(probe(&f, &[0u8; 512]));
        assert!(!probe(&[0u8; 16], &[0u8; 512]));
    }

    #[test]
    fn windows_relative_paths_become_local() {
        assert_eq!(windows_to_local(".\\base.vhd"), "base.vhd");
        assert_eq!(windows_to_local("C:\\vm\\base.vhd"), "C:/vm/base.vhd");
    }
}
