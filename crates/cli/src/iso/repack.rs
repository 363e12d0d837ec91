//! `vmedia iso repack`: add and remove files in an existing image and write a new one that
//! boots like the original, as `xorriso -indev IN -outdev OUT -boot_image any replay` does.
//!
//! File data is never extracted: every kept file becomes a `RangeFile` (a byte range of the
//! input image) that the writer copies straight across. Only directories and symbolic links,
//! which carry no data, are recreated in a temporary skeleton folder so the writer sees their
//! modes and times. The boot catalog and the system area are read back with the reader and
//! described again in the `IsoSpec`, so the writer re-patches boot info tables, GRUB2 boot
//! info, the isohybrid/GRUB MBR and the GPT for the new addresses.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use vmedia_io::ReadAt;
use vmedia_iso::read::{
    BootCatalog, BootEntryInfo, EntryKind, IsoImage, OpenOptions, PartitionTable, Timestamp,
};
use vmedia_iso::spec::{
    AppendedPartition, BlobSource, BootEntry, BootImage, EfiBootPart, Emulation, GraftPoint,
    IsoSpec, LoadSize, PartType, Platform, RangeFile, RockRidgeMode, SystemArea, SystemAreaKind,
};

use super::output::{split_assignment, OutputArgs, StampArgs};
use crate::mkisofs::common;

/// Largest appended partition or out-of-tree boot image copied through memory; ESPs are
/// tens of MiB, and anything far larger is not a boot partition.
const MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;
/// Bytes of MBR boot code (before the disk signature and partition table).
const MBR_CODE_BYTES: usize = 440;
/// isohybrid MBRs store the 512-byte LBA of the BIOS boot image here (32-bit LE).
const ISOHYBRID_LBA_OFFSET: usize = 432;
/// GRUB's boot_hybrid.img gets the 512-byte LBA of the boot image + 4 here (64-bit LE).
const GRUB2_MBR_LBA_OFFSET: usize = 0x1B0;
/// Sectors per 2048-byte block.
const SECTORS_PER_BLOCK: u64 = 4;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso repack in.iso --add /extra.txt=./extra.txt -o out.iso
  vmedia iso repack in.iso --add /preseed/=./preseed.cfg --remove /pool/old -o out.iso --force
  vmedia iso repack in.iso --add boot/grub/grub.cfg=./grub.cfg -o out.iso

Keeps the El Torito entries (boot info tables and GRUB2 boot info re-patched for the new
addresses), the isohybrid or GRUB MBR, the GPT and appended partitions. A trailing '/' on
ISO_PATH keeps the host file's own name. Exit codes: 0 written, 1 failure, 2 usage error.")]
pub struct Args {
    /// The image to start from (never modified).
    #[arg(value_name = "IN.iso")]
    input: PathBuf,
    /// Add (or replace) a file or folder: ISO_PATH=HOST_PATH; repeatable.
    #[arg(long, value_name = "ISO_PATH=HOST_PATH")]
    add: Vec<OsString>,
    /// Remove a file or folder (with everything below it); repeatable.
    #[arg(long, value_name = "ISO_PATH")]
    remove: Vec<String>,
    /// New volume label (default: keep the original).
    #[arg(long, short = 'V', value_name = "LABEL")]
    volume_id: Option<String>,
    #[command(flatten)]
    stamp: StampArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (out, policy) = args.out.prepare()?;
    if same_file(&args.input, &out) {
        bail!(
            "the output {} is the input; write to another name",
            out.display()
        );
    }
    let file =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let source: Arc<dyn ReadAt> = Arc::new(file);
    let image = IsoImage::open(source.clone(), OpenOptions::default())
        .with_context(|| format!("{} is not a readable ISO image", args.input.display()))?;
    let skeleton = Skeleton::create(
        out.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    let spec = build_spec(&args, &image, source.as_ref(), &skeleton.path)?;
    args.out.write(spec, &out, policy)
}

/// The temporary folder of directories and links, removed when dropped.
struct Skeleton {
    path: PathBuf,
}

impl Skeleton {
    fn create(beside: &Path) -> anyhow::Result<Skeleton> {
        for attempt in 0..1000u32 {
            let path = beside.join(format!(".vmedia-repack-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Skeleton { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create the skeleton folder {}", path.display())
                    })
                }
            }
        }
        bail!(
            "cannot find a free name for the skeleton folder in {}",
            beside.display()
        )
    }
}

impl Drop for Skeleton {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// One `--add`: where in the image, from which host path.
struct Addition {
    graft: GraftPoint,
    /// ISO paths the host side provides (files and folders), to drop the old entries.
    provides: Vec<String>,
}

fn parse_addition(word: &OsString) -> anyhow::Result<Addition> {
    let (iso, host) = split_assignment(word);
    let host = match host {
        Some(host) if !host.is_empty() && !iso.is_empty() => host,
        _ => bail!(
            "--add {}: expected ISO_PATH=HOST_PATH",
            word.to_string_lossy()
        ),
    };
    let iso = String::from_utf8(iso).with_context(|| {
        format!(
            "--add {}: the ISO path is not UTF-8",
            word.to_string_lossy()
        )
    })?;
    let host_path = PathBuf::from(OsString::from_vec(host));
    let meta =
        std::fs::metadata(&host_path).with_context(|| format!("--add {}", host_path.display()))?;
    let mut iso_path = common::absolute_iso_path(&iso);
    if iso_path.ends_with('/') && !meta.is_dir() {
        let name = host_path
            .file_name()
            .with_context(|| format!("--add {}: no file name", host_path.display()))?;
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
    Ok(Addition {
        graft: GraftPoint {
            iso_path,
            host_path,
        },
        provides,
    })
}

/// ISO paths a host folder grafted at `iso_dir` will create.
fn list_host_tree(dir: &Path, iso_dir: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
    for item in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot read {}", dir.display()))?;
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
    args: &Args,
    image: &IsoImage,
    source: &dyn ReadAt,
    skeleton: &Path,
) -> anyhow::Result<IsoSpec> {
    let mut spec = IsoSpec::default();
    let volume = image.volume();
    let fields = &volume.primary;
    let keep = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    spec.volume.volume_id = args.volume_id.clone().or_else(|| keep(&fields.volume_id));
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
    args.stamp.apply(&mut spec)?;

    let mut removed: Vec<String> = Vec::new();
    for path in &args.remove {
        let path = common::absolute_iso_path(path)
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() {
            bail!("--remove /: removing the whole tree leaves nothing to repack");
        }
        image
            .lookup(&path)
            .with_context(|| format!("--remove {path}: not in {}", args.input.display()))?;
        removed.push(path);
    }
    let additions: Vec<Addition> = args
        .add
        .iter()
        .map(parse_addition)
        .collect::<anyhow::Result<_>>()?;
    let replaced: HashSet<String> = additions
        .iter()
        .flat_map(|a| a.provides.iter().cloned())
        .collect();

    let catalog = image
        .boot_catalog()
        .context("cannot read the boot catalog")?;
    let catalog_path = catalog.as_ref().and_then(|c| c.catalog_path.clone());

    // The tree: directories and links into the skeleton, file data as byte ranges.
    let input_path = std::fs::canonicalize(&args.input)
        .with_context(|| format!("cannot resolve {}", args.input.display()))?;
    let mut kept_files: BTreeSet<String> = BTreeSet::new();
    let mut dir_times: Vec<(PathBuf, Option<i64>, u32)> = Vec::new();
    for item in image.walk() {
        let item = item.with_context(|| format!("cannot walk {}", args.input.display()))?;
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
                std::fs::create_dir_all(&host)
                    .with_context(|| format!("cannot create {}", host.display()))?;
                dir_times.push((host, mtime, entry.permissions()));
            }
            _ if replaced.contains(&path) => {}
            EntryKind::File => {
                if entry.zisofs.is_some() {
                    bail!("{path}: zisofs-compressed files cannot be repacked (vmedia writes no zisofs)");
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
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::os::unix::fs::symlink(target, &host)
                    .with_context(|| format!("cannot recreate link {path} -> {target}"))?;
                set_link_time(&host, mtime);
            }
            other => {
                bail!("{path}: {other:?} entries (devices, fifos, sockets) cannot be repacked");
            }
        }
    }
    // Deepest first, so setting a child's time does not disturb its parent's.
    dir_times.sort_by_key(|d| std::cmp::Reverse(d.0.as_os_str().len()));
    for (dir, mtime, mode) in &dir_times {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        set_time(dir, *mtime);
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
fn contiguous_offset(
    path: &str,
    extents: &[vmedia_iso::read::Extent],
    size: u64,
) -> anyhow::Result<u64> {
    let Some(first) = extents.first() else {
        return Ok(0);
    };
    let mut next = first.byte_offset();
    for extent in extents {
        if extent.length == 0 {
            continue;
        }
        if extent.byte_offset() != next {
            bail!("{path}: its extents are not contiguous; repack cannot copy it as one range");
        }
        next = next
            .checked_add(extent.length)
            .with_context(|| format!("{path}: extent lengths overflow"))?;
    }
    if next - first.byte_offset() != size {
        bail!(
            "{path}: extents hold {} bytes but the file is {size}",
            next - first.byte_offset()
        );
    }
    Ok(first.byte_offset())
}

fn set_time(path: &Path, mtime: Option<i64>) {
    set_times(path, mtime, 0);
}

fn set_link_time(path: &Path, mtime: Option<i64>) {
    set_times(path, mtime, libc::AT_SYMLINK_NOFOLLOW);
}

/// Best effort: a time that cannot be set only changes a timestamp in the output.
fn set_times(path: &Path, mtime: Option<i64>, flags: libc::c_int) {
    let Some(seconds) = mtime else { return };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let time = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: c_path is a valid NUL-terminated string and times points to two timespecs.
    unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), flags) };
}

/// `YYYYMMDDhhmmsscc` of a volume timestamp in its own offset, as the descriptor holds it.
fn volume_date_digits(t: &Timestamp) -> String {
    let local = t.unix_seconds + i64::from(t.utc_offset_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        t.nanoseconds / 10_000_000
    )
}

/// Inverse of days-from-civil (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn read_blob(source: &dyn ReadAt, offset: u64, len: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    if len > MAX_BLOB_BYTES {
        bail!("{what}: {len} bytes is over the {MAX_BLOB_BYTES}-byte limit for boot images and appended partitions");
    }
    let mut buf = vec![0u8; usize::try_from(len).context("size does not fit in memory")?];
    source
        .read_exact_at(&mut buf, offset)
        .with_context(|| format!("cannot read {what} at offset {offset:#x}"))?;
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
) -> anyhow::Result<()> {
    spec.boot.catalog_path = catalog.catalog_path.clone();
    let partitions = image
        .partitions()
        .context("cannot read the partition tables")?;
    for info in &catalog.entries {
        let boot_image = match (&info.image_path, info.appended_partition) {
            (Some(path), _) => {
                if removed.iter().any(|r| is_at_or_below(path, r)) {
                    bail!("--remove would delete the boot image {path}; replace it with --add instead");
                }
                if !kept_files.contains(path) && !replaced.contains(path) {
                    bail!("boot image {path} is not a regular file of the tree");
                }
                BootImage::IsoPath(path.clone())
            }
            (None, Some(number)) => {
                let number = u8::try_from(number)
                    .ok()
                    .filter(|n| (1..=4).contains(n))
                    .with_context(|| {
                        format!(
                            "boot image in partition {number}: only partitions 1-4 can be replayed"
                        )
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

fn boot_entry(info: &BootEntryInfo, image: BootImage) -> anyhow::Result<BootEntry> {
    use vmedia_iso::read::Emulation as ReadEmulation;
    let mut entry = BootEntry::new(Platform::from_id(info.platform.id()), image);
    entry.emulation = match info.emulation {
        ReadEmulation::NoEmulation => Emulation::NoEmulation,
        ReadEmulation::Floppy1200K | ReadEmulation::Floppy1440K | ReadEmulation::Floppy2880K => {
            Emulation::Floppy
        }
        ReadEmulation::HardDisk => Emulation::HardDisk,
        ReadEmulation::Unknown(b) => {
            bail!("boot entry {}: unknown emulation type {b:#x}", info.index)
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
) -> anyhow::Result<()> {
    if spec.hybrid.appended.iter().any(|p| p.number == number) {
        return Ok(());
    }
    let gpt_entry = partitions
        .gpt
        .as_ref()
        .and_then(|g| g.partitions.iter().find(|p| p.number == u32::from(number)));
    let (part_type, start, sectors) = if let Some(p) = gpt_entry {
        let guid = vmedia_iso::spec::parse_guid(&p.type_guid)
            .with_context(|| format!("partition {number}: type GUID {} unreadable", p.type_guid))?;
        spec.hybrid.appended_as_gpt = true;
        (
            PartType::Gpt(guid),
            p.first_sector,
            p.last_sector.saturating_sub(p.first_sector) + 1,
        )
    } else if let Some(p) = partitions.mbr.iter().find(|p| p.number == number) {
        (
            PartType::Mbr(p.partition_type),
            u64::from(p.start_sector),
            u64::from(p.sector_count),
        )
    } else {
        bail!("the boot catalog names partition {number}, which the partition tables lack");
    };
    let data = read_blob(
        source,
        start * 512,
        sectors * 512,
        &format!("partition {number}"),
    )?;
    spec.hybrid.appended.push(AppendedPartition {
        number,
        part_type,
        source: BlobSource::Bytes(data),
    });
    Ok(())
}

/// Describes the original system area again: MBR boot code and its kind, the partitions.
fn replay_system_area(
    spec: &mut IsoSpec,
    image: &IsoImage,
    source: &dyn ReadAt,
    catalog: Option<&BootCatalog>,
) -> anyhow::Result<()> {
    let area = image.system_area().context("cannot read the system area")?;
    let partitions = image
        .partitions()
        .context("cannot read the partition tables")?;
    let bios = catalog.and_then(|c| c.entries.iter().find(|e| e.platform.id() == 0));
    let efi = catalog.and_then(|c| c.entries.iter().find(|e| e.platform.id() == 0xEF));
    let has_code = area[..MBR_CODE_BYTES].iter().any(|b| *b != 0);
    let le32 = |at: usize| u32::from_le_bytes([area[at], area[at + 1], area[at + 2], area[at + 3]]);
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&area[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mbr_code = || BlobSource::Bytes(area[..512].to_vec());
    if has_code {
        let kind = match bios {
            Some(b) if le64(GRUB2_MBR_LBA_OFFSET) == u64::from(b.lba) * SECTORS_PER_BLOCK + 4 => {
                SystemAreaKind::Grub2Mbr
            }
            Some(b)
                if u64::from(le32(ISOHYBRID_LBA_OFFSET))
                    == u64::from(b.lba) * SECTORS_PER_BLOCK =>
            {
                SystemAreaKind::IsohybridMbr
            }
            _ => SystemAreaKind::Generic,
        };
        let source = if kind == SystemAreaKind::Generic {
            // Only the boot code: the old partition table describes the old layout.
            let mut code = area[..MBR_CODE_BYTES].to_vec();
            code.resize(512, 0);
            BlobSource::Bytes(code)
        } else {
            mbr_code()
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
                .eq_ignore_ascii_case(vmedia_iso::spec::GPT_TYPE_EFI_SYSTEM);
            let inside = p.last_sector < volume_sectors;
            if inside
                && esp
                && efi.is_some_and(|e| u64::from(e.lba) * SECTORS_PER_BLOCK == p.first_sector)
            {
                spec.hybrid.efi_boot_part = Some(EfiBootPart::BootImage);
            }
            if p.first_sector == 0
                && p.type_guid
                    .eq_ignore_ascii_case(vmedia_iso::spec::GPT_TYPE_BASIC_DATA)
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
    fn civil_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
    }

    #[test]
    fn prefix_matching_respects_components() {
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
    }

    #[test]
    fn contiguous_extents_give_one_range() {
        use vmedia_iso::read::Extent;
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
    fn addition_needs_both_sides() {
        assert!(parse_addition(&OsString::from("/x")).is_err());
        assert!(parse_addition(&OsString::from("=/etc/hostname")).is_err());
    }
}
