//! Volume geometry: FAT type, cluster size, FAT and root sizes, and the choice among them.

use serde::Serialize;

/// Bytes per sector; every UEFI FAT driver and El Torito image uses 512.
pub const SECTOR_SIZE: u64 = 512;
/// Two FATs, as mkfs.fat and every firmware expect.
pub const FAT_COUNT: u64 = 2;
/// Root directory entries on FAT12/16 when the root holds fewer (mkfs.fat's default).
const DEFAULT_ROOT_ENTRIES: u64 = 512;
/// Reserved sectors on FAT32: boot sector, FSInfo, backup boot sector at 6, as mkfs.fat.
const FAT32_RESERVED: u64 = 32;
/// Cluster counts near a type's boundary are read as the wrong type by some drivers; keep this
/// far from each boundary (mkfs.fat does the same).
const BOUNDARY_MARGIN: u64 = 16;
/// The FAT specification's cluster-count boundaries between FAT12, FAT16 and FAT32.
const FAT12_MAX_CLUSTERS: u64 = 4084;
const FAT16_MAX_CLUSTERS: u64 = 65524;
/// FAT32 cluster numbers are 28 bits; the top values are reserved markers.
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF5 - 2;
/// Largest cluster the specification allows (32 KiB).
const MAX_SECTORS_PER_CLUSTER: u64 = 64;

/// The three FAT variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FatType {
    #[serde(rename = "FAT12")]
    Fat12,
    #[serde(rename = "FAT16")]
    Fat16,
    #[serde(rename = "FAT32")]
    Fat32,
}

impl FatType {
    pub fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// Cluster counts this type may use, away from the boundaries.
    fn cluster_range(self) -> (u64, u64) {
        match self {
            FatType::Fat12 => (1, FAT12_MAX_CLUSTERS - BOUNDARY_MARGIN),
            FatType::Fat16 => (
                FAT12_MAX_CLUSTERS + 1 + BOUNDARY_MARGIN,
                FAT16_MAX_CLUSTERS - BOUNDARY_MARGIN,
            ),
            FatType::Fat32 => (FAT16_MAX_CLUSTERS + 1 + BOUNDARY_MARGIN, FAT32_MAX_CLUSTERS),
        }
    }

    fn reserved_sectors(self) -> u64 {
        if self == FatType::Fat32 {
            FAT32_RESERVED
        } else {
            1
        }
    }

    /// The 8-byte type string in the boot sector.
    pub fn label(self) -> &'static [u8; 8] {
        match self {
            FatType::Fat12 => b"FAT12   ",
            FatType::Fat16 => b"FAT16   ",
            FatType::Fat32 => b"FAT32   ",
        }
    }
}

impl std::str::FromStr for FatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim_start_matches("fat").trim_start_matches("FAT") {
            "12" => Ok(FatType::Fat12),
            "16" => Ok(FatType::Fat16),
            "32" => Ok(FatType::Fat32),
            _ => Err(format!("{s:?} is not a FAT type (12, 16 or 32)")),
        }
    }
}

/// Where everything lies on the volume, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub fat_type: FatType,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub fat_sectors: u64,
    /// FAT12/16 fixed root directory entries (0 on FAT32).
    pub root_entries: u64,
    pub total_sectors: u64,
    pub cluster_count: u64,
}

impl Geometry {
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR_SIZE
    }
    pub fn root_dir_sectors(&self) -> u64 {
        (self.root_entries * 32).div_ceil(SECTOR_SIZE)
    }
    pub fn fat_start(&self) -> u64 {
        self.reserved_sectors
    }
    pub fn root_dir_start(&self) -> u64 {
        self.reserved_sectors + FAT_COUNT * self.fat_sectors
    }
    pub fn data_start(&self) -> u64 {
        self.root_dir_start() + self.root_dir_sectors()
    }
    /// Byte offset of data cluster `cluster` (numbered from 2).
    pub fn cluster_offset(&self, cluster: u64) -> u64 {
        (self.data_start() + (cluster - 2) * self.sectors_per_cluster) * SECTOR_SIZE
    }
    pub fn size_bytes(&self) -> u64 {
        self.total_sectors * SECTOR_SIZE
    }

    /// Lays out a volume of exactly `total_sectors`, if this type and cluster size allow it.
    pub fn for_size(
        fat_type: FatType,
        sectors_per_cluster: u64,
        root_entries: u64,
        total_sectors: u64,
    ) -> Option<Geometry> {
        let reserved = fat_type.reserved_sectors();
        let root_entries = if fat_type == FatType::Fat32 {
            0
        } else {
            root_entries
        };
        let root_sectors = (root_entries * 32).div_ceil(SECTOR_SIZE);
        // The FAT must describe the clusters that remain after it. "Big enough" is monotone in
        // the FAT size (more FAT, fewer clusters to describe), so binary-search the smallest.
        let clusters_for = |fat_sectors: u64| -> Option<u64> {
            let overhead = reserved + root_sectors + FAT_COUNT * fat_sectors;
            Some(total_sectors.checked_sub(overhead)? / sectors_per_cluster)
        };
        let big_enough = |fat_sectors: u64| match clusters_for(fat_sectors) {
            Some(clusters) => fat_bytes(fat_type, clusters).div_ceil(SECTOR_SIZE) <= fat_sectors,
            None => true,
        };
        let (mut low, mut high) = (1u64, total_sectors.max(1));
        if !big_enough(high) {
            return None;
        }
        while low < high {
            let mid = low + (high - low) / 2;
            if big_enough(mid) {
                high = mid
            } else {
                low = mid + 1
            }
        }
        let fat_sectors = low;
        let clusters = clusters_for(fat_sectors)?;
        let (min, max) = fat_type.cluster_range();
        if clusters < min || clusters > max {
            return None;
        }
        Some(Geometry {
            fat_type,
            sectors_per_cluster,
            reserved_sectors: reserved,
            fat_sectors,
            root_entries,
            total_sectors,
            cluster_count: clusters,
        })
    }

    /// The smallest volume of this type and cluster size holding `used_clusters` plus `slack`.
    pub fn smallest(
        fat_type: FatType,
        sectors_per_cluster: u64,
        root_entries: u64,
        used_clusters: u64,
        slack: u64,
    ) -> Option<Geometry> {
        let (min, max) = fat_type.cluster_range();
        let clusters = used_clusters.checked_add(slack)?.max(min);
        if clusters > max {
            return None;
        }
        let reserved = fat_type.reserved_sectors();
        let root_entries = if fat_type == FatType::Fat32 {
            0
        } else {
            root_entries
        };
        let root_sectors = (root_entries * 32).div_ceil(SECTOR_SIZE);
        let fat_sectors = fat_bytes(fat_type, clusters).div_ceil(SECTOR_SIZE);
        let total = reserved
            + root_sectors
            + FAT_COUNT * fat_sectors
            + clusters.checked_mul(sectors_per_cluster)?;
        Geometry::for_size(fat_type, sectors_per_cluster, root_entries, total)
    }
}

/// Bytes of one FAT describing `clusters` data clusters (plus the two reserved entries).
fn fat_bytes(fat_type: FatType, clusters: u64) -> u64 {
    ((clusters + 2) * fat_type.bits()).div_ceil(8)
}

/// Root entry count for FAT12/16: the default, or more when the root needs it.
pub fn root_entries_for(root_entry_count: u64) -> u64 {
    root_entry_count
        .div_ceil(16)
        .saturating_mul(16)
        .max(DEFAULT_ROOT_ENTRIES)
}

/// Cluster sizes to try for a type, smallest first.
pub fn cluster_sizes(fat_type: FatType) -> impl Iterator<Item = u64> {
    let max = match fat_type {
        // Larger FAT12 clusters are legal but unusual; FAT16 covers those sizes better.
        FatType::Fat12 => 8,
        _ => MAX_SECTORS_PER_CLUSTER,
    };
    std::iter::successors(Some(1u64), move |&s| (s < max).then_some(s * 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_covers_every_cluster() {
        for total in [2880u64, 20_000, 200_000, 2_000_000] {
            for fat_type in [FatType::Fat12, FatType::Fat16, FatType::Fat32] {
                for spc in cluster_sizes(fat_type) {
                    if let Some(g) = Geometry::for_size(fat_type, spc, 512, total) {
                        assert!(
                            fat_bytes(fat_type, g.cluster_count) <= g.fat_sectors * SECTOR_SIZE
                        );
                        assert!(g.data_start() + g.cluster_count * spc <= total);
                    }
                }
            }
        }
    }

    #[test]
    fn cluster_count_stays_off_type_boundaries() {
        assert!(Geometry::for_size(FatType::Fat16, 1, 512, 4100).is_none());
        assert!(Geometry::for_size(FatType::Fat12, 1, 512, 4200).is_none());
        assert!(Geometry::for_size(FatType::Fat32, 1, 0, 60_000).is_none());
    }

    #[test]
    fn smallest_holds_the_requested_clusters() {
        let g = Geometry::smallest(FatType::Fat12, 1, 512, 1000, 10).unwrap();
        assert!(g.cluster_count >= 1010);
        let g = Geometry::smallest(FatType::Fat32, 1, 0, 10, 0).unwrap();
        assert!(g.cluster_count > FAT16_MAX_CLUSTERS);
    }

    #[test]
    fn fat_type_parses_common_spellings() {
        assert_eq!("32".parse::<FatType>(), Ok(FatType::Fat32));
        assert_eq!("fat16".parse::<FatType>(), Ok(FatType::Fat16));
        assert!("64".parse::<FatType>().is_err());
    }
}
