//! VHDX file identifier, the two headers (CRC-32C, sequence numbers) and the region tables,
//! all little endian per MS-VHDX.
//!
//! Parsers take fixed-size arrays or check lengths first, and never panic.

use super::Error;
use uuid::Uuid;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// File type identifier at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
pub const HEADER_1_OFFSET: u64 = 64 * KIB;
pub const HEADER_2_OFFSET: u64 = 128 * KIB;
pub const REGION_TABLE_1_OFFSET: u64 = 192 * KIB;
pub const REGION_TABLE_2_OFFSET: u64 = 256 * KIB;
/// Bytes of a header covered by its checksum.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of a region table covered by its checksum.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// Region table entries allowed by the spec (64 KiB table minus its 16-byte header / 32).
pub const MAX_REGION_ENTRIES: u32 = 2047;
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// The only log version defined.
pub const LOG_VERSION: u16 = 0;
/// The only file version defined.
pub const VERSION: u16 = 1;

/// Region GUIDs.
pub const BAT_REGION: Uuid = Uuid::from_u128(0x2DC27766_F623_4200_9D64_115E9BFD4A08);
pub const METADATA_REGION: Uuid = Uuid::from_u128(0x8B7CA206_4790_4B9A_B8FE_575F050F886E);

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}
/// A GUID stored in the Microsoft mixed-endian layout.
pub(crate) fn guid(b: &[u8], at: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes_le(a)
}
pub(crate) fn put_guid(b: &mut [u8], at: usize, id: &Uuid) {
    b[at..at + 16].copy_from_slice(&id.to_bytes_le());
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `checksum_at` counted as zero.
pub fn crc_with_zeroed_field(bytes: &[u8], checksum_at: usize) -> u32 {
    let before = crc32c::crc32c(&bytes[..checksum_at]);
    let with_zero = crc32c::crc32c_append(before, &[0u8; 4]);
    crc32c::crc32c_append(with_zero, &bytes[checksum_at + 4..])
}

/// One of the two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub checksum: u32,
    pub sequence_number: u64,
    pub file_write_guid: Uuid,
    pub data_write_guid: Uuid,
    /// Non-nil when the log holds entries to replay.
    pub log_guid: Uuid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Parses a header and verifies its signature and CRC-32C.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Header, Error> {
        if &b[0..4] != HEADER_SIGNATURE {
            return Err(Error::BadMagic {
                what: "header signature \"head\"",
            });
        }
        let checksum = le32(b, 4);
        if crc_with_zeroed_field(b, 4) != checksum {
            return Err(Error::Checksum {
                what: "header",
                offset: 0,
            });
        }
        Ok(Header {
            checksum,
            sequence_number: le64(b, 8),
            file_write_guid: guid(b, 16),
            data_write_guid: guid(b, 32),
            log_guid: guid(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    pub fn emit(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(HEADER_SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        put_guid(&mut b, 16, &self.file_write_guid);
        put_guid(&mut b, 32, &self.data_write_guid);
        put_guid(&mut b, 48, &self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    pub guid: Uuid,
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

/// A region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    pub entries: Vec<RegionEntry>,
}

impl RegionTable {
    pub fn parse(b: &[u8]) -> Result<RegionTable, Error> {
        if b.len() < REGION_TABLE_SIZE {
            return Err(Error::Truncated {
                what: "region table",
                offset: 0,
            });
        }
        let b = &b[..REGION_TABLE_SIZE];
        if &b[0..4] != REGION_SIGNATURE {
            return Err(Error::BadMagic {
                what: "region table signature \"regi\"",
            });
        }
        if crc_with_zeroed_field(b, 4) != le32(b, 4) {
            return Err(Error::Checksum {
                what: "region table",
                offset: 0,
            });
        }
        let count = le32(b, 8);
        if count > MAX_REGION_ENTRIES {
            return Err(Error::Invalid {
                field: "region table entry count",
                offset: 8,
                reason: format!("{count} is more than {MAX_REGION_ENTRIES}"),
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = 16 + i * 32;
            entries.push(RegionEntry {
                guid: guid(b, at),
                file_offset: le64(b, at + 16),
                length: le32(b, at + 24),
                required: le32(b, at + 28) & 1 != 0,
            });
        }
        Ok(RegionTable { entries })
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[0..4].copy_from_slice(REGION_SIGNATURE);
        b[8..12].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = 16 + i * 32;
            put_guid(&mut b, at, &e.guid);
            b[at + 16..at + 24].copy_from_slice(&e.file_offset.to_le_bytes());
            b[at + 24..at + 28].copy_from_slice(&e.length.to_le_bytes());
            b[at + 28..at + 32].copy_from_slice(&u32::from(e.required).to_le_bytes());
        }
        let crc = crc_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn find(&self, id: &Uuid) -> Option<&RegionEntry> {
        self.entries.iter().find(|e| e.guid == *id)
    }
}

/// The file type identifier: signature and creator (UTF-16LE, 256 characters at most).
pub fn emit_file_identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 * 1024];
    b[0..8].copy_from_slice(FILE_SIGNATURE);
    let mut at = 8;
    for unit in creator.encode_utf16().take(255) {
        b[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        at += 2;
    }
    b
}

/// The creator string of the file type identifier.
pub fn parse_creator(b: &[u8]) -> String {
    let end = b.len().min(8 + 512);
    let units: Vec<u16> = b
        .get(8..end)
        .unwrap_or(&[])
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            checksum: 0,
            sequence_number: 7,
            file_write_guid: Uuid::from_u128(1),
            data_write_guid: Uuid::from_u128(2),
            log_guid: Uuid::nil(),
            log_version: LOG_VERSION,
            version: VERSION,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn header_round_trip() {
        let h = header();
        let bytes = h.emit();
        let mut back = Header::parse(&bytes).unwrap();
        back.checksum = 0;
        assert_eq!(back, h);
    }

    #[test]
    fn header_crc_mismatch_is_an_error() {
        let mut bytes = header().emit();
        bytes[100] = 1;
        assert!(matches!(
            Header::parse(&bytes),
            Err(Error::Checksum { what: "header", .. })
        ));
    }

    #[test]
    fn region_table_round_trip_and_limit() {
        let t = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: 3 * MIB,
                    length: MIB as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: 2 * MIB,
                    length: MIB as u32,
                    required: true,
                },
            ],
        };
        let bytes = t.emit();
        assert_eq!(RegionTable::parse(&bytes).unwrap(), t);
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&5000u32.to_le_bytes());
        let crc = crc_with_zeroed_field(&bad, 4);
        bad[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            RegionTable::parse(&bad),
            Err(Error::Invalid {
                field: "region table entry count",
                ..
            })
        ));
    }

    #[test]
    fn guid_layout_is_mixed_endian() {
        let mut b = [0u8; 16];
        put_guid(&mut b, 0, &BAT_REGION);
        assert_eq!(&b[..4], &[0x66, 0x77, 0xC2, 0x2D]);
        assert_eq!(guid(&b, 0), BAT_REGION);
    }

    #[test]
    fn creator_round_trip() {
        assert_eq!(
            parse_creator(&emit_file_identifier("vmedia 0.1")),
            "vmedia 0.1"
        );
    }
}
