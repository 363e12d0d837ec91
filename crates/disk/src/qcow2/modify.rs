//! In-place changes to existing qcow2 images: resize, commit into the backing file, rebase.
//!
//! `Qcow2Editor` loads the metadata, appends new clusters at the end of the file, and on
//! `finish` writes changed L2 tables and the L1 table, then writes a complete new refcount
//! structure after everything else and points the header at it. The old refcount clusters
//! become free (refcount 0), so the image stays consistent for `qemu-img check`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::check::stored_refcounts;
use super::header::{Header, MAX_L1_BYTES, MAX_VIRTUAL_SIZE};
use super::reader::{
    compressed_descriptor, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED,
    OFLAG_ZERO,
};
use crate::error::{DiskError, Result};
use crate::image::{Format, OpenOptions};

/// Host clusters tracked in memory (one u64 each) while editing.
pub const MAX_EDIT_CLUSTERS: u64 = 1 << 28;

pub struct Qcow2Editor {
    path: PathBuf,
    file: File,
    header: Header,
    l1: Vec<u64>,
    l1_moved: bool,
    l2: HashMap<usize, Vec<u64>>,
    dirty_l2: HashSet<usize>,
    refcounts: Vec<u64>,
    end: u64,
    cluster_size: u64,
}

impl Qcow2Editor {
    pub fn open(path: &Path) -> Result<Qcow2Editor> {
        Self::open_inner(path, false).map(|(e, _)| e)
    }

    fn open_inner(path: &Path, for_repair: bool) -> Result<(Qcow2Editor, Vec<u32>)> {
        let file = crate::image::open_for_writing(path)?;
        let shared: std::sync::Arc<dyn vmedia_io::ReadAt> =
            std::sync::Arc::new(file.try_clone().map_err(|e| DiskError::io(path, 0, e))?);
        let opts = OpenOptions {
            skip_backing: true,
            format: Some(Format::Qcow2),
            ..OpenOptions::default()
        };
        let img = super::reader::open(path, shared, &opts)?;
        let h = img.header().clone();
        if h.nb_snapshots > 0 {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature: "changing an image that has internal snapshots".into(),
            });
        }
        if h.crypto.is_some() && !for_repair {
            // Resize, commit and rebase write guest data in place; encrypting it there is
            // not implemented, and plaintext in an encrypted image must never happen.
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature: "changing an encrypted image in place (convert it instead)".into(),
            });
        }
        if h.extended_l2() || h.data_file.is_some() {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature: "changing an image with extended L2 entries or an external data file"
                    .into(),
            });
        }
        if h.dirty() && !for_repair {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature:
                    "changing an image whose dirty flag is set (run qemu-img check -r all first)"
                        .into(),
            });
        }
        let cs = h.cluster_size();
        let clusters = img.file_len().div_ceil(cs);
        if clusters > MAX_EDIT_CLUSTERS {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 0,
                field: "file size in clusters",
                value: clusters,
                limit: MAX_EDIT_CLUSTERS,
                why: "refcounts are edited in memory",
            });
        }
        let stored = stored_refcounts(&img)?;
        let refcounts: Vec<u64> = (0..clusters).map(|c| stored.get(c)).collect();
        let (report, computed) = super::check::check_with_counts(&img, &vmedia_io::NoProgress)?;
        if report.corruptions > 0 && !for_repair {
            return Err(DiskError::corrupt(
                path,
                "qcow2",
                0,
                "refcounts",
                format!(
                    "{} corruptions found by check; refusing to write",
                    report.corruptions
                ),
            ));
        }
        Ok((
            Qcow2Editor {
                path: path.to_path_buf(),
                l1: img.l1.clone(),
                header: h,
                file,
                l1_moved: false,
                l2: HashMap::new(),
                dirty_l2: HashSet::new(),
                refcounts,
                end: clusters * cs,
                cluster_size: cs,
            },
            computed,
        ))
    }

    /// qemu-img check -r: `all` rewrites every refcount from the metadata and fixes the
    /// COPIED flags; `leaks` only lowers refcounts that are higher than the references.
    pub fn repair(path: &Path, all: bool) -> Result<()> {
        let _span = tracing::info_span!("repair", path = %path.display(), all).entered();
        let (mut editor, computed) = Self::open_inner(path, true)?;
        for (i, &reference) in computed.iter().enumerate() {
            let reference = u64::from(reference);
            let stored = editor.refcounts.get(i).copied().unwrap_or(0);
            if (all && stored != reference) || (!all && stored > reference) {
                if let Some(slot) = editor.refcounts.get_mut(i) {
                    *slot = reference;
                }
            }
        }
        if all {
            let cs = editor.cluster_size;
            for i1 in 0..editor.l1.len() {
                let l2_offset = editor.l1[i1] & L1E_OFFSET_MASK;
                if l2_offset == 0 {
                    continue;
                }
                let rc = editor
                    .refcounts
                    .get((l2_offset / cs) as usize)
                    .copied()
                    .unwrap_or(0);
                editor.l1[i1] = if rc == 1 {
                    editor.l1[i1] | OFLAG_COPIED
                } else {
                    editor.l1[i1] & !OFLAG_COPIED
                };
                let refcounts = editor.refcounts.clone();
                let Some(table) = editor.l2_table(i1, false)? else {
                    continue;
                };
                let mut changed = false;
                for e in table.iter_mut() {
                    let host = *e & L2E_OFFSET_MASK;
                    if *e & OFLAG_COMPRESSED != 0 || host == 0 {
                        continue;
                    }
                    let rc = refcounts.get((host / cs) as usize).copied().unwrap_or(0);
                    let fixed = if rc == 1 {
                        *e | OFLAG_COPIED
                    } else {
                        *e & !OFLAG_COPIED
                    };
                    changed |= fixed != *e;
                    *e = fixed;
                }
                if changed {
                    editor.dirty_l2.insert(i1);
                }
            }
        }
        editor.header.incompatible_features &= !super::header::INCOMPAT_DIRTY;
        // The old refcount structure is freed by `finish`: its clusters are counted in
        // `computed`, so dropping them lands on zero.
        editor.finish()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn io(&self, offset: u64, e: std::io::Error) -> DiskError {
        DiskError::io(&self.path, offset, e)
    }

    fn refs(&mut self, host: u64, len: u64, delta: i64) {
        if len == 0 {
            return;
        }
        let first = host / self.cluster_size;
        let last = (host + len - 1) / self.cluster_size;
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            let r = &mut self.refcounts[c as usize];
            *r = if delta >= 0 {
                *r + delta as u64
            } else {
                r.saturating_sub(delta.unsigned_abs())
            };
        }
    }

    fn alloc(&mut self, clusters: u64) -> u64 {
        let at = self.end;
        self.end += clusters * self.cluster_size;
        self.refs(at, clusters * self.cluster_size, 1);
        at
    }

    fn l2_table(&mut self, l1_index: usize, create: bool) -> Result<Option<&mut Vec<u64>>> {
        if !self.l2.contains_key(&l1_index) {
            let entry = self.l1.get(l1_index).copied().unwrap_or(0);
            let off = entry & L1E_OFFSET_MASK;
            if off == 0 {
                if !create {
                    return Ok(None);
                }
                let at = self.alloc(1);
                self.l1[l1_index] = at | OFLAG_COPIED;
                self.l2
                    .insert(l1_index, vec![0u64; (self.cluster_size / 8) as usize]);
                self.dirty_l2.insert(l1_index);
            } else {
                let mut raw = vec![0u8; self.cluster_size as usize];
                self.file
                    .read_exact_at(&mut raw, off)
                    .map_err(|e| self.io(off, e))?;
                let t = crate::table::be64_entries(&raw);
                self.l2.insert(l1_index, t);
            }
        }
        Ok(self.l2.get_mut(&l1_index))
    }

    fn index(&self, guest_offset: u64) -> (usize, usize) {
        let cluster = guest_offset / self.cluster_size;
        let per = self.cluster_size / 8;
        ((cluster / per) as usize, (cluster % per) as usize)
    }

    /// Drops whatever the L2 entry references.
    fn release(&mut self, entry: u64) {
        if entry & OFLAG_COMPRESSED != 0 {
            let (off, size) = compressed_descriptor(entry, self.header.cluster_bits);
            self.refs(off, size, -1);
        } else {
            let host = entry & L2E_OFFSET_MASK;
            if host != 0 {
                self.refs(host, self.cluster_size, -1);
            }
        }
    }

    /// Writes one whole guest cluster (`data.len()` = cluster size, or the tail of the disk).
    pub fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        if !guest_offset.is_multiple_of(self.cluster_size)
            || data.len() as u64 > self.cluster_size
            || guest_offset + data.len() as u64 > self.header.size
        {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset: guest_offset,
                len: data.len() as u64,
                size: self.header.size,
            });
        }
        let (i1, i2) = self.index(guest_offset);
        let entry = self.l2_table(i1, true)?.map(|t| t[i2]).unwrap_or(0);
        let host_in_place = entry & L2E_OFFSET_MASK;
        let reusable = entry & OFLAG_COMPRESSED == 0
            && host_in_place != 0
            && self
                .refcounts
                .get((host_in_place / self.cluster_size) as usize)
                == Some(&1);
        let host = if reusable {
            host_in_place
        } else {
            self.release(entry);
            self.alloc(1)
        };
        let mut buf = data.to_vec();
        buf.resize(self.cluster_size as usize, 0);
        self.file
            .write_all_at(&buf, host)
            .map_err(|e| self.io(host, e))?;
        if let Some(t) = self.l2_table(i1, true)? {
            t[i2] = host | OFLAG_COPIED;
        }
        self.dirty_l2.insert(i1);
        Ok(())
    }

    /// Marks a guest cluster as reading zeros (v3 zero flag; v2 writes zeros).
    pub fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        if self.header.version < 3 {
            let zeros = vec![0u8; self.cluster_size.min(self.header.size - guest_offset) as usize];
            return self.write_cluster(guest_offset, &zeros);
        }
        let (i1, i2) = self.index(guest_offset);
        let entry = self.l2_table(i1, true)?.map(|t| t[i2]).unwrap_or(0);
        self.release(entry);
        if let Some(t) = self.l2_table(i1, true)? {
            t[i2] = OFLAG_ZERO;
        }
        self.dirty_l2.insert(i1);
        Ok(())
    }

    /// Makes every cluster unallocated (qemu's make_empty after commit).
    pub fn discard_all(&mut self) -> Result<()> {
        for i1 in 0..self.l1.len() {
            let Some(table) = self.l2_table(i1, false)? else {
                continue;
            };
            let entries: Vec<u64> = std::mem::take(table);
            let len = entries.len();
            for e in &entries {
                self.release(*e);
            }
            self.l2.insert(i1, vec![0u64; len]);
            self.dirty_l2.insert(i1);
        }
        Ok(())
    }

    /// Changes the virtual size; shrinking drops the clusters past the new end.
    pub fn set_size(&mut self, new_size: u64) -> Result<()> {
        if new_size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: new_size.to_string(),
                reason: "above qcow2's maximum".into(),
            });
        }
        let cs = self.cluster_size;
        if new_size < self.header.size {
            let first_dropped = new_size.div_ceil(cs) * cs;
            let mut off = first_dropped;
            while off < self.header.size {
                let (i1, i2) = self.index(off);
                if let Some(t) = self.l2_table(i1, false)? {
                    let e = t[i2];
                    t[i2] = 0;
                    self.release(e);
                    self.dirty_l2.insert(i1);
                }
                off += cs;
            }
        }
        let per = cs * (cs / 8);
        let needed = new_size.div_ceil(per);
        if needed * 8 > MAX_L1_BYTES {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: new_size.to_string(),
                reason: "needs an L1 table above qemu's 32 MiB limit".into(),
            });
        }
        if needed > self.l1.len() as u64 {
            self.l1.resize(needed as usize, 0);
            self.l1_moved = true;
        }
        self.header.size = new_size;
        Ok(())
    }

    /// Records a new backing file (None: standalone).
    pub fn set_backing(&mut self, name: Option<&str>, format: Option<Format>) -> Result<()> {
        self.header.backing_file = name.map(str::to_string);
        self.header.backing_format = name.and(format).map(|f| f.qemu_name().to_string());
        let mut probe = self.header.clone();
        if probe.emit().len() as u64 > self.cluster_size {
            return Err(DiskError::InvalidOption {
                key: "backing_file".into(),
                value: name.unwrap_or("").into(),
                reason: "the name does not fit in the header cluster".into(),
            });
        }
        Ok(())
    }

    /// Writes all metadata and a fresh refcount structure; syncs.
    pub fn finish(mut self) -> Result<()> {
        let cs = self.cluster_size;
        // L2 tables (only new or changed ones).
        let mut dirty: Vec<usize> = self.dirty_l2.iter().copied().collect();
        dirty.sort_unstable();
        for i1 in dirty {
            let off = self.l1[i1] & L1E_OFFSET_MASK;
            if let Some(t) = self.l2.get(&i1) {
                let bytes: Vec<u8> = t.iter().flat_map(|e| e.to_be_bytes()).collect();
                self.file
                    .write_all_at(&bytes, off)
                    .map_err(|e| self.io(off, e))?;
            }
        }
        // L1 table: rewritten in place, or moved when it grew.
        let l1_bytes_len = (self.l1.len() as u64 * 8).div_ceil(cs).max(1) * cs;
        if self.l1_moved {
            let old = self.header.l1_table_offset;
            let old_len = (u64::from(self.header.l1_size) * 8).div_ceil(cs).max(1) * cs;
            self.refs(old, old_len, -1);
            self.header.l1_table_offset = self.alloc(l1_bytes_len / cs);
        }
        self.header.l1_size = self.l1.len() as u32;
        let mut l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        l1_bytes.resize(l1_bytes_len as usize, 0);
        let l1_off = self.header.l1_table_offset;
        self.file
            .write_all_at(&l1_bytes[..(self.l1.len() * 8)], l1_off)
            .map_err(|e| self.io(l1_off, e))?;
        if self.l1_moved {
            self.file
                .write_all_at(&l1_bytes, l1_off)
                .map_err(|e| self.io(l1_off, e))?;
        }
        // Free the old refcount structure, then lay out a new one at the end.
        let old_table = self.header.refcount_table_offset;
        let old_table_len = u64::from(self.header.refcount_table_clusters) * cs;
        let mut raw = vec![0u8; old_table_len as usize];
        self.file
            .read_exact_at(&mut raw, old_table)
            .map_err(|e| self.io(old_table, e))?;
        for entry in crate::table::be64_entries(&raw) {
            let block = entry & !0x1ff;
            if block != 0 {
                self.refs(block, cs, -1);
            }
        }
        self.refs(old_table, old_table_len, -1);
        let order = self.header.refcount_order;
        let per_block = cs * 8 / (1u64 << order);
        let base = self.end / cs;
        let (mut blocks, mut table) = (0u64, 0u64);
        loop {
            let b = (base + blocks + table).div_ceil(per_block);
            let t = (b * 8).div_ceil(cs).max(1);
            if b == blocks && t == table {
                break;
            }
            blocks = b;
            table = t;
        }
        let blocks_at = self.alloc(blocks);
        let table_at = self.alloc(table);
        let mut reftable = vec![0u8; (table * cs) as usize];
        for b in 0..blocks {
            let mut block = vec![0u8; cs as usize];
            for i in 0..per_block {
                let v = self
                    .refcounts
                    .get((b * per_block + i) as usize)
                    .copied()
                    .unwrap_or(0);
                if v != 0 {
                    super::refcount::set_entry(&mut block, i, v, order);
                }
            }
            let at = blocks_at + b * cs;
            self.file
                .write_all_at(&block, at)
                .map_err(|e| self.io(at, e))?;
            reftable[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&at.to_be_bytes());
        }
        self.file
            .write_all_at(&reftable, table_at)
            .map_err(|e| self.io(table_at, e))?;
        self.file.sync_data().map_err(|e| self.io(0, e))?;
        self.header.refcount_table_offset = table_at;
        self.header.refcount_table_clusters = table as u32;
        let bytes = self.header.emit();
        self.file
            .write_all_at(&bytes, 0)
            .map_err(|e| self.io(0, e))?;
        // Clear the rest of the old header area so stale extension bytes cannot be misread.
        let used = bytes.len() as u64;
        let pad = vec![0u8; (cs.min(4096).saturating_sub(used)) as usize];
        if !pad.is_empty() {
            self.file
                .write_all_at(&pad, used)
                .map_err(|e| self.io(used, e))?;
        }
        self.file.sync_all().map_err(|e| self.io(0, e))?;
        Ok(())
    }
}

impl crate::editor::InPlaceEditor for Qcow2Editor {
    fn cluster_size(&self) -> u64 {
        self.header().cluster_size()
    }

    fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        Qcow2Editor::write_cluster(self, guest_offset, data)
    }

    fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        Qcow2Editor::zero_cluster(self, guest_offset)
    }

    fn set_parent(&mut self, parent: Option<&crate::editor::ParentRef>) -> Result<()> {
        match parent {
            Some(p) => self.set_backing(Some(&p.name), p.format),
            None => self.set_backing(None, None),
        }
    }

    fn empty(&mut self) -> Result<()> {
        self.discard_all()
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Qcow2Editor::finish(*self)
    }
}
