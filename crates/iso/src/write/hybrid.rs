//! Hybrid layout: the system area (MBR boot code, partition table, GPT) and partitions
//! appended after the ISO, so one file boots as a CD and as a USB disk, BIOS and UEFI.

use super::eltorito::BootPlan;
use super::{PartitionReport, WriteError, SECTOR_SIZE, SYSTEM_AREA};
use crate::spec::{
    AppendedPartition, BlobSource, EfiBootPart, IsoSpec, PartType, Platform, SystemAreaKind,
};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// isohdpfx.bin boot code ends where the MBR keeps the boot image address.
const ISOHYBRID_CODE: usize = 432;
/// Boot code before the MBR disk signature and partition table.
const MBR_CODE: usize = 446;
/// Standard GPT: 128 entries of 128 bytes = 32 sectors of 512.
const GPT_ENTRIES: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;
const GPT_ENTRY_SECTORS: u64 = (GPT_ENTRIES * GPT_ENTRY_SIZE / 512) as u64;
/// Appended partitions larger than this are refused (MBR sizes are 32-bit 512-byte sectors).
const MAX_MBR_SECTORS: u64 = u32::MAX as u64;
/// isohybrid pads images to whole 1 MiB "cylinders" (64 heads x 32 sectors) for old BIOSes.
const CYLINDER_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct AppendedPlan {
    pub number: u8,
    pub part_type: PartType,
    pub start_512: u64,
    pub sectors_512: u64,
    pub source: BlobSource,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MbrEntry {
    pub number: u8,
    pub bootable: bool,
    pub part_type: u8,
    pub start: u64,
    pub sectors: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct GptEntry {
    pub type_guid: [u8; 16],
    pub unique: [u8; 16],
    pub first: u64,
    pub last: u64,
    pub attributes: u64,
    pub name: String,
}

/// Where the HFS+ volume lies (ISO sectors) and the APM block size asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HfsRegion {
    pub start: u64,
    pub sectors: u64,
    pub apm_block: Option<u32>,
}

/// GPT type GUID of an Apple HFS+ partition (48465300-0000-11AA-AA11-00306543ECAC).
const GPT_TYPE_HFSPLUS: &str = "48465300-0000-11AA-AA11-00306543ECAC";
/// Where the GPT entry array starts without an APM (512-byte LBA 2, right after the header).
const GPT_ENTRIES_LBA: u64 = 2;
/// First usable LBA of every GPT written here: the ISO volume descriptors start at 64.
const GPT_FIRST_USABLE: u64 = 64;

#[derive(Debug, Clone, Default)]
pub(crate) struct HybridPlan {
    pub volume_sectors: u64,
    pub image_bytes: u64,
    pub appended: Vec<AppendedPlan>,
    pub template: Option<(Vec<u8>, SystemAreaKind)>,
    pub mbr: Vec<MbrEntry>,
    pub write_mbr: bool,
    pub gpt: Vec<GptEntry>,
    pub disk_guid: [u8; 16],
    pub disk_signature: u32,
    /// 512-byte LBA patched into the boot code (isohybrid / GRUB2 MBR).
    pub bios_image_512: Option<u64>,
    /// Apple Partition Map entries (empty without HFS+) and their block size.
    pub apm: Vec<super::apm::ApmEntry>,
    pub apm_block: u32,
    pub apm_block0: super::apm::Block0,
    /// 512-byte LBA of the primary GPT entry array (after the APM blocks when there are some).
    pub gpt_entry_lba: u64,
}

fn read_blob(source: &BlobSource, field: &'static str) -> Result<Vec<u8>, WriteError> {
    match source {
        BlobSource::Bytes(b) => Ok(b.clone()),
        BlobSource::File(p) => {
            let meta = std::fs::metadata(p).map_err(|e| WriteError::Read {
                path: p.clone(),
                source: e,
            })?;
            if meta.len() > SYSTEM_AREA as u64 && field == "hybrid.system_area" {
                // Only the first 32 KiB are used; read no more.
                let mut buf = vec![0u8; SYSTEM_AREA];
                let f = std::fs::File::open(p).map_err(|e| WriteError::Read {
                    path: p.clone(),
                    source: e,
                })?;
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).map_err(|e| {
                    WriteError::Read {
                        path: p.clone(),
                        source: e,
                    }
                })?;
                return Ok(buf);
            }
            std::fs::read(p).map_err(|e| WriteError::Read {
                path: p.clone(),
                source: e,
            })
        }
    }
}

fn blob_size(source: &BlobSource) -> Result<u64, WriteError> {
    match source {
        BlobSource::Bytes(b) => Ok(b.len() as u64),
        BlobSource::File(p) => {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| WriteError::Read {
                    path: p.clone(),
                    source: e,
                })
        }
    }
}

/// A GUID (version 4 layout) derived from a seed and a label: reproducible with `--date`.
pub(crate) fn derived_guid(seed: &[u8], label: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"vmedia-iso-guid\0");
    h.update(seed);
    h.update(label.as_bytes());
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    g
}

fn seed(spec: &IsoSpec, volume_sectors: u64) -> Vec<u8> {
    let mut s = Vec::new();
    match spec.date {
        Some(d) => s.extend_from_slice(&d.to_le_bytes()),
        None => {
            let nanos = u128::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0);
            s.extend_from_slice(&nanos.to_le_bytes());
            s.extend_from_slice(&std::process::id().to_le_bytes());
        }
    }
    s.extend_from_slice(&volume_sectors.to_le_bytes());
    if let Some(v) = &spec.volume.volume_id {
        s.extend_from_slice(v.as_bytes());
    }
    s
}

pub(crate) fn plan(
    spec: &IsoSpec,
    iso_end: u64,
    boot: Option<&BootPlan>,
    hfsplus: Option<HfsRegion>,
) -> Result<HybridPlan, WriteError> {
    let h = &spec.hybrid;
    let mut plan = HybridPlan {
        volume_sectors: iso_end,
        gpt_entry_lba: GPT_ENTRIES_LBA,
        ..HybridPlan::default()
    };
    if let Some(sa) = &h.system_area {
        let bytes = read_blob(&sa.source, "hybrid.system_area")?;
        if sa.kind != SystemAreaKind::Generic && bytes.len() < ISOHYBRID_CODE {
            return Err(WriteError::InvalidSpec {
                field: "hybrid.system_area",
                reason: format!(
                    "MBR template has {} bytes; at least {ISOHYBRID_CODE} are needed",
                    bytes.len()
                ),
            });
        }
        plan.template = Some((bytes, sa.kind));
    }
    let mut seen = [false; 5];
    for a in &h.appended {
        if !(1..=4).contains(&a.number) || seen[a.number as usize] {
            return Err(WriteError::InvalidSpec {
                field: "hybrid.appended",
                reason: format!("partition number {} is not 1..4 or used twice", a.number),
            });
        }
        seen[a.number as usize] = true;
    }
    let bios = boot.and_then(|b| {
        b.items
            .iter()
            .find(|i| i.entry.platform == Platform::X86 && i.data.is_some())
    });
    plan.bios_image_512 = bios.map(|i| u64::from(i.lba) * 4);
    let efi_images: Vec<(u64, u64)> = boot
        .map(|b| {
            b.items
                .iter()
                .filter(|i| i.entry.platform == Platform::Efi && i.data.is_some())
                .map(|i| (u64::from(i.lba) * 4, i.bytes.div_ceil(512)))
                .collect()
        })
        .unwrap_or_default();

    let mut end_2k = iso_end;
    let mut appended: Vec<AppendedPartition> = h.appended.clone();
    // `-efi-boot-part FILE`: the FAT image goes after the ISO as an EFI System partition in
    // the first free slot, described by the GPT.
    if let Some(EfiBootPart::File(path)) = &h.efi_boot_part {
        let number =
            (2..=4u8)
                .find(|n| !seen[usize::from(*n)])
                .ok_or_else(|| WriteError::InvalidSpec {
                    field: "hybrid.efi_boot_part",
                    reason: "all partition slots 2..4 are taken by -append_partition".into(),
                })?;
        appended.push(AppendedPartition {
            number,
            part_type: PartType::Mbr(0xEF),
            source: BlobSource::File(path.clone()),
        });
    }
    appended.sort_by_key(|a| a.number);
    for a in &appended {
        let size = blob_size(&a.source)?;
        let sectors_2k = size.div_ceil(SECTOR_SIZE).max(1);
        let start_512 = end_2k * 4;
        let sectors_512 = sectors_2k * 4;
        if start_512 + sectors_512 > MAX_MBR_SECTORS && !h.appended_as_gpt {
            return Err(WriteError::TooLarge {
                reason: format!(
                    "appended partition {} ends beyond what an MBR addresses",
                    a.number
                ),
            });
        }
        plan.appended.push(AppendedPlan {
            number: a.number,
            part_type: a.part_type,
            start_512,
            sectors_512,
            source: a.source.clone(),
            size,
        });
        end_2k += sectors_2k;
    }

    let want_gpt = h.gpt_basdat
        || h.efi_boot_part.is_some()
        || (h.appended_as_gpt && !plan.appended.is_empty());
    let mut total_bytes = end_2k * SECTOR_SIZE;
    let isohybrid = matches!(plan.template, Some((_, SystemAreaKind::IsohybridMbr)));
    if isohybrid && !want_gpt && plan.appended.is_empty() {
        total_bytes = total_bytes.div_ceil(CYLINDER_BYTES) * CYLINDER_BYTES;
    }
    // Room for the backup GPT (entries + header) at the very end, in whole ISO sectors.
    if want_gpt {
        total_bytes += (GPT_ENTRY_SECTORS + 1).div_ceil(4) * SECTOR_SIZE;
    }
    plan.image_bytes = total_bytes;
    let total_512 = total_bytes / 512;
    if let Some(hfs) = hfsplus {
        if h.isohybrid_apm {
            return Err(WriteError::InvalidSpec {
                field: "hybrid.isohybrid_apm",
                reason: "-isohybrid-apm-hfsplus and -hfsplus both write an Apple Partition Map; \
                         give one"
                    .into(),
            });
        }
        plan_apm(&mut plan, hfs, want_gpt, total_bytes)?;
    }
    if h.isohybrid_apm {
        if !isohybrid {
            return Err(WriteError::InvalidSpec {
                field: "hybrid.isohybrid_apm",
                reason: "-isohybrid-apm-hfsplus needs an isohybrid MBR (-isohybrid-mbr)".into(),
            });
        }
        // One entry per EFI image, in ISO sectors, as isohybrid and xorriso write them.
        let images: Vec<(u32, u32)> = efi_images
            .iter()
            .map(|&(start, len)| ((start / 4) as u32, len.div_ceil(4) as u32))
            .collect();
        plan.apm = super::apm::isohybrid_entries(&images);
        plan.apm_block = super::apm::APM_BLOCK_GPT;
        plan.apm_block0 = super::apm::Block0::Isohybrid;
        if want_gpt {
            plan.gpt_entry_lba = (plan.apm.len() as u64 + 1) * 4;
        }
    }
    let seed = seed(spec, iso_end);
    plan.disk_guid = derived_guid(&seed, "disk");
    let sig = derived_guid(&seed, "mbr-signature");
    plan.disk_signature = u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]);

    // GPT entries.
    let last_lba = total_512.saturating_sub(1);
    let iso_first = if h.partition_offset > 0 {
        u64::from(h.partition_offset) * 4
    } else {
        64
    };
    let iso_last = iso_end * 4 - 1;
    if want_gpt {
        let basic = PartType::Mbr(0x00).gpt_guid();
        let iso_type = h.iso_mbr_part_type.map(|t| match t {
            PartType::Gpt(g) => g,
            PartType::Mbr(_) => basic,
        });
        plan.gpt.push(GptEntry {
            type_guid: iso_type.unwrap_or(basic),
            unique: derived_guid(&seed, "gpt-iso"),
            first: iso_first,
            last: iso_last,
            attributes: 1 << 60,
            name: if h.gpt_basdat {
                "ISOHybrid ISO".into()
            } else {
                "ISO9660".into()
            },
        });
        if h.gpt_basdat || matches!(h.efi_boot_part, Some(EfiBootPart::BootImage)) {
            for (i, (start, len)) in efi_images.iter().enumerate() {
                plan.gpt.push(GptEntry {
                    type_guid: PartType::Mbr(0xEF).gpt_guid(),
                    unique: derived_guid(&seed, &format!("gpt-efi-{i}")),
                    first: *start,
                    last: start + len.max(&1) - 1,
                    attributes: 0,
                    // xorriso's names: isohybrid's for -isohybrid-gpt-basdat, its own for
                    // -efi-boot-part --efi-boot-image.
                    name: if h.gpt_basdat {
                        "ISOHybrid".into()
                    } else {
                        "EFI boot partition".into()
                    },
                });
            }
        }
        if let Some(hfs) = hfsplus {
            plan.gpt.push(GptEntry {
                type_guid: crate::spec::parse_guid(GPT_TYPE_HFSPLUS).unwrap_or([0; 16]),
                unique: derived_guid(&seed, "gpt-hfsplus"),
                first: hfs.start * 4,
                last: (hfs.start + hfs.sectors) * 4 - 1,
                attributes: 0,
                name: "HFSPLUS".into(),
            });
        }
        for a in &plan.appended {
            plan.gpt.push(GptEntry {
                type_guid: a.part_type.gpt_guid(),
                unique: derived_guid(&seed, &format!("gpt-appended-{}", a.number)),
                first: a.start_512,
                last: a.start_512 + a.sectors_512 - 1,
                attributes: 0,
                name: "Appended".into(),
            });
        }
    }

    // With a protective MBR, UEFI firmware reads the GPT and ignores overlapping entries
    // (EDK2 drops both), so the ISO entry is cut around EFI images inside it, as xorriso's
    // "Gap" partitions do. The hybrid MBR of -isohybrid-gpt-basdat keeps xorriso's layout.
    if want_gpt && !h.gpt_basdat {
        plan.gpt = split_overlaps(std::mem::take(&mut plan.gpt), &seed);
    }

    // MBR entries.
    let mbr_type_for_iso =
        |default: u8| h.iso_mbr_part_type.map(|t| t.mbr_byte()).unwrap_or(default);
    let cap = |v: u64| v.min(MAX_MBR_SECTORS);
    if want_gpt && !h.gpt_basdat {
        plan.mbr.push(MbrEntry {
            number: 1,
            bootable: h.mbr_force_bootable,
            part_type: 0xEE,
            start: 1,
            sectors: cap(last_lba),
        });
        plan.write_mbr = true;
    } else if want_gpt
        || isohybrid
        || !plan.appended.is_empty()
        || h.protective_msdos_label
        || h.partition_offset > 0
        || matches!(plan.template, Some((_, SystemAreaKind::Grub2Mbr)))
    {
        plan.write_mbr = true;
        // The partition offset only moves the start: the type follows the rest of the
        // layout as in xorriso (0x00 beside a GPT or appended partitions, 0x17 for isohybrid),
        // and an offset without any hybrid MBR gets xorriso's non-bootable 0xCD entry.
        let offset_start = u64::from(h.partition_offset) * 4;
        let (start, default_type, bootable) = if h.protective_msdos_label {
            (1, 0x00, true)
        } else if want_gpt || !plan.appended.is_empty() || (isohybrid && h.isohybrid_apm) {
            // isohybrid's APM layout also types the ISO partition 0x00, as xorriso does.
            (offset_start, 0x00, true)
        } else if isohybrid || matches!(plan.template, Some((_, SystemAreaKind::Grub2Mbr))) {
            (offset_start, 0x17, true)
        } else {
            (offset_start, 0xCD, false)
        };
        let end = if plan.appended.is_empty() && !want_gpt {
            total_512
        } else {
            iso_end * 4
        };
        plan.mbr.push(MbrEntry {
            number: 1,
            bootable: bootable || h.mbr_force_bootable,
            part_type: mbr_type_for_iso(default_type),
            start,
            sectors: cap(end - start),
        });
        if h.gpt_basdat {
            if let Some((s, n)) = efi_images.first() {
                plan.mbr.push(MbrEntry {
                    number: 2,
                    bootable: false,
                    part_type: 0xEF,
                    start: *s,
                    sectors: *n,
                });
            }
        }
        if !h.appended_as_gpt {
            for a in &plan.appended {
                plan.mbr.retain(|e| e.number != a.number);
                plan.mbr.push(MbrEntry {
                    number: a.number,
                    bootable: false,
                    part_type: a.part_type.mbr_byte(),
                    start: a.start_512,
                    sectors: a.sectors_512,
                });
            }
        }
    }
    Ok(plan)
}

/// The Apple Partition Map beside an HFS+ volume: xorriso's block size rules, its entries,
/// and the GPT entry array moved behind the map's blocks.
fn plan_apm(
    plan: &mut HybridPlan,
    hfs: HfsRegion,
    want_gpt: bool,
    total_bytes: u64,
) -> Result<(), WriteError> {
    use super::apm;
    let block = match hfs.apm_block {
        Some(b @ (apm::APM_BLOCK_GPT | apm::APM_BLOCK_SMALL)) => b,
        Some(other) => {
            return Err(WriteError::InvalidSpec {
                field: "hfsplus.apm_block_size",
                reason: format!("{other} is not 512 or 2048"),
            })
        }
        None if want_gpt => apm::APM_BLOCK_GPT,
        None => apm::APM_BLOCK_SMALL,
    };
    if want_gpt && block != apm::APM_BLOCK_GPT {
        return Err(WriteError::InvalidSpec {
            field: "hfsplus.apm_block_size",
            reason: "an Apple Partition Map beside a GPT needs 2048-byte blocks \
                     (-apm-block-size 2048), as in xorriso"
                .into(),
        });
    }
    let image_sectors =
        u32::try_from(total_bytes / SECTOR_SIZE).map_err(|_| WriteError::TooLarge {
            reason: "an Apple Partition Map addresses at most 2^32 blocks".into(),
        })?;
    let to_u32 = |v: u64| {
        u32::try_from(v).map_err(|_| WriteError::TooLarge {
            reason: "the HFS+ volume lies beyond 2^32 sectors".into(),
        })
    };
    let entries = apm::entries(to_u32(hfs.start)?, to_u32(hfs.sectors)?, image_sectors);
    if entries.len() > apm::max_entries(block) {
        return Err(WriteError::TooLarge {
            reason: format!("{} Apple Partition Map entries do not fit", entries.len()),
        });
    }
    if want_gpt {
        // The GPT entries follow block 0 and the map entries (in 512-byte LBAs).
        let lba = (entries.len() as u64 + 1) * u64::from(block) / 512;
        if lba + GPT_ENTRY_SECTORS > GPT_FIRST_USABLE {
            return Err(WriteError::TooLarge {
                reason: "the Apple Partition Map leaves no room for the GPT entries".into(),
            });
        }
        plan.gpt_entry_lba = lba;
    }
    plan.apm = entries;
    plan.apm_block = block;
    Ok(())
}

/// Cuts the first entry (the ISO data) around the entries that lie inside it.
fn split_overlaps(entries: Vec<GptEntry>, seed: &[u8]) -> Vec<GptEntry> {
    let Some((iso, rest)) = entries.split_first() else {
        return entries;
    };
    let mut holes: Vec<(u64, u64)> = rest
        .iter()
        .filter(|e| e.first <= iso.last && e.last >= iso.first)
        .map(|e| (e.first, e.last))
        .collect();
    holes.sort_unstable();
    let mut pieces = Vec::new();
    let mut cursor = iso.first;
    for (first, last) in holes {
        if first > cursor {
            pieces.push((cursor, first - 1));
        }
        cursor = cursor.max(last + 1);
    }
    if cursor <= iso.last {
        pieces.push((cursor, iso.last));
    }
    let mut out: Vec<GptEntry> = Vec::new();
    let count = pieces.len();
    for (i, (first, last)) in pieces.into_iter().enumerate() {
        let mut e = iso.clone();
        e.first = first;
        e.last = last;
        if count > 1 {
            e.name = format!("Gap{i}");
            e.unique = derived_guid(seed, &format!("gpt-gap-{i}"));
        }
        out.push(e);
    }
    out.extend(rest.iter().cloned());
    out.sort_by_key(|e| e.first);
    out
}

fn chs(lba: u64) -> [u8; 3] {
    let (heads, spt) = (64u64, 32u64);
    let c = lba / (heads * spt);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / spt) % heads;
    let s = lba % spt + 1;
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xC0) as u8),
        (c & 0xFF) as u8,
    ]
}

fn gpt_name(name: &str) -> [u8; 72] {
    let mut out = [0u8; 72];
    for (i, u) in name.encode_utf16().take(36).enumerate() {
        out[i * 2..i * 2 + 2].copy_from_slice(&u.to_le_bytes());
    }
    out
}

impl HybridPlan {
    /// The 32 KiB system area: template, patched MBR, primary GPT.
    pub fn system_area(&self) -> Vec<u8> {
        let mut sa = vec![0u8; SYSTEM_AREA];
        if let Some((bytes, kind)) = &self.template {
            let n = match kind {
                SystemAreaKind::Generic => bytes.len().min(SYSTEM_AREA),
                SystemAreaKind::IsohybridMbr => ISOHYBRID_CODE,
                SystemAreaKind::Grub2Mbr => bytes.len().min(MBR_CODE),
            };
            sa[..n].copy_from_slice(&bytes[..n]);
            match (kind, self.bios_image_512) {
                (SystemAreaKind::IsohybridMbr, Some(lba)) => {
                    sa[432..436].copy_from_slice(&(lba as u32).to_le_bytes());
                    sa[436..440].fill(0);
                }
                (SystemAreaKind::Grub2Mbr, Some(lba)) => {
                    sa[0x1B0..0x1B8].copy_from_slice(&(lba + 4).to_le_bytes());
                }
                _ => {}
            }
        }
        if self.write_mbr {
            if !matches!(self.template, Some((_, SystemAreaKind::Generic)))
                || sa[440..444] == [0; 4]
            {
                sa[440..444].copy_from_slice(&self.disk_signature.to_le_bytes());
            }
            sa[444..446].fill(0);
            sa[446..510].fill(0);
            for e in &self.mbr {
                let at = 446 + (usize::from(e.number) - 1) * 16;
                sa[at] = if e.bootable { 0x80 } else { 0 };
                sa[at + 1..at + 4].copy_from_slice(&chs(e.start));
                sa[at + 4] = e.part_type;
                sa[at + 5..at + 8].copy_from_slice(&chs((e.start + e.sectors).saturating_sub(1)));
                sa[at + 8..at + 12].copy_from_slice(&(e.start as u32).to_le_bytes());
                sa[at + 12..at + 16].copy_from_slice(&(e.sectors as u32).to_le_bytes());
            }
            sa[510] = 0x55;
            sa[511] = 0xAA;
        }
        if !self.apm.is_empty() {
            super::apm::write(&mut sa, &self.apm, self.apm_block, self.apm_block0);
        }
        if !self.gpt.is_empty() {
            let entries = self.gpt_entries();
            let header = self.gpt_header(&entries, true);
            sa[512..1024].copy_from_slice(&header);
            let at = self.gpt_entry_lba as usize * 512;
            sa[at..at + entries.len()].copy_from_slice(&entries);
        }
        sa
    }

    fn total_512(&self) -> u64 {
        self.image_bytes / 512
    }

    fn gpt_entries(&self) -> Vec<u8> {
        let mut out = vec![0u8; GPT_ENTRIES * GPT_ENTRY_SIZE];
        for (i, e) in self.gpt.iter().enumerate().take(GPT_ENTRIES) {
            let at = i * GPT_ENTRY_SIZE;
            out[at..at + 16].copy_from_slice(&e.type_guid);
            out[at + 16..at + 32].copy_from_slice(&e.unique);
            out[at + 32..at + 40].copy_from_slice(&e.first.to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&e.last.to_le_bytes());
            out[at + 48..at + 56].copy_from_slice(&e.attributes.to_le_bytes());
            out[at + 56..at + 128].copy_from_slice(&gpt_name(&e.name));
        }
        out
    }

    fn gpt_header(&self, entries: &[u8], primary: bool) -> Vec<u8> {
        let last = self.total_512() - 1;
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        let (my, alt, table) = if primary {
            (1, last, self.gpt_entry_lba)
        } else {
            (last, 1, last - GPT_ENTRY_SECTORS)
        };
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&GPT_FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&(last - GPT_ENTRY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid);
        h[72..80].copy_from_slice(&table.to_le_bytes());
        h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The backup GPT (entries then header) and the byte offset it goes at.
    pub fn backup_gpt(&self) -> Option<(u64, Vec<u8>)> {
        if self.gpt.is_empty() {
            return None;
        }
        let entries = self.gpt_entries();
        let header = self.gpt_header(&entries, false);
        let last = self.total_512() - 1;
        let mut out = entries;
        out.extend_from_slice(&header);
        Some(((last - GPT_ENTRY_SECTORS) * 512, out))
    }

    pub fn appended_source(a: &AppendedPlan) -> (Option<PathBuf>, Option<&[u8]>) {
        match &a.source {
            BlobSource::File(p) => (Some(p.clone()), None),
            BlobSource::Bytes(b) => (None, Some(b)),
        }
    }

    pub fn report(&self) -> Vec<PartitionReport> {
        let mut out = Vec::new();
        if self.write_mbr {
            for e in &self.mbr {
                out.push(PartitionReport {
                    table: "mbr",
                    number: u32::from(e.number),
                    part_type: format!("{:#04x}", e.part_type),
                    start_sector: e.start,
                    sectors: e.sectors,
                    bootable: e.bootable,
                    name: String::new(),
                });
            }
        }
        for (i, e) in self.apm.iter().enumerate() {
            // The map's own entry counts APM blocks, the others ISO sectors.
            let unit = if i == 0 {
                u64::from(self.apm_block) / 512
            } else {
                4
            };
            out.push(PartitionReport {
                table: "apm",
                number: i as u32 + 1,
                part_type: e.kind.clone(),
                start_sector: u64::from(e.start) * unit,
                sectors: u64::from(e.blocks) * unit,
                bootable: false,
                name: e.name.clone(),
            });
        }
        for (i, e) in self.gpt.iter().enumerate() {
            out.push(PartitionReport {
                table: "gpt",
                number: i as u32 + 1,
                part_type: guid_text(&e.type_guid),
                start_sector: e.first,
                sectors: e.last - e.first + 1,
                bootable: e.attributes & 4 != 0,
                name: e.name.clone(),
            });
        }
        out
    }
}

/// Textual GUID from mixed-endian bytes.
pub(crate) fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AppendedPartition, SystemArea};

    #[test]
    fn guid_text_round_trips_spec_parser() {
        let g = crate::spec::parse_guid(crate::spec::GPT_TYPE_EFI_SYSTEM).unwrap();
        assert_eq!(guid_text(&g), crate::spec::GPT_TYPE_EFI_SYSTEM);
    }

    #[test]
    fn gpt_header_and_entry_crcs_verify() {
        let mut spec = IsoSpec {
            date: Some(1_700_000_000),
            ..IsoSpec::default()
        };
        spec.hybrid.appended.push(AppendedPartition {
            number: 2,
            part_type: PartType::Mbr(0xEF),
            source: BlobSource::Bytes(vec![1; 5000]),
        });
        spec.hybrid.appended_as_gpt = true;
        let plan = plan(&spec, 1000, None, None).unwrap();
        let sa = plan.system_area();
        assert_eq!(sa[446 + 4], 0xEE, "protective MBR");
        let header = &sa[512..1024];
        assert_eq!(&header[..8], b"EFI PART");
        let mut h = header[..92].to_vec();
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        h[16..20].fill(0);
        assert_eq!(crc32fast::hash(&h), crc);
        let entries = &sa[1024..1024 + 128 * 128];
        assert_eq!(
            u32::from_le_bytes(header[88..92].try_into().unwrap()),
            crc32fast::hash(entries)
        );
        let (at, backup) = plan.backup_gpt().unwrap();
        assert_eq!(at + backup.len() as u64, plan.image_bytes);
        assert_eq!(&backup[backup.len() - 512..backup.len() - 504], b"EFI PART");
        // Appended partition starts right after the ISO and is an ESP in the GPT.
        assert_eq!(plan.gpt[1].first, 4000);
        assert_eq!(plan.gpt[1].type_guid, PartType::Mbr(0xEF).gpt_guid());
    }

    #[test]
    fn isohybrid_mbr_patches_boot_lba_and_covers_image() {
        let mut spec = IsoSpec::default();
        spec.hybrid.system_area = Some(SystemArea {
            source: BlobSource::Bytes(vec![0x33; 432]),
            kind: SystemAreaKind::IsohybridMbr,
        });
        let mut p = plan(&spec, 700, None, None).unwrap();
        p.bios_image_512 = Some(4 * 50);
        let sa = p.system_area();
        assert_eq!(&sa[..432], &[0x33; 432][..]);
        assert_eq!(&sa[432..436], &200u32.to_le_bytes());
        assert_eq!(sa[446], 0x80);
        assert_eq!(sa[446 + 4], 0x17);
        assert_eq!(
            u32::from_le_bytes(sa[446 + 12..446 + 16].try_into().unwrap()) as u64,
            p.image_bytes / 512
        );
        assert_eq!(p.image_bytes % (1 << 20), 0);
        assert_eq!(&sa[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn partition_offset_keeps_the_isohybrid_mbr_type() {
        let mut spec = IsoSpec::default();
        spec.hybrid.system_area = Some(SystemArea {
            source: BlobSource::Bytes(vec![0x33; 432]),
            kind: SystemAreaKind::IsohybridMbr,
        });
        spec.hybrid.partition_offset = 16;
        let p = plan(&spec, 700, None, None).unwrap();
        assert_eq!(
            (p.mbr[0].start, p.mbr[0].part_type, p.mbr[0].bootable),
            (64, 0x17, true)
        );
        let mut plain = IsoSpec::default();
        plain.hybrid.partition_offset = 16;
        let p = plan(&plain, 700, None, None).unwrap();
        assert_eq!(
            (p.mbr[0].start, p.mbr[0].part_type, p.mbr[0].bootable),
            (64, 0xCD, false)
        );
    }

    #[test]
    fn efi_boot_part_file_is_appended_as_gpt_esp() {
        let mut spec = IsoSpec::default();
        spec.hybrid.efi_boot_part = Some(EfiBootPart::File("/dev/null".into()));
        let p = plan(&spec, 500, None, None).unwrap();
        assert_eq!(p.appended.len(), 1);
        assert_eq!(p.appended[0].number, 2);
        assert_eq!(p.appended[0].start_512, 2000);
        assert!(p
            .gpt
            .iter()
            .any(|e| e.type_guid == PartType::Mbr(0xEF).gpt_guid() && e.first == 2000));
        assert_eq!(p.mbr[0].part_type, 0xEE);
    }

    #[test]
    fn protective_gpt_entries_never_overlap() {
        let iso = GptEntry {
            type_guid: [1; 16],
            unique: [0; 16],
            first: 64,
            last: 9999,
            attributes: 0,
            name: "ISO9660".into(),
        };
        let esp = GptEntry {
            type_guid: [2; 16],
            unique: [0; 16],
            first: 300,
            last: 499,
            attributes: 0,
            name: "ESP".into(),
        };
        let out = split_overlaps(vec![iso, esp], b"s");
        let ranges: Vec<(u64, u64)> = out.iter().map(|e| (e.first, e.last)).collect();
        assert_eq!(ranges, vec![(64, 299), (300, 499), (500, 9999)]);
        assert_eq!(out[0].name, "Gap0");
    }

    #[test]
    fn derived_guids_are_reproducible_and_version4() {
        let a = derived_guid(b"seed", "disk");
        assert_eq!(a, derived_guid(b"seed", "disk"));
        assert_ne!(a, derived_guid(b"seed", "other"));
        assert_eq!(a[7] >> 4, 4);
    }
}
