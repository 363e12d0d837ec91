//! `compare`: are two images' guest contents equal (qemu-img compare semantics: a larger image
//! may differ in size when its extra part reads as zeros, unless strict).

use rayon::prelude::*;
use vmedia_io::Progress;

use crate::error::Result;
use crate::image::{chain_data_status, BlockKind, DiskImage};

/// Bytes compared per parallel piece.
const CHUNK: u64 = 4 << 20;
/// Pieces compared at once before looking for the first mismatch.
const CHUNKS_PER_ROUND: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOutcome {
    Identical,
    /// First differing byte, rounded down to its 512-byte sector (as qemu-img reports).
    ContentMismatch(u64),
    /// Strict mode: the sizes differ.
    SizeMismatch,
    /// Strict mode: one image allocates a range the other does not.
    StatusMismatch(u64),
}

/// True when some layer of the chain allocates `offset` (data or zero cluster); the length of
/// the run with that answer.
fn allocated(img: &dyn DiskImage, offset: u64, len: u64) -> Result<(u64, bool)> {
    let s = img.block_status(offset, len)?;
    if s.kind != BlockKind::Unallocated {
        return Ok((s.len, true));
    }
    match img.backing() {
        Some(b) if offset < b.virtual_size() => {
            allocated(b, offset, s.len.min(b.virtual_size() - offset))
        }
        _ => Ok((s.len, false)),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Reads both ranges and finds the first differing byte.
fn compare_range(
    a: &dyn DiskImage,
    b: &dyn DiskImage,
    start: u64,
    end: u64,
) -> Result<Option<u64>> {
    let len = end - start;
    let (la, da) = chain_data_status(a, start, len)?;
    let (lb, db) = chain_data_status(b, start, len)?;
    if !da && !db && la >= len && lb >= len {
        return Ok(None);
    }
    let mut ba = vec![0u8; len as usize];
    let mut bb = vec![0u8; len as usize];
    a.read_at(&mut ba, start)?;
    b.read_at(&mut bb, start)?;
    Ok(first_difference(&ba, &bb).map(|i| start + i as u64))
}

/// The first non-zero byte of `img` in `[start, end)`.
fn first_nonzero(img: &dyn DiskImage, start: u64, end: u64) -> Result<Option<u64>> {
    let mut pos = start;
    let mut buf = Vec::new();
    while pos < end {
        let (len, data) = chain_data_status(img, pos, end - pos)?;
        if data {
            let n = len.min(CHUNK);
            buf.resize(n as usize, 0);
            img.read_at(&mut buf, pos)?;
            if let Some(i) = buf.iter().position(|&x| x != 0) {
                return Ok(Some(pos + i as u64));
            }
            pos += n;
        } else {
            pos += len;
        }
    }
    Ok(None)
}

pub fn compare(
    a: &dyn DiskImage,
    b: &dyn DiskImage,
    strict: bool,
    progress: &dyn Progress,
) -> Result<CompareOutcome> {
    let _span = tracing::info_span!(
        "compare",
        a = %a.path().display(),
        b = %b.path().display(),
        strict
    )
    .entered();
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    if strict && sa != sb {
        return Ok(CompareOutcome::SizeMismatch);
    }
    let common = sa.min(sb);
    progress.set_total(sa.max(sb));
    if strict {
        let mut pos = 0u64;
        while pos < common {
            let (la, aa) = allocated(a, pos, common - pos)?;
            let (lb, ab) = allocated(b, pos, common - pos)?;
            if aa != ab {
                return Ok(CompareOutcome::StatusMismatch(pos));
            }
            pos += la.min(lb).max(1);
        }
    }
    let mut pos = 0u64;
    while pos < common {
        let round_end = (pos + CHUNK * CHUNKS_PER_ROUND).min(common);
        let starts: Vec<u64> = (pos..round_end).step_by(CHUNK as usize).collect();
        let found = starts
            .par_iter()
            .map(|&s| compare_range(a, b, s, (s + CHUNK).min(round_end)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .min();
        if let Some(at) = found {
            return Ok(CompareOutcome::ContentMismatch(at / 512 * 512));
        }
        progress.advance(round_end - pos);
        pos = round_end;
    }
    let larger: &dyn DiskImage = if sa > sb { a } else { b };
    if let Some(at) = first_nonzero(larger, common, sa.max(sb))? {
        return Ok(CompareOutcome::ContentMismatch(at / 512 * 512));
    }
    Ok(CompareOutcome::Identical)
}
