//! Continuous replication inside the daemon: `--replicate-to DEST` pushes this site's library
//! to DEST and `--mirror-from SRC` pulls SRC into it, each peer on its own task that runs
//! `vmedia_library::sync` (the same engine as `vmedia library sync`) every interval, and at
//! once after a failure's back-off. DEST and SRC are any library location: a folder, S3, or
//! another site's daemon (`https://HOST:PORT`).
//!
//! Per peer the daemon keeps what an operator asks first: when the last sync succeeded, the
//! lag (age of the oldest change not yet replicated, the recovery point), chunks and bytes
//! left pending, the last error. `/metrics` and `/api/v1/replication` show them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vmedia_library::sync::SyncOptions;
use vmedia_library::OpenConfig;

/// How often each peer is synced when nothing fails.
pub const DEFAULT_REPLICATE_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest interval accepted: a sync lists both stores, which costs requests on S3.
pub const MIN_REPLICATE_INTERVAL: Duration = Duration::from_secs(1);
/// After a failure the next try waits this long at first, doubling up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Which way a peer's changes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `--replicate-to`: this library is the source.
    Push,
    /// `--mirror-from`: this library receives.
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// One peer to replicate with.
#[derive(Debug, Clone)]
pub struct Peer {
    pub direction: Direction,
    /// The peer's library (its credentials included).
    pub config: OpenConfig,
}

/// What the daemon replicates: its own library's location and the peers.
#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    /// This daemon's library, opened the way the daemon opened it.
    pub local: OpenConfig,
    pub peers: Vec<Peer>,
    pub interval: Duration,
    pub sync: SyncOptions,
}

/// One peer's replication state, as `/api/v1/replication` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PeerState {
    pub peer: String,
    pub direction: Direction,
    /// Sync runs started and the ones that failed (could not run or left something).
    pub runs: u64,
    pub failures: u64,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    /// Unix seconds of the last success (for /metrics).
    pub last_success_unix: Option<i64>,
    /// Age in seconds of the oldest change not yet at the receiving side (0: none pending;
    /// None: unknown, e.g. before the first run or for an encrypted library without key).
    pub lag_seconds: Option<u64>,
    pub pending_chunks: u64,
    pub pending_bytes: u64,
    /// Stored bytes and chunks sent by every run so far.
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    pub last_error: Option<String>,
}

/// `/api/v1/replication`: every peer of this daemon.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicationReport {
    pub interval_seconds: u64,
    pub peers: Vec<PeerState>,
}

/// The running replication: one task per peer and their shared states.
pub struct Replication {
    interval: Duration,
    /// The peers' libraries (credentials included), for reading their timelines.
    configs: Vec<OpenConfig>,
    states: Vec<Arc<Mutex<PeerState>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replication {
    /// Starts one task per peer; they stop when `shutdown` turns true (a sync in progress
    /// finishes its current run first: it is resumable, but a clean end keeps the peer
    /// records right).
    pub fn start(options: ReplicationOptions, shutdown: watch::Receiver<bool>) -> Arc<Replication> {
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        let configs = options.peers.iter().map(|p| p.config.clone()).collect();
        for peer in options.peers {
            let state = Arc::new(Mutex::new(PeerState {
                peer: peer.config.location.to_string(),
                direction: peer.direction,
                runs: 0,
                failures: 0,
                last_attempt: None,
                last_success: None,
                last_success_unix: None,
                lag_seconds: None,
                pending_chunks: 0,
                pending_bytes: 0,
                bytes_sent: 0,
                chunks_sent: 0,
                last_error: None,
            }));
            let (from, to) = match peer.direction {
                Direction::Push => (options.local.clone(), peer.config),
                Direction::Pull => (peer.config, options.local.clone()),
            };
            tasks.push(tokio::spawn(run_peer(
                from,
                to,
                options.sync.clone(),
                options.interval,
                Arc::clone(&state),
                shutdown.clone(),
            )));
            states.push(state);
        }
        Arc::new(Replication {
            interval: options.interval,
            configs,
            states,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn report(&self) -> ReplicationReport {
        ReplicationReport {
            interval_seconds: self.interval.as_secs(),
            peers: self.states.iter().map(|s| lock(s).clone()).collect(),
        }
    }

    /// The peers' library configurations (`sync-status` reads their timelines with them).
    pub fn peer_configs(&self) -> &[OpenConfig] {
        &self.configs
    }

    /// Waits for every peer task to end (after shutdown was signalled).
    pub async fn finish(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn run_peer(
    from: OpenConfig,
    to: OpenConfig,
    options: SyncOptions,
    interval: Duration,
    state: Arc<Mutex<PeerState>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (f, t, o) = (from.clone(), to.clone(), options.clone());
        {
            let mut s = lock(&state);
            s.runs += 1;
            s.last_attempt = Some(jiff::Timestamp::now().to_string());
        }
        let outcome = tokio::task::spawn_blocking(move || round(&f, &t, &o)).await;
        let ok = {
            let mut s = lock(&state);
            match outcome {
                Ok(Ok(round)) => {
                    s.bytes_sent = s.bytes_sent.saturating_add(round.report.bytes_sent);
                    s.chunks_sent = s.chunks_sent.saturating_add(round.report.chunks_sent);
                    s.pending_chunks = round.report.pending_chunks;
                    s.pending_bytes = round.report.pending_bytes;
                    s.lag_seconds = round.lag_seconds;
                    if round.report.complete() {
                        let now = jiff::Timestamp::now();
                        s.last_success = Some(now.to_string());
                        s.last_success_unix = Some(now.as_second());
                        s.last_error = None;
                        true
                    } else {
                        s.failures += 1;
                        let mut problems = round.report.errors.clone();
                        problems.extend(
                            round
                                .report
                                .conflicts
                                .iter()
                                .map(|c| format!("conflict: {c}")),
                        );
                        if problems.is_empty() {
                            problems.push(format!(
                                "{} chunks left pending",
                                round.report.pending_chunks
                            ));
                        }
                        s.last_error = Some(problems.join("; "));
                        false
                    }
                }
                Ok(Err(error)) => {
                    s.failures += 1;
                    s.last_error = Some(error.to_string());
                    false
                }
                Err(join) => {
                    s.failures += 1;
                    s.last_error = Some(format!("the sync task ended abnormally: {join}"));
                    false
                }
            }
        };
        let wait = if ok {
            retry = FIRST_RETRY;
            interval
        } else {
            {
                let s = lock(&state);
                let error = s.last_error.as_deref().unwrap_or_default();
                tracing::warn!(peer = s.peer, %error, retry_in = ?retry, "replication round failed");
            }
            let wait = retry;
            retry = (retry * 2).min(interval);
            wait
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct Round {
    report: vmedia_library::sync::SyncReport,
    lag_seconds: Option<u64>,
}

/// One sync, then the lag as the source's peer record for the destination shows it.
fn round(
    from: &OpenConfig,
    to: &OpenConfig,
    options: &SyncOptions,
) -> vmedia_library::Result<Round> {
    let report = vmedia_library::sync(from, to, options, &vmedia_io::NoProgress)?;
    let lag_seconds = vmedia_library::sync_status(from).ok().and_then(|status| {
        status
            .peers
            .into_iter()
            .find(|p| p.record.direction == "to" && p.record.peer_site == report.to_site)
            .and_then(|p| p.lag_seconds)
    });
    Ok(Round {
        report,
        lag_seconds,
    })
}
