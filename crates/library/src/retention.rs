//! Retention: which versions `prune` releases, and why.
//!
//! A version is kept when any of these holds (the reason reported is the first that applies):
//! 1. it is the item's current version (and the item is not removed);
//! 2. it was current at some moment of the window `[now - keep_within, now]`: current at the
//!    window's start, or made current by an add, rollback or restore inside it (events after
//!    `now`, from a clock ahead of the injected one, count as inside);
//! 3. it is one of the `keep_last` highest-numbered versions of an item that is not removed.
//!
//! Everything else is released: prune marks it in the timeline (by compare-and-swap, so a
//! concurrent add or rollback is never lost) and then deletes its manifest. Its chunks go at
//! the next `gc`, unless another kept version uses them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::library::Library;
use crate::reports::{KeptVersion, PruneReport, PrunedVersion};
use crate::timeline::{EventKind, Pruned, Timeline};

/// The decision for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep(String),
    Release(String),
}

/// Decides every not-yet-pruned version of `timeline` under the policy.
pub fn decide(
    timeline: &Timeline,
    now: jiff::Timestamp,
    keep_within: Duration,
    keep_last: Option<u32>,
) -> BTreeMap<u64, Decision> {
    let window_start = jiff::SignedDuration::try_from(keep_within)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .unwrap_or(jiff::Timestamp::MIN);
    let mut kept: BTreeMap<u64, String> = BTreeMap::new();
    let mut keep = |version: u64, reason: String| {
        kept.entry(version).or_insert(reason);
    };
    let state = timeline.current();
    if let (Some(v), false) = (state.version, state.removed) {
        keep(v, "current".into());
    }
    let at_start = timeline.current_at(window_start);
    if let (Some(v), false) = (at_start.version, at_start.removed) {
        keep(v, format!("current at the window's start ({window_start})"));
    }
    let times = timeline.effective_times();
    for (event, time) in timeline.events.iter().zip(&times) {
        if *time > window_start && event.kind != EventKind::Remove {
            if let Some(v) = event.version {
                keep(v, format!("current from {time}, inside the window"));
            }
        }
    }
    if let (Some(n), false) = (keep_last, state.removed) {
        let mut last: Vec<u64> = timeline
            .versions
            .iter()
            .filter(|r| r.pruned.is_none())
            .map(|r| r.version)
            .collect();
        last.reverse();
        for v in last.into_iter().take(n as usize) {
            keep(v, format!("one of the last {n}"));
        }
    }
    // When each version last stopped being current, for the release reason.
    let mut last_until: BTreeMap<u64, jiff::Timestamp> = BTreeMap::new();
    let mut current: Option<u64> = None;
    for (event, time) in timeline.events.iter().zip(&times) {
        let next = match event.kind {
            EventKind::Remove => None,
            _ => event.version,
        };
        if let Some(previous) = current {
            if next != Some(previous) {
                last_until.insert(previous, *time);
            }
        }
        current = next;
    }
    timeline
        .versions
        .iter()
        .filter(|r| r.pruned.is_none())
        .map(|r| {
            let decision = match kept.get(&r.version) {
                Some(reason) => Decision::Keep(reason.clone()),
                None => Decision::Release(match last_until.get(&r.version) {
                    Some(until) => format!(
                        "last current until {until}, before the window's start ({window_start})"
                    ),
                    None => format!("not current at any moment since {window_start}"),
                }),
            };
            (r.version, decision)
        })
        .collect()
}

impl Library {
    /// Applies the retention policy at `now` (or only reports it with `dry_run`).
    pub fn prune(&self, dry_run: bool, now: jiff::Timestamp) -> Result<PruneReport> {
        let keep_within = self.keep_within();
        let keep_last = self.keep_last();
        let mut report = PruneReport {
            dry_run,
            now: now.to_string(),
            keep_within_seconds: keep_within.as_secs(),
            keep_last,
            pruned: Vec::new(),
            kept: Vec::new(),
        };
        for key in self.item_keys()? {
            let Some(timeline) = self.load_timeline_key(&key)? else {
                continue;
            };
            let name = timeline.name.clone();
            let decided = if dry_run {
                decide(&timeline, now, keep_within, keep_last)
            } else {
                self.update_timeline(&name, |current| {
                    let mut timeline = current.unwrap_or_else(|| timeline.clone());
                    let decided = decide(&timeline, now, keep_within, keep_last);
                    for (version, decision) in &decided {
                        if let Decision::Release(reason) = decision {
                            if let Some(record) = timeline.versions.get_mut(*version as usize - 1) {
                                record.pruned = Some(Pruned {
                                    time: now,
                                    reason: reason.clone(),
                                });
                            }
                        }
                    }
                    Ok((timeline, decided))
                })?
            };
            for (version, decision) in decided {
                let Some(record) = timeline.record(version) else {
                    continue;
                };
                match decision {
                    Decision::Keep(reason) => report.kept.push(KeptVersion {
                        name: name.clone(),
                        version,
                        reason,
                    }),
                    Decision::Release(reason) => {
                        if !dry_run {
                            // After the swap: nothing names it any more. A crash before this
                            // delete leaves the manifest to gc.
                            self.store()
                                .delete(&format!("manifests/{}", record.manifest))?;
                        }
                        report.pruned.push(PrunedVersion {
                            name: name.clone(),
                            version,
                            digest: record.digest.clone(),
                            size: record.size,
                            reason,
                        });
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Event;

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    const H72: Duration = Duration::from_secs(72 * 3600);

    #[test]
    fn versions_current_inside_the_window_are_kept() {
        // Versions added on Jan 1, 2, 3; now is Jan 5 12:00, window 72h: starts Jan 2 12:00.
        let timeline = crate::timeline::tests::sample();
        let decided = decide(&timeline, ts("2026-01-05T12:00:00Z"), H72, None);
        assert!(matches!(decided[&1], Decision::Release(_)));
        assert!(
            matches!(decided[&2], Decision::Keep(_)),
            "current at window start"
        );
        assert!(matches!(decided[&3], Decision::Keep(_)));
    }

    #[test]
    fn a_rolled_back_version_is_kept_and_the_replaced_one_expires() {
        let mut timeline = crate::timeline::tests::sample();
        timeline.events.push(Event {
            time: ts("2026-01-10T00:00:00Z"),
            actor: "a".into(),
            kind: EventKind::Rollback,
            version: Some(1),
            note: None,
            site: None,
        });
        let decided = decide(&timeline, ts("2026-01-20T00:00:00Z"), H72, None);
        assert!(matches!(decided[&1], Decision::Keep(_)));
        assert!(matches!(decided[&2], Decision::Release(_)));
        let Decision::Release(reason) = &decided[&3] else {
            panic!("version 3 kept")
        };
        assert!(reason.contains("2026-01-10"), "{reason}");
    }

    #[test]
    fn keep_last_keeps_the_newest_versions() {
        let timeline = crate::timeline::tests::sample();
        let decided = decide(&timeline, ts("2026-03-01T00:00:00Z"), H72, Some(2));
        assert!(matches!(decided[&1], Decision::Release(_)));
        assert!(matches!(decided[&2], Decision::Keep(_)));
        assert!(matches!(decided[&3], Decision::Keep(_)));
    }

    #[test]
    fn a_removed_item_expires_after_the_window() {
        let mut timeline = crate::timeline::tests::sample();
        timeline.events.push(Event {
            time: ts("2026-01-04T00:00:00Z"),
            actor: "a".into(),
            kind: EventKind::Remove,
            version: None,
            note: None,
            site: None,
        });
        let inside = decide(&timeline, ts("2026-01-05T00:00:00Z"), H72, Some(5));
        assert!(matches!(inside[&3], Decision::Keep(_)));
        let after = decide(&timeline, ts("2026-02-01T00:00:00Z"), H72, Some(5));
        assert!(after.values().all(|d| matches!(d, Decision::Release(_))));
    }
}
