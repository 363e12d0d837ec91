//! qcow2 (v2 and v3): header, L1/L2 tables, refcounts, compressed clusters, backing chains, snapshots.
//!
//! `header` parses/emits the header and its extensions, `reader` maps guest clusters and reads
//! them, `writer` lays out new images, `check` rebuilds refcounts, `modify` changes existing
//! images in place (resize, commit, rebase). `luks` and `xts` are the LUKS encryption
//! (crypt_method 2) of data clusters.

pub mod check;
pub mod header;
pub mod luks;
pub mod modify;
pub mod reader;
mod refcount;
pub mod writer;
pub mod xts;

use std::path::Path;
use std::sync::Arc;

use vmedia_io::bytes::Fields;
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

/// Bytes of the fixed part of a snapshot table entry.
pub(crate) const SNAPSHOT_ENTRY_FIXED_LEN: usize = 40;

/// The fixed part of a snapshot table entry (the variable part, extra data then id then name,
/// follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotEntryHeader {
    pub l1_offset: u64,
    pub l1_size: u32,
    pub id_len: u64,
    pub name_len: u64,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock: u64,
    pub vm_state_small: u32,
    pub extra_len: u64,
}

impl SnapshotEntryHeader {
    /// Reads the fixed fields, or `None` when `fixed` is shorter than the fixed part.
    pub(crate) fn parse(fixed: &[u8]) -> Option<SnapshotEntryHeader> {
        let f = Fields::new_checked(fixed, SNAPSHOT_ENTRY_FIXED_LEN)?;
        Some(SnapshotEntryHeader {
            l1_offset: f.be64(0),
            l1_size: f.be32(8),
            id_len: u64::from(f.be16(12)),
            name_len: u64::from(f.be16(14)),
            date_sec: f.be32(16),
            date_nsec: f.be32(20),
            vm_clock: f.be64(24),
            vm_state_small: f.be32(32),
            extra_len: u64::from(f.be32(36)),
        })
    }
}
