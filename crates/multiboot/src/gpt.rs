//! GUID partition tables with a protective MBR: written for new sticks, read back (checked
//! like any untrusted input) by `ls`, `add`, `remove` and `default`.

use vmedia_io::bytes::{le32, le64};

use crate::MultibootError;

pub const SECTOR: u64 = 512;
/// 128 entries of 128 bytes: what every partitioning tool writes, 32 sectors.
const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// The MBR, the header and the entries come before the first usable sector.
pub const FIRST_USABLE: u64 = 2 + ENTRY_SECTORS;
/// The backup entries and header after the last usable sector.
pub const TRAILER_SECTORS: u64 = 1 + ENTRY_SECTORS;
const HEADER_SIZE: u32 = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// MBR boot code area: everything before the disk signature.
pub const MBR_CODE_BYTES: usize = 440;

/// GPT partition type GUIDs (textual form).
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const TYPE_BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
/// vmedia's own type for the partition holding the stick's record (chosen once at random).
pub const TYPE_VMEDIA_RECORD: &str = "5c481863-7827-41be-b0b0-5f76ab57aa24";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: uuid::Uuid,
    pub guid: uuid::Uuid,
    /// First and last sector, inclusive (as GPT records them).
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn byte_offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn byte_len(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

fn guid(text: &str) -> uuid::Uuid {
    // The constants above are valid; a typo would fail every unit test.
    uuid::Uuid::parse_str(text).unwrap_or_default()
}

pub fn type_guid(text: &str) -> uuid::Uuid {
    guid(text)
}

/// The protective MBR (one 0xEE entry over the whole disk) carrying `boot_code`.
pub fn protective_mbr(
    boot_code: &[u8; MBR_CODE_BYTES],
    total_sectors: u64,
    signature: u32,
) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[..MBR_CODE_BYTES].copy_from_slice(boot_code);
    mbr[440..444].copy_from_slice(&signature.to_le_bytes());
    let e = &mut mbr[446..462];
    e[0] = 0x00;
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn entries_bytes(parts: &[Partition]) -> Vec<u8> {
    let mut out = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.guid.to_bytes_le());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

fn header(
    disk_guid: uuid::Uuid,
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    total_sectors: u64,
    entries_crc: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
    h[48..56].copy_from_slice(&(total_sectors - TRAILER_SECTORS - 1).to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The primary (at sector 1) and backup (at the end) tables: `(byte offset, bytes)` pairs.
pub fn tables(
    disk_guid: uuid::Uuid,
    parts: &[Partition],
    total_sectors: u64,
) -> Vec<(u64, Vec<u8>)> {
    let entries = entries_bytes(parts);
    let crc = crc32fast::hash(&entries);
    let last = total_sectors - 1;
    let backup_entries = last - ENTRY_SECTORS;
    let primary = header(disk_guid, 1, last, 2, total_sectors, crc);
    let backup = header(disk_guid, last, 1, backup_entries, total_sectors, crc);
    vec![
        (SECTOR, primary.to_vec()),
        (2 * SECTOR, entries.clone()),
        (backup_entries * SECTOR, entries),
        (last * SECTOR, backup.to_vec()),
    ]
}

/// Positional reads of the disk (offset, buffer to fill).
pub type ReadSectors<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), MultibootError> + 'a;

/// Reads and checks the primary table: signature, header and entry CRCs, every partition
/// inside the usable range of a disk of `disk_bytes`.
pub fn read(read_at: &ReadSectors<'_>, disk_bytes: u64) -> Result<Vec<Partition>, MultibootError> {
    let bad = |offset: u64, problem: &str| MultibootError::BadTable {
        offset,
        problem: problem.to_string(),
    };
    let mut h = [0u8; 512];
    read_at(SECTOR, &mut h)?;
    if &h[0..8] != SIGNATURE {
        return Err(bad(
            SECTOR,
            "no GPT header (signature \"EFI PART\" missing)",
        ));
    }
    let size = le32(&h, 12).unwrap_or(0);
    if size != HEADER_SIZE {
        return Err(bad(SECTOR + 12, "header size is not 92"));
    }
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check[..HEADER_SIZE as usize]) != le32(&h, 16).unwrap_or(0) {
        return Err(bad(SECTOR + 16, "header CRC32 does not match"));
    }
    let entries_lba = le64(&h, 72).unwrap_or(0);
    let count = le32(&h, 80).unwrap_or(0);
    let entry_size = le32(&h, 84).unwrap_or(0);
    if count != ENTRY_COUNT || entry_size != ENTRY_SIZE {
        return Err(bad(
            SECTOR + 80,
            "not 128 entries of 128 bytes, as vmedia writes",
        ));
    }
    let entries_offset = entries_lba
        .checked_mul(SECTOR)
        .ok_or_else(|| bad(SECTOR + 72, "entry LBA overflows"))?;
    let table_bytes = u64::from(count * entry_size);
    if entries_offset
        .checked_add(table_bytes)
        .is_none_or(|end| end > disk_bytes)
    {
        return Err(bad(SECTOR + 72, "entries lie past the end of the disk"));
    }
    let mut entries = vec![0u8; table_bytes as usize];
    read_at(entries_offset, &mut entries)?;
    if crc32fast::hash(&entries) != le32(&h, 88).unwrap_or(0) {
        return Err(bad(SECTOR + 88, "partition entries CRC32 does not match"));
    }
    let disk_sectors = disk_bytes / SECTOR;
    let mut parts = Vec::new();
    for i in 0..count as usize {
        let e = &entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let at = entries_offset + (i as u64) * u64::from(ENTRY_SIZE);
        let mut type_bytes = [0u8; 16];
        type_bytes.copy_from_slice(&e[0..16]);
        let mut guid_bytes = [0u8; 16];
        guid_bytes.copy_from_slice(&e[16..32]);
        let first_lba = le64(e, 32).unwrap_or(0);
        let last_lba = le64(e, 40).unwrap_or(0);
        if first_lba < FIRST_USABLE || last_lba < first_lba || last_lba >= disk_sectors {
            return Err(bad(at + 32, "partition lies outside the disk"));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            type_guid: uuid::Uuid::from_bytes_le(type_bytes),
            guid: uuid::Uuid::from_bytes_le(guid_bytes),
            first_lba,
            last_lba,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tables_read_back() {
        let total = 8192u64;
        let parts = vec![Partition {
            type_guid: type_guid(TYPE_ESP),
            guid: uuid::Uuid::from_u128(7),
            first_lba: 2048,
            last_lba: 4095,
            name: "ESP".into(),
        }];
        let mut disk = vec![0u8; (total * SECTOR) as usize];
        for (at, bytes) in tables(uuid::Uuid::from_u128(9), &parts, total) {
            disk[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        let read_at = |at: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&disk[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        assert_eq!(read(&read_at, total * SECTOR).unwrap(), parts);
    }

    #[test]
    fn a_flipped_entry_byte_is_refused() {
        let total = 8192u64;
        let parts = vec![Partition {
            type_guid: type_guid(TYPE_ESP),
            guid: uuid::Uuid::from_u128(7),
            first_lba: 2048,
            last_lba: 4095,
            name: "ESP".into(),
        }];
        let mut disk = vec![0u8; (total * SECTOR) as usize];
        for (at, bytes) in tables(uuid::Uuid::from_u128(9), &parts, total) {
            disk[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        disk[2 * 512 + 40] ^= 1;
        let read_at = |at: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&disk[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        let err = read(&read_at, total * SECTOR).unwrap_err();
        assert!(err.to_string().contains("CRC32"), "{err}");
    }
}
