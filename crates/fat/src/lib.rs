//! Reproducible FAT12/16/32 image writer, for EFI system partitions.
//!
//! [`FatImage::plan`] reads a folder, checks every name and size, aliases long names (VFAT) and
//! chooses the smallest FAT type and cluster size that fit (or the size the caller asks for);
//! the plan then writes itself to a file ([`FatImage::write_to_file`]) or a buffer
//! ([`FatImage::to_vec`]). Entries are sorted and, with a fixed `date`, every timestamp and the
//! volume serial derive from it, so the same tree always gives the same bytes.
//!
//! Architecture invariant: this crate writes FAT and reads nothing but the source folder; it
//! parses no image and prints nothing.
#![forbid(unsafe_code)]

mod geometry;
mod names;
mod tree;
mod write;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vmedia_io::Progress;

use geometry::{cluster_sizes, root_entries_for, Geometry};
pub use geometry::{FatType, SECTOR_SIZE};
use tree::{Dir, NodeKind};

/// Free space added to an automatically sized image: room for a boot manager to write its
/// variables or a later update, as a fraction of the content (1/8) and at least this much.
const MIN_SLACK_BYTES: u64 = 256 * 1024;
/// Volume labels are 11 bytes in the boot sector and the label entry.
const LABEL_LEN: usize = 11;

/// How to build the image.
#[derive(Debug, Clone, Default)]
pub struct FatOptions {
    /// Volume label (up to 11 characters, stored uppercase); `None` writes "NO NAME".
    pub label: Option<String>,
    /// Volume serial number; by default derived from `date` (or the current time without one).
    pub volume_id: Option<u32>,
    /// Fixed timestamp (Unix seconds, UTC) for every entry; `None` keeps each source's mtime.
    pub date: Option<i64>,
    /// Exact image size in bytes (a multiple of 512); `None` picks the smallest that fits.
    pub size: Option<u64>,
    /// Force a FAT type; `None` picks the one giving the smallest image.
    pub fat_type: Option<FatType>,
}

/// Errors, each naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("reading {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("{path}: {problem}")]
    BadName { path: PathBuf, problem: String },
    #[error("{path} is {size} bytes; FAT files hold at most 4 GiB - 1")]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("{0} is neither a file nor a folder (device, socket or fifo); FAT cannot store it")]
    Unsupported(PathBuf),
    #[error("{path} is nested more than {max} folders deep")]
    TooDeep { path: PathBuf, max: usize },
    #[error("{path} needs more than {max} directory entries, the FAT limit for one folder")]
    TooManyEntries { path: PathBuf, max: usize },
    #[error("{path} changed while the image was being built (expected {expected} bytes)")]
    SourceChanged { path: PathBuf, expected: u64 },
    #[error("volume label {label:?}: {problem}")]
    BadLabel { label: String, problem: String },
    #[error("size {size} bytes: {problem}")]
    BadSize { size: u64, problem: String },
    #[error("the content needs {needed} bytes of clusters but no {} layout of {size} bytes holds it; pass a larger --size or omit it", fat_type.map_or("FAT".to_string(), |t| format!("{t:?}")))]
    DoesNotFit {
        needed: u64,
        size: u64,
        fat_type: Option<FatType>,
    },
    #[error("no {fat_type:?} layout holds this content (FAT12 stops near 32 MiB, FAT16 near 2 GiB, FAT32 starts at 32 MiB); choose another FAT type")]
    TypeCannotHold { fat_type: FatType },
    #[error("writing the image at offset {offset:#x}: {source}")]
    Write { offset: u64, source: io::Error },
}

/// What was (or will be) written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FatSummary {
    pub fat_type: FatType,
    pub size_bytes: u64,
    pub cluster_bytes: u64,
    pub cluster_count: u64,
    pub free_clusters: u64,
    pub files: u64,
    pub directories: u64,
    pub content_bytes: u64,
    pub volume_id: u32,
    pub label: String,
}

/// A file of a flat image planned by [`FatImage::plan_files`]: `size` bytes of `source` from
/// byte `offset` (a whole ISO, or an ISO inside an older disk image).
#[derive(Debug, Clone)]
pub struct RangeFile {
    pub name: String,
    pub source: PathBuf,
    pub offset: u64,
    pub size: u64,
    /// Modification time (Unix seconds) used unless the options fix a date.
    pub mtime: i64,
}

/// Where a root file's data lies inside the image (one contiguous run, as this writer lays
/// out every file); `offset` is 0 for an empty file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileExtent {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// A planned image: the checked tree and its layout, ready to write.
#[derive(Debug)]
pub struct FatImage {
    root: Dir,
    geometry: Geometry,
    label: [u8; LABEL_LEN],
    has_label: bool,
    volume_id: u32,
    date: Option<i64>,
    used_clusters: u64,
}

impl FatImage {
    /// Reads `src_dir` and chooses the layout; nothing is written yet.
    pub fn plan(src_dir: &Path, opts: &FatOptions) -> Result<FatImage, FatError> {
        Self::plan_tree(tree::scan(src_dir)?, opts)
    }

    /// Plans an image whose root holds exactly `files` (no folders), each copied from a byte
    /// range of its source; nothing is written yet.
    pub fn plan_files(files: &[RangeFile], opts: &FatOptions) -> Result<FatImage, FatError> {
        Self::plan_tree(tree::from_ranges(files)?, opts)
    }

    /// The layout for a scanned or listed root folder.
    fn plan_tree(root: Dir, opts: &FatOptions) -> Result<FatImage, FatError> {
        let (label, has_label) = parse_label(opts.label.as_deref())?;
        let geometry = choose_geometry(&root, opts, has_label)?;
        let used_clusters = clusters_needed(&root, &geometry, has_label);
        let volume_id = opts
            .volume_id
            .unwrap_or_else(|| default_volume_id(opts.date));
        Ok(FatImage {
            root,
            geometry,
            label,
            has_label,
            volume_id,
            date: opts.date,
            used_clusters,
        })
    }

    /// Where each file of the root folder will lie inside the image.
    pub fn root_file_extents(&self) -> Vec<FileExtent> {
        write::root_file_extents(self)
    }

    /// Writes the image into `out` starting at byte `base` (a partition of a disk image); the
    /// file is neither truncated nor extended beyond what the image covers.
    pub fn write_into(
        &self,
        out: &File,
        base: u64,
        progress: &dyn Progress,
    ) -> Result<FatSummary, FatError> {
        let mut sink = write::OffsetSink { file: out, base };
        write::write_image(self, &mut sink, progress)?;
        Ok(self.summary())
    }

    /// Image size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.geometry.size_bytes()
    }

    pub fn summary(&self) -> FatSummary {
        let (files, directories, content_bytes) = count(&self.root);
        FatSummary {
            fat_type: self.geometry.fat_type,
            size_bytes: self.geometry.size_bytes(),
            cluster_bytes: self.geometry.cluster_bytes(),
            cluster_count: self.geometry.cluster_count,
            free_clusters: self.geometry.cluster_count - self.used_clusters,
            files,
            directories,
            content_bytes,
            volume_id: self.volume_id,
            label: String::from_utf8_lossy(&self.label).trim_end().to_string(),
        }
    }

    /// Writes the image at the start of `out` (sized to the image; untouched ranges stay holes).
    pub fn write_to_file(
        &self,
        out: &File,
        progress: &dyn Progress,
    ) -> Result<FatSummary, FatError> {
        out.set_len(self.size_bytes())
            .map_err(|source| FatError::Write { offset: 0, source })?;
        let mut sink = write::FileSink { file: out };
        write::write_image(self, &mut sink, progress)?;
        Ok(self.summary())
    }

    /// The image in memory (for small ESPs embedded into an ISO).
    pub fn to_vec(&self, progress: &dyn Progress) -> Result<Vec<u8>, FatError> {
        let size = usize::try_from(self.size_bytes()).map_err(|_| FatError::BadSize {
            size: self.size_bytes(),
            problem: "too large for memory".into(),
        })?;
        let mut sink = write::VecSink {
            data: vec![0u8; size],
        };
        write::write_image(self, &mut sink, progress)?;
        Ok(sink.data)
    }
}

/// Builds the image of `src_dir` in memory.
pub fn build_image(src_dir: &Path, opts: &FatOptions) -> Result<Vec<u8>, FatError> {
    FatImage::plan(src_dir, opts)?.to_vec(&vmedia_io::NoProgress)
}

/// Builds the image of `src_dir` into `out` (opened for writing, e.g. an `AtomicFile`).
pub fn write_image(
    src_dir: &Path,
    opts: &FatOptions,
    out: &File,
    progress: &dyn Progress,
) -> Result<FatSummary, FatError> {
    FatImage::plan(src_dir, opts)?.write_to_file(out, progress)
}

fn parse_label(label: Option<&str>) -> Result<([u8; LABEL_LEN], bool), FatError> {
    let Some(text) = label else {
        return Ok((*b"NO NAME    ", false));
    };
    let bad = |problem: &str| FatError::BadLabel {
        label: text.to_string(),
        problem: problem.to_string(),
    };
    let upper = text.to_ascii_uppercase();
    if upper.is_empty() {
        return Err(bad("empty; omit the label instead"));
    }
    if upper.len() > LABEL_LEN {
        return Err(bad("longer than 11 characters"));
    }
    if let Some(c) = upper.chars().find(|&c| {
        !(c.is_ascii_uppercase() || c.is_ascii_digit() || " !#$%&'()-@^_`{}~".contains(c))
    }) {
        return Err(bad(&format!(
            "character {c:?} is not allowed in a FAT label"
        )));
    }
    let mut out = [b' '; LABEL_LEN];
    out[..upper.len()].copy_from_slice(upper.as_bytes());
    Ok((out, true))
}

/// A serial from the fixed date (so it is reproducible), else from the clock, as mkfs.fat.
fn default_volume_id(date: Option<i64>) -> u32 {
    let seconds = date.unwrap_or_else(|| jiff::Timestamp::now().as_second());
    // Mix the bits so nearby dates give unrelated serials.
    let mixed = (seconds as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as u32
}

fn count(dir: &Dir) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    for child in &dir.children {
        match &child.kind {
            NodeKind::File { size, .. } => {
                totals.0 += 1;
                totals.2 += size;
            }
            NodeKind::Dir(sub) => {
                let (f, d, b) = count(sub);
                totals.0 += f;
                totals.1 += d + 1;
                totals.2 += b;
            }
        }
    }
    totals
}

/// Root directory entries: the label entry plus every child's entries.
fn root_entry_count(root: &Dir, has_label: bool) -> u64 {
    root.entry_count(true) as u64 + u64::from(has_label)
}

/// Clusters the content takes with this geometry (files, subfolders, and the FAT32 root).
fn clusters_needed(root: &Dir, geometry: &Geometry, has_label: bool) -> u64 {
    let cluster = geometry.cluster_bytes();
    let dir_clusters = |entries: u64| (entries * 32).div_ceil(cluster).max(1);
    fn walk(dir: &Dir, cluster: u64, dir_clusters: &dyn Fn(u64) -> u64) -> u64 {
        dir.children
            .iter()
            .map(|child| match &child.kind {
                NodeKind::File { size, .. } => size.div_ceil(cluster),
                NodeKind::Dir(sub) => {
                    dir_clusters(sub.entry_count(false) as u64) + walk(sub, cluster, dir_clusters)
                }
            })
            .sum()
    }
    let root_clusters = if geometry.fat_type == FatType::Fat32 {
        dir_clusters(root_entry_count(root, has_label))
    } else {
        0
    };
    root_clusters + walk(root, cluster, &dir_clusters)
}

fn choose_geometry(root: &Dir, opts: &FatOptions, has_label: bool) -> Result<Geometry, FatError> {
    let root_entries = root_entries_for(root_entry_count(root, has_label));
    let types: Vec<FatType> = match opts.fat_type {
        Some(t) => vec![t],
        None => vec![FatType::Fat12, FatType::Fat16, FatType::Fat32],
    };
    let fits = |g: &Geometry| clusters_needed(root, g, has_label) <= g.cluster_count;
    if let Some(size) = opts.size {
        if size % SECTOR_SIZE != 0 || size == 0 {
            return Err(FatError::BadSize {
                size,
                problem: format!("not a positive multiple of {SECTOR_SIZE}"),
            });
        }
        let total = size / SECTOR_SIZE;
        for &fat_type in &types {
            for spc in cluster_sizes(fat_type) {
                if let Some(g) = Geometry::for_size(fat_type, spc, root_entries, total) {
                    if fits(&g) {
                        return Ok(g);
                    }
                }
            }
        }
        let probe = Geometry {
            fat_type: FatType::Fat16,
            sectors_per_cluster: 1,
            reserved_sectors: 0,
            fat_sectors: 0,
            root_entries,
            total_sectors: 0,
            cluster_count: 0,
        };
        let needed = clusters_needed(root, &probe, has_label) * SECTOR_SIZE;
        return Err(FatError::DoesNotFit {
            needed,
            size,
            fat_type: opts.fat_type,
        });
    }
    let mut best: Option<Geometry> = None;
    for &fat_type in &types {
        for spc in cluster_sizes(fat_type) {
            let probe = Geometry {
                fat_type,
                sectors_per_cluster: spc,
                reserved_sectors: 0,
                fat_sectors: 0,
                root_entries,
                total_sectors: 0,
                cluster_count: 0,
            };
            let used = clusters_needed(root, &probe, has_label);
            let slack_bytes = (used * probe.cluster_bytes() / 8).max(MIN_SLACK_BYTES);
            let slack = slack_bytes.div_ceil(probe.cluster_bytes());
            if let Some(g) = Geometry::smallest(fat_type, spc, root_entries, used, slack) {
                if fits(&g) && best.is_none_or(|b| g.total_sectors < b.total_sectors) {
                    best = Some(g);
                }
            }
        }
    }
    best.ok_or(FatError::TypeCannotHold {
        fat_type: opts.fat_type.unwrap_or(FatType::Fat32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("EFI/BOOT")).unwrap();
        std::fs::write(dir.join("EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 100_000]).unwrap();
        std::fs::write(dir.join("EFI/BOOT/grub.cfg"), b"set timeout=0\n").unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
    }

    #[test]
    fn small_tree_gets_fat12() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let plan = FatImage::plan(src.path(), &FatOptions::default()).unwrap();
        let summary = plan.summary();
        assert_eq!(summary.fat_type, FatType::Fat12);
        assert_eq!(summary.files, 2);
        assert_eq!(summary.directories, 3);
        assert!(summary.free_clusters * summary.cluster_bytes >= MIN_SLACK_BYTES);
    }

    #[test]
    fn fixed_date_gives_identical_bytes() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let opts = FatOptions {
            date: Some(1_700_000_000),
            label: Some("EFI".into()),
            ..Default::default()
        };
        let first = build_image(src.path(), &opts).unwrap();
        let second = build_image(src.path(), &opts).unwrap();
        assert_eq!(first, second);
        assert_eq!(&first[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn forced_fat32_is_honoured() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let opts = FatOptions {
            fat_type: Some(FatType::Fat32),
            ..Default::default()
        };
        let plan = FatImage::plan(src.path(), &opts).unwrap();
        assert_eq!(plan.summary().fat_type, FatType::Fat32);
        assert!(plan.size_bytes() >= 32 * 1024 * 1024);
    }

    #[test]
    fn too_small_size_is_refused() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let opts = FatOptions {
            size: Some(64 * 1024),
            ..Default::default()
        };
        assert!(matches!(
            FatImage::plan(src.path(), &opts),
            Err(FatError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn size_not_a_sector_multiple_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let opts = FatOptions {
            size: Some(1_000_001),
            ..Default::default()
        };
        assert!(matches!(
            FatImage::plan(src.path(), &opts),
            Err(FatError::BadSize { .. })
        ));
    }

    #[test]
    fn label_with_bad_character_is_refused() {
        assert!(parse_label(Some("A/B")).is_err());
        assert!(parse_label(Some("TWELVECHARSX")).is_err());
        assert_eq!(parse_label(Some("efi")).unwrap().0, *b"EFI        ");
    }

    #[test]
    fn names_differing_only_in_case_are_refused() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.txt"), b"1").unwrap();
        std::fs::write(src.path().join("A.TXT"), b"2").unwrap();
        assert!(matches!(
            FatImage::plan(src.path(), &FatOptions::default()),
            Err(FatError::BadName { .. })
        ));
    }

    #[test]
    fn source_that_is_a_file_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            FatImage::plan(&file, &FatOptions::default()),
            Err(FatError::NotAFolder(_))
        ));
    }

    #[test]
    fn range_files_land_where_root_file_extents_says() {
        let src = tempfile::tempdir().unwrap();
        let blob = src.path().join("blob");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&blob, &data).unwrap();
        let files = vec![
            RangeFile {
                name: "second.iso".into(),
                source: blob.clone(),
                offset: 100_000,
                size: 150_000,
                mtime: 1_700_000_000,
            },
            RangeFile {
                name: "first.iso".into(),
                source: blob.clone(),
                offset: 7,
                size: 5000,
                mtime: 1_700_000_000,
            },
        ];
        let opts = FatOptions {
            fat_type: Some(FatType::Fat32),
            date: Some(1_700_000_000),
            ..Default::default()
        };
        let plan = FatImage::plan_files(&files, &opts).unwrap();
        let image = plan.to_vec(&vmedia_io::NoProgress).unwrap();
        let extents = plan.root_file_extents();
        assert_eq!(extents.len(), 2);
        for extent in &extents {
            let file = files.iter().find(|f| f.name == extent.name).unwrap();
            assert_eq!(extent.size, file.size);
            let at = extent.offset as usize;
            let from = file.offset as usize;
            assert_eq!(
                &image[at..at + file.size as usize],
                &data[from..from + file.size as usize]
            );
        }
    }

    #[test]
    fn range_past_the_source_end_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let blob = src.path().join("blob");
        std::fs::write(&blob, [1u8; 100]).unwrap();
        let files = [RangeFile {
            name: "a.iso".into(),
            source: blob,
            offset: 50,
            size: 51,
            mtime: 0,
        }];
        let err = FatImage::plan_files(&files, &FatOptions::default()).unwrap_err();
        assert!(matches!(err, FatError::SourceChanged { .. }), "{err}");
    }
}
