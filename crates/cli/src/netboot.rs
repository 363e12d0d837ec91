//! `vmedia netboot`: the network boot server (`serve`) and its status view (`status`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use vmedia_netboot::status::{format_time, StatusSnapshot};
use vmedia_netboot::{Bound, Dhcp6Config, DhcpConfig, Ipv6Config, Server, ServerConfig};

use crate::logging;

/// Largest status document we read from a server.
const MAX_STATUS_BYTES: u64 = 64 << 20;
/// How long `status` waits to connect, and for the whole answer.
const STATUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Runtime threads of `serve`: DHCP, the TFTP request loop and HTTP are light (TFTP transfers
/// have their own threads, file reads the blocking pool).
const SERVE_WORKERS: usize = 2;

#[derive(clap::Subcommand)]
pub enum NetbootCommand {
    /// Serve network boot: proxy or full DHCP, TFTP, HTTP and iPXE scripts
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(Box<ServeArgs>),
    /// Show what each machine did: DHCP steps, files, bytes sent, finished or stalled
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

const SERVE_EXAMPLES: &str = "Examples:
  # proxyDHCP beside an existing DHCP server; BIOS gets pxelinux, UEFI gets GRUB
  vmedia netboot serve --interface br0 --proxy --root /srv/tftp \\
      --bios-bootfile pxelinux.0 --uefi-bootfile grubx64.efi
  # full DHCP with leases, iPXE scripts from per-machine rules
  vmedia netboot serve --interface br0 --dhcp-range 10.0.0.100-10.0.0.200 \\
      --root /srv/boot --config rules.toml --lease-file /var/lib/vmedia/leases.json
  # TFTP and HTTP only (another DHCP server points here)
  vmedia netboot serve --no-dhcp --root /srv/tftp --listen 10.0.0.1
  # kernel straight out of an ISO in the root:
  curl -O http://10.0.0.1/debian.iso/install.amd/vmlinuz

  # kernel and initrd out of a library version (folder or S3, as the library commands take it)
  vmedia netboot serve --library s3://images/site --s3-endpoint http://10.0.0.2:8333 \
      --no-dhcp --root /srv/tftp --config rules.toml
  #   rules.toml: kernel = \"library:debian@3:/install.amd/vmlinuz\"

A path may reach into an ISO under the root: debian.iso:/install.amd/vmlinuz or
debian.iso/install.amd/vmlinuz. With --library (or VMEDIA_LIBRARY), rules and requests may
name library:NAME[@V]:/path/in/iso and library:NAME[@V]. Each event is logged as one line on
stderr.
TFTP grants blksize up to what the link's MTU carries unfragmented (1468 on Ethernet, 65464 on
loopback) and windowsize up to 64 blocks or 128 KiB; at most 2048 transfers run at once.";

const STATUS_EXAMPLES: &str = "Examples:
  vmedia netboot status
  vmedia netboot status --server http://10.0.0.1:8080 --json

Machines are listed by MAC: from the lease in full-DHCP mode; in proxy mode from the address a
PXE client requests from the real DHCP server, its port-4011 request, or the ?mac= of its iPXE
script URL. Steps seen earlier under its IP are merged in.";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Network interface to serve DHCP on (its IPv4 address is the advertised server address)
    #[arg(long, short = 'i', value_name = "IF")]
    interface: Option<String>,
    /// proxyDHCP: answer PXE/HTTP-boot clients with boot information only, beside another DHCP server
    #[arg(long, conflicts_with_all = ["dhcp_range", "no_dhcp"])]
    proxy: bool,
    /// Full DHCP: hand out addresses from this range (FIRST-LAST)
    #[arg(long, value_name = "FIRST-LAST", conflicts_with = "no_dhcp")]
    dhcp_range: Option<String>,
    /// Default gateway handed out in full-DHCP mode
    #[arg(long, value_name = "ADDR", requires = "dhcp_range")]
    router: Option<Ipv4Addr>,
    /// DNS server handed out in full-DHCP mode (repeatable)
    #[arg(long, value_name = "ADDR", requires = "dhcp_range")]
    dns: Vec<Ipv4Addr>,
    /// Lease time in seconds (full-DHCP mode)
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    lease_time: u32,
    /// Where leases are kept across restarts (full-DHCP mode)
    #[arg(long, value_name = "FILE", default_value = "vmedia-leases.json")]
    lease_file: PathBuf,
    /// Serve TFTP and HTTP only, no DHCP
    #[arg(long)]
    no_dhcp: bool,
    /// Folder served over TFTP and HTTP (read-only; nothing outside it is reachable)
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Boot file for BIOS clients (architecture 0)
    #[arg(long, value_name = "PATH")]
    bios_bootfile: Option<String>,
    /// Boot file for x64 UEFI clients (architectures 7, 9; 16 gets it as an HTTP URL)
    #[arg(long, value_name = "PATH")]
    uefi_bootfile: Option<String>,
    /// Boot file for arm64 UEFI clients (architecture 11; 19 gets it as an HTTP URL)
    #[arg(long, value_name = "PATH")]
    arm64_bootfile: Option<String>,
    /// iPXE script for iPXE clients: a URL handed out as is, or a template FILE served at /boot.ipxe
    #[arg(long, value_name = "FILE|URL")]
    ipxe_script: Option<String>,
    /// Per-machine boot rules (TOML)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address TFTP and HTTP listen on
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    listen: Ipv4Addr,
    /// Address advertised to clients (default: the interface's or --listen's)
    #[arg(long, value_name = "ADDR")]
    server_ip: Option<Ipv4Addr>,
    /// TFTP port (0 disables TFTP)
    #[arg(long, value_name = "PORT", default_value_t = 69)]
    tftp_port: u16,
    /// HTTP port (0 disables HTTP)
    #[arg(long, value_name = "PORT", default_value_t = 80)]
    http_port: u16,
    /// DHCPv6 on --interface for UEFI PXE and HTTP boot over IPv6: proxy (boot options only)
    /// or full (addresses from --dhcp6-range too)
    #[arg(long, value_name = "MODE", requires = "interface")]
    dhcp6: Option<Dhcp6Mode>,
    /// Full DHCPv6: hand out addresses from this range (FIRST-LAST)
    #[arg(long, value_name = "FIRST-LAST")]
    dhcp6_range: Option<String>,
    /// DNS server handed out in full-DHCPv6 mode (repeatable)
    #[arg(long, value_name = "ADDR")]
    dns6: Vec<Ipv6Addr>,
    /// Where DHCPv6 leases are kept across restarts (full-DHCPv6 mode)
    #[arg(long, value_name = "FILE", default_value = "vmedia-leases6.json")]
    lease_file6: PathBuf,
    /// Address the IPv6 TFTP and HTTP listeners bind (default with --dhcp6: :: , all)
    #[arg(long, value_name = "ADDR")]
    listen6: Option<Ipv6Addr>,
    /// IPv6 address put in boot URLs (default: the interface's global or unique-local one)
    #[arg(long, value_name = "ADDR")]
    server_ip6: Option<Ipv6Addr>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dhcp6Mode {
    Proxy,
    Full,
}

/// The IPv6 side of `serve`, when any IPv6 flag is given.
fn ipv6_config(args: &ServeArgs) -> anyhow::Result<Option<Ipv6Config>> {
    let dhcp6 = match (args.dhcp6, &args.dhcp6_range) {
        (None, None) => Dhcp6Config::Off,
        (Some(Dhcp6Mode::Full), Some(range)) => {
            let (a, b) = range
                .split_once('-')
                .with_context(|| format!("--dhcp6-range {range:?} must be FIRST-LAST"))?;
            let parse = |t: &str| -> anyhow::Result<Ipv6Addr> {
                t.trim()
                    .parse()
                    .with_context(|| format!("--dhcp6-range: {t:?} is not an IPv6 address"))
            };
            Dhcp6Config::Full {
                first: parse(a)?,
                last: parse(b)?,
                dns: args.dns6.clone(),
                lease_secs: args.lease_time,
                lease_file: Some(args.lease_file6.clone()),
            }
        }
        (Some(Dhcp6Mode::Full), None) => bail!("--dhcp6 full needs --dhcp6-range FIRST-LAST"),
        (Some(Dhcp6Mode::Proxy), None) => Dhcp6Config::Proxy,
        (_, Some(_)) => bail!("--dhcp6-range goes with --dhcp6 full"),
    };
    if matches!(dhcp6, Dhcp6Config::Off) && args.listen6.is_none() && args.server_ip6.is_none() {
        return Ok(None);
    }
    let listen = args.listen6.or(Some(Ipv6Addr::UNSPECIFIED));
    Ok(Some(Ipv6Config {
        dhcp6,
        listen,
        server_ip: args.server_ip6,
    }))
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The server's HTTP address
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:80")]
    server: String,
    /// Print the status document as JSON
    #[arg(long)]
    json: bool,
}

/// What is logged without RUST_LOG: `serve` logs each machine's steps (vmedia_netboot at INFO)
/// and its banner; `status` only warnings.
pub fn default_log_filter(cmd: &NetbootCommand) -> &'static str {
    match cmd {
        NetbootCommand::Serve(_) => "warn,vmedia_netboot=info,vmedia::announce=info",
        NetbootCommand::Status(_) => logging::DEFAULT_FILTER,
    }
}

pub fn run(cmd: NetbootCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NetbootCommand::Serve(args) => serve(*args),
        NetbootCommand::Status(args) => status(args),
    }
}

fn parse_range(text: &str) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = text
        .split_once('-')
        .with_context(|| format!("--dhcp-range {text:?} must be FIRST-LAST"))?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .with_context(|| format!("--dhcp-range: {a:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .with_context(|| format!("--dhcp-range: {b:?} is not an IPv4 address"))?;
    Ok((first, last))
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ipv6 = ipv6_config(&args)?;
    let dhcp = if args.no_dhcp {
        DhcpConfig::Off
    } else if let Some(range) = &args.dhcp_range {
        let (first, last) = parse_range(range)?;
        DhcpConfig::Full {
            first,
            last,
            router: args.router,
            dns: args.dns.clone(),
            lease_secs: args.lease_time,
            lease_file: Some(args.lease_file.clone()),
        }
    } else if args.proxy {
        DhcpConfig::Proxy
    } else {
        bail!("choose how DHCP runs: --proxy (beside another DHCP server), --dhcp-range FIRST-LAST (full DHCP) or --no-dhcp");
    };
    let config = ServerConfig {
        root: args.root.clone(),
        listen: args.listen,
        interface: args.interface.clone(),
        server_ip: args.server_ip,
        dhcp,
        tftp_port: (args.tftp_port != 0).then_some(args.tftp_port),
        http_port: (args.http_port != 0).then_some(args.http_port),
        bios_bootfile: args.bios_bootfile.clone(),
        uefi_bootfile: args.uefi_bootfile.clone(),
        arm64_bootfile: args.arm64_bootfile.clone(),
        ipxe_script: args.ipxe_script.clone(),
        rules_file: args.config.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVE_WORKERS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // `library:` paths need a library: the one --library (or VMEDIA_LIBRARY) names, opened as
    // the library commands open it (--s3-endpoint and the AWS_* variables for S3).
    let library = match crate::library::requested_library_location() {
        Some(location) => Some((
            crate::library::open_library_for_serve(None)
                .with_context(|| format!("cannot open the library {location}"))?
                .0,
            location,
        )),
        None => None,
    };
    runtime.block_on(async {
        let (mut server, from) = match (library, ipv6) {
            (library, Some(ipv6)) => {
                let (images, from) = match library {
                    Some((library, location)) => {
                        let images: Arc<dyn vmedia_netboot::files::ImageSource> =
                            Arc::new(vmedia_server::netboot::LibraryImages::new(library));
                        (Some(images), format!(" and library {location}"))
                    }
                    None => (None, String::new()),
                };
                let server = Server::start_with_ipv6(config, ipv6, images)
                    .await
                    .context("netboot server")?;
                (server, from)
            }
            (Some((library, location)), None) => {
                let images = Arc::new(vmedia_server::netboot::LibraryImages::new(library));
                let server = Server::start_with_images(config, images)
                    .await
                    .context("netboot server")?;
                (server, format!(" and library {location}"))
            }
            (None, None) => (
                Server::start(config).await.context("netboot server")?,
                String::new(),
            ),
        };
        logging::announce(&format!(
            "{}{from}",
            banner(server.bound(), args.interface.as_deref(), &args.root)
        ));
        let signalled = tokio::select! {
            result = server.wait() => {
                result.context("netboot server")?;
                false
            }
            signal = shutdown_signal() => {
                signal.context("waiting for a shutdown signal")?;
                true
            }
        };
        if signalled {
            server.shutdown().await.context("netboot server shutdown")?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM (systemd stop): the server then shuts down cleanly.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}

fn banner(bound: &Bound, interface: Option<&str>, root: &std::path::Path) -> String {
    let mut parts = Vec::new();
    if bound.dhcp {
        parts.push(format!(
            "DHCP on {} (ports 67, 4011)",
            interface.unwrap_or("-")
        ));
    }
    if let Some(t) = bound.tftp {
        parts.push(format!("TFTP on {t}"));
    }
    if let Some(h) = bound.http {
        parts.push(format!("HTTP on {h}"));
    }
    if bound.dhcp6 {
        parts.push(format!("DHCPv6 on {} (port 547)", interface.unwrap_or("-")));
    }
    if let Some(t) = bound.tftp6 {
        parts.push(format!("TFTP on {t}"));
    }
    if let Some(h) = bound.http6 {
        parts.push(format!("HTTP on {h}"));
    }
    if let Some(ip6) = bound.server_ip6 {
        parts.push(format!("IPv6 boot URLs at [{ip6}]"));
    }
    let advertised = bound
        .server_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "vmedia netboot: serving {} from {} (server address {advertised})",
        parts.join(", "),
        root.display()
    )
}

fn fetch_status(server: &str) -> anyhow::Result<String> {
    let rest = server
        .strip_prefix("http://")
        .with_context(|| format!("--server {server:?} must start with http://"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    if host.is_empty() {
        bail!("--server {server:?} names no host");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(STATUS_CONNECT_TIMEOUT))
        .timeout_global(Some(STATUS_TIMEOUT))
        // A status answer other than 200 gets its own message below.
        .http_status_as_error(false)
        // The server is on the local network: a proxy from the environment must not apply.
        .proxy(None)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{host}/_vmedia/status"))
        .call()
        .with_context(|| format!("cannot reach the netboot server at {host}"))?;
    let status = response.status();
    if status != 200 {
        bail!("{host} answered {status}: is it a vmedia netboot server?");
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_STATUS_BYTES)
        .read_to_string()
        .context("reading the status")
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let body = fetch_status(&args.server)?;
    let snapshot: StatusSnapshot =
        serde_json::from_str(&body).context("the status document is not vmedia's")?;
    if args.json {
        crate::print_json(&snapshot)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "server up since {}, {} machine(s)",
        format_time(snapshot.server_started_ms),
        snapshot.machines.len()
    );
    for m in &snapshot.machines {
        let arch = m.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<18} ip {:<15} arch {:<3} last seen {}  {}",
            m.client,
            m.ip.as_deref().unwrap_or("-"),
            arch,
            format_time(m.last_seen_ms),
            m.last_step
        );
        for t in &m.transfers {
            println!(
                "    {:<4} {:<40} {:>12}/{:<12} {}{}",
                t.protocol,
                t.file,
                t.bytes_sent,
                t.size,
                t.state,
                t.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
