//! Reading qcow2 images: L1/L2 lookup (standard and extended L2), compressed clusters (zlib raw
//! deflate and zstd), zero clusters, backing chains, external data files, snapshot table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmedia_io::{Progress, ReadAt};

use super::header::{Compression, Header, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE};
use crate::error::{DiskError, Result};
use crate::image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, DiskImage, Format, HostOffset, ImageInfo,
    OpenOptions, SnapshotInfo,
};

/// Bytes of L2 tables kept in the cache; bounded so a 2 MiB-cluster image cannot balloon it.
pub const L2_CACHE_BYTES: u64 = 32 << 20;
/// qemu's QCOW_MAX_SNAPSHOTS_SIZE: the snapshot table is never read past this.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Longest snapshot id or name accepted (u16 fields, but qemu caps names far lower in practice).
pub const MAX_SNAPSHOT_NAME: usize = 65535;

pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;

/// Where one cluster (or subcluster) of guest data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    Unallocated,
    Zero,
    /// Uncompressed data at this host offset (in the data file when there is one).
    Data(u64),
    /// Compressed cluster: host byte offset and the byte count qemu reads.
    Compressed {
        offset: u64,
        size: u64,
    },
}

/// Decodes the compressed-cluster descriptor of an L2 entry.
pub fn compressed_descriptor(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let csize_shift = 62 - (cluster_bits - 8);
    let csize_mask = (1u64 << (cluster_bits - 8)) - 1;
    let offset_mask = (1u64 << csize_shift) - 1;
    let offset = entry & offset_mask;
    let sectors = ((entry >> csize_shift) & csize_mask) + 1;
    let size = sectors * 512 - (offset & 511);
    (offset, size)
}

/// Encodes a compressed-cluster L2 entry (qemu's layout) for `len` bytes at `offset`.
pub fn compressed_entry(offset: u64, len: u64, cluster_bits: u32) -> u64 {
    let csize_shift = 62 - (cluster_bits - 8);
    let extra_sectors = ((offset + len - 1) >> 9) - (offset >> 9);
    OFLAG_COMPRESSED | (extra_sectors << csize_shift) | offset
}

/// An open qcow2 image.
pub struct Qcow2Image {
    pub(crate) path: PathBuf,
    pub(crate) source: Arc<dyn ReadAt>,
    pub(crate) header: Header,
    pub(crate) file_len: u64,
    pub(crate) l1: Vec<u64>,
    l2_cache: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
    l2_cache_capacity: usize,
    compressed_cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    backing: Option<Box<dyn DiskImage>>,
    backing_ref: Option<BackingRef>,
    data_file: Option<(PathBuf, Arc<dyn ReadAt>)>,
    pub(crate) snapshots: Vec<(SnapshotInfo, u64, u32)>,
    /// LUKS encryption (crypt_method 2): data clusters are decrypted as they are read.
    pub(crate) encryption: Option<super::luks::Encryption>,
}

pub fn open(path: &Path, source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Qcow2Image> {
    let file_len = source.size().map_err(|e| DiskError::io(path, 0, e))?;
    // The header, its extensions and the backing name all live in the first cluster; read at
    // most the largest cluster size.
    let head_len = file_len.min(1 << super::header::MAX_CLUSTER_BITS) as usize;
    let mut head = vec![0u8; head_len];
    source
        .read_exact_at(&mut head, 0)
        .map_err(|e| DiskError::io(path, 0, e))?;
    let header = Header::parse(path, &head, file_len)?;
    let encryption = match header.crypto {
        Some((offset, len)) => Some(super::luks::Encryption::open(
            path,
            source.as_ref(),
            offset,
            len,
            &opts.secrets,
        )?),
        None => None,
    };
    let l1_bytes = header.l1_size as usize * 8;
    let mut raw_l1 = vec![0u8; l1_bytes];
    source
        .read_exact_at(&mut raw_l1, header.l1_table_offset)
        .map_err(|e| DiskError::io(path, header.l1_table_offset, e))?;
    let l1: Vec<u64> = crate::table::be64_entries(&raw_l1);
    for (i, e) in l1.iter().enumerate() {
        let l2 = e & L1E_OFFSET_MASK;
        if l2 != 0 && (!l2.is_multiple_of(header.cluster_size()) || l2 >= file_len) {
            return Err(DiskError::corrupt(path, "qcow2", header.l1_table_offset + i as u64 * 8, "L1 entry", format!("L2 table offset {l2:#x} is unaligned or past the end of the file ({file_len:#x})")));
        }
    }
    let backing_ref = header.backing_file.as_ref().map(|name| BackingRef {
        name: name.clone(),
        format: header
            .backing_format
            .as_deref()
            .and_then(|f| Format::from_name(f).ok()),
        resolved: crate::reference::resolve_reference(path, name),
    });
    let backing = match (&header.backing_file, opts.skip_backing) {
        (Some(name), false) => {
            let fmt = match &header.backing_format {
                Some(f) => Some(Format::from_name(f)?),
                None => None,
            };
            Some(crate::reference::open_reference(path, name, fmt, opts)?)
        }
        _ => None,
    };
    let data_file = if header.incompatible_features & INCOMPAT_DATA_FILE != 0 {
        let name = header.data_file.clone().unwrap_or_default();
        let (data_file, _) = crate::reference::open_reference_source(path, &name, opts)?;
        Some((data_file.path, data_file.source))
    } else {
        None
    };
    let cluster = header.cluster_size();
    let l2_cache_capacity = (L2_CACHE_BYTES / cluster).max(4) as usize;
    let mut img = Qcow2Image {
        path: path.to_path_buf(),
        source,
        header,
        file_len,
        l1,
        l2_cache: Mutex::new(HashMap::new()),
        l2_cache_capacity,
        compressed_cache: Mutex::new(None),
        backing,
        backing_ref,
        data_file,
        snapshots: Vec::new(),
        encryption,
    };
    img.snapshots = img.read_snapshots()?;
    Ok(img)
}

impl Qcow2Image {
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn corrupt(&self, offset: u64, field: &'static str, reason: String) -> DiskError {
        DiskError::corrupt(&self.path, "qcow2", offset, field, reason)
    }

    /// Reads an L2 table (cached).
    pub(crate) fn l2_table(&self, l2_offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self
            .l2_cache
            .lock()
            .map_err(|_| self.poisoned())?
            .get(&l2_offset)
        {
            return Ok(t.clone());
        }
        let cluster = self.header.cluster_size();
        if !l2_offset.is_multiple_of(cluster)
            || l2_offset
                .checked_add(cluster)
                .is_none_or(|e| e > self.file_len)
        {
            return Err(self.corrupt(
                l2_offset,
                "L2 table",
                format!("offset {l2_offset:#x} is unaligned or past the end of the file"),
            ));
        }
        let mut raw = vec![0u8; cluster as usize];
        self.source
            .read_exact_at(&mut raw, l2_offset)
            .map_err(|e| DiskError::io(&self.path, l2_offset, e))?;
        let table: Arc<Vec<u64>> = Arc::new(crate::table::be64_entries(&raw));
        let mut cache = self.l2_cache.lock().map_err(|_| self.poisoned())?;
        if cache.len() >= self.l2_cache_capacity {
            cache.clear();
        }
        cache.insert(l2_offset, table.clone());
        Ok(table)
    }

    fn poisoned(&self) -> DiskError {
        self.corrupt(0, "cache", "a reader thread panicked".into())
    }

    /// Granularity of mappings: the cluster, or the subcluster with extended L2 entries.
    pub fn unit_size(&self) -> u64 {
        if self.header.extended_l2() {
            self.header.cluster_size() / 32
        } else {
            self.header.cluster_size()
        }
    }

    /// The L2 entry (and extended bitmap) for a guest cluster, with the L2 table's offset.
    pub(crate) fn l2_entry(&self, guest_offset: u64) -> Result<(u64, u64)> {
        let cluster_bits = self.header.cluster_bits;
        let cluster_index = guest_offset >> cluster_bits;
        let entries = self.header.l2_entries();
        let l1_index = (cluster_index / entries) as usize;
        let l2_index = (cluster_index % entries) as usize;
        let Some(l1e) = self.l1.get(l1_index) else {
            return Ok((0, 0));
        };
        let l2_offset = l1e & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((0, 0));
        }
        let table = self.l2_table(l2_offset)?;
        if self.header.extended_l2() {
            let e = table.get(l2_index * 2).copied().unwrap_or(0);
            let bitmap = table.get(l2_index * 2 + 1).copied().unwrap_or(0);
            Ok((e, bitmap))
        } else {
            Ok((table.get(l2_index).copied().unwrap_or(0), 0))
        }
    }

    /// What holds the unit containing `guest_offset`.
    pub fn mapping(&self, guest_offset: u64) -> Result<Mapping> {
        let (entry, bitmap) = self.l2_entry(guest_offset)?;
        let cluster = self.header.cluster_size();
        if entry & OFLAG_COMPRESSED != 0 {
            if self.encryption.is_some() {
                return Err(self.corrupt(
                    guest_offset,
                    "L2 entry",
                    "compressed cluster in an encrypted image (qemu never writes one)".into(),
                ));
            }
            if self.data_file.is_some() {
                return Err(self.corrupt(
                    guest_offset,
                    "L2 entry",
                    "compressed cluster in an image with an external data file".into(),
                ));
            }
            let (offset, size) = compressed_descriptor(entry, self.header.cluster_bits);
            return Ok(Mapping::Compressed { offset, size });
        }
        let host = entry & L2E_OFFSET_MASK;
        if !host.is_multiple_of(cluster) {
            return Err(self.corrupt(guest_offset, "L2 entry", format!("data cluster offset {host:#x} for guest offset {guest_offset:#x} is not cluster-aligned")));
        }
        if self.header.extended_l2() {
            let sub = (guest_offset % cluster) / self.unit_size();
            if bitmap & (1 << sub) != 0 {
                return Ok(Mapping::Data(host + sub * self.unit_size()));
            }
            if bitmap & (1 << (32 + sub)) != 0 {
                return Ok(Mapping::Zero);
            }
            return Ok(Mapping::Unallocated);
        }
        if self.header.version >= 3 && entry & OFLAG_ZERO != 0 {
            return Ok(Mapping::Zero);
        }
        if host == 0 {
            // With an external raw data file, an entry may legitimately map guest cluster 0 to
            // host offset 0; qemu marks it with the COPIED flag.
            if self.data_file.is_some() && entry & OFLAG_COPIED != 0 {
                return Ok(Mapping::Data(0));
            }
            return Ok(Mapping::Unallocated);
        }
        Ok(Mapping::Data(host))
    }

    /// Reads data-cluster bytes (decrypted when the image is encrypted).
    fn read_host(&self, buf: &mut [u8], host_offset: u64) -> Result<()> {
        let Some(encryption) = &self.encryption else {
            return self.read_host_plain(buf, host_offset);
        };
        let cipher = encryption.cipher(&self.path)?;
        // Sectors are the unit of encryption; the sector number is the host offset / 512.
        let sector = super::xts::SECTOR as u64;
        let start = host_offset - host_offset % sector;
        let end = (host_offset + buf.len() as u64).div_ceil(sector) * sector;
        if start == host_offset && end == host_offset + buf.len() as u64 {
            self.read_host_plain(buf, host_offset)?;
            cipher.decrypt(buf, host_offset / sector);
            return Ok(());
        }
        let mut whole = vec![0u8; (end - start) as usize];
        self.read_host_plain(&mut whole, start)?;
        cipher.decrypt(&mut whole, start / sector);
        let skip = (host_offset - start) as usize;
        buf.copy_from_slice(&whole[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads data-cluster bytes as stored; reads past the end of the file give zeros, as in
    /// qemu.
    fn read_host_plain(&self, buf: &mut [u8], host_offset: u64) -> Result<()> {
        let (path, src): (&Path, &dyn ReadAt) = match &self.data_file {
            Some((p, f)) => (p.as_path(), f.as_ref()),
            None => (self.path.as_path(), self.source.as_ref()),
        };
        let mut done = 0usize;
        while done < buf.len() {
            let n = src
                .read_at(&mut buf[done..], host_offset + done as u64)
                .map_err(|e| DiskError::io(path, host_offset + done as u64, e))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Decompresses a compressed cluster (cached: the engine reads clusters piecewise).
    pub(crate) fn compressed_cluster(&self, offset: u64, size: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((o, data)) = &*self.compressed_cache.lock().map_err(|_| self.poisoned())? {
            if *o == offset {
                return Ok(data.clone());
            }
        }
        let mut out = vec![0u8; self.header.cluster_size() as usize];
        self.decompress_into(offset, size, &mut out)?;
        let data = Arc::new(out);
        *self.compressed_cache.lock().map_err(|_| self.poisoned())? = Some((offset, data.clone()));
        Ok(data)
    }

    /// Decompresses the compressed cluster at `offset` (`size` bytes as the descriptor says)
    /// into `out`, exactly one cluster long. The input buffer and the decoder are reused per
    /// thread: a zstd context costs ~100 KiB to set up, more than decoding a 64 KiB cluster.
    fn decompress_into(&self, offset: u64, size: u64, out: &mut [u8]) -> Result<()> {
        if offset >= self.file_len {
            return Err(self.corrupt(
                offset,
                "compressed cluster",
                format!("starts past the end of the file ({:#x})", self.file_len),
            ));
        }
        // The descriptor's sector count may round past the end of the file.
        let available = (self.file_len - offset).min(size) as usize;
        // Taken out of the thread's slot while in use, so a nested read on this thread (a
        // source that is itself an image) finds an empty one instead of a borrowed one.
        let mut scratch = DECODE_SCRATCH.with(|slot| slot.take());
        if scratch.input.len() < available {
            scratch.input.resize(available, 0);
        }
        let mut input = std::mem::take(&mut scratch.input);
        let read = self
            .source
            .read_exact_at(&mut input[..available], offset)
            .map_err(|e| DiskError::io(&self.path, offset, e));
        let ok = read.is_ok()
            && match self.header.compression {
                Compression::Zlib => scratch.inflate(&input[..available], out),
                Compression::Zstd => scratch.unzstd(&input[..available], out),
            };
        if input.len() <= MAX_KEPT_INPUT {
            scratch.input = input;
        }
        DECODE_SCRATCH.with(|slot| slot.set(scratch));
        read?;
        if !ok {
            return Err(self.corrupt(
                offset,
                "compressed cluster",
                format!(
                    "{} data does not decompress to a full cluster",
                    self.header.compression.name()
                ),
            ));
        }
        Ok(())
    }

    fn read_backing(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        match &self.backing {
            Some(b) => {
                let bsize = b.virtual_size();
                if guest_offset >= bsize {
                    buf.fill(0);
                    return Ok(());
                }
                let n = ((bsize - guest_offset).min(buf.len() as u64)) as usize;
                b.read_at(&mut buf[..n], guest_offset)?;
                buf[n..].fill(0);
                Ok(())
            }
            None if self.header.backing_file.is_some() => Err(DiskError::Reference {
                path: self.path.clone(),
                reference: self
                    .backing_ref
                    .as_ref()
                    .map(|r| r.resolved.clone())
                    .unwrap_or_default(),
                reason: "not opened (backing files are not followed)",
            }),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn read_snapshots(&self) -> Result<Vec<(SnapshotInfo, u64, u32)>> {
        let mut out = Vec::new();
        let mut pos = self.header.snapshots_offset;
        let table_end = pos
            .saturating_add(MAX_SNAPSHOT_TABLE_BYTES)
            .min(self.file_len);
        for _ in 0..self.header.nb_snapshots {
            let mut fixed = [0u8; 40];
            if pos.checked_add(40).is_none_or(|e| e > table_end) {
                return Err(self.corrupt(
                    pos,
                    "snapshot table",
                    "entry runs past the end of the file or the table limit".into(),
                ));
            }
            self.source
                .read_exact_at(&mut fixed, pos)
                .map_err(|e| DiskError::io(&self.path, pos, e))?;
            let super::SnapshotEntryHeader {
                l1_offset,
                l1_size,
                id_len,
                name_len,
                date_sec,
                date_nsec,
                vm_clock,
                vm_state_small,
                extra_len,
            } = super::SnapshotEntryHeader::parse(&fixed).ok_or_else(|| {
                self.corrupt(pos, "snapshot table", "entry shorter than 40 bytes".into())
            })?;
            if extra_len > 1024 {
                return Err(self.corrupt(
                    pos + 36,
                    "extra_data_size",
                    format!("{extra_len} is above qemu's limit of 1024"),
                ));
            }
            let var_len = extra_len + id_len + name_len;
            if (pos + 40)
                .checked_add(var_len)
                .is_none_or(|e| e > table_end)
            {
                return Err(self.corrupt(
                    pos,
                    "snapshot table",
                    "entry runs past the end of the file".into(),
                ));
            }
            let mut var = vec![0u8; var_len as usize];
            self.source
                .read_exact_at(&mut var, pos + 40)
                .map_err(|e| DiskError::io(&self.path, pos + 40, e))?;
            let extra = &var[..extra_len as usize];
            let get = |at: usize| vmedia_io::bytes::be64(extra, at);
            let vm_state = get(0).unwrap_or(u64::from(vm_state_small));
            let icount = get(16).filter(|&v| v != u64::MAX);
            let id =
                String::from_utf8_lossy(&var[extra_len as usize..(extra_len + id_len) as usize])
                    .into_owned();
            let name = String::from_utf8_lossy(&var[(extra_len + id_len) as usize..]).into_owned();
            out.push((
                SnapshotInfo {
                    id,
                    name,
                    vm_state_size: vm_state,
                    date_sec: u64::from(date_sec),
                    date_nsec: u64::from(date_nsec),
                    vm_clock_sec: vm_clock / 1_000_000_000,
                    vm_clock_nsec: vm_clock % 1_000_000_000,
                    icount,
                },
                l1_offset,
                l1_size,
            ));
            pos = (pos + 40 + var_len).div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// The end of the highest allocation in the file, as qemu-img check's image-end-offset.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The LUKS encryption of the image, if any.
    pub fn encryption(&self) -> Option<&super::luks::Encryption> {
        self.encryption.as_ref()
    }

    pub fn is_compressed_format(&self) -> Compression {
        self.header.compression
    }
}

/// Largest compressed input kept in a thread's scratch buffer between clusters (a 2 MiB
/// cluster's worst case); a larger one is read into a buffer freed afterwards.
const MAX_KEPT_INPUT: usize = (2 << 20) + 4096;

/// One thread's reusable decoding state.
#[derive(Default)]
struct DecodeScratch {
    input: Vec<u8>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    deflate: Option<flate2::Decompress>,
}

impl DecodeScratch {
    fn unzstd(&mut self, input: &[u8], out: &mut [u8]) -> bool {
        use zstd::stream::raw::Operation;
        let reused = match self.zstd.as_mut() {
            Some(decoder) => decoder.reinit().is_ok(),
            None => false,
        };
        if !reused {
            match zstd::stream::raw::Decoder::new() {
                Ok(decoder) => self.zstd = Some(decoder),
                Err(_) => return false,
            }
        }
        let Some(decoder) = self.zstd.as_mut() else {
            return false;
        };
        unzstd_with(decoder, input, out)
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> bool {
        let decoder = self
            .deflate
            .get_or_insert_with(|| flate2::Decompress::new(false));
        decoder.reset(false);
        inflate_with(decoder, input, out)
    }
}

thread_local! {
    static DECODE_SCRATCH: std::cell::Cell<DecodeScratch> =
        std::cell::Cell::new(DecodeScratch::default());
}

fn inflate_with(d: &mut flate2::Decompress, input: &[u8], out: &mut [u8]) -> bool {
    match d.decompress(input, out, flate2::FlushDecompress::Finish) {
        Ok(_) => d.total_out() as usize == out.len(),
        Err(_) => false,
    }
}

fn unzstd_with(
    dec: &mut zstd::stream::raw::Decoder<'static>,
    input: &[u8],
    out: &mut [u8],
) -> bool {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    loop {
        match dec.run(&mut inb, &mut outb) {
            Ok(hint) => {
                if outb.pos() == outb.capacity() {
                    return true;
                }
                if hint == 0 || inb.pos() == input.len() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Raw deflate (no zlib header), as qemu writes; the output must fill `out`.
pub fn inflate_raw(input: &[u8], out: &mut [u8]) -> bool {
    inflate_with(&mut flate2::Decompress::new(false), input, out)
}

/// A zstd frame (trailing padding ignored); the output must fill `out`.
pub fn unzstd(input: &[u8], out: &mut [u8]) -> bool {
    match zstd::stream::raw::Decoder::new() {
        Ok(mut dec) => unzstd_with(&mut dec, input, out),
        Err(_) => false,
    }
}

impl DiskImage for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.header.size
    }
    fn cluster_size(&self) -> Option<u64> {
        Some(self.header.cluster_size())
    }

    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        let size = self.header.size;
        if guest_offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset: guest_offset,
                len: buf.len() as u64,
                size,
            });
        }
        let unit = self.unit_size();
        let cluster = self.header.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = guest_offset + done as u64;
            let in_unit = pos % unit;
            let mut n = ((unit - in_unit) as usize).min(buf.len() - done);
            let mapping = self.mapping(pos)?;
            // Merge following units with the same kind of mapping into one read.
            let mut next = pos - in_unit + unit;
            while done + n < buf.len() {
                let m = self.mapping(next)?;
                let contiguous = match (mapping, m) {
                    (Mapping::Data(a), Mapping::Data(b)) => b == a + (next - (pos - in_unit)),
                    (Mapping::Zero, Mapping::Zero)
                    | (Mapping::Unallocated, Mapping::Unallocated) => true,
                    _ => false,
                };
                if !contiguous {
                    break;
                }
                n = ((next + unit - pos) as usize).min(buf.len() - done);
                next += unit;
            }
            let chunk = &mut buf[done..done + n];
            match mapping {
                Mapping::Unallocated => self.read_backing(chunk, pos)?,
                Mapping::Zero => chunk.fill(0),
                Mapping::Data(host) => self.read_host(chunk, host + in_unit)?,
                Mapping::Compressed { offset, size } if n as u64 == cluster => {
                    // A whole cluster: decode straight into the caller's buffer.
                    self.decompress_into(offset, size, chunk)?;
                }
                Mapping::Compressed { offset, size } => {
                    let data = self.compressed_cluster(offset, size)?;
                    let start = (pos % cluster) as usize;
                    chunk.copy_from_slice(&data[start..start + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus> {
        let size = self.header.size;
        let len = len.min(size.saturating_sub(guest_offset)).max(1);
        let unit = self.unit_size();
        let first = self.mapping(guest_offset)?;
        let (kind, host) = match first {
            Mapping::Unallocated => (BlockKind::Unallocated, None),
            Mapping::Zero => (BlockKind::Zero, None),
            Mapping::Data(h) => (BlockKind::Data, Some(h + guest_offset % unit)),
            Mapping::Compressed { .. } => (BlockKind::Data, None),
        };
        let mut run = unit - guest_offset % unit;
        while run < len {
            let next = guest_offset + run;
            let m = self.mapping(next)?;
            let same = match (first, m) {
                (Mapping::Data(_), Mapping::Data(h)) => host.is_some_and(|start| h == start + run),
                (Mapping::Compressed { .. }, Mapping::Compressed { .. }) => true,
                (Mapping::Zero, Mapping::Zero) | (Mapping::Unallocated, Mapping::Unallocated) => {
                    true
                }
                _ => false,
            };
            if !same {
                break;
            }
            run += unit;
        }
        Ok(BlockStatus {
            len: run.min(len),
            kind,
            host_offset: host.map(HostOffset),
        })
    }

    fn info(&self) -> Result<ImageInfo> {
        let h = &self.header;
        let mut info = ImageInfo::basic(&self.path, Format::Qcow2, h.size);
        info.cluster_size = Some(h.cluster_size());
        info.dirty_flag = h.dirty();
        if self.encryption.is_some() {
            info.encrypted = Some(true);
        }
        info.snapshots = self.snapshots.iter().map(|s| s.0.clone()).collect();
        if let Some(r) = &self.backing_ref {
            info.backing_filename = Some(r.name.clone());
            info.full_backing_filename = Some(r.resolved.display().to_string());
            info.backing_filename_format = h.backing_format.clone();
        }
        let data = if h.version == 2 {
            serde_json::json!({"compat": "0.10", "compression-type": h.compression.name(), "refcount-bits": h.refcount_bits()})
        } else {
            let mut d = serde_json::json!({
                "compat": "1.1",
                "compression-type": h.compression.name(),
                "lazy-refcounts": h.compatible_features & super::header::COMPAT_LAZY_REFCOUNTS != 0,
                "refcount-bits": h.refcount_bits(),
                "corrupt": h.incompatible_features & INCOMPAT_CORRUPT != 0,
                "extended-l2": h.extended_l2(),
            });
            if let Some(df) = &h.data_file {
                d["data-file"] = serde_json::Value::String(df.clone());
                d["data-file-raw"] = serde_json::Value::Bool(
                    h.autoclear_features & super::header::AUTOCLEAR_DATA_FILE_RAW != 0,
                );
            }
            d
        };
        let mut data = data;
        if let Some(e) = &self.encryption {
            data["encrypt"] = e.header.format_specific();
        }
        info.format_specific = Some(serde_json::json!({"type": "qcow2", "data": data}));
        Ok(info)
    }

    fn check(&self, progress: &dyn Progress) -> Result<CheckReport> {
        super::check::check(self, progress)
    }

    fn backing_ref(&self) -> Option<BackingRef> {
        self.backing_ref.clone()
    }

    fn backing(&self) -> Option<&dyn DiskImage> {
        self.backing.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_descriptor_round_trip() {
        for bits in [9u32, 12, 16, 21] {
            let len = (1u64 << bits) - 100;
            let entry = compressed_entry(0x12345, len, bits);
            let (offset, size) = compressed_descriptor(entry, bits);
            assert_eq!(offset, 0x12345);
            assert!(size >= len && size < len + 512);
        }
    }
}
