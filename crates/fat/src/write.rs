//! Emits a planned image: boot sector (and FSInfo on FAT32), both FATs, directories, file data.
//!
//! Clusters are handed out in one deterministic walk: a folder's children get consecutive runs
//! (files and subfolder tables in name order), then each subfolder's contents follow. Every file
//! is one contiguous run, so its FAT chain is simply `n -> n + 1`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vmedia_io::Progress;

use crate::geometry::{FatType, Geometry, FAT_COUNT, SECTOR_SIZE};
use crate::names::lfn_entries;
use crate::tree::{Dir, NodeKind};
use crate::{FatError, FatImage};

/// Bytes copied per read from a source file: large enough to keep syscalls out of the way.
const COPY_CHUNK: usize = 1 << 20;
/// Media descriptor for fixed media, as mkfs.fat writes for hard-disk style images.
const MEDIA_FIXED: u8 = 0xF8;
/// BIOS drive number recorded in the boot sector (first hard disk).
const DRIVE_NUMBER: u8 = 0x80;
/// Extended boot signature: the serial, label and type fields that follow are valid.
const EXTENDED_BOOT_SIGNATURE: u8 = 0x29;
/// CHS geometry hints; nothing reads them on images, but zero confuses old tools.
const SECTORS_PER_TRACK: u16 = 63;
const HEADS: u16 = 255;
/// FAT32 FSInfo and backup boot sector positions (mkfs.fat's and the specification's choice).
const FSINFO_SECTOR: u64 = 1;
const BACKUP_BOOT_SECTOR: u64 = 6;
/// The first data cluster; the FAT32 root directory starts there.
const FIRST_CLUSTER: u64 = 2;

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;

/// Where positional writes go.
pub trait Sink {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
}

pub struct FileSink<'f> {
    pub file: &'f File,
}

impl Sink for FileSink<'_> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
}

/// Writes the image `base` bytes into a larger file (a partition inside a disk image).
pub struct OffsetSink<'f> {
    pub file: &'f File,
    pub base: u64,
}

impl Sink for OffsetSink<'_> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or_else(|| io::Error::other("partition offset overflows"))?;
        self.file.write_all_at(data, at)
    }
}

pub struct VecSink {
    pub data: Vec<u8>,
}

impl Sink for VecSink {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::other("offset beyond memory"))?;
        let end = start
            .checked_add(data.len())
            .filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(io::Error::other(format!(
                "write past the image end at {offset:#x}"
            )));
        };
        self.data[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// A run of clusters; `start == 0` for empty files, as FAT records them.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    count: u64,
}

struct PlacedDir<'a> {
    dir: &'a Dir,
    run: Run,
    /// The parent's first cluster (0 for the root, as `..` records it).
    parent_start: u64,
    mtime: i64,
    children: Vec<(Run, Option<PlacedDir<'a>>)>,
}

/// Where every cluster run goes: the root's run, the placed tree and the next free cluster.
/// The one walk both the writer and [`root_file_extents`] use, so they cannot disagree.
fn layout(image: &FatImage) -> (Run, PlacedDir<'_>, u64, i64) {
    let geometry = &image.geometry;
    let cluster = geometry.cluster_bytes();
    let dir_clusters = |dir: &Dir, is_root: bool, has_label: bool| {
        let entries = dir.entry_count(is_root) as u64 + u64::from(is_root && has_label);
        (entries * 32).div_ceil(cluster).max(1)
    };
    let mut next = FIRST_CLUSTER;
    let root_run = if geometry.fat_type == FatType::Fat32 {
        let count = dir_clusters(&image.root, true, image.has_label);
        next += count;
        Run {
            start: FIRST_CLUSTER,
            count,
        }
    } else {
        Run { start: 0, count: 0 }
    };
    let now = image.date.unwrap_or_else(unix_now);
    let root = place(
        &image.root,
        root_run,
        0,
        true,
        now,
        &mut next,
        cluster,
        &dir_clusters,
    );
    (root_run, root, next, now)
}

/// The byte offset (inside the image) and size of each file in the root folder, by long name.
pub fn root_file_extents(image: &FatImage) -> Vec<crate::FileExtent> {
    let (_, root, _, _) = layout(image);
    image
        .root
        .children
        .iter()
        .zip(&root.children)
        .filter_map(|(node, (run, _))| match &node.kind {
            NodeKind::File { size, .. } => Some(crate::FileExtent {
                name: node.source_name.clone(),
                offset: if *size == 0 {
                    0
                } else {
                    image.geometry.cluster_offset(run.start)
                },
                size: *size,
            }),
            NodeKind::Dir(_) => None,
        })
        .collect()
}

pub fn write_image(
    image: &FatImage,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> Result<(), FatError> {
    let geometry = &image.geometry;
    let cluster = geometry.cluster_bytes();
    let (root_run, root, next, now) = layout(image);
    let used = next - FIRST_CLUSTER;
    if used > geometry.cluster_count {
        // The plan already checked this; reaching it means the plan and the writer disagree.
        return Err(FatError::DoesNotFit {
            needed: used * cluster,
            size: geometry.size_bytes(),
            fat_type: Some(geometry.fat_type),
        });
    }

    // The FATs.
    let mut fat = vec![0u32; (geometry.cluster_count + 2) as usize];
    let eoc = end_of_chain(geometry.fat_type);
    fat[0] = eoc & !0xFF | u32::from(MEDIA_FIXED);
    fat[1] = eoc;
    let mut chain = |run: Run| {
        for c in run.start..run.start + run.count {
            fat[c as usize] = if c + 1 == run.start + run.count {
                eoc
            } else {
                (c + 1) as u32
            };
        }
    };
    if root_run.count > 0 {
        chain(root_run);
    }
    visit_runs(&root, &mut chain);
    let fat_bytes = encode_fat(geometry, &fat);
    for copy in 0..FAT_COUNT {
        let offset = (geometry.fat_start() + copy * geometry.fat_sectors) * SECTOR_SIZE;
        sink.write_at(&fat_bytes, offset)
            .map_err(|source| FatError::Write { offset, source })?;
    }

    // Boot sector, FSInfo and their FAT32 backups.
    let boot = boot_sector(image);
    write(sink, &boot, 0)?;
    if geometry.fat_type == FatType::Fat32 {
        let free = geometry.cluster_count - used;
        let info = fsinfo_sector(free, next);
        write(sink, &info, FSINFO_SECTOR * SECTOR_SIZE)?;
        write(sink, &boot, BACKUP_BOOT_SECTOR * SECTOR_SIZE)?;
        write(
            sink,
            &info,
            (BACKUP_BOOT_SECTOR + FSINFO_SECTOR) * SECTOR_SIZE,
        )?;
    }

    // Directories, then file data.
    let (_, _, content_bytes) = crate::count(&image.root);
    progress.set_total(content_bytes);
    progress.phase("writing");
    write_dir(image, &root, true, now, sink)?;
    let mut buffer = vec![0u8; COPY_CHUNK];
    copy_files(image, &root, sink, &mut buffer, progress)?;
    Ok(())
}

fn write(sink: &mut dyn Sink, data: &[u8], offset: u64) -> Result<(), FatError> {
    sink.write_at(data, offset)
        .map_err(|source| FatError::Write { offset, source })
}

#[allow(clippy::too_many_arguments)]
fn place<'a>(
    dir: &'a Dir,
    run: Run,
    parent_start: u64,
    is_root: bool,
    mtime: i64,
    next: &mut u64,
    cluster: u64,
    dir_clusters: &dyn Fn(&Dir, bool, bool) -> u64,
) -> PlacedDir<'a> {
    let runs: Vec<Run> = dir
        .children
        .iter()
        .map(|child| {
            let count = match &child.kind {
                NodeKind::File { size, .. } => size.div_ceil(cluster),
                NodeKind::Dir(sub) => dir_clusters(sub, false, false),
            };
            let start = if count == 0 { 0 } else { *next };
            *next += count;
            Run { start, count }
        })
        .collect();
    let children = dir
        .children
        .iter()
        .zip(runs)
        .map(|(child, child_run)| match &child.kind {
            NodeKind::Dir(sub) => {
                // `..` names the root as cluster 0, even on FAT32 where the root has a cluster.
                let parent = if is_root { 0 } else { run.start };
                let placed = place(
                    sub,
                    child_run,
                    parent,
                    false,
                    child.mtime,
                    next,
                    cluster,
                    dir_clusters,
                );
                (child_run, Some(placed))
            }
            NodeKind::File { .. } => (child_run, None),
        })
        .collect();
    PlacedDir {
        dir,
        run,
        parent_start,
        mtime,
        children,
    }
}

fn visit_runs(dir: &PlacedDir<'_>, chain: &mut dyn FnMut(Run)) {
    for (run, sub) in &dir.children {
        if run.count > 0 {
            chain(*run);
        }
        if let Some(sub) = sub {
            visit_runs(sub, chain);
        }
    }
}

fn end_of_chain(fat_type: FatType) -> u32 {
    match fat_type {
        FatType::Fat12 => 0x0FFF,
        FatType::Fat16 => 0xFFFF,
        FatType::Fat32 => 0x0FFF_FFFF,
    }
}

fn encode_fat(geometry: &Geometry, fat: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0u8; (geometry.fat_sectors * SECTOR_SIZE) as usize];
    match geometry.fat_type {
        FatType::Fat12 => {
            for (n, &value) in fat.iter().enumerate() {
                let at = n * 3 / 2;
                let value = value & 0x0FFF;
                if n % 2 == 0 {
                    bytes[at] = value as u8;
                    bytes[at + 1] = (bytes[at + 1] & 0xF0) | (value >> 8) as u8;
                } else {
                    bytes[at] = (bytes[at] & 0x0F) | ((value & 0x0F) << 4) as u8;
                    bytes[at + 1] = (value >> 4) as u8;
                }
            }
        }
        FatType::Fat16 => {
            for (n, &value) in fat.iter().enumerate() {
                bytes[n * 2..n * 2 + 2].copy_from_slice(&(value as u16).to_le_bytes());
            }
        }
        FatType::Fat32 => {
            for (n, &value) in fat.iter().enumerate() {
                bytes[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    bytes
}

/// An x86 stub for BIOS boots of a non-bootable volume: print a message, wait for a key, and
/// let the BIOS try the next device (int 19h).
fn boot_code(code_offset: usize) -> Vec<u8> {
    let message_address = 0x7C00 + code_offset + 27;
    let mut code = vec![
        0x31,
        0xC0, // xor ax, ax
        0x8E,
        0xD8, // mov ds, ax
        0xBE,
        message_address as u8,
        (message_address >> 8) as u8, // mov si, message
        0xAC,                         // next: lodsb
        0x84,
        0xC0, // test al, al
        0x74,
        0x09, // jz done
        0xB4,
        0x0E, // mov ah, 0x0e (teletype output)
        0xBB,
        0x07,
        0x00, // mov bx, 7
        0xCD,
        0x10, // int 0x10
        0xEB,
        0xF2, // jmp next
        0x31,
        0xC0, // done: xor ax, ax
        0xCD,
        0x16, // int 0x16 (wait for a key)
        0xCD,
        0x19, // int 0x19 (next boot device)
    ];
    code.extend_from_slice(
        b"This is not a bootable disk. Press a key to try the next device.\r\n\0",
    );
    code
}

fn boot_sector(image: &FatImage) -> [u8; 512] {
    let g = &image.geometry;
    let mut s = [0u8; 512];
    let fat32 = g.fat_type == FatType::Fat32;
    let code_offset = if fat32 { 90 } else { 62 };
    s[0] = 0xEB;
    s[1] = (code_offset - 2) as u8;
    s[2] = 0x90;
    s[3..11].copy_from_slice(b"VMEDIA  ");
    s[11..13].copy_from_slice(&(SECTOR_SIZE as u16).to_le_bytes());
    s[13] = g.sectors_per_cluster as u8;
    s[14..16].copy_from_slice(&(g.reserved_sectors as u16).to_le_bytes());
    s[16] = FAT_COUNT as u8;
    s[17..19].copy_from_slice(&(g.root_entries as u16).to_le_bytes());
    if !fat32 && g.total_sectors < 0x10000 {
        s[19..21].copy_from_slice(&(g.total_sectors as u16).to_le_bytes());
    } else {
        s[32..36].copy_from_slice(&(g.total_sectors as u32).to_le_bytes());
    }
    s[21] = MEDIA_FIXED;
    if !fat32 {
        s[22..24].copy_from_slice(&(g.fat_sectors as u16).to_le_bytes());
    }
    s[24..26].copy_from_slice(&SECTORS_PER_TRACK.to_le_bytes());
    s[26..28].copy_from_slice(&HEADS.to_le_bytes());
    let ext = if fat32 {
        s[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
        s[44..48].copy_from_slice(&(FIRST_CLUSTER as u32).to_le_bytes());
        s[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
        s[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
        64
    } else {
        36
    };
    s[ext] = DRIVE_NUMBER;
    s[ext + 2] = EXTENDED_BOOT_SIGNATURE;
    s[ext + 3..ext + 7].copy_from_slice(&image.volume_id.to_le_bytes());
    s[ext + 7..ext + 18].copy_from_slice(&image.label);
    s[ext + 18..ext + 26].copy_from_slice(g.fat_type.label());
    let code = boot_code(code_offset);
    s[code_offset..code_offset + code.len()].copy_from_slice(&code);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn fsinfo_sector(free_clusters: u64, next_free: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&(free_clusters as u32).to_le_bytes());
    s[492..496].copy_from_slice(&(next_free as u32).to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

fn write_dir(
    image: &FatImage,
    placed: &PlacedDir<'_>,
    is_root: bool,
    now: i64,
    sink: &mut dyn Sink,
) -> Result<(), FatError> {
    let g = &image.geometry;
    let mut table: Vec<u8> = Vec::new();
    let time_of = |mtime: i64| image.date.unwrap_or(mtime);
    if is_root {
        if image.has_label {
            table.extend_from_slice(&short_entry(&image.label, ATTR_VOLUME_ID, 0, 0, now));
        }
    } else {
        let stamp = time_of(placed.mtime);
        table.extend_from_slice(&short_entry(
            b".          ",
            ATTR_DIRECTORY,
            placed.run.start,
            0,
            stamp,
        ));
        table.extend_from_slice(&short_entry(
            b"..         ",
            ATTR_DIRECTORY,
            placed.parent_start,
            0,
            stamp,
        ));
    }
    for (node, (run, _)) in placed.dir.children.iter().zip(&placed.children) {
        if let Some(long) = &node.name.long {
            for entry in lfn_entries(long, &node.name.short) {
                table.extend_from_slice(&entry);
            }
        }
        let (attr, size) = match &node.kind {
            NodeKind::File { size, .. } => (ATTR_ARCHIVE, *size as u32),
            NodeKind::Dir(_) => (ATTR_DIRECTORY, 0),
        };
        table.extend_from_slice(&short_entry(
            &node.name.short,
            attr,
            run.start,
            size,
            time_of(node.mtime),
        ));
    }
    let offset = if is_root && g.fat_type != FatType::Fat32 {
        g.root_dir_start() * SECTOR_SIZE
    } else {
        g.cluster_offset(placed.run.start)
    };
    write(sink, &table, offset)?;
    for (_, sub) in &placed.children {
        if let Some(sub) = sub {
            write_dir(image, sub, false, now, sink)?;
        }
    }
    Ok(())
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u64, size: u32, unix_time: i64) -> [u8; 32] {
    let (date, time) = dos_date_time(unix_time);
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// DOS date and time (UTC), clamped to the representable 1980..=2107.
fn dos_date_time(unix_time: i64) -> (u16, u16) {
    const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: i64 = 4_354_819_198; // 2107-12-31T23:59:58Z
    let instant = jiff::Timestamp::from_second(unix_time.clamp(MIN, MAX))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let t = jiff::tz::Offset::UTC.to_datetime(instant);
    // The clamp keeps the year in 1980..=2107, so the 7-bit field cannot overflow.
    let year = (i32::from(t.year()) - 1980).clamp(0, 127) as u16;
    let date = (year << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    (date, time)
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn copy_files(
    image: &FatImage,
    placed: &PlacedDir<'_>,
    sink: &mut dyn Sink,
    buffer: &mut [u8],
    progress: &dyn Progress,
) -> Result<(), FatError> {
    for (node, (run, sub)) in placed.dir.children.iter().zip(&placed.children) {
        match (&node.kind, sub) {
            (
                NodeKind::File {
                    source,
                    offset,
                    size,
                    whole,
                },
                _,
            ) => {
                if *size > 0 {
                    let range = SourceRange {
                        path: source,
                        offset: *offset,
                        size: *size,
                        whole: *whole,
                    };
                    copy_file(
                        &range,
                        image.geometry.cluster_offset(run.start),
                        sink,
                        buffer,
                        progress,
                    )?;
                }
            }
            (NodeKind::Dir(_), Some(sub)) => copy_files(image, sub, sink, buffer, progress)?,
            (NodeKind::Dir(_), None) => {}
        }
    }
    Ok(())
}

/// The bytes of one file: a range of its source.
struct SourceRange<'a> {
    path: &'a std::path::Path,
    offset: u64,
    size: u64,
    whole: bool,
}

fn copy_file(
    range: &SourceRange<'_>,
    offset: u64,
    sink: &mut dyn Sink,
    buffer: &mut [u8],
    progress: &dyn Progress,
) -> Result<(), FatError> {
    let source = range.path;
    let size = range.size;
    let read_err = |e| FatError::Source {
        path: source.to_path_buf(),
        source: e,
    };
    let changed = || FatError::SourceChanged {
        path: source.to_path_buf(),
        expected: size,
    };
    let file = File::open(source).map_err(read_err)?;
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(buffer.len() as u64) as usize;
        let chunk = &mut buffer[..want];
        let mut filled = 0;
        while filled < want {
            let at = range
                .offset
                .checked_add(done + filled as u64)
                .ok_or_else(changed)?;
            match file.read_at(&mut chunk[filled..], at) {
                Ok(0) => return Err(changed()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        write(sink, chunk, offset + done)?;
        done += want as u64;
        progress.advance(want as u64);
    }
    // A file that grew since the scan would be cut short silently; refuse instead.
    let mut probe = [0u8; 1];
    if range.whole && file.read_at(&mut probe, size).map_err(read_err)? != 0 {
        return Err(changed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates_convert_and_clamp() {
        // 2023-11-14T22:13:20Z
        let (date, time) = dos_date_time(1_700_000_000);
        assert_eq!(date, ((2023 - 1980) << 9) | (11 << 5) | 14);
        assert_eq!(time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(dos_date_time(0).0, (1 << 5) | 1);
    }

    #[test]
    fn fat12_entries_pack_into_three_nibbles() {
        let g = Geometry {
            fat_type: FatType::Fat12,
            sectors_per_cluster: 1,
            reserved_sectors: 1,
            fat_sectors: 1,
            root_entries: 512,
            total_sectors: 100,
            cluster_count: 60,
        };
        let bytes = encode_fat(&g, &[0xFF8, 0xFFF, 0x003, 0xFFF]);
        assert_eq!(&bytes[..6], &[0xF8, 0xFF, 0xFF, 0x03, 0xF0, 0xFF]);
    }

    #[test]
    fn boot_code_jumps_land_inside_the_stub() {
        let code = boot_code(62);
        // jz at index 10 jumps 9 bytes past its end (index 12) to "done" at index 21.
        assert_eq!(code[10..12], [0x74, 0x09]);
        assert_eq!(&code[21..23], &[0x31, 0xC0]);
        assert_eq!(code[19..21], [0xEB, 0xF2]);
        assert_eq!(&code[27..31], b"This");
    }
}
