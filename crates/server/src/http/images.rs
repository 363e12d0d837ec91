//! `GET`/`HEAD /images/NAME[@V]`, `/images/NAME[@V]/disk` and `/images/NAME[@V]/files/PATH`:
//! validators (strong ETag from the SHA-256, Last-Modified), conditional requests
//! (If-None-Match, If-Range), single and multiple ranges, cache headers for HTTP caches.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use vmedia_io::ReadAt;

use super::range::{self, RangeRequest};
use super::{error_response, export_error, AppState, Peer, PIECE_BYTES};
use crate::export::{Export, IoObserver, Op};
use crate::exports::{ExportReader, OpenedVersion, DISK_SUFFIX};

/// Cache-Control of URLs that name a version by digest: the bytes can never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control of names that follow the current version: caches revalidate by ETag.
const REVALIDATE: &str = "no-cache";
const FILES_INFIX: &str = "/files/";

/// What a request names.
enum Target {
    Bytes,
    Disk,
    File(String),
}

/// A representation ready to serve.
struct Representation {
    /// The export reads are reported under, and read from unless `file` is set: pieces it
    /// holds in memory are sent from the event loop, without a blocking thread or a copy.
    export: Arc<dyn Export>,
    /// A file inside the export (`/files/PATH`), read through the ISO reader instead.
    file: Option<Arc<dyn ReadAt>>,
    size: u64,
    validators: Validators,
}

/// A representation's ETag and Last-Modified as ready header values: made once per version
/// (per worker thread), not per request.
#[derive(Clone)]
struct Validators {
    etag: HeaderValue,
    last_modified: Option<HeaderValue>,
}

/// Versions whose validators each worker thread keeps: the versions being served at once.
const KEPT_VALIDATORS: usize = 8;

/// (name, version, disk) -> validators, at most `KEPT_VALIDATORS`, and the slot to replace.
type KeptValidators = (Vec<(String, u64, bool, Validators)>, usize);

thread_local! {
    static VALIDATORS: std::cell::RefCell<KeptValidators> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

fn validators(version: &OpenedVersion, disk: bool) -> Validators {
    VALIDATORS.with(|kept| {
        let mut kept = kept.borrow_mut();
        let (list, next) = &mut *kept;
        if let Some((_, _, _, found)) = list
            .iter()
            .find(|(n, v, d, _)| *v == version.version && *d == disk && *n == version.name)
        {
            return found.clone();
        }
        let etag = if disk {
            format!("\"{}-disk\"", hex_of(&version.digest))
        } else {
            format!("\"{}\"", hex_of(&version.digest))
        };
        let made = Validators {
            etag: header_value(etag),
            last_modified: version.last_modified.clone().map(header_value),
        };
        let entry = (version.name.clone(), version.version, disk, made.clone());
        if list.len() < KEPT_VALIDATORS {
            list.push(entry);
        } else {
            list[*next % KEPT_VALIDATORS] = entry;
            *next = next.wrapping_add(1);
        }
        made
    })
}

/// A header value from text the daemon made (hex digests, dates, numbers): valid by
/// construction; anything else becomes an empty value rather than a panic.
fn header_value(text: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(text)).unwrap_or(HeaderValue::from_static(""))
}

/// `/images/...` on the ports without credentials: a restricted item needs a signed URL
/// (`gate.rs`); without one it is a missing image (404), audited.
pub(crate) async fn public_image(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    request: axum::extract::Request,
) -> Response {
    // Borrowed from the request: the hot path clones neither the headers nor the peer.
    let Some(peer) = request.extensions().get::<Peer>() else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "no peer address");
    };
    let full = format!("/images/{path}");
    if state
        .gate
        .admit_http(request.method(), &full, request.uri().query(), &peer.addr)
        .is_err()
    {
        return error_response(StatusCode::NOT_FOUND, &format!("no such image: {path}"));
    }
    serve(&state, peer, path, request.method(), request.headers()).await
}

pub(crate) async fn image(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve(&state, &peer, path, &method, &headers).await
}

async fn serve(
    state: &Arc<AppState>,
    peer: &Peer,
    path: String,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let (spec, target) = if let Some((spec, file)) = path.split_once(FILES_INFIX) {
        (spec, Target::File(format!("/{file}")))
    } else if let Some(spec) = path.strip_suffix(DISK_SUFFIX) {
        (spec, Target::Disk)
    } else {
        (path.as_str(), Target::Bytes)
    };
    let immutable = spec.contains("@sha256:");
    // An open version (the usual case after the first request) needs no blocking thread.
    let now = match &target {
        Target::Bytes => state.exports.open_version_now(spec).map(|version| {
            state.exports.attached(&version);
            bytes_representation(&version)
        }),
        Target::Disk => state.exports.open_disk_now(spec).map(|(version, disk)| {
            state.exports.attached(&version);
            disk_representation(&version, disk)
        }),
        Target::File(_) => None,
    };
    if let Some(rep) = now {
        return respond(state, peer, rep, method, headers, immutable);
    }
    let exports = Arc::clone(&state.exports);
    let spec = spec.to_string();
    let opened = tokio::task::spawn_blocking(move || -> Result<Representation, Response> {
        let open = |spec: &str| exports.open_version(spec).map_err(export_error);
        match target {
            Target::Bytes => {
                let version = open(&spec)?;
                exports.attached(&version);
                Ok(bytes_representation(&version))
            }
            Target::Disk => {
                let (version, disk) = exports.open_disk(&spec).map_err(export_error)?;
                exports.attached(&version);
                Ok(disk_representation(&version, disk))
            }
            Target::File(file) => {
                let version = open(&spec)?;
                exports.attached(&version);
                let reader: Arc<dyn ReadAt> = Arc::new(ExportReader(Arc::clone(&version.export)));
                let not_found = |e: vmedia_iso::read::ReadError| {
                    error_response(StatusCode::NOT_FOUND, &format!("{spec}{file}: {e}"))
                };
                let iso = vmedia_iso::read::IsoImage::open(reader, Default::default())
                    .map_err(not_found)?;
                let entry = iso.lookup_follow(&file).map_err(not_found)?;
                let file_reader = iso.file_reader(&entry).map_err(not_found)?;
                let path_digest = hex::encode(&Sha256::digest(file.as_bytes())[..8]);
                let etag = format!("\"{}-{path_digest}\"", hex_of(&version.digest));
                Ok(Representation {
                    export: Arc::clone(&version.export),
                    size: file_reader.len(),
                    file: Some(Arc::new(file_reader)),
                    validators: Validators {
                        etag: header_value(etag),
                        last_modified: validators(&version, false).last_modified,
                    },
                })
            }
        }
    })
    .await;
    let rep = match opened {
        Ok(Ok(rep)) => rep,
        Ok(Err(response)) => return response,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    respond(state, peer, rep, method, headers, immutable)
}

/// A version's bytes.
fn bytes_representation(version: &OpenedVersion) -> Representation {
    Representation {
        size: version.export.size(),
        export: Arc::clone(&version.export),
        file: None,
        validators: validators(version, false),
    }
}

/// A disk image's virtual content.
fn disk_representation(
    version: &OpenedVersion,
    disk: Arc<crate::exports::DiskExport>,
) -> Representation {
    Representation {
        size: disk.size(),
        export: disk,
        file: None,
        validators: validators(version, true),
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A response with no body (304, 416, HEAD).
fn bare(status: StatusCode, headers: HeaderMap) -> Response {
    with_body(status, headers, Body::empty())
}

/// A response built in place: the header map is moved in, not merged header by header.
fn with_body(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn respond(
    state: &AppState,
    peer: &Peer,
    rep: Representation,
    method: &Method,
    headers: &HeaderMap,
    immutable: bool,
) -> Response {
    const OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");
    let mut common = HeaderMap::with_capacity(8);
    let etag = rep.validators.etag.clone();
    let etag_text = std::str::from_utf8(etag.as_bytes()).unwrap_or("");
    common.insert(header::ETAG, etag.clone());
    if let Some(modified) = &rep.validators.last_modified {
        common.insert(header::LAST_MODIFIED, modified.clone());
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable { IMMUTABLE } else { REVALIDATE }),
    );
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tags) = text(header::IF_NONE_MATCH) {
        if none_match_hits(tags, etag_text) {
            return bare(StatusCode::NOT_MODIFIED, common);
        }
    }
    let mut ranges = match text(header::RANGE) {
        Some(value) => range::parse(value, rep.size),
        None => RangeRequest::Full,
    };
    if let Some(condition) = text(header::IF_RANGE) {
        let modified = rep
            .validators
            .last_modified
            .as_ref()
            .and_then(|v| v.to_str().ok());
        if !if_range_holds(condition, etag_text, modified) {
            ranges = RangeRequest::Full;
        }
    }
    let head = method == Method::HEAD;
    match ranges {
        RangeRequest::Unsatisfiable => {
            common.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{}", rep.size)),
            );
            bare(StatusCode::RANGE_NOT_SATISFIABLE, common)
        }
        RangeRequest::Full => {
            common.insert(header::CONTENT_TYPE, OCTETS);
            let segments = VecDeque::from([Segment::Read(0, rep.size)]);
            body_response(
                state,
                peer,
                &rep,
                StatusCode::OK,
                common,
                segments,
                rep.size,
                head,
            )
        }
        RangeRequest::Ranges(list) if list.len() == 1 => {
            let (start, end) = list[0];
            common.insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes {start}-{end}/{}", rep.size)),
            );
            common.insert(header::CONTENT_TYPE, OCTETS);
            let segments = VecDeque::from([Segment::Read(start, end - start + 1)]);
            let length = end - start + 1;
            body_response(
                state,
                peer,
                &rep,
                StatusCode::PARTIAL_CONTENT,
                common,
                segments,
                length,
                head,
            )
        }
        RangeRequest::Ranges(list) => {
            let boundary = boundary(etag_text);
            common.insert(
                header::CONTENT_TYPE,
                header_value(format!("multipart/byteranges; boundary={boundary}")),
            );
            let mut segments = VecDeque::new();
            let mut length = 0u64;
            for (start, end) in list {
                let part = format!(
                    "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{end}/{}\r\n\r\n",
                    rep.size
                );
                length += part.len() as u64 + (end - start + 1);
                segments.push_back(Segment::Literal(Bytes::from(part)));
                segments.push_back(Segment::Read(start, end - start + 1));
            }
            let close = format!("\r\n--{boundary}--\r\n");
            length += close.len() as u64;
            segments.push_back(Segment::Literal(Bytes::from(close)));
            body_response(
                state,
                peer,
                &rep,
                StatusCode::PARTIAL_CONTENT,
                common,
                segments,
                length,
                head,
            )
        }
    }
}

/// If-None-Match: weak comparison (RFC 9110 13.1.2), `*` matches any representation.
fn none_match_hits(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// If-Range: a strong ETag match, or exactly the Last-Modified date.
fn if_range_holds(condition: &str, etag: &str, last_modified: Option<&str>) -> bool {
    let condition = condition.trim();
    if condition.starts_with('"') {
        return condition == etag;
    }
    if condition.starts_with("W/") {
        return false;
    }
    last_modified == Some(condition)
}

static BOUNDARIES: AtomicU64 = AtomicU64::new(0);

/// A multipart boundary that cannot be guessed from the request (so content cannot fake it).
fn boundary(etag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(etag.as_bytes());
    hasher.update(nanos.to_le_bytes());
    hasher.update(BOUNDARIES.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("vmedia-{}", hex::encode(&hasher.finalize()[..12]))
}

/// One part of a response body.
enum Segment {
    Literal(Bytes),
    /// `length` bytes of the source at `offset`.
    Read(u64, u64),
}

#[allow(clippy::too_many_arguments)]
fn body_response(
    state: &AppState,
    peer: &Peer,
    rep: &Representation,
    status: StatusCode,
    mut headers: HeaderMap,
    segments: VecDeque<Segment>,
    length: u64,
    head: bool,
) -> Response {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if head {
        return bare(status, headers);
    }
    let export_name = rep.export.name();
    state.observer.request_started(export_name, &peer.addr);
    let started = Instant::now();
    // One piece held in one cached chunk (a small Range, the usual case): the body is that
    // slice, sent as is.
    let mut segments = segments;
    let mut sent = 0;
    if let (None, [Segment::Read(offset, size)]) = (&rep.file, segments.as_slices().0) {
        let (offset, size) = (*offset, *size);
        if size > 0 && size <= PIECE_BYTES {
            if let Some(mut parts) = rep.export.read_cached(offset, size as usize) {
                if parts.len() == 1 {
                    if let Some(part) = parts.pop() {
                        state.observer.request_finished(
                            export_name,
                            &peer.addr,
                            Op::Read,
                            size,
                            started.elapsed(),
                            true,
                        );
                        return with_body(status, headers, Body::from(part));
                    }
                }
                // Slices of several chunks: streamed as they are.
                segments = parts.into_iter().map(Segment::Literal).collect();
                sent = size;
            }
        }
    }
    let source = match &rep.file {
        Some(file) => Source::File(Arc::clone(file)),
        None => Source::Export(Arc::clone(&rep.export)),
    };
    let stream = BodyStream {
        source,
        segments,
        ahead: None,
        report: Report {
            observer: Arc::clone(&state.observer),
            export: export_name.to_string(),
            client: peer.addr.clone(),
            started,
            bytes: sent,
            ok: false,
        },
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let segment = stream.segments.pop_front()?;
        match segment {
            Segment::Literal(bytes) => {
                stream.finished_if_done();
                Some((Ok(bytes), stream))
            }
            Segment::Read(offset, length) => {
                let n = length.min(PIECE_BYTES);
                if n < length {
                    stream
                        .segments
                        .push_front(Segment::Read(offset + n, length - n));
                }
                // The piece read ahead last time, else from memory at once, else read now;
                // after a read, start the next one, so the store works while this piece goes
                // out.
                let pending = match stream.ahead.take() {
                    Some((at, handle)) if at == offset => handle,
                    _ => {
                        let cached = match &stream.source {
                            Source::Export(export) => export.read_cached(offset, n as usize),
                            Source::File(_) => None,
                        };
                        if let Some(parts) = cached {
                            stream.report.bytes += n;
                            return Some((Ok(stream.send(parts)), stream));
                        }
                        read_piece(&stream.source, offset, n)
                    }
                };
                if let Some(Segment::Read(next, left)) = stream.segments.front() {
                    let (next, size) = (*next, (*left).min(PIECE_BYTES));
                    stream.ahead = Some((next, read_piece(&stream.source, next, size)));
                }
                let read = pending
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                match read {
                    Ok(parts) => {
                        stream.report.bytes += n;
                        Some((Ok(stream.send(parts)), stream))
                    }
                    Err(error) => {
                        // The status line went out already: end the body early, so the
                        // client sees a short response and never wrong bytes.
                        tracing::warn!(export = stream.report.export, offset, %error, "read failed mid-response");
                        stream.segments.clear();
                        Some((Err(error), stream))
                    }
                }
            }
        }
    });
    with_body(status, headers, Body::from_stream(body))
}

/// Where a streamed body's bytes come from.
enum Source {
    /// The export itself: slices of its cached chunks, without a copy.
    Export(Arc<dyn Export>),
    /// A file inside it, through the ISO reader.
    File(Arc<dyn ReadAt>),
}

/// Reads `length` bytes at `offset` on a blocking thread: slices of the decoded chunks for an
/// export (no copy into a fresh buffer), one buffer for a file.
fn read_piece(
    source: &Source,
    offset: u64,
    length: u64,
) -> tokio::task::JoinHandle<io::Result<Vec<Bytes>>> {
    match source {
        Source::Export(export) => {
            let export = Arc::clone(export);
            tokio::task::spawn_blocking(move || export.read_bytes(offset, length as usize))
        }
        Source::File(file) => {
            let file = Arc::clone(file);
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; length as usize];
                file.read_exact_at(&mut buf, offset)
                    .map(|()| vec![Bytes::from(buf)])
            })
        }
    }
}

struct BodyStream {
    source: Source,
    segments: VecDeque<Segment>,
    /// The next piece, being read ahead (its offset and the read).
    ahead: Option<(u64, tokio::task::JoinHandle<io::Result<Vec<Bytes>>>)>,
    report: Report,
}

impl BodyStream {
    /// The first of `parts` to send now; the rest go out next, in order, before anything else.
    fn send(&mut self, mut parts: Vec<Bytes>) -> Bytes {
        let first = if parts.is_empty() {
            Bytes::new()
        } else {
            parts.remove(0)
        };
        for part in parts.into_iter().rev() {
            self.segments.push_front(Segment::Literal(part));
        }
        self.finished_if_done();
        first
    }
}

impl BodyStream {
    fn finished_if_done(&mut self) {
        if self.segments.is_empty() {
            self.report.ok = true;
        }
    }
}

/// Reports the request to the metrics when its body ends or the client goes away.
struct Report {
    observer: Arc<dyn IoObserver>,
    export: String,
    client: String,
    started: Instant,
    bytes: u64,
    ok: bool,
}

impl Drop for Report {
    fn drop(&mut self) {
        self.observer.request_finished(
            &self.export,
            &self.client,
            Op::Read,
            self.bytes,
            self.started.elapsed(),
            self.ok,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_compare_as_the_rfc_says() {
        let etag = "\"abc\"";
        assert!(none_match_hits("\"x\", W/\"abc\"", etag));
        assert!(none_match_hits("*", etag));
        assert!(!none_match_hits("\"abd\"", etag));
        assert!(if_range_holds("\"abc\"", etag, None));
        assert!(!if_range_holds("W/\"abc\"", etag, None));
        let date = "Sun, 06 Dec 2026 07:00:00 GMT";
        assert!(if_range_holds(date, etag, Some(date)));
        assert!(!if_range_holds(
            "Sun, 06 Dec 2026 07:00:01 GMT",
            etag,
            Some(date)
        ));
    }
}
