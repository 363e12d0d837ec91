//! The TFTP server: one listening socket reporting each request's local address (IP_PKTINFO,
//! or IPV6_PKTINFO on an IPv6 socket; an IPv4 and an IPv6 listener can share one set of
//! transfers and its limit), and per transfer a dedicated thread with its own blocking socket bound to that address
//! (RFC 1350's transfer ID) and connected to the client. A window is sent with one system call
//! (UDP segmentation offload, else sendmmsg) from a buffer filled by large positional reads; the
//! ACK is taken straight from the socket when it is already there, else after sleeping in poll.
//! Nothing is allocated, logged or locked per packet. Each transfer runs in a `tftp` span
//! (peer, MAC when known, file, negotiated options); the server's stop flag is checked between
//! windows and while waiting for an ACK.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::files::{FileRoot, ServedFile};
use crate::net;
use crate::status::{Status, TransferProgress};
use crate::wire::tftp::{data_header, error_code, Request, TftpRepr, MAX_BLKSIZE, MAX_PACKET};

use super::session::{negotiate, Action, Negotiated, ReadSession};

/// netascii needs the whole converted file in memory; larger files must use octet mode.
pub const MAX_NETASCII_FILE: u64 = 16 << 20;
/// Send buffer limit of a transfer socket (a limit, not an allocation): many windows of at
/// most 128 KiB, so a window's send never waits for socket space.
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes sent in one burst before pausing, once a transfer is paced. A client's default
/// 208 KiB receive buffer holds only about a dozen separately sent 8 KiB datagrams (loopback
/// charges 16 KiB each), so a 16 x 8 KiB window sent at once can lose its tail and cost a
/// retransmission timeout every window.
const BURST_BYTES: usize = 64 * 1024;
/// Pause between bursts of a paced window: time for the client to drain 64 KiB.
const BURST_PAUSE: Duration = Duration::from_micros(200);
/// File data read ahead per positional read: a few windows at once, so a 100 MiB transfer costs
/// hundreds of reads rather than one per window, while 1000 transfers stay within 256 MiB.
const READ_AHEAD: usize = 256 * 1024;
/// Transfers running at once; each holds a thread and its buffers, and a flood of requests must
/// not exhaust memory. Far above a rack booting at once.
pub const MAX_ACTIVE_TRANSFERS: usize = 2048;
/// Stack of a transfer thread: the session needs little; the buffers live on the heap.
const TRANSFER_STACK: usize = 256 * 1024;
/// IPv4 and UDP headers plus the TFTP DATA header: what a block adds on the wire.
const DATA_OVERHEAD: usize = 20 + 8 + 4;
/// The same over IPv6, whose fixed header is 40 bytes.
const DATA_OVERHEAD_V6: usize = 40 + 8 + 4;
/// How long a transfer keeps checking for the client's ACK (yielding the CPU between checks)
/// before it sleeps in poll. On an idle virtual machine a sleeping thread's CPU halts, and
/// waking it costs tens of microseconds per window: measured on this kind of 2-vCPU guest, a
/// 100 MiB transfer (4 464 windows) took 0.44 s sleeping at once and 0.28 s with a 60 us check.
const ACK_SPIN: Duration = Duration::from_micros(60);
/// Transfers beyond this many wait for ACKs in poll only: with more transfers than cores the
/// cores are busy anyway, and checking would take CPU time from the other transfers.
const SPIN_MAX_TRANSFERS: usize = 2;

/// While waiting for an ACK, a transfer looks at the stop flag at least this often, so a
/// shutdown does not wait out a client's full timeout.
pub const STOP_CHECK: Duration = Duration::from_millis(50);

pub struct TftpServer {
    socket: UdpSocket,
    /// Local address used when the kernel does not report one.
    fallback_local: IpAddr,
    shared: Arc<Shared>,
}

/// The running transfers of a server: how many there are, and the flag that tells their
/// threads to stop.
#[derive(Debug, Default)]
pub struct TransferControl {
    active: AtomicUsize,
    stopping: AtomicBool,
    /// Set by `disable_offload`: new transfers send with plain sendmmsg from the start.
    no_offload: AtomicBool,
    /// Windows sent with plain sendmmsg (offload off or refused by the kernel).
    batched_windows: AtomicU64,
}

impl TransferControl {
    /// Tells every running transfer to end (with an error packet to its client) at its next
    /// check, and the request loop's new transfers to refuse.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Makes new transfers skip UDP segmentation offload and send each window with plain
    /// sendmmsg, the path taken where the kernel or route refuses offload (a configuration
    /// for such hosts, and how tests reach that path on hosts that offload).
    pub fn disable_offload(&self) {
        self.no_offload.store(true, Ordering::Relaxed);
    }

    /// Windows sent with plain sendmmsg so far.
    pub fn batched_windows(&self) -> u64 {
        self.batched_windows.load(Ordering::Relaxed)
    }

    /// Transfers running now.
    pub fn running(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits (without blocking the runtime) until no transfer runs or `grace` passes; true
    /// when none runs.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let end = tokio::time::Instant::now() + grace;
        while self.running() > 0 {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// What every transfer thread shares.
struct Shared {
    root: Arc<FileRoot>,
    status: Arc<Status>,
    control: Arc<TransferControl>,
}

/// Frees a transfer's place in the running count however its thread ends.
struct ActiveSlot<'a>(&'a AtomicUsize);

impl Drop for ActiveSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TftpServer {
    /// A server on `socket` (IPv4 or IPv6); `fallback_local` (of the socket's family) is the
    /// transfer sockets' address when the kernel does not report where a request arrived.
    pub fn new(
        socket: UdpSocket,
        root: Arc<FileRoot>,
        status: Arc<Status>,
        fallback_local: impl Into<IpAddr>,
    ) -> TftpServer {
        TftpServer {
            socket,
            fallback_local: fallback_local.into(),
            shared: Arc::new(Shared {
                root,
                status,
                control: Arc::new(TransferControl::default()),
            }),
        }
    }

    /// A second listener (the other address family) serving the same files into the same
    /// status board, whose transfers count against this server's limit and stop with it.
    pub fn beside(&self, socket: UdpSocket, fallback_local: impl Into<IpAddr>) -> TftpServer {
        TftpServer {
            socket,
            fallback_local: fallback_local.into(),
            shared: self.shared.clone(),
        }
    }

    /// The running transfers, for shutdown.
    pub fn control(&self) -> Arc<TransferControl> {
        self.shared.control.clone()
    }

    pub async fn run(self) -> std::io::Result<()> {
        let fd = self.socket.as_fd();
        net::enable_pktinfo(fd)?;
        let shared = self.shared.clone();
        let active = &shared.control.active;
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let (len, from, local) = self
                .socket
                .async_io(Interest::READABLE, || net::recv_with_local(fd, &mut buf))
                .await?;
            let local = local.unwrap_or(SocketAddr::new(self.fallback_local, 0));
            match TftpRepr::parse(&buf[..len]) {
                Ok(TftpRepr::ReadRequest(req)) => {
                    let running = active.fetch_add(1, Ordering::AcqRel);
                    if running >= MAX_ACTIVE_TRANSFERS || shared.control.stopping() {
                        active.fetch_sub(1, Ordering::AcqRel);
                        self.refuse_busy(from, running).await;
                        continue;
                    }
                    let worker = shared.clone();
                    let spawned = std::thread::Builder::new()
                        .name("vmedia-tftp".into())
                        .stack_size(TRANSFER_STACK)
                        .spawn(move || {
                            let _slot = ActiveSlot(&worker.control.active);
                            transfer(req, from, local, &worker);
                        });
                    if let Err(e) = spawned {
                        active.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(peer = %from, error = %e, "cannot start a TFTP transfer thread");
                        self.refuse_busy(from, running).await;
                    }
                }
                Ok(TftpRepr::WriteRequest(req)) => {
                    let name = String::from_utf8_lossy(&req.filename).into_owned();
                    shared.status.event(
                        "tftp",
                        &shared.status.client_key(from.ip()),
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
                    shared.status.event(
                        "tftp",
                        &shared.status.client_key(from.ip()),
                        format!("malformed packet ignored with an error reply: {e}"),
                    );
                    self.reply_error(from, error_code::ILLEGAL_OPERATION, &e.to_string())
                        .await;
                }
            }
        }
    }

    async fn refuse_busy(&self, to: SocketAddr, running: usize) {
        let status = &self.shared.status;
        status.event(
            "tftp",
            &status.client_key(to.ip()),
            format!(
                "refused a request: {running} transfers are running (limit {MAX_ACTIVE_TRANSFERS})"
            ),
        );
        self.reply_error(
            to,
            error_code::NOT_DEFINED,
            "server busy: too many transfers running, retry later",
        )
        .await;
    }

    async fn reply_error(&self, to: SocketAddr, code: u16, message: &str) {
        let packet = TftpRepr::Error {
            code,
            message: message.to_string(),
        }
        .to_vec();
        if let Err(e) = self.socket.send_to(&packet, to).await {
            tracing::warn!(peer = %to, code, error = %e, "TFTP error reply not sent");
        }
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

fn send_error(socket: &std::net::UdpSocket, code: u16, message: &str) {
    let packet = TftpRepr::Error {
        code,
        message: message.to_string(),
    }
    .to_vec();
    if let Err(e) = socket.send(&packet) {
        tracing::warn!(code, error = %e, "TFTP error packet not sent");
    }
}

/// Largest block that crosses the path to the client without IP fragmentation: the route's
/// MTU (IP_MTU, or IPV6_MTU, on the connected socket) less the headers, as tftp-hpa and dnsmasq
/// cap it. Loopback's 64 KiB MTU leaves the RFC 2348 maximum.
fn blksize_limit(socket: &std::net::UdpSocket, client: SocketAddr) -> usize {
    let (mtu, overhead) = match client {
        SocketAddr::V4(_) => (net::path_mtu(socket), DATA_OVERHEAD),
        SocketAddr::V6(_) => (net::path_mtu6(socket), DATA_OVERHEAD_V6),
    };
    match mtu {
        Ok(mtu) => mtu.saturating_sub(overhead).min(MAX_BLKSIZE),
        Err(_) => MAX_BLKSIZE,
    }
}

fn transfer(req: Request, client: SocketAddr, local: SocketAddr, shared: &Shared) {
    let status = &shared.status;
    let key_ip = client.ip();
    let name = String::from_utf8_lossy(&req.filename).into_owned();
    let span = tracing::info_span!(
        "tftp",
        peer = %client,
        mac = tracing::field::Empty,
        file = %name,
        mode = %req.mode,
        options = tracing::field::Empty,
    );
    if let Some(mac) = status.mac_of(key_ip) {
        span.record("mac", mac.as_str());
    }
    let _entered = span.enter();
    let socket = match net::bind_udp(local, None, false, false) {
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
    if let Err(e) = net::set_buffers(&socket, SOCKET_BUFFER) {
        tracing::debug!(error = %e, "transfer socket buffers left at the system default");
    }
    if let Err(e) = socket.connect(client) {
        status.event(
            "tftp",
            &status.client_key(key_ip),
            format!("cannot reach {client} for {name:?}: {e}"),
        );
        return;
    }
    let opened = shared.root.open(&name).map_err(|e| {
        let code = match &e {
            e if e.is_not_found() => error_code::FILE_NOT_FOUND,
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
            send_error(&socket, code, &message);
            return;
        }
    };
    let negotiated = negotiate(&req.options, file.size, blksize_limit(&socket, client));
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
    if !detail.is_empty() {
        span.record("options", detail.trim_start_matches(" options "));
    }
    let (id, progress, key) = status.transfer_start("tftp", key_ip, &file.name, file.size, &detail);
    let started = Instant::now();
    let outcome = run_session(&socket, &file, &negotiated, &progress, &shared.control);
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
        Ok(Finish::Complete { resent_windows }) => {
            let resent = match resent_windows {
                0 => String::new(),
                1 => ", 1 window sent again".to_string(),
                n => format!(", {n} windows sent again"),
            };
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
                    "done {} ({} bytes in {secs:.2} s, {rate:.1} MiB/s{resent})",
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
                    progress.bytes.load(Ordering::Relaxed)
                ),
            );
        }
    }
}

/// How a transfer ended well.
enum Finish {
    /// Every block acknowledged, after this many windows were sent again.
    Complete { resent_windows: u64 },
    /// The client only wanted the OACK (its tsize) and closed with error 8.
    SizeProbe,
}

/// File bytes read ahead of the window being sent.
struct ReadAhead {
    buf: Vec<u8>,
    /// File offset of `buf[0]` and how many bytes are valid.
    start: u64,
    len: usize,
}

impl ReadAhead {
    /// A buffer for at least one window, and up to `READ_AHEAD` bytes of a file of
    /// `file_size` bytes (a 40 KiB boot loader does not need 256 KiB).
    fn new(window_bytes: usize, file_size: u64) -> ReadAhead {
        let wanted = file_size.min(READ_AHEAD as u64) as usize;
        ReadAhead {
            buf: vec![0u8; window_bytes.max(wanted)],
            start: 0,
            len: 0,
        }
    }

    /// Makes file bytes `start..start + len` resident and returns them.
    fn range(&mut self, file: &ServedFile, start: u64, len: usize) -> Result<&[u8], String> {
        let resident_end = self.start + self.len as u64;
        if start < self.start || start + len as u64 > resident_end {
            let want = (file.size.saturating_sub(start)).min(self.buf.len() as u64) as usize;
            let mut filled = 0;
            while filled < want {
                let n = file
                    .source
                    .read_at(&mut self.buf[filled..want], start + filled as u64)
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
            self.start = start;
            self.len = filled;
            if len > filled {
                return Err(format!("{} shrank while being sent", file.name));
            }
        }
        let rel = (start - self.start) as usize;
        Ok(&self.buf[rel..rel + len])
    }
}

/// Sends DATA blocks `first..=last` of the session, one window; `paced` splits it into bursts
/// for a receiver that could not take a whole window at once.
fn send_window(
    socket: &std::net::UdpSocket,
    session: &ReadSession,
    data: &[u8],
    first: u64,
    last: u64,
    paced: bool,
    offload: &mut bool,
) -> Result<(), String> {
    let blksize = session.blksize();
    let (start, _) = session.block_range(first);
    let mut packets: [([u8; 4], &[u8]); net::MAX_BATCH] = [([0u8; 4], &[]); net::MAX_BATCH];
    let count = (last - first + 1) as usize;
    for (i, slot) in packets.iter_mut().take(count).enumerate() {
        let block = first + i as u64;
        let (off, len) = session.block_range(block);
        let rel = (off - start) as usize;
        *slot = (data_header(block as u16), &data[rel..rel + len]);
    }
    let fd = socket.as_fd();
    let mut sent = 0;
    while sent < count {
        // Segmented sends reach the client's queue as compactly as they left, so whole
        // windows fit; plain batches, or a client that already lost blocks, get bursts with
        // pauses. (Offload can turn off at the first send, so this is decided per burst.)
        let burst = if paced || !*offload {
            (BURST_BYTES / blksize).max(1)
        } else {
            count
        };
        if sent > 0 && sent % burst == 0 {
            std::thread::sleep(BURST_PAUSE);
        }
        let burst_end = ((sent / burst + 1) * burst).min(count);
        let batch = &packets[sent..burst_end];
        let result = if *offload {
            match net::send_segmented(fd, batch, 4 + blksize) {
                // The kernel or the route cannot segment (no checksum offload, a block larger
                // than the MTU that must be fragmented): plain batched sends from now on.
                Err(e)
                    if matches!(
                        e.raw_os_error().map(Errno::from_raw_os_error),
                        Some(Errno::INVAL | Errno::IO | Errno::NOPROTOOPT | Errno::OPNOTSUPP)
                    ) =>
                {
                    *offload = false;
                    continue;
                }
                other => other,
            }
        } else {
            net::send_batch(fd, batch)
        };
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("client unreachable: {e}")),
        }
    }
    Ok(())
}

/// The next packet from the client, or `None` once `deadline` passes. What is already queued
/// is taken without a poll; with `spin`, the queue is checked for up to `ACK_SPIN`, yielding
/// the CPU between checks (a pure spin measured slower on shared cores); then the thread sleeps
/// in poll.
fn next_packet(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    deadline: Instant,
    spin: bool,
    control: &TransferControl,
) -> Result<Option<usize>, String> {
    let unreachable = |e: std::io::Error| format!("client unreachable: {e}");
    if let Some(n) = net::recv_now(fd, buf).map_err(unreachable)? {
        return Ok(Some(n));
    }
    let spin_until = Instant::now() + if spin { ACK_SPIN } else { Duration::ZERO };
    while Instant::now() < spin_until {
        std::thread::yield_now();
        if let Some(n) = net::recv_now(fd, buf).map_err(unreachable)? {
            return Ok(Some(n));
        }
    }
    loop {
        let now = Instant::now();
        if now >= deadline || control.stopping() {
            return Ok(None);
        }
        if net::wait_readable(fd, (deadline - now).min(STOP_CHECK)).map_err(unreachable)? {
            if let Some(n) = net::recv_now(fd, buf).map_err(unreachable)? {
                return Ok(Some(n));
            }
        }
    }
}

fn run_session(
    socket: &std::net::UdpSocket,
    file: &ServedFile,
    negotiated: &Negotiated,
    progress: &TransferProgress,
    control: &TransferControl,
) -> Result<Finish, String> {
    let mut session = ReadSession::new(negotiated, file.size);
    let blksize = session.blksize();
    let window = usize::from(negotiated.windowsize.max(1));
    let mut read_ahead = ReadAhead::new(blksize * window, file.size);
    let mut ack_buf = [0u8; 1024];
    let oack = TftpRepr::OptionAck {
        options: negotiated.oack.clone(),
    }
    .to_vec();
    let fd = socket.as_fd();
    let mut offload = !control.no_offload.load(Ordering::Relaxed);
    // Set at the first retransmission (a partial ACK or a timeout): the client drops what a
    // whole window at once brings, so later windows go out in bursts.
    let mut paced = false;
    let mut highest_sent = 0;
    let mut action = session.start();
    let mut deadline = Instant::now();
    loop {
        if control.stopping() {
            send_error(socket, error_code::NOT_DEFINED, "server shutting down");
            return Err("the server is shutting down".into());
        }
        if action != Action::Wait {
            deadline = Instant::now() + session.timeout();
        }
        match action {
            Action::Done => {
                return Ok(Finish::Complete {
                    resent_windows: session.resent_windows(),
                })
            }
            Action::GiveUp => {
                return Err(format!(
                    "client stopped acknowledging (stalled at {} bytes)",
                    session.bytes_acked()
                ))
            }
            Action::Wait => {}
            Action::SendOack => {
                socket.send(&oack).map_err(|e| format!("send OACK: {e}"))?;
            }
            Action::SendBlocks { first, last } => {
                let (start, _) = session.block_range(first);
                let (last_start, last_len) = session.block_range(last);
                let total = (last_start + last_len as u64 - start) as usize;
                let data = read_ahead.range(file, start, total)?;
                paced |= first <= highest_sent;
                highest_sent = highest_sent.max(last);
                send_window(socket, &session, data, first, last, paced, &mut offload)?;
                if !offload {
                    control.batched_windows.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Stale ACKs do not extend the deadline: a client repeating an old ACK still gets a
        // retransmission when the window's time is up.
        let spin = control.active.load(Ordering::Relaxed) <= SPIN_MAX_TRANSFERS;
        action = match next_packet(fd, &mut ack_buf, deadline, spin, control)? {
            None => session.on_timeout(),
            Some(n) => match TftpRepr::parse(&ack_buf[..n]) {
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
