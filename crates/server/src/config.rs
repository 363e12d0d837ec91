//! The daemon's settings: command-line flags over a TOML file (`--config`, the same keys as
//! the flags, e.g. `http-port = 8080`, `cache-size = "1G"`) over defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cache::DEFAULT_CACHE_BYTES;
use crate::preload::DEFAULT_TRACE_WINDOW;

/// NBD's registered port.
pub const DEFAULT_NBD_PORT: u16 = 10809;
/// Plain HTTP's default port (unprivileged, the usual alternative to 80).
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Listen on every address: the daemon serves machines on the network.
pub const DEFAULT_LISTEN: &str = "0.0.0.0";
/// Largest config file read (it holds a few keys).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("invalid configuration {path}: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("invalid {key} {value:?}: {problem}")]
    Value {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("--tls-cert and --tls-key go together (the HTTPS port needs both)")]
    TlsPair,
    #[error("--cache-dir and --cache-dir-size go together")]
    CacheDirPair,
}

/// Every setting, each optional: one from the flags, one from the file; `merge` combines.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub library: Option<String>,
    pub listen: Option<String>,
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    pub nbd_port: Option<u16>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub cache_size: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cache_dir_size: Option<String>,
    pub state: Option<PathBuf>,
    #[serde(default)]
    pub preload: Vec<String>,
    pub trace_window: Option<String>,
    /// A netboot rules file (`vmedia netboot serve`'s, plus a `[server]` table) run inside the daemon.
    pub netboot: Option<PathBuf>,
    /// Library locations this daemon's library is pushed to, continuously.
    #[serde(default)]
    pub replicate_to: Vec<String>,
    /// Library locations pulled into this daemon's library, continuously.
    #[serde(default)]
    pub mirror_from: Vec<String>,
    /// How often each replication peer is synced (default 30s).
    pub replicate_interval: Option<String>,
}

impl Settings {
    /// Reads a TOML settings file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })
    }

    /// `self` (flags) wins over `file`; preloads add up.
    pub fn merge(self, file: Settings) -> Settings {
        let mut preload = file.preload;
        preload.extend(self.preload);
        let mut replicate_to = file.replicate_to;
        replicate_to.extend(self.replicate_to);
        let mut mirror_from = file.mirror_from;
        mirror_from.extend(self.mirror_from);
        Settings {
            library: self.library.or(file.library),
            listen: self.listen.or(file.listen),
            http_port: self.http_port.or(file.http_port),
            https_port: self.https_port.or(file.https_port),
            nbd_port: self.nbd_port.or(file.nbd_port),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            cache_size: self.cache_size.or(file.cache_size),
            cache_dir: self.cache_dir.or(file.cache_dir),
            cache_dir_size: self.cache_dir_size.or(file.cache_dir_size),
            state: self.state.or(file.state),
            preload,
            trace_window: self.trace_window.or(file.trace_window),
            netboot: self.netboot.or(file.netboot),
            replicate_to,
            mirror_from,
            replicate_interval: self.replicate_interval.or(file.replicate_interval),
        }
    }

    /// The replication interval, checked (`replicate-interval`, at least one second).
    pub fn replicate_interval(&self) -> Result<Duration, ConfigError> {
        let Some(text) = &self.replicate_interval else {
            return Ok(crate::replicate::DEFAULT_REPLICATE_INTERVAL);
        };
        let interval = parse_duration("replicate-interval", text)?;
        if interval < crate::replicate::MIN_REPLICATE_INTERVAL {
            return Err(ConfigError::Value {
                key: "replicate-interval",
                value: text.clone(),
                problem: "at least 1s".into(),
            });
        }
        Ok(interval)
    }

    /// The daemon's options, defaults filled in; `default_state` is used without `state`.
    pub fn resolve(self, default_state: PathBuf) -> Result<ServerOptions, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: IpAddr = listen_text.parse().map_err(|_| ConfigError::Value {
            key: "listen",
            value: listen_text.clone(),
            problem: "an IPv4 or IPv6 address".into(),
        })?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        let cache_bytes = match &self.cache_size {
            Some(text) => parse_size("cache-size", text)?,
            None => DEFAULT_CACHE_BYTES,
        };
        let disk_cache = match (self.cache_dir, self.cache_dir_size) {
            (Some(dir), Some(size)) => Some((dir, parse_size("cache-dir-size", &size)?)),
            (None, None) => None,
            _ => return Err(ConfigError::CacheDirPair),
        };
        let trace_window = match &self.trace_window {
            Some(text) => parse_duration("trace-window", text)?,
            None => DEFAULT_TRACE_WINDOW,
        };
        // Without --tls-cert/--tls-key the daemon makes a self-signed certificate in its state
        // folder on first start (`tls::self_signed`).
        let https_port = self.https_port.unwrap_or(0);
        Ok(ServerOptions {
            listen,
            http_port: self.http_port.unwrap_or(DEFAULT_HTTP_PORT),
            https_port,
            nbd_port: self.nbd_port.unwrap_or(DEFAULT_NBD_PORT),
            tls,
            cache_bytes,
            disk_cache,
            state_dir: self.state.unwrap_or(default_state),
            preload: self.preload,
            trace_window,
            netboot: self.netboot,
            systems: None,
            replication: None,
        })
    }
}

/// What `Server::start` needs. A port of 0 turns that listener off.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: IpAddr,
    pub http_port: u16,
    pub https_port: u16,
    pub nbd_port: u16,
    /// Certificate chain and private key (PEM); without, HTTPS uses a self-signed certificate
    /// kept in the state folder.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub cache_bytes: u64,
    /// The on-disk cache tier: folder and byte budget.
    pub disk_cache: Option<(PathBuf, u64)>,
    /// The daemon's own state (clones, boot traces).
    pub state_dir: PathBuf,
    /// Versions to read into the cache at start.
    pub preload: Vec<String>,
    pub trace_window: Duration,
    /// The netboot rules file to serve DHCP/TFTP/HTTP boot from, with `library:` paths.
    pub netboot: Option<PathBuf>,
    /// The VM store whose VMs Redfish serves as systems on the HTTPS listener; None: no Redfish.
    pub systems: Option<vmedia_boot::store::BootConfig>,
    /// Continuous replication with other libraries (`--replicate-to`, `--mirror-from`); the
    /// binary builds it, since opening a peer needs the credentials it maps.
    pub replication: Option<crate::replicate::ReplicationOptions>,
}

/// `4096`, `512K`, `256M`, `1G`, `2T` (binary units, optional `iB`/`B`).
pub fn parse_size(key: &'static str, text: &str) -> Result<u64, ConfigError> {
    let fail = |problem: &str| ConfigError::Value {
        key,
        value: text.to_string(),
        problem: problem.to_string(),
    };
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let unit_less = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match unit_less.chars().last() {
        Some('k') => (&unit_less[..unit_less.len() - 1], 10),
        Some('m') => (&unit_less[..unit_less.len() - 1], 20),
        Some('g') => (&unit_less[..unit_less.len() - 1], 30),
        Some('t') => (&unit_less[..unit_less.len() - 1], 40),
        _ => (unit_less, 0),
    };
    let number: u64 = digits
        .trim()
        .parse()
        .map_err(|_| fail("a size like 256M, 1G or 4096"))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| fail("too large"))
}

/// `90`, `90s`, `5m`, `1h`.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let fail = || ConfigError::Value {
        key,
        value: text.to_string(),
        problem: "a duration like 60s, 5m or 1h".into(),
    };
    let t = text.trim();
    let (digits, unit) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| fail())?;
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("x", "256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("x", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("x", "4096").unwrap(), 4096);
        assert_eq!(parse_size("x", "512k").unwrap(), 512 << 10);
        assert!(parse_size("x", "lots").is_err());
        assert!(parse_size("x", "99999999999T").is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_ports_default() {
        let file: Settings =
            toml::from_str("http-port = 81\nnbd-port = 0\ncache-size = \"1G\"\npreload = [\"a\"]")
                .unwrap();
        let flags = Settings {
            http_port: Some(82),
            preload: vec!["b".into()],
            ..Settings::default()
        };
        let options = flags.merge(file).resolve("/state".into()).unwrap();
        assert_eq!(options.http_port, 82);
        assert_eq!(options.nbd_port, 0);
        assert_eq!(options.https_port, 0);
        assert_eq!(options.cache_bytes, 1 << 30);
        assert_eq!(options.preload, ["a", "b"]);
        assert_eq!(options.trace_window, DEFAULT_TRACE_WINDOW);
        assert!(toml::from_str::<Settings>("htp-port = 1").is_err());
    }

    #[test]
    fn https_without_a_certificate_uses_a_self_signed_one_and_cert_and_key_go_together() {
        let s = Settings {
            https_port: Some(8443),
            ..Settings::default()
        };
        let options = s.resolve("/s".into()).unwrap();
        assert_eq!(options.https_port, 8443);
        assert!(options.tls.is_none());
        let s = Settings {
            tls_cert: Some("c".into()),
            ..Settings::default()
        };
        assert!(matches!(s.resolve("/s".into()), Err(ConfigError::TlsPair)));
    }
}
