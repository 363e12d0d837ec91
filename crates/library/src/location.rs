//! Where a library lives and how to reach it: the options `open` and `init` take.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{LibraryError, Result};

/// A library's location: a folder, or a bucket and key prefix on an S3 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Folder(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    /// Another site's `vmedia serve`: `https://HOST:PORT`, reached through its store routes;
    /// the caller opens that store (`OpenConfig::store`).
    Daemon {
        url: String,
    },
}

impl Location {
    /// `s3://BUCKET[/PREFIX]` or a folder path.
    pub fn parse(text: &str) -> Result<Location> {
        let fail = |problem: &str| LibraryError::InvalidLocation {
            text: text.to_string(),
            problem: problem.to_string(),
        };
        if text.trim().is_empty() {
            return Err(fail("empty"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
                None => (rest, ""),
            };
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(fail(
                    "an S3 bucket name is 3 to 63 lowercase letters, digits, '-' or '.'",
                ));
            }
            let prefix_ok = prefix.split('/').all(|segment| {
                segment.is_empty()
                    || (!segment.starts_with('.')
                        && segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
            }) && !prefix.contains("//");
            if !prefix_ok {
                return Err(fail(
                    "an S3 prefix is '/'-separated letters, digits, '.', '_' and '-'",
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if text.starts_with("http://") {
            return Err(fail(
                "a daemon is reached over https:// only (its token never travels in clear)",
            ));
        }
        if let Some(rest) = text.strip_prefix("https://") {
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains('/') || host.contains('?') || host.contains('@') {
                return Err(fail(
                    "a daemon is https://HOST:PORT, with no path (its store routes are fixed)",
                ));
            }
            return Ok(Location::Daemon {
                url: text.trim_end_matches('/').to_string(),
            });
        }
        if text.contains("://") {
            return Err(fail(
                "only s3:// and https:// (a vmedia daemon) URLs and folder paths are libraries",
            ));
        }
        Ok(Location::Folder(PathBuf::from(text)))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Folder(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Daemon { url } => write!(f, "{url}"),
        }
    }
}

/// How long one read of an S3 object may take in all, retries included, before it fails: an
/// unreachable backend turns into an I/O error (EIO at the daemon's clients) this soon instead
/// of after the object store client's default retries (10-24 s here, minutes at worst).
pub const S3_READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long the object store client keeps retrying a failed request (any operation); below
/// [`S3_READ_DEADLINE`] so a read's last retry still fits inside it.
pub const S3_RETRY_BUDGET: Duration = Duration::from_secs(3);
/// The longest pause between two retries (object_store's default is 15 s).
pub const S3_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long opening a connection to the S3 endpoint may take (a black-holed host).
pub const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Explicit S3 settings: the binary fills these from `AWS_*` variables and `--s3-endpoint`;
/// the crate reads no environment.
#[derive(Debug, Default, Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
}

/// A store opened by the caller (see `OpenConfig::store`).
#[derive(Clone)]
pub struct ProvidedStore(pub std::sync::Arc<dyn crate::store::Store>);

impl std::fmt::Debug for ProvidedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProvidedStore({})", self.0.describe())
    }
}

/// How to open a library.
#[derive(Debug, Clone)]
pub struct OpenConfig {
    pub location: Location,
    pub s3: S3Settings,
    /// A store the caller opened itself, used instead of opening `location`: a peer daemon's
    /// (`Location::Daemon`), which the server crate reaches over HTTPS; the library speaks no
    /// HTTP of its own.
    pub store: Option<ProvidedStore>,
    /// The key file's bytes, for an encrypted library.
    pub key: Option<Vec<u8>>,
    /// Who acts (e.g. `user@host`), recorded in events and manifests.
    pub actor: String,
}

impl OpenConfig {
    /// A folder library with no key, for tests and simple callers.
    pub fn folder(path: impl Into<PathBuf>, actor: &str) -> OpenConfig {
        OpenConfig {
            location: Location::Folder(path.into()),
            s3: S3Settings::default(),
            store: None,
            key: None,
            actor: actor.to_string(),
        }
    }
}

/// The default retention window: every version current in the last 72 hours is kept.
pub const DEFAULT_KEEP_WITHIN: Duration = Duration::from_secs(72 * 3600);

/// What `init` records for the library's lifetime.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Encrypt at rest with keys derived from this key file's bytes.
    pub encrypt_key: Option<Vec<u8>>,
    /// Trusted ed25519 public keys (PEM text); when any is given, every version must be signed
    /// by one of them.
    pub require_signed: Vec<String>,
    pub keep_within: Duration,
    pub keep_last: Option<u32>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encrypt_key: None,
            require_signed: Vec::new(),
            keep_within: DEFAULT_KEEP_WITHIN,
            keep_last: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_s3_urls_or_folders() {
        assert_eq!(
            Location::parse("s3://images/site/a").unwrap(),
            Location::S3 {
                bucket: "images".into(),
                prefix: "site/a".into()
            }
        );
        assert_eq!(
            Location::parse("s3://images").unwrap(),
            Location::S3 {
                bucket: "images".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("/srv/lib").unwrap(),
            Location::Folder("/srv/lib".into())
        );
        assert_eq!(
            Location::parse("https://site-b:8443/").unwrap(),
            Location::Daemon {
                url: "https://site-b:8443".into()
            }
        );
        for bad in [
            "",
            "s3://",
            "s3://A",
            "s3://b/../x",
            "http://x/y",
            "http://site-b:8080",
            "https://site-b:8443/api",
            "https://user@site-b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_read_from_an_unreachable_s3_backend_fails_within_the_read_deadline() {
        use crate::store::{S3Config, S3Store, Store};
        // A loopback port nobody listens on: every attempt is refused at once, so only the
        // client's retries could make the read wait.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = S3Store::new(&S3Config {
            bucket: "vmedia-gone".into(),
            prefix: "lib".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            allow_http: true,
        })
        .unwrap();
        let started = std::time::Instant::now();
        let result = store.get("chunks/ab/cd", 1 << 20);
        let waited = started.elapsed();
        assert!(result.is_err(), "{result:?}");
        // The deadline plus one scheduling slice of a loaded machine.
        assert!(
            waited <= S3_READ_DEADLINE + Duration::from_secs(1),
            "the read failed after {waited:?}, deadline {S3_READ_DEADLINE:?}"
        );
    }
}
