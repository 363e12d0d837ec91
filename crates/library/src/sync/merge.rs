//! The dual-active merge of two timelines of one item: one deterministic rule, so both sites
//! converge to the same versions, the same events and the same current version.
//!
//! - A version's identity across sites is its manifest name (plus how many earlier versions of
//!   the item share that manifest): manifests are content-addressed, and replicas share their
//!   naming keys. Numbers are per site: a version keeps the number its site gave it; a version
//!   that arrives gets the next free number, in the order the sending site numbered them.
//! - An event's identity is (time, site, actor, kind, version identity, note). `site` is the
//!   library that made it: events made here carry no site until a sync stamps them.
//! - The merged list is the two lists' longest common prefix, then the union of the rest sorted
//!   by (time, site, actor, kind, version, note). Replaying it gives the current version: the
//!   latest event by its time wins, ties broken by site id.

use std::collections::HashMap;

use crate::timeline::{Event, EventKind, Timeline};

/// A version's identity across sites: manifest name and occurrence among equal manifests.
pub(super) type VersionId = (String, usize);

/// An event as both sites name it; `Ord` is the merge order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct EventId {
    time: jiff::Timestamp,
    site: String,
    actor: String,
    kind: &'static str,
    version: Option<VersionId>,
    note: Option<String>,
}

pub(super) fn version_ids(timeline: &Timeline) -> Vec<VersionId> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    timeline
        .versions
        .iter()
        .map(|record| {
            let count = seen.entry(record.manifest.as_str()).or_insert(0);
            let id = (record.manifest.clone(), *count);
            *count += 1;
            id
        })
        .collect()
}

pub(super) fn event_ids(timeline: &Timeline, owner_site: &str) -> Vec<EventId> {
    let versions = version_ids(timeline);
    timeline
        .events
        .iter()
        .map(|event| EventId {
            time: event.time,
            site: event.site.clone().unwrap_or_else(|| owner_site.to_string()),
            actor: event.actor.clone(),
            kind: event.kind.label(),
            // Parsing checked that every event names an existing version.
            version: event
                .version
                .and_then(|v| usize::try_from(v.checked_sub(1)?).ok())
                .and_then(|index| versions.get(index).cloned()),
            note: event.note.clone(),
        })
        .collect()
}

fn kind_of(label: &str) -> EventKind {
    match label {
        "add" => EventKind::Add,
        "rollback" => EventKind::Rollback,
        "remove" => EventKind::Remove,
        _ => EventKind::Restore,
    }
}

/// Merges `remote` (a timeline of the item as site `remote_site` holds it) into `local` (site
/// `local_site`'s). The result keeps every local version number, appends the versions only
/// `remote` has, holds every event of both, and stamps every event with its site.
pub fn merge_timelines(
    local: &Timeline,
    local_site: &str,
    remote: &Timeline,
    remote_site: &str,
) -> Timeline {
    let local_versions = version_ids(local);
    let remote_versions = version_ids(remote);
    let mut merged = Timeline::new(&local.name);
    merged.versions = local.versions.clone();
    let mut numbers: HashMap<VersionId, u64> = local_versions
        .iter()
        .enumerate()
        .map(|(index, id)| (id.clone(), index as u64 + 1))
        .collect();
    for (record, id) in remote.versions.iter().zip(&remote_versions) {
        if numbers.contains_key(id) {
            continue;
        }
        let number = merged.versions.len() as u64 + 1;
        let mut record = record.clone();
        record.version = number;
        merged.versions.push(record);
        numbers.insert(id.clone(), number);
    }

    let local_events = event_ids(local, local_site);
    let remote_events = event_ids(remote, remote_site);
    let common = local_events
        .iter()
        .zip(&remote_events)
        .take_while(|(a, b)| a == b)
        .count();
    let mut tail: Vec<EventId> = local_events[common..].to_vec();
    // A multiset union: an event both tails hold (an earlier sync carried it) counts once.
    let mut unmatched: HashMap<&EventId, usize> = HashMap::new();
    for id in &local_events[common..] {
        *unmatched.entry(id).or_insert(0) += 1;
    }
    for id in &remote_events[common..] {
        match unmatched.get_mut(id) {
            Some(count) if *count > 0 => *count -= 1,
            _ => tail.push(id.clone()),
        }
    }
    tail.sort();
    merged.events = local_events[..common]
        .iter()
        .chain(tail.iter())
        .map(|id| Event {
            time: id.time,
            actor: id.actor.clone(),
            kind: kind_of(id.kind),
            version: id.version.as_ref().and_then(|v| numbers.get(v).copied()),
            note: id.note.clone(),
            site: Some(id.site.clone()),
        })
        .collect();
    merged
}

/// The timeline as a set of facts both sites must agree on after syncing both ways: version
/// digests and manifests in event order, the events with versions named by manifest, and the
/// current version's manifest. Numbers are left out: they are per site.
pub fn convergence_view(timeline: &Timeline) -> (Vec<String>, Vec<String>, Option<String>) {
    let ids = version_ids(timeline);
    let mut versions: Vec<String> = ids
        .iter()
        .map(|(manifest, n)| format!("{manifest}#{n}"))
        .collect();
    versions.sort();
    let events = event_ids(timeline, "")
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {} {} {:?} {:?}",
                e.time, e.site, e.actor, e.kind, e.version, e.note
            )
        })
        .collect();
    let state = timeline.current();
    let current = if state.removed {
        None
    } else {
        state
            .version
            .and_then(|v| timeline.record(v))
            .map(|r| r.manifest.clone())
    };
    (versions, events, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::VersionRecord;

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn add(t: &mut Timeline, manifest: &str, time: &str) {
        let number = t.versions.len() as u64 + 1;
        t.versions.push(VersionRecord {
            version: number,
            manifest: manifest.repeat(64 / manifest.len()),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1,
            created: ts(time),
            kind: "raw".into(),
            signed_by: None,
            pruned: None,
        });
        t.events.push(Event {
            time: ts(time),
            actor: "a@h".into(),
            kind: EventKind::Add,
            version: Some(number),
            note: None,
            site: None,
        });
    }

    fn event(t: &mut Timeline, kind: EventKind, version: Option<u64>, time: &str) {
        t.events.push(Event {
            time: ts(time),
            actor: "b@h".into(),
            kind,
            version,
            note: None,
            site: None,
        });
    }

    fn base() -> Timeline {
        let mut t = Timeline::new("item");
        add(&mut t, "1", "2026-01-01T00:00:00Z");
        t
    }

    #[test]
    fn dual_active_changes_converge_both_ways() {
        // The item began on A and reached B by an earlier sync both ways.
        let mut b = merge_timelines(&Timeline::new("item"), "bbbb", &base(), "aaaa");
        let mut a = merge_timelines(&base(), "aaaa", &b, "bbbb");
        assert_eq!(a, b);
        add(&mut a, "2", "2026-01-02T00:00:00Z");
        add(&mut b, "3", "2026-01-03T00:00:00Z");
        event(&mut a, EventKind::Rollback, Some(1), "2026-01-04T00:00:00Z");
        event(&mut b, EventKind::Remove, None, "2026-01-01T12:00:00Z");

        let b2 = merge_timelines(&b, "bbbb", &a, "aaaa");
        let a2 = merge_timelines(&a, "aaaa", &b2, "bbbb");
        assert_eq!(convergence_view(&a2), convergence_view(&b2));
        // Numbers given at a site keep their meaning there.
        assert_eq!(a2.versions[1].manifest, a.versions[1].manifest);
        assert_eq!(b2.versions[1].manifest, b.versions[1].manifest);
        assert_eq!(a2.versions.len(), 3);
        // The latest event (A's rollback to version 1 on the 4th) decides.
        assert_eq!(a2.visible_current(), Some(1));
        assert_eq!(b2.visible_current(), Some(1));
        // A second round changes nothing.
        assert_eq!(merge_timelines(&a2, "aaaa", &b2, "bbbb"), a2);
        assert_eq!(merge_timelines(&b2, "bbbb", &a2, "aaaa"), b2);
    }

    #[test]
    fn equal_times_are_ordered_by_site_id() {
        let mut b = merge_timelines(&Timeline::new("item"), "bbbb", &base(), "aaaa");
        let mut a = merge_timelines(&base(), "aaaa", &b, "bbbb");
        add(&mut a, "2", "2026-01-02T00:00:00Z");
        add(&mut b, "3", "2026-01-02T00:00:00Z");
        let on_a = merge_timelines(&a, "aaaa", &b, "bbbb");
        let on_b = merge_timelines(&b, "bbbb", &a, "aaaa");
        let current = |t: &Timeline| {
            t.record(t.visible_current().unwrap())
                .unwrap()
                .manifest
                .clone()
        };
        assert_eq!(current(&on_a), "3".repeat(64));
        assert_eq!(current(&on_b), "3".repeat(64));
    }

    #[test]
    fn an_item_new_to_the_receiver_arrives_whole() {
        let mut a = base();
        add(&mut a, "2", "2026-01-02T00:00:00Z");
        let merged = merge_timelines(&Timeline::new("item"), "bbbb", &a, "aaaa");
        assert_eq!(merged.versions.len(), 2);
        assert_eq!(merged.events.len(), 2);
        assert!(merged
            .events
            .iter()
            .all(|e| e.site.as_deref() == Some("aaaa")));
        let bytes = merged.to_bytes();
        Timeline::parse("t", &bytes, Some("item")).unwrap();
    }
}
