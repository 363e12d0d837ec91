//! The fixed-newstyle handshake as a state machine over bytes: the caller feeds what it reads
//! from the client and polls for actions ("send these bytes", "list the exports", "open export
//! X", "start TLS", "enter transmission"). No I/O happens here, so every path, including every
//! malformed input, is testable on byte strings.
//!
//! Driver loop: `poll()`; on `Send` write the bytes; on `NeedInput` read and `feed()`; on
//! `ListExports` / `OpenExport` / `StartTls` do the work and answer with `exports_listed` /
//! `export_opened` / `tls_started`; on `Abort` close softly; on `Enter` switch to transmission.
//! A `HandshakeError` means a hard disconnect. `Send` always comes before the action that
//! follows it, so the client sees an ACK before the server starts TLS or transmission.

use crate::option::{
    greeting, ClientOption, InfoRequest, MetaContextRequest, OptionHeader, OptionReply,
    OPTION_HEADER_LEN,
};
use crate::wire::{
    client_flags, info, option, reply, transmission_flags, BlockSizes, BASE_ALLOCATION,
    BASE_ALLOCATION_ID, IHAVEOPT, MAX_OPTIONS, MAX_OPTION_LENGTH,
};

/// Whether and how this server offers TLS (the protocol's NOTLS / FORCEDTLS modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No TLS: STARTTLS is refused with `NBD_REP_ERR_POLICY`.
    Unavailable,
    /// STARTTLS is accepted; clients may also go on in plain text.
    Optional,
    /// Every option but STARTTLS and ABORT is refused with `NBD_REP_ERR_TLS_REQD` until TLS.
    Required,
}

/// What the server knows about an export once it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The canonical name (sent as `NBD_INFO_NAME`).
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
    /// FLUSH on one connection covers writes made on all others.
    pub multi_conn: bool,
    pub block_sizes: BlockSizes,
}

impl ExportInfo {
    /// The transmission flags for this export; SEND_DF only once structured replies are on.
    pub fn transmission_flags(&self, structured_replies: bool) -> u16 {
        use transmission_flags::*;
        let mut flags = HAS_FLAGS | SEND_FLUSH | SEND_CACHE;
        if self.read_only {
            flags |= READ_ONLY;
        } else {
            flags |= SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES;
        }
        if self.multi_conn {
            flags |= CAN_MULTI_CONN;
        }
        if structured_replies {
            flags |= SEND_DF;
        }
        flags
    }
}

/// One export in a LIST answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    pub name: String,
    pub description: String,
}

/// Everything transmission needs, decided by the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The name the client asked for.
    pub export_name: String,
    pub info: ExportInfo,
    /// The transmission flags sent to the client.
    pub flags: u16,
    pub structured_replies: bool,
    /// The id of `base:allocation` when the client selected it for this export.
    pub base_allocation: Option<u32>,
    /// Bytes the client sent after the final option (pipelined requests).
    pub leftover: Vec<u8>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Read more bytes and `feed` them.
    NeedInput,
    /// Answer with `exports_listed`.
    ListExports,
    /// Open the export and answer with `export_opened`.
    OpenExport { name: String },
    /// Upgrade the connection to TLS (the ACK is already sent), then call `tls_started`.
    StartTls,
    /// The client aborted (the ACK is already sent): close the connection.
    Abort,
    /// Enter the transmission phase (the final reply is already sent).
    Enter(Box<Negotiated>),
}

/// Why the handshake ends in a hard disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("client flags {0:#x} include flags this server does not know")]
    UnknownClientFlags(u32),
    #[error("option header has magic {0:#018x}, not IHAVEOPT")]
    BadOptionMagic(u64),
    #[error("option {option} announces {length} bytes of data, more than the {MAX_OPTION_LENGTH}-byte limit")]
    OptionTooLong { option: u32, length: u32 },
    #[error("more than {MAX_OPTIONS} options in one handshake")]
    TooManyOptions,
    #[error("export {name:?} requested with NBD_OPT_EXPORT_NAME cannot be opened: {reason}")]
    ExportNameRefused { name: String, reason: String },
    #[error("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS")]
    TlsRequired,
    #[error("the client sent {0} bytes after STARTTLS before the TLS handshake")]
    DataAfterStartTls(usize),
    #[error("the driver answered {0} while the handshake was not waiting for it")]
    UnexpectedAnswer(&'static str),
    #[error("the handshake is already over")]
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenPurpose {
    Info(InfoRequest),
    Go(InfoRequest),
    ExportName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    Listing,
    Opening(OpenPurpose),
    StartingTls,
    /// Ends with this action once the pending output is sent.
    Ending(Action),
    Finished,
}

/// The meta-context selection from the last SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// The handshake state machine; see the module documentation for the driver loop.
#[derive(Debug)]
pub struct Handshake {
    policy: TlsPolicy,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    fixed_newstyle: bool,
    no_zeroes: bool,
    tls_active: bool,
    structured_replies: bool,
    meta: Option<MetaSelection>,
    options_seen: u32,
}

impl Handshake {
    /// A new handshake; the greeting is the first thing `poll` asks to send.
    pub fn new(policy: TlsPolicy) -> Handshake {
        Handshake {
            policy,
            state: State::ClientFlags,
            input: Vec::new(),
            output: greeting().to_vec(),
            fixed_newstyle: false,
            no_zeroes: false,
            tls_active: false,
            structured_replies: false,
            meta: None,
            options_seen: 0,
        }
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// How many more bytes the current step needs at least (a hint for read sizes).
    pub fn wanted(&self) -> usize {
        match self.state {
            State::ClientFlags => 4usize.saturating_sub(self.input.len()),
            State::Options => match OptionHeader::parse(&self.input) {
                Some(header) => {
                    (OPTION_HEADER_LEN + header.length as usize).saturating_sub(self.input.len())
                }
                None => OPTION_HEADER_LEN - self.input.len(),
            },
            _ => 0,
        }
    }

    /// Whether TLS is running on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The next action; see the module documentation.
    pub fn poll(&mut self) -> Result<Action, HandshakeError> {
        if !self.output.is_empty() {
            return Ok(Action::Send(std::mem::take(&mut self.output)));
        }
        match &self.state {
            State::Finished => Err(HandshakeError::Finished),
            State::Ending(_) => {
                let State::Ending(action) = std::mem::replace(&mut self.state, State::Finished)
                else {
                    return Err(HandshakeError::Finished);
                };
                Ok(action)
            }
            State::Listing => Ok(Action::ListExports),
            State::Opening(purpose) => Ok(Action::OpenExport {
                name: match purpose {
                    OpenPurpose::Info(request) | OpenPurpose::Go(request) => request.name.clone(),
                    OpenPurpose::ExportName(name) => name.clone(),
                },
            }),
            State::StartingTls => {
                if !self.input.is_empty() {
                    let count = self.input.len();
                    self.state = State::Finished;
                    return Err(HandshakeError::DataAfterStartTls(count));
                }
                Ok(Action::StartTls)
            }
            State::ClientFlags => self.client_flags(),
            State::Options => self.next_option(),
        }
    }

    fn fail(&mut self, error: HandshakeError) -> Result<Action, HandshakeError> {
        self.state = State::Finished;
        Err(error)
    }

    fn client_flags(&mut self) -> Result<Action, HandshakeError> {
        let Some(flags) = vmedia_io::bytes::be32(&self.input, 0) else {
            return Ok(Action::NeedInput);
        };
        self.input.drain(..4);
        if flags & !client_flags::KNOWN != 0 {
            return self.fail(HandshakeError::UnknownClientFlags(flags));
        }
        self.fixed_newstyle = flags & client_flags::FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & client_flags::NO_ZEROES != 0;
        self.state = State::Options;
        self.poll()
    }

    fn next_option(&mut self) -> Result<Action, HandshakeError> {
        let Some(header) = OptionHeader::parse(&self.input) else {
            return Ok(Action::NeedInput);
        };
        if header.magic != IHAVEOPT {
            return self.fail(HandshakeError::BadOptionMagic(header.magic));
        }
        if header.length > MAX_OPTION_LENGTH {
            return self.fail(HandshakeError::OptionTooLong {
                option: header.option,
                length: header.length,
            });
        }
        let end = OPTION_HEADER_LEN + header.length as usize;
        if self.input.len() < end {
            return Ok(Action::NeedInput);
        }
        self.options_seen += 1;
        if self.options_seen > MAX_OPTIONS {
            return self.fail(HandshakeError::TooManyOptions);
        }
        let data: Vec<u8> = self.input.drain(..end).skip(OPTION_HEADER_LEN).collect();
        self.handle_option(header.option, &data)?;
        self.poll()
    }

    fn reply(&mut self, option: u32, reply: OptionReply) {
        reply.emit(option, &mut self.output);
    }

    fn error(&mut self, option: u32, reply_type: u32, message: impl Into<String>) {
        self.reply(
            option,
            OptionReply::Error {
                reply_type,
                message: message.into(),
            },
        );
    }

    fn handle_option(&mut self, code: u32, data: &[u8]) -> Result<(), HandshakeError> {
        let tls_missing = self.policy == TlsPolicy::Required && !self.tls_active;
        if tls_missing && code == option::EXPORT_NAME {
            self.state = State::Finished;
            return Err(HandshakeError::TlsRequired);
        }
        if tls_missing && code != option::STARTTLS && code != option::ABORT {
            self.error(
                code,
                reply::ERR_TLS_REQD,
                "TLS is required: send STARTTLS first",
            );
            return Ok(());
        }
        let parsed = match ClientOption::parse(code, data) {
            Ok(parsed) => parsed,
            Err(error) => {
                if code == option::EXPORT_NAME {
                    self.state = State::Finished;
                    return Err(HandshakeError::ExportNameRefused {
                        name: String::from_utf8_lossy(data).into_owned(),
                        reason: error.to_string(),
                    });
                }
                // A failed SET_META_CONTEXT still replaces the selection.
                if code == option::SET_META_CONTEXT {
                    self.meta = None;
                }
                self.error(code, error.reply_type(), error.to_string());
                return Ok(());
            }
        };
        match parsed {
            ClientOption::ExportName(name) => {
                self.state = State::Opening(OpenPurpose::ExportName(name));
            }
            ClientOption::Abort => {
                self.reply(code, OptionReply::Ack);
                self.state = State::Ending(Action::Abort);
            }
            ClientOption::List => self.state = State::Listing,
            ClientOption::StartTls => self.start_tls(code),
            ClientOption::Info(request) => self.state = State::Opening(OpenPurpose::Info(request)),
            ClientOption::Go(request) => self.state = State::Opening(OpenPurpose::Go(request)),
            ClientOption::StructuredReply => {
                self.structured_replies = true;
                self.reply(code, OptionReply::Ack);
            }
            ClientOption::ListMetaContext(request) => self.meta_context(code, request, false),
            ClientOption::SetMetaContext(request) => self.meta_context(code, request, true),
            ClientOption::Unknown(_) => self.error(
                code,
                reply::ERR_UNSUP,
                format!("option {code} is not supported"),
            ),
        }
        Ok(())
    }

    fn start_tls(&mut self, code: u32) {
        if self.tls_active {
            self.error(code, reply::ERR_INVALID, "TLS is already running");
        } else if self.policy == TlsPolicy::Unavailable {
            self.error(code, reply::ERR_POLICY, "this server does not offer TLS");
        } else if !self.fixed_newstyle {
            self.error(
                code,
                reply::ERR_INVALID,
                "STARTTLS needs fixed newstyle negotiation",
            );
        } else {
            self.reply(code, OptionReply::Ack);
            self.state = State::StartingTls;
        }
    }

    fn meta_context(&mut self, code: u32, request: MetaContextRequest, select: bool) {
        if select {
            self.meta = None;
        }
        if !self.structured_replies {
            self.error(
                code,
                reply::ERR_INVALID,
                "meta contexts need structured replies first",
            );
            return;
        }
        let mut base_allocation = false;
        if request.queries.is_empty() {
            // LIST with no query lists everything; SET with no query selects nothing.
            base_allocation = !select;
        }
        for query in &request.queries {
            let Some((namespace, leaf)) = query.split_once(':') else {
                self.error(
                    code,
                    reply::ERR_INVALID,
                    format!("meta-context query {query:?} has no namespace"),
                );
                return;
            };
            if namespace == "base" && (leaf == "allocation" || (!select && leaf.is_empty())) {
                base_allocation = true;
            }
        }
        if base_allocation {
            self.reply(
                code,
                OptionReply::MetaContext {
                    id: BASE_ALLOCATION_ID,
                    name: BASE_ALLOCATION.to_string(),
                },
            );
        }
        self.reply(code, OptionReply::Ack);
        if select {
            self.meta = Some(MetaSelection {
                export: request.export,
                base_allocation,
            });
        }
    }

    /// The answer to `ListExports`.
    pub fn exports_listed(
        &mut self,
        exports: Result<Vec<ExportEntry>, String>,
    ) -> Result<(), HandshakeError> {
        if self.state != State::Listing {
            return Err(HandshakeError::UnexpectedAnswer("exports_listed"));
        }
        match exports {
            Ok(exports) => {
                for export in exports {
                    self.reply(
                        option::LIST,
                        OptionReply::Server {
                            name: export.name,
                            description: export.description,
                        },
                    );
                }
                self.reply(option::LIST, OptionReply::Ack);
            }
            // The protocol has no error for "the list failed"; UNKNOWN with the reason is
            // what clients show to their user.
            Err(message) => self.error(option::LIST, reply::ERR_UNKNOWN, message),
        }
        self.state = State::Options;
        Ok(())
    }

    /// The answer to `OpenExport`: the export's facts, or why it cannot be opened.
    pub fn export_opened(
        &mut self,
        opened: Result<ExportInfo, String>,
    ) -> Result<(), HandshakeError> {
        let State::Opening(purpose) = std::mem::replace(&mut self.state, State::Options) else {
            return Err(HandshakeError::UnexpectedAnswer("export_opened"));
        };
        let (request, code, go) = match purpose {
            OpenPurpose::ExportName(name) => {
                return match opened {
                    Ok(info) => {
                        self.enter_by_export_name(name, info);
                        Ok(())
                    }
                    Err(reason) => {
                        self.state = State::Finished;
                        Err(HandshakeError::ExportNameRefused { name, reason })
                    }
                };
            }
            OpenPurpose::Info(request) => (request, option::INFO, false),
            OpenPurpose::Go(request) => (request, option::GO, true),
        };
        let info = match opened {
            Ok(info) => info,
            Err(message) => {
                self.error(code, reply::ERR_UNKNOWN, message);
                return Ok(());
            }
        };
        let flags = info.transmission_flags(self.structured_replies);
        self.reply(
            code,
            OptionReply::InfoExport {
                size: info.size,
                flags,
            },
        );
        if request.requests.contains(&info::NAME) {
            self.reply(code, OptionReply::InfoName(info.name.clone()));
        }
        if request.requests.contains(&info::DESCRIPTION) && !info.description.is_empty() {
            self.reply(code, OptionReply::InfoDescription(info.description.clone()));
        }
        // Sent whether asked or not: clients that ignore it are still served (requests
        // outside the constraints get EINVAL), clients that read it obey it.
        self.reply(code, OptionReply::InfoBlockSize(info.block_sizes));
        self.reply(code, OptionReply::Ack);
        if go {
            let negotiated = self.negotiated(request.name, info, flags);
            self.state = State::Ending(Action::Enter(Box::new(negotiated)));
        }
        Ok(())
    }

    fn enter_by_export_name(&mut self, name: String, info: ExportInfo) {
        let flags = info.transmission_flags(self.structured_replies);
        self.output.extend_from_slice(&info.size.to_be_bytes());
        self.output.extend_from_slice(&flags.to_be_bytes());
        if !self.no_zeroes {
            self.output.extend_from_slice(&[0u8; 124]);
        }
        let negotiated = self.negotiated(name, info, flags);
        self.state = State::Ending(Action::Enter(Box::new(negotiated)));
    }

    fn negotiated(&mut self, export_name: String, info: ExportInfo, flags: u16) -> Negotiated {
        let base_allocation = match &self.meta {
            Some(meta) if meta.base_allocation && meta.export == export_name => {
                Some(BASE_ALLOCATION_ID)
            }
            _ => None,
        };
        Negotiated {
            export_name,
            info,
            flags,
            structured_replies: self.structured_replies,
            base_allocation,
            leftover: std::mem::take(&mut self.input),
        }
    }

    /// The answer to `StartTls`: TLS now runs, and negotiation starts over inside it.
    pub fn tls_started(&mut self) -> Result<(), HandshakeError> {
        if self.state != State::StartingTls {
            return Err(HandshakeError::UnexpectedAnswer("tls_started"));
        }
        self.tls_active = true;
        // The protocol forbids keeping negotiation state across STARTTLS.
        self.structured_replies = false;
        self.meta = None;
        self.state = State::Options;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::option::{RawOptionReply, GREETING_LEN};
    use crate::wire::BlockSizes;

    fn info(name: &str, read_only: bool) -> ExportInfo {
        ExportInfo {
            name: name.to_string(),
            description: format!("{name} description"),
            size: 1 << 20,
            read_only,
            multi_conn: true,
            block_sizes: BlockSizes::DEFAULT,
        }
    }

    /// What a driver observed: the option replies, any non-reply bytes, and how it ended.
    #[derive(Debug, Default)]
    struct Outcome {
        replies: Vec<RawOptionReply>,
        raw: Vec<u8>,
        end: Option<Result<Action, HandshakeError>>,
        tls_started: bool,
    }

    /// Drives `handshake` like a server would, with exports "a" (read-only) and "w", feeding
    /// `client` in pieces of `step` bytes; stops at Enter, Abort, an error or input exhausted.
    fn drive(handshake: &mut Handshake, client: &[u8], step: usize) -> Outcome {
        let mut outcome = Outcome::default();
        let mut chunks = client.chunks(step.max(1));
        let mut greeted = false;
        loop {
            match handshake.poll() {
                Ok(Action::Send(bytes)) => {
                    let mut bytes = &bytes[..];
                    if !greeted && bytes.starts_with(b"NBDMAGIC") {
                        assert_eq!(&bytes[..GREETING_LEN], &greeting());
                        bytes = &bytes[GREETING_LEN..];
                        greeted = true;
                    }
                    let mut at = 0;
                    while let Some((reply, used)) = RawOptionReply::parse(&bytes[at..]) {
                        outcome.replies.push(reply);
                        at += used;
                    }
                    outcome.raw.extend_from_slice(&bytes[at..]);
                }
                Ok(Action::NeedInput) => match chunks.next() {
                    Some(chunk) => handshake.feed(chunk),
                    None => return outcome,
                },
                Ok(Action::ListExports) => handshake
                    .exports_listed(Ok(vec![
                        ExportEntry {
                            name: "a".into(),
                            description: "first".into(),
                        },
                        ExportEntry {
                            name: "w".into(),
                            description: String::new(),
                        },
                    ]))
                    .unwrap(),
                Ok(Action::OpenExport { name }) => {
                    let opened = match name.as_str() {
                        "a" => Ok(info("a", true)),
                        "w" => Ok(info("w", false)),
                        _ => Err(format!("no such export: {name}")),
                    };
                    if let Err(error) = handshake.export_opened(opened) {
                        outcome.end = Some(Err(error));
                        return outcome;
                    }
                }
                Ok(Action::StartTls) => {
                    outcome.tls_started = true;
                    handshake.tls_started().unwrap();
                }
                Ok(action) => {
                    outcome.end = Some(Ok(action));
                    return outcome;
                }
                Err(error) => {
                    outcome.end = Some(Err(error));
                    return outcome;
                }
            }
        }
    }

    fn client(flags: u32, options: &[ClientOption]) -> Vec<u8> {
        let mut bytes = flags.to_be_bytes().to_vec();
        for option in options {
            option.emit(&mut bytes);
        }
        bytes
    }

    fn go(name: &str, requests: &[u16]) -> ClientOption {
        ClientOption::Go(InfoRequest {
            name: name.into(),
            requests: requests.to_vec(),
        })
    }

    fn set_meta(export: &str, queries: &[&str]) -> ClientOption {
        ClientOption::SetMetaContext(MetaContextRequest {
            export: export.into(),
            queries: queries.iter().map(|query| query.to_string()).collect(),
        })
    }

    fn entered(outcome: &Outcome) -> &Negotiated {
        match &outcome.end {
            Some(Ok(Action::Enter(negotiated))) => negotiated,
            other => panic!("expected Enter, got {other:?}"),
        }
    }

    const FIXED: u32 = client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES;

    #[test]
    fn go_with_structured_replies_and_base_allocation_enters_transmission() {
        let bytes = client(
            FIXED,
            &[
                ClientOption::StructuredReply,
                set_meta("a", &["base:allocation"]),
                go("a", &[info::NAME, info::BLOCK_SIZE, info::DESCRIPTION]),
            ],
        );
        for step in [1, 3, bytes.len()] {
            let mut handshake = Handshake::new(TlsPolicy::Unavailable);
            let outcome = drive(&mut handshake, &bytes, step);
            let negotiated = entered(&outcome);
            assert_eq!(negotiated.export_name, "a");
            assert!(negotiated.structured_replies);
            assert_eq!(negotiated.base_allocation, Some(BASE_ALLOCATION_ID));
            let flags = negotiated.flags;
            use transmission_flags::*;
            assert_eq!(
                flags,
                HAS_FLAGS | READ_ONLY | SEND_FLUSH | SEND_CACHE | CAN_MULTI_CONN | SEND_DF
            );
            let types: Vec<u32> = outcome.replies.iter().map(|r| r.reply_type).collect();
            assert_eq!(
                types,
                [
                    reply::ACK,
                    reply::META_CONTEXT,
                    reply::ACK,
                    reply::INFO,
                    reply::INFO,
                    reply::INFO,
                    reply::INFO,
                    reply::ACK
                ]
            );
            let export = &outcome.replies[3].data;
            assert_eq!(&export[..2], &info::EXPORT.to_be_bytes());
            assert_eq!(&export[2..10], &(1u64 << 20).to_be_bytes());
            assert_eq!(&export[10..], &flags.to_be_bytes());
        }
    }

    #[test]
    fn writable_export_advertises_fua_trim_and_write_zeroes() {
        let bytes = client(FIXED, &[go("w", &[])]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        let flags = entered(&outcome).flags;
        use transmission_flags::*;
        assert_eq!(flags & READ_ONLY, 0);
        assert_ne!(flags & SEND_FUA, 0);
        assert_ne!(flags & SEND_TRIM, 0);
        assert_ne!(flags & SEND_WRITE_ZEROES, 0);
        // No structured replies, so no DF.
        assert_eq!(flags & SEND_DF, 0);
    }

    #[test]
    fn unknown_client_flags_close_the_connection() {
        let bytes = client(0x8000_0001, &[]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 4);
        assert_eq!(
            outcome.end,
            Some(Err(HandshakeError::UnknownClientFlags(0x8000_0001)))
        );
    }

    #[test]
    fn bad_option_magic_closes_the_connection() {
        let mut bytes = FIXED.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert!(matches!(
            outcome.end,
            Some(Err(HandshakeError::BadOptionMagic(_)))
        ));
    }

    #[test]
    fn option_longer_than_the_limit_closes_before_its_data_arrives() {
        let mut bytes = FIXED.to_be_bytes().to_vec();
        OptionHeader {
            magic: IHAVEOPT,
            option: option::GO,
            length: MAX_OPTION_LENGTH + 1,
        }
        .emit(&mut bytes);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert!(matches!(
            outcome.end,
            Some(Err(HandshakeError::OptionTooLong { .. }))
        ));
    }

    #[test]
    fn unknown_option_is_unsupported_and_haggling_goes_on() {
        let bytes = client(FIXED, &[ClientOption::Unknown(42), go("a", &[])]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert_eq!(outcome.replies[0].reply_type, reply::ERR_UNSUP);
        assert_eq!(outcome.replies[0].option, 42);
        entered(&outcome);
    }

    #[test]
    fn list_answers_one_server_reply_per_export_then_ack() {
        let bytes = client(FIXED, &[ClientOption::List, ClientOption::Abort]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        let types: Vec<u32> = outcome.replies.iter().map(|r| r.reply_type).collect();
        assert_eq!(
            types,
            [reply::SERVER, reply::SERVER, reply::ACK, reply::ACK]
        );
        assert_eq!(outcome.replies[0].data, b"\0\0\0\x01afirst");
        assert_eq!(outcome.end, Some(Ok(Action::Abort)));
    }

    #[test]
    fn info_or_go_for_a_missing_export_is_unknown_and_haggling_goes_on() {
        let bytes = client(
            FIXED,
            &[
                ClientOption::Info(InfoRequest {
                    name: "nope".into(),
                    requests: vec![],
                }),
                go("nope", &[]),
                go("a", &[]),
            ],
        );
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert_eq!(outcome.replies[0].reply_type, reply::ERR_UNKNOWN);
        assert_eq!(outcome.replies[1].reply_type, reply::ERR_UNKNOWN);
        assert_eq!(outcome.replies[1].data, b"no such export: nope");
        entered(&outcome);
    }

    #[test]
    fn export_name_answers_size_flags_and_zeroes_unless_no_zeroes() {
        for (flags, padding) in [(FIXED, 0), (client_flags::FIXED_NEWSTYLE, 124)] {
            let bytes = client(flags, &[ClientOption::ExportName("a".into())]);
            let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
            let negotiated = entered(&outcome);
            assert_eq!(outcome.raw.len(), 10 + padding);
            assert_eq!(&outcome.raw[..8], &(1u64 << 20).to_be_bytes());
            assert_eq!(&outcome.raw[8..10], &negotiated.flags.to_be_bytes());
            assert!(outcome.raw[10..].iter().all(|byte| *byte == 0));
        }
    }

    #[test]
    fn export_name_for_a_missing_export_is_a_hard_disconnect() {
        let bytes = client(FIXED, &[ClientOption::ExportName("nope".into())]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert!(matches!(
            outcome.end,
            Some(Err(HandshakeError::ExportNameRefused { .. }))
        ));
    }

    #[test]
    fn required_tls_refuses_other_options_until_starttls() {
        let bytes = client(
            FIXED,
            &[
                go("a", &[]),
                ClientOption::List,
                ClientOption::StartTls,
                ClientOption::StartTls,
                go("a", &[]),
            ],
        );
        let mut handshake = Handshake::new(TlsPolicy::Required);
        // The client waits for the STARTTLS ACK before it sends more: feed in two parts.
        let split = client(
            FIXED,
            &[go("a", &[]), ClientOption::List, ClientOption::StartTls],
        )
        .len();
        let mut outcome = drive(&mut handshake, &bytes[..split], split);
        assert!(outcome.tls_started);
        assert!(handshake.tls_active());
        let rest = drive(&mut handshake, &bytes[split..], 64);
        outcome.replies.extend(rest.replies.iter().cloned());
        let types: Vec<u32> = outcome.replies.iter().map(|r| r.reply_type).collect();
        assert_eq!(
            &types[..4],
            [
                reply::ERR_TLS_REQD,
                reply::ERR_TLS_REQD,
                reply::ACK,
                reply::ERR_INVALID
            ]
        );
        entered(&rest);
    }

    #[test]
    fn required_tls_closes_on_export_name_in_plain_text() {
        let bytes = client(FIXED, &[ClientOption::ExportName("a".into())]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Required), &bytes, 64);
        assert_eq!(outcome.end, Some(Err(HandshakeError::TlsRequired)));
    }

    #[test]
    fn starttls_without_tls_configured_is_policy() {
        let bytes = client(FIXED, &[ClientOption::StartTls, go("a", &[])]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert_eq!(outcome.replies[0].reply_type, reply::ERR_POLICY);
        entered(&outcome);
    }

    #[test]
    fn starttls_forgets_structured_replies_and_meta_contexts() {
        let before = client(
            FIXED,
            &[
                ClientOption::StructuredReply,
                set_meta("a", &["base:allocation"]),
                ClientOption::StartTls,
            ],
        );
        let mut handshake = Handshake::new(TlsPolicy::Optional);
        let outcome = drive(&mut handshake, &before, 1024);
        assert!(outcome.tls_started);
        let mut after = Vec::new();
        go("a", &[]).emit(&mut after);
        let outcome = drive(&mut handshake, &after, 1024);
        let negotiated = entered(&outcome);
        assert!(!negotiated.structured_replies);
        assert_eq!(negotiated.base_allocation, None);
    }

    #[test]
    fn bytes_pipelined_after_starttls_close_the_connection() {
        let mut bytes = client(FIXED, &[ClientOption::StartTls]);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let outcome = drive(&mut Handshake::new(TlsPolicy::Optional), &bytes, 1024);
        assert_eq!(outcome.end, Some(Err(HandshakeError::DataAfterStartTls(3))));
    }

    #[test]
    fn meta_context_needs_structured_replies() {
        let bytes = client(FIXED, &[set_meta("a", &["base:allocation"]), go("a", &[])]);
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert_eq!(outcome.replies[0].reply_type, reply::ERR_INVALID);
        assert_eq!(entered(&outcome).base_allocation, None);
    }

    #[test]
    fn meta_context_set_for_another_export_does_not_apply() {
        let bytes = client(
            FIXED,
            &[
                ClientOption::StructuredReply,
                set_meta("w", &["base:allocation"]),
                go("a", &[]),
            ],
        );
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        assert_eq!(entered(&outcome).base_allocation, None);
    }

    #[test]
    fn list_meta_context_wildcards_and_unknown_namespaces() {
        let list = |queries: &[&str]| {
            ClientOption::ListMetaContext(MetaContextRequest {
                export: "a".into(),
                queries: queries.iter().map(|query| query.to_string()).collect(),
            })
        };
        let bytes = client(
            FIXED,
            &[
                ClientOption::StructuredReply,
                list(&[]),
                list(&["base:"]),
                list(&["qemu:dirty-bitmap:x"]),
                list(&["nocolon"]),
                set_meta("a", &["base:"]),
            ],
        );
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 64);
        let types: Vec<u32> = outcome.replies.iter().map(|r| r.reply_type).collect();
        assert_eq!(
            types,
            [
                reply::ACK,
                reply::META_CONTEXT,
                reply::ACK,
                reply::META_CONTEXT,
                reply::ACK,
                reply::ACK,
                reply::ERR_INVALID,
                // SET with the bare namespace selects nothing.
                reply::ACK,
            ]
        );
    }

    #[test]
    fn requests_pipelined_after_go_are_handed_over() {
        let mut bytes = client(FIXED, &[go("a", &[])]);
        bytes.extend_from_slice(b"pipelined");
        let outcome = drive(&mut Handshake::new(TlsPolicy::Unavailable), &bytes, 1024);
        assert_eq!(entered(&outcome).leftover, b"pipelined");
    }

    #[test]
    fn answers_out_of_turn_are_refused() {
        let mut handshake = Handshake::new(TlsPolicy::Unavailable);
        assert!(handshake.export_opened(Ok(info("a", true))).is_err());
        assert!(handshake.exports_listed(Ok(vec![])).is_err());
        assert!(handshake.tls_started().is_err());
    }

    #[test]
    fn polling_after_the_end_is_an_error_not_a_panic() {
        let bytes = client(FIXED, &[ClientOption::Abort]);
        let mut handshake = Handshake::new(TlsPolicy::Unavailable);
        let outcome = drive(&mut handshake, &bytes, 64);
        assert_eq!(outcome.end, Some(Ok(Action::Abort)));
        assert_eq!(handshake.poll(), Err(HandshakeError::Finished));
    }
}
