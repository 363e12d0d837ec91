//! The VHD footer (hard disk footer): 512 big-endian bytes at the end of every VHD, copied at
//! the start of dynamic and differencing images, plus the CHS geometry rules of the VHD spec.
//!
//! `Footer::parse` never panics: it checks for `FOOTER_SIZE` bytes once and reads fixed ranges.

use vmedia_io::bytes::{self, Fields};

use super::Error;

/// Size of the footer and of its copy at offset 0 of dynamic images.
pub const FOOTER_SIZE: usize = 512;
/// The cookie that starts every footer.
pub const COOKIE: &[u8; 8] = b"conectix";
/// "Reserved" feature bit the spec requires to be set.
pub const FEATURES_RESERVED: u32 = 0x2;
/// The only file format version defined (1.0).
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// Data offset of a fixed disk (no dynamic header).
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Largest CHS the geometry fields can express (65535 cylinders, 16 heads, 255 sectors).
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

mod field {
    use std::ops::Range;
    pub const COOKIE: Range<usize> = 0..8;
    pub const FEATURES: Range<usize> = 8..12;
    pub const VERSION: Range<usize> = 12..16;
    pub const DATA_OFFSET: Range<usize> = 16..24;
    pub const TIMESTAMP: Range<usize> = 24..28;
    pub const CREATOR_APP: Range<usize> = 28..32;
    pub const CREATOR_VERSION: Range<usize> = 32..36;
    pub const CREATOR_HOST: Range<usize> = 36..40;
    pub const ORIGINAL_SIZE: Range<usize> = 40..48;
    pub const CURRENT_SIZE: Range<usize> = 48..56;
    pub const CYLINDERS: Range<usize> = 56..58;
    pub const HEADS: usize = 58;
    pub const SECTORS: usize = 59;
    pub const DISK_TYPE: Range<usize> = 60..64;
    pub const CHECKSUM: Range<usize> = 64..68;
    pub const UNIQUE_ID: Range<usize> = 68..84;
    pub const SAVED_STATE: usize = 84;
}

/// Disk type field of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
    /// Types the spec lists as deprecated or unknown values: carried, refused on open.
    Unknown(u32),
}

impl DiskType {
    pub fn from_u32(v: u32) -> DiskType {
        match v {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => DiskType::Unknown(other),
        }
    }
    pub fn to_u32(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
            DiskType::Unknown(v) => v,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
            DiskType::Unknown(_) => "unknown",
        }
    }
}

/// Cylinders, heads, sectors per track as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Size the geometry describes, in 512-byte sectors.
    pub fn total_sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// The VHD specification's CHS algorithm (appendix "CHS calculation") for a sector count.
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(MAX_CHS_SECTORS);
        let (sectors_per_track, heads, cylinder_times_heads);
        if total >= 65535 * 16 * 63 {
            sectors_per_track = 255u64;
            heads = 16u64;
            cylinder_times_heads = total / sectors_per_track;
        } else {
            let mut spt = 17u64;
            let mut cth = total / spt;
            let mut h = cth.div_ceil(1024);
            if h < 4 {
                h = 4;
            }
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total / spt;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total / spt;
            }
            sectors_per_track = spt;
            heads = h;
            cylinder_times_heads = cth;
        }
        Geometry {
            cylinders: (cylinder_times_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors_per_track: sectors_per_track as u8,
        }
    }

    /// The smallest geometry whose size is at least `sectors` (what qemu and Virtual PC do
    /// when the size must be expressible in CHS), or the maximum geometry.
    pub fn covering(sectors: u64) -> Geometry {
        let mut geometry = Geometry::for_sectors(sectors);
        let mut probe = sectors;
        // The CHS function is monotonic but coarse: step up a bounded number of times.
        for _ in 0..MAX_CHS_SEARCH_STEPS {
            if geometry.total_sectors() >= sectors || probe >= MAX_CHS_SECTORS {
                break;
            }
            probe += 1;
            geometry = Geometry::for_sectors(probe);
        }
        geometry
    }
}

/// Bound on the search for a covering CHS geometry (a cylinder is at most 16*255 sectors).
const MAX_CHS_SEARCH_STEPS: u32 = 16 * 255 * 2;

/// The footer in friendly form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_host: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
}

/// A big-endian u32 field of a checked footer view.
fn be32(f: &Fields<'_>, r: std::ops::Range<usize>) -> u32 {
    f.be32(r.start)
}
/// A big-endian u64 field of a checked footer view.
fn be64(f: &Fields<'_>, r: std::ops::Range<usize>) -> u64 {
    f.be64(r.start)
}

/// One's complement of the byte sum, with the checksum field counted as zero.
pub fn checksum(bytes: &[u8], checksum_field: std::ops::Range<usize>) -> u32 {
    let mut sum = 0u32;
    for (i, b) in bytes.iter().enumerate() {
        if !checksum_field.contains(&i) {
            sum = sum.wrapping_add(u32::from(*b));
        }
    }
    !sum
}

impl Footer {
    /// True when `bytes` starts with the footer cookie.
    pub fn has_cookie(bytes: &[u8]) -> bool {
        bytes.len() >= 8 && &bytes[..8] == COOKIE
    }

    /// Parses a footer. The checksum is reported by `checksum_ok`, not enforced here, so the
    /// caller can decide (and name the file and offset).
    ///
    /// Shorter input than `FOOTER_SIZE` is `Truncated`, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Footer, Error> {
        let f = Fields::new_checked(bytes, FOOTER_SIZE).ok_or(Error::Truncated {
            what: "footer",
            offset: 0,
        })?;
        if !Footer::has_cookie(f.bytes()) {
            return Err(Error::BadMagic {
                what: "footer cookie \"conectix\"",
            });
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(f.slice(field::CREATOR_APP.start, 4));
        let mut creator_host = [0u8; 4];
        creator_host.copy_from_slice(f.slice(field::CREATOR_HOST.start, 4));
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(f.slice(field::UNIQUE_ID.start, 16));
        let cylinders = f.be16(field::CYLINDERS.start);
        let bytes = &f;
        Ok(Footer {
            features: be32(bytes, field::FEATURES),
            version: be32(bytes, field::VERSION),
            data_offset: be64(bytes, field::DATA_OFFSET),
            timestamp: be32(bytes, field::TIMESTAMP),
            creator_app,
            creator_version: be32(bytes, field::CREATOR_VERSION),
            creator_host,
            original_size: be64(bytes, field::ORIGINAL_SIZE),
            current_size: be64(bytes, field::CURRENT_SIZE),
            geometry: Geometry {
                cylinders,
                heads: f.u8(field::HEADS),
                sectors_per_track: f.u8(field::SECTORS),
            },
            disk_type: DiskType::from_u32(be32(bytes, field::DISK_TYPE)),
            checksum: be32(bytes, field::CHECKSUM),
            unique_id,
            saved_state: f.u8(field::SAVED_STATE),
        })
    }

    /// Whether the stored checksum matches the bytes it was parsed from.
    pub fn checksum_ok(bytes: &[u8; FOOTER_SIZE]) -> bool {
        bytes::be32(bytes, field::CHECKSUM.start) == Some(checksum(bytes, field::CHECKSUM))
    }

    /// Writes the footer with a freshly computed checksum (the `checksum` field is ignored).
    pub fn emit(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[field::COOKIE].copy_from_slice(COOKIE);
        b[field::FEATURES].copy_from_slice(&self.features.to_be_bytes());
        b[field::VERSION].copy_from_slice(&self.version.to_be_bytes());
        b[field::DATA_OFFSET].copy_from_slice(&self.data_offset.to_be_bytes());
        b[field::TIMESTAMP].copy_from_slice(&self.timestamp.to_be_bytes());
        b[field::CREATOR_APP].copy_from_slice(&self.creator_app);
        b[field::CREATOR_VERSION].copy_from_slice(&self.creator_version.to_be_bytes());
        b[field::CREATOR_HOST].copy_from_slice(&self.creator_host);
        b[field::ORIGINAL_SIZE].copy_from_slice(&self.original_size.to_be_bytes());
        b[field::CURRENT_SIZE].copy_from_slice(&self.current_size.to_be_bytes());
        b[field::CYLINDERS].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[field::HEADS] = self.geometry.heads;
        b[field::SECTORS] = self.geometry.sectors_per_track;
        b[field::DISK_TYPE].copy_from_slice(&self.disk_type.to_u32().to_be_bytes());
        b[field::UNIQUE_ID].copy_from_slice(&self.unique_id);
        b[field::SAVED_STATE] = self.saved_state;
        let sum = checksum(&b, field::CHECKSUM);
        b[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The virtual size as qemu computes it, so `vmedia` and `qemu-img` agree on every image:
    /// creators known to size by CHS ("vpc ", "qemu" and any unknown app) use the geometry,
    /// those known to use the size field ("win ", "qem2", "d2v ", "CTXS", "tap\0") use
    /// `current_size`; a maximal geometry always means `current_size` (the CHS would truncate).
    pub fn virtual_size(&self) -> u64 {
        let uses_size_field = matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
        );
        let chs_sectors = self.geometry.total_sectors();
        if uses_size_field || chs_sectors == MAX_CHS_SECTORS {
            self.current_size
        } else {
            chs_sectors * 512
        }
    }

    /// The creator application as text, for `info`.
    pub fn creator_app_text(&self) -> String {
        String::from_utf8_lossy(&self.creator_app)
            .trim_end_matches(['\0', ' '])
            .to_string()
    }
}

/// Seconds since the VHD epoch for "now" (saturating to the 32-bit field).
pub fn timestamp_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH_UNIX);
    u32::try_from(unix.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            version: FILE_FORMAT_VERSION,
            data_offset: 512,
            timestamp: 12345,
            creator_app: *b"vmed",
            creator_version: 0x0001_0000,
            creator_host: *b"Wi2k",
            original_size: 4 << 20,
            current_size: 4 << 20,
            geometry: Geometry::for_sectors(8192),
            disk_type: DiskType::Dynamic,
            checksum: 0,
            unique_id: [7; 16],
            saved_state: 0,
        }
    }

    #[test]
    fn footer_parse_emit_round_trip() {
        let f = sample();
        let bytes = f.emit();
        assert!(Footer::checksum_ok(&bytes));
        let mut back = Footer::parse(&bytes).unwrap();
        back.checksum = 0;
        assert_eq!(back, f);
    }

    #[test]
    fn vhd_short_footer_is_an_error_not_a_panic() {
        let bytes = sample().emit();
        for len in [0, 7, 8, 84, FOOTER_SIZE - 1] {
            assert!(matches!(
                Footer::parse(&bytes[..len]),
                Err(Error::Truncated { what: "footer", .. })
            ));
        }
    }

    #[test]
    fn footer_without_cookie_is_rejected() {
        let mut bytes = sample().emit();
        bytes[0] = b'X';
        assert!(matches!(Footer::parse(&bytes), Err(Error::BadMagic { .. })));
    }

    #[test]
    fn footer_checksum_detects_a_flipped_byte() {
        let mut bytes = sample().emit();
        bytes[100] ^= 1;
        assert!(!Footer::checksum_ok(&bytes));
    }

    #[test]
    fn chs_matches_the_spec_examples() {
        // 4 MiB: qemu-img makes 4212736 bytes (CHS 121/4/17) out of 4194304.
        let g = Geometry::covering(8192);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (121, 4, 17));
        assert_eq!(g.total_sectors() * 512, 4_212_736);
        let max = Geometry::for_sectors(u64::MAX / 1024);
        assert_eq!(max.total_sectors(), MAX_CHS_SECTORS);
    }

    #[test]
    fn vpc_creator_sizes_by_chs_and_win_by_current_size() {
        let mut f = sample();
        f.creator_app = *b"vpc ";
        f.geometry = Geometry {
            cylinders: 100,
            heads: 4,
            sectors_per_track: 17,
        };
        f.current_size = 1 << 30;
        assert_eq!(f.virtual_size(), 100 * 4 * 17 * 512);
        f.creator_app = *b"win ";
        assert_eq!(f.virtual_size(), 1 << 30);
    }
}
