//! A bounded set of open overlay data files shared by every clone of a store, so that 500
//! clones (and more) never need 500 file descriptors: a clone's file is opened on first use and
//! closed again when it is the least recently used one beyond the cap.
//!
//! Closing a file loses nothing: its written pages stay in the page cache, and `fdatasync` on a
//! later handle flushes the file's (the inode's) dirty pages whichever handle wrote them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Open data files kept by default: a quarter of a typical 1024-descriptor limit, leaving the
/// rest for client sockets and the library.
pub const DEFAULT_MAX_OPEN_FILES: usize = 256;

/// The open files, keyed by clone id, with a use stamp for least-recently-used closing.
pub(crate) struct FileCache {
    cap: usize,
    inner: Mutex<Entries>,
}

struct Entries {
    tick: u64,
    open: HashMap<u64, (Arc<File>, u64)>,
}

impl FileCache {
    pub(crate) fn new(cap: usize) -> FileCache {
        FileCache {
            cap: cap.max(1),
            inner: Mutex::new(Entries {
                tick: 0,
                open: HashMap::new(),
            }),
        }
    }

    /// The open data file of clone `id` at `path`, opening it (read-write) if needed.
    /// Handles in use by an operation stay valid when the cache drops them.
    pub(crate) fn get(&self, id: u64, path: &Path) -> io::Result<Arc<File>> {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.tick += 1;
        let tick = entries.tick;
        if let Some((file, used)) = entries.open.get_mut(&id) {
            *used = tick;
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        );
        while entries.open.len() >= self.cap {
            let Some(oldest) = entries
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            entries.open.remove(&oldest);
        }
        entries.open.insert(id, (Arc::clone(&file), tick));
        Ok(file)
    }

    /// Closes clone `id`'s file (it was removed).
    pub(crate) fn forget(&self, id: u64) {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.open.remove(&id);
    }

    /// Files open now.
    pub(crate) fn open_count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }
}
