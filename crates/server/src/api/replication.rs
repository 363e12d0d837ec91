//! Replication for the console and scripts: `GET /api/v1/library/sync-status`, the library's
//! own `sync-status` report (each peer with its lag, pending bytes and last error), read-only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, ApiState, Problem};
use crate::http::ErrorBody;

/// This library's site and every peer it syncs with: the report `vmedia library sync-status
/// --json` prints.
#[utoipa::path(get, path = "/api/v1/library/sync-status", tag = "library",
    responses((status = 200, description = "The sync-status report: location, site, peers (direction, peer_site, peer_location, last_attempt, last_success, replicated_until, last_error, pending_chunks, pending_bytes, lag_seconds, pending_events)",
            content_type = "application/json", body = Object),
        (status = 401, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn sync_status(State(state): State<Arc<ApiState>>) -> Result<Response, Problem> {
    let report = blocking(move || Ok(state.library().sync_status()?)).await?;
    Ok(Json(report).into_response())
}
