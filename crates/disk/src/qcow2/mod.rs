//! qcow2 (v2 and v3): header, L1/L2 tables, refcounts, compressed clusters, backing chains, snapshots.

use std::path::Path;
use std::sync::Arc;

use vmedia_io::ReadAt;

use crate::error::{DiskError, Result};
use crate::image::{CreateOptions, DiskImage, ImageWriter, Measurement, OpenOptions};

/// "QFI\xfb" at offset 0.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

pub fn probe(head: &[u8], _tail: &[u8]) -> bool {
    head.starts_with(&MAGIC)
}

pub fn open(path: &Path, _source: Arc<dyn ReadAt>, _opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    Err(DiskError::Unsupported { path: path.into(), format: "qcow2", feature: "reader being written".into() })
}

pub fn create(path: &Path, _opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    Err(DiskError::Unsupported { path: path.into(), format: "qcow2", feature: "writer being written".into() })
}

pub fn measure(_opts: &CreateOptions, _source: Option<&dyn DiskImage>) -> Result<Measurement> {
    Err(DiskError::Unsupported { path: "".into(), format: "qcow2", feature: "measure being written".into() })
}
