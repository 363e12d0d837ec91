//! The overlay's allocation journal: a fixed header, then append-only records, each saying
//! "blocks `[first, first + count)` now hold data in the data file" or "... now read as zeroes".
//!
//! Layout (all little-endian):
//! - header, `HEADER_LEN` bytes: magic `VMCLJRN1`, block size (u32), reserved (u32, 0),
//!   disk size (u64), reserved (u32, 0), CRC-32C of the previous 28 bytes (u32);
//! - records, `RECORD_LEN` bytes each: kind (u8: 1 data, 2 zero), 3 zero bytes, count (u32),
//!   first block (u64), CRC-32C of the previous 16 bytes (u32).
//!
//! A record is appended only after the data it describes was flushed (`fdatasync`), and a FLUSH
//! returns only after the record itself was flushed, so replay in order rebuilds every
//! acknowledged state. A record that fails its checksum ends the replay: it is the torn tail of
//! an append that never completed (and so was never acknowledged); the store truncates it away
//! before appending again. A checksummed record that names blocks outside the disk cannot come
//! from a torn write and is reported as damage instead.

use vmedia_io::bytes::{le32, le64};

/// `VMCLJRN1`: vmedia clone journal, format 1.
pub const MAGIC: [u8; 8] = *b"VMCLJRN1";
pub const HEADER_LEN: usize = 32;
pub const RECORD_LEN: usize = 20;

/// What a record says about its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// The block's bytes are in the overlay's data file at the block's own offset.
    Data,
    /// The block reads as zeroes; nothing is stored for it.
    Zero,
}

impl BlockState {
    fn code(self) -> u8 {
        match self {
            BlockState::Data => 1,
            BlockState::Zero => 2,
        }
    }
    fn from_code(code: u8) -> Option<BlockState> {
        match code {
            1 => Some(BlockState::Data),
            2 => Some(BlockState::Zero),
            _ => None,
        }
    }
}

/// One journal record: `count` blocks from `first` are in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub state: BlockState,
    pub first: u64,
    pub count: u32,
}

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_size: u32,
    pub disk_size: u64,
}

/// A journal as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub header: Header,
    /// The records that passed their checksums, in order.
    pub records: Vec<Record>,
    /// Bytes of the journal that hold the header and those records; anything after is a torn
    /// tail.
    pub valid_len: u64,
}

/// Why a journal cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("the journal does not start with {MAGIC:?}")]
    Magic,
    #[error("the journal header fails its checksum")]
    HeaderChecksum,
    #[error("the journal header's block size {0} is not a power of two from 512 to 16 MiB")]
    BlockSize(u32),
    #[error("record at offset {offset:#x} names blocks {first}..+{count}, outside the disk's {blocks} blocks")]
    OutOfRange {
        offset: u64,
        first: u64,
        count: u32,
        blocks: u64,
    },
}

/// Smallest and largest block sizes a journal may declare: sector size up to a size where
/// read-modify-write of one block stays cheap.
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.block_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Number of blocks covering the disk (the last one may be partial).
    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.block_size.max(1)))
    }
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = self.state.code();
        out[4..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..16].copy_from_slice(&self.first.to_le_bytes());
        let crc = crc32c::crc32c(&out[..16]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes one record; `None` when it is torn (bad checksum, unknown kind, nonzero padding,
    /// empty).
    fn decode(bytes: &[u8]) -> Option<Record> {
        let raw = bytes.get(..RECORD_LEN)?;
        let crc = le32(raw, 16)?;
        if crc32c::crc32c(&raw[..16]) != crc || raw[1..4] != [0, 0, 0] {
            return None;
        }
        let state = BlockState::from_code(raw[0])?;
        let count = le32(raw, 4)?;
        let first = le64(raw, 8)?;
        (count > 0).then_some(Record {
            state,
            first,
            count,
        })
    }
}

/// Encodes records for one append.
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len().saturating_mul(RECORD_LEN));
    for record in records {
        out.extend_from_slice(&record.encode());
    }
    out
}

/// Parses a whole journal: the header must be intact; records are read until the first torn
/// one.
pub fn replay(bytes: &[u8]) -> Result<Replayed, JournalError> {
    if bytes.len() < HEADER_LEN {
        return Err(JournalError::Short { len: bytes.len() });
    }
    if bytes[..8] != MAGIC {
        return Err(JournalError::Magic);
    }
    let crc = le32(bytes, 28).ok_or(JournalError::HeaderChecksum)?;
    if crc32c::crc32c(&bytes[..28]) != crc {
        return Err(JournalError::HeaderChecksum);
    }
    let block_size = le32(bytes, 8).ok_or(JournalError::HeaderChecksum)?;
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(JournalError::BlockSize(block_size));
    }
    let header = Header {
        block_size,
        disk_size: le64(bytes, 16).ok_or(JournalError::HeaderChecksum)?,
    };
    let blocks = header.blocks();
    let mut records = Vec::with_capacity((bytes.len() - HEADER_LEN) / RECORD_LEN);
    let mut at = HEADER_LEN;
    while let Some(record) = bytes.get(at..).and_then(Record::decode) {
        let end = record.first.checked_add(u64::from(record.count));
        if end.is_none_or(|end| end > blocks) {
            return Err(JournalError::OutOfRange {
                offset: at as u64,
                first: record.first,
                count: record.count,
                blocks,
            });
        }
        records.push(record);
        at += RECORD_LEN;
    }
    Ok(Replayed {
        header,
        records,
        valid_len: at as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(records: &[Record]) -> Vec<u8> {
        let mut bytes = Header {
            block_size: 65536,
            disk_size: 10 << 20,
        }
        .encode()
        .to_vec();
        bytes.extend(encode_records(records));
        bytes
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let records = [
            Record {
                state: BlockState::Data,
                first: 3,
                count: 2,
            },
            Record {
                state: BlockState::Zero,
                first: 0,
                count: 160,
            },
        ];
        let mut bytes = journal(&records);
        let whole = replay(&bytes).unwrap();
        assert_eq!(whole.records, records);
        assert_eq!(whole.valid_len, bytes.len() as u64);
        // A half-written third record, then a flipped bit in the second.
        bytes.extend_from_slice(&records[0].encode()[..11]);
        let torn = replay(&bytes).unwrap();
        assert_eq!(torn.records, records);
        assert_eq!(torn.valid_len, (HEADER_LEN + 2 * RECORD_LEN) as u64);
        bytes[HEADER_LEN + RECORD_LEN + 9] ^= 1;
        assert_eq!(replay(&bytes).unwrap().records, records[..1]);
    }

    #[test]
    fn a_checksummed_record_outside_the_disk_is_damage() {
        let bytes = journal(&[Record {
            state: BlockState::Data,
            first: 159,
            count: 2,
        }]);
        assert!(matches!(
            replay(&bytes),
            Err(JournalError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_damaged_header_is_refused() {
        let mut bytes = journal(&[]);
        bytes[17] ^= 1;
        assert_eq!(replay(&bytes), Err(JournalError::HeaderChecksum));
        assert!(matches!(
            replay(&bytes[..10]),
            Err(JournalError::Short { .. })
        ));
    }
}
