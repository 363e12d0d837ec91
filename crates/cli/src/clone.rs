//! `vmedia clone`: per-VM copy-on-write clones, managed through a running `vmedia serve`
//! (its HTTP API under `/api/v1/clones`). Flags, printing and exit codes only.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use vmedia_server::clones::api::{CommitRequest, CreateRequest, ErrorBody};
use vmedia_server::clones::CloneInfo;

use crate::env;

/// Answers larger than this are not the daemon's (a listing of thousands of clones is far less).
const MAX_ANSWER_BYTES: u64 = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A commit reads the whole clone into the library: allow it a long time.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

const CLONE_EXAMPLES: &str = "Examples:\n  vmedia clone create web-disk@3 web1 --server http://host:8080\n  vmedia clone ls\n  nbdinfo nbd://host/clone/web1\n  vmedia clone commit web1 --as web-golden\n  vmedia clone rm web1\n\nThe daemon is --server URL, else $VMEDIA_SERVER, else http://127.0.0.1:8080.\nExit codes: 0 success, 1 failure (the daemon's message is printed).";

#[derive(clap::Subcommand)]
#[command(after_help = CLONE_EXAMPLES)]
pub enum CloneCommand {
    /// Make a writable clone of a library version (O(1); reads fall through to the version)
    Create(CreateArgs),
    /// List the daemon's clones with the bytes each has written
    Ls(LsArgs),
    /// Delete a clone and everything written to it
    Rm(RmArgs),
    /// Add a clone's content to the library as a new version (only changed chunks are stored)
    Commit(CommitArgs),
}

#[derive(clap::Args)]
pub struct ServerArg {
    /// The daemon's HTTP address (default: $VMEDIA_SERVER, else http://127.0.0.1:8080)
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The base: NAME, NAME@V or NAME@sha256:PREFIX, pinned to that version (NAME[@V]/disk: a
    /// disk image's virtual content, when the daemon serves it)
    base: String,
    /// The clone's name (letters, digits, '.', '_', '-'); served over NBD as clone/NAME
    clone: String,
    /// Deleted when the daemon restarts
    #[arg(long)]
    ephemeral: bool,
    /// Print the clone as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Print one JSON array
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
pub struct RmArgs {
    clone: String,
    /// Remove the clone even while VMs are connected to it (their connections are cut off:
    /// every further request on them fails)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    clone: String,
    /// The library item the new version is added to
    #[arg(long = "as", value_name = "NAME")]
    as_name: String,
    /// Print the add report as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub fn run(command: CloneCommand) -> anyhow::Result<ExitCode> {
    match command {
        CloneCommand::Create(args) => create(args),
        CloneCommand::Ls(args) => ls(args),
        CloneCommand::Rm(args) => rm(args),
        CloneCommand::Commit(args) => commit(args),
    }
}

/// The daemon's clone API.
struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(server: ServerArg, timeout: Duration) -> anyhow::Result<Api> {
        let server = env::server_url(server.server);
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("--server {server:?} must start with http:// or https://");
        }
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(timeout))
            // Error statuses carry the daemon's {"error": ...} message, read below.
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Api {
            base: format!("{server}/api/v1/clones"),
            agent,
        })
    }

    /// Sends a request and returns the answer's body when its status is `expect`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        expect: u16,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(body.unwrap_or_default()),
        };
        let mut response =
            sent.with_context(|| format!("cannot reach the vmedia daemon at {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .with_context(|| format!("reading the answer from {url}"))?;
        if status == expect {
            return Ok(text);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(err) => bail!("{}", err.error),
            Err(_) => bail!("{url} answered {status}: is it a vmedia daemon?"),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).context("the daemon's answer is not what vmedia expects")
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<ExitCode> {
    crate::print_json(value)?;
    Ok(ExitCode::SUCCESS)
}

fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.server, CALL_TIMEOUT)?;
    let request = CreateRequest {
        base: args.base,
        name: args.clone,
        ephemeral: args.ephemeral,
    };
    let text = api.call("POST", "", Some(serde_json::to_vec(&request)?), 201)?;
    let info: CloneInfo = parse(&text)?;
    if args.json {
        return print_json(&info);
    }
    // The daemon names the export: a clone of a restricted item opens only by a capability.
    let export = info
        .nbd_export
        .clone()
        .unwrap_or_else(|| format!("clone/{}", info.name));
    println!(
        "clone {} of {} ({}), {}{}; NBD export {export}",
        info.name,
        info.base,
        short_digest(&info.base_digest),
        bytes_text(info.size),
        if info.ephemeral { ", ephemeral" } else { "" },
    );
    Ok(ExitCode::SUCCESS)
}

fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.server, CALL_TIMEOUT)?;
    let clones: Vec<CloneInfo> = parse(&api.call("GET", "", None, 200)?)?;
    if args.json {
        return print_json(&clones);
    }
    let mut out = std::io::stdout().lock();
    let width = clones
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let base_width = clones
        .iter()
        .map(|c| c.base.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:<base_width$}  {:>10}  {:>10}  {:<9}  CREATED",
        "NAME", "BASE", "SIZE", "WRITTEN", "EPHEMERAL"
    )?;
    for c in &clones {
        writeln!(
            out,
            "{:<width$}  {:<base_width$}  {:>10}  {:>10}  {:<9}  {}",
            c.name,
            c.base,
            bytes_text(c.size),
            bytes_text(c.bytes_written),
            if c.ephemeral { "yes" } else { "no" },
            c.created
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.server, CALL_TIMEOUT)?;
    let query = if args.force { "?force=true" } else { "" };
    api.call("DELETE", &format!("/{}{query}", args.clone), None, 204)?;
    println!("removed clone {}", args.clone);
    Ok(ExitCode::SUCCESS)
}

/// The fields of the library's add report that `commit` prints as text.
#[derive(Deserialize, serde::Serialize)]
struct CommitSummary {
    name: String,
    version: u64,
    digest: String,
    size: u64,
    new_bytes: u64,
    reused_bytes: u64,
    stored_bytes: u64,
}

fn commit(args: CommitArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.server, COMMIT_TIMEOUT)?;
    let request = CommitRequest {
        as_name: args.as_name,
    };
    let text = api.call(
        "POST",
        &format!("/{}/commit", args.clone),
        Some(serde_json::to_vec(&request)?),
        200,
    )?;
    if args.json {
        let report: serde_json::Value = parse(&text)?;
        return print_json(&report);
    }
    let report: CommitSummary = parse(&text)?;
    println!(
        "committed clone {} as {}@{} ({}, {}): {} new, {} reused, {} stored",
        args.clone,
        report.name,
        report.version,
        short_digest(&report.digest),
        bytes_text(report.size),
        bytes_text(report.new_bytes),
        bytes_text(report.reused_bytes),
        bytes_text(report.stored_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// `sha256:` and 12 hex digits.
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
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
