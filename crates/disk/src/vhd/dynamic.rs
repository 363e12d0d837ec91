//! The VHD dynamic disk header (1024 big-endian bytes after the footer copy), its parent
//! locators, and the block allocation table (BAT) geometry.
//!
//! Parsing reads fixed ranges of a checked 1024-byte view and never panics.

use vmedia_io::bytes::{self, Fields};

use super::Error;

/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// The cookie that starts the dynamic header.
pub const COOKIE: &[u8; 8] = b"cxsparse";
/// The only header version defined (1.0).
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Default block size (2 MiB), what Hyper-V, Virtual PC and qemu use.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// BAT entry of a block that is not allocated.
pub const BAT_UNUSED: u32 = u32::MAX;
/// Number of parent locator slots in the header.
pub const LOCATOR_SLOTS: usize = 8;
/// Largest block size accepted: the spec allows any power of two, real images use 512 KiB to
/// 2 MiB; 256 MiB bounds per-block buffers.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest BAT accepted (entries): 2 TiB / 512 KiB blocks = 4 Mi entries = 16 MiB of table,
/// which also covers the VHD size limit with any larger block size.
pub const MAX_TABLE_ENTRIES: u32 = 4 << 20;
/// Largest parent locator data read (bytes): a UTF-16 path of 32 Ki characters.
pub const MAX_LOCATOR_BYTES: u32 = 64 << 10;

mod field {
    use std::ops::Range;
    pub const COOKIE: Range<usize> = 0..8;
    pub const DATA_OFFSET: Range<usize> = 8..16;
    pub const TABLE_OFFSET: Range<usize> = 16..24;
    pub const VERSION: Range<usize> = 24..28;
    pub const MAX_TABLE_ENTRIES: Range<usize> = 28..32;
    pub const BLOCK_SIZE: Range<usize> = 32..36;
    pub const CHECKSUM: Range<usize> = 36..40;
    pub const PARENT_UNIQUE_ID: Range<usize> = 40..56;
    pub const PARENT_TIMESTAMP: Range<usize> = 56..60;
    pub const PARENT_NAME: Range<usize> = 64..576;
    pub const LOCATORS: usize = 576;
    pub const LOCATOR_SIZE: usize = 24;
}

/// Platform code of a parent locator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformCode {
    None,
    /// "W2ru": relative Windows path, UTF-16 little endian.
    W2ru,
    /// "W2ku": absolute Windows path, UTF-16 little endian.
    W2ku,
    /// "Wi2r" / "Wi2k": deprecated ANSI paths.
    Wi2r,
    Wi2k,
    /// "Mac ": Mac OS alias blob; "MacX": file URL, UTF-8.
    Mac,
    MacX,
    Unknown(u32),
}

impl PlatformCode {
    pub fn from_u32(v: u32) -> PlatformCode {
        match &v.to_be_bytes() {
            [0, 0, 0, 0] => PlatformCode::None,
            b"W2ru" => PlatformCode::W2ru,
            b"W2ku" => PlatformCode::W2ku,
            b"Wi2r" => PlatformCode::Wi2r,
            b"Wi2k" => PlatformCode::Wi2k,
            b"Mac " => PlatformCode::Mac,
            b"MacX" => PlatformCode::MacX,
            _ => PlatformCode::Unknown(v),
        }
    }
    pub fn to_u32(self) -> u32 {
        u32::from_be_bytes(match self {
            PlatformCode::None => [0; 4],
            PlatformCode::W2ru => *b"W2ru",
            PlatformCode::W2ku => *b"W2ku",
            PlatformCode::Wi2r => *b"Wi2r",
            PlatformCode::Wi2k => *b"Wi2k",
            PlatformCode::Mac => *b"Mac ",
            PlatformCode::MacX => *b"MacX",
            PlatformCode::Unknown(v) => return v,
        })
    }
}

/// One parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locator {
    pub platform: PlatformCode,
    /// Space reserved for the data. The spec says sectors; Windows writes bytes. Readers use
    /// `data_length` only.
    pub data_space: u32,
    pub data_length: u32,
    pub data_offset: u64,
}

/// The dynamic header in friendly form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub data_offset: u64,
    pub table_offset: u64,
    pub version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub checksum: u32,
    pub parent_unique_id: [u8; 16],
    pub parent_timestamp: u32,
    /// Parent file name (UTF-16 big endian in the file), NULs trimmed.
    pub parent_name: String,
    pub locators: [Locator; LOCATOR_SLOTS],
}

const EMPTY_LOCATOR: Locator = Locator {
    platform: PlatformCode::None,
    data_space: 0,
    data_length: 0,
    data_offset: 0,
};

impl DynamicHeader {
    /// Parses and validates the header (cookie, block size, table size). The checksum is
    /// reported by `checksum_ok` so the caller can name the file.
    ///
    /// `b` is the header's 1024 bytes; shorter input is `Truncated`, never a panic.
    pub fn parse(b: &[u8]) -> Result<DynamicHeader, Error> {
        let f = Fields::new_checked(b, HEADER_SIZE).ok_or(Error::Truncated {
            what: "dynamic header",
            offset: 0,
        })?;
        if f.slice(field::COOKIE.start, field::COOKIE.len()) != COOKIE {
            return Err(Error::BadMagic {
                what: "dynamic header cookie \"cxsparse\"",
            });
        }
        let block_size = f.be32(field::BLOCK_SIZE.start);
        if block_size < 512 || !block_size.is_power_of_two() || block_size > MAX_BLOCK_SIZE {
            return Err(Error::Invalid {
                field: "dynamic header block size",
                offset: field::BLOCK_SIZE.start as u64,
                reason: format!(
                    "{block_size} is not a power of two between 512 and {MAX_BLOCK_SIZE}"
                ),
            });
        }
        let max_table_entries = f.be32(field::MAX_TABLE_ENTRIES.start);
        if max_table_entries > MAX_TABLE_ENTRIES {
            return Err(Error::Invalid {
                field: "dynamic header max table entries",
                offset: field::MAX_TABLE_ENTRIES.start as u64,
                reason: format!("{max_table_entries:#x} is more than the limit {MAX_TABLE_ENTRIES:#x} (2 TiB of 512 KiB blocks)"),
            });
        }
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id
            .copy_from_slice(f.slice(field::PARENT_UNIQUE_ID.start, field::PARENT_UNIQUE_ID.len()));
        let name_units: Vec<u16> = f
            .slice(field::PARENT_NAME.start, field::PARENT_NAME.len())
            .as_chunks::<2>()
            .0
            .iter()
            .map(|c| u16::from_be_bytes(*c))
            .take_while(|u| *u != 0)
            .collect();
        let mut locators = [EMPTY_LOCATOR; LOCATOR_SLOTS];
        for (i, slot) in locators.iter_mut().enumerate() {
            let at = field::LOCATORS + i * field::LOCATOR_SIZE;
            *slot = Locator {
                platform: PlatformCode::from_u32(f.be32(at)),
                data_space: f.be32(at + 4),
                data_length: f.be32(at + 8),
                data_offset: f.be64(at + 16),
            };
        }
        Ok(DynamicHeader {
            data_offset: f.be64(field::DATA_OFFSET.start),
            table_offset: f.be64(field::TABLE_OFFSET.start),
            version: f.be32(field::VERSION.start),
            max_table_entries,
            block_size,
            checksum: f.be32(field::CHECKSUM.start),
            parent_unique_id,
            parent_timestamp: f.be32(field::PARENT_TIMESTAMP.start),
            parent_name: String::from_utf16_lossy(&name_units),
            locators,
        })
    }

    pub fn checksum_ok(b: &[u8; HEADER_SIZE]) -> bool {
        bytes::be32(b, field::CHECKSUM.start) == Some(super::footer::checksum(b, field::CHECKSUM))
    }

    /// Writes the header with a fresh checksum.
    pub fn emit(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[field::COOKIE].copy_from_slice(COOKIE);
        b[field::DATA_OFFSET].copy_from_slice(&self.data_offset.to_be_bytes());
        b[field::TABLE_OFFSET].copy_from_slice(&self.table_offset.to_be_bytes());
        b[field::VERSION].copy_from_slice(&self.version.to_be_bytes());
        b[field::MAX_TABLE_ENTRIES].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[field::BLOCK_SIZE].copy_from_slice(&self.block_size.to_be_bytes());
        b[field::PARENT_UNIQUE_ID].copy_from_slice(&self.parent_unique_id);
        b[field::PARENT_TIMESTAMP].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        let mut at = field::PARENT_NAME.start;
        for unit in self.parent_name.encode_utf16() {
            if at + 2 > field::PARENT_NAME.end {
                break;
            }
            b[at..at + 2].copy_from_slice(&unit.to_be_bytes());
            at += 2;
        }
        for (i, l) in self.locators.iter().enumerate() {
            let at = field::LOCATORS + i * field::LOCATOR_SIZE;
            b[at..at + 4].copy_from_slice(&l.platform.to_u32().to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.data_length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.data_offset.to_be_bytes());
        }
        let sum = super::footer::checksum(&b, field::CHECKSUM);
        b[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap in front of each block, padded to whole sectors.
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }

    /// A fresh header for a new dynamic or differencing image.
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> DynamicHeader {
        DynamicHeader {
            data_offset: u64::MAX,
            table_offset,
            version: HEADER_VERSION,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: [EMPTY_LOCATOR; LOCATOR_SLOTS],
        }
    }
}

/// Sector bitmap bytes for a block size: one bit per sector, rounded up to 512 bytes.
pub fn bitmap_size(block_size: u32) -> u64 {
    let sectors = u64::from(block_size) / 512;
    sectors.div_ceil(8).div_ceil(512) * 512
}

/// Decodes a locator's data per its platform code into a path string.
pub fn decode_locator_path(platform: PlatformCode, data: &[u8]) -> Option<String> {
    match platform {
        PlatformCode::W2ru | PlatformCode::W2ku => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        PlatformCode::Wi2r | PlatformCode::Wi2k => Some(
            String::from_utf8_lossy(data)
                .trim_end_matches('\0')
                .to_string(),
        ),
        PlatformCode::MacX => {
            let text = String::from_utf8_lossy(data)
                .trim_end_matches('\0')
                .to_string();
            Some(
                text.strip_prefix("file://")
                    .map(str::to_string)
                    .unwrap_or(text),
            )
        }
        _ => None,
    }
}

/// Encodes a path as UTF-16LE (W2ku / W2ru data).
pub fn encode_utf16le(path: &str) -> Vec<u8> {
    path.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_header_round_trip() {
        let mut h = DynamicHeader::new(1536, 3, DEFAULT_BLOCK_SIZE);
        h.parent_name = "base.vhd".into();
        h.locators[0] = Locator {
            platform: PlatformCode::W2ku,
            data_space: 512,
            data_length: 16,
            data_offset: 4096,
        };
        let bytes = h.emit();
        assert!(DynamicHeader::checksum_ok(&bytes));
        let mut back = DynamicHeader::parse(&bytes).unwrap();
        back.checksum = 0;
        assert_eq!(back, h);
    }

    #[test]
    fn vhd_short_dynamic_header_is_an_error_not_a_panic() {
        let bytes = DynamicHeader::new(1536, 3, DEFAULT_BLOCK_SIZE).emit();
        for len in [0, 8, 40, 600, HEADER_SIZE - 1] {
            assert!(matches!(
                DynamicHeader::parse(&bytes[..len]),
                Err(Error::Truncated {
                    what: "dynamic header",
                    ..
                })
            ));
        }
    }

    #[test]
    fn block_size_must_be_a_power_of_two() {
        let mut h = DynamicHeader::new(1536, 3, DEFAULT_BLOCK_SIZE);
        h.block_size = 3 << 20;
        assert!(matches!(
            DynamicHeader::parse(&h.emit()),
            Err(Error::Invalid {
                field: "dynamic header block size",
                ..
            })
        ));
    }

    #[test]
    fn max_table_entries_overflow_is_refused() {
        // afl5.vhd: 0x40000001 entries would overflow a 32-bit table size.
        let mut h = DynamicHeader::new(1536, 3, DEFAULT_BLOCK_SIZE);
        h.max_table_entries = 0x4000_0001;
        assert!(matches!(
            DynamicHeader::parse(&h.emit()),
            Err(Error::Invalid {
                field: "dynamic header max table entries",
                ..
            })
        ));
    }

    #[test]
    fn bitmap_size_is_one_sector_for_2mib_blocks() {
        assert_eq!(bitmap_size(DEFAULT_BLOCK_SIZE), 512);
        assert_eq!(bitmap_size(1 << 30), 512 * 512);
    }

    #[test]
    fn locator_paths_decode_per_platform() {
        let data = encode_utf16le(".\\base.vhd");
        assert_eq!(
            decode_locator_path(PlatformCode::W2ru, &data).unwrap(),
            ".\\base.vhd"
        );
        assert_eq!(
            decode_locator_path(PlatformCode::MacX, b"file:///tmp/a.vhd").unwrap(),
            "/tmp/a.vhd"
        );
    }
}
