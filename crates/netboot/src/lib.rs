//! Network boot server: proxy/full DHCP, TFTP with option extensions, HTTP, iPXE scripts,
//! per-machine rules, files straight from ISO images, and a status board.
//!
//! Layout (smoltcp style): `wire` holds the packet codecs, `tftp::session` and `dhcp::policy`
//! the state machines, `tftp::server`, `dhcp::server`, `http` the socket loops, and `server`
//! starts and stops them all inside the caller's tokio runtime ([`Server::start`]).
//! `files::FileRoot` (the confined, ISO-aware file tree) stands alone for other crates.
//!
//! Architecture invariant: this crate prints nothing; events are `tracing` events (per-machine
//! fields on spans) for the caller's subscriber, and the status board keeps the latest steps.

pub mod dhcp;
pub mod dhcp6;
pub mod files;
pub mod http;
pub mod net;
pub mod rules;
pub mod server;
pub mod status;
pub mod tftp;
pub mod wire;

pub use server::{Bound, Server, ServerHandle};

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use thiserror::Error;

/// Largest lease file we load.
pub const MAX_LEASE_FILE: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum NetbootError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Rules(#[from] rules::RuleError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{context}: a server task failed: {message}")]
    Task { context: String, message: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetbootError {
    let context = context.into();
    move |source| NetbootError::Io { context, source }
}

/// How DHCP runs.
#[derive(Debug, Clone)]
pub enum DhcpConfig {
    Off,
    Proxy,
    Full {
        first: Ipv4Addr,
        last: Ipv4Addr,
        router: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
        lease_secs: u32,
        lease_file: Option<PathBuf>,
    },
}

/// Everything [`Server::start`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub root: PathBuf,
    /// Address TFTP and HTTP bind to (0.0.0.0 = all).
    pub listen: Ipv4Addr,
    pub interface: Option<String>,
    /// Address advertised to clients; found from `interface` or `listen` when `None`.
    pub server_ip: Option<Ipv4Addr>,
    pub dhcp: DhcpConfig,
    pub tftp_port: Option<u16>,
    pub http_port: Option<u16>,
    pub bios_bootfile: Option<String>,
    pub uefi_bootfile: Option<String>,
    pub arm64_bootfile: Option<String>,
    /// `--ipxe-script`: a URL handed to iPXE, or a template file served at /boot.ipxe.
    pub ipxe_script: Option<String>,
    pub rules_file: Option<PathBuf>,
}

/// How DHCPv6 runs.
#[derive(Debug, Clone)]
pub enum Dhcp6Config {
    Off,
    /// Boot options only (option 59); addresses come from the network's own DHCPv6 server.
    Proxy,
    /// Addresses (IA_NA) from `first..=last` too.
    Full {
        first: Ipv6Addr,
        last: Ipv6Addr,
        dns: Vec<Ipv6Addr>,
        lease_secs: u32,
        lease_file: Option<PathBuf>,
    },
}

/// Network boot over IPv6, given to [`Server::start_with_ipv6`] beside the [`ServerConfig`]
/// (whose interface, ports, boot files and rules it shares).
#[derive(Debug, Clone)]
pub struct Ipv6Config {
    pub dhcp6: Dhcp6Config,
    /// Address the IPv6 HTTP listener binds (`::` = all); `None`: no IPv6 listener.
    pub listen: Option<Ipv6Addr>,
    /// Address put in boot file URLs; found from the interface when `None`.
    pub server_ip: Option<Ipv6Addr>,
}
