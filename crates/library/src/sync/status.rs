//! `sync-status`: the peer records a library keeps under `sync/`, with the replication lag
//! (age of the oldest change not yet replicated) computed from the library's own timelines,
//! and the dual-active state of each item against each peer it can read (its timelines read
//! the way `sync` reads them, compared by the identities the merge uses).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::merge::{event_ids, merge_timelines, version_ids, EventId};
use super::{site_id, PeerRecord, MAX_PEER_BYTES, PEERS_PREFIX};
use crate::error::Result;
use crate::library::{open_store, Library};
use crate::location::{Location, OpenConfig};
use crate::timeline::Timeline;

/// How an item stands between this site and one peer, by the events each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemAgreement {
    /// Both hold the same events (and so the same current version).
    Agree,
    /// This site holds changes the peer has not received; the peer has none of its own.
    Ahead,
    /// The peer holds changes this site has not received; none are pending the other way.
    Behind,
    /// Both sides changed the item since they last exchanged: the merge rule will decide.
    Diverged,
}

/// The event that decides an item's current version once both sides have merged (the latest
/// by time, ties to the larger site id: docs/replication.md, the conflict rule).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecidingEvent {
    /// The site that made it.
    pub site: String,
    /// "here", "peer", or "other" (a third site, whose change reached one of the two).
    pub side: String,
    pub kind: String,
    pub time: String,
    /// The digest it makes current (`None`: a removal).
    pub digest: Option<String>,
}

/// One item's dual-active state against one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemPeerState {
    pub name: String,
    pub state: ItemAgreement,
    /// Both sites show the same current content (the same digest, or both removed/absent).
    pub same_current: bool,
    /// This site's current version (its own number) and digest; `None` when removed or absent.
    pub here_version: Option<u64>,
    pub here_digest: Option<String>,
    /// The peer's current version (the peer's number) and digest.
    pub peer_version: Option<u64>,
    pub peer_digest: Option<String>,
    /// Versions here the peer lacks, and versions there this site lacks.
    pub versions_to_send: u64,
    pub versions_to_receive: u64,
    /// Events (adds, rollbacks, removals, restores) pending each way.
    pub events_to_send: u64,
    pub events_to_receive: u64,
    /// What decides the current version after both merge; `None` for an item with no event.
    pub decided_by: Option<DecidingEvent>,
}

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
    /// Per item, how this site and the peer stand (`None` when the peer could not be read
    /// from here, or this library has no site id yet).
    pub items: Option<Vec<ItemPeerState>>,
    /// Why `items` is missing, when the peer could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_error: Option<String>,
}

/// `sync-status`: this library's site and every peer it syncs with.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatusReport {
    pub location: String,
    pub site: Option<String>,
    pub peers: Vec<PeerStatus>,
}

/// Reads the peer records of the library at `config`. Opening it (with its key) is needed
/// only for the lag of outgoing peers and the items' states; without it the records are shown
/// as stored. Each peer is opened at its recorded location with this library's S3 settings
/// and key (replicas share the key).
pub fn sync_status(config: &OpenConfig) -> Result<SyncStatusReport> {
    let store = open_store(config)?;
    let library = Library::open(config).ok();
    let open_peer = |record: &PeerRecord| {
        Library::open(&OpenConfig {
            location: Location::parse(&record.peer_location)?,
            s3: config.s3.clone(),
            store: None,
            key: config.key.clone(),
            actor: config.actor.clone(),
        })
    };
    report(
        store.as_ref(),
        library.as_ref(),
        config.location.to_string(),
        &open_peer,
    )
}

impl Library {
    /// `sync-status` of this open library (the daemon's replication view). A peer is read
    /// with the configuration in `peers` whose location it recorded (the daemon's own
    /// replication peers, credentials included), else at its recorded location as is.
    pub fn sync_status(&self, peers: &[OpenConfig]) -> Result<SyncStatusReport> {
        let open_peer = |record: &PeerRecord| match peers
            .iter()
            .find(|p| p.location.to_string() == record.peer_location)
        {
            Some(config) => Library::open(config),
            None => Library::open(&OpenConfig {
                location: Location::parse(&record.peer_location)?,
                s3: Default::default(),
                store: None,
                key: None,
                actor: self.inner.actor.clone(),
            }),
        };
        report(
            self.inner.store.as_ref(),
            Some(self),
            self.inner.location.clone(),
            &open_peer,
        )
    }
}

/// Every item's timeline in `library`, by name.
fn timelines(library: &Library) -> Result<BTreeMap<String, Timeline>> {
    let mut found = BTreeMap::new();
    for key in library.item_keys()? {
        if let Some(timeline) = library.load_timeline_key(&key)? {
            found.insert(timeline.name.clone(), timeline);
        }
    }
    Ok(found)
}

/// The current digest and version of `timeline` (`None`s when removed or absent).
fn current_of(timeline: Option<&Timeline>) -> (Option<u64>, Option<String>) {
    let Some(timeline) = timeline else {
        return (None, None);
    };
    let state = timeline.current();
    if state.removed {
        return (None, None);
    }
    let digest = state
        .version
        .and_then(|v| timeline.record(v))
        .map(|r| r.digest.clone());
    (state.version, digest)
}

/// How many of `ours` the other list lacks, counting equal items as a multiset.
fn missing_from<T: std::hash::Hash + Eq>(ours: &[T], theirs: &[T]) -> u64 {
    let mut counts: HashMap<&T, usize> = HashMap::new();
    for item in theirs {
        *counts.entry(item).or_insert(0) += 1;
    }
    let mut missing = 0u64;
    for item in ours {
        match counts.get_mut(item) {
            Some(count) if *count > 0 => *count -= 1,
            _ => missing += 1,
        }
    }
    missing
}

/// The state of one item between `here` (site `here_site`) and the peer (site `peer_site`);
/// either timeline may be absent (the item exists on one side only).
pub fn item_peer_state(
    name: &str,
    here: Option<&Timeline>,
    here_site: &str,
    peer: Option<&Timeline>,
    peer_site: &str,
) -> ItemPeerState {
    let empty = Timeline::new(name);
    let (h, p) = (here.unwrap_or(&empty), peer.unwrap_or(&empty));
    let (here_events, peer_events): (Vec<EventId>, Vec<EventId>) =
        (event_ids(h, here_site), event_ids(p, peer_site));
    let events_to_send = missing_from(&here_events, &peer_events);
    let events_to_receive = missing_from(&peer_events, &here_events);
    let versions_to_send = missing_from(&version_ids(h), &version_ids(p));
    let versions_to_receive = missing_from(&version_ids(p), &version_ids(h));
    let state = match (events_to_send > 0, events_to_receive > 0) {
        (false, false) => ItemAgreement::Agree,
        (true, false) => ItemAgreement::Ahead,
        (false, true) => ItemAgreement::Behind,
        (true, true) => ItemAgreement::Diverged,
    };
    let (here_version, here_digest) = current_of(here);
    let (peer_version, peer_digest) = current_of(peer);
    // The merge both sides will reach: its last event is the one that decides.
    let merged = merge_timelines(h, here_site, p, peer_site);
    let decided_by = merged.events.last().map(|event| {
        let site = event.site.clone().unwrap_or_else(|| here_site.to_string());
        let side = if site == here_site {
            "here"
        } else if site == peer_site {
            "peer"
        } else {
            "other"
        };
        DecidingEvent {
            side: side.to_string(),
            site,
            kind: event.kind.label().to_string(),
            time: event.time.to_string(),
            digest: event
                .version
                .and_then(|v| merged.record(v))
                .map(|r| r.digest.clone()),
        }
    });
    ItemPeerState {
        name: name.to_string(),
        state,
        same_current: here_digest == peer_digest,
        here_version,
        here_digest,
        peer_version,
        peer_digest,
        versions_to_send,
        versions_to_receive,
        events_to_send,
        events_to_receive,
        decided_by,
    }
}

/// Every item of either side, compared.
fn item_states(
    here: &BTreeMap<String, Timeline>,
    here_site: &str,
    peer: &Library,
    peer_site: &str,
) -> Result<Vec<ItemPeerState>> {
    let theirs = timelines(peer)?;
    let mut names: Vec<&String> = here.keys().chain(theirs.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|name| item_peer_state(name, here.get(name), here_site, theirs.get(name), peer_site))
        .collect())
}

fn report(
    store: &dyn crate::store::Store,
    library: Option<&Library>,
    location: String,
    open_peer: &dyn Fn(&PeerRecord) -> Result<Library>,
) -> Result<SyncStatusReport> {
    let site = site_id(store, false)?;
    // Every event's time (the events' own clocks), read once.
    let here = match library {
        Some(library) => Some(timelines(library)?),
        None => None,
    };
    let times: Vec<jiff::Timestamp> = here
        .iter()
        .flat_map(|items| items.values())
        .flat_map(|t| t.events.iter().map(|e| e.time))
        .collect();
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
        let (items, items_error) = match (&here, &site) {
            (Some(here), Some(site)) => {
                match open_peer(&record)
                    .and_then(|peer| item_states(here, site, &peer, &record.peer_site))
                {
                    Ok(items) => (Some(items), None),
                    Err(e) => (None, Some(format!("cannot read the peer from here: {e}"))),
                }
            }
            _ => (None, None),
        };
        peers.push(PeerStatus {
            record,
            lag_seconds,
            oldest_unreplicated,
            pending_events,
            items,
            items_error,
        });
    }
    Ok(SyncStatusReport {
        location,
        site,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AddOptions, AddSource, InitOptions};

    fn add(library: &Library, name: &str, seed: u8, time: &str) {
        library
            .add(
                name,
                AddSource::Reader(Box::new(std::io::Cursor::new(vec![seed; 70_000]))),
                &AddOptions {
                    now: Some(time.parse().unwrap()),
                    ..Default::default()
                },
                &vmedia_io::NoProgress,
            )
            .unwrap();
    }

    #[test]
    fn each_item_is_agree_ahead_behind_or_diverged_against_a_peer() {
        let dir = tempfile::tempdir().unwrap();
        let config = |name: &str| OpenConfig::folder(dir.path().join(name), "tester@host");
        let here = Library::init(&config("here"), &InitOptions::default()).unwrap();
        for name in ["same", "ahead", "behind", "diverged"] {
            add(&here, name, 1, "2026-05-01T00:00:00Z");
        }
        let options = crate::sync::SyncOptions::default();
        let sent = crate::sync::sync(
            &config("here"),
            &config("peer"),
            &options,
            &vmedia_io::NoProgress,
        )
        .unwrap();
        assert!(sent.complete(), "{sent:?}");
        let peer = Library::open(&config("peer")).unwrap();
        add(&here, "ahead", 2, "2026-05-02T00:00:00Z");
        add(&peer, "behind", 3, "2026-05-02T00:00:00Z");
        add(&here, "diverged", 4, "2026-05-02T00:00:00Z");
        // The peer's change is the later one: it decides once both merge.
        add(&peer, "diverged", 5, "2026-05-03T00:00:00Z");
        add(&here, "only-here", 6, "2026-05-02T00:00:00Z");

        let report = sync_status(&config("here")).unwrap();
        let [status] = report.peers.as_slice() else {
            panic!("one peer expected: {report:?}");
        };
        assert_eq!(status.record.direction, "to");
        let items = status.items.as_ref().expect("the folder peer is readable");
        let by_name: BTreeMap<&str, &ItemPeerState> =
            items.iter().map(|i| (i.name.as_str(), i)).collect();
        let same = by_name["same"];
        assert_eq!(same.state, ItemAgreement::Agree);
        assert!(same.same_current);
        assert_eq!((same.versions_to_send, same.versions_to_receive), (0, 0));
        assert_eq!(same.decided_by.as_ref().unwrap().side, "here");

        let ahead = by_name["ahead"];
        assert_eq!(ahead.state, ItemAgreement::Ahead);
        assert!(!ahead.same_current);
        assert_eq!((ahead.versions_to_send, ahead.versions_to_receive), (1, 0));
        assert_eq!((ahead.here_version, ahead.peer_version), (Some(2), Some(1)));

        let behind = by_name["behind"];
        assert_eq!(behind.state, ItemAgreement::Behind);
        assert_eq!(
            (behind.versions_to_send, behind.versions_to_receive),
            (0, 1)
        );
        assert_eq!((behind.events_to_send, behind.events_to_receive), (0, 1));
        assert_eq!(behind.decided_by.as_ref().unwrap().side, "peer");

        let diverged = by_name["diverged"];
        assert_eq!(diverged.state, ItemAgreement::Diverged);
        assert_eq!(
            (diverged.versions_to_send, diverged.versions_to_receive),
            (1, 1)
        );
        let decided = diverged.decided_by.as_ref().unwrap();
        assert_eq!(
            (decided.side.as_str(), decided.kind.as_str()),
            ("peer", "add")
        );
        assert_eq!(decided.digest, diverged.peer_digest);
        assert_eq!(decided.site, status.record.peer_site);

        let only_here = by_name["only-here"];
        assert_eq!(only_here.state, ItemAgreement::Ahead);
        assert_eq!(only_here.peer_digest, None);

        // After syncing both ways every item agrees, on the peer's version of "diverged".
        for (from, to) in [("here", "peer"), ("peer", "here")] {
            crate::sync::sync(&config(from), &config(to), &options, &vmedia_io::NoProgress)
                .unwrap();
        }
        let report = sync_status(&config("here")).unwrap();
        let status = report
            .peers
            .iter()
            .find(|p| p.record.direction == "to")
            .unwrap();
        for item in status.items.as_ref().unwrap() {
            assert_eq!(item.state, ItemAgreement::Agree, "{item:?}");
            assert!(item.same_current, "{item:?}");
        }
        let diverged = status
            .items
            .as_ref()
            .unwrap()
            .iter()
            .find(|i| i.name == "diverged")
            .unwrap();
        assert_eq!(diverged.here_digest, decided.digest);
    }
}
