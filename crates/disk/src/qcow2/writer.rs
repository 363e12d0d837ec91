//! Writing new qcow2 images (create and convert output): data clusters are appended in guest
//! order, compressed clusters are packed byte-tight as qemu packs them, and the L2 tables, L1
//! table and refcount structures are laid out after the data when the image is finished, so
//! every refcount is exact (`qemu-img check` finds no leak and no corruption).

use std::cell::RefCell;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vmedia_io::AtomicFile;

use super::header::{
    Compression, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, MAX_CLUSTER_BITS,
    MAX_L1_BYTES, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS,
};
use super::reader::{compressed_entry, OFLAG_COPIED, OFLAG_ZERO};
use crate::error::{DiskError, Result};
use crate::image::{ClusterCompressor, CreateOptions, Format, ImageWriter, Measurement};

/// Default cluster size, as qemu.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// libdeflate level for zlib (raw deflate) clusters: level 1 already compresses better than
/// qemu's zlib level 6 with a 4 KiB window, at several times the speed.
pub const DEFLATE_LEVEL: i32 = 1;
/// zstd level for compressed clusters (qemu uses zstd's default, 3; 1 is faster at similar size).
pub const ZSTD_LEVEL: i32 = 1;
// qemu inflates with windowBits -12, but always a whole cluster in one call into a
// cluster-sized buffer, so zlib resolves every back-reference inside the cluster from its
// output buffer: streams with 32 KiB distances decode (the disk_qemu tests prove it with
// long-distance repeats).
/// Compressed bytes are gathered and written in pieces of this size.
const PACK_FLUSH: usize = 4 << 20;

/// Options of `qemu-img create -f qcow2` that vmedia implements.
pub const KNOWN_OPTIONS: &[&str] = &[
    "size",
    "compat",
    "cluster_size",
    "compression_type",
    "lazy_refcounts",
    "refcount_bits",
    "backing_file",
    "backing_fmt",
    "preallocation",
    "extended_l2",
];

/// Parsed, validated qcow2 creation parameters.
#[derive(Debug, Clone)]
pub struct Qcow2Params {
    pub version: u32,
    pub cluster_bits: u32,
    pub compression: Compression,
    pub lazy_refcounts: bool,
    pub refcount_order: u32,
    /// LUKS encryption (`-o encrypt.format=luks`).
    pub luks: Option<super::luks::LuksParams>,
}

fn invalid(key: &str, value: &str, reason: &str) -> DiskError {
    DiskError::InvalidOption {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses a qemu size ("64k", "1M", "2G", plain bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                'p' => 1 << 50,
                'e' => 1 << 60,
                _ => return None,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    if let Ok(v) = num.parse::<u64>() {
        return v.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    // Also refuses NaN, which is not >= 0.
    if f.is_nan() || f < 0.0 {
        return None;
    }
    let v = f * mult as f64;
    if v > u64::MAX as f64 {
        return None;
    }
    Some(v as u64)
}

impl Qcow2Params {
    pub fn from_options(opts: &CreateOptions) -> Result<Qcow2Params> {
        let known: Vec<&str> = KNOWN_OPTIONS
            .iter()
            .chain(super::luks::OPTION_KEYS)
            .copied()
            .collect();
        opts.reject_unknown_options(&known)?;
        let o = &opts.options;
        let version = match o.get("compat").map(String::as_str) {
            None | Some("1.1") | Some("v3") => 3,
            Some("0.10") | Some("v2") => 2,
            Some(other) => return Err(invalid("compat", other, "expected 0.10 (v2) or 1.1 (v3)")),
        };
        let cluster_bits = match o.get("cluster_size") {
            None => DEFAULT_CLUSTER_BITS,
            Some(v) => {
                let size = parse_size(v).ok_or_else(|| invalid("cluster_size", v, "not a size"))?;
                if !size.is_power_of_two()
                    || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&size.trailing_zeros())
                {
                    return Err(invalid(
                        "cluster_size",
                        v,
                        "must be a power of two between 512 and 2M",
                    ));
                }
                size.trailing_zeros()
            }
        };
        let compression = match o.get("compression_type").map(String::as_str) {
            None | Some("zlib") => Compression::Zlib,
            Some("zstd") => Compression::Zstd,
            Some(other) => return Err(invalid("compression_type", other, "expected zlib or zstd")),
        };
        if compression == Compression::Zstd && version == 2 {
            return Err(invalid("compression_type", "zstd", "requires compat=1.1"));
        }
        let lazy_refcounts = match o.get("lazy_refcounts") {
            None => false,
            Some(v) => crate::image::parse_on_off("lazy_refcounts", v)?,
        };
        if lazy_refcounts && version == 2 {
            return Err(invalid("lazy_refcounts", "on", "requires compat=1.1"));
        }
        let refcount_order = match o.get("refcount_bits") {
            None => 4,
            Some(v) => {
                let bits: u32 = v
                    .parse()
                    .map_err(|_| invalid("refcount_bits", v, "not a number"))?;
                if !bits.is_power_of_two() || bits > 64 {
                    return Err(invalid(
                        "refcount_bits",
                        v,
                        "must be a power of two up to 64",
                    ));
                }
                if version == 2 && bits != 16 {
                    return Err(invalid("refcount_bits", v, "compat=0.10 only supports 16"));
                }
                bits.trailing_zeros()
            }
        };
        if let Some(v) = o.get("preallocation") {
            if v != "off" {
                return Err(invalid(
                    "preallocation",
                    v,
                    "vmedia writes qcow2 images with preallocation=off only",
                ));
            }
        }
        if let Some(v) = o.get("extended_l2") {
            if crate::image::parse_on_off("extended_l2", v)? {
                return Err(invalid(
                    "extended_l2",
                    v,
                    "vmedia reads extended L2 entries but writes standard ones",
                ));
            }
        }
        let luks = super::luks::LuksParams::from_options(o)?;
        if luks.is_some() && opts.compress {
            return Err(invalid(
                "encrypt.format",
                "luks",
                "compressed clusters cannot be encrypted (qemu refuses them too); drop -c",
            ));
        }
        Ok(Qcow2Params {
            luks,
            version,
            cluster_bits,
            compression,
            lazy_refcounts,
            refcount_order,
        })
    }
}

/// Backing file name and format from CreateOptions or -o backing_file/backing_fmt.
fn backing_of(opts: &CreateOptions) -> Result<Option<(String, Option<String>)>> {
    let from_o = opts.options.get("backing_file").cloned();
    let fmt_o = opts.options.get("backing_fmt").cloned();
    let (name, fmt) = match (&opts.backing, from_o) {
        (Some((n, f)), _) => (
            Some(n.clone()),
            f.map(|f| f.qemu_name().to_string()).or(fmt_o),
        ),
        (None, Some(n)) => (Some(n), fmt_o),
        (None, None) => (None, None),
    };
    if let Some(f) = &fmt {
        Format::from_name(f)?;
    }
    Ok(name.map(|n| (n, fmt)))
}

/// Compresses clusters for qcow2 (raw deflate with a 4 KiB window, or a zstd frame).
pub struct Qcow2Compressor {
    compression: Compression,
    cluster_size: usize,
}

thread_local! {
    static DEFLATE: RefCell<Option<libdeflater::Compressor>> = const { RefCell::new(None) };
}

impl ClusterCompressor for Qcow2Compressor {
    fn compress_cluster(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        // qemu stores a cluster uncompressed when it does not shrink below a cluster.
        let limit = self.cluster_size - 1;
        match self.compression {
            Compression::Zlib => DEFLATE.with(|cell| {
                let mut slot = cell.borrow_mut();
                let c = slot.get_or_insert_with(|| {
                    libdeflater::Compressor::new(
                        libdeflater::CompressionLvl::new(DEFLATE_LEVEL)
                            .unwrap_or_else(|_| libdeflater::CompressionLvl::fastest()),
                    )
                });
                if looks_incompressible(c, data) {
                    return Ok(None);
                }
                let mut out = vec![0u8; limit];
                match c.deflate_compress(data, &mut out) {
                    Ok(n) => {
                        out.truncate(n);
                        Ok(Some(out))
                    }
                    // Insufficient space: it does not shrink enough, store it as is.
                    Err(_) => Ok(None),
                }
            }),
            Compression::Zstd => match zstd::bulk::compress(data, ZSTD_LEVEL) {
                Ok(out) if out.len() < limit => Ok(Some(out)),
                _ => Ok(None),
            },
        }
    }
}

/// Bytes of a cluster's start trial-compressed before the whole cluster is.
const TRIAL_BYTES: usize = 8192;
/// Byte entropy (bits per byte, out of 8) above which a cluster whose start did not shrink is
/// stored without compressing it: random or already-compressed data.
const INCOMPRESSIBLE_ENTROPY: f64 = 7.9;

/// A cheap test that saves deflating random or already-compressed clusters: the first 8 KiB do
/// not shrink and the byte distribution of the whole cluster is nearly uniform.
fn looks_incompressible(c: &mut libdeflater::Compressor, data: &[u8]) -> bool {
    if data.len() < 2 * TRIAL_BYTES {
        return false;
    }
    let mut out = [0u8; TRIAL_BYTES];
    let limit = TRIAL_BYTES - TRIAL_BYTES / 64;
    if let Ok(n) = c.deflate_compress(&data[..TRIAL_BYTES], &mut out[..limit]) {
        if n < limit {
            return false;
        }
    }
    let mut histogram = [0u32; 256];
    for &b in data {
        histogram[b as usize] += 1;
    }
    let total = data.len() as f64;
    let entropy: f64 = histogram
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f64::from(n) / total;
            -p * p.log2()
        })
        .sum();
    entropy > INCOMPRESSIBLE_ENTROPY
}

/// A qcow2 image being written.
pub struct Qcow2Writer {
    file: AtomicFile,
    header: Header,
    cluster_size: u64,
    /// L2 tables by L1 index, allocated on first use.
    l2: Vec<Option<Box<[u64]>>>,
    /// Next free host byte (compressed data is packed byte-granular).
    next_free: u64,
    /// References per host cluster.
    refcounts: Vec<u64>,
    compressor: Option<Arc<Qcow2Compressor>>,
    /// Compressed bytes not yet written, starting at host offset `pack_start`.
    pack: Vec<u8>,
    pack_start: u64,
    has_backing: bool,
    flush: bool,
    /// The data cipher of an encrypted image, and the buffer data is encrypted in.
    cipher: Option<super::xts::XtsCipher>,
    crypt_buf: Vec<u8>,
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Qcow2Writer> {
    let p = Qcow2Params::from_options(opts)?;
    if opts.virtual_size > MAX_VIRTUAL_SIZE {
        return Err(invalid(
            "size",
            &opts.virtual_size.to_string(),
            "above qcow2's maximum virtual size (2^61)",
        ));
    }
    let cluster_size = 1u64 << p.cluster_bits;
    let l2_span = cluster_size * (cluster_size / 8);
    let l1_size = opts.virtual_size.div_ceil(l2_span);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(invalid(
            "size",
            &opts.virtual_size.to_string(),
            "needs an L1 table above qemu's 32 MiB limit; use a larger cluster_size",
        ));
    }
    let backing = backing_of(opts)?;
    let mut incompatible = 0;
    if p.compression == Compression::Zstd {
        incompatible |= INCOMPAT_COMPRESSION;
    }
    let header = Header {
        version: p.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: p.cluster_bits,
        size: opts.virtual_size,
        crypt_method: 0,
        l1_size: l1_size as u32,
        l1_table_offset: 0,
        refcount_table_offset: 0,
        refcount_table_clusters: 0,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompatible,
        compatible_features: if p.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: p.refcount_order,
        header_length: 0,
        compression: p.compression,
        backing_file: backing.as_ref().map(|b| b.0.clone()),
        backing_format: backing.as_ref().and_then(|b| b.1.clone()),
        data_file: None,
        crypto: None,
        used_len: 0,
    };
    let mut header = header;
    // The LUKS region sits right after the header, in clusters of its own.
    let (luks_region, cipher) = match &p.luks {
        Some(params) => {
            let secret = opts.secret.as_ref().ok_or_else(|| {
                invalid(
                    "encrypt.key-secret",
                    opts.options
                        .get("encrypt.key-secret")
                        .map(String::as_str)
                        .unwrap_or(""),
                    "an encrypted image needs its passphrase (a secret object)",
                )
            })?;
            let (_, region, cipher) = super::luks::create(params, secret.bytes())?;
            header.crypt_method = super::header::CRYPT_LUKS;
            header.crypto = Some((cluster_size, region.len() as u64));
            (Some(region), Some(cipher))
        }
        None => (None, None),
    };
    let file = AtomicFile::create(path, opts.overwrite).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "create",
        source,
    })?;
    let mut probe = header.clone();
    if probe.emit().len() as u64 > cluster_size {
        return Err(invalid(
            "backing_file",
            "",
            "the header and backing file name do not fit in one cluster",
        ));
    }
    let compressor = opts.compress.then(|| {
        Arc::new(Qcow2Compressor {
            compression: p.compression,
            cluster_size: cluster_size as usize,
        })
    });
    let region_clusters = luks_region
        .as_ref()
        .map_or(0, |r| (r.len() as u64).div_ceil(cluster_size));
    if let Some(region) = &luks_region {
        file.file()
            .write_all_at(region, cluster_size)
            .map_err(|e| DiskError::io(file.temp_path(), cluster_size, e))?;
    }
    Ok(Qcow2Writer {
        cipher,
        crypt_buf: Vec::new(),
        file,
        header,
        cluster_size,
        l2: (0..l1_size).map(|_| None).collect(),
        next_free: cluster_size * (1 + region_clusters),
        refcounts: vec![1; 1 + region_clusters as usize],
        compressor,
        pack: Vec::new(),
        pack_start: 0,
        has_backing: backing.is_some(),
        flush: opts.flush,
    })
}

impl Qcow2Writer {
    fn io(&self, offset: u64, e: std::io::Error) -> DiskError {
        DiskError::io(self.file.temp_path(), offset, e)
    }

    fn add_ref(&mut self, host_offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = host_offset / self.cluster_size;
        let last = (host_offset + len - 1) / self.cluster_size;
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.refcounts[c as usize] += 1;
        }
    }

    fn set_l2(&mut self, guest_offset: u64, entry: u64) {
        let cluster_index = guest_offset / self.cluster_size;
        let per_table = self.cluster_size / 8;
        let l1_index = (cluster_index / per_table) as usize;
        let table = self.l2[l1_index]
            .get_or_insert_with(|| vec![0u64; per_table as usize].into_boxed_slice());
        table[(cluster_index % per_table) as usize] = entry;
    }

    fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let at = self.pack_start;
        self.file
            .file()
            .write_all_at(&self.pack, at)
            .map_err(|e| self.io(at, e))?;
        self.pack_start += self.pack.len() as u64;
        self.pack.clear();
        Ok(())
    }

    /// Moves the allocation point to a cluster boundary (after packed compressed data).
    fn align(&mut self) -> Result<()> {
        self.flush_pack()?;
        self.next_free = self.next_free.div_ceil(self.cluster_size) * self.cluster_size;
        Ok(())
    }

    fn check_range(&self, guest_offset: u64, len: u64) -> Result<()> {
        if !guest_offset.is_multiple_of(self.cluster_size)
            || guest_offset
                .checked_add(len)
                .is_none_or(|e| e > self.header.size)
        {
            return Err(DiskError::OutOfRange {
                path: self.file.final_path().to_path_buf(),
                offset: guest_offset,
                len,
                size: self.header.size,
            });
        }
        Ok(())
    }

    fn alloc_clusters(&mut self, count: u64) -> u64 {
        let at = self.next_free;
        self.next_free += count * self.cluster_size;
        self.add_ref(at, count * self.cluster_size);
        at
    }
}

impl ImageWriter for Qcow2Writer {
    fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn compressor(&self) -> Option<Arc<dyn ClusterCompressor>> {
        self.compressor
            .clone()
            .map(|c| c as Arc<dyn ClusterCompressor>)
    }

    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(guest_offset, data.len() as u64)?;
        self.align()?;
        let host = self.next_free;
        if let Some(cipher) = &self.cipher {
            // Whole sectors: a partial last cluster is padded with zeros before encrypting.
            let padded = (data.len() as u64).div_ceil(512) * 512;
            self.crypt_buf.clear();
            self.crypt_buf.extend_from_slice(data);
            self.crypt_buf.resize(padded as usize, 0);
            cipher.encrypt(&mut self.crypt_buf, host / 512);
            self.file
                .file()
                .write_all_at(&self.crypt_buf, host)
                .map_err(|e| DiskError::io(self.file.temp_path(), host, e))?;
        } else {
            self.file
                .file()
                .write_all_at(data, host)
                .map_err(|e| self.io(host, e))?;
        }
        let clusters = (data.len() as u64).div_ceil(self.cluster_size);
        self.alloc_clusters(clusters);
        for i in 0..clusters {
            let h = host + i * self.cluster_size;
            self.set_l2(guest_offset + i * self.cluster_size, h | OFLAG_COPIED);
        }
        self.pack_start = self.next_free;
        Ok(())
    }

    fn write_zeroes(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        if !self.has_backing {
            return Ok(());
        }
        self.check_range(guest_offset, len)?;
        // Over a backing file, zeros must hide the backing data.
        if self.header.version >= 3 {
            let mut off = guest_offset;
            while off < guest_offset + len {
                self.set_l2(off, OFLAG_ZERO);
                off += self.cluster_size;
            }
            Ok(())
        } else {
            let zeros = vec![0u8; (len.min(4 << 20)) as usize];
            let mut off = guest_offset;
            while off < guest_offset + len {
                let n = (guest_offset + len - off).min(zeros.len() as u64);
                self.write_at(off, &zeros[..n as usize])?;
                off += n;
            }
            Ok(())
        }
    }

    fn write_compressed(&mut self, guest_offset: u64, compressed: &[u8]) -> Result<()> {
        self.check_range(guest_offset, 1)?;
        if self.pack.is_empty() {
            self.pack_start = self.next_free;
        }
        let host = self.next_free;
        let len = compressed.len() as u64;
        self.pack.extend_from_slice(compressed);
        self.next_free += len;
        self.add_ref(host, len);
        self.set_l2(
            guest_offset,
            compressed_entry(host, len, self.header.cluster_bits),
        );
        if self.pack.len() >= PACK_FLUSH {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.align()?;
        let cs = self.cluster_size;
        // L2 tables.
        let mut l1 = vec![0u64; self.l2.len()];
        let tables: Vec<(usize, Box<[u64]>)> = self
            .l2
            .iter_mut()
            .enumerate()
            .filter_map(|(i, t)| t.take().map(|t| (i, t)))
            .collect();
        let mut l2_writes = Vec::with_capacity(tables.len());
        for (i, table) in tables {
            let at = self.alloc_clusters(1);
            l1[i] = at | OFLAG_COPIED;
            l2_writes.push((at, table));
        }
        // L1 table (at least one cluster, as qemu).
        let l1_clusters = ((l1.len() as u64) * 8).div_ceil(cs).max(1);
        let l1_offset = self.alloc_clusters(l1_clusters);
        // Refcount blocks and table: find the fixed point where they count themselves.
        let per_block = cs * 8 / (1u64 << self.header.refcount_order);
        let base = self.next_free / cs;
        let (mut blocks, mut table) = (0u64, 0u64);
        loop {
            let total = base + blocks + table;
            let b = total.div_ceil(per_block);
            let t = (b * 8).div_ceil(cs).max(1);
            if b == blocks && t == table {
                break;
            }
            blocks = b;
            table = t;
        }
        let blocks_offset = self.alloc_clusters(blocks);
        let table_offset = self.alloc_clusters(table);
        // Write everything.
        for (at, t) in &l2_writes {
            let bytes: Vec<u8> = t.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.file
                .file()
                .write_all_at(&bytes, *at)
                .map_err(|e| self.io(*at, e))?;
        }
        let mut l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        l1_bytes.resize((l1_clusters * cs) as usize, 0);
        self.file
            .file()
            .write_all_at(&l1_bytes, l1_offset)
            .map_err(|e| self.io(l1_offset, e))?;
        let mut reftable = vec![0u8; (table * cs) as usize];
        for b in 0..blocks {
            let mut block = vec![0u8; cs as usize];
            let first = b * per_block;
            for i in 0..per_block {
                let cluster = first + i;
                let value = self.refcounts.get(cluster as usize).copied().unwrap_or(0);
                if value != 0 {
                    super::refcount::set_entry(&mut block, i, value, self.header.refcount_order);
                }
            }
            let at = blocks_offset + b * cs;
            self.file
                .file()
                .write_all_at(&block, at)
                .map_err(|e| self.io(at, e))?;
            reftable[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&at.to_be_bytes());
        }
        self.file
            .file()
            .write_all_at(&reftable, table_offset)
            .map_err(|e| self.io(table_offset, e))?;
        self.header.l1_table_offset = l1_offset;
        self.header.refcount_table_offset = table_offset;
        self.header.refcount_table_clusters = table as u32;
        let header_bytes = self.header.emit();
        self.file
            .file()
            .write_all_at(&header_bytes, 0)
            .map_err(|e| self.io(0, e))?;
        self.file
            .file()
            .set_len(self.next_free)
            .map_err(|e| self.io(self.next_free, e))?;
        let path = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.flush))
            .map_err(|source| DiskError::Open {
                path,
                action: "finish",
                source,
            })
    }
}

/// qemu's formula for the refcount metadata a file of `clusters` clusters needs.
fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let per_table_cluster = cluster_size / 8;
    let per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            return (blocks + table) * cluster_size;
        }
    }
}

/// qemu's size of a fully allocated image (metadata for every cluster plus the data).
fn prealloc_size(total: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let aligned = total.div_ceil(cluster_size) * cluster_size;
    let per_l2 = cluster_size / 8;
    let mut meta = cluster_size;
    let nl2e = (aligned / cluster_size).div_ceil(per_l2) * per_l2;
    meta += nl2e * 8;
    let nl1e = (nl2e * 8 / cluster_size).div_ceil(cluster_size / 8) * (cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

/// qemu-img measure for qcow2.
pub fn measure(
    opts: &CreateOptions,
    source: Option<&dyn crate::image::DiskImage>,
) -> Result<Measurement> {
    let p = Qcow2Params::from_options(opts)?;
    let cs = 1u64 << p.cluster_bits;
    let size = source
        .map(|s| s.virtual_size())
        .unwrap_or(opts.virtual_size);
    let virtual_aligned = size.div_ceil(512) * 512;
    let mut required = 0u64;
    if let Some(src) = source {
        let mut offset = 0u64;
        while offset < size {
            let (len, data) = crate::image::chain_data_status(src, offset, size - offset)?;
            let mut pnum = len;
            if data {
                pnum = (offset + pnum).div_ceil(cs) * cs - offset;
                required += offset % cs + pnum;
            }
            offset += pnum;
        }
    }
    let fully = prealloc_size(virtual_aligned, cs, p.refcount_order);
    // The LUKS region takes whole clusters of its own.
    let luks = p.luks.map_or(0, |l| {
        super::luks::region_len(l.key_bytes).div_ceil(cs) * cs
    });
    Ok(Measurement {
        required: fully - virtual_aligned.div_ceil(cs) * cs + required + luks,
        fully_allocated: fully + luks,
        bitmaps: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_matches_qemu_for_1g() {
        let m = measure(&CreateOptions::new(Format::Qcow2, 1 << 30), None).unwrap();
        assert_eq!(m.required, 393216);
        assert_eq!(m.fully_allocated, 1074135040);
    }

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1.5M"), Some(1572864));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn unknown_cluster_size_is_rejected() {
        let mut o = CreateOptions::new(Format::Qcow2, 1 << 20);
        o.options.insert("cluster_size".into(), "3000".into());
        assert!(Qcow2Params::from_options(&o).is_err());
    }

    #[test]
    fn zstd_needs_v3() {
        let mut o = CreateOptions::new(Format::Qcow2, 1 << 20);
        o.options.insert("compression_type".into(), "zstd".into());
        o.options.insert("compat".into(), "0.10".into());
        assert!(Qcow2Params::from_options(&o).is_err());
    }
}
