//! The in-place editing trait every format's editor implements ([`InPlaceEditor`]), the
//! parent reference it records ([`ParentRef`]), and the block logic the VHD and VHDX editors
//! share (splitting writes at block boundaries, partly covered sectors, sector bitmaps).
//!
//! Dependencies point one way: the format editors (`qcow2::modify`, `vmdk::edit`,
//! `vhd::edit`, `vhdx::edit`) depend on this module; `modify` (commit, rebase, resize)
//! depends on them and on this module; nothing here knows any format.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::image::{require_parent_format, Format};

/// The parent (backing file) an edited image is told to record by [`InPlaceEditor::set_parent`].
///
/// Each format reads from `resolved` what it must record about the parent besides the name:
/// VMDK its descriptor CID, VHD its footer UUID and modification time, VHDX its DataWriteGuid
/// (parent linkage). The user named this file on the command line, so opening it is not an
/// implicit reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The name to store in the image, exactly as the user wrote it (relative names stay
    /// relative to the edited image's folder, as qemu-img records them).
    pub name: String,
    /// `name` resolved against the edited image's folder: the file to read.
    pub resolved: PathBuf,
    /// The parent's format: as given with -F, else probed from `resolved` when it exists.
    pub format: Option<Format>,
}

/// Writes into an existing image in place (commit target, rebase overlay, emptied overlay).
///
/// Calls use guest offsets aligned to `cluster_size()`; `data` is one whole cluster, or less
/// for the last cluster of the disk. Data writes may land in the file immediately, metadata
/// may be kept in memory: only [`InPlaceEditor::finish`] makes the image consistent, so a
/// dropped editor may leave an image that needs `check -r`.
pub trait InPlaceEditor {
    /// The granularity of `write_cluster`/`zero_cluster` (qcow2 cluster, VMDK grain, VHD/VHDX
    /// block or sector run), a power of two >= 512.
    fn cluster_size(&self) -> u64;
    /// Stores one cluster of guest data.
    fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()>;
    /// Makes one cluster read as zeros in this image whatever its parent holds: a zero flag
    /// where the format has one, else written zeros (or deallocation where that reads as zero
    /// because the image has no parent).
    fn zero_cluster(&mut self, guest_offset: u64) -> Result<()>;
    /// Records a new parent (`None`: the image becomes standalone), with the identity fields
    /// the format keeps about it. Content is not changed: safe rebase copies data first.
    fn set_parent(&mut self, parent: Option<&ParentRef>) -> Result<()>;
    /// Drops every allocation so the image reads entirely through its parent (commit without
    /// -d); formats that cannot say so in their error.
    fn empty(&mut self) -> Result<()>;
    /// The caller's writes do not change what the guest sees (safe rebase copies, emptying
    /// after a commit): keep the content identity that children check (VMDK CID, VHDX
    /// DataWriteGuid) instead of renewing it on the first write.
    fn keep_content_id(&mut self) {}
    /// Writes the metadata, marks the content changed where the format records that, syncs.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Implements [`InPlaceEditor`] for the VHD and VHDX editors: their inherent methods carry the
/// trait's names (`cluster_size`, `write_at`, `zero_cluster`, `set_parent_path`, `empty`,
/// `finish`, and `keep_data_write_guid` when given) and their parent must be of their own
/// `format`.
macro_rules! own_format_parent_editor {
    ($editor:ident, $format:expr $(, keep_content_id: $keep:ident)?) => {
        impl $crate::editor::InPlaceEditor for $editor {
            fn cluster_size(&self) -> u64 {
                $editor::cluster_size(self)
            }

            fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> $crate::Result<()> {
                self.write_at(guest_offset, data)
            }

            fn zero_cluster(&mut self, guest_offset: u64) -> $crate::Result<()> {
                $editor::zero_cluster(self, guest_offset)
            }

            fn set_parent(
                &mut self,
                parent: Option<&$crate::editor::ParentRef>,
            ) -> $crate::Result<()> {
                $crate::editor::set_own_format_parent(parent, $format, |p| {
                    self.set_parent_path(p)
                })
            }

            fn empty(&mut self) -> $crate::Result<()> {
                $editor::empty(self)
            }

            $(
                fn keep_content_id(&mut self) {
                    $editor::$keep(self)
                }
            )?

            fn finish(self: Box<Self>) -> $crate::Result<()> {
                $editor::finish(*self)
            }
        }
    };
}
pub(crate) use own_format_parent_editor;

/// `InPlaceEditor::set_parent` of the formats whose parent must be of their own format (VHD,
/// VHDX): checks the parent's format, then records `(name, resolved)` or drops the parent.
pub(crate) fn set_own_format_parent(
    parent: Option<&ParentRef>,
    format: Format,
    set_parent_path: impl FnOnce(Option<(&str, &Path)>) -> Result<()>,
) -> Result<()> {
    match parent {
        None => set_parent_path(None),
        Some(p) => {
            require_parent_format(p.format, format)?;
            set_parent_path(Some((&p.name, &p.resolved)))
        }
    }
}

/// Bytes of the edit cluster at `guest_offset`: `cluster_size`, or what is left of the disk.
pub(crate) fn cluster_len_at(cluster_size: u64, virtual_size: u64, guest_offset: u64) -> u64 {
    cluster_size.min(virtual_size.saturating_sub(guest_offset))
}

/// Splits `len` bytes of guest data at `guest_offset` at `block_size` boundaries and calls
/// `piece(block index, offset in the block, range of the data)` for each part, in order.
pub(crate) fn split_at_blocks(
    guest_offset: u64,
    len: usize,
    block_size: u64,
    mut piece: impl FnMut(u64, u64, Range<usize>) -> Result<()>,
) -> Result<()> {
    let mut done = 0usize;
    while done < len {
        let at = guest_offset + done as u64;
        let in_block = at % block_size;
        let n = ((block_size - in_block) as usize).min(len - done);
        piece(at / block_size, in_block, done..done + n)?;
        done += n;
    }
    Ok(())
}

/// The sectors (numbered from the start of the block) that a write of `len` bytes at
/// `in_block` covers only in part: the first when the write starts inside a sector, the last
/// when it ends inside one, unless `ends_the_disk` (a disk's last sector may be short).
pub(crate) fn partly_covered_sectors(
    in_block: u64,
    len: u64,
    sector: u64,
    ends_the_disk: bool,
) -> impl Iterator<Item = u64> {
    let end = in_block + len;
    let first = (!in_block.is_multiple_of(sector)).then_some(in_block / sector);
    let last = (!end.is_multiple_of(sector) && !ends_the_disk).then_some(end / sector);
    [first, last].into_iter().flatten()
}

/// The order of sector bits inside a byte of a sector bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitOrder {
    /// VHD: sector 0 is the most significant bit of byte 0.
    MostSignificantFirst,
    /// VHDX: sector 0 is the least significant bit of byte 0.
    LeastSignificantFirst,
}

impl BitOrder {
    fn mask(self, sector: u64) -> u8 {
        match self {
            BitOrder::MostSignificantFirst => 0x80 >> (sector % 8),
            BitOrder::LeastSignificantFirst => 1 << (sector % 8),
        }
    }

    /// Whether `sector` is marked present; sectors past the bitmap are not.
    pub(crate) fn get(self, bits: &[u8], sector: u64) -> bool {
        bits.get((sector / 8) as usize)
            .is_some_and(|b| b & self.mask(sector) != 0)
    }

    /// Marks `sector` present; sectors past the bitmap are ignored.
    pub(crate) fn set(self, bits: &mut [u8], sector: u64) {
        if let Some(b) = bits.get_mut((sector / 8) as usize) {
            *b |= self.mask(sector);
        }
    }

    /// Marks `sector` absent; sectors past the bitmap are ignored.
    pub(crate) fn clear(self, bits: &mut [u8], sector: u64) {
        if let Some(b) = bits.get_mut((sector / 8) as usize) {
            *b &= !self.mask(sector);
        }
    }
}

/// Runs of sectors that `order` marks absent in `bits`, among the first `sectors`, each at
/// most `max_run_bytes` long (at least one sector): what unlinking a parent must zero, since
/// those sectors read from the parent until then.
pub(crate) fn absent_runs(
    order: BitOrder,
    bits: &[u8],
    sectors: u64,
    sector_size: u64,
    max_run_bytes: u64,
) -> Vec<Range<u64>> {
    let mut runs = Vec::new();
    let mut s = 0u64;
    while s < sectors {
        if order.get(bits, s) {
            s += 1;
            continue;
        }
        let mut e = s + 1;
        while e < sectors && !order.get(bits, e) && (e - s) * sector_size < max_run_bytes {
            e += 1;
        }
        runs.push(s..e);
        s = e;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_split_at_block_boundaries() {
        let mut pieces = Vec::new();
        split_at_blocks(1000, 3000, 1024, |block, in_block, range| {
            pieces.push((block, in_block, range));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            pieces,
            vec![
                (0, 1000, 0..24),
                (1, 0, 24..1048),
                (2, 0, 1048..2072),
                (3, 0, 2072..3000)
            ]
        );
    }

    #[test]
    fn partly_covered_sectors_are_the_ends_inside_a_sector() {
        let all = |at, len, end| partly_covered_sectors(at, len, 512, end).collect::<Vec<_>>();
        assert_eq!(all(0, 1024, false), Vec::<u64>::new());
        assert_eq!(all(100, 1024, false), vec![0, 2]);
        assert_eq!(all(512, 100, false), vec![1]);
        assert_eq!(all(512, 100, true), Vec::<u64>::new());
    }

    #[test]
    fn absent_runs_stop_at_present_sectors_and_at_the_run_limit() {
        let bits = [0b0001_0000u8, 0];
        let runs = absent_runs(BitOrder::MostSignificantFirst, &bits, 16, 512, 2048);
        assert_eq!(runs, vec![0..3, 4..8, 8..12, 12..16]);
    }

    #[test]
    fn bit_orders_of_vhd_and_vhdx_bitmaps() {
        let mut vhd = [0u8; 2];
        BitOrder::MostSignificantFirst.set(&mut vhd, 0);
        BitOrder::MostSignificantFirst.set(&mut vhd, 9);
        assert_eq!(vhd, [0x80, 0x40]);
        let mut vhdx = [0u8; 2];
        BitOrder::LeastSignificantFirst.set(&mut vhdx, 0);
        BitOrder::LeastSignificantFirst.set(&mut vhdx, 9);
        assert_eq!(vhdx, [0x01, 0x02]);
        assert!(BitOrder::LeastSignificantFirst.get(&vhdx, 9));
        BitOrder::LeastSignificantFirst.clear(&mut vhdx, 9);
        assert!(!BitOrder::LeastSignificantFirst.get(&vhdx, 9));
        assert!(!BitOrder::MostSignificantFirst.get(&vhd, 99));
        BitOrder::MostSignificantFirst.set(&mut vhd, 99);
        assert_eq!(vhd, [0x80, 0x40]);
    }
}
