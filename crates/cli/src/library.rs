//! `vmedia library ...` and `library:NAME[@V]` sources: flag parsing, the environment-to-config
//! mapping (VMEDIA_LIBRARY, VMEDIA_LIBRARY_KEY, AWS_*), printing and exit codes. The library
//! itself (chunking, manifests, timelines, stores) is `vmedia_library`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use vmedia_io::{OverwritePolicy, ReadAt};
use vmedia_library::{
    AddOptions, AddSource, InitOptions, Library, Location, OpenConfig, RollbackTarget, VersionSpec,
};

use crate::progress::Bar;

pub mod push;
pub(crate) mod remote;
pub mod sync;

/// What `library:` in front of an image argument means: the rest is `NAME[@V]` in the library.
pub const LIBRARY_PATH_PREFIX: &str = "library:";

/// Exit code of `verify` and `verify-signature` when the check ran and found a problem (1 is
/// kept for "could not run", so scripts can tell damage from a typo).
const EXIT_CHECK_FAILED: u8 = 3;

/// The default retention window (the 72-hour timeline).
const DEFAULT_KEEP_WITHIN: &str = "72h";

// ---------------------------------------------------------------------------------------------
// Options every command that reaches a library shares

/// Where the library is and how to open it; global, so `vmedia iso ls library:NAME` takes them too.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GlobalArgs {
    /// Library location: a folder or s3://BUCKET/PREFIX. Env: VMEDIA_LIBRARY; default
    /// $XDG_DATA_HOME/vmedia/library (~/.local/share/vmedia/library)
    #[arg(
        long,
        global = true,
        value_name = "LOCATION",
        help_heading = "Library options"
    )]
    pub library: Option<String>,
    /// S3-compatible endpoint URL (http:// is allowed for it). Env: AWS_ENDPOINT_URL
    #[arg(
        long = "s3-endpoint",
        global = true,
        value_name = "URL",
        help_heading = "Library options"
    )]
    pub s3_endpoint: Option<String>,
    /// Key file of an encrypted library, for `library:` paths (`vmedia library` takes --key).
    /// Env: VMEDIA_LIBRARY_KEY
    #[arg(
        long = "library-key",
        global = true,
        value_name = "FILE",
        help_heading = "Library options"
    )]
    pub library_key: Option<PathBuf>,
}

static GLOBAL: OnceLock<GlobalArgs> = OnceLock::new();

/// `vmedia library`'s own `--key` (not global to every command: `iso verify --key` is taken).
static LIBRARY_KEY: OnceLock<PathBuf> = OnceLock::new();

/// `--server` and friends of this run: commands that can act through a daemon do so when set.
static REMOTE: OnceLock<remote::RemoteArgs> = OnceLock::new();

/// The daemon to act through, when `--server` (or an https:// VMEDIA_SERVER) names one.
fn remote_client() -> Result<Option<vmedia_server::client::Client>> {
    REMOTE.get().cloned().unwrap_or_default().client()
}

/// Refuses a flag that has no meaning through the REST API.
fn local_only(flag: &str, given: bool) -> Result<()> {
    if given {
        bail!("{flag} works on a local library only, not through --server");
    }
    Ok(())
}

/// Records the global library options for this run (main calls it once, before any command).
pub fn set_global(args: GlobalArgs) {
    let _ = GLOBAL.set(args);
}

fn global() -> GlobalArgs {
    GLOBAL.get().cloned().unwrap_or_default()
}

/// `user@host`, recorded as the actor of every event this process makes.
fn actor() -> String {
    let user =
        crate::env::user_name().unwrap_or_else(|| format!("uid{}", unsafe { libc::getuid() }));
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    format!("{user}@{host}")
}

fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))
}

/// The configuration to open `location` (or the global/env/default one when `None`).
fn config_for(location: Option<&str>, key: Option<&Path>) -> Result<OpenConfig> {
    let options = global();
    let text = match location {
        Some(l) => l.to_string(),
        None => match options
            .library
            .clone()
            .or_else(crate::env::library_location)
        {
            Some(l) => l,
            None => crate::env::default_library_location()?,
        },
    };
    let location = Location::parse(&text)?;
    let key_path = match key {
        Some(k) => Some(k.to_path_buf()),
        None => LIBRARY_KEY
            .get()
            .cloned()
            .or(options.library_key.clone())
            .or_else(crate::env::library_key),
    };
    let key = key_path.as_deref().map(read_key_file).transpose()?;
    let mut config = OpenConfig {
        location,
        s3: crate::env::s3_settings(options.s3_endpoint.as_deref()),
        store: None,
        key,
        actor: actor(),
    };
    // A peer daemon as the location: reached with the VMEDIA_PEER_* settings unless the
    // command's --peer-* flags attach it again.
    sync::PeerArgs::default().attach(&mut config)?;
    Ok(config)
}

fn open_library() -> Result<Library> {
    let config = config_for(None, None)?;
    Ok(Library::open(&config)?)
}

/// The library location when one is configured (`--library`, VMEDIA_LIBRARY or a
/// configuration file), for `vmedia doctor`; `None` means the default would be used.
pub fn doctor_location() -> Option<String> {
    global().library.or_else(crate::env::library_location)
}

/// Opens the configured library as every library command does, for `vmedia doctor`.
pub fn doctor_open() -> Result<String> {
    let config = config_for(None, None)?;
    let location = config.location.to_string();
    Library::open(&config)?;
    Ok(location)
}

/// The library `vmedia serve` serves: `--library`, else `configured` (its settings file),
/// else VMEDIA_LIBRARY or the default, opened like every library command opens it.
pub fn open_library_for_serve(configured: Option<&str>) -> Result<(Library, OpenConfig)> {
    let location = global().library.or_else(|| configured.map(str::to_string));
    let config = config_for(location.as_deref(), None)?;
    Ok((Library::open(&config)?, config))
}

/// A replication peer's library location, with the run's S3 settings and key (replicas share
/// one key), a peer daemon reached as `peer` says.
pub fn peer_config(location: &str, peer: &sync::PeerArgs) -> Result<OpenConfig> {
    let mut config = config_for(Some(location), None)?;
    peer.attach(&mut config)?;
    Ok(config)
}

/// The library location given for this run (`--library`, else VMEDIA_LIBRARY), if any: what
/// `vmedia netboot serve` serves `library:` paths from.
pub fn requested_library_location() -> Option<String> {
    global().library.or_else(crate::env::library_location)
}

/// The library every `library:` argument of this run reads (`disk compare library:A library:B`
/// opens it once: one configuration read, one S3 client).
static SHARED: OnceLock<Library> = OnceLock::new();

fn shared_library() -> Result<Library> {
    if let Some(library) = SHARED.get() {
        return Ok(library.clone());
    }
    let library = open_library()?;
    Ok(SHARED.get_or_init(|| library).clone())
}

// ---------------------------------------------------------------------------------------------
// library:NAME[@V] as a source for the iso and disk commands

/// True when an image argument names a library version rather than a file.
pub fn is_library_path(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|p| p.starts_with(LIBRARY_PATH_PREFIX))
}

/// Opens an image argument as a random-access source: `library:NAME[@V]` reads that version
/// in place from the library (nothing is copied out); anything else is a file or device.
pub fn open_source(path: &Path) -> Result<Arc<dyn ReadAt>> {
    if let Some(spec) = path
        .to_str()
        .and_then(|p| p.strip_prefix(LIBRARY_PATH_PREFIX))
    {
        let spec = VersionSpec::parse(spec)?;
        let library = shared_library()?;
        let reader = library
            .open_version(&spec)
            .with_context(|| format!("cannot open {}", path.display()))?;
        return Ok(Arc::new(reader));
    }
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Arc::new(file))
}

/// `vmedia_disk::factory::open`, plus `library:NAME[@V]` versions read in place.
pub fn open_disk(
    path: &Path,
    opts: &vmedia_disk::image::OpenOptions,
) -> Result<Box<dyn vmedia_disk::image::DiskImage>> {
    if is_library_path(path) {
        let source = open_source(path)?;
        // Nothing a stored image names is looked up on this host (see NoReferences).
        let opts = vmedia_disk::image::OpenOptions {
            resolver: Some(Arc::new(vmedia_library::NoReferences)),
            ..opts.clone()
        };
        return Ok(vmedia_disk::factory::open_source(path, source, &opts)?);
    }
    Ok(vmedia_disk::factory::open(path, opts)?)
}

// ---------------------------------------------------------------------------------------------
// Commands

/// `vmedia library [--key FILE] COMMAND`.
#[derive(clap::Args)]
pub struct LibraryArgs {
    /// Key file of an encrypted library. Env: VMEDIA_LIBRARY_KEY
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Library options"
    )]
    key: Option<PathBuf>,
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    command: LibraryCommand,
}

#[derive(clap::Subcommand)]
pub enum LibraryCommand {
    /// Create a library (folder or s3://BUCKET/PREFIX) with its retention, signing and encryption
    Init(InitArgs),
    /// Add a file, block device, http(s) URL, oci:// registry image or stdin as a new version
    Add(AddArgs),
    /// Publish a version to an OCI registry as a KubeVirt containerDisk
    Push(push::PushArgs),
    /// List the items and their current versions
    Ls(LsArgs),
    /// Show one version: digest, size, what vmedia recognised, signature
    Show(ShowArgs),
    /// List an item's versions and every change of its current version
    History(HistoryArgs),
    /// Write a version to a file (atomic, checked against its digest while written)
    Get(GetArgs),
    /// Write a version to stdout
    Cat(CatArgs),
    /// Make an earlier version current again (by number or by time)
    Rollback(RollbackArgs),
    /// Hide an item (restorable with rollback until the retention window passes)
    Rm(RmArgs),
    /// Drop versions the retention policy no longer keeps
    Prune(PruneArgs),
    /// Delete chunks no kept version uses (safe while other hosts add)
    Gc(GcArgs),
    /// Re-read and re-hash every chunk; name damaged or missing chunks and the versions they break
    Verify(VerifyArgs),
    /// Fetch good copies of damaged or missing chunks from another library
    Repair(RepairArgs),
    /// Check an exported manifest's signature offline
    VerifySignature(VerifySignatureArgs),
    /// Write a version's signed manifest (for `verify-signature` elsewhere)
    ExportManifest(ExportManifestArgs),
    /// Copy what another library lacks and merge timelines (incremental, resumable)
    Sync(sync::SyncArgs),
    /// Per peer: last sync, lag, pending chunks and bytes, last error
    SyncStatus(sync::SyncStatusArgs),
}

/// The `vmedia library` help: what it is, where it lives, exit codes.
pub const LIBRARY_AFTER_HELP: &str = "\
Examples:
  vmedia library init --keep-within 72h
  vmedia library add debian debian-12.iso --note 'point release'
  vmedia library add debian https://example.org/debian-12.iso
  vmedia library add fedora oci://quay.io/containerdisks/fedora:41
  vmedia library push debian oci://registry.example/vm/debian:12
  vmedia library ls
  vmedia library history debian
  vmedia library rollback debian --to 1
  vmedia library get debian@2 -o debian.iso
  vmedia iso ls library:debian@1 /isolinux
  vmedia --library s3://images/lib --s3-endpoint http://127.0.0.1:8333 library ls

Location: --library, else VMEDIA_LIBRARY, else $XDG_DATA_HOME/vmedia/library. An S3 location
takes its credentials and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
its endpoint from --s3-endpoint or AWS_ENDPOINT_URL. An encrypted library needs --key FILE (or
VMEDIA_LIBRARY_KEY).

Versions: NAME is the current version, NAME@N version N, NAME@sha256:PREFIX the version whose
image digest starts with PREFIX.

Exit codes: 0 success; 1 failure (nothing found, damaged data read, store unreachable);
2 usage error; 3 verify found damage, or verify-signature found a bad signature; 4 sync ran
but left something to do (run it again: it resumes).";

pub fn run(args: LibraryArgs) -> Result<ExitCode> {
    if let Some(key) = args.key {
        let _ = LIBRARY_KEY.set(key);
    }
    let _ = REMOTE.set(args.remote);
    if remote_client()?.is_some()
        && !matches!(
            args.command,
            LibraryCommand::Add(_)
                | LibraryCommand::Ls(_)
                | LibraryCommand::Show(_)
                | LibraryCommand::History(_)
                | LibraryCommand::Get(_)
                | LibraryCommand::Rollback(_)
        )
    {
        bail!("through --server: add, ls, show, history, get and rollback; run this command where the library is");
    }
    match args.command {
        LibraryCommand::Init(a) => run_init(a),
        LibraryCommand::Add(a) => run_add(a),
        LibraryCommand::Push(a) => push::run_push(a),
        LibraryCommand::Ls(a) => run_ls(a),
        LibraryCommand::Show(a) => run_show(a),
        LibraryCommand::History(a) => run_history(a),
        LibraryCommand::Get(a) => run_get(a),
        LibraryCommand::Cat(a) => run_cat(a),
        LibraryCommand::Rollback(a) => run_rollback(a),
        LibraryCommand::Rm(a) => run_rm(a),
        LibraryCommand::Prune(a) => run_prune(a),
        LibraryCommand::Gc(a) => run_gc(a),
        LibraryCommand::Verify(a) => run_verify(a),
        LibraryCommand::Repair(a) => run_repair(a),
        LibraryCommand::VerifySignature(a) => run_verify_signature(a),
        LibraryCommand::ExportManifest(a) => run_export_manifest(a),
        LibraryCommand::Sync(a) => sync::run_sync(a),
        LibraryCommand::SyncStatus(a) => sync::run_sync_status(a),
    }
}

/// `--json` on every reporting command.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct JsonArg {
    /// Print one JSON document instead of text
    #[arg(long)]
    json: bool,
}

use crate::print_json;

/// Prints a report as JSON or as aligned `key: value` text (nested objects indented, lists of
/// records one per line), so every report reads the same way in a terminal.
fn print_report<T: serde::Serialize>(json: JsonArg, value: &T) -> Result<()> {
    if json.json {
        return print_json(value);
    }
    let value = serde_json::to_value(value)?;
    let mut text = String::new();
    render_text(&value, 0, &mut text);
    io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => Some("-".into()),
        serde_json::Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items)
            if items.iter().all(|i| !i.is_object() && !i.is_array()) =>
        {
            Some(
                items
                    .iter()
                    .filter_map(scalar)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        _ => None,
    }
}

fn render_text(value: &serde_json::Value, indent: usize, out: &mut String) {
    use std::fmt::Write as _;
    let pad = " ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => {
            let width = map.keys().map(|k| k.len()).max().unwrap_or(0) + 1;
            for (key, v) in map {
                let label = key.replace('_', " ");
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{:<width$} {s}", format!("{label}:"));
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{label}:");
                        render_text(v, indent + 2, out);
                    }
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::Object(map) if map.values().all(|v| scalar(v).is_some()) => {
                        let line: Vec<String> = map
                            .iter()
                            .map(|(k, v)| format!("{k}={}", scalar(v).unwrap_or_default()))
                            .collect();
                        let _ = writeln!(out, "{pad}- {}", line.join("  "));
                    }
                    other => match scalar(other) {
                        Some(s) => {
                            let _ = writeln!(out, "{pad}- {s}");
                        }
                        None => {
                            let _ = writeln!(out, "{pad}-");
                            render_text(other, indent + 2, out);
                        }
                    },
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

/// `1.5 GiB`-style sizes for text output (JSON carries exact bytes).
fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `sha256:` and the first 12 hex digits: enough to tell versions apart, and a valid
/// `NAME@sha256:PREFIX`.
fn short_digest(digest: &str) -> String {
    let end = digest.len().min("sha256:".len() + 12);
    digest[..end].to_string()
}

/// Prints rows as left-aligned columns (the last column unpadded).
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn print_event(json: JsonArg, report: &vmedia_library::EventReport) -> Result<ExitCode> {
    if json.json {
        print_json(report)?;
    } else {
        println!(
            "{}: {}{} at {} by {}{}",
            report.name,
            report.kind.label(),
            report
                .version
                .map_or(String::new(), |v| format!(", @{v} is current")),
            report.time,
            report.actor,
            report
                .note
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verify(report: &vmedia_library::VerifyReport) {
    println!(
        "Checked {} items, {} versions, {} chunks ({}): {}",
        report.items,
        report.versions,
        report.chunks,
        bytes_text(report.bytes),
        if report.ok() { "all intact" } else { "DAMAGED" }
    );
    for chunk in &report.damaged_chunks {
        println!(
            "  damaged chunk {}: {}; breaks {}",
            chunk.chunk,
            chunk.problem,
            chunk.versions.join(", ")
        );
    }
    for version in &report.broken_versions {
        println!(
            "  broken version {}@{} {}: {}",
            version.name, version.version, version.digest, version.problem
        );
    }
    for problem in &report.unreadable {
        println!("  unreadable: {problem}");
    }
}

/// Parses a duration such as `72h`, `3d`, `1d12h`, `90m`, `3600s`, `2w`.
fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut saw_unit = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => bail!("duration {text:?}: unknown unit {c:?}; write e.g. 72h, 3d, 1d12h, 90m"),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| anyhow!("duration {text:?}: a number must come before {c:?}"))?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| anyhow!("duration {text:?} is too long"))?;
        saw_unit = true;
    }
    if !number.is_empty() || !saw_unit {
        bail!("duration {text:?}: every number needs a unit (s, m, h, d, w), e.g. 72h");
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Parses a point in time: RFC 3339 (`2026-12-06T03:00:00Z`) or `DURATION ago` (`90m ago`).
fn parse_time(text: &str) -> Result<jiff::Timestamp> {
    if let Some(ago) = text.trim().strip_suffix("ago") {
        let span = parse_duration(ago.trim())?;
        let span =
            jiff::SignedDuration::try_from(span).map_err(|e| anyhow!("time {text:?}: {e}"))?;
        return jiff::Timestamp::now()
            .checked_sub(span)
            .map_err(|e| anyhow!("time {text:?}: {e}"));
    }
    text.trim().parse::<jiff::Timestamp>().map_err(|e| {
        anyhow!("time {text:?}: {e}; write RFC 3339 (2026-12-06T03:00:00Z) or e.g. '2h ago'")
    })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn read_text_file(path: &Path, what: &str) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// init

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library init\n  vmedia --library /srv/images library init --keep-within 7d --keep-last 5\n  head -c 32 /dev/urandom > lib.key && vmedia --library s3://images/lib library init --encrypt lib.key\n  vmedia library init --require-signed release-signing.pub.pem\n\nThe key file of --encrypt is needed (--key or VMEDIA_LIBRARY_KEY) by every later command; keep a\ncopy: without it the library cannot be read."
)]
pub struct InitArgs {
    /// Encrypt chunks and manifests under keys derived from this key file (any bytes, >= 32)
    #[arg(long, value_name = "KEYFILE")]
    encrypt: Option<PathBuf>,
    /// Refuse versions not signed by this ed25519 public key (PEM); repeatable
    #[arg(long = "require-signed", value_name = "PUBKEY")]
    require_signed: Vec<PathBuf>,
    /// Keep every version that was current at any moment within this window (e.g. 72h, 7d)
    #[arg(long = "keep-within", value_name = "DURATION", default_value = DEFAULT_KEEP_WITHIN)]
    keep_within: String,
    /// Also keep the last N versions of each item, however old
    #[arg(long = "keep-last", value_name = "N")]
    keep_last: Option<u32>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_init(a: InitArgs) -> Result<ExitCode> {
    let encrypt_key = a.encrypt.as_deref().map(read_key_file).transpose()?;
    let require_signed = a
        .require_signed
        .iter()
        .map(|p| read_text_file(p, "public key"))
        .collect::<Result<Vec<_>>>()?;
    let options = InitOptions {
        encrypt_key,
        require_signed,
        keep_within: parse_duration(&a.keep_within)?,
        keep_last: a.keep_last,
    };
    let config = config_for(None, None)?;
    Library::init(&config, &options)?;
    let report = vmedia_library::InitReport::new(&config.location, &options);
    if a.json.json {
        print_json(&report)?;
    } else {
        println!("Created a library at {}", report.location);
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// add

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library add debian debian-12.8.0-amd64-netinst.iso --note 'point release'\n  vmedia library add web-disk /dev/vg0/web --label role=web --label os=debian12\n  vmedia library add alpine https://dl-cdn.example.org/alpine-virt.iso --sign-key release.pem\n  curl -sL https://example.org/disk.qcow2 | vmedia library add disk -\n  vmedia library add fedora oci://quay.io/containerdisks/fedora:41\n\nA URL, a registry image (its one disk under disk/, checked against the layer digest) and stdin are streamed: the image is never held whole in memory or on disk.\nPrints the new version's number and SHA-256, and how many bytes were new."
)]
pub struct AddArgs {
    /// Item name (letters, digits, . _ -)
    name: String,
    /// A file, a block device, an http(s):// URL, oci://REGISTRY/REPO:TAG (a containerDisk), or
    /// - for stdin
    source: String,
    /// A note recorded with the event
    #[arg(long)]
    note: Option<String>,
    /// A label KEY=VALUE recorded with the version; repeatable
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Sign the version's manifest with this ed25519 private key (PKCS#8 PEM)
    #[arg(long = "sign-key", value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// Store a disk that names a backing file as its merged content
    #[arg(long)]
    flatten: bool,
    /// The time the add is recorded at (RFC 3339); for tests of the retention policy
    #[arg(long, hide = true, value_name = "TIME")]
    now: Option<String>,
    #[command(flatten)]
    oci: push::OciArgs,
    #[command(flatten)]
    json: JsonArg,
}

/// The add source for SOURCE, and its length when known before reading (for the bar).
fn add_source(text: &str) -> Result<(AddSource, Option<u64>)> {
    if text == "-" {
        return Ok((AddSource::Reader(Box::new(io::stdin())), None));
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let response = ureq::get(text)
            .call()
            .with_context(|| format!("cannot download {text}"))?;
        let length = response.body().content_length();
        // Streamed: the body reader pulls from the socket as the library chunks it.
        let reader = response.into_body().into_reader();
        return Ok((AddSource::Reader(Box::new(reader)), length));
    }
    Ok((AddSource::File(PathBuf::from(text)), None))
}

fn run_add(a: AddArgs) -> Result<ExitCode> {
    if push::is_oci(&a.source) {
        return run_add_oci(a);
    }
    if let Some(client) = remote_client()? {
        return remote::add(&client, a);
    }
    let library = open_library()?;
    let (source, length) = add_source(&a.source)?;
    let report = add_with_progress(&library, &a, source, length)?;
    print_added(a.json, &report)
}

/// `add NAME oci://...`: the registry image's disk, streamed into a local library.
fn run_add_oci(a: AddArgs) -> Result<ExitCode> {
    if remote_client()?.is_some() {
        bail!("oci:// sources are pulled into a local library; run add where the library is");
    }
    let library = open_library()?;
    let (source, length, pulled) = push::pull_source(&a.source, &a.oci)?;
    let report = add_with_progress(&library, &a, source, length)?;
    if a.json.json {
        print_json(&vmedia_oci::PulledAdd {
            added: report,
            registry: pulled,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    push::print_pulled(&pulled);
    print_added(a.json, &report)
}

/// The one local add: `a`'s options, a byte progress bar sized by `length` when known.
fn add_with_progress(
    library: &Library,
    a: &AddArgs,
    source: AddSource,
    length: Option<u64>,
) -> Result<vmedia_library::AddReport> {
    let sign_key_pem = a
        .sign_key
        .as_deref()
        .map(|p| read_text_file(p, "signing key"))
        .transpose()?;
    let now = a.now.as_deref().map(parse_time).transpose()?;
    let options = AddOptions {
        note: a.note.clone(),
        labels: a.labels.clone(),
        sign_key_pem,
        flatten: a.flatten,
        now,
    };
    let bar = Bar::bytes(a.json.json);
    if let Some(length) = length {
        vmedia_io::Progress::set_total(&bar, length);
    }
    let report = library
        .add(&a.name, source, &options, &bar)
        .with_context(|| format!("cannot add {} as {}", a.source, a.name));
    bar.finish();
    report
}

fn print_added(json: JsonArg, report: &vmedia_library::AddReport) -> Result<ExitCode> {
    if json.json {
        print_json(report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Added {}@{} {}", report.name, report.version, report.digest);
    println!(
        "  {} ({}), {} chunks: {} new, {} reused; {} stored in {} new chunks",
        bytes_text(report.size),
        report.kind.summary(),
        report.chunks,
        bytes_text(report.new_bytes),
        bytes_text(report.reused_bytes),
        bytes_text(report.stored_bytes),
        report.new_chunks,
    );
    if let Some(key) = &report.signed_by {
        println!("  signed by {key}");
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// ls, show, history

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library ls\n  vmedia library ls --all --json | jq '.[].name'"
)]
pub struct LsArgs {
    /// Include removed items
    #[arg(long, short = 'a')]
    all: bool,
    #[command(flatten)]
    json: JsonArg,
}

fn run_ls(a: LsArgs) -> Result<ExitCode> {
    let items = match remote_client()? {
        Some(client) => client.items(a.all)?,
        None => open_library()?.list(a.all)?,
    };
    if a.json.json {
        print_json(&items)?;
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        println!("The library is empty; `vmedia library add NAME FILE` adds an image.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "CURRENT".into(),
        "VERSIONS".into(),
        "SIZE".into(),
        "KIND".into(),
        "DIGEST".into(),
        "UPDATED".into(),
    ]];
    for item in &items {
        rows.push([
            if item.removed {
                format!("{} (removed)", item.name)
            } else {
                item.name.clone()
            },
            item.current.map_or("-".into(), |v| format!("@{v}")),
            item.versions.to_string(),
            item.size.map_or("-".into(), bytes_text),
            item.kind.clone().unwrap_or_else(|| "-".into()),
            item.digest.as_deref().map_or("-".into(), short_digest),
            item.updated.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library show debian\n  vmedia library show debian@2 --json\n  vmedia library show debian@sha256:3f9a"
)]
pub struct ShowArgs {
    /// NAME, NAME@N or NAME@sha256:PREFIX
    spec: String,
    #[command(flatten)]
    json: JsonArg,
}

fn run_show(a: ShowArgs) -> Result<ExitCode> {
    let report = match remote_client()? {
        Some(client) => client.show(&a.spec)?,
        None => open_library()?.show(&VersionSpec::parse(&a.spec)?)?,
    };
    print_report(a.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library history debian\n  vmedia library history debian --json | jq '.events'"
)]
pub struct HistoryArgs {
    /// Item name
    name: String,
    #[command(flatten)]
    json: JsonArg,
}

fn run_history(a: HistoryArgs) -> Result<ExitCode> {
    let report = match remote_client()? {
        Some(client) => client.history(&a.name)?,
        None => open_library()?.history(&a.name)?,
    };
    if a.json.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: current {}{}",
        report.name,
        report.current.map_or("none".into(), |v| format!("@{v}")),
        if report.removed { " (removed)" } else { "" }
    );
    let mut rows = vec![[
        "VERSION".to_string(),
        "DIGEST".into(),
        "SIZE".into(),
        "NEW".into(),
        "SHARED".into(),
        "KIND".into(),
        "CREATED".into(),
        "STATE".into(),
    ]];
    for v in &report.versions {
        let mut state = Vec::new();
        if v.current {
            state.push("current".to_string());
        }
        if let Some(key) = &v.signed_by {
            state.push(format!("signed by {key}"));
        }
        if let Some(why) = &v.pruned {
            state.push(format!("pruned: {why}"));
        }
        rows.push([
            format!("@{}", v.version),
            short_digest(&v.digest),
            bytes_text(v.size),
            v.new_bytes.map_or("-".into(), bytes_text),
            v.shared_bytes.map_or("-".into(), bytes_text),
            v.kind.clone(),
            v.created.clone(),
            state.join(", "),
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![[
        "TIME".to_string(),
        "EVENT".into(),
        "VERSION".into(),
        "ACTOR".into(),
        "NOTE".into(),
    ]];
    for e in &report.events {
        rows.push([
            e.time.clone(),
            e.kind.label().to_string(),
            e.version.map_or("-".into(), |v| format!("@{v}")),
            e.actor.clone(),
            e.note.clone().unwrap_or_default(),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// get, cat

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library get debian -o debian.iso\n  vmedia library get debian@sha256:3f9a -o old.iso --force\n\nThe file appears only once its SHA-256 matched the version's digest."
)]
pub struct GetArgs {
    /// NAME, NAME@N or NAME@sha256:PREFIX
    spec: String,
    /// Output file
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Replace an existing output file
    #[arg(long, short = 'f')]
    force: bool,
    #[command(flatten)]
    json: JsonArg,
}

fn run_get(a: GetArgs) -> Result<ExitCode> {
    let spec = VersionSpec::parse(&a.spec)?;
    let overwrite = if a.force {
        OverwritePolicy::Replace
    } else {
        OverwritePolicy::Refuse
    };
    let bar = Bar::bytes(a.json.json);
    let report = match remote_client()? {
        // Resumable: a broken or interrupted download continues where it stopped.
        Some(client) => client
            .download(&a.spec, &a.output, overwrite, &bar)
            .map_err(anyhow::Error::from),
        None => open_library()?
            .get(&spec, &a.output, overwrite, &bar)
            .map_err(anyhow::Error::from),
    };
    bar.finish();
    let report = report.with_context(|| format!("cannot get {}", a.spec))?;
    if a.json.json {
        print_json(&report)?;
    } else {
        println!(
            "Wrote {}: {}@{} {} ({}, {} left as holes)",
            report.path.display(),
            report.name,
            report.version,
            report.digest,
            bytes_text(report.size),
            bytes_text(report.hole_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library cat debian | sha256sum\n  vmedia library cat web-disk@3 > web.raw\n\nA damaged chunk stops the output with an error (exit 1); wrong bytes are never written."
)]
pub struct CatArgs {
    /// NAME, NAME@N or NAME@sha256:PREFIX
    spec: String,
}

fn run_cat(a: CatArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let spec = VersionSpec::parse(&a.spec)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    library.cat(&spec, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// rollback, rm

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library rollback debian --to 2\n  vmedia library rollback debian --at 2026-12-05T18:00:00Z --note 'bad update'\n  vmedia library rollback debian --at '3h ago'\n\nNothing is deleted: the rollback is a new event in the item's history."
)]
pub struct RollbackArgs {
    /// Item name
    name: String,
    /// Make version N current
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "at",
        required_unless_present = "at"
    )]
    to: Option<u64>,
    /// Make current the version that was current at TIME (RFC 3339 or e.g. '2h ago')
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// A note recorded with the event
    #[arg(long)]
    note: Option<String>,
    /// The time the event is recorded at (RFC 3339); for tests of the retention policy
    #[arg(long, hide = true, value_name = "TIME")]
    now: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_rollback(a: RollbackArgs) -> Result<ExitCode> {
    if let Some(client) = remote_client()? {
        local_only("--now", a.now.is_some())?;
        let at = a.at.as_deref().map(parse_time).transpose()?;
        let request = vmedia_server::api::library::RollbackRequest {
            to: a.to,
            at: at.map(|t| t.to_string()),
            note: a.note.clone(),
        };
        let report = client.rollback(&a.name, &request)?;
        return print_event(a.json, &report);
    }
    let library = open_library()?;
    let target = match (a.to, a.at.as_deref()) {
        (Some(version), _) => RollbackTarget::Version(version),
        (None, Some(at)) => RollbackTarget::At(parse_time(at)?),
        (None, None) => bail!("give --to N or --at TIME"),
    };
    let report = match a.now.as_deref() {
        Some(now) => library.rollback_at(&a.name, target, a.note.as_deref(), parse_time(now)?)?,
        None => library.rollback(&a.name, target, a.note.as_deref())?,
    };
    print_event(a.json, &report)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library rm old-template --note 'replaced by debian13'\n  vmedia library rollback old-template --to 4   # restores it within the window"
)]
pub struct RmArgs {
    /// Item name
    name: String,
    /// A note recorded with the event
    #[arg(long)]
    note: Option<String>,
    /// The time the event is recorded at (RFC 3339); for tests of the retention policy
    #[arg(long, hide = true, value_name = "TIME")]
    now: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_rm(a: RmArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let report = match a.now.as_deref() {
        Some(now) => library.remove_at(&a.name, a.note.as_deref(), parse_time(now)?)?,
        None => library.remove(&a.name, a.note.as_deref())?,
    };
    print_event(a.json, &report)
}

// ---------------------------------------------------------------------------------------------
// prune, gc

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library prune --dry-run\n  vmedia library prune && vmedia library gc\n\nPrune drops versions outside the policy (--keep-within, --keep-last of init) and says why\neach goes or stays; gc then deletes the chunks nothing kept uses."
)]
pub struct PruneArgs {
    /// Show what would go and why, change nothing
    #[arg(long = "dry-run", short = 'n')]
    dry_run: bool,
    /// Prune as if it were TIME (RFC 3339); for tests of the retention policy
    #[arg(long, hide = true, value_name = "TIME")]
    now: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_prune(a: PruneArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let now = match a.now.as_deref() {
        Some(t) => parse_time(t)?,
        None => jiff::Timestamp::now(),
    };
    let report = library.prune(a.dry_run, now)?;
    if a.json.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if report.dry_run {
        "Would prune"
    } else {
        "Pruned"
    };
    if report.pruned.is_empty() {
        println!("{verb} nothing: every version is kept by the policy.");
    } else {
        println!("{verb} {} versions:", report.pruned.len());
        for p in &report.pruned {
            println!(
                "  {}@{} {} {}: {}",
                p.name,
                p.version,
                short_digest(&p.digest),
                bytes_text(p.size),
                p.reason
            );
        }
    }
    if !report.kept.is_empty() {
        println!("Kept {} versions:", report.kept.len());
        for k in &report.kept {
            println!("  {}@{}: {}", k.name, k.version, k.reason);
        }
    }
    if !report.dry_run && !report.pruned.is_empty() {
        println!("Run `vmedia library gc` to delete the chunks only they used.");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library gc\n  vmedia library gc --json | jq .freed_bytes\n\nSafe while other hosts add: a chunk an add may be about to reference is never deleted."
)]
pub struct GcArgs {
    #[command(flatten)]
    json: JsonArg,
}

fn run_gc(a: GcArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let bar = Bar::bytes(a.json.json);
    let report = library.gc(&bar);
    bar.finish();
    let report = report?;
    if a.json.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.ran {
        println!(
            "Deleted {} chunks ({} freed) and {} manifests; kept {} chunks ({}).",
            report.deleted_chunks,
            bytes_text(report.freed_bytes),
            report.deleted_manifests,
            report.kept_chunks,
            bytes_text(report.kept_bytes)
        );
    } else {
        println!(
            "Deleted nothing: {} (waited {} s); run gc again later.",
            report
                .deferred_reason
                .as_deref()
                .unwrap_or("adds kept running on other hosts"),
            report.waited_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// verify, repair

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library verify\n  vmedia library verify debian --json\n\nExit codes: 0 every chunk is present and intact; 3 damage found (the report names each damaged\nor missing chunk and every version it breaks); 1 the check could not run."
)]
pub struct VerifyArgs {
    /// Only this item's versions (default: the whole library)
    name: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_verify(a: VerifyArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let bar = Bar::bytes(a.json.json);
    let report = library.verify(a.name.as_deref(), &bar);
    bar.finish();
    let report = report?;
    finish_check(a.json, &report, report.ok(), || {
        print_verify(&report);
        if !report.ok() {
            eprintln!("vmedia: verify found damage; `vmedia library repair --from OTHER` fetches good copies");
        }
    })
}

/// Prints a check's report (JSON, or `text` for people) and maps its verdict to the exit code:
/// 0 when `ok`, [`EXIT_CHECK_FAILED`] when the check ran and found a problem.
fn finish_check<T: serde::Serialize>(
    json: JsonArg,
    report: &T,
    ok: bool,
    text: impl FnOnce(),
) -> Result<ExitCode> {
    if json.json {
        print_json(report)?;
    } else {
        text();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    })
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library repair --from /mnt/backup/library\n  vmedia --library s3://images/lib library repair --from s3://images-replica/lib --from-key replica.key"
)]
pub struct RepairArgs {
    /// The library holding good copies (a folder or s3://BUCKET/PREFIX; same S3 settings)
    #[arg(long, value_name = "LOCATION")]
    from: String,
    /// Key file of the --from library when it is encrypted under another key
    #[arg(long = "from-key", value_name = "FILE")]
    from_key: Option<PathBuf>,
    #[command(flatten)]
    json: JsonArg,
}

fn run_repair(a: RepairArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let from_config = config_for(Some(&a.from), a.from_key.as_deref())?;
    let from = Library::open(&from_config)
        .with_context(|| format!("cannot open the library to repair from, {}", a.from))?;
    let bar = Bar::bytes(a.json.json);
    let report = library.repair(&from, &bar);
    bar.finish();
    let report = report?;
    finish_check(a.json, &report, report.after.ok(), || {
        println!("Repaired {} chunks from {}.", report.repaired.len(), a.from);
        for chunk in &report.repaired {
            println!("  {chunk}");
        }
        if !report.unrepaired.is_empty() {
            println!("Not repairable from there ({}):", report.unrepaired.len());
            for chunk in &report.unrepaired {
                println!("  {chunk}");
            }
        }
        println!("After the repair:");
        print_verify(&report.after);
    })
}

// ---------------------------------------------------------------------------------------------
// verify-signature, export-manifest

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library export-manifest debian@3 -o debian-3.manifest\n  vmedia library verify-signature debian-3.manifest --pubkey release.pub.pem\n\nExit codes: 0 the signature is valid; 3 it is not (or the manifest is unsigned or altered);\n1 the files could not be read."
)]
pub struct VerifySignatureArgs {
    /// A manifest written by `export-manifest`
    manifest: PathBuf,
    /// The ed25519 public key (PEM) it should be signed with
    #[arg(long, value_name = "PEM")]
    pubkey: PathBuf,
    #[command(flatten)]
    json: JsonArg,
}

fn run_verify_signature(a: VerifySignatureArgs) -> Result<ExitCode> {
    let manifest = fs::read(&a.manifest)
        .with_context(|| format!("cannot read manifest {}", a.manifest.display()))?;
    let pem = read_text_file(&a.pubkey, "public key")?;
    match vmedia_library::verify_signature(&manifest, &pem) {
        Ok(report) => finish_check(a.json, &report, report.ok(), || {
            if report.ok() {
                println!(
                    "Valid signature by {} of {} {} ({})",
                    report.key_id.as_deref().unwrap_or("?"),
                    report.name,
                    report.digest,
                    bytes_text(report.size)
                );
            } else {
                println!(
                    "INVALID: {} {}: {}",
                    report.name,
                    report.digest,
                    report
                        .problem
                        .as_deref()
                        .unwrap_or("the signature does not match")
                );
            }
        }),
        Err(err) => {
            let failure = vmedia_library::SignatureFailure::new(format!("{err:#}"));
            finish_check(a.json, &failure, false, || {
                eprintln!("vmedia: signature check failed: {err}");
            })
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library export-manifest debian -o debian.manifest\n  vmedia library export-manifest debian@2 > debian-2.manifest"
)]
pub struct ExportManifestArgs {
    /// NAME, NAME@N or NAME@sha256:PREFIX
    spec: String,
    /// Output file (default stdout)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

fn run_export_manifest(a: ExportManifestArgs) -> Result<ExitCode> {
    let library = open_library()?;
    let bytes = library.export_manifest(&VersionSpec::parse(&a.spec)?)?;
    match &a.output {
        Some(path) => {
            fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => io::stdout().lock().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_sums() {
        assert_eq!(parse_duration("72h").unwrap().as_secs(), 72 * 3600);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse_duration("90m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("2w").unwrap().as_secs(), 14 * 86_400);
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_refused() {
        for bad in ["", "72", "h", "3y", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn times_take_rfc3339_and_ago() {
        let t = parse_time("2026-12-06T03:00:00Z").unwrap();
        assert_eq!(t.as_second(), 1_796_526_000);
        let ago = parse_time("2h ago").unwrap();
        let delta = jiff::Timestamp::now().as_second() - ago.as_second();
        assert!((7190..=7210).contains(&delta), "{delta}");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        assert_eq!(
            parse_label("os=debian=12").unwrap(),
            ("os".to_string(), "debian=12".to_string())
        );
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
    }

    #[test]
    fn library_paths_are_recognised_by_their_prefix() {
        assert!(is_library_path(Path::new("library:debian@2")));
        assert!(!is_library_path(Path::new("./library:debian")));
        assert!(!is_library_path(Path::new("debian.iso")));
    }

    #[test]
    fn text_reports_align_keys_and_list_records() {
        let value = serde_json::json!({
            "name": "debian",
            "version": 2,
            "labels": ["a", "b"],
            "kind": {"format": "iso", "volume_id": "DEB"},
        });
        let mut text = String::new();
        render_text(&value, 0, &mut text);
        assert!(text.contains("name:    debian\n"), "{text}");
        assert!(text.contains("labels:  a, b\n"), "{text}");
        assert!(text.contains("kind:\n  format:    iso\n"), "{text}");
    }
}
