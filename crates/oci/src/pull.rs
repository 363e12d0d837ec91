//! `pull`: a containerDisk from a registry as a stream. The manifest (or the linux/amd64
//! entry of an index) is resolved and checked, the topmost layer holding a file under
//! `disk/` is streamed, decompressed and scanned, and the returned reader verifies the
//! layer's digest and size (and the disk's digest when vmedia pushed it) before it reports
//! the end, so a caller that commits only on a clean end never keeps damaged bytes.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::client::{Registry, RegistryOptions};
use crate::error::{OciError, Result};
use crate::manifest::{self, Compression, Descriptor, ImageManifest, Parsed};
use crate::push::ANNOTATION_DIGEST;
use crate::reference::Reference;
use crate::tar::DiskScanner;

/// What a pull found.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub reference: String,
    /// The digest of the image manifest the disk came from.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// `os/architecture` when an index was resolved.
    pub platform: Option<String>,
    pub layer_digest: String,
    pub layer_size: u64,
    pub compression: Compression,
    pub disk_path: String,
    pub disk_size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// Counts, hashes and checks a blob as it is read; the check runs at its end.
struct Verified {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    count: u64,
    descriptor: Descriptor,
    checked: bool,
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.descriptor.size {
            return Err(OciError::Limit {
                what: format!("layer {}", self.descriptor.digest),
                limit: "bytes received",
                value: self.count,
                max: self.descriptor.size,
            }
            .into_io());
        }
        self.hasher.update(&buf[..n]);
        if n == 0 && !self.checked {
            self.checked = true;
            if self.count != self.descriptor.size {
                return Err(OciError::Layout {
                    what: format!("layer {}", self.descriptor.digest),
                    problem: format!(
                        "the registry sent {} bytes, the manifest says {}",
                        self.count, self.descriptor.size
                    ),
                }
                .into_io());
            }
            let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if actual != self.descriptor.digest {
                return Err(OciError::DigestMismatch {
                    what: "layer".into(),
                    expected: self.descriptor.digest.clone(),
                    actual,
                }
                .into_io());
            }
        }
        Ok(n)
    }
}

enum Decoder {
    Plain(Verified),
    Gzip(Box<flate2::read::MultiGzDecoder<BufReader<Verified>>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Verified>>),
}

/// The uncompressed layer; at its end the compressed blob is read to its end and checked.
struct LayerReader(Decoder);

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.0 {
            Decoder::Plain(r) => return r.read(buf),
            Decoder::Gzip(r) => r.read(buf)?,
            Decoder::Zstd(r) => r.read(buf)?,
        };
        if n == 0 && !buf.is_empty() {
            let raw = match &mut self.0 {
                Decoder::Plain(r) => r,
                Decoder::Gzip(r) => r.get_mut().get_mut(),
                Decoder::Zstd(r) => r.get_mut().get_mut(),
            };
            // Whatever trails the compressed stream still counts for the digest.
            io::copy(raw, &mut io::sink())?;
        }
        Ok(n)
    }
}

fn open_layer(registry: &Registry, layer: &Descriptor) -> Result<LayerReader> {
    let blob = registry.get_blob(&layer.digest)?;
    let verified = Verified {
        inner: blob,
        hasher: Sha256::new(),
        count: 0,
        descriptor: layer.clone(),
        checked: false,
    };
    let io_error = |e: io::Error| OciError::Io {
        what: format!("layer {}", layer.digest),
        source: e,
    };
    let decoder = match manifest::layer_compression(&layer.media_type) {
        Some(Compression::None) => Decoder::Plain(verified),
        Some(Compression::Gzip) => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(
            BufReader::new(verified),
        ))),
        Some(Compression::Zstd) => {
            Decoder::Zstd(zstd::stream::read::Decoder::new(verified).map_err(io_error)?)
        }
        None => {
            return Err(OciError::Manifest {
                what: format!("layer {}", layer.digest),
                problem: format!("media type {} is not an image layer", layer.media_type),
            })
        }
    };
    Ok(LayerReader(decoder))
}

/// `library add NAME oci://...` as one document: what the add reported (the library's own
/// report, generic so this crate needs no library) and what the pull found.
#[derive(Debug, Clone, Serialize)]
pub struct PulledAdd<A> {
    #[serde(flatten)]
    pub added: A,
    pub registry: PullReport,
}

/// The disk of a pulled image, as a stream (see the module text for what it checks).
pub struct PulledDisk {
    pub report: PullReport,
    scanner: DiskScanner<LayerReader>,
    hasher: Sha256,
    expected: Option<String>,
    done: bool,
}

impl Read for PulledDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.scanner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            if let Some(expected) = &self.expected {
                let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
                if &actual != expected {
                    return Err(OciError::DigestMismatch {
                        what: format!("{} ({ANNOTATION_DIGEST})", self.report.disk_path),
                        expected: expected.clone(),
                        actual,
                    }
                    .into_io());
                }
            }
        }
        Ok(n)
    }
}

fn fetch_manifest(
    registry: &Registry,
    reference: &str,
    expected: Option<&Descriptor>,
) -> Result<(Parsed, String, String)> {
    let (bytes, content_type) = registry.get_manifest(reference)?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let wanted = expected.map(|d| d.digest.clone()).or_else(|| {
        reference
            .starts_with("sha256:")
            .then(|| reference.to_string())
    });
    if let Some(wanted) = wanted {
        if wanted != digest {
            return Err(OciError::DigestMismatch {
                what: format!("manifest {reference}"),
                expected: wanted,
                actual: digest,
            });
        }
    }
    if let Some(d) = expected {
        if d.size != bytes.len() as u64 {
            return Err(OciError::Manifest {
                what: reference.to_string(),
                problem: format!("{} bytes, the index says {}", bytes.len(), d.size),
            });
        }
    }
    let parsed = manifest::parse(&bytes, content_type.as_deref())?;
    let media_type = match &parsed {
        Parsed::Image(m) => m.media_type.clone(),
        Parsed::Index(i) => i.media_type.clone(),
    }
    .or(content_type)
    .unwrap_or_default();
    Ok((parsed, digest, media_type))
}

/// Resolves `reference` and opens its disk.
pub fn pull(reference: &Reference, options: &RegistryOptions) -> Result<PulledDisk> {
    let registry = Registry::new(reference, options, false);
    let (parsed, mut digest, mut media_type) =
        fetch_manifest(&registry, &reference.reference, None)?;
    let mut platform = None;
    let image: ImageManifest = match parsed {
        Parsed::Image(m) => m,
        Parsed::Index(index) => {
            let entry = manifest::pick_platform(&index)?.clone();
            platform = entry
                .platform
                .as_ref()
                .map(|p| format!("{}/{}", p.os, p.architecture));
            let (parsed, d, m) = fetch_manifest(&registry, &entry.digest, Some(&entry))?;
            digest = d;
            media_type = m;
            match parsed {
                Parsed::Image(m) => m,
                Parsed::Index(_) => {
                    return Err(OciError::Manifest {
                        what: entry.digest,
                        problem: "an index inside an index".into(),
                    })
                }
            }
        }
    };
    // The topmost layer with a file under disk/ is what a container runtime shows there.
    for layer in image.layers.iter().rev() {
        let what = format!("layer {}", layer.digest);
        let mut scanner = DiskScanner::new(open_layer(&registry, layer)?, &what);
        if let Some(disk) = scanner.next_disk()? {
            let expected = image.annotations.get(ANNOTATION_DIGEST).cloned();
            return Ok(PulledDisk {
                report: PullReport {
                    reference: reference.display(),
                    manifest_digest: digest,
                    manifest_media_type: media_type,
                    platform,
                    layer_digest: layer.digest.clone(),
                    layer_size: layer.size,
                    compression: manifest::layer_compression(&layer.media_type)
                        .unwrap_or(Compression::None),
                    disk_path: disk.path,
                    disk_size: disk.size,
                    annotations: image.annotations.clone(),
                },
                scanner,
                hasher: Sha256::new(),
                expected,
                done: false,
            });
        }
    }
    Err(OciError::Layout {
        what: reference.display(),
        problem: "no layer holds a file under disk/ (not a containerDisk)".into(),
    })
}
