//! What an image is, as vmedia's own readers see it: an ISO (volume id, boot entries, embedded
//! checksums checked), a virtual disk (format, virtual size, backing file), or raw bytes.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use vmedia_disk::{DiskImage, Format, OpenOptions as DiskOpenOptions, ReferencePolicy};
use vmedia_io::ReadAt;
use vmedia_iso::integrity::{CheckOutcome, Md5Policy, StreamVerifier};

use crate::error::{LibraryError, Result};
use crate::manifest::{BootEntryRecord, EmbeddedCheck, ImageKind};

/// What inspection found.
pub(crate) struct Inspection {
    pub kind: ImageKind,
    /// The backing file a layered disk names (it is never opened here).
    pub backing: Option<String>,
}

fn label<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".into(),
    }
}

/// What `inspect` does about an ISO's embedded checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Embedded {
    /// Check them now, reading the source once more.
    Check,
    /// Leave `embedded_checks` empty: the caller checks them from the bytes it streams anyway
    /// ([`EmbeddedVerifier`]).
    Later,
}

/// The embedded checks run by the library: a matching SHA-256 record stands for the MD5 over the
/// same bytes, so an add hashes the image's embedded values once, not twice.
pub(crate) const MD5_POLICY: Md5Policy = Md5Policy::UnlessSha256Covers;

/// An ISO's embedded checksums, checked from its bytes as they stream past.
pub(crate) struct EmbeddedVerifier(StreamVerifier);

impl EmbeddedVerifier {
    /// `None` when `source` is no ISO or carries no record.
    pub(crate) fn new(name: &str, source: &dyn ReadAt) -> Result<Option<EmbeddedVerifier>> {
        if !vmedia_iso::read::is_iso(source) {
            return Ok(None);
        }
        let verifier =
            StreamVerifier::new(source, MD5_POLICY).map_err(|e| LibraryError::Image {
                name: name.to_string(),
                problem: format!("embedded checksums: {e}"),
            })?;
        Ok(verifier.map(EmbeddedVerifier))
    }

    /// `feed`, and `data` appended to the whole-image hash in lockstep with the embedded
    /// SHA-256 (two streams on one core, see `vmedia_io::sha256x2`).
    pub(crate) fn feed_paired(&mut self, data: &[u8], whole: &mut vmedia_io::sha256x2::Sha256) {
        self.0.feed_paired(data, whole);
    }

    /// Reads `source` from the start and feeds all of it (when the stream was not fed).
    pub(crate) fn feed_from(&mut self, name: &str, source: &dyn ReadAt) -> Result<()> {
        let size = source.size().map_err(|e| read_error(name, 0, e))?;
        let mut buffer = vec![0u8; EMBEDDED_READ_BYTES];
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(EMBEDDED_READ_BYTES as u64) as usize;
            source
                .read_exact_at(&mut buffer[..len], offset)
                .map_err(|e| read_error(name, offset, e))?;
            self.0.feed(&buffer[..len]);
            offset += len as u64;
        }
        Ok(())
    }

    /// The records to keep in the manifest; a mismatch refuses the image.
    pub(crate) fn finish(self, name: &str) -> Result<Vec<EmbeddedCheck>> {
        let report = self.0.finish().map_err(|e| LibraryError::Image {
            name: name.to_string(),
            problem: format!("checking embedded checksums: {e}"),
        })?;
        let mut records = Vec::new();
        for (check, outcome) in [
            ("md5", &report.md5),
            ("fragments", &report.fragments),
            ("sha256", &report.sha256),
            ("signature", &report.signature),
        ] {
            let recorded = match outcome {
                CheckOutcome::Absent => continue,
                CheckOutcome::Ok => "ok".to_string(),
                CheckOutcome::Unchecked { reason } => format!("unchecked: {reason}"),
                CheckOutcome::Mismatch { expected, actual } => {
                    return Err(LibraryError::EmbeddedChecksum {
                        name: name.to_string(),
                        check,
                        problem: format!("expected {expected}, found {actual}"),
                    })
                }
            };
            records.push(EmbeddedCheck {
                check: check.to_string(),
                outcome: recorded,
            });
        }
        Ok(records)
    }
}

/// Bytes per read when the embedded checks read the image themselves.
const EMBEDDED_READ_BYTES: usize = 1 << 20;

fn read_error(name: &str, offset: u64, e: io::Error) -> LibraryError {
    LibraryError::Image {
        name: name.to_string(),
        problem: format!("checking embedded checksums: reading at offset {offset:#x}: {e}"),
    }
}

/// Inspects `source` (named `name`; `path` only resolves names a disk records).
pub(crate) fn inspect(
    name: &str,
    source: Arc<dyn ReadAt>,
    path: &Path,
    embedded: Embedded,
) -> Result<Inspection> {
    if vmedia_iso::read::is_iso(source.as_ref()) {
        return inspect_iso(name, source, embedded);
    }
    if vmedia_ovf::package::probe_ova(source.as_ref()) {
        return Ok(inspect_ova(path, source));
    }
    let options = DiskOpenOptions {
        references: ReferencePolicy::None,
        skip_backing: true,
        ..Default::default()
    };
    match vmedia_disk::factory::open_source(path, source, &options) {
        Ok(image) if image.format() == Format::Raw => Ok(Inspection {
            kind: ImageKind::Raw { note: None },
            backing: None,
        }),
        Ok(image) => Ok(Inspection {
            kind: ImageKind::Disk {
                format: image.format().qemu_name().to_string(),
                virtual_size: image.virtual_size(),
                flattened_from: None,
            },
            backing: image.backing_ref().map(|b| b.name),
        }),
        Err(e) => Ok(Inspection {
            kind: ImageKind::Raw {
                note: Some(format!("not readable as a disk image: {e}")),
            },
            backing: None,
        }),
    }
}

/// An OVA is recorded as an OVF package with its disks (from its descriptor; the manifest is
/// not hashed here: the library keeps the bytes, `vmedia ovf info` checks them).
fn inspect_ova(path: &Path, source: Arc<dyn ReadAt>) -> Inspection {
    let kind = match vmedia_ovf::Package::open_ova_source(path, source) {
        Ok(pkg) => ImageKind::Ovf {
            name: pkg
                .descriptor
                .systems
                .first()
                .and_then(|s| s.name.clone().or_else(|| Some(s.id.clone()))),
            disks: pkg
                .descriptor
                .disks
                .iter()
                .map(|d| crate::manifest::OvfDiskRecord {
                    file: pkg
                        .descriptor
                        .disk_file(d)
                        .map(|f| f.href.clone())
                        .unwrap_or_default(),
                    capacity: d.capacity,
                })
                .collect(),
        },
        Err(e) => ImageKind::Raw {
            note: Some(format!("looks like an OVA but does not open: {e}")),
        },
    };
    Inspection {
        kind,
        backing: None,
    }
}

fn inspect_iso(name: &str, source: Arc<dyn ReadAt>, embedded: Embedded) -> Result<Inspection> {
    let image = match vmedia_iso::read::IsoImage::open(Arc::clone(&source), Default::default()) {
        Ok(image) => image,
        Err(e) => {
            return Ok(Inspection {
                kind: ImageKind::Raw {
                    note: Some(format!("has an ISO 9660 signature but does not open: {e}")),
                },
                backing: None,
            })
        }
    };
    let volume_id = image.volume().primary.volume_id.trim_end().to_string();
    let boot_entries = match image.boot_catalog() {
        Ok(Some(catalog)) => catalog
            .entries
            .iter()
            .map(|entry| BootEntryRecord {
                platform: label(&entry.platform),
                emulation: label(&entry.emulation),
                bootable: entry.bootable,
                image_path: entry.image_path.clone(),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(LibraryError::Image {
                name: name.to_string(),
                problem: format!("the El Torito boot catalog is damaged: {e}"),
            })
        }
    };
    // The embedded values are checked against the content: a damaged download is refused
    // here instead of becoming a version.
    let embedded_checks = match embedded {
        Embedded::Later => Vec::new(),
        Embedded::Check => match EmbeddedVerifier::new(name, source.as_ref())? {
            Some(mut verifier) => {
                verifier.feed_from(name, source.as_ref())?;
                verifier.finish(name)?
            }
            None => Vec::new(),
        },
    };
    Ok(Inspection {
        kind: ImageKind::Iso {
            volume_id,
            boot_entries,
            embedded_checks,
        },
        backing: None,
    })
}

/// Reads a layered disk's merged guest content front to back, for `--flatten`.
pub(crate) struct GuestReader {
    image: Box<dyn DiskImage>,
    offset: u64,
    size: u64,
}

/// Guest bytes per read: large enough to keep the chunker fed.
const GUEST_READ_BYTES: u64 = 4 << 20;

impl GuestReader {
    /// Opens `path` with its backing chain (files in its own folder only) and describes the
    /// flattened result.
    pub(crate) fn open_flattened(
        name: &str,
        path: &Path,
        source: Arc<dyn ReadAt>,
    ) -> Result<(GuestReader, ImageKind)> {
        let options = DiskOpenOptions {
            references: ReferencePolicy::SameFolder,
            skip_backing: false,
            ..Default::default()
        };
        let image = vmedia_disk::factory::open_source(path, source, &options).map_err(|e| {
            LibraryError::Image {
                name: name.to_string(),
                problem: format!("opening the disk with its backing files: {e}"),
            }
        })?;
        let size = image.virtual_size();
        let kind = ImageKind::Disk {
            format: "raw".into(),
            virtual_size: size,
            flattened_from: Some(image.format().qemu_name().to_string()),
        };
        Ok((
            GuestReader {
                image,
                offset: 0,
                size,
            },
            kind,
        ))
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

impl Read for GuestReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (self.size - self.offset)
            .min(buf.len() as u64)
            .min(GUEST_READ_BYTES) as usize;
        self.image
            .read_at(&mut buf[..n], self.offset)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.offset += n as u64;
        Ok(n)
    }
}
