//! The capability traits every format implements, and the shared types (format, extents, info).
//!
//! This module knows no format: `factory` dispatches to the formats, the formats depend on
//! this module (and on `reference` for the files an image names).
//!
//! # Contract for a format module (`raw`, `qcow2`, `vmdk`, `vhd`, `vhdx`)
//!
//! Each format module exports these free functions; the factory (`factory::open`,
//! `factory::probe`, `factory::create`, `factory::measure`) dispatches to them and nothing
//! else:
//!
//! ```text
//! pub fn probe(head: &[u8], tail: &[u8]) -> bool
//!     head = the first min(PROBE_HEAD_LEN, file size) bytes, tail = the last
//!     min(PROBE_TAIL_LEN, file size) bytes. Pure, no I/O, never panics on short input.
//! pub fn open(path: &Path, source: Arc<dyn ReadAt>, opts: &OpenOptions)
//!     -> Result<Box<dyn DiskImage>>
//!     `source` is the already opened byte source, `path` its display name. Files named
//!     inside the image (backing file, extents, parent) are opened ONLY through the
//!     `reference` module, which asks the options' `ReferenceResolver` and checks the chain.
//! pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>>
//!     Every file the writer makes goes through `vmedia_io::AtomicFile` (with
//!     `opts.overwrite`) and is renamed into place by `ImageWriter::finish`
//!     (`AtomicFile::commit_with`); dropping the writer without `finish` leaves nothing behind.
//! pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement>
//!     qemu-img measure: bytes needed for a new image of `opts` holding `source`'s data.
//! ```
//!
//! Errors are [`crate::DiskError`] with the file, hex offset and field.
//!
//! # Offsets
//! Guest offsets (bytes in the virtual disk) are plain `u64` parameters named `guest_offset`;
//! host offsets (bytes in an image file) use [`HostOffset`]; sector counts use [`Sectors`] and
//! become bytes only through [`Sectors::to_bytes`] (checked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vmedia_io::{OverwritePolicy, Progress, ReadAt};

use crate::error::{DiskError, Result};

/// A disk image format, named as qemu-img names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    /// VHD (qemu-img calls it "vpc").
    Vhd,
    Vhdx,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
    ];

    /// qemu-img's name: "raw", "qcow2", "vmdk", "vpc", "vhdx".
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
        }
    }

    /// Parses a qemu-img format name; "vhd" is accepted as an alias of "vpc".
    pub fn from_name(name: &str) -> Result<Format> {
        match name.to_ascii_lowercase().as_str() {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vpc" | "vhd" => Ok(Format::Vhd),
            "vhdx" => Ok(Format::Vhdx),
            _ => Err(DiskError::UnknownFormat(name.to_string())),
        }
    }
}

impl Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.qemu_name())
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.qemu_name())
    }
}

impl std::str::FromStr for Format {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Format> {
        Format::from_name(s)
    }
}

/// A count of 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sectors(pub u64);

impl Sectors {
    pub const SIZE: u64 = 512;
    /// Bytes, or None on overflow.
    pub fn to_bytes(self) -> Option<u64> {
        self.0.checked_mul(Self::SIZE)
    }
    /// Whole sectors covering `bytes` (rounded up).
    pub fn covering(bytes: u64) -> Sectors {
        Sectors(bytes.div_ceil(Self::SIZE))
    }
}

/// A byte offset inside an image file (as opposed to a guest offset in the virtual disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct HostOffset(pub u64);

/// What a guest range holds, as far as one layer of a chain knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BlockKind {
    /// Data stored in this layer.
    Data,
    /// Known to read as zeros in this layer (zero cluster, raw hole, VMDK ZERO extent).
    Zero,
    /// Not stored in this layer: reads come from the backing/parent image, or zeros when
    /// there is none.
    Unallocated,
}

/// The answer of [`DiskImage::block_status`]: the first `len` bytes from the asked offset
/// are all `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Bytes (>= 1, <= the asked length) that share this status.
    pub len: u64,
    pub kind: BlockKind,
    /// Where the data starts in this layer's file, when it is stored uncompressed
    /// and contiguously for the whole `len` (qemu-img map's "offset").
    pub host_offset: Option<HostOffset>,
}

/// A reference to another file recorded inside an image (backing file, parent disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackingRef {
    /// The name exactly as stored in the image.
    pub name: String,
    /// The recorded format of the backing image, if the image records one.
    pub format: Option<Format>,
    /// The name resolved against the image's folder (qemu-img's full-backing-filename).
    pub resolved: PathBuf,
}

/// An internal snapshot (qcow2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    #[serde(rename = "vm-state-size")]
    pub vm_state_size: u64,
    #[serde(rename = "date-sec")]
    pub date_sec: u64,
    #[serde(rename = "date-nsec")]
    pub date_nsec: u64,
    #[serde(rename = "vm-clock-sec")]
    pub vm_clock_sec: u64,
    #[serde(rename = "vm-clock-nsec")]
    pub vm_clock_nsec: u64,
    #[serde(rename = "icount", skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
}

impl SnapshotInfo {
    /// The snapshot's date as qemu-img prints it: "YYYY-MM-DD HH:MM:SS" in UTC.
    pub fn date_utc(&self) -> String {
        utc_date(self.date_sec)
    }
}

/// "YYYY-MM-DD HH:MM:SS" in UTC for a Unix time, as qemu-img prints snapshot dates. A time
/// past jiff's range (after the year 9999; qcow2 stores 32-bit seconds, so only hand-made
/// values) is printed as its seconds.
pub fn utc_date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .map(|time| {
            time.to_zoned(jiff::tz::TimeZone::UTC)
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// What `qemu-img info` reports about one image; serializes with qemu-img's JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    pub filename: String,
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    pub format: String,
    #[serde(rename = "actual-size", skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    #[serde(rename = "encrypted", skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(
        rename = "full-backing-filename",
        skip_serializing_if = "Option::is_none"
    )]
    pub full_backing_filename: Option<String>,
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    pub backing_filename_format: Option<String>,
    /// `{"type": "<fmt>", "data": {...}}` exactly as qemu-img prints it.
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<serde_json::Value>,
    #[serde(rename = "dirty-flag")]
    pub dirty_flag: bool,
}

impl ImageInfo {
    /// A minimal info with the fields every format knows; formats fill in the rest.
    pub fn basic(path: &Path, format: Format, virtual_size: u64) -> ImageInfo {
        ImageInfo {
            virtual_size,
            filename: path.display().to_string(),
            cluster_size: None,
            format: format.qemu_name().to_string(),
            actual_size: allocated_size(path),
            encrypted: None,
            snapshots: Vec::new(),
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            format_specific: None,
            dirty_flag: false,
        }
    }
}

/// Bytes the file occupies on disk (st_blocks * 512), qemu-img's "actual-size".
pub fn allocated_size(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .and_then(|m| m.blocks().checked_mul(512))
}

/// The result of a consistency check; serializes like `qemu-img check --output json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    #[serde(rename = "image-end-offset", skip_serializing_if = "Option::is_none")]
    pub image_end_offset: Option<u64>,
    #[serde(rename = "total-clusters", skip_serializing_if = "Option::is_none")]
    pub total_clusters: Option<u64>,
    #[serde(rename = "allocated-clusters", skip_serializing_if = "Option::is_none")]
    pub allocated_clusters: Option<u64>,
    #[serde(
        rename = "fragmented-clusters",
        skip_serializing_if = "Option::is_none"
    )]
    pub fragmented_clusters: Option<u64>,
    #[serde(
        rename = "compressed-clusters",
        skip_serializing_if = "Option::is_none"
    )]
    pub compressed_clusters: Option<u64>,
    #[serde(rename = "check-errors")]
    pub check_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub corruptions: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub leaks: u64,
    #[serde(rename = "corruptions-fixed", skip_serializing_if = "is_zero")]
    pub corruptions_fixed: u64,
    #[serde(rename = "leaks-fixed", skip_serializing_if = "is_zero")]
    pub leaks_fixed: u64,
    pub filename: String,
    pub format: String,
    /// One line per problem, in qemu-img's wording ("ERROR cluster 5 refcount=0 reference=1",
    /// "Leaked cluster 9 refcount=1 reference=0"); not part of the JSON.
    #[serde(skip)]
    pub messages: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What `qemu-img measure` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measurement {
    pub required: u64,
    #[serde(rename = "fully-allocated")]
    pub fully_allocated: u64,
    /// Bytes of bitmaps (qcow2 only; always 0 here since vmedia writes no bitmaps).
    #[serde(skip)]
    pub bitmaps: u64,
}

/// The answer of `vmedia disk measure --output json`: a [`Measurement`] with the bitmaps row
/// qemu-img prints only when both formats carry persistent bitmaps (qcow2 to qcow2).
///
/// Keys are in alphabetical order, as the document has always been printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MeasureReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmaps: Option<u64>,
    #[serde(rename = "fully-allocated")]
    pub fully_allocated: u64,
    pub required: u64,
}

impl MeasureReport {
    /// The report for `measurement`; `with_bitmaps` adds the bitmaps row.
    pub fn new(measurement: &Measurement, with_bitmaps: bool) -> MeasureReport {
        MeasureReport {
            bitmaps: with_bitmaps.then_some(measurement.bitmaps),
            fully_allocated: measurement.fully_allocated,
            required: measurement.required,
        }
    }
}

/// A read-only view of one image (and, through `backing`, its chain).
///
/// `read_at` returns the guest's view: unallocated ranges read through the backing image, or
/// as zeros when there is none. Implementations are `Send + Sync` and take `&self`, so the
/// engine reads from several threads at once.
pub trait DiskImage: Send + Sync {
    fn format(&self) -> Format;
    /// The file this layer was opened from.
    fn path(&self) -> &Path;
    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;
    /// The allocation granularity (qcow2 cluster, VMDK grain, VHD block), if any.
    fn cluster_size(&self) -> Option<u64> {
        None
    }
    /// Fills `buf` with guest bytes from `guest_offset`; the range must lie inside the disk.
    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()>;
    /// What this layer holds at `guest_offset` for up to `len` bytes (len >= 1, inside the disk).
    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus>;
    /// qemu-img info fields for this layer.
    fn info(&self) -> Result<ImageInfo>;
    /// Structural consistency check (read-only).
    fn check(&self, progress: &dyn Progress) -> Result<CheckReport>;
    /// The reference recorded in this layer, opened or not.
    fn backing_ref(&self) -> Option<BackingRef> {
        None
    }
    /// The opened backing image, when the open options followed it.
    fn backing(&self) -> Option<&dyn DiskImage> {
        None
    }
}

/// Which files named inside an image may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferencePolicy {
    /// Only files in the referring image's own folder (default).
    #[default]
    SameFolder,
    /// Any path.
    Any,
    /// Never open references (reads of unallocated ranges in an overlay then fail).
    None,
}

impl ReferencePolicy {
    pub fn from_name(name: &str) -> Option<ReferencePolicy> {
        match name {
            "same-folder" | "samefolder" | "same" => Some(ReferencePolicy::SameFolder),
            "any" => Some(ReferencePolicy::Any),
            "none" => Some(ReferencePolicy::None),
            _ => None,
        }
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Which files named inside an image the default resolver opens (ignored when
    /// `resolver` is set).
    pub references: ReferencePolicy,
    /// Opens the files named inside an image (backing files, extents, parents); `None`: the
    /// same-folder rule of `references` on the local file system
    /// (`reference::FolderResolver`).
    pub resolver: Option<Arc<dyn ReferenceResolver>>,
    /// How a referenced image of any format (a qcow2 backing file) is opened. The factory
    /// (`factory::open_source`) fills it in; callers leave it `None`.
    pub opener: Option<OpenFn>,
    /// Open the backing/parent chain (false: report the reference only, like qemu-img info).
    pub skip_backing: bool,
    /// Force the format of the top image instead of probing.
    pub format: Option<Format>,
    /// Files already open above this one (loop detection); maintained by the `reference`
    /// module.
    pub chain: Vec<PathBuf>,
    /// Read images whose header/footer checksums do not match (hand-edited forensic
    /// samples): the mismatch becomes a warning `check` lists instead of an error. The CLI
    /// sets it from `--ignore-checksums` or `VMEDIA_IGNORE_CHECKSUMS=1`; the library never
    /// reads the environment. Applies to the whole chain.
    pub ignore_checksums: bool,
    /// Secrets (passphrases) for encrypted images in the chain, tried in order on each
    /// encrypted layer; an encrypted image opened without one reports its metadata but refuses
    /// data reads.
    pub secrets: Vec<Secret>,
}

/// A passphrase for an encrypted image (qemu's `secret` object); `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    data: Arc<[u8]>,
}

impl Secret {
    pub fn new(id: impl Into<String>, data: &[u8]) -> Secret {
        Secret {
            id: id.into(),
            data: Arc::from(data),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?}, {} bytes)", self.id, self.data.len())
    }
}

/// The signature of an image opener: a format module's `open`, or the factory's
/// `open_source` (probes, then dispatches).
pub type OpenFn = fn(&Path, Arc<dyn ReadAt>, &OpenOptions) -> Result<Box<dyn DiskImage>>;

/// A file named inside an image, opened by a [`ReferenceResolver`].
#[derive(Clone)]
pub struct OpenedReference {
    /// The name to show and record for the file (for files: the name resolved against the
    /// referring image's folder). Also its key in loop detection.
    pub path: PathBuf,
    pub source: Arc<dyn ReadAt>,
}

impl std::fmt::Debug for OpenedReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedReference")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opens the files images name (backing files, extents, parents), so images can be read from
/// any byte source with their references resolved by the caller.
///
/// Implementations decide what a name means and which names may be opened; they return
/// [`DiskError::Reference`] for a refused name and an `io::ErrorKind::NotFound`
/// [`DiskError::Open`] for a name that does not exist (a parent with several candidate names
/// then tries the next). The default is `reference::FolderResolver`.
pub trait ReferenceResolver: Send + Sync + std::fmt::Debug {
    /// Opens `name`, recorded inside the image shown as `referrer`.
    fn open(&self, referrer: &Path, name: &str) -> Result<OpenedReference>;
}

/// Opens an existing image file for reading and writing in place (commit, rebase, resize).
pub(crate) fn open_for_writing(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.into(),
            action: "open for writing",
            source,
        })
}

/// Refuses a parent format (`-F`, or a rebase target's format) that a child of `format` cannot
/// name: VMDK delta disks and VHD/VHDX differencing disks only have parents of their own format.
pub fn require_parent_format(given: Option<Format>, format: Format) -> Result<()> {
    match given {
        Some(f) if f != format => Err(DiskError::InvalidOption {
            key: "backing_fmt".into(),
            value: f.qemu_name().into(),
            reason: format!(
                "a {} child can only name a {} parent",
                format.qemu_name(),
                format.qemu_name()
            ),
        }),
        _ => Ok(()),
    }
}

/// Parameters for a new image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: Format,
    pub virtual_size: u64,
    /// qemu-img `-o key=value` options, as given (the format validates and rejects unknown keys).
    pub options: BTreeMap<String, String>,
    /// Backing file name to record (as the user wrote it) and its format.
    pub backing: Option<(String, Option<Format>)>,
    /// Compress data clusters (`convert -c`).
    pub compress: bool,
    pub overwrite: OverwritePolicy,
    /// Flush the new files to stable storage before renaming them into place. qemu-img
    /// convert's default cache mode ("unsafe") does not flush; `-t writeback` and the other
    /// modes do. Writers finish through `AtomicFile::commit_with(durability(flush))`.
    pub flush: bool,
    /// The passphrase of a new encrypted image (`-o encrypt.format=luks`).
    pub secret: Option<Secret>,
}

impl CreateOptions {
    pub fn new(format: Format, virtual_size: u64) -> CreateOptions {
        CreateOptions {
            format,
            virtual_size,
            options: BTreeMap::new(),
            backing: None,
            compress: false,
            overwrite: OverwritePolicy::Replace,
            flush: true,
            secret: None,
        }
    }

    /// Rejects -o keys outside `known` with the list of accepted keys.
    pub fn reject_unknown_options(&self, known: &[&str]) -> Result<()> {
        for (key, value) in &self.options {
            if !known.contains(&key.as_str()) {
                return Err(DiskError::InvalidOption {
                    key: key.clone(),
                    value: value.clone(),
                    reason: format!(
                        "not an option of the {} format (known: {})",
                        self.format,
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The durability a writer's `finish` asks of `AtomicFile::commit_with` for
/// [`CreateOptions::flush`]: without the flush the data stays in the page cache (qemu-img
/// convert's default "unsafe" cache mode); the file still appears under its final name only
/// when complete.
pub(crate) fn durability(flush: bool) -> vmedia_io::Durability {
    if flush {
        vmedia_io::Durability::Flush
    } else {
        vmedia_io::Durability::PageCache
    }
}

/// A boolean `-o` option value as qemu-img accepts it: on/true/yes or off/false/no.
pub(crate) fn parse_on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(DiskError::InvalidOption {
            key: key.into(),
            value: value.into(),
            reason: "expected on or off".into(),
        }),
    }
}

/// Compresses clusters for a format; called from several worker threads at once.
pub trait ClusterCompressor: Send + Sync {
    /// Compresses one cluster (`data.len()` = the writer's cluster size, or less for the last
    /// one). None = store it uncompressed (compression would not save space).
    fn compress_cluster(&self, data: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// A new image being written.
///
/// The engine calls the write methods with strictly ascending, non-overlapping guest ranges,
/// aligned to `cluster_size()` except for the tail of the disk, and never for ranges that are
/// all zeros unless the format must store them (`write_zeroes` tells the writer instead).
/// A writer with a `compressor()` receives every data cluster through `write_compressed`
/// (already compressed on worker threads) or, when the compressor returned None, `write_at`.
pub trait ImageWriter: Send {
    /// The granularity the engine feeds: clusters/grains/blocks, a power of two >= 512.
    fn cluster_size(&self) -> u64;
    /// Some(compressor) when the image was created with compression.
    fn compressor(&self) -> Option<Arc<dyn ClusterCompressor>> {
        None
    }
    /// Writes uncompressed guest data.
    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()>;
    /// Records that the range reads as zeros. The default writes nothing, which is right for a
    /// new image without a backing file (unallocated reads as zeros).
    fn write_zeroes(&mut self, _guest_offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Stores one cluster compressed by `compressor()`; `guest_offset` is cluster-aligned.
    fn write_compressed(&mut self, guest_offset: u64, _compressed: &[u8]) -> Result<()> {
        Err(DiskError::InvalidOption {
            key: "compress".into(),
            value: format!("{guest_offset:#x}"),
            reason: "this format does not store compressed clusters".into(),
        })
    }
    /// Writes the metadata, syncs and renames every file into place.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Bytes of the guest range that hold data somewhere in the chain (for measure).
pub fn allocated_bytes(image: &dyn DiskImage) -> Result<u64> {
    let size = image.virtual_size();
    let mut offset = 0u64;
    let mut total = 0u64;
    while offset < size {
        let (len, data) = chain_data_status(image, offset, size - offset)?;
        if data {
            total += len;
        }
        offset += len;
    }
    Ok(total)
}

/// Status through the whole chain: (len, true when some layer stores non-zero data).
pub fn chain_data_status(image: &dyn DiskImage, offset: u64, len: u64) -> Result<(u64, bool)> {
    let status = image.block_status(offset, len)?;
    match status.kind {
        BlockKind::Data => Ok((status.len, true)),
        BlockKind::Zero => Ok((status.len, false)),
        BlockKind::Unallocated => match image.backing() {
            Some(b) if offset < b.virtual_size() => {
                let (l, d) =
                    chain_data_status(b, offset, status.len.min(b.virtual_size() - offset))?;
                Ok((l, d))
            }
            _ => Ok((status.len, false)),
        },
    }
}

/// `factory::open` under its old path, kept for callers outside this crate written before the
/// factory moved out of this module (boot's `media.rs`); new code calls `factory::open`.
pub use crate::factory::open;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip_and_vhd_is_vpc() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.qemu_name()).unwrap(), f);
        }
        assert_eq!(Format::from_name("vhd").unwrap(), Format::Vhd);
        assert!(Format::from_name("qed").is_err());
    }

    #[test]
    fn utc_date_matches_known_instants() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(1_754_957_438), "2025-08-12 00:10:38");
        assert_eq!(utc_date(u64::from(u32::MAX)), "2106-02-07 06:28:15");
        assert_eq!(utc_date(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn sectors_to_bytes_is_checked() {
        assert_eq!(Sectors(2).to_bytes(), Some(1024));
        assert_eq!(Sectors(u64::MAX).to_bytes(), None);
        assert_eq!(Sectors::covering(513), Sectors(2));
    }
}
