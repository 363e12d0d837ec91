//! Content-defined chunking of a stream in large batches, with the cut points of
//! `fastcdc::v2020::StreamCDC` (so libraries written before keep deduplicating against new
//! adds) but none of its per-chunk work: StreamCDC moves its whole buffer down, zero-fills it
//! and allocates a fresh `Vec` for every chunk, which made the chunker thread the bottleneck of
//! an add whose chunks are all known already.
//!
//! A batch is one large read (`BATCH_BYTES`) cut into chunks in place. The bytes after its last
//! cut (less than one maximal chunk) are carried to the start of the next batch. Batches are
//! shared (`Arc`) by the threads that hash and store them; a fixed set of buffers circulates
//! (a dropped batch hands its buffer back), which bounds memory and keeps the allocator and the
//! page-fault handler out of the loop.

use std::io::{self, Read};
use std::sync::{mpsc, Arc};

use fastcdc::v2020::FastCDC;

use crate::manifest::ChunkingParams;

/// Bytes read per batch: 8 maximal chunks, large enough that reads and thread hand-offs are
/// rare, small enough that a few batches in flight stay well under 100 MiB.
pub const BATCH_BYTES: usize = 8 << 20;
/// Batch buffers in circulation: one being filled, the others being hashed and stored.
pub const BATCH_BUFFERS: usize = 6;

/// One chunk within a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Start within the batch's buffer.
    pub start: usize,
    pub length: usize,
    /// Known to be all zeros (found while cutting); `false` means "not checked".
    pub zero: bool,
}

/// A run of the image cut into chunks.
pub(crate) struct Batch {
    data: Vec<u8>,
    /// Bytes of `data` covered by `chunks` (the carried tail follows).
    covered: usize,
    /// Bytes of `data` read (covered plus the carried tail).
    filled: usize,
    /// Image offset of `data[0]`.
    pub offset: u64,
    pub chunks: Vec<Span>,
    recycle: mpsc::Sender<Vec<u8>>,
}

impl Batch {
    /// The image bytes this batch's chunks cover, in order.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.covered]
    }

    /// The bytes of one of its chunks.
    pub fn chunk(&self, span: &Span) -> &[u8] {
        &self.data[span.start..span.start + span.length]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The chunker may be gone (an error ended the add): then the buffer is simply freed.
        let _ = self.recycle.send(std::mem::take(&mut self.data));
    }
}

/// Cuts a stream into batches of chunks.
pub(crate) struct BatchChunker<'r> {
    reader: &'r mut (dyn Read + Send),
    params: ChunkingParams,
    free: mpsc::Receiver<Vec<u8>>,
    recycle: mpsc::Sender<Vec<u8>>,
    /// The previous batch, whose tail starts the next one.
    previous: Option<Arc<Batch>>,
    /// Image offset of the next batch.
    offset: u64,
    eof: bool,
    /// Where FastCDC cuts a maximal window of zeros (a pure function of the window, computed
    /// once): holes are cut without running the rolling hash over them.
    zero_cut: usize,
}

impl<'r> BatchChunker<'r> {
    /// `buffers` buffers of `batch_bytes` each (at least two maximal chunks, raised if less).
    pub fn new(
        reader: &'r mut (dyn Read + Send),
        params: ChunkingParams,
        batch_bytes: usize,
        buffers: usize,
    ) -> BatchChunker<'r> {
        let max = params.max as usize;
        let batch_bytes = batch_bytes.max(2 * max);
        let (recycle, free) = mpsc::channel();
        for _ in 0..buffers.max(2) {
            let _ = recycle.send(vec![0u8; batch_bytes]);
        }
        let zeros = vec![0u8; max];
        let zero_cut = FastCDC::new(&zeros, params.min, params.avg, params.max)
            .cut(0, max)
            .1;
        BatchChunker {
            reader,
            params,
            free,
            recycle,
            previous: None,
            offset: 0,
            eof: false,
            zero_cut,
        }
    }

    /// The next batch (it waits for a buffer to come back), `None` after the last one.
    pub fn next_batch(&mut self) -> io::Result<Option<Arc<Batch>>> {
        let max = self.params.max as usize;
        let mut data = match self.free.recv() {
            Ok(data) => data,
            Err(_) => return Err(io::Error::other("the chunker lost its buffers")),
        };
        let mut filled = 0usize;
        if let Some(previous) = self.previous.take() {
            let tail = &previous.data[previous.covered..previous.filled];
            data[..tail.len()].copy_from_slice(tail);
            filled = tail.len();
        }
        while !self.eof && filled < data.len() {
            match self.reader.read(&mut data[filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            let _ = self.recycle.send(data);
            return Ok(None);
        }
        let cdc = FastCDC::new(
            &data[..filled],
            self.params.min,
            self.params.avg,
            self.params.max,
        );
        let mut chunks = Vec::with_capacity(filled / self.params.min as usize + 1);
        let mut position = 0usize;
        // Short of the end of the stream, only windows of a full maximal chunk are cut: that is
        // what StreamCDC sees, so the cuts are the same.
        while position < filled && (self.eof || filled - position >= max) {
            let left = filled - position;
            let (end, zero) = if left >= max && is_all_zero(&data[position..position + max]) {
                (position + self.zero_cut, true)
            } else {
                (cdc.cut(position, left).1, false)
            };
            if end <= position {
                break;
            }
            chunks.push(Span {
                start: position,
                length: end - position,
                zero,
            });
            position = end;
        }
        let batch = Arc::new(Batch {
            data,
            covered: position,
            filled,
            offset: self.offset,
            chunks,
            recycle: self.recycle.clone(),
        });
        self.offset += position as u64;
        if position < filled {
            self.previous = Some(Arc::clone(&batch));
        }
        Ok(Some(batch))
    }
}

/// Bytes OR-ed together per step of the zero test: the compiler turns a fixed-size fold into
/// vector instructions, where a byte-by-byte `all` with its early exit cannot be.
const ZERO_TEST_BLOCK: usize = 256;

/// True when every byte is zero. Holes and zero padding make whole chunks of zeros, and those
/// are scanned to the end, so this runs at memory speed rather than a byte per step.
pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(ZERO_TEST_BLOCK);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::CHUNKING;

    /// A reader handing out at most `step` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pseudo_random(length: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn stream_cuts(data: &[u8]) -> Vec<(u64, usize)> {
        fastcdc::v2020::StreamCDC::new(data, CHUNKING.min, CHUNKING.avg, CHUNKING.max)
            .map(|c| {
                let c = c.unwrap();
                (c.offset, c.length)
            })
            .collect()
    }

    fn batch_cuts(data: &[u8], step: usize, batch_bytes: usize) -> Vec<(u64, usize)> {
        let mut reader = Trickle { data, step };
        let mut chunker = BatchChunker::new(&mut reader, CHUNKING, batch_bytes, 3);
        let mut cuts = Vec::new();
        let mut next_offset = 0u64;
        while let Some(batch) = chunker.next_batch().unwrap() {
            assert_eq!(batch.offset, next_offset, "batches are contiguous");
            assert_eq!(
                batch.bytes(),
                &data[batch.offset as usize..][..batch.bytes().len()]
            );
            for span in &batch.chunks {
                let at = batch.offset + span.start as u64;
                let bytes = batch.chunk(span);
                assert_eq!(bytes, &data[at as usize..at as usize + span.length]);
                if span.zero {
                    assert!(is_all_zero(bytes), "a chunk flagged zero holds data");
                }
                cuts.push((at, span.length));
            }
            next_offset += batch.bytes().len() as u64;
        }
        cuts
    }

    #[test]
    fn batched_cuts_are_the_cuts_of_stream_cdc() {
        // Data, a hole, data again, a short zero run and a tail that is not a whole chunk.
        let mut data = pseudo_random(5 << 20, 7);
        data.extend(std::iter::repeat_n(0u8, (3 << 20) + 12345));
        data.extend(pseudo_random(4 << 20, 11));
        data.extend(std::iter::repeat_n(0u8, 70_000));
        data.extend(pseudo_random(300_001, 13));
        let expected = stream_cuts(&data);
        for (step, batch_bytes) in [
            (usize::MAX, 2 << 20),
            (usize::MAX, BATCH_BYTES),
            (65_537, 3 << 20),
            (4096, 2 << 20),
        ] {
            assert_eq!(
                batch_cuts(&data, step, batch_bytes),
                expected,
                "reads of {step}, batches of {batch_bytes}"
            );
        }
    }

    #[test]
    fn small_and_empty_streams_cut_like_stream_cdc() {
        for length in [0usize, 1, 1000, 64 << 10, (1 << 20) + 1, 2 << 20] {
            let data = pseudo_random(length, length as u64);
            assert_eq!(
                batch_cuts(&data, usize::MAX, 2 << 20),
                stream_cuts(&data),
                "{length} bytes"
            );
        }
    }

    #[test]
    fn the_block_wise_zero_test_finds_a_single_set_byte_anywhere() {
        for length in [0usize, 1, 255, 256, 257, 1000, 4096] {
            let zeros = vec![0u8; length];
            assert!(is_all_zero(&zeros), "{length} zeros");
            for at in [0, length / 2, length.saturating_sub(1)] {
                if at >= length {
                    continue;
                }
                let mut one = zeros.clone();
                one[at] = 0x80;
                assert!(!is_all_zero(&one), "byte {at} of {length} set");
            }
        }
    }
}
