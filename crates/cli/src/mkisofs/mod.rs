//! `vmedia mkisofs`: the `xorriso -as mkisofs` / genisoimage command line, translated into an
//! `IsoSpec` for the ISO writer. Distribution scripts work by changing the program name.
//!
//! Architecture invariant: no format logic here; options become `IsoSpec` fields one to one.

pub(crate) mod common;
mod options;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use vmedia_io::{NoProgress, OverwritePolicy};
use vmedia_iso::spec::{
    AppendedPartition, BlobSource, BootEntry, BootImage, EfiBootPart, Emulation, HfsBless,
    HfsCreatorType, HfsPlusSpec, Hide, HideTree, IntegritySpec, IsoSpec, LoadSize, Matcher,
    Ownership, Platform, RockRidgeMode, SortRule, SystemArea, SystemAreaKind,
};

use options::{Exclude, Invocation, RockRidge, UsageError};

/// xorriso's boot catalog path when `-c` is not given.
const DEFAULT_BOOT_CATALOG: &str = "/boot.catalog";

/// Exit code of a usage error (an unknown or unsupported option), as clap uses.
const EXIT_USAGE: u8 = 2;

#[derive(clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let inv = match options::parse(&args.args) {
        Ok(inv) => inv,
        Err(e) => return Ok(usage_failure(&e)),
    };
    if inv.help {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    if inv.version {
        println!(
            "vmedia mkisofs {} (xorriso -as mkisofs / genisoimage compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut spec = match translate(&inv) {
        Ok(spec) => spec,
        Err(Failure::Usage(e)) => return Ok(usage_failure(&e)),
        Err(Failure::Other(e)) => return Err(e),
    };
    for dropped in &inv.dropped {
        eprintln!(
            "vmedia mkisofs: warning: left out Mac-only option {dropped} ({})",
            options::DROP_HFSPLUS
        );
    }
    if inv.verbose {
        for no_op in &inv.no_ops {
            eprintln!("vmedia mkisofs: {no_op}: accepted, no effect (as in xorriso)");
        }
    }
    if inv.print_size {
        let plan =
            vmedia_iso::write::plan(&spec, &NoProgress).context("cannot lay out the image")?;
        println!("{}", plan.sectors());
        return Ok(ExitCode::SUCCESS);
    }
    let out = common::output_path(inv.output.as_deref().expect("checked by the parser"))?;
    // Like mkisofs, -o replaces an existing file and nothing is flushed unless VMEDIA_SYNC=1.
    spec.durability = crate::env::durability(false);
    let report = common::write_with_bar(&spec, &out, OverwritePolicy::Replace, inv.quiet)?;
    if !inv.quiet {
        eprintln!("{}", common::summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn usage_failure(e: &UsageError) -> ExitCode {
    eprintln!("vmedia mkisofs: {e}\nTry `vmedia mkisofs -help` for the supported options.");
    ExitCode::from(EXIT_USAGE)
}

enum Failure {
    Usage(UsageError),
    Other(anyhow::Error),
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Maps the parsed command line onto the writer's `IsoSpec`.
fn translate(inv: &Invocation) -> Result<IsoSpec, Failure> {
    let mut spec = IsoSpec::default();
    spec.volume.volume_id = inv.volume_id.clone();
    spec.volume.volume_set_id = inv.volume_set.clone();
    spec.volume.publisher = inv.publisher.clone();
    spec.volume.preparer = inv.preparer.clone();
    spec.volume.application = inv.application.clone();
    spec.volume.system_id = inv.system_id.clone();
    spec.volume.copyright_file = inv.copyright_file.clone();
    spec.volume.abstract_file = inv.abstract_file.clone();
    spec.volume.biblio_file = inv.biblio_file.clone();
    spec.volume.modification_date = inv.modification_date.clone();

    let naming = &mut spec.naming;
    if let Some(level) = inv.iso_level {
        naming.iso_level = level;
    }
    naming.joliet = inv.joliet;
    naming.joliet_long = inv.joliet_long;
    naming.rock_ridge = match inv.rock_ridge {
        RockRidge::Off => None,
        RockRidge::Plain => Some(RockRidgeMode::Faithful),
        RockRidge::Rationalized => Some(RockRidgeMode::Rational),
    };
    naming.omit_version_numbers = inv.names.omit_version_number;
    naming.omit_trailing_period = inv.names.omit_period;
    naming.allow_lowercase = inv.names.allow_lowercase;
    naming.relaxed_filenames = inv.names.relaxed_filenames;
    naming.allow_leading_dots = inv.names.allow_leading_dots;
    naming.allow_multidot = inv.names.allow_multidot;
    naming.untranslated_filenames = inv.names.untranslated_filenames;
    naming.full_iso9660_filenames = inv.names.full_iso9660_filenames;
    naming.max_iso9660_filenames = inv.names.max_iso9660_filenames;
    // xorriso -as mkisofs has -D on by default: deep folders stay in place unless
    // -rr_reloc_dir / -hide-rr-moved ask for relocation (then -D still wins).
    naming.no_deep_relocation = inv.names.no_deep_relocation || !inv.names.deep_relocation;
    naming.hide_rr_moved = inv.names.hide_rr_moved;

    for graft in &inv.grafts {
        spec.sources.push(vmedia_iso::spec::GraftPoint {
            iso_path: match &graft.iso_path {
                Some(p) => common::absolute_iso_path(p),
                None => "/".to_string(),
            },
            host_path: graft.host_path.clone(),
        });
    }
    for exclude in &inv.excludes {
        spec.excludes.push(match exclude {
            Exclude::Glob(g) => Matcher::Glob(g.clone()),
            Exclude::HostPath(p) => Matcher::HostPath(p.clone()),
        });
    }
    for pattern in &inv.hide {
        spec.hide.push(Hide {
            tree: HideTree::Iso9660,
            matcher: Matcher::Glob(pattern.clone()),
        });
    }
    for pattern in &inv.hide_joliet {
        spec.hide.push(Hide {
            tree: HideTree::Joliet,
            matcher: Matcher::Glob(pattern.clone()),
        });
    }
    for pattern in &inv.hfsplus.hide {
        spec.hide.push(Hide {
            tree: HideTree::HfsPlus,
            matcher: Matcher::Glob(pattern.clone()),
        });
    }
    if let Some(revision) = inv.udf {
        spec.udf = Some(vmedia_iso::spec::UdfSpec { revision });
    }
    if inv.hfsplus.enabled {
        spec.hfsplus = Some(HfsPlusSpec {
            serial_number: inv.hfsplus.serial_number,
            creator_types: inv
                .hfsplus
                .creator_types
                .iter()
                .map(|(creator, file_type, path)| HfsCreatorType {
                    iso_path: common::absolute_iso_path(path),
                    creator: *creator,
                    file_type: *file_type,
                })
                .collect(),
            blessed: inv
                .hfsplus
                .blessed
                .iter()
                .map(|(blessing, path)| HfsBless {
                    blessing: *blessing,
                    iso_path: common::absolute_iso_path(path),
                })
                .collect(),
            apm_block_size: inv.hfsplus.apm_block_size,
            bless_host_dirs: inv.hfsplus.bless_host_dirs.clone(),
        });
    }
    spec.follow_symlinks = inv.follow_links;
    spec.ownership = Ownership {
        uid: inv.uid,
        gid: inv.gid,
        file_mode: inv.file_mode,
        dir_mode: inv.dir_mode,
    };
    if let Some(file) = &inv.sort_file {
        spec.sort = common::read_sort_file(file)?;
    }
    for (weight, path) in &inv.sort_weights {
        spec.sort.push(SortRule {
            pattern: common::absolute_iso_path(path),
            weight: *weight,
        });
    }

    // Like xorriso, the catalog is a visible /boot.catalog unless -c names it or
    // --boot-catalog-hide hides it.
    spec.boot.catalog_path = match (&inv.boot_catalog, inv.boot.is_empty()) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(DEFAULT_BOOT_CATALOG.to_string()),
        (None, true) => None,
    };
    spec.boot.catalog_hidden = inv.boot_catalog_hide;
    for opts in &inv.boot {
        let image = match (&opts.image, opts.appended_partition) {
            (_, Some(n)) => BootImage::AppendedPartition(n),
            (Some(path), None) => BootImage::IsoPath(path.clone()),
            (None, None) => return Err(missing_boot_image()),
        };
        let platform = Platform::from_id(opts.platform.unwrap_or(options::PLATFORM_X86));
        let mut entry = BootEntry::new(platform, image);
        if opts.no_emulation && opts.hard_disk_emulation {
            return Err(UsageError(
                "-no-emul-boot and -hard-disk-boot given for the same boot image".into(),
            )
            .into());
        }
        if opts.no_emulation {
            entry.emulation = Emulation::NoEmulation;
        } else if opts.hard_disk_emulation {
            entry.emulation = Emulation::HardDisk;
        }
        entry.load_size = match opts.load_size {
            None => LoadSize::Default,
            Some(options::LoadSize::Sectors(n)) => LoadSize::Sectors(n),
            Some(options::LoadSize::Full) => LoadSize::WholeImage,
        };
        entry.boot_info_table = opts.boot_info_table;
        entry.grub2_boot_info = opts.grub2_boot_info;
        entry.load_segment = opts.load_segment.unwrap_or(0);
        entry.id_string = opts.id.clone();
        entry.bootable = !opts.not_bootable;
        spec.boot.entries.push(entry);
    }

    let hybrid = &mut spec.hybrid;
    hybrid.system_area = match (&inv.isohybrid_mbr, &inv.grub2_mbr, &inv.embedded_boot) {
        (Some(f), _, _) => Some(SystemArea {
            source: BlobSource::File(f.clone()),
            kind: SystemAreaKind::IsohybridMbr,
        }),
        (_, Some(f), _) => Some(SystemArea {
            source: BlobSource::File(f.clone()),
            kind: SystemAreaKind::Grub2Mbr,
        }),
        (_, _, Some(f)) => Some(SystemArea {
            source: BlobSource::File(f.clone()),
            kind: SystemAreaKind::Generic,
        }),
        _ => None,
    };
    hybrid.partition_offset = inv.partition_offset.unwrap_or(0);
    hybrid.gpt_basdat = inv.isohybrid_gpt_basdat;
    hybrid.efi_boot_part = inv.efi_boot_part.as_ref().map(|target| match target {
        None => EfiBootPart::BootImage,
        Some(file) => EfiBootPart::File(file.clone()),
    });
    for part in &inv.append_partitions {
        hybrid.appended.push(AppendedPartition {
            number: part.number,
            part_type: part.type_code,
            source: BlobSource::File(part.file.clone()),
        });
    }
    hybrid.appended_as_gpt = inv.appended_part_as_gpt;
    hybrid.iso_mbr_part_type = inv.iso_mbr_part_type;
    hybrid.protective_msdos_label = inv.protective_msdos_label;
    hybrid.mbr_force_bootable = inv.mbr_force_bootable;
    hybrid.isohybrid_apm = inv.hfsplus.isohybrid_apm;

    spec.date = common::source_date_epoch()?;
    spec.pad_sectors = if inv.pad {
        vmedia_iso::spec::DEFAULT_PAD_SECTORS
    } else {
        0
    };
    spec.integrity = IntegritySpec {
        md5: !inv.no_checksums,
        sha256: !inv.no_checksums,
        signing_key: inv.sign_key.clone(),
    };
    Ok(spec)
}

/// The parser gives every boot entry an image; this keeps the match total without a panic.
fn missing_boot_image() -> Failure {
    UsageError("a boot entry has no image (-b or -e)".into()).into()
}

const HELP: &str = "\
vmedia mkisofs: write an ISO 9660 image with xorriso -as mkisofs / genisoimage options

Usage: vmedia mkisofs [OPTIONS] -o OUT.iso PATHSPEC...

A script that runs `xorriso -as mkisofs ARGS` or `genisoimage ARGS` works unchanged with
`vmedia mkisofs ARGS` (leading `-no_rc -as mkisofs` words are accepted too). Multi-letter
options take one or two dashes, one-letter options one. `-o` replaces an existing file.
Differences from the peers: embedded checksums (checkisomd5 MD5 + SHA-256) are ON by default
(--no-checksums turns them off); options vmedia does not implement are refused by name
(exit code 2), never skipped.

Inputs
  PATHSPEC                folder (contents merged at the root) or file
  -graft-points           PATHSPECs may be ISO_PATH=HOST_PATH (escape '=' as '\\=')
  -path-list FILE         read PATHSPECs from FILE, one per line
  -m GLOB                 leave out matching files (name or whole path)
  -x PATH, -exclude PATH  leave out PATH; -exclude-list FILE: one glob per line
  -f, -follow-links       store what symbolic links point at
  -hide GLOB              hide from the ISO 9660 / Rock Ridge tree
  -hide-joliet GLOB       hide from the Joliet tree
  -sort FILE              `PATH WEIGHT` lines: higher weights first on disc
  --sort-weight W PATH    weight for one ISO path
Trees and names
  -R, -rock / -r, -rational-rock   Rock Ridge (as on disk / rationalized owners and modes)
  --norock                no Rock Ridge
  -J, -joliet; -joliet-long        Joliet tree (64 / 103 characters)
  -iso-level 1..4         default 1; files of 4 GiB or more need 3
  -l, -d, -N, -L, -U, -allow-lowercase, -relaxed-filenames, -allow-multidot,
  -max-iso9660-filenames                ISO 9660 name relaxations as mkisofs
  -D (default, as xorriso), -rr_reloc_dir rr_moved|.rr_moved, -hide-rr-moved
                          relocate folders deeper than 8 levels (ECMA-119 strict readers)
  -uid N, -gid N, -file-mode MODE, -dir-mode MODE  ownership overrides
  -pad (default) / -no-pad
Volume
  -V, -volid; -volset; -publisher, -P; -preparer, -p; -A, -appid; -sysid;
  -copyright, -abstract, -biblio FILE
  --modification-date=YYYYMMDDhhmmsscc, -volume_date uuid TIME   (GRUB's volume UUID)
  SOURCE_DATE_EPOCH (environment): all dates and GUIDs fixed, byte-identical rebuilds
El Torito
  -b, -eltorito-boot PATH  BIOS boot image     -e PATH   EFI boot image
  --efi-boot PATH          EFI entry of its own
  -eltorito-alt-boot       next -b/-e starts a new entry
  -eltorito-platform x86|PPC|Mac|efi|N
  -no-emul-boot, -hard-disk-boot, -boot-load-size N|full, -boot-load-seg SEG,
  -boot-info-table, --grub2-boot-info, -eltorito-id TEXT, -no-boot
  -c, -eltorito-catalog PATH (default /boot.catalog); --boot-catalog-hide
  -e --interval:appended_partition_N:all::   the EFI image is appended partition N
Hybrid (USB) layout
  -isohybrid-mbr FILE, --grub2-mbr FILE, -G/--embedded-boot/-generic-boot FILE
  --protective-msdos-label, -isohybrid-gpt-basdat, --mbr-force-bootable,
  -iso_mbr_part_type default|0xNN|GUID, -partition_offset N,
  -append_partition N TYPE FILE, -appended_part_as_gpt,
  -efi-boot-part FILE|--efi-boot-image
UDF bridge (Windows media, DVDs)
  -udf                    a UDF 1.02 file system over the same file data (ISO 9660 + UDF)
  -udf-revision 1.02|2.01 the UDF revision (implies -udf)
HFS+ hybrid (Intel Macs; what grub-mkrescue passes)
  -hfsplus                an HFS+ volume over the same file data, in an Apple Partition Map
                          (and in the GPT when there is one)
  -apm-block-size 512|2048   APM block size (default: 2048 beside a GPT, else 512)
  -hfsplus-file-creator-type CREATOR TYPE PATH   Finder codes of a file
  -hfs-bless-by p|i|s|9|x PATH   bless a folder/file (ppc_bootdir, intel_bootfile,
                          show_folder, os9_folder, osx_folder)
  -hfs-bless DISK_PATH    bless the folder made from this host folder as ppc_bootdir
  -hfsplus-serial-no HEX16   volume id (default derived from SOURCE_DATE_EPOCH)
  -hfsplus-block-size 2048, -hide-hfsplus GLOB
  -isohybrid-apm-hfsplus  with -isohybrid-mbr: an APM entry per EFI image (debian-cd)
Integrity
  --md5, -md5             checksums (already the default)
  --no-checksums          no embedded MD5/SHA-256
  --sign-key KEY.pem      embed an ed25519 signature
Program
  -print-size             print the image size in 2048-byte sectors and stop
  -quiet, -v/-verbose, -help, -version
Accepted with no effect (as in the peers): -cache-inodes, -no-cache-inodes, --no_rc,
  --no-emul-toc, -input-charset/-output-charset utf-8, -checksum_algorithm_iso LIST
  (it only feeds jigdo output)
vmedia only
  --drop-hfsplus          leave out every Mac-only HFS+/APM option (-hfsplus, -apm-block-size,
                          -hfsplus-file-creator-type, -hfs-bless-by, -isohybrid-apm-hfsplus...)
                          with a warning
Refused (not implemented): multi-session (-M, -C), zisofs (-z), TRANS.TBL (-T),
  -isohybrid-gpt-hfsplus, -hide-hfsplus-list,
  -appended_part_as_apm (see --drop-hfsplus), jigdo, non-x86 boot
  (SPARC, MIPS, PowerPC, HP-PA, Alpha), ACLs and xattrs, --gpt_disk_guid, -eltorito-selcrit

Examples:
  vmedia mkisofs -o out.iso -R -J -V MYDISC ./tree
  vmedia mkisofs -o boot.iso -R -J -b isolinux/isolinux.bin -c isolinux/boot.cat \\
      -no-emul-boot -boot-load-size 4 -boot-info-table \\
      -eltorito-alt-boot -e boot/grub/efi.img -no-emul-boot \\
      -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin -isohybrid-gpt-basdat ./tree
  vmedia mkisofs -o rescue.iso -R --grub2-mbr /usr/lib/grub/i386-pc/boot_hybrid.img \\
      -b boot/grub/i386-pc/eltorito.img -no-emul-boot -boot-load-size 4 -boot-info-table \\
      --grub2-boot-info -hfsplus -apm-block-size 2048 \\
      -hfs-bless-by i /System/Library/CoreServices/boot.efi \\
      --efi-boot efi.img -efi-boot-part --efi-boot-image --protective-msdos-label ./tree
  vmedia mkisofs -print-size -R -J ./tree
";
