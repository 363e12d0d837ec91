//! An output written front to back, with direct I/O where the file system supports it.
//!
//! A command that writes gigabytes it will not read back again (`library get`) pays twice
//! through the page cache: every byte is copied into a newly allocated cache page, and the
//! kernel's flusher writes those pages back later, both on the cores that decompress and hash.
//! Several threads writing one file also queue on its inode lock. So where the file system
//! reports its direct-I/O alignment (`statx` with `STATX_DIOALIGN`, Linux 6.1 and later; ext4
//! does), [`OrderedWriter`] gathers the pieces it is given in an aligned staging buffer and
//! writes that buffer with `O_DIRECT` from one thread: one copy, no cache pages, and the device
//! writes while the other threads go on computing. Everywhere else (tmpfs, which reports no
//! alignment; older kernels) it writes each piece at its offset through the page cache. Direct writes wait for the device, so a device slower
//! than `MIN_DIRECT_RATE` (a hard disk, a network volume) would make the command wait on it
//! where the page cache would not: once `RATE_WINDOW` bytes have gone out, a writer whose
//! direct writes ran slower than that continues through the page cache.
//!
//! Pieces arrive in ascending order and do not overlap. What lies between them, and after the
//! last one, is zeros: whole aligned blocks of a gap are never written (they stay holes of a
//! sparse file); the partial blocks at a gap's edges are written with zeros, which is what they
//! hold. `finish` sets the file's length, so the last block may be written whole and cut back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes gathered before one direct write: large enough that the device sees few, long
/// writes; small enough to stay in cache while it fills.
pub const STAGING_BYTES: usize = 2 << 20;
/// The largest direct-I/O alignment used; a file system asking for more is written through
/// the page cache.
pub const MAX_DIRECT_ALIGN: u32 = 64 << 10;

/// Direct writes must average at least this many bytes per second of waiting for them, or
/// the writer goes on through the page cache: solid-state disks write faster, a hard disk or
/// a network volume does not.
pub const MIN_DIRECT_RATE: u64 = 256 << 20;
/// Bytes written directly before their rate is judged (and between judgements): long enough
/// that one stall of the device (a few hundred milliseconds) does not decide it.
pub const RATE_WINDOW: u64 = 256 << 20;

/// Writes pieces of a file of known size in ascending offset order (see the module docs).
pub struct OrderedWriter {
    /// Written through the page cache (and used to set the length).
    file: File,
    size: u64,
    /// Where the last piece ended: the next may start here or later.
    end: u64,
    direct: Option<Staging>,
}

/// The direct-I/O state: content for `base..base + len`, `base` aligned, in an aligned buffer.
struct Staging {
    /// The same file, opened with `O_DIRECT`.
    file: File,
    /// Bytes written directly in the current rate window, and the time spent writing them.
    window_bytes: u64,
    window_time: Duration,
    align: usize,
    /// Over-allocated by `align` so that an aligned window of `STAGING_BYTES` fits in it.
    storage: Vec<u8>,
    /// Where that window starts in `storage`.
    window: usize,
    base: u64,
    len: usize,
}

impl OrderedWriter {
    /// A writer for `file` (open for writing, found at `path`) of `size` bytes, with direct
    /// I/O if the file system reports an alignment for it; through the page cache otherwise.
    /// `path` is opened a second time, with `O_DIRECT`; `file` is not written.
    pub fn new(file: &File, path: &Path, size: u64) -> io::Result<OrderedWriter> {
        let mut writer = OrderedWriter::buffered(file, size)?;
        if let Some(align) = direct_alignment(file) {
            if let Ok(direct) = open_direct(file, path) {
                writer.direct = Some(Staging::new(direct, align));
            }
        }
        Ok(writer)
    }

    /// A writer that writes each piece through the page cache, whatever the file system.
    pub fn buffered(file: &File, size: u64) -> io::Result<OrderedWriter> {
        Ok(OrderedWriter {
            file: file.try_clone()?,
            size,
            end: 0,
            direct: None,
        })
    }

    /// True when the pieces bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes `data` at `offset`, which must not be before the end of the previous piece; the
    /// piece must end within the file's size.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| offset >= self.end && end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "piece at {offset} of {} bytes is out of order (previous ended at {}) \
                         or past the end ({})",
                        data.len(),
                        self.end,
                        self.size
                    ),
                )
            })?;
        match &mut self.direct {
            None => self.file.write_all_at(data, offset)?,
            Some(staging) => {
                let run_end = staging.base + staging.len as u64;
                if offset > run_end {
                    let align = staging.align as u64;
                    let gap_start_block = run_end.div_ceil(align) * align;
                    let piece_block = offset / align * align;
                    if piece_block > gap_start_block {
                        // At least one whole block of zeros between: leave it a hole.
                        staging.flush_padded()?;
                        staging.base = piece_block;
                        staging.push(Piece::Zeros((offset - piece_block) as usize))?;
                    } else {
                        staging.push(Piece::Zeros((offset - run_end) as usize))?;
                    }
                }
                staging.push(Piece::Data(data))?;
                if staging.too_slow() {
                    self.leave_direct()?;
                }
            }
        }
        self.end = end;
        Ok(())
    }

    /// Writes what is staged and goes on through the page cache. The last staged block is
    /// written completed with zeros; a later piece in that block overwrites its part of them.
    pub fn leave_direct(&mut self) -> io::Result<()> {
        if let Some(mut staging) = self.direct.take() {
            staging.flush_padded()?;
        }
        Ok(())
    }

    /// Writes what is still staged and sets the file's length to its size.
    pub fn finish(mut self) -> io::Result<()> {
        self.leave_direct()?;
        self.file.set_len(self.size)
    }
}

enum Piece<'a> {
    Zeros(usize),
    Data(&'a [u8]),
}

impl Staging {
    fn new(file: File, align: usize) -> Staging {
        let storage = vec![0u8; STAGING_BYTES + align];
        let window = storage.as_ptr().align_offset(align);
        Staging {
            file,
            window_bytes: 0,
            window_time: Duration::ZERO,
            align,
            storage,
            window,
            base: 0,
            len: 0,
        }
    }

    /// Writes `len` bytes of the buffer at `base`, timing the device.
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        let started = Instant::now();
        let (file, base) = (&self.file, self.base);
        file.write_all_at(&self.storage[self.window..self.window + len], base)?;
        self.window_time += started.elapsed();
        self.window_bytes += len as u64;
        Ok(())
    }

    /// After a full rate window: whether its direct writes ran slower than `MIN_DIRECT_RATE`
    /// (a new window starts either way).
    fn too_slow(&mut self) -> bool {
        if self.window_bytes < RATE_WINDOW {
            return false;
        }
        let seconds = self.window_time.as_secs_f64();
        let slow = seconds > 0.0 && (self.window_bytes as f64 / seconds) < MIN_DIRECT_RATE as f64;
        self.window_bytes = 0;
        self.window_time = Duration::ZERO;
        slow
    }

    fn buffer(&mut self) -> &mut [u8] {
        &mut self.storage[self.window..self.window + STAGING_BYTES]
    }

    /// Appends to the staged content, writing the buffer whenever it is full.
    fn push(&mut self, mut piece: Piece<'_>) -> io::Result<()> {
        loop {
            let room = STAGING_BYTES - self.len;
            let len = self.len;
            let taken = match &mut piece {
                Piece::Zeros(n) => {
                    let k = (*n).min(room);
                    self.buffer()[len..len + k].fill(0);
                    *n -= k;
                    k
                }
                Piece::Data(data) => {
                    let k = data.len().min(room);
                    self.buffer()[len..len + k].copy_from_slice(&data[..k]);
                    *data = &data[k..];
                    k
                }
            };
            self.len += taken;
            if self.len == STAGING_BYTES {
                self.write_out(STAGING_BYTES)?;
                self.base += STAGING_BYTES as u64;
                self.len = 0;
            }
            let done = match piece {
                Piece::Zeros(n) => n == 0,
                Piece::Data(data) => data.is_empty(),
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Writes the staged content, its last block completed with zeros; leaves nothing staged.
    fn flush_padded(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let padded = self.len.div_ceil(self.align) * self.align;
        let len = self.len;
        self.buffer()[len..padded].fill(0);
        self.write_out(padded)?;
        self.base += padded as u64;
        self.len = 0;
        Ok(())
    }
}

/// The alignment direct I/O on `file` needs, if its file system reports one that this writer
/// can use (a power of two dividing the staging buffer).
fn direct_alignment(file: &File) -> Option<usize> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let stat = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if !StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::DIOALIGN) {
        return None;
    }
    let (memory, offset) = (stat.stx_dio_mem_align, stat.stx_dio_offset_align);
    if memory == 0 || offset == 0 {
        return None; // the file system does not do direct I/O on this file
    }
    let align = memory.max(offset);
    (align.is_power_of_two() && align <= MAX_DIRECT_ALIGN).then_some(align as usize)
}

/// `path` opened again for writing with `O_DIRECT`, if it is still `file`.
fn open_direct(file: &File, path: &Path) -> io::Result<File> {
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    let (a, b) = (file.metadata()?, direct.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other(format!(
            "{} is no longer the file being written",
            path.display()
        )));
    }
    Ok(direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces (offset, length) with gaps of every kind: none, within a block, across block
    /// edges, whole blocks, longer than the staging buffer; a piece longer than the buffer;
    /// a tail gap; a size that is not a multiple of any alignment.
    fn layout() -> (u64, Vec<(u64, usize)>) {
        let size = 3 * STAGING_BYTES as u64 + 12_345;
        let pieces = vec![
            (0, 100),
            (100, 5000),
            (5200, 1),
            (8192, 4096),
            (40_000, STAGING_BYTES + 777),
            (STAGING_BYTES as u64 + 50_000, 3),
            (2 * STAGING_BYTES as u64 + 4096, 65_536),
            (3 * STAGING_BYTES as u64 - 10, 20),
            (3 * STAGING_BYTES as u64 + 12_000, 300),
        ];
        (size, pieces)
    }

    fn pattern(offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((offset + i) % 251) as u8 | 1)
            .collect()
    }

    fn write_and_check(writer: impl FnOnce(&File, &Path, u64) -> OrderedWriter) -> bool {
        write_and_check_leaving_at(writer, None)
    }

    /// Writes the layout, going through the page cache from piece `leave_at` on, if given.
    fn write_and_check_leaving_at(
        writer: impl FnOnce(&File, &Path, u64) -> OrderedWriter,
        leave_at: Option<usize>,
    ) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let (size, pieces) = layout();
        file.set_len(size).unwrap();
        let mut w = writer(&file, &path, size);
        let direct = w.is_direct();
        let mut expected = vec![0u8; size as usize];
        for (i, &(offset, len)) in pieces.iter().enumerate() {
            if leave_at == Some(i) {
                w.leave_direct().unwrap();
                assert!(!w.is_direct());
            }
            let data = pattern(offset, len);
            expected[offset as usize..offset as usize + len].copy_from_slice(&data);
            w.write(offset, &data).unwrap();
        }
        w.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "content differs (direct: {direct})");
        direct
    }

    #[test]
    fn buffered_writes_every_piece_and_zeros_between() {
        assert!(!write_and_check(|f, _, size| OrderedWriter::buffered(
            f, size
        )
        .unwrap()));
    }

    #[test]
    fn direct_writes_every_piece_and_zeros_between() {
        let direct = write_and_check(|f, p, size| OrderedWriter::new(f, p, size).unwrap());
        // Where the file system reports a direct-I/O alignment, the direct path must be the
        // one taken (and so is what this test checked).
        let dir = tempfile::tempdir().unwrap();
        let probe = File::create(dir.path().join("probe")).unwrap();
        assert_eq!(direct, direct_alignment(&probe).is_some());
    }

    #[test]
    fn every_alignment_gives_the_same_bytes() {
        for align in [512, 4096, 65_536] {
            write_and_check(|f, p, size| {
                // The staging logic is what is under test: on a file system without direct
                // I/O (or with a larger alignment), the same writes go through the page
                // cache unaligned.
                let file = match direct_alignment(f) {
                    Some(a) if a <= align => open_direct(f, p).unwrap(),
                    _ => f.try_clone().unwrap(),
                };
                let mut w = OrderedWriter::buffered(f, size).unwrap();
                w.direct = Some(Staging::new(file, align));
                w
            });
        }
    }

    #[test]
    fn leaving_direct_io_at_any_piece_keeps_every_byte() {
        for at in 0..=layout().1.len() {
            write_and_check_leaving_at(
                |f, p, size| OrderedWriter::new(f, p, size).unwrap(),
                Some(at),
            );
        }
    }

    #[test]
    fn a_slow_device_is_left_after_a_whole_window() {
        let file = tempfile::tempfile().unwrap();
        let mut staging = Staging::new(file, 4096);
        staging.window_bytes = RATE_WINDOW - 1;
        staging.window_time = Duration::from_secs(100);
        assert!(!staging.too_slow(), "judged before the window is full");
        staging.window_bytes = RATE_WINDOW;
        staging.window_time =
            Duration::from_secs_f64(RATE_WINDOW as f64 / MIN_DIRECT_RATE as f64 * 0.9);
        assert!(!staging.too_slow(), "faster than the minimum");
        assert_eq!(staging.window_bytes, 0, "a new window starts");
        staging.window_bytes = RATE_WINDOW;
        staging.window_time =
            Duration::from_secs_f64(RATE_WINDOW as f64 / MIN_DIRECT_RATE as f64 * 1.1);
        assert!(staging.too_slow(), "slower than the minimum");
    }

    #[test]
    fn out_of_order_and_oversized_pieces_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut w = OrderedWriter::new(&file, &path, 10_000).unwrap();
        w.write(100, &[1; 100]).unwrap();
        assert!(w.write(150, &[1; 10]).is_err());
        assert!(w.write(9_000, &[1; 1_001]).is_err());
        assert!(w.write(u64::MAX, &[1; 2]).is_err());
        w.write(200, &[2; 10]).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10_000);
    }

    #[test]
    fn whole_blocks_of_a_gap_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let size = 64u64 << 20;
        file.set_len(size).unwrap();
        let mut w = OrderedWriter::new(&file, &path, size).unwrap();
        w.write(0, &[7; 4096]).unwrap();
        w.write(size - 4096, &[7; 4096]).unwrap();
        w.finish().unwrap();
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    }
}
