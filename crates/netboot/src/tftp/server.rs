//! The TFTP server: one listening socket reporting each request's local address (IP_PKTINFO),
//! and per transfer a task with its own ephemeral socket bound to that address (RFC 1350's
//! transfer ID), connected to the client. DATA windows are read with one positional read and
//! sent with one sendmmsg; buffers are allocated once per transfer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::files::{FileError, FileRoot, ServedFile};
use crate::net;
use crate::status::Status;
use crate::wire::tftp::{data_header, error_code, Request, TftpRepr, MAX_PACKET};

use super::session::{negotiate, Action, ReadSession};

/// netascii needs the whole converted file in memory; larger files must use octet mode.
pub const MAX_NETASCII_FILE: u64 = 16 << 20;
/// Socket buffer for transfer sockets: a full window of the largest blocks.
const SOCKET_BUFFER: i32 = 4 << 20;
/// Bytes sent in one burst before pausing: a client's default 208 KiB receive buffer holds
/// only about a dozen 8 KiB datagrams (loopback charges 16 KiB each), so a 16 x 8 KiB window
/// sent at once loses its tail and costs a retransmission timeout every window.
const BURST_BYTES: usize = 64 * 1024;
/// Pause between bursts of one window, letting the client drain its socket.
const BURST_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

pub struct TftpServer {
    pub socket: UdpSocket,
    pub root: Arc<FileRoot>,
    pub status: Arc<Status>,
    /// Local address used when the kernel does not report one.
    pub fallback_local: Ipv4Addr,
}

impl TftpServer {
    pub async fn run(self) -> std::io::Result<()> {
        let fd = self.socket.as_raw_fd();
        net::enable_pktinfo(fd)?;
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let (len, from, local) = self
                .socket
                .async_io(Interest::READABLE, || net::recv_with_local(fd, &mut buf))
                .await?;
            let SocketAddr::V4(from) = from else { continue };
            let local = local.unwrap_or(self.fallback_local);
            match TftpRepr::parse(&buf[..len]) {
                Ok(TftpRepr::ReadRequest(req)) => {
                    let root = self.root.clone();
                    let status = self.status.clone();
                    tokio::spawn(async move {
                        transfer(req, from, local, root, status).await;
                    });
                }
                Ok(TftpRepr::WriteRequest(req)) => {
                    let name = String::from_utf8_lossy(&req.filename).into_owned();
                    self.status.event(
                        "tftp",
                        &self.status.client_key(IpAddr::V4(*from.ip())),
                        format!("refused write of {name:?}: read-only server"),
                    );
                    self.reply_error(
                        from,
                        error_code::ACCESS_VIOLATION,
                        "vmedia serves files read-only",
                    )
                    .await;
                }
                Ok(_) => {
                    // DATA/ACK/ERROR/OACK on the request port belong to no transfer.
                    self.reply_error(from, error_code::UNKNOWN_TID, "no transfer on this port")
                        .await;
                }
                Err(e) => {
                    self.status.event(
                        "tftp",
                        &self.status.client_key(IpAddr::V4(*from.ip())),
                        format!("malformed packet ignored with an error reply: {e}"),
                    );
                    self.reply_error(from, error_code::ILLEGAL_OPERATION, &e.to_string())
                        .await;
                }
            }
        }
    }

    async fn reply_error(&self, to: SocketAddrV4, code: u16, message: &str) {
        let packet = TftpRepr::Error {
            code,
            message: message.to_string(),
        }
        .to_vec();
        let _ = self.socket.send_to(&packet, to).await;
    }
}

fn netascii(file: &ServedFile) -> Result<ServedFile, String> {
    if file.size > MAX_NETASCII_FILE {
        return Err(format!(
            "{} is larger than {MAX_NETASCII_FILE} bytes; fetch it in octet (binary) mode",
            file.name
        ));
    }
    let mut raw = vec![0u8; file.size as usize];
    file.source
        .read_exact_at(&mut raw, 0)
        .map_err(|e| format!("{}: {e}", file.name))?;
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    for b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    let size = out.len() as u64;
    Ok(ServedFile {
        source: Arc::new(out),
        size,
        plain: None,
        name: file.name.clone(),
    })
}

async fn send_error(socket: &UdpSocket, code: u16, message: &str) {
    let packet = TftpRepr::Error {
        code,
        message: message.to_string(),
    }
    .to_vec();
    let _ = socket.send(&packet).await;
}

async fn transfer(
    req: Request,
    client: SocketAddrV4,
    local: Ipv4Addr,
    root: Arc<FileRoot>,
    status: Arc<Status>,
) {
    let key_ip = IpAddr::V4(*client.ip());
    let name = String::from_utf8_lossy(&req.filename).into_owned();
    let socket = match net::udp_socket(SocketAddrV4::new(local, 0), None, false) {
        Ok(s) => s,
        Err(e) => {
            status.event(
                "tftp",
                &status.client_key(key_ip),
                format!("cannot open a transfer socket for {name:?}: {e}"),
            );
            return;
        }
    };
    net::set_buffers(socket.as_raw_fd(), SOCKET_BUFFER);
    if socket.connect(client).await.is_err() {
        return;
    }
    let opened = root.open(&name).map_err(|e| {
        let code = match &e {
            FileError::NotFound(_) => error_code::FILE_NOT_FOUND,
            e if e.is_access_violation() => error_code::ACCESS_VIOLATION,
            _ => error_code::NOT_DEFINED,
        };
        (code, e.to_string())
    });
    let opened = opened.and_then(|file| match req.mode.as_str() {
        "octet" => Ok(file),
        "netascii" => netascii(&file).map_err(|e| (error_code::NOT_DEFINED, e)),
        other => Err((
            error_code::ILLEGAL_OPERATION,
            format!("transfer mode {other:?} is not supported (use octet)"),
        )),
    });
    let file = match opened {
        Ok(f) => f,
        Err((code, message)) => {
            status.event(
                "tftp",
                &status.client_key(key_ip),
                format!("refused {name:?}: {message}"),
            );
            send_error(&socket, code, &message).await;
            return;
        }
    };
    let negotiated = negotiate(&req.options, file.size, crate::wire::tftp::MAX_BLKSIZE);
    let detail = if negotiated.oack.is_empty() {
        String::new()
    } else {
        format!(
            " options {}",
            negotiated
                .oack
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let (id, progress, key) = status.transfer_start("tftp", key_ip, &file.name, file.size, &detail);
    let started = std::time::Instant::now();
    let outcome = run_session(&socket, &file, &negotiated, &progress).await;
    let secs = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Finish::SizeProbe) => {
            status.transfer_end(
                &key,
                id,
                Ok(()),
                format!(
                    "size probe for {} answered (tsize {}; the client closed after the OACK)",
                    file.name, file.size
                ),
            );
        }
        Ok(Finish::Complete) => {
            let rate = if secs > 0.0 {
                file.size as f64 / secs / 1_048_576.0
            } else {
                0.0
            };
            status.transfer_end(
                &key,
                id,
                Ok(()),
                format!(
                    "done {} ({} bytes in {secs:.2} s, {rate:.1} MiB/s)",
                    file.name, file.size
                ),
            );
        }
        Err(reason) => {
            status.transfer_end(
                &key,
                id,
                Err(reason.clone()),
                format!(
                    "failed {} after {} bytes: {reason}",
                    file.name,
                    progress.bytes.load(std::sync::atomic::Ordering::Relaxed)
                ),
            );
        }
    }
}

/// How a transfer ended well.
enum Finish {
    Complete,
    /// The client only wanted the OACK (its tsize) and closed with error 8.
    SizeProbe,
}

async fn run_session(
    socket: &UdpSocket,
    file: &ServedFile,
    negotiated: &super::session::Negotiated,
    progress: &crate::status::TransferProgress,
) -> Result<Finish, String> {
    let mut session = ReadSession::new(negotiated, file.size);
    let blksize = session.blksize();
    let window = usize::from(negotiated.windowsize.max(1));
    let mut data = vec![0u8; blksize * window];
    let mut ack_buf = vec![0u8; 1024];
    let oack = TftpRepr::OptionAck {
        options: negotiated.oack.clone(),
    }
    .to_vec();
    let mut action = session.start();
    let mut deadline = tokio::time::Instant::now();
    loop {
        if action != Action::Wait {
            deadline = tokio::time::Instant::now() + session.timeout();
        }
        match action {
            Action::Done => return Ok(Finish::Complete),
            Action::GiveUp => {
                return Err(format!(
                    "client stopped acknowledging (stalled at {} bytes)",
                    session.bytes_acked()
                ))
            }
            Action::Wait => {}
            Action::SendOack => {
                socket
                    .send(&oack)
                    .await
                    .map_err(|e| format!("send OACK: {e}"))?;
            }
            Action::SendBlocks { first, last } => {
                let (start, _) = session.block_range(first);
                let (last_start, last_len) = session.block_range(last);
                let total = (last_start + last_len as u64 - start) as usize;
                let mut filled = 0;
                while filled < total {
                    let n = file
                        .source
                        .read_at(&mut data[filled..total], start + filled as u64)
                        .map_err(|e| {
                            format!(
                                "read {} at offset {:#x}: {e}",
                                file.name,
                                start + filled as u64
                            )
                        })?;
                    if n == 0 {
                        return Err(format!("{} shrank while being sent", file.name));
                    }
                    filled += n;
                }
                let mut packets: [([u8; 4], &[u8]); net::MAX_BATCH] =
                    [([0u8; 4], &[]); net::MAX_BATCH];
                let count = (last - first + 1) as usize;
                for (i, slot) in packets.iter_mut().take(count).enumerate() {
                    let block = first + i as u64;
                    let (off, len) = session.block_range(block);
                    let rel = (off - start) as usize;
                    *slot = (data_header(block as u16), &data[rel..rel + len]);
                }
                let burst = (BURST_BYTES / blksize).max(1);
                let mut sent = 0;
                while sent < count {
                    if sent > 0 && sent % burst == 0 {
                        tokio::time::sleep(BURST_PAUSE).await;
                    }
                    let burst_end = ((sent / burst + 1) * burst).min(count);
                    socket.writable().await.map_err(|e| e.to_string())?;
                    let fd = socket.as_raw_fd();
                    match socket.try_io(Interest::WRITABLE, || {
                        net::send_batch(fd, &packets[sent..burst_end])
                    }) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(format!("client unreachable: {e}")),
                    }
                }
            }
        }
        // Stale ACKs do not extend the deadline: a client repeating an old ACK still gets a
        // retransmission when the window's time is up.
        action = match tokio::time::timeout_at(deadline, socket.recv(&mut ack_buf)).await {
            Err(_) => session.on_timeout(),
            Ok(Err(e)) => return Err(format!("client unreachable: {e}")),
            Ok(Ok(n)) => match TftpRepr::parse(&ack_buf[..n]) {
                Ok(TftpRepr::Ack { block }) => {
                    let a = session.on_ack(block);
                    progress.set(session.bytes_acked());
                    a
                }
                Ok(TftpRepr::Error { code, message }) => {
                    if code == error_code::OPTION_REFUSED
                        && session.bytes_acked() == 0
                        && !negotiated.oack.is_empty()
                    {
                        // UEFI firmware asks for tsize, reads the OACK and hangs up to size its
                        // buffer before the real transfer.
                        return Ok(Finish::SizeProbe);
                    }
                    return Err(format!("client aborted with error {code}: {message}"));
                }
                _ => Action::Wait,
            },
        };
    }
}
