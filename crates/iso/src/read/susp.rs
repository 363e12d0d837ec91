//! SUSP (System Use Sharing Protocol) and Rock Ridge (RRIP) fields of a directory record,
//! following CE continuation areas with a bounded, loop-checked chain.

use serde::Serialize;

use super::error::ReadError;
use vmedia_io::bytes::Fields;

use super::volume::{parse_decimal_date, parse_record_date, Timestamp};
use super::{Source, SECTOR_BYTES};

/// Real writers need one or two continuation areas (long names, symlinks, ACLs); a longer
/// chain is a loop or an attack.
pub const MAX_CE_CHAIN: usize = 64;
/// A continuation area is read into memory; real ones are below one block.
pub const MAX_CE_AREA_BYTES: u32 = 64 * 1024;
/// Longer than any filesystem allows (NAME_MAX is 255); bounds NM continuation growth.
pub const MAX_NAME_BYTES: usize = 4096;
/// Above PATH_MAX (4096) with room; bounds SL continuation growth.
pub const MAX_SYMLINK_TARGET_BYTES: usize = 64 * 1024;

/// zisofs compression parameters from a ZF field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ZisofsInfo {
    /// Header size in bytes (field value times 4).
    pub header_size: u32,
    /// log2 of the compression block size (15..=17).
    pub block_size_log2: u8,
    /// The uncompressed file size.
    pub uncompressed_size: u32,
}

/// The POSIX attributes of a PX field.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Posix {
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub inode: Option<u32>,
}

/// What the SUSP fields of one record say.
#[derive(Debug, Clone, Default)]
pub(crate) struct SystemUse {
    /// SP seen: SUSP is in use; the value is the number of bytes to skip in other records.
    pub sp_skip: Option<u8>,
    /// Extension identifiers from ER fields.
    pub extensions: Vec<String>,
    /// Any Rock Ridge field at all (PX, NM, SL, TF, PN, CL, PL, RE, RR, ZF).
    pub any_rock_ridge: bool,
    pub name: Option<String>,
    /// NM with the CURRENT or PARENT flag: this record is "." or "..".
    pub name_is_dot: bool,
    pub posix: Option<Posix>,
    pub device: Option<(u32, u32)>,
    pub symlink: Option<String>,
    pub created: Option<Timestamp>,
    pub modified: Option<Timestamp>,
    pub accessed: Option<Timestamp>,
    pub attributes_changed: Option<Timestamp>,
    pub child_link: Option<u32>,
    pub parent_link: Option<u32>,
    pub relocated: bool,
    pub zisofs: Option<ZisofsInfo>,
}

struct SymlinkBuilder {
    target: String,
    need_separator: bool,
    started: bool,
}

/// Parses the system use area `area` of the record at `record_offset`, following CE fields.
pub(crate) fn parse_system_use(
    source: &Source,
    area: &[u8],
    record_offset: u64,
) -> Result<SystemUse, ReadError> {
    let mut out = SystemUse::default();
    let mut name_bytes: Vec<u8> = Vec::new();
    let mut name_continues = false;
    let mut link: Option<SymlinkBuilder> = None;
    let mut current: Vec<u8> = area.to_vec();
    let mut current_offset = record_offset;
    let mut seen_areas: Vec<(u32, u32)> = Vec::new();
    loop {
        let mut next_area: Option<(u32, u32, u32)> = None;
        let mut pos = 0usize;
        while current.len().saturating_sub(pos) >= 4 {
            let entry_offset = current_offset + pos as u64;
            let sig = [current[pos], current[pos + 1]];
            let len = usize::from(current[pos + 2]);
            if len == 0 && sig == [0, 0] {
                // Zero padding after the last entry.
                break;
            }
            if len < 4 || pos + len > current.len() {
                return Err(ReadError::corrupt(
                    entry_offset + 2,
                    "SUSP entry length",
                    format!(
                        "entry {:?} claims {len} bytes but {} remain in the system use area",
                        String::from_utf8_lossy(&sig),
                        current.len() - pos
                    ),
                ));
            }
            let data = &current[pos + 4..pos + len];
            match &sig {
                b"SP" if data.len() >= 3 && data[0] == 0xBE && data[1] == 0xEF => {
                    out.sp_skip = Some(data[2]);
                }
                b"ST" => break,
                b"CE" => {
                    let Some(f) = Fields::new_checked(data, 24) else {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "CE entry",
                            "shorter than 28 bytes",
                        ));
                    };
                    next_area = Some((f.le32(0), f.le32(8), f.le32(16)));
                }
                b"ER" if data.len() >= 4 => {
                    let id_len = usize::from(data[0]);
                    if let Some(id) = data.get(4..4 + id_len) {
                        out.extensions
                            .push(String::from_utf8_lossy(id).into_owned());
                    }
                }
                b"RR" => out.any_rock_ridge = true,
                b"PX" => {
                    out.any_rock_ridge = true;
                    let Some(f) = Fields::new_checked(data, 32) else {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "PX entry",
                            "shorter than 36 bytes",
                        ));
                    };
                    out.posix = Some(Posix {
                        mode: f.le32(0),
                        nlink: f.le32(8),
                        uid: f.le32(16),
                        gid: f.le32(24),
                        // The serial number is optional (RRIP 1.12 added it): 40 bytes.
                        inode: Fields::new_checked(data, 40).map(|f| f.le32(32)),
                    });
                }
                b"PN" => {
                    out.any_rock_ridge = true;
                    let Some(f) = Fields::new_checked(data, 16) else {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "PN entry",
                            "shorter than 20 bytes",
                        ));
                    };
                    let high = f.le32(0);
                    let low = f.le32(8);
                    // Old writers store the whole dev_t in the low word; split it like Linux.
                    out.device = Some(if high == 0 && (low & !0xff) != 0 {
                        (low >> 8, low & 0xff)
                    } else {
                        (high, low)
                    });
                }
                b"NM" => {
                    out.any_rock_ridge = true;
                    if data.is_empty() {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "NM entry",
                            "no flags byte",
                        ));
                    }
                    let flags = data[0];
                    if flags & 0x06 != 0 {
                        out.name_is_dot = true;
                    } else {
                        if name_bytes.len() + data.len() - 1 > MAX_NAME_BYTES {
                            return Err(ReadError::limit(
                                entry_offset,
                                "MAX_NAME_BYTES",
                                (name_bytes.len() + data.len() - 1) as u64,
                                MAX_NAME_BYTES as u64,
                            ));
                        }
                        if !name_continues {
                            name_bytes.clear();
                        }
                        name_bytes.extend_from_slice(&data[1..]);
                        name_continues = flags & 0x01 != 0;
                        out.name = Some(String::new());
                    }
                }
                b"SL" => {
                    out.any_rock_ridge = true;
                    parse_symlink(data, entry_offset, &mut link)?;
                }
                b"TF" => {
                    out.any_rock_ridge = true;
                    parse_times(data, entry_offset, &mut out)?;
                }
                b"CL" => {
                    out.any_rock_ridge = true;
                    let Some(f) = Fields::new_checked(data, 8) else {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "CL entry",
                            "shorter than 12 bytes",
                        ));
                    };
                    out.child_link = Some(f.le32(0));
                }
                b"PL" => {
                    out.any_rock_ridge = true;
                    if let Some(f) = Fields::new_checked(data, 8) {
                        out.parent_link = Some(f.le32(0));
                    }
                }
                b"RE" => {
                    out.any_rock_ridge = true;
                    out.relocated = true;
                }
                b"ZF" => {
                    out.any_rock_ridge = true;
                    let Some(f) = Fields::new_checked(data, 12) else {
                        return Err(ReadError::corrupt(
                            entry_offset,
                            "ZF entry",
                            "shorter than 16 bytes",
                        ));
                    };
                    if f.slice(0, 2) != b"pz" {
                        return Err(ReadError::Unsupported {
                            offset: entry_offset,
                            feature: format!(
                                "compression algorithm {:?} in ZF (only zisofs \"pz\" is known)",
                                String::from_utf8_lossy(f.slice(0, 2))
                            ),
                        });
                    }
                    out.zisofs = Some(ZisofsInfo {
                        header_size: u32::from(f.u8(2)) * 4,
                        block_size_log2: f.u8(3),
                        uncompressed_size: f.le32(4),
                    });
                }
                // SF (sparse), AA/AL (ACLs, xattrs), PD (padding) and unknown signatures are
                // data we do not need; skipped by length.
                _ => {}
            }
            pos += len;
        }
        let Some((lba, offset, length)) = next_area else {
            break;
        };
        if seen_areas.contains(&(lba, offset)) {
            return Err(ReadError::corrupt(
                current_offset,
                "CE continuation",
                format!("loop: the continuation area at block {lba} offset {offset} is referenced twice"),
            ));
        }
        if seen_areas.len() >= MAX_CE_CHAIN {
            return Err(ReadError::limit(
                current_offset,
                "MAX_CE_CHAIN",
                seen_areas.len() as u64 + 1,
                MAX_CE_CHAIN as u64,
            ));
        }
        seen_areas.push((lba, offset));
        if length > MAX_CE_AREA_BYTES {
            return Err(ReadError::limit(
                current_offset,
                "MAX_CE_AREA_BYTES",
                u64::from(length),
                u64::from(MAX_CE_AREA_BYTES),
            ));
        }
        let start = u64::from(lba) * SECTOR_BYTES + u64::from(offset);
        current = source.read_range(start, u64::from(length), "CE continuation area")?;
        current_offset = start;
    }
    if out.name.is_some() {
        out.name = Some(String::from_utf8_lossy(&name_bytes).into_owned());
    }
    if let Some(l) = link {
        // A link made of the ROOT component alone points at "/".
        out.symlink = Some(if l.target.is_empty() && l.started {
            "/".to_string()
        } else {
            l.target
        });
    }
    Ok(out)
}

fn parse_symlink(
    data: &[u8],
    entry_offset: u64,
    link: &mut Option<SymlinkBuilder>,
) -> Result<(), ReadError> {
    if data.is_empty() {
        return Err(ReadError::corrupt(
            entry_offset,
            "SL entry",
            "no flags byte",
        ));
    }
    let builder = link.get_or_insert(SymlinkBuilder {
        target: String::new(),
        need_separator: false,
        started: false,
    });
    let mut pos = 1usize;
    while pos < data.len() {
        if pos + 2 > data.len() {
            return Err(ReadError::corrupt(
                entry_offset + 4 + pos as u64,
                "SL component",
                "truncated component header",
            ));
        }
        let flags = data[pos];
        let len = usize::from(data[pos + 1]);
        let Some(content) = data.get(pos + 2..pos + 2 + len) else {
            return Err(ReadError::corrupt(
                entry_offset + 4 + pos as u64,
                "SL component length",
                format!("{len} bytes past the end of the SL entry"),
            ));
        };
        // Components are joined with "/" as xorriso and Linux do; a ROOT component is an
        // empty name, so a leading one yields "/x" and an inner one "a//x".
        let text: std::borrow::Cow<str> = if flags & 0x02 != 0 {
            ".".into()
        } else if flags & 0x04 != 0 {
            "..".into()
        } else if flags & 0x08 != 0 {
            "".into()
        } else {
            String::from_utf8_lossy(content)
        };
        if builder.started && builder.need_separator {
            builder.target.push('/');
        }
        builder.target.push_str(&text);
        builder.started = true;
        builder.need_separator = flags & 0x01 == 0;
        if builder.target.len() > MAX_SYMLINK_TARGET_BYTES {
            return Err(ReadError::limit(
                entry_offset,
                "MAX_SYMLINK_TARGET_BYTES",
                builder.target.len() as u64,
                MAX_SYMLINK_TARGET_BYTES as u64,
            ));
        }
        pos += 2 + len;
    }
    Ok(())
}

fn parse_times(data: &[u8], entry_offset: u64, out: &mut SystemUse) -> Result<(), ReadError> {
    let Some(&flags) = data.first() else {
        return Err(ReadError::corrupt(
            entry_offset,
            "TF entry",
            "no flags byte",
        ));
    };
    let long = flags & 0x80 != 0;
    let width = if long { 17 } else { 7 };
    let mut pos = 1usize;
    for bit in 0..7u8 {
        if flags & (1 << bit) == 0 {
            continue;
        }
        let Some(raw) = data.get(pos..pos + width) else {
            return Err(ReadError::corrupt(
                entry_offset,
                "TF entry",
                format!("flags {flags:#04x} announce more timestamps than the entry holds"),
            ));
        };
        let time = if long {
            let mut b = [0u8; 17];
            b.copy_from_slice(raw);
            parse_decimal_date(&b)
        } else {
            let mut b = [0u8; 7];
            b.copy_from_slice(raw);
            parse_record_date(&b)
        };
        match bit {
            0 => out.created = time,
            1 => out.modified = time,
            2 => out.accessed = time,
            3 => out.attributes_changed = time,
            _ => {}
        }
        pos += width;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn source() -> Source {
        Source::new(Arc::new(vec![0u8; 4 * 2048])).unwrap()
    }

    fn entry(sig: &[u8; 2], data: &[u8]) -> Vec<u8> {
        let mut v = vec![sig[0], sig[1], (data.len() + 4) as u8, 1];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn nm_continuation_joins_pieces() {
        let mut area = entry(b"NM", b"\x01hello-");
        area.extend(entry(b"NM", b"\x00world"));
        let su = parse_system_use(&source(), &area, 0).unwrap();
        assert_eq!(su.name.as_deref(), Some("hello-world"));
    }

    #[test]
    fn sl_components_build_an_absolute_target() {
        // root, "usr", "li" continued by "b" -> "/usr/lib"
        let data = b"\x00\x08\x00\x00\x03usr\x01\x02li\x00\x01b";
        let su = parse_system_use(&source(), &entry(b"SL", data), 0).unwrap();
        assert_eq!(su.symlink.as_deref(), Some("/usr/lib"));
    }

    #[test]
    fn sl_inner_root_components_double_the_slash() {
        // ".", ROOT, ROOT, "file" reads as ".///file" (xorriso shows the same).
        let data = b"\x00\x02\x00\x08\x00\x08\x00\x00\x04file";
        let su = parse_system_use(&source(), &entry(b"SL", data), 0).unwrap();
        assert_eq!(su.symlink.as_deref(), Some(".///file"));
        let su = parse_system_use(&source(), &entry(b"SL", b"\x00\x08\x00"), 0).unwrap();
        assert_eq!(su.symlink.as_deref(), Some("/"));
    }

    #[test]
    fn sl_parent_and_current_components() {
        let data = b"\x00\x04\x00\x00\x01x";
        let su = parse_system_use(&source(), &entry(b"SL", data), 0).unwrap();
        assert_eq!(su.symlink.as_deref(), Some("../x"));
    }

    #[test]
    fn susp_entry_length_past_area_is_an_error() {
        let mut area = entry(b"NM", b"\x00abc");
        area[2] = 40;
        let err = parse_system_use(&source(), &area, 0x1000).unwrap_err();
        assert!(err.to_string().contains("SUSP entry length"), "{err}");
        assert!(err.to_string().contains("0x1002"), "{err}");
    }

    #[test]
    fn ce_loop_is_an_error() {
        let mut img = vec![0u8; 4 * 2048];
        // A CE area at block 2 that points at itself.
        let mut ce = vec![];
        for v in [2u32, 0, 28] {
            ce.extend_from_slice(&v.to_le_bytes());
            ce.extend_from_slice(&v.to_be_bytes());
        }
        let e = entry(b"CE", &ce);
        img[2 * 2048..2 * 2048 + e.len()].copy_from_slice(&e);
        let src = Source::new(Arc::new(img)).unwrap();
        let err = parse_system_use(&src, &e, 0).unwrap_err();
        assert!(err.to_string().contains("loop"), "{err}");
    }

    #[test]
    fn tf_short_form_reads_modify_time() {
        let data = [0x02u8, 100, 1, 1, 0, 0, 0, 0];
        let su = parse_system_use(&source(), &entry(b"TF", &data), 0).unwrap();
        assert_eq!(su.modified.unwrap().unix_seconds, 946_684_800);
    }

    #[test]
    fn tf_with_missing_timestamps_is_an_error() {
        let data = [0x06u8, 120, 1, 1, 0, 0, 0, 0];
        assert!(parse_system_use(&source(), &entry(b"TF", &data), 0).is_err());
    }

    #[test]
    fn pn_splits_old_style_device_numbers() {
        let mut data = vec![0u8; 16];
        data[8..12].copy_from_slice(&0x0801u32.to_le_bytes());
        let su = parse_system_use(&source(), &entry(b"PN", &data), 0).unwrap();
        assert_eq!(su.device, Some((8, 1)));
    }
}
