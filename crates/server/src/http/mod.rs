//! HTTP and HTTPS: the router (images, files, disks, `/metrics`, the control API) and the
//! connection loop (hyper, one task per connection, optional TLS, graceful drain).
//!
//! Every body is streamed in `PIECE_BYTES` pieces, each read on a blocking thread when the
//! client is ready for it: a slow client holds only its own connection, never a thread.

pub mod gate;
pub(crate) mod images;
pub mod range;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::clones::CloneError;
use crate::export::{ExportError, IoObserver, Protocol};
use crate::exports::LibraryExports;
use crate::metrics::Metrics;

/// Bytes read per step of a streamed body: large enough for throughput, small enough that
/// thousands of clients do not pin much memory.
pub const PIECE_BYTES: u64 = 256 << 10;
/// Open connections per listener; beyond it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 8192;
/// A client must send a request's headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (method, path, headers) a client may send.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// A TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, responses in progress get this long to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Lingering close: a request body the answer did not read (a 413, any early error) is read
/// and discarded up to this many bytes, so the client, still sending, reads the answer
/// instead of a reset; a larger body is cut off (the connection closes).
pub const LINGER_BYTES: u64 = 64 << 20;
/// ... and for at most this long (nginx's `lingering_time` is 30 s; ours is shorter because
/// our limits are small and an honest client sends them in well under this).
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    pub exports: Arc<LibraryExports>,
    pub observer: Arc<dyn IoObserver>,
    pub metrics: Arc<Metrics>,
    /// Who may read restricted items on `/images/` without credentials (`gate.rs`).
    pub gate: Arc<gate::MediaGate>,
    /// What `/health` checks (the store, the listeners).
    pub health: Arc<crate::health::Health>,
}

/// The peer of a request, put in its extensions by the connection loop.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
    pub protocol: Protocol,
}

/// The daemon's routes; `clones` (the clone store's API) is nested at `/api/v1/clones`.
pub fn router(state: Arc<AppState>, clones: Option<Router>) -> Router {
    let router = public_router(Arc::clone(&state)).merge(
        Router::new()
            .route("/api/v1/preload", post(preload))
            .with_state(state),
    );
    match clones {
        Some(clones) => router.nest("/api/v1/clones", clones),
        None => router,
    }
}

/// Images, files, disks, `/metrics` and `/health`: what every listener serves without
/// credentials.
pub fn public_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/images/{*path}", get(images::public_image))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `/health` (crates/server/src/health.rs): unauthenticated, so a failover manager needs no
/// credentials; it reveals only whether the store and listeners work.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    crate::health::endpoint(State(Arc::clone(&state.health))).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PreloadRequest {
    image: String,
    /// Answer when the whole version is in the cache (default), or at once (202).
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

pub(crate) async fn preload(
    State(state): State<Arc<AppState>>,
    body: Result<Json<PreloadRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error_response(rejection.status(), &rejection.body_text()),
    };
    let exports = Arc::clone(&state.exports);
    let image = request.image.clone();
    let job = tokio::task::spawn_blocking(move || {
        let opened = exports.open_version(&image).map_err(export_error)?;
        crate::preload::preload(&opened.export, &opened.digest)
            .map_err(|e| error_response(StatusCode::BAD_GATEWAY, &e.to_string()))
    });
    if !request.wait {
        let image = request.image.clone();
        tokio::spawn(async move {
            match job.await {
                Ok(Ok(report)) => tracing::info!(
                    export = report.export,
                    seconds = report.seconds,
                    "preloaded"
                ),
                _ => tracing::warn!(image, "preload failed"),
            }
        });
        return (
            StatusCode::ACCEPTED,
            Json(crate::preload::PreloadAccepted {
                image: request.image,
            }),
        )
            .into_response();
    }
    match job.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(response)) => response,
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The one place export errors become HTTP statuses.
pub(crate) fn export_error(error: ExportError) -> Response {
    error_response(export_status(&error), &error.to_string())
}

/// The status of an export that cannot be opened for a request.
pub fn export_status(error: &ExportError) -> StatusCode {
    match error {
        ExportError::NotFound(_) => StatusCode::NOT_FOUND,
        ExportError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The status of a clone API error.
pub fn clone_status(error: &CloneError) -> StatusCode {
    match error {
        CloneError::InvalidName { .. } | CloneError::TooLarge { .. } => StatusCode::BAD_REQUEST,
        CloneError::NotFound(_) => StatusCode::NOT_FOUND,
        CloneError::Exists(_) | CloneError::InUse { .. } => StatusCode::CONFLICT,
        // The base a request names: missing is 404 as for any export; one that cannot stand
        // under a clone (a disk naming a backing file, an unreadable format) is the request's
        // mistake, not a passing outage, so 400 rather than the 503 a read would get.
        CloneError::Base { source, .. } => match source {
            ExportError::NotFound(_) => StatusCode::NOT_FOUND,
            ExportError::Unavailable { .. } => StatusCode::BAD_REQUEST,
        },
        CloneError::Commit { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput => {
            StatusCode::BAD_REQUEST
        }
        CloneError::Commit { .. }
        | CloneError::Damaged { .. }
        | CloneError::Locked { .. }
        | CloneError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status of a library error met by an API request.
/// The status of a VM store or QEMU error.
pub fn boot_status(error: &vmedia_boot::BootError) -> StatusCode {
    match error {
        // A VM that is (not) running, a CD slot it lacks, a tray the guest locked: the
        // request does not fit the VM's current state.
        vmedia_boot::BootError::Vm { .. } => StatusCode::CONFLICT,
        vmedia_boot::BootError::Invalid(_)
        | vmedia_boot::BootError::UnknownDiskFormat { .. }
        | vmedia_boot::BootError::BadMedium { .. } => StatusCode::BAD_REQUEST,
        // QEMU could not open the image the request named (unreachable URL, refused login).
        vmedia_boot::BootError::Qmp { command, .. } if command == "blockdev-add" => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn library_status(error: &vmedia_library::LibraryError) -> StatusCode {
    use vmedia_library::LibraryError as E;
    match error {
        E::InvalidName { .. }
        | E::InvalidSpec { .. }
        | E::AmbiguousDigest { .. }
        | E::NothingCurrentAt { .. }
        | E::Image { .. }
        | E::BackingFile { .. }
        | E::EmbeddedChecksum { .. }
        | E::Unsigned { .. }
        | E::Untrusted { .. }
        | E::BadSignature { .. }
        | E::Limit { .. } => StatusCode::BAD_REQUEST,
        E::NoSuchItem { .. } | E::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
        // The item or version was there and is gone: 410 tells a client not to retry.
        E::ItemRemoved { .. } | E::VersionPruned { .. } => StatusCode::GONE,
        E::Contention { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Every error body the daemon sends: an RFC 9457 problem document
/// (`application/problem+json`) whose `error` member (an extension) repeats `detail`, the
/// body's one field before the REST API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    /// The status's reason phrase.
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    /// What went wrong with this request, in words.
    #[serde(default)]
    pub detail: String,
    pub error: String,
}

fn about_blank() -> String {
    "about:blank".into()
}

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ErrorBody {
    pub fn new(status: StatusCode, message: &str) -> ErrorBody {
        ErrorBody {
            kind: about_blank(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: message.to_string(),
            error: message.to_string(),
        }
    }
}

pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody::new(status, message)).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
}

/// Serves HTTP (or HTTPS with `tls`) on `listener` until `shutdown` turns true, then lets
/// responses in progress finish (at most `DRAIN_TIMEOUT`).
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    observer: Arc<dyn IoObserver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let protocol = if tls.is_some() {
        Protocol::Https
    } else {
        Protocol::Http
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(client = %addr, "too many connections; closing a new one");
                    continue;
                };
                let (app, observer, tls, shutdown) =
                    (app.clone(), Arc::clone(&observer), tls.clone(), shutdown.clone());
                connections.spawn(async move {
                    connection(stream, addr, protocol, tls, app, observer, shutdown).await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "closing connections that did not drain"
        );
        connections.abort_all();
    }
}

/// Calls `connection_closed` however the connection task ends.
struct ClosedGuard {
    observer: Arc<dyn IoObserver>,
    protocol: Protocol,
    client: String,
}

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.observer.connection_closed(self.protocol, &self.client);
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    protocol: Protocol,
    tls: Option<TlsAcceptor>,
    app: Router,
    observer: Arc<dyn IoObserver>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let client = addr.to_string();
    observer.connection_opened(protocol, &client);
    let _closed = ClosedGuard {
        observer,
        protocol,
        client: client.clone(),
    };
    let peer = Peer {
        addr: client,
        protocol,
    };
    match tls {
        None => serve_connection(TokioIo::new(stream), peer, app, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), peer, app, shutdown).await,
                Ok(Err(error)) => {
                    tracing::debug!(client = peer.addr, %error, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(client = peer.addr, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<I>(io: I, peer: Peer, app: Router, mut shutdown: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let expects_continue = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut request = request.map(|body| Lingering::new(body, expects_continue));
        request.extensions_mut().insert(peer.clone());
        let mut app = app.clone();
        async move {
            let response: Result<Response, Infallible> =
                tower_service::Service::call(&mut app, request).await;
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, connection.as_mut()).await;
        }
    }
}

/// A request body that, dropped before its end (the handler answered without reading it
/// all: a 413 from the body limit, a 401, a 400 on its first bytes), is read to its end and
/// discarded by a task of its own, bounded by `LINGER_BYTES` and `LINGER_TIME`. Hyper keeps
/// feeding a body whose receiver lives, and closes the reading side of the connection as soon
/// as it is dropped unread; the kernel then answers the client's next bytes with a reset that
/// can discard the error answer before the client reads it. Reading on lets the client finish
/// sending and read the answer (nginx's lingering close); the discard is an async task, so it
/// never holds a runtime worker.
struct Lingering {
    inner: Option<Incoming>,
    /// The request said `Expect: 100-continue`: its client sends the body only once invited.
    expects_continue: bool,
    /// Whether the handler ever asked for the body (which invites such a client).
    polled: bool,
}

impl Lingering {
    fn new(inner: Incoming, expects_continue: bool) -> Lingering {
        Lingering {
            inner: Some(inner),
            expects_continue,
            polled: false,
        }
    }
}

impl hyper::body::Body for Lingering {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(
            polled,
            std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))
        ) {
            this.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if hyper::body::Body::is_end_stream(&body) {
            return;
        }
        if self.expects_continue && !self.polled {
            // Hyper sends `100 Continue` only when the body is first asked for: never asked,
            // the client was never invited to send it, so there is nothing to wait for.
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body));
        }
    }
}

/// Reads and drops what is left of a request body, within `LINGER_BYTES` and `LINGER_TIME`.
async fn discard(mut body: Incoming) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut seen: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len() as u64);
                if seen > LINGER_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}
