//! The tar container of an OVA: an index of the members of an existing archive (ustar, with
//! PAX and GNU long-name extensions as other tools may add them), and a ustar writer.
//!
//! An OVA is a plain tar (DSP0243 §5.3): the descriptor first, then the manifest, certificate
//! and disks in the order the References name them (ovftool puts the manifest after the disks
//! when it streams). The index never reads member data; members are read as windows.

use std::io::Write;
use std::path::Path;

use vmedia_io::ReadAt;

use crate::error::{OvfError, Result};

/// tar's block.
pub const BLOCK: u64 = 512;
/// Most members indexed: an OVA holds a descriptor, a manifest, a certificate and the disks.
pub const MAX_MEMBERS: usize = 4096;
/// Largest PAX or GNU long-name header read: path names of a few hundred bytes are all an
/// OVA needs.
pub const MAX_EXTENSION_BYTES: u64 = 64 << 10;
/// Largest size a plain octal ustar size field holds (11 octal digits).
const OCTAL_SIZE_MAX: u64 = (1 << 33) - 1;

/// One regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the header block.
    pub header: u64,
    /// Offset of the data.
    pub offset: u64,
    pub size: u64,
}

/// Lists the regular files of the tar in `source` (`path` names it in errors), in order.
pub fn index(source: &dyn ReadAt, path: &Path) -> Result<Vec<Member>> {
    let total = source
        .size()
        .map_err(crate::error::io_err(path, "read the size of"))?;
    let mut members = Vec::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let bad = |offset: u64, field: &'static str, problem: String| OvfError::Tar {
        path: path.to_path_buf(),
        offset,
        field,
        problem,
    };
    loop {
        if at.checked_add(BLOCK).is_none_or(|end| end > total) {
            if members.is_empty() {
                return Err(bad(
                    at,
                    "header",
                    "the file ends before a tar header".into(),
                ));
            }
            // Archives cut after the last member (no end blocks) are read, as bsdtar does.
            break;
        }
        let mut block = [0u8; BLOCK as usize];
        source
            .read_exact_at(&mut block, at)
            .map_err(crate::error::io_err(path, "read"))?;
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let stored = parse_octal(&block[148..156])
            .ok_or_else(|| bad(at, "chksum", "not an octal number".into()))?;
        let unsigned: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        let signed: i64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as i8 as i64
                }
            })
            .sum();
        if stored != unsigned && stored as i64 != signed {
            return Err(bad(
                at,
                "chksum",
                format!("stored {stored:o}, computed {unsigned:o}: not a tar header"),
            ));
        }
        let size = match pax_size.take() {
            Some(s) => s,
            None => parse_size(&block[124..136])
                .ok_or_else(|| bad(at, "size", "not a number".into()))?,
        };
        let data = at + BLOCK;
        let end = size
            .checked_add(BLOCK - 1)
            .map(|s| s / BLOCK * BLOCK)
            .and_then(|padded| data.checked_add(padded))
            .ok_or_else(|| bad(at, "size", format!("{size} overflows")))?;
        if data.checked_add(size).is_none_or(|e| e > total) {
            return Err(bad(
                at,
                "size",
                format!("{size} bytes of data run past the end of the file ({total} bytes)"),
            ));
        }
        let kind = block[156];
        match kind {
            b'x' | b'L' => {
                if size > MAX_EXTENSION_BYTES {
                    return Err(OvfError::Limit {
                        what: format!("{}: tar extension header at {at:#x}", path.display()),
                        limit: "MAX_EXTENSION_BYTES",
                        value: size,
                        max: MAX_EXTENSION_BYTES,
                    });
                }
                let mut ext = vec![0u8; size as usize];
                source
                    .read_exact_at(&mut ext, data)
                    .map_err(crate::error::io_err(path, "read"))?;
                if kind == b'L' {
                    let name = ext.split(|&b| b == 0).next().unwrap_or(&[]);
                    long_name = Some(String::from_utf8_lossy(name).into_owned());
                } else {
                    let (p, s) = parse_pax(&ext).ok_or_else(|| {
                        bad(at, "pax", "malformed extended header records".into())
                    })?;
                    if p.is_some() {
                        long_name = p;
                    }
                    pax_size = s;
                }
            }
            b'0' | 0 | b'7' => {
                let name = match long_name.take() {
                    Some(n) => n,
                    None => header_name(&block),
                };
                members.push(Member {
                    name,
                    header: at,
                    offset: data,
                    size,
                });
                if members.len() > MAX_MEMBERS {
                    return Err(OvfError::Limit {
                        what: path.display().to_string(),
                        limit: "MAX_MEMBERS",
                        value: members.len() as u64,
                        max: MAX_MEMBERS as u64,
                    });
                }
            }
            _ => {
                // Folders, links, global PAX headers: not OVA members.
                long_name = None;
            }
        }
        at = end;
    }
    Ok(members)
}

fn header_name(block: &[u8; BLOCK as usize]) -> String {
    let field = |r: std::ops::Range<usize>| {
        let raw = &block[r];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let name = field(0..100);
    if &block[257..262] == b"ustar" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v = 0u64;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// Octal, or GNU base-256 (high bit of the first byte set) for sizes over 8 GiB.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    parse_octal(field)
}

/// `path` and `size` from PAX records (`LEN key=value\n`).
fn parse_pax(mut ext: &[u8]) -> Option<(Option<String>, Option<u64>)> {
    let (mut path, mut size) = (None, None);
    while !ext.is_empty() {
        if ext.iter().all(|&b| b == 0) {
            break;
        }
        let space = ext.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&ext[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > ext.len() {
            return None;
        }
        let record = &ext[space + 1..len];
        let record = record.strip_suffix(b"\n")?;
        let eq = record.iter().position(|&b| b == b'=')?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => path = Some(String::from_utf8_lossy(value).into_owned()),
            b"size" => size = Some(std::str::from_utf8(value).ok()?.parse().ok()?),
            _ => {}
        }
        ext = &ext[len..];
    }
    Some((path, size))
}

/// A ustar header for a regular file (mode 0644, owner 0, the given time). Names must fit
/// the 100-byte field (OVA members are flat file names); sizes over 8 GiB use GNU base-256.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK as usize]> {
    if name.is_empty() || name.len() > 100 || name.contains('/') {
        return Err(OvfError::InvalidOption(format!(
            "{name:?}: OVA member names are plain file names of at most 100 bytes"
        )));
    }
    let mut h = [0u8; BLOCK as usize];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    if size <= OCTAL_SIZE_MAX {
        put_octal(&mut h[124..136], size);
    } else {
        let field = &mut h[124..136];
        field[4..].copy_from_slice(&size.to_be_bytes());
        field[0] = 0x80;
    }
    put_octal(&mut h[136..148], mtime.min(OCTAL_SIZE_MAX));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    put_octal(&mut h[148..155], sum);
    h[155] = b' ';
    Ok(h)
}

fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Zero bytes after `size` bytes of data to reach the next block.
pub fn padding(size: u64) -> usize {
    ((BLOCK - size % BLOCK) % BLOCK) as usize
}

/// The two zero blocks that end an archive.
pub fn finish(out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(&[0u8; 2 * BLOCK as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend_from_slice(&header(name, data.len() as u64, 0).unwrap());
            out.extend_from_slice(data);
            out.extend(std::iter::repeat_n(0u8, padding(data.len() as u64)));
        }
        finish(&mut out).unwrap();
        out
    }

    #[test]
    fn written_archive_indexes_back() {
        let tar = archive(&[("a.ovf", b"<x/>"), ("b.vmdk", &[7u8; 600])]);
        let m = index(&tar, Path::new("t.ova")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "a.ovf");
        assert_eq!(m[1].offset, 1024 + 512);
        assert_eq!(m[1].size, 600);
    }

    #[test]
    fn big_sizes_use_base_256() {
        let h = header("big.vmdk", 10 << 30, 0).unwrap();
        assert_eq!(parse_size(&h[124..136]), Some(10 << 30));
    }

    #[test]
    fn corrupt_checksum_and_overlong_size_are_refused() {
        let mut tar = archive(&[("a.ovf", b"<x/>")]);
        tar[0] ^= 1;
        assert!(matches!(
            index(&tar, Path::new("t")),
            Err(OvfError::Tar {
                field: "chksum",
                ..
            })
        ));
        let mut h = header("a", 1 << 20, 0).unwrap().to_vec();
        h.extend_from_slice(&[0u8; 512]);
        assert!(matches!(
            index(&h, Path::new("t")),
            Err(OvfError::Tar { field: "size", .. })
        ));
    }

    #[test]
    fn pax_path_overrides_the_header_name() {
        let rec = b"20 path=long-name.x\n";
        let mut tar = Vec::new();
        let mut h = header("PaxHeader", rec.len() as u64, 0).unwrap();
        h[156] = b'x';
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        put_octal(&mut h[148..155], sum);
        tar.extend_from_slice(&h);
        tar.extend_from_slice(rec);
        tar.extend(std::iter::repeat_n(0u8, padding(rec.len() as u64)));
        tar.extend(archive(&[("short", b"data")]));
        let m = index(&tar, Path::new("t")).unwrap();
        assert_eq!(m[0].name, "long-name.x");
    }
}
