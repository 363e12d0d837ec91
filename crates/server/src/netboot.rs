//! Network boot from the library inside the daemon (`vmedia serve --netboot FILE`): the
//! netboot server of `vmedia-netboot`, with `library:NAME[@V]` and
//! `library:NAME[@V]:/path/in/iso` in rules and requests served from the daemon's library.
//!
//! FILE is a netboot rules file (what `vmedia netboot serve --config` reads: `[default]` and
//! `[[machine]]`) with a `[server]` table holding what `vmedia netboot serve` takes as flags:
//!
//! ```toml
//! [server]
//! root = "/srv/boot"          # folder served beside the library (relative: to this file)
//! dhcp = "off"                # "off" (default), "proxy" or "full"
//! # interface = "br0"         # needed for proxy and full DHCP
//! # dhcp_range = "10.0.0.100-10.0.0.200"   # full DHCP; router, dns, lease_time, lease_file
//! listen = "0.0.0.0"
//! tftp_port = 69              # 0 disables TFTP
//! http_port = 8069            # 0 disables HTTP (the daemon's own HTTP port is another)
//! uefi_bootfile = "ipxe.efi"
//!
//! [default]
//! kernel = "library:debian@3:/install.amd/vmlinuz"
//! initrd = ["library:debian@3:/install.amd/initrd.gz"]
//! ```
//!
//! Restricted items (those an access rule limits, `api::access`) are never served here: TFTP
//! and the netboot HTTP port ask for no credentials, and a rule's paths are handed to any
//! machine that asks, so a capability in them would be given to everyone. The daemon refuses
//! to start with a rules file naming one, `PUT /api/v1/access` refuses to restrict an item the
//! rules name, and a request naming one (or a rules file changed since) is answered as a
//! missing file and audited.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use thiserror::Error;
use vmedia_io::ReadAt;
use vmedia_library::{ChunkCache, Library, LibraryError, VersionReader, VersionSpec};
use vmedia_netboot::files::{ImageKey, ImageSource};
use vmedia_netboot::rules::MAX_RULES_FILE;
use vmedia_netboot::{DhcpConfig, NetbootError, Server, ServerConfig, ServerHandle};

/// How long an opened version is reused before its spec is resolved again: a boot storm asks
/// for the same few files hundreds of times a second, and a new current version is picked up
/// this long after it is added at the latest.
pub const REOPEN_AFTER: Duration = Duration::from_secs(2);
/// Specs whose readers are kept; a netboot setup names a handful of images.
pub const MAX_OPEN_SPECS: usize = 256;
/// Defaults of `vmedia netboot serve`, kept the same here.
const DEFAULT_TFTP_PORT: u16 = 69;
const DEFAULT_HTTP_PORT: u16 = 80;
const DEFAULT_LEASE_SECS: u32 = 3600;
const DEFAULT_LEASE_FILE: &str = "vmedia-leases.json";

/// An opened version and when its spec was last resolved.
struct Opened {
    reader: VersionReader,
    resolved: Instant,
}

/// The daemon's library as the netboot server's [`ImageSource`]: versions are opened
/// read-only; a reader is reused for [`REOPEN_AFTER`], and kept beyond that while its spec
/// still resolves to the same digest (its chunk cache stays warm). Given a chunk cache (the
/// daemon's shared one), every reader reads through it, so a kernel that NBD and HTTP clients
/// also read is fetched from the backend once.
pub struct LibraryImages {
    library: Library,
    refresh: Duration,
    cache: Option<Arc<dyn ChunkCache>>,
    opened: Mutex<HashMap<String, Opened>>,
}

impl LibraryImages {
    /// Readers with their own chunk caches (a standalone netboot server).
    pub fn new(library: Library) -> LibraryImages {
        LibraryImages::with_refresh(library, REOPEN_AFTER)
    }

    /// Readers that read through `cache` (the daemon's shared cache).
    pub fn with_cache(library: Library, cache: Arc<dyn ChunkCache>) -> LibraryImages {
        LibraryImages {
            cache: Some(cache),
            ..LibraryImages::new(library)
        }
    }

    /// With another reuse window (zero: resolve on every open).
    pub fn with_refresh(library: Library, refresh: Duration) -> LibraryImages {
        LibraryImages {
            library,
            refresh,
            cache: None,
            opened: Mutex::new(HashMap::new()),
        }
    }

    fn reader(&self, spec: &str) -> io::Result<VersionReader> {
        {
            let opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = opened.get(spec) {
                if o.resolved.elapsed() < self.refresh {
                    return Ok(o.reader.clone());
                }
            }
        }
        let parsed = VersionSpec::parse(spec).map_err(library_io)?;
        let fresh = match &self.cache {
            Some(cache) => self
                .library
                .open_version_cached(&parsed, Arc::clone(cache))
                .map_err(library_io)?,
            None => self.library.open_version(&parsed).map_err(library_io)?,
        };
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let reader = match opened.get(spec) {
            Some(o) if o.reader.digest() == fresh.digest() => o.reader.clone(),
            _ => fresh,
        };
        if opened.len() >= MAX_OPEN_SPECS && !opened.contains_key(spec) {
            // Simplest bound: a netboot setup names a few specs, so the map refills at once.
            opened.clear();
        }
        opened.insert(
            spec.to_string(),
            Opened {
                reader: reader.clone(),
                resolved: Instant::now(),
            },
        );
        Ok(reader)
    }
}

/// Library errors as I/O errors of the kind netboot shows clients: a missing item or version
/// is "not found", a malformed spec is refused.
fn library_io(e: LibraryError) -> io::Error {
    let kind = match &e {
        LibraryError::NoSuchItem { .. }
        | LibraryError::NoSuchVersion { .. }
        | LibraryError::ItemRemoved { .. }
        | LibraryError::VersionPruned { .. } => io::ErrorKind::NotFound,
        LibraryError::InvalidName { .. }
        | LibraryError::InvalidSpec { .. }
        | LibraryError::AmbiguousDigest { .. } => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

impl ImageSource for LibraryImages {
    fn open_image(&self, spec: &str) -> io::Result<(Arc<dyn ReadAt>, ImageKey)> {
        let reader = self.reader(spec)?;
        let key = ImageKey(reader.digest().to_string());
        Ok((Arc::new(reader), key))
    }
}

/// Why the netboot server could not start from its file.
#[derive(Debug, Error)]
pub enum NetbootStartError {
    #[error("netboot file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("netboot file {path} is larger than {MAX_RULES_FILE} bytes")]
    TooLarge { path: String },
    #[error("netboot file {path}: {message}")]
    Config { path: String, message: String },
    #[error("netboot server: {0}")]
    Netboot(#[from] NetbootError),
    #[error(
        "netboot file {path} names {reference}, but an access rule restricts {item}: network \
         boot has no credentials and gives a rule's paths to any machine that asks, so it \
         cannot serve a restricted item; remove the reference, or the access rule for {item}"
    )]
    Restricted {
        path: String,
        reference: String,
        item: String,
    },
}

/// How DHCP runs, as `vmedia netboot serve` chooses it with `--no-dhcp`, `--proxy` or
/// `--dhcp-range`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    #[default]
    Off,
    Proxy,
    Full,
}

/// The `[server]` table: the flags of `vmedia netboot serve`, by the same names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootSettings {
    pub root: PathBuf,
    #[serde(default)]
    pub dhcp: DhcpMode,
    pub interface: Option<String>,
    pub dhcp_range: Option<String>,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Option<u32>,
    pub lease_file: Option<PathBuf>,
    pub listen: Option<Ipv4Addr>,
    pub server_ip: Option<Ipv4Addr>,
    pub tftp_port: Option<u16>,
    pub http_port: Option<u16>,
    pub bios_bootfile: Option<String>,
    pub uefi_bootfile: Option<String>,
    pub arm64_bootfile: Option<String>,
    pub ipxe_script: Option<String>,
}

/// Only the `[server]` table; the rules in the same file are read by the netboot server.
#[derive(Deserialize)]
struct FileView {
    server: Option<NetbootSettings>,
}

/// Reads FILE's `[server]` table into the [`ServerConfig`] `vmedia netboot serve --config FILE`
/// would build from the same settings given as flags; relative paths are taken from FILE's
/// folder (a daemon's working directory is nobody's choice).
pub fn load_netboot_config(path: &Path) -> Result<ServerConfig, NetbootStartError> {
    let shown = path.display().to_string();
    let config_err = |message: String| NetbootStartError::Config {
        path: shown.clone(),
        message,
    };
    let read_err = |source| NetbootStartError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_RULES_FILE {
        return Err(NetbootStartError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let view: FileView = toml::from_str(&text).map_err(|e| config_err(e.to_string()))?;
    let Some(s) = view.server else {
        return Err(config_err(
            "has no [server] table (root, ports and DHCP mode of the netboot server)".into(),
        ));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let anchored = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let dhcp = match s.dhcp {
        DhcpMode::Off => DhcpConfig::Off,
        DhcpMode::Proxy => DhcpConfig::Proxy,
        DhcpMode::Full => {
            let range = s.dhcp_range.as_deref().ok_or_else(|| {
                config_err("dhcp = \"full\" needs dhcp_range = \"FIRST-LAST\"".into())
            })?;
            let (first, last) = parse_range(range).map_err(config_err)?;
            DhcpConfig::Full {
                first,
                last,
                router: s.router,
                dns: s.dns.clone(),
                lease_secs: s.lease_time.unwrap_or(DEFAULT_LEASE_SECS),
                lease_file: Some(anchored(
                    s.lease_file
                        .as_deref()
                        .unwrap_or(Path::new(DEFAULT_LEASE_FILE)),
                )),
            }
        }
    };
    if s.dhcp != DhcpMode::Full
        && (s.dhcp_range.is_some() || s.router.is_some() || !s.dns.is_empty())
    {
        return Err(config_err(
            "dhcp_range, router and dns need dhcp = \"full\"".into(),
        ));
    }
    // An iPXE template file is read by path; a URL is handed out as is.
    let ipxe_script = s.ipxe_script.map(|v| {
        if v.contains("://") {
            v
        } else {
            anchored(Path::new(&v)).display().to_string()
        }
    });
    let port = |p: Option<u16>, default: u16| {
        let p = p.unwrap_or(default);
        (p != 0).then_some(p)
    };
    Ok(ServerConfig {
        root: anchored(&s.root),
        listen: s.listen.unwrap_or(Ipv4Addr::UNSPECIFIED),
        interface: s.interface,
        server_ip: s.server_ip,
        dhcp,
        tftp_port: port(s.tftp_port, DEFAULT_TFTP_PORT),
        http_port: port(s.http_port, DEFAULT_HTTP_PORT),
        bios_bootfile: s.bios_bootfile,
        uefi_bootfile: s.uefi_bootfile,
        arm64_bootfile: s.arm64_bootfile,
        ipxe_script,
        rules_file: Some(path.to_path_buf()),
    })
}

fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("dhcp_range {text:?} must be FIRST-LAST"))?;
    let parse = |t: &str| {
        t.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("dhcp_range: {t:?} is not an IPv4 address"))
    };
    Ok((parse(a)?, parse(b)?))
}

/// Starts the netboot server FILE describes (see the module docs) on the current tokio
/// runtime, with `library:` paths served from `library`. Returns once every socket is bound;
/// stop it with [`ServerHandle::shutdown`] when the daemon drains.
pub async fn start_netboot(
    config: &Path,
    library: Library,
) -> Result<ServerHandle, NetbootStartError> {
    start_netboot_with_images(config, Arc::new(LibraryImages::new(library))).await
}

/// [`start_netboot`] with every `library:` read going through `cache` (the daemon's shared
/// cache: NBD, HTTP and netboot clients of one version share its chunks).
pub async fn start_netboot_cached(
    config: &Path,
    library: Library,
    cache: Arc<dyn ChunkCache>,
) -> Result<ServerHandle, NetbootStartError> {
    start_netboot_with_images(config, Arc::new(LibraryImages::with_cache(library, cache))).await
}

/// [`start_netboot`] with another source of `library:` images (e.g. one that reads through
/// the daemon's shared cache).
pub async fn start_netboot_with_images(
    config: &Path,
    images: Arc<dyn ImageSource>,
) -> Result<ServerHandle, NetbootStartError> {
    let path = config.to_path_buf();
    let server_config = tokio::task::spawn_blocking(move || load_netboot_config(&path))
        .await
        .map_err(|e| NetbootStartError::Config {
            path: config.display().to_string(),
            message: format!("reading it failed: {e}"),
        })??;
    Ok(Server::start_with_images(server_config, images).await?)
}

/// The library as the daemon's netboot server sees it: restricted items are missing (and every
/// request for one is an audit record); everything else comes from `inner`.
pub struct GatedImages {
    pub inner: Arc<dyn ImageSource>,
    pub gate: Arc<crate::http::gate::MediaGate>,
}

impl ImageSource for GatedImages {
    fn open_image(&self, spec: &str) -> io::Result<(Arc<dyn ReadAt>, ImageKey)> {
        let item = crate::api::access::item_of_spec(spec);
        if self.gate.restricted(item) {
            // The netboot server does not tell the client's address to its image source.
            self.gate
                .record_denied(None, "-", &format!("netboot open library:{spec}"), item);
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such image: {spec}"),
            ));
        }
        self.inner.open_image(spec)
    }
}

/// The daemon's netboot server: [`start_netboot_cached`] with restricted items refused
/// (module docs). A rules file naming a restricted item is refused before anything starts.
pub async fn start_netboot_gated(
    config: &Path,
    library: Library,
    cache: Arc<dyn ChunkCache>,
    gate: Arc<crate::http::gate::MediaGate>,
) -> Result<ServerHandle, NetbootStartError> {
    let files = netboot_rule_files(config);
    let check = Arc::clone(&gate);
    let found = tokio::task::spawn_blocking(move || {
        for reference in crate::api::usage::netboot_references(&files) {
            if let Some((item, _)) = crate::api::usage::reference_target(&reference) {
                if check.restricted(item) {
                    return Some((reference.clone(), item.to_string()));
                }
            }
        }
        None
    })
    .await
    .map_err(|e| NetbootStartError::Config {
        path: config.display().to_string(),
        message: format!("reading it failed: {e}"),
    })?;
    if let Some((reference, item)) = found {
        return Err(NetbootStartError::Restricted {
            path: config.display().to_string(),
            reference,
            item,
        });
    }
    let images = Arc::new(GatedImages {
        inner: Arc::new(LibraryImages::with_cache(library, cache)),
        gate,
    });
    start_netboot_with_images(config, images).await
}

/// The netboot file and the rules file it names (where `library:` references are).
pub fn netboot_rule_files(config: &Path) -> Vec<PathBuf> {
    let mut files = vec![config.to_path_buf()];
    if let Ok(loaded) = load_netboot_config(config) {
        files.extend(loaded.rules_file);
    }
    files
}
