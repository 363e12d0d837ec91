//! The VHDX metadata region: its table, and the system items (file parameters, virtual disk
//! size, logical/physical sector size, page 83 data, parent locator).
//!
//! Every item offset and length is checked against the region before it is read.

use super::header::{guid, guid_field, put_guid};
use super::Error;
use uuid::Uuid;
use vmedia_io::bytes::Fields;

pub const TABLE_SIGNATURE: &[u8; 8] = b"metadata";
/// The metadata table occupies the first 64 KiB of the region.
pub const TABLE_SIZE: usize = 64 * 1024;
/// Entries allowed by the spec.
pub const MAX_ENTRIES: u16 = 2047;
/// Largest metadata region read (bytes): the spec caps it; real ones are 1 MiB.
pub const MAX_REGION_BYTES: u32 = 64 << 20;
/// Largest parent locator item (bytes); Hyper-V writes under 1 KiB.
pub const MAX_LOCATOR_BYTES: u32 = 1 << 20;
/// Key/value pairs allowed in a parent locator.
pub const MAX_LOCATOR_ENTRIES: u16 = 256;
/// Parent locator header: locator type GUID, reserved u16, key/value count u16.
const LOCATOR_HEADER_LEN: usize = 20;
/// One parent locator key/value entry: two u32 offsets and two u16 lengths.
const LOCATOR_ENTRY_LEN: usize = 12;

pub const FILE_PARAMETERS: Uuid = Uuid::from_u128(0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B);
pub const VIRTUAL_DISK_SIZE: Uuid = Uuid::from_u128(0x2FA54224_CD1B_4876_B211_5DBED83BF4B8);
pub const PAGE_83_DATA: Uuid = Uuid::from_u128(0xBECA12AB_B2E6_4523_93EF_C309E000C746);
pub const LOGICAL_SECTOR_SIZE: Uuid = Uuid::from_u128(0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F);
pub const PHYSICAL_SECTOR_SIZE: Uuid = Uuid::from_u128(0xCDA348C7_445D_4471_9CC9_E9885251C556);
pub const PARENT_LOCATOR: Uuid = Uuid::from_u128(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C);
/// The one parent locator type defined (VHDX parent).
pub const VHDX_PARENT_LOCATOR_TYPE: Uuid = Uuid::from_u128(0xB04AEFB7_D19E_4A81_B789_25B8E9445913);

/// Block sizes the spec allows.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest virtual disk (64 TiB, the spec's limit).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// One entry of the metadata table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub item: Uuid,
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
}

/// The parent locator's key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParentLocator {
    pub locator_type: Uuid,
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn parse(b: &[u8]) -> Result<ParentLocator, Error> {
        let head = Fields::new_checked(b, LOCATOR_HEADER_LEN).ok_or(Error::Truncated {
            what: "parent locator",
            offset: 0,
        })?;
        let locator_type = guid_field(&head, 0);
        let count = head.le16(18);
        if count > MAX_LOCATOR_ENTRIES {
            return Err(Error::Invalid {
                field: "parent locator key/value count",
                offset: 18,
                reason: format!("{count} is more than {MAX_LOCATOR_ENTRIES}"),
            });
        }
        let mut entries = Vec::with_capacity(usize::from(count));
        for i in 0..usize::from(count) {
            let at = 20 + i * 12;
            let raw = b
                .get(at..)
                .and_then(|rest| Fields::new_checked(rest, LOCATOR_ENTRY_LEN))
                .ok_or(Error::Truncated {
                    what: "parent locator entry",
                    offset: at as u64,
                })?;
            let key_offset = raw.le32(0) as usize;
            let value_offset = raw.le32(4) as usize;
            let key_length = usize::from(raw.le16(8));
            let value_length = usize::from(raw.le16(10));
            let text = |off: usize, len: usize| -> Result<String, Error> {
                let bytes = off.checked_add(len).and_then(|end| b.get(off..end)).ok_or(
                    Error::Truncated {
                        what: "parent locator string",
                        offset: off as u64,
                    },
                )?;
                let units: Vec<u16> = bytes
                    .as_chunks::<2>()
                    .0
                    .iter()
                    .map(|c| u16::from_le_bytes(*c))
                    .collect();
                Ok(String::from_utf16_lossy(&units))
            };
            entries.push((
                text(key_offset, key_length)?,
                text(value_offset, value_length)?,
            ));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let header = 20 + 12 * self.entries.len();
        let mut b = vec![0u8; header];
        put_guid(&mut b, 0, &self.locator_type);
        b[18..20].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let key: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let value: Vec<u8> = v.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let key_offset = b.len();
            b.extend_from_slice(&key);
            let value_offset = b.len();
            b.extend_from_slice(&value);
            let at = 20 + i * 12;
            b[at..at + 4].copy_from_slice(&(key_offset as u32).to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&(value_offset as u32).to_le_bytes());
            b[at + 8..at + 10].copy_from_slice(&(key.len() as u16).to_le_bytes());
            b[at + 10..at + 12].copy_from_slice(&(value.len() as u16).to_le_bytes());
        }
        b
    }
}

/// The system metadata a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub page83: Option<Uuid>,
    pub parent_locator: Option<ParentLocator>,
}

fn item<'a>(region: &'a [u8], e: &Entry) -> Result<&'a [u8], Error> {
    let start = e.offset as usize;
    start
        .checked_add(e.length as usize)
        .and_then(|end| region.get(start..end))
        .ok_or(Error::Invalid {
            field: "metadata item",
            offset: u64::from(e.offset),
            reason: format!(
                "item {} ({} bytes) lies outside the metadata region",
                e.item, e.length
            ),
        })
}

impl Metadata {
    /// Parses the table and system items from the whole metadata region.
    pub fn parse(region: &[u8]) -> Result<Metadata, Error> {
        let table = Fields::new_checked(region, TABLE_SIZE).ok_or(Error::Truncated {
            what: "metadata table",
            offset: 0,
        })?;
        if table.slice(0, 8) != TABLE_SIGNATURE {
            return Err(Error::BadMagic {
                what: "metadata table signature \"metadata\"",
            });
        }
        let count = table.le16(10);
        if count > MAX_ENTRIES {
            return Err(Error::Invalid {
                field: "metadata entry count",
                offset: 10,
                reason: format!("{count} is more than {MAX_ENTRIES}"),
            });
        }
        let mut entries = Vec::with_capacity(usize::from(count));
        // 32 + MAX_ENTRIES * 32 = TABLE_SIZE: every entry lies inside the view.
        for i in 0..usize::from(count) {
            let at = 32 + i * 32;
            let flags = table.le32(at + 24);
            entries.push(Entry {
                item: guid_field(&table, at),
                offset: table.le32(at + 16),
                length: table.le32(at + 20),
                is_user: flags & 1 != 0,
                is_virtual_disk: flags & 2 != 0,
                is_required: flags & 4 != 0,
            });
        }
        let find = |id: &Uuid| entries.iter().find(|e| !e.is_user && e.item == *id);
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE_83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ];
        if let Some(unknown) = entries
            .iter()
            .find(|e| e.is_required && !e.is_user && !known.contains(&e.item))
        {
            return Err(Error::Unsupported {
                what: format!(
                    "required metadata item {} this reader does not know",
                    unknown.item
                ),
            });
        }
        let need = |id: &Uuid, name: &'static str, len: usize| -> Result<Fields<'_>, Error> {
            let e = find(id).ok_or(Error::Invalid {
                field: name,
                offset: 0,
                reason: "missing from the metadata table".into(),
            })?;
            let bytes = item(region, e)?;
            Fields::new_checked(bytes, len).ok_or_else(|| Error::Invalid {
                field: name,
                offset: u64::from(e.offset),
                reason: format!("item is {} bytes, needs {len}", bytes.len()),
            })
        };
        let params = need(&FILE_PARAMETERS, "file parameters", 8)?;
        let block_size = params.le32(0);
        let flags = params.le32(4);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(Error::Invalid {
                field: "file parameters block size",
                offset: 0,
                reason: format!("{block_size} is not a power of two between 1 MiB and 256 MiB"),
            });
        }
        let virtual_size = need(&VIRTUAL_DISK_SIZE, "virtual disk size", 8)?.le64(0);
        let logical_sector_size = need(&LOGICAL_SECTOR_SIZE, "logical sector size", 4)?.le32(0);
        let physical_sector_size = need(&PHYSICAL_SECTOR_SIZE, "physical sector size", 4)?.le32(0);
        if logical_sector_size != 512 && logical_sector_size != 4096 {
            return Err(Error::Invalid {
                field: "logical sector size",
                offset: 0,
                reason: format!("{logical_sector_size} is not 512 or 4096"),
            });
        }
        if physical_sector_size != 512 && physical_sector_size != 4096 {
            return Err(Error::Invalid {
                field: "physical sector size",
                offset: 0,
                reason: format!("{physical_sector_size} is not 512 or 4096"),
            });
        }
        if virtual_size > MAX_VIRTUAL_SIZE
            || !virtual_size.is_multiple_of(u64::from(logical_sector_size))
        {
            return Err(Error::Invalid {
                field: "virtual disk size",
                offset: 0,
                reason: format!(
                    "{virtual_size} is over 64 TiB or not a multiple of the logical sector size"
                ),
            });
        }
        let page83 = match find(&PAGE_83_DATA) {
            Some(e) => guid(item(region, e)?, 0),
            None => None,
        };
        let has_parent = flags & 2 != 0;
        let parent_locator = match find(&PARENT_LOCATOR) {
            Some(e) if e.length <= MAX_LOCATOR_BYTES => {
                Some(ParentLocator::parse(item(region, e)?)?)
            }
            Some(e) => {
                return Err(Error::Invalid {
                    field: "parent locator",
                    offset: u64::from(e.offset),
                    reason: format!("{} bytes is more than {MAX_LOCATOR_BYTES}", e.length),
                })
            }
            None => None,
        };
        Ok(Metadata {
            block_size,
            leave_blocks_allocated: flags & 1 != 0,
            has_parent,
            virtual_size,
            logical_sector_size,
            physical_sector_size,
            page83,
            parent_locator,
        })
    }

    /// Writes a whole metadata region of `region_size` bytes (table + items).
    pub fn emit(&self, region_size: usize) -> Vec<u8> {
        let mut region = vec![0u8; region_size];
        region[0..8].copy_from_slice(TABLE_SIGNATURE);
        let mut items: Vec<(Uuid, Vec<u8>, u32)> = Vec::new();
        let mut params = Vec::new();
        params.extend_from_slice(&self.block_size.to_le_bytes());
        let flags = u32::from(self.leave_blocks_allocated) | (u32::from(self.has_parent) << 1);
        params.extend_from_slice(&flags.to_le_bytes());
        // Flags: IsRequired (4), plus IsVirtualDisk (2) for items describing the virtual disk.
        items.push((FILE_PARAMETERS, params, 4));
        items.push((
            VIRTUAL_DISK_SIZE,
            self.virtual_size.to_le_bytes().to_vec(),
            6,
        ));
        if let Some(p) = &self.page83 {
            let mut b = [0u8; 16];
            put_guid(&mut b, 0, p);
            items.push((PAGE_83_DATA, b.to_vec(), 6));
        }
        items.push((
            LOGICAL_SECTOR_SIZE,
            self.logical_sector_size.to_le_bytes().to_vec(),
            6,
        ));
        items.push((
            PHYSICAL_SECTOR_SIZE,
            self.physical_sector_size.to_le_bytes().to_vec(),
            6,
        ));
        if let Some(p) = &self.parent_locator {
            items.push((PARENT_LOCATOR, p.emit(), 4));
        }
        region[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut data_at = TABLE_SIZE;
        for (i, (id, bytes, flags)) in items.iter().enumerate() {
            let at = 32 + i * 32;
            put_guid(&mut region, at, id);
            region[at + 16..at + 20].copy_from_slice(&(data_at as u32).to_le_bytes());
            region[at + 20..at + 24].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            region[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
            region[data_at..data_at + bytes.len()].copy_from_slice(bytes);
            // Items start on 4 KiB boundaries like Hyper-V lays them out.
            data_at += bytes.len().div_ceil(4096).max(1) * 4096;
        }
        region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata {
            block_size: 32 << 20,
            leave_blocks_allocated: false,
            has_parent: true,
            virtual_size: 1 << 30,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            page83: Some(Uuid::from_u128(9)),
            parent_locator: Some(ParentLocator {
                locator_type: VHDX_PARENT_LOCATOR_TYPE,
                entries: vec![
                    (
                        "parent_linkage".into(),
                        "{00000000-0000-0000-0000-000000000001}".into(),
                    ),
                    ("relative_path".into(), ".\\base.vhdx".into()),
                ],
            }),
        }
    }

    #[test]
    fn metadata_round_trip() {
        let m = metadata();
        assert_eq!(Metadata::parse(&m.emit(1 << 20)).unwrap(), m);
    }

    #[test]
    fn block_size_must_be_in_range() {
        let mut m = metadata();
        m.block_size = 4096;
        assert!(matches!(
            Metadata::parse(&m.emit(1 << 20)),
            Err(Error::Invalid {
                field: "file parameters block size",
                ..
            })
        ));
    }

    #[test]
    fn logical_sector_size_must_be_512_or_4096() {
        let mut m = metadata();
        m.logical_sector_size = 1024;
        assert!(matches!(
            Metadata::parse(&m.emit(1 << 20)),
            Err(Error::Invalid {
                field: "logical sector size",
                ..
            })
        ));
    }

    #[test]
    fn item_outside_region_is_refused() {
        let mut region = metadata().emit(1 << 20);
        // First entry's length field: make it run past the end.
        region[32 + 20..32 + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Metadata::parse(&region),
            Err(Error::Invalid {
                field: "metadata item",
                ..
            })
        ));
    }

    #[test]
    fn locator_string_outside_item_is_refused() {
        let mut b = metadata().parent_locator.unwrap().emit();
        b[20..24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(ParentLocator::parse(&b).is_err());
    }
}
