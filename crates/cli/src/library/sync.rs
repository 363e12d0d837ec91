//! `vmedia library sync` and `sync-status`: flags, printing and exit codes; the engine is
//! `vmedia_library::sync`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use vmedia_library::{SyncOptions, SyncReport};

use super::{bytes_text, config_for, print_json, print_report, JsonArg};
use crate::progress::Bar;

/// Exit code when the sync ran but left something behind (a failed item, a conflict that
/// needs the key, chunks still pending): a retry resumes where it stopped.
pub const EXIT_SYNC_INCOMPLETE: u8 = 4;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia library sync --from /srv/library --to s3://backup/library
  vmedia --library s3://site-a/lib library sync --to s3://site-b/lib --parallel 16 --bwlimit 50M
  vmedia library sync --from s3://site-b/lib --to s3://site-a/lib --items 'debian-*' --json
  vmedia library sync --to https://site-b:8443 --peer-token \"$TOKEN\" --peer-ca-cert site-b.pem

Both ends are library locations (folder, s3://BUCKET/PREFIX, or another site's `vmedia serve`
as https://HOST:PORT with an administrator's token; the S3 settings are shared). A
destination that does not exist becomes a replica of the source. Only chunks the destination
lacks travel; a version appears there only after all its chunks; timelines merge both ways
(docs/replication.md). An encrypted library syncs without its key (chunks are opaque), but
merging an item changed on both sides needs --key.

Exit codes: 0 everything selected arrived; 4 the sync ran but something is left (failed items,
conflicts, pending chunks: run it again, it resumes); 1 it could not run; 2 usage error.")]
pub struct SyncArgs {
    /// The source library (default: --library / VMEDIA_LIBRARY)
    #[arg(long, value_name = "LOCATION")]
    from: Option<String>,
    /// The destination library (created as a replica when absent)
    #[arg(long, value_name = "LOCATION")]
    to: String,
    /// Only items whose name matches this glob (* and ?)
    #[arg(long, value_name = "GLOB")]
    items: Option<String>,
    /// Hide (restorably) items on the destination that the source does not hold
    #[arg(long)]
    remove_vanished: bool,
    /// Bytes per second at most, e.g. 500K, 20M, 1G (powers of 1024)
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    /// Chunk requests in flight
    #[arg(long, value_name = "N", default_value_t = vmedia_library::sync::DEFAULT_PARALLEL)]
    parallel: usize,
    /// Show what would travel; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Key file of the destination when it differs from --key's (replicas share one key)
    #[arg(long = "to-key", value_name = "FILE")]
    to_key: Option<PathBuf>,
    #[command(flatten)]
    peer: PeerArgs,
    #[command(flatten)]
    json: JsonArg,
}

/// How a peer daemon (a library location `https://HOST:PORT`) is reached, for `library sync`
/// and `serve --replicate-to/--mirror-from`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PeerArgs {
    /// API token of an administrator on a peer daemon given as https://HOST:PORT
    /// (default: VMEDIA_PEER_TOKEN)
    #[arg(long, value_name = "TOKEN")]
    pub peer_token: Option<String>,
    /// PEM certificate to trust for a peer daemon, e.g. its self-signed cert.pem
    /// (default: VMEDIA_PEER_CA_CERT)
    #[arg(long, value_name = "FILE", conflicts_with = "peer_insecure")]
    pub peer_ca_cert: Option<PathBuf>,
    /// Accept any certificate from a peer daemon (tests, first contact;
    /// default: VMEDIA_PEER_INSECURE=1)
    #[arg(long)]
    pub peer_insecure: bool,
}

impl PeerArgs {
    /// Opens the peer daemon's store into `config` when its location is a daemon (the library
    /// speaks no HTTP: the server crate's client does); other locations are left as they are.
    pub fn attach(&self, config: &mut vmedia_library::OpenConfig) -> Result<()> {
        let vmedia_library::Location::Daemon { url } = &config.location else {
            return Ok(());
        };
        let client = vmedia_server::client::ClientConfig {
            server: url.clone(),
            token: self.peer_token.clone().or_else(crate::env::peer_token),
            trust: vmedia_server::client::Trust::chosen(
                self.peer_ca_cert.clone().or_else(crate::env::peer_ca_cert),
                self.peer_insecure || crate::env::peer_insecure(),
            ),
        };
        let store = vmedia_server::peer::RemoteStore::new(&client)?;
        config.store = Some(vmedia_library::ProvidedStore(std::sync::Arc::new(store)));
        Ok(())
    }
}

/// `20M` -> 20 MiB/s.
fn parse_rate(text: &str) -> Result<u64> {
    let trimmed = text
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b']);
    let (digits, multiplier) = match trimmed.char_indices().last() {
        Some((at, 'K' | 'k')) => (&trimmed[..at], 1u64 << 10),
        Some((at, 'M' | 'm')) => (&trimmed[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&trimmed[..at], 1 << 30),
        _ => (trimmed, 1),
    };
    let value: u64 = digits.parse().map_err(|_| {
        anyhow::anyhow!("rate {text:?}: write e.g. 500K, 20M or 1G (bytes per second)")
    })?;
    match value.checked_mul(multiplier) {
        Some(0) | None => bail!("rate {text:?}: must be between 1 byte/s and 16 EiB/s"),
        Some(rate) => Ok(rate),
    }
}

pub fn run_sync(a: SyncArgs) -> Result<ExitCode> {
    if a.parallel == 0 || a.parallel > vmedia_library::sync::MAX_PARALLEL {
        bail!(
            "--parallel takes 1 to {}",
            vmedia_library::sync::MAX_PARALLEL
        );
    }
    let mut from = config_for(a.from.as_deref(), None)?;
    let mut to = config_for(Some(&a.to), a.to_key.as_deref())?;
    a.peer.attach(&mut from)?;
    a.peer.attach(&mut to)?;
    let options = SyncOptions {
        items: a.items.clone(),
        remove_vanished: a.remove_vanished,
        parallel: a.parallel,
        bwlimit: a.bwlimit.as_deref().map(parse_rate).transpose()?,
        dry_run: a.dry_run,
    };
    let bar = Bar::bytes(a.json.json);
    let report = vmedia_library::sync(&from, &to, &options, &bar);
    bar.finish();
    let report = report?;
    if a.json.json {
        print_json(&report)?;
    } else {
        // Written in one go, so a closed pipe is an error main handles, not a panic.
        io::stdout()
            .lock()
            .write_all(sync_text(&report).as_bytes())?;
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SYNC_INCOMPLETE)
    })
}

fn sync_text(r: &SyncReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "Would sync" } else { "Synced" };
    let _ = writeln!(
        out,
        "{verb} {} (site {}) to {} (site {}){}, {} mode.",
        r.from,
        r.from_site,
        r.to,
        r.to_site,
        if r.created_destination {
            ", a new replica"
        } else {
            ""
        },
        r.mode
    );
    let _ = writeln!(
        out,
        "Chunks: {} needed, {} sent ({}), {} already there ({}), {} verified; {} pending ({}).",
        r.chunks_needed,
        r.chunks_sent,
        bytes_text(r.bytes_sent),
        r.chunks_skipped,
        bytes_text(r.bytes_skipped),
        r.chunks_verified,
        r.pending_chunks,
        bytes_text(r.pending_bytes)
    );
    let _ = writeln!(
        out,
        "Versions copied: {}; manifests: {}; in {:.1} s.",
        r.versions_copied, r.manifests_copied, r.seconds
    );
    for item in &r.items {
        let _ = writeln!(
            out,
            "  {}: +{} versions, +{} events, current {}{}",
            item.name,
            item.versions_added,
            item.events_added,
            item.current.map_or("-".to_string(), |v| v.to_string()),
            if item.removed { " (removed)" } else { "" }
        );
    }
    for name in &r.removed_items {
        let _ = writeln!(out, "  {name}: removed (absent from the source)");
    }
    for conflict in &r.conflicts {
        let _ = writeln!(out, "Conflict: {conflict}");
    }
    for error in &r.errors {
        let _ = writeln!(out, "Error: {error}");
    }
    out
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia library sync-status
  vmedia --library s3://site-a/lib library sync-status --json

Per peer: last attempt and success, last error, chunks and bytes left pending, and the lag (age
of the oldest change here that the peer has not received: the recovery point).")]
pub struct SyncStatusArgs {
    #[command(flatten)]
    json: JsonArg,
}

pub fn run_sync_status(a: SyncStatusArgs) -> Result<ExitCode> {
    let config = config_for(None, None)?;
    let report = vmedia_library::sync_status(&config)?;
    print_report(a.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_binary_suffixes() {
        assert_eq!(parse_rate("500").unwrap(), 500);
        assert_eq!(parse_rate("500K").unwrap(), 500 << 10);
        assert_eq!(parse_rate("20M").unwrap(), 20 << 20);
        assert_eq!(parse_rate("1GB/s").unwrap(), 1 << 30);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
