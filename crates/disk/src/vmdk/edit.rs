//! In-place editing of VMDK images (commit target, rebase, emptied delta): hosted sparse
//! extents (monolithicSparse, twoGbMaxExtentSparse pieces, delta disks) and flat extents.
//!
//! New grains and grain tables are appended at the end of their extent file; data lands at
//! once, grain tables (both copies: primary and redundant) and directories are written by
//! `finish`, then the descriptor. While the edit is under way the sparse header's
//! uncleanShutdown byte is set, as VMware does, so an interrupted edit is visible.
//!
//! Content IDs follow VMware and qemu: the first data write gives the image a new CID (and
//! ddb.longContentID, whose last 8 hex digits are the CID), unless the caller says the guest
//! view does not change (safe rebase, emptying after commit). Re-linking to a parent records
//! the parent's current CID as parentCID. streamOptimized extents (and ESXi snapshot extents)
//! are refused: their grains are compressed and appended in stream order.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmedia_io::{AtomicFile, OverwritePolicy};

use super::descriptor::{self, Access, Descriptor, ExtentKind, NO_PARENT_CID};
use super::header::{
    SparseHeader, FLAG_REDUNDANT_GT, FLAG_ZEROED_GTE, MAX_DESCRIPTOR_SECTORS, MAX_GD_ENTRIES,
    SECTOR,
};
use super::sparse::{load_directory, read_directory};
use crate::editor::{InPlaceEditor, ParentRef};
use crate::error::{DiskError, Result};
use crate::image::Format;

const FORMAT: &str = "vmdk";
/// Editor granularity when an image has no sparse extent (flat only): large enough for few
/// system calls, the same as a VMware grain.
const FLAT_CLUSTER: u64 = 64 << 10;
/// Byte of the sparse header that records an unclean shutdown.
const UNCLEAN_SHUTDOWN_AT: u64 = 72;
/// Largest sector offset a grain table entry or directory entry can hold (32 bits).
const MAX_ENTRY_SECTOR: u64 = u32::MAX as u64;

/// Where the descriptor text lives.
enum DescriptorHome {
    /// Inside the sparse extent (monolithicSparse): byte offset and reserved bytes.
    Embedded { at: u64, reserved: u64 },
    /// A text file of its own (twoGbMaxExtent*, monolithicFlat, vmfs).
    File,
}

/// One hosted sparse extent open for writing.
struct SparseEdit {
    path: PathBuf,
    file: File,
    header: SparseHeader,
    gd: Vec<u32>,
    /// The redundant directory, when the header says there is one.
    rgd: Option<Vec<u32>>,
    gd_changed: bool,
    /// Grain tables read so far (primary copy), by directory index.
    tables: HashMap<usize, Vec<u32>>,
    dirty: BTreeSet<usize>,
    /// Next free byte for appended grains and tables (sector aligned).
    end: u64,
    /// First byte after the header, descriptor, directories and tables: grains start here.
    metadata_end: u64,
    /// Disjoint byte ranges (start, end) of the header, descriptor, directories and grain
    /// tables, sorted: a grain table entry pointing into one is damage, not a grain.
    metadata: Vec<(u64, u64)>,
    /// Set once uncleanShutdown has been written as 1.
    marked_unclean: bool,
    /// `empty` asked for the file to end after its metadata.
    truncate: bool,
    /// `grow` changed capacity or the directory offsets: `finish` rewrites those header fields.
    header_changed: bool,
}

enum EditData {
    Sparse(Box<SparseEdit>),
    Flat {
        path: PathBuf,
        file: File,
        offset: u64,
    },
    Zero,
}

struct EditExtent {
    start: u64,
    len: u64,
    access: Access,
    data: EditData,
}

/// A VMDK image open for in-place writing; see the module documentation.
pub struct VmdkEditor {
    path: PathBuf,
    /// The descriptor text as stored (edits replace single lines and keep the rest).
    text: String,
    descriptor: Descriptor,
    home: DescriptorHome,
    extents: Vec<EditExtent>,
    virtual_size: u64,
    cluster: u64,
    /// Key changes for the descriptor (None removes the key).
    updates: Vec<(String, Option<String>)>,
    /// Extent lines replacing the descriptor's after `grow` (None: unchanged).
    extent_lines: Option<Vec<descriptor::ExtentLine>>,
    content_changed: bool,
    keep_content_id: bool,
}

fn read_header(path: &Path, file: &File) -> Result<SparseHeader> {
    let mut bytes = [0u8; 512];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| DiskError::io(path, 0, e))?;
    let header = SparseHeader::parse(&bytes).map_err(|e| e.into_disk(path, FORMAT, 0))?;
    header
        .validate()
        .map_err(|e| e.into_disk(path, FORMAT, 0))?;
    Ok(header)
}

/// The descriptor text of a VMDK file and where it lives, without opening any extent.
fn read_descriptor_text(path: &Path, file: &File) -> Result<(String, DescriptorHome)> {
    let size = file
        .metadata()
        .map_err(|e| DiskError::io(path, 0, e))?
        .len();
    let mut magic = [0u8; 4];
    if size >= 4 {
        file.read_exact_at(&mut magic, 0)
            .map_err(|e| DiskError::io(path, 0, e))?;
    }
    if &magic == b"KDMV" {
        let header = read_header(path, file)?;
        let Some((at, reserved)) = super::embedded_descriptor_range(path, &header, size)? else {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: "editing a bare sparse extent (open its descriptor file instead)".into(),
            });
        };
        let mut raw = vec![0u8; reserved as usize];
        file.read_exact_at(&mut raw, at)
            .map_err(|e| DiskError::io(path, at, e))?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        raw.truncate(end);
        let text = String::from_utf8(raw)
            .map_err(|_| DiskError::corrupt(path, FORMAT, at, "descriptor", "is not UTF-8 text"))?;
        return Ok((text, DescriptorHome::Embedded { at, reserved }));
    }
    let raw = super::read_text_descriptor(path, file, size)?;
    let text = String::from_utf8(raw)
        .map_err(|_| DiskError::corrupt(path, FORMAT, 0, "descriptor", "is not UTF-8 text"))?;
    Ok((text, DescriptorHome::File))
}

/// The parsed descriptor of a VMDK (embedded or text), reading nothing else.
pub fn read_descriptor(path: &Path) -> Result<Descriptor> {
    let file = std::fs::File::open(path).map_err(|source| DiskError::Open {
        path: path.into(),
        action: "open",
        source,
    })?;
    let (text, _) = read_descriptor_text(path, &file)?;
    Descriptor::parse(text.as_bytes()).map_err(|e| e.into_disk(path, FORMAT, 0))
}

/// How a key is written: header keys as `key=value` (some quoted), database keys as
/// `ddb.key = "value"`, the way VMware lays descriptors out.
fn format_line(key: &str, value: &str) -> String {
    if key.starts_with("ddb.") {
        format!("{key} = \"{value}\"")
    } else if matches!(
        key,
        "parentFileNameHint" | "createType" | "encoding" | "isNativeSnapshot"
    ) {
        format!("{key}=\"{value}\"")
    } else {
        format!("{key}={value}")
    }
}

/// Replaces the extent lines of descriptor text with `lines` (in order; extra lines go after
/// the last existing one) and keeps every other line as it was.
fn replace_extent_lines(text: &str, lines: &[descriptor::ExtentLine]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut next = 0usize;
    let mut last_at = None;
    for line in text.lines() {
        if descriptor::ExtentLine::is_extent_line(line.trim()) {
            if let Some(l) = lines.get(next) {
                out.push(l.emit());
                last_at = Some(out.len());
            }
            next += 1;
        } else {
            out.push(line.to_string());
        }
    }
    let rest: Vec<String> = lines.iter().skip(next).map(|l| l.emit()).collect();
    let at = last_at.unwrap_or(out.len());
    out.splice(at..at, rest);
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// The key of a `key = value` line, if it is one.
fn line_key(line: &str) -> Option<&str> {
    let t = line.trim().trim_start_matches('\u{feff}');
    if t.starts_with('#') {
        return None;
    }
    t.split_once('=').map(|(k, _)| k.trim())
}

/// Replaces, adds or removes `key=value` lines in descriptor text and keeps every other line
/// (comments, extent lines, unknown keys) exactly as it was.
pub fn edit_descriptor_text(text: &str, updates: &[(String, Option<String>)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, value) in updates {
        let positions: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| line_key(l).is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(i, _)| i)
            .collect();
        match (value, positions.first()) {
            (Some(v), Some(&first)) => {
                lines[first] = format_line(key, v);
                for &i in positions[1..].iter().rev() {
                    lines.remove(i);
                }
            }
            (None, _) => {
                for &i in positions.iter().rev() {
                    lines.remove(i);
                }
            }
            (Some(v), None) => {
                let line = format_line(key, v);
                if key.starts_with("ddb.") {
                    lines.push(line);
                    continue;
                }
                // Header keys go after the related key VMware writes before them.
                let after = match key.to_ascii_lowercase().as_str() {
                    "parentfilenamehint" => ["createType", "parentCID", "CID"].as_slice(),
                    "parentcid" => ["CID", "version"].as_slice(),
                    _ => ["CID", "version"].as_slice(),
                };
                let at = after
                    .iter()
                    .find_map(|want| {
                        lines
                            .iter()
                            .position(|l| line_key(l).is_some_and(|k| k.eq_ignore_ascii_case(want)))
                    })
                    .map(|i| i + 1)
                    .unwrap_or(1.min(lines.len()));
                lines.insert(at, line);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

impl SparseEdit {
    fn open(path: &Path, file: File) -> Result<SparseEdit> {
        let header = read_header(path, &file)?;
        if header.is_compressed() || header.has_markers() {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: "writing into a streamOptimized extent (its grains are compressed in stream order; qemu refuses too): convert it to monolithicSparse first".into(),
            });
        }
        let file_size = file
            .metadata()
            .map_err(|e| DiskError::io(path, 0, e))?
            .len();
        let (gd, notes) = load_directory(path, &file, &header, file_size)?;
        if let Some(note) = notes.first() {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: format!(
                    "writing into an extent whose {note}; convert it to a new image first"
                ),
            });
        }
        let gd_bytes = header.gd_entries() * 4;
        let table_bytes = u64::from(header.num_gtes_per_gt) * 4;
        // Every metadata range of the extent: header, descriptor, both directories, all tables.
        // load_directory and read_directory checked the directories and tables against the
        // file, so none of these sums overflows.
        let mut metadata = vec![(0, SECTOR)];
        if let Some((at, len)) = super::embedded_descriptor_range(path, &header, file_size)? {
            metadata.push((at, at + len));
        }
        metadata.push((
            header.gd_offset * SECTOR,
            header.gd_offset * SECTOR + gd_bytes,
        ));
        let rgd = if header.flags & FLAG_REDUNDANT_GT != 0 && header.rgd_offset != 0 {
            let (rgd, problem) = read_directory(
                path,
                &file,
                &header,
                file_size,
                header.rgd_offset,
                "rgdOffset",
                48,
            )?;
            // Writes update both copies: a redundant copy naming tables outside the file
            // cannot be kept in step.
            if let Some(problem) = problem {
                return Err(problem);
            }
            let at = header.rgd_offset * SECTOR;
            metadata.push((at, at + gd_bytes));
            Some(rgd)
        } else {
            None
        };
        for &entry in gd.iter().chain(rgd.iter().flatten()) {
            if entry != 0 {
                let at = u64::from(entry) * SECTOR;
                metadata.push((at, at + table_bytes));
            }
        }
        let metadata_end = metadata
            .iter()
            .map(|&(_, end)| end)
            .chain([header.overhead.saturating_mul(SECTOR).min(file_size)])
            .max()
            .unwrap_or(SECTOR);
        metadata.sort_unstable();
        // Merged into disjoint ranges, so only the last one starting before a grain's end
        // can overlap it.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(metadata.len());
        for (start, end) in metadata {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let metadata = merged;
        Ok(SparseEdit {
            path: path.into(),
            file,
            end: file_size.div_ceil(SECTOR) * SECTOR,
            metadata_end: metadata_end.div_ceil(SECTOR) * SECTOR,
            metadata,
            header,
            gd,
            rgd,
            gd_changed: false,
            tables: HashMap::new(),
            dirty: BTreeSet::new(),
            marked_unclean: false,
            truncate: false,
            header_changed: false,
        })
    }

    fn grain_bytes(&self) -> u64 {
        self.header.grain_size * SECTOR
    }

    fn table_bytes(&self) -> u64 {
        u64::from(self.header.num_gtes_per_gt) * 4
    }

    fn mark_unclean(&mut self) -> Result<()> {
        if !self.marked_unclean {
            self.file
                .write_all_at(&[1], UNCLEAN_SHUTDOWN_AT)
                .map_err(|e| DiskError::io(&self.path, UNCLEAN_SHUTDOWN_AT, e))?;
            self.marked_unclean = true;
        }
        Ok(())
    }

    /// Reserves `bytes` (sector-rounded) at the end of the file; returns the byte offset.
    fn append(&mut self, bytes: u64) -> Result<u64> {
        let at = self.end;
        let end = at + bytes.div_ceil(SECTOR) * SECTOR;
        if end / SECTOR > MAX_ENTRY_SECTOR {
            return Err(DiskError::Limit {
                path: self.path.clone(),
                offset: at,
                field: "extent file size",
                value: end,
                limit: MAX_ENTRY_SECTOR * SECTOR,
                why: "grain and directory entries are 32-bit sector numbers",
            });
        }
        self.end = end;
        Ok(at)
    }

    /// The grain table of directory entry `index`, read on first use; with `create`, a table
    /// is appended when the directory has none.
    fn table(&mut self, index: usize, create: bool) -> Result<Option<&mut Vec<u32>>> {
        if !self.tables.contains_key(&index) {
            let Some(&sector) = self.gd.get(index) else {
                return Err(DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    self.header.gd_offset * SECTOR,
                    "grain directory",
                    format!("no entry {index}"),
                ));
            };
            let n = self.header.num_gtes_per_gt as usize;
            if sector == 0 {
                if !create {
                    return Ok(None);
                }
                let table_bytes = self.table_bytes();
                let at = self.append(table_bytes)?;
                self.add_metadata(at, table_bytes);
                self.gd[index] = (at / SECTOR) as u32;
                if let Some(rgd) = &self.rgd {
                    if rgd.get(index) == Some(&0) {
                        let rat = self.append(table_bytes)?;
                        self.add_metadata(rat, table_bytes);
                        if let Some(rgd) = self.rgd.as_mut() {
                            rgd[index] = (rat / SECTOR) as u32;
                        }
                    }
                }
                self.gd_changed = true;
                self.tables.insert(index, vec![0u32; n]);
                self.dirty.insert(index);
            } else {
                let at = u64::from(sector) * SECTOR;
                let mut raw = vec![0u8; n * 4];
                self.file
                    .read_exact_at(&mut raw, at)
                    .map_err(|e| DiskError::io(&self.path, at, e))?;
                let table = crate::table::le32_entries(&raw);
                self.tables.insert(index, table);
            }
        }
        Ok(self.tables.get_mut(&index))
    }

    fn locate(&self, rel: u64) -> (usize, usize) {
        let grain = rel / self.grain_bytes();
        let per = u64::from(self.header.num_gtes_per_gt);
        ((grain / per) as usize, (grain % per) as usize)
    }

    /// True when `len` bytes at `at` overlap the header, descriptor, a directory or a table.
    fn overlaps_metadata(&self, at: u64, len: u64) -> bool {
        let end = at.saturating_add(len);
        let before = self.metadata.partition_point(|(start, _)| *start < end);
        before > 0 && self.metadata[before - 1].1 > at
    }

    /// Records a table appended at `at` (past everything in the file) as metadata.
    fn add_metadata(&mut self, at: u64, len: u64) {
        self.metadata.push((at, at + len));
    }

    /// The host byte offset of an allocated data grain, checked against the file.
    fn data_grain(&self, entry: u32, rel: u64) -> Result<Option<u64>> {
        let zeroed = entry == 1 && self.header.flags & FLAG_ZEROED_GTE != 0;
        if entry == 0 || zeroed {
            return Ok(None);
        }
        let at = u64::from(entry) * SECTOR;
        if self.overlaps_metadata(at, self.grain_bytes()) || at + self.grain_bytes() > self.end {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                at,
                "grain table entry",
                format!(
                    "the grain of extent byte {rel:#x} points at {at:#x}, inside the metadata or past the end of the file; run check"
                ),
            ));
        }
        Ok(Some(at))
    }

    /// Writes one grain (whole, or the extent's shorter last grain) at extent byte `rel`.
    fn write_grain(&mut self, rel: u64, data: &[u8]) -> Result<()> {
        let grain_bytes = self.grain_bytes();
        if !rel.is_multiple_of(grain_bytes) || data.len() as u64 > grain_bytes {
            return Err(DiskError::Unsupported {
                path: self.path.clone(),
                format: FORMAT,
                feature: format!(
                    "a write of {} bytes at extent byte {rel:#x} that is not one whole grain",
                    data.len()
                ),
            });
        }
        let (gi, ti) = self.locate(rel);
        let entry = self.table(gi, true)?.map(|t| t[ti]).unwrap_or(0);
        let existing = self.data_grain(entry, rel)?;
        self.mark_unclean()?;
        let host = match existing {
            Some(at) => at,
            None => {
                let at = self.append(grain_bytes)?;
                if let Some(t) = self.table(gi, true)? {
                    t[ti] = (at / SECTOR) as u32;
                }
                self.dirty.insert(gi);
                at
            }
        };
        if (data.len() as u64) < grain_bytes && host + grain_bytes == self.end {
            // A fresh last grain shorter than the grain: pad it so the file ends on a grain.
            let mut padded = data.to_vec();
            padded.resize(grain_bytes as usize, 0);
            return self
                .file
                .write_all_at(&padded, host)
                .map_err(|e| DiskError::io(&self.path, host, e));
        }
        self.file
            .write_all_at(data, host)
            .map_err(|e| DiskError::io(&self.path, host, e))
    }

    /// Makes the grain at `rel` read as zeros; `over_parent` says whether an unallocated grain
    /// would show a parent's data.
    fn zero_grain(&mut self, rel: u64, len: u64, over_parent: bool) -> Result<()> {
        let (gi, ti) = self.locate(rel);
        if self.header.flags & FLAG_ZEROED_GTE != 0 {
            self.mark_unclean()?;
            if let Some(t) = self.table(gi, true)? {
                // The old grain's space is left behind, as qemu and VMware do.
                t[ti] = 1;
            }
            self.dirty.insert(gi);
            return Ok(());
        }
        let entry = self.table(gi, false)?.map(|t| t[ti]).unwrap_or(0);
        if self.data_grain(entry, rel)?.is_none() && !over_parent {
            return Ok(());
        }
        self.write_grain(rel, &vec![0u8; len as usize])
    }

    /// Drops every grain: all grain tables become empty and the file ends after its metadata.
    fn empty(&mut self) -> Result<()> {
        self.mark_unclean()?;
        for index in 0..self.gd.len() {
            if let Some(t) = self.table(index, false)? {
                if t.iter().any(|e| *e != 0) {
                    t.fill(0);
                    self.dirty.insert(index);
                }
            }
        }
        self.truncate = true;
        Ok(())
    }

    /// Grows the extent to `capacity` sectors, as VMware's disk expansion does: the new
    /// directory entries get grain tables at once (both copies, appended as holes that read as
    /// empty tables), as qemu and VMware lay out hosted sparse extents; a directory that no
    /// longer fits its sectors moves to the end of the file. A partly used last grain gets zeros
    /// past the old end, so the grown range reads as zeros.
    fn grow(&mut self, capacity: u64) -> Result<()> {
        let old_capacity = self.header.capacity;
        if capacity <= old_capacity {
            return Ok(());
        }
        let mut grown = self.header.clone();
        grown.capacity = capacity;
        let entries = grown.gd_entries();
        if capacity > super::header::MAX_CAPACITY_SECTORS || entries > MAX_GD_ENTRIES {
            return Err(DiskError::Limit {
                path: self.path.clone(),
                offset: 12,
                field: "capacity",
                value: capacity.saturating_mul(SECTOR),
                limit: super::header::MAX_CAPACITY_SECTORS * SECTOR,
                why: "VMDK disks are limited to 64 TiB",
            });
        }
        let entries = entries as usize;
        self.mark_unclean()?;
        let grain_bytes = self.grain_bytes();
        let old_end = old_capacity * SECTOR;
        if !old_end.is_multiple_of(grain_bytes) {
            let (gi, ti) = self.locate(old_end);
            let entry = self.table(gi, false)?.map(|t| t[ti]).unwrap_or(0);
            if let Some(host) = self.data_grain(entry, old_end)? {
                let used = old_end % grain_bytes;
                let zeros = vec![0u8; (grain_bytes - used) as usize];
                self.file
                    .write_all_at(&zeros, host + used)
                    .map_err(|e| DiskError::io(&self.path, host + used, e))?;
            }
        }
        let old_entries = self.gd.len();
        let sectors_of = |n: usize| (n as u64 * 4).div_ceil(SECTOR);
        if sectors_of(entries) > sectors_of(old_entries) {
            // The directory is followed by grain tables: a larger one goes to the end.
            let dir_bytes = entries as u64 * 4;
            let at = self.append(dir_bytes)?;
            self.add_metadata(at, dir_bytes);
            self.header.gd_offset = at / SECTOR;
            if self.rgd.is_some() {
                let rat = self.append(dir_bytes)?;
                self.add_metadata(rat, dir_bytes);
                self.header.rgd_offset = rat / SECTOR;
            }
        }
        self.gd.resize(entries, 0);
        if let Some(rgd) = self.rgd.as_mut() {
            rgd.resize(entries, 0);
        }
        let table_bytes = self.table_bytes();
        for index in old_entries..entries {
            let at = self.append(table_bytes)?;
            self.add_metadata(at, table_bytes);
            self.gd[index] = (at / SECTOR) as u32;
            if self.rgd.is_some() {
                let rat = self.append(table_bytes)?;
                self.add_metadata(rat, table_bytes);
                if let Some(rgd) = self.rgd.as_mut() {
                    rgd[index] = (rat / SECTOR) as u32;
                }
            }
        }
        self.header.capacity = capacity;
        self.gd_changed = true;
        self.header_changed = true;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let table_bytes = self.table_bytes() as usize;
        for index in std::mem::take(&mut self.dirty) {
            let Some(table) = self.tables.get(&index) else {
                continue;
            };
            let mut bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            bytes.resize(table_bytes, 0);
            let copies = [
                Some(self.gd[index]),
                self.rgd.as_ref().and_then(|r| r.get(index).copied()),
            ];
            for sector in copies.into_iter().flatten().filter(|s| *s != 0) {
                let at = u64::from(sector) * SECTOR;
                self.file
                    .write_all_at(&bytes, at)
                    .map_err(|e| DiskError::io(&self.path, at, e))?;
            }
        }
        if self.gd_changed {
            let dirs = [
                Some((self.header.gd_offset, &self.gd)),
                self.rgd.as_ref().map(|r| (self.header.rgd_offset, r)),
            ];
            for (sector, dir) in dirs.into_iter().flatten() {
                let bytes: Vec<u8> = dir.iter().flat_map(|e| e.to_le_bytes()).collect();
                let at = sector * SECTOR;
                self.file
                    .write_all_at(&bytes, at)
                    .map_err(|e| DiskError::io(&self.path, at, e))?;
            }
        }
        let io = |at: u64, e: std::io::Error| DiskError::io(&self.path, at, e);
        if self.truncate {
            let end = self.metadata_end.max(
                // Appended tables lie after the old metadata: keep them.
                self.gd
                    .iter()
                    .chain(self.rgd.iter().flatten())
                    .map(|s| u64::from(*s) * SECTOR + table_bytes as u64)
                    .max()
                    .unwrap_or(0)
                    .div_ceil(SECTOR)
                    * SECTOR,
            );
            self.file.set_len(end).map_err(|e| io(end, e))?;
        } else {
            let len = self.file.metadata().map_err(|e| io(0, e))?.len();
            if len < self.end {
                self.file.set_len(self.end).map_err(|e| io(self.end, e))?;
            }
        }
        if self.header_changed {
            // Written after the directories and tables they point to; the fields sit at fixed
            // offsets of the header (capacity 12, rgdOffset 48, gdOffset 56).
            let h = &self.header;
            for (at, value) in [(12u64, h.capacity), (48, h.rgd_offset), (56, h.gd_offset)] {
                self.file
                    .write_all_at(&value.to_le_bytes(), at)
                    .map_err(|e| io(at, e))?;
            }
        }
        self.file.sync_data().map_err(|e| io(0, e))?;
        if self.marked_unclean {
            self.file
                .write_all_at(&[0], UNCLEAN_SHUTDOWN_AT)
                .map_err(|e| io(UNCLEAN_SHUTDOWN_AT, e))?;
        }
        self.file.sync_all().map_err(|e| io(0, e))
    }
}

impl VmdkEditor {
    /// Opens a VMDK (descriptor file or monolithic sparse file) for writing in place.
    pub fn open(path: &Path) -> Result<VmdkEditor> {
        let file = crate::image::open_for_writing(path)?;
        let (text, home) = read_descriptor_text(path, &file)?;
        let descriptor =
            Descriptor::parse(text.as_bytes()).map_err(|e| e.into_disk(path, FORMAT, 0))?;
        let mut own = match home {
            DescriptorHome::Embedded { .. } => Some(file),
            DescriptorHome::File => None,
        };
        if own.is_some() && descriptor.extents.len() != 1 {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: format!(
                    "an embedded descriptor with {} extents",
                    descriptor.extents.len()
                ),
            });
        }
        let mut extents = Vec::new();
        let mut start = 0u64;
        for line in &descriptor.extents {
            let len = line.sectors.checked_mul(SECTOR).ok_or_else(|| {
                DiskError::corrupt(path, FORMAT, 0, "extent size", "overflows 64 bits")
            })?;
            let data = match line.kind {
                ExtentKind::Zero => EditData::Zero,
                ExtentKind::Flat | ExtentKind::Vmfs => {
                    let name = line.file_name.clone().unwrap_or_default();
                    let target = crate::reference::resolve_reference(path, &name);
                    EditData::Flat {
                        file: crate::image::open_for_writing(&target)?,
                        path: target,
                        offset: line.offset.checked_mul(SECTOR).ok_or_else(|| {
                            DiskError::corrupt(
                                path,
                                FORMAT,
                                0,
                                "extent offset",
                                "overflows 64 bits",
                            )
                        })?,
                    }
                }
                ExtentKind::Sparse => {
                    let (target, file) = match own.take() {
                        Some(f) => (path.to_path_buf(), f),
                        None => {
                            let name = line.file_name.clone().unwrap_or_default();
                            let target = crate::reference::resolve_reference(path, &name);
                            let f = crate::image::open_for_writing(&target)?;
                            (target, f)
                        }
                    };
                    let sparse = SparseEdit::open(&target, file)?;
                    if sparse.header.capacity.saturating_mul(SECTOR) < len {
                        return Err(DiskError::corrupt(
                            &target,
                            FORMAT,
                            12,
                            "capacity",
                            "the extent is smaller than the descriptor says",
                        ));
                    }
                    EditData::Sparse(Box::new(sparse))
                }
                other => {
                    return Err(DiskError::Unsupported {
                        path: path.into(),
                        format: FORMAT,
                        feature: format!("writing into {} extents in place", other.as_str()),
                    })
                }
            };
            let end = start.checked_add(len).ok_or_else(|| {
                DiskError::corrupt(path, FORMAT, 0, "extent size", "extent sizes overflow")
            })?;
            extents.push(EditExtent {
                start,
                len,
                access: line.access,
                data,
            });
            start = end;
        }
        let mut cluster = None;
        for e in &extents {
            if let EditData::Sparse(s) = &e.data {
                match cluster {
                    None => cluster = Some(s.grain_bytes()),
                    Some(c) if c != s.grain_bytes() => {
                        return Err(DiskError::Unsupported {
                            path: path.into(),
                            format: FORMAT,
                            feature: "sparse extents with different grain sizes".into(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        let cluster = cluster.unwrap_or(FLAT_CLUSTER);
        if let Some(e) = extents
            .iter()
            .rev()
            .skip(1)
            .find(|e| !e.len.is_multiple_of(cluster))
        {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: FORMAT,
                feature: format!(
                    "an extent of {} bytes that is not a whole number of {cluster}-byte grains",
                    e.len
                ),
            });
        }
        Ok(VmdkEditor {
            path: path.to_path_buf(),
            text,
            descriptor,
            home,
            extents,
            virtual_size: start,
            cluster,
            updates: Vec::new(),
            extent_lines: None,
            content_changed: false,
            keep_content_id: false,
        })
    }

    /// True when the image currently records a parent (after pending updates).
    fn has_parent(&self) -> bool {
        if let Some((_, v)) = self
            .updates
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case("parentCID"))
        {
            return v
                .as_deref()
                .is_some_and(|v| u32::from_str_radix(v, 16).ok() != Some(NO_PARENT_CID));
        }
        matches!(self.descriptor.parent_cid(), Ok(Some(_)))
    }

    /// The extent holding guest byte `offset`, as an index.
    fn extent_index(&self, offset: u64) -> Result<usize> {
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        if i >= self.extents.len() {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset,
                len: 0,
                size: self.virtual_size,
            });
        }
        Ok(i)
    }

    fn writable(&self, i: usize) -> Result<()> {
        if self.extents[i].access != Access::ReadWrite {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "writing into an extent that is not RW",
            });
        }
        Ok(())
    }

    /// The new descriptor text with `updates` applied, checked to fit where it lives.
    fn new_text(&self, updates: &[(String, Option<String>)]) -> Result<String> {
        let text = match &self.extent_lines {
            Some(lines) => replace_extent_lines(&self.text, lines),
            None => self.text.clone(),
        };
        let text = edit_descriptor_text(&text, updates);
        if let DescriptorHome::Embedded { reserved, .. } = self.home {
            if text.len() as u64 > reserved {
                return Err(DiskError::Limit {
                    path: self.path.clone(),
                    offset: 28,
                    field: "embedded descriptor size",
                    value: text.len() as u64,
                    limit: reserved.min(MAX_DESCRIPTOR_SECTORS * SECTOR),
                    why: "the new descriptor must fit the sectors the sparse header reserves for it; use a shorter parent name, or convert the image",
                });
            }
        }
        Descriptor::parse(text.as_bytes()).map_err(|e| e.into_disk(&self.path, FORMAT, 0))?;
        Ok(text)
    }

    fn write_descriptor(&self, text: &str) -> Result<()> {
        match self.home {
            DescriptorHome::Embedded { at, reserved } => {
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(reserved as usize, 0);
                let file = crate::image::open_for_writing(&self.path)?;
                file.write_all_at(&bytes, at)
                    .map_err(|e| DiskError::io(&self.path, at, e))?;
                file.sync_all()
                    .map_err(|e| DiskError::io(&self.path, at, e))
            }
            DescriptorHome::File => {
                let mut out =
                    AtomicFile::create(&self.path, OverwritePolicy::Replace).map_err(|source| {
                        DiskError::Open {
                            path: self.path.clone(),
                            action: "rewrite the descriptor",
                            source,
                        }
                    })?;
                // The replacement keeps the descriptor's permissions.
                if let Ok(meta) = std::fs::metadata(&self.path) {
                    out.file()
                        .set_permissions(meta.permissions())
                        .map_err(|e| DiskError::io(&self.path, 0, e))?;
                }
                use std::io::Write;
                out.file_mut()
                    .write_all(text.as_bytes())
                    .map_err(|e| DiskError::io(&self.path, 0, e))?;
                out.commit().map_err(|e| DiskError::io(&self.path, 0, e))
            }
        }
    }

    /// Grows the virtual size to `new_size` bytes in place, as `vmware-vdiskmanager -x` does
    /// (qemu-img 7.2 resizes no VMDK): a sparse last extent gets a larger capacity and grain
    /// tables for it, a flat last extent a longer file; twoGbMaxExtentFlat images fill their
    /// last piece up to the piece size, then get new `-fNNN` pieces. The descriptor records
    /// the new extent sizes and geometry, and the disk a new CID.
    ///
    /// Refused: shrinking (VMware only grows disks, qemu resizes no VMDK), sizes that are not
    /// whole sectors, delta disks (a delta must keep its parent's size), and streamOptimized
    /// or ESXi extents (refused already by `open`).
    pub fn grow(&mut self, new_size: u64) -> Result<()> {
        if new_size < self.virtual_size {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "shrinking (VMware only expands virtual disks and qemu-img resizes no VMDK; convert to a smaller image instead)",
            });
        }
        if !new_size.is_multiple_of(SECTOR) {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: new_size.to_string(),
                reason: "a VMDK size is a whole number of 512-byte sectors".into(),
            });
        }
        if new_size > super::header::MAX_CAPACITY_SECTORS * SECTOR {
            return Err(DiskError::Limit {
                path: self.path.clone(),
                offset: 0,
                field: "virtual size",
                value: new_size,
                limit: super::header::MAX_CAPACITY_SECTORS * SECTOR,
                why: "VMDK disks are limited to 64 TiB",
            });
        }
        if self.has_parent() {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "resizing a delta disk (it must keep its parent's size; commit it first, or resize a standalone copy)",
            });
        }
        if new_size == self.virtual_size {
            return Ok(());
        }
        let mut lines = self.descriptor.extents.clone();
        if lines.len() != self.extents.len() || lines.is_empty() {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                0,
                "extent description",
                "the extent lines changed while the image was open",
            ));
        }
        let create_type = self.descriptor.create_type().unwrap_or("").to_string();
        let split_flat = create_type.eq_ignore_ascii_case("twoGbMaxExtentFlat");
        // Pieces of a split disk keep the size its first piece has (qemu: 2 GiB, VMware and
        // vmedia: 2 GiB - 1 MiB).
        let piece_limit = if split_flat || create_type.eq_ignore_ascii_case("twoGbMaxExtentSparse")
        {
            lines[0].sectors.max(super::writer::SPLIT_EXTENT_SECTORS)
        } else {
            u64::MAX
        };
        let mut extra = (new_size - self.virtual_size) / SECTOR;
        let last = lines.len() - 1;
        let room = piece_limit.saturating_sub(lines[last].sectors);
        let step = extra.min(room);
        let grown_sectors = lines[last].sectors + step;
        let last_extent = self.extents.len() - 1;
        let e = &mut self.extents[last_extent];
        if e.access != Access::ReadWrite {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "resizing an image whose last extent is not RW",
            });
        }
        match &mut e.data {
            EditData::Sparse(sparse) => sparse.grow(grown_sectors)?,
            EditData::Flat { path, file, offset } => {
                let need = *offset + grown_sectors * SECTOR;
                let have = file
                    .metadata()
                    .map_err(|err| DiskError::io(path.as_path(), 0, err))?
                    .len();
                if have < need {
                    file.set_len(need)
                        .map_err(|err| DiskError::io(path.as_path(), need, err))?;
                }
            }
            EditData::Zero => {}
        }
        e.len = grown_sectors * SECTOR;
        lines[last].sectors = grown_sectors;
        extra -= step;
        if extra > 0 && !split_flat {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "growing a twoGbMaxExtentSparse disk past its last piece (convert it to monolithicSparse, or resize within the last piece)",
            });
        }
        let mut index = lines.len();
        while extra > 0 {
            index += 1;
            let sectors = extra.min(piece_limit);
            let name = self.new_piece_name(index)?;
            let piece = self.path.with_file_name(&name);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&piece)
                .map_err(|source| DiskError::Open {
                    path: piece.clone(),
                    action: "create a new extent piece",
                    source,
                })?;
            file.set_len(sectors * SECTOR)
                .map_err(|err| DiskError::io(&piece, sectors * SECTOR, err))?;
            lines.push(descriptor::ExtentLine {
                access: Access::ReadWrite,
                sectors,
                kind: ExtentKind::Flat,
                file_name: Some(name),
                offset: 0,
            });
            extra -= sectors;
        }
        let total: u64 = lines.iter().map(|l| l.sectors).sum();
        if self.descriptor.get("ddb.geometry.cylinders").is_some() {
            let adapter = self.descriptor.get("ddb.adapterType").unwrap_or("ide");
            let (cylinders, _, _) = super::writer::geometry(total, adapter);
            self.updates
                .push(("ddb.geometry.cylinders".into(), Some(cylinders.to_string())));
        }
        self.extent_lines = Some(lines);
        self.virtual_size = new_size;
        // Checked now so a descriptor that no longer fits fails before anything is committed.
        self.new_text(&self.updates)?;
        self.content_changed = true;
        Ok(())
    }

    /// The file name of split piece `index` (`disk-f003.vmdk` next to `disk.vmdk`).
    fn new_piece_name(&self, index: usize) -> Result<String> {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        if index > 999 {
            return Err(DiskError::Limit {
                path: self.path.clone(),
                offset: 0,
                field: "extent pieces",
                value: index as u64,
                limit: 999,
                why: "split pieces are numbered with three digits",
            });
        }
        Ok(format!("{stem}-f{index:03}.vmdk"))
    }

    /// Descriptor updates giving the image a new content ID.
    fn new_content_id(&self) -> Vec<(String, Option<String>)> {
        let cid = descriptor::random_cid();
        let mut updates = vec![("CID".to_string(), Some(format!("{cid:08x}")))];
        if self.descriptor.get("ddb.longContentID").is_some() {
            let high = uuid::Uuid::new_v4().as_u128() >> 32;
            updates.push((
                "ddb.longContentID".to_string(),
                Some(format!("{high:024x}{cid:08x}")),
            ));
        }
        updates
    }
}

impl InPlaceEditor for VmdkEditor {
    fn cluster_size(&self) -> u64 {
        self.cluster
    }

    fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        let end = guest_offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.virtual_size)
            .ok_or_else(|| DiskError::OutOfRange {
                path: self.path.clone(),
                offset: guest_offset,
                len: data.len() as u64,
                size: self.virtual_size,
            })?;
        let mut at = guest_offset;
        while at < end {
            let i = self.extent_index(at)?;
            self.writable(i)?;
            let e = &mut self.extents[i];
            let n = (e.start + e.len - at).min(end - at);
            let piece = &data[(at - guest_offset) as usize..(at - guest_offset + n) as usize];
            let rel = at - e.start;
            match &mut e.data {
                EditData::Sparse(s) => {
                    let g = s.grain_bytes();
                    let mut done = 0u64;
                    while done < n {
                        let m = (g - (rel + done) % g).min(n - done);
                        s.write_grain(rel + done, &piece[done as usize..(done + m) as usize])?;
                        done += m;
                    }
                }
                EditData::Flat { path, file, offset } => {
                    let host = *offset + rel;
                    file.write_all_at(piece, host)
                        .map_err(|err| DiskError::io(path.as_path(), host, err))?;
                }
                EditData::Zero => {
                    if piece.iter().any(|b| *b != 0) {
                        return Err(DiskError::NotSupportedFor {
                            path: self.path.clone(),
                            format: FORMAT,
                            operation: "writing data into a ZERO extent",
                        });
                    }
                }
            }
            at += n;
        }
        self.content_changed = true;
        Ok(())
    }

    fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        let i = self.extent_index(guest_offset)?;
        self.writable(i)?;
        let over_parent = self.has_parent();
        let cluster = self.cluster;
        let e = &mut self.extents[i];
        let rel = guest_offset - e.start;
        let len = cluster.min(e.start + e.len - guest_offset);
        match &mut e.data {
            EditData::Sparse(s) => {
                let g = s.grain_bytes();
                let mut done = 0u64;
                while done < len {
                    let m = (g - (rel + done) % g).min(len - done);
                    s.zero_grain(rel + done, m, over_parent)?;
                    done += m;
                }
            }
            EditData::Flat { path, file, offset } => {
                let host = *offset + rel;
                file.write_all_at(&vec![0u8; len as usize], host)
                    .map_err(|err| DiskError::io(path.as_path(), host, err))?;
            }
            EditData::Zero => {}
        }
        self.content_changed = true;
        Ok(())
    }

    fn set_parent(&mut self, parent: Option<&ParentRef>) -> Result<()> {
        let updates = match parent {
            None => vec![
                (
                    "parentCID".to_string(),
                    Some(format!("{NO_PARENT_CID:08x}")),
                ),
                ("parentFileNameHint".to_string(), None),
            ],
            Some(p) => {
                crate::image::require_parent_format(p.format, Format::Vmdk)?;
                if p.name.contains(['"', '\n', '\r'])
                    || p.name.len() > descriptor::MAX_LINE_BYTES - "parentFileNameHint=\"\"".len()
                {
                    return Err(DiskError::InvalidOption {
                        key: "backing_file".into(),
                        value: p.name.clone(),
                        reason: "a VMDK parentFileNameHint cannot hold quotes or line breaks"
                            .into(),
                    });
                }
                let parent = read_descriptor(&p.resolved)?;
                let cid = parent
                    .cid()
                    .map_err(|e| e.into_disk(&p.resolved, FORMAT, 0))?
                    .ok_or_else(|| {
                        DiskError::corrupt(
                            &p.resolved,
                            FORMAT,
                            0,
                            "CID",
                            "the parent descriptor has no CID",
                        )
                    })?;
                let parent_size = parent
                    .total_sectors()
                    .map_err(|e| e.into_disk(&p.resolved, FORMAT, 0))?
                    .saturating_mul(SECTOR);
                if parent_size != self.virtual_size {
                    return Err(DiskError::InvalidOption {
                        key: "backing_file".into(),
                        value: p.name.clone(),
                        reason: format!(
                            "a VMDK delta disk must have its parent's size: the parent has {parent_size} bytes, this disk {}",
                            self.virtual_size
                        ),
                    });
                }
                vec![
                    ("parentCID".to_string(), Some(format!("{cid:08x}"))),
                    ("parentFileNameHint".to_string(), Some(p.name.clone())),
                ]
            }
        };
        // Check the fit now, before any data is written.
        let mut all = self.updates.clone();
        all.extend(updates.iter().cloned());
        self.new_text(&all)?;
        self.updates = all;
        Ok(())
    }

    fn empty(&mut self) -> Result<()> {
        if self
            .extents
            .iter()
            .any(|e| matches!(e.data, EditData::Flat { .. }))
        {
            return Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: FORMAT,
                operation: "emptying an image with flat extents",
            });
        }
        for e in &mut self.extents {
            if let EditData::Sparse(s) = &mut e.data {
                s.empty()?;
            }
        }
        self.content_changed = true;
        Ok(())
    }

    fn keep_content_id(&mut self) {
        self.keep_content_id = true;
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut this = *self;
        for e in std::mem::take(&mut this.extents) {
            match e.data {
                EditData::Sparse(s) => s.finish()?,
                EditData::Flat { path, file, .. } => {
                    file.sync_all().map_err(|err| DiskError::io(path, 0, err))?
                }
                EditData::Zero => {}
            }
        }
        let mut updates = std::mem::take(&mut this.updates);
        if this.content_changed && !this.keep_content_id {
            updates.extend(this.new_content_id());
        }
        if updates.is_empty() {
            return Ok(());
        }
        let text = this.new_text(&updates)?;
        this.write_descriptor(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_DELTA: &str = "# Disk DescriptorFile\nversion=1\nCID=7cc493\nparentCID=3a015325\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"b.vmdk\"\n\n# Extent description\nRW 8192 SPARSE \"m.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn descriptor_edit_replaces_lines_and_keeps_the_rest() {
        let out = edit_descriptor_text(
            QEMU_DELTA,
            &[
                ("parentCID".into(), Some("0000abcd".into())),
                ("parentFileNameHint".into(), Some("base dir/a.vmdk".into())),
            ],
        );
        assert!(out.contains("parentCID=0000abcd\n"));
        assert!(out.contains("parentFileNameHint=\"base dir/a.vmdk\"\n"));
        assert!(out.contains("RW 8192 SPARSE \"m.vmdk\"\n"));
        assert!(out.contains("ddb.adapterType = \"ide\"\n"));
        let d = Descriptor::parse(out.as_bytes()).unwrap();
        assert_eq!(d.parent_cid().unwrap(), Some(0xabcd));
        assert_eq!(d.parent_file_name_hint(), Some("base dir/a.vmdk"));
    }

    #[test]
    fn descriptor_edit_removing_the_parent_drops_the_hint() {
        let out = edit_descriptor_text(
            QEMU_DELTA,
            &[
                ("parentCID".into(), Some("ffffffff".into())),
                ("parentFileNameHint".into(), None),
            ],
        );
        let d = Descriptor::parse(out.as_bytes()).unwrap();
        assert_eq!(d.parent_cid().unwrap(), None);
        assert_eq!(d.parent_file_name_hint(), None);
    }

    #[test]
    fn descriptor_edit_adds_a_parent_after_create_type() {
        let base = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\nRW 8 SPARSE \"a.vmdk\"\nddb.longContentID = \"0123456789abcdef0123456712345678\"\n";
        let out = edit_descriptor_text(
            base,
            &[
                ("parentFileNameHint".into(), Some("p.vmdk".into())),
                ("ddb.longContentID".into(), Some("f".repeat(32))),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        let ct = lines
            .iter()
            .position(|l| l.starts_with("createType"))
            .unwrap();
        assert_eq!(lines[ct + 1], "parentFileNameHint=\"p.vmdk\"");
        assert!(out.contains(&format!("ddb.longContentID = \"{}\"", "f".repeat(32))));
    }

    #[test]
    fn extent_lines_are_replaced_in_place_and_new_ones_follow_the_last() {
        let text = "# Disk DescriptorFile\nCID=1\n\n# Extent description\nRW 8 FLAT \"a-f001.vmdk\" 0\n\n# The Disk Data Base\nddb.adapterType = \"ide\"\n";
        let lines = [
            descriptor::ExtentLine {
                access: Access::ReadWrite,
                sectors: 16,
                kind: ExtentKind::Flat,
                file_name: Some("a-f001.vmdk".into()),
                offset: 0,
            },
            descriptor::ExtentLine {
                access: Access::ReadWrite,
                sectors: 4,
                kind: ExtentKind::Flat,
                file_name: Some("a-f002.vmdk".into()),
                offset: 0,
            },
        ];
        let out = replace_extent_lines(text, &lines);
        assert!(
            out.contains("RW 16 FLAT \"a-f001.vmdk\" 0\nRW 4 FLAT \"a-f002.vmdk\" 0\n\n# The Disk"),
            "{out}"
        );
        let d = Descriptor::parse(out.as_bytes()).unwrap();
        assert_eq!(d.extents, lines);
        assert_eq!(d.get("ddb.adapterType"), Some("ide"));
    }

    #[test]
    fn descriptor_edit_collapses_duplicate_keys() {
        let text = "# Disk DescriptorFile\nCID=1\nCID=2\nRW 8 SPARSE \"a.vmdk\"\n";
        let out = edit_descriptor_text(text, &[("CID".into(), Some("00000003".into()))]);
        assert_eq!(out.matches("CID=").count(), 1);
        assert!(out.contains("CID=00000003"));
    }
}

#[cfg(test)]
mod editor_tests {
    use super::*;
    use crate::image::{CreateOptions, OpenOptions};

    const MIB: u64 = 1 << 20;
    const GRAIN: usize = 64 << 10;

    fn make(dir: &Path, name: &str, subformat: &str, backing: Option<&str>) -> PathBuf {
        let path = dir.join(name);
        let mut opts = CreateOptions::new(Format::Vmdk, 4 * MIB);
        opts.options.insert("subformat".into(), subformat.into());
        opts.backing = backing.map(|b| (b.to_string(), Some(Format::Vmdk)));
        let mut w = crate::factory::create(&path, &opts).unwrap();
        if backing.is_none() {
            w.write_at(0, &vec![0x11u8; GRAIN]).unwrap();
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

    fn cid(path: &Path) -> u32 {
        read_descriptor(path).unwrap().cid().unwrap().unwrap()
    }

    #[test]
    fn editor_overwrites_and_allocates_grains_in_both_grain_table_copies() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        assert_eq!(e.cluster_size(), GRAIN as u64);
        e.write_cluster(0, &vec![0x22u8; GRAIN]).unwrap();
        e.write_cluster(3 * MIB, &vec![0x33u8; GRAIN]).unwrap();
        e.finish().unwrap();
        let data = read_all(&p);
        assert!(data[..GRAIN].iter().all(|b| *b == 0x22));
        assert!(data[3 * MIB as usize..3 * MIB as usize + GRAIN]
            .iter()
            .all(|b| *b == 0x33));
        assert!(data[GRAIN..3 * MIB as usize].iter().all(|b| *b == 0));
        // The redundant tables hold the same entries as the primary ones.
        let f = File::open(&p).unwrap();
        let h = read_header(&p, &f).unwrap();
        let read = |sector: u64| {
            let mut gd = [0u8; 4];
            f.read_exact_at(&mut gd, sector * SECTOR).unwrap();
            let mut gt = vec![0u8; 2048];
            f.read_exact_at(&mut gt, u64::from(u32::from_le_bytes(gd)) * SECTOR)
                .unwrap();
            gt
        };
        assert_eq!(read(h.gd_offset), read(h.rgd_offset));
        assert!(!h.unclean_shutdown);
    }

    #[test]
    fn a_grain_entry_pointing_into_the_grain_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let h = read_header(&p, &f).unwrap();
        let mut gd = [0u8; 4];
        f.read_exact_at(&mut gd, h.gd_offset * SECTOR).unwrap();
        let gt_at = u64::from(u32::from_le_bytes(gd)) * SECTOR;
        // Grain 0 now "lives" on the redundant grain directory.
        f.write_all_at(&(h.rgd_offset as u32).to_le_bytes(), gt_at)
            .unwrap();
        drop(f);
        let before = std::fs::read(&p).unwrap();
        let mut e = VmdkEditor::open(&p).unwrap();
        let err = e.write_cluster(0, &vec![9u8; GRAIN]).unwrap_err();
        assert!(err.to_string().contains("inside the metadata"), "{err}");
        drop(e);
        let after = std::fs::read(&p).unwrap();
        assert_eq!(
            before[512..],
            after[512..],
            "only the uncleanShutdown byte may change"
        );
    }

    #[test]
    fn first_data_write_renews_the_cid() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let before = cid(&p);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.write_cluster(0, &vec![1u8; GRAIN]).unwrap();
        e.finish().unwrap();
        assert_ne!(cid(&p), before);
    }

    #[test]
    fn keep_content_id_keeps_the_cid() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let before = cid(&p);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.keep_content_id();
        e.write_cluster(0, &vec![1u8; GRAIN]).unwrap();
        e.finish().unwrap();
        assert_eq!(cid(&p), before);
    }

    #[test]
    fn set_parent_records_the_parent_cid_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let base = make(dir.path(), "base.vmdk", "monolithicSparse", None);
        let other = make(dir.path(), "other.vmdk", "monolithicSparse", None);
        let child = make(
            dir.path(),
            "child.vmdk",
            "monolithicSparse",
            Some("base.vmdk"),
        );
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&child).unwrap());
        e.set_parent(Some(&ParentRef {
            name: "other.vmdk".into(),
            resolved: other.clone(),
            format: None,
        }))
        .unwrap();
        e.finish().unwrap();
        let d = read_descriptor(&child).unwrap();
        assert_eq!(d.parent_file_name_hint(), Some("other.vmdk"));
        assert_eq!(d.parent_cid().unwrap(), Some(cid(&other)));
        drop(base);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&child).unwrap());
        e.set_parent(None).unwrap();
        e.finish().unwrap();
        let d = read_descriptor(&child).unwrap();
        assert_eq!(d.parent_cid().unwrap(), None);
        assert_eq!(d.parent_file_name_hint(), None);
    }

    #[test]
    fn set_parent_refuses_a_name_that_does_not_fit_the_embedded_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let base = make(dir.path(), "base.vmdk", "monolithicSparse", None);
        let child = make(
            dir.path(),
            "child.vmdk",
            "monolithicSparse",
            Some("base.vmdk"),
        );
        // Reserve only the sectors the current text needs, as tight writers do.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&child)
            .unwrap();
        let (text, _) = read_descriptor_text(&child, &f).unwrap();
        let tight = (text.len() as u64).div_ceil(SECTOR);
        f.write_all_at(&tight.to_le_bytes(), 36).unwrap();
        drop(f);
        let long = format!("{}/../base.vmdk", "d".repeat(600));
        let mut e = VmdkEditor::open(&child).unwrap();
        let err = e
            .set_parent(Some(&ParentRef {
                name: long,
                resolved: base,
                format: Some(Format::Vmdk),
            }))
            .unwrap_err();
        assert!(matches!(err, DiskError::Limit { .. }), "{err}");
    }

    #[test]
    fn set_parent_refuses_a_name_longer_than_a_descriptor_line() {
        let dir = tempfile::tempdir().unwrap();
        let base = make(dir.path(), "base.vmdk", "monolithicSparse", None);
        let child = make(
            dir.path(),
            "child.vmdk",
            "monolithicSparse",
            Some("base.vmdk"),
        );
        let mut e = VmdkEditor::open(&child).unwrap();
        let err = e
            .set_parent(Some(&ParentRef {
                name: "x".repeat(9000),
                resolved: base,
                format: None,
            }))
            .unwrap_err();
        assert!(matches!(err, DiskError::InvalidOption { .. }), "{err}");
    }

    #[test]
    fn set_parent_refuses_a_parent_of_another_size() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.vmdk");
        let mut opts = CreateOptions::new(Format::Vmdk, MIB);
        opts.options
            .insert("subformat".into(), "monolithicSparse".into());
        crate::factory::create(&small, &opts)
            .unwrap()
            .finish()
            .unwrap();
        let child = make(dir.path(), "child.vmdk", "monolithicSparse", None);
        let mut e = VmdkEditor::open(&child).unwrap();
        let err = e
            .set_parent(Some(&ParentRef {
                name: "small.vmdk".into(),
                resolved: small,
                format: None,
            }))
            .unwrap_err();
        assert!(err.to_string().contains("parent's size"), "{err}");
    }

    #[test]
    fn empty_drops_every_grain_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let before = std::fs::metadata(&p).unwrap().len();
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.empty().unwrap();
        e.finish().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() < before);
        assert!(read_all(&p).iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_cluster_over_a_parent_hides_the_parent_data() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "base.vmdk", "monolithicSparse", None);
        let child = make(
            dir.path(),
            "child.vmdk",
            "monolithicSparse",
            Some("base.vmdk"),
        );
        assert!(read_all(&child)[..GRAIN].iter().all(|b| *b == 0x11));
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&child).unwrap());
        e.zero_cluster(0).unwrap();
        e.finish().unwrap();
        assert!(read_all(&child)[..GRAIN].iter().all(|b| *b == 0));
    }

    #[test]
    fn two_gb_max_extent_sparse_pieces_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "split.vmdk", "twoGbMaxExtentSparse", None);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.write_cluster(2 * MIB, &vec![0x44u8; GRAIN]).unwrap();
        e.finish().unwrap();
        let data = read_all(&p);
        assert!(data[..GRAIN].iter().all(|b| *b == 0x11));
        assert!(data[2 * MIB as usize..2 * MIB as usize + GRAIN]
            .iter()
            .all(|b| *b == 0x44));
    }

    #[test]
    fn grow_refuses_shrinking_partial_sectors_and_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let mut e = VmdkEditor::open(&p).unwrap();
        assert!(e
            .grow(2 * MIB)
            .unwrap_err()
            .to_string()
            .contains("shrinking"));
        assert!(matches!(
            e.grow(8 * MIB + 1).unwrap_err(),
            DiskError::InvalidOption { .. }
        ));
        make(dir.path(), "base.vmdk", "monolithicSparse", None);
        let child = make(dir.path(), "c.vmdk", "monolithicSparse", Some("base.vmdk"));
        let mut e = VmdkEditor::open(&child).unwrap();
        assert!(e.grow(8 * MIB).unwrap_err().to_string().contains("delta"));
    }

    #[test]
    fn grown_sparse_disk_reads_old_data_and_zeros_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let mut e = VmdkEditor::open(&p).unwrap();
        e.grow(6 * MIB).unwrap();
        Box::new(e).finish().unwrap();
        let data = read_all(&p);
        assert_eq!(data.len() as u64, 6 * MIB);
        assert!(data[..GRAIN].iter().all(|b| *b == 0x11));
        assert!(data[GRAIN..].iter().all(|b| *b == 0));
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.write_cluster(6 * MIB - GRAIN as u64, &vec![0x66u8; GRAIN])
            .unwrap();
        e.finish().unwrap();
        let data = read_all(&p);
        assert!(data[data.len() - GRAIN..].iter().all(|b| *b == 0x66));
    }

    #[test]
    fn stream_optimized_is_refused_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "s.vmdk", "streamOptimized", None);
        let err = VmdkEditor::open(&p).err().expect("streamOptimized opened");
        assert!(err.to_string().contains("streamOptimized"), "{err}");
    }

    #[test]
    fn flat_extents_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "f.vmdk", "monolithicFlat", None);
        let mut e: Box<dyn InPlaceEditor> = Box::new(VmdkEditor::open(&p).unwrap());
        e.write_cluster(MIB, &vec![0x55u8; GRAIN]).unwrap();
        e.finish().unwrap();
        let data = read_all(&p);
        assert!(data[MIB as usize..MIB as usize + GRAIN]
            .iter()
            .all(|b| *b == 0x55));
    }

    #[test]
    fn damaged_primary_grain_directory_reads_through_the_redundant_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), "a.vmdk", "monolithicSparse", None);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let h = read_header(&p, &f).unwrap();
        // The first primary directory entry now names a table far past the end.
        f.write_all_at(&0x7fff_0000u32.to_le_bytes(), h.gd_offset * SECTOR)
            .unwrap();
        drop(f);
        let img = crate::factory::open(&p, &OpenOptions::default()).unwrap();
        let mut buf = vec![0u8; GRAIN];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|b| *b == 0x11));
        let report = img.check(&vmedia_io::NoProgress).unwrap();
        assert_eq!(report.corruptions, 1);
        assert!(
            report.messages[0].contains("redundant"),
            "{:?}",
            report.messages
        );
        // Writing in place is refused until the image is repaired by a conversion.
        assert!(VmdkEditor::open(&p).is_err());
    }
}
