//! Item timelines: one JSON object per item listing its versions and every event that changed
//! which version is current.
//!
//! A timeline is only ever replaced by compare-and-swap (`put_if_absent` for the first version,
//! `put_if_match` after), so concurrent writers on different hosts never lose each other's
//! changes: the loser re-reads and re-applies. Versions are numbered 1, 2, ... in the order
//! their adds won the swap.

use serde::{Deserialize, Serialize};

use crate::error::{LibraryError, Result};

/// A timeline grows by one version and a few events per add: 16 MiB is tens of thousands of
/// versions, far past any retention policy.
pub const MAX_TIMELINE_BYTES: u64 = 16 << 20;
/// Versions per item.
pub const MAX_VERSIONS: usize = 100_000;
/// Events per item.
pub const MAX_EVENTS: usize = 1_000_000;
/// The format this code writes and reads.
pub const TIMELINE_FORMAT: u32 = 1;

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new version was added and became current.
    Add,
    /// An earlier version became current again.
    Rollback,
    /// The item was hidden.
    Remove,
    /// A hidden item was made visible again, with the named version current.
    Restore,
}

impl EventKind {
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Add => "add",
            EventKind::Rollback => "rollback",
            EventKind::Remove => "remove",
            EventKind::Restore => "restore",
        }
    }
}

/// One change of what is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "crate::timefmt")]
    pub time: jiff::Timestamp,
    pub actor: String,
    pub kind: EventKind,
    /// The version made current (`None` for `remove`).
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The site (library) that made the event, stamped by `sync` (`None`: made here, not yet
    /// stamped). Orders events of two sites that merge; see docs/replication.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// Why and when prune released a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    #[serde(with = "crate::timefmt")]
    pub time: jiff::Timestamp,
    pub reason: String,
}

/// One version as the timeline records it (enough for `ls`, `history` and naming).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    /// The manifest's object name (under `manifests/`).
    pub manifest: String,
    /// `sha256:hex` of the whole image.
    pub digest: String,
    pub size: u64,
    #[serde(with = "crate::timefmt")]
    pub created: jiff::Timestamp,
    /// `iso`, `qcow2`, `raw`...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
}

/// The whole timeline of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub format: u32,
    pub name: String,
    pub versions: Vec<VersionRecord>,
    pub events: Vec<Event>,
}

/// What was current at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentState {
    /// The version current (or, when removed, the one a restore brings back).
    pub version: Option<u64>,
    pub removed: bool,
}

impl Timeline {
    pub fn new(name: &str) -> Timeline {
        Timeline {
            format: TIMELINE_FORMAT,
            name: name.to_string(),
            versions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Parses and validates a timeline read from object `key` for item `expected_name`.
    pub fn parse(key: &str, bytes: &[u8], expected_name: Option<&str>) -> Result<Timeline> {
        let fail = |field: &'static str, problem: String| LibraryError::Corrupt {
            key: key.to_string(),
            offset: 0,
            field,
            problem,
        };
        crate::error::check_size(key, "a timeline", bytes, MAX_TIMELINE_BYTES)?;
        let timeline: Timeline =
            serde_json::from_slice(bytes).map_err(|e| fail("json", e.to_string()))?;
        crate::error::check_format(key, "timeline", timeline.format, TIMELINE_FORMAT)?;
        crate::naming::check_name(&timeline.name).map_err(|e| fail("name", e.to_string()))?;
        if let Some(expected) = expected_name {
            if timeline.name != expected {
                return Err(fail(
                    "name",
                    format!("holds item {:?}, expected {expected:?}", timeline.name),
                ));
            }
        }
        if timeline.versions.len() > MAX_VERSIONS {
            return Err(fail("versions", format!("more than {MAX_VERSIONS}")));
        }
        if timeline.events.len() > MAX_EVENTS {
            return Err(fail("events", format!("more than {MAX_EVENTS}")));
        }
        for (index, record) in timeline.versions.iter().enumerate() {
            if record.version != index as u64 + 1 {
                return Err(fail(
                    "versions",
                    format!(
                        "entry {index} is version {}, expected {}",
                        record.version,
                        index + 1
                    ),
                ));
            }
            if crate::manifest::parse_digest(&record.digest).is_none() {
                return Err(fail(
                    "digest",
                    format!("version {}: not sha256:hex", record.version),
                ));
            }
            if !is_object_name(&record.manifest) {
                return Err(fail(
                    "manifest",
                    format!("version {}: not a manifest name", record.version),
                ));
            }
        }
        let count = timeline.versions.len() as u64;
        for (index, event) in timeline.events.iter().enumerate() {
            let valid = match (event.kind, event.version) {
                (EventKind::Remove, None) => true,
                (EventKind::Remove, Some(_)) => false,
                (_, Some(v)) => (1..=count).contains(&v),
                (_, None) => false,
            };
            if !valid {
                return Err(fail(
                    "events",
                    format!(
                        "event {index} ({}) names version {:?} of {count}",
                        event.kind.label(),
                        event.version
                    ),
                ));
            }
        }
        Ok(timeline)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a timeline serialises")
    }

    /// The state after every event.
    pub fn current(&self) -> CurrentState {
        self.state_after(self.events.len())
    }

    /// The state after the first `count` events.
    fn state_after(&self, count: usize) -> CurrentState {
        let mut state = CurrentState {
            version: None,
            removed: false,
        };
        for event in &self.events[..count] {
            apply(&mut state, event);
        }
        state
    }

    /// Each event's effective time: its own, or the previous event's if that is later
    /// (clocks of different hosts may disagree; the order of the list is the true order).
    pub fn effective_times(&self) -> Vec<jiff::Timestamp> {
        let mut times = Vec::with_capacity(self.events.len());
        let mut last: Option<jiff::Timestamp> = None;
        for event in &self.events {
            let time = match last {
                Some(previous) if previous > event.time => previous,
                _ => event.time,
            };
            times.push(time);
            last = Some(time);
        }
        times
    }

    /// What was current at `at` (after every event whose effective time is at or before it).
    pub fn current_at(&self, at: jiff::Timestamp) -> CurrentState {
        let count = self
            .effective_times()
            .iter()
            .take_while(|time| **time <= at)
            .count();
        self.state_after(count)
    }

    pub fn record(&self, version: u64) -> Option<&VersionRecord> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.versions.get(index)
    }

    /// The version a current-version request resolves to, if any is visible.
    pub fn visible_current(&self) -> Option<u64> {
        let state = self.current();
        if state.removed {
            None
        } else {
            state.version
        }
    }
}

fn apply(state: &mut CurrentState, event: &Event) {
    match event.kind {
        EventKind::Add | EventKind::Rollback | EventKind::Restore => {
            state.version = event.version;
            state.removed = false;
        }
        EventKind::Remove => state.removed = true,
    }
}

/// Object names the library makes: lowercase hex.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    pub(crate) fn sample() -> Timeline {
        let mut timeline = Timeline::new("demo.iso");
        for v in 1..=3u64 {
            timeline.versions.push(VersionRecord {
                version: v,
                manifest: format!("{v:064x}"),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 10,
                created: ts("2026-01-01T00:00:00Z"),
                kind: "raw".into(),
                signed_by: None,
                pruned: None,
            });
            timeline.events.push(Event {
                time: ts(&format!("2026-01-0{v}T00:00:00Z")),
                actor: "a@h".into(),
                kind: EventKind::Add,
                version: Some(v),
                note: None,
                site: None,
            });
        }
        timeline
    }

    #[test]
    fn timelines_round_trip() {
        let timeline = sample();
        let parsed = Timeline::parse("t", &timeline.to_bytes(), Some("demo.iso")).unwrap();
        assert_eq!(parsed, timeline);
    }

    #[test]
    fn current_follows_rollback_remove_and_restore() {
        let mut timeline = sample();
        assert_eq!(timeline.visible_current(), Some(3));
        let event = |kind, version, day: u32| Event {
            time: ts(&format!("2026-01-{day:02}T00:00:00Z")),
            actor: "a@h".into(),
            kind,
            version,
            note: None,
            site: None,
        };
        timeline.events.push(event(EventKind::Rollback, Some(1), 4));
        assert_eq!(timeline.visible_current(), Some(1));
        timeline.events.push(event(EventKind::Remove, None, 5));
        assert_eq!(timeline.visible_current(), None);
        assert!(timeline.current().removed);
        timeline.events.push(event(EventKind::Restore, Some(1), 6));
        assert_eq!(timeline.visible_current(), Some(1));
        assert_eq!(
            timeline.current_at(ts("2026-01-02T12:00:00Z")).version,
            Some(2)
        );
        assert_eq!(
            timeline.current_at(ts("2025-12-31T00:00:00Z")).version,
            None
        );
    }

    #[test]
    fn an_earlier_clock_never_reorders_events() {
        let mut timeline = sample();
        timeline.events[2].time = ts("2025-06-01T00:00:00Z");
        let times = timeline.effective_times();
        assert_eq!(times[2], times[1]);
        assert_eq!(
            timeline.current_at(ts("2026-01-02T00:00:00Z")).version,
            Some(3)
        );
    }

    #[test]
    fn versions_must_be_numbered_in_order() {
        let mut timeline = sample();
        timeline.versions[1].version = 5;
        assert!(Timeline::parse("t", &timeline.to_bytes(), None).is_err());
    }

    #[test]
    fn events_must_name_existing_versions() {
        let mut timeline = sample();
        timeline.events[0].version = Some(4);
        assert!(Timeline::parse("t", &timeline.to_bytes(), None).is_err());
        let mut timeline = sample();
        timeline.events[0].version = None;
        assert!(Timeline::parse("t", &timeline.to_bytes(), None).is_err());
    }

    #[test]
    fn a_timeline_of_another_item_is_refused() {
        let timeline = sample();
        assert!(Timeline::parse("t", &timeline.to_bytes(), Some("other")).is_err());
    }

    #[test]
    fn manifest_names_are_hex_only() {
        let mut timeline = sample();
        timeline.versions[0].manifest = "../../etc".into();
        assert!(Timeline::parse("t", &timeline.to_bytes(), None).is_err());
    }
}
