//! A lean HTTP/1.1 server for boot files: GET and HEAD, single byte ranges (206, 416),
//! keep-alive and pipelining, sendfile for plain files, positional reads for files inside
//! ISOs; per-machine iPXE scripts (`/boot.ipxe?mac=..&arch=..`), rendered unattended-install
//! templates and the status document (`/_vmedia/status`).
//!
//! Kept hand-written (not hyper) as the measured zero-copy path for boot files: see
//! docs/netboot.md. Request heads are parsed by `wire::http`. Nothing blocking runs on the
//! runtime's workers: routing (file opens, ISO parsing, template reads) and every file read,
//! sendfile included, run on the blocking pool. Each request runs in an `http` span (peer,
//! MAC when known, method, path).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::files::{FileRoot, ServedFile};
use crate::net;
use crate::rules::{ipxe_script, normalize_mac, render, Client, Rule, Rules, Vars};
use crate::status::Status;
use crate::wire::http::{find_head_end, parse_range, query_param, HeadError, RequestHead};

pub use crate::wire::http::MAX_HEAD;

/// Largest template or script file we render in memory.
pub const MAX_TEMPLATE: u64 = 1 << 20;
/// Chunk size for files that cannot use sendfile (inside ISOs).
const CHUNK: usize = 256 * 1024;
/// A connection idle this long between requests is closed.
const IDLE_SECS: u64 = 60;
/// Most bytes one sendfile call is asked for; the socket's free space limits it anyway.
const MAX_SENDFILE: usize = 1 << 30;
/// After a failed accept (out of descriptors under load), the pause before the next.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

pub struct HttpContext {
    pub root: Arc<FileRoot>,
    pub status: Arc<Status>,
    pub rules: Rules,
    /// `--ipxe-script FILE`: the template served at /boot.ipxe for every machine.
    pub ipxe_template: Option<String>,
    pub port: u16,
}

/// Accepts connections until the task is dropped; the connections live in a set owned here,
/// so dropping (aborting) this loop closes them all.
pub async fn run(listener: TcpListener, ctx: Arc<HttpContext>) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            // Running out of descriptors under load must not end the server.
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed; retrying");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "TCP_NODELAY not set");
        }
        let ctx = ctx.clone();
        connections.spawn(async move {
            if let Err(e) = connection(stream, peer, ctx).await {
                match e.kind() {
                    // A client that goes away mid-response is ordinary (a probe, a reboot).
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended")
                    }
                    _ => tracing::warn!(peer = %peer, error = %e, "HTTP connection failed"),
                }
            }
        });
    }
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
        let head = match RequestHead::parse(&buf[..head_end]) {
            Ok(head) => head,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "malformed HTTP request");
                let r = match e {
                    HeadError::TooLarge => Response::text(
                        431,
                        "Request Header Fields Too Large",
                        "request head too large\n".into(),
                    ),
                    _ => Response::text(400, "Bad Request", "malformed request\n".into()),
                };
                write_response(&mut stream, r, false, false).await?;
                return Ok(());
            }
        };
        buf.drain(..head_end);
        let keep_alive = head.keep_alive && !head.has_body;
        let span = tracing::info_span!(
            "http",
            peer = %peer,
            mac = tracing::field::Empty,
            method = %head.method,
            path = %head.path,
            agent = tracing::field::Empty,
        );
        if let Some(agent) = &head.user_agent {
            span.record("agent", agent.as_str());
        }
        if let Some(mac) = ctx.status.mac_of(peer.ip()) {
            span.record("mac", mac.as_str());
        }
        request(&mut stream, head, peer, local, &ctx, keep_alive)
            .instrument(span)
            .await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// One request: routed on the blocking pool, answered, and its transfer tracked.
async fn request(
    stream: &mut TcpStream,
    head: RequestHead,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &Arc<HttpContext>,
    keep_alive: bool,
) -> std::io::Result<()> {
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
        let ctx = ctx.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| route(&head, peer, local, &ctx)))
            .await
            .map_err(std::io::Error::other)?
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
    let written = write_response(stream, response, is_head, keep_alive).await;
    if let Some(((id, progress, key), name, len)) = tracked {
        match &written {
            Ok(()) => {
                progress.set(len);
                ctx.status
                    .transfer_end(&key, id, Ok(()), format!("done {name} ({len} bytes)"));
            }
            Err(e) => {
                ctx.status
                    .transfer_end(&key, id, Err(e.to_string()), format!("failed {name}: {e}"))
            }
        }
    }
    written
}

fn route(head: &RequestHead, peer: SocketAddr, local: SocketAddr, ctx: &HttpContext) -> Response {
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
                e if e.is_not_found() => Response::text(404, "Not Found", format!("{e}\n")),
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
        Err(_) => {
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
    // An IPv6 address in a URL goes in brackets (RFC 3986).
    let host = match local.ip() {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let http = if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
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

fn boot_script(
    head: &RequestHead,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &HttpContext,
) -> Response {
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
        tracing::Span::current().record("mac", mac.as_str());
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
                None => send_chunks(stream, &file, start, len).await,
            }
        }
    }
}

/// A body read in chunks on the blocking pool (files inside ISOs cannot use sendfile).
async fn send_chunks(
    stream: &mut TcpStream,
    file: &ServedFile,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut offset = start;
    let end = start.saturating_add(len);
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        let source = file.source.clone();
        let (filled, read) = tokio::task::spawn_blocking(move || {
            let read = source.read_exact_at(&mut chunk[..want], offset);
            (chunk, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        chunk = filled;
        read?;
        stream.write_all(&chunk[..want]).await?;
        offset += want as u64;
    }
    Ok(())
}

/// Zero-copy body: the kernel moves page-cache pages to the socket. sendfile blocks while it
/// reads pages from disk, so each call runs on the blocking pool, on a duplicate of the socket
/// descriptor (it stays valid even if this connection's task is dropped mid-call). Waiting for
/// socket space stays on the runtime.
async fn send_file(
    stream: &mut TcpStream,
    file: &Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    let socket: Arc<OwnedFd> = Arc::new(stream.as_fd().try_clone_to_owned()?);
    let mut offset = start;
    let end = start.saturating_add(len);
    while offset < end {
        stream.writable().await?;
        // Tokio's readiness flag is only cleared by a WouldBlock seen inside try_io; asking the
        // socket itself there keeps the flag true to the socket's state.
        match stream.try_io(Interest::WRITABLE, || {
            if net::writable_now(stream.as_fd())? {
                Ok(())
            } else {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(MAX_SENDFILE);
        let (socket_fd, file_fd) = (socket.clone(), file.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let mut position = offset;
            rustix::fs::sendfile(&*socket_fd, &*file_fd, Some(&mut position), want)
        })
        .await
        .map_err(std::io::Error::other)?;
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ))
            }
            Ok(n) => offset += n as u64,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
