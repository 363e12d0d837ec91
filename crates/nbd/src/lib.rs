//! The NBD protocol (fixed newstyle handshake, options, simple and structured replies,
//! meta contexts) as plain functions and state machines over bytes, in the smoltcp shape:
//! callers feed received bytes in and take bytes to send and "read N bytes at O" needs out.
//! No sockets, no threads, no allocation sized by an unchecked field.
//!
//! - [`wire`]: the protocol's numbers, the error values and the named limits.
//! - [`option`]: the handshake codec (greeting, typed option requests, option replies).
//! - [`handshake`]: the handshake state machine that yields actions for a driver.
//! - [`transmission`]: request headers, the request validator, simple and structured
//!   replies, and the read / block-status planners.
//!
//! Architecture invariant: this crate never touches a socket, a file or a clock; the server
//! crate's `nbd` module drives it.
#![forbid(unsafe_code)]

pub mod fuzzing;
pub mod handshake;
pub mod option;
pub mod transmission;
pub mod wire;

pub use handshake::{
    Action, ExportEntry, ExportInfo, Handshake, HandshakeError, Negotiated, TlsPolicy,
};
pub use option::{ClientOption, InfoRequest, MetaContextRequest, OptionError, OptionReply};
pub use transmission::{
    Command, Descriptor, Extent, ReadPiece, Refusal, Request, RequestError, RequestHeader, Session,
};
pub use wire::{BlockSizes, NbdError};
