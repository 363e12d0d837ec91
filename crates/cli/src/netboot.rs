//! `vmedia netboot`: the network boot server (`serve`) and its status view (`status`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use vmedia_netboot::status::{format_time, StatusSnapshot};
use vmedia_netboot::{DhcpConfig, ServerConfig};

/// Largest status document we read from a server.
const MAX_STATUS_BYTES: u64 = 64 << 20;

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

A path may reach into an ISO under the root: debian.iso:/install.amd/vmlinuz or
debian.iso/install.amd/vmlinuz. Each event is logged as one line on stderr.
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
    let sink = Box::new(|event: &vmedia_netboot::status::Event| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", event.log_line());
    });
    vmedia_netboot::serve(config, sink, |bound| {
        let mut parts = Vec::new();
        if bound.dhcp {
            parts.push(format!(
                "DHCP on {} (ports 67, 4011)",
                args.interface.as_deref().unwrap_or("-")
            ));
        }
        if let Some(t) = bound.tftp {
            parts.push(format!("TFTP on {t}"));
        }
        if let Some(h) = bound.http {
            parts.push(format!("HTTP on {h}"));
        }
        let advertised = bound
            .server_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into());
        eprintln!(
            "vmedia netboot: serving {} from {} (server address {advertised})",
            parts.join(", "),
            args.root.display()
        );
    })
    .context("netboot server")?;
    Ok(ExitCode::SUCCESS)
}

fn fetch_status(server: &str) -> anyhow::Result<String> {
    let rest = server
        .strip_prefix("http://")
        .with_context(|| format!("--server {server:?} must start with http://"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the netboot server at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /_vmedia/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(MAX_STATUS_BYTES)
        .read_to_end(&mut raw)
        .context("reading the status")?;
    let text = String::from_utf8(raw).context("status reply is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("status reply is not HTTP")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!("{addr} answered {status_line:?}: is it a vmedia netboot server?");
    }
    Ok(body.to_string())
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let body = fetch_status(&args.server)?;
    let snapshot: StatusSnapshot =
        serde_json::from_str(&body).context("the status document is not vmedia's")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
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
