//! The hosted sparse extent header ("KDMV", 512 little-endian bytes), stream markers and the
//! ESX COWD header we recognise only to name it.
//!
//! `SparseHeader::parse` reads fixed ranges of a checked 512-byte view and never panics; validation of
//! the values against limits and the file size lives in `validate`.

use vmedia_io::bytes::{self, Fields};

use super::Error;

pub const SECTOR: u64 = 512;
/// "KDMV" read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// "COWD": ESX vmfsSparse extents (not supported for reading, named in errors).
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// seSparse extents (ESXi 6.5+): named in errors.
pub const SESPARSE_MAGIC: u64 = 0x0000_0000_cafe_babe;
/// gdOffset of a streamOptimized header whose real value is in the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// Flag bit 0: the newline-detection characters are valid.
pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
/// Flag bit 1: a redundant grain directory and tables exist.
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// Flag bit 2: a grain table entry of 1 means "zeroed grain" (ESXi/Workstation zeroed GTE).
pub const FLAG_ZEROED_GTE: u32 = 1 << 2;
/// Flag bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag bit 17: the stream has markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// compressAlgorithm value for deflate (zlib streams, RFC 1950).
pub const COMPRESSION_DEFLATE: u16 = 1;
/// Grain table entries per table: every writer uses 512 and VMware refuses anything else.
pub const GTES_PER_GT: u32 = 512;
/// Smallest and largest grain size accepted, in sectors (VMware uses 128 = 64 KiB; qemu
/// accepts up to 2 MiB grains, larger ones would make per-grain buffers unreasonable).
pub const MIN_GRAIN_SECTORS: u64 = 1;
pub const MAX_GRAIN_SECTORS: u64 = 4096;
/// Largest capacity accepted, in sectors: 64 TiB, VMware's own VMDK limit (62 TiB) rounded up.
pub const MAX_CAPACITY_SECTORS: u64 = (64u64 << 40) / SECTOR;
/// Largest embedded descriptor, in sectors (VMware reserves 20; 2 MiB leaves plenty of room
/// while bounding the allocation).
pub const MAX_DESCRIPTOR_SECTORS: u64 = 4096;
/// Largest grain directory, in entries: capacity limit / (512 GTEs * smallest sensible grain
/// of 8 sectors) = 32 Mi entries = 128 MiB of table memory at most.
pub const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Size of a metadata marker sector.
pub const MARKER_SIZE: usize = 512;
/// Marker types.
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
/// Bytes in front of the compressed data of a grain: LBA (u64) and size (u32).
pub const GRAIN_MARKER_HEADER: usize = 12;
/// Bytes a marker is recognised from: value (u64), size (u32) and type (u32).
pub const MARKER_HEADER_LEN: usize = 16;

mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 8;
    pub const CAPACITY: usize = 12;
    pub const GRAIN_SIZE: usize = 20;
    pub const DESCRIPTOR_OFFSET: usize = 28;
    pub const DESCRIPTOR_SIZE: usize = 36;
    pub const NUM_GTES_PER_GT: usize = 44;
    pub const RGD_OFFSET: usize = 48;
    pub const GD_OFFSET: usize = 56;
    pub const OVERHEAD: usize = 64;
    pub const UNCLEAN_SHUTDOWN: usize = 72;
    pub const SINGLE_END_LINE: usize = 73;
    pub const NON_END_LINE: usize = 74;
    pub const DOUBLE_END_LINE_1: usize = 75;
    pub const DOUBLE_END_LINE_2: usize = 76;
    pub const COMPRESS_ALGORITHM: usize = 77;
}

/// Bytes of the hosted sparse extent header.
pub const HEADER_SIZE: usize = 512;

/// True when `b` starts with the seSparse magic and `version` (16 bytes, little endian).
pub fn has_sesparse_magic(b: &[u8], version: u64) -> bool {
    bytes::le64(b, 0) == Some(SESPARSE_MAGIC) && bytes::le64(b, 8) == Some(version)
}

/// The sparse extent header in friendly form (all offsets and sizes in sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub unclean_shutdown: bool,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    pub fn has_magic(b: &[u8]) -> bool {
        bytes::le32(b, 0) == Some(SPARSE_MAGIC)
    }

    /// Parses the header fields of the 512-byte header `b` (shorter input is `Truncated`,
    /// never a panic); `validate` checks them.
    pub fn parse(b: &[u8]) -> Result<SparseHeader, Error> {
        let f = Fields::new_checked(b, HEADER_SIZE).ok_or(Error::Truncated {
            what: "sparse extent header",
            offset: 0,
        })?;
        let magic = f.le32(field::MAGIC);
        if magic != SPARSE_MAGIC {
            if magic == COWD_MAGIC {
                return Err(Error::Unsupported {
                    what: "ESX vmfsSparse (COWD) extents".into(),
                });
            }
            if f.le64(0) == SESPARSE_MAGIC {
                return Err(Error::Unsupported {
                    what: "ESXi seSparse extents".into(),
                });
            }
            return Err(Error::BadMagic {
                what: "sparse extent magic \"KDMV\"",
            });
        }
        Ok(SparseHeader {
            version: f.le32(field::VERSION),
            flags: f.le32(field::FLAGS),
            capacity: f.le64(field::CAPACITY),
            grain_size: f.le64(field::GRAIN_SIZE),
            descriptor_offset: f.le64(field::DESCRIPTOR_OFFSET),
            descriptor_size: f.le64(field::DESCRIPTOR_SIZE),
            num_gtes_per_gt: f.le32(field::NUM_GTES_PER_GT),
            rgd_offset: f.le64(field::RGD_OFFSET),
            gd_offset: f.le64(field::GD_OFFSET),
            overhead: f.le64(field::OVERHEAD),
            unclean_shutdown: f.u8(field::UNCLEAN_SHUTDOWN) != 0,
            compress_algorithm: f.le16(field::COMPRESS_ALGORITHM),
        })
    }

    /// Writes the header, with the newline-detection characters VMware checks.
    pub fn emit(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[field::MAGIC..field::MAGIC + 4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
        b[field::VERSION..field::VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        b[field::FLAGS..field::FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[field::CAPACITY..field::CAPACITY + 8].copy_from_slice(&self.capacity.to_le_bytes());
        b[field::GRAIN_SIZE..field::GRAIN_SIZE + 8].copy_from_slice(&self.grain_size.to_le_bytes());
        b[field::DESCRIPTOR_OFFSET..field::DESCRIPTOR_OFFSET + 8]
            .copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[field::DESCRIPTOR_SIZE..field::DESCRIPTOR_SIZE + 8]
            .copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[field::NUM_GTES_PER_GT..field::NUM_GTES_PER_GT + 4]
            .copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[field::RGD_OFFSET..field::RGD_OFFSET + 8].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[field::GD_OFFSET..field::GD_OFFSET + 8].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[field::OVERHEAD..field::OVERHEAD + 8].copy_from_slice(&self.overhead.to_le_bytes());
        b[field::UNCLEAN_SHUTDOWN] = u8::from(self.unclean_shutdown);
        b[field::SINGLE_END_LINE] = b'\n';
        b[field::NON_END_LINE] = b' ';
        b[field::DOUBLE_END_LINE_1] = b'\r';
        b[field::DOUBLE_END_LINE_2] = b'\n';
        b[field::COMPRESS_ALGORITHM..field::COMPRESS_ALGORITHM + 2]
            .copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// Bytes covered by one grain table.
    pub fn gt_coverage_bytes(&self) -> u64 {
        self.grain_size * SECTOR * u64::from(self.num_gtes_per_gt)
    }

    /// Number of grain directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_size);
        grains.div_ceil(u64::from(self.num_gtes_per_gt))
    }

    /// Checks every field a reader relies on, with the limits above.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, offset: usize, reason: String| Error::Invalid {
            field,
            offset: offset as u64,
            reason,
        };
        if !(1..=3).contains(&self.version) {
            return Err(invalid(
                "version",
                field::VERSION,
                format!("{} is not 1, 2 or 3", self.version),
            ));
        }
        if self.grain_size < MIN_GRAIN_SECTORS
            || self.grain_size > MAX_GRAIN_SECTORS
            || !self.grain_size.is_power_of_two()
        {
            return Err(invalid(
                "grainSize",
                field::GRAIN_SIZE,
                format!(
                    "{} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                    self.grain_size
                ),
            ));
        }
        if self.capacity > MAX_CAPACITY_SECTORS {
            return Err(invalid(
                "capacity",
                field::CAPACITY,
                format!("{} sectors is more than the 64 TiB limit", self.capacity),
            ));
        }
        if self.num_gtes_per_gt == 0 || self.num_gtes_per_gt > 64 * GTES_PER_GT {
            return Err(invalid(
                "numGTEsPerGT",
                field::NUM_GTES_PER_GT,
                format!(
                    "{} is not between 1 and {}",
                    self.num_gtes_per_gt,
                    64 * GTES_PER_GT
                ),
            ));
        }
        if self.gd_entries() > MAX_GD_ENTRIES {
            return Err(invalid(
                "grain directory size",
                field::CAPACITY,
                format!(
                    "{} entries is more than the limit {MAX_GD_ENTRIES}",
                    self.gd_entries()
                ),
            ));
        }
        if self.descriptor_size > MAX_DESCRIPTOR_SECTORS {
            return Err(invalid(
                "descriptorSize",
                field::DESCRIPTOR_SIZE,
                format!(
                    "{} sectors is more than the limit {MAX_DESCRIPTOR_SECTORS}",
                    self.descriptor_size
                ),
            ));
        }
        if self.is_compressed() && self.compress_algorithm != COMPRESSION_DEFLATE {
            return Err(invalid(
                "compressAlgorithm",
                field::COMPRESS_ALGORITHM,
                format!("{} is not deflate (1)", self.compress_algorithm),
            ));
        }
        Ok(())
    }
}

/// A stream marker read from a 512-byte sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain: its LBA (sectors) and the compressed byte count that follows the
    /// 12-byte marker header.
    Grain { lba: u64, size: u32 },
    /// A metadata marker: `sectors` of metadata of `kind` follow the marker sector.
    Metadata { sectors: u64, kind: u32 },
}

impl Marker {
    pub fn parse(b: &[u8]) -> Option<Marker> {
        let f = Fields::new_checked(b, MARKER_HEADER_LEN)?;
        let val = f.le64(0);
        let size = f.le32(8);
        if size != 0 {
            return Some(Marker::Grain { lba: val, size });
        }
        Some(Marker::Metadata {
            sectors: val,
            kind: f.le32(12),
        })
    }

    /// A 512-byte metadata marker sector.
    pub fn emit_metadata(sectors: u64, kind: u32) -> [u8; MARKER_SIZE] {
        let mut b = [0u8; MARKER_SIZE];
        b[0..8].copy_from_slice(&sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_header() -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 20480,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: COMPRESSION_DEFLATE,
        }
    }

    #[test]
    fn sparse_header_round_trip() {
        let h = stream_header();
        let bytes = h.emit();
        assert_eq!(&bytes[0..4], b"KDMV");
        assert_eq!(&bytes[73..77], b"\n \r\n");
        assert_eq!(SparseHeader::parse(&bytes).unwrap(), h);
        h.validate().unwrap();
    }

    #[test]
    fn captured_vmware_stream_header_parses() {
        // First 80 bytes of vmdk-rs streamOptimized.vmdk (VMware-made).
        let mut b = [0u8; 512];
        let head: [u8; 80] = [
            0x4b, 0x44, 0x4d, 0x56, 3, 0, 0, 0, 1, 0, 3, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0x80, 0, 0,
            0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x20,
            0x0d, 0x0a, 1, 0, 0,
        ];
        b[..80].copy_from_slice(&head);
        let h = SparseHeader::parse(&b).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.flags, 0x30001);
        assert_eq!(h.capacity, 20480);
        assert_eq!(h.grain_size, 128);
        assert_eq!(h.gd_offset, 0x15);
        assert_eq!(h.compress_algorithm, 1);
        h.validate().unwrap();
    }

    #[test]
    fn grain_size_must_be_a_power_of_two() {
        let mut h = stream_header();
        h.grain_size = 100;
        assert!(matches!(
            h.validate(),
            Err(Error::Invalid {
                field: "grainSize",
                ..
            })
        ));
    }

    #[test]
    fn absurd_capacity_is_refused() {
        let mut h = stream_header();
        h.capacity = u64::MAX / 2;
        assert!(matches!(
            h.validate(),
            Err(Error::Invalid {
                field: "capacity",
                ..
            })
        ));
    }

    #[test]
    fn huge_grain_directory_is_refused() {
        let mut h = stream_header();
        h.grain_size = 1;
        h.num_gtes_per_gt = 1;
        h.capacity = MAX_CAPACITY_SECTORS;
        assert!(matches!(
            h.validate(),
            Err(Error::Invalid {
                field: "grain directory size",
                ..
            })
        ));
    }

    #[test]
    fn descriptor_bomb_is_refused() {
        let mut h = stream_header();
        h.descriptor_size = 1 << 40;
        assert!(matches!(
            h.validate(),
            Err(Error::Invalid {
                field: "descriptorSize",
                ..
            })
        ));
    }

    #[test]
    fn cowd_extent_is_named() {
        let mut b = [0u8; 512];
        b[..4].copy_from_slice(b"COWD");
        assert!(matches!(
            SparseHeader::parse(&b),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn vmdk_short_sparse_header_is_an_error_not_a_panic() {
        let bytes = stream_header().emit();
        for len in [0, 3, 4, 77, HEADER_SIZE - 1] {
            assert!(matches!(
                SparseHeader::parse(&bytes[..len]),
                Err(Error::Truncated { .. })
            ));
        }
        assert!(!SparseHeader::has_magic(b"KDM"));
        assert!(!has_sesparse_magic(&[0xbe, 0xba, 0xfe, 0xca], 0));
        assert_eq!(Marker::parse(&[0u8; 15]), None);
    }

    #[test]
    fn markers_parse() {
        let m = Marker::emit_metadata(4, MARKER_GT);
        assert_eq!(
            Marker::parse(&m),
            Some(Marker::Metadata {
                sectors: 4,
                kind: MARKER_GT
            })
        );
        let mut g = [0u8; 16];
        g[0] = 0x80;
        g[8] = 10;
        assert_eq!(
            Marker::parse(&g),
            Some(Marker::Grain {
                lba: 0x80,
                size: 10
            })
        );
    }
}
