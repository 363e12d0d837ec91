//! The format factory: probes a source's magic and opens, creates or measures the right format.
//!
//! Dependencies point one way: this module depends on every format module; format modules
//! depend on the traits and types of `image` (and on `reference` for the files an image
//! names), never on this module. A format that must open a referenced image of any format (a
//! qcow2 backing file) does it through `OpenOptions::opener`, which [`open_source`] fills in
//! with itself.

use std::path::Path;
use std::sync::Arc;

use vmedia_io::ReadAt;

use crate::error::{DiskError, Result};
use crate::image::{CreateOptions, DiskImage, Format, ImageWriter, Measurement, OpenOptions};

/// Bytes read from the start of a file for probing (VMDK descriptors can sit a little in).
pub const PROBE_HEAD_LEN: usize = 4096;
/// Bytes read from the end of a file for probing (the fixed VHD footer is the last 512).
pub const PROBE_TAIL_LEN: usize = 512;

/// Reads the probe windows of a source.
pub fn probe_windows(source: &dyn ReadAt, path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let size = source.size().map_err(|e| DiskError::io(path, 0, e))?;
    let head_len = size.min(PROBE_HEAD_LEN as u64) as usize;
    let mut head = vec![0u8; head_len];
    source
        .read_exact_at(&mut head, 0)
        .map_err(|e| DiskError::io(path, 0, e))?;
    let tail_len = size.min(PROBE_TAIL_LEN as u64) as usize;
    let mut tail = vec![0u8; tail_len];
    let tail_start = size - tail_len as u64;
    source
        .read_exact_at(&mut tail, tail_start)
        .map_err(|e| DiskError::io(path, tail_start, e))?;
    Ok((head, tail))
}

/// Which format the bytes look like; raw when nothing matches (as qemu-img).
pub fn probe(head: &[u8], tail: &[u8]) -> Format {
    if crate::qcow2::probe(head, tail) {
        Format::Qcow2
    } else if crate::vhdx::probe(head, tail) {
        Format::Vhdx
    } else if crate::vmdk::probe(head, tail) {
        Format::Vmdk
    } else if crate::vhd::probe(head, tail) {
        Format::Vhd
    } else {
        Format::Raw
    }
}

/// Opens an image file: probes the format unless `opts.format` names it, then opens its chain
/// as the options allow.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    let file = std::fs::File::open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "open",
        source,
    })?;
    let source: Arc<dyn ReadAt> = Arc::new(file);
    open_source(path, source, opts)
}

/// Opens an already opened source named `path` (the path resolves relative references).
pub fn open_source(
    path: &Path,
    source: Arc<dyn ReadAt>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    let opts = &OpenOptions {
        opener: Some(open_source),
        ..opts.clone()
    };
    let format = match opts.format {
        Some(f) => f,
        None => {
            let (head, tail) = probe_windows(source.as_ref(), path)?;
            probe(&head, &tail)
        }
    };
    match format {
        Format::Raw => crate::raw::open(path, source, opts),
        Format::Qcow2 => crate::qcow2::open(path, source, opts),
        Format::Vmdk => crate::vmdk::open(path, source, opts),
        Format::Vhd => crate::vhd::open(path, source, opts),
        Format::Vhdx => crate::vhdx::open(path, source, opts),
    }
}

/// Opens the image `name` recorded inside (or, for create and convert, to be recorded inside)
/// `referrer`, through the options' resolver, as `format` or probed: what a backing file
/// named on the command line goes through.
pub fn open_reference(
    referrer: &Path,
    name: &str,
    format: Option<Format>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    let opts = OpenOptions {
        opener: Some(open_source),
        ..opts.clone()
    };
    crate::reference::open_reference(referrer, name, format, &opts)
}

/// Starts a new image of `opts.format` at `path`.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    match opts.format {
        Format::Raw => crate::raw::create(path, opts),
        Format::Qcow2 => crate::qcow2::create(path, opts),
        Format::Vmdk => crate::vmdk::create(path, opts),
        Format::Vhd => crate::vhd::create(path, opts),
        Format::Vhdx => crate::vhdx::create(path, opts),
    }
}

/// qemu-img measure for `opts.format`.
pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    match opts.format {
        Format::Raw => crate::raw::measure(opts, source),
        Format::Qcow2 => crate::qcow2::measure(opts, source),
        Format::Vmdk => crate::vmdk::measure(opts, source),
        Format::Vhd => crate::vhd::measure(opts, source),
        Format::Vhdx => crate::vhdx::measure(opts, source),
    }
}
