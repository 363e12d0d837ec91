//! VHDX file identifier, the two headers (CRC-32C, sequence numbers) and the region tables,
//! all little endian per MS-VHDX.
//!
//! Parsers take fixed-size arrays or check lengths first, and never panic.

use super::Error;
use uuid::Uuid;
use vmedia_io::bytes::{self, Fields};

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

/// A GUID stored in the Microsoft mixed-endian layout, or `None` when the 16 bytes at `at`
/// are not all inside `b`.
pub(crate) fn guid(b: &[u8], at: usize) -> Option<Uuid> {
    bytes::array::<16>(b, at).map(Uuid::from_bytes_le)
}
/// A GUID inside a view whose length was checked (never fails for offsets inside the view).
pub(crate) fn guid_field(view: &Fields<'_>, at: usize) -> Uuid {
    Uuid::from_slice_le(view.slice(at, 16)).unwrap_or_default()
}
pub(crate) fn put_guid(b: &mut [u8], at: usize, id: &Uuid) {
    b[at..at + 16].copy_from_slice(&id.to_bytes_le());
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `checksum_at` counted as zero (bytes
/// past the end count as absent, so a short structure gets a checksum that cannot match).
pub fn crc_with_zeroed_field(bytes: &[u8], checksum_at: usize) -> u32 {
    let before = crc32c::crc32c(bytes.get(..checksum_at).unwrap_or(bytes));
    let with_zero = crc32c::crc32c_append(before, &[0u8; 4]);
    let after = checksum_at
        .checked_add(4)
        .and_then(|start| bytes.get(start..))
        .unwrap_or(&[]);
    crc32c::crc32c_append(with_zero, after)
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
    /// `b` is the header's 4 KiB; shorter input is `Truncated`, never a panic.
    pub fn parse(b: &[u8]) -> Result<Header, Error> {
        let f = Fields::new_checked(b, HEADER_SIZE).ok_or(Error::Truncated {
            what: "header",
            offset: 0,
        })?;
        if f.slice(0, 4) != HEADER_SIGNATURE {
            return Err(Error::BadMagic {
                what: "header signature \"head\"",
            });
        }
        let checksum = f.le32(4);
        if crc_with_zeroed_field(f.bytes(), 4) != checksum {
            return Err(Error::Checksum {
                what: "header",
                offset: 0,
            });
        }
        Ok(Header {
            checksum,
            sequence_number: f.le64(8),
            file_write_guid: guid_field(&f, 16),
            data_write_guid: guid_field(&f, 32),
            log_guid: guid_field(&f, 48),
            log_version: f.le16(64),
            version: f.le16(66),
            log_length: f.le32(68),
            log_offset: f.le64(72),
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
        let f = Fields::new_checked(b, REGION_TABLE_SIZE).ok_or(Error::Truncated {
            what: "region table",
            offset: 0,
        })?;
        if f.slice(0, 4) != REGION_SIGNATURE {
            return Err(Error::BadMagic {
                what: "region table signature \"regi\"",
            });
        }
        if crc_with_zeroed_field(f.bytes(), 4) != f.le32(4) {
            return Err(Error::Checksum {
                what: "region table",
                offset: 0,
            });
        }
        let count = f.le32(8);
        if count > MAX_REGION_ENTRIES {
            return Err(Error::Invalid {
                field: "region table entry count",
                offset: 8,
                reason: format!("{count} is more than {MAX_REGION_ENTRIES}"),
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        // 16 + MAX_REGION_ENTRIES * 32 = REGION_TABLE_SIZE: every entry is inside the view.
        for i in 0..count as usize {
            let at = 16 + i * 32;
            entries.push(RegionEntry {
                guid: guid_field(&f, at),
                file_offset: f.le64(at + 16),
                length: f.le32(at + 24),
                required: f.le32(at + 28) & 1 != 0,
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
        .as_chunks::<2>()
        .0
        .iter()
        .map(|c| u16::from_le_bytes(*c))
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
    fn vhdx_short_header_and_region_table_are_errors_not_panics() {
        let header = header().emit();
        for len in [0, 3, 4, 80, HEADER_SIZE - 1] {
            assert!(matches!(
                Header::parse(&header[..len]),
                Err(Error::Truncated { what: "header", .. })
            ));
        }
        assert!(matches!(
            RegionTable::parse(&[0u8; 100]),
            Err(Error::Truncated { .. })
        ));
        assert_eq!(guid(&[0u8; 15], 0), None);
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
        assert_eq!(guid(&b, 0), Some(BAT_REGION));
    }

    #[test]
    fn creator_round_trip() {
        assert_eq!(
            parse_creator(&emit_file_identifier("vmedia 0.1")),
            "vmedia 0.1"
        );
    }
}
