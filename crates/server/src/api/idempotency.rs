//! `Idempotency-Key` on creates (every `POST`): the first answer to a key is kept (status,
//! `Location`, `Content-Type`, body) and a repeated request with the same key, by the same
//! principal, to the same path, with the same body gets that answer again without running
//! twice. The same key with another body or path is 422; while the first is still running,
//! 409. Answers are kept in memory for `KEEP_FOR` (a restarted daemon forgets them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::MAX_JSON_BODY;
use crate::auth::Principal;
use crate::http::error_response;

/// How long a first answer is replayed.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Answers kept at most; the oldest go first.
pub const MAX_KEPT: usize = 10_000;
/// Largest answer body kept (creates answer with a small JSON document).
pub const MAX_KEPT_BODY: usize = 1 << 20;
/// Longest key accepted (a UUID is 36).
pub const MAX_KEY: usize = 255;

#[derive(Clone)]
enum Entry {
    Running {
        fingerprint: [u8; 32],
        since: Instant,
    },
    Done {
        fingerprint: [u8; 32],
        at: Instant,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// The kept answers.
#[derive(Default)]
pub struct Replies {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Replies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The middleware (inside authentication, so the principal is known).
pub async fn idempotent(
    State(replies): State<Arc<Replies>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
    else {
        return next.run(request).await;
    };
    let key = match key {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY => key,
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Idempotency-Key must be 1 to {MAX_KEY} visible characters"),
            )
        }
    };
    let who = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_JSON_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a create's body is at most {MAX_JSON_BODY} bytes"),
            )
        }
    };
    let mut hash = Sha256::new();
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(&bytes);
    let fingerprint: [u8; 32] = hash.finalize().into();
    let slot = format!("{who}\0{key}");
    {
        let mut entries = replies.lock();
        entries.retain(|_, e| match e {
            Entry::Running { since, .. } => since.elapsed() < KEEP_FOR,
            Entry::Done { at, .. } => at.elapsed() < KEEP_FOR,
        });
        match entries.get(&slot) {
            Some(Entry::Running { fingerprint: f, .. })
            | Some(Entry::Done { fingerprint: f, .. })
                if *f != fingerprint =>
            {
                return error_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this Idempotency-Key was used for another request; use a new key",
                );
            }
            Some(Entry::Running { .. }) => {
                return error_response(
                    StatusCode::CONFLICT,
                    "the first request with this Idempotency-Key is still running; retry later",
                );
            }
            Some(Entry::Done {
                status,
                headers,
                body,
                ..
            }) => {
                let mut response = (*status, headers.clone(), body.clone()).into_response();
                response.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
                return response;
            }
            None => {}
        }
        if entries.len() >= MAX_KEPT {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| match e {
                    Entry::Running { since, .. } => *since,
                    Entry::Done { at, .. } => *at,
                })
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            slot.clone(),
            Entry::Running {
                fingerprint,
                since: Instant::now(),
            },
        );
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    // Server errors are not kept: the client may retry them with the same key.
    if parts.status.is_server_error() {
        replies.lock().remove(&slot);
        return Response::from_parts(parts, body);
    }
    let body = match axum::body::to_bytes(body, MAX_KEPT_BODY).await {
        Ok(body) => body,
        Err(_) => {
            replies.lock().remove(&slot);
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the answer was too large to keep for Idempotency-Key",
            );
        }
    };
    let mut headers = HeaderMap::new();
    for name in [header::LOCATION, header::CONTENT_TYPE, header::ETAG] {
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    for name in ["upload-offset", "upload-length"] {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(name, value.clone());
        }
    }
    replies.lock().insert(
        slot,
        Entry::Done {
            fingerprint,
            at: Instant::now(),
            status: parts.status,
            headers,
            body: body.clone(),
        },
    );
    Response::from_parts(parts, Body::from(body))
}
