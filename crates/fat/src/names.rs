//! File names on FAT: VFAT long names (UTF-16 in 13-character slots) and their 8.3 aliases.

use std::collections::HashSet;

/// VFAT long names hold at most 255 UTF-16 code units.
pub const MAX_LONG_NAME_UNITS: usize = 255;
/// UTF-16 code units carried by one long-name directory entry.
const UNITS_PER_LFN_ENTRY: usize = 13;
/// Numeric tails tried before giving up on a unique alias (`NAME~1` .. `N~999999`).
const MAX_ALIAS_TAIL: u32 = 999_999;

/// Characters an 8.3 name may hold besides A-Z and 0-9 (FAT specification, "short names").
const SHORT_NAME_SPECIALS: &[u8] = b"!#$%&'()-@^_`{}~";

/// One name as stored in a directory: an 8.3 alias, plus the long name when the alias alone
/// would lose anything (case, length, characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredName {
    pub short: [u8; 11],
    /// UTF-16 of the long name, when one is needed.
    pub long: Option<Vec<u16>>,
}

impl StoredName {
    /// Directory entries the name occupies (long-name slots plus the 8.3 entry).
    pub fn entry_count(&self) -> usize {
        1 + self
            .long
            .as_ref()
            .map_or(0, |units| units.len().div_ceil(UNITS_PER_LFN_ENTRY))
    }
}

/// Why a name cannot be stored on FAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong(usize),
    BadCharacter(char),
    TrailingDotOrSpace,
    NoUniqueAlias,
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameProblem::Empty => write!(f, "the name is empty"),
            NameProblem::TooLong(units) => {
                write!(
                    f,
                    "{units} UTF-16 units; FAT long names hold at most {MAX_LONG_NAME_UNITS}"
                )
            }
            NameProblem::BadCharacter(c) => {
                write!(f, "character {c:?} is not allowed in FAT names")
            }
            NameProblem::TrailingDotOrSpace => {
                write!(
                    f,
                    "FAT drops trailing dots and spaces, so the name would change"
                )
            }
            NameProblem::NoUniqueAlias => write!(f, "no unique 8.3 alias left in this folder"),
        }
    }
}

/// Checks that `name` survives a trip through a FAT long name unchanged.
pub fn validate_long_name(name: &str) -> Result<Vec<u16>, NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || "\"*/:<>?\\|\u{7f}".contains(c))
    {
        return Err(NameProblem::BadCharacter(c));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(NameProblem::TrailingDotOrSpace);
    }
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > MAX_LONG_NAME_UNITS {
        return Err(NameProblem::TooLong(units.len()));
    }
    Ok(units)
}

/// Chooses the stored form of `name`, given the aliases already used in its folder
/// (`taken` is updated).
pub fn store_name(name: &str, taken: &mut HashSet<[u8; 11]>) -> Result<StoredName, NameProblem> {
    let units = validate_long_name(name)?;
    if let Some(exact) = exact_short_name(name) {
        if taken.insert(exact) {
            return Ok(StoredName {
                short: exact,
                long: None,
            });
        }
    }
    // A name that only differs from its 8.3 form in case keeps that form as alias, without a
    // numeric tail (as Windows and mtools do); the long name preserves the case.
    if let Some(upper) = exact_short_name(&name.to_ascii_uppercase()) {
        if taken.insert(upper) {
            return Ok(StoredName {
                short: upper,
                long: Some(units),
            });
        }
    }
    let (base, ext) = alias_basis(name);
    for tail in 1..=MAX_ALIAS_TAIL {
        let suffix = format!("~{tail}");
        let keep = 8 - suffix.len();
        let mut short = [b' '; 11];
        let head = &base[..base.len().min(keep)];
        short[..head.len()].copy_from_slice(head);
        short[head.len()..head.len() + suffix.len()].copy_from_slice(suffix.as_bytes());
        short[8..8 + ext.len()].copy_from_slice(&ext);
        if short[0] == 0xE5 {
            short[0] = 0x05;
        }
        if taken.insert(short) {
            return Ok(StoredName {
                short,
                long: Some(units),
            });
        }
    }
    Err(NameProblem::NoUniqueAlias)
}

/// The 8.3 form of a name that is already an uppercase 8.3 name, e.g. `BOOTX64.EFI`.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty()
        || !part_ok(base, 8)
        || !part_ok(ext, 3)
        || (name.contains('.') && ext.is_empty())
    {
        return None;
    }
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base.as_bytes());
    short[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(short)
}

fn part_ok(part: &str, max: usize) -> bool {
    part.len() <= max
        && part.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_NAME_SPECIALS.contains(&b)
        })
}

/// The alias basis: uppercase, invalid characters as `_`, spaces and extra dots dropped;
/// up to 8 base and 3 extension characters.
fn alias_basis(name: &str) -> (Vec<u8>, Vec<u8>) {
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (trimmed, ""),
    };
    let convert = |part: &str, max: usize| -> Vec<u8> {
        part.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let upper = c.to_ascii_uppercase();
                if upper.is_ascii_uppercase()
                    || upper.is_ascii_digit()
                    || (upper.is_ascii() && SHORT_NAME_SPECIALS.contains(&(upper as u8)))
                {
                    upper as u8
                } else {
                    b'_'
                }
            })
            .take(max)
            .collect()
    };
    let mut base = convert(base, 8);
    if base.is_empty() {
        base.push(b'_');
    }
    (base, convert(ext, 3))
}

/// The checksum of an 8.3 name that ties its long-name entries to it.
pub fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        (sum >> 1).wrapping_add(sum << 7).wrapping_add(b)
    })
}

/// The long-name entries for `long`, in on-disk order (last part first).
pub fn lfn_entries(long: &[u16], short: &[u8; 11]) -> Vec<[u8; 32]> {
    let checksum = lfn_checksum(short);
    let count = long.len().div_ceil(UNITS_PER_LFN_ENTRY);
    let mut entries = Vec::with_capacity(count);
    for index in (0..count).rev() {
        let mut units = [0xFFFFu16; UNITS_PER_LFN_ENTRY];
        let start = index * UNITS_PER_LFN_ENTRY;
        let part = &long[start..long.len().min(start + UNITS_PER_LFN_ENTRY)];
        units[..part.len()].copy_from_slice(part);
        if part.len() < UNITS_PER_LFN_ENTRY {
            units[part.len()] = 0;
        }
        let mut entry = [0u8; 32];
        // Sequence numbers fit: at most 20 slots (255 / 13 rounded up).
        entry[0] = (index + 1) as u8 | if index + 1 == count { 0x40 } else { 0 };
        entry[11] = 0x0F;
        entry[13] = checksum;
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (unit, offset) in units.iter().zip(slots) {
            entry[offset..offset + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(entry);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uppercase_8_3_names_need_no_long_name() {
        let mut taken = HashSet::new();
        let stored = store_name("BOOTX64.EFI", &mut taken).unwrap();
        assert_eq!(&stored.short, b"BOOTX64 EFI");
        assert_eq!(stored.long, None);
        assert_eq!(stored.entry_count(), 1);
        assert_eq!(
            &store_name("EFI", &mut taken).unwrap().short,
            b"EFI        "
        );
    }

    #[test]
    fn lowercase_names_get_a_long_name_and_alias() {
        let mut taken = HashSet::new();
        let stored = store_name("grub.cfg", &mut taken).unwrap();
        assert_eq!(&stored.short, b"GRUB    CFG");
        assert_eq!(
            stored.long.as_deref(),
            Some(&"grub.cfg".encode_utf16().collect::<Vec<_>>()[..])
        );
    }

    #[test]
    fn case_only_collision_falls_back_to_a_tail() {
        let mut taken = HashSet::new();
        store_name("GRUB.CFG", &mut taken).unwrap();
        assert_eq!(
            &store_name("grub.cfg", &mut taken).unwrap().short,
            b"GRUB~1  CFG"
        );
    }

    #[test]
    fn colliding_aliases_get_increasing_tails() {
        let mut taken = HashSet::new();
        let a = store_name("Long File Name One.txt", &mut taken).unwrap();
        let b = store_name("Long File Name Two.txt", &mut taken).unwrap();
        assert_eq!(&a.short, b"LONGFI~1TXT");
        assert_eq!(&b.short, b"LONGFI~2TXT");
    }

    #[test]
    fn bad_characters_are_refused() {
        let mut taken = HashSet::new();
        assert_eq!(
            store_name("a:b", &mut taken),
            Err(NameProblem::BadCharacter(':'))
        );
        assert_eq!(
            store_name("a\u{1}", &mut taken),
            Err(NameProblem::BadCharacter('\u{1}'))
        );
    }

    #[test]
    fn trailing_dot_is_refused() {
        assert_eq!(
            validate_long_name("name."),
            Err(NameProblem::TrailingDotOrSpace)
        );
    }

    #[test]
    fn overlong_name_is_refused() {
        assert_eq!(
            validate_long_name(&"x".repeat(256)),
            Err(NameProblem::TooLong(256))
        );
    }

    #[test]
    fn checksum_matches_the_specification_example() {
        // Each step rotates right by one bit and adds the next byte.
        let mut expected = 0u8;
        for &b in b"GRUB~1  CFG" {
            expected = ((expected & 1) << 7)
                .wrapping_add(expected >> 1)
                .wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"GRUB~1  CFG"), expected);
    }

    #[test]
    fn long_name_entries_are_reversed_and_terminated() {
        let long: Vec<u16> = "abcdefghijklmnop".encode_utf16().collect();
        let entries = lfn_entries(&long, b"ABCDEF~1   ");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert_eq!(entries[1][0], 0x01);
        // The second part "nop" is followed by a 0x0000 terminator and 0xFFFF padding.
        assert_eq!(&entries[0][1..9], &[b'n', 0, b'o', 0, b'p', 0, 0, 0]);
        assert_eq!(&entries[0][9..11], &[0xFF, 0xFF]);
    }
}
