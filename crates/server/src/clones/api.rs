//! The clone control API, nested by the daemon at `/api/v1/clones`:
//! `POST /` `{"base":"NAME[@V]","name":"CLONE","ephemeral":false}` -> 201 `CloneInfo`;
//! `GET /` -> `[CloneInfo]`; `GET /CLONE` -> `CloneInfo`; `DELETE /CLONE[?force=true]` -> 204
//! (409 while client connections hold the clone open, unless forced);
//! `POST /CLONE/commit` `{"as":"NAME"}` -> 200 `AddReport`.
//! Errors are `{"error": "..."}` with 400 (bad request or name), 404 (no such clone or base),
//! 409 (the name is taken, or the clone is in use) or 500. Store calls block (fsync, library I/O), so they run on the
//! blocking pool.
//!
//! Served by the daemon (`gated_router`), a clone of a restricted item (one an access rule
//! limits) is treated as that item: creating, listing, showing, removing or committing it
//! needs access to the item (the HTTPS API's signed-in user; an anonymous request on the plain
//! HTTP port has none), and anyone else gets 404 as for a missing clone, written to the audit
//! log. Its answer's `nbd_export` is then the capability name NBD clients open it by.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{CloneError, CloneInfo, CloneStore};
use crate::api::access::item_of_spec;
use crate::auth::Principal;
use crate::http::gate::MediaGate;
pub use crate::http::ErrorBody;
use crate::http::{clone_status, error_response, Peer};
use axum::Extension;

/// `POST /api/v1/clones`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// `NAME[@V]`.
    pub base: String,
    pub name: String,
    #[serde(default)]
    pub ephemeral: bool,
}

/// `POST /api/v1/clones/CLONE/commit`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// The library item the new version is added to.
    #[serde(rename = "as")]
    pub as_name: String,
}

/// `DELETE /api/v1/clones/CLONE?force=true`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Remove the clone even while connections hold it open (they are cut off).
    #[serde(default)]
    pub force: bool,
}

/// An error on its way to the client: its status comes from `crate::http::clone_status`, its
/// body is the daemon's one error body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0, &self.1)
    }
}

impl From<CloneError> for ApiError {
    fn from(error: CloneError) -> ApiError {
        ApiError(clone_status(&error), error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

/// Runs a blocking store call off the runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the clone operation failed: {e}"),
        )),
    }
}

/// What the handlers share: the store, and the gate that says who may use a clone's base.
#[derive(Clone)]
struct Clones {
    store: Arc<CloneStore>,
    gate: Option<Arc<MediaGate>>,
}

/// Who asks and from where (the principal is absent on the plain HTTP port).
struct Caller {
    who: Option<Principal>,
    peer: String,
}

impl Caller {
    fn new(who: Option<Extension<Principal>>, peer: Option<Extension<Peer>>) -> Caller {
        Caller {
            who: who.map(|Extension(who)| who),
            peer: peer.map_or_else(|| "-".into(), |Extension(peer)| peer.addr),
        }
    }
}

impl Clones {
    /// May `caller` use `item`? When not: audited, and the 404 a missing `what` gets.
    fn admit(
        &self,
        caller: &Caller,
        action: &str,
        item: &str,
        missing: &str,
    ) -> Result<(), ApiError> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        if gate.may_use(caller.who.as_ref(), item) {
            return Ok(());
        }
        gate.record_denied(caller.who.as_ref(), &caller.peer, action, item);
        Err(ApiError(StatusCode::NOT_FOUND, missing.to_string()))
    }

    /// The clone `name` if `caller` may use its base item (404, audited, when not).
    fn admitted(&self, caller: &Caller, action: &str, name: &str) -> Result<CloneInfo, ApiError> {
        let info = self.store.get(name)?;
        let missing = CloneError::NotFound(name.to_string()).to_string();
        self.admit(caller, action, item_of_spec(&info.base), &missing)?;
        Ok(self.shown(info))
    }

    /// A clone as its answer shows it: with the export name it is opened by.
    fn shown(&self, mut info: CloneInfo) -> CloneInfo {
        if let Some(gate) = &self.gate {
            info.nbd_export = Some(gate.clone_export(&info.name));
        }
        info
    }
}

/// The routes, relative to where the daemon nests them (`/api/v1/clones`), without access
/// checks: a store of its own (tests, a daemon without access rules).
pub fn router(store: Arc<CloneStore>) -> Router {
    routes(Clones { store, gate: None })
}

/// The routes as the daemon serves them: a clone of a restricted item only to those who may
/// use the item (module docs).
pub fn gated_router(store: Arc<CloneStore>, gate: Arc<MediaGate>) -> Router {
    routes(Clones {
        store,
        gate: Some(gate),
    })
}

fn routes(state: Clones) -> Router {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{name}", get(show).delete(remove))
        .route("/{name}/commit", post(commit))
        .with_state(state)
}

async fn list(
    State(clones): State<Clones>,
    who: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    let store = Arc::clone(&clones.store);
    let all = blocking(move || Ok(store.list())).await?;
    let who = who.map(|Extension(who)| who);
    let visible: Vec<CloneInfo> = all
        .into_iter()
        .filter(|info| {
            clones
                .gate
                .as_ref()
                .is_none_or(|gate| gate.may_use(who.as_ref(), item_of_spec(&info.base)))
        })
        .map(|info| clones.shown(info))
        .collect();
    Ok(Json(visible).into_response())
}

async fn create(
    State(clones): State<Clones>,
    who: Option<Extension<Principal>>,
    peer: Option<Extension<Peer>>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let caller = Caller::new(who, peer);
    // Refused as a missing base is, word for word: the answer must not tell the item exists.
    let missing = CloneError::Base {
        spec: request.base.clone(),
        source: crate::export::ExportError::NotFound(request.base.clone()),
    };
    clones.admit(
        &caller,
        "POST /api/v1/clones",
        item_of_spec(&request.base),
        &missing.to_string(),
    )?;
    let store = Arc::clone(&clones.store);
    let info =
        blocking(move || Ok(store.create(&request.base, &request.name, request.ephemeral)?))
            .await?;
    Ok((StatusCode::CREATED, Json(clones.shown(info))).into_response())
}

async fn show(
    State(clones): State<Clones>,
    who: Option<Extension<Principal>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let caller = Caller::new(who, peer);
    let action = format!("GET /api/v1/clones/{name}");
    let info = blocking(move || clones.admitted(&caller, &action, &name)).await?;
    Ok(Json(info).into_response())
}

async fn remove(
    State(clones): State<Clones>,
    who: Option<Extension<Principal>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let caller = Caller::new(who, peer);
    let action = format!("DELETE /api/v1/clones/{name}");
    blocking(move || {
        clones.admitted(&caller, &action, &name)?;
        Ok(clones.store.remove_with(&name, query.force)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn commit(
    State(clones): State<Clones>,
    who: Option<Extension<Principal>>,
    peer: Option<Extension<Peer>>,
    Path(name): Path<String>,
    body: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let caller = Caller::new(who, peer);
    let action = format!("POST /api/v1/clones/{name}/commit");
    let report = blocking(move || {
        clones.admitted(&caller, &action, &name)?;
        // The version it adds is another item's: that one must be usable too.
        clones.admit(
            &caller,
            &action,
            &request.as_name,
            &format!("no such item: {}", request.as_name),
        )?;
        Ok(clones.store.commit(&name, &request.as_name)?)
    })
    .await?;
    Ok(Json(report).into_response())
}
