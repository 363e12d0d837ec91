//! qcow2 (v2 and v3): header, L1/L2 tables, refcounts, compressed clusters, backing chains, snapshots.
//!
//! `header` parses/emits the header and its extensions, `reader` maps guest clusters and reads
//! them, `writer` lays out new images, `check` rebuilds refcounts, `modify` changes existing
//! images in place (resize, commit, rebase).

pub mod check;
pub mod header;
pub mod modify;
pub mod reader;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use vmedia_io::ReadAt;

use crate::error::Result;
use crate::image::{CreateOptions, DiskImage, ImageWriter, Measurement, OpenOptions};

pub use header::MAGIC;
pub use reader::Qcow2Image;

pub fn probe(head: &[u8], _tail: &[u8]) -> bool {
    head.starts_with(&MAGIC)
}

pub fn open(
    path: &Path,
    source: Arc<dyn ReadAt>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(reader::open(path, source, opts)?))
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    Ok(Box::new(writer::create(path, opts)?))
}

pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    writer::measure(opts, source)
}
