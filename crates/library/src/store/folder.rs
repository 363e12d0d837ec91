//! The folder backend: one file per object under a root folder.
//!
//! Writes go to a hidden temporary file beside the target and are renamed into place, so a
//! reader (or a SIGKILL) never sees half an object. `put_if_absent` is a hard link of the
//! finished temporary file (it fails atomically when the name exists); `put_if_match` compares
//! and renames while holding an exclusive `flock` on `<root>/.cas.lock`, which every host that
//! mounts the folder honours (local file systems and NFSv4). Tags are a SHA-256 of the content:
//! inode and mtime could repeat after two quick replacements (coarse timestamps, reused
//! inodes), and a content tag that repeats means the state itself is back, which is harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_key, Etag, Object, ObjectMeta, PutOutcome, Store, StoreError};

/// The lock file serialising compare-and-swap writes; hidden, so listings never show it.
const LOCK_FILE: &str = ".cas.lock";

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A library store in a local (or NFS) folder.
#[derive(Debug)]
pub struct FolderStore {
    root: PathBuf,
    name: String,
}

impl FolderStore {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: &Path) -> FolderStore {
        FolderStore {
            root: root.to_path_buf(),
            name: format!("folder {}", root.display()),
        }
    }

    /// The folder the objects live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str, action: &'static str) -> Result<PathBuf, StoreError> {
        check_key(&self.name, key).map_err(|mut e| {
            e.action = action;
            e
        })?;
        Ok(self.root.join(key))
    }

    fn fail(&self, action: &'static str, key: &str, error: io::Error) -> StoreError {
        StoreError::new(&self.name, action, key, error.to_string())
    }

    /// Writes `bytes` to a fresh hidden file in `target`'s folder and returns its path.
    fn write_temp(&self, key: &str, target: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| self.fail("create the folder for", key, e))?;
        let leaf = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(
            ".tmp-{}-{}-{leaf}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)?;
            file.write_all(bytes)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(self.fail("write", key, e));
        }
        Ok(temp)
    }

    fn lock(&self) -> Result<File, StoreError> {
        fs::create_dir_all(&self.root).map_err(|e| self.fail("create", LOCK_FILE, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join(LOCK_FILE))
            .map_err(|e| self.fail("open", LOCK_FILE, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.fail("lock", LOCK_FILE, e.into()))?;
        Ok(file)
    }
}

fn etag_of(bytes: &[u8]) -> Etag {
    use sha2::{Digest, Sha256};
    Etag(hex::encode(&Sha256::digest(bytes)[..16]))
}

fn modified_of(meta: &fs::Metadata) -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(meta.mtime(), meta.mtime_nsec() as i32).ok()
}

impl Store for FolderStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key, "read")?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail("open", key, e)),
        };
        let meta = file.metadata().map_err(|e| self.fail("stat", key, e))?;
        if meta.len() > limit {
            let mut error = self.fail(
                "read",
                key,
                io::Error::other(format!("{} bytes, limit {limit}", meta.len())),
            );
            error.too_large = Some(meta.len());
            return Err(error);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| self.fail("read", key, e))?;
        Ok(Some(bytes))
    }

    fn get_tagged(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError> {
        Ok(self.get(key, limit)?.map(|bytes| Object {
            etag: etag_of(&bytes),
            bytes,
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let target = self.path(key, "write")?;
        let temp = self.write_temp(key, &target, bytes)?;
        fs::rename(&temp, &target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            self.fail("rename into place", key, e)
        })
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        let target = self.path(key, "create")?;
        let temp = self.write_temp(key, &target, bytes)?;
        let linked = fs::hard_link(&temp, &target);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(PutOutcome::Written),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::Conflict),
            Err(e) => Err(self.fail("create", key, e)),
        }
    }

    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &Etag) -> Result<PutOutcome, StoreError> {
        let target = self.path(key, "update")?;
        let temp = self.write_temp(key, &target, bytes)?;
        let _lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        let current = match fs::read(&target) {
            Ok(bytes) => Some(etag_of(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(self.fail("stat", key, e));
            }
        };
        if current.as_ref() != Some(etag) {
            let _ = fs::remove_file(&temp);
            return Ok(PutOutcome::Conflict);
        }
        fs::rename(&temp, &target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            self.fail("rename into place", key, e)
        })?;
        Ok(PutOutcome::Written)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let base = match prefix.rfind('/') {
            Some(at) => &prefix[..at],
            None => "",
        };
        let start = if base.is_empty() {
            self.root.clone()
        } else {
            self.path(base, "list")?
        };
        let mut found = Vec::new();
        let mut pending = vec![(start, base.to_string())];
        while let Some((dir, dir_key)) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.fail("list", &dir_key, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.fail("list", &dir_key, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if dir_key.is_empty() {
                    name
                } else {
                    format!("{dir_key}/{name}")
                };
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted between the listing and the stat: a concurrent gc or prune.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.fail("stat", &key, e)),
                };
                if meta.is_dir() {
                    pending.push((entry.path(), key));
                } else if key.starts_with(prefix) {
                    found.push(ObjectMeta {
                        key,
                        size: meta.len(),
                        modified: modified_of(&meta),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key, "delete")?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key, "stat")?;
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                modified: modified_of(&meta),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail("stat", key, e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        if !self.root.exists() {
            return Ok(());
        }
        vmedia_io::sync_file_system(&self.root).map_err(|e| self.fail("flush", "", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn objects_round_trip_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        store.put("chunks/ab/abc", b"one").unwrap();
        store.put("chunks/cd/cde", b"two").unwrap();
        store.put("items/x", b"three").unwrap();
        let got = store.get("chunks/ab/abc", 10).unwrap().unwrap();
        assert_eq!(got, b"one");
        let keys: Vec<_> = store
            .list("chunks/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["chunks/ab/abc", "chunks/cd/cde"]);
        assert!(store.get("missing", 10).unwrap().is_none());
        store.delete("items/x").unwrap();
        store.delete("items/x").unwrap();
        assert!(store.head("items/x").unwrap().is_none());
    }

    #[test]
    fn get_refuses_objects_over_the_limit_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        store.put("big", &[0u8; 100]).unwrap();
        let err = store.get("big", 99).unwrap_err();
        assert_eq!(err.too_large, Some(100));
    }

    #[test]
    fn put_if_absent_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        assert_eq!(store.put_if_absent("a", b"1").unwrap(), PutOutcome::Written);
        assert_eq!(
            store.put_if_absent("a", b"2").unwrap(),
            PutOutcome::Conflict
        );
        assert_eq!(store.get("a", 10).unwrap().unwrap(), b"1");
        assert!(store
            .list("")
            .unwrap()
            .iter()
            .all(|m| !m.key.contains("tmp")));
    }

    #[test]
    fn put_if_match_refuses_a_stale_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        store.put_if_absent("t", b"v1").unwrap();
        let first = store.get_tagged("t", 10).unwrap().unwrap();
        assert_eq!(
            store.put_if_match("t", b"v2", &first.etag).unwrap(),
            PutOutcome::Written
        );
        assert_eq!(
            store.put_if_match("t", b"v3", &first.etag).unwrap(),
            PutOutcome::Conflict
        );
        assert_eq!(store.get("t", 10).unwrap().unwrap(), b"v2");
        assert_eq!(
            store.put_if_match("gone", b"x", &first.etag).unwrap(),
            PutOutcome::Conflict
        );
    }

    #[test]
    fn concurrent_compare_and_swap_loses_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FolderStore::new(dir.path()));
        store.put_if_absent("counter", b"0").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        loop {
                            let current = store.get_tagged("counter", 100).unwrap().unwrap();
                            let value: u64 = std::str::from_utf8(&current.bytes)
                                .unwrap()
                                .parse()
                                .unwrap();
                            let next = (value + 1).to_string();
                            if store
                                .put_if_match("counter", next.as_bytes(), &current.etag)
                                .unwrap()
                                == PutOutcome::Written
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get("counter", 100).unwrap().unwrap(), b"160");
    }
}
