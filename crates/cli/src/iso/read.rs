//! `vmedia iso info | ls | extract | cat | rip`: inspect and unpack ISO 9660 images.
//!
//! The format work is `vmedia_iso::read`; this file parses options, prints, and writes files
//! (extraction restores Rock Ridge metadata; copies run on both cores).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy, Progress, ReadAt};
use vmedia_iso::read::{
    Entry, EntryKind, FileReader, IsoImage, NameSpace, OpenOptions, Timestamp, WalkEntry,
};

use crate::progress::Bar;

/// Which directory tree supplies the names.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum NameSpaceArg {
    /// Rock Ridge, else Joliet, else ISO 9660 (like xorriso and Linux)
    #[default]
    Auto,
    RockRidge,
    Joliet,
    Iso9660,
}

impl From<NameSpaceArg> for NameSpace {
    fn from(a: NameSpaceArg) -> NameSpace {
        match a {
            NameSpaceArg::Auto => NameSpace::Auto,
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
    let volume = image.volume();
    let catalog = image
        .boot_catalog()
        .context("cannot read the El Torito boot catalog")?;
    let partitions = image
        .partitions()
        .context("cannot read the partition tables")?;
    let recorded = image.recorded_size()?;
    let checksums = vmedia_iso::integrity::read_implant(&**image.source())
        .context("cannot read the embedded checksums")?;
    let mkisofs_boot = catalog.as_ref().map(|c| c.as_mkisofs_args(&display));
    if args.json {
        let doc = serde_json::json!({
            "image": display,
            "volume": volume,
            "recorded_bytes": recorded,
            "boot_catalog": catalog,
            "mkisofs_boot_args": mkisofs_boot,
            "partitions": partitions,
            "checksums": checksums,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
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
    spaces.push("ISO 9660".to_string());
    let _ = writeln!(
        out,
        "Name spaces:        {}; in use: {}",
        spaces.join(", "),
        volume.namespace.label()
    );
    let descriptors: Vec<String> = volume
        .descriptors
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d.lba,
                serde_json::to_value(d.kind)
                    .ok()
                    .map_or_else(String::new, |v| v
                        .to_string()
                        .trim_matches('"')
                        .replace('_', " "))
            )
        })
        .collect();
    let _ = writeln!(out, "Descriptors:        {}", descriptors.join(", "));
    match &catalog {
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
            if let Some(a) = &mkisofs_boot {
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
    match &checksums {
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
        println!("{}", serde_json::to_string_pretty(&items)?);
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

/// One thing to create, with its destination path.
struct Item {
    dest: PathBuf,
    entry: Entry,
}

/// Files up to this size are read from the image in batches (one read for many files) and
/// written from memory; larger ones are copied by the kernel (`copy_file_range`).
const BATCH_FILE_BYTES: u64 = 256 * 1024;
/// A batch read covers at most this many image bytes: large enough that a folder of small
/// files costs one read, small enough to stay in the CPU caches and keep memory flat.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Two files at most this far apart in the image still share a batch read (reading the
/// gap is cheaper than another system call).
const BATCH_GAP_BYTES: u64 = 64 * 1024;
/// Unbatched files are copied in steps of this size, so the progress bar moves. One stream
/// per file: ext4 holds the inode lock for each buffered write, so a second thread on the
/// same file only contends (measured); two big files in two folders do copy in parallel.
const COPY_STEP_BYTES: u64 = 256 * 1024 * 1024;

fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!(
            "refusing the unsafe name {name:?} in {path:?}: it could write outside the destination"
        );
    }
    Ok(())
}

fn collect_items(image: &IsoImage, dir: &Path, paths: &[String]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let selected: Vec<String> = if paths.is_empty() {
        vec!["/".to_string()]
    } else {
        paths.to_vec()
    };
    for selection in &selected {
        let entry = image
            .lookup(selection)
            .with_context(|| format!("cannot find {selection}"))?;
        let mut base = dir.to_path_buf();
        let mut image_path = String::new();
        let components: Vec<&str> = selection
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        // Walk the selection from the root so its parents are created with their own metadata.
        for (i, component) in components.iter().enumerate() {
            if *component == ".." {
                bail!("{selection}: \"..\" is not allowed in an extraction path");
            }
            let child = image
                .lookup(&format!("{image_path}/{component}"))
                .with_context(|| format!("cannot find {selection}"))?;
            check_name(&child.name, selection)?;
            base.push(&child.name);
            image_path = format!("{image_path}/{}", child.name);
            if i + 1 < components.len() {
                items.push(Item {
                    dest: base.clone(),
                    entry: child,
                });
            }
        }
        if !components.is_empty() {
            items.push(Item {
                dest: base.clone(),
                entry: entry.clone(),
            });
        }
        if entry.is_dir() {
            let root_path = if image_path.is_empty() {
                "/".to_string()
            } else {
                image_path.clone()
            };
            for walked in image.walk_from(entry, &root_path) {
                let walked = walked.context("cannot read the directory tree")?;
                check_name(&walked.entry.name, &walked.path)?;
                let rel = walked
                    .path
                    .strip_prefix(&root_path)
                    .unwrap_or(&walked.path)
                    .trim_start_matches('/');
                items.push(Item {
                    dest: base.join(rel),
                    entry: walked.entry,
                });
            }
        }
    }
    Ok(items)
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{} contains a NUL byte", path.display()))
}

fn timespec(t: Option<Timestamp>) -> libc::timespec {
    match t {
        Some(t) => libc::timespec {
            tv_sec: t.unix_seconds as libc::time_t,
            tv_nsec: i64::from(t.nanoseconds) as _,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
    }
}

fn set_times_fd(file: &File, entry: &Entry) -> io::Result<()> {
    let times = [timespec(entry.atime.or(entry.mtime)), timespec(entry.mtime)];
    // SAFETY: valid fd and a two-element timespec array, as futimens requires.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_times_path(path: &Path, entry: &Entry) -> Result<()> {
    let c = cstring(path)?;
    let times = [timespec(entry.atime.or(entry.mtime)), timespec(entry.mtime)];
    // SAFETY: NUL-terminated path and a two-element timespec array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("cannot set times of {}", path.display()));
    }
    Ok(())
}

fn lchown(path: &Path, entry: &Entry) -> Result<()> {
    let c = cstring(path)?;
    // SAFETY: NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), entry.uid, entry.gid) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("cannot set the owner of {}", path.display()));
    }
    Ok(())
}

/// Makes room for `path`: an existing non-directory is removed with --force, else refused.
fn clear_destination(path: &Path, force: bool) -> Result<()> {
    match path.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        Ok(meta) if meta.is_dir() => bail!(
            "{} is a directory; cannot replace it with a file",
            path.display()
        ),
        Ok(_) if force => {
            fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))
        }
        Ok(_) => bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        ),
    }
}

/// Copies `len` bytes from `reader` (or straight from the image file by `copy_file_range`
/// when the data is stored uncompressed) into `out` at `offset`.
fn copy_range(
    image_file: &File,
    reader: &FileReader,
    out: &File,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if let Some(ranges) = reader.image_ranges() {
        if copy_ranges_in_kernel(image_file, &ranges, out, offset, len)? {
            return Ok(());
        }
    }
    if buf.is_empty() {
        buf.resize(1024 * 1024, 0);
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        reader.read_exact_at(&mut buf[..n], offset + done)?;
        std::os::unix::fs::FileExt::write_all_at(out, &buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// `Ok(false)` when the kernel cannot copy between these files (then the caller copies).
fn copy_ranges_in_kernel(
    image_file: &File,
    ranges: &[(u64, u64)],
    out: &File,
    offset: u64,
    len: u64,
) -> io::Result<bool> {
    let mut file_pos = 0u64;
    let end = offset + len;
    for &(image_offset, range_len) in ranges {
        let range_end = file_pos + range_len;
        if range_end > offset && file_pos < end {
            let from = offset.max(file_pos);
            let to = end.min(range_end);
            let mut off_in = (image_offset + (from - file_pos)) as libc::loff_t;
            let mut off_out = from as libc::loff_t;
            let mut left = to - from;
            while left > 0 {
                let chunk = left.min(1 << 30) as usize;
                // SAFETY: valid fds and offsets owned by this frame.
                let n = unsafe {
                    libc::copy_file_range(
                        image_file.as_raw_fd(),
                        &mut off_in,
                        out.as_raw_fd(),
                        &mut off_out,
                        chunk,
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    return match e.raw_os_error() {
                        Some(libc::EXDEV)
                        | Some(libc::EINVAL)
                        | Some(libc::ENOSYS)
                        | Some(libc::EOPNOTSUPP)
                            if left == to - from =>
                        {
                            Ok(false)
                        }
                        _ => Err(e),
                    };
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the image ends inside a file",
                    ));
                }
                left -= n as u64;
            }
        }
        file_pos = range_end;
    }
    Ok(true)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn run_extract(args: ExtractArgs) -> Result<ExitCode> {
    let image_file = Arc::new(
        File::open(&args.image).with_context(|| format!("cannot open {}", args.image.display()))?,
    );
    let image = IsoImage::open(
        image_file.clone(),
        OpenOptions {
            prefer: args.namespace.into(),
        },
    )
    .with_context(|| format!("cannot read {}", args.image.display()))?;
    let durability = Durability::from_flag_or_env(args.sync);

    // A destination that does not exist yet is filled under a hidden temporary name and
    // renamed into place at the end, so an interrupted run never leaves a tree that looks
    // whole. An existing destination is filled in place, like tar and 7z do.
    // DIR itself may be a symbolic link the user chose (as with tar); it is resolved once, so
    // everything below it is opened without following links.
    let (staging, root) = match fs::metadata(&args.dir) {
        Ok(meta) if meta.is_dir() => {
            let root = fs::canonicalize(&args.dir)
                .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
            (None, root)
        }
        Ok(_) => bail!("{} exists and is not a directory", args.dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if args.dir.symlink_metadata().is_ok() {
                bail!("{} is a dangling symbolic link", args.dir.display());
            }
            let staging = Staging::create(&args.dir)?;
            let root = staging.temp.clone();
            (Some(staging), root)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", args.dir.display())),
    };
    extract_into(&args, &image, &image_file, &root)?;
    if durability == Durability::Flush {
        vmedia_io::sync_file_system(&root)
            .with_context(|| format!("cannot flush {}", root.display()))?;
    }
    if let Some(staging) = staging {
        staging.publish()?;
        if durability == Durability::Flush {
            // The rename itself, so the published name survives a power loss too.
            let parent = match args.dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot flush {}", parent.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh destination being filled under a hidden sibling name.
struct Staging {
    temp: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Staging {
    fn create(target: &Path) -> Result<Staging> {
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a directory name", target.display()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let mut attempt = 0u32;
        loop {
            let temp = parent.join(format!(
                ".{}.vmedia-tmp-{}-{attempt}",
                name.to_string_lossy(),
                std::process::id()
            ));
            // The default mode of a new folder (the umask applies), as tar and 7z give DIR.
            match fs::DirBuilder::new().mode(0o777).create(&temp) {
                Ok(()) => {
                    return Ok(Staging {
                        temp,
                        target: target.to_path_buf(),
                        published: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", temp.display()))
                }
            }
        }
    }

    /// Renames the finished tree to its final name, never over something that appeared
    /// there meanwhile.
    fn publish(mut self) -> Result<()> {
        let from = cstring(&self.temp)?;
        let to = cstring(&self.target)?;
        // SAFETY: NUL-terminated paths; renameat2 has no memory effects.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot rename {} to {} (left in place)",
                    self.temp.display(),
                    self.target.display()
                )
            });
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: directories are still owner-writable unless the run failed while
            // restoring their modes; what is left keeps its hidden temporary name.
            let _ = fs::remove_dir_all(&self.temp);
        }
    }
}

fn current_umask() -> u32 {
    // SAFETY: umask has no preconditions; it is set back at once, before any thread runs.
    unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask as u32
    }
}

/// A regular file to write: where, what, and its data's place in the image.
struct FileJob<'a> {
    item: &'a Item,
    reader: FileReader,
    /// Image byte offset of the data when it is one stored run (batchable).
    stored_at: Option<u64>,
}

/// Read-only context shared by the extraction threads.
struct Extraction<'a> {
    image_file: &'a File,
    files: Vec<FileJob<'a>>,
    force: bool,
    restore_owner: bool,
    umask: u32,
    bar: &'a Bar,
}

fn extract_into(
    args: &ExtractArgs,
    image: &IsoImage,
    image_file: &File,
    root: &Path,
) -> Result<()> {
    let items = collect_items(image, root, &args.paths)?;
    let restore_owner = is_root() && !args.no_same_owner;
    let umask = current_umask();

    // Directories first, parents before children, owner-writable while we fill them.
    let mut directories: Vec<&Item> = Vec::new();
    for item in items.iter().filter(|i| i.entry.is_dir()) {
        match item.dest.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {
                fs::set_permissions(&item.dest, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot open up {}", item.dest.display()))?;
            }
            Ok(_) if args.force => {
                fs::remove_file(&item.dest)
                    .with_context(|| format!("cannot replace {}", item.dest.display()))?;
                make_dir(&item.dest)?;
            }
            Ok(_) => bail!(
                "{} exists and is not a directory; pass --force to replace it",
                item.dest.display()
            ),
            Err(_) => make_dir(&item.dest)?,
        }
        directories.push(item);
    }

    // Regular files: the first of each hard-link group is written, the rest linked to it.
    let mut link_leaders: HashMap<u64, PathBuf> = HashMap::new();
    let mut files: Vec<FileJob> = Vec::new();
    let mut hard_links: Vec<(&Item, PathBuf)> = Vec::new();
    for item in items.iter().filter(|i| i.entry.is_file()) {
        if let Some(key) = item.entry.hard_link_key() {
            if let Some(leader) = link_leaders.get(&key) {
                hard_links.push((item, leader.clone()));
                continue;
            }
            link_leaders.insert(key, item.dest.clone());
        }
        let reader = image
            .file_reader(&item.entry)
            .with_context(|| format!("cannot read {}", item.dest.display()))?;
        let stored_at = match reader.image_ranges().as_deref() {
            Some([(offset, _)]) if reader.len() <= BATCH_FILE_BYTES => Some(*offset),
            _ => None,
        };
        files.push(FileJob {
            item,
            reader,
            stored_at,
        });
    }
    // One task per destination folder: two threads creating names in one folder would
    // serialize on its lock, so each folder belongs to one thread at a time.
    let mut folders: Vec<Vec<usize>> = Vec::new();
    let mut folder_index: HashMap<&Path, usize> = HashMap::new();
    for (index, job) in files.iter().enumerate() {
        let parent = job.item.dest.parent().unwrap_or(Path::new("."));
        let slot = *folder_index.entry(parent).or_insert_with(|| {
            folders.push(Vec::new());
            folders.len() - 1
        });
        folders[slot].push(index);
    }
    // Folders with the most bytes first (a folder holding one huge file starts at once, on
    // one thread, while the other threads take the rest), so the last task is a small one.
    let folder_bytes = |f: &Vec<usize>| -> u64 { f.iter().map(|&i| files[i].reader.len()).sum() };
    folders.sort_by_cached_key(|f| std::cmp::Reverse((folder_bytes(f), f.len())));

    let total: u64 = files.iter().map(|f| f.reader.len()).sum();
    let bar = Bar::bytes(args.quiet);
    bar.phase("extracting");
    bar.set_total(total);
    let ctx = Extraction {
        image_file,
        files,
        force: args.force,
        restore_owner,
        umask,
        bar: &bar,
    };
    parallel_for(folders.len(), |task, buf| {
        extract_folder(&ctx, &folders[task], buf)
    })?;
    bar.finish();

    for (item, leader) in &hard_links {
        clear_destination(&item.dest, args.force)?;
        fs::hard_link(leader, &item.dest).with_context(|| {
            format!(
                "cannot link {} to {}",
                item.dest.display(),
                leader.display()
            )
        })?;
    }

    // Symbolic links and special files last, so no file above was written through a link.
    let mut skipped_special = 0usize;
    for item in items
        .iter()
        .filter(|i| !i.entry.is_dir() && !i.entry.is_file())
    {
        clear_destination(&item.dest, args.force)?;
        let c = cstring(&item.dest)?;
        let perm = item.entry.permissions() as libc::mode_t;
        match &item.entry.kind {
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &item.dest).with_context(|| {
                    format!("cannot create the symbolic link {}", item.dest.display())
                })?;
            }
            EntryKind::Fifo => {
                // SAFETY: NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), perm) } != 0 {
                    return Err(io::Error::last_os_error()).with_context(|| {
                        format!("cannot create the FIFO {}", item.dest.display())
                    });
                }
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                if !is_root() {
                    skipped_special += 1;
                    continue;
                }
                let kind = if matches!(item.entry.kind, EntryKind::CharDevice { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let dev = libc::makedev(*major, *minor);
                // SAFETY: NUL-terminated path.
                if unsafe { libc::mknod(c.as_ptr(), kind | perm, dev) } != 0 {
                    return Err(io::Error::last_os_error()).with_context(|| {
                        format!("cannot create the device {}", item.dest.display())
                    });
                }
            }
            _ => {
                // Sockets cannot be recreated from an image; tar and xorriso skip them too.
                skipped_special += 1;
                continue;
            }
        }
        if restore_owner {
            lchown(&item.dest, &item.entry)?;
        }
        if !matches!(item.entry.kind, EntryKind::Symlink { .. }) {
            fs::set_permissions(
                &item.dest,
                fs::Permissions::from_mode(item.entry.permissions()),
            )
            .with_context(|| format!("cannot set the mode of {}", item.dest.display()))?;
        }
        set_times_path(&item.dest, &item.entry)?;
    }

    // Directory metadata last, deepest first, so closing a directory never blocks a child.
    for item in directories.iter().rev() {
        if restore_owner {
            lchown(&item.dest, &item.entry)?;
        }
        fs::set_permissions(
            &item.dest,
            fs::Permissions::from_mode(item.entry.permissions()),
        )
        .with_context(|| format!("cannot set the mode of {}", item.dest.display()))?;
        set_times_path(&item.dest, &item.entry)?;
    }
    if skipped_special > 0 {
        eprintln!("vmedia: skipped {skipped_special} device files or sockets (devices need root)");
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes the files of one destination folder: small files stored side by side in the image
/// are read with one large read and written from memory; larger ones are copied by the
/// kernel.
fn extract_folder(ctx: &Extraction, folder: &[usize], buf: &mut Vec<u8>) -> Result<()> {
    let Some(first) = folder.first() else {
        return Ok(());
    };
    let parent = ctx.files[*first]
        .item
        .dest
        .parent()
        .unwrap_or(Path::new("."));
    let dir = FsOpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(parent)
        .with_context(|| format!("cannot open {}", parent.display()))?;
    // Image order, so the batch reads below walk the image forwards.
    let mut order = folder.to_vec();
    order.sort_by_key(|&i| ctx.files[i].stored_at.unwrap_or(u64::MAX));
    let mut next = 0;
    while next < order.len() {
        let job = &ctx.files[order[next]];
        let Some(start) = job.stored_at.filter(|_| !job.reader.is_empty()) else {
            next += 1;
            let out = create_in(
                &dir,
                &job.item.dest,
                job.item.entry.permissions(),
                ctx.force,
            )?;
            copy_whole_file(ctx, job, &out, buf)?;
            finish_file(
                &out,
                &job.item.entry,
                &job.item.dest,
                ctx.restore_owner,
                ctx.umask,
            )?;
            continue;
        };
        // Grow the batch while the next file starts at most BATCH_GAP_BYTES after the end.
        let mut end = start + job.reader.len();
        let mut last = next + 1;
        while let Some(&candidate) = order.get(last) {
            let c = &ctx.files[candidate];
            let Some(at) = c.stored_at.filter(|_| !c.reader.is_empty()) else {
                break;
            };
            let c_end = at + c.reader.len();
            if at < end || at - end > BATCH_GAP_BYTES || c_end - start > BATCH_BYTES {
                break;
            }
            end = c_end;
            last += 1;
        }
        let span = (end - start) as usize;
        if buf.len() < span {
            buf.resize(span, 0);
        }
        ReadAt::read_exact_at(ctx.image_file, &mut buf[..span], start)
            .with_context(|| format!("cannot read the image at byte {start:#x}"))?;
        let mut written = 0u64;
        for &index in &order[next..last] {
            let job = &ctx.files[index];
            written += job.reader.len();
            let Some(at) = job.stored_at else { continue };
            let from = (at - start) as usize;
            let data = &buf[from..from + job.reader.len() as usize];
            let mut out = create_in(
                &dir,
                &job.item.dest,
                job.item.entry.permissions(),
                ctx.force,
            )?;
            out.write_all(data)
                .with_context(|| format!("cannot write {}", job.item.dest.display()))?;
            finish_file(
                &out,
                &job.item.entry,
                &job.item.dest,
                ctx.restore_owner,
                ctx.umask,
            )?;
        }
        ctx.bar.advance(written);
        next = last;
    }
    Ok(())
}

/// Fills a file that is not batched: one `copy_file_range` stream (or the read/write
/// fallback), in steps so the progress bar moves.
fn copy_whole_file(ctx: &Extraction, job: &FileJob, out: &File, buf: &mut Vec<u8>) -> Result<()> {
    let len = job.reader.len();
    let mut offset = 0;
    while offset < len {
        let n = COPY_STEP_BYTES.min(len - offset);
        copy_range(ctx.image_file, &job.reader, out, offset, n, buf)
            .with_context(|| format!("cannot write {}", job.item.dest.display()))?;
        ctx.bar.advance(n);
        offset += n;
    }
    Ok(())
}

/// Runs `task(i, scratch)` for every i in 0..count on all cores; stops at the first error.
/// Each thread keeps one scratch buffer.
fn parallel_for<F>(count: usize, task: F) -> Result<()>
where
    F: Fn(usize, &mut Vec<u8>) -> Result<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(count.max(1));
    let work = || -> Result<()> {
        let mut buf = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                break;
            }
            if let Err(e) = task(i, &mut buf) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    if threads <= 1 {
        return work();
    }
    let errors: Vec<anyhow::Error> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        // The calling thread works too instead of waiting.
        let mine = work().err();
        mine.into_iter()
            .chain(workers.into_iter().filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(anyhow!("an extraction thread panicked")),
            }))
            .collect()
    });
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Creates the file `dest` (named relative to its open parent `dir`) exclusively, never
/// following a symbolic link; an existing file is replaced only with `force`.
fn create_in(dir: &File, dest: &Path, mode: u32, force: bool) -> Result<File> {
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", dest.display()))?;
    let c = CString::new(name.as_bytes())
        .map_err(|_| anyhow!("{} contains a NUL byte", dest.display()))?;
    let open = || -> io::Result<File> {
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                (mode & 0o777) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            clear_destination(dest, force)?;
            open().with_context(|| format!("cannot create {}", dest.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dest.display())),
    }
}

fn finish_file(
    out: &File,
    entry: &Entry,
    dest: &Path,
    restore_owner: bool,
    umask: u32,
) -> Result<()> {
    let mut chown_done = false;
    if restore_owner && (entry.uid != 0 || entry.gid != 0) {
        // SAFETY: valid fd.
        if unsafe { libc::fchown(out.as_raw_fd(), entry.uid, entry.gid) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot set the owner of {}", dest.display()));
        }
        chown_done = true;
    }
    // The file was created with its permission bits; only the umask, special bits, or a
    // chown (which clears setuid) need a chmod.
    let perm = entry.permissions();
    if perm & umask != 0 || perm & 0o7000 != 0 || chown_done {
        out.set_permissions(fs::Permissions::from_mode(entry.permissions()))
            .with_context(|| format!("cannot set the mode of {}", dest.display()))?;
    }
    set_times_fd(out, entry).with_context(|| format!("cannot set times of {}", dest.display()))
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
        println!("{}", serde_json::to_string_pretty(&report)?);
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
