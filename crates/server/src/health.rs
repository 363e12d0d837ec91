//! The daemon's health check: `GET /health` answers 200 with a typed report when the library
//! store answers and every listener's accept loop runs, 503 with the same report (and the
//! reason) when not; `probe` is the client side a failover manager (keepalived's
//! `vrrp_script`, through `vmedia serve --health URL`) runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use crate::exports::LibraryExports;

/// The object every library holds (its configuration, read before any key is known, so its
/// name is the same in encrypted libraries): heading it is the cheapest read that proves the
/// store answers.
const LIBRARY_CONFIG_KEY: &str = "library.json";
/// A store that has not answered a `head` within this time counts as unreachable: a failover
/// manager checks every second or two and must not wait for S3's own, much longer, deadline.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time `probe` waits for the whole answer; keepalived's scripts have their own
/// timeout, and a check that hangs is a failed check.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest health report read by `probe` (a few checks, each a line of text).
const MAX_REPORT_BYTES: u64 = 64 << 10;

/// What `GET /health` answers (200 when `healthy`, 503 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// True when every check passed.
    pub healthy: bool,
    /// The first failed check's detail, absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One entry per check, in a fixed order: `store`, then each listener.
    pub checks: Vec<HealthCheck>,
}

/// One check of a health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthCheck {
    /// `store`, `http`, `https` or `nbd`.
    pub name: String,
    pub ok: bool,
    /// What was found, in words (the store's name and answer time, the listen address).
    pub detail: String,
}

impl HealthReport {
    /// A report over `checks`; healthy when all passed, the first failure is the reason.
    pub fn from_checks(checks: Vec<HealthCheck>) -> HealthReport {
        let reason = checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail));
        HealthReport {
            healthy: reason.is_none(),
            reason,
            checks,
        }
    }
}

/// A listener whose accept loop the health check watches.
struct Listener {
    name: &'static str,
    addr: SocketAddr,
    task: AbortHandle,
}

/// What the health check looks at: the library's store (through the exports) and the
/// listeners the daemon started (registered as they are bound).
pub struct Health {
    exports: Arc<LibraryExports>,
    listeners: Mutex<Vec<Listener>>,
}

impl Health {
    pub fn new(exports: Arc<LibraryExports>) -> Health {
        Health {
            exports,
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Watches the accept loop of the listener `name` bound at `addr`: the daemon is unhealthy
    /// once that task ends (it only ends at shutdown, or if it failed).
    pub fn watch_listener(&self, name: &'static str, addr: SocketAddr, task: AbortHandle) {
        self.listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Listener { name, addr, task });
    }

    /// Runs every check: the store's `head` of the library configuration (on a blocking
    /// thread, bounded by `STORE_PROBE_TIMEOUT`) and each listener's task.
    pub async fn report(&self) -> HealthReport {
        let mut checks = vec![self.store_check().await];
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for listener in listeners.iter() {
            let ok = !listener.task.is_finished();
            checks.push(HealthCheck {
                name: listener.name.to_string(),
                ok,
                detail: if ok {
                    format!("accepting on {}", listener.addr)
                } else {
                    format!("the listener on {} has stopped", listener.addr)
                },
            });
        }
        HealthReport::from_checks(checks)
    }

    async fn store_check(&self) -> HealthCheck {
        let exports = Arc::clone(&self.exports);
        let describe = exports.library().raw_store().describe();
        let started = Instant::now();
        let probe = tokio::task::spawn_blocking(move || {
            exports.library().raw_store().head(LIBRARY_CONFIG_KEY)
        });
        let (ok, detail) = match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(Ok(Some(_)))) => (
                true,
                format!(
                    "{describe} answered in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            ),
            Ok(Ok(Ok(None))) => (
                false,
                format!("{describe} no longer holds {LIBRARY_CONFIG_KEY} (unmounted or emptied?)"),
            ),
            Ok(Ok(Err(error))) => (false, error.to_string()),
            Ok(Err(join)) => (false, format!("{describe}: the probe failed: {join}")),
            // The blocking read goes on in the background; the next check starts a new one.
            Err(_) => (
                false,
                format!(
                    "{describe} did not answer within {} s",
                    STORE_PROBE_TIMEOUT.as_secs()
                ),
            ),
        };
        HealthCheck {
            name: "store".into(),
            ok,
            detail,
        }
    }
}

/// `GET /health`: the report, 200 when healthy and 503 when not.
pub async fn endpoint(State(health): State<Arc<Health>>) -> Response {
    let report = health.report().await;
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Some(reason) = &report.reason {
        tracing::warn!(reason, "health check failed");
    }
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(report),
    )
        .into_response()
}

/// Why `probe` got no report.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status} without a health report: {reason}")]
    NotAReport {
        url: String,
        status: u16,
        reason: String,
    },
}

/// Asks a daemon's `/health` (`url` is the whole URL, e.g. `http://127.0.0.1:8080/health`),
/// waiting at most `timeout` for the whole answer. `Ok` carries the daemon's report whether
/// it is healthy or not; an unreachable daemon, a time-out or an answer that is not a report
/// is an error (and, to a failover manager, as unhealthy as a 503).
pub fn probe(url: &str, timeout: Duration) -> Result<HealthReport, ProbeError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let unreachable = |reason: String| ProbeError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let not_a_report = |reason: String| ProbeError::NotAReport {
        url: url.to_string(),
        status,
        reason,
    };
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_REPORT_BYTES)
        .read_to_vec()
        .map_err(|e| not_a_report(e.to_string()))?;
    let report: HealthReport =
        serde_json::from_slice(&body).map_err(|e| not_a_report(e.to_string()))?;
    // The status is the verdict a load balancer sees; a body that disagrees with it is a
    // daemon bug, and the unhealthy reading is the safe one.
    match (status, report.healthy) {
        (200, true) | (503, false) => Ok(report),
        _ => Err(not_a_report(format!(
            "status {status} with healthy = {}",
            report.healthy
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool) -> HealthCheck {
        HealthCheck {
            name: name.into(),
            ok,
            detail: if ok { "fine" } else { "broken" }.into(),
        }
    }

    #[test]
    fn healthy_only_when_every_check_passes() {
        let report = HealthReport::from_checks(vec![check("store", true), check("nbd", true)]);
        assert!(report.healthy);
        assert_eq!(report.reason, None);
        let report = HealthReport::from_checks(vec![check("store", true), check("nbd", false)]);
        assert!(!report.healthy);
        assert_eq!(report.reason.as_deref(), Some("nbd: broken"));
    }

    #[test]
    fn the_first_failed_check_is_the_reason() {
        let report = HealthReport::from_checks(vec![
            check("store", false),
            check("http", true),
            check("nbd", false),
        ]);
        assert_eq!(report.reason.as_deref(), Some("store: broken"));
    }

    #[test]
    fn report_round_trips_through_json_without_a_reason_when_healthy() {
        let report = HealthReport::from_checks(vec![check("store", true)]);
        let text = serde_json::to_string(&report).unwrap();
        assert!(!text.contains("reason"), "{text}");
        let back: HealthReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn probe_of_a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/health");
        match probe(&url, Duration::from_secs(2)) {
            Err(ProbeError::Unreachable { .. }) => {}
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}
