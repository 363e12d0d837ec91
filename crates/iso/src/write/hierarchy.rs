//! The directory hierarchies the layout stage builds (ISO 9660 and Joliet, folders in
//! path-table order) and the size rules of their records: plain data that the record
//! serialiser, the layout and the emit stage all read.

use super::tree::{DataId, NodeId};

/// Largest extent of one directory record: 4 GiB minus one sector, sector aligned.
pub(crate) const MAX_EXTENT_BYTES: u64 = 0xFFFF_F800;
/// What a directory record points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A folder (index into the hierarchy's `dirs`).
    Dir(usize),
    /// A regular file's data.
    File(DataId),
    /// Symlink, device, FIFO or socket: zero-length record described by Rock Ridge.
    Special,
    /// The El Torito boot catalog.
    Catalog,
    /// Rock Ridge: stands in for a folder moved to rr_moved (CL points at it).
    Placeholder(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// On-disc identifier bytes (d-characters, or UCS-2 BE in Joliet).
    pub ident: Vec<u8>,
    pub node: NodeId,
    pub kind: EntryKind,
    /// Rock Ridge name (the host name).
    pub rr_name: String,
    /// This folder was moved here from deeper down (RE entry).
    pub relocated: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Dir {
    pub node: NodeId,
    /// Index of the parent in the hierarchy (the root is its own parent).
    pub parent: usize,
    /// Path-table identifier.
    pub ident: Vec<u8>,
    pub entries: Vec<Entry>,
    /// For a relocated folder: its original parent (PL entry).
    pub original_parent: Option<usize>,
    /// Sub-folder count in this hierarchy (for the RR link count).
    pub subdirs: u32,
}

/// One directory hierarchy (ISO 9660 or Joliet), folders in path-table order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hierarchy {
    pub dirs: Vec<Dir>,
    pub joliet: bool,
}

/// Record length of a directory record with an identifier of `ident_len` bytes and `su` bytes
/// of System Use.
pub(crate) fn record_len(ident_len: usize, su: usize) -> usize {
    let base = 33 + ident_len + usize::from(ident_len & 1 == 0);
    let len = base + su;
    len + len % 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_length_is_even_with_padding_byte() {
        assert_eq!(record_len(1, 0), 34);
        assert_eq!(record_len(2, 0), 36);
        assert_eq!(record_len(12, 0), 46);
        assert_eq!(record_len(13, 1), 48);
    }
}
