//! ESXi seSparse extents (snapshot deltas of ESXi 6.5+ and VMFS 6): a 512-byte constant header
//! (magic 0xcafebabe, version 2.1), a volatile header, a grain directory of 64-bit entries
//! pointing at grain tables of 4096 64-bit entries, and 4 KiB grains. Read-only, as in qemu;
//! every offset is checked against the file and the header's regions.
//!
//! Grain table entries: top nibble 0 unallocated (read from the parent), 1 unmapped and 2 zero
//! (both read as zeros), 3 allocated with the grain index split over bits 0..48 (high part) and
//! 48..60 (low 12 bits). All fields are little-endian.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmedia_io::bytes::Fields;
use vmedia_io::ReadAt;

use super::header::{MAX_CAPACITY_SECTORS, SECTOR};
use crate::error::{DiskError, Result};
use crate::image::{BlockKind, BlockStatus, HostOffset};

pub const CONST_MAGIC: u64 = 0x0000_0000_cafe_babe;
pub const VOLATILE_MAGIC: u64 = 0x0000_0000_cafe_cafe;
pub const VERSION: u64 = 0x0000_0002_0000_0001;
/// The only grain size ESXi writes (8 sectors, 4 KiB), and the only one qemu reads.
pub const GRAIN_SECTORS: u64 = 8;
/// The only grain table size (64 sectors: 4096 entries, 16 MiB of guest data per table).
pub const GT_SECTORS: u64 = 64;
const GT_ENTRIES: u64 = GT_SECTORS * SECTOR / 8;
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Bytes of a grain directory able to map the largest seSparse disk (64 TiB / 16 MiB per
/// table, 8 bytes each): no header can make us read more.
pub const MAX_GD_BYTES: u64 =
    (MAX_CAPACITY_SECTORS * SECTOR).div_ceil(GT_ENTRIES * GRAIN_BYTES) * 8;
/// Grain tables kept in memory (32 KiB each).
const GT_CACHE_TABLES: usize = 512;

const FORMAT: &str = "vmdk seSparse";

/// What backs one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeGrain {
    Unallocated,
    Zero,
    /// Host byte offset of the grain.
    Data(u64),
}

/// An open seSparse extent file.
pub struct SeSparseExtent {
    pub path: PathBuf,
    source: Arc<dyn ReadAt>,
    file_size: u64,
    capacity_sectors: u64,
    gd: Vec<u64>,
    gt_offset: u64,
    gt_end: u64,
    grains_offset: u64,
    gt_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl std::fmt::Debug for SeSparseExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeSparseExtent({})", self.path.display())
    }
}

fn corrupt(path: &Path, offset: u64, field: &'static str, reason: String) -> DiskError {
    DiskError::corrupt(path, FORMAT, offset, field, reason)
}

fn unsupported(path: &Path, feature: String) -> DiskError {
    DiskError::Unsupported {
        path: path.into(),
        format: "vmdk",
        feature,
    }
}

/// Sector offset and size of a header region, in bytes, checked to lie inside the file.
fn region(
    path: &Path,
    at: usize,
    f: &Fields,
    file_size: u64,
    name: &'static str,
) -> Result<(u64, u64)> {
    let (off, size) = (f.le64(at), f.le64(at + 8));
    let bytes = off.checked_mul(SECTOR).zip(size.checked_mul(SECTOR));
    match bytes {
        Some((o, s)) if o.checked_add(s).is_some_and(|e| e <= file_size) => Ok((o, s)),
        _ => Err(corrupt(
            path,
            at as u64,
            name,
            format!("{size} sectors at sector {off} lie past the end of the file ({file_size:#x})"),
        )),
    }
}

impl SeSparseExtent {
    /// Parses and checks the headers (as strictly as qemu: unknown flags, reserved fields,
    /// padding or a journal to replay are refused) and reads the grain directory.
    pub fn open(path: &Path, source: Arc<dyn ReadAt>) -> Result<SeSparseExtent> {
        let file_size = source.size().map_err(|e| DiskError::io(path, 0, e))?;
        let mut head = [0u8; 512];
        if file_size < 1024 {
            return Err(corrupt(
                path,
                0,
                "header",
                format!("file is only {file_size} bytes"),
            ));
        }
        source
            .read_exact_at(&mut head, 0)
            .map_err(|e| DiskError::io(path, 0, e))?;
        let Some(f) = Fields::new_checked(&head, 512) else {
            return Err(corrupt(path, 0, "header", "short".into()));
        };
        if f.le64(0) != CONST_MAGIC {
            return Err(corrupt(
                path,
                0,
                "magic",
                format!("{:#x} is not 0xcafebabe", f.le64(0)),
            ));
        }
        if f.le64(8) != VERSION {
            return Err(unsupported(
                path,
                format!("seSparse version {:#018x}", f.le64(8)),
            ));
        }
        let capacity_sectors = f.le64(16);
        if capacity_sectors == 0 || capacity_sectors > MAX_CAPACITY_SECTORS {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 16,
                field: "capacity",
                value: capacity_sectors,
                limit: MAX_CAPACITY_SECTORS,
                why: "seSparse disks are limited to 64 TiB",
            });
        }
        if f.le64(24) != GRAIN_SECTORS {
            return Err(unsupported(
                path,
                format!("seSparse grain size {} sectors", f.le64(24)),
            ));
        }
        if f.le64(32) != GT_SECTORS {
            return Err(unsupported(
                path,
                format!("seSparse grain table size {} sectors", f.le64(32)),
            ));
        }
        if f.le64(40) != 0 {
            return Err(unsupported(
                path,
                format!("seSparse flags {:#x}", f.le64(40)),
            ));
        }
        if (48..80).step_by(8).any(|at| f.le64(at) != 0) || head[208..].iter().any(|&b| b != 0) {
            return Err(unsupported(
                path,
                "non-zero reserved fields or padding in the seSparse header".into(),
            ));
        }
        let (vh_offset, _) = region(path, 80, &f, file_size, "volatile header")?;
        let (gd_offset, gd_size) = region(path, 128, &f, file_size, "grain directory")?;
        let (gt_offset, gt_size) = region(path, 144, &f, file_size, "grain tables")?;
        let grains_offset = f
            .le64(192)
            .checked_mul(SECTOR)
            .filter(|&o| o <= file_size)
            .ok_or_else(|| {
                corrupt(
                    path,
                    192,
                    "grains offset",
                    "past the end of the file".into(),
                )
            })?;
        let mut volatile = [0u8; 32];
        source
            .read_exact_at(&mut volatile, vh_offset)
            .map_err(|e| DiskError::io(path, vh_offset, e))?;
        let v = Fields::new_checked(&volatile, 32)
            .ok_or_else(|| corrupt(path, vh_offset, "volatile header", "short".into()))?;
        if v.le64(0) != VOLATILE_MAGIC {
            return Err(corrupt(
                path,
                vh_offset,
                "volatile magic",
                format!("{:#x} is not 0xcafecafe", v.le64(0)),
            ));
        }
        if v.le64(24) != 0 {
            return Err(unsupported(path, "a seSparse journal to replay (the snapshot was not closed cleanly; power the VM off on ESXi first)".into()));
        }
        // Only the directory entries the capacity needs are read.
        let needed = capacity_sectors.div_ceil(GT_ENTRIES * GRAIN_SECTORS) * 8;
        let gd_bytes = needed.min(gd_size).min(MAX_GD_BYTES);
        let mut raw = vec![0u8; gd_bytes as usize];
        source
            .read_exact_at(&mut raw, gd_offset)
            .map_err(|e| DiskError::io(path, gd_offset, e))?;
        let gd = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(SeSparseExtent {
            path: path.to_path_buf(),
            source,
            file_size,
            capacity_sectors,
            gd,
            gt_offset,
            gt_end: gt_offset + gt_size,
            grains_offset,
            gt_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    pub fn grain_bytes(&self) -> u64 {
        GRAIN_BYTES
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    fn grain_table(&self, index: usize) -> Result<Option<Arc<Vec<u64>>>> {
        let Some(&entry) = self.gd.get(index) else {
            return Err(corrupt(
                &self.path,
                0,
                "grain directory",
                format!(
                    "entry {index} is past the directory ({} entries)",
                    self.gd.len()
                ),
            ));
        };
        if entry == 0 {
            return Ok(None);
        }
        if entry & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
            return Err(corrupt(
                &self.path,
                0,
                "grain directory entry",
                format!("entry {index} ({entry:#x}) is neither empty nor an allocated table"),
            ));
        }
        let at = (entry & 0xffff_ffff)
            .checked_mul(GT_SECTORS * SECTOR)
            .and_then(|o| o.checked_add(self.gt_offset))
            .filter(|&o| {
                o.checked_add(GT_SECTORS * SECTOR)
                    .is_some_and(|e| e <= self.gt_end)
            });
        let Some(at) = at else {
            return Err(corrupt(
                &self.path,
                0,
                "grain directory entry",
                format!("entry {index} points past the grain table region"),
            ));
        };
        if let Some(t) = self.gt_cache.lock().map_err(|_| self.poisoned())?.get(&at) {
            return Ok(Some(t.clone()));
        }
        let mut raw = vec![0u8; (GT_SECTORS * SECTOR) as usize];
        self.source
            .read_exact_at(&mut raw, at)
            .map_err(|e| DiskError::io(&self.path, at, e))?;
        let table: Arc<Vec<u64>> = Arc::new(
            raw.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        );
        let mut cache = self.gt_cache.lock().map_err(|_| self.poisoned())?;
        if cache.len() >= GT_CACHE_TABLES {
            cache.clear();
        }
        cache.insert(at, table.clone());
        Ok(Some(table))
    }

    fn poisoned(&self) -> DiskError {
        corrupt(&self.path, 0, "cache", "a reader thread panicked".into())
    }

    /// What holds the grain containing extent byte `rel`.
    pub fn lookup(&self, rel: u64) -> Result<SeGrain> {
        let grain = rel / GRAIN_BYTES;
        let Some(table) = self.grain_table((grain / GT_ENTRIES) as usize)? else {
            return Ok(SeGrain::Unallocated);
        };
        let e = table[(grain % GT_ENTRIES) as usize];
        match e >> 60 {
            0 if e == 0 => Ok(SeGrain::Unallocated),
            1 | 2 => Ok(SeGrain::Zero),
            3 => {
                let index =
                    ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
                index
                    .checked_mul(GRAIN_BYTES)
                    .and_then(|o| o.checked_add(self.grains_offset))
                    .map(SeGrain::Data)
                    .ok_or_else(|| {
                        corrupt(
                            &self.path,
                            0,
                            "grain table entry",
                            format!("grain {grain}: index {index} overflows"),
                        )
                    })
            }
            _ => Err(corrupt(
                &self.path,
                0,
                "grain table entry",
                format!("grain {grain}: {e:#x} has an unknown type"),
            )),
        }
    }

    /// Reads extent bytes `rel..`; unallocated grains come from `parent` (given the extent
    /// offset). Past the end of the file reads zeros, as qemu's file driver does.
    pub fn read(
        &self,
        buf: &mut [u8],
        rel: u64,
        parent: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = rel + done as u64;
            let in_grain = at % GRAIN_BYTES;
            let n = ((GRAIN_BYTES - in_grain) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.lookup(at)? {
                SeGrain::Unallocated => parent(chunk, at)?,
                SeGrain::Zero => chunk.fill(0),
                SeGrain::Data(host) => {
                    let from = host + in_grain;
                    let inside = self.file_size.saturating_sub(from).min(n as u64) as usize;
                    if inside > 0 {
                        self.source
                            .read_exact_at(&mut chunk[..inside], from)
                            .map_err(|e| DiskError::io(&self.path, from, e))?;
                    }
                    chunk[inside..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The run of grains like the one at `rel`, at most `len` bytes.
    pub fn block_status(&self, rel: u64, len: u64) -> Result<BlockStatus> {
        let in_grain = rel % GRAIN_BYTES;
        let first = self.lookup(rel)?;
        let mut run = (GRAIN_BYTES - in_grain).min(len);
        let mut next = rel - in_grain + GRAIN_BYTES;
        while run < len {
            let same = match (first, self.lookup(next)?) {
                (SeGrain::Unallocated, SeGrain::Unallocated) | (SeGrain::Zero, SeGrain::Zero) => {
                    true
                }
                (SeGrain::Data(a), SeGrain::Data(b)) => b == a + (next - (rel - in_grain)),
                _ => false,
            };
            if !same {
                break;
            }
            run = (run + GRAIN_BYTES).min(len);
            next += GRAIN_BYTES;
        }
        let (kind, host_offset) = match first {
            SeGrain::Unallocated => (BlockKind::Unallocated, None),
            SeGrain::Zero => (BlockKind::Zero, None),
            SeGrain::Data(at) => (BlockKind::Data, Some(HostOffset(at + in_grain))),
        };
        Ok(BlockStatus {
            len: run,
            kind,
            host_offset,
        })
    }

    /// Allocated grains (for check) and the grain table errors found on the way.
    pub fn count_allocated(&self) -> (u64, Vec<String>) {
        let mut allocated = 0u64;
        let mut errors = Vec::new();
        for i in 0..self.gd.len() {
            match self.grain_table(i) {
                Ok(None) => {}
                Ok(Some(t)) => {
                    for (j, &e) in t.iter().enumerate() {
                        if e >> 60 == 3 {
                            allocated += 1;
                        } else if e >> 60 > 3 || (e >> 60 == 0 && e != 0) {
                            errors.push(format!(
                                "grain {}: entry {e:#x} has an unknown type",
                                i as u64 * GT_ENTRIES + j as u64
                            ));
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (allocated, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small seSparse file: 32 MiB capacity, grain 0 allocated (0xaa), grain 1 zero,
    /// grain 2 unallocated.
    fn sample() -> Vec<u8> {
        let mut f = vec![0u8; 64 * 1024];
        let put =
            |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut f, 0, CONST_MAGIC);
        put(&mut f, 8, VERSION);
        put(&mut f, 16, 65536);
        put(&mut f, 24, GRAIN_SECTORS);
        put(&mut f, 32, GT_SECTORS);
        put(&mut f, 80, 1); // volatile header at sector 1
        put(&mut f, 88, 1);
        put(&mut f, 128, 2); // grain directory at sector 2, 1 sector
        put(&mut f, 136, 1);
        put(&mut f, 144, 4); // grain tables at sector 4, 64 sectors
        put(&mut f, 152, 64);
        put(&mut f, 192, 68); // grains at sector 68
        put(&mut f, 200, 8);
        put(&mut f, 512, VOLATILE_MAGIC);
        put(&mut f, 1024, 0x1000_0000_0000_0000);
        put(&mut f, 2048, 0x3000_0000_0000_0000);
        put(&mut f, 2056, 0x2000_0000_0000_0000);
        f.resize(68 * 512 + 4096, 0);
        f[68 * 512..].fill(0xaa);
        f
    }

    fn open_bytes(b: Vec<u8>) -> Result<SeSparseExtent> {
        SeSparseExtent::open(Path::new("s.vmdk"), Arc::new(b))
    }

    #[test]
    fn sesparse_grains_map_as_qemu_reads_them() {
        let e = open_bytes(sample()).unwrap();
        assert_eq!(e.lookup(0).unwrap(), SeGrain::Data(68 * 512));
        assert_eq!(e.lookup(4096).unwrap(), SeGrain::Zero);
        assert_eq!(e.lookup(8192).unwrap(), SeGrain::Unallocated);
        assert_eq!(e.lookup(17 << 20).unwrap(), SeGrain::Unallocated);
        let mut buf = vec![1u8; 3 * 4096];
        e.read(&mut buf, 0, &mut |b: &mut [u8], _| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xaa));
        assert!(buf[4096..8192].iter().all(|&b| b == 0));
        assert!(buf[8192..].iter().all(|&b| b == 7));
    }

    #[test]
    fn sesparse_hostile_headers_are_errors() {
        let cases: [(usize, u64, &str); 6] = [
            (0, 1, "magic"),
            (24, 16, "grain size"),
            (16, u64::MAX, "capacity"),
            (128, u64::MAX / 2, "grain directory"),
            (1024, 0x1000_0000_0000_0009, "grain table region"),
            (2048, 0x7000_0000_0000_0000, "unknown type"),
        ];
        for (at, value, expect) in cases {
            let mut b = sample();
            b[at..at + 8].copy_from_slice(&value.to_le_bytes());
            let err = match open_bytes(b) {
                Err(e) => e.to_string(),
                Ok(e) => e
                    .lookup(0)
                    .map(|_| String::new())
                    .unwrap_or_else(|e| e.to_string()),
            };
            assert!(err.contains(expect), "{at}: {err}");
        }
        let mut b = sample();
        b[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
        assert!(open_bytes(b).unwrap_err().to_string().contains("journal"));
        assert!(open_bytes(vec![0u8; 100]).is_err());
    }

    /// The fuzz seeds (fuzz/corpus/vmdk_sesparse): valid-* open, bad-* are refused, hostile-*
    /// open but their bad entry is an error on read; none panics.
    #[test]
    fn sesparse_fuzz_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/vmdk_sesparse");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let opened = open_bytes(std::fs::read(&path).unwrap());
            match &opened {
                Ok(e) if name.starts_with("hostile-") => assert!(e.lookup(0).is_err(), "{name}"),
                Ok(_) => assert!(name.starts_with("valid-"), "{name}"),
                Err(_) => assert!(name.starts_with("bad-"), "{name}"),
            }
            seen += 1;
        }
        assert!(seen >= 5);
    }
}
