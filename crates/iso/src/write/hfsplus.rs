//! HFS+ hybrid: a second filesystem over the same file data, for Intel Macs (`-hfsplus`).
//!
//! Placed as xorriso places it: the partition starts with a 2048-byte block holding the volume
//! header at byte 1024, then the catalog B-tree (4096-byte nodes), the extents overflow B-tree
//! (one empty header node) and the targets of symbolic links ("head"); then the file data the
//! ISO 9660 tree already points at (allocation block = ISO sector, so an HFS+ extent is the ISO
//! extent minus the partition start); then the allocation bitmap and a 2048-byte block whose
//! second KiB holds the alternate volume header ("tail"). Every block is marked in use.
//!
//! Names are UTF-16 in Apple's decomposed form (canonical decomposition except the ranges
//! Apple keeps composed, ':' stored as '/'); catalog keys are ordered by parent id, then by
//! the case-folded name (TN1150 FastUnicodeCompare). Names that fold alike in one folder get a
//! `_N` suffix, as libisofs mangles them.

use super::records::MeasureCtx;
use super::tree::{DataId, NodeId, NodeKind, Tree, ROOT};
use super::{WriteError, SECTOR_SIZE};
use crate::spec::HfsPlusSpec;
use std::collections::HashSet;

/// Allocation block size: one ISO sector, so ISO extents are HFS+ extents.
pub(crate) const BLOCK_SIZE: u32 = 2048;
/// Catalog B-tree node size (TN1150: at least 4 KiB for the catalog).
const CATALOG_NODE: usize = 4096;
/// Extents overflow B-tree node size: it holds only its header node.
const EXTENTS_NODE: usize = 2048;
/// Longest HFS+ name in UTF-16 units (HFSUniStr255).
const MAX_NAME_UNITS: usize = 255;
/// Catalog key length limit written in the header (parent id + length + 255 units).
const MAX_CATALOG_KEY: u16 = 6 + 2 * MAX_NAME_UNITS as u16;
/// Bits in the header node's map record (libisofs's bound: no map nodes are written).
const MAX_CATALOG_NODES: usize = (CATALOG_NODE - 0x100) * 8;
/// Seconds from 1904-01-01 (HFS+ epoch) to 1970-01-01.
const MAC_EPOCH_OFFSET: i64 = 2_082_844_800;
/// Catalog node ids below this are reserved by TN1150.
const FIRST_USER_CNID: u32 = 16;
const ROOT_PARENT_CNID: u32 = 1;
const ROOT_CNID: u32 = 2;
/// Node descriptor size.
const NODE_DESCRIPTOR: usize = 14;
/// Catalog record data sizes (TN1150 HFSPlusCatalogFolder / File / thread header).
const FOLDER_RECORD: usize = 88;
const FILE_RECORD: usize = 248;
const THREAD_RECORD: usize = 10;
/// Finder info words of the volume header.
const FINDER_INFO_WORDS: usize = 8;

#[derive(Debug, Clone)]
enum Content {
    /// A regular file's data item (None: empty or hidden data).
    Data(Option<DataId>),
    /// A symbolic link: index into `HfsPlan::symlinks`.
    Symlink(usize),
    /// Device, FIFO or socket: no data; `rdev` for devices.
    Special(u64),
}

#[derive(Debug, Clone)]
enum RecordKind {
    Folder {
        valence: u32,
    },
    File {
        content: Content,
        type_creator: [u8; 8],
    },
    /// Thread of a folder (3) or file (4): the item's parent id and name.
    Thread {
        folder: bool,
        parent: u32,
    },
}

#[derive(Debug, Clone)]
struct Record {
    /// Key: parent id (for threads: the item's own id).
    key_parent: u32,
    /// Key name (empty for threads).
    key_name: Vec<u16>,
    /// Case-folded key name, the sort key.
    folded: Vec<u16>,
    /// The item's own id and name (threads carry the name in their data).
    cnid: u32,
    name: Vec<u16>,
    node: NodeId,
    kind: RecordKind,
}

impl Record {
    fn key_len(&self) -> usize {
        8 + 2 * self.key_name.len()
    }
    fn data_len(&self) -> usize {
        match self.kind {
            RecordKind::Folder { .. } => FOLDER_RECORD,
            RecordKind::File { .. } => FILE_RECORD,
            RecordKind::Thread { .. } => THREAD_RECORD + 2 * self.name.len(),
        }
    }
    /// Bytes the record takes in a node, its offset slot included.
    fn node_bytes(&self) -> usize {
        self.key_len() + self.data_len() + 2
    }
}

/// One B-tree node: records `start..start + count` of the level below (or of the leaves).
#[derive(Debug, Clone)]
struct TreeNode {
    start: usize,
    count: usize,
}

/// The HFS+ volume, planned: sizes known before any address, rendered once addresses are.
#[derive(Debug)]
pub(crate) struct HfsPlan {
    records: Vec<Record>,
    /// Levels bottom-up: `levels[0]` are the leaves.
    levels: Vec<Vec<TreeNode>>,
    catalog_nodes: usize,
    symlinks: Vec<Vec<u8>>,
    /// First block of each symlink target, counted from the first symlink block.
    symlink_offsets: Vec<u32>,
    symlink_blocks: u32,
    file_count: u32,
    folder_count: u32,
    next_cnid: u32,
    finder_info: [u32; FINDER_INFO_WORDS],
    serial: [u8; 8],
    /// Data items whose files are left out (they lie outside the partition).
    pub hidden_data: Vec<DataId>,
    /// Set by the layout: first LBA of the partition, LBA of the tail, total blocks.
    pub part_start: u32,
    pub tail_lba: u32,
    pub total_blocks: u32,
    pub alloc_blocks: u32,
}

/// Apple's case folding (TN1150 gLowerCaseTable) as ranges: (first, last, delta, stride).
/// Characters with a canonical decomposition are not in it: names are decomposed first.
const CASE_FOLD: &[(u16, u16, i32, u16)] = &[
    (0x0041, 0x005A, 32, 1),
    (0x00C6, 0x00C6, 32, 1),
    (0x00D0, 0x00D0, 32, 1),
    (0x00D8, 0x00D8, 32, 1),
    (0x00DE, 0x00DE, 32, 1),
    (0x0110, 0x0110, 1, 1),
    (0x0126, 0x0126, 1, 1),
    (0x0132, 0x0132, 1, 1),
    (0x013F, 0x0141, 1, 2),
    (0x014A, 0x014A, 1, 1),
    (0x0152, 0x0152, 1, 1),
    (0x0166, 0x0166, 1, 1),
    (0x0181, 0x0181, 210, 1),
    (0x0182, 0x0184, 1, 2),
    (0x0186, 0x0186, 206, 1),
    (0x0187, 0x0187, 1, 1),
    (0x0189, 0x018A, 205, 1),
    (0x018B, 0x018B, 1, 1),
    (0x018E, 0x018E, 79, 1),
    (0x018F, 0x018F, 202, 1),
    (0x0190, 0x0190, 203, 1),
    (0x0191, 0x0191, 1, 1),
    (0x0193, 0x0193, 205, 1),
    (0x0194, 0x0194, 207, 1),
    (0x0196, 0x0196, 211, 1),
    (0x0197, 0x0197, 209, 1),
    (0x0198, 0x0198, 1, 1),
    (0x019C, 0x019C, 211, 1),
    (0x019D, 0x019D, 213, 1),
    (0x019F, 0x019F, 214, 1),
    (0x01A2, 0x01A4, 1, 2),
    (0x01A7, 0x01A7, 1, 1),
    (0x01A9, 0x01A9, 218, 1),
    (0x01AC, 0x01AC, 1, 1),
    (0x01AE, 0x01AE, 218, 1),
    (0x01B1, 0x01B2, 217, 1),
    (0x01B3, 0x01B5, 1, 2),
    (0x01B7, 0x01B7, 219, 1),
    (0x01B8, 0x01B8, 1, 1),
    (0x01BC, 0x01BC, 1, 1),
    (0x01C4, 0x01C4, 2, 1),
    (0x01C5, 0x01C5, 1, 1),
    (0x01C7, 0x01C7, 2, 1),
    (0x01C8, 0x01C8, 1, 1),
    (0x01CA, 0x01CA, 2, 1),
    (0x01CB, 0x01CB, 1, 1),
    (0x01E4, 0x01E4, 1, 1),
    (0x01F1, 0x01F1, 2, 1),
    (0x01F2, 0x01F2, 1, 1),
    (0x0391, 0x03A1, 32, 1),
    (0x03A3, 0x03A9, 32, 1),
    (0x03E2, 0x03EE, 1, 2),
    (0x0402, 0x0402, 80, 1),
    (0x0404, 0x0406, 80, 1),
    (0x0408, 0x040B, 80, 1),
    (0x040F, 0x040F, 80, 1),
    (0x0410, 0x0418, 32, 1),
    (0x041A, 0x042F, 32, 1),
    (0x0460, 0x0474, 1, 2),
    (0x0478, 0x0480, 1, 2),
    (0x0490, 0x04BE, 1, 2),
    (0x04C3, 0x04C3, 1, 1),
    (0x04C7, 0x04C7, 1, 1),
    (0x04CB, 0x04CB, 1, 1),
    (0x0531, 0x0556, 48, 1),
    (0x10A0, 0x10C5, 48, 1),
    (0x2160, 0x216F, 16, 1),
    (0xFF21, 0xFF3A, 32, 1),
];

/// Characters HFS+ comparisons ignore (zero-width joiners, bidi controls, BOM).
fn ignorable(c: u16) -> bool {
    matches!(c, 0x200C..=0x200F | 0x202A..=0x202E | 0x206A..=0x206F | 0xFEFF)
}

/// One UTF-16 unit folded for comparison; `None` = ignored.
pub(crate) fn fold_unit(c: u16) -> Option<u16> {
    if c == 0 {
        // NUL sorts after everything (TN1150 maps it to 0xFFFF).
        return Some(0xFFFF);
    }
    if ignorable(c) {
        return None;
    }
    for &(first, last, delta, stride) in CASE_FOLD {
        if c < first {
            break;
        }
        if c <= last && (c - first).is_multiple_of(stride) {
            return u16::try_from(i32::from(c) + delta).ok();
        }
    }
    Some(c)
}

/// The comparison form of an HFS+ name.
pub(crate) fn fold(name: &[u16]) -> Vec<u16> {
    name.iter().filter_map(|&c| fold_unit(c)).collect()
}

/// Apple leaves these ranges composed (General Punctuation to CJK radicals, CJK compatibility
/// ideographs), as TN1150's decomposition table does.
fn keep_composed(c: char) -> bool {
    matches!(u32::from(c), 0x2000..=0x2FFF | 0xF900..=0xFAFF | 0x2F800..=0x2FAFF)
}

/// A host name as HFS+ stores it: ':' becomes '/', canonical decomposition with canonical
/// ordering of combining marks, UTF-16, at most 255 units.
pub(crate) fn hfs_name(name: &str) -> Vec<u16> {
    let mut chars: Vec<char> = Vec::with_capacity(name.len());
    for c in name.chars() {
        if c == ':' {
            chars.push('/');
        } else if keep_composed(c) {
            chars.push(c);
        } else {
            unicode_normalization::char::decompose_canonical(c, |d| chars.push(d));
        }
    }
    // Canonical ordering: a stable sort of each run of combining marks by class.
    let class = unicode_normalization::char::canonical_combining_class;
    let mut i = 0;
    while i < chars.len() {
        if class(chars[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && class(chars[i]) != 0 {
            i += 1;
        }
        chars[start..i].sort_by_key(|&c| class(c));
    }
    let mut out: Vec<u16> = Vec::with_capacity(chars.len());
    for c in chars {
        let mut buf = [0u16; 2];
        let units = c.encode_utf16(&mut buf);
        if out.len() + units.len() > MAX_NAME_UNITS {
            break;
        }
        out.extend_from_slice(units);
    }
    out
}

fn invalid(reason: String) -> WriteError {
    WriteError::InvalidSpec {
        field: "hfsplus",
        reason,
    }
}

/// HFS+ date: seconds since 1904, clamped to the 32-bit field.
pub(crate) fn mac_time(unix: i64) -> u32 {
    let t = unix.saturating_add(MAC_EPOCH_OFFSET);
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// What the layout needs to know to start: which data to leave out and the bless targets.
pub(crate) struct Inputs<'a> {
    pub tree: &'a Tree,
    pub spec: &'a HfsPlusSpec,
    pub volume_name: &'a str,
    /// Data items outside the partition (EFI images exposed as their own partition).
    pub hidden_data: Vec<DataId>,
    pub serial: [u8; 8],
}

/// Builds the catalog: records in key order, packed into nodes. No address is needed yet.
pub(crate) fn prepare(inputs: Inputs<'_>) -> Result<HfsPlan, WriteError> {
    let tree = inputs.tree;
    let hidden: HashSet<DataId> = inputs.hidden_data.iter().copied().collect();
    let visible = |id: NodeId| -> bool {
        let n = &tree.nodes[id];
        if n.hide_hfsplus || matches!(n.kind, NodeKind::Catalog) {
            return false;
        }
        !matches!(n.kind, NodeKind::File(d) if hidden.contains(&d))
    };
    let mut records: Vec<Record> = Vec::new();
    let mut symlinks: Vec<Vec<u8>> = Vec::new();
    let mut cnid_of: Vec<u32> = vec![0; tree.nodes.len()];
    let mut next_cnid = FIRST_USER_CNID;
    let (mut file_count, mut folder_count) = (0u32, 0u32);

    let root_name = hfs_name(inputs.volume_name);
    cnid_of[ROOT] = ROOT_CNID;
    // Depth-first, children in name order: ids never depend on host enumeration order.
    let mut stack: Vec<(NodeId, u32)> = vec![(ROOT, ROOT_PARENT_CNID)];
    while let Some((id, parent_cnid)) = stack.pop() {
        let cnid = if id == ROOT {
            ROOT_CNID
        } else {
            let c = next_cnid;
            next_cnid = next_cnid
                .checked_add(1)
                .ok_or_else(|| invalid("more than 2^32 catalog entries".into()))?;
            c
        };
        cnid_of[id] = cnid;
        let name = if id == ROOT {
            root_name.clone()
        } else {
            hfs_name(&tree.nodes[id].name)
        };
        let kind = match &tree.nodes[id].kind {
            NodeKind::Dir(_) => {
                let children: Vec<NodeId> = tree.children(id).filter(|&c| visible(c)).collect();
                for &c in children.iter().rev() {
                    stack.push((c, cnid));
                }
                if id != ROOT {
                    folder_count += 1;
                }
                RecordKind::Folder {
                    valence: children.len() as u32,
                }
            }
            other => {
                file_count += 1;
                let content = match other {
                    NodeKind::File(d) => Content::Data(Some(*d)),
                    NodeKind::Symlink(target) => {
                        symlinks.push(target.as_bytes().to_vec());
                        Content::Symlink(symlinks.len() - 1)
                    }
                    NodeKind::Device(rdev) => Content::Special(*rdev),
                    _ => Content::Special(0),
                };
                let type_creator = match content {
                    Content::Symlink(_) => *b"slnkrhap",
                    _ => *b"????????",
                };
                RecordKind::File {
                    content,
                    type_creator,
                }
            }
        };
        let folder = matches!(kind, RecordKind::Folder { .. });
        records.push(Record {
            key_parent: parent_cnid,
            folded: fold(&name),
            key_name: name.clone(),
            cnid,
            name: name.clone(),
            node: id,
            kind,
        });
        records.push(Record {
            key_parent: cnid,
            key_name: Vec::new(),
            folded: Vec::new(),
            cnid,
            name,
            node: id,
            kind: RecordKind::Thread {
                folder,
                parent: parent_cnid,
            },
        });
    }
    mangle_collisions(&mut records);
    records.sort_by(|a, b| (a.key_parent, &a.folded).cmp(&(b.key_parent, &b.folded)));

    let mut finder_info = [0u32; FINDER_INFO_WORDS];
    for bless in &inputs.spec.blessed {
        let node = tree
            .lookup(&bless.iso_path)
            .filter(|&n| visible(n))
            .ok_or_else(|| {
                invalid(format!(
                    "-hfs-bless-by {}: {} is not in the HFS+ tree",
                    bless_letter(bless.blessing),
                    bless.iso_path
                ))
            })?;
        finder_info[bless.blessing.finder_info_slot()] = cnid_of[node];
    }
    for host in &inputs.spec.bless_host_dirs {
        let wanted: std::path::PathBuf = host.components().collect();
        let node = (0..tree.nodes.len())
            .find(|&n| {
                tree.is_dir(n)
                    && visible(n)
                    && tree.nodes[n]
                        .host_path
                        .as_ref()
                        .is_some_and(|p| p.components().collect::<std::path::PathBuf>() == wanted)
            })
            .ok_or_else(|| {
                invalid(format!(
                    "-hfs-bless {}: no folder of the HFS+ tree comes from it",
                    host.display()
                ))
            })?;
        finder_info[crate::spec::HfsBlessing::PpcBootdir.finder_info_slot()] = cnid_of[node];
    }
    for ct in &inputs.spec.creator_types {
        let node = tree
            .lookup(&ct.iso_path)
            .filter(|&n| visible(n) && matches!(tree.nodes[n].kind, NodeKind::File(_)))
            .ok_or_else(|| {
                invalid(format!(
                    "-hfsplus-file-creator-type: {} is not a regular file of the HFS+ tree",
                    ct.iso_path
                ))
            })?;
        for r in records.iter_mut().filter(|r| r.node == node) {
            if let RecordKind::File { type_creator, .. } = &mut r.kind {
                type_creator[..4].copy_from_slice(&ct.file_type);
                type_creator[4..].copy_from_slice(&ct.creator);
            }
        }
    }

    let levels = pack_levels(&records);
    let catalog_nodes = 1 + levels.iter().map(Vec::len).sum::<usize>();
    if catalog_nodes > MAX_CATALOG_NODES {
        return Err(WriteError::TooLarge {
            reason: format!(
                "the HFS+ catalog needs {catalog_nodes} nodes; at most {MAX_CATALOG_NODES} \
                 fit without map nodes (fewer files, or leave out -hfsplus)"
            ),
        });
    }
    let mut symlink_offsets = Vec::with_capacity(symlinks.len());
    let mut symlink_blocks = 0u64;
    for target in &symlinks {
        symlink_offsets.push(
            u32::try_from(symlink_blocks)
                .map_err(|_| invalid("symbolic link targets exceed 2^32 blocks".into()))?,
        );
        symlink_blocks += (target.len() as u64).div_ceil(u64::from(BLOCK_SIZE));
    }
    Ok(HfsPlan {
        records,
        levels,
        catalog_nodes,
        symlinks,
        symlink_offsets,
        symlink_blocks: u32::try_from(symlink_blocks)
            .map_err(|_| invalid("symbolic link targets exceed 2^32 blocks".into()))?,
        file_count,
        folder_count,
        next_cnid,
        finder_info,
        serial: inputs.serial,
        hidden_data: inputs.hidden_data,
        part_start: 0,
        tail_lba: 0,
        total_blocks: 0,
        alloc_blocks: 0,
    })
}

fn bless_letter(b: crate::spec::HfsBlessing) -> &'static str {
    use crate::spec::HfsBlessing::*;
    match b {
        PpcBootdir => "p",
        IntelBootfile => "i",
        ShowFolder => "s",
        Os9Folder => "9",
        OsxFolder => "x",
    }
}

/// Renames entries whose folded names collide with an earlier one in the same folder
/// (`README` and `readme` from a case-sensitive host): `name_0`, `name_1`... as libisofs.
fn mangle_collisions(records: &mut [Record]) {
    let mut taken: HashSet<(u32, Vec<u16>)> = HashSet::new();
    let mut renamed: Vec<(u32, Vec<u16>)> = Vec::new();
    for record in records.iter_mut() {
        if matches!(record.kind, RecordKind::Thread { .. }) {
            continue;
        }
        let key = (record.key_parent, record.folded.clone());
        if taken.insert(key) {
            continue;
        }
        let base = record.key_name.clone();
        let mut n = 0u32;
        loop {
            let suffix: Vec<u16> = format!("_{n:X}").encode_utf16().collect();
            let keep = MAX_NAME_UNITS.saturating_sub(suffix.len()).min(base.len());
            let mut name = base[..keep].to_vec();
            name.extend_from_slice(&suffix);
            let folded = fold(&name);
            if taken.insert((record.key_parent, folded.clone())) {
                record.key_name = name.clone();
                record.name = name.clone();
                record.folded = folded;
                renamed.push((record.cnid, name));
                break;
            }
            n += 1;
        }
    }
    for (cnid, name) in renamed {
        for r in records.iter_mut() {
            if r.cnid == cnid && matches!(r.kind, RecordKind::Thread { .. }) {
                r.name = name.clone();
            }
        }
    }
}

/// Packs leaf records into nodes, then index levels until one root node remains.
fn pack_levels(records: &[Record]) -> Vec<Vec<TreeNode>> {
    let capacity = CATALOG_NODE - NODE_DESCRIPTOR - 2;
    let pack = |sizes: &[usize]| -> Vec<TreeNode> {
        let mut nodes = Vec::new();
        let (mut start, mut used) = (0usize, 0usize);
        for (i, &s) in sizes.iter().enumerate() {
            if used + s > capacity && i > start {
                nodes.push(TreeNode {
                    start,
                    count: i - start,
                });
                start = i;
                used = 0;
            }
            used += s;
        }
        nodes.push(TreeNode {
            start,
            count: sizes.len() - start,
        });
        nodes
    };
    let leaf_sizes: Vec<usize> = records.iter().map(Record::node_bytes).collect();
    let mut levels = vec![pack(&leaf_sizes)];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or(&[]);
        // An index record: the first key of the child node and its node number.
        let sizes: Vec<usize> = below
            .iter()
            .map(|n| first_key(records, &levels, levels.len() - 1, n).1.len() * 2 + 8 + 4 + 2)
            .collect();
        levels.push(pack(&sizes));
    }
    levels
}

/// The key (parent, name) of the first leaf record under `node` of `level`.
fn first_key<'r>(
    records: &'r [Record],
    levels: &[Vec<TreeNode>],
    level: usize,
    node: &TreeNode,
) -> (u32, &'r [u16]) {
    let mut level = level;
    let mut index = node.start;
    while level > 0 {
        index = levels[level - 1][index].start;
        level -= 1;
    }
    let r = &records[index];
    (r.key_parent, &r.key_name)
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// A fork descriptor: logical size, clump size, one extent.
fn fork(buf: &mut [u8], at: usize, size: u64, clump: u32, start: u32, blocks: u32) {
    put64(buf, at, size);
    put32(buf, at + 8, clump);
    put32(buf, at + 12, blocks);
    put32(buf, at + 16, start);
    put32(buf, at + 20, blocks);
}

/// Writes the record offsets (the last one is the free space offset) at the node's end.
fn put_offsets(node: &mut [u8], offsets: &[usize]) {
    let size = node.len();
    for (i, &o) in offsets.iter().enumerate() {
        put16(node, size - 2 * (i + 1), o as u16);
    }
}

fn node_descriptor(node: &mut [u8], next: u32, prev: u32, kind: i8, height: u8, records: u16) {
    put32(node, 0, next);
    put32(node, 4, prev);
    node[8] = kind as u8;
    node[9] = height;
    put16(node, 10, records);
}

/// A B-tree header node (kind 1) with its header, user data and map records.
#[allow(clippy::too_many_arguments)]
fn header_node(
    size: usize,
    depth: u16,
    root: u32,
    leaf_records: u32,
    first_leaf: u32,
    last_leaf: u32,
    max_key: u16,
    total_nodes: u32,
    compare: u8,
    attributes: u32,
) -> Vec<u8> {
    let mut n = vec![0u8; size];
    node_descriptor(&mut n, 0, 0, 1, 0, 3);
    let h = NODE_DESCRIPTOR;
    put16(&mut n, h, depth);
    put32(&mut n, h + 2, root);
    put32(&mut n, h + 6, leaf_records);
    put32(&mut n, h + 10, first_leaf);
    put32(&mut n, h + 14, last_leaf);
    put16(&mut n, h + 18, size as u16);
    put16(&mut n, h + 20, max_key);
    put32(&mut n, h + 22, total_nodes);
    put32(&mut n, h + 26, 0); // free nodes: the tree is written exactly full
    put32(&mut n, h + 32, size as u32); // clump size
    n[h + 36] = 0; // btree type: HFS
    n[h + 37] = compare;
    put32(&mut n, h + 38, attributes);
    // Header record 106 bytes, user data record 128 bytes, then the map record.
    let map = h + 106 + 128;
    for node in 0..total_nodes as usize {
        n[map + node / 8] |= 0x80 >> (node % 8);
    }
    put_offsets(&mut n, &[h, h + 106, map, size - 8]);
    n
}

/// Addresses the records point at, known after layout.
pub(crate) struct RenderCtx<'a> {
    pub tree: &'a Tree,
    pub attrs: &'a MeasureCtx<'a>,
    pub data_lba: &'a [u32],
    pub now: i64,
}

impl HfsPlan {
    /// Sectors of the head: volume header block, catalog, extents file, symlink targets.
    pub fn head_sectors(&self) -> u32 {
        1 + 2 * self.catalog_nodes as u32 + 1 + self.symlink_blocks
    }

    /// Places the tail at `tail_lba` (the first sector after the file data); returns its
    /// length in sectors: the allocation bitmap and the alternate volume header block.
    pub fn place_tail(&mut self, tail_lba: u32) -> Result<u32, WriteError> {
        let bits_per_block = u64::from(BLOCK_SIZE) * 8;
        let before = u64::from(tail_lba - self.part_start) + 1;
        // x bitmap blocks must cover the blocks before them, themselves and the last block.
        let alloc = before.div_ceil(bits_per_block - 1) + 1;
        let alloc = alloc.max((before + alloc).div_ceil(bits_per_block));
        self.alloc_blocks =
            u32::try_from(alloc).map_err(|_| invalid("allocation file too large".into()))?;
        self.tail_lba = tail_lba;
        let total = u64::from(tail_lba - self.part_start) + alloc + 1;
        self.total_blocks =
            u32::try_from(total).map_err(|_| invalid("HFS+ volume exceeds 2^32 blocks".into()))?;
        Ok(self.alloc_blocks + 1)
    }

    fn catalog_start(&self) -> u32 {
        1
    }
    fn extents_start(&self) -> u32 {
        1 + 2 * self.catalog_nodes as u32
    }
    fn symlink_start(&self) -> u32 {
        self.extents_start() + 1
    }
    /// The 512-byte volume header.
    fn volume_header(&self, now: i64) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[0..2].copy_from_slice(b"H+");
        put16(&mut v, 2, 4);
        // Cleanly unmounted (bit 8) and software locked (bit 15): a read-only medium.
        put32(&mut v, 4, (1 << 8) | (1 << 15));
        v[8..12].copy_from_slice(b"vmed");
        let t = mac_time(now);
        put32(&mut v, 16, t);
        put32(&mut v, 20, t);
        put32(&mut v, 28, t);
        put32(&mut v, 32, self.file_count);
        put32(&mut v, 36, self.folder_count);
        put32(&mut v, 40, BLOCK_SIZE);
        put32(&mut v, 44, self.total_blocks);
        put32(&mut v, 56, BLOCK_SIZE);
        put32(&mut v, 60, BLOCK_SIZE);
        put32(&mut v, 64, self.next_cnid);
        put64(&mut v, 72, 1); // text encodings used: MacRoman
        for (i, w) in self.finder_info.iter().enumerate().take(6) {
            put32(&mut v, 80 + 4 * i, *w);
        }
        v[104..112].copy_from_slice(&self.serial);
        // The allocation file owns every block reserved for it (at least the bitmap's size),
        // so no block is in use without an owner.
        fork(
            &mut v,
            112,
            u64::from(self.alloc_blocks) * u64::from(BLOCK_SIZE),
            BLOCK_SIZE,
            self.tail_lba - self.part_start,
            self.alloc_blocks,
        );
        fork(
            &mut v,
            192,
            EXTENTS_NODE as u64,
            BLOCK_SIZE,
            self.extents_start(),
            1,
        );
        fork(
            &mut v,
            272,
            (self.catalog_nodes * CATALOG_NODE) as u64,
            CATALOG_NODE as u32,
            self.catalog_start(),
            2 * self.catalog_nodes as u32,
        );
        v
    }

    /// A 2048-byte block with the volume header in its second KiB.
    fn header_block(&self, now: i64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR_SIZE as usize];
        b[1024..1536].copy_from_slice(&self.volume_header(now));
        b
    }

    /// The head: volume header block, catalog, extents file, symlink targets.
    pub fn render_head(&self, ctx: &RenderCtx<'_>) -> Result<Vec<u8>, WriteError> {
        let mut out = Vec::with_capacity(self.head_sectors() as usize * SECTOR_SIZE as usize);
        out.extend_from_slice(&self.header_block(ctx.now));
        out.extend_from_slice(&self.catalog(ctx)?);
        out.extend_from_slice(&header_node(EXTENTS_NODE, 0, 0, 0, 0, 0, 10, 1, 0, 2));
        for s in &self.symlinks {
            let mut block = s.clone();
            block.resize(
                (s.len() as u64).div_ceil(u64::from(BLOCK_SIZE)) as usize * BLOCK_SIZE as usize,
                0,
            );
            out.extend_from_slice(&block);
        }
        Ok(out)
    }

    /// The tail: allocation bitmap (every block in use) and the alternate volume header.
    pub fn render_tail(&self, now: i64) -> Vec<u8> {
        let mut out = vec![0u8; self.alloc_blocks as usize * BLOCK_SIZE as usize];
        let total = self.total_blocks as usize;
        out[..total / 8].fill(0xFF);
        if !total.is_multiple_of(8) {
            out[total / 8] = 0xFF00u16.wrapping_shr(total as u32 % 8) as u8;
        }
        out.extend_from_slice(&self.header_block(now));
        out
    }

    fn catalog(&self, ctx: &RenderCtx<'_>) -> Result<Vec<u8>, WriteError> {
        let leaves = &self.levels[0];
        let depth = self.levels.len();
        let first_leaf = (self.catalog_nodes - leaves.len()) as u32;
        let mut out = header_node(
            CATALOG_NODE,
            depth as u16,
            1,
            self.records.len() as u32,
            first_leaf,
            self.catalog_nodes as u32 - 1,
            MAX_CATALOG_KEY,
            self.catalog_nodes as u32,
            0xCF, // case-insensitive comparison (HFS+)
            6,    // big keys, variable-length index keys
        );
        // Node numbers: header 0, then each level from the root down.
        let mut first_of_level = vec![0u32; depth];
        let mut next = 1u32;
        for level in (0..depth).rev() {
            first_of_level[level] = next;
            next += self.levels[level].len() as u32;
        }
        for level in (0..depth).rev() {
            let nodes = &self.levels[level];
            let base = first_of_level[level];
            for (i, tn) in nodes.iter().enumerate() {
                let mut n = vec![0u8; CATALOG_NODE];
                let next_node = if i + 1 < nodes.len() {
                    base + i as u32 + 1
                } else {
                    0
                };
                let prev_node = if i > 0 { base + i as u32 - 1 } else { 0 };
                let kind: i8 = if level == 0 { -1 } else { 0 };
                node_descriptor(
                    &mut n,
                    next_node,
                    prev_node,
                    kind,
                    level as u8 + 1,
                    tn.count as u16,
                );
                let mut at = NODE_DESCRIPTOR;
                let mut offsets = Vec::with_capacity(tn.count + 1);
                for j in tn.start..tn.start + tn.count {
                    offsets.push(at);
                    at = if level == 0 {
                        self.leaf_record(&mut n, at, &self.records[j], ctx)?
                    } else {
                        let child = &self.levels[level - 1][j];
                        let (parent, name) =
                            first_key(&self.records, &self.levels, level - 1, child);
                        let at = key(&mut n, at, parent, name);
                        put32(&mut n, at, first_of_level[level - 1] + j as u32);
                        at + 4
                    };
                }
                offsets.push(at);
                put_offsets(&mut n, &offsets);
                out.extend_from_slice(&n);
            }
        }
        Ok(out)
    }

    fn leaf_record(
        &self,
        n: &mut [u8],
        at: usize,
        r: &Record,
        ctx: &RenderCtx<'_>,
    ) -> Result<usize, WriteError> {
        let at = key(n, at, r.key_parent, &r.key_name);
        match &r.kind {
            RecordKind::Thread { folder, parent } => {
                put16(n, at, if *folder { 3 } else { 4 });
                put32(n, at + 4, *parent);
                put16(n, at + 8, r.name.len() as u16);
                let mut p = at + 10;
                for &u in &r.name {
                    put16(n, p, u);
                    p += 2;
                }
                Ok(p)
            }
            RecordKind::Folder { valence } => {
                put16(n, at, 1);
                put32(n, at + 4, *valence);
                put32(n, at + 8, r.cnid);
                self.common(n, at, r.node, true, ctx);
                Ok(at + FOLDER_RECORD)
            }
            RecordKind::File {
                content,
                type_creator,
            } => {
                put16(n, at, 2);
                put16(n, at + 2, 2); // a thread record exists
                put32(n, at + 8, r.cnid);
                self.common(n, at, r.node, false, ctx);
                n[at + 48..at + 56].copy_from_slice(type_creator);
                let (size, start) = match content {
                    Content::Data(Some(d)) => {
                        let size = ctx.tree.data[*d].size;
                        let start = if size == 0 {
                            0
                        } else {
                            ctx.data_lba[*d]
                                .checked_sub(self.part_start)
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "data of {} lies before the HFS+ partition",
                                        ctx.tree.path_of(r.node)
                                    ))
                                })?
                        };
                        (size, start)
                    }
                    Content::Data(None) | Content::Special(_) => (0, 0),
                    Content::Symlink(i) => {
                        let size = self.symlinks[*i].len() as u64;
                        let start = if size == 0 {
                            0
                        } else {
                            self.symlink_start() + self.symlink_offsets[*i]
                        };
                        (size, start)
                    }
                };
                if let Content::Special(rdev) = content {
                    put32(n, at + 44, *rdev as u32);
                }
                let blocks = u32::try_from(size.div_ceil(u64::from(BLOCK_SIZE)))
                    .map_err(|_| invalid(format!("{} is too large", ctx.tree.path_of(r.node))))?;
                fork(n, at + 88, size, BLOCK_SIZE, start, blocks);
                Ok(at + FILE_RECORD)
            }
        }
    }

    /// Dates and BSD permissions shared by folder and file records.
    fn common(&self, n: &mut [u8], at: usize, node: NodeId, is_dir: bool, ctx: &RenderCtx<'_>) {
        let meta = &ctx.tree.nodes[node].meta;
        put32(n, at + 12, mac_time(meta.ctime));
        put32(n, at + 16, mac_time(meta.mtime));
        put32(n, at + 20, mac_time(meta.mtime));
        put32(n, at + 24, mac_time(meta.atime));
        let (mode, uid, gid) = ctx.attrs.rr_attrs(node, is_dir);
        put32(n, at + 32, uid);
        put32(n, at + 36, gid);
        put16(n, at + 42, mode as u16);
    }
}

/// A catalog key: length, parent id, name length and units; returns the offset after it.
fn key(n: &mut [u8], at: usize, parent: u32, name: &[u16]) -> usize {
    put16(n, at, (6 + 2 * name.len()) as u16);
    put32(n, at + 2, parent);
    put16(n, at + 6, name.len() as u16);
    let mut p = at + 8;
    for &u in name {
        put16(n, p, u);
        p += 2;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_decomposed_and_colons_become_slashes() {
        assert_eq!(
            hfs_name("é:x"),
            vec![0x0065, 0x0301, u16::from(b'/'), u16::from(b'x')]
        );
        // Hangul syllables decompose into jamo.
        assert_eq!(hfs_name("\u{AC00}"), vec![0x1100, 0x1161]);
        // General punctuation stays composed.
        assert_eq!(hfs_name("\u{2126}"), vec![0x2126]);
    }

    #[test]
    fn combining_marks_are_put_in_canonical_order() {
        // a + dot below (220) after acute (230) is reordered: dot below first.
        assert_eq!(hfs_name("a\u{301}\u{323}"), vec![0x61, 0x323, 0x301]);
    }

    #[test]
    fn long_names_are_cut_at_255_units() {
        assert_eq!(hfs_name(&"é".repeat(200)).len(), 255);
        assert_eq!(hfs_name(&"x".repeat(300)).len(), 255);
    }

    #[test]
    fn case_folding_follows_apples_table() {
        assert_eq!(fold(&hfs_name("README")), fold(&hfs_name("readme")));
        assert_eq!(fold_unit(0x00C6), Some(0x00E6));
        assert_eq!(fold_unit(0x0141), Some(0x0142), "stride-2 pairs");
        assert_eq!(fold_unit(0x0140), Some(0x0140));
        assert_eq!(
            fold_unit(0x10A0),
            Some(0x10D0),
            "Georgian as Apple folds it"
        );
        assert_eq!(fold_unit(0x200D), None, "ignorable");
        assert_eq!(fold_unit(0), Some(0xFFFF));
        // Precomposed letters are decomposed before folding, so É and é compare equal.
        assert_eq!(fold(&hfs_name("É")), fold(&hfs_name("é")));
    }

    #[test]
    fn mac_time_counts_from_1904_and_clamps() {
        assert_eq!(mac_time(0), 2_082_844_800);
        assert_eq!(mac_time(-3_000_000_000), 0);
        assert_eq!(mac_time(i64::MAX), u32::MAX);
    }

    fn tree_with(names: &[&str]) -> Tree {
        let mut spec = crate::spec::IsoSpec::default();
        for (i, name) in names.iter().enumerate() {
            spec.mem_files.push(crate::spec::MemFile {
                iso_path: format!("/dir/{name}"),
                data: vec![b'x'; i + 1],
                mode: 0o644,
                mtime: Some(1_700_000_000),
            });
        }
        super::super::tree::build(&spec, 1_700_000_000).unwrap()
    }

    fn plan_for(tree: &Tree) -> HfsPlan {
        prepare(Inputs {
            tree,
            spec: &HfsPlusSpec::default(),
            volume_name: "VOL",
            hidden_data: Vec::new(),
            serial: [0; 8],
        })
        .unwrap()
    }

    #[test]
    fn catalog_keys_sort_by_parent_then_folded_name_threads_first() {
        let tree = tree_with(&["b", "A", "c"]);
        let plan = plan_for(&tree);
        let keys: Vec<(u32, String)> = plan
            .records
            .iter()
            .map(|r| (r.key_parent, String::from_utf16_lossy(&r.key_name)))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| {
            (a.0, fold(&a.1.encode_utf16().collect::<Vec<_>>()))
                .cmp(&(b.0, fold(&b.1.encode_utf16().collect::<Vec<_>>())))
        });
        assert_eq!(keys, sorted);
        assert_eq!(keys[0], (ROOT_PARENT_CNID, "VOL".into()));
        assert_eq!(keys[1], (ROOT_CNID, String::new()), "root thread");
        let dir: Vec<&str> = keys
            .iter()
            .filter(|k| k.0 == FIRST_USER_CNID)
            .map(|k| k.1.as_str())
            .collect();
        assert_eq!(dir, ["", "A", "b", "c"]);
    }

    #[test]
    fn names_folding_alike_are_mangled_like_libisofs() {
        let tree = tree_with(&["README", "readme"]);
        let plan = plan_for(&tree);
        let mut names: Vec<String> = plan
            .records
            .iter()
            .filter(|r| r.key_parent == FIRST_USER_CNID && !r.key_name.is_empty())
            .map(|r| String::from_utf16_lossy(&r.key_name))
            .collect();
        names.sort();
        assert_eq!(names, ["README", "readme_0"]);
        let thread = plan.records.iter().find(|r| {
            matches!(r.kind, RecordKind::Thread { .. })
                && String::from_utf16_lossy(&r.name) == "readme_0"
        });
        assert!(thread.is_some(), "the thread carries the new name");
    }

    #[test]
    fn btree_nodes_hold_descriptor_records_and_offsets() {
        let names: Vec<String> = (0..400)
            .map(|i| format!("file-{i:04}-with-a-long-name"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let tree = tree_with(&refs);
        let mut plan = plan_for(&tree);
        assert!(plan.levels.len() >= 2, "400 files need an index level");
        plan.part_start = 100;
        let data_lba: Vec<u32> = (0..tree.data.len() as u32).map(|i| 200 + i).collect();
        plan.place_tail(200 + tree.data.len() as u32).unwrap();
        let spec = crate::spec::IsoSpec::default();
        let serial = vec![0u32; tree.nodes.len()];
        let attrs = MeasureCtx::new(&tree, None, &spec, &serial);
        let ctx = RenderCtx {
            tree: &tree,
            attrs: &attrs,
            data_lba: &data_lba,
            now: 1_700_000_000,
        };
        let cat = plan.catalog(&ctx).unwrap();
        assert_eq!(cat.len(), plan.catalog_nodes * CATALOG_NODE);
        let header = &cat[..CATALOG_NODE];
        assert_eq!(header[8], 1, "header node kind");
        assert_eq!(
            u16::from_be_bytes([header[14], header[15]]) as usize,
            plan.levels.len()
        );
        assert_eq!(
            u32::from_be_bytes(header[16..20].try_into().unwrap()),
            1,
            "root node"
        );
        assert_eq!(
            u32::from_be_bytes(header[20..24].try_into().unwrap()) as usize,
            plan.records.len()
        );
        let mut leaf_records = 0usize;
        let mut last_key: Option<(u32, Vec<u16>)> = None;
        for node in cat.chunks(CATALOG_NODE).skip(1) {
            let count = u16::from_be_bytes([node[10], node[11]]) as usize;
            let offset = |i: usize| {
                u16::from_be_bytes([
                    node[CATALOG_NODE - 2 * (i + 1)],
                    node[CATALOG_NODE - 2 * i - 1],
                ]) as usize
            };
            assert_eq!(offset(0), NODE_DESCRIPTOR);
            assert!(
                offset(count) <= CATALOG_NODE - 2 * (count + 1),
                "records overlap offsets"
            );
            if node[8] == 0xFF {
                for i in 0..count {
                    let at = offset(i);
                    let parent = u32::from_be_bytes(node[at + 2..at + 6].try_into().unwrap());
                    let len = u16::from_be_bytes([node[at + 6], node[at + 7]]) as usize;
                    let name: Vec<u16> = (0..len)
                        .map(|k| u16::from_be_bytes([node[at + 8 + 2 * k], node[at + 9 + 2 * k]]))
                        .collect();
                    let k = (parent, fold(&name));
                    if let Some(prev) = &last_key {
                        assert!(*prev < k, "leaf keys ascend across nodes");
                    }
                    last_key = Some(k);
                }
                leaf_records += count;
            }
        }
        assert_eq!(leaf_records, plan.records.len());
    }

    #[test]
    fn every_item_has_a_thread_and_valences_and_counts_agree() {
        let tree = tree_with(&["a", "b", "c"]);
        let plan = plan_for(&tree);
        let items: Vec<&Record> = plan
            .records
            .iter()
            .filter(|r| !matches!(r.kind, RecordKind::Thread { .. }))
            .collect();
        for item in &items {
            let thread = plan
                .records
                .iter()
                .find(|r| r.key_parent == item.cnid && matches!(r.kind, RecordKind::Thread { .. }))
                .expect("a thread per item");
            assert!(thread.key_name.is_empty());
            assert_eq!(thread.name, item.key_name, "thread carries the name");
            if let RecordKind::Thread { parent, folder } = thread.kind {
                assert_eq!(parent, item.key_parent);
                assert_eq!(folder, matches!(item.kind, RecordKind::Folder { .. }));
            }
            if let RecordKind::Folder { valence } = item.kind {
                let children = items.iter().filter(|c| c.key_parent == item.cnid).count();
                assert_eq!(valence as usize, children, "valence of {}", item.cnid);
            }
        }
        let files = items
            .iter()
            .filter(|r| matches!(r.kind, RecordKind::File { .. }))
            .count();
        let folders = items.len() - files - 1; // the root is not counted
        assert_eq!(
            (plan.file_count as usize, plan.folder_count as usize),
            (files, folders)
        );
        let max_cnid = items.iter().map(|r| r.cnid).max().unwrap();
        assert_eq!(plan.next_cnid, max_cnid + 1);
    }

    #[test]
    fn volume_header_fields_and_bitmap_cover_the_volume() {
        let tree = tree_with(&["a"]);
        let mut plan = plan_for(&tree);
        plan.part_start = 50;
        let len = plan.place_tail(50 + 20_000).unwrap();
        assert_eq!(len, plan.alloc_blocks + 1);
        assert!(u64::from(plan.alloc_blocks) * 2048 * 8 >= u64::from(plan.total_blocks));
        let v = plan.volume_header(1_700_000_000);
        assert_eq!(&v[0..2], b"H+");
        assert_eq!(u16::from_be_bytes([v[2], v[3]]), 4);
        assert_eq!(u32::from_be_bytes(v[40..44].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_be_bytes(v[44..48].try_into().unwrap()),
            plan.total_blocks
        );
        assert_eq!(
            u32::from_be_bytes(v[32..36].try_into().unwrap()),
            1,
            "files"
        );
        assert_eq!(
            u32::from_be_bytes(v[36..40].try_into().unwrap()),
            1,
            "folders"
        );
        let tail = plan.render_tail(1_700_000_000);
        let bits: u32 = tail[..plan.alloc_blocks as usize * 2048]
            .iter()
            .map(|b| b.count_ones())
            .sum();
        assert_eq!(bits, plan.total_blocks, "every block is in use");
        assert_eq!(
            &tail[tail.len() - 1024..tail.len() - 1022],
            b"H+",
            "alternate header"
        );
    }
}
