//! qcow2 consistency check: rebuilds every cluster's reference count from the metadata and
//! compares it with the stored refcounts, as `qemu-img check` does (corruptions vs leaks).

use vmedia_io::Progress;

use super::reader::{
    compressed_descriptor, Qcow2Image, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED,
    OFLAG_COPIED,
};
use crate::error::{DiskError, Result};
use crate::image::CheckReport;

/// Clusters tracked by the check; the table is one u32 per host cluster of the file, so this
/// bounds the memory a (sparse, huge) file can demand.
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 30;

/// Reference counts rebuilt from metadata.
struct Counts {
    cluster_bits: u32,
    counts: Vec<u32>,
    report: CheckReport,
}

impl Counts {
    /// Adds one reference to every cluster touched by `[offset, offset + len)`.
    fn add(&mut self, offset: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = (offset.saturating_add(len - 1)) >> self.cluster_bits;
        for c in first..=last {
            match self.counts.get_mut(c as usize) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    self.report.corruptions += 1;
                    self.report.messages.push(format!("ERROR {what} at offset {offset:#x}: cluster {c} is beyond the end of the image file"));
                }
            }
        }
    }
}

/// Stored refcount of a cluster (0 when the refcount block is missing).
pub(crate) struct StoredRefcounts {
    pub table: Vec<u64>,
    pub blocks: std::collections::HashMap<u64, Vec<u8>>,
    pub refcount_bits: u32,
    pub entries_per_block: u64,
}

impl StoredRefcounts {
    pub fn get(&self, cluster: u64) -> u64 {
        let index = cluster / self.entries_per_block;
        let Some(&block) = self.table.get(index as usize) else {
            return 0;
        };
        let block = block & !0x1ff;
        let Some(data) = self.blocks.get(&block) else {
            return 0;
        };
        let i = cluster % self.entries_per_block;
        super::refcount::entry(data, i, self.refcount_bits.trailing_zeros())
    }
}

/// Loads the refcount table and blocks.
pub(crate) fn stored_refcounts(img: &Qcow2Image) -> Result<StoredRefcounts> {
    let h = &img.header;
    let cs = h.cluster_size();
    let table_len = u64::from(h.refcount_table_clusters) * cs;
    let mut raw = vec![0u8; table_len as usize];
    img.source
        .read_exact_at(&mut raw, h.refcount_table_offset)
        .map_err(|e| DiskError::io(&img.path, h.refcount_table_offset, e))?;
    let table: Vec<u64> = crate::table::be64_entries(&raw);
    let mut blocks = std::collections::HashMap::new();
    for (i, &entry) in table.iter().enumerate() {
        let block = entry & !0x1ff;
        if block == 0 {
            continue;
        }
        if block % cs != 0 || block.checked_add(cs).is_none_or(|e| e > img.file_len) {
            return Err(DiskError::corrupt(
                &img.path,
                "qcow2",
                h.refcount_table_offset + i as u64 * 8,
                "refcount table entry",
                format!("refcount block {block:#x} is unaligned or past the end of the file"),
            ));
        }
        let mut data = vec![0u8; cs as usize];
        img.source
            .read_exact_at(&mut data, block)
            .map_err(|e| DiskError::io(&img.path, block, e))?;
        blocks.insert(block, data);
    }
    let refcount_bits = h.refcount_bits();
    Ok(StoredRefcounts {
        table,
        blocks,
        refcount_bits,
        entries_per_block: cs * 8 / u64::from(refcount_bits),
    })
}

pub fn check(img: &Qcow2Image, progress: &dyn Progress) -> Result<CheckReport> {
    let _span =
        tracing::info_span!("check", path = %img.path.display(), format = "qcow2").entered();
    Ok(check_with_counts(img, progress)?.0)
}

/// The check, plus the reference count of every host cluster rebuilt from the metadata (what
/// a repair writes back).
pub(crate) fn check_with_counts(
    img: &Qcow2Image,
    progress: &dyn Progress,
) -> Result<(CheckReport, Vec<u32>)> {
    let h = &img.header;
    let cs = h.cluster_size();
    let nb_clusters = img.file_len.div_ceil(cs);
    if nb_clusters > MAX_CHECK_CLUSTERS {
        return Err(DiskError::Limit {
            path: img.path.clone(),
            offset: 0,
            field: "file size in clusters",
            value: nb_clusters,
            limit: MAX_CHECK_CLUSTERS,
            why: "the check keeps one counter per host cluster in memory",
        });
    }
    let mut c = Counts {
        cluster_bits: h.cluster_bits,
        counts: vec![0u32; nb_clusters as usize],
        report: CheckReport {
            filename: img.path.display().to_string(),
            format: "qcow2".into(),
            ..CheckReport::default()
        },
    };
    progress.set_total(u64::from(h.l1_size) + img.snapshots.len() as u64 * u64::from(h.l1_size));
    c.add(0, cs, "header");
    if let Some((offset, len)) = h.crypto {
        c.add(offset, len, "encryption header");
    }
    // Active L1 with fragmentation statistics and COPIED-flag checks.
    let stored = stored_refcounts(img)?;
    walk_l1(
        img,
        &mut c,
        h.l1_table_offset,
        h.l1_size,
        true,
        Some(&stored),
        progress,
    )?;
    for (snap, l1_offset, l1_size) in &img.snapshots {
        if l1_offset % cs != 0 || u64::from(*l1_size) * 8 > super::header::MAX_L1_BYTES {
            c.report.corruptions += 1;
            c.report.messages.push(format!(
                "ERROR snapshot {} ({}) l1_offset={l1_offset:#x}: invalid L1 table",
                snap.id, snap.name
            ));
            continue;
        }
        walk_l1(img, &mut c, *l1_offset, *l1_size, false, None, progress)?;
    }
    if h.nb_snapshots > 0 {
        let table_len = snapshot_table_len(img);
        c.add(h.snapshots_offset, table_len, "snapshot table");
    }
    c.add(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        "refcount table",
    );
    for &entry in &stored.table {
        let block = entry & !0x1ff;
        if block != 0 {
            c.add(block, cs, "refcount block");
        }
    }
    let mut highest = 0u64;
    for (i, &computed) in c.counts.iter().enumerate() {
        let i = i as u64;
        let on_disk = stored.get(i);
        let computed = u64::from(computed);
        if computed > 0 {
            highest = i + 1;
        }
        if on_disk != computed {
            if on_disk < computed {
                c.report.corruptions += 1;
                c.report.messages.push(format!(
                    "ERROR cluster {i} refcount={on_disk} reference={computed}"
                ));
            } else {
                c.report.leaks += 1;
                c.report.messages.push(format!(
                    "Leaked cluster {i} refcount={on_disk} reference={computed}"
                ));
            }
        }
    }
    let total = h.size.div_ceil(cs);
    c.report.total_clusters = Some(total).filter(|&v| v != 0);
    c.report.image_end_offset = Some(highest * cs).filter(|&v| v != 0);
    for field in [
        &mut c.report.allocated_clusters,
        &mut c.report.fragmented_clusters,
        &mut c.report.compressed_clusters,
    ] {
        if *field == Some(0) {
            *field = None;
        }
    }
    Ok((c.report, c.counts))
}

/// Bytes of the snapshot table (entries are 8-byte aligned).
fn snapshot_table_len(img: &Qcow2Image) -> u64 {
    let mut len = 0u64;
    let mut pos = img.header.snapshots_offset;
    for _ in 0..img.header.nb_snapshots {
        let mut fixed = [0u8; 40];
        if img.source.read_exact_at(&mut fixed, pos).is_err() {
            break;
        }
        let Some(entry) = super::SnapshotEntryHeader::parse(&fixed) else {
            break;
        };
        let (id_len, name_len, extra) = (entry.id_len, entry.name_len, entry.extra_len);
        let entry = (40 + extra + id_len + name_len).div_ceil(8) * 8;
        len += entry;
        pos += entry;
    }
    len
}

fn walk_l1(
    img: &Qcow2Image,
    c: &mut Counts,
    l1_offset: u64,
    l1_size: u32,
    active: bool,
    stored: Option<&super::check::StoredRefcounts>,
    progress: &dyn Progress,
) -> Result<()> {
    let h = &img.header;
    let cs = h.cluster_size();
    c.add(l1_offset, u64::from(l1_size) * 8, "L1 table");
    let l1: Vec<u64> = if active {
        img.l1.clone()
    } else {
        let mut raw = vec![0u8; l1_size as usize * 8];
        img.source
            .read_exact_at(&mut raw, l1_offset)
            .map_err(|e| DiskError::io(&img.path, l1_offset, e))?;
        crate::table::be64_entries(&raw)
    };
    let (mut allocated, mut fragmented, mut compressed) = (0u64, 0u64, 0u64);
    let entry_words = if h.extended_l2() { 2 } else { 1 };
    let external_data = h.incompatible_features & super::header::INCOMPAT_DATA_FILE != 0;
    for (i, &l1e) in l1.iter().enumerate() {
        progress.advance(1);
        let l2_offset = l1e & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        if !l2_offset.is_multiple_of(cs) || l2_offset >= img.file_len {
            c.report.corruptions += 1;
            c.report.messages.push(format!("ERROR l2_offset={l2_offset:#x}: L2 table is not cluster aligned or past the end of the file; L1 index {i}"));
            continue;
        }
        c.add(l2_offset, cs, "L2 table");
        // qemu measures contiguity within one L2 table.
        let mut next_contiguous = 0u64;
        if let Some(stored) = stored {
            let rc = stored.get(l2_offset / cs);
            if (rc == 1) != (l1e & OFLAG_COPIED != 0) {
                c.report.corruptions += 1;
                c.report.messages.push(format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}"
                ));
            }
        }
        let table = img.l2_table(l2_offset)?;
        for (j, entry) in table.iter().step_by(entry_words).enumerate() {
            let entry = *entry;
            if entry & OFLAG_COMPRESSED != 0 {
                let (offset, size) = compressed_descriptor(entry, h.cluster_bits);
                c.add(offset, size, "compressed cluster");
                if active {
                    // Compressed clusters count as fragmented, as in qemu.
                    allocated += 1;
                    compressed += 1;
                    fragmented += 1;
                }
                continue;
            }
            let host = entry & L2E_OFFSET_MASK;
            if host == 0 && !(external_data && entry & OFLAG_COPIED != 0) {
                continue;
            }
            if !host.is_multiple_of(cs) {
                c.report.corruptions += 1;
                c.report.messages.push(format!("ERROR offset={host:#x}: data cluster is not properly aligned; L2 entry corrupted (L2 table {l2_offset:#x} index {j})"));
                continue;
            }
            if active {
                allocated += 1;
                if next_contiguous != 0 && host != next_contiguous {
                    fragmented += 1;
                }
                next_contiguous = host + cs;
            }
            if external_data {
                continue;
            }
            c.add(host, cs, "data cluster");
            if let Some(stored) = stored {
                let rc = stored.get(host / cs);
                if (rc == 1) != (entry & OFLAG_COPIED != 0) {
                    c.report.corruptions += 1;
                    c.report.messages.push(format!(
                        "ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={rc}"
                    ));
                }
            }
        }
    }
    if active {
        c.report.allocated_clusters = Some(allocated);
        c.report.fragmented_clusters = Some(fragmented);
        c.report.compressed_clusters = Some(compressed);
    }
    Ok(())
}
