//! The library's object store over HTTPS, for replication: another site's `library sync`
//! (and `vmedia serve --replicate-to/--mirror-from`) reaches this daemon's library as a
//! location `https://HOST:PORT` through these routes, with the same operations and
//! conditional writes as a folder or S3 store (`vmedia_library::store::RemoteStore` is the
//! client). Administrators only: a store-level writer bypasses per-item rules, so it is a
//! replication credential, not a user's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use vmedia_library::store::{check_key, Etag, PutOutcome, Store, StoreError};

use super::{blocking, require_administrator, ApiState, Problem};
use crate::auth::Principal;
use crate::http::ErrorBody;
use crate::peer::ListedObject;

/// Largest object accepted or served: a manifest at its limit is the largest object a
/// library writes (chunks are at most 16 MiB sealed).
pub const MAX_STORE_OBJECT: u64 = {
    let manifest = vmedia_library::manifest::MAX_MANIFEST_BYTES;
    let floor = 32 << 20;
    if manifest > floor {
        manifest
    } else {
        floor
    }
};

/// One store operation for an administrator, off the runtime's workers, the key checked first
/// (400 for a key no library builds); a failing store is 502.
async fn on_store<T: Send + 'static>(
    state: &ApiState,
    who: &Principal,
    key: Option<&str>,
    operation: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Problem> {
    require_administrator(who, "use the store routes (replication)")?;
    if let Some(key) = key {
        check_key("store", key)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    let library = state.library().clone();
    blocking(move || {
        operation(library.raw_store())
            .map_err(|e| Problem::new(StatusCode::BAD_GATEWAY, e.to_string()))
    })
    .await
}

fn quoted(etag: &Etag) -> String {
    format!("\"{}\"", etag.0)
}

/// One object's bytes with its tag.
#[utoipa::path(get, path = "/api/v1/store/objects/{key}", tag = "replication",
    params(("key" = String, Path, description = "an object key of the library (may hold '/')")),
    responses((status = 200, description = "the object's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn object_get(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Response, Problem> {
    let lookup = key.clone();
    let object = on_store(&state, &who, Some(&key), move |store| {
        store.get_tagged(&lookup, MAX_STORE_OBJECT)
    })
    .await?;
    let Some(object) = object else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no object {key}"),
        ));
    };
    let mut response = object.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&quoted(&object.etag)) {
        headers.insert(header::ETAG, value);
    }
    Ok(response)
}

/// An object's size and time (`X-Vmedia-Modified`).
#[utoipa::path(head, path = "/api/v1/store/objects/{key}", tag = "replication",
    params(("key" = String, Path, description = "an object key of the library")),
    responses((status = 200, description = "the object exists"), (status = 404, description = "absent")))]
pub async fn object_head(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Response, Problem> {
    let lookup = key.clone();
    let meta = on_store(&state, &who, Some(&key), move |store| store.head(&lookup)).await?;
    let Some(meta) = meta else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Some(modified) = meta.modified {
        if let Ok(value) = HeaderValue::from_str(&modified.to_string()) {
            headers.insert("x-vmedia-modified", value);
        }
    }
    Ok(response)
}

/// Writes an object: unconditionally, or with `If-None-Match: *` only when absent, or with
/// `If-Match: TAG` only when unchanged (412 when the condition fails).
#[utoipa::path(put, path = "/api/v1/store/objects/{key}", tag = "replication",
    params(("key" = String, Path, description = "an object key of the library"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: write only when absent"),
        ("If-Match" = Option<String>, Header, description = "write only when the tag is this")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "written"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 412, body = ErrorBody, content_type = "application/problem+json"),
        (status = 413, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn object_put(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    require_administrator(&who, "use the store routes (replication)")?;
    let text = |name: header::HeaderName| -> Result<Option<String>, Problem> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    Problem::new(StatusCode::BAD_REQUEST, format!("{name} is not text"))
                })
            })
            .transpose()
    };
    enum Condition {
        None,
        Absent,
        Matches(Etag),
    }
    let condition = match (text(header::IF_NONE_MATCH)?, text(header::IF_MATCH)?) {
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give If-None-Match: * or If-Match, not both",
            ))
        }
        (Some(v), None) if v.trim() == "*" => Condition::Absent,
        (Some(_), None) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "If-None-Match takes only * here",
            ))
        }
        (None, Some(v)) => Condition::Matches(Etag(
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string(),
        )),
        (None, None) => Condition::None,
    };
    let bytes = axum::body::to_bytes(body, MAX_STORE_OBJECT as usize)
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the object is over {MAX_STORE_OBJECT} bytes or its body broke: {e}"),
            )
        })?;
    let lookup = key.clone();
    let outcome = on_store(&state, &who, Some(&key), move |store| match condition {
        Condition::None => store.put(&lookup, &bytes).map(|_| PutOutcome::Written),
        Condition::Absent => store.put_if_absent(&lookup, &bytes),
        Condition::Matches(etag) => store.put_if_match(&lookup, &bytes, &etag),
    })
    .await?;
    match outcome {
        PutOutcome::Written => Ok(StatusCode::CREATED.into_response()),
        PutOutcome::Conflict => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "the object exists (If-None-Match) or changed (If-Match)",
        )),
    }
}

/// Deletes an object (absent is not an error).
#[utoipa::path(delete, path = "/api/v1/store/objects/{key}", tag = "replication",
    params(("key" = String, Path, description = "an object key of the library")),
    responses((status = 204, description = "deleted"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn object_delete(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Response, Problem> {
    let lookup = key.clone();
    on_store(&state, &who, Some(&key), move |store| store.delete(&lookup)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Keys starting with this (a folder-like prefix ending in `/`, or empty for all).
    #[serde(default)]
    pub prefix: String,
}

/// Every object under a prefix.
#[utoipa::path(get, path = "/api/v1/store/list", tag = "replication", params(ListQuery),
    responses((status = 200, body = Vec<ListedObject>),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Result<Response, Problem> {
    let listed = on_store(&state, &who, None, move |store| store.list(&query.prefix)).await?;
    let listed: Vec<ListedObject> = listed
        .into_iter()
        .map(|meta| ListedObject {
            key: meta.key,
            size: meta.size,
            modified: meta.modified.map(|t| t.to_string()),
        })
        .collect();
    Ok(Json(listed).into_response())
}

/// Makes the writes so far durable (a folder's syncfs).
#[utoipa::path(post, path = "/api/v1/store/flush", tag = "replication",
    responses((status = 204, description = "durable"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn flush(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, Problem> {
    on_store(&state, &who, None, |store| store.flush()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// This daemon's continuous replication: each peer with its lag, pending bytes and last error
/// (any signed-in user; no peers when the daemon replicates nothing).
#[utoipa::path(get, path = "/api/v1/replication", tag = "replication",
    responses((status = 200, body = crate::replicate::ReplicationReport)))]
pub async fn replication(State(state): State<Arc<ApiState>>) -> Response {
    let report = match &state.replication {
        Some(replication) => replication.report(),
        None => crate::replicate::ReplicationReport {
            interval_seconds: 0,
            peers: Vec::new(),
        },
    };
    Json(report).into_response()
}
