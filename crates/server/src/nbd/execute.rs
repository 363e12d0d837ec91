//! Runs one validated request against an `Export` (on a blocking thread) and encodes its
//! reply: simple replies without structured replies, otherwise structured chunks with holes
//! sent as OFFSET_HOLE and errors as ERROR chunks carrying the reason.

use std::io;

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

/// A reply ready to write, and what the metrics need to know about it.
pub(super) struct Executed {
    pub bytes: Vec<u8>,
    pub moved: u64,
    pub ok: bool,
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
        Ok(moved) => Executed {
            bytes: ok_reply(cookie),
            moved,
            ok: true,
        },
        Err(error) => Executed {
            bytes: error_reply(session, cookie, nbd_error(&error), &error.to_string()),
            moved: 0,
            ok: false,
        },
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
            bytes: Vec::new(),
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

fn read(
    export: &dyn Export,
    session: &Session,
    cookie: u64,
    offset: u64,
    length: u32,
    df: bool,
) -> Executed {
    let failed = |error: io::Error| Executed {
        bytes: error_reply(session, cookie, nbd_error(&error), &error.to_string()),
        moved: 0,
        ok: false,
    };
    let mut out: Vec<u8> = Vec::new();
    if !session.structured_replies {
        out.reserve_exact(16 + length as usize);
        simple_reply(&mut out, cookie, None);
        out.resize(16 + length as usize, 0);
        if let Err(error) = export.read_at(&mut out[16..], offset) {
            return failed(error);
        }
    } else if length == 0 {
        none_chunk(&mut out, cookie);
    } else {
        // Without DF, zero runs go out as holes; an export that cannot say where they are
        // is read in full (allocation is an optimisation here, never a reason to fail).
        let pieces = if df || length < 2 * MIN_HOLE {
            // Too short to gain from a hole chunk: skip the allocation lookup.
            plan_read(offset, length, &[], MIN_HOLE)
        } else {
            let extents = extents(export, offset, length).unwrap_or_default();
            plan_read(offset, length, &extents, MIN_HOLE)
        };
        let data: usize = pieces
            .iter()
            .filter(|piece| !piece.zero)
            .map(|piece| piece.length as usize)
            .sum();
        out.reserve_exact(data + pieces.len() * 32);
        let last = pieces.len().saturating_sub(1);
        for (index, piece) in pieces.iter().enumerate() {
            // Every read is done before any byte is sent, so the last chunk can carry DONE.
            let done = index == last;
            if piece.zero {
                offset_hole(&mut out, cookie, piece.offset, piece.length, done);
                continue;
            }
            offset_data_header(&mut out, cookie, piece.offset, piece.length, done);
            let start = out.len();
            out.resize(start + piece.length as usize, 0);
            if let Err(error) = export.read_at(&mut out[start..], piece.offset) {
                return failed(error);
            }
        }
    }
    Executed {
        bytes: out,
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
        return Executed {
            bytes: error_reply(session, cookie, NbdError::Inval, "no meta context selected"),
            moved: 0,
            ok: false,
        };
    };
    let extents = match extents(export, offset, length) {
        Ok(extents) => extents,
        Err(error) => {
            return Executed {
                bytes: error_reply(session, cookie, nbd_error(&error), &error.to_string()),
                moved: 0,
                ok: false,
            }
        }
    };
    let granularity = session.block_sizes.minimum;
    let descriptors = block_status_descriptors(length, &extents, req_one, granularity);
    let mut out = Vec::with_capacity(24 + descriptors.len() * 8);
    block_status(&mut out, cookie, context, &descriptors, true);
    Executed {
        bytes: out,
        moved: u64::from(length),
        ok: true,
    }
}
