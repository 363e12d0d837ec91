//! TFTP packets (RFC 1350) with option extensions (RFC 2347 OACK; blksize 2348, tsize and
//! timeout 2349, windowsize 7440).
//!
//! `TftpRepr::parse` takes untrusted bytes and never panics: every field is bounds-checked and
//! strings end at their NUL. Data payloads are borrowed from the input, so parsing a DATA or
//! emitting one copies nothing beyond the 4-byte header.

use thiserror::Error;

/// Opcodes as sent on the wire.
pub mod opcode {
    pub const RRQ: u16 = 1;
    pub const WRQ: u16 = 2;
    pub const DATA: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ERROR: u16 = 5;
    pub const OACK: u16 = 6;
}

/// Error codes (RFC 1350 section 5, RFC 2347 code 8).
pub mod error_code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const DISK_FULL: u16 = 3;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TID: u16 = 5;
    pub const FILE_EXISTS: u16 = 6;
    pub const NO_SUCH_USER: u16 = 7;
    pub const OPTION_REFUSED: u16 = 8;
}

/// The largest TFTP packet we accept or build: a DATA packet at the RFC 2348 maximum block size.
pub const MAX_PACKET: usize = 4 + MAX_BLKSIZE;
/// RFC 2348: block sizes range from 8 to 65464 octets.
pub const MIN_BLKSIZE: usize = 8;
/// RFC 2348 upper bound (fits a UDP datagram over IPv4 with headers).
pub const MAX_BLKSIZE: usize = 65464;
/// A request carrying more options than this is hostile or broken; real clients send at most 5.
pub const MAX_OPTIONS: usize = 32;

/// Why a packet could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TftpError {
    #[error("TFTP packet of {len} bytes is too short (need at least {need})")]
    Truncated { len: usize, need: usize },
    #[error("TFTP packet has unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("TFTP {field} at offset {offset:#x} is not NUL-terminated")]
    Unterminated { field: &'static str, offset: usize },
    #[error("TFTP request carries more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("TFTP DATA payload of {0} bytes exceeds the maximum block size {MAX_BLKSIZE}")]
    DataTooLarge(usize),
    #[error("TFTP buffer of {have} bytes cannot hold a {need}-byte packet")]
    BufferTooSmall { have: usize, need: usize },
}

/// A request (RRQ or WRQ): file name, transfer mode and options, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name as the client sent it; not UTF-8 validated (lossy decoding happens later).
    pub filename: Vec<u8>,
    /// Mode, lower-cased: "octet", "netascii", "mail" or anything a client invents.
    pub mode: String,
    /// Option name (lower-cased) and value, in the order sent.
    pub options: Vec<(String, String)>,
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpRepr<'a> {
    ReadRequest(Request),
    WriteRequest(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: String },
    OptionAck { options: Vec<(String, String)> },
}

fn read_u16(bytes: &[u8], offset: usize) -> Result<u16, TftpError> {
    match bytes.get(offset..offset + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(TftpError::Truncated {
            len: bytes.len(),
            need: offset + 2,
        }),
    }
}

/// Splits one NUL-terminated string off `bytes` at `offset`; returns it and the offset after it.
fn take_cstr<'a>(
    bytes: &'a [u8],
    offset: usize,
    field: &'static str,
) -> Result<(&'a [u8], usize), TftpError> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    match rest.iter().position(|&b| b == 0) {
        Some(end) => Ok((&rest[..end], offset + end + 1)),
        None => Err(TftpError::Unterminated { field, offset }),
    }
}

fn parse_options(bytes: &[u8], mut offset: usize) -> Result<Vec<(String, String)>, TftpError> {
    let mut options = Vec::new();
    // Some clients pad with trailing NULs; an empty name ends the list.
    while offset < bytes.len() && bytes[offset] != 0 {
        if options.len() >= MAX_OPTIONS {
            return Err(TftpError::TooManyOptions);
        }
        let (name, next) = take_cstr(bytes, offset, "option name")?;
        let (value, next) = take_cstr(bytes, next, "option value")?;
        options.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        offset = next;
    }
    Ok(options)
}

fn parse_request(bytes: &[u8]) -> Result<Request, TftpError> {
    let (filename, next) = take_cstr(bytes, 2, "file name")?;
    let (mode, next) = take_cstr(bytes, next, "mode")?;
    Ok(Request {
        filename: filename.to_vec(),
        mode: String::from_utf8_lossy(mode).to_ascii_lowercase(),
        options: parse_options(bytes, next)?,
    })
}

impl<'a> TftpRepr<'a> {
    /// Parses one datagram.
    pub fn parse(bytes: &'a [u8]) -> Result<TftpRepr<'a>, TftpError> {
        let op = read_u16(bytes, 0)?;
        match op {
            opcode::RRQ => Ok(TftpRepr::ReadRequest(parse_request(bytes)?)),
            opcode::WRQ => Ok(TftpRepr::WriteRequest(parse_request(bytes)?)),
            opcode::DATA => {
                let block = read_u16(bytes, 2)?;
                let data = &bytes[4..];
                if data.len() > MAX_BLKSIZE {
                    return Err(TftpError::DataTooLarge(data.len()));
                }
                Ok(TftpRepr::Data { block, data })
            }
            opcode::ACK => Ok(TftpRepr::Ack {
                block: read_u16(bytes, 2)?,
            }),
            opcode::ERROR => {
                let code = read_u16(bytes, 2)?;
                // Many clients omit the NUL after the message; accept the rest of the packet.
                let rest = &bytes[4..];
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                Ok(TftpRepr::Error {
                    code,
                    message: String::from_utf8_lossy(&rest[..end]).into_owned(),
                })
            }
            opcode::OACK => Ok(TftpRepr::OptionAck {
                options: parse_options(bytes, 2)?,
            }),
            other => Err(TftpError::UnknownOpcode(other)),
        }
    }

    /// Bytes `emit` writes.
    pub fn buffer_len(&self) -> usize {
        fn opts_len(options: &[(String, String)]) -> usize {
            options.iter().map(|(n, v)| n.len() + v.len() + 2).sum()
        }
        match self {
            TftpRepr::ReadRequest(r) | TftpRepr::WriteRequest(r) => {
                2 + r.filename.len() + 1 + r.mode.len() + 1 + opts_len(&r.options)
            }
            TftpRepr::Data { data, .. } => 4 + data.len(),
            TftpRepr::Ack { .. } => 4,
            TftpRepr::Error { message, .. } => 4 + message.len() + 1,
            TftpRepr::OptionAck { options } => 2 + opts_len(options),
        }
    }

    /// Writes the packet into `buf`; returns the number of bytes used.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, TftpError> {
        let need = self.buffer_len();
        if buf.len() < need {
            return Err(TftpError::BufferTooSmall {
                have: buf.len(),
                need,
            });
        }
        let mut w = Writer { buf, pos: 0 };
        match self {
            TftpRepr::ReadRequest(r) | TftpRepr::WriteRequest(r) => {
                let op = if matches!(self, TftpRepr::ReadRequest(_)) {
                    opcode::RRQ
                } else {
                    opcode::WRQ
                };
                w.u16(op);
                w.cstr(&r.filename);
                w.cstr(r.mode.as_bytes());
                for (n, v) in &r.options {
                    w.cstr(n.as_bytes());
                    w.cstr(v.as_bytes());
                }
            }
            TftpRepr::Data { block, data } => {
                w.u16(opcode::DATA);
                w.u16(*block);
                w.bytes(data);
            }
            TftpRepr::Ack { block } => {
                w.u16(opcode::ACK);
                w.u16(*block);
            }
            TftpRepr::Error { code, message } => {
                w.u16(opcode::ERROR);
                w.u16(*code);
                w.cstr(message.as_bytes());
            }
            TftpRepr::OptionAck { options } => {
                w.u16(opcode::OACK);
                for (n, v) in options {
                    w.cstr(n.as_bytes());
                    w.cstr(v.as_bytes());
                }
            }
        }
        Ok(w.pos)
    }

    /// Convenience: emits into a new vector (for rare packets: errors, OACKs, tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.buffer_len()];
        // buffer_len sized the vector exactly, so emit cannot fail.
        let n = self.emit(&mut out).unwrap_or(0);
        out.truncate(n);
        out
    }
}

struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn cstr(&mut self, b: &[u8]) {
        self.bytes(b);
        self.bytes(&[0]);
    }
}

/// Writes a DATA header (opcode + block) into `header`.
pub fn data_header(block: u16) -> [u8; 4] {
    let op = opcode::DATA.to_be_bytes();
    let b = block.to_be_bytes();
    [op[0], op[1], b[0], b[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RRQ as tftp-hpa sends it with `-m binary` and blksize/tsize/timeout/windowsize.
    const HPA_RRQ: &[u8] = b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00timeout\x003\x00windowsize\x0016\x00";

    #[test]
    fn rrq_round_trip() {
        let repr = TftpRepr::parse(HPA_RRQ).unwrap();
        let TftpRepr::ReadRequest(req) = &repr else {
            panic!("not an RRQ: {repr:?}")
        };
        assert_eq!(req.filename, b"pxelinux.0");
        assert_eq!(req.mode, "octet");
        assert_eq!(req.options.len(), 4);
        assert_eq!(req.options[1], ("blksize".to_string(), "1468".to_string()));
        assert_eq!(repr.to_vec(), HPA_RRQ);
    }

    #[test]
    fn option_names_are_case_insensitive() {
        let repr = TftpRepr::parse(b"\x00\x01f\x00OCTET\x00BlkSize\x00512\x00").unwrap();
        let TftpRepr::ReadRequest(req) = repr else {
            panic!()
        };
        assert_eq!(req.mode, "octet");
        assert_eq!(req.options[0].0, "blksize");
    }

    #[test]
    fn data_ack_error_oack_round_trip() {
        let payload = [7u8; 100];
        for repr in [
            TftpRepr::Data {
                block: 65535,
                data: &payload,
            },
            TftpRepr::Ack { block: 3 },
            TftpRepr::Error {
                code: error_code::FILE_NOT_FOUND,
                message: "nope".into(),
            },
            TftpRepr::OptionAck {
                options: vec![("tsize".into(), "42".into())],
            },
        ] {
            let bytes = repr.to_vec();
            assert_eq!(TftpRepr::parse(&bytes).unwrap(), repr);
        }
    }

    #[test]
    fn unterminated_filename_is_rejected() {
        assert_eq!(
            TftpRepr::parse(b"\x00\x01abc"),
            Err(TftpError::Unterminated {
                field: "file name",
                offset: 2
            })
        );
    }

    #[test]
    fn unterminated_option_value_is_rejected() {
        assert!(matches!(
            TftpRepr::parse(b"\x00\x01f\x00octet\x00blksize\x00512"),
            Err(TftpError::Unterminated {
                field: "option value",
                ..
            })
        ));
    }

    #[test]
    fn too_many_options_are_rejected() {
        let mut p = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..=MAX_OPTIONS {
            p.extend_from_slice(format!("o{i}\x00v\x00").as_bytes());
        }
        assert_eq!(TftpRepr::parse(&p), Err(TftpError::TooManyOptions));
    }

    #[test]
    fn short_packets_are_truncated_errors() {
        assert!(matches!(
            TftpRepr::parse(b""),
            Err(TftpError::Truncated { .. })
        ));
        assert!(matches!(
            TftpRepr::parse(b"\x00"),
            Err(TftpError::Truncated { .. })
        ));
        assert!(matches!(
            TftpRepr::parse(b"\x00\x04\x01"),
            Err(TftpError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_opcode_is_an_error() {
        assert_eq!(
            TftpRepr::parse(b"\x00\x09xx"),
            Err(TftpError::UnknownOpcode(9))
        );
    }

    #[test]
    fn error_without_trailing_nul_is_accepted() {
        let repr = TftpRepr::parse(b"\x00\x05\x00\x01gone").unwrap();
        assert_eq!(
            repr,
            TftpRepr::Error {
                code: 1,
                message: "gone".into()
            }
        );
    }

    #[test]
    fn emit_into_small_buffer_fails() {
        let mut buf = [0u8; 3];
        assert!(matches!(
            TftpRepr::Ack { block: 1 }.emit(&mut buf),
            Err(TftpError::BufferTooSmall { .. })
        ));
    }
}
