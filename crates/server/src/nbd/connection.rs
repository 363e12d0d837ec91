//! One NBD connection: the handshake (optionally upgraded to TLS by STARTTLS), then the
//! transmission loop. One task reads requests and dispatches them to blocking threads, one
//! task writes replies in completion order; per-connection semaphores bound the requests in
//! flight and the bytes held, so a client that stops reading its replies stalls only itself.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use vmedia_nbd::transmission::REQUEST_HEADER_LEN;
use vmedia_nbd::{
    Action, BlockSizes, Command, ExportEntry, ExportInfo, Handshake, Negotiated, Request,
    RequestHeader, Session, TlsPolicy,
};

use super::execute::{error_reply, execute, op_of, read_now, Executed};
use super::{shutdown_now, shutdown_signalled, NbdContext};
use crate::export::{Export, Op, Protocol};

/// Read buffer for requests: many small requests per system call.
const READ_BUFFER: usize = 64 * 1024;
/// Replies gathered into one vectored write: many small replies per system call.
const WRITE_BATCH: usize = 64;
/// Slices handed to one `writev` (the kernel's IOV_MAX is 1024).
const MAX_IOVECS: usize = 512;

pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<NbdContext>,
    shutdown: watch::Receiver<bool>,
) {
    let client = peer.to_string();
    let _ = stream.set_nodelay(true);
    let opened = Opened::new(&ctx, &client);
    match serve(stream, &client, &ctx, shutdown).await {
        Ok(()) => tracing::debug!(client, "nbd: connection closed"),
        Err(error) => tracing::info!(client, %error, "nbd: connection closed on error"),
    }
    drop(opened);
}

/// Reports the connection open, and closed when dropped: also when the task is aborted at
/// the end of a shutdown drain, so per-client metrics never outlive their client.
struct Opened {
    ctx: Arc<NbdContext>,
    client: String,
}

impl Opened {
    fn new(ctx: &Arc<NbdContext>, client: &str) -> Opened {
        ctx.observer.connection_opened(Protocol::Nbd, client);
        Opened {
            ctx: ctx.clone(),
            client: client.to_string(),
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.ctx
            .observer
            .connection_closed(Protocol::Nbd, &self.client);
    }
}

/// How a handshake phase ended.
enum Negotiation {
    Enter(Box<Negotiated>, Arc<dyn Export>),
    StartTls,
    Closed,
}

async fn serve(
    mut stream: TcpStream,
    client: &str,
    ctx: &Arc<NbdContext>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let policy = match (&ctx.tls, ctx.limits.require_tls) {
        (None, _) => TlsPolicy::Unavailable,
        (Some(_), false) => TlsPolicy::Optional,
        (Some(_), true) => TlsPolicy::Required,
    };
    let mut handshake = Handshake::new(policy);
    let timeout = ctx.limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "handshake took too long");

    let first = tokio::select! {
        _ = shutdown_signalled(&mut shutdown) => return Ok(()),
        result = tokio::time::timeout_at(deadline, negotiate(&mut stream, &mut handshake, ctx, client)) => {
            result.map_err(|_| timed_out())??
        }
    };
    match first {
        Negotiation::Closed => Ok(()),
        Negotiation::Enter(negotiated, export) => {
            transmit(stream, *negotiated, export, client, ctx, shutdown).await
        }
        Negotiation::StartTls => {
            let Some(acceptor) = ctx.tls.clone() else {
                return Err(io::Error::other("STARTTLS accepted without a TLS acceptor"));
            };
            let upgrade = async {
                let mut tls = acceptor.accept(stream).await?;
                handshake
                    .tls_started()
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                let negotiation = negotiate(&mut tls, &mut handshake, ctx, client).await?;
                Ok::<_, io::Error>((tls, negotiation))
            };
            let (tls, second) = tokio::select! {
                _ = shutdown_signalled(&mut shutdown) => return Ok(()),
                result = tokio::time::timeout_at(deadline, upgrade) => {
                    result.map_err(|_| timed_out())??
                }
            };
            match second {
                Negotiation::Enter(negotiated, export) => {
                    transmit(tls, *negotiated, export, client, ctx, shutdown).await
                }
                Negotiation::Closed => Ok(()),
                Negotiation::StartTls => Err(io::Error::other("STARTTLS twice")),
            }
        }
    }
}

fn export_info(export: &dyn Export, max_payload: u32) -> ExportInfo {
    let sizes = export.block_sizes();
    ExportInfo {
        name: export.name().to_string(),
        description: String::new(),
        size: export.size(),
        read_only: export.read_only(),
        multi_conn: export.can_multi_conn(),
        block_sizes: BlockSizes {
            minimum: sizes.minimum,
            preferred: sizes.preferred,
            maximum: sizes.maximum,
        }
        .normalized(max_payload),
    }
}

/// Runs the handshake state machine over `stream` until it asks for TLS, transmission or
/// the end.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    handshake: &mut Handshake,
    ctx: &Arc<NbdContext>,
    client: &str,
) -> io::Result<Negotiation> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut opened: Option<Arc<dyn Export>> = None;
    loop {
        let action = handshake
            .poll()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        match action {
            Action::Send(bytes) => {
                stream.write_all(&bytes).await?;
                stream.flush().await?;
            }
            Action::NeedInput => {
                let read = stream.read(&mut buffer).await?;
                if read == 0 {
                    return Ok(Negotiation::Closed);
                }
                handshake.feed(&buffer[..read]);
            }
            Action::ListExports => {
                let resolver = ctx.resolver.clone();
                let listed = tokio::task::spawn_blocking(move || resolver.list())
                    .await
                    .map_err(io::Error::other)
                    .and_then(|listed| listed)
                    .map(|exports| {
                        exports
                            .into_iter()
                            .map(|export| ExportEntry {
                                name: export.name,
                                description: export.description,
                            })
                            .collect()
                    })
                    .map_err(|error| error.to_string());
                handshake
                    .exports_listed(listed)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            }
            Action::OpenExport { name } => {
                let (resolver, client) = (ctx.resolver.clone(), client.to_string());
                let opened_now =
                    tokio::task::spawn_blocking(move || resolver.open_for(&name, &client))
                        .await
                        .map_err(|error| error.to_string())
                        .and_then(|opened| opened.map_err(|error| error.to_string()));
                let answer = match opened_now {
                    Ok(export) => {
                        let info = export_info(&*export, ctx.limits.max_payload);
                        opened = Some(export);
                        Ok(info)
                    }
                    Err(message) => Err(message),
                };
                handshake
                    .export_opened(answer)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            }
            Action::StartTls => return Ok(Negotiation::StartTls),
            Action::Abort => return Ok(Negotiation::Closed),
            Action::Enter(negotiated) => {
                let export = opened
                    .take()
                    .ok_or_else(|| io::Error::other("transmission without an opened export"))?;
                return Ok(Negotiation::Enter(negotiated, export));
            }
        }
    }
}

/// A reply on its way to the writer, holding the caps it counts against until written.
struct Outgoing {
    parts: Vec<Bytes>,
    _slot: OwnedSemaphorePermit,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Shared by every request of one connection.
struct Connection {
    export: Arc<dyn Export>,
    export_name: String,
    client: String,
    session: Session,
    ctx: Arc<NbdContext>,
    replies: mpsc::UnboundedSender<Outgoing>,
}

fn op_of_command(command: Command) -> Option<Op> {
    match command {
        Command::Read => Some(Op::Read),
        Command::Write => Some(Op::Write),
        Command::WriteZeroes => Some(Op::WriteZeroes),
        Command::Trim => Some(Op::Trim),
        Command::Flush => Some(Op::Flush),
        Command::BlockStatus => Some(Op::BlockStatus),
        Command::Cache | Command::Disconnect | Command::Unknown(_) => None,
    }
}

async fn transmit<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    negotiated: Negotiated,
    export: Arc<dyn Export>,
    client: &str,
    ctx: &Arc<NbdContext>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let session = Session {
        size: negotiated.info.size,
        flags: negotiated.flags,
        structured_replies: negotiated.structured_replies,
        base_allocation: negotiated.base_allocation,
        block_sizes: negotiated.info.block_sizes,
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let leftover = std::io::Cursor::new(negotiated.leftover);
    let mut reader = BufReader::with_capacity(READ_BUFFER, leftover.chain(read_half));
    let (replies, outgoing) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_replies(write_half, outgoing));
    let connection = Arc::new(Connection {
        export_name: export.name().to_string(),
        export,
        client: client.to_string(),
        session,
        ctx: ctx.clone(),
        replies,
    });
    let limits = &ctx.limits;
    // Clamped so no configuration can make `Semaphore::new` panic.
    let slots = Arc::new(Semaphore::new(
        limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let budget_bytes = limits.max_buffered_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(budget_bytes));

    let ended = loop {
        let mut header = [0u8; REQUEST_HEADER_LEN];
        // Shutdown is checked before every request; a future that watches for it is set up
        // only where the connection would wait (a request not yet here, no free slot), so a
        // pipelined client's requests cost no waker registration each.
        if shutdown_now(&shutdown) {
            break Ok(());
        }
        let read = if reader.buffer().len() >= REQUEST_HEADER_LEN {
            reader.read_exact(&mut header).await
        } else {
            tokio::select! {
                biased;
                _ = shutdown_signalled(&mut shutdown) => break Ok(()),
                read = reader.read_exact(&mut header) => read,
            }
        };
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(error) => break Err(error),
        }
        let header = match RequestHeader::parse(&header) {
            Ok(header) => header,
            // Out of step with the client: nothing more can be parsed.
            Err(error) => break Err(io::Error::new(io::ErrorKind::InvalidData, error)),
        };
        let validated = connection.session.validate(&header);
        // Every reply holds a slot until written: this is the in-flight cap.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                biased;
                _ = shutdown_signalled(&mut shutdown) => break Ok(()),
                slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
            },
        };
        let cost = match validated {
            Ok(Request::Read { length, .. }) | Ok(Request::Write { length, .. }) => {
                (length as usize).min(budget_bytes)
            }
            _ => 0,
        };
        let held = if cost > 0 {
            let permits = u32::try_from(cost).unwrap_or(u32::MAX);
            match budget.clone().try_acquire_many_owned(permits) {
                Ok(held) => Some(held),
                Err(_) => tokio::select! {
                    biased;
                    _ = shutdown_signalled(&mut shutdown) => break Ok(()),
                    held = budget.clone().acquire_many_owned(permits) => {
                        Some(held.map_err(io::Error::other)?)
                    }
                },
            }
        } else {
            None
        };
        let payload_len = header.payload_len();
        let mut payload = Vec::new();
        if payload_len > 0 {
            if matches!(validated, Ok(Request::Write { .. })) {
                payload.resize(payload_len as usize, 0);
                if let Err(error) = reader.read_exact(&mut payload).await {
                    break Err(error);
                }
            } else {
                // A refused WRITE's data still follows its header: skip it to stay in step.
                let skipped = tokio::io::copy(
                    &mut (&mut reader).take(u64::from(payload_len)),
                    &mut tokio::io::sink(),
                )
                .await?;
                if skipped < u64::from(payload_len) {
                    break Ok(());
                }
            }
        }
        match validated {
            Ok(Request::Disconnect) => break Ok(()),
            Ok(request) => dispatch(&connection, header.cookie, request, payload, slot, held),
            Err(refusal) => {
                let op = op_of_command(header.command);
                let observer = &ctx.observer;
                if let Some(op) = op {
                    observer.request_started(&connection.export_name, &connection.client);
                    let elapsed = std::time::Duration::ZERO;
                    observer.request_finished(
                        &connection.export_name,
                        &connection.client,
                        op,
                        0,
                        elapsed,
                        false,
                    );
                }
                let bytes = error_reply(
                    &connection.session,
                    header.cookie,
                    refusal.error,
                    refusal.reason,
                );
                let _ = connection.replies.send(Outgoing {
                    parts: vec![Bytes::from(bytes)],
                    _slot: slot,
                    _budget: held,
                });
            }
        }
    };
    // Let in-flight requests finish and their replies go out, within the drain bound.
    drop(connection);
    let drained = tokio::time::timeout(limits.drain_timeout, &mut writer).await;
    match drained {
        Ok(Ok(written)) => written.and(ended),
        Ok(Err(join)) => Err(io::Error::other(join)),
        Err(_) => {
            writer.abort();
            ended.and(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "replies not drained in time",
            )))
        }
    }
}

/// Runs one request and queues its reply: a READ the cache holds at once, on this task; any
/// other request on a blocking thread.
fn dispatch(
    connection: &Arc<Connection>,
    cookie: u64,
    request: Request,
    payload: Vec<u8>,
    slot: OwnedSemaphorePermit,
    held: Option<OwnedSemaphorePermit>,
) {
    let connection = connection.clone();
    // Started here, not on the blocking thread: queue depth and latency include the wait
    // for a thread, which is what the client experiences.
    let op = op_of(&request);
    if op.is_some() {
        let observer = &connection.ctx.observer;
        observer.request_started(&connection.export_name, &connection.client);
    }
    let started = Instant::now();
    if let Request::Read { offset, length, df } = request {
        let now = read_now(
            &*connection.export,
            &connection.session,
            cookie,
            offset,
            length,
            df,
        );
        if let Some(executed) = now {
            finished(&connection, op, started, executed, slot, held);
            return;
        }
    }
    tokio::task::spawn_blocking(move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            execute(
                &*connection.export,
                &connection.session,
                cookie,
                request,
                &payload,
            )
        }));
        drop(payload);
        let executed = run.unwrap_or_else(|_| Executed {
            parts: vec![Bytes::from(error_reply(
                &connection.session,
                cookie,
                vmedia_nbd::NbdError::Io,
                "the export failed",
            ))],
            moved: 0,
            ok: false,
        });
        finished(&connection, op, started, executed, slot, held);
    });
}

/// Reports a request finished and queues its reply.
fn finished(
    connection: &Connection,
    op: Option<Op>,
    started: Instant,
    executed: Executed,
    slot: OwnedSemaphorePermit,
    held: Option<OwnedSemaphorePermit>,
) {
    if let Some(op) = op {
        connection.ctx.observer.request_finished(
            &connection.export_name,
            &connection.client,
            op,
            executed.moved,
            started.elapsed(),
            executed.ok,
        );
    }
    let _ = connection.replies.send(Outgoing {
        parts: executed.parts,
        _slot: slot,
        _budget: held,
    });
}

/// Writes replies as they complete, those waiting together in vectored writes; flushes when
/// no more are waiting (TLS buffers). A reply's caps are released once it is written.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) -> io::Result<()> {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(WRITE_BATCH);
    while outgoing.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        write_parts(
            &mut writer,
            batch.iter().flat_map(|reply| reply.parts.iter()),
        )
        .await?;
        batch.clear();
        if outgoing.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    writer.shutdown().await
}

/// Writes every byte of `parts`, in order, up to `MAX_IOVECS` slices per system call.
async fn write_parts<'a, W: AsyncWrite + Unpin>(
    writer: &mut W,
    parts: impl Iterator<Item = &'a Bytes>,
) -> io::Result<()> {
    let parts: Vec<&Bytes> = parts.filter(|part| !part.is_empty()).collect();
    // The first part not fully written, and how much of it went out.
    let (mut first, mut written) = (0usize, 0usize);
    let mut slices = Vec::with_capacity(parts.len().min(MAX_IOVECS));
    while first < parts.len() {
        slices.clear();
        slices.push(io::IoSlice::new(&parts[first][written..]));
        for part in parts[first + 1..].iter().take(MAX_IOVECS - 1) {
            slices.push(io::IoSlice::new(part));
        }
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < parts.len() {
            let left = parts[first].len() - written;
            if n >= left {
                n -= left;
                first += 1;
                written = 0;
            } else {
                written += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `step` bytes per call, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.step - n);
                self.got.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn short_vectored_writes_send_every_part_in_order() {
        // More parts than one writev takes, empty ones among them, odd sizes.
        let parts: Vec<Bytes> = (0..1500u32)
            .map(|i| Bytes::from(vec![i as u8; (i % 5) as usize]))
            .collect();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        for step in [1, 7, 4096] {
            let mut writer = Trickle {
                got: Vec::new(),
                step,
            };
            write_parts(&mut writer, parts.iter()).await.unwrap();
            assert_eq!(writer.got, expected, "step {step}");
        }
    }
}
