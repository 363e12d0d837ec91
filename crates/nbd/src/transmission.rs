//! The transmission phase's codec: request headers (typed), the validator that decides which
//! NBD error a request earns before any I/O, simple and structured replies, and the two
//! planners that turn an export's allocation into reply chunks (holes for a structured read,
//! descriptors for BLOCK_STATUS).

use vmedia_io::bytes::{be16, be32, be64};

use crate::wire::{
    chunk, command, command_flags, state, transmission_flags, BlockSizes, NbdError,
    MAX_BLOCK_STATUS_DESCRIPTORS, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    pub fn from_code(code: u16) -> Command {
        match code {
            command::READ => Command::Read,
            command::WRITE => Command::Write,
            command::DISC => Command::Disconnect,
            command::FLUSH => Command::Flush,
            command::TRIM => Command::Trim,
            command::CACHE => Command::Cache,
            command::WRITE_ZEROES => Command::WriteZeroes,
            command::BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    pub fn code(self) -> u16 {
        match self {
            Command::Read => command::READ,
            Command::Write => command::WRITE,
            Command::Disconnect => command::DISC,
            Command::Flush => command::FLUSH,
            Command::Trim => command::TRIM,
            Command::Cache => command::CACHE,
            Command::WriteZeroes => command::WRITE_ZEROES,
            Command::BlockStatus => command::BLOCK_STATUS,
            Command::Unknown(code) => code,
        }
    }

    /// Command flags this command may carry (FUA is added when the session allows it).
    fn allowed_flags(self, session: &Session) -> u16 {
        let mut allowed = match self {
            Command::Read if session.structured_replies => command_flags::DF,
            Command::WriteZeroes => command_flags::NO_HOLE,
            Command::BlockStatus => command_flags::REQ_ONE,
            _ => 0,
        };
        // FUA is valid on every command once SEND_FUA is advertised (clients set it widely).
        if session.flags & transmission_flags::SEND_FUA != 0 {
            allowed |= command_flags::FUA;
        }
        allowed
    }
}

/// Why a request header cannot be read; the connection is then out of sync and must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request header is {0} bytes, {REQUEST_HEADER_LEN} needed")]
    Short(usize),
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC")]
    BadMagic(u32),
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub fn parse(bytes: &[u8]) -> Result<RequestHeader, RequestError> {
        let short = || RequestError::Short(bytes.len());
        let magic = be32(bytes, 0).ok_or_else(short)?;
        let length = be32(bytes, 24).ok_or_else(short)?;
        if magic != REQUEST_MAGIC {
            return Err(RequestError::BadMagic(magic));
        }
        Ok(RequestHeader {
            flags: be16(bytes, 4).ok_or_else(short)?,
            command: Command::from_code(be16(bytes, 6).ok_or_else(short)?),
            cookie: be64(bytes, 8).ok_or_else(short)?,
            offset: be64(bytes, 16).ok_or_else(short)?,
            length,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.command.code().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    /// Bytes that follow this header on the wire (a WRITE's data, valid or not): the driver
    /// must consume them even when it refuses the request, to stay in step with the client.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }
}

/// What the validator needs to know about the negotiated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub size: u64,
    /// The transmission flags sent to the client.
    pub flags: u16,
    pub structured_replies: bool,
    /// The `base:allocation` context id, when the client selected it.
    pub base_allocation: Option<u32>,
    pub block_sizes: BlockSizes,
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        offset: u64,
        length: u32,
        df: bool,
    },
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Flush,
    Cache {
        offset: u64,
        length: u32,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        req_one: bool,
    },
    Disconnect,
}

/// A refused request: the error to reply with and why (for logs and error chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub error: NbdError,
    pub reason: &'static str,
}

fn refuse(error: NbdError, reason: &'static str) -> Result<Request, Refusal> {
    Err(Refusal { error, reason })
}

impl Session {
    /// Checks a request against the session before any I/O: known command, flags allowed for
    /// it, writes refused on a read-only export, the range inside the export, alignment to the
    /// minimum block size and payloads within the maximum.
    pub fn validate(&self, header: &RequestHeader) -> Result<Request, Refusal> {
        let command = header.command;
        if command == Command::Disconnect {
            return Ok(Request::Disconnect);
        }
        if let Command::Unknown(_) = command {
            return refuse(NbdError::Inval, "unknown command");
        }
        if header.flags & !command.allowed_flags(self) != 0 {
            return refuse(NbdError::Inval, "command flag not valid for this command");
        }
        let writes = matches!(
            command,
            Command::Write | Command::WriteZeroes | Command::Trim
        );
        if writes && self.flags & transmission_flags::READ_ONLY != 0 {
            return refuse(NbdError::Perm, "the export is read-only");
        }
        let fua = header.flags & command_flags::FUA != 0;
        let (offset, length) = (header.offset, header.length);
        if command == Command::Flush {
            if offset != 0 || length != 0 {
                return refuse(NbdError::Inval, "FLUSH with a nonzero offset or length");
            }
            return Ok(Request::Flush);
        }
        if command == Command::BlockStatus && self.base_allocation.is_none() {
            return refuse(
                NbdError::Inval,
                "BLOCK_STATUS without a selected meta context",
            );
        }
        let end = offset.checked_add(u64::from(length));
        if end.is_none_or(|end| end > self.size) {
            let error = if matches!(command, Command::Write | Command::WriteZeroes) {
                NbdError::NoSpc
            } else {
                NbdError::Inval
            };
            return refuse(error, "range runs past the end of the export");
        }
        let minimum = u64::from(self.block_sizes.minimum.max(1));
        // A range that ends at the export's end may be short of a block (unaligned size).
        let reaches_end = end == Some(self.size);
        if offset % minimum != 0 || (u64::from(length) % minimum != 0 && !reaches_end) {
            return refuse(
                NbdError::Inval,
                "range not aligned to the minimum block size",
            );
        }
        let maximum = self.block_sizes.maximum;
        match command {
            Command::Read => {
                if length > maximum {
                    // With structured replies the protocol's answer to "too big" is EOVERFLOW.
                    let error = if self.structured_replies {
                        NbdError::Overflow
                    } else {
                        NbdError::Inval
                    };
                    return refuse(error, "read longer than the maximum payload");
                }
                let df = header.flags & command_flags::DF != 0;
                Ok(Request::Read { offset, length, df })
            }
            Command::Write => {
                if length > maximum {
                    return refuse(NbdError::Inval, "write longer than the maximum payload");
                }
                Ok(Request::Write {
                    offset,
                    length,
                    fua,
                })
            }
            Command::WriteZeroes => Ok(Request::WriteZeroes {
                offset,
                length,
                fua,
                no_hole: header.flags & command_flags::NO_HOLE != 0,
            }),
            Command::Trim => Ok(Request::Trim {
                offset,
                length,
                fua,
            }),
            Command::Cache => Ok(Request::Cache { offset, length }),
            Command::BlockStatus => {
                if length == 0 {
                    return refuse(NbdError::Inval, "BLOCK_STATUS of zero bytes");
                }
                Ok(Request::BlockStatus {
                    offset,
                    length,
                    req_one: header.flags & command_flags::REQ_ONE != 0,
                })
            }
            Command::Flush | Command::Disconnect | Command::Unknown(_) => {
                refuse(NbdError::Inval, "unknown command")
            }
        }
    }
}

/// Appends a simple reply header (data, if any, follows it).
pub fn simple_reply(out: &mut Vec<u8>, cookie: u64, error: Option<NbdError>) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.map_or(0, NbdError::code).to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

fn chunk_header(out: &mut Vec<u8>, done: bool, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends an OFFSET_DATA chunk's header and offset; the caller appends `data_len` bytes.
/// `data_len` must be at most `u32::MAX - 8` (payloads are capped far below).
pub fn offset_data_header(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32, done: bool) {
    let length = data_len.saturating_add(8);
    chunk_header(out, done, chunk::OFFSET_DATA, cookie, length);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Appends an OFFSET_HOLE chunk: `length` zero bytes at `offset`.
pub fn offset_hole(out: &mut Vec<u8>, cookie: u64, offset: u64, length: u32, done: bool) {
    chunk_header(out, done, chunk::OFFSET_HOLE, cookie, 12);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// One BLOCK_STATUS descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub length: u32,
    /// `NBD_STATE_*` flags.
    pub flags: u32,
}

/// Appends a BLOCK_STATUS chunk for context `context_id`.
pub fn block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    context_id: u32,
    descriptors: &[Descriptor],
    done: bool,
) {
    let length = descriptors
        .len()
        .checked_mul(8)
        .and_then(|bytes| bytes.checked_add(4))
        .and_then(|bytes| u32::try_from(bytes).ok())
        .unwrap_or(u32::MAX);
    chunk_header(out, done, chunk::BLOCK_STATUS, cookie, length);
    out.extend_from_slice(&context_id.to_be_bytes());
    for descriptor in descriptors {
        out.extend_from_slice(&descriptor.length.to_be_bytes());
        out.extend_from_slice(&descriptor.flags.to_be_bytes());
    }
}

/// Appends an ERROR chunk with a message for the user (cut at 4096 bytes).
pub fn error_chunk(out: &mut Vec<u8>, cookie: u64, error: NbdError, message: &str, done: bool) {
    let message = crate::option::truncated(message);
    chunk_header(out, done, chunk::ERROR, cookie, 6 + message.len() as u32);
    out.extend_from_slice(&error.code().to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
}

/// Appends an ERROR_OFFSET chunk: the error happened at `offset`.
pub fn error_offset_chunk(
    out: &mut Vec<u8>,
    cookie: u64,
    error: NbdError,
    message: &str,
    offset: u64,
    done: bool,
) {
    let message = crate::option::truncated(message);
    chunk_header(
        out,
        done,
        chunk::ERROR_OFFSET,
        cookie,
        14 + message.len() as u32,
    );
    out.extend_from_slice(&error.code().to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Appends the final NONE chunk.
pub fn none_chunk(out: &mut Vec<u8>, cookie: u64) {
    chunk_header(out, true, chunk::NONE, cookie, 0);
}

/// One run of an export's allocation (the server maps its own extents to this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub hole: bool,
    pub zero: bool,
}

/// One chunk of a structured read: data to read, or a run known to read as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPiece {
    pub offset: u64,
    pub length: u32,
    pub zero: bool,
}

/// Splits a read of `[offset, offset + length)` into data and zero pieces from `extents`
/// (which start at `offset`). Zero runs shorter than `min_hole` stay data (a hole chunk costs
/// 32 bytes of framing); whatever the extents do not cover is data. Adjacent pieces of the
/// same kind merge; the pieces cover the range exactly.
pub fn plan_read(offset: u64, length: u32, extents: &[Extent], min_hole: u32) -> Vec<ReadPiece> {
    let mut pieces: Vec<ReadPiece> = Vec::new();
    let mut push = |piece: ReadPiece| match pieces.last_mut() {
        Some(last) if last.zero == piece.zero => last.length += piece.length,
        _ => pieces.push(piece),
    };
    let mut done: u32 = 0;
    for extent in extents {
        if done >= length {
            break;
        }
        let remaining = length - done;
        let run = u32::try_from(extent.length.min(u64::from(remaining))).unwrap_or(remaining);
        if run == 0 {
            continue;
        }
        let zero = (extent.zero || extent.hole) && run >= min_hole;
        push(ReadPiece {
            offset: offset + u64::from(done),
            length: run,
            zero,
        });
        done += run;
    }
    if done < length {
        push(ReadPiece {
            offset: offset + u64::from(done),
            length: length - done,
            zero: false,
        });
    }
    pieces
}

/// The BLOCK_STATUS descriptors for a query of `length` bytes from `extents` (which start at
/// the query's offset): same-status runs merged, at most `MAX_BLOCK_STATUS_DESCRIPTORS`, each
/// at most `u32::MAX` rounded down to `granularity`, the first N-1 summing to less than
/// `length`, exactly one (cut to `length`) with REQ_ONE, and never empty: an export that
/// reports nothing is described as one allocated run of `length` bytes.
pub fn block_status_descriptors(
    length: u32,
    extents: &[Extent],
    req_one: bool,
    granularity: u32,
) -> Vec<Descriptor> {
    let granularity = granularity.max(1);
    let longest = u32::MAX - u32::MAX % granularity;
    let mut descriptors: Vec<Descriptor> = Vec::new();
    let mut covered: u64 = 0;
    for extent in extents {
        if covered >= u64::from(length) || descriptors.len() >= MAX_BLOCK_STATUS_DESCRIPTORS {
            break;
        }
        let mut flags = 0;
        if extent.hole {
            flags |= state::HOLE;
        }
        if extent.zero {
            flags |= state::ZERO;
        }
        let run = u32::try_from(extent.length.min(u64::from(longest))).unwrap_or(longest);
        if run == 0 {
            continue;
        }
        match descriptors.last_mut() {
            Some(last)
                if last.flags == flags
                    && last
                        .length
                        .checked_add(run)
                        .is_some_and(|sum| sum <= longest) =>
            {
                last.length += run
            }
            _ => descriptors.push(Descriptor { length: run, flags }),
        }
        covered += u64::from(run);
    }
    if descriptors.is_empty() {
        descriptors.push(Descriptor {
            length: length.max(1),
            flags: 0,
        });
    }
    if req_one {
        descriptors.truncate(1);
        if let Some(first) = descriptors.first_mut() {
            first.length = first.length.min(length.max(1));
        }
    }
    descriptors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::ExportInfo;
    use crate::wire::MAX_PAYLOAD;

    const MIB: u64 = 1 << 20;

    fn session(read_only: bool, structured: bool, minimum: u32) -> Session {
        let info = ExportInfo {
            name: "x".into(),
            description: String::new(),
            size: MIB,
            read_only,
            multi_conn: true,
            block_sizes: BlockSizes::DEFAULT,
        };
        Session {
            size: MIB,
            flags: info.transmission_flags(structured),
            structured_replies: structured,
            base_allocation: structured.then_some(1),
            block_sizes: BlockSizes {
                minimum,
                preferred: 4096,
                maximum: MAX_PAYLOAD,
            },
        }
    }

    fn header(command: Command, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 0x0102_0304_0506_0708,
            offset,
            length,
        }
    }

    fn refused(session: &Session, header: RequestHeader) -> NbdError {
        session.validate(&header).unwrap_err().error
    }

    #[test]
    fn request_header_round_trips_and_reads_the_documented_layout() {
        let bytes = [
            0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0,
            0, 0x10, 0, 0, 0, 0x02, 0,
        ];
        let parsed = RequestHeader::parse(&bytes).unwrap();
        assert_eq!(
            parsed,
            header(Command::Write, command_flags::FUA, 0x1000, 512)
        );
        assert_eq!(parsed.payload_len(), 512);
        let mut out = Vec::new();
        parsed.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn bad_magic_and_short_headers_are_errors() {
        assert_eq!(
            RequestHeader::parse(&[0u8; 28]),
            Err(RequestError::BadMagic(0))
        );
        assert_eq!(
            RequestHeader::parse(&[0x25; 10]),
            Err(RequestError::Short(10))
        );
    }

    #[test]
    fn unknown_command_is_einval() {
        let session = session(false, true, 1);
        assert_eq!(
            refused(&session, header(Command::Unknown(99), 0, 0, 0)),
            NbdError::Inval
        );
    }

    #[test]
    fn flags_not_documented_for_the_command_are_einval() {
        let session = session(false, true, 1);
        assert_eq!(
            refused(
                &session,
                header(Command::Read, command_flags::REQ_ONE, 0, 512)
            ),
            NbdError::Inval
        );
        assert_eq!(
            refused(
                &session,
                header(Command::Write, command_flags::NO_HOLE, 0, 512)
            ),
            NbdError::Inval
        );
        assert_eq!(
            refused(
                &session,
                header(Command::WriteZeroes, command_flags::FAST_ZERO, 0, 512)
            ),
            NbdError::Inval
        );
        assert_eq!(
            refused(&session, header(Command::Read, 0x8000, 0, 512)),
            NbdError::Inval
        );
    }

    #[test]
    fn df_needs_structured_replies() {
        assert_eq!(
            refused(
                &session(false, false, 1),
                header(Command::Read, command_flags::DF, 0, 512)
            ),
            NbdError::Inval
        );
        assert_eq!(
            session(false, true, 1).validate(&header(Command::Read, command_flags::DF, 0, 512)),
            Ok(Request::Read {
                offset: 0,
                length: 512,
                df: true
            })
        );
    }

    #[test]
    fn fua_is_accepted_on_any_command_once_advertised_and_refused_otherwise() {
        let writable = session(false, true, 1);
        assert!(writable
            .validate(&header(Command::Read, command_flags::FUA, 0, 512))
            .is_ok());
        assert_eq!(
            writable.validate(&header(Command::Write, command_flags::FUA, 0, 512)),
            Ok(Request::Write {
                offset: 0,
                length: 512,
                fua: true
            })
        );
        let read_only = session(true, true, 1);
        assert_eq!(
            refused(
                &read_only,
                header(Command::Read, command_flags::FUA, 0, 512)
            ),
            NbdError::Inval
        );
    }

    #[test]
    fn writes_to_a_read_only_export_are_eperm() {
        let session = session(true, true, 1);
        for command in [Command::Write, Command::WriteZeroes, Command::Trim] {
            assert_eq!(
                refused(&session, header(command, 0, 0, 512)),
                NbdError::Perm
            );
        }
        assert!(session.validate(&header(Command::Flush, 0, 0, 0)).is_ok());
    }

    #[test]
    fn writes_past_the_end_are_enospc_and_reads_einval() {
        let session = session(false, true, 1);
        assert_eq!(
            refused(&session, header(Command::Write, 0, MIB - 256, 512)),
            NbdError::NoSpc
        );
        assert_eq!(
            refused(&session, header(Command::WriteZeroes, 0, MIB, 1)),
            NbdError::NoSpc
        );
        assert_eq!(
            refused(&session, header(Command::Read, 0, MIB - 256, 512)),
            NbdError::Inval
        );
        assert_eq!(
            refused(&session, header(Command::Trim, 0, u64::MAX, 2)),
            NbdError::Inval
        );
        assert!(session
            .validate(&header(Command::Read, 0, MIB - 512, 512))
            .is_ok());
    }

    #[test]
    fn unaligned_ranges_are_einval_except_at_the_end() {
        let mut session = session(false, true, 512);
        assert_eq!(
            refused(&session, header(Command::Read, 0, 256, 512)),
            NbdError::Inval
        );
        assert_eq!(
            refused(&session, header(Command::Write, 0, 0, 100)),
            NbdError::Inval
        );
        session.size = MIB - 100;
        assert!(session
            .validate(&header(Command::Read, 0, MIB - 512, 412))
            .is_ok());
    }

    #[test]
    fn payloads_over_the_maximum_are_refused() {
        let session = session(false, true, 1);
        let mut big = session;
        big.size = 1 << 40;
        assert_eq!(
            refused(&big, header(Command::Read, 0, 0, MAX_PAYLOAD + 1)),
            NbdError::Overflow
        );
        let mut simple = big;
        simple.structured_replies = false;
        assert_eq!(
            refused(&simple, header(Command::Read, 0, 0, MAX_PAYLOAD + 1)),
            NbdError::Inval
        );
        assert_eq!(
            refused(&big, header(Command::Write, 0, 0, MAX_PAYLOAD + 1)),
            NbdError::Inval
        );
        // Effect lengths are not payloads.
        assert!(big
            .validate(&header(Command::WriteZeroes, 0, 0, MAX_PAYLOAD + 1))
            .is_ok());
    }

    #[test]
    fn flush_with_a_range_is_einval() {
        let session = session(false, true, 1);
        assert_eq!(
            refused(&session, header(Command::Flush, 0, 0, 1)),
            NbdError::Inval
        );
        assert_eq!(
            session.validate(&header(Command::Flush, 0, 0, 0)),
            Ok(Request::Flush)
        );
    }

    #[test]
    fn block_status_needs_a_meta_context() {
        let mut session = session(false, true, 1);
        assert_eq!(
            session.validate(&header(
                Command::BlockStatus,
                command_flags::REQ_ONE,
                0,
                512
            )),
            Ok(Request::BlockStatus {
                offset: 0,
                length: 512,
                req_one: true
            })
        );
        session.base_allocation = None;
        assert_eq!(
            refused(&session, header(Command::BlockStatus, 0, 0, 512)),
            NbdError::Inval
        );
    }

    #[test]
    fn disconnect_is_always_accepted() {
        assert_eq!(
            session(true, false, 512).validate(&header(Command::Disconnect, 7, 3, 3)),
            Ok(Request::Disconnect)
        );
    }

    #[test]
    fn simple_reply_bytes() {
        let mut out = Vec::new();
        simple_reply(&mut out, 0xaabb, Some(NbdError::Perm));
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb]
        );
    }

    #[test]
    fn structured_chunk_bytes() {
        let mut out = Vec::new();
        offset_data_header(&mut out, 7, 0x200, 4, false);
        assert_eq!(
            out,
            [
                0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 12, 0, 0, 0,
                0, 0, 0, 2, 0
            ]
        );
        let mut out = Vec::new();
        offset_hole(&mut out, 7, 0x400, 0x1000, true);
        assert_eq!(&out[4..8], &[0, 1, 0, 2]);
        assert_eq!(&out[16..20], &[0, 0, 0, 12]);
        assert_eq!(&out[28..], &[0, 0, 0x10, 0]);
        let mut out = Vec::new();
        block_status(
            &mut out,
            7,
            1,
            &[Descriptor {
                length: 512,
                flags: 3,
            }],
            true,
        );
        assert_eq!(&out[6..8], &[0, 5]);
        assert_eq!(
            &out[16..],
            &[0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 3]
        );
        let mut out = Vec::new();
        error_chunk(&mut out, 7, NbdError::Io, "bad", true);
        assert_eq!(&out[4..8], &[0, 1, 0x80, 1]);
        assert_eq!(
            &out[16..],
            &[0, 0, 0, 9, 0, 0, 0, 5, 0, 3, b'b', b'a', b'd']
        );
        let mut out = Vec::new();
        error_offset_chunk(&mut out, 7, NbdError::Io, "", 0x10, false);
        assert_eq!(&out[4..8], &[0, 0, 0x80, 2]);
        assert_eq!(
            &out[16..],
            &[0, 0, 0, 14, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]
        );
        let mut out = Vec::new();
        none_chunk(&mut out, 7);
        assert_eq!(&out[4..8], &[0, 1, 0, 0]);
        assert_eq!(out.len(), CHUNK_HEADER_LEN);
    }

    fn extent(length: u64, zero: bool) -> Extent {
        Extent {
            length,
            hole: zero,
            zero,
        }
    }

    #[test]
    fn plan_read_sends_holes_for_zero_runs_and_data_for_the_rest() {
        let extents = [
            extent(4096, false),
            extent(8192, true),
            extent(100, true),
            extent(4096, false),
        ];
        let pieces = plan_read(1000, 20000, &extents, 512);
        assert_eq!(
            pieces,
            [
                ReadPiece {
                    offset: 1000,
                    length: 4096,
                    zero: false
                },
                ReadPiece {
                    offset: 5096,
                    length: 8192,
                    zero: true
                },
                // The 100-byte hole is too short to be worth a chunk; it merges with the data
                // after it and the uncovered tail.
                ReadPiece {
                    offset: 13288,
                    length: 7712,
                    zero: false
                },
            ]
        );
    }

    #[test]
    fn plan_read_cuts_extents_longer_than_the_read() {
        let pieces = plan_read(0, 1000, &[extent(1 << 40, true)], 512);
        assert_eq!(
            pieces,
            [ReadPiece {
                offset: 0,
                length: 1000,
                zero: true
            }]
        );
        assert!(plan_read(0, 0, &[extent(10, false)], 512).is_empty());
    }

    #[test]
    fn block_status_merges_runs_and_honours_req_one() {
        let extents = [
            extent(512, false),
            extent(512, false),
            extent(1024, true),
            extent(512, false),
        ];
        let descriptors = block_status_descriptors(2048, &extents, false, 512);
        assert_eq!(
            descriptors,
            [
                Descriptor {
                    length: 1024,
                    flags: 0
                },
                Descriptor {
                    length: 1024,
                    flags: state::HOLE | state::ZERO
                },
            ]
        );
        let one = block_status_descriptors(700, &extents, true, 512);
        assert_eq!(
            one,
            [Descriptor {
                length: 700,
                flags: 0
            }]
        );
    }

    #[test]
    fn block_status_never_answers_empty() {
        assert_eq!(
            block_status_descriptors(4096, &[], false, 512),
            [Descriptor {
                length: 4096,
                flags: 0
            }]
        );
        assert_eq!(
            block_status_descriptors(4096, &[extent(0, true)], true, 512),
            [Descriptor {
                length: 4096,
                flags: 0
            }]
        );
    }

    #[test]
    fn block_status_splits_extents_longer_than_a_descriptor() {
        let descriptors = block_status_descriptors(u32::MAX, &[extent(1 << 40, true)], false, 4096);
        assert_eq!(descriptors.len(), 1);
        assert_eq!(descriptors[0].length % 4096, 0);
    }
}
