//! Directory records: serialising one folder of a hierarchy (ISO 9660 or Joliet) with its
//! Rock Ridge entries. The layout stage measures folders with it (all addresses zero) and the
//! emit stage writes them with the final addresses; HFS+ reuses its Rock Ridge attributes.

use super::hierarchy::{record_len, EntryKind, Hierarchy, MAX_EXTENT_BYTES};
use super::rrip::{self, CeArea, SuList};
use super::tree::{self, NodeId, NodeKind, Tree};
use super::{WriteError, SECTOR_SIZE};
use crate::spec::{IsoSpec, RockRidgeMode};
use rayon::prelude::*;
use std::borrow::Cow;

/// The largest directory record.
const MAX_RECORD: usize = 255;

/// Everything needed to serialise directory records.
pub(crate) struct MeasureCtx<'a> {
    tree: &'a Tree,
    rr: Option<RockRidgeMode>,
    spec: &'a IsoSpec,
    serial: &'a [u32],
}

/// Addresses used while serialising one hierarchy of one set (all zero when measuring).
pub(crate) struct Addrs<'a> {
    pub base: u32,
    pub dir_lba: &'a [u32],
    pub dir_sectors: &'a [u32],
    pub data_lba: &'a [u32],
    pub catalog_lba: u32,
}

impl<'a> MeasureCtx<'a> {
    pub fn new(
        tree: &'a Tree,
        rr: Option<RockRidgeMode>,
        spec: &'a IsoSpec,
        serial: &'a [u32],
    ) -> Self {
        MeasureCtx {
            tree,
            rr,
            spec,
            serial,
        }
    }

    /// (directory sectors, continuation sectors) per folder.
    pub fn dir_sizes(&self, h: &Hierarchy) -> Result<Vec<(u32, u32)>, WriteError> {
        let zeros = vec![0u32; h.dirs.len()];
        let data_zero = vec![0u32; self.tree.data.len()];
        let addrs = Addrs {
            base: 0,
            dir_lba: &zeros,
            dir_sectors: &zeros,
            data_lba: &data_zero,
            catalog_lba: 0,
        };
        h.dirs
            .par_iter()
            .enumerate()
            .map(|(i, _)| {
                let (bytes, ce) = self.serialize_dir(h, i, &addrs, 0);
                Ok(((bytes.len() as u64 / SECTOR_SIZE) as u32, ce.sectors()))
            })
            .collect()
    }

    pub(crate) fn rr_attrs(&self, node: NodeId, is_dir: bool) -> (u32, u32, u32) {
        let m = &self.tree.nodes[node].meta;
        let mut mode = m.mode;
        let (mut uid, mut gid) = (m.uid, m.gid);
        if let NodeKind::Catalog = self.tree.nodes[node].kind {
            mode = tree::S_IFREG | 0o444;
        }
        if self.rr == Some(RockRidgeMode::Rational) {
            uid = 0;
            gid = 0;
            let kind = mode & tree::S_IFMT;
            let mut perm = mode & 0o777;
            perm |= 0o444;
            if is_dir || perm & 0o111 != 0 {
                perm |= 0o111;
            }
            perm &= !0o222;
            mode = kind | perm;
        }
        let o = &self.spec.ownership;
        if let Some(u) = o.uid {
            uid = u;
        }
        if let Some(g) = o.gid {
            gid = g;
        }
        let kind = mode & tree::S_IFMT;
        if is_dir {
            if let Some(dm) = o.dir_mode {
                mode = kind | (dm & 0o7777);
            }
        } else if let Some(fm) = o.file_mode {
            if kind != tree::S_IFLNK {
                mode = kind | (fm & 0o7777);
            }
        }
        (mode, uid, gid)
    }

    /// Rock Ridge entries of one record, appended to `su` (the CE entry is added by
    /// `rrip::pack`).
    fn rr_entries(
        &self,
        scratch: &mut Scratch,
        h: &Hierarchy,
        node: NodeId,
        role: Role,
        addrs: &Addrs<'_>,
        first_root: bool,
    ) {
        let Scratch { su, dates } = scratch;
        let n = &self.tree.nodes[node];
        let is_dir = matches!(role, Role::Dot(_) | Role::DotDot(_) | Role::Dir(_));
        if first_root {
            su.push(&rrip::sp());
        }
        let (mode, uid, gid) = self.rr_attrs(node, is_dir);
        let nlink = match role {
            Role::Dot(d) | Role::DotDot(d) | Role::Dir(d) => 2 + h.dirs[d].subdirs,
            Role::Leaf => match n.kind {
                NodeKind::File(data) => self.tree.data[data].links.max(1),
                _ => 1,
            },
            Role::Placeholder(_) => 1,
        };
        let mode = if let Role::Placeholder(_) = role {
            tree::S_IFDIR | (mode & 0o7777)
        } else {
            mode
        };
        // The RR flags name every entry that follows, so they are worked out first.
        let mut flags = 0x01 | 0x80;
        if let Role::Leaf | Role::Dir(_) | Role::Placeholder(_) = role {
            flags |= 0x08;
        }
        match (&n.kind, role) {
            (NodeKind::Symlink(_), Role::Leaf) => flags |= 0x04,
            (NodeKind::Device(_), Role::Leaf) => flags |= 0x02,
            _ => {}
        }
        if let Role::Placeholder(_) = role {
            flags |= 0x10;
        }
        rrip::rr_into(su, flags);
        rrip::px_into(su, mode, nlink, uid, gid, self.serial[node]);
        let m = &n.meta;
        rrip::tf_into(
            su,
            [dates.get(m.mtime), dates.get(m.atime), dates.get(m.ctime)],
        );
        match (&n.kind, role) {
            (NodeKind::Symlink(target), Role::Leaf) => {
                for e in rrip::sl(target) {
                    su.push(&e);
                }
            }
            (NodeKind::Device(rdev), Role::Leaf) => su.push(&rrip::pn(*rdev)),
            _ => {}
        }
        // PL (on a relocated folder's "..") is added by the caller, which knows the folder.
        if let Role::Placeholder(c) = role {
            su.push(&rrip::cl(addrs.dir_lba[c].wrapping_sub(addrs.base)));
        }
    }

    /// Serialises folder `di` of `h`: its sectors, and its continuation area.
    pub(crate) fn serialize_dir(
        &self,
        h: &Hierarchy,
        di: usize,
        addrs: &Addrs<'_>,
        ce_lba: u32,
    ) -> (Vec<u8>, CeArea) {
        let dir = &h.dirs[di];
        let rr = self.rr.is_some() && !h.joliet;
        let mut ce = CeArea::new(ce_lba.wrapping_sub(addrs.base));
        let sector = SECTOR_SIZE as usize;
        // Records go straight into the folder's sectors; one record never straddles two.
        let mut out: Vec<u8> = Vec::with_capacity(sector * (1 + dir.entries.len() / 16));
        let mut scratch = Scratch::default();
        let dir_extent = |d: usize| {
            (
                addrs.dir_lba[d].wrapping_sub(addrs.base),
                u64::from(addrs.dir_sectors[d]) * SECTOR_SIZE,
            )
        };
        // "." and "..".
        for (ident, target, role_node, role) in [
            (0u8, di, dir.node, Role::Dot(di)),
            (
                1u8,
                dir.parent,
                h.dirs[dir.parent].node,
                Role::DotDot(dir.parent),
            ),
        ] {
            let (lba, size) = dir_extent(target);
            scratch.su.clear();
            if rr {
                let first_root = di == 0 && ident == 0;
                self.rr_entries(&mut scratch, h, role_node, role, addrs, first_root);
                let su = &mut scratch.su;
                if ident == 1 {
                    if let Some(orig) = dir.original_parent {
                        su.push(&rrip::pl(addrs.dir_lba[orig].wrapping_sub(addrs.base)));
                        if let Some(rr_flags) = su.find_mut(b"RR") {
                            rr_flags[4] |= 0x20;
                        }
                    }
                }
                if first_root {
                    su.push(&rrip::er());
                }
            }
            let room = MAX_RECORD - 1 - record_len(1, 0);
            let date = scratch.dates.get(self.tree.nodes[role_node].meta.mtime);
            let packed = if rr {
                rrip::pack_list(&scratch.su, room, &mut ce)
            } else {
                Cow::Borrowed(&scratch.su.bytes[..])
            };
            push_record(&mut out, &[ident], lba, size, 0x02, date, &packed);
        }
        for e in &dir.entries {
            let node = e.node;
            let (role, first, flags): (Role, (u32, u64), u8) = match e.kind {
                EntryKind::Dir(c) => (Role::Dir(c), dir_extent(c), 0x02),
                EntryKind::Placeholder(c) => (Role::Placeholder(c), (dir_extent(c).0, 0), 0x00),
                EntryKind::File(d) => {
                    let size = self.tree.data[d].size;
                    let lba = if size == 0 {
                        0
                    } else {
                        addrs.data_lba[d].wrapping_sub(addrs.base)
                    };
                    (Role::Leaf, (lba, size), 0x00)
                }
                EntryKind::Catalog => (
                    Role::Leaf,
                    (addrs.catalog_lba.wrapping_sub(addrs.base), SECTOR_SIZE),
                    0x00,
                ),
                EntryKind::Special => (Role::Leaf, (0, 0), 0x00),
            };
            scratch.su.clear();
            if rr {
                self.rr_entries(&mut scratch, h, node, role, addrs, false);
                let su = &mut scratch.su;
                rrip::nm_into(su, e.rr_name.as_bytes());
                if e.relocated {
                    su.push(&rrip::re());
                    if let Some(rr_flags) = su.find_mut(b"RR") {
                        rr_flags[4] |= 0x40;
                    }
                }
            }
            let date = scratch.dates.get(self.tree.nodes[node].meta.mtime);
            let room = MAX_RECORD - 1 - record_len(e.ident.len(), 0);
            // Only files split into extents, and only at 4 GiB and more.
            let split;
            let extents: &[(u32, u64)] = match e.kind {
                EntryKind::File(_) if first.1 > u64::from(u32::MAX) => {
                    split = file_extents(first.0, first.1);
                    &split
                }
                _ => std::slice::from_ref(&first),
            };
            let last = extents.len() - 1;
            for (k, &(lba, size)) in extents.iter().enumerate() {
                let packed = if rr {
                    rrip::pack_list(&scratch.su, room, &mut ce)
                } else {
                    Cow::Borrowed(&[][..])
                };
                let f = if k < last { flags | 0x80 } else { flags };
                push_record(&mut out, &e.ident, lba, size, f, date, &packed);
            }
        }
        let padded = out.len().div_ceil(sector).max(1) * sector;
        out.resize(padded, 0);
        (out, ce)
    }
}

/// What one folder's records are built in, reused from record to record.
#[derive(Default)]
struct Scratch {
    su: SuList,
    dates: DateCache,
}

/// The 7-byte dates of recently seen times: the files of a folder mostly share a handful of
/// times, and the calendar conversion ran four times per record (record date and TF).
#[derive(Default)]
struct DateCache {
    slots: [Option<(i64, [u8; 7])>; DATE_CACHE_SLOTS],
}

/// Slots of `DateCache`, direct-mapped by the time's low bits.
const DATE_CACHE_SLOTS: usize = 16;

impl DateCache {
    fn get(&mut self, unix: i64) -> [u8; 7] {
        let slot = &mut self.slots[(unix as u64 % DATE_CACHE_SLOTS as u64) as usize];
        match slot {
            Some((t, d)) if *t == unix => *d,
            _ => {
                let d = rrip::dir_date(unix);
                *slot = Some((unix, d));
                d
            }
        }
    }
}

/// Appends one directory record to a folder's bytes, first padding to the next sector when
/// the record would cross a sector boundary (ECMA-119 6.8.1.1).
fn push_record(
    out: &mut Vec<u8>,
    ident: &[u8],
    lba: u32,
    size: u64,
    flags: u8,
    date: [u8; 7],
    su: &[u8],
) {
    let sector = SECTOR_SIZE as usize;
    let len = record_len(ident.len(), su.len());
    let used = out.len() % sector;
    if used + len > sector {
        out.resize(out.len() + sector - used, 0);
    }
    let at = out.len();
    out.resize(at + len, 0);
    write_record(&mut out[at..], ident, lba, size, flags, date, su);
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Dot(usize),
    DotDot(usize),
    Dir(usize),
    Placeholder(usize),
    Leaf,
}

/// Splits a file into extents below 4 GiB (multi-extent files, ISO level 3).
fn file_extents(lba: u32, size: u64) -> Vec<(u32, u64)> {
    if size <= u64::from(u32::MAX) {
        return vec![(lba, size)];
    }
    let mut out = Vec::new();
    let mut left = size;
    let mut at = lba;
    while left > 0 {
        let n = left.min(MAX_EXTENT_BYTES);
        out.push((at, n));
        at = at.wrapping_add((MAX_EXTENT_BYTES / SECTOR_SIZE) as u32);
        left -= n;
    }
    out
}

pub(crate) fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

pub(crate) fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

/// One ECMA-119 9.1 directory record.
pub(crate) fn dir_record(
    ident: &[u8],
    lba: u32,
    size: u64,
    flags: u8,
    date: [u8; 7],
    su: &[u8],
) -> Vec<u8> {
    let mut r = vec![0u8; record_len(ident.len(), su.len())];
    write_record(&mut r, ident, lba, size, flags, date, su);
    r
}

/// Fills `r` (zeroed, exactly `record_len` bytes) with one directory record.
fn write_record(
    r: &mut [u8],
    ident: &[u8],
    lba: u32,
    size: u64,
    flags: u8,
    date: [u8; 7],
    su: &[u8],
) {
    let len = r.len();
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size as u32));
    r[18..25].copy_from_slice(&date);
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    let su_at = 33 + ident.len() + usize::from(ident.len() & 1 == 0);
    r[su_at..su_at + su.len()].copy_from_slice(su);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_record_layout_matches_ecma119() {
        let r = dir_record(b"A.TXT;1", 0x1234, 5, 0, [120, 1, 2, 3, 4, 5, 0], &[]);
        assert_eq!(r.len(), 40);
        assert_eq!(r[0], 40);
        assert_eq!(&r[2..10], &[0x34, 0x12, 0, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(&r[10..18], &[5, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(r[32], 7);
        assert_eq!(&r[33..40], b"A.TXT;1");
    }

    #[test]
    fn big_files_split_into_sector_aligned_extents() {
        let e = file_extents(100, 5 << 30);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], (100, MAX_EXTENT_BYTES));
        assert_eq!(e[1].0, 100 + (MAX_EXTENT_BYTES / 2048) as u32);
        assert_eq!(e[0].1 + e[1].1, 5 << 30);
        assert_eq!(file_extents(7, 4096), vec![(7, 4096)]);
    }
}
