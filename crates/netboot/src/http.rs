//! A lean HTTP/1.1 server for boot files: GET and HEAD, single byte ranges (206, 416),
//! keep-alive and pipelining, sendfile for plain files, positional reads for files inside
//! ISOs; per-machine iPXE scripts (`/boot.ipxe?mac=..&arch=..`), rendered unattended-install
//! templates and the status document (`/_vmedia/status`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

use crate::files::{FileError, FileRoot, ServedFile};
use crate::rules::{ipxe_script, normalize_mac, render, Client, Rule, Rules, Vars};
use crate::status::Status;

/// Largest request head (request line + headers) we accept; boot clients send a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest template or script file we render in memory.
pub const MAX_TEMPLATE: u64 = 1 << 20;
/// Chunk size for files that cannot use sendfile (inside ISOs).
const CHUNK: usize = 256 * 1024;
/// A connection idle this long between requests is closed.
const IDLE_SECS: u64 = 60;

pub struct HttpContext {
    pub root: Arc<FileRoot>,
    pub status: Arc<Status>,
    pub rules: Rules,
    /// `--ipxe-script FILE`: the template served at /boot.ipxe for every machine.
    pub ipxe_template: Option<String>,
    pub port: u16,
}

pub async fn run(listener: TcpListener, ctx: Arc<HttpContext>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            // Running out of descriptors under load must not end the server.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = connection(stream, peer, ctx).await;
        });
    }
}

struct Head {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    range: Option<String>,
    has_body: bool,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn percent_decode(s: &str) -> Option<String> {
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

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let version = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut keep_alive = version == "HTTP/1.1";
    let mut range = None;
    let mut has_body = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "range" => range = Some(value.to_string()),
            "content-length" => has_body = value != "0",
            "transfer-encoding" => has_body = true,
            _ => {}
        }
    }
    Some(Head {
        method,
        path: percent_decode(path)?,
        query: query.to_string(),
        keep_alive,
        range,
        has_body,
    })
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` = whole file, `Err` = 416.
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are optional (RFC 9110); the whole file is a valid answer.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let suffix: u64 = b.parse().map_err(|_| ())?;
        if suffix == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v).unwrap_or_default())
    })
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Body,
    extra: Vec<(String, String)>,
}

enum Body {
    Bytes(Vec<u8>),
    File {
        file: ServedFile,
        start: u64,
        len: u64,
    },
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: Body::Bytes(body.into_bytes()),
            extra: Vec::new(),
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<HttpContext>,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                let r = Response::text(
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n".into(),
                );
                write_response(&mut stream, r, false, false).await?;
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(IDLE_SECS),
                stream.read(&mut chunk),
            )
            .await
            {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let Some(head) = parse_head(&buf[..head_end]) else {
            let r = Response::text(400, "Bad Request", "malformed request\n".into());
            write_response(&mut stream, r, false, false).await?;
            return Ok(());
        };
        buf.drain(..head_end);
        let keep_alive = head.keep_alive && !head.has_body;
        let is_head = head.method == "HEAD";
        let response = if head.method != "GET" && !is_head {
            let mut r = Response::text(
                405,
                "Method Not Allowed",
                "only GET and HEAD are served\n".into(),
            );
            r.extra.push(("Allow".into(), "GET, HEAD".into()));
            r
        } else {
            route(&head, peer, local, &ctx)
        };
        let tracked = match &response.body {
            Body::File { file, start, len } if !is_head => {
                let detail = if *len == file.size {
                    String::new()
                } else {
                    format!(" range {start}+{len}")
                };
                Some((
                    ctx.status
                        .transfer_start("http", peer.ip(), &file.name, *len, &detail),
                    file.name.clone(),
                    *len,
                ))
            }
            _ => None,
        };
        let written = write_response(&mut stream, response, is_head, keep_alive).await;
        if let Some(((id, progress, key), name, len)) = tracked {
            match &written {
                Ok(()) => {
                    progress.set(len);
                    ctx.status
                        .transfer_end(&key, id, Ok(()), format!("done {name} ({len} bytes)"));
                }
                Err(e) => ctx.status.transfer_end(
                    &key,
                    id,
                    Err(e.to_string()),
                    format!("failed {name}: {e}"),
                ),
            }
        }
        written?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn route(head: &Head, peer: SocketAddr, local: SocketAddr, ctx: &HttpContext) -> Response {
    let path = head.path.as_str();
    if path == "/_vmedia/status" {
        let body = serde_json::to_vec_pretty(&ctx.status.snapshot()).unwrap_or_default();
        return Response {
            status: 200,
            reason: "OK",
            content_type: "application/json",
            body: Body::Bytes(body),
            extra: Vec::new(),
        };
    }
    if path == "/boot.ipxe" {
        return boot_script(head, peer, local, ctx);
    }
    if let Some(rest) = path.strip_prefix("/_vmedia/") {
        return template_route(rest, peer, local, ctx);
    }
    let file = match ctx.root.open(path) {
        Ok(f) => f,
        Err(e) => {
            let client = ctx.status.client_key(peer.ip());
            ctx.status
                .event("http", &client, format!("refused {path:?}: {e}"));
            return match e {
                FileError::NotFound(_) => Response::text(404, "Not Found", format!("{e}\n")),
                e if e.is_access_violation() => Response::text(403, "Forbidden", format!("{e}\n")),
                e => Response::text(500, "Internal Server Error", format!("{e}\n")),
            };
        }
    };
    let size = file.size;
    let range = head
        .range
        .as_deref()
        .map(|r| parse_range(r, size))
        .unwrap_or(Ok(None));
    match range {
        Err(()) => {
            let mut r = Response::text(
                416,
                "Range Not Satisfiable",
                "range not satisfiable\n".into(),
            );
            r.extra
                .push(("Content-Range".into(), format!("bytes */{size}")));
            r
        }
        Ok(None) => Response {
            status: 200,
            reason: "OK",
            content_type: "application/octet-stream",
            body: Body::File {
                file,
                start: 0,
                len: size,
            },
            extra: Vec::new(),
        },
        Ok(Some((start, end))) => Response {
            status: 206,
            reason: "Partial Content",
            content_type: "application/octet-stream",
            body: Body::File {
                file,
                start,
                len: end - start + 1,
            },
            extra: vec![(
                "Content-Range".into(),
                format!("bytes {start}-{end}/{size}"),
            )],
        },
    }
}

fn vars_for(
    mac: Option<&str>,
    arch: Option<u16>,
    uuid: Option<&str>,
    rule: Option<&Rule>,
    peer: SocketAddr,
    local: SocketAddr,
    port: u16,
) -> Vars {
    let server = local.ip().to_string();
    let http = if port == 80 {
        format!("http://{server}")
    } else {
        format!("http://{server}:{port}")
    };
    let mac = mac.unwrap_or_default().to_string();
    let hostname = rule.and_then(|r| r.hostname.clone()).unwrap_or_else(|| {
        if mac.is_empty() {
            "vmedia-client".to_string()
        } else {
            format!("vmedia-{}", mac.replace(':', ""))
        }
    });
    Vars {
        server,
        http,
        mac,
        hostname,
        arch: arch.map(|a| a.to_string()).unwrap_or_default(),
        uuid: uuid.unwrap_or_default().to_string(),
        ip: match peer.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string(),
        },
    }
}

fn read_template(root: &FileRoot, path: &str) -> Result<String, String> {
    let file = root.open(path).map_err(|e| e.to_string())?;
    if file.size > MAX_TEMPLATE {
        return Err(format!(
            "template {path} is larger than {MAX_TEMPLATE} bytes"
        ));
    }
    let mut raw = vec![0u8; file.size as usize];
    file.source
        .read_exact_at(&mut raw, 0)
        .map_err(|e| format!("{path}: {e}"))?;
    String::from_utf8(raw).map_err(|_| format!("template {path} is not UTF-8"))
}

fn boot_script(head: &Head, peer: SocketAddr, local: SocketAddr, ctx: &HttpContext) -> Response {
    let mac = query_param(&head.query, "mac").and_then(|m| normalize_mac(&m));
    let arch = query_param(&head.query, "arch").and_then(|a| a.parse::<u16>().ok());
    let uuid = query_param(&head.query, "uuid").filter(|u| !u.is_empty());
    let client = Client {
        mac: mac.clone(),
        arch,
        uuid: uuid.clone(),
    };
    let rule = ctx.rules.find(&client);
    let vars = vars_for(
        mac.as_deref(),
        arch,
        uuid.as_deref(),
        rule,
        peer,
        local,
        ctx.port,
    );
    if let Some(mac) = &mac {
        // The script URL carries the MAC we handed out over DHCP: the kernel and initrd this
        // machine fetches next from the same address belong to it.
        ctx.status.learn_address(mac, peer.ip());
    }
    let key = mac
        .clone()
        .unwrap_or_else(|| ctx.status.client_key(peer.ip()));
    let result = if let Some(template) = &ctx.ipxe_template {
        render(template, &vars, "--ipxe-script").map_err(|e| e.to_string())
    } else {
        let custom = match rule.and_then(|r| r.script.as_deref()) {
            Some(path) => match read_template(&ctx.root, path) {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.status
                        .event("http", &key, format!("boot.ipxe failed: {e}"));
                    return Response::text(500, "Internal Server Error", format!("{e}\n"));
                }
            },
            None => None,
        };
        ipxe_script(rule, &vars, arch, custom.as_deref()).map_err(|e| e.to_string())
    };
    match result {
        Ok(script) => {
            let what = match rule {
                Some(r) if r.mac.is_some() || r.arch.is_some() || r.uuid.is_some() => {
                    "machine rule"
                }
                Some(_) => "default rule",
                None => "no rule",
            };
            ctx.status.event(
                "http",
                &key,
                format!("boot.ipxe served ({what}, arch {})", vars.arch),
            );
            Response {
                status: 200,
                reason: "OK",
                content_type: "text/plain; charset=utf-8",
                body: Body::Bytes(script.into_bytes()),
                extra: Vec::new(),
            }
        }
        Err(e) => {
            ctx.status
                .event("http", &key, format!("boot.ipxe failed: {e}"));
            Response::text(500, "Internal Server Error", format!("{e}\n"))
        }
    }
}

/// `/_vmedia/preseed/<mac>`, `/_vmedia/kickstart/<mac>`, `/_vmedia/nocloud/<mac>/{user-data,meta-data,vendor-data}`.
fn template_route(rest: &str, peer: SocketAddr, local: SocketAddr, ctx: &HttpContext) -> Response {
    let parts: Vec<&str> = rest.split('/').collect();
    let (kind, mac_text, file) = match parts.as_slice() {
        [kind, mac] => (*kind, *mac, ""),
        [kind, mac, file] => (*kind, *mac, *file),
        _ => return Response::text(404, "Not Found", "unknown vmedia endpoint\n".into()),
    };
    let mac = normalize_mac(mac_text);
    let client = Client {
        mac: mac.clone(),
        arch: None,
        uuid: None,
    };
    let rule = ctx.rules.find(&client);
    let vars = vars_for(mac.as_deref(), None, None, rule, peer, local, ctx.port);
    let template = match (kind, file) {
        ("preseed", "") => rule.and_then(|r| r.preseed.clone()),
        ("kickstart", "") => rule.and_then(|r| r.kickstart.clone()),
        ("nocloud", "user-data") => rule.and_then(|r| r.user_data.clone()),
        ("nocloud", "meta-data") => {
            let body = format!(
                "instance-id: vmedia-{}\nlocal-hostname: {}\n",
                vars.mac.replace(':', ""),
                vars.hostname
            );
            return Response::text(200, "OK", body);
        }
        ("nocloud", "vendor-data") => return Response::text(200, "OK", String::new()),
        _ => return Response::text(404, "Not Found", "unknown vmedia endpoint\n".into()),
    };
    let Some(path) = template else {
        return Response::text(
            404,
            "Not Found",
            format!("no {kind} template in the rule for {mac_text}\n"),
        );
    };
    let key = mac
        .clone()
        .unwrap_or_else(|| ctx.status.client_key(peer.ip()));
    match read_template(&ctx.root, &path)
        .and_then(|t| render(&t, &vars, &path).map_err(|e| e.to_string()))
    {
        Ok(body) => {
            ctx.status
                .event("http", &key, format!("{kind} {path} served"));
            Response::text(200, "OK", body)
        }
        Err(e) => {
            ctx.status
                .event("http", &key, format!("{kind} {path} failed: {e}"));
            Response::text(500, "Internal Server Error", format!("{e}\n"))
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: Response,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let len = match &response.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File { len, .. } => *len,
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: vmedia\r\nContent-Type: {}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: {}\r\n",
        response.status,
        response.reason,
        response.content_type,
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in &response.extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    match response.body {
        Body::Bytes(b) => {
            let mut all = head.into_bytes();
            if !head_only {
                all.extend_from_slice(&b);
            }
            stream.write_all(&all).await
        }
        Body::File { file, start, len } => {
            stream.write_all(head.as_bytes()).await?;
            if head_only || len == 0 {
                return Ok(());
            }
            match &file.plain {
                Some(plain) => send_file(stream, plain, start, len).await,
                None => {
                    let mut chunk = vec![0u8; CHUNK.min(len as usize)];
                    let mut offset = start;
                    let end = start + len;
                    while offset < end {
                        let want = ((end - offset) as usize).min(chunk.len());
                        file.source.read_exact_at(&mut chunk[..want], offset)?;
                        stream.write_all(&chunk[..want]).await?;
                        offset += want as u64;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Zero-copy body: the kernel moves page-cache pages to the socket.
async fn send_file(
    stream: &mut TcpStream,
    file: &std::fs::File,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    let sock = stream.as_raw_fd();
    let fd = file.as_raw_fd();
    let mut offset = start as libc::off_t;
    let end = (start + len) as libc::off_t;
    while offset < end {
        stream.writable().await?;
        let want = ((end - offset) as usize).min(1 << 30);
        let result = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call; offset is ours.
            let n = unsafe { libc::sendfile(sock, fd, &mut offset, want) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match result {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(()));
        assert_eq!(parse_range("bytes=-0", 1000), Err(()));
    }

    #[test]
    fn head_parsing_reads_keep_alive_and_range() {
        let h =
            parse_head(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n").unwrap();
        assert_eq!(h.path, "/a b");
        assert_eq!(h.query, "x=1");
        assert!(h.keep_alive);
        assert_eq!(h.range.as_deref(), Some("bytes=0-1"));
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn malformed_request_line_is_rejected() {
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_none());
        assert!(parse_head(b"GET /%zz HTTP/1.1\r\n\r\n").is_none());
    }
}
