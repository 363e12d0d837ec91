//! `vmedia iso info | ls | extract | cat | rip`: inspect and unpack ISO 9660 images.
//!
//! The format work is `vmedia_iso::read` and the extraction engine `vmedia_iso::extract`;
//! this file parses options and prints.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use vmedia_io::{AtomicFile, OverwritePolicy, ReadAt};
use vmedia_iso::extract::ExtractOptions;
use vmedia_iso::read::{Entry, EntryKind, IsoImage, NameSpace, OpenOptions, Timestamp, WalkEntry};
use vmedia_iso::report::InfoReport;

use crate::progress::Bar;

/// Which directory tree supplies the names.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum NameSpaceArg {
    /// UDF (like 7z and bsdtar), else Rock Ridge, else Joliet, else ISO 9660 (like xorriso
    /// and Linux)
    #[default]
    Auto,
    Udf,
    RockRidge,
    Joliet,
    Iso9660,
}

impl From<NameSpaceArg> for NameSpace {
    fn from(a: NameSpaceArg) -> NameSpace {
        match a {
            NameSpaceArg::Auto => NameSpace::Auto,
            NameSpaceArg::Udf => NameSpace::Udf,
            NameSpaceArg::RockRidge => NameSpace::RockRidge,
            NameSpaceArg::Joliet => NameSpace::Joliet,
            NameSpaceArg::Iso9660 => NameSpace::Iso9660,
        }
    }
}

fn open_image(path: &Path, namespace: NameSpaceArg) -> Result<IsoImage> {
    IsoImage::open(
        crate::library::open_source(path)?,
        OpenOptions {
            prefer: namespace.into(),
        },
    )
    .with_context(|| format!("cannot read {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// info

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia iso info debian.iso\n  vmedia iso info debian.iso --json | jq .boot_catalog\n\n\
The El Torito section ends with the mkisofs options (xorriso -as mkisofs syntax) that would\n\
recreate the boot setup, like `xorriso -report_el_torito as_mkisofs`."
)]
pub struct InfoArgs {
    /// The ISO image (a file or a block device)
    image: PathBuf,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Name space to report as in use
    #[arg(long, value_enum, default_value_t)]
    namespace: NameSpaceArg,
}

fn opt_time(t: &Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
}

fn hexstr(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run_info(args: InfoArgs) -> Result<ExitCode> {
    let image = open_image(&args.image, args.namespace)?;
    let display = args.image.display().to_string();
    let report = InfoReport::read(&image, &display)?;
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let InfoReport {
        volume,
        recorded_bytes: recorded,
        boot_catalog: catalog,
        mkisofs_boot_args: mkisofs_boot,
        partitions,
        checksums,
        ..
    } = &report;
    let recorded = *recorded;
    let p = &volume.primary;
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "Image:              {} ({} bytes)",
        display, volume.image_bytes
    );
    let _ = writeln!(out, "Volume id:          {}", p.volume_id);
    let _ = writeln!(out, "System id:          {}", p.system_id);
    let _ = writeln!(out, "Volume set id:      {}", p.volume_set_id);
    let _ = writeln!(out, "Publisher id:       {}", p.publisher_id);
    let _ = writeln!(out, "Data preparer id:   {}", p.data_preparer_id);
    let _ = writeln!(out, "Application id:     {}", p.application_id);
    for (label, value) in [
        ("Copyright file:     ", &p.copyright_file_id),
        ("Abstract file:      ", &p.abstract_file_id),
        ("Bibliographic file: ", &p.bibliographic_file_id),
    ] {
        if !value.is_empty() {
            let _ = writeln!(out, "{label}{value}");
        }
    }
    let _ = writeln!(out, "Created:            {}", opt_time(&p.creation));
    let _ = writeln!(out, "Modified:           {}", opt_time(&p.modification));
    let _ = writeln!(out, "Expires:            {}", opt_time(&p.expiration));
    let _ = writeln!(out, "Effective:          {}", opt_time(&p.effective));
    let _ = writeln!(
        out,
        "Volume size:        {} blocks of {} bytes ({} bytes)",
        p.volume_space_size, p.logical_block_size, volume.volume_bytes
    );
    if recorded != volume.volume_bytes {
        let _ = writeln!(
            out,
            "Medium size:        {recorded} bytes (partitions extend past the volume)"
        );
    }
    let mut spaces = Vec::new();
    if let Some(u) = &volume.udf {
        spaces.push(format!(
            "UDF {} (label {:?})",
            u.revision
                .as_deref()
                .unwrap_or(if u.nsr == 2 { "1.x" } else { "2.x" }),
            u.label
        ));
    }
    if let Some(rr) = &volume.rock_ridge {
        if rr.extensions.is_empty() {
            spaces.push("Rock Ridge".to_string());
        } else {
            spaces.push(format!("Rock Ridge ({})", rr.extensions.join(", ")));
        }
    }
    if let Some(j) = &volume.joliet {
        spaces.push(format!(
            "Joliet level {} (volume id {:?})",
            j.level, j.fields.volume_id
        ));
    }
    if !volume.descriptors.is_empty() {
        spaces.push("ISO 9660".to_string());
    }
    let _ = writeln!(
        out,
        "Name spaces:        {}; in use: {}",
        spaces.join(", "),
        volume.namespace.label()
    );
    let descriptors: Vec<String> = volume
        .descriptors
        .iter()
        .map(|d| format!("{} {}", d.lba, d.kind.label()))
        .collect();
    let _ = writeln!(out, "Descriptors:        {}", descriptors.join(", "));
    if let Some(u) = &volume.udf {
        let _ = writeln!(
            out,
            "UDF:                NSR0{}, anchor at {}, partition at {} ({} blocks){}",
            u.nsr,
            u.anchor_lba,
            u.partition_start,
            u.partition_blocks,
            match (u.files, u.directories) {
                (Some(f), Some(d)) => format!(", {f} files, {d} folders"),
                _ => String::new(),
            }
        );
    }
    match catalog {
        None => {
            let _ = writeln!(out, "El Torito:          none (not bootable from CD)");
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "El Torito:          catalog at block {}{}",
                c.lba,
                c.catalog_path
                    .as_ref()
                    .map_or(String::new(), |p| format!(" ({p})"))
            );
            for e in &c.entries {
                let location = match (&e.image_path, e.appended_partition) {
                    (Some(path), _) => path.clone(),
                    (None, Some(n)) => format!("appended partition {n}"),
                    (None, None) => "not a file in the tree".into(),
                };
                let _ = writeln!(
                    out,
                    "  entry {}: {:?} {} {:?}, load segment {:#06x}, {} sectors loaded, block {}, {} ({} bytes){}{}",
                    e.index,
                    e.platform,
                    if e.bootable { "bootable" } else { "not bootable" },
                    e.emulation,
                    e.load_segment,
                    e.sector_count,
                    e.lba,
                    location,
                    e.image_size,
                    if e.boot_info_table { ", boot info table" } else { "" },
                    if e.grub2_boot_info { ", grub2 boot info" } else { "" },
                );
            }
            if let Some(a) = mkisofs_boot {
                let _ = writeln!(out, "  mkisofs options:  {}", a.join(" "));
            }
        }
    }
    if partitions.mbr.is_empty() && partitions.gpt.is_none() {
        let _ = writeln!(out, "Partitions:         none");
    } else {
        let _ = writeln!(out, "Partitions:");
        for m in &partitions.mbr {
            let _ = writeln!(
                out,
                "  MBR {}: type {:#04x}{} start sector {} count {} ({} bytes)",
                m.number,
                m.partition_type,
                if m.bootable { " bootable" } else { "" },
                m.start_sector,
                m.sector_count,
                u64::from(m.sector_count) * 512
            );
        }
        if let Some(g) = &partitions.gpt {
            let _ = writeln!(
                out,
                "  GPT disk {} ({} entries of {} bytes at sector {}{}{})",
                g.disk_guid,
                g.entry_count,
                g.entry_size,
                g.entries_start_sector,
                if g.header_crc_ok {
                    ""
                } else {
                    ", header CRC WRONG"
                },
                if g.entries_crc_ok {
                    ""
                } else {
                    ", entries CRC WRONG"
                },
            );
            for part in &g.partitions {
                let _ = writeln!(
                    out,
                    "  GPT {}: type {} sectors {}..{} name {:?}",
                    part.number, part.type_guid, part.first_sector, part.last_sector, part.name
                );
            }
        }
    }
    if partitions.apple_partition_map {
        let _ = writeln!(out, "  Apple partition map present");
    }
    match checksums {
        None => {
            let _ = writeln!(out, "Checksums:          none embedded");
        }
        Some(c) => {
            if let Some(m) = &c.md5 {
                let _ = writeln!(
                    out,
                    "Checksums:          MD5 {} (checkisomd5, skip {} sectors)",
                    hexstr(&m.digest),
                    m.skip_sectors
                );
            }
            if let Some(s) = &c.sha256 {
                let _ = writeln!(
                    out,
                    "                    SHA-256 {} over {} bytes",
                    hexstr(&s.digest),
                    s.covered_bytes
                );
            }
            if let Some(s) = &c.signature {
                let _ = writeln!(
                    out,
                    "                    ed25519 signature by key {}",
                    hexstr(&s.key_id)
                );
            }
        }
    }
    print_stdout(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a typed report as pretty JSON, keys in alphabetical order at every level (as the
/// documents have always been printed).
pub(super) fn print_json<T: serde::Serialize>(report: &T) -> Result<()> {
    let value = serde_json::to_value(report)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn print_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ls

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia iso ls debian.iso\n  vmedia iso ls debian.iso -lR /isolinux\n  vmedia iso ls debian.iso -R --json\n\n\
Entries are sorted by name. With -R every line is a full path from the image root."
)]
pub struct LsArgs {
    /// The ISO image
    image: PathBuf,
    /// Directory or file inside the image
    #[arg(default_value = "/")]
    path: String,
    /// Long format: mode, links, owner, group, size, modification time (UTC), name
    #[arg(short = 'l', long)]
    long: bool,
    /// List subdirectories recursively
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print a JSON array of entries
    #[arg(long)]
    json: bool,
    /// Name space to list
    #[arg(long, value_enum, default_value_t)]
    namespace: NameSpaceArg,
}

fn long_line(entry: &Entry, name: &str) -> String {
    let size = match &entry.kind {
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            format!("{major}, {minor}")
        }
        _ => entry.size.to_string(),
    };
    let date = entry
        .mtime
        .map_or_else(|| "                ".to_string(), |t| t.to_short_utc());
    let target = match &entry.kind {
        EntryKind::Symlink { target } => format!(" -> {target}"),
        _ => String::new(),
    };
    format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {}{}",
        entry.mode_string(),
        entry.nlink,
        entry.uid,
        entry.gid,
        size,
        date,
        name,
        target
    )
}

fn sort_by_name(items: &mut [WalkEntry]) {
    items.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
}

pub fn run_ls(args: LsArgs) -> Result<ExitCode> {
    let image = open_image(&args.image, args.namespace)?;
    let start = image
        .lookup(&args.path)
        .with_context(|| format!("{}", args.image.display()))?;
    let base = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let base = if base.len() > 1 {
        base.trim_end_matches('/').to_string()
    } else {
        base
    };
    let mut items: Vec<WalkEntry> = Vec::new();
    if !start.is_dir() {
        items.push(WalkEntry {
            path: base.clone(),
            depth: 0,
            entry: start,
        });
    } else if args.recursive {
        for item in image.walk_from(start, &base) {
            items.push(item.with_context(|| format!("cannot list {}", args.image.display()))?);
        }
        // Sort each directory's entries by name while keeping parents before children.
        items.sort_by(|a, b| path_order(&a.path, &b.path));
    } else {
        for entry in image
            .read_dir(&start)
            .with_context(|| format!("cannot list {}", args.image.display()))?
        {
            let path = if base == "/" {
                format!("/{}", entry.name)
            } else {
                format!("{base}/{}", entry.name)
            };
            items.push(WalkEntry {
                path,
                depth: 1,
                entry,
            });
        }
        sort_by_name(&mut items);
    }
    if args.json {
        crate::print_json(&items)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = Vec::with_capacity(items.len() * 64);
    for item in &items {
        let name = if args.recursive {
            item.path.as_str()
        } else {
            item.entry.name.as_str()
        };
        let name = if name.is_empty() {
            item.path.as_str()
        } else {
            name
        };
        if args.long {
            out.extend_from_slice(long_line(&item.entry, name).as_bytes());
        } else {
            out.extend_from_slice(name.as_bytes());
        }
        out.push(b'\n');
    }
    print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Orders paths component by component, so "/a/b" sorts right after "/a".
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/')
        .map(str::as_bytes)
        .cmp(b.split('/').map(str::as_bytes))
}

// ---------------------------------------------------------------------------------------------
// cat

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia iso cat debian.iso /isolinux/isolinux.cfg\n  vmedia iso cat debian.iso /install.amd/vmlinuz > vmlinuz\n\n\
Symbolic links inside the image are followed."
)]
pub struct CatArgs {
    /// The ISO image
    image: PathBuf,
    /// File inside the image
    path: String,
    /// Name space to look the path up in
    #[arg(long, value_enum, default_value_t)]
    namespace: NameSpaceArg,
}

pub fn run_cat(args: CatArgs) -> Result<ExitCode> {
    let image = open_image(&args.image, args.namespace)?;
    let entry = image
        .lookup_follow(&args.path)
        .with_context(|| format!("{}", args.image.display()))?;
    let reader = image
        .file_reader(&entry)
        .with_context(|| format!("{}: {}", args.image.display(), args.path))?;
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset = 0u64;
    while offset < reader.len() {
        let want = (reader.len() - offset).min(buf.len() as u64) as usize;
        let n = reader
            .read_at(&mut buf[..want], offset)
            .with_context(|| format!("cannot read {} at byte {offset}", args.path))?;
        if n == 0 {
            bail!("{}: the file ends early at byte {offset}", args.path);
        }
        stdout.write_all(&buf[..n])?;
        offset += n as u64;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// extract

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia iso extract debian.iso ./debian\n  vmedia iso extract debian.iso ./boot /isolinux /install.amd/vmlinuz\n\n\
Like tar: DIR is created if needed and may already hold files; selected PATHs keep their\n\
place below the image root. Existing files are not replaced unless --force. Rock Ridge modes,\n\
times, symbolic links and hard links are restored; owners and device files only as root.\n\
Names that could escape DIR (\"..\", \"/\") are refused, and nothing is written through a\n\
symbolic link (links are created last).\n\n\
A DIR that does not exist yet is filled under a hidden temporary name and renamed into place\n\
when complete, so a failed or killed run leaves no tree that looks whole. Like tar and 7z,\n\
nothing is flushed to disk unless --sync (or VMEDIA_SYNC=1) asks for it."
)]
pub struct ExtractArgs {
    /// The ISO image
    image: PathBuf,
    /// Destination directory
    dir: PathBuf,
    /// Files or directories inside the image (default: everything)
    paths: Vec<String>,
    /// Replace existing files
    #[arg(long)]
    force: bool,
    /// Name space to extract
    #[arg(long, value_enum, default_value_t)]
    namespace: NameSpaceArg,
    /// Do not restore owners even when running as root
    #[arg(long)]
    no_same_owner: bool,
    /// Flush the extracted files to stable storage before finishing (also VMEDIA_SYNC=1)
    #[arg(long)]
    sync: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

pub fn run_extract(args: ExtractArgs) -> Result<ExitCode> {
    // A file is also handed to the extraction for copy_file_range; a `library:` version is
    // read in place through the library.
    let image_file = match crate::library::is_library_path(&args.image) {
        true => None,
        false => {
            Some(Arc::new(File::open(&args.image).with_context(|| {
                format!("cannot open {}", args.image.display())
            })?))
        }
    };
    let image = match &image_file {
        Some(file) => IsoImage::open(
            file.clone(),
            OpenOptions {
                prefer: args.namespace.into(),
            },
        )
        .with_context(|| format!("cannot read {}", args.image.display()))?,
        None => open_image(&args.image, args.namespace)?,
    };
    let options = ExtractOptions {
        paths: args.paths.clone(),
        replace_existing: args.force,
        restore_owners: !args.no_same_owner,
        durability: crate::env::durability(args.sync),
    };
    let bar = Bar::bytes(args.quiet);
    let result =
        vmedia_iso::extract::extract(&image, image_file.as_deref(), &args.dir, &options, &bar);
    bar.finish();
    let report = result.map_err(|e| {
        if e.replace_would_help() {
            anyhow!("{e}; pass --force to replace it")
        } else {
            anyhow::Error::new(e)
        }
    })?;
    if report.skipped_special > 0 {
        eprintln!(
            "vmedia: skipped {} device files or sockets (devices need root)",
            report.skipped_special
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// rip

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia iso rip /dev/sr0 -o disc.iso\n  vmedia iso rip /dev/sr0 -o disc.iso --retries 10 --allow-bad-sectors\n\n\
The size comes from the volume descriptor, extended to cover partitions appended past the\n\
ISO volume (hybrid images). Failed reads are retried sector by sector; afterwards the device\n\
and the copy are read again and their SHA-256 digests compared.\n\
Exit codes: 0 copied and verified, 1 failure."
)]
pub struct RipArgs {
    /// The optical drive, block device or image file to copy
    device: PathBuf,
    /// The image file to write
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing output file
    #[arg(long)]
    force: bool,
    /// Attempts per sector after a failed read
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Zero-fill sectors that stay unreadable instead of failing
    #[arg(long)]
    allow_bad_sectors: bool,
    /// Skip the verification pass
    #[arg(long)]
    no_verify: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

pub fn run_rip(args: RipArgs) -> Result<ExitCode> {
    let device = Arc::new(
        File::open(&args.device)
            .with_context(|| format!("cannot open {}", args.device.display()))?,
    );
    let image = IsoImage::open(device.clone(), OpenOptions::default())
        .with_context(|| format!("{} does not hold an ISO 9660 medium", args.device.display()))?;
    let size = image
        .recorded_size()
        .context("cannot read the partition tables")?;
    let policy = if args.force {
        OverwritePolicy::Replace
    } else {
        OverwritePolicy::Refuse
    };
    let out = AtomicFile::create(&args.output, policy)?;
    out.file()
        .set_len(size)
        .with_context(|| format!("cannot size {}", out.temp_path().display()))?;
    let bar = Bar::bytes(args.quiet);
    let opts = vmedia_iso::read::rip::RipOptions {
        size,
        retries: args.retries,
        allow_bad_sectors: args.allow_bad_sectors,
        verify: !args.no_verify,
    };
    let report = vmedia_iso::read::rip::rip(&*device, out.file(), opts, &bar)
        .with_context(|| format!("cannot copy {}", args.device.display()))?;
    bar.finish();
    out.commit()
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        eprintln!(
            "vmedia: copied {} bytes to {} (sha256 {}){}{}{}",
            report.bytes,
            args.output.display(),
            report.sha256,
            if report.verified { ", verified" } else { "" },
            if report.recovered_sectors.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} sectors recovered by retries",
                    report.recovered_sectors.len()
                )
            },
            if report.bad_sectors.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} UNREADABLE sectors zero-filled: {:?}",
                    report.bad_sectors.len(),
                    report.bad_sectors
                )
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}
