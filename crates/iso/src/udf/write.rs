//! The UDF side of an ISO 9660 + UDF bridge image.
//!
//! Where things go (absolute 2048-byte sectors):
//! 16.. ISO descriptors, then the volume recognition sequence (BEA01, NSR02|NSR03, TEA01)
//! | 32..48 main volume descriptor sequence | 48..64 reserve copy | 64 integrity descriptor
//! and its terminator | 256 anchor | 257.. the partition: file set descriptor, terminator,
//! one file entry per file and folder, the folders' identifier lists, then the ISO metadata
//! and the file data, which both trees share | one more anchor after the data.
//!
//! Sizes never depend on addresses, so the layout measures the UDF metadata once
//! ([`UdfPlan::meta_blocks`]) and renders it when the data addresses are known.

use super::{
    dstring, fid_flag, file_type, finish_tag, osta_charspec, regid, tag_id, timestamp, BLOCK,
    MAX_EXTENT_LENGTH,
};
use crate::spec::UdfRevision;
use crate::write::tree::{NodeId, NodeKind, Tree, ROOT};
use crate::write::WriteError;
use rayon::prelude::*;

/// First sector of the main volume descriptor sequence (after the ISO descriptors and the
/// volume recognition sequence, which end before sector 32 without a partition offset).
pub(crate) const MAIN_VDS_LBA: u32 = 32;
/// UDF 2.2.3: each volume descriptor sequence extent is at least 16 sectors.
pub(crate) const VDS_SECTORS: u32 = 16;
/// The reserve copy follows the main sequence.
pub(crate) const RESERVE_VDS_LBA: u32 = MAIN_VDS_LBA + VDS_SECTORS;
/// The logical volume integrity descriptor and its terminator.
pub(crate) const LVID_LBA: u32 = RESERVE_VDS_LBA + VDS_SECTORS;
/// The partition starts right after the anchor at 256.
pub(crate) const PARTITION_START: u32 = super::ANCHOR_LBA + 1;
/// Bytes of a file entry before its allocation descriptors (ECMA-167 4/14.9).
const FE_HEADER: usize = 176;
/// One short allocation descriptor.
const SHORT_AD: usize = 8;
/// A file entry is one block, so it holds this many extents (a 234 GiB file at most).
const MAX_EXTENTS: usize = (BLOCK - FE_HEADER) / SHORT_AD;
/// Each extent is a whole number of sectors below the 30-bit length limit.
const EXTENT_BYTES: u64 = (MAX_EXTENT_LENGTH as u64) / BLOCK as u64 * BLOCK as u64;
/// ECMA-167 4/14.4: a file identifier is at most 255 bytes of CS0.
const MAX_NAME_BYTES: usize = 255;
/// UDF 3.2.1.1: unique ids 1..=15 are reserved; the root has 0.
const FIRST_UNIQUE_ID: u64 = 16;

/// What one file entry describes.
#[derive(Debug, Clone, Copy)]
enum What {
    Dir,
    /// A data item of the tree.
    Data(usize),
    /// The El Torito catalog (one sector, at the catalog's address).
    Catalog,
}

#[derive(Debug)]
struct UdfNode {
    node: NodeId,
    what: What,
    /// Index of the parent folder in `nodes` (the root is its own parent).
    parent: usize,
    /// Children (for folders) as (index in `nodes`, CS0 name).
    children: Vec<(usize, Vec<u8>)>,
    /// Bytes of the folder's identifier list.
    dir_bytes: u64,
    /// Partition block of the folder's identifier list.
    dir_block: u32,
}

/// The measured UDF tree, placed once the layout knows the partition.
#[derive(Debug)]
pub(crate) struct UdfPlan {
    revision: UdfRevision,
    label: String,
    nodes: Vec<UdfNode>,
    /// Sectors from the partition start to the end of the UDF metadata.
    meta_blocks: u32,
    /// Sector of the closing anchor (after the data).
    pub end_anchor_lba: u32,
    /// Partition length in sectors (set by `close`).
    partition_blocks: u32,
    files: u32,
    dirs: u32,
}

fn fid_len(name_len: usize) -> u64 {
    (38 + name_len).div_ceil(4) as u64 * 4
}

impl UdfPlan {
    /// Measures the UDF tree of `tree`: which nodes it holds, each folder's identifier list.
    pub(crate) fn prepare(
        tree: &Tree,
        revision: UdfRevision,
        label: &str,
    ) -> Result<UdfPlan, WriteError> {
        let mut nodes = vec![UdfNode {
            node: ROOT,
            what: What::Dir,
            parent: 0,
            children: Vec::new(),
            dir_bytes: 0,
            dir_block: 0,
        }];
        let mut work = vec![0usize];
        while let Some(i) = work.pop() {
            let node = nodes[i].node;
            let mut children = Vec::new();
            for child in tree.children(node) {
                let n = &tree.nodes[child];
                if n.hide_iso {
                    continue;
                }
                let what = match n.kind {
                    NodeKind::Dir(_) => What::Dir,
                    NodeKind::File(d) => What::Data(d),
                    NodeKind::Catalog => What::Catalog,
                    // Symbolic links and special files stay in the Rock Ridge tree only.
                    _ => continue,
                };
                let name = super::cs0_encode(&n.name);
                if name.len() > MAX_NAME_BYTES {
                    return Err(WriteError::Conflict {
                        iso_path: tree.path_of(child),
                        reason: format!(
                            "the name needs {} bytes in UDF, which allows {MAX_NAME_BYTES}",
                            name.len()
                        ),
                    });
                }
                let ci = nodes.len();
                nodes.push(UdfNode {
                    node: child,
                    what,
                    parent: i,
                    children: Vec::new(),
                    dir_bytes: 0,
                    dir_block: 0,
                });
                if matches!(what, What::Dir) {
                    work.push(ci);
                }
                children.push((ci, name));
            }
            nodes[i].dir_bytes =
                fid_len(0) + children.iter().map(|(_, n)| fid_len(n.len())).sum::<u64>();
            nodes[i].children = children;
        }
        // Partition blocks: 0 file set descriptor, 1 terminator, then one file entry per
        // node (node i at block 2 + i), then the folders' identifier lists.
        let mut block = 2u64 + nodes.len() as u64;
        for n in nodes.iter_mut().filter(|n| matches!(n.what, What::Dir)) {
            n.dir_block = u32::try_from(block).map_err(|_| too_large())?;
            block += n.dir_bytes.div_ceil(BLOCK as u64);
        }
        let dirs = nodes.iter().filter(|n| matches!(n.what, What::Dir)).count() as u32;
        Ok(UdfPlan {
            revision,
            label: label.to_string(),
            files: nodes.len() as u32 - dirs,
            dirs,
            nodes,
            meta_blocks: u32::try_from(block).map_err(|_| too_large())?,
            end_anchor_lba: 0,
            partition_blocks: 0,
        })
    }

    /// Sectors of UDF metadata at the partition start.
    pub(crate) fn meta_blocks(&self) -> u32 {
        self.meta_blocks
    }

    /// Closes the partition at `end` (the sector after the last data) and puts the second
    /// anchor there; returns the sectors it takes.
    pub(crate) fn close(&mut self, end: u32) -> u32 {
        self.partition_blocks = end - PARTITION_START;
        self.end_anchor_lba = end;
        1
    }

    fn tag_version(&self) -> u16 {
        match self.revision {
            UdfRevision::V102 => 2,
            UdfRevision::V201 => 3,
        }
    }

    fn domain(&self) -> [u8; 32] {
        let rev = self.revision.bcd().to_le_bytes();
        regid("*OSTA UDF Compliant", [rev[0], rev[1], 0, 0, 0, 0, 0, 0])
    }

    fn udf_suffix(&self) -> [u8; 8] {
        let rev = self.revision.bcd().to_le_bytes();
        [rev[0], rev[1], 0, 0, 0, 0, 0, 0]
    }

    fn implementation() -> [u8; 32] {
        regid("*vmedia", [0; 8])
    }

    fn tag(&self, desc: &mut [u8], ident: u16, location: u32) {
        finish_tag(desc, ident, self.tag_version(), location);
    }

    /// The volume recognition sequence: three sectors.
    pub(crate) fn recognition_sequence(&self) -> Vec<u8> {
        let mut out = vec![0u8; 3 * BLOCK];
        let nsr: &[u8; 5] = match self.revision {
            UdfRevision::V102 => b"NSR02",
            UdfRevision::V201 => b"NSR03",
        };
        for (i, id) in [b"BEA01", nsr, b"TEA01"].into_iter().enumerate() {
            let s = &mut out[i * BLOCK..];
            s[1..6].copy_from_slice(id);
            s[6] = 1;
        }
        out
    }

    /// An anchor volume descriptor pointer for sector `lba`.
    pub(crate) fn anchor(&self, lba: u32) -> Vec<u8> {
        let mut d = vec![0u8; 512];
        let len = VDS_SECTORS * BLOCK as u32;
        d[16..20].copy_from_slice(&len.to_le_bytes());
        d[20..24].copy_from_slice(&MAIN_VDS_LBA.to_le_bytes());
        d[24..28].copy_from_slice(&len.to_le_bytes());
        d[28..32].copy_from_slice(&RESERVE_VDS_LBA.to_le_bytes());
        self.tag(&mut d, tag_id::ANCHOR, lba);
        d
    }

    /// One volume descriptor sequence (PVD, IUVD, partition, LVD, USD, terminator) written
    /// at `lba`: `VDS_SECTORS` sectors.
    fn volume_sequence(&self, lba: u32, now: i64) -> Vec<u8> {
        let mut out = vec![0u8; VDS_SECTORS as usize * BLOCK];
        let label = self.label.as_str();
        let ts = timestamp(now);
        let impl_id = Self::implementation();
        // Primary volume descriptor.
        let mut d = vec![0u8; 512];
        d[16..20].copy_from_slice(&1u32.to_le_bytes());
        d[24..56].copy_from_slice(&dstring(label, 32));
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        d[58..60].copy_from_slice(&1u16.to_le_bytes());
        d[60..62].copy_from_slice(&2u16.to_le_bytes());
        d[62..64].copy_from_slice(&2u16.to_le_bytes());
        d[64..68].copy_from_slice(&1u32.to_le_bytes());
        d[68..72].copy_from_slice(&1u32.to_le_bytes());
        // UDF 2.2.2.5: the volume set identifier starts with 8 unique hex digits.
        let set = format!("{:08X}{label}", (now as u64 as u32) ^ 0x5644_4D45);
        d[72..200].copy_from_slice(&dstring(&set, 128));
        d[200..264].copy_from_slice(&osta_charspec());
        d[264..328].copy_from_slice(&osta_charspec());
        d[344..376].copy_from_slice(&Self::implementation());
        d[376..388].copy_from_slice(&ts);
        d[388..420].copy_from_slice(&impl_id);
        self.tag(&mut d, tag_id::PRIMARY_VOLUME, lba);
        out[..512].copy_from_slice(&d);
        // Implementation use volume descriptor (UDF 2.2.7).
        let mut d = vec![0u8; 512];
        d[16..20].copy_from_slice(&2u32.to_le_bytes());
        d[20..52].copy_from_slice(&regid("*UDF LV Info", self.udf_suffix()));
        d[52..116].copy_from_slice(&osta_charspec());
        d[116..244].copy_from_slice(&dstring(label, 128));
        d[352..384].copy_from_slice(&impl_id);
        self.tag(&mut d, tag_id::IMPLEMENTATION_USE, lba + 1);
        out[BLOCK..BLOCK + 512].copy_from_slice(&d);
        // Partition descriptor: one read-only partition.
        let mut d = vec![0u8; 512];
        d[16..20].copy_from_slice(&3u32.to_le_bytes());
        d[20..22].copy_from_slice(&1u16.to_le_bytes());
        let contents = match self.revision {
            UdfRevision::V102 => "+NSR02",
            UdfRevision::V201 => "+NSR03",
        };
        d[24..56].copy_from_slice(&regid(contents, [0; 8]));
        d[184..188].copy_from_slice(&1u32.to_le_bytes());
        d[188..192].copy_from_slice(&PARTITION_START.to_le_bytes());
        d[192..196].copy_from_slice(&self.partition_blocks.to_le_bytes());
        d[196..228].copy_from_slice(&impl_id);
        self.tag(&mut d, tag_id::PARTITION, lba + 2);
        out[2 * BLOCK..2 * BLOCK + 512].copy_from_slice(&d);
        // Logical volume descriptor with one type 1 partition map.
        let mut d = vec![0u8; 446];
        d[16..20].copy_from_slice(&4u32.to_le_bytes());
        d[20..84].copy_from_slice(&osta_charspec());
        d[84..212].copy_from_slice(&dstring(label, 128));
        d[212..216].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        d[216..248].copy_from_slice(&self.domain());
        // Logical volume contents use: the file set descriptor's long_ad.
        d[248..252].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        d[264..268].copy_from_slice(&6u32.to_le_bytes());
        d[268..272].copy_from_slice(&1u32.to_le_bytes());
        d[272..304].copy_from_slice(&impl_id);
        d[432..436].copy_from_slice(&(2 * BLOCK as u32).to_le_bytes());
        d[436..440].copy_from_slice(&LVID_LBA.to_le_bytes());
        d[440] = 1;
        d[441] = 6;
        d[442..444].copy_from_slice(&1u16.to_le_bytes());
        self.tag(&mut d, tag_id::LOGICAL_VOLUME, lba + 3);
        out[3 * BLOCK..3 * BLOCK + 446].copy_from_slice(&d);
        // Unallocated space descriptor: nothing is free on a read-only medium.
        let mut d = vec![0u8; 24];
        d[16..20].copy_from_slice(&5u32.to_le_bytes());
        self.tag(&mut d, tag_id::UNALLOCATED_SPACE, lba + 4);
        out[4 * BLOCK..4 * BLOCK + 24].copy_from_slice(&d);
        let mut d = vec![0u8; 512];
        self.tag(&mut d, tag_id::TERMINATING, lba + 5);
        out[5 * BLOCK..5 * BLOCK + 512].copy_from_slice(&d);
        out
    }

    /// The logical volume integrity descriptor (closed) and its terminator: two sectors.
    fn integrity(&self, now: i64) -> Vec<u8> {
        let mut out = vec![0u8; 2 * BLOCK];
        let mut d = vec![0u8; 134];
        d[16..28].copy_from_slice(&timestamp(now));
        d[28..32].copy_from_slice(&1u32.to_le_bytes());
        let next_unique = FIRST_UNIQUE_ID + self.nodes.len() as u64;
        d[40..48].copy_from_slice(&next_unique.to_le_bytes());
        d[72..76].copy_from_slice(&1u32.to_le_bytes());
        d[76..80].copy_from_slice(&46u32.to_le_bytes());
        d[84..88].copy_from_slice(&self.partition_blocks.to_le_bytes());
        d[88..120].copy_from_slice(&Self::implementation());
        d[120..124].copy_from_slice(&self.files.to_le_bytes());
        d[124..128].copy_from_slice(&self.dirs.to_le_bytes());
        let rev = self.revision.bcd().to_le_bytes();
        for at in [128, 130, 132] {
            d[at..at + 2].copy_from_slice(&rev);
        }
        self.tag(&mut d, tag_id::INTEGRITY, LVID_LBA);
        out[..134].copy_from_slice(&d);
        let mut t = vec![0u8; 512];
        self.tag(&mut t, tag_id::TERMINATING, LVID_LBA + 1);
        out[BLOCK..BLOCK + 512].copy_from_slice(&t);
        out
    }

    /// Writes the sectors below the partition (recognition sequence at `vrs_lba`, both
    /// volume descriptor sequences, the integrity sequence, the anchor) into `image`, which
    /// holds the image from sector 0.
    pub(crate) fn render_volume(&self, image: &mut [u8], vrs_lba: u32, now: i64) {
        let mut put = |lba: u32, bytes: &[u8]| {
            let at = lba as usize * BLOCK;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(vrs_lba, &self.recognition_sequence());
        put(MAIN_VDS_LBA, &self.volume_sequence(MAIN_VDS_LBA, now));
        put(RESERVE_VDS_LBA, &self.volume_sequence(RESERVE_VDS_LBA, now));
        put(LVID_LBA, &self.integrity(now));
        put(super::ANCHOR_LBA, &self.anchor(super::ANCHOR_LBA));
    }

    /// Renders the partition's metadata blocks (`meta_blocks` sectors) into `out`, which
    /// holds exactly those sectors and reads as zeros: file set descriptor, terminator, file
    /// entries, identifier lists. `data_lba` and `catalog_lba` are absolute.
    ///
    /// Each descriptor is written in place (a small-file tree has one file entry sector per
    /// file, tens of megabytes for a DVD's worth of files): no buffer per descriptor and no
    /// copy of the whole area, and the file entries and folders are split over both cores.
    pub(crate) fn render_partition(
        &self,
        tree: &Tree,
        data: &[(u64, u32)],
        catalog_lba: Option<u32>,
        now: i64,
        out: &mut [u8],
    ) -> Result<(), WriteError> {
        let node_blocks = 2 + self.nodes.len();
        if out.len() != self.meta_blocks as usize * BLOCK || node_blocks * BLOCK > out.len() {
            return Err(too_large());
        }
        let (head, rest) = out.split_at_mut(node_blocks * BLOCK);
        let (fixed, entries) = head.split_at_mut(2 * BLOCK);
        // File set descriptor.
        let d = &mut fixed[..512];
        d[16..28].copy_from_slice(&timestamp(now));
        d[28..30].copy_from_slice(&3u16.to_le_bytes());
        d[30..32].copy_from_slice(&3u16.to_le_bytes());
        d[32..36].copy_from_slice(&1u32.to_le_bytes());
        d[36..40].copy_from_slice(&1u32.to_le_bytes());
        d[48..112].copy_from_slice(&osta_charspec());
        d[112..240].copy_from_slice(&dstring(&self.label, 128));
        d[240..304].copy_from_slice(&osta_charspec());
        d[304..336].copy_from_slice(&dstring(&self.label, 32));
        d[400..416].copy_from_slice(&long_ad(BLOCK as u32, 2, 0));
        d[416..448].copy_from_slice(&self.domain());
        self.tag(d, tag_id::FILE_SET, 0);
        self.tag(&mut fixed[BLOCK..BLOCK + 512], tag_id::TERMINATING, 1);

        entries
            .par_chunks_mut(BLOCK)
            .enumerate()
            .try_for_each(|(i, sector)| {
                let n = &self.nodes[i];
                let (ftype, size, start) = match n.what {
                    What::Dir => (file_type::DIRECTORY, n.dir_bytes, n.dir_block),
                    What::Data(d) => {
                        let (size, lba) = data[d];
                        (
                            file_type::REGULAR,
                            size,
                            lba.saturating_sub(PARTITION_START),
                        )
                    }
                    What::Catalog => (
                        file_type::REGULAR,
                        BLOCK as u64,
                        catalog_lba.unwrap_or(0).saturating_sub(PARTITION_START),
                    ),
                };
                self.file_entry(tree, i, sector, ftype, size, start)
            })?;

        // The identifier lists follow the file entries in node order: carve one slice per
        // folder, then fill them in parallel.
        let mut lists: Vec<(usize, &mut [u8])> = Vec::with_capacity(self.dirs as usize);
        let mut rest = rest;
        let mut next_block = node_blocks;
        for (i, n) in self.nodes.iter().enumerate() {
            if !matches!(n.what, What::Dir) {
                continue;
            }
            let skip = (n.dir_block as usize)
                .checked_sub(next_block)
                .ok_or_else(too_large)?
                * BLOCK;
            let blocks = n.dir_bytes.div_ceil(BLOCK as u64) as usize;
            let tail = std::mem::take(&mut rest);
            if skip + blocks * BLOCK > tail.len() {
                return Err(too_large());
            }
            let (mine, tail) = tail[skip..].split_at_mut(blocks * BLOCK);
            lists.push((i, mine));
            rest = tail;
            next_block = n.dir_block as usize + blocks;
        }
        lists
            .into_par_iter()
            .for_each(|(i, list)| self.identifiers(i, list));
        Ok(())
    }

    fn unique_id(i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            FIRST_UNIQUE_ID + i as u64 - 1
        }
    }

    /// Writes the folder's identifier list into `out` (its sectors, zeroed): the parent
    /// entry, then one per child.
    fn identifiers(&self, i: usize, out: &mut [u8]) {
        let n = &self.nodes[i];
        let mut pos = 0usize;
        let mut push = |target: usize, flags: u8, name: &[u8]| {
            let len = fid_len(name.len()) as usize;
            let f = &mut out[pos..pos + len];
            f[16..18].copy_from_slice(&1u16.to_le_bytes());
            f[18] = flags;
            f[19] = name.len() as u8;
            let mut icb = long_ad(BLOCK as u32, 2 + target as u32, 0);
            // UDF 2.3.4.3: the low 32 bits of the target's unique id in the ICB's use bytes.
            icb[12..16].copy_from_slice(&(Self::unique_id(target) as u32).to_le_bytes());
            f[20..36].copy_from_slice(&icb);
            f[38..38 + name.len()].copy_from_slice(name);
            let block = n.dir_block + (pos / BLOCK) as u32;
            self.tag(f, tag_id::FILE_IDENTIFIER, block);
            pos += len;
        };
        push(n.parent, fid_flag::DIRECTORY | fid_flag::PARENT, &[]);
        for (c, name) in &n.children {
            let flags = if matches!(self.nodes[*c].what, What::Dir) {
                fid_flag::DIRECTORY
            } else {
                0
            };
            push(*c, flags, name);
        }
    }

    /// Writes node `i`'s file entry into `sector` (its one zeroed block at partition block
    /// `block`).
    fn file_entry(
        &self,
        tree: &Tree,
        i: usize,
        sector: &mut [u8],
        ftype: u8,
        size: u64,
        start: u32,
    ) -> Result<(), WriteError> {
        let block = 2 + i as u32;
        let n = &self.nodes[i];
        let node = &tree.nodes[n.node];
        let extents = size.div_ceil(EXTENT_BYTES) as usize;
        if extents > MAX_EXTENTS {
            return Err(WriteError::TooLarge {
                reason: format!(
                    "{} is {size} bytes; a UDF file entry here holds at most {MAX_EXTENTS} \
                     extents of {EXTENT_BYTES} bytes",
                    tree.path_of(n.node)
                ),
            });
        }
        let fe = &mut sector[..FE_HEADER + extents * SHORT_AD];
        // ICB tag: strategy 4, one entry, short allocation descriptors.
        fe[20..22].copy_from_slice(&4u16.to_le_bytes());
        fe[24..26].copy_from_slice(&1u16.to_le_bytes());
        fe[27] = ftype;
        let parent_block = 2 + n.parent as u32;
        fe[28..32].copy_from_slice(&parent_block.to_le_bytes());
        let meta = node.meta;
        let uid = if meta.uid == u32::MAX { 0 } else { meta.uid };
        fe[36..40].copy_from_slice(&uid.to_le_bytes());
        fe[40..44].copy_from_slice(&meta.gid.to_le_bytes());
        fe[44..48].copy_from_slice(&permissions(meta.mode, ftype).to_le_bytes());
        let subdirs = n
            .children
            .iter()
            .filter(|(c, _)| matches!(self.nodes[*c].what, What::Dir))
            .count();
        let links = if ftype == file_type::DIRECTORY {
            1 + subdirs
        } else {
            1
        };
        fe[48..50].copy_from_slice(&(links.min(usize::from(u16::MAX)) as u16).to_le_bytes());
        fe[56..64].copy_from_slice(&size.to_le_bytes());
        fe[64..72].copy_from_slice(&size.div_ceil(BLOCK as u64).to_le_bytes());
        // The three times are usually equal (a copied tree, or --date): convert once.
        let mtime = timestamp(meta.mtime);
        let convert = |t: i64| if t == meta.mtime { mtime } else { timestamp(t) };
        fe[72..84].copy_from_slice(&convert(meta.atime));
        fe[84..96].copy_from_slice(&mtime);
        fe[96..108].copy_from_slice(&convert(meta.ctime));
        fe[108..112].copy_from_slice(&1u32.to_le_bytes());
        fe[128..160].copy_from_slice(&Self::implementation());
        fe[160..168].copy_from_slice(&Self::unique_id(i).to_le_bytes());
        fe[172..176].copy_from_slice(&((extents * SHORT_AD) as u32).to_le_bytes());
        let mut left = size;
        let mut at = start;
        for e in 0..extents {
            let len = left.min(EXTENT_BYTES);
            let o = FE_HEADER + e * SHORT_AD;
            fe[o..o + 4].copy_from_slice(&(len as u32).to_le_bytes());
            fe[o + 4..o + 8].copy_from_slice(&at.to_le_bytes());
            left -= len;
            at += (len / BLOCK as u64) as u32;
        }
        self.tag(fe, tag_id::FILE_ENTRY, block);
        Ok(())
    }
}

fn too_large() -> WriteError {
    WriteError::TooLarge {
        reason: "the UDF metadata exceeds 2^32 sectors".into(),
    }
}

/// A long allocation descriptor: length, partition block, partition reference.
fn long_ad(len: u32, block: u32, partition: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&len.to_le_bytes());
    a[4..8].copy_from_slice(&block.to_le_bytes());
    a[8..10].copy_from_slice(&partition.to_le_bytes());
    a
}

/// UDF permissions (ECMA-167 4/14.9.5: other, group, owner in 5-bit groups of execute,
/// write, read, change attributes, delete) from a Unix mode; read-only media keep w off.
fn permissions(mode: u32, ftype: u8) -> u32 {
    let mode = if mode & 0o777 == 0 {
        if ftype == file_type::DIRECTORY {
            0o555
        } else {
            0o444
        }
    } else {
        mode
    };
    let mut p = 0u32;
    for (shift, bits) in [(0, mode & 7), (5, (mode >> 3) & 7), (10, (mode >> 6) & 7)] {
        let x = bits & 1;
        let w = (bits >> 1) & 1;
        let r = (bits >> 2) & 1;
        p |= (x | (w << 1) | (r << 2)) << shift;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_stay_below_the_30_bit_limit_and_sector_aligned() {
        assert!(EXTENT_BYTES <= u64::from(MAX_EXTENT_LENGTH));
        assert_eq!(EXTENT_BYTES % BLOCK as u64, 0);
    }

    #[test]
    fn permissions_follow_the_unix_mode() {
        assert_eq!(
            permissions(0o755, file_type::DIRECTORY),
            0b00111_00101_00101
        );
        assert_eq!(permissions(0o644, file_type::REGULAR), 0b00110_00100_00100);
        assert_eq!(permissions(0, file_type::REGULAR), 0b00100_00100_00100);
    }
}
