//! `verify` (re-read and re-hash every chunk of every kept version, on every core) and
//! `repair` (fetch good copies of damaged chunks from another library).

use std::collections::BTreeMap;

use rayon::prelude::*;
use vmedia_io::Progress;

use crate::error::{LibraryError, Result};
use crate::library::Library;
use crate::manifest::format_digest;
use crate::reports::{BrokenVersion, DamagedChunk, RepairReport, VerifyReport};

/// One distinct chunk and the versions using it.
struct ChunkUse {
    length: u32,
    versions: Vec<String>,
}

impl Library {
    /// Checks every kept version of `name` (or of every item): timelines parse, manifests
    /// are intact (and trusted, when signatures are required), and every chunk is present and
    /// hashes to its digest.
    pub fn verify(&self, name: Option<&str>, progress: &dyn Progress) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            items: 0,
            versions: 0,
            chunks: 0,
            bytes: 0,
            damaged_chunks: Vec::new(),
            broken_versions: Vec::new(),
            unreadable: Vec::new(),
        };
        let keys = match name {
            Some(name) => {
                crate::naming::check_name(name)?;
                if self.load_timeline(name)?.is_none() {
                    return Err(LibraryError::NoSuchItem {
                        name: name.to_string(),
                    });
                }
                vec![self.item_key(name)]
            }
            None => self.item_keys()?,
        };
        progress.phase("reading manifests");
        let mut uses: BTreeMap<[u8; 32], ChunkUse> = BTreeMap::new();
        // Which versions each broken chunk breaks are filled in below.
        let mut version_digests: BTreeMap<String, (String, u64, String)> = BTreeMap::new();
        for key in keys {
            let timeline = match self.load_timeline_key(&key) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    report.unreadable.push(format!("{key}: {e}"));
                    continue;
                }
            };
            report.items += 1;
            for record in timeline.versions.iter().filter(|r| r.pruned.is_none()) {
                report.versions += 1;
                let label = format!("{}@{}", timeline.name, record.version);
                version_digests.insert(
                    label.clone(),
                    (timeline.name.clone(), record.version, record.digest.clone()),
                );
                let manifest = match self.load_version_manifest(&timeline, record) {
                    Ok(m) => m,
                    Err(e) => {
                        report.broken_versions.push(BrokenVersion {
                            name: timeline.name.clone(),
                            version: record.version,
                            digest: record.digest.clone(),
                            problem: format!("manifest: {e}"),
                        });
                        continue;
                    }
                };
                for entry in manifest.entries.iter().filter(|e| !e.zero) {
                    let slot = uses.entry(entry.digest).or_insert_with(|| ChunkUse {
                        length: entry.length,
                        versions: Vec::new(),
                    });
                    if slot.versions.last() != Some(&label) {
                        slot.versions.push(label.clone());
                    }
                }
            }
        }
        report.chunks = uses.len() as u64;
        report.bytes = uses.values().map(|u| u.length as u64).sum();
        progress.set_total(report.bytes);
        progress.phase("checking chunks");
        let work: Vec<(&[u8; 32], &ChunkUse)> = uses.iter().collect();
        let damaged: Vec<(usize, String)> = self.inner.pool.install(|| {
            work.par_iter()
                .enumerate()
                .filter_map(|(index, (digest, usage))| {
                    let result = self.load_chunk_by_digest(digest, usage.length, 0, "verify");
                    progress.advance(usage.length as u64);
                    match result {
                        Ok(_) => None,
                        Err(LibraryError::ChunkDamaged { problem, .. }) => Some((index, problem)),
                        Err(e) => Some((index, e.to_string())),
                    }
                })
                .collect()
        });
        let mut broken: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (index, problem) in damaged {
            let (digest, usage) = work[index];
            let chunk = self.chunk_key(digest);
            for version in &usage.versions {
                broken
                    .entry(version.clone())
                    .or_default()
                    .push(chunk.clone());
            }
            report.damaged_chunks.push(DamagedChunk {
                chunk,
                digest: format_digest(digest),
                problem,
                versions: usage.versions.clone(),
            });
        }
        for (label, chunks) in broken {
            if let Some((name, version, digest)) = version_digests.get(&label) {
                report.broken_versions.push(BrokenVersion {
                    name: name.clone(),
                    version: *version,
                    digest: digest.clone(),
                    problem: format!(
                        "{} damaged or missing chunk(s): {}",
                        chunks.len(),
                        chunks.join(", ")
                    ),
                });
            }
        }
        Ok(report)
    }

    /// Replaces damaged or missing chunks with good copies from `from` (any library holding
    /// the same content, encrypted or not), then verifies again.
    pub fn repair(&self, from: &Library, progress: &dyn Progress) -> Result<RepairReport> {
        let before = self.verify(None, progress)?;
        let mut repaired = Vec::new();
        let mut unrepaired = Vec::new();
        progress.phase("repairing");
        for damaged in &before.damaged_chunks {
            let Some(digest) = crate::manifest::parse_digest(&damaged.digest) else {
                unrepaired.push(damaged.chunk.clone());
                continue;
            };
            let length = match self.chunk_length(&damaged.versions, &digest) {
                Some(length) => length,
                None => {
                    unrepaired.push(damaged.chunk.clone());
                    continue;
                }
            };
            match from.load_chunk_by_digest(&digest, length, 0, "the repair source") {
                Ok(plain) => {
                    let key = self.chunk_key(&digest);
                    let encoded = self.encode_chunk(&key, &plain);
                    self.store().put(&key, &encoded)?;
                    repaired.push(key);
                }
                Err(_) => unrepaired.push(damaged.chunk.clone()),
            }
        }
        self.store().flush()?;
        let after = self.verify(None, progress)?;
        Ok(RepairReport {
            repaired,
            unrepaired,
            after,
        })
    }

    /// The plain length of a chunk, from the manifest of one of the versions using it.
    fn chunk_length(&self, versions: &[String], digest: &[u8; 32]) -> Option<u32> {
        for label in versions {
            let spec = crate::naming::VersionSpec::parse(label).ok()?;
            let Ok((timeline, record)) = self.resolve(&spec) else {
                continue;
            };
            let Ok(manifest) = self.load_version_manifest(&timeline, &record) else {
                continue;
            };
            if let Some(entry) = manifest.entries.iter().find(|e| &e.digest == digest) {
                return Some(entry.length);
            }
        }
        None
    }
}
