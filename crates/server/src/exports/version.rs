//! A library version's bytes as a read-only export; its extents come from the manifest
//! (runs of zeros are not stored: holes that read as zeroes).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use vmedia_io::ReadAt;
use vmedia_library::{ReadPiece, VersionReader};

use crate::export::{BlockSizes, Export, Extent};

/// Largest request the front ends should send in one piece.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Most extents one `extents` call returns (NBD clients ask again for the rest).
pub const MAX_EXTENTS: usize = 4096;

pub struct VersionExport {
    name: String,
    reader: VersionReader,
}

impl VersionExport {
    pub fn new(name: String, reader: VersionReader) -> VersionExport {
        VersionExport { name, reader }
    }

    pub fn reader(&self) -> &VersionReader {
        &self.reader
    }
}

impl Export for VersionExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.reader.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_REQUEST_BYTES,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reader.read_exact_at(buf, offset)
    }

    fn read_cached(&self, offset: u64, length: usize) -> Option<Vec<Bytes>> {
        Some(to_bytes(self.reader.cached_pieces(offset, length)?))
    }

    fn read_bytes(&self, offset: u64, length: usize) -> io::Result<Vec<Bytes>> {
        Ok(to_bytes(self.reader.read_pieces(offset, length)?))
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        version_extents(self.reader.entries(), offset, length)
    }
}

/// Zeroes handed out for runs the image does not store (shared, never copied).
static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// A decoded chunk as the owner of `Bytes` slices: the cache's `Arc` keeps it alive while a
/// reply that points into it is being written.
struct SharedChunk(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedChunk {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Read pieces as `Bytes` slices of the cached chunks, without copying.
pub(crate) fn to_bytes(pieces: Vec<ReadPiece>) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece.data {
            Some(data) => {
                let whole = Bytes::from_owner(SharedChunk(data));
                out.push(whole.slice(piece.start..piece.start + piece.length));
            }
            None => {
                let mut left = piece.length;
                while left > 0 {
                    let n = left.min(ZEROES.len());
                    out.push(Bytes::from_static(&ZEROES[..n]));
                    left -= n;
                }
            }
        }
    }
    out
}

/// The allocation of `[offset, offset + length)` from a chunk index, adjacent runs of one
/// kind merged, at most `MAX_EXTENTS` runs.
pub(crate) fn version_extents(
    entries: &[vmedia_library::manifest::ChunkEntry],
    offset: u64,
    length: u64,
) -> io::Result<Vec<Extent>> {
    let end = offset.saturating_add(length);
    let mut out: Vec<Extent> = Vec::new();
    let first = entries.partition_point(|e| e.end() <= offset);
    for entry in &entries[first..] {
        if entry.offset >= end {
            break;
        }
        let from = entry.offset.max(offset);
        let to = entry.end().min(end);
        let run = to - from;
        match out.last_mut() {
            Some(last) if last.hole == entry.zero => last.length += run,
            _ => {
                if out.len() == MAX_EXTENTS {
                    break;
                }
                out.push(Extent {
                    length: run,
                    hole: entry.zero,
                    zero: entry.zero,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no chunk covers offset {offset:#x}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmedia_library::manifest::ChunkEntry;

    fn entry(offset: u64, length: u32, zero: bool) -> ChunkEntry {
        ChunkEntry {
            offset,
            length,
            stored_length: if zero { 0 } else { length },
            zero,
            digest: [0; 32],
        }
    }

    #[test]
    fn extents_merge_runs_and_clip_to_the_range() {
        let entries = [
            entry(0, 100, false),
            entry(100, 50, false),
            entry(150, 1000, true),
            entry(1150, 10, false),
        ];
        let got = version_extents(&entries, 20, 1135).unwrap();
        assert_eq!(
            got,
            vec![
                Extent {
                    length: 130,
                    hole: false,
                    zero: false
                },
                Extent {
                    length: 1000,
                    hole: true,
                    zero: true
                },
                Extent {
                    length: 5,
                    hole: false,
                    zero: false
                },
            ]
        );
        assert!(version_extents(&entries, 2000, 10).is_err());
    }
}
