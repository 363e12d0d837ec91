//! On-disk tables of fixed-size integers (qcow2 L1/L2/refcount tables, VHD and VHDX BATs, VMDK
//! grain directories and tables) decoded in one place.
//!
//! Each table is read whole into a byte buffer first; a trailing partial entry (a buffer whose
//! length is not a multiple of the entry size, which callers never allocate) is not an entry.

/// Big-endian u64 entries (qcow2 tables).
pub(crate) fn be64_entries(raw: &[u8]) -> Vec<u64> {
    raw.as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_be_bytes(*c))
        .collect()
}

/// Big-endian u32 entries (VHD block allocation table).
pub(crate) fn be32_entries(raw: &[u8]) -> Vec<u32> {
    raw.as_chunks::<4>()
        .0
        .iter()
        .map(|c| u32::from_be_bytes(*c))
        .collect()
}

/// Little-endian u64 entries (VHDX block allocation table).
pub(crate) fn le64_entries(raw: &[u8]) -> Vec<u64> {
    raw.as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .collect()
}

/// Little-endian u32 entries (VMDK grain directories and tables).
pub(crate) fn le32_entries(raw: &[u8]) -> Vec<u32> {
    raw.as_chunks::<4>()
        .0
        .iter()
        .map(|c| u32::from_le_bytes(*c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_byte_order_and_drop_a_partial_tail() {
        let raw = [0u8, 0, 0, 0, 0, 0, 1, 2, 9];
        assert_eq!(be64_entries(&raw), vec![0x0102]);
        assert_eq!(le64_entries(&raw), vec![0x0201 << 48]);
        assert_eq!(be32_entries(&raw), vec![0, 0x0102]);
        assert_eq!(le32_entries(&raw), vec![0, 0x0201_0000]);
    }
}
