//! The served file tree: request paths are normalised and confined to the root (no `..`, no
//! escape through symlinks: every open goes through openat2 with RESOLVE_BENEATH), and a path
//! may reach into an ISO image (`debian.iso:/install.amd/vmlinuz` or
//! `debian.iso/install.amd/vmlinuz`), streamed from the image without unpacking it.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use vmedia_io::ReadAt;
use vmedia_iso::read::{IsoImage, OpenOptions, ReadError};

/// Longest request path we look at; TFTP file names fit in one 512-byte packet anyway.
pub const MAX_PATH_LEN: usize = 4096;
/// Open ISO images kept for reuse; a boot storm reads the same few images over and over.
pub const MAX_OPEN_ISOS: usize = 32;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("request path {0:?} is refused: it climbs out of the root with '..'")]
    Traversal(String),
    #[error("request path {0:?} is refused: it contains a NUL byte or is too long")]
    BadPath(String),
    #[error("{0:?} is not found under the root")]
    NotFound(String),
    #[error("{0:?} escapes the root through a symbolic link and is refused")]
    SymlinkEscape(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("{path:?}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path:?} inside ISO {iso:?}: {reason}")]
    Iso {
        iso: String,
        path: String,
        reason: String,
    },
}

impl FileError {
    /// True for errors a TFTP client should see as "access violation" rather than "not found".
    pub fn is_access_violation(&self) -> bool {
        matches!(
            self,
            FileError::Traversal(_)
                | FileError::SymlinkEscape(_)
                | FileError::BadPath(_)
                | FileError::NotAFile(_)
        )
    }
}

/// An opened file, from the root or from inside an ISO.
#[derive(Clone)]
pub struct ServedFile {
    pub source: Arc<dyn ReadAt>,
    pub size: u64,
    /// The plain file behind `source`, for sendfile; `None` for files inside ISOs.
    pub plain: Option<Arc<File>>,
    /// Normalised request path, for logs.
    pub name: String,
}

/// A normalised request: the path under the root and, when it reaches into an ISO, the path
/// inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub components: Vec<String>,
    pub inner: Option<Vec<String>>,
}

fn split_components(path: &str, original: &str) -> Result<Vec<String>, FileError> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(FileError::Traversal(original.to_string())),
            other => out.push(other.to_string()),
        }
    }
    Ok(out)
}

/// Normalises a client's path: backslashes become slashes (Windows PXE clients send them),
/// leading slashes are dropped, `.` parts are skipped and any `..` part is refused.
pub fn normalize(request: &str) -> Result<Normalized, FileError> {
    if request.len() > MAX_PATH_LEN || request.contains('\0') {
        return Err(FileError::BadPath(request.chars().take(200).collect()));
    }
    let path = request.replace('\\', "/");
    let lower = path.to_ascii_lowercase();
    if let Some(pos) = lower.find(".iso:") {
        let outer = &path[..pos + 4];
        let inner = &path[pos + 5..];
        let components = split_components(outer, request)?;
        if components.is_empty() {
            return Err(FileError::BadPath(request.to_string()));
        }
        return Ok(Normalized {
            components,
            inner: Some(split_components(inner, request)?),
        });
    }
    Ok(Normalized {
        components: split_components(&path, request)?,
        inner: None,
    })
}

/// An image's path components, size and modification time.
type IsoKey = (Vec<String>, u64, i64);

/// The root folder everything is served from.
pub struct FileRoot {
    dir: File,
    path: PathBuf,
    /// Parsed images by path, size and modification time (a replaced image is parsed again).
    isos: Mutex<HashMap<IsoKey, Arc<IsoImage>>>,
}

impl FileRoot {
    pub fn new(path: &Path) -> io::Result<FileRoot> {
        let dir = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open root {}: {e}", path.display()),
            )
        })?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("root {} is not a directory", path.display()),
            ));
        }
        Ok(FileRoot {
            dir,
            path: path.to_path_buf(),
            isos: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `components` (relative to the root) without leaving the root.
    fn open_beneath(&self, components: &[String], display: &str) -> Result<File, FileError> {
        let joined = components.join("/");
        let joined = if joined.is_empty() {
            ".".to_string()
        } else {
            joined
        };
        let c_path = CString::new(joined).map_err(|_| FileError::BadPath(display.to_string()))?;
        // SAFETY: open_how is plain integers; all-zero is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads `how` (correct size passed) and the NUL-terminated path.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                    FileError::NotFound(display.to_string())
                }
                Some(libc::EXDEV) | Some(libc::ELOOP) => {
                    FileError::SymlinkEscape(display.to_string())
                }
                _ => FileError::Io {
                    path: display.to_string(),
                    source: err,
                },
            });
        }
        // SAFETY: openat2 returned a fresh descriptor we now own.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }

    fn regular(file: File, display: &str) -> Result<(File, u64), FileError> {
        let meta = file.metadata().map_err(|e| FileError::Io {
            path: display.to_string(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(FileError::NotAFile(display.to_string()));
        }
        Ok((file, meta.len()))
    }

    /// Opens a request path: a plain file, or a file inside an ISO.
    pub fn open(&self, request: &str) -> Result<ServedFile, FileError> {
        let norm = normalize(request)?;
        let display = match &norm.inner {
            Some(inner) => format!("{}:/{}", norm.components.join("/"), inner.join("/")),
            None => norm.components.join("/"),
        };
        if let Some(inner) = &norm.inner {
            return self.open_in_iso(&norm.components, inner, &display);
        }
        match self.open_beneath(&norm.components, &display) {
            Ok(file) => {
                let (file, size) = Self::regular(file, &display)?;
                let file = Arc::new(file);
                Ok(ServedFile {
                    source: file.clone(),
                    size,
                    plain: Some(file),
                    name: display,
                })
            }
            Err(FileError::NotFound(_)) => {
                // `images/debian.iso/install.amd/vmlinuz`: the first `.iso` component that is
                // a file is the image, the rest is the path inside it.
                for split in 1..norm.components.len() {
                    if norm.components[split - 1]
                        .to_ascii_lowercase()
                        .ends_with(".iso")
                    {
                        return self.open_in_iso(
                            &norm.components[..split],
                            &norm.components[split..],
                            &display,
                        );
                    }
                }
                Err(FileError::NotFound(display))
            }
            Err(e) => Err(e),
        }
    }

    fn open_in_iso(
        &self,
        image: &[String],
        inner: &[String],
        display: &str,
    ) -> Result<ServedFile, FileError> {
        let iso_name = image.join("/");
        let inner_path = format!("/{}", inner.join("/"));
        let iso_error = |reason: String| FileError::Iso {
            iso: iso_name.clone(),
            path: inner_path.clone(),
            reason,
        };
        let file = self.open_beneath(image, &iso_name)?;
        let meta = file.metadata().map_err(|e| FileError::Io {
            path: iso_name.clone(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(FileError::NotAFile(iso_name));
        }
        use std::os::unix::fs::MetadataExt;
        let key = (image.to_vec(), meta.len(), meta.mtime());
        let cached = self.isos.lock().ok().and_then(|m| m.get(&key).cloned());
        let iso = match cached {
            Some(iso) => iso,
            None => {
                let source: Arc<dyn ReadAt> = Arc::new(file);
                let iso = Arc::new(
                    IsoImage::open(source, OpenOptions::default())
                        .map_err(|e| iso_error(e.to_string()))?,
                );
                if let Ok(mut m) = self.isos.lock() {
                    if m.len() >= MAX_OPEN_ISOS {
                        m.clear();
                    }
                    m.insert(key, iso.clone());
                }
                iso
            }
        };
        let entry = iso.lookup_follow(&inner_path).map_err(|e| match e {
            ReadError::NotFound { .. } | ReadError::NotADirectory { .. } => {
                FileError::NotFound(display.to_string())
            }
            other => iso_error(other.to_string()),
        })?;
        if !entry.is_file() {
            return Err(FileError::NotAFile(display.to_string()));
        }
        let reader = iso
            .file_reader(&entry)
            .map_err(|e| iso_error(e.to_string()))?;
        let size = reader.len();
        Ok(ServedFile {
            source: Arc::new(reader),
            size,
            plain: None,
            name: display.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_is_refused() {
        assert!(matches!(
            normalize("../etc/passwd"),
            Err(FileError::Traversal(_))
        ));
        assert!(matches!(
            normalize("a/../../b"),
            Err(FileError::Traversal(_))
        ));
    }

    #[test]
    fn backslash_dotdot_is_refused() {
        assert!(matches!(
            normalize("..\\..\\etc\\passwd"),
            Err(FileError::Traversal(_))
        ));
    }

    #[test]
    fn nul_byte_is_refused() {
        assert!(matches!(normalize("a\0b"), Err(FileError::BadPath(_))));
    }

    #[test]
    fn leading_slash_and_backslashes_are_normalised() {
        assert_eq!(
            normalize("/boot\\grub\\.\\x").unwrap().components,
            ["boot", "grub", "x"]
        );
    }

    #[test]
    fn iso_colon_form_splits() {
        let n = normalize("/img/debian.iso:/install.amd/vmlinuz").unwrap();
        assert_eq!(n.components, ["img", "debian.iso"]);
        assert_eq!(n.inner.unwrap(), ["install.amd", "vmlinuz"]);
    }

    #[test]
    fn symlink_out_of_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("rel")).unwrap();
        std::fs::write(root.join("ok"), b"fine").unwrap();
        std::os::unix::fs::symlink("ok", root.join("inside")).unwrap();
        let fr = FileRoot::new(&root).unwrap();
        assert!(matches!(fr.open("link"), Err(FileError::SymlinkEscape(_))));
        assert!(matches!(fr.open("rel"), Err(FileError::SymlinkEscape(_))));
        assert_eq!(fr.open("inside").unwrap().size, 4);
        assert!(matches!(fr.open("/"), Err(FileError::NotAFile(_))));
    }
}
