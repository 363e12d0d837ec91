//! Helpers shared by the VHD, VHDX and VMDK drivers: opening a parent of the same format
//! through the reference policy, and small checked-I/O wrappers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_io::ReadAt;

use crate::error::{DiskError, Result};
use crate::image::{
    check_reference, resolve_reference, BackingRef, DiskImage, Format, OpenOptions,
};

/// The signature of a format module's `open`.
pub type OpenFn = fn(&Path, Arc<dyn ReadAt>, &OpenOptions) -> Result<Box<dyn DiskImage>>;

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}

/// Opens `name` (recorded inside `referrer`) with `open_fn`, after the reference policy and
/// loop check of `image::check_reference`, extending the chain for the next level.
pub fn open_reference_with(
    referrer: &Path,
    name: &str,
    opts: &OpenOptions,
    open_fn: OpenFn,
) -> Result<Box<dyn DiskImage>> {
    let target = check_reference(referrer, name, opts)?;
    let (file, child) = reference_file(referrer, &target, opts)?;
    open_fn(&target, Arc::new(file), &child)
}

/// Opens an already checked reference path, returning the file and the options for opening
/// it (chain extended).
pub fn reference_file(
    referrer: &Path,
    target: &Path,
    opts: &OpenOptions,
) -> Result<(File, OpenOptions)> {
    let mut chain = opts.chain.clone();
    if chain.is_empty() {
        chain.push(canonical(referrer));
    }
    chain.push(canonical(target));
    let child = OpenOptions {
        format: None,
        chain,
        ..opts.clone()
    };
    let file = File::open(target).map_err(|source| DiskError::Open {
        path: target.to_path_buf(),
        action: "open (referenced image)",
        source,
    })?;
    Ok((file, child))
}

/// Opens the parent of a differencing image from its candidate names, in the image's order of
/// preference (VHD: W2ru, W2ku, MacX, ..., unicode name; VHDX: relative_path,
/// absolute_win32_path, volume_path; VMDK: parentFileNameHint). Candidates that do not exist
/// are skipped; the first one that opens wins. The returned reference names the first
/// candidate when nothing was opened (`opts.skip_backing`), as `qemu-img info` shows it.
///
/// `names` must not be empty (callers report "no parent named" with their own field and
/// offset); an empty list gives a not-found error rather than a panic.
pub fn open_first_parent(
    referrer: &Path,
    names: &[String],
    format: Format,
    opts: &OpenOptions,
    open_fn: OpenFn,
) -> Result<(BackingRef, Option<Box<dyn DiskImage>>)> {
    let first = names.first().cloned().unwrap_or_default();
    let recorded = BackingRef {
        name: first.clone(),
        format: Some(format),
        resolved: resolve_reference(referrer, &first),
    };
    if opts.skip_backing {
        return Ok((recorded, None));
    }
    let mut last_error = None;
    for name in names {
        let target = resolve_reference(referrer, name);
        if !target.exists() {
            continue;
        }
        match open_reference_with(referrer, name, opts, open_fn) {
            Ok(parent) => {
                let found = BackingRef {
                    name: name.clone(),
                    format: Some(format),
                    resolved: target,
                };
                return Ok((found, Some(parent)));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| DiskError::Open {
        path: recorded.resolved.clone(),
        action: "open the parent of a differencing image",
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("none of {names:?} exists beside {}", referrer.display()),
        ),
    }))
}

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
