//! Multi-ISO boot media (what Ventoy does): a GPT disk image whose GRUB (BIOS and UEFI) shows
//! a menu of the ISO files on its data partition and boots the one chosen.
//!
//! Layout, in disk order: a 1 MiB BIOS boot partition holding GRUB's i386-pc core (the MBR
//! carries boot.img pointing at it), a 16 MiB FAT EFI system partition holding
//! `\EFI\BOOT\BOOTX64.EFI` and `\boot\grub\grub.cfg` (the menu, shared by both firmwares),
//! a 1 MiB partition of vmedia's own type holding the stick's record (JSON: the ISOs, where
//! their bytes are, how each boots), and a FAT32 data partition holding the ISOs as files.
//!
//! [`create`], [`add`] and [`remove`] write a whole new image under a temporary name and rename
//! it into place; [`set_default`] rewrites only the ESP and the record, in place.
//!
//! Architecture invariant: this crate prints nothing and reads no environment; its only
//! outside program is `grub-mkimage`, at the path the caller gives ([`GrubTools`]).
#![forbid(unsafe_code)]

mod gpt;
mod grub;
mod probe;
mod record;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vmedia_fat::{FatImage, FatOptions, FatType, RangeFile};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy, Progress};

pub use gpt::Partition;
pub use grub::GrubTools;
pub use probe::{parse_grub, KernelLine};
pub use record::{BootMethod, Convention, IsoRecord, StickRecord};

const MIB: u64 = 1 << 20;
/// Partitions start on 1 MiB boundaries, as every partitioning tool aligns them.
const BIOS_BOOT_START: u64 = MIB;
/// core.img with every module the menu needs is about 190 KiB; 1 MiB leaves room.
const BIOS_BOOT_BYTES: u64 = MIB;
const ESP_START: u64 = 2 * MIB;
/// BOOTX64.EFI is about 700 KiB; a fixed 16 MiB ESP keeps its place when the menu changes.
const ESP_BYTES: u64 = 16 * MIB;
const RECORD_START: u64 = ESP_START + ESP_BYTES;
/// The record is a few hundred bytes per ISO.
const RECORD_BYTES: u64 = MIB;
const DATA_START: u64 = RECORD_START + RECORD_BYTES;
/// GPT partition numbers (1-based), in disk order.
const ESP_INDEX: usize = 2;
/// ISO file names: characters GRUB paths and kernel command lines take unquoted.
const MAX_NAME_LEN: usize = 200;
/// The menu waits this long by default, as most boot menus do.
pub const DEFAULT_TIMEOUT: u32 = 10;
/// A timeout longer than a day is a typo.
const MAX_TIMEOUT: u32 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum MultibootError {
    #[error("{path} at offset {offset:#x}: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    /// The output could not be created (it exists without `--force`, or its folder is not
    /// writable); the text of the error names the file.
    #[error("{0}")]
    Output(std::io::Error),
    #[error("{}: {problem}", tool.display())]
    Tool { tool: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    NotBootable { path: PathBuf, problem: String },
    #[error("{name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error("partition table at offset {offset:#x}: {problem}")]
    BadTable { offset: u64, problem: String },
    #[error("stick record at offset {offset:#x}: {problem}")]
    Record { offset: u64, problem: String },
    #[error("{0}")]
    Usage(String),
    #[error("data partition: {0}")]
    Fat(#[from] vmedia_fat::FatError),
}

fn io_err(path: &Path, offset: u64) -> impl FnOnce(std::io::Error) -> MultibootError + '_ {
    move |source| MultibootError::Io {
        path: path.to_path_buf(),
        offset,
        source,
    }
}

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Whole disk size in bytes (a multiple of 512); `None` fits the ISOs with some room.
    pub size: Option<u64>,
    pub overwrite: OverwritePolicy,
    /// The entry booted when the timeout ends (an ISO file name); the first when `None`.
    pub default: Option<String>,
    pub timeout: u32,
    pub grub: GrubTools,
}

/// A stick as [`list`] reads it.
#[derive(Debug, Clone, Serialize)]
pub struct StickReport {
    pub size_bytes: u64,
    pub partitions: Vec<PartitionReport>,
    pub record: StickRecord,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub number: usize,
    pub name: String,
    pub type_guid: String,
    pub offset: u64,
    pub size_bytes: u64,
}

/// One ISO to put on the stick: its bytes (a file, or a range of an older stick) and how it
/// boots.
struct Source {
    name: String,
    path: PathBuf,
    offset: u64,
    size: u64,
    mtime: i64,
    volume_id: Option<String>,
    boot: BootMethod,
}

/// Checks a file name for the data partition and the menu.
pub fn check_name(name: &str) -> Result<(), MultibootError> {
    let bad = |problem: &str| MultibootError::BadName {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(&format!("names are 1 to {MAX_NAME_LEN} characters")));
    }
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    {
        return Err(bad("use letters, digits, '.', '_', '+' and '-' only (GRUB paths and kernel command lines take them unquoted); rename the file"));
    }
    if !name.to_ascii_lowercase().ends_with(".iso") {
        return Err(bad("the name must end in .iso"));
    }
    Ok(())
}

fn new_source(path: &Path) -> Result<Source, MultibootError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| MultibootError::BadName {
            name: path.display().to_string(),
            problem: "the file name is not valid UTF-8".into(),
        })?
        .to_string();
    check_name(&name)?;
    let file = File::open(path).map_err(io_err(path, 0))?;
    let meta = file.metadata().map_err(io_err(path, 0))?;
    if !meta.is_file() {
        return Err(MultibootError::NotBootable {
            path: path.to_path_buf(),
            problem: "not a regular file".into(),
        });
    }
    let found = probe::probe(Arc::new(file), path)?;
    Ok(Source {
        name,
        path: path.to_path_buf(),
        offset: 0,
        size: meta.len(),
        mtime: std::os::unix::fs::MetadataExt::mtime(&meta),
        volume_id: found.volume_id,
        boot: found.boot,
    })
}

fn check_unique(sources: &[Source]) -> Result<(), MultibootError> {
    for (i, s) in sources.iter().enumerate() {
        if sources[..i]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&s.name))
        {
            return Err(MultibootError::BadName {
                name: s.name.clone(),
                problem: "two ISOs with this name (FAT does not tell case apart)".into(),
            });
        }
    }
    Ok(())
}

fn random_u32() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Makes a new stick at `out` holding `isos`.
pub fn create(
    out: &Path,
    isos: &[PathBuf],
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Result<StickRecord, MultibootError> {
    check_timeout(opts.timeout)?;
    let out_real = std::fs::canonicalize(out).ok();
    let mut sources = Vec::with_capacity(isos.len());
    for iso in isos {
        if out_real.is_some() && std::fs::canonicalize(iso).ok() == out_real {
            return Err(MultibootError::Usage(format!(
                "{} is both an input and the output; inputs are never modified",
                iso.display()
            )));
        }
        sources.push(new_source(iso)?);
    }
    check_unique(&sources)?;
    let record = StickRecord {
        version: StickRecord::new_version(),
        fixed_size: opts.size.is_some(),
        esp_volume_id: random_u32(),
        data_volume_id: random_u32(),
        timeout: opts.timeout,
        default: opts.default.clone(),
        isos: Vec::new(),
    };
    check_default(&record.default, &sources)?;
    build(
        out,
        opts.overwrite,
        &sources,
        record,
        opts.size,
        &opts.grub,
        progress,
    )
}

fn check_timeout(timeout: u32) -> Result<(), MultibootError> {
    if timeout > MAX_TIMEOUT {
        return Err(MultibootError::Usage(format!(
            "a timeout of {timeout} s is over a day"
        )));
    }
    Ok(())
}

fn check_default(default: &Option<String>, sources: &[Source]) -> Result<(), MultibootError> {
    if let Some(name) = default {
        if !sources.iter().any(|s| &s.name == name) {
            return Err(MultibootError::Usage(format!(
                "the default {name:?} is not one of the ISOs on the stick"
            )));
        }
    }
    Ok(())
}

/// Adds ISOs to a stick (rebuilt under a temporary name, then renamed over it).
pub fn add(
    stick: &Path,
    isos: &[PathBuf],
    size: Option<u64>,
    grub: &GrubTools,
    progress: &dyn Progress,
) -> Result<StickRecord, MultibootError> {
    let report = list(stick)?;
    let mut sources = kept_sources(stick, &report.record);
    for iso in isos {
        if std::fs::canonicalize(iso).ok() == std::fs::canonicalize(stick).ok() {
            return Err(MultibootError::Usage(format!(
                "{} is the stick itself",
                iso.display()
            )));
        }
        let new = new_source(iso)?;
        if sources
            .iter()
            .any(|s| s.name.eq_ignore_ascii_case(&new.name))
        {
            return Err(MultibootError::BadName {
                name: new.name,
                problem: "the stick already holds an ISO of this name; remove it first".into(),
            });
        }
        sources.push(new);
    }
    check_unique(&sources)?;
    rebuild(stick, report, sources, size, grub, progress)
}

/// Removes ISOs (by file name) from a stick (rebuilt under a temporary name, then renamed).
pub fn remove(
    stick: &Path,
    names: &[String],
    size: Option<u64>,
    grub: &GrubTools,
    progress: &dyn Progress,
) -> Result<StickRecord, MultibootError> {
    let mut report = list(stick)?;
    for name in names {
        if !report.record.isos.iter().any(|i| &i.name == name) {
            return Err(MultibootError::Usage(format!(
                "the stick holds no ISO named {name:?}"
            )));
        }
    }
    report.record.isos.retain(|i| !names.contains(&i.name));
    if report
        .record
        .default
        .as_ref()
        .is_some_and(|d| names.contains(d))
    {
        report.record.default = None;
    }
    let sources = kept_sources(stick, &report.record);
    rebuild(stick, report, sources, size, grub, progress)
}

fn kept_sources(stick: &Path, record: &StickRecord) -> Vec<Source> {
    record
        .isos
        .iter()
        .map(|i| Source {
            name: i.name.clone(),
            path: stick.to_path_buf(),
            offset: i.offset,
            size: i.size,
            mtime: jiff::Timestamp::now().as_second(),
            volume_id: i.volume_id.clone(),
            boot: i.boot.clone(),
        })
        .collect()
}

fn rebuild(
    stick: &Path,
    report: StickReport,
    sources: Vec<Source>,
    size: Option<u64>,
    grub: &GrubTools,
    progress: &dyn Progress,
) -> Result<StickRecord, MultibootError> {
    let mut record = report.record;
    let size = size.or(record.fixed_size.then_some(report.size_bytes));
    record.fixed_size = size.is_some();
    record.isos.clear();
    build(
        stick,
        OverwritePolicy::Replace,
        &sources,
        record,
        size,
        grub,
        progress,
    )
}

/// Sets the menu's default entry (and optionally its timeout), rewriting the ESP and the
/// record in place.
pub fn set_default(
    stick: &Path,
    name: Option<&str>,
    timeout: Option<u32>,
    grub: &GrubTools,
) -> Result<StickRecord, MultibootError> {
    let report = list(stick)?;
    // Written in place: only where this version's layout puts the ESP and the record.
    for (guid, start, bytes, what) in [
        (gpt::TYPE_ESP, ESP_START, ESP_BYTES, "EFI system"),
        (
            gpt::TYPE_VMEDIA_RECORD,
            RECORD_START,
            RECORD_BYTES,
            "record",
        ),
    ] {
        let found = report.partitions.iter().any(|p| {
            p.type_guid == gpt::type_guid(guid).to_string()
                && p.offset == start
                && p.size_bytes == bytes
        });
        if !found {
            return Err(MultibootError::BadTable {
                offset: gpt::SECTOR,
                problem: format!("the {what} partition is not where this vmedia puts it ({start:#x}, {bytes} bytes); recreate the stick"),
            });
        }
    }
    let mut record = report.record;
    if let Some(name) = name {
        if !record.isos.iter().any(|i| i.name == name) {
            return Err(MultibootError::Usage(format!(
                "the stick holds no ISO named {name:?}"
            )));
        }
    }
    if let Some(t) = timeout {
        check_timeout(t)?;
        record.timeout = t;
    }
    record.default = name.map(str::to_string);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(stick)
        .map_err(io_err(stick, 0))?;
    let images = grub::build(
        grub,
        BIOS_BOOT_START / gpt::SECTOR,
        BIOS_BOOT_BYTES,
        ESP_INDEX,
    )?;
    write_esp(&file, stick, &record, &images.efi)?;
    write_record(&file, stick, &record)?;
    file.sync_all().map_err(io_err(stick, 0))?;
    Ok(record)
}

/// Reads a stick's partition table and record, checking that every ISO lies in the data
/// partition.
pub fn list(stick: &Path) -> Result<StickReport, MultibootError> {
    let file = File::open(stick).map_err(io_err(stick, 0))?;
    let size = file.metadata().map_err(io_err(stick, 0))?.len();
    let read_at = |at: u64, buf: &mut [u8]| -> Result<(), MultibootError> {
        file.read_exact_at(buf, at).map_err(io_err(stick, at))
    };
    let parts = gpt::read(&read_at, size)?;
    let find = |t: &str| parts.iter().find(|p| p.type_guid == gpt::type_guid(t));
    let no = |what: &str| MultibootError::BadTable {
        offset: gpt::SECTOR,
        problem: format!("no {what} partition: not a stick made by vmedia multiboot"),
    };
    let rec_part = find(gpt::TYPE_VMEDIA_RECORD).ok_or_else(|| no("vmedia record"))?;
    let data = find(gpt::TYPE_BASIC_DATA).ok_or_else(|| no("data"))?;
    let room = rec_part.byte_len().min(RECORD_BYTES) as usize;
    let mut bytes = vec![0u8; room];
    read_at(rec_part.byte_offset(), &mut bytes)?;
    let record = StickRecord::decode(&bytes, rec_part.byte_offset())?;
    let data_end = data.byte_offset() + data.byte_len();
    for iso in &record.isos {
        check_name(&iso.name)?;
        let end = iso.offset.checked_add(iso.size);
        if iso.offset < data.byte_offset() || end.is_none_or(|e| e > data_end) {
            return Err(MultibootError::Record {
                offset: rec_part.byte_offset(),
                problem: format!("{} is recorded outside the data partition", iso.name),
            });
        }
    }
    let partitions = parts
        .iter()
        .enumerate()
        .map(|(i, p)| PartitionReport {
            number: i + 1,
            name: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            offset: p.byte_offset(),
            size_bytes: p.byte_len(),
        })
        .collect();
    Ok(StickReport {
        size_bytes: size,
        partitions,
        record,
    })
}

fn data_options(record: &StickRecord, data_bytes: Option<u64>) -> FatOptions {
    FatOptions {
        label: Some("VMEDIA".into()),
        volume_id: Some(record.data_volume_id),
        date: None,
        size: data_bytes,
        fat_type: Some(FatType::Fat32),
    }
}

/// Writes a whole stick to a temporary next to `out` and renames it into place.
fn build(
    out: &Path,
    overwrite: OverwritePolicy,
    sources: &[Source],
    mut record: StickRecord,
    size: Option<u64>,
    tools: &GrubTools,
    progress: &dyn Progress,
) -> Result<StickRecord, MultibootError> {
    check_default(&record.default, sources)?;
    let files: Vec<RangeFile> = sources
        .iter()
        .map(|s| RangeFile {
            name: s.name.clone(),
            source: s.path.clone(),
            offset: s.offset,
            size: s.size,
            mtime: s.mtime,
        })
        .collect();
    let trailer = gpt::TRAILER_SECTORS * gpt::SECTOR;
    let (total, plan) = match size {
        Some(total) => {
            if total % gpt::SECTOR != 0 {
                return Err(MultibootError::Usage(format!(
                    "--size {total} is not a multiple of 512"
                )));
            }
            let data_bytes = total
                .checked_sub(DATA_START + trailer)
                .map(|b| b / MIB * MIB)
                .filter(|&b| b > 0)
                .ok_or_else(|| {
                    MultibootError::Usage(format!(
                        "--size {total}: the boot partitions alone take {} MiB",
                        DATA_START / MIB + 1
                    ))
                })?;
            (
                total,
                FatImage::plan_files(&files, &data_options(&record, Some(data_bytes)))?,
            )
        }
        None => {
            // The fitted size, grown to whole MiB so the data partition ends aligned too;
            // the backup table gets the last MiB.
            let fitted = FatImage::plan_files(&files, &data_options(&record, None))?;
            let data_bytes = fitted.size_bytes().div_ceil(MIB) * MIB;
            let total = DATA_START + data_bytes + MIB;
            (
                total,
                FatImage::plan_files(&files, &data_options(&record, Some(data_bytes)))?,
            )
        }
    };
    let data_bytes = plan.size_bytes();
    for extent in plan.root_file_extents() {
        let Some(s) = sources.iter().find(|s| s.name == extent.name) else {
            continue;
        };
        record.isos.push(IsoRecord {
            name: s.name.clone(),
            size: s.size,
            offset: DATA_START + extent.offset,
            volume_id: s.volume_id.clone(),
            boot: s.boot.clone(),
        });
    }
    // The menu lists ISOs in the order the user gave them.
    record
        .isos
        .sort_by_key(|i| sources.iter().position(|s| s.name == i.name));

    let images = grub::build(
        tools,
        BIOS_BOOT_START / gpt::SECTOR,
        BIOS_BOOT_BYTES,
        ESP_INDEX,
    )?;
    let atomic = AtomicFile::create(out, overwrite).map_err(MultibootError::Output)?;
    let file = atomic.file();
    let path = atomic.temp_path().to_path_buf();
    file.set_len(total).map_err(io_err(&path, 0))?;
    progress.phase("copying ISOs");
    plan.write_into(file, DATA_START, progress)?;
    write_esp(file, &path, &record, &images.efi)?;
    file.write_all_at(&images.core, BIOS_BOOT_START)
        .map_err(io_err(&path, BIOS_BOOT_START))?;
    write_record(file, &path, &record)?;
    let total_sectors = total / gpt::SECTOR;
    let sector = |bytes: u64| bytes / gpt::SECTOR;
    let parts = vec![
        Partition {
            type_guid: gpt::type_guid(gpt::TYPE_BIOS_BOOT),
            guid: uuid::Uuid::new_v4(),
            first_lba: sector(BIOS_BOOT_START),
            last_lba: sector(BIOS_BOOT_START + BIOS_BOOT_BYTES) - 1,
            name: "BIOS boot (GRUB core)".into(),
        },
        Partition {
            type_guid: gpt::type_guid(gpt::TYPE_ESP),
            guid: uuid::Uuid::new_v4(),
            first_lba: sector(ESP_START),
            last_lba: sector(ESP_START + ESP_BYTES) - 1,
            name: "EFI system (GRUB)".into(),
        },
        Partition {
            type_guid: gpt::type_guid(gpt::TYPE_VMEDIA_RECORD),
            guid: uuid::Uuid::new_v4(),
            first_lba: sector(RECORD_START),
            last_lba: sector(RECORD_START + RECORD_BYTES) - 1,
            name: "vmedia multiboot record".into(),
        },
        Partition {
            type_guid: gpt::type_guid(gpt::TYPE_BASIC_DATA),
            guid: uuid::Uuid::new_v4(),
            first_lba: sector(DATA_START),
            last_lba: sector(DATA_START + data_bytes) - 1,
            name: "VMEDIA ISOs".into(),
        },
    ];
    let mbr = gpt::protective_mbr(&images.mbr_code, total_sectors, random_u32());
    file.write_all_at(&mbr, 0).map_err(io_err(&path, 0))?;
    for (at, bytes) in gpt::tables(uuid::Uuid::new_v4(), &parts, total_sectors) {
        file.write_all_at(&bytes, at).map_err(io_err(&path, at))?;
    }
    atomic
        .commit_with(Durability::Flush)
        .map_err(io_err(out, 0))?;
    Ok(record)
}

/// Writes the ESP (BOOTX64.EFI and the menu) over its whole partition.
fn write_esp(
    file: &File,
    path: &Path,
    record: &StickRecord,
    efi: &[u8],
) -> Result<(), MultibootError> {
    let scratch = tempfile::tempdir().map_err(io_err(path, ESP_START))?;
    let root = scratch.path();
    let write = |rel: &str, bytes: &[u8]| -> Result<(), MultibootError> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent, 0))?;
        }
        std::fs::write(&p, bytes).map_err(io_err(&p, 0))
    };
    write("EFI/BOOT/BOOTX64.EFI", efi)?;
    write("boot/grub/grub.cfg", grub::menu(record).as_bytes())?;
    let opts = FatOptions {
        label: Some("VMEDIA-EFI".into()),
        volume_id: Some(record.esp_volume_id),
        date: None,
        size: Some(ESP_BYTES),
        fat_type: None,
    };
    let plan = FatImage::plan(root, &opts)?;
    // Zeroed first: the writer fills only what the new tree uses.
    let zeros = vec![0u8; MIB as usize];
    for i in 0..ESP_BYTES / MIB {
        let at = ESP_START + i * MIB;
        file.write_all_at(&zeros, at).map_err(io_err(path, at))?;
    }
    plan.write_into(file, ESP_START, &vmedia_io::NoProgress)?;
    Ok(())
}

fn write_record(file: &File, path: &Path, record: &StickRecord) -> Result<(), MultibootError> {
    let mut bytes = record.encode(RECORD_BYTES as usize)?;
    bytes.resize(RECORD_BYTES as usize, 0);
    file.write_all_at(&bytes, RECORD_START)
        .map_err(io_err(path, RECORD_START))
}

/// The menu text a stick's ESP holds (for `ls --menu` and tests).
pub fn menu_text(record: &StickRecord) -> String {
    grub::menu(record)
}
