//! `vmedia iso create`: make an ISO image from folders with friendly flags and modern defaults
//! (Rock Ridge + Joliet, ISO level 3, embedded checksums), bootable for BIOS and UEFI.
//!
//! Architecture invariant: the flags become an `IsoSpec`; the writer and the FAT builder do the
//! format work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_iso::spec::{
    AppendedPartition, BlobSource, BootEntry, BootImage, EfiBootPart, Emulation, GraftPoint,
    IsoSpec, LoadSize, Matcher, PartType, Platform, RockRidgeMode, SystemArea, SystemAreaKind,
};

use super::output::{split_assignment, OutputArgs, StampArgs};
use crate::mkisofs::common;

/// Where Debian's isolinux package keeps the isohybrid MBR template.
const ISOLINUX_HYBRID_MBR: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
/// Where Debian's grub-pc-bin keeps GRUB's hybrid MBR template.
const GRUB_HYBRID_MBR: &str = "/usr/lib/grub/i386-pc/boot_hybrid.img";
/// `--hybrid` without `=TEMPLATE`: pick the template from the BIOS boot image.
const HYBRID_AUTO: &str = "auto";
/// The appended partition slot used for the ESP vmedia builds (xorriso/archiso use 2).
const ESP_PARTITION_NUMBER: u8 = 2;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso create ./tree -o out.iso --volume-id MYDISC
  vmedia iso create ./tree boot/extra.cfg=./extra.cfg -o out.iso
  vmedia iso create ./tree -o boot.iso --bios-boot isolinux/isolinux.bin --hybrid
  vmedia iso create ./tree -o boot.iso --bios-boot boot/grub/i386-pc/eltorito.img \\
      --efi-dir ./esp --hybrid
  SOURCE_DATE_EPOCH=1700000000 vmedia iso create ./tree -o out.iso --force --json

Defaults: Rock Ridge, Joliet, ISO level 3 (files over 4 GiB), checkisomd5 MD5 + SHA-256
embedded. Exit codes: 0 written, 1 failure, 2 usage error.")]
pub struct Args {
    /// Folders or files to put in the image; a folder's contents go to the root.
    /// `ISO_PATH=SRC` puts SRC at ISO_PATH (escape '=' in names as '\=').
    #[arg(required = true, value_name = "SRC | ISO_PATH=SRC")]
    sources: Vec<OsString>,
    /// Volume label (up to 32 characters).
    #[arg(long, short = 'V', value_name = "LABEL")]
    volume_id: Option<String>,
    /// Publisher text.
    #[arg(long)]
    publisher: Option<String>,
    /// Data preparer text.
    #[arg(long)]
    preparer: Option<String>,
    /// Application text.
    #[arg(long)]
    application: Option<String>,
    /// System identifier (default LINUX).
    #[arg(long)]
    system_id: Option<String>,
    /// Volume set identifier.
    #[arg(long)]
    volume_set: Option<String>,
    /// Rock Ridge: POSIX names, modes, owners, links (default on).
    #[arg(long, overrides_with = "no_rock_ridge")]
    rock_ridge: bool,
    /// No Rock Ridge entries.
    #[arg(long)]
    no_rock_ridge: bool,
    /// Rock Ridge with owners root and modes rationalized (mkisofs -r).
    #[arg(long, conflicts_with = "no_rock_ridge")]
    rational_rock: bool,
    /// Joliet tree for Windows (default on).
    #[arg(long, overrides_with = "no_joliet")]
    joliet: bool,
    /// No Joliet tree.
    #[arg(long)]
    no_joliet: bool,
    /// Also write a UDF file system over the same file data (an ISO 9660 + UDF bridge, as
    /// Windows installation media are made): what Windows, 7z and bsdtar read first.
    #[arg(long)]
    udf: bool,
    /// UDF revision: 1.02 (as Windows media, default) or 2.01; implies --udf.
    #[arg(long, value_name = "1.02|2.01", value_parser = parse_udf_revision)]
    udf_revision: Option<vmedia_iso::spec::UdfRevision>,
    /// ISO 9660 level 1-4 (default 3: long names and files over 4 GiB).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=4))]
    iso_level: u8,
    /// BIOS El Torito boot image, a path inside the image (no emulation, 4 sectors loaded,
    /// boot info table patched; GRUB's eltorito.img also gets GRUB2 boot info).
    #[arg(long, value_name = "PATH_IN_ISO")]
    bios_boot: Option<String>,
    /// Do not patch a boot info table into the BIOS boot image.
    #[arg(long, requires = "bios_boot")]
    no_boot_info_table: bool,
    /// UEFI El Torito boot image (a FAT image inside the tree); also an ESP partition with
    /// --hybrid.
    #[arg(long, value_name = "PATH_IN_ISO", conflicts_with = "efi_dir")]
    uefi_boot: Option<String>,
    /// Build a FAT EFI system partition from this folder (it must hold EFI/BOOT/BOOTX64.EFI),
    /// boot it via El Torito and append it as a GPT ESP partition.
    #[arg(long, value_name = "HOST_DIR")]
    efi_dir: Option<PathBuf>,
    /// Path of the boot catalog in the image (default: hidden).
    #[arg(long, value_name = "PATH_IN_ISO")]
    boot_catalog: Option<String>,
    /// USB-bootable hybrid layout: an MBR (isolinux's isohdpfx.bin, or GRUB's
    /// boot_hybrid.img for a GRUB BIOS image; or TEMPLATE) and a GPT for UEFI.
    #[arg(long, value_name = "TEMPLATE", num_args = 0..=1, require_equals = true, default_missing_value = HYBRID_AUTO)]
    hybrid: Option<PathBuf>,
    /// mkisofs sort file: `PATH WEIGHT` lines, higher weights first on disc.
    #[arg(long, value_name = "FILE")]
    sort: Option<PathBuf>,
    /// Leave out files matching this glob (name or whole path); repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Store what symbolic links point at instead of the links.
    #[arg(long)]
    follow_symlinks: bool,
    #[command(flatten)]
    stamp: StampArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Fails before the (possibly long) ESP build when the output is in the way.
    let (out, policy) = args.out.prepare()?;
    let spec = build_spec(&args)?;
    args.out.write(spec, &out, policy)
}

fn parse_udf_revision(text: &str) -> Result<vmedia_iso::spec::UdfRevision, String> {
    vmedia_iso::spec::UdfRevision::parse(text).ok_or_else(|| format!("{text}: use 1.02 or 2.01"))
}

fn build_spec(args: &Args) -> anyhow::Result<IsoSpec> {
    let mut spec = IsoSpec::default();
    spec.volume.volume_id = args.volume_id.clone();
    spec.volume.publisher = args.publisher.clone();
    spec.volume.preparer = args.preparer.clone();
    spec.volume.application = args.application.clone();
    spec.volume.system_id = args.system_id.clone();
    spec.volume.volume_set_id = args.volume_set.clone();
    spec.naming.iso_level = args.iso_level;
    if args.udf || args.udf_revision.is_some() {
        spec.udf = Some(vmedia_iso::spec::UdfSpec {
            revision: args.udf_revision.unwrap_or_default(),
        });
    }
    // Deep folders stay where they are, as xorriso does by default.
    spec.naming.no_deep_relocation = true;
    spec.naming.joliet = !args.no_joliet;
    spec.naming.joliet_long = !args.no_joliet;
    spec.naming.rock_ridge = if args.no_rock_ridge {
        None
    } else if args.rational_rock {
        Some(RockRidgeMode::Rational)
    } else {
        Some(RockRidgeMode::Faithful)
    };
    for source in &args.sources {
        spec.sources.push(graft(source)?);
    }
    spec.excludes = args
        .exclude
        .iter()
        .map(|g| Matcher::Glob(g.clone()))
        .collect();
    spec.follow_symlinks = args.follow_symlinks;
    if let Some(sort) = &args.sort {
        spec.sort = common::read_sort_file(sort)?;
    }
    args.stamp.apply(&mut spec)?;
    add_boot(args, &mut spec)?;
    Ok(spec)
}

/// `SRC` (merged at the root) or `ISO_PATH=SRC`.
fn graft(word: &OsString) -> anyhow::Result<GraftPoint> {
    use std::os::unix::ffi::OsStringExt;
    let (iso, host) = split_assignment(word);
    let Some(host) = host else {
        return Ok(GraftPoint {
            iso_path: "/".into(),
            host_path: PathBuf::from(OsString::from_vec(iso)),
        });
    };
    if host.is_empty() {
        bail!(
            "{}: nothing after '=' (give ISO_PATH=SRC)",
            word.to_string_lossy()
        );
    }
    let iso = String::from_utf8(iso)
        .with_context(|| format!("{}: the ISO path is not UTF-8", word.to_string_lossy()))?;
    Ok(GraftPoint {
        iso_path: common::absolute_iso_path(&iso),
        host_path: PathBuf::from(OsString::from_vec(host)),
    })
}

fn file_name_of(iso_path: &str) -> &str {
    iso_path.rsplit('/').next().unwrap_or(iso_path)
}

fn add_boot(args: &Args, spec: &mut IsoSpec) -> anyhow::Result<()> {
    spec.boot.catalog_path = args.boot_catalog.clone();
    let bios_is_grub = args
        .bios_boot
        .as_deref()
        .is_some_and(|p| file_name_of(p) == "eltorito.img");
    if let Some(bios) = &args.bios_boot {
        let mut entry = BootEntry::new(Platform::X86, BootImage::IsoPath(bios.clone()));
        entry.emulation = Emulation::NoEmulation;
        entry.load_size = LoadSize::Sectors(4);
        entry.boot_info_table = !args.no_boot_info_table;
        entry.grub2_boot_info = bios_is_grub;
        spec.boot.entries.push(entry);
    }
    if let Some(uefi) = &args.uefi_boot {
        let entry = BootEntry::new(Platform::Efi, BootImage::IsoPath(uefi.clone()));
        spec.boot.entries.push(entry);
        if args.hybrid.is_some() {
            spec.hybrid.gpt_basdat = true;
            spec.hybrid.efi_boot_part = Some(EfiBootPart::BootImage);
        }
    }
    if let Some(dir) = &args.efi_dir {
        let esp = build_esp(dir, spec.date)?;
        spec.hybrid.appended.push(AppendedPartition {
            number: ESP_PARTITION_NUMBER,
            part_type: PartType::Mbr(0xEF),
            source: BlobSource::Bytes(esp),
        });
        spec.hybrid.appended_as_gpt = true;
        spec.boot.entries.push(BootEntry::new(
            Platform::Efi,
            BootImage::AppendedPartition(ESP_PARTITION_NUMBER),
        ));
    }
    if let Some(template) = &args.hybrid {
        if args.bios_boot.is_none() && args.uefi_boot.is_none() && args.efi_dir.is_none() {
            bail!("--hybrid needs a boot image: --bios-boot, --uefi-boot or --efi-dir");
        }
        if args.bios_boot.is_some() {
            let (file, kind) = if template.as_os_str() == HYBRID_AUTO {
                if bios_is_grub {
                    (PathBuf::from(GRUB_HYBRID_MBR), SystemAreaKind::Grub2Mbr)
                } else {
                    (
                        PathBuf::from(ISOLINUX_HYBRID_MBR),
                        SystemAreaKind::IsohybridMbr,
                    )
                }
            } else if file_name_of(&template.to_string_lossy()).contains("boot_hybrid") {
                (template.clone(), SystemAreaKind::Grub2Mbr)
            } else {
                (template.clone(), SystemAreaKind::IsohybridMbr)
            };
            if !file.exists() {
                bail!(
                    "hybrid MBR template {} not found (install isolinux or grub-pc-bin, or pass --hybrid=TEMPLATE)",
                    file.display()
                );
            }
            spec.hybrid.system_area = Some(SystemArea {
                source: BlobSource::File(file),
                kind,
            });
            if kind == SystemAreaKind::Grub2Mbr {
                // grub-mkrescue's layout: the MBR partition covers the image from sector 1.
                spec.hybrid.protective_msdos_label = true;
            }
        } else if template.as_os_str() != HYBRID_AUTO {
            bail!(
                "--hybrid={}: an MBR template needs --bios-boot",
                template.display()
            );
        }
    }
    Ok(())
}

/// Builds the FAT ESP image from `dir` in memory (ESPs are megabytes, not gigabytes).
fn build_esp(dir: &Path, date: Option<i64>) -> anyhow::Result<Vec<u8>> {
    if !dir.join("EFI").is_dir() {
        bail!(
            "--efi-dir {}: no EFI folder inside (expected EFI/BOOT/BOOTX64.EFI)",
            dir.display()
        );
    }
    let options = vmedia_fat::FatOptions {
        label: Some("EFIBOOT".into()),
        date,
        ..Default::default()
    };
    vmedia_fat::build_image(dir, &options).with_context(|| {
        format!(
            "cannot build the EFI system partition from {}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graft_splits_at_first_unescaped_equals() {
        let g = graft(&OsString::from(r"boot/a\=b=src=x")).unwrap();
        assert_eq!(g.iso_path, "/boot/a=b");
        assert_eq!(g.host_path, PathBuf::from("src=x"));
        let plain = graft(&OsString::from("tree")).unwrap();
        assert_eq!(plain.iso_path, "/");
    }

    #[test]
    fn graft_without_source_is_refused() {
        assert!(graft(&OsString::from("boot=")).is_err());
    }
}
