//! `sync-status`: the peer records a library keeps under `sync/`, with the replication lag
//! (age of the oldest change not yet replicated) computed from the library's own timelines.

use serde::Serialize;

use super::{site_id, PeerRecord, MAX_PEER_BYTES, PEERS_PREFIX};
use crate::error::Result;
use crate::library::{open_store, Library};
use crate::location::OpenConfig;

/// One peer as this library sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub record: PeerRecord,
    /// Seconds since the oldest change here that the peer has not received (0: none;
    /// `None`: unknown, e.g. a receiving record, or an encrypted library read without key).
    pub lag_seconds: Option<u64>,
    /// That change's time.
    pub oldest_unreplicated: Option<String>,
    /// Events made here since the last successful sync to the peer.
    pub pending_events: Option<u64>,
}

/// `sync-status`: this library's site and every peer it syncs with.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatusReport {
    pub location: String,
    pub site: Option<String>,
    pub peers: Vec<PeerStatus>,
}

/// Reads the peer records of the library at `config`. Opening it (with its key) is needed
/// only for the lag of outgoing peers; without it the records are shown as stored.
pub fn sync_status(config: &OpenConfig) -> Result<SyncStatusReport> {
    let store = open_store(config)?;
    let library = Library::open(config).ok();
    report(
        store.as_ref(),
        library.as_ref(),
        config.location.to_string(),
    )
}

impl Library {
    /// `sync-status` of this open library (the daemon's replication view).
    pub fn sync_status(&self) -> Result<SyncStatusReport> {
        report(
            self.inner.store.as_ref(),
            Some(self),
            self.inner.location.clone(),
        )
    }
}

fn report(
    store: &dyn crate::store::Store,
    library: Option<&Library>,
    location: String,
) -> Result<SyncStatusReport> {
    let site = site_id(store, false)?;
    // Every event's time (the events' own clocks), read once.
    let mut times: Vec<jiff::Timestamp> = Vec::new();
    if let Some(library) = library {
        for key in library.item_keys()? {
            if let Some(timeline) = library.load_timeline_key(&key)? {
                times.extend(timeline.events.iter().map(|e| e.time));
            }
        }
    }
    let now = jiff::Timestamp::now();
    let mut peers = Vec::new();
    for meta in store.list(PEERS_PREFIX)? {
        let Some(bytes) = store.get(&meta.key, MAX_PEER_BYTES)? else {
            continue;
        };
        let Ok(mut record) = serde_json::from_slice::<PeerRecord>(&bytes) else {
            continue;
        };
        record.written.clear();
        let (mut lag_seconds, mut oldest_unreplicated, mut pending_events) = (None, None, None);
        if record.direction == "to" && library.is_some() {
            let since: Option<jiff::Timestamp> = record
                .replicated_until
                .as_deref()
                .and_then(|t| t.parse().ok());
            let pending: Vec<&jiff::Timestamp> = times
                .iter()
                .filter(|t| since.is_none_or(|s| **t > s))
                .collect();
            let oldest = pending.iter().min().copied();
            pending_events = Some(pending.len() as u64);
            lag_seconds = Some(
                oldest
                    .map(|t| now.duration_since(*t).as_secs().max(0) as u64)
                    .unwrap_or(0),
            );
            oldest_unreplicated = oldest.map(|t| t.to_string());
        }
        peers.push(PeerStatus {
            record,
            lag_seconds,
            oldest_unreplicated,
            pending_events,
        });
    }
    Ok(SyncStatusReport {
        location,
        site,
        peers,
    })
}
