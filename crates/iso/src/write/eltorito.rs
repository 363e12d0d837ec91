//! El Torito: boot record, boot catalog, and the patches some boot images expect
//! (boot-info-table, GRUB2 boot info).

use super::tree::{self, DataId, Meta, NodeKind, Tree};
use super::{WriteError, SECTOR_SIZE};
use crate::spec::{BootEntry, BootImage, Emulation, IsoSpec, LoadSize, Platform};

/// One catalog sector holds 64 32-byte entries; validation + default + a header per section.
const MAX_CATALOG_ENTRIES: usize = 31;
/// Boot images patched in memory (boot-info-table) are read whole; they are small in practice.
pub(crate) const MAX_PATCHED_IMAGE: u64 = 64 << 20;
/// The boot-info-table occupies bytes 8..64 of the image.
const INFO_TABLE_END: u64 = 64;
/// GRUB2's El Torito core keeps its own address at this byte (xorriso --grub2-boot-info).
pub(crate) const GRUB2_INFO_OFFSET: usize = 2548;
/// Catalog sector counts are 16-bit.
const MAX_LOAD_SECTORS: u64 = 0xFFFF;

#[derive(Debug, Clone)]
pub(crate) struct BootItem {
    pub entry: BootEntry,
    pub data: Option<DataId>,
    pub appended: Option<u8>,
    /// Boot image LBA (2048-byte sectors) once laid out.
    pub lba: u32,
    pub bytes: u64,
    pub load_sectors: u16,
    pub media: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct BootPlan {
    pub items: Vec<BootItem>,
}

fn what(image: &BootImage) -> String {
    match image {
        BootImage::IsoPath(p) => p.clone(),
        BootImage::AppendedPartition(n) => format!("appended partition {n}"),
        BootImage::Bytes(b) => format!("in-memory image of {} bytes", b.len()),
    }
}

/// Resolves boot images against the tree and adds the visible catalog node.
pub(crate) fn prepare(
    spec: &IsoSpec,
    tree: &mut Tree,
    now: i64,
) -> Result<Option<BootPlan>, WriteError> {
    if spec.boot.entries.is_empty() {
        return Ok(None);
    }
    if spec.boot.entries.len() > MAX_CATALOG_ENTRIES {
        return Err(WriteError::InvalidSpec {
            field: "boot.entries",
            reason: format!(
                "{} entries; one catalog sector holds at most {MAX_CATALOG_ENTRIES}",
                spec.boot.entries.len()
            ),
        });
    }
    let mut items = Vec::new();
    for entry in &spec.boot.entries {
        let (data, appended) = match &entry.image {
            BootImage::IsoPath(p) => {
                let id = tree
                    .lookup(p)
                    .ok_or_else(|| WriteError::BootImageMissing { what: p.clone() })?;
                match tree.nodes[id].kind {
                    NodeKind::File(d) => (Some(d), None),
                    _ => return Err(WriteError::BootImageMissing { what: p.clone() }),
                }
            }
            BootImage::Bytes(b) => (Some(tree.add_hidden_data(b.clone())), None),
            BootImage::AppendedPartition(n) => {
                if !spec.hybrid.appended.iter().any(|a| a.number == *n) {
                    return Err(WriteError::BootImageMissing {
                        what: format!("appended partition {n} (no -append_partition {n} given)"),
                    });
                }
                (None, Some(*n))
            }
        };
        if (entry.boot_info_table || entry.grub2_boot_info) && appended.is_some() {
            return Err(WriteError::BootImage {
                what: what(&entry.image),
                reason: "boot-info-table and GRUB2 boot info patch files of the tree, not appended partitions".into(),
            });
        }
        items.push(BootItem {
            entry: entry.clone(),
            data,
            appended,
            lba: 0,
            bytes: 0,
            load_sectors: 0,
            media: 0,
        });
    }
    if let (Some(path), false) = (&spec.boot.catalog_path, spec.boot.catalog_hidden) {
        let meta = Meta {
            mode: tree::S_IFREG | 0o444,
            uid: 0,
            gid: 0,
            mtime: now,
            atime: now,
            ctime: now,
        };
        tree.add_catalog(path, meta)?;
    }
    Ok(Some(BootPlan { items }))
}

impl BootPlan {
    pub fn data_items(&self) -> Vec<DataId> {
        self.items.iter().filter_map(|i| i.data).collect()
    }

    pub fn resolve(&mut self, tree: &Tree, data_lba: &[u32]) -> Result<(), WriteError> {
        for item in &mut self.items {
            let Some(d) = item.data else { continue };
            item.lba = data_lba[d];
            item.bytes = tree.data[d].size;
            finish(item)?;
        }
        Ok(())
    }

    /// Places the boot images that are appended partitions; `placed(n)` gives partition
    /// `n`'s (first 512-byte sector, 512-byte sectors) as the hybrid plan laid it out. A
    /// lookup rather than the plan itself keeps El Torito below the hybrid layout.
    pub fn resolve_appended(
        &mut self,
        placed: impl Fn(u8) -> Option<(u64, u64)>,
    ) -> Result<(), WriteError> {
        for item in &mut self.items {
            let Some(n) = item.appended else { continue };
            let (start_512, sectors_512) =
                placed(n).ok_or_else(|| WriteError::BootImageMissing {
                    what: format!("appended partition {n}"),
                })?;
            item.lba = (start_512 / 4) as u32;
            item.bytes = sectors_512 * 512;
            finish(item)?;
        }
        Ok(())
    }

    /// Patches a boot image's bytes in memory (the copy written into the image).
    pub fn patch(&self, data: DataId, buf: &mut [u8], pvd_lba: u32) {
        for item in self.items.iter().filter(|i| i.data == Some(data)) {
            // The GRUB2 patch goes first: the boot info table checksum covers the image as
            // stored (bytes 64..end, GRUB2 offset included), which is what xorriso checks.
            if item.entry.grub2_boot_info && buf.len() >= GRUB2_INFO_OFFSET + 8 {
                let value = u64::from(item.lba) * 4 + 5;
                buf[GRUB2_INFO_OFFSET..GRUB2_INFO_OFFSET + 8].copy_from_slice(&value.to_le_bytes());
            }
            if item.entry.boot_info_table && buf.len() as u64 >= INFO_TABLE_END {
                let mut sum: u32 = 0;
                for chunk in buf[INFO_TABLE_END as usize..].chunks(4) {
                    let mut w = [0u8; 4];
                    w[..chunk.len()].copy_from_slice(chunk);
                    sum = sum.wrapping_add(u32::from_le_bytes(w));
                }
                buf[8..12].copy_from_slice(&pvd_lba.to_le_bytes());
                buf[12..16].copy_from_slice(&item.lba.to_le_bytes());
                buf[16..20].copy_from_slice(&(item.bytes as u32).to_le_bytes());
                buf[20..24].copy_from_slice(&sum.to_le_bytes());
                buf[24..64].fill(0);
            }
        }
    }

    pub fn needs_patch(&self, data: DataId) -> bool {
        self.items
            .iter()
            .any(|i| i.data == Some(data) && (i.entry.boot_info_table || i.entry.grub2_boot_info))
    }

    /// The 2048-byte boot catalog.
    pub fn catalog(&self) -> Vec<u8> {
        let mut cat = vec![0u8; SECTOR_SIZE as usize];
        let first = &self.items[0];
        // Validation entry.
        cat[0] = 1;
        cat[1] = first.entry.platform.id();
        cat[30] = 0x55;
        cat[31] = 0xAA;
        let mut sum: u16 = 0;
        for w in cat[..32].chunks(2) {
            sum = sum.wrapping_add(u16::from_le_bytes([w[0], w[1]]));
        }
        let check = 0u16.wrapping_sub(sum);
        cat[28..30].copy_from_slice(&check.to_le_bytes());
        write_entry(&mut cat[32..64], first);
        let mut at = 64;
        let rest = &self.items[1..];
        for (i, item) in rest.iter().enumerate() {
            let last = i + 1 == rest.len();
            cat[at] = if last { 0x91 } else { 0x90 };
            cat[at + 1] = item.entry.platform.id();
            cat[at + 2..at + 4].copy_from_slice(&1u16.to_le_bytes());
            if let Some(id) = &item.entry.id_string {
                let b = id.as_bytes();
                let n = b.len().min(28);
                cat[at + 4..at + 4 + n].copy_from_slice(&b[..n]);
            }
            write_entry(&mut cat[at + 32..at + 64], item);
            at += 64;
        }
        cat
    }
}

fn write_entry(e: &mut [u8], item: &BootItem) {
    e[0] = if item.entry.bootable { 0x88 } else { 0x00 };
    e[1] = item.media;
    e[2..4].copy_from_slice(&item.entry.load_segment.to_le_bytes());
    e[4] = 0;
    e[6..8].copy_from_slice(&item.load_sectors.to_le_bytes());
    e[8..12].copy_from_slice(&item.lba.to_le_bytes());
}

/// Media type and load size from the emulation, platform and image size.
fn finish(item: &mut BootItem) -> Result<(), WriteError> {
    let name = what(&item.entry.image);
    let whole = item.bytes.div_ceil(512).clamp(1, MAX_LOAD_SECTORS) as u16;
    item.media = match item.entry.emulation {
        Emulation::NoEmulation => 0,
        Emulation::HardDisk => 4,
        Emulation::Floppy => match item.bytes {
            1_228_800 => 1,
            1_474_560 => 2,
            2_949_120 => 3,
            other => {
                return Err(WriteError::BootImage {
                    what: name,
                    reason: format!("{other} bytes is no floppy size (1228800, 1474560 or 2949120); use -no-emul-boot"),
                })
            }
        },
    };
    item.load_sectors = match (item.entry.load_size, item.entry.emulation) {
        (LoadSize::Sectors(n), _) => n,
        (LoadSize::WholeImage, _) => whole,
        (LoadSize::Default, Emulation::NoEmulation) if item.entry.platform == Platform::X86 => 4,
        (LoadSize::Default, Emulation::NoEmulation) => whole,
        (LoadSize::Default, _) => 1,
    };
    if (item.entry.boot_info_table || item.entry.grub2_boot_info) && item.bytes > MAX_PATCHED_IMAGE
    {
        return Err(WriteError::BootImage {
            what: name,
            reason: format!("is larger than {MAX_PATCHED_IMAGE} bytes and cannot be patched"),
        });
    }
    if item.entry.boot_info_table && item.bytes < INFO_TABLE_END {
        return Err(WriteError::BootImage {
            what: name,
            reason: "is shorter than the 64-byte boot-info-table".into(),
        });
    }
    if item.entry.grub2_boot_info && (item.bytes as usize) < GRUB2_INFO_OFFSET + 8 {
        return Err(WriteError::BootImage {
            what: name,
            reason: format!(
                "is shorter than {} bytes, too short for GRUB2 boot info",
                GRUB2_INFO_OFFSET + 8
            ),
        });
    }
    Ok(())
}

/// The boot record volume descriptor pointing at the catalog.
pub(crate) fn boot_record(catalog_lba: u32) -> Vec<u8> {
    let mut vd = vec![0u8; SECTOR_SIZE as usize];
    vd[0] = 0;
    vd[1..6].copy_from_slice(b"CD001");
    vd[6] = 1;
    let id = b"EL TORITO SPECIFICATION";
    vd[7..7 + id.len()].copy_from_slice(id);
    vd[0x47..0x4B].copy_from_slice(&catalog_lba.to_le_bytes());
    vd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(platform: Platform, emulation: Emulation, bytes: u64) -> BootItem {
        let mut entry = BootEntry::new(platform, BootImage::IsoPath("x".into()));
        entry.emulation = emulation;
        let mut i = BootItem {
            entry,
            data: Some(0),
            appended: None,
            lba: 40,
            bytes,
            load_sectors: 0,
            media: 0,
        };
        finish(&mut i).unwrap();
        i
    }

    #[test]
    fn catalog_validation_entry_sums_to_zero() {
        let plan = BootPlan {
            items: vec![
                item(Platform::X86, Emulation::NoEmulation, 20000),
                item(Platform::Efi, Emulation::NoEmulation, 1 << 20),
            ],
        };
        let cat = plan.catalog();
        let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(&cat[30..32], &[0x55, 0xAA]);
        assert_eq!(cat[32], 0x88);
        assert_eq!(
            u16::from_le_bytes([cat[38], cat[39]]),
            4,
            "BIOS no-emulation default load size"
        );
        assert_eq!(cat[64], 0x91);
        assert_eq!(cat[65], 0xEF);
        assert_eq!(
            u16::from_le_bytes([cat[96 + 6], cat[96 + 7]]),
            2048,
            "EFI loads the whole image"
        );
        assert_eq!(
            u32::from_le_bytes(cat[96 + 8..96 + 12].try_into().unwrap()),
            40
        );
    }

    #[test]
    fn floppy_emulation_requires_a_floppy_size() {
        let entry = BootEntry::new(Platform::X86, BootImage::IsoPath("x".into()));
        let mut i = BootItem {
            entry,
            data: Some(0),
            appended: None,
            lba: 40,
            bytes: 1000,
            load_sectors: 0,
            media: 0,
        };
        assert!(finish(&mut i).is_err());
        assert_eq!(item(Platform::X86, Emulation::Floppy, 1_474_560).media, 2);
    }

    #[test]
    fn boot_info_table_holds_pvd_lba_file_lba_length_and_checksum() {
        let mut entry = BootEntry::new(Platform::X86, BootImage::IsoPath("x".into()));
        entry.emulation = Emulation::NoEmulation;
        entry.boot_info_table = true;
        let mut i = BootItem {
            entry,
            data: Some(3),
            appended: None,
            lba: 33,
            bytes: 72,
            load_sectors: 0,
            media: 0,
        };
        finish(&mut i).unwrap();
        let plan = BootPlan { items: vec![i] };
        let mut buf = vec![0xAAu8; 72];
        buf[64..68].copy_from_slice(&1u32.to_le_bytes());
        buf[68..72].copy_from_slice(&2u32.to_le_bytes());
        plan.patch(3, &mut buf, 16);
        assert_eq!(&buf[8..12], &16u32.to_le_bytes());
        assert_eq!(&buf[12..16], &33u32.to_le_bytes());
        assert_eq!(&buf[16..20], &72u32.to_le_bytes());
        assert_eq!(&buf[20..24], &3u32.to_le_bytes());
        assert!(buf[24..64].iter().all(|&b| b == 0));
        assert_eq!(&buf[..8], &[0xAA; 8]);
    }

    #[test]
    fn grub2_boot_info_is_lba_times_four_plus_five() {
        let mut entry = BootEntry::new(Platform::X86, BootImage::IsoPath("x".into()));
        entry.emulation = Emulation::NoEmulation;
        entry.grub2_boot_info = true;
        let mut i = BootItem {
            entry,
            data: Some(1),
            appended: None,
            lba: 100,
            bytes: 4096,
            load_sectors: 0,
            media: 0,
        };
        finish(&mut i).unwrap();
        let plan = BootPlan { items: vec![i] };
        let mut buf = vec![0u8; 4096];
        plan.patch(1, &mut buf, 16);
        assert_eq!(&buf[2548..2556], &405u64.to_le_bytes());
    }

    #[test]
    fn boot_info_checksum_covers_the_grub2_patch() {
        let mut entry = BootEntry::new(Platform::X86, BootImage::IsoPath("x".into()));
        entry.emulation = Emulation::NoEmulation;
        entry.boot_info_table = true;
        entry.grub2_boot_info = true;
        let mut i = BootItem {
            entry,
            data: Some(1),
            appended: None,
            lba: 100,
            bytes: 4096,
            load_sectors: 0,
            media: 0,
        };
        finish(&mut i).unwrap();
        let plan = BootPlan { items: vec![i] };
        let mut buf = vec![0u8; 4096];
        plan.patch(1, &mut buf, 16);
        let sum = buf[64..].chunks(4).fold(0u32, |s, w| {
            s.wrapping_add(u32::from_le_bytes(w.try_into().unwrap()))
        });
        assert_eq!(sum, 405, "checksum must include the GRUB2 value as stored");
        assert_eq!(&buf[20..24], &sum.to_le_bytes());
    }
}
