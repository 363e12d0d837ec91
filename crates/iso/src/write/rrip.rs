//! Rock Ridge (RRIP 1.12) and SUSP entries, and their packing into a directory record's
//! System Use field with CE continuation areas.
//!
//! Entries are built with placeholder addresses first (their sizes never depend on an address),
//! so the layout stage can measure records, then rebuilt with the real addresses.

use super::SECTOR_SIZE;

/// A record's System Use field cannot exceed 255 bytes of record; this is what a CE costs.
pub(crate) const CE_LEN: usize = 28;
/// The most payload bytes an NM or SL entry carries (entry length is one byte).
const MAX_ENTRY_PAYLOAD: usize = 250;
/// RRIP 1.12 extension identification, as xorriso writes it.
const ER_ID: &[u8] = b"IEEE_1282";
const ER_DESCRIPTOR: &[u8] =
    b"THE IEEE 1282 PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS.";
const ER_SOURCE: &[u8] = b"PLEASE CONTACT THE IEEE STANDARDS DEPARTMENT, PISCATAWAY, NJ, USA FOR THE 1282 SPECIFICATION.";

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn entry(sig: &[u8; 2], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut su = SuList::default();
    su.push_entry(sig, version, &[payload]);
    su.bytes
}

/// The System Use entries of one record, laid end to end in one buffer (with where each ends)
/// and reused from record to record: the writer builds tens of thousands of records, and one
/// allocation per entry was a large share of its time.
#[derive(Debug, Default)]
pub(crate) struct SuList {
    /// The entries' bytes, in order.
    pub bytes: Vec<u8>,
    /// End offset of each entry in `bytes`.
    ends: Vec<usize>,
}

impl SuList {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Appends one whole entry.
    pub fn push(&mut self, entry: &[u8]) {
        self.bytes.extend_from_slice(entry);
        self.ends.push(self.bytes.len());
    }

    /// Appends an entry made of a header and `parts` (payload pieces, concatenated).
    fn push_entry(&mut self, sig: &[u8; 2], version: u8, parts: &[&[u8]]) {
        let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.bytes.extend_from_slice(sig);
        self.bytes.push(len as u8);
        self.bytes.push(version);
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.ends.push(self.bytes.len());
    }

    /// Each entry's bytes, in order.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.bytes[s..e])
    }

    /// The first entry with signature `sig`, to change its flags.
    pub fn find_mut(&mut self, sig: &[u8; 2]) -> Option<&mut [u8]> {
        let mut start = 0;
        for &end in &self.ends {
            if self.bytes[start..end].starts_with(sig) {
                return Some(&mut self.bytes[start..end]);
            }
            start = end;
        }
        None
    }

    /// The entries as separate buffers (for `pack` when they spill into a continuation area).
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.entries().map(<[u8]>::to_vec).collect()
    }
}

/// The System Use bytes of a record from `su`: the entries themselves when they fit `room`
/// (no copy), else what `pack` makes of them.
pub(crate) fn pack_list<'a>(
    su: &'a SuList,
    room: usize,
    area: &mut CeArea,
) -> std::borrow::Cow<'a, [u8]> {
    if su.bytes.len() <= room {
        return std::borrow::Cow::Borrowed(&su.bytes);
    }
    std::borrow::Cow::Owned(pack(&su.to_vecs(), room, area))
}

/// SUSP "SP": marks the root's "." record as carrying SUSP, no bytes skipped.
pub(crate) fn sp() -> Vec<u8> {
    entry(b"SP", 1, &[0xBE, 0xEF, 0])
}

/// RRIP 1.09 "RR" flags entry, still read by old readers to detect Rock Ridge.
#[cfg(test)]
pub(crate) fn rr(flags: u8) -> Vec<u8> {
    entry(b"RR", 1, &[flags])
}

/// `rr`, appended to `su`.
pub(crate) fn rr_into(su: &mut SuList, flags: u8) {
    su.push_entry(b"RR", 1, &[&[flags]]);
}

/// SUSP "ER" naming the RRIP extension.
pub(crate) fn er() -> Vec<u8> {
    let mut p = vec![
        ER_ID.len() as u8,
        ER_DESCRIPTOR.len() as u8,
        ER_SOURCE.len() as u8,
        1,
    ];
    p.extend_from_slice(ER_ID);
    p.extend_from_slice(ER_DESCRIPTOR);
    p.extend_from_slice(ER_SOURCE);
    entry(b"ER", 1, &p)
}

/// "PX": mode, links, uid, gid and the file serial number (RRIP 1.12, 44 bytes).
#[cfg(test)]
pub(crate) fn px(mode: u32, nlink: u32, uid: u32, gid: u32, serial: u32) -> Vec<u8> {
    let mut su = SuList::default();
    px_into(&mut su, mode, nlink, uid, gid, serial);
    su.bytes
}

/// `px`, appended to `su`.
pub(crate) fn px_into(su: &mut SuList, mode: u32, nlink: u32, uid: u32, gid: u32, serial: u32) {
    let [a, b, c, d, e] = [mode, nlink, uid, gid, serial].map(both32);
    su.push_entry(b"PX", 1, &[&a, &b, &c, &d, &e]);
}

/// "PN": device number of a block or character device.
pub(crate) fn pn(rdev: u64) -> Vec<u8> {
    let major = libc_major(rdev);
    let minor = libc_minor(rdev);
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&both32(major));
    p.extend_from_slice(&both32(minor));
    entry(b"PN", 1, &p)
}

fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// The 7-byte directory-record date of ECMA-119 9.1.5, UTC; the year byte counts from 1900,
/// so years outside 1900..=2155 are clamped.
pub(crate) fn dir_date(unix: i64) -> [u8; 7] {
    let t = crate::date::utc_datetime(unix);
    let year = (i64::from(t.year()) - 1900).clamp(0, 255) as u8;
    [
        year,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        0,
    ]
}

/// "TF": modify, access and attribute-change times in 7-byte form.
#[cfg(test)]
pub(crate) fn tf(mtime: i64, atime: i64, ctime: i64) -> Vec<u8> {
    let mut su = SuList::default();
    tf_into(&mut su, [mtime, atime, ctime].map(dir_date));
    su.bytes
}

/// `tf` from the three times already in 7-byte form, appended to `su`.
pub(crate) fn tf_into(su: &mut SuList, dates: [[u8; 7]; 3]) {
    su.push_entry(b"TF", 1, &[&[0x0E], &dates[0], &dates[1], &dates[2]]);
}

/// "NM" entries for a long name, split with the CONTINUE flag.
#[cfg(test)]
pub(crate) fn nm(name: &[u8]) -> Vec<Vec<u8>> {
    let mut su = SuList::default();
    nm_into(&mut su, name);
    su.to_vecs()
}

/// `nm`, appended to `su`.
pub(crate) fn nm_into(su: &mut SuList, name: &[u8]) {
    if name.is_empty() {
        su.push_entry(b"NM", 1, &[&[0]]);
        return;
    }
    let chunks = name.chunks(MAX_ENTRY_PAYLOAD);
    let last = chunks.len() - 1;
    for (i, c) in chunks.enumerate() {
        su.push_entry(b"NM", 1, &[&[if i < last { 0x01 } else { 0x00 }], c]);
    }
}

/// "SL" entries for a symbolic link target, split into components, long ones continued.
pub(crate) fn sl(target: &str) -> Vec<Vec<u8>> {
    let mut components: Vec<Vec<u8>> = Vec::new();
    if target.starts_with('/') {
        components.push(vec![0x08, 0]);
    }
    for part in target.split('/').filter(|p| !p.is_empty()) {
        match part {
            "." => components.push(vec![0x02, 0]),
            ".." => components.push(vec![0x04, 0]),
            p => {
                let bytes = p.as_bytes();
                let chunks: Vec<&[u8]> = bytes.chunks(255).collect();
                let last = chunks.len() - 1;
                for (i, c) in chunks.iter().enumerate() {
                    let mut comp = vec![if i < last { 0x01 } else { 0x00 }, c.len() as u8];
                    comp.extend_from_slice(c);
                    components.push(comp);
                }
            }
        }
    }
    if components.is_empty() {
        // An empty target: one empty component keeps readers' parsers happy.
        components.push(vec![0x00, 0]);
    }
    // Pack components into SL entries of at most MAX_ENTRY_PAYLOAD; a component longer than
    // the room left is split across entries with the component CONTINUE flag.
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let room = MAX_ENTRY_PAYLOAD - 1;
    for comp in components {
        if current.len() + comp.len() > room {
            if !current.is_empty() {
                entries.push(std::mem::take(&mut current));
            }
            if comp.len() > room {
                let flags = comp[0];
                let data = &comp[2..];
                let pieces: Vec<&[u8]> = data.chunks(room - 2).collect();
                let last = pieces.len() - 1;
                for (i, piece) in pieces.iter().enumerate() {
                    let mut c = vec![
                        if i < last { flags | 0x01 } else { flags },
                        piece.len() as u8,
                    ];
                    c.extend_from_slice(piece);
                    if i < last {
                        entries.push(c);
                    } else {
                        current = c;
                    }
                }
                continue;
            }
        }
        current.extend_from_slice(&comp);
    }
    if !current.is_empty() {
        entries.push(current);
    }
    let last = entries.len() - 1;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, comps)| {
            let mut p = vec![if i < last { 0x01 } else { 0x00 }];
            p.extend_from_slice(&comps);
            entry(b"SL", 1, &p)
        })
        .collect()
}

/// "CL": where a relocated folder really lives.
pub(crate) fn cl(lba: u32) -> Vec<u8> {
    entry(b"CL", 1, &both32(lba))
}

/// "PL": the original parent of a relocated folder.
pub(crate) fn pl(lba: u32) -> Vec<u8> {
    entry(b"PL", 1, &both32(lba))
}

/// "RE": this record is a relocated folder (hidden from RR readers at its real place).
pub(crate) fn re() -> Vec<u8> {
    entry(b"RE", 1, &[])
}

fn ce(block: u32, offset: u32, length: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&both32(block));
    p.extend_from_slice(&both32(offset));
    p.extend_from_slice(&both32(length));
    entry(b"CE", 1, &p)
}

/// Continuation-area bytes allocated sector by sector; no area crosses a sector boundary.
#[derive(Debug, Default)]
pub(crate) struct CeArea {
    /// First sector of this area (LBA).
    pub start_lba: u32,
    /// Bytes laid out so far, sector-padded where an area would not fit.
    pub bytes: Vec<u8>,
}

impl CeArea {
    pub fn new(start_lba: u32) -> CeArea {
        CeArea {
            start_lba,
            bytes: Vec::new(),
        }
    }

    /// Reserves `len` bytes (at most one sector) and returns (lba, offset in that sector).
    fn reserve(&mut self, len: usize) -> (u32, u32) {
        let sector = SECTOR_SIZE as usize;
        let used = self.bytes.len() % sector;
        if used != 0 && used + len > sector {
            let pad = sector - used;
            self.bytes.resize(self.bytes.len() + pad, 0);
        }
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        (self.start_lba + (at / sector) as u32, (at % sector) as u32)
    }

    pub fn sectors(&self) -> u32 {
        self.bytes.len().div_ceil(SECTOR_SIZE as usize) as u32
    }
}

/// Packs `entries` into at most `room` bytes of System Use; what does not fit goes to
/// continuation areas in `area` (chained by CE entries when more than a sector is needed).
pub(crate) fn pack(entries: &[Vec<u8>], room: usize, area: &mut CeArea) -> Vec<u8> {
    let total: usize = entries.iter().map(Vec::len).sum();
    if total <= room {
        return entries.concat();
    }
    let mut head = Vec::new();
    let mut i = 0;
    while i < entries.len() && head.len() + entries[i].len() + CE_LEN <= room {
        head.extend_from_slice(&entries[i]);
        i += 1;
    }
    let sector = SECTOR_SIZE as usize;
    let mut pending_ce_at: Option<(bool, usize)> = None; // (in head?, byte position of CE)
    head.extend_from_slice(&ce(0, 0, 0));
    let mut ce_pos = (true, head.len() - CE_LEN);
    let _ = pending_ce_at.take();
    while i < entries.len() {
        // Gather what fits one sector, keeping room for a further CE when more remain.
        let mut chunk = Vec::new();
        let start = i;
        while i < entries.len() {
            let remaining_after: usize = entries[i + 1..].iter().map(Vec::len).sum();
            let need_ce = if remaining_after > 0 { CE_LEN } else { 0 };
            if chunk.len() + entries[i].len() + need_ce > sector {
                break;
            }
            chunk.extend_from_slice(&entries[i]);
            i += 1;
        }
        if i == start {
            // A single entry larger than a sector cannot happen (entries are <= 255 bytes).
            break;
        }
        let more = i < entries.len();
        let len = chunk.len() + if more { CE_LEN } else { 0 };
        let (lba, off) = area.reserve(len);
        let ce_bytes = ce(lba, off, len as u32);
        match ce_pos {
            (true, p) => head[p..p + CE_LEN].copy_from_slice(&ce_bytes),
            (false, p) => area.bytes[p..p + CE_LEN].copy_from_slice(&ce_bytes),
        }
        let abs = (lba - area.start_lba) as usize * sector + off as usize;
        area.bytes[abs..abs + chunk.len()].copy_from_slice(&chunk);
        if more {
            let p = abs + chunk.len();
            ce_pos = (false, p);
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn px_is_44_bytes_both_endian() {
        let e = px(0o100644, 1, 1000, 100, 7);
        assert_eq!(e.len(), 44);
        assert_eq!(&e[..4], &[b'P', b'X', 44, 1]);
        assert_eq!(&e[4..12], &[0xA4, 0x81, 0, 0, 0, 0, 0x81, 0xA4]);
        assert_eq!(&e[36..44], &[7, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn tf_holds_three_seven_byte_times() {
        let e = tf(0, 86_400, 1_700_000_000);
        assert_eq!(e.len(), 26);
        assert_eq!(e[4], 0x0E);
        assert_eq!(&e[5..12], &[70, 1, 1, 0, 0, 0, 0]);
        assert_eq!(&e[12..19], &[70, 1, 2, 0, 0, 0, 0]);
        // 2023-11-14 22:13:20 UTC
        assert_eq!(&e[19..26], &[123, 11, 14, 22, 13, 20, 0]);
    }

    #[test]
    fn sl_encodes_root_parent_and_names() {
        let e = &sl("/usr/../lib")[0];
        assert_eq!(&e[..5], &[b'S', b'L', e.len() as u8, 1, 0]);
        assert_eq!(
            &e[5..],
            &[0x08, 0, 0x00, 3, b'u', b's', b'r', 0x04, 0, 0x00, 3, b'l', b'i', b'b']
        );
    }

    #[test]
    fn long_sl_target_continues_across_entries() {
        let target = format!("{}/{}", "a".repeat(200), "b".repeat(200));
        let entries = sl(&target);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][4], 0x01);
        assert_eq!(entries[1][4], 0x00);
        assert!(entries
            .iter()
            .all(|e| e.len() <= 255 && e[2] as usize == e.len()));
    }

    #[test]
    fn nm_splits_long_names_with_continue_flag() {
        let parts = nm(&[b'x'; 300]);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0][4], 1);
        assert_eq!(parts[1][4], 0);
        assert_eq!(parts[0].len() - 5 + parts[1].len() - 5, 300);
    }

    #[test]
    fn pack_spills_into_continuation_area() {
        let entries = vec![sp(), er()];
        let mut area = CeArea::new(100);
        let head = pack(&entries, 100, &mut area);
        assert_eq!(&head[..7], &sp()[..]);
        assert_eq!(&head[7..11], &[b'C', b'E', 28, 1]);
        assert_eq!(&head[11..15], &100u32.to_le_bytes());
        let len = u32::from_le_bytes(head[27..31].try_into().unwrap()) as usize;
        assert_eq!(&area.bytes[..len], &er()[..]);
    }

    #[test]
    fn pack_keeps_small_fields_inline() {
        let mut area = CeArea::new(5);
        let head = pack(&[sp(), rr(0x81)], 200, &mut area);
        assert_eq!(head.len(), 12);
        assert!(area.bytes.is_empty());
    }
}
