//! hyper serving files from a folder with GET (whole files), two runtime workers like vmedia's
//! netboot server, for bench/netboot.sh: `hyper-files ROOT ADDR [stream|memory]`.
//! `stream` (default) reads each response from the file in 256 KiB chunks (tokio::fs, i.e. the
//! blocking pool, as a daemon serving large images must); `memory` serves every file from a
//! copy read once at start (hyper's best case: no file I/O per request, only the copy into
//! the socket).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Bytes read per chunk when streaming from the file.
const CHUNK: usize = 256 * 1024;

type Body = BoxBody<Bytes, std::io::Error>;

struct Files {
    root: PathBuf,
    memory: Option<HashMap<String, Bytes>>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

async fn serve(files: Arc<Files>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let name = request.uri().path().trim_start_matches('/').to_string();
    if name.is_empty() || name.split('/').any(|part| part == "..") {
        return Ok(text(StatusCode::FORBIDDEN, "refused\n"));
    }
    if let Some(memory) = &files.memory {
        return Ok(match memory.get(&name) {
            Some(bytes) => {
                let len = bytes.len();
                let mut response = Response::new(
                    Full::new(bytes.clone())
                        .map_err(|never: Infallible| match never {})
                        .boxed(),
                );
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, len.into());
                response
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        });
    }
    let path = files.root.join(&name);
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let Ok(meta) = file.metadata().await else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map_ok(Frame::data);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, meta.len().into());
    Ok(response)
}

fn load(root: &Path) -> HashMap<String, Bytes> {
    let mut memory = HashMap::new();
    for entry in std::fs::read_dir(root).expect("read the root") {
        let entry = entry.expect("read the root");
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let name = entry.file_name().to_string_lossy().into_owned();
            memory.insert(name, Bytes::from(std::fs::read(entry.path()).expect("read a file")));
        }
    }
    memory
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().expect("usage: hyper-files ROOT ADDR [stream|memory]"));
    let addr: std::net::SocketAddr = args
        .next()
        .expect("usage: hyper-files ROOT ADDR [stream|memory]")
        .parse()
        .expect("ADDR is host:port");
    let memory = match args.next().as_deref() {
        None | Some("stream") => None,
        Some("memory") => Some(load(&root)),
        Some(other) => panic!("unknown mode {other:?}: stream or memory"),
    };
    let files = Arc::new(Files { root, memory });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let files = files.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| serve(files.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
