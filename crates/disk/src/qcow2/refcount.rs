//! qcow2 refcount block entries: 1 to 64 bits each (`refcount_order` 0..=6), packed
//! big-endian, the sub-byte widths starting at the least significant bit of each byte.
//!
//! The one reader and writer of entries, used by the writer (new images), the editor
//! (repair, commit, resize) and the check. An index outside the block reads as 0 and is not
//! written: blocks are whole clusters and callers index inside them, so a miss is a caller bug
//! that must not become a panic on a hostile image.

use vmedia_io::bytes;

/// The refcount of entry `index` of `block`, entries being `1 << order` bits wide.
pub(crate) fn entry(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    let Some(bit_pos) = index.checked_mul(bits) else {
        return 0;
    };
    let Ok(byte) = usize::try_from(bit_pos / 8) else {
        return 0;
    };
    match bits {
        1 | 2 | 4 => {
            let shift = bit_pos % 8;
            u64::from(block.get(byte).copied().unwrap_or(0) >> shift) & ((1 << bits) - 1)
        }
        8 => u64::from(block.get(byte).copied().unwrap_or(0)),
        16 => bytes::be16(block, byte).map(u64::from).unwrap_or(0),
        32 => bytes::be32(block, byte).map(u64::from).unwrap_or(0),
        _ => bytes::be64(block, byte).unwrap_or(0),
    }
}

/// Stores `value` (truncated to the entry width) as entry `index` of `block`.
pub(crate) fn set_entry(block: &mut [u8], index: u64, value: u64, order: u32) {
    let bits = 1u64 << order;
    let Some(bit_pos) = index.checked_mul(bits) else {
        return;
    };
    let Ok(byte) = usize::try_from(bit_pos / 8) else {
        return;
    };
    let width = match bits {
        1 | 2 | 4 | 8 => 1,
        16 => 2,
        32 => 4,
        _ => 8,
    };
    let Some(field) = byte
        .checked_add(width)
        .and_then(|end| block.get_mut(byte..end))
    else {
        return;
    };
    match bits {
        1 | 2 | 4 => {
            let shift = bit_pos % 8;
            let mask = (((1u64 << bits) - 1) << shift) as u8;
            field[0] = (field[0] & !mask) | (((value << shift) as u8) & mask);
        }
        8 => field[0] = value as u8,
        16 => field.copy_from_slice(&(value as u16).to_be_bytes()),
        32 => field.copy_from_slice(&(value as u32).to_be_bytes()),
        _ => field.copy_from_slice(&value.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_round_trips_without_touching_neighbours() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let mut block = vec![0u8; 64];
            set_entry(&mut block, 3, max, order);
            set_entry(&mut block, 4, 1, order);
            assert_eq!(entry(&block, 3, order), max, "order {order}");
            assert_eq!(entry(&block, 4, order), 1, "order {order}");
            assert_eq!(entry(&block, 2, order), 0, "order {order}");
            assert_eq!(entry(&block, 5, order), 0, "order {order}");
        }
    }

    #[test]
    fn an_index_outside_the_block_is_neither_read_nor_written() {
        let mut block = vec![0u8; 8];
        set_entry(&mut block, 4, 7, 4);
        assert_eq!(block, vec![0u8; 8]);
        assert_eq!(entry(&block, 4, 4), 0);
        assert_eq!(entry(&block, u64::MAX, 6), 0);
    }
}
