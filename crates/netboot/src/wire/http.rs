//! HTTP/1.1 request heads from strangers (RFC 9112): the request line and the few headers a
//! boot-file server acts on, parsed without panics or unbounded allocation, plus single byte
//! ranges (RFC 9110 section 14) and query parameters. No I/O: `http.rs` owns the sockets.

use thiserror::Error;

/// Largest request head (request line + headers) we accept; boot clients send a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a request head was refused (the server answers 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("request line {0:?} is not METHOD TARGET VERSION")]
    BadRequestLine(String),
    #[error("request target {0:?} has a malformed percent escape or is not UTF-8 once decoded")]
    BadTarget(String),
}

/// A parsed request head: what routing and the response need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The target's path, percent-decoded.
    pub path: String,
    /// The raw query string after `?` (decode parameters with [`query_param`]).
    pub query: String,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The `Range` header as sent (resolve it with [`parse_range`]).
    pub range: Option<String>,
    /// The request announces a body (which this server never reads: the connection closes).
    pub has_body: bool,
    /// The `User-Agent` header, for logs (iPXE, UEFI HTTP boot, curl...).
    pub user_agent: Option<String>,
}

/// Where a request head ends (just past the blank line), if it is complete in `buf`.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Decodes `%XX` escapes; `None` for a truncated or non-hex escape or a non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl RequestHead {
    /// Parses a complete head (request line, headers, blank line; as `find_head_end` delimits).
    /// Header lines without a colon are skipped; unknown headers are ignored.
    pub fn parse(raw: &[u8]) -> Result<RequestHead, HeadError> {
        if raw.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let text = std::str::from_utf8(raw).map_err(|_| HeadError::NotUtf8)?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let bad_line = || HeadError::BadRequestLine(request_line.chars().take(200).collect());
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad_line());
        };
        if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/") {
            return Err(bad_line());
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(path)
            .ok_or_else(|| HeadError::BadTarget(target.chars().take(200).collect()))?;
        let mut head = RequestHead {
            method: method.to_string(),
            path,
            query: query.to_string(),
            keep_alive: version == "HTTP/1.1",
            range: None,
            has_body: false,
            user_agent: None,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    if v.contains("close") {
                        head.keep_alive = false;
                    } else if v.contains("keep-alive") {
                        head.keep_alive = true;
                    }
                }
                "range" => head.range = Some(value.to_string()),
                "content-length" => head.has_body = value != "0",
                "transfer-encoding" => head.has_body = true,
                "user-agent" => head.user_agent = Some(value.chars().take(200).collect()),
                _ => {}
            }
        }
        Ok(head)
    }
}

/// A `Range` the file cannot satisfy (the server answers 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Resolves a single `bytes=` range against `size`: `Ok(None)` = the whole file (no range,
/// another unit, or several ranges, which RFC 9110 lets a server answer with the whole file),
/// `Ok(Some((first, last)))` inclusive, `Err` = 416.
pub fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let suffix: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if suffix == 0 {
            return Err(Unsatisfiable);
        }
        (
            size.saturating_sub(suffix),
            size.checked_sub(1).ok_or(Unsatisfiable)?,
        )
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// The first `name=value` parameter of a query string, percent-decoded (empty when the value
/// does not decode).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v).unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Ok(Some((990, 999))));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
    }

    #[test]
    fn range_past_end_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=1000-", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 1000), Err(Unsatisfiable));
    }

    #[test]
    fn range_of_an_empty_file_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=-5", 0), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Err(Unsatisfiable));
    }

    #[test]
    fn head_parsing_reads_keep_alive_and_range() {
        let h =
            RequestHead::parse(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n")
                .unwrap();
        assert_eq!(h.path, "/a b");
        assert_eq!(h.query, "x=1");
        assert!(h.keep_alive);
        assert_eq!(h.range.as_deref(), Some("bytes=0-1"));
        let h = RequestHead::parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn malformed_request_line_is_rejected() {
        assert!(RequestHead::parse(b"GARBAGE\r\n\r\n").is_err());
        assert!(RequestHead::parse(b"GET /%zz HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn truncated_percent_escape_is_rejected() {
        assert!(RequestHead::parse(b"GET /a% HTTP/1.1\r\n\r\n").is_err());
        assert!(RequestHead::parse(b"GET /a%4 HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("mac=52%3A54%3A00%3A00%3A00%3A01&arch=7", "mac").as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(query_param("mac=&arch=7", "arch").as_deref(), Some("7"));
        assert_eq!(query_param("arch=7", "mac"), None);
    }

    #[test]
    fn a_body_ends_keep_alive_and_user_agent_is_kept() {
        let h = RequestHead::parse(
            b"GET /x HTTP/1.1\r\nUser-Agent: iPXE/1.21.1\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert!(h.has_body);
        assert_eq!(h.user_agent.as_deref(), Some("iPXE/1.21.1"));
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.resize(MAX_HEAD + 1, b'a');
        assert_eq!(RequestHead::parse(&raw), Err(HeadError::TooLarge));
    }
}
