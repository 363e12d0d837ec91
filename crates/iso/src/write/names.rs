//! Name stage: ISO 9660 identifiers per level and relaxation, Joliet UCS-2 names, collision
//! suffixes and the record order ECMA-119 9.3 prescribes.

use crate::spec::Naming;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

/// Longest Joliet name in UCS-2 units (Joliet specification).
pub(crate) const JOLIET_MAX: usize = 64;
/// `-joliet-long`: the most that still fits a 255-byte directory record with ";1".
pub(crate) const JOLIET_LONG_MAX: usize = 103;
/// ISO 9660:1999 (level 4) identifier limit.
const LEVEL4_MAX: usize = 207;
/// Level 4 with Rock Ridge: a 255-byte record must still hold the fixed part (33), padding
/// and a CE entry (28) pointing at the Rock Ridge fields.
const LEVEL4_MAX_WITH_RR: usize = 192;
/// Collision counters stop here; a folder with more same-named entries is refused upstream.
const MAX_COLLISION_SUFFIX: u32 = 999_999;

/// The effective ISO naming rules after `-U` expands into its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IsoRules {
    pub level: u8,
    pub lowercase: bool,
    pub relaxed: bool,
    pub leading_dots: bool,
    pub multidot: bool,
    pub versions: bool,
    pub trailing_period: bool,
    /// Longest identifier (name + '.' + extension) for files.
    pub file_max: usize,
    /// Longest folder identifier.
    pub dir_max: usize,
    /// Level 1 8.3 split.
    pub eight_three: bool,
}

impl IsoRules {
    pub fn from(n: &Naming) -> IsoRules {
        let u = n.untranslated_filenames;
        let level4 = n.iso_level >= 4;
        let (file_max, dir_max, eight_three) = if level4 {
            let max = if n.rock_ridge.is_some() {
                LEVEL4_MAX_WITH_RR
            } else {
                LEVEL4_MAX
            };
            (max, max, false)
        } else if n.max_iso9660_filenames {
            (37, 37, false)
        } else if u || n.full_iso9660_filenames || n.iso_level >= 2 {
            (31, 31, false)
        } else {
            (12, 8, true)
        };
        IsoRules {
            level: n.iso_level,
            lowercase: n.allow_lowercase || u,
            relaxed: n.relaxed_filenames || u,
            leading_dots: n.allow_leading_dots || u,
            multidot: n.allow_multidot || u,
            versions: !(n.omit_version_numbers || u || n.max_iso9660_filenames || level4),
            trailing_period: !(n.omit_trailing_period || u || level4),
            file_max,
            dir_max,
            eight_three,
        }
    }
}

fn map_char(c: char, rules: &IsoRules) -> char {
    if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
        return c;
    }
    if c.is_ascii_lowercase() {
        return if rules.lowercase {
            c
        } else {
            c.to_ascii_uppercase()
        };
    }
    if rules.relaxed && c.is_ascii_graphic() && c != '/' && c != ';' {
        return c;
    }
    if rules.level >= 4 && c.is_ascii_graphic() && c != '/' && c != ';' {
        return c;
    }
    '_'
}

/// The ISO 9660 identifier for a host name, without version; `(base, ext)` for files.
pub(crate) fn iso_base_ext(name: &str, is_dir: bool, rules: &IsoRules) -> (String, Option<String>) {
    let mut chars: Vec<char> = name.chars().collect();
    if chars.first() == Some(&'.') && !rules.leading_dots {
        chars[0] = '_';
    }
    if is_dir {
        let mapped: String = chars
            .iter()
            .map(|&c| {
                if c == '.' && !(rules.multidot || rules.level >= 4 || rules.relaxed) {
                    '_'
                } else if c == '.' {
                    '.'
                } else {
                    map_char(c, rules)
                }
            })
            .take(rules.dir_max)
            .collect();
        return (mapped, None);
    }
    let last_dot = chars
        .iter()
        .rposition(|&c| c == '.')
        .filter(|&i| i > 0 || rules.leading_dots);
    let (base_chars, ext_chars) = match last_dot {
        Some(i) => (&chars[..i], Some(&chars[i + 1..])),
        None => (&chars[..], None),
    };
    let base: String = base_chars
        .iter()
        .map(|&c| {
            if c == '.' {
                if rules.multidot {
                    '.'
                } else {
                    '_'
                }
            } else {
                map_char(c, rules)
            }
        })
        .collect();
    let ext: Option<String> = ext_chars.map(|e| e.iter().map(|&c| map_char(c, rules)).collect());
    let (base_max, ext_max) = if rules.eight_three {
        (8, 3)
    } else {
        let ext_len = ext.as_ref().map_or(0, |e| e.chars().count());
        let room = rules.file_max - 1;
        // Keep the extension whole when it leaves at least some base, as mkisofs does.
        let ext_max = ext_len.min(room.saturating_sub(1));
        (room - ext_max, ext_max)
    };
    let base: String = base.chars().take(base_max).collect();
    let ext = ext.map(|e| e.chars().take(ext_max).collect::<String>());
    (base, ext)
}

/// Joins base, extension and version into the on-disc identifier.
pub(crate) fn iso_identifier(
    base: &str,
    ext: Option<&str>,
    is_dir: bool,
    rules: &IsoRules,
) -> String {
    if is_dir {
        return base.to_string();
    }
    let mut id = base.to_string();
    match ext {
        Some(e) => {
            id.push('.');
            id.push_str(e);
        }
        None if rules.trailing_period => id.push('.'),
        None => {}
    }
    if rules.versions {
        id.push_str(";1");
    }
    id
}

/// Replaces the end of `base` with a decimal counter so it stays within `max` characters.
fn with_counter(base: &str, counter: u32, max: usize) -> String {
    let digits = format!("{counter:03}");
    let keep = max.saturating_sub(digits.len()).min(base.chars().count());
    let mut out: String = base.chars().take(keep).collect();
    out.push_str(&digits);
    out
}

/// Makes the ISO identifiers of one folder's entries unique. `entries` are (host name, is_dir)
/// in a deterministic order; returns the identifiers in the same order.
pub(crate) fn iso_names_for_dir(entries: &[(&str, bool)], rules: &IsoRules) -> Vec<String> {
    let split: Vec<(String, Option<String>)> = entries
        .iter()
        .map(|(n, d)| iso_base_ext(n, *d, rules))
        .collect();
    let mut out: Vec<String> = split
        .iter()
        .zip(entries)
        .map(|((base, ext), (_, is_dir))| iso_identifier(base, ext.as_deref(), *is_dir, rules))
        .collect();
    // First pass: names that are unique as converted keep them, in entry order. The keys
    // borrow the identifiers; only the rare renamed ones own theirs.
    let mut renamed: Vec<(usize, String)> = Vec::new();
    {
        let mut used: HashSet<&str> = HashSet::with_capacity(out.len());
        let unique: Vec<bool> = out.iter().map(|id| used.insert(compare_key(id))).collect();
        let mut used_renamed: HashSet<String> = HashSet::new();
        for (i, &keep) in unique.iter().enumerate() {
            if keep {
                continue;
            }
            let (base, ext) = &split[i];
            let is_dir = entries[i].1;
            let base_max = if is_dir {
                rules.dir_max
            } else if rules.eight_three {
                8
            } else {
                rules.file_max - 1 - ext.as_ref().map_or(0, |e| e.chars().count())
            };
            let mut counter = 0;
            let id = loop {
                let candidate = iso_identifier(
                    &with_counter(base, counter, base_max),
                    ext.as_deref(),
                    is_dir,
                    rules,
                );
                let key = compare_key(&candidate);
                let fresh = !used.contains(key) && used_renamed.insert(key.to_string());
                if fresh || counter >= MAX_COLLISION_SUFFIX {
                    break candidate;
                }
                counter += 1;
            };
            renamed.push((i, id));
        }
    }
    for (i, id) in renamed {
        out[i] = id;
    }
    out
}

/// Identifiers are compared without version for uniqueness.
fn compare_key(id: &str) -> &str {
    match id.rfind(';') {
        Some(i) => &id[..i],
        None => id,
    }
}

/// ECMA-119 9.3 order of two identifiers (bytes): name part, then extension, each padded
/// with spaces, then version (higher first).
pub(crate) fn iso_order(a: &[u8], b: &[u8]) -> Ordering {
    let split = |s: &[u8]| -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (main, ver) = match s.iter().position(|&c| c == b';') {
            Some(i) => (&s[..i], s[i + 1..].to_vec()),
            None => (s, Vec::new()),
        };
        match main.iter().rposition(|&c| c == b'.') {
            Some(i) => (main[..i].to_vec(), main[i + 1..].to_vec(), ver),
            None => (main.to_vec(), Vec::new(), ver),
        }
    };
    let (an, ae, av) = split(a);
    let (bn, be, bv) = split(b);
    padded_cmp(&an, &bn)
        .then_with(|| padded_cmp(&ae, &be))
        .then_with(|| bv.cmp(&av))
}

fn padded_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(b' ');
        let y = b.get(i).copied().unwrap_or(b' ');
        match x.cmp(&y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// Joliet name in UCS-2 units, truncated to `max` units (extension kept where it fits),
/// without version.
pub(crate) fn joliet_units(name: &str, max: usize) -> Vec<u16> {
    let units: Vec<u16> = name
        .chars()
        .map(|c| {
            let v = c as u32;
            if !(0x20..=0xFFFF).contains(&v) || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\') {
                u16::from(b'_')
            } else {
                v as u16
            }
        })
        .collect();
    truncate_keep_ext(units, max)
}

fn truncate_keep_ext(units: Vec<u16>, max: usize) -> Vec<u16> {
    if units.len() <= max {
        return units;
    }
    let dot = units.iter().rposition(|&u| u == u16::from(b'.'));
    match dot {
        Some(i) if units.len() - i <= max / 2 => {
            let ext = &units[i..];
            let mut out: Vec<u16> = units[..max - ext.len()].to_vec();
            out.extend_from_slice(ext);
            out
        }
        _ => units[..max].to_vec(),
    }
}

/// Makes one folder's Joliet names unique (collisions come from truncation and mapping).
pub(crate) fn joliet_names_for_dir(
    entries: &[(&str, bool)],
    max: usize,
    versions: bool,
) -> Vec<Vec<u16>> {
    let base: Vec<Vec<u16>> = entries.iter().map(|(n, _)| joliet_units(n, max)).collect();
    // The names as converted are borrowed; only renamed candidates are owned.
    let mut used: HashSet<Cow<'_, [u16]>> = HashSet::with_capacity(base.len());
    let mut taken: Vec<bool> = Vec::with_capacity(base.len());
    for b in &base {
        taken.push(used.insert(Cow::Borrowed(b.as_slice())));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, b) in base.iter().enumerate() {
        let mut name = b.clone();
        if !taken[i] {
            let dot = b
                .iter()
                .rposition(|&u| u == u16::from(b'.'))
                .filter(|&d| d > 0 && !entries[i].1);
            let (stem, ext) = match dot {
                Some(d) => (b[..d].to_vec(), b[d..].to_vec()),
                None => (b.clone(), Vec::new()),
            };
            let mut counter = 0u32;
            loop {
                let digits: Vec<u16> = format!("{counter:03}").encode_utf16().collect();
                let keep = max.saturating_sub(digits.len() + ext.len()).min(stem.len());
                let mut candidate = stem[..keep].to_vec();
                candidate.extend_from_slice(&digits);
                candidate.extend_from_slice(&ext);
                if used.insert(Cow::Owned(candidate.clone())) || counter >= MAX_COLLISION_SUFFIX {
                    name = candidate;
                    break;
                }
                counter += 1;
            }
        }
        if versions && !entries[i].1 {
            name.extend(";1".encode_utf16());
        }
        out.push(name);
    }
    out
}

/// UCS-2 big-endian bytes.
pub(crate) fn ucs2_be(units: &[u16]) -> Vec<u8> {
    units.iter().flat_map(|u| u.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(level: u8) -> IsoRules {
        IsoRules::from(&Naming {
            iso_level: level,
            ..Naming::default()
        })
    }

    #[test]
    fn level1_names_are_8_3_uppercase_with_version() {
        let r = rules(1);
        let (b, e) = iso_base_ext("vmlinuz-6.1.0.tar.gz", false, &r);
        assert_eq!(iso_identifier(&b, e.as_deref(), false, &r), "VMLINUZ_.GZ;1");
        let (b, e) = iso_base_ext("README", false, &r);
        assert_eq!(iso_identifier(&b, e.as_deref(), false, &r), "README.;1");
        let (b, _) = iso_base_ext("my.long-directory", true, &r);
        assert_eq!(b, "MY_LONG_");
    }

    #[test]
    fn level2_allows_31_characters() {
        let r = rules(2);
        let (b, e) = iso_base_ext("a-very-long-file-name-for-testing-limits.txt", false, &r);
        let id = iso_identifier(&b, e.as_deref(), false, &r);
        assert_eq!(id, "A_VERY_LONG_FILE_NAME_FOR_T.TXT;1");
        assert_eq!(id.len() - 2, 31);
    }

    #[test]
    fn leading_dot_maps_to_underscore_unless_allowed() {
        let (b, e) = iso_base_ext(".hidden", false, &rules(2));
        assert_eq!((b.as_str(), e), ("_HIDDEN", None));
        let r = IsoRules::from(&Naming {
            iso_level: 2,
            allow_leading_dots: true,
            allow_lowercase: true,
            ..Naming::default()
        });
        let (b, e) = iso_base_ext(".hidden", false, &r);
        assert_eq!((b.as_str(), e.as_deref()), ("", Some("hidden")));
    }

    #[test]
    fn omit_version_and_period_rules() {
        let r = IsoRules::from(&Naming {
            iso_level: 2,
            omit_version_numbers: true,
            omit_trailing_period: true,
            ..Naming::default()
        });
        let (b, e) = iso_base_ext("readme", false, &r);
        assert_eq!(iso_identifier(&b, e.as_deref(), false, &r), "README");
    }

    #[test]
    fn level4_names_leave_room_for_rock_ridge_continuation() {
        let long = "n".repeat(300);
        let plain = IsoRules::from(&Naming {
            iso_level: 4,
            ..Naming::default()
        });
        assert_eq!(iso_base_ext(&long, true, &plain).0.len(), 207);
        let rr = IsoRules::from(&Naming {
            iso_level: 4,
            rock_ridge: Some(crate::spec::RockRidgeMode::Faithful),
            ..Naming::default()
        });
        let (b, _) = iso_base_ext(&long, true, &rr);
        assert!(crate::write::hierarchy::record_len(b.len(), super::super::rrip::CE_LEN) <= 255);
    }

    #[test]
    fn collisions_get_numeric_suffixes() {
        let r = rules(1);
        let names = iso_names_for_dir(
            &[
                ("longname1.txt", false),
                ("longname2.txt", false),
                ("LONGNAME3.TXT", false),
            ],
            &r,
        );
        assert_eq!(names[0], "LONGNAME.TXT;1");
        assert_eq!(names[1], "LONGN000.TXT;1");
        assert_eq!(names[2], "LONGN001.TXT;1");
    }

    #[test]
    fn record_order_pads_name_before_extension() {
        // "A.B" sorts before "A_.B"? Name "A" padded with space (0x20) < '_' (0x5F).
        assert_eq!(iso_order(b"A.B;1", b"A_.B;1"), Ordering::Less);
        assert_eq!(iso_order(b"AB.C;1", b"A.CD;1"), Ordering::Greater);
        assert_eq!(iso_order(b"X;2", b"X;1"), Ordering::Less);
    }

    #[test]
    fn joliet_maps_forbidden_characters_and_truncates() {
        let u = joliet_units("a:b*c?.txt", 64);
        assert_eq!(String::from_utf16(&u).unwrap(), "a_b_c_.txt");
        let long = "x".repeat(80) + ".iso";
        let u = joliet_units(&long, JOLIET_MAX);
        assert_eq!(u.len(), 64);
        assert!(String::from_utf16(&u).unwrap().ends_with(".iso"));
        assert_eq!(ucs2_be(&joliet_units("é", 64)), vec![0x00, 0xE9]);
    }

    #[test]
    fn joliet_collisions_get_suffixes_and_versions() {
        let long_a = "y".repeat(70) + "a";
        let long_b = "y".repeat(70) + "b";
        let names = joliet_names_for_dir(&[(&long_a, false), (&long_b, false)], JOLIET_MAX, true);
        assert_ne!(names[0], names[1]);
        assert_eq!(names[0].len(), 66);
        assert!(String::from_utf16(&names[1]).unwrap().ends_with("000;1"));
    }
}
