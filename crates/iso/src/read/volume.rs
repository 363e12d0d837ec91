//! Volume descriptors (primary, Joliet supplementary, El Torito boot record) and ISO dates.
//!
//! Everything here parses fixed-size 2048-byte sectors already in memory, so accessors index
//! within a checked `[u8; 2048]` and never panic.

use jiff::civil;
use jiff::tz::Offset;
use jiff::Span;
use serde::Serialize;
use vmedia_io::bytes::{le32, Fields};

use super::error::ReadError;
use super::{SECTOR, SECTOR_BYTES};

/// Volume descriptors start at sector 16 (the first 32 KiB are the system area).
pub const FIRST_DESCRIPTOR_LBA: u32 = 16;
/// Real images carry at most a handful of descriptors; bounds the scan of a hostile image
/// whose set never terminates.
pub const MAX_VOLUME_DESCRIPTORS: u32 = 64;

/// A point in time read from the image, with the UTC offset it was recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub unix_seconds: i64,
    /// Sub-second part (ISO dates carry hundredths).
    pub nanoseconds: u32,
    /// The recorder's offset from UTC, in minutes.
    pub utc_offset_minutes: i16,
}

impl Timestamp {
    /// The civil date and time of this instant in the recorder's own offset (`local`) or in
    /// UTC; `None` only for hand-built values outside jiff's range (years -9999..=9999), which
    /// no parsed ISO date reaches.
    fn civil(&self, local: bool) -> Option<civil::DateTime> {
        let instant = jiff::Timestamp::from_second(self.unix_seconds).ok()?;
        let offset = if local {
            Offset::from_seconds(i32::from(self.utc_offset_minutes) * 60).ok()?
        } else {
            Offset::UTC
        };
        Some(offset.to_datetime(instant))
    }

    /// RFC 3339 in the recorder's own offset, e.g. `2024-05-01T12:00:00+02:00`.
    pub fn to_rfc3339(&self) -> String {
        let Some(t) = self.civil(true) else {
            return format!("@{}", self.unix_seconds);
        };
        let off = self.utc_offset_minutes;
        let sign = if off < 0 { '-' } else { '+' };
        let off = off.unsigned_abs();
        let frac = if self.nanoseconds == 0 {
            String::new()
        } else {
            format!(".{:02}", self.nanoseconds / 10_000_000)
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{sign}{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            off / 60,
            off % 60
        )
    }

    /// `YYYY-MM-DD HH:MM` in UTC, the short form listings use.
    pub fn to_short_utc(&self) -> String {
        let Some(t) = self.civil(false) else {
            return format!("@{}", self.unix_seconds);
        };
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute()
        )
    }

    /// `YYYYMMDDhhmmsscc` in the recorder's own offset, as a volume descriptor holds it
    /// (ECMA-119 8.4.26.1, without the offset byte); what `IsoSpec`'s
    /// `volume.modification_date` takes to keep a date exactly.
    pub fn to_volume_digits(&self) -> String {
        let Some(t) = self.civil(true) else {
            return "0000000000000000".to_string();
        };
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            self.nanoseconds / 10_000_000
        )
    }
}

fn make_timestamp(
    year: i64,
    fields: [u32; 5],
    hundredths: u32,
    offset_quarters: i8,
) -> Option<Timestamp> {
    let [month, day, hour, minute, second] = fields;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Offsets outside -48..=52 quarter hours are invalid; peers then treat the time as UTC.
    let quarters = if (-48..=52).contains(&offset_quarters) {
        offset_quarters
    } else {
        0
    };
    let offset_minutes = i16::from(quarters) * 15;
    // Counted from the first of the month, so day 31 of a short month and second 60 roll
    // over into the next day and minute, as the peers' mktime-style conversion does.
    let first = civil::Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, 1).ok()?;
    let into_month = Span::new()
        .days(i64::from(day - 1))
        .hours(i64::from(hour))
        .minutes(i64::from(minute))
        .seconds(i64::from(second));
    let local = first
        .to_datetime(civil::Time::midnight())
        .checked_add(into_month)
        .ok()?;
    let offset = Offset::from_seconds(i32::from(offset_minutes) * 60).ok()?;
    let instant = offset.to_timestamp(local).ok()?;
    Some(Timestamp {
        unix_seconds: instant.as_second(),
        nanoseconds: hundredths.min(99) * 10_000_000,
        utc_offset_minutes: offset_minutes,
    })
}

/// The 7-byte binary date of a directory record (ECMA-119 9.1.5); `None` when unset or invalid.
pub fn parse_record_date(b: &[u8; 7]) -> Option<Timestamp> {
    if b[..6].iter().all(|&x| x == 0) {
        return None;
    }
    make_timestamp(
        1900 + i64::from(b[0]),
        [
            u32::from(b[1]),
            u32::from(b[2]),
            u32::from(b[3]),
            u32::from(b[4]),
            u32::from(b[5]),
        ],
        0,
        b[6] as i8,
    )
}

/// The 17-byte digit date of a volume descriptor (ECMA-119 8.4.26.1); `None` when unset.
pub fn parse_decimal_date(b: &[u8; 17]) -> Option<Timestamp> {
    let digits = &b[..16];
    if digits.iter().all(|&c| c == b'0' || c == 0 || c == b' ') {
        return None;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        digits[r]
            .iter()
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
    };
    make_timestamp(
        i64::from(num(0..4)),
        [num(4..6), num(6..8), num(8..10), num(10..12), num(12..14)],
        num(14..16),
        b[16] as i8,
    )
}

/// An a-/d-character identifier: trailing spaces (and NULs some writers use) removed.
pub(crate) fn ascii_field(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    text.trim_end_matches([' ', '\0']).to_string()
}

/// A Joliet descriptor field: UCS-2 big-endian, trailing spaces removed.
pub(crate) fn ucs2_field(b: &[u8]) -> String {
    ucs2_name(b).trim_end_matches([' ', '\0']).to_string()
}

/// A Joliet file name: UCS-2 big-endian (UTF-16 surrogates accepted), kept as recorded.
pub(crate) fn ucs2_name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// What kind of volume descriptor sits at a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DescriptorKind {
    BootRecord,
    Primary,
    /// A supplementary descriptor with a Joliet escape sequence (level 1..3).
    Joliet,
    Supplementary,
    /// ISO 9660:1999 enhanced descriptor (file structure version 2).
    Enhanced,
    Partition,
    Terminator,
    Unknown(u8),
}

impl DescriptorKind {
    /// The kind in words ("boot record", "joliet", ...), as listings print it.
    pub fn label(self) -> String {
        match self {
            DescriptorKind::BootRecord => "boot record".into(),
            DescriptorKind::Primary => "primary".into(),
            DescriptorKind::Joliet => "joliet".into(),
            DescriptorKind::Supplementary => "supplementary".into(),
            DescriptorKind::Enhanced => "enhanced".into(),
            DescriptorKind::Partition => "partition".into(),
            DescriptorKind::Terminator => "terminator".into(),
            DescriptorKind::Unknown(code) => format!("unknown type {code}"),
        }
    }
}

/// One descriptor of the set, where it is and what it is.
#[derive(Debug, Clone, Serialize)]
pub struct DescriptorSummary {
    pub lba: u32,
    pub kind: DescriptorKind,
}

/// Where a directory tree starts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RootLocation {
    pub lba: u32,
    pub size: u32,
}

/// The identifying fields of a primary or supplementary volume descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeFields {
    pub system_id: String,
    pub volume_id: String,
    pub volume_set_id: String,
    pub publisher_id: String,
    pub data_preparer_id: String,
    pub application_id: String,
    pub copyright_file_id: String,
    pub abstract_file_id: String,
    pub bibliographic_file_id: String,
    /// Volume space size in 2048-byte blocks.
    pub volume_space_size: u32,
    pub volume_set_size: u16,
    pub volume_sequence_number: u16,
    pub logical_block_size: u16,
    pub path_table_size: u32,
    pub path_table_lba_le: u32,
    pub path_table_lba_be: u32,
    pub root: RootLocation,
    pub creation: Option<Timestamp>,
    pub modification: Option<Timestamp>,
    pub expiration: Option<Timestamp>,
    pub effective: Option<Timestamp>,
    pub file_structure_version: u8,
}

/// The Joliet supplementary descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct JolietInfo {
    /// 1, 2 or 3 (from the escape sequence `%/@`, `%/C`, `%/E`).
    pub level: u8,
    pub lba: u32,
    pub fields: VolumeFields,
}

/// Everything the descriptor set says, collected while opening.
#[derive(Debug, Clone)]
pub(crate) struct DescriptorSet {
    pub primary: VolumeFields,
    pub joliet: Option<JolietInfo>,
    pub boot_catalog_lba: Option<u32>,
    pub boot_system_id: Option<String>,
    pub descriptors: Vec<DescriptorSummary>,
}

fn parse_fields(sector: &[u8; SECTOR], lba: u32, joliet: bool) -> Result<VolumeFields, ReadError> {
    let base = u64::from(lba) * SECTOR_BYTES;
    let text = |r: std::ops::Range<usize>| {
        if joliet {
            ucs2_field(&sector[r])
        } else {
            ascii_field(&sector[r])
        }
    };
    // Both-endian fields: the little-endian half is authoritative, as in the Linux kernel
    // and libisofs (some writers get the big-endian half wrong). The sector is a whole
    // descriptor, so every field offset below lies inside the checked view.
    let Some(f) = Fields::new_checked(sector, SECTOR) else {
        return Err(ReadError::corrupt(
            base,
            "volume descriptor",
            "shorter than a sector",
        ));
    };
    let block_size = f.le16(128);
    if block_size != 2048 {
        return Err(ReadError::Unsupported {
            offset: base + 128,
            feature: format!("logical block size {block_size} (only 2048 is in use on real media)"),
        });
    }
    // The root record is 34 bytes in the standard; its fixed fields are all we need, so a
    // longer (non-standard, seen in the wild) length byte is tolerated.
    let root = &sector[156..190];
    if root[0] < 34 {
        return Err(ReadError::corrupt(
            base + 156,
            "root directory record length",
            format!("{} is shorter than 34 bytes", root[0]),
        ));
    }
    let date = |at: usize| -> Option<Timestamp> {
        let mut b = [0u8; 17];
        b.copy_from_slice(&sector[at..at + 17]);
        parse_decimal_date(&b)
    };
    Ok(VolumeFields {
        system_id: text(8..40),
        volume_id: text(40..72),
        volume_set_id: text(190..318),
        publisher_id: text(318..446),
        data_preparer_id: text(446..574),
        application_id: text(574..702),
        copyright_file_id: text(702..739),
        abstract_file_id: text(739..776),
        bibliographic_file_id: text(776..813),
        volume_space_size: f.le32(80),
        volume_set_size: f.le16(120),
        volume_sequence_number: f.le16(124),
        logical_block_size: block_size,
        path_table_size: f.le32(132),
        path_table_lba_le: f.le32(140),
        path_table_lba_be: f.be32(148),
        root: RootLocation {
            lba: f.le32(156 + 2),
            size: f.le32(156 + 10),
        },
        creation: date(813),
        modification: date(830),
        expiration: date(847),
        effective: date(864),
        file_structure_version: sector[881],
    })
}

fn joliet_level(sector: &[u8; SECTOR]) -> Option<u8> {
    let escapes = &sector[88..120];
    for (i, w) in escapes.windows(3).enumerate() {
        if i > 29 {
            break;
        }
        if w[0] == 0x25 && w[1] == 0x2F {
            match w[2] {
                0x40 => return Some(1),
                0x43 => return Some(2),
                0x45 => return Some(3),
                _ => {}
            }
        }
    }
    None
}

/// Fetches one 2048-byte sector by block number.
pub(crate) type SectorReader<'a> = dyn Fn(u32, &mut [u8; SECTOR]) -> Result<(), ReadError> + 'a;

/// Reads the descriptor set from sector 16 on.
pub(crate) fn read_descriptors(read: &SectorReader<'_>) -> Result<DescriptorSet, ReadError> {
    let mut primary = None;
    let mut joliet = None;
    let mut boot_catalog_lba = None;
    let mut boot_system_id = None;
    let mut descriptors = Vec::new();
    let mut sector = [0u8; SECTOR];
    let mut terminated = false;
    for index in 0..MAX_VOLUME_DESCRIPTORS {
        let lba = FIRST_DESCRIPTOR_LBA + index;
        if let Err(e) = read(lba, &mut sector) {
            if primary.is_some() {
                // A truncated set after a valid primary is tolerated like the peers do.
                break;
            }
            return Err(e);
        }
        if &sector[1..6] != b"CD001" {
            if index == 0 {
                return Err(ReadError::NotIso {
                    reason: format!(
                        "no \"CD001\" volume descriptor at offset {:#x}",
                        u64::from(lba) * SECTOR_BYTES
                    ),
                });
            }
            // Unterminated sets exist (old writers); stop at the first non-descriptor.
            break;
        }
        let kind = match sector[0] {
            0 => DescriptorKind::BootRecord,
            1 => DescriptorKind::Primary,
            2 if sector[881] == 2 => DescriptorKind::Enhanced,
            2 if joliet_level(&sector).is_some() => DescriptorKind::Joliet,
            2 => DescriptorKind::Supplementary,
            3 => DescriptorKind::Partition,
            255 => DescriptorKind::Terminator,
            other => DescriptorKind::Unknown(other),
        };
        descriptors.push(DescriptorSummary { lba, kind });
        match kind {
            DescriptorKind::Primary if primary.is_none() => {
                primary = Some(parse_fields(&sector, lba, false)?);
            }
            DescriptorKind::Joliet if joliet.is_none() => {
                let level = joliet_level(&sector).unwrap_or(1);
                joliet = Some(JolietInfo {
                    level,
                    lba,
                    fields: parse_fields(&sector, lba, true)?,
                });
            }
            DescriptorKind::BootRecord if &sector[7..30] == b"EL TORITO SPECIFICATION" => {
                boot_system_id = Some(ascii_field(&sector[7..39]));
                boot_catalog_lba = le32(&sector, 71);
            }
            DescriptorKind::Terminator => {
                terminated = true;
                break;
            }
            _ => {}
        }
    }
    let _ = terminated;
    let primary = primary.ok_or_else(|| ReadError::NotIso {
        reason: "the volume descriptor set has no primary volume descriptor".into(),
    })?;
    Ok(DescriptorSet {
        primary,
        joliet,
        boot_catalog_lba,
        boot_system_id,
        descriptors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_date_converts_offset_to_utc() {
        // 2024-02-29 12:00:00 at UTC+2 (8 quarter hours) is 10:00 UTC.
        let t = parse_record_date(&[124, 2, 29, 12, 0, 0, 8]).unwrap();
        assert_eq!(t.unix_seconds, 1_709_200_800);
        assert_eq!(t.to_rfc3339(), "2024-02-29T12:00:00+02:00");
    }

    #[test]
    fn decimal_date_all_zero_is_unset() {
        assert!(parse_decimal_date(b"0000000000000000\0").is_none());
    }

    #[test]
    fn decimal_date_parses_hundredths() {
        let t = parse_decimal_date(b"2001020304050607\x00").unwrap();
        assert_eq!(t.to_rfc3339(), "2001-02-03T04:05:06.07+00:00");
    }

    #[test]
    fn invalid_month_is_no_date() {
        assert!(parse_record_date(&[100, 13, 1, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn civil_round_trip() {
        for t in [0i64, 951_782_400, 1_709_200_800, -86_400, 4_102_444_800] {
            let stamp = Timestamp {
                unix_seconds: t,
                nanoseconds: 0,
                utc_offset_minutes: 0,
            };
            let c = stamp.civil(false).unwrap();
            let back = make_timestamp(
                i64::from(c.year()),
                [
                    c.month() as u32,
                    c.day() as u32,
                    c.hour() as u32,
                    c.minute() as u32,
                    c.second() as u32,
                ],
                0,
                0,
            )
            .unwrap();
            assert_eq!(back.unix_seconds, t);
        }
    }

    #[test]
    fn day_31_of_a_short_month_rolls_over_like_the_peers() {
        // 2023-02-31 is 2023-03-03, as mktime makes it.
        let t = parse_record_date(&[123, 2, 31, 0, 0, 0, 0]).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-03-03T00:00:00+00:00");
    }

    #[test]
    fn volume_digits_keep_the_recorded_offset_and_hundredths() {
        let t = parse_decimal_date(b"2001020304050607\x04").unwrap();
        assert_eq!(t.to_volume_digits(), "2001020304050607");
        assert_eq!(t.to_short_utc(), "2001-02-03 03:05");
    }

    #[test]
    fn joliet_escape_levels() {
        let mut s = [0u8; SECTOR];
        s[88..91].copy_from_slice(b"%/E");
        assert_eq!(joliet_level(&s), Some(3));
        s[88..91].copy_from_slice(b"%/@");
        assert_eq!(joliet_level(&s), Some(1));
        s[88..91].copy_from_slice(b"   ");
        assert_eq!(joliet_level(&s), None);
    }
}
