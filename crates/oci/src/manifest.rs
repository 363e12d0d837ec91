//! Image manifests and indexes, OCI and Docker schema 2: parsed from untrusted bytes, checked
//! (schema version, media types, digests, sizes, counts) before anything is fetched by them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{OciError, Result};
use crate::reference::check_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 1 (signed, no content addressing of layers): refused by name.
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// What a pull asks the registry for, most wanted first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The distribution reference implementation refuses manifests over 4 MiB; so do we.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Overlay file systems stack at most 128 layers; no runnable image has more.
pub const MAX_LAYERS: usize = 128;
/// Generous for multi-platform indexes (a few dozen platforms with attestations).
pub const MAX_INDEX_ENTRIES: usize = 1024;
/// An image config is a small JSON document; 4 MiB leaves room for long histories.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The largest layer vmedia streams (64 TiB, qcow2's own practical ceiling for a disk).
pub const MAX_LAYER_BYTES: u64 = 64 << 40;
/// Annotation values and keys: bounded so a manifest cannot make reports huge.
const MAX_ANNOTATION_CHARS: usize = 4096;

/// A content descriptor: what a manifest says about a blob or another manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Parsed {
    Image(ImageManifest),
    Index(Index),
}

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of an image layer media type, or `None` for anything that is not one.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
        OCI_LAYER_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// Only the fields that tell the kind of document apart.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
}

/// Parses and checks a manifest; `content_type` is the registry's Content-Type, when known.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed> {
    let bad = |problem: String| OciError::Manifest {
        what: "document".into(),
        problem,
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(OciError::Limit {
            what: "manifest".into(),
            limit: "size in bytes",
            value: bytes.len() as u64,
            max: MAX_MANIFEST_BYTES,
        });
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
    // The registry's Content-Type wins; the document's own mediaType next; the shape last.
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let kind = content_type
        .map(str::to_string)
        .or(probe.media_type.clone())
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX.into()
            } else {
                OCI_MANIFEST.into()
            }
        });
    if DOCKER_SCHEMA1.contains(&kind.as_str()) || probe.schema_version == Some(1) {
        return Err(bad(
            "Docker schema 1 manifests are not supported (re-push the image with a current tool)"
                .into(),
        ));
    }
    if probe.schema_version != Some(2) {
        return Err(bad(format!(
            "schemaVersion is {:?}, not 2",
            probe.schema_version
        )));
    }
    if let (Some(declared), Some(_)) = (&probe.media_type, content_type) {
        let family = |m: &str| matches!(m, OCI_INDEX | DOCKER_LIST);
        if family(declared) != family(&kind) {
            return Err(bad(format!(
                "the registry says {kind} but the document says {declared}"
            )));
        }
    }
    match kind.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            if probe.layers.is_some() {
                return Err(bad("an index with layers".into()));
            }
            let index: Index =
                serde_json::from_slice(bytes).map_err(|e| bad(format!("index: {e}")))?;
            check_index(&index)?;
            Ok(Parsed::Index(index))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if probe.manifests.is_some() {
                return Err(bad("an image manifest with a manifests list".into()));
            }
            let image: ImageManifest =
                serde_json::from_slice(bytes).map_err(|e| bad(format!("image manifest: {e}")))?;
            check_image(&image)?;
            Ok(Parsed::Image(image))
        }
        other => Err(bad(format!(
            "media type {other} is not an image manifest or index"
        ))),
    }
}

fn check_descriptor(d: &Descriptor, what: &str, max_size: u64) -> Result<()> {
    check_digest(&d.digest).map_err(|problem| OciError::Manifest {
        what: what.to_string(),
        problem,
    })?;
    if d.size > max_size {
        return Err(OciError::Limit {
            what: format!("{what} {}", d.digest),
            limit: "size in bytes",
            value: d.size,
            max: max_size,
        });
    }
    for (k, v) in &d.annotations {
        if k.len() > MAX_ANNOTATION_CHARS || v.len() > MAX_ANNOTATION_CHARS {
            return Err(OciError::Manifest {
                what: what.to_string(),
                problem: format!("annotation longer than {MAX_ANNOTATION_CHARS} characters"),
            });
        }
    }
    Ok(())
}

fn check_index(index: &Index) -> Result<()> {
    if index.manifests.len() > MAX_INDEX_ENTRIES {
        return Err(OciError::Limit {
            what: "index".into(),
            limit: "manifests",
            value: index.manifests.len() as u64,
            max: MAX_INDEX_ENTRIES as u64,
        });
    }
    for (i, d) in index.manifests.iter().enumerate() {
        check_descriptor(d, &format!("index entry {i}"), MAX_MANIFEST_BYTES)?;
    }
    Ok(())
}

fn check_image(image: &ImageManifest) -> Result<()> {
    check_descriptor(&image.config, "config", MAX_CONFIG_BYTES)?;
    if !matches!(image.config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
        return Err(OciError::Manifest {
            what: "config".into(),
            problem: format!(
                "media type {} is not an image config (an artifact, not a containerDisk)",
                image.config.media_type
            ),
        });
    }
    if image.layers.is_empty() {
        return Err(OciError::Manifest {
            what: "layers".into(),
            problem: "the image has no layers, so no disk".into(),
        });
    }
    if image.layers.len() > MAX_LAYERS {
        return Err(OciError::Limit {
            what: "image manifest".into(),
            limit: "layers",
            value: image.layers.len() as u64,
            max: MAX_LAYERS as u64,
        });
    }
    for (i, layer) in image.layers.iter().enumerate() {
        let what = format!("layer {i}");
        check_descriptor(layer, &what, MAX_LAYER_BYTES)?;
        if layer_compression(&layer.media_type).is_none() {
            return Err(OciError::Manifest {
                what,
                problem: format!(
                    "media type {} is not an image layer (tar, tar+gzip or tar+zstd)",
                    layer.media_type
                ),
            });
        }
    }
    Ok(())
}

/// The linux/amd64 entry of an index (the platform KubeVirt's x86 nodes run).
pub fn pick_platform(index: &Index) -> Result<&Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| {
            matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            OciError::Manifest {
                what: "index".into(),
                problem: format!(
                    "no linux/amd64 image (platforms: {})",
                    if have.is_empty() {
                        "none named".to_string()
                    } else {
                        have.join(", ")
                    }
                ),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(layer_type: &str, size: u64) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"{layer_type}","digest":"{}","size":{size}}}]}}"#,
            digest('a'),
            digest('b')
        )
    }

    #[test]
    fn oci_and_docker_manifests_parse() {
        assert!(matches!(
            parse(image(OCI_LAYER_TAR, 10).as_bytes(), None).unwrap(),
            Parsed::Image(_)
        ));
        let docker = image(DOCKER_LAYER_GZIP, 10)
            .replace(OCI_MANIFEST, DOCKER_MANIFEST)
            .replace(OCI_CONFIG, DOCKER_CONFIG);
        assert!(matches!(
            parse(docker.as_bytes(), Some(DOCKER_MANIFEST)).unwrap(),
            Parsed::Image(_)
        ));
    }

    #[test]
    fn absurd_sizes_and_wrong_media_types_are_refused() {
        let e = parse(image(OCI_LAYER_TAR, u64::MAX).as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("more than the limit"), "{e}");
        let e = parse(image("application/vnd.example.blob", 1).as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("not an image layer"), "{e}");
        let e = parse(image(OCI_LAYER_TAR, 1).as_bytes(), Some(OCI_INDEX)).unwrap_err();
        assert!(e.to_string().contains("says"), "{e}");
        let e = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
    }

    #[test]
    fn an_index_picks_linux_amd64() {
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            digest('c'),
            digest('d')
        );
        let Parsed::Index(index) = parse(text.as_bytes(), Some(OCI_INDEX)).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(pick_platform(&index).unwrap().digest, digest('d'));
        let arm_only = text.replace("amd64", "riscv64");
        let Parsed::Index(index) = parse(arm_only.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        let e = pick_platform(&index).unwrap_err();
        assert!(e.to_string().contains("linux/arm64"), "{e}");
    }
}
