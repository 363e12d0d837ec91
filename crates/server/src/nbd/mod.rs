//! The NBD front end: the listener, one task per connection, STARTTLS, and the transmission
//! loop that dispatches requests to an `Export` on blocking threads. The protocol itself
//! (handshake state machine, request validation, reply encoding) is `vmedia_nbd`; this module
//! owns the sockets, the concurrency caps and the mapping from I/O errors to NBD errors.

mod connection;
mod execute;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::export::{ExportResolver, IoObserver};

/// What `serve_nbd` serves and to whom it reports.
pub struct NbdContext {
    pub resolver: Arc<dyn ExportResolver>,
    pub observer: Arc<dyn IoObserver>,
    /// Offers STARTTLS when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: NbdLimits,
}

/// Caps that keep one client from hurting the others, and the TLS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdLimits {
    /// Requests one connection may have in flight (read from the socket, reply not yet
    /// written); the connection stops reading requests at this depth.
    pub max_in_flight: usize,
    /// Bytes of WRITE payloads and READ replies one connection may hold in memory; a client
    /// that does not read its replies stalls itself once this is reached.
    pub max_buffered_bytes: usize,
    /// Largest READ or WRITE payload (advertised as the maximum block size).
    pub max_payload: u32,
    /// Connections served at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Time a client has to finish the handshake (TLS included).
    pub handshake_timeout: Duration,
    /// How long a closing connection (DISC, shutdown, error) waits for its in-flight
    /// requests and their replies before it is dropped.
    pub drain_timeout: Duration,
    /// Refuse every option but STARTTLS and ABORT until TLS runs (needs `tls`).
    pub require_tls: bool,
}

impl Default for NbdLimits {
    fn default() -> Self {
        NbdLimits {
            max_in_flight: 64,
            max_buffered_bytes: 64 << 20,
            max_payload: vmedia_nbd::wire::MAX_PAYLOAD,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            require_tls: false,
        }
    }
}

/// Serves NBD on `listener` until `shutdown` turns true (or its sender is dropped): then it
/// stops accepting, lets every connection finish its in-flight requests (bounded by
/// `drain_timeout`), and returns.
pub async fn serve_nbd(
    listener: TcpListener,
    ctx: NbdContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ctx);
    let slots = Arc::new(Semaphore::new(
        ctx.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown_signalled(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "nbd: connection limit reached, closing");
                        continue;
                    };
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        connection::run(stream, peer, ctx, shutdown).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "nbd: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = ctx.limits.drain_timeout + ctx.limits.drain_timeout / 2;
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "nbd: connections still open after the drain, closing them"
        );
        connections.shutdown().await;
    }
}

/// True when shutdown has been asked for, without waiting; a dropped sender counts as asked.
fn shutdown_now(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Resolves when shutdown is asked for; a dropped sender counts as a request to stop.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The one mapping from an export's I/O errors to NBD error values.
pub(crate) fn nbd_error(error: &io::Error) -> vmedia_nbd::NbdError {
    use io::ErrorKind::*;
    use vmedia_nbd::NbdError;
    match error.kind() {
        PermissionDenied | ReadOnlyFilesystem => NbdError::Perm,
        StorageFull | QuotaExceeded | FileTooLarge => NbdError::NoSpc,
        InvalidInput => NbdError::Inval,
        OutOfMemory => NbdError::NoMem,
        Unsupported => NbdError::NotSup,
        _ => NbdError::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmedia_nbd::NbdError;

    #[test]
    fn io_errors_map_to_nbd_errors() {
        let map = |kind| nbd_error(&io::Error::new(kind, "x"));
        assert_eq!(map(io::ErrorKind::PermissionDenied), NbdError::Perm);
        assert_eq!(map(io::ErrorKind::StorageFull), NbdError::NoSpc);
        assert_eq!(map(io::ErrorKind::InvalidInput), NbdError::Inval);
        assert_eq!(map(io::ErrorKind::Unsupported), NbdError::NotSup);
        assert_eq!(map(io::ErrorKind::UnexpectedEof), NbdError::Io);
        assert_eq!(map(io::ErrorKind::Other), NbdError::Io);
    }

    #[test]
    fn default_limits_fit_the_protocol() {
        let limits = NbdLimits::default();
        assert!(limits.max_buffered_bytes >= limits.max_payload as usize);
        assert!(limits.max_payload >= 1 << 20);
    }
}
