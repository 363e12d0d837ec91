//! `IsoSpec`: everything the writer needs to know about the image to make.
//!
//! The CLI (`vmedia mkisofs`, `iso create`, `iso seed`, `iso repack`) fills an `IsoSpec` and hands
//! it to [`crate::write::write_image`]. Every field has a default matching what
//! `xorriso -as mkisofs` / genisoimage do when the matching option is absent, so
//! `IsoSpec::default()` plus `sources` is a plain `mkisofs -o out.iso dir`.
//!
//! Option names in the docs are the mkisofs/xorriso spellings a field stands for.

use serde::Serialize;
use std::path::PathBuf;
use vmedia_io::Durability;

/// The whole description of an image to write.
#[derive(Debug, Clone)]
pub struct IsoSpec {
    /// Identifier strings of the primary (and Joliet) volume descriptor.
    pub volume: VolumeIds,
    /// File name rules: ISO level, Joliet, Rock Ridge, relaxations.
    pub naming: Naming,
    /// Host files and folders to put in the image (`pathspec` / `-graft-points`), in order.
    /// Later grafts onto the same ISO path merge (folders) or replace (files).
    pub sources: Vec<GraftPoint>,
    /// Files whose content is held in memory (seed `user-data`, repack overrides).
    /// Added after `sources`; replaces a source file at the same ISO path.
    pub mem_files: Vec<MemFile>,
    /// Files whose content is a byte range of a host file (repack: a file of the old ISO
    /// copied without extracting it). Added after `mem_files`, replacing like them.
    pub range_files: Vec<RangeFile>,
    /// Host files and folders left out (`-m`, `-x`, `-exclude`, `-exclude-list`).
    pub excludes: Vec<Matcher>,
    /// Names present in the data but absent from one directory tree (`-hide`, `-hide-joliet`).
    pub hide: Vec<Hide>,
    /// Follow symbolic links and store what they point at (`-f`, `-follow-links`).
    /// When false (default) links are stored as Rock Ridge SL entries, and skipped without RR.
    pub follow_symlinks: bool,
    /// Owner and permission overrides (`-uid`, `-gid`, `-file-mode`, `-dir-mode`).
    pub ownership: Ownership,
    /// Data placement weights (`-sort FILE`): higher weight is written first (lower LBA).
    /// Files no rule matches get weight 0. Boot images get `i32::MAX` unless a rule names them.
    pub sort: Vec<SortRule>,
    /// El Torito boot catalog and entries (`-b`, `-e`, `-c`, `-eltorito-alt-boot`, ...).
    pub boot: BootSpec,
    /// MBR / GPT / appended partitions that make the image bootable from a USB stick.
    pub hybrid: HybridSpec,
    /// Reproducible-build time (`SOURCE_DATE_EPOCH`, `--date`), Unix seconds (UTC).
    /// When set: all volume dates are this time, every UUID-like field (GPT disk and partition
    /// GUIDs, the `--modification-date` style volume UUID) is derived from it and the content,
    /// and file times later than it are clamped to it. When `None`, volume dates are "now" and
    /// GUIDs are random.
    pub date: Option<i64>,
    /// Zero sectors appended after the image data (`-pad` = 150, `-no-pad` = 0).
    /// Default 150 as mkisofs: readers that read ahead past the end stay inside the file,
    /// and checkisomd5 skips the last 15 sectors.
    pub pad_sectors: u32,
    /// Embedded checksums / signature implanted into the finished image (`--md5` style).
    pub integrity: IntegritySpec,
    /// `-hfsplus`: an HFS+ filesystem over the same file data, described by an Apple
    /// Partition Map (and the GPT when there is one), as xorriso writes for Intel Macs.
    pub hfsplus: Option<HfsPlusSpec>,
    /// `-udf` / `--udf`: a UDF file system over the same file data (an ISO 9660 + UDF bridge,
    /// as Windows installation media and DVDs are made).
    pub udf: Option<UdfSpec>,
    /// Whether the image is flushed to stable storage before it is renamed into place.
    /// Default `PageCache`, as genisoimage and xorriso; the CLI asks for `Flush` with `--sync`
    /// or `VMEDIA_SYNC=1`. The image appears under its name only when complete either way.
    pub durability: Durability,
}

impl Default for IsoSpec {
    fn default() -> Self {
        IsoSpec {
            volume: VolumeIds::default(),
            naming: Naming::default(),
            sources: Vec::new(),
            mem_files: Vec::new(),
            range_files: Vec::new(),
            excludes: Vec::new(),
            hide: Vec::new(),
            follow_symlinks: false,
            ownership: Ownership::default(),
            sort: Vec::new(),
            boot: BootSpec::default(),
            hybrid: HybridSpec::default(),
            date: None,
            pad_sectors: DEFAULT_PAD_SECTORS,
            integrity: IntegritySpec::default(),
            hfsplus: None,
            udf: None,
            durability: Durability::PageCache,
        }
    }
}

/// mkisofs's default `-pad`: 300 KiB of zeros.
pub const DEFAULT_PAD_SECTORS: u32 = 150;

/// Identifier strings of the volume descriptors. Too long values are an error (not truncated);
/// the bytes are written as given, space padded (as xorriso does), and as UCS-2 in Joliet.
#[derive(Debug, Clone, Default)]
pub struct VolumeIds {
    /// `-V`: volume label, up to 32 bytes (16 UCS-2 characters in Joliet). Default "CDROM".
    pub volume_id: Option<String>,
    /// `-volset`: up to 128 bytes.
    pub volume_set_id: Option<String>,
    /// `-publisher` / `-P`: up to 128 bytes.
    pub publisher: Option<String>,
    /// `-preparer` / `-p`: up to 128 bytes. Default names vmedia.
    pub preparer: Option<String>,
    /// `-A` / `-appid`: up to 128 bytes.
    pub application: Option<String>,
    /// `-sysid`: up to 32 bytes. Default "LINUX".
    pub system_id: Option<String>,
    /// `-copyright`: up to 37 bytes, a file name in the root.
    pub copyright_file: Option<String>,
    /// `-abstract`: up to 37 bytes.
    pub abstract_file: Option<String>,
    /// `-biblio`: up to 37 bytes.
    pub biblio_file: Option<String>,
    /// `--modification-date=YYYYMMDDhhmmsscc` (16 digits): the volume modification date, which
    /// GRUB uses as the volume UUID. Overrides `IsoSpec::date` for that one field.
    pub modification_date: Option<String>,
}

/// How names are made and which directory trees are written.
#[derive(Debug, Clone)]
pub struct Naming {
    /// `-iso-level`: 1 (8.3 names, one extent per file), 2 (31-char names), 3 (31-char names,
    /// multi-extent files over 4 GiB), 4 (ISO 9660:1999, version 2 descriptor, 207-byte names).
    /// Default 1, as mkisofs. Files of 4 GiB or more need level 3 or 4.
    pub iso_level: u8,
    /// `-J`: write a Joliet supplementary tree (UCS-2, 64 characters per name).
    pub joliet: bool,
    /// `-joliet-long`: allow 103 UCS-2 characters per Joliet name.
    pub joliet_long: bool,
    /// `-R` (Faithful) or `-r` (Rational): write Rock Ridge (RRIP 1.12) entries.
    pub rock_ridge: Option<RockRidgeMode>,
    /// `-N` / `-omit-version-number`: no ";1" after ISO 9660 file names.
    pub omit_version_numbers: bool,
    /// `-d` / `-omit-period`: no trailing "." on file names without an extension.
    pub omit_trailing_period: bool,
    /// `-allow-lowercase`: keep lower-case letters in ISO 9660 names.
    pub allow_lowercase: bool,
    /// `-relaxed-filenames`: allow any 7-bit printable ASCII except '/' in ISO 9660 names.
    pub relaxed_filenames: bool,
    /// `-L` / `-allow-leading-dots`: keep a leading '.' instead of mapping it to '_'.
    pub allow_leading_dots: bool,
    /// `-allow-multidot`: keep every '.' (normally all but the last become '_').
    pub allow_multidot: bool,
    /// `-U` / `-untranslated-filenames`: the union of the relaxations above, no version
    /// numbers, names kept as far as the 31-character limit (implies `allow_*`, `-N`, `-d`).
    pub untranslated_filenames: bool,
    /// `-l` / `-full-iso9660-filenames`: 31-character names even at level 1.
    pub full_iso9660_filenames: bool,
    /// `-max-iso9660-filenames`: 37-character names (implies `-N`).
    pub max_iso9660_filenames: bool,
    /// `-D` / `-disable-deep-relocation`: write folders deeper than 8 levels in place
    /// instead of moving them to `rr_moved`.
    pub no_deep_relocation: bool,
    /// `-hide-rr-moved`: name the relocation folder `.rr_moved` (hidden in Joliet too).
    pub hide_rr_moved: bool,
}

impl Default for Naming {
    fn default() -> Self {
        Naming {
            iso_level: 1,
            joliet: false,
            joliet_long: false,
            rock_ridge: None,
            omit_version_numbers: false,
            omit_trailing_period: false,
            allow_lowercase: false,
            relaxed_filenames: false,
            allow_leading_dots: false,
            allow_multidot: false,
            untranslated_filenames: false,
            full_iso9660_filenames: false,
            max_iso9660_filenames: false,
            no_deep_relocation: false,
            hide_rr_moved: false,
        }
    }
}

/// Rock Ridge flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RockRidgeMode {
    /// `-R`: owners, modes and times as on the host.
    Faithful,
    /// `-r`: uid/gid 0, read bits for everyone, execute bits for everyone where anyone had
    /// one, write bits and set-id/sticky bits cleared (mkisofs's rational rules).
    Rational,
}

/// One host file or folder placed in the image.
#[derive(Debug, Clone)]
pub struct GraftPoint {
    /// Where it goes, absolute, '/'-separated (`"/"`, `"/boot/grub"`). A host folder grafted
    /// at an ISO path merges its contents into that folder (so `"/"` is mkisofs's plain
    /// pathspec). A host file grafted at a path ending in '/' keeps its own name inside that
    /// folder; otherwise the last component is its ISO name. Missing parent folders are made.
    pub iso_path: String,
    /// The host file or folder.
    pub host_path: PathBuf,
}

/// A file whose content the caller holds in memory.
#[derive(Debug, Clone)]
pub struct MemFile {
    /// Absolute '/'-separated ISO path; missing parent folders are made.
    pub iso_path: String,
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits for Rock Ridge (e.g. 0o644).
    pub mode: u32,
    /// Modification time, Unix seconds; `None` = `IsoSpec::date` or now.
    pub mtime: Option<i64>,
}

/// A file whose content is `length` bytes at `offset` in a host file.
#[derive(Debug, Clone)]
pub struct RangeFile {
    /// Absolute '/'-separated ISO path; missing parent folders are made.
    pub iso_path: String,
    /// The host file holding the bytes (e.g. the ISO being repacked).
    pub host_path: PathBuf,
    /// Byte offset of the content in `host_path`.
    pub offset: u64,
    /// Content length in bytes.
    pub length: u64,
    /// Permission bits for Rock Ridge.
    pub mode: u32,
    /// Modification time, Unix seconds; `None` = `IsoSpec::date` or now.
    pub mtime: Option<i64>,
}

/// Selects host files or ISO entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `-m GLOB`: shell glob (`*`, `?`, `[...]`) matched against the file name and against the
    /// whole host path.
    Glob(String),
    /// `-x PATH` / `-exclude PATH`: this exact host path (and everything under it).
    HostPath(PathBuf),
    /// An exact ISO path such as `/isolinux/boot.cat` (`-hide` with an ISO path).
    IsoPath(String),
}

/// A name hidden from one directory tree while its data stays in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hide {
    /// Which tree loses the name.
    pub tree: HideTree,
    /// What to hide.
    pub matcher: Matcher,
}

/// Directory trees that can hide a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HideTree {
    /// `-hide`: the ISO 9660 (and Rock Ridge) tree.
    Iso9660,
    /// `-hide-joliet`: the Joliet tree.
    Joliet,
    /// `-hide-hfsplus`: the HFS+ tree.
    HfsPlus,
}

/// Owner and permission overrides applied to Rock Ridge attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// `-uid`: owner of every entry.
    pub uid: Option<u32>,
    /// `-gid`: group of every entry.
    pub gid: Option<u32>,
    /// `-file-mode`: permission bits of every non-directory.
    pub file_mode: Option<u32>,
    /// `-dir-mode`: permission bits of every directory.
    pub dir_mode: Option<u32>,
}

/// One line of a `-sort` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortRule {
    /// Host path or ISO path, glob characters allowed; a folder applies to what it holds.
    pub pattern: String,
    /// Higher weight = earlier (lower LBA).
    pub weight: i32,
}

/// El Torito boot catalog.
#[derive(Debug, Clone, Default)]
pub struct BootSpec {
    /// `-c`: ISO path of the boot catalog file. `None` with boot entries = catalog not
    /// visible in any directory tree (as xorriso does without `-c`).
    pub catalog_path: Option<String>,
    /// `-boot-catalog-hide` / `--boot-catalog-hide`: keep the catalog out of the trees even
    /// when `catalog_path` is set.
    pub catalog_hidden: bool,
    /// Boot entries in option order. The first is the catalog's default (initial) entry; each
    /// later one gets a section (a new section whenever the platform changes), as mkisofs
    /// does for `-eltorito-alt-boot`.
    pub entries: Vec<BootEntry>,
}

/// One El Torito boot entry.
#[derive(Debug, Clone)]
pub struct BootEntry {
    /// `-eltorito-platform` / implied by `-b` (x86) and `-e` (EFI).
    pub platform: Platform,
    /// Where the boot image comes from.
    pub image: BootImage,
    /// `-no-emul-boot`, `-hard-disk-boot`, or floppy (the mkisofs default for `-b`).
    pub emulation: Emulation,
    /// `-boot-load-size`.
    pub load_size: LoadSize,
    /// `-boot-info-table`: patch bytes 8..64 of the image copy in the ISO.
    pub boot_info_table: bool,
    /// `--grub2-boot-info`: patch the image's LBA*4+5 at byte 2548 (GRUB's El Torito core).
    pub grub2_boot_info: bool,
    /// `-boot-load-seg`: real-mode segment; 0 = the BIOS default 0x7C0.
    pub load_segment: u16,
    /// `-eltorito-id`: the section header's 28-byte ID string (written as ASCII, padded).
    pub id_string: Option<String>,
    /// False for `-no-boot`: the entry is present but marked not bootable.
    pub bootable: bool,
}

impl BootEntry {
    /// A bootable entry with mkisofs's defaults for its platform: BIOS images get floppy
    /// emulation unless changed, EFI images no emulation and their whole size.
    pub fn new(platform: Platform, image: BootImage) -> Self {
        let emulation = match platform {
            Platform::X86 => Emulation::Floppy,
            _ => Emulation::NoEmulation,
        };
        BootEntry {
            platform,
            image,
            emulation,
            load_size: LoadSize::Default,
            boot_info_table: false,
            grub2_boot_info: false,
            load_segment: 0,
            id_string: None,
            bootable: true,
        }
    }
}

/// El Torito platform IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Platform {
    /// 0x00, BIOS.
    X86,
    /// 0x01.
    PowerPc,
    /// 0x02.
    Mac,
    /// 0xEF, UEFI.
    Efi,
    /// Any other platform byte.
    Other(u8),
}

impl Platform {
    /// The catalog byte.
    pub fn id(self) -> u8 {
        match self {
            Platform::X86 => 0x00,
            Platform::PowerPc => 0x01,
            Platform::Mac => 0x02,
            Platform::Efi => 0xEF,
            Platform::Other(b) => b,
        }
    }
    /// The platform for a catalog byte.
    pub fn from_id(id: u8) -> Self {
        match id {
            0x00 => Platform::X86,
            0x01 => Platform::PowerPc,
            0x02 => Platform::Mac,
            0xEF => Platform::Efi,
            other => Platform::Other(other),
        }
    }
}

/// Where a boot image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootImage {
    /// A file of the image tree (`-b isolinux/isolinux.bin`, `-e efi.img`), ISO path with or
    /// without a leading '/'. Its data extent is what the catalog points at.
    IsoPath(String),
    /// `--interval:appended_partition_N:all::`: the whole appended partition N
    /// (see `HybridSpec::appended`).
    AppendedPartition(u8),
    /// Bytes held in memory (repack of an image whose boot image is not a file), written as
    /// a hidden extent.
    Bytes(Vec<u8>),
}

/// El Torito media emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Emulation {
    /// `-no-emul-boot`.
    NoEmulation,
    /// Floppy emulation; the media type (1.2/1.44/2.88 MB) follows the image size, which
    /// must be exactly one of those.
    Floppy,
    /// `-hard-disk-boot`: the image holds an MBR with one partition.
    HardDisk,
}

/// `-boot-load-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSize {
    /// xorriso's defaults: 4 sectors of 512 bytes for a BIOS no-emulation image, the whole
    /// image (at most 65535 sectors) for other platforms, 1 for emulated media.
    Default,
    /// This many 512-byte sectors.
    Sectors(u16),
    /// `-boot-load-size full`: the whole image, rounded up (at most 65535 sectors).
    WholeImage,
}

/// Hybrid (USB-bootable) layout: what goes into the first 32 KiB and after the ISO.
#[derive(Debug, Clone, Default)]
pub struct HybridSpec {
    /// The boot code for the system area (first 32 KiB), with its semantics.
    pub system_area: Option<SystemArea>,
    /// `-partition_offset N`: the ISO 9660 filesystem also starts at 2048-byte block N
    /// (Debian/Ubuntu use 16), as xorriso does: a second volume descriptor set and directory
    /// tree whose addresses are relative to that block, so MBR partition 1 (starting there)
    /// can be mounted on its own. 0 = off.
    pub partition_offset: u32,
    /// `-isohybrid-gpt-basdat`: a GPT with the ISO as a Basic Data partition and each EFI
    /// boot image as an EFI System partition, plus the backup GPT at the end.
    pub gpt_basdat: bool,
    /// `-efi-boot-part`: an EFI System partition in the GPT (and MBR).
    pub efi_boot_part: Option<EfiBootPart>,
    /// `-append_partition N TYPE FILE`, written after the ISO, aligned to 2 KiB.
    pub appended: Vec<AppendedPartition>,
    /// `-appended_part_as_gpt`: describe appended partitions in a GPT (the MBR becomes
    /// protective) instead of MBR entries.
    pub appended_as_gpt: bool,
    /// `-iso_mbr_part_type`: type of the MBR partition covering the ISO (default 0x17 when
    /// there are appended partitions, 0x00/0x17 per xorriso, 0xEE with a GPT).
    pub iso_mbr_part_type: Option<PartType>,
    /// `--protective-msdos-label`: an MBR partition 1 of type 0x00 starting at sector 1 that
    /// covers the image (what grub-mkrescue asks for).
    pub protective_msdos_label: bool,
    /// `--mbr-force-bootable`: set the bootable flag on an MBR partition even when it is
    /// not the one xorriso would mark.
    pub mbr_force_bootable: bool,
    /// `-isohybrid-apm-hfsplus` (with an isohybrid MBR): an Apple Partition Map with one
    /// "EFI" Apple_HFS entry per EFI boot image, as isohybrid and xorriso write for Intel Macs
    /// (debian-cd passes it). Not combinable with `IsoSpec::hfsplus`.
    pub isohybrid_apm: bool,
}

/// The first 32 KiB of the image and how to patch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemArea {
    /// Where the template bytes come from (at most 32768 are used).
    pub source: BlobSource,
    /// How to treat them.
    pub kind: SystemAreaKind,
}

/// Semantics of a system-area template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SystemAreaKind {
    /// `-isohybrid-mbr FILE` (isolinux `isohdpfx.bin`): the first 432 bytes are boot code;
    /// the 512-byte LBA of the El Torito BIOS image goes at byte 432, a partition table
    /// with a bootable partition 1 covering the image follows.
    IsohybridMbr,
    /// `-G` / `--embedded-boot` / `-generic-boot FILE`: copied as-is; the partition table
    /// is rewritten only when other options ask for partitions.
    Generic,
    /// `--grub2-mbr FILE` (GRUB's `boot_hybrid.img`): boot code as-is; the 512-byte LBA of
    /// the El Torito BIOS image + 4 goes at byte 0x1B0 (as an 8-byte little-endian number),
    /// as xorriso does.
    Grub2Mbr,
}

/// Bytes from a host file or from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// A host file, read whole.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

/// `-efi-boot-part`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EfiBootPart {
    /// `--efi-boot-image`: the EFI El Torito boot image (a file of the tree) is the partition.
    BootImage,
    /// A FAT image file appended after the ISO.
    File(PathBuf),
}

/// One partition appended after the ISO data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedPartition {
    /// MBR slot 1..=4 (also its GPT entry number).
    pub number: u8,
    /// Partition type.
    pub part_type: PartType,
    /// Content (padded to a multiple of 2 KiB).
    pub source: BlobSource,
}

/// A partition type given as an MBR byte or a GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// MBR type byte (`0xef`, `0x83`...). In a GPT, 0xEF maps to the EFI System GUID and
    /// everything else to Basic Data, as xorriso does.
    Mbr(u8),
    /// GPT type GUID, in its mixed-endian on-disk byte order.
    Gpt([u8; 16]),
}

/// GPT type GUID of an EFI System partition (C12A7328-F81F-11D2-BA4B-00A0C93EC93B).
pub const GPT_TYPE_EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type GUID of a Basic Data partition (EBD0A0A2-B9E5-4433-87C0-68B6B72699C7).
pub const GPT_TYPE_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

impl PartType {
    /// Parses what users type after `-append_partition N`: `0xef`, `ef` (hex), or a GUID
    /// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub fn parse(text: &str) -> Option<PartType> {
        let text = text.trim();
        if text.len() == 36 {
            return parse_guid(text).map(PartType::Gpt);
        }
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            return u8::from_str_radix(hex, 16).ok().map(PartType::Mbr);
        }
        if text.is_empty() || text.len() > 2 {
            return None;
        }
        u8::from_str_radix(text, 16).ok().map(PartType::Mbr)
    }

    /// The MBR type byte: the byte itself, or 0xEF for the EFI System GUID and 0x83 for others.
    pub fn mbr_byte(self) -> u8 {
        match self {
            PartType::Mbr(b) => b,
            PartType::Gpt(guid) if Some(guid) == parse_guid(GPT_TYPE_EFI_SYSTEM) => 0xEF,
            PartType::Gpt(_) => 0x83,
        }
    }

    /// The GPT type GUID (on-disk byte order).
    pub fn gpt_guid(self) -> [u8; 16] {
        match self {
            PartType::Gpt(guid) => guid,
            PartType::Mbr(0xEF) => parse_guid(GPT_TYPE_EFI_SYSTEM).unwrap_or([0; 16]),
            PartType::Mbr(_) => parse_guid(GPT_TYPE_BASIC_DATA).unwrap_or([0; 16]),
        }
    }
}

/// Parses a textual GUID into the mixed-endian on-disk byte order GPT uses
/// (first three groups little-endian, last two as written).
pub fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.len() != 5
        || [8, 4, 4, 4, 12] != groups.iter().map(|g| g.len()).collect::<Vec<_>>()[..]
    {
        return None;
    }
    let hex: String = groups.concat();
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    Some(out)
}

/// The HFS+ hybrid (`-hfsplus` and the options that shape it). The HFS+ volume shares every
/// file's data extent with the ISO 9660 tree (2048-byte allocation blocks = ISO sectors) and is
/// described by an Apple Partition Map (and by the GPT when one is written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfsPlusSpec {
    /// `-hfsplus-serial-no`: the volume's 64-bit unique id (finder info words 6 and 7).
    /// `None` = derived from `IsoSpec::date` (random without a date).
    pub serial_number: Option<[u8; 8]>,
    /// `-hfsplus-file-creator-type CREATOR TYPE PATH`: Finder creator and type codes of a file.
    pub creator_types: Vec<HfsCreatorType>,
    /// `-hfs-bless-by BLESSING PATH`: folders / files named in the volume header's finder info.
    pub blessed: Vec<HfsBless>,
    /// `-hfs-bless DISK_PATH`: the folder that came from this host folder is blessed as
    /// `ppc_bootdir` (finder info slot 0), as xorriso does.
    pub bless_host_dirs: Vec<std::path::PathBuf>,
    /// `-apm-block-size 512|2048`: block size of the Apple Partition Map. `None` = xorriso's
    /// choice: 2048 when a GPT is written too (the two must share the system area), else 512.
    pub apm_block_size: Option<u32>,
}

/// One `-hfsplus-file-creator-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfsCreatorType {
    /// ISO path of a regular file.
    pub iso_path: String,
    /// Four-byte creator code (e.g. `chrp`).
    pub creator: [u8; 4],
    /// Four-byte type code (e.g. `tbxj`).
    pub file_type: [u8; 4],
}

/// One `-hfs-bless-by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfsBless {
    /// Which finder info slot.
    pub blessing: HfsBlessing,
    /// ISO path of the folder or file.
    pub iso_path: String,
}

/// The volume header finder info slots xorriso's `-hfs-bless-by` fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HfsBlessing {
    /// `p` / `ppc_bootdir`: the folder holding the PowerPC boot file (slot 0).
    PpcBootdir,
    /// `i` / `intel_bootfile`: the Intel Mac boot file, e.g. `boot.efi` (slot 1).
    IntelBootfile,
    /// `s` / `show_folder`: the folder the Finder opens at mount (slot 2).
    ShowFolder,
    /// `9` / `os9_folder`: the Mac OS 9 system folder (slot 3).
    Os9Folder,
    /// `x` / `osx_folder`: the Mac OS X system folder (slot 5).
    OsxFolder,
}

impl HfsBlessing {
    /// Parses xorriso's spellings: `p`, `i`, `s`, `9`, `x` or the long names.
    pub fn parse(text: &str) -> Option<HfsBlessing> {
        match text {
            "p" | "ppc_bootdir" => Some(HfsBlessing::PpcBootdir),
            "i" | "intel_bootfile" => Some(HfsBlessing::IntelBootfile),
            "s" | "show_folder" => Some(HfsBlessing::ShowFolder),
            "9" | "os9_folder" => Some(HfsBlessing::Os9Folder),
            "x" | "osx_folder" => Some(HfsBlessing::OsxFolder),
            _ => None,
        }
    }

    /// Index of the 32-bit finder info word in the HFS+ volume header.
    pub fn finder_info_slot(self) -> usize {
        match self {
            HfsBlessing::PpcBootdir => 0,
            HfsBlessing::IntelBootfile => 1,
            HfsBlessing::ShowFolder => 2,
            HfsBlessing::Os9Folder => 3,
            HfsBlessing::OsxFolder => 5,
        }
    }
}

/// Embedded checksums and signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegritySpec {
    /// checkisomd5-compatible MD5 in the application-use area (`implantisomd5`).
    pub md5: bool,
    /// SHA-256 of the image, embedded.
    pub sha256: bool,
    /// ed25519 private key (PKCS#8 PEM) to sign the image with.
    pub signing_key: Option<PathBuf>,
}

/// Turns a user ISO path (`boot/grub`, `/boot/grub/`, the left side of a graft) into the
/// writer's absolute form, keeping a trailing '/' (it means "keep the host file's own name").
pub fn absolute_iso_path(path: &str) -> String {
    let trailing = path.ends_with('/') && path.len() > 1;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut out = String::from("/");
    out.push_str(&parts.join("/"));
    if trailing && !parts.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_paths_become_absolute() {
        assert_eq!(absolute_iso_path("boot/grub"), "/boot/grub");
        assert_eq!(absolute_iso_path("/boot//grub/"), "/boot/grub/");
        assert_eq!(absolute_iso_path("/"), "/");
        assert_eq!(absolute_iso_path("./x"), "/x");
    }

    #[test]
    fn guid_parses_to_mixed_endian_bytes() {
        let esp = parse_guid(GPT_TYPE_EFI_SYSTEM).unwrap();
        assert_eq!(
            esp,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert!(parse_guid("not-a-guid").is_none());
    }

    #[test]
    fn bless_names_map_to_xorriso_finder_info_slots() {
        assert_eq!(HfsBlessing::parse("i"), Some(HfsBlessing::IntelBootfile));
        assert_eq!(
            HfsBlessing::parse("osx_folder").map(HfsBlessing::finder_info_slot),
            Some(5)
        );
        assert_eq!(
            HfsBlessing::parse("9").map(HfsBlessing::finder_info_slot),
            Some(3)
        );
        assert_eq!(HfsBlessing::parse("q"), None);
    }

    #[test]
    fn part_type_accepts_xorriso_spellings() {
        assert_eq!(PartType::parse("0xef"), Some(PartType::Mbr(0xEF)));
        assert_eq!(PartType::parse("ef"), Some(PartType::Mbr(0xEF)));
        assert_eq!(PartType::parse("0x83"), Some(PartType::Mbr(0x83)));
        assert_eq!(PartType::parse("0x1ff"), None);
        assert_eq!(
            PartType::Mbr(0xEF).gpt_guid(),
            parse_guid(GPT_TYPE_EFI_SYSTEM).unwrap()
        );
        assert_eq!(
            PartType::parse(GPT_TYPE_EFI_SYSTEM).map(PartType::mbr_byte),
            Some(0xEF)
        );
    }
}

/// The UDF revision written by `--udf-revision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub enum UdfRevision {
    /// UDF 1.02 (NSR02), what Windows installation media and genisoimage write.
    #[default]
    V102,
    /// UDF 2.01 (NSR03).
    V201,
}

impl UdfRevision {
    /// Parses "1.02" or "2.01".
    pub fn parse(text: &str) -> Option<UdfRevision> {
        match text.trim() {
            "1.02" | "102" => Some(UdfRevision::V102),
            "2.01" | "201" => Some(UdfRevision::V201),
            _ => None,
        }
    }

    /// The revision as UDF records it (0x0102, 0x0201).
    pub fn bcd(self) -> u16 {
        match self {
            UdfRevision::V102 => 0x0102,
            UdfRevision::V201 => 0x0201,
        }
    }

    /// "1.02" or "2.01".
    pub fn label(self) -> &'static str {
        match self {
            UdfRevision::V102 => "1.02",
            UdfRevision::V201 => "2.01",
        }
    }
}

/// The UDF side of an ISO 9660 + UDF bridge image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdfSpec {
    pub revision: UdfRevision,
}
