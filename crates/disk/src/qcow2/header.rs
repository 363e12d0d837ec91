//! qcow2 header (v2 and v3) and header extensions: parse with every field validated, emit for
//! new images. All fields are big-endian.

use std::path::Path;

use vmedia_io::bytes::{self, Fields};

use crate::error::{DiskError, Result};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Size of the fixed v2 header; v3 headers record their own length (>= 104).
pub const V2_HEADER_LEN: usize = 72;
/// Size of the fixed v3 header up to and including header_length.
pub const V3_MIN_HEADER_LEN: usize = 104;
/// Where the optional v3 compression_type byte sits.
const COMPRESSION_TYPE_OFFSET: usize = 104;
/// The v3 header length qemu writes (104 + compression_type byte + padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest and largest cluster_bits qemu accepts (512 B .. 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu refuses virtual sizes above 2^61 (QCOW_MAX_... limits); so do we.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// qemu's QCOW_MAX_L1_SIZE: 32 MiB of L1 table, so an L1 is never an unbounded allocation.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's QCOW_MAX_REFTABLE_SIZE: 8 MiB of refcount table.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name qemu accepts (1023 bytes + NUL).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Header extensions must fit in the first cluster; cap how many we walk.
pub const MAX_EXTENSIONS: usize = 1024;
/// qemu's QCOW_MAX_SNAPSHOTS.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// crypt_method values: none, the legacy AES-CBC scheme, LUKS.
pub const CRYPT_NONE: u32 = 0;
pub const CRYPT_AES: u32 = 1;
pub const CRYPT_LUKS: u32 = 2;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Cluster compression algorithm (v3 compression_type field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A parsed qcow2 header with its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    // From extensions and the backing name field:
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// The full disk encryption header extension: offset and length of the LUKS region.
    pub crypto: Option<(u64, u64)>,
    /// Bytes from offset 0 that the header, its extensions and backing name occupy.
    pub used_len: u64,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Guest bytes one L2 table maps.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Parses and validates the header. `first_cluster` holds the first bytes of the file
    /// (at least the header, ideally the whole first cluster, where the extensions and the
    /// backing file name live); `file_len` bounds every table offset.
    pub fn parse(path: &Path, first_cluster: &[u8], file_len: u64) -> Result<Header> {
        let corrupt = |offset: u64, field: &'static str, reason: String| {
            DiskError::corrupt(path, "qcow2", offset, field, reason)
        };
        let b = first_cluster;
        let Some(v2) = Fields::new_checked(b, V2_HEADER_LEN) else {
            return Err(corrupt(
                0,
                "header",
                format!("file is only {} bytes", first_cluster.len()),
            ));
        };
        if v2.slice(0, 4) != MAGIC {
            return Err(corrupt(0, "magic", "not QFI\\xfb".into()));
        }
        let version = v2.be32(4);
        if version != 2 && version != 3 {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature: format!("version {version} (only 2 and 3 exist)"),
            });
        }
        let cluster_bits = v2.be32(20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(
                20,
                "cluster_bits",
                format!("{cluster_bits} is outside 9..=21"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: v2.be64(8),
            backing_file_size: v2.be32(16),
            cluster_bits,
            size: v2.be64(24),
            crypt_method: v2.be32(32),
            l1_size: v2.be32(36),
            l1_table_offset: v2.be64(40),
            refcount_table_offset: v2.be64(48),
            refcount_table_clusters: v2.be32(56),
            nb_snapshots: v2.be32(60),
            snapshots_offset: v2.be64(64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            data_file: None,
            crypto: None,
            used_len: V2_HEADER_LEN as u64,
        };
        if version == 3 {
            let Some(v3) = Fields::new_checked(b, V3_MIN_HEADER_LEN) else {
                return Err(corrupt(
                    72,
                    "header",
                    "v3 header shorter than 104 bytes".into(),
                ));
            };
            h.incompatible_features = v3.be64(72);
            h.compatible_features = v3.be64(80);
            h.autoclear_features = v3.be64(88);
            h.refcount_order = v3.be32(96);
            h.header_length = v3.be32(100);
            if h.header_length < 104
                || !h.header_length.is_multiple_of(8)
                || u64::from(h.header_length) > cluster_size
            {
                return Err(corrupt(
                    100,
                    "header_length",
                    format!(
                        "{} must be >= 104, a multiple of 8 and within the first cluster",
                        h.header_length
                    ),
                ));
            }
            if h.refcount_order > 6 {
                return Err(corrupt(
                    96,
                    "refcount_order",
                    format!("{} is above 6 (64-bit refcounts)", h.refcount_order),
                ));
            }
            let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
            if unknown != 0 {
                return Err(DiskError::Unsupported {
                    path: path.into(),
                    format: "qcow2",
                    feature: format!("incompatible feature bits {unknown:#x}"),
                });
            }
            // The compression_type byte exists only when the header says it is that long and
            // the bytes hold it.
            let compression_type = b
                .get(COMPRESSION_TYPE_OFFSET)
                .copied()
                .filter(|_| h.header_length as usize > COMPRESSION_TYPE_OFFSET);
            if h.incompatible_features & INCOMPAT_COMPRESSION != 0 {
                let Some(compression_type) = compression_type else {
                    return Err(corrupt(
                        104,
                        "compression_type",
                        "compression bit set but the header has no compression_type byte".into(),
                    ));
                };
                h.compression = match compression_type {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    other => {
                        return Err(corrupt(
                            104,
                            "compression_type",
                            format!("unknown compression type {other}"),
                        ))
                    }
                };
            } else if compression_type.is_some_and(|t| t != 0) {
                return Err(corrupt(
                    104,
                    "compression_type",
                    "non-zlib compression without the incompatible feature bit".into(),
                ));
            }
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 24,
                field: "size",
                value: h.size,
                limit: MAX_VIRTUAL_SIZE,
                why: "qemu's own maximum virtual size",
            });
        }
        match h.crypt_method {
            CRYPT_NONE | CRYPT_LUKS => {}
            CRYPT_AES => {
                return Err(DiskError::Unsupported {
                    path: path.into(),
                    format: "qcow2",
                    feature: "legacy AES encryption (crypt_method 1; qemu refuses it too: convert it with qemu-img 2.x)".into(),
                })
            }
            other => {
                return Err(corrupt(
                    32,
                    "crypt_method",
                    format!("{other} is not 0 (none), 1 (aes) or 2 (luks)"),
                ))
            }
        }
        // L1 must cover the virtual size.
        let l2_span = cluster_size
            .checked_mul(h.l2_entries())
            .ok_or_else(|| corrupt(20, "cluster_bits", "overflow".into()))?;
        let l1_needed = h.size.div_ceil(l2_span);
        if u64::from(h.l1_size) < l1_needed {
            return Err(corrupt(
                36,
                "l1_size",
                format!(
                    "{} entries cannot map the virtual size {} (needs {l1_needed})",
                    h.l1_size, h.size
                ),
            ));
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 36,
                field: "l1_size",
                value: u64::from(h.l1_size),
                limit: MAX_L1_BYTES / 8,
                why: "qemu's maximum L1 table",
            });
        }
        check_table(
            path,
            40,
            "l1_table_offset",
            h.l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
        )?;
        let reftable_bytes = u64::from(h.refcount_table_clusters) * cluster_size;
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 56,
                field: "refcount_table_clusters",
                value: u64::from(h.refcount_table_clusters),
                limit: MAX_REFTABLE_BYTES / cluster_size,
                why: "qemu's maximum refcount table",
            });
        }
        if h.refcount_table_clusters == 0 {
            return Err(corrupt(
                56,
                "refcount_table_clusters",
                "0 (an image needs a refcount table)".into(),
            ));
        }
        check_table(
            path,
            48,
            "refcount_table_offset",
            h.refcount_table_offset,
            reftable_bytes,
            cluster_size,
            file_len,
        )?;
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(DiskError::Limit {
                path: path.into(),
                offset: 60,
                field: "nb_snapshots",
                value: u64::from(h.nb_snapshots),
                limit: u64::from(MAX_SNAPSHOTS),
                why: "qemu's maximum snapshot count",
            });
        }
        if h.nb_snapshots > 0 {
            check_table(
                path,
                64,
                "snapshots_offset",
                h.snapshots_offset,
                1,
                cluster_size,
                file_len,
            )?;
        }

        // Header extensions.
        let mut pos = h.header_length as usize;
        let ext_limit = b.len().min(cluster_size as usize);
        for _ in 0..MAX_EXTENSIONS {
            let (Some(ext_type), Some(ext_len)) = (
                bytes::be32(&b[..ext_limit], pos),
                bytes::be32(&b[..ext_limit], pos.saturating_add(4)),
            ) else {
                // v2 images without extensions may end right after the header.
                break;
            };
            let ext_len = ext_len as usize;
            if ext_type == EXT_END {
                pos += 8;
                break;
            }
            let data_start = pos + 8;
            let data_end = data_start
                .checked_add(ext_len)
                .filter(|&e| e <= ext_limit)
                .ok_or_else(|| {
                    corrupt(
                        pos as u64,
                        "header extension",
                        format!("type {ext_type:#x} length {ext_len} runs past the first cluster"),
                    )
                })?;
            let data = &b[data_start..data_end];
            let text = || {
                String::from_utf8_lossy(data)
                    .trim_end_matches('\0')
                    .to_string()
            };
            match ext_type {
                EXT_BACKING_FORMAT => h.backing_format = Some(text()),
                EXT_DATA_FILE => h.data_file = Some(text()),
                EXT_CRYPTO => {
                    let (Some(offset), Some(len), 16) =
                        (bytes::be64(data, 0), bytes::be64(data, 8), data.len())
                    else {
                        return Err(corrupt(
                            pos as u64,
                            "encryption header extension",
                            format!("{} bytes, must be 16", data.len()),
                        ));
                    };
                    h.crypto = Some((offset, len));
                }
                _ => {}
            }
            pos = data_end.div_ceil(8) * 8;
        }
        h.used_len = pos as u64;

        if h.backing_file_offset != 0 {
            if h.backing_file_size == 0 || h.backing_file_size > MAX_BACKING_NAME {
                return Err(corrupt(
                    16,
                    "backing_file_size",
                    format!("{} is not in 1..={MAX_BACKING_NAME}", h.backing_file_size),
                ));
            }
            let start = h.backing_file_offset;
            // Checked: an offset near u64::MAX must not wrap around to a small end.
            let end = start
                .checked_add(u64::from(h.backing_file_size))
                .filter(|&end| end <= cluster_size);
            let name =
                end.and_then(|end| b.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?));
            let (Some(end), Some(name)) = (end, name) else {
                return Err(corrupt(
                    8,
                    "backing_file_offset",
                    format!(
                        "name at {start:#x}+{} is outside the first cluster",
                        h.backing_file_size
                    ),
                ));
            };
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
            h.used_len = h.used_len.max(end);
        }
        match (h.crypt_method, h.crypto) {
            (CRYPT_LUKS, Some((offset, len))) => {
                if len == 0 || len > super::luks::MAX_REGION_LEN {
                    return Err(DiskError::Limit {
                        path: path.into(),
                        offset: 0,
                        field: "encryption header length",
                        value: len,
                        limit: super::luks::MAX_REGION_LEN,
                        why: "8 LUKS key slots of the largest key need far less",
                    });
                }
                check_table(
                    path,
                    0,
                    "encryption header offset",
                    offset,
                    len,
                    cluster_size,
                    file_len,
                )?;
            }
            (CRYPT_LUKS, None) => {
                return Err(corrupt(
                    32,
                    "crypt_method",
                    "LUKS encryption without the encryption header extension".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(corrupt(
                    32,
                    "crypt_method",
                    "encryption header extension in an image that is not LUKS-encrypted".into(),
                ))
            }
            _ => {}
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 && h.data_file.is_none() {
            return Err(corrupt(
                72,
                "incompatible_features",
                "external data file bit set but no data file name extension".into(),
            ));
        }
        Ok(h)
    }

    /// The header bytes (fixed part, extensions, backing name) for a new image; fits in the
    /// first cluster. Sets `backing_file_offset`/`size` to where the name lands.
    pub fn emit(&mut self) -> Vec<u8> {
        let mut out = vec![
            0u8;
            if self.version == 3 {
                V3_HEADER_LEN as usize
            } else {
                V2_HEADER_LEN
            }
        ];
        self.header_length = if self.version == 3 {
            V3_HEADER_LEN
        } else {
            V2_HEADER_LEN as u32
        };
        let mut exts: Vec<u8> = Vec::new();
        let mut push_ext = |t: u32, data: &[u8]| {
            exts.extend_from_slice(&t.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u32).to_be_bytes());
            exts.extend_from_slice(data);
            while !exts.len().is_multiple_of(8) {
                exts.push(0);
            }
        };
        if let Some((offset, len)) = self.crypto {
            let mut data = offset.to_be_bytes().to_vec();
            data.extend_from_slice(&len.to_be_bytes());
            push_ext(EXT_CRYPTO, &data);
        }
        if let Some(f) = &self.backing_format {
            push_ext(EXT_BACKING_FORMAT, f.as_bytes());
        }
        if let Some(f) = &self.data_file {
            push_ext(EXT_DATA_FILE, f.as_bytes());
        }
        if self.version == 3 {
            push_ext(EXT_FEATURE_TABLE, &feature_table());
        }
        push_ext(EXT_END, &[]);
        let name_offset = out.len() + exts.len();
        if let Some(name) = &self.backing_file {
            self.backing_file_offset = name_offset as u64;
            self.backing_file_size = name.len() as u32;
        } else {
            self.backing_file_offset = 0;
            self.backing_file_size = 0;
        }
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.version.to_be_bytes());
        out[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        out[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        out[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        out[24..32].copy_from_slice(&self.size.to_be_bytes());
        out[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        out[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        out[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        out[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        out[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        out[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        out[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 {
            out[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
            out[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
            out[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
            out[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            out[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            out[104] = match self.compression {
                Compression::Zlib => 0,
                Compression::Zstd => 1,
            };
        }
        out.extend_from_slice(&exts);
        if let Some(name) = &self.backing_file {
            out.extend_from_slice(name.as_bytes());
        }
        self.used_len = out.len() as u64;
        out
    }
}

/// The feature name table qemu writes into v3 images (so older tools can name unknown bits).
fn feature_table() -> Vec<u8> {
    let entries: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut out = Vec::with_capacity(entries.len() * 48);
    for (kind, bit, name) in entries {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&e);
    }
    out
}

/// A table must be cluster-aligned and end inside the file.
fn check_table(
    path: &Path,
    field_offset: u64,
    field: &'static str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(DiskError::corrupt(
            path,
            "qcow2",
            field_offset,
            field,
            format!("{offset:#x} is not cluster-aligned"),
        ));
    }
    if offset == 0 && len > 0 {
        return Err(DiskError::corrupt(
            path,
            "qcow2",
            field_offset,
            field,
            "table at offset 0 overlaps the header".to_string(),
        ));
    }
    let end = offset.checked_add(len);
    if end.is_none_or(|e| e > file_len) {
        return Err(DiskError::corrupt(path, "qcow2", field_offset, field, format!("table at {offset:#x} (+{len:#x} bytes) runs past the end of the file ({file_len:#x})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u32) -> Header {
        Header {
            version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression: Compression::Zlib,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            data_file: None,
            crypto: None,
            used_len: 0,
        }
    }

    #[test]
    fn header_parse_emit_round_trip() {
        for v in [2, 3] {
            let mut h = sample(v);
            let mut bytes = h.emit();
            bytes.resize(0x40000, 0);
            let parsed = Header::parse(Path::new("x"), &bytes, 0x40000).unwrap();
            assert_eq!(parsed, h);
        }
    }

    #[test]
    fn bad_cluster_bits_is_rejected() {
        let mut h = sample(3);
        let mut bytes = h.emit();
        bytes.resize(0x40000, 0);
        bytes[20..24].copy_from_slice(&40u32.to_be_bytes());
        let err = Header::parse(Path::new("x"), &bytes, 0x40000).unwrap_err();
        assert!(err.to_string().contains("cluster_bits"), "{err}");
    }

    #[test]
    fn l1_table_past_end_is_rejected() {
        let mut h = sample(3);
        h.l1_table_offset = 0x100000;
        let mut bytes = h.emit();
        bytes.resize(0x40000, 0);
        let err = Header::parse(Path::new("x"), &bytes, 0x40000).unwrap_err();
        assert!(err.to_string().contains("l1_table_offset"), "{err}");
    }

    #[test]
    fn qcow2_backing_name_offset_near_u64_max_is_an_error_not_a_panic() {
        let mut h = sample(3);
        let mut bytes = h.emit();
        bytes.resize(0x40000, 0);
        // An offset that wraps around when the name length is added.
        bytes[8..16].copy_from_slice(&(u64::MAX - 4).to_be_bytes());
        let err = Header::parse(Path::new("x"), &bytes, 0x40000).unwrap_err();
        assert!(err.to_string().contains("backing_file_offset"), "{err}");
    }

    #[test]
    fn qcow2_short_header_is_an_error_not_a_panic() {
        let mut h = sample(3);
        let bytes = h.emit();
        for len in [0, 3, 4, 71, 72, 103] {
            let err = Header::parse(Path::new("x"), &bytes[..len], 0x40000).unwrap_err();
            assert!(err.to_string().contains("header"), "{len}: {err}");
        }
        // The fixed v3 part without the compression_type byte or any extension.
        let mut v3 = bytes[..104].to_vec();
        v3[100..104].copy_from_slice(&104u32.to_be_bytes());
        v3[72..80].copy_from_slice(&INCOMPAT_COMPRESSION.to_be_bytes());
        let err = Header::parse(Path::new("x"), &v3, 0x40000).unwrap_err();
        assert!(err.to_string().contains("compression_type"), "{err}");
    }

    #[test]
    fn l1_too_small_for_size_is_rejected() {
        let mut h = sample(3);
        h.size = 1 << 40;
        let mut bytes = h.emit();
        bytes.resize(0x40000, 0);
        let err = Header::parse(Path::new("x"), &bytes, 0x40000).unwrap_err();
        assert!(err.to_string().contains("l1_size"), "{err}");
    }
}
