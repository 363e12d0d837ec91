//! raw images (sparse-aware): holes found with SEEK_DATA/SEEK_HOLE, holes left in new files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_io::{AtomicFile, Progress, ReadAt};

use crate::error::{DiskError, Result};
use crate::image::{
    BlockKind, BlockStatus, CreateOptions, DiskImage, Format, HostOffset, ImageInfo, ImageWriter,
    Measurement, OpenOptions,
};

/// Granularity at which new raw files are fed (holes smaller than this are written as zeros).
pub const RAW_WRITE_GRANULARITY: u64 = 4096;

/// Every file is a raw image; raw is what remains when no other format matches.
pub fn probe(_head: &[u8], _tail: &[u8]) -> bool {
    true
}

/// An open raw image.
pub struct RawImage {
    path: PathBuf,
    source: Arc<dyn ReadAt>,
    size: u64,
    /// A handle for lseek(SEEK_DATA/SEEK_HOLE); None when the path cannot be reopened.
    seek_handle: Option<File>,
}

pub fn open(
    path: &Path,
    source: Arc<dyn ReadAt>,
    _opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    let size = source.size().map_err(|e| DiskError::io(path, 0, e))?;
    let seek_handle = File::open(path)
        .ok()
        .filter(|f| f.metadata().map(|m| m.is_file()).unwrap_or(false));
    Ok(Box::new(RawImage {
        path: path.to_path_buf(),
        source,
        size,
        seek_handle,
    }))
}

/// lseek with SEEK_DATA / SEEK_HOLE; None when the file system cannot tell (then all is data).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Option<std::result::Result<u64, i32>> {
    let off = libc::off_t::try_from(offset).ok()?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if errno == libc::ENXIO {
            return Some(Err(errno));
        }
        return None;
    }
    Some(Ok(r as u64))
}

impl DiskImage for RawImage {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        let end = guest_offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset: guest_offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        self.source
            .read_exact_at(buf, guest_offset)
            .map_err(|e| DiskError::io(&self.path, guest_offset, e))
    }
    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus> {
        let len = len.min(self.size.saturating_sub(guest_offset)).max(1);
        let data = BlockStatus {
            len,
            kind: BlockKind::Data,
            host_offset: Some(HostOffset(guest_offset)),
        };
        let Some(file) = &self.seek_handle else {
            return Ok(data);
        };
        match seek(file, guest_offset, libc::SEEK_DATA) {
            None => Ok(data),
            Some(Err(_)) => Ok(BlockStatus {
                len,
                kind: BlockKind::Zero,
                host_offset: Some(HostOffset(guest_offset)),
            }),
            Some(Ok(data_start)) if data_start > guest_offset => Ok(BlockStatus {
                len: (data_start - guest_offset).min(len),
                kind: BlockKind::Zero,
                host_offset: Some(HostOffset(guest_offset)),
            }),
            Some(Ok(_)) => match seek(file, guest_offset, libc::SEEK_HOLE) {
                Some(Ok(hole)) if hole > guest_offset => Ok(BlockStatus {
                    len: (hole - guest_offset).min(len),
                    ..data
                }),
                _ => Ok(data),
            },
        }
    }
    fn info(&self) -> Result<ImageInfo> {
        Ok(ImageInfo::basic(&self.path, Format::Raw, self.size))
    }
    fn check(&self, _progress: &dyn Progress) -> Result<crate::image::CheckReport> {
        Err(DiskError::NotSupportedFor {
            path: self.path.clone(),
            format: "raw",
            operation: "check",
        })
    }
}

/// Preallocation modes of qemu-img's raw driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preallocation {
    Off,
    Falloc,
    Full,
}

/// A new raw file: sized up front (a hole), data written where it is not zero.
pub struct RawWriter {
    file: AtomicFile,
    size: u64,
    flush: bool,
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    opts.reject_unknown_options(&["preallocation", "size"])?;
    if opts.backing.is_some() {
        return Err(DiskError::NotSupportedFor {
            path: path.to_path_buf(),
            format: "raw",
            operation: "a backing file",
        });
    }
    let prealloc = match opts.options.get("preallocation").map(String::as_str) {
        None | Some("off") => Preallocation::Off,
        Some("falloc") => Preallocation::Falloc,
        Some("full") => Preallocation::Full,
        Some(other) => {
            return Err(DiskError::InvalidOption {
                key: "preallocation".into(),
                value: other.into(),
                reason: "raw accepts off, falloc, full".into(),
            })
        }
    };
    let file = AtomicFile::create(path, opts.overwrite).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "create",
        source,
    })?;
    let size = opts.virtual_size;
    file.file()
        .set_len(size)
        .map_err(|e| DiskError::io(file.temp_path(), size, e))?;
    match prealloc {
        Preallocation::Off => {}
        Preallocation::Falloc => {
            let len = libc::off_t::try_from(size).map_err(|_| DiskError::InvalidOption {
                key: "size".into(),
                value: size.to_string(),
                reason: "too large for this system".into(),
            })?;
            // SAFETY: fallocate on a descriptor we own; no memory is passed.
            let r = unsafe { libc::posix_fallocate(file.file().as_raw_fd(), 0, len) };
            if r != 0 {
                return Err(DiskError::io(
                    file.temp_path(),
                    0,
                    std::io::Error::from_raw_os_error(r),
                ));
            }
        }
        Preallocation::Full => {
            let zeros = vec![0u8; 1 << 20];
            let mut offset = 0u64;
            while offset < size {
                let n = (size - offset).min(zeros.len() as u64) as usize;
                file.file()
                    .write_all_at(&zeros[..n], offset)
                    .map_err(|e| DiskError::io(file.temp_path(), offset, e))?;
                offset += n as u64;
            }
        }
    }
    Ok(Box::new(RawWriter {
        file,
        size,
        flush: opts.flush,
    }))
}

impl ImageWriter for RawWriter {
    fn cluster_size(&self) -> u64 {
        RAW_WRITE_GRANULARITY
    }
    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        if guest_offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(DiskError::OutOfRange {
                path: self.file.final_path().to_path_buf(),
                offset: guest_offset,
                len: data.len() as u64,
                size: self.size,
            });
        }
        self.file
            .file()
            .write_all_at(data, guest_offset)
            .map_err(|e| DiskError::io(self.file.temp_path(), guest_offset, e))
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let path = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.flush))
            .map_err(|source| DiskError::Open {
                path,
                action: "finish",
                source,
            })
    }
}

/// A raw image needs exactly its virtual size.
pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    let size = source
        .map(|s| s.virtual_size())
        .unwrap_or(opts.virtual_size);
    Ok(Measurement {
        required: size,
        fully_allocated: size,
        bitmaps: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.raw");
        let mut w = create(&path, &CreateOptions::new(Format::Raw, 1 << 20)).unwrap();
        w.write_at(512 * 1024, &[7u8; 4096]).unwrap();
        w.finish().unwrap();
        let img = crate::factory::open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(img.virtual_size(), 1 << 20);
        let mut buf = [0u8; 4096];
        img.read_at(&mut buf, 512 * 1024).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        let first = img.block_status(0, 1 << 20).unwrap();
        assert_eq!(first.kind, BlockKind::Zero);
    }

    #[test]
    fn raw_rejects_unknown_option() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = CreateOptions::new(Format::Raw, 4096);
        opts.options.insert("cluster_size".into(), "65536".into());
        assert!(matches!(
            create(&dir.path().join("x"), &opts),
            Err(DiskError::InvalidOption { .. })
        ));
    }
}
