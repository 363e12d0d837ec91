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
    /// The name as the source gave it (reported back by `root_file_extents`).
    pub source_name: String,
    /// Modification time (Unix seconds) of the source, used unless a fixed date is given.
    pub mtime: i64,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub enum NodeKind {
    /// `size` bytes of `source` starting at byte `offset`; `whole` when that is the entire
    /// file (as `scan` finds it), so a file that grew meanwhile is caught.
    File {
        source: PathBuf,
        offset: u64,
        size: u64,
        whole: bool,
    },
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
                offset: 0,
                size: meta.len(),
                whole: true,
            }
        } else {
            return Err(FatError::Unsupported(path));
        };
        children.push(Node {
            name: stored,
            source_name: name,
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

/// A flat root of files, each a byte range of a source file (see [`crate::RangeFile`]). The
/// names are checked and aliased as `scan` does; every range must lie inside its source.
pub fn from_ranges(files: &[crate::RangeFile]) -> Result<Dir, FatError> {
    let mut sorted: Vec<&crate::RangeFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken_aliases = HashSet::new();
    let mut taken_long = HashSet::new();
    let mut children = Vec::with_capacity(sorted.len());
    for file in sorted {
        let path = file.source.clone();
        if !taken_long.insert(file.name.to_uppercase()) {
            return Err(FatError::BadName {
                path: PathBuf::from(&file.name),
                problem: "another name differs only in case, which FAT cannot tell apart".into(),
            });
        }
        let stored = store_name(&file.name, &mut taken_aliases).map_err(|p| FatError::BadName {
            path: PathBuf::from(&file.name),
            problem: p.to_string(),
        })?;
        if file.size > MAX_FILE_SIZE {
            return Err(FatError::FileTooLarge {
                path,
                size: file.size,
            });
        }
        let meta = std::fs::metadata(&path).map_err(|e| FatError::Source {
            path: path.clone(),
            source: e,
        })?;
        let end = file.offset.checked_add(file.size);
        if !meta.is_file() || end.is_none_or(|end| end > meta.len()) {
            return Err(FatError::SourceChanged {
                path,
                expected: end.unwrap_or(u64::MAX),
            });
        }
        children.push(Node {
            name: stored,
            source_name: file.name.clone(),
            mtime: file.mtime,
            kind: NodeKind::File {
                source: path,
                offset: file.offset,
                size: file.size,
                whole: false,
            },
        });
    }
    let result = Dir { children };
    if result.entry_count(true) > MAX_DIR_ENTRIES {
        return Err(FatError::TooManyEntries {
            path: PathBuf::from("/"),
            max: MAX_DIR_ENTRIES,
        });
    }
    Ok(result)
}
