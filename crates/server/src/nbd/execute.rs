//! Runs one validated request against an `Export` (on a blocking thread) and encodes its
//! reply: simple replies without structured replies, otherwise structured chunks with holes
//! sent as OFFSET_HOLE and errors as ERROR chunks carrying the reason.

use std::io;

use bytes::Bytes;
use vmedia_nbd::transmission::{
    block_status, block_status_descriptors, error_chunk, none_chunk, offset_data_header,
    offset_hole, plan_read, simple_reply,
};
use vmedia_nbd::{Extent, NbdError, Request, Session};

use super::nbd_error;
use crate::export::{Export, Op};

/// Zero runs shorter than this are sent as data: an OFFSET_HOLE chunk costs 32 bytes and a
/// client round of bookkeeping, worth it only for runs of a page or more.
const MIN_HOLE: u32 = 4096;
/// CACHE reads its range in pieces of this size so a 4 GiB hint never allocates 4 GiB.
const CACHE_PIECE: u32 = 1 << 20;

/// A reply ready to write (its parts in order, written with one vectored write), and what
/// the metrics need to know about it.
pub(super) struct Executed {
    pub parts: Vec<Bytes>,
    pub moved: u64,
    pub ok: bool,
}

impl Executed {
    fn small(bytes: Vec<u8>, moved: u64, ok: bool) -> Executed {
        Executed {
            parts: vec![Bytes::from(bytes)],
            moved,
            ok,
        }
    }
}

/// The metrics label of a request; `None` for those with no `Op` (CACHE, DISC).
pub(super) fn op_of(request: &Request) -> Option<Op> {
    match request {
        Request::Read { .. } => Some(Op::Read),
        Request::Write { .. } => Some(Op::Write),
        Request::WriteZeroes { .. } => Some(Op::WriteZeroes),
        Request::Trim { .. } => Some(Op::Trim),
        Request::Flush => Some(Op::Flush),
        Request::BlockStatus { .. } => Some(Op::BlockStatus),
        Request::Cache { .. } | Request::Disconnect => None,
    }
}

/// The reply to a request refused before any I/O, or one whose I/O failed.
pub(super) fn error_reply(
    session: &Session,
    cookie: u64,
    error: NbdError,
    message: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    if session.structured_replies {
        error_chunk(&mut out, cookie, error, message, true);
    } else {
        simple_reply(&mut out, cookie, Some(error));
    }
    out
}

fn ok_reply(cookie: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    simple_reply(&mut out, cookie, None);
    out
}

fn finish(session: &Session, cookie: u64, result: io::Result<u64>) -> Executed {
    match result {
        Ok(moved) => Executed::small(ok_reply(cookie), moved, true),
        Err(error) => Executed::small(
            error_reply(session, cookie, nbd_error(&error), &error.to_string()),
            0,
            false,
        ),
    }
}

/// Executes `request` (validated against `session`) and encodes the reply to `cookie`.
/// `payload` is a WRITE's data.
pub(super) fn execute(
    export: &dyn Export,
    session: &Session,
    cookie: u64,
    request: Request,
    payload: &[u8],
) -> Executed {
    match request {
        Request::Read { offset, length, df } => read(export, session, cookie, offset, length, df),
        Request::Write {
            offset,
            length,
            fua,
        } => finish(
            session,
            cookie,
            export
                .write_at(payload, offset, fua)
                .map(|()| u64::from(length)),
        ),
        Request::WriteZeroes {
            offset,
            length,
            fua,
            no_hole: _,
        } => finish(
            session,
            cookie,
            export
                .write_zeroes(offset, u64::from(length), fua)
                .map(|()| u64::from(length)),
        ),
        Request::Trim {
            offset,
            length,
            fua,
        } => {
            let result = export.trim(offset, u64::from(length)).and_then(|()| {
                if fua {
                    export.flush()
                } else {
                    Ok(())
                }
            });
            finish(session, cookie, result.map(|()| u64::from(length)))
        }
        Request::Flush => finish(session, cookie, export.flush().map(|()| 0)),
        Request::Cache { offset, length } => finish(session, cookie, cache(export, offset, length)),
        Request::BlockStatus {
            offset,
            length,
            req_one,
        } => block_status_reply(export, session, cookie, offset, length, req_one),
        // The connection loop ends on DISC; nothing is sent.
        Request::Disconnect => Executed {
            parts: Vec::new(),
            moved: 0,
            ok: true,
        },
    }
}

fn extents(export: &dyn Export, offset: u64, length: u32) -> io::Result<Vec<Extent>> {
    Ok(export
        .extents(offset, u64::from(length))?
        .into_iter()
        .map(|extent| Extent {
            length: extent.length,
            hole: extent.hole,
            zero: extent.zero,
        })
        .collect())
}

/// A READ on a blocking thread: the data pieces come from `read_bytes` (slices of cached
/// chunks where the export has them), holes are never read.
fn read(
    export: &dyn Export,
    session: &Session,
    cookie: u64,
    offset: u64,
    length: u32,
    df: bool,
) -> Executed {
    let pieces = plan(export, session, offset, length, df);
    encode_read(session, cookie, offset, length, &pieces, &mut |at, n| {
        export.read_bytes(at, n)
    })
}

/// A READ answered at once from memory, on the connection's own task (no blocking thread),
/// or `None` when part of it is not cached (the request then goes to `execute`).
pub(super) fn read_now(
    export: &dyn Export,
    session: &Session,
    cookie: u64,
    offset: u64,
    length: u32,
    df: bool,
) -> Option<Executed> {
    let all = export.read_cached(offset, length as usize)?;
    // An export that answers `read_cached` answers `extents` from memory too.
    let pieces = plan(export, session, offset, length, df);
    Some(encode_read(
        session,
        cookie,
        offset,
        length,
        &pieces,
        &mut |at, n| Ok(sub_range(&all, (at - offset) as usize, n)),
    ))
}

/// The structured-reply pieces of a read (data and holes); `None` for a simple reply.
fn plan(
    export: &dyn Export,
    session: &Session,
    offset: u64,
    length: u32,
    df: bool,
) -> Option<Vec<vmedia_nbd::transmission::ReadPiece>> {
    if !session.structured_replies || length == 0 {
        return None;
    }
    // Without DF, zero runs go out as holes; an export that cannot say where they are
    // is read in full (allocation is an optimisation here, never a reason to fail).
    Some(if df || length < 2 * MIN_HOLE {
        // Too short to gain from a hole chunk: skip the allocation lookup.
        plan_read(offset, length, &[], MIN_HOLE)
    } else {
        let extents = extents(export, offset, length).unwrap_or_default();
        plan_read(offset, length, &extents, MIN_HOLE)
    })
}

/// `length` bytes from `start` of the concatenation of `parts`, as slices of them.
fn sub_range(parts: &[Bytes], start: usize, length: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut left = length;
    for part in parts {
        if left == 0 {
            break;
        }
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let n = (part.len() - skip).min(left);
        out.push(part.slice(skip..skip + n));
        skip = 0;
        left -= n;
    }
    out
}

/// Encodes a read's reply; `fetch(offset, length)` gives a data piece's bytes.
fn encode_read(
    session: &Session,
    cookie: u64,
    offset: u64,
    length: u32,
    pieces: &Option<Vec<vmedia_nbd::transmission::ReadPiece>>,
    fetch: &mut dyn FnMut(u64, usize) -> io::Result<Vec<Bytes>>,
) -> Executed {
    let failed = |error: io::Error| {
        Executed::small(
            error_reply(session, cookie, nbd_error(&error), &error.to_string()),
            0,
            false,
        )
    };
    let mut parts: Vec<Bytes> = Vec::new();
    let mut head: Vec<u8> = Vec::with_capacity(64);
    match pieces {
        None if !session.structured_replies => {
            // Every read is done before any byte is queued: an error still gets its reply.
            simple_reply(&mut head, cookie, None);
            let data = match fetch(offset, length as usize) {
                Ok(data) => data,
                Err(error) => return failed(error),
            };
            parts.push(Bytes::from(head));
            parts.extend(data);
        }
        None => {
            none_chunk(&mut head, cookie);
            parts.push(Bytes::from(head));
        }
        Some(pieces) => {
            let last = pieces.len().saturating_sub(1);
            for (index, piece) in pieces.iter().enumerate() {
                // Every read is done before any byte is sent, so the last chunk can carry DONE.
                let done = index == last;
                if piece.zero {
                    offset_hole(&mut head, cookie, piece.offset, piece.length, done);
                    continue;
                }
                let data = match fetch(piece.offset, piece.length as usize) {
                    Ok(data) => data,
                    Err(error) => return failed(error),
                };
                offset_data_header(&mut head, cookie, piece.offset, piece.length, done);
                parts.push(Bytes::from(std::mem::take(&mut head)));
                parts.extend(data);
            }
            if !head.is_empty() {
                parts.push(Bytes::from(head));
            }
        }
    }
    Executed {
        parts,
        moved: u64::from(length),
        ok: true,
    }
}

fn cache(export: &dyn Export, offset: u64, length: u32) -> io::Result<u64> {
    let mut scratch = vec![0u8; length.min(CACHE_PIECE) as usize];
    let mut done: u32 = 0;
    while done < length {
        let piece = (length - done).min(CACHE_PIECE) as usize;
        export.read_at(&mut scratch[..piece], offset + u64::from(done))?;
        done += piece as u32;
    }
    Ok(u64::from(length))
}

fn block_status_reply(
    export: &dyn Export,
    session: &Session,
    cookie: u64,
    offset: u64,
    length: u32,
    req_one: bool,
) -> Executed {
    let Some(context) = session.base_allocation else {
        return Executed::small(
            error_reply(session, cookie, NbdError::Inval, "no meta context selected"),
            0,
            false,
        );
    };
    let extents = match extents(export, offset, length) {
        Ok(extents) => extents,
        Err(error) => {
            return Executed::small(
                error_reply(session, cookie, nbd_error(&error), &error.to_string()),
                0,
                false,
            )
        }
    };
    let granularity = session.block_sizes.minimum;
    let descriptors = block_status_descriptors(length, &extents, req_one, granularity);
    let mut out = Vec::with_capacity(24 + descriptors.len() * 8);
    block_status(&mut out, cookie, context, &descriptors, true);
    Executed::small(out, u64::from(length), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges_slice_across_parts() {
        let parts = [
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"ij"),
        ];
        let text = |got: Vec<Bytes>| -> String {
            got.iter()
                .map(|b| std::str::from_utf8(b).unwrap().to_string())
                .collect()
        };
        assert_eq!(text(sub_range(&parts, 0, 10)), "abcdefghij");
        assert_eq!(text(sub_range(&parts, 2, 5)), "cdefg");
        assert_eq!(text(sub_range(&parts, 3, 5)), "defgh");
        assert_eq!(text(sub_range(&parts, 9, 1)), "j");
        assert!(sub_range(&parts, 4, 0).is_empty());
    }
}
