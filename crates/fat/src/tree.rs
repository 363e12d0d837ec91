//! The source folder as a sorted tree, with every name checked and aliased before any byte is
//! written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::names::{store_name, StoredName};
use crate::FatError;

/// Folders nested deeper than this cannot be reached by UEFI paths anyway; it also bounds
/// recursion on a hostile tree.
const MAX_DEPTH: usize = 64;
/// A FAT folder holds at most 65536 32-byte entries (the specification's 2 MiB limit).
pub const MAX_DIR_ENTRIES: usize = 65_536;
/// FAT stores file sizes in 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

#[derive(Debug)]
pub struct Node {
    pub name: StoredName,
    /// Modification time (Unix seconds) of the source, used unless a fixed date is given.
    pub mtime: i64,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub enum NodeKind {
    File { source: PathBuf, size: u64 },
    Dir(Dir),
}

#[derive(Debug, Default)]
pub struct Dir {
    pub children: Vec<Node>,
}

impl Dir {
    /// Directory entries this folder needs, including `.` and `..` when it is not the root.
    pub fn entry_count(&self, is_root: bool) -> usize {
        let own = if is_root { 0 } else { 2 };
        own + self
            .children
            .iter()
            .map(|c| c.name.entry_count())
            .sum::<usize>()
    }
}

/// Reads `root` recursively. Symbolic links are followed (like `mcopy`); anything that is
/// neither a file nor a folder is an error, never silently skipped.
pub fn scan(root: &Path) -> Result<Dir, FatError> {
    let meta = std::fs::metadata(root).map_err(|e| FatError::Source {
        path: root.into(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(FatError::NotAFolder(root.into()));
    }
    scan_dir(root, 0)
}

fn scan_dir(dir: &Path, depth: usize) -> Result<Dir, FatError> {
    if depth > MAX_DEPTH {
        return Err(FatError::TooDeep {
            path: dir.into(),
            max: MAX_DEPTH,
        });
    }
    let read = std::fs::read_dir(dir).map_err(|e| FatError::Source {
        path: dir.into(),
        source: e,
    })?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| FatError::Source {
            path: dir.into(),
            source: e,
        })?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| FatError::BadName {
                path: path.clone(),
                problem: "the name is not valid UTF-8".into(),
            })?;
        entries.push((name, path));
    }
    // Byte order of the names: the same tree gives the same image on every machine.
    entries.sort();
    let mut taken_aliases = HashSet::new();
    let mut taken_long = HashSet::new();
    let mut children = Vec::with_capacity(entries.len());
    for (name, path) in entries {
        // FAT compares names without case; two such names cannot coexist in one folder.
        if !taken_long.insert(name.to_uppercase()) {
            return Err(FatError::BadName {
                path,
                problem:
                    "another name in this folder differs only in case, which FAT cannot tell apart"
                        .into(),
            });
        }
        let stored = store_name(&name, &mut taken_aliases).map_err(|p| FatError::BadName {
            path: path.clone(),
            problem: p.to_string(),
        })?;
        let meta = std::fs::metadata(&path).map_err(|e| FatError::Source {
            path: path.clone(),
            source: e,
        })?;
        let mtime = std::os::unix::fs::MetadataExt::mtime(&meta);
        let kind = if meta.is_dir() {
            NodeKind::Dir(scan_dir(&path, depth + 1)?)
        } else if meta.is_file() {
            if meta.len() > MAX_FILE_SIZE {
                return Err(FatError::FileTooLarge {
                    path,
                    size: meta.len(),
                });
            }
            NodeKind::File {
                source: path,
                size: meta.len(),
            }
        } else {
            return Err(FatError::Unsupported(path));
        };
        children.push(Node {
            name: stored,
            mtime,
            kind,
        });
    }
    let result = Dir { children };
    if result.entry_count(false) > MAX_DIR_ENTRIES {
        return Err(FatError::TooManyEntries {
            path: dir.into(),
            max: MAX_DIR_ENTRIES,
        });
    }
    Ok(result)
}
