//! `AtomicFile`: outputs appear under their final name only when complete.
//!
//! The data is written to a hidden temporary file in the destination folder and renamed over
//! the final name by `commit`. Dropping an uncommitted `AtomicFile` (an error, a panic, a
//! Ctrl-C handled by unwinding) removes the temporary file, so an interrupted run leaves
//! nothing that looks whole.
//!
//! Durability policy. Two different promises are kept apart:
//! - *Atomic appearance* (always): the final name only ever names a complete output, because
//!   the rename happens after the last write. This is what protects users from a killed run.
//! - *Power-loss durability* (on request): the data reaching stable storage before the rename.
//!   It costs a full flush of the output (seconds for a multi-GiB image) and the peers do not
//!   pay it by default: cp, tar, genisoimage, `xorriso -as mkisofs`, 7z and qemu-img convert
//!   (cache mode "unsafe") all leave the data in the page cache. Callers pick the policy
//!   ([`Durability`]; the binary maps `--sync`/`VMEDIA_SYNC=1` to it, this crate reads no
//!   environment). [`AtomicFile::commit`] keeps flushing, for callers that ask for
//!   durability explicitly (e.g. a qemu-img cache mode that flushes).
//!
//! Refusing to overwrite (`OverwritePolicy::Refuse`) is checked when the temporary file is
//! made and enforced atomically at `commit` by `renameat2(RENAME_NOREPLACE)` (or `link`
//! where the file system lacks the flag), so a file that appears at the destination during a
//! long write is never replaced.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// What to do when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverwritePolicy {
    /// Native commands: refuse unless the user passed `--force`.
    Refuse,
    /// Compatibility commands (mkisofs `-o`, qemu-img) and `--force`: replace it.
    Replace,
}

/// Whether an output is flushed to stable storage before it is renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the data (and the rename's directory) so the output survives a power loss.
    Flush,
    /// Leave the data to the kernel's writeback, as cp, tar, genisoimage and xorriso do. The
    /// output still appears only when complete; after a power loss it may be missing.
    PageCache,
}

/// Flushes the file system holding `dir` (one `syncfs`), e.g. after writing a whole tree whose
/// files were not flushed one by one.
pub fn sync_file_system(dir: &Path) -> io::Result<()> {
    let handle = File::open(dir)?;
    rustix::fs::syncfs(&handle)?;
    Ok(())
}

/// Flushes the directory `dir` itself, so a rename inside it is on stable storage.
fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being written under a temporary name, renamed into place by `commit`.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temp_path: PathBuf,
    final_path: PathBuf,
    policy: OverwritePolicy,
}

impl AtomicFile {
    /// Creates the temporary file beside `final_path`.
    ///
    /// With `OverwritePolicy::Refuse` an existing destination is an `AlreadyExists` error whose
    /// message tells the user about `--force`: checked here, so a long write is not started in
    /// vain, and again atomically by `commit`, which never replaces a file that appeared
    /// meanwhile.
    pub fn create(final_path: &Path, policy: OverwritePolicy) -> io::Result<AtomicFile> {
        if policy == OverwritePolicy::Refuse && final_path.symlink_metadata().is_ok() {
            return Err(already_exists(final_path));
        }
        let dir = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = final_path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a file name", final_path.display()),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let mut attempt = 0u32;
        loop {
            let temp_path = dir.join(format!(
                ".{name}.vmedia-tmp-{}-{attempt}",
                std::process::id()
            ));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp_path)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file: Some(file),
                        temp_path,
                        final_path: final_path.to_path_buf(),
                        policy,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", temp_path.display()),
                    ))
                }
            }
        }
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("AtomicFile used after commit")
    }

    /// The open temporary file, mutably.
    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// Where the data is going in the end.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The temporary name, e.g. for tools that must write by path.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Flushes to disk and renames the temporary file over the final name
    /// (`commit_with(Durability::Flush)`).
    pub fn commit(self) -> io::Result<()> {
        self.commit_with(Durability::Flush)
    }

    /// Renames the temporary file over the final name, flushing the data first (and the
    /// directory after) when `durability` is `Flush`.
    pub fn commit_with(mut self, durability: Durability) -> io::Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        if durability == Durability::Flush {
            file.sync_all()?;
        }
        drop(file);
        let renamed = match self.policy {
            OverwritePolicy::Replace => std::fs::rename(&self.temp_path, &self.final_path),
            OverwritePolicy::Refuse => rename_no_replace(&self.temp_path, &self.final_path),
        };
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&self.temp_path);
            return Err(e);
        }
        if durability == Durability::Flush {
            if let Some(dir) = self.final_path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                sync_directory(dir)?;
            }
        }
        Ok(())
    }
}

fn already_exists(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} already exists; pass --force to replace it",
            path.display()
        ),
    )
}

/// Renames `from` to `to` unless `to` exists, in one step: `renameat2(RENAME_NOREPLACE)`.
/// File systems without that flag (EINVAL; kernels without renameat2: ENOSYS) get
/// `link(from, to)`, which fails on an existing `to` just as atomically, then `unlink(from)`.
/// Only where neither exists (a file system without hard links) is the last resort a check
/// followed by a plain rename, the best such a file system allows.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(already_exists(to)),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => link_no_replace(from, to),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The `link` + `unlink` fallback of [`rename_no_replace`].
fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::link(from, to) {
        Ok(()) => std::fs::remove_file(from),
        Err(Errno::EXIST) => Err(already_exists(to)),
        Err(Errno::PERM | Errno::OPNOTSUPP | Errno::NOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(already_exists(to));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        {
            let mut f = AtomicFile::create(&target, OverwritePolicy::Refuse).unwrap();
            f.file_mut().write_all(b"partial").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        let mut f = AtomicFile::create(&target, OverwritePolicy::Refuse).unwrap();
        f.file_mut().write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
    }

    #[test]
    fn commit_without_flush_still_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        let mut f = AtomicFile::create(&target, OverwritePolicy::Refuse).unwrap();
        f.file_mut().write_all(b"whole").unwrap();
        f.commit_with(Durability::PageCache).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sync_file_system_accepts_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        sync_file_system(dir.path()).unwrap();
    }

    #[test]
    fn refuse_policy_keeps_a_file_that_appeared_during_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        let mut f = AtomicFile::create(&target, OverwritePolicy::Refuse).unwrap();
        f.file_mut().write_all(b"ours").unwrap();
        // Another program creates the destination while we are still writing.
        std::fs::write(&target, b"theirs").unwrap();
        let err = f.commit_with(Durability::PageCache).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the temporary file is removed"
        );
    }

    #[test]
    fn link_fallback_refuses_an_existing_destination_too() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"old").unwrap();
        let err = link_no_replace(&from, &to).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
        std::fs::remove_file(&to).unwrap();
        link_no_replace(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert!(
            !from.exists(),
            "the temporary name is gone after the fallback"
        );
    }

    #[test]
    fn replace_policy_still_replaces_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        let mut f = AtomicFile::create(&target, OverwritePolicy::Replace).unwrap();
        f.file_mut().write_all(b"ours").unwrap();
        std::fs::write(&target, b"theirs").unwrap();
        f.commit_with(Durability::PageCache).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"ours");
    }

    #[test]
    fn refuse_policy_rejects_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.iso");
        std::fs::write(&target, b"old").unwrap();
        let err = AtomicFile::create(&target, OverwritePolicy::Refuse).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("--force"));
        AtomicFile::create(&target, OverwritePolicy::Replace).unwrap();
    }
}
