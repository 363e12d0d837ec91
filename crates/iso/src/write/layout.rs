//! Layout stage: the ISO 9660 and Joliet directory hierarchies (with Rock Ridge deep-folder
//! relocation), file data order, and the address of every sector.
//!
//! Sector map (2048-byte LBAs):
//! 0..16 system area | 16.. volume descriptors | (partition offset copy of the descriptors)
//! | path tables | boot catalog | directories (each followed by its Rock Ridge continuation
//! area) | Joliet directories | file data
//! | padding | appended partitions | backup GPT.

use super::eltorito::BootPlan;
use super::hierarchy::{Dir, Entry, EntryKind, Hierarchy, MAX_EXTENT_BYTES};
use super::hybrid::HybridPlan;
use super::names::{self, IsoRules};
use super::tree::{self, DataId, NodeId, NodeKind, Tree, ROOT};
use super::{WriteError, SECTOR_SIZE};
use crate::spec::{IsoSpec, RockRidgeMode};
use std::collections::HashMap;
use vmedia_io::Progress;

/// ECMA-119 6.8.2.1: at most 8 levels of folders, the root counting as one.
const MAX_ISO_DEPTH: usize = 8;
/// ISO 9660 addresses are 32-bit sector numbers.
const MAX_SECTORS: u64 = u32::MAX as u64;
/// Path tables are addressed by 16-bit parent numbers.
const MAX_DIRECTORIES: usize = 65_535;

/// Addresses of one volume descriptor set and its tree (two with a partition offset).
#[derive(Debug, Clone, Default)]
pub(crate) struct MetaSet {
    /// Subtracted from every address written in this set.
    pub base: u32,
    pub vd_lba: u32,
    pub path_table_sectors: u32,
    pub iso_path_l: u32,
    pub iso_path_m: u32,
    pub joliet_path_l: u32,
    pub joliet_path_m: u32,
    pub iso_dir_lba: Vec<u32>,
    pub iso_dir_sectors: Vec<u32>,
    pub iso_ce_lba: Vec<u32>,
    pub joliet_dir_lba: Vec<u32>,
    pub joliet_dir_sectors: Vec<u32>,
    pub joliet_path_table_sectors: u32,
    pub iso_path_table_bytes: u32,
    pub joliet_path_table_bytes: u32,
}

/// A fully laid out image: every address and the final size are known.
#[derive(Debug)]
pub struct Plan {
    pub(crate) spec: IsoSpec,
    pub(crate) now: i64,
    pub(crate) tree: Tree,
    pub(crate) iso: Hierarchy,
    pub(crate) joliet: Option<Hierarchy>,
    pub(crate) rr: Option<RockRidgeMode>,
    /// Serial numbers for PX, by node.
    pub(crate) serial: Vec<u32>,
    /// Data items in write order with their first LBA.
    pub(crate) data_order: Vec<DataId>,
    pub(crate) data_lba: Vec<u32>,
    pub(crate) sets: Vec<MetaSet>,
    pub(crate) catalog_lba: Option<u32>,
    pub(crate) boot: Option<BootPlan>,
    pub(crate) hybrid: HybridPlan,
    /// The HFS+ hybrid volume, when `-hfsplus` asked for one.
    pub(crate) hfsplus: Option<super::hfsplus::HfsPlan>,
    /// The UDF bridge (`--udf`) and the sector of its recognition sequence.
    pub(crate) udf: Option<(crate::udf::write::UdfPlan, u32)>,
    /// First sector of file data.
    pub(crate) data_start: u32,
    /// Sectors of the ISO 9660 volume (descriptors to end of padding).
    pub(crate) volume_sectors: u32,
    /// Total image bytes (volume, 1 MiB alignment, appended partitions, backup GPT).
    pub(crate) image_bytes: u64,
}

impl Plan {
    /// Image size in 2048-byte sectors (rounded up).
    pub fn sectors(&self) -> u64 {
        self.image_bytes.div_ceil(SECTOR_SIZE)
    }

    /// Image size in bytes.
    pub fn bytes(&self) -> u64 {
        self.image_bytes
    }

    /// Size of the ISO 9660 volume in sectors, as the primary volume descriptor states it.
    pub fn volume_sectors(&self) -> u32 {
        self.volume_sectors
    }
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR_SIZE)
}

fn too_large(reason: String) -> WriteError {
    WriteError::TooLarge { reason }
}

fn now_nanos() -> u128 {
    u128::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0)
}

pub(crate) fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn validate(spec: &IsoSpec) -> Result<(), WriteError> {
    if !(1..=4).contains(&spec.naming.iso_level) {
        return Err(WriteError::InvalidSpec {
            field: "naming.iso_level",
            reason: format!("{} is not 1, 2, 3 or 4", spec.naming.iso_level),
        });
    }
    let v = &spec.volume;
    let checks: [(&'static str, &Option<String>, usize); 9] = [
        ("volume.volume_id", &v.volume_id, 32),
        ("volume.volume_set_id", &v.volume_set_id, 128),
        ("volume.publisher", &v.publisher, 128),
        ("volume.preparer", &v.preparer, 128),
        ("volume.application", &v.application, 128),
        ("volume.system_id", &v.system_id, 32),
        ("volume.copyright_file", &v.copyright_file, 37),
        ("volume.abstract_file", &v.abstract_file, 37),
        ("volume.biblio_file", &v.biblio_file, 37),
    ];
    for (field, value, max) in checks {
        if let Some(s) = value {
            if s.len() > max {
                return Err(WriteError::InvalidSpec {
                    field,
                    reason: format!("'{s}' is {} bytes, at most {max} allowed", s.len()),
                });
            }
        }
    }
    if let Some(d) = &v.modification_date {
        if d.len() != 16 || !d.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WriteError::InvalidSpec {
                field: "volume.modification_date",
                reason: format!("'{d}' is not 16 digits YYYYMMDDhhmmsscc"),
            });
        }
    }
    Ok(())
}

/// Clamps a host time to the reproducible date.
fn clamp(t: i64, date: Option<i64>) -> i64 {
    match date {
        Some(d) if t > d => d,
        _ => t,
    }
}

pub(crate) fn plan(spec: &IsoSpec, progress: &dyn Progress) -> Result<Plan, WriteError> {
    validate(spec)?;
    progress.phase("scanning");
    let now = spec.date.unwrap_or_else(now_unix);
    let mut tree = tree::build(spec, now)?;
    if let Some(d) = spec.date {
        for n in &mut tree.nodes {
            n.meta.mtime = clamp(n.meta.mtime, Some(d));
            n.meta.atime = clamp(n.meta.atime, Some(d));
            n.meta.ctime = clamp(n.meta.ctime, Some(d));
        }
    }
    let mut boot = super::eltorito::prepare(spec, &mut tree, now)?;
    let rules = IsoRules::from(&spec.naming);
    let rr = spec.naming.rock_ridge;
    for d in &tree.data {
        if d.size > MAX_EXTENT_BYTES + SECTOR_SIZE - 1 && spec.naming.iso_level < 3 {
            let path = match &d.source {
                tree::DataSource::Host(p) | tree::DataSource::Range { path: p, .. } => p.clone(),
                tree::DataSource::Mem(_) => "(in-memory file)".into(),
            };
            return Err(WriteError::FileTooLarge { path, size: d.size });
        }
    }
    if rr.is_none() {
        // Without Rock Ridge symlinks and special files have no representation; mkisofs
        // leaves them out (with -f, links were already replaced by their targets).
        drop_specials(&mut tree);
    }
    let iso = build_hierarchy(
        &tree,
        spec,
        &rules,
        false,
        rr.is_some() && !spec.naming.no_deep_relocation,
    )?;
    let joliet = if spec.naming.joliet {
        Some(build_hierarchy(&tree, spec, &rules, true, false)?)
    } else {
        None
    };
    let serial = serials(&tree);

    // Data order: boot images first, then sort weight (higher first), then tree order.
    let mut weight: Vec<i64> = vec![0; tree.data.len()];
    let mut first_seen: Vec<usize> = vec![usize::MAX; tree.data.len()];
    let mut order_index = 0usize;
    let mut used = vec![false; tree.data.len()];
    visit_files(&tree, ROOT, &mut |node, data| {
        if !used[data] {
            used[data] = true;
            first_seen[data] = order_index;
            order_index += 1;
        }
        if !spec.sort.is_empty() {
            if let Some(w) = sort_weight(&tree, node, &spec.sort) {
                weight[data] = weight[data].max(i64::from(w));
            }
        }
    });
    if let Some(b) = &boot {
        for d in b.data_items() {
            if !used[d] {
                used[d] = true;
                first_seen[d] = order_index;
                order_index += 1;
            }
            if spec.sort.is_empty() || weight[d] == 0 {
                weight[d] = i64::from(i32::MAX) + 1;
            }
        }
    }
    let mut data_order: Vec<DataId> = (0..tree.data.len()).filter(|&d| used[d]).collect();
    data_order.sort_by_key(|&d| (-weight[d], first_seen[d]));

    // HFS+: EFI images exposed as their own GPT partition go before the HFS+ volume (GPT
    // entries must not overlap) and are left out of it, as xorriso does.
    let mut hfsplus = match &spec.hfsplus {
        Some(h) => {
            let exposed: Vec<DataId> = if spec.hybrid.gpt_basdat
                || matches!(
                    spec.hybrid.efi_boot_part,
                    Some(crate::spec::EfiBootPart::BootImage)
                ) {
                boot.as_ref()
                    .map(|b| {
                        b.items
                            .iter()
                            .filter(|i| i.entry.platform == crate::spec::Platform::Efi)
                            .filter_map(|i| i.data)
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            data_order.sort_by_key(|d| !exposed.contains(d));
            let serial = h.serial_number.unwrap_or_else(|| {
                let seed = match spec.date {
                    Some(d) => d.to_le_bytes().to_vec(),
                    None => now_nanos().to_le_bytes().to_vec(),
                };
                let g = super::hybrid::derived_guid(&seed, "hfsplus-serial");
                let mut s = [0u8; 8];
                s.copy_from_slice(&g[..8]);
                s
            });
            Some(super::hfsplus::prepare(super::hfsplus::Inputs {
                tree: &tree,
                spec: h,
                volume_name: spec.volume.volume_id.as_deref().unwrap_or("CDROM"),
                hidden_data: exposed,
                serial,
            })?)
        }
        None => None,
    };

    // Metadata sizes do not depend on addresses: measure with placeholder addresses.
    let has_boot = boot.is_some();
    // Level 4 adds the ISO 9660:1999 enhanced volume descriptor (see emit::metadata).
    let has_evd = spec.naming.iso_level >= 4;
    let vd_count = 1 + u32::from(has_boot) + u32::from(has_evd) + u32::from(joliet.is_some()) + 1;
    let offset = spec.hybrid.partition_offset;
    if offset != 0 && offset < 16 {
        return Err(WriteError::InvalidSpec {
            field: "hybrid.partition_offset",
            reason: format!(
                "{offset} blocks leave no room for the system area; use 0 or at least 16"
            ),
        });
    }
    let mut cursor: u64 = 16 + u64::from(vd_count);
    let mut udf = match &spec.udf {
        Some(u) => {
            if offset != 0 {
                return Err(WriteError::InvalidSpec {
                    field: "hybrid.partition_offset",
                    reason: "a UDF bridge needs the descriptors at sector 16; use no partition offset with --udf".into(),
                });
            }
            let label = spec.volume.volume_id.as_deref().unwrap_or("CDROM");
            let plan = crate::udf::write::UdfPlan::prepare(&tree, u.revision, label)?;
            // The recognition sequence follows the ISO descriptors; the UDF volume
            // descriptors, the anchor at 256 and the partition's metadata come next.
            let vrs = cursor as u32;
            cursor = u64::from(crate::udf::write::PARTITION_START) + u64::from(plan.meta_blocks());
            Some((plan, vrs))
        }
        None => None,
    };
    let mut sets = vec![MetaSet {
        base: 0,
        vd_lba: 16,
        ..MetaSet::default()
    }];
    if offset != 0 {
        let vd2 = u64::from(offset) + 16;
        cursor = cursor.max(vd2 + u64::from(vd_count));
        sets.push(MetaSet {
            base: offset,
            vd_lba: vd2 as u32,
            ..MetaSet::default()
        });
    }
    let catalog_lba = if has_boot {
        let c = cursor as u32;
        cursor += 1;
        Some(c)
    } else {
        None
    };
    let iso_pt_bytes = path_table_bytes(&iso);
    let jol_pt_bytes = joliet.as_ref().map(path_table_bytes).unwrap_or(0);
    let measure = super::records::MeasureCtx::new(&tree, rr, spec, &serial);
    let iso_sizes = measure.dir_sizes(&iso)?;
    let jol_sizes = match &joliet {
        Some(j) => measure.dir_sizes(j)?,
        None => Vec::new(),
    };
    for set in sets.iter_mut() {
        set.iso_path_table_bytes = iso_pt_bytes;
        set.joliet_path_table_bytes = jol_pt_bytes;
        set.path_table_sectors = sectors_for(u64::from(iso_pt_bytes)) as u32;
        set.iso_path_l = cursor as u32;
        cursor += u64::from(set.path_table_sectors);
        set.iso_path_m = cursor as u32;
        cursor += u64::from(set.path_table_sectors);
        if joliet.is_some() {
            set.joliet_path_table_sectors = sectors_for(u64::from(jol_pt_bytes)) as u32;
            set.joliet_path_l = cursor as u32;
            cursor += u64::from(set.joliet_path_table_sectors);
            set.joliet_path_m = cursor as u32;
            cursor += u64::from(set.joliet_path_table_sectors);
        }
        // Each folder's continuation area directly follows the folder: streaming readers
        // (libarchive) read CE data only when they reach it right after the directory.
        for (sectors, ce_sectors) in &iso_sizes {
            set.iso_dir_lba.push(cursor as u32);
            set.iso_dir_sectors.push(*sectors);
            cursor += u64::from(*sectors);
            set.iso_ce_lba.push(cursor as u32);
            cursor += u64::from(*ce_sectors);
        }
        for (sectors, _) in &jol_sizes {
            set.joliet_dir_lba.push(cursor as u32);
            set.joliet_dir_sectors.push(*sectors);
            cursor += u64::from(*sectors);
        }
        if cursor > MAX_SECTORS {
            return Err(too_large("directories exceed 2^32 sectors".into()));
        }
    }
    let data_start = cursor;
    let mut data_lba = vec![0u32; tree.data.len()];
    for &d in &data_order {
        let size = tree.data[d].size;
        if size == 0 {
            continue;
        }
        if hfsplus
            .as_ref()
            .is_some_and(|h| h.part_start == 0 && !h.hidden_data.contains(&d))
        {
            place_hfs_head(&mut hfsplus, &mut cursor);
        }
        data_lba[d] = cursor as u32;
        cursor += sectors_for(size);
        if cursor > MAX_SECTORS {
            return Err(too_large(format!(
                "file data ends beyond sector {MAX_SECTORS}"
            )));
        }
    }
    place_hfs_head(&mut hfsplus, &mut cursor);
    let mut hfs_region = None;
    if let Some(h) = hfsplus.as_mut() {
        if cursor > MAX_SECTORS {
            return Err(too_large("file data ends beyond 2^32 sectors".into()));
        }
        cursor += u64::from(h.place_tail(cursor as u32)?);
        hfs_region = Some(super::hybrid::HfsRegion {
            start: u64::from(h.part_start),
            sectors: u64::from(h.total_blocks),
            apm_block: spec.hfsplus.as_ref().and_then(|s| s.apm_block_size),
        });
        if cursor > MAX_SECTORS {
            return Err(too_large("the HFS+ volume ends beyond 2^32 sectors".into()));
        }
    }
    if let Some((u, _)) = udf.as_mut() {
        let end = u32::try_from(cursor)
            .map_err(|_| too_large("the UDF volume ends beyond 2^32 sectors".into()))?;
        cursor += u64::from(u.close(end));
    }
    if let Some(b) = boot.as_mut() {
        b.resolve(&tree, &data_lba)?;
    }
    let iso_end = cursor + u64::from(spec.pad_sectors);
    if let Some((u, _)) = udf.as_mut() {
        // Readers look for the second anchor in the volume's last sector: with padding, it
        // goes there (the padding is the volume's end).
        if spec.pad_sectors > 0 {
            u.end_anchor_lba = (iso_end - 1) as u32;
        }
    }
    let hybrid = super::hybrid::plan(spec, iso_end, boot.as_ref(), hfs_region)?;
    let volume_sectors = u32::try_from(hybrid.volume_sectors)
        .map_err(|_| too_large("volume exceeds 2^32 sectors".into()))?;
    if let Some(b) = boot.as_mut() {
        b.resolve_appended(|n| {
            hybrid
                .appended
                .iter()
                .find(|p| p.number == n)
                .map(|p| (p.start_512, p.sectors_512))
        })?;
    }
    let image_bytes = hybrid.image_bytes;
    progress.phase("planned");
    Ok(Plan {
        spec: spec_without_payloads(spec),
        now,
        tree,
        iso,
        joliet,
        rr,
        serial,
        data_order,
        data_lba,
        sets,
        catalog_lba,
        boot,
        hybrid,
        hfsplus,
        udf,
        data_start: data_start as u32,
        volume_sectors,
        image_bytes,
    })
}

/// Starts the HFS+ volume at `cursor` (once): its head comes before the first data it holds.
fn place_hfs_head(hfsplus: &mut Option<super::hfsplus::HfsPlan>, cursor: &mut u64) {
    if let Some(h) = hfsplus.as_mut() {
        if h.part_start == 0 {
            h.part_start = *cursor as u32;
            *cursor += u64::from(h.head_sectors());
        }
    }
}

/// The spec minus in-memory payloads (the tree holds those already).
fn spec_without_payloads(spec: &IsoSpec) -> IsoSpec {
    IsoSpec {
        volume: spec.volume.clone(),
        naming: spec.naming.clone(),
        sources: Vec::new(),
        mem_files: Vec::new(),
        range_files: Vec::new(),
        excludes: Vec::new(),
        hide: Vec::new(),
        follow_symlinks: spec.follow_symlinks,
        ownership: spec.ownership.clone(),
        sort: Vec::new(),
        boot: spec.boot.clone(),
        hybrid: spec.hybrid.clone(),
        date: spec.date,
        pad_sectors: spec.pad_sectors,
        integrity: spec.integrity.clone(),
        hfsplus: spec.hfsplus.clone(),
        udf: spec.udf.clone(),
        durability: spec.durability,
    }
}

fn drop_specials(tree: &mut Tree) {
    let special: Vec<bool> = tree
        .nodes
        .iter()
        .map(|n| {
            matches!(
                n.kind,
                NodeKind::Symlink(_) | NodeKind::Device(_) | NodeKind::Fifo | NodeKind::Socket
            )
        })
        .collect();
    for n in &mut tree.nodes {
        if let NodeKind::Dir(children) = &mut n.kind {
            children.retain(|_, id| !special[*id]);
        }
    }
}

fn visit_files(tree: &Tree, id: NodeId, f: &mut dyn FnMut(NodeId, DataId)) {
    for child in tree.children(id) {
        match tree.nodes[child].kind {
            NodeKind::File(d) => f(child, d),
            NodeKind::Dir(_) => visit_files(tree, child, f),
            _ => {}
        }
    }
}

fn sort_weight(tree: &Tree, node: NodeId, rules: &[crate::spec::SortRule]) -> Option<i32> {
    let iso_path = tree.path_of(node);
    let mut id = node;
    loop {
        let host = tree.nodes[id]
            .host_path
            .as_ref()
            .map(|h| h.to_string_lossy().into_owned());
        let path = if id == node {
            iso_path.clone()
        } else {
            tree.path_of(id)
        };
        for r in rules {
            let pattern = r.pattern.trim_end_matches('/');
            let hit = tree::glob_match(pattern, &path)
                || tree::glob_match(&format!("/{}", pattern.trim_start_matches('/')), &path)
                || host
                    .as_deref()
                    .is_some_and(|h| tree::glob_match(pattern, h.trim_end_matches('/')));
            if hit {
                return Some(r.weight);
            }
        }
        if id == ROOT {
            return None;
        }
        id = tree.nodes[id].parent;
    }
}

/// PX serial numbers: one per node in sorted tree order; hard links share their data's.
fn serials(tree: &Tree) -> Vec<u32> {
    let mut serial = vec![0u32; tree.nodes.len()];
    let mut by_data: HashMap<DataId, u32> = HashMap::new();
    let mut next = 1u32;
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        let s = match tree.nodes[id].kind {
            NodeKind::File(d) => *by_data.entry(d).or_insert_with(|| {
                let s = next;
                next += 1;
                s
            }),
            _ => {
                let s = next;
                next += 1;
                s
            }
        };
        serial[id] = s;
        let children: Vec<NodeId> = tree.children(id).collect();
        stack.extend(children.into_iter().rev());
    }
    serial
}

/// Builds one hierarchy. Folders are first collected depth-first (relocating deep ones), then
/// renumbered breadth-first so the order is the path-table order.
fn build_hierarchy(
    tree: &Tree,
    spec: &IsoSpec,
    rules: &IsoRules,
    joliet: bool,
    relocate: bool,
) -> Result<Hierarchy, WriteError> {
    let joliet_max = if spec.naming.joliet_long {
        names::JOLIET_LONG_MAX
    } else {
        names::JOLIET_MAX
    };
    // Joliet names carry no ";1" (genisoimage and xorriso both omit it; readers show it).
    let versions = false;
    let mut dirs: Vec<Dir> = vec![Dir {
        node: ROOT,
        parent: 0,
        ident: vec![0],
        entries: Vec::new(),
        original_parent: None,
        subdirs: 0,
    }];
    // (dir index, iso depth) work list, depth-first.
    let mut work: Vec<(usize, usize)> = vec![(0, 1)];
    let mut rr_moved: Option<usize> = None;
    let mut moved: Vec<(usize, NodeId)> = Vec::new(); // (dir index, node) relocated into rr_moved
    while let Some((di, depth)) = work.pop() {
        let node = dirs[di].node;
        let visible: Vec<NodeId> = tree
            .children(node)
            // Joliet has no symbolic links: xorriso leaves them out of that tree rather than
            // writing the empty files genisoimage does.
            .filter(|&c| {
                if joliet {
                    !tree.nodes[c].hide_joliet
                        && !matches!(tree.nodes[c].kind, NodeKind::Symlink(_))
                } else {
                    !tree.nodes[c].hide_iso
                }
            })
            .collect();
        let pairs: Vec<(&str, bool)> = visible
            .iter()
            .map(|&c| (tree.nodes[c].name.as_str(), tree.is_dir(c)))
            .collect();
        let idents: Vec<Vec<u8>> = if joliet {
            names::joliet_names_for_dir(&pairs, joliet_max, versions)
                .iter()
                .map(|u| names::ucs2_be(u))
                .collect()
        } else {
            names::iso_names_for_dir(&pairs, rules)
                .into_iter()
                .map(String::into_bytes)
                .collect()
        };
        let mut entries = Vec::with_capacity(visible.len());
        for (&child, ident) in visible.iter().zip(idents) {
            let rr_name = tree.nodes[child].name.clone();
            let kind = match &tree.nodes[child].kind {
                NodeKind::Dir(_) => {
                    let ci = dirs.len();
                    let child_depth = depth + 1;
                    if relocate && child_depth > MAX_ISO_DEPTH {
                        dirs.push(Dir {
                            node: child,
                            parent: usize::MAX,
                            ident: Vec::new(),
                            entries: Vec::new(),
                            original_parent: Some(di),
                            subdirs: 0,
                        });
                        moved.push((ci, child));
                        // Relocated folders sit at depth 2 inside rr_moved (root is 1).
                        work.push((ci, 3));
                        EntryKind::Placeholder(ci)
                    } else {
                        dirs.push(Dir {
                            node: child,
                            parent: di,
                            ident: ident.clone(),
                            entries: Vec::new(),
                            original_parent: None,
                            subdirs: 0,
                        });
                        work.push((ci, child_depth));
                        EntryKind::Dir(ci)
                    }
                }
                NodeKind::File(d) => EntryKind::File(*d),
                NodeKind::Catalog => EntryKind::Catalog,
                _ => EntryKind::Special,
            };
            entries.push(Entry {
                ident,
                node: child,
                kind,
                rr_name,
                relocated: false,
            });
        }
        dirs[di].entries = entries;
        if !moved.is_empty() && rr_moved.is_none() {
            let ri = dirs.len();
            dirs.push(Dir {
                node: ROOT,
                parent: 0,
                ident: Vec::new(),
                entries: Vec::new(),
                original_parent: None,
                subdirs: 0,
            });
            rr_moved = Some(ri);
        }
    }
    if let Some(ri) = rr_moved {
        let name = if spec.naming.hide_rr_moved {
            ".rr_moved"
        } else {
            "rr_moved"
        };
        // rr_moved's entries: the relocated folders, named uniquely among themselves.
        let pairs: Vec<(&str, bool)> = moved
            .iter()
            .map(|&(_, n)| (tree.nodes[n].name.as_str(), true))
            .collect();
        let idents = names::iso_names_for_dir(&pairs, rules);
        let mut entries = Vec::new();
        for ((ci, n), ident) in moved.iter().zip(idents) {
            dirs[*ci].parent = ri;
            dirs[*ci].ident = ident.clone().into_bytes();
            entries.push(Entry {
                ident: ident.into_bytes(),
                node: *n,
                kind: EntryKind::Dir(*ci),
                rr_name: tree.nodes[*n].name.clone(),
                relocated: true,
            });
        }
        dirs[ri].entries = entries;
        let root_pairs: Vec<(&str, bool)> = vec![(name, true)];
        let taken: Vec<Vec<u8>> = dirs[0].entries.iter().map(|e| e.ident.clone()).collect();
        let mut ident = names::iso_names_for_dir(&root_pairs, rules)
            .remove(0)
            .into_bytes();
        let mut n = 0;
        while taken.contains(&ident) {
            ident = format!("RR_MOV{n:02}").into_bytes();
            n += 1;
        }
        dirs[ri].ident = ident.clone();
        dirs[0].entries.push(Entry {
            ident,
            node: ROOT,
            kind: EntryKind::Dir(ri),
            rr_name: name.to_string(),
            relocated: false,
        });
    }
    // Sort each folder's entries, then renumber folders breadth-first.
    for d in &mut dirs {
        d.entries.sort_by(|a, b| {
            if joliet {
                a.ident.cmp(&b.ident)
            } else {
                names::iso_order(&a.ident, &b.ident)
            }
        });
    }
    let mut order = vec![0usize];
    let mut i = 0;
    while i < order.len() {
        let di = order[i];
        for e in &dirs[di].entries {
            if let EntryKind::Dir(c) = e.kind {
                order.push(c);
            }
        }
        i += 1;
    }
    if order.len() > MAX_DIRECTORIES {
        return Err(too_large(format!(
            "{} folders; path tables address at most {MAX_DIRECTORIES}",
            order.len()
        )));
    }
    let mut rank = vec![usize::MAX; dirs.len()];
    for (new, &old) in order.iter().enumerate() {
        rank[old] = new;
    }
    // Each folder appears once in `order`: move it, do not copy its entries.
    let mut out: Vec<Dir> = order
        .iter()
        .map(|&old| {
            let empty = Dir {
                node: ROOT,
                parent: 0,
                ident: Vec::new(),
                entries: Vec::new(),
                original_parent: None,
                subdirs: 0,
            };
            std::mem::replace(&mut dirs[old], empty)
        })
        .collect();
    for d in &mut out {
        d.parent = rank[d.parent];
        d.original_parent = d.original_parent.map(|p| rank[p]);
        for e in &mut d.entries {
            e.kind = match e.kind {
                EntryKind::Dir(c) => EntryKind::Dir(rank[c]),
                EntryKind::Placeholder(c) => EntryKind::Placeholder(rank[c]),
                k => k,
            };
        }
        d.subdirs = d
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir(_)))
            .count() as u32;
    }
    Ok(Hierarchy { dirs: out, joliet })
}

/// Bytes of one path table (8 + identifier, padded to even, per folder).
fn path_table_bytes(h: &Hierarchy) -> u32 {
    h.dirs
        .iter()
        .map(|d| (8 + d.ident.len() + d.ident.len() % 2) as u32)
        .sum()
}

/// Serialises a path table, little-endian (L) or big-endian (M) addresses.
pub(crate) fn path_table(h: &Hierarchy, dir_lba: &[u32], base: u32, big_endian: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, d) in h.dirs.iter().enumerate() {
        out.push(d.ident.len() as u8);
        out.push(0);
        let lba = dir_lba[i] - base;
        let parent = (d.parent + 1) as u16;
        if big_endian {
            out.extend_from_slice(&lba.to_be_bytes());
            out.extend_from_slice(&parent.to_be_bytes());
        } else {
            out.extend_from_slice(&lba.to_le_bytes());
            out.extend_from_slice(&parent.to_le_bytes());
        }
        out.extend_from_slice(&d.ident);
        if d.ident.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}
