//! The environment variables vmedia honours, mapped to the libraries' explicit configuration.
//! Library crates read no environment; every variable is read here, by the binary. Where a
//! setting may also come from a configuration file (config.rs), the chain is here too: a flag,
//! then the variable, then the files, then the default.

use std::ffi::OsStr;
use std::path::PathBuf;

use vmedia_boot::store::BootConfig;
use vmedia_io::Durability;
use vmedia_library::S3Settings;

/// Asks every vmedia output to be flushed to stable storage (`1`, `true`, `yes`).
pub const SYNC_ENV: &str = "VMEDIA_SYNC";
/// The QEMU system emulator to run instead of `qemu-system-x86_64` (a wrapper, another build).
pub const QEMU_ENV: &str = "VMEDIA_QEMU";
/// The state folder for VMs and caches (else `$XDG_DATA_HOME/vmedia`, else
/// `~/.local/share/vmedia`).
pub const HOME_ENV: &str = "VMEDIA_HOME";
/// The default for `disk --allow-references`.
pub const ALLOW_REFERENCES_ENV: &str = "VMEDIA_ALLOW_REFERENCES";
/// `disk --ignore-checksums` for every command (`1`, `true`, `yes`).
pub const IGNORE_CHECKSUMS_ENV: &str = "VMEDIA_IGNORE_CHECKSUMS";

/// The library location when no `--library` is given.
pub const LIBRARY_ENV: &str = "VMEDIA_LIBRARY";
/// The key file of an encrypted library when no `--key`/`--library-key` is given.
pub const LIBRARY_KEY_ENV: &str = "VMEDIA_LIBRARY_KEY";

/// The token sent to the daemon when no configuration file gives one.
pub const TOKEN_ENV: &str = "VMEDIA_TOKEN";

/// A variable's text, when set and not empty.
fn text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A variable's text, when set and not empty (for `config show`).
pub fn raw(name: &str) -> Option<String> {
    text(name)
}

/// The configuration files, highest precedence first: `$XDG_CONFIG_HOME/vmedia/config.toml`
/// (else `~/.config/vmedia/config.toml`), then `/etc/vmedia/config.toml`.
pub fn config_paths() -> Vec<PathBuf> {
    let user = text("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| text("HOME").map(|home| PathBuf::from(home).join(".config")));
    user.map(|dir| dir.join("vmedia/config.toml"))
        .into_iter()
        .chain([PathBuf::from(crate::config::SYSTEM_CONFIG)])
        .collect()
}

/// `VMEDIA_LIBRARY`, else a configuration file's `library`.
pub fn library_location() -> Option<String> {
    text(LIBRARY_ENV).or_else(|| crate::config::file_value(|s| s.library.as_ref()))
}

/// The daemon token: `VMEDIA_TOKEN`, else a configuration file's `token`.
pub fn server_token() -> Option<String> {
    text(TOKEN_ENV).or_else(|| crate::config::file_value(|s| s.token.as_ref()))
}

/// The VM defaults of the configuration files (`firmware`, `memory`, `accel`), which flags
/// override; values were checked when the files were read.
pub fn vm_defaults() -> (Option<String>, Option<String>, Option<String>) {
    use crate::config::file_value;
    (
        file_value(|s| s.firmware.as_ref()),
        file_value(|s| s.memory.as_ref()),
        file_value(|s| s.accel.as_ref()),
    )
}

/// `VMEDIA_LIBRARY_KEY`, when set.
pub fn library_key() -> Option<PathBuf> {
    text(LIBRARY_KEY_ENV).map(PathBuf::from)
}

/// The default library location: a folder under the user's data directory (XDG).
pub fn default_library_location() -> anyhow::Result<String> {
    if let Some(data) = text("XDG_DATA_HOME") {
        return Ok(format!("{data}/vmedia/library"));
    }
    let home = text("HOME").ok_or_else(|| {
        anyhow::anyhow!(
            "no --library, VMEDIA_LIBRARY, XDG_DATA_HOME or HOME to place the library in"
        )
    })?;
    Ok(format!("{home}/.local/share/vmedia/library"))
}

/// S3 settings from the variables the AWS tools read, `--s3-endpoint` winning over
/// AWS_ENDPOINT_URL. Plain http is allowed exactly when the endpoint says http://.
pub fn s3_settings(endpoint_flag: Option<&str>) -> S3Settings {
    let endpoint = endpoint_flag
        .map(str::to_string)
        .or_else(|| text("AWS_ENDPOINT_URL_S3"))
        .or_else(|| text("AWS_ENDPOINT_URL"));
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    S3Settings {
        endpoint,
        region: text("AWS_REGION").or_else(|| text("AWS_DEFAULT_REGION")),
        access_key_id: text("AWS_ACCESS_KEY_ID"),
        secret_access_key: text("AWS_SECRET_ACCESS_KEY"),
        allow_http,
    }
}

/// A peer daemon's token from VMEDIA_PEER_TOKEN (an administrator's API token there).
pub fn peer_token() -> Option<String> {
    text("VMEDIA_PEER_TOKEN")
}

/// A PEM file to trust for peer daemons, from VMEDIA_PEER_CA_CERT.
pub fn peer_ca_cert() -> Option<std::path::PathBuf> {
    text("VMEDIA_PEER_CA_CERT").map(std::path::PathBuf::from)
}

/// VMEDIA_PEER_INSECURE=1: accept any certificate from peer daemons.
pub fn peer_insecure() -> bool {
    text("VMEDIA_PEER_INSECURE").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// The user name recorded in library events (`USER`, else `LOGNAME`).
pub fn user_name() -> Option<String> {
    text("USER").or_else(|| text("LOGNAME"))
}

/// The durability for outputs whose peers do not flush: `Flush` when `requested` (a `--sync`
/// flag) or `VMEDIA_SYNC` is 1/true/yes (like `sync` after cp), else `PageCache`.
pub fn durability(requested: bool) -> Durability {
    durability_from(requested, std::env::var(SYNC_ENV).ok().as_deref())
}

fn durability_from(requested: bool, value: Option<&str>) -> Durability {
    let asked = value
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    if requested || asked {
        Durability::Flush
    } else {
        Durability::PageCache
    }
}

/// The boot crate's configuration: the state folder and the QEMU binary.
pub fn boot_config() -> anyhow::Result<BootConfig> {
    use std::env::var_os;
    let state_dir = vmedia_boot::store::state_dir_from(
        var_os(HOME_ENV).as_deref(),
        var_os("XDG_DATA_HOME").as_deref(),
        var_os("HOME").as_deref(),
    )?;
    let config = BootConfig::new(state_dir);
    Ok(match var_os(QEMU_ENV) {
        Some(qemu) => config.with_qemu(qemu),
        None => config,
    })
}

/// `VMEDIA_ALLOW_REFERENCES`, when set.
pub fn allow_references() -> Option<String> {
    std::env::var(ALLOW_REFERENCES_ENV).ok()
}

/// Whether `VMEDIA_IGNORE_CHECKSUMS` is 1/yes/true.
pub fn ignore_checksums() -> bool {
    std::env::var_os(IGNORE_CHECKSUMS_ENV).is_some_and(|v| is_yes(&v))
}

/// The daemon's HTTP address for the commands that talk to `vmedia serve` (`clone`, `top`).
pub const SERVER_ENV: &str = "VMEDIA_SERVER";
/// Where `vmedia serve` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The daemon's URL: `--server` when given, else `VMEDIA_SERVER`, else a configuration
/// file's `server`, else the default.
pub fn server_url(flag: Option<String>) -> String {
    let env = std::env::var(SERVER_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| crate::config::file_value(|s| s.server.as_ref()));
    server_url_from(flag, env)
}

/// Whether a daemon was named anywhere (flag aside): `doctor` checks it only then.
pub fn server_configured() -> bool {
    text(SERVER_ENV).is_some() || crate::config::file_value(|s| s.server.as_ref()).is_some()
}

fn server_url_from(flag: Option<String>, env: Option<String>) -> String {
    flag.or(env.filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn is_yes(value: &OsStr) -> bool {
    matches!(value.to_str(), Some("1" | "yes" | "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_value_selects_flush() {
        assert_eq!(durability_from(false, None), Durability::PageCache);
        assert_eq!(durability_from(true, None), Durability::Flush);
        assert_eq!(durability_from(false, Some("1")), Durability::Flush);
        assert_eq!(durability_from(false, Some(" Yes ")), Durability::Flush);
        assert_eq!(durability_from(false, Some("0")), Durability::PageCache);
        assert_eq!(durability_from(true, Some("0")), Durability::Flush);
    }

    #[test]
    fn server_flag_beats_the_environment_which_beats_the_default() {
        let url = |flag: Option<&str>, env: Option<&str>| {
            server_url_from(flag.map(Into::into), env.map(Into::into))
        };
        assert_eq!(url(None, None), DEFAULT_SERVER);
        assert_eq!(url(None, Some("")), DEFAULT_SERVER);
        assert_eq!(url(None, Some("http://h:1/")), "http://h:1");
        assert_eq!(url(Some("http://f:2"), Some("http://h:1")), "http://f:2");
    }

    #[test]
    fn ignore_checksums_accepts_the_documented_words_only() {
        assert!(is_yes(OsStr::new("1")));
        assert!(is_yes(OsStr::new("true")));
        assert!(!is_yes(OsStr::new("TRUE")));
        assert!(!is_yes(OsStr::new("0")));
    }
}
