//! TFTP: the read-transfer state machine (`session`) and the tokio server around it (`server`).

pub mod server;
pub mod session;
