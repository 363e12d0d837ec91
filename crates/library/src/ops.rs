//! Reading and changing timelines: `list`, `show`, `history`, `rollback`, `remove`.

use std::collections::{HashMap, HashSet};

use crate::error::{LibraryError, Result};
use crate::library::{resolve_in, Library};
use crate::naming::{check_name, VersionSpec};
use crate::reports::{
    EventReport, HistoryEvent, HistoryReport, HistoryVersion, ItemSummary, VersionReport,
};
use crate::timeline::{Event, EventKind, Timeline, VersionRecord, MAX_EVENTS};

/// Where `rollback` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackTarget {
    /// `--to N`.
    Version(u64),
    /// `--at TIME`: the version that was current then.
    At(jiff::Timestamp),
}

impl Library {
    /// Every item (removed ones too with `include_removed`), sorted by name.
    pub fn list(&self, include_removed: bool) -> Result<Vec<ItemSummary>> {
        let mut items = Vec::new();
        for key in self.item_keys()? {
            let Some(timeline) = self.load_timeline_key(&key)? else {
                continue;
            };
            let state = timeline.current();
            if state.removed && !include_removed {
                continue;
            }
            let record = state.version.and_then(|v| timeline.record(v));
            items.push(ItemSummary {
                name: timeline.name.clone(),
                current: state.version,
                digest: record.map(|r| r.digest.clone()),
                size: record.map(|r| r.size),
                kind: record.map(|r| r.kind.clone()),
                versions: timeline
                    .versions
                    .iter()
                    .filter(|r| r.pruned.is_none())
                    .count() as u64,
                removed: state.removed,
                updated: timeline.events.last().map(|e| e.time.to_string()),
            });
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    /// One version in full (its manifest is read and checked).
    pub fn show(&self, spec: &VersionSpec) -> Result<VersionReport> {
        let (timeline, record) = self.resolve(spec)?;
        let manifest = self.load_version_manifest(&timeline, &record)?;
        let sharing = self
            .sharing(&timeline, Some(record.version))
            .get(&record.version)
            .copied();
        let header = &manifest.header;
        Ok(VersionReport {
            name: timeline.name.clone(),
            version: record.version,
            digest: record.digest.clone(),
            size: record.size,
            created: header.created.to_string(),
            actor: header.actor.clone(),
            note: header.note.clone(),
            labels: header.labels.clone(),
            kind: header.kind.clone(),
            current: timeline.visible_current() == Some(record.version),
            signed_by: record.signed_by.clone(),
            chunks: manifest.entries.iter().filter(|e| !e.zero).count() as u64,
            stored_bytes: manifest.stored_bytes(),
            new_bytes: sharing.map(|(new, _)| new),
            shared_bytes: sharing.map(|(_, shared)| shared),
            manifest: record.manifest.clone(),
        })
    }

    /// Every version and event of an item.
    pub fn history(&self, name: &str) -> Result<HistoryReport> {
        let timeline = self.timeline(name)?;
        let state = timeline.current();
        let current = timeline.visible_current();
        let sharing = self.sharing(&timeline, None);
        Ok(HistoryReport {
            name: timeline.name.clone(),
            current: state.version,
            removed: state.removed,
            versions: timeline
                .versions
                .iter()
                .map(|r| HistoryVersion {
                    version: r.version,
                    digest: r.digest.clone(),
                    size: r.size,
                    created: r.created.to_string(),
                    kind: r.kind.clone(),
                    current: current == Some(r.version),
                    signed_by: r.signed_by.clone(),
                    pruned: r
                        .pruned
                        .as_ref()
                        .map(|p| format!("{} ({})", p.reason, p.time)),
                    new_bytes: sharing.get(&r.version).map(|(new, _)| *new),
                    shared_bytes: sharing.get(&r.version).map(|(_, shared)| *shared),
                })
                .collect(),
            events: timeline
                .events
                .iter()
                .map(|e| HistoryEvent {
                    time: e.time.to_string(),
                    actor: e.actor.clone(),
                    kind: e.kind,
                    version: e.version,
                    digest: e
                        .version
                        .and_then(|v| timeline.record(v))
                        .map(|r| r.digest.clone()),
                    note: e.note.clone(),
                })
                .collect(),
        })
    }

    /// New and shared bytes of the kept versions of `timeline` (by version number), up to and
    /// including `until` when given. A version's new bytes are those of its chunks that no
    /// earlier kept version uses; "earlier" is by creation time, then manifest name, which
    /// replicas copy unchanged, so both sites of a dual-active pair compute the same figures
    /// whatever numbers they gave the versions. Pruned versions take no part (their chunks
    /// are released). A manifest that cannot be read ends the computation: the versions from
    /// there on are left out rather than shown with a wrong split.
    fn sharing(&self, timeline: &Timeline, until: Option<u64>) -> HashMap<u64, (u64, u64)> {
        let mut order: Vec<&VersionRecord> = timeline
            .versions
            .iter()
            .filter(|r| r.pruned.is_none())
            .collect();
        order.sort_by(|a, b| {
            (a.created, &a.manifest, a.version).cmp(&(b.created, &b.manifest, b.version))
        });
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut figures = HashMap::new();
        for record in order {
            let Ok(manifest) = self.load_version_manifest(timeline, record) else {
                break;
            };
            let new_bytes: u64 = manifest
                .entries
                .iter()
                .filter(|e| !seen.contains(&e.digest))
                .fold(0u64, |sum, e| sum.saturating_add(u64::from(e.length)));
            seen.extend(manifest.entries.iter().map(|e| e.digest));
            figures.insert(
                record.version,
                (new_bytes, record.size.saturating_sub(new_bytes)),
            );
            if until == Some(record.version) {
                break;
            }
        }
        figures
    }

    /// Makes an earlier version current again (a `restore` when the item was removed).
    pub fn rollback(
        &self,
        name: &str,
        to: RollbackTarget,
        note: Option<&str>,
    ) -> Result<EventReport> {
        self.rollback_at(name, to, note, jiff::Timestamp::now())
    }

    /// `rollback` with an explicit event time (tests inject a clock).
    pub fn rollback_at(
        &self,
        name: &str,
        to: RollbackTarget,
        note: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<EventReport> {
        check_name(name)?;
        self.change_current(name, note, now, |timeline| {
            let version = match to {
                RollbackTarget::Version(v) => v,
                RollbackTarget::At(at) => {
                    let state = timeline.current_at(at);
                    match state.version {
                        Some(v) if !state.removed => v,
                        _ => {
                            return Err(LibraryError::NothingCurrentAt {
                                name: name.to_string(),
                                at: at.to_string(),
                                first: timeline
                                    .events
                                    .first()
                                    .map(|e| e.time.to_string())
                                    .unwrap_or_default(),
                            })
                        }
                    }
                }
            };
            let spec = VersionSpec {
                name: name.to_string(),
                selector: crate::naming::VersionSelector::Number(version),
            };
            resolve_in(timeline, &spec)?;
            let kind = if timeline.current().removed {
                EventKind::Restore
            } else {
                EventKind::Rollback
            };
            Ok((kind, Some(version)))
        })
    }

    /// Hides an item; `rollback` restores it while its versions are kept.
    pub fn remove(&self, name: &str, note: Option<&str>) -> Result<EventReport> {
        self.remove_at(name, note, jiff::Timestamp::now())
    }

    /// `remove` with an explicit event time (tests inject a clock).
    pub fn remove_at(
        &self,
        name: &str,
        note: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<EventReport> {
        check_name(name)?;
        self.change_current(name, note, now, |timeline| {
            if timeline.current().removed {
                return Err(LibraryError::ItemRemoved {
                    name: name.to_string(),
                });
            }
            Ok((EventKind::Remove, None))
        })
    }

    fn change_current(
        &self,
        name: &str,
        note: Option<&str>,
        now: jiff::Timestamp,
        decide: impl Fn(&Timeline) -> Result<(EventKind, Option<u64>)>,
    ) -> Result<EventReport> {
        let actor = self.inner.actor.clone();
        let (kind, version, digest) = self.update_timeline(name, |timeline| {
            let mut timeline = timeline.ok_or_else(|| LibraryError::NoSuchItem {
                name: name.to_string(),
            })?;
            if timeline.events.len() >= MAX_EVENTS {
                return Err(LibraryError::Limit {
                    what: "events of one item",
                    limit: MAX_EVENTS as u64,
                    reason: "the timeline object has a bounded size; use a new item name",
                });
            }
            let (kind, version) = decide(&timeline)?;
            let digest = version
                .and_then(|v| timeline.record(v))
                .map(|r| r.digest.clone());
            timeline.events.push(Event {
                time: now,
                actor: actor.clone(),
                kind,
                version,
                note: note.map(str::to_string),
                site: None,
            });
            Ok((timeline, (kind, version, digest)))
        })?;
        Ok(EventReport {
            name: name.to_string(),
            kind,
            version,
            digest,
            time: now.to_string(),
            actor,
            note: note.map(str::to_string),
        })
    }
}
