//! Writing ISO 9660 images from an `IsoSpec`.
//!
//! The work runs in four stages, each in its own module:
//! scan (`tree`: host folders, grafts, exclusions, hard links) -> name (`names`: ISO 9660
//! levels, Joliet, Rock Ridge) -> lay out (`layout`: every sector's address) -> emit
//! (`emit`: descriptors, directories, path tables, El Torito, hybrid MBR/GPT, file data
//! streamed by a bounded parallel reader). [`plan`] runs the first three without writing.
//!
//! Dependencies between the modules point one way; a module uses only those before it
//! (and the shared types of this file: `WriteError`, the reports, `SECTOR_SIZE`,
//! `SYSTEM_AREA`):
//!
//! `tree` -> `names` -> `rrip` -> `hierarchy` -> `records` -> `hfsplus` -> `eltorito` ->
//! `apm` -> `hybrid` -> `layout` -> `emit`
//!
//! `records` (directory record serialisation) is what both the layout (to measure folders)
//! and the emit stage (to write them) use, so it sits below both; El Torito learns where
//! appended partitions landed through a lookup the layout passes in, so it does not know the
//! hybrid plan; the APM and the hybrid layout share the system area size from here.

use crate::spec::{IsoSpec, Platform};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use vmedia_io::{AtomicFile, OverwritePolicy, Progress};

mod apm;
mod eltorito;
mod emit;
mod hfsplus;
mod hierarchy;
mod hybrid;
mod layout;
mod names;
mod records;
mod rrip;
pub(crate) mod tree;

pub use layout::Plan;

/// Size of an ISO 9660 logical sector.
pub const SECTOR_SIZE: u64 = 2048;
/// The system area is the first 16 sectors of 2048 bytes (MBR, GPT, APM live here).
pub(crate) const SYSTEM_AREA: usize = 32 * 1024;

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    /// The final image path.
    pub path: PathBuf,
    /// Image size in bytes.
    pub bytes: u64,
    /// Image size in 2048-byte sectors.
    pub sectors: u64,
    /// Regular files in the image (hard links counted once per name).
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    /// Bytes of file content stored (each shared extent once).
    pub data_bytes: u64,
    /// El Torito catalog LBA, when the image is bootable.
    pub boot_catalog_lba: Option<u32>,
    /// Boot entries in catalog order.
    pub boot_entries: Vec<BootReport>,
    /// Partition table entries written to the system area.
    pub partitions: Vec<PartitionReport>,
    /// Embedded digests, when `spec.integrity` asked for them.
    pub integrity: Option<IntegrityReport>,
}

/// One El Torito entry as written.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Catalog platform.
    pub platform: Platform,
    /// LBA (2048-byte sectors) of the boot image.
    pub image_lba: u32,
    /// Boot image size in bytes.
    pub image_bytes: u64,
    /// Sector count in the catalog (512-byte sectors).
    pub load_sectors: u16,
}

/// One partition table entry as written.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// "mbr" or "gpt".
    pub table: &'static str,
    /// Entry number (1-based).
    pub number: u32,
    /// Type, as "0xef" (MBR) or a GUID (GPT).
    pub part_type: String,
    /// First 512-byte sector.
    pub start_sector: u64,
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// Bootable flag (MBR) / legacy BIOS bootable attribute (GPT).
    pub bootable: bool,
    /// GPT partition name.
    pub name: String,
}

/// Digests implanted by `vmedia_iso::integrity`.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    /// checkisomd5 MD5, hex.
    pub md5: Option<String>,
    /// SHA-256, hex.
    pub sha256: Option<String>,
    /// Whether an ed25519 signature was embedded.
    pub signed: bool,
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A host file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The output could not be written.
    #[error("cannot write {} at offset {offset:#x}: {source}", path.display())]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// An option has a value the writer cannot honour; `field` names the spec field.
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// A file of 4 GiB or more at an ISO level that allows one extent per file.
    #[error("{} is {size} bytes; files of 4 GiB or more need -iso-level 3", path.display())]
    FileTooLarge { path: PathBuf, size: u64 },
    /// Two sources claim the same ISO path with incompatible kinds (folder vs file).
    #[error("{iso_path}: {reason}")]
    Conflict { iso_path: String, reason: String },
    /// A boot image named by the spec is not a regular file of the tree.
    #[error("boot image {what} not found in the image tree (give its ISO path, e.g. isolinux/isolinux.bin)")]
    BootImageMissing { what: String },
    /// A boot image is unusable (wrong size for its emulation, too small for a patch...).
    #[error("boot image {what}: {reason}")]
    BootImage { what: String, reason: String },
    /// The image would exceed what ISO 9660 addresses (2^32 sectors) or a table limit.
    #[error("image too large: {reason}")]
    TooLarge { reason: String },
    /// The embedded checksum / signature step failed.
    #[error("integrity implant failed on {}: {source}", path.display())]
    Integrity {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Scans, names and lays out `spec` without writing anything: the result knows every
/// address and the final size (`-print-size`).
pub fn plan(spec: &IsoSpec, progress: &dyn Progress) -> Result<Plan, WriteError> {
    let _span = tracing::info_span!("iso.plan").entered();
    layout::plan(spec, progress)
}

/// Writes the image described by `spec` to `out`, under a temporary name renamed into place
/// only when complete (and its integrity data implanted).
pub fn write_image(
    spec: &IsoSpec,
    out: &Path,
    overwrite: OverwritePolicy,
    progress: &dyn Progress,
) -> Result<WriteReport, WriteError> {
    let _span = tracing::info_span!("iso.write", out = %out.display()).entered();
    let plan = plan(spec, progress)?;
    let mut atomic = AtomicFile::create(out, overwrite).map_err(|source| WriteError::Write {
        path: out.to_path_buf(),
        offset: 0,
        source,
    })?;
    let mut report = write_streaming(spec, &plan, atomic.file_mut(), out, progress)?;
    atomic
        .commit_with(spec.durability)
        .map_err(|source| WriteError::Write {
            path: out.to_path_buf(),
            offset: 0,
            source,
        })?;
    report.path = out.to_path_buf();
    Ok(report)
}

/// Writes the image to an already open file (truncated to the image size), e.g. a block
/// device or a temporary file the caller manages. `name` is used in errors and the report.
pub fn write_to_file(
    spec: &IsoSpec,
    file: &mut File,
    name: &Path,
    progress: &dyn Progress,
) -> Result<WriteReport, WriteError> {
    let plan = plan(spec, progress)?;
    write_streaming(spec, &plan, file, name, progress)
}

/// Writes the image with the checksums computed alongside: the implant task hashes each
/// range as soon as the writer reports it final, then writes its record once all is written.
/// Same bytes as writing first and implanting after (`emit::implant_integrity`).
fn write_streaming(
    spec: &IsoSpec,
    plan: &Plan,
    file: &mut File,
    name: &Path,
    progress: &dyn Progress,
) -> Result<WriteReport, WriteError> {
    let Some(opts) = emit::implant_options(spec, name)? else {
        return plan.write_to(file, name, progress);
    };
    let task = crate::integrity::ImplantTask::start(file, plan.image_bytes, opts)
        .map_err(emit::integrity_error(name))?;
    let mut report = plan.write_reporting(file, name, progress, Some(&task))?;
    let implant = task.finish(progress).map_err(emit::integrity_error(name))?;
    report.integrity = Some(emit::integrity_report(implant));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MemFile, RockRidgeMode};
    use vmedia_io::NoProgress;

    fn seed_spec(mtime: i64) -> IsoSpec {
        let mut spec = IsoSpec::default();
        spec.naming.rock_ridge = Some(RockRidgeMode::Rational);
        spec.naming.joliet = true;
        spec.date = Some(1_700_000_000);
        for name in ["/user-data", "/meta-data", "/nested/deeper/file"] {
            spec.mem_files.push(MemFile {
                iso_path: name.into(),
                data: name.as_bytes().to_vec(),
                mode: 0o644,
                mtime: Some(mtime),
            });
        }
        spec
    }

    #[test]
    fn same_content_with_later_mtimes_writes_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.iso");
        let b = dir.path().join("b.iso");
        write_image(
            &seed_spec(1_800_000_000),
            &a,
            OverwritePolicy::Refuse,
            &NoProgress,
        )
        .unwrap();
        write_image(
            &seed_spec(1_900_000_000),
            &b,
            OverwritePolicy::Refuse,
            &NoProgress,
        )
        .unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    #[test]
    fn mtimes_later_than_the_date_are_clamped() {
        let plan = plan(&seed_spec(1_800_000_000), &NoProgress).unwrap();
        assert!(plan
            .tree
            .nodes
            .iter()
            .all(|n| n.meta.mtime <= 1_700_000_000));
        let earlier = plan_with(1_600_000_000);
        assert!(
            earlier
                .tree
                .nodes
                .iter()
                .any(|n| n.meta.mtime == 1_600_000_000),
            "earlier times are kept"
        );
    }

    fn plan_with(mtime: i64) -> Plan {
        plan(&seed_spec(mtime), &NoProgress).unwrap()
    }

    #[test]
    fn streamed_checksums_write_the_same_bytes_as_implanting_after() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("small")).unwrap();
        for i in 0..40u32 {
            std::fs::write(
                src.join(format!("small/f{i}")),
                vec![i as u8 + 1; 1000 + i as usize * 3001],
            )
            .unwrap();
        }
        // A big sparse file of odd size: copied segment by segment, a hole in the middle, and
        // a zero tail (the padding after it is never written).
        let big = File::create(src.join("big.bin")).unwrap();
        big.set_len(13 * (1 << 20) + 123).unwrap();
        big.write_all_at(&vec![0x5A; 3 << 20], 0).unwrap();
        big.write_all_at(&vec![0xA5; 2 << 20], 8 << 20).unwrap();
        std::fs::write(src.join("zeros"), vec![0u8; 5 << 20]).unwrap();
        let mut spec = seed_spec(1_600_000_000);
        spec.sources.push(crate::spec::GraftPoint {
            iso_path: "/".into(),
            host_path: src.clone(),
        });
        spec.hybrid.appended.push(crate::spec::AppendedPartition {
            number: 2,
            part_type: crate::spec::PartType::Mbr(0xEF),
            source: crate::spec::BlobSource::Bytes(vec![7; 70_000]),
        });
        spec.hybrid.appended_as_gpt = true;
        spec.integrity.md5 = true;
        spec.integrity.sha256 = true;
        let streamed = dir.path().join("streamed.iso");
        let report = write_image(&spec, &streamed, OverwritePolicy::Refuse, &NoProgress).unwrap();
        let after = dir.path().join("after.iso");
        let mut file = File::create_new(&after).unwrap();
        let plan = plan(&spec, &NoProgress).unwrap();
        plan.write_to(&mut file, &after, &NoProgress).unwrap();
        let reference = emit::implant_integrity(&spec, &file, &after, &NoProgress)
            .unwrap()
            .unwrap();
        assert!(
            std::fs::read(&streamed).unwrap() == std::fs::read(&after).unwrap(),
            "streamed checksums changed the image bytes"
        );
        let integrity = report.integrity.unwrap();
        assert_eq!(
            (integrity.md5, integrity.sha256),
            (reference.md5, reference.sha256)
        );
        let check =
            crate::integrity::verify(&File::open(&streamed).unwrap(), None, &NoProgress).unwrap();
        assert_eq!(
            (check.md5, check.fragments, check.sha256),
            (
                crate::integrity::CheckOutcome::Ok,
                crate::integrity::CheckOutcome::Ok,
                crate::integrity::CheckOutcome::Ok
            )
        );
    }

    /// A tree with what the writer's fast paths touch: many small files in many folders,
    /// folders nested past ISO depth 8 (Rock Ridge relocation), names long enough to be cut and
    /// to collide in ISO and Joliet form, symbolic links, a hard link, an empty file and one big
    /// enough for the big-file copy. Contents and permissions are fixed; every time is later
    /// than the spec's date, so all are clamped to it.
    fn many_small_files_tree(root: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mut seed = 0x9E37_79B9_u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed
        };
        for d in 0..24 {
            let dir = root.join(format!("dir{d:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..40 {
                let len = (next() % 9000) as usize;
                let data: Vec<u8> = (0..len).map(|_| (next() >> 24) as u8).collect();
                std::fs::write(dir.join(format!("file{f:03}.dat")), data).unwrap();
            }
        }
        let mut deep = root.join("deep");
        for level in 0..11 {
            deep = deep.join(format!("level{level}"));
            std::fs::create_dir_all(&deep).unwrap();
            std::fs::write(deep.join("marker.txt"), format!("level {level}\n")).unwrap();
        }
        let long = root.join("long");
        std::fs::create_dir_all(&long).unwrap();
        for i in 0..6 {
            let name = format!("{}-{i}.configuration", "a-rather-long-file-name".repeat(4));
            std::fs::write(long.join(name), vec![b'0' + i as u8; 100 + i]).unwrap();
        }
        std::fs::write(long.join(".hidden.file.with.dots"), b"dots").unwrap();
        std::fs::write(long.join("empty"), b"").unwrap();
        std::fs::hard_link(long.join("empty"), long.join("empty-link")).unwrap();
        std::fs::hard_link(root.join("dir00/file000.dat"), long.join("hard")).unwrap();
        std::os::unix::fs::symlink("../dir01/file001.dat", long.join("rel-link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", long.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("x".repeat(300), long.join("long-link")).unwrap();
        let big: Vec<u8> = (0..(5u32 << 20) + 77).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), big).unwrap();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let ft = entry.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() {
                    let mode = if entry.file_name() == "marker.txt" {
                        0o755
                    } else {
                        0o644
                    };
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                        .unwrap();
                }
            }
        }
    }

    #[test]
    fn many_small_files_image_keeps_its_bytes() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        many_small_files_tree(&src);
        let mut spec = seed_spec(1_600_000_000);
        spec.sources.push(crate::spec::GraftPoint {
            iso_path: "/".into(),
            host_path: src,
        });
        let out = dir.path().join("small.iso");
        write_image(&spec, &out, OverwritePolicy::Refuse, &NoProgress).unwrap();
        let digest = sha2::Sha256::digest(std::fs::read(&out).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        // Made by the writer before the small-file work of issue 15 (scan, records, reads):
        // the same tree must give the same image, byte for byte.
        assert_eq!(hex, MANY_SMALL_FILES_SHA256);
    }

    const MANY_SMALL_FILES_SHA256: &str =
        "056700ee584d04e01d381c4f09cdfed1eb14acee246cb78f80e49d1247c38085";

    #[test]
    fn refuse_policy_keeps_an_existing_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.iso");
        std::fs::write(&out, b"keep").unwrap();
        assert!(write_image(&seed_spec(0), &out, OverwritePolicy::Refuse, &NoProgress).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    }

    #[test]
    fn missing_boot_image_is_a_named_error() {
        let mut spec = seed_spec(0);
        spec.boot.entries.push(crate::spec::BootEntry::new(
            crate::spec::Platform::X86,
            crate::spec::BootImage::IsoPath("isolinux/isolinux.bin".into()),
        ));
        match plan(&spec, &NoProgress) {
            Err(WriteError::BootImageMissing { what }) => assert_eq!(what, "isolinux/isolinux.bin"),
            other => panic!("expected BootImageMissing, got {other:?}"),
        }
    }
}
