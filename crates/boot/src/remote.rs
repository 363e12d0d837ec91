//! Media a VM reads over the network: `nbd://HOST[:PORT]/EXPORT` through QEMU's NBD block
//! driver and `http(s)://...` through its curl driver (read-only), typically exports of a
//! `vmedia serve` daemon. A URL is validated strictly here, before QEMU sees it: a medium is
//! either a checked URL or a local path, never a string QEMU gets to interpret either way.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{BootError, Result};

/// The NBD port IANA assigned (and `vmedia serve`'s default).
pub const NBD_DEFAULT_PORT: u16 = 10809;
/// NBD's own limit on an export name (NBD_MAX_STRING_SIZE in the protocol document).
pub const MAX_EXPORT_NAME_BYTES: usize = 4096;
/// Longer URLs are not addresses but accidents (browsers and proxies stop around 8 KiB too).
pub const MAX_URL_BYTES: usize = 8192;
/// DNS limits a host name to 253 characters.
const MAX_HOST_BYTES: usize = 253;

/// The host part of a URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// As QEMU's `server.host` takes it: an IPv6 address without brackets.
    pub fn qemu_form(&self) -> String {
        match self {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::V6(ip) => write!(f, "[{ip}]"),
            other => f.write_str(&other.qemu_form()),
        }
    }
}

/// A checked network medium address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    Nbd {
        host: Host,
        port: u16,
        /// Percent-decoded.
        export: String,
    },
    Http {
        secure: bool,
        host: Host,
        port: Option<u16>,
        /// Path and query as given (already percent-encoded, checked).
        path_and_query: String,
    },
}

impl RemoteUrl {
    /// Parses a URL with scheme `nbd`, `http` or `https`; every other form is an error.
    pub fn parse(text: &str) -> Result<RemoteUrl> {
        let invalid = |reason: &str| BootError::Invalid(format!("URL {text:?}: {reason}"));
        if text.len() > MAX_URL_BYTES {
            return Err(invalid(&format!("longer than {MAX_URL_BYTES} bytes")));
        }
        if let Some(bad) = text.chars().find(|c| !is_url_char(*c)) {
            return Err(invalid(&format!(
                "{bad:?} is not allowed in a URL (percent-encode it)"
            )));
        }
        check_percent_escapes(text).map_err(|reason| invalid(&reason))?;
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("use nbd://HOST[:PORT]/EXPORT or http(s)://HOST[:PORT]/PATH"))?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "nbd" | "http" | "https") {
            return Err(invalid(&format!(
                "scheme {scheme}:// is not supported (nbd, http, https)"
            )));
        }
        if rest.contains('#') {
            return Err(invalid("a fragment (#...) means nothing to a disk"));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(invalid(
                "credentials in a URL would be stored in the VM's configuration; not supported",
            ));
        }
        let (host, port) = parse_authority(authority).map_err(|reason| invalid(&reason))?;
        match scheme.as_str() {
            "nbd" => {
                if tail.contains('?') {
                    return Err(invalid("an nbd:// URL takes no query"));
                }
                let encoded = tail.strip_prefix('/').unwrap_or(tail);
                let export = percent_decode(encoded).map_err(|reason| invalid(&reason))?;
                if export.is_empty() {
                    return Err(invalid("names no export (nbd://HOST[:PORT]/EXPORT)"));
                }
                if export.len() > MAX_EXPORT_NAME_BYTES {
                    return Err(invalid(&format!(
                        "the export name is longer than NBD's {MAX_EXPORT_NAME_BYTES} bytes"
                    )));
                }
                if export.chars().any(char::is_control) {
                    return Err(invalid("the export name holds a control character"));
                }
                Ok(RemoteUrl::Nbd {
                    host,
                    port: port.unwrap_or(NBD_DEFAULT_PORT),
                    export,
                })
            }
            // http or https, checked above.
            _ => {
                let path_and_query = if tail.starts_with('/') {
                    tail.to_string()
                } else {
                    format!("/{tail}")
                };
                if path_and_query == "/" {
                    return Err(invalid("names no image (http(s)://HOST[:PORT]/PATH)"));
                }
                Ok(RemoteUrl::Http {
                    secure: scheme == "https",
                    host,
                    port,
                    path_and_query,
                })
            }
        }
    }

    pub fn is_http(&self) -> bool {
        matches!(self, RemoteUrl::Http { .. })
    }

    /// The QEMU `-drive` options naming this source (`file.driver=...`), commas doubled.
    pub fn qemu_file_options(&self, tls_verify: bool) -> String {
        match self {
            RemoteUrl::Nbd { host, port, export } => format!(
                "file.driver=nbd,file.server.type=inet,file.server.host={},file.server.port={port},file.export={}",
                host.qemu_form(),
                export.replace(',', ",,")
            ),
            RemoteUrl::Http { secure, .. } => {
                let driver = if *secure { "https" } else { "http" };
                let mut options = format!(
                    "file.driver={driver},file.url={}",
                    self.to_string().replace(',', ",,")
                );
                if *secure && !tls_verify {
                    options.push_str(",file.sslverify=off");
                }
                options
            }
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteUrl::Nbd { host, port, export } => {
                write!(f, "nbd://{host}:{port}/{}", percent_encode(export))
            }
            RemoteUrl::Http {
                secure,
                host,
                port,
                path_and_query,
            } => {
                let scheme = if *secure { "https" } else { "http" };
                write!(f, "{scheme}://{host}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                f.write_str(path_and_query)
            }
        }
    }
}

/// Whether a command-line medium is meant as a URL: it names a scheme. Such text is parsed as
/// a URL or refused; it is never taken as a local file name.
pub fn looks_like_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    text.contains("://")
        || lower.starts_with("nbd:")
        || lower.starts_with("http:")
        || lower.starts_with("https:")
}

/// RFC 3986's unreserved, reserved and '%' characters; nothing else appears raw in a URL.
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

fn check_percent_escapes(text: &str) -> std::result::Result<(), String> {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('%') {
        let valid = bytes
            .get(at + 1..at + 3)
            .is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit));
        if !valid {
            return Err(format!(
                "'%' at offset {at} is not followed by two hex digits"
            ));
        }
    }
    Ok(())
}

fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let pair = text
                .get(at + 1..at + 3)
                .ok_or_else(|| "a cut-off percent escape".to_string())?;
            let byte = u8::from_str_radix(pair, 16).map_err(|_| format!("bad escape %{pair}"))?;
            out.push(byte);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the export name is not UTF-8 once decoded".to_string())
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:@/!$&'()*+=;".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`.
fn parse_authority(authority: &str) -> std::result::Result<(Host, Option<u16>), String> {
    let (host_text, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address without its closing ']'".to_string())?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("[{inside}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {after:?} after the address"))?,
            ),
        };
        return Ok((Host::V6(ip), port.map(parse_port).transpose()?));
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host_text.is_empty() {
        return Err("names no host".into());
    }
    let host = if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
        Host::V4(ip)
    } else {
        check_host_name(host_text)?;
        Host::Name(host_text.to_ascii_lowercase())
    };
    Ok((host, port_text.map(parse_port).transpose()?))
}

fn parse_port(text: &str) -> std::result::Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("port {text:?} is not 1..=65535")),
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn check_host_name(name: &str) -> std::result::Result<(), String> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if name.len() <= MAX_HOST_BYTES && labels_ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a host name or an IP address"))
    }
}

/// A network medium and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: RemoteUrl,
    /// False: an https server's certificate is not checked (QEMU's `sslverify=off`), for a
    /// daemon with a self-signed certificate.
    pub tls_verify: bool,
}

/// What a CD drive or a disk reads: a local image or a network medium.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MediumRepr", into = "MediumRepr")]
pub enum Medium {
    File(PathBuf),
    Remote(Remote),
}

impl Medium {
    /// The local image, if this is one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Medium::File(path) => Some(path),
            Medium::Remote(_) => None,
        }
    }

    pub fn remote(&self) -> Option<&Remote> {
        match self {
            Medium::File(_) => None,
            Medium::Remote(remote) => Some(remote),
        }
    }
}

impl From<PathBuf> for Medium {
    fn from(path: PathBuf) -> Medium {
        Medium::File(path)
    }
}

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Medium::File(path) => write!(f, "{}", path.display()),
            Medium::Remote(remote) => write!(f, "{}", remote.url),
        }
    }
}

/// How vm.toml spells a medium: a path or a URL as a string, or a table for a URL whose
/// certificate is not checked. Paths stored before URLs existed read unchanged.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum MediumRepr {
    Text(String),
    Url {
        url: String,
        #[serde(default = "verify_by_default")]
        tls_verify: bool,
    },
}

fn verify_by_default() -> bool {
    true
}

impl TryFrom<MediumRepr> for Medium {
    type Error = BootError;

    fn try_from(repr: MediumRepr) -> Result<Medium> {
        match repr {
            MediumRepr::Text(text) if looks_like_url(&text) => Ok(Medium::Remote(Remote {
                url: RemoteUrl::parse(&text)?,
                tls_verify: true,
            })),
            MediumRepr::Text(text) => Ok(Medium::File(PathBuf::from(text))),
            MediumRepr::Url { url, tls_verify } => Ok(Medium::Remote(Remote {
                url: RemoteUrl::parse(&url)?,
                tls_verify,
            })),
        }
    }
}

impl From<Medium> for MediumRepr {
    fn from(medium: Medium) -> MediumRepr {
        match medium {
            // Non-UTF-8 paths were refused when the spec was built (QEMU needs UTF-8).
            Medium::File(path) => MediumRepr::Text(path.to_string_lossy().into_owned()),
            Medium::Remote(Remote {
                url,
                tls_verify: true,
            }) => MediumRepr::Text(url.to_string()),
            Medium::Remote(Remote {
                url,
                tls_verify: false,
            }) => MediumRepr::Url {
                url: url.to_string(),
                tls_verify: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        RemoteUrl::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn nbd_url_with_default_port_and_encoded_export() {
        let url = RemoteUrl::parse("nbd://Server.LAN/debian%40sha256:ab12/disk").unwrap();
        assert_eq!(
            url,
            RemoteUrl::Nbd {
                host: Host::Name("server.lan".into()),
                port: NBD_DEFAULT_PORT,
                export: "debian@sha256:ab12/disk".into(),
            }
        );
        assert_eq!(
            url.to_string(),
            "nbd://server.lan:10809/debian@sha256:ab12/disk"
        );
    }

    #[test]
    fn nbd_url_with_ipv6_and_port() {
        let url = RemoteUrl::parse("nbd://[::1]:10810/clone/web1").unwrap();
        assert_eq!(
            url.qemu_file_options(true),
            "file.driver=nbd,file.server.type=inet,file.server.host=::1,file.server.port=10810,file.export=clone/web1"
        );
    }

    #[test]
    fn commas_in_an_export_are_doubled_for_qemu() {
        let url = RemoteUrl::parse("nbd://h/a,b").unwrap();
        assert!(url.qemu_file_options(true).ends_with("file.export=a,,b"));
    }

    #[test]
    fn http_urls_keep_path_and_query() {
        let url = RemoteUrl::parse("HTTPS://h:8443/images/debian@3?x=1").unwrap();
        assert_eq!(url.to_string(), "https://h:8443/images/debian@3?x=1");
        assert_eq!(
            url.qemu_file_options(false),
            "file.driver=https,file.url=https://h:8443/images/debian@3?x=1,file.sslverify=off"
        );
        let plain = RemoteUrl::parse("http://10.0.0.1/images/a").unwrap();
        assert_eq!(
            plain.qemu_file_options(false),
            "file.driver=http,file.url=http://10.0.0.1/images/a",
            "sslverify is an https option only"
        );
    }

    #[test]
    fn malformed_urls_are_refused() {
        assert!(refused("nbd://h").contains("no export"));
        assert!(refused("nbd://h/").contains("no export"));
        assert!(refused("nbd://h:0/x").contains("port"));
        assert!(refused("nbd://h:99999/x").contains("port"));
        assert!(refused("nbd://h:+80/x").contains("port"));
        assert!(refused("nbd://:10809/x").contains("no host"));
        assert!(refused("nbd://user:pw@h/x").contains("credentials"));
        assert!(refused("nbd://h/x?y").contains("query"));
        assert!(refused("nbd://h/a b").contains("not allowed"));
        assert!(refused("nbd://h/%zz").contains("hex"));
        assert!(refused("nbd://h/%0a").contains("control"));
        assert!(refused("nbd://bad_host/x").contains("host name"));
        assert!(refused("nbd://[::1/x").contains("']'"));
        assert!(refused("http://h/").contains("no image"));
        assert!(refused("http://h/a#frag").contains("fragment"));
        assert!(refused("ftp://h/a").contains("not supported"));
        assert!(refused("file:///etc/passwd").contains("not supported"));
        assert!(refused("nbd:/x").contains("use nbd://"));
        assert!(refused(&format!("http://h/{}", "a".repeat(MAX_URL_BYTES))).contains("longer"));
        let long_export = format!("nbd://h/{}", "e".repeat(MAX_EXPORT_NAME_BYTES + 1));
        assert!(refused(&long_export).contains("4096"));
    }

    #[test]
    fn url_like_text_is_never_a_path() {
        for text in [
            "nbd://h/x",
            "NBD:x",
            "http:foo",
            "https:",
            "s3://b/k",
            "ftp://h/a",
        ] {
            assert!(looks_like_url(text), "{text}");
        }
        for text in ["/srv/a.iso", "a.iso", "nbd.iso", "./http/a.iso", "c:a"] {
            assert!(!looks_like_url(text), "{text}");
        }
    }

    #[test]
    fn media_round_trip_through_toml() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            media: Vec<Medium>,
        }
        let holder = Holder {
            media: vec![
                Medium::File("/srv/a.iso".into()),
                Medium::Remote(Remote {
                    url: RemoteUrl::parse("nbd://h:10809/debian@3").unwrap(),
                    tls_verify: true,
                }),
                Medium::Remote(Remote {
                    url: RemoteUrl::parse("https://h/images/x").unwrap(),
                    tls_verify: false,
                }),
            ],
        };
        let text = toml::to_string(&holder).unwrap();
        assert!(text.contains("\"nbd://h:10809/debian@3\""), "{text}");
        assert!(text.contains("tls_verify = false"), "{text}");
        let back: Holder = toml::from_str(&text).unwrap();
        assert_eq!(back, holder);
    }

    #[test]
    fn a_stored_url_that_does_not_parse_is_refused_not_taken_as_a_path() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Holder {
            medium: Medium,
        }
        let err = toml::from_str::<Holder>("medium = \"nbd://h\"").unwrap_err();
        assert!(err.to_string().contains("no export"), "{err}");
    }
}
