//! Checked endian field readers: the one set every format parser uses for on-disk integers.
//!
//! Every reader takes the byte slice and the field's offset and returns `None` when the field
//! does not lie wholly inside the slice, so a short or truncated header is an error the caller
//! names, never a panic and never a silent zero. Parsers that have already checked the slice's
//! length against their structure size (`check_len`) may use the `_or_zero` forms nowhere:
//! there are none, on purpose.
//!
//! The [`Fields`] view wraps a slice for parsers that read many fields of one structure and
//! want one error for "this structure is too short": `Fields::new_checked(bytes, LEN)` checks
//! once, then its accessors cannot fail for offsets inside `LEN`.

/// Reads `N` bytes at `at`, or `None` when they do not lie inside `bytes`.
#[inline]
pub fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    bytes.get(at..end)?.try_into().ok()
}

/// Little-endian u16 at `at`.
#[inline]
pub fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_le_bytes)
}

/// Little-endian u32 at `at`.
#[inline]
pub fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_le_bytes)
}

/// Little-endian u64 at `at`.
#[inline]
pub fn le64(bytes: &[u8], at: usize) -> Option<u64> {
    array(bytes, at).map(u64::from_le_bytes)
}

/// Big-endian u16 at `at`.
#[inline]
pub fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_be_bytes)
}

/// Big-endian u32 at `at`.
#[inline]
pub fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_be_bytes)
}

/// Big-endian u64 at `at`.
#[inline]
pub fn be64(bytes: &[u8], at: usize) -> Option<u64> {
    array(bytes, at).map(u64::from_be_bytes)
}

/// A structure's bytes whose length was checked once against the structure's size, so that
/// field reads at offsets below that size cannot fail.
///
/// Accessors never panic: a read outside the checked length (a parser bug, not bad input)
/// returns 0 in release builds and trips a debug assertion in tests.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    /// `Some` when `bytes` holds at least `len` bytes; the view covers exactly `len` bytes.
    pub fn new_checked(bytes: &'a [u8], len: usize) -> Option<Fields<'a>> {
        bytes.get(..len).map(|bytes| Fields { bytes })
    }

    /// The checked bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The sub-slice `[at, at + len)`, or an empty slice when outside the view.
    pub fn slice(&self, at: usize, len: usize) -> &'a [u8] {
        let slice = at.checked_add(len).and_then(|end| self.bytes.get(at..end));
        debug_assert!(
            slice.is_some(),
            "field {at}+{len} outside a {}-byte view",
            self.bytes.len()
        );
        slice.unwrap_or(&[])
    }

    pub fn u8(&self, at: usize) -> u8 {
        let value = self.bytes.get(at).copied();
        debug_assert!(
            value.is_some(),
            "field {at} outside a {}-byte view",
            self.bytes.len()
        );
        value.unwrap_or(0)
    }

    pub fn le16(&self, at: usize) -> u16 {
        self.field(le16(self.bytes, at), at)
    }
    pub fn le32(&self, at: usize) -> u32 {
        self.field(le32(self.bytes, at), at)
    }
    pub fn le64(&self, at: usize) -> u64 {
        self.field(le64(self.bytes, at), at)
    }
    pub fn be16(&self, at: usize) -> u16 {
        self.field(be16(self.bytes, at), at)
    }
    pub fn be32(&self, at: usize) -> u32 {
        self.field(be32(self.bytes, at), at)
    }
    pub fn be64(&self, at: usize) -> u64 {
        self.field(be64(self.bytes, at), at)
    }

    fn field<T: Default>(&self, value: Option<T>, at: usize) -> T {
        debug_assert!(
            value.is_some(),
            "field {at} outside a {}-byte view",
            self.bytes.len()
        );
        value.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_byte_orders() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&bytes, 0), Some(0x0201));
        assert_eq!(be16(&bytes, 0), Some(0x0102));
        assert_eq!(le32(&bytes, 4), Some(0x0807_0605));
        assert_eq!(be32(&bytes, 4), Some(0x0506_0708));
        assert_eq!(le64(&bytes, 0), Some(0x0807_0605_0403_0201));
        assert_eq!(be64(&bytes, 0), Some(0x0102_0304_0506_0708));
    }

    #[test]
    fn short_input_is_none_not_a_panic() {
        let bytes = [1u8, 2, 3];
        assert_eq!(le32(&bytes, 0), None);
        assert_eq!(be16(&bytes, 2), None);
        assert_eq!(le64(&bytes, usize::MAX - 2), None);
    }

    #[test]
    fn fields_view_checks_length_once() {
        assert!(Fields::new_checked(&[0u8; 3], 4).is_none());
        let bytes = [0xAAu8, 0xBB, 0xCC, 0xDD, 0xEE];
        let view = Fields::new_checked(&bytes, 4).unwrap();
        assert_eq!(view.bytes().len(), 4);
        assert_eq!(view.be32(0), 0xAABB_CCDD);
        assert_eq!(view.u8(3), 0xDD);
        assert_eq!(view.slice(1, 2), &[0xBB, 0xCC]);
    }
}
