//! `vmedia serve`: flag parsing for the daemon, the library opened as the library commands
//! open it, and the process's life (runtime, "listening" lines, SIGTERM/SIGINT drain). The
//! daemon itself is `vmedia_server`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use vmedia_server::replicate::{Direction, Peer, ReplicationOptions};
use vmedia_server::{Server, Settings};

/// Log filter without RUST_LOG: the daemon logs its work (starts, preloads, traces).
pub const DEFAULT_LOG_FILTER: &str = "warn,vmedia=info,vmedia_server=info";

#[derive(clap::Args)]
#[command(
    about = "Serve library images over HTTP(S) and NBD from one shared cache",
    after_help = "Examples:\n  vmedia serve --library /srv/library --http-port 8080\n  vmedia serve --config /etc/vmedia/serve.toml\n  vmedia serve --netboot /etc/vmedia/netboot.toml\n  vmedia serve --https-port 8443 --replicate-to https://site-b:8443 --peer-token \"$T\" --peer-ca-cert b.pem\n  vmedia serve --health http://127.0.0.1:8080/health   # keepalived's vrrp_script\n  qemu-img info nbd://localhost:10809/debian@2\n  curl -r 0-2047 http://localhost:8080/images/debian@sha256:1f2e3d4c\n\n\
A port of 0 turns that listener off. --config reads a TOML file with the same keys as the\n\
flags (http-port = 8080, cache-size = \"1G\", preload = [\"debian\"]); flags win over it.\n\
SIGTERM or SIGINT stops accepting, lets responses in progress finish, and exits 0.\n\
--health URL serves nothing: it asks a running daemon's /health and exits 0 when it is\n\
healthy, 1 when it is not, does not answer within --health-timeout, or is not a vmedia daemon."
)]
pub struct Args {
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Plain HTTP port [default: 8080]
    #[arg(long = "http-port", value_name = "PORT")]
    http_port: Option<u16>,
    /// HTTPS port: the REST API and images (a self-signed certificate is made in the state
    /// folder without --tls-cert/--tls-key) [default: 0, off]
    #[arg(long = "https-port", value_name = "PORT")]
    https_port: Option<u16>,
    /// NBD port [default: 10809]
    #[arg(long = "nbd-port", value_name = "PORT")]
    nbd_port: Option<u16>,
    /// TLS certificate chain (PEM) for HTTPS and NBD STARTTLS
    #[arg(long = "tls-cert", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long = "tls-key", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Memory for decoded chunks shared by every export and client [default: 256M]
    #[arg(long = "cache-size", value_name = "SIZE")]
    cache_size: Option<String>,
    /// A folder for an on-disk cache tier (with --cache-dir-size)
    #[arg(long = "cache-dir", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The on-disk tier's budget, e.g. 20G
    #[arg(long = "cache-dir-size", value_name = "SIZE")]
    cache_dir_size: Option<String>,
    /// The daemon's state folder (clones, boot traces) [default: $VMEDIA_HOME/serve, else
    /// $XDG_DATA_HOME/vmedia/serve]
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Settings file (TOML, same keys as these flags)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read a version into the cache at start (repeatable)
    #[arg(long, value_name = "NAME[@V]")]
    preload: Vec<String>,
    /// How long a version's boot trace records after its first client attaches [default: 60s]
    #[arg(long = "trace-window", value_name = "DURATION")]
    trace_window: Option<String>,
    /// Run network boot (DHCP/TFTP/HTTP) inside the daemon from this netboot rules file; its
    /// paths may name `library:NAME[@V]:/path/in/iso` (see docs/netboot.md)
    #[arg(long, value_name = "FILE")]
    netboot: Option<PathBuf>,
    /// Push this library to another library continuously (a folder, s3://..., or another
    /// site's daemon https://HOST:PORT; repeatable; see docs/replication.md)
    #[arg(long = "replicate-to", value_name = "LOCATION")]
    replicate_to: Vec<String>,
    /// Pull another library into this one continuously (repeatable)
    #[arg(long = "mirror-from", value_name = "LOCATION")]
    mirror_from: Vec<String>,
    /// How often each replication peer is synced [default: 30s]
    #[arg(long = "replicate-interval", value_name = "DURATION")]
    replicate_interval: Option<String>,
    #[command(flatten)]
    peer: crate::library::sync::PeerArgs,
    /// Serve nothing: check the daemon whose health URL this is (e.g.
    /// http://127.0.0.1:8080/health) and exit 0 healthy, 1 not (for keepalived's vrrp_script)
    #[arg(long, value_name = "URL")]
    health: Option<String>,
    /// How long --health waits for the whole answer [default: 3s]
    #[arg(long = "health-timeout", value_name = "DURATION", requires = "health")]
    health_timeout: Option<String>,
}

/// `--health URL`: one probe, its verdict as the exit code (0 healthy, 1 not).
fn check_health(url: &str, timeout: Option<&str>) -> Result<ExitCode> {
    let timeout = match timeout {
        Some(text) => vmedia_server::config::parse_duration("health-timeout", text)?,
        None => vmedia_server::health::PROBE_TIMEOUT,
    };
    match vmedia_server::health::probe(url, timeout) {
        Ok(report) if report.healthy => {
            let checks: Vec<String> = report
                .checks
                .iter()
                .map(|c| format!("{} ok ({})", c.name, c.detail))
                .collect();
            println!("healthy: {}", checks.join("; "));
            Ok(ExitCode::SUCCESS)
        }
        Ok(report) => {
            let reason = report.reason.unwrap_or_else(|| "no reason given".into());
            eprintln!("vmedia serve --health: unhealthy: {reason}");
            Ok(ExitCode::from(1))
        }
        Err(error) => {
            eprintln!("vmedia serve --health: unhealthy: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(url) = &args.health {
        return check_health(url, args.health_timeout.as_deref());
    }
    let file = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let flags = Settings {
        library: None,
        listen: args.listen,
        http_port: args.http_port,
        https_port: args.https_port,
        nbd_port: args.nbd_port,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        cache_size: args.cache_size,
        cache_dir: args.cache_dir,
        cache_dir_size: args.cache_dir_size,
        state: args.state,
        preload: args.preload,
        trace_window: args.trace_window,
        netboot: args.netboot,
        replicate_to: args.replicate_to,
        mirror_from: args.mirror_from,
        replicate_interval: args.replicate_interval,
    };
    let settings = flags.merge(file);
    let (library, local) = crate::library::open_library_for_serve(settings.library.as_deref())?;
    let replication = if settings.replicate_to.is_empty() && settings.mirror_from.is_empty() {
        None
    } else {
        let mut peers = Vec::new();
        for (direction, locations) in [
            (Direction::Push, &settings.replicate_to),
            (Direction::Pull, &settings.mirror_from),
        ] {
            for location in locations {
                peers.push(Peer {
                    direction,
                    config: crate::library::peer_config(location, &args.peer)?,
                });
            }
        }
        Some(ReplicationOptions {
            local,
            peers,
            interval: settings.replicate_interval()?,
            sync: vmedia_library::SyncOptions::default(),
        })
    };
    let default_state = match settings.state {
        Some(_) => PathBuf::new(),
        None => crate::env::boot_config()
            .map(|c| c.state_dir().join("serve"))
            .context("no --state and no data directory to keep the daemon's state in")?,
    };
    let mut options = settings.resolve(default_state)?;
    // Redfish serves the VMs of the `vm` commands' store (on the HTTPS port, behind the users).
    options.systems = crate::env::boot_config().ok();
    options.replication = replication;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vmedia-serve")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let handle = Server::start(library, options).await?;
        for (what, addr) in [
            ("http", handle.http),
            ("https", handle.https),
            ("nbd", handle.nbd),
        ] {
            if let Some(addr) = addr {
                tracing::info!(protocol = what, %addr, "listening");
                eprintln!("vmedia serve: listening for {what} on {addr}");
            }
        }
        if let Some(fingerprint) = &handle.tls_fingerprint {
            eprintln!("vmedia serve: self-signed HTTPS certificate, SHA-256 {fingerprint}");
        }
        let signal = vmedia_server::shutdown_signal().await;
        tracing::info!(signal, "draining connections");
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
