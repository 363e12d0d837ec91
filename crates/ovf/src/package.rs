//! An OVF package on disk, OVA (one tar) or OVF (a descriptor with its files beside it):
//! opening it, checking its manifest, reading its disks, and importing it into a folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vmedia_disk::convert::{convert, Concat, ConvertOptions};
use vmedia_disk::image::{CreateOptions, DiskImage, Format, OpenOptions};
use vmedia_disk::{factory, FolderResolver, ReferencePolicy, ReferenceResolver};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy, Progress, ReadAt, SliceSource};

use crate::descriptor::{self, Descriptor, DiskDesc};
use crate::error::{io_err, OvfError, Result};
use crate::manifest::{self, Algorithm};
use crate::tar::{self, Member};

/// Bytes read per step while hashing or copying package files.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One tar file.
    Ova,
    /// A descriptor with its files in the same folder.
    Ovf,
}

/// An opened package.
pub struct Package {
    pub path: PathBuf,
    pub kind: Kind,
    pub descriptor_name: String,
    pub descriptor_bytes: Vec<u8>,
    pub descriptor: Descriptor,
    /// The manifest's name and lines, when the package has one.
    pub manifest: Option<(String, Vec<manifest::Entry>)>,
    /// The signing certificate's name, when the package has one.
    pub certificate: Option<String>,
    /// Departures from the layout DSP0243 requires that readers tolerate (an OVA whose first
    /// member is not the descriptor).
    pub warnings: Vec<String>,
    /// OVA: the file and its members.
    archive: Option<(Arc<dyn ReadAt>, Vec<Member>)>,
}

/// Whether `source` starts like an OVA: a ustar header whose member is a `.ovf` descriptor.
/// Cheap (one block), for callers that sort unknown files.
pub fn probe_ova(source: &dyn ReadAt) -> bool {
    let mut block = [0u8; tar::BLOCK as usize];
    if source.read_exact_at(&mut block, 0).is_err() || &block[257..262] != b"ustar" {
        return false;
    }
    block[..100]
        .split(|&b| b == 0)
        .next()
        .is_some_and(|name| name.ends_with(b".ovf"))
}

/// Whether `head` (the first bytes of a file) looks like an XML document rather than a tar.
fn looks_like_xml(head: &[u8]) -> bool {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    head.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'<')
}

impl Package {
    /// Opens `path`, an `.ova` or an `.ovf`, and parses its descriptor and manifest.
    pub fn open(path: &Path) -> Result<Package> {
        let file = std::fs::File::open(path).map_err(io_err(path, "open"))?;
        let source: Arc<dyn ReadAt> = Arc::new(file);
        let mut head = [0u8; 512];
        let n = source.read_at(&mut head, 0).map_err(io_err(path, "read"))?;
        if looks_like_xml(&head[..n]) {
            Self::open_ovf(path, source)
        } else {
            Self::open_ova(path, source)
        }
    }

    /// Opens an OVA from any byte source (a library object, a network export); `path` names
    /// it in errors.
    pub fn open_ova_source(path: &Path, source: Arc<dyn ReadAt>) -> Result<Package> {
        Self::open_ova(path, source)
    }

    fn open_ova(path: &Path, source: Arc<dyn ReadAt>) -> Result<Package> {
        let members = tar::index(source.as_ref(), path)?;
        let mut warnings = Vec::new();
        let Some(pos) = members.iter().position(|m| m.name.ends_with(".ovf")) else {
            return Err(OvfError::MissingFile {
                package: path.to_path_buf(),
                file: "*.ovf".into(),
                by: "OVA layout (the descriptor)",
            });
        };
        if pos != 0 {
            warnings.push(format!(
                "the descriptor {} is member {} of the archive, not the first as DSP0243 requires",
                members[pos].name,
                pos + 1
            ));
        }
        let d = &members[pos];
        let bytes = read_member(source.as_ref(), d, path, crate::xml::MAX_DESCRIPTOR_BYTES)?;
        let descriptor = descriptor::parse(&bytes, &d.name)?;
        let stem = d.name.trim_end_matches(".ovf");
        let manifest = match members.iter().find(|m| m.name == format!("{stem}.mf")) {
            Some(m) => {
                let text = read_member(
                    source.as_ref(),
                    m,
                    path,
                    manifest::MAX_MANIFEST_BYTES as u64,
                )?;
                Some((m.name.clone(), manifest::parse(&text, &m.name)?))
            }
            None => None,
        };
        let certificate = members
            .iter()
            .find(|m| m.name == format!("{stem}.cert"))
            .map(|m| m.name.clone());
        Ok(Package {
            path: path.to_path_buf(),
            kind: Kind::Ova,
            descriptor_name: d.name.clone(),
            descriptor_bytes: bytes,
            descriptor,
            manifest,
            certificate,
            warnings,
            archive: Some((source, members)),
        })
    }

    fn open_ovf(path: &Path, source: Arc<dyn ReadAt>) -> Result<Package> {
        let size = source.size().map_err(io_err(path, "read the size of"))?;
        if size > crate::xml::MAX_DESCRIPTOR_BYTES {
            return Err(OvfError::Limit {
                what: path.display().to_string(),
                limit: "MAX_DESCRIPTOR_BYTES",
                value: size,
                max: crate::xml::MAX_DESCRIPTOR_BYTES,
            });
        }
        let mut bytes = vec![0u8; size as usize];
        source
            .read_exact_at(&mut bytes, 0)
            .map_err(io_err(path, "read"))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "descriptor.ovf".into());
        let descriptor = descriptor::parse(&bytes, &name)?;
        let stem = name.strip_suffix(".ovf").unwrap_or(&name).to_string();
        let mut pkg = Package {
            path: path.to_path_buf(),
            kind: Kind::Ovf,
            descriptor_name: name,
            descriptor_bytes: bytes,
            descriptor,
            manifest: None,
            certificate: None,
            warnings: Vec::new(),
            archive: None,
        };
        let mf = format!("{stem}.mf");
        if let Ok(src) = pkg.file_source(&mf) {
            let size = src.size().map_err(io_err(path, "read the size of"))?;
            if size > manifest::MAX_MANIFEST_BYTES as u64 {
                return Err(OvfError::Limit {
                    what: mf,
                    limit: "MAX_MANIFEST_BYTES",
                    value: size,
                    max: manifest::MAX_MANIFEST_BYTES as u64,
                });
            }
            let mut text = vec![0u8; size as usize];
            src.read_exact_at(&mut text, 0)
                .map_err(io_err(path, "read the manifest of"))?;
            pkg.manifest = Some((mf.clone(), manifest::parse(&text, &mf)?));
        }
        let cert = format!("{stem}.cert");
        if pkg.file_source(&cert).is_ok() {
            pkg.certificate = Some(cert);
        }
        Ok(pkg)
    }

    /// The bytes of the package file `name` (a member of the OVA, or a file beside the
    /// descriptor, opened beneath its folder).
    pub fn file_source(&self, name: &str) -> Result<Arc<dyn ReadAt>> {
        match &self.archive {
            Some((source, members)) => {
                let m = members.iter().find(|m| m.name == name).ok_or_else(|| {
                    OvfError::MissingFile {
                        package: self.path.clone(),
                        file: name.to_string(),
                        by: "descriptor or manifest",
                    }
                })?;
                Ok(Arc::new(SliceSource::new(source.clone(), m.offset, m.size)))
            }
            None => {
                if name == self.descriptor_name {
                    return Ok(Arc::new(self.descriptor_bytes.clone()));
                }
                if name.contains("://") {
                    return Err(OvfError::Unsupported(format!(
                        "{name}: files named by URL are not fetched"
                    )));
                }
                let resolver = FolderResolver {
                    policy: ReferencePolicy::SameFolder,
                };
                Ok(resolver.open(&self.path, name)?.source)
            }
        }
    }

    /// The archive members in order (OVA only).
    pub fn members(&self) -> Option<&[Member]> {
        self.archive.as_ref().map(|(_, m)| m.as_slice())
    }

    /// Checks every manifest line against the file it names (the descriptor included).
    pub fn verify(&self, progress: &dyn Progress) -> Result<Vec<DigestCheck>> {
        let Some((mf, entries)) = &self.manifest else {
            return Ok(Vec::new());
        };
        let mut total = 0u64;
        let mut sources = Vec::new();
        for e in entries {
            let src = self.file_source(&e.file).map_err(|err| match err {
                OvfError::MissingFile { package, file, .. } => OvfError::MissingFile {
                    package,
                    file,
                    by: "manifest",
                },
                other => other,
            })?;
            total = total.saturating_add(src.size().map_err(io_err(&self.path, "read"))?);
            sources.push(src);
        }
        progress.set_total(total);
        let mut out = Vec::new();
        for (e, src) in entries.iter().zip(sources) {
            let actual = digest(src.as_ref(), e.algorithm, &self.path, progress)?;
            if actual != e.digest {
                return Err(OvfError::DigestMismatch {
                    file: format!("{} (listed in {mf})", e.file),
                    algorithm: e.algorithm.name(),
                    expected: e.digest.clone(),
                    actual,
                });
            }
            out.push(DigestCheck {
                file: e.file.clone(),
                algorithm: e.algorithm,
                digest: actual,
            });
        }
        Ok(out)
    }

    /// Opens a disk of the descriptor as an image (a gzip-compressed file is refused: use
    /// `import`, which expands it first).
    pub fn open_disk(&self, disk: &DiskDesc) -> Result<Box<dyn DiskImage>> {
        let file = self.descriptor.disk_file(disk).ok_or_else(|| {
            OvfError::Unsupported(format!("disk {} has no file (an empty disk)", disk.id))
        })?;
        if file.chunk_size.is_some() {
            return Err(OvfError::Unsupported(format!(
                "{}: chunked files are not read",
                file.href
            )));
        }
        if file.compression.is_some() {
            return Err(OvfError::Unsupported(format!(
                "{}: compressed ({}) files are read by import only",
                file.href,
                file.compression.as_deref().unwrap_or("")
            )));
        }
        let source = self.file_source(&file.href)?;
        self.open_image(&file.href, source)
    }

    fn open_image(&self, href: &str, source: Arc<dyn ReadAt>) -> Result<Box<dyn DiskImage>> {
        let label = self.path.join(href);
        let opts = OpenOptions {
            references: ReferencePolicy::None,
            ..OpenOptions::default()
        };
        Ok(factory::open_source(&label, source, &opts)?)
    }

    /// The summary `ovf info` shows.
    pub fn report(&self, checks: Option<&[DigestCheck]>) -> InfoReport {
        let disks = self
            .descriptor
            .disks
            .iter()
            .map(|d| {
                let f = self.descriptor.disk_file(d);
                DiskReport {
                    id: d.id.clone(),
                    file: f.map(|f| f.href.clone()),
                    file_size: f.and_then(|f| f.size),
                    capacity: d.capacity,
                    format: d.format.as_deref().map(short_format),
                }
            })
            .collect();
        InfoReport {
            path: self.path.clone(),
            kind: self.kind,
            descriptor: self.descriptor_name.clone(),
            ovf_version: self.descriptor.ovf_version.clone(),
            producer: self.descriptor.producer.clone(),
            members: self
                .members()
                .map(|m| m.iter().map(|m| m.name.clone()).collect()),
            systems: self.descriptor.systems.clone(),
            disks,
            networks: self.descriptor.networks.clone(),
            manifest: self.manifest.as_ref().map(|(n, _)| n.clone()),
            manifest_checked: checks.map(|c| c.to_vec()),
            certificate: self.certificate.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

/// `...vmdk.html#streamOptimized` -> `vmdk streamOptimized`; other URIs as they are.
fn short_format(uri: &str) -> String {
    match uri.split_once("vmdk.html#") {
        Some((_, sub)) => format!("vmdk {sub}"),
        None => uri.to_string(),
    }
}

/// One verified manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestCheck {
    pub file: String,
    pub algorithm: Algorithm,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub id: String,
    pub file: Option<String>,
    pub file_size: Option<u64>,
    pub capacity: u64,
    pub format: Option<String>,
}

/// What `ovf info` prints (and `--json` serialises).
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    pub path: PathBuf,
    pub kind: Kind,
    pub descriptor: String,
    pub ovf_version: String,
    pub producer: String,
    pub members: Option<Vec<String>>,
    pub systems: Vec<descriptor::VirtualSystem>,
    pub disks: Vec<DiskReport>,
    pub networks: Vec<String>,
    pub manifest: Option<String>,
    /// The verified lines, when the manifest was checked.
    pub manifest_checked: Option<Vec<DigestCheck>>,
    pub certificate: Option<String>,
    pub warnings: Vec<String>,
}

fn read_member(source: &dyn ReadAt, m: &Member, path: &Path, max: u64) -> Result<Vec<u8>> {
    if m.size > max {
        return Err(OvfError::Limit {
            what: format!("{}: {}", path.display(), m.name),
            limit: "member size",
            value: m.size,
            max,
        });
    }
    let mut buf = vec![0u8; m.size as usize];
    source
        .read_exact_at(&mut buf, m.offset)
        .map_err(io_err(path, "read"))?;
    Ok(buf)
}

/// The hex digest of all of `source`.
pub fn digest(
    source: &dyn ReadAt,
    algorithm: Algorithm,
    path: &Path,
    progress: &dyn Progress,
) -> Result<String> {
    let size = source.size().map_err(io_err(path, "read the size of"))?;
    let mut h = algorithm.hasher();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(COPY_CHUNK as u64) as usize;
        source
            .read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path, "read"))?;
        h.update(&buf[..n]);
        progress.advance(n as u64);
        at += n as u64;
    }
    Ok(h.hex())
}

/// Options of [`import`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Convert the disks to this format; `None` writes them as stored (streamOptimized VMDKs).
    pub format: Option<Format>,
    pub overwrite: OverwritePolicy,
    pub durability: Durability,
    /// Check the manifest before writing anything (a package without one is imported).
    pub verify: bool,
}

/// What [`import`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub folder: PathBuf,
    pub descriptor: PathBuf,
    pub disks: Vec<ImportedDisk>,
    pub manifest_checked: Vec<DigestCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportedDisk {
    pub id: String,
    pub path: PathBuf,
    pub format: String,
    pub capacity: u64,
}

/// Checks the manifest, then writes the descriptor and every disk into `folder` (created if
/// missing), converted to `opts.format` when given. Each file appears only when complete.
pub fn import(
    pkg: &Package,
    folder: &Path,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let checks = if opts.verify {
        progress.phase("checking the manifest");
        pkg.verify(progress)?
    } else {
        Vec::new()
    };
    std::fs::create_dir_all(folder).map_err(io_err(folder, "create the folder"))?;
    let descriptor_path = folder.join(plain_name(&pkg.descriptor_name)?);
    let mut out = AtomicFile::create(&descriptor_path, opts.overwrite)
        .map_err(io_err(&descriptor_path, "create"))?;
    out.file_mut()
        .write_all(&pkg.descriptor_bytes)
        .map_err(io_err(&descriptor_path, "write"))?;
    out.commit_with(opts.durability)
        .map_err(io_err(&descriptor_path, "finish"))?;
    let mut disks = Vec::new();
    for disk in &pkg.descriptor.disks {
        let Some(file) = pkg.descriptor.disk_file(disk) else {
            continue;
        };
        if file.chunk_size.is_some() {
            return Err(OvfError::Unsupported(format!(
                "{}: chunked files are not read",
                file.href
            )));
        }
        let href = plain_name(&file.href)?;
        let stored = pkg.file_source(&file.href)?;
        // A gzip-compressed file is expanded into a hidden temporary file beside the output.
        let _expanded;
        let source: Arc<dyn ReadAt> = match file.compression.as_deref() {
            None => stored,
            Some("gzip") => {
                let tmp = tempfile::Builder::new()
                    .prefix(".vmedia-ovf-")
                    .tempfile_in(folder)
                    .map_err(io_err(folder, "create a temporary file in"))?;
                let mut reader = flate2::read::MultiGzDecoder::new(ReadAtReader {
                    source: stored.as_ref(),
                    at: 0,
                });
                let mut w = std::io::BufWriter::new(tmp.as_file());
                std::io::copy(&mut reader, &mut w)
                    .map_err(io_err(&pkg.path, "expand the gzip member of"))?;
                w.flush().map_err(io_err(folder, "write"))?;
                drop(w);
                let f = tmp.reopen().map_err(io_err(folder, "reopen"))?;
                _expanded = tmp;
                Arc::new(f)
            }
            Some(other) => {
                return Err(OvfError::Unsupported(format!(
                    "{}: compression {other:?} (only gzip is defined)",
                    file.href
                )))
            }
        };
        match opts.format {
            None => {
                let path = folder.join(href);
                progress.phase(&format!("writing {href}"));
                copy_to(source.as_ref(), &path, opts, progress)?;
                disks.push(ImportedDisk {
                    id: disk.id.clone(),
                    path,
                    format: disk
                        .format
                        .as_deref()
                        .map(short_format)
                        .unwrap_or_else(|| "as stored".into()),
                    capacity: disk.capacity,
                });
            }
            Some(format) => {
                let image = pkg.open_image(&file.href, source)?;
                let stem = href.rsplit_once('.').map(|(s, _)| s).unwrap_or(href);
                let ext = match format {
                    Format::Vhd => "vhd",
                    f => f.qemu_name(),
                };
                let path = folder.join(format!("{stem}.{ext}"));
                progress.phase(&format!("converting {href}"));
                let images = [image];
                let concat = Concat::new(&images)?;
                let mut create = CreateOptions::new(format, concat.size());
                create.overwrite = opts.overwrite;
                create.flush = opts.durability == Durability::Flush;
                let writer = factory::create(&path, &create)?;
                convert(&concat, writer, &ConvertOptions::default(), progress)?;
                disks.push(ImportedDisk {
                    id: disk.id.clone(),
                    path,
                    format: format.qemu_name().to_string(),
                    capacity: concat.size(),
                });
            }
        }
    }
    Ok(ImportReport {
        folder: folder.to_path_buf(),
        descriptor: descriptor_path,
        disks,
        manifest_checked: checks,
    })
}

/// A file name from a package, checked to be a plain name (no folders, no `..`): the folder
/// an import writes into is the only place it writes.
fn plain_name(name: &str) -> Result<&str> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => Ok(name),
        _ => Err(OvfError::Unsupported(format!(
            "{name:?}: only plain file names are imported (no folders or \"..\")"
        ))),
    }
}

fn copy_to(
    source: &dyn ReadAt,
    path: &Path,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let size = source.size().map_err(io_err(path, "read the source of"))?;
    progress.set_total(size);
    let mut out = AtomicFile::create(path, opts.overwrite).map_err(io_err(path, "create"))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(COPY_CHUNK as u64) as usize;
        source
            .read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path, "read the source of"))?;
        out.file_mut()
            .write_all(&buf[..n])
            .map_err(io_err(path, "write"))?;
        progress.advance(n as u64);
        at += n as u64;
    }
    out.commit_with(opts.durability)
        .map_err(io_err(path, "finish"))?;
    Ok(())
}

/// `std::io::Read` over a `ReadAt`, for stream decoders.
pub(crate) struct ReadAtReader<'a> {
    pub source: &'a dyn ReadAt,
    pub at: u64,
}

impl Read for ReadAtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
