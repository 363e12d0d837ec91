//! The convert engine: reads one or more source images (concatenated), skips what is known or
//! found to be zero, compresses clusters on worker threads when the output asks for it, and
//! feeds the writer in guest order while the next batch is being read.

use std::sync::mpsc;
use std::sync::Arc;

use rayon::prelude::*;
use vmedia_io::Progress;

use crate::error::{DiskError, Result};
use crate::image::{chain_data_status, BlockKind, ClusterCompressor, DiskImage, ImageWriter};

/// Guest bytes handled per batch: large enough to amortize thread hand-off, small enough that
/// two batches in flight stay a few tens of MiB.
pub const BATCH_BYTES: u64 = 16 << 20;
/// Batches computed ahead of the writer.
const PIPELINE_DEPTH: usize = 2;
/// Longest run of uncompressed units read with one pread and written without copying: per-cluster
/// reads (64 KiB) cost a syscall, an allocation and a copy each and made uncompressed
/// conversions 2.5-3.5x slower than qemu-img.
const SPAN_BYTES: u64 = 4 << 20;
/// Span buffers kept for reuse: fresh multi-MiB allocations are new mmaps whose page faults
/// cost more system time than the copy they replace.
const SPAN_POOL: usize = 16;

/// Written span buffers, handed back to the readers.
type BufferPool = std::sync::Mutex<Vec<Vec<u8>>>;

/// Options of `convert` that affect the data path.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// -S: zero runs at least this long (and aligned to it) become holes/unallocated; 0 writes
    /// every byte.
    pub sparse_size: u64,
    /// Worker threads (-m); 0 = all cores.
    pub threads: usize,
    /// The output has a backing file (-B): ranges not allocated in the sources' top layer are
    /// left unallocated so they read through to it.
    pub target_has_backing: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            sparse_size: 4096,
            threads: 0,
            target_has_backing: false,
        }
    }
}

/// Sources seen as one guest disk, one after another.
pub struct Concat<'a> {
    parts: Vec<(u64, &'a dyn DiskImage)>,
    size: u64,
    /// The output's backing file when units that read the same there are left unallocated
    /// (`skip_units_equal_to`).
    delta_base: Option<&'a dyn DiskImage>,
}

impl<'a> Concat<'a> {
    pub fn new(images: &'a [Box<dyn DiskImage>]) -> Result<Concat<'a>> {
        let mut parts = Vec::with_capacity(images.len());
        let mut size = 0u64;
        for img in images {
            parts.push((size, img.as_ref()));
            size = size
                .checked_add(img.virtual_size())
                .ok_or_else(|| DiskError::OutOfRange {
                    path: img.path().to_path_buf(),
                    offset: size,
                    len: img.virtual_size(),
                    size: u64::MAX,
                })?;
        }
        Ok(Concat {
            parts,
            size,
            delta_base: None,
        })
    }

    /// Converting into a differencing image over `base` (-B): every unit whose content equals
    /// what `base` reads there (zeros over zeros, or the same data) is skipped, so the output
    /// leaves it unallocated and reads it through its parent. Costs one read of `base` per
    /// unit the source allocates; the four-MiB read spans are off while it is set.
    pub fn skip_units_equal_to(&mut self, base: &'a dyn DiskImage) {
        self.delta_base = Some(base);
    }

    /// True when `base` reads exactly `buf` at `offset` (zeros past its end).
    fn base_reads_the_same(base: &dyn DiskImage, buf: &[u8], offset: u64) -> Result<bool> {
        let len = buf.len() as u64;
        let base_size = base.virtual_size();
        let inside = base_size.saturating_sub(offset).min(len);
        if inside < len && !is_zero(&buf[inside as usize..]) {
            return Ok(false);
        }
        if inside == 0 {
            return Ok(true);
        }
        // A range the base chain does not hold reads as zeros: no read needed.
        let mut pos = offset;
        let mut holds_data = false;
        while pos < offset + inside {
            let (n, data) = chain_data_status(base, pos, offset + inside - pos)?;
            if data {
                holds_data = true;
                break;
            }
            pos += n.max(1);
        }
        let head = &buf[..inside as usize];
        if !holds_data {
            return Ok(is_zero(head));
        }
        let mut theirs = vec![0u8; inside as usize];
        base.read_at(&mut theirs, offset)?;
        Ok(theirs == head)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Extends the disk with zeros to `size` (a target profile rounded the output size up);
    /// a smaller `size` is refused rather than silently cutting the sources.
    pub fn pad_to(&mut self, size: u64) -> Result<()> {
        if size < self.size {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: size.to_string(),
                reason: format!("smaller than the sources ({} bytes)", self.size),
            });
        }
        self.size = size;
        Ok(())
    }

    fn part_at(&self, offset: u64) -> Option<(u64, &'a dyn DiskImage)> {
        let i = self.parts.partition_point(|(start, _)| *start <= offset);
        let (start, img) = *self.parts.get(i.checked_sub(1)?)?;
        (offset < start + img.virtual_size()).then_some((start, img))
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let Some((start, img)) = self.part_at(pos) else {
                buf[done..].fill(0);
                return Ok(());
            };
            let n = ((start + img.virtual_size() - pos) as usize).min(buf.len() - done);
            img.read_at(&mut buf[done..done + n], pos - start)?;
            done += n;
        }
        Ok(())
    }

    /// (len, kind): Data = must be read, Zero = reads as zero, Unallocated = not in the top
    /// layer (only reported when `top_only`).
    fn status(&self, offset: u64, len: u64, top_only: bool) -> Result<(u64, BlockKind)> {
        let Some((start, img)) = self.part_at(offset) else {
            return Ok((len, BlockKind::Zero));
        };
        let local = offset - start;
        let room = (img.virtual_size() - local).min(len);
        if top_only {
            let s = img.block_status(local, room)?;
            return Ok((s.len, s.kind));
        }
        let (n, data) = chain_data_status(img, local, room)?;
        Ok((
            n,
            if data {
                BlockKind::Data
            } else {
                BlockKind::Zero
            },
        ))
    }
}

/// One unit of output.
enum Piece {
    Data(Vec<u8>),
    Compressed(Vec<u8>),
    Zero,
    Skip,
    /// Several consecutive units read at once; `zero[i]` tells unit i read as zero.
    Span(Vec<u8>, Vec<bool>),
}

fn is_zero(buf: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe { buf.align_to::<u128>() };
    prefix.iter().all(|&b| b == 0)
        && suffix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
}

/// Copies `source` into `writer` and finishes it.
pub fn convert(
    source: &Concat<'_>,
    mut writer: Box<dyn ImageWriter>,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let size = source.size();
    let cluster = writer.cluster_size();
    let _span = tracing::info_span!(
        "convert",
        size,
        cluster,
        compress = writer.compressor().is_some()
    )
    .entered();
    let compressor: Option<Arc<dyn ClusterCompressor>> = writer.compressor();
    // The unit of decisions: a cluster, or the -S size when that is larger.
    let unit = if compressor.is_some() || opts.sparse_size <= cluster {
        cluster
    } else {
        opts.sparse_size.div_ceil(cluster) * cluster
    };
    let batch = (BATCH_BYTES / unit).max(1) * unit;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| DiskError::InvalidOption {
            key: "-m".into(),
            value: threads.to_string(),
            reason: e.to_string(),
        })?;
    progress.set_total(size);
    let (tx, rx) = mpsc::sync_channel::<Result<(u64, Vec<Piece>)>>(PIPELINE_DEPTH);
    let detect_zero = opts.sparse_size > 0;
    let buffers: BufferPool = std::sync::Mutex::new(Vec::new());
    let buffers = &buffers;
    std::thread::scope(|scope| -> Result<()> {
        let pool = &pool;
        let compressor = &compressor;
        let producer = scope.spawn(move || {
            let mut offset = 0u64;
            while offset < size {
                let end = (offset + batch).min(size);
                let result = plan_batch(source, offset, end, unit, opts.target_has_backing)
                    .and_then(|plan| {
                        let spans = compressor.is_none() && source.delta_base.is_none();
                        let jobs = group_spans(&plan, unit, end, spans);
                        let work = |(start, units, need): (u64, u64, Option<BlockKind>)| {
                            if units > 1 {
                                return read_span(
                                    source,
                                    start,
                                    (start + units * unit).min(end),
                                    unit,
                                    detect_zero,
                                    buffers,
                                );
                            }
                            make_piece(
                                source,
                                start,
                                (start + unit).min(end),
                                unit,
                                need,
                                detect_zero,
                                compressor.as_deref(),
                            )
                        };
                        if compressor.is_none() {
                            // Uncompressed: large reads on this thread. Handing 4 MiB reads to
                            // the pool made its idle workers spin (sched_yield) on the 2 cores
                            // the writer needs.
                            jobs.into_iter().map(work).collect::<Result<Vec<Piece>>>()
                        } else {
                            pool.install(|| {
                                jobs.into_par_iter()
                                    .map(work)
                                    .collect::<Result<Vec<Piece>>>()
                            })
                        }
                    });
                let failed = result.is_err();
                if tx.send(result.map(|p| (offset, p))).is_err() || failed {
                    return;
                }
                offset = end;
            }
        });
        let rx = rx;
        let writer_result = write_batches(&rx, writer.as_mut(), size, unit, progress, buffers);
        // Dropping the receiver makes a producer blocked on `send` give up.
        drop(rx);
        let produced = producer.join();
        let written = writer_result?;
        if produced.is_err() || written != size {
            // A worker panicked or stopped early: never finish a partial image.
            return Err(DiskError::Io {
                path: std::path::PathBuf::from("<convert>"),
                offset: written,
                source: std::io::Error::other(
                    "the conversion stopped before the end of the source (a worker thread failed)",
                ),
            });
        }
        Ok(())
    })?;
    writer.finish()
}

/// Consumes computed batches in order and hands them to the writer.
fn write_batches(
    rx: &mpsc::Receiver<Result<(u64, Vec<Piece>)>>,
    writer: &mut dyn ImageWriter,
    size: u64,
    unit: u64,
    progress: &dyn Progress,
    buffers: &BufferPool,
) -> Result<u64> {
    let mut written = 0u64;
    for message in rx.iter() {
        let (batch_start, pieces) = message?;
        let mut pending: Option<(u64, Vec<u8>)> = None;
        let mut pos = batch_start;
        for piece in pieces {
            if let Piece::Span(buf, zero) = piece {
                if let Some((at, b)) = pending.take() {
                    writer.write_at(at, &b)?;
                }
                write_span(writer, pos, &buf, &zero, unit)?;
                pos += buf.len() as u64;
                if let Ok(mut pool) = buffers.lock() {
                    if pool.len() < SPAN_POOL {
                        pool.push(buf);
                    }
                }
                continue;
            }
            let len = unit.min(size - pos);
            match piece {
                Piece::Data(bytes) => match &mut pending {
                    Some((_, buf)) if buf.len() < (8 << 20) => buf.extend_from_slice(&bytes),
                    _ => {
                        if let Some((at, buf)) = pending.take() {
                            writer.write_at(at, &buf)?;
                        }
                        pending = Some((pos, bytes));
                    }
                },
                other => {
                    if let Some((at, buf)) = pending.take() {
                        writer.write_at(at, &buf)?;
                    }
                    match other {
                        Piece::Compressed(bytes) => writer.write_compressed(pos, &bytes)?,
                        Piece::Zero => writer.write_zeroes(pos, len)?,
                        Piece::Data(_) | Piece::Span(..) | Piece::Skip => {}
                    }
                }
            }
            pos += len;
        }
        if let Some((at, buf)) = pending.take() {
            writer.write_at(at, &buf)?;
        }
        progress.advance(pos - batch_start);
        written = pos;
    }
    Ok(written)
}

/// Writes the non-zero runs of a span straight from its buffer, and its zero units as zeroes.
fn write_span(
    writer: &mut dyn ImageWriter,
    start: u64,
    buf: &[u8],
    zero: &[bool],
    unit: u64,
) -> Result<()> {
    let unit = unit as usize;
    let mut i = 0usize;
    while i < zero.len() {
        let mut j = i + 1;
        while j < zero.len() && zero[j] == zero[i] {
            j += 1;
        }
        let a = i * unit;
        let b = (j * unit).min(buf.len());
        if zero[i] {
            writer.write_zeroes(start + a as u64, (b - a) as u64)?;
        } else {
            writer.write_at(start + a as u64, &buf[a..b])?;
        }
        i = j;
    }
    Ok(())
}

/// Groups the plan into jobs (start, units, known): runs of units that must be read become one
/// job of up to `SPAN_BYTES` when `spans` (no compression); everything else stays one unit.
fn group_spans(
    plan: &[(u64, Option<BlockKind>)],
    unit: u64,
    end: u64,
    spans: bool,
) -> Vec<(u64, u64, Option<BlockKind>)> {
    let max_units = (SPAN_BYTES / unit).max(1);
    let mut jobs: Vec<(u64, u64, Option<BlockKind>)> = Vec::with_capacity(plan.len());
    for &(start, known) in plan {
        match jobs.last_mut() {
            Some(last)
                if spans
                    && known.is_none()
                    && last.2.is_none()
                    && last.1 < max_units
                    && last.0 + last.1 * unit == start
                    && start < end =>
            {
                last.1 += 1
            }
            _ => jobs.push((start, 1, known)),
        }
    }
    jobs
}

/// Reads `[start, end)` with one read and marks which units read as zero.
fn read_span(
    source: &Concat<'_>,
    start: u64,
    end: u64,
    unit: u64,
    detect_zero: bool,
    buffers: &BufferPool,
) -> Result<Piece> {
    let mut buf = buffers
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_default();
    // Contents are overwritten by the read; resizing only zero-fills a grown tail.
    buf.resize((end - start) as usize, 0);
    source.read_at(&mut buf, start)?;
    let zero = buf
        .chunks(unit as usize)
        .map(|c| detect_zero && is_zero(c))
        .collect();
    Ok(Piece::Span(buf, zero))
}

/// For each unit of `[start, end)`: (unit start, what to do) where what is Some(kind) when the
/// unit need not be read.
fn plan_batch(
    source: &Concat<'_>,
    start: u64,
    end: u64,
    unit: u64,
    top_only: bool,
) -> Result<Vec<(u64, Option<BlockKind>)>> {
    let mut plan = Vec::with_capacity(((end - start) / unit + 1) as usize);
    let mut runs: Vec<(u64, u64, BlockKind)> = Vec::new();
    let mut pos = start;
    while pos < end {
        let (len, kind) = source.status(pos, end - pos, top_only)?;
        let len = len.max(1);
        match runs.last_mut() {
            Some(last) if last.2 == kind && last.1 == pos => last.1 += len,
            _ => runs.push((pos, pos + len, kind)),
        }
        pos += len;
    }
    let mut run_index = 0usize;
    let mut u = start;
    while u < end {
        let u_end = (u + unit).min(end);
        while runs[run_index].1 <= u {
            run_index += 1;
        }
        let (_, r_end, kind) = runs[run_index];
        let known = if r_end >= u_end && kind != BlockKind::Data {
            Some(kind)
        } else {
            None
        };
        plan.push((u, known));
        u = u_end;
    }
    Ok(plan)
}

fn make_piece(
    source: &Concat<'_>,
    start: u64,
    end: u64,
    unit: u64,
    known: Option<BlockKind>,
    detect_zero: bool,
    compressor: Option<&dyn ClusterCompressor>,
) -> Result<Piece> {
    match known {
        Some(BlockKind::Unallocated) => return Ok(Piece::Skip),
        Some(_) if detect_zero && source.delta_base.is_none() => return Ok(Piece::Zero),
        _ => {}
    }
    let mut buf = vec![0u8; (end - start) as usize];
    if known.is_none() {
        source.read_at(&mut buf, start)?;
    }
    if let Some(base) = source.delta_base {
        // The -B delta decision: what the parent already reads needs no block of its own.
        if Concat::base_reads_the_same(base, &buf, start)? {
            return Ok(Piece::Skip);
        }
        if known.is_some() && detect_zero {
            return Ok(Piece::Zero);
        }
    }
    if detect_zero && is_zero(&buf) {
        return Ok(Piece::Zero);
    }
    if let Some(c) = compressor {
        // A short last cluster is compressed zero-padded: readers inflate whole clusters.
        let data_len = buf.len();
        buf.resize(unit as usize, 0);
        if let Some(out) = c.compress_cluster(&buf)? {
            return Ok(Piece::Compressed(out));
        }
        buf.truncate(data_len);
    }
    Ok(Piece::Data(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u64 = 64 << 10;

    #[test]
    fn spans_group_consecutive_reads_up_to_the_span_limit() {
        let plan: Vec<(u64, Option<BlockKind>)> = (0..100).map(|i| (i * UNIT, None)).collect();
        let jobs = group_spans(&plan, UNIT, 100 * UNIT, true);
        let per_span = SPAN_BYTES / UNIT;
        assert_eq!(jobs[0], (0, per_span, None));
        assert_eq!(jobs.iter().map(|j| j.1).sum::<u64>(), 100);
        assert!(jobs.iter().all(|j| j.1 <= per_span));
    }

    #[test]
    fn spans_never_cover_known_units() {
        let mut plan: Vec<(u64, Option<BlockKind>)> = (0..6).map(|i| (i * UNIT, None)).collect();
        plan[2].1 = Some(BlockKind::Zero);
        plan[3].1 = Some(BlockKind::Unallocated);
        let jobs = group_spans(&plan, UNIT, 6 * UNIT, true);
        assert_eq!(
            jobs,
            vec![
                (0, 2, None),
                (2 * UNIT, 1, Some(BlockKind::Zero)),
                (3 * UNIT, 1, Some(BlockKind::Unallocated)),
                (4 * UNIT, 2, None)
            ]
        );
    }

    #[test]
    fn spans_are_off_when_compressing() {
        let plan: Vec<(u64, Option<BlockKind>)> = (0..4).map(|i| (i * UNIT, None)).collect();
        assert!(group_spans(&plan, UNIT, 4 * UNIT, false)
            .iter()
            .all(|j| j.1 == 1));
    }
}
