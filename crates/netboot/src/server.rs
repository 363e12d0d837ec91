//! Starting and stopping the whole network boot server inside the caller's tokio runtime:
//! [`Server::start`] reads the configuration files (on the blocking pool), binds every socket,
//! spawns the DHCP, TFTP and HTTP loops on the current runtime and returns a
//! [`ServerHandle`]; [`ServerHandle::shutdown`] stops them, waits for a lease save under way
//! and for running TFTP transfers to end.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::dhcp::leases::{LeaseFile, LeaseTable};
use crate::dhcp::policy::{BootFiles, IpxeScript, Mode, Policy};
use crate::dhcp6::leases::{LeaseFile6, LeaseTable6};
use crate::dhcp6::policy::{Mode6, Policy6};
use crate::files::{FileRoot, ImageSource};
use crate::rules::{self, Rules};
use crate::status::Status;
use crate::tftp::server::{TftpServer, TransferControl};
use crate::{
    dhcp, dhcp6, http, io_err, net, Dhcp6Config, DhcpConfig, Ipv6Config, NetbootError,
    ServerConfig, MAX_LEASE_FILE,
};

/// How long `shutdown` waits for running TFTP transfers to notice and end: each checks
/// between windows and at least every `tftp::server::STOP_CHECK` while waiting for an ACK.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the server bound, known once [`Server::start`] returns.
#[derive(Debug, Clone)]
pub struct Bound {
    pub server_ip: Option<Ipv4Addr>,
    pub tftp: Option<SocketAddrV4>,
    pub http: Option<SocketAddrV4>,
    pub dhcp: bool,
    /// With [`Server::start_with_ipv6`]: the IPv6 address in boot URLs, the IPv6 TFTP and
    /// HTTP listeners, and whether DHCPv6 runs.
    pub server_ip6: Option<Ipv6Addr>,
    pub tftp6: Option<SocketAddrV6>,
    pub http6: Option<SocketAddrV6>,
    pub dhcp6: bool,
}

/// The network boot server (namespace for [`Server::start`]).
pub struct Server;

/// A running server. Dropping it stops the socket loops too (without waiting); prefer
/// [`ServerHandle::shutdown`], which also waits for a lease save and for transfers.
pub struct ServerHandle {
    bound: Bound,
    status: Arc<Status>,
    /// The DHCP, TFTP and HTTP loops; aborted on shutdown.
    serving: JoinSet<Result<(), NetbootError>>,
    /// Held while the lease file is being saved.
    lease_lock: Option<Arc<Mutex<()>>>,
    transfers: Option<Arc<TransferControl>>,
}

/// What is read from files before any socket is bound (done on the blocking pool).
struct Prepared {
    root: Arc<FileRoot>,
    rules: Rules,
    interface_ip: Option<Ipv4Addr>,
    netmask: Option<Ipv4Addr>,
    ipxe_template: Option<String>,
    saved_leases: Option<LeaseFile>,
}

fn prepare(
    config: &ServerConfig,
    images: Option<Arc<dyn ImageSource>>,
) -> Result<Prepared, NetbootError> {
    let root = match images {
        Some(images) => FileRoot::with_images(&config.root, images),
        None => FileRoot::new(&config.root),
    };
    let root = Arc::new(root.map_err(io_err("--root"))?);
    let rules = match &config.rules_file {
        Some(path) => Rules::load(path)?,
        None => Rules::default(),
    };
    let (interface_ip, netmask) = match &config.interface {
        Some(ifname) => match net::interface_ipv4(ifname) {
            Ok((ip, mask)) => (Some(ip), Some(mask)),
            // An IPv6-only link (DHCPv6 and no DHCPv4) needs no IPv4 address.
            Err(_) if matches!(config.dhcp, DhcpConfig::Off) => (None, None),
            Err(e) => return Err(io_err(format!("--interface {ifname}"))(e)),
        },
        None => (None, None),
    };
    let ipxe_template = match &config.ipxe_script {
        Some(s) if !s.contains("://") => {
            let text = std::fs::read_to_string(s).map_err(io_err(format!("--ipxe-script {s}")))?;
            rules::render(&text, &rules::Vars::sample(), &format!("--ipxe-script {s}"))?;
            Some(text)
        }
        _ => None,
    };
    let saved_leases = match &config.dhcp {
        DhcpConfig::Full {
            lease_file: Some(path),
            ..
        } => read_lease_file(path)?,
        _ => None,
    };
    Ok(Prepared {
        root,
        rules,
        interface_ip,
        netmask,
        ipxe_template,
        saved_leases,
    })
}

/// The saved leases, or `None` when there is no file yet.
fn read_lease_file(path: &std::path::Path) -> Result<Option<LeaseFile>, NetbootError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if meta.len() > MAX_LEASE_FILE {
        return Err(NetbootError::Config(format!(
            "lease file {} is larger than {MAX_LEASE_FILE} bytes",
            path.display()
        )));
    }
    let text = std::fs::read(path).map_err(io_err(format!("lease file {}", path.display())))?;
    let file: LeaseFile = serde_json::from_slice(&text).map_err(|e| {
        NetbootError::Config(format!(
            "lease file {} is not valid: {e}; move it away to start afresh",
            path.display()
        ))
    })?;
    Ok(Some(file))
}

/// The saved DHCPv6 leases, or `None` when there is no file yet.
fn read_lease_file6(path: &std::path::Path) -> Result<Option<LeaseFile6>, NetbootError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if meta.len() > MAX_LEASE_FILE {
        return Err(NetbootError::Config(format!(
            "lease file {} is larger than {MAX_LEASE_FILE} bytes",
            path.display()
        )));
    }
    let text = std::fs::read(path).map_err(io_err(format!("lease file {}", path.display())))?;
    let file = serde_json::from_slice(&text).map_err(|e| {
        NetbootError::Config(format!(
            "DHCPv6 lease file {} is not valid: {e}; move it away to start afresh",
            path.display()
        ))
    })?;
    Ok(Some(file))
}

fn task_error(context: &str, e: tokio::task::JoinError) -> NetbootError {
    NetbootError::Task {
        context: context.to_string(),
        message: e.to_string(),
    }
}

impl Server {
    /// Reads the configuration, binds every socket and starts serving on the current tokio
    /// runtime (multi-threaded; TFTP transfers also run on dedicated threads). Returns once
    /// everything is bound, so a caller can announce the addresses.
    pub async fn start(config: ServerConfig) -> Result<ServerHandle, NetbootError> {
        Server::start_inner(config, None, None).await
    }

    /// [`Server::start`] that also serves network boot over IPv6: DHCPv6 (proxy or full) on
    /// the configured interface and HTTP on an IPv6 listener; `library:` paths served from
    /// `images` when given.
    pub async fn start_with_ipv6(
        config: ServerConfig,
        ipv6: Ipv6Config,
        images: Option<Arc<dyn ImageSource>>,
    ) -> Result<ServerHandle, NetbootError> {
        Server::start_inner(config, images, Some(ipv6)).await
    }

    /// [`Server::start`] with `library:` paths (in rules and requests) served from `images`.
    pub async fn start_with_images(
        config: ServerConfig,
        images: Arc<dyn ImageSource>,
    ) -> Result<ServerHandle, NetbootError> {
        Server::start_inner(config, Some(images), None).await
    }

    async fn start_inner(
        config: ServerConfig,
        images: Option<Arc<dyn ImageSource>>,
        ipv6: Option<Ipv6Config>,
    ) -> Result<ServerHandle, NetbootError> {
        let config = Arc::new(config);
        let (mut prepared, saved_leases6) = {
            let config = config.clone();
            let lease_file6 = match ipv6.as_ref().map(|v6| &v6.dhcp6) {
                Some(Dhcp6Config::Full {
                    lease_file: Some(path),
                    ..
                }) => Some(path.clone()),
                _ => None,
            };
            tokio::task::spawn_blocking(move || {
                let prepared = prepare(&config, images)?;
                let saved6 = match lease_file6 {
                    Some(path) => read_lease_file6(&path)?,
                    None => None,
                };
                Ok::<_, NetbootError>((prepared, saved6))
            })
            .await
            .map_err(|e| task_error("reading the configuration", e))??
        };
        let status = Arc::new(Status::new());
        let server_ip = config
            .server_ip
            .or(prepared.interface_ip)
            .or((!config.listen.is_unspecified()).then_some(config.listen));
        let mut handle = ServerHandle {
            bound: Bound {
                server_ip,
                tftp: None,
                http: None,
                dhcp: false,
                server_ip6: None,
                tftp6: None,
                http6: None,
                dhcp6: false,
            },
            status: status.clone(),
            serving: JoinSet::new(),
            lease_lock: None,
            transfers: None,
        };
        if !matches!(config.dhcp, DhcpConfig::Off) {
            handle.start_dhcp(&config, &mut prepared, server_ip)?;
        }
        if let Some(port) = config.tftp_port {
            let listen6 = ipv6.as_ref().and_then(|v6| v6.listen);
            handle.start_tftp(&config, &prepared, port, server_ip, listen6)?;
        }
        if let Some(port) = config.http_port {
            let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(config.listen, port))
                .await
                .map_err(io_err(format!("HTTP port {port}")))?;
            let local = match listener.local_addr().map_err(io_err("HTTP socket"))? {
                std::net::SocketAddr::V4(a) => a,
                std::net::SocketAddr::V6(_) => SocketAddrV4::new(config.listen, port),
            };
            handle.bound.http = Some(local);
            let ctx = Arc::new(http::HttpContext {
                root: prepared.root.clone(),
                status: status.clone(),
                rules: prepared.rules.clone(),
                ipxe_template: prepared.ipxe_template.clone(),
                port: local.port(),
            });
            handle
                .serving
                .spawn(async move { http::run(listener, ctx).await.map_err(io_err("HTTP")) });
        }
        if let Some(ipv6) = ipv6 {
            handle
                .start_ipv6(&config, &ipv6, &prepared, saved_leases6)
                .await?;
        }
        if handle.serving.is_empty() {
            return Err(NetbootError::Config(
                "nothing to serve: DHCP, TFTP and HTTP are all off".into(),
            ));
        }
        Ok(handle)
    }
}

impl ServerHandle {
    /// TFTP on `port` of the IPv4 listen address and, with `listen6`, of that IPv6 address too:
    /// one server whose transfers from either family share one limit and one stop flag.
    fn start_tftp(
        &mut self,
        config: &ServerConfig,
        prepared: &Prepared,
        port: u16,
        server_ip: Option<Ipv4Addr>,
        listen6: Option<Ipv6Addr>,
    ) -> Result<(), NetbootError> {
        let socket = net::udp_socket(SocketAddrV4::new(config.listen, port), None, false)
            .map_err(io_err(format!("TFTP port {port}")))?;
        let local = match socket.local_addr().map_err(io_err("TFTP socket"))? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => SocketAddrV4::new(config.listen, port),
        };
        self.bound.tftp = Some(local);
        let server = TftpServer::new(
            socket,
            prepared.root.clone(),
            self.status.clone(),
            server_ip.unwrap_or(config.listen),
        );
        self.transfers = Some(server.control());
        if let Some(listen6) = listen6 {
            // The same port number as IPv4 (69 by default): the DHCPv6 boot URL
            // tftp://[ADDR]/FILE names no port.
            let socket6 =
                net::udp_socket(SocketAddrV6::new(listen6, local.port(), 0, 0), None, false)
                    .map_err(io_err(format!("TFTP port {} (IPv6)", local.port())))?;
            let local6 = match socket6.local_addr().map_err(io_err("TFTP socket (IPv6)"))? {
                std::net::SocketAddr::V6(a) => a,
                std::net::SocketAddr::V4(_) => SocketAddrV6::new(listen6, local.port(), 0, 0),
            };
            self.bound.tftp6 = Some(local6);
            let server6 = server.beside(socket6, listen6);
            self.serving
                .spawn(async move { server6.run().await.map_err(io_err("TFTP (IPv6)")) });
        }
        self.serving
            .spawn(async move { server.run().await.map_err(io_err("TFTP")) });
        Ok(())
    }

    fn start_dhcp(
        &mut self,
        config: &ServerConfig,
        prepared: &mut Prepared,
        server_ip: Option<Ipv4Addr>,
    ) -> Result<(), NetbootError> {
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
        let (mode, lease_file) = match &config.dhcp {
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
                for (mac, ip) in prepared.rules.reservations() {
                    leases.reserve(&mac, ip);
                }
                if let Some(saved) = prepared.saved_leases.take() {
                    leases.load(saved);
                }
                let mode = Mode::Full {
                    leases,
                    subnet_mask: prepared.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
                    router: *router,
                    dns: dns.clone(),
                };
                (mode, lease_file.clone())
            }
            _ => (Mode::Proxy, None),
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
            rules: prepared.rules.clone(),
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
        let leases = lease_file.map(|path| {
            let lock = Arc::new(Mutex::new(()));
            self.lease_lock = Some(lock.clone());
            dhcp::server::LeaseStore { path, lock }
        });
        let server = dhcp::server::DhcpServer {
            policy,
            socket_67,
            socket_4011,
            status: self.status.clone(),
            leases,
        };
        self.serving
            .spawn(async move { server.run().await.map_err(io_err("DHCP")) });
        self.bound.dhcp = true;
        Ok(())
    }

    async fn start_ipv6(
        &mut self,
        config: &ServerConfig,
        ipv6: &Ipv6Config,
        prepared: &Prepared,
        saved_leases: Option<LeaseFile6>,
    ) -> Result<(), NetbootError> {
        let server_ip = match (ipv6.server_ip, &config.interface) {
            (Some(ip), _) => Some(ip),
            (None, Some(ifname)) => {
                Some(net::interface_ipv6(ifname).map_err(io_err(format!("--interface {ifname}")))?)
            }
            (None, None) => ipv6.listen.filter(|ip| !ip.is_unspecified()),
        };
        self.bound.server_ip6 = server_ip;
        if let (Some(listen), Some(port)) = (ipv6.listen, config.http_port) {
            let listener = net::tcp6_listener(SocketAddrV6::new(listen, port, 0, 0))
                .map_err(io_err(format!("HTTP port {port} (IPv6)")))?;
            let local = match listener.local_addr().map_err(io_err("HTTP socket"))? {
                std::net::SocketAddr::V6(a) => a,
                std::net::SocketAddr::V4(_) => SocketAddrV6::new(listen, port, 0, 0),
            };
            self.bound.http6 = Some(local);
            let ctx = Arc::new(http::HttpContext {
                root: prepared.root.clone(),
                status: self.status.clone(),
                rules: prepared.rules.clone(),
                ipxe_template: prepared.ipxe_template.clone(),
                port: local.port(),
            });
            self.serving.spawn(async move {
                http::run(listener, ctx)
                    .await
                    .map_err(io_err("HTTP (IPv6)"))
            });
        }
        let mode = match &ipv6.dhcp6 {
            Dhcp6Config::Off => return Ok(()),
            Dhcp6Config::Proxy => Mode6::Proxy,
            Dhcp6Config::Full {
                first,
                last,
                dns,
                lease_secs,
                ..
            } => {
                let mut leases =
                    LeaseTable6::new(*first, *last, *lease_secs).map_err(NetbootError::Config)?;
                for (mac, ip) in prepared.rules.reservations6() {
                    leases.reserve(&mac, ip);
                }
                if let Some(saved) = saved_leases {
                    leases.load(saved);
                }
                Mode6::Full {
                    leases,
                    dns: dns.clone(),
                }
            }
        };
        let Some(ifname) = config.interface.clone() else {
            return Err(NetbootError::Config(
                "DHCPv6 answers multicasts on one link: pass --interface IF".into(),
            ));
        };
        let Some(server_ip) = server_ip else {
            return Err(NetbootError::Config(
                "DHCPv6 needs the server's IPv6 address for boot URLs: give it an address".into(),
            ));
        };
        let mac = net::interface_mac(&ifname).map_err(io_err(format!("--interface {ifname}")))?;
        let ipxe = match (&config.ipxe_script, &config.rules_file) {
            (Some(s), _) if s.contains("://") => IpxeScript::Url(s.clone()),
            (Some(_), _) | (None, Some(_)) => IpxeScript::Generated,
            (None, None) => IpxeScript::None,
        };
        let policy = Policy6 {
            mode,
            server_duid: crate::wire::dhcp6::duid_ll(mac),
            server_ip,
            boot: BootFiles {
                bios: config.bios_bootfile.clone(),
                uefi_x64: config.uefi_bootfile.clone(),
                arm64: config.arm64_bootfile.clone(),
                http_port: config.http_port,
                ipxe,
            },
            rules: prepared.rules.clone(),
        };
        let socket = net::udp6_multicast_socket(
            crate::wire::dhcp6::SERVER_PORT,
            &ifname,
            crate::wire::dhcp6::ALL_SERVERS,
        )
        .map_err(io_err("DHCPv6 port 547"))?;
        let leases = match &ipv6.dhcp6 {
            Dhcp6Config::Full {
                lease_file: Some(path),
                ..
            } => {
                let lock = self
                    .lease_lock
                    .get_or_insert_with(|| Arc::new(Mutex::new(())))
                    .clone();
                Some((path.clone(), lock))
            }
            _ => None,
        };
        let server = dhcp6::server::Dhcp6Server {
            policy,
            socket,
            status: self.status.clone(),
            leases,
        };
        self.serving
            .spawn(async move { server.run().await.map_err(io_err("DHCPv6")) });
        self.bound.dhcp6 = true;
        Ok(())
    }

    /// The addresses the server bound.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// The status board (what `/_vmedia/status` serves).
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Waits until one of the socket loops ends by itself, which only a failing socket does,
    /// and returns its error. Cancel-safe: use it in `select!` beside a shutdown signal.
    pub async fn wait(&mut self) -> Result<(), NetbootError> {
        match self.serving.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(task_error("serving", e)),
            None => Ok(()),
        }
    }

    /// Stops serving: the socket loops and HTTP connections end at once (their ports are free
    /// when this returns), a lease save under way completes, and running TFTP transfers are
    /// told to stop and given [`SHUTDOWN_GRACE`] to end.
    pub async fn shutdown(mut self) -> Result<(), NetbootError> {
        if let Some(transfers) = &self.transfers {
            transfers.stop();
        }
        self.serving.abort_all();
        let mut first_error = None;
        while let Some(joined) = self.serving.join_next().await {
            match joined {
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) if !e.is_cancelled() => {
                    first_error.get_or_insert(task_error("serving", e));
                }
                _ => {}
            }
        }
        if let Some(lock) = self.lease_lock.take() {
            // A save the DHCP loop started before it was stopped runs on; wait for it.
            let waited = tokio::task::spawn_blocking(move || {
                drop(lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            })
            .await;
            if let Err(e) = waited {
                first_error.get_or_insert(task_error("saving leases", e));
            }
        }
        if let Some(transfers) = &self.transfers {
            let idle = transfers.wait_idle(SHUTDOWN_GRACE).await;
            if !idle {
                tracing::warn!(
                    running = transfers.running(),
                    "TFTP transfers still running after the shutdown grace period; they end at their next check"
                );
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // The JoinSet aborts the loops as it drops; transfer threads need to be told.
        if let Some(transfers) = &self.transfers {
            transfers.stop();
        }
    }
}
