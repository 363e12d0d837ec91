//! Library resources: items (search, label filter), versions, history (the timeline),
//! rollback (If-Match on the item), removal, prune preview, verify (a task) and download
//! (`http::images`' validators and ranges, called, not copied). The bodies are the library's
//! typed reports.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmedia_library::{
    EventReport, HistoryReport, HistoryVersion, ItemSummary, PruneReport, RollbackTarget,
    VersionReport, VersionSpec,
};

use super::{blocking, check_if_match, page_response, paginate, ApiState, PageQuery, Problem};
use crate::auth::Principal;
use crate::http::{ErrorBody, Peer};

/// `GET /api/v1/library/items`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Items whose name contains this (ASCII case ignored).
    pub q: Option<String>,
    /// `KEY=VALUE`: items whose current version carries this label.
    pub label: Option<String>,
    /// Include removed items.
    #[serde(default)]
    pub removed: bool,
}

/// A page of items.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemSummary>,
    /// The next page's URL, when there is one.
    pub next: Option<String>,
}

/// A page of versions.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionPage {
    pub items: Vec<HistoryVersion>,
    pub next: Option<String>,
}

/// `POST /api/v1/library/items/NAME/rollback`: `to` a version, or the version current `at` a
/// time (RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub to: Option<u64>,
    pub at: Option<String>,
    pub note: Option<String>,
}

/// Checks an item name the way the library does (no `/`, no `..`): 400 otherwise.
fn item_name(name: &str) -> Result<(), Problem> {
    VersionSpec::current(name)?;
    Ok(())
}

/// The spec of `NAME` at `version`: a number, `current`, or `sha256:...`.
fn version_spec(name: &str, version: &str) -> Result<String, Problem> {
    item_name(name)?;
    let spec = if version == "current" {
        name.to_string()
    } else {
        format!("{name}@{version}")
    };
    VersionSpec::parse(&spec)?;
    Ok(spec)
}

/// The item's ETag: changes with every event of its timeline.
pub fn item_etag(history: &HistoryReport) -> String {
    let mut hash = Sha256::new();
    hash.update(history.name.as_bytes());
    hash.update(format!(
        "|{:?}|{}|{}",
        history.current,
        history.removed,
        history.events.len()
    ));
    if let Some(last) = history.events.last() {
        hash.update(last.time.as_bytes());
    }
    format!("\"{}\"", &hex::encode(hash.finalize())[..16])
}

/// Items, sorted by name.
#[utoipa::path(get, path = "/api/v1/library/items", tag = "library", params(ItemsQuery),
    responses((status = 200, body = ItemPage),
        (status = 400, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn items_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let label = match &query.label {
        Some(text) => Some(
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "label is KEY=VALUE"))?,
        ),
        None => None,
    };
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let st = Arc::clone(&state);
    let (items, next) = blocking(move || {
        let library = st.library();
        let needle = query.q.as_deref().map(str::to_ascii_lowercase);
        let access = st.access.current();
        let mut items: Vec<ItemSummary> = library
            .list(query.removed)?
            .into_iter()
            // Items the caller may not see are left out (per-item access, `access.rs`).
            .filter(|i| access.visible(&who, &i.name))
            .filter(|i| {
                needle
                    .as_deref()
                    .is_none_or(|n| i.name.to_ascii_lowercase().contains(n))
            })
            .collect();
        if let Some((key, value)) = &label {
            let mut kept = Vec::new();
            for item in items {
                let Ok(spec) = VersionSpec::current(&item.name) else {
                    continue;
                };
                if let Ok(report) = library.show(&spec) {
                    if report.labels.get(key) == Some(value) {
                        kept.push(item);
                    }
                }
            }
            items = kept;
        }
        paginate(items, |i| i.name.clone(), &page)
    })
    .await?;
    Ok(page_response(
        "/api/v1/library/items",
        raw.as_deref(),
        next,
        |next| ItemPage { items, next },
    ))
}

/// One item: its history (versions and events), with the ETag rollback and removal match.
#[utoipa::path(get, path = "/api/v1/library/items/{name}", tag = "library",
    params(("name" = String, Path)),
    responses((status = 200, body = HistoryReport, headers(("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn item_show(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    item_name(&name)?;
    let history = blocking(move || Ok(state.library().history(&name)?)).await?;
    let etag = item_etag(&history);
    Ok(([(header::ETAG, etag)], Json(history)).into_response())
}

/// The item's timeline: every add, rollback, removal and restore.
#[utoipa::path(get, path = "/api/v1/library/items/{name}/history", tag = "library",
    params(("name" = String, Path)),
    responses((status = 200, body = HistoryReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn item_history(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    item_show(State(state), Path(name)).await
}

/// The item's versions, oldest first.
#[utoipa::path(get, path = "/api/v1/library/items/{name}/versions", tag = "library",
    params(("name" = String, Path), PageQuery),
    responses((status = 200, body = VersionPage),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn versions_list(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(page) = page?;
    item_name(&name)?;
    let path = format!("/api/v1/library/items/{name}/versions");
    let (items, next) = blocking(move || {
        let history = state.library().history(&name)?;
        paginate(history.versions, |v| format!("{:020}", v.version), &page)
    })
    .await?;
    Ok(page_response(&path, raw.as_deref(), next, |next| {
        VersionPage { items, next }
    }))
}

/// One version in full (metadata, labels, what the image is).
#[utoipa::path(get, path = "/api/v1/library/items/{name}/versions/{version}", tag = "library",
    params(("name" = String, Path), ("version" = String, Path, description = "A number, `current` or `sha256:HEX`")),
    responses((status = 200, body = VersionReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn version_show(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let spec = VersionSpec::parse(&version_spec(&name, &version)?)?;
    let report = blocking(move || Ok(state.library().show(&spec)?)).await?;
    Ok(Json(report).into_response())
}

/// The version's bytes, with `Range`, `If-Range`, `If-None-Match` (ETag is the SHA-256).
#[utoipa::path(get, path = "/api/v1/library/items/{name}/versions/{version}/content", tag = "library",
    params(("name" = String, Path), ("version" = String, Path),
        ("Range" = Option<String>, Header, description = "bytes=START-END")),
    responses((status = 200, description = "The image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested ranges"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 416, description = "No requested range lies in the image")))]
pub async fn version_content(
    State(state): State<Arc<ApiState>>,
    Extension(peer): Extension<Peer>,
    Path((name, version)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let spec = version_spec(&name, &version)?;
    Ok(crate::http::images::image(
        State(Arc::clone(&state.app)),
        Extension(peer),
        Path(spec),
        method,
        headers,
    )
    .await)
}

/// Makes an earlier version current; needs `If-Match` with the item's ETag.
#[utoipa::path(post, path = "/api/v1/library/items/{name}/rollback", tag = "library",
    params(("name" = String, Path), ("If-Match" = String, Header, description = "The item's ETag")),
    request_body = RollbackRequest,
    responses((status = 200, body = EventReport, headers(("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 412, body = ErrorBody, content_type = "application/problem+json"),
        (status = 428, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn item_rollback(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    item_name(&name)?;
    let target = match (request.to, &request.at) {
        (Some(v), None) => RollbackTarget::Version(v),
        (None, Some(at)) => RollbackTarget::At(
            at.parse()
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("at {at:?}: {e}")))?,
        ),
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give one of \"to\" (a version) or \"at\" (an RFC 3339 time)",
            ))
        }
    };
    let (report, etag) = blocking(move || {
        let library = state.library();
        let history = library.history(&name)?;
        check_if_match(&headers, &item_etag(&history), true)?;
        let note = request
            .note
            .clone()
            .unwrap_or_else(|| format!("by {} through the API", who.name));
        let report = library.rollback(&name, target, Some(&note))?;
        let etag = item_etag(&library.history(&name)?);
        Ok((report, etag))
    })
    .await?;
    Ok(([(header::ETAG, etag)], Json(report)).into_response())
}

/// Removes (hides) the item; its versions stay until pruned. `If-Match` is honoured.
#[utoipa::path(delete, path = "/api/v1/library/items/{name}", tag = "library",
    params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = EventReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 412, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn item_remove(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    item_name(&name)?;
    let report = blocking(move || {
        let library = state.library();
        let history = library.history(&name)?;
        check_if_match(&headers, &item_etag(&history), false)?;
        Ok(library.remove(&name, Some(&format!("by {} through the API", who.name)))?)
    })
    .await?;
    Ok(Json(report).into_response())
}

/// What `prune` would release now, and what it keeps (nothing is changed).
#[utoipa::path(get, path = "/api/v1/library/prune-preview", tag = "library",
    responses((status = 200, body = PruneReport)))]
pub async fn prune_preview(State(state): State<Arc<ApiState>>) -> Result<Response, Problem> {
    let report = blocking(move || Ok(state.library().prune(true, jiff::Timestamp::now())?)).await?;
    Ok(Json(report).into_response())
}

/// `POST /api/v1/library/verify`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// One item; the whole library without.
    pub item: Option<String>,
}

/// Reads and checks every chunk (of one item, or of the library) as a task; its result is a
/// `VerifyReport`.
#[utoipa::path(post, path = "/api/v1/library/verify", tag = "library",
    request_body = VerifyRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, body = crate::api::tasks::TaskInfo, headers(("Location" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn verify_start(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    if let Some(item) = &request.item {
        item_name(item)?;
        super::access::require(&state, &who, "-", "POST /api/v1/library/verify", item)?;
    }
    let target = request.item.clone().unwrap_or_else(|| "library".into());
    let st = Arc::clone(&state);
    Ok(state.tasks.start(
        "verify",
        &target,
        &who,
        Box::new(move |progress| {
            let report = st.library().verify(request.item.as_deref(), progress)?;
            serde_json::to_value(report)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }),
    ))
}

// The clone API (`crate::clones::api`) and preload, mounted under the same authentication;
// their operations are described here so the document lists every route.

/// Every clone.
#[utoipa::path(get, path = "/api/v1/clones", tag = "clones",
    responses((status = 200, body = Vec<crate::clones::CloneInfo>)))]
pub async fn clones_list_doc() {}

/// Creates a clone of a library version.
#[utoipa::path(post, path = "/api/v1/clones", tag = "clones",
    request_body = crate::clones::api::CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = crate::clones::CloneInfo),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn clones_create_doc() {}

/// One clone.
#[utoipa::path(get, path = "/api/v1/clones/{name}", tag = "clones",
    params(("name" = String, Path)),
    responses((status = 200, body = crate::clones::CloneInfo),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn clones_show_doc() {}

/// Removes a clone.
#[utoipa::path(delete, path = "/api/v1/clones/{name}", tag = "clones",
    params(("name" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn clones_remove_doc() {}

/// Commits a clone's content as a new version of a library item.
#[utoipa::path(post, path = "/api/v1/clones/{name}/commit", tag = "clones",
    params(("name" = String, Path)),
    request_body = crate::clones::api::CommitRequest,
    responses((status = 200, body = vmedia_library::AddReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn clones_commit_doc() {}

/// Reads a version whole into the daemon's cache.
#[utoipa::path(post, path = "/api/v1/preload", tag = "library",
    request_body = crate::http::PreloadRequest,
    responses((status = 200, description = "Preloaded", content_type = "application/json"),
        (status = 202, description = "Preload started", content_type = "application/json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn preload_doc() {}
