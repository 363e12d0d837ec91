//! Emit stage: volume descriptors, path tables, directory records (with Rock Ridge), the boot
//! catalog and system area, then the file data, streamed by a bounded parallel reader ahead
//! of one sequential writer. All-zero ranges are left as holes, so sparse inputs stay sparse.

use super::layout::{self, MetaSet, Plan};
use super::records::{both16, both32, dir_record, Addrs, MeasureCtx};
use super::rrip::{self, CeArea};
use super::tree::{self, DataId, DataSource, NodeId, NodeKind};
use super::{BootReport, IntegrityReport, WriteError, WriteReport, SECTOR_SIZE};
use crate::integrity::ImplantTask;
use crate::spec::IsoSpec;
use rayon::prelude::*;
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use vmedia_io::Durability;
use vmedia_io::Progress;

/// Files at least this big are copied on their own instead of batched with others.
const BIG_FILE: u64 = 4 << 20;
/// Bytes of small files read together (in parallel) and written with one call.
const WINDOW_BYTES: u64 = 4 << 20;
/// Chunk size for big files: large writes, bounded memory.
const CHUNK_BYTES: u64 = 8 << 20;
/// Chunks in flight between the reader and the writer (bounds memory to ~3 windows).
const PIPELINE_DEPTH: usize = 3;
/// Files of one folder read as one task: enough to share the folder's descriptor, few enough
/// that a window of one big folder still spreads over both cores.
const GROUP_FILES: usize = 64;
/// The 17-byte volume descriptor date "YYYYMMDDHHMMSScc" + UTC offset.
fn vd_date(unix: i64) -> [u8; 17] {
    let t = crate::date::utc_datetime(unix);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.year().clamp(0, 9999),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(text.as_bytes());
    out
}

fn put_str(buf: &mut [u8], value: &str, joliet: bool) {
    if joliet {
        let mut units = value.encode_utf16();
        for pair in buf.chunks_mut(2) {
            let u = units.next().unwrap_or(0x20);
            if pair.len() == 2 {
                pair.copy_from_slice(&u.to_be_bytes());
            } else {
                pair[0] = 0;
            }
        }
    } else {
        let b = value.as_bytes();
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = b.get(i).copied().unwrap_or(b' ');
        }
    }
}

impl Plan {
    fn ctx(&self) -> MeasureCtx<'_> {
        MeasureCtx::new(&self.tree, self.rr, &self.spec, &self.serial)
    }

    /// A primary (type 1) or Joliet supplementary (type 2) volume descriptor for `set`.
    fn volume_descriptor(&self, set: &MetaSet, joliet: bool) -> Vec<u8> {
        let mut vd = vec![0u8; SECTOR_SIZE as usize];
        vd[0] = if joliet { 2 } else { 1 };
        vd[1..6].copy_from_slice(b"CD001");
        vd[6] = 1;
        let v = &self.spec.volume;
        put_str(
            &mut vd[8..40],
            v.system_id.as_deref().unwrap_or("LINUX"),
            joliet,
        );
        put_str(
            &mut vd[40..72],
            v.volume_id.as_deref().unwrap_or("CDROM"),
            joliet,
        );
        vd[80..88].copy_from_slice(&both32(self.volume_sectors - set.base));
        if joliet {
            vd[88..91].copy_from_slice(b"%/E");
        }
        vd[120..124].copy_from_slice(&both16(1));
        vd[124..128].copy_from_slice(&both16(1));
        vd[128..132].copy_from_slice(&both16(SECTOR_SIZE as u16));
        let (pt_bytes, l, m, dir_lba, dir_sectors, root_node) = if joliet {
            (
                set.joliet_path_table_bytes,
                set.joliet_path_l,
                set.joliet_path_m,
                &set.joliet_dir_lba,
                &set.joliet_dir_sectors,
                self.joliet.as_ref().map(|j| j.dirs[0].node),
            )
        } else {
            (
                set.iso_path_table_bytes,
                set.iso_path_l,
                set.iso_path_m,
                &set.iso_dir_lba,
                &set.iso_dir_sectors,
                Some(self.iso.dirs[0].node),
            )
        };
        vd[132..140].copy_from_slice(&both32(pt_bytes));
        vd[140..144].copy_from_slice(&(l - set.base).to_le_bytes());
        vd[148..152].copy_from_slice(&(m - set.base).to_be_bytes());
        let date = rrip::dir_date(self.tree.nodes[root_node.unwrap_or(0)].meta.mtime);
        let root = dir_record(
            &[0],
            dir_lba[0] - set.base,
            u64::from(dir_sectors[0]) * SECTOR_SIZE,
            0x02,
            date,
            &[],
        );
        vd[156..190].copy_from_slice(&root);
        put_str(
            &mut vd[190..318],
            v.volume_set_id.as_deref().unwrap_or(""),
            joliet,
        );
        put_str(
            &mut vd[318..446],
            v.publisher.as_deref().unwrap_or(""),
            joliet,
        );
        put_str(
            &mut vd[446..574],
            v.preparer.as_deref().unwrap_or("VMEDIA"),
            joliet,
        );
        put_str(
            &mut vd[574..702],
            v.application.as_deref().unwrap_or(""),
            joliet,
        );
        put_str(
            &mut vd[702..739],
            v.copyright_file.as_deref().unwrap_or(""),
            joliet,
        );
        put_str(
            &mut vd[739..776],
            v.abstract_file.as_deref().unwrap_or(""),
            joliet,
        );
        put_str(
            &mut vd[776..813],
            v.biblio_file.as_deref().unwrap_or(""),
            joliet,
        );
        let now = vd_date(self.now);
        vd[813..830].copy_from_slice(&now);
        match &v.modification_date {
            Some(m) => {
                vd[830..846].copy_from_slice(m.as_bytes());
                vd[846] = 0;
            }
            None => vd[830..847].copy_from_slice(&now),
        }
        vd[847..863].copy_from_slice(b"0000000000000000");
        vd[864..881].copy_from_slice(&now);
        vd[881] = 1;
        for b in &mut vd[883..1395] {
            *b = b' ';
        }
        vd
    }

    /// The ISO 9660:1999 enhanced volume descriptor of level 4 (ECMA-119 4th edition 8.5):
    /// a supplementary descriptor (type 2) with descriptor version 2, file structure version 2
    /// and no escape sequences, describing the same tree as the primary one (whose names are
    /// already up to 207 bytes at level 4), as genisoimage `-iso-level 4` writes it. libisofs
    /// (xorriso) and Linux recognise it by those two version bytes.
    fn enhanced_volume_descriptor(&self, set: &MetaSet) -> Vec<u8> {
        let mut vd = self.volume_descriptor(set, false);
        vd[0] = 2;
        vd[6] = 2;
        vd[881] = 2;
        vd
    }

    /// All metadata sectors [0, data_start) as one buffer.
    fn metadata(&self) -> Result<Vec<u8>, WriteError> {
        let sector = SECTOR_SIZE as usize;
        let mut buf = vec![0u8; self.data_start as usize * sector];
        let sa = self.hybrid.system_area();
        buf[..sa.len()].copy_from_slice(&sa);
        let ctx = self.ctx();
        for set in &self.sets {
            let mut at = set.vd_lba as usize * sector;
            let mut put = |buf: &mut Vec<u8>, bytes: &[u8]| {
                buf[at..at + bytes.len()].copy_from_slice(bytes);
                at += sector;
            };
            put(&mut buf, &self.volume_descriptor(set, false));
            if let Some(c) = self.catalog_lba {
                put(&mut buf, &super::eltorito::boot_record(c - set.base));
            }
            if self.spec.naming.iso_level >= 4 {
                put(&mut buf, &self.enhanced_volume_descriptor(set));
            }
            if self.joliet.is_some() {
                put(&mut buf, &self.volume_descriptor(set, true));
            }
            let mut term = vec![0u8; sector];
            term[0] = 255;
            term[1..6].copy_from_slice(b"CD001");
            term[6] = 1;
            put(&mut buf, &term);
            let mut write_at = |lba: u32, bytes: &[u8]| {
                let o = lba as usize * sector;
                buf[o..o + bytes.len()].copy_from_slice(bytes);
            };
            write_at(
                set.iso_path_l,
                &layout::path_table(&self.iso, &set.iso_dir_lba, set.base, false),
            );
            write_at(
                set.iso_path_m,
                &layout::path_table(&self.iso, &set.iso_dir_lba, set.base, true),
            );
            if let Some(j) = &self.joliet {
                write_at(
                    set.joliet_path_l,
                    &layout::path_table(j, &set.joliet_dir_lba, set.base, false),
                );
                write_at(
                    set.joliet_path_m,
                    &layout::path_table(j, &set.joliet_dir_lba, set.base, true),
                );
            }
            let addrs = Addrs {
                base: set.base,
                dir_lba: &set.iso_dir_lba,
                dir_sectors: &set.iso_dir_sectors,
                data_lba: &self.data_lba,
                catalog_lba: self.catalog_lba.unwrap_or(0),
            };
            let iso_dirs: Vec<(Vec<u8>, CeArea)> = (0..self.iso.dirs.len())
                .into_par_iter()
                .map(|i| ctx.serialize_dir(&self.iso, i, &addrs, set.iso_ce_lba[i]))
                .collect();
            for (i, (bytes, ce)) in iso_dirs.into_iter().enumerate() {
                write_at(set.iso_dir_lba[i], &bytes);
                if !ce.bytes.is_empty() {
                    write_at(set.iso_ce_lba[i], &ce.bytes);
                }
            }
            if let Some(j) = &self.joliet {
                let jaddrs = Addrs {
                    dir_lba: &set.joliet_dir_lba,
                    dir_sectors: &set.joliet_dir_sectors,
                    ..addrs
                };
                let jdirs: Vec<(Vec<u8>, CeArea)> = (0..j.dirs.len())
                    .into_par_iter()
                    .map(|i| ctx.serialize_dir(j, i, &jaddrs, 0))
                    .collect();
                for (i, (bytes, _)) in jdirs.into_iter().enumerate() {
                    write_at(set.joliet_dir_lba[i], &bytes);
                }
            }
        }
        if let (Some(c), Some(b)) = (self.catalog_lba, &self.boot) {
            let o = c as usize * sector;
            buf[o..o + sector].copy_from_slice(&b.catalog());
        }
        if let Some((udf, vrs)) = &self.udf {
            udf.render_volume(&mut buf, *vrs, self.now);
            let data: Vec<(u64, u32)> = self
                .tree
                .data
                .iter()
                .zip(&self.data_lba)
                .map(|(d, &lba)| (d.size, lba))
                .collect();
            let o = crate::udf::write::PARTITION_START as usize * sector;
            let len = udf.meta_blocks() as usize * sector;
            udf.render_partition(
                &self.tree,
                &data,
                self.catalog_lba,
                self.now,
                &mut buf[o..o + len],
            )?;
        }
        Ok(buf)
    }

    /// Writes the planned image into `file` (which is truncated to the image size first).
    pub fn write_to(
        &self,
        file: &mut File,
        name: &Path,
        progress: &dyn Progress,
    ) -> Result<WriteReport, WriteError> {
        self.write_reporting(file, name, progress, None)
    }

    /// As `write_to`, telling `task` about every range once its bytes are final, so the
    /// checksums run just behind the writer. Every range is written once: nothing reported
    /// is written again.
    pub(crate) fn write_reporting(
        &self,
        file: &mut File,
        name: &Path,
        progress: &dyn Progress,
        task: Option<&ImplantTask>,
    ) -> Result<WriteReport, WriteError> {
        let report = |offset: u64, len: u64| {
            if let Some(t) = task {
                t.written(offset, len);
            }
        };
        let werr = |offset: u64| {
            move |source: std::io::Error| WriteError::Write {
                path: name.to_path_buf(),
                offset,
                source,
            }
        };
        file.set_len(0).map_err(werr(0))?;
        file.set_len(self.image_bytes).map_err(werr(0))?;
        let data_bytes: u64 = self
            .data_order
            .iter()
            .map(|&d| self.tree.data[d].size)
            .sum();
        progress.phase("writing");
        progress.set_total(data_bytes + u64::from(self.data_start) * SECTOR_SIZE);
        let meta = self.metadata()?;
        file.write_all_at(&meta, 0).map_err(werr(0))?;
        report(0, meta.len() as u64);
        progress.advance(meta.len() as u64);
        drop(meta);
        if let Some(h) = &self.hfsplus {
            let attrs = self.ctx();
            let ctx = super::hfsplus::RenderCtx {
                tree: &self.tree,
                attrs: &attrs,
                data_lba: &self.data_lba,
                now: self.now,
            };
            let head = h.render_head(&ctx)?;
            let offset = u64::from(h.part_start) * SECTOR_SIZE;
            file.write_all_at(&head, offset).map_err(werr(offset))?;
            report(offset, head.len() as u64);
            let tail = h.render_tail(self.now);
            let offset = u64::from(h.tail_lba) * SECTOR_SIZE;
            file.write_all_at(&tail, offset).map_err(werr(offset))?;
            report(offset, tail.len() as u64);
        }
        if let Some((udf, _)) = &self.udf {
            let offset = u64::from(udf.end_anchor_lba) * SECTOR_SIZE;
            let anchor = udf.anchor(udf.end_anchor_lba);
            file.write_all_at(&anchor, offset).map_err(werr(offset))?;
            report(offset, SECTOR_SIZE);
        }
        self.write_data(file, name, progress, task)?;
        for a in &self.hybrid.appended {
            let offset = a.start_512 * 512;
            match super::hybrid::HybridPlan::appended_source(a) {
                (_, Some(bytes)) => file.write_all_at(bytes, offset).map_err(werr(offset))?,
                (Some(path), _) => copy_host_range(file, name, &path, 0, a.size, offset)?,
                (None, None) => {}
            }
            report(offset, a.size);
        }
        if let Some((offset, bytes)) = self.hybrid.backup_gpt() {
            file.write_all_at(&bytes, offset).map_err(werr(offset))?;
            report(offset, bytes.len() as u64);
        }
        Ok(self.report(name, data_bytes))
    }

    fn report(&self, name: &Path, data_bytes: u64) -> WriteReport {
        let files = self.reachable_files();
        WriteReport {
            path: name.to_path_buf(),
            bytes: self.image_bytes,
            sectors: self.sectors(),
            files,
            directories: self.iso.dirs.len() as u64,
            data_bytes,
            boot_catalog_lba: self.catalog_lba,
            boot_entries: self
                .boot
                .as_ref()
                .map(|b| {
                    b.items
                        .iter()
                        .map(|i| BootReport {
                            platform: i.entry.platform,
                            image_lba: i.lba,
                            image_bytes: i.bytes,
                            load_sectors: i.load_sectors,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            partitions: self.hybrid.report(),
            integrity: None,
        }
    }

    /// Regular files reachable from the root (replaced nodes stay in the arena, unreachable):
    /// one walk down the tree.
    fn reachable_files(&self) -> u64 {
        let mut files = 0u64;
        let mut stack: Vec<NodeId> = vec![tree::ROOT];
        while let Some(id) = stack.pop() {
            for child in self.tree.children(id) {
                match self.tree.nodes[child].kind {
                    NodeKind::File(_) => files += 1,
                    NodeKind::Dir(_) => stack.push(child),
                    _ => {}
                }
            }
        }
        files
    }

    /// Streams file data: a reader thread fills windows (small files read in parallel) and
    /// chunks, the calling thread writes them in order. Big host files are copied by the
    /// reader thread itself with copy_file_range (one in-kernel copy), data segment by data
    /// segment, so holes of sparse inputs stay holes.
    fn write_data(
        &self,
        file: &File,
        name: &Path,
        progress: &dyn Progress,
        task: Option<&ImplantTask>,
    ) -> Result<(), WriteError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(PIPELINE_DEPTH);
        // Written buffers go back to the reader: no fresh page faults per window.
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let sink = Sink {
            out: file,
            name,
            progress,
            task,
        };
        std::thread::scope(|scope| {
            let sink_ref = &sink;
            scope.spawn(move || self.read_data(&tx, &free_rx, sink_ref));
            for job in rx {
                let (offset, buf, final_len) = job?;
                write_skipping_zeros(file, name, &buf, offset)?;
                // Skipped zero blocks (and the sector padding `final_len` may add) stay as
                // set_len left them, zeros: they are final too.
                sink.written(offset, final_len);
                if self.spec.durability == Durability::Flush {
                    start_writeback(file, offset, buf.len() as u64);
                }
                progress.advance(buf.len() as u64);
                let _ = free_tx.send(buf);
            }
            Ok(())
        })
    }

    fn read_data(
        &self,
        tx: &mpsc::SyncSender<Job>,
        free: &mpsc::Receiver<Vec<u8>>,
        sink: &Sink<'_>,
    ) {
        let order: Vec<DataId> = self
            .data_order
            .iter()
            .copied()
            .filter(|&d| self.tree.data[d].size > 0)
            .collect();
        let mut i = 0;
        while i < order.len() {
            let d = order[i];
            let size = self.tree.data[d].size;
            if size >= BIG_FILE && !self.boot.as_ref().is_some_and(|b| b.needs_patch(d)) {
                if !self.stream_big(d, tx, free, sink) {
                    return;
                }
                i += 1;
                continue;
            }
            // A window of consecutive small files.
            let start = i;
            let mut bytes = 0u64;
            while i < order.len() {
                let s = self.tree.data[order[i]].size;
                let patched = self.boot.as_ref().is_some_and(|b| b.needs_patch(order[i]));
                if (s >= BIG_FILE && !patched) || (bytes > 0 && bytes + s > WINDOW_BYTES) {
                    break;
                }
                // A window never spans a gap between items (the HFS+ head lies in one):
                // its zero fill would overwrite what is written there.
                if i > start {
                    let prev = order[i - 1];
                    let expected = u64::from(self.data_lba[prev])
                        + self.tree.data[prev].size.div_ceil(SECTOR_SIZE);
                    if u64::from(self.data_lba[order[i]]) != expected {
                        break;
                    }
                }
                bytes += s.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
                i += 1;
            }
            let items = &order[start..i];
            let buf = free.try_recv().unwrap_or_default();
            let result = self.read_window(items, buf);
            if tx.send(result).is_err() {
                return;
            }
        }
    }

    fn read_window(&self, items: &[DataId], mut buf: Vec<u8>) -> Job {
        let first_lba = u64::from(self.data_lba[items[0]]);
        let last = items[items.len() - 1];
        let end = u64::from(self.data_lba[last]) * SECTOR_SIZE + self.tree.data[last].size;
        let len = (end - first_lba * SECTOR_SIZE) as usize;
        // A recycled buffer keeps its old bytes: only the gaps between files are zeroed
        // below, so no full memset and no fresh page faults per window.
        if buf.len() > len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        // Carve the buffer into one slice per file (they are consecutive and non-overlapping).
        let mut slices: Vec<(DataId, &mut [u8])> = Vec::with_capacity(items.len());
        let mut rest: &mut [u8] = &mut buf;
        let mut pos = first_lba * SECTOR_SIZE;
        for &d in items {
            let at = u64::from(self.data_lba[d]) * SECTOR_SIZE;
            let skip = (at - pos) as usize;
            let tail = std::mem::take(&mut rest);
            let (gap, tail) = tail.split_at_mut(skip);
            gap.fill(0);
            let size = self.tree.data[d].size as usize;
            let (mine, tail) = tail.split_at_mut(size);
            slices.push((d, mine));
            rest = tail;
            pos = at + size as u64;
        }
        rest.fill(0);
        // Consecutive files of one host folder are read together, opened relative to that
        // folder: one path walk per folder instead of one per file.
        let mut groups: Vec<Vec<(DataId, &mut [u8])>> = Vec::new();
        let mut group_dir: Option<&Path> = None;
        for (d, slice) in slices {
            let dir = self.host_parent(d);
            let same = dir.is_some() && dir == group_dir;
            match groups.last_mut() {
                Some(g) if same && g.len() < GROUP_FILES => g.push((d, slice)),
                _ => groups.push(vec![(d, slice)]),
            }
            group_dir = dir;
        }
        groups.into_par_iter().try_for_each(|group| {
            let dir = match group.as_slice() {
                [(d, _), _, ..] => self.host_parent(*d).and_then(open_dir),
                _ => None,
            };
            for (d, slice) in group {
                match &dir {
                    Some(fd) => self.read_host_in(fd, d, slice)?,
                    None => self.read_item(d, 0, slice)?,
                }
                if let Some(b) = &self.boot {
                    if b.needs_patch(d) {
                        b.patch(d, slice, 16);
                    }
                }
            }
            Ok::<(), WriteError>(())
        })?;
        let final_len = sector_end(buf.len() as u64);
        Ok((first_lba * SECTOR_SIZE, buf, final_len))
    }

    /// Fills `buf` with the item's bytes from `offset`.
    fn read_item(&self, d: DataId, offset: u64, buf: &mut [u8]) -> Result<(), WriteError> {
        let item = &self.tree.data[d];
        match &item.source {
            DataSource::Mem(bytes) => {
                let o = offset as usize;
                buf.copy_from_slice(&bytes[o..o + buf.len()]);
                Ok(())
            }
            DataSource::Host(path) => read_exact_from(path, offset, buf),
            DataSource::Range { path, offset: base } => read_exact_from(path, base + offset, buf),
        }
    }

    /// The folder holding host file `d` (None for in-memory and range items).
    fn host_parent(&self, d: DataId) -> Option<&Path> {
        match &self.tree.data[d].source {
            DataSource::Host(path) => path.parent().filter(|p| !p.as_os_str().is_empty()),
            _ => None,
        }
    }

    /// Fills `buf` with host file `d`, opened by name relative to its open folder `dir`.
    fn read_host_in(&self, dir: &OwnedFd, d: DataId, buf: &mut [u8]) -> Result<(), WriteError> {
        let DataSource::Host(path) = &self.tree.data[d].source else {
            return self.read_item(d, 0, buf);
        };
        let Some(name) = path.file_name() else {
            return self.read_item(d, 0, buf);
        };
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| WriteError::Read {
            path: path.clone(),
            source: e.into(),
        })?;
        read_exact_at(&File::from(fd), path, 0, buf)
    }

    /// Copies one big file: each data segment of the source (SEEK_DATA / SEEK_HOLE) with
    /// copy_file_range straight into the output, or through the writer in chunks where the
    /// kernel cannot copy between these files.
    fn stream_big(
        &self,
        d: DataId,
        tx: &mpsc::SyncSender<Job>,
        free: &mpsc::Receiver<Vec<u8>>,
        sink: &Sink<'_>,
    ) -> bool {
        let item = &self.tree.data[d];
        let base = u64::from(self.data_lba[d]) * SECTOR_SIZE;
        let (path, src_base) = match &item.source {
            DataSource::Host(p) => (p.clone(), 0),
            DataSource::Range { path, offset } => (path.clone(), *offset),
            DataSource::Mem(_) => {
                let r = self.read_window(&[d], free.try_recv().unwrap_or_default());
                return tx.send(r).is_ok();
            }
        };
        let fail = |e: WriteError| {
            let _ = tx.send(Err(e));
            false
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(source) => return fail(WriteError::Read { path, source }),
        };
        let mut kernel_copy = true;
        let mut pos = 0u64;
        while pos < item.size {
            // Skip a hole in the source: the output already reads as zeros there.
            let (seg_start, seg_end) = match data_segment(&file, src_base + pos) {
                Some((s, e)) => (
                    s.saturating_sub(src_base).max(pos),
                    e.saturating_sub(src_base).min(item.size),
                ),
                None => (pos, item.size),
            };
            if seg_start >= item.size {
                sink.written(base + pos, sector_end(item.size) - pos);
                sink.progress.advance(item.size - pos);
                break;
            }
            sink.written(base + pos, seg_start - pos);
            sink.progress.advance(seg_start - pos);
            pos = seg_start;
            let seg_end = seg_end.max(pos + 1).min(item.size);
            while pos < seg_end {
                let n = (seg_end - pos).min(CHUNK_BYTES);
                if kernel_copy {
                    match copy_range(&file, src_base + pos, sink.out, base + pos, n) {
                        Ok(0) => {
                            let source = std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the file became shorter while the image was written",
                            );
                            return fail(WriteError::Read { path, source });
                        }
                        Ok(done) => {
                            let last = pos + done >= item.size;
                            sink.written(
                                base + pos,
                                if last {
                                    sector_end(item.size) - pos
                                } else {
                                    done
                                },
                            );
                            if self.spec.durability == Durability::Flush {
                                start_writeback(sink.out, base + pos, done);
                            }
                            pos += done;
                            sink.progress.advance(done);
                            continue;
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(
                                    libc::EXDEV
                                        | libc::ENOSYS
                                        | libc::EOPNOTSUPP
                                        | libc::EINVAL
                                        | libc::EBADF
                                )
                            ) =>
                        {
                            kernel_copy = false;
                        }
                        Err(source) => {
                            return fail(WriteError::Write {
                                path: sink.name.to_path_buf(),
                                offset: base + pos,
                                source,
                            })
                        }
                    }
                }
                let mut buf = free.try_recv().unwrap_or_default();
                buf.clear();
                buf.resize(n as usize, 0);
                if let Err(source) = file.read_exact_at(&mut buf, src_base + pos) {
                    return fail(WriteError::Read { path, source });
                }
                let final_len = if pos + n >= item.size {
                    sector_end(item.size) - pos
                } else {
                    n
                };
                if tx.send(Ok((base + pos, buf, final_len))).is_err() {
                    return false;
                }
                pos += n;
            }
        }
        true
    }
}

/// A result from the reader thread: bytes to write at an offset, and how many bytes from that
/// offset are final once they are written (the buffer plus, at an item's end, its padding).
type Job = Result<(u64, Vec<u8>, u64), WriteError>;

/// Where the reader thread copies big files to directly.
struct Sink<'a> {
    out: &'a File,
    name: &'a Path,
    progress: &'a dyn Progress,
    task: Option<&'a ImplantTask>,
}

impl Sink<'_> {
    fn written(&self, offset: u64, len: u64) {
        if let Some(t) = self.task {
            t.written(offset, len);
        }
    }
}

/// `len` rounded up to whole sectors: data items start on sector boundaries, so the padding
/// after one is never written by anything else.
fn sector_end(len: u64) -> u64 {
    len.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
}

/// Asks the kernel to start writing a range back now (no waiting), when the image will be
/// flushed: the final fsync then finds most pages clean instead of flushing gigabytes at the
/// end. Without a flush the writeback is left to the kernel, as the peers leave it.
/// Advisory: errors are ignored, the fsync still guarantees durability.
fn start_writeback(out: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a valid descriptor has no memory effects.
    unsafe {
        libc::sync_file_range(out.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// One copy_file_range call: returns bytes copied (0 at the source's end).
fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off_in =
        i64::try_from(src_off).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut off_out =
        i64::try_from(dst_off).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both descriptors are open; the offsets are valid pointers to local variables.
    let r = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len as usize,
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// The data segment at or after `offset`: (start, end) from SEEK_DATA / SEEK_HOLE, start =
/// u64::MAX when only a hole remains, None when the file system cannot tell.
fn data_segment(file: &File, offset: u64) -> Option<(u64, u64)> {
    let start = seek_data(file, offset)?;
    if start == u64::MAX {
        return Some((u64::MAX, u64::MAX));
    }
    let end = seek_hole(file, start).unwrap_or(u64::MAX);
    Some((start, end))
}

fn seek_hole(file: &File, offset: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let off = i64::try_from(offset).ok()?;
    // SAFETY: lseek on a valid open descriptor has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_HOLE) };
    (r >= 0).then_some(r as u64)
}

/// The next offset holding data at or after `offset` (SEEK_DATA), or None when unknown.
fn seek_data(file: &File, offset: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let off = i64::try_from(offset).ok()?;
    // SAFETY: lseek on a valid open descriptor has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r < 0 {
        // ENXIO: no data after offset (the rest is a hole).
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Some(u64::MAX);
        }
        return None;
    }
    Some(r as u64)
}

/// A folder opened to open its files relative to it, or None when it cannot be (each file
/// is then opened by its full path, which reports the error).
fn open_dir(path: &Path) -> Option<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

fn read_exact_from(path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), WriteError> {
    let f = File::open(path).map_err(|source| WriteError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read_exact_at(&f, path, offset, buf)
}

fn read_exact_at(f: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), WriteError> {
    f.read_exact_at(buf, offset).map_err(|source| {
        let source = if source.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(
                source.kind(),
                "the file became shorter while the image was written",
            )
        } else {
            source
        };
        WriteError::Read {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn copy_host_range(
    out: &File,
    name: &Path,
    path: &PathBuf,
    src: u64,
    len: u64,
    dst: u64,
) -> Result<(), WriteError> {
    let f = File::open(path).map_err(|source| WriteError::Read {
        path: path.clone(),
        source,
    })?;
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(CHUNK_BYTES) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, src + pos)
            .map_err(|source| WriteError::Read {
                path: path.clone(),
                source,
            })?;
        write_skipping_zeros(out, name, &buf, dst + pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Holes are left at this granularity: the file system block size of common file systems
/// times 16, small enough to keep sparse inputs sparse, large enough for few write calls.
const HOLE_BLOCK: usize = 64 << 10;

/// Writes the non-zero runs of `buf` at `offset`; all-zero blocks stay holes (the output was
/// sized with set_len, so they read as zeros).
fn write_skipping_zeros(
    out: &File,
    name: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), WriteError> {
    let mut run_start: Option<usize> = None;
    let mut at = 0usize;
    let flush = |from: usize, to: usize| {
        let o = offset + from as u64;
        out.write_all_at(&buf[from..to], o)
            .map_err(|source| WriteError::Write {
                path: name.to_path_buf(),
                offset: o,
                source,
            })
    };
    while at < buf.len() {
        let end = (at + HOLE_BLOCK).min(buf.len());
        let zero = is_zero(&buf[at..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(s)) => {
                flush(s, at)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(s) = run_start {
        flush(s, buf.len())?;
    }
    Ok(())
}

fn is_zero(buf: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises well and stops at the first non-zero chunk.
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Runs `vmedia_iso::integrity` on the finished image when the spec asks for it: the
/// write-then-implant reference the streamed path (`write::write_streaming`) is tested against.
#[cfg(test)]
pub(crate) fn implant_integrity(
    spec: &IsoSpec,
    file: &File,
    name: &Path,
    progress: &dyn Progress,
) -> Result<Option<IntegrityReport>, WriteError> {
    let Some(opts) = implant_options(spec, name)? else {
        return Ok(None);
    };
    let implant =
        crate::integrity::implant_file(file, &opts, progress).map_err(integrity_error(name))?;
    Ok(Some(integrity_report(implant)))
}

/// The implant the spec asks for, if any (the signing key is loaded here, before any writing).
pub(crate) fn implant_options(
    spec: &IsoSpec,
    name: &Path,
) -> Result<Option<crate::integrity::ImplantOptions>, WriteError> {
    let i = &spec.integrity;
    if !i.md5 && !i.sha256 && i.signing_key.is_none() {
        return Ok(None);
    }
    let signing_key = match &i.signing_key {
        Some(p) => Some(crate::integrity::load_signing_key(p).map_err(integrity_error(name))?),
        None => None,
    };
    Ok(Some(crate::integrity::ImplantOptions {
        md5: i.md5,
        sha256: i.sha256,
        signing_key,
    }))
}

pub(crate) fn integrity_error(
    name: &Path,
) -> impl Fn(crate::integrity::IntegrityError) -> WriteError + '_ {
    move |e| WriteError::Integrity {
        path: name.to_path_buf(),
        source: Box::new(e),
    }
}

pub(crate) fn integrity_report(implant: crate::integrity::Implant) -> IntegrityReport {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    IntegrityReport {
        md5: implant.md5.map(|d| hex(&d)),
        sha256: implant.sha256.map(|d| hex(&d)),
        signed: implant.signed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vd_dates_are_utc_text() {
        assert_eq!(&vd_date(1_700_000_000)[..16], b"2023111422132000");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
