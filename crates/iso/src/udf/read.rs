//! Reading UDF: the volume recognition sequence, the anchor, the volume descriptor sequence,
//! the file set, file entries and file identifiers, all bounds-checked.
//!
//! The image is untrusted: every descriptor's tag is checked (identifier, checksum, CRC and,
//! where the format fixes it, its recorded location), every extent is checked against the
//! partition and the image, and every chain (descriptor pointers, allocation extents) has a
//! named limit, so a hostile image ends in a `ReadError`, never a loop or a panic.

use serde::Serialize;
use vmedia_io::bytes::Fields;
use vmedia_io::ReadAt;

use super::{cs0_decode, dstring_decode, file_type, tag_checksum, tag_id, timestamp_decode, BLOCK};
use crate::read::{ReadError, Source, Timestamp};

const BLOCK_BYTES: u64 = BLOCK as u64;
/// Descriptors of the volume recognition sequence examined after sector 16 (ISO
/// descriptors, boot records and BEA/NSR/TEA together are never this many).
pub const MAX_RECOGNITION_SECTORS: u32 = 64;
/// Sectors of one volume descriptor sequence read (UDF asks for 16; writers use 16 or 32).
pub const MAX_VDS_SECTORS: u32 = 256;
/// Volume descriptor pointers followed: a chain longer than this is a loop.
pub const MAX_VDS_POINTERS: usize = 8;
/// Allocation extent descriptors followed for one file: each holds about 250 extents.
pub const MAX_ALLOCATION_EXTENTS: usize = 64;
/// Extents of one file, as for ISO 9660 multi-extent files.
pub const MAX_EXTENTS: usize = crate::read::MAX_EXTENTS_PER_FILE;

/// The UDF volume as its descriptors describe it.
#[derive(Debug, Clone, Serialize)]
pub struct UdfVolume {
    /// The logical volume identifier (what `udfinfo` calls the label).
    pub label: String,
    /// The primary volume descriptor's volume identifier.
    pub volume_id: String,
    pub volume_set_id: String,
    /// 2 (NSR02, UDF 1.x) or 3 (NSR03, UDF 2.x).
    pub nsr: u8,
    /// The UDF revision of the domain identifier ("1.02", "2.01"), when recorded.
    pub revision: Option<String>,
    /// Sector of the anchor that was used.
    pub anchor_lba: u32,
    pub partition_start: u32,
    pub partition_blocks: u32,
    /// Files and folders, as the integrity descriptor counts them.
    pub files: Option<u32>,
    pub directories: Option<u32>,
    pub recorded: Option<Timestamp>,
    /// Absolute sector of the root folder's file entry.
    #[serde(skip)]
    pub(crate) root_lba: u32,
}

/// Where a file's bytes are: byte ranges of the image, in file order.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub lba: u32,
    pub file_type: u8,
    pub size: u64,
    pub ranges: Vec<(u64, u64)>,
    /// Whether the data is embedded in the file entry (not sector aligned).
    pub inline: bool,
    pub uid: u32,
    pub gid: u32,
    pub permissions: u32,
    pub links: u16,
    pub mtime: Option<Timestamp>,
    pub atime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    pub unique_id: u64,
}

/// One file identifier of a folder.
#[derive(Debug, Clone)]
pub(crate) struct Identifier {
    pub name: String,
    pub characteristics: u8,
    /// Absolute sector of the file entry.
    pub lba: u32,
    /// Byte offset of the identifier in the image (its folder's data when embedded).
    pub offset: u64,
}

/// The NSR version (2 or 3) when the volume recognition sequence after sector 16 announces
/// UDF (a BEA01 followed by NSR02 or NSR03).
pub fn detect(source: &dyn ReadAt) -> Option<u8> {
    let mut in_extended = false;
    for lba in 16..16 + MAX_RECOGNITION_SECTORS {
        let mut id = [0u8; 7];
        source
            .read_exact_at(&mut id, u64::from(lba) * BLOCK_BYTES)
            .ok()?;
        match &id[1..6] {
            b"BEA01" => in_extended = true,
            b"NSR02" if in_extended => return Some(2),
            b"NSR03" if in_extended => return Some(3),
            b"TEA01" => in_extended = false,
            b"CD001" | b"BOOT2" | b"CDW02" => {}
            _ => return None,
        }
    }
    None
}

fn corrupt(offset: u64, field: &'static str, problem: impl Into<String>) -> ReadError {
    ReadError::corrupt(offset, field, problem)
}

/// Checks the tag at the start of `buf` (read from `offset`): identifier `want` (any of
/// them), checksum, CRC over what `buf` holds, and the recorded location when given.
fn check_tag(
    buf: &[u8],
    offset: u64,
    want: &[u16],
    location: Option<u32>,
    what: &'static str,
) -> Result<u16, ReadError> {
    let f = Fields::new_checked(buf, 16)
        .ok_or_else(|| corrupt(offset, what, "shorter than a descriptor tag"))?;
    let ident = f.le16(0);
    if buf[4] != tag_checksum(buf) {
        return Err(corrupt(
            offset,
            what,
            format!(
                "tag checksum {:#04x} does not match {:#04x}",
                buf[4],
                tag_checksum(buf)
            ),
        ));
    }
    if !want.contains(&ident) {
        return Err(corrupt(
            offset,
            what,
            format!("tag identifier {ident}, expected {want:?}"),
        ));
    }
    let crc_len = usize::from(f.le16(10));
    let body = buf.get(16..16 + crc_len).ok_or_else(|| {
        corrupt(
            offset,
            what,
            format!("CRC length {crc_len} runs past the descriptor"),
        )
    })?;
    let crc = super::crc_itu_t(body);
    if crc != f.le16(8) {
        return Err(corrupt(
            offset,
            what,
            format!(
                "descriptor CRC {:#06x} does not match {crc:#06x}",
                f.le16(8)
            ),
        ));
    }
    if let Some(loc) = location {
        if f.le32(12) != loc {
            return Err(corrupt(
                offset,
                what,
                format!("tag location {} is not where it lies ({loc})", f.le32(12)),
            ));
        }
    }
    Ok(ident)
}

fn read_sector(src: &Source, lba: u32, what: &'static str) -> Result<Vec<u8>, ReadError> {
    src.read_range(u64::from(lba) * BLOCK_BYTES, BLOCK_BYTES, what)
}

/// What the volume descriptor sequence says.
#[derive(Default)]
struct Sequence {
    volume_id: String,
    volume_set_id: String,
    recorded: Option<Timestamp>,
    /// (partition number, start, length)
    partitions: Vec<(u16, u32, u32)>,
    lvd: Option<Lvd>,
}

struct Lvd {
    label: String,
    revision: Option<String>,
    partition_number: u16,
    fsd_block: u32,
    integrity: (u32, u32),
}

fn read_sequence(src: &Source, start: u32, length: u32) -> Result<Sequence, ReadError> {
    let mut seq = Sequence::default();
    let mut extent = (start, length);
    let mut pointers = 0usize;
    'extents: loop {
        let sectors = (extent.1 / BLOCK as u32).min(MAX_VDS_SECTORS);
        for i in 0..sectors {
            let lba = extent.0.checked_add(i).ok_or_else(|| {
                corrupt(
                    u64::from(extent.0) * BLOCK_BYTES,
                    "volume descriptor sequence",
                    "runs past sector 2^32",
                )
            })?;
            let offset = u64::from(lba) * BLOCK_BYTES;
            let buf = read_sector(src, lba, "volume descriptor")?;
            let ident = check_tag(
                &buf,
                offset,
                &[
                    tag_id::PRIMARY_VOLUME,
                    tag_id::POINTER,
                    tag_id::IMPLEMENTATION_USE,
                    tag_id::PARTITION,
                    tag_id::LOGICAL_VOLUME,
                    tag_id::UNALLOCATED_SPACE,
                    tag_id::TERMINATING,
                ],
                Some(lba),
                "volume descriptor",
            )?;
            let f = Fields::new_checked(&buf, 512)
                .ok_or_else(|| corrupt(offset, "volume descriptor", "short sector"))?;
            match ident {
                tag_id::PRIMARY_VOLUME => {
                    seq.volume_id = dstring_decode(&buf[24..56]);
                    seq.volume_set_id = dstring_decode(&buf[72..200]);
                    seq.recorded = timestamp_decode(&buf[376..388]);
                }
                tag_id::PARTITION if seq.partitions.len() < 16 => {
                    seq.partitions.push((f.le16(22), f.le32(188), f.le32(192)));
                }
                tag_id::LOGICAL_VOLUME => {
                    let block_size = f.le32(212);
                    if block_size != BLOCK as u32 {
                        return Err(ReadError::Unsupported {
                            offset,
                            feature: format!("UDF logical block size {block_size}"),
                        });
                    }
                    let maps = f.le32(268);
                    let (map_type, map_len) = (buf[440], buf[441]);
                    if maps < 1 || map_type != 1 || map_len != 6 {
                        return Err(ReadError::Unsupported {
                            offset,
                            feature: format!(
                                "UDF partition map of type {map_type} (only type 1 is read)"
                            ),
                        });
                    }
                    let domain = &buf[216..248];
                    let revision = (&domain[1..20] == b"*OSTA UDF Compliant").then(|| {
                        let r = u16::from_le_bytes([domain[24], domain[25]]);
                        format!("{}.{:02x}", r >> 8, r & 0xFF)
                    });
                    seq.lvd = Some(Lvd {
                        label: dstring_decode(&buf[84..212]),
                        revision,
                        partition_number: u16::from_le_bytes([buf[444], buf[445]]),
                        fsd_block: f.le32(252),
                        integrity: (f.le32(436), f.le32(432)),
                    });
                    if f.le16(256) != 0 {
                        return Err(ReadError::Unsupported {
                            offset,
                            feature: "a file set in another partition".into(),
                        });
                    }
                }
                tag_id::POINTER => {
                    pointers += 1;
                    if pointers > MAX_VDS_POINTERS {
                        return Err(ReadError::limit(
                            offset,
                            "MAX_VDS_POINTERS",
                            pointers as u64,
                            MAX_VDS_POINTERS as u64,
                        ));
                    }
                    extent = (f.le32(24), f.le32(20));
                    continue 'extents;
                }
                tag_id::TERMINATING => break 'extents,
                _ => {}
            }
        }
        break;
    }
    Ok(seq)
}

/// Opens the UDF volume of `src`.
pub(crate) fn open(src: &Source, nsr: u8) -> Result<UdfVolume, ReadError> {
    let last = (src.size / BLOCK_BYTES).saturating_sub(1);
    let mut candidates = vec![u64::from(super::ANCHOR_LBA), last];
    if last > 256 {
        candidates.push(last - 256);
    }
    let mut anchor = None;
    let mut first_error = None;
    for lba in candidates {
        let Ok(lba) = u32::try_from(lba) else {
            continue;
        };
        let result = read_sector(src, lba, "anchor volume descriptor pointer").and_then(|buf| {
            check_tag(
                &buf,
                u64::from(lba) * BLOCK_BYTES,
                &[tag_id::ANCHOR],
                Some(lba),
                "anchor volume descriptor pointer",
            )
            .map(|_| buf)
        });
        match result {
            Ok(buf) => {
                anchor = Some((lba, buf));
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((anchor_lba, buf)) = anchor else {
        return Err(first_error.unwrap_or_else(|| {
            corrupt(
                256 * BLOCK_BYTES,
                "anchor volume descriptor pointer",
                "none found",
            )
        }));
    };
    let f = Fields::new_checked(&buf, 32).ok_or_else(|| {
        corrupt(
            u64::from(anchor_lba) * BLOCK_BYTES,
            "anchor",
            "short sector",
        )
    })?;
    let main = (f.le32(20), f.le32(16));
    let reserve = (f.le32(28), f.le32(24));
    let seq = match read_sequence(src, main.0, main.1) {
        Ok(s) if s.lvd.is_some() && !s.partitions.is_empty() => s,
        Ok(_) | Err(_) => {
            let s = read_sequence(src, reserve.0, reserve.1)?;
            if s.lvd.is_none() || s.partitions.is_empty() {
                return Err(corrupt(
                    u64::from(main.0) * BLOCK_BYTES,
                    "volume descriptor sequence",
                    "no logical volume or partition descriptor in either copy",
                ));
            }
            s
        }
    };
    let lvd = seq.lvd.as_ref().ok_or_else(|| {
        corrupt(
            u64::from(main.0) * BLOCK_BYTES,
            "logical volume descriptor",
            "missing",
        )
    })?;
    let &(_, start, blocks) = seq
        .partitions
        .iter()
        .find(|p| p.0 == lvd.partition_number)
        .ok_or_else(|| {
            corrupt(
                u64::from(main.0) * BLOCK_BYTES,
                "partition descriptor",
                format!("no partition number {}", lvd.partition_number),
            )
        })?;
    let part_end = u64::from(start) + u64::from(blocks);
    if part_end * BLOCK_BYTES > src.size.div_ceil(BLOCK_BYTES) * BLOCK_BYTES {
        return Err(corrupt(
            u64::from(main.0) * BLOCK_BYTES,
            "partition descriptor",
            format!(
                "partition of {blocks} blocks at {start} runs past the end of the image ({} bytes)",
                src.size
            ),
        ));
    }
    let mut vol = UdfVolume {
        label: lvd.label.clone(),
        volume_id: seq.volume_id.clone(),
        volume_set_id: seq.volume_set_id.clone(),
        nsr,
        revision: lvd.revision.clone(),
        anchor_lba,
        partition_start: start,
        partition_blocks: blocks,
        files: None,
        directories: None,
        recorded: seq.recorded,
        root_lba: 0,
    };
    let fsd_lba = vol.absolute(lvd.fsd_block, 1, 0)?;
    let fsd = read_sector(src, fsd_lba, "file set descriptor")?;
    check_tag(
        &fsd,
        u64::from(fsd_lba) * BLOCK_BYTES,
        &[tag_id::FILE_SET],
        Some(lvd.fsd_block),
        "file set descriptor",
    )?;
    let root_block = u32::from_le_bytes([fsd[404], fsd[405], fsd[406], fsd[407]]);
    vol.root_lba = vol.absolute(root_block, 1, u64::from(fsd_lba) * BLOCK_BYTES + 400)?;
    // Counts from the integrity descriptor, when it is there and sound.
    let (lvid_lba, lvid_len) = lvd.integrity;
    if lvid_len >= BLOCK as u32 {
        if let Ok(b) = read_sector(src, lvid_lba, "integrity descriptor") {
            let ok = check_tag(
                &b,
                u64::from(lvid_lba) * BLOCK_BYTES,
                &[tag_id::INTEGRITY],
                None,
                "integrity descriptor",
            )
            .is_ok();
            let f = Fields::new_checked(&b, 80);
            if let (true, Some(f)) = (ok, f) {
                let n = f.le32(72) as usize;
                let iu = f.le32(76) as usize;
                let at = 80 + 8 * n + 32;
                if iu >= 40 && n <= 16 {
                    if let Some(g) = Fields::new_checked(&b, at + 8) {
                        vol.files = Some(g.le32(at));
                        vol.directories = Some(g.le32(at + 4));
                    }
                }
            }
        }
    }
    Ok(vol)
}

impl UdfVolume {
    /// The absolute sector of partition block `block`, checking `count` blocks fit the
    /// partition.
    fn absolute(&self, block: u32, count: u64, offset: u64) -> Result<u32, ReadError> {
        let end = u64::from(block).checked_add(count);
        if end.is_none_or(|e| e > u64::from(self.partition_blocks)) {
            return Err(corrupt(
                offset,
                "UDF block address",
                format!(
                    "blocks {block}..+{count} lie outside the partition of {} blocks",
                    self.partition_blocks
                ),
            ));
        }
        Ok(self.partition_start + block)
    }
}

/// Reads the file entry at absolute sector `lba`.
pub(crate) fn read_node(src: &Source, vol: &UdfVolume, lba: u32) -> Result<Node, ReadError> {
    let offset = u64::from(lba) * BLOCK_BYTES;
    let buf = read_sector(src, lba, "file entry")?;
    let ident = check_tag(
        &buf,
        offset,
        &[tag_id::FILE_ENTRY, tag_id::EXTENDED_FILE_ENTRY],
        Some(lba - vol.partition_start),
        "file entry",
    )?;
    let f = Fields::new_checked(&buf, 216)
        .ok_or_else(|| corrupt(offset, "file entry", "short sector"))?;
    let extended = ident == tag_id::EXTENDED_FILE_ENTRY;
    let strategy = f.le16(20);
    if strategy != 4 {
        return Err(ReadError::Unsupported {
            offset,
            feature: format!("ICB strategy {strategy}"),
        });
    }
    let file_type = buf[27];
    let flags = f.le16(34);
    let size = f.le64(56);
    let (times, unique_at, lea_at, header) = if extended {
        ((80, 92, 116), 200, 208, 216)
    } else {
        ((72, 84, 96), 160, 168, 176)
    };
    let l_ea = f.le32(lea_at) as usize;
    let l_ad = f.le32(lea_at + 4) as usize;
    let ad_start = header + l_ea;
    let ad_end = ad_start.checked_add(l_ad).filter(|&e| e <= BLOCK).ok_or_else(|| {
        corrupt(
            offset + lea_at as u64,
            "file entry",
            format!("{l_ea} bytes of attributes and {l_ad} of allocation descriptors overflow the block"),
        )
    })?;
    let ads = &buf[ad_start..ad_end];
    let mut node = Node {
        lba,
        file_type,
        size,
        ranges: Vec::new(),
        inline: false,
        uid: f.le32(36),
        gid: f.le32(40),
        permissions: f.le32(44),
        links: f.le16(48),
        atime: timestamp_decode(&buf[times.0..times.0 + 12]),
        mtime: timestamp_decode(&buf[times.1..times.1 + 12]),
        ctime: timestamp_decode(&buf[times.2..times.2 + 12]),
        unique_id: f.le64(unique_at),
    };
    match flags & 7 {
        3 => {
            if size > l_ad as u64 {
                return Err(corrupt(
                    offset,
                    "file entry",
                    format!("embedded data of {l_ad} bytes is shorter than the file's {size}"),
                ));
            }
            node.inline = true;
            node.ranges.push((offset + ad_start as u64, size));
        }
        kind @ (0 | 1) => {
            let ad_len = if kind == 0 { 8 } else { 16 };
            collect_extents(src, vol, &mut node, ads, ad_len, offset + ad_start as u64)?;
        }
        other => {
            return Err(ReadError::Unsupported {
                offset,
                feature: format!("allocation descriptor type {other}"),
            })
        }
    }
    Ok(node)
}

/// Turns allocation descriptors into byte ranges of the image (following continuation
/// extents), stopping at the file's size.
fn collect_extents(
    src: &Source,
    vol: &UdfVolume,
    node: &mut Node,
    first: &[u8],
    ad_len: usize,
    first_offset: u64,
) -> Result<(), ReadError> {
    let mut ads = first.to_vec();
    let mut ads_offset = first_offset;
    let mut hops = 0usize;
    let mut covered = 0u64;
    'chain: loop {
        let mut at = 0usize;
        while at + ad_len <= ads.len() && covered < node.size {
            let off = ads_offset + at as u64;
            let raw = u32::from_le_bytes([ads[at], ads[at + 1], ads[at + 2], ads[at + 3]]);
            let block = u32::from_le_bytes([ads[at + 4], ads[at + 5], ads[at + 6], ads[at + 7]]);
            if ad_len == 16 {
                let part = u16::from_le_bytes([ads[at + 8], ads[at + 9]]);
                if part != 0 {
                    return Err(ReadError::Unsupported {
                        offset: off,
                        feature: format!("an extent in partition reference {part}"),
                    });
                }
            }
            at += ad_len;
            let len = u64::from(raw & super::MAX_EXTENT_LENGTH);
            if len == 0 {
                break 'chain;
            }
            match raw >> 30 {
                0 => {
                    let lba = vol.absolute(block, len.div_ceil(BLOCK_BYTES), off)?;
                    let take = len.min(node.size - covered);
                    let start = u64::from(lba) * BLOCK_BYTES;
                    src.check_range(start, take, "UDF file extent")?;
                    if node.ranges.len() >= MAX_EXTENTS {
                        return Err(ReadError::limit(
                            off,
                            "MAX_EXTENTS",
                            node.ranges.len() as u64 + 1,
                            MAX_EXTENTS as u64,
                        ));
                    }
                    node.ranges.push((start, take));
                    covered += take;
                }
                3 => {
                    hops += 1;
                    if hops > MAX_ALLOCATION_EXTENTS {
                        return Err(ReadError::limit(
                            off,
                            "MAX_ALLOCATION_EXTENTS",
                            hops as u64,
                            MAX_ALLOCATION_EXTENTS as u64,
                        ));
                    }
                    let lba = vol.absolute(block, 1, off)?;
                    let buf = read_sector(src, lba, "allocation extent descriptor")?;
                    let o = u64::from(lba) * BLOCK_BYTES;
                    check_tag(
                        &buf,
                        o,
                        &[tag_id::ALLOCATION_EXTENT],
                        Some(block),
                        "allocation extent descriptor",
                    )?;
                    let l = u32::from_le_bytes([buf[20], buf[21], buf[22], buf[23]]) as usize;
                    let l = l.min(BLOCK - 24).min(len as usize);
                    ads = buf[24..24 + l].to_vec();
                    ads_offset = o + 24;
                    continue 'chain;
                }
                _ => {
                    return Err(ReadError::Unsupported {
                        offset: off,
                        feature: "unrecorded (sparse) UDF extents".into(),
                    })
                }
            }
        }
        break;
    }
    if covered < node.size {
        return Err(corrupt(
            first_offset,
            "allocation descriptors",
            format!("extents hold {covered} bytes of a {}-byte file", node.size),
        ));
    }
    Ok(())
}

/// Reads `node`'s bytes (a folder or a symbolic link), at most `max` bytes.
fn read_content(
    src: &Source,
    node: &Node,
    max: u64,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    if node.size > max {
        return Err(ReadError::limit(
            u64::from(node.lba) * BLOCK_BYTES,
            what,
            node.size,
            max,
        ));
    }
    let mut out = Vec::with_capacity(node.size as usize);
    for &(start, len) in &node.ranges {
        out.extend_from_slice(&src.read_range(start, len, what)?);
    }
    Ok(out)
}

/// The identifiers of folder `dir` (parent and deleted entries left out).
pub(crate) fn read_dir(
    src: &Source,
    vol: &UdfVolume,
    dir: &Node,
) -> Result<Vec<Identifier>, ReadError> {
    let data = read_content(
        src,
        dir,
        crate::read::MAX_DIRECTORY_BYTES,
        "MAX_DIRECTORY_BYTES",
    )?;
    // Byte offset in the image of a position in `data`.
    let image_offset = |pos: usize| -> u64 {
        let mut p = pos as u64;
        for &(start, len) in &dir.ranges {
            if p < len {
                return start + p;
            }
            p -= len;
        }
        dir.ranges.last().map_or(0, |r| r.0 + r.1)
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 38 <= data.len() {
        let offset = image_offset(pos);
        let f = Fields::new_checked(&data[pos..], 38)
            .ok_or_else(|| corrupt(offset, "file identifier", "truncated"))?;
        let l_fi = usize::from(data[pos + 19]);
        let l_iu = usize::from(f.le16(36));
        let len = (38 + l_iu + l_fi).div_ceil(4) * 4;
        let end = pos + len;
        let fid = data.get(pos..end.min(data.len())).unwrap_or(&[]);
        if 38 + l_iu + l_fi > data.len() - pos {
            return Err(corrupt(
                offset,
                "file identifier",
                "runs past the folder's data",
            ));
        }
        check_tag(
            fid,
            offset,
            &[tag_id::FILE_IDENTIFIER],
            None,
            "file identifier",
        )?;
        let characteristics = data[pos + 18];
        let block = f.le32(24);
        let part = f.le16(28);
        pos = end;
        if characteristics & (super::fid_flag::PARENT | super::fid_flag::DELETED) != 0 {
            continue;
        }
        if part != 0 {
            return Err(ReadError::Unsupported {
                offset,
                feature: format!("a file entry in partition reference {part}"),
            });
        }
        let raw_name = &fid[38 + l_iu..38 + l_iu + l_fi];
        let name = cs0_decode(raw_name)
            .filter(|n| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']))
            .ok_or_else(|| {
                corrupt(
                    offset,
                    "file identifier",
                    format!("unusable name {raw_name:02x?}"),
                )
            })?;
        if out.len() >= crate::read::MAX_ENTRIES_PER_DIRECTORY {
            return Err(ReadError::limit(
                offset,
                "MAX_ENTRIES_PER_DIRECTORY",
                out.len() as u64 + 1,
                crate::read::MAX_ENTRIES_PER_DIRECTORY as u64,
            ));
        }
        out.push(Identifier {
            name,
            characteristics,
            lba: vol.absolute(block, 1, offset)?,
            offset,
        });
    }
    Ok(out)
}

/// The target of a symbolic link's path components (ECMA-167 4/14.16).
pub(crate) fn symlink_target(src: &Source, node: &Node) -> Result<String, ReadError> {
    let data = read_content(
        src,
        node,
        crate::read::MAX_SYMLINK_TARGET_BYTES as u64,
        "MAX_SYMLINK_TARGET_BYTES",
    )?;
    let mut parts: Vec<String> = Vec::new();
    let mut absolute = false;
    let mut pos = 0usize;
    while pos + 4 <= data.len() {
        let kind = data[pos];
        let len = usize::from(data[pos + 1]);
        let ident = data.get(pos + 4..pos + 4 + len).ok_or_else(|| {
            corrupt(
                u64::from(node.lba) * BLOCK_BYTES,
                "path component",
                "runs past the link",
            )
        })?;
        match kind {
            1 | 2 => {
                absolute = true;
                parts.clear();
            }
            3 => parts.push("..".into()),
            4 => parts.push(".".into()),
            5 => parts.push(cs0_decode(ident).unwrap_or_default()),
            _ => {}
        }
        pos += 4 + len;
    }
    let joined = parts.join("/");
    Ok(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// Unix permission bits from UDF permissions (execute, write, read of other, group, owner).
pub(crate) fn unix_mode(permissions: u32) -> u32 {
    let mut mode = 0;
    for (shift, unix) in [(0, 0), (5, 3), (10, 6)] {
        let p = (permissions >> shift) & 7;
        mode |= (p & 1 | (p & 2) | (p & 4)) << unix;
    }
    mode
}

/// The kind of a file entry as the reader's entries name it.
pub(crate) fn is_directory(node: &Node) -> bool {
    node.file_type == file_type::DIRECTORY
}

/// Opens `data` in its UDF tree and scans it completely with a small byte budget: true when
/// it opened and scanned cleanly. Never panics; the `udf_read` fuzz target and the corpus
/// replay test call this.
pub fn exercise(data: &[u8]) -> bool {
    use crate::read::{IsoImage, NameSpace, OpenOptions};
    let source: std::sync::Arc<dyn ReadAt> = std::sync::Arc::new(data.to_vec());
    let _ = detect(&*source);
    let Ok(image) = IsoImage::open(
        source,
        OpenOptions {
            prefer: NameSpace::Udf,
        },
    ) else {
        return false;
    };
    let _ = image.lookup_follow("/a/b/../c");
    image.scan(16 * 1024 * 1024).is_ok()
}
