//! `ReadAt`: positional reads from files, memory and sub-ranges, so parsers never seek.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A byte source that can be read at any offset, from several threads at once.
///
/// Short reads only happen at the end of the source; `read_exact_at` turns them into
/// `UnexpectedEof`.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Total length of the source in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` completely from `offset` or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("read past the end of the source at offset {offset:#x}"),
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        let meta = self.metadata()?;
        if meta.file_type().is_file() {
            return Ok(meta.len());
        }
        block_device_size(self)
    }
}

/// Size of a block device (or anything seekable) by seeking to its end.
fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut handle = file.try_clone()?;
    handle.seek(io::SeekFrom::End(0))
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

/// A window `[start, start + len)` of another source, seen as a source of its own
/// (a file inside an ISO, an extent inside a disk).
#[derive(Debug, Clone)]
pub struct SliceSource<S> {
    inner: S,
    start: u64,
    len: u64,
}

impl<S: ReadAt> SliceSource<S> {
    pub fn new(inner: S, start: u64, len: u64) -> Self {
        SliceSource { inner, start, len }
    }
}

impl<S: ReadAt> ReadAt for SliceSource<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let room = (self.len - offset).min(buf.len() as u64) as usize;
        let Some(absolute) = self.start.checked_add(offset) else {
            return Ok(0);
        };
        self.inner.read_at(&mut buf[..room], absolute)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_stop_at_window_end() {
        let data: Vec<u8> = (0..100u8).collect();
        let window = SliceSource::new(data, 10, 5);
        let mut buf = [0u8; 8];
        assert_eq!(window.read_at(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], &[10, 11, 12, 13, 14]);
        assert_eq!(window.read_at(&mut buf, 5).unwrap(), 0);
    }

    #[test]
    fn read_exact_past_end_is_unexpected_eof() {
        let data = vec![1u8; 4];
        let mut buf = [0u8; 8];
        let err = data.read_exact_at(&mut buf, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
