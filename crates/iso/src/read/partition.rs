//! MBR and GPT partition tables in the system area of hybrid (USB-bootable) images.

use serde::Serialize;
use vmedia_io::bytes::Fields;

use super::error::ReadError;
use super::Source;

/// The GPT specification's minimum array is 128 entries; nobody writes more than a few
/// hundred. Bounds the entry array read into memory.
pub const MAX_GPT_ENTRIES: u32 = 1024;
/// Entry sizes are 128 * 2^n in practice; larger would make the array read unbounded.
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;

/// One primary MBR partition (sectors are 512 bytes).
#[derive(Debug, Clone, Serialize)]
pub struct MbrPartition {
    /// 1..=4.
    pub number: u8,
    pub bootable: bool,
    pub partition_type: u8,
    pub start_sector: u32,
    pub sector_count: u32,
}

/// One used GPT entry (sectors are 512 bytes).
#[derive(Debug, Clone, Serialize)]
pub struct GptPartition {
    /// 1-based index in the entry array.
    pub number: u32,
    pub type_guid: String,
    pub partition_guid: String,
    pub first_sector: u64,
    pub last_sector: u64,
    pub attributes: u64,
    pub name: String,
}

/// The GPT header and its used entries.
#[derive(Debug, Clone, Serialize)]
pub struct Gpt {
    pub disk_guid: String,
    pub header_sector: u64,
    pub backup_header_sector: u64,
    pub first_usable_sector: u64,
    pub last_usable_sector: u64,
    pub entries_start_sector: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    /// Whether the header CRC32 matches (xorriso and fdisk warn when it does not).
    pub header_crc_ok: bool,
    pub entries_crc_ok: bool,
    pub partitions: Vec<GptPartition>,
}

/// Partition tables found in the first sectors of the image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionTable {
    /// The MBR boot signature 0x55AA is present.
    pub mbr_signature: bool,
    pub mbr: Vec<MbrPartition>,
    pub gpt: Option<Gpt>,
    /// An Apple Partition Map ("ER" block 0, "PM" entries) as xorriso writes for Macs.
    pub apple_partition_map: bool,
}

impl PartitionTable {
    /// The end (in bytes) of the furthest partition: what a copy of the medium must include.
    pub fn end_bytes(&self) -> u64 {
        let mbr_end = self
            .mbr
            .iter()
            .filter(|p| p.partition_type != 0xEE)
            .map(|p| (u64::from(p.start_sector) + u64::from(p.sector_count)) * 512)
            .max()
            .unwrap_or(0);
        let gpt_end = self.gpt.as_ref().map_or(0, |g| {
            g.partitions
                .iter()
                .map(|p| p.last_sector.saturating_add(1).saturating_mul(512))
                .max()
                .unwrap_or(0)
        });
        mbr_end.max(gpt_end)
    }
}

/// GUIDs are stored mixed-endian: the first three groups little-endian.
pub fn format_guid(b: &[u8]) -> String {
    if b.len() < 16 {
        return String::new();
    }
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Bytes of the MBR sector and of the primary GPT header sector after it.
const MBR_AND_GPT_HEADER_BYTES: usize = 1024;
/// The fixed fields of a GPT header end at byte 92 (the UEFI spec's minimum header size).
const GPT_HEADER_FIELDS_BYTES: usize = 92;
/// The fixed fields of a GPT entry (GUIDs, LBAs, attributes, 36 UTF-16 name units).
const GPT_ENTRY_FIELDS_BYTES: usize = 128;

/// Parses the MBR in `system_area` and, if present, the GPT it announces.
pub(crate) fn read_partitions(
    source: &Source,
    system_area: &[u8],
) -> Result<PartitionTable, ReadError> {
    let mut table = PartitionTable::default();
    let Some(area) = Fields::new_checked(system_area, MBR_AND_GPT_HEADER_BYTES) else {
        return Ok(table);
    };
    // The map's entries follow block 0 at the APM block size: 512 or (xorriso) 2048 bytes.
    table.apple_partition_map = area.slice(0, 2) == b"ER"
        && (area.slice(512, 2) == b"PM" || system_area.get(2048..2050) == Some(&b"PM"[..]));
    table.mbr_signature = area.u8(510) == 0x55 && area.u8(511) == 0xAA;
    if !table.mbr_signature {
        return Ok(table);
    }
    for i in 0..4usize {
        let at = 446 + i * 16;
        let partition_type = area.u8(at + 4);
        let start_sector = area.le32(at + 8);
        let sector_count = area.le32(at + 12);
        if partition_type == 0 && sector_count == 0 {
            continue;
        }
        table.mbr.push(MbrPartition {
            number: i as u8 + 1,
            bootable: area.u8(at) == 0x80,
            partition_type,
            start_sector,
            sector_count,
        });
    }
    let header = area.slice(512, 512);
    if &header[0..8] == b"EFI PART" {
        table.gpt = Some(read_gpt(source, header)?);
    }
    Ok(table)
}

fn read_gpt(source: &Source, header_sector: &[u8]) -> Result<Gpt, ReadError> {
    let Some(header) = Fields::new_checked(header_sector, GPT_HEADER_FIELDS_BYTES) else {
        return Err(ReadError::corrupt(
            512,
            "GPT header",
            "shorter than 92 bytes",
        ));
    };
    let header_size = header.le32(12) as usize;
    let header_crc_ok = match header_sector.get(..header_size) {
        Some(bytes) if header_size >= GPT_HEADER_FIELDS_BYTES => {
            let mut copy = bytes.to_vec();
            copy[16..20].fill(0);
            crc32fast::hash(&copy) == header.le32(16)
        }
        _ => false,
    };
    let entries_start_sector = header.le64(72);
    let entry_count = header.le32(80);
    let entry_size = header.le32(84);
    if entry_count > MAX_GPT_ENTRIES {
        return Err(ReadError::limit(
            512 + 80,
            "MAX_GPT_ENTRIES",
            entry_count.into(),
            MAX_GPT_ENTRIES.into(),
        ));
    }
    if !((GPT_ENTRY_FIELDS_BYTES as u32)..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) {
        return Err(ReadError::corrupt(
            512 + 84,
            "GPT partition entry size",
            format!("{entry_size} is not between 128 and {MAX_GPT_ENTRY_SIZE}"),
        ));
    }
    let bytes = u64::from(entry_count) * u64::from(entry_size);
    let start = entries_start_sector.checked_mul(512).ok_or_else(|| {
        ReadError::corrupt(
            512 + 72,
            "GPT partition entries LBA",
            format!("{entries_start_sector} overflows"),
        )
    })?;
    let array = source.read_range(start, bytes, "GPT partition entries")?;
    let entries_crc_ok = crc32fast::hash(&array) == header.le32(88);
    let mut partitions = Vec::new();
    for (i, raw) in array.chunks_exact(entry_size as usize).enumerate() {
        let Some(e) = Fields::new_checked(raw, GPT_ENTRY_FIELDS_BYTES) else {
            continue;
        };
        if e.slice(0, 16).iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e
            .slice(56, 72)
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(GptPartition {
            number: i as u32 + 1,
            type_guid: format_guid(e.slice(0, 16)),
            partition_guid: format_guid(e.slice(16, 16)),
            first_sector: e.le64(32),
            last_sector: e.le64(40),
            attributes: e.le64(48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Gpt {
        disk_guid: format_guid(header.slice(56, 16)),
        header_sector: header.le64(24),
        backup_header_sector: header.le64(32),
        first_usable_sector: header.le64(40),
        last_usable_sector: header.le64(48),
        entries_start_sector,
        entry_count,
        entry_size,
        header_crc_ok,
        entries_crc_ok,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn guid_is_mixed_endian() {
        let b = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(format_guid(&b), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    }

    #[test]
    fn mbr_entries_are_listed_and_end_computed() {
        let mut area = vec![0u8; 32768];
        area[510] = 0x55;
        area[511] = 0xAA;
        area[446] = 0x80;
        area[446 + 4] = 0x17;
        area[446 + 8..446 + 12].copy_from_slice(&0u32.to_le_bytes());
        area[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        area[462 + 4] = 0xEF;
        area[462 + 8..462 + 12].copy_from_slice(&100u32.to_le_bytes());
        area[462 + 12..462 + 16].copy_from_slice(&50u32.to_le_bytes());
        let src = Source::new(Arc::new(area.clone())).unwrap();
        let t = read_partitions(&src, &area).unwrap();
        assert_eq!(t.mbr.len(), 2);
        assert!(t.mbr[0].bootable);
        assert_eq!(t.end_bytes(), 150 * 512);
    }

    #[test]
    fn short_system_area_between_1024_and_2050_bytes_does_not_panic() {
        // Regression: the Apple partition map probe indexed bytes 2048..2050 of a system
        // area only checked to hold 1024.
        let mut area = vec![0u8; 1500];
        area[0..2].copy_from_slice(b"ER");
        let src = Source::new(Arc::new(area.clone())).unwrap();
        let t = read_partitions(&src, &area).unwrap();
        assert!(!t.apple_partition_map);
        assert!(t.mbr.is_empty());
    }

    #[test]
    fn gpt_entry_count_over_limit_is_an_error() {
        let mut area = vec![0u8; 32768];
        area[510] = 0x55;
        area[511] = 0xAA;
        area[512..520].copy_from_slice(b"EFI PART");
        area[512 + 80..512 + 84].copy_from_slice(&100_000u32.to_le_bytes());
        area[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let src = Source::new(Arc::new(area.clone())).unwrap();
        let err = read_partitions(&src, &area).unwrap_err();
        assert!(err.to_string().contains("MAX_GPT_ENTRIES"), "{err}");
    }
}
