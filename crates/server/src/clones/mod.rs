//! Per-VM copy-on-write clones of library versions: `CloneStore` keeps them under
//! `STATE/clones/<NAME>/`, serves each as the writable export `clone/<NAME>`, and commits one
//! back to the library as a new version. Layout, durability and commit: docs/clones.md.
//!
//! A clone is made in O(1) (a small metadata file, a sparse data file, a journal header); reads
//! fall through to the base version through `BaseOpener`, so they share the daemon's cache;
//! writes land in the clone's overlay. Nothing here runs a thread per clone, and open files are
//! capped store-wide (`files.rs`), so thousands of clones cost only their maps.

pub mod api;
mod files;
pub mod journal;
mod library_base;
mod overlay;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use vmedia_io::ReadAt;
use vmedia_library::AddReport;

use crate::export::{Export, ExportError, ExportListing, ExportResolver};
pub use files::DEFAULT_MAX_OPEN_FILES;
pub(crate) use library_base::add_read_at;
pub use library_base::LibraryBases;
use overlay::Overlay;
pub use overlay::{CloneMeta, BLOCK_SIZE, MAX_CLONE_SIZE, MAX_REQUEST, META_FORMAT};

/// Longest clone name: it is a folder name and part of the NBD export name `clone/NAME`.
pub const MAX_CLONE_NAME: usize = 128;
/// Folder under the state directory that holds the clones.
pub const CLONES_DIR: &str = "clones";
/// File beside it that the store holds locked (`flock`) while open.
pub const LOCK_FILE: &str = "clones.lock";

/// A base pinned to one version: what a clone records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseVersion {
    /// `NAME@V` (plus `/disk` for a disk's virtual content): never moves to a newer version.
    pub spec: String,
    /// `sha256:hex` of the version.
    pub digest: String,
    /// Bytes the export serves.
    pub size: u64,
}

/// How clones reach the library; the daemon implements it over its shared cache, so clone
/// reads of base blocks are cache hits like any other export's. `LibraryBases` is a plain
/// implementation over a `Library` (no shared cache) that the daemon can wrap.
pub trait BaseOpener: Send + Sync {
    /// Pins `NAME[@V][/disk]` to one version (called once, when a clone is made, and when a
    /// clone first reads its base, to check the digest).
    fn resolve_base(&self, spec: &str) -> Result<BaseVersion, ExportError>;
    /// The read-only export of a pinned spec (`BaseVersion::spec`).
    fn open_base(&self, spec: &str) -> Result<Arc<dyn Export>, ExportError>;
    /// Adds `source` (`size` bytes) to the library as a new version of `name`.
    fn commit(&self, name: &str, source: &dyn ReadAt, size: u64) -> io::Result<AddReport>;
}

/// One clone, as `clone ls` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloneInfo {
    pub name: String,
    /// The pinned base, `NAME@V`.
    pub base: String,
    pub base_digest: String,
    pub size: u64,
    /// Bytes of the disk the clone has changed (written, zeroed or trimmed), counted in whole
    /// 64 KiB overlay blocks.
    pub bytes_written: u64,
    pub ephemeral: bool,
    /// RFC 3339.
    pub created: String,
    /// The NBD export to open it by: `clone/NAME`; for a clone of a restricted item, the
    /// capability name the daemon's API hands to whoever may see that item
    /// (`clone/NAME/cap/NAME/TOKEN`, `http::gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_export: Option<String>,
}

/// Why a clone operation failed. `api.rs` maps these to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("invalid clone name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },
    #[error("no such clone: {0}")]
    NotFound(String),
    #[error("a clone named {0} already exists")]
    Exists(String),
    #[error(
        "clone {name} is in use by {connections} open connection(s): power off or disconnect \
         the VMs using it and try again, or remove it anyway with `vmedia clone rm {name} \
         --force` (their connections are cut off)"
    )]
    InUse { name: String, connections: usize },
    #[error("base {spec}: {source}")]
    Base {
        spec: String,
        #[source]
        source: ExportError,
    },
    #[error("base {spec} is {size} bytes, over the {MAX_CLONE_SIZE}-byte limit for clones")]
    TooLarge { spec: String, size: u64 },
    #[error("clone {name} is damaged: {problem}")]
    Damaged { name: String, problem: String },
    #[error("committing clone {name} as {as_name}: {source}")]
    Commit {
        name: String,
        as_name: String,
        #[source]
        source: io::Error,
    },
    #[error("{}: another vmedia daemon uses this state folder ({source})", path.display())]
    Locked {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Checks a clone name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (so no
/// `/`, no `..`, no control characters, and the name is safe as a folder, a URL segment and an
/// NBD export name).
pub fn check_clone_name(name: &str) -> Result<(), CloneError> {
    let fail = |problem: &str| {
        Err(CloneError::InvalidName {
            name: name.chars().take(MAX_CLONE_NAME + 8).collect(),
            problem: problem.to_string(),
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > MAX_CLONE_NAME {
        return fail("longer than 128 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return fail("starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Every clone of one daemon.
pub struct CloneStore {
    root: PathBuf,
    opener: Arc<dyn BaseOpener>,
    files: Arc<files::FileCache>,
    inner: Mutex<StoreState>,
    next_id: AtomicU64,
    /// Held for the store's life: one daemon per state folder (another one would delete our
    /// creates in progress as leftovers, and append to the same journals).
    _lock: std::fs::File,
}

struct StoreState {
    clones: BTreeMap<String, Arc<Overlay>>,
    /// Names being created right now (their folders are not in place yet).
    reserved: HashSet<String>,
    damaged: Vec<DamagedClone>,
}

/// A clone folder that could not be opened at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedClone {
    pub name: String,
    pub problem: String,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> CloneError {
    let what = what.into();
    move |source| CloneError::Io { what, source }
}

impl CloneStore {
    /// Opens (creating if needed) `state_dir/clones`: reopens every persistent clone, deletes
    /// ephemeral ones and the leftovers of interrupted creates and removes.
    pub fn open(state_dir: &Path, opener: Arc<dyn BaseOpener>) -> Result<CloneStore, CloneError> {
        CloneStore::open_with_limit(state_dir, opener, DEFAULT_MAX_OPEN_FILES)
    }

    /// `open` with a cap on the data files held open at once.
    pub fn open_with_limit(
        state_dir: &Path,
        opener: Arc<dyn BaseOpener>,
        max_open_files: usize,
    ) -> Result<CloneStore, CloneError> {
        let root = state_dir.join(CLONES_DIR);
        std::fs::create_dir_all(&root).map_err(io_error(root.display().to_string()))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(lock_path.display().to_string()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| CloneError::Locked {
                path: lock_path.clone(),
                source: e.into(),
            },
        )?;
        let store = CloneStore {
            _lock: lock,
            files: Arc::new(files::FileCache::new(max_open_files)),
            root,
            opener,
            inner: Mutex::new(StoreState {
                clones: BTreeMap::new(),
                reserved: HashSet::new(),
                damaged: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
        };
        let entries =
            std::fs::read_dir(&store.root).map_err(io_error(store.root.display().to_string()))?;
        let mut clones = BTreeMap::new();
        let mut damaged = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(store.root.display().to_string()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // An interrupted create or remove: never a clone anyone was told about.
                std::fs::remove_dir_all(&path).map_err(io_error(path.display().to_string()))?;
                continue;
            }
            if check_clone_name(&name).is_err() || !path.is_dir() {
                tracing::warn!(path = %path.display(), "ignoring a stray entry among the clones");
                continue;
            }
            match store.reopen(&name, path) {
                Ok(Some(overlay)) => {
                    clones.insert(name, Arc::new(overlay));
                }
                Ok(None) => {}
                Err(error) => {
                    // One damaged clone must not keep the daemon (and every other clone) down:
                    // it stays on disk, unlisted, its name taken, for an operator to look at.
                    tracing::error!(clone = %name, error = %error, "a clone cannot be opened");
                    damaged.push(DamagedClone {
                        name,
                        problem: error.to_string(),
                    });
                }
            }
        }
        let mut state = store.state();
        state.clones = clones;
        state.damaged = damaged;
        drop(state);
        Ok(store)
    }

    /// Opens one clone folder found at start; `None` when it was ephemeral (and is deleted).
    fn reopen(&self, name: &str, path: PathBuf) -> Result<Option<Overlay>, CloneError> {
        let meta_path = path.join(overlay::META_FILE);
        let bytes = std::fs::read(&meta_path).map_err(io_error(meta_path.display().to_string()))?;
        let meta = CloneMeta::parse(&bytes).map_err(|problem| CloneError::Damaged {
            name: name.to_string(),
            problem: format!("{}: {problem}", overlay::META_FILE),
        })?;
        if meta.name != name {
            return Err(CloneError::Damaged {
                name: name.to_string(),
                problem: format!("its {} names {}", overlay::META_FILE, meta.name),
            });
        }
        if meta.ephemeral {
            self.delete_dir(name, &path)?;
            return Ok(None);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Overlay::open(
            id,
            path,
            meta,
            Arc::clone(&self.opener),
            Arc::clone(&self.files),
        )
        .map(Some)
    }

    /// Clones found at start that could not be opened (damaged metadata or journal, an I/O
    /// error): not served, not listed, their folders and names left alone.
    pub fn damaged(&self) -> Vec<DamagedClone> {
        self.state().damaged.clone()
    }

    fn state(&self) -> MutexGuard<'_, StoreState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renames a clone folder to a hidden name, then deletes it: a crash in between leaves a
    /// hidden folder the next `open` deletes, never a half-deleted clone.
    fn delete_dir(&self, name: &str, path: &Path) -> Result<(), CloneError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let doomed = self
            .root
            .join(format!(".{name}.removing-{}-{id}", std::process::id()));
        std::fs::rename(path, &doomed).map_err(io_error(path.display().to_string()))?;
        std::fs::remove_dir_all(&doomed).map_err(io_error(doomed.display().to_string()))
    }

    /// Makes clone `name` of base `NAME[@V]` (pinned to the version current now). O(1): no
    /// data is copied.
    pub fn create(&self, base: &str, name: &str, ephemeral: bool) -> Result<CloneInfo, CloneError> {
        check_clone_name(name)?;
        {
            let mut state = self.state();
            if state.clones.contains_key(name) || !state.reserved.insert(name.to_string()) {
                return Err(CloneError::Exists(name.to_string()));
            }
        }
        let made = self.create_reserved(base, name, ephemeral);
        let mut state = self.state();
        state.reserved.remove(name);
        let overlay = made?;
        let info = self.info(&overlay);
        state.clones.insert(name.to_string(), overlay);
        Ok(info)
    }

    fn create_reserved(
        &self,
        base: &str,
        name: &str,
        ephemeral: bool,
    ) -> Result<Arc<Overlay>, CloneError> {
        let pinned = self
            .opener
            .resolve_base(base)
            .map_err(|source| CloneError::Base {
                spec: base.to_string(),
                source,
            })?;
        if pinned.size > MAX_CLONE_SIZE {
            return Err(CloneError::TooLarge {
                spec: pinned.spec,
                size: pinned.size,
            });
        }
        let meta = CloneMeta {
            format: META_FORMAT,
            name: name.to_string(),
            base: pinned.spec,
            base_digest: pinned.digest,
            size: pinned.size,
            block_size: BLOCK_SIZE,
            ephemeral,
            created: jiff::Timestamp::now().to_string(),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let final_dir = self.root.join(name);
        if final_dir.symlink_metadata().is_ok() {
            return Err(CloneError::Exists(name.to_string()));
        }
        let temp = self
            .root
            .join(format!(".{name}.creating-{}-{id}", std::process::id()));
        std::fs::create_dir(&temp).map_err(io_error(temp.display().to_string()))?;
        let made = overlay::create_files(&temp, &meta)
            .and_then(|()| rustix_rename_noreplace(&temp, &final_dir))
            .and_then(|()| std::fs::File::open(&self.root)?.sync_all());
        if let Err(source) = made {
            let _ = std::fs::remove_dir_all(&temp);
            if source.kind() == io::ErrorKind::AlreadyExists {
                return Err(CloneError::Exists(name.to_string()));
            }
            return Err(CloneError::Io {
                what: format!("creating clone {name} in {}", self.root.display()),
                source,
            });
        }
        let overlay = Overlay::open(
            id,
            final_dir,
            meta,
            Arc::clone(&self.opener),
            Arc::clone(&self.files),
        )?;
        Ok(Arc::new(overlay))
    }

    fn info(&self, overlay: &Overlay) -> CloneInfo {
        let meta = &overlay.meta;
        CloneInfo {
            name: meta.name.clone(),
            base: meta.base.clone(),
            base_digest: meta.base_digest.clone(),
            size: meta.size,
            bytes_written: overlay.bytes_written(),
            ephemeral: meta.ephemeral,
            created: meta.created.clone(),
            nbd_export: Some(format!("{CLONE_EXPORT_PREFIX}{}", meta.name)),
        }
    }

    /// Every clone, by name.
    pub fn list(&self) -> Vec<CloneInfo> {
        let overlays: Vec<Arc<Overlay>> = self.state().clones.values().cloned().collect();
        overlays.iter().map(|o| self.info(o)).collect()
    }

    /// One clone.
    pub fn get(&self, name: &str) -> Result<CloneInfo, CloneError> {
        let overlay = self.overlay(name)?;
        Ok(self.info(&overlay))
    }

    fn overlay(&self, name: &str) -> Result<Arc<Overlay>, CloneError> {
        self.state()
            .clones
            .get(name)
            .cloned()
            .ok_or_else(|| CloneError::NotFound(name.to_string()))
    }

    /// Deletes a clone and its overlay. Connections still open to it get errors from then on.
    pub fn remove(&self, name: &str) -> Result<(), CloneError> {
        self.remove_with(name, true)
    }

    /// Deletes a clone unless client connections hold it open ([`CloneError::InUse`]); with
    /// `force`, removes it anyway and every request on those connections fails from then on.
    pub fn remove_with(&self, name: &str, force: bool) -> Result<(), CloneError> {
        let overlay = {
            let mut state = self.state();
            let overlay = state
                .clones
                .get(name)
                .ok_or_else(|| CloneError::NotFound(name.to_string()))?;
            // Checked under the store's lock: a connection opened after this finds the clone
            // gone (`open_export` looks it up under the same lock).
            let connections = overlay.connections.load(Ordering::SeqCst);
            if connections > 0 && !force {
                return Err(CloneError::InUse {
                    name: name.to_string(),
                    connections,
                });
            }
            state
                .clones
                .remove(name)
                .ok_or_else(|| CloneError::NotFound(name.to_string()))?
        };
        overlay.mark_removed();
        self.delete_dir(name, &overlay.dir)
    }

    /// Client connections open to clone `name` now.
    pub fn connections(&self, name: &str) -> Result<usize, CloneError> {
        Ok(self.overlay(name)?.connections.load(Ordering::SeqCst))
    }

    /// The export `clone/<name>` for one client connection: counted while it lives, so
    /// [`CloneStore::remove_with`] can refuse a clone that is in use.
    pub fn open_connection(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        let state = self.state();
        match state.clones.get(name) {
            Some(overlay) => {
                overlay.connections.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(CloneConnection(Arc::clone(overlay))))
            }
            None => Err(ExportError::NotFound(format!(
                "{CLONE_EXPORT_PREFIX}{name}"
            ))),
        }
    }

    /// The writable export `clone/<name>`; every connection to a clone shares one overlay.
    pub fn open_export(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        match self.overlay(name) {
            Ok(overlay) => Ok(overlay),
            Err(_) => Err(ExportError::NotFound(format!(
                "{CLONE_EXPORT_PREFIX}{name}"
            ))),
        }
    }

    /// Lists the clones as exports (`clone/NAME`), for NBD_OPT_LIST.
    pub fn listings(&self) -> Vec<ExportListing> {
        self.list()
            .into_iter()
            .map(|c| ExportListing {
                name: format!("{CLONE_EXPORT_PREFIX}{}", c.name),
                description: format!("clone of {}", c.base),
            })
            .collect()
    }

    /// Adds the clone's current content to the library as a new version of `as_name`. Writes
    /// to the clone wait while it is read; the library's chunking stores only changed chunks.
    pub fn commit(&self, name: &str, as_name: &str) -> Result<AddReport, CloneError> {
        let overlay = self.overlay(name)?;
        let commit_error = |source: io::Error| CloneError::Commit {
            name: name.to_string(),
            as_name: as_name.to_string(),
            source,
        };
        overlay.flush().map_err(commit_error)?;
        let _exclusive = overlay.exclusive();
        let source = CloneSource(&overlay);
        self.opener
            .commit(as_name, &source, overlay.meta.size)
            .map_err(commit_error)
    }

    /// Data files open now (at most the cap, plus those in use by operations in flight).
    pub fn open_files(&self) -> usize {
        self.files.open_count()
    }

    /// Records in a clone's journal file (after compaction, about one per run of blocks).
    pub fn journal_records(&self, name: &str) -> Result<u64, CloneError> {
        Ok(self.overlay(name)?.journal_records())
    }
}

/// One client connection's handle on a clone: the overlay, counted in its `connections` until
/// the connection lets go of it.
struct CloneConnection(Arc<Overlay>);

impl Drop for CloneConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Export for CloneConnection {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
    fn block_sizes(&self) -> crate::export::BlockSizes {
        self.0.block_sizes()
    }
    // Every request checks first that the clone was not removed under the connection (a
    // forced `clone rm`): from then on the connection gets errors only, reads included.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.check_live()?;
        self.0.read_at(buf, offset)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<crate::export::Extent>> {
        self.0.check_live()?;
        Export::extents(&*self.0, offset, length)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.check_live()?;
        self.0.write_at(data, offset, fua)
    }
    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        self.0.check_live()?;
        self.0.write_zeroes(offset, length, fua)
    }
    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.0.check_live()?;
        self.0.trim(offset, length)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.check_live()?;
        Export::flush(&*self.0)
    }
    fn can_multi_conn(&self) -> bool {
        self.0.can_multi_conn()
    }
}

/// A clone's merged content as a `ReadAt`, for commit.
struct CloneSource<'a>(&'a Overlay);

impl ReadAt for CloneSource<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.0.meta.size;
        if offset >= size {
            return Ok(0);
        }
        let n = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        self.0.read(&mut buf[..n], offset)?;
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.meta.size)
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rustix_rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        // A file system without the flag: the caller holds the name's reservation, so a plain
        // rename after a check only races a folder made by hand meanwhile.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", to.display()),
                ));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Entry points for the fuzz target `clone_journal` and its corpus replay test.
pub mod fuzzing {
    use super::journal;

    /// A clone journal's bytes: must never panic; whatever replays survives encode -> replay.
    /// Returns whether the input replayed.
    pub fn journal(data: &[u8]) -> bool {
        let Ok(replayed) = journal::replay(data) else {
            return false;
        };
        let mut again = replayed.header.encode().to_vec();
        again.extend(journal::encode_records(&replayed.records));
        let second = journal::replay(&again).expect("an encoded journal replays");
        assert_eq!(second.records, replayed.records);
        assert_eq!(second.header, replayed.header);
        assert_eq!(second.valid_len, again.len() as u64);
        true
    }

    /// A clone's `clone.json`: must never panic; returns whether it parsed.
    pub fn meta(data: &[u8]) -> bool {
        super::CloneMeta::parse(data).is_ok()
    }
}

/// How clients name a clone's export: `clone/NAME`.
pub const CLONE_EXPORT_PREFIX: &str = "clone/";

/// The clone store answers the daemon's resolver for every `clone/NAME` export.
impl ExportResolver for CloneStore {
    fn list(&self) -> io::Result<Vec<ExportListing>> {
        Ok(self.listings())
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        match name.strip_prefix(CLONE_EXPORT_PREFIX) {
            Some(clone) => self.open_connection(clone),
            None => Err(ExportError::NotFound(name.to_string())),
        }
    }
}
