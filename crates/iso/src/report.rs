//! Typed reports: the JSON documents `vmedia iso info` and `vmedia iso verify` print, owned
//! here so that a service can return the same schemas.
//!
//! Front ends that want the historical byte-for-byte output serialize through
//! `serde_json::Value` (which orders keys alphabetically at every level, as the CLI always has).

use std::path::PathBuf;

use serde::Serialize;

use crate::integrity::{self, ImplantInfo, IntegrityError, VerifyReport};
use crate::read::{BootCatalog, IsoImage, PartitionTable, ReadError, VolumeInfo};

/// Everything `iso info` reports about an image.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    /// The El Torito catalog, when the image is bootable from CD.
    pub boot_catalog: Option<BootCatalog>,
    /// The embedded checksums and signature, when present.
    pub checksums: Option<ImplantInfo>,
    /// The image as the caller names it.
    pub image: String,
    /// The mkisofs options (xorriso -as mkisofs syntax) that recreate the boot setup.
    pub mkisofs_boot_args: Option<Vec<String>>,
    /// MBR, GPT and Apple partition map.
    pub partitions: PartitionTable,
    /// What the medium records: the volume, extended by partitions past it.
    pub recorded_bytes: u64,
    /// Volume descriptors, name spaces and identifiers.
    pub volume: VolumeInfo,
}

/// What `InfoReport::read` could not read.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read the El Torito boot catalog")]
    BootCatalog(#[source] ReadError),
    #[error("cannot read the partition tables")]
    Partitions(#[source] ReadError),
    #[error("cannot read the medium's size")]
    RecordedSize(#[source] ReadError),
    #[error("cannot read the embedded checksums")]
    Checksums(#[source] IntegrityError),
}

impl InfoReport {
    /// Reads the report of `image`, which the caller names `name` (a path, an object key).
    pub fn read(image: &IsoImage, name: &str) -> Result<InfoReport, InfoError> {
        let boot_catalog = image.boot_catalog().map_err(InfoError::BootCatalog)?;
        let partitions = image.partitions().map_err(InfoError::Partitions)?;
        let recorded_bytes = image.recorded_size().map_err(InfoError::RecordedSize)?;
        // A UDF-only volume (mkudffs) has no ISO 9660 descriptor to carry checksums.
        let checksums = if image.volume().descriptors.is_empty() {
            None
        } else {
            integrity::read_implant(&**image.source()).map_err(InfoError::Checksums)?
        };
        let mkisofs_boot_args = boot_catalog.as_ref().map(|c| c.as_mkisofs_args(name));
        Ok(InfoReport {
            boot_catalog,
            checksums,
            image: name.to_string(),
            mkisofs_boot_args,
            partitions,
            recorded_bytes,
            volume: image.volume().clone(),
        })
    }
}

/// The `iso verify` document: the checks, which image, and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyDocument {
    pub image: PathBuf,
    /// Every present check passed (and at least one was checked).
    pub ok: bool,
    #[serde(flatten)]
    pub report: VerifyReport,
}

/// The `iso verify` document when the image cannot be checked at all (it is truncated).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyFailure {
    pub error: String,
    pub image: PathBuf,
    /// Always false.
    pub ok: bool,
}

impl VerifyFailure {
    pub fn new(image: PathBuf, error: &IntegrityError) -> VerifyFailure {
        VerifyFailure {
            error: error.to_string(),
            image,
            ok: false,
        }
    }
}
