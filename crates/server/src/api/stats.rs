//! Live I/O as server-sent events: `GET /api/v1/stats/stream` sends, every second, the rates
//! `vmedia top` shows, per export and per client. The numbers are not computed a second time:
//! each tick renders the daemon's `/metrics` text (`metrics.rs`), arranges it
//! (`scrape::Snapshot`) and takes the difference from the previous tick (`scrape::View`), as
//! `vmedia top` does over HTTP.
//!
//! Each caller sees only the exports of items the per-item access rules let them see (the
//! rule the library listings use; a clone counts as its base item); administrators see all.
//! The daemon-wide totals name no item and are sent to everyone.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};

use super::{ApiState, Problem};
use crate::auth::Principal;
use crate::http::ErrorBody;
use crate::metrics::Metrics;
use crate::scrape::{Row, Snapshot, View};

/// Default time between two events.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Shortest interval a client may ask for: each tick renders and parses the whole exposition.
pub const MIN_INTERVAL_MS: u64 = 250;
/// Longest interval: beyond it a "live" view is not live.
pub const MAX_INTERVAL_MS: u64 = 60_000;

/// `?interval_ms=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Milliseconds between events (250 to 60000, default 1000).
    pub interval_ms: Option<u64>,
}

/// One line of the live view: an export, or one client of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsRow {
    pub export: String,
    /// Absent on an export's own row.
    pub client: Option<String>,
    pub queue_depth: f64,
    pub iops: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub mean_latency_seconds: Option<f64>,
    pub p99_latency_seconds: Option<f64>,
    /// Share of cache lookups that hit, 0 to 1 (exports only).
    pub cache_hit_rate: Option<f64>,
}

/// An export and its clients.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsExport {
    #[serde(flatten)]
    pub row: StatsRow,
    pub clients: Vec<StatsRow>,
}

/// Daemon-wide figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsTotals {
    pub queue_depth: f64,
    pub iops: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub cache_hit_rate: Option<f64>,
    pub cache_bytes: f64,
    pub cache_capacity_bytes: f64,
    pub connections_open: std::collections::BTreeMap<String, f64>,
    pub clones: f64,
}

/// The data of one `stats` event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsEvent {
    /// When the numbers were taken (RFC 3339, UTC).
    pub time: String,
    pub interval_seconds: f64,
    pub totals: StatsTotals,
    pub exports: Vec<StatsExport>,
}

impl From<&Row> for StatsRow {
    fn from(row: &Row) -> StatsRow {
        StatsRow {
            export: row.export.clone(),
            client: row.client.clone(),
            queue_depth: row.queue_depth,
            iops: row.iops,
            read_bytes_per_second: row.read_bytes_per_second,
            write_bytes_per_second: row.write_bytes_per_second,
            mean_latency_seconds: row.mean_latency,
            p99_latency_seconds: row.p99_latency,
            cache_hit_rate: row.cache_hit_rate,
        }
    }
}

impl StatsEvent {
    /// The event for `view`, taken now.
    pub fn from_view(view: &View) -> StatsEvent {
        let t = &view.totals;
        StatsEvent {
            time: jiff::Timestamp::now().to_string(),
            interval_seconds: view.interval.as_secs_f64(),
            totals: StatsTotals {
                queue_depth: t.queue_depth,
                iops: t.iops,
                read_bytes_per_second: t.read_bytes_per_second,
                write_bytes_per_second: t.write_bytes_per_second,
                cache_hit_rate: t.cache_hit_rate,
                cache_bytes: t.cache_bytes,
                cache_capacity_bytes: t.cache_capacity_bytes,
                connections_open: t.connections_open.clone(),
                clones: t.clones,
            },
            exports: view
                .exports
                .iter()
                .map(|e| StatsExport {
                    row: StatsRow::from(&e.row),
                    clients: e.clients.iter().map(StatsRow::from).collect(),
                })
                .collect(),
        }
    }
}

/// Drops the exports (with their clients) of items `who` may not see.
fn visible_only(view: &mut View, state: &ApiState, who: &Principal) {
    if who.role.may_administer() {
        return;
    }
    let access = state.access.current();
    let clones: std::collections::BTreeMap<String, String> = state
        .clones
        .as_ref()
        .map(|store| store.list().into_iter().map(|c| (c.name, c.base)).collect())
        .unwrap_or_default();
    view.exports.retain(|export| {
        super::access::export_item(&export.row.export, &clones)
            .is_some_and(|item| access.visible(who, item))
    });
}

/// The daemon's own exposition, arranged. The text is ours, so a parse failure is a bug;
/// it yields an empty snapshot rather than ending the stream.
fn snapshot(metrics: &Metrics) -> Snapshot {
    Snapshot::parse(metrics.render().as_bytes()).unwrap_or_default()
}

/// Live I/O per export and client as server-sent events (`event: stats`, JSON data, one per
/// interval): the numbers of `/metrics` and `vmedia top`.
#[utoipa::path(get, path = "/api/v1/stats/stream", tag = "stats", params(StreamQuery),
    responses((status = 200, description = "An event stream; each `stats` event's data is a StatsEvent",
            content_type = "text/event-stream", body = StatsEvent),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 401, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn stats_stream(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let millis = query.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&millis) {
        return Err(Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}"),
        ));
    }
    let interval = Duration::from_millis(millis);
    let metrics = Arc::clone(&state.app.metrics);
    let first = (snapshot(&metrics), Instant::now());
    let events = futures::stream::unfold((metrics, first), move |(metrics, (before, taken))| {
        let (state, who) = (Arc::clone(&state), who.clone());
        async move {
            tokio::time::sleep(interval).await;
            let render = Arc::clone(&metrics);
            let after = tokio::task::spawn_blocking(move || snapshot(&render))
                .await
                .unwrap_or_default();
            let now = Instant::now();
            let mut view = View::between(&before, &after, now.duration_since(taken));
            visible_only(&mut view, &state, &who);
            let event = Event::default()
                .event("stats")
                .json_data(StatsEvent::from_view(&view))
                .unwrap_or_else(|_| Event::default().comment("unserialisable"));
            Some((Ok::<Event, Infallible>(event), (metrics, (after, now))))
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
