//! OCI registries as a distribution channel for disk images: a disk travels as a KubeVirt
//! containerDisk (an OCI image whose one layer holds the disk under `disk/`, owned 107:107).
//!
//! Architecture invariant: this crate prints nothing, reads no environment and never holds a
//! whole image in memory or on disk: pushes stream from a `ReadAt` in bounded chunks, pulls
//! hand back a `Read` that verifies the layer digest (and the disk digest, when the image
//! names one) before it reports the end. Every size, count and name a registry or a layer
//! gives is checked against a named limit before it is used.
//!
//! Modules: `reference` (`oci://REGISTRY/REPO:TAG`), `manifest` (image manifests, indexes,
//! Docker schema 2, platform choice), `tar` (the containerDisk layer: writer and streaming
//! scanner), `client` (the distribution API over ureq: auth challenges, blobs, manifests),
//! `push` and `pull` (the two operations and their reports).

pub mod client;
pub mod error;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod tar;

pub use client::{Credentials, Registry, RegistryOptions};
pub use error::{OciError, Result};
pub use pull::{pull, PullReport, PulledAdd, PulledDisk};
pub use push::{push, PushReport, PushSource};
pub use reference::Reference;

/// The fuzz target's entry point: untrusted manifest bytes and layer bytes.
pub mod fuzzing {
    use std::io::Read;

    /// Parses `data` as a manifest (split at the first NUL: the rest is scanned as a tar
    /// layer). Never panics; `true` when the manifest is a usable image manifest or index and
    /// the layer (when present) holds exactly one disk.
    pub fn manifest_and_layer(data: &[u8]) -> bool {
        let (manifest, layer) = match data.iter().position(|&b| b == 0) {
            Some(at) => (&data[..at], Some(&data[at + 1..])),
            None => (data, None),
        };
        let manifest_ok = crate::manifest::parse(manifest, None).is_ok();
        let layer_ok = match layer {
            None => true,
            Some(bytes) => {
                let mut scanner = crate::tar::DiskScanner::new(bytes, "fuzz layer");
                match scanner.next_disk() {
                    Ok(Some(_)) => {
                        let mut sink = Vec::new();
                        scanner.read_to_end(&mut sink).is_ok()
                    }
                    _ => false,
                }
            }
        };
        manifest_ok && layer_ok
    }
}
