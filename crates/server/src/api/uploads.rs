//! Resumable uploads that curl and a browser can drive, ending in a library add:
//!
//! - `POST /api/v1/uploads` `{"item": NAME, "length": N?, "note"?, "labels"?}` -> 201,
//!   `Location: /api/v1/uploads/ID`, `Upload-Offset: 0`;
//! - `PATCH /api/v1/uploads/ID` with `Upload-Offset: N` (or `Content-Range: bytes N-M/TOTAL`)
//!   and the next bytes (`application/offset+octet-stream` or `application/octet-stream`)
//!   appends them -> 204 with the new `Upload-Offset`; an offset other than the current one is
//!   409 with the current one, so a client that lost its connection asks and resumes;
//! - `HEAD /api/v1/uploads/ID` tells `Upload-Offset` (and `Upload-Length` when known);
//! - `POST /api/v1/uploads/ID/complete` adds the bytes to the library through `Library::add`
//!   (the same path, checks and dedup as `vmedia library add`) as a task;
//! - `DELETE /api/v1/uploads/ID` abandons it.
//!
//! State: `STATE/uploads/ID.json` (what to add, written atomically) and `ID.part` (the bytes
//! so far). The offset is the part file's length, so an upload survives a daemon restart; the
//! bytes of an interrupted PATCH that reached the file count.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use vmedia_io::{AtomicFile, Durability, OverwritePolicy};
use vmedia_library::{AddOptions, AddSource, VersionSpec};

use super::{ApiState, Problem};
use crate::auth::Principal;
use crate::http::ErrorBody;

/// Largest upload: larger than any ISO or disk image a library holds, small enough that a
/// client cannot claim the whole disk by a header.
pub const MAX_UPLOAD_BYTES: u64 = 4 << 40;
/// Uploads in progress at once (each holds a part file).
pub const MAX_OPEN_UPLOADS: usize = 256;
/// Decimal digits of an offset or length (u64 has 20).
const MAX_DIGITS: usize = 20;
/// Longest header value the parser looks at.
pub const MAX_HEADER: usize = 128;

/// Why the offset headers of an append are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("send Upload-Offset: N or Content-Range: bytes N-M/TOTAL with the bytes")]
    Missing,
    #[error("Upload-Offset is not a decimal number: {0:?}")]
    BadOffset(String),
    #[error("Content-Range is not `bytes START-END/TOTAL` (or `/*`): {0:?}")]
    BadRange(String),
    #[error("Upload-Offset {offset} and Content-Range start {start} disagree")]
    Disagree { offset: u64, start: u64 },
    #[error("Content-Range covers {range} bytes but Content-Length is {length}")]
    LengthMismatch { range: u64, length: u64 },
}

/// Where an append starts and what it says about the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Append {
    pub offset: u64,
    /// Bytes this append carries, when the headers say.
    pub length: Option<u64>,
    /// The whole upload's length, when the client says.
    pub total: Option<u64>,
}

fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses an append's `Upload-Offset`, `Content-Range` and `Content-Length` header values.
/// Pure and bounded: the fuzz target `api_upload_headers` drives it.
pub fn parse_append(
    upload_offset: Option<&str>,
    content_range: Option<&str>,
    content_length: Option<&str>,
) -> Result<Append, AppendError> {
    let clip = |t: &str| t.chars().take(MAX_HEADER).collect::<String>();
    let offset = match upload_offset {
        Some(text) => Some(number(text).ok_or_else(|| AppendError::BadOffset(clip(text)))?),
        None => None,
    };
    let length = match content_length {
        Some(text) => number(text),
        None => None,
    };
    let range = match content_range {
        Some(text) => {
            let bad = || AppendError::BadRange(clip(text));
            let rest = text.trim().strip_prefix("bytes ").ok_or_else(bad)?;
            let (span, total) = rest.split_once('/').ok_or_else(bad)?;
            let total = match total.trim() {
                "*" => None,
                t => Some(number(t).ok_or_else(bad)?),
            };
            let (start, end) = span.split_once('-').ok_or_else(bad)?;
            let start = number(start).ok_or_else(bad)?;
            let end = number(end).ok_or_else(bad)?;
            if end < start || total.is_some_and(|t| end >= t) {
                return Err(bad());
            }
            // `0-18446744073709551615/*` would overflow: refuse rather than wrap.
            let count = (end - start).checked_add(1).ok_or_else(bad)?;
            Some((start, count, total))
        }
        None => None,
    };
    match (offset, range) {
        (None, None) => Err(AppendError::Missing),
        (Some(offset), None) => Ok(Append {
            offset,
            length,
            total: None,
        }),
        (offset, Some((start, count, total))) => {
            if let Some(offset) = offset {
                if offset != start {
                    return Err(AppendError::Disagree { offset, start });
                }
            }
            if let Some(length) = length {
                if length != count {
                    return Err(AppendError::LengthMismatch {
                        range: count,
                        length,
                    });
                }
            }
            Ok(Append {
                offset: start,
                length: Some(count),
                total,
            })
        }
    }
}

/// Fuzz entry point (target `api_upload_headers`): `data` is header lines (`Upload-Offset: N`,
/// `Content-Range: ...`, `Content-Length: N`, any order, others ignored); true when the append
/// is accepted. Checks what every accepted append promises: a range lies inside its total.
pub fn fuzz_headers(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let (mut offset, mut range, mut length) = (None, None, None);
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "upload-offset" => offset = Some(value.trim()),
            "content-range" => range = Some(value.trim()),
            "content-length" => length = Some(value.trim()),
            _ => {}
        }
    }
    match parse_append(offset, range, length) {
        Ok(append) => {
            if let (Some(count), Some(total)) = (append.length, append.total) {
                let end = append.offset.checked_add(count);
                assert!(end.is_some_and(|end| end <= total), "{append:?}");
            }
            true
        }
        Err(_) => false,
    }
}

/// `POST /api/v1/uploads`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The library item the upload becomes a version of.
    pub item: String,
    /// The whole length, when known (appends past it are refused; complete needs it all).
    pub length: Option<u64>,
    pub note: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// An upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadInfo {
    pub id: String,
    pub item: String,
    pub length: Option<u64>,
    /// Bytes received so far: where the next append starts.
    pub offset: u64,
    pub note: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub owner: String,
    pub created: String,
}

/// The uploads of one state folder.
pub struct Uploads {
    dir: PathBuf,
    /// One lock per upload: a second PATCH while one runs is 409, not interleaved bytes.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn check_id(id: &str) -> Result<(), Problem> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such upload: {}",
                id.chars().take(40).collect::<String>()
            ),
        ))
    }
}

fn io_problem(what: &str, e: std::io::Error) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

impl Uploads {
    pub fn open(state_dir: &std::path::Path) -> std::io::Result<Uploads> {
        let dir = state_dir.join("uploads");
        std::fs::create_dir_all(&dir)?;
        Ok(Uploads {
            dir,
            busy: Mutex::new(HashMap::new()),
        })
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(busy.entry(id.to_string()).or_default())
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Reads an upload's record and current offset.
    pub fn info(&self, id: &str) -> Result<UploadInfo, Problem> {
        check_id(id)?;
        let bytes = match std::fs::read(self.meta_path(id)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("no such upload: {id}"),
                ))
            }
            Err(e) => return Err(io_problem("cannot read the upload", e)),
        };
        let mut info: UploadInfo = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the upload {id} is damaged: {e}"),
            )
        })?;
        info.offset = std::fs::metadata(self.part_path(id))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(info)
    }

    fn create(&self, request: UploadRequest, owner: &str) -> Result<UploadInfo, Problem> {
        VersionSpec::current(&request.item)?;
        if request.length.is_some_and(|l| l > MAX_UPLOAD_BYTES) {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an upload is at most {MAX_UPLOAD_BYTES} bytes"),
            ));
        }
        if self.count() >= MAX_OPEN_UPLOADS {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_OPEN_UPLOADS} uploads are open; complete or delete some"),
            ));
        }
        let mut bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let info = UploadInfo {
            id: hex::encode(bytes),
            item: request.item,
            length: request.length,
            offset: 0,
            note: request.note,
            labels: request.labels,
            owner: owner.to_string(),
            created: jiff::Timestamp::now().to_string(),
        };
        std::fs::File::create(self.part_path(&info.id))
            .map_err(|e| io_problem("cannot create the upload", e))?;
        let mut file = AtomicFile::create(&self.meta_path(&info.id), OverwritePolicy::Replace)
            .map_err(|e| io_problem("cannot create the upload", e))?;
        let text = serde_json::to_vec_pretty(&info)
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        file.file_mut()
            .write_all(&text)
            .map_err(|e| io_problem("cannot create the upload", e))?;
        file.commit_with(Durability::Flush)
            .map_err(|e| io_problem("cannot create the upload", e))?;
        Ok(info)
    }

    fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.meta_path(id));
        let _ = std::fs::remove_file(self.part_path(id));
    }
}

fn offset_headers(info: &UploadInfo) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&info.offset.to_string()) {
        headers.insert("upload-offset", v);
    }
    if let Some(length) = info.length {
        if let Ok(v) = HeaderValue::from_str(&length.to_string()) {
            headers.insert("upload-length", v);
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// Starts an upload.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "uploads",
    request_body = UploadRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = UploadInfo, headers(("Location" = String), ("Upload-Offset" = u64))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 413, body = ErrorBody, content_type = "application/problem+json"),
        (status = 415, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn upload_create(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<UploadRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    // An item hidden from the caller (per-item access) takes no new version from it either.
    super::access::require(&state, &who, "-", "POST /api/v1/uploads", &request.item)?;
    let uploads = Arc::clone(&state.uploads);
    let info = super::blocking(move || uploads.create(request, &who.name)).await?;
    let mut headers = offset_headers(&info);
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/uploads/{}", info.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(info)).into_response())
}

/// An upload's state.
#[utoipa::path(get, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path)),
    responses((status = 200, body = UploadInfo),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn upload_show(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let info = state.uploads.info(&id)?;
    Ok((offset_headers(&info), Json(info)).into_response())
}

/// Where the next append starts (`Upload-Offset`).
#[utoipa::path(head, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path)),
    responses((status = 200, description = "No body", headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 404, description = "No such upload")))]
pub async fn upload_head(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let info = state.uploads.info(&id)?;
    Ok((StatusCode::OK, offset_headers(&info)).into_response())
}

/// Appends bytes at `Upload-Offset` (or the `Content-Range` start).
#[utoipa::path(patch, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path),
        ("Upload-Offset" = Option<u64>, Header, description = "Where these bytes start"),
        ("Content-Range" = Option<String>, Header, description = "bytes START-END/TOTAL, instead of Upload-Offset")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses((status = 204, description = "Appended", headers(("Upload-Offset" = u64))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json", headers(("Upload-Offset" = u64))),
        (status = 413, body = ErrorBody, content_type = "application/problem+json"),
        (status = 415, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn upload_append(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = text("content-type").unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/offset+octet-stream" && media != "application/octet-stream" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the bytes as Content-Type: application/offset+octet-stream (or application/octet-stream)",
        ));
    }
    let append = parse_append(
        text("upload-offset"),
        text("content-range"),
        text("content-length"),
    )
    .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let lock = {
        check_id(&id)?;
        state.uploads.lock_of(&id)
    };
    let Ok(_guard) = lock.try_lock() else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "another append to this upload is running",
        ));
    };
    let info = state.uploads.info(&id)?;
    let conflict = |detail: String| {
        Problem::new(StatusCode::CONFLICT, detail).with_header(
            header::HeaderName::from_static("upload-offset"),
            info.offset.to_string(),
        )
    };
    if append.offset != info.offset {
        return Err(conflict(format!(
            "the upload is at offset {}, not {}: HEAD it and send from there",
            info.offset, append.offset
        )));
    }
    if let (Some(total), Some(length)) = (append.total, info.length) {
        if total != length {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "Content-Range says {total} bytes in all; the upload was created with {length}"
                ),
            ));
        }
    }
    let limit = info
        .length
        .or(append.total)
        .unwrap_or(MAX_UPLOAD_BYTES)
        .min(MAX_UPLOAD_BYTES);
    if append
        .length
        .is_some_and(|l| info.offset.checked_add(l).is_none_or(|end| end > limit))
    {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the bytes would end past the upload's length {limit}"),
        ));
    }
    let part = state.uploads.part_path(&id);
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .await
        .map_err(|e| io_problem("cannot open the upload", e))?;
    let mut offset = info.offset;
    let mut stream = body.into_data_stream();
    let mut failure = None;
    while let Some(frame) = stream.next().await {
        let bytes = match frame {
            Ok(bytes) => bytes,
            Err(e) => {
                // The client went away: what reached the file stays, and HEAD tells where.
                failure = Some(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body ended early: {e}"),
                ));
                break;
            }
        };
        let end = offset.saturating_add(bytes.len() as u64);
        if end > limit {
            failure = Some(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the bytes would end past the upload's length {limit}"),
            ));
            break;
        }
        if let Err(e) = file.write_all(&bytes).await {
            failure = Some(io_problem("cannot write the upload", e));
            break;
        }
        offset = end;
    }
    let synced = file.sync_data().await;
    if let Some(problem) = failure {
        return Err(problem.with_header(
            header::HeaderName::from_static("upload-offset"),
            offset.to_string(),
        ));
    }
    synced.map_err(|e| io_problem("cannot write the upload", e))?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        headers.insert("upload-offset", v);
    }
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// Adds the uploaded bytes to the library (a task whose result is the `AddReport`); the
/// upload is gone once the add succeeded.
#[utoipa::path(post, path = "/api/v1/uploads/{id}/complete", tag = "uploads",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, body = crate::api::tasks::TaskInfo, headers(("Location" = String))),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn upload_complete(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let info = state.uploads.info(&id)?;
    if let Some(length) = info.length {
        if info.offset != length {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "{} of {length} bytes received; send the rest first",
                    info.offset
                ),
            )
            .with_header(
                header::HeaderName::from_static("upload-offset"),
                info.offset.to_string(),
            ));
        }
    }
    let lock = state.uploads.lock_of(&id);
    let Ok(guard) = lock.clone().try_lock_owned() else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "an append to this upload is running",
        ));
    };
    let st = Arc::clone(&state);
    let actor = who.name.clone();
    let item = info.item.clone();
    Ok(state.tasks.start(
        "upload",
        &item,
        &who,
        Box::new(move |progress| {
            let _guard = guard;
            let options = AddOptions {
                note: Some(
                    info.note
                        .clone()
                        .unwrap_or_else(|| format!("uploaded by {actor} through the API")),
                ),
                labels: info.labels.clone().into_iter().collect(),
                ..AddOptions::default()
            };
            let part = st.uploads.part_path(&info.id);
            let report = st
                .library()
                .add(&info.item, AddSource::File(part), &options, progress)?;
            st.uploads.remove(&info.id);
            serde_json::to_value(report)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }),
    ))
}

/// Abandons an upload and deletes its bytes.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn upload_abort(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    state.uploads.info(&id)?;
    let lock = state.uploads.lock_of(&id);
    let Ok(_guard) = lock.try_lock() else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "an append to this upload is running",
        ));
    };
    state.uploads.remove(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_ranges_parse_and_must_agree() {
        assert_eq!(
            parse_append(Some("0"), None, Some("10")).unwrap(),
            Append {
                offset: 0,
                length: Some(10),
                total: None
            }
        );
        assert_eq!(
            parse_append(None, Some("bytes 100-199/1000"), Some("100")).unwrap(),
            Append {
                offset: 100,
                length: Some(100),
                total: Some(1000)
            }
        );
        assert_eq!(
            parse_append(Some("5"), Some("bytes 5-9/*"), None)
                .unwrap()
                .total,
            None
        );
        assert_eq!(parse_append(None, None, None), Err(AppendError::Missing));
        assert!(matches!(
            parse_append(Some("-1"), None, None),
            Err(AppendError::BadOffset(_))
        ));
        assert!(matches!(
            parse_append(Some("99999999999999999999999"), None, None),
            Err(AppendError::BadOffset(_))
        ));
        assert!(matches!(
            parse_append(Some("1"), Some("bytes 2-3/4"), None),
            Err(AppendError::Disagree { .. })
        ));
        assert!(matches!(
            parse_append(None, Some("bytes 9-3/40"), None),
            Err(AppendError::BadRange(_))
        ));
        assert!(matches!(
            parse_append(None, Some("bytes 0-9/5"), None),
            Err(AppendError::BadRange(_))
        ));
        assert!(matches!(
            parse_append(None, Some("bytes 0-9/50"), Some("3")),
            Err(AppendError::LengthMismatch { .. })
        ));
        assert!(matches!(
            parse_append(None, Some("items 0-9/50"), None),
            Err(AppendError::BadRange(_))
        ));
    }
}
