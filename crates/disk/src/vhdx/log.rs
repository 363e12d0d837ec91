//! The VHDX log: finding the active sequence of entries and replaying it, and writing an entry
//! (`entry_bytes`, for the in-place editor's BAT updates).
//!
//! A read-only open never modifies the input: the replay produces a `ReplayOverlay`, a
//! `ReadAt` that shows the file as it would be after the replay (pages from the log over the
//! original bytes). The search is bounded (`MAX_LOG_BYTES`, `MAX_REPLAY_STEPS`), and sequence
//! numbers must strictly increase along a sequence, so a log whose entries point at each other
//! in a loop cannot make the walk run forever.

use std::collections::BTreeMap;
use std::io;

use super::header::guid;
use super::Error;
use uuid::Uuid;
use vmedia_io::bytes::{le32, le64};
use vmedia_io::ReadAt;

pub const PAGE: u64 = 4096;
/// Largest log accepted (bytes): Hyper-V and qemu make 1 MiB logs; the spec allows more, but a
/// log is read into memory and searched.
pub const MAX_LOG_BYTES: u32 = 64 << 20;
/// Bound on entry visits while searching for the active sequence.
pub const MAX_REPLAY_STEPS: usize = 1 << 20;
const ENTRY_HEADER: usize = 64;
const DESCRIPTOR: usize = 32;

/// One validated log entry.
#[derive(Debug, Clone)]
struct Entry {
    offset: u32,
    length: u32,
    tail: u32,
    sequence: u64,
    last_file_offset: u64,
    ops: Vec<Op>,
}

/// One write the log asks for.
#[derive(Debug, Clone)]
enum Op {
    Data { file_offset: u64, page: Box<[u8]> },
    Zero { file_offset: u64, length: u64 },
}

fn parse_entry(log: &[u8], offset: u32, log_guid: &Uuid) -> Option<Entry> {
    let start = offset as usize;
    let head = log.get(start..start.checked_add(ENTRY_HEADER)?)?;
    if &head[0..4] != b"loge" {
        return None;
    }
    let length = le32(head, 8)?;
    if length == 0 || u64::from(length) % PAGE != 0 || length as usize > log.len() {
        return None;
    }
    // Entries wrap around the circular log: assemble the bytes in order.
    let mut bytes = Vec::with_capacity(length as usize);
    let first = (log.len() - start).min(length as usize);
    bytes.extend_from_slice(&log[start..start + first]);
    bytes.extend_from_slice(&log[..length as usize - first]);
    let crc = super::header::crc_with_zeroed_field(&bytes, 4);
    if crc != le32(&bytes, 4)? || guid(&bytes, 32)? != *log_guid {
        return None;
    }
    let tail = le32(&bytes, 12)?;
    let sequence = le64(&bytes, 16)?;
    let count = le32(&bytes, 24)? as usize;
    let descriptor_area =
        (ENTRY_HEADER + count.checked_mul(DESCRIPTOR)?).div_ceil(PAGE as usize) * PAGE as usize;
    if descriptor_area > bytes.len() || u64::from(tail) % PAGE != 0 || tail as usize >= log.len() {
        return None;
    }
    let mut data_at = descriptor_area;
    let mut ops = Vec::with_capacity(count);
    for i in 0..count {
        let d = bytes.get(ENTRY_HEADER + i * DESCRIPTOR..ENTRY_HEADER + (i + 1) * DESCRIPTOR)?;
        if le64(d, 24)? != sequence {
            return None;
        }
        let file_offset = le64(d, 16)?;
        if !file_offset.is_multiple_of(PAGE) {
            return None;
        }
        match &d[0..4] {
            b"zero" => {
                let length = le64(d, 8)?;
                if !length.is_multiple_of(PAGE) {
                    return None;
                }
                ops.push(Op::Zero {
                    file_offset,
                    length,
                });
            }
            b"desc" => {
                let sector = bytes.get(data_at..data_at + PAGE as usize)?;
                data_at += PAGE as usize;
                if &sector[0..4] != b"data"
                    || u64::from(le32(sector, 4)?) != sequence >> 32
                    || u64::from(le32(sector, 4092)?) != sequence & 0xffff_ffff
                {
                    return None;
                }
                let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                page[0..8].copy_from_slice(&d[8..16]);
                page[8..4092].copy_from_slice(&sector[8..4092]);
                page[4092..4096].copy_from_slice(&d[4..8]);
                ops.push(Op::Data { file_offset, page });
            }
            _ => return None,
        }
    }
    Some(Entry {
        offset,
        length,
        tail,
        sequence,
        last_file_offset: le64(&bytes, 56)?,
        ops,
    })
}

/// The result of replaying a log in memory.
#[derive(Debug, Default)]
pub struct Replay {
    /// Pages written by the log, by file offset, each with the order it was written in.
    pages: BTreeMap<u64, (usize, Box<[u8]>)>,
    /// Zeroed ranges with their order.
    zeros: Vec<(u64, u64, usize)>,
    /// The file must be at least this long after the replay.
    pub min_file_size: u64,
    /// Entries replayed.
    pub entries: usize,
}

/// Finds the active sequence in `log` (the whole log area) and returns what replaying it
/// writes. An empty `Replay` means no valid sequence (nothing to replay).
pub fn replay(log: &[u8], log_guid: &Uuid) -> Result<Replay, Error> {
    if log.len() > MAX_LOG_BYTES as usize || !(log.len() as u64).is_multiple_of(PAGE) {
        return Err(Error::Invalid {
            field: "log length",
            offset: 0,
            reason: format!(
                "{} bytes is not a multiple of 4 KiB up to {MAX_LOG_BYTES}",
                log.len()
            ),
        });
    }
    let mut entries: BTreeMap<u32, Entry> = BTreeMap::new();
    for slot in (0..log.len() as u64).step_by(PAGE as usize) {
        if let Some(e) = parse_entry(log, slot as u32, log_guid) {
            entries.insert(e.offset, e);
        }
    }
    let mut heads: Vec<&Entry> = entries.values().collect();
    heads.sort_by_key(|e| std::cmp::Reverse(e.sequence));
    let mut steps = 0usize;
    for head in heads {
        // Walk from the head's tail forward; every step must be the next sequence number.
        let mut chain: Vec<&Entry> = Vec::new();
        let mut at = head.tail;
        let mut expected: Option<u64> = None;
        let ok = loop {
            steps += 1;
            if steps > MAX_REPLAY_STEPS {
                return Err(Error::Invalid {
                    field: "log",
                    offset: u64::from(at),
                    reason: "too many entries to examine while looking for the active sequence"
                        .into(),
                });
            }
            let Some(e) = entries.get(&at) else {
                break false;
            };
            if let Some(seq) = expected {
                if e.sequence != seq {
                    break false;
                }
            }
            chain.push(e);
            if e.offset == head.offset {
                break e.sequence == head.sequence;
            }
            if chain.len() > entries.len() {
                break false;
            }
            expected = Some(e.sequence.saturating_add(1));
            at = ((u64::from(e.offset) + u64::from(e.length)) % log.len() as u64) as u32;
        };
        if ok {
            let mut replay = Replay::default();
            let mut order = 0usize;
            for e in &chain {
                replay.min_file_size = replay.min_file_size.max(e.last_file_offset);
                for op in &e.ops {
                    order += 1;
                    match op {
                        Op::Data { file_offset, page } => {
                            replay.pages.insert(*file_offset, (order, page.clone()));
                        }
                        Op::Zero {
                            file_offset,
                            length,
                        } => replay.zeros.push((*file_offset, *length, order)),
                    }
                }
            }
            replay.entries = chain.len();
            return Ok(replay);
        }
    }
    Ok(Replay::default())
}

impl Replay {
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// A file seen through a replayed log.
pub struct ReplayOverlay<S> {
    base: S,
    replay: Replay,
}

impl<S: ReadAt> ReplayOverlay<S> {
    pub fn new(base: S, replay: Replay) -> Self {
        ReplayOverlay { base, replay }
    }

    fn page_content(&self, page_offset: u64) -> Option<Option<&[u8]>> {
        let data = self
            .replay
            .pages
            .get(&page_offset)
            .map(|(order, p)| (*order, p));
        let zero = self
            .replay
            .zeros
            .iter()
            .filter(|(off, len, _)| page_offset >= *off && page_offset - *off < *len)
            .map(|z| z.2)
            .max();
        match (data, zero) {
            (Some((d, p)), Some(z)) if d > z => Some(Some(&p[..])),
            (Some((_, p)), None) => Some(Some(&p[..])),
            (_, Some(_)) => Some(None),
            (None, None) => None,
        }
    }
}

impl<S: ReadAt> ReadAt for ReplayOverlay<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.size()?;
        if offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let buf = &mut buf[..len];
        let base_size = self.base.size()?;
        // Base bytes first (zeros past the base end, where the log grew the file)...
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            if at >= base_size {
                buf[done..].fill(0);
                break;
            }
            let n = self.base.read_at(&mut buf[done..], at)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        // ...then the log's pages over them.
        let first_page = offset / PAGE * PAGE;
        let mut page = first_page;
        while page < offset + len as u64 {
            if let Some(content) = self.page_content(page) {
                let from = page.max(offset);
                let to = (page + PAGE).min(offset + len as u64);
                let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
                match content {
                    Some(p) => {
                        dst.copy_from_slice(&p[(from - page) as usize..(to - page) as usize])
                    }
                    None => dst.fill(0),
                }
            }
            page += PAGE;
        }
        Ok(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.base.size()?.max(self.replay.min_file_size))
    }
}

/// Pages one log entry can carry in the smallest (1 MiB) log: one 4 KiB descriptor page holds
/// 126 descriptors after the entry header; more would need a second descriptor page.
pub const MAX_PAGES_PER_ENTRY: usize = (PAGE as usize - ENTRY_HEADER) / DESCRIPTOR;

/// One log entry that writes `pages` (4 KiB each, at 4 KiB-aligned file offsets), as
/// MS-VHDX lays it out: entry header and descriptors in the first page, then one data sector
/// per page whose first 8 and last 4 bytes travel in the descriptor. `file_size` is both the
/// flushed and the last file offset (the file is already that long). At most
/// `MAX_PAGES_PER_ENTRY` pages.
pub fn entry_bytes(
    sequence: u64,
    tail: u32,
    log_guid: &Uuid,
    file_size: u64,
    pages: &[(u64, &[u8; PAGE as usize])],
) -> Vec<u8> {
    let pages = &pages[..pages.len().min(MAX_PAGES_PER_ENTRY)];
    let length = PAGE as usize * (1 + pages.len());
    let mut b = vec![0u8; length];
    b[0..4].copy_from_slice(b"loge");
    b[8..12].copy_from_slice(&(length as u32).to_le_bytes());
    b[12..16].copy_from_slice(&tail.to_le_bytes());
    b[16..24].copy_from_slice(&sequence.to_le_bytes());
    b[24..28].copy_from_slice(&(pages.len() as u32).to_le_bytes());
    super::header::put_guid(&mut b, 32, log_guid);
    b[48..56].copy_from_slice(&file_size.to_le_bytes());
    b[56..64].copy_from_slice(&file_size.to_le_bytes());
    for (i, (file_offset, page)) in pages.iter().enumerate() {
        let d = ENTRY_HEADER + i * DESCRIPTOR;
        b[d..d + 4].copy_from_slice(b"desc");
        b[d + 4..d + 8].copy_from_slice(&page[4092..4096]);
        b[d + 8..d + 16].copy_from_slice(&page[0..8]);
        b[d + 16..d + 24].copy_from_slice(&file_offset.to_le_bytes());
        b[d + 24..d + 32].copy_from_slice(&sequence.to_le_bytes());
        let s = PAGE as usize * (1 + i);
        b[s..s + 4].copy_from_slice(b"data");
        b[s + 4..s + 8].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
        b[s + 8..s + 4092].copy_from_slice(&page[8..4092]);
        b[s + 4092..s + 4096].copy_from_slice(&(sequence as u32).to_le_bytes());
    }
    let crc = super::header::crc_with_zeroed_field(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds one log entry with data pages (used by the VHDX tests too).
    pub(crate) fn entry(
        sequence: u64,
        tail: u32,
        log_guid: &Uuid,
        writes: &[(u64, u8)],
    ) -> Vec<u8> {
        let descriptor_area = (ENTRY_HEADER + writes.len() * DESCRIPTOR).div_ceil(4096) * 4096;
        let length = descriptor_area + writes.len() * 4096;
        let mut b = vec![0u8; length];
        b[0..4].copy_from_slice(b"loge");
        b[8..12].copy_from_slice(&(length as u32).to_le_bytes());
        b[12..16].copy_from_slice(&tail.to_le_bytes());
        b[16..24].copy_from_slice(&sequence.to_le_bytes());
        b[24..28].copy_from_slice(&(writes.len() as u32).to_le_bytes());
        super::super::header::put_guid(&mut b, 32, log_guid);
        b[56..64].copy_from_slice(&(1u64 << 20).to_le_bytes());
        for (i, (file_offset, fill)) in writes.iter().enumerate() {
            let d = ENTRY_HEADER + i * DESCRIPTOR;
            b[d..d + 4].copy_from_slice(b"desc");
            b[d + 4..d + 8].copy_from_slice(&[*fill; 4]);
            b[d + 8..d + 16].copy_from_slice(&[*fill; 8]);
            b[d + 16..d + 24].copy_from_slice(&file_offset.to_le_bytes());
            b[d + 24..d + 32].copy_from_slice(&sequence.to_le_bytes());
            let s = descriptor_area + i * 4096;
            b[s..s + 4].copy_from_slice(b"data");
            b[s + 4..s + 8].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
            b[s + 8..s + 4092].fill(*fill);
            b[s + 4092..s + 4096].copy_from_slice(&(sequence as u32).to_le_bytes());
        }
        let crc = super::super::header::crc_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn replay_applies_the_active_sequence_in_order() {
        let id = Uuid::from_u128(5);
        let mut log = vec![0u8; 64 * 1024];
        let e1 = entry(10, 0, &id, &[(8192, 0xaa)]);
        let e2 = entry(11, 0, &id, &[(8192, 0xbb), (0, 0xcc)]);
        log[..e1.len()].copy_from_slice(&e1);
        log[e1.len()..e1.len() + e2.len()].copy_from_slice(&e2);
        let r = replay(&log, &id).unwrap();
        assert_eq!(r.entries, 2);
        let overlay = ReplayOverlay::new(vec![0u8; 16384], r);
        let mut page = vec![0u8; 4096];
        overlay.read_exact_at(&mut page, 8192).unwrap();
        assert!(page.iter().all(|b| *b == 0xbb));
        overlay.read_exact_at(&mut page, 0).unwrap();
        assert!(page.iter().all(|b| *b == 0xcc));
        assert_eq!(overlay.size().unwrap(), 1 << 20);
    }

    #[test]
    fn entry_with_other_log_guid_is_not_replayed() {
        let mut log = vec![0u8; 16384];
        let e = entry(1, 0, &Uuid::from_u128(1), &[(0, 1)]);
        log[..e.len()].copy_from_slice(&e);
        assert!(replay(&log, &Uuid::from_u128(2)).unwrap().is_empty());
    }

    #[test]
    fn log_loop_terminates() {
        // Two entries whose tails point at each other with equal sequence numbers.
        let id = Uuid::from_u128(3);
        let a = entry(7, 8192, &id, &[]);
        let b = entry(7, 0, &id, &[]);
        let mut log = vec![0u8; 16384];
        log[..4096].copy_from_slice(&a[..4096]);
        log[8192..12288].copy_from_slice(&b[..4096]);
        let r = replay(&log, &id).unwrap();
        assert!(r.entries <= 1);
    }

    #[test]
    fn written_entry_replays_its_pages() {
        let id = Uuid::from_u128(0x51);
        let p1 = [0x11u8; 4096];
        let mut p2 = [0x22u8; 4096];
        p2[0] = 0x99;
        p2[4095] = 0x77;
        let e = entry_bytes(5, 0, &id, 1 << 20, &[(8192, &p1), (0, &p2)]);
        let mut log = vec![0u8; 64 * 1024];
        log[..e.len()].copy_from_slice(&e);
        let r = replay(&log, &id).unwrap();
        assert_eq!(r.entries, 1);
        let overlay = ReplayOverlay::new(vec![0u8; 16384], r);
        let mut page = vec![0u8; 4096];
        overlay.read_exact_at(&mut page, 8192).unwrap();
        assert_eq!(page, p1);
        overlay.read_exact_at(&mut page, 0).unwrap();
        assert_eq!(page, p2);
    }

    #[test]
    fn oversized_log_is_refused() {
        let log = vec![0u8; 4095];
        assert!(matches!(
            replay(&log, &Uuid::nil()),
            Err(Error::Invalid {
                field: "log length",
                ..
            })
        ));
    }
}
