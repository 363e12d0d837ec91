//! Network boot server: proxy/full DHCP, TFTP with option extensions, HTTP, iPXE scripts,
//! per-machine rules, files straight from ISO images, and a status board.
//!
//! Layout (smoltcp style): `wire` holds the packet codecs, `tftp::session` and `dhcp::policy`
//! the state machines, and `tftp::server`, `dhcp::server`, `http` the tokio socket loops.
//!
//! Architecture invariant: this crate prints nothing; events go to the `EventSink` the caller
//! passes (the CLI writes one line per event to stderr).

pub mod dhcp;
pub mod files;
pub mod http;
pub mod net;
pub mod rules;
pub mod status;
pub mod tftp;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use dhcp::leases::{LeaseFile, LeaseTable};
use dhcp::policy::{BootFiles, IpxeScript, Mode, Policy};
use files::FileRoot;
use rules::Rules;
use status::{EventSink, Status};

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

/// Everything `serve` needs.
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

/// What `serve` bound, reported before it starts serving.
#[derive(Debug, Clone)]
pub struct Bound {
    pub server_ip: Option<Ipv4Addr>,
    pub tftp: Option<SocketAddrV4>,
    pub http: Option<SocketAddrV4>,
    pub dhcp: bool,
}

/// Binds every socket, then serves until a socket fails. `ready` is called once everything is
/// bound (the CLI prints a banner, tests wait for it).
pub fn serve(
    config: ServerConfig,
    sink: EventSink,
    ready: impl FnOnce(&Bound),
) -> Result<(), NetbootError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    runtime.block_on(serve_async(config, sink, ready))
}

async fn serve_async(
    config: ServerConfig,
    sink: EventSink,
    ready: impl FnOnce(&Bound),
) -> Result<(), NetbootError> {
    let status = Arc::new(Status::new(sink));
    let root = Arc::new(FileRoot::new(&config.root).map_err(io_err("--root"))?);
    let rules = match &config.rules_file {
        Some(path) => Rules::load(path)?,
        None => Rules::default(),
    };
    let (interface_ip, netmask) = match &config.interface {
        Some(ifname) => {
            let (ip, mask) =
                net::interface_ipv4(ifname).map_err(io_err(format!("--interface {ifname}")))?;
            (Some(ip), Some(mask))
        }
        None => (None, None),
    };
    let server_ip = config
        .server_ip
        .or(interface_ip)
        .or((!config.listen.is_unspecified()).then_some(config.listen));
    let ipxe_template = match &config.ipxe_script {
        Some(s) if !s.contains("://") => {
            let text = std::fs::read_to_string(s).map_err(io_err(format!("--ipxe-script {s}")))?;
            rules::render(&text, &rules::Vars::sample(), &format!("--ipxe-script {s}"))?;
            Some(text)
        }
        _ => None,
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Bound {
        server_ip,
        tftp: None,
        http: None,
        dhcp: false,
    };

    if !matches!(config.dhcp, DhcpConfig::Off) {
        let Some(server_ip) = server_ip else {
            return Err(NetbootError::Config(
                "DHCP needs the server's address: pass --interface IF (or --no-dhcp)".into(),
            ));
        };
        let Some(ifname) = config.interface.clone() else {
            return Err(NetbootError::Config(
                "DHCP answers broadcasts on one network: pass --interface IF (or --no-dhcp)".into(),
            ));
        };
        let ipxe = match (&config.ipxe_script, &config.rules_file) {
            (Some(s), _) if s.contains("://") => IpxeScript::Url(s.clone()),
            (Some(_), _) | (None, Some(_)) => IpxeScript::Generated,
            (None, None) => IpxeScript::None,
        };
        if ipxe == IpxeScript::Generated && config.http_port.is_none() {
            return Err(NetbootError::Config("iPXE scripts (--config or --ipxe-script FILE) are served over HTTP: do not disable --http-port".into()));
        }
        let mode = match &config.dhcp {
            DhcpConfig::Full {
                first,
                last,
                router,
                dns,
                lease_secs,
                lease_file,
            } => {
                let mut leases = LeaseTable::new(*first, *last, *lease_secs, server_ip)
                    .map_err(NetbootError::Config)?;
                for (mac, ip) in rules.reservations() {
                    leases.reserve(&mac, ip);
                }
                if let Some(path) = lease_file {
                    if let Ok(meta) = std::fs::metadata(path) {
                        if meta.len() > MAX_LEASE_FILE {
                            return Err(NetbootError::Config(format!(
                                "lease file {} is larger than {MAX_LEASE_FILE} bytes",
                                path.display()
                            )));
                        }
                        let text = std::fs::read(path)
                            .map_err(io_err(format!("lease file {}", path.display())))?;
                        let file: LeaseFile = serde_json::from_slice(&text).map_err(|e| {
                            NetbootError::Config(format!(
                                "lease file {} is not valid: {e}; move it away to start afresh",
                                path.display()
                            ))
                        })?;
                        leases.load(file);
                    }
                }
                Mode::Full {
                    leases,
                    subnet_mask: netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
                    router: *router,
                    dns: dns.clone(),
                }
            }
            _ => Mode::Proxy,
        };
        let lease_file = match &config.dhcp {
            DhcpConfig::Full { lease_file, .. } => lease_file.clone(),
            _ => None,
        };
        let policy = Policy {
            mode,
            server_ip,
            boot: BootFiles {
                bios: config.bios_bootfile.clone(),
                uefi_x64: config.uefi_bootfile.clone(),
                arm64: config.arm64_bootfile.clone(),
                http_port: config.http_port,
                ipxe,
            },
            rules: rules.clone(),
        };
        let socket_67 = net::udp_socket(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
            Some(&ifname),
            true,
        )
        .map_err(io_err("DHCP port 67"))?;
        let socket_4011 = net::udp_socket(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4011),
            Some(&ifname),
            true,
        )
        .map_err(io_err("PXE port 4011"))?;
        let server = dhcp::server::DhcpServer {
            policy,
            socket_67,
            socket_4011,
            status: status.clone(),
            lease_file,
        };
        tasks.spawn(async move { server.run().await.map_err(io_err("DHCP")) });
        bound.dhcp = true;
    }

    if let Some(port) = config.tftp_port {
        let socket = net::udp_socket(SocketAddrV4::new(config.listen, port), None, false)
            .map_err(io_err(format!("TFTP port {port}")))?;
        let local = match socket.local_addr().map_err(io_err("TFTP socket"))? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => SocketAddrV4::new(config.listen, port),
        };
        bound.tftp = Some(local);
        let server = tftp::server::TftpServer {
            socket,
            root: root.clone(),
            status: status.clone(),
            fallback_local: server_ip.unwrap_or(config.listen),
        };
        tasks.spawn(async move { server.run().await.map_err(io_err("TFTP")) });
    }

    if let Some(port) = config.http_port {
        let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(config.listen, port))
            .await
            .map_err(io_err(format!("HTTP port {port}")))?;
        let local = match listener.local_addr().map_err(io_err("HTTP socket"))? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => SocketAddrV4::new(config.listen, port),
        };
        bound.http = Some(local);
        let ctx = Arc::new(http::HttpContext {
            root: root.clone(),
            status: status.clone(),
            rules: rules.clone(),
            ipxe_template,
            port: local.port(),
        });
        tasks.spawn(async move { http::run(listener, ctx).await.map_err(io_err("HTTP")) });
    }

    if tasks.is_empty() {
        return Err(NetbootError::Config(
            "nothing to serve: DHCP, TFTP and HTTP are all off".into(),
        ));
    }
    ready(&bound);
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(NetbootError::Config(format!("a server task failed: {e}"))),
        None => Ok(()),
    }
}
