//! The REST API under `/api/v1`, served on the HTTPS listener behind `auth::http`: the
//! library (items, versions, history, rollback, prune preview, verify, download, resumable
//! upload), tasks, users, tokens, sessions and the audit log; the clone API and preload are
//! mounted under the same authentication. Its OpenAPI 3.1 document is generated from these
//! handlers' annotations (utoipa) and served at `/api/v1/openapi.json`.
//!
//! Conventions: JSON bodies (at most `MAX_JSON_BODY` bytes); errors are RFC 9457 problem
//! documents (`crate::http::ErrorBody`, the daemon's one error body); lists take
//! `?limit=&cursor=` and answer `{"items": [...], "next": URL}` plus a `Link: rel="next"`
//! header; updates honour `If-Match` (412 on a mismatch, 428 where it is required);
//! creates honour `Idempotency-Key` (`idempotency.rs`); long work answers 202 with a task.

pub mod access;
pub mod accounts;
pub mod attachments;
pub mod boot_override;
pub mod idempotency;
pub mod library;
pub mod replication;
pub mod stats;
pub mod store;
pub mod systems;
pub mod tasks;
pub mod uploads;
pub mod usage;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::audit::AuditLog;
use crate::auth::http::{authenticate, AuthLayer};
use crate::auth::store::FailureLimiter;
use crate::auth::{Authenticate, UserStore};
use crate::http::{error_response, library_status, AppState, ErrorBody};

/// Largest JSON request body: requests are a few fields; images go through uploads.
pub const MAX_JSON_BODY: usize = 64 << 10;
/// Default and largest page of a list.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// What the API handlers share.
pub struct ApiState {
    pub app: Arc<AppState>,
    pub users: Arc<UserStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<AuditLog>,
    pub tasks: Arc<tasks::Tasks>,
    pub uploads: Arc<uploads::Uploads>,
    pub idempotency: Arc<idempotency::Replies>,
    /// Continuous replication, when the daemon runs any.
    pub replication: Option<Arc<crate::replicate::Replication>>,
    /// The VM store whose VMs are the systems; None: no systems routes (503).
    pub systems: Option<vmedia_boot::store::BootConfig>,
    /// Per-item access rules (`STATE/access.json`).
    pub access: Arc<access::AccessList>,
    /// Which library version each system has attached (`STATE/attachments/`).
    pub attachments: Arc<attachments::Attachments>,
    /// Per-system events for the boot timeline (in memory).
    pub events: Arc<systems::Events>,
    /// The clone store, for "where used".
    pub clones: Option<Arc<crate::clones::CloneStore>>,
    /// The netboot files whose `library:` references "where used" reports.
    pub netboot_files: Vec<std::path::PathBuf>,
    /// `http://HOST:PORT` of the daemon's plain HTTP listener once bound: attached media are
    /// given to QEMU as `{media_base}/images/NAME@V`.
    pub media_base: std::sync::OnceLock<String>,
}

impl ApiState {
    pub fn library(&self) -> &vmedia_library::Library {
        self.app.exports.library()
    }
}

/// An error on its way to the client, as a problem document.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    headers: Vec<(header::HeaderName, String)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the answer (e.g. `Upload-Offset` on a 409).
    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Problem {
        self.headers.push((name, value));
        self
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, &self.detail);
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

impl From<vmedia_library::LibraryError> for Problem {
    fn from(error: vmedia_library::LibraryError) -> Problem {
        Problem::new(library_status(&error), error.to_string())
    }
}

impl From<crate::auth::AuthError> for Problem {
    fn from(error: crate::auth::AuthError) -> Problem {
        use crate::auth::AuthError as E;
        let status = match &error {
            E::InvalidName { .. } | E::InvalidPassword(_) | E::UnknownRole(_) => {
                StatusCode::BAD_REQUEST
            }
            E::Exists(_) => StatusCode::CONFLICT,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Io { .. } | E::Damaged { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, error.to_string())
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Problem {
        Problem::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

/// Refuses a caller who is not an administrator, saying what only administrators may do.
pub fn require_administrator(
    who: &crate::auth::Principal,
    only_they_may: &str,
) -> Result<(), Problem> {
    if who.role.may_administer() {
        return Ok(());
    }
    Err(Problem::forbidden(format!(
        "{} is {}: only administrators {only_they_may}",
        who.name,
        who.role.as_str()
    )))
}

/// Runs blocking work (library I/O, argon2) off the runtime's workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the operation failed: {e}"),
        )),
    }
}

/// `?limit=&cursor=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `cursor` of the previous page's `next` link.
    pub cursor: Option<String>,
}

/// One page of `items`, sorted by `key`; `next` is the cursor of the following page.
pub fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    page: &PageQuery,
) -> Result<(Vec<T>, Option<String>), Problem> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = match &page.cursor {
        Some(cursor) => Some(
            hex::decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "the cursor is not one this API made",
                    )
                })?,
        ),
        None => None,
    };
    let mut out: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_ref().is_none_or(|after| key(item) > *after))
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|last| hex::encode(key(last)))
    } else {
        None
    };
    Ok((out, next))
}

/// A page as a response: `{"items": [...], "next": "/api/v1/...?cursor=..."}` and a `Link`.
pub fn page_response<P: serde::Serialize>(
    path: &str,
    query: Option<&str>,
    next: Option<String>,
    make: impl FnOnce(Option<String>) -> P,
) -> Response {
    let link = next.map(|cursor| {
        let mut pairs: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .collect();
        let cursor = format!("cursor={cursor}");
        pairs.push(&cursor);
        format!("{path}?{}", pairs.join("&"))
    });
    let mut headers = HeaderMap::new();
    if let Some(link) = &link {
        if let Ok(value) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
            headers.insert(header::LINK, value);
        }
    }
    (headers, Json(make(link))).into_response()
}

/// Checks `If-Match` against the resource's current `etag`: 412 on a mismatch, 428 when
/// `required` and absent.
pub fn check_if_match(headers: &HeaderMap, etag: &str, required: bool) -> Result<(), Problem> {
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        None if required => Err(Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "send If-Match with the ETag of the resource you read (GET it first)",
        )),
        None => Ok(()),
        Some(value) => {
            let hit = value.trim() == "*"
                || value
                    .split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == etag);
            if hit {
                Ok(())
            } else {
                Err(Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    format!("the resource changed: its ETag is now {etag}; GET it again"),
                )
                .with_header(header::ETAG, etag.to_string()))
            }
        }
    }
}

/// The API's routes with their middleware; `clones` is mounted at `/api/v1/clones`.
pub fn router(state: Arc<ApiState>, clones: Option<Router>) -> Router {
    let layer = AuthLayer {
        auth: Arc::clone(&state.auth),
        audit: Arc::clone(&state.audit),
        failures: Arc::new(FailureLimiter::default()),
    };
    let replies = Arc::clone(&state.idempotency);
    let mut api = Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/whoami", get(accounts::whoami))
        .route("/api/v1/library/items", get(library::items_list))
        .route(
            "/api/v1/library/items/{name}",
            get(library::item_show).delete(library::item_remove),
        )
        .route(
            "/api/v1/library/items/{name}/versions",
            get(library::versions_list),
        )
        .route(
            "/api/v1/library/items/{name}/versions/{version}",
            get(library::version_show),
        )
        .route(
            "/api/v1/library/items/{name}/versions/{version}/content",
            get(library::version_content),
        )
        .route(
            "/api/v1/library/items/{name}/history",
            get(library::item_history),
        )
        .route(
            "/api/v1/library/items/{name}/rollback",
            post(library::item_rollback),
        )
        .route("/api/v1/library/prune-preview", get(library::prune_preview))
        .route("/api/v1/library/sync-status", get(replication::sync_status))
        .route("/api/v1/library/verify", post(library::verify_start))
        .route("/api/v1/tasks", get(tasks::tasks_list))
        .route("/api/v1/tasks/{id}", get(tasks::task_show))
        .route("/api/v1/uploads", post(uploads::upload_create))
        .route(
            "/api/v1/uploads/{id}",
            get(uploads::upload_show)
                .head(uploads::upload_head)
                .patch(uploads::upload_append)
                .delete(uploads::upload_abort),
        )
        .route(
            "/api/v1/uploads/{id}/complete",
            post(uploads::upload_complete),
        )
        .route(
            "/api/v1/users",
            get(accounts::users_list).post(accounts::users_add),
        )
        .route("/api/v1/users/{name}", delete(accounts::users_remove))
        .route(
            "/api/v1/tokens",
            get(accounts::tokens_list).post(accounts::tokens_create),
        )
        .route("/api/v1/tokens/{id}", delete(accounts::tokens_revoke))
        .route("/api/v1/sessions", post(accounts::session_login))
        .route("/api/v1/sessions/{id}", delete(accounts::session_logout))
        .route("/api/v1/audit", get(accounts::audit_list))
        .route(
            "/api/v1/store/objects/{*key}",
            get(store::object_get)
                .head(store::object_head)
                .put(store::object_put)
                .delete(store::object_delete),
        )
        .route("/api/v1/store/list", get(store::list))
        .route("/api/v1/replication", get(store::replication))
        .route("/api/v1/store/flush", post(store::flush))
        .route(
            "/api/v1/access",
            get(access::access_show).put(access::access_replace),
        )
        .route("/api/v1/library/items/{name}/usage", get(usage::item_usage))
        .route(
            "/api/v1/systems",
            get(systems::systems_list).post(systems::system_create),
        )
        .route(
            "/api/v1/systems/{id}",
            get(systems::system_show)
                .patch(systems::system_patch)
                .delete(systems::system_delete),
        )
        .route(
            "/api/v1/systems/{id}/actions/start",
            post(systems::system_start),
        )
        .route(
            "/api/v1/systems/{id}/actions/stop",
            post(systems::system_stop),
        )
        .route(
            "/api/v1/systems/{id}/actions/reset",
            post(systems::system_reset),
        )
        .route(
            "/api/v1/systems/{id}/media",
            post(systems::media_insert).delete(systems::media_eject),
        )
        .route(
            "/api/v1/systems/{id}/media/content",
            get(systems::media_content),
        )
        .route("/api/v1/systems/{id}/console", get(systems::console))
        .route("/api/v1/systems/{id}/boot", get(systems::boot_timeline))
        .route("/api/v1/systems/{id}/usage", get(usage::system_usage))
        .route(
            "/api/v1/attachments",
            get(attachments::attachments_list).post(attachments::attach_batch),
        )
        .route(
            "/api/v1/attachments/detach",
            post(attachments::detach_batch),
        )
        .route("/api/v1/attachments/{id}", delete(attachments::detach))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            access::item_routes,
        ))
        .route("/api/v1/stats/stream", get(stats::stats_stream))
        .with_state(Arc::clone(&state))
        .merge(
            Router::new()
                .route("/api/v1/preload", post(crate::http::preload))
                .with_state(Arc::clone(&state.app)),
        );
    if let Some(clones) = clones {
        api = api.nest("/api/v1/clones", clones);
    }
    api.fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            replies,
            idempotency::idempotent,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(layer, authenticate))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no such resource: {}", uri.path()),
    )
}

/// Adds the security schemes: Bearer tokens and HTTP Basic.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmedia",
        description = "The vmedia daemon's REST API: the image library, uploads, tasks, clones, systems and attachments, users, access rules and the audit log. Errors are RFC 9457 problem documents.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    paths(
        openapi_json,
        accounts::whoami,
        library::items_list,
        library::item_show,
        library::item_remove,
        library::versions_list,
        library::version_show,
        library::version_content,
        library::item_history,
        library::item_rollback,
        library::prune_preview,
        library::verify_start,
        tasks::tasks_list,
        tasks::task_show,
        uploads::upload_create,
        uploads::upload_show,
        uploads::upload_head,
        uploads::upload_append,
        uploads::upload_abort,
        uploads::upload_complete,
        accounts::users_list,
        accounts::users_add,
        accounts::users_remove,
        accounts::tokens_list,
        accounts::tokens_create,
        accounts::tokens_revoke,
        accounts::session_login,
        accounts::session_logout,
        accounts::audit_list,
        stats::stats_stream,
        replication::sync_status,
        access::access_show,
        access::access_replace,
        usage::item_usage,
        usage::system_usage,
        systems::systems_list,
        systems::system_create,
        systems::system_show,
        systems::system_patch,
        systems::system_delete,
        systems::system_start,
        systems::system_stop,
        systems::system_reset,
        systems::media_insert,
        systems::media_eject,
        systems::media_content,
        systems::console,
        systems::boot_timeline,
        attachments::attachments_list,
        attachments::attach_batch,
        attachments::detach_batch,
        attachments::detach,
        library::clones_list_doc,
        library::clones_create_doc,
        library::clones_show_doc,
        library::clones_remove_doc,
        library::clones_commit_doc,
        library::preload_doc,
        store::object_get,
        store::object_head,
        store::object_put,
        store::object_delete,
        store::list,
        store::flush,
        store::replication,
    ),
    components(schemas(ErrorBody, crate::auth::Role)),
    modifiers(&Security),
    security(("bearer" = []), ("basic" = [])),
    tags(
        (name = "library", description = "Items, versions, history, rollback, download"),
        (name = "uploads", description = "Resumable uploads that end in a library add"),
        (name = "tasks", description = "Long work: state, progress, result"),
        (name = "clones", description = "Per-VM copy-on-write clones of library versions"),
        (name = "systems", description = "Managed VMs: power, boot override, media, console; attachments and where used"),
        (name = "accounts", description = "Users, API tokens, sessions, the audit log"),
        (name = "replication", description = "The library's object store, for another site's sync (administrators)"),
        (name = "stats", description = "Live I/O per image and client, as server-sent events"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "accounts", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let items: Vec<String> = (0..5).map(|i| format!("item{i}")).collect();
        let mut query = PageQuery {
            limit: Some(2),
            cursor: None,
        };
        let mut seen = Vec::new();
        loop {
            let (page, next) = paginate(items.clone(), |s| s.clone(), &query).unwrap();
            seen.extend(page);
            match next {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(seen, items);
        query.cursor = Some("zz".into());
        assert_eq!(
            paginate(items.clone(), |s| s.clone(), &query)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        query.limit = Some(0);
        assert!(paginate(items, |s| s.clone(), &query).is_err());
    }

    #[test]
    fn if_match_fails_on_a_stale_etag_and_is_required_when_asked() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            check_if_match(&headers, "\"a\"", true).unwrap_err().status,
            StatusCode::PRECONDITION_REQUIRED
        );
        assert!(check_if_match(&headers, "\"a\"", false).is_ok());
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"b\""));
        assert_eq!(
            check_if_match(&headers, "\"a\"", true).unwrap_err().status,
            StatusCode::PRECONDITION_FAILED
        );
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"b\", \"a\""));
        assert!(check_if_match(&headers, "\"a\"", true).is_ok());
    }

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_operation() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/api/v1/uploads/{id}"));
        assert!(paths.contains_key("/api/v1/clones"));
        assert!(paths.contains_key("/api/v1/stats/stream"));
    }
}
