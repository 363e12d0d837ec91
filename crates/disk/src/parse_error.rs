//! Errors of the pure structure parsers of VHD, VHDX and VMDK (views over byte arrays that do
//! not know which file they came from); `into_disk` adds the file, format and absolute offset.

use std::path::Path;

use crate::error::DiskError;

/// What a structure parser found wrong. Offsets are relative to the structure parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("missing {what}")]
    BadMagic { what: &'static str },
    #[error("{field} at offset {offset:#x}: {reason}")]
    Invalid {
        field: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("{what} checksum does not match")]
    Checksum { what: &'static str, offset: u64 },
    #[error("{what} is truncated")]
    Truncated { what: &'static str, offset: u64 },
    #[error("{what}")]
    Unsupported { what: String },
    #[error("descriptor line {line}: {reason}")]
    Descriptor { line: usize, reason: String },
}

impl ParseError {
    /// The error as a `DiskError` naming `path`, with offsets made absolute by `base`.
    pub fn into_disk(self, path: &Path, format: &'static str, base: u64) -> DiskError {
        let path = path.to_path_buf();
        match self {
            ParseError::BadMagic { what } => DiskError::Corrupt {
                path,
                format,
                offset: base,
                field: what,
                reason: "signature not found: not this format, or the structure is damaged".into(),
            },
            ParseError::Invalid { field, offset, reason } => {
                DiskError::Corrupt { path, format, offset: base.saturating_add(offset), field, reason }
            }
            ParseError::Checksum { what, offset } => DiskError::Corrupt {
                path,
                format,
                offset: base.saturating_add(offset),
                field: what,
                reason: "checksum mismatch (damaged or hand-edited image; pass --ignore-checksums or set VMEDIA_IGNORE_CHECKSUMS=1 to read it anyway)".into(),
            },
            ParseError::Truncated { what, offset } => DiskError::Corrupt {
                path,
                format,
                offset: base.saturating_add(offset),
                field: what,
                reason: "the structure runs past the end of its area".into(),
            },
            ParseError::Unsupported { what } => DiskError::Unsupported { path, format, feature: what },
            ParseError::Descriptor { line, reason } => DiskError::Corrupt {
                path,
                format,
                offset: base,
                field: "descriptor",
                reason: if line > 0 { format!("line {line}: {reason}") } else { reason },
            },
        }
    }
}
