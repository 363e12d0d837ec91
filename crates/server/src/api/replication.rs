//! Replication for the console and scripts: `GET /api/v1/library/sync-status`, the library's
//! own `sync-status` report (each peer with its lag, pending bytes and last error, and each
//! item's dual-active state against it), read-only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, ApiState, Problem};
use crate::http::ErrorBody;

/// This library's site and every peer it syncs with: the report `vmedia library sync-status
/// --json` prints. Peers the daemon replicates with itself are read with their configured
/// credentials.
#[utoipa::path(get, path = "/api/v1/library/sync-status", tag = "library",
    responses((status = 200, description = "The sync-status report: location, site, peers (direction, peer_site, peer_location, last_attempt, last_success, replicated_until, last_error, pending_chunks, pending_bytes, lag_seconds, pending_events, items: per item state agree|ahead|behind|diverged, same_current, here_version, here_digest, peer_version, peer_digest, versions_to_send, versions_to_receive, events_to_send, events_to_receive, decided_by {site, side here|peer|other, kind, time, digest}; items_error when the peer cannot be read)",
            content_type = "application/json", body = Object),
        (status = 401, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn sync_status(State(state): State<Arc<ApiState>>) -> Result<Response, Problem> {
    let report = blocking(move || {
        let peers = match &state.replication {
            Some(replication) => replication.peer_configs().to_vec(),
            None => Vec::new(),
        };
        Ok(state.library().sync_status(&peers)?)
    })
    .await?;
    Ok(Json(report).into_response())
}
