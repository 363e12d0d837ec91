//! Small checked-I/O helpers every format module shares: reads that name the file, the guest
//! range check, and reads through a backing image.

use std::path::Path;

use vmedia_io::ReadAt;

use crate::error::{DiskError, Result};
use crate::image::DiskImage;

/// Reads exactly `buf.len()` bytes at `offset`, naming the file on failure.
pub fn read_exact(source: &dyn ReadAt, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    source
        .read_exact_at(buf, offset)
        .map_err(|e| DiskError::io(path, offset, e))
}

/// Source size, naming the file on failure.
pub fn source_size(source: &dyn ReadAt, path: &Path) -> Result<u64> {
    source.size().map_err(|e| DiskError::io(path, 0, e))
}

/// The guest range check every `read_at` starts with.
pub fn check_range(path: &Path, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange {
            path: path.to_path_buf(),
            offset,
            len,
            size,
        }),
    }
}

/// Fills `buf` from the backing image, or zeros when there is none or it is shorter.
pub fn read_backing(
    backing: Option<&dyn DiskImage>,
    buf: &mut [u8],
    guest_offset: u64,
) -> Result<()> {
    match backing {
        Some(parent) => {
            let size = parent.virtual_size();
            if guest_offset >= size {
                buf.fill(0);
                return Ok(());
            }
            let inside = ((size - guest_offset).min(buf.len() as u64)) as usize;
            parent.read_at(&mut buf[..inside], guest_offset)?;
            buf[inside..].fill(0);
            Ok(())
        }
        None => {
            buf.fill(0);
            Ok(())
        }
    }
}
