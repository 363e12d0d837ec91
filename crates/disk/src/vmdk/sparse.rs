//! Reading hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse pieces, delta disks
//! and streamOptimized): grain directory, grain tables (loaded lazily, cached with a bound),
//! plain, zeroed and deflate-compressed grains.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use vmedia_io::ReadAt;

use super::header::{
    Marker, SparseHeader, FLAG_REDUNDANT_GT, GD_AT_END, GRAIN_MARKER_HEADER, MARKER_FOOTER, SECTOR,
};
use crate::error::{DiskError, Result};
use crate::shared::{read_exact, source_size};
use vmedia_io::bytes;

const FORMAT: &str = "vmdk";
/// Grain tables kept in memory per extent (2 KiB each: 16 MiB at most); the cache is emptied
/// when full, which is cheap because a sequential reader reuses one table for 32 MiB.
pub const MAX_CACHED_GTS: usize = 8192;
/// Inflated grains kept per extent (64 KiB each: 2 MiB), enough for every worker thread to
/// finish the grain it is reading in pieces.
pub const MAX_CACHED_GRAINS: usize = 32;
/// Largest compressed grain accepted: the grain plus deflate's worst-case growth and the marker.
fn max_compressed(grain_bytes: u64) -> u64 {
    grain_bytes + grain_bytes / 16 + 4096
}

/// Where a grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not in this extent (read the parent, or zeros).
    Unallocated,
    /// Zeroed grain (GTE 1 with the zeroed-GTE flag).
    Zero,
    /// Uncompressed data at this byte offset.
    Data(u64),
    /// A compressed grain whose marker (or data) starts at this byte offset.
    Compressed(u64),
}

/// One open sparse extent.
pub struct SparseExtent {
    pub path: PathBuf,
    source: Arc<dyn ReadAt>,
    pub header: SparseHeader,
    file_size: u64,
    /// Sector offsets of the grain tables (0 = none).
    gd: Vec<u32>,
    gt_cache: RwLock<HashMap<usize, Arc<Vec<u32>>>>,
    /// Recently inflated grains by host offset: readers asking for a grain piece by piece
    /// (4 KiB at a time) must not inflate it again for every piece.
    grain_cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    /// What was wrong but could be read around (a damaged primary grain directory).
    notes: Vec<String>,
}

impl SparseExtent {
    /// Opens a sparse extent whose header has been parsed already.
    pub fn open(
        path: &Path,
        source: Arc<dyn ReadAt>,
        header: SparseHeader,
    ) -> Result<SparseExtent> {
        header
            .validate()
            .map_err(|e| e.into_disk(path, FORMAT, 0))?;
        let file_size = source_size(source.as_ref(), path)?;
        let mut header = header;
        if header.gd_offset == GD_AT_END || (header.has_markers() && header.gd_offset == 0) {
            header = read_footer(path, source.as_ref(), file_size, &header)?;
        }
        let (gd, notes) = load_directory(path, source.as_ref(), &header, file_size)?;
        Ok(SparseExtent {
            path: path.to_path_buf(),
            source,
            header,
            file_size,
            gd,
            gt_cache: RwLock::new(HashMap::new()),
            grain_cache: Mutex::new(VecDeque::with_capacity(MAX_CACHED_GRAINS)),
            notes,
        })
    }

    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_size * SECTOR
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    fn grain_table(&self, gd_index: usize) -> Result<Option<Arc<Vec<u32>>>> {
        let Some(&gt_sector) = self.gd.get(gd_index) else {
            return Ok(None);
        };
        if gt_sector == 0 {
            return Ok(None);
        }
        if let Some(t) = self
            .gt_cache
            .read()
            .ok()
            .and_then(|c| c.get(&gd_index).cloned())
        {
            return Ok(Some(t));
        }
        let n = self.header.num_gtes_per_gt as u64;
        let at = u64::from(gt_sector) * SECTOR;
        if at.checked_add(n * 4).is_none_or(|end| end > self.file_size) {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                self.header.gd_offset * SECTOR + gd_index as u64 * 4,
                "grain directory entry",
                format!(
                    "grain table {gd_index} at {at:#x} lies past the end of the file ({} bytes)",
                    self.file_size
                ),
            ));
        }
        let mut raw = vec![0u8; (n * 4) as usize];
        read_exact(self.source.as_ref(), &self.path, &mut raw, at)?;
        let table: Arc<Vec<u32>> = Arc::new(crate::table::le32_entries(&raw));
        if let Ok(mut cache) = self.gt_cache.write() {
            if cache.len() >= MAX_CACHED_GTS {
                cache.clear();
            }
            cache.insert(gd_index, table.clone());
        }
        Ok(Some(table))
    }

    /// The grain holding extent byte `offset`.
    pub fn lookup(&self, offset: u64) -> Result<Grain> {
        let grain_index = offset / self.grain_bytes();
        let per_gt = u64::from(self.header.num_gtes_per_gt);
        let gd_index = (grain_index / per_gt) as usize;
        let Some(table) = self.grain_table(gd_index)? else {
            return Ok(Grain::Unallocated);
        };
        let entry = table[(grain_index % per_gt) as usize];
        Ok(match entry {
            0 => Grain::Unallocated,
            1 if self.header.flags & super::header::FLAG_ZEROED_GTE != 0 => Grain::Zero,
            sector if self.header.is_compressed() => Grain::Compressed(u64::from(sector) * SECTOR),
            sector => Grain::Data(u64::from(sector) * SECTOR),
        })
    }

    /// Reads `buf.len()` bytes of a data grain starting `in_grain` bytes into it.
    pub fn read_grain(
        &self,
        grain: Grain,
        in_grain: u64,
        buf: &mut [u8],
        grain_lba: u64,
    ) -> Result<()> {
        match grain {
            Grain::Unallocated | Grain::Zero => {
                buf.fill(0);
                Ok(())
            }
            Grain::Data(at) => {
                let start = at + in_grain;
                if start
                    .checked_add(buf.len() as u64)
                    .is_none_or(|end| end > self.file_size)
                {
                    return Err(DiskError::corrupt(
                        &self.path,
                        FORMAT,
                        at,
                        "grain table entry",
                        format!(
                            "grain at {at:#x} lies past the end of the file ({} bytes)",
                            self.file_size
                        ),
                    ));
                }
                read_exact(self.source.as_ref(), &self.path, buf, start)
            }
            Grain::Compressed(at) => {
                let data = self.inflated(at, grain_lba)?;
                let from = in_grain as usize;
                let to = from + buf.len();
                if to > data.len() {
                    // A short last grain: the part past the compressed data reads as zeros.
                    let have = data.len().saturating_sub(from);
                    buf[..have].copy_from_slice(&data[from.min(data.len())..]);
                    buf[have..].fill(0);
                } else {
                    buf.copy_from_slice(&data[from..to]);
                }
                Ok(())
            }
        }
    }

    /// The inflated grain at byte `at`, from the cache or freshly inflated.
    fn inflated(&self, at: u64, grain_lba: u64) -> Result<Arc<Vec<u8>>> {
        if let Ok(cache) = self.grain_cache.lock() {
            if let Some((_, g)) = cache.iter().find(|(o, _)| *o == at) {
                return Ok(g.clone());
            }
        }
        let grain = Arc::new(self.decompress(at, grain_lba)?);
        if let Ok(mut cache) = self.grain_cache.lock() {
            if cache.len() >= MAX_CACHED_GRAINS {
                cache.pop_front();
            }
            cache.push_back((at, grain.clone()));
        }
        Ok(grain)
    }

    /// Inflates the compressed grain at byte `at`.
    pub fn decompress(&self, at: u64, grain_lba: u64) -> Result<Vec<u8>> {
        let grain_bytes = self.grain_bytes();
        let (data_at, len) = if self.header.has_markers() {
            let mut marker = [0u8; GRAIN_MARKER_HEADER];
            if at
                .checked_add(GRAIN_MARKER_HEADER as u64)
                .is_none_or(|e| e > self.file_size)
            {
                return Err(DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    at,
                    "grain marker",
                    "lies past the end of the file",
                ));
            }
            read_exact(self.source.as_ref(), &self.path, &mut marker, at)?;
            let (Some(lba), Some(size)) = (bytes::le64(&marker, 0), bytes::le32(&marker, 8)) else {
                return Err(DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    at,
                    "grain marker",
                    "shorter than its 12-byte header",
                ));
            };
            let size = u64::from(size);
            if lba != grain_lba {
                return Err(DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    at,
                    "grain marker LBA",
                    format!(
                        "marker says sector {lba} but the grain table maps sector {grain_lba} here"
                    ),
                ));
            }
            if size > max_compressed(grain_bytes) {
                return Err(DiskError::Limit {
                    path: self.path.clone(),
                    offset: at + 8,
                    field: "grain marker size",
                    value: size,
                    limit: max_compressed(grain_bytes),
                    why: "a compressed grain cannot be much larger than the grain",
                });
            }
            (at + GRAIN_MARKER_HEADER as u64, size)
        } else {
            (
                at,
                (self.file_size.saturating_sub(at)).min(max_compressed(grain_bytes)),
            )
        };
        if data_at.checked_add(len).is_none_or(|e| e > self.file_size) {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                at,
                "compressed grain",
                format!("{len} bytes at {data_at:#x} run past the end of the file"),
            ));
        }
        let mut compressed = vec![0u8; len as usize];
        read_exact(self.source.as_ref(), &self.path, &mut compressed, data_at)?;
        let mut out = Vec::with_capacity(grain_bytes as usize);
        let mut decoder = flate2::read::ZlibDecoder::new(&compressed[..]).take(grain_bytes);
        decoder.read_to_end(&mut out).map_err(|e| {
            DiskError::corrupt(
                &self.path,
                FORMAT,
                data_at,
                "compressed grain",
                format!("deflate stream is damaged: {e}"),
            )
        })?;
        Ok(out)
    }

    /// Every non-zero grain directory entry with its grain table (for check).
    pub fn all_tables(&self) -> impl Iterator<Item = (usize, Result<Option<Arc<Vec<u32>>>>)> + '_ {
        (0..self.gd.len()).map(|i| (i, self.grain_table(i)))
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn gd_len(&self) -> usize {
        self.gd.len()
    }

    pub fn source(&self) -> &Arc<dyn ReadAt> {
        &self.source
    }

    /// Problems read around while opening (shown by `check`).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// One grain directory copy read from `gd_sector`. A copy outside the file is an error; a
/// copy naming grain tables outside the file (or over the header) comes back with that
/// problem, so the caller can prefer the other copy and otherwise fail lazily per table.
pub(crate) fn read_directory(
    path: &Path,
    source: &dyn ReadAt,
    header: &SparseHeader,
    file_size: u64,
    gd_sector: u64,
    field: &'static str,
    field_offset: u64,
) -> Result<(Vec<u32>, Option<DiskError>)> {
    let entries = header.gd_entries();
    let gd_bytes = entries * 4;
    let gd_at = gd_sector.checked_mul(SECTOR).ok_or_else(|| {
        DiskError::corrupt(
            path,
            FORMAT,
            field_offset,
            field,
            "sector offset overflows 64 bits",
        )
    })?;
    if gd_at
        .checked_add(gd_bytes)
        .is_none_or(|end| end > file_size)
        || gd_at == 0
    {
        return Err(DiskError::corrupt(path, FORMAT, field_offset, field,
            format!("grain directory of {entries} entries at {gd_at:#x} lies outside the file ({file_size} bytes)")));
    }
    let mut raw = vec![0u8; gd_bytes as usize];
    read_exact(source, path, &mut raw, gd_at)?;
    let gd: Vec<u32> = crate::table::le32_entries(&raw);
    let table_bytes = u64::from(header.num_gtes_per_gt) * 4;
    // Compressed streams are checked per table when read (their tables follow markers).
    let mut problem = None;
    if !header.has_markers() {
        for (i, &entry) in gd.iter().enumerate() {
            let at = u64::from(entry) * SECTOR;
            if entry != 0 && (at == 0 || at + table_bytes > file_size) {
                problem = Some(DiskError::corrupt(
                    path,
                    FORMAT,
                    gd_at + i as u64 * 4,
                    "grain directory entry",
                    format!("grain table {i} at {at:#x} lies outside the file ({file_size} bytes)"),
                ));
                break;
            }
        }
    }
    Ok((gd, problem))
}

/// The grain directory, or the redundant copy (with a note) when the primary names grain
/// tables outside the file and the header says a sound redundant copy exists. qemu reads only the primary; VMware falls
/// back on the redundant one.
pub(crate) fn load_directory(
    path: &Path,
    source: &dyn ReadAt,
    header: &SparseHeader,
    file_size: u64,
) -> Result<(Vec<u32>, Vec<String>)> {
    let primary = read_directory(
        path,
        source,
        header,
        file_size,
        header.gd_offset,
        "gdOffset",
        56,
    );
    // A gdOffset outside the file means the header sector itself is damaged, and the
    // rgdOffset next to it cannot be trusted either: that stays an error.
    let (gd, problem) = primary?;
    let Some(problem) = problem else {
        return Ok((gd, Vec::new()));
    };
    if header.flags & FLAG_REDUNDANT_GT != 0 && header.rgd_offset != 0 {
        if let Ok((gd, None)) = read_directory(
            path,
            source,
            header,
            file_size,
            header.rgd_offset,
            "rgdOffset",
            48,
        ) {
            return Ok((gd, vec![format!(
                "primary grain directory is damaged ({problem}); read through the redundant grain directory at sector {}",
                header.rgd_offset
            )]));
        }
    }
    // No sound copy: tables are checked again when read, so the damage surfaces per table.
    Ok((gd, Vec::new()))
}
/// A streamOptimized image whose first header says GD_AT_END: the footer (marker, header copy,
/// end-of-stream marker) occupies the last 1536 bytes.
fn read_footer(
    path: &Path,
    source: &dyn ReadAt,
    file_size: u64,
    first: &SparseHeader,
) -> Result<SparseHeader> {
    if file_size < 1536 {
        return Err(DiskError::corrupt(
            path,
            FORMAT,
            0,
            "footer",
            "the stream is too short to hold its footer",
        ));
    }
    let at = file_size - 1536;
    let mut tail = [0u8; 1536];
    read_exact(source, path, &mut tail, at)?;
    match Marker::parse(&tail[..512]) {
        Some(Marker::Metadata { kind: MARKER_FOOTER, .. }) => {}
        _ => return Err(DiskError::corrupt(path, FORMAT, at, "footer marker", "the header says the grain directory is at the end, but no footer marker precedes the last 1 KiB")),
    }
    let mut bytes = [0u8; 512];
    bytes.copy_from_slice(&tail[512..1024]);
    let footer = SparseHeader::parse(&bytes).map_err(|e| e.into_disk(path, FORMAT, at + 512))?;
    footer
        .validate()
        .map_err(|e| e.into_disk(path, FORMAT, at + 512))?;
    if footer.gd_offset == GD_AT_END
        || footer.capacity != first.capacity
        || footer.grain_size != first.grain_size
    {
        return Err(DiskError::corrupt(
            path,
            FORMAT,
            at + 512,
            "footer",
            "footer header does not match the first header or has no grain directory offset",
        ));
    }
    Ok(footer)
}
