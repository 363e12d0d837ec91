//! `--server URL --token T` for the commands that can act through a daemon's REST API instead
//! of opening a library or a state folder here: the flags, their environment variables, and the
//! choice of trust for the daemon's certificate. The client is `vmedia_server::client`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vmedia_server::client::{Client, ClientConfig, Trust};

/// What selects and reaches a remote daemon.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Act through the daemon at https://HOST:PORT (its --https-port) instead of locally.
    /// Env: VMEDIA_SERVER, when it is an https:// URL
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Remote daemon options"
    )]
    pub server: Option<String>,
    /// API token sent to the daemon. Env: VMEDIA_TOKEN (or `token` in the configuration file)
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        help_heading = "Remote daemon options"
    )]
    pub token: Option<String>,
    /// Trust only this PEM certificate (or CA) for the daemon, e.g. its self-signed cert.pem
    #[arg(
        long = "ca-cert",
        global = true,
        value_name = "FILE",
        conflicts_with = "insecure",
        help_heading = "Remote daemon options"
    )]
    pub ca_cert: Option<PathBuf>,
    /// Do not check the daemon's certificate at all (anyone on the path can read the token)
    #[arg(long, global = true, help_heading = "Remote daemon options")]
    pub insecure: bool,
}

impl RemoteArgs {
    /// The daemon URL: `--server`, else VMEDIA_SERVER when it names an https:// URL (an
    /// http:// one is the images port `clone` and `top` use, and keeps these commands local).
    fn server(&self) -> Option<String> {
        if let Some(url) = &self.server {
            return Some(url.clone());
        }
        std::env::var(crate::env::SERVER_ENV)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| v.to_ascii_lowercase().starts_with("https://"))
    }

    /// A client when a daemon was named; None means act locally. The certificate flags
    /// without a daemon are a mistake, not something to ignore.
    pub fn client(&self) -> Result<Option<Client>> {
        let Some(server) = self.server() else {
            if self.ca_cert.is_some() || self.insecure || self.token.is_some() {
                bail!("--token, --ca-cert and --insecure need --server https://HOST:PORT (or VMEDIA_SERVER)");
            }
            return Ok(None);
        };
        let token = self
            .token
            .clone()
            .or_else(|| {
                std::env::var(crate::env::TOKEN_ENV)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
            .or_else(|| crate::config::file_value(|s| s.token.as_ref()));
        let trust = Trust::chosen(self.ca_cert.clone(), self.insecure);
        let client = Client::new(&ClientConfig {
            server: server.clone(),
            token: token.map(|t| t.trim().to_string()),
            trust,
        })
        .with_context(|| format!("cannot use the daemon at {server}"))?;
        Ok(Some(client))
    }
}

/// `library add --server`: the source streamed through the resumable upload API; the daemon
/// adds it to its library as `library add` would here.
pub(super) fn add(client: &Client, a: super::AddArgs) -> Result<std::process::ExitCode> {
    super::local_only("--sign-key", a.sign_key.is_some())?;
    super::local_only("--flatten", a.flatten)?;
    super::local_only("--now", a.now.is_some())?;
    let (source, length) = super::add_source(&a.source)?;
    let (mut reader, length): (Box<dyn std::io::Read>, Option<u64>) = match source {
        vmedia_library::AddSource::File(path) => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let length = file
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            (Box::new(file), length)
        }
        vmedia_library::AddSource::Reader(reader) => (reader, length),
    };
    let request = vmedia_server::api::uploads::UploadRequest {
        item: a.name.clone(),
        length,
        note: a.note.clone(),
        labels: a.labels.iter().cloned().collect(),
    };
    let bar = crate::progress::Bar::bytes(a.json.json);
    let report = client.upload(&request, &mut reader, &bar);
    bar.finish();
    let report = report.with_context(|| format!("cannot add {} as {}", a.source, a.name))?;
    super::print_added(a.json, &report)
}
