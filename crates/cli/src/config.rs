//! The configuration files for defaults users repeat (`$XDG_CONFIG_HOME/vmedia/config.toml`,
//! then `/etc/vmedia/config.toml`) and `vmedia config show`. Precedence, highest first: a
//! command-line flag, an environment variable, the user's file, the system file, the built-in
//! default. The files' locations come from env.rs (which reads the environment); this module
//! only parses and merges.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The system-wide file, read after the user's.
pub const SYSTEM_CONFIG: &str = "/etc/vmedia/config.toml";
/// A configuration file is a handful of lines; a bigger one is not a configuration file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What a configuration file may set. Unknown keys are refused (a typo would otherwise be a
/// silently ignored setting).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// The library location: a folder or s3://BUCKET/PREFIX (like --library).
    pub library: Option<String>,
    /// The daemon's URL for `clone`, `top` and `doctor` (like --server).
    pub server: Option<String>,
    /// The token sent to the daemon.
    pub token: Option<String>,
    /// bios or uefi (like --firmware).
    pub firmware: Option<String>,
    /// Guest memory, MiB or with a G suffix (like --memory).
    pub memory: Option<String>,
    /// auto, kvm or tcg (like --accel).
    pub accel: Option<String>,
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "detail")]
pub enum Origin {
    /// A configuration file (its path).
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// The built-in default.
    Default,
    /// Not set anywhere and no default.
    Unset,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment {name}"),
            Origin::Default => f.write_str("default"),
            Origin::Unset => f.write_str("not set"),
        }
    }
}

/// One file as read, for the merge.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub settings: FileSettings,
}

/// The files in effect, highest precedence first.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub loaded: Vec<LoadedFile>,
}

impl Files {
    /// Reads each path that exists (a missing file is not an error; an unreadable or invalid
    /// one is, naming the file and the key).
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<Files> {
        let mut loaded = Vec::new();
        for path in paths {
            let Some(settings) = read_file(path)? else {
                continue;
            };
            loaded.push(LoadedFile {
                path: path.clone(),
                settings,
            });
        }
        Ok(Files { loaded })
    }

    /// The first file setting `key`, with its value.
    pub fn lookup(&self, key: fn(&FileSettings) -> Option<&String>) -> Option<(String, &Path)> {
        self.loaded
            .iter()
            .find_map(|file| key(&file.settings).map(|v| (v.clone(), file.path.as_path())))
    }
}

fn read_file(path: &Path) -> anyhow::Result<Option<FileSettings>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot read the configuration file {}",
                path.display()
            )))
        }
    };
    if meta.len() > MAX_CONFIG_BYTES {
        bail!(
            "the configuration file {} is {} bytes; at most {MAX_CONFIG_BYTES} are read",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    parse(&text)
        .map(Some)
        .with_context(|| format!("the configuration file {} is invalid", path.display()))
}

/// Parses one file's text and checks its values.
pub fn parse(text: &str) -> anyhow::Result<FileSettings> {
    let settings: FileSettings = toml::from_str(text).map_err(|e| {
        // One line: toml's own Display quotes the source over several.
        match e.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                anyhow::anyhow!("line {line}: {}", e.message())
            }
            None => anyhow::anyhow!("{}", e.message()),
        }
    })?;
    if let Some(firmware) = &settings.firmware {
        if !matches!(firmware.as_str(), "bios" | "uefi") {
            bail!("firmware = {firmware:?}: use \"bios\" or \"uefi\"");
        }
    }
    if let Some(accel) = &settings.accel {
        if !matches!(accel.as_str(), "auto" | "kvm" | "tcg") {
            bail!("accel = {accel:?}: use \"auto\", \"kvm\" or \"tcg\"");
        }
    }
    if let Some(memory) = &settings.memory {
        vmedia_boot::spec::parse_memory(memory).with_context(|| format!("memory = {memory:?}"))?;
    }
    Ok(settings)
}

static FILES: OnceLock<Files> = OnceLock::new();

/// Reads the configuration files once for this run (main calls it before any command).
pub fn load() -> anyhow::Result<()> {
    let files = Files::read(&crate::env::config_paths())?;
    let _ = FILES.set(files);
    Ok(())
}

/// The files of this run (none when `load` was not called, as in unit tests).
pub fn files() -> &'static Files {
    FILES.get_or_init(Files::default)
}

/// A value from the files, for env.rs's precedence chains.
pub fn file_value(key: fn(&FileSettings) -> Option<&String>) -> Option<String> {
    files().lookup(key).map(|(value, _)| value)
}

/// One effective setting as `config show` prints it.
#[derive(Debug, Serialize)]
pub struct Effective {
    pub key: &'static str,
    pub value: Option<String>,
    pub origin: Origin,
}

/// `env` value (with its variable) beats a file which beats `default`.
fn effective(
    key: &'static str,
    env: Option<(&str, Option<String>)>,
    file: fn(&FileSettings) -> Option<&String>,
    default: Option<String>,
) -> Effective {
    if let Some((name, Some(value))) = env {
        return Effective {
            key,
            value: Some(value),
            origin: Origin::Env(name.to_string()),
        };
    }
    if let Some((value, path)) = files().lookup(file) {
        return Effective {
            key,
            value: Some(value),
            origin: Origin::File(path.to_path_buf()),
        };
    }
    match default {
        Some(value) => Effective {
            key,
            value: Some(value),
            origin: Origin::Default,
        },
        None => Effective {
            key,
            value: None,
            origin: Origin::Unset,
        },
    }
}

/// Every setting's effective value (without command-line flags, which apply per command).
pub fn effective_settings() -> Vec<Effective> {
    use crate::env;
    let mut token = effective(
        "token",
        Some((env::TOKEN_ENV, env::raw(env::TOKEN_ENV))),
        |s| s.token.as_ref(),
        None,
    );
    // A secret is shown as set, never printed.
    if token.value.is_some() {
        token.value = Some("(set, hidden)".into());
    }
    vec![
        effective(
            "library",
            Some((env::LIBRARY_ENV, env::raw(env::LIBRARY_ENV))),
            |s| s.library.as_ref(),
            env::default_library_location().ok(),
        ),
        effective(
            "server",
            Some((env::SERVER_ENV, env::raw(env::SERVER_ENV))),
            |s| s.server.as_ref(),
            Some(env::DEFAULT_SERVER.to_string()),
        ),
        token,
        effective(
            "firmware",
            None,
            |s| s.firmware.as_ref(),
            Some("bios".into()),
        ),
        effective(
            "memory",
            None,
            |s| s.memory.as_ref(),
            Some(format!(
                "{}M",
                vmedia_boot::spec::VmSpec::new("x").memory_mib
            )),
        ),
        effective("accel", None, |s| s.accel.as_ref(), Some("auto".into())),
    ]
}

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings and where each came from
    #[command(after_help = "Examples:
  vmedia config show
  vmedia config show --json

Files, highest precedence first: $XDG_CONFIG_HOME/vmedia/config.toml (else
~/.config/vmedia/config.toml), then /etc/vmedia/config.toml. Command-line flags beat
environment variables, which beat the files. Keys: library, server, token, firmware, memory,
accel; for example:

  library = \"/srv/vmedia/library\"
  server = \"http://images.lan:8080\"
  firmware = \"uefi\"
  memory = \"2G\"
  accel = \"kvm\"")]
    Show {
        /// Print the settings as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct ShowReport<'a> {
    files_read: Vec<&'a Path>,
    files_searched: Vec<PathBuf>,
    settings: Vec<Effective>,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show { json } => {
            let report = ShowReport {
                files_read: files().loaded.iter().map(|f| f.path.as_path()).collect(),
                files_searched: crate::env::config_paths(),
                settings: effective_settings(),
            };
            if json {
                crate::print_json(&report)?;
            } else {
                for setting in &report.settings {
                    println!(
                        "{:<9} {:<40} ({})",
                        setting.key,
                        setting.value.as_deref().unwrap_or("-"),
                        setting.origin
                    );
                }
                let searched: Vec<String> = report
                    .files_searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                println!("files searched: {}", searched.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_the_documented_keys_and_refuses_others() {
        let settings = parse(
            "library = \"/srv/lib\"\nserver = \"http://h:1\"\nfirmware = \"uefi\"\nmemory = \"2G\"\naccel = \"tcg\"\n",
        )
        .unwrap();
        assert_eq!(settings.library.as_deref(), Some("/srv/lib"));
        assert_eq!(settings.firmware.as_deref(), Some("uefi"));
        let err = format!("{:#}", parse("librari = \"x\"").unwrap_err());
        assert!(err.contains("librari"), "{err}");
        let err = format!("{:#}", parse("firmware = \"efi\"").unwrap_err());
        assert!(err.contains("bios"), "{err}");
        let err = format!("{:#}", parse("memory = \"lots\"").unwrap_err());
        assert!(err.contains("memory"), "{err}");
    }

    #[test]
    fn the_first_file_wins_key_by_key_and_missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let system = dir.path().join("system.toml");
        std::fs::write(&user, "memory = \"1G\"\n").unwrap();
        std::fs::write(&system, "memory = \"4G\"\nfirmware = \"uefi\"\n").unwrap();
        let files =
            Files::read(&[dir.path().join("absent.toml"), user.clone(), system.clone()]).unwrap();
        assert_eq!(files.loaded.len(), 2);
        let (memory, from) = files.lookup(|s| s.memory.as_ref()).unwrap();
        assert_eq!((memory.as_str(), from), ("1G", user.as_path()));
        let (firmware, from) = files.lookup(|s| s.firmware.as_ref()).unwrap();
        assert_eq!((firmware.as_str(), from), ("uefi", system.as_path()));
        assert!(files.lookup(|s| s.accel.as_ref()).is_none());
    }

    #[test]
    fn an_invalid_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("config.toml");
        std::fs::write(&bad, "memory = [").unwrap();
        let err = format!("{:#}", Files::read(std::slice::from_ref(&bad)).unwrap_err());
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }
}
