//! VHDX: fixed, dynamic and differencing images (headers, log replay, region table, metadata, BAT).
//!
//! Open sequence (MS-VHDX): file identifier, the current header (valid CRC-32C, highest
//! sequence number), log replay when the header names a log (in memory: the input file is
//! never written), region table, metadata, BAT. Payload BAT entries are interleaved with one
//! sector bitmap entry per chunk (`chunk_ratio` payload blocks).

pub mod edit;
pub mod header;
pub mod log;
pub mod metadata;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;
use vmedia_io::{Progress, ReadAt};

use crate::error::{DiskError, Result};
use crate::image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, CreateOptions, DiskImage, Format, HostOffset,
    ImageInfo, Measurement, OpenOptions,
};
pub use crate::parse_error::ParseError as Error;
use crate::shared::{self, check_range, read_exact, source_size};
use header::{Header, RegionTable, HEADER_SIZE, MIB};
use metadata::Metadata;

pub use writer::create;

const FORMAT: &str = "vhdx";
/// Largest BAT read (bytes): 64 TiB in 1 MiB blocks is 64 Mi entries = 512 MiB; real images
/// have far less, and the region must also fit in the file.
pub const MAX_BAT_BYTES: u64 = 512 << 20;

/// BAT entry states.
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
pub const PAYLOAD_UNDEFINED: u64 = 1;
pub const PAYLOAD_ZERO: u64 = 2;
pub const PAYLOAD_UNMAPPED: u64 = 3;
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
pub const SB_PRESENT: u64 = 6;
const STATE_MASK: u64 = 0x7;
const OFFSET_MASK: u64 = !0xF_FFFF;

pub fn probe(head: &[u8], _tail: &[u8]) -> bool {
    head.starts_with(header::FILE_SIGNATURE)
}

/// The BAT geometry derived from the metadata.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: u64,
    pub chunk_ratio: u64,
    pub data_blocks: u64,
    pub bitmap_blocks: u64,
    pub total_entries: u64,
}

impl Geometry {
    pub fn new(m: &Metadata) -> Geometry {
        let block_size = u64::from(m.block_size);
        let chunk_ratio = ((1u64 << 23) * u64::from(m.logical_sector_size)) / block_size;
        let data_blocks = m.virtual_size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let total_entries = if m.has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else {
            data_blocks + data_blocks.saturating_sub(1) / chunk_ratio
        };
        Geometry {
            block_size,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            total_entries,
        }
    }
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }
}

/// One open VHDX layer.
pub struct VhdxImage {
    path: PathBuf,
    /// The file, or the file as seen through a replayed log.
    source: Arc<dyn ReadAt>,
    file_size: u64,
    header: Header,
    creator: String,
    meta: Metadata,
    geometry: Geometry,
    bat: Vec<u64>,
    /// Where the metadata and BAT regions lie (the editor writes there).
    meta_region: header::RegionEntry,
    bat_region: header::RegionEntry,
    replayed_entries: usize,
    parent: Option<Box<dyn DiskImage>>,
    parent_ref: Option<BackingRef>,
}

pub fn open(
    path: &Path,
    source: Arc<dyn ReadAt>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VhdxImage::open(path, source, opts)?))
}

/// The current header: valid CRC, highest sequence number (header 1 on a tie).
pub fn current_header(path: &Path, source: &dyn ReadAt) -> Result<Header> {
    let mut best: Option<Header> = None;
    let mut first_error = None;
    for at in [header::HEADER_1_OFFSET, header::HEADER_2_OFFSET] {
        let mut bytes = [0u8; HEADER_SIZE];
        read_exact(source, path, &mut bytes, at)?;
        match Header::parse(&bytes) {
            Ok(h) => {
                if best
                    .as_ref()
                    .is_none_or(|b| h.sequence_number > b.sequence_number)
                {
                    best = Some(h);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e.into_disk(path, FORMAT, at));
            }
        }
    }
    best.ok_or_else(|| {
        first_error.unwrap_or_else(|| {
            DiskError::corrupt(
                path,
                FORMAT,
                header::HEADER_1_OFFSET,
                "header",
                "no valid header",
            )
        })
    })
}

fn read_region_table(path: &Path, source: &dyn ReadAt) -> Result<RegionTable> {
    let mut first_error = None;
    for at in [header::REGION_TABLE_1_OFFSET, header::REGION_TABLE_2_OFFSET] {
        let mut bytes = vec![0u8; header::REGION_TABLE_SIZE];
        read_exact(source, path, &mut bytes, at)?;
        match RegionTable::parse(&bytes) {
            Ok(t) => return Ok(t),
            Err(e) => {
                first_error.get_or_insert(e.into_disk(path, FORMAT, at));
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        DiskError::corrupt(
            path,
            FORMAT,
            header::REGION_TABLE_1_OFFSET,
            "region table",
            "no valid region table",
        )
    }))
}

impl VhdxImage {
    pub fn open(path: &Path, file: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<VhdxImage> {
        let file_size = source_size(file.as_ref(), path)?;
        if file_size < 1 << 20 {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                0,
                "file size",
                format!("{file_size} bytes is smaller than the 1 MiB VHDX header section"),
            ));
        }
        let mut ident = vec![0u8; 8 + 512];
        read_exact(file.as_ref(), path, &mut ident, 0)?;
        if !probe(&ident, &[]) {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                0,
                "file identifier",
                "missing \"vhdxfile\" signature",
            ));
        }
        let creator = header::parse_creator(&ident);
        let header = current_header(path, file.as_ref())?;
        if header.version != header::VERSION || header.log_version != header::LOG_VERSION {
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                format: FORMAT,
                feature: format!(
                    "header version {} / log version {}",
                    header.version, header.log_version
                ),
            });
        }
        let mut source: Arc<dyn ReadAt> = file.clone();
        let mut replayed_entries = 0;
        if !header.log_guid.is_nil() {
            let log_at = header.log_offset;
            let log_len = u64::from(header.log_length);
            if log_len > u64::from(log::MAX_LOG_BYTES)
                || log_at.checked_add(log_len).is_none_or(|e| e > file_size)
                || log_at % MIB != 0
            {
                return Err(DiskError::corrupt(path, FORMAT, log_at, "log", format!("log of {log_len} bytes at {log_at:#x} is outside the file or over the {} byte limit", log::MAX_LOG_BYTES)));
            }
            let mut log_bytes = vec![0u8; log_len as usize];
            read_exact(file.as_ref(), path, &mut log_bytes, log_at)?;
            let replay = log::replay(&log_bytes, &header.log_guid)
                .map_err(|e| e.into_disk(path, FORMAT, log_at))?;
            replayed_entries = replay.entries;
            if !replay.is_empty() {
                source = Arc::new(log::ReplayOverlay::new(file.clone(), replay));
            }
        }
        let file_size = source_size(source.as_ref(), path)?;
        let regions = read_region_table(path, source.as_ref())?;
        for r in &regions.entries {
            if r.required && r.guid != header::BAT_REGION && r.guid != header::METADATA_REGION {
                return Err(DiskError::Unsupported {
                    path: path.to_path_buf(),
                    format: FORMAT,
                    feature: format!("required region {}", r.guid),
                });
            }
        }
        let meta_region = regions.find(&header::METADATA_REGION).ok_or_else(|| {
            DiskError::corrupt(
                path,
                FORMAT,
                header::REGION_TABLE_1_OFFSET,
                "region table",
                "no metadata region",
            )
        })?;
        if meta_region.length > metadata::MAX_REGION_BYTES
            || meta_region
                .file_offset
                .checked_add(u64::from(meta_region.length))
                .is_none_or(|e| e > file_size)
        {
            return Err(DiskError::corrupt(
                path,
                FORMAT,
                meta_region.file_offset,
                "metadata region",
                format!(
                    "{} bytes at {:#x} lie outside the file or over the limit",
                    meta_region.length, meta_region.file_offset
                ),
            ));
        }
        let mut meta_bytes = vec![0u8; meta_region.length as usize];
        read_exact(
            source.as_ref(),
            path,
            &mut meta_bytes,
            meta_region.file_offset,
        )?;
        let meta = Metadata::parse(&meta_bytes)
            .map_err(|e| e.into_disk(path, FORMAT, meta_region.file_offset))?;
        let geometry = Geometry::new(&meta);
        let bat_region = regions.find(&header::BAT_REGION).ok_or_else(|| {
            DiskError::corrupt(
                path,
                FORMAT,
                header::REGION_TABLE_1_OFFSET,
                "region table",
                "no BAT region",
            )
        })?;
        let bat_bytes = geometry.total_entries * 8;
        if bat_bytes > MAX_BAT_BYTES
            || bat_bytes > u64::from(bat_region.length)
            || bat_region
                .file_offset
                .checked_add(bat_bytes)
                .is_none_or(|e| e > file_size)
        {
            return Err(DiskError::corrupt(path, FORMAT, bat_region.file_offset, "BAT region",
                format!("{} entries ({bat_bytes} bytes) do not fit the region of {} bytes at {:#x} inside the file", geometry.total_entries, bat_region.length, bat_region.file_offset)));
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        read_exact(source.as_ref(), path, &mut raw, bat_region.file_offset)?;
        let bat = crate::table::le64_entries(&raw);
        let mut image = VhdxImage {
            path: path.to_path_buf(),
            source,
            file_size,
            header,
            creator,
            meta,
            geometry,
            bat,
            meta_region: *meta_region,
            bat_region: *bat_region,
            replayed_entries,
            parent: None,
            parent_ref: None,
        };
        if image.meta.has_parent {
            image.open_parent(opts)?;
        }
        Ok(image)
    }

    fn parent_names(&self) -> Vec<String> {
        let Some(l) = &self.meta.parent_locator else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for key in ["relative_path", "absolute_win32_path", "volume_path"] {
            if let Some(v) = l.get(key) {
                let local = v.replace('\\', "/");
                let local = local.strip_prefix("./").unwrap_or(&local).to_string();
                if !local.is_empty() && !names.contains(&local) {
                    names.push(local);
                }
            }
        }
        names
    }

    fn open_parent(&mut self, opts: &OpenOptions) -> Result<()> {
        let names = self.parent_names();
        if names.is_empty() {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                0,
                "parent locator",
                "differencing VHDX without a parent path",
            ));
        }
        let (parent_ref, parent) =
            crate::reference::open_first_parent(&self.path, &names, Format::Vhdx, opts, open)?;
        self.parent_ref = Some(parent_ref);
        self.parent = parent;
        Ok(())
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Log entries replayed (in memory) when the image was opened.
    pub fn replayed_log_entries(&self) -> usize {
        self.replayed_entries
    }

    fn entry(&self, index: u64) -> u64 {
        self.bat.get(index as usize).copied().unwrap_or(0)
    }

    /// The host offset of a present block, checked against the file.
    fn block_offset(&self, block: u64, entry: u64) -> Result<u64> {
        let at = entry & OFFSET_MASK;
        let need = (self.meta.virtual_size - block * self.geometry.block_size)
            .min(self.geometry.block_size);
        if at < MIB || at.checked_add(need).is_none_or(|e| e > self.file_size) {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                at,
                "BAT entry",
                format!(
                    "payload block {block} at {at:#x} lies outside the file ({} bytes)",
                    self.file_size
                ),
            ));
        }
        Ok(at)
    }

    fn read_parent(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        if self.meta.has_parent && self.parent.is_none() {
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

    /// For a partially present block: whether logical sector `sector` (absolute) is present.
    fn sector_present(&self, bitmap: &[u8], sector_in_chunk: u64) -> bool {
        bitmap
            .get((sector_in_chunk / 8) as usize)
            .is_some_and(|b| b & (1 << (sector_in_chunk % 8)) != 0)
    }

    fn chunk_bitmap(
        &self,
        block: u64,
        start_sector_in_chunk: u64,
        sectors: u64,
    ) -> Result<Vec<u8>> {
        let chunk = block / self.geometry.chunk_ratio;
        let entry = self.entry(self.geometry.bitmap_index(chunk));
        if entry & STATE_MASK != SB_PRESENT {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                0,
                "sector bitmap",
                format!(
                    "block {block} is partially present but chunk {chunk} has no sector bitmap"
                ),
            ));
        }
        let at = entry & OFFSET_MASK;
        let first_byte = start_sector_in_chunk / 8;
        let bytes = (start_sector_in_chunk % 8 + sectors).div_ceil(8);
        if at
            .checked_add(first_byte + bytes)
            .is_none_or(|e| e > self.file_size)
        {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                at,
                "sector bitmap",
                "lies outside the file",
            ));
        }
        // Returned bitmap is indexed from sector (start rounded down to a byte).
        let mut out = vec![0u8; bytes as usize];
        read_exact(self.source.as_ref(), &self.path, &mut out, at + first_byte)?;
        Ok(out)
    }
}

impl DiskImage for VhdxImage {
    fn format(&self) -> Format {
        Format::Vhdx
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }
    fn cluster_size(&self) -> Option<u64> {
        Some(self.geometry.block_size)
    }

    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        check_range(
            &self.path,
            guest_offset,
            buf.len() as u64,
            self.meta.virtual_size,
        )?;
        let bs = self.geometry.block_size;
        let sector = u64::from(self.meta.logical_sector_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = guest_offset + done as u64;
            let block = at / bs;
            let in_block = at % bs;
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            let entry = self.entry(self.geometry.payload_index(block));
            match entry & STATE_MASK {
                PAYLOAD_FULLY_PRESENT => {
                    let base = self.block_offset(block, entry)?;
                    read_exact(self.source.as_ref(), &self.path, chunk, base + in_block)?;
                }
                PAYLOAD_PARTIALLY_PRESENT if self.meta.has_parent => {
                    let base = self.block_offset(block, entry)?;
                    let chunk_start_sector = (block % self.geometry.chunk_ratio) * (bs / sector);
                    let first_sector = chunk_start_sector + in_block / sector;
                    let last_sector = chunk_start_sector + (in_block + n as u64).div_ceil(sector);
                    let bitmap =
                        self.chunk_bitmap(block, first_sector, last_sector - first_sector)?;
                    let bit_base = first_sector / 8 * 8;
                    let mut pos = 0usize;
                    while pos < n {
                        let s = chunk_start_sector + (in_block + pos as u64) / sector;
                        let present = self.sector_present(&bitmap, s - bit_base);
                        let mut end =
                            (((s - chunk_start_sector + 1) * sector - in_block) as usize).min(n);
                        while end < n {
                            let s2 = chunk_start_sector + (in_block + end as u64) / sector;
                            if self.sector_present(&bitmap, s2 - bit_base) != present {
                                break;
                            }
                            end = (((s2 - chunk_start_sector + 1) * sector - in_block) as usize)
                                .min(n);
                        }
                        if present {
                            read_exact(
                                self.source.as_ref(),
                                &self.path,
                                &mut chunk[pos..end],
                                base + in_block + pos as u64,
                            )?;
                        } else {
                            self.read_parent(&mut chunk[pos..end], at + pos as u64)?;
                        }
                        pos = end;
                    }
                }
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED if self.meta.has_parent => {
                    self.read_parent(chunk, at)?
                }
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => {
                    chunk.fill(0)
                }
                other => {
                    return Err(DiskError::corrupt(
                        &self.path,
                        FORMAT,
                        0,
                        "BAT entry state",
                        format!(
                            "payload block {block} has state {other}, which is not defined{}",
                            if other == PAYLOAD_PARTIALLY_PRESENT {
                                " for an image without a parent"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus> {
        let len = len
            .min(self.meta.virtual_size.saturating_sub(guest_offset))
            .max(1);
        let bs = self.geometry.block_size;
        let block = guest_offset / bs;
        let in_block = guest_offset % bs;
        let classify = |entry: u64| -> BlockKind {
            match entry & STATE_MASK {
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => BlockKind::Data,
                PAYLOAD_ZERO | PAYLOAD_UNMAPPED => BlockKind::Zero,
                _ if self.meta.has_parent => BlockKind::Unallocated,
                // Without a parent a missing block reads as zeros, as qemu reports it.
                _ => BlockKind::Unallocated,
            }
        };
        let first = self.entry(self.geometry.payload_index(block));
        let kind = classify(first);
        let partial = first & STATE_MASK == PAYLOAD_PARTIALLY_PRESENT;
        if partial {
            // Sector-level status is not merged; report the block as data in this layer only
            // where the bitmap says so.
            let sector = u64::from(self.meta.logical_sector_size);
            let chunk_start_sector = (block % self.geometry.chunk_ratio) * (bs / sector);
            let s = chunk_start_sector + in_block / sector;
            let bitmap = self.chunk_bitmap(block, s, 1)?;
            let present = self.sector_present(&bitmap, s - s / 8 * 8);
            let run = (sector - in_block % sector).min(len);
            return Ok(if present {
                let base = self.block_offset(block, first)?;
                BlockStatus {
                    len: run,
                    kind: BlockKind::Data,
                    host_offset: Some(HostOffset(base + in_block)),
                }
            } else {
                BlockStatus {
                    len: run,
                    kind: BlockKind::Unallocated,
                    host_offset: None,
                }
            });
        }
        let host = if kind == BlockKind::Data {
            Some(self.block_offset(block, first)? + in_block)
        } else {
            None
        };
        let mut run = (bs - in_block).min(len);
        let mut next = block + 1;
        while run < len && next < self.geometry.data_blocks {
            let e = self.entry(self.geometry.payload_index(next));
            if e & STATE_MASK == PAYLOAD_PARTIALLY_PRESENT || classify(e) != kind {
                break;
            }
            if let Some(h) = host {
                if (e & OFFSET_MASK) != h - in_block + (next - block) * bs {
                    break;
                }
            }
            run = (run + bs).min(len);
            next += 1;
        }
        Ok(BlockStatus {
            len: run,
            kind,
            host_offset: host.map(HostOffset),
        })
    }

    fn info(&self) -> Result<ImageInfo> {
        let mut info = ImageInfo::basic(&self.path, Format::Vhdx, self.meta.virtual_size);
        info.cluster_size = Some(self.geometry.block_size);
        if let Some(r) = &self.parent_ref {
            info.backing_filename = Some(r.name.clone());
            info.full_backing_filename = Some(r.resolved.display().to_string());
            info.backing_filename_format = Some("vhdx".into());
        }
        info.dirty_flag = !self.header.log_guid.is_nil() && self.replayed_entries > 0;
        info.format_specific = Some(json!({
            "type": "vhdx",
            "data": {
                "creator": self.creator,
                "block-size": self.geometry.block_size,
                "logical-sector-size": self.meta.logical_sector_size,
                "physical-sector-size": self.meta.physical_sector_size,
                "leave-blocks-allocated": self.meta.leave_blocks_allocated,
                "has-parent": self.meta.has_parent,
                "log-replayed-entries": self.replayed_entries,
                "data-write-guid": self.header.data_write_guid.to_string(),
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
        if self.replayed_entries > 0 {
            report.messages.push(format!("the log holds {} entries that were replayed in memory (the file itself is unchanged)", self.replayed_entries));
        }
        let g = self.geometry;
        progress.set_total(g.data_blocks);
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut allocated = 0u64;
        let mut end = self.file_size;
        for block in 0..g.data_blocks {
            progress.advance(1);
            let e = self.entry(g.payload_index(block));
            let state = e & STATE_MASK;
            match state {
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                    allocated += 1;
                    match self.block_offset(block, e) {
                        Ok(at) => {
                            used.push((at, block));
                            end = end.max(at + g.block_size);
                        }
                        Err(err) => {
                            report.corruptions += 1;
                            report.messages.push(format!("ERROR: {err}"));
                        }
                    }
                }
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => {}
                other => {
                    report.corruptions += 1;
                    report
                        .messages
                        .push(format!("ERROR: block {block} has undefined state {other}"));
                }
            }
        }
        used.sort_unstable();
        for w in used.windows(2) {
            if w[1].0 < w[0].0 + g.block_size {
                report.corruptions += 1;
                report.messages.push(format!(
                    "ERROR: blocks {} and {} overlap at {:#x}",
                    w[0].1, w[1].1, w[1].0
                ));
            }
        }
        if let (Some(parent), Some(link)) = (
            &self.parent,
            self.meta
                .parent_locator
                .as_ref()
                .and_then(|l| l.get("parent_linkage")),
        ) {
            if let Some(guid) = parent
                .info()
                .ok()
                .and_then(|i| i.format_specific)
                .and_then(|f| f["data"]["data-write-guid"].as_str().map(str::to_string))
            {
                let want = link.trim_matches(['{', '}']).to_ascii_lowercase();
                if want != guid {
                    report.check_errors += 1;
                    report.messages.push(format!("ERROR: parent_linkage {link} does not match the parent's data write GUID {guid}"));
                }
            }
        }
        report.total_clusters = Some(g.data_blocks);
        report.allocated_clusters = Some(allocated);
        report.image_end_offset = Some(end);
        Ok(report)
    }

    fn backing_ref(&self) -> Option<BackingRef> {
        self.parent_ref.clone()
    }
    fn backing(&self) -> Option<&dyn DiskImage> {
        self.parent.as_deref()
    }
}

pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    writer::measure(opts, source)
}

/// The data write GUID of a VHDX (a differencing child records it as parent_linkage).
pub(crate) fn data_write_guid(path: &Path) -> Result<(Uuid, u64)> {
    let file = std::fs::File::open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "open the parent",
        source,
    })?;
    let opts = OpenOptions {
        skip_backing: true,
        ..OpenOptions::default()
    };
    let image = VhdxImage::open(path, Arc::new(file), &opts)?;
    Ok((image.header.data_write_guid, image.meta.virtual_size))
}
