//! The clone control API, nested by the daemon at `/api/v1/clones`:
//! `POST /` `{"base":"NAME[@V]","name":"CLONE","ephemeral":false}` -> 201 `CloneInfo`;
//! `GET /` -> `[CloneInfo]`; `GET /CLONE` -> `CloneInfo`; `DELETE /CLONE[?force=true]` -> 204
//! (409 while client connections hold the clone open, unless forced);
//! `POST /CLONE/commit` `{"as":"NAME"}` -> 200 `AddReport`.
//! Errors are `{"error": "..."}` with 400 (bad request or name), 404 (no such clone or base),
//! 409 (the name is taken, or the clone is in use) or 500. Store calls block (fsync, library I/O), so they run on the
//! blocking pool.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{CloneError, CloneStore};
pub use crate::http::ErrorBody;
use crate::http::{clone_status, error_response};

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
    work: impl FnOnce() -> Result<T, CloneError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the clone operation failed: {e}"),
        )),
    }
}

/// The routes, relative to where the daemon nests them (`/api/v1/clones`).
pub fn router(store: Arc<CloneStore>) -> Router {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{name}", get(show).delete(remove))
        .route("/{name}/commit", post(commit))
        .with_state(store)
}

async fn list(State(store): State<Arc<CloneStore>>) -> Result<Response, ApiError> {
    let clones = blocking(move || Ok(store.list())).await?;
    Ok(Json(clones).into_response())
}

async fn create(
    State(store): State<Arc<CloneStore>>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let info =
        blocking(move || store.create(&request.base, &request.name, request.ephemeral)).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn show(
    State(store): State<Arc<CloneStore>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let info = blocking(move || store.get(&name)).await?;
    Ok(Json(info).into_response())
}

async fn remove(
    State(store): State<Arc<CloneStore>>,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|rejection| ApiError(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    blocking(move || store.remove_with(&name, query.force)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn commit(
    State(store): State<Arc<CloneStore>>,
    Path(name): Path<String>,
    body: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let report = blocking(move || store.commit(&name, &request.as_name)).await?;
    Ok(Json(report).into_response())
}
