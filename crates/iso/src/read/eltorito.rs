//! El Torito boot catalog: validation entry, default entry, sections, and the mkisofs options
//! that would recreate the same boot setup.

use serde::Serialize;
use vmedia_io::bytes::Fields;

use super::error::ReadError;

/// xorriso allows 32 boot images; 4 sectors (256 entries) leave room for extension records.
pub const MAX_BOOT_CATALOG_BYTES: u64 = 4 * 2048;

/// Platform ids of the validation entry and section headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    X86,
    PowerPc,
    Mac,
    Efi,
    Unknown(u8),
}

impl Platform {
    fn from_id(id: u8) -> Platform {
        match id {
            0 => Platform::X86,
            1 => Platform::PowerPc,
            2 => Platform::Mac,
            0xEF => Platform::Efi,
            other => Platform::Unknown(other),
        }
    }

    /// The platform id byte.
    pub fn id(self) -> u8 {
        match self {
            Platform::X86 => 0,
            Platform::PowerPc => 1,
            Platform::Mac => 2,
            Platform::Efi => 0xEF,
            Platform::Unknown(id) => id,
        }
    }
}

/// The boot media type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Emulation {
    NoEmulation,
    Floppy1200K,
    Floppy1440K,
    Floppy2880K,
    HardDisk,
    Unknown(u8),
}

impl Emulation {
    fn from_byte(b: u8) -> Emulation {
        match b & 0x0F {
            0 => Emulation::NoEmulation,
            1 => Emulation::Floppy1200K,
            2 => Emulation::Floppy1440K,
            3 => Emulation::Floppy2880K,
            4 => Emulation::HardDisk,
            other => Emulation::Unknown(other),
        }
    }

    /// The size of an emulated floppy; other types take their size elsewhere.
    pub fn floppy_bytes(self) -> Option<u64> {
        match self {
            Emulation::Floppy1200K => Some(1_228_800),
            Emulation::Floppy1440K => Some(1_474_560),
            Emulation::Floppy2880K => Some(2_949_120),
            _ => None,
        }
    }
}

/// One boot entry (the default entry is index 0).
#[derive(Debug, Clone, Serialize)]
pub struct BootEntryInfo {
    pub index: usize,
    pub platform: Platform,
    pub bootable: bool,
    pub emulation: Emulation,
    pub load_segment: u16,
    pub system_type: u8,
    /// Sectors of 512 bytes the firmware loads.
    pub sector_count: u16,
    /// Where the boot image starts, in 2048-byte blocks.
    pub lba: u32,
    /// The section header's id string (empty for the default entry).
    pub section_id: String,
    /// The file in the tree whose data starts at `lba`, if any.
    pub image_path: Option<String>,
    /// The partition (MBR/GPT number) that starts at `lba`, for images appended outside the tree.
    pub appended_partition: Option<u32>,
    /// The boot image's full size in bytes (from the file, the partition, the floppy type or
    /// the sector count, in that order).
    pub image_size: u64,
    /// The image carries a boot info table (mkisofs -boot-info-table).
    pub boot_info_table: bool,
    /// The image carries GRUB2's patched block address (xorriso --grub2-boot-info).
    pub grub2_boot_info: bool,
}

fn quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl BootEntryInfo {
    /// The mkisofs options (xorriso -as mkisofs syntax) that recreate this entry; the first
    /// entry of a catalog omits `-eltorito-alt-boot`. `image` names the ISO file for images
    /// that live outside the tree.
    pub fn as_mkisofs_args(&self, image: &str) -> Vec<String> {
        let mut args = Vec::new();
        if self.index > 0 {
            args.push("-eltorito-alt-boot".to_string());
        }
        let flag = if self.platform == Platform::Efi {
            "-e"
        } else {
            "-b"
        };
        args.push(flag.to_string());
        let source = match (&self.image_path, self.appended_partition) {
            (Some(p), _) => p.clone(),
            (None, Some(n)) => format!("--interval:appended_partition_{n}:all::"),
            (None, None) => {
                let start = u64::from(self.lba) * 4;
                let end = start + self.image_size.div_ceil(512).max(1) - 1;
                format!("--interval:imported_iso:{start}s-{end}s::{image}")
            }
        };
        args.push(quote(&source));
        match self.emulation {
            Emulation::NoEmulation => args.push("-no-emul-boot".into()),
            Emulation::HardDisk => args.push("-hard-disk-boot".into()),
            _ => {}
        }
        if !self.bootable {
            args.push("-no-boot".into());
        }
        if self.load_segment != 0 && self.load_segment != 0x07C0 {
            args.push("-boot-load-seg".into());
            args.push(self.load_segment.to_string());
        }
        if self.emulation == Emulation::NoEmulation {
            args.push("-boot-load-size".into());
            args.push(self.sector_count.to_string());
        }
        if self.boot_info_table {
            args.push("-boot-info-table".into());
        }
        if self.grub2_boot_info {
            args.push("--grub2-boot-info".into());
        }
        if self.platform != Platform::X86 && self.platform != Platform::Efi {
            args.push("-eltorito-platform".into());
            args.push(format!("{:#04x}", self.platform.id()));
        }
        args
    }
}

/// The boot catalog: where it is, and its entries in order.
#[derive(Debug, Clone, Serialize)]
pub struct BootCatalog {
    pub lba: u32,
    /// The catalog's own path in the tree (mkisofs -c), if it is visible.
    pub catalog_path: Option<String>,
    pub validation_platform: Platform,
    pub id_string: String,
    pub entries: Vec<BootEntryInfo>,
}

impl BootCatalog {
    /// All mkisofs options for the catalog: `-c` then every entry.
    pub fn as_mkisofs_args(&self, image: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.catalog_path {
            Some(p) => {
                args.push("-c".into());
                args.push(quote(p));
            }
            None => args.push("--boot-catalog-hide".into()),
        }
        for e in &self.entries {
            args.extend(e.as_mkisofs_args(image));
        }
        args
    }
}

/// Every catalog record (validation entry, boot entry, section header, extension) is 32 bytes.
const RECORD_BYTES: usize = 32;

/// A boot entry from one 32-byte record at `offset`; a shorter record is an error.
fn entry_from(
    record: &[u8],
    offset: u64,
    index: usize,
    platform: Platform,
    section_id: &str,
) -> Result<BootEntryInfo, ReadError> {
    let b = Fields::new_checked(record, RECORD_BYTES)
        .ok_or_else(|| ReadError::corrupt(offset, "boot catalog entry", "shorter than 32 bytes"))?;
    Ok(BootEntryInfo {
        index,
        platform,
        bootable: b.u8(0) == 0x88,
        emulation: Emulation::from_byte(b.u8(1)),
        load_segment: b.le16(2),
        system_type: b.u8(4),
        sector_count: b.le16(6),
        lba: b.le32(8),
        section_id: section_id.to_string(),
        image_path: None,
        appended_partition: None,
        image_size: 0,
        boot_info_table: false,
        grub2_boot_info: false,
    })
}

/// The 32-byte record at `pos`, when the catalog holds all of it.
fn record_at(buf: &[u8], pos: usize) -> Option<Fields<'_>> {
    Fields::new_checked(buf.get(pos..)?, RECORD_BYTES)
}

/// Parses catalog bytes read at `offset` (up to `MAX_BOOT_CATALOG_BYTES`).
pub(crate) fn parse_catalog(buf: &[u8], lba: u32, offset: u64) -> Result<BootCatalog, ReadError> {
    let (Some(v), Some(default_entry)) = (record_at(buf, 0), record_at(buf, RECORD_BYTES)) else {
        return Err(ReadError::corrupt(
            offset,
            "boot catalog",
            "shorter than two entries",
        ));
    };
    if v.u8(0) != 1 || v.u8(30) != 0x55 || v.u8(31) != 0xAA {
        return Err(ReadError::corrupt(
            offset,
            "boot catalog validation entry",
            format!(
                "header {:#04x} and key {:02x}{:02x} (want 0x01 and 55aa)",
                v.u8(0),
                v.u8(30),
                v.u8(31)
            ),
        ));
    }
    let sum = (0..RECORD_BYTES)
        .step_by(2)
        .fold(0u16, |acc, at| acc.wrapping_add(v.le16(at)));
    if sum != 0 {
        return Err(ReadError::corrupt(
            offset + 28,
            "boot catalog validation checksum",
            format!("the words sum to {sum:#06x}, not 0"),
        ));
    }
    let validation_platform = Platform::from_id(v.u8(1));
    let id_string = super::volume::ascii_field(v.slice(4, 24));
    let mut entries = vec![entry_from(
        default_entry.bytes(),
        offset + RECORD_BYTES as u64,
        0,
        validation_platform,
        "",
    )?];
    let mut pos = 2 * RECORD_BYTES;
    'sections: while let Some(header) = record_at(buf, pos) {
        if header.u8(0) != 0x90 && header.u8(0) != 0x91 {
            // 0x00 ends the catalog; anything else is ignored like the firmware would.
            break;
        }
        let last = header.u8(0) == 0x91;
        let platform = Platform::from_id(header.u8(1));
        let count = usize::from(header.le16(2));
        let section_id = super::volume::ascii_field(header.slice(4, 28));
        pos += RECORD_BYTES;
        for _ in 0..count {
            let Some(e) = record_at(buf, pos) else {
                return Err(ReadError::limit(
                    offset + pos as u64,
                    "MAX_BOOT_CATALOG_BYTES",
                    (pos + RECORD_BYTES) as u64,
                    MAX_BOOT_CATALOG_BYTES,
                ));
            };
            let mut more_extensions = e.u8(1) & 0x20 != 0;
            entries.push(entry_from(
                e.bytes(),
                offset + pos as u64,
                entries.len(),
                platform,
                &section_id,
            )?);
            pos += RECORD_BYTES;
            // Extension records (0x44) continue the selection criteria; skipped.
            while more_extensions {
                let Some(extension) = record_at(buf, pos).filter(|x| x.u8(0) == 0x44) else {
                    break;
                };
                more_extensions = extension.u8(1) & 0x20 != 0;
                pos += RECORD_BYTES;
            }
        }
        if last {
            break 'sections;
        }
    }
    Ok(BootCatalog {
        lba,
        catalog_path: None,
        validation_platform,
        id_string,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation(platform: u8) -> [u8; 32] {
        let mut v = [0u8; 32];
        v[0] = 1;
        v[1] = platform;
        v[30] = 0x55;
        v[31] = 0xAA;
        let sum = v.chunks_exact(2).fold(0u16, |a, w| {
            a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        v[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        v
    }

    fn catalog() -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        buf[0..32].copy_from_slice(&validation(0));
        buf[32] = 0x88;
        buf[38] = 4;
        buf[40..44].copy_from_slice(&30u32.to_le_bytes());
        buf[64] = 0x91;
        buf[65] = 0xEF;
        buf[66] = 1;
        buf[96] = 0x88;
        buf[102] = 0;
        buf[104..108].copy_from_slice(&40u32.to_le_bytes());
        buf
    }

    #[test]
    fn parses_default_and_efi_section() {
        let c = parse_catalog(&catalog(), 20, 0).unwrap();
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.entries[0].platform, Platform::X86);
        assert_eq!(c.entries[0].sector_count, 4);
        assert_eq!(c.entries[1].platform, Platform::Efi);
        assert_eq!(c.entries[1].lba, 40);
    }

    #[test]
    fn validation_checksum_mismatch_is_an_error() {
        let mut buf = catalog();
        buf[4] = b'X';
        let err = parse_catalog(&buf, 20, 0x1000).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn section_count_past_catalog_is_a_limit_error() {
        let mut buf = catalog();
        buf[66..68].copy_from_slice(&5000u16.to_le_bytes());
        assert!(parse_catalog(&buf, 20, 0).is_err());
    }

    #[test]
    fn truncated_catalog_is_an_error_not_a_panic() {
        // Regression: the catalog parser indexed records without checking the buffer's
        // length; every prefix of a valid catalog must give an error or a catalog.
        let full = catalog();
        for len in 0..200 {
            let result = parse_catalog(&full[..len], 20, 0x1000);
            if len < 64 {
                let err = result.unwrap_err();
                assert!(
                    err.to_string().contains("shorter than two entries"),
                    "{err}"
                );
            } else if len < 128 {
                // The section header or its entry is cut off: an error, or the default only.
                if let Ok(c) = result {
                    assert_eq!(c.entries.len(), 1, "{len}");
                }
            } else {
                assert_eq!(result.unwrap().entries.len(), 2, "{len}");
            }
        }
        assert!(entry_from(&full[32..40], 32, 0, Platform::X86, "").is_err());
    }

    #[test]
    fn mkisofs_args_for_bios_and_efi() {
        let mut c = parse_catalog(&catalog(), 20, 0).unwrap();
        c.catalog_path = Some("/boot.cat".into());
        c.entries[0].image_path = Some("/isolinux/isolinux.bin".into());
        c.entries[0].boot_info_table = true;
        c.entries[0].image_size = 40_000;
        c.entries[1].image_path = Some("/efi.img".into());
        c.entries[1].image_size = 1_474_560;
        let args = c.as_mkisofs_args("x.iso").join(" ");
        assert_eq!(
            args,
            "-c /boot.cat -b /isolinux/isolinux.bin -no-emul-boot -boot-load-size 4 -boot-info-table \
             -eltorito-alt-boot -e /efi.img -no-emul-boot -boot-load-size 0"
        );
    }
}
