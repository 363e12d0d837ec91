//! `AtomicFile`: outputs appear under their final name only when complete.
//!
//! The data is written to a hidden temporary file in the destination folder and renamed over
//! the final name by `commit`. Dropping an uncommitted `AtomicFile` (an error, a panic, a
//! Ctrl-C handled by unwinding) removes the temporary file, so an interrupted run leaves
//! nothing that looks whole.

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

/// A file being written under a temporary name, renamed into place by `commit`.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temp_path: PathBuf,
    final_path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file beside `final_path`.
    ///
    /// With `OverwritePolicy::Refuse` an existing destination is an `AlreadyExists` error whose
    /// message tells the user about `--force`.
    pub fn create(final_path: &Path, policy: OverwritePolicy) -> io::Result<AtomicFile> {
        if policy == OverwritePolicy::Refuse && final_path.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists; pass --force to replace it",
                    final_path.display()
                ),
            ));
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

    /// Flushes to disk and renames the temporary file over the final name.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path)
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
