//! Extraction: writes an image's files into a host folder, restoring Rock Ridge metadata.
//!
//! The engine behind `vmedia iso extract`, usable by any caller:
//! - a destination that does not exist yet is filled under a hidden sibling name and renamed
//!   into place at the end, never over something that appeared there meanwhile
//!   (`RENAME_NOREPLACE`), so an interrupted run never leaves a tree that looks whole; an
//!   existing destination is filled in place, like tar and 7z do;
//! - folders are created first, parents before children, owner-writable while they fill;
//! - regular files are written one destination folder per task on all cores: small files
//!   stored side by side are read with one large read and written from memory, larger ones
//!   are copied by the kernel (`copy_file_range`) when the caller passes the image file;
//! - hard links, then symbolic links and special files last, so nothing is written through a
//!   link; folder metadata last of all, deepest first.
//!
//! Names that could escape the destination ("..", "/", NUL) are refused, and every file is
//! created relative to its open parent folder without following links.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps, CWD};
use serde::Serialize;
use vmedia_io::{Durability, Progress, ReadAt};

use crate::read::{Entry, EntryKind, FileReader, IsoImage, ReadError, Timestamp};

/// Files up to this size are read from the image in batches (one read for many files) and
/// written from memory; larger ones are copied by the kernel (`copy_file_range`).
const BATCH_FILE_BYTES: u64 = 256 * 1024;
/// A batch read covers at most this many image bytes: large enough that a folder of small
/// files costs one read, small enough to stay in the CPU caches and keep memory flat.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Two files at most this far apart in the image still share a batch read (reading the
/// gap is cheaper than another system call).
const BATCH_GAP_BYTES: u64 = 64 * 1024;
/// Unbatched files are copied in steps of this size, so progress moves. One stream per
/// file: ext4 holds the inode lock for each buffered write, so a second thread on the same
/// file only contends (measured); two big files in two folders do copy in parallel.
const COPY_STEP_BYTES: u64 = 256 * 1024 * 1024;
/// Buffer of the read/write fallback when the kernel cannot copy between the files.
const FALLBACK_BUFFER_BYTES: usize = 1024 * 1024;
/// One `copy_file_range` call moves at most this much (the kernel caps a call near 2 GiB).
const KERNEL_COPY_CHUNK_BYTES: u64 = 1 << 30;
/// Hidden staging names tried before giving up (another run may hold the same name).
const MAX_STAGING_ATTEMPTS: u32 = 1000;

/// What to extract and how.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Files or folders inside the image (they keep their place below the image root, with
    /// their parents); empty means everything.
    pub paths: Vec<String>,
    /// Replace existing files; otherwise an existing file is an error ([`ExtractError::Exists`]).
    pub replace_existing: bool,
    /// Restore Rock Ridge owners when the process runs as root (like tar's --same-owner).
    pub restore_owners: bool,
    /// Flush the extracted files (and the final rename) to stable storage before returning.
    pub durability: Durability,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            paths: Vec::new(),
            replace_existing: false,
            restore_owners: true,
            durability: Durability::PageCache,
        }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtractReport {
    /// Regular files written (the first name of each hard-link group).
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Further names of hard-link groups, made as links.
    pub hard_links: u64,
    /// Folders created or reused.
    pub directories: u64,
    /// Device files (only root may make them) and sockets (no image can recreate them) that
    /// were skipped, as tar and xorriso skip them.
    pub skipped_special: u64,
}

/// An extraction failure, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A selected path is not in the image.
    #[error("cannot find {selection}")]
    NotFound {
        selection: String,
        #[source]
        source: ReadError,
    },
    /// A selected path climbs out of the image root.
    #[error("{selection}: \"..\" is not allowed in an extraction path")]
    ParentComponent { selection: String },
    /// An image entry's name could write outside the destination.
    #[error(
        "refusing the unsafe name {name:?} in {path:?}: it could write outside the destination"
    )]
    UnsafeName { name: String, path: String },
    /// The image could not be read.
    #[error("{context}")]
    Read {
        context: String,
        #[source]
        source: ReadError,
    },
    /// A host file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file to write already exists and replacing was not allowed.
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    /// A folder to create is taken by something else and replacing was not allowed.
    #[error("{} exists and is not a directory", path.display())]
    ExistsNotDirectory { path: PathBuf },
    /// A file would replace a folder.
    #[error("{} is a directory; cannot replace it with a file", path.display())]
    IsADirectory { path: PathBuf },
    /// The destination exists and is not a folder.
    #[error("{} exists and is not a directory", path.display())]
    DestinationNotDirectory { path: PathBuf },
    /// The destination is a symbolic link to nothing.
    #[error("{} is a dangling symbolic link", path.display())]
    DanglingLink { path: PathBuf },
    /// The destination has no final name to stage under.
    #[error("{} is not a directory name", path.display())]
    NoDirectoryName { path: PathBuf },
    /// The finished tree could not be renamed into place.
    #[error("cannot rename {} to {} (left in place)", from.display(), to.display())]
    Publish {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A worker thread panicked (a bug, reported instead of propagated).
    #[error("an extraction thread panicked")]
    WorkerPanicked,
}

impl ExtractError {
    /// Whether replacing existing files (`ExtractOptions::replace_existing`) would get past
    /// this error, so a front end can say how.
    pub fn replace_would_help(&self) -> bool {
        matches!(
            self,
            ExtractError::Exists { .. } | ExtractError::ExistsNotDirectory { .. }
        )
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn errno<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> ExtractError + 'a {
    move |e| ExtractError::Io {
        action,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Extracts `options.paths` (or everything) of `image` into the folder `dest`.
///
/// `image_file`, when given, must be the file `image` was opened from: large files stored
/// uncompressed are then copied by the kernel without passing through memory. Without it
/// (an image in memory or behind another `ReadAt`) they are read and written.
///
/// Progress is reported in bytes of file data. The caller tells the user about
/// `ExtractReport::skipped_special`.
pub fn extract(
    image: &IsoImage,
    image_file: Option<&File>,
    dest: &Path,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractReport, ExtractError> {
    let span = tracing::info_span!("iso.extract", dest = %dest.display());
    let _entered = span.enter();
    // A destination that does not exist yet is filled under a hidden temporary name and
    // renamed into place at the end. DEST itself may be a symbolic link the caller chose (as
    // with tar); it is resolved once, so everything below it is opened without following
    // links.
    let (staging, root) = match fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let root = fs::canonicalize(dest).map_err(io_error("cannot resolve", dest))?;
            (None, root)
        }
        Ok(_) => {
            return Err(ExtractError::DestinationNotDirectory {
                path: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dest.symlink_metadata().is_ok() {
                return Err(ExtractError::DanglingLink {
                    path: dest.to_path_buf(),
                });
            }
            let staging = Staging::create(dest)?;
            let root = staging.temp.clone();
            (Some(staging), root)
        }
        Err(e) => return Err(io_error("cannot inspect", dest)(e)),
    };
    let report = extract_into(image, image_file, &root, options, progress)?;
    if options.durability == Durability::Flush {
        vmedia_io::sync_file_system(&root).map_err(io_error("cannot flush", &root))?;
    }
    if let Some(staging) = staging {
        staging.publish()?;
        if options.durability == Durability::Flush {
            // The rename itself, so the published name survives a power loss too.
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_error("cannot flush", parent))?;
        }
    }
    tracing::debug!(
        files = report.files,
        bytes = report.bytes,
        "extraction finished"
    );
    Ok(report)
}

/// One thing to create, with its destination path.
struct Item {
    dest: PathBuf,
    entry: Entry,
}

fn check_name(name: &str, path: &str) -> Result<(), ExtractError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(ExtractError::UnsafeName {
            name: name.to_string(),
            path: path.to_string(),
        });
    }
    Ok(())
}

fn collect_items(
    image: &IsoImage,
    dir: &Path,
    paths: &[String],
) -> Result<Vec<Item>, ExtractError> {
    let mut items = Vec::new();
    let selected: Vec<String> = if paths.is_empty() {
        vec!["/".to_string()]
    } else {
        paths.to_vec()
    };
    let not_found = |selection: &str| {
        let selection = selection.to_string();
        move |source| ExtractError::NotFound { selection, source }
    };
    for selection in &selected {
        let entry = image.lookup(selection).map_err(not_found(selection))?;
        let mut base = dir.to_path_buf();
        let mut image_path = String::new();
        let components: Vec<&str> = selection
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        // Walk the selection from the root so its parents are created with their own metadata.
        for (i, component) in components.iter().enumerate() {
            if *component == ".." {
                return Err(ExtractError::ParentComponent {
                    selection: selection.clone(),
                });
            }
            let child = image
                .lookup(&format!("{image_path}/{component}"))
                .map_err(not_found(selection))?;
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
                let walked = walked.map_err(|source| ExtractError::Read {
                    context: "cannot read the directory tree".into(),
                    source,
                })?;
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

/// A file time as `utimensat` takes it; an unknown time is left alone.
fn timespec(t: Option<Timestamp>) -> Timespec {
    match t {
        Some(t) => Timespec {
            tv_sec: t.unix_seconds,
            tv_nsec: t.nanoseconds.into(),
        },
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    }
}

fn timestamps(entry: &Entry) -> Timestamps {
    Timestamps {
        last_access: timespec(entry.atime.or(entry.mtime)),
        last_modification: timespec(entry.mtime),
    }
}

/// Rock Ridge ids as `chown` takes them; the all-ones id means "leave unchanged" to the
/// kernel, so it is passed as exactly that.
fn owner(entry: &Entry) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    let uid = (entry.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(entry.uid));
    let gid = (entry.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(entry.gid));
    (uid, gid)
}

fn set_times_path(path: &Path, entry: &Entry) -> Result<(), ExtractError> {
    rustix::fs::utimensat(CWD, path, &timestamps(entry), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno("cannot set times of", path))
}

fn lchown(path: &Path, entry: &Entry) -> Result<(), ExtractError> {
    let (uid, gid) = owner(entry);
    rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno("cannot set the owner of", path))
}

/// Makes room for `path`: an existing non-directory is removed when replacing is allowed,
/// else refused.
fn clear_destination(path: &Path, replace: bool) -> Result<(), ExtractError> {
    match path.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot inspect", path)(e)),
        Ok(meta) if meta.is_dir() => Err(ExtractError::IsADirectory {
            path: path.to_path_buf(),
        }),
        Ok(_) if replace => fs::remove_file(path).map_err(io_error("cannot replace", path)),
        Ok(_) => Err(ExtractError::Exists {
            path: path.to_path_buf(),
        }),
    }
}

/// Copies `len` bytes from `reader` (or straight from the image file by `copy_file_range`
/// when the data is stored uncompressed) into `out` at `offset`.
fn copy_range(
    image_file: Option<&File>,
    reader: &FileReader,
    out: &File,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if let (Some(image_file), Some(ranges)) = (image_file, reader.image_ranges()) {
        if copy_ranges_in_kernel(image_file, &ranges, out, offset, len)? {
            return Ok(());
        }
    }
    if buf.is_empty() {
        buf.resize(FALLBACK_BUFFER_BYTES, 0);
    }
    for (at, n) in steps(len, buf.len() as u64) {
        let n = n as usize;
        reader.read_exact_at(&mut buf[..n], offset + at)?;
        out.write_all_at(&buf[..n], offset + at)?;
    }
    Ok(())
}

/// `(offset, length)` pieces of at most `step` bytes (non-zero) that cover `0..len` in order.
fn steps(len: u64, step: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(step)).map(move |i| {
        let at = i * step;
        (at, step.min(len - at))
    })
}

/// `Ok(false)` when the kernel cannot copy between these files (then the caller copies).
fn copy_ranges_in_kernel(
    image_file: &File,
    ranges: &[(u64, u64)],
    out: &File,
    offset: u64,
    len: u64,
) -> io::Result<bool> {
    use rustix::io::Errno;
    let mut file_pos = 0u64;
    let end = offset + len;
    for &(image_offset, range_len) in ranges {
        let range_end = file_pos + range_len;
        if range_end > offset && file_pos < end {
            let from = offset.max(file_pos);
            let to = end.min(range_end);
            let mut off_in = image_offset + (from - file_pos);
            let mut off_out = from;
            let mut left = to - from;
            while left > 0 {
                let chunk = left.min(KERNEL_COPY_CHUNK_BYTES) as usize;
                let n = match rustix::fs::copy_file_range(
                    image_file,
                    Some(&mut off_in),
                    out,
                    Some(&mut off_out),
                    chunk,
                ) {
                    Ok(n) => n,
                    // Nothing copied yet: the file systems cannot do it, the caller copies.
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
                        if left == to - from =>
                    {
                        return Ok(false)
                    }
                    Err(e) => return Err(e.into()),
                };
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
    rustix::process::geteuid().is_root()
}

/// A fresh destination being filled under a hidden sibling name; removed unless published.
struct Staging {
    temp: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Staging {
    fn create(target: &Path) -> Result<Staging, ExtractError> {
        let name = target
            .file_name()
            .ok_or_else(|| ExtractError::NoDirectoryName {
                path: target.to_path_buf(),
            })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_error("cannot create", &parent))?;
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
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && attempt < MAX_STAGING_ATTEMPTS =>
                {
                    attempt += 1
                }
                Err(e) => return Err(io_error("cannot create", &temp)(e)),
            }
        }
    }

    /// Renames the finished tree to its final name, never over something that appeared
    /// there meanwhile.
    fn publish(mut self) -> Result<(), ExtractError> {
        rustix::fs::renameat_with(CWD, &self.temp, CWD, &self.target, RenameFlags::NOREPLACE)
            .map_err(|e| ExtractError::Publish {
                from: self.temp.clone(),
                to: self.target.clone(),
                source: e.into(),
            })?;
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
    // umask can only be read by setting it; it is set back at once, before any thread runs.
    let mask = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(mask);
    mask.as_raw_mode()
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
    source: &'a dyn ReadAt,
    image_file: Option<&'a File>,
    files: Vec<FileJob<'a>>,
    replace: bool,
    restore_owner: bool,
    umask: u32,
    progress: &'a dyn Progress,
}

fn make_dir(path: &Path) -> Result<(), ExtractError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_error("cannot create", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ExtractError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_error("cannot set the mode of", path))
}

fn extract_into(
    image: &IsoImage,
    image_file: Option<&File>,
    root: &Path,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractReport, ExtractError> {
    let items = collect_items(image, root, &options.paths)?;
    let restore_owner = is_root() && options.restore_owners;
    let umask = current_umask();
    let replace = options.replace_existing;
    let mut report = ExtractReport::default();

    // Directories first, parents before children, owner-writable while we fill them.
    let mut directories: Vec<&Item> = Vec::new();
    for item in items.iter().filter(|i| i.entry.is_dir()) {
        match item.dest.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {
                fs::set_permissions(&item.dest, fs::Permissions::from_mode(0o700))
                    .map_err(io_error("cannot open up", &item.dest))?;
            }
            Ok(_) if replace => {
                fs::remove_file(&item.dest).map_err(io_error("cannot replace", &item.dest))?;
                make_dir(&item.dest)?;
            }
            Ok(_) => {
                return Err(ExtractError::ExistsNotDirectory {
                    path: item.dest.clone(),
                })
            }
            Err(_) => make_dir(&item.dest)?,
        }
        directories.push(item);
    }
    report.directories = directories.len() as u64;

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
            .map_err(|source| ExtractError::Read {
                context: format!("cannot read {}", item.dest.display()),
                source,
            })?;
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
    report.files = files.len() as u64;
    report.bytes = total;
    progress.phase("extracting");
    progress.set_total(total);
    let ctx = Extraction {
        source: &**image.source(),
        image_file,
        files,
        replace,
        restore_owner,
        umask,
        progress,
    };
    parallel_for(folders.len(), |task, buf| {
        extract_folder(&ctx, &folders[task], buf)
    })?;

    for (item, leader) in &hard_links {
        clear_destination(&item.dest, replace)?;
        fs::hard_link(leader, &item.dest).map_err(io_error("cannot link", &item.dest))?;
    }
    report.hard_links = hard_links.len() as u64;

    // Symbolic links and special files last, so no file above was written through a link.
    for item in items
        .iter()
        .filter(|i| !i.entry.is_dir() && !i.entry.is_file())
    {
        clear_destination(&item.dest, replace)?;
        let perm = Mode::from_raw_mode(item.entry.permissions());
        match &item.entry.kind {
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &item.dest)
                    .map_err(io_error("cannot create the symbolic link", &item.dest))?;
            }
            EntryKind::Fifo => {
                rustix::fs::mknodat(CWD, &item.dest, FileType::Fifo, perm, 0)
                    .map_err(errno("cannot create the FIFO", &item.dest))?;
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                if !is_root() {
                    report.skipped_special += 1;
                    continue;
                }
                let kind = if matches!(item.entry.kind, EntryKind::CharDevice { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let dev = rustix::fs::makedev(*major, *minor);
                rustix::fs::mknodat(CWD, &item.dest, kind, perm, dev)
                    .map_err(errno("cannot create the device", &item.dest))?;
            }
            _ => {
                // Sockets cannot be recreated from an image; tar and xorriso skip them too.
                report.skipped_special += 1;
                continue;
            }
        }
        if restore_owner {
            lchown(&item.dest, &item.entry)?;
        }
        if !matches!(item.entry.kind, EntryKind::Symlink { .. }) {
            set_mode(&item.dest, item.entry.permissions())?;
        }
        set_times_path(&item.dest, &item.entry)?;
    }

    // Directory metadata last, deepest first, so closing a directory never blocks a child.
    for item in directories.iter().rev() {
        if restore_owner {
            lchown(&item.dest, &item.entry)?;
        }
        set_mode(&item.dest, item.entry.permissions())?;
        set_times_path(&item.dest, &item.entry)?;
    }
    Ok(report)
}

/// Writes the files of one destination folder: small files stored side by side in the image
/// are read with one large read and written from memory; larger ones are copied by the
/// kernel.
fn extract_folder(
    ctx: &Extraction,
    folder: &[usize],
    buf: &mut Vec<u8>,
) -> Result<(), ExtractError> {
    let Some(first) = folder.first() else {
        return Ok(());
    };
    let parent = ctx.files[*first]
        .item
        .dest
        .parent()
        .unwrap_or(Path::new("."));
    let dir = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("cannot open", parent))?;
    // Image order, so the batch reads below walk the image forwards.
    let mut order = folder.to_vec();
    order.sort_by_key(|&i| ctx.files[i].stored_at.unwrap_or(u64::MAX));
    let mut next = 0;
    while next < order.len() {
        let job = &ctx.files[order[next]];
        let Some(start) = job.stored_at.filter(|_| !job.reader.is_empty()) else {
            next += 1;
            write_file(ctx, &dir, job, |out| copy_whole_file(ctx, job, out, buf))?;
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
        ctx.source
            .read_exact_at(&mut buf[..span], start)
            .map_err(|source| ExtractError::Read {
                context: format!("cannot read the image at byte {start:#x}"),
                source: ReadError::Io {
                    what: "file data",
                    offset: start,
                    source,
                },
            })?;
        let mut written = 0u64;
        for &index in &order[next..last] {
            let job = &ctx.files[index];
            written += job.reader.len();
            let Some(at) = job.stored_at else { continue };
            let from = (at - start) as usize;
            let data = &buf[from..from + job.reader.len() as usize];
            write_file(ctx, &dir, job, |mut out| {
                out.write_all(data)
                    .map_err(io_error("cannot write", &job.item.dest))
            })?;
        }
        ctx.progress.advance(written);
        next = last;
    }
    Ok(())
}

/// Fills a file that is not batched: one `copy_file_range` stream (or the read/write
/// fallback), in steps so progress moves.
fn copy_whole_file(
    ctx: &Extraction,
    job: &FileJob,
    out: &File,
    buf: &mut Vec<u8>,
) -> Result<(), ExtractError> {
    for (offset, n) in steps(job.reader.len(), COPY_STEP_BYTES) {
        copy_range(ctx.image_file, &job.reader, out, offset, n, buf)
            .map_err(io_error("cannot write", &job.item.dest))?;
        ctx.progress.advance(n);
    }
    Ok(())
}

/// Creates `job`'s file in `dir`, lets `fill` write its content, then gives it its metadata.
fn write_file(
    ctx: &Extraction,
    dir: &rustix::fd::OwnedFd,
    job: &FileJob,
    fill: impl FnOnce(&File) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let out = create_in(
        dir,
        &job.item.dest,
        job.item.entry.permissions(),
        ctx.replace,
    )?;
    fill(&out)?;
    finish_file(
        &out,
        &job.item.entry,
        &job.item.dest,
        ctx.restore_owner,
        ctx.umask,
    )
}

/// Runs `task(i, scratch)` for every i in 0..count on all cores; stops at the first error.
/// Each thread keeps one scratch buffer.
fn parallel_for<F>(count: usize, task: F) -> Result<(), ExtractError>
where
    F: Fn(usize, &mut Vec<u8>) -> Result<(), ExtractError> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(count.max(1));
    let work = || -> Result<(), ExtractError> {
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
    let errors: Vec<ExtractError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        // The calling thread works too instead of waiting.
        let mine = work().err();
        mine.into_iter()
            .chain(workers.into_iter().filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(ExtractError::WorkerPanicked),
            }))
            .collect()
    });
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Creates the file `dest` (named relative to its open parent `dir`) exclusively, never
/// following a symbolic link; an existing file is replaced only when allowed.
fn create_in(
    dir: &rustix::fd::OwnedFd,
    dest: &Path,
    mode: u32,
    replace: bool,
) -> Result<File, ExtractError> {
    let name = dest.file_name().ok_or_else(|| ExtractError::Io {
        action: "cannot create",
        path: dest.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let open = || -> io::Result<File> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )?;
        Ok(File::from(fd))
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            clear_destination(dest, replace)?;
            open().map_err(io_error("cannot create", dest))
        }
        Err(e) => Err(io_error("cannot create", dest)(e)),
    }
}

fn finish_file(
    out: &File,
    entry: &Entry,
    dest: &Path,
    restore_owner: bool,
    umask: u32,
) -> Result<(), ExtractError> {
    let mut chown_done = false;
    if restore_owner && (entry.uid != 0 || entry.gid != 0) {
        let (uid, gid) = owner(entry);
        rustix::fs::fchown(out, uid, gid).map_err(errno("cannot set the owner of", dest))?;
        chown_done = true;
    }
    // The file was created with its permission bits; only the umask, special bits, or a
    // chown (which clears setuid) need a chmod.
    let perm = entry.permissions();
    if perm & umask != 0 || perm & 0o7000 != 0 || chown_done {
        out.set_permissions(fs::Permissions::from_mode(entry.permissions()))
            .map_err(io_error("cannot set the mode of", dest))?;
    }
    rustix::fs::futimens(out, &timestamps(entry)).map_err(errno("cannot set times of", dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["", ".", "..", "a/b", "nul\0"] {
            assert!(
                matches!(check_name(name, "/x"), Err(ExtractError::UnsafeName { .. })),
                "{name:?}"
            );
        }
        assert!(check_name("ok.txt", "/ok.txt").is_ok());
    }

    #[test]
    fn only_existing_file_errors_are_helped_by_replacing() {
        let path = PathBuf::from("/x");
        assert!(ExtractError::Exists { path: path.clone() }.replace_would_help());
        assert!(ExtractError::ExistsNotDirectory { path: path.clone() }.replace_would_help());
        assert!(!ExtractError::DestinationNotDirectory { path }.replace_would_help());
    }
}
