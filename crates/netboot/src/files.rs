//! A served file tree, usable on its own by any crate that hands files to strangers: request
//! paths are normalised and confined to the root (no `..`, no escape through symlinks: every
//! open goes through openat2 with RESOLVE_BENEATH), and a path may reach into an ISO image
//! (`debian.iso:/install.amd/vmlinuz` or `debian.iso/install.amd/vmlinuz`), read from the
//! image without unpacking it. Parsed images are cached by path, size and modification time.
//!
//! A root may also be given an [`ImageSource`] ([`FileRoot::with_images`]): then
//! `library:NAME[@V]` names a whole image from it and `library:NAME[@V]:/path/in/iso` a file
//! inside that image. This crate does not know what a library is; the daemon plugs one in.
//! Images from a source are parsed once per [`ImageKey`] (the bytes' digest), so a name that
//! follows the current version picks up a new version at its next open.
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
/// Prefix of request paths that name an image from the root's [`ImageSource`].
pub const LIBRARY_SCHEME: &str = "library:";

/// What identifies an image's bytes (a library version's `sha256:` digest): two opens with the
/// same key share one parsed ISO, a different key is parsed afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey(pub String);

/// Images named by `library:SPEC` paths (SPEC is `NAME`, `NAME@N` or `NAME@sha256:PREFIX`).
/// Implemented by the daemon over its library; called from blocking threads.
pub trait ImageSource: Send + Sync {
    /// Opens the image SPEC names now (for `NAME`: the current version). Errors of kind
    /// `NotFound` are shown to clients as "not found", `InvalidInput` as refused.
    fn open_image(&self, spec: &str) -> io::Result<(Arc<dyn ReadAt>, ImageKey)>;
}

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
    #[error("{0:?} names a library image, but this server has no library (library: paths are served by `vmedia serve --netboot`)")]
    NoImageSource(String),
    #[error("library image {spec:?}: {source}")]
    Image { spec: String, source: io::Error },
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
                | FileError::NoImageSource(_)
        ) || matches!(self, FileError::Image { source, .. } if source.kind() == io::ErrorKind::InvalidInput)
    }

    /// True for errors a client should see as "not found" (404, TFTP "file not found").
    pub fn is_not_found(&self) -> bool {
        match self {
            FileError::NotFound(_) => true,
            FileError::Image { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
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

/// What a parsed ISO is cached under: a file under the root, or an image from the source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    File(IsoKey),
    Image(ImageKey),
}

/// A `library:` request split into the image spec and, when it reaches into the image, the
/// path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryRequest {
    pub spec: String,
    pub inner: Option<Vec<String>>,
}

/// Splits `library:NAME[@V][:/path/in/iso]` (leading slashes and backslashes allowed, as
/// clients send them); `None` when the request does not use the `library:` scheme. The spec
/// ends at the first `:` after the name, or after the digest of `@sha256:PREFIX`.
pub fn parse_library(request: &str) -> Result<Option<LibraryRequest>, FileError> {
    if request.len() > MAX_PATH_LEN || request.contains('\0') {
        return Err(FileError::BadPath(request.chars().take(200).collect()));
    }
    let path = request.replace('\\', "/");
    let trimmed = path.trim_start_matches('/');
    let Some(prefix) = trimmed.get(..LIBRARY_SCHEME.len()) else {
        return Ok(None);
    };
    if !prefix.eq_ignore_ascii_case(LIBRARY_SCHEME) {
        return Ok(None);
    }
    let rest = &trimmed[LIBRARY_SCHEME.len()..];
    let search_from = match rest.find('@') {
        Some(at) if rest[at + 1..].starts_with("sha256:") => at + 1 + "sha256:".len(),
        _ => 0,
    };
    let (spec, inner) = match rest[search_from..].find(':') {
        Some(colon) => {
            let colon = search_from + colon;
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        None => (rest, None),
    };
    if spec.is_empty() || spec.contains('/') {
        return Err(FileError::BadPath(request.chars().take(200).collect()));
    }
    let inner = match inner {
        Some(inner) => Some(split_components(inner, request)?),
        None => None,
    };
    Ok(Some(LibraryRequest {
        spec: spec.to_string(),
        inner,
    }))
}

/// The root folder everything is served from: a directory descriptor opened once (renaming
/// the folder later does not change what is served) and the cache of parsed ISO images.
pub struct FileRoot {
    dir: File,
    path: PathBuf,
    /// Parsed images by path, size and modification time (a replaced image is parsed again),
    /// or by the source's key.
    isos: Mutex<HashMap<CacheKey, Arc<IsoImage>>>,
    /// Where `library:` paths come from; `None` refuses them.
    images: Option<Arc<dyn ImageSource>>,
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
            images: None,
        })
    }

    /// Opens `path` as the root and serves `library:` paths from `images`.
    pub fn with_images(path: &Path, images: Arc<dyn ImageSource>) -> io::Result<FileRoot> {
        let mut root = FileRoot::new(path)?;
        root.images = Some(images);
        Ok(root)
    }

    /// True when `library:` paths are served.
    pub fn has_images(&self) -> bool {
        self.images.is_some()
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
        if let Some(library) = parse_library(request)? {
            return self.open_library(&library);
        }
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
        if let Some(library) = parse_library(request)? {
            if library.inner.is_some() {
                return Err(FileError::BadPath(request.chars().take(200).collect()));
            }
            return self.library_iso(&library.spec);
        }
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
        let key = CacheKey::File((image.to_vec(), meta.len(), meta.mtime()));
        self.cached_iso(key, Arc::new(file), &iso_name)
    }

    /// The parsed image under `key`, parsing `source` when it is not cached.
    fn cached_iso(
        &self,
        key: CacheKey,
        source: Arc<dyn ReadAt>,
        iso_name: &str,
    ) -> Result<Arc<IsoImage>, FileError> {
        if let Some(iso) = self.isos.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(iso);
        }
        let iso = Arc::new(IsoImage::open(source, OpenOptions::default()).map_err(|e| {
            FileError::Iso {
                iso: iso_name.to_string(),
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

    /// Opens the image `spec` names from the source.
    fn open_image(&self, spec: &str) -> Result<(Arc<dyn ReadAt>, ImageKey), FileError> {
        let Some(images) = &self.images else {
            return Err(FileError::NoImageSource(format!("{LIBRARY_SCHEME}{spec}")));
        };
        images.open_image(spec).map_err(|source| FileError::Image {
            spec: spec.to_string(),
            source,
        })
    }

    /// The parsed ISO of the image `spec` names now, cached by its key.
    fn library_iso(&self, spec: &str) -> Result<Arc<IsoImage>, FileError> {
        let (source, key) = self.open_image(spec)?;
        self.cached_iso(
            CacheKey::Image(key),
            source,
            &format!("{LIBRARY_SCHEME}{spec}"),
        )
    }

    fn open_library(&self, request: &LibraryRequest) -> Result<ServedFile, FileError> {
        let image_name = format!("{LIBRARY_SCHEME}{}", request.spec);
        match &request.inner {
            None => {
                let (source, _) = self.open_image(&request.spec)?;
                let size = source.size().map_err(|e| FileError::Io {
                    path: image_name.clone(),
                    source: e,
                })?;
                Ok(ServedFile {
                    source,
                    size,
                    plain: None,
                    name: image_name,
                })
            }
            Some(inner) => {
                let display = format!("{image_name}:/{}", inner.join("/"));
                let iso = self.library_iso(&request.spec)?;
                Self::file_in_iso(&iso, &image_name, inner, &display)
            }
        }
    }

    fn open_in_iso(
        &self,
        image: &[String],
        inner: &[String],
        display: &str,
    ) -> Result<ServedFile, FileError> {
        let iso = self.iso_image(image)?;
        Self::file_in_iso(&iso, &image.join("/"), inner, display)
    }

    /// Opens `inner` inside the parsed image `iso` (named `iso_name` in errors).
    fn file_in_iso(
        iso: &IsoImage,
        iso_name: &str,
        inner: &[String],
        display: &str,
    ) -> Result<ServedFile, FileError> {
        let iso_name = iso_name.to_string();
        let inner_path = format!("/{}", inner.join("/"));
        let iso_error = |reason: String| FileError::Iso {
            iso: iso_name.clone(),
            path: inner_path.clone(),
            reason,
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

    #[test]
    fn library_requests_split_spec_and_inner_path() {
        let r = parse_library("/library:debian@2:/install.amd/vmlinuz")
            .unwrap()
            .unwrap();
        assert_eq!(r.spec, "debian@2");
        assert_eq!(r.inner.unwrap(), ["install.amd", "vmlinuz"]);
        let r = parse_library("library:deb.iso@sha256:abcd12:/a\\b")
            .unwrap()
            .unwrap();
        assert_eq!(r.spec, "deb.iso@sha256:abcd12");
        assert_eq!(r.inner.unwrap(), ["a", "b"]);
        let whole = parse_library("LIBRARY:debian").unwrap().unwrap();
        assert_eq!((whole.spec.as_str(), whole.inner), ("debian", None));
        assert_eq!(parse_library("debian.iso:/x").unwrap(), None);
        assert_eq!(parse_library("lib").unwrap(), None);
        assert!(matches!(
            parse_library("library:debian:/../etc/passwd"),
            Err(FileError::Traversal(_))
        ));
        assert!(matches!(
            parse_library("library:a/b:/x"),
            Err(FileError::BadPath(_))
        ));
        assert!(matches!(
            parse_library("library::/x"),
            Err(FileError::BadPath(_))
        ));
    }

    #[test]
    fn library_paths_without_a_source_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fr = FileRoot::new(dir.path()).unwrap();
        let e = fr
            .open("library:debian:/install.amd/vmlinuz")
            .err()
            .unwrap();
        assert!(matches!(e, FileError::NoImageSource(_)), "{e}");
        assert!(e.is_access_violation());
        assert!(e.to_string().contains("no library"), "{e}");
    }

    /// Images by spec, each with its key; counts opens.
    struct Images(Mutex<HashMap<String, Image>>);

    /// An image's bytes and key.
    type Image = (Arc<Vec<u8>>, String);

    impl ImageSource for Images {
        fn open_image(&self, spec: &str) -> io::Result<(Arc<dyn ReadAt>, ImageKey)> {
            let map = self.0.lock().unwrap();
            let (bytes, key) = map
                .get(spec)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such item"))?;
            Ok((bytes.clone(), ImageKey(key.clone())))
        }
    }

    fn iso_with(dir: &Path, name: &str, content: &[u8]) -> Vec<u8> {
        let tree = dir.join(format!("{name}-tree"));
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::write(tree.join("boot/vmlinuz"), content).unwrap();
        let spec = vmedia_iso::spec::IsoSpec {
            sources: vec![vmedia_iso::spec::GraftPoint {
                iso_path: "/".into(),
                host_path: tree,
            }],
            date: Some(1_700_000_000),
            ..Default::default()
        };
        let out = dir.join(format!("{name}.iso"));
        vmedia_iso::write::write_image(
            &spec,
            &out,
            vmedia_io::OverwritePolicy::Replace,
            &vmedia_io::NoProgress,
        )
        .unwrap();
        std::fs::read(out).unwrap()
    }

    fn read_all(file: &ServedFile) -> Vec<u8> {
        let mut buf = vec![0u8; file.size as usize];
        file.source.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn library_paths_follow_the_source_and_cache_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let one = Arc::new(iso_with(dir.path(), "one", b"kernel one"));
        let two = Arc::new(iso_with(dir.path(), "two", b"kernel two!"));
        let images = Arc::new(Images(Mutex::new(HashMap::new())));
        {
            let mut m = images.0.lock().unwrap();
            m.insert("deb".into(), (one.clone(), "sha256:1".into()));
            m.insert("deb@1".into(), (one.clone(), "sha256:1".into()));
        }
        let fr = FileRoot::with_images(&root, images.clone()).unwrap();
        assert!(fr.has_images());
        let k = fr.open("/library:deb:/boot/vmlinuz").unwrap();
        assert_eq!(read_all(&k), b"kernel one");
        assert_eq!(k.name, "library:deb:/boot/vmlinuz");
        assert!(k.plain.is_none());
        // The same bytes under another spec share the parsed image.
        fr.open("library:deb@1:/boot/vmlinuz").unwrap();
        assert_eq!(fr.cached_isos(), 1);
        let whole = fr.open("library:deb@1").unwrap();
        assert_eq!(read_all(&whole), *one);
        // A new current version: `deb` follows it, `deb@1` stays.
        images
            .0
            .lock()
            .unwrap()
            .insert("deb".into(), (two.clone(), "sha256:2".into()));
        assert_eq!(
            read_all(&fr.open("library:deb:/boot/vmlinuz").unwrap()),
            b"kernel two!"
        );
        assert_eq!(
            read_all(&fr.open("library:deb@1:/boot/vmlinuz").unwrap()),
            b"kernel one"
        );
        assert_eq!(fr.cached_isos(), 2);
        let missing = fr.open("library:nope:/boot/vmlinuz").err().unwrap();
        assert!(missing.is_not_found(), "{missing}");
        let inner_missing = fr.open("library:deb:/boot/none").err().unwrap();
        assert!(inner_missing.is_not_found(), "{inner_missing}");
        assert!(matches!(
            fr.open("library:deb:/boot"),
            Err(FileError::NotAFile(_))
        ));
        assert!(fr.open_iso("library:deb").is_ok());
    }
}
