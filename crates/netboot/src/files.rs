//! A served file tree, usable on its own by any crate that hands files to strangers: request
//! paths are normalised and confined to the root (no `..`, no escape through symlinks: every
//! open goes through openat2 with RESOLVE_BENEATH), and a path may reach into an ISO image
//! (`debian.iso:/install.amd/vmlinuz` or `debian.iso/install.amd/vmlinuz`), read from the
//! image without unpacking it. Parsed images are cached by path, size and modification time.
//!
//! Knows nothing of DHCP, TFTP or HTTP. Every call does file system I/O and may block: async
//! callers run it on a blocking pool (`tokio::task::spawn_blocking`), as netboot's HTTP
//! server does; netboot's TFTP transfers call it from their own threads.
//!
//! ```no_run
//! use std::path::Path;
//! use vmedia_io::ReadAt;
//! use vmedia_netboot::files::{FileError, FileRoot};
//!
//! let root = FileRoot::new(Path::new("/srv/boot"))?;
//! // A plain file, or one inside an ISO under the root: the same call.
//! let kernel = root.open("debian.iso/install.amd/vmlinuz")?;
//! let mut header = [0u8; 512];
//! kernel.source.read_exact_at(&mut header, 0)?;
//! println!("{} is {} bytes", kernel.name, kernel.size);
//! // Escapes are refused with a typed error.
//! assert!(matches!(root.open("../etc/passwd"), Err(FileError::Traversal(_))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use thiserror::Error;
use vmedia_io::ReadAt;
use vmedia_iso::read::{IsoImage, OpenOptions, ReadError};

/// Longest request path we look at; TFTP file names fit in one 512-byte packet anyway.
pub const MAX_PATH_LEN: usize = 4096;
/// Open ISO images kept for reuse; a boot storm reads the same few images over and over.
pub const MAX_OPEN_ISOS: usize = 32;

/// Why a request path could not be opened. [`FileError::is_access_violation`] tells refusals
/// (403, TFTP "access violation") from absence (404, "file not found").
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

/// An opened file, from the root or from inside an ISO; cheap to clone and shareable between
/// threads (reads are positional).
#[derive(Clone)]
pub struct ServedFile {
    /// Positional reads of the file's bytes (`0..size`).
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

/// The root folder everything is served from: a directory descriptor opened once (renaming
/// the folder later does not change what is served) and the cache of parsed ISO images.
pub struct FileRoot {
    dir: File,
    path: PathBuf,
    /// Parsed images by path, size and modification time (a replaced image is parsed again).
    isos: Mutex<HashMap<IsoKey, Arc<IsoImage>>>,
}

impl FileRoot {
    /// Opens `path` as the root; fails when it cannot be opened or is not a directory.
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

    /// The root as given to [`FileRoot::new`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many parsed ISO images are cached now.
    pub fn cached_isos(&self) -> usize {
        self.isos.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Opens `components` (relative to the root) without leaving the root: openat2 with
    /// RESOLVE_BENEATH refuses `..` and absolute symlinks that lead out, race-free, and
    /// RESOLVE_NO_MAGICLINKS refuses /proc-style links.
    fn open_beneath(&self, components: &[String], display: &str) -> Result<File, FileError> {
        let joined = components.join("/");
        let joined = if joined.is_empty() {
            ".".to_string()
        } else {
            joined
        };
        let opened = rustix::fs::openat2(
            &self.dir,
            joined.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        match opened {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::NOENT | Errno::NOTDIR) => Err(FileError::NotFound(display.to_string())),
            Err(Errno::XDEV | Errno::LOOP) => Err(FileError::SymlinkEscape(display.to_string())),
            Err(e) => Err(FileError::Io {
                path: display.to_string(),
                source: e.into(),
            }),
        }
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

    /// Opens a request path (as a client sends it: `\\` or `/`, leading slash or not): a plain
    /// file under the root, a file inside an ISO named with `image.iso:/inner/path`, or
    /// `image.iso/inner/path` when no plain file has that name. Directories are refused.
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

    /// The parsed ISO image at `request` under the root (from the cache when the file's size
    /// and modification time are unchanged), for callers that list or read an image
    /// themselves.
    pub fn open_iso(&self, request: &str) -> Result<Arc<IsoImage>, FileError> {
        let norm = normalize(request)?;
        if norm.inner.is_some() || norm.components.is_empty() {
            return Err(FileError::BadPath(request.chars().take(200).collect()));
        }
        self.iso_image(&norm.components)
    }

    fn iso_image(&self, image: &[String]) -> Result<Arc<IsoImage>, FileError> {
        let iso_name = image.join("/");
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
        if let Some(iso) = self.isos.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(iso);
        }
        let source: Arc<dyn ReadAt> = Arc::new(file);
        let iso = Arc::new(IsoImage::open(source, OpenOptions::default()).map_err(|e| {
            FileError::Iso {
                iso: iso_name.clone(),
                path: "/".into(),
                reason: e.to_string(),
            }
        })?);
        if let Ok(mut m) = self.isos.lock() {
            if m.len() >= MAX_OPEN_ISOS {
                // Simplest bound that keeps memory flat; a boot storm uses a few images, so
                // the set refills at once with the ones in use.
                m.clear();
            }
            m.insert(key, iso.clone());
        }
        Ok(iso)
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
        let iso = self.iso_image(image)?;
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
