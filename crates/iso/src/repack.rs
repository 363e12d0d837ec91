//! Repack: add and remove files in an existing image and write a new one that boots like the
//! original, as `xorriso -indev IN -outdev OUT -boot_image any replay` does.
//!
//! File data is never extracted: every kept file becomes a `RangeFile` (a byte range of the
//! input image) that the writer copies straight across. Only directories and symbolic links,
//! which carry no data, are recreated in a temporary skeleton folder so the writer sees their
//! modes and times. The boot catalog and the system area are read back with the reader and
//! described again in the `IsoSpec`, so the writer re-patches boot info tables, GRUB2 boot
//! info, the isohybrid/GRUB MBR and the GPT for the new addresses.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use vmedia_io::{Durability, OverwritePolicy, Progress, ReadAt};

use crate::read::{
    BootCatalog, BootEntryInfo, EntryKind, Extent, IsoImage, PartitionTable, ReadError, Timestamp,
};
use crate::spec::{
    absolute_iso_path, AppendedPartition, BlobSource, BootEntry, BootImage, EfiBootPart, Emulation,
    GraftPoint, IntegritySpec, IsoSpec, LoadSize, PartType, Platform, RangeFile, RockRidgeMode,
    SystemArea, SystemAreaKind,
};
use crate::write::{write_image, WriteError, WriteReport};

/// Largest appended partition or out-of-tree boot image copied through memory; ESPs are
/// tens of MiB, and anything far larger is not a boot partition.
pub const MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;
/// Bytes of MBR boot code (before the disk signature and partition table).
const MBR_CODE_BYTES: usize = 440;
/// isohybrid MBRs store the 512-byte LBA of the BIOS boot image here (32-bit LE).
const ISOHYBRID_LBA_OFFSET: usize = 432;
/// GRUB's boot_hybrid.img gets the 512-byte LBA of the boot image + 4 here (64-bit LE).
const GRUB2_MBR_LBA_OFFSET: usize = 0x1B0;
/// Sectors per 2048-byte block.
const SECTORS_PER_BLOCK: u64 = 4;
/// Skeleton folder names tried before giving up (other runs may hold the same name).
const MAX_SKELETON_ATTEMPTS: u32 = 1000;

/// One file or folder to add (or replace): where in the image, from which host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    /// The ISO path as the user wrote it (`boot/grub.cfg`, `/preseed/`); a trailing '/' keeps
    /// the host file's own name inside that folder.
    pub iso_path: String,
    /// The host file or folder.
    pub host_path: PathBuf,
}

/// What to change and how to stamp the new image.
#[derive(Debug, Clone)]
pub struct RepackOptions {
    /// The input image's path: kept files are copied from it by byte range. It is never
    /// modified.
    pub input: PathBuf,
    /// Files and folders to add or replace, in order.
    pub additions: Vec<Addition>,
    /// ISO paths to remove, with everything below them.
    pub removals: Vec<String>,
    /// A new volume label; `None` keeps the original.
    pub volume_id: Option<String>,
    /// Reproducible build time (Unix seconds) for new entries; `None` = now.
    pub date: Option<i64>,
    /// The embedded checksums and signature of the new image.
    pub integrity: IntegritySpec,
    /// Whether the output is flushed to stable storage before it is renamed into place.
    pub durability: Durability,
}

/// A repack failure, naming the path, partition or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RepackError {
    /// The output names the input file.
    #[error("the output {} is the input; write to another name", path.display())]
    OutputIsInput { path: PathBuf },
    /// A host file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No free name for the skeleton folder.
    #[error("cannot find a free name for the skeleton folder in {}", folder.display())]
    NoSkeletonName { folder: PathBuf },
    /// An addition's host file has no file name to keep.
    #[error("--add {}: no file name", path.display())]
    NoFileName { path: PathBuf },
    /// The input image could not be read.
    #[error("{context}")]
    Read {
        context: String,
        #[source]
        source: ReadError,
    },
    /// A removal names the whole tree.
    #[error("--remove /: removing the whole tree leaves nothing to repack")]
    RemoveRoot,
    /// The input holds something repack cannot carry over, or a removal breaks the boot setup.
    #[error("{0}")]
    Unsupported(String),
    /// A boot image or appended partition is too large to copy through memory.
    #[error("{what}: {bytes} bytes is over the {MAX_BLOB_BYTES}-byte limit for boot images and appended partitions")]
    BlobTooLarge { what: String, bytes: u64 },
    /// Writing the new image failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RepackError + 'a {
    move |source| RepackError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn read_error(context: impl Into<String>) -> impl FnOnce(ReadError) -> RepackError {
    let context = context.into();
    move |source| RepackError::Read { context, source }
}

/// A repacked image described as an `IsoSpec`, with the skeleton folder its sources name.
/// Write `spec` while the plan is alive; dropping the plan removes the skeleton.
#[derive(Debug)]
pub struct RepackPlan {
    pub spec: IsoSpec,
    pub skeleton: Skeleton,
}

/// The temporary folder of directories and links, removed when dropped.
#[derive(Debug)]
pub struct Skeleton {
    path: PathBuf,
}

impl Skeleton {
    /// Makes a fresh hidden folder inside `beside`.
    pub fn create(beside: &Path) -> Result<Skeleton, RepackError> {
        for attempt in 0..MAX_SKELETON_ATTEMPTS {
            let path = beside.join(format!(".vmedia-repack-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Skeleton { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("cannot create the skeleton folder", &path)(e)),
            }
        }
        Err(RepackError::NoSkeletonName {
            folder: beside.to_path_buf(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Skeleton {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Repacks `image` (opened from `options.input`) into `out`: plans the new tree beside the
/// output, then writes it. Progress is the writer's.
pub fn repack(
    image: &IsoImage,
    options: &RepackOptions,
    out: &Path,
    overwrite: OverwritePolicy,
    progress: &dyn Progress,
) -> Result<WriteReport, RepackError> {
    let span =
        tracing::info_span!("iso.repack", input = %options.input.display(), out = %out.display());
    let _entered = span.enter();
    if same_file(&options.input, out) {
        return Err(RepackError::OutputIsInput {
            path: out.to_path_buf(),
        });
    }
    let beside = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let plan = plan(image, options, beside)?;
    let report = write_image(&plan.spec, out, overwrite, progress)?;
    drop(plan);
    Ok(report)
}

/// Describes the repacked image: the kept tree as byte ranges of the input, the additions,
/// and the original boot setup replayed. The skeleton folder is made inside `skeleton_in`.
pub fn plan(
    image: &IsoImage,
    options: &RepackOptions,
    skeleton_in: &Path,
) -> Result<RepackPlan, RepackError> {
    let skeleton = Skeleton::create(skeleton_in)?;
    let mut spec = build_spec(options, image, &**image.source(), &skeleton.path)?;
    spec.date = options.date;
    spec.integrity = options.integrity.clone();
    spec.durability = options.durability;
    Ok(RepackPlan { spec, skeleton })
}

/// One addition resolved against the host: its graft, and the ISO paths it provides (files
/// and folders), whose old entries are dropped.
struct ResolvedAddition {
    graft: GraftPoint,
    provides: Vec<String>,
}

fn resolve_addition(addition: &Addition) -> Result<ResolvedAddition, RepackError> {
    let host_path = addition.host_path.clone();
    let meta = std::fs::metadata(&host_path).map_err(io_error("--add", &host_path))?;
    let mut iso_path = absolute_iso_path(&addition.iso_path);
    if iso_path.ends_with('/') && !meta.is_dir() {
        let name = host_path
            .file_name()
            .ok_or_else(|| RepackError::NoFileName {
                path: host_path.clone(),
            })?;
        iso_path.push_str(&name.to_string_lossy());
    }
    let iso_path = iso_path.trim_end_matches('/').to_string();
    let iso_path = if iso_path.is_empty() {
        "/".to_string()
    } else {
        iso_path
    };
    let mut provides = Vec::new();
    if meta.is_dir() {
        list_host_tree(&host_path, &iso_path, &mut provides)?;
    } else {
        provides.push(iso_path.clone());
    }
    Ok(ResolvedAddition {
        graft: GraftPoint {
            iso_path,
            host_path,
        },
        provides,
    })
}

/// ISO paths a host folder grafted at `iso_dir` will create.
fn list_host_tree(dir: &Path, iso_dir: &str, out: &mut Vec<String>) -> Result<(), RepackError> {
    for item in std::fs::read_dir(dir).map_err(io_error("cannot read", dir))? {
        let item = item.map_err(io_error("cannot read", dir))?;
        let name = item.file_name();
        let path = join_iso(iso_dir, &name.to_string_lossy());
        out.push(path.clone());
        if item.file_type().is_ok_and(|t| t.is_dir()) {
            list_host_tree(&item.path(), &path, out)?;
        }
    }
    Ok(())
}

fn join_iso(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` is `prefix` or below it.
fn is_at_or_below(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn build_spec(
    options: &RepackOptions,
    image: &IsoImage,
    source: &dyn ReadAt,
    skeleton: &Path,
) -> Result<IsoSpec, RepackError> {
    let input = &options.input;
    let mut spec = IsoSpec::default();
    let volume = image.volume();
    let fields = &volume.primary;
    let keep = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    spec.volume.volume_id = options
        .volume_id
        .clone()
        .or_else(|| keep(&fields.volume_id));
    spec.volume.volume_set_id = keep(&fields.volume_set_id);
    spec.volume.publisher = keep(&fields.publisher_id);
    spec.volume.preparer = keep(&fields.data_preparer_id);
    spec.volume.application = keep(&fields.application_id);
    spec.volume.system_id = keep(&fields.system_id);
    // GRUB finds its own disc by the volume modification date ("UUID"): keep it exactly.
    spec.volume.modification_date = fields.modification.as_ref().map(volume_date_digits);
    spec.naming.iso_level = 3;
    spec.naming.no_deep_relocation = true;
    spec.naming.joliet = volume.joliet.is_some();
    spec.naming.joliet_long = volume.joliet.is_some();
    spec.naming.rock_ridge = volume.rock_ridge.as_ref().map(|_| RockRidgeMode::Faithful);

    let mut removed: Vec<String> = Vec::new();
    for path in &options.removals {
        let path = absolute_iso_path(path).trim_end_matches('/').to_string();
        if path.is_empty() {
            return Err(RepackError::RemoveRoot);
        }
        image.lookup(&path).map_err(read_error(format!(
            "--remove {path}: not in {}",
            input.display()
        )))?;
        removed.push(path);
    }
    let additions: Vec<ResolvedAddition> = options
        .additions
        .iter()
        .map(resolve_addition)
        .collect::<Result<_, _>>()?;
    let replaced: HashSet<String> = additions
        .iter()
        .flat_map(|a| a.provides.iter().cloned())
        .collect();

    let catalog = image
        .boot_catalog()
        .map_err(read_error("cannot read the boot catalog"))?;
    let catalog_path = catalog.as_ref().and_then(|c| c.catalog_path.clone());

    // The tree: directories and links into the skeleton, file data as byte ranges.
    let input_path = std::fs::canonicalize(input).map_err(io_error("cannot resolve", input))?;
    let mut kept_files: BTreeSet<String> = BTreeSet::new();
    let mut dir_times: Vec<(PathBuf, Option<i64>, u32)> = Vec::new();
    for item in image.walk() {
        let item = item.map_err(read_error(format!("cannot walk {}", input.display())))?;
        let path = item.path.clone();
        if removed.iter().any(|r| is_at_or_below(&path, r)) {
            continue;
        }
        if catalog_path.as_deref() == Some(path.as_str()) {
            continue; // the writer makes a new catalog at the same path
        }
        let entry = &item.entry;
        let mtime = entry.mtime.map(|t| t.unix_seconds);
        let host = skeleton.join(path.trim_start_matches('/'));
        match &entry.kind {
            EntryKind::Directory => {
                std::fs::create_dir_all(&host).map_err(io_error("cannot create", &host))?;
                dir_times.push((host, mtime, entry.permissions()));
            }
            _ if replaced.contains(&path) => {}
            EntryKind::File => {
                if entry.zisofs.is_some() {
                    return Err(RepackError::Unsupported(format!(
                        "{path}: zisofs-compressed files cannot be repacked (vmedia writes no zisofs)"
                    )));
                }
                let offset = contiguous_offset(&path, &entry.extents, entry.size)?;
                spec.range_files.push(RangeFile {
                    iso_path: path.clone(),
                    host_path: input_path.clone(),
                    offset,
                    length: entry.size,
                    mode: entry.permissions(),
                    mtime,
                });
                kept_files.insert(path);
            }
            EntryKind::Symlink { target } => {
                if let Some(parent) = host.parent() {
                    std::fs::create_dir_all(parent).map_err(io_error("cannot create", parent))?;
                }
                std::os::unix::fs::symlink(target, &host).map_err(|source| RepackError::Io {
                    action: "cannot recreate the link",
                    path: PathBuf::from(format!("{path} -> {target}")),
                    source,
                })?;
                set_times(&host, mtime, AtFlags::SYMLINK_NOFOLLOW);
            }
            other => {
                return Err(RepackError::Unsupported(format!(
                    "{path}: {other:?} entries (devices, fifos, sockets) cannot be repacked"
                )));
            }
        }
    }
    // Deepest first, so setting a child's time does not disturb its parent's.
    dir_times.sort_by_key(|d| std::cmp::Reverse(d.0.as_os_str().len()));
    for (dir, mtime, mode) in &dir_times {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
            .map_err(io_error("cannot set the mode of", dir))?;
        set_times(dir, *mtime, AtFlags::empty());
    }
    spec.sources.push(GraftPoint {
        iso_path: "/".into(),
        host_path: skeleton.to_path_buf(),
    });
    spec.sources.extend(additions.into_iter().map(|a| a.graft));

    if let Some(catalog) = &catalog {
        replay_boot(
            &mut spec,
            image,
            source,
            catalog,
            &removed,
            &kept_files,
            &replaced,
        )?;
    }
    replay_system_area(&mut spec, image, source, catalog.as_ref())?;
    Ok(spec)
}

/// The byte offset of a file whose extents follow one another on disc (what every writer
/// does, multi-extent files included).
fn contiguous_offset(path: &str, extents: &[Extent], size: u64) -> Result<u64, RepackError> {
    let Some(first) = extents.first() else {
        return Ok(0);
    };
    let mut next = first.byte_offset();
    for extent in extents {
        if extent.length == 0 {
            continue;
        }
        if extent.byte_offset() != next {
            return Err(RepackError::Unsupported(format!(
                "{path}: its extents are not contiguous; repack cannot copy it as one range"
            )));
        }
        next = next
            .checked_add(extent.length)
            .ok_or_else(|| RepackError::Unsupported(format!("{path}: extent lengths overflow")))?;
    }
    if next - first.byte_offset() != size {
        return Err(RepackError::Unsupported(format!(
            "{path}: extents hold {} bytes but the file is {size}",
            next - first.byte_offset()
        )));
    }
    Ok(first.byte_offset())
}

/// Best effort: a time that cannot be set only changes a timestamp in the output.
fn set_times(path: &Path, mtime: Option<i64>, flags: AtFlags) {
    let Some(seconds) = mtime else { return };
    let time = Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    let _ = rustix::fs::utimensat(CWD, path, &times, flags);
}

/// `YYYYMMDDhhmmsscc` of a volume timestamp in its own offset, as the descriptor holds it.
fn volume_date_digits(t: &Timestamp) -> String {
    t.to_volume_digits()
}

fn read_blob(
    source: &dyn ReadAt,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, RepackError> {
    if len > MAX_BLOB_BYTES {
        return Err(RepackError::BlobTooLarge {
            what: what.to_string(),
            bytes: len,
        });
    }
    // Below MAX_BLOB_BYTES, so it fits in memory on every platform vmedia runs on.
    let mut buf = vec![0u8; len as usize];
    source
        .read_exact_at(&mut buf, offset)
        .map_err(|source| RepackError::Read {
            context: format!("cannot read {what} at offset {offset:#x}"),
            source: ReadError::Io {
                what: "boot data",
                offset,
                source,
            },
        })?;
    Ok(buf)
}

fn replay_boot(
    spec: &mut IsoSpec,
    image: &IsoImage,
    source: &dyn ReadAt,
    catalog: &BootCatalog,
    removed: &[String],
    kept_files: &BTreeSet<String>,
    replaced: &HashSet<String>,
) -> Result<(), RepackError> {
    spec.boot.catalog_path = catalog.catalog_path.clone();
    let partitions = image
        .partitions()
        .map_err(read_error("cannot read the partition tables"))?;
    for info in &catalog.entries {
        let boot_image = match (&info.image_path, info.appended_partition) {
            (Some(path), _) => {
                if removed.iter().any(|r| is_at_or_below(path, r)) {
                    return Err(RepackError::Unsupported(format!(
                        "--remove would delete the boot image {path}; replace it with --add instead"
                    )));
                }
                if !kept_files.contains(path) && !replaced.contains(path) {
                    return Err(RepackError::Unsupported(format!(
                        "boot image {path} is not a regular file of the tree"
                    )));
                }
                BootImage::IsoPath(path.clone())
            }
            (None, Some(number)) => {
                let number = u8::try_from(number)
                    .ok()
                    .filter(|n| (1..=4).contains(n))
                    .ok_or_else(|| {
                        RepackError::Unsupported(format!(
                            "boot image in partition {number}: only partitions 1-4 can be replayed"
                        ))
                    })?;
                carry_partition(spec, source, &partitions, number)?;
                BootImage::AppendedPartition(number)
            }
            (None, None) => BootImage::Bytes(read_blob(
                source,
                u64::from(info.lba) * 2048,
                info.image_size,
                "boot image",
            )?),
        };
        spec.boot.entries.push(boot_entry(info, boot_image)?);
    }
    Ok(())
}

fn boot_entry(info: &BootEntryInfo, image: BootImage) -> Result<BootEntry, RepackError> {
    use crate::read::Emulation as ReadEmulation;
    let mut entry = BootEntry::new(Platform::from_id(info.platform.id()), image);
    entry.emulation = match info.emulation {
        ReadEmulation::NoEmulation => Emulation::NoEmulation,
        ReadEmulation::Floppy1200K | ReadEmulation::Floppy1440K | ReadEmulation::Floppy2880K => {
            Emulation::Floppy
        }
        ReadEmulation::HardDisk => Emulation::HardDisk,
        ReadEmulation::Unknown(b) => {
            return Err(RepackError::Unsupported(format!(
                "boot entry {}: unknown emulation type {b:#x}",
                info.index
            )))
        }
    };
    entry.load_size = if info.sector_count == 0 {
        LoadSize::Default
    } else {
        LoadSize::Sectors(info.sector_count)
    };
    entry.boot_info_table = info.boot_info_table;
    entry.grub2_boot_info = info.grub2_boot_info;
    entry.load_segment = info.load_segment;
    entry.id_string = Some(info.section_id.clone()).filter(|s| !s.trim().is_empty());
    entry.bootable = info.bootable;
    Ok(entry)
}

/// Copies partition `number` (MBR slot or GPT entry) of the input as an appended partition.
fn carry_partition(
    spec: &mut IsoSpec,
    source: &dyn ReadAt,
    partitions: &PartitionTable,
    number: u8,
) -> Result<(), RepackError> {
    if spec.hybrid.appended.iter().any(|p| p.number == number) {
        return Ok(());
    }
    let gpt_entry = partitions
        .gpt
        .as_ref()
        .and_then(|g| g.partitions.iter().find(|p| p.number == u32::from(number)));
    let (part_type, start, sectors) = if let Some(p) = gpt_entry {
        let guid = crate::spec::parse_guid(&p.type_guid).ok_or_else(|| {
            RepackError::Unsupported(format!(
                "partition {number}: type GUID {} unreadable",
                p.type_guid
            ))
        })?;
        spec.hybrid.appended_as_gpt = true;
        (
            PartType::Gpt(guid),
            p.first_sector,
            p.last_sector
                .saturating_sub(p.first_sector)
                .saturating_add(1),
        )
    } else if let Some(p) = partitions.mbr.iter().find(|p| p.number == number) {
        (
            PartType::Mbr(p.partition_type),
            u64::from(p.start_sector),
            u64::from(p.sector_count),
        )
    } else {
        return Err(RepackError::Unsupported(format!(
            "the boot catalog names partition {number}, which the partition tables lack"
        )));
    };
    let what = format!("partition {number}");
    let (Some(offset), Some(bytes)) = (start.checked_mul(512), sectors.checked_mul(512)) else {
        return Err(RepackError::BlobTooLarge {
            what,
            bytes: u64::MAX,
        });
    };
    let data = read_blob(source, offset, bytes, &what)?;
    spec.hybrid.appended.push(AppendedPartition {
        number,
        part_type,
        source: BlobSource::Bytes(data),
    });
    Ok(())
}

/// The kind of MBR boot code in the system area, from where it points at the BIOS image.
fn system_area_kind(area: &[u8], bios: Option<&BootEntryInfo>) -> SystemAreaKind {
    use vmedia_io::bytes::{le32, le64};
    let Some(bios_lba_512) = bios.map(|b| u64::from(b.lba) * SECTORS_PER_BLOCK) else {
        return SystemAreaKind::Generic;
    };
    if le64(area, GRUB2_MBR_LBA_OFFSET) == Some(bios_lba_512 + 4) {
        SystemAreaKind::Grub2Mbr
    } else if le32(area, ISOHYBRID_LBA_OFFSET).map(u64::from) == Some(bios_lba_512) {
        SystemAreaKind::IsohybridMbr
    } else {
        SystemAreaKind::Generic
    }
}

/// Describes the original system area again: MBR boot code and its kind, the partitions.
fn replay_system_area(
    spec: &mut IsoSpec,
    image: &IsoImage,
    source: &dyn ReadAt,
    catalog: Option<&BootCatalog>,
) -> Result<(), RepackError> {
    let area = image
        .system_area()
        .map_err(read_error("cannot read the system area"))?;
    let partitions = image
        .partitions()
        .map_err(read_error("cannot read the partition tables"))?;
    let bios = catalog.and_then(|c| c.entries.iter().find(|e| e.platform.id() == 0));
    let efi = catalog.and_then(|c| c.entries.iter().find(|e| e.platform.id() == 0xEF));
    let has_code = area[..MBR_CODE_BYTES].iter().any(|b| *b != 0);
    if has_code {
        let kind = system_area_kind(&area[..], bios);
        let source = if kind == SystemAreaKind::Generic {
            // Only the boot code: the old partition table describes the old layout.
            let mut code = area[..MBR_CODE_BYTES].to_vec();
            code.resize(512, 0);
            BlobSource::Bytes(code)
        } else {
            BlobSource::Bytes(area[..512].to_vec())
        };
        spec.hybrid.system_area = Some(SystemArea { source, kind });
    }

    let volume_sectors = image.volume().volume_bytes / 512;
    // grub-mkrescue's --protective-msdos-label: partition 1 from sector 1 over the image.
    if partitions
        .mbr
        .iter()
        .any(|p| p.number == 1 && p.start_sector == 1)
    {
        spec.hybrid.protective_msdos_label = true;
    }
    if let Some(first) = partitions
        .mbr
        .iter()
        .find(|p| p.number == 1 && p.partition_type != 0xEE)
    {
        if first.start_sector == 64 {
            spec.hybrid.partition_offset = 16;
        }
        if first.bootable
            && spec
                .hybrid
                .system_area
                .as_ref()
                .is_some_and(|s| s.kind != SystemAreaKind::IsohybridMbr)
        {
            spec.hybrid.mbr_force_bootable = true;
        }
        if (first.start_sector == 0 || first.start_sector == 64)
            && ![0x00, 0x17].contains(&first.partition_type)
        {
            spec.hybrid.iso_mbr_part_type = Some(PartType::Mbr(first.partition_type));
        }
    }
    if let Some(gpt) = &partitions.gpt {
        for p in &gpt.partitions {
            let esp = p
                .type_guid
                .eq_ignore_ascii_case(crate::spec::GPT_TYPE_EFI_SYSTEM);
            let inside = p.last_sector < volume_sectors;
            if inside
                && esp
                && efi.is_some_and(|e| u64::from(e.lba) * SECTORS_PER_BLOCK == p.first_sector)
            {
                spec.hybrid.efi_boot_part = Some(EfiBootPart::BootImage);
            }
            if p.first_sector == 0
                && p.type_guid
                    .eq_ignore_ascii_case(crate::spec::GPT_TYPE_BASIC_DATA)
            {
                spec.hybrid.gpt_basdat = true;
            }
            if !inside && p.first_sector >= volume_sectors {
                if let Ok(number) = u8::try_from(p.number) {
                    if (1..=4).contains(&number) {
                        carry_partition(spec, source, &partitions, number)?;
                    }
                }
            }
        }
    } else {
        for p in &partitions.mbr {
            if p.partition_type != 0xEE && u64::from(p.start_sector) >= volume_sectors {
                carry_partition(spec, source, &partitions, p.number)?;
            }
        }
        // isohybrid-gpt-basdat without a GPT cannot be; an MBR ESP entry that points into
        // the tree is what -isohybrid-gpt-basdat also writes in the MBR.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_date_digits_use_the_recorded_offset() {
        let t = Timestamp {
            unix_seconds: 1_700_000_000,
            nanoseconds: 120_000_000,
            utc_offset_minutes: 60,
        };
        assert_eq!(volume_date_digits(&t), "2023111423132012");
    }

    #[test]
    fn prefix_matching_respects_components() {
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
    }

    #[test]
    fn contiguous_extents_give_one_range() {
        let e = [
            Extent {
                lba: 10,
                length: 4096,
            },
            Extent {
                lba: 12,
                length: 100,
            },
        ];
        assert_eq!(contiguous_offset("/f", &e, 4196).unwrap(), 20480);
        let gap = [
            Extent {
                lba: 10,
                length: 4096,
            },
            Extent {
                lba: 13,
                length: 100,
            },
        ];
        assert!(contiguous_offset("/f", &gap, 4196).is_err());
    }

    #[test]
    fn addition_of_a_missing_host_path_is_an_error() {
        let addition = Addition {
            iso_path: "/x".into(),
            host_path: PathBuf::from("/nonexistent/vmedia-repack-test"),
        };
        assert!(matches!(
            resolve_addition(&addition),
            Err(RepackError::Io { .. })
        ));
    }

    #[test]
    fn mbr_kind_is_found_from_the_bios_image_address() {
        let mut area = vec![0u8; 512];
        area[0] = 0xEB;
        let bios = BootEntryInfo {
            index: 0,
            platform: crate::read::Platform::X86,
            bootable: true,
            emulation: crate::read::Emulation::NoEmulation,
            load_segment: 0,
            system_type: 0,
            sector_count: 4,
            lba: 30,
            section_id: String::new(),
            image_path: None,
            appended_partition: None,
            image_size: 2048,
            boot_info_table: false,
            grub2_boot_info: false,
        };
        assert_eq!(
            system_area_kind(&area, Some(&bios)),
            SystemAreaKind::Generic
        );
        area[ISOHYBRID_LBA_OFFSET..ISOHYBRID_LBA_OFFSET + 4].copy_from_slice(&120u32.to_le_bytes());
        assert_eq!(
            system_area_kind(&area, Some(&bios)),
            SystemAreaKind::IsohybridMbr
        );
        area[GRUB2_MBR_LBA_OFFSET..GRUB2_MBR_LBA_OFFSET + 8].copy_from_slice(&124u64.to_le_bytes());
        assert_eq!(
            system_area_kind(&area, Some(&bios)),
            SystemAreaKind::Grub2Mbr
        );
        assert_eq!(system_area_kind(&area, None), SystemAreaKind::Generic);
    }
}
