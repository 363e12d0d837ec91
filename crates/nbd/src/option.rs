//! The handshake's codec: the server greeting, client flags, option requests (typed) and the
//! option replies the server sends. Parsing takes untrusted bytes and never panics; emitting
//! appends to a caller's buffer.

use vmedia_io::bytes::{be16, be32, be64};

use crate::wire::{
    handshake_flags, info, option, reply, BlockSizes, IHAVEOPT, MAX_META_QUERIES,
    MAX_STRING_LENGTH, NBD_MAGIC, OPTION_REPLY_MAGIC,
};

/// Length of the newstyle greeting: two magics and the handshake flags.
pub const GREETING_LEN: usize = 18;
/// Length of an option request header: magic, option code, payload length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header: magic, option, reply type, payload length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

/// The fixed-newstyle greeting this server sends (it always offers NO_ZEROES).
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    let flags = handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES;
    out[16..18].copy_from_slice(&flags.to_be_bytes());
    out
}

/// An option request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Reads the 16-byte header at the start of `bytes`, or `None` when fewer bytes are there.
    pub fn parse(bytes: &[u8]) -> Option<OptionHeader> {
        Some(OptionHeader {
            magic: be64(bytes, 0)?,
            option: be32(bytes, 8)?,
            length: be32(bytes, 12)?,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// What an INFO or GO asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    /// `NBD_INFO_*` codes the client asked for (unknown ones kept; they are ignored later).
    pub requests: Vec<u16>,
}

/// What a LIST_META_CONTEXT or SET_META_CONTEXT asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// One option request, typed. Unknown codes are data, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    /// ABORT; any data is ignored, as the protocol asks.
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    Unknown(u32),
}

/// Why an option's payload was refused; each maps to one option error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("option {option} carries {length} bytes of data but takes none")]
    UnexpectedData { option: u32, length: usize },
    #[error("option {option}: {field} at offset {offset:#x} runs past the {length}-byte payload")]
    Truncated {
        option: u32,
        field: &'static str,
        offset: usize,
        length: usize,
    },
    #[error("option {option}: {extra} bytes after the last field")]
    TrailingData { option: u32, extra: usize },
    #[error("option {option}: {field} is not a valid NBD string ({reason})")]
    BadString {
        option: u32,
        field: &'static str,
        reason: &'static str,
    },
    #[error("option {option}: {count} meta-context queries, at most {MAX_META_QUERIES} allowed")]
    TooManyQueries { option: u32, count: u32 },
}

impl OptionError {
    /// The option error reply this refusal is sent as.
    pub fn reply_type(&self) -> u32 {
        match self {
            OptionError::TooManyQueries { .. } => reply::ERR_TOO_BIG,
            _ => reply::ERR_INVALID,
        }
    }
}

/// A cursor over an option payload whose reads report which field ran short.
struct Payload<'a> {
    option: u32,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Payload<'a> {
    fn truncated(&self, field: &'static str) -> OptionError {
        OptionError::Truncated {
            option: self.option,
            field,
            offset: self.at,
            length: self.bytes.len(),
        }
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, OptionError> {
        let value = be16(self.bytes, self.at).ok_or_else(|| self.truncated(field))?;
        self.at += 2;
        Ok(value)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, OptionError> {
        let value = be32(self.bytes, self.at).ok_or_else(|| self.truncated(field))?;
        self.at += 4;
        Ok(value)
    }

    fn take(&mut self, length: usize, field: &'static str) -> Result<&'a [u8], OptionError> {
        let end = self
            .at
            .checked_add(length)
            .ok_or_else(|| self.truncated(field))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| self.truncated(field))?;
        self.at = end;
        Ok(slice)
    }

    /// A string prefixed by its 32-bit length.
    fn string(&mut self, field: &'static str) -> Result<String, OptionError> {
        let length = self.u32(field)?;
        let bytes = self.take(length as usize, field)?;
        nbd_string(self.option, field, bytes)
    }

    fn finish(&self) -> Result<(), OptionError> {
        let extra = self.bytes.len() - self.at.min(self.bytes.len());
        if extra > 0 {
            return Err(OptionError::TrailingData {
                option: self.option,
                extra,
            });
        }
        Ok(())
    }
}

/// Checks the protocol's rules for strings: UTF-8, no NUL, at most 4096 bytes.
fn nbd_string(option: u32, field: &'static str, bytes: &[u8]) -> Result<String, OptionError> {
    let bad = |reason| OptionError::BadString {
        option,
        field,
        reason,
    };
    if bytes.len() > MAX_STRING_LENGTH {
        return Err(bad("longer than 4096 bytes"));
    }
    if bytes.contains(&0) {
        return Err(bad("contains NUL"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8"))
}

impl ClientOption {
    /// Parses an option's payload. The caller has already bounded `data` by
    /// `MAX_OPTION_LENGTH`.
    pub fn parse(code: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
        let no_data = |value: ClientOption| {
            if data.is_empty() {
                Ok(value)
            } else {
                Err(OptionError::UnexpectedData {
                    option: code,
                    length: data.len(),
                })
            }
        };
        match code {
            option::EXPORT_NAME => Ok(ClientOption::ExportName(nbd_string(
                code,
                "export name",
                data,
            )?)),
            option::ABORT => Ok(ClientOption::Abort),
            option::LIST => no_data(ClientOption::List),
            option::STARTTLS => no_data(ClientOption::StartTls),
            option::STRUCTURED_REPLY => no_data(ClientOption::StructuredReply),
            option::INFO | option::GO => {
                let request = parse_info_request(code, data)?;
                Ok(if code == option::INFO {
                    ClientOption::Info(request)
                } else {
                    ClientOption::Go(request)
                })
            }
            option::LIST_META_CONTEXT | option::SET_META_CONTEXT => {
                let request = parse_meta_request(code, data)?;
                Ok(if code == option::LIST_META_CONTEXT {
                    ClientOption::ListMetaContext(request)
                } else {
                    ClientOption::SetMetaContext(request)
                })
            }
            other => Ok(ClientOption::Unknown(other)),
        }
    }

    /// The request's bytes (header and payload), as a client sends them.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        let code = match self {
            ClientOption::ExportName(name) => {
                data.extend_from_slice(name.as_bytes());
                option::EXPORT_NAME
            }
            ClientOption::Abort => option::ABORT,
            ClientOption::List => option::LIST,
            ClientOption::StartTls => option::STARTTLS,
            ClientOption::StructuredReply => option::STRUCTURED_REPLY,
            ClientOption::Info(request) | ClientOption::Go(request) => {
                push_string(&mut data, &request.name);
                data.extend_from_slice(&(request.requests.len() as u16).to_be_bytes());
                for code in &request.requests {
                    data.extend_from_slice(&code.to_be_bytes());
                }
                if matches!(self, ClientOption::Info(_)) {
                    option::INFO
                } else {
                    option::GO
                }
            }
            ClientOption::ListMetaContext(request) | ClientOption::SetMetaContext(request) => {
                push_string(&mut data, &request.export);
                data.extend_from_slice(&(request.queries.len() as u32).to_be_bytes());
                for query in &request.queries {
                    push_string(&mut data, query);
                }
                if matches!(self, ClientOption::ListMetaContext(_)) {
                    option::LIST_META_CONTEXT
                } else {
                    option::SET_META_CONTEXT
                }
            }
            ClientOption::Unknown(code) => *code,
        };
        OptionHeader {
            magic: IHAVEOPT,
            option: code,
            length: data.len() as u32,
        }
        .emit(out);
        out.extend_from_slice(&data);
    }
}

fn push_string(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn parse_info_request(code: u32, data: &[u8]) -> Result<InfoRequest, OptionError> {
    let mut payload = Payload {
        option: code,
        bytes: data,
        at: 0,
    };
    let name = payload.string("export name")?;
    let count = payload.u16("information request count")?;
    let mut requests = Vec::with_capacity(usize::from(count).min(16));
    for _ in 0..count {
        requests.push(payload.u16("information request")?);
    }
    payload.finish()?;
    Ok(InfoRequest { name, requests })
}

fn parse_meta_request(code: u32, data: &[u8]) -> Result<MetaContextRequest, OptionError> {
    let mut payload = Payload {
        option: code,
        bytes: data,
        at: 0,
    };
    let export = payload.string("export name")?;
    let count = payload.u32("query count")?;
    if count > MAX_META_QUERIES {
        return Err(OptionError::TooManyQueries {
            option: code,
            count,
        });
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queries.push(payload.string("query")?);
    }
    payload.finish()?;
    Ok(MetaContextRequest { export, queries })
}

/// One fixed-newstyle option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    Ack,
    /// An export in a LIST answer.
    Server {
        name: String,
        description: String,
    },
    InfoExport {
        size: u64,
        flags: u16,
    },
    InfoName(String),
    InfoDescription(String),
    InfoBlockSize(BlockSizes),
    MetaContext {
        id: u32,
        name: String,
    },
    /// Any `NBD_REP_ERR_*`, with a message for the human at the client.
    Error {
        reply_type: u32,
        message: String,
    },
}

impl OptionReply {
    /// Appends this reply to `option` to `out`.
    pub fn emit(&self, option: u32, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        let reply_type = match self {
            OptionReply::Ack => reply::ACK,
            OptionReply::Server { name, description } => {
                push_string(&mut data, name);
                data.extend_from_slice(truncated(description).as_bytes());
                reply::SERVER
            }
            OptionReply::InfoExport { size, flags } => {
                data.extend_from_slice(&info::EXPORT.to_be_bytes());
                data.extend_from_slice(&size.to_be_bytes());
                data.extend_from_slice(&flags.to_be_bytes());
                reply::INFO
            }
            OptionReply::InfoName(name) => {
                data.extend_from_slice(&info::NAME.to_be_bytes());
                data.extend_from_slice(truncated(name).as_bytes());
                reply::INFO
            }
            OptionReply::InfoDescription(description) => {
                data.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                data.extend_from_slice(truncated(description).as_bytes());
                reply::INFO
            }
            OptionReply::InfoBlockSize(sizes) => {
                data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                data.extend_from_slice(&sizes.minimum.to_be_bytes());
                data.extend_from_slice(&sizes.preferred.to_be_bytes());
                data.extend_from_slice(&sizes.maximum.to_be_bytes());
                reply::INFO
            }
            OptionReply::MetaContext { id, name } => {
                data.extend_from_slice(&id.to_be_bytes());
                data.extend_from_slice(truncated(name).as_bytes());
                reply::META_CONTEXT
            }
            OptionReply::Error {
                reply_type,
                message,
            } => {
                data.extend_from_slice(truncated(message).as_bytes());
                *reply_type
            }
        };
        out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&reply_type.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&data);
    }
}

/// `value` cut to the protocol's 4096-byte string limit at a character boundary.
pub fn truncated(value: &str) -> &str {
    if value.len() <= MAX_STRING_LENGTH {
        return value;
    }
    let mut end = MAX_STRING_LENGTH;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// One option reply as a client reads it: header fields and the payload, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOptionReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

impl RawOptionReply {
    /// Parses one reply from the start of `bytes`; returns it and the bytes it used, or `None`
    /// when `bytes` does not hold a whole reply with the right magic.
    pub fn parse(bytes: &[u8]) -> Option<(RawOptionReply, usize)> {
        if be64(bytes, 0)? != OPTION_REPLY_MAGIC {
            return None;
        }
        let option = be32(bytes, 8)?;
        let reply_type = be32(bytes, 12)?;
        let length = be32(bytes, 16)? as usize;
        let end = OPTION_REPLY_HEADER_LEN.checked_add(length)?;
        let data = bytes.get(OPTION_REPLY_HEADER_LEN..end)?.to_vec();
        Some((
            RawOptionReply {
                option,
                reply_type,
                data,
            },
            end,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: ClientOption) {
        let mut bytes = Vec::new();
        value.emit(&mut bytes);
        let header = OptionHeader::parse(&bytes).unwrap();
        assert_eq!(header.magic, IHAVEOPT);
        assert_eq!(header.length as usize, bytes.len() - OPTION_HEADER_LEN);
        let parsed = ClientOption::parse(header.option, &bytes[OPTION_HEADER_LEN..]).unwrap();
        assert_eq!(parsed, value);
    }

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_flags() {
        assert_eq!(&greeting(), b"NBDMAGICIHAVEOPT\x00\x03");
    }

    #[test]
    fn options_round_trip() {
        round_trip(ClientOption::ExportName("iso@1".into()));
        round_trip(ClientOption::List);
        round_trip(ClientOption::StartTls);
        round_trip(ClientOption::StructuredReply);
        round_trip(ClientOption::Go(InfoRequest {
            name: "debian".into(),
            requests: vec![info::NAME, info::BLOCK_SIZE],
        }));
        round_trip(ClientOption::Info(InfoRequest {
            name: String::new(),
            requests: vec![],
        }));
        round_trip(ClientOption::SetMetaContext(MetaContextRequest {
            export: "x".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:a".into()],
        }));
        round_trip(ClientOption::ListMetaContext(MetaContextRequest {
            export: "x".into(),
            queries: vec![],
        }));
        round_trip(ClientOption::Unknown(0x1234));
    }

    #[test]
    fn go_as_qemu_sends_it_parses() {
        // NBD_OPT_GO for export "a" asking for NBD_INFO_BLOCK_SIZE, byte for byte.
        let data = [0, 0, 0, 1, b'a', 0, 1, 0, 3];
        assert_eq!(
            ClientOption::parse(option::GO, &data).unwrap(),
            ClientOption::Go(InfoRequest {
                name: "a".into(),
                requests: vec![info::BLOCK_SIZE]
            })
        );
    }

    #[test]
    fn info_name_longer_than_payload_is_invalid() {
        let data = [0, 0, 0, 9, b'a', 0, 0];
        let error = ClientOption::parse(option::INFO, &data).unwrap_err();
        assert!(matches!(error, OptionError::Truncated { .. }), "{error}");
        assert_eq!(error.reply_type(), reply::ERR_INVALID);
    }

    #[test]
    fn info_with_trailing_bytes_is_invalid() {
        let data = [0, 0, 0, 0, 0, 0, 9];
        assert!(matches!(
            ClientOption::parse(option::GO, &data),
            Err(OptionError::TrailingData { extra: 1, .. })
        ));
    }

    #[test]
    fn list_with_data_is_invalid() {
        assert!(matches!(
            ClientOption::parse(option::LIST, b"x"),
            Err(OptionError::UnexpectedData { .. })
        ));
    }

    #[test]
    fn abort_with_data_is_accepted() {
        assert_eq!(
            ClientOption::parse(option::ABORT, b"junk").unwrap(),
            ClientOption::Abort
        );
    }

    #[test]
    fn export_name_with_nul_or_bad_utf8_is_invalid() {
        assert!(ClientOption::parse(option::EXPORT_NAME, b"a\0b").is_err());
        assert!(ClientOption::parse(option::EXPORT_NAME, &[0xff, 0xfe]).is_err());
        assert!(ClientOption::parse(option::EXPORT_NAME, &[b'a'; 4097]).is_err());
    }

    #[test]
    fn too_many_meta_queries_is_too_big() {
        let mut data = vec![0, 0, 0, 0];
        data.extend_from_slice(&(MAX_META_QUERIES + 1).to_be_bytes());
        let error = ClientOption::parse(option::SET_META_CONTEXT, &data).unwrap_err();
        assert_eq!(error.reply_type(), reply::ERR_TOO_BIG);
    }

    #[test]
    fn huge_query_count_does_not_allocate() {
        let mut data = vec![0, 0, 0, 0];
        data.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(ClientOption::parse(option::LIST_META_CONTEXT, &data).is_err());
    }

    #[test]
    fn replies_emit_the_documented_bytes() {
        let mut out = Vec::new();
        OptionReply::InfoExport {
            size: 0x1000,
            flags: 0x0103,
        }
        .emit(option::GO, &mut out);
        let (raw, used) = RawOptionReply::parse(&out).unwrap();
        assert_eq!(used, out.len());
        assert_eq!(raw.option, option::GO);
        assert_eq!(raw.reply_type, reply::INFO);
        assert_eq!(raw.data, [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0x01, 0x03]);

        let mut out = Vec::new();
        OptionReply::InfoBlockSize(BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 25,
        })
        .emit(option::INFO, &mut out);
        let (raw, _) = RawOptionReply::parse(&out).unwrap();
        assert_eq!(raw.data, [0, 3, 0, 0, 2, 0, 0, 0, 16, 0, 2, 0, 0, 0]);

        let mut out = Vec::new();
        OptionReply::Server {
            name: "a".into(),
            description: "d".into(),
        }
        .emit(option::LIST, &mut out);
        let (raw, _) = RawOptionReply::parse(&out).unwrap();
        assert_eq!(raw.reply_type, reply::SERVER);
        assert_eq!(raw.data, [0, 0, 0, 1, b'a', b'd']);

        let mut out = Vec::new();
        OptionReply::MetaContext {
            id: 1,
            name: "base:allocation".into(),
        }
        .emit(option::SET_META_CONTEXT, &mut out);
        let (raw, _) = RawOptionReply::parse(&out).unwrap();
        assert_eq!(raw.reply_type, reply::META_CONTEXT);
        assert_eq!(&raw.data[..4], &[0, 0, 0, 1]);
        assert_eq!(&raw.data[4..], b"base:allocation");
    }

    #[test]
    fn error_messages_are_cut_at_4096_bytes() {
        let mut out = Vec::new();
        OptionReply::Error {
            reply_type: reply::ERR_UNKNOWN,
            message: "é".repeat(3000),
        }
        .emit(option::GO, &mut out);
        let (raw, _) = RawOptionReply::parse(&out).unwrap();
        assert_eq!(raw.reply_type, reply::ERR_UNKNOWN);
        assert!(raw.data.len() <= MAX_STRING_LENGTH);
        assert!(std::str::from_utf8(&raw.data).is_ok());
    }
}
