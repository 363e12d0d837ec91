//! Apple Partition Map in the system area, as xorriso writes it beside an HFS+ hybrid, with
//! 2048-byte blocks (`-apm-block-size 2048`, needed beside a GPT) or 512-byte blocks (its
//! default without a GPT). Block 0 is a minimal driver descriptor ("ER",
//! block size, then a two-byte x86 jump over its own fields so MBR boot code still runs),
//! block 1 describes the map itself, then one entry per partition in disk order: the HFS+
//! volume ("Apple_HFS") and "ISO9660_data" gap fillers named Gap0, Gap1... before it (from
//! block 16, where the ISO volume descriptors start) and after it (to the end of the image).

use super::SYSTEM_AREA;

/// The block size that lets a GPT share the system area (entries in ISO sectors).
pub(crate) const APM_BLOCK_GPT: u32 = 2048;
/// The only other block size xorriso writes (Linux mounts HFS+ from such maps).
pub(crate) const APM_BLOCK_SMALL: u32 = 512;
/// The largest map: block 0 and the entries must fit in the 32 KiB system area.
pub(crate) fn max_entries(block: u32) -> usize {
    SYSTEM_AREA / block as usize - 1
}
/// Gap fillers start at ISO sector 16: sectors 0..16 hold the system area itself.
const PROTECTED_SECTORS: u32 = 16;
/// Driver descriptor bytes written over the MBR boot code: "ER", block size (patched), and
/// `jmp +2; 0xffff`, harmless to x86 code entering at byte 0.
const BLOCK0: [u8; 8] = [0x45, 0x52, 0x00, 0x00, 0xEB, 0x02, 0xFF, 0xFF];
/// isohybrid's descriptor (`-isohybrid-apm-hfsplus`): "ER", 2048, zero count, two NOPs; the
/// APM-aware isohdpfx.bin code tolerates it.
const BLOCK0_ISOHYBRID: [u8; 8] = [0x45, 0x52, 0x08, 0x00, 0x00, 0x00, 0x90, 0x90];

/// Which driver descriptor block 0 gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Block0 {
    /// libisofs's, beside an HFS+ hybrid.
    #[default]
    HfsPlus,
    /// isohybrid's, for `-isohybrid-apm-hfsplus`.
    Isohybrid,
}
/// Entry status: valid, allocated, readable, writable.
const STATUS_DATA: u32 = 0x13;
/// Entry status of the map's own entry: valid and allocated.
const STATUS_MAP: u32 = 0x03;
/// Status bit for automatic mount of Apple_HFS partitions (classic Mac OS).
const STATUS_AUTOMOUNT: u32 = 0x4000_0000;

/// One partition map entry, in 2048-byte ISO sectors (scaled to the block size when written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApmEntry {
    pub name: String,
    pub kind: String,
    pub start: u32,
    pub blocks: u32,
}

/// The map for an HFS+ volume at `hfs_start` (`hfs_blocks` long) in an image of
/// `image_blocks`: the map's own entry first, then partitions and gaps in disk order.
pub(crate) fn entries(hfs_start: u32, hfs_blocks: u32, image_blocks: u32) -> Vec<ApmEntry> {
    let mut parts = Vec::new();
    let mut gap = 0;
    let mut push_gap = |parts: &mut Vec<ApmEntry>, start: u32, end: u32| {
        if end > start {
            parts.push(ApmEntry {
                name: format!("Gap{gap}"),
                kind: "ISO9660_data".into(),
                start,
                blocks: end - start,
            });
            gap += 1;
        }
    };
    push_gap(&mut parts, PROTECTED_SECTORS, hfs_start);
    parts.push(ApmEntry {
        name: "HFSPLUS_Hybrid".into(),
        kind: "Apple_HFS".into(),
        start: hfs_start,
        blocks: hfs_blocks,
    });
    push_gap(&mut parts, hfs_start + hfs_blocks, image_blocks);
    let mut out = vec![ApmEntry {
        name: "Apple".into(),
        kind: "Apple_partition_map".into(),
        start: 1,
        blocks: 0,
    }];
    out.extend(parts);
    let count = out.len() as u32;
    out[0].blocks = count;
    out
}

/// isohybrid's map: the map's own entry and one "EFI" Apple_HFS entry per EFI boot image
/// (start, sectors in ISO sectors), no gap fillers.
pub(crate) fn isohybrid_entries(efi_images: &[(u32, u32)]) -> Vec<ApmEntry> {
    let mut out = vec![ApmEntry {
        name: "Apple".into(),
        kind: "Apple_partition_map".into(),
        start: 1,
        blocks: efi_images.len() as u32 + 1,
    }];
    for &(start, blocks) in efi_images {
        out.push(ApmEntry {
            name: "EFI".into(),
            kind: "Apple_HFS".into(),
            start,
            blocks,
        });
    }
    out
}

/// Writes block 0 and the entries into the system area with `block`-byte blocks.
pub(crate) fn write(sa: &mut [u8], entries: &[ApmEntry], block: u32, block0: Block0) {
    match block0 {
        Block0::HfsPlus => {
            sa[..8].copy_from_slice(&BLOCK0);
            sa[2..4].copy_from_slice(&(block as u16).to_be_bytes());
        }
        Block0::Isohybrid => sa[..8].copy_from_slice(&BLOCK0_ISOHYBRID),
    }
    let count = entries.len() as u32;
    // The map's own entry counts APM blocks already; the others are in ISO sectors.
    let factor = 2048 / block;
    let size = block as usize;
    for (i, e) in entries.iter().enumerate().take(max_entries(block)) {
        let at = (i + 1) * size;
        let b = &mut sa[at..at + size];
        let (start, blocks) = if i == 0 {
            (e.start, e.blocks)
        } else {
            (e.start * factor, e.blocks * factor)
        };
        b.fill(0);
        b[0..2].copy_from_slice(b"PM");
        b[4..8].copy_from_slice(&count.to_be_bytes());
        b[8..12].copy_from_slice(&start.to_be_bytes());
        b[12..16].copy_from_slice(&blocks.to_be_bytes());
        put_text(&mut b[16..48], &e.name);
        put_text(&mut b[48..80], &e.kind);
        // Logical start 0, logical length = the whole partition.
        b[84..88].copy_from_slice(&blocks.to_be_bytes());
        let status = if i == 0 {
            STATUS_MAP
        } else if e.kind == "Apple_HFS" {
            STATUS_DATA | STATUS_AUTOMOUNT
        } else {
            STATUS_DATA
        };
        b[88..92].copy_from_slice(&status.to_be_bytes());
    }
}

fn put_text(field: &mut [u8], text: &str) {
    let n = text.len().min(field.len() - 1);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entry_then_gaps_around_the_hfs_volume_like_xorriso() {
        let e = entries(1512, 8219, 9893);
        let summary: Vec<(&str, &str, u32, u32)> = e
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str(), e.start, e.blocks))
            .collect();
        assert_eq!(
            summary,
            [
                ("Apple", "Apple_partition_map", 1, 4),
                ("Gap0", "ISO9660_data", 16, 1496),
                ("HFSPLUS_Hybrid", "Apple_HFS", 1512, 8219),
                ("Gap1", "ISO9660_data", 9731, 162),
            ]
        );
    }

    #[test]
    fn empty_gaps_are_left_out() {
        let e = entries(16, 100, 116);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].blocks, 2);
    }

    #[test]
    fn entries_are_big_endian_pm_blocks_after_block0() {
        let mut sa = vec![0x90u8; SYSTEM_AREA];
        let e = entries(1512, 8219, 9893);
        const APM_BLOCK: usize = APM_BLOCK_GPT as usize;
        write(&mut sa, &e, APM_BLOCK_GPT, Block0::HfsPlus);
        assert_eq!(&sa[..8], &[0x45, 0x52, 0x08, 0x00, 0xEB, 0x02, 0xFF, 0xFF]);
        assert_eq!(sa[8], 0x90, "boot code after the descriptor is kept");
        let hfs = &sa[3 * APM_BLOCK..4 * APM_BLOCK];
        assert_eq!(&hfs[..2], b"PM");
        assert_eq!(u32::from_be_bytes(hfs[4..8].try_into().unwrap()), 4);
        assert_eq!(u32::from_be_bytes(hfs[8..12].try_into().unwrap()), 1512);
        assert_eq!(u32::from_be_bytes(hfs[12..16].try_into().unwrap()), 8219);
        assert_eq!(&hfs[16..30], b"HFSPLUS_Hybrid");
        assert_eq!(&hfs[48..57], b"Apple_HFS");
        assert_eq!(
            u32::from_be_bytes(hfs[88..92].try_into().unwrap()),
            0x4000_0013
        );
        let map = &sa[APM_BLOCK..2 * APM_BLOCK];
        assert_eq!(u32::from_be_bytes(map[88..92].try_into().unwrap()), 3);
    }

    #[test]
    fn isohybrid_map_has_one_efi_entry_per_image_and_isohybrids_block0() {
        let mut sa = vec![0x90u8; SYSTEM_AREA];
        let e = isohybrid_entries(&[(35, 720)]);
        write(&mut sa, &e, APM_BLOCK_GPT, Block0::Isohybrid);
        assert_eq!(&sa[..8], &[0x45, 0x52, 0x08, 0x00, 0x00, 0x00, 0x90, 0x90]);
        let map = &sa[2048..4096];
        assert_eq!(u32::from_be_bytes(map[4..8].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(map[12..16].try_into().unwrap()), 2);
        let efi = &sa[4096..6144];
        assert_eq!(&efi[16..20], b"EFI\0");
        assert_eq!(&efi[48..58], b"Apple_HFS\0");
        assert_eq!(u32::from_be_bytes(efi[8..12].try_into().unwrap()), 35);
        assert_eq!(u32::from_be_bytes(efi[12..16].try_into().unwrap()), 720);
        assert_eq!(
            u32::from_be_bytes(efi[88..92].try_into().unwrap()),
            0x4000_0013
        );
    }

    #[test]
    fn small_blocks_scale_starts_and_sizes_by_four() {
        let mut sa = vec![0u8; SYSTEM_AREA];
        write(
            &mut sa,
            &entries(32, 10, 192),
            APM_BLOCK_SMALL,
            Block0::HfsPlus,
        );
        assert_eq!(&sa[2..4], &[0x02, 0x00]);
        let map = &sa[512..1024];
        assert_eq!(u32::from_be_bytes(map[8..12].try_into().unwrap()), 1);
        assert_eq!(u32::from_be_bytes(map[12..16].try_into().unwrap()), 4);
        let hfs = &sa[1536..2048];
        assert_eq!(&hfs[..2], b"PM");
        assert_eq!(u32::from_be_bytes(hfs[8..12].try_into().unwrap()), 128);
        assert_eq!(u32::from_be_bytes(hfs[12..16].try_into().unwrap()), 40);
    }
}
