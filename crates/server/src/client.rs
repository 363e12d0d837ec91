//! A typed client for the daemon's REST API (`/api/v1` on its HTTPS port), for the CLI's
//! `--server` mode: library listings, history, rollback, uploads (resumable, ending in the same
//! `Library::add` as a local add), downloads (resumed with `Range`, checked against the
//! version's digest), users and tokens. Bodies are the API's own types, never hand-built JSON.
//! Certificates: the system roots, a given CA certificate, or no verification when asked
//! explicitly.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use vmedia_io::{OverwritePolicy, Progress};
use vmedia_library::{
    AddReport, EventReport, GetReport, HistoryReport, ItemSummary, VersionReport, VersionSpec,
};

use crate::api::accounts::{NewUser, TokenRequest, WhoAmI};
use crate::api::library::{ItemPage, RollbackRequest};
use crate::api::tasks::{TaskInfo, TaskState};
use crate::api::uploads::{UploadInfo, UploadRequest};
use crate::auth::{NewToken, UserInfo};
use crate::http::ErrorBody;

/// Bytes per upload request: large enough that request overhead is small, small enough that a
/// broken connection resends little (the chunk is held in memory to resend it).
pub const UPLOAD_CHUNK_BYTES: usize = 8 << 20;
/// Tries per upload chunk or download before giving up (each after asking where the daemon is).
pub const MAX_ATTEMPTS: u32 = 5;
/// A request that sends or receives nothing for this long has a dead connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a task (an upload's library add) is polled.
const TASK_POLL: Duration = Duration::from_millis(200);
/// A listing's pages are followed at most this many times (a daemon bug cannot loop forever).
const MAX_PAGES: usize = 100_000;
/// Largest JSON answer read (listings of many items are the largest).
const MAX_JSON_BYTES: u64 = 64 << 20;
/// Longest certificate file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{method} {url}: {status} {detail}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: unexpected answer: {reason}")]
    Answer { url: String, reason: String },
    #[error("{0}")]
    Library(#[from] vmedia_library::LibraryError),
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Which server certificates are trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's (webpki) roots.
    System,
    /// Only this PEM file's certificates (a daemon's self-signed certificate or its CA).
    CaFile(PathBuf),
    /// None checked: anyone on the path can read the token. Only when asked for by name.
    Insecure,
}

impl Trust {
    /// A CA file wins; else `insecure` turns checking off; else the system's roots.
    pub fn chosen(ca_cert: Option<PathBuf>, insecure: bool) -> Trust {
        match (ca_cert, insecure) {
            (Some(path), _) => Trust::CaFile(path),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        }
    }
}

/// Where the daemon is and who is asking.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://HOST:PORT` (the daemon's `--https-port`).
    pub server: String,
    /// Sent as `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    pub trust: Trust,
}

/// A connection to one daemon's REST API.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// What a `get` downloads to before the digest matched: beside the output, so the rename is
/// atomic and a later run resumes it.
pub fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    output.with_file_name(format!(".{name}.vmedia-part"))
}

/// `NAME`, `NAME@N` or `NAME@sha256:PREFIX` as the API's `{name}` and `{version}` segments.
fn version_path(spec: &str) -> Result<(String, String)> {
    VersionSpec::parse(spec)?;
    Ok(match spec.split_once('@') {
        Some((name, version)) => (name.to_string(), version.to_string()),
        None => (spec.to_string(), "current".to_string()),
    })
}

/// Percent-encodes a path segment (item names are plain, but `sha256:` has a colon).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn load_roots(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let mut text = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES).read_to_end(&mut text))
        .map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut roots = Vec::new();
    for item in ureq::tls::parse_pem(&text) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => roots.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(ClientError::Certificate {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Certificate {
            path: path.to_path_buf(),
            reason: "holds no PEM certificate".into(),
        });
    }
    Ok(roots)
}

impl Client {
    /// Checks the URL (https only: the API and its token never travel in clear) and builds
    /// the TLS configuration.
    pub fn new(config: &ClientConfig) -> Result<Client> {
        let base = config.server.trim().trim_end_matches('/').to_string();
        let lower = base.to_ascii_lowercase();
        if lower.starts_with("http://") {
            return Err(ClientError::Url {
                url: base,
                reason: "the REST API is served on the daemon's --https-port only; use https://HOST:PORT".into(),
            });
        }
        let rest = lower
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Url {
                url: base.clone(),
                reason: "give https://HOST:PORT".into(),
            })?;
        if rest.is_empty() || rest.contains('/') && !rest.ends_with("/api/v1") {
            return Err(ClientError::Url {
                url: base.clone(),
                reason: "give the daemon's address only, https://HOST:PORT".into(),
            });
        }
        let base = base
            .strip_suffix("/api/v1")
            .map(str::to_string)
            .unwrap_or(base);
        let tls = ureq::tls::TlsConfig::builder();
        let tls = match &config.trust {
            Trust::System => tls,
            Trust::CaFile(path) => {
                tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(load_roots(path)?)))
            }
            Trust::Insecure => tls.disable_verification(true),
        }
        .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_recv_body(Some(IO_TIMEOUT))
            .timeout_send_body(Some(IO_TIMEOUT))
            .timeout_connect(Some(Duration::from_secs(30)))
            // A sync to a peer daemon keeps `--parallel` requests in flight: with ureq's
            // default of 3 idle connections per host the others were closed after each
            // answer and the next request paid a new TCP and TLS handshake (2-3 round trips).
            .max_idle_connections(vmedia_library::sync::MAX_PARALLEL)
            .max_idle_connections_per_host(vmedia_library::sync::MAX_PARALLEL)
            .build()
            .into();
        Ok(Client {
            base,
            token: config.token.clone(),
            agent,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The configured agent (TLS trust, timeouts), for the peer store's requests.
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    pub(crate) fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    fn connect_error(&self, url: &str, e: ureq::Error) -> ClientError {
        ClientError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        }
    }

    /// A non-2xx answer as an error with the problem document's detail.
    fn check(
        &self,
        method: &'static str,
        url: &str,
        response: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let detail = serde_json::from_str::<ErrorBody>(&text)
            .map(|p| p.detail)
            .unwrap_or_else(|_| text.trim().chars().take(300).collect());
        let detail = match status {
            401 if self.token.is_none() => format!("{detail} (give --token or VMEDIA_TOKEN)"),
            _ => detail,
        };
        Err(ClientError::Status {
            method,
            url: url.to_string(),
            status,
            detail,
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        url: &str,
        response: ureq::http::Response<ureq::Body>,
    ) -> Result<T> {
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_string()
            .map_err(|e| ClientError::Answer {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Answer {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let response = self
            .authorize(self.agent.get(&url))
            .call()
            .map_err(|e| self.connect_error(&url, e))?;
        let response = self.check("GET", &url, response)?;
        self.json(&url, response)
    }

    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        if_match: Option<&str>,
    ) -> Result<T> {
        let url = self.url(path);
        let mut request = self.authorize(self.agent.post(&url));
        if let Some(tag) = if_match {
            request = request.header("If-Match", tag);
        }
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Failed {
            what: format!("POST {url}"),
            reason: e.to_string(),
        })?;
        let response = request
            .header("Content-Type", "application/json")
            .send(&bytes[..])
            .map_err(|e| self.connect_error(&url, e))?;
        let response = self.check("POST", &url, response)?;
        self.json(&url, response)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let url = self.url(path);
        let response = self
            .authorize(self.agent.delete(&url))
            .call()
            .map_err(|e| self.connect_error(&url, e))?;
        self.check("DELETE", &url, response)?;
        Ok(())
    }

    /// Who the token belongs to.
    pub fn whoami(&self) -> Result<WhoAmI> {
        self.get_json("/api/v1/whoami")
    }

    /// Every item (all pages), removed ones too when `removed`.
    pub fn items(&self, removed: bool) -> Result<Vec<ItemSummary>> {
        let mut path = format!("/api/v1/library/items?limit=1000&removed={removed}");
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: ItemPage = self.get_json(&path)?;
            items.extend(page.items);
            match page.next {
                Some(next) if next.starts_with("/api/v1/") => path = next,
                Some(next) => {
                    return Err(ClientError::Answer {
                        url: self.url(&path),
                        reason: format!("a next page outside the API: {next:?}"),
                    })
                }
                None => return Ok(items),
            }
        }
        Err(ClientError::Answer {
            url: self.url("/api/v1/library/items"),
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// An item's versions and events.
    pub fn history(&self, name: &str) -> Result<HistoryReport> {
        VersionSpec::current(name)?;
        self.get_json(&format!("/api/v1/library/items/{}", segment(name)))
    }

    /// One version (`NAME`, `NAME@N`, `NAME@sha256:PREFIX`).
    pub fn show(&self, spec: &str) -> Result<VersionReport> {
        let (name, version) = version_path(spec)?;
        self.get_json(&format!(
            "/api/v1/library/items/{}/versions/{}",
            segment(&name),
            segment(&version)
        ))
    }

    /// Makes an earlier version current, matching the item's ETag read just before (another
    /// client's change in between is refused by the daemon, not overwritten).
    pub fn rollback(&self, name: &str, request: &RollbackRequest) -> Result<EventReport> {
        VersionSpec::current(name)?;
        let path = format!("/api/v1/library/items/{}", segment(name));
        let url = self.url(&path);
        let response = self
            .authorize(self.agent.get(&url))
            .call()
            .map_err(|e| self.connect_error(&url, e))?;
        let response = self.check("GET", &url, response)?;
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ClientError::Answer {
                url: url.clone(),
                reason: "no ETag on the item".into(),
            })?;
        self.send_json(&format!("{path}/rollback"), request, Some(&etag))
    }

    /// Where an upload is (the daemon's offset), or the error the daemon gave.
    fn upload_offset(&self, id: &str) -> Result<u64> {
        let info: UploadInfo = self.get_json(&format!("/api/v1/uploads/{}", segment(id)))?;
        Ok(info.offset)
    }

    /// Sends `bytes` (which start at `start` of the upload) from wherever the daemon is; after
    /// a broken request asks the daemon where it got to and resends only the rest.
    fn append(&self, id: &str, start: u64, bytes: &[u8]) -> Result<()> {
        let url = self.url(&format!("/api/v1/uploads/{}", segment(id)));
        let end = start
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| ClientError::Failed {
                what: "upload".into(),
                reason: "the image is larger than 2^64 bytes".into(),
            })?;
        let mut offset = start;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            if offset == end {
                return Ok(());
            }
            let skip = usize::try_from(offset - start).unwrap_or(bytes.len());
            let result = self
                .authorize(self.agent.patch(&url))
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", &offset.to_string())
                .send(&bytes[skip.min(bytes.len())..]);
            match result {
                Ok(response) => match self.check("PATCH", &url, response) {
                    Ok(_) => return Ok(()),
                    // 409: the daemon is elsewhere (an earlier try reached it after all).
                    Err(e @ ClientError::Status { status: 409, .. }) => last = Some(e),
                    Err(e) => return Err(e),
                },
                Err(e) => last = Some(self.connect_error(&url, e)),
            }
            offset = self.upload_offset(id)?;
            if offset < start || offset > end {
                return Err(ClientError::Failed {
                    what: format!("upload {id}"),
                    reason: format!(
                        "the daemon is at byte {offset}, outside the chunk {start}..{end} being sent"
                    ),
                });
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Failed {
            what: format!("upload {id}"),
            reason: "no attempt left".into(),
        }))
    }

    /// Uploads `source` as a new version of `request.item` through the resumable upload API
    /// and waits for the daemon's library add; its report is the local add's report.
    pub fn upload(
        &self,
        request: &UploadRequest,
        source: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        VersionSpec::current(&request.item)?;
        let info: UploadInfo = self.send_json("/api/v1/uploads", request, None)?;
        if let Some(length) = request.length {
            progress.set_total(length);
        }
        let mut chunk = vec![0u8; UPLOAD_CHUNK_BYTES];
        let mut offset = 0u64;
        loop {
            let mut filled = 0;
            while filled < chunk.len() {
                let n = source
                    .read(&mut chunk[filled..])
                    .map_err(|source| ClientError::Io {
                        path: PathBuf::from("(upload source)"),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            self.append(&info.id, offset, &chunk[..filled])?;
            offset += filled as u64;
            progress.advance(filled as u64);
        }
        let task: TaskInfo = self.send_json(
            &format!("/api/v1/uploads/{}/complete", segment(&info.id)),
            &serde_json::Map::new(),
            None,
        )?;
        let task = self.wait(task)?;
        let result = task.result.ok_or_else(|| ClientError::Answer {
            url: self.url(&format!("/api/v1/tasks/{}", task.id)),
            reason: "the finished task has no result".into(),
        })?;
        serde_json::from_value(result).map_err(|e| ClientError::Answer {
            url: self.url(&format!("/api/v1/tasks/{}", task.id)),
            reason: e.to_string(),
        })
    }

    /// Polls a task until it ends; a failed task is an error with the daemon's reason.
    pub fn wait(&self, mut task: TaskInfo) -> Result<TaskInfo> {
        loop {
            match task.state {
                TaskState::Succeeded => return Ok(task),
                TaskState::Failed => {
                    return Err(ClientError::Failed {
                        what: format!("task {} ({} {})", task.id, task.kind, task.target),
                        reason: task
                            .error
                            .map(|e| e.detail)
                            .unwrap_or_else(|| "failed without a reason".into()),
                    })
                }
                TaskState::Running => {
                    std::thread::sleep(TASK_POLL);
                    task = self.get_json(&format!("/api/v1/tasks/{}", segment(&task.id)))?;
                }
            }
        }
    }

    /// Downloads a version to `output`. The bytes go to a partial file beside it first; a
    /// broken transfer (or a later run) resumes it with `Range`, and the file gets its name
    /// only once its SHA-256 matched the version's digest.
    pub fn download(
        &self,
        spec: &str,
        output: &Path,
        overwrite: OverwritePolicy,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let version = self.show(spec)?;
        if overwrite == OverwritePolicy::Refuse && output.exists() {
            return Err(ClientError::Failed {
                what: output.display().to_string(),
                reason: "exists; pass --force to replace it".into(),
            });
        }
        let part = partial_path(output);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ClientError::Io { path, source }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(io(&part))?;
        // A version's bytes never change, so a partial file of the same version is resumed.
        let path = format!(
            "/api/v1/library/items/{}/versions/{}/content",
            segment(&version.name),
            version.version
        );
        let url = self.url(&path);
        let etag = format!(
            "\"{}\"",
            version
                .digest
                .strip_prefix("sha256:")
                .unwrap_or(&version.digest)
        );
        progress.set_total(version.size);
        let mut written = 0u64;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let have = file.metadata().map_err(io(&part))?.len();
            if have > version.size {
                file.set_len(0).map_err(io(&part))?;
                continue;
            }
            if have == version.size {
                last = None;
                break;
            }
            let mut request = self.authorize(self.agent.get(&url));
            if have > 0 {
                request = request
                    .header("Range", &format!("bytes={have}-"))
                    .header("If-Range", &etag);
            }
            let response = match request.call() {
                Ok(r) => self.check("GET", &url, r)?,
                Err(e) => {
                    last = Some(self.connect_error(&url, e));
                    continue;
                }
            };
            let start = if response.status().as_u16() == 206 {
                have
            } else {
                file.set_len(0).map_err(io(&part))?;
                0
            };
            file.seek(SeekFrom::Start(start)).map_err(io(&part))?;
            progress.advance(start);
            let mut body = response.into_body();
            let mut reader = body.with_config().limit(version.size).reader();
            let mut buffer = vec![0u8; 1 << 20];
            let outcome = loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        file.write_all(&buffer[..n]).map_err(io(&part))?;
                        written += n as u64;
                        progress.advance(n as u64);
                    }
                    Err(e) => break Err(e),
                }
            };
            file.flush().map_err(io(&part))?;
            if let Err(e) = outcome {
                last = Some(ClientError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                });
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        file.seek(SeekFrom::Start(0)).map_err(io(&part))?;
        let mut hash = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).map_err(io(&part))?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
        }
        let digest = format!("sha256:{}", hex::encode(hash.finalize()));
        if digest != version.digest {
            drop(file);
            let _ = std::fs::remove_file(&part);
            return Err(ClientError::Failed {
                what: format!("{}@{}", version.name, version.version),
                reason: format!(
                    "the downloaded bytes hash to {digest}, not {}; nothing was written",
                    version.digest
                ),
            });
        }
        file.sync_all().map_err(io(&part))?;
        drop(file);
        if overwrite == OverwritePolicy::Refuse && output.exists() {
            return Err(ClientError::Failed {
                what: output.display().to_string(),
                reason: "appeared while downloading; pass --force to replace it".into(),
            });
        }
        std::fs::rename(&part, output).map_err(io(output))?;
        Ok(GetReport {
            name: version.name,
            version: version.version,
            digest: version.digest,
            size: version.size,
            path: output.to_path_buf(),
            written_bytes: written,
            hole_bytes: 0,
        })
    }

    /// Every user (administrators).
    pub fn users(&self) -> Result<Vec<UserInfo>> {
        self.get_json("/api/v1/users")
    }

    pub fn add_user(&self, user: &NewUser) -> Result<UserInfo> {
        self.send_json("/api/v1/users", user, None)
    }

    pub fn remove_user(&self, name: &str) -> Result<()> {
        self.delete(&format!("/api/v1/users/{}", segment(name)))
    }

    /// Every API token, without secrets (administrators).
    pub fn tokens(&self) -> Result<Vec<crate::auth::TokenInfo>> {
        self.get_json("/api/v1/tokens")
    }

    pub fn revoke_token(&self, id: &str) -> Result<()> {
        self.delete(&format!("/api/v1/tokens/{}", segment(id)))
    }

    /// Creates an API token; its secret is in this answer only.
    pub fn create_token(&self, request: &TokenRequest) -> Result<NewToken> {
        self.send_json("/api/v1/tokens", request, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_specs_become_path_segments() {
        assert_eq!(
            version_path("debian").unwrap(),
            ("debian".into(), "current".into())
        );
        assert_eq!(
            version_path("debian@3").unwrap(),
            ("debian".into(), "3".into())
        );
        assert_eq!(
            version_path("debian@sha256:3f9a").unwrap(),
            ("debian".into(), "sha256:3f9a".into())
        );
        assert!(version_path("../etc").is_err());
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn plain_http_and_paths_are_refused() {
        let config = |server: &str| ClientConfig {
            server: server.into(),
            token: None,
            trust: Trust::System,
        };
        let err = Client::new(&config("http://h:8080")).err().unwrap();
        assert!(err.to_string().contains("--https-port"), "{err}");
        assert!(Client::new(&config("h:8443")).is_err());
        assert!(Client::new(&config("https://h:8443/images")).is_err());
        assert_eq!(
            Client::new(&config("https://h:8443/api/v1/")).unwrap().base,
            "https://h:8443"
        );
    }

    #[test]
    fn partial_download_sits_beside_the_output() {
        assert_eq!(
            partial_path(Path::new("/tmp/out/debian.iso")),
            PathBuf::from("/tmp/out/.debian.iso.vmedia-part")
        );
    }
}
