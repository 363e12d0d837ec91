//! The `xorriso -as mkisofs` / genisoimage command line, parsed into a plain `Invocation`.
//!
//! Spelling rules follow xorriso: a multi-letter option may be written with one or two dashes
//! (`-joliet-long`, `--joliet-long`), a one-letter option only with one (`-J`, never `--J`);
//! `--name=value` is accepted for options that take one value. Options are matched exactly:
//! an option vmedia does not implement is refused by name, never skipped.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// Longest argument list read from `-path-list` / `-exclude-list` / `-hide-list` files; a
/// distribution script passes thousands, never millions.
pub const MAX_LIST_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why parsing stopped. Exit code 2 like every usage error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Rock Ridge flavour: `-R` keeps owners and modes, `-r` rationalizes them (owner 0, readable
/// by all, no write bits) as mkisofs does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RockRidge {
    Off,
    Plain,
    Rationalized,
}

/// One El Torito entry as the command line describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootEntryOpts {
    /// Path of the boot image inside the ISO, or `None` with `appended_partition`.
    pub image: Option<String>,
    /// `-e --interval:appended_partition_N:all::`: the image is appended partition N.
    pub appended_partition: Option<u8>,
    /// El Torito platform id (0 x86, 0xef EFI, ...); `None` = x86 for `-b`, EFI for `-e`.
    pub platform: Option<u8>,
    pub no_emulation: bool,
    pub hard_disk_emulation: bool,
    /// `-boot-load-size`: 512-byte sectors, or `full` (`Some(None)`).
    pub load_size: Option<LoadSize>,
    pub boot_info_table: bool,
    pub grub2_boot_info: bool,
    /// `-eltorito-id`: section id string.
    pub id: Option<String>,
    /// `-boot-load-seg`: real-mode load segment.
    pub load_segment: Option<u16>,
    /// `-no-boot`: present but not bootable.
    pub not_bootable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSize {
    Sectors(u16),
    /// The whole image (`-boot-load-size full`).
    Full,
}

/// `-append_partition N TYPE FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPartition {
    pub number: u8,
    pub type_code: PartitionType,
    pub file: PathBuf,
}

/// An MBR type byte or a GPT type GUID, as the writer takes it.
pub use vmedia_iso::spec::PartType as PartitionType;

/// Which inner-name style `-d`, `-l`, `-N`... ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRules {
    pub full_iso9660_filenames: bool,
    pub max_iso9660_filenames: bool,
    pub omit_period: bool,
    pub omit_version_number: bool,
    pub allow_lowercase: bool,
    pub relaxed_filenames: bool,
    pub untranslated_filenames: bool,
    pub allow_leading_dots: bool,
    pub allow_multidot: bool,
    /// `-D`: never relocate deep folders (xorriso's default; wins over the two below).
    pub no_deep_relocation: bool,
    /// `-rr_reloc_dir rr_moved` / `-hide-rr-moved`: relocate folders deeper than 8 levels.
    pub deep_relocation: bool,
    /// Relocate into `/.rr_moved` (`-hide-rr-moved`, `-rr_reloc_dir .rr_moved`).
    pub hide_rr_moved: bool,
}

/// What `-m`, `-x`, `-exclude` and `-exclude-list` leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclude {
    /// A shell glob, matched against names and whole host paths.
    Glob(String),
    /// One exact host path and what is under it.
    HostPath(PathBuf),
}

fn has_glob_chars(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// A pathspec: where in the ISO (or the root) and from which host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graft {
    /// ISO path as written before `=`; `None` = merge at the root.
    pub iso_path: Option<String>,
    pub host_path: PathBuf,
}

/// Everything the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub output: Option<PathBuf>,
    pub grafts: Vec<Graft>,
    pub graft_points: bool,
    pub rock_ridge: RockRidge,
    pub joliet: bool,
    pub joliet_long: bool,
    /// `-udf`: an ISO 9660 + UDF bridge; `-udf-revision 1.02|2.01` picks the revision.
    pub udf: Option<vmedia_iso::spec::UdfRevision>,
    pub iso_level: Option<u8>,
    pub names: NameRules,
    pub volume_id: Option<String>,
    pub volume_set: Option<String>,
    pub publisher: Option<String>,
    pub preparer: Option<String>,
    pub application: Option<String>,
    pub system_id: Option<String>,
    pub abstract_file: Option<String>,
    pub biblio_file: Option<String>,
    pub copyright_file: Option<String>,
    pub follow_links: bool,
    pub excludes: Vec<Exclude>,
    pub hide: Vec<String>,
    pub hide_joliet: Vec<String>,
    pub sort_file: Option<PathBuf>,
    pub sort_weights: Vec<(i32, String)>,
    pub pad: bool,
    /// `--modification-date=YYYYMMDDhhmmsscc` / `-volume_date uuid`: the volume modification
    /// date GRUB uses as the volume UUID.
    pub modification_date: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub dir_mode: Option<u32>,
    pub file_mode: Option<u32>,
    pub boot: Vec<BootEntryOpts>,
    pub boot_catalog: Option<String>,
    pub boot_catalog_hide: bool,
    /// `-G` / `--embedded-boot` / `-generic-boot`: up to 32 KiB copied into the system area.
    pub embedded_boot: Option<PathBuf>,
    pub isohybrid_mbr: Option<PathBuf>,
    pub grub2_mbr: Option<PathBuf>,
    pub protective_msdos_label: bool,
    pub isohybrid_gpt_basdat: bool,
    pub mbr_force_bootable: bool,
    pub iso_mbr_part_type: Option<PartitionType>,
    pub partition_offset: Option<u32>,
    pub append_partitions: Vec<AppendPartition>,
    pub appended_part_as_gpt: bool,
    /// `-efi-boot-part DISK_FILE`, or `--efi-boot-image` (`Some(None)`): the EFI El Torito
    /// image also becomes a GPT ESP partition.
    pub efi_boot_part: Option<Option<PathBuf>>,
    /// `--md5` / `-md5`: asked for checksums (on by default anyway).
    pub md5_requested: bool,
    pub no_checksums: bool,
    pub sign_key: Option<PathBuf>,
    pub print_size: bool,
    pub quiet: bool,
    pub verbose: bool,
    pub help: bool,
    pub version: bool,
    /// Options accepted as no-ops, kept so `-v` can say so.
    pub no_ops: Vec<String>,
    /// Mac-only HFS+/APM options left out on request (`--drop-hfsplus`), to be reported.
    pub dropped: Vec<String>,
    /// `-hfsplus` and the options that shape the HFS+ hybrid.
    pub hfsplus: HfsPlusOpts,
}

/// `-hfsplus`, `-apm-block-size`, `-hfsplus-*`, `-hfs-bless-by`, `-hide-hfsplus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfsPlusOpts {
    pub enabled: bool,
    pub apm_block_size: Option<u32>,
    pub serial_number: Option<[u8; 8]>,
    /// (creator, type, ISO path).
    pub creator_types: Vec<([u8; 4], [u8; 4], String)>,
    /// (blessing, ISO path).
    pub blessed: Vec<(vmedia_iso::spec::HfsBlessing, String)>,
    pub hide: Vec<String>,
    /// `-isohybrid-apm-hfsplus`: isohybrid's APM with an entry per EFI image.
    pub isohybrid_apm: bool,
    /// `-hfs-bless DISK_PATH`: bless the folder from this host folder as ppc_bootdir.
    pub bless_host_dirs: Vec<PathBuf>,
    /// Options that only mean something with -hfsplus, for the error when it is missing.
    pub dependent: Vec<String>,
}

impl Default for Invocation {
    fn default() -> Self {
        Invocation {
            output: None,
            grafts: Vec::new(),
            graft_points: false,
            rock_ridge: RockRidge::Off,
            joliet: false,
            joliet_long: false,
            udf: None,
            iso_level: None,
            names: NameRules::default(),
            volume_id: None,
            volume_set: None,
            publisher: None,
            preparer: None,
            application: None,
            system_id: None,
            abstract_file: None,
            biblio_file: None,
            copyright_file: None,
            follow_links: false,
            excludes: Vec::new(),
            hide: Vec::new(),
            hide_joliet: Vec::new(),
            sort_file: None,
            sort_weights: Vec::new(),
            // xorriso -as mkisofs pads by default (300 KiB against read-ahead errors).
            pad: true,
            modification_date: None,
            uid: None,
            gid: None,
            dir_mode: None,
            file_mode: None,
            boot: Vec::new(),
            boot_catalog: None,
            boot_catalog_hide: false,
            embedded_boot: None,
            isohybrid_mbr: None,
            grub2_mbr: None,
            protective_msdos_label: false,
            isohybrid_gpt_basdat: false,
            mbr_force_bootable: false,
            iso_mbr_part_type: None,
            partition_offset: None,
            append_partitions: Vec::new(),
            appended_part_as_gpt: false,
            efi_boot_part: None,
            md5_requested: false,
            no_checksums: false,
            sign_key: None,
            print_size: false,
            quiet: false,
            verbose: false,
            help: false,
            version: false,
            no_ops: Vec::new(),
            dropped: Vec::new(),
            hfsplus: HfsPlusOpts::default(),
        }
    }
}

/// Options vmedia knows but does not implement, with the reason given to the user.
const REFUSED: &[(&str, &str)] = &[
    ("M", "multi-session (appending to a previous session) is not supported"),
    ("prev-session", "multi-session (appending to a previous session) is not supported"),
    ("dev", "multi-session (appending to a previous session) is not supported"),
    ("C", "multi-session (appending to a previous session) is not supported"),
    ("cdrecord-params", "multi-session (appending to a previous session) is not supported"),
    ("z", "zisofs transparent compression is not supported"),
    ("transparent-compression", "zisofs transparent compression is not supported"),
    ("zisofs-version-2", "zisofs transparent compression is not supported"),
    ("T", "TRANS.TBL files are not written"),
    ("translation-table", "TRANS.TBL files are not written"),
    ("table-name", "TRANS.TBL files are not written"),
    ("chrp-boot-part", "CHRP (PowerPC) boot is not supported"),
    ("chrp-boot", "CHRP (PowerPC) boot is not supported"),
    ("prep-boot-part", "PReP (PowerPC) boot is not supported"),
    ("mips-boot", "MIPS boot is not supported"),
    ("mipsel-boot", "MIPS boot is not supported"),
    ("B", "SPARC boot is not supported"),
    ("sparc-boot", "SPARC boot is not supported"),
    ("sparc-label", "SPARC boot is not supported"),
    ("grub2-sparc-core", "SPARC boot is not supported"),
    ("hppa-cmdline", "HP-PA boot is not supported"),
    ("hppa-bootloader", "HP-PA boot is not supported"),
    ("hppa-kernel-32", "HP-PA boot is not supported"),
    ("hppa-kernel-64", "HP-PA boot is not supported"),
    ("hppa-ramdisk", "HP-PA boot is not supported"),
    ("hppa-hdrversion", "HP-PA boot is not supported"),
    ("alpha-boot", "DEC Alpha boot is not supported"),
    ("jigdo-jigdo", "jigdo output is not supported"),
    ("jigdo-template", "jigdo output is not supported"),
    ("jigdo-min-file-size", "jigdo output is not supported"),
    ("jigdo-force-checksum", "jigdo output is not supported"),
    ("jigdo-force-md5", "jigdo output is not supported"),
    ("jigdo-exclude", "jigdo output is not supported"),
    ("jigdo-map", "jigdo output is not supported"),
    ("jigdo-checksum-algorithm", "jigdo output is not supported"),
    ("jigdo-template-compress", "jigdo output is not supported"),
    ("checksum-list", "jigdo output is not supported"),
    ("md5-list", "jigdo output is not supported"),
    ("checksum_algorithm_template", "jigdo output is not supported"),
    ("scdbackup_tag", "scdbackup tags are not written"),
    ("acl", "ACLs are not recorded"),
    ("xattr", "extended attributes are not recorded"),
    ("xattr-any", "extended attributes are not recorded"),
    ("for_backup", "ACLs and extended attributes are not recorded"),
    ("root", "-root (a prefix for every graft point with -M) is not supported"),
    ("old-root", "multi-session (appending to a previous session) is not supported"),
    ("log-file", "-log-file is not supported; redirect stderr instead"),
    ("quoted_path_list", "--quoted_path_list is not supported; use -path-list"),
    ("sort-weight-list", "--sort-weight-list is not supported; use --sort-weight or -sort"),
    ("sort-weight-patterns", "--sort-weight-patterns is not supported; use --sort-weight or -sort"),
    ("joliet-utf16", "Joliet names are written as UCS-2 (-joliet-utf16 is not supported)"),
    ("hide-list", "-hide-list is not supported; use -hide PATTERN"),
    ("hide-joliet-list", "-hide-joliet-list is not supported; use -hide-joliet PATTERN"),
    ("application_use", "--application_use is not supported"),
    ("part_like_isohybrid", "-part_like_isohybrid is not supported"),
    ("partition_hd_cyl", "MBR CHS geometry is fixed (-partition_hd_cyl is not supported)"),
    ("partition_sec_hd", "MBR CHS geometry is fixed (-partition_sec_hd is not supported)"),
    ("gpt_disk_guid", "GPT GUIDs come from SOURCE_DATE_EPOCH/--date or are random (--gpt_disk_guid is not supported)"),
    ("eltorito-selcrit", "El Torito selection criteria are not written"),
    ("set_all_file_dates", "--set_all_file_dates is not supported; SOURCE_DATE_EPOCH clamps file dates"),
    ("emul-toc", "--emul-toc (multi-session TOC emulation) is not supported"),
    ("old-empty", "--old-empty is not supported"),
    ("stdio_sync", "--stdio_sync is not supported"),
    ("partition_cyl_align", "-partition_cyl_align is not supported"),
    ("untranslated_name_len", "-untranslated_name_len is not supported"),
    ("file_name_limit", "-file_name_limit is not supported"),
    ("old-exclude", "-old-exclude is not supported; use -m"),
    ("gui", "-gui is not supported"),
];

/// The Mac-only HFS+ / Apple-partition-map options and how many values each takes. The
/// vmedia-only `--drop-hfsplus` leaves them all out (with a warning); without it the ones in
/// `HFSPLUS_REFUSED` are refused by name and the others build the HFS+ hybrid.
const HFSPLUS_OPTIONS: &[(&str, usize)] = &[
    ("hfsplus", 0),
    ("hfsplus-serial-no", 1),
    ("hfsplus-block-size", 1),
    ("apm-block-size", 1),
    ("hfsplus-file-creator-type", 3),
    ("hfs-bless-by", 2),
    ("hfs-bless", 1),
    ("hide-hfsplus", 1),
    ("hide-hfsplus-list", 1),
    ("isohybrid-apm-hfsplus", 0),
    ("isohybrid-gpt-hfsplus", 0),
    ("appended_part_as_apm", 0),
];

/// HFS+/APM options vmedia does not implement, with the reason given to the user.
const HFSPLUS_REFUSED: &[(&str, &str)] = &[
    ("hide-hfsplus-list", "-hide-hfsplus-list is not supported; use -hide-hfsplus PATTERN"),
    ("isohybrid-gpt-hfsplus", "-isohybrid-gpt-hfsplus is not supported; -hfsplus puts the HFS+ volume in the GPT when there is one"),
    ("appended_part_as_apm", "appended partitions are not described in the APM (-appended_part_as_apm)"),
];

/// The vmedia-only switch that leaves out the options in `HFSPLUS_OPTIONS`.
pub const DROP_HFSPLUS: &str = "--drop-hfsplus";

/// Options that xorriso/genisoimage also treat as having no effect on the image.
const NO_OP_FLAGS: &[&str] = &[
    // Hard links are always detected; these only tuned genisoimage's inode cache.
    "cache-inodes",
    "no-cache-inodes",
    // Reading ~/.xorrisorc is something vmedia never does.
    "no_rc",
    // Already the behaviour: Joliet trees of the same directory.
    "no-emul-toc",
];

/// Parses `vmedia mkisofs` arguments.
pub fn parse(args: &[OsString]) -> Result<Invocation, UsageError> {
    let mut inv = Invocation::default();
    let mut boot = BootBuilder::default();
    let drop_hfsplus = args.iter().any(|a| a.as_bytes() == DROP_HFSPLUS.as_bytes());
    let kept: Vec<OsString> = args
        .iter()
        .filter(|a| a.as_bytes() != DROP_HFSPLUS.as_bytes())
        .cloned()
        .collect();
    let args = &kept[..];
    let mut words = Words { args, pos: 0 };
    skip_emulation_prefix(&mut words);
    while let Some(arg) = words.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            // Everything after `--` is a pathspec, even when it starts with '-'.
            while let Some(rest) = words.next() {
                inv.grafts.push(parse_pathspec(rest, inv.graft_points)?);
            }
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            inv.grafts.push(parse_pathspec(arg, inv.graft_points)?);
            continue;
        }
        let text = arg.to_str().ok_or_else(|| {
            usage(format!(
                "option {} is not valid UTF-8",
                arg.to_string_lossy()
            ))
        })?;
        let (name, inline_value) = split_option(text)?;
        if let Some((_, arity)) = HFSPLUS_OPTIONS.iter().find(|(n, _)| *n == name) {
            if !drop_hfsplus {
                if let Some((_, why)) = HFSPLUS_REFUSED.iter().find(|(n, _)| *n == name) {
                    return Err(usage(format!(
                        "unsupported option {text}: {why}; add {DROP_HFSPLUS} to leave the \
                         Mac-only options out"
                    )));
                }
                apply_hfsplus(&mut inv.hfsplus, &mut words, text, name, inline_value)?;
                continue;
            }
            let mut dropped = text.to_string();
            for _ in 0..*arity {
                let v = words
                    .next()
                    .ok_or_else(|| usage(format!("option {text} needs a value")))?;
                dropped.push(' ');
                dropped.push_str(&v.to_string_lossy());
            }
            inv.dropped.push(dropped);
            continue;
        }
        apply(&mut inv, &mut boot, &mut words, text, name, inline_value)?;
    }
    inv.boot = boot.finish()?;
    check_consistency(&inv)?;
    Ok(inv)
}

/// Accepts the `-as mkisofs` (and `-no_rc`) words a `xorriso` command line starts with, so a
/// script calling `xorriso -as mkisofs ...` works with the program name changed alone.
fn skip_emulation_prefix(words: &mut Words<'_>) {
    loop {
        match words.peek().map(OsStr::as_bytes) {
            Some(b"-no_rc") | Some(b"--no_rc") => {
                words.pos += 1;
            }
            Some(b"-as") => {
                let personality = words.args.get(words.pos + 1).map(|a| a.as_bytes());
                if matches!(
                    personality,
                    Some(b"mkisofs") | Some(b"genisoimage") | Some(b"xorrisofs")
                ) {
                    words.pos += 2;
                } else {
                    return;
                }
            }
            _ => return,
        }
    }
}

struct Words<'a> {
    args: &'a [OsString],
    pos: usize,
}

impl<'a> Words<'a> {
    fn next(&mut self) -> Option<&'a OsStr> {
        let word = self.args.get(self.pos)?;
        self.pos += 1;
        Some(word.as_os_str())
    }
    fn peek(&self) -> Option<&'a OsStr> {
        self.args.get(self.pos).map(OsString::as_os_str)
    }
}

/// Splits `--name=value` and normalizes the dashes; refuses `--J` like xorriso does.
fn split_option(text: &str) -> Result<(&str, Option<&str>), UsageError> {
    let (double, body) = match text.strip_prefix("--") {
        Some(body) => (true, body),
        None => (false, &text[1..]),
    };
    let (name, value) = match body.split_once('=') {
        Some((n, v)) if double => (n, Some(v)),
        _ => (body, None),
    };
    if double && name.chars().count() == 1 {
        return Err(usage(format!(
            "unsupported option {text}: one-letter options take one dash (-{name})"
        )));
    }
    Ok((name, value))
}

/// Takes the value of an option that has one.
fn value<'a>(
    words: &mut Words<'a>,
    option: &str,
    inline: Option<&'a str>,
) -> Result<&'a OsStr, UsageError> {
    if let Some(v) = inline {
        return Ok(OsStr::new(v));
    }
    words
        .next()
        .ok_or_else(|| usage(format!("option {option} needs a value")))
}

fn value_str<'a>(
    words: &mut Words<'a>,
    option: &str,
    inline: Option<&'a str>,
) -> Result<&'a str, UsageError> {
    let v = value(words, option, inline)?;
    v.to_str()
        .ok_or_else(|| usage(format!("the value of {option} is not valid UTF-8")))
}

fn no_inline(option: &str, inline: Option<&str>) -> Result<(), UsageError> {
    match inline {
        Some(_) => Err(usage(format!("option {option} takes no value"))),
        None => Ok(()),
    }
}

fn number<T: std::str::FromStr>(text: &str, option: &str) -> Result<T, UsageError> {
    parse_int(text)
        .and_then(|n| n.to_string().parse::<T>().ok())
        .ok_or_else(|| usage(format!("{option}: {text:?} is not a valid number")))
}

/// Decimal, or hex with 0x.
fn parse_int(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        t.parse().ok()
    }
}

fn parse_mode(text: &str, option: &str) -> Result<u32, UsageError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            usage(format!(
                "{option}: {text:?} is not an octal mode such as 0644"
            ))
        })
}

/// `-uid`/`-gid` take a number or a name from the local user database.
fn parse_id(text: &str, option: &str, group: bool) -> Result<u32, UsageError> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    let file = if group { "/etc/group" } else { "/etc/passwd" };
    let db = std::fs::read_to_string(file).unwrap_or_default();
    db.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?;
            (name == text).then(|| id.parse::<u32>().ok()).flatten()
        })
        .next()
        .ok_or_else(|| {
            usage(format!(
                "{option}: {text:?} is neither a number nor a name in {file}"
            ))
        })
}

/// `0xef`, `ef` or a GPT type GUID `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
pub fn parse_partition_type(text: &str, option: &str) -> Result<PartitionType, UsageError> {
    PartitionType::parse(text).ok_or_else(|| {
        usage(format!(
            "{option}: {text:?} is neither an MBR type byte (0xef) nor a GPT type GUID"
        ))
    })
}

#[derive(Default)]
struct BootBuilder {
    entries: Vec<BootEntryOpts>,
    /// Settings given before the `-b`/`-e` they belong to, or after `-eltorito-alt-boot`.
    pending: BootEntryOpts,
    /// `-eltorito-alt-boot` seen: the next `-b`/`-e` starts a new entry.
    start_new: bool,
}

impl BootBuilder {
    /// The entry modifiers apply to: the open entry, or the pending settings.
    fn current(&mut self) -> &mut BootEntryOpts {
        if self.start_new || self.entries.is_empty() {
            return &mut self.pending;
        }
        let last = self.entries.len() - 1;
        &mut self.entries[last]
    }

    fn set_image(&mut self, image: Option<String>, appended: Option<u8>, efi: bool) {
        if self.start_new || self.entries.is_empty() {
            let mut entry = std::mem::take(&mut self.pending);
            entry.image = image;
            entry.appended_partition = appended;
            if efi && entry.platform.is_none() {
                entry.platform = Some(PLATFORM_EFI);
            }
            self.entries.push(entry);
            self.start_new = false;
        } else {
            let last = self.entries.len() - 1;
            let entry = &mut self.entries[last];
            entry.image = image;
            entry.appended_partition = appended;
            if efi {
                entry.platform = Some(PLATFORM_EFI);
            }
        }
    }

    fn alt_boot(&mut self) {
        if !self.entries.is_empty() {
            self.start_new = true;
        }
    }

    fn finish(self) -> Result<Vec<BootEntryOpts>, UsageError> {
        if self.entries.is_empty() && self.pending != BootEntryOpts::default() {
            return Err(usage(
                "El Torito options (-no-emul-boot, -boot-load-size, ...) were given without a boot image (-b or -e)",
            ));
        }
        Ok(self.entries)
    }
}

/// El Torito platform ids.
pub const PLATFORM_X86: u8 = 0x00;
pub const PLATFORM_PPC: u8 = 0x01;
pub const PLATFORM_MAC: u8 = 0x02;
pub const PLATFORM_EFI: u8 = 0xef;

fn parse_platform(text: &str) -> Result<u8, UsageError> {
    match text {
        "x86" => Ok(PLATFORM_X86),
        "PPC" => Ok(PLATFORM_PPC),
        "Mac" => Ok(PLATFORM_MAC),
        "efi" => Ok(PLATFORM_EFI),
        other => parse_int(other)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                usage(format!(
                    "-eltorito-platform: {other:?} is not x86, PPC, Mac, efi or a number 0..255"
                ))
            }),
    }
}

/// `--interval:appended_partition_N:all::` names appended partition N as a boot image.
fn parse_interval(text: &str) -> Result<u8, UsageError> {
    let rest = text
        .strip_prefix("--interval:appended_partition_")
        .and_then(|r| r.strip_suffix(":all::"))
        .ok_or_else(|| {
            usage(format!(
                "boot image {text:?}: only --interval:appended_partition_N:all:: intervals are supported"
            ))
        })?;
    rest.parse::<u8>()
        .ok()
        .filter(|n| (1..=8).contains(n))
        .ok_or_else(|| {
            usage(format!(
                "boot image {text:?}: partition number must be 1..8"
            ))
        })
}

fn apply<'a>(
    inv: &mut Invocation,
    boot: &mut BootBuilder,
    words: &mut Words<'a>,
    option: &str,
    name: &str,
    inline: Option<&'a str>,
) -> Result<(), UsageError> {
    let flag = |inline: Option<&str>| no_inline(option, inline);
    match name {
        // --- output and inputs
        "o" | "output" => inv.output = Some(PathBuf::from(value(words, option, inline)?)),
        "graft-points" => {
            flag(inline)?;
            inv.graft_points = true;
        }
        "path-list" => {
            let file = PathBuf::from(value(words, option, inline)?);
            for line in read_list_file(&file, option)? {
                inv.grafts
                    .push(parse_pathspec(OsStr::from_bytes(&line), inv.graft_points)?);
            }
        }
        "f" | "follow-links" => {
            flag(inline)?;
            inv.follow_links = true;
        }
        "m" => inv
            .excludes
            .push(Exclude::Glob(value_str(words, option, inline)?.to_string())),
        "x" | "exclude" => {
            let text = value_str(words, option, inline)?;
            inv.excludes.push(if has_glob_chars(text) {
                Exclude::Glob(text.to_string())
            } else {
                Exclude::HostPath(PathBuf::from(text))
            });
        }
        "exclude-list" => {
            let file = PathBuf::from(value(words, option, inline)?);
            for line in read_list_file(&file, option)? {
                inv.excludes.push(Exclude::Glob(utf8_line(line, option)?));
            }
        }
        "hide" => inv.hide.push(value_str(words, option, inline)?.to_string()),
        "hide-joliet" => inv
            .hide_joliet
            .push(value_str(words, option, inline)?.to_string()),
        "sort" => inv.sort_file = Some(PathBuf::from(value(words, option, inline)?)),
        "sort-weight" => {
            let weight = value_str(words, option, inline)?;
            let weight: i32 = weight
                .parse()
                .map_err(|_| usage(format!("{option}: weight {weight:?} is not a number")))?;
            let path = value_str(words, option, None)?;
            inv.sort_weights.push((weight, path.to_string()));
        }
        // --- trees
        "R" | "rock" => {
            flag(inline)?;
            if inv.rock_ridge != RockRidge::Rationalized {
                inv.rock_ridge = RockRidge::Plain;
            }
        }
        "r" | "rational-rock" => {
            flag(inline)?;
            inv.rock_ridge = RockRidge::Rationalized;
        }
        "norock" => {
            flag(inline)?;
            inv.rock_ridge = RockRidge::Off;
        }
        "J" | "joliet" => {
            flag(inline)?;
            inv.joliet = true;
        }
        "joliet-long" => {
            flag(inline)?;
            inv.joliet = true;
            inv.joliet_long = true;
        }
        "udf" => {
            flag(inline)?;
            inv.udf.get_or_insert_default();
        }
        "udf-revision" => {
            let text = value_str(words, option, inline)?;
            let rev = vmedia_iso::spec::UdfRevision::parse(text)
                .ok_or_else(|| usage(format!("-udf-revision {text}: use 1.02 or 2.01")))?;
            inv.udf = Some(rev);
        }
        "iso-level" => {
            let level: u8 = number(value_str(words, option, inline)?, option)?;
            if !(1..=4).contains(&level) {
                return Err(usage(format!(
                    "{option}: level {level} is not 1, 2, 3 or 4"
                )));
            }
            inv.iso_level = Some(level);
        }
        "l" | "full-iso9660-filenames" => {
            flag(inline)?;
            inv.names.full_iso9660_filenames = true;
        }
        "max-iso9660-filenames" => {
            flag(inline)?;
            inv.names.max_iso9660_filenames = true;
        }
        "d" | "omit-period" => {
            flag(inline)?;
            inv.names.omit_period = true;
        }
        "N" | "omit-version-number" => {
            flag(inline)?;
            inv.names.omit_version_number = true;
        }
        "allow-lowercase" => {
            flag(inline)?;
            inv.names.allow_lowercase = true;
        }
        "relaxed-filenames" => {
            flag(inline)?;
            inv.names.relaxed_filenames = true;
        }
        "U" | "untranslated-filenames" => {
            flag(inline)?;
            inv.names.untranslated_filenames = true;
        }
        "L" | "allow-leading-dots" | "ldots" => {
            flag(inline)?;
            inv.names.allow_leading_dots = true;
        }
        "allow-multidot" => {
            flag(inline)?;
            inv.names.allow_multidot = true;
        }
        "D" | "disable-deep-relocation" => {
            flag(inline)?;
            inv.names.no_deep_relocation = true;
        }
        "hide-rr-moved" => {
            flag(inline)?;
            inv.names.deep_relocation = true;
            inv.names.hide_rr_moved = true;
        }
        "rr_reloc_dir" => {
            let dir = value_str(words, option, inline)?;
            match dir.trim_start_matches('/') {
                "rr_moved" => inv.names.hide_rr_moved = false,
                ".rr_moved" => inv.names.hide_rr_moved = true,
                other => {
                    return Err(usage(format!(
                        "{option} {other}: only rr_moved and .rr_moved are supported"
                    )))
                }
            }
            inv.names.deep_relocation = true;
        }
        "uid" => inv.uid = Some(parse_id(value_str(words, option, inline)?, option, false)?),
        "gid" => inv.gid = Some(parse_id(value_str(words, option, inline)?, option, true)?),
        "dir-mode" => inv.dir_mode = Some(parse_mode(value_str(words, option, inline)?, option)?),
        "file-mode" => inv.file_mode = Some(parse_mode(value_str(words, option, inline)?, option)?),
        "pad" => {
            flag(inline)?;
            inv.pad = true;
        }
        "no-pad" => {
            flag(inline)?;
            inv.pad = false;
        }
        // --- volume descriptor text
        "V" | "volid" => inv.volume_id = Some(value_str(words, option, inline)?.to_string()),
        "volset" => inv.volume_set = Some(value_str(words, option, inline)?.to_string()),
        "P" | "publisher" => inv.publisher = Some(value_str(words, option, inline)?.to_string()),
        "p" | "preparer" => inv.preparer = Some(value_str(words, option, inline)?.to_string()),
        "A" | "appid" => inv.application = Some(value_str(words, option, inline)?.to_string()),
        "sysid" => inv.system_id = Some(value_str(words, option, inline)?.to_string()),
        "abstract" => inv.abstract_file = Some(value_str(words, option, inline)?.to_string()),
        "biblio" => inv.biblio_file = Some(value_str(words, option, inline)?.to_string()),
        "copyright" => inv.copyright_file = Some(value_str(words, option, inline)?.to_string()),
        "modification-date" => {
            inv.modification_date = Some(check_volume_date(
                value_str(words, option, inline)?,
                option,
            )?)
        }
        "volume_date" => {
            let which = value_str(words, option, inline)?;
            let time = value_str(words, option, None)?;
            if which != "uuid" {
                return Err(usage(format!(
                    "unsupported option {option} {which}: only `-volume_date uuid` is supported; \
                     set all volume dates with SOURCE_DATE_EPOCH"
                )));
            }
            inv.modification_date = Some(check_volume_date(time, option)?);
        }
        // --- El Torito
        "b" | "eltorito-boot" => {
            let image = value_str(words, option, inline)?;
            boot.set_image(Some(image.to_string()), None, false);
        }
        "e" => {
            let image = value_str(words, option, inline)?;
            if image.starts_with("--interval:") {
                boot.set_image(None, Some(parse_interval(image)?), true);
            } else {
                boot.set_image(Some(image.to_string()), None, true);
            }
        }
        "efi-boot" => {
            // xorriso: -eltorito-alt-boot -e PATH -no-emul-boot -eltorito-alt-boot.
            let image = value_str(words, option, inline)?;
            boot.alt_boot();
            boot.set_image(Some(image.to_string()), None, true);
            boot.current().no_emulation = true;
            boot.alt_boot();
        }
        "eltorito-alt-boot" => {
            flag(inline)?;
            boot.alt_boot();
        }
        "eltorito-platform" => {
            let platform = parse_platform(value_str(words, option, inline)?)?;
            boot.alt_boot();
            boot.current().platform = Some(platform);
        }
        "no-emul-boot" => {
            flag(inline)?;
            boot.current().no_emulation = true;
        }
        "hard-disk-boot" => {
            flag(inline)?;
            boot.current().hard_disk_emulation = true;
        }
        "boot-load-size" => {
            let text = value_str(words, option, inline)?;
            let size = if text == "full" {
                LoadSize::Full
            } else {
                let sectors: u16 = number(text, option)?;
                if sectors == 0 {
                    return Err(usage(format!("{option}: 0 sectors")));
                }
                LoadSize::Sectors(sectors)
            };
            boot.current().load_size = Some(size);
        }
        "boot-info-table" => {
            flag(inline)?;
            boot.current().boot_info_table = true;
        }
        "grub2-boot-info" => {
            flag(inline)?;
            boot.current().grub2_boot_info = true;
        }
        "eltorito-id" => boot.current().id = Some(value_str(words, option, inline)?.to_string()),
        "boot-load-seg" => {
            let segment: u16 = number(value_str(words, option, inline)?, option)?;
            boot.current().load_segment = Some(segment);
        }
        "no-boot" => {
            flag(inline)?;
            boot.current().not_bootable = true;
        }
        "c" | "eltorito-catalog" => {
            inv.boot_catalog = Some(value_str(words, option, inline)?.to_string())
        }
        "boot-catalog-hide" => {
            flag(inline)?;
            inv.boot_catalog_hide = true;
        }
        // --- system area and partitions
        "G" | "generic-boot" | "embedded-boot" => {
            inv.embedded_boot = Some(PathBuf::from(value(words, option, inline)?))
        }
        "isohybrid-mbr" => inv.isohybrid_mbr = Some(PathBuf::from(value(words, option, inline)?)),
        "grub2-mbr" => inv.grub2_mbr = Some(PathBuf::from(value(words, option, inline)?)),
        "protective-msdos-label" => {
            flag(inline)?;
            inv.protective_msdos_label = true;
        }
        "isohybrid-gpt-basdat" => {
            flag(inline)?;
            inv.isohybrid_gpt_basdat = true;
        }
        "mbr-force-bootable" => {
            flag(inline)?;
            inv.mbr_force_bootable = true;
        }
        "iso_mbr_part_type" => {
            let text = value_str(words, option, inline)?;
            inv.iso_mbr_part_type = if text == "default" {
                None
            } else {
                Some(parse_partition_type(text, option)?)
            };
        }
        "partition_offset" => {
            let blocks: u32 = number(value_str(words, option, inline)?, option)?;
            if blocks != 0 && blocks < 16 {
                return Err(usage(format!(
                    "{option}: {blocks} must be 0 or at least 16"
                )));
            }
            inv.partition_offset = Some(blocks);
        }
        "append_partition" => {
            let number_text = value_str(words, option, inline)?;
            let number: u8 = number(number_text, option)?;
            if !(1..=8).contains(&number) {
                return Err(usage(format!(
                    "{option}: partition number {number} is outside 1..8"
                )));
            }
            let type_code = parse_partition_type(value_str(words, option, None)?, option)?;
            let file = PathBuf::from(value(words, option, None)?);
            inv.append_partitions.retain(|p| p.number != number);
            inv.append_partitions.push(AppendPartition {
                number,
                type_code,
                file,
            });
        }
        "appended_part_as_gpt" => {
            flag(inline)?;
            inv.appended_part_as_gpt = true;
        }
        "efi-boot-part" => {
            let target = value_str(words, option, inline)?;
            inv.efi_boot_part = Some(if target == "--efi-boot-image" {
                None
            } else {
                Some(PathBuf::from(target))
            });
        }
        // --- integrity
        "md5" => {
            flag(inline)?;
            inv.md5_requested = true;
        }
        "no-checksums" => {
            flag(inline)?;
            inv.no_checksums = true;
        }
        "sign-key" => inv.sign_key = Some(PathBuf::from(value(words, option, inline)?)),
        "checksum_algorithm_iso" => {
            // Only feeds jigdo output, which needs -jigdo-jigdo (refused): no effect, as in
            // xorriso without jigdo. The names are still checked.
            let list = value_str(words, option, inline)?;
            for algo in list.split(',') {
                if !["md5", "sha1", "sha256", "sha512"].contains(&algo) {
                    return Err(usage(format!(
                        "{option}: unknown checksum algorithm {algo:?}"
                    )));
                }
            }
            inv.no_ops.push(format!("{option} {list}"));
        }
        // --- charsets: names are taken as UTF-8 bytes; only UTF-8 is honest to accept.
        "input-charset" | "output-charset" => {
            let charset = value_str(words, option, inline)?;
            let lower = charset.to_ascii_lowercase();
            if !["utf-8", "utf8", "default"].contains(&lower.as_str()) {
                return Err(usage(format!(
                    "{option} {charset}: only UTF-8 file names are supported"
                )));
            }
            inv.no_ops.push(format!("{option} {charset}"));
        }
        // --- program behaviour
        "print-size" => {
            flag(inline)?;
            inv.print_size = true;
        }
        "quiet" => {
            flag(inline)?;
            inv.quiet = true;
        }
        "v" | "verbose" => {
            flag(inline)?;
            inv.verbose = true;
        }
        "help" | "h" => inv.help = true,
        "version" => inv.version = true,
        _ if NO_OP_FLAGS.contains(&name) => {
            flag(inline)?;
            inv.no_ops.push(option.to_string());
        }
        _ => {
            if let Some((_, reason)) = REFUSED.iter().find(|(n, _)| *n == name) {
                return Err(usage(format!("unsupported option {option}: {reason}")));
            }
            return Err(usage(format!("unsupported option {option}")));
        }
    }
    Ok(())
}

/// `YYYYMMDDhhmmsscc`: 16 digits, as xorriso demands.
fn check_volume_date(text: &str, option: &str) -> Result<String, UsageError> {
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err(usage(format!(
            "{option}: {text:?} is not 16 digits YYYYMMDDhhmmsscc"
        )))
    }
}

fn utf8_line(line: Vec<u8>, option: &str) -> Result<String, UsageError> {
    String::from_utf8(line).map_err(|_| usage(format!("{option}: a line is not valid UTF-8")))
}

/// Reads a list file: one entry per line, empty lines skipped.
fn read_list_file(path: &std::path::Path, option: &str) -> Result<Vec<Vec<u8>>, UsageError> {
    let meta =
        std::fs::metadata(path).map_err(|e| usage(format!("{option} {}: {e}", path.display())))?;
    if meta.len() > MAX_LIST_FILE_BYTES {
        return Err(usage(format!(
            "{option} {}: {} bytes is over the {MAX_LIST_FILE_BYTES}-byte limit for list files",
            path.display(),
            meta.len()
        )));
    }
    let data =
        std::fs::read(path).map_err(|e| usage(format!("{option} {}: {e}", path.display())))?;
    Ok(data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Parses one pathspec. With `-graft-points`, `ISO_PATH=HOST_PATH` with `\=` and `\\` escapes;
/// otherwise the whole word is a host path.
pub fn parse_pathspec(word: &OsStr, graft_points: bool) -> Result<Graft, UsageError> {
    let bytes = word.as_bytes();
    if !graft_points {
        return Ok(Graft {
            iso_path: None,
            host_path: PathBuf::from(word),
        });
    }
    let mut left = Vec::new();
    let mut right = Vec::new();
    let mut seen_equals = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let out = if seen_equals { &mut right } else { &mut left };
        if b == b'\\' && i + 1 < bytes.len() && (bytes[i + 1] == b'=' || bytes[i + 1] == b'\\') {
            out.push(bytes[i + 1]);
            i += 2;
            continue;
        }
        if b == b'=' && !seen_equals {
            seen_equals = true;
        } else {
            out.push(b);
        }
        i += 1;
    }
    if !seen_equals {
        return Ok(Graft {
            iso_path: None,
            host_path: PathBuf::from(OsString::from_vec(left)),
        });
    }
    if right.is_empty() {
        return Err(usage(format!(
            "graft point {}: no host path after '='",
            word.to_string_lossy()
        )));
    }
    let iso_path = String::from_utf8(left).map_err(|_| {
        usage(format!(
            "graft point {}: the ISO path is not valid UTF-8",
            word.to_string_lossy()
        ))
    })?;
    Ok(Graft {
        iso_path: Some(iso_path),
        host_path: PathBuf::from(OsString::from_vec(right)),
    })
}

/// One of the implemented HFS+ options.
fn apply_hfsplus<'a>(
    opts: &mut HfsPlusOpts,
    words: &mut Words<'a>,
    option: &str,
    name: &str,
    inline: Option<&'a str>,
) -> Result<(), UsageError> {
    if name != "hfsplus" && name != "isohybrid-apm-hfsplus" {
        opts.dependent.push(option.to_string());
    }
    match name {
        "hfsplus" => {
            no_inline(option, inline)?;
            opts.enabled = true;
        }
        "apm-block-size" => {
            let text = value_str(words, option, inline)?;
            opts.apm_block_size = match number::<u32>(text, option)? {
                // 0 asks for xorriso's own choice.
                0 => None,
                n @ (512 | 2048) => Some(n),
                _ => return Err(usage(format!("{option}: {text} is not 512 or 2048"))),
            };
        }
        "hfsplus-block-size" => {
            let text = value_str(words, option, inline)?;
            match number::<u32>(text, option)? {
                0 | 2048 => {}
                _ => {
                    return Err(usage(format!(
                        "unsupported option {option} {text}: HFS+ allocation blocks are 2048 \
                         bytes (ISO sectors, so files share their extents)"
                    )))
                }
            }
        }
        "hfsplus-serial-no" => {
            let text = value_str(words, option, inline)?;
            let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
            let n = u64::from_str_radix(text, 16)
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| usage(format!("{option}: {text:?} is not 16 hex digits")))?;
            opts.serial_number = Some(n.to_be_bytes());
        }
        "hfsplus-file-creator-type" => {
            let creator = four_char_code(value_str(words, option, inline)?, option)?;
            let file_type = four_char_code(value_str(words, option, None)?, option)?;
            let path = value_str(words, option, None)?;
            opts.creator_types
                .push((creator, file_type, path.to_string()));
        }
        "hfs-bless-by" => {
            let which = value_str(words, option, inline)?;
            let blessing = vmedia_iso::spec::HfsBlessing::parse(which).ok_or_else(|| {
                usage(format!(
                    "{option}: {which:?} is not p, i, s, 9, x (ppc_bootdir, intel_bootfile, \
                     show_folder, os9_folder, osx_folder)"
                ))
            })?;
            let path = value_str(words, option, None)?;
            opts.blessed.push((blessing, path.to_string()));
        }
        "hide-hfsplus" => opts
            .hide
            .push(value_str(words, option, inline)?.to_string()),
        "isohybrid-apm-hfsplus" => {
            no_inline(option, inline)?;
            opts.isohybrid_apm = true;
        }
        "hfs-bless" => opts
            .bless_host_dirs
            .push(PathBuf::from(value(words, option, inline)?)),
        _ => return Err(usage(format!("unsupported option {option}"))),
    }
    Ok(())
}

/// A Finder creator or type code: exactly four bytes.
fn four_char_code(text: &str, option: &str) -> Result<[u8; 4], UsageError> {
    text.as_bytes()
        .try_into()
        .map_err(|_| usage(format!("{option}: {text:?} is not a four-character code")))
}

fn check_consistency(inv: &Invocation) -> Result<(), UsageError> {
    if !inv.hfsplus.enabled {
        if let Some(first) = inv.hfsplus.dependent.first() {
            return Err(usage(format!("{first} needs -hfsplus")));
        }
    }
    if inv.hfsplus.isohybrid_apm && inv.isohybrid_mbr.is_none() {
        return Err(usage(
            "-isohybrid-apm-hfsplus needs -isohybrid-mbr (it extends the isohybrid layout)",
        ));
    }
    if inv.hfsplus.isohybrid_apm && inv.hfsplus.enabled {
        return Err(usage(
            "-isohybrid-apm-hfsplus and -hfsplus both write an Apple Partition Map; give one",
        ));
    }
    if inv.md5_requested && inv.no_checksums {
        return Err(usage("--md5 and --no-checksums contradict each other"));
    }
    if inv.isohybrid_mbr.is_some() && inv.grub2_mbr.is_some() {
        return Err(usage(
            "-isohybrid-mbr and --grub2-mbr both fill the MBR; give one",
        ));
    }
    if inv.embedded_boot.is_some() && (inv.isohybrid_mbr.is_some() || inv.grub2_mbr.is_some()) {
        return Err(usage(
            "-G/--embedded-boot and -isohybrid-mbr/--grub2-mbr both fill the system area; give one",
        ));
    }
    if inv.boot_catalog.is_some() && inv.boot.is_empty() {
        return Err(usage("-c (boot catalog) needs a boot image (-b or -e)"));
    }
    if !inv.help && !inv.version && !inv.print_size && inv.output.is_none() {
        return Err(usage(
            "no output file: give -o FILE (writing the image to stdout is not supported)",
        ));
    }
    if !inv.help && !inv.version && inv.grafts.is_empty() {
        return Err(usage(
            "no input: give at least one folder or file (pathspec)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn ok(line: &str) -> Invocation {
        parse(&args(line)).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> String {
        parse(&args(line)).unwrap_err().0
    }

    #[test]
    fn single_and_double_dash_long_options_are_the_same() {
        let a = ok("-joliet-long -o x.iso dir");
        let b = ok("--joliet-long -o x.iso dir");
        assert_eq!(a, b);
        assert!(a.joliet_long && a.joliet);
    }

    #[test]
    fn one_letter_option_with_two_dashes_is_refused() {
        assert!(err("--J -o x.iso dir").contains("--J"));
    }

    #[test]
    fn unknown_option_is_refused_by_name() {
        assert_eq!(
            err("-frobnicate -o x.iso dir"),
            "unsupported option -frobnicate"
        );
    }

    #[test]
    fn known_unsupported_option_names_the_reason() {
        let e = err("-z -o x.iso dir");
        assert!(e.contains("-z") && e.contains("zisofs"), "{e}");
    }

    #[test]
    fn grub_mkrescue_hfsplus_options_build_the_hybrid() {
        let inv = ok("-hfsplus -apm-block-size 2048 \
             -hfsplus-file-creator-type chrp tbxj /System/Library/CoreServices/.disk_label \
             -hfs-bless-by i /System/Library/CoreServices/boot.efi \
             -hfsplus-serial-no 0123456789abcdef -hide-hfsplus *.bak -o x.iso dir");
        assert!(inv.hfsplus.enabled);
        assert_eq!(inv.hfsplus.apm_block_size, Some(2048));
        assert_eq!(
            inv.hfsplus.creator_types,
            [(
                *b"chrp",
                *b"tbxj",
                "/System/Library/CoreServices/.disk_label".to_string()
            )]
        );
        assert_eq!(
            inv.hfsplus.blessed,
            [(
                vmedia_iso::spec::HfsBlessing::IntelBootfile,
                "/System/Library/CoreServices/boot.efi".to_string()
            )]
        );
        assert_eq!(
            inv.hfsplus.serial_number,
            Some([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])
        );
        assert_eq!(inv.hfsplus.hide, ["*.bak"]);
    }

    #[test]
    fn hfsplus_shaping_options_need_hfsplus() {
        assert!(err("-apm-block-size 2048 -o x.iso dir").contains("needs -hfsplus"));
    }

    #[test]
    fn hfsplus_values_are_checked() {
        assert!(err("-hfsplus -apm-block-size 1024 -o x.iso dir").contains("512 or 2048"));
        assert!(err("-hfsplus -hfsplus-block-size 512 -o x.iso dir").contains("2048"));
        assert!(err("-hfsplus -hfs-bless-by q /x -o x.iso dir").contains("\"q\""));
        assert!(
            err("-hfsplus -hfsplus-file-creator-type chrpx tbxj /x -o x.iso dir")
                .contains("four-character")
        );
        assert!(err("-hfsplus -hfsplus-serial-no 12 -o x.iso dir").contains("16 hex"));
    }

    #[test]
    fn unimplemented_hfsplus_options_are_refused_by_name() {
        let e = err("-isohybrid-gpt-hfsplus -o x.iso dir");
        assert!(
            e.contains("-isohybrid-gpt-hfsplus") && e.contains("--drop-hfsplus"),
            "{e}"
        );
        assert!(err("-hide-hfsplus-list l -o x.iso dir").contains("-hide-hfsplus-list"));
    }

    #[test]
    fn isohybrid_apm_needs_an_isohybrid_mbr() {
        assert!(err("-isohybrid-apm-hfsplus -o x.iso dir").contains("-isohybrid-mbr"));
        assert!(
            ok("-isohybrid-mbr m.bin -isohybrid-apm-hfsplus -o x.iso dir")
                .hfsplus
                .isohybrid_apm
        );
    }

    #[test]
    fn drop_hfsplus_skips_mac_options_with_their_values() {
        let inv = ok("--drop-hfsplus -as mkisofs -hfsplus -apm-block-size 2048 \
             -hfsplus-file-creator-type chrp tbxj /System/Library/CoreServices/.disk_label \
             -hfs-bless-by i /System/Library/CoreServices/boot.efi -o x.iso dir");
        assert_eq!(inv.dropped.len(), 4);
        assert_eq!(inv.grafts.len(), 1);
        assert_eq!(inv.output, Some(PathBuf::from("x.iso")));
    }

    #[test]
    fn inline_value_after_equals() {
        let inv = ok("--modification-date=2024010203040500 -o x.iso dir");
        assert_eq!(inv.modification_date.as_deref(), Some("2024010203040500"));
    }

    #[test]
    fn modification_date_needs_16_digits() {
        assert!(err("--modification-date=2024 -o x.iso d").contains("16 digits"));
    }

    #[test]
    fn xorriso_prefix_is_skipped() {
        let inv = ok("-no_rc -as mkisofs -R -o x.iso dir");
        assert_eq!(inv.rock_ridge, RockRidge::Plain);
    }

    #[test]
    fn graft_point_escapes() {
        let g = parse_pathspec(OsStr::new(r"a\=b/c=host\=dir"), true).unwrap();
        assert_eq!(g.iso_path.as_deref(), Some("a=b/c"));
        assert_eq!(g.host_path, PathBuf::from("host=dir"));
        let plain = parse_pathspec(OsStr::new("a=b"), false).unwrap();
        assert_eq!(plain.iso_path, None);
        assert_eq!(plain.host_path, PathBuf::from("a=b"));
    }

    #[test]
    fn graft_point_without_host_is_refused() {
        assert!(parse_pathspec(OsStr::new("a="), true).is_err());
    }

    #[test]
    fn lorax_boot_line_makes_two_entries() {
        let inv = ok(
            "-R -J -V X -b isolinux/isolinux.bin -c isolinux/boot.cat -boot-load-size 4 \
             -boot-info-table -no-emul-boot -eltorito-alt-boot -e images/efiboot.img \
             -no-emul-boot -isohybrid-gpt-basdat -o x.iso dir",
        );
        assert_eq!(inv.boot.len(), 2);
        assert_eq!(inv.boot[0].image.as_deref(), Some("isolinux/isolinux.bin"));
        assert_eq!(inv.boot[0].load_size, Some(LoadSize::Sectors(4)));
        assert!(inv.boot[0].boot_info_table && inv.boot[0].no_emulation);
        assert_eq!(inv.boot[1].platform, Some(PLATFORM_EFI));
        assert!(inv.boot[1].no_emulation && !inv.boot[1].boot_info_table);
        assert_eq!(inv.boot_catalog.as_deref(), Some("isolinux/boot.cat"));
    }

    #[test]
    fn efi_boot_opens_and_closes_its_own_entry() {
        let inv = ok("-b bios.img -no-emul-boot --efi-boot efi.img -o x.iso dir");
        assert_eq!(inv.boot.len(), 2);
        assert_eq!(inv.boot[1].platform, Some(PLATFORM_EFI));
        assert!(inv.boot[1].no_emulation);
    }

    #[test]
    fn modifiers_before_the_image_apply_to_it() {
        let inv = ok("-no-emul-boot -boot-load-size 4 -b x.img -o x.iso dir");
        assert!(inv.boot[0].no_emulation);
        assert_eq!(inv.boot[0].load_size, Some(LoadSize::Sectors(4)));
    }

    #[test]
    fn boot_modifiers_without_image_are_refused() {
        assert!(err("-no-emul-boot -o x.iso dir").contains("without a boot image"));
    }

    #[test]
    fn appended_partition_interval_as_efi_image() {
        let inv = ok("-append_partition 2 C12A7328-F81F-11D2-BA4B-00A0C93EC93B efi.img \
             -appended_part_as_gpt -e --interval:appended_partition_2:all:: -no-emul-boot -o x.iso d");
        assert_eq!(inv.boot[0].appended_partition, Some(2));
        assert_eq!(inv.boot[0].image, None);
        match &inv.append_partitions[0].type_code {
            PartitionType::Gpt(g) => assert_eq!(g[0..4], [0x28, 0x73, 0x2a, 0xc1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn append_partition_mbr_type() {
        let inv = ok("-append_partition 2 0xef efi.img -o x.iso d");
        assert_eq!(inv.append_partitions[0].type_code, PartitionType::Mbr(0xef));
    }

    #[test]
    fn append_partition_number_range() {
        assert!(err("-append_partition 9 0xef efi.img -o x.iso d").contains("1..8"));
    }

    #[test]
    fn iso_level_range() {
        assert!(err("-iso-level 5 -o x.iso d").contains("level 5"));
    }

    #[test]
    fn partition_offset_below_16_is_refused() {
        assert!(err("-partition_offset 3 -o x.iso d").contains("at least 16"));
    }

    #[test]
    fn charset_other_than_utf8_is_refused() {
        assert!(err("-input-charset iso8859-1 -o x.iso d").contains("UTF-8"));
        assert!(ok("-input-charset utf-8 -o x.iso d").no_ops.len() == 1);
    }

    #[test]
    fn md5_and_no_checksums_contradict() {
        assert!(err("--md5 --no-checksums -o x.iso d").contains("contradict"));
    }

    #[test]
    fn output_is_required() {
        assert!(err("-R d").contains("-o FILE"));
    }

    #[test]
    fn input_is_required() {
        assert!(err("-R -o x.iso").contains("no input"));
    }

    #[test]
    fn value_missing_at_end() {
        assert!(err("-o x.iso d -V").contains("needs a value"));
    }

    #[test]
    fn rationalized_rock_ridge_wins_over_plain() {
        assert_eq!(ok("-r -R -o x.iso d").rock_ridge, RockRidge::Rationalized);
    }

    #[test]
    fn deep_relocation_is_off_unless_asked_for() {
        assert!(!ok("-R -o x.iso d").names.deep_relocation);
        let inv = ok("-rr_reloc_dir /rr_moved -o x.iso d");
        assert!(inv.names.deep_relocation && !inv.names.hide_rr_moved);
        assert!(ok("-hide-rr-moved -o x.iso d").names.hide_rr_moved);
        assert!(err("-rr_reloc_dir deep -o x.iso d").contains("rr_moved"));
    }

    #[test]
    fn sort_weight_takes_two_values() {
        let inv = ok("--sort-weight 1 /boot --sort-weight 0 / -o x.iso d");
        assert_eq!(
            inv.sort_weights,
            vec![(1, "/boot".to_string()), (0, "/".to_string())]
        );
    }

    #[test]
    fn double_dash_ends_options() {
        let inv = ok("-o x.iso -- -weird");
        assert_eq!(inv.grafts[0].host_path, PathBuf::from("-weird"));
    }
}
