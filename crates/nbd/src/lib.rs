//! The NBD protocol (fixed newstyle handshake, options, simple and structured replies,
//! meta contexts) as plain functions and state machines over bytes, in the smoltcp shape:
//! callers feed received bytes in and take bytes to send and "read N bytes at O" needs out.
//! No sockets, no threads, no allocation sized by an unchecked field.
#![forbid(unsafe_code)]
