//! The OCI distribution API over ureq: manifests and blobs of one repository, with the
//! registry's authentication challenges answered (Bearer tokens from its realm, or Basic).

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;

use crate::error::{OciError, Result};
use crate::reference::Reference;

/// Error bodies, token answers: small JSON documents.
const MAX_SMALL_BODY: u64 = 1 << 20;
/// Connecting to a registry or its token service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for a registry's answer headers (a blob upload's final PUT may verify for a while).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// A user name and password (or a registry token as the password).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// http:// instead of https:// (a registry on loopback or a lab network).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
}

/// One repository in one registry.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    repository: String,
    plain_http: bool,
    credentials: Option<Credentials>,
    /// The scope a token is asked for when the challenge names none.
    actions: &'static str,
    /// The Authorization header value that last worked.
    authorization: Mutex<Option<String>>,
}

type Response = ureq::http::Response<ureq::Body>;

impl Registry {
    /// A client for `reference`'s repository; `push` asks tokens for pull and push.
    pub fn new(reference: &Reference, options: &RegistryOptions, push: bool) -> Registry {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(options.insecure)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("vmedia/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let scheme = if options.plain_http { "http" } else { "https" };
        Registry {
            agent,
            base: format!("{scheme}://{}", reference.api_host()),
            repository: reference.repository.clone(),
            plain_http: options.plain_http,
            credentials: options.credentials.clone(),
            actions: if push { "pull,push" } else { "pull" },
            authorization: Mutex::new(None),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// An upload location as an absolute URL (registries answer paths or full URLs).
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    fn run_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Result<Response> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(a) = authorization {
            builder = builder.header("Authorization", a);
        }
        let connect = |reason: String| OciError::Connect {
            method: method.to_string(),
            url: url.to_string(),
            reason,
        };
        let result = match body {
            Some(bytes) => self
                .agent
                .run(builder.body(bytes).map_err(|e| connect(e.to_string()))?),
            None => self
                .agent
                .run(builder.body(()).map_err(|e| connect(e.to_string()))?),
        };
        result.map_err(|e| connect(e.to_string()))
    }

    /// Sends a request; a 401 is answered once (token or Basic) and the request repeated.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let current = self.authorization.lock().map(|a| a.clone()).unwrap_or(None);
        let response = self.run_once(method, url, headers, body, current.as_deref())?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let authorization = self.authenticate(url, &challenge)?;
        if current.as_deref() == Some(authorization.as_str()) {
            return self.check(method, url, response, &[]);
        }
        let response = self.run_once(method, url, headers, body, Some(&authorization))?;
        if response.status().as_u16() != 401 {
            if let Ok(mut slot) = self.authorization.lock() {
                *slot = Some(authorization);
            }
        }
        Ok(response)
    }

    /// The Authorization header value a `WWW-Authenticate` challenge asks for.
    fn authenticate(&self, url: &str, challenge: &str) -> Result<String> {
        let auth_error = |reason: String| OciError::Auth {
            url: url.to_string(),
            reason,
        };
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let c = self.credentials.as_ref().ok_or_else(|| {
                    auth_error(
                        "the registry asks for a user name and password (--username, --password-file)"
                            .into(),
                    )
                })?;
                Ok(basic(c))
            }
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| auth_error("a Bearer challenge without a realm".into()))?;
                if realm.starts_with("http://") && !self.plain_http {
                    return Err(auth_error(format!(
                        "the token service {realm} is plain http while the registry is https (give --plain-http to allow it)"
                    )));
                }
                if !realm.starts_with("https://") && !realm.starts_with("http://") {
                    return Err(auth_error(format!("token realm {realm:?} is not a URL")));
                }
                let mut query = Vec::new();
                if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                    query.push(format!("service={}", encode(service)));
                }
                let scope = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| format!("repository:{}:{}", self.repository, self.actions));
                query.push(format!("scope={}", encode(&scope)));
                let token_url = format!(
                    "{realm}{}{}",
                    if realm.contains('?') { '&' } else { '?' },
                    query.join("&")
                );
                let basic_header = self.credentials.as_ref().map(basic);
                let response =
                    self.run_once("GET", &token_url, &[], None, basic_header.as_deref())?;
                let response = self.check("GET", &token_url, response, &[200])?;
                let text = read_small(response, &token_url)?;
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let token: Token = serde_json::from_str(&text)
                    .map_err(|e| auth_error(format!("token answer: {e}")))?;
                let token = token
                    .token
                    .or(token.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| auth_error("the token service gave no token".into()))?;
                Ok(format!("Bearer {token}"))
            }
            "" => Err(auth_error(
                "401 without a WWW-Authenticate challenge".into(),
            )),
            other => Err(auth_error(format!(
                "unsupported authentication scheme {other}"
            ))),
        }
    }

    /// `response` when its status is one of `ok`, else a `Status` error with the registry's
    /// error codes and messages.
    fn check(&self, method: &str, url: &str, response: Response, ok: &[u16]) -> Result<Response> {
        let status = response.status().as_u16();
        if ok.contains(&status) {
            return Ok(response);
        }
        let text = read_small(response, url).unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorItem>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorItem {
            code: Option<String>,
            message: Option<String>,
        }
        let detail = match serde_json::from_str::<Errors>(&text) {
            Ok(e) if !e.errors.is_empty() => e
                .errors
                .iter()
                .map(|i| {
                    format!(
                        "{}: {}",
                        i.code.as_deref().unwrap_or("ERROR"),
                        i.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => text.trim().chars().take(300).collect(),
        };
        let detail = match status {
            401 if self.credentials.is_none() => {
                format!("{detail} (give --username and --password-file)")
            }
            _ => detail,
        };
        Err(OciError::Status {
            method: method.to_string(),
            url: url.to_string(),
            status,
            detail,
        })
    }

    /// True when the repository already holds the blob.
    pub fn blob_exists(&self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send("HEAD", &url, &[], None)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => self.check("HEAD", &url, response, &[]).map(|_| false),
        }
    }

    /// Opens an upload session; its location.
    pub fn start_upload(&self) -> Result<String> {
        let url = self.url("blobs/uploads/");
        let response = self.send("POST", &url, &[("Content-Length", "0")], Some(&[]))?;
        let response = self.check("POST", &url, response, &[202])?;
        self.location("POST", &url, &response)
    }

    fn location(&self, method: &str, url: &str, response: &Response) -> Result<String> {
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Status {
                method: method.to_string(),
                url: url.to_string(),
                status: response.status().as_u16(),
                detail: "no Location header for the upload".into(),
            })?;
        Ok(self.absolute(location))
    }

    /// Sends one chunk of an upload at `offset`; the location for the next request.
    pub fn upload_chunk(&self, location: &str, offset: u64, data: &[u8]) -> Result<String> {
        let end = offset + data.len() as u64 - 1;
        let range = format!("{offset}-{end}");
        let length = data.len().to_string();
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", range.as_str()),
            ("Content-Length", length.as_str()),
        ];
        let response = self.send("PATCH", location, &headers, Some(data))?;
        let response = self.check("PATCH", location, response, &[202])?;
        self.location("PATCH", location, &response)
    }

    /// Closes an upload: the registry checks `digest` over everything sent (and `last`).
    pub fn finish_upload(&self, location: &str, digest: &str, last: &[u8]) -> Result<()> {
        let url = format!(
            "{location}{}digest={}",
            if location.contains('?') { '&' } else { '?' },
            encode(digest)
        );
        let length = last.len().to_string();
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", length.as_str()),
        ];
        let response = self.send("PUT", &url, &headers, Some(last))?;
        self.check("PUT", &url, response, &[201, 204])?;
        Ok(())
    }

    /// Stores a manifest under a tag; the registry's digest of it.
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>> {
        let url = self.url(&format!("manifests/{reference}"));
        let response = self.send("PUT", &url, &[("Content-Type", media_type)], Some(bytes))?;
        let response = self.check("PUT", &url, response, &[201, 200])?;
        Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// A manifest's bytes and Content-Type (bounded by `MAX_MANIFEST_BYTES`).
    pub fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let url = self.url(&format!("manifests/{reference}"));
        let response = self.send("GET", &url, &[("Accept", crate::manifest::ACCEPT)], None)?;
        let response = self.check("GET", &url, response, &[200])?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(
            response,
            &url,
            crate::manifest::MAX_MANIFEST_BYTES,
            "manifest",
        )?;
        Ok((bytes, content_type))
    }

    /// A blob as a stream (redirects to storage followed, without the Authorization header).
    pub fn get_blob(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send("GET", &url, &[], None)?;
        let response = self.check("GET", &url, response, &[200])?;
        Ok(Box::new(response.into_body().into_reader()))
    }

    /// A small blob (a config) whole, bounded by `limit`.
    pub fn get_blob_bytes(&self, digest: &str, limit: u64) -> Result<Vec<u8>> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send("GET", &url, &[], None)?;
        let response = self.check("GET", &url, response, &[200])?;
        read_limited(response, &url, limit, "blob")
    }
}

fn basic(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn read_small(response: Response, url: &str) -> Result<String> {
    let bytes = read_limited(response, url, MAX_SMALL_BODY, "answer")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_limited(response: Response, url: &str, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut reader = response.into_body().into_reader().take(limit + 1);
    reader.read_to_end(&mut out).map_err(|e| OciError::Io {
        what: format!("reading {url}"),
        source: e,
    })?;
    if out.len() as u64 > limit {
        return Err(OciError::Limit {
            what: format!("{what} from {url}"),
            limit: "size in bytes",
            value: out.len() as u64,
            max: limit,
        });
    }
    Ok(out)
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Scheme k="v", k2=v2` into the scheme and its parameters (quoted values may hold commas).
pub fn parse_challenge(text: &str) -> (String, Vec<(String, String)>) {
    let text = text.trim();
    let (scheme, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let mut params = Vec::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && matches!(bytes[i], b' ' | b',') {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let key = rest[key_start..i].trim().to_ascii_lowercase();
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let start = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            value = rest[start..i].trim().to_string();
        }
        if !key.is_empty() {
            params.push((key, value));
        }
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_keep_commas_inside_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:vm/disk:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "registry.example".to_string()),
                (
                    "scope".to_string(),
                    "repository:vm/disk:pull,push".to_string()
                ),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), params.len()), ("Basic", 1));
        assert_eq!(parse_challenge("").0, "");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
