//! Garbage collection, and the marker protocol that makes it safe while other hosts add.
//!
//! The danger: an add finds chunk X already stored and does not upload it; gc, which saw no
//! version using X, deletes it; the add then commits a version naming X. Adds and gc exclude
//! each other through marker objects under `locks/`:
//! - an add writes `locks/add-ID` *before* its first existence check and deletes it after
//!   its timeline swap; then, if it finds a live `locks/gc-*` marker, it waits until that
//!   marker is gone (keeping its own);
//! - gc writes `locks/gc-ID`, then lists `locks/add-*`: if a live add marker exists, gc
//!   deletes its own marker, waits and tries again (adds win); otherwise it marks (reads every
//!   timeline and every kept version's manifest), sweeps, and deletes its marker.
//!
//! With a store that lists what was written before (S3 is strongly consistent, so are
//! SeaweedFS and a local folder), at least one side sees the other's marker: whichever wrote
//! second lists after the other's write. So no add is between its first existence check and
//! its swap while gc marks and sweeps.
//!
//! Markers carry a heartbeat refreshed every `HEARTBEAT`; one not refreshed for `STALE` is
//! from a dead process. On the host that wrote it (same boot id), a marker whose process is
//! gone is dead at once, so a SIGKILLed add or gc on this host blocks nobody.

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use vmedia_io::Progress;

use crate::error::{LibraryError, Result};
use crate::library::Library;
use crate::reports::GcReport;
use crate::store::Store;

/// How often a live process refreshes its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A marker not refreshed for this long belongs to a dead process (8 missed heartbeats;
/// hosts' clocks must agree to well within this).
pub const STALE: Duration = Duration::from_secs(120);
/// How long gc waits for running adds before giving up for this run.
pub const GC_WAIT: Duration = Duration::from_secs(600);
/// Poll interval while waiting for the other side.
const POLL: Duration = Duration::from_millis(500);
/// A marker is a few hundred bytes.
const MAX_MARKER_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    kind: String,
    actor: String,
    boot_id: String,
    pid: u32,
    #[serde(with = "crate::timefmt")]
    heartbeat: jiff::Timestamp,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Holds a marker alive (heartbeat thread) and deletes it when dropped.
pub(crate) struct MarkerGuard {
    library: Library,
    key: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = self.library.store().delete(&self.key);
    }
}

impl Library {
    fn marker_bytes(&self, key: &str, kind: &str) -> Vec<u8> {
        let marker = Marker {
            kind: kind.to_string(),
            actor: self.inner.actor.clone(),
            boot_id: boot_id(),
            pid: std::process::id(),
            heartbeat: jiff::Timestamp::now(),
        };
        self.seal(
            key,
            serde_json::to_vec(&marker).expect("a marker serialises"),
        )
    }

    fn write_marker(&self, kind: &str) -> Result<MarkerGuard> {
        let id = hex::encode(crate::crypto::random_bytes::<16>());
        let key = format!("locks/{kind}-{id}");
        self.store().put(&key, &self.marker_bytes(&key, kind))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let library = self.clone();
        let heartbeat_key = key.clone();
        let kind = kind.to_string();
        let thread = std::thread::Builder::new()
            .name("vmedia-lib-heartbeat".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                    let bytes = library.marker_bytes(&heartbeat_key, &kind);
                    let _ = library.store().put(&heartbeat_key, &bytes);
                }
            })
            .map_err(|e| LibraryError::Io {
                what: "starting the marker heartbeat".into(),
                source: e,
            })?;
        Ok(MarkerGuard {
            library: self.clone(),
            key,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Live markers of `kind` (other than `except`), and the keys of dead ones.
    fn markers(&self, kind: &str, except: Option<&str>) -> Result<(Vec<String>, Vec<String>)> {
        let now = jiff::Timestamp::now();
        let local_boot = boot_id();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for meta in self.store().list(&format!("locks/{kind}-"))? {
            if Some(meta.key.as_str()) == except {
                continue;
            }
            let marker = self
                .store()
                .get(&meta.key, MAX_MARKER_BYTES)
                .ok()
                .flatten()
                .and_then(|bytes| self.unseal(&meta.key, bytes).ok())
                .and_then(|plain| serde_json::from_slice::<Marker>(&plain).ok());
            let alive = match marker {
                Some(m) if !local_boot.is_empty() && m.boot_id == local_boot => {
                    std::path::Path::new(&format!("/proc/{}", m.pid)).exists()
                }
                Some(m) => fresh(m.heartbeat, now),
                // Unreadable (being written, or damaged): judge by the store's clock.
                None => meta.modified.is_some_and(|t| fresh(t, now)),
            };
            if alive {
                live.push(meta.key);
            } else {
                dead.push(meta.key);
            }
        }
        Ok((live, dead))
    }

    /// Registers an add; waits while a gc is sweeping. Held until the add's timeline swap.
    pub(crate) fn begin_add(&self, progress: &dyn Progress) -> Result<MarkerGuard> {
        let guard = self.write_marker("add")?;
        let mut announced = false;
        loop {
            let (live, _) = self.markers("gc", None)?;
            if live.is_empty() {
                return Ok(guard);
            }
            if !announced {
                progress.phase("waiting for a gc to finish");
                announced = true;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Deletes chunks and manifests no kept version uses; see the module text for why this is
    /// safe while other hosts add.
    pub fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let started = Instant::now();
        let mut report = GcReport {
            ran: false,
            deleted_chunks: 0,
            freed_bytes: 0,
            kept_chunks: 0,
            kept_bytes: 0,
            deleted_manifests: 0,
            stale_markers_removed: 0,
            waited_seconds: 0,
            deferred_reason: None,
        };
        let guard = loop {
            let guard = self.write_marker("gc")?;
            let (live, _) = self.markers("add", None)?;
            if live.is_empty() {
                break guard;
            }
            drop(guard);
            if started.elapsed() > GC_WAIT {
                report.waited_seconds = started.elapsed().as_secs();
                report.deferred_reason = Some(format!(
                    "adds kept running for {}s ({} now); run gc again later",
                    GC_WAIT.as_secs(),
                    live.len()
                ));
                return Ok(report);
            }
            progress.phase("waiting for adds to finish");
            std::thread::sleep(POLL);
        };
        report.waited_seconds = started.elapsed().as_secs();
        report.ran = true;

        // Mark.
        progress.phase("marking");
        let mut live_chunks: HashSet<String> = HashSet::new();
        let mut live_manifests: HashSet<String> = HashSet::new();
        for key in self.item_keys()? {
            let Some(timeline) = self.load_timeline_key(&key)? else {
                continue;
            };
            for record in timeline.versions.iter().filter(|r| r.pruned.is_none()) {
                let manifest = match self.load_manifest(&record.manifest) {
                    Ok(manifest) => manifest,
                    Err(e) => {
                        // Pruned meanwhile? Then its chunks are not needed by it.
                        let now_pruned = self
                            .load_timeline(&timeline.name)?
                            .and_then(|(t, _)| t.record(record.version).map(|r| r.pruned.is_some()))
                            .unwrap_or(false);
                        if now_pruned {
                            continue;
                        }
                        return Err(LibraryError::Image {
                            name: format!("{}@{}", timeline.name, record.version),
                            problem: format!(
                                "gc deletes nothing while a kept version's manifest is unreadable ({e}); run `vmedia library verify` and `repair --from`"
                            ),
                        });
                    }
                };
                live_manifests.insert(format!("manifests/{}", record.manifest));
                for entry in manifest.entries.iter().filter(|e| !e.zero) {
                    live_chunks.insert(self.chunk_key(&entry.digest));
                }
            }
        }

        // Sweep.
        progress.phase("sweeping");
        let chunks = self.store().list("chunks/")?;
        let (dead, kept): (Vec<_>, Vec<_>) = chunks
            .into_iter()
            .partition(|m| !live_chunks.contains(&m.key));
        report.kept_chunks = kept.len() as u64;
        report.kept_bytes = kept.iter().map(|m| m.size).sum();
        progress.set_total(dead.len() as u64);
        let store: &dyn Store = self.store();
        let deleted: Vec<Result<u64>> = self.inner.pool.install(|| {
            dead.par_iter()
                .map(|meta| -> Result<u64> {
                    store.delete(&meta.key)?;
                    progress.advance(1);
                    Ok(meta.size)
                })
                .collect()
        });
        for result in deleted {
            report.freed_bytes += result?;
            report.deleted_chunks += 1;
        }
        for meta in self.store().list("manifests/")? {
            if !live_manifests.contains(&meta.key) {
                self.store().delete(&meta.key)?;
                report.deleted_manifests += 1;
            }
        }
        for kind in ["add", "gc"] {
            let (_, dead_markers) = self.markers(kind, Some(&guard.key))?;
            for key in dead_markers {
                self.store().delete(&key)?;
                report.stale_markers_removed += 1;
            }
        }
        drop(guard);
        Ok(report)
    }
}

fn fresh(time: jiff::Timestamp, now: jiff::Timestamp) -> bool {
    let age = now.duration_since(time);
    age < jiff::SignedDuration::try_from(STALE).unwrap_or(jiff::SignedDuration::MAX)
}
