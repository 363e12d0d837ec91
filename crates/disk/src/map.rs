//! `map`: the allocation map of an image chain, in qemu-img map's shape.

use serde::Serialize;

use crate::error::Result;
use crate::image::{BlockKind, DiskImage};

/// One run of `qemu-img map --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The file holding the data (human output's "File" column).
    #[serde(skip)]
    pub file: String,
}

/// qemu-img map's JSON layout: `{ "key": value, "key": value}`, one object per line.
struct QemuMapFormatter;

impl serde_json::ser::Formatter for QemuMapFormatter {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b"{ ")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Writes `entries` as `qemu-img map --output json` prints them: a JSON array, one entry per
/// line, in qemu's spacing (the documents compare equal to qemu-img's byte for byte).
pub fn write_qemu_json(entries: &[MapEntry], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    out.write_all(b"[")?;
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        let mut ser = serde_json::Serializer::with_formatter(&mut *out, QemuMapFormatter);
        entry.serialize(&mut ser).map_err(std::io::Error::other)?;
    }
    out.write_all(b"]\n")
}

/// The entry for the run at `offset` (up to `len` bytes), walking down the chain.
fn entry_at(top: &dyn DiskImage, offset: u64, len: u64) -> Result<MapEntry> {
    let mut img = top;
    let mut depth = 0u32;
    let mut len = len;
    loop {
        let s = img.block_status(offset, len)?;
        len = s.len;
        let base = MapEntry {
            start: offset,
            length: len,
            depth,
            present: true,
            zero: false,
            data: false,
            offset: s.host_offset.map(|h| h.0),
            file: img.path().display().to_string(),
        };
        match s.kind {
            BlockKind::Data => return Ok(MapEntry { data: true, ..base }),
            BlockKind::Zero => return Ok(MapEntry { zero: true, ..base }),
            BlockKind::Unallocated => match img.backing() {
                Some(b) if offset < b.virtual_size() => {
                    len = len.min(b.virtual_size() - offset);
                    img = b;
                    depth += 1;
                }
                Some(_) => {
                    return Ok(MapEntry {
                        present: false,
                        zero: true,
                        offset: None,
                        depth: depth + 1,
                        ..base
                    });
                }
                None => {
                    return Ok(MapEntry {
                        present: false,
                        zero: true,
                        offset: None,
                        ..base
                    })
                }
            },
        }
    }
}

/// The merged map of `[start, start + length)` of the image's guest space.
pub fn map(img: &dyn DiskImage, start: u64, length: u64) -> Result<Vec<MapEntry>> {
    let end = start.saturating_add(length).min(img.virtual_size());
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = start;
    while pos < end {
        let e = entry_at(img, pos, end - pos)?;
        pos += e.length.max(1);
        if let Some(last) = out.last_mut() {
            let same = last.depth == e.depth
                && last.present == e.present
                && last.zero == e.zero
                && last.data == e.data
                && last.file == e.file;
            let offsets_follow = match (last.offset, e.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if same && offsets_follow {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_qemu_img_maps_layout() {
        let entry = |start, offset| MapEntry {
            start,
            length: 65536,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            offset,
            file: "x".into(),
        };
        let mut out = Vec::new();
        write_qemu_json(&[entry(0, Some(327_680)), entry(65536, None)], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{ \"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": 327680},\n\
             { \"start\": 65536, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true}]\n"
        );
        let mut empty = Vec::new();
        write_qemu_json(&[], &mut empty).unwrap();
        assert_eq!(empty, b"[]\n");
    }
}
