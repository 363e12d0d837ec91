//! The containerDisk layer: a tar holding one disk under `disk/` (KubeVirt reads the single
//! entry of `/disk` in the image and runs it as user 107, so the file is owned 107:107).
//! `layer_head`/`layer_tail` write it around a streamed disk; `DiskScanner` reads one as a
//! stream (ustar, GNU long names and base-256 sizes, PAX `path`/`size`), refusing path
//! traversal, links and a second entry under `disk/`.

use std::collections::BTreeSet;
use std::io::{self, Read};

use crate::error::{OciError, Result};

/// Tar's record unit.
pub const BLOCK: u64 = 512;
/// The folder KubeVirt looks for the disk in.
pub const DISK_DIR: &str = "disk";
/// The qemu user KubeVirt's virt-launcher runs as; its documented owner of the disk.
pub const KUBEVIRT_UID: u64 = 107;
/// Readable by the owner and group only, as KubeVirt's documentation builds it (0440).
const DISK_MODE: u64 = 0o440;
/// PAX records and GNU long names are metadata; 1 MiB is far beyond any honest one.
pub const MAX_META_BYTES: u64 = 1 << 20;
/// The largest entry vmedia accepts in a layer (64 TiB, as `MAX_LAYER_BYTES`).
pub const MAX_ENTRY_BYTES: u64 = 64 << 40;
/// A layer with more entries than this is not a containerDisk (a whole distribution tree).
pub const MAX_ENTRIES: u64 = 1 << 20;
/// The largest size an 11-digit octal field holds; larger sizes use base-256 (GNU, Go).
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal digits and a NUL, as every tar writes them.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn header(name: &str, mode: u64, size: u64, typeflag: u8) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.len() > 100 {
        return Err(OciError::Layout {
            what: name.to_string(),
            problem: "a disk file name longer than 100 bytes".into(),
        });
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], KUBEVIRT_UID);
    octal(&mut h[116..124], KUBEVIRT_UID);
    if size <= MAX_OCTAL_SIZE {
        octal(&mut h[124..136], size);
    } else {
        // Base-256: the top bit of the first byte set, the value big-endian in the rest.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], 0); // mtime: the epoch, so a version always makes the same layer
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"qemu");
    h[297..301].copy_from_slice(b"qemu");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// The bytes before the disk: the `disk/` folder and the disk file's header.
pub fn layer_head(file_name: &str, disk_size: u64) -> Result<Vec<u8>> {
    if file_name.is_empty() || file_name.contains('/') || file_name.starts_with('.') {
        return Err(OciError::Layout {
            what: file_name.to_string(),
            problem: "a disk file name must be one plain path component".into(),
        });
    }
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(&header("disk/", 0o755, 0, b'5')?);
    out.extend_from_slice(&header(
        &format!("{DISK_DIR}/{file_name}"),
        DISK_MODE,
        disk_size,
        b'0',
    )?);
    Ok(out)
}

/// The bytes after the disk: padding to a block and the two zero blocks that end a tar.
pub fn layer_tail(disk_size: u64) -> Vec<u8> {
    let pad = padding(disk_size);
    vec![0u8; (pad + 2 * BLOCK) as usize]
}

/// The whole layer's size for a disk of `disk_size` bytes.
pub fn layer_size(disk_size: u64) -> Option<u64> {
    (4 * BLOCK)
        .checked_add(disk_size)?
        .checked_add(padding(disk_size))
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The disk a layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// `disk/NAME` as the layer spells it (normalised).
    pub path: String,
    pub size: u64,
}

enum State {
    Headers,
    InDisk { left: u64 },
    Done,
}

/// Reads a layer as a stream: `next_disk` walks to the disk entry, then `Read` yields the
/// disk's bytes and, before reporting the end, reads the rest of the layer and refuses a
/// second entry under `disk/`.
pub struct DiskScanner<R: Read> {
    inner: R,
    what: String,
    /// Bytes of the (uncompressed) layer consumed so far.
    offset: u64,
    state: State,
    disk: Option<DiskEntry>,
    /// Direct children of `disk/` seen, other than the disk.
    others: BTreeSet<String>,
    entries: u64,
}

/// One parsed header with PAX / GNU overrides applied.
struct Entry {
    offset: u64,
    path: String,
    size: u64,
    typeflag: u8,
}

impl<R: Read> DiskScanner<R> {
    pub fn new(inner: R, what: &str) -> DiskScanner<R> {
        DiskScanner {
            inner,
            what: what.to_string(),
            offset: 0,
            state: State::Headers,
            disk: None,
            others: BTreeSet::new(),
            entries: 0,
        }
    }

    fn tar_error(&self, offset: u64, field: &'static str, problem: String) -> OciError {
        OciError::Tar {
            what: self.what.clone(),
            offset,
            field,
            problem,
        }
    }

    fn io_error(&self, e: io::Error) -> OciError {
        // A typed error from below (a digest check) keeps its own text.
        match e.get_ref().and_then(|r| r.downcast_ref::<OciError>()) {
            Some(_) => OciError::Io {
                what: self.what.clone(),
                source: e,
            },
            None => OciError::Io {
                what: format!("{} at offset {:#x}", self.what, self.offset),
                source: e,
            },
        }
    }

    /// Reads up to a full block; `Ok(false)` at a clean end of input before any byte.
    fn read_block(&mut self, block: &mut [u8; 512]) -> Result<bool> {
        let mut got = 0;
        while got < block.len() {
            let n = match self.inner.read(&mut block[got..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(self.tar_error(
                    self.offset,
                    "block",
                    format!("the layer ends {got} bytes into a 512-byte block"),
                ));
            }
            got += n;
        }
        self.offset += BLOCK;
        Ok(true)
    }

    fn skip(&mut self, mut bytes: u64) -> Result<()> {
        let mut buf = [0u8; 64 << 10];
        while bytes > 0 {
            let want = bytes.min(buf.len() as u64) as usize;
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(self.tar_error(
                        self.offset,
                        "data",
                        "the layer ends inside an entry".into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            bytes -= n as u64;
            self.offset += n as u64;
        }
        Ok(())
    }

    fn read_meta(&mut self, size: u64, at: u64) -> Result<Vec<u8>> {
        if size > MAX_META_BYTES {
            return Err(OciError::Limit {
                what: format!("{} at offset {at:#x}", self.what),
                limit: "extended header bytes",
                value: size,
                max: MAX_META_BYTES,
            });
        }
        let mut data = vec![0u8; size as usize];
        let mut got = 0;
        while got < data.len() {
            match self.inner.read(&mut data[got..]) {
                Ok(0) => {
                    return Err(self.tar_error(
                        at,
                        "data",
                        "the layer ends inside an extended header".into(),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.offset += size;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next real entry (metadata entries folded in), or `None` at the end of the archive.
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        let mut long_name: Option<String> = None;
        loop {
            let at = self.offset;
            let mut block = [0u8; 512];
            if !self.read_block(&mut block)? {
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(OciError::Limit {
                    what: self.what.clone(),
                    limit: "entries",
                    value: self.entries,
                    max: MAX_ENTRIES,
                });
            }
            let stored = parse_octal(&block[148..156])
                .ok_or_else(|| self.tar_error(at, "chksum", "not an octal number".into()))?;
            let mut sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
            sum = sum - block[148..156].iter().map(|&b| u64::from(b)).sum::<u64>() + 8 * 32;
            if stored != sum {
                return Err(self.tar_error(
                    at,
                    "chksum",
                    format!("stored {stored:o}, computed {sum:o} (not a tar layer?)"),
                ));
            }
            let size = match pax_size.take() {
                Some(s) => s,
                None => parse_size(&block[124..136])
                    .ok_or_else(|| self.tar_error(at, "size", "not a number".into()))?,
            };
            if size > MAX_ENTRY_BYTES {
                return Err(OciError::Limit {
                    what: format!("{} entry at offset {at:#x}", self.what),
                    limit: "size in bytes",
                    value: size,
                    max: MAX_ENTRY_BYTES,
                });
            }
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.read_meta(size, at)?;
                    let (path, psize) =
                        parse_pax(&data).map_err(|problem| self.tar_error(at, "pax", problem))?;
                    pax_path = path.or(pax_path);
                    pax_size = psize.or(pax_size);
                    continue;
                }
                b'g' => {
                    self.read_meta(size, at)?;
                    continue;
                }
                b'L' => {
                    let data = self.read_meta(size, at)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                    continue;
                }
                b'K' => {
                    self.read_meta(size, at)?;
                    continue;
                }
                _ => {}
            }
            let path = match pax_path.take().or(long_name.take()) {
                Some(p) => p,
                None => {
                    let name = cstr(&block[0..100]);
                    let prefix = if &block[257..263] == b"ustar\0" {
                        cstr(&block[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                }
            };
            return Ok(Some(Entry {
                offset: at,
                path,
                size,
                typeflag,
            }));
        }
    }

    /// Reads to the end of the input (so a digest check below sees every byte).
    fn drain(&mut self) -> Result<()> {
        let mut buf = [0u8; 64 << 10];
        loop {
            match self.inner.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.offset += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Walks entries until the disk (returned, positioned at its first byte) or the end;
    /// then the rest of the layer is read and `None` returned: the layer holds no disk.
    pub fn next_disk(&mut self) -> Result<Option<DiskEntry>> {
        if !matches!(self.state, State::Headers) {
            return Ok(self.disk.clone());
        }
        while let Some(entry) = self.next_entry()? {
            if let Some(disk) = self.classify(&entry)? {
                if let Some(other) = self.others.iter().next() {
                    return Err(self.two_entries(&disk.path, other));
                }
                self.state = State::InDisk { left: disk.size };
                self.disk = Some(disk.clone());
                return Ok(Some(disk));
            }
            self.skip(entry.size)?;
            self.skip(padding(entry.size))?;
        }
        self.drain()?;
        self.state = State::Done;
        if let Some(other) = self.others.iter().next() {
            return Err(OciError::Layout {
                what: self.what.clone(),
                problem: format!("disk/ holds {other}, which is not a regular file"),
            });
        }
        Ok(None)
    }

    fn two_entries(&self, disk: &str, other: &str) -> OciError {
        OciError::Layout {
            what: self.what.clone(),
            problem: format!(
                "disk/ holds more than one entry ({disk} and disk/{other}); a containerDisk has exactly one disk"
            ),
        }
    }

    /// `Some` for the disk entry; records other children of `disk/`; refuses traversal.
    fn classify(&mut self, entry: &Entry) -> Result<Option<DiskEntry>> {
        let mut parts = Vec::new();
        for part in entry.path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(self.tar_error(
                        entry.offset,
                        "name",
                        format!("{:?} leaves the layer (path traversal)", entry.path),
                    ))
                }
                p => parts.push(p),
            }
        }
        if parts.first() != Some(&DISK_DIR) || parts.len() < 2 {
            return Ok(None);
        }
        let child = parts[1];
        if child.starts_with(".wh.") {
            // Whiteouts delete entries of lower layers; they are not disks.
            return Ok(None);
        }
        let regular = matches!(entry.typeflag, b'0' | 0 | b'7');
        if parts.len() == 2 && regular {
            if entry.size == 0 {
                return Err(self.tar_error(entry.offset, "size", format!("disk/{child} is empty")));
            }
            if self.disk.is_some() {
                return Err(self.two_entries(
                    &self
                        .disk
                        .as_ref()
                        .map(|d| d.path.clone())
                        .unwrap_or_default(),
                    child,
                ));
            }
            return Ok(Some(DiskEntry {
                path: format!("{DISK_DIR}/{child}"),
                size: entry.size,
            }));
        }
        if parts.len() == 2 && matches!(entry.typeflag, b'1' | b'2') {
            return Err(self.tar_error(
                entry.offset,
                "typeflag",
                format!("disk/{child} is a link, not a regular file"),
            ));
        }
        match &self.disk {
            Some(d) => Err(self.two_entries(&d.path, child)),
            None => {
                self.others.insert(child.to_string());
                Ok(None)
            }
        }
    }

    /// Reads the layer after the disk: padding, then every entry up to the end; a second
    /// entry under `disk/` is an error.
    fn finish(&mut self) -> Result<()> {
        let size = self.disk.as_ref().map(|d| d.size).unwrap_or(0);
        self.skip(padding(size))?;
        while let Some(entry) = self.next_entry()? {
            self.classify(&entry)?;
            self.skip(entry.size)?;
            self.skip(padding(entry.size))?;
        }
        self.drain()
    }
}

impl<R: Read> Read for DiskScanner<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Headers => Err(io::Error::other("DiskScanner read before next_disk")),
            State::Done => Ok(0),
            State::InDisk { left } => {
                if left == 0 {
                    self.finish().map_err(OciError::into_io)?;
                    self.state = State::Done;
                    return Ok(0);
                }
                if buf.is_empty() {
                    return Ok(0);
                }
                let want = (buf.len() as u64).min(left) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(self
                        .tar_error(self.offset, "data", "the layer ends inside the disk".into())
                        .into_io());
                }
                self.offset += n as u64;
                self.state = State::InDisk {
                    left: left - n as u64,
                };
                Ok(n)
            }
        }
    }
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    parse_octal(field)
}

/// `path` and `size` of PAX records (`LEN key=value\n`).
fn parse_pax(data: &[u8]) -> std::result::Result<(Option<String>, Option<u64>), String> {
    let mut path = None;
    let mut size = None;
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a record length that is not a number")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(format!("a record length {len} that does not fit"));
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => path = Some(String::from_utf8_lossy(value).into_owned()),
            b"size" => {
                size = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or("a size that is not a number")?,
                )
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(disk: &[u8]) -> Vec<u8> {
        let mut out = layer_head("disk.qcow2", disk.len() as u64).unwrap();
        out.extend_from_slice(disk);
        out.extend_from_slice(&layer_tail(disk.len() as u64));
        out
    }

    fn entry(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut h = header(name, 0o644, data.len() as u64, typeflag)
            .unwrap()
            .to_vec();
        h.extend_from_slice(data);
        h.resize(h.len() + padding(data.len() as u64) as usize, 0);
        h
    }

    fn scan(bytes: &[u8]) -> Result<(DiskEntry, Vec<u8>)> {
        let mut s = DiskScanner::new(bytes, "test layer");
        let disk = s.next_disk()?.ok_or(OciError::Layout {
            what: "test".into(),
            problem: "no disk".into(),
        })?;
        let mut data = Vec::new();
        s.read_to_end(&mut data).map_err(|e| OciError::Io {
            what: "read".into(),
            source: e,
        })?;
        Ok((disk, data))
    }

    #[test]
    fn a_written_layer_reads_back_and_has_the_computed_size() {
        let disk: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let bytes = layer(&disk);
        assert_eq!(bytes.len() as u64, layer_size(1000).unwrap());
        let (entry, data) = scan(&bytes).unwrap();
        assert_eq!(entry.path, "disk/disk.qcow2");
        assert_eq!(data, disk);
    }

    #[test]
    fn base256_sizes_round_trip() {
        let h = header("disk/x", 0o440, 1 << 40, b'0').unwrap();
        assert_eq!(parse_size(&h[124..136]), Some(1 << 40));
    }

    #[test]
    fn two_disks_traversal_links_and_lone_folders_are_refused() {
        let mut two = entry("disk/a.img", b'0', b"aaaa");
        two.extend(entry("disk/b.img", b'0', b"bbbb"));
        two.extend([0u8; 1024]);
        let e = scan(&two).unwrap_err();
        assert!(e.to_string().contains("more than one entry"), "{e}");

        let mut traversal = entry("disk/../../etc/passwd", b'0', b"x");
        traversal.extend([0u8; 1024]);
        let e = scan(&traversal).unwrap_err();
        assert!(e.to_string().contains("path traversal"), "{e}");

        let mut link = entry("disk/d.img", b'2', b"");
        link.extend([0u8; 1024]);
        let e = scan(&link).unwrap_err();
        assert!(e.to_string().contains("is a link"), "{e}");

        let mut nothing = entry("etc/hostname", b'0', b"h\n");
        nothing.extend([0u8; 1024]);
        assert!(DiskScanner::new(&nothing[..], "t")
            .next_disk()
            .unwrap()
            .is_none());
    }

    #[test]
    fn pax_paths_and_gnu_long_names_name_the_disk() {
        let long = format!("disk/{}.qcow2", "n".repeat(120));
        let mut bytes = entry("././@LongLink", b'L', format!("{long}\0").as_bytes());
        bytes.extend(entry("disk/short", b'0', b"data"));
        bytes.extend([0u8; 1024]);
        assert_eq!(scan(&bytes).unwrap().0.path, long);

        let record = "19 path=disk/p.raw\n";
        let mut bytes = entry("PaxHeaders/x", b'x', record.as_bytes());
        bytes.extend(entry("disk/ignored", b'0', b"zz"));
        bytes.extend([0u8; 1024]);
        let (disk, data) = scan(&bytes).unwrap();
        assert_eq!(
            (disk.path.as_str(), data.as_slice()),
            ("disk/p.raw", &b"zz"[..])
        );
    }
}
