//! `push`: one disk to a registry as a containerDisk. The layer is an uncompressed tar (see
//! `docs/library.md` "Registries" for why), hashed in a first pass from the source so that a
//! layer the repository already holds is never sent, then uploaded in bounded chunks; the
//! config and manifest follow. Nothing is held whole in memory.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::Serialize;
use sha2::{Digest, Sha256};
use vmedia_io::{Progress, ReadAt};

use crate::client::{Registry, RegistryOptions};
use crate::error::{OciError, Result};
use crate::manifest::{Descriptor, ImageManifest, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::reference::Reference;
use crate::tar;

/// One PATCH of a chunked upload: bounds the memory a push holds (and what a failed request
/// resends) while keeping the per-request overhead small next to the transfer.
pub const UPLOAD_CHUNK: usize = 16 << 20;

/// The manifest annotation that records the disk's SHA-256 (checked again by `pull`).
pub const ANNOTATION_DIGEST: &str = "io.vmedia.image.digest";
/// The manifest annotation that records `NAME@VERSION` in the library it came from.
pub const ANNOTATION_NAME: &str = "io.vmedia.image.name";
/// The OCI annotation naming a layer's file (tools show it).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// What to push.
pub struct PushSource<'a> {
    pub disk: &'a dyn ReadAt,
    pub size: u64,
    /// `sha256:HEX` of the disk; checked while the layer is hashed, before anything is sent.
    pub digest: String,
    /// The file name under `disk/` (`disk.qcow2`, `disk.img`).
    pub file_name: String,
    /// Extra manifest annotations (the library's name and version).
    pub annotations: BTreeMap<String, String>,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer_size: u64,
    pub disk_path: String,
    pub disk_digest: String,
    /// False when the repository already held the layer (nothing sent but the manifest).
    pub layer_uploaded: bool,
    /// Bytes sent in blob uploads.
    pub uploaded_bytes: u64,
    pub annotations: BTreeMap<String, String>,
}

/// The layer as a stream: tar head, the disk read from the source, tar tail.
struct LayerStream<'a> {
    head: Vec<u8>,
    disk: &'a dyn ReadAt,
    size: u64,
    tail: Vec<u8>,
    pos: u64,
    disk_hasher: Sha256,
}

impl Read for LayerStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let head = self.head.len() as u64;
        if self.pos < head {
            let from = &self.head[self.pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let disk_pos = self.pos - head;
        if disk_pos < self.size {
            let want = (buf.len() as u64).min(self.size - disk_pos) as usize;
            let n = self.disk.read_at(&mut buf[..want], disk_pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the disk ends at {disk_pos:#x}, before its size {:#x}",
                        self.size
                    ),
                ));
            }
            self.disk_hasher.update(&buf[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let tail_pos = (disk_pos - self.size) as usize;
        let from = self.tail.get(tail_pos..).unwrap_or(&[]);
        let n = from.len().min(buf.len());
        buf[..n].copy_from_slice(&from[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<'a> LayerStream<'a> {
    fn new(source: &'a PushSource<'a>) -> Result<LayerStream<'a>> {
        Ok(LayerStream {
            head: tar::layer_head(&source.file_name, source.size)?,
            disk: source.disk,
            size: source.size,
            tail: tar::layer_tail(source.size),
            pos: 0,
            disk_hasher: Sha256::new(),
        })
    }
}

fn sha256_text(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Fills `buf` as far as the stream allows; the number of bytes.
fn fill(stream: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(OciError::Io {
                    what: "reading the disk to push".into(),
                    source: e,
                })
            }
        }
    }
    Ok(got)
}

/// Pushes `source` to `reference` (a tag).
pub fn push(
    reference: &Reference,
    options: &RegistryOptions,
    source: &PushSource<'_>,
    progress: &dyn Progress,
) -> Result<PushReport> {
    if reference.is_digest() {
        return Err(OciError::Reference {
            text: reference.display(),
            reason: "a push needs a tag, not a digest".into(),
        });
    }
    let layer_size = tar::layer_size(source.size).ok_or_else(|| OciError::Limit {
        what: "disk".into(),
        limit: "size in bytes",
        value: source.size,
        max: crate::manifest::MAX_LAYER_BYTES,
    })?;
    let mut buf = vec![0u8; UPLOAD_CHUNK];

    // Pass 1: the layer digest (and the disk's, checked against the version's).
    progress.phase("hashing");
    progress.set_total(layer_size);
    let mut stream = LayerStream::new(source)?;
    let mut layer_hasher = Sha256::new();
    loop {
        let n = fill(&mut stream, &mut buf)?;
        if n == 0 {
            break;
        }
        layer_hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    let layer_digest = sha256_text(layer_hasher);
    let disk_digest = sha256_text(stream.disk_hasher);
    if disk_digest != source.digest {
        return Err(OciError::DigestMismatch {
            what: format!("disk {}", source.file_name),
            expected: source.digest.clone(),
            actual: disk_digest,
        });
    }

    let registry = Registry::new(reference, options, true);
    let mut uploaded_bytes = 0;
    let layer_uploaded = !registry.blob_exists(&layer_digest)?;
    if layer_uploaded {
        progress.phase("uploading");
        // The bar continues from the hashing pass: two passes over the layer in all.
        progress.set_total(layer_size.saturating_mul(2));
        let mut stream = LayerStream::new(source)?;
        let mut location = registry.start_upload()?;
        let mut offset = 0u64;
        loop {
            let n = fill(&mut stream, &mut buf)?;
            if n == 0 {
                break;
            }
            location = registry.upload_chunk(&location, offset, &buf[..n])?;
            offset += n as u64;
            progress.advance(n as u64);
        }
        // The registry checks the digest over everything sent: a source that changed
        // between the passes is refused there.
        registry.finish_upload(&location, &layer_digest, &[])?;
        uploaded_bytes += offset;
    }

    let disk_path = format!("{}/{}", tar::DISK_DIR, source.file_name);
    let mut annotations = source.annotations.clone();
    annotations.insert(ANNOTATION_DIGEST.into(), source.digest.clone());
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": annotations },
        // Uncompressed: the layer's digest is its diff_id.
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| OciError::Manifest {
        what: "config".into(),
        problem: e.to_string(),
    })?;
    let config_digest = sha256_text(Sha256::new_with_prefix(&config_bytes));
    if !registry.blob_exists(&config_digest)? {
        let location = registry.start_upload()?;
        registry.finish_upload(&location, &config_digest, &config_bytes)?;
        uploaded_bytes += config_bytes.len() as u64;
    }

    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: OCI_LAYER_TAR.into(),
            digest: layer_digest.clone(),
            size: layer_size,
            annotations: BTreeMap::from([(ANNOTATION_TITLE.to_string(), disk_path.clone())]),
            platform: None,
        }],
        annotations: annotations.clone(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::Manifest {
        what: "manifest".into(),
        problem: e.to_string(),
    })?;
    let manifest_digest = sha256_text(Sha256::new_with_prefix(&manifest_bytes));
    if let Some(answered) =
        registry.put_manifest(&reference.reference, OCI_MANIFEST, &manifest_bytes)?
    {
        if answered != manifest_digest {
            return Err(OciError::DigestMismatch {
                what: format!("manifest {}", reference.display()),
                expected: manifest_digest,
                actual: answered,
            });
        }
    }
    Ok(PushReport {
        reference: reference.display(),
        manifest_digest,
        config_digest,
        layer_digest,
        layer_size,
        disk_path,
        disk_digest: source.digest.clone(),
        layer_uploaded,
        uploaded_bytes,
        annotations,
    })
}
