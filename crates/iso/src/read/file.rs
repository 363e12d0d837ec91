//! `FileReader`: a file's bytes inside the image as a `ReadAt` (multi-extent files joined,
//! zisofs files decompressed block by block), cheap to clone and safe to share between threads.

use std::io;
use std::sync::{Arc, Mutex};

use vmedia_io::ReadAt;

use super::error::ReadError;
use super::susp::ZisofsInfo;
use super::Source;

/// zisofs files start with this magic (mkzftree's format).
const ZISOFS_MAGIC: [u8; 8] = [0x37, 0xE4, 0x53, 0x96, 0xC9, 0xDB, 0xD6, 0x07];
/// Block sizes allowed by the zisofs format: 32, 64 and 128 KiB.
const ZISOFS_BLOCK_LOG2: std::ops::RangeInclusive<u8> = 15..=17;

/// One contiguous run of a file inside the image.
#[derive(Debug, Clone, Copy)]
struct Piece {
    file_offset: u64,
    image_offset: u64,
    len: u64,
}

/// The stored bytes of a file: its extents in order.
#[derive(Clone)]
struct Stored {
    source: Arc<dyn ReadAt>,
    pieces: Arc<[Piece]>,
    size: u64,
}

impl Stored {
    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
        let mut total = 0usize;
        // First piece whose end is past `offset`.
        let mut index = self
            .pieces
            .partition_point(|p| p.file_offset + p.len <= offset);
        while !buf.is_empty() && offset < self.size {
            let Some(piece) = self.pieces.get(index) else {
                break;
            };
            let within = offset - piece.file_offset;
            let n = (piece.len - within).min(buf.len() as u64) as usize;
            self.source
                .read_exact_at(&mut buf[..n], piece.image_offset + within)?;
            total += n;
            offset += n as u64;
            buf = &mut buf[n..];
            index += 1;
        }
        Ok(total)
    }
}

struct Zisofs {
    stored: Stored,
    block_size: u64,
    size: u64,
    /// Block pointers: block i is stored at [pointers[i], pointers[i + 1]).
    pointers: Vec<u32>,
    /// The last decompressed block, for sequential readers asking for less than a block.
    cache: Mutex<Option<(usize, Arc<Vec<u8>>)>>,
}

impl Zisofs {
    fn open(stored: Stored, info: ZisofsInfo, path: &str) -> Result<Zisofs, ReadError> {
        let bad = |problem: String| {
            ReadError::corrupt(
                stored.pieces.first().map_or(0, |p| p.image_offset),
                "zisofs header",
                format!("{path}: {problem}"),
            )
        };
        let mut header = [0u8; 16];
        if stored.size < 16 {
            return Err(bad(format!(
                "stored size {} is smaller than the 16-byte header",
                stored.size
            )));
        }
        stored
            .read_at(&mut header, 0)
            .map_err(|e| ReadError::io("zisofs header", 0, e))?;
        if header[..8] != ZISOFS_MAGIC {
            return Err(bad("magic number missing".into()));
        }
        // The 16-byte header was read whole, so the field lies inside it.
        let size = u64::from(vmedia_io::bytes::le32(&header, 8).unwrap_or(0));
        let header_size = u64::from(header[12]) * 4;
        let block_log2 = header[13];
        if !ZISOFS_BLOCK_LOG2.contains(&block_log2) {
            return Err(bad(format!("block size 2^{block_log2} is not 2^15..2^17")));
        }
        if size != u64::from(info.uncompressed_size) {
            return Err(bad(format!(
                "header size {size} differs from the ZF field's {}",
                info.uncompressed_size
            )));
        }
        let block_size = 1u64 << block_log2;
        let blocks = size.div_ceil(block_size);
        let table_bytes = (blocks + 1) * 4;
        // The pointer table lies inside the stored bytes, so its size is bounded by them.
        if header_size + table_bytes > stored.size {
            return Err(bad(format!(
                "block table of {blocks} blocks runs past the stored data"
            )));
        }
        let mut table = vec![0u8; table_bytes as usize];
        stored.read_exact(&mut table, header_size)?;
        let pointers: Vec<u32> = table
            .chunks_exact(4)
            .filter_map(|c| vmedia_io::bytes::le32(c, 0))
            .collect();
        for w in pointers.windows(2) {
            if w[1] < w[0] || u64::from(w[1]) > stored.size {
                return Err(bad(format!(
                    "block pointers {} -> {} out of order or past the data",
                    w[0], w[1]
                )));
            }
            // A compressed block larger than twice the block is not something zlib produces.
            if u64::from(w[1] - w[0]) > 2 * block_size + 64 {
                return Err(bad(format!("compressed block of {} bytes", w[1] - w[0])));
            }
        }
        Ok(Zisofs {
            stored,
            block_size,
            size,
            pointers,
            cache: Mutex::new(None),
        })
    }

    fn block(&self, index: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Ok(guard) = self.cache.lock() {
            if let Some((i, data)) = guard.as_ref() {
                if *i == index {
                    return Ok(data.clone());
                }
            }
        }
        let start = u64::from(self.pointers[index]);
        let end = u64::from(self.pointers[index + 1]);
        let expected = (self.size - index as u64 * self.block_size).min(self.block_size) as usize;
        let mut out = vec![0u8; expected];
        if end > start {
            let mut compressed = vec![0u8; (end - start) as usize];
            self.stored
                .read_exact(&mut compressed, start)
                .map_err(io::Error::from)?;
            let mut inflater = flate2::Decompress::new(true);
            inflater
                .decompress(&compressed, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("zisofs block {index}: {e}"),
                    )
                })?;
            if inflater.total_out() as usize != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "zisofs block {index} inflates to {} bytes, not {expected}",
                        inflater.total_out()
                    ),
                ));
            }
        }
        let out = Arc::new(out);
        if let Ok(mut guard) = self.cache.lock() {
            *guard = Some((index, out.clone()));
        }
        Ok(out)
    }

    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
        let mut total = 0;
        while !buf.is_empty() && offset < self.size {
            let index = (offset / self.block_size) as usize;
            let block = self.block(index)?;
            let within = (offset % self.block_size) as usize;
            let n = (block.len() - within).min(buf.len());
            buf[..n].copy_from_slice(&block[within..within + n]);
            total += n;
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(total)
    }
}

impl Stored {
    fn read_exact(&self, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
        let n = self
            .read_at(buf, offset)
            .map_err(|e| ReadError::io("file data", offset, e))?;
        if n != buf.len() {
            return Err(ReadError::corrupt(
                offset,
                "file data",
                "shorter than its table says",
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Inner {
    Stored(Stored),
    Zisofs(Arc<Zisofs>),
}

/// The contents of one file of the image. Implements `ReadAt`; clones share caches.
#[derive(Clone)]
pub struct FileReader {
    inner: Inner,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("size", &self.len())
            .field("zisofs", &self.is_zisofs())
            .finish()
    }
}

impl FileReader {
    /// `extents` are (byte offset in the image, length); checked by the caller against the image.
    pub(crate) fn new(
        source: &Source,
        extents: &[(u64, u64)],
        zisofs: Option<ZisofsInfo>,
        path: &str,
    ) -> Result<FileReader, ReadError> {
        let mut pieces = Vec::with_capacity(extents.len());
        let mut file_offset = 0u64;
        for &(image_offset, len) in extents {
            if len == 0 {
                continue;
            }
            pieces.push(Piece {
                file_offset,
                image_offset,
                len,
            });
            file_offset = file_offset.checked_add(len).ok_or_else(|| {
                ReadError::corrupt(
                    image_offset,
                    "extent length",
                    format!("{path}: total size overflows"),
                )
            })?;
        }
        let stored = Stored {
            source: source.inner.clone(),
            pieces: pieces.into(),
            size: file_offset,
        };
        let inner = match zisofs {
            Some(info) => Inner::Zisofs(Arc::new(Zisofs::open(stored, info, path)?)),
            None => Inner::Stored(stored),
        };
        Ok(FileReader { inner })
    }

    /// The file size as seen by the user (uncompressed for zisofs files).
    pub fn len(&self) -> u64 {
        match &self.inner {
            Inner::Stored(s) => s.size,
            Inner::Zisofs(z) => z.size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether reads decompress zisofs blocks.
    pub fn is_zisofs(&self) -> bool {
        matches!(self.inner, Inner::Zisofs(_))
    }

    /// The byte ranges (image offset, length) holding the file when stored uncompressed, so
    /// callers may copy straight from the image file (`copy_file_range`); `None` for zisofs.
    pub fn image_ranges(&self) -> Option<Vec<(u64, u64)>> {
        match &self.inner {
            Inner::Stored(s) => Some(s.pieces.iter().map(|p| (p.image_offset, p.len)).collect()),
            Inner::Zisofs(_) => None,
        }
    }
}

impl ReadAt for FileReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.inner {
            Inner::Stored(s) => s.read_at(buf, offset),
            Inner::Zisofs(z) => z.read_at(buf, offset),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len())
    }
}
