//! UDF (ECMA-167 with the OSTA UDF 1.02 / 2.01 profile): the bridge file system written beside
//! the ISO 9660 tree (`write`) and the bounds-checked reader (`read`).
//!
//! This file holds what both sides share: descriptor tags and their CRC, OSTA compressed
//! unicode (CS0) names and `dstring` fields, timestamps, entity identifiers, and the numbers
//! the format fixes (tag identifiers, where the anchor lives).

pub mod read;
pub(crate) mod write;

/// UDF logical blocks are ISO sectors here (2048 bytes), as on every optical medium.
pub const BLOCK: usize = 2048;
/// ECMA-167 3/8.4.2.1: the anchor volume descriptor pointer lives at sector 256.
pub const ANCHOR_LBA: u32 = 256;
/// ECMA-167 4/14.14.1.1: extent lengths are 30 bits (the top two bits are the extent type).
pub const MAX_EXTENT_LENGTH: u32 = (1 << 30) - 1;

/// Descriptor tag identifiers (ECMA-167 3/7.2.1 and 4/7.2.1).
pub(crate) mod tag_id {
    pub const PRIMARY_VOLUME: u16 = 1;
    pub const ANCHOR: u16 = 2;
    pub const POINTER: u16 = 3;
    pub const IMPLEMENTATION_USE: u16 = 4;
    pub const PARTITION: u16 = 5;
    pub const LOGICAL_VOLUME: u16 = 6;
    pub const UNALLOCATED_SPACE: u16 = 7;
    pub const TERMINATING: u16 = 8;
    pub const INTEGRITY: u16 = 9;
    pub const FILE_SET: u16 = 256;
    pub const FILE_IDENTIFIER: u16 = 257;
    pub const ALLOCATION_EXTENT: u16 = 258;
    pub const FILE_ENTRY: u16 = 261;
    pub const EXTENDED_FILE_ENTRY: u16 = 266;
}

/// ICB file types (ECMA-167 4/14.6.6).
pub(crate) mod file_type {
    pub const DIRECTORY: u8 = 4;
    pub const REGULAR: u8 = 5;
    pub const SYMLINK: u8 = 12;
}

/// File characteristics of a file identifier descriptor (ECMA-167 4/14.4.3).
pub(crate) mod fid_flag {
    pub const HIDDEN: u8 = 0x01;
    pub const DIRECTORY: u8 = 0x02;
    pub const DELETED: u8 = 0x04;
    pub const PARENT: u8 = 0x08;
}

/// CRC-ITU-T (polynomial 0x1021, initial value 0, not reflected): the descriptor CRC of
/// ECMA-167 1/7.2.6.
pub fn crc_itu_t(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The byte-at-a-time table of `crc_itu_t`, built at compile time (every descriptor of an
/// image is checksummed: one per file when writing).
const CRC_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
            bit += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The tag checksum: the sum of bytes 0..=3 and 5..=15, modulo 256.
pub(crate) fn tag_checksum(tag: &[u8]) -> u8 {
    tag.iter()
        .take(16)
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .fold(0u8, |acc, (_, &b)| acc.wrapping_add(b))
}

/// Fills the 16-byte tag at the start of `desc` and its CRC over `desc[16..]`.
pub(crate) fn finish_tag(desc: &mut [u8], ident: u16, version: u16, location: u32) {
    let crc_len = desc.len().saturating_sub(16);
    let crc = crc_itu_t(&desc[16..]);
    desc[0..2].copy_from_slice(&ident.to_le_bytes());
    desc[2..4].copy_from_slice(&version.to_le_bytes());
    desc[5] = 0;
    desc[6..8].copy_from_slice(&0u16.to_le_bytes());
    desc[8..10].copy_from_slice(&crc.to_le_bytes());
    desc[10..12].copy_from_slice(&(crc_len as u16).to_le_bytes());
    desc[12..16].copy_from_slice(&location.to_le_bytes());
    desc[4] = tag_checksum(desc);
}

/// OSTA compressed unicode: compression id 8 (one byte per character) when every UTF-16 unit
/// fits a byte, else 16 (big-endian UTF-16 units).
pub fn cs0_encode(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().collect();
    if units.iter().all(|&u| u <= 0xFF) {
        let mut out = Vec::with_capacity(units.len() + 1);
        out.push(8);
        out.extend(units.iter().map(|&u| u as u8));
        out
    } else {
        let mut out = Vec::with_capacity(units.len() * 2 + 1);
        out.push(16);
        for u in units {
            out.extend_from_slice(&u.to_be_bytes());
        }
        out
    }
}

/// Decodes OSTA compressed unicode; `None` for an unknown compression id or an odd 16-bit
/// length. An empty field decodes to "".
pub fn cs0_decode(bytes: &[u8]) -> Option<String> {
    let Some((&id, rest)) = bytes.split_first() else {
        return Some(String::new());
    };
    match id {
        8 | 254 => Some(rest.iter().map(|&b| char::from(b)).collect()),
        16 | 255 => {
            if rest.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        _ => None,
    }
}

/// A `dstring` field of `len` bytes: CS0 text (cut to fit whole characters), zero padding,
/// and the used length in the last byte (ECMA-167 1/7.2.12).
pub(crate) fn dstring(text: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if text.is_empty() || len < 2 {
        return out;
    }
    let mut enc = cs0_encode(text);
    let unit = if enc[0] == 16 { 2 } else { 1 };
    let room = (len - 2) / unit * unit + 1;
    enc.truncate(room.min(enc.len()));
    out[..enc.len()].copy_from_slice(&enc);
    out[len - 1] = enc.len() as u8;
    out
}

/// Reads a `dstring` field (used length in the last byte, clamped to the field).
pub fn dstring_decode(field: &[u8]) -> String {
    let Some((&used, body)) = field.split_last() else {
        return String::new();
    };
    let used = usize::from(used).min(body.len());
    cs0_decode(&body[..used])
        .unwrap_or_default()
        .trim_end_matches('\0')
        .to_string()
}

/// The 64-byte charspec "CS0 / OSTA Compressed Unicode" every UDF descriptor names.
pub(crate) fn osta_charspec() -> [u8; 64] {
    let mut c = [0u8; 64];
    let name = b"OSTA Compressed Unicode";
    c[1..1 + name.len()].copy_from_slice(name);
    c
}

/// An entity identifier (regid, ECMA-167 1/7.4): flags 0, the identifier, the 8-byte suffix.
pub(crate) fn regid(ident: &str, suffix: [u8; 8]) -> [u8; 32] {
    let mut r = [0u8; 32];
    let b = ident.as_bytes();
    let n = b.len().min(23);
    r[1..1 + n].copy_from_slice(&b[..n]);
    r[24..32].copy_from_slice(&suffix);
    r
}

/// A UDF timestamp (ECMA-167 1/7.3) in UTC: type 1 (local time) with offset 0.
pub(crate) fn timestamp(unix: i64) -> [u8; 12] {
    let t = crate::date::utc_datetime(unix);
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&0x1000u16.to_le_bytes());
    out[2..4].copy_from_slice(&t.year().to_le_bytes());
    out[4] = t.month() as u8;
    out[5] = t.day() as u8;
    out[6] = t.hour() as u8;
    out[7] = t.minute() as u8;
    out[8] = t.second() as u8;
    out
}

/// Decodes a UDF timestamp; `None` for an unset or impossible date.
pub fn timestamp_decode(b: &[u8]) -> Option<crate::read::Timestamp> {
    let f = vmedia_io::bytes::Fields::new_checked(b, 12)?;
    let type_tz = f.le16(0);
    let year = f.le16(2) as i16;
    let (month, day, hour, minute, second, centi) = (b[4], b[5], b[6], b[7], b[8], b[9]);
    if year == 0 && month == 0 {
        return None;
    }
    // 12-bit two's complement minutes; -2047 means "no offset recorded".
    let raw = (type_tz & 0x0FFF) as i16;
    let tz = if raw & 0x0800 != 0 { raw - 0x1000 } else { raw };
    let tz = if tz == -2047 || type_tz >> 12 != 1 {
        0
    } else {
        tz
    };
    let dt = jiff::civil::DateTime::new(
        year,
        month as i8,
        day as i8,
        hour as i8,
        minute as i8,
        second.min(59) as i8,
        0,
    )
    .ok()?;
    let offset = jiff::tz::Offset::from_seconds(i32::from(tz) * 60).ok()?;
    let ts = offset.to_timestamp(dt).ok()?;
    Some(crate::read::Timestamp {
        unix_seconds: ts.as_second(),
        nanoseconds: u32::from(centi.min(99)) * 10_000_000,
        utc_offset_minutes: tz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_ecma_167_example() {
        // ECMA-167 1/7.2.6 gives the CRC of bytes 70 6A 77 as 0x3299.
        assert_eq!(crc_itu_t(&[0x70, 0x6A, 0x77]), 0x3299);
    }

    #[test]
    fn cs0_round_trips_latin1_and_wide_names() {
        for name in ["install.wim", "Größe.txt", "日本語.txt", "emoji 😀"] {
            assert_eq!(cs0_decode(&cs0_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(cs0_encode("ab")[0], 8);
        assert_eq!(cs0_encode("日")[0], 16);
    }

    #[test]
    fn dstrings_keep_the_length_in_the_last_byte() {
        let d = dstring("CDROM", 32);
        assert_eq!(d[0], 8);
        assert_eq!(d[31], 6);
        assert_eq!(dstring_decode(&d), "CDROM");
        let long = dstring(&"x".repeat(100), 32);
        assert_eq!(dstring_decode(&long).len(), 30);
        let wide = dstring(&"日".repeat(40), 32);
        assert_eq!(dstring_decode(&wide), "日".repeat(15));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = timestamp(1_700_000_000);
        assert_eq!(timestamp_decode(&t).unwrap().unix_seconds, 1_700_000_000);
    }
}
